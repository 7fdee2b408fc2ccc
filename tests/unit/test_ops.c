/* Kernels against naive reference loops (double accumulation): RMSNorm,
 * RoPE (both pairings), softmax, causal attention, decode attention over
 * an F32 and an F16 cache, matrix products for every weight type and
 * every tile shape, and the expert FFN + combine of the in-process
 * backend.  Tolerances are stated per test.  Batch invariance is checked
 * bit for bit: a token's product alone equals its row of a batched one,
 * and an expert entry alone equals its part of a grouped run. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "matmul.h"
#include "model.h"
#include "moe.h"
#include "ops.h"
#include "pool.h"
#include "quant.h"
#include "testutil.h"

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static float
frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static void
fill(float *v, size_t n, float scale)
{
	for (size_t i = 0; i < n; i++)
		v[i] = frand() * scale;
}

START_TEST(rmsnorm_matches_reference)
{
	float x[100], w[100], y[100];
	fill(x, 100, 3.0f);
	fill(w, 100, 1.0f);
	double ss = 0;
	for (int i = 0; i < 100; i++)
		ss += (double)x[i] * x[i];
	double sc = 1.0 / sqrt(ss / 100 + 1e-5);
	op_rmsnorm(y, x, w, 100, 1e-5f);
	for (int i = 0; i < 100; i++)
		ck_assert_double_eq_tol(y[i], x[i] * sc * w[i], 1e-5);
	op_rmsnorm(x, x, NULL, 100, 1e-5f); /* in place, no weight */
	ss = 0;
	for (int i = 0; i < 100; i++)
		ss += (double)x[i] * x[i];
	ck_assert_double_eq_tol(ss / 100, 1.0, 1e-4);
}
END_TEST

/* RoPE, by the definition: angle pos * base^(-2i/n_rot) on pair i. */
START_TEST(rope_rotates_the_right_pairs)
{
	int nh = 3, hd = 16, n_rot = 12, pos = 37;
	int neox = _i;
	float base = 10000.0f, freq[8], x[48], y[48];
	for (int i = 0; i < n_rot / 2; i++)
		freq[i] = powf(base, -2.0f * i / n_rot);
	fill(x, 48, 1.0f);
	memcpy(y, x, sizeof(x));
	op_rope(y, nh, hd, n_rot, pos, freq, neox);
	for (int h = 0; h < nh; h++) {
		float *a = x + h * hd, *b = y + h * hd;
		for (int i = 0; i < n_rot / 2; i++) {
			int p = neox ? i : 2 * i, q = neox ? i + n_rot / 2 : 2 * i + 1;
			double th = pos * pow(base, -2.0 * i / n_rot);
			ck_assert_double_eq_tol(b[p], a[p] * cos(th) - a[q] * sin(th), 1e-4);
			ck_assert_double_eq_tol(b[q], a[p] * sin(th) + a[q] * cos(th), 1e-4);
		}
		for (int i = n_rot; i < hd; i++) /* dims past n_rot untouched */
			ck_assert_float_eq(b[i], a[i]);
	}
	/* position 0 is the identity */
	memcpy(y, x, sizeof(x));
	op_rope(y, nh, hd, n_rot, 0, freq, neox);
	for (int i = 0; i < 48; i++)
		ck_assert_float_eq(y[i], x[i]);
}
END_TEST

/* SwiGLU (vectorised exp) against the libm formula, relative 1e-6, over
 * a range that includes large negative and positive gates. */
