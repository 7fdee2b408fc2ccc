/* The NNG client API (see nngapi.h): a REP socket with a pool of
 * contexts, speaking the wire-framed messages of proto/epmoe.proto.
 *
 * NNG callbacks only move a context to a completion queue and wake the
 * loop with uv_async_send (reliability.md §9); every decision is made on
 * the loop thread.  A context stays busy while its answer is pending: a
 * non-streamed completion answers when it finishes; a PollRequest waits up
 * to wait_ms for new output.  Streamed requests are kept until their last
 * chunk is collected, or dropped after a minute without a poll. */
#include <math.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "apikey.h"
#include "clock.h"
#include "epmoe.pb-c.h"
#include "err.h"
#include "gen.h"
#include "log.h"
#include "netsock.h"
#include "nngapi.h"
#include "router.h"
#include "stats.h"
#include "wire.h"
#include "wire_nng.h"

#define N_CTX 64
#define STREAM_IDLE_S 60.0
#define MAX_WAIT_MS 30000

struct nreq;

enum ctx_state { CTX_RECV, CTX_HELD, CTX_SEND, CTX_DEAD };

struct nctx {
	struct nngapi *n;
	nng_ctx ctx;
	nng_aio *aio;
	enum ctx_state state;
	int rv;                   /* aio result, read on the loop */
	struct nctx *next_done;   /* completion queue link */
	/* while held */
	struct nreq *wait;        /* the request it waits on */
	bool poll;                /* a PollRequest (else a whole completion) */
	uint32_t tok_off;
	uint64_t text_off;
	double deadline;
	struct nctx *next_wait;
};

/* A completion submitted over NNG. */
struct nreq {
	struct nngapi *n;
	char id[64];
	struct sched_req *sreq;
	bool stream, done, want_lps;
	bool delivered;           /* a reply with done = true went out */
	int err;                  /* final: 0 ok, else an EPMOE_E* code */
	char error[256];
	Epmoe__FinishReason finish;
	uint32_t prompt_tokens;
	uint32_t cached_tokens;   /* of them, from the prefix cache */
	char *text;
	size_t len, cap;
	uint32_t *toks;
	size_t n_toks, cap_toks;
	Epmoe__TokenLogprob **lps;  /* [n_toks] when want_lps, owned */
	char *prompt_text;          /* echo: the prompt and its logprobs */
	size_t prompt_len;
	Epmoe__TokenLogprob **plps;
	size_t n_plps;
	double t_submit, t_first, t_last_poll;
	struct nctx *waiters;
	struct nreq *next;
};

struct nngapi {
	struct router *r;
	nng_socket sock;
	nng_listener listener;
	struct nctx ctxs[N_CTX];
	uv_async_t async;
	uv_timer_t timer;
	pthread_mutex_t mu;
	struct nctx *done_head;
	struct nreq *reqs;
	uint64_t next_id;
	bool closing;
};

/* NNG thread: hand the context to the loop. */
static void
on_aio(void *arg)
{
	struct nctx *c = arg;
	struct nngapi *n = c->n;

	c->rv = nng_aio_result(c->aio);
	pthread_mutex_lock(&n->mu);
	c->next_done = n->done_head;
	n->done_head = c;
	pthread_mutex_unlock(&n->mu);
	uv_async_send(&n->async);
}

static void
ctx_recv(struct nctx *c)
{
	if (c->n->closing) {
		c->state = CTX_DEAD;
		return;
	}
	c->state = CTX_RECV;
	nng_ctx_recv(c->ctx, c->aio);
}

/* Sends reply on c (frees it), then the context receives again. */
static void
ctx_reply(struct nctx *c, Epmoe__ClientReply *reply)
{
	nng_msg *m;

	reply->version = EPMOE_PROTO_VERSION;
	if (wire_nng_new(&m, WIRE_CLIENT_REPLY, &reply->base, 0, NULL) != 0) {
		log_warn("nng api: cannot pack a reply");
		ctx_recv(c);
		return;
	}
	c->state = CTX_SEND;
	nng_aio_set_msg(c->aio, m);
	nng_ctx_send(c->ctx, c->aio);
}

