/* Continuous batching on the engine thread.  See sched.h for the contract.
 *
 * The engine thread owns every running request's state (sequence, sampler,
 * detokenizer, stop filter).  The loop thread only submits, cancels (an
 * atomic flag) and receives events.  Events travel through a mutex-guarded
 * list and one uv_async_t. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "err.h"
#include "log.h"
#include "route.h"
#include "scheduler.h"

enum req_state { REQ_WAITING, REQ_RUNNING, REQ_FINISHED };

struct sched_req {
	uint64_t id;
	struct sched *s;
	struct sched_req_params p;
	char *routing;
	enum req_state state;
	_Atomic int cancelled;
	/* engine-thread state */
	struct eng_seq *seq;
	struct route_policy *policy;
	uint32_t n_fed;        /* prompt tokens already in the cache */
	uint32_t n_gen;        /* tokens generated */
	int32_t next;          /* the token to feed in the next step */
	struct sampler smp;
	struct tok_stream ts;
	struct sample_stop stop;
	bool smp_ok, ts_ok, stop_ok;
	size_t kv_bytes;
	double t_submit, t_admit, t_first, t_last;
	struct sched_req *next_q;  /* wait queue / run list */
};

/* A cached routing policy per distinct spec (engine thread only). */
struct policy_ent {
	char *spec;
	struct route_policy *p;
	struct policy_ent *next;
};

struct sched {
	uv_loop_t *loop;
	struct engine *e;
	const struct tok *tk;
	struct sched_cfg cfg;
	uint32_t n_vocab, n_ctx;
	pthread_t thread;
	bool thread_started;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;
	struct sched_req *inbox_head, *inbox_tail; /* submitted, not yet seen */
	uint32_t n_inbox;
	_Atomic int wake_pending;

	/* engine thread */
	struct sched_req *wait_head, *wait_tail;
	uint32_t n_wait;
	struct sched_req **run;
	uint32_t n_run, cap_run;
	struct policy_ent *policies;
	float *logits;
	size_t cap_logits;
	struct eng_item *items;
	struct sched_req **item_req;
	size_t cap_items;
	int32_t *feed;     /* decode tokens of the step */

	/* events to the loop */
	uv_async_t async;
	pthread_mutex_t ev_mu;
	struct sched_event *ev_head, *ev_tail;
	struct sched_event *pend_head, *pend_tail; /* engine thread's */

	struct sched_observer obs;
	uint64_t next_id;
	/* stats */
	_Atomic uint32_t st_running, st_waiting;
	_Atomic uint64_t st_total, st_failed, st_cancelled, st_prompt, st_gen,
	        st_steps, st_kv;
};

void
sched_cfg_default(struct sched_cfg *c)
{
	c->max_step_tokens = 512;
	c->max_running = 32;
	c->max_waiting = 64;
	c->kv_budget_bytes = (size_t)4 << 30;
}

/* ---- events ---- */

static void
event_free(struct sched_event *ev)
{
	if (ev == NULL)
		return;
	free(ev->text);
	for (size_t i = 0; i < ev->n_toks; i++) {
		free(ev->toks[i].text);
		free(ev->toks[i].top);
	}
	free(ev->toks);
	free(ev);
}

/* Queues an event on the engine thread's private list.  Events reach the
 * loop only in flush_events(), at the end of a round, so the engine thread
 * never touches a request after the loop could have freed it. */
static void
post(struct sched *s, struct sched_event *ev)
{
	ev->next = NULL;
	if (s->pend_tail)
		s->pend_tail->next = ev;
	else
		s->pend_head = ev;
	s->pend_tail = ev;
}

static void
flush_events(struct sched *s)
{
	if (s->pend_head == NULL)
		return;
	pthread_mutex_lock(&s->ev_mu);
	if (s->ev_tail)
		s->ev_tail->next = s->pend_head;
	else
		s->ev_head = s->pend_head;
	s->ev_tail = s->pend_tail;
	pthread_mutex_unlock(&s->ev_mu);
	s->pend_head = s->pend_tail = NULL;
	uv_async_send(&s->async);
}

