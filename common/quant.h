/* ggml's block-quantized tensor types: the legacy formats Q4_0, Q4_1, Q5_0,
 * Q5_1, Q8_0 and the K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.  This module
 * owns their block layouts, dequantisation to float32, the integer dot
 * products of the matrix products and the quantisers that write them.
 *
 * Products follow llama.cpp's CPU backend: an activation row is first
 * rounded to 8-bit blocks - Q8_K (256 values, float scale, sums of 16) for
 * the K-quants, Q8_1 (32 values, f16 scale and scaled sum) for Q4_1 and
 * Q5_1, Q8_0 for the others - with exactly llama.cpp's scale and rounding
 * rules, then every weight row is dotted with it block by block in integer
 * arithmetic and scaled in float.  So logits agree with llama.cpp's up to
 * float summation order.  With many token rows (prefill) matmul.c may instead
 * dequantise blocks of weight rows and run its f32 product ("sgemm" below;
 * OpenBLAS's when these figures were taken) on activations rounded the
 * same way (quant_act_round): the same products, summed in float; which
 * path is faster per type is quant_prefill_sgemm's answer.
 *
 * Weights are read in place from the mapping, one row at a time; nothing is
 * converted at load.  The dot products use AVX-512 (F, BW, VL; VNNI when
 * present; up to four token rows per unpacked weight block) or AVX2 when
 * the build targets them, else portable C; the *_ref functions are the
 * plain scalar definitions the tests hold the vector code to.
 *
 * Must not know about models or threads: callers hand it rows.
 */
#ifndef EPMOE_QUANT_H
#define EPMOE_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

#define QK_K 256 /* values per K-quant super-block */

/* Block layouts (little-endian; f16 fields are IEEE half).  Every size is
 * even and tensor data is 32-byte aligned, so 2-byte fields are aligned. */
struct blk_q4_0 { /* value = d * (q - 8) */
	uint16_t d;
	uint8_t qs[16]; /* value j: low nibble of qs[j]; j + 16: high nibble */
};
struct blk_q4_1 { /* value = d * q + m */
	uint16_t d, m;
	uint8_t qs[16];
};
struct blk_q5_0 { /* value = d * (q - 16), q = nibble | bit j of qh << 4 */
	uint16_t d;
	uint8_t qh[4];
	uint8_t qs[16];
};
struct blk_q5_1 { /* value = d * q + m */
	uint16_t d, m;
	uint8_t qh[4];
	uint8_t qs[16];
};
struct blk_q8_0 { /* value = d * q */
	uint16_t d;
	int8_t qs[32];
};
struct blk_q8_1 { /* activations only: s = d * sum(qs) */
	uint16_t d, s;
	int8_t qs[32];
};
/* Q2_K: 16 groups of 16; value = d * (sc & 15) * q - dmin * (sc >> 4),
 * q = 2 bits.  Value i: bits 2 * ((i % 128) / 32) of qs[32 * (i / 128) +
 * i % 32]; group i / 16. */
struct blk_q2_K {
	uint8_t scales[16];
	uint8_t qs[64];
	uint16_t d, dmin;
};
/* Q3_K: 16 groups of 16; value = d * (s - 32) * q, s 6 bits packed in 12
 * bytes, q = (2 low bits as Q2_K) - (bit (i / 32) of hmask[i % 32] ? 0 : 4). */
struct blk_q3_K {
	uint8_t hmask[32];
	uint8_t qs[64];
	uint8_t scales[12];
	uint16_t d;
};
/* Q4_K: 8 groups of 32; value = d * sc * q - dmin * m, sc and m 6 bits
 * packed in 12 bytes.  Value i: nibble (i / 32) % 2 of qs[32 * (i / 64) +
 * i % 32]. */
