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

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "engine.h"
#include "gen.h"
#include "scheduler.h"
#include "tok.h"

struct cluster;
struct http_server;
struct nngapi;
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
	uint32_t expert_timeout_ms;
	uint32_t drain_timeout_s; /* SIGTERM: finish requests for up to this */
	struct sched_cfg sched;
	bool log_json;
};

struct router {
	struct router_cfg cfg;
	uv_loop_t *loop;
	struct model *model;
	struct engine *engine;
	struct tok *tok;
	char *chat_template;      /* tokenizer.chat_template or NULL */
	char default_routing[GEN_MAX_ROUTING + 1]; /* canonical --routing */
	struct sched *sched;
	int64_t created;
	uint64_t boot_id;
	bool stopping;            /* SIGTERM seen: draining, then stopping */

	/* the experts on workers (all NULL in local mode) */
	struct cluster *cluster;
	struct moe_backend *dispatch;
	struct spawn *spawned;    /* the local workers of --workers N */
	uv_timer_t reap_timer;    /* restarts local workers that exit */
	bool reap_timer_on;
	uint16_t *worker_of;      /* [L * E] expert -> worker of the placement
	                           * (first slot), or NULL; set at start */
	int n_workers_map;

	/* started by main beside the core */
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