static void
reply_error(struct nctx *c, Epmoe__Status st, const char *msg, uint32_t retry_ms)
{
	Epmoe__ClientReply rep = EPMOE__CLIENT_REPLY__INIT;
	Epmoe__ErrorReply er = EPMOE__ERROR_REPLY__INIT;

	er.status = st;
	er.message = (char *)msg;
	er.retry_after_ms = retry_ms;
	rep.msg_case = EPMOE__CLIENT_REPLY__MSG_ERROR;
	rep.error = &er;
	ctx_reply(c, &rep);
}

/* ---- requests ---- */

static void
lp_free(Epmoe__TokenLogprob *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < t->n_top; i++) {
		free(t->top[i]->text);
		free(t->top[i]);
	}
	free(t->top);
	free(t->text);
	free(t);
}

/* A token's logprob record as the wire carries it (off: where its text
 * starts, in bytes). */
static Epmoe__TokenLogprob *
lp_new(const struct sched_tok *st, size_t off)
{
	Epmoe__TokenLogprob *t = malloc(sizeof(*t));

	if (t == NULL)
		return NULL;
	epmoe__token_logprob__init(t);
	t->token = (uint32_t)st->id;
	t->logprob = st->logprob;
	t->text_offset = off > UINT32_MAX ? UINT32_MAX : (uint32_t)off;
	t->text = strndup(st->text ? st->text : "", st->text_len);
	t->top = st->n_top ? calloc(st->n_top, sizeof(*t->top)) : NULL;
	if (t->text == NULL || (st->n_top && t->top == NULL))
		goto fail;
	for (uint32_t i = 0; i < st->n_top; i++) {
		Epmoe__TopLogprob *tp = malloc(sizeof(*tp));
		if (tp == NULL)
			goto fail;
		epmoe__top_logprob__init(tp);
		t->top[t->n_top++] = tp;
		tp->token = (uint32_t)st->top[i].id;
		tp->logprob = st->top[i].logprob;
		if ((tp->text = strndup(st->top[i].text, st->top[i].text_len)) == NULL)
			goto fail;
	}
	return t;
fail:
	lp_free(t);
	return NULL;
}

static void
nreq_free(struct nreq *q)
{
	if (q == NULL)
		return;
	for (size_t i = 0; q->lps && i < q->n_toks; i++)
		lp_free(q->lps[i]);
	for (size_t i = 0; i < q->n_plps; i++)
		lp_free(q->plps[i]);
	free(q->lps);
	free(q->plps);
	free(q->prompt_text);
	free(q->text);
	free(q->toks);
	free(q);
}

static void
nreq_unlink(struct nngapi *n, struct nreq *q)
{
	for (struct nreq **pp = &n->reqs; *pp; pp = &(*pp)->next)
		if (*pp == q) {
			*pp = q->next;
			return;
		}
}

static struct nreq *
nreq_find(struct nngapi *n, const char *id)
{
	for (struct nreq *q = n->reqs; q; q = q->next)
		if (strcmp(q->id, id) == 0)
			return q;
	return NULL;
}

/* Answers context c from request q: everything after its offsets. */
static void
answer(struct nctx *c, struct nreq *q)
{
	Epmoe__ClientReply rep = EPMOE__CLIENT_REPLY__INIT;
	Epmoe__CompletionResponse cr = EPMOE__COMPLETION_RESPONSE__INIT;
	Epmoe__Usage u = EPMOE__USAGE__INIT;
	uint32_t to = c->poll ? c->tok_off : 0;
	uint64_t xo = c->poll ? c->text_off : 0;
	char *chunk;

	if (to > q->n_toks)
		to = (uint32_t)q->n_toks;
	if (xo > q->len)
		xo = q->len;
	if ((chunk = malloc(q->len - xo + 1)) == NULL) {
		reply_error(c, EPMOE__STATUS__STATUS_NO_MEMORY, "out of memory", 0);
		return;
	}
	memcpy(chunk, q->text ? q->text + xo : "", q->len - xo);
	chunk[q->len - xo] = '\0';
	cr.request_id = q->id;
	cr.model = (char *)q->n->r->cfg.model_name;
	cr.tokens = q->toks + to;
	cr.n_tokens = q->n_toks - to;
	cr.text = chunk;
	cr.token_offset = to;
	cr.text_offset = xo;
	if (q->want_lps) {
		cr.logprobs = q->lps + to;
		cr.n_logprobs = q->n_toks - to;
	}
	if (to == 0 && q->prompt_text) {
		cr.prompt_text = q->prompt_text;
		cr.prompt_logprobs = q->plps;
		cr.n_prompt_logprobs = q->n_plps;
	}
	cr.done = q->done;
	cr.finish_reason = q->done ? q->finish : EPMOE__FINISH_REASON__FINISH_NONE;
	cr.status = wire_err_to_status(q->err);
	cr.error = q->error;
	if (q->done) {
		u.prompt_tokens = q->prompt_tokens;
		u.completion_tokens = (uint32_t)q->n_toks;
		u.cached_tokens_opt_case = EPMOE__USAGE__CACHED_TOKENS_OPT_CACHED_TOKENS;
		u.cached_tokens = q->cached_tokens;
		u.ttft_us = q->t_first > 0 ? (uint64_t)((q->t_first - q->t_submit) * 1e6) : 0;
		u.total_us = (uint64_t)((clock_now() - q->t_submit) * 1e6);
		cr.usage = &u;
	}
	rep.msg_case = EPMOE__CLIENT_REPLY__MSG_COMPLETION;
	rep.completion = &cr;
	ctx_reply(c, &rep);
	free(chunk);
	if (q->done)
		q->delivered = true;
}

