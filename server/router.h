/* The router's core: what epmoe-router serves and everything it runs on.
 * router_start loads the model's dense part and the tokenizer, brings up
 * the experts (in process with --local; else the worker cluster, the
 * dispatch backend and the local workers of --workers N), and starts the
 * scheduler's engine thread; the front ends (api.c, nngapi.c) and the
 * statistics (stats.c) are started beside it by main and read it.  Also
 * the prompt building both front ends share (tokenizer, chat template).
 *
 * Everything here lives on the libuv loop thread unless a field says
 * otherwise.  Only router.c starts and stops the cluster, the dispatch
 * backend and the local workers; stats.c reads them for the JSON views.
 */
#ifndef EPMOE_ROUTER_H
#define EPMOE_ROUTER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "balance.h"
#include "engine.h"
#include "gen.h"
#include "http.h"
#include "scheduler.h"
#include "tok.h"

struct apikeys;
struct cluster;
struct http_server;
struct netsock_tls;
struct nngapi;
struct dash;
struct spawn;
struct stats;

struct router_cfg {
	const char *model_path;
	const char *model_name;   /* served id; default: file name without .gguf */
	const char *http_addr;    /* "127.0.0.1:8080" */
	const char *nng_url;      /* client API, "" = off */
	const char *control_url;  /* worker control endpoint */
	const char *routing;      /* default routing policy */
	const char *placement;    /* placement file or NULL */
	const char *experts_per_worker; /* "a,b,..." or NULL */
	int workers;              /* local worker processes to spawn */
	int expect_workers;       /* workers to wait for (>= workers) */
	bool local;               /* experts in process */
	int threads;
	uint32_t n_ctx;
	enum dtype kv_type;       /* KV cache F32 (default) or F16 */
	uint32_t max_tokens_default;
	uint32_t max_tokens_limit;
	uint32_t expert_timeout_ms;  /* longest wait for one expert batch */
	uint32_t deadline_floor_ms;  /* shortest adaptive deadline (0 = 200) */
	double deadline_k;           /* deadline = k x p99 (0 = 3) */
	double hedge;                /* hedge at h x p99; 0 = off */
	const char *replica;         /* "dynamic" (NULL) or "static" */
	uint64_t replica_seed;
	uint32_t heartbeat_ms;       /* worker report period (0 = 500) */
	bool no_degraded;            /* never re-place a lost worker's experts */
	enum bal_mode balance;       /* --balance (main: default all) */
	bool elastic;                /* --elastic (main: default on) */
	uint32_t max_workers;        /* --max-workers; 0 = from elastic */
	uint32_t eplb_interval, eplb_window, hosts, llep_min_chunk; /* 0 = defaults */
	double eplb_threshold, llep_lambda, llep_alpha;             /* 0 = defaults */
	int32_t redundant_slots;     /* -1: from replica_ram_mb */
	uint64_t replica_ram_mb;
	bool replica_q8;             /* --replica-dtype q8_0 */
	uint32_t llep_cache;         /* --llep-cache (main: default 2) */
	const char *record_routing;  /* per-step routing trace file */
	uint32_t drain_timeout_s; /* SIGTERM: finish requests for up to this */
	struct sched_cfg sched;
	bool log_json;
	struct http_config http;  /* HTTP limits (connections, timeouts) */
	bool metrics_auth;        /* /metrics needs an API key too */
	const char *tls_cert;     /* PEM files of mutual TLS with the workers */
	const char *tls_key;      /* (all three or none; tls+tcp:// URLs) */
	const char *tls_ca;
	unsigned spec;               /* ROUTER_SPEC_* bits (--spec) */
	const char *affinity;        /* affinity file to load, or NULL */
};

/* Parts of the speculative pre-scheduler (--spec, speculative.md). */
#define ROUTER_SPEC_PREDICT 1u   /* predict experts before each gate, score */
#define ROUTER_SPEC_GROUP 2u     /* grouped placement from the affinity file */
#define ROUTER_SPEC_COBATCH 4u   /* two micro-batches in flight, co-batched */
#define ROUTER_SPEC_PREFETCH 8u  /* workers page in the next layer's likely experts */
#define ROUTER_SPEC_ALL 15u
/* Parses "off|predict|group|cobatch|prefetch|all" or a '+'-joined list of parts:
 * 0 or EPMOE_EINVAL. */
int router_spec_parse(const char *s, unsigned *out);
/* "off", "all" or the parts joined by '+'; buf of >= 32 bytes. */
const char *router_spec_name(unsigned spec, char *buf, size_t len);

struct router {
	struct router_cfg cfg;
	uv_loop_t *loop;
	struct model *model;
	struct engine *engine;
	struct tok *tok;
	char *chat_template;      /* tokenizer.chat_template or NULL */
	char default_routing[GEN_MAX_ROUTING + 1]; /* canonical --routing */
	struct sched *sched;
	struct affinity *affinity; /* the pre-scheduler's model (engine thread
	                            * writes; stats read its counters), or NULL */
	int32_t *grouped;          /* [L][E] grouped placement, or NULL */
	int64_t created;
	uint64_t boot_id;
	bool stopping;            /* SIGTERM seen: draining, then stopping */

	/* the experts on workers (all NULL in local mode) */
	struct cluster *cluster;
	struct netsock_tls *tls;  /* mutual TLS identity with the workers */
	struct moe_backend *dispatch;
	struct spawn *spawned;    /* the local workers of --workers N */
	uv_timer_t reap_timer;    /* restarts local workers that exit, kills
	                           * hung ones */
	bool reap_timer_on;
	/* ids of hung workers to kill (cluster events, control thread) */
	pthread_mutex_t hung_mu;
	bool hung_mu_ok;
	struct router_hung { char id[104]; uint32_t silent_ms; } hung[8];
	uint32_t n_hung;
	uint16_t *worker_of;      /* [L * E] expert -> worker of the placement
	                           * (first slot), or NULL; set at start */
	int n_workers_map;

	/* the live view's decisions log (dashboard.h): the balancer and the
	 * pre-scheduler write to it from any thread */
	struct dash *dash;

	/* started by main beside the core */
	struct apikeys *apikeys;  /* client API keys; NULL or empty: open */
	struct bal *bal;          /* load statistics, EPLB re-placement */
	struct stats *stats;
	struct http_server *http;
	struct nngapi *nngapi;
};

/* Brings up what r->cfg describes (r->loop set, the rest zero).  On
 * failure the error is logged; router_stop and router_free still apply. */
int router_start(struct router *r);
/* Stops the engine thread (pending requests fail with their final events
 * delivered now) and the local workers; the loop must then run to close
 * the router's handles.  Idempotent. */
void router_stop(struct router *r);
/* Frees what router_start made (after router_stop and the loop's last
 * run). */
void router_free(struct router *r);

/* Whether every expert slot is served (always true in local mode). */
bool router_ready(struct router *r);

/* Turns text into token ids (add_special: BOS etc.; parse_special: "<s>"
 * in text is the special token).  On success *ids is the caller's. */
int router_tokenize(struct router *r, const char *text, size_t len,
        bool add_special, bool parse_special, int32_t **ids, size_t *n);
/* Applies the model's chat template (ChatML fallback) and tokenizes.  On
 * success *ids is the caller's. */
int router_chat_prompt(struct router *r, const char *const *roles,
        const char *const *contents, size_t n, int32_t **ids, size_t *n_ids);

#endif
