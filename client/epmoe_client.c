/* The client library's core: the client object, errors, URLs, parameter
 * checks, the accumulator both transports feed, and the API, which hands
 * each call to the transport of the client's URL (client_http.c:
 * libcurl, one easy handle per client, reused so the connection is kept
 * alive; client_nng.c: one REQ socket per client).  See epmoe_client.h.
 *
 * Both transports feed the same accumulator (struct cl_acc) so a
 * completion looks the same whichever way it came: pieces to the caller's
 * callback, the whole text, finish reason, usage and client-side timings.
 * Every wait is bounded by the client's timeouts; every loop by a
 * deadline.  Nothing here prints.
 */
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <curl/curl.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "cl_oai.h"
#include "client_int.h"
#include "clock.h"
#include "epmoe_client.h"
#include "err.h"
#include "sse.h"
#include "wire.h"
#include "wire_nng.h"

/* Records the failure and returns code. */
int
cl_set_err(struct epmoe_client *c, int code, int status, const char *fmt, ...)
{
	va_list ap;

	c->err.code = code;
	c->err.status = status;
	c->err.retry_after_ms = 0;
	va_start(ap, fmt);
	vsnprintf(c->err.message, sizeof(c->err.message), fmt, ap);
	va_end(ap);
	return code;
}

const struct epmoe_error *
epmoe_client_error(const struct epmoe_client *c)
{
	return &c->err;
}

enum epmoe_transport
epmoe_client_transport(const struct epmoe_client *c)
{
	return c->tr;
}

int
epmoe_status_to_err(int s)
{
	if (s >= 200 && s < 300)
		return 0;
	switch (s) {
	case 404: return EPMOE_ENOENT;
	case 408:
	case 504: return EPMOE_ETIMEDOUT;
	case 413: return EPMOE_ERANGE;
	case 429: return EPMOE_EBUSY;
	case 501: return EPMOE_ENOTSUP;
	case 503: return EPMOE_EUNAVAIL;
	}
	if (s >= 400 && s < 500)
		return EPMOE_EINVAL;
	if (s >= 500 && s < 600)
		return EPMOE_EINTERNAL;
	return EPMOE_EPROTO;
}

/* ---- URLs ---- */

static const struct {
	const char *prefix;
	enum epmoe_transport tr;
} schemes[] = {
	{ "http://", EPMOE_TRANSPORT_HTTP },
	{ "https://", EPMOE_TRANSPORT_HTTP },
	{ "tcp://", EPMOE_TRANSPORT_NNG },
	{ "tcp4://", EPMOE_TRANSPORT_NNG },
	{ "tcp6://", EPMOE_TRANSPORT_NNG },
	{ "ipc://", EPMOE_TRANSPORT_NNG },
	{ "inproc://", EPMOE_TRANSPORT_NNG },
	{ "tls+tcp://", EPMOE_TRANSPORT_NNG },
	{ "tls+tcp4://", EPMOE_TRANSPORT_NNG },
	{ "tls+tcp6://", EPMOE_TRANSPORT_NNG },
};

int
epmoe_url_transport(const char *url, enum epmoe_transport *out)
{
	if (url == NULL)
		return EPMOE_EINVAL;
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		size_t n = strlen(schemes[i].prefix);
		if (strncasecmp(url, schemes[i].prefix, n) != 0)
			continue;
		/* something must follow, and not a blank */
		if (url[n] == '\0' || isspace((unsigned char)url[n]))
			return EPMOE_EINVAL;
		for (const char *s = url + n; *s; s++)
			if (isspace((unsigned char)*s) || iscntrl((unsigned char)*s))
				return EPMOE_EINVAL;
		*out = schemes[i].tr;
		return 0;
	}
	return EPMOE_EINVAL;
}

/* ---- lifecycle ---- */

int
epmoe_client_new(struct epmoe_client **out, const char *url,
        const struct epmoe_client_opts *opts, char *errmsg, size_t errmsg_size)
{
	struct epmoe_client *c;
	enum epmoe_transport tr;
	int rc;

	if (epmoe_url_transport(url, &tr) != 0) {
		epmoe_set_err(errmsg, errmsg_size,
		        "bad server URL '%s': expected http://HOST:PORT or an NNG "
		        "URL (tcp://HOST:PORT, ipc://PATH, inproc://NAME, "
		        "tls+tcp://HOST:PORT)", url ? url : "(null)");
		return EPMOE_EINVAL;
	}
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return EPMOE_ENOMEM;
	c->tr = tr;
	if (opts)
		c->o = *opts;
	if (c->o.connect_timeout_ms == 0)
		c->o.connect_timeout_ms = 5000;
	if (c->o.timeout_ms == 0)
		c->o.timeout_ms = 600000;
	if (c->o.poll_wait_ms == 0)
		c->o.poll_wait_ms = 1000;
	if ((c->url = strdup(url)) == NULL) {
		rc = EPMOE_ENOMEM;
		goto fail;
	}
	rc = tr == EPMOE_TRANSPORT_HTTP ? cl_http_open(c, url, errmsg, errmsg_size) :
	        cl_nng_open(c, url, errmsg, errmsg_size);
	if (rc != 0)
		goto fail;
	*out = c;
	return 0;
fail:
	epmoe_client_free(c);
	return rc;
}

void
epmoe_client_free(struct epmoe_client *c)
{
	if (c == NULL)
		return;
	cl_http_close(c);
	cl_nng_close(c);
	free(c->url);
	free(c);
}

void
epmoe_strv_free(char **v, size_t n)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void
epmoe_completion_fini(struct epmoe_completion *r)
{
	if (r == NULL)
		return;
	free(r->id);
	free(r->model);
	free(r->text);
	free(r->tokens);
	memset(r, 0, sizeof(*r));
}

/* ---- parameters ---- */

void
epmoe_gen_params_init(struct epmoe_gen_params *p)
{
	memset(p, 0, sizeof(*p));
	p->max_tokens = -1;
	p->temperature = NAN;
	p->top_p = NAN;
	p->top_k = -1;
	p->min_p = NAN;
}