static void
on_async(uv_async_t *h)
{
	struct sched *s = h->data;
	struct sched_event *ev;

	pthread_mutex_lock(&s->ev_mu);
	ev = s->ev_head;
	s->ev_head = s->ev_tail = NULL;
	pthread_mutex_unlock(&s->ev_mu);
	while (ev) {
		struct sched_event *n = ev->next;
		ev->req->p.cb(ev, ev->req->p.ud);
		event_free(ev);
		ev = n;
	}
}

static struct sched_event *
event_new(struct sched_req *r, enum sched_ev_kind k)
{
	struct sched_event *ev = calloc(1, sizeof(*ev));
	if (ev) {
		ev->kind = k;
		ev->req = r;
	}
	return ev;
}

/* ---- request lifecycle (engine thread) ---- */

static void
req_release_engine_state(struct sched *s, struct sched_req *r)
{
	eng_seq_free(r->seq);
	r->seq = NULL;
	if (r->smp_ok)
		sampler_fini(&r->smp);
	if (r->ts_ok)
		tok_stream_fini(&r->ts);
	if (r->stop_ok)
		sample_stop_fini(&r->stop);
	r->smp_ok = r->ts_ok = r->stop_ok = false;
	if (r->kv_bytes) {
		atomic_fetch_sub(&s->st_kv, r->kv_bytes);
		r->kv_bytes = 0;
	}
}

/* Ends r with its final event (DONE when status == 0). */
static void
finish(struct sched *s, struct sched_req *r, int status, const char *reason,
        const char *msg)
{
	struct sched_event *ev = event_new(r, status ? SCHED_EV_ERROR : SCHED_EV_DONE);

	req_release_engine_state(s, r);
	r->state = REQ_FINISHED;
	if (status == 499)
		atomic_fetch_add(&s->st_cancelled, 1);
	else if (status)
		atomic_fetch_add(&s->st_failed, 1);
	if (status == 0 && s->obs.e2e)
		s->obs.e2e(s->obs.ud, clock_now() - r->t_submit);
	if (ev == NULL) {
		/* cannot even say it failed: log; the client times out */
		log_error("sched: out of memory finishing request %llu",
		        (unsigned long long)r->id);
		return;
	}
	if (status) {
		ev->status = status;
		snprintf(ev->message, sizeof(ev->message), "%s", msg ? msg : "");
	} else {
		ev->finish_reason = reason;
	}
	ev->prompt_tokens = (uint32_t)r->p.n_prompt;
	ev->completion_tokens = r->n_gen;
	post(s, ev);
}

static struct route_policy *
policy_get(struct sched *s, const char *spec, char *err, size_t err_len)
{
	struct policy_ent *pe;
	struct route_policy *p;

	if (spec == NULL)
		return engine_policy(s->e);
	for (pe = s->policies; pe; pe = pe->next)
		if (strcmp(pe->spec, spec) == 0)
			return pe->p;
	if (engine_policy_new(s->e, spec, &p, err, err_len) != 0)
		return NULL;
	if ((pe = calloc(1, sizeof(*pe))) == NULL || (pe->spec = strdup(spec)) == NULL) {
		free(pe);
		route_policy_free(p);
		return NULL;
	}
	pe->p = p;
	pe->next = s->policies;
	s->policies = pe;
	return p;
}

/* Sets up the engine-side state of a request; 0 or an error status. */
static int
admit(struct sched *s, struct sched_req *r)
{
	char err[256] = "";

	if (eng_seq_new(s->e, &r->seq) != 0 ||
	        eng_seq_reserve(s->e, r->seq, (uint32_t)r->p.n_prompt + 1) != 0) {
		finish(s, r, 503, NULL, "out of memory for the KV cache");
		return -1;
	}
	if ((r->policy = policy_get(s, r->routing, err, sizeof(err))) == NULL) {
		finish(s, r, 400, NULL, err[0] ? err : "invalid routing policy");
		return -1;
	}
	if (sampler_init(&r->smp, &r->p.sample) != 0) {
		finish(s, r, 400, NULL, "invalid sampling parameters");
		return -1;
	}
	r->smp_ok = true;
	if (tok_stream_init(&r->ts, s->tk, 0) != 0) {
		finish(s, r, 503, NULL, "out of memory");
		return -1;
	}
	r->ts_ok = true;
	sample_stop_init(&r->stop, (const char *const *)r->p.stop, r->p.n_stop);
	r->stop_ok = true;
	r->state = REQ_RUNNING;
	r->t_admit = clock_now();
	if (s->obs.queue)
		s->obs.queue(s->obs.ud, r->t_admit - r->t_submit);
	return 0;
}

