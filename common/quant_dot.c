/* Vector kernels of the quant module: the integer dot products of weight
 * blocks with rounded activation blocks, and block dequantisation.
 *
 * Three builds, chosen by the compiler's target macros (`make` builds with
 * -march=native): AVX-512 (F, BW, VL; VNNI used when present) works on 64
 * values per instruction and dots each unpacked weight block with up to
 * four activation rows (quant_dot_multi), AVX2 on 32 values and one row,
 * and without either every function falls back to the scalar reference of
 * quant.c.  All compute the same integer sums per block as the reference;
 * only the float summation of the per-block products differs (tests:
 * test_quant.c), and the multi-row kernels equal the one-row ones bit for
 * bit.
 *
 * Integer ranges (why nothing overflows): activations are in [-127, 127];
 * weight quants enter as unsigned bytes of at most 63 (K-quants, offsets
 * such as Q6_K's -32 are taken out through the activations' group sums) or,
 * for the legacy signed formats, as |q| <= 128 with the sign moved onto the
 * activation.  maddubs pairs stay below 2 * 128 * 127 < 2^15, a group scale
 * times a pair sum below 2^22, a whole 256-value block below 2^29.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "quant.h"
#include "quant_int.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define QZ 1 /* 512-bit kernels */
#else
#define QZ 0
#endif

int
quant_multi_kernels(void)
{
	return QZ;
}

const char *
quant_simd_name(void)
{
#if QZ
	return "avx512";
#elif defined(__AVX2__)
	return "avx2";
#else
	return "scalar";
#endif
}

static inline uint16_t
rd16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return v;
}

static inline float
h2f(uint16_t h)
{
#if defined(__F16C__)
	return _cvtsh_ss(h);
#else
	return fp16_to_f32(h);
#endif
}

#if defined(__AVX2__)

/* ---- 256-bit helpers ---- */

/* acc + sums of 4 products u8 x s8 per int32 lane */
static inline __m256i
mad_us(__m256i acc, __m256i u, __m256i s)
{
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
	return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
	return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
	return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s),
	        _mm256_set1_epi16(1)));
#endif
}

/* s8 x s8: the sign of x moves onto y so the first operand is |x| */
static inline __m256i
mad_ss(__m256i acc, __m256i x, __m256i y)
{
	return mad_us(acc, _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

static inline float
hsum8(__m256 v)
{
	__m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	h = _mm_add_ps(h, _mm_movehl_ps(h, h));
	h = _mm_add_ss(h, _mm_movehdup_ps(h));
	return _mm_cvtss_f32(h);
}

static inline __m256i
ld256(const void *p)
{
	return _mm256_loadu_si256((const __m256i *)p);
}

static inline __m128i
ld128(const void *p)
{
	return _mm_loadu_si128((const __m128i *)p);
}

/* 16 bytes of nibbles -> 32 values: low nibbles, then high nibbles */
static inline __m256i
nib32(const uint8_t *p)
{
	__m128i b = ld128(p), m = _mm_set1_epi8(15);

	return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m),
	        _mm_and_si128(b, m));
}

/* 32 bits -> 0x10 in byte i where bit i is set (the fifth bit of Q5_x) */
static inline __m256i
hbit32(const uint8_t *qh)
{
	uint32_t x;

	memcpy(&x, qh, 4);
#if QZ
	return _mm256_maskz_mov_epi8(x, _mm256_set1_epi8(16));
#else
	const __m256i spread = _mm256_set_epi64x(0x0303030303030303ll,
	        0x0202020202020202ll, 0x0101010101010101ll, 0);
	const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
	__m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), spread);
	v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
	return _mm256_and_si256(v, _mm256_set1_epi8(16));
#endif
}

/* ---- legacy formats (one scale per 32 values) ---- */

/* Byte layouts: Q4_0 d|qs, Q4_1 d|m|qs, Q5_0 d|qh|qs, Q5_1 d|m|qh|qs,
 * Q8_0 d|qs; activations Q8_0 d|qs, Q8_1 d|s|qs. */
static inline size_t
lg_wbytes(enum dtype t)
{
	return t == DTYPE_Q4_0 ? 18 : t == DTYPE_Q4_1 ? 20 : t == DTYPE_Q5_0 ? 22 :
	        t == DTYPE_Q5_1 ? 24 : 34;
}

static inline int
lg_has_min(enum dtype t)
{
	return t == DTYPE_Q4_1 || t == DTYPE_Q5_1;
}

static inline int
lg_signed(enum dtype t)
{
	return !lg_has_min(t);
}

/* the 32 weight quants of block b (signed for Q4_0 / Q5_0 / Q8_0) */
static inline __m256i
lg_quants(enum dtype t, const uint8_t *b)
{
	switch (t) {
	case DTYPE_Q4_0:
		return _mm256_sub_epi8(nib32(b + 2), _mm256_set1_epi8(8));
	case DTYPE_Q4_1:
		return nib32(b + 4);
	case DTYPE_Q5_0:
		return _mm256_sub_epi8(_mm256_or_si256(nib32(b + 6), hbit32(b + 2)),
		        _mm256_set1_epi8(16));
	case DTYPE_Q5_1:
		return _mm256_or_si256(nib32(b + 8), hbit32(b + 4));
	default:
		return ld256(b + 2);
	}
}

#if QZ
static inline __m512i
mad512_us(__m512i acc, __m512i u, __m512i s)
{
#if defined(__AVX512VNNI__)
	return _mm512_dpbusd_epi32(acc, u, s);
#else
	return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s),
	        _mm512_set1_epi16(1)));