/* Forgets q once its end was delivered and nobody waits on it. */
static void
maybe_forget(struct nngapi *n, struct nreq *q)
{
	if (q->done && q->delivered && q->waiters == NULL) {
		nreq_unlink(n, q);
		nreq_free(q);
	}
}

/* echo: the prompt (decoded: whatever form it came in) with the logprob
 * of each token and where its text starts. */
static void
on_prompt(struct nreq *q, const struct sched_event *ev)
{
	int32_t *ids = malloc((ev->n_toks ? ev->n_toks : 1) * sizeof(*ids));
	size_t *off = malloc((ev->n_toks ? ev->n_toks : 1) * sizeof(*off));

	if (ids == NULL || off == NULL ||
	        (q->plps = calloc(ev->n_toks ? ev->n_toks : 1, sizeof(*q->plps))) == NULL)
		goto out;
	for (size_t i = 0; i < ev->n_toks; i++)
		ids[i] = ev->toks[i].id;
	if (tok_decode(q->n->r->tok, ids, ev->n_toks, 0, &q->prompt_text, &q->prompt_len) != 0)
		goto out;
	gen_token_offsets(q->prompt_text, q->prompt_len, ev->toks, ev->n_toks, off);
	for (size_t i = 0; i < ev->n_toks; i++) {
		if ((q->plps[i] = lp_new(&ev->toks[i], off[i])) == NULL)
			break;
		q->n_plps = i + 1;
	}
out:
	free(ids);
	free(off);
}

/* Keeps the logprob record of the next generated token (its text starts
 * where the completion text ends now). */
static int
keep_lp(struct nreq *q, const struct sched_tok *t)
{
	if (q->n_toks == q->cap_toks || q->lps == NULL) {
		size_t nc = q->cap_toks ? 2 * q->cap_toks : 64;
		uint32_t *nt = realloc(q->toks, nc * sizeof(*nt));
		if (nt == NULL)
			return EPMOE_ENOMEM;
		q->toks = nt;
		Epmoe__TokenLogprob **nl = realloc(q->lps, nc * sizeof(*nl));
		if (nl == NULL)
			return EPMOE_ENOMEM;
		q->lps = nl;
		q->cap_toks = nc;
	}
	if ((q->lps[q->n_toks] = lp_new(t, q->len)) == NULL)
		return EPMOE_ENOMEM;
	return 0;
}

/* Wakes the contexts waiting on q that can now be answered. */
static void
wake_waiters(struct nreq *q)
{
	struct nctx **pp = &q->waiters;

	while (*pp) {
		struct nctx *c = *pp;
		bool ready = q->done ||
		        (c->poll && (q->n_toks > c->tok_off || q->len > c->text_off));
		if (!ready) {
			pp = &c->next_wait;
			continue;
		}
		*pp = c->next_wait;
		c->wait = NULL;
		answer(c, q);
	}
}