static int
grow_items(struct sched *s, size_t n)
{
	if (n <= s->cap_items)
		return 0;
	struct eng_item *it = realloc(s->items, n * sizeof(*it));
	if (it == NULL)
		return EPMOE_ENOMEM;
	s->items = it;
	struct sched_req **ir = realloc(s->item_req, n * sizeof(*ir));
	if (ir == NULL)
		return EPMOE_ENOMEM;
	s->item_req = ir;
	int32_t *f = realloc(s->feed, n * sizeof(*f));
	if (f == NULL)
		return EPMOE_ENOMEM;
	s->feed = f;
	s->cap_items = n;
	return 0;
}

static int
grow_logits(struct sched *s, size_t rows)
{
	size_t n = rows * s->n_vocab;
	if (n <= s->cap_logits)
		return 0;
	float *l = realloc(s->logits, n * sizeof(float));
	if (l == NULL)
		return EPMOE_ENOMEM;
	s->logits = l;
	s->cap_logits = n;
	return 0;
}

/* Fills a token's text and top alternatives. */
static void
fill_tok(struct sched *s, struct sched_tok *t, int32_t id, float lp,
        const float *row, int32_t n_top)
{
	char buf[256];
	int n = tok_piece(s->tk, id, buf, sizeof(buf), 0);

	t->id = id;
	t->logprob = lp;
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	t->text = malloc((size_t)n + 1);
	if (t->text) {
		memcpy(t->text, buf, (size_t)n);
		t->text[n] = '\0';
		t->text_len = (size_t)n;
	}
	if (n_top > 0 && row) {
		int32_t ids[SCHED_MAX_TOP];
		float lps[SCHED_MAX_TOP];
		size_t k = sample_top_logprobs(row, s->n_vocab, (size_t)n_top, ids, lps);
		t->top = calloc(k ? k : 1, sizeof(*t->top));
		if (t->top) {
			for (size_t i = 0; i < k; i++) {
				int m = tok_piece(s->tk, ids[i], t->top[i].text,
				        sizeof(t->top[i].text), 0);
				t->top[i].id = ids[i];
				t->top[i].logprob = lps[i];
				if (m < 0)
					m = 0;
				if ((size_t)m >= sizeof(t->top[i].text))
					m = sizeof(t->top[i].text) - 1;
				t->top[i].text_len = (uint8_t)m;
			}
			t->n_top = (uint32_t)k;
		}
	}
}

/* echo: the prompt with the logprob of each token under the previous
 * position's logits (rows [0, n_prompt) of the prefill). */
static void
emit_prompt(struct sched *s, struct sched_req *r, const float *rows)
{
	struct sched_event *ev = event_new(r, SCHED_EV_PROMPT);
	size_t n = r->p.n_prompt;

	if (ev == NULL || (ev->toks = calloc(n, sizeof(*ev->toks))) == NULL) {
		free(ev);
		return;
	}
	ev->n_toks = n;
	for (size_t i = 0; i < n; i++) {
		const float *prev = i ? rows + (i - 1) * s->n_vocab : NULL;
		float lp = prev ? sample_logprob(prev, s->n_vocab, r->p.prompt[i]) : NAN;
		fill_tok(s, &ev->toks[i], r->p.prompt[i], lp, prev,
		        r->p.logprobs > 0 ? r->p.logprobs : 0);
	}
	post(s, ev);
}

/* Samples the next token of r from row; emits it; finishes r when done.
 * Returns 1 if r finished. */
