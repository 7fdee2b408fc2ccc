/* Tensor element conversions between float32 and the GGUF storage types
 * F32, F16, BF16 and Q8_0; the other block-quantised types are passed on
 * to quant.c.
 *
 * These run on the inference hot path (weight rows are converted per use),
 * so the row functions use F16C / AVX2 / AVX-512 when the build enables
 * them and fall back to the scalar reference loop for the tail and on other
 * CPUs.  Both paths give the same bits: the scalar code rounds to nearest
 * even and quiets NaNs exactly as the x86 conversion instructions do.
 * Nothing here allocates.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) || defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "err.h"
#include "gguf.h"
#include "quant.h"

static uint32_t
f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	return u;
}

static float
bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, 4);
	return f;
}

/* IEEE 754 binary16 -> binary32 (exact).  NaNs come out quiet with their
 * payload kept, as VCVTPH2PS does. */
float
fp16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t man = h & 0x3ff;

	if (exp == 0x1f)
		return bits_f32(sign | 0x7f800000 |
		        (man ? 0x400000 | (man << 13) : 0));
	if (exp == 0) {
		/* zero or subnormal: man * 2^-24, exact in float32 */
		return bits_f32(sign | f32_bits((float)man * 0x1p-24f));
	}
	return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

/* binary32 -> binary16, round to nearest even; overflow gives inf, NaNs
 * stay NaN (quiet, top payload bits kept) as VCVTPS2PH does. */
uint16_t
f32_to_fp16(float f)
{
	uint32_t x = f32_bits(f);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
	uint32_t ax = x & 0x7fffffff;

	if (ax > 0x7f800000) /* NaN */
		return sign | 0x7e00 | ((ax >> 13) & 0x3ff);
	if (ax >= 0x477ff000) /* >= 65520: rounds to inf (ties to even) */
		return sign | 0x7c00;
	if (ax >= 0x38800000) { /* >= 2^-14: normal half */
		uint32_t r = ax - 0x38000000; /* rebias 127 -> 15 */

		r += 0xfff + ((r >> 13) & 1);
		return sign | (uint16_t)(r >> 13);
	}
	if (ax <= 0x33000000) /* <= 2^-25: rounds to zero (tie goes even) */
		return sign;
	{
		/* subnormal half: round(value * 2^24) to nearest even */
		uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
		uint32_t s = 126 - e; /* 14..24 */
		uint32_t q = m >> s, rest = m & ((1u << s) - 1);
		uint32_t half = 1u << (s - 1);

		if (rest > half || (rest == half && (q & 1)))
			q++;
		return sign | (uint16_t)q;
	}
}

float
bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

