/* The router's observability: the Prometheus registry and what feeds it
 * (the scheduler's histograms, the routing observer: per-policy balance
 * and cost, per-expert load; request refusals by reason), and the one
 * place that builds the observability JSON: /v1/stats, /v1/placement and
 * the /health view (also the NNG HealthReply's fields).
 *
 * Updates come from the engine thread and the loop thread; the loop
 * thread reads under the statistics' own lock.  Routing statistics are
 * kept per canonical policy spec for at most STATS_MAX_POLICIES specs
 * (the rest count as "other"), so clients cannot grow them.
 */
#ifndef EPMOE_STATS_H
#define EPMOE_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cJSON;
struct router;
struct stats;

#define STATS_MAX_POLICIES 64

/* Registers the metrics and installs the scheduler's and the engine's
 * observers (before any request).  Borrows r; free with stats_free after
 * the engine thread stopped. */
int stats_new(struct stats **out, struct router *r);
void stats_free(struct stats *st);

/* Counts a generation request refused with an EPMOE_E* code, by reason:
 * queue_full, not_ready, shutting_down, no_memory, invalid.  NULL st is
 * fine (nothing counted). */
void stats_count_reject(struct stats *st, int code);

/* GET /metrics: Prometheus text.  On success *out is the caller's. */
int stats_render_metrics(struct stats *st, char **out, size_t *len);

/* GET /v1/stats: scheduler, engine time, routing per policy, expert load
 * and (distributed) workers and dispatch.  Caller cJSON_Delete's; NULL
 * when out of memory. */
struct cJSON *stats_json(struct stats *st);

/* GET /v1/placement: the cluster's placement with its workers, or a note
 * that the experts run in process. */
struct cJSON *stats_placement_json(struct router *r);

/* What /health and the NNG HealthReply say. */
struct stats_health {
	bool ok;                 /* serving: every expert served, not stopping */
	const char *status;      /* "ok", "loading", "stopping" (static) */
	uint32_t running, waiting;
	uint32_t workers_total, workers_live; /* 0 in local mode */
};
void stats_health(struct router *r, struct stats_health *h);
/* GET /health body: stats_health plus the model, mode and (distributed)
 * the placement view. */
struct cJSON *stats_health_json(struct router *r, bool *ok);

#endif