static int
sample_and_emit(struct sched *s, struct sched_req *r, const float *row)
{
	float lp = 0;
	int32_t id = sampler_next(&r->smp, row, s->n_vocab, &lp);
	const char *piece, *out;
	size_t plen, olen;
	double t = clock_now();
	int stopped = 0;

	if (id < 0) {
		finish(s, r, 500, NULL, "sampling failed");
		return 1;
	}
	if (r->n_gen == 0) {
		r->t_first = t;
		if (s->obs.ttft)
			s->obs.ttft(s->obs.ud, t - r->t_submit);
	} else if (s->obs.itl) {
		s->obs.itl(s->obs.ud, t - r->t_last);
	}
	r->t_last = t;
	r->n_gen++;
	atomic_fetch_add(&s->st_gen, 1);
	if (!r->p.ignore_eos && tok_is_eog(s->tk, id)) {
		const char *tail;
		size_t tl;
		/* what the stop filter still holds goes out first */
		if (tok_stream_flush(&r->ts, &tail, &tl) == 0 && tl &&
		        sample_stop_push(&r->stop, tail, tl, &out, &olen) >= 0 && olen) {
			struct sched_event *ev = event_new(r, SCHED_EV_TOKEN);
			if (ev && (ev->text = malloc(olen + 1)) != NULL) {
				memcpy(ev->text, out, olen);
				ev->text_len = olen;
				post(s, ev);
			} else {
				free(ev);
			}
		}
		sample_stop_flush(&r->stop, &out, &olen);
		if (olen) {
			struct sched_event *ev = event_new(r, SCHED_EV_TOKEN);
			if (ev && (ev->text = malloc(olen + 1)) != NULL) {
				memcpy(ev->text, out, olen);
				ev->text_len = olen;
				post(s, ev);
			} else {
				free(ev);
			}
		}
		finish(s, r, 0, "stop", NULL);
		return 1;
	}
	if (tok_stream_push(&r->ts, id, &piece, &plen) != 0) {
		piece = "";
		plen = 0;
	}
	bool last = r->n_gen >= r->p.max_tokens;
	if (last) {
		/* the end: release what the detokenizer holds back (piece is
		 * borrowed from the stream: copy it before the flush) */
		const char *tail;
		size_t tl;
		char *joined = malloc(plen + 1);
		if (joined)
			memcpy(joined, piece, plen);
		if (joined && tok_stream_flush(&r->ts, &tail, &tl) == 0 && tl) {
			char *j2 = realloc(joined, plen + tl + 1);
			if (j2) {
				memcpy(j2 + plen, tail, tl);
				joined = j2;
				plen += tl;
			}
		}
		if (joined)
			piece = joined;
		stopped = sample_stop_push(&r->stop, piece, plen, &out, &olen);
		free(joined);
	} else {
		stopped = sample_stop_push(&r->stop, piece, plen, &out, &olen);
	}
	struct sched_event *ev = event_new(r, SCHED_EV_TOKEN);
	if (ev == NULL) {
		finish(s, r, 500, NULL, "out of memory");
		return 1;
	}
	/* out is borrowed from the stop filter: copy it before the flush */
	if ((ev->text = malloc(olen + 1)) != NULL) {
		memcpy(ev->text, out, olen);
		ev->text_len = olen;
		ev->text[olen] = '\0';
	}
	if (stopped == 0 && last) {
		const char *flushed;
		size_t hold_len;
		sample_stop_flush(&r->stop, &flushed, &hold_len);
		char *nt = ev->text ? realloc(ev->text, olen + hold_len + 1) : NULL;
		if (nt) {
			memcpy(nt + olen, flushed, hold_len);
			ev->text = nt;
			ev->text_len = olen + hold_len;
			nt[ev->text_len] = '\0';
		}
	}
	if (r->p.logprobs >= 0 && (ev->toks = calloc(1, sizeof(*ev->toks))) != NULL) {
		ev->n_toks = 1;
		fill_tok(s, &ev->toks[0], id, lp, row, r->p.logprobs);
	}
	post(s, ev);
	if (stopped == 1) {
		finish(s, r, 0, "stop", NULL);
		return 1;
	}
	if (last) {
		finish(s, r, 0, "length", NULL);
		return 1;
	}
	r->next = id;
	return 0;
}

static void
remove_finished(struct sched *s)
{
	uint32_t k = 0;
	for (uint32_t i = 0; i < s->n_run; i++)
		if (s->run[i]->state != REQ_FINISHED)
			s->run[k++] = s->run[i];
	s->n_run = k;
	atomic_store(&s->st_running, k);
}

