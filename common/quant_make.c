/* Quantisers: float32 -> each block format of quant.h.
 *
 * Each group of values (a block of 32 for the legacy formats, a group of
 * 16 or 32 inside a K-quant super-block) is fitted by least squares:
 *  - symmetric formats (x ~ s * q, q in [qmin, qmax]): a few candidate
 *    scales around "largest |x| on the extreme level", each with the
 *    quants rounded and then the scale refitted in closed form
 *    (s = sum x q / sum q^2); the candidate with the least squared error
 *    wins;
 *  - formats with a minimum (x ~ a * q - b, q in [0, qmax], b >= 0): start
 *    from the group's range, then alternate rounding the quants and
 *    refitting (a, b) by two-variable least squares, from a few starting
 *    ranges, keeping the best.
 * The K-quants then round the group scales (and minimums) to 4, 6 or 8
 * bits against a super-block scale stored as f16 and round the quants
 * once more against the scales as stored, so the file decodes to what the
 * error was minimised for.  Not bit-identical to llama-quantize (which
 * also weights errors by magnitude); the formats are the same.
 */
#include <math.h>
#include <string.h>

#include "quant.h"
#include "quant_int.h"

static inline int
iround(float v, int lo, int hi)
{
	/* NaN compares false everywhere: it lands on lo */
	if (!(v > (float)lo))
		return lo;
	if (v >= (float)hi)
		return hi;
	return (int)lrintf(v);
}

/* stores a scale as f16, clamped to the largest finite half so huge
 * inputs clip instead of decoding to infinity */
static inline void
put16(uint16_t *p, float v)
{
	if (!(fabsf(v) <= 65504.0f))
		v = isnan(v) ? 0.0f : copysignf(65504.0f, v);
	*p = f32_to_fp16(v);
}

/* ---- group fits ---- */

/* x[n] ~ s * q, q in [qmin, qmax].  Writes q, returns s. */
static float
fit_sym(const float *x, int n, int qmin, int qmax, int8_t *q)
{
	float amax = 0.0f, xm = 0.0f, best_s = 0.0f, best_e = INFINITY;
	static const float f[] = { 1.0f, 0.95f, 0.9f, 0.85f, 1.05f };
	int8_t t[32];
	double xx = 0;

	for (int i = 0; i < n; i++) {
		xx += (double)x[i] * x[i];
		if (fabsf(x[i]) > amax) {
			amax = fabsf(x[i]);
			xm = x[i];
		}
	}
	for (int i = 0; i < n; i++)
		q[i] = 0;
	if (!(amax > 0.0f) || !isfinite(amax))
		return 0.0f;
	/* the largest value on the negative end (one level more) or on the
	 * positive end, times a few shrink factors */
	for (int side = 0; side < 2; side++) {
		float base = (side == 0 ? (float)qmin : (float)qmax) / xm;
		for (size_t k = 0; k < sizeof(f) / sizeof(f[0]); k++) {
			float is = base * f[k];
			double xq = 0, qq = 0, e;
			for (int i = 0; i < n; i++) {
				t[i] = (int8_t)iround(x[i] * is, qmin, qmax);
				xq += (double)x[i] * t[i];
				qq += (double)t[i] * t[i];
			}
			if (qq == 0)
				continue;
			e = xx - xq * xq / qq;
			if (e < best_e) {
				best_e = (float)e;
				best_s = (float)(xq / qq);
				for (int i = 0; i < n; i++)
					q[i] = t[i];
			}
		}
	}
	return best_s;
}

