/* The OpenAI-compatible HTTP front end.  See api.h. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "dashboard.h"
#include "apikey.h"
#include "err.h"
#include "gen.h"
#include "http.h"
#include "log.h"
#include "oai.h"
#include "router.h"
#include "stats.h"

enum api_kind { API_COMPLETION, API_CHAT };

/* One token's logprob record kept for a non-streamed response. */
struct api_lp {
	char *text;
	size_t text_len;
	float lp;
	int has;
	struct oai_top_logprob *top;
	size_t n_top;
	char *top_text; /* storage of the top texts */
	size_t offset;  /* completions: where its text starts in the returned
	                 * text (prompt + output), in characters */
};

/* A generation request in flight: the HTTP request, the scheduler request
 * and what the response needs. */
struct api_req {
	struct router *r;
	struct http_req *http;
	struct sched_req *sreq;
	enum api_kind kind;
	bool stream, include_usage, echo, want_lps, role_sent, http_gone;
	int32_t n_top;
	char id[64];
	int64_t created;
	char *model;
	/* non-streamed: the whole text and logprobs */
	char *text;
	size_t len, cap;
	struct api_lp *lps;
	size_t n_lps, cap_lps;
	size_t text_offset; /* characters of text returned so far */
	char *prompt_text;  /* echo */
	size_t prompt_len;
};

static const char *
served_model(const struct router *r)
{
	return r->cfg.model_name;
}

/* What the JSON parsers check: for generation requests only the types
 * (gen.c checks the model, the token ids and every range), for
 * /tokenize and /detokenize the model and the token ids too. */
static void
oai_cfg(const struct router *r, struct oai_config *c, const char **models,
        bool generation)
{
	memset(c, 0, sizeof(*c));
	models[0] = served_model(r);
	c->model_optional = 1;
	if (generation)
		return;
	c->models = models;
	c->n_models = 1;
	c->n_vocab = (int32_t)r->model->hp.n_vocab;
}

/* The HTTP status of an EPMOE_E* code: the one place the API maps them. */
static int
http_status_of(int err)
{
	switch (err) {
	case 0: return 200;
	case EPMOE_EINVAL:
	case EPMOE_ERANGE:
	case EPMOE_ENOTSUP:
	case EPMOE_EFORMAT:
	case EPMOE_ECANCELED: return 400;
	case EPMOE_ENOENT: return 404;
	case EPMOE_EBUSY: return 429;
	case EPMOE_EUNAVAIL:
	case EPMOE_ECLOSED:
	case EPMOE_ENOMEM: return 503;
	case EPMOE_ETIMEDOUT: return 504;
	}
	return 500;
}

static void
respond_error(struct http_req *req, const struct oai_error *e)
{
	cJSON *body = oai_error_body(e);
	const char *hdr = e->status == 429 ? "Retry-After: 1\r\n" :
	        e->status == 503 ? "Retry-After: 2\r\n" : NULL;

	if (body) {
		http_respond_json(req, e->status, body, hdr);
		cJSON_Delete(body);
	} else {
		http_respond(req, 500, "text/plain", "out of memory", 13, NULL);
	}
}

static void
respond_simple_error(struct http_req *req, int status, const char *param,
        const char *msg)
{
	struct oai_error e;
	oai_error_set(&e, status, param, "%s", msg);
	respond_error(req, &e);
}

/* UTF-8 code points in s[0..n) (continuation bytes not counted). */
static size_t
utf8_chars(const char *s, size_t n)
{
	size_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += ((unsigned char)s[i] & 0xC0) != 0x80;
	return c;
}

/* ---- request lifecycle ---- */

static void
lps_free(struct api_lp *l, size_t n)
{
	for (size_t i = 0; l && i < n; i++) {
		free(l[i].text);
		free(l[i].top);
		free(l[i].top_text);
	}
	free(l);
}

static void
api_req_free(struct api_req *a)
{
	if (a == NULL)
		return;
	lps_free(a->lps, a->n_lps);
	free(a->text);
	free(a->model);
	free(a->prompt_text);
	free(a);
}

