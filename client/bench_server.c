/* epmoe bench server: a closed-loop load generator against a running
 * router.  Keeps up to C requests in flight until N are done (or the
 * duration passes: no new request starts after it), and measures per
 * request TTFT (time to the first text), TPOT (time per output token
 * after the first), ITL (gap between successive chunks), E2E latency,
 * and the totals: requests/s, input and output tokens/s, errors by
 * status.  Prints mean, p50, p90, p99 and max of each, or one JSON
 * object.
 *
 * HTTP: one thread drives up to C streaming transfers with libcurl's
 * multi interface (the SSE and JSON handling of the client library).
 * NNG: C threads, each with its own client (one REQ socket each).
 * Every loop is bounded by the request count and by time: a request
 * cannot outlive --timeout, and none starts after --duration.
 */
#include <ctype.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <curl/curl.h>

#include "bench.h"
#include "cl_oai.h"
#include "cli.h"
#include "cli_gen.h"
#include "clock.h"
#include "epmoe_client.h"
#include "err.h"
#include "sse.h"

#define CMD "bench server"
#define MAX_CONCURRENCY 1024
#define MAX_REQUESTS 1000000
#define MAX_ERR_KEYS 16

enum {
	OPT_CONCURRENCY = CLI_GEN_LAST + 1,
	OPT_REQUESTS,
	OPT_PROMPT_TOKENS,
	OPT_PROMPT_FILE,
	OPT_DURATION,
	OPT_STREAM,
	OPT_NO_STREAM,
	OPT_JSON,
	OPT_NO_IGNORE_EOS,
	OPT_QUIET,
};

/* ---- per-request records ---- */

struct rec {
	int started, ok;
	char err_key[16];       /* "429", "transport", "timeout", ... */
	double t0, t_first, t_end, t_prev;
	uint32_t out_tokens, in_tokens;
	int has_usage;
	uint32_t n_chunks;
	double *gaps;           /* [n_gaps] seconds between chunks */
	size_t n_gaps, cap_gaps;
};

/* A chunk with text arrived at time t. */
static void
rec_chunk(struct rec *r, double t)
{
	if (r->n_chunks == 0) {
		r->t_first = t;
	} else if (r->n_gaps < (1u << 20)) { /* bounded memory per request */
		if (r->n_gaps == r->cap_gaps) {
			size_t cap = r->cap_gaps ? r->cap_gaps * 2 : 64;
			double *ng = realloc(r->gaps, cap * sizeof(*ng));
			if (ng == NULL)
				goto out; /* lose this gap rather than the run */
			r->gaps = ng;
			r->cap_gaps = cap;
		}
		r->gaps[r->n_gaps++] = t - r->t_prev;
	}
out:
	r->t_prev = t;
	r->n_chunks++;
}

struct cfg {
	const char *server;
	struct epmoe_gen_params p;
	const char *model;
	enum epmoe_transport tr;
	long concurrency, requests, prompt_tokens;
	double duration_s, timeout_s;
	char **prompts;         /* [n_prompts], used round-robin */
	size_t n_prompts;
	int quiet, progress;
};

struct run {
	const struct cfg *cfg;
	struct rec *recs;       /* [cfg->requests] */
	double t_start, t_stop_launch;
	atomic_long next;       /* NNG: next request index */
	atomic_long n_done, n_err;
	atomic_long n_alive;    /* NNG threads still running */
	char first_error[256];
	pthread_mutex_t mu;     /* first_error */
};

static void
run_error(struct run *run, struct rec *r, const char *key, const char *msg)
{
	r->ok = 0;
	snprintf(r->err_key, sizeof(r->err_key), "%s", key);
	pthread_mutex_lock(&run->mu);
	if (run->first_error[0] == '\0')
		snprintf(run->first_error, sizeof(run->first_error), "%s", msg);
	pthread_mutex_unlock(&run->mu);
	atomic_fetch_add(&run->n_err, 1);
}

static const char *
pick_prompt(const struct cfg *cfg, long i)
{
	return cfg->prompts[(size_t)i % cfg->n_prompts];
}

static void
progress(struct run *run, long running, int final)
{
	static double last;
	double t = clock_now();

	if (!run->cfg->progress || (!final && t - last < 1.0))
		return;
	last = t;
	fprintf(stderr, "\r[%.0f s] %ld/%ld done, %ld running, %ld errors   %s",
	        t - run->t_start, (long)atomic_load(&run->n_done),
	        run->cfg->requests, running, (long)atomic_load(&run->n_err),
	        final ? "\n" : "");
	fflush(stderr);
}

/* ---- HTTP: libcurl multi ---- */

struct hreq {
	struct run *run;
	struct rec *rec;
	CURL *e;
	struct curl_slist *hdrs;
	char *body;
	char ctype[64];
	int mode;               /* 0 unknown, 1 body (error or JSON), 2 SSE */
	long status;
	char *resp;             /* mode 1 body, bounded */
	size_t resp_len;
	struct sse_parser sse;
	int done, finished, bad;
	char bad_msg[512];
};