int
epmoe_gen_params_check(const struct epmoe_gen_params *p, char *why,
        size_t why_size)
{
	const char *msg = NULL;

	if (p->max_tokens < -1)
		msg = "max_tokens must be >= 0 (or -1: the server's default)";
	else if (!isnan(p->temperature) &&
	        !(p->temperature >= 0 && p->temperature <= 2))
		msg = "temperature must be in [0, 2]";
	else if (!isnan(p->top_p) && !(p->top_p > 0 && p->top_p <= 1))
		msg = "top_p must be in (0, 1]";
	else if (p->top_k < -1)
		msg = "top_k must be >= 0 (or -1: the server's default)";
	else if (!isnan(p->min_p) && !(p->min_p >= 0 && p->min_p <= 1))
		msg = "min_p must be in [0, 1]";
	else if (p->n_stop > EPMOE_MAX_STOP)
		msg = "at most 4 stop strings";
	else if (p->n_stop > 0 && p->stop == NULL)
		msg = "stop strings missing";
	else if (p->routing != NULL && p->routing[0] == '\0')
		msg = "routing must not be empty";
	for (size_t i = 0; msg == NULL && i < p->n_stop; i++)
		if (p->stop[i] == NULL || p->stop[i][0] == '\0')
			msg = "stop strings must not be empty";
	if (msg == NULL)
		return 0;
	epmoe_set_err(why, why_size, "%s", msg);
	return EPMOE_EINVAL;
}

/* ---- the accumulator both transports feed ---- */

void
cl_acc_init(struct cl_acc *a, struct epmoe_client *c, epmoe_chunk_fn cb, void *ud)
{
	memset(a, 0, sizeof(*a));
	a->c = c;
	a->cb = cb;
	a->ud = ud;
	a->t0 = clock_now();
}

static int
acc_append(struct cl_acc *a, const char *text, size_t len, const uint32_t *toks,
        size_t n)
{
	if (a->r.text_len + len + 1 > a->text_cap) {
		size_t cap = a->text_cap ? a->text_cap : 256;
		char *nb;
		while (cap < a->r.text_len + len + 1)
			cap *= 2;
		if ((nb = realloc(a->r.text, cap)) == NULL)
			return EPMOE_ENOMEM;
		a->r.text = nb;
		a->text_cap = cap;
	}
	if (len > 0)
		memcpy(a->r.text + a->r.text_len, text, len);
	a->r.text_len += len;
	a->r.text[a->r.text_len] = '\0';
	if (n > 0) {
		if (a->r.n_tokens + n > a->tok_cap) {
			size_t cap = a->tok_cap ? a->tok_cap : 64;
			uint32_t *nt;
			while (cap < a->r.n_tokens + n)
				cap *= 2;
			if ((nt = realloc(a->r.tokens, cap * sizeof(*nt))) == NULL)
				return EPMOE_ENOMEM;
			a->r.tokens = nt;
			a->tok_cap = cap;
		}
		memcpy(a->r.tokens + a->r.n_tokens, toks, n * sizeof(*toks));
		a->r.n_tokens += n;
	}
	return 0;
}

/* New output: appends it, times it and hands it to the callback.
 * finish is NULL or "" while the completion goes on. */
int
cl_acc_add(struct cl_acc *a, const char *text, size_t len, const uint32_t *toks,
        size_t n, const char *finish)
{
	struct epmoe_chunk ch;
	int rc;

	if (finish != NULL && (finish[0] == '\0' || a->finished))
		finish = NULL;
	if ((rc = acc_append(a, text, len, toks, n)) != 0)
		return cl_set_err(a->c, rc, 0, "out of memory");
	if (len == 0 && n == 0 && finish == NULL)
		return 0;
	if (len > 0 || n > 0) {
		if (a->r.n_chunks == 0)
			a->r.ttft_s = clock_now() - a->t0;
		a->r.n_chunks++;
	}
	if (finish != NULL) {
		snprintf(a->r.finish_reason, sizeof(a->r.finish_reason), "%s",
		        finish);
		a->finished = 1;
	}
	if (a->cb == NULL)
		return 0;
	ch.text = len > 0 ? text : "";
	ch.text_len = len;
	ch.tokens = n > 0 ? toks : NULL;
	ch.n_tokens = n;
	ch.finish_reason = finish;
	if (a->cb(a->ud, &ch) != 0)
		return cl_set_err(a->c, EPMOE_ECANCELED, 0, "cancelled by the caller");
	return 0;
}

int
cl_acc_set_str(struct cl_acc *a, char **dst, const char *s)
{
	if (*dst != NULL || s == NULL || s[0] == '\0')
		return 0;
	if ((*dst = strdup(s)) == NULL)
		return cl_set_err(a->c, EPMOE_ENOMEM, 0, "out of memory");
	return 0;
}

/* Hands the finished result to the caller (or drops it). */
int
cl_acc_finish(struct cl_acc *a, struct epmoe_completion *out)
{
	int rc;

	if ((rc = acc_append(a, NULL, 0, NULL, 0)) != 0) { /* text != NULL */
		epmoe_completion_fini(&a->r);
		return cl_set_err(a->c, rc, 0, "out of memory");
	}
	a->r.total_s = clock_now() - a->t0;
	if (a->r.n_chunks == 0)
		a->r.ttft_s = a->r.total_s;
	if (out != NULL)
		*out = a->r;
	else
		epmoe_completion_fini(&a->r);
	return 0;
}

/* ---- HTTP ---- */

#define MAX_BODY (64u << 20) /* largest non-streamed response accepted */