static void
on_event(const struct sched_event *ev, void *ud)
{
	struct nreq *q = ud;
	struct nngapi *n = q->n;

	switch (ev->kind) {
	case SCHED_EV_PROMPT:
		on_prompt(q, ev);
		return;
	case SCHED_EV_TOKEN:
		if (ev->n_toks && q->want_lps && keep_lp(q, &ev->toks[0]) != 0)
			break;
		if (ev->text_len) {
			if (q->len + ev->text_len + 1 > q->cap) {
				size_t nc = (q->len + ev->text_len + 1) * 2;
				char *t = realloc(q->text, nc);
				if (t == NULL)
					break;
				q->text = t;
				q->cap = nc;
			}
			memcpy(q->text + q->len, ev->text, ev->text_len);
			q->len += ev->text_len;
			q->text[q->len] = '\0';
		}
		if (ev->n_toks) {
			if (q->n_toks == q->cap_toks) {
				size_t nc = q->cap_toks ? 2 * q->cap_toks : 64;
				uint32_t *t = realloc(q->toks, nc * sizeof(*t));
				if (t == NULL)
					break;
				q->toks = t;
				q->cap_toks = nc;
			}
			q->toks[q->n_toks++] = (uint32_t)ev->toks[0].id;
		}
		if (q->t_first == 0)
			q->t_first = clock_now();
		break;
	case SCHED_EV_DONE:
		q->done = true;
		q->finish = strcmp(ev->finish_reason, "stop") == 0 ?
		        EPMOE__FINISH_REASON__FINISH_STOP : EPMOE__FINISH_REASON__FINISH_LENGTH;
		q->prompt_tokens = ev->prompt_tokens;
		q->cached_tokens = ev->cached_tokens;
		sched_req_free(q->sreq);
		q->sreq = NULL;
		break;
	case SCHED_EV_ERROR:
		q->done = true;
		q->err = ev->err;
		q->finish = ev->err == EPMOE_ECANCELED ? EPMOE__FINISH_REASON__FINISH_CANCELLED :
		        EPMOE__FINISH_REASON__FINISH_ERROR;
		snprintf(q->error, sizeof(q->error), "%s", ev->message);
		sched_req_free(q->sreq);
		q->sreq = NULL;
		break;
	}
	wake_waiters(q);
	if (q->done && n->closing)
		q->delivered = true;
	maybe_forget(n, q);
}

void
nngapi_gen_req(const Epmoe__CompletionRequest *cr, struct gen_msg *msgs,
        struct gen_req *q)
{
	gen_req_init(q, cr->n_messages ? GEN_CHAT : GEN_COMPLETION);
	q->model = cr->model;
	if (cr->n_prompt_tokens) {
		q->ids = cr->prompt_tokens;
		q->n_ids = cr->n_prompt_tokens;
	} else if (cr->n_messages) {
		for (size_t i = 0; i < cr->n_messages; i++) {
			msgs[i].role = cr->messages[i]->role;
			msgs[i].content = cr->messages[i]->content;
		}
		q->msgs = msgs;
		q->n_msgs = cr->n_messages;
	} else {
		q->text = cr->prompt ? cr->prompt : "";
		q->text_len = strlen(q->text);
	}
	q->has_max_tokens = cr->max_tokens != 0;
	q->max_tokens = cr->max_tokens;
	q->has_temperature = cr->temperature_opt_case ==
	        EPMOE__COMPLETION_REQUEST__TEMPERATURE_OPT_TEMPERATURE;
	q->temperature = cr->temperature;
	q->has_top_p = cr->top_p_opt_case == EPMOE__COMPLETION_REQUEST__TOP_P_OPT_TOP_P;
	q->top_p = cr->top_p;
	q->has_top_k = cr->top_k != 0;
	q->top_k = cr->top_k;
	q->has_min_p = cr->min_p != 0;
	q->min_p = cr->min_p;
	q->has_seed = cr->seed_opt_case == EPMOE__COMPLETION_REQUEST__SEED_OPT_SEED;
	q->seed = cr->seed;
	q->stop = (const char *const *)cr->stop;
	q->n_stop = cr->n_stop;
	q->routing = cr->routing_policy;
	q->echo = cr->echo;
	q->has_logprobs = cr->logprobs_opt_case ==
	        EPMOE__COMPLETION_REQUEST__LOGPROBS_OPT_LOGPROBS;
	q->logprobs = cr->logprobs;
	q->ignore_eos = cr->ignore_eos;
}

