/* The router's worker registry and control plane: placement, worker
 * registration, liveness, fencing, degraded service and per-worker data
 * sockets.
 *
 * cluster_start() listens on the control URL (REP) and runs one control
 * thread of its own (no libuv): it answers WorkerHello / LoadReport /
 * Leave (protocol in worker/worker.h), assigns worker indices, dials each
 * registered worker's data URL with a REQ socket of its own
 * (common/netsock.h options; one socket per worker index for the
 * cluster's life, re-pointed with a new dialer when a worker comes back
 * at another address) and marks workers down when heartbeats stop
 * (heartbeat_timeout_ms), when the data connection closes (pipe event),
 * or when the dispatcher reports a failed request.
 *
 * Worker indices: a worker id seen before gets its old index back (a
 * restart: new boot id, same id -> its slots are live again once it has
 * registered); a new id takes the lowest index never used, else the lowest
 * index whose worker is down; else it is refused (BUSY).  A hello whose
 * model identity differs from the router's model is refused (INVALID,
 * with the reason).  A hello naming the id of a worker that is up or
 * joining under another boot id is refused (BUSY, logged once per boot
 * id): a live worker's identity cannot be taken over, a restarted one
 * gets its place back as soon as the old process is known to be gone.
 * An accepted worker is "joining" until a report shows every slot of the
 * committed map on it loaded (migrate.h); only then is it routable ("up"),
 * so no batch reaches a worker that does not hold its slots yet.
 *
 * Fencing: a worker whose heartbeats stop (heartbeat_timeout_ms), whose
 * data connection closes, or for which the dispatcher reports a failed or
 * late batch is down at once: no traffic, its heartbeats are refused, and
 * it must register again (a new registration generation) before it is
 * used.  After two deadline misses in a row its re-registration waits
 * (500 ms, doubling per miss, at most 30 s).  A worker silent for twice
 * the heartbeat timeout, or that missed three deadlines in a row, is
 * reported "hung" (event) so its owner can kill and restart it.
 *
 * Placement (server/placement.h): contiguous blocks over n_workers, or
 * --experts-per-worker counts, or a placement file (epoch 1), the "home"
 * placement.  Changes are applied live through migrate.h (LOAD, READY,
 * COMMIT, RETIRE with placement epochs).  Degraded service: when some
 * (layer, expert) of home has no copy on an up worker, the committed map
 * becomes home plus one copy of each such expert on a live worker
 * (placement_cover), loaded from the workers' own model files; when the
 * lost worker is back up, home is committed again and the extra copies
 * are retired after the last batch that used them.
 *
 * Thread safety: every function below may be called from any thread once
 * cluster_start() has returned (one internal mutex, never held while
 * blocking).  Event callbacks run on the cluster's control thread, never
 * with the cluster lock held; they must not block and must not call
 * cluster_free().
 */
#ifndef EPMOE_CLUSTER_H
#define EPMOE_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <nng/nng.h>

#include "deadline.h"
#include "placement.h"

struct model;
struct cluster;

struct netsock_tls;

struct cluster_cfg {
	const char *control_url;        /* REP listen URL; tcp port 0 = any
	                                   (see cluster_control_url) */
	const struct model *model;      /* borrowed: identity and shape */
	/* placement source, the first one set wins:
	 * placement_file, experts_per_worker, n_workers */
	const char *placement_file;     /* JSON, format in placement.h */
	const char *experts_per_worker; /* "a,b,..." contiguous blocks */
	uint32_t n_workers;             /* contiguous, even split */
	/* with n_workers and no file or counts: worker of each (layer,
	 * expert), [n_layer][n_expert] (speculative grouping), else NULL */
	const int32_t *worker_of;
	uint32_t heartbeat_ms;          /* period asked of workers; 0 = 500 */
	uint32_t heartbeat_timeout_ms;  /* silence -> down; 0 = 3 x period */
	uint64_t boot_id;               /* 0 = random */
	bool no_degraded;               /* never re-place a lost worker's
	                                   experts (wait for it instead) */
	uint32_t max_workers;           /* worker places (>= the placement's
	                                   workers; 0 = exactly those) */
	bool elastic;                   /* re-plan home over the live workers
	                                   when one joins beyond it or drains */
	const struct netsock_tls *tls;  /* borrowed, outlives the cluster:
	                                   mutual TLS on the control listener
	                                   and every data dialer; NULL = none */
	bool replica_q8;                /* --replica-dtype q8_0: copies after
	                                   an expert's first held as Q8_0
	                                   (migrate.h, mig_set_quantized) */
};

/* Validates cfg and builds the placement; err gets a one-line reason on
 * failure (EPMOE_EINVAL / EPMOE_EFORMAT / EPMOE_EIO).  Nothing listens
 * yet.  Free with cluster_free(). */