/* "http://h:p/", "http://h:p/v1", "http://h:p/v1/" -> "http://h:p". */
static char *
http_base(const char *url)
{
	size_t n = strlen(url);
	char *b;

	while (n > 0 && url[n - 1] == '/')
		n--;
	if (n >= 3 && memcmp(url + n - 3, "/v1", 3) == 0) {
		n -= 3;
		while (n > 0 && url[n - 1] == '/')
			n--;
	}
	if ((b = malloc(n + 1)) == NULL)
		return NULL;
	memcpy(b, url, n);
	b[n] = '\0';
	return b;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void
curl_init_once(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int
cl_http_open(struct epmoe_client *c, const char *url, char *errmsg,
        size_t errmsg_size)
{
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_rc != CURLE_OK) {
		epmoe_set_err(errmsg, errmsg_size, "libcurl: %s",
		        curl_easy_strerror(curl_init_rc));
		return EPMOE_EIO;
	}
	if ((c->base = http_base(url)) == NULL ||
	        (c->curl = curl_easy_init()) == NULL)
		return EPMOE_ENOMEM;
	return 0;
}

void
cl_http_close(struct epmoe_client *c)
{
	if (c->curl)
		curl_easy_cleanup(c->curl);
	c->curl = NULL;
	free(c->base);
	free(c->model);
	c->base = c->model = NULL;
}

struct xfer {
	struct epmoe_client *c;
	struct cl_acc *acc;        /* streaming completion, else NULL */
	long status;
	int mode;               /* 0: nothing yet, 1: body, 2: SSE */
	char *body;
	size_t len, cap;
	char ctype[64];
	uint32_t retry_after_ms;
	struct sse_parser sse;
	int rc;                 /* failure found inside a callback */
};

static size_t
on_header(char *buf, size_t size, size_t nmemb, void *ud)
{
	struct xfer *x = ud;
	size_t n = size * nmemb, k;

	if (n >= 5 && strncasecmp(buf, "HTTP/", 5) == 0) {
		/* a new response (after a 100 Continue): forget the last one's */
		x->ctype[0] = '\0';
		x->retry_after_ms = 0;
	} else if (n > 13 && strncasecmp(buf, "Content-Type:", 13) == 0) {
		const char *v = buf + 13;
		while (v < buf + n && (*v == ' ' || *v == '\t'))
			v++;
		k = 0;
		while (v < buf + n && *v != '\r' && *v != '\n' &&
		        k + 1 < sizeof(x->ctype))
			x->ctype[k++] = (char)tolower((unsigned char)*v++);
		x->ctype[k] = '\0';
	} else if (n > 12 && strncasecmp(buf, "Retry-After:", 12) == 0) {
		char tmp[32];
		long v;
		k = n - 12 < sizeof(tmp) - 1 ? n - 12 : sizeof(tmp) - 1;
		memcpy(tmp, buf + 12, k);
		tmp[k] = '\0';
		/* delta-seconds only; an HTTP date is not worth parsing here */
		if (sscanf(tmp, "%ld", &v) == 1 && v >= 0 && v < 86400)
			x->retry_after_ms = (uint32_t)v * 1000;
	}
	return n;
}

static int on_sse_event(void *ud, const char *type, const char *data,
        size_t len);

static size_t
on_write(char *buf, size_t size, size_t nmemb, void *ud)
{
	struct xfer *x = ud;
	size_t n = size * nmemb;
	int rc;

	if (x->mode == 0) {
		curl_easy_getinfo(x->c->curl, CURLINFO_RESPONSE_CODE, &x->status);
		x->mode = (x->acc != NULL && x->status / 100 == 2 &&
		        strncmp(x->ctype, "text/event-stream", 17) == 0) ? 2 : 1;
	}
	if (x->mode == 2) {
		if ((rc = sse_feed(&x->sse, buf, n)) != 0) {
			if (x->rc == 0)
				x->rc = cl_set_err(x->c, rc == EPMOE_ERANGE ? EPMOE_EPROTO : rc,
				        0, "bad event stream: %s", epmoe_strerror(rc));
			return 0;
		}
		return n;
	}
	if (x->len + n + 1 > x->cap) {
		size_t cap = x->cap ? x->cap : 4096;
		char *nb;
		while (cap < x->len + n + 1)
			cap *= 2;
		if (cap > MAX_BODY || (nb = realloc(x->body, cap)) == NULL) {
			x->rc = cl_set_err(x->c, cap > MAX_BODY ? EPMOE_ERANGE : EPMOE_ENOMEM,
			        0, "response body too large");
			return 0;
		}
		x->body = nb;
		x->cap = cap;
	}
	memcpy(x->body + x->len, buf, n);
	x->len += n;
	x->body[x->len] = '\0';
	return n;
}

/* One SSE event of a streamed completion. */
static int
on_sse_event(void *ud, const char *type, const char *data, size_t len)
{
	struct xfer *x = ud;
	struct cl_acc *a = x->acc;
	struct cl_oai_delta d;
	int rc;

	if (a->done || strcmp(type, "message") != 0)
		return 0;
	if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
		a->done = 1;
		return 0;
	}
	if ((rc = cl_oai_parse(data, len, &d)) != 0)
		return x->rc = cl_set_err(x->c, rc, 0,
		        "bad stream chunk from the server: %.100s", data);
	if (d.is_error) {
		x->rc = cl_set_err(x->c, EPMOE_EINTERNAL, 500, "%s", d.error);
		cl_oai_delta_fini(&d);
		return x->rc;
	}
	if ((rc = cl_acc_set_str(a, &a->r.id, d.id)) != 0 ||
	        (rc = cl_acc_set_str(a, &a->r.model, d.model)) != 0) {
		cl_oai_delta_fini(&d);
		return x->rc = rc;
	}
	if (d.has_usage) {
		a->r.has_usage = 1;
		a->r.prompt_tokens = d.prompt_tokens;
		a->r.completion_tokens = d.completion_tokens;
	}
	rc = cl_acc_add(a, d.text, d.text_len, NULL, 0, d.finish_reason);
	cl_oai_delta_fini(&d);
	if (rc != 0)
		x->rc = rc;
	return rc;
}

static void
xfer_fini(struct xfer *x)
{
	sse_parser_fini(&x->sse);
	free(x->body);
}

/* Runs one request: method "GET" or "POST" (body: JSON).  On return 0
 * x->status and x->body (mode 1) or the accumulator (mode 2) hold the
 * answer, whatever its status; a transport failure is an error. */
static int
http_perform(struct epmoe_client *c, const char *path, const char *body,
        struct xfer *x)
{
	struct curl_slist *hdrs = NULL, *h;
	char url[2048], errbuf[CURL_ERROR_SIZE] = "";
	CURLcode res;
	CURL *e = c->curl;
	int rc = 0;