static size_t
h_header(char *buf, size_t size, size_t nmemb, void *ud)
{
	struct hreq *h = ud;
	size_t n = size * nmemb, k = 0;

	if (n > 13 && strncasecmp(buf, "Content-Type:", 13) == 0) {
		const char *v = buf + 13;
		while (v < buf + n && *v == ' ')
			v++;
		while (v < buf + n && *v != '\r' && *v != '\n' &&
		        k + 1 < sizeof(h->ctype))
			h->ctype[k++] = (char)tolower((unsigned char)*v++);
		h->ctype[k] = '\0';
	}
	return n;
}

static int
h_event(void *ud, const char *type, const char *data, size_t len)
{
	struct hreq *h = ud;
	struct cl_oai_delta d;
	double t = clock_now();

	if (h->done)
		return 0;
	if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
		h->done = 1;
		return 0;
	}
	if (cl_oai_parse(data, len, &d) != 0) {
		h->bad = 1;
		snprintf(h->bad_msg, sizeof(h->bad_msg), "bad chunk: %.100s", data);
		return EPMOE_EPROTO;
	}
	if (d.is_error) {
		h->bad = 2;
		snprintf(h->bad_msg, sizeof(h->bad_msg), "%s", d.error);
		cl_oai_delta_fini(&d);
		return EPMOE_EPROTO;
	}
	if (d.text_len > 0)
		rec_chunk(h->rec, t);
	if (d.finish_reason[0])
		h->finished = 1;
	if (d.has_usage) {
		h->rec->has_usage = 1;
		h->rec->out_tokens = d.completion_tokens;
		h->rec->in_tokens = d.prompt_tokens;
	}
	cl_oai_delta_fini(&d);
	return 0;
}

static size_t
h_write(char *buf, size_t size, size_t nmemb, void *ud)
{
	struct hreq *h = ud;
	size_t n = size * nmemb;

	if (h->mode == 0) {
		curl_easy_getinfo(h->e, CURLINFO_RESPONSE_CODE, &h->status);
		h->mode = h->status / 100 == 2 &&
		        strncmp(h->ctype, "text/event-stream", 17) == 0 ? 2 : 1;
	}
	if (h->mode == 2)
		return sse_feed(&h->sse, buf, n) == 0 ? n : 0;
	if (h->resp_len + n > (8u << 20))
		return 0;
	char *nb = realloc(h->resp, h->resp_len + n + 1);
	if (nb == NULL)
		return 0;
	h->resp = nb;
	memcpy(h->resp + h->resp_len, buf, n);
	h->resp_len += n;
	h->resp[h->resp_len] = '\0';
	return n;
}

static void
hreq_free(struct hreq *h)
{
	if (h == NULL)
		return;
	if (h->e)
		curl_easy_cleanup(h->e);
	curl_slist_free_all(h->hdrs);
	free(h->body);
	free(h->resp);
	sse_parser_fini(&h->sse);
	free(h);
}

