/* Router statistics and the observability JSON.  See stats.h. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "affinity.h"
#include "cluster.h"
#include "dashboard.h"
#include "dispatch.h"
#include "err.h"
#include "metrics.h"
#include "route.h"
#include "router.h"
#include "stats.h"

static const double lat_buckets[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
#define N_LAT (sizeof(lat_buckets) / sizeof(lat_buckets[0]))
/* finer buckets for the inter-token latency split by placement phase
 * (1 ms x 1.25^i up to about 20 s): a p99 ratio near 1 must show */
#define N_PHASE_LAT 45
static const char *const itl_phase_name[2] = { "steady", "replacing" };

/* Per routing policy statistics, aggregated on the engine thread from the
 * engine's route observer (under mu). */
struct route_agg {
	char name[96];            /* canonical spec, or "other" */
	uint64_t calls, tokens, pairs, ot_runs, ot_iters, nonfinite, dropped;
	double maxvio_sum, maxvio_max;
	double worker_ratio_sum;  /* busiest worker / mean, per call */
	uint64_t worker_calls;
	double seconds;
	struct route_agg *next;
};

struct stats {
	struct router *r;
	struct metrics *metrics;  /* updates from any thread */
	struct metrics_series *m_running, *m_waiting, *m_prompt, *m_gen,
	        *m_req_ok, *m_req_fail, *m_req_cancel, *m_steps, *m_kv,
	        *m_http_conns, *m_http_evicted, *m_http_refused, *m_http_timeouts;
	struct metrics_series *m_pc_lookup, *m_pc_hit, *m_pc_rate, *m_pc_cached,
	        *m_pc_evict, *m_pc_bypass;
	struct metrics_series *h_ttft, *h_itl, *h_e2e, *h_queue, *h_step;
	/* distributed: ITL while a re-placement is in flight, and otherwise */
	struct metrics_series *h_itl_phase[2];
	double itl_phase_bounds[N_PHASE_LAT];
	struct metrics_family *f_expert_tokens, *f_route_tokens, *f_route_secs,
	        *f_route_ot, *f_route_maxvio, *f_worker_lat, *f_phase, *f_rejected,
	        *f_worker_up;
	struct metrics_series **s_expert_tokens; /* [L * E] */
	/* balancer */
	struct metrics_family *f_ewma, *f_wwin, *f_wout;
	struct metrics_series *b_ratio, *b_repl, *b_moved, *b_checks, *b_borrows,
	        *b_borrowed;
	/* failover (distributed mode only) */
	struct metrics_series *fo_fenced[6], *fo_redisp, *fo_redisp_pairs,
	        *fo_batch_fail, *fo_hedges, *fo_hedges_won, *fo_abandoned, *fo_stale,
	        *fo_unserved_tok, *fo_degraded, *fo_unserved_pairs, *fo_epoch,
	        *fo_quantized,
	        *fo_transition, *fo_commits, *fo_recoveries, *fo_recovery_sum,
	        *fo_last_recovery, *fo_refused, *fo_joins, *fo_drains, *fo_drains_done;
	struct metrics_series *worker_up[256]; /* the id holding each index */

	/* speculative pre-scheduler: per layer, pairs and hits per predictor */
	struct metrics_series **sp_pairs;    /* [L] */
	struct metrics_series *mb_steps, *mb_single, *mb_layers, *mb_workers[2],
	        *mb_both;
	struct metrics_series *pf_msgs, *pf_hinted, *pf_paged, *pf_bytes;
	struct metrics_series **sp_hits;     /* [L][AFF_N_PRED] */
	struct metrics_series **sp_rate;     /* [L][AFF_N_PRED] */

	pthread_mutex_t mu;
	bool mu_ok;
	struct route_agg *route_aggs;
	uint64_t *expert_load;    /* [L * E] tokens per (layer, expert) */
};

static void
obs_ttft(void *ud, double s)
{
	metrics_observe(((struct stats *)ud)->h_ttft, s);
}

static void
obs_itl(void *ud, double s)
{
	struct stats *st = ud;

	metrics_observe(st->h_itl, s);
	if (st->h_itl_phase[0])
		metrics_observe(st->h_itl_phase[cluster_replacing(st->r->cluster) ? 1 : 0], s);
}

static void
obs_e2e(void *ud, double s)
{
	metrics_observe(((struct stats *)ud)->h_e2e, s);
}

static void
obs_queue(void *ud, double s)
{
	metrics_observe(((struct stats *)ud)->h_queue, s);
}