	x->c = c;
	if (x->acc != NULL)
		sse_parser_init(&x->sse, on_sse_event, x);
	if ((size_t)snprintf(url, sizeof(url), "%s%s", c->base, path) >= sizeof(url))
		return cl_set_err(c, EPMOE_EINVAL, 0, "server URL too long");
	curl_easy_reset(e);
	if (body != NULL) {
		if ((h = curl_slist_append(hdrs, "Content-Type: application/json")) == NULL)
			goto nomem;
		hdrs = h;
		/* no "Expect: 100-continue" round trip for large prompts */
		if ((h = curl_slist_append(hdrs, "Expect:")) == NULL)
			goto nomem;
		hdrs = h;
	}
	if ((h = curl_slist_append(hdrs, x->acc ? "Accept: text/event-stream" :
	        "Accept: application/json")) == NULL)
		goto nomem;
	hdrs = h;
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->o.connect_timeout_ms);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->o.timeout_ms);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "epmoe-client/1");
	if (body != NULL) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
		        (curl_off_t)strlen(body));
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
	}
	res = curl_easy_perform(e);
	if (x->rc != 0) {
		rc = x->rc; /* the callback's failure (set_err done) */
	} else if (res == CURLE_OPERATION_TIMEDOUT) {
		rc = cl_set_err(c, EPMOE_ETIMEDOUT, 0, "%s: %s", url,
		        errbuf[0] ? errbuf : curl_easy_strerror(res));
	} else if (res != CURLE_OK) {
		rc = cl_set_err(c, res == CURLE_OUT_OF_MEMORY ? EPMOE_ENOMEM : EPMOE_EIO,
		        0, "%s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(res));
	} else {
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &x->status);
	}
	/* the easy handle must not keep pointers into this frame */
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
	curl_slist_free_all(hdrs);
	return rc;
nomem:
	curl_slist_free_all(hdrs);
	return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
}

/* A non-2xx answer becomes the error; returns its code or 0. */
static int
http_status_err(struct epmoe_client *c, struct xfer *x)
{
	int code = epmoe_status_to_err((int)x->status);

	if (code == 0)
		return 0;
	c->err.code = code;
	c->err.status = (int)x->status;
	c->err.retry_after_ms = x->retry_after_ms;
	cl_oai_error_message(x->body, x->len, (int)x->status, c->err.message,
	        sizeof(c->err.message));
	return code;
}

/* GET (body NULL) or POST path and parse the JSON answer into *json. */
static int
http_json(struct epmoe_client *c, const char *path, const char *body,
        cJSON **json, long *status)
{
	struct xfer x;
	int rc;

	memset(&x, 0, sizeof(x));
	if ((rc = http_perform(c, path, body, &x)) != 0)
		goto out;
	if (status != NULL)
		*status = x.status;
	if ((rc = http_status_err(c, &x)) != 0 &&
	        !(status != NULL && x.status == 503))
		goto out;
	rc = 0;
	if ((*json = cJSON_ParseWithLength(x.body ? x.body : "", x.len)) == NULL)
		rc = cl_set_err(c, EPMOE_EPROTO, (int)x.status,
		        "%s: the answer is not JSON", path);
out:
	xfer_fini(&x);
	return rc;
}

/* The model to name in a request: the caller's, else the server's first
 * (asked once per client; none when that fails: the server decides). */
static const char *
http_model(struct epmoe_client *c, const struct epmoe_gen_params *p)
{
	char **ids;
	size_t n;

	if (p->model != NULL)
		return p->model;
	if (!c->model_asked) {
		c->model_asked = 1;
		if (epmoe_models(c, &ids, &n) == 0) {
			if (n > 0)
				c->model = strdup(ids[0]);
			epmoe_strv_free(ids, n);
		}
	}
	return c->model;
}

int
cl_http_completion(struct epmoe_client *c, const char *prompt,
        const struct epmoe_chat_msg *msgs, size_t n_msgs,
        const struct epmoe_gen_params *p, struct cl_acc *a)
{
	struct xfer x;
	struct cl_oai_delta d;
	char *body = NULL;
	int rc;

	memset(&x, 0, sizeof(x));
	rc = cl_oai_request(http_model(c, p), prompt, msgs, n_msgs, p, &body);
	if (rc != 0)
		return cl_set_err(c, rc, 0, "cannot build the request: %s",
		        epmoe_strerror(rc));
	x.acc = p->stream ? a : NULL;
	if ((rc = http_perform(c, msgs ? "/v1/chat/completions" :
	        "/v1/completions", body, &x)) != 0)
		goto out;
	if ((rc = http_status_err(c, &x)) != 0)
		goto out;
	if (x.mode == 2) {
		if (!a->done && !a->finished)
			rc = cl_set_err(c, EPMOE_EIO, (int)x.status,
			        "the stream ended before the completion did");
		goto out;
	}
	/* a whole JSON answer (asked for, or the server would not stream) */
	if ((rc = cl_oai_parse(x.body ? x.body : "", x.len, &d)) != 0) {
		rc = cl_set_err(c, rc, (int)x.status,
		        "the server's answer is not a completion");
		goto out;
	}
	if (d.is_error) {
		rc = cl_set_err(c, EPMOE_EINTERNAL, (int)x.status, "%s", d.error);
	} else if ((rc = cl_acc_set_str(a, &a->r.id, d.id)) == 0 &&
	        (rc = cl_acc_set_str(a, &a->r.model, d.model)) == 0) {
		if (d.has_usage) {
			a->r.has_usage = 1;
			a->r.prompt_tokens = d.prompt_tokens;
			a->r.completion_tokens = d.completion_tokens;
		}
		rc = cl_acc_add(a, d.text, d.text_len, NULL, 0,
		        d.finish_reason[0] ? d.finish_reason : "stop");
	}
	cl_oai_delta_fini(&d);
out:
	xfer_fini(&x);
	free(body);
	return rc;
}

int
cl_http_models(struct epmoe_client *c, char ***ids, size_t *n_ids)
{
	struct xfer x;
	int rc;

	memset(&x, 0, sizeof(x));
	if ((rc = http_perform(c, "/v1/models", NULL, &x)) == 0 &&
	        (rc = http_status_err(c, &x)) == 0 &&
	        (rc = cl_oai_parse_models(x.body ? x.body : "", x.len, ids,
	                n_ids)) != 0)
		cl_set_err(c, rc, (int)x.status, "/v1/models: unexpected answer");
	xfer_fini(&x);
	return rc;
}

int
cl_http_health(struct epmoe_client *c, struct epmoe_health *h)
{
	cJSON *j = NULL;
	const cJSON *s;
	long status = 0;
	int rc;

	if ((rc = http_json(c, "/health", NULL, &j, &status)) != 0)
		return rc;
	h->ok = status == 200;
	s = cJSON_GetObjectItemCaseSensitive(j, "status");
	snprintf(h->status, sizeof(h->status), "%s", cJSON_IsString(s) ?
	        s->valuestring : h->ok ? "ok" : "unavailable");
	cJSON_Delete(j);
	return 0;
}