static struct hreq *
hreq_new(struct run *run, long i, char *url)
{
	const struct cfg *cfg = run->cfg;
	struct hreq *h = calloc(1, sizeof(*h));
	struct curl_slist *l;

	if (h == NULL)
		return NULL;
	h->run = run;
	h->rec = &run->recs[i];
	sse_parser_init(&h->sse, h_event, h);
	if (cl_oai_request(cfg->model, pick_prompt(cfg, i), NULL, 0, &cfg->p,
	        &h->body) != 0 || (h->e = curl_easy_init()) == NULL)
		goto fail;
	if ((l = curl_slist_append(NULL, "Content-Type: application/json")) == NULL)
		goto fail;
	h->hdrs = l;
	if ((l = curl_slist_append(h->hdrs, "Expect:")) == NULL)
		goto fail;
	h->hdrs = l;
	curl_easy_setopt(h->e, CURLOPT_URL, url);
	curl_easy_setopt(h->e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h->e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(h->e, CURLOPT_TIMEOUT_MS, (long)(cfg->timeout_s * 1000));
	curl_easy_setopt(h->e, CURLOPT_HTTPHEADER, h->hdrs);
	curl_easy_setopt(h->e, CURLOPT_POSTFIELDSIZE_LARGE,
	        (curl_off_t)strlen(h->body));
	curl_easy_setopt(h->e, CURLOPT_POSTFIELDS, h->body);
	curl_easy_setopt(h->e, CURLOPT_WRITEFUNCTION, h_write);
	curl_easy_setopt(h->e, CURLOPT_WRITEDATA, h);
	curl_easy_setopt(h->e, CURLOPT_HEADERFUNCTION, h_header);
	curl_easy_setopt(h->e, CURLOPT_HEADERDATA, h);
	curl_easy_setopt(h->e, CURLOPT_PRIVATE, h);
	curl_easy_setopt(h->e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(h->e, CURLOPT_USERAGENT, "epmoe-bench/1");
	h->rec->started = 1;
	h->rec->t0 = clock_now();
	return h;
fail:
	hreq_free(h);
	return NULL;
}

/* A transfer ended with result res: fill its record. */
static void
hreq_finish(struct hreq *h, CURLcode res)
{
	struct rec *r = h->rec;
	struct run *run = h->run;
	char key[16], msg[256];

	r->t_end = clock_now();
	if (h->status == 0)
		curl_easy_getinfo(h->e, CURLINFO_RESPONSE_CODE, &h->status);
	if (h->bad) {
		run_error(run, r, h->bad == 2 ? "stream_error" : "protocol",
		        h->bad_msg);
	} else if (res == CURLE_OPERATION_TIMEDOUT) {
		run_error(run, r, "timeout", curl_easy_strerror(res));
	} else if (res != CURLE_OK) {
		snprintf(msg, sizeof(msg), "%s", curl_easy_strerror(res));
		run_error(run, r, "transport", msg);
	} else if (h->status / 100 != 2) {
		snprintf(key, sizeof(key), "%ld", h->status);
		cl_oai_error_message(h->resp, h->resp_len, (int)h->status, msg,
		        sizeof(msg));
		run_error(run, r, key, msg);
	} else if (h->mode == 2 && !h->finished && !h->done) {
		run_error(run, r, "incomplete", "the stream ended early");
	} else {
		if (h->mode == 1) { /* the whole answer at once */
			struct cl_oai_delta d;
			if (cl_oai_parse(h->resp ? h->resp : "", h->resp_len, &d) != 0) {
				run_error(run, r, "protocol", "unexpected answer");
				goto out;
			}
			if (d.is_error) {
				run_error(run, r, "stream_error", d.error);
				cl_oai_delta_fini(&d);
				goto out;
			}
			rec_chunk(r, r->t_end);
			if (d.has_usage) {
				r->has_usage = 1;
				r->out_tokens = d.completion_tokens;
				r->in_tokens = d.prompt_tokens;
			}
			cl_oai_delta_fini(&d);
		}
		if (!r->has_usage)
			r->out_tokens = r->n_chunks;
		r->ok = 1;
	}
out:
	atomic_fetch_add(&run->n_done, 1);
}

static int
run_http(struct run *run)
{
	const struct cfg *cfg = run->cfg;
	CURLM *m = curl_multi_init();
	struct hreq *h, **active;
	char url[2048], base[2000];
	long launched = 0, running = 0;
	double hard_stop = run->t_stop_launch + cfg->timeout_s + 5;
	size_t n;
	int rc = 0;

	active = calloc((size_t)cfg->concurrency, sizeof(*active));
	if (m == NULL || active == NULL) {
		if (m != NULL)
			curl_multi_cleanup(m);
		free(active);
		return EPMOE_ENOMEM;
	}
	/* same normalisation as the client library: no trailing "/" or "/v1" */
	snprintf(base, sizeof(base), "%s", cfg->server);
	n = strlen(base);
	while (n > 0 && base[n - 1] == '/')
		base[--n] = '\0';
	if (n >= 3 && strcmp(base + n - 3, "/v1") == 0)
		base[n -= 3] = '\0';
	snprintf(url, sizeof(url), "%s/v1/completions", base);
	curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, cfg->concurrency);
	/* each pass: top up to C transfers, move them, reap the finished;
	 * ends when nothing runs (count or launch deadline reached) or at the
	 * hard stop */
	for (;;) {
		CURLMsg *msg;
		int still, q;
		double t = clock_now();

		while (running < cfg->concurrency && launched < cfg->requests &&
		        t < run->t_stop_launch) {
			long slot = 0;
			while (active[slot] != NULL)
				slot++;
			if ((h = hreq_new(run, launched, url)) == NULL) {
				rc = EPMOE_ENOMEM;
				goto out;
			}
			if (curl_multi_add_handle(m, h->e) != CURLM_OK) {
				hreq_free(h);
				rc = EPMOE_ENOMEM;
				goto out;
			}
			active[slot] = h;
			launched++;
			running++;
		}
		if (running == 0)
			break;
		curl_multi_perform(m, &still);
		while ((msg = curl_multi_info_read(m, &q)) != NULL) {
			if (msg->msg != CURLMSG_DONE)
				continue;
			CURL *e = msg->easy_handle;
			CURLcode res = msg->data.result;
			curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&h);
			hreq_finish(h, res);
			curl_multi_remove_handle(m, e);
			for (long i = 0; i < cfg->concurrency; i++)
				if (active[i] == h)
					active[i] = NULL;
			hreq_free(h);
			running--;
		}
		if (clock_now() > hard_stop) {
			rc = EPMOE_ETIMEDOUT;
			break;
		}
		progress(run, running, 0);
		if (running > 0)
			curl_multi_poll(m, NULL, 0, 100, NULL);
	}
out:
	/* abandon whatever still runs (only after a failure) */
	for (long i = 0; i < cfg->concurrency; i++) {
		if ((h = active[i]) == NULL)
			continue;
		curl_multi_remove_handle(m, h->e);
		h->rec->t_end = clock_now();
		run_error(run, h->rec, "aborted", "the benchmark gave up on it");
		hreq_free(h);
	}
	free(active);
	curl_multi_cleanup(m);
	progress(run, 0, 1);
	return rc;
}

