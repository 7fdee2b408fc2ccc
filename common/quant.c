/* The block-quantised types: scalar definitions (dequantisation, the
 * rounding of activations, reference dot products) and the dispatch to the
 * vector kernels of quant_dot.c.  See quant.h.
 *
 * The reference dot products compute each block's integer sums exactly and
 * combine them in double, so they are the definition the vector code (which
 * sums in float) is checked against.  Q8_0 weights convert through
 * gguf_conv.c, which has always handled that type.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "quant.h"
#include "quant_int.h"

int
quant_is_weight(enum dtype t)
{
	switch (t) {
	case DTYPE_Q4_0: case DTYPE_Q4_1: case DTYPE_Q5_0: case DTYPE_Q5_1:
	case DTYPE_Q8_0: case DTYPE_Q2_K: case DTYPE_Q3_K: case DTYPE_Q4_K:
	case DTYPE_Q5_K: case DTYPE_Q6_K:
		return 1;
	default:
		return 0;
	}
}

enum dtype
quant_act_type(enum dtype t)
{
	switch (t) {
	case DTYPE_Q4_0: case DTYPE_Q5_0: case DTYPE_Q8_0:
		return DTYPE_Q8_0;
	case DTYPE_Q4_1: case DTYPE_Q5_1:
		return DTYPE_Q8_1;
	case DTYPE_Q2_K: case DTYPE_Q3_K: case DTYPE_Q4_K: case DTYPE_Q5_K:
	case DTYPE_Q6_K:
		return DTYPE_Q8_K;
	default:
		return DTYPE_F32;
	}
}

int
quant_prefill_sgemm(enum dtype t)
{
	if (!quant_is_weight(t) || t == DTYPE_Q4_1 || t == DTYPE_Q5_1)
		return 0;
	return dtype_block_elems(t) != QK_K || !quant_multi_kernels();
}

/* ---- one quant of a block, by value index (the layouts of quant.h) ---- */

static inline int
q4_0_at(const struct blk_q4_0 *b, int i)
{
	return ((b->qs[i % 16] >> (4 * (i / 16))) & 15) - 8;
}

static inline int
q4_1_at(const struct blk_q4_1 *b, int i)
{
	return (b->qs[i % 16] >> (4 * (i / 16))) & 15;
}

static inline int
qh_bit(const uint8_t qh[4], int i)
{
	return (qh[i / 8] >> (i % 8)) & 1;
}

static inline int
q5_0_at(const struct blk_q5_0 *b, int i)
{
	return (((b->qs[i % 16] >> (4 * (i / 16))) & 15) | qh_bit(b->qh, i) << 4) - 16;
}

static inline int
q5_1_at(const struct blk_q5_1 *b, int i)
{
	return ((b->qs[i % 16] >> (4 * (i / 16))) & 15) | qh_bit(b->qh, i) << 4;
}