int cluster_new(struct cluster **out, const struct cluster_cfg *cfg,
        char *err, size_t err_len);

/* Listens on the control URL and starts the control thread.  Returns 0 or
 * an EPMOE_E* code (EPMOE_EIO: address in use). */
int cluster_start(struct cluster *c);

/* Stops the control thread, closes every socket.  Dispatch backends using
 * c must be freed first.  NULL is fine. */
void cluster_free(struct cluster *c);

/* The bound control URL (valid after cluster_start; borrowed). */
const char *cluster_control_url(const struct cluster *c);
/* Worker places (array sizes: indices are below it). */
uint32_t cluster_n_workers(const struct cluster *c);
/* Places in use: the starting workers and every place registered once
 * (what views list; <= cluster_n_workers). */
uint32_t cluster_n_used(struct cluster *c);
uint64_t cluster_boot_id(const struct cluster *c);

/* True when every (layer, expert) has a slot on a live worker (the
 * router's /health is 503 until then). */
bool cluster_ready(struct cluster *c);

/* Live workers now. */
uint32_t cluster_n_live(struct cluster *c);

/* GET /v1/placement: placement_to_json plus "workers": [{index, id, node,
 * alive, data_url}].  *out is the caller's (cJSON_Delete). */
int cluster_placement_json(struct cluster *c, cJSON **out);

/* GET /v1/stats part: {"ready", "epoch", "n_workers", "workers_live",
 * "control_url", "control_bad_messages", "failover": {"fenced": {cause:
 * n}, "refused_duplicate_ids", "commits", "transition", "retiring_maps",
 * "degraded_pairs", "unserved_pairs", "recoveries", "last_recovery_s",
 * "max_recovery_s"}, "replica_dtype" ("model" | "q8_0"),
 * "quantized_copies", "workers": [{index, id, node,
 * data_url, alive, state ("up" | "joining" | "down" | "never"),
 * down_reason, boot_id,
 * registrations, threads, slots, last_heartbeat_age_ms (-1: never),
 * batches, tokens, errors, latency_mean_us, latency_p99_us (recent 512
 * requests), reported {tokens, batches, compute_us, ram_free_bytes,
 * prefetch_experts, prefetch_bytes, quantized_tokens, quantized_bytes}}]}. */
int cluster_stats_json(struct cluster *c, cJSON **out);
/* Whether a re-placement is in flight now (a target map is being loaded
 * and committed: PREPARE to the last COMMIT); lock-free, for per-token
 * statistics. */
bool cluster_replacing(struct cluster *c);
/* The router is stopping: workers leaving from now on are let go at once
 * (a drain is not waited for, their experts are not covered elsewhere,
 * nothing is logged as degraded). */
void cluster_closing(struct cluster *c);
/* Sums of what the workers last reported of their prefetch hints:
 * experts paged in and their bytes (the index's latest holder each). */
void cluster_prefetch_totals(struct cluster *c, uint64_t *experts, uint64_t *bytes);

/* Elastic membership (cfg.elastic): a worker that becomes live while
 * home gives it no slot (a place beyond the starting placement, or one
 * that left) joins, and a worker that asks to drain (Leave with drain)
 * leaves: home is re-planned over the live, non-draining workers with
 * EPLB (eplb_plan_members, moving little from the committed map) and
 * applied live through migrate.h, like any placement change.  A drained
 * worker (no map uses it) is told so on the ack of its next report.
 * Weights for the plan: the planner's (the balancer's load window) plus
 * one per expert, or uniform without a planner. */
typedef void (*cluster_weights_fn)(void *arg, double *w); /* w[L][E] */
/* Redundant slots per layer and nodes for the plans; fn may be NULL. */
void cluster_set_planner(struct cluster *c, uint32_t redundant, uint32_t hosts,
        cluster_weights_fn fn, void *arg);
/* Live, non-draining worker indices into idx[cluster_n_workers]; their
 * count.  What a balancer plan may use. */
uint32_t cluster_members(struct cluster *c, uint32_t *idx);

/* Failover counters (what /metrics exports; cluster_stats_json has the
 * same under "failover"). */
struct cluster_failover {
	uint64_t fenced_heartbeat, fenced_connection, fenced_deadline;
	uint64_t fenced_error, fenced_stale, left;
	uint64_t refused_duplicate_ids;
	uint64_t joins, drains, drains_done; /* elastic membership */
	uint64_t commits;           /* placement maps committed after the first */
	uint64_t epoch;
	bool transition;            /* a target is being loaded */
	uint32_t degraded_pairs;    /* served only by copies outside home */
	uint32_t unserved_pairs;    /* no live copy now */
	uint64_t recoveries;        /* times every expert was served again */
	uint64_t quantized_copies;  /* READY copies held as Q8_0 */
	double recovery_s_total, last_recovery_s, max_recovery_s;
};
void cluster_failover(struct cluster *c, struct cluster_failover *out);