/* ---- NNG: threads ---- */

struct nctx {
	struct run *run;
	struct rec *rec;
};

static int
n_chunk(void *ud, const struct epmoe_chunk *ch)
{
	struct nctx *x = ud;

	if (ch->text_len > 0 || ch->n_tokens > 0)
		rec_chunk(x->rec, clock_now());
	return 0;
}

static void *
nng_thread(void *arg)
{
	struct run *run = arg;
	const struct cfg *cfg = run->cfg;
	struct epmoe_client *c = NULL;
	struct epmoe_client_opts o = { 0 };
	char err[256];

	o.timeout_ms = (uint32_t)(cfg->timeout_s * 1000);
	if (epmoe_client_new(&c, cfg->server, &o, err, sizeof(err)) != 0) {
		/* count the requests this thread would have made as failed */
		long i;
		while ((i = atomic_fetch_add(&run->next, 1)) < cfg->requests) {
			run->recs[i].started = 1;
			run_error(run, &run->recs[i], "transport", err);
			atomic_fetch_add(&run->n_done, 1);
		}
		atomic_fetch_sub(&run->n_alive, 1);
		return NULL;
	}
	for (;;) {
		long i = atomic_fetch_add(&run->next, 1);
		struct rec *r;
		struct epmoe_completion res;
		struct nctx x;
		int rc;

		if (i >= cfg->requests || clock_now() >= run->t_stop_launch)
			break;
		r = &run->recs[i];
		x.run = run;
		x.rec = r;
		r->started = 1;
		r->t0 = clock_now();
		rc = epmoe_complete(c, pick_prompt(cfg, i), &cfg->p, n_chunk, &x,
		        &res);
		r->t_end = clock_now();
		if (rc == 0) {
			r->ok = 1;
			r->has_usage = res.has_usage;
			r->out_tokens = res.has_usage ? res.completion_tokens :
			        (uint32_t)(res.n_tokens ? res.n_tokens : res.n_chunks);
			r->in_tokens = res.prompt_tokens;
			if (r->n_chunks == 0)
				rec_chunk(r, r->t_end);
			epmoe_completion_fini(&res);
		} else {
			const struct epmoe_error *e = epmoe_client_error(c);
			char key[16];
			if (e->status != 0)
				snprintf(key, sizeof(key), "%d", e->status);
			else
				snprintf(key, sizeof(key), "%s", rc == EPMOE_ETIMEDOUT ?
				        "timeout" : "transport");
			run_error(run, r, key, e->message);
		}
		atomic_fetch_add(&run->n_done, 1);
	}
	epmoe_client_free(c);
	atomic_fetch_sub(&run->n_alive, 1);
	return NULL;
}

