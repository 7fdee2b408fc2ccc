/* Load statistics and EPLB-driven live re-placement; see balance.h. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "balance.h"
#include "cluster.h"
#include "dashboard.h"
#include "eplb.h"
#include "err.h"
#include "log.h"
#include "placement.h"
#include "borrow.h"

struct bal {
	struct bal_cfg cfg;
	uint32_t L, E;
	struct cluster *c;
	uint64_t expert_bytes;
	uint32_t R;            /* redundant slots per layer */

	pthread_mutex_t mu;
	uint32_t *ring;        /* [window][L][E] */
	uint64_t *sum;         /* [L][E] over the window */
	double *ewma;          /* [L][E] */
	uint32_t head, filled;
	bool step_open;
	struct bal_stats st;
	double *wl;            /* [W] window load per worker (last check) */
	uint32_t n_wl;
	FILE *trace;           /* --record-routing */
	struct borrow *bw;     /* LLEP's borrowed copies (llep alone), or NULL */
};

static const char *const mode_names[] = { "off", "eplb", "llep", "all" };

int
bal_mode_parse(const char *s, enum bal_mode *out)
{
	for (int i = 0; s && i < 4; i++)
		if (strcmp(s, mode_names[i]) == 0) {
			*out = (enum bal_mode)i;
			return 0;
		}
	return EPMOE_EINVAL;
}

const char *
bal_mode_name(enum bal_mode m)
{
	return (unsigned)m < 4 ? mode_names[m] : "?";
}

/* The cluster's elastic plans (joins, drains) weigh experts by the
 * window; called under the cluster lock, takes only b->mu. */
static void
plan_weights(void *arg, double *w)
{
	bal_loads(arg, w, NULL);
}

int
bal_new(struct bal **out, const struct bal_cfg *cfg, uint32_t n_layer,
        uint32_t n_expert, struct cluster *c, uint64_t expert_bytes)
{
	struct bal *b;
	size_t le = (size_t)n_layer * n_expert;

	if (n_layer == 0 || n_expert == 0)
		return EPMOE_EINVAL;
	if ((b = calloc(1, sizeof(*b))) == NULL)
		return EPMOE_ENOMEM;
	b->cfg = *cfg;
	if (b->cfg.window == 0)
		b->cfg.window = 256;
	if (b->cfg.ewma_alpha <= 0 || b->cfg.ewma_alpha > 1)
		b->cfg.ewma_alpha = 0.05;
	if (b->cfg.interval == 0)
		b->cfg.interval = 64;
	if (b->cfg.threshold <= 0)
		b->cfg.threshold = 1.10;
	if (b->cfg.hosts == 0)
		b->cfg.hosts = 1;
	if (b->cfg.llep_lambda <= 0)
		b->cfg.llep_lambda = 1.3;
	b->L = n_layer;
	b->E = n_expert;
	b->c = c;
	b->expert_bytes = expert_bytes;
	if (cfg->redundant >= 0)
		b->R = (uint32_t)cfg->redundant;
	else if (expert_bytes > 0)
		b->R = (uint32_t)(cfg->replica_ram_mb * 1048576ull / expert_bytes / n_layer);
	if (c) {
		uint32_t W = cluster_n_workers(c);
		/* (each plan raises E + R to a multiple of its live workers:
		 * whole slots per worker) */
		if ((b->wl = calloc(W ? W : 1, sizeof(*b->wl))) == NULL) {
			free(b);
			return EPMOE_ENOMEM;
		}
		b->n_wl = W;
	}
	if (c && cfg->mode == BAL_LLEP && cfg->llep_cache > 0 &&
	        borrow_new(&b->bw, b->n_wl ? b->n_wl : 1, cfg->llep_cache) != 0) {
		free(b->wl);
		free(b);
		return EPMOE_ENOMEM;
	}
	if (cfg->record_path) {
		if ((b->trace = fopen(cfg->record_path, "w")) == NULL) {
			borrow_free(b->bw);
			log_error("balance: cannot create %s: %s", cfg->record_path, strerror(errno));
			free(b->wl);
			free(b);
			return EPMOE_EIO;
		}
		fprintf(b->trace, BAL_TRACE_MAGIC " 1 %u %u\n", n_layer, n_expert);
	}
	b->ring = calloc((size_t)b->cfg.window * le, sizeof(*b->ring));
	b->sum = calloc(le, sizeof(*b->sum));
	b->ewma = calloc(le, sizeof(*b->ewma));
	if (b->ring == NULL || b->sum == NULL || b->ewma == NULL ||
	        pthread_mutex_init(&b->mu, NULL) != 0) {
		free(b->ring);
		free(b->sum);
		free(b->ewma);
		free(b->wl);
		borrow_free(b->bw);
		if (b->trace)
			fclose(b->trace);
		free(b);
		return EPMOE_ENOMEM;
	}
	if (c)
		cluster_set_planner(c, b->R, b->cfg.hosts, plan_weights, b);
	*out = b;
	return 0;
}