/* Round to nearest even; NaNs are quieted (never rounded into inf). */
uint16_t
f32_to_bf16(float f)
{
	uint32_t x = f32_bits(f);

	if ((x & 0x7fffffff) > 0x7f800000)
		return (uint16_t)((x >> 16) | 0x40);
	return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* ---- scalar reference rows ---- */

/* Q8_0 block: fp16 scale d, then 32 int8 quants; value = d * q.
 * 34 bytes, so blocks are unaligned: always go through memcpy. */
#define Q8_0_BYTES (2 + QK8_0)

static void
q8_0_block_to_f32(const uint8_t *b, float *dst)
{
	uint16_t dh;
	float d;

	memcpy(&dh, b, 2);
	d = fp16_to_f32(dh);
	for (int j = 0; j < QK8_0; j++)
		dst[j] = d * (float)(int8_t)b[2 + j];
}

/* As ggml's reference quantiser: d = max|x| / 127, q = round(x / d)
 * (computed as x * (1/d)), half away from zero. */
static void
q8_0_block_from_f32(const float *src, uint8_t *b)
{
	float amax = 0.0f, d, id;
	uint16_t dh;

	for (int j = 0; j < QK8_0; j++) {
		float a = fabsf(src[j]);

		if (a > amax)
			amax = a;
	}
	/* the scale is clamped to the largest finite half (ggml writes inf
	 * there): huge inputs clip instead of decoding to infinity */
	d = fminf(amax / 127.0f, 65504.0f);
	id = d != 0.0f ? 1.0f / d : 0.0f;
	dh = f32_to_fp16(d);
	memcpy(b, &dh, 2);
	for (int j = 0; j < QK8_0; j++) {
		float r = roundf(src[j] * id);
		int8_t q;

		/* only non-finite input can leave [-127, 127] */
		q = r != r ? 0 : r > 127.0f ? 127 : r < -127.0f ? -127 : (int8_t)r;
		b[2 + j] = (uint8_t)q;
	}
}

static int
row_check(enum dtype t, size_t n)
{
	if (!dtype_supported(t))
		return EPMOE_ENOTSUP;
	if (n % dtype_block_elems(t) != 0)
		return EPMOE_EINVAL;
	return 0;
}

int
dtype_row_to_f32_ref(enum dtype t, const void *src, float *dst, size_t n)
{
	const uint8_t *s = src;
	uint16_t h;
	int rc;

	if ((rc = row_check(t, n)) != 0)
		return rc;
	switch (t) {
	case DTYPE_F32:
		memmove(dst, src, n * 4);
		break;
	case DTYPE_F16:
		for (size_t i = 0; i < n; i++) {
			memcpy(&h, s + 2 * i, 2);
			dst[i] = fp16_to_f32(h);
		}
		break;
	case DTYPE_BF16:
		for (size_t i = 0; i < n; i++) {
			memcpy(&h, s + 2 * i, 2);
			dst[i] = bf16_to_f32(h);
		}
		break;
	case DTYPE_Q8_0:
		for (size_t i = 0; i < n / QK8_0; i++)
			q8_0_block_to_f32(s + i * Q8_0_BYTES, dst + i * QK8_0);
		break;
	default:
		return quant_row_to_f32_ref(t, src, dst, n);
	}
	return 0;
}

int
dtype_row_from_f32_ref(enum dtype t, const float *src, void *dst,
        size_t n)
{
	uint8_t *d = dst;
	uint16_t h;
	int rc;

	if ((rc = row_check(t, n)) != 0)
		return rc;
	switch (t) {
	case DTYPE_F32:
		memmove(dst, src, n * 4);
		break;
	case DTYPE_F16:
		for (size_t i = 0; i < n; i++) {
			h = f32_to_fp16(src[i]);
			memcpy(d + 2 * i, &h, 2);
		}
		break;
	case DTYPE_BF16:
		for (size_t i = 0; i < n; i++) {
			h = f32_to_bf16(src[i]);
			memcpy(d + 2 * i, &h, 2);
		}
		break;
	case DTYPE_Q8_0:
		for (size_t i = 0; i < n / QK8_0; i++)
			q8_0_block_from_f32(src + i * QK8_0, d + i * Q8_0_BYTES);
		break;
	default:
		return quant_row_from_f32(t, src, dst, n);
	}
	return 0;
}

/* ---- vectorised rows ---- */

/* Each returns how many leading elements it converted; the caller finishes
 * the tail with the scalar code. */

static size_t
f16_to_f32_vec(const uint8_t *s, float *d, size_t n)
{
	size_t i = 0;

#if defined(__AVX512F__)
	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256(
		        (const __m256i *)(s + 2 * i))));
#endif
#if defined(__F16C__)
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(
		        (const __m128i *)(s + 2 * i))));
#endif
	(void)s;
	(void)d;
	(void)n;
	return i;
}

