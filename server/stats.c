/* Router statistics: the Prometheus registry and its updates, the routing
 * observer (per-policy balance and cost, per-expert load), and the JSON of
 * /v1/stats and /v1/placement.  Updates come from the engine thread; the
 * loop thread reads under stats_mu. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "dashboard.h"
#include "err.h"
#include "metrics.h"
#include "route.h"
#include "router.h"

static const double lat_buckets[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
#define N_LAT (sizeof(lat_buckets) / sizeof(lat_buckets[0]))

static void
obs_ttft(void *ud, double s)
{
	metrics_observe(((struct router *)ud)->h_ttft, s);
}

static void
obs_itl(void *ud, double s)
{
	metrics_observe(((struct router *)ud)->h_itl, s);
}

static void
obs_e2e(void *ud, double s)
{
	metrics_observe(((struct router *)ud)->h_e2e, s);
}

static void
obs_queue(void *ud, double s)
{
	metrics_observe(((struct router *)ud)->h_queue, s);
}

static void
obs_step(void *ud, const struct engine_timing *d, uint32_t tokens)
{
	struct router *r = ud;
	static const char *const names[] = { "attention", "gate", "route", "experts",
		"shared_expert", "lm_head" };
	double v[6] = { d->attn, d->gate, d->route, d->moe, d->shexp, d->head };
	struct metrics_series *s;

	metrics_observe(r->h_step, d->total);
	for (int i = 0; i < 6; i++) {
		const char *lv[1] = { names[i] };
		if (metrics_series(r->f_phase, lv, &s) == 0)
			metrics_add(s, v[i]);
	}
}

/* Busiest worker's load over the mean, for a layer's expert loads. */
static double
worker_ratio(const struct router *r, uint32_t layer, const uint32_t *load,
        uint32_t E)
{
	double w[256] = { 0 }, sum = 0, mx = 0;
	int W = r->n_workers_map;

	if (r->worker_of == NULL || W <= 0 || W > 256)
		return NAN;
	for (uint32_t e = 0; e < E; e++)
		w[r->worker_of[(size_t)layer * E + e]] += load[e];
	for (int i = 0; i < W; i++) {
		sum += w[i];
		if (w[i] > mx)
			mx = w[i];
	}
	return sum > 0 ? mx / (sum / W) : NAN;
}

static void
on_route(void *ud, struct route_policy *p, uint32_t layer, uint32_t n_tok,
        const struct route_info *info, double seconds)
{
	struct router *r = ud;
	uint32_t E = r->model->hp.n_expert;
	struct route_agg *a;
	char name[96];

	pthread_mutex_lock(&r->stats_mu);
	for (a = r->route_aggs; a && a->policy != p; a = a->next)
		;
	if (a == NULL && (a = calloc(1, sizeof(*a))) != NULL) {
		route_format(route_policy_cfg(p), name, sizeof(name));
		snprintf(a->name, sizeof(a->name), "%s", name);
		a->policy = p;
		a->next = r->route_aggs;
		r->route_aggs = a;
	}
	if (a) {
		a->calls++;
		a->tokens += n_tok;
		a->pairs += info->n_pairs;
		a->ot_runs += info->ot_ran ? 1 : 0;
		a->nonfinite += info->n_nonfinite;
		a->dropped += info->n_dropped;
		a->seconds += seconds;
		if (isfinite(info->maxvio)) {
			a->maxvio_sum += info->maxvio;
			if (info->maxvio > a->maxvio_max)
				a->maxvio_max = info->maxvio;
		}
		double wr = worker_ratio(r, layer, info->load, E);
		if (isfinite(wr)) {
			a->worker_ratio_sum += wr;
			a->worker_calls++;
		}
	}
	for (uint32_t e = 0; e < E; e++) {
		r->expert_load[(size_t)layer * E + e] += info->load[e];
		if (info->load[e] && r->s_expert_tokens)
			metrics_add(r->s_expert_tokens[(size_t)layer * E + e], info->load[e]);
	}
	if (a) {
		const char *lv[1] = { a->name };
		struct metrics_series *s;
		if (metrics_series(r->f_route_tokens, lv, &s) == 0)
			metrics_add(s, n_tok);
		if (metrics_series(r->f_route_secs, lv, &s) == 0)
			metrics_add(s, seconds);
		if (info->ot_ran && metrics_series(r->f_route_ot, lv, &s) == 0)
			metrics_inc(s);
		if (isfinite(info->maxvio) && metrics_series(r->f_route_maxvio, lv, &s) == 0)
			metrics_observe(s, info->maxvio);
	}
	pthread_mutex_unlock(&r->stats_mu);
}

