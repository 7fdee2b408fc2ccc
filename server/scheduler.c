/* Continuous batching on the engine thread.  See scheduler.h for the
 * contract.
 *
 * The engine thread owns every running request's state (sequence, sampler,
 * detokenizer, stop filter) and the policy cache.  The loop thread only
 * submits (taking a running slot or a place in the wait queue under s->mu),
 * cancels (an atomic flag) and receives events.  Events travel through a
 * mutex-guarded list and one uv_async_t.
 *
 * One round of the engine thread (round_once): drop cancelled requests,
 * admit waiting ones into free slots, plan a step (decode tokens first,
 * then prefill chunks within the token budget, at most decode_prefill of
 * them while anything decodes, each request first continuing its prefix
 * cache match), run it, store the prompt blocks it completed in the
 * prefix cache, and turn its logits into tokens and events.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "err.h"
#include "log.h"
#include "prefix.h"
#include "route.h"
#include "scheduler.h"

enum req_state { REQ_WAITING, REQ_RUNNING, REQ_FINISHED };

/* A cached routing policy (engine thread only). */
struct policy_ent {
	char *spec;              /* canonical */
	struct route_policy *p;
	uint32_t refs;           /* running requests using it */
	uint64_t last_use;       /* LRU clock */
	struct policy_ent *next;
};

struct sched_req {
	uint64_t id;
	struct sched *s;
	struct sched_req_params p;
	char *routing;           /* canonical spec or NULL */
	size_t kv_need;          /* bytes of its KV reservation */
	enum req_state state;
	_Atomic int cancelled;
	/* admission, under s->mu: holds a running slot (and kv_need of the
	 * budget), or counts in the wait queue, or neither (finished) */
	bool has_slot, queued;
	/* engine-thread state */
	struct eng_seq *seq;
	struct policy_ent *pol;  /* NULL: the engine's default policy */
	uint32_t n_fed;          /* prompt tokens already in the cache */
	uint32_t n_cached;       /* of them, taken from the prefix cache */
	bool pc_use;             /* matches and stores prefix-cache blocks */
	struct pcache_hold hold; /* the prefix-cache blocks it holds */
	int32_t *toks;           /* pc_use: prompt + generated tokens */
	uint32_t n_gen;          /* tokens generated */
	int32_t next;            /* the token to feed in the next step */
	struct sampler smp;
	struct tok_stream ts;
	struct sample_stop stop;
	bool smp_ok, ts_ok, stop_ok;
	char *tbuf;              /* text of the current token, joined */
	size_t tlen, tcap;
	double t_submit, t_admit, t_last;
	struct sched_req *next_q; /* inbox / wait queue */
};

struct sched {
	uv_loop_t *loop;
	struct engine *e;
	const struct tok *tk;
	struct sched_cfg cfg;
	uint32_t n_vocab, n_ctx;
	pthread_t thread;
	bool thread_started, stopped;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;
	struct sched_req *inbox_head, *inbox_tail; /* submitted, not yet seen */
	/* admission (under mu) */
	uint32_t slots_used;
	size_t kv_reserved;
	uint32_t n_queued;
	uint64_t next_id;

	/* engine thread */
	struct sched_req *wait_head, *wait_tail;
	struct sched_req **run;
	uint32_t n_run, cap_run;
	struct policy_ent *policies;
	uint32_t n_policies;
	uint64_t policy_clock;
	float *logits;
	size_t cap_logits;
	struct eng_item *items;
	struct sched_req **item_req;
	size_t cap_items;
	int32_t *feed;           /* decode tokens of the step */
	struct pcache *pc;       /* NULL: prefix caching off */

	/* events to the loop */
	uv_async_t async;
	pthread_mutex_t ev_mu;
	struct sched_event *ev_head, *ev_tail;
	struct sched_event *pend_head, *pend_tail; /* engine thread's */

	struct sched_observer obs;
	/* stats */
	_Atomic uint32_t st_running, st_policies;
	_Atomic uint64_t st_total, st_failed, st_cancelled, st_prompt, st_gen,
	        st_steps;
	_Atomic uint64_t st_pc_lookup, st_pc_hit, st_pc_bypass, st_pc_tokens,
	        st_pc_evictions;
};

