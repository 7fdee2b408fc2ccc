/* The load generator's driver (see lg_drive.h): HTTP with libcurl multi
 * in one thread, NNG with a thread per in-flight request, and the
 * /v1/stats sampler thread. */
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cJSON.h>
#include <curl/curl.h>

#include "cl_oai.h"
#include "clock.h"
#include "err.h"
#include "lg_drive.h"
#include "sse.h"

#define MAX_BODY (8u << 20) /* a whole (non-streamed or error) answer */

struct drv {
	const struct lg_drive_cfg *cfg;
	struct lg_rec *recs;
	double t_start;             /* clock_now() at the start */
	atomic_long next;           /* NNG: next request index */
	atomic_long n_done, n_err, n_started;
	atomic_long n_alive;        /* NNG threads still running */
	double last_progress;
	char *auth;                 /* HTTP "Authorization: Bearer KEY", or NULL */
};

static double
rel_now(const struct drv *d)
{
	return clock_now() - d->t_start;
}

static const struct lg_item *
item_of(const struct drv *d, long i)
{
	const struct lg_dataset *ds = d->cfg->data;

	return &ds->items[(d->cfg->first_item + (size_t)i) % ds->n];
}

static void
report_progress(struct drv *d, long inflight, int final)
{
	struct lg_progress p;
	double t = rel_now(d);

	if (d->cfg->progress == NULL || (!final && t - d->last_progress < 0.2))
		return;
	d->last_progress = t;
	p.n = d->cfg->n;
	p.done = atomic_load(&d->n_done);
	p.inflight = inflight;
	p.errors = atomic_load(&d->n_err);
	p.elapsed = t;
	d->cfg->progress(d->cfg->progress_ud, &p, final);
}

static void
finish(struct drv *d, struct lg_rec *r)
{
	if (!r->ok)
		atomic_fetch_add(&d->n_err, 1);
	atomic_fetch_add(&d->n_done, 1);
}

/* ---- HTTP: libcurl multi ---- */

struct hreq {
	struct drv *d;
	struct lg_rec *rec;
	CURL *e;
	struct curl_slist *hdrs;
	char *body;
	char ctype[64];
	int mode;               /* 0 unknown, 1 whole body, 2 SSE */
	long status;
	char *resp;             /* mode 1 body, bounded */
	size_t resp_len;
	struct sse_parser sse;
	int done, finished, bad; /* bad: 1 protocol, 2 error event */
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
	struct cl_oai_delta dl;
	double t = rel_now(h->d);

	if (h->done)
		return 0;
	if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
		h->done = 1;
		return 0;
	}
	if (cl_oai_parse(data, len, &dl) != 0) {
		h->bad = 1;
		snprintf(h->bad_msg, sizeof(h->bad_msg), "bad chunk: %.100s", data);
		return EPMOE_EPROTO;
	}
	if (dl.is_error) {
		h->bad = 2;
		snprintf(h->bad_msg, sizeof(h->bad_msg), "%s", dl.error);
		cl_oai_delta_fini(&dl);
		return EPMOE_EPROTO;
	}
	if (dl.text_len > 0)
		lg_rec_chunk(h->rec, t);
	if (dl.finish_reason[0])
		h->finished = 1;
	if (dl.has_usage) {
		h->rec->has_usage = 1;
		h->rec->out_tokens = dl.completion_tokens;
		h->rec->in_tokens = dl.prompt_tokens;
		h->rec->has_cached = dl.has_cached;
		h->rec->cached_tokens = dl.cached_tokens;
	}
	cl_oai_delta_fini(&dl);
	return 0;
}

