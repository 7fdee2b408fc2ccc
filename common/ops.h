/* The numeric kernels of the forward pass: RMSNorm, RoPE, softmax, SwiGLU,
 * and the matrix product Y = X · Wᵀ for weights of any supported tensor
 * type.  Shapes are in the comments; everything is row-major float32
 * except the weights, which stay in their file type (mmapped, never
 * copied).
 *
 * Matrix products (common/matmul.c, per-type kernels in matmul.h): F32,
 * F16 and BF16 weights go through one register-tiled kernel for every
 * token count, reading the weights in their file type and converting them
 * in registers (decode: each weight byte read once; prefill: 6x2 tiles),
 * whose result for a token row does not depend on the other rows of the
 * call (batch-invariant).  Block-quantised weights (quant.h) first round
 * the activations as llama.cpp does, then take quant.c's integer dot
 * products, or with many token rows (where quant.h says it is faster)
 * the tiled kernel on dequantised panels of weight rows.  The pool's
 * threads take chunks of the weight rows of all the products of a round
 * from a counter.
 */
#ifndef EPMOE_OPS_H
#define EPMOE_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "pool.h"

/* A 2-D weight matrix: n_out rows of n_in elements of type `type`
 * (GGUF ne0 = n_in, ne1 = n_out).  Borrowed view into the mapping. */
struct tmat {
	enum dtype type;
	uint32_t n_in;
	uint32_t n_out;
	size_t row_size; /* bytes per row */
	const void *data;
};

/* Row r of m as f32 into dst[n_in]. */
int tmat_row_f32(const struct tmat *m, uint32_t r, float *dst);

/* y[i] = x[i] / sqrt(mean(x²) + eps) * w[i] for one row of n. w may be NULL
 * (no scale). In place allowed (y == x). */
void op_rmsnorm(float *y, const float *x, const float *w, int n, float eps);

/* Rotates the first n_rot dims of each of n_heads heads (head_dim apart) of
 * one token at position pos.  freq[i] = base^(-2i/n_rot), i < n_rot/2.
 * neox = 0: adjacent pairs (x[2i], x[2i+1]) (llama/Mixtral);
 * neox = 1: pairs (x[i], x[i + n_rot/2]) (GPT-NeoX; qwen2moe, olmoe). */
void op_rope(float *x, int n_heads, int head_dim, int n_rot, int pos,
        const float *freq, int neox);

/* In-place softmax of n values (max-subtracted; vectorised exp, relative
 * error < 2e-7). */
void op_softmax(float *x, int n);

/* g[i] = silu(g[i]) * u[i] */
void op_swiglu(float *g, const float *u, int n);

/* dot product of two f32 vectors of length n */
float op_dot(const float *a, const float *b, int n);

/* Y[n, n_out] (row stride ldy) = X[n, n_in] (row stride ldx) · Wᵀ, run on
 * all threads of pool.  Returns 0 or EPMOE_ENOTSUP / EPMOE_ENOMEM. */
int op_matmul(struct pool *pool, const struct tmat *W, const float *X, int n,
        int ldx, float *Y, int ldy);

/* One product Y [n, W.n_out] = X [n, W.n_in] · Wᵀ of a batch. */
struct op_mm {
	const struct tmat *W;
	const float *X;
	int n, ldx;
	float *Y;
	int ldy;
};

/* Several products in one pool round (the threads share out chunks of the
 * weight rows of all of them). */
int op_matmul_batch(struct pool *pool, int n_mm, const struct op_mm *mm);

/* Several products sharing X in one pool round (n_w <= 8):
 * Y[m] = X · W[m]ᵀ. */
int op_matmul_multi(struct pool *pool, int n_w, const struct tmat *const *W,
        const float *X, int n, int ldx, float *const *Y, const int *ldy);

/* The same, single-threaded, for the rows [r0, r1) of W only (Y's columns
 * r0..r1).  Used by callers that parallelise at a higher level. */
int op_matmul_rows(const struct tmat *W, uint32_t r0, uint32_t r1,
        const float *X, int n, int ldx, float *Y, int ldy);

/* Query rows processed together by op_attn_head. */
#define OP_ATT_QCHUNK 128

/* Causal attention of one head for n query rows at positions p0 .. p0+n-1
 * over keys/values 0 .. p0+n-1:
 *   O[i] = softmax_j<=p0+i (Q[i]·K[j] / sqrt(hd)) · V
 * Q: [n, hd] stride ldq; K, V: [p0+n, hd] stride ldk; O: [n, hd] stride
 * ldo.  s_buf: OP_ATT_QCHUNK * (p0 + n) floats of scratch. */
void op_attn_head(const float *Q, int ldq, const float *K, const float *V,
        int ldk, int n, int p0, int hd, float *O, int ldo, float *s_buf);

/* Decode attention (one query row at position P-1) of n_rep query heads
 * that share one key/value head (grouped-query attention): Q [n_rep, hd]
 * contiguous f32; K and V [P, hd] of type kv (DTYPE_F32 or DTYPE_F16,
 * the KV cache's) with row stride ldk elements; O [n_rep, hd] contiguous.
 * s_buf: n_rep * P floats. */
void op_attn_decode(const float *Q, int n_rep, const void *K, const void *V,
        enum dtype kv, size_t ldk, int P, int hd, float *O, float *s_buf);

/* Sets OpenBLAS to one thread (all parallelism is the pool's). */
void op_blas_init(void);

#endif