int
cl_http_tokenize(struct epmoe_client *c, const char *text, int add_special,
        uint32_t **tokens, size_t *n_tokens)
{
	cJSON *req, *j = NULL;
	const cJSON *a, *t;
	uint32_t *v = NULL;
	size_t n = 0;
	char *body;
	int rc;

	if ((req = cJSON_CreateObject()) == NULL ||
	        !cJSON_AddStringToObject(req, "prompt", text) ||
	        !cJSON_AddBoolToObject(req, "add_special", add_special != 0) ||
	        (body = cJSON_PrintUnformatted(req)) == NULL) {
		cJSON_Delete(req);
		return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
	}
	cJSON_Delete(req);
	rc = http_json(c, "/tokenize", body, &j, NULL);
	free(body);
	if (rc != 0)
		return rc;
	a = cJSON_GetObjectItemCaseSensitive(j, "tokens");
	if (!cJSON_IsArray(a)) {
		cJSON_Delete(j);
		return cl_set_err(c, EPMOE_EPROTO, 0, "/tokenize: no token list");
	}
	if (cJSON_GetArraySize(a) > 0 &&
	        (v = malloc((size_t)cJSON_GetArraySize(a) * sizeof(*v))) == NULL) {
		cJSON_Delete(j);
		return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
	}
	cJSON_ArrayForEach(t, a) {
		if (!cJSON_IsNumber(t) || !(t->valuedouble >= 0) ||
		        t->valuedouble > 4294967295.0) {
			free(v);
			cJSON_Delete(j);
			return cl_set_err(c, EPMOE_EPROTO, 0, "/tokenize: bad token id");
		}
		v[n++] = (uint32_t)t->valuedouble;
	}
	cJSON_Delete(j);
	*tokens = v;
	*n_tokens = n;
	return 0;
}

int
cl_http_detokenize(struct epmoe_client *c, const uint32_t *tokens,
        size_t n_tokens, char **text)
{
	cJSON *req, *a, *j = NULL;
	const cJSON *p;
	char *body, *s;
	int rc;

	if ((req = cJSON_CreateObject()) == NULL ||
	        (a = cJSON_AddArrayToObject(req, "tokens")) == NULL)
		goto nomem_req;
	for (size_t i = 0; i < n_tokens; i++) {
		cJSON *t = cJSON_CreateNumber(tokens[i]);
		if (t == NULL || !cJSON_AddItemToArray(a, t)) {
			cJSON_Delete(t);
			goto nomem_req;
		}
	}
	if ((body = cJSON_PrintUnformatted(req)) == NULL)
		goto nomem_req;
	cJSON_Delete(req);
	rc = http_json(c, "/detokenize", body, &j, NULL);
	free(body);
	if (rc != 0)
		return rc;
	p = cJSON_GetObjectItemCaseSensitive(j, "prompt");
	if (!cJSON_IsString(p)) {
		cJSON_Delete(j);
		return cl_set_err(c, EPMOE_EPROTO, 0, "/detokenize: no text");
	}
	s = strdup(p->valuestring);
	cJSON_Delete(j);
	if (s == NULL)
		return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
	*text = s;
	return 0;
nomem_req:
	cJSON_Delete(req);
	return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
}

/* ---- NNG ---- */

#define CANCEL_TIMEOUT_MS 1000

/* The HTTP status the router's HTTP API would give for an NNG status. */
static int
wire_status_http(int st)
{
	switch (st) {
	case EPMOE__STATUS__STATUS_OK: return 200;
	case EPMOE__STATUS__STATUS_INVALID:
	case EPMOE__STATUS__STATUS_PROTOCOL:
	case EPMOE__STATUS__STATUS_UNSUPPORTED: return 400;
	case EPMOE__STATUS__STATUS_NOT_FOUND: return 404;
	case EPMOE__STATUS__STATUS_STALE_PLACEMENT: return 409;
	case EPMOE__STATUS__STATUS_BUSY: return 429;
	case EPMOE__STATUS__STATUS_CANCELLED: return 499;
	case EPMOE__STATUS__STATUS_UNAVAILABLE: return 503;
	case EPMOE__STATUS__STATUS_TIMEOUT: return 504;
	}
	return 500;
}

int
cl_nng_open(struct epmoe_client *c, const char *url, char *errmsg, size_t size)
{
	int rv;

	if ((rv = nng_req0_open(&c->sock)) != 0) {
		epmoe_set_err(errmsg, size, "cannot open an NNG REQ socket: %s",
		        nng_strerror(rv));
		return wire_nng_err(rv);
	}
	c->sock_open = 1;
	/* A completion can take long: never let REQ resend it behind our
	 * back (the whole timeout plus a margin is "never" here). */
	nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME,
	        (nng_duration)c->o.timeout_ms + 60000);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, 50);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, 1000);
	nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO,
	        (nng_duration)c->o.connect_timeout_ms);
	/* a synchronous dial: "connection refused" now, not a timeout later */
	if ((rv = nng_dial(c->sock, url, NULL, 0)) != 0) {
		epmoe_set_err(errmsg, size, "cannot connect to %s: %s", url,
		        nng_strerror(rv));
		return rv == NNG_ENOMEM ? EPMOE_ENOMEM :
		        rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP ? EPMOE_EINVAL :
		        EPMOE_EIO;
	}
	return 0;
}

void
cl_nng_close(struct epmoe_client *c)
{
	if (c->sock_open)
		nng_close(c->sock);
	c->sock_open = 0;
}

/* Sends msg and waits up to timeout_ms for the reply.  An ErrorReply
 * becomes the error.  On success *out is the caller's
 * (epmoe__client_reply__free_unpacked). */