START_TEST(swiglu_matches_reference)
{
	int n = 1000;
	float *g = malloc(n * 4), *u = malloc(n * 4), *ref = malloc(n * 4);
	for (int i = 0; i < n; i++) {
		g[i] = (float)(i - 500) * 0.09f; /* -45 .. 45 */
		u[i] = frand() * 2.0f;
		ref[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
	}
	op_swiglu(g, u, n);
	for (int i = 0; i < n; i++)
		ck_assert_msg(fabsf(g[i] - ref[i]) <= 1e-6f * (1.0f + fabsf(ref[i])),
		        "i %d: %g vs %g", i, g[i], ref[i]);
	free(g);
	free(u);
	free(ref);
}
END_TEST

START_TEST(softmax_is_stable_and_normalised)
{
	float v[4] = { 1000.0f, 1001.0f, -1000.0f, 999.0f };
	op_softmax(v, 4);
	double e1 = exp(-1.0), e2 = exp(-2.0), s = 1 + e1 + e2;
	ck_assert_double_eq_tol(v[1], 1 / s, 1e-6);
	ck_assert_double_eq_tol(v[0], e1 / s, 1e-6);
	ck_assert_double_eq_tol(v[3], e2 / s, 1e-6);
	ck_assert_float_eq(v[2], 0.0f);
}
END_TEST

/* Attention of n query rows at positions p0.. over p0+n keys, naive. */
START_TEST(attention_matches_reference)
{
	int hd = 24, p0 = 5, ld = 40; /* row stride > hd, like a multi-head row */
	int n = _i == 0 ? 1 : 150; /* decode path; chunked prefill path */
	int P = p0 + n;
	float *Q = malloc((size_t)n * ld * 4), *K = malloc((size_t)P * ld * 4);
	float *V = malloc((size_t)P * ld * 4), *O = calloc((size_t)n * ld, 4);
	float *s = malloc((size_t)OP_ATT_QCHUNK * P * 4);
	fill(Q, (size_t)n * ld, 2.0f);
	fill(K, (size_t)P * ld, 2.0f);
	fill(V, (size_t)P * ld, 1.0f);
	op_attn_head(Q, ld, K, V, ld, n, p0, hd, O, ld, s);
	for (int i = 0; i < n; i++) {
		int valid = p0 + i + 1;
		double sc[400], mx = -1e300, sum = 0;
		for (int j = 0; j < valid; j++) {
			double d = 0;
			for (int c = 0; c < hd; c++)
				d += (double)Q[i * ld + c] * K[j * ld + c];
			sc[j] = d / sqrt(hd);
			if (sc[j] > mx)
				mx = sc[j];
		}
		for (int j = 0; j < valid; j++)
			sum += sc[j] = exp(sc[j] - mx);
		for (int c = 0; c < hd; c++) {
			double o = 0;
			for (int j = 0; j < valid; j++)
				o += sc[j] / sum * V[j * ld + c];
			ck_assert_double_eq_tol(O[i * ld + c], o, 1e-5);
		}
	}
	free(Q);
	free(K);
	free(V);
	free(O);
	free(s);
}
END_TEST

/* Y = X · Wᵀ for each weight type against double loops over the same
 * (converted) weights, 1 and 2 threads: token counts that take every tile
 * shape (1 to 6 rows one weight row at a time, 6x2 tiles and their
 * tails, several token blocks), a weight row count that leaves a tail of
 * 1 row, and rows whose length is not a multiple of the vector.  For the
 * block-quantised types (rows of 512: whole blocks) the reference is the
 * integer definition on the activations rounded as quant.h says, so the
 * integer path (few rows) and the panel path (many) must both agree. */
START_TEST(matmul_matches_reference_for_every_type)
{
	static const enum dtype types[] = { DTYPE_F32, DTYPE_F16,
		DTYPE_BF16, DTYPE_Q8_0, DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0,
		DTYPE_Q5_1, DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K,
		DTYPE_Q6_K };
	static const int ns[] = { 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 40, 130 };
	enum dtype t = types[_i];
	uint32_t n_in = quant_is_weight(t) ? 512 : 100, n_out = 301;
	struct tmat W = { .type = t, .n_in = n_in, .n_out = n_out };
	float *wf = malloc((size_t)n_in * n_out * 4), *wc = malloc((size_t)n_in * n_out * 4);
	struct pool *pool;

	W.row_size = dtype_row_size(t, n_in);
	void *wd = malloc(W.row_size * n_out);
	W.data = wd;
	fill(wf, (size_t)n_in * n_out, 0.5f);
	for (uint32_t r = 0; r < n_out; r++) {
		ck_assert_int_eq(dtype_row_from_f32(t, wf + (size_t)r * n_in,
		                         (uint8_t *)wd + r * W.row_size, n_in), 0);
		ck_assert_int_eq(tmat_row_f32(&W, r, wc + (size_t)r * n_in), 0);
	}
	for (int threads = 1; threads <= 2; threads++) {
		ck_assert_int_eq(pool_new(&pool, threads), 0);
		for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
			int n = ns[k], ldx = (int)n_in + 3, ldy = (int)n_out + 5;
			float *X = malloc((size_t)n * ldx * 4), *Y = malloc((size_t)n * ldy * 4);
			float *xr = malloc((size_t)n_in * 4);
			uint8_t *xq = malloc(4 * (size_t)n_in); /* any rounded row fits */
			fill(X, (size_t)n * ldx, 1.0f);
			ck_assert_int_eq(op_matmul(pool, &W, X, n, ldx, Y, ldy), 0);
			for (int i = 0; i < n; i++) {
				quant_act_round(t, X + (size_t)i * ldx, xr, n_in);
				if (quant_is_weight(t))
					quant_act_row(quant_act_type(t), X + (size_t)i * ldx, xq, n_in);
				for (uint32_t j = 0; j < n_out; j++) {
					double ref = 0;
					if (quant_is_weight(t)) /* the integer definition */
						ref = quant_dot_ref(t, (uint8_t *)wd + j * W.row_size,
						        xq, n_in);
					else
						for (uint32_t c = 0; c < n_in; c++)
							ref += (double)xr[c] * wc[j * n_in + c];
					ck_assert_msg(fabs(Y[i * ldy + j] - ref) < 1e-4,
					        "type %s n %d: [%d,%u] %g vs %g", dtype_name(t), n,
					        i, j, Y[i * ldy + j], ref);
				}
			}
			free(xr);
			free(xq);
			free(X);
			free(Y);
		}
		pool_free(pool);
	}
	free(wf);
	free(wc);
	free(wd);
}
END_TEST