void
bal_free(struct bal *b)
{
	if (b == NULL)
		return;
	if (b->c) /* no plan of the cluster's may call back from now on */
		cluster_set_planner(b->c, b->R, b->cfg.hosts, NULL, NULL);
	pthread_mutex_destroy(&b->mu);
	if (b->trace)
		fclose(b->trace);
	free(b->ring);
	free(b->sum);
	free(b->ewma);
	free(b->wl);
	borrow_free(b->bw);
	free(b);
}

uint32_t
bal_redundant(const struct bal *b)
{
	return b->R;
}

/* A new step: the oldest step of the window leaves the sums. */
static void
step_begin(struct bal *b)
{
	size_t le = (size_t)b->L * b->E;
	uint32_t *slot;

	b->head = (b->head + 1) % b->cfg.window;
	slot = b->ring + (size_t)b->head * le;
	if (b->filled == b->cfg.window)
		for (size_t i = 0; i < le; i++)
			b->sum[i] -= slot[i];
	else
		b->filled++;
	memset(slot, 0, le * sizeof(*slot));
	b->step_open = true;
}

/* LLEP alone (interval check): a persisting skew borrows one copy for
 * LLEP to spill to (borrow.h), unless a placement change is under way. */
static void
lend(struct bal *b, const struct placement *cur, const double *w, const bool *in)
{
	struct cluster_failover fo;
	struct borrow_step st;
	struct placement *np = NULL;
	int rc;

	cluster_failover(b->c, &fo);
	if (fo.transition || fo.unserved_pairs > 0 || fo.degraded_pairs > 0)
		return;
	rc = borrow_plan(b->bw, cur, w, in, b->cfg.llep_lambda, b->st.checks, &np, &st);
	pthread_mutex_lock(&b->mu);
	b->st.borrowed = borrow_count(b->bw);
	pthread_mutex_unlock(&b->mu);
	if (rc != 0 || np == NULL) {
		if (rc != 0)
			log_warn("balance: no borrow plan: %s", epmoe_strerror(rc));
		return;
	}
	if ((rc = cluster_set_placement(b->c, np)) != 0) {
		log_warn("balance: borrowed copy refused: %s", epmoe_strerror(rc));
		return;
	}
	pthread_mutex_lock(&b->mu);
	b->st.borrows++;
	b->st.borrow_evictions += st.evicted_layer >= 0;
	b->st.moved_copies++;
	b->st.moved_bytes += b->expert_bytes;
	pthread_mutex_unlock(&b->mu);
	if (st.evicted_layer >= 0)
		log_info("balance: LLEP borrows layer %d expert %d from worker %d onto worker %d (dropping its least recently used borrowed expert, layer %d expert %d)",
		        st.layer, st.expert, st.from, st.to, st.evicted_layer, st.evicted_expert);
	else
		log_info("balance: LLEP borrows layer %d expert %d from worker %d onto worker %d",
		        st.layer, st.expert, st.from, st.to);
}