struct blk_q4_K {
	uint16_t d, dmin;
	uint8_t scales[12];
	uint8_t qs[128];
};
/* Q5_K: as Q4_K plus bit (i / 32) of qh[i % 32] as the fifth bit. */
struct blk_q5_K {
	uint16_t d, dmin;
	uint8_t scales[12];
	uint8_t qh[32];
	uint8_t qs[128];
};
/* Q6_K: 16 groups of 16; value = d * sc * (q - 32), q = 4 bits of ql and
 * 2 bits of qh (see quant.c), sc signed 8 bits. */
struct blk_q6_K {
	uint8_t ql[128];
	uint8_t qh[64];
	int8_t scales[16];
	uint16_t d;
};
/* Q8_K: activations only; value = d * q, bsums = sums of 16 quants. */
struct blk_q8_K {
	float d;
	int8_t qs[QK_K];
	int16_t bsums[QK_K / 16];
};

/* 1 if t is one of the block-quantised weight types above (Q8_1 and Q8_K
 * are activation formats, not weight types). */
int quant_is_weight(enum dtype t);

/* The format activations are rounded to before a product with weights of
 * type t (DTYPE_Q8_K, DTYPE_Q8_1 or DTYPE_Q8_0); DTYPE_F32 for types that
 * are not quantised. */
enum dtype quant_act_type(enum dtype t);

/* 1 if products with many token rows (matmul.c's panel path) should run as
 * sgemm on dequantised weight blocks and quant_act_round'ed activations
 * rather than as integer dot products.  Both give the same products, up
 * to float summation, except for Q4_1 and Q5_1 (Q8_1 activations carry
 * their block sum rounded to f16 on its own): those always take the
 * integer path.  The legacy formats are faster through sgemm; the
 * K-quants are too without 512-bit kernels, while the 512-bit
 * multi-row kernels measured 1.0-1.5x the sgemm path (one core,
 * [1024 x 1024] weights, 64 to 512 rows), so they take the integer path
 * at every size there. */
int quant_prefill_sgemm(enum dtype t);

/* Rounds one activation row of n values (n a multiple of the block) to at
 * (Q8_0, Q8_1 or Q8_K) into dst (dtype_row_size(at, n) bytes), bit for bit
 * as llama.cpp b4747 does on x86. */
void quant_act_row(enum dtype at, const float *x, void *dst, size_t n);

/* The values the rounded activation row stands for: y = dequant(quant(x))
 * for products with weights of type t (the sgemm path).  In place allowed. */
void quant_act_round(enum dtype t, const float *x, float *y, size_t n);

/* Dot product of one weight row w of type t (n values) with an activation
 * row a rounded by quant_act_row(quant_act_type(t)). */
float quant_dot(enum dtype t, const void *w, const void *a, size_t n);
float quant_dot_ref(enum dtype t, const void *w, const void *a, size_t n);

/* n values (a multiple of the block) of type t to float32; Q8_0, Q8_1 and
 * Q8_K too.  EPMOE_ENOTSUP for other types. */
int quant_row_to_f32(enum dtype t, const void *src, float *dst, size_t n);
int quant_row_to_f32_ref(enum dtype t, const void *src, float *dst,
        size_t n);

/* Quantises n float32 values to type t (every weight type; Q8_0 with
 * ggml's reference rounding).  The K-quant scales are chosen by a small
 * least-squares search per group (quant_make.c); not bit-identical to
 * llama-quantize, same formats.  EPMOE_ENOTSUP for other types. */
int quant_row_from_f32(enum dtype t, const float *src, void *dst, size_t n);

/* Y[n, r1) columns r0.. = X[n, W.n_in] · rows [r0, r1) of the weight
 * matrix (row_size bytes per row, n_in values of type t at data), one
 * thread: rounds the n activation rows once, then dots every weight row
 * with them, up to four at a time (each weight block unpacked once).
 * EPMOE_ENOMEM if the rounded rows do not fit. */
int quant_matmul_rows(enum dtype t, const void *data, size_t row_size,
        uint32_t n_in, uint32_t r0, uint32_t r1, const float *X, int n,
        int ldx, float *Y, int ldy);

/* Which vector code this build runs: "avx512", "avx2" or "scalar". */
const char *quant_simd_name(void);

#endif