static int
nng_call(struct epmoe_client *c, Epmoe__ClientMsg *msg,
        Epmoe__ClientReply **out, uint32_t timeout_ms)
{
	ProtobufCMessage *hdr;
	Epmoe__ClientReply *rep;
	const float *rows;
	size_t n_floats;
	nng_msg *m;
	int rv, rc;

	msg->version = EPMOE_PROTO_VERSION;
	if ((rc = wire_nng_pack(&m, WIRE_CLIENT, &msg->base, NULL, 0)) != 0)
		return cl_set_err(c, rc, 0, "cannot pack the request: %s",
		        wire_errmsg());
	nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, (nng_duration)timeout_ms);
	if ((rv = nng_sendmsg(c->sock, m, 0)) != 0) {
		nng_msg_free(m);
		return cl_set_err(c, rv == NNG_ETIMEDOUT ? EPMOE_ETIMEDOUT : EPMOE_EIO,
		        0, "%s: cannot send: %s", c->url, nng_strerror(rv));
	}
	if ((rv = nng_recvmsg(c->sock, &m, 0)) != 0) {
		if (rv == NNG_ETIMEDOUT)
			return cl_set_err(c, EPMOE_ETIMEDOUT, 0,
			        "%s: no reply within %u ms", c->url, timeout_ms);
		return cl_set_err(c, EPMOE_EIO, 0, "%s: %s", c->url, nng_strerror(rv));
	}
	rc = wire_nng_unpack(m, WIRE_CLIENT_REPLY, NULL, &hdr, &rows, &n_floats);
	if (rc != 0) {
		cl_set_err(c, rc == EPMOE_ENOMEM ? rc : EPMOE_EPROTO, 0,
		        "%s: bad reply: %s", c->url, wire_errmsg());
		nng_msg_free(m);
		return c->err.code;
	}
	nng_msg_free(m);
	rep = (Epmoe__ClientReply *)hdr;
	if (rep->msg_case == EPMOE__CLIENT_REPLY__MSG_ERROR) {
		const Epmoe__ErrorReply *er = rep->error;
		rc = wire_status_to_err(er->status);
		cl_set_err(c, rc ? rc : EPMOE_EPROTO, wire_status_http(er->status),
		        "%s", er->message[0] ? er->message : "error without a message");
		c->err.retry_after_ms = er->retry_after_ms;
		epmoe__client_reply__free_unpacked(rep, NULL);
		return c->err.code;
	}
	*out = rep;
	return 0;
}

/* A reply of the kind expected, else EPMOE_EPROTO (and rep is freed). */
static int
nng_expect(struct epmoe_client *c, Epmoe__ClientReply *rep, int kind)
{
	if ((int)rep->msg_case == kind)
		return 0;
	epmoe__client_reply__free_unpacked(rep, NULL);
	return cl_set_err(c, EPMOE_EPROTO, 0, "%s: reply of another kind (%d, "
	        "expected %d)", c->url, (int)rep->msg_case, kind);
}

static const char *
finish_name(int f)
{
	switch (f) {
	case EPMOE__FINISH_REASON__FINISH_STOP: return "stop";
	case EPMOE__FINISH_REASON__FINISH_LENGTH: return "length";
	case EPMOE__FINISH_REASON__FINISH_CANCELLED: return "cancelled";
	case EPMOE__FINISH_REASON__FINISH_ERROR: return "error";
	}
	return NULL;
}

/* Adds what a CompletionResponse holds beyond what a already has.  The
 * offsets make a repeated reply harmless; a gap is a protocol error. */
static int
nng_apply(struct epmoe_client *c, struct cl_acc *a,
        const Epmoe__CompletionResponse *cr)
{
	size_t skip, tskip, tlen;
	const char *finish;
	int rc;

	if (cr->status != EPMOE__STATUS__STATUS_OK || cr->error[0] != '\0') {
		rc = wire_status_to_err(cr->status);
		return cl_set_err(c, rc ? rc : EPMOE_EINTERNAL,
		        wire_status_http(cr->status), "%s",
		        cr->error[0] ? cr->error : "completion failed");
	}
	if (cr->token_offset > a->r.n_tokens || cr->text_offset > a->r.text_len)
		return cl_set_err(c, EPMOE_EPROTO, 0, "%s: reply skips output (offsets "
		        "%u/%llu, have %zu/%zu)", c->url, cr->token_offset,
		        (unsigned long long)cr->text_offset, a->r.n_tokens,
		        a->r.text_len);
	skip = a->r.n_tokens - cr->token_offset;
	tskip = a->r.text_len - (size_t)cr->text_offset;
	tlen = strlen(cr->text);
	if ((rc = cl_acc_set_str(a, &a->r.id, cr->request_id)) != 0 ||
	        (rc = cl_acc_set_str(a, &a->r.model, cr->model)) != 0)
		return rc;
	if (cr->usage != NULL && (cr->done ||
	        cr->finish_reason != EPMOE__FINISH_REASON__FINISH_NONE)) {
		a->r.has_usage = 1;
		a->r.prompt_tokens = cr->usage->prompt_tokens;
		a->r.completion_tokens = cr->usage->completion_tokens;
	}
	finish = finish_name(cr->finish_reason);
	if (finish == NULL && cr->done)
		finish = "stop";
	return cl_acc_add(a, tlen > tskip ? cr->text + tskip : NULL,
	        tlen > tskip ? tlen - tskip : 0,
	        cr->n_tokens > skip ? cr->tokens + skip : NULL,
	        cr->n_tokens > skip ? cr->n_tokens - skip : 0, finish);
}

static void
nng_cancel(struct epmoe_client *c, const char *id)
{
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__CancelRequest cr = EPMOE__CANCEL_REQUEST__INIT;
	Epmoe__ClientReply *rep;
	struct epmoe_error saved = c->err;

	cr.request_id = (char *)id;
	msg.msg_case = EPMOE__CLIENT_MSG__MSG_CANCEL;
	msg.cancel = &cr;
	if (nng_call(c, &msg, &rep, CANCEL_TIMEOUT_MS) == 0)
		epmoe__client_reply__free_unpacked(rep, NULL);
	c->err = saved; /* the cancel's own outcome does not matter */
}

static uint32_t
remaining_ms(double deadline)
{
	double r = (deadline - clock_now()) * 1000.0;

	return r <= 0 ? 0 : r > 4e9 ? 4000000000u : (uint32_t)r;
}