#define REG(kind, var, name, help)                                              \
	do {                                                                    \
		struct metrics_family *f_;                                      \
		if ((rc = metrics_##kind(r->metrics, name, help, NULL, 0, &f_)) != 0) \
			return rc;                                              \
		var = metrics_family_series(f_);                                \
	} while (0)

int
stats_init(struct router *r)
{
	const struct model_hparams *hp = &r->model->hp;
	static const char *const l_policy[] = { "policy" };
	static const char *const l_phase[] = { "phase" };
	static const char *const l_expert[] = { "layer", "expert" };
	static const char *const l_worker[] = { "worker" };
	static const double vio_buckets[] = { 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8 };
	struct metrics_family *f;
	int rc;

	pthread_mutex_init(&r->stats_mu, NULL);
	if ((rc = dash_new(&r->dash)) != 0)
		return rc;
	if ((r->expert_load = calloc((size_t)hp->n_layer * hp->n_expert, sizeof(uint64_t))) == NULL)
		return EPMOE_ENOMEM;
	if ((rc = metrics_new(&r->metrics)) != 0)
		return rc;
	REG(gauge, r->m_running, "epmoe_requests_running", "Requests being generated");
	REG(gauge, r->m_waiting, "epmoe_requests_waiting", "Requests waiting for admission");
	REG(counter, r->m_prompt, "epmoe_prompt_tokens_total", "Prompt tokens processed");
	REG(counter, r->m_gen, "epmoe_generation_tokens_total", "Tokens generated");
	REG(counter, r->m_req_ok, "epmoe_requests_total", "Requests submitted");
	REG(counter, r->m_req_fail, "epmoe_requests_failed_total", "Requests that failed");
	REG(counter, r->m_req_cancel, "epmoe_requests_cancelled_total", "Requests cancelled by clients");
	REG(counter, r->m_steps, "epmoe_steps_total", "Engine steps");
	REG(gauge, r->m_kv, "epmoe_kv_cache_bytes", "KV cache bytes reserved");
#define HIST(var, name, help)                                                  \
	do {                                                                   \
		if ((rc = metrics_histogram(r->metrics, name, help, NULL, 0,   \
		             lat_buckets, N_LAT, &f)) != 0)                    \
			return rc;                                             \
		var = metrics_family_series(f);                                \
	} while (0)
	HIST(r->h_ttft, "epmoe_time_to_first_token_seconds", "Time from arrival to the first token");
	HIST(r->h_itl, "epmoe_inter_token_latency_seconds", "Time between two tokens of a request");
	HIST(r->h_e2e, "epmoe_e2e_request_latency_seconds", "Time from arrival to the last token");
	HIST(r->h_queue, "epmoe_request_queue_time_seconds", "Time from arrival to admission");
	HIST(r->h_step, "epmoe_step_seconds", "Duration of one engine step");
#undef HIST
	if ((rc = metrics_counter(r->metrics, "epmoe_step_phase_seconds_total",
	             "Engine time per phase of the forward pass", l_phase, 1, &r->f_phase)) ||
	        (rc = metrics_counter(r->metrics, "epmoe_routing_tokens_total",
	             "Tokens routed per routing policy (per MoE layer)", l_policy, 1,
	             &r->f_route_tokens)) ||
	        (rc = metrics_counter(r->metrics, "epmoe_routing_seconds_total",
	             "Time spent in the routing policy", l_policy, 1, &r->f_route_secs)) ||
	        (rc = metrics_counter(r->metrics, "epmoe_routing_ot_runs_total",
	             "Routing calls where an optimal-transport plan was computed",
	             l_policy, 1, &r->f_route_ot)) ||
	        (rc = metrics_histogram(r->metrics, "epmoe_routing_maxvio",
	             "MaxVio of expert load per routing call", l_policy, 1, vio_buckets,
	             sizeof(vio_buckets) / sizeof(vio_buckets[0]), &r->f_route_maxvio)) ||
	        (rc = metrics_counter(r->metrics, "epmoe_expert_tokens_total",
	             "Tokens computed per (layer, expert)", l_expert, 2, &r->f_expert_tokens)) ||
	        (rc = metrics_histogram(r->metrics, "epmoe_worker_request_seconds",
	             "Round trip of one expert batch to a worker", l_worker, 1,
	             cluster_hist_bounds_s, CLUSTER_HIST_BUCKETS - 1, &r->f_worker_lat)))
		return rc;
	r->s_expert_tokens = calloc((size_t)hp->n_layer * hp->n_expert, sizeof(*r->s_expert_tokens));
	if (r->s_expert_tokens == NULL)
		return EPMOE_ENOMEM;
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t e = 0; e < hp->n_expert; e++) {
			char ls[16], es[16];
			const char *lv[2] = { ls, es };
			snprintf(ls, sizeof(ls), "%u", l);
			snprintf(es, sizeof(es), "%u", e);
			if ((rc = metrics_series(r->f_expert_tokens, lv,
			             &r->s_expert_tokens[(size_t)l * hp->n_expert + e])) != 0)
				return rc;
		}
	struct sched_observer o = { obs_ttft, obs_itl, obs_e2e, obs_queue, obs_step, r };
	sched_set_observer(r->sched, &o);
	engine_set_route_observer(r->engine, on_route, r);
	return 0;
}

void
stats_fini(struct router *r)
{
	struct route_agg *a = r->route_aggs;
	while (a) {
		struct route_agg *n = a->next;
		free(a);
		a = n;
	}
	r->route_aggs = NULL;
	free(r->expert_load);
	free(r->s_expert_tokens);
	free(r->worker_of);
	metrics_free(r->metrics);
	dash_free(r->dash);
	r->dash = NULL;
	pthread_mutex_destroy(&r->stats_mu);
}


/* Brings a counter up to v (the scheduler keeps the cumulative counts). */
static void
counter_to(struct metrics_series *s, double v)
{
	double d = v - metrics_value(s);
	if (d > 0)
		metrics_add(s, d);
}

int
stats_render_metrics(struct router *r, char **out, size_t *len)
{
	struct sched_stats st;

	sched_get_stats(r->sched, &st);
	metrics_set(r->m_running, st.running);
	metrics_set(r->m_waiting, st.waiting);
	counter_to(r->m_prompt, (double)st.prompt_tokens_total);
	counter_to(r->m_gen, (double)st.generated_tokens_total);
	counter_to(r->m_req_ok, (double)st.requests_total);
	counter_to(r->m_req_fail, (double)st.requests_failed);
	counter_to(r->m_req_cancel, (double)st.requests_cancelled);
	counter_to(r->m_steps, (double)st.steps_total);
	metrics_set(r->m_kv, (double)st.kv_bytes_used);
	if (r->cluster)
		glue_export_metrics(r);
	return metrics_render(r->metrics, out, len);
}

cJSON *
stats_json(struct router *r)
{
	const struct model_hparams *hp = &r->model->hp;
	struct sched_stats st;
	cJSON *j = cJSON_CreateObject(), *o, *arr;

	if (j == NULL)
		return NULL;
	sched_get_stats(r->sched, &st);
	o = cJSON_AddObjectToObject(j, "scheduler");
	cJSON_AddNumberToObject(o, "running", st.running);
	cJSON_AddNumberToObject(o, "waiting", st.waiting);
	cJSON_AddNumberToObject(o, "requests_total", (double)st.requests_total);
	cJSON_AddNumberToObject(o, "requests_failed", (double)st.requests_failed);
	cJSON_AddNumberToObject(o, "requests_cancelled", (double)st.requests_cancelled);
	cJSON_AddNumberToObject(o, "prompt_tokens", (double)st.prompt_tokens_total);
	cJSON_AddNumberToObject(o, "generated_tokens", (double)st.generated_tokens_total);
	cJSON_AddNumberToObject(o, "steps", (double)st.steps_total);
	cJSON_AddNumberToObject(o, "kv_cache_bytes", (double)st.kv_bytes_used);
	const struct engine_timing *t = engine_timing(r->engine);
	o = cJSON_AddObjectToObject(j, "engine_seconds");
	cJSON_AddNumberToObject(o, "attention", t->attn);
	cJSON_AddNumberToObject(o, "gate", t->gate);
	cJSON_AddNumberToObject(o, "route", t->route);
	cJSON_AddNumberToObject(o, "experts", t->moe);
	cJSON_AddNumberToObject(o, "shared_expert", t->shexp);
	cJSON_AddNumberToObject(o, "lm_head", t->head);
	cJSON_AddNumberToObject(o, "total", t->total);
	pthread_mutex_lock(&r->stats_mu);
	o = cJSON_AddObjectToObject(j, "routing");
	for (struct route_agg *a = r->route_aggs; a; a = a->next) {
		cJSON *p = cJSON_AddObjectToObject(o, a->name);
		struct route_stats rs;
		route_policy_stats((const struct route_policy *)a->policy, &rs);
		cJSON_AddNumberToObject(p, "calls", (double)a->calls);
		cJSON_AddNumberToObject(p, "tokens_routed", (double)a->tokens);
		cJSON_AddNumberToObject(p, "experts_per_token",
		        a->tokens ? (double)a->pairs / (double)a->tokens : 0);
		cJSON_AddNumberToObject(p, "maxvio_mean", a->calls ? a->maxvio_sum / a->calls : 0);
		cJSON_AddNumberToObject(p, "maxvio_max", a->maxvio_max);
		if (a->worker_calls)
			cJSON_AddNumberToObject(p, "worker_max_over_mean",
			        a->worker_ratio_sum / a->worker_calls);
		else
			cJSON_AddNullToObject(p, "worker_max_over_mean");
		cJSON_AddNumberToObject(p, "ot_runs", (double)a->ot_runs);
		cJSON_AddNumberToObject(p, "ot_iterations", (double)rs.ot_iters);
		cJSON_AddNumberToObject(p, "nonfinite_logits", (double)a->nonfinite);
		cJSON_AddNumberToObject(p, "dropped_pairs", (double)a->dropped);
		cJSON_AddNumberToObject(p, "routing_seconds", a->seconds);
	}
	arr = cJSON_AddArrayToObject(j, "expert_tokens");
	for (uint32_t l = 0; l < hp->n_layer; l++) {
		cJSON *row = cJSON_CreateArray();
		for (uint32_t e = 0; e < hp->n_expert; e++)
			cJSON_AddItemToArray(row, cJSON_CreateNumber(
			        (double)r->expert_load[(size_t)l * hp->n_expert + e]));
		cJSON_AddItemToArray(arr, row);
	}
	pthread_mutex_unlock(&r->stats_mu);
	if (r->cluster) {
		cJSON *w = glue_workers_json(r);
		if (w)
			cJSON_AddItemToObject(j, "workers", w);
	}
	{
		struct dash_view v = {
			.model = r->cfg.model_name,
			.distributed = r->cluster != NULL,
			.created_unix = (double)r->created,
			.n_layers = hp->n_layer,
			.n_experts = hp->n_expert,
			.ttft = r->h_ttft, .itl = r->h_itl, .e2e = r->h_e2e,
			.queue = r->h_queue,
		};
		dash_stats_json(r->dash, &v, j);
	}
	return j;
}

cJSON *
stats_placement_json(struct router *r)
{
	cJSON *j = NULL;

	if (r->cluster)
		return glue_placement_json(r);
	if ((j = cJSON_CreateObject()) == NULL)
		return NULL;
	cJSON_AddStringToObject(j, "mode", "local");
	cJSON_AddNumberToObject(j, "layers", r->model->hp.n_layer);
	cJSON_AddNumberToObject(j, "experts", r->model->hp.n_expert);
	cJSON_AddStringToObject(j, "note", "experts run in the router process");
	return j;
}