static int
append_text(struct api_req *a, const char *t, size_t n)
{
	if (a->len + n + 1 > a->cap) {
		size_t nc = (a->len + n + 1) * 2;
		char *nt = realloc(a->text, nc);
		if (nt == NULL)
			return EPMOE_ENOMEM;
		a->text = nt;
		a->cap = nc;
	}
	memcpy(a->text + a->len, t, n);
	a->len += n;
	a->text[a->len] = '\0';
	return 0;
}

/* Copies a scheduler token into a logprob record. */
static int
keep_lp(struct api_lp *l, const struct sched_tok *t, size_t offset)
{
	memset(l, 0, sizeof(*l));
	l->offset = offset;
	l->lp = t->logprob;
	l->has = !isnan(t->logprob);
	if ((l->text = malloc(t->text_len + 1)) == NULL)
		return EPMOE_ENOMEM;
	memcpy(l->text, t->text ? t->text : "", t->text_len);
	l->text[t->text_len] = '\0';
	l->text_len = t->text_len;
	if (t->n_top) {
		l->top = calloc(t->n_top, sizeof(*l->top));
		l->top_text = malloc((size_t)t->n_top * 48);
		if (!l->top || !l->top_text)
			return EPMOE_ENOMEM;
		for (uint32_t i = 0; i < t->n_top; i++) {
			memcpy(l->top_text + i * 48, t->top[i].text, t->top[i].text_len);
			l->top[i].text = l->top_text + i * 48;
			l->top[i].text_len = t->top[i].text_len;
			l->top[i].logprob = t->top[i].logprob;
		}
		l->n_top = t->n_top;
	}
	return 0;
}

/* Keeps n tokens' records, token i's text starting at offsets[i]. */
static int
push_lps(struct api_req *a, const struct sched_tok *toks, size_t n,
        const size_t *offsets)
{
	if (a->n_lps + n > a->cap_lps) {
		size_t nc = (a->n_lps + n) * 2;
		struct api_lp *nl = realloc(a->lps, nc * sizeof(*nl));
		if (nl == NULL)
			return EPMOE_ENOMEM;
		a->lps = nl;
		a->cap_lps = nc;
	}
	for (size_t i = 0; i < n; i++) {
		int rc = keep_lp(&a->lps[a->n_lps], &toks[i], offsets[i]);
		a->n_lps++;
		if (rc)
			return rc;
	}
	return 0;
}

/* Views of records as the builders want them. */
static struct oai_token_logprob *
lp_views(const struct api_lp *l, size_t n)
{
	struct oai_token_logprob *v = calloc(n ? n : 1, sizeof(*v));
	if (v == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		v[i].text = l[i].text;
		v[i].text_len = l[i].text_len;
		v[i].logprob = l[i].lp;
		v[i].has_logprob = l[i].has;
		v[i].top = l[i].top;
		v[i].n_top = l[i].n_top;
		v[i].text_offset = l[i].offset;
	}
	return v;
}

static int
sse_send(struct api_req *a, cJSON *j)
{
	char *buf;
	size_t len;
	int rc;

	if (j == NULL)
		return EPMOE_ENOMEM;
	rc = oai_sse_frame(j, &buf, &len);
	cJSON_Delete(j);
	if (rc)
		return rc;
	rc = http_stream_write(a->http, buf, len);
	free(buf);
	return rc;
}

static void
stream_chunk(struct api_req *a, const char *text, size_t len,
        const struct api_lp *lps, size_t n_lps, const char *finish)
{
	struct oai_choice ch = { .text = text, .text_len = len, .finish_reason = finish };
	struct oai_token_logprob *v = NULL;
	cJSON *j;

	if (a->want_lps && n_lps) {
		v = lp_views(lps, n_lps);
		ch.lps = v;
		ch.n_lps = n_lps;
	}
	if (a->kind == API_COMPLETION) {
		j = oai_completion_chunk(a->id, a->model, a->created, &ch, a->include_usage);
	} else {
		if (text == NULL && finish == NULL)
			ch.text = "";
		j = oai_chat_chunk(a->id, a->model, a->created,
		        a->role_sent ? NULL : "assistant", &ch, a->include_usage);
		a->role_sent = true;
	}
	sse_send(a, j);
	free(v);
}