static inline int
q2_K_at(const struct blk_q2_K *b, int i)
{
	return (b->qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
}

/* in [-4, 3] */
static inline int
q3_K_at(const struct blk_q3_K *b, int i)
{
	int lo = (b->qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
	return lo - (((b->hmask[i % 32] >> (i / 32)) & 1) ? 0 : 4);
}

static inline int
q4_K_at(const struct blk_q4_K *b, int i)
{
	return (b->qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 15;
}

static inline int
q5_K_at(const struct blk_q5_K *b, int i)
{
	int lo = (b->qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 15;
	return lo | ((b->qh[i % 32] >> (i / 32)) & 1) << 4;
}

/* in [-32, 31] */
static inline int
q6_K_at(const struct blk_q6_K *b, int i)
{
	int n = i / 128, k = (i % 128) / 32, l = i % 32;
	int lo = (b->ql[64 * n + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 15;
	int hi = (b->qh[32 * n + l] >> (2 * k)) & 3;
	return (lo | hi << 4) - 32;
}

static inline float
h2f(uint16_t h)
{
	return fp16_to_f32(h);
}

/* ---- dequantisation ---- */

/* Bytes and values per block of the types handled here. */
static size_t
blk_bytes(enum dtype t)
{
	return dtype_block_size(t);
}

static size_t
blk_elems(enum dtype t)
{
	return dtype_block_elems(t);
}

static void
block_to_f32(enum dtype t, const void *src, float *y)
{
	switch (t) {
	case DTYPE_Q4_0: {
		const struct blk_q4_0 *b = src;
		float d = h2f(b->d);
		for (int i = 0; i < 32; i++)
			y[i] = d * (float)q4_0_at(b, i);
		break;
	}
	case DTYPE_Q4_1: {
		const struct blk_q4_1 *b = src;
		float d = h2f(b->d), m = h2f(b->m);
		for (int i = 0; i < 32; i++)
			y[i] = d * (float)q4_1_at(b, i) + m;
		break;
	}
	case DTYPE_Q5_0: {
		const struct blk_q5_0 *b = src;
		float d = h2f(b->d);
		for (int i = 0; i < 32; i++)
			y[i] = d * (float)q5_0_at(b, i);
		break;
	}
	case DTYPE_Q5_1: {
		const struct blk_q5_1 *b = src;
		float d = h2f(b->d), m = h2f(b->m);
		for (int i = 0; i < 32; i++)
			y[i] = d * (float)q5_1_at(b, i) + m;
		break;
	}
	case DTYPE_Q8_1: {
		const struct blk_q8_1 *b = src;
		float d = h2f(b->d);
		for (int i = 0; i < 32; i++)
			y[i] = d * (float)b->qs[i];
		break;
	}
	case DTYPE_Q2_K: {
		const struct blk_q2_K *b = src;
		float d = h2f(b->d), dmin = h2f(b->dmin);
		for (int i = 0; i < QK_K; i++) {
			uint8_t sc = b->scales[i / 16];
			y[i] = d * (float)(sc & 15) * (float)q2_K_at(b, i) -
			        dmin * (float)(sc >> 4);
		}
		break;
	}
	case DTYPE_Q3_K: {
		const struct blk_q3_K *b = src;
		int8_t sc[16];
		float d = h2f(b->d);
		quant_k3_scales(b->scales, sc);
		for (int i = 0; i < QK_K; i++)
			y[i] = d * (float)sc[i / 16] * (float)q3_K_at(b, i);
		break;
	}
	case DTYPE_Q4_K: {
		const struct blk_q4_K *b = src;
		uint8_t sc[8], m[8];
		float d = h2f(b->d), dmin = h2f(b->dmin);
		quant_k4_scales(b->scales, sc, m);
		for (int i = 0; i < QK_K; i++)
			y[i] = d * (float)sc[i / 32] * (float)q4_K_at(b, i) -
			        dmin * (float)m[i / 32];
		break;
	}
	case DTYPE_Q5_K: {
		const struct blk_q5_K *b = src;
		uint8_t sc[8], m[8];
		float d = h2f(b->d), dmin = h2f(b->dmin);
		quant_k4_scales(b->scales, sc, m);
		for (int i = 0; i < QK_K; i++)
			y[i] = d * (float)sc[i / 32] * (float)q5_K_at(b, i) -
			        dmin * (float)m[i / 32];
		break;
	}
	case DTYPE_Q6_K: {
		const struct blk_q6_K *b = src;
		float d = h2f(b->d);
		for (int i = 0; i < QK_K; i++)
			y[i] = d * (float)b->scales[i / 16] * (float)q6_K_at(b, i);
		break;
	}
	case DTYPE_Q8_K: {
		const struct blk_q8_K *b = src;
		for (int i = 0; i < QK_K; i++)
			y[i] = b->d * (float)b->qs[i];
		break;
	}
	default:
		break;
	}
}

static int
row_ok(enum dtype t, size_t n)
{
	size_t be = blk_elems(t);

	if (!(quant_is_weight(t) || t == DTYPE_Q8_1 || t == DTYPE_Q8_K))
		return EPMOE_ENOTSUP;
	return be > 1 && n % be == 0 ? 0 : EPMOE_EINVAL;
}

int
quant_row_to_f32_ref(enum dtype t, const void *src, float *dst, size_t n)
{
	const uint8_t *s = src;
	size_t nb, bb;
	int rc;

	if ((rc = row_ok(t, n)) != 0)
		return rc;
	if (t == DTYPE_Q8_0)
		return dtype_row_to_f32_ref(t, src, dst, n);
	nb = n / blk_elems(t);
	bb = blk_bytes(t);
	for (size_t i = 0; i < nb; i++)
		block_to_f32(t, s + i * bb, dst + i * blk_elems(t));
	return 0;
}

int
quant_row_to_f32(enum dtype t, const void *src, float *dst, size_t n)
{
	const uint8_t *s = src;
	size_t nb, done;
	int rc;

	if ((rc = row_ok(t, n)) != 0)
		return rc;
	if (t == DTYPE_Q8_0)
		return dtype_row_to_f32(t, src, dst, n);
	nb = n / blk_elems(t);
	done = quant_to_f32_vec(t, src, dst, nb);
	return quant_row_to_f32_ref(t, s + done * blk_bytes(t),
	        dst + done * blk_elems(t), n - done * blk_elems(t));
}

/* ---- rounding of activations (llama.cpp's quantize_row_q8_0 / _q8_1
 * (x86 AVX2 path) and quantize_row_q8_K_ref) ---- */

/* round half to even, clamped first so NaN / inf cannot reach the int
 * conversion */
static inline int
rne(float v, float lim)
{
	v = fmaxf(fminf(v, lim), -lim);
	return (int)nearbyintf(v);
}

static void
act_q8_0(const float *x, struct blk_q8_0 *y, int with_sum, uint16_t *s_out)
{
	float amax = 0.0f, d, id;
	int sum = 0;

	for (int j = 0; j < 32; j++)
		amax = fmaxf(amax, fabsf(x[j]));
	d = amax / 127.0f;
	id = amax != 0.0f ? 127.0f / amax : 0.0f;
	y->d = f32_to_fp16(d);
	for (int j = 0; j < 32; j++) {
		int q = rne(x[j] * id, 127.0f);
		y->qs[j] = (int8_t)q;
		sum += q;
	}
	if (with_sum)
		*s_out = f32_to_fp16(d * (float)sum);
}

static void
act_q8_K(const float *x, struct blk_q8_K *y)
{
	float amax = 0.0f, max = 0.0f, iscale;

	for (int j = 0; j < QK_K; j++) {
		float ax = fabsf(x[j]);
		if (ax > amax) {
			amax = ax;
			max = x[j];
		}
	}
	memset(y->bsums, 0, sizeof(y->bsums));
	if (amax == 0.0f) {
		y->d = 0.0f;
		memset(y->qs, 0, sizeof(y->qs));
		return;
	}
	iscale = -127.0f / max;
	for (int j = 0; j < QK_K; j++) {
		int q = rne(iscale * x[j], 128.0f);
		y->qs[j] = (int8_t)(q < 127 ? q : 127);
		y->bsums[j / 16] = (int16_t)(y->bsums[j / 16] + y->qs[j]);
	}
	y->d = 1.0f / iscale;
}

void
quant_act_row(enum dtype at, const float *x, void *dst, size_t n)
{
	switch (at) {
	case DTYPE_Q8_0: {
		struct blk_q8_0 *y = dst;
		for (size_t i = 0; i < n / 32; i++)
			act_q8_0(x + 32 * i, &y[i], 0, NULL);
		break;
	}
	case DTYPE_Q8_1: {
		struct blk_q8_1 *y = dst;
		for (size_t i = 0; i < n / 32; i++) {
			struct blk_q8_0 t;
			act_q8_0(x + 32 * i, &t, 1, &y[i].s);
			y[i].d = t.d;
			memcpy(y[i].qs, t.qs, 32);
		}
		break;
	}
	case DTYPE_Q8_K: {
		struct blk_q8_K *y = dst;
		for (size_t i = 0; i < n / QK_K; i++)
			act_q8_K(x + QK_K * i, &y[i]);
		break;
	}
	default:
		break;
	}
}

void
quant_act_round(enum dtype t, const float *x, float *y, size_t n)
{
	enum dtype at = quant_act_type(t);
	union {
		struct blk_q8_0 q0;
		struct blk_q8_1 q1;
		struct blk_q8_K qk;
	} b;
	size_t be;

	if (at == DTYPE_F32) {
		if (y != x)
			memmove(y, x, n * sizeof(float));
		return;
	}
	be = at == DTYPE_Q8_K ? QK_K : 32;
	for (size_t i = 0; i + be <= n; i += be) {
		quant_act_row(at, x + i, &b, be);
		if (at == DTYPE_Q8_K) {
			for (size_t j = 0; j < be; j++)
				y[i + j] = b.qk.d * (float)b.qk.qs[j];
		} else {
			/* Q8_0 and Q8_1 start alike: f16 d, then (for Q8_1
			 * after s) the quants */
			const int8_t *q = at == DTYPE_Q8_0 ? b.q0.qs : b.q1.qs;
			float d = h2f(at == DTYPE_Q8_0 ? b.q0.d : b.q1.d);
			for (size_t j = 0; j < be; j++)
				y[i + j] = d * (float)q[j];
		}
	}
}

/* ---- reference dot products ---- */

static double
dot_ref_block(enum dtype t, const void *wb, const void *ab)
{
	switch (t) {
	case DTYPE_Q4_0: case DTYPE_Q5_0: case DTYPE_Q8_0: {
		const struct blk_q8_0 *a = ab;
		long s = 0;
		double dw;
		for (int i = 0; i < 32; i++) {
			int q = t == DTYPE_Q4_0 ? q4_0_at(wb, i) :
			        t == DTYPE_Q5_0 ? q5_0_at(wb, i) :
			        ((const struct blk_q8_0 *)wb)->qs[i];
			s += (long)q * a->qs[i];
		}
		dw = h2f(*(const uint16_t *)wb); /* d leads all three */
		return dw * h2f(a->d) * (double)s;
	}
	case DTYPE_Q4_1: case DTYPE_Q5_1: {
		const struct blk_q8_1 *a = ab;
		const uint16_t *dm = wb; /* d, m lead both */
		long s = 0;
		for (int i = 0; i < 32; i++)
			s += (long)(t == DTYPE_Q4_1 ? q4_1_at(wb, i) : q5_1_at(wb, i)) *
			        a->qs[i];
		return (double)h2f(dm[0]) * h2f(a->d) * (double)s +
		        (double)h2f(dm[1]) * h2f(a->s);
	}
	case DTYPE_Q2_K: {
		const struct blk_q2_K *w = wb;
		const struct blk_q8_K *a = ab;
		long s = 0, ms = 0;
		for (int g = 0; g < 16; g++) {
			long gs = 0;
			for (int i = 16 * g; i < 16 * g + 16; i++)
				gs += (long)q2_K_at(w, i) * a->qs[i];
			s += (long)(w->scales[g] & 15) * gs;
			ms += (long)(w->scales[g] >> 4) * a->bsums[g];
		}
		return (double)a->d * ((double)h2f(w->d) * (double)s -
		                              (double)h2f(w->dmin) * (double)ms);
	}
	case DTYPE_Q3_K: {
		const struct blk_q3_K *w = wb;
		const struct blk_q8_K *a = ab;
		int8_t sc[16];
		long s = 0;
		quant_k3_scales(w->scales, sc);
		for (int g = 0; g < 16; g++) {
			long gs = 0;
			for (int i = 16 * g; i < 16 * g + 16; i++)
				gs += (long)q3_K_at(w, i) * a->qs[i];
			s += (long)sc[g] * gs;
		}
		return (double)a->d * (double)h2f(w->d) * (double)s;
	}
	case DTYPE_Q4_K: case DTYPE_Q5_K: {
		const struct blk_q8_K *a = ab;
		const uint16_t *dm = wb;
		const uint8_t *scales = t == DTYPE_Q4_K ?
		        ((const struct blk_q4_K *)wb)->scales :
		        ((const struct blk_q5_K *)wb)->scales;
		uint8_t sc[8], m[8];
		long s = 0, ms = 0;
		quant_k4_scales(scales, sc, m);
		for (int g = 0; g < 8; g++) {
			long gs = 0;
			for (int i = 32 * g; i < 32 * g + 32; i++)
				gs += (long)(t == DTYPE_Q4_K ? q4_K_at(wb, i) : q5_K_at(wb, i)) *
				        a->qs[i];
			s += (long)sc[g] * gs;
			ms += (long)m[g] * (a->bsums[2 * g] + a->bsums[2 * g + 1]);
		}
		return (double)a->d * ((double)h2f(dm[0]) * (double)s -
		                              (double)h2f(dm[1]) * (double)ms);
	}
	case DTYPE_Q6_K: {
		const struct blk_q6_K *w = wb;
		const struct blk_q8_K *a = ab;
		long s = 0;
		for (int g = 0; g < 16; g++) {
			long gs = 0;
			for (int i = 16 * g; i < 16 * g + 16; i++)
				gs += (long)q6_K_at(w, i) * a->qs[i];
			s += (long)w->scales[g] * gs;
		}
		return (double)a->d * (double)h2f(w->d) * (double)s;
	}
	default:
		return 0.0;
	}
}

float
quant_dot_ref(enum dtype t, const void *w, const void *a, size_t n)
{
	enum dtype at = quant_act_type(t);
	size_t nb, wbb, abb;
	double s = 0.0;

	if (!quant_is_weight(t))
		return 0.0f;
	nb = n / blk_elems(t);
	wbb = blk_bytes(t);
	abb = blk_bytes(at);
	for (size_t i = 0; i < nb; i++)
		s += dot_ref_block(t, (const uint8_t *)w + i * wbb,
		        (const uint8_t *)a + i * abb);
	return (float)s;
}

float
quant_dot(enum dtype t, const void *w, const void *a, size_t n)
{
	switch (t) {
	case DTYPE_Q4_0: return quant_dot_q4_0(w, a, n / 32);
	case DTYPE_Q4_1: return quant_dot_q4_1(w, a, n / 32);
	case DTYPE_Q5_0: return quant_dot_q5_0(w, a, n / 32);
	case DTYPE_Q5_1: return quant_dot_q5_1(w, a, n / 32);
	case DTYPE_Q8_0: return quant_dot_q8_0(w, a, n / 32);
	case DTYPE_Q2_K: return quant_dot_q2_K(w, a, n / QK_K);
	case DTYPE_Q3_K: return quant_dot_q3_K(w, a, n / QK_K);
	case DTYPE_Q4_K: return quant_dot_q4_K(w, a, n / QK_K);
	case DTYPE_Q5_K: return quant_dot_q5_K(w, a, n / QK_K);
	case DTYPE_Q6_K: return quant_dot_q6_K(w, a, n / QK_K);
	default: return 0.0f;
	}
}

/* ---- quantisation ---- */

int
quant_row_from_f32(enum dtype t, const float *src, void *dst, size_t n)
{
	size_t nb;
	int rc;

	if (!quant_is_weight(t))
		return EPMOE_ENOTSUP;
	if ((rc = row_ok(t, n)) != 0)
		return rc;
	nb = n / blk_elems(t);
	switch (t) {
	case DTYPE_Q4_0: quant_make_q4_0(src, dst, nb); break;
	case DTYPE_Q4_1: quant_make_q4_1(src, dst, nb); break;
	case DTYPE_Q5_0: quant_make_q5_0(src, dst, nb); break;
	case DTYPE_Q5_1: quant_make_q5_1(src, dst, nb); break;
	case DTYPE_Q8_0: return dtype_row_from_f32(t, src, dst, n);
	case DTYPE_Q2_K: quant_make_q2_K(src, dst, nb); break;
	case DTYPE_Q3_K: quant_make_q3_K(src, dst, nb); break;
	case DTYPE_Q4_K: quant_make_q4_K(src, dst, nb); break;
	case DTYPE_Q5_K: quant_make_q5_K(src, dst, nb); break;
	case DTYPE_Q6_K: quant_make_q6_K(src, dst, nb); break;
	default: return EPMOE_ENOTSUP;
	}
	return 0;
}

/* ---- products ---- */

/* Rounded activation rows up to this size live on the stack. */
#define ACT_STACK 16384
/* Bytes of rounded activation rows one pass over the weight rows uses. */
#define ACT_TILE 65536

int
quant_matmul_rows(enum dtype t, const void *data, size_t row_size,
        uint32_t n_in, uint32_t r0, uint32_t r1, const float *X, int n,
        int ldx, float *Y, int ldy)
{
	_Alignas(64) uint8_t stack[ACT_STACK];
	enum dtype at = quant_act_type(t);
	size_t arow, need;
	uint8_t *A = stack;

	if (at == DTYPE_F32 || n_in % blk_elems(t) != 0 || n < 0)
		return EPMOE_EINVAL;
	arow = dtype_row_size(at, n_in);
	need = arow * (size_t)n;
	if (need > sizeof(stack) && (A = aligned_alloc(64, (need + 63) & ~(size_t)63)) == NULL)
		return EPMOE_ENOMEM;
	for (int r = 0; r < n; r++)
		quant_act_row(at, X + (size_t)r * ldx, A + (size_t)r * arow, n_in);
	/* token rows in tiles of about ACT_TILE bytes, so a tile stays in
	 * L2 while every weight row of the range passes over it (with all
	 * rows at once, 512 rows of Q8_K activations streamed from L3 for
	 * each weight row: measured a third slower) */
	int tile = (int)(ACT_TILE / arow) & ~(QUANT_MULTI - 1);
	if (tile < QUANT_MULTI)
		tile = QUANT_MULTI;
	for (int t0 = 0; t0 < n; t0 += tile) {
		int t1 = n - t0 < tile ? n : t0 + tile;
		for (uint32_t j = r0; j < r1; j++) {
			const uint8_t *w = (const uint8_t *)data + (size_t)j * row_size;
			for (int r = t0; r < t1; r += QUANT_MULTI) {
				float out[QUANT_MULTI];
				int nt = t1 - r < QUANT_MULTI ? t1 - r : QUANT_MULTI;
				quant_dot_multi(t, w, A + (size_t)r * arow, arow, nt, n_in, out);
				for (int k = 0; k < nt; k++)
					Y[(size_t)(r + k) * ldy + j] = out[k];
			}
		}
	}
	if (A != stack)
		free(A);
	return 0;
}
