/* Routing policies: the worked examples of shared/design/routing.md
 * (exact index sets, weights within 1e-4) and properties of every policy,
 * the OT solvers, spec parsing and routing groups. */
#include <cJSON.h>
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "route.h"
#include "testutil.h"

#define TOL 1e-4

/* routing.md §6.5 / §8 (4 x 3) and §4.3 (6 x 3) */
static const float S4[12] = {
	2.0f, 1.0f, 0.1f, 1.5f, 0.3f, 0.2f, 0.2f, 3.0f, 0.1f, 1.6f, 1.4f, 1.3f
};
static const float S6[18] = {
	2.0f, 1.0f, 0.1f, 1.5f, 0.3f, 0.2f, 0.2f, 3.0f, 0.1f,
	1.6f, 1.4f, 1.3f, 1.2f, 0.2f, 0.9f, 0.9f, 0.1f, 1.0f
};

/* ---- helpers ------------------------------------------------------------ */

static struct route_policy *
mkpol(const char *spec, int E, int k, int renorm, int layers)
{
	struct route_cfg cfg;
	struct route_model m = { E, k, renorm, layers };
	struct route_policy *p = NULL;
	char err[256];

	ck_assert_msg(route_parse(spec, &cfg, err, sizeof(err)) == 0,
	    "parse %s: %s", spec, err);
	ck_assert_msg(route_policy_new(&p, &cfg, &m, err, sizeof(err)) == 0,
	    "new %s: %s", spec, err);
	return p;
}

/* Routes S [T, E] once with a fresh policy (groups NULL: one prefill). */
static void
route1(const char *spec, const float *S, int T, int E, int k, int renorm,
    const struct route_group *g, int ng, struct route_out *o,
    struct route_info *in)
{
	struct route_policy *p = mkpol(spec, E, k, renorm, 1);

	ck_assert_int_eq(route_run(p, 0, 0, S, (uint32_t)T, g, ng, o, in), 0);
	route_policy_free(p);
}

/* Token t has exactly the experts exp[0..n-1] in this order, with the
 * given weights. */
static void
expect_tok(const struct route_out *o, int t, int n, const int *exp,
    const double *w)
{
	uint32_t a = o->off[t];

	ck_assert_msg((int)(o->off[t + 1] - a) == n,
	    "token %d: %u experts, expected %d", t, o->off[t + 1] - a, n);
	for (int i = 0; i < n; i++) {
		ck_assert_msg(o->expert[a + i] == exp[i],
		    "token %d pair %d: expert %d, expected %d", t, i,
		    o->expert[a + i], exp[i]);
		if (w != NULL)
			ck_assert_msg(fabs(o->weight[a + i] - w[i]) < TOL,
			    "token %d expert %d: weight %.6f, expected %.6f",
			    t, exp[i], o->weight[a + i], w[i]);
	}
}

/* Weight of (t, e), or -1 if the pair is absent. */
static double
pair_w(const struct route_out *o, int t, int e)
{
	for (uint32_t i = o->off[t]; i < o->off[t + 1]; i++)
		if (o->expert[i] == e)
			return o->weight[i];
	return -1.0;
}

/* The token's experts as a bit mask (E <= 64). */
static uint64_t
tok_mask(const struct route_out *o, int t)
{
	uint64_t m = 0;

	for (uint32_t i = o->off[t]; i < o->off[t + 1]; i++)
		m |= 1ULL << o->expert[i];
	return m;
}

static uint64_t rng_s = 88172645463325252ULL;

static double
urand(void)
{
	rng_s ^= rng_s << 13;
	rng_s ^= rng_s >> 7;
	rng_s ^= rng_s << 17;
	return (double)(rng_s >> 11) / 9007199254740992.0;
}

