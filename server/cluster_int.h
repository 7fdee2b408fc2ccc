/* Internals of the cluster shared by its registry and control plane
 * (cluster.c) and its JSON views (cluster_json.c).  Not for other modules:
 * they use cluster.h. */
#ifndef EPMOE_CLUSTER_INT_H
#define EPMOE_CLUSTER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <nng/nng.h>

#include "cluster.h"
#include "deadline.h"
#include "migrate.h"
#include "placement.h"

#define LAT_RING 512       /* recent latencies kept per worker for p99 */
#define MAX_EVENTS 256     /* pending up/down events */
#define ID_MAX 101         /* worker id / node name: up to 100 chars */


/* NEVER -> JOINING (hello accepted, complete slot order sent) -> UP (a
 * report shows every slot of the committed map on it READY, so batches
 * sent from now on will not be refused as stale) -> DOWN (fenced: left,
 * silent, connection lost, a request failed or missed its deadline) ->
 * JOINING (hello again) ... */
enum wstate { W_NEVER = 0, W_JOINING, W_UP, W_DOWN };

/* Why a worker went down (counted per cause). */
enum fence {
	FENCE_LEFT = 0,       /* Leave: not a fault */
	FENCE_HEARTBEAT,
	FENCE_CONNECTION,
	FENCE_DEADLINE,
	FENCE_ERROR,
	FENCE_STALE,
	FENCE_N
};

struct cl_worker {
	struct cluster *c;     /* back-pointers for the pipe callback */
	uint32_t index;
	enum wstate state;
	char id[ID_MAX];
	char node[ID_MAX];
	char url[512];
	char down_reason[192];
	char join_reason[64];  /* event reason once the join is confirmed */
	uint64_t boot_id;
	uint32_t threads;
	uint64_t ram_bytes;
	uint64_t last_hb_ns;
	uint32_t gen;
	enum fence cause;      /* of the last DOWN */
	uint32_t deadline_streak; /* deadline misses without a success between */
	uint64_t hold_until_ns;   /* re-registration refused until then */
	bool hung_reported;    /* the "hung" event of this silence went out */
	bool ever_up;          /* was routable once: not up now means lost */
	bool draining;         /* asked to leave: its experts move away */
	bool drained_told;     /* its drain is done (counted, logged) */
	uint64_t refused_boot; /* last refused duplicate (log once per boot) */
	atomic_uint_fast64_t outstanding; /* tokens in flight (dispatchers) */
	struct dl_est lat;     /* reply latency by batch size */
	/* one REQ socket per worker place for the cluster's lifetime (NNG
	 * 1.5.2 must not close a socket the dispatcher may be using: see
	 * netsock.h); a new registration gets a new dialer on it */
	bool sock_open;
	nng_socket sock;
	bool dialer_open;
	nng_dialer dialer;
	uint64_t registrations;
	/* as reported by the worker */
	uint64_t rep_tokens, rep_batches, rep_compute_us, rep_ram_free;
	uint64_t rep_prefetch_experts, rep_prefetch_bytes;
	uint64_t rep_q8_tokens, rep_q8_bytes;
	/* as observed by the dispatcher */
	uint64_t batches, tokens, errors;
	struct cluster_hist hist;
	uint32_t lat_us[LAT_RING];
	uint32_t lat_n, lat_head;
};

struct cl_event {
	uint32_t worker;
	bool up;
	bool hung;
	uint32_t silent_ms;
	char id[ID_MAX];
	char reason[224];
};

struct cluster {
	const struct model *m;
	struct mig *mig;          /* committed / retiring / target maps */
	struct placement *home;   /* where experts belong with every worker up
	                             (the configured placement, or the one last
	                             given to cluster_set_placement) */
	bool target_dirty;        /* recompute the cover of home */
	uint32_t n_extra;         /* extra copies of the current cover */
	uint64_t order_seq;
	uint32_t W;               /* worker places */
	uint32_t W0;              /* workers of the starting placement */
	uint64_t boot_id;
	uint32_t hb_ms, hb_timeout_ms;
	bool degraded_off;
	bool closing;          /* the router stops: leaving workers are let go */
	bool elastic;
	bool replica_q8;          /* copies after the first held as Q8_0 */
	bool members_dirty;       /* a join or drain: re-plan home */
	uint32_t plan_R, plan_hosts;
	cluster_weights_fn plan_fn;
	void *plan_arg;
	uint64_t joins, drains, drains_done;
	char url_in[512];
	const struct netsock_tls *tls; /* borrowed; NULL = plain TCP */
	char url[512];
	char node[ID_MAX];        /* this host: workers on it are "near" */

	pthread_mutex_t mu;
	struct cl_worker *w;
	struct cl_event ev[MAX_EVENTS];
	uint32_t ev_head, ev_n;
	uint64_t bad_msgs;
	atomic_uint version;      /* bumped on every liveness / map change */
	/* failover counters */
	uint64_t fenced[FENCE_N];
	uint64_t commits, recoveries, refused_dup;
	double last_recovery_s, max_recovery_s, sum_recovery_s;
	uint64_t unready_since_ns; /* 0: ready (or never was) */
	uint64_t outage_hint_ns;   /* when the last fenced worker was last
	                              known good (0: none) */
	bool was_ready;
	cluster_event_fn ev_fn;
	void *ev_arg;

	nng_socket ctl;
	bool ctl_open;
	pthread_t th;
	bool started;
	atomic_int stop;
	atomic_bool replacing;    /* a placement target is being loaded */
};

/* Whether every (layer, expert) has a slot on a live worker; c->mu held. */
bool cluster_ready_locked(struct cluster *c);

/* (layer, expert) pairs of the committed map served only by copies
 * outside home (degraded) and with no live copy at all; c->mu held. */
void cluster_pairs_locked(struct cluster *c, uint32_t *degraded, uint32_t *unserved);

/* Live, non-draining workers into idx; their count.  c->mu held. */
uint32_t cluster_members_locked(struct cluster *c, uint32_t *idx);

/* Places shown (stats, placement view): the starting workers and every
 * place registered once.  c->mu held. */
uint32_t cluster_n_used_locked(struct cluster *c);

/* The committed map; c->mu held. */
const struct placement *cluster_pl(struct cluster *c);

/* Placement side (cluster_place.c), c->mu held: moves the committed map
 * toward the cover of home, commits and retires (migrate.h), tracks
 * readiness and time to recover.  Called by the control thread after
 * every message and poll. */
void cluster_advance_locked(struct cluster *c);
/* A liveness change: the cover of home must be recomputed. */
void cluster_changed_locked(struct cluster *c);

#endif