/* Interval check (engine thread, lock not held): EPLB on the window. */
static void
check(struct bal *b)
{
	uint32_t L = b->L, E = b->E, W = cluster_n_workers(b->c), M;
	size_t le = (size_t)L * E;
	double *w = malloc(le * sizeof(*w)), *wl = calloc(W ? W : 1, sizeof(double));
	uint32_t *members = malloc((W ? W : 1) * sizeof(*members));
	bool *in = calloc(W ? W : 1, sizeof(*in));
	const struct placement *cur = NULL;
	struct placement *np = NULL;
	struct cluster_failover fo;
	double before, after = 0;
	uint64_t moved = 0;
	int rc;

	if (w == NULL || members == NULL || wl == NULL || in == NULL)
		goto out;
	pthread_mutex_lock(&b->mu);
	for (size_t i = 0; i < le; i++)
		w[i] = (double)b->sum[i];
	b->st.checks++;
	pthread_mutex_unlock(&b->mu);
	/* max/mean over the live members: an elastic cluster's places may
	 * be empty or draining */
	M = cluster_members(b->c, members);
	for (uint32_t k = 0; k < M; k++)
		in[members[k]] = true;
	cur = cluster_placement_acquire(b->c);
	before = eplb_worker_ratio_in(cur, w, wl, M ? in : NULL);
	pthread_mutex_lock(&b->mu);
	b->st.ratio = before;
	memcpy(b->wl, wl, (W < b->n_wl ? W : b->n_wl) * sizeof(double));
	pthread_mutex_unlock(&b->mu);
	if (b->bw && before > b->cfg.llep_lambda && M > 1) {
		lend(b, cur, w, in);
		goto out;
	}
	if (!(b->cfg.mode & BAL_EPLB) || before <= b->cfg.threshold || W == 0)
		goto out;
	cluster_failover(b->c, &fo);
	if (fo.transition || fo.unserved_pairs > 0 || fo.degraded_pairs > 0)
		goto out; /* a placement change is under way: next interval */
	if (M == 0)
		goto out;
	if ((rc = eplb_plan_members(w, L, E, b->R, b->cfg.hosts, members, M, W, cur, &np,
	             &moved)) != 0) {
		log_warn("balance: no EPLB plan: %s", epmoe_strerror(rc));
		goto out;
	}
	after = eplb_worker_ratio_in(np, w, NULL, in);
	if (moved == 0 || after > before * 0.97) {
		placement_free(np); /* not worth moving weights for */
		goto out;
	}
	cluster_placement_release(b->c, cur);
	cur = NULL;
	if ((rc = cluster_set_placement(b->c, np)) != 0) {
		log_warn("balance: placement refused: %s", epmoe_strerror(rc));
		goto out;
	}
	pthread_mutex_lock(&b->mu);
	b->st.replacements++;
	b->st.moved_copies += moved;
	b->st.moved_bytes += moved * b->expert_bytes;
	b->st.last_before = before;
	b->st.last_after = after;
	pthread_mutex_unlock(&b->mu);
	log_info("balance: re-placement %llu: worker max/mean %.3f -> %.3f (predicted), %llu copies (%.1f MiB) to load",
	        (unsigned long long)b->st.replacements, before, after,
	        (unsigned long long)moved, (double)(moved * b->expert_bytes) / 1048576.0);
	{
		struct dash_decision x;
		char detail[96];

		snprintf(detail, sizeof(detail), "EPLB: %llu copies (%.1f MiB) to load",
		        (unsigned long long)moved, (double)(moved * b->expert_bytes) / 1048576.0);
		dash_decision_init(&x, "balancer", "replace");
		x.before = before;
		x.after = after;
		x.detail = detail;
		dash_decision(b->cfg.dash, &x);
	}
out:
	if (cur)
		cluster_placement_release(b->c, cur);
	free(w);
	free(wl);
	free(members);
	free(in);
}

void
bal_observe(struct bal *b, uint32_t layer, const uint32_t *load)
{
	size_t off = (size_t)layer * b->E;
	bool end, run = false;
	uint32_t *slot;
	double a = b->cfg.ewma_alpha;

	if (layer >= b->L)
		return;
	pthread_mutex_lock(&b->mu);
	if (!b->step_open || layer == 0)
		step_begin(b);
	slot = b->ring + (size_t)b->head * b->L * b->E + off;
	for (uint32_t e = 0; e < b->E; e++) {
		slot[e] += load[e];
		b->sum[off + e] += load[e];
		b->ewma[off + e] += a * ((double)load[e] - b->ewma[off + e]);
	}
	end = layer + 1 == b->L;
	if (end && b->trace) {
		const uint32_t *st = b->ring + (size_t)b->head * b->L * b->E;
		for (size_t i = 0; i < (size_t)b->L * b->E; i++)
			fprintf(b->trace, i ? " %u" : "%u", st[i]);
		fputc('\n', b->trace);
		fflush(b->trace); /* a step is a line, even if we are killed */
	}
	if (end) {
		b->step_open = false;
		b->st.steps++;
		run = b->c && b->st.steps % b->cfg.interval == 0;
	}
	pthread_mutex_unlock(&b->mu);
	if (run)
		check(b);
}