/* One scheduling round: cancel, admit, step, sample.  Returns 1 if there
 * was work. */
static int
round_once(struct sched *s)
{
	uint32_t n_items = 0, budget = s->cfg.max_step_tokens, rows = 0;
	size_t kv_used = atomic_load(&s->st_kv);
	int rc;

	/* cancellations */
	for (uint32_t i = 0; i < s->n_run; i++)
		if (atomic_load(&s->run[i]->cancelled))
			finish(s, s->run[i], 499, NULL, "cancelled by the client");
	remove_finished(s);
	for (struct sched_req **pp = &s->wait_head; *pp;) {
		struct sched_req *r = *pp;
		if (atomic_load(&r->cancelled)) {
			*pp = r->next_q;
			if (s->wait_tail == r) {
				s->wait_tail = NULL;
				for (struct sched_req *q = s->wait_head; q; q = q->next_q)
					s->wait_tail = q;
			}
			s->n_wait--;
			finish(s, r, 499, NULL, "cancelled by the client");
		} else {
			pp = &r->next_q;
		}
	}
	/* admission, in arrival order, while the KV budget allows */
	while (s->wait_head && s->n_run < s->cfg.max_running) {
		struct sched_req *r = s->wait_head;
		size_t need = engine_kv_bytes(s->e, (uint32_t)r->p.n_prompt + r->p.max_tokens);
		if (kv_used + need > s->cfg.kv_budget_bytes && s->n_run > 0)
			break;
		s->wait_head = r->next_q;
		if (s->wait_head == NULL)
			s->wait_tail = NULL;
		s->n_wait--;
		if (admit(s, r) != 0)
			continue;
		r->kv_bytes = need;
		kv_used += need;
		atomic_fetch_add(&s->st_kv, need);
		if (s->n_run == s->cap_run) {
			uint32_t nc = s->cap_run ? 2 * s->cap_run : 16;
			struct sched_req **nr = realloc(s->run, nc * sizeof(*nr));
			if (nr == NULL) {
				finish(s, r, 503, NULL, "out of memory");
				continue;
			}
			s->run = nr;
			s->cap_run = nc;
		}
		s->run[s->n_run++] = r;
	}
	atomic_store(&s->st_waiting, s->n_wait);
	atomic_store(&s->st_running, s->n_run);
	if (s->n_run == 0)
		return 0;
	if (grow_items(s, s->n_run) != 0)
		return 0;
	/* decode tokens first (latency), then prefill chunks in the budget */
	for (uint32_t i = 0; i < s->n_run; i++) {
		struct sched_req *r = s->run[i];
		if (r->n_fed < r->p.n_prompt)
			continue;
		if (eng_seq_reserve(s->e, r->seq, r->seq->n_pos + 1) != 0) {
			finish(s, r, 503, NULL, "out of memory for the KV cache");
			continue;
		}
		s->feed[n_items] = r->next;
		s->items[n_items] = (struct eng_item){ .seq = r->seq,
			.tokens = &s->feed[n_items], .n_tokens = 1,
			.logits = ENG_LOGITS_LAST, .policy = r->policy, .decode = true };
		s->item_req[n_items++] = r;
		rows++;
		budget = budget > 0 ? budget - 1 : 0;
	}
	for (uint32_t i = 0; i < s->n_run; i++) {
		struct sched_req *r = s->run[i];
		uint32_t left, chunk;
		bool want_all;
		if (r->state == REQ_FINISHED || r->n_fed >= r->p.n_prompt)
			continue;
		left = (uint32_t)r->p.n_prompt - r->n_fed;
		/* echo needs the whole prompt's logits in one step; a budget
		 * smaller than the prompt still lets one oversize chunk through
		 * when nothing else is prefilling */
		want_all = r->p.echo;
		chunk = want_all ? left : (left < budget ? left : budget);
		if (chunk == 0) {
			if (n_items > 0)
				continue;
			chunk = left;
		}
		if (want_all && chunk > budget && n_items > 0)
			continue;
		bool completes = chunk == left;
		s->items[n_items] = (struct eng_item){ .seq = r->seq,
			.tokens = r->p.prompt + r->n_fed, .n_tokens = chunk,
			.logits = completes ? (want_all ? ENG_LOGITS_ALL : ENG_LOGITS_LAST) :
			        ENG_LOGITS_NONE,
			.policy = r->policy, .decode = false };
		s->item_req[n_items++] = r;
		rows += completes ? (want_all ? chunk : 1) : 0;
		budget = budget > chunk ? budget - chunk : 0;
	}
	remove_finished(s);
	if (n_items == 0)
		return 1;
	if (grow_logits(s, rows) != 0) {
		for (uint32_t i = 0; i < n_items; i++)
			finish(s, s->item_req[i], 503, NULL, "out of memory for logits");
		remove_finished(s);
		return 1;
	}
	size_t off = 0;
	for (uint32_t i = 0; i < n_items; i++) {
		struct eng_item *it = &s->items[i];
		if (it->logits == ENG_LOGITS_NONE)
			continue;
		it->out = s->logits + off * s->n_vocab;
		off += it->logits == ENG_LOGITS_ALL ? it->n_tokens : 1;
	}
	struct engine_timing before = *engine_timing(s->e);
	uint32_t step_tokens = 0;
	for (uint32_t i = 0; i < n_items; i++)
		step_tokens += s->items[i].n_tokens;
	rc = engine_step(s->e, s->items, n_items);
	atomic_fetch_add(&s->st_steps, 1);
	if (s->obs.step) {
		struct engine_timing d = *engine_timing(s->e);
		d.attn -= before.attn;
		d.gate -= before.gate;
		d.route -= before.route;
		d.moe -= before.moe;
		d.shexp -= before.shexp;
		d.head -= before.head;
		d.total -= before.total;
		s->obs.step(s->obs.ud, &d, step_tokens);
	}
	if (rc != 0) {
		const char *msg = rc == EPMOE_EUNAVAIL ?
		        "an expert worker failed or timed out during this step; retry" :
		        epmoe_strerror(rc);
		log_warn("sched: step of %u sequences failed: %s", n_items, epmoe_strerror(rc));
		for (uint32_t i = 0; i < n_items; i++)
			finish(s, s->item_req[i], rc == EPMOE_EUNAVAIL ? 503 : 500, NULL, msg);
		remove_finished(s);
		return 1;
	}
	for (uint32_t i = 0; i < n_items; i++) {
		struct sched_req *r = s->item_req[i];
		struct eng_item *it = &s->items[i];
		if (!it->decode) {
			r->n_fed += it->n_tokens;
			atomic_fetch_add(&s->st_prompt, it->n_tokens);
			if (r->n_fed < r->p.n_prompt)
				continue;
			if (r->p.echo)
				emit_prompt(s, r, it->out);
			if (r->p.max_tokens == 0) {
				finish(s, r, 0, "length", NULL);
				continue;
			}
			const float *last = it->out + (it->logits == ENG_LOGITS_ALL ?
			        (size_t)(it->n_tokens - 1) * s->n_vocab : 0);
			sample_and_emit(s, r, last);
		} else {
			sample_and_emit(s, r, it->out);
		}
	}
	remove_finished(s);
	return 1;
}