/* A token's product has the same bits whatever else is in the call: the
 * rows of one call with n tokens against each token alone, and a range
 * of weight rows against the whole matrix (every type, n on both sides of
 * the one-row-at-a-time limit, 2 threads against 1; the block-quantised
 * types below MM_QUANT_PANEL_N rows, where they take the integer path). */
START_TEST(matmul_is_batch_invariant)
{
	static const enum dtype types[] = { DTYPE_F32, DTYPE_F16,
		DTYPE_BF16, DTYPE_Q8_0, DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0,
		DTYPE_Q5_1, DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K,
		DTYPE_Q6_K };
	static const int ns[] = { 4, 13, MM_QUANT_PANEL_N - 1, 40 };
	enum dtype t = types[_i];
	uint32_t n_in = quant_is_weight(t) ? 512 : 150, n_out = 203;
	struct tmat W = { .type = t, .n_in = n_in, .n_out = n_out };
	float *wf = malloc((size_t)n_in * 4);
	struct pool *pool;

	W.row_size = dtype_row_size(t, n_in);
	void *wd = malloc(W.row_size * n_out);
	W.data = wd;
	for (uint32_t r = 0; r < n_out; r++) {
		fill(wf, n_in, 0.5f);
		ck_assert_int_eq(dtype_row_from_f32(t, wf, (uint8_t *)wd + r * W.row_size,
		                         n_in), 0);
	}
	ck_assert_int_eq(pool_new(&pool, 2), 0);
	for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
		int n = ns[k];
		if (quant_is_weight(t) && n >= MM_QUANT_PANEL_N)
			continue; /* may take panels: float sums, not the integer path's */
		float *X = malloc((size_t)n * n_in * 4), *Y = malloc((size_t)n * n_out * 4);
		float *y1 = malloc((size_t)n_out * 4);
		fill(X, (size_t)n * n_in, 1.0f);
		ck_assert_int_eq(op_matmul(pool, &W, X, n, (int)n_in, Y, (int)n_out), 0);
		for (int i = 0; i < n; i++) {
			ck_assert_int_eq(op_matmul_rows(&W, 0, n_out, X + (size_t)i * n_in, 1,
			                         (int)n_in, y1, (int)n_out), 0);
			ck_assert_msg(memcmp(y1, Y + (size_t)i * n_out, n_out * 4) == 0,
			        "%s: token %d of %d differs from the token alone", dtype_name(t), i, n);
			/* rows 5 .. 190 alone (not aligned to any tile) */
			memset(y1, 0, n_out * 4);
			ck_assert_int_eq(op_matmul_rows(&W, 5, 191, X + (size_t)i * n_in, 1,
			                         (int)n_in, y1, (int)n_out), 0);
			ck_assert(memcmp(y1 + 5, Y + (size_t)i * n_out + 5, 186 * 4) == 0);
		}
		free(X);
		free(Y);
		free(y1);
	}
	pool_free(pool);
	free(wf);
	free(wd);
}
END_TEST

/* Decode attention of n_rep query heads sharing one key/value head, with
 * an F32 and an F16 cache, against a double loop over the cached values
 * (as stored: F16-rounded for the F16 cache); head sizes with and without
 * a vector tail. */