static size_t
h_write(char *buf, size_t size, size_t nmemb, void *ud)
{
	struct hreq *h = ud;
	size_t n = size * nmemb;
	char *nb;

	if (h->mode == 0) {
		curl_easy_getinfo(h->e, CURLINFO_RESPONSE_CODE, &h->status);
		h->mode = h->status / 100 == 2 &&
		        strncmp(h->ctype, "text/event-stream", 17) == 0 ? 2 : 1;
	}
	if (h->mode == 2)
		return sse_feed(&h->sse, buf, n) == 0 ? n : 0;
	if (h->resp_len + n > MAX_BODY)
		return 0;
	if ((nb = realloc(h->resp, h->resp_len + n + 1)) == NULL)
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

/* Adds the members of the JSON object extra to the JSON body *body
 * (replacing members of the same name).  Returns 0 or EPMOE_ENOMEM
 * (EPMOE_EINVAL: either is not a JSON object). */
static int
body_merge(char **body, const char *extra)
{
	cJSON *b = cJSON_Parse(*body), *x = cJSON_Parse(extra), *it;
	char *s;
	int rc = EPMOE_EINVAL;

	if (!cJSON_IsObject(b) || !cJSON_IsObject(x))
		goto out;
	rc = EPMOE_ENOMEM;
	cJSON_ArrayForEach(it, x) {
		cJSON *c = cJSON_Duplicate(it, 1);
		if (c == NULL)
			goto out;
		cJSON_DeleteItemFromObjectCaseSensitive(b, it->string);
		if (!cJSON_AddItemToObject(b, it->string, c)) {
			cJSON_Delete(c);
			goto out;
		}
	}
	if ((s = cJSON_PrintUnformatted(b)) == NULL)
		goto out;
	free(*body);
	*body = s;
	rc = 0;
out:
	cJSON_Delete(b);
	cJSON_Delete(x);
	return rc;
}

static struct hreq *
hreq_new(struct drv *d, long i, const char *url)
{
	const struct lg_drive_cfg *cfg = d->cfg;
	const struct lg_item *it = item_of(d, i);
	struct epmoe_gen_params p = cfg->p;
	struct epmoe_chat_msg msg = { "user", it->prompt };
	struct hreq *h = calloc(1, sizeof(*h));
	struct curl_slist *l;

	if (h == NULL)
		return NULL;
	h->d = d;
	h->rec = &d->recs[i];
	sse_parser_init(&h->sse, h_event, h);
	p.max_tokens = (int32_t)it->output_len;
	if (cl_oai_request(p.model, cfg->chat ? NULL : it->prompt,
	        cfg->chat ? &msg : NULL, cfg->chat ? 1 : 0, &p, &h->body) != 0 ||
	        (cfg->extra_body != NULL &&
	        body_merge(&h->body, cfg->extra_body) != 0) ||
	        (h->e = curl_easy_init()) == NULL)
		goto fail;
	if ((l = curl_slist_append(NULL, "Content-Type: application/json")) == NULL)
		goto fail;
	h->hdrs = l;
	if ((l = curl_slist_append(h->hdrs, "Expect:")) == NULL)
		goto fail;
	h->hdrs = l;
	if (d->auth != NULL) {
		if ((l = curl_slist_append(h->hdrs, d->auth)) == NULL)
			goto fail;
		h->hdrs = l;
	}
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
	curl_easy_setopt(h->e, CURLOPT_USERAGENT, "epmoe-bench/2");
	h->rec->started = 1;
	h->rec->t_sched = cfg->sched[i];
	h->rec->in_tokens = it->prompt_len;
	h->rec->t0 = rel_now(d);
	atomic_fetch_add(&d->n_started, 1);
	return h;
fail:
	hreq_free(h);
	return NULL;
}

/* A transfer ended with result res: fill in its record. */
static void
hreq_finish(struct hreq *h, CURLcode res)
{
	struct lg_rec *r = h->rec;
	char key[LG_ERR_KIND_LEN], msg[512];

	r->t_end = rel_now(h->d);
	if (h->status == 0)
		curl_easy_getinfo(h->e, CURLINFO_RESPONSE_CODE, &h->status);
	if (h->bad) {
		lg_rec_fail(r, h->bad == 2 ? "stream_error" : "protocol", h->bad_msg);
	} else if (res == CURLE_OPERATION_TIMEDOUT) {
		lg_rec_fail(r, "timeout", curl_easy_strerror(res));
	} else if (res != CURLE_OK) {
		lg_rec_fail(r, "transport", curl_easy_strerror(res));
	} else if (h->status / 100 != 2) {
		snprintf(key, sizeof(key), "http_%ld", h->status);
		cl_oai_error_message(h->resp, h->resp_len, (int)h->status, msg,
		        sizeof(msg));
		lg_rec_fail(r, key, msg);
	} else if (h->mode == 2 && !h->finished && !h->done) {
		lg_rec_fail(r, "incomplete", "the stream ended before a finish "
		        "reason or [DONE]");
	} else {
		if (h->mode == 1) { /* the whole answer at once */
			struct cl_oai_delta dl;
			if (cl_oai_parse(h->resp ? h->resp : "", h->resp_len, &dl) != 0) {
				lg_rec_fail(r, "protocol", "the answer is not a completion");
				goto out;
			}
			if (dl.is_error) {
				lg_rec_fail(r, "stream_error", dl.error);
				cl_oai_delta_fini(&dl);
				goto out;
			}
			lg_rec_chunk(r, r->t_end);
			if (dl.has_usage) {
				r->has_usage = 1;
				r->out_tokens = dl.completion_tokens;
				r->in_tokens = dl.prompt_tokens;
				r->has_cached = dl.has_cached;
				r->cached_tokens = dl.cached_tokens;
			}
			cl_oai_delta_fini(&dl);
		}
		if (!r->has_usage)
			r->out_tokens = r->n_chunks;
		r->ok = 1;
	}
out:
	finish(h->d, r);
}

/* base URL without a trailing "/" or "/v1", then path */
static void
endpoint_url(const char *server, const char *path, char *out, size_t size)
{
	size_t n;

	snprintf(out, size, "%s", server);
	n = strlen(out);
	while (n > 0 && out[n - 1] == '/')
		out[--n] = '\0';
	if (n >= 3 && strcmp(out + n - 3, "/v1") == 0)
		out[n -= 3] = '\0';
	snprintf(out + n, size - n, "%s", path);
}

static int
run_http(struct drv *d)
{
	const struct lg_drive_cfg *cfg = d->cfg;
	long cap = cfg->max_inflight, launched = 0, running = 0;
	CURLM *m = curl_multi_init();
	struct hreq *h, **active = calloc((size_t)cap, sizeof(*active));
	double hard_stop = cfg->duration_s + cfg->timeout_s + 5;
	char url[2048];
	int rc = 0, no_more = 0;

	if (m == NULL || active == NULL) {
		if (m != NULL)
			curl_multi_cleanup(m);
		free(active);
		return EPMOE_ENOMEM;
	}
	endpoint_url(cfg->server, cfg->chat ? "/v1/chat/completions" :
	        "/v1/completions", url, sizeof(url));
	curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, cap);
	/* each pass: send what is due (up to the cap), move the transfers,
	 * reap the finished; ends when nothing runs and nothing more will be
	 * sent, or at the hard stop */
	for (;;) {
		CURLMsg *msg;
		int still, q;
		double t = rel_now(d);
		long wait_ms = 100;

		while (!no_more && running < cap && launched < cfg->n &&
		        cfg->sched[launched] <= t) {
			long slot = 0;
			if (t >= cfg->duration_s) {
				no_more = 1;
				break;
			}
			while (active[slot] != NULL)
				slot++;
			if ((h = hreq_new(d, launched, url)) == NULL) {
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
		if (launched < cfg->n && t >= cfg->duration_s)
			no_more = 1;
		if (running == 0 && (no_more || launched == cfg->n))
			break;
		curl_multi_perform(m, &still);
		while ((msg = curl_multi_info_read(m, &q)) != NULL) {
			CURL *e;
			CURLcode res;
			if (msg->msg != CURLMSG_DONE)
				continue;
			e = msg->easy_handle;
			res = msg->data.result;
			curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&h);
			hreq_finish(h, res);
			curl_multi_remove_handle(m, e);
			for (long i = 0; i < cap; i++)
				if (active[i] == h)
					active[i] = NULL;
			hreq_free(h);
			running--;
		}
		if (rel_now(d) > hard_stop) {
			rc = EPMOE_ETIMEDOUT;
			break;
		}
		report_progress(d, running, 0);
		if (!no_more && launched < cfg->n && running < cap) {
			double until = (cfg->sched[launched] - rel_now(d)) * 1e3;
			if (until < wait_ms)
				wait_ms = until > 0 ? (long)ceil(until) : 0;
		}
		if (running > 0)
			curl_multi_poll(m, NULL, 0, (int)wait_ms, NULL);
		else if (wait_ms > 0)
			usleep((useconds_t)wait_ms * 1000);
	}
out:
	/* abandon whatever still runs (after a failure or the hard stop) */
	for (long i = 0; i < cap; i++) {
		if ((h = active[i]) == NULL)
			continue;
		curl_multi_remove_handle(m, h->e);
		h->rec->t_end = rel_now(d);
		lg_rec_fail(h->rec, "aborted", "still running at the hard stop");
		finish(d, h->rec);
		hreq_free(h);
	}
	free(active);
	curl_multi_cleanup(m);
	return rc;
}

/* ---- NNG: a thread per in-flight request ---- */

static int
n_chunk(void *ud, const struct epmoe_chunk *ch)
{
	struct lg_rec *r = ((void **)ud)[0];
	struct drv *d = ((void **)ud)[1];

	if (ch->text_len > 0 || ch->n_tokens > 0)
		lg_rec_chunk(r, rel_now(d));
	return 0;
}

static void
nng_one(struct drv *d, struct epmoe_client *c, long i)
{
	const struct lg_drive_cfg *cfg = d->cfg;
	const struct lg_item *it = item_of(d, i);
	struct lg_rec *r = &d->recs[i];
	struct epmoe_gen_params p = cfg->p;
	struct epmoe_chat_msg msg = { "user", it->prompt };
	struct epmoe_completion res;
	void *ud[2] = { r, d };
	int rc;

	p.max_tokens = (int32_t)it->output_len;
	r->started = 1;
	r->t_sched = cfg->sched[i];
	r->in_tokens = it->prompt_len;
	atomic_fetch_add(&d->n_started, 1);
	r->t0 = rel_now(d);
	if (cfg->chat)
		rc = epmoe_chat(c, &msg, 1, &p, n_chunk, ud, &res);
	else
		rc = epmoe_complete(c, it->prompt, &p, n_chunk, ud, &res);
	r->t_end = rel_now(d);
	if (rc == 0) {
		r->ok = 1;
		r->has_usage = res.has_usage;
		r->out_tokens = res.has_usage ? res.completion_tokens :
		        (uint32_t)(res.n_tokens ? res.n_tokens : res.n_chunks);
		if (res.has_usage) {
			r->in_tokens = res.prompt_tokens;
			r->has_cached = res.has_cached;
			r->cached_tokens = res.cached_tokens;
		}
		if (r->n_chunks == 0)
			lg_rec_chunk(r, r->t_end);
		epmoe_completion_fini(&res);
	} else {
		const struct epmoe_error *e = epmoe_client_error(c);
		char key[LG_ERR_KIND_LEN];
		if (e->status != 0)
			snprintf(key, sizeof(key), "http_%d", e->status);
		else
			snprintf(key, sizeof(key), "%s", rc == EPMOE_ETIMEDOUT ?
			        "timeout" : rc == EPMOE_EPROTO ? "protocol" : "transport");
		lg_rec_fail(r, key, e->message);
	}
	finish(d, r);
}

static void *
nng_thread(void *arg)
{
	struct drv *d = arg;
	const struct lg_drive_cfg *cfg = d->cfg;
	struct epmoe_client *c = NULL;
	struct epmoe_client_opts o = { 0 };
	char err[256] = "";
	long i;

	o.timeout_ms = (uint32_t)(cfg->timeout_s * 1000);
	o.api_key = cfg->api_key;
	if (epmoe_client_new(&c, cfg->server, &o, err, sizeof(err)) != 0)
		c = NULL;
	while ((i = atomic_fetch_add(&d->next, 1)) < cfg->n) {
		/* wait for the send time: bounded by the duration */
		for (;;) {
			double t = rel_now(d), until = cfg->sched[i] - t;
			if (t >= cfg->duration_s || until <= 0)
				break;
			usleep((useconds_t)(fmin(until, 0.1) * 1e6));
		}
		if (rel_now(d) >= cfg->duration_s)
			break;
		if (c == NULL) {
			struct lg_rec *r = &d->recs[i];
			r->started = 1;
			r->t_sched = cfg->sched[i];
			r->t0 = r->t_end = rel_now(d);
			atomic_fetch_add(&d->n_started, 1);
			lg_rec_fail(r, "transport", err[0] ? err : "cannot connect");
			finish(d, r);
			continue;
		}
		nng_one(d, c, i);
	}
	epmoe_client_free(c);
	atomic_fetch_sub(&d->n_alive, 1);
	return NULL;
}

static int
run_nng(struct drv *d)
{
	const struct lg_drive_cfg *cfg = d->cfg;
	long nt = cfg->max_inflight < cfg->n ? cfg->max_inflight : cfg->n, k = 0;
	pthread_t *th;
	int rc = 0;

	if (nt > LG_MAX_INFLIGHT_NNG)
		nt = LG_MAX_INFLIGHT_NNG;
	if ((th = calloc((size_t)nt, sizeof(*th))) == NULL)
		return EPMOE_ENOMEM;
	for (; k < nt; k++) {
		atomic_fetch_add(&d->n_alive, 1);
		if (pthread_create(&th[k], NULL, nng_thread, d) != 0) {
			atomic_fetch_sub(&d->n_alive, 1);
			if (k == 0)
				rc = EPMOE_ENOMEM;
			break;
		}
	}
	/* the threads end by themselves: by count, by the duration, and each
	 * request by its client timeout */
	while (atomic_load(&d->n_alive) > 0) {
		report_progress(d, atomic_load(&d->n_started) -
		        atomic_load(&d->n_done), 0);
		usleep(50000);
	}
	for (long i = 0; i < k; i++)
		pthread_join(th[i], NULL);
	free(th);
	return rc;
}

/* ---- /v1/stats sampler ---- */

struct sampler {
	const char *url;
	const char *auth;           /* header line or NULL */
	double interval, t_start;
	atomic_int stop;
	cJSON *samples;
	int unavailable;
};

static size_t
s_write(char *buf, size_t size, size_t nmemb, void *ud)
{
	struct { char *p; size_t len; } *b = ud;
	size_t n = size * nmemb;
	char *nb;

	if (b->len + n > (32u << 20) || (nb = realloc(b->p, b->len + n + 1)) == NULL)
		return 0;
	b->p = nb;
	memcpy(b->p + b->len, buf, n);
	b->len += n;
	b->p[b->len] = '\0';
	return n;
}

static double
jnum(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* The few fields of /v1/stats the load plots use. */
static cJSON *
sample_of(const cJSON *st, double t)
{
	const cJSON *sch = cJSON_GetObjectItemCaseSensitive(st, "scheduler");
	const cJSON *ws = cJSON_GetObjectItemCaseSensitive(st, "workers");
	const cJSON *wl = cJSON_GetObjectItemCaseSensitive(ws, "workers"), *w;
	cJSON *o = cJSON_CreateObject(), *arr;

	if (o == NULL)
		return NULL;
	cJSON_AddNumberToObject(o, "t", t);
	cJSON_AddNumberToObject(o, "running", jnum(sch, "running"));
	cJSON_AddNumberToObject(o, "waiting", jnum(sch, "waiting"));
	cJSON_AddNumberToObject(o, "requests_total", jnum(sch, "requests_total"));
	cJSON_AddNumberToObject(o, "generated_tokens", jnum(sch, "generated_tokens"));
	arr = cJSON_AddArrayToObject(o, "workers");
	cJSON_ArrayForEach(w, wl) {
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(w, "id");
		const cJSON *alive = cJSON_GetObjectItemCaseSensitive(w, "alive");
		cJSON *x = cJSON_CreateObject();
		if (x == NULL || arr == NULL) {
			cJSON_Delete(x);
			break;
		}
		cJSON_AddNumberToObject(x, "index", jnum(w, "index"));
		cJSON_AddStringToObject(x, "id", cJSON_IsString(id) ? id->valuestring : "");
		cJSON_AddNumberToObject(x, "tokens", jnum(w, "tokens"));
		cJSON_AddNumberToObject(x, "batches", jnum(w, "batches"));
		cJSON_AddNumberToObject(x, "latency_mean_us", jnum(w, "latency_mean_us"));
		cJSON_AddBoolToObject(x, "alive", cJSON_IsTrue(alive));
		cJSON_AddItemToArray(arr, x);
	}
	return o;
}

static void *
sampler_thread(void *arg)
{
	struct sampler *s = arg;
	CURL *e = curl_easy_init();
	struct curl_slist *hdrs = NULL;
	size_t n = 0;

	if (e == NULL) {
		s->unavailable = 1;
		return NULL;
	}
	if (s->auth != NULL && (hdrs = curl_slist_append(NULL, s->auth)) == NULL) {
		curl_easy_cleanup(e);
		s->unavailable = 1;
		return NULL;
	}
	curl_easy_setopt(e, CURLOPT_URL, s->url);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 5000L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_write);
	while (!atomic_load(&s->stop) && n < LG_MAX_SAMPLES) {
		struct { char *p; size_t len; } b = { NULL, 0 };
		double t0 = clock_now();
		long status = 0;
		cJSON *st, *x;

		curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
		if (curl_easy_perform(e) == CURLE_OK)
			curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
		st = status == 200 && b.p ? cJSON_ParseWithLength(b.p, b.len) : NULL;
		free(b.p);
		if (st == NULL || !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(st,
		        "scheduler"))) {
			cJSON_Delete(st);
			if (n == 0) { /* not an epmoe router: give up at once */
				s->unavailable = 1;
				break;
			}
		} else {
			if ((x = sample_of(st, t0 - s->t_start)) != NULL)
				cJSON_AddItemToArray(s->samples, x);
			cJSON_Delete(st);
			n++;
		}
		/* sleep the rest of the interval, waking for the stop flag */
		while (!atomic_load(&s->stop) && clock_now() - t0 < s->interval)
			usleep(20000);
	}
	curl_easy_cleanup(e);
	curl_slist_free_all(hdrs);
	return NULL;
}