static double
nrand(void)
{
	double u1 = urand() + 1e-12, u2 = urand();

	return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static float *
rand_logits(int T, int E, double scale)
{
	float *S = malloc((size_t)T * E * sizeof(float));

	ck_assert_ptr_nonnull(S);
	for (int i = 0; i < T * E; i++)
		S[i] = (float)(scale * nrand());
	return S;
}

static void
plan_sums(const float *P, int T, int E, double *rows, double *cols)
{
	for (int e = 0; e < E; e++)
		cols[e] = 0.0;
	for (int t = 0; t < T; t++) {
		rows[t] = 0.0;
		for (int e = 0; e < E; e++) {
			rows[t] += P[t * E + e];
			cols[e] += P[t * E + e];
		}
	}
}

static void
expect_plan(const float *P, const double *want, int n, double tol)
{
	for (int i = 0; i < n; i++)
		ck_assert_msg(fabs(P[i] - want[i]) < tol,
		    "plan[%d][%d] = %.5f, expected %.4f", i / 3, i % 3, P[i],
		    want[i]);
}

/* ---- §8.1 native / topk ----------------------------------------------- */

START_TEST(native_matches_8_1_full_softmax_weights)
{
	struct route_out o;
	struct route_info in;
	static const int e01[2] = { 0, 1 }, e10[2] = { 1, 0 };
	static const double w0[2] = { .6590, .2424 }, w1[2] = { .6354, .1914 };
	static const double w2[2] = { .8962, .0545 }, w3[2] = { .3907, .3199 };

	route_out_init(&o);
	route1("native", S4, 4, 3, 2, 0, NULL, 0, &o, &in);
	expect_tok(&o, 0, 2, e01, w0);
	expect_tok(&o, 1, 2, e01, w1);
	expect_tok(&o, 2, 2, e10, w2);
	expect_tok(&o, 3, 2, e01, w3);
	ck_assert_uint_eq(in.n_pairs, 8);
	ck_assert_ptr_eq(in.load, o.load);
	ck_assert_uint_eq(o.load[0], 4);
	ck_assert_uint_eq(o.load[1], 4);
	ck_assert_uint_eq(o.load[2], 0);
	ck_assert_float_eq_tol(in.maxvio, 0.5f, 1e-6f);
	ck_assert_float_eq_tol(in.experts_per_token, 2.0f, 1e-6f);
	route_out_fini(&o);
}
END_TEST

START_TEST(native_matches_8_1_renormalised_weights)
{
	struct route_out o;
	static const int e01[2] = { 0, 1 }, e10[2] = { 1, 0 };
	static const double w0[2] = { .7311, .2689 }, w1[2] = { .7685, .2315 };
	static const double w2[2] = { .9427, .0573 }, w3[2] = { .5498, .4502 };

	route_out_init(&o);
	route1("native", S4, 4, 3, 2, 1, NULL, 0, &o, NULL);
	expect_tok(&o, 0, 2, e01, w0);
	expect_tok(&o, 1, 2, e01, w1);
	expect_tok(&o, 2, 2, e10, w2);
	expect_tok(&o, 3, 2, e01, w3);
	route_out_fini(&o);
}
END_TEST

/* Naive reference of the native gate in double. */
static void
ref_native(const float *x, int E, int k, int renorm, int *sel, double *w)
{
	double m = -INFINITY, s = 0.0, ss = 0.0;
	int used[256] = { 0 };

	for (int j = 0; j < k; j++) {
		int b = -1;

		for (int e = 0; e < E; e++)
			if (!used[e] && (b < 0 || x[e] > x[b]))
				b = e;
		used[b] = 1;
		sel[j] = b;
	}
	for (int e = 0; e < E; e++)
		m = fmax(m, x[e]);
	for (int e = 0; e < E; e++)
		s += exp(x[e] - m);
	for (int j = 0; j < k; j++)
		ss += exp(x[sel[j]] - m);
	for (int j = 0; j < k; j++)
		w[j] = exp(x[sel[j]] - m) / (renorm ? ss : s);
}

START_TEST(native_matches_naive_reference_on_random_logits)
{
	static const int Es[] = { 1, 3, 8, 60, 128 }, ks[] = { 1, 2, 4, 8 };
	struct route_out o;

	route_out_init(&o);
	for (size_t a = 0; a < sizeof(Es) / sizeof(*Es); a++)
		for (size_t b = 0; b < sizeof(ks) / sizeof(*ks); b++)
			for (int rn = 0; rn < 2; rn++) {
				int E = Es[a], k = ks[b], T = 33;
				float *S;

				if (k > E)
					continue;
				S = rand_logits(T, E, 3.0);
				/* some exact ties */
				S[5] = S[E > 1 ? 6 : 5];
				route1("native", S, T, E, k, rn, NULL, 0, &o,
				    NULL);
				for (int t = 0; t < T; t++) {
					int sel[8];
					double w[8];

					ref_native(S + t * E, E, k, rn, sel, w);
					expect_tok(&o, t, k, sel, w);
				}
				free(S);
			}
	route_out_fini(&o);
}
END_TEST

START_TEST(topk_with_native_settings_equals_native)
{
	struct route_out a, b;
	float *S = rand_logits(64, 60, 2.0);

	route_out_init(&a);
	route_out_init(&b);
	for (int rn = 0; rn < 2; rn++) {
		char spec[64];

		snprintf(spec, sizeof(spec), "topk:k=4,renorm=%d", rn);
		route1("native", S, 64, 60, 4, rn, NULL, 0, &a, NULL);
		route1(spec, S, 64, 60, 4, rn, NULL, 0, &b, NULL);
		ck_assert_mem_eq(a.off, b.off, 65 * sizeof(uint32_t));
		ck_assert_mem_eq(a.expert, b.expert, 256 * sizeof(int32_t));
		ck_assert_mem_eq(a.weight, b.weight, 256 * sizeof(float));
		/* topk's own defaults are the model's */
		route1("topk", S, 64, 60, 4, rn, NULL, 0, &b, NULL);
		ck_assert_mem_eq(a.weight, b.weight, 256 * sizeof(float));
	}
	/* a smaller k is a prefix of the native ranking */
	route1("topk:k=1,renorm=1", S, 64, 60, 4, 0, NULL, 0, &b, NULL);
	for (int t = 0; t < 64; t++) {
		ck_assert_int_eq(b.expert[t], a.expert[4 * t]);
		ck_assert_float_eq(b.weight[t], 1.0f);
	}
	free(S);
	route_out_fini(&a);
	route_out_fini(&b);
}
END_TEST

START_TEST(topk_breaks_ties_to_the_lower_index)
{
	static const float x[6] = { 1, 3, 3, 2, 3, 2 };
	int32_t idx[4];

	route_topk(x, 6, 4, idx);
	ck_assert_int_eq(idx[0], 1);
	ck_assert_int_eq(idx[1], 2);
	ck_assert_int_eq(idx[2], 4);
	ck_assert_int_eq(idx[3], 3);
	route_topk(x, 6, 1, idx);
	ck_assert_int_eq(idx[0], 1);
}
END_TEST

static int
cmp_desc(const void *a, const void *b)
{
	const float *x = a, *y = b;

	return (x[0] < y[0]) - (x[0] > y[0]) ?: (x[1] > y[1]) - (x[1] < y[1]);
}

START_TEST(select_keeps_the_m_best_by_value_then_index)
{
	for (int rep = 0; rep < 200; rep++) {
		int n = 1 + (int)(urand() * 300), m = (int)(urand() * (n + 1));
		float *v = malloc(n * sizeof(float)), (*ref)[2];
		int32_t *ix = malloc(n * sizeof(int32_t));
		char *in = calloc(n, 1);

		ref = malloc(n * sizeof(*ref));
		for (int i = 0; i < n; i++) {
			/* few distinct values: many ties */
			v[i] = (float)(int)(urand() * 5);
			ix[i] = i;
			ref[i][0] = v[i];
			ref[i][1] = (float)i;
		}
		qsort(ref, n, sizeof(*ref), cmp_desc);
		route_select(v, ix, n, m);
		for (int i = 0; i < m; i++)
			in[ix[i]] = 1;
		for (int i = 0; i < m; i++)
			ck_assert_msg(in[(int)ref[i][1]], "n=%d m=%d: %d missing",
			    n, m, (int)ref[i][1]);
		for (int i = 0; i < n; i++)
			ck_assert_float_eq(v[i], (float)(int)v[i]);
		free(v);
		free(ix);
		free(in);
		free(ref);
	}
}
END_TEST

START_TEST(expf_is_accurate_and_finite)
{
	for (float x = -87.0f; x < 88.0f; x += 0.0137f) {
		double r = exp((double)x), g = route_expf(x);

		ck_assert_msg(fabs(g - r) <= 4e-7 * r, "exp(%g)", (double)x);
	}
	ck_assert_float_eq(route_expf(-100.0f), 0.0f);
	ck_assert_float_eq(route_expf(-1e30f), 0.0f);
	ck_assert(isfinite(route_expf(1000.0f)));
	ck_assert_float_eq(route_expf(0.0f), 1.0f);
}
END_TEST

/* ---- §8.2 capacity --------------------------------------------------------- */

START_TEST(capacity_switch_top1_drops_as_8_2)
{
	struct route_out o;
	struct route_info in;
	static const char *specs[] = { "capacity:k=1,factor=1",
		"capacity:k=1,factor=1,drop=probs" };
	static const int e0[1] = { 0 }, e1[1] = { 1 };
	static const double w0[1] = { .6590 }, w1[1] = { .6354 };
	static const double w2[1] = { .8962 };

	route_out_init(&o);
	for (int i = 0; i < 2; i++) {
		route1(specs[i], S4, 4, 3, 2, 0, NULL, 0, &o, &in);
		expect_tok(&o, 0, 1, e0, w0);
		expect_tok(&o, 1, 1, e0, w1);
		expect_tok(&o, 2, 1, e1, w2);
		expect_tok(&o, 3, 0, NULL, NULL);
		ck_assert_uint_eq(in.n_dropped, 1);
		ck_assert_uint_eq(o.load[0], 2);
		ck_assert_uint_eq(o.load[1], 1);
		ck_assert_uint_eq(o.load[2], 0);
	}
	route1("capacity:k=1,factor=2", S4, 4, 3, 2, 0, NULL, 0, &o, &in);
	ck_assert_uint_eq(in.n_dropped, 0);
	ck_assert_uint_eq(o.load[0], 3);
	ck_assert_uint_eq(o.load[1], 1);
	route_out_fini(&o);
}
END_TEST

START_TEST(capacity_gshard_order_top2_as_8_2)
{
	struct route_out o;
	struct route_info in;
	static const int e01[2] = { 0, 1 }, e1[1] = { 1 }, e0[1] = { 0 };
	static const double w0[2] = { .6590, .2424 }, w1[2] = { .6354, .1914 };
	static const double w2[1] = { .8962 }, w3[1] = { .3907 };

	route_out_init(&o);
	route1("capacity:factor=1", S4, 4, 3, 2, 0, NULL, 0, &o, &in);
	expect_tok(&o, 0, 2, e01, w0);
	expect_tok(&o, 1, 2, e01, w1);
	expect_tok(&o, 2, 1, e1, w2);   /* 2nd choice e0 dropped: full */
	expect_tok(&o, 3, 1, e0, w3);   /* 2nd choice e1 dropped */
	ck_assert_uint_eq(in.n_dropped, 2);
	ck_assert_uint_eq(o.load[0], 3);
	ck_assert_uint_eq(o.load[1], 3);
	ck_assert_uint_eq(o.load[2], 0);
	route_out_fini(&o);
}
END_TEST

START_TEST(capacity_probs_keeps_each_experts_largest_weights)
{
	/* every token's top-1 is e0; capacity ceil(4/2 * 0.5) = 1 */
	static const float S[8] = { 1.0f, 0.0f, 3.0f, 0.0f, 2.0f, 0.0f,
		0.5f, 0.0f };
	struct route_out o;
	struct route_info in;
	static const int e0[1] = { 0 };

	route_out_init(&o);
	route1("capacity:k=1,factor=0.5,drop=probs", S, 4, 2, 1, 0, NULL, 0,
	    &o, &in);
	expect_tok(&o, 0, 0, NULL, NULL);
	expect_tok(&o, 1, 1, e0, NULL);
	expect_tok(&o, 2, 0, NULL, NULL);
	ck_assert_uint_eq(in.n_dropped, 3);
	route1("capacity:k=1,factor=0.5", S, 4, 2, 1, 0, NULL, 0, &o, &in);
	expect_tok(&o, 0, 1, e0, NULL);
	expect_tok(&o, 1, 0, NULL, NULL);
	/* min capacity overrides the factor; factor 0 = no capacity */
	route1("capacity:k=1,factor=0.5,min=3", S, 4, 2, 1, 0, NULL, 0, &o,
	    &in);
	ck_assert_uint_eq(in.n_dropped, 1);
	route1("capacity:k=1,factor=0", S, 4, 2, 1, 0, NULL, 0, &o, &in);
	ck_assert_uint_eq(in.n_dropped, 0);
	ck_assert_uint_eq(o.load[0], 4);
	route_out_fini(&o);
}
END_TEST

/* ---- §8.3 expert choice ------------------------------------------------- */

START_TEST(expert_choice_matches_8_3)
{
	struct route_out o;
	struct route_info in;

	route_out_init(&o);
	route1("expert_choice:c=1.5", S4, 4, 3, 2, 0, NULL, 0, &o, &in);
	ck_assert_uint_eq(tok_mask(&o, 0), 0x1);
	ck_assert_uint_eq(tok_mask(&o, 1), 0x5);
	ck_assert_uint_eq(tok_mask(&o, 2), 0x2);
	ck_assert_uint_eq(tok_mask(&o, 3), 0x6);
	ck_assert(fabs(pair_w(&o, 0, 0) - .6590) < TOL);
	ck_assert(fabs(pair_w(&o, 1, 0) - .6354) < TOL);
	ck_assert(fabs(pair_w(&o, 2, 1) - .8962) < TOL);
	ck_assert(fabs(pair_w(&o, 3, 1) - .3199) < TOL);
	ck_assert(fabs(pair_w(&o, 3, 2) - .2894) < TOL);
	ck_assert(fabs(pair_w(&o, 1, 2) - .1732) < TOL);
	ck_assert_float_eq_tol(in.experts_per_token, 1.5f, 1e-6f);
	ck_assert_float_eq_tol(in.maxvio, 0.0f, 1e-6f);
	route_out_fini(&o);
}
END_TEST

START_TEST(expert_choice_gives_each_expert_exactly_its_capacity)
{
	struct route_out o;
	float *S = rand_logits(37, 8, 2.0);

	route_out_init(&o);
	/* ceil(37 * 2 / 8) = 10 */
	route1("expert_choice", S, 37, 8, 2, 0, NULL, 0, &o, NULL);
	for (int e = 0; e < 8; e++)
		ck_assert_uint_eq(o.load[e], 10);
	/* c so large that every expert takes every token */
	route1("expert_choice:c=100", S, 37, 8, 2, 0, NULL, 0, &o, NULL);
	for (int e = 0; e < 8; e++)
		ck_assert_uint_eq(o.load[e], 37);
	free(S);
	route_out_fini(&o);
}
END_TEST

/* ---- §0.1 Sinkhorn, §4.3, §5.5 -------------------------------------------- */

START_TEST(sinkhorn_plans_meet_marginals_on_random_matrices)
{
	struct route_ot w;
	struct route_ot_result res;

	route_ot_init(&w);
	for (int rep = 0; rep < 24; rep++) {
		int T = 2 + (int)(urand() * 200), E = 1 + (int)(urand() * 70);
		float xi = rep % 3 == 0 ? 0.3f : 1.0f;
		float *C = rand_logits(T, E, 2.0);
		float *P = malloc((size_t)T * E * sizeof(float));
		double *rows = malloc(T * sizeof(double));
		double *cols = malloc(E * sizeof(double));
		float b = (float)T / (float)E;

		w.log_only = rep % 2;
		ck_assert_int_eq(route_sinkhorn(&w, C, T, E, xi, 1.0f, b, 500,
		    1e-5f, P, &res), 0);
		ck_assert_msg(res.converged, "T=%d E=%d: not converged", T, E);
		ck_assert_int_eq(res.log_domain, w.log_only);
		plan_sums(P, T, E, rows, cols);
		for (int t = 0; t < T; t++)
			ck_assert_msg(fabs(rows[t] - 1.0) < 1e-4,
			    "row %d sums to %g", t, rows[t]);
		for (int e = 0; e < E; e++)
			ck_assert_msg(fabs(cols[e] - b) < 2e-5 * b,
			    "T=%d E=%d col %d sums to %g, want %g", T, E, e,
			    cols[e], b);
		ck_assert(res.residual < 2e-5f);
		free(C);
		free(P);
		free(rows);
		free(cols);
	}
	route_ot_fini(&w);
}
END_TEST

START_TEST(sinkhorn_fast_and_log_paths_agree)
{
	struct route_ot w;
	struct route_ot_result r1, r2;
	float *C = rand_logits(100, 16, 3.0);
	float *P1 = malloc(1600 * sizeof(float)), *P2 = malloc(1600 * sizeof(float));

	route_ot_init(&w);
	ck_assert_int_eq(route_sinkhorn(&w, C, 100, 16, 0.7f, 1.0f, 6.25f, 7,
	    0.0f, P1, &r1), 0);
	w.log_only = 1;
	ck_assert_int_eq(route_sinkhorn(&w, C, 100, 16, 0.7f, 1.0f, 6.25f, 7,
	    0.0f, P2, &r2), 0);
	ck_assert_int_eq(r1.iters, 7);
	ck_assert_int_eq(r2.iters, 7);
	ck_assert_int_eq(r1.log_domain, 0);
	ck_assert_int_eq(r2.log_domain, 1);
	for (int i = 0; i < 1600; i++)
		ck_assert(fabs(P1[i] - P2[i]) < 1e-5 + 1e-4 * P2[i]);
	free(C);
	free(P1);
	free(P2);
	route_ot_fini(&w);
}
END_TEST

START_TEST(sinkhorn_three_iterations_regression_5_5)
{
	struct route_ot w;
	struct route_ot_result res;
	float P[18];
	double rows[6], cols[3];
	static const double want[3] = { 2.2539, 1.4841, 2.2620 };

	route_ot_init(&w);
	for (int lo = 0; lo < 2; lo++) {
		w.log_only = lo;
		ck_assert_int_eq(route_sinkhorn(&w, S6, 6, 3, 0.5f, 1.0f, 2.0f, 3,
		    0.0f, P, &res), 0);
		ck_assert_int_eq(res.iters, 3);
		ck_assert_int_eq(res.converged, 0);
		plan_sums(P, 6, 3, rows, cols);
		for (int t = 0; t < 6; t++)
			ck_assert(fabs(rows[t] - 1.0) < 1e-5);
		for (int e = 0; e < 3; e++)
			ck_assert_msg(fabs(cols[e] - want[e]) < TOL,
			    "col %d = %.5f", e, cols[e]);
	}
	route_ot_fini(&w);
}
END_TEST

/* Megatron-LM's moe_utils.sinkhorn, in double: exp(cost), rows 1/T,
 * cols 1/E, tol 1e-4 on the mean change of d1. */
static void
megatron_sinkhorn(const float *S, int T, int E, double tol, double *out)
{
	double d0[64], d1[64], old[64], err = 1e9;
	int it = 0;

	for (int t = 0; t < T; t++)
		d0[t] = 1.0;
	for (int e = 0; e < E; e++)
		d1[e] = old[e] = 1.0;
	while (err > tol && it++ < 100000) {
		for (int t = 0; t < T; t++) {
			double s = 0.0;

			for (int e = 0; e < E; e++)
				s += d1[e] * exp(S[t * E + e]);
			d0[t] = (1.0 / T) / (s + 1e-8);
		}
		err = 0.0;
		for (int e = 0; e < E; e++) {
			double s = 0.0;

			for (int t = 0; t < T; t++)
				s += d0[t] * exp(S[t * E + e]);
			d1[e] = (1.0 / E) / (s + 1e-8);
			err += fabs(old[e] - d1[e]) / E;
			old[e] = d1[e];
		}
	}
	for (int t = 0; t < T; t++)
		for (int e = 0; e < E; e++)
			out[t * E + e] = d1[e] * exp(S[t * E + e]) * d0[t];
}

START_TEST(sinkhorn_xi1_equals_megatron_plan_times_T_4_3)
{
	static const double want[18] = {
		0.5599, 0.2746, 0.1655, 0.5155, 0.2070, 0.2776, 0.0405, 0.8871,
		0.0724, 0.2813, 0.3070, 0.4117, 0.3385, 0.1660, 0.4955, 0.2644,
		0.1583, 0.5773 };
	struct route_ot w;
	struct route_ot_result res;
	float P[18];
	double M[18];

	route_ot_init(&w);
	ck_assert_int_eq(route_sinkhorn(&w, S6, 6, 3, 1.0f, 1.0f, 2.0f, 100,
	    1e-6f, P, &res), 0);
	ck_assert(res.converged);
	expect_plan(P, want, 18, 1e-4);
	megatron_sinkhorn(S6, 6, 3, 1e-12, M);
	for (int i = 0; i < 18; i++)
		ck_assert(fabs(P[i] - 6.0 * M[i]) < 1e-4);
	route_ot_fini(&w);
}
END_TEST

START_TEST(sbase_top1_of_the_plan_matches_4_3)
{
	struct route_out o;
	static const int sel[6] = { 0, 0, 1, 2, 2, 2 };

	route_out_init(&o);
	route1("sinkhorn:k=1,tol=1e-6", S6, 6, 3, 1, 0, NULL, 0, &o, NULL);
	for (int t = 0; t < 6; t++) {
		/* k = 1, weights from the softmax of the logits */
		double s = 0.0, w;

		for (int e = 0; e < 3; e++)
			s += exp(S6[t * 3 + e]);
		w = exp(S6[t * 3 + sel[t]]) / s;
		expect_tok(&o, t, 1, &sel[t], &w);
	}
	ck_assert_uint_eq(o.load[0], 2);
	ck_assert_uint_eq(o.load[1], 1);
	ck_assert_uint_eq(o.load[2], 3);
	route_out_fini(&o);
}
END_TEST

START_TEST(ssr_plan_and_weights_match_5_5_xi_half)
{
	static const double want[18] = {
		0.6849, 0.2580, 0.0571, 0.6540, 0.1651, 0.1809, 0.0013, 0.9947,
		0.0040, 0.2037, 0.3801, 0.4162, 0.2924, 0.1101, 0.5975, 0.1637,
		0.0920, 0.7443 };
	static const int top1[6] = { 0, 0, 1, 2, 2, 2 };
	static const int e[6][2] = { { 0, 1 }, { 0, 2 }, { 1, 2 }, { 2, 1 },
		{ 2, 0 }, { 2, 0 } };
	static const double w[6][2] = { { .7264, .2736 }, { .7834, .2166 },
		{ .9960, .0040 }, { .5227, .4773 }, { .6714, .3286 },
		{ .8197, .1803 } };
	struct route_ot ws;
	struct route_ot_result res;
	struct route_out o;
	struct route_info in;
	float P[18];

	route_ot_init(&ws);
	ck_assert_int_eq(route_sinkhorn(&ws, S6, 6, 3, 0.5f, 1.0f, 2.0f, 100,
	    1e-6f, P, &res), 0);
	expect_plan(P, want, 18, 1e-4);
	ck_assert_int_le(res.iters, 20);
	route_ot_fini(&ws);

	route_out_init(&o);
	route1("ssr:k=1,xi=0.5,lambda=0,tol=1e-6", S6, 6, 3, 2, 0, NULL, 0, &o,
	    &in);
	for (int t = 0; t < 6; t++)
		expect_tok(&o, t, 1, &top1[t], NULL);
	ck_assert_int_eq(in.ot_ran, 1);
	route1("ssr:xi=0.5,lambda=0,tol=1e-6", S6, 6, 3, 2, 0, NULL, 0, &o,
	    &in);
	for (int t = 0; t < 6; t++)
		expect_tok(&o, t, 2, e[t], w[t]);
	ck_assert_uint_eq(o.load[0], 4);
	ck_assert_uint_eq(o.load[1], 3);
	ck_assert_uint_eq(o.load[2], 5);
	route_out_fini(&o);
}
END_TEST

START_TEST(ssr_softmax_cost_xi_005_matches_5_5)
{
	static const double want[18] = {
		0.9361, 0.0626, 0.0013, 0.9536, 0.0368, 0.0096, 0.0000, 1.0000,
		0.0000, 0.0122, 0.8201, 0.1677, 0.0941, 0.0651, 0.8408, 0.0041,
		0.0154, 0.9805 };
	static const int top1[6] = { 0, 0, 1, 1, 2, 2 };
	static const int e[6][2] = { { 0, 1 }, { 0, 1 }, { 1, 2 }, { 1, 2 },
		{ 2, 0 }, { 2, 1 } };
	static const double w[6][2] = { { .9373, .0627 }, { .9628, .0372 },
		{ 1.0, 0.0 }, { .8302, .1698 }, { .8994, .1006 },
		{ .9846, .0154 } };
	float C[18], P[18];
	struct route_ot ws;
	struct route_ot_result res;
	struct route_out o;

	for (int t = 0; t < 6; t++) {
		double s = 0.0;

		for (int j = 0; j < 3; j++)
			s += exp(S6[t * 3 + j]);
		for (int j = 0; j < 3; j++)
			C[t * 3 + j] = (float)(exp(S6[t * 3 + j]) / s);
	}
	route_ot_init(&ws);
	ck_assert_int_eq(route_sinkhorn(&ws, C, 6, 3, 0.05f, 1.0f, 2.0f, 500,
	    1e-6f, P, &res), 0);
	expect_plan(P, want, 18, 1e-4);
	route_ot_fini(&ws);

	route_out_init(&o);
	route1("ssr:k=1,xi=0.05,cost=softmax,p=1,tol=1e-6", S6, 6, 3, 2, 0,
	    NULL, 0, &o, NULL);
	for (int t = 0; t < 6; t++)
		expect_tok(&o, t, 1, &top1[t], NULL);
	for (int x = 0; x < 3; x++)
		ck_assert_uint_eq(o.load[x], 2);
	route1("ssr:xi=0.05,cost=softmax,p=1,tol=1e-6", S6, 6, 3, 2, 0, NULL, 0,
	    &o, NULL);
	for (int t = 0; t < 6; t++)
		expect_tok(&o, t, 2, e[t], w[t]);
	route_out_fini(&o);
}
END_TEST

START_TEST(sinkhorn_weights_are_the_softmax_over_the_selection_5_5_fmoe)
{
	static const int e[6][2] = { { 0, 1 }, { 0, 2 }, { 1, 2 }, { 2, 1 },
		{ 2, 0 }, { 2, 0 } };
	static const double w[6][2] = { { .7311, .2689 }, { .7858, .2142 },
		{ .9478, .0522 }, { .4750, .5250 }, { .4256, .5744 },
		{ .5250, .4750 } };
	struct route_out o;
	struct route_info in;

	route_out_init(&o);
	route1("sinkhorn:renorm=1,tol=1e-6", S6, 6, 3, 2, 0, NULL, 0, &o, &in);
	for (int t = 0; t < 6; t++)
		expect_tok(&o, t, 2, e[t], w[t]);
	ck_assert_int_eq(in.ot_ran, 1);
	ck_assert_uint_eq(in.ot_groups, 1);
	ck_assert_uint_gt(in.ot_iters, 0);
	/* renorm=0: the full-softmax probability (§4.2, Megatron k > 1) */
	route1("sinkhorn:renorm=0,tol=1e-6", S6, 6, 3, 2, 1, NULL, 0, &o, NULL);
	ck_assert(fabs(pair_w(&o, 0, 0) - .6590) < TOL);
	ck_assert(fabs(pair_w(&o, 0, 1) - .2424) < TOL);
	route_out_fini(&o);
}
END_TEST

/* ---- §0.2 capped OT ------------------------------------------------------ */

START_TEST(capped_plan_and_selection_match_0_2)
{
	static const double k1[18] = {
		.8261, .1739, 0, .9239, .0679, .0082, 0, 1, 0, .0208, .7375,
		.2417, .1999, .0109, .7891, .0292, .0098, .9610 };
	static const double k2[18] = {
		.9999, .9917, .0085, .9990, .6845, .3165, .1023, 1, .8977,
		.2645, .9461, .7894, .8921, .1193, .9885, .7422, .2584, .9994 };
	static const int sel1[6] = { 0, 0, 1, 1, 2, 2 };
	static const uint64_t sel2[6] = { 3, 3, 6, 6, 5, 5 };
	static const uint64_t soft2[6] = { 3, 5, 6, 6, 5, 5 };
	struct route_ot ws;
	struct route_ot_result res;
	struct route_out o;
	float P[18];
	double rows[6], cols[3];

	route_ot_init(&ws);
	ck_assert_int_eq(route_sinkhorn_capped(&ws, S6, 6, 3, 0.1f, 1.0f, 2.0f,
	    500, 1e-6f, P, &res), 0);
	expect_plan(P, k1, 18, 2e-4);
	plan_sums(P, 6, 3, rows, cols);
	for (int e = 0; e < 3; e++)
		ck_assert(fabs(cols[e] - 2.0) < 1e-4);
	ck_assert_int_eq(route_sinkhorn_capped(&ws, S6, 6, 3, 0.1f, 2.0f, 4.0f,
	    500, 1e-6f, P, &res), 0);
	expect_plan(P, k2, 18, 2e-4);
	plan_sums(P, 6, 3, rows, cols);
	for (int t = 0; t < 6; t++)
		ck_assert(fabs(rows[t] - 2.0) < 1e-4);
	route_ot_fini(&ws);

	route_out_init(&o);
	route1("sinkhorn:k=1,kernel=capped,tol=1e-6", S6, 6, 3, 2, 0, NULL, 0,
	    &o, NULL);
	for (int t = 0; t < 6; t++)
		expect_tok(&o, t, 1, &sel1[t], NULL);
	route1("ssr:kernel=capped,lambda=0,tol=1e-6", S6, 6, 3, 2, 1, NULL, 0,
	    &o, NULL);
	for (int t = 0; t < 6; t++)
		ck_assert_uint_eq(tok_mask(&o, t), sel2[t]);
	for (int e = 0; e < 3; e++)
		ck_assert_uint_eq(o.load[e], 4);
	/* capped weights: softmax over the selected logits (renorm model) */
	ck_assert(fabs(pair_w(&o, 0, 0) - .7311) < TOL);
	route1("sinkhorn:kernel=capped,xi=0.5,tol=1e-6", S6, 6, 3, 2, 0, NULL, 0,
	    &o, NULL);
	for (int t = 0; t < 6; t++)
		ck_assert_uint_eq(tok_mask(&o, t), soft2[t]);
	ck_assert_uint_eq(o.load[0], 4);
	ck_assert_uint_eq(o.load[1], 3);
	ck_assert_uint_eq(o.load[2], 5);
	route_out_fini(&o);
}
END_TEST

START_TEST(capped_balances_counts_when_Tk_is_not_divisible_by_E)
{
	struct route_out o;
	struct route_ot ws;
	struct route_ot_result res;
	float *S = rand_logits(45, 8, 2.0);
	float *P = malloc(45 * 8 * sizeof(float));
	double rows[45], cols[8];

	/* T k / E = 45 * 3 / 8 = 16.875 */
	route_ot_init(&ws);
	ck_assert_int_eq(route_sinkhorn_capped(&ws, S, 45, 8, 0.1f, 3.0f,
	    16.875f, 300, 1e-5f, P, &res), 0);
	ck_assert(res.converged);
	plan_sums(P, 45, 8, rows, cols);
	for (int t = 0; t < 45; t++)
		ck_assert(fabs(rows[t] - 3.0) < 1e-4);
	for (int e = 0; e < 8; e++)
		ck_assert(fabs(cols[e] - 16.875) < 1e-3);
	for (int i = 0; i < 45 * 8; i++)
		ck_assert(P[i] >= 0.0f && P[i] <= 1.0f);
	route_ot_fini(&ws);
	route_out_init(&o);
	route1("sinkhorn:kernel=capped,k=3,xi=0.05", S, 45, 8, 3, 1, NULL, 0,
	    &o, NULL);
	for (int e = 0; e < 8; e++)
		ck_assert_msg(o.load[e] >= 15 && o.load[e] <= 19,
		    "expert %d load %u", e, o.load[e]);
	free(S);
	free(P);
	route_out_fini(&o);
}
END_TEST

/* ---- §6.5 USMoE ------------------------------------------------------------ */

START_TEST(usmoe_matches_6_5)
{
	static const double U[12] = { 0.6231, 0.3649, 0.2243, 0.5902, 0.2872,
		0.2699, 0.2105, 0.7656, 0.1996, 0.4727, 0.4273, 0.4067 };
	static const uint64_t m8[4] = { 3, 3, 2, 7 }, m6[4] = { 1, 1, 2, 7 };
	struct route_out o;
	struct route_info in;

	route_out_init(&o);
	route1("usmoe", S4, 4, 3, 2, 0, NULL, 0, &o, &in);
	for (int t = 0; t < 4; t++) {
		ck_assert_uint_eq(tok_mask(&o, t), m8[t]);
		for (uint32_t i = o.off[t]; i < o.off[t + 1]; i++)
			ck_assert(fabs(o.weight[i] - U[t * 3 + o.expert[i]]) <
			    TOL);
	}
	ck_assert_uint_eq(o.load[0], 3);
	ck_assert_uint_eq(o.load[1], 4);
	ck_assert_uint_eq(o.load[2], 1);
	ck_assert_uint_eq(in.n_pairs, 8);
	route1("usmoe:budget=0.75", S4, 4, 3, 2, 0, NULL, 0, &o, &in);
	for (int t = 0; t < 4; t++)
		ck_assert_uint_eq(tok_mask(&o, t), m6[t]);
	ck_assert_float_eq_tol(in.experts_per_token, 1.5f, 1e-6f);
	/* rowsum: U divided by its full-row sum (the USMoE code's
	 * norm_topk_prob branch) */
	route1("usmoe:weights=rowsum", S4, 4, 3, 2, 0, NULL, 0, &o, &in);
	ck_assert(fabs(pair_w(&o, 2, 1) - 0.7656 / (0.2105 + 0.7656 + 0.1996))
	    < TOL);
	route_out_fini(&o);
}
END_TEST

/* The same selection; the weights follow the model's gate: a model that
 * renormalises its top-k gets U renormalised over each token's chosen
 * experts (weights sum to 1 per token), one that does not gets U. */
START_TEST(usmoe_weights_follow_the_models_convention)
{
	static const double U[12] = { 0.6231, 0.3649, 0.2243, 0.5902, 0.2872,
		0.2699, 0.2105, 0.7656, 0.1996, 0.4727, 0.4273, 0.4067 };
	static const uint64_t m8[4] = { 3, 3, 2, 7 };
	static const char *const spec[3] = { "usmoe", "usmoe:weights=renorm",
		"usmoe:weights=u" };
	static const int model_renorm[3] = { 1, 0, 1 };
	static const int expect_renorm[3] = { 1, 1, 0 };
	struct route_out o;
	struct route_info in;

	route_out_init(&o);
	for (int c = 0; c < 3; c++) {
		route1(spec[c], S4, 4, 3, 2, model_renorm[c], NULL, 0, &o, &in);
		ck_assert_uint_eq(in.n_pairs, 8);
		for (int t = 0; t < 4; t++) {
			double sel = 0.0, sum = 0.0;

			ck_assert_uint_eq(tok_mask(&o, t), m8[t]);
			for (uint32_t i = o.off[t]; i < o.off[t + 1]; i++)
				sel += U[t * 3 + o.expert[i]];
			for (uint32_t i = o.off[t]; i < o.off[t + 1]; i++) {
				double u = U[t * 3 + o.expert[i]];
				double want = expect_renorm[c] ? u / sel : u;

				ck_assert_msg(fabs(o.weight[i] - want) < TOL,
				    "%s (model renorm %d): token %d expert %d "
				    "weight %f, expected %f", spec[c],
				    model_renorm[c], t, o.expert[i],
				    (double)o.weight[i], want);
				sum += o.weight[i];
			}
			if (expect_renorm[c])
				ck_assert(fabs(sum - 1.0) < TOL);
		}
	}
	/* t2 keeps only expert 1: renormalised, its weight is 1 */
	route1("usmoe", S4, 4, 3, 2, 1, NULL, 0, &o, &in);
	ck_assert(fabs(pair_w(&o, 2, 1) - 1.0) < TOL);
	route_out_fini(&o);
}
END_TEST

START_TEST(usmoe_keeps_exactly_budget_pairs)
{
	struct route_out o;
	struct route_info in;
	float *S = rand_logits(40, 8, 2.0);
	struct route_group g[2] = { { 0, 20, ROUTE_GROUP_PREFILL },
		{ 20, 20, ROUTE_GROUP_PREFILL } };

	route_out_init(&o);
	route1("usmoe:budget=0.75", S, 40, 8, 2, 0, NULL, 0, &o, &in);
	ck_assert_uint_eq(in.n_pairs, 60);
	route1("usmoe:budget=0.75", S, 40, 8, 2, 0, g, 2, &o, &in);
	ck_assert_uint_eq(o.off[20], 30);
	ck_assert_uint_eq(in.n_pairs, 60);
	route1("usmoe:budget=1.5,k=4", S, 40, 8, 2, 0, NULL, 0, &o, &in);
	ck_assert_uint_eq(in.n_pairs, 240);
	free(S);
	route_out_fini(&o);
}
END_TEST

/* ---- §8.4 / §2.2 lossfree ------------------------------------------------ */

static void
selection_k1(const struct route_out *o, int T, int *sel)
{
	for (int t = 0; t < T; t++) {
		ck_assert_uint_eq(o->off[t + 1] - o->off[t], 1);
		sel[t] = o->expert[o->off[t]];
	}
}

START_TEST(lossfree_oscillates_with_a_large_rate_8_4)
{
	static const int s0[6] = { 0, 0, 1, 0, 0, 2 }, s1[6] = { 1, 0, 1, 1, 2, 2 };
	static const int s2[6] = { 0, 0, 1, 2, 2, 2 };
	struct route_policy *p = mkpol("lossfree:score=sigmoid,u=0.1", 3, 1, 0,
	    2);
	struct route_out o;
	int sel[6];
	const float *b;

	route_out_init(&o);
	ck_assert_int_eq(route_run(p, 1, 0, S6, 6, NULL, 0, &o, NULL), 0);
	selection_k1(&o, 6, sel);
	ck_assert_mem_eq(sel, s0, sizeof(s0));
	b = route_policy_bias(p, 1);
	ck_assert_float_eq_tol(b[0], -0.1f, 1e-6f);
	ck_assert_float_eq_tol(b[1], 0.1f, 1e-6f);
	ck_assert_float_eq_tol(b[2], 0.1f, 1e-6f);
	/* the other layer is untouched */
	ck_assert_float_eq(route_policy_bias(p, 0)[0], 0.0f);
	ck_assert_int_eq(route_run(p, 1, 1, S6, 6, NULL, 0, &o, NULL), 0);
	selection_k1(&o, 6, sel);
	ck_assert_mem_eq(sel, s1, sizeof(s1));
	ck_assert_int_eq(route_run(p, 1, 2, S6, 6, NULL, 0, &o, NULL), 0);
	selection_k1(&o, 6, sel);
	ck_assert_mem_eq(sel, s2, sizeof(s2));
	route_policy_free(p);
	route_out_fini(&o);
}
END_TEST

START_TEST(lossfree_balances_8_4_after_29_updates)
{
	static const int bal[6] = { 0, 0, 1, 1, 2, 2 };
	struct route_policy *p = mkpol("lossfree:score=sigmoid", 3, 1, 0, 1);
	struct route_out o;
	struct route_info in;
	const float *b;
	int sel[6];

	route_out_init(&o);
	for (int i = 0; i < 29; i++) {
		ck_assert_int_eq(route_run(p, 0, i, S6, 6, NULL, 0, &o, &in), 0);
		ck_assert_msg(in.maxvio > 0.0f, "balanced too early: call %d", i);
	}
	b = route_policy_bias(p, 0);
	ck_assert_float_eq_tol(b[0], -0.029f, 1e-5f);
	ck_assert_float_eq_tol(b[1], 0.015f, 1e-5f);
	ck_assert_float_eq_tol(b[2], 0.029f, 1e-5f);
	ck_assert_int_eq(route_run(p, 0, 29, S6, 6, NULL, 0, &o, &in), 0);
	selection_k1(&o, 6, sel);
	ck_assert_mem_eq(sel, bal, sizeof(bal));
	ck_assert_float_eq(in.maxvio, 0.0f);
	/* weights from the unbiased score: t3 -> e1 is sigmoid(1.4) */
	ck_assert(fabs(o.weight[3] - 0.8022) < TOL);
	route_policy_reset(p);
	ck_assert_float_eq(route_policy_bias(p, 0)[0], 0.0f);
	route_policy_free(p);
	route_out_fini(&o);
}
END_TEST

START_TEST(lossfree_moves_bias_against_load)
{
	/* softmax scores, k = 2: expert 0 is everyone's favourite */
	struct route_policy *p = mkpol("lossfree:u=0.01", 4, 2, 1, 1);
	float *S = rand_logits(32, 4, 0.5);
	struct route_out o, n;
	const float *b;

	for (int t = 0; t < 32; t++)
		S[t * 4] += 3.0f;
	route_out_init(&o);
	route_out_init(&n);
	ck_assert_int_eq(route_run(p, 0, 0, S, 32, NULL, 0, &o, NULL), 0);
	b = route_policy_bias(p, 0);
	ck_assert_float_lt(b[0], 0.0f);
	for (int e = 0; e < 4; e++)
		ck_assert_float_eq_tol(fabsf(b[e]), 0.01f, 1e-7f);
	/* with zero bias the first call equals native (renorm = softmax over
	 * the selection, as the model does) */
	route1("native", S, 32, 4, 2, 1, NULL, 0, &n, NULL);
	ck_assert_mem_eq(o.expert, n.expert, 64 * sizeof(int32_t));
	for (int i = 0; i < 64; i++)
		ck_assert_float_eq_tol(o.weight[i], n.weight[i], 1e-6f);
	for (int i = 1; i < 400; i++)
		route_run(p, 0, i, S, 32, NULL, 0, &o, NULL);
	ck_assert_float_lt(b[0], -0.2f);
	ck_assert_uint_le(o.load[0], 20);
	free(S);
	route_policy_free(p);
	route_out_fini(&o);
	route_out_fini(&n);
}
END_TEST

/* ---- robustness ------------------------------------------------------------ */

static const char *all_specs[] = {
	"native", "topk:k=1", "capacity", "capacity:drop=probs",
	"expert_choice", "sinkhorn", "sinkhorn:kernel=capped",
	"sinkhorn:xi=0.05", "sinkhorn:kernel=capped,xi=0.05",
	"ssr:lambda=0", "ssr:lambda=0,xi=0.05", "ssr:lambda=0,kernel=capped",
	"ssr:p=1,cost=softmax,xi=0.05", "ssr", "usmoe", "lossfree",
	"lossfree:score=sigmoid"
};

START_TEST(extreme_logits_give_finite_weights)
{
	int T = 24, E = 8;
	float *S = rand_logits(T, E, 1.0);
	struct route_out o;
	struct route_info in;

	for (int i = 0; i < T * E; i++)
		S[i] = S[i] > 0 ? 1e4f : -1e4f;
	S[3] = 5e3f;
	route_out_init(&o);
	for (size_t s = 0; s < sizeof(all_specs) / sizeof(*all_specs); s++) {
		route1(all_specs[s], S, T, E, 2, 0, NULL, 0, &o, &in);
		ck_assert_uint_gt(in.n_pairs, 0);
		for (uint32_t i = 0; i < in.n_pairs; i++) {
			ck_assert_msg(isfinite(o.weight[i]) &&
			    o.weight[i] >= 0.0f && o.weight[i] <= 1.0f + 1e-6f,
			    "%s: weight %g", all_specs[s], o.weight[i]);
			ck_assert(o.expert[i] >= 0 && o.expert[i] < E);
		}
		ck_assert(isfinite(in.maxvio));
		ck_assert(isfinite(in.ot_residual));
	}
	free(S);
	route_out_fini(&o);
}
END_TEST

START_TEST(nonfinite_logits_are_replaced_by_the_row_minimum_and_counted)
{
	int T = 16, E = 6;
	float *S = rand_logits(T, E, 1.0), *F = malloc(T * E * sizeof(float));
	struct route_out a, b;
	struct route_info ia, ib;

	memcpy(F, S, T * E * sizeof(float));
	S[0] = NAN;
	S[7] = INFINITY;
	S[8] = -INFINITY;
	for (int e = 0; e < E; e++)
		S[5 * E + e] = NAN;     /* a row with nothing finite */
	/* the reference: same replacement done by hand */
	for (int t = 0; t < T; t++) {
		float mn = INFINITY;

		for (int e = 0; e < E; e++)
			if (isfinite(S[t * E + e]) && S[t * E + e] < mn)
				mn = S[t * E + e];
		if (!isfinite(mn))
			mn = 0.0f;
		for (int e = 0; e < E; e++)
			F[t * E + e] = isfinite(S[t * E + e]) ? S[t * E + e] : mn;
	}
	route_out_init(&a);
	route_out_init(&b);
	for (size_t s = 0; s < sizeof(all_specs) / sizeof(*all_specs); s++) {
		route1(all_specs[s], S, T, E, 2, 0, NULL, 0, &a, &ia);
		route1(all_specs[s], F, T, E, 2, 0, NULL, 0, &b, &ib);
		ck_assert_msg(ia.n_nonfinite == 3 + 6, "%s: %u non-finite",
		    all_specs[s], ia.n_nonfinite);
		ck_assert_uint_eq(ib.n_nonfinite, 0);
		ck_assert_uint_eq(ia.n_pairs, ib.n_pairs);
		ck_assert_mem_eq(a.off, b.off, (T + 1) * sizeof(uint32_t));
		ck_assert_mem_eq(a.expert, b.expert, ia.n_pairs * sizeof(int32_t));
		ck_assert_mem_eq(a.weight, b.weight, ia.n_pairs * sizeof(float));
	}
	free(S);
	free(F);
	route_out_fini(&a);
	route_out_fini(&b);
}
END_TEST

START_TEST(single_token_and_single_expert_are_routed)
{
	float one[8] = { 0.1f, 2.0f, -1.0f, 0.5f, 3.0f, 0.0f, 0.2f, 0.3f };
	float col[5] = { 1, 2, 3, 4, 5 };
	struct route_out o;
	struct route_info in;

	route_out_init(&o);
	for (size_t s = 0; s < sizeof(all_specs) / sizeof(*all_specs); s++) {
		route1(all_specs[s], one, 1, 8, 2, 0, NULL, 0, &o, &in);
		ck_assert_uint_ge(in.n_pairs, 1);
		ck_assert_int_eq(in.ot_ran, 0);
		if (strncmp(all_specs[s], "expert_choice", 13) != 0 &&
		    strncmp(all_specs[s], "usmoe", 5) != 0 &&
		    strncmp(all_specs[s], "topk", 4) != 0) {
			/* a lone token keeps its own top-2 */
			ck_assert_uint_eq(tok_mask(&o, 0), (1u << 1) | (1u << 4));
		}
		route1(all_specs[s], col, 5, 1, 1, 0, NULL, 0, &o, &in);
		for (int t = 0; t < 5; t++) {
			ck_assert_uint_le(o.off[t + 1] - o.off[t], 1);
			if (o.off[t + 1] > o.off[t]) {
				ck_assert_int_eq(o.expert[o.off[t]], 0);
				ck_assert(isfinite(o.weight[o.off[t]]));
			}
		}
		/* T = 0 is a valid empty call */
		route1(all_specs[s], col, 0, 1, 1, 0, NULL, 0, &o, &in);
		ck_assert_uint_eq(in.n_pairs, 0);
		ck_assert_uint_eq(o.off[0], 0);
	}
	route_out_fini(&o);
}
END_TEST

/* ---- groups ------------------------------------------------------------------ */

START_TEST(prefill_groups_route_independently)
{
	static const char *specs[] = { "capacity:factor=1", "expert_choice",
		"sinkhorn", "sinkhorn:kernel=capped", "ssr:lambda=0", "usmoe",
		"usmoe:budget=0.5" };
	int E = 8, Ta = 13, Tb = 20;
	float *S = rand_logits(Ta + Tb, E, 2.0);
	struct route_group g[2] = { { 0, (uint32_t)Ta, ROUTE_GROUP_PREFILL },
		{ (uint32_t)Ta, (uint32_t)Tb, ROUTE_GROUP_PREFILL } };
	struct route_out all, one;

	route_out_init(&all);
	route_out_init(&one);
	for (size_t s = 0; s < sizeof(specs) / sizeof(*specs); s++) {
		route1(specs[s], S, Ta + Tb, E, 2, 1, g, 2, &all, NULL);
		for (int part = 0; part < 2; part++) {
			int t0 = part ? Ta : 0, n = part ? Tb : Ta;

			route1(specs[s], S + (size_t)t0 * E, n, E, 2, 1, NULL, 0,
			    &one, NULL);
			for (int t = 0; t < n; t++) {
				uint32_t a = all.off[t0 + t], c = one.off[t];
				uint32_t na = all.off[t0 + t + 1] - a;

				ck_assert_msg(na == one.off[t + 1] - c,
				    "%s token %d", specs[s], t0 + t);
				ck_assert_mem_eq(all.expert + a, one.expert + c,
				    na * sizeof(int32_t));
				ck_assert_mem_eq(all.weight + a, one.weight + c,
				    na * sizeof(float));
			}
		}
		/* and one group of all tokens is a different routing */
		route1(specs[s], S, Ta + Tb, E, 2, 1, NULL, 0, &one, NULL);
	}
	free(S);
	route_out_fini(&all);
	route_out_fini(&one);
}
END_TEST

START_TEST(decode_segments_form_one_group)
{
	int E = 8;
	float *S = rand_logits(12, E, 2.0), D[6 * 8];
	/* decode tokens 0-2 and 9-11 around a prefill chunk 3-8 */
	struct route_group g[3] = { { 0, 3, ROUTE_GROUP_DECODE },
		{ 3, 6, ROUTE_GROUP_PREFILL }, { 9, 3, ROUTE_GROUP_DECODE } };
	struct route_out all, dec;
	static const int map[6] = { 0, 1, 2, 9, 10, 11 };

	for (int j = 0; j < 6; j++)
		memcpy(D + j * E, S + map[j] * E, E * sizeof(float));
	route_out_init(&all);
	route_out_init(&dec);
	route1("expert_choice", S, 12, E, 2, 0, g, 3, &all, NULL);
	route1("expert_choice", D, 6, E, 2, 0, NULL, 0, &dec, NULL);
	for (int j = 0; j < 6; j++) {
		uint32_t a = all.off[map[j]], c = dec.off[j];
		uint32_t n = all.off[map[j] + 1] - a;

		ck_assert_uint_eq(n, dec.off[j + 1] - c);
		ck_assert_mem_eq(all.expert + a, dec.expert + c, n * 4);
		ck_assert_mem_eq(all.weight + a, dec.weight + c, n * 4);
	}
	/* ceil(6 * 2 / 8) + ceil(6 * 2 / 8) = 2 + 2 tokens per expert */
	for (int e = 0; e < E; e++)
		ck_assert_uint_eq(all.load[e], 4);
	free(S);
	route_out_fini(&all);
	route_out_fini(&dec);
}
END_TEST

START_TEST(groups_must_cover_the_tokens_in_order)
{
	struct route_policy *p = mkpol("sinkhorn", 3, 1, 0, 1);
	struct route_out o;
	struct route_group gap[2] = { { 0, 2, ROUTE_GROUP_PREFILL },
		{ 3, 3, ROUTE_GROUP_PREFILL } };
	struct route_group shortg[1] = { { 0, 5, ROUTE_GROUP_PREFILL } };
	struct route_group badkind[1] = { { 0, 6, (enum route_group_kind)7 } };
	struct route_group ok[2] = { { 0, 2, ROUTE_GROUP_PREFILL },
		{ 2, 4, ROUTE_GROUP_DECODE } };

	route_out_init(&o);
	ck_assert_int_eq(route_run(p, 0, 0, S6, 6, gap, 2, &o, NULL),
	    EPMOE_EINVAL);
	ck_assert_int_eq(route_run(p, 0, 0, S6, 6, shortg, 1, &o, NULL),
	    EPMOE_EINVAL);
	ck_assert_int_eq(route_run(p, 0, 0, S6, 6, badkind, 1, &o, NULL),
	    EPMOE_EINVAL);
	ck_assert_int_eq(route_run(p, 1, 0, S6, 6, NULL, 0, &o, NULL),
	    EPMOE_EINVAL);
	ck_assert_int_eq(route_run(p, 0, 0, S6, 6, ok, 2, &o, NULL), 0);
	route_policy_free(p);
	route_out_fini(&o);
}
END_TEST

/* ---- ssr schedules ---------------------------------------------------------- */

START_TEST(ssr_p_schedule_is_a_seeded_draw_per_step_and_layer)
{
	struct route_policy *p = mkpol("ssr:p=0.5,seed=7", 8, 2, 0, 4);
	struct route_policy *q = mkpol("ssr:p=0.5,seed=7", 8, 2, 0, 4);
	struct route_policy *r = mkpol("ssr:p=0.5,seed=8", 8, 2, 0, 4);
	struct route_out o;
	struct route_info in;
	struct route_stats st;
	float *S = rand_logits(16, 8, 1.0);
	int runs = 0, same = 0, n = 0;

	route_out_init(&o);
	for (int step = 0; step < 100; step++)
		for (int l = 0; l < 4; l++) {
			int a, b, c;

			route_run(p, l, step, S, 16, NULL, 0, &o, &in);
			a = in.ot_ran;
			route_run(q, l, step, S, 16, NULL, 0, &o, &in);
			b = in.ot_ran;
			route_run(r, l, step, S, 16, NULL, 0, &o, &in);
			c = in.ot_ran;
			ck_assert_int_eq(a, b);
			runs += a;
			same += a == c;
			n++;
		}
	ck_assert_int_gt(runs, 150);
	ck_assert_int_lt(runs, 250);
	ck_assert_int_lt(same, 300);    /* another seed draws differently */
	route_policy_stats(p, &st);
	ck_assert_uint_eq(st.ot_calls, (uint64_t)runs);
	ck_assert_uint_eq(st.calls, (uint64_t)n);
	route_policy_free(p);
	route_policy_free(q);
	route_policy_free(r);
	p = mkpol("ssr:p=0", 8, 2, 0, 1);
	for (int step = 0; step < 50; step++) {
		route_run(p, 0, step, S, 16, NULL, 0, &o, &in);
		ck_assert_int_eq(in.ot_ran, 0);
	}
	route_policy_free(p);
	free(S);
	route_out_fini(&o);
}
END_TEST

START_TEST(ssr_lambda_schedule_runs_ot_only_on_skewed_steps)
{
	int T = 64, E = 8;
	float *flat = rand_logits(T, E, 0.01), *skew = rand_logits(T, E, 1.0);
	struct route_policy *p = mkpol("ssr", E, 2, 0, 1);
	struct route_out o, n;
	struct route_info in;
	struct route_stats st;
	uint16_t map[8] = { 0, 1, 1, 1, 1, 1, 1, 1 };

	/* balanced: every expert is the top-2 of T/4 tokens */
	for (int t = 0; t < T; t++)
		for (int e = 0; e < E; e++)
			flat[t * E + e] += (e / 2 == t % 4) ? 3.0f : 0.0f;
	for (int t = 0; t < T; t++)
		skew[t * E] += 4.0f;
	route_out_init(&o);
	route_out_init(&n);
	ck_assert_int_eq(route_run(p, 0, 0, flat, T, NULL, 0, &o, &in), 0);
	ck_assert_int_eq(in.ot_ran, 0);
	ck_assert_float_eq_tol(in.worker_ratio, 1.0f, 1e-6f);
	/* without OT, ssr is plain top-k */
	route1("topk", flat, T, E, 2, 0, NULL, 0, &n, NULL);
	ck_assert_mem_eq(o.expert, n.expert, 2 * T * sizeof(int32_t));
	ck_assert_mem_eq(o.weight, n.weight, 2 * T * sizeof(float));
	ck_assert_int_eq(route_run(p, 0, 1, skew, T, NULL, 0, &o, &in), 0);
	ck_assert_int_eq(in.ot_ran, 1);
	ck_assert_float_gt(in.worker_ratio, 1.3f);
	ck_assert_float_lt(in.maxvio, 1.0f);
	route_policy_stats(p, &st);
	ck_assert_uint_eq(st.ot_calls, 1);
	ck_assert_uint_eq(st.calls, 2);
	/* two workers, worker 1 holds 7 experts: the flat step now loads it
	 * 7/4 of the mean */
	ck_assert_int_eq(route_policy_set_workers(p, map, 2), 0);
	ck_assert_int_eq(route_run(p, 0, 2, flat, T, NULL, 0, &o, &in), 0);
	ck_assert_int_eq(in.ot_ran, 1);
	ck_assert_float_eq_tol(in.worker_ratio, 1.75f, 1e-6f);
	map[0] = 2;
	ck_assert_int_eq(route_policy_set_workers(p, map, 2), EPMOE_EINVAL);
	route_policy_free(p);
	free(flat);
	free(skew);
	route_out_fini(&o);
	route_out_fini(&n);
}
END_TEST

/* ---- specs ---------------------------------------------------------------- */

START_TEST(parse_accepts_the_documented_forms)
{
	struct route_cfg c;
	char err[256];

	ck_assert_int_eq(route_parse("native", &c, err, sizeof(err)), 0);
	ck_assert_int_eq(c.kind, ROUTE_NATIVE);
	ck_assert_int_eq(route_parse("topk:k=1,renorm=1", &c, err, 256), 0);
	ck_assert_int_eq(c.kind, ROUTE_TOPK);
	ck_assert_int_eq(c.k, 1);
	ck_assert_int_eq(c.renorm, 1);
	ck_assert_int_eq(route_parse("capacity:factor=1.25,drop=probs", &c,
	    err, 256), 0);
	ck_assert_float_eq(c.factor, 1.25f);
	ck_assert_int_eq(c.drop, ROUTE_DROP_PROBS);
	ck_assert_int_eq(route_parse("expert_choice:c=2", &c, err, 256), 0);
	ck_assert_float_eq(c.c, 2.0f);
	ck_assert_int_eq(route_parse("sinkhorn:xi=1,kernel=capped,iters=100,"
	    "tol=1e-4", &c, err, 256), 0);
	ck_assert_int_eq(c.kernel, ROUTE_KERNEL_CAPPED);
	ck_assert_int_eq(c.iters, 100);
	ck_assert_float_eq(c.tol, 1e-4f);
	ck_assert_int_eq(route_parse("ssr:p=0.01,seed=7", &c, err, 256), 0);
	ck_assert_int_eq(c.sched, ROUTE_SSR_P);
	ck_assert_float_eq(c.p, 0.01f);
	ck_assert_uint_eq(c.seed, 7);
	ck_assert_int_eq(route_parse("ssr:lambda=1.3,workers=4", &c, err, 256),
	    0);
	ck_assert_int_eq(c.sched, ROUTE_SSR_LAMBDA);
	ck_assert_int_eq(c.workers, 4);
	ck_assert_int_eq(route_parse("usmoe:rate=0.5,budget=0.75", &c, err,
	    256), 0);
	ck_assert_float_eq(c.budget, 0.75f);
	ck_assert_int_eq(route_parse("lossfree:u=0.001", &c, err, 256), 0);
	ck_assert_float_eq(c.u, 0.001f);
	/* defaults */
	ck_assert_int_eq(route_parse("ssr", &c, err, 256), 0);
	ck_assert_int_eq(c.sched, ROUTE_SSR_LAMBDA);
	ck_assert_float_eq(c.lambda, 1.3f);
	ck_assert_int_eq(c.kernel, ROUTE_KERNEL_EXP);
	ck_assert_int_eq(c.k, 0);
	ck_assert_int_eq(c.renorm, -1);
	ck_assert_int_eq(route_parse("usmoe", &c, err, 256), 0);
	ck_assert_int_eq(c.uweights, ROUTE_UW_MODEL);
	ck_assert_int_eq(route_parse("usmoe:weights=renorm", &c, err, 256), 0);
	ck_assert_int_eq(c.uweights, ROUTE_UW_RENORM);
}
END_TEST

static void
expect_reject(const char *spec, const char *needle)
{
	struct route_cfg c;
	char err[256] = "";

	c.kind = ROUTE_USMOE;
	ck_assert_msg(route_parse(spec, &c, err, sizeof(err)) == EPMOE_EINVAL,
	    "'%s' accepted", spec);
	ck_assert_msg(strstr(err, needle) != NULL, "'%s': message '%s' lacks "
	    "'%s'", spec, err, needle);
	ck_assert_int_eq(c.kind, ROUTE_USMOE);   /* *out untouched */
}

START_TEST(parse_rejects_bad_specs_with_clear_messages)
{
	expect_reject("", "empty");
	expect_reject("fancy", "unknown routing policy 'fancy'");
	expect_reject("topk:q=1", "unknown key 'q' (keys: k, renorm)");
	expect_reject("native:k=2", "takes no keys");
	expect_reject("topk:k=0", "bad value '0' for k");
	expect_reject("topk:k=two", "bad value 'two' for k");
	expect_reject("topk:renorm=2", "0 or 1");
	expect_reject("capacity:drop=random", "one of: position, probs");
	expect_reject("sinkhorn:xi=0", "bad value '0' for xi");
	expect_reject("sinkhorn:xi=nan", "bad value");
	expect_reject("sinkhorn:kernel=fast", "one of: exp, capped");
	expect_reject("sinkhorn:iters=0", "iters");
	expect_reject("ssr:p=1.5", "bad value '1.5' for p");
	expect_reject("ssr:p=0.1,lambda=2", "not both");
	expect_reject("ssr:seed=3", "give p");
	expect_reject("ssr:seed=-3,p=0.1", "seed");
	expect_reject("usmoe:budget=0", "budget");
	expect_reject("usmoe:rate=2", "rate");
	expect_reject("usmoe:weights=softmax", "one of: u, renorm, rowsum");
	expect_reject("usmoe:renorm=1", "keys: k, rate, budget, weights");
	expect_reject("topk:k=1,k=2", "given twice");
	expect_reject("topk:k", "expected key=value");
	expect_reject("topk:", "nothing after");
	expect_reject("topk:k=", "bad value");
	expect_reject("lossfree:score=tanh", "softmax, sigmoid");
}
END_TEST

START_TEST(format_round_trips_through_parse)
{
	static const char *specs[] = { "native", "topk", "topk:k=1,renorm=1",
		"capacity:factor=1.1,min=4,drop=probs", "expert_choice:c=0.5",
		"sinkhorn:kernel=capped,cost=softmax,xi=0.05,iters=30,tol=0",
		"ssr:p=0.001,seed=18446744073709551615", "ssr:lambda=0,workers=3",
		"usmoe:rate=0.25,budget=0.8", "usmoe:weights=rowsum",
		"usmoe:budget=0.5,weights=u", "lossfree:u=0.01,score=sigmoid" };
	char buf[256], err[256];

	for (size_t i = 0; i < sizeof(specs) / sizeof(*specs); i++) {
		struct route_cfg a, b;

		ck_assert_int_eq(route_parse(specs[i], &a, err, 256), 0);
		ck_assert_int_eq(route_format(&a, buf, sizeof(buf)), 0);
		ck_assert_str_eq(buf, specs[i]);
		ck_assert_int_eq(route_parse(buf, &b, err, 256), 0);
		ck_assert_mem_eq(&a, &b, sizeof(a));
	}
	{
		struct route_cfg a;

		route_parse("sinkhorn:kernel=capped", &a, err, 256);
		ck_assert_int_eq(route_format(&a, buf, 8), EPMOE_ERANGE);
	}
}
END_TEST

START_TEST(policy_table_and_group_checks_follow_routing_md)
{
	static const int causal[ROUTE_N_KINDS] = { 1, 1, 1, 0, 0, 0, 0, 1 };
	static const char *names[ROUTE_N_KINDS] = { "native", "topk",
		"capacity", "expert_choice", "sinkhorn", "ssr", "usmoe",
		"lossfree" };
	struct route_cfg c;
	char err[128];

	for (int k = 0; k < ROUTE_N_KINDS; k++) {
		ck_assert_int_eq(route_policy_causal(k), causal[k]);
		route_cfg_default(&c, k);
		ck_assert_str_eq(route_kind_name(k), names[k]);
		/* every policy routes prefill sequences; the whole-sequence
		 * methods (expert_choice, usmoe) refuse the decode step */
		ck_assert_int_eq(route_check(&c, ROUTE_GROUP_PREFILL, err, 128),
		    0);
		if (k == ROUTE_EXPERT_CHOICE || k == ROUTE_USMOE) {
			ck_assert_int_eq(route_check(&c, ROUTE_GROUP_DECODE, err,
			    128), EPMOE_ENOTSUP);
			ck_assert_ptr_nonnull(strstr(err, "decode"));
		} else {
			ck_assert_int_eq(route_check(&c, ROUTE_GROUP_DECODE, err,
			    128), 0);
		}
		ck_assert_int_eq(route_check(&c, (enum route_group_kind)5, err,
		    128), EPMOE_EINVAL);
		ck_assert_ptr_nonnull(strstr(err, "group kind"));
	}
	ck_assert_ptr_null(route_kind_name(ROUTE_N_KINDS));
	c.kind = ROUTE_N_KINDS;
	ck_assert_int_eq(route_check(&c, ROUTE_GROUP_PREFILL, err, 128),
	    EPMOE_EINVAL);
}
END_TEST

START_TEST(policy_new_checks_k_against_the_model)
{
	struct route_cfg c;
	struct route_model m = { 4, 2, 0, 1 };
	struct route_policy *p = NULL;
	char err[128];

	route_parse("topk:k=5", &c, err, 128);
	ck_assert_int_eq(route_policy_new(&p, &c, &m, err, 128), EPMOE_EINVAL);
	ck_assert_ptr_null(p);
	ck_assert_ptr_nonnull(strstr(err, "k=5 exceeds the model's 4"));
	m.k = 0;
	route_parse("native", &c, err, 128);
	ck_assert_int_eq(route_policy_new(&p, &c, &m, err, 128), EPMOE_EINVAL);
	m.k = 2;
	route_parse("sinkhorn:kernel=capped", &c, err, 128);
	ck_assert_int_eq(route_policy_new(&p, &c, &m, err, 128), 0);
	ck_assert_int_eq(route_policy_cfg(p)->k, 2);
	ck_assert_int_eq(route_policy_cfg(p)->renorm, 0);
	ck_assert_float_eq(route_policy_cfg(p)->xi, 0.1f);
	ck_assert_ptr_null(route_policy_bias(p, 0));
	route_policy_free(p);
	route_policy_free(NULL);
}
END_TEST

START_TEST(output_buffers_are_reused_once_grown)
{
	static const char *specs[] = { "native", "sinkhorn", "expert_choice" };
	float *S = rand_logits(256, 16, 1.0);

	for (size_t s = 0; s < 3; s++) {
		struct route_policy *p = mkpol(specs[s], 16, 2, 0, 1);
		struct route_out o;
		void *e, *w;

		route_out_init(&o);
		ck_assert_int_eq(route_run(p, 0, 0, S, 256, NULL, 0, &o, NULL),
		    0);
		e = o.expert;
		w = o.weight;
		for (int i = 1; i < 5; i++) {
			ck_assert_int_eq(route_run(p, 0, i, S, 256 - 50 * (i % 2),
			    NULL, 0, &o, NULL), 0);
			ck_assert_ptr_eq(o.expert, e);
			ck_assert_ptr_eq(o.weight, w);
		}
		route_policy_free(p);
		route_out_fini(&o);
	}
	free(S);
}
END_TEST

/* ---- epmoe route ------------------------------------------------------------ */

/* Runs the CLI, returns its exit status and (if out) its stdout. */
static int
run_cli(const char *args, char *out, size_t len)
{
	const char *bin = getenv("EPMOE_BIN");
	char cmd[1024];
	FILE *f;
	size_t n = 0;
	int st;

	ck_assert_msg(bin != NULL, "EPMOE_BIN is not set");
	snprintf(cmd, sizeof(cmd), "%s/epmoe route %s 2>/dev/null", bin, args);
	ck_assert_ptr_nonnull(f = popen(cmd, "r"));
	if (out != NULL) {
		n = fread(out, 1, len - 1, f);
		out[n] = '\0';
	} else {
		char sink[4096];

		while (fread(sink, 1, sizeof(sink), f) > 0)
			;
	}
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(cli_prints_the_routing_as_json)
{
	char path[] = "/tmp/test_route_XXXXXX", args[512];
	static char out[1 << 16];
	int fd = mkstemp(path);
	cJSON *j, *toks, *t2, *load;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, S4, sizeof(S4)), (int)sizeof(S4));
	close(fd);
	snprintf(args, sizeof(args), "--policy topk:renorm=1 --logits %s "
	    "--tokens 4 --experts 3 --k 2", path);
	ck_assert_int_eq(run_cli(args, out, sizeof(out)), 0);
	ck_assert_ptr_nonnull(j = cJSON_Parse(out));
	ck_assert_str_eq(cJSON_GetObjectItem(j, "policy")->valuestring,
	    "topk:k=2,renorm=1");
	toks = cJSON_GetObjectItem(j, "tokens");
	ck_assert_int_eq(cJSON_GetArraySize(toks), 4);
	t2 = cJSON_GetArrayItem(toks, 2);
	ck_assert_int_eq(cJSON_GetArraySize(t2), 2);
	ck_assert_int_eq(cJSON_GetArrayItem(cJSON_GetArrayItem(t2, 0), 0)
	    ->valueint, 1);
	ck_assert(fabs(cJSON_GetArrayItem(cJSON_GetArrayItem(t2, 0), 1)
	    ->valuedouble - .9427) < TOL);
	load = cJSON_GetObjectItem(j, "load");
	ck_assert_int_eq(cJSON_GetArrayItem(load, 0)->valueint, 4);
	ck_assert_int_eq(cJSON_GetArrayItem(load, 2)->valueint, 0);
	ck_assert(fabs(cJSON_GetObjectItem(j, "maxvio")->valuedouble - 0.5) <
	    1e-6);
	ck_assert_ptr_nonnull(cJSON_GetObjectItem(j, "ot_runs"));
	ck_assert_ptr_nonnull(cJSON_GetObjectItem(j, "iterations"));
	ck_assert_ptr_nonnull(cJSON_GetObjectItem(j, "nonfinite"));
	ck_assert_ptr_nonnull(cJSON_GetObjectItem(j, "dropped"));
	ck_assert_ptr_nonnull(cJSON_GetObjectItem(j, "experts_per_token"));
	cJSON_Delete(j);
	/* expert choice over two prefill sequences of 2 tokens */
	snprintf(args, sizeof(args), "--policy expert_choice:c=1.5 --logits %s "
	    "--tokens 4 --experts 3 --group-sizes 2,2", path);
	ck_assert_int_eq(run_cli(args, out, sizeof(out)), 0);
	ck_assert_ptr_nonnull(j = cJSON_Parse(out));
	load = cJSON_GetObjectItem(j, "load");
	for (int e = 0; e < 3; e++)
		ck_assert_int_eq(cJSON_GetArrayItem(load, e)->valueint, 2);
	cJSON_Delete(j);
	/* wrong size, bad policy, missing flags: errors, not crashes */
	snprintf(args, sizeof(args), "--logits %s --tokens 5 --experts 3", path);
	ck_assert_int_ne(run_cli(args, NULL, 0), 0);
	snprintf(args, sizeof(args), "--policy nope --logits %s --tokens 4 "
	    "--experts 3", path);
	ck_assert_int_eq(run_cli(args, NULL, 0), 2);
	ck_assert_int_eq(run_cli("--tokens 4", NULL, 0), 2);
	ck_assert_int_eq(run_cli("--help", NULL, 0), 0);
	unlink(path);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("route");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, native_matches_8_1_full_softmax_weights);
	tcase_add_test(tc, native_matches_8_1_renormalised_weights);
	tcase_add_test(tc, native_matches_naive_reference_on_random_logits);
	tcase_add_test(tc, topk_with_native_settings_equals_native);
	tcase_add_test(tc, topk_breaks_ties_to_the_lower_index);
	tcase_add_test(tc, select_keeps_the_m_best_by_value_then_index);
	tcase_add_test(tc, expf_is_accurate_and_finite);
	tcase_add_test(tc, capacity_switch_top1_drops_as_8_2);
	tcase_add_test(tc, capacity_gshard_order_top2_as_8_2);
	tcase_add_test(tc, capacity_probs_keeps_each_experts_largest_weights);
	tcase_add_test(tc, expert_choice_matches_8_3);
	tcase_add_test(tc, expert_choice_gives_each_expert_exactly_its_capacity);
	tcase_add_test(tc, sinkhorn_plans_meet_marginals_on_random_matrices);
	tcase_add_test(tc, sinkhorn_fast_and_log_paths_agree);
	tcase_add_test(tc, sinkhorn_three_iterations_regression_5_5);
	tcase_add_test(tc, sinkhorn_xi1_equals_megatron_plan_times_T_4_3);
	tcase_add_test(tc, sbase_top1_of_the_plan_matches_4_3);
	tcase_add_test(tc, ssr_plan_and_weights_match_5_5_xi_half);
	tcase_add_test(tc, ssr_softmax_cost_xi_005_matches_5_5);
	tcase_add_test(tc,
	    sinkhorn_weights_are_the_softmax_over_the_selection_5_5_fmoe);
	tcase_add_test(tc, capped_plan_and_selection_match_0_2);
	tcase_add_test(tc, capped_balances_counts_when_Tk_is_not_divisible_by_E);
	tcase_add_test(tc, usmoe_matches_6_5);
	tcase_add_test(tc, usmoe_weights_follow_the_models_convention);
	tcase_add_test(tc, usmoe_keeps_exactly_budget_pairs);
	tcase_add_test(tc, lossfree_oscillates_with_a_large_rate_8_4);
	tcase_add_test(tc, lossfree_balances_8_4_after_29_updates);
	tcase_add_test(tc, lossfree_moves_bias_against_load);
	tcase_add_test(tc, extreme_logits_give_finite_weights);
	tcase_add_test(tc,
	    nonfinite_logits_are_replaced_by_the_row_minimum_and_counted);
	tcase_add_test(tc, single_token_and_single_expert_are_routed);
	tcase_add_test(tc, prefill_groups_route_independently);
	tcase_add_test(tc, decode_segments_form_one_group);
	tcase_add_test(tc, groups_must_cover_the_tokens_in_order);
	tcase_add_test(tc, ssr_p_schedule_is_a_seeded_draw_per_step_and_layer);
	tcase_add_test(tc, ssr_lambda_schedule_runs_ot_only_on_skewed_steps);
	tcase_add_test(tc, parse_accepts_the_documented_forms);
	tcase_add_test(tc, parse_rejects_bad_specs_with_clear_messages);
	tcase_add_test(tc, format_round_trips_through_parse);
	tcase_add_test(tc, policy_table_and_group_checks_follow_routing_md);
	tcase_add_test(tc, policy_new_checks_k_against_the_model);
	tcase_add_test(tc, output_buffers_are_reused_once_grown);
	tcase_add_test(tc, cli_prints_the_routing_as_json);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