/* The final answer of a non-streamed request. */
static void
respond_whole(struct api_req *a, const char *finish, const struct oai_usage *u)
{
	struct oai_choice ch = { .finish_reason = finish };
	struct oai_token_logprob *v = NULL;
	char *full = NULL;
	cJSON *j;

	if (a->kind == API_COMPLETION && a->echo) {
		full = malloc(a->prompt_len + a->len + 1);
		if (full) {
			memcpy(full, a->prompt_text, a->prompt_len);
			memcpy(full + a->prompt_len, a->text ? a->text : "", a->len);
			full[a->prompt_len + a->len] = '\0';
			ch.text = full;
			ch.text_len = a->prompt_len + a->len;
		}
	} else {
		ch.text = a->text ? a->text : "";
		ch.text_len = a->len;
	}
	if (a->want_lps) {
		v = lp_views(a->lps, a->n_lps);
		ch.lps = v;
		ch.n_lps = a->n_lps;
	}
	j = a->kind == API_COMPLETION ?
	        oai_completion_response(a->id, a->model, a->created, &ch, u) :
	        oai_chat_response(a->id, a->model, a->created, &ch, u);
	if (j) {
		http_respond_json(a->http, 200, j, NULL);
		cJSON_Delete(j);
	} else {
		respond_simple_error(a->http, 500, NULL, "out of memory");
	}
	free(v);
	free(full);
}

/* echo: the prompt's chunk (streamed) or records.  Offsets index into the
 * returned prompt text (gen_token_offsets), in characters. */
static void
on_prompt(struct api_req *a, const struct sched_event *ev)
{
	size_t n = ev->n_toks, *off = NULL;
	struct api_lp *tmp = NULL;

	if (a->want_lps && n && (off = malloc(n * sizeof(*off))) != NULL) {
		gen_token_offsets(a->prompt_text ? a->prompt_text : "", a->prompt_len,
		        ev->toks, n, off);
		for (size_t i = 0; i < n; i++)
			off[i] = utf8_chars(a->prompt_text, off[i]);
	}
	if (!a->stream) {
		if (off)
			push_lps(a, ev->toks, n, off);
		free(off);
		return;
	}
	if (off && (tmp = calloc(n, sizeof(*tmp))) != NULL)
		for (size_t i = 0; i < n; i++)
			keep_lp(&tmp[i], &ev->toks[i], off[i]);
	stream_chunk(a, a->prompt_text, a->prompt_len, tmp, tmp ? n : 0, NULL);
	lps_free(tmp, tmp ? n : 0);
	free(off);
}

static void
on_sched_event(const struct sched_event *ev, void *ud)
{
	struct api_req *a = ud;

	switch (ev->kind) {
	case SCHED_EV_PROMPT:
		if (a->http_gone)
			break;
		/* echo: the prompt text comes first; its logprobs (the first has
		 * none) lead the token list */
		on_prompt(a, ev);
		a->text_offset += utf8_chars(a->prompt_text, a->prompt_len);
		break;
	case SCHED_EV_TOKEN:
		if (a->http_gone)
			break;
		if (a->stream) {
			struct api_lp one;
			int have = a->want_lps && ev->n_toks &&
			        keep_lp(&one, &ev->toks[0], a->text_offset) == 0;
			if (ev->text_len || have)
				stream_chunk(a, ev->text ? ev->text : "", ev->text_len,
				        have ? &one : NULL, have ? 1 : 0, NULL);
			if (have) {
				free(one.text);
				free(one.top);
				free(one.top_text);
			}
		} else {
			if (ev->text_len)
				append_text(a, ev->text, ev->text_len);
			if (a->want_lps && ev->n_toks)
				push_lps(a, ev->toks, 1, &a->text_offset);
		}
		a->text_offset += utf8_chars(ev->text ? ev->text : "", ev->text_len);
		break;
	case SCHED_EV_DONE: {
		struct oai_usage u = { (int32_t)ev->prompt_tokens, (int32_t)ev->completion_tokens,
			(int32_t)ev->cached_tokens };
		if (!a->http_gone) {
			if (a->stream) {
				stream_chunk(a, a->kind == API_CHAT ? NULL : "", 0, NULL, 0,
				        ev->finish_reason);
				if (a->include_usage)
					sse_send(a, oai_usage_chunk(a->id, a->model, a->created,
					        a->kind == API_CHAT, &u));
				http_stream_write(a->http, OAI_SSE_DONE, strlen(OAI_SSE_DONE));
				http_stream_end(a->http);
			} else {
				respond_whole(a, ev->finish_reason, &u);
			}
		}
		http_req_release(a->http);
		sched_req_free(a->sreq);
		api_req_free(a);
		break;
	}
	case SCHED_EV_ERROR:
		if (!a->http_gone) {
			struct oai_error e;
			oai_error_set(&e, http_status_of(ev->err), NULL, "%s", ev->message);
			if (a->stream) {
				/* the status line is gone: an error event ends the stream */
				sse_send(a, oai_error_body(&e));
				http_stream_write(a->http, OAI_SSE_DONE, strlen(OAI_SSE_DONE));
				http_stream_end(a->http);
			} else {
				respond_error(a->http, &e);
			}
		}
		http_req_release(a->http);
		sched_req_free(a->sreq);
		api_req_free(a);
		break;
	}
}