#endif
}

static inline __m512i
cat256(__m256i lo, __m256i hi)
{
	return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
#endif

/* out[k] = weight row w (nb blocks of t) . activation row k (rows as
 * bytes apart), k < nt; each weight block is unpacked once for all rows.
 * wide: pairs of blocks in 512-bit registers where built for it. */
static inline __attribute__((always_inline)) void
lg_dot_m(enum dtype t, const uint8_t *w, const uint8_t *a, size_t as, int nt,
        size_t nb, int wide, float *out)
{
	const size_t wb = lg_wbytes(t), ab = lg_has_min(t) ? 36 : 34;
	const size_t aq = lg_has_min(t) ? 4 : 2;
	__m256 acc[4];
	float accm[4];
	size_t i = 0;

	for (int k = 0; k < nt; k++) {
		acc[k] = _mm256_setzero_ps();
		accm[k] = 0.0f;
	}
#if QZ
	__m512 acc2[4];
	for (int k = 0; k < nt; k++)
		acc2[k] = _mm512_setzero_ps();
	for (; wide && i + 2 <= nb; i += 2) {
		const uint8_t *w0 = w + i * wb;
		__m512i q = cat256(lg_quants(t, w0), lg_quants(t, w0 + wb));
		__mmask64 neg = _mm512_movepi8_mask(q);
		__m512i uq = lg_signed(t) ? _mm512_abs_epi8(q) : q;
		float dw0 = h2f(rd16(w0)), dw1 = h2f(rd16(w0 + wb));
		for (int k = 0; k < nt; k++) {
			const uint8_t *a0 = a + (size_t)k * as + i * ab;
			__m512i y = cat256(ld256(a0 + aq), ld256(a0 + ab + aq));
			if (lg_signed(t))
				y = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
			__m512i v = mad512_us(_mm512_setzero_si512(), uq, y);
			__m512 dd = _mm512_mask_mov_ps(_mm512_set1_ps(dw0 * h2f(rd16(a0))),
			        0xff00, _mm512_set1_ps(dw1 * h2f(rd16(a0 + ab))));
			acc2[k] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(v), acc2[k]);
			if (lg_has_min(t))
				accm[k] += h2f(rd16(w0 + 2)) * h2f(rd16(a0 + 2)) +
				        h2f(rd16(w0 + wb + 2)) * h2f(rd16(a0 + ab + 2));
		}
	}
	for (int k = 0; k < nt; k++)
		acc[k] = _mm256_add_ps(_mm512_castps512_ps256(acc2[k]), _mm256_castpd_ps(
		        _mm512_extractf64x4_pd(_mm512_castps_pd(acc2[k]), 1)));
#endif
	for (; i < nb; i++) {
		const uint8_t *w0 = w + i * wb;
		__m256i q = lg_quants(t, w0);
		float dw = h2f(rd16(w0));
		for (int k = 0; k < nt; k++) {
			const uint8_t *a0 = a + (size_t)k * as + i * ab;
			__m256i y = ld256(a0 + aq);
			__m256i v = lg_signed(t) ? mad_ss(_mm256_setzero_si256(), q, y) :
			        mad_us(_mm256_setzero_si256(), q, y);
			acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * h2f(rd16(a0))),
			        _mm256_cvtepi32_ps(v), acc[k]);
			if (lg_has_min(t))
				accm[k] += h2f(rd16(w0 + 2)) * h2f(rd16(a0 + 2));
		}
	}
	for (int k = 0; k < nt; k++)
		out[k] = hsum8(acc[k]) + accm[k];
}

static inline __attribute__((always_inline)) float
lg_dot(enum dtype t, const uint8_t *w, const uint8_t *a, size_t nb, int wide)
{
	float r;

	lg_dot_m(t, w, a, 0, 1, nb, wide, &r);
	return r;
}

float
quant_dot_q4_0(const void *w, const void *a, size_t nb)
{
	return lg_dot(DTYPE_Q4_0, w, a, nb, 1);
}

float
quant_dot_q4_1(const void *w, const void *a, size_t nb)
{
	return lg_dot(DTYPE_Q4_1, w, a, nb, 1);
}

float
quant_dot_q5_0(const void *w, const void *a, size_t nb)
{
	return lg_dot(DTYPE_Q5_0, w, a, nb, 1);
}

float
quant_dot_q5_1(const void *w, const void *a, size_t nb)
{
	return lg_dot(DTYPE_Q5_1, w, a, nb, 1);
}

float
quant_dot_q8_0(const void *w, const void *a, size_t nb)
{
	return lg_dot(DTYPE_Q8_0, w, a, nb, 1);
}

/* ---- K-quants: shared pieces ---- */

/* Q4_K / Q5_K scales: 16 bytes, sc[0..7] then m[0..7] (quant_k4_scales on
 * 32-bit words). */
static inline __m128i
k4_scales(const uint8_t *s)
{
	uint32_t a0, a1, a2;

	memcpy(&a0, s, 4);
	memcpy(&a1, s + 4, 4);
	memcpy(&a2, s + 8, 4);
	return _mm_set_epi32((int)(((a2 >> 4) & 0x0f0f0f0f) | ((a1 >> 6) & 0x03030303) << 4),
	        (int)(a1 & 0x3f3f3f3f),
	        (int)((a2 & 0x0f0f0f0f) | ((a0 >> 6) & 0x03030303) << 4),
	        (int)(a0 & 0x3f3f3f3f));
}