static void
handle_complete(struct nctx *c, const Epmoe__CompletionRequest *cr)
{
	struct nngapi *n = c->n;
	struct router *r = n->r;
	struct gen_msg *msgs = NULL;
	struct gen_req gq;
	struct gen_err ge;
	struct nreq *q;

	if ((q = calloc(1, sizeof(*q))) == NULL ||
	        (msgs = calloc(cr->n_messages ? cr->n_messages : 1, sizeof(*msgs))) == NULL) {
		free(q);
		stats_count_reject(r->stats, EPMOE_ENOMEM);
		reply_error(c, EPMOE__STATUS__STATUS_NO_MEMORY, "out of memory", 0);
		return;
	}
	q->n = n;
	if (cr->request_id && cr->request_id[0] && strlen(cr->request_id) < sizeof(q->id) &&
	        !nreq_find(n, cr->request_id))
		snprintf(q->id, sizeof(q->id), "%s", cr->request_id);
	else
		snprintf(q->id, sizeof(q->id), "nng-%llx-%llu", (unsigned long long)r->boot_id,
		        (unsigned long long)++n->next_id);
	q->stream = cr->stream;
	q->want_lps = cr->logprobs_opt_case == EPMOE__COMPLETION_REQUEST__LOGPROBS_OPT_LOGPROBS;
	q->t_submit = q->t_last_poll = clock_now();
	nngapi_gen_req(cr, msgs, &gq);
	if (gen_submit(r, &gq, on_event, q, &q->sreq, &ge) != 0) {
		free(msgs);
		free(q);
		reply_error(c, wire_err_to_status(ge.code), ge.message,
		        ge.code == EPMOE_EBUSY ? 1000 : ge.code == EPMOE_EUNAVAIL ? 2000 : 0);
		return;
	}
	free(msgs);
	q->next = n->reqs;
	n->reqs = q;
	if (q->stream) {
		/* answer at once with the id; the client polls */
		Epmoe__ClientReply rep = EPMOE__CLIENT_REPLY__INIT;
		Epmoe__CompletionResponse resp = EPMOE__COMPLETION_RESPONSE__INIT;
		resp.request_id = q->id;
		resp.model = (char *)r->cfg.model_name;
		rep.msg_case = EPMOE__CLIENT_REPLY__MSG_COMPLETION;
		rep.completion = &resp;
		ctx_reply(c, &rep);
		return;
	}
	c->state = CTX_HELD;
	c->wait = q;
	c->poll = false;
	c->deadline = 0;
	c->next_wait = q->waiters;
	q->waiters = c;
}

static void
handle_poll(struct nctx *c, const Epmoe__PollRequest *pr)
{
	struct nreq *q = pr->request_id ? nreq_find(c->n, pr->request_id) : NULL;

	if (q == NULL || !q->stream) {
		reply_error(c, EPMOE__STATUS__STATUS_NOT_FOUND,
		        "unknown request id (finished and collected, expired, or never streamed)", 0);
		return;
	}
	q->t_last_poll = clock_now();
	c->poll = true;
	c->tok_off = pr->token_offset;
	c->text_off = pr->text_offset;
	if (q->done || q->n_toks > c->tok_off || q->len > c->text_off || pr->wait_ms == 0) {
		answer(c, q);
		maybe_forget(c->n, q);
		return;
	}
	c->state = CTX_HELD;
	c->wait = q;
	c->deadline = clock_now() + (pr->wait_ms > MAX_WAIT_MS ? MAX_WAIT_MS : pr->wait_ms) / 1000.0;
	c->next_wait = q->waiters;
	q->waiters = c;
}

static void
handle_cancel(struct nctx *c, const Epmoe__CancelRequest *cr)
{
	Epmoe__ClientReply rep = EPMOE__CLIENT_REPLY__INIT;
	Epmoe__CancelReply cancel = EPMOE__CANCEL_REPLY__INIT;
	struct nreq *q = cr->request_id ? nreq_find(c->n, cr->request_id) : NULL;

	cancel.request_id = cr->request_id;
	if (q && !q->done && q->sreq) {
		sched_cancel(q->sreq);
		cancel.status = EPMOE__STATUS__STATUS_OK;
	} else {
		cancel.status = EPMOE__STATUS__STATUS_NOT_FOUND;
	}
	rep.msg_case = EPMOE__CLIENT_REPLY__MSG_CANCEL;
	rep.cancel = &cancel;
	ctx_reply(c, &rep);
}