static void
obs_step(void *ud, const struct engine_timing *d, uint32_t tokens)
{
	struct stats *st = ud;
	static const char *const names[] = { "attention", "gate", "route", "experts",
		"shared_expert", "lm_head" };
	double v[6] = { d->attn, d->gate, d->route, d->moe, d->shexp, d->head };
	struct metrics_series *s;

	metrics_observe(st->h_step, d->total);
	for (int i = 0; i < 6; i++) {
		const char *lv[1] = { names[i] };
		if (metrics_series(st->f_phase, lv, &s) == 0)
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

/* The aggregate of policy name (stats_mu held): a new one while fewer
 * than STATS_MAX_POLICIES exist, else the shared "other" one, so the
 * statistics and the metric labels stay bounded whatever specs clients
 * send. */
static struct route_agg *
route_agg_of(struct stats *st, const char *name)
{
	struct route_agg *a;
	uint32_t n = 0;

	for (a = st->route_aggs; a; a = a->next, n++)
		if (strcmp(a->name, name) == 0)
			return a;
	if (n >= STATS_MAX_POLICIES) {
		name = "other";
		for (a = st->route_aggs; a; a = a->next)
			if (strcmp(a->name, name) == 0)
				return a;
	}
	if ((a = calloc(1, sizeof(*a))) == NULL)
		return NULL;
	snprintf(a->name, sizeof(a->name), "%s", name);
	a->next = st->route_aggs;
	st->route_aggs = a;
	return a;
}

static void
on_route(void *ud, struct route_policy *p, uint32_t layer, uint32_t n_tok,
        const struct route_info *info, double seconds)
{
	struct stats *st = ud;
	const struct router *r = st->r;
	uint32_t E = r->model->hp.n_expert;
	struct route_agg *a;
	char name[96];

	if (r->bal) /* before our lock: it may re-place */
		bal_observe(r->bal, layer, info->load);
	/* by name, not by policy object: the scheduler frees and creates
	 * policies as requests come and go */
	if (route_format(route_policy_cfg(p), name, sizeof(name)) != 0)
		snprintf(name, sizeof(name), "%s", route_kind_name(route_policy_cfg(p)->kind));
	pthread_mutex_lock(&st->mu);
	a = route_agg_of(st, name);
	if (a) {
		a->calls++;
		a->tokens += n_tok;
		a->pairs += info->n_pairs;
		a->ot_runs += info->ot_ran ? 1 : 0;
		a->ot_iters += info->ot_iters;
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
		st->expert_load[(size_t)layer * E + e] += info->load[e];
		if (info->load[e] && st->s_expert_tokens)
			metrics_add(st->s_expert_tokens[(size_t)layer * E + e], info->load[e]);
	}
	if (a) {
		const char *lv[1] = { a->name };
		struct metrics_series *s;
		if (metrics_series(st->f_route_tokens, lv, &s) == 0)
			metrics_add(s, n_tok);
		if (metrics_series(st->f_route_secs, lv, &s) == 0)
			metrics_add(s, seconds);
		if (info->ot_ran && metrics_series(st->f_route_ot, lv, &s) == 0)
			metrics_inc(s);
		if (isfinite(info->maxvio) && metrics_series(st->f_route_maxvio, lv, &s) == 0)
			metrics_observe(s, info->maxvio);
	}
	pthread_mutex_unlock(&st->mu);
}

#define REG(kind, var, name, help)                                              \
	do {                                                                    \
		struct metrics_family *f_;                                      \
		if ((rc = metrics_##kind(st->metrics, name, help, NULL, 0, &f_)) != 0) \
			return rc;                                              \
		var = metrics_family_series(f_);                                \
	} while (0)

static int register_balance(struct stats *st);
static void counter_to(struct metrics_series *s, double v);

/* Re-dispatch, hedging, fencing, degraded service, time to recover. */
static const char *const spec_pred_name[AFF_N_PRED] = { "token", "token_prev" };

/* The prediction hit rates of the pre-scheduler, per layer. */
static int
register_spec(struct stats *st)
{
	static const char *const l_layer[] = { "layer" };
	static const char *const l_pred[] = { "layer", "predictor" };
	uint32_t L = st->r->model->hp.n_layer;
	struct metrics_family *fp, *fh, *fr;
	int rc;

	if ((rc = metrics_counter(st->metrics, "epmoe_spec_pairs_total",
	             "(token, expert) pairs the gate chose, per layer, while predictions ran",
	             l_layer, 1, &fp)) ||
	        (rc = metrics_counter(st->metrics, "epmoe_spec_hits_total",
	             "Of those pairs, the ones predicted before the gate (predictor: token = "
	             "from the token id, token_prev = token id and the previous layer's experts)",
	             l_pred, 2, &fh)) ||
	        (rc = metrics_gauge(st->metrics, "epmoe_spec_hit_rate",
	             "Hits / pairs since start, per layer and predictor", l_pred, 2, &fr)))
		return rc;
	st->sp_pairs = calloc(L, sizeof(*st->sp_pairs));
	st->sp_hits = calloc((size_t)L * AFF_N_PRED, sizeof(*st->sp_hits));
	st->sp_rate = calloc((size_t)L * AFF_N_PRED, sizeof(*st->sp_rate));
	if (!st->sp_pairs || !st->sp_hits || !st->sp_rate)
		return EPMOE_ENOMEM;
	for (uint32_t l = 0; l < L; l++) {
		char lv0[16];
		const char *lv[2] = { lv0, NULL };
		snprintf(lv0, sizeof(lv0), "%u", l);
		if ((rc = metrics_series(fp, lv, &st->sp_pairs[l])) != 0)
			return rc;
		for (int p = 0; p < AFF_N_PRED; p++) {
			lv[1] = spec_pred_name[p];
			if ((rc = metrics_series(fh, lv, &st->sp_hits[l * AFF_N_PRED + p])) ||
			        (rc = metrics_series(fr, lv, &st->sp_rate[l * AFF_N_PRED + p])))
				return rc;
		}
	}
	return 0;
}

/* --spec cobatch: steps split into two micro-batches and the workers
 * each half's routing touched. */
static int
register_microbatch(struct stats *st)
{
	static const char *const l_mb[] = { "microbatch" };
	struct metrics_family *f;
	const char *lv[1];
	int rc;

	REG(counter, st->mb_steps, "epmoe_spec_split_steps_total",
	    "Steps run as two micro-batches in flight (--spec cobatch)");
	REG(counter, st->mb_single, "epmoe_spec_unsplit_steps_total",
	    "Steps run as one batch while --spec cobatch was on (one sequence, or a "
	    "policy routing the whole batch)");
	REG(counter, st->mb_layers, "epmoe_spec_split_layers_total",
	    "(split step, layer)s whose workers are counted below");
	if ((rc = metrics_counter(st->metrics, "epmoe_spec_microbatch_workers_total",
	             "Distinct workers each micro-batch's routing touched, summed over split "
	             "layers (divide by epmoe_spec_split_layers_total)", l_mb, 1, &f)) != 0)
		return rc;
	for (int i = 0; i < 2; i++) {
		lv[0] = i ? "1" : "0";
		if ((rc = metrics_series(f, lv, &st->mb_workers[i])) != 0)
			return rc;
	}
	REG(counter, st->mb_both, "epmoe_spec_microbatch_shared_workers_total",
	    "Workers both micro-batches touched, summed over split layers");
	return 0;
}

/* --spec prefetch: hints sent with expert batches, and what the workers
 * report they paged in. */
static int
register_prefetch(struct stats *st)
{
	int rc;

	REG(counter, st->pf_msgs, "epmoe_spec_prefetch_requests_total",
	    "Expert batches that carried a prefetch hint (the next layer's predicted experts)");
	REG(counter, st->pf_hinted, "epmoe_spec_prefetch_hinted_experts_total",
	    "Experts named in those hints, summed");
	REG(counter, st->pf_paged, "epmoe_spec_prefetch_paged_experts_total",
	    "Experts the workers paged in on a hint (madvise WILLNEED; held ones only), "
	    "as last reported");
	REG(counter, st->pf_bytes, "epmoe_spec_prefetch_paged_bytes_total",
	    "Weight bytes of those experts, as last reported");
	return 0;
}

static int
register_failover(struct stats *st)
{
	static const char *const l_cause[] = { "cause" };
	static const char *const causes[6] = { "heartbeat", "connection",
		"deadline", "error", "stale", "left" };
	struct metrics_family *f;
	int rc;

	if ((rc = metrics_counter(st->metrics, "epmoe_workers_fenced_total",
	             "Workers fenced (marked dead until they register again), by cause",
	             l_cause, 1, &f)) != 0)
		return rc;
	for (int i = 0; i < 6; i++) {
		const char *lv[1] = { causes[i] };
		if ((rc = metrics_series(f, lv, &st->fo_fenced[i])) != 0)
			return rc;
	}
	REG(counter, st->fo_redisp, "epmoe_redispatched_groups_total",
	    "Token groups re-sent to another copy after their batch failed");
	REG(counter, st->fo_redisp_pairs, "epmoe_redispatched_pairs_total",
	    "(token, expert) pairs re-sent to another copy after their batch failed");
	REG(counter, st->fo_batch_fail, "epmoe_expert_batch_failures_total",
	    "Expert batches that failed (error, stale placement, lost connection, deadline)");
	REG(counter, st->fo_hedges, "epmoe_hedges_total",
	    "Hedged duplicates of late expert batches sent to another copy");
	REG(counter, st->fo_hedges_won, "epmoe_hedges_won_total",
	    "Hedged duplicates that answered first");
	REG(counter, st->fo_abandoned, "epmoe_expert_batches_abandoned_total",
	    "Expert batches given up (fenced worker, lost hedge race): late replies dropped");
	REG(counter, st->fo_stale, "epmoe_stale_replies_total",
	    "Batches a worker refused as naming a slot or epoch it does not hold");
	REG(counter, st->fo_unserved_tok, "epmoe_unserved_tokens_total",
	    "Token rows failed because an expert they needed had no live copy");
	REG(gauge, st->fo_degraded, "epmoe_degraded_pairs",
	    "(layer, expert) pairs served only by temporary copies (their workers are down)");
	REG(gauge, st->fo_unserved_pairs, "epmoe_unserved_pairs",
	    "(layer, expert) pairs with no live copy now");
	REG(gauge, st->fo_epoch, "epmoe_placement_epoch", "Committed placement epoch");
	REG(gauge, st->fo_quantized, "epmoe_quantized_copies",
	    "Expert copies workers hold as Q8_0 (--replica-dtype q8_0)");
	REG(gauge, st->fo_transition, "epmoe_placement_transition",
	    "1 while a new placement is being loaded");
	REG(counter, st->fo_commits, "epmoe_placement_commits_total",
	    "Placement maps committed after the first");
	REG(counter, st->fo_recoveries, "epmoe_recoveries_total",
	    "Times every expert was served again after some had no live copy");
	REG(counter, st->fo_recovery_sum, "epmoe_recovery_seconds_total",
	    "Time from losing the last copy of an expert to every expert served again, summed");
	REG(gauge, st->fo_last_recovery, "epmoe_last_recovery_seconds",
	    "Time to recover of the last recovery");
	REG(counter, st->fo_refused, "epmoe_refused_duplicate_ids_total",
	    "Registrations refused because a live worker has the same id");
	REG(counter, st->fo_joins, "epmoe_worker_joins_total",
	    "Workers that became live beyond the placement and got experts (elastic)");
	REG(counter, st->fo_drains, "epmoe_worker_drains_total",
	    "Workers that asked to drain (SIGTERM) before leaving");
	REG(counter, st->fo_drains_done, "epmoe_worker_drains_done_total",
	    "Drains completed: no placement used the worker any more");
	return 0;
}

static int
stats_register(struct stats *st)
{
	const struct model_hparams *hp = &st->r->model->hp;
	static const char *const l_policy[] = { "policy" };
	static const char *const l_phase[] = { "phase" };
	static const char *const l_expert[] = { "layer", "expert" };
	static const char *const l_worker[] = { "worker" };
	static const char *const l_worker_up[] = { "worker", "id", "node" };
	static const char *const l_reason[] = { "reason" };
	static const double vio_buckets[] = { 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8 };
	struct metrics_family *f;
	int rc;

	if ((st->expert_load = calloc((size_t)hp->n_layer * hp->n_expert, sizeof(uint64_t))) == NULL)
		return EPMOE_ENOMEM;
	if ((rc = metrics_new(&st->metrics)) != 0)
		return rc;
	REG(gauge, st->m_running, "epmoe_requests_running", "Requests being generated");
	REG(gauge, st->m_waiting, "epmoe_requests_waiting", "Requests waiting for admission");
	REG(counter, st->m_prompt, "epmoe_prompt_tokens_total", "Prompt tokens processed");
	REG(counter, st->m_gen, "epmoe_generation_tokens_total", "Tokens generated");
	REG(counter, st->m_req_ok, "epmoe_requests_total", "Requests submitted");
	REG(counter, st->m_req_fail, "epmoe_requests_failed_total", "Requests that failed");
	REG(counter, st->m_req_cancel, "epmoe_requests_cancelled_total", "Requests cancelled by clients");
	REG(counter, st->m_steps, "epmoe_steps_total", "Engine steps");
	REG(gauge, st->m_kv, "epmoe_kv_cache_bytes", "KV cache bytes reserved");
	REG(gauge, st->m_http_conns, "epmoe_http_connections", "Open HTTP client connections");
	REG(counter, st->m_http_evicted, "epmoe_http_connections_evicted_total",
	        "Idle or slow HTTP connections closed to make room under the connection caps");
	REG(counter, st->m_http_refused, "epmoe_http_connections_refused_total",
	        "HTTP connections answered 503 because every connection under the cap was busy");
	REG(counter, st->m_http_timeouts, "epmoe_http_request_timeouts_total",
	        "HTTP requests whose headers or body did not arrive in time (408)");
	REG(counter, st->m_pc_lookup, "epmoe_prefix_cache_lookup_tokens_total",
	        "Prompt tokens of requests that looked in the prefix cache");
	REG(counter, st->m_pc_hit, "epmoe_prefix_cache_hit_tokens_total",
	        "Prompt tokens taken from the prefix cache instead of prefilled");
	REG(gauge, st->m_pc_rate, "epmoe_prefix_cache_hit_rate",
	        "Hit tokens / lookup tokens since the start");
	REG(gauge, st->m_pc_cached, "epmoe_prefix_cache_tokens",
	        "Token positions the prefix cache holds");
	REG(counter, st->m_pc_evict, "epmoe_prefix_cache_evicted_blocks_total",
	        "Prefix cache blocks evicted");
	REG(counter, st->m_pc_bypass, "epmoe_prefix_cache_bypassed_total",
	        "Requests whose routing policy routes whole prompts (no cache)");
#define HIST(var, name, help)                                                  \
	do {                                                                   \
		if ((rc = metrics_histogram(st->metrics, name, help, NULL, 0,   \
		             lat_buckets, N_LAT, &f)) != 0)                    \
			return rc;                                             \
		var = metrics_family_series(f);                                \
	} while (0)
	HIST(st->h_ttft, "epmoe_time_to_first_token_seconds", "Time from arrival to the first token");
	HIST(st->h_itl, "epmoe_inter_token_latency_seconds", "Time between two tokens of a request");
	HIST(st->h_e2e, "epmoe_e2e_request_latency_seconds", "Time from arrival to the last token");
	HIST(st->h_queue, "epmoe_request_queue_time_seconds", "Time from arrival to admission");
	HIST(st->h_step, "epmoe_step_seconds", "Duration of one engine step");
	if (st->r->cluster) {
		static const char *const l_pl[] = { "phase" };
		double b = 0.001;
		for (int i = 0; i < N_PHASE_LAT; i++, b *= 1.25)
			st->itl_phase_bounds[i] = b;
		if ((rc = metrics_histogram(st->metrics,
		             "epmoe_inter_token_latency_by_placement_seconds",
		             "Time between two tokens of a request, by whether a re-placement "
		             "(PREPARE to the last COMMIT) was in flight when the token came",
		             l_pl, 1, st->itl_phase_bounds, N_PHASE_LAT, &f)) != 0)
			return rc;
		for (int i = 0; i < 2; i++) {
			const char *lv[1] = { itl_phase_name[i] };
			if ((rc = metrics_series(f, lv, &st->h_itl_phase[i])) != 0)
				return rc;
		}
	}
#undef HIST
	if ((rc = metrics_counter(st->metrics, "epmoe_step_phase_seconds_total",
	             "Engine time per phase of the forward pass", l_phase, 1, &st->f_phase)) ||
	        (rc = metrics_counter(st->metrics, "epmoe_routing_tokens_total",
	             "Tokens routed per routing policy (per MoE layer)", l_policy, 1,
	             &st->f_route_tokens)) ||
	        (rc = metrics_counter(st->metrics, "epmoe_routing_seconds_total",
	             "Time spent in the routing policy", l_policy, 1, &st->f_route_secs)) ||
	        (rc = metrics_counter(st->metrics, "epmoe_routing_ot_runs_total",
	             "Routing calls where an optimal-transport plan was computed",
	             l_policy, 1, &st->f_route_ot)) ||
	        (rc = metrics_histogram(st->metrics, "epmoe_routing_maxvio",
	             "MaxVio of expert load per routing call", l_policy, 1, vio_buckets,
	             sizeof(vio_buckets) / sizeof(vio_buckets[0]), &st->f_route_maxvio)) ||
	        (rc = metrics_counter(st->metrics, "epmoe_expert_tokens_total",
	             "Tokens computed per (layer, expert)", l_expert, 2, &st->f_expert_tokens)) ||
	        (rc = metrics_counter(st->metrics, "epmoe_requests_rejected_total",
	             "Generation requests refused, by reason", l_reason, 1,
	             &st->f_rejected)) ||
	        (rc = metrics_histogram(st->metrics, "epmoe_worker_request_seconds",
	             "Round trip of one expert batch to a worker", l_worker, 1,
	             cluster_hist_bounds_s, CLUSTER_HIST_BUCKETS - 1, &st->f_worker_lat)) ||
	        (rc = metrics_gauge(st->metrics, "epmoe_worker_up",
	             "1 while the worker (id: its --id, node: its host or container) that holds "
	             "this worker index is up, 0 once down or replaced", l_worker_up, 3,
	             &st->f_worker_up)))
		return rc;
	if (st->r->cluster && (rc = register_failover(st)) != 0)
		return rc;
	if ((rc = register_balance(st)) != 0)
		return rc;
	if (st->r->affinity && (st->r->cfg.spec & ROUTER_SPEC_PREDICT) &&
	        (rc = register_spec(st)) != 0)
		return rc;
	if ((rc = register_microbatch(st)) != 0)
		return rc;
	if (st->r->dispatch && (st->r->cfg.spec & ROUTER_SPEC_PREFETCH) &&
	        (rc = register_prefetch(st)) != 0)
		return rc;
	st->s_expert_tokens = calloc((size_t)hp->n_layer * hp->n_expert, sizeof(*st->s_expert_tokens));
	if (st->s_expert_tokens == NULL)
		return EPMOE_ENOMEM;
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t e = 0; e < hp->n_expert; e++) {
			char ls[16], es[16];
			const char *lv[2] = { ls, es };
			snprintf(ls, sizeof(ls), "%u", l);
			snprintf(es, sizeof(es), "%u", e);
			if ((rc = metrics_series(st->f_expert_tokens, lv,
			             &st->s_expert_tokens[(size_t)l * hp->n_expert + e])) != 0)
				return rc;
		}
	return 0;
}

int
stats_new(struct stats **out, struct router *r)
{
	struct stats *st;
	int rc;

	if ((st = calloc(1, sizeof(*st))) == NULL)
		return EPMOE_ENOMEM;
	st->r = r;
	pthread_mutex_init(&st->mu, NULL);
	st->mu_ok = true;
	if ((rc = stats_register(st)) != 0) {
		stats_free(st);
		return rc;
	}
	struct sched_observer o = { obs_ttft, obs_itl, obs_e2e, obs_queue, obs_step, st };
	sched_set_observer(r->sched, &o);
	engine_set_route_observer(r->engine, on_route, st);
	*out = st;
	return 0;
}

void
stats_free(struct stats *st)
{
	if (st == NULL)
		return;
	struct route_agg *a = st->route_aggs;
	while (a) {
		struct route_agg *n = a->next;
		free(a);
		a = n;
	}
	free(st->expert_load);
	free(st->sp_pairs);
	free(st->sp_hits);
	free(st->sp_rate);
	free(st->s_expert_tokens);
	metrics_free(st->metrics);
	if (st->mu_ok)
		pthread_mutex_destroy(&st->mu);
	free(st);
}

void
stats_count_reject(struct stats *st, int code)
{
	const char *lv[1];
	struct metrics_series *s;

	switch (code) {
	case EPMOE_EBUSY: lv[0] = "queue_full"; break;
	case EPMOE_EUNAVAIL: lv[0] = "not_ready"; break;
	case EPMOE_ECLOSED: lv[0] = "shutting_down"; break;
	case EPMOE_ENOMEM: lv[0] = "no_memory"; break;
	case EPMOE_EAUTH: lv[0] = "unauthorized"; break;
	default: lv[0] = "invalid"; break;
	}
	if (st && st->f_rejected && metrics_series(st->f_rejected, lv, &s) == 0)
		metrics_inc(s);
}

/* Load statistics and re-placement (balance.h). */
static int
register_balance(struct stats *st)
{
	static const char *const l_expert[] = { "layer", "expert" };
	static const char *const l_worker[] = { "worker" };
	int rc;

	if ((rc = metrics_gauge(st->metrics, "epmoe_expert_load_ewma",
	             "Tokens per step routed to (layer, expert), exponentially weighted",
	             l_expert, 2, &st->f_ewma)) ||
	        (rc = metrics_gauge(st->metrics, "epmoe_worker_window_tokens",
	             "Tokens a worker is charged over the load window (copies share "
	             "their expert's load evenly)", l_worker, 1, &st->f_wwin)) ||
	        (rc = metrics_gauge(st->metrics, "epmoe_worker_outstanding_tokens",
	             "Tokens in flight to a worker", l_worker, 1, &st->f_wout)))
		return rc;
	REG(gauge, st->b_ratio, "epmoe_balance_worker_max_mean",
	    "Busiest worker's load over the mean, load window, committed placement");
	REG(counter, st->b_checks, "epmoe_balance_checks_total", "EPLB interval checks");
	REG(counter, st->b_repl, "epmoe_balance_replacements_total",
	    "Re-placements handed to the epoch protocol");
	REG(counter, st->b_moved, "epmoe_balance_moved_bytes_total",
	    "Expert weight bytes loaded by re-placements");
	REG(counter, st->b_borrows, "epmoe_balance_borrows_total",
	    "Experts borrowed for LLEP to spill to (--balance llep, --llep-cache)");
	REG(gauge, st->b_borrowed, "epmoe_balance_borrowed_copies",
	    "Borrowed expert copies held now");
	return 0;
}

static void
export_balance(struct stats *st)
{
	struct router *r = st->r;
	const struct model_hparams *hp = &r->model->hp;
	size_t le = (size_t)hp->n_layer * hp->n_expert;
	struct bal_stats bs;
	double *ew;
	cJSON *j, *wl, *it;
	char a[16], b[16];
	const char *lv[2] = { a, b };
	struct metrics_series *s;
	uint32_t w = 0;

	if (r->bal == NULL)
		return;
	bal_get_stats(r->bal, &bs);
	metrics_set(st->b_ratio, bs.ratio);
	counter_to(st->b_checks, (double)bs.checks);
	counter_to(st->b_repl, (double)bs.replacements);
	counter_to(st->b_moved, (double)bs.moved_bytes);
	counter_to(st->b_borrows, (double)bs.borrows);
	metrics_set(st->b_borrowed, bs.borrowed);
	if ((ew = malloc(le * sizeof(*ew))) != NULL) {
		bal_loads(r->bal, NULL, ew);
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (uint32_t e = 0; e < hp->n_expert; e++) {
				snprintf(a, sizeof(a), "%u", l);
				snprintf(b, sizeof(b), "%u", e);
				if (metrics_series(st->f_ewma, lv, &s) == 0)
					metrics_set(s, ew[(size_t)l * hp->n_expert + e]);
			}
		free(ew);
	}
	if ((j = bal_json(r->bal)) == NULL)
		return;
	wl = cJSON_GetObjectItemCaseSensitive(j, "worker_window_load");
	cJSON_ArrayForEach(it, wl) {
		snprintf(a, sizeof(a), "%u", w++);
		if (w <= 256 && metrics_series(st->f_wwin, lv, &s) == 0)
			metrics_set(s, it->valuedouble);
	}
	cJSON_Delete(j);
	if (r->cluster) {
		uint32_t W = cluster_n_used(r->cluster);
		struct cluster_peer *cp = calloc(W ? W : 1, sizeof(*cp));
		if (cp == NULL)
			return;
		cluster_peers(r->cluster, cp, W);
		for (w = 0; w < W && w < 256; w++) {
			snprintf(a, sizeof(a), "%u", w);
			if (metrics_series(st->f_wout, lv, &s) == 0)
				metrics_set(s, (double)cp[w].load);
		}
		free(cp);
	}
}

/* Brings a counter up to v (the scheduler keeps the cumulative counts). */
static void
counter_to(struct metrics_series *s, double v)
{
	double d = v - metrics_value(s);
	if (d > 0)
		metrics_add(s, d);
}

/* The cluster keeps cumulative latency histograms per worker: mirror
 * them into the registry. */
static void
export_worker_latency(struct stats *st)
{
	struct cluster *c = st->r->cluster;
	uint32_t n = cluster_n_used(c);
	struct cluster_hist h;

	for (uint32_t w = 0; w < n; w++) {
		char lv0[16];
		const char *lv[1] = { lv0 };
		struct metrics_series *s;
		snprintf(lv0, sizeof(lv0), "%u", w);
		if (cluster_worker_hist(c, w, &h) != 0 ||
		        metrics_series(st->f_worker_lat, lv, &s) != 0)
			continue;
		/* cluster buckets are cumulative, the last one +Inf */
		uint64_t per[CLUSTER_HIST_BUCKETS];
		for (int b = 0; b < CLUSTER_HIST_BUCKETS; b++)
			per[b] = h.bucket[b] - (b ? h.bucket[b - 1] : 0);
		metrics_hist_load(s, per, h.sum_s);
	}
}

static void
export_failover(struct stats *st)
{
	struct cluster_failover fo;
	struct dispatch_stats ds;
	uint64_t fenced[6];

	cluster_failover(st->r->cluster, &fo);
	fenced[0] = fo.fenced_heartbeat;
	fenced[1] = fo.fenced_connection;
	fenced[2] = fo.fenced_deadline;
	fenced[3] = fo.fenced_error;
	fenced[4] = fo.fenced_stale;
	fenced[5] = fo.left;
	for (int i = 0; i < 6; i++)
		counter_to(st->fo_fenced[i], (double)fenced[i]);
	metrics_set(st->fo_degraded, fo.degraded_pairs);
	metrics_set(st->fo_unserved_pairs, fo.unserved_pairs);
	metrics_set(st->fo_epoch, (double)fo.epoch);
	metrics_set(st->fo_quantized, (double)fo.quantized_copies);
	metrics_set(st->fo_transition, fo.transition);
	counter_to(st->fo_commits, (double)fo.commits);
	counter_to(st->fo_recoveries, (double)fo.recoveries);
	counter_to(st->fo_recovery_sum, fo.recovery_s_total);
	metrics_set(st->fo_last_recovery, fo.last_recovery_s);
	counter_to(st->fo_refused, (double)fo.refused_duplicate_ids);
	counter_to(st->fo_joins, (double)fo.joins);
	counter_to(st->fo_drains, (double)fo.drains);
	counter_to(st->fo_drains_done, (double)fo.drains_done);
	if (st->r->dispatch == NULL)
		return;
	dispatch_stats(st->r->dispatch, &ds);
	counter_to(st->fo_redisp, (double)ds.redispatches);
	counter_to(st->fo_redisp_pairs, (double)ds.redispatched_pairs);
	counter_to(st->fo_batch_fail, (double)ds.batch_failures);
	counter_to(st->fo_hedges, (double)ds.hedges);
	counter_to(st->fo_hedges_won, (double)ds.hedges_won);
	counter_to(st->fo_abandoned, (double)ds.abandoned);
	counter_to(st->fo_stale, (double)ds.stale);
	counter_to(st->fo_unserved_tok, (double)ds.unserved_tokens);
	if (st->pf_msgs) {
		uint64_t paged, bytes;
		cluster_prefetch_totals(st->r->cluster, &paged, &bytes);
		counter_to(st->pf_msgs, (double)ds.hinted_msgs);
		counter_to(st->pf_hinted, (double)ds.hinted_experts);
		counter_to(st->pf_paged, (double)paged);
		counter_to(st->pf_bytes, (double)bytes);
	}
}

/* epmoe_worker_up{worker, id, node}: which worker (container, host)
 * holds each index now; the series of an id that left its index is set
 * to 0.  Indices from 256 on are not labelled. */
static void
export_worker_up(struct stats *st)
{
	cJSON *j = NULL;
	const cJSON *ws, *w;

	if (cluster_stats_json(st->r->cluster, &j) != 0)
		return;
	ws = cJSON_GetObjectItemCaseSensitive(j, "workers");
	cJSON_ArrayForEach(w, ws) {
		const cJSON *ix = cJSON_GetObjectItemCaseSensitive(w, "index");
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(w, "id");
		const cJSON *node = cJSON_GetObjectItemCaseSensitive(w, "node");
		const cJSON *state = cJSON_GetObjectItemCaseSensitive(w, "state");
		char lv0[16];
		const char *lv[3] = { lv0, NULL, NULL };
		struct metrics_series *s;
		int i;

		if (!cJSON_IsNumber(ix) || !cJSON_IsString(id) || id->valuestring[0] == '\0' ||
		        (i = ix->valueint) < 0 || i >= 256)
			continue;
		snprintf(lv0, sizeof(lv0), "%d", i);
		lv[1] = id->valuestring;
		lv[2] = cJSON_IsString(node) ? node->valuestring : "";
		if (metrics_series(st->f_worker_up, lv, &s) != 0)
			continue;
		if (st->worker_up[i] && st->worker_up[i] != s)
			metrics_set(st->worker_up[i], 0);
		st->worker_up[i] = s;
		metrics_set(s, cJSON_IsString(state) && strcmp(state->valuestring, "up") == 0);
	}
	cJSON_Delete(j);
}

int
stats_render_metrics(struct stats *st, char **out, size_t *len)
{
	struct sched_stats ss;

	sched_get_stats(st->r->sched, &ss);
	metrics_set(st->m_running, ss.running);
	metrics_set(st->m_waiting, ss.waiting);
	counter_to(st->m_prompt, (double)ss.prompt_tokens_total);
	counter_to(st->m_gen, (double)ss.generated_tokens_total);
	counter_to(st->m_req_ok, (double)ss.requests_total);
	counter_to(st->m_req_fail, (double)ss.requests_failed);
	counter_to(st->m_req_cancel, (double)ss.requests_cancelled);
	counter_to(st->m_steps, (double)ss.steps_total);
	metrics_set(st->m_kv, (double)ss.kv_bytes_used);
	if (st->r->http != NULL) {
		struct http_counters hc;

		http_server_get_counters(st->r->http, &hc);
		metrics_set(st->m_http_conns, (double)http_server_n_connections(st->r->http));
		counter_to(st->m_http_evicted, (double)hc.evicted);
		counter_to(st->m_http_refused, (double)hc.refused);
		counter_to(st->m_http_timeouts, (double)hc.timeouts);
	}
	if (st->r->engine) {
		const struct engine_mb_stats *mb = engine_mb_stats(st->r->engine);
		counter_to(st->mb_steps, (double)mb->steps);
		counter_to(st->mb_single, (double)mb->single);
		counter_to(st->mb_layers, (double)mb->layers);
		counter_to(st->mb_workers[0], (double)mb->workers_mb[0]);
		counter_to(st->mb_workers[1], (double)mb->workers_mb[1]);
		counter_to(st->mb_both, (double)mb->workers_both);
	}
	if (st->sp_pairs) {
		for (uint32_t l = 0; l < st->r->model->hp.n_layer; l++) {
			struct aff_layer_stats a;
			affinity_hits(st->r->affinity, l, &a);
			counter_to(st->sp_pairs[l], (double)a.pairs);
			for (int p = 0; p < AFF_N_PRED; p++) {
				counter_to(st->sp_hits[l * AFF_N_PRED + p], (double)a.hits[p]);
				metrics_set(st->sp_rate[l * AFF_N_PRED + p],
				        a.pairs ? (double)a.hits[p] / (double)a.pairs : 0.0);
			}
		}
	}
	counter_to(st->m_pc_lookup, (double)ss.pc_lookup_tokens);
	counter_to(st->m_pc_hit, (double)ss.pc_hit_tokens);
	metrics_set(st->m_pc_rate, ss.pc_lookup_tokens ?
	        (double)ss.pc_hit_tokens / (double)ss.pc_lookup_tokens : 0);
	metrics_set(st->m_pc_cached, (double)ss.pc_cached_tokens);
	counter_to(st->m_pc_evict, (double)ss.pc_evictions);
	counter_to(st->m_pc_bypass, (double)ss.pc_bypassed);
	if (st->r->cluster) {
		export_worker_latency(st);
		export_failover(st);
		export_worker_up(st);
	}
	export_balance(st);
	return metrics_render(st->metrics, out, len);
}

/* The "workers" part of /v1/stats: the cluster's view plus the
 * dispatcher's traffic. */
static cJSON *
workers_json(struct router *r)
{
	struct dispatch_stats ds;
	cJSON *j = NULL, *d;

	if (cluster_stats_json(r->cluster, &j) != 0)
		return NULL;
	if (r->dispatch == NULL || (d = cJSON_AddObjectToObject(j, "dispatch")) == NULL)
		return j;
	dispatch_stats(r->dispatch, &ds);
	cJSON_AddNumberToObject(d, "calls", (double)ds.calls);
	cJSON_AddNumberToObject(d, "failures", (double)ds.failures);
	cJSON_AddNumberToObject(d, "messages", (double)ds.msgs);
	cJSON_AddNumberToObject(d, "rows_sent", (double)ds.rows_sent);
	cJSON_AddNumberToObject(d, "bytes_sent", (double)ds.bytes_sent);
	cJSON_AddNumberToObject(d, "bytes_received", (double)ds.bytes_recv);
	cJSON_AddNumberToObject(d, "pack_s", ds.t_pack);
	cJSON_AddNumberToObject(d, "wire_s", ds.t_wire);
	cJSON_AddNumberToObject(d, "compute_s", ds.t_compute);
	cJSON_AddNumberToObject(d, "combine_s", ds.t_combine);
	cJSON_AddNumberToObject(d, "total_s", ds.t_total);
	cJSON_AddNumberToObject(d, "batch_failures", (double)ds.batch_failures);
	cJSON_AddNumberToObject(d, "redispatched_groups", (double)ds.redispatches);
	cJSON_AddNumberToObject(d, "redispatched_pairs", (double)ds.redispatched_pairs);
	cJSON_AddNumberToObject(d, "hedges", (double)ds.hedges);
	cJSON_AddNumberToObject(d, "hedges_won", (double)ds.hedges_won);
	cJSON_AddNumberToObject(d, "abandoned", (double)ds.abandoned);
	cJSON_AddNumberToObject(d, "stale_replies", (double)ds.stale);
	cJSON_AddNumberToObject(d, "unserved_tokens", (double)ds.unserved_tokens);
	cJSON_AddNumberToObject(d, "llep_calls", (double)ds.llep_calls);
	cJSON_AddNumberToObject(d, "llep_split_groups", (double)ds.llep_split_groups);
	cJSON_AddNumberToObject(d, "layer_worker_max_mean",
	        ds.mean_pairs > 0 ? (double)ds.busiest_pairs / ds.mean_pairs : 0.0);
	cJSON_AddNumberToObject(d, "layer_busiest_pairs", (double)ds.busiest_pairs);
	cJSON_AddNumberToObject(d, "layer_mean_pairs", ds.mean_pairs);
	return j;
}

/* The "spec" part of /v1/stats: the pre-scheduler's parts and the hit
 * rate of each predictor per layer. */
static cJSON *
spec_json(struct router *r)
{
	cJSON *j = cJSON_CreateObject(), *arr;
	char buf[64];
	uint64_t pairs = 0, hits[AFF_N_PRED] = { 0 };

	if (j == NULL)
		return NULL;
	cJSON_AddStringToObject(j, "mode", router_spec_name(r->cfg.spec, buf, sizeof(buf)));
	cJSON_AddBoolToObject(j, "predicting", r->affinity && (r->cfg.spec & ROUTER_SPEC_PREDICT));
	cJSON_AddBoolToObject(j, "grouped_placement", r->grouped != NULL);
	if (r->cfg.affinity)
		cJSON_AddStringToObject(j, "affinity_file", r->cfg.affinity);
	if (r->engine) {
		const struct engine_mb_stats *mb = engine_mb_stats(r->engine);
		cJSON *o = cJSON_AddObjectToObject(j, "microbatch");
		double L = mb->layers ? (double)mb->layers : 1.0;
		double T = mb->steps ? (double)mb->steps : 1.0;
		cJSON_AddBoolToObject(o, "on", (r->cfg.spec & ROUTER_SPEC_COBATCH) != 0);
		cJSON_AddNumberToObject(o, "split_steps", (double)mb->steps);
		cJSON_AddNumberToObject(o, "unsplit_steps", (double)mb->single);
		cJSON_AddNumberToObject(o, "cobatched_steps", (double)mb->cobatched);
		cJSON_AddNumberToObject(o, "tokens_per_step_0", (double)mb->tokens_mb[0] / T);
		cJSON_AddNumberToObject(o, "tokens_per_step_1", (double)mb->tokens_mb[1] / T);
		cJSON_AddNumberToObject(o, "workers_per_layer_0", (double)mb->workers_mb[0] / L);
		cJSON_AddNumberToObject(o, "workers_per_layer_1", (double)mb->workers_mb[1] / L);
		cJSON_AddNumberToObject(o, "shared_workers_per_layer", (double)mb->workers_both / L);
	}
	if (r->dispatch) {
		struct dispatch_stats ds;
		uint64_t paged, bytes;
		cJSON *o = cJSON_AddObjectToObject(j, "prefetch");
		dispatch_stats(r->dispatch, &ds);
		cluster_prefetch_totals(r->cluster, &paged, &bytes);
		cJSON_AddBoolToObject(o, "on", (r->cfg.spec & ROUTER_SPEC_PREFETCH) != 0);
		cJSON_AddNumberToObject(o, "hinted_requests", (double)ds.hinted_msgs);
		cJSON_AddNumberToObject(o, "hinted_experts", (double)ds.hinted_experts);
		cJSON_AddNumberToObject(o, "paged_experts", (double)paged);
		cJSON_AddNumberToObject(o, "paged_bytes", (double)bytes);
	}
	if (r->affinity == NULL || !(r->cfg.spec & ROUTER_SPEC_PREDICT))
		return j;
	cJSON_AddNumberToObject(j, "affinity_bytes", (double)affinity_bytes(r->affinity));
	arr = cJSON_AddArrayToObject(j, "layers");
	for (uint32_t l = 0; l < r->model->hp.n_layer; l++) {
		struct aff_layer_stats a;
		cJSON *o = cJSON_CreateObject();
		affinity_hits(r->affinity, l, &a);
		pairs += a.pairs;
		cJSON_AddNumberToObject(o, "layer", l);
		cJSON_AddNumberToObject(o, "pairs", (double)a.pairs);
		for (int p = 0; p < AFF_N_PRED; p++) {
			char k[32];
			hits[p] += a.hits[p];
			snprintf(k, sizeof(k), "hit_rate_%s", spec_pred_name[p]);
			cJSON_AddNumberToObject(o, k, a.pairs ? (double)a.hits[p] / (double)a.pairs : 0.0);
		}
		cJSON_AddItemToArray(arr, o);
	}
	cJSON_AddNumberToObject(j, "pairs", (double)pairs);
	for (int p = 0; p < AFF_N_PRED; p++) {
		char k[32];
		snprintf(k, sizeof(k), "hit_rate_%s", spec_pred_name[p]);
		cJSON_AddNumberToObject(j, k, pairs ? (double)hits[p] / (double)pairs : 0.0);
	}
	return j;
}

/* balance.itl_by_placement: inter-token latency while a re-placement
 * was in flight and otherwise, and the ratio of their p99s (the stall
 * a re-placement costs; target <= 1.25). */
static void
itl_phase_json(struct stats *st, cJSON *bal)
{
	cJSON *o = cJSON_AddObjectToObject(bal, "itl_by_placement");
	double p99[2] = { NAN, NAN };

	if (o == NULL)
		return;
	for (int i = 0; i < 2; i++) {
		uint64_t counts[N_PHASE_LAT + 1], n = 0;
		const double *bounds = NULL;
		double sum = 0;
		size_t nb = metrics_hist_read(st->h_itl_phase[i], counts, N_PHASE_LAT + 1,
		        &bounds, &sum);
		cJSON *p = cJSON_AddObjectToObject(o, itl_phase_name[i]);
		for (size_t b = 0; b < nb; b++)
			n += counts[b];
		p99[i] = dash_hist_quantile(bounds, counts, nb, 0.99);
		if (p == NULL)
			continue;
		cJSON_AddNumberToObject(p, "tokens", (double)n);
		cJSON_AddNumberToObject(p, "mean_s", n ? sum / (double)n : 0.0);
		if (isfinite(p99[i]))
			cJSON_AddNumberToObject(p, "p99_s", p99[i]);
		else
			cJSON_AddNullToObject(p, "p99_s");
	}
	if (isfinite(p99[0]) && isfinite(p99[1]) && p99[0] > 0)
		cJSON_AddNumberToObject(o, "p99_ratio", p99[1] / p99[0]);
	else
		cJSON_AddNullToObject(o, "p99_ratio");
}

cJSON *
stats_json(struct stats *st)
{
	struct router *r = st->r;
	const struct model_hparams *hp = &r->model->hp;
	struct sched_stats ss;
	cJSON *j = cJSON_CreateObject(), *o, *arr;

	if (j == NULL)
		return NULL;
	sched_get_stats(r->sched, &ss);
	o = cJSON_AddObjectToObject(j, "scheduler");
	cJSON_AddNumberToObject(o, "running", ss.running);
	cJSON_AddNumberToObject(o, "waiting", ss.waiting);
	cJSON_AddNumberToObject(o, "slots_used", ss.slots_used);
	cJSON_AddNumberToObject(o, "policies_cached", ss.policies_cached);
	cJSON_AddNumberToObject(o, "requests_total", (double)ss.requests_total);
	cJSON_AddNumberToObject(o, "requests_failed", (double)ss.requests_failed);
	cJSON_AddNumberToObject(o, "requests_cancelled", (double)ss.requests_cancelled);
	cJSON_AddNumberToObject(o, "prompt_tokens", (double)ss.prompt_tokens_total);
	cJSON_AddNumberToObject(o, "generated_tokens", (double)ss.generated_tokens_total);
	cJSON_AddNumberToObject(o, "steps", (double)ss.steps_total);
	cJSON_AddNumberToObject(o, "kv_cache_bytes", (double)ss.kv_bytes_used);
	o = cJSON_AddObjectToObject(j, "prefix_cache");
	cJSON_AddBoolToObject(o, "enabled", ss.prefix_cache);
	cJSON_AddNumberToObject(o, "lookup_tokens", (double)ss.pc_lookup_tokens);
	cJSON_AddNumberToObject(o, "hit_tokens", (double)ss.pc_hit_tokens);
	cJSON_AddNumberToObject(o, "hit_rate", ss.pc_lookup_tokens ?
	        (double)ss.pc_hit_tokens / (double)ss.pc_lookup_tokens : 0);
	cJSON_AddNumberToObject(o, "cached_tokens", (double)ss.pc_cached_tokens);
	cJSON_AddNumberToObject(o, "pinned_bytes", (double)ss.pc_pinned_bytes);
	cJSON_AddNumberToObject(o, "evicted_blocks", (double)ss.pc_evictions);
	cJSON_AddNumberToObject(o, "bypassed_requests", (double)ss.pc_bypassed);
	const struct engine_timing *t = engine_timing(r->engine);
	o = cJSON_AddObjectToObject(j, "engine_seconds");
	cJSON_AddNumberToObject(o, "attention", t->attn);
	cJSON_AddNumberToObject(o, "gate", t->gate);
	cJSON_AddNumberToObject(o, "route", t->route);
	cJSON_AddNumberToObject(o, "experts", t->moe);
	cJSON_AddNumberToObject(o, "shared_expert", t->shexp);
	cJSON_AddNumberToObject(o, "lm_head", t->head);
	cJSON_AddNumberToObject(o, "total", t->total);
	pthread_mutex_lock(&st->mu);
	o = cJSON_AddObjectToObject(j, "routing");
	for (struct route_agg *a = st->route_aggs; a; a = a->next) {
		cJSON *p = cJSON_AddObjectToObject(o, a->name);
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
		cJSON_AddNumberToObject(p, "ot_iterations", (double)a->ot_iters);
		cJSON_AddNumberToObject(p, "nonfinite_logits", (double)a->nonfinite);
		cJSON_AddNumberToObject(p, "dropped_pairs", (double)a->dropped);
		cJSON_AddNumberToObject(p, "routing_seconds", a->seconds);
	}
	arr = cJSON_AddArrayToObject(j, "expert_tokens");
	for (uint32_t l = 0; l < hp->n_layer; l++) {
		cJSON *row = cJSON_CreateArray();
		for (uint32_t e = 0; e < hp->n_expert; e++)
			cJSON_AddItemToArray(row, cJSON_CreateNumber(
			        (double)st->expert_load[(size_t)l * hp->n_expert + e]));
		cJSON_AddItemToArray(arr, row);
	}
	pthread_mutex_unlock(&st->mu);
	cJSON_AddItemToObject(j, "spec", spec_json(r));
	if (r->cluster) {
		cJSON *w = workers_json(r);
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
			.ttft = st->h_ttft, .itl = st->h_itl, .e2e = st->h_e2e,
			.queue = st->h_queue,
		};
		dash_stats_json(r->dash, &v, j);
	}
	if (r->bal) {
		cJSON *b = bal_json(r->bal), *out;
		if (b && r->cluster && (out = cJSON_AddArrayToObject(b, "worker_outstanding_tokens"))) {
			uint32_t W = cluster_n_used(r->cluster);
			struct cluster_peer *cp = calloc(W ? W : 1, sizeof(*cp));
			if (cp) {
				cluster_peers(r->cluster, cp, W);
				for (uint32_t i = 0; i < W; i++)
					cJSON_AddItemToArray(out, cJSON_CreateNumber((double)cp[i].load));
				free(cp);
			}
		}
		if (b && st->h_itl_phase[0])
			itl_phase_json(st, b);
		if (b) {
			cJSON_AddBoolToObject(b, "llep", (r->cfg.balance & BAL_LLEP) != 0);
			cJSON_AddItemToObject(j, "balance", b);
		}
	}
	return j;
}

cJSON *
stats_placement_json(struct router *r)
{
	cJSON *j = NULL;

	if (r->cluster)
		return cluster_placement_json(r->cluster, &j) == 0 ? j : NULL;
	if ((j = cJSON_CreateObject()) == NULL)
		return NULL;
	cJSON_AddStringToObject(j, "mode", "local");
	cJSON_AddNumberToObject(j, "layers", r->model->hp.n_layer);
	cJSON_AddNumberToObject(j, "experts", r->model->hp.n_expert);
	cJSON_AddStringToObject(j, "note", "experts run in the router process");
	return j;
}

void
stats_health(struct router *r, struct stats_health *h)
{
	struct sched_stats ss;

	memset(h, 0, sizeof(*h));
	sched_get_stats(r->sched, &ss);
	h->ok = router_ready(r) && !r->stopping;
	h->status = r->stopping ? "stopping" : h->ok ? "ok" : "loading";
	h->running = ss.running;
	h->waiting = ss.waiting;
	if (r->cluster) {
		h->workers_total = cluster_n_used(r->cluster);
		h->workers_live = cluster_n_live(r->cluster);
	}
}

cJSON *
stats_health_json(struct router *r, bool *ok)
{
	struct stats_health h;
	cJSON *j = cJSON_CreateObject();

	stats_health(r, &h);
	*ok = h.ok;
	if (j == NULL)
		return NULL;
	cJSON_AddStringToObject(j, "status", h.status);
	cJSON_AddStringToObject(j, "model", r->cfg.model_name);
	cJSON_AddStringToObject(j, "mode", r->cluster ? "distributed" : "local");
	cJSON_AddNumberToObject(j, "requests_running", h.running);
	cJSON_AddNumberToObject(j, "requests_waiting", h.waiting);
	if (r->cluster) {
		cJSON *pl = stats_placement_json(r);
		if (pl)
			cJSON_AddItemToObject(j, "cluster", pl);
	}
	return j;
}