/* x[n] ~ a * q - b, q in [0, qmax], a >= 0, b >= 0.  Writes q, *a, *b. */
static void
fit_asym(const float *x, int n, int qmax, uint8_t *q, float *a_out, float *b_out)
{
	static const float shrink[] = { 1.0f, 0.92f, 0.84f };
	float lo = 0.0f, hi = -INFINITY, best_e = INFINITY, best_a = 0, best_b = 0;
	uint8_t t[32];

	for (int i = 0; i < n; i++) {
		lo = fminf(lo, x[i]);
		hi = fmaxf(hi, x[i]);
	}
	for (int i = 0; i < n; i++)
		q[i] = 0;
	*a_out = 0.0f;
	*b_out = fmaxf(-lo, 0.0f);
	if (!(hi > lo) || !isfinite(hi - lo))
		return;
	for (size_t k = 0; k < sizeof(shrink) / sizeof(shrink[0]); k++) {
		float a = (hi - lo) * shrink[k] / (float)qmax;
		float b = -lo * shrink[k];
		for (int it = 0; it < 3 && a > 0.0f; it++) {
			float ia = 1.0f / a;
			double sq = 0, sqq = 0, sx = 0, sxq = 0, e = 0;
			for (int i = 0; i < n; i++) {
				t[i] = (uint8_t)iround((x[i] + b) * ia, 0, qmax);
				sq += t[i];
				sqq += (double)t[i] * t[i];
				sx += x[i];
				sxq += (double)x[i] * t[i];
			}
			for (int i = 0; i < n; i++) {
				double r = a * t[i] - b - x[i];
				e += r * r;
			}
			if (e < best_e) {
				best_e = (float)e;
				best_a = a;
				best_b = b;
				for (int i = 0; i < n; i++)
					q[i] = t[i];
			}
			/* least squares for x ~ a q - b over (a, b) */
			double det = n * sqq - sq * sq;
			if (det <= 0)
				break;
			double na = (n * sxq - sq * sx) / det;
			double nb = (sq * sxq - sqq * sx) / det; /* -b */
			if (nb > 0) { /* b would go negative: fit a alone */
				nb = 0;
				na = sqq > 0 ? sxq / sqq : 0;
			}
			if (!(na > 0))
				break;
			a = (float)na;
			b = (float)-nb;
		}
	}
	*a_out = best_a;
	*b_out = best_b;
}

/* ---- legacy formats ---- */

static void
make_sym32(const float *x, int qmin, int qmax, uint16_t *d, int8_t q[32])
{
	float s = fit_sym(x, 32, qmin, qmax, q);
	float sd;

	put16(d, s);
	sd = fp16_to_f32(*d);
	/* re-round against the stored scale */
	for (int i = 0; i < 32; i++)
		q[i] = (int8_t)(sd != 0.0f ? iround(x[i] / sd, qmin, qmax) : 0);
}

void
quant_make_q4_0(const float *x, void *dst, size_t nb)
{
	struct blk_q4_0 *y = dst;
	int8_t q[32];

	for (size_t i = 0; i < nb; i++, x += 32) {
		make_sym32(x, -8, 7, &y[i].d, q);
		for (int j = 0; j < 16; j++)
			y[i].qs[j] = (uint8_t)((q[j] + 8) | (q[j + 16] + 8) << 4);
	}
}

void
quant_make_q5_0(const float *x, void *dst, size_t nb)
{
	struct blk_q5_0 *y = dst;
	int8_t q[32];

	for (size_t i = 0; i < nb; i++, x += 32) {
		uint32_t qh = 0;
		make_sym32(x, -16, 15, &y[i].d, q);
		for (int j = 0; j < 16; j++) {
			int a = q[j] + 16, b = q[j + 16] + 16;
			y[i].qs[j] = (uint8_t)((a & 15) | (b & 15) << 4);
			qh |= (uint32_t)(a >> 4) << j | (uint32_t)(b >> 4) << (j + 16);
		}
		memcpy(y[i].qh, &qh, 4);
	}
}

/* x ~ d q + m with q in [0, qmax]: fit, store d and m as f16, re-round */
static void
make_min32(const float *x, int qmax, uint16_t *d, uint16_t *m, uint8_t q[32])
{
	float a, b, sd, sm;

	fit_asym(x, 32, qmax, q, &a, &b);
	put16(d, a);
	put16(m, -b);
	sd = fp16_to_f32(*d);
	sm = fp16_to_f32(*m);
	for (int i = 0; i < 32; i++)
		q[i] = (uint8_t)(sd != 0.0f ? iround((x[i] - sm) / sd, 0, qmax) : 0);
}

