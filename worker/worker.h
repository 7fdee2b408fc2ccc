/* An expert worker: serves expert FFN batches for the slots the router
 * assigns it.
 *
 * Sockets (reliability.md §8):
 *   data     REP, listens (default tcp://127.0.0.1:0, an ephemeral port);
 *            ExpertBatch in, ExpertResult out, one batch at a time.
 *   control  REQ, dials the router's control URL; WorkerHello to register,
 *            LoadReport every heartbeat period, Leave on shutdown.
 * Both use mutual TLS when the configuration names a certificate, key
 * and CA (common/netsock.h).
 *
 * Control protocol as the worker speaks it (the router side is
 * server/cluster.c, the slot orders server/migrate.h):
 *   -> ControlMsg{hello}           <- ControlMsg{hello_reply}
 *        accepted: worker_index, placement_epoch, heartbeat_ms,
 *        router_boot_id and `order`: the complete set of (layer, expert,
 *        slot) the worker holds from now on (order.complete: it drops the
 *        rest), tagged with the epoch.  Loads run on the loader thread
 *        (worker/slots.h) while the worker serves.
 *        refused: status INVALID (wrong model or protocol: fatal, the
 *        worker stops), BUSY (no free worker place, its id is in use by
 *        a live worker, or it is held back after missed deadlines:
 *        retried), other (retried).
 *        The worker reports at once (not after a period), and again as
 *        soon as its loads are done: the router routes batches to it only
 *        after a report shows every slot of its order READY.
 *   -> ControlMsg{load_report}     <- ControlMsg{hello_reply} as an ack;
 *        the report carries the state of every slot of the last order
 *        (order_reply: READY, loading, freed, failed).
 *        accepted=false with status NOT_FOUND means the router does not
 *        know this (index, boot id): it restarted or fenced the worker
 *        (missed heartbeats or deadlines, failed batch).  The worker
 *        registers again; so it also does when the ack's router_boot_id
 *        differs from the one it registered with.
 *        An ack may carry an `order` of slot changes (LOAD into staging,
 *        FREE), repeated until a report shows them done, and sets the
 *        next report's delay (heartbeat_ms: short while an order runs).
 *   -> ControlMsg{leave}           <- ack, on shutdown.
 *        With drain_timeout_ms, first Leave{drain: true}: the worker keeps
 *        serving and reporting while the router moves its experts to the
 *        other workers; the ack of a report (or of the Leave) says
 *        `drained` once no placement map uses it (a router that does not
 *        drain says so at once); then the plain Leave.  After
 *        drain_timeout_ms it leaves anyway (logged).
 *
 * Batches (proto/epmoe.proto ExpertBatch): validated with
 * wire_check_batch; a batch naming a (layer, expert) the worker does not
 * hold READY, or with an epoch older than the order that loaded it, is
 * rejected with STATUS_STALE_PLACEMENT and never computed (the router
 * re-sends those tokens to another copy).  Otherwise the batch runs
 * through the expert path local mode uses (moe_ffn_run in common/moe.h:
 * groups in batch order, the gate/up products of all groups in one pool
 * round, the down products in another) and entry j adds weights[j] * y
 * into output row combine[j]: the worker-side combine, so a token with
 * several experts on this worker comes back once, already summed.
 * Malformed frames get an error reply (STATUS_PROTOCOL / INVALID) and a
 * log line; the worker keeps serving.
 *
 * Threads: worker_serve() runs the data loop on the calling thread, one
 * control thread and the slot loader thread; compute uses the worker's own
 * pool (n_threads).
 */
#ifndef EPMOE_WORKER_H
#define EPMOE_WORKER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct model;
struct worker;

struct worker_cfg {
	const char *router_url;    /* router control URL (required) */
	const char *model_path;    /* GGUF file (required unless model) */
	const struct model *model; /* borrowed loaded model, or NULL to load
	                              model_path; must outlive the worker */
	const char *listen_url;    /* data REP URL; NULL = tcp://127.0.0.1:0 */
	const char *advertise_url; /* data URL told to the router; NULL = the
	                              bound listen URL (host 0.0.0.0 / * is
	                              replaced by the host name) */
	const char *id;            /* stable name; NULL = "<host>-<pid>" */
	const char *node;          /* machine name; NULL = host name */
	int n_threads;             /* compute threads; 0 = online CPUs */
	uint32_t rpc_timeout_ms;   /* control call deadline; 0 = 2000 */
	uint32_t drain_timeout_ms; /* on stop: ask the router to drain this
	                              worker (Leave with drain), keep serving
	                              until it says drained or this passes,
	                              then leave; 0 = leave at once */
	size_t data_recv_max;      /* 0 = NETSOCK_DATA_RECV_MAX (256 MiB) */
	/* Mutual TLS with the router (PEM files, all three or none): the
	 * control dial and the data listener then use tls+tcp:// (the default
	 * listen URL becomes tls+tcp://127.0.0.1:0) and plain tcp:// URLs are
	 * refused. */
	const char *tls_cert;
	const char *tls_key;
	const char *tls_ca;
};

/* Loads (or borrows) the model, starts the pool and binds the data
 * listener, so worker_data_url() is known before serving.  err gets a
 * one-line reason on failure.  Free with worker_free(). */
int worker_new(struct worker **out, const struct worker_cfg *cfg, char *err,
        size_t err_len);

/* The data URL the worker advertises (borrowed from w). */
const char *worker_data_url(const struct worker *w);

/* Registers with the router and serves until *stop becomes non-zero
 * (async-signal-safe to set: a SIGTERM handler may do it; a test thread
 * may too) or a fatal refusal.  On stop: drains first when configured
 * (serving meanwhile), finishes the batch in hand, sends Leave, returns
 * 0.  Returns EPMOE_EINVAL when the router refused
 * the worker for good (wrong model / protocol; the reason is logged).
 * Call once per worker. */
int worker_serve(struct worker *w, const volatile sig_atomic_t *stop);

void worker_free(struct worker *w);

/* worker_new + worker_serve + worker_free, for a thread or main(). */
int worker_run(const struct worker_cfg *cfg, const volatile sig_atomic_t *stop,
        char *err, size_t err_len);

struct worker_stats {
	bool registered;
	uint32_t index;      /* worker index given by the router */
	uint64_t epoch;      /* placement epoch held */
	uint32_t n_slots;    /* slots held over all layers */
	uint64_t registrations;
	uint64_t batches;    /* batches computed */
	uint64_t tokens;     /* (token, expert) entries computed */
	uint64_t rows_in;    /* input rows received in computed batches */
	uint64_t rejected;   /* batches answered with an error status */
	uint64_t stale;      /* of which STALE_PLACEMENT */
	uint64_t compute_us; /* cumulative */
	uint64_t prefetch_experts; /* experts paged in on a prefetch hint */
	uint64_t prefetch_bytes;   /* their weight bytes */
	uint64_t tokens_q8;        /* of tokens, computed with a Q8_0 copy */
};

/* Thread-safe snapshot of w's counters. */
void worker_get_stats(struct worker *w, struct worker_stats *out);

#endif