int
cl_nng_completion(struct epmoe_client *c, const char *prompt,
        const struct epmoe_chat_msg *msgs, size_t n_msgs,
        const struct epmoe_gen_params *p, struct cl_acc *a)
{
	static atomic_uint_fast64_t seq;
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__CompletionRequest req = EPMOE__COMPLETION_REQUEST__INIT;
	Epmoe__PollRequest poll = EPMOE__POLL_REQUEST__INIT;
	Epmoe__ChatMessage *cm = NULL, **cmp = NULL;
	Epmoe__ClientReply *rep = NULL;
	double deadline = a->t0 + c->o.timeout_ms / 1000.0;
	char rid[64], *id = NULL;
	int rc, done = 0;

	/* client-chosen id, unique enough across processes and threads */
	snprintf(rid, sizeof(rid), "cl-%x-%llx-%llx", (unsigned)getpid(),
	        (unsigned long long)(a->t0 * 1e6),
	        (unsigned long long)atomic_fetch_add(&seq, 1));
	req.request_id = rid;
	req.model = (char *)(p->model ? p->model : "");
	if (msgs != NULL) {
		cm = calloc(n_msgs, sizeof(*cm));
		cmp = calloc(n_msgs, sizeof(*cmp));
		if (cm == NULL || cmp == NULL) {
			rc = cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
			goto out;
		}
		for (size_t i = 0; i < n_msgs; i++) {
			epmoe__chat_message__init(&cm[i]);
			if (msgs[i].role == NULL || msgs[i].content == NULL) {
				rc = cl_set_err(c, EPMOE_EINVAL, 0, "a message without "
				        "role or content");
				goto out;
			}
			cm[i].role = (char *)msgs[i].role;
			cm[i].content = (char *)msgs[i].content;
			cmp[i] = &cm[i];
		}
		req.messages = cmp;
		req.n_messages = n_msgs;
	} else {
		req.prompt = (char *)prompt;
	}
	if (p->max_tokens >= 0)
		req.max_tokens = (uint32_t)p->max_tokens;
	if (!isnan(p->temperature)) {
		req.temperature_opt_case =
		        EPMOE__COMPLETION_REQUEST__TEMPERATURE_OPT_TEMPERATURE;
		req.temperature = p->temperature;
	}
	if (!isnan(p->top_p)) {
		req.top_p_opt_case = EPMOE__COMPLETION_REQUEST__TOP_P_OPT_TOP_P;
		req.top_p = p->top_p;
	}
	if (p->top_k > 0)
		req.top_k = (uint32_t)p->top_k;
	if (!isnan(p->min_p))
		req.min_p = p->min_p;
	if (p->has_seed) {
		req.seed_opt_case = EPMOE__COMPLETION_REQUEST__SEED_OPT_SEED;
		req.seed = p->seed;
	}
	req.stop = (char **)p->stop;
	req.n_stop = p->n_stop;
	req.routing_policy = (char *)(p->routing ? p->routing : "");
	req.ignore_eos = p->ignore_eos != 0;
	req.stream = p->stream != 0;
	msg.msg_case = EPMOE__CLIENT_MSG__MSG_COMPLETE;
	msg.complete = &req;
	if ((rc = nng_call(c, &msg, &rep, remaining_ms(deadline))) != 0)
		goto out;
	/* Each round: take what the reply adds, then poll from the new
	 * offsets.  Bounded by the deadline: every call waits at most the
	 * time left. */
	for (;;) {
		if ((rc = nng_expect(c, rep, EPMOE__CLIENT_REPLY__MSG_COMPLETION)) != 0) {
			rep = NULL;
			goto out;
		}
		if (id == NULL && rep->completion->request_id[0] != '\0' &&
		        (id = strdup(rep->completion->request_id)) == NULL) {
			rc = cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
			goto out;
		}
		rc = nng_apply(c, a, rep->completion);
		done = rep->completion->done;
		epmoe__client_reply__free_unpacked(rep, NULL);
		rep = NULL;
		if (rc != 0 || done)
			break;
		if (id == NULL) {
			rc = cl_set_err(c, EPMOE_EPROTO, 0, "%s: an unfinished completion "
			        "without a request id", c->url);
			break;
		}
		if (remaining_ms(deadline) == 0) {
			rc = cl_set_err(c, EPMOE_ETIMEDOUT, 0, "%s: no end of the "
			        "completion within %u ms", c->url, c->o.timeout_ms);
			break;
		}
		poll.request_id = id;
		poll.token_offset = (uint32_t)a->r.n_tokens;
		poll.text_offset = a->r.text_len;
		poll.wait_ms = c->o.poll_wait_ms;
		if (poll.wait_ms > remaining_ms(deadline))
			poll.wait_ms = remaining_ms(deadline);
		msg.msg_case = EPMOE__CLIENT_MSG__MSG_POLL;
		msg.poll = &poll;
		if ((rc = nng_call(c, &msg, &rep, remaining_ms(deadline) + 1)) != 0)
			break;
	}
	if (id != NULL && !done && (rc == EPMOE_ECANCELED || rc == EPMOE_ETIMEDOUT ||
	        rc == EPMOE_EPROTO || rc == EPMOE_ENOMEM))
		nng_cancel(c, id);
out:
	if (rep != NULL)
		epmoe__client_reply__free_unpacked(rep, NULL);
	free(id);
	free(cm);
	free(cmp);
	return rc;
}

int
cl_nng_models(struct epmoe_client *c, char ***ids, size_t *n_ids)
{
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__ModelsRequest mr = EPMOE__MODELS_REQUEST__INIT;
	Epmoe__ClientReply *rep;
	char **v;
	int rc;

	msg.msg_case = EPMOE__CLIENT_MSG__MSG_MODELS;
	msg.models = &mr;
	if ((rc = nng_call(c, &msg, &rep, c->o.timeout_ms)) != 0 ||
	        (rc = nng_expect(c, rep, EPMOE__CLIENT_REPLY__MSG_MODELS)) != 0)
		return rc;
	if ((v = calloc(rep->models->n_models + 1, sizeof(*v))) == NULL)
		goto nomem;
	for (size_t i = 0; i < rep->models->n_models; i++)
		if ((v[i] = strdup(rep->models->models[i]->id)) == NULL) {
			epmoe_strv_free(v, i);
			goto nomem;
		}
	*ids = v;
	*n_ids = rep->models->n_models;
	epmoe__client_reply__free_unpacked(rep, NULL);
	return 0;
nomem:
	epmoe__client_reply__free_unpacked(rep, NULL);
	return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
}

int
cl_nng_health(struct epmoe_client *c, struct epmoe_health *h)
{
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__HealthRequest hr = EPMOE__HEALTH_REQUEST__INIT;
	Epmoe__ClientReply *rep;
	int rc;

	msg.msg_case = EPMOE__CLIENT_MSG__MSG_HEALTH;
	msg.health = &hr;
	if ((rc = nng_call(c, &msg, &rep, c->o.timeout_ms)) != 0 ||
	        (rc = nng_expect(c, rep, EPMOE__CLIENT_REPLY__MSG_HEALTH)) != 0)
		return rc;
	h->ok = rep->health->ok;
	snprintf(h->status, sizeof(h->status), "%s", rep->health->status[0] ?
	        rep->health->status : h->ok ? "ok" : "unavailable");
	epmoe__client_reply__free_unpacked(rep, NULL);
	return 0;
}

