/* The block-quantised types (quant.h) against their scalar definitions:
 * every type's dot products (the vector code of this build and the 256-bit
 * code, on random blocks including extreme f16 scales, -128 quants and
 * all-zero activation blocks) against the exact integer reference and
 * against a double-precision dot product of the dequantised rows; vector
 * dequantisation against the scalar one; llama.cpp's activation rounding
 * rules (ties to even, the signed Q8_K scale, block sums); the
 * quantisers' error on Gaussian rows and on hostile rows; the product of
 * a row range.  Tolerances are stated per test. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "gguf.h"
#include "quant.h"
#include "quant_int.h"
#include "testutil.h"

static const enum dtype types[] = { DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0,
	DTYPE_Q5_1, DTYPE_Q8_0, DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K,
	DTYPE_Q6_K };
#define N_TYPES (sizeof(types) / sizeof(types[0]))

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint64_t
next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* uniform in [0, 1) */
static double
unif(void)
{
	return (double)(next() >> 11) * (1.0 / 9007199254740992.0);
}

static float
gauss(void)
{
	double u = unif() + 1e-300, v = unif();
	return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* Byte offsets of the f16 scale fields of one block of t (-1: none). */
static void
scale_fields(enum dtype t, int off[2])
{
	off[0] = off[1] = -1;
	switch (t) {
	case DTYPE_Q4_0: case DTYPE_Q5_0: case DTYPE_Q8_0: off[0] = 0; break;
	case DTYPE_Q4_1: case DTYPE_Q5_1: case DTYPE_Q4_K: case DTYPE_Q5_K:
		off[0] = 0;
		off[1] = 2;
		break;
	case DTYPE_Q2_K: off[0] = 80; off[1] = 82; break;
	case DTYPE_Q3_K: off[0] = 108; break;
	case DTYPE_Q6_K: off[0] = 208; break;
	default: break;
	}
}

/* A random f16 scale: mode 0 ordinary (2^-10 .. 2^4, either sign), mode 1
 * extreme (largest, smallest normal, subnormal, zero, either sign). */
static uint16_t
rand_scale(int mode)
{
	static const float ext[] = { 65504.0f, 6.103515625e-05f, 5.9604645e-08f,
		0.0f, 1.0f, 3.0e-07f };
	float v;

	if (mode == 0)
		v = ldexpf((float)(1.0 + unif()), (int)(next() % 15) - 10);
	else
		v = ext[next() % (sizeof(ext) / sizeof(ext[0]))];
	return f32_to_fp16(next() & 1 ? -v : v);
}

/* nb random blocks of t: random quant bytes, scales from rand_scale */
static void *
rand_blocks(enum dtype t, size_t nb, int mode)
{
	size_t bb = dtype_block_size(t);
	uint8_t *b = malloc(nb * bb);
	int off[2];

	for (size_t i = 0; i < nb * bb; i++)
		b[i] = (uint8_t)next();
	scale_fields(t, off);
	for (size_t i = 0; i < nb; i++)
		for (int k = 0; k < 2; k++)
			if (off[k] >= 0) {
				uint16_t h = rand_scale(mode);
				memcpy(b + i * bb + off[k], &h, 2);
			}
	return b;
}

/* An activation row: per 32 values a magnitude 10^[lo, hi], some blocks
 * all zero, one value per block pushed to the extreme. */
static void
rand_acts_in(float *x, size_t n, double lo, double hi)
{
	for (size_t i = 0; i < n; i += 32) {
		double mag = pow(10.0, lo + (hi - lo) * unif());
		int zero = next() % 8 == 0;
		for (size_t j = 0; j < 32; j++)
			x[i + j] = zero ? 0.0f : (float)(mag * gauss());
		if (!zero)
			x[i + next() % 32] = (float)(mag * 4.0 * (next() & 1 ? 1 : -1));
	}
}

static void
rand_acts(float *x, size_t n)
{
	rand_acts_in(x, n, -6, 6);
}

/* Vector, 256-bit and reference dot products agree, and the reference
 * equals the double dot product of the dequantised rows.  Tolerance:
 * 2e-5 of sum |w_i a_i| (float rounding of per-block products summed
 * over up to 40 blocks is below 1e-6 of it). */
START_TEST(dot_products_match_the_reference_for_every_type)
{
	enum dtype t = types[_i % N_TYPES];
	int mode = (int)(_i / N_TYPES);
	size_t be = dtype_block_elems(t);
	enum dtype at = quant_act_type(t);

	for (int rep = 0; rep < 40; rep++) {
		size_t nb = 1 + next() % (be == 32 ? 41 : 7), n = nb * be;
		void *w = rand_blocks(t, nb, mode);
		float *x = malloc(n * 4), *wf = malloc(n * 4), *af = malloc(n * 4);
		void *a = malloc(dtype_row_size(at, n));
		double def = 0, mag = 0;

		/* Q8_1 stores the block sum d * sum(q) as f16: activations
		 * beyond about 2000 overflow it (in llama.cpp too) */
		if (at == DTYPE_Q8_1)
			rand_acts_in(x, n, -4, 2);
		else
			rand_acts(x, n);
		quant_act_row(at, x, a, n);
		ck_assert_int_eq(quant_row_to_f32_ref(t, w, wf, n), 0);
		ck_assert_int_eq(quant_row_to_f32_ref(at, a, af, n), 0);
		for (size_t i = 0; i < n; i++) {
			def += (double)wf[i] * af[i];
			mag += fabs((double)wf[i] * af[i]);
		}
		if (at == DTYPE_Q8_1) {
			/* the min term uses the block sum s, rounded on its own */
			const struct blk_q8_1 *ab = a;
			def = 0;
			mag = 0;
			for (size_t i = 0; i < n; i++) {
				const uint8_t *wb = (const uint8_t *)w + (i / 32) * dtype_block_size(t);
				uint16_t mh;
				memcpy(&mh, wb + 2, 2);
				float mw = fp16_to_f32(mh);
				def += (double)(wf[i] - mw) * af[i];
				mag += fabs((double)(wf[i] - mw) * af[i]);
			}
			for (size_t k = 0; k < nb; k++) {
				const uint8_t *wb = (const uint8_t *)w + k * dtype_block_size(t);
				uint16_t mh;
				memcpy(&mh, wb + 2, 2);
				def += (double)fp16_to_f32(mh) * fp16_to_f32(ab[k].s);
				mag += fabs((double)fp16_to_f32(mh) * fp16_to_f32(ab[k].s));
			}
		}
		double tol = 2e-5 * mag + 1e-30;
		float ref = quant_dot_ref(t, w, a, n);
		float vec = quant_dot(t, w, a, n);
		float nar = quant_dot_narrow(t, w, a, nb);
		ck_assert_msg(isfinite(ref) && fabs(ref - def) <= tol,
		        "%s: reference %g, dequantised definition %g", dtype_name(t), ref, def);
		ck_assert_msg(fabs(vec - ref) <= tol, "%s (%s, %zu blocks): vector %g, reference %g",
		        dtype_name(t), quant_simd_name(), nb, vec, ref);
		ck_assert_msg(fabs(nar - ref) <= tol, "%s: 256-bit %g, reference %g",
		        dtype_name(t), nar, ref);
		free(w);
		free(x);
		free(wf);
		free(af);
		free(a);
	}
}
END_TEST

/* Vector dequantisation equals the scalar code within one rounding of
 * the largest value of the row (the scalar code may round d * sc and
 * the product separately where the vector code fuses them). */
START_TEST(dequantisation_vector_equals_scalar)
{
	enum dtype t = types[_i % N_TYPES];
	int mode = (int)(_i / N_TYPES);
	size_t be = dtype_block_elems(t), nb = 9, n = nb * be;
	void *w = rand_blocks(t, nb, mode);
	float *a = malloc(n * 4), *b = malloc(n * 4);
	float mx = 0;

	ck_assert_int_eq(quant_row_to_f32(t, w, a, n), 0);
	ck_assert_int_eq(quant_row_to_f32_ref(t, w, b, n), 0);
	ck_assert_int_eq(dtype_row_to_f32(t, w, a, n), 0); /* the public path */
	for (size_t i = 0; i < n; i++)
		mx = fmaxf(mx, fabsf(b[i]));
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(fabsf(a[i] - b[i]) <= 2 * FLT_EPSILON * mx,
		        "%s value %zu: %g vs %g", dtype_name(t), i, a[i], b[i]);
	/* rows that are not whole blocks */
	ck_assert_int_eq(quant_row_to_f32(t, w, a, be + 1), EPMOE_EINVAL);
	free(w);
	free(a);
	free(b);
}
END_TEST

/* llama.cpp's rounding of activations: Q8_0 / Q8_1 take d = amax / 127
 * (stored f16) and q = round-half-even(x * 127 / amax); Q8_1 adds
 * s = f16(d * sum q); Q8_K keeps the sign of the largest value
 * (d = -max / 127, q = round-half-even(x * -127 / max), capped at 127)
 * and the sums of each 16. */
START_TEST(activations_are_rounded_as_llama_cpp_rounds_them)
{
	float x[256];
	struct blk_q8_0 q0;
	struct blk_q8_1 q1;
	struct blk_q8_K qk;

	/* amax 127 -> scale 1: ties go to the even neighbour */
	for (int i = 0; i < 32; i++)
		x[i] = (float)(i % 16) - 7.5f; /* -7.5, -6.5, ..., 7.5 */
	x[31] = -127.0f;
	quant_act_row(DTYPE_Q8_0, x, &q0, 32);
	ck_assert_uint_eq(q0.d, f32_to_fp16(1.0f));
	for (int i = 0; i < 31; i++)
		ck_assert_int_eq(q0.qs[i], (int)nearbyintf(x[i]));
	ck_assert_int_eq(q0.qs[0], -8);  /* -7.5 */
	ck_assert_int_eq(q0.qs[1], -6);  /* -6.5 */
	ck_assert_int_eq(q0.qs[15], 8);  /* 7.5 */
	ck_assert_int_eq(q0.qs[31], -127);
	quant_act_row(DTYPE_Q8_1, x, &q1, 32);
	ck_assert_uint_eq(q1.d, q0.d);
	ck_assert_mem_eq(q1.qs, q0.qs, 32);
	int sum = 0;
	for (int i = 0; i < 32; i++)
		sum += q0.qs[i];
	ck_assert_uint_eq(q1.s, f32_to_fp16((float)sum));

	/* Q8_K: the largest value negative -> positive scale, and the
	 * other way round */
	for (int i = 0; i < 256; i++)
		x[i] = (float)(i % 32) - 15.5f;
	x[100] = -127.0f;
	quant_act_row(DTYPE_Q8_K, x, &qk, 256);
	ck_assert_float_eq(qk.d, 1.0f);
	ck_assert_int_eq(qk.qs[0], -16); /* -15.5 */
	ck_assert_int_eq(qk.qs[1], -14); /* -14.5 */
	ck_assert_int_eq(qk.qs[31], 16); /* 15.5 */
	ck_assert_int_eq(qk.qs[100], -127);
	for (int g = 0; g < 16; g++) {
		int s = 0;
		for (int i = 16 * g; i < 16 * g + 16; i++)
			s += qk.qs[i];
		ck_assert_int_eq(qk.bsums[g], s);
	}
	x[100] = 127.0f;
	quant_act_row(DTYPE_Q8_K, x, &qk, 256);
	ck_assert_float_eq(qk.d, -1.0f);
	ck_assert_int_eq(qk.qs[100], -127);
	ck_assert_int_eq(qk.qs[0], 16);

	/* all-zero blocks give zeros, not NaN */
	memset(x, 0, sizeof(x));
	quant_act_row(DTYPE_Q8_K, x, &qk, 256);
	ck_assert_float_eq(qk.d, 0.0f);
	for (int i = 0; i < 256; i++)
		ck_assert_int_eq(qk.qs[i], 0);
	quant_act_row(DTYPE_Q8_0, x, &q0, 32);
	ck_assert_uint_eq(q0.d, 0);

	/* random rows: every value within half a step (plus the f16 error
	 * of the stored scale times |q| <= 127 for Q8_0) */
	for (int rep = 0; rep < 200; rep++) {
		float y[256];
		rand_acts(x, 256);
		quant_act_round(DTYPE_Q4_K, x, y, 256); /* Q8_K */
		quant_act_row(DTYPE_Q8_K, x, &qk, 256);
		for (int i = 0; i < 256; i++) {
			ck_assert_float_eq(y[i], qk.d * qk.qs[i]);
			ck_assert(fabsf(y[i] - x[i]) <= 0.5f * fabsf(qk.d) * (1 + 1e-5f));
		}
		quant_act_round(DTYPE_Q8_0, x, y, 256);
		for (int b = 0; b < 8; b++) {
			float amax = 0;
			quant_act_row(DTYPE_Q8_0, x + 32 * b, &q0, 32);
			float d = fp16_to_f32(q0.d);
			for (int i = 0; i < 32; i++)
				amax = fmaxf(amax, fabsf(x[32 * b + i]));
			/* the stored f16 scale is off by 2^-11 relative, or by
			 * half the subnormal step 2^-25 */
			float dt = amax / 127.0f;
			float derr = fmaxf(dt * ldexpf(1, -11), ldexpf(1, -25));
			for (int i = 0; i < 32; i++) {
				ck_assert_float_eq(y[32 * b + i], d * q0.qs[i]);
				ck_assert(fabsf(y[32 * b + i] - x[32 * b + i]) <=
				        (0.5f * dt + 127 * derr) * (1 + 1e-5f));
			}
		}
	}
}
END_TEST

/* Quantise -> dequantise on Gaussian rows: relative RMS error below a
 * bound per type (measured 2026-11: q4_0 0.081, q4_1 0.077, q5_0 0.040,
 * q5_1 0.038, q8_0 0.0053, q2_K 0.265, q3_K 0.144, q4_K 0.073, q5_K 0.035,
 * q6_K 0.017; bounds 10% above), and no value further from its input
 * than the type allows per group (clipping included: half the range of
 * the group). */
START_TEST(quantisers_bound_the_error)
{
	static const double bound[N_TYPES] = { 0.09, 0.085, 0.045, 0.042, 0.006,
		0.29, 0.16, 0.08, 0.039, 0.019 };
	enum dtype t = types[_i];
	size_t n = 256 * 64;
	float *x = malloc(n * 4), *y = malloc(n * 4);
	void *q = malloc(dtype_row_size(t, n));
	double e = 0, xx = 0;

	for (size_t i = 0; i < n; i++)
		x[i] = gauss();
	ck_assert_int_eq(quant_row_from_f32(t, x, q, n), 0);
	ck_assert_int_eq(dtype_row_to_f32(t, q, y, n), 0);
	for (size_t i = 0; i < n; i++) {
		e += (double)(x[i] - y[i]) * (x[i] - y[i]);
		xx += (double)x[i] * x[i];
	}
	ck_assert_msg(sqrt(e / xx) <= bound[_i], "%s: relative RMS error %g > %g",
	        dtype_name(t), sqrt(e / xx), bound[_i]);
	for (size_t g = 0; g < n; g += 16) {
		float lo = INFINITY, hi = -INFINITY;
		for (size_t i = g; i < g + 16; i++) {
			lo = fminf(lo, x[i]);
			hi = fmaxf(hi, x[i]);
		}
		for (size_t i = g; i < g + 16; i++)
			ck_assert_msg(fabsf(x[i] - y[i]) <= 0.5f * (hi - lo) + 1e-6f,
			        "%s value %zu: %g -> %g", dtype_name(t), i, x[i], y[i]);
	}

	/* hostile rows: zeros, constants, tiny and huge values, NaN and
	 * infinity come back finite; zeros and small integers exactly */
	static const float special[] = { 0.0f, 1e-9f, 3.0f, 1e9f, NAN, INFINITY };
	for (size_t k = 0; k < sizeof(special) / sizeof(special[0]); k++) {
		size_t m = 512;
		for (size_t i = 0; i < m; i++)
			x[i] = (k == 2) ? special[k] : (i % 7 == 3 ? special[k] : 0.5f * gauss() * (k != 0));
		ck_assert_int_eq(quant_row_from_f32(t, x, q, m), 0);
		ck_assert_int_eq(dtype_row_to_f32(t, q, y, m), 0);
		for (size_t i = 0; i < m; i++) {
			ck_assert_msg(isfinite(y[i]), "%s: special %g gave %g", dtype_name(t),
			        special[k], y[i]);
			if (k == 0)
				ck_assert_float_eq(y[i], 0.0f);
		}
		if (k == 2) /* a constant row is reproduced to the scale's f16 precision */
			for (size_t i = 0; i < m; i++)
				ck_assert_float_eq_tol(y[i], 3.0f, 3.0f * 2e-3f);
	}
	free(x);
	free(y);
	free(q);
}
END_TEST

/* A row range of a product equals the row dots, for a few token counts,
 * with strides, and with rows too large for the on-stack buffer. */
START_TEST(row_range_products_equal_the_row_dots)
{
	enum dtype t = types[_i];
	static const uint32_t widths[] = { 512, 4096 };

	for (size_t wi = 0; wi < 2; wi++) {
		uint32_t n_in = widths[wi], n_out = 24;
		size_t rs = dtype_row_size(t, n_in);
		void *W = rand_blocks(t, (size_t)n_out * n_in / dtype_block_elems(t), 0);
		enum dtype at = quant_act_type(t);
		void *a = malloc(dtype_row_size(at, n_in));

		for (int n = 1; n <= 9; n += n < 3 ? 1 : 3) { /* 1, 2, 3, 6, 9: every group size */
			int ldx = (int)n_in + 5, ldy = (int)n_out + 3;
			float *X = malloc((size_t)n * ldx * 4), *Y = calloc((size_t)n * ldy, 4);
			for (size_t i = 0; i < (size_t)n * ldx; i++)
				X[i] = gauss();
			ck_assert_int_eq(quant_matmul_rows(t, W, rs, n_in, 5, 19, X, n, ldx, Y,
			                         ldy), 0);
			for (int r = 0; r < n; r++) {
				quant_act_row(at, X + (size_t)r * ldx, a, n_in);
				for (uint32_t j = 0; j < n_out; j++) {
					float want = (j >= 5 && j < 19) ?
					        quant_dot(t, (uint8_t *)W + j * rs, a, n_in) : 0.0f;
					ck_assert_float_eq(Y[(size_t)r * ldy + j], want);
				}
			}
			free(X);
			free(Y);
		}
		/* a width that is not whole blocks is refused */
		ck_assert_int_eq(quant_matmul_rows(t, W, rs, n_in + 16, 0, 1, a, 1, 1,
		                         a, 1), EPMOE_EINVAL);
		free(W);
		free(a);
	}
}
END_TEST

/* The quantisers write what the dequantisers read: blocks made by hand
 * from known quants decode to d * q (- m). */
START_TEST(hand_made_blocks_decode_to_their_values)
{
	struct blk_q4_K b;
	float y[256];

	/* Q4_K: d = 1, dmin = 0.5; group g scale g + 1, min 2 g; quant
	 * (i * 7) % 16 */
	memset(&b, 0, sizeof(b));
	b.d = f32_to_fp16(1.0f);
	b.dmin = f32_to_fp16(0.5f);
	for (int g = 0; g < 8; g++) {
		int sc = g + 1, m = 2 * g;
		if (g < 4) {
			b.scales[g] = (uint8_t)sc;
			b.scales[g + 4] = (uint8_t)m;
		} else {
			b.scales[g + 4] = (uint8_t)((sc & 15) | (m & 15) << 4);
			b.scales[g - 4] |= (uint8_t)((sc >> 4) << 6);
			b.scales[g] |= (uint8_t)((m >> 4) << 6);
		}
	}
	for (int i = 0; i < 256; i++) {
		int q = (i * 7) % 16;
		b.qs[32 * (i / 64) + i % 32] |= (uint8_t)(q << (4 * ((i / 32) % 2)));
	}
	ck_assert_int_eq(quant_row_to_f32(DTYPE_Q4_K, &b, y, 256), 0);
	for (int i = 0; i < 256; i++) {
		int g = i / 32;
		ck_assert_float_eq(y[i], (float)((g + 1) * ((i * 7) % 16)) - 0.5f * (float)(2 * g));
	}

	/* Q6_K: d = 0.25, group scale g - 8, quant (i * 5) % 64 - 32 */
	struct blk_q6_K c;
	memset(&c, 0, sizeof(c));
	c.d = f32_to_fp16(0.25f);
	for (int g = 0; g < 16; g++)
		c.scales[g] = (int8_t)(g - 8);
	for (int i = 0; i < 256; i++) {
		int u = (i * 5) % 64, n = i / 128, k = (i % 128) / 32, l = i % 32;
		c.ql[64 * n + 32 * (k & 1) + l] |= (uint8_t)((u & 15) << (4 * (k >> 1)));
		c.qh[32 * n + l] |= (uint8_t)((u >> 4) << (2 * k));
	}
	ck_assert_int_eq(quant_row_to_f32(DTYPE_Q6_K, &c, y, 256), 0);
	for (int i = 0; i < 256; i++)
		ck_assert_float_eq(y[i], 0.25f * (float)((i / 16) - 8) * (float)((i * 5) % 64 - 32));
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("quant");
	TCase *tc = tcase_create("kernels");
	SRunner *sr;
	int nf;

	tcase_set_timeout(tc, 240);
	tcase_add_loop_test(tc, dot_products_match_the_reference_for_every_type, 0,
	        2 * N_TYPES);
	tcase_add_loop_test(tc, dequantisation_vector_equals_scalar, 0, 2 * N_TYPES);
	tcase_add_test(tc, activations_are_rounded_as_llama_cpp_rounds_them);
	tcase_add_loop_test(tc, quantisers_bound_the_error, 0, N_TYPES);
	tcase_add_loop_test(tc, row_range_products_equal_the_row_dots, 0, N_TYPES);
	tcase_add_test(tc, hand_made_blocks_decode_to_their_values);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	nf = srunner_ntests_failed(sr);
	srunner_free(sr);
	return nf == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
