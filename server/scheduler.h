/* The scheduler: continuous batching on the engine thread.
 *
 * Requests join and leave between steps.  Each step mixes the decode tokens
 * of running sequences with prefill chunks of new ones (oldest first), up
 * to a token budget, and to decode_prefill prompt tokens while sequences
 * decode (chunked prefill: a long prompt never stalls the streams).  Admission happens when a request is submitted: it takes a
 * running slot at once when one is free (at most max_running sequences
 * hold one) and its KV reservation (prompt + max_tokens positions) fits
 * the budget, else it joins a bounded wait queue, and only when that is
 * full does sched_submit refuse it (EPMOE_EBUSY).  The queue is served in
 * arrival order: while anyone waits, newcomers wait behind them.
 * With the prefix cache on (prefix.h), a request starts from the cached
 * KV of its prompt's longest cached whole-block prefix and prefills only
 * the rest; its prompt blocks are stored as its prefill proceeds, and its
 * answer's when it finishes (the next chat turn resends it).  Requests
 * with echo, and routing policies that route whole prompts (expert_choice,
 * usmoe), bypass it.
 * Sampling, stop strings, EOS and detokenization happen on the engine
 * thread; results go back to the libuv loop thread as events
 * (uv_async_send), where the request's callback turns them into HTTP or
 * NNG replies.  A step whose experts fail (a worker died) fails only the
 * requests in that step.
 *
 * Routing policies of requests are cached per canonical spec on the
 * engine thread, at most SCHED_POLICY_CACHE of them besides those in use
 * (least recently used first out), so no stream of distinct specs can
 * keep memory.
 *
 * Errors are EPMOE_E* codes with a message, here and in the ERROR event:
 * the front ends map them to their own statuses.
 *
 * Threads: sched_submit / sched_cancel / sched_* queries are called on the
 * loop thread; the request callback runs on the loop thread; nothing else
 * touches a request until its final event (DONE or ERROR) is delivered,
 * after which the callback owns it and frees it with sched_req_free.
 */
#ifndef EPMOE_SCHEDULER_H
#define EPMOE_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "engine.h"
#include "sample.h"
#include "tok.h"

#define SCHED_MAX_STOP 4
#define SCHED_MAX_TOP 20
#define SCHED_POLICY_CACHE 64

struct sched;
struct sched_req;

enum sched_ev_kind {
	SCHED_EV_TOKEN,  /* one generated token (text may be empty: held back) */
	SCHED_EV_PROMPT, /* echo: the prompt's tokens with their logprobs */
	SCHED_EV_DONE,   /* finished: finish_reason set; final event */
	SCHED_EV_ERROR,  /* failed: err + message; final event */
};

struct sched_top {
	int32_t id;
	float logprob;
	char text[48]; /* token bytes, truncated */
	uint8_t text_len;
};

/* One token with its logprob and alternatives (when asked for). */
struct sched_tok {
	int32_t id;
	float logprob;       /* NAN for the first prompt token */
	char *text;          /* its bytes (owned by the event) */
	size_t text_len;
	struct sched_top *top; /* [n_top], owned by the event */
	uint32_t n_top;
};

struct sched_event {
	enum sched_ev_kind kind;
	struct sched_req *req;
	/* TOKEN: the new text (complete UTF-8, stop strings removed) and the
	 * sampled token with its logprob (toks[0]; none when the text is what
	 * EOS released); PROMPT: toks[n_toks] */
	char *text;
	size_t text_len;
	struct sched_tok *toks;
	size_t n_toks;
	/* DONE */
	const char *finish_reason; /* "stop", "length" */
	uint32_t prompt_tokens, completion_tokens;
	uint32_t cached_tokens;    /* prompt tokens taken from the prefix cache */
	/* ERROR: EPMOE_ECANCELED (sched_cancel), EPMOE_EUNAVAIL (an expert
	 * worker failed), EPMOE_ECLOSED (shutting down), EPMOE_ENOMEM,
	 * EPMOE_EINTERNAL */
	int err;
	char message[256];
	struct sched_event *next;
};

/* Called on the loop thread for each event of req, in order.  The event is
 * freed after the call.  After DONE/ERROR the request is the callback's:
 * free it with sched_req_free (possibly later). */
typedef void (*sched_event_fn)(const struct sched_event *ev, void *ud);