/* Per-worker request latency (router-side round trip of a data request,
 * success or failure), for Prometheus: bucket[i] counts requests with
 * latency <= cluster_hist_bounds_s[i] (cumulative, `le` semantics; the
 * last bound is +Inf so bucket[N-1] == count). */
#define CLUSTER_HIST_BUCKETS 14
extern const double cluster_hist_bounds_s[CLUSTER_HIST_BUCKETS];

struct cluster_hist {
	uint64_t count;
	double sum_s;
	uint64_t bucket[CLUSTER_HIST_BUCKETS];
};

/* Copies worker w's histogram; EPMOE_ERANGE for a bad index. */
int cluster_worker_hist(struct cluster *c, uint32_t w, struct cluster_hist *out);

/* Worker up/down notifications. */
struct cluster_event {
	uint32_t worker;     /* index */
	bool up;             /* registered (again) / went down */
	bool hung;           /* down and silent for 2 x the heartbeat timeout,
	                        or 3 deadline misses in a row: kill it if it is
	                        yours (up is false) */
	uint32_t silent_ms;  /* hung: how long since its last heartbeat */
	const char *id;      /* worker id (valid during the call) */
	const char *reason;  /* "registered", "restarted", "left: ...",
	                        "no heartbeat for N ms", "request failed: ..." */
};
typedef void (*cluster_event_fn)(void *arg, const struct cluster_event *ev);

/* Sets the callback (call before cluster_start; fn NULL = none).  Called
 * on the cluster's control thread, without the cluster lock.  Events of a
 * failure reported by the dispatcher are delivered there too, within
 * about 100 ms. */
void cluster_set_event_cb(struct cluster *c, cluster_event_fn fn, void *arg);

/* Applies placement p live (takes ownership of p, also on failure): it
 * becomes the home placement; the committed map moves to it (or to its
 * cover while workers are down) through migrate.h without stopping
 * service.  Same layers and experts as the model, at most
 * cluster_n_workers workers, else EPMOE_EINVAL. */
int cluster_set_placement(struct cluster *c, struct placement *p);

/* ---- for the dispatcher (server/dispatch.c) ---- */

/* The committed placement, held until cluster_placement_release (it stays
 * valid even if a new one is committed meanwhile). */
const struct placement *cluster_placement_acquire(struct cluster *c);
void cluster_placement_release(struct cluster *c, const struct placement *p);

/* State of worker w for one request: alive, its data socket (a REQ socket
 * owned by the cluster: open contexts on it, never close it) and its
 * registration generation (changes on every registration; pass it back
 * to cluster_report).  Fills n entries (n <= cluster_n_workers). */
struct cluster_peer {
	bool alive;
	nng_socket sock;
	uint32_t gen;
	uint64_t load;       /* tokens in flight to it (cluster_load_add) */
	bool near;           /* on the router's node */
};
void cluster_peers(struct cluster *c, struct cluster_peer *out, uint32_t n);

/* Changes on every liveness or placement change: a dispatcher waiting on
 * replies compares it to know when to look at cluster_peers again. */
unsigned cluster_version(struct cluster *c);

/* Tokens in flight to worker w (+ at send, - when done or abandoned). */
void cluster_load_add(struct cluster *c, uint32_t w, int64_t delta);

/* Deadline for a batch of n_rows rows to worker w (deadline.h, from its
 * recent replies); *p99_us (may be NULL) gets the p99 it used, 0 if
 * none. */
uint32_t cluster_deadline_ms(struct cluster *c, uint32_t w, uint32_t n_rows,
        const struct dl_cfg *cfg, uint64_t *p99_us);

/* Outcome of one data request of n_rows rows to worker w of registration
 * gen: latency and tokens for the stats (and, on success, the deadline
 * estimator); on failure (err != 0) the worker is fenced with `why`
 * (unless it re-registered since: gen differs), so cluster_ready()
 * reflects it at once and the worker registers again at its next
 * heartbeat if it is still alive.  err EPMOE_ETIMEDOUT counts as a missed
 * deadline, EPMOE_ECLOSED as a lost connection, EPMOE_ESTATE as a stale
 * placement, others as errors. */
void cluster_report(struct cluster *c, uint32_t w, uint32_t gen,
        uint64_t latency_ns, uint32_t n_rows, uint32_t n_tokens, int err,
        const char *why);

#endif
