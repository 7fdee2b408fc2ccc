/* The one narrow interface between the dense part of the model and the
 * experts.  The engine hands a backend the normalised token rows of a layer
 * and the routing decision; the backend returns the combined expert output
 * per token.  The in-process backend (moe_local) and the distributed one
 * (the router's dispatcher, which ships rows to workers over NNG) both sit
 * behind it, so the dense code never knows where experts run. */
#ifndef EPMOE_MOE_H
#define EPMOE_MOE_H

#include <stdint.h>

struct model;
struct pool;

/* The routing decision for T tokens, CSR by token: token t uses experts
 * expert[off[t] .. off[t+1]) with gate weights weight[...] (a token may
 * have 0..E experts). */
struct moe_assign {
	uint32_t n_tok;
	const uint32_t *off;   /* [T + 1] */
	const int32_t *expert; /* [off[T]] */
	const float *weight;   /* [off[T]] */
};

struct moe_backend {
	/* out[t, :] = Σ_i weight[i] · FFN_expert[i](x[t, :]) over token t's
	 * experts, for layer `layer`.  x: [T, d] row-major (borrowed for the
	 * call); out: [T, d], overwritten (zero for tokens with no expert).
	 * Returns 0 or an EPMOE_E* code (EPMOE_EUNAVAIL when a worker failed). */
	int (*run)(struct moe_backend *be, uint32_t layer, const float *x,
	        const struct moe_assign *a, float *out);
	void (*free)(struct moe_backend *be);
	/* Optional (NULL: failures are never token-specific).  After run()
	 * returned EPMOE_EUNAVAIL: sets mask[t] = 1 (mask: n_tok bytes, zeroed
	 * by the caller) for each token that routed to an expert no live
	 * worker serves, and returns how many; 0 when the failure was not
	 * about particular tokens. */
	uint32_t (*unserved)(struct moe_backend *be, uint8_t *mask, uint32_t n_tok);
};

/* In-process experts computed with the engine's thread pool.  Borrows m and
 * pool (they must outlive the backend).  Free with be->free(be). */
int moe_local_new(struct moe_backend **out, const struct model *m,
        struct pool *pool);

/* Runs experts [0, E) of one layer for the given token rows, in process.
 * The worker uses this on the slots it hosts: rows grouped per expert.
 * x_e: [n, d] rows for expert e; y_e: [n, d] output (not weighted).
 * scratch must hold 2 * n * ff floats. */
int moe_expert_ffn(const struct model *m, struct pool *pool, uint32_t layer,
        uint32_t expert, const float *x_e, uint32_t n, float *y_e,
        float *scratch);

#endif