static void *
engine_main(void *arg)
{
	struct sched *s = arg;

	for (;;) {
		pthread_mutex_lock(&s->mu);
		while (!s->stop && s->inbox_head == NULL && s->n_run == 0 && s->wait_head == NULL)
			pthread_cond_wait(&s->cv, &s->mu);
		bool stop = s->stop;
		struct sched_req *in = s->inbox_head;
		s->inbox_head = s->inbox_tail = NULL;
		s->n_inbox = 0;
		pthread_mutex_unlock(&s->mu);
		while (in) {
			struct sched_req *n = in->next_q;
			in->next_q = NULL;
			if (s->wait_tail)
				s->wait_tail->next_q = in;
			else
				s->wait_head = in;
			s->wait_tail = in;
			s->n_wait++;
			in = n;
		}
		if (stop)
			break;
		round_once(s);
		flush_events(s);
	}
	/* shutdown: everything pending fails */
	for (uint32_t i = 0; i < s->n_run; i++)
		finish(s, s->run[i], 503, NULL, "the server is shutting down");
	s->n_run = 0;
	while (s->wait_head) {
		struct sched_req *r = s->wait_head;
		s->wait_head = r->next_q;
		finish(s, r, 503, NULL, "the server is shutting down");
	}
	s->wait_tail = NULL;
	flush_events(s);
	return NULL;
}