static size_t
f32_to_f16_vec(const float *s, uint8_t *d, size_t n)
{
	size_t i = 0;

#if defined(__AVX512F__)
	for (; i + 16 <= n; i += 16)
		_mm256_storeu_si256((__m256i *)(d + 2 * i),
		        _mm512_cvtps_ph(_mm512_loadu_ps(s + i),
		                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
#if defined(__F16C__)
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(d + 2 * i),
		        _mm256_cvtps_ph(_mm256_loadu_ps(s + i),
		                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
	(void)s;
	(void)d;
	(void)n;
	return i;
}

static size_t
bf16_to_f32_vec(const uint8_t *s, float *d, size_t n)
{
	size_t i = 0;

#if defined(__AVX2__)
	for (; i + 8 <= n; i += 8) {
		__m256i w = _mm256_cvtepu16_epi32(
		        _mm_loadu_si128((const __m128i *)(s + 2 * i)));

		_mm256_storeu_si256((__m256i *)(d + i),
		        _mm256_slli_epi32(w, 16));
	}
#endif
	(void)s;
	(void)d;
	(void)n;
	return i;
}

static size_t
f32_to_bf16_vec(const float *s, uint8_t *d, size_t n)
{
	size_t i = 0;

#if defined(__AVX2__)
	const __m256i bias = _mm256_set1_epi32(0x7fff);
	const __m256i one = _mm256_set1_epi32(1);
	const __m256i quiet = _mm256_set1_epi32(0x40);

	for (; i + 8 <= n; i += 8) {
		__m256 xf = _mm256_loadu_ps(s + i);
		__m256i x = _mm256_castps_si256(xf);
		__m256i hi = _mm256_srli_epi32(x, 16);
		__m256i r = _mm256_srli_epi32(_mm256_add_epi32(x,
		        _mm256_add_epi32(bias, _mm256_and_si256(hi, one))), 16);
		__m256i nan = _mm256_castps_si256(
		        _mm256_cmp_ps(xf, xf, _CMP_UNORD_Q));

		r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, quiet), nan);
		/* every lane is <= 0xffff, so the saturating pack is exact */
		_mm_storeu_si128((__m128i *)(d + 2 * i),
		        _mm_packus_epi32(_mm256_castsi256_si128(r),
		                _mm256_extracti128_si256(r, 1)));
	}
#endif
	(void)s;
	(void)d;
	(void)n;
	return i;
}

static size_t
q8_0_to_f32_vec(const uint8_t *s, float *d, size_t n)
{
	size_t i = 0;

#if defined(__AVX2__)
	for (; i + QK8_0 <= n; i += QK8_0) {
		const uint8_t *b = s + (i / QK8_0) * Q8_0_BYTES;
		uint16_t dh;
		__m256 sc;

		memcpy(&dh, b, 2);
		sc = _mm256_set1_ps(fp16_to_f32(dh));
		for (int j = 0; j < QK8_0; j += 8) {
			__m256i q = _mm256_cvtepi8_epi32(
			        _mm_loadl_epi64((const __m128i *)(b + 2 + j)));

			_mm256_storeu_ps(d + i + j,
			        _mm256_mul_ps(sc, _mm256_cvtepi32_ps(q)));
		}
	}
#endif
	(void)s;
	(void)d;
	(void)n;
	return i;
}

int
dtype_row_to_f32(enum dtype t, const void *src, float *dst, size_t n)
{
	const uint8_t *s = src;
	size_t i;
	int rc;

	if ((rc = row_check(t, n)) != 0)
		return rc;
	switch (t) {
	case DTYPE_F16:
		i = f16_to_f32_vec(s, dst, n);
		return dtype_row_to_f32_ref(t, s + 2 * i, dst + i, n - i);
	case DTYPE_BF16:
		i = bf16_to_f32_vec(s, dst, n);
		return dtype_row_to_f32_ref(t, s + 2 * i, dst + i, n - i);
	case DTYPE_Q8_0:
		i = q8_0_to_f32_vec(s, dst, n);
		return dtype_row_to_f32_ref(t, s + (i / QK8_0) * Q8_0_BYTES,
		        dst + i, n - i);
	case DTYPE_F32:
		return dtype_row_to_f32_ref(t, src, dst, n);
	default:
		return quant_row_to_f32(t, src, dst, n);
	}
}

int
dtype_row_from_f32(enum dtype t, const float *src, void *dst, size_t n)
{
	uint8_t *d = dst;
	size_t i;
	int rc;

	if ((rc = row_check(t, n)) != 0)
		return rc;
	switch (t) {
	case DTYPE_F16:
		i = f32_to_f16_vec(src, d, n);
		return dtype_row_from_f32_ref(t, src + i, d + 2 * i, n - i);
	case DTYPE_BF16:
		i = f32_to_bf16_vec(src, d, n);
		return dtype_row_from_f32_ref(t, src + i, d + 2 * i, n - i);
	default:
		return dtype_row_from_f32_ref(t, src, dst, n);
	}
}
