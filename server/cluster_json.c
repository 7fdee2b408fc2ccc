/* The cluster's JSON views: GET /v1/placement (the placement and its
 * workers) and the "workers" part of GET /v1/stats (state, liveness,
 * traffic and latency per worker).  Read-only over the registry, under
 * its lock. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "clock.h"
#include "cluster.h"
#include "cluster_int.h"
#include "err.h"
#include "placement.h"

static const char *
state_name(enum wstate s)
{
	return s == W_UP ? "up" : s == W_JOINING ? "joining" :
	        s == W_DOWN ? "down" : "never";
}

int
cluster_placement_json(struct cluster *c, cJSON **out)
{
	cJSON *root, *ws, *t = NULL;
	uint32_t deg, uns;
	int rc;

	pthread_mutex_lock(&c->mu);
	rc = placement_to_json(cluster_pl(c), &root);
	if (rc == 0 && mig_target(c->mig) != NULL &&
	        (rc = placement_to_json(mig_target(c->mig), &t)) != 0)
		cJSON_Delete(root);
	cluster_pairs_locked(c, &deg, &uns);
	pthread_mutex_unlock(&c->mu);
	if (rc != 0)
		return rc;
	/* the map being moved to, if a transition is in progress */
	if (t != NULL)
		cJSON_AddItemToObject(root, "target", t);
	else
		cJSON_AddNullToObject(root, "target");
	if (!cJSON_AddNumberToObject(root, "degraded_pairs", deg) ||
	        !cJSON_AddNumberToObject(root, "unserved_pairs", uns) ||
	        (ws = cJSON_AddArrayToObject(root, "workers")) == NULL)
		goto nomem;
	pthread_mutex_lock(&c->mu);
	for (uint32_t i = 0, n = cluster_n_used_locked(c); i < n; i++) {
		const struct cl_worker *w = &c->w[i];
		cJSON *o = cJSON_CreateObject();
		if (o == NULL) {
			pthread_mutex_unlock(&c->mu);
			goto nomem;
		}
		cJSON_AddItemToArray(ws, o);
		if (!cJSON_AddNumberToObject(o, "index", i) ||
		        !cJSON_AddStringToObject(o, "id", w->id) ||
		        !cJSON_AddStringToObject(o, "node", w->node) ||
		        !cJSON_AddBoolToObject(o, "alive", w->state == W_UP) ||
		        !cJSON_AddStringToObject(o, "data_url", w->url)) {
			pthread_mutex_unlock(&c->mu);
			goto nomem;
		}
	}
	pthread_mutex_unlock(&c->mu);
	*out = root;
	return 0;
nomem:
	cJSON_Delete(root);
	return EPMOE_ENOMEM;
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static double
p99_us(const struct cl_worker *w)
{
	uint32_t v[LAT_RING], n = w->lat_n;
	size_t k;

	if (n == 0)
		return 0;
	memcpy(v, w->lat_us, n * sizeof(v[0]));
	qsort(v, n, sizeof(v[0]), cmp_u32);
	k = ((size_t)n * 99 + 99) / 100;
	return v[k > 0 ? k - 1 : 0];
}

