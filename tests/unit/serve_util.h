/* Test helpers for suites that start the real router: process start/stop
 * on free 127.0.0.1 ports with a bounded wait for /health, HTTP calls with
 * libcurl, and an SSE reader. */
#ifndef EPMOE_SERVE_UTIL_H
#define EPMOE_SERVE_UTIL_H

#include <sys/types.h>

struct cJSON;

struct tu_router {
	pid_t pid;
	int http_port;
	char http[64];        /* "127.0.0.1:PORT" */
	char nng_url[64];
	char control_url[64];
	char logpath[128];
	char log[2048];       /* tail of the log, for messages */
};

/* A free TCP port on 127.0.0.1 (bind to 0 and close). */
int tu_free_port(void);
/* Starts epmoe-router for model with extra args (NULL-terminated, may be
 * NULL) and waits up to wait_s (0 = 60 s) for /health 200.  0 or -1 (the
 * log tail is in R->log). */
int tu_router_start(struct tu_router *R, const char *model, const char *const *args);
int tu_router_start_wait(struct tu_router *R, const char *model,
        const char *const *args, int wait_s, int want_healthy);
/* SIGTERM, bounded wait, SIGKILL; the process group too. Returns the
 * router's exit status or -1. */
int tu_router_stop(struct tu_router *R);
/* Reads the log tail into R->log. */
void tu_router_log(struct tu_router *R);

/* One HTTP request; *resp is malloc'd (free it).  0 or -1 on transport
 * failure. */
int tu_http(struct tu_router *R, const char *method, const char *path,
        const char *body, long *status, char **resp);
/* n POSTs of bodies[i] to path at once (one thread each); status[i] and
 * resp[i] (malloc'd, NULL on transport failure).  0, or -1 if any
 * transport failed. */
int tu_http_parallel(struct tu_router *R, const char *path,
        const char *const *bodies, int n, long *status, char **resp);
/* A streamed completion: concatenated choices[0].text (or delta.content)
 * into *text (malloc'd), whether [DONE] came. */
int tu_sse(struct tu_router *R, const char *path, const char *body,
        long *status, char **text, int *done_seen);

/* GET path; *out the parsed body (NULL when it is not JSON; cJSON_Delete
 * it).  The HTTP status, or -1 on transport failure. */
long tu_get_json(struct tu_router *R, const char *path, struct cJSON **out);
/* The worker list of a /v1/stats document (stats.workers.workers). */
struct cJSON *tu_stats_workers(struct cJSON *stats);
/* From R's /v1/stats now: field key of the worker whose id is id (-1:
 * not listed), and field key of workers.failover.  Fail the test when
 * /v1/stats does not answer 200. */
double tu_stats_worker_num(struct tu_router *R, const char *id, const char *key);
double tu_stats_failover_num(struct tu_router *R, const char *key);
/* n greedy streams at once, the load the balancing suites serve: stream i
 * asks "And God said <7 i>" for n_tokens tokens (ignore_eos).  text[i]
 * gets its text (malloc'd), or NULL when it failed (not 200, no [DONE],
 * or an error event).  Returns how many failed. */
int tu_greedy_streams(struct tu_router *R, int n, int n_tokens, char **text);

#endif
