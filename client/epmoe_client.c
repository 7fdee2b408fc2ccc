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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client_int.h"
#include "clock.h"
#include "epmoe_client.h"
#include "err.h"

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