static int
run_nng(struct run *run)
{
	const struct cfg *cfg = run->cfg;
	pthread_t *th = calloc((size_t)cfg->concurrency, sizeof(*th));
	long n = 0;
	int rc = 0;

	if (th == NULL)
		return EPMOE_ENOMEM;
	for (; n < cfg->concurrency; n++) {
		atomic_fetch_add(&run->n_alive, 1);
		if (pthread_create(&th[n], NULL, nng_thread, run) != 0) {
			atomic_fetch_sub(&run->n_alive, 1);
			rc = EPMOE_ENOMEM;
			break;
		}
	}
	/* the threads end by themselves: by count, by the launch deadline and
	 * each request by its client timeout */
	while (cfg->progress && atomic_load(&run->n_alive) > 0) {
		long started = atomic_load(&run->next);
		if (started > cfg->requests)
			started = cfg->requests;
		progress(run, started - atomic_load(&run->n_done), 0);
		usleep(100000);
	}
	for (long i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	free(th);
	progress(run, 0, 1);
	return rc;
}

/* ---- statistics ---- */

static int
cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

struct stat {
	size_t n;
	double mean, p50, p90, p99, max;
};

/* Percentile with linear interpolation between closest ranks (numpy's
 * default); v sorted ascending. */
static double
pct(const double *v, size_t n, double q)
{
	double pos = q * (double)(n - 1);
	size_t lo = (size_t)floor(pos), hi = (size_t)ceil(pos);

	return v[lo] + (v[hi] - v[lo]) * (pos - (double)lo);
}

/* Sorts v in place. */
static struct stat
stat_of(double *v, size_t n)
{
	struct stat s = { n, NAN, NAN, NAN, NAN, NAN };
	double sum = 0;

	if (n == 0)
		return s;
	qsort(v, n, sizeof(*v), cmp_dbl);
	for (size_t i = 0; i < n; i++)
		sum += v[i];
	s.mean = sum / (double)n;
	s.p50 = pct(v, n, 0.50);
	s.p90 = pct(v, n, 0.90);
	s.p99 = pct(v, n, 0.99);
	s.max = v[n - 1];
	return s;
}

static void
json_stat(cJSON *o, const char *name, const struct stat *s)
{
	cJSON *x = cJSON_AddObjectToObject(o, name);

	if (x == NULL)
		return;
	cJSON_AddNumberToObject(x, "n", (double)s->n);
	if (s->n == 0) {
		cJSON_AddNullToObject(x, "mean");
		cJSON_AddNullToObject(x, "p50");
		cJSON_AddNullToObject(x, "p90");
		cJSON_AddNullToObject(x, "p99");
		cJSON_AddNullToObject(x, "max");
		return;
	}
	cJSON_AddNumberToObject(x, "mean", s->mean * 1e3);
	cJSON_AddNumberToObject(x, "p50", s->p50 * 1e3);
	cJSON_AddNumberToObject(x, "p90", s->p90 * 1e3);
	cJSON_AddNumberToObject(x, "p99", s->p99 * 1e3);
	cJSON_AddNumberToObject(x, "max", s->max * 1e3);
}

static void
print_stat(const char *name, const struct stat *s)
{
	if (s->n == 0) {
		printf("  %-5s %10s %10s %10s %10s %10s   (no samples)\n", name, "-",
		        "-", "-", "-", "-");
		return;
	}
	printf("  %-5s %10.2f %10.2f %10.2f %10.2f %10.2f   (%zu samples)\n", name,
	        s->mean * 1e3, s->p50 * 1e3, s->p90 * 1e3, s->p99 * 1e3, s->max * 1e3,
	        s->n);
}

static int
report(struct run *run, const char *json_path, int json)
{
	const struct cfg *cfg = run->cfg;
	long n = cfg->requests, ok = 0, errs = 0, started = 0;
	double *ttft = calloc((size_t)n + 1, sizeof(double));
	double *tpot = calloc((size_t)n + 1, sizeof(double));
	double *e2e = calloc((size_t)n + 1, sizeof(double));
	double *itl = NULL, t_end = run->t_start, dur;
	size_t n_ttft = 0, n_tpot = 0, n_e2e = 0, n_itl = 0, gaps = 0;
	uint64_t out_tok = 0, in_tok = 0;
	struct { char key[16]; long n; } ek[MAX_ERR_KEYS];
	size_t n_ek = 0;
	struct stat s_ttft, s_tpot, s_itl, s_e2e;
	int rc = 0;

	for (long i = 0; i < n; i++)
		gaps += run->recs[i].ok ? run->recs[i].n_gaps : 0;
	itl = calloc(gaps + 1, sizeof(double));
	if (ttft == NULL || tpot == NULL || e2e == NULL || itl == NULL) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	for (long i = 0; i < n; i++) {
		struct rec *r = &run->recs[i];
		if (!r->started)
			continue;
		started++;
		if (r->t_end > t_end)
			t_end = r->t_end;
		if (!r->ok) {
			size_t k;
			errs++;
			for (k = 0; k < n_ek && strcmp(ek[k].key, r->err_key) != 0; k++)
				;
			if (k == n_ek && n_ek < MAX_ERR_KEYS) {
				snprintf(ek[k].key, sizeof(ek[k].key), "%s", r->err_key);
				ek[k].n = 0;
				n_ek++;
			}
			if (k < n_ek)
				ek[k].n++;
			continue;
		}
		ok++;
		out_tok += r->out_tokens;
		in_tok += r->in_tokens;
		e2e[n_e2e++] = r->t_end - r->t0;
		if (cfg->p.stream) {
			ttft[n_ttft++] = r->t_first - r->t0;
			if (r->out_tokens > 1)
				tpot[n_tpot++] = (r->t_end - r->t_first) /
				        (double)(r->out_tokens - 1);
			memcpy(itl + n_itl, r->gaps, r->n_gaps * sizeof(double));
			n_itl += r->n_gaps;
		}
	}
	dur = t_end - run->t_start;
	if (dur <= 0)
		dur = 1e-9;
	s_ttft = stat_of(ttft, n_ttft);
	s_tpot = stat_of(tpot, n_tpot);
	s_itl = stat_of(itl, n_itl);
	s_e2e = stat_of(e2e, n_e2e);
	if (json) {
		cJSON *o = cJSON_CreateObject(), *e;
		char *s;
		if (o == NULL) {
			rc = EPMOE_ENOMEM;
			goto out;
		}
		cJSON_AddStringToObject(o, "bench", "server");
		cJSON_AddStringToObject(o, "server", cfg->server);
		cJSON_AddStringToObject(o, "transport",
		        cfg->tr == EPMOE_TRANSPORT_HTTP ? "http" : "nng");
		cJSON_AddStringToObject(o, "model", cfg->model ? cfg->model : "");
		cJSON_AddBoolToObject(o, "stream", cfg->p.stream);
		cJSON_AddNumberToObject(o, "concurrency", (double)cfg->concurrency);
		cJSON_AddNumberToObject(o, "requests", (double)cfg->requests);
		cJSON_AddNumberToObject(o, "started", (double)started);
		cJSON_AddNumberToObject(o, "completed", (double)ok);
		cJSON_AddNumberToObject(o, "errors", (double)errs);
		if ((e = cJSON_AddObjectToObject(o, "errors_by_status")) != NULL)
			for (size_t k = 0; k < n_ek; k++)
				cJSON_AddNumberToObject(e, ek[k].key, (double)ek[k].n);
		if (run->first_error[0])
			cJSON_AddStringToObject(o, "first_error", run->first_error);
		cJSON_AddNumberToObject(o, "prompt_tokens_target",
		        (double)cfg->prompt_tokens);
		cJSON_AddNumberToObject(o, "max_tokens", cfg->p.max_tokens);
		cJSON_AddNumberToObject(o, "duration_s", dur);
		cJSON_AddNumberToObject(o, "request_throughput", ok / dur);
		cJSON_AddNumberToObject(o, "input_tokens", (double)in_tok);
		cJSON_AddNumberToObject(o, "output_tokens", (double)out_tok);
		cJSON_AddNumberToObject(o, "input_token_throughput", in_tok / dur);
		cJSON_AddNumberToObject(o, "output_token_throughput", out_tok / dur);
		json_stat(o, "ttft_ms", &s_ttft);
		json_stat(o, "tpot_ms", &s_tpot);
		json_stat(o, "itl_ms", &s_itl);
		json_stat(o, "e2e_ms", &s_e2e);
		s = cJSON_PrintUnformatted(o);
		cJSON_Delete(o);
		if (s == NULL) {
			rc = EPMOE_ENOMEM;
			goto out;
		}
		if (json_path != NULL) {
			FILE *f = fopen(json_path, "w");
			if (f == NULL || fprintf(f, "%s\n", s) < 0 || fclose(f) != 0) {
				fprintf(stderr, "epmoe " CMD ": cannot write %s\n", json_path);
				rc = EPMOE_EIO;
			}
		} else {
			printf("%s\n", s);
		}
		free(s);
		if (json_path == NULL)
			goto out;
	}
	printf("epmoe bench server: %s (%s), model %s, %s, concurrency %ld\n",
	        cfg->server, cfg->tr == EPMOE_TRANSPORT_HTTP ? "http" : "nng",
	        cfg->model ? cfg->model : "(server default)",
	        cfg->p.stream ? "streaming" : "not streaming", cfg->concurrency);
	printf("  requests: %ld completed, %ld errors, of %ld (%ld started) in "
	       "%.2f s\n", ok, errs, cfg->requests, started, dur);
	printf("  throughput: %.2f req/s, input %.1f tok/s, output %.1f tok/s "
	       "(%llu in, %llu out)\n", ok / dur, in_tok / dur, out_tok / dur,
	        (unsigned long long)in_tok, (unsigned long long)out_tok);
	if (n_ek > 0) {
		printf("  errors by status:");
		for (size_t k = 0; k < n_ek; k++)
			printf(" %s: %ld", ek[k].key, ek[k].n);
		printf("\n  first error: %s\n", run->first_error);
	}
	printf("  %-5s %10s %10s %10s %10s %10s   (ms)\n", "", "mean", "p50", "p90",
	        "p99", "max");
	print_stat("ttft", &s_ttft);
	print_stat("tpot", &s_tpot);
	print_stat("itl", &s_itl);
	print_stat("e2e", &s_e2e);
out:
	fflush(stdout);
	free(ttft);
	free(tpot);
	free(e2e);
	free(itl);
	return rc;
}

/* ---- prompts ---- */

static const char *const words[] = {
	"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "time",
	"river", "mountain", "light", "small", "house", "stone", "green",
	"water", "open", "people", "city", "morning", "under", "between",
	"story", "number", "winter", "garden", "signal", "expert", "router",
	"token", "model", "ocean", "paper", "window", "silver", "forest",
	"market", "simple", "bright", "engine", "travel", "answer", "little",
	"moment", "yellow", "music", "table", "north", "orange", "summer",
	"purple", "animal", "letter", "mirror", "planet", "bridge", "castle",
};
#define N_WORDS (sizeof(words) / sizeof(words[0]))

static uint64_t
xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* n_words random words (deterministic per index). */
static char *
synth_prompt(long idx, long n_words)
{
	uint64_t s = 0x9e3779b97f4a7c15ull ^ ((uint64_t)idx * 0xbf58476d1ce4e5b9ull);
	size_t cap = (size_t)n_words * 10 + 1, len = 0;
	char *p = malloc(cap);

	if (p == NULL)
		return NULL;
	xorshift(&s);
	for (long i = 0; i < n_words; i++) {
		const char *w = words[xorshift(&s) % N_WORDS];
		size_t wl = strlen(w);
		if (len + wl + 2 > cap)
			break;
		if (i > 0)
			p[len++] = ' ';
		memcpy(p + len, w, wl);
		len += wl;
	}
	p[len] = '\0';
	return p;
}

/* Tokens per word of the synthetic text, asked of the server's tokenizer
 * (1.3 when it will not say). */
static double
tokens_per_word(struct epmoe_client *c)
{
	const long n = 200;
	char *sample = synth_prompt(-1, n);
	uint32_t *toks;
	size_t nt;
	double r = 1.3;

	if (sample != NULL && epmoe_tokenize(c, sample, 0, &toks, &nt) == 0) {
		if (nt > 0)
			r = (double)nt / (double)n;
		free(toks);
	}
	free(sample);
	return r;
}

static int
load_prompts(struct cfg *cfg, const char *file, struct epmoe_client *c)
{
	if (file != NULL) {
		char *buf, *line, *save;
		size_t len, cap = 0;
		if (cli_read_file(file, &buf, &len) != 0) {
			fprintf(stderr, "epmoe " CMD ": cannot read %s\n", file);
			return 1;
		}
		for (line = strtok_r(buf, "\n", &save); line != NULL;
		        line = strtok_r(NULL, "\n", &save)) {
			size_t l = strlen(line);
			while (l > 0 && line[l - 1] == '\r')
				line[--l] = '\0';
			if (l == 0)
				continue;
			if (cfg->n_prompts == cap) {
				size_t nc = cap ? cap * 2 : 64;
				char **np = realloc(cfg->prompts, nc * sizeof(*np));
				if (np == NULL)
					break;
				cfg->prompts = np;
				cap = nc;
			}
			if ((cfg->prompts[cfg->n_prompts] = strdup(line)) == NULL)
				break;
			cfg->n_prompts++;
		}
		free(buf);
		if (cfg->n_prompts == 0) {
			fprintf(stderr, "epmoe " CMD ": no prompts in %s (one per "
			        "line)\n", file);
			return 1;
		}
		return 0;
	}
	/* distinct prompts (no shared prefix to cache), up to 256 of them */
	size_t np = cfg->requests < 256 ? (size_t)cfg->requests : 256;
	long nw = (long)lround((double)cfg->prompt_tokens / tokens_per_word(c));
	if (nw < 1)
		nw = 1;
	if ((cfg->prompts = calloc(np, sizeof(*cfg->prompts))) == NULL)
		return 1;
	for (size_t i = 0; i < np; i++) {
		if ((cfg->prompts[i] = synth_prompt((long)i, nw)) == NULL)
			return 1;
		cfg->n_prompts++;
	}
	return 0;
}

/* ---- the command ---- */

static void
usage(FILE *f)
{
	fprintf(f, "usage: epmoe bench server [options]\n"
	           "  closed-loop load against a running router; reports TTFT, "
	           "TPOT, ITL and\n"
	           "  E2E latency (mean, p50, p90, p99) and throughput\n"
	           "  -s, --server URL     the router: http://HOST:PORT or "
	           "tcp://HOST:PORT (NNG)\n"
	           "                       (env EPMOE_SERVER; default %s)\n"
	           "  -m, --model M        model id (env EPMOE_MODEL; default: the "
	           "server's first)\n"
	           "  -c, --concurrency C  requests in flight (default 4)\n"
	           "  -N, --requests N     requests in all (default 64)\n"
	           "  -p, --prompt-tokens P  synthetic prompts of about P tokens "
	           "(default 32)\n"
	           "      --prompt-file F  prompts, one per line, used in turn\n"
	           "      --max-tokens G   tokens to generate per request "
	           "(default 32)\n"
	           "  -d, --duration S     start no request after S seconds "
	           "(default 300)\n"
	           "      --timeout S      seconds one request may take (env "
	           "EPMOE_TIMEOUT;\n"
	           "                       default 60)\n"
	           "      --stream         stream the output (default)\n"
	           "      --no-stream      whole answers (E2E only: no TTFT, TPOT, "
	           "ITL)\n"
	           "      --no-ignore-eos  let requests stop at end-of-sequence "
	           "(default:\n"
	           "                       ask for ignore_eos, fixed output "
	           "lengths)\n"
	           "      --temp, --top-p, --top-k, --seed, --routing  as in epmoe "
	           "generate\n"
	           "      --json[=FILE]    one JSON object on stdout (or into FILE, "
	           "with the\n"
	           "                       table on stdout)\n"
	           "  -q, --quiet          no progress line\n",
	        EPMOE_DEFAULT_SERVER);
}

int
bench_server(int argc, char **argv)
{
	static const struct option opts[] = {
		CLI_GEN_OPTIONS,
		{ "concurrency", required_argument, NULL, OPT_CONCURRENCY },
		{ "requests", required_argument, NULL, OPT_REQUESTS },
		{ "prompt-tokens", required_argument, NULL, OPT_PROMPT_TOKENS },
		{ "prompt-file", required_argument, NULL, OPT_PROMPT_FILE },
		{ "duration", required_argument, NULL, OPT_DURATION },
		{ "stream", no_argument, NULL, OPT_STREAM },
		{ "no-stream", no_argument, NULL, OPT_NO_STREAM },
		{ "json", optional_argument, NULL, OPT_JSON },
		{ "no-ignore-eos", no_argument, NULL, OPT_NO_IGNORE_EOS },
		{ "quiet", no_argument, NULL, OPT_QUIET },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct cli_gen g;
	struct cfg cfg;
	struct run run;
	struct epmoe_client *c = NULL;
	struct epmoe_health hl;
	const char *prompt_file = NULL, *json_path = NULL;
	char **ids;
	size_t n_ids;
	int json = 0, c_opt, rc;
	double d;

	if ((rc = cli_gen_init(&g, CMD)) != 0)
		return rc;
	memset(&cfg, 0, sizeof(cfg));
	memset(&run, 0, sizeof(run));
	g.p.max_tokens = 32;
	g.p.stream = 1;
	g.p.ignore_eos = 1;
	if (cli_env("EPMOE_TIMEOUT", NULL) == NULL)
		g.timeout_s = 60;
	cfg.concurrency = 4;
	cfg.requests = 64;
	cfg.prompt_tokens = 32;
	cfg.duration_s = 300;
	optind = 1;
	while ((c_opt = getopt_long(argc, argv, "s:m:c:N:p:d:qh", opts,
	        NULL)) != -1) {
		switch (c_opt) {
		case 'c':
		case OPT_CONCURRENCY:
			if (cli_long(optarg, 1, MAX_CONCURRENCY, &cfg.concurrency))
				return cli_bad(CMD, "--concurrency", "expects 1..1024");
			break;
		case 'N':
		case OPT_REQUESTS:
			if (cli_long(optarg, 1, MAX_REQUESTS, &cfg.requests))
				return cli_bad(CMD, "--requests", "expects 1..1000000");
			break;
		case 'p':
		case OPT_PROMPT_TOKENS:
			if (cli_long(optarg, 1, 1 << 20, &cfg.prompt_tokens))
				return cli_bad(CMD, "--prompt-tokens", "expects 1..1048576");
			break;
		case OPT_PROMPT_FILE: prompt_file = optarg; break;
		case 'd':
		case OPT_DURATION:
			if (cli_float(optarg, 0.001, 86400, &d))
				return cli_bad(CMD, "--duration", "expects seconds in "
				        "(0, 86400]");
			cfg.duration_s = d;
			break;
		case OPT_STREAM: g.p.stream = 1; break;
		case OPT_NO_STREAM: g.p.stream = 0; break;
		case OPT_NO_IGNORE_EOS: g.p.ignore_eos = 0; break;
		case OPT_JSON:
			json = 1;
			json_path = optarg;
			break;
		case 'q':
		case OPT_QUIET: cfg.quiet = 1; break;
		case 'h': usage(stdout); return 0;
		case '?': usage(stderr); return 2;
		default:
			if ((rc = cli_gen_opt(&g, CMD, c_opt, optarg)) != 0) {
				if (rc == 1)
					usage(stderr);
				return 2;
			}
		}
	}
	if (optind != argc) {
		fprintf(stderr, "epmoe " CMD ": unexpected argument '%s'\n",
		        argv[optind]);
		return 2;
	}
	cfg.server = g.server;
	cfg.p = g.p;
	cfg.timeout_s = g.timeout_s;
	cfg.progress = !cfg.quiet && isatty(STDERR_FILENO);
	if (epmoe_url_transport(cfg.server, &cfg.tr) != 0)
		return cli_bad(CMD, "--server", "expects http://HOST:PORT or an NNG URL");
	if ((rc = cli_gen_connect(&g, CMD, &c)) != 0)
		return rc;
	/* a server that is not there or not ready fails here, once */
	if (epmoe_health(c, &hl) != 0) {
		cli_gen_print_error(CMD, c);
		epmoe_client_free(c);
		return 1;
	}
	if (!hl.ok) {
		fprintf(stderr, "epmoe " CMD ": the server is not ready (%s)\n",
		        hl.status);
		epmoe_client_free(c);
		return 1;
	}
	cfg.model = g.p.model;
	if (cfg.model == NULL && epmoe_models(c, &ids, &n_ids) == 0) {
		if (n_ids > 0)
			cfg.model = strdup(ids[0]); /* freed below via g's copy */
		epmoe_strv_free(ids, n_ids);
	}
	cfg.p.model = cfg.model;
	rc = load_prompts(&cfg, prompt_file, c);
	epmoe_client_free(c);
	if (rc != 0)
		goto out;
	run.cfg = &cfg;
	pthread_mutex_init(&run.mu, NULL);
	if ((run.recs = calloc((size_t)cfg.requests, sizeof(*run.recs))) == NULL) {
		rc = 1;
		goto out_mu;
	}
	run.t_start = clock_now();
	run.t_stop_launch = run.t_start + cfg.duration_s;
	if (cfg.tr == EPMOE_TRANSPORT_HTTP)
		rc = run_http(&run);
	else
		rc = run_nng(&run);
	if (rc != 0)
		fprintf(stderr, "epmoe " CMD ": %s\n", epmoe_strerror(rc));
	if (report(&run, json_path, json) != 0)
		rc = EPMOE_EIO;
	/* the tool ran: failing requests are results, unless all failed */
	rc = rc == 0 && atomic_load(&run.n_err) < cfg.requests ? 0 : 1;
	for (long i = 0; i < cfg.requests; i++)
		free(run.recs[i].gaps);
	free(run.recs);
out_mu:
	pthread_mutex_destroy(&run.mu);
out:
	for (size_t i = 0; i < cfg.n_prompts; i++)
		free(cfg.prompts[i]);
	free(cfg.prompts);
	if (cfg.model != g.p.model)
		free((char *)cfg.model);
	return rc;
}
