/* Internal to the quant module (quant.c, quant_dot.c, quant_make.c): the
 * scale unpacking shared by the scalar and vector code, and the per-type
 * kernels quant.c dispatches to.  Not for other modules. */
#ifndef EPMOE_QUANT_INT_H
#define EPMOE_QUANT_INT_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

/* Q4_K / Q5_K: the 8 group scales and 8 group mins (6 bits each) packed
 * in 12 bytes: sc[j] = s[j] & 63 and m[j] = s[j + 4] & 63 for j < 4; for
 * j >= 4 the low 4 bits come from s[j + 4] (scale low nibble, min high
 * nibble) and the top 2 bits from the top bits of s[j - 4] / s[j]. */
static inline void
quant_k4_scales(const uint8_t s[12], uint8_t sc[8], uint8_t m[8])
{
	for (int j = 0; j < 4; j++) {
		sc[j] = s[j] & 63;
		m[j] = s[j + 4] & 63;
		sc[j + 4] = (uint8_t)((s[j + 8] & 15) | ((s[j] >> 6) << 4));
		m[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
	}
}

/* Q3_K: 16 scales of 6 bits (stored + 32): low 4 bits in the nibbles of
 * s[0..7] (scales 0-7 low nibbles, 8-15 high nibbles), top 2 bits in
 * s[8..11] (scale j: bits 2 * (j / 4) of s[8 + j % 4]). */
static inline void
quant_k3_scales(const uint8_t s[12], int8_t sc[16])
{
	for (int j = 0; j < 16; j++) {
		int lo = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
		int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
		sc[j] = (int8_t)((lo | hi << 4) - 32);
	}
}

/* Dot products of nb blocks (weights of the named type, activations in
 * the matching Q8 format), vector code where built for it. */
float quant_dot_q4_0(const void *w, const void *a, size_t nb);
float quant_dot_q4_1(const void *w, const void *a, size_t nb);
float quant_dot_q5_0(const void *w, const void *a, size_t nb);
float quant_dot_q5_1(const void *w, const void *a, size_t nb);
float quant_dot_q8_0(const void *w, const void *a, size_t nb);
float quant_dot_q2_K(const void *w, const void *a, size_t nb);
float quant_dot_q3_K(const void *w, const void *a, size_t nb);
float quant_dot_q4_K(const void *w, const void *a, size_t nb);
float quant_dot_q5_K(const void *w, const void *a, size_t nb);
float quant_dot_q6_K(const void *w, const void *a, size_t nb);

/* out[k] = w . activation row k (rows a_stride bytes apart), k < nt <= 4,
 * each weight block unpacked once for all rows (512-bit builds; the others
 * loop over quant_dot).  Equal to quant_dot bit for bit. */
#define QUANT_MULTI 4
/* 1 where quant_dot_multi has real multi-row kernels (512-bit builds) */
int quant_multi_kernels(void);
void quant_dot_multi(enum dtype t, const void *w, const void *a,
        size_t a_stride, int nt, size_t n, float *out);

/* The 256-bit kernels (AVX2 code) of any type, also in AVX-512 builds, so
 * tests can hold both vector paths to the reference on one machine; the
 * reference itself in builds without AVX2. */
float quant_dot_narrow(enum dtype t, const void *w, const void *a, size_t nb);

/* Vector dequantisation of nb blocks; returns the blocks it converted
 * (0 when this build has no vector code for t), the caller finishes with
 * the scalar code. */
size_t quant_to_f32_vec(enum dtype t, const void *src, float *dst, size_t nb);

/* The quantisers of quant_make.c: nb blocks from nb * block values
 * (Q8_0 is gguf_conv.c's). */
void quant_make_q4_0(const float *x, void *dst, size_t nb);
void quant_make_q4_1(const float *x, void *dst, size_t nb);
void quant_make_q5_0(const float *x, void *dst, size_t nb);
void quant_make_q5_1(const float *x, void *dst, size_t nb);
void quant_make_q2_K(const float *x, void *dst, size_t nb);
void quant_make_q3_K(const float *x, void *dst, size_t nb);
void quant_make_q4_K(const float *x, void *dst, size_t nb);
void quant_make_q5_K(const float *x, void *dst, size_t nb);
void quant_make_q6_K(const float *x, void *dst, size_t nb);

#endif
