/* Placement maps: which worker serves each (layer, expert), as physical
 * slots (balancing.md §0).
 *
 * A slot is one loaded copy of one logical expert on one worker.  Slots are
 * numbered per layer, in order of (worker, expert), so the slots of a
 * worker are contiguous and a worker's slots list its experts in ascending
 * order.  An expert may have several slots (replicas) on distinct workers;
 * its copies keep the order they were given in (log2phy[l][e][0] is the
 * first worker listed), so a placement file reads back as written.
 *
 * A placement is immutable once built and tagged with an epoch; it is
 * shared read-only between threads (the cluster swaps in a new one and
 * frees the old one when its last user releases it).
 *
 * Sources of a placement: contiguous blocks of experts over W workers
 * (the default), an explicit per-worker count list ("--experts-per-worker
 * 3,3,2"), or a JSON placement file (format below).  This module does no
 * I/O besides reading that file and never touches sockets.
 *
 * Placement file (JSON):
 *   { "n_workers": 3,                 optional; default max index + 1
 *     "layers": [ [0, 0, 1, 1, [2, 0], 2, 2, 1], ... ] }
 * "layers" holds one entry per layer, or a single entry applied to every
 * layer.  Entry l lists, for each expert e of the model, the worker index
 * that serves it, or an array of worker indices (replicas, distinct).
 * placement_to_json() writes the same format (plus "epoch"), so the map
 * served at GET /v1/placement can be fed back as a file.
 */
#ifndef EPMOE_PLACEMENT_H
#define EPMOE_PLACEMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* Workers a placement may name (indices < this). */
#define PLACEMENT_MAX_WORKERS 1024

struct placement {
	uint64_t epoch;
	uint32_t n_layer;     /* L */
	uint32_t n_expert;    /* E */
	uint32_t n_worker;    /* W */
	uint32_t n_slot;      /* S: slots per layer (max over layers; >= E) */
	uint32_t max_copies;  /* Rmax: most slots of one expert */
	int32_t *slot_worker; /* [L][S] worker of slot s, -1 = unused */
	int32_t *phy2log;     /* [L][S] expert in slot s, -1 = unused */
	int32_t *log2phy;     /* [L][E][Rmax] slots of e in the order given,
	                         -1 padded */
	int32_t *logcnt;      /* [L][E] number of slots of e (>= 1) */
};

/* Slot s of layer l. */
static inline int32_t
placement_slot_worker(const struct placement *p, uint32_t l, uint32_t s)
{
	return p->slot_worker[(size_t)l * p->n_slot + s];
}

static inline int32_t
placement_slot_expert(const struct placement *p, uint32_t l, uint32_t s)
{
	return p->phy2log[(size_t)l * p->n_slot + s];
}

/* The r-th slot of expert e in layer l (r < logcnt). */
static inline int32_t
placement_expert_slot(const struct placement *p, uint32_t l, uint32_t e,
        uint32_t r)
{
	return p->log2phy[((size_t)l * p->n_expert + e) * p->max_copies + r];
}

static inline uint32_t
placement_expert_copies(const struct placement *p, uint32_t l, uint32_t e)
{
	return (uint32_t)p->logcnt[(size_t)l * p->n_expert + e];
}

/* Contiguous blocks, the same for every layer: worker w serves experts
 * [start_w, start_w + n_w) with n_w = E / W, the first E % W workers one
 * more.  EPMOE_EINVAL when W is 0, exceeds E or PLACEMENT_MAX_WORKERS.
 * Free with placement_free(). */
int placement_contiguous(struct placement **out, uint32_t n_layer,
        uint32_t n_expert, uint32_t n_worker);

/* Contiguous blocks of the given sizes (counts[w] experts for worker w, in
 * order; zeros allowed); the counts must sum to E (EPMOE_EINVAL and a
 * message in err otherwise). */
int placement_from_counts(struct placement **out, uint32_t n_layer,
        uint32_t n_expert, const uint32_t *counts, uint32_t n_worker,
        char *err, size_t err_len);

/* Parses "a,b,c" (non-negative integers) into a malloc'd array (free with
 * free()).  EPMOE_EINVAL with a message on junk, empty items or more than
 * PLACEMENT_MAX_WORKERS items. */
int placement_parse_counts(const char *s, uint32_t **counts,
        uint32_t *n_worker, char *err, size_t err_len);

/* Builds a placement from JSON text in the placement file format for a
 * model of n_layer layers and n_expert experts.  EPMOE_EFORMAT with a
 * message naming the problem (not JSON, wrong counts, bad worker index,
 * duplicate replica...). */
int placement_from_json(struct placement **out, const char *json,
        size_t json_len, uint32_t n_layer, uint32_t n_expert, char *err,
        size_t err_len);

/* placement_from_json of a file's contents (EPMOE_EIO if unreadable). */
int placement_load_file(struct placement **out, const char *path,
        uint32_t n_layer, uint32_t n_expert, char *err, size_t err_len);

/* JSON of p in the file format plus "epoch" and "n_slots".  On success
 * *out is the caller's (cJSON_Delete). */
int placement_to_json(const struct placement *p, cJSON **out);

/* Number of slots worker w serves over all layers. */
uint32_t placement_worker_slots(const struct placement *p, uint32_t w);

/* Whether worker w holds a copy of expert e in layer l. */
bool placement_has(const struct placement *p, uint32_t l, uint32_t e,
        uint32_t w);

/* Builds a map from owner lists: cnt[l * E + e] (>= 1) copies of expert e
 * of layer l on the workers owners[(l * E + e) * r_cap + r], distinct,
 * < n_worker, in preference order.  Epoch 1 (set p->epoch after).
 * EPMOE_EINVAL on a bad list. */
int placement_build(struct placement **out, uint32_t n_layer,
        uint32_t n_expert, uint32_t n_worker, const uint32_t *cnt,
        const int32_t *owners, uint32_t r_cap);

/* A copy of p (epoch included).  Free with placement_free(). */
int placement_dup(struct placement **out, const struct placement *p);

/* Whether layer l has the same owner lists (same order) in a and b (of
 * the same shape). */
bool placement_layer_equal(const struct placement *a,
        const struct placement *b, uint32_t l);

/* A new map whose layer l is other's when take[l], else base's (same
 * shape; n_worker the larger).  Epoch 1 (the caller sets it). */
int placement_mix(struct placement **out, const struct placement *base,
        const struct placement *other, const bool *take);

/* p with one copy of (l, e) added on worker w (last in its order: add)
 * or w's copy removed (!add).  EPMOE_EINVAL when w already holds it, does
 * not, or it is the expert's last copy.  Epoch 1. */
int placement_copy_edit(struct placement **out, const struct placement *p,
        uint32_t l, uint32_t e, uint32_t w, bool add);

/* Degraded service (reliability.md §11.2): home with every (layer, expert)
 * that has no copy on a worker marked in up[n_worker] but one on a worker
 * marked in lost[n_worker] (NULL: every worker not up counts as lost)
 * given one more copy on an up worker, appended after its home copies.  The extra copy is the
 * one prev (may be NULL) has on an up worker outside home, if any (no
 * churn from one degraded map to the next), else the up worker with the
 * fewest copies in that layer (lowest index on a tie).  With no up worker
 * the result equals home.  Epoch 1.  *n_extra (may be NULL) gets the
 * number of extra copies. */
int placement_cover(struct placement **out, const struct placement *home,
        const bool *up, const bool *lost, const struct placement *prev,
        uint32_t *n_extra);

void placement_free(struct placement *p);

#endif