void
quant_make_q4_1(const float *x, void *dst, size_t nb)
{
	struct blk_q4_1 *y = dst;
	uint8_t q[32];

	for (size_t i = 0; i < nb; i++, x += 32) {
		make_min32(x, 15, &y[i].d, &y[i].m, q);
		for (int j = 0; j < 16; j++)
			y[i].qs[j] = (uint8_t)(q[j] | q[j + 16] << 4);
	}
}

void
quant_make_q5_1(const float *x, void *dst, size_t nb)
{
	struct blk_q5_1 *y = dst;
	uint8_t q[32];

	for (size_t i = 0; i < nb; i++, x += 32) {
		uint32_t qh = 0;
		make_min32(x, 31, &y[i].d, &y[i].m, q);
		for (int j = 0; j < 16; j++) {
			y[i].qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
			qh |= (uint32_t)(q[j] >> 4) << j | (uint32_t)(q[j + 16] >> 4) << (j + 16);
		}
		memcpy(y[i].qh, &qh, 4);
	}
}

/* ---- K-quants ---- */

/* Rounds n group scales s[] (any sign) to signed integers in [lo, hi]
 * against one f16 super-scale, the largest |s| on the level lo (one more
 * than hi).  Returns the stored super-scale as float. */
static float
super_signed(const float *s, int n, int lo, int hi, uint16_t *d, int *sc)
{
	float sm = 0.0f, dd;

	for (int g = 0; g < n; g++)
		if (fabsf(s[g]) > fabsf(sm))
			sm = s[g];
	put16(d, sm / (float)lo);
	dd = fp16_to_f32(*d);
	for (int g = 0; g < n; g++)
		sc[g] = dd != 0.0f ? iround(s[g] / dd, lo, hi) : 0;
	return dd;
}

/* Rounds n non-negative values v[] to [0, hi] against an f16 super-scale
 * (largest on hi).  Returns the stored super-scale. */
static float
super_unsigned(const float *v, int n, int hi, uint16_t *d, int *q)
{
	float vm = 0.0f, dd;

	for (int g = 0; g < n; g++)
		vm = fmaxf(vm, v[g]);
	put16(d, vm / (float)hi);
	dd = fp16_to_f32(*d);
	for (int g = 0; g < n; g++)
		q[g] = dd != 0.0f ? iround(v[g] / dd, 0, hi) : 0;
	return dd;
}

/* quants of a group x[n] against stored scale f and min m: x ~ f q - m */
static void
requant_asym(const float *x, int n, float f, float m, int qmax, uint8_t *q)
{
	for (int i = 0; i < n; i++)
		q[i] = (uint8_t)(f != 0.0f ? iround((x[i] + m) / f, 0, qmax) : 0);
}

static void
requant_sym(const float *x, int n, float f, int qmin, int qmax, int8_t *q)
{
	for (int i = 0; i < n; i++)
		q[i] = (int8_t)(f != 0.0f ? iround(x[i] / f, qmin, qmax) : 0);
}

/* squared error of group x[n] quantised against scale f and min m */
static double
err_asym(const float *x, int n, float f, float m, int qmax)
{
	double e = 0;

	for (int i = 0; i < n; i++) {
		int q = f != 0.0f ? iround((x[i] + m) / f, 0, qmax) : 0;
		double r = (double)f * q - m - x[i];
		e += r * r;
	}
	return e;
}

/* The rounded group scale and min are each one of two neighbours of the
 * fitted values; try the 3 x 3 integers around them against the stored
 * super-scales and keep the pair with the least error. */
static void
refine_asym(const float *x, int n, int qmax, float d, float dm, int smax,
        int *sc, int *mn)
{
	int bs = *sc, bm = *mn;
	double best = err_asym(x, n, d * (float)bs, dm * (float)bm, qmax);

	for (int a = *sc - 1; a <= *sc + 1; a++) {
		for (int b = *mn - 1; b <= *mn + 1; b++) {
			double e;
			if (a < 0 || a > smax || b < 0 || b > smax || (a == *sc && b == *mn))
				continue;
			e = err_asym(x, n, d * (float)a, dm * (float)b, qmax);
			if (e < best) {
				best = e;
				bs = a;
				bm = b;
			}
		}
	}
	*sc = bs;
	*mn = bm;
}