/* Q3_K scales: 16 signed bytes (quant_k3_scales on 32-bit words) */
static inline __m128i
k3_scales(const uint8_t *s)
{
	uint32_t a0, a1, t;

	memcpy(&a0, s, 4);
	memcpy(&a1, s + 4, 4);
	memcpy(&t, s + 8, 4);
	__m128i v = _mm_set_epi32(
	        (int)(((a1 >> 4) & 0x0f0f0f0f) | ((t >> 6) & 0x03030303) << 4),
	        (int)(((a0 >> 4) & 0x0f0f0f0f) | ((t >> 4) & 0x03030303) << 4),
	        (int)((a1 & 0x0f0f0f0f) | ((t >> 2) & 0x03030303) << 4),
	        (int)((a0 & 0x0f0f0f0f) | (t & 0x03030303) << 4));
	return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

/* int16 x 16: scale byte g of sc8 in every lane (unsigned / signed) */
static inline __m256i
bcast_u8(__m128i sc8, int g)
{
	return _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sc8, _mm_set1_epi8((char)g)));
}

/* int16 x 16: lanes 0-7 scale g, lanes 8-15 scale g + 1 (groups of 16) */
static inline __m256i
pair_s8(__m128i sc8, int g)
{
	__m128i idx = _mm_set_epi64x(0x0101010101010101ll * (g + 1),
	        0x0101010101010101ll * g);
	return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, idx));
}

static inline __m256i
pair_u8(__m128i sc8, int g)
{
	__m128i idx = _mm_set_epi64x(0x0101010101010101ll * (g + 1),
	        0x0101010101010101ll * g);
	return _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sc8, idx));
}

/* int32 x 8: sums of products of 32 u8 weights (<= 63) and 32 activations,
 * times int16 scales s16 (per 16 or per 32 values) */
static inline __m256i
scaled(__m256i q, const int8_t *y, __m256i s16)
{
	return _mm256_madd_epi16(_mm256_maddubs_epi16(q, ld256(y)), s16);
}

static inline __m256
i2f(__m256i v)
{
	return _mm256_cvtepi32_ps(v);
}

/* ---- K-quants, 256-bit ---- */

static float
dot_q2_K_y(const struct blk_q2_K *w, const struct blk_q8_K *a, size_t nb)
{
	const __m256i m3 = _mm256_set1_epi8(3);
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();

	for (size_t i = 0; i < nb; i++) {
		__m128i s = ld128(w[i].scales);
		__m128i sc = _mm_and_si128(s, _mm_set1_epi8(15));
		__m256i mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4),
		        _mm_set1_epi8(15)));
		__m256i isum = _mm256_setzero_si256();
		for (int n = 0; n < 2; n++) {
			__m256i q = ld256(w[i].qs + 32 * n);
			for (int j = 0; j < 4; j++) {
				__m256i qj = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
				isum = _mm256_add_epi32(isum, scaled(qj,
				        a[i].qs + 128 * n + 32 * j, pair_u8(sc, 8 * n + 2 * j)));
			}
		}
		float da = a[i].d;
		__m256i ms = _mm256_madd_epi16(mn, ld256(a[i].bsums));
		acc = _mm256_fmadd_ps(_mm256_set1_ps(da * h2f(w[i].d)), i2f(isum), acc);
		accm = _mm256_fmadd_ps(_mm256_set1_ps(da * h2f(w[i].dmin)), i2f(ms), accm);
	}
	return hsum8(acc) - hsum8(accm);
}

static float
dot_q3_K_y(const struct blk_q3_K *w, const struct blk_q8_K *a, size_t nb)
{
	const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
	__m256 acc = _mm256_setzero_ps();

	for (size_t i = 0; i < nb; i++) {
		__m128i sc = k3_scales(w[i].scales);
		__m256i hm = ld256(w[i].hmask), isum = _mm256_setzero_si256();
		for (int n = 0; n < 2; n++) {
			__m256i q = ld256(w[i].qs + 32 * n);
			for (int j = 0; j < 4; j++) {
				__m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
				__m256i hb = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * n + j), one);
				/* q + 4 in [0, 7]; the 4 comes back out below */
				__m256i qj = _mm256_or_si256(lo, _mm256_slli_epi16(hb, 2));
				isum = _mm256_add_epi32(isum, scaled(qj,
				        a[i].qs + 128 * n + 32 * j, pair_s8(sc, 8 * n + 2 * j)));
			}
		}
		/* - 4 * sum_g sc_g * bsum_g */
		__m256i off = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), ld256(a[i].bsums));
		isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(off, 2));
		acc = _mm256_fmadd_ps(_mm256_set1_ps(a[i].d * h2f(w[i].d)), i2f(isum), acc);
	}
	return hsum8(acc);
}