int
lg_drive(const struct lg_drive_cfg *cfg, struct lg_rec *recs,
        cJSON **samples)
{
	struct drv d;
	struct sampler s;
	pthread_t sth;
	int rc, sampling = 0;

	if (cfg->n <= 0 || cfg->max_inflight <= 0 || cfg->data == NULL ||
	        cfg->data->n == 0 || cfg->sched == NULL || !(cfg->timeout_s > 0) ||
	        !(cfg->duration_s > 0))
		return EPMOE_EINVAL;
	if (cfg->tr == EPMOE_TRANSPORT_HTTP &&
	        cfg->max_inflight > LG_MAX_INFLIGHT_HTTP)
		return EPMOE_EINVAL;
	memset(&d, 0, sizeof(d));
	d.cfg = cfg;
	d.recs = recs;
	d.last_progress = -1;
	if (cfg->api_key != NULL && cfg->api_key[0] != '\0') {
		size_t n = strlen(cfg->api_key) + sizeof("Authorization: Bearer ");

		if ((d.auth = malloc(n)) == NULL)
			return EPMOE_ENOMEM;
		snprintf(d.auth, n, "Authorization: Bearer %s", cfg->api_key);
	}
	memset(&s, 0, sizeof(s));
	if (samples != NULL)
		*samples = NULL;
	d.t_start = clock_now();
	if (cfg->stats_url != NULL && samples != NULL) {
		s.url = cfg->stats_url;
		s.auth = d.auth;
		s.interval = cfg->stats_interval_s > 0.05 ? cfg->stats_interval_s : 0.05;
		s.t_start = d.t_start;
		if ((s.samples = cJSON_CreateArray()) == NULL) {
			free(d.auth);
			return EPMOE_ENOMEM;
		}
		if (pthread_create(&sth, NULL, sampler_thread, &s) != 0) {
			cJSON_Delete(s.samples);
			free(d.auth);
			return EPMOE_ENOMEM;
		}
		sampling = 1;
	}
	if (cfg->tr == EPMOE_TRANSPORT_HTTP)
		rc = run_http(&d);
	else
		rc = run_nng(&d);
	report_progress(&d, 0, 1);
	if (sampling) {
		atomic_store(&s.stop, 1);
		pthread_join(sth, NULL);
		if (s.unavailable) {
			cJSON_Delete(s.samples);
			s.samples = NULL;
		}
		*samples = s.samples;
	}
	free(d.auth);
	return rc;
}