static double
err_sym(const float *x, int n, float f, int qmin, int qmax)
{
	double e = 0;

	for (int i = 0; i < n; i++) {
		int q = f != 0.0f ? iround(x[i] / f, qmin, qmax) : 0;
		double r = (double)f * q - x[i];
		e += r * r;
	}
	return e;
}

/* as refine_asym for a signed group scale in [slo, shi] */
static void
refine_sym(const float *x, int n, int qmin, int qmax, float d, int slo, int shi,
        int *sc)
{
	int bs = *sc;
	double best = err_sym(x, n, d * (float)bs, qmin, qmax);

	for (int a = *sc - 1; a <= *sc + 1; a += 2) {
		double e;
		if (a < slo || a > shi)
			continue;
		e = err_sym(x, n, d * (float)a, qmin, qmax);
		if (e < best) {
			best = e;
			bs = a;
		}
	}
	*sc = bs;
}

void
quant_make_q2_K(const float *x, void *dst, size_t nb)
{
	struct blk_q2_K *y = dst;

	for (size_t i = 0; i < nb; i++, x += QK_K) {
		float a[16], b[16], d, dm;
		int sc[16], mn[16];
		uint8_t q[QK_K];

		for (int g = 0; g < 16; g++)
			fit_asym(x + 16 * g, 16, 3, q + 16 * g, &a[g], &b[g]);
		d = super_unsigned(a, 16, 15, &y[i].d, sc);
		dm = super_unsigned(b, 16, 15, &y[i].dmin, mn);
		for (int g = 0; g < 16; g++) {
			refine_asym(x + 16 * g, 16, 3, d, dm, 15, &sc[g], &mn[g]);
			y[i].scales[g] = (uint8_t)(sc[g] | mn[g] << 4);
			requant_asym(x + 16 * g, 16, d * (float)sc[g], dm * (float)mn[g], 3,
			        q + 16 * g);
		}
		memset(y[i].qs, 0, sizeof(y[i].qs));
		for (int e = 0; e < QK_K; e++)
			y[i].qs[32 * (e / 128) + e % 32] |=
			        (uint8_t)(q[e] << (2 * ((e % 128) / 32)));
	}
}

void
quant_make_q3_K(const float *x, void *dst, size_t nb)
{
	struct blk_q3_K *y = dst;

	for (size_t i = 0; i < nb; i++, x += QK_K) {
		float s[16], d;
		int sc[16];
		int8_t q[QK_K];

		for (int g = 0; g < 16; g++)
			s[g] = fit_sym(x + 16 * g, 16, -4, 3, q + 16 * g);
		d = super_signed(s, 16, -32, 31, &y[i].d, sc);
		memset(y[i].scales, 0, sizeof(y[i].scales));
		for (int g = 0; g < 16; g++) {
			refine_sym(x + 16 * g, 16, -4, 3, d, -32, 31, &sc[g]);
			int v = sc[g] + 32; /* 0..63 */
			if (g < 8)
				y[i].scales[g] |= (uint8_t)(v & 15);
			else
				y[i].scales[g - 8] |= (uint8_t)((v & 15) << 4);
			y[i].scales[8 + g % 4] |= (uint8_t)((v >> 4) << (2 * (g / 4)));
			requant_sym(x + 16 * g, 16, d * (float)sc[g], -4, 3, q + 16 * g);
		}
		memset(y[i].qs, 0, sizeof(y[i].qs));
		memset(y[i].hmask, 0, sizeof(y[i].hmask));
		for (int e = 0; e < QK_K; e++) {
			int u = q[e] + 4; /* 0..7: low 2 bits, high bit = "not -4" */
			y[i].qs[32 * (e / 128) + e % 32] |=
			        (uint8_t)((u & 3) << (2 * ((e % 128) / 32)));
			if (u & 4)
				y[i].hmask[e % 32] |= (uint8_t)(1 << (e / 32));
		}
	}
}

