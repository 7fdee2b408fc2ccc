/* The balancer: load statistics and live re-placement (balancing.md §3,
 * §6).  Owns a sliding window of per-step (layer, expert) token counts
 * and their EWMA (fed by the routing observer on the engine thread), and
 * every `interval` steps, when the window's worker max/mean on the
 * committed placement exceeds `threshold`, computes an EPLB plan with the
 * redundant slots allowed (eplb.h), keeps held copies (§3.5) and hands it
 * to the cluster (cluster_set_placement), which loads it live through the
 * epoch protocol (migrate.h): workers stage the new copies while serving,
 * layers commit at a step boundary, old copies retire after their last
 * batch.  It never waits on a worker.  LLEP (per-step spill) is the
 * dispatcher's (dispatch.h, llep.h); with `llep` alone this module also
 * borrows copies for it to spill to when a skew persists (borrow.h),
 * handed to the cluster the same way.
 *
 * Thread safety: bal_observe on the engine thread; bal_json, bal_export
 * from any thread (one internal lock).
 */
#ifndef EPMOE_BALANCE_H
#define EPMOE_BALANCE_H

#include <stdbool.h>
#include <stdint.h>

struct cJSON;
struct cluster;
struct bal;

enum bal_mode { BAL_OFF = 0, BAL_EPLB = 1, BAL_LLEP = 2, BAL_ALL = 3 };

/* "off" | "eplb" | "llep" | "all" -> mode (0 / EPMOE_EINVAL). */
int bal_mode_parse(const char *s, enum bal_mode *out);
const char *bal_mode_name(enum bal_mode m);

struct dash;

struct bal_cfg {
	enum bal_mode mode;
	uint32_t window;       /* steps kept; 0 = 256 */
	double ewma_alpha;     /* weight of the newest step; 0 = 0.05 */
	uint32_t interval;     /* steps between EPLB checks; 0 = 64 */
	double threshold;      /* re-place when max/mean > this; 0 = 1.10 */
	int32_t redundant;     /* redundant slots per layer; -1 = from ram */
	uint64_t replica_ram_mb; /* budget for redundant slots (all layers) */
	uint32_t hosts;        /* nodes (hierarchical EPLB); 0 = 1 */
	const char *record_path; /* --record-routing: per-step counts, or NULL */
	double llep_lambda;    /* LLEP's trigger; 0 = 1.3 */
	uint32_t llep_cache;   /* borrowed copies per worker (llep alone); 0 = none */
	struct dash *dash;     /* the live view's decisions log, or NULL */
};

/* Routing trace (--record-routing): a text file, first line
 * "epmoe-routing-trace 1 L E", then one line per engine step with its
 * L x E token counts (layer-major), space-separated. */
#define BAL_TRACE_MAGIC "epmoe-routing-trace"

/* n_layer x n_expert; c may be NULL (experts in process: statistics
 * only); expert_bytes = weight bytes of one expert (RAM and movement
 * figures).  EPMOE_EIO when the trace file cannot be created.  Free
 * with bal_free. */
int bal_new(struct bal **out, const struct bal_cfg *cfg, uint32_t n_layer,
        uint32_t n_expert, struct cluster *c, uint64_t expert_bytes);
void bal_free(struct bal *b);

/* One layer's routing of one engine step: load[E] (token, expert) pairs.
 * The step ends with the last layer; re-placement is checked then. */
void bal_observe(struct bal *b, uint32_t layer, const uint32_t *load);

/* Redundant slots per layer in use. */
uint32_t bal_redundant(const struct bal *b);

struct bal_stats {
	uint64_t steps;
	uint64_t checks;          /* interval checks */
	uint64_t replacements;    /* plans handed to the cluster */
	uint64_t moved_copies;    /* (layer, expert, worker) copies loaded */
	uint64_t moved_bytes;
	uint64_t borrows;         /* experts borrowed for LLEP (loads) */
	uint64_t borrow_evictions; /* borrowed copies dropped to make room */
	uint32_t borrowed;        /* borrowed copies held now */
	double ratio;             /* window worker max/mean, committed map */
	double last_before, last_after; /* of the last plan (predicted) */
};
void bal_get_stats(struct bal *b, struct bal_stats *out);

/* /v1/stats "balance": settings, bal_stats, per-worker window load and
 * the hottest experts of each layer (window count and EWMA).  NULL when
 * out of memory. */
struct cJSON *bal_json(struct bal *b);

/* Window sums [L][E] and EWMA [L][E] copied out (either may be NULL). */
void bal_loads(struct bal *b, double *window, double *ewma);

#endif