struct sched_req_params {
	int32_t *prompt;         /* token ids < n_vocab; the scheduler's on
	                          * success (free()) */
	size_t n_prompt;
	uint32_t max_tokens;     /* prompt + max_tokens <= the context */
	struct sample_params sample;
	char *stop[SCHED_MAX_STOP]; /* the scheduler's on success (free()) */
	size_t n_stop;
	const char *routing;     /* canonical policy spec or NULL (the
	                          * engine's default); copied */
	bool echo;               /* emit SCHED_EV_PROMPT first */
	uint32_t top_logprobs;   /* alternatives listed per token (0..20) */
	bool ignore_eos;
	sched_event_fn cb;
	void *ud;
};

struct sched_cfg {
	uint32_t max_step_tokens; /* token budget per step (default 512) */
	uint32_t decode_prefill;  /* prefill tokens per step while sequences
	                             decode (default 128; 0 = the step budget):
	                             a long prompt arrives in chunks this big
	                             so running streams keep their pace */
	uint32_t max_running;     /* sequences decoding at once (default 32) */
	uint32_t max_waiting;     /* wait queue bound (default 64) */
	size_t kv_budget_bytes;   /* KV cache budget (default 4 GiB): running
	                             sequences' reservations and the prefix
	                             cache together */
	bool prefix_cache;        /* reuse the KV of shared prompt prefixes
	                             (default on; prefix.h) */
	uint32_t block_tokens;    /* its block size (default 16) */
};

void sched_cfg_default(struct sched_cfg *c);

/* Creates the scheduler and starts its engine thread.  Borrows loop, e
 * (the engine: the scheduler's thread is its only driver from now on) and
 * tk.  Stop with sched_stop and free with sched_free (pending requests
 * get ERROR events). */
int sched_new(struct sched **out, uv_loop_t *loop, struct engine *e,
        const struct tok *tk, const struct sched_cfg *cfg);
/* Stops the thread, fails what is pending and delivers the final events
 * now; then the loop must run once more to close the scheduler's handle
 * before sched_free.  Idempotent; NULL is fine. */
void sched_stop(struct sched *s);
void sched_free(struct sched *s);

/* Queues a request.  On success *out is the request handle (the
 * scheduler's until its final event) and the prompt and stop strings of p
 * are the scheduler's (p's pointers are cleared).  On failure they stay
 * the caller's and err says why: EPMOE_EINVAL (bad parameters),
 * EPMOE_ERANGE (prompt + max_tokens exceed the context or the KV budget),
 * EPMOE_EBUSY (no running slot is free and the wait queue is full),
 * EPMOE_ECLOSED (shutting down), EPMOE_ENOMEM. */
int sched_submit(struct sched *s, struct sched_req_params *p,
        struct sched_req **out, char *err, size_t err_len);
/* Asks the engine thread to drop the request at the next step; its final
 * event (ERROR with EPMOE_ECANCELED) still comes.  Idempotent. */
void sched_cancel(struct sched_req *r);
void sched_req_free(struct sched_req *r);
uint64_t sched_req_id(const struct sched_req *r);

/* Counters for /metrics and /v1/stats (approximate, lock-free reads apart
 * from the admission counts). */
struct sched_stats {
	uint32_t running;         /* sequences in the engine */
	uint32_t waiting;         /* in the wait queue */
	uint32_t slots_used;      /* running slots taken (<= max_running) */
	uint32_t policies_cached; /* routing policies held by the engine thread */
	uint64_t requests_total, requests_failed, requests_cancelled;
	uint64_t prompt_tokens_total, generated_tokens_total;
	uint64_t steps_total;
	uint64_t kv_bytes_used;   /* reserved by admitted requests */
	/* prefix cache */
	bool prefix_cache;        /* on */
	uint64_t pc_lookup_tokens;/* prompt tokens of requests that looked */
	uint64_t pc_hit_tokens;   /* of them, taken from the cache */
	uint64_t pc_cached_tokens;/* positions the cache holds now */
	uint64_t pc_bypassed;     /* requests whose routing policy bypassed it */
	uint64_t pc_evictions;    /* blocks evicted */
	uint64_t pc_pinned_bytes; /* bytes of blocks running sequences hold */
};
void sched_get_stats(struct sched *s, struct sched_stats *st);

/* Histograms the scheduler feeds (seconds), set by the owner before use;
 * called on the engine thread (implementations must be thread-safe). */
struct sched_observer {
	void (*ttft)(void *ud, double s);
	void (*itl)(void *ud, double s);
	void (*e2e)(void *ud, double s);
	void (*queue)(void *ud, double s);
	void (*step)(void *ud, const struct engine_timing *delta, uint32_t tokens);
	void *ud;
};
void sched_set_observer(struct sched *s, const struct sched_observer *o);

#endif