void
sched_cfg_default(struct sched_cfg *c)
{
	c->max_step_tokens = 512;
	c->decode_prefill = 128;
	c->max_running = 32;
	c->max_waiting = 64;
	c->kv_budget_bytes = (size_t)4 << 30;
	c->prefix_cache = true;
	c->block_tokens = PCACHE_BLOCK_TOKENS;
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

/* Posts a TOKEN event with a copy of text[0..len); returns it (for the
 * caller to attach the token) or NULL when out of memory. */
static struct sched_event *
emit_text(struct sched *s, struct sched_req *r, const char *text, size_t len)
{
	struct sched_event *ev = event_new(r, SCHED_EV_TOKEN);

	if (ev == NULL || (ev->text = malloc(len + 1)) == NULL) {
		free(ev);
		return NULL;
	}
	memcpy(ev->text, text, len);
	ev->text[len] = '\0';
	ev->text_len = len;
	post(s, ev);
	return ev;
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

/* ---- routing policies (engine thread) ---- */

static void
policy_ent_free(struct policy_ent *pe)
{
	route_policy_free(pe->p);
	free(pe->spec);
	free(pe);
}

/* Frees the least recently used policy nobody runs with; false if all
 * are in use. */
static bool
policy_evict_one(struct sched *s)
{
	struct policy_ent **victim = NULL;

	for (struct policy_ent **pp = &s->policies; *pp; pp = &(*pp)->next)
		if ((*pp)->refs == 0 && (victim == NULL || (*pp)->last_use < (*victim)->last_use))
			victim = pp;
	if (victim == NULL)
		return false;
	struct policy_ent *pe = *victim;
	*victim = pe->next;
	policy_ent_free(pe);
	atomic_store(&s->st_policies, --s->n_policies);
	return true;
}

/* The cached policy of spec (created on a miss), with a reference taken;
 * 0 or an error code with a message. */
static int
policy_get(struct sched *s, const char *spec, struct policy_ent **out,
        char *err, size_t err_len)
{
	struct policy_ent *pe;
	int rc;

	for (pe = s->policies; pe; pe = pe->next)
		if (strcmp(pe->spec, spec) == 0)
			goto found;
	while (s->n_policies >= SCHED_POLICY_CACHE && policy_evict_one(s))
		;
	if ((pe = calloc(1, sizeof(*pe))) == NULL || (pe->spec = strdup(spec)) == NULL) {
		free(pe);
		return EPMOE_ENOMEM;
	}
	if ((rc = engine_policy_new(s->e, spec, &pe->p, err, err_len)) != 0) {
		free(pe->spec);
		free(pe);
		return rc;
	}
	pe->next = s->policies;
	s->policies = pe;
	atomic_store(&s->st_policies, ++s->n_policies);
found:
	pe->refs++;
	pe->last_use = ++s->policy_clock;
	*out = pe;
	return 0;
}

/* Drops a reference; a cache over its bound sheds the entry at once. */
static void
policy_put(struct sched *s, struct policy_ent *pe)
{
	if (pe == NULL)
		return;
	pe->refs--;
	while (s->n_policies > SCHED_POLICY_CACHE && policy_evict_one(s))
		;
}

/* ---- request lifecycle (engine thread) ---- */

/* Gives back r's running slot or its place in the wait queue. */
static void
release_admission(struct sched *s, struct sched_req *r)
{
	if (!r->has_slot && !r->queued)
		return;
	pthread_mutex_lock(&s->mu);
	if (r->has_slot) {
		s->slots_used--;
		s->kv_reserved -= r->kv_need;
	} else {
		s->n_queued--;
	}
	pthread_mutex_unlock(&s->mu);
	r->has_slot = r->queued = false;
}

static void
release_engine_state(struct sched *s, struct sched_req *r)
{
	eng_seq_free(r->seq);
	r->seq = NULL;
	if (r->hold.n || r->hold.b)
		pcache_release(s->pc, &r->hold);
	free(r->toks);
	r->toks = NULL;
	if (r->smp_ok)
		sampler_fini(&r->smp);
	if (r->ts_ok)
		tok_stream_fini(&r->ts);
	if (r->stop_ok)
		sample_stop_fini(&r->stop);
	r->smp_ok = r->ts_ok = r->stop_ok = false;
	policy_put(s, r->pol);
	r->pol = NULL;
	free(r->tbuf);
	r->tbuf = NULL;
	r->tcap = r->tlen = 0;
}

/* ---- prefix cache (engine thread) ---- */

/* Bytes the prefix cache may hold now: the budget less the running
 * sequences' reservations. */
static size_t
pc_room(struct sched *s)
{
	size_t used;

	pthread_mutex_lock(&s->mu);
	used = s->kv_reserved;
	pthread_mutex_unlock(&s->mu);
	return s->cfg.kv_budget_bytes > used ? s->cfg.kv_budget_bytes - used : 0;
}

static void
pc_note(struct sched *s)
{
	struct pcache_stats st;

	pcache_get_stats(s->pc, &st);
	atomic_store(&s->st_pc_tokens, st.n_blocks * pcache_block_tokens(s->pc));
	atomic_store(&s->st_pc_evictions, st.evictions);
}

/* Stores the whole blocks of r's first n tokens (in its cache). */
static void
pc_store(struct sched *s, struct sched_req *r, uint32_t n)
{
	pcache_store(s->pc, r->toks, n, r->seq, &r->hold, pc_room(s));
	pc_note(s);
}

/* Whether a policy routes each token by itself, so that a prefix's KV
 * does not depend on what follows it or on the chunking: expert_choice
 * and usmoe choose tokens per expert over the whole prompt. */
static bool
pc_policy_ok(const struct route_policy *p)
{
	enum route_kind k = route_policy_cfg(p)->kind;
	return k != ROUTE_EXPERT_CHOICE && k != ROUTE_USMOE;
}

/* Reuses the cached blocks of r's prompt (all but its last token: the
 * prefill must give logits).  echo wants every prompt position's logits
 * and bypasses the cache, as do policies routing whole prompts. */
static void
pc_admit(struct sched *s, struct sched_req *r)
{
	if (s->pc == NULL || r->p.echo)
		return;
	if (!pc_policy_ok(r->pol ? r->pol->p : engine_policy(s->e))) {
		atomic_fetch_add(&s->st_pc_bypass, 1);
		return;
	}
	if ((r->toks = malloc((r->p.n_prompt + r->p.max_tokens) * sizeof(int32_t))) == NULL)
		return;
	memcpy(r->toks, r->p.prompt, r->p.n_prompt * sizeof(int32_t));
	r->pc_use = true;
	r->n_cached = pcache_match(s->pc, r->p.prompt, (uint32_t)r->p.n_prompt - 1, r->seq,
	        &r->hold);
	r->n_fed = r->n_cached;
	atomic_fetch_add(&s->st_pc_lookup, r->p.n_prompt);
	atomic_fetch_add(&s->st_pc_hit, r->n_cached);
}

/* Before a prefill chunk of r: blocks other requests stored since r's
 * last chunk (a burst sharing a system prompt: the oldest prefills it,
 * the others take it from the cache) continue r's match. */
static void
pc_extend(struct sched *s, struct sched_req *r)
{
	uint32_t n;

	if (!r->pc_use || r->n_fed != r->hold.n * pcache_block_tokens(s->pc))
		return;
	n = pcache_match(s->pc, r->p.prompt, (uint32_t)r->p.n_prompt - 1, r->seq, &r->hold);
	if (n <= r->n_fed)
		return;
	atomic_fetch_add(&s->st_pc_hit, n - r->n_fed);
	r->n_cached += n - r->n_fed;
	r->n_fed = n;
}

/* Ends r with its final event: DONE with reason when err is 0, else
 * ERROR with err and msg. */
static void
finish(struct sched *s, struct sched_req *r, int err, const char *reason,
        const char *msg)
{
	struct sched_event *ev = event_new(r, err ? SCHED_EV_ERROR : SCHED_EV_DONE);

	/* a finished sequence leaves its prompt and answer for the next turn */
	if (err == 0 && r->pc_use && r->seq)
		pc_store(s, r, r->seq->n_pos);
	release_engine_state(s, r);
	release_admission(s, r);
	r->state = REQ_FINISHED;
	if (err == EPMOE_ECANCELED)
		atomic_fetch_add(&s->st_cancelled, 1);
	else if (err)
		atomic_fetch_add(&s->st_failed, 1);
	if (err == 0 && s->obs.e2e)
		s->obs.e2e(s->obs.ud, clock_now() - r->t_submit);
	if (ev == NULL) {
		/* cannot even say it failed: log; the client times out */
		log_error("sched: out of memory finishing request %llu",
		        (unsigned long long)r->id);
		return;
	}
	if (err) {
		ev->err = err;
		snprintf(ev->message, sizeof(ev->message), "%s", msg ? msg : epmoe_strerror(err));
	} else {
		ev->finish_reason = reason;
	}
	ev->prompt_tokens = (uint32_t)r->p.n_prompt;
	ev->cached_tokens = r->n_cached;
	ev->completion_tokens = r->n_gen;
	post(s, ev);
}

/* Sets up the engine-side state of a request that holds a slot; on
 * failure it is finished. */
static int
admit(struct sched *s, struct sched_req *r)
{
	char err[256] = "";
	int rc;

	/* room for the prompt and the first generated token; a scoring
	 * request (max_tokens 0) may fill the whole context */
	if (eng_seq_new(s->e, &r->seq) != 0 ||
	        eng_seq_reserve(s->e, r->seq, (uint32_t)r->p.n_prompt +
	             (r->p.max_tokens > 0)) != 0) {
		finish(s, r, EPMOE_ENOMEM, NULL, "out of memory for the KV cache");
		return -1;
	}
	if (r->routing && (rc = policy_get(s, r->routing, &r->pol, err, sizeof(err))) != 0) {
		finish(s, r, rc, NULL, err[0] ? err : "cannot create the routing policy");
		return -1;
	}
	pc_admit(s, r);
	if (sampler_init(&r->smp, &r->p.sample) != 0) {
		finish(s, r, EPMOE_EINVAL, NULL, "invalid sampling parameters");
		return -1;
	}
	r->smp_ok = true;
	if (tok_stream_init(&r->ts, s->tk, 0) != 0) {
		finish(s, r, EPMOE_ENOMEM, NULL, "out of memory");
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

/* ---- tokens and their text ---- */

/* Fills a token's text and top alternatives (row: the logits it was
 * sampled from, for the alternatives). */
static void
fill_tok(struct sched *s, struct sched_tok *t, int32_t id, float lp,
        const float *row, uint32_t n_top)
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
		size_t k = sample_top_logprobs(row, s->n_vocab, n_top, ids, lps);
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
		fill_tok(s, &ev->toks[i], r->p.prompt[i], lp, prev, r->p.top_logprobs);
	}
	post(s, ev);
}

/* r->tbuf = r->tbuf[0..keep) + text[0..len). */
static int
tbuf_put(struct sched_req *r, size_t keep, const char *text, size_t len)
{
	if (keep + len + 1 > r->tcap) {
		size_t cap = (keep + len + 1) * 2;
		char *nb = realloc(r->tbuf, cap);
		if (nb == NULL)
			return EPMOE_ENOMEM;
		r->tbuf = nb;
		r->tcap = cap;
	}
	if (len)
		memcpy(r->tbuf + keep, text, len);
	r->tlen = keep + len;
	r->tbuf[r->tlen] = '\0';
	return 0;
}

/* Runs text through r's stop filter into r->tbuf (from keep on); with
 * flush, whatever the filter still holds comes out too.  Returns 1 if a
 * stop string matched (the text ends before it), 0, or an error. */
static int
stop_filter(struct sched_req *r, size_t keep, const char *text, size_t len,
        bool flush)
{
	const char *out;
	size_t olen;
	int stopped = sample_stop_push(&r->stop, text, len, &out, &olen);

	if (stopped < 0)
		return stopped;
	if (tbuf_put(r, keep, out, olen) != 0)
		return EPMOE_ENOMEM;
	if (stopped == 0 && flush) {
		sample_stop_flush(&r->stop, &out, &olen);
		if (tbuf_put(r, r->tlen, out, olen) != 0)
			return EPMOE_ENOMEM;
	}
	return stopped;
}

/* The text token id adds to r's output into r->tbuf: the detokenizer's
 * complete characters (on the last token also what it holds back), minus
 * stop strings.  Returns 1 if a stop string matched, 0, or an error. */
static int
token_text(struct sched_req *r, int32_t id, bool last)
{
	const char *piece, *tail;
	size_t plen, tl;

	if (tok_stream_push(&r->ts, id, &piece, &plen) != 0) {
		piece = "";
		plen = 0;
	}
	if (!last)
		return stop_filter(r, 0, piece, plen, false);
	/* the piece is borrowed from the stream: copy it before the flush */
	if (tbuf_put(r, 0, piece, plen) != 0)
		return EPMOE_ENOMEM;
	if (tok_stream_flush(&r->ts, &tail, &tl) == 0 && tbuf_put(r, r->tlen, tail, tl) != 0)
		return EPMOE_ENOMEM;
	char *joined = r->tbuf;
	size_t jlen = r->tlen;
	/* the filter writes into a new buffer: the joined text is its input */
	r->tbuf = NULL;
	r->tcap = r->tlen = 0;
	int rc = stop_filter(r, 0, joined, jlen, true);
	free(joined);
	return rc;
}

/* EOS: what the detokenizer and the stop filter still hold goes out. */
static void
emit_tail(struct sched *s, struct sched_req *r)
{
	const char *tail = "";
	size_t tl = 0;

	if (tok_stream_flush(&r->ts, &tail, &tl) != 0)
		tl = 0;
	if (stop_filter(r, 0, tail, tl, true) >= 0 && r->tlen)
		emit_text(s, r, r->tbuf, r->tlen);
}

static void
note_token_time(struct sched *s, struct sched_req *r)
{
	double t = clock_now();

	if (r->n_gen == 0 && s->obs.ttft)
		s->obs.ttft(s->obs.ud, t - r->t_submit);
	else if (r->n_gen > 0 && s->obs.itl)
		s->obs.itl(s->obs.ud, t - r->t_last);
	r->t_last = t;
	r->n_gen++;
	atomic_fetch_add(&s->st_gen, 1);
}

/* Samples r's next token from row and emits it; finishes r when it ends
 * (EOS, a stop string, max_tokens). */
static void
sample_and_emit(struct sched *s, struct sched_req *r, const float *row)
{
	float lp = 0;
	int32_t id = sampler_next(&r->smp, row, s->n_vocab, &lp);
	struct sched_event *ev;
	int stopped;
	bool last;

	if (id < 0) {
		finish(s, r, EPMOE_EINTERNAL, NULL, "sampling failed");
		return;
	}
	note_token_time(s, r);
	if (r->pc_use && r->p.n_prompt + r->n_gen <= r->p.n_prompt + r->p.max_tokens)
		r->toks[r->p.n_prompt + r->n_gen - 1] = id;
	if (!r->p.ignore_eos && tok_is_eog(s->tk, id)) {
		emit_tail(s, r);
		finish(s, r, 0, "stop", NULL);
		return;
	}
	last = r->n_gen >= r->p.max_tokens;
	if ((stopped = token_text(r, id, last)) < 0 ||
	        (ev = emit_text(s, r, r->tbuf ? r->tbuf : "", r->tlen)) == NULL) {
		finish(s, r, EPMOE_ENOMEM, NULL, "out of memory");
		return;
	}
	if ((ev->toks = calloc(1, sizeof(*ev->toks))) != NULL) {
		ev->n_toks = 1;
		fill_tok(s, &ev->toks[0], id, lp, row, r->p.top_logprobs);
	}
	if (stopped == 1)
		finish(s, r, 0, "stop", NULL);
	else if (last)
		finish(s, r, 0, "length", NULL);
	else
		r->next = id;
}

/* ---- one round ---- */

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

static void
wait_push(struct sched *s, struct sched_req *r)
{
	r->next_q = NULL;
	if (s->wait_tail)
		s->wait_tail->next_q = r;
	else
		s->wait_head = r;
	s->wait_tail = r;
}

static void
drop_cancelled(struct sched *s)
{
	struct sched_req *keep_head = NULL, *keep_tail = NULL;

	for (uint32_t i = 0; i < s->n_run; i++)
		if (atomic_load(&s->run[i]->cancelled))
			finish(s, s->run[i], EPMOE_ECANCELED, NULL, "cancelled by the client");
	remove_finished(s);
	for (struct sched_req *r = s->wait_head, *n; r; r = n) {
		n = r->next_q;
		if (atomic_load(&r->cancelled)) {
			finish(s, r, EPMOE_ECANCELED, NULL, "cancelled by the client");
			continue;
		}
		r->next_q = NULL;
		if (keep_tail)
			keep_tail->next_q = r;
		else
			keep_head = r;
		keep_tail = r;
	}
	s->wait_head = keep_head;
	s->wait_tail = keep_tail;
}

/* Whether a reservation of need bytes fits the KV budget beside the
 * running sequences' and the prefix-cache blocks they hold (each counted
 * once); blocks nobody holds are evicted to make room.  Under s->mu. */
static bool
kv_fits(struct sched *s, size_t need)
{
	return s->kv_reserved + need + pcache_pinned_bytes(s->pc) <= s->cfg.kv_budget_bytes;
}

/* Whether waiting request r gets a slot now (it may already hold one). */
static bool
take_slot(struct sched *s, struct sched_req *r)
{
	if (r->has_slot)
		return true;
	pthread_mutex_lock(&s->mu);
	if (s->slots_used < s->cfg.max_running &&
	        kv_fits(s, r->kv_need)) {
		s->slots_used++;
		s->kv_reserved += r->kv_need;
		s->n_queued--;
		r->queued = false;
		r->has_slot = true;
	}
	pthread_mutex_unlock(&s->mu);
	return r->has_slot;
}

/* Admits waiting requests in arrival order while slots are free. */
static void
admit_waiting(struct sched *s)
{
	while (s->wait_head && take_slot(s, s->wait_head)) {
		struct sched_req *r = s->wait_head;
		s->wait_head = r->next_q;
		if (s->wait_head == NULL)
			s->wait_tail = NULL;
		r->next_q = NULL;
		if (admit(s, r) != 0)
			continue;
		if (s->n_run == s->cap_run) {
			uint32_t nc = s->cap_run ? 2 * s->cap_run : 16;
			struct sched_req **nr = realloc(s->run, nc * sizeof(*nr));
			if (nr == NULL) {
				finish(s, r, EPMOE_ENOMEM, NULL, "out of memory");
				continue;
			}
			s->run = nr;
			s->cap_run = nc;
		}
		s->run[s->n_run++] = r;
	}
	atomic_store(&s->st_running, s->n_run);
	if (s->pc) {
		pcache_trim(s->pc, pc_room(s));
		pc_note(s);
	}
}

static void
add_item(struct sched *s, uint32_t *n_items, struct sched_req *r,
        const struct eng_item *it)
{
	s->items[*n_items] = *it;
	s->item_req[(*n_items)++] = r;
}

/* The decode token of every running sequence past its prompt (first:
 * latency).  Returns the tokens taken. */
static uint32_t
plan_decode(struct sched *s, uint32_t *n_items)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < s->n_run; i++) {
		struct sched_req *r = s->run[i];
		if (r->n_fed < r->p.n_prompt)
			continue;
		if (eng_seq_reserve(s->e, r->seq, r->seq->n_pos + 1) != 0) {
			finish(s, r, EPMOE_ENOMEM, NULL, "out of memory for the KV cache");
			continue;
		}
		s->feed[*n_items] = r->next;
		add_item(s, n_items, r, &(struct eng_item){ .seq = r->seq,
			.tokens = &s->feed[*n_items], .n_tokens = 1,
			.logits = ENG_LOGITS_LAST, .policy = r->pol ? r->pol->p : NULL,
			.decode = true });
		n++;
	}
	return n;
}