int
sched_new(struct sched **out, uv_loop_t *loop, struct engine *e,
        const struct tok *tk, const struct sched_cfg *cfg)
{
	struct sched *s;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return EPMOE_ENOMEM;
	s->loop = loop;
	s->e = e;
	s->tk = tk;
	if (cfg)
		s->cfg = *cfg;
	else
		sched_cfg_default(&s->cfg);
	if (s->cfg.max_step_tokens == 0)
		s->cfg.max_step_tokens = 512;
	if (s->cfg.max_running == 0)
		s->cfg.max_running = 1;
	s->n_vocab = engine_model(e)->hp.n_vocab;
	s->n_ctx = engine_n_ctx(e);
	s->next_id = 1;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_mutex_init(&s->ev_mu, NULL);
	if (uv_async_init(loop, &s->async, on_async) != 0) {
		free(s);
		return EPMOE_EIO;
	}
	s->async.data = s;
	if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
		uv_close((uv_handle_t *)&s->async, NULL);
		/* the caller must run the loop to close the handle before freeing */
		s->thread_started = false;
		*out = s;
		return EPMOE_ENOMEM;
	}
	s->thread_started = true;
	*out = s;
	return 0;
}

void
sched_stop(struct sched *s)
{
	if (s == NULL || !s->thread_started)
		return;
	pthread_mutex_lock(&s->mu);
	s->stop = true;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->thread, NULL);
	s->thread_started = false;
	/* requests still in the inbox never reached the engine thread */
	struct sched_req *in = s->inbox_head;
	s->inbox_head = s->inbox_tail = NULL;
	while (in) {
		struct sched_req *n = in->next_q;
		finish(s, in, 503, NULL, "the server is shutting down");
		in = n;
	}
	flush_events(s);
	on_async(&s->async); /* deliver the final events now */
	uv_close((uv_handle_t *)&s->async, NULL);
}

void
sched_free(struct sched *s)
{
	if (s == NULL)
		return;
	sched_stop(s);
	struct sched_event *ev = s->ev_head;
	if (ev == NULL)
		ev = s->pend_head;
	while (ev) {
		struct sched_event *n = ev->next;
		event_free(ev);
		ev = n;
	}
	for (struct policy_ent *pe = s->policies; pe;) {
		struct policy_ent *n = pe->next;
		route_policy_free(pe->p);
		free(pe->spec);
		free(pe);
		pe = n;
	}
	free(s->run);
	free(s->logits);
	free(s->items);
	free(s->item_req);
	free(s->feed);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->ev_mu);
	free(s);
}

static void
params_free(struct sched_req_params *p)
{
	free(p->prompt);
	p->prompt = NULL;
	for (size_t i = 0; i < p->n_stop; i++)
		free(p->stop[i]);
	p->n_stop = 0;
}

void
sched_req_free(struct sched_req *r)
{
	if (r == NULL)
		return;
	params_free(&r->p);
	free(r->routing);
	free(r);
}

int
sched_check_routing(struct sched *s, const char *spec, bool decode, char *err,
        size_t err_len)
{
	struct route_policy *p;
	int rc;

	if (spec == NULL)
		return 0;
	if (engine_policy_new(s->e, spec, &p, err, err_len) != 0)
		return EPMOE_EINVAL;
	/* a request routes its prompt (prefill) and, when it generates, its
	 * tokens (decode) */
	rc = route_check(route_policy_cfg(p), ROUTE_GROUP_PREFILL, err, err_len);
	if (rc == 0 && decode &&
	        (rc = route_check(route_policy_cfg(p), ROUTE_GROUP_DECODE, err, err_len)) != 0) {
		size_t l = strlen(err);
		snprintf(err + l, err_len - l,
		        "; it routes whole prompts only: use it with max_tokens 0 (scoring with"
		        " echo and logprobs), or pick a policy that routes decode steps");
	}
	route_policy_free(p);
	return rc ? EPMOE_EINVAL : 0;
}