static void
on_http_close(struct http_req *req, void *ud)
{
	struct api_req *a = ud;

	/* the client went away: stop generating; the final event frees */
	a->http_gone = true;
	sched_cancel(a->sreq);
}

/* Answers a refused generation request: gen's field in the words of the
 * request (max_key: the max_tokens key it used). */
static void
respond_gen_error(struct http_req *req, const struct gen_err *ge, bool chat,
        const char *max_key)
{
	const char *param = gen_field_name(ge->field);
	struct oai_error e;

	if (ge->field == GEN_F_MAX_TOKENS)
		param = max_key;
	else if (ge->field == GEN_F_LOGPROBS && chat)
		param = "top_logprobs";
	oai_error_set(&e, http_status_of(ge->code), param, "%s", ge->message);
	if (ge->code == EPMOE_ENOENT && ge->field == GEN_F_MODEL)
		e.code = "model_not_found";
	respond_error(req, &e);
}

/* The gen request of the fields both endpoints share. */
static void
gen_from_oai(struct gen_req *q, const struct oai_gen *g)
{
	q->has_max_tokens = g->has_max_tokens;
	q->max_tokens = g->max_tokens;
	q->has_temperature = g->has_temperature;
	q->temperature = g->temperature;
	q->has_top_p = g->has_top_p;
	q->top_p = g->top_p;
	q->has_top_k = g->has_top_k;
	q->top_k = g->top_k;
	q->has_min_p = g->has_min_p;
	q->min_p = g->min_p;
	q->has_seed = g->has_seed;
	q->seed = g->seed;
	q->stop = (const char *const *)g->stop;
	q->n_stop = g->n_stop;
	q->routing = g->routing;
	q->ignore_eos = g->ignore_eos;
}

void
api_gen_completion(const struct oai_completion_req *c, struct gen_req *q)
{
	gen_req_init(q, GEN_COMPLETION);
	gen_from_oai(q, &c->gen);
	q->model = c->model;
	if (c->prompt_tokens) {
		/* oai checked they are integers in [0, 2^31) */
		q->ids = (const uint32_t *)c->prompt_tokens;
		q->n_ids = c->n_prompt_tokens;
	} else {
		q->text = c->prompt ? c->prompt : "";
		q->text_len = c->prompt_len;
	}
	q->echo = c->echo;
	q->has_logprobs = c->has_logprobs;
	q->logprobs = c->logprobs;
}

void
api_gen_chat(const struct oai_chat_req *c, struct gen_msg *msgs, struct gen_req *q)
{
	static const char *const role_names[] = { "system", "user", "assistant" };

	for (size_t i = 0; i < c->n_messages; i++) {
		msgs[i].role = role_names[c->messages[i].role];
		msgs[i].content = c->messages[i].content;
	}
	gen_req_init(q, GEN_CHAT);
	gen_from_oai(q, &c->gen);
	q->model = c->model;
	q->msgs = msgs;
	q->n_msgs = c->n_messages;
	q->has_logprobs = c->logprobs;
	q->logprobs = c->top_logprobs;
}