/* Prefill chunks within budget tokens.  echo needs the whole prompt's
 * logits in one step; a budget smaller than a prompt still lets one
 * oversize chunk through when nothing else is in the step. */
static void
plan_prefill(struct sched *s, uint32_t *n_items, uint32_t budget)
{
	for (uint32_t i = 0; i < s->n_run; i++) {
		struct sched_req *r = s->run[i];
		uint32_t left, chunk;
		bool all = r->p.echo;

		if (r->state == REQ_FINISHED || r->n_fed >= r->p.n_prompt)
			continue;
		pc_extend(s, r);
		left = (uint32_t)r->p.n_prompt - r->n_fed;
		chunk = all ? left : (left < budget ? left : budget);
		if (chunk == 0) {
			if (*n_items > 0)
				continue;
			chunk = left;
		}
		if (all && chunk > budget && *n_items > 0)
			continue;
		bool completes = chunk == left;
		add_item(s, n_items, r, &(struct eng_item){ .seq = r->seq,
			.tokens = r->p.prompt + r->n_fed, .n_tokens = chunk,
			.logits = !completes ? ENG_LOGITS_NONE :
			        all ? ENG_LOGITS_ALL : ENG_LOGITS_LAST,
			.policy = r->pol ? r->pol->p : NULL, .decode = false });
		budget = budget > chunk ? budget - chunk : 0;
	}
}

