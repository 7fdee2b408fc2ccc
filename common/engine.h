/* The forward pass of a MoE decoder over a batch of sequences.
 *
 * One engine_step() runs any mix of prefill chunks and decode tokens of
 * different sequences through every layer at once: embeddings, RMSNorm,
 * attention (RoPE, grouped-query, per-sequence KV cache in F32 or F16),
 * router gate,
 * routing policy, experts (behind struct moe_backend: in process or on
 * workers), shared expert, final norm and LM head for the rows that want
 * logits.  The engine never knows where experts run.
 *
 * Not thread-safe: one thread drives an engine (the router's engine thread,
 * or the CLI); the engine's own pool parallelises inside a step.
 */
#ifndef EPMOE_ENGINE_H
#define EPMOE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "moe.h"
#include "route.h"

struct engine_opts {
	int n_threads;      /* 0 = number of online CPUs */
	uint32_t n_ctx;     /* max positions per sequence; 0 = the model's */
	const char *routing;/* default policy spec; NULL = "native" */
	uint64_t mem_budget;/* bytes one sequence at full context may take
	                       (its KV cache plus the attention scratch);
	                       0 = the machine's physical memory.  A context
	                       length (from the model or n_ctx) beyond it is
	                       refused with EPMOE_ERANGE before any allocation */
	enum dtype kv_type; /* KV cache: DTYPE_F32 (the default, 0) or DTYPE_F16
	                       (half the memory; keys and values are rounded
	                       to F16 as they are stored) */
};

/* Time spent per phase, accumulated over steps (seconds). */
struct engine_timing {
	double attn;   /* norms, QKV, RoPE, attention, output projection */
	double gate;   /* ffn norm + router gate product */
	double route;  /* routing policy */
	double moe;    /* expert backend (local compute or scatter/gather) */
	double shexp;  /* shared expert */
	double head;   /* final norm + LM head */
	double total;
	uint64_t steps;
	uint64_t tokens;
};

struct engine;

/* A sequence's state: its KV cache and position. */
struct eng_seq {
	uint32_t n_pos;   /* tokens already in the cache */
	uint32_t cap;     /* positions allocated */
	void **k, **v;    /* per layer [cap, n_head_kv * head_dim] of the
	                     engine's kv_type */
	uint32_t n_layer;
};

enum eng_logits { ENG_LOGITS_NONE, ENG_LOGITS_LAST, ENG_LOGITS_ALL };

/* One sequence's part of a step. */
struct eng_item {
	struct eng_seq *seq;
	const int32_t *tokens;  /* borrowed for the call */
	uint32_t n_tokens;
	enum eng_logits logits;
	float *out;     /* [1 or n_tokens, n_vocab], caller's, when logits != NONE */
	struct route_policy *policy; /* NULL = the engine's default */
	bool decode;    /* route in the step's decode group (else: as a
	                   prefill sequence of its own) */
	bool unserved;  /* out: engine_step returned EPMOE_EUNAVAIL and this
	                   item's tokens needed an expert no live worker
	                   serves (the other items may simply run again) */
};

/* Creates an engine for m (borrowed; must outlive it) with in-process
 * experts.  err gets a message on failure.  Free with engine_free(). */
int engine_new(struct engine **out, const struct model *m,
        const struct engine_opts *o, char *err, size_t err_len);
void engine_free(struct engine *e);

/* Replaces the expert backend (borrowed; NULL restores the local one). */
void engine_set_experts(struct engine *e, struct moe_backend *be);
struct pool *engine_pool(struct engine *e);
const struct model *engine_model(const struct engine *e);
uint32_t engine_n_ctx(const struct engine *e);
enum dtype engine_kv_type(const struct engine *e);
/* "f32" / "f16" -> the KV cache type (0 / EPMOE_EINVAL): what the
 * --kv-type options of the router and the CLI accept. */
int engine_kv_type_parse(const char *s, enum dtype *out);
/* The default routing policy (owned by the engine). */
struct route_policy *engine_policy(struct engine *e);
/* Parses spec ("POLICY[:k=v,...]") and creates a policy for the engine's
 * model (free with route_policy_free).  EPMOE_EINVAL + message on a bad
 * spec. */
