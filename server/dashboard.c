/* The router's live view (see dashboard.h): serves the embedded page,
 * adds its sections to /v1/stats from what the statistics module hands
 * it, keeps the decisions log.  It knows nothing of the router's
 * internals and changes nothing the engine or the scheduler use. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>

#include "dashboard.h"
#include "err.h"
#include "http.h"
#include "metrics.h"

struct dash_entry {
	uint64_t seq;
	double time_unix;
	char source[24];
	char action[32];
	int32_t layer, expert, from_worker, to_worker;
	double before, after;
	char detail[160];
};

struct dash {
	pthread_mutex_t mu;
	struct dash_entry ring[DASH_DECISIONS_KEPT];
	uint64_t total;           /* entries ever logged; the next seq - 1 */
};

/* The page may talk to this origin only; nothing is loaded from
 * elsewhere, whatever the HTML says. */
#define PAGE_HEADERS                                                          \
	"Content-Security-Policy: default-src 'none'; script-src "            \
	"'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "     \
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; "          \
	"frame-ancestors 'none'\r\n"                                           \
	"Cache-Control: no-store\r\n"                                          \
	"X-Content-Type-Options: nosniff\r\n"

void
dash_decision_init(struct dash_decision *x, const char *source,
        const char *action)
{
	memset(x, 0, sizeof(*x));
	x->source = source;
	x->action = action;
	x->layer = x->expert = x->from_worker = x->to_worker = -1;
	x->before = x->after = NAN;
}

int
dash_new(struct dash **out)
{
	struct dash *d = calloc(1, sizeof(*d));

	if (d == NULL)
		return EPMOE_ENOMEM;
	pthread_mutex_init(&d->mu, NULL);
	*out = d;
	return 0;
}

void
dash_free(struct dash *d)
{
	if (d == NULL)
		return;
	pthread_mutex_destroy(&d->mu);
	free(d);
}

void
dash_decision(struct dash *d, const struct dash_decision *x)
{
	struct dash_entry e;
	struct timespec ts;

	if (d == NULL || x == NULL)
		return;
	memset(&e, 0, sizeof(e));
	clock_gettime(CLOCK_REALTIME, &ts);
	e.time_unix = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
	snprintf(e.source, sizeof(e.source), "%s", x->source ? x->source : "");
	snprintf(e.action, sizeof(e.action), "%s", x->action ? x->action : "");
	snprintf(e.detail, sizeof(e.detail), "%s", x->detail ? x->detail : "");
	e.layer = x->layer;
	e.expert = x->expert;
	e.from_worker = x->from_worker;
	e.to_worker = x->to_worker;
	e.before = x->before;
	e.after = x->after;
	pthread_mutex_lock(&d->mu);
	e.seq = ++d->total;
	d->ring[(e.seq - 1) % DASH_DECISIONS_KEPT] = e;
	pthread_mutex_unlock(&d->mu);
}

uint64_t
dash_decisions_total(const struct dash *d)
{
	uint64_t n;

	if (d == NULL)
		return 0;
	pthread_mutex_lock((pthread_mutex_t *)&d->mu);
	n = d->total;
	pthread_mutex_unlock((pthread_mutex_t *)&d->mu);
	return n;
}

void
dash_handle(struct router *r, struct http_req *req)
{
	(void)r; /* the route table's handler signature */
	http_respond(req, 200, "text/html; charset=utf-8", dash_page_html,
	        dash_page_html_len, PAGE_HEADERS);
}

double
dash_hist_quantile(const double *bounds, const uint64_t *counts, size_t n,
        double q)
{
	uint64_t total = 0, cum = 0;
	double rank;

	if (n == 0)
		return NAN;
	for (size_t b = 0; b < n; b++)
		total += counts[b];
	if (total == 0)
		return NAN;
	rank = q * (double)total;
	for (size_t b = 0; b < n; b++) {
		if (counts[b] == 0 || (double)(cum + counts[b]) < rank) {
			cum += counts[b];
			continue;
		}
		if (b == n - 1) /* +Inf: the last finite bound is all we know */
			return n >= 2 ? bounds[n - 2] : NAN;
		double lo = b == 0 ? 0 : bounds[b - 1], hi = bounds[b];
		return lo + (hi - lo) * (rank - (double)cum) / (double)counts[b];
	}
	return n >= 2 ? bounds[n - 2] : NAN;
}