/* Points each item that wants logits at its rows of s->logits. */
static int
place_logits(struct sched *s, uint32_t n_items)
{
	size_t rows = 0;

	for (uint32_t i = 0; i < n_items; i++)
		rows += s->items[i].logits == ENG_LOGITS_ALL ? s->items[i].n_tokens :
		        s->items[i].logits == ENG_LOGITS_LAST ? 1 : 0;
	if (grow_logits(s, rows) != 0)
		return EPMOE_ENOMEM;
	rows = 0;
	for (uint32_t i = 0; i < n_items; i++) {
		struct eng_item *it = &s->items[i];
		if (it->logits == ENG_LOGITS_NONE)
			continue;
		it->out = s->logits + rows * s->n_vocab;
		rows += it->logits == ENG_LOGITS_ALL ? it->n_tokens : 1;
	}
	return 0;
}

/* engine_step over the planned items, timed for the observer. */
static int
run_step(struct sched *s, uint32_t n_items)
{
	struct engine_timing before = *engine_timing(s->e);
	uint32_t tokens = 0;
	int rc;

	for (uint32_t i = 0; i < n_items; i++)
		tokens += s->items[i].n_tokens;
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
		s->obs.step(s->obs.ud, &d, tokens);
	}
	return rc;
}

/* What a finished item means for its request: a prefill chunk advances
 * the prompt (and, once complete, echoes it and samples the first token);
 * a decode item samples the next token. */
