/* The per-type row kernels behind the weight products of ops.h
 * (op_matmul and friends, common/matmul.c).
 *
 * A weight type is usable in products when mm_kern_of() returns kernels
 * for it.  Adding a type is writing its two functions below and adding a
 * case to mm_kern_of(); the threading, the splitting of the work and the
 * f32 fallback are shared.  Nothing here allocates except the per-thread
 * panel scratch of the f32 fallback.
 *
 * Batch invariance: F32, F16 and BF16 go through one register-tiled
 * kernel whose arithmetic per output (two vector chains of FMAs over the
 * row in order, then one fixed lane tree) does not depend on how many
 * token rows or weight rows a call has.  So a token's product has the same
 * bits whatever else is in the batch: batched decode equals one-at-a-time
 * decode, and a worker computes what local mode does.  A new type keeps
 * that property as long as its dot kernel does not depend on n (or on r0,
 * r1) and agrees bit for bit with its to_f32 path, or sets dot_max_n = 0.
 * The block-quantised types (quant.h) round the activations first and
 * take quant.c's integer dot products, invariant below MM_QUANT_PANEL_N
 * token rows (decode); from there on some take dequantised panels, whose
 * float sums differ from the integer path's in the last bits.
 */
#ifndef EPMOE_MATMUL_H
#define EPMOE_MATMUL_H

#include <stdint.h>

#include "ops.h"

/* Y[t * ldy + j] = (row j of W) · (row t of X) for j in [r0, r1),
 * t in [0, n); X [n, W->n_in] with row stride ldx.  Single-threaded: the
 * products call it with one thread's share of a matrix (tens to hundreds
 * of rows), so set-up per call (such as converting X) is amortised. */
typedef int (*mm_dot_fn)(const struct tmat *W, uint32_t r0, uint32_t r1,
        const float *X, int n, int ldx, float *Y, int ldy);

/* Rows [r0, r1) of W as f32, one after the other, into
 * dst [(r1 - r0), W->n_in].  Returns 0 or an EPMOE_E* code. */
typedef int (*mm_f32_fn)(const struct tmat *W, uint32_t r0, uint32_t r1,
        float *dst);

struct mm_kern {
	mm_dot_fn dot;    /* fused product, or NULL: always through to_f32 */
	mm_f32_fn to_f32; /* required */
	int dot_max_n;    /* dot for up to this many token rows (0 = any n);
	                     beyond, rows are converted by to_f32 in panels of
	                     MM_PANEL_ROWS and multiplied by mm_dot_f32 */
};

#define MM_PANEL_ROWS 48 /* whole 6-row tiles */
/* Token rows from which block-quantised products may take panels. */
#define MM_QUANT_PANEL_N 32

/* The kernels of type t, or NULL when products cannot read it. */
const struct mm_kern *mm_kern_of(enum dtype t);

/* The tiled f32 kernel (an mm_dot_fn for DTYPE_F32 matrices), for types
 * that convert and delegate. */
int mm_dot_f32(const struct tmat *W, uint32_t r0, uint32_t r1,
        const float *X, int n, int ldx, float *Y, int ldy);

/* A thread-local buffer of at least n floats (64-byte aligned), grown as
 * needed and freed when the thread exits; NULL when out of memory. */
float *mm_scratch(size_t n);

#endif