/* Submits the request; on success (0) a owns req until its final event,
 * else the error is answered and both are released. */
static int
submit(struct router *r, struct http_req *req, struct api_req *a,
        const struct gen_req *q, const char *max_key)
{
	struct gen_err ge;

	if (gen_submit(r, q, on_sched_event, a, &a->sreq, &ge) != 0) {
		respond_gen_error(req, &ge, a->kind == API_CHAT, max_key);
		http_req_release(req);
		api_req_free(a);
		return -1;
	}
	if (a->stream) {
		http_stream_begin(req, 200, OAI_SSE_CONTENT_TYPE,
		        "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
	}
	http_req_on_close(req, on_http_close, a);
	return 0;
}

static struct api_req *
api_req_new(struct router *r, struct http_req *req, enum api_kind kind,
        const char *model, const struct oai_gen *g)
{
	struct api_req *a = calloc(1, sizeof(*a));

	if (a == NULL)
		return NULL;
	a->r = r;
	a->http = req;
	a->kind = kind;
	a->stream = g->stream;
	a->include_usage = g->include_usage;
	a->created = (int64_t)time(NULL);
	oai_make_id(a->id, sizeof(a->id), kind == API_COMPLETION ? "cmpl-" : "chatcmpl-");
	a->model = strdup(model ? model : served_model(r));
	if (a->model == NULL) {
		free(a);
		return NULL;
	}
	return a;
}

static void
handle_completion(struct router *r, struct http_req *req)
{
	struct oai_completion_req c;
	struct oai_config cfg;
	struct oai_error e;
	struct gen_req q;
	const char *models[1];
	struct api_req *a;

	oai_cfg(r, &cfg, models, true);
	if (oai_parse_completion(req->body, req->body_len, &cfg, &c, &e) != 0) {
		stats_count_reject(r->stats, EPMOE_EINVAL);
		respond_error(req, &e);
		http_req_release(req);
		return;
	}
	api_gen_completion(&c, &q);
	if ((a = api_req_new(r, req, API_COMPLETION, c.model, &c.gen)) == NULL) {
		oai_completion_req_fini(&c);
		respond_simple_error(req, 503, NULL, "out of memory");
		http_req_release(req);
		return;
	}
	a->echo = c.echo;
	a->want_lps = c.has_logprobs;
	if (a->echo && c.prompt) {
		a->prompt_text = c.prompt;
		a->prompt_len = c.prompt_len;
		c.prompt = NULL;
		q.text = a->prompt_text;
	}
	/* no event comes before the loop runs again: the echo of a prompt
	 * given as ids can still be decoded (it was checked by now) */
	if (submit(r, req, a, &q, c.gen.max_tokens_key) == 0 && c.prompt_tokens &&
	        a->echo && tok_decode(r->tok, c.prompt_tokens, c.n_prompt_tokens, 0, &a->prompt_text,
	                &a->prompt_len) != 0) {
		a->prompt_text = NULL;
		a->prompt_len = 0;
	}
	oai_completion_req_fini(&c);
}

static void
handle_chat(struct router *r, struct http_req *req)
{
	struct oai_chat_req c;
	struct oai_config cfg;
	struct oai_error e;
	struct gen_req q;
	struct gen_msg *msgs;
	const char *models[1];
	struct api_req *a;

	oai_cfg(r, &cfg, models, true);
	if (oai_parse_chat(req->body, req->body_len, &cfg, &c, &e) != 0) {
		stats_count_reject(r->stats, EPMOE_EINVAL);
		respond_error(req, &e);
		http_req_release(req);
		return;
	}
	msgs = calloc(c.n_messages, sizeof(*msgs));
	a = msgs ? api_req_new(r, req, API_CHAT, c.model, &c.gen) : NULL;
	if (a == NULL) {
		free(msgs);
		oai_chat_req_fini(&c);
		respond_simple_error(req, 503, NULL, "out of memory");
		http_req_release(req);
		return;
	}
	api_gen_chat(&c, msgs, &q);
	a->want_lps = c.logprobs;
	submit(r, req, a, &q, c.gen.max_tokens_key);
	free(msgs);
	oai_chat_req_fini(&c);
}

static void
handle_tokenize(struct router *r, struct http_req *req)
{
	struct oai_tokenize_req t;
	struct oai_config cfg;
	struct oai_error e;
	const char *models[1];
	int32_t *ids = NULL;
	size_t n = 0;
	cJSON *j;

	oai_cfg(r, &cfg, models, false);
	if (oai_parse_tokenize(req->body, req->body_len, &cfg, &t, &e) != 0) {
		respond_error(req, &e);
		return;
	}
	if (router_tokenize(r, t.text, t.text_len, t.add_special, false, &ids, &n) != 0) {
		respond_simple_error(req, 500, NULL, "tokenization failed");
	} else if ((j = oai_tokenize_response(ids, n, (int32_t)engine_n_ctx(r->engine))) != NULL) {
		http_respond_json(req, 200, j, NULL);
		cJSON_Delete(j);
	} else {
		respond_simple_error(req, 500, NULL, "out of memory");
	}
	free(ids);
	oai_tokenize_req_fini(&t);
}

static void
handle_detokenize(struct router *r, struct http_req *req)
{
	struct oai_detokenize_req t;
	struct oai_config cfg;
	struct oai_error e;
	const char *models[1];
	char *text = NULL;
	size_t len = 0;
	cJSON *j;

	oai_cfg(r, &cfg, models, false);
	if (oai_parse_detokenize(req->body, req->body_len, &cfg, &t, &e) != 0) {
		respond_error(req, &e);
		return;
	}
	if (tok_decode(r->tok, t.tokens, t.n_tokens, 0, &text, &len) != 0) {
		respond_simple_error(req, 400, "tokens", "a token id is outside the vocabulary");
	} else if ((j = oai_detokenize_response(text, len)) != NULL) {
		http_respond_json(req, 200, j, NULL);
		cJSON_Delete(j);
	} else {
		respond_simple_error(req, 500, NULL, "out of memory");
	}
	free(text);
	oai_detokenize_req_fini(&t);
}

static void
respond_cjson(struct http_req *req, int status, cJSON *j)
{
	if (j) {
		http_respond_json(req, status, j, NULL);
		cJSON_Delete(j);
	} else {
		respond_simple_error(req, 500, NULL, "out of memory");
	}
}

static void
handle_health(struct router *r, struct http_req *req)
{
	bool ok;
	cJSON *j = stats_health_json(r, &ok);

	respond_cjson(req, ok ? 200 : 503, j);
}

static void
handle_metrics(struct router *r, struct http_req *req)
{
	char *text;
	size_t len;

	if (stats_render_metrics(r->stats, &text, &len) != 0) {
		respond_simple_error(req, 500, NULL, "out of memory");
		return;
	}
	http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL);
	free(text);
}