static void
take_result(struct sched *s, struct sched_req *r, const struct eng_item *it)
{
	if (it->decode) {
		sample_and_emit(s, r, it->out);
		return;
	}
	r->n_fed += it->n_tokens;
	atomic_fetch_add(&s->st_prompt, it->n_tokens);
	if (r->pc_use)
		pc_store(s, r, r->n_fed);
	if (r->n_fed < r->p.n_prompt)
		return;
	if (r->p.echo)
		emit_prompt(s, r, it->out);
	if (r->p.max_tokens == 0) {
		finish(s, r, 0, "length", NULL);
		return;
	}
	sample_and_emit(s, r, it->out + (it->logits == ENG_LOGITS_ALL ?
	        (size_t)(it->n_tokens - 1) * s->n_vocab : 0));
}

static void
fail_items(struct sched *s, uint32_t n_items, int err, const char *msg)
{
	for (uint32_t i = 0; i < n_items; i++)
		if (s->item_req[i]->state != REQ_FINISHED)
			finish(s, s->item_req[i], err, NULL, msg);
}

/* One scheduling round.  Returns 1 if there was work. */
static int
round_once(struct sched *s)
{
	uint32_t n_items = 0, n_decode, budget;
	int rc;

	drop_cancelled(s);
	admit_waiting(s);
	if (s->n_run == 0)
		return 0;
	if (grow_items(s, s->n_run) != 0)
		return 0;
	n_decode = plan_decode(s, &n_items);
	budget = s->cfg.max_step_tokens > n_decode ? s->cfg.max_step_tokens - n_decode : 0;
	/* chunked prefill: while sequences decode, a step carries at most
	 * decode_prefill prompt tokens (oldest request first), so a long
	 * prompt costs each decode step a bounded slice */
	if (n_decode > 0 && s->cfg.decode_prefill > 0 && budget > s->cfg.decode_prefill)
		budget = s->cfg.decode_prefill;
	plan_prefill(s, &n_items, budget);
	remove_finished(s);
	if (n_items == 0)
		return 1;
	if (place_logits(s, n_items) != 0) {
		fail_items(s, n_items, EPMOE_ENOMEM, "out of memory for logits");
	} else if ((rc = run_step(s, n_items)) != 0) {
		uint32_t n_un = 0;
		for (uint32_t i = 0; rc == EPMOE_EUNAVAIL && i < n_items; i++)
			n_un += s->items[i].unserved;
		if (n_un > 0) {
			/* only the sequences that needed an expert with no live
			 * copy fail; the others run again in the next round */
			log_warn("sched: %u of %u sequences of the step need an expert no live worker serves: they fail, the others go on",
			        n_un, n_items);
			for (uint32_t i = 0; i < n_items; i++)
				if (s->items[i].unserved && s->item_req[i]->state != REQ_FINISHED)
					finish(s, s->item_req[i], rc, NULL,
					        "an expert this request needs has no live worker (lost worker, no replica); retry");
		} else {
			log_warn("sched: step of %u sequences failed: %s", n_items, epmoe_strerror(rc));
			fail_items(s, n_items, rc, rc == EPMOE_EUNAVAIL ?
			        "an expert worker failed or timed out during this step; retry" :
			        epmoe_strerror(rc));
		}
	} else {
		for (uint32_t i = 0; i < n_items; i++)
			take_result(s, s->item_req[i], &s->items[i]);
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
		pthread_mutex_unlock(&s->mu);
		while (in) {
			struct sched_req *n = in->next_q;
			wait_push(s, in);
			in = n;
		}
		if (stop)
			break;
		round_once(s);
		flush_events(s);
	}
	/* shutdown: everything pending fails */
	for (uint32_t i = 0; i < s->n_run; i++)
		finish(s, s->run[i], EPMOE_ECLOSED, NULL, "the server is shutting down");
	s->n_run = 0;
	while (s->wait_head) {
		struct sched_req *r = s->wait_head;
		s->wait_head = r->next_q;
		finish(s, r, EPMOE_ECLOSED, NULL, "the server is shutting down");
	}
	s->wait_tail = NULL;
	flush_events(s);
	return NULL;
}

