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
struct tmat;

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
	/* Optional asynchronous pair (both NULL: the engine runs one batch
	 * per layer through run()).  submit() starts the call of micro-batch
	 * mb (0 or 1) as run() would and returns at once; wait(mb) finishes
	 * it and returns what run() would have.  x, a and out stay borrowed
	 * until wait(mb) returns.  The two micro-batches may be in flight at
	 * once; each has at most one call outstanding, and every successful
	 * submit() is followed by its wait().  unserved() after a failed
	 * wait(mb) describes that micro-batch's tokens. */
	int (*submit)(struct moe_backend *be, unsigned mb, uint32_t layer,
	        const float *x, const struct moe_assign *a, float *out);
	int (*wait)(struct moe_backend *be, unsigned mb);
	/* Optional prefetch hint (NULL: ignored).  Called just before the
	 * run() or submit() of micro-batch mb at layer - 1: the experts
	 * expert[0..n) of `layer` that its tokens will likely use (a
	 * speculative prediction, never a promise; n may be 0).  A
	 * distributed backend sends them with that call's requests so the
	 * workers page those weights in while layer - 1 computes.  expert is
	 * copied. */
	void (*hint)(struct moe_backend *be, unsigned mb, uint32_t layer,
	        const uint32_t *expert, uint32_t n);
};

/* In-process experts computed with the engine's thread pool.  Borrows m and
 * pool (they must outlive the backend).  Free with be->free(be). */
int moe_local_new(struct moe_backend **out, const struct model *m,
        struct pool *pool);

/* A layer's expert work grouped by expert, in the order it is computed
 * and combined: group g runs expert[g] on the next count[g] entries; entry
 * j reads row in_row[j] of x (in_row NULL: row j) and adds weight[j] times
 * the expert's output into row out_row[j] of out.  Local mode builds it
 * from a moe_assign (experts in id order, tokens in order within each);
 * the worker takes it from an ExpertBatch as it arrives.  All borrowed. */
struct moe_work {
	uint32_t n_groups;
	const uint32_t *expert;  /* [n_groups] */
	const uint32_t *count;   /* [n_groups] entries of each group */
	const uint32_t *in_row;  /* [n_entries] or NULL */
	const uint32_t *out_row; /* [n_entries] */
	const float *weight;     /* [n_entries] */
	uint32_t n_in;           /* rows of x */
	uint32_t n_out;          /* rows of out */
	/* NULL, or [n_groups][3]: group g computes with mats[3g..3g+2] (gate,
	 * up, down; a worker's Q8_0 copy of the expert) instead of the
	 * model's matrices when mats[3g].data is not NULL */
	const struct tmat *mats;
};

/* The grouped expert FFN and the weighted combine (moe_ffn.c): the one
 * expert-compute path of local mode and the worker.  Borrows m and pool.
 * Free with moe_ffn_free(). */
struct moe_ffn;
int moe_ffn_new(struct moe_ffn **out, const struct model *m, struct pool *pool);
void moe_ffn_free(struct moe_ffn *f);

/* out [n_out, d] = 0, then for every entry j in order:
 *   out[out_row[j]] += weight[j] · SwiGLU-FFN_expert(x[in_row[j]])
 * x: [n_in, d].  An entry's expert output has the same bits whatever else
 * the work holds.  Returns 0, EPMOE_EINVAL (an expert, layer or row out
 * of range; out untouched), EPMOE_ENOMEM or EPMOE_ENOTSUP. */
int moe_ffn_run(struct moe_ffn *f, uint32_t layer, const float *x,
        const struct moe_work *w, float *out);

#endif
