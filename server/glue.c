/* The distributed parts of the router: the cluster of workers (control
 * plane, placement, health), the local worker processes of --workers N,
 * and the dispatch backend that replaces the in-process experts.  The
 * only file of the router that knows their APIs. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster.h"
#include "dispatch.h"
#include "err.h"
#include "log.h"
#include "metrics.h"
#include "router.h"
#include "spawn.h"

static struct spawn *spawned;
static uv_timer_t reap_timer;
static bool reap_timer_on;

static void
on_reap(uv_timer_t *t)
{
	if (spawned)
		spawn_poll(spawned);
}

/* Expert -> worker map of the current placement (first slot of each
 * expert), for the worker-balance statistics. */
static void
load_worker_map(struct router *r)
{
	const struct placement *p = cluster_placement_acquire(r->cluster);
	const struct model_hparams *hp = &r->model->hp;
	uint16_t *map;

	if (p == NULL)
		return;
	map = calloc((size_t)hp->n_layer * hp->n_expert, sizeof(*map));
	if (map) {
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (uint32_t e = 0; e < hp->n_expert; e++) {
				int32_t s = placement_expert_slot(p, l, e, 0);
				int32_t w = s >= 0 ? placement_slot_worker(p, l, (uint32_t)s) : 0;
				map[(size_t)l * hp->n_expert + e] = (uint16_t)(w < 0 ? 0 : w);
			}
		pthread_mutex_lock(&r->stats_mu);
		free(r->worker_of);
		r->worker_of = map;
		r->n_workers_map = (int)p->n_worker;
		pthread_mutex_unlock(&r->stats_mu);
		engine_set_worker_map(r->engine, map, (int)p->n_worker);
	}
	cluster_placement_release(r->cluster, p);
}

int
glue_start(struct router *r)
{
	struct cluster_cfg cc = { 0 };
	struct dispatch_cfg dc = { 0 };
	char err[512] = "";
	int rc;

	if (r->cfg.local)
		return 0;
	cc.control_url = r->cfg.control_url;
	cc.model = r->model;
	cc.placement_file = r->cfg.placement;
	cc.experts_per_worker = r->cfg.experts_per_worker;
	cc.n_workers = (uint32_t)r->cfg.expect_workers;
	if ((rc = cluster_new(&r->cluster, &cc, err, sizeof(err))) != 0) {
		log_error("%s", err[0] ? err : epmoe_strerror(rc));
		return rc;
	}
	if ((rc = cluster_start(r->cluster)) != 0) {
		log_error("cannot listen for workers on %s: %s", r->cfg.control_url,
		        epmoe_strerror(rc));
		return rc;
	}
	dc.deadline_ms = r->cfg.expert_timeout_ms;
	if ((rc = dispatch_new(&r->dispatch, r->cluster, r->model, &dc)) != 0) {
		log_error("cannot create the expert dispatcher: %s", epmoe_strerror(rc));
		return rc;
	}
	engine_set_experts(r->engine, r->dispatch);
	if (r->cfg.workers > 0) {
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		struct spawn_cfg sc = { 0 };
		sc.router_url = cluster_control_url(r->cluster);
		sc.model_path = r->cfg.model_path;
		sc.n_workers = (uint32_t)r->cfg.workers;
		/* the workers share the machine: split its cores between them */
		sc.threads = ncpu > r->cfg.workers ? (int)(ncpu / r->cfg.workers) : 1;
		sc.log_json = r->cfg.log_json;
		sc.restart = true;
		if ((rc = spawn_start(&spawned, &sc)) != 0) {
			log_error("cannot start %d local workers: %s", r->cfg.workers,
			        epmoe_strerror(rc));
			return rc;
		}
		uv_timer_init(r->loop, &reap_timer);
		uv_timer_start(&reap_timer, on_reap, 500, 500);
		reap_timer_on = true;
	}
	load_worker_map(r);
	log_info("expecting %d workers on %s%s", r->cfg.expect_workers,
	        cluster_control_url(r->cluster),
	        r->cfg.workers ? " (started locally)" : "");
	return 0;
}

void
glue_stop(struct router *r)
{
	if (reap_timer_on) {
		uv_timer_stop(&reap_timer);
		if (!uv_is_closing((uv_handle_t *)&reap_timer))
			uv_close((uv_handle_t *)&reap_timer, NULL);
		reap_timer_on = false;
	}
	if (spawned) {
		spawn_stop(spawned, 5000);
		spawn_free(spawned);
		spawned = NULL;
	}
}

void
glue_free(struct router *r)
{
	glue_stop(r);
	if (r->engine)
		engine_set_experts(r->engine, NULL);
	if (r->dispatch) {
		r->dispatch->free(r->dispatch);
		r->dispatch = NULL;
	}
	cluster_free(r->cluster);
	r->cluster = NULL;
}

cJSON *
glue_workers_json(struct router *r)
{
	cJSON *j = NULL;

	if (r->cluster == NULL || cluster_stats_json(r->cluster, &j) != 0)
		return NULL;
	if (r->dispatch) {
		struct dispatch_stats ds;
		dispatch_stats(r->dispatch, &ds);
		cJSON *d = cJSON_CreateObject();
		if (d) {
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
			if (cJSON_IsObject(j))
				cJSON_AddItemToObject(j, "dispatch", d);
			else
				cJSON_Delete(d);
		}
	}
	return j;
}

cJSON *
glue_placement_json(struct router *r)
{
	cJSON *j = NULL;

	if (r->cluster == NULL || cluster_placement_json(r->cluster, &j) != 0)
		return NULL;
	return j;
}

void
glue_export_metrics(struct router *r)
{
	struct cluster_hist h;
	uint32_t n = cluster_n_workers(r->cluster);

	/* the cluster keeps cumulative histograms per worker: mirror them */
	for (uint32_t w = 0; w < n; w++) {
		char lv0[16];
		const char *lv[1] = { lv0 };
		struct metrics_series *s;
		snprintf(lv0, sizeof(lv0), "%u", w);
		if (cluster_worker_hist(r->cluster, w, &h) != 0 ||
		        metrics_series(r->f_worker_lat, lv, &s) != 0)
			continue;
		/* cluster buckets are cumulative, the last one +Inf */
		uint64_t per[CLUSTER_HIST_BUCKETS];
		for (int b = 0; b < CLUSTER_HIST_BUCKETS; b++)
			per[b] = h.bucket[b] - (b ? h.bucket[b - 1] : 0);
		metrics_hist_load(s, per, h.sum_s);
	}
}

bool
router_ready(struct router *r)
{
	return r->cluster == NULL || cluster_ready(r->cluster);
}
