/* The router daemon's shared state: what main() builds and the front ends
 * (HTTP in api.c, NNG in nngapi.c) and the statistics (stats.c) use.
 * Everything here lives on the libuv loop thread unless a field says
 * otherwise. */
#ifndef EPMOE_ROUTER_H
#define EPMOE_ROUTER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "engine.h"
#include "scheduler.h"
#include "tok.h"

struct http_server;
struct metrics;
struct metrics_family;
struct metrics_series;
struct cluster;
struct nngapi;
struct cJSON;

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
	struct sched_cfg sched;
	bool log_json;
};

/* Per routing policy statistics, aggregated on the engine thread (under
 * stats_mu) from the engine's route observer. */
struct route_agg {
	char name[96];
	const void *policy;       /* the route_policy it aggregates */
	uint64_t calls, tokens, pairs, ot_runs, nonfinite, dropped;
	double maxvio_sum, maxvio_max;
	double worker_ratio_sum;  /* busiest worker / mean, per call */
	uint64_t worker_calls;
	double seconds;
	struct route_agg *next;
};

struct router {
	struct router_cfg cfg;
	uv_loop_t *loop;
	struct model *model;
	struct engine *engine;
	struct tok *tok;
	char *chat_template;      /* tokenizer.chat_template or NULL */
	struct sched *sched;
	struct http_server *http;
	struct nngapi *nngapi;
	struct cluster *cluster;  /* NULL in local mode */
	struct moe_backend *dispatch;
	int64_t created;
	uint64_t boot_id;
	bool stopping;

	/* metrics (updates from any thread) */
	struct metrics *metrics;
	struct metrics_series *m_running, *m_waiting, *m_prompt, *m_gen,
	        *m_req_ok, *m_req_fail, *m_req_cancel, *m_steps, *m_kv;
	struct metrics_series *h_ttft, *h_itl, *h_e2e, *h_queue, *h_step;
	struct metrics_family *f_expert_tokens, *f_route_tokens, *f_route_secs,
	        *f_route_ot, *f_route_maxvio, *f_worker_lat, *f_phase;
	struct metrics_series **s_expert_tokens; /* [L * E] */

	/* routing statistics */
	pthread_mutex_t stats_mu;
	struct route_agg *route_aggs;
	uint64_t *expert_load;   /* [L * E] tokens per (layer, expert) */
	uint16_t *worker_of;     /* [L * E] expert -> worker map for the ratio, or NULL */
	int n_workers_map;
};

/* api.c: the HTTP front end.  Starts listening on cfg.http_addr. */
int api_start(struct router *r);
void api_stop(struct router *r);

/* stats.c: metrics registry, route observer, /metrics, /v1/stats. */
int stats_init(struct router *r);
void stats_fini(struct router *r);
/* Renders /metrics (caller frees *out). */
int stats_render_metrics(struct router *r, char **out, size_t *len);
/* /v1/stats and /v1/placement bodies (caller cJSON_Delete's). */
struct cJSON *stats_json(struct router *r);
struct cJSON *stats_placement_json(struct router *r);
/* Whether every expert slot is served (always true in local mode). */
bool router_ready(struct router *r);

/* glue.c: the distributed parts (cluster of workers, dispatch backend);
 * the only file that knows the cluster's API. */
int glue_start(struct router *r);   /* spawn/await workers, set the backend */
/* Stops the local workers (the engine thread must be stopped). */
void glue_stop(struct router *r);
/* Frees the dispatch backend and the cluster (after the engine's last use). */
void glue_free(struct router *r);
struct cJSON *glue_workers_json(struct router *r);
struct cJSON *glue_placement_json(struct router *r);
void glue_export_metrics(struct router *r);

/* nngapi.c: the NNG client API (REQ/REP), when cfg.nng_url is set. */
int nngapi_start(struct router *r, struct nngapi **out);
/* Stops serving (closes the socket and the loop handles). */
void nngapi_stop(struct nngapi *n);
/* After the scheduler delivered its last events and the loop closed the
 * handles. */
void nngapi_free(struct nngapi *n);

/* Shared by both front ends: turns a prompt (text or ids) into ids. */
int router_tokenize(struct router *r, const char *text, size_t len,
        bool add_special, bool parse_special, int32_t **ids, size_t *n);
/* Applies the model's chat template (ChatML fallback) and tokenizes. */
int router_chat_prompt(struct router *r, const char *const *roles,
        const char *const *contents, size_t n, int32_t **ids, size_t *n_ids);

#endif