/* ---- the loop side ---- */

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
	if (s->cfg.prefix_cache && pcache_new(&s->pc, e, s->cfg.block_tokens) != 0) {
		free(s);
		return EPMOE_ENOMEM;
	}
	s->next_id = 1;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_mutex_init(&s->ev_mu, NULL);
	if (uv_async_init(loop, &s->async, on_async) != 0) {
		pthread_mutex_destroy(&s->mu);
		pthread_cond_destroy(&s->cv);
		pthread_mutex_destroy(&s->ev_mu);
		free(s);
		return EPMOE_EIO;
	}
	s->async.data = s;
	if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
		/* the caller runs the loop to close the handle, then frees */
		s->stopped = true;
		uv_close((uv_handle_t *)&s->async, NULL);
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
	if (s == NULL || s->stopped)
		return;
	s->stopped = true;
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
		finish(s, in, EPMOE_ECLOSED, NULL, "the server is shutting down");
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
	struct sched_event *ev = s->ev_head ? s->ev_head : s->pend_head;
	while (ev) {
		struct sched_event *n = ev->next;
		event_free(ev);
		ev = n;
	}
	while (s->policies) {
		struct policy_ent *n = s->policies->next;
		policy_ent_free(s->policies);
		s->policies = n;
	}
	pcache_free(s->pc);
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