static void
handle_models(struct nctx *c)
{
	struct router *r = c->n->r;
	const struct model_hparams *hp = &r->model->hp;
	Epmoe__ClientReply rep = EPMOE__CLIENT_REPLY__INIT;
	Epmoe__ModelsReply mr = EPMOE__MODELS_REPLY__INIT;
	Epmoe__ModelInfo mi = EPMOE__MODEL_INFO__INIT, *mis[1] = { &mi };
	static char *pols[] = { "native", "topk", "capacity", "expert_choice", "sinkhorn",
		"ssr", "usmoe", "lossfree" };

	mi.id = (char *)r->cfg.model_name;
	mi.arch = (char *)model_arch_name(hp->arch);
	mi.n_layers = hp->n_layer;
	mi.n_experts = hp->n_expert;
	mi.n_experts_used = hp->n_expert_used;
	mi.n_vocab = hp->n_vocab;
	mi.n_ctx = engine_n_ctx(r->engine);
	mi.dim = hp->n_embd;
	mi.model_hash = r->model->identity;
	mi.routing_policies = pols;
	mi.n_routing_policies = sizeof(pols) / sizeof(pols[0]);
	mr.models = mis;
	mr.n_models = 1;
	rep.msg_case = EPMOE__CLIENT_REPLY__MSG_MODELS;
	rep.models = &mr;
	ctx_reply(c, &rep);
}

static void
handle_health(struct nctx *c)
{
	Epmoe__ClientReply rep = EPMOE__CLIENT_REPLY__INIT;
	Epmoe__HealthReply hr = EPMOE__HEALTH_REPLY__INIT;
	struct stats_health h;

	stats_health(c->n->r, &h);
	hr.ok = h.ok;
	hr.status = (char *)h.status;
	hr.requests_running = h.running;
	hr.requests_queued = h.waiting;
	hr.workers_total = h.workers_total;
	hr.workers_live = h.workers_live;
	rep.msg_case = EPMOE__CLIENT_REPLY__MSG_HEALTH;
	rep.health = &hr;
	ctx_reply(c, &rep);
}

static void
handle_tokenize(struct nctx *c, const Epmoe__TokenizeRequest *tr)
{
	struct router *r = c->n->r;
	Epmoe__ClientReply rep = EPMOE__CLIENT_REPLY__INIT;
	Epmoe__TokenizeReply t = EPMOE__TOKENIZE_REPLY__INIT;
	int32_t *ids = NULL;
	size_t n = 0;
	const char *text = tr->text ? tr->text : "";

	if (router_tokenize(r, text, strlen(text), tr->add_special, tr->parse_special,
	            &ids, &n) != 0) {
		reply_error(c, EPMOE__STATUS__STATUS_INTERNAL, "tokenization failed", 0);
		return;
	}
	char **pieces = calloc(n ? n : 1, sizeof(char *));
	uint32_t *u = malloc((n ? n : 1) * sizeof(uint32_t));
	bool ok = pieces && u;
	for (size_t i = 0; ok && i < n; i++) {
		char buf[256];
		int l = tok_piece(r->tok, ids[i], buf, sizeof(buf), TOK_DECODE_SPECIAL);
		u[i] = (uint32_t)ids[i];
		ok = (pieces[i] = strndup(buf, l < 0 ? 0 : (size_t)l)) != NULL;
	}
	if (ok) {
		t.tokens = u;
		t.n_tokens = n;
		t.pieces = pieces;
		t.n_pieces = n;
		rep.msg_case = EPMOE__CLIENT_REPLY__MSG_TOKENIZE;
		rep.tokenize = &t;
		ctx_reply(c, &rep);
	} else {
		reply_error(c, EPMOE__STATUS__STATUS_NO_MEMORY, "out of memory", 0);
	}
	for (size_t i = 0; pieces && i < n; i++)
		free(pieces[i]);
	free(pieces);
	free(u);
	free(ids);
}

static void
handle_detokenize(struct nctx *c, const Epmoe__DetokenizeRequest *dr)
{
	struct router *r = c->n->r;
	Epmoe__ClientReply rep = EPMOE__CLIENT_REPLY__INIT;
	Epmoe__DetokenizeReply d = EPMOE__DETOKENIZE_REPLY__INIT;
	int32_t *ids = malloc((dr->n_tokens ? dr->n_tokens : 1) * sizeof(int32_t));
	char *text = NULL;
	size_t len;

	if (ids == NULL) {
		reply_error(c, EPMOE__STATUS__STATUS_NO_MEMORY, "out of memory", 0);
		return;
	}
	for (size_t i = 0; i < dr->n_tokens; i++)
		ids[i] = dr->tokens[i] > INT32_MAX ? -1 : (int32_t)dr->tokens[i];
	if (tok_decode(r->tok, ids, dr->n_tokens, 0, &text, &len) != 0) {
		free(ids);
		reply_error(c, EPMOE__STATUS__STATUS_INVALID, "a token id is outside the vocabulary", 0);
		return;
	}
	d.text = text;
	rep.msg_case = EPMOE__CLIENT_REPLY__MSG_DETOKENIZE;
	rep.detokenize = &d;
	ctx_reply(c, &rep);
	free(text);
	free(ids);
}

