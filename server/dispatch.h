/* The distributed expert backend: a struct moe_backend whose run() ships
 * one layer's token rows to the workers that host the chosen experts and
 * combines their answers.
 *
 * Per run() (one layer):
 *   1. each (token, expert) pair goes to the first slot of the expert on a
 *      live worker (placement order; replicas are tried in order);
 *   2. per worker, ONE ExpertBatch: the distinct token rows that worker
 *      needs (a token whose experts share a worker is sent once), groups
 *      in ascending slot order, entries in token order, with gate weights
 *      and the combine map (gather[j] = combine[j] = the token's row in the
 *      message), rows written straight into the nng_msg body;
 *   3. all involved workers in flight at once: one REQ context per worker
 *      (on the cluster's data socket of that worker), nng_ctx_send /
 *      nng_ctx_recv with aio deadlines (cfg.deadline_ms for the whole
 *      call), waited with nng_aio_wait — run() blocks its caller;
 *   4. out = 0, then each worker's partial sums added in ascending worker
 *      index order, so results are deterministic for a placement.
 * A worker error, timeout, disconnect or stale-placement reply makes run()
 * return EPMOE_EUNAVAIL after reporting the worker to the cluster (it is
 * marked down at once); every other request of the call is cancelled and
 * its message freed before run() returns.  An invalid assignment
 * (expert out of range) is EPMOE_EINVAL; an expert with no live slot is
 * EPMOE_EUNAVAIL without sending anything.
 *
 * Buffers are reused across calls (maps, protobuf arrays, and each
 * worker's last reply message becomes its next request's buffer), so the
 * steady state allocates only inside protobuf-c's reply decoding.
 *
 * Threads: run() is not reentrant per backend; it is called on the
 * engine thread (never from an NNG callback or the libuv loop).  For two
 * micro-batches in flight, create two backends on the same cluster.
 * dispatch_stats() may be called from any thread.
 */
#ifndef EPMOE_DISPATCH_H
#define EPMOE_DISPATCH_H

#include <stdint.h>

#include "moe.h"

struct cluster;
struct model;

struct dispatch_cfg {
	uint32_t deadline_ms; /* whole scatter/gather of one layer; 0 = 10000 */
};

/* Counters summed over run() calls since creation or the last reset.
 * Per token per layer: divide by `tokens` (each call adds its T). */
struct dispatch_stats {
	uint64_t calls;
	uint64_t failures;    /* calls that returned an error */
	uint64_t tokens;      /* token rows handed to run() */
	uint64_t pairs;       /* (token, expert) pairs */
	uint64_t msgs;        /* requests sent (one per involved worker) */
	uint64_t rows_sent;   /* token rows sent (a token once per worker) */
	uint64_t bytes_sent;  /* request frame bytes (nng message bodies) */
	uint64_t bytes_recv;  /* reply frame bytes */
	/* wall time of successful calls, seconds: total = pack + wire +
	 * compute + combine.  pack: routing maps, protobuf headers, row
	 * copies into the messages; compute: the slowest worker's reported
	 * expert compute; wire: the rest of the wait for the replies
	 * (nng sends and receives, loopback/network, worker decode and
	 * queueing, reply decode) */
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
