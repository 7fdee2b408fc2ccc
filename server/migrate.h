/* Applying a placement live: the epoch protocol between the router's
 * placement maps and the workers' expert slots (balancing.md §6), as a
 * state machine with no sockets, threads or locks of its own.  The cluster
 * (server/cluster.c) owns one, calls it under its lock, carries its orders
 * on the acks of the workers' control reports and feeds it their answers;
 * whoever decides a new placement (the degraded-service cover of a lost
 * worker today, the balancer's EPLB/LLEP plans next) hands it over with
 * cluster_set_placement() -> mig_set_target().
 *
 * Maps (immutable struct placement, each tagged with its epoch):
 *   committed  what batches use now (epoch E); users hold it between
 *              mig_acquire and mig_release (one expert-layer call);
 *   retiring   earlier committed maps that users still hold;
 *   target     where the placement is going; NULL when none.
 * Worker slots: per (worker, layer, expert) what the router knows the
 * worker holds (NONE, LOADING, READY, FAILED: from its reports) and whether
 * the copy is wanted (the worker has it in the committed, a retiring or
 * the target map).
 *
 * The protocol, LOAD -> READY -> COMMIT -> RETIRE:
 *   LOAD    mig_order(w) lists every wanted copy of w that is not READY
 *           (op LOAD) and every copy w holds that nobody wants (op FREE),
 *           tagged with the committed epoch: a slot loaded by it serves
 *           batches of that epoch or later.  The order goes out on the ack
 *           of w's next report and again on every ack until a report shows
 *           it done (the worker applies orders idempotently), so a lost
 *           message costs one heartbeat, never a stuck transition.  A
 *           worker loads into staging while it keeps serving.
 *   READY   mig_ack records the states the worker reports for the slots of
 *           its last order (READY, still LOADING, NONE = freed, FAILED).
 *   COMMIT  mig_step: every layer of the target whose new copies on up
 *           workers are all READY goes into a new committed map (epoch
 *           E + 1, several layers at once when ready together).  The
 *           switch is the next mig_acquire: batches built from the new map
 *           carry the new epoch, a layer call in flight keeps its map.
 *           The target is done once no layer differs from it.
 *   RETIRE  when the last user of an older map releases it, its copies
 *           that no map wants any more become FREE ops in the next order of
 *           their worker: a slot is never dropped while a batch of an
 *           epoch that uses it may still be sent.
 * A worker that (re)registers holds nothing (mig_worker_reset): its next
 * order is complete (every copy wanted on it; the worker drops the rest),
 * and it is routable once mig_worker_ready (every copy the committed map
 * has on it READY).  Workers refuse a batch naming a slot they do not hold
 * READY or an epoch older than the order that loaded it
 * (STATUS_STALE_PLACEMENT); the dispatcher then re-sends those tokens to
 * another copy.
 *
 * What a placement must satisfy (copies on distinct workers, every
 * (layer, expert) at least one copy) is placement.h's; whether a target
 * leaves experts without a live copy is the caller's policy
 * (placement_cover).  Not thread-safe: one lock around every call.
 */
#ifndef EPMOE_MIGRATE_H
#define EPMOE_MIGRATE_H

#include <stdbool.h>
#include <stdint.h>

#include "placement.h"

struct mig;

/* What the router knows of one worker slot. */
enum mig_slot { MIG_NONE = 0, MIG_LOADING, MIG_READY, MIG_FAILED };

struct mig_op {
	uint32_t layer, expert;
	int32_t slot;      /* its slot number in the map that wants it (logs) */
	bool load;         /* LOAD, else FREE */
	bool quant;        /* LOAD as a Q8_0 copy (mig_set_quantized) */
};

/* Ops for one worker.  ops is owned by the mig and valid until the next
 * mig_order call. */
struct mig_order {
	uint64_t epoch;    /* the committed epoch */
	bool complete;     /* first order after a reset: the whole set */
	uint32_t n_ops;    /* 0: nothing to send */
	const struct mig_op *ops;
};

/* What one mig_step did. */
struct mig_step {
	uint32_t layers_committed; /* layers switched to the target now */
	uint64_t epoch;            /* committed epoch after the step */
	bool target_done;          /* the target became the committed map */
	uint32_t maps_retired;     /* older maps dropped (their slots freed) */
};

/* Starts with `initial` committed (takes ownership, also on failure; its
 * epoch is kept, 0 becomes 1) for up to n_worker workers (>= the map's).
 * Free with mig_free. */
int mig_new(struct mig **out, struct placement *initial, uint32_t n_worker);
void mig_free(struct mig *g);

/* The maps (borrowed; valid until the next mig call). */
const struct placement *mig_committed(const struct mig *g);
const struct placement *mig_target(const struct mig *g);
uint64_t mig_epoch(const struct mig *g);
/* Older maps still held by users. */
uint32_t mig_n_retiring(const struct mig *g);

/* The committed map for one user: valid until mig_release, even after
 * newer maps are committed. */
const struct placement *mig_acquire(struct mig *g);
void mig_release(struct mig *g, const struct placement *p);

/* Sets the placement to go to (takes ownership of t, also on failure;
 * same layers, experts and at most n_worker workers, else EPMOE_EINVAL).
 * A target equal to the committed map ends any transition (staged slots
 * no map wants are freed).  Replaces a target in progress: slots it
 * loaded that the new one wants are kept. */
int mig_set_target(struct mig *g, struct placement *t);

/* Worker w (re)registered: it holds nothing; its next order is complete. */
void mig_worker_reset(struct mig *g, uint32_t w);
/* The ops w should get now (see the protocol above).  EPMOE_ENOMEM. */
int mig_order(struct mig *g, uint32_t w, struct mig_order *out);
/* Worker w reported copy (layer, expert) in state st (READY: held as Q8_0
 * when quantized).  Out of range is ignored. */
void mig_ack(struct mig *g, uint32_t w, uint32_t layer, uint32_t expert,
        enum mig_slot st, bool quantized);
/* Replicate-and-Quantize: with q8, the copies of an expert after the first
 * its map lists are wanted as Q8_0 and the first at the model's own
 * precision; a READY copy at the other precision is ordered LOADed again
 * (the worker re-loads it while the old copy serves).  Off by default. */
void mig_set_quantized(struct mig *g, bool q8);
/* READY copies held as Q8_0 over all workers. */
uint64_t mig_quantized(const struct mig *g);
enum mig_slot mig_state(const struct mig *g, uint32_t w, uint32_t layer,
        uint32_t expert);
/* Every copy the committed map has on w is READY. */
bool mig_worker_ready(const struct mig *g, uint32_t w);
/* w has ops to receive or loads running (ask it for quick reports). */
bool mig_worker_pending(const struct mig *g, uint32_t w);

/* No map (committed, retiring or target) has a copy on w: no batch can
 * reach it any more (a draining worker may go). */
bool mig_worker_unused(const struct mig *g, uint32_t w);

/* Commits what can be committed and retires what drained.  up[w]: worker
 * w is routable (copies on other workers do not hold a commit back: they
 * load when their worker registers).  EPMOE_ENOMEM leaves the state as it
 * was. */
int mig_step(struct mig *g, const bool *up, struct mig_step *out);

#endif