int engine_policy_new(const struct engine *e, const char *spec,
        struct route_policy **out, char *err, size_t err_len);

/* The expert -> worker map ([n_layer][n_expert], copied) that policies
 * balancing workers (ssr:lambda) use: applied to the default policy and
 * to every policy engine_policy_new creates from now on. */
int engine_set_worker_map(struct engine *e, const uint16_t *worker_of,
        int n_workers);

/* The affinity model (borrowed; NULL = none) the engine feeds: each
 * layer's experts are predicted before its gate runs and the gate's
 * decision is scored and learnt.  Predictions never change the step. */
struct affinity;
void engine_set_affinity(struct engine *e, struct affinity *a);
/* Prefetch hints (speculative.md §4): with an affinity model set, after
 * each layer's gate the engine predicts the next layer's experts of the
 * batch's tokens (affinity_next) and hands them to the expert backend's
 * hint(), which a distributed backend sends to the workers so they page
 * those weights in.  Never changes the step.  EPMOE_ENOMEM. */
int engine_set_prefetch(struct engine *e, bool on);

/* Two micro-batches in flight (speculative.md, ARCHITECTURE §2).  When
 * on, a step of at least two items whose policies all route each token
 * by itself (native, topk) and whose expert backend has submit/wait is
 * run as two halves of its items, ping-pong: one half's attention, gate
 * and routing while the other's experts are out.  Outputs equal the
 * one-batch step up to float summation order in the products.  cobatch:
 * items are split by their predicted workers (the affinity model's usual
 * experts of their tokens, through the worker map) so that each half
 * touches few workers and the two different ones, under a balance bound
 * (neither half above T/2 + T/8 tokens); else by token count alone. */
void engine_set_microbatch(struct engine *e, bool on, bool cobatch);

/* Counters of the split steps (engine thread; read them there or under
 * the caller's own lock). */
struct engine_mb_stats {
	uint64_t steps;         /* steps run as two micro-batches */
	uint64_t single;        /* steps run as one while splitting was on */
	uint64_t cobatched;     /* split steps planned by predicted workers */
	uint64_t tokens_mb[2];  /* token rows of each half, summed */
	uint64_t layers;        /* (step, layer)s counted below (worker map set) */
	uint64_t workers_mb[2]; /* distinct workers each half's routing touched */
	uint64_t workers_both;  /* ... that both halves touched */
};
const struct engine_mb_stats *engine_mb_stats(const struct engine *e);

/* Called after every routing call (engine thread): the policy, layer,
 * tokens routed, the call's statistics and its duration in seconds. */
typedef void (*engine_route_fn)(void *ud, struct route_policy *p,
        uint32_t layer, uint32_t n_tok, const struct route_info *info,
        double seconds);
void engine_set_route_observer(struct engine *e, engine_route_fn fn, void *ud);

/* Runs one step.  Validates every item first (token ids, context length):
 * EPMOE_EINVAL / EPMOE_ERANGE with nothing changed.  On a backend failure
 * the sequences' positions are left as they were (the step is undone);
 * on EPMOE_EUNAVAIL the items whose tokens the expert backend could not
 * serve are marked `unserved` (none marked: the failure concerns all). */
int engine_step(struct engine *e, struct eng_item *items, uint32_t n_items);

/* Sequences.  eng_seq_new allocates nothing for the cache until needed. */
int eng_seq_new(struct engine *e, struct eng_seq **out);
void eng_seq_free(struct eng_seq *s);
/* Makes room for n_pos positions (EPMOE_ENOMEM / EPMOE_ERANGE). */
int eng_seq_reserve(struct engine *e, struct eng_seq *s, uint32_t n_pos);
/* Forgets positions >= n_pos (to reuse a sequence). */
void eng_seq_truncate(struct eng_seq *s, uint32_t n_pos);
/* KV cache bytes for n_pos positions (of the engine's kv_type). */
size_t engine_kv_bytes(const struct engine *e, uint32_t n_pos);

const struct engine_timing *engine_timing(const struct engine *e);
void engine_timing_reset(struct engine *e);

#endif