static cJSON *
num_or_null(double v)
{
	return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

static void
add_hist(cJSON *lat, const char *name, const struct metrics_series *s,
        int with_bounds)
{
	uint64_t counts[64], count = 0;
	const double *bounds = NULL;
	double sum = 0;
	size_t n = metrics_hist_read(s, counts, 64, &bounds, &sum);
	cJSON *o, *arr;

	if (n == 0 || n > 64)
		return;
	if (with_bounds && (arr = cJSON_AddArrayToObject(lat, "bounds_s")) != NULL)
		for (size_t b = 0; b + 1 < n; b++)
			cJSON_AddItemToArray(arr, cJSON_CreateNumber(bounds[b]));
	if ((o = cJSON_AddObjectToObject(lat, name)) == NULL)
		return;
	if ((arr = cJSON_AddArrayToObject(o, "counts")) != NULL)
		for (size_t b = 0; b < n; b++) {
			cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)counts[b]));
			count += counts[b];
		}
	cJSON_AddNumberToObject(o, "count", (double)count);
	cJSON_AddNumberToObject(o, "sum_s", sum);
	cJSON_AddItemToObject(o, "p50_s", num_or_null(dash_hist_quantile(bounds,
	        counts, n, 0.50)));
	cJSON_AddItemToObject(o, "p90_s", num_or_null(dash_hist_quantile(bounds,
	        counts, n, 0.90)));
	cJSON_AddItemToObject(o, "p99_s", num_or_null(dash_hist_quantile(bounds,
	        counts, n, 0.99)));
}

static cJSON *
int_or_null(int32_t v)
{
	return v >= 0 ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

void
dash_decisions_json(struct dash *d, cJSON *stats)
{
	cJSON *o = cJSON_AddObjectToObject(stats, "decisions"), *arr;
	struct dash_entry *snap;
	uint64_t total, first;
	size_t k = 0;

	if (o == NULL)
		return;
	cJSON_AddNumberToObject(o, "capacity", DASH_DECISIONS_KEPT);
	if ((arr = cJSON_AddArrayToObject(o, "entries")) == NULL || d == NULL) {
		cJSON_AddNumberToObject(o, "total", 0);
		return;
	}
	if ((snap = malloc(DASH_DECISIONS_SHOWN * sizeof(*snap))) == NULL)
		return;
	/* copy under the lock, build the JSON outside it */
	pthread_mutex_lock(&d->mu);
	total = d->total;
	first = total > DASH_DECISIONS_SHOWN ? total - DASH_DECISIONS_SHOWN : 0;
	for (uint64_t s = first; s < total; s++)
		snap[k++] = d->ring[s % DASH_DECISIONS_KEPT];
	pthread_mutex_unlock(&d->mu);
	cJSON_AddNumberToObject(o, "total", (double)total);
	for (size_t i = 0; i < k; i++) {
		const struct dash_entry *e = &snap[i];
		cJSON *x = cJSON_CreateObject();
		if (x == NULL)
			break;
		cJSON_AddNumberToObject(x, "seq", (double)e->seq);
		cJSON_AddNumberToObject(x, "time_unix", e->time_unix);
		cJSON_AddStringToObject(x, "source", e->source);
		cJSON_AddStringToObject(x, "action", e->action);
		cJSON_AddItemToObject(x, "layer", int_or_null(e->layer));
		cJSON_AddItemToObject(x, "expert", int_or_null(e->expert));
		cJSON_AddItemToObject(x, "from_worker", int_or_null(e->from_worker));
		cJSON_AddItemToObject(x, "to_worker", int_or_null(e->to_worker));
		cJSON_AddItemToObject(x, "before", num_or_null(e->before));
		cJSON_AddItemToObject(x, "after", num_or_null(e->after));
		cJSON_AddStringToObject(x, "detail", e->detail);
		cJSON_AddItemToArray(arr, x);
	}
	free(snap);
}

void
dash_stats_json(struct dash *d, const struct dash_view *v, cJSON *stats)
{
	cJSON *o, *lat;
	struct timespec ts;
	double now;

	if (stats == NULL || v == NULL)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	now = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
	if ((o = cJSON_AddObjectToObject(stats, "server")) != NULL) {
		cJSON_AddStringToObject(o, "model", v->model ? v->model : "");
		cJSON_AddStringToObject(o, "mode", v->distributed ? "distributed" :
		        "local");
		cJSON_AddNumberToObject(o, "time_unix", now);
		cJSON_AddNumberToObject(o, "uptime_s", now - v->created_unix);
		cJSON_AddNumberToObject(o, "n_layers", v->n_layers);
		cJSON_AddNumberToObject(o, "n_experts", v->n_experts);
	}
	if ((lat = cJSON_AddObjectToObject(stats, "latency")) != NULL) {
		/* the bounds once, from the first histogram there is */
		int bounds = 1;
		const struct metrics_series *h[4] = { v->ttft, v->itl, v->e2e, v->queue };
		static const char *const names[4] = { "ttft", "itl", "e2e", "queue" };
		for (int i = 0; i < 4; i++) {
			if (h[i] == NULL)
				continue;
			add_hist(lat, names[i], h[i], bounds);
			bounds = 0;
		}
	}
	dash_decisions_json(d, stats);
}