int
cl_nng_tokenize(struct epmoe_client *c, const char *text, int add_special,
        uint32_t **tokens, size_t *n_tokens)
{
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__TokenizeRequest tr = EPMOE__TOKENIZE_REQUEST__INIT;
	Epmoe__ClientReply *rep;
	uint32_t *v = NULL;
	size_t n;
	int rc;

	tr.text = (char *)text;
	tr.add_special = add_special != 0;
	msg.msg_case = EPMOE__CLIENT_MSG__MSG_TOKENIZE;
	msg.tokenize = &tr;
	if ((rc = nng_call(c, &msg, &rep, c->o.timeout_ms)) != 0 ||
	        (rc = nng_expect(c, rep, EPMOE__CLIENT_REPLY__MSG_TOKENIZE)) != 0)
		return rc;
	n = rep->tokenize->n_tokens;
	if (n > 0 && (v = malloc(n * sizeof(*v))) == NULL) {
		epmoe__client_reply__free_unpacked(rep, NULL);
		return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
	}
	if (n > 0)
		memcpy(v, rep->tokenize->tokens, n * sizeof(*v));
	epmoe__client_reply__free_unpacked(rep, NULL);
	*tokens = v;
	*n_tokens = n;
	return 0;
}

int
cl_nng_detokenize(struct epmoe_client *c, const uint32_t *tokens,
        size_t n_tokens, char **text)
{
	Epmoe__ClientMsg msg = EPMOE__CLIENT_MSG__INIT;
	Epmoe__DetokenizeRequest dr = EPMOE__DETOKENIZE_REQUEST__INIT;
	Epmoe__ClientReply *rep;
	char *s;
	int rc;

	dr.tokens = (uint32_t *)tokens;
	dr.n_tokens = n_tokens;
	msg.msg_case = EPMOE__CLIENT_MSG__MSG_DETOKENIZE;
	msg.detokenize = &dr;
	if ((rc = nng_call(c, &msg, &rep, c->o.timeout_ms)) != 0 ||
	        (rc = nng_expect(c, rep, EPMOE__CLIENT_REPLY__MSG_DETOKENIZE)) != 0)
		return rc;
	s = strdup(rep->detokenize->text);
	epmoe__client_reply__free_unpacked(rep, NULL);
	if (s == NULL)
		return cl_set_err(c, EPMOE_ENOMEM, 0, "out of memory");
	*text = s;
	return 0;
}

/* ---- the API ---- */

static int
completion(struct epmoe_client *c, const char *prompt,
        const struct epmoe_chat_msg *msgs, size_t n_msgs,
        const struct epmoe_gen_params *p, epmoe_chunk_fn cb, void *ud,
        struct epmoe_completion *out)
{
	struct epmoe_gen_params dflt;
	struct cl_acc a;
	char why[128];
	int rc;

	if (p == NULL) {
		epmoe_gen_params_init(&dflt);
		p = &dflt;
	}
	if (epmoe_gen_params_check(p, why, sizeof(why)) != 0)
		return cl_set_err(c, EPMOE_EINVAL, 0, "%s", why);
	cl_acc_init(&a, c, cb, ud);
	if (c->tr == EPMOE_TRANSPORT_HTTP)
		rc = cl_http_completion(c, prompt, msgs, n_msgs, p, &a);
	else
		rc = cl_nng_completion(c, prompt, msgs, n_msgs, p, &a);
	if (rc != 0) {
		epmoe_completion_fini(&a.r);
		return rc;
	}
	return cl_acc_finish(&a, out);
}

int
epmoe_complete(struct epmoe_client *c, const char *prompt,
        const struct epmoe_gen_params *p, epmoe_chunk_fn cb, void *ud,
        struct epmoe_completion *out)
{
	if (prompt == NULL)
		return cl_set_err(c, EPMOE_EINVAL, 0, "no prompt");
	return completion(c, prompt, NULL, 0, p, cb, ud, out);
}

int
epmoe_chat(struct epmoe_client *c, const struct epmoe_chat_msg *msgs,
        size_t n_msgs, const struct epmoe_gen_params *p, epmoe_chunk_fn cb,
        void *ud, struct epmoe_completion *out)
{
	if (msgs == NULL || n_msgs == 0)
		return cl_set_err(c, EPMOE_EINVAL, 0, "no messages");
	return completion(c, NULL, msgs, n_msgs, p, cb, ud, out);
}

int
epmoe_models(struct epmoe_client *c, char ***ids, size_t *n_ids)
{
	return c->tr == EPMOE_TRANSPORT_HTTP ? cl_http_models(c, ids, n_ids) :
	        cl_nng_models(c, ids, n_ids);
}

int
epmoe_health(struct epmoe_client *c, struct epmoe_health *out)
{
	struct epmoe_health h;
	int rc;

	memset(&h, 0, sizeof(h));
	rc = c->tr == EPMOE_TRANSPORT_HTTP ? cl_http_health(c, &h) :
	        cl_nng_health(c, &h);
	if (rc == 0)
		*out = h;
	return rc;
}

int
epmoe_tokenize(struct epmoe_client *c, const char *text, int add_special,
        uint32_t **tokens, size_t *n_tokens)
{
	if (text == NULL)
		return cl_set_err(c, EPMOE_EINVAL, 0, "no text");
	return c->tr == EPMOE_TRANSPORT_HTTP ?
	        cl_http_tokenize(c, text, add_special, tokens, n_tokens) :
	        cl_nng_tokenize(c, text, add_special, tokens, n_tokens);
}

int
epmoe_detokenize(struct epmoe_client *c, const uint32_t *tokens,
        size_t n_tokens, char **text)
{
	if (tokens == NULL && n_tokens > 0)
		return cl_set_err(c, EPMOE_EINVAL, 0, "no tokens");
	return c->tr == EPMOE_TRANSPORT_HTTP ?
	        cl_http_detokenize(c, tokens, n_tokens, text) :
	        cl_nng_detokenize(c, tokens, n_tokens, text);
}
