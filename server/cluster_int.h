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
#include "placement.h"

#define LAT_RING 512       /* recent latencies kept per worker for p99 */
#define MAX_EVENTS 256     /* pending up/down events */
#define ID_MAX 101         /* worker id / node name: up to 100 chars */


/* NEVER -> JOINING (hello accepted, order sent) -> UP (the worker's first
 * LoadReport with the placement epoch: it holds its slots, so batches
 * sent from now on will not be refused as stale) -> DOWN (left, silent,
 * connection lost, request failed) -> JOINING (hello again) ... */
enum wstate { W_NEVER = 0, W_JOINING, W_UP, W_DOWN };

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
	/* as observed by the dispatcher */
	uint64_t batches, tokens, errors;
	struct cluster_hist hist;
	uint32_t lat_us[LAT_RING];
	uint32_t lat_n, lat_head;
};

struct cl_event {
	uint32_t worker;
	bool up;
	char id[ID_MAX];
	char reason[224];
};

struct cluster {
	const struct model *m;
	struct placement *pl;
	uint32_t pl_refs;
	uint32_t W;
	uint64_t boot_id;
	uint32_t hb_ms, hb_timeout_ms;
	char url_in[512];
	char url[512];

	pthread_mutex_t mu;
	struct cl_worker *w;
	struct cl_event ev[MAX_EVENTS];
	uint32_t ev_head, ev_n;
	uint64_t bad_msgs;
	cluster_event_fn ev_fn;
	void *ev_arg;

	nng_socket ctl;
	bool ctl_open;
	pthread_t th;
	bool started;
	atomic_int stop;
};

/* Whether every (layer, expert) has a slot on a live worker; c->mu held. */
bool cluster_ready_locked(struct cluster *c);

#endif