/* A message arrived on c. */
static void
handle_msg(struct nctx *c, nng_msg *m)
{
	ProtobufCMessage *hdr = NULL;
	Epmoe__ClientMsg *cm;
	int rc;

	static struct log_limit bad_lim = LOG_LIMIT_INIT, key_lim = LOG_LIMIT_INIT;
	struct router *r = c->n->r;

	rc = wire_nng_unpack(m, WIRE_CLIENT, &epmoe__client_msg__descriptor, &hdr, NULL, NULL);
	if (rc) {
		char msg[200];
		snprintf(msg, sizeof(msg), "malformed request: %s", wire_errmsg());
		log_warn_limited(&bad_lim, "nng api: %s (%zu bytes)", msg, nng_msg_len(m));
		nng_msg_free(m);
		reply_error(c, rc == EPMOE_EPROTO ? EPMOE__STATUS__STATUS_PROTOCOL :
		        EPMOE__STATUS__STATUS_INVALID, msg, 0);
		return;
	}
	cm = (Epmoe__ClientMsg *)hdr;
	if (apikeys_count(r->apikeys) > 0 && cm->msg_case != EPMOE__CLIENT_MSG__MSG_HEALTH &&
	        !apikeys_match(r->apikeys, cm->api_key, strlen(cm->api_key))) {
		log_warn_limited(&key_lim, "nng api: request refused: %s API key",
		        cm->api_key[0] ? "wrong" : "no");
		stats_count_reject(r->stats, EPMOE_EAUTH);
		reply_error(c, EPMOE__STATUS__STATUS_UNAUTHORIZED,
		        cm->api_key[0] ? "incorrect API key provided" :
		                         "this server needs an API key (api_key)", 0);
		protobuf_c_message_free_unpacked(hdr, NULL);
		nng_msg_free(m);
		return;
	}
	switch (cm->msg_case) {
	case EPMOE__CLIENT_MSG__MSG_COMPLETE: handle_complete(c, cm->complete); break;
	case EPMOE__CLIENT_MSG__MSG_POLL: handle_poll(c, cm->poll); break;
	case EPMOE__CLIENT_MSG__MSG_CANCEL: handle_cancel(c, cm->cancel); break;
	case EPMOE__CLIENT_MSG__MSG_MODELS: handle_models(c); break;
	case EPMOE__CLIENT_MSG__MSG_HEALTH: handle_health(c); break;
	case EPMOE__CLIENT_MSG__MSG_TOKENIZE: handle_tokenize(c, cm->tokenize); break;
	case EPMOE__CLIENT_MSG__MSG_DETOKENIZE: handle_detokenize(c, cm->detokenize); break;
	default:
		reply_error(c, EPMOE__STATUS__STATUS_INVALID, "empty or unknown request", 0);
	}
	protobuf_c_message_free_unpacked(hdr, NULL);
	nng_msg_free(m);
}

static void
on_async(uv_async_t *h)
{
	struct nngapi *n = h->data;
	struct nctx *c;

	pthread_mutex_lock(&n->mu);
	c = n->done_head;
	n->done_head = NULL;
	pthread_mutex_unlock(&n->mu);
	while (c) {
		struct nctx *next = c->next_done;
		if (c->state == CTX_RECV) {
			if (c->rv == 0) {
				handle_msg(c, nng_aio_get_msg(c->aio));
			} else if (c->rv != NNG_ECLOSED && c->rv != NNG_ECANCELED) {
				ctx_recv(c);
			} else {
				c->state = CTX_DEAD;
			}
		} else if (c->state == CTX_SEND) {
			if (c->rv != 0)
				nng_msg_free(nng_aio_get_msg(c->aio));
			if (c->rv == NNG_ECLOSED || c->rv == NNG_ECANCELED)
				c->state = CTX_DEAD;
			else
				ctx_recv(c);
		}
		c = next;
	}
}