START_TEST(decode_attention_matches_reference)
{
	enum dtype kv = _i % 2 ? DTYPE_F16 : DTYPE_F32;
	int hd = _i < 2 ? 64 : 40, n_rep = 4, P = 77, ldk = 3 * hd; /* 3 kv heads */
	size_t es = kv == DTYPE_F16 ? 2 : 4;
	float *Q = malloc((size_t)n_rep * hd * 4), *O = malloc((size_t)n_rep * hd * 4);
	float *kf = malloc((size_t)P * ldk * 4), *vf = malloc((size_t)P * ldk * 4);
	float *s = malloc((size_t)n_rep * P * 4);
	uint8_t *K = malloc((size_t)P * ldk * es), *V = malloc((size_t)P * ldk * es);

	fill(Q, (size_t)n_rep * hd, 2.0f);
	fill(kf, (size_t)P * ldk, 2.0f);
	fill(vf, (size_t)P * ldk, 1.0f);
	/* store, then read back what the cache holds */
	ck_assert_int_eq(dtype_row_from_f32(kv, kf, K, (size_t)P * ldk), 0);
	ck_assert_int_eq(dtype_row_from_f32(kv, vf, V, (size_t)P * ldk), 0);
	ck_assert_int_eq(dtype_row_to_f32(kv, K, kf, (size_t)P * ldk), 0);
	ck_assert_int_eq(dtype_row_to_f32(kv, V, vf, (size_t)P * ldk), 0);
	/* the middle kv head */
	op_attn_decode(Q, n_rep, K + hd * es, V + hd * es, kv, (size_t)ldk, P, hd, O, s);
	for (int r = 0; r < n_rep; r++) {
		double sc[128], mx = -1e300, sum = 0;
		for (int j = 0; j < P; j++) {
			double d = 0;
			for (int c = 0; c < hd; c++)
				d += (double)Q[r * hd + c] * kf[j * ldk + hd + c];
			sc[j] = d / sqrt(hd);
			if (sc[j] > mx)
				mx = sc[j];
		}
		for (int j = 0; j < P; j++)
			sum += sc[j] = exp(sc[j] - mx);
		for (int c = 0; c < hd; c++) {
			double o = 0;
			for (int j = 0; j < P; j++)
				o += sc[j] / sum * vf[j * ldk + hd + c];
			ck_assert_msg(fabs(O[r * hd + c] - o) < 1e-5, "%s hd %d: head %d [%d] %g vs %g",
			        dtype_name(kv), hd, r, c, O[r * hd + c], o);
		}
	}
	free(Q);
	free(O);
	free(kf);
	free(vf);
	free(s);
	free(K);
	free(V);
}
END_TEST

static void
count_hits(void *ctx, int ith, int nth)
{
	if (nth == 4)
		((int *)ctx)[ith]++;
}

/* Several matrices in one pool round: row ranges split across matrix
 * boundaries must land in the right outputs. */
START_TEST(matmul_multi_equals_separate_products)
{
	uint32_t n_in = 64, outs[3] = { 40, 300, 7 };
	int n = 5;
	struct tmat W[3];
	float *wd[3], *Y[3], *R[3];
	float *X = malloc((size_t)n * n_in * 4);
	struct pool *pool;

	fill(X, (size_t)n * n_in, 1.0f);
	for (int m = 0; m < 3; m++) {
		wd[m] = malloc((size_t)outs[m] * n_in * 4);
		fill(wd[m], (size_t)outs[m] * n_in, 0.5f);
		W[m] = (struct tmat){ DTYPE_F32, n_in, outs[m], n_in * 4, wd[m] };
		Y[m] = malloc((size_t)n * outs[m] * 4);
		R[m] = malloc((size_t)n * outs[m] * 4);
	}
	ck_assert_int_eq(pool_new(&pool, 2), 0);
	const struct tmat *Wp[3] = { &W[0], &W[1], &W[2] };
	int ldy[3] = { (int)outs[0], (int)outs[1], (int)outs[2] };
	ck_assert_int_eq(op_matmul_multi(pool, 3, Wp, X, n, (int)n_in, Y, ldy), 0);
	for (int m = 0; m < 3; m++) {
		ck_assert_int_eq(op_matmul_rows(&W[m], 0, outs[m], X, n, (int)n_in, R[m], ldy[m]), 0);
		for (size_t i = 0; i < (size_t)n * outs[m]; i++)
			ck_assert_float_eq_tol(Y[m][i], R[m][i], 1e-5);
		free(wd[m]);
		free(Y[m]);
		free(R[m]);
	}
	free(X);
	pool_free(pool);
}
END_TEST

