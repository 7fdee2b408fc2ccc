/* The distributed expert backend: a struct moe_backend whose run() ships
 * one layer's token rows to the workers that host the chosen experts,
 * survives the loss of a worker mid-call, and combines the answers.
 *
 * Per run() (one layer):
 *   1. the (token, expert) pairs are grouped by expert, tokens in order:
 *      one token group per expert used;
 *   2. each group goes to one live copy of its expert (replica.h: dynamic
 *      = least outstanding tokens by power of two choices, or static);
 *      an expert with no live copy loses its group at once;
 *   3. per worker ONE ExpertBatch {batch id, attempt, epoch} with its
 *      groups in expert order and the distinct token rows they need (a
 *      token whose experts share the worker is sent once), rows written
 *      straight into the nng_msg body; every batch in flight at once, one
 *      REQ context each on the cluster's data socket of its worker;
 *   4. each batch has its own deadline: adaptive (deadline.h: max(floor,
 *      k x p99 of that worker's recent replies), at most timeout_ms) when
 *      every one of its groups has another live copy, else timeout_ms,
 *      since waiting is then the only way not to fail;
 *   5. a batch that fails (error or stale-placement reply, lost
 *      connection, deadline, worker fenced by the cluster meanwhile)
 *      fences its worker (cluster_report) and its groups are re-sent to
 *      other live copies (attempt + 1), the failed worker excluded for the
 *      rest of the call; the call goes on with the other batches;
 *   6. hedging (cfg.hedge > 0, off by default): a batch still pending at
 *      hedge x p99 is duplicated to one other live worker holding copies
 *      of all its groups; the first good reply wins, the other is
 *      cancelled and its reply, if any, dropped by its context;
 *   7. out = 0, then the partial sums added: with at most two experts per
 *      token, each worker returns one row per token (its experts summed in
 *      group order) and rows are added batch by batch — exact whatever the
 *      placement, as x + y = y + x in floating point; with more, each
 *      worker returns one weighted row per (token, expert) pair and the
 *      router adds a token's pairs in routing (k) order.  So outputs do not
 *      depend on which copy served which group, on re-dispatch or on
 *      hedging: greedy decoding gives the same tokens after a failover.
 * run() returns EPMOE_EUNAVAIL only when some group found no live copy
 * (its tokens are marked for be->unserved, so the engine fails only the
 * sequences that needed it) or the call ran past 2 x timeout_ms; every
 * request of the call still in flight is cancelled and its message freed
 * before run() returns.  An expert out of range is EPMOE_EINVAL.
 *
 * Buffers are reused across calls, so the steady state allocates only
 * inside protobuf-c's reply decoding.
 *
 * Threads: run() is not reentrant per backend; it is called on the
 * engine thread (never from an NNG callback or the libuv loop) and waits
 * on a condition variable the NNG completion callbacks signal.  For two
 * micro-batches in flight, create two backends on the same cluster.
 * dispatch_stats() may be called from any thread.
 */
#ifndef EPMOE_DISPATCH_H
#define EPMOE_DISPATCH_H

#include <stdint.h>

#include "llep.h"
#include "moe.h"
#include "replica.h"

struct cluster;
struct model;

struct dispatch_cfg {
	uint32_t timeout_ms;  /* longest wait for one batch, and its deadline
	                         while its worker has no latency history;
	                         0 = 10000 */
	uint32_t floor_ms;    /* shortest adaptive deadline; 0 = 200 */
	double deadline_k;    /* adaptive deadline = k x p99; 0 = 3 */
	double hedge;         /* > 0: hedge a batch pending at hedge x p99;
	                         0 = off */
	enum replica_mode replica;  /* default dynamic */
	uint64_t replica_seed;      /* static spread */
	bool llep;                  /* split hot experts' token groups over
	                               their copies (llep.h) */
	struct llep_cfg llep_cfg;
};

/* Counters summed over run() calls since creation or the last reset.
 * Per token per layer: divide by `tokens` (each call adds its T). */
struct dispatch_stats {
	uint64_t calls;
	uint64_t failures;    /* calls that returned an error */
	uint64_t tokens;      /* token rows handed to run() */
	uint64_t pairs;       /* (token, expert) pairs */
	uint64_t msgs;        /* requests sent (re-sends and hedges included) */
	uint64_t rows_sent;   /* token rows sent (a token once per request) */
	uint64_t bytes_sent;  /* request frame bytes (nng message bodies) */
	uint64_t bytes_recv;  /* reply frame bytes */
	uint64_t batch_failures; /* requests that failed (then re-sent) */
	uint64_t redispatches;   /* token groups re-sent after a failure */
	uint64_t redispatched_pairs;
	uint64_t hedges;         /* duplicate requests sent */
	uint64_t hedges_won;     /* ... that answered first */
	uint64_t abandoned;      /* requests given up (deadline, fenced
	                            worker, lost hedge race): late replies */
	uint64_t stale;          /* STALE_PLACEMENT replies */
	uint64_t unserved_tokens;/* token rows whose expert had no live copy */
	uint64_t llep_calls;     /* layer calls LLEP split */
	uint64_t llep_split_groups; /* extra token groups it made */
	uint64_t hinted_msgs;    /* requests carrying a prefetch hint */
	uint64_t hinted_experts; /* experts named in those hints, summed */
	/* per successful layer call: pairs computed by its busiest worker,
	 * and pairs over live workers; their ratio of sums is the measured
	 * worker max/mean of the layer calls (what a layer waits for) */
	uint64_t busiest_pairs;
	double mean_pairs;
	/* wall time of successful calls, seconds: total = pack + wire +
	 * compute + combine.  pack: routing maps, protobuf headers, row
	 * copies into the messages; compute: the slowest worker's reported
	 * expert compute; wire: the rest of the wait for the replies
	 * (nng sends and receives, loopback/network, worker decode and
	 * queueing, reply decode, re-sends) */
	double t_pack;
	double t_wire;
	double t_compute;
	double t_combine;
	double t_total;
};

/* Creates the backend.  Borrows c and m (both must outlive it: free the
 * backend before the cluster).  cfg may be NULL.  Free with be->free(be). */
int dispatch_new(struct moe_backend **out, struct cluster *c,
        const struct model *m, const struct dispatch_cfg *cfg);

/* Copies the counters of a backend made by dispatch_new. */
void dispatch_stats(struct moe_backend *be, struct dispatch_stats *out);
void dispatch_stats_reset(struct moe_backend *be);

#endif