/* Q4_K and Q5_K (qh != NULL per block: the fifth bit) */
static inline __attribute__((always_inline)) float
dot_q45_K_y(const uint8_t *w, size_t wb, int five, const struct blk_q8_K *a,
        size_t nb)
{
	const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
	const __m128i pick_m = _mm_set_epi8(15, 15, 14, 14, 13, 13, 12, 12, 11, 11,
	        10, 10, 9, 9, 8, 8);
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();

	for (size_t i = 0; i < nb; i++) {
		const uint8_t *b = w + i * wb;
		const uint8_t *qs = b + (five ? 48 : 16), *qh = b + 16;
		__m128i sm = k4_scales(b + 4);
		__m256i isum = _mm256_setzero_si256(), hb = five ? ld256(qh) :
		        _mm256_setzero_si256();
		for (int c = 0; c < 4; c++) {
			__m256i q = ld256(qs + 32 * c);
			__m256i lo = _mm256_and_si256(q, m4);
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
			if (five) {
				lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(
				        _mm256_srli_epi16(hb, 2 * c), one), 4));
				hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(
				        _mm256_srli_epi16(hb, 2 * c + 1), one), 4));
			}
			isum = _mm256_add_epi32(isum, scaled(lo, a[i].qs + 64 * c,
			        bcast_u8(sm, 2 * c)));
			isum = _mm256_add_epi32(isum, scaled(hi, a[i].qs + 64 * c + 32,
			        bcast_u8(sm, 2 * c + 1)));
		}
		/* mins: m_g times the two sums of 16 of group g */
		__m256i mdup = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, pick_m));
		__m256i ms = _mm256_madd_epi16(mdup, ld256(a[i].bsums));
		float da = a[i].d;
		acc = _mm256_fmadd_ps(_mm256_set1_ps(da * h2f(rd16(b))), i2f(isum), acc);
		accm = _mm256_fmadd_ps(_mm256_set1_ps(da * h2f(rd16(b + 2))), i2f(ms), accm);
	}
	return hsum8(acc) - hsum8(accm);
}

static float
dot_q6_K_y(const struct blk_q6_K *w, const struct blk_q8_K *a, size_t nb)
{
	const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
	__m256 acc = _mm256_setzero_ps();

	for (size_t i = 0; i < nb; i++) {
		__m128i sc = ld128(w[i].scales);
		__m256i isum = _mm256_setzero_si256();
		for (int n = 0; n < 2; n++) {
			__m256i l0 = ld256(w[i].ql + 64 * n), l1 = ld256(w[i].ql + 64 * n + 32);
			__m256i h = ld256(w[i].qh + 32 * n);
			__m256i lo4[4] = { _mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
				_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
				_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4) };
			for (int k = 0; k < 4; k++) {
				__m256i hk = _mm256_and_si256(_mm256_srli_epi16(h, 2 * k), m3);
				__m256i qk = _mm256_or_si256(lo4[k], _mm256_slli_epi16(hk, 4));
				isum = _mm256_add_epi32(isum, scaled(qk,
				        a[i].qs + 128 * n + 32 * k, pair_s8(sc, 8 * n + 2 * k)));
			}
		}
		/* quants were q + 32: take 32 * sum_g sc_g * bsum_g back out */
		__m256i off = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), ld256(a[i].bsums));
		isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(off, 5));
		acc = _mm256_fmadd_ps(_mm256_set1_ps(a[i].d * h2f(w[i].d)), i2f(isum), acc);
	}
	return hsum8(acc);
}

#if QZ
/* ---- K-quants, 512-bit ---- */

static inline __m512i
ld512(const void *p)
{
	return _mm512_loadu_si512(p);
}

/* int16 x 32 from 16 int16 scales s16: lane l gets scale
 * base + l / width (width 16: groups of 32 values; 8: groups of 16) */
static inline __m512i
zscale(__m512i s16, int base, int width)
{
	static const int16_t by8[32] = { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1,
		1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3 };
	static const int16_t by16[32] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 };
	__m512i ix = _mm512_loadu_si512(width == 8 ? by8 : by16);

	return _mm512_permutexvar_epi16(_mm512_add_epi16(ix,
	        _mm512_set1_epi16((short)base)), s16);
}

static inline __m512i
zscaled(__m512i q, const int8_t *y, __m512i s16)
{
	return _mm512_madd_epi16(_mm512_maddubs_epi16(q, ld512(y)), s16);
}