static bool
method_is(const struct http_req *req, const char *m)
{
	return strcmp(req->method, m) == 0 ||
	        (strcmp(m, "GET") == 0 && strcmp(req->method, "HEAD") == 0);
}

/* Answers 405 unless the method matches.  Returns true when it answered. */
static bool
wrong_method(struct http_req *req, const char *want)
{
	if (method_is(req, want))
		return false;
	char msg[96];
	snprintf(msg, sizeof(msg), "method %s not allowed here; use %s", req->method, want);
	struct oai_error e;
	oai_error_set(&e, 405, NULL, "%s", msg);
	cJSON *body = oai_error_body(&e);
	char hdr[64];
	snprintf(hdr, sizeof(hdr), "Allow: %s\r\n", want);
	http_respond_json(req, 405, body, hdr);
	cJSON_Delete(body);
	http_req_release(req);
	return true;
}

static void
handle_models(struct router *r, struct http_req *req)
{
	const char *models[1] = { served_model(r) };
	respond_cjson(req, 200, oai_models_response(models, 1, r->created, "epmoe"));
}

static void
handle_stats(struct router *r, struct http_req *req)
{
	respond_cjson(req, 200, stats_json(r->stats));
}

static void
handle_placement(struct router *r, struct http_req *req)
{
	respond_cjson(req, 200, stats_placement_json(r));
}