START_TEST(pool_runs_every_thread_once)
{
	struct pool *p;
	int hits[4];

	ck_assert_int_eq(pool_new(&p, 4), 0);
	memset(hits, 0, sizeof(hits));
	for (int r = 0; r < 1000; r++)
		pool_run(p, count_hits, hits);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(hits[i], 1000);
	pool_free(p);
	long lo, hi, total = 0;
	for (int i = 0; i < 3; i++) {
		pool_split(1000, i, 3, 16, &lo, &hi);
		ck_assert_int_eq(lo % 16, 0);
		total += hi - lo;
	}
	ck_assert_int_eq(total, 1000);
}
END_TEST

/* The in-process expert backend against a naive SwiGLU loop, on the
 * Mixtral test model's layer 1 with hand-made routing. */
START_TEST(local_experts_match_naive_swiglu)
{
	struct model *m;
	struct moe_backend *be;
	struct pool *pool;
	char err[256];
	ck_assert_msg(model_load(&m, tu_data("mixtral-tiny-f32.gguf"), err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(pool_new(&pool, 2), 0);
	ck_assert_int_eq(moe_local_new(&be, m, pool), 0);
	uint32_t d = m->hp.n_embd, ff = m->hp.n_ff_exp, T = 5;
	float *x = malloc(T * d * 4), *out = malloc(T * d * 4);
	uint32_t off[6] = { 0, 2, 3, 3, 5, 8 };
	int32_t ex[8] = { 1, 6, 6, 0, 7, 2, 6, 1 };
	float w[8] = { 0.7f, 0.3f, 1.0f, 0.25f, 0.5f, 0.1f, 0.2f, 0.3f };
	struct moe_assign a = { T, off, ex, w };
	fill(x, T * d, 1.0f);
	ck_assert_int_eq(be->run(be, 1, x, &a, out), 0);
	float *wg = malloc(ff * d * 4), *wu = malloc(ff * d * 4), *wdn = malloc(d * ff * 4);
	for (uint32_t t = 0; t < T; t++) {
		double ref[256] = { 0 };
		for (uint32_t i = off[t]; i < off[t + 1]; i++) {
			struct tmat g = model_expert(&m->layers[1], &m->hp, MODEL_EXP_GATE, (uint32_t)ex[i]);
			struct tmat u = model_expert(&m->layers[1], &m->hp, MODEL_EXP_UP, (uint32_t)ex[i]);
			struct tmat dn = model_expert(&m->layers[1], &m->hp, MODEL_EXP_DOWN, (uint32_t)ex[i]);
			double h[512];
			for (uint32_t r = 0; r < ff; r++) {
				tmat_row_f32(&g, r, wg);
				tmat_row_f32(&u, r, wu);
				double gg = 0, uu = 0;
				for (uint32_t c = 0; c < d; c++) {
					gg += (double)wg[c] * x[t * d + c];
					uu += (double)wu[c] * x[t * d + c];
				}
				h[r] = gg / (1 + exp(-gg)) * uu;
			}
			for (uint32_t r = 0; r < d; r++) {
				tmat_row_f32(&dn, r, wdn);
				double y = 0;
				for (uint32_t c = 0; c < ff; c++)
					y += wdn[c] * h[c];
				ref[r] += w[i] * y;
			}
		}
		for (uint32_t r = 0; r < d; r++)
			ck_assert_double_eq_tol(out[t * d + r], ref[r], 1e-5);
	}
	/* token 2 has no experts: its output is zero */
	for (uint32_t r = 0; r < d; r++)
		ck_assert_float_eq(out[2 * d + r], 0.0f);
	/* an expert id out of range is refused */
	ex[0] = 8;
	ck_assert_int_eq(be->run(be, 1, x, &a, out), EPMOE_EINVAL);
	free(wg);
	free(wu);
	free(wdn);
	free(x);
	free(out);
	be->free(be);
	pool_free(pool);
	model_free(m);
}
END_TEST

/* The grouped expert path (moe_ffn_run, shared by local mode and the
 * worker): an entry's contribution has the same bits whether it runs with
 * 1300 others (two slices, groups cut at the slice edge, repeated
 * experts, rows read in any order) or alone; bad work is refused with
 * nothing written. */
START_TEST(grouped_ffn_entries_are_independent)
{
	struct model *m;
	struct pool *pool;
	struct moe_ffn *f;
	char err[256];
	ck_assert_msg(model_load(&m, tu_data("mixtral-tiny-f32.gguf"), err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(pool_new(&pool, 2), 0);
	ck_assert_int_eq(moe_ffn_new(&f, m, pool), 0);
	enum { NG = 11, NIN = 50, N = 1300 };
	uint32_t d = m->hp.n_embd, E = m->hp.n_expert;
	uint32_t expert[NG], count[NG], in_row[N], out_row[N], sum = 0;
	float weight[N];
	float *x = malloc((size_t)NIN * d * 4), *out = malloc((size_t)N * d * 4);
	float *one = malloc((size_t)d * 4);
	fill(x, (size_t)NIN * d, 1.0f);
	for (uint32_t g = 0; g < NG; g++) {
		expert[g] = (g * 5) % E;
		count[g] = g + 1 < NG ? 1 + (g * 37) % 200 : N - sum;
		sum += count[g];
	}
	ck_assert_uint_eq(sum, N);
	for (uint32_t j = 0; j < N; j++) {
		in_row[j] = (j * 7) % NIN;
		out_row[j] = j; /* one entry per output row: the rows are the results */
		weight[j] = 0.5f + (float)(j % 3);
	}
	struct moe_work w = { NG, expert, count, in_row, out_row, weight, NIN, N, NULL };
	ck_assert_int_eq(moe_ffn_run(f, 0, x, &w, out), 0);
	for (uint32_t g = 0, j0 = 0; g < NG; j0 += count[g], g++) {
		for (uint32_t j = j0; j < j0 + count[g]; j += 97) {
			uint32_t c1 = 1, o1 = 0;
			struct moe_work w1 = { 1, &expert[g], &c1, &in_row[j], &o1, &weight[j], NIN, 1, NULL };
			ck_assert_int_eq(moe_ffn_run(f, 0, x, &w1, one), 0);
			ck_assert_msg(memcmp(one, out + (size_t)j * d, d * 4) == 0,
			        "entry %u (group %u) differs from the entry alone", j, g);
		}
	}
	/* bad work: an expert, an input row, an output row out of range */
	memset(out, 0x55, (size_t)d * 4);
	expert[3] = E;
	ck_assert_int_eq(moe_ffn_run(f, 0, x, &w, out), EPMOE_EINVAL);
	expert[3] = 0;
	in_row[7] = NIN;
	ck_assert_int_eq(moe_ffn_run(f, 0, x, &w, out), EPMOE_EINVAL);
	in_row[7] = 0;
	out_row[9] = N;
	ck_assert_int_eq(moe_ffn_run(f, 0, x, &w, out), EPMOE_EINVAL);
	ck_assert_int_eq(moe_ffn_run(f, m->hp.n_layer, x, &w, out), EPMOE_EINVAL);
	for (uint32_t k = 0; k < d; k++)
		ck_assert_uint_eq(((uint32_t *)out)[k], 0x55555555u);
	free(x);
	free(out);
	free(one);
	moe_ffn_free(f);
	pool_free(pool);
	model_free(m);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("ops");
	TCase *tc = tcase_create("kernels");

	op_blas_init();
	tcase_set_timeout(tc, 60); /* reference loops in double on a shared machine */
	tcase_add_test(tc, rmsnorm_matches_reference);
	tcase_add_loop_test(tc, rope_rotates_the_right_pairs, 0, 2);
	tcase_add_test(tc, softmax_is_stable_and_normalised);
	tcase_add_test(tc, swiglu_matches_reference);
	tcase_add_loop_test(tc, attention_matches_reference, 0, 2);
	tcase_add_loop_test(tc, matmul_matches_reference_for_every_type, 0, 13);
	tcase_add_loop_test(tc, matmul_is_batch_invariant, 0, 13);
	tcase_add_loop_test(tc, decode_attention_matches_reference, 0, 4);
	tcase_add_test(tc, matmul_multi_equals_separate_products);
	tcase_add_test(tc, pool_runs_every_thread_once);
	tcase_add_test(tc, local_experts_match_naive_swiglu);
	tcase_add_test(tc, grouped_ffn_entries_are_independent);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
