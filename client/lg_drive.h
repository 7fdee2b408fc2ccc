/* The load generator's driver: sends one run's requests on their schedule
 * to an OpenAI-compatible HTTP server or to epmoe's NNG API, keeps at
 * most max_inflight of them in flight, and records what each one saw;
 * optionally samples the server's /v1/stats meanwhile.
 *
 * HTTP: one thread drives every transfer with libcurl's multi interface
 * (streaming through the SSE parser and the OpenAI JSON of cl_oai).
 * NNG: a pool of threads, each with its own client (one REQ socket); a
 * thread waits for its request's send time, so the pool size is the cap.
 *
 * Bounded: no request is sent after duration_s; each request ends by
 * timeout_s; the whole run ends by duration_s + timeout_s + 5 s, whatever
 * the server does.
 */
#ifndef EPMOE_LG_DRIVE_H
#define EPMOE_LG_DRIVE_H

#include <stddef.h>

#include "epmoe_client.h"
#include "lg_dataset.h"
#include "lg_stats.h"

struct cJSON;

/* Most requests in flight (HTTP) and most NNG threads. */
#define LG_MAX_INFLIGHT_HTTP 1024
#define LG_MAX_INFLIGHT_NNG 256
/* Most /v1/stats samples kept per run. */
#define LG_MAX_SAMPLES 100000

struct lg_progress {
	long n, done, inflight, errors;
	double elapsed;           /* seconds since the start */
};

/* Called from the driving thread about five times a second and once at
 * the end (final = 1). */
typedef void (*lg_progress_fn)(void *ud, const struct lg_progress *p,
        int final);

struct lg_drive_cfg {
	const char *server;            /* http(s):// base or NNG URL */
	enum epmoe_transport tr;
	int chat;                      /* chat completions, one user turn */
	const char *extra_body;        /* JSON object whose members each HTTP
	                                * request's body gets; NULL: none */
	struct epmoe_gen_params p;     /* max_tokens set per request */
	const struct lg_dataset *data; /* items used round-robin */
	size_t first_item;             /* request i uses item first_item + i */
	const double *sched;           /* [n] send times from the start, s */
	long n;
	long max_inflight;             /* >= 1 */
	double duration_s, timeout_s;
	const char *api_key;           /* the server's API key; NULL: none */
	lg_progress_fn progress;       /* may be NULL */
	void *progress_ud;
	const char *stats_url;         /* GET each stats_interval_s; NULL: off */
	double stats_interval_s;
};

/* Runs it.  recs[0..n) must be zeroed; the caller frees them with
 * lg_rec_fini.  When cfg->stats_url is set and samples is not NULL,
 * *samples is a JSON array (caller's; cJSON_Delete) of {"t", "running",
 * "waiting", "requests_total", "generated_tokens", "workers": [{"id",
 * "tokens", "batches", "latency_mean_us", "alive"}]}, or NULL when the
 * server had no /v1/stats.  Returns 0 (failed requests are results), or
 * EPMOE_EINVAL, EPMOE_ENOMEM, EPMOE_ETIMEDOUT (the hard stop came; what
 * still ran is recorded as "aborted"). */
int lg_drive(const struct lg_drive_cfg *cfg, struct lg_rec *recs,
        struct cJSON **samples);

#endif