void
sched_req_free(struct sched_req *r)
{
	if (r == NULL)
		return;
	free(r->p.prompt);
	for (size_t i = 0; i < r->p.n_stop; i++)
		free(r->p.stop[i]);
	free(r->routing);
	free(r->tbuf);
	free(r);
}

/* Checks what the scheduler alone can check; 0 or an error with err set. */
static int
check_params(struct sched *s, const struct sched_req_params *p, char *err,
        size_t err_len)
{
	if (p->cb == NULL || p->n_prompt == 0 || p->prompt == NULL) {
		epmoe_set_err(err, err_len, "the prompt is empty");
		return EPMOE_EINVAL;
	}
	if (p->n_stop > SCHED_MAX_STOP || p->top_logprobs > SCHED_MAX_TOP) {
		epmoe_set_err(err, err_len, "too many stop strings or logprobs");
		return EPMOE_EINVAL;
	}
	for (size_t i = 0; i < p->n_prompt; i++) {
		if (p->prompt[i] < 0 || (uint32_t)p->prompt[i] >= s->n_vocab) {
			epmoe_set_err(err, err_len, "token id %d at position %zu is outside the "
			        "vocabulary (0..%u)", p->prompt[i], i, s->n_vocab - 1);
			return EPMOE_EINVAL;
		}
	}
	if (p->n_prompt + (size_t)p->max_tokens > s->n_ctx) {
		epmoe_set_err(err, err_len, "prompt (%zu tokens) + max_tokens (%u) exceeds the "
		        "context length %u", p->n_prompt, p->max_tokens, s->n_ctx);
		return EPMOE_ERANGE;
	}
	if (engine_kv_bytes(s->e, (uint32_t)(p->n_prompt + p->max_tokens)) >
	        s->cfg.kv_budget_bytes) {
		epmoe_set_err(err, err_len, "prompt + max_tokens need more KV cache than the "
		        "server's budget");
		return EPMOE_ERANGE;
	}
	return 0;
}

