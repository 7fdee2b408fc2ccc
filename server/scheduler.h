/* The scheduler: continuous batching on the engine thread.
 *
 * Requests join and leave between steps.  Each step mixes the decode tokens
 * of running sequences with prefill chunks of new ones, up to a token
 * budget; sequences are admitted while the KV-cache budget allows (a
 * request reserves prompt + max_tokens positions), and a bounded wait
 * queue holds the rest (beyond it, sched_submit says EPMOE_EBUSY: the API
 * answers 429).  Sampling, stop strings, EOS and detokenization happen on
 * the engine thread; results go back to the libuv loop thread as events
 * (uv_async_send), where the request's callback turns them into HTTP or
 * NNG replies.  A step whose experts fail (a worker died) fails only the
 * requests in that step.
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

struct sched;
struct sched_req;

enum sched_ev_kind {
	SCHED_EV_TOKEN,  /* one generated token (text may be empty: held back) */
	SCHED_EV_PROMPT, /* echo: the prompt's tokens with their logprobs */
	SCHED_EV_DONE,   /* finished: finish_reason set; final event */
	SCHED_EV_ERROR,  /* failed: status + message; final event */
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
	 * token; PROMPT: toks[n_toks] */
	char *text;
	size_t text_len;
	struct sched_tok *toks;
	size_t n_toks;
	/* DONE */
	const char *finish_reason; /* "stop", "length" */
	uint32_t prompt_tokens, completion_tokens;
	/* ERROR */
	int status;                /* HTTP status: 503, 500, 400 */
	char message[256];
	struct sched_event *next;
};

/* Called on the loop thread for each event of req, in order.  The event is
 * freed after the call.  After DONE/ERROR the request is the callback's:
 * free it with sched_req_free (possibly later). */
typedef void (*sched_event_fn)(const struct sched_event *ev, void *ud);

struct sched_req_params {
	int32_t *prompt;         /* token ids, taken over (free()) */
	size_t n_prompt;
	uint32_t max_tokens;     /* >= 0; capped to the context */
	struct sample_params sample;
	char *stop[SCHED_MAX_STOP]; /* taken over */
	size_t n_stop;
	const char *routing;     /* policy spec or NULL (server default); copied */
	bool echo;               /* emit SCHED_EV_PROMPT first */
	int32_t logprobs;        /* -1 none, else top-n alternatives (0..20) */
	bool ignore_eos;
	sched_event_fn cb;
	void *ud;
};

struct sched_cfg {
	uint32_t max_step_tokens; /* token budget per step (default 512) */
	uint32_t max_running;     /* sequences decoding at once (default 32) */
	uint32_t max_waiting;     /* wait queue bound (default 64) */
	size_t kv_budget_bytes;   /* KV cache budget (default 4 GiB) */
};

void sched_cfg_default(struct sched_cfg *c);

/* Creates the scheduler and starts its engine thread.  Borrows loop, e
 * (the engine: the scheduler's thread is its only driver from now on) and
 * tk.  Free with sched_free() (stops the thread; pending requests get
 * ERROR events). */
int sched_new(struct sched **out, uv_loop_t *loop, struct engine *e,
        const struct tok *tk, const struct sched_cfg *cfg);
/* Stops the thread, fails what is pending, then needs the loop to run
 * once more to deliver the events; finally sched_free. */
void sched_stop(struct sched *s);
void sched_free(struct sched *s);

/* Queues a request.  On success *out is the request handle (the scheduler's
 * until its final event).  EPMOE_EBUSY: the wait queue is full (429);
 * EPMOE_EINVAL: bad parameters (message in err); EPMOE_ERANGE: prompt +
 * max_tokens exceed the context or the KV budget. On failure the prompt and
 * stops are still taken over (freed). */
int sched_submit(struct sched *s, struct sched_req_params *p,
        struct sched_req **out, char *err, size_t err_len);
/* Asks the engine thread to drop the request at the next step; its final
 * event (ERROR with status 499) still comes.  Idempotent. */
void sched_cancel(struct sched_req *r);
void sched_req_free(struct sched_req *r);
uint64_t sched_req_id(const struct sched_req *r);

/* Counters for /metrics and /v1/stats (approximate, lock-free reads). */
struct sched_stats {
	uint32_t running, waiting;
	uint64_t requests_total, requests_failed, requests_cancelled;
	uint64_t prompt_tokens_total, generated_tokens_total;
	uint64_t steps_total;
	uint64_t kv_bytes_used;
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

/* Validates a routing spec for a request that routes its prompt and, when
 * decode is true, generates tokens: 0 or EPMOE_EINVAL with a message. */
int sched_check_routing(struct sched *s, const char *spec, bool decode,
        char *err, size_t err_len);

#endif