/* Times out held polls and forgets streams nobody polls any more. */
static void
on_timer(uv_timer_t *t)
{
	struct nngapi *n = t->data;
	double now = clock_now();

	for (struct nreq *q = n->reqs, *next; q; q = next) {
		next = q->next;
		for (struct nctx **pp = &q->waiters; *pp;) {
			struct nctx *c = *pp;
			if (c->poll && c->deadline > 0 && now >= c->deadline) {
				*pp = c->next_wait;
				c->wait = NULL;
				answer(c, q);
			} else {
				pp = &c->next_wait;
			}
		}
		if (q->stream && q->waiters == NULL && now - q->t_last_poll > STREAM_IDLE_S) {
			/* abandoned: stop it and forget it when it ends */
			q->delivered = true;
			if (!q->done && q->sreq)
				sched_cancel(q->sreq);
			maybe_forget(n, q);
		}
	}
}

int
nngapi_start(struct router *r, struct nngapi **out)
{
	struct nngapi *n;
	int rv;

	if ((n = calloc(1, sizeof(*n))) == NULL)
		return EPMOE_ENOMEM;
	n->r = r;
	pthread_mutex_init(&n->mu, NULL);
	if ((rv = nng_rep0_open(&n->sock)) != 0)
		goto fail;
	nng_socket_set_size(n->sock, NNG_OPT_RECVMAXSZ, 16u << 20);
	if ((rv = nng_listener_create(&n->listener, n->sock, r->cfg.nng_url)) != 0)
		goto fail;
	nng_listener_set_size(n->listener, NNG_OPT_RECVMAXSZ, 16u << 20);
	if ((rv = nng_listener_start(n->listener, 0)) != 0)
		goto fail;
	uv_async_init(r->loop, &n->async, on_async);
	n->async.data = n;
	uv_timer_init(r->loop, &n->timer);
	n->timer.data = n;
	uv_timer_start(&n->timer, on_timer, 50, 50);
	for (int i = 0; i < N_CTX; i++) {
		struct nctx *c = &n->ctxs[i];
		c->n = n;
		if ((rv = nng_ctx_open(&c->ctx, n->sock)) != 0 ||
		        (rv = nng_aio_alloc(&c->aio, on_aio, c)) != 0)
			goto fail_started;
		ctx_recv(c);
	}
	*out = n;
	return 0;
fail_started:
	log_error("nng api: %s", nng_strerror(rv));
	nngapi_stop(n);
	*out = n; /* the caller frees it after the loop closed the handles */
	return wire_nng_err(rv);
fail:
	log_error("nng api: cannot listen on %s: %s", r->cfg.nng_url, nng_strerror(rv));
	netsock_close_bounded(n->sock, 2000);
	pthread_mutex_destroy(&n->mu);
	free(n);
	return wire_nng_err(rv);
}

void
nngapi_stop(struct nngapi *n)
{
	if (n == NULL || n->closing)
		return;
	n->closing = true;
	for (int i = 0; i < N_CTX; i++)
		if (n->ctxs[i].aio)
			nng_aio_stop(n->ctxs[i].aio);
	netsock_close_bounded(n->sock, 2000);
	for (int i = 0; i < N_CTX; i++) {
		if (n->ctxs[i].aio) {
			if (n->ctxs[i].state == CTX_SEND)
				nng_msg_free(nng_aio_get_msg(n->ctxs[i].aio));
			nng_aio_free(n->ctxs[i].aio);
			n->ctxs[i].aio = NULL;
		}
	}
	/* running requests end with their final event (the scheduler stops
	 * next); nobody waits for them any more */
	for (struct nreq *q = n->reqs, *next; q; q = next) {
		next = q->next;
		q->waiters = NULL;
		q->delivered = true;
		if (!q->done && q->sreq)
			sched_cancel(q->sreq);
		maybe_forget(n, q);
	}
	uv_timer_stop(&n->timer);
	uv_close((uv_handle_t *)&n->timer, NULL);
	uv_close((uv_handle_t *)&n->async, NULL);
}

void
nngapi_free(struct nngapi *n)
{
	if (n == NULL)
		return;
	nngapi_stop(n);
	while (n->reqs) {
		struct nreq *q = n->reqs;
		n->reqs = q->next;
		nreq_free(q);
	}
	pthread_mutex_destroy(&n->mu);
	free(n);
}