int
sched_submit(struct sched *s, struct sched_req_params *p, struct sched_req **out,
        char *err, size_t err_len)
{
	struct sched_req *r;
	int rc;

	if ((rc = check_params(s, p, err, err_len)) != 0)
		return rc;
	if ((r = calloc(1, sizeof(*r))) == NULL ||
	        (p->routing && (r->routing = strdup(p->routing)) == NULL)) {
		free(r);
		epmoe_set_err(err, err_len, "out of memory");
		return EPMOE_ENOMEM;
	}
	r->s = s;
	r->kv_need = engine_kv_bytes(s->e, (uint32_t)(p->n_prompt + p->max_tokens));
	pthread_mutex_lock(&s->mu);
	if (s->stop) {
		rc = EPMOE_ECLOSED;
	} else if (s->n_queued == 0 && s->slots_used < s->cfg.max_running &&
	        kv_fits(s, r->kv_need)) {
		/* a free slot and nobody ahead: running from the next step */
		s->slots_used++;
		s->kv_reserved += r->kv_need;
		r->has_slot = true;
	} else if (s->n_queued < s->cfg.max_waiting) {
		s->n_queued++;
		r->queued = true;
	} else {
		rc = EPMOE_EBUSY;
	}
	if (rc != 0) {
		pthread_mutex_unlock(&s->mu);
		epmoe_set_err(err, err_len, rc == EPMOE_ECLOSED ? "the server is shutting down" :
		        "every running slot is taken and too many requests are waiting; "
		        "retry later");
		free(r->routing);
		free(r);
		return rc;
	}
	r->id = s->next_id++;
	r->t_submit = clock_now();
	/* from here on the request owns the prompt and the stop strings */
	r->p = *p;
	r->p.routing = NULL;
	p->prompt = NULL;
	p->n_prompt = 0;
	memset(p->stop, 0, sizeof(p->stop));
	p->n_stop = 0;
	if (s->inbox_tail)
		s->inbox_tail->next_q = r;
	else
		s->inbox_head = r;
	s->inbox_tail = r;
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
	pthread_mutex_lock(&s->mu);
	st->waiting = s->n_queued;
	st->slots_used = s->slots_used;
	st->kv_bytes_used = s->kv_reserved;
	pthread_mutex_unlock(&s->mu);
	st->running = atomic_load(&s->st_running);
	st->policies_cached = atomic_load(&s->st_policies);
	st->requests_total = atomic_load(&s->st_total);
	st->requests_failed = atomic_load(&s->st_failed);
	st->requests_cancelled = atomic_load(&s->st_cancelled);
	st->prompt_tokens_total = atomic_load(&s->st_prompt);
	st->generated_tokens_total = atomic_load(&s->st_gen);
	st->steps_total = atomic_load(&s->st_steps);
	st->prefix_cache = s->pc != NULL;
	st->pc_lookup_tokens = atomic_load(&s->st_pc_lookup);
	st->pc_hit_tokens = atomic_load(&s->st_pc_hit);
	st->pc_cached_tokens = atomic_load(&s->st_pc_tokens);
	st->pc_bypassed = atomic_load(&s->st_pc_bypass);
	st->pc_evictions = atomic_load(&s->st_pc_evictions);
	st->pc_pinned_bytes = pcache_pinned_bytes(s->pc);
}

void
sched_set_observer(struct sched *s, const struct sched_observer *o)
{
	s->obs = *o;
}