/* 512 -> 256: add the halves */
static inline __m256i
zfold(__m512i v)
{
	return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

/* per 16-bit lane shift counts: low 256 bits by s0, high by s1 */
static inline __m512i
zshift2(int s0, int s1)
{
	return _mm512_mask_mov_epi16(_mm512_set1_epi16((short)s0), 0xffff0000u,
	        _mm512_set1_epi16((short)s1));
}

/* bytes: low 256 bits b0, high b1 */
static inline __m512i
zbyte2(int b0, int b1)
{
	return _mm512_mask_mov_epi8(_mm512_set1_epi8((char)b0), 0xffffffff00000000ull,
	        _mm512_set1_epi8((char)b1));
}

/* One K-quant super-block unpacked for the 512-bit kernels: the 256
 * quants as unsigned bytes in value order (q[j]: values 64 j .. 64 j + 63),
 * the int16 scale of every maddubs pair (s[j]), and the int16 factors c16
 * the activations' sums of 16 are multiplied with: the group mins (Q2_K,
 * Q4_K, Q5_K; subtracted with dmin) or the group scales times the quant
 * offset 2^shift (Q3_K: 4, Q6_K: 32; subtracted from the integer sum). */
struct zblk {
	__m512i q[4], s[4];
	__m256i c16;
	float d, dmin;
	int shift; /* -1: c16 are mins */
};

static inline __attribute__((always_inline)) void
zk_unpack(enum dtype t, const uint8_t *b, struct zblk *z)
{
	const __m512i m3 = _mm512_set1_epi8(3), m4 = _mm512_set1_epi8(15);
	const __m512i sh01 = zshift2(0, 2), sh23 = zshift2(4, 6);

	switch (t) {
	case DTYPE_Q2_K: {
		const struct blk_q2_K *w = (const void *)b;
		__m128i s = ld128(w->scales);
		__m512i sc = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(
		        _mm_and_si128(s, _mm_set1_epi8(15))));
		z->c16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4),
		        _mm_set1_epi8(15)));
		for (int n = 0; n < 2; n++) {
			__m512i q = _mm512_broadcast_i64x4(ld256(w->qs + 32 * n));
			z->q[2 * n] = _mm512_and_si512(_mm512_srlv_epi16(q, sh01), m3);
			z->q[2 * n + 1] = _mm512_and_si512(_mm512_srlv_epi16(q, sh23), m3);
		}
		for (int j = 0; j < 4; j++)
			z->s[j] = zscale(sc, 4 * j, 8);
		z->d = h2f(w->d);
		z->dmin = h2f(w->dmin);
		z->shift = -1;
		break;
	}
	case DTYPE_Q3_K: {
		const struct blk_q3_K *w = (const void *)b;
		const __m512i four = _mm512_set1_epi8(4);
		__m256i sc16 = _mm256_cvtepi8_epi16(k3_scales(w->scales));
		__m512i sc = _mm512_castsi256_si512(sc16);
		__m512i hm = _mm512_broadcast_i64x4(ld256(w->hmask));
		for (int n = 0; n < 2; n++) {
			__m512i q = _mm512_broadcast_i64x4(ld256(w->qs + 32 * n));
			int sb = 4 * n;
			/* q + 4 in [0, 7]: the high bit (bit 4n + j of hmask)
			 * adds 4 */
			__m512i q01 = _mm512_and_si512(_mm512_srlv_epi16(q, sh01), m3);
			__m512i q23 = _mm512_and_si512(_mm512_srlv_epi16(q, sh23), m3);
			z->q[2 * n] = _mm512_mask_add_epi8(q01, _mm512_test_epi8_mask(hm,
			        zbyte2(1 << sb, 2 << sb)), q01, four);
			z->q[2 * n + 1] = _mm512_mask_add_epi8(q23, _mm512_test_epi8_mask(hm,
			        zbyte2(4 << sb, 8 << sb)), q23, four);
		}
		for (int j = 0; j < 4; j++)
			z->s[j] = zscale(sc, 4 * j, 8);
		z->c16 = sc16;
		z->d = h2f(w->d);
		z->dmin = 0.0f;
		z->shift = 2;
		break;
	}
	case DTYPE_Q4_K: case DTYPE_Q5_K: {
		const int five = t == DTYPE_Q5_K;
		const uint8_t *qs = b + (five ? 48 : 16);
		const __m512i sixteen = _mm512_set1_epi8(16);
		const __m128i pick_m = _mm_set_epi8(15, 15, 14, 14, 13, 13, 12, 12, 11,
		        11, 10, 10, 9, 9, 8, 8);
		__m128i sm = k4_scales(b + 4);
		__m512i sc = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm));
		__m512i hb = five ? _mm512_broadcast_i64x4(ld256(b + 16)) :
		        _mm512_setzero_si512();
		for (int h = 0; h < 2; h++) {
			/* 64 bytes = groups 4h .. 4h+3: low nibbles hold 4h and
			 * 4h+2, high nibbles 4h+1 and 4h+3; regroup to value
			 * order (4h, 4h+1) and (4h+2, 4h+3) */
			__m512i q = ld512(qs + 64 * h);
			__m512i lo = _mm512_and_si512(q, m4);
			__m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
			__m512i g01 = _mm512_shuffle_i64x2(lo, hi, 0x44);
			__m512i g23 = _mm512_shuffle_i64x2(lo, hi, 0xee);
			if (five) {
				int g = 4 * h;
				g01 = _mm512_mask_add_epi8(g01, _mm512_test_epi8_mask(hb,
				        zbyte2(1 << g, 2 << g)), g01, sixteen);
				g23 = _mm512_mask_add_epi8(g23, _mm512_test_epi8_mask(hb,
				        zbyte2(4 << g, 8 << g)), g23, sixteen);
			}
			z->q[2 * h] = g01;
			z->q[2 * h + 1] = g23;
		}
		for (int j = 0; j < 4; j++)
			z->s[j] = zscale(sc, 2 * j, 16);
		/* the min of group g times the two sums of 16 of g */
		z->c16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, pick_m));
		z->d = h2f(rd16(b));
		z->dmin = h2f(rd16(b + 2));
		z->shift = -1;
		break;
	}
	default: { /* DTYPE_Q6_K */
		const struct blk_q6_K *w = (const void *)b;
		__m256i sc16 = _mm256_cvtepi8_epi16(ld128(w->scales));
		__m512i sc = _mm512_castsi256_si512(sc16);
		for (int n = 0; n < 2; n++) {
			__m512i l = ld512(w->ql + 64 * n);
			__m512i h = _mm512_broadcast_i64x4(ld256(w->qh + 32 * n));
			/* q + 32: values 0-63 low nibbles + qh bits 0-1 / 2-3,
			 * 64-127 high nibbles + bits 4-5 / 6-7 */
			z->q[2 * n] = _mm512_or_si512(_mm512_and_si512(l, m4),
			        _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(h, sh01), m3), 4));
			z->q[2 * n + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
			        _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(h, sh23), m3), 4));
		}
		for (int j = 0; j < 4; j++)
			z->s[j] = zscale(sc, 4 * j, 8);
		z->c16 = sc16;
		z->d = h2f(w->d);
		z->dmin = 0.0f;
		z->shift = 5;
		break;
	}
	}
}

