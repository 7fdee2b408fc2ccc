/* The client library's HTTP transport: the OpenAI-compatible API over
 * libcurl (one easy handle per client, reused so the connection is kept
 * alive; streaming is SSE).  Request bodies and answers are cl_oai.c's. */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>
#include <curl/curl.h>

#include "cl_oai.h"
#include "client_int.h"
#include "err.h"
#include "sse.h"

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
		a->r.has_cached = d.has_cached;
		a->r.cached_tokens = d.cached_tokens;
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
	if (c->auth_header != NULL) {
		if ((h = curl_slist_append(hdrs, c->auth_header)) == NULL)
			goto nomem;
		hdrs = h;
	}
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
			a->r.has_cached = d.has_cached;
			a->r.cached_tokens = d.cached_tokens;
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
