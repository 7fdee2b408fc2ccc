/* The router's live view: GET /dashboard, one self-contained page (no
 * external scripts, fonts or styles; embedded in the binary at build time
 * from server/dashboard.html) that polls /v1/stats and /v1/placement; the
 * sections of /v1/stats the page reads beyond the scheduler and routing
 * ones; and the decisions log that the balancer and the speculative
 * pre-scheduler write to.
 *
 * What dash_stats_json adds to /v1/stats:
 *   "server":    {"model", "mode" ("local"|"distributed"), "time_unix",
 *                 "uptime_s", "n_layers", "n_experts"}
 *   "latency":   {"bounds_s": [finite bucket bounds],
 *                 "ttft"|"itl"|"e2e"|"queue": {"counts": [per bucket, the
 *                 last +Inf], "count", "sum_s", "p50_s", "p90_s", "p99_s"}}
 *                 (cumulative; a reader takes differences for a window)
 *   "decisions": {"capacity", "total", "entries": [{"seq", "time_unix",
 *                 "source", "action", "layer", "expert", "from_worker",
 *                 "to_worker", "before", "after", "detail"}]} (the newest
 *                 DASH_DECISIONS_SHOWN, oldest first; null where a field
 *                 does not apply)
 * The page also shows any top-level object named "balancer" or
 * "speculative" in /v1/stats as a table of its scalar fields, so those
 * modules can publish their settings and counters without page changes.
 *
 * Threads: dash_decision may be called from any thread; the rest runs on
 * the loop thread.  This module never blocks the engine.
 */
#ifndef EPMOE_DASHBOARD_H
#define EPMOE_DASHBOARD_H

#include <stddef.h>
#include <stdint.h>

struct dash;
struct router;
struct http_req;
struct cJSON;
struct metrics_series;

/* Entries kept, and how many /v1/stats shows. */
#define DASH_DECISIONS_KEPT 256
#define DASH_DECISIONS_SHOWN 64

/* One decision of the balancer or the pre-scheduler. */
struct dash_decision {
	const char *source;   /* "balancer", "prescheduler", ... (copied) */
	const char *action;   /* "replicate", "move", "spill", "group", ... */
	int32_t layer;        /* -1: not about one layer */
	int32_t expert;       /* -1: not about one expert */
	int32_t from_worker;  /* -1: none */
	int32_t to_worker;    /* -1: none */
	double before, after; /* the measure it acts on (worker max/mean, hit
	                       * rate, ...); NAN: none */
	const char *detail;   /* free text, may be NULL (copied, truncated) */
};

/* A decision with every optional field "none" (-1, NAN, NULL). */
void dash_decision_init(struct dash_decision *x, const char *source,
        const char *action);

/* Creates the live view's state.  On success *out is the caller's:
 * dash_free (NULL is fine).  Returns 0 or EPMOE_ENOMEM. */
int dash_new(struct dash **out);
void dash_free(struct dash *d);

/* Logs a decision (strings copied).  Any thread; d may be NULL (no-op). */
void dash_decision(struct dash *d, const struct dash_decision *x);

/* Decisions logged since start. */
uint64_t dash_decisions_total(const struct dash *d);

/* Adds the "decisions" object (above) to stats; d may be NULL (empty). */
void dash_decisions_json(struct dash *d, struct cJSON *stats);

/* GET /dashboard: answers with the page. */
void dash_handle(struct router *r, struct http_req *req);

/* What the live view's sections of /v1/stats are made of: the statistics
 * module fills it from what it owns (borrowed for the call). */
struct dash_view {
	const char *model;         /* the served model id */
	int distributed;           /* workers host the experts */
	double created_unix;       /* when the router started */
	uint32_t n_layers, n_experts;
	/* the latency histograms (seconds; any may be NULL) */
	const struct metrics_series *ttft, *itl, *e2e, *queue;
};

/* Adds "server", "latency" and "decisions" (d may be NULL: an empty log)
 * to a /v1/stats object. */
void dash_stats_json(struct dash *d, const struct dash_view *v,
        struct cJSON *stats);

/* The q-quantile (0..1) of a histogram with per-bucket counts[0..n) (the
 * last bucket is +Inf) and finite upper bounds[0..n-1), interpolating
 * linearly inside the bucket as Prometheus' histogram_quantile does (the
 * first bucket starts at 0; a quantile in +Inf is the last finite bound).
 * NAN when the histogram is empty. */
double dash_hist_quantile(const double *bounds, const uint64_t *counts,
        size_t n, double q);

/* The embedded page (generated from server/dashboard.html). */
extern const unsigned char dash_page_html[];
extern const size_t dash_page_html_len;

#endif