/* out[k] = weight row w (nb super-blocks of t) . activation row k (Q8_K
 * rows as apart), k < nt: each super-block is unpacked once for all the
 * rows. */
static inline __attribute__((always_inline)) void
zk_dot(enum dtype t, const uint8_t *w, const uint8_t *a, size_t as, int nt,
        size_t nb, float *out)
{
	const size_t wb = dtype_block_size(t);
	__m256 acc[4], accm[4];

	for (int k = 0; k < nt; k++)
		acc[k] = accm[k] = _mm256_setzero_ps();
	for (size_t i = 0; i < nb; i++) {
		struct zblk z;
		zk_unpack(t, w + i * wb, &z);
		for (int k = 0; k < nt; k++) {
			const struct blk_q8_K *ak = (const struct blk_q8_K *)(const void *)
			        (a + (size_t)k * as) + i;
			__m512i isum = zscaled(z.q[0], ak->qs, z.s[0]);
			isum = _mm512_add_epi32(isum, zscaled(z.q[1], ak->qs + 64, z.s[1]));
			isum = _mm512_add_epi32(isum, zscaled(z.q[2], ak->qs + 128, z.s[2]));
			isum = _mm512_add_epi32(isum, zscaled(z.q[3], ak->qs + 192, z.s[3]));
			__m256i tot = zfold(isum);
			__m256i cb = _mm256_madd_epi16(z.c16, ld256(ak->bsums));
			if (z.shift >= 0)
				tot = _mm256_sub_epi32(tot, _mm256_sll_epi32(cb,
				        _mm_cvtsi32_si128(z.shift)));
			else
				accm[k] = _mm256_fmadd_ps(_mm256_set1_ps(ak->d * z.dmin),
				        i2f(cb), accm[k]);
			acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(ak->d * z.d), i2f(tot), acc[k]);
		}
	}
	for (int k = 0; k < nt; k++)
		out[k] = (t == DTYPE_Q3_K || t == DTYPE_Q6_K) ? hsum8(acc[k]) :
		        hsum8(acc[k]) - hsum8(accm[k]);
}
#endif /* QZ */

/* 512-bit builds: rows of the block-quantised types against one to
 * four activation rows */
#if QZ
static void
zk_dot_any(enum dtype t, const uint8_t *w, const uint8_t *a, size_t as, int nt,
        size_t nb, float *out)
{
	/* every (type, row count) pair compiled on its own, constants folded */
#define ZK(T) \
	switch (nt) { \
	case 1: zk_dot(T, w, a, as, 1, nb, out); break; \
	case 2: zk_dot(T, w, a, as, 2, nb, out); break; \
	case 3: zk_dot(T, w, a, as, 3, nb, out); break; \
	default: zk_dot(T, w, a, as, 4, nb, out); break; \
	}
	switch (t) {
	case DTYPE_Q2_K: ZK(DTYPE_Q2_K); break;
	case DTYPE_Q3_K: ZK(DTYPE_Q3_K); break;
	case DTYPE_Q4_K: ZK(DTYPE_Q4_K); break;
	case DTYPE_Q5_K: ZK(DTYPE_Q5_K); break;
	default: ZK(DTYPE_Q6_K); break;
	}
#undef ZK
}

static void
lg_dot_any(enum dtype t, const uint8_t *w, const uint8_t *a, size_t as, int nt,
        size_t nb, float *out)
{
#define LG(T) \
	switch (nt) { \
	case 1: lg_dot_m(T, w, a, as, 1, nb, 1, out); break; \
	case 2: lg_dot_m(T, w, a, as, 2, nb, 1, out); break; \
	case 3: lg_dot_m(T, w, a, as, 3, nb, 1, out); break; \
	default: lg_dot_m(T, w, a, as, 4, nb, 1, out); break; \
	}
	switch (t) {
	case DTYPE_Q4_0: LG(DTYPE_Q4_0); break;
	case DTYPE_Q4_1: LG(DTYPE_Q4_1); break;
	case DTYPE_Q5_0: LG(DTYPE_Q5_0); break;
	case DTYPE_Q5_1: LG(DTYPE_Q5_1); break;
	default: LG(DTYPE_Q8_0); break;
	}
#undef LG
}
#endif

void
quant_dot_multi(enum dtype t, const void *w, const void *a, size_t a_stride,
        int nt, size_t n, float *out)
{
#if QZ
	if (dtype_block_elems(t) == QK_K)
		zk_dot_any(t, w, a, a_stride, nt, n / QK_K, out);
	else
		lg_dot_any(t, w, a, a_stride, nt, n / 32, out);
#else
	for (int k = 0; k < nt; k++)
		out[k] = quant_dot(t, w, (const uint8_t *)a + (size_t)k * a_stride, n);
#endif
}

#if QZ
#define ONE_ROW(T, w, a, nb) \
	float r_; \
	zk_dot(T, w, a, 0, 1, nb, &r_); \
	return r_
#endif

float
quant_dot_q2_K(const void *w, const void *a, size_t nb)
{
#if QZ
	ONE_ROW(DTYPE_Q2_K, w, a, nb);
#else
	return dot_q2_K_y(w, a, nb);
#endif
}

float
quant_dot_q3_K(const void *w, const void *a, size_t nb)
{
#if QZ
	ONE_ROW(DTYPE_Q3_K, w, a, nb);
#else
	return dot_q3_K_y(w, a, nb);
#endif
}