/* The routes.  A handler either answers at once (the request is released
 * here) or, for generations, owns the request until its final event. */
static const struct route_ent {
	const char *path, *alias, *method;
	void (*fn)(struct router *r, struct http_req *req);
	bool owns;
} routes[] = {
	{ "/v1/completions", NULL, "POST", handle_completion, true },
	{ "/v1/chat/completions", NULL, "POST", handle_chat, true },
	{ "/health", "/v1/health", "GET", handle_health, false },
	{ "/v1/models", NULL, "GET", handle_models, false },
	{ "/metrics", NULL, "GET", handle_metrics, false },
	{ "/tokenize", "/v1/tokenize", "POST", handle_tokenize, false },
	{ "/detokenize", "/v1/detokenize", "POST", handle_detokenize, false },
	{ "/v1/stats", NULL, "GET", handle_stats, false },
	{ "/v1/placement", NULL, "GET", handle_placement, false },
	{ "/dashboard", NULL, "GET", dash_handle, false },
};

/* Routes that answer without an API key: liveness for load balancers and
 * orchestrators, and the metrics unless --metrics-auth. */
static bool
route_open(const struct router *r, const char *p)
{
	return strcmp(p, "/health") == 0 || strcmp(p, "/v1/health") == 0 ||
	        (!r->cfg.metrics_auth && strcmp(p, "/metrics") == 0);
}

/* With API keys configured, every other route (unknown ones too: no
 * probing without a key) needs "Authorization: Bearer KEY".  Answers 401
 * in OpenAI's envelope and returns true when the request is refused. */
static bool
refuse_unauthorized(struct router *r, struct http_req *req)
{
	static struct log_limit lim = LOG_LIMIT_INIT;
	const char *auth;
	struct oai_error e;
	cJSON *body;

	if (apikeys_count(r->apikeys) == 0 || route_open(r, req->path))
		return false;
	auth = http_req_header(req, "Authorization");
	if (apikeys_check_bearer(r->apikeys, auth) == 0)
		return false;
	log_warn_limited(&lim, "http: %s %.100s from %s refused: %s API key",
	        req->method, req->path, req->peer, auth ? "wrong" : "no");
	stats_count_reject(r->stats, EPMOE_EAUTH);
	if (auth == NULL)
		oai_error_set(&e, 401, NULL,
		        "You didn't provide an API key. Send it in the Authorization header as 'Bearer KEY'.");
	else
		oai_error_set(&e, 401, NULL, "Incorrect API key provided.");
	e.code = "invalid_api_key";
	if ((body = oai_error_body(&e)) != NULL) {
		http_respond_json(req, 401, body, "WWW-Authenticate: Bearer\r\n");
		cJSON_Delete(body);
	} else {
		http_respond(req, 500, "text/plain", "out of memory", 13, NULL);
	}
	http_req_release(req);
	return true;
}

static void
on_http(struct http_req *req, void *ud)
{
	struct router *r = ud;
	const char *p = req->path;

	if (refuse_unauthorized(r, req))
		return;

	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		const struct route_ent *e = &routes[i];
		if (strcmp(p, e->path) != 0 && (e->alias == NULL || strcmp(p, e->alias) != 0))
			continue;
		if (wrong_method(req, e->method))
			return;
		e->fn(r, req);
		if (!e->owns)
			http_req_release(req);
		return;
	}
	char msg[160];
	snprintf(msg, sizeof(msg), "no route for %s %.100s", req->method, p);
	respond_simple_error(req, 404, NULL, msg);
	http_req_release(req);
}

int
api_start(struct router *r)
{
	struct http_config cfg;
	int rc;

	if (r->cfg.http.max_connections != 0)
		cfg = r->cfg.http;
	else
		http_config_default(&cfg);
	rc = http_server_start(&r->http, r->loop, r->cfg.http_addr, &cfg, on_http, r);
	if (rc)
		log_error("cannot listen on http://%s: %s", r->cfg.http_addr, epmoe_strerror(rc));
	return rc;
}

static void
on_http_closed(void *ud)
{
	(void)ud;
}

void
api_stop(struct router *r)
{
	if (r->http) {
		http_server_close(r->http, on_http_closed);
		r->http = NULL;
	}
}