/* Q4_K / Q5_K: 8 groups of 32, x ~ d sc q - dmin m, sc and m 6 bits */
static void
make_k45(const float *x, int qmax, uint16_t *d16, uint16_t *dmin16,
        uint8_t scales[12], uint8_t q[QK_K])
{
	float a[8], b[8], d, dm;
	int sc[8], mn[8];

	for (int g = 0; g < 8; g++)
		fit_asym(x + 32 * g, 32, qmax, q + 32 * g, &a[g], &b[g]);
	d = super_unsigned(a, 8, 63, d16, sc);
	dm = super_unsigned(b, 8, 63, dmin16, mn);
	for (int g = 0; g < 8; g++)
		refine_asym(x + 32 * g, 32, qmax, d, dm, 63, &sc[g], &mn[g]);
	for (int j = 0; j < 4; j++) {
		scales[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
		scales[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
		scales[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
	}
	for (int g = 0; g < 8; g++)
		requant_asym(x + 32 * g, 32, d * (float)sc[g], dm * (float)mn[g], qmax,
		        q + 32 * g);
}

void
quant_make_q4_K(const float *x, void *dst, size_t nb)
{
	struct blk_q4_K *y = dst;
	uint8_t q[QK_K];

	for (size_t i = 0; i < nb; i++, x += QK_K) {
		make_k45(x, 15, &y[i].d, &y[i].dmin, y[i].scales, q);
		for (int c = 0; c < 4; c++)
			for (int l = 0; l < 32; l++)
				y[i].qs[32 * c + l] = (uint8_t)(q[64 * c + l] |
				        q[64 * c + 32 + l] << 4);
	}
}

void
quant_make_q5_K(const float *x, void *dst, size_t nb)
{
	struct blk_q5_K *y = dst;
	uint8_t q[QK_K];

	for (size_t i = 0; i < nb; i++, x += QK_K) {
		make_k45(x, 31, &y[i].d, &y[i].dmin, y[i].scales, q);
		memset(y[i].qh, 0, sizeof(y[i].qh));
		for (int c = 0; c < 4; c++)
			for (int l = 0; l < 32; l++)
				y[i].qs[32 * c + l] = (uint8_t)((q[64 * c + l] & 15) |
				        (q[64 * c + 32 + l] & 15) << 4);
		for (int e = 0; e < QK_K; e++)
			y[i].qh[e % 32] |= (uint8_t)((q[e] >> 4) << (e / 32));
	}
}

void
quant_make_q6_K(const float *x, void *dst, size_t nb)
{
	struct blk_q6_K *y = dst;

	for (size_t i = 0; i < nb; i++, x += QK_K) {
		float s[16], d;
		int sc[16];
		int8_t q[QK_K];

		for (int g = 0; g < 16; g++)
			s[g] = fit_sym(x + 16 * g, 16, -32, 31, q + 16 * g);
		d = super_signed(s, 16, -128, 127, &y[i].d, sc);
		for (int g = 0; g < 16; g++) {
			refine_sym(x + 16 * g, 16, -32, 31, d, -128, 127, &sc[g]);
			y[i].scales[g] = (int8_t)sc[g];
			requant_sym(x + 16 * g, 16, d * (float)sc[g], -32, 31, q + 16 * g);
		}
		memset(y[i].ql, 0, sizeof(y[i].ql));
		memset(y[i].qh, 0, sizeof(y[i].qh));
		for (int e = 0; e < QK_K; e++) {
			int u = q[e] + 32, n = e / 128, k = (e % 128) / 32, l = e % 32;
			y[i].ql[64 * n + 32 * (k & 1) + l] |= (uint8_t)((u & 15) << (4 * (k >> 1)));
			y[i].qh[32 * n + l] |= (uint8_t)((u >> 4) << (2 * k));
		}
	}
}