void
bal_get_stats(struct bal *b, struct bal_stats *out)
{
	pthread_mutex_lock(&b->mu);
	*out = b->st;
	pthread_mutex_unlock(&b->mu);
}

void
bal_loads(struct bal *b, double *window, double *ewma)
{
	size_t le = (size_t)b->L * b->E;

	pthread_mutex_lock(&b->mu);
	for (size_t i = 0; i < le; i++) {
		if (window)
			window[i] = (double)b->sum[i];
		if (ewma)
			ewma[i] = b->ewma[i];
	}
	pthread_mutex_unlock(&b->mu);
}

cJSON *
bal_json(struct bal *b)
{
	cJSON *j = cJSON_CreateObject(), *s, *layers, *wl;

	/* before b->mu: the cluster calls into the balancer (plan_weights)
	 * with its own lock held */
	uint32_t n_used = b->c ? cluster_n_used(b->c) : 0;

	if (j == NULL)
		return NULL;
	pthread_mutex_lock(&b->mu);
	cJSON_AddStringToObject(j, "mode", bal_mode_name(b->cfg.mode));
	s = cJSON_AddObjectToObject(j, "settings");
	if (s) {
		cJSON_AddNumberToObject(s, "window_steps", b->cfg.window);
		cJSON_AddNumberToObject(s, "ewma_alpha", b->cfg.ewma_alpha);
		cJSON_AddNumberToObject(s, "eplb_interval", b->cfg.interval);
		cJSON_AddNumberToObject(s, "eplb_threshold", b->cfg.threshold);
		cJSON_AddNumberToObject(s, "redundant_slots", b->R);
		cJSON_AddNumberToObject(s, "hosts", b->cfg.hosts);
		cJSON_AddNumberToObject(s, "llep_lambda", b->cfg.llep_lambda);
		cJSON_AddNumberToObject(s, "llep_cache", b->bw ? b->cfg.llep_cache : 0);
	}
	cJSON_AddNumberToObject(j, "steps", (double)b->st.steps);
	cJSON_AddNumberToObject(j, "window_filled", b->filled);
	cJSON_AddNumberToObject(j, "checks", (double)b->st.checks);
	cJSON_AddNumberToObject(j, "replacements", (double)b->st.replacements);
	cJSON_AddNumberToObject(j, "moved_copies", (double)b->st.moved_copies);
	cJSON_AddNumberToObject(j, "moved_bytes", (double)b->st.moved_bytes);
	cJSON_AddNumberToObject(j, "borrows", (double)b->st.borrows);
	cJSON_AddNumberToObject(j, "borrow_evictions", (double)b->st.borrow_evictions);
	cJSON_AddNumberToObject(j, "borrowed", b->st.borrowed);
	cJSON_AddNumberToObject(j, "worker_max_mean", b->st.ratio);
	cJSON_AddNumberToObject(j, "last_plan_before", b->st.last_before);
	cJSON_AddNumberToObject(j, "last_plan_after", b->st.last_after);
	wl = cJSON_AddArrayToObject(j, "worker_window_load");
	for (uint32_t w = 0; wl && w < b->n_wl && w < n_used; w++)
		cJSON_AddItemToArray(wl, cJSON_CreateNumber(b->wl[w]));
	/* per layer: the window count and EWMA of every expert */
	layers = cJSON_AddArrayToObject(j, "layers");
	for (uint32_t l = 0; layers && l < b->L; l++) {
		cJSON *o = cJSON_CreateObject(), *win, *ew;
		if (o == NULL)
			break;
		cJSON_AddItemToArray(layers, o);
		win = cJSON_AddArrayToObject(o, "window");
		ew = cJSON_AddArrayToObject(o, "ewma");
		for (uint32_t e = 0; win && ew && e < b->E; e++) {
			cJSON_AddItemToArray(win, cJSON_CreateNumber((double)b->sum[(size_t)l * b->E + e]));
			cJSON_AddItemToArray(ew, cJSON_CreateNumber(b->ewma[(size_t)l * b->E + e]));
		}
	}
	pthread_mutex_unlock(&b->mu);
	return j;
}