int
sched_submit(struct sched *s, struct sched_req_params *p, struct sched_req **out,
        char *err, size_t err_len)
{
	struct sched_req *r;
	int rc;

	if (p->cb == NULL || p->n_prompt == 0 || p->prompt == NULL) {
		snprintf(err, err_len, "the prompt is empty");
		params_free(p);
		return EPMOE_EINVAL;
	}
	for (size_t i = 0; i < p->n_prompt; i++) {
		if (p->prompt[i] < 0 || (uint32_t)p->prompt[i] >= s->n_vocab) {
			snprintf(err, err_len, "token id %d at position %zu is outside the vocabulary (0..%u)",
			        p->prompt[i], i, s->n_vocab - 1);
			params_free(p);
			return EPMOE_EINVAL;
		}
	}
	if (p->n_prompt + (size_t)p->max_tokens > s->n_ctx) {
		snprintf(err, err_len, "prompt (%zu tokens) + max_tokens (%u) exceeds the context length %u",
		        p->n_prompt, p->max_tokens, s->n_ctx);
		params_free(p);
		return EPMOE_ERANGE;
	}
	if (engine_kv_bytes(s->e, (uint32_t)(p->n_prompt + p->max_tokens)) > s->cfg.kv_budget_bytes) {
		snprintf(err, err_len, "prompt + max_tokens need more KV cache than the server's budget");
		params_free(p);
		return EPMOE_ERANGE;
	}
	if (p->logprobs > SCHED_MAX_TOP)
		p->logprobs = SCHED_MAX_TOP;
	if ((rc = sched_check_routing(s, p->routing, p->max_tokens > 0, err, err_len)) != 0) {
		params_free(p);
		return rc;
	}
	if ((r = calloc(1, sizeof(*r))) == NULL) {
		params_free(p);
		return EPMOE_ENOMEM;
	}
	if (p->routing && (r->routing = strdup(p->routing)) == NULL) {
		free(r);
		params_free(p);
		return EPMOE_ENOMEM;
	}
	r->p = *p;
	r->p.routing = NULL;
	memset(p, 0, sizeof(*p));
	r->s = s;
	r->t_submit = clock_now();
	pthread_mutex_lock(&s->mu);
	if (s->stop || s->n_inbox + atomic_load(&s->st_waiting) >= s->cfg.max_waiting) {
		pthread_mutex_unlock(&s->mu);
		snprintf(err, err_len, s->stop ? "the server is shutting down" :
		        "too many requests are waiting; retry later");
		sched_req_free(r);
		return EPMOE_EBUSY;
	}
	r->id = s->next_id++;
	if (s->inbox_tail)
		s->inbox_tail->next_q = r;
	else
		s->inbox_head = r;
	s->inbox_tail = r;
	s->n_inbox++;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
	atomic_fetch_add(&s->st_total, 1);
	*out = r;
	return 0;
}

void
sched_cancel(struct sched_req *r)
{
	if (r == NULL)
		return;
	atomic_store(&r->cancelled, 1);
	pthread_mutex_lock(&r->s->mu);
	pthread_cond_signal(&r->s->cv);
	pthread_mutex_unlock(&r->s->mu);
}

uint64_t
sched_req_id(const struct sched_req *r)
{
	return r->id;
}

void
sched_get_stats(struct sched *s, struct sched_stats *st)
{
	st->running = atomic_load(&s->st_running);
	st->waiting = atomic_load(&s->st_waiting) + 0;
	st->requests_total = atomic_load(&s->st_total);
	st->requests_failed = atomic_load(&s->st_failed);
	st->requests_cancelled = atomic_load(&s->st_cancelled);
	st->prompt_tokens_total = atomic_load(&s->st_prompt);
	st->generated_tokens_total = atomic_load(&s->st_gen);
	st->steps_total = atomic_load(&s->st_steps);
	st->kv_bytes_used = atomic_load(&s->st_kv);
}

void
sched_set_observer(struct sched *s, const struct sched_observer *o)
{
	s->obs = *o;
}