static cJSON *
worker_json(struct cluster *c, uint32_t i, uint64_t now)
{
	const struct cl_worker *w = &c->w[i];
	cJSON *o = cJSON_CreateObject(), *rep;
	char boot[24];

	if (o == NULL)
		return NULL;
	snprintf(boot, sizeof(boot), "%016" PRIx64, w->boot_id);
	if (!cJSON_AddNumberToObject(o, "index", i) ||
	        !cJSON_AddStringToObject(o, "id", w->id) ||
	        !cJSON_AddStringToObject(o, "node", w->node) ||
	        !cJSON_AddStringToObject(o, "data_url", w->url) ||
	        !cJSON_AddBoolToObject(o, "alive", w->state == W_UP) ||
	        !cJSON_AddStringToObject(o, "state", w->state == W_UP && w->draining ?
	             "draining" : state_name(w->state)) ||
	        !cJSON_AddStringToObject(o, "down_reason", w->down_reason) ||
	        !cJSON_AddStringToObject(o, "boot_id", boot) ||
	        !cJSON_AddNumberToObject(o, "registrations", (double)w->registrations) ||
	        !cJSON_AddNumberToObject(o, "threads", w->threads) ||
	        !cJSON_AddNumberToObject(o, "slots", placement_worker_slots(cluster_pl(c), i)) ||
	        !cJSON_AddNumberToObject(o, "last_heartbeat_age_ms",
	             w->state == W_NEVER ? -1.0 :
	             (double)((now - w->last_hb_ns) / 1000000u)) ||
	        !cJSON_AddNumberToObject(o, "batches", (double)w->batches) ||
	        !cJSON_AddNumberToObject(o, "tokens", (double)w->tokens) ||
	        !cJSON_AddNumberToObject(o, "errors", (double)w->errors) ||
	        !cJSON_AddNumberToObject(o, "latency_mean_us", w->hist.count ?
	             w->hist.sum_s * 1e6 / (double)w->hist.count : 0.0) ||
	        !cJSON_AddNumberToObject(o, "latency_p99_us", p99_us(w)) ||
	        (rep = cJSON_AddObjectToObject(o, "reported")) == NULL ||
	        !cJSON_AddNumberToObject(rep, "tokens", (double)w->rep_tokens) ||
	        !cJSON_AddNumberToObject(rep, "batches", (double)w->rep_batches) ||
	        !cJSON_AddNumberToObject(rep, "compute_us", (double)w->rep_compute_us) ||
	        !cJSON_AddNumberToObject(rep, "ram_free_bytes", (double)w->rep_ram_free) ||
	        !cJSON_AddNumberToObject(rep, "prefetch_experts",
	             (double)w->rep_prefetch_experts) ||
	        !cJSON_AddNumberToObject(rep, "prefetch_bytes", (double)w->rep_prefetch_bytes) ||
	        !cJSON_AddNumberToObject(rep, "quantized_tokens", (double)w->rep_q8_tokens) ||
	        !cJSON_AddNumberToObject(rep, "quantized_bytes", (double)w->rep_q8_bytes)) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

int
cluster_stats_json(struct cluster *c, cJSON **out)
{
	cJSON *root = cJSON_CreateObject(), *ws, *fo, *fe;
	uint64_t now = clock_now_ns();
	uint32_t live = 0, deg, uns;
	static const char *const causes[FENCE_N] = { "left", "heartbeat",
		"connection", "deadline", "error", "stale" };

	if (root == NULL)
		return EPMOE_ENOMEM;
	pthread_mutex_lock(&c->mu);
	for (uint32_t i = 0; i < c->W; i++)
		live += c->w[i].state == W_UP;
	if (!cJSON_AddBoolToObject(root, "ready", cluster_ready_locked(c)) ||
	        !cJSON_AddNumberToObject(root, "epoch", (double)mig_epoch(c->mig)) ||
	        !cJSON_AddNumberToObject(root, "n_workers", cluster_n_used_locked(c)) ||
	        !cJSON_AddNumberToObject(root, "worker_places", c->W) ||
	        !cJSON_AddNumberToObject(root, "workers_live", live) ||
	        !cJSON_AddStringToObject(root, "control_url", c->url) ||
	        !cJSON_AddNumberToObject(root, "control_bad_messages", (double)c->bad_msgs) ||
	        (fo = cJSON_AddObjectToObject(root, "failover")) == NULL ||
	        (fe = cJSON_AddObjectToObject(fo, "fenced")) == NULL)
		goto nomem;
	for (int i = 0; i < FENCE_N; i++)
		if (!cJSON_AddNumberToObject(fe, causes[i], (double)c->fenced[i]))
			goto nomem;
	cluster_pairs_locked(c, &deg, &uns);
	if (!cJSON_AddNumberToObject(fo, "refused_duplicate_ids", (double)c->refused_dup) ||
	        !cJSON_AddNumberToObject(fo, "joins", (double)c->joins) ||
	        !cJSON_AddNumberToObject(fo, "drains", (double)c->drains) ||
	        !cJSON_AddNumberToObject(fo, "drains_done", (double)c->drains_done) ||
	        !cJSON_AddBoolToObject(fo, "elastic", c->elastic) ||
	        !cJSON_AddNumberToObject(fo, "commits", (double)c->commits) ||
	        !cJSON_AddBoolToObject(fo, "transition", mig_target(c->mig) != NULL) ||
	        !cJSON_AddNumberToObject(fo, "retiring_maps", mig_n_retiring(c->mig)) ||
	        !cJSON_AddNumberToObject(fo, "degraded_pairs", deg) ||
	        !cJSON_AddNumberToObject(fo, "unserved_pairs", uns) ||
	        !cJSON_AddNumberToObject(fo, "recoveries", (double)c->recoveries) ||
	        !cJSON_AddNumberToObject(fo, "last_recovery_s", c->last_recovery_s) ||
	        !cJSON_AddNumberToObject(fo, "max_recovery_s", c->max_recovery_s) ||
	        !cJSON_AddStringToObject(root, "replica_dtype", c->replica_q8 ? "q8_0" : "model") ||
	        !cJSON_AddNumberToObject(root, "quantized_copies", (double)mig_quantized(c->mig)) ||
	        (ws = cJSON_AddArrayToObject(root, "workers")) == NULL)
		goto nomem;
	for (uint32_t i = 0, n = cluster_n_used_locked(c); i < n; i++) {
		cJSON *o = worker_json(c, i, now);
		if (o == NULL)
			goto nomem;
		cJSON_AddItemToArray(ws, o);
	}
	pthread_mutex_unlock(&c->mu);
	*out = root;
	return 0;
nomem:
	pthread_mutex_unlock(&c->mu);
	cJSON_Delete(root);
	return EPMOE_ENOMEM;
}