float
quant_dot_q4_K(const void *w, const void *a, size_t nb)
{
#if QZ
	ONE_ROW(DTYPE_Q4_K, w, a, nb);
#else
	return dot_q45_K_y(w, sizeof(struct blk_q4_K), 0, a, nb);
#endif
}

float
quant_dot_q5_K(const void *w, const void *a, size_t nb)
{
#if QZ
	ONE_ROW(DTYPE_Q5_K, w, a, nb);
#else
	return dot_q45_K_y(w, sizeof(struct blk_q5_K), 1, a, nb);
#endif
}

float
quant_dot_q6_K(const void *w, const void *a, size_t nb)
{
#if QZ
	ONE_ROW(DTYPE_Q6_K, w, a, nb);
#else
	return dot_q6_K_y(w, a, nb);
#endif
}

float
quant_dot_narrow(enum dtype t, const void *w, const void *a, size_t nb)
{
	switch (t) {
	case DTYPE_Q4_0: return lg_dot(DTYPE_Q4_0, w, a, nb, 0);
	case DTYPE_Q4_1: return lg_dot(DTYPE_Q4_1, w, a, nb, 0);
	case DTYPE_Q5_0: return lg_dot(DTYPE_Q5_0, w, a, nb, 0);
	case DTYPE_Q5_1: return lg_dot(DTYPE_Q5_1, w, a, nb, 0);
	case DTYPE_Q8_0: return lg_dot(DTYPE_Q8_0, w, a, nb, 0);
	case DTYPE_Q2_K: return dot_q2_K_y(w, a, nb);
	case DTYPE_Q3_K: return dot_q3_K_y(w, a, nb);
	case DTYPE_Q4_K: return dot_q45_K_y(w, sizeof(struct blk_q4_K), 0, a, nb);
	case DTYPE_Q5_K: return dot_q45_K_y(w, sizeof(struct blk_q5_K), 1, a, nb);
	case DTYPE_Q6_K: return dot_q6_K_y(w, a, nb);
	default: return 0.0f;
	}
}

/* ---- dequantisation (256-bit in both vector builds) ---- */

/* dst[0..31] = f * q + m for 32 unsigned / signed quants */
static inline void
deq32(__m256i q, int is_signed, float f, float m, float *dst)
{
	__m256 vf = _mm256_set1_ps(f), vm = _mm256_set1_ps(m);
	__m128i h[2] = { _mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1) };

	for (int k = 0; k < 4; k++) {
		__m128i b = k & 1 ? _mm_srli_si128(h[k / 2], 8) : h[k / 2];
		__m256i v = is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
		_mm256_storeu_ps(dst + 8 * k, _mm256_fmadd_ps(vf, _mm256_cvtepi32_ps(v), vm));
	}
}

/* as deq32 for two groups of 16 with their own factors */
static inline void
deq16x2(__m256i q, int is_signed, float f0, float m0, float f1, float m1, float *dst)
{
	__m128i h[2] = { _mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1) };
	float f[2] = { f0, f1 }, m[2] = { m0, m1 };

	for (int k = 0; k < 4; k++) {
		__m128i b = k & 1 ? _mm_srli_si128(h[k / 2], 8) : h[k / 2];
		__m256i v = is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
		_mm256_storeu_ps(dst + 8 * k, _mm256_fmadd_ps(_mm256_set1_ps(f[k / 2]),
		        _mm256_cvtepi32_ps(v), _mm256_set1_ps(m[k / 2])));
	}
}

