/* Results of the load generator: per-request records, the summary of one
 * run (TTFT, TPOT, ITL, E2E latency distributions, throughput, goodput
 * under service-level objectives, errors by kind), the confidence
 * interval across repeated runs, and their JSON with the field names of
 * vLLM's `bench serve` where one exists.
 *
 * Definitions (as vLLM's): TTFT = first text chunk - send; TPOT = (E2E -
 * TTFT) / (output tokens - 1) per request with more than one token; ITL =
 * every gap between successive chunks; E2E = last byte - send.  A request
 * meets the SLOs ("good") when every objective set holds (a one-token
 * answer has TPOT 0); goodput = good requests / duration.  Without
 * streaming there is no TTFT: the TTFT objective is checked on E2E.
 *
 * Pure computation: no I/O, no clock.
 */
#ifndef EPMOE_LG_STATS_H
#define EPMOE_LG_STATS_H

#include <stddef.h>
#include <stdint.h>

struct cJSON;

#define LG_ERR_KIND_LEN 24
#define LG_MAX_ERR_KINDS 16

/* One request.  Times in seconds from the run's start. */
struct lg_rec {
	int started, ok;
	char err_kind[LG_ERR_KIND_LEN]; /* "http_429", "stream_error",
	                                 * "timeout", "transport", ... */
	char *err_msg;          /* owned, NULL when ok */
	double t_sched;         /* when the schedule wanted it sent */
	double t0, t_first, t_end, t_prev;
	uint32_t in_tokens;     /* usage, else the dataset's count */
	uint32_t out_tokens;    /* usage, else chunks */
	int has_usage;
	int has_cached;         /* the server said cached_tokens */
	uint32_t cached_tokens; /* prompt tokens taken from its cache */
	uint32_t n_chunks;
	double *gaps;           /* [n_gaps] between chunks, owned */
	size_t n_gaps, cap_gaps;
};

/* A chunk with text arrived at time t (records the gap).  Bounded: past
 * 2^20 gaps per request, further gaps are not kept. */
void lg_rec_chunk(struct lg_rec *r, double t);
/* Marks r failed with kind and msg (copied). */
void lg_rec_fail(struct lg_rec *r, const char *kind, const char *msg);
void lg_rec_fini(struct lg_rec *r);

/* Service-level objectives in seconds; NAN = not set. */
struct lg_slo {
	double ttft, tpot, e2el;
};

/* Parses "ttft=500ms,tpot=50ms,e2e=2s" (keys ttft, tpot, e2e or e2el;
 * units us, ms, s; a bare number is milliseconds, as in vLLM's
 * --goodput).  Returns 0 or EPMOE_EINVAL with the reason in err. */
int lg_slo_parse(const char *s, struct lg_slo *out, char *err,
        size_t err_size);
int lg_slo_any(const struct lg_slo *s);

/* A distribution, in seconds. */
struct lg_dist {
	size_t n;
	double mean, std, median, p90, p99, min, max;
};

struct lg_err_count {
	char kind[LG_ERR_KIND_LEN];
	long n;
	char first_msg[256];
};

struct lg_result {
	double duration;              /* first send to last end, s */
	long num_prompts, started, completed, failed, good;
	uint64_t total_input_tokens, total_output_tokens;
	uint64_t total_cached_tokens; /* of the input, from the server's cache */
	long cached_reported;         /* completed requests that said */
	double request_throughput, request_goodput; /* goodput NAN w/o SLO */
	double input_throughput, output_throughput, total_token_throughput;
	double max_output_tokens_per_s;
	long max_concurrent_requests;
	double mean_send_lag;         /* mean of t0 - t_sched (capped runs) */
	struct lg_dist ttft, tpot, itl, e2el;
	struct lg_err_count errors[LG_MAX_ERR_KINDS];
	size_t n_err_kinds;
};

/* Summarises recs[0..n) (n = requests asked for).  streamed: TTFT, TPOT
 * and ITL are measured.  slo may be NULL.  Returns 0 or EPMOE_ENOMEM. */
int lg_summarize(const struct lg_rec *recs, size_t n, int streamed,
        const struct lg_slo *slo, struct lg_result *out);

/* Sorts v[0..n) and returns its distribution (percentiles with linear
 * interpolation between closest ranks, numpy's default; std is the
 * population standard deviation, numpy's default). */
struct lg_dist lg_dist_of(double *v, size_t n);

/* Mean and two-sided 95% Student-t confidence interval of v[0..n)
 * (n >= 2; for n = 1 lo = hi = mean). */
struct lg_ci {
	size_t n;
	double mean, lo, hi, std;
};
struct lg_ci lg_ci95(const double *v, size_t n);
/* The 0.975 quantile of Student's t with df degrees of freedom. */
double lg_t975(size_t df);

/* Adds the result's fields to obj: vLLM's names (duration, completed,
 * failed, total_input_tokens, total_output_tokens, request_throughput,
 * request_goodput, output_throughput, total_token_throughput,
 * max_output_tokens_per_s, max_concurrent_requests, and
 * {mean,median,std,p90,p99}_{ttft,tpot,itl,e2el}_ms) plus ours
 * (num_started, good_requests, input_throughput, errors_by_kind,
 * first_errors).  detailed: the per-request arrays as well (input_lens,
 * output_lens, ttfts, itls, errors, and our e2els and start_times).
 * Returns 0 or EPMOE_ENOMEM. */
int lg_result_json(const struct lg_result *r, const struct lg_rec *recs,
        size_t n, int detailed, struct cJSON *obj);

/* Names of the numeric summary fields lg_result_json writes that repeated
 * runs are averaged over, NULL-terminated. */
extern const char *const lg_result_fields[];

#endif