size_t
quant_to_f32_vec(enum dtype t, const void *src, float *dst, size_t nb)
{
	const uint8_t *s = src;

	switch (t) {
	case DTYPE_Q4_0: case DTYPE_Q4_1: case DTYPE_Q5_0: case DTYPE_Q5_1: {
		size_t wb = lg_wbytes(t);
		for (size_t i = 0; i < nb; i++) {
			const uint8_t *b = s + i * wb;
			float m = lg_has_min(t) ? h2f(rd16(b + 2)) : 0.0f;
			deq32(lg_quants(t, b), lg_signed(t), h2f(rd16(b)), m, dst + 32 * i);
		}
		return nb;
	}
	case DTYPE_Q2_K: {
		const struct blk_q2_K *w = src;
		for (size_t i = 0; i < nb; i++) {
			float d = h2f(w[i].d), dm = h2f(w[i].dmin);
			for (int n = 0; n < 2; n++) {
				__m256i q = ld256(w[i].qs + 32 * n);
				for (int j = 0; j < 4; j++) {
					const uint8_t *sc = w[i].scales + 8 * n + 2 * j;
					deq16x2(_mm256_and_si256(_mm256_srli_epi16(q, 2 * j),
					                _mm256_set1_epi8(3)), 0,
					        d * (float)(sc[0] & 15), -dm * (float)(sc[0] >> 4),
					        d * (float)(sc[1] & 15), -dm * (float)(sc[1] >> 4),
					        dst + QK_K * i + 128 * n + 32 * j);
				}
			}
		}
		return nb;
	}
	case DTYPE_Q3_K: {
		const struct blk_q3_K *w = src;
		for (size_t i = 0; i < nb; i++) {
			int8_t sc[16];
			float d = h2f(w[i].d);
			__m256i hm = ld256(w[i].hmask);
			_mm_storeu_si128((__m128i *)sc, k3_scales(w[i].scales));
			for (int n = 0; n < 2; n++) {
				__m256i q = ld256(w[i].qs + 32 * n);
				for (int j = 0; j < 4; j++) {
					__m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j),
					        _mm256_set1_epi8(3));
					__m256i hb = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * n + j),
					        _mm256_set1_epi8(1));
					__m256i qj = _mm256_sub_epi8(_mm256_or_si256(lo,
					        _mm256_slli_epi16(hb, 2)), _mm256_set1_epi8(4));
					int g = 8 * n + 2 * j;
					deq16x2(qj, 1, d * (float)sc[g], 0.0f, d * (float)sc[g + 1], 0.0f,
					        dst + QK_K * i + 128 * n + 32 * j);
				}
			}
		}
		return nb;
	}
	case DTYPE_Q4_K: case DTYPE_Q5_K: {
		int five = t == DTYPE_Q5_K;
		size_t wb = five ? sizeof(struct blk_q5_K) : sizeof(struct blk_q4_K);
		for (size_t i = 0; i < nb; i++) {
			const uint8_t *b = s + i * wb, *qs = b + (five ? 48 : 16);
			uint8_t sm[16];
			float d = h2f(rd16(b)), dm = h2f(rd16(b + 2));
			__m256i hb = five ? ld256(b + 16) : _mm256_setzero_si256();
			_mm_storeu_si128((__m128i *)sm, k4_scales(b + 4));
			for (int g = 0; g < 8; g++) {
				__m256i q = ld256(qs + 32 * (g / 2));
				q = _mm256_and_si256(_mm256_srli_epi16(q, 4 * (g & 1)),
				        _mm256_set1_epi8(15));
				if (five)
					q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(
					        _mm256_srli_epi16(hb, g), _mm256_set1_epi8(1)), 4));
				deq32(q, 0, d * (float)sm[g], -dm * (float)sm[8 + g],
				        dst + QK_K * i + 32 * g);
			}
		}
		return nb;
	}
	case DTYPE_Q6_K: {
		const struct blk_q6_K *w = src;
		for (size_t i = 0; i < nb; i++) {
			float d = h2f(w[i].d);
			for (int n = 0; n < 2; n++) {
				__m256i l0 = ld256(w[i].ql + 64 * n), l1 = ld256(w[i].ql + 64 * n + 32);
				__m256i h = ld256(w[i].qh + 32 * n);
				for (int k = 0; k < 4; k++) {
					__m256i l = k & 1 ? l1 : l0;
					__m256i lo = _mm256_and_si256(_mm256_srli_epi16(l, 4 * (k >> 1)),
					        _mm256_set1_epi8(15));
					__m256i hk = _mm256_and_si256(_mm256_srli_epi16(h, 2 * k),
					        _mm256_set1_epi8(3));
					__m256i q = _mm256_sub_epi8(_mm256_or_si256(lo,
					        _mm256_slli_epi16(hk, 4)), _mm256_set1_epi8(32));
					const int8_t *sc = w[i].scales + 8 * n + 2 * k;
					deq16x2(q, 1, d * (float)sc[0], 0.0f, d * (float)sc[1], 0.0f,
					        dst + QK_K * i + 128 * n + 32 * k);
				}
			}
		}
		return nb;
	}
	default:
		return 0;
	}
}

#else /* no AVX2: the scalar definitions */

static float
dot_ref_nb(enum dtype t, const void *w, const void *a, size_t nb)
{
	return quant_dot_ref(t, w, a, nb * dtype_block_elems(t));
}

float quant_dot_q4_0(const void *w, const void *a, size_t nb) { return dot_ref_nb(DTYPE_Q4_0, w, a, nb); }
float quant_dot_q4_1(const void *w, const void *a, size_t nb) { return dot_ref_nb(DTYPE_Q4_1, w, a, nb); }
float quant_dot_q5_0(const void *w, const void *a, size_t nb) { return dot_ref_nb(DTYPE_Q5_0, w, a, nb); }
float quant_dot_q5_1(const void *w, const void *a, size_t nb) { return dot_ref_nb(DTYPE_Q5_1, w, a, nb); }
float quant_dot_q8_0(const void *w, const void *a, size_t nb) { return dot_ref_nb(DTYPE_Q8_0, w, a, nb); }
float quant_dot_q2_K(const void *w, const void *a, size_t nb) { return dot_ref_nb(DTYPE_Q2_K, w, a, nb); }
float quant_dot_q3_K(const void *w, const void *a, size_t nb) { return dot_ref_nb(DTYPE_Q3_K, w, a, nb); }
float quant_dot_q4_K(const void *w, const void *a, size_t nb) { return dot_ref_nb(DTYPE_Q4_K, w, a, nb); }
float quant_dot_q5_K(const void *w, const void *a, size_t nb) { return dot_ref_nb(DTYPE_Q5_K, w, a, nb); }
float quant_dot_q6_K(const void *w, const void *a, size_t nb) { return dot_ref_nb(DTYPE_Q6_K, w, a, nb); }

float
quant_dot_narrow(enum dtype t, const void *w, const void *a, size_t nb)
{
	return dot_ref_nb(t, w, a, nb);
}

void
quant_dot_multi(enum dtype t, const void *w, const void *a, size_t a_stride,
        int nt, size_t n, float *out)
{
	for (int k = 0; k < nt; k++)
		out[k] = quant_dot(t, w, (const uint8_t *)a + (size_t)k * a_stride, n);
}

size_t
quant_to_f32_vec(enum dtype t, const void *src, float *dst, size_t nb)
{
	(void)t;
	(void)src;
	(void)dst;
	(void)nb;
	return 0;
}

#endif /* __AVX2__ */
