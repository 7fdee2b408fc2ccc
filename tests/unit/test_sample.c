/* Sampling: greedy and its equivalents, determinism per seed, empirical
 * frequencies against the exact distributions (temperature, top-k, top-p,
 * min-p), a token-for-token comparison with a naive full-sort reference
 * sampler on large vocabularies, log-probabilities against hand-computed
 * values, and stop strings with streaming hold-back. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "sample.h"
#include "testutil.h"

static struct sample_params
params(float t, int32_t k, float p, float minp, uint64_t seed)
{
	struct sample_params sp;

	sample_params_default(&sp);
	sp.temperature = t;
	sp.top_k = k;
	sp.top_p = p;
	sp.min_p = minp;
	sp.seed = seed;
	return sp;
}

/* Deterministic pseudo-random logits: approx. normal(0, sigma). */
static void
fill_logits(float *l, size_t n, uint64_t seed, float sigma)
{
	uint64_t x = seed * 2654435761u + 1;

	for (size_t i = 0; i < n; i++) {
		double u = 0;

		for (int j = 0; j < 4; j++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			u += (double)(x >> 11) * 0x1.0p-53;
		}
		l[i] = (float)((u - 2.0) * sqrt(3.0) * sigma);
	}
}

static long
naive_argmax(const float *l, size_t n)
{
	long b = 0;

	for (size_t i = 1; i < n; i++)
		if (l[i] > l[b])
			b = (long)i;
	return b;
}

/* Reference ranking for qsort: larger logit first, then lower id. */
static const float *ref_l;

static int
ref_cmp(const void *pa, const void *pb)
{
	uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;

	if (ref_l[a] != ref_l[b])
		return ref_l[a] > ref_l[b] ? -1 : 1;
	return a < b ? -1 : a > b;
}

START_TEST(defaults_follow_the_openai_api)
{
	struct sample_params p;

	sample_params_default(&p);
	ck_assert_float_eq(p.temperature, 1.0f);
	ck_assert_int_eq(p.top_k, 0);
	ck_assert_float_eq(p.top_p, 1.0f);
	ck_assert_float_eq(p.min_p, 0.0f);
}
END_TEST

START_TEST(invalid_params_are_rejected)
{
	struct sample_params bad[] = {
		params(-0.1f, 0, 1, 0, 1), params(NAN, 0, 1, 0, 1),
		params(INFINITY, 0, 1, 0, 1), params(1, -1, 1, 0, 1),
		params(1, 0, 0, 0, 1), params(1, 0, -0.5f, 0, 1),
		params(1, 0, 1.01f, 0, 1), params(1, 0, NAN, 0, 1),
		params(1, 0, 1, -0.01f, 1), params(1, 0, 1, 1.01f, 1),
		params(1, 0, 1, NAN, 1),
	};
	struct sample_params good = params(0.7f, 40, 0.9f, 0.05f, 3);
	struct sampler s;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_int_eq(sampler_init(&s, &bad[i]), EPMOE_EINVAL);
	ck_assert_int_eq(sampler_init(&s, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(sampler_init(&s, &good), 0);
	sampler_fini(&s);
	good = params(0, 1, 1, 1, 0); /* all limits inclusive */
	ck_assert_int_eq(sampler_init(&s, &good), 0);
	sampler_fini(&s);
}
END_TEST

START_TEST(greedy_picks_argmax_with_lower_id_on_ties)
{
	float l[8] = { 0.5f, 2.0f, -1.0f, 3.0f, 3.0f, 1.0f, 3.0f, NAN };
	struct sample_params p = params(0, 0, 1, 0, 7);
	struct sampler s;
	float lp;

	ck_assert_int_eq(sampler_init(&s, &p), 0);
	ck_assert_int_eq(sampler_next(&s, l, 8, NULL), 3);
	ck_assert_int_eq(sampler_next(&s, l, 8, &lp), 3);
	ck_assert_float_eq_tol(lp, sample_logprob(l, 8, 3), 1e-7);
	l[3] = 2.5f;
	ck_assert_int_eq(sampler_next(&s, l, 8, NULL), 4);
	/* NaN never wins, even first */
	l[0] = NAN;
	ck_assert_int_eq(sampler_next(&s, l, 8, NULL), 4);
	/* +inf wins (lowest id) */
	l[5] = INFINITY;
	l[6] = INFINITY;
	ck_assert_int_eq(sampler_next(&s, l, 8, NULL), 5);
	/* no usable logit */
	for (int i = 0; i < 8; i++)
		l[i] = i % 2 ? NAN : -INFINITY;
	ck_assert_int_eq(sampler_next(&s, l, 8, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(sampler_next(&s, l, 0, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(sampler_next(&s, NULL, 8, NULL), EPMOE_EINVAL);
	sampler_fini(&s);
}
END_TEST

START_TEST(nan_and_inf_are_handled_when_sampling)
{
	float l[6] = { NAN, 1.0f, -INFINITY, 1.0f, NAN, INFINITY };
	struct sample_params p = params(1, 0, 1, 0, 9);
	struct sampler s;

	ck_assert_int_eq(sampler_init(&s, &p), 0);
	/* +inf: chosen as in greedy */
	ck_assert_int_eq(sampler_next(&s, l, 6, NULL), 5);
	l[5] = NAN;
	for (int i = 0; i < 200; i++) {
		int32_t id = sampler_next(&s, l, 6, NULL);

		ck_assert(id == 1 || id == 3);
	}
	sampler_fini(&s);
}
END_TEST

static void
draw_seq(uint64_t seed, int32_t *out, int n, const float *l, size_t nv)
{
	struct sample_params p = params(1, 0, 1, 0, seed);
	struct sampler s;

	ck_assert_int_eq(sampler_init(&s, &p), 0);
	for (int i = 0; i < n; i++) {
		out[i] = sampler_next(&s, l, nv, NULL);
		ck_assert_int_ge(out[i], 0);
	}
	sampler_fini(&s);
}

START_TEST(same_seed_same_tokens_different_seed_different)
{
	static float l[1000];
	int32_t a[200], b[200], c[200];
	int same = 0;

	fill_logits(l, 1000, 1, 1.0f);
	draw_seq(42, a, 200, l, 1000);
	draw_seq(42, b, 200, l, 1000);
	draw_seq(43, c, 200, l, 1000);
	ck_assert_mem_eq(a, b, sizeof(a));
	for (int i = 0; i < 200; i++)
		same += a[i] == c[i];
	/* ~200/1000 coincidences expected at most by chance */
	ck_assert_int_lt(same, 20);
	/* seed 0 is a seed like any other */
	draw_seq(0, c, 200, l, 1000);
	ck_assert(memcmp(a, c, sizeof(a)) != 0);
}
END_TEST

/* Every configuration in cfg must pick the argmax of random rows. */
static void
assert_greedy(struct sample_params p)
{
	static float l[5000];
	struct sampler s;

	ck_assert_int_eq(sampler_init(&s, &p), 0);
	for (uint64_t row = 0; row < 30; row++) {
		fill_logits(l, 5000, row + 100, 2.0f);
		ck_assert_int_eq(sampler_next(&s, l, 5000, NULL),
		        naive_argmax(l, 5000));
	}
	sampler_fini(&s);
}

START_TEST(top_k_1_is_greedy_at_any_temperature)
{
	assert_greedy(params(0.5f, 1, 1, 0, 1));
	assert_greedy(params(1.0f, 1, 1, 0, 2));
	assert_greedy(params(50.0f, 1, 1, 0, 3));
}
END_TEST

START_TEST(tiny_temperature_is_greedy)
{
	assert_greedy(params(1e-45f, 0, 1, 0, 9)); /* 1/T overflows */
	assert_greedy(params(1e-30f, 0, 1, 0, 10));
}
END_TEST

START_TEST(tiny_top_p_is_greedy)
{
	assert_greedy(params(1.0f, 0, 1e-6f, 0, 4));
	assert_greedy(params(3.0f, 0, 1e-6f, 0, 5));
	assert_greedy(params(3.0f, 100, 1e-6f, 0, 6));
}
END_TEST

START_TEST(min_p_1_is_greedy)
{
	assert_greedy(params(1.0f, 0, 1, 1.0f, 7));
	assert_greedy(params(5.0f, 0, 1, 1.0f, 8));
}
END_TEST

#define N_DRAWS 20000

/* Draws N_DRAWS tokens from logits log(prob) with p and checks each
 * frequency is within 5 standard deviations of want (sqrt(w(1-w)/N),
 * at most 0.0177 for N = 20000); a want of 0 must never be drawn. */
static void
assert_frequencies(struct sample_params p, const double *prob,
        const double *want, size_t n)
{
	float l[16];
	long count[16] = { 0 };
	double norm = 0;
	struct sampler s;

	ck_assert_uint_le(n, 16);
	for (size_t i = 0; i < n; i++) {
		l[i] = (float)log(prob[i]);
		norm += want[i];
	}
	ck_assert_int_eq(sampler_init(&s, &p), 0);
	for (int d = 0; d < N_DRAWS; d++) {
		int32_t id = sampler_next(&s, l, n, NULL);

		ck_assert(id >= 0 && (size_t)id < n);
		count[id]++;
	}
	sampler_fini(&s);
	for (size_t i = 0; i < n; i++) {
		double w = want[i] / norm, f = (double)count[i] / N_DRAWS;
		double tol = 5 * sqrt(w * (1 - w) / N_DRAWS);

		if (w == 0)
			ck_assert_msg(count[i] == 0, "id %zu excluded but drawn "
			        "%ld times", i, count[i]);
		else
			ck_assert_msg(fabs(f - w) <= tol, "id %zu: frequency "
			        "%.4f, expected %.4f +- %.4f", i, f, w, tol);
	}
}

static const double P5[5] = { 0.4, 0.3, 0.15, 0.1, 0.05 };

START_TEST(temperature_1_draws_the_softmax)
{
	assert_frequencies(params(1, 0, 1, 0, 11), P5, P5, 5);
}
END_TEST

START_TEST(temperature_half_draws_squared_probabilities)
{
	double sq[5];

	for (int i = 0; i < 5; i++)
		sq[i] = P5[i] * P5[i];
	assert_frequencies(params(0.5f, 0, 1, 0, 12), P5, sq, 5);
}
END_TEST

START_TEST(temperature_2_draws_square_roots)
{
	double rt[5];

	for (int i = 0; i < 5; i++)
		rt[i] = sqrt(P5[i]);
	assert_frequencies(params(2.0f, 0, 1, 0, 13), P5, rt, 5);
}
END_TEST

START_TEST(top_k_truncates_and_renormalises)
{
	double want[5] = { 0.4, 0.3, 0.15, 0, 0 };

	assert_frequencies(params(1, 3, 1, 0, 14), P5, want, 5);
}
END_TEST

START_TEST(top_p_keeps_the_nucleus)
{
	/* 0.4 < 0.65 <= 0.4 + 0.3: the token crossing top_p is kept */
	double want[5] = { 0.4, 0.3, 0, 0, 0 };
	/* temperature before top-p: at T = 0.5 the squared probabilities
	 * (0.561, 0.316, 0.079, ...) reach 0.8 with two tokens, at T = 1
	 * it takes three */
	double want_t05[5] = { 0.16, 0.09, 0, 0, 0 };
	double want_t1[5] = { 0.4, 0.3, 0.15, 0, 0 };

	assert_frequencies(params(1, 0, 0.65f, 0, 15), P5, want, 5);
	assert_frequencies(params(0.5f, 0, 0.8f, 0, 16), P5, want_t05, 5);
	assert_frequencies(params(1, 0, 0.8f, 0, 17), P5, want_t1, 5);
}
END_TEST

START_TEST(top_p_ends_the_nucleus_at_the_token_reaching_it)
{
	/* two equal tokens: the first alone has exactly top_p = 0.5 of the
	 * mass, so the nucleus is {0} (ties: lower id first) */
	float l[3] = { 0.0f, 0.0f, -INFINITY };
	struct sample_params p = params(1, 0, 0.5f, 0, 31);
	struct sampler s;

	ck_assert_int_eq(sampler_init(&s, &p), 0);
	for (int d = 0; d < 100; d++)
		ck_assert_int_eq(sampler_next(&s, l, 3, NULL), 0);
	sampler_fini(&s);
}
END_TEST

START_TEST(top_k_selection_matches_full_sort)
{
	static float l[3000];
	static uint32_t idx[3000], ref[3000];
	const size_t ks[] = { 1, 2, 3, 16, 17, 40, 255, 256, 1000, 2999,
		3000, 5000 };
	for (int row = 0; row < 40; row++) {
		size_t n = 1 + (size_t)(row * 997 % 3000), m = 0;

		fill_logits(l, n, (uint64_t)row + 900, 1.0f);
		/* many rows with heavy ties: quantised logits */
		if (row % 2)
			for (size_t i = 0; i < n; i++)
				l[i] = floorf(l[i] * 2);
		if (row % 5 == 0)
			l[n / 2] = NAN;
		for (size_t i = 0; i < n; i++)
			if (!isnan(l[i]))
				ref[m++] = (uint32_t)i;
		ref_l = l;
		qsort(ref, m, sizeof(*ref), ref_cmp);
		for (size_t j = 0; j < sizeof(ks) / sizeof(ks[0]); j++) {
			size_t k = ks[j];
			size_t got = sample_top_k(l, n, k, idx);

			ck_assert_uint_eq(got, k < m ? k : m);
			ck_assert_msg(memcmp(idx, ref, got * sizeof(*idx)) == 0,
			        "row %d n %zu k %zu differs", row, n, k);
		}
	}
	/* presorted and reversed rows (pivot worst cases) */
	for (size_t i = 0; i < 3000; i++)
		l[i] = (float)i;
	ck_assert_uint_eq(sample_top_k(l, 3000, 10, idx), 10);
	for (size_t j = 0; j < 10; j++)
		ck_assert_uint_eq(idx[j], 2999 - j);
	for (size_t i = 0; i < 3000; i++)
		l[i] = -(float)i;
	ck_assert_uint_eq(sample_top_k(l, 3000, 10, idx), 10);
	for (size_t j = 0; j < 10; j++)
		ck_assert_uint_eq(idx[j], j);
	for (size_t i = 0; i < 3000; i++)
		l[i] = 1.0f;
	ck_assert_uint_eq(sample_top_k(l, 3000, 700, idx), 700);
	for (size_t j = 0; j < 700; j++)
		ck_assert_uint_eq(idx[j], j);
}
END_TEST

START_TEST(min_p_drops_tokens_below_a_fraction_of_the_best)
{
	/* keeps p >= 0.3 * 0.4 = 0.12 */
	double want[5] = { 0.4, 0.3, 0.15, 0, 0 };
	/* with top-k 2 first, min-p has nothing more to drop */
	double want_k2[5] = { 0.4, 0.3, 0, 0, 0 };

	assert_frequencies(params(1, 0, 1, 0.3f, 18), P5, want, 5);
	assert_frequencies(params(1, 2, 1, 0.3f, 19), P5, want_k2, 5);
}
END_TEST

/* ---- naive reference sampler: full sort, same generator ---- */

static uint64_t
ref_splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t
ref_rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static double
ref_uniform(uint64_t s[4])
{
	uint64_t r = ref_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = ref_rotl(s[3], 45);
	return (double)(r >> 11) * 0x1.0p-53;
}

/* The documented algorithm, written plainly: sort everything, cut the
 * sorted list, then draw walking the survivors in id order. */
static int32_t
ref_next(uint64_t rng[4], const struct sample_params *p, const float *l,
        size_t nv, uint32_t *sorted, float *w)
{
	size_t n = 0;
	double sum = 0, target, cum = 0;
	float maxl, inv_t = 1.0f / p->temperature;
	int32_t last = -1;

	for (size_t i = 0; i < nv; i++)
		sorted[i] = (uint32_t)i;
	ref_l = l;
	qsort(sorted, nv, sizeof(*sorted), ref_cmp);
	maxl = l[sorted[0]];
	if (p->temperature == 0 || p->top_k == 1)
		return (int32_t)sorted[0];
	for (size_t i = 0; i < nv; i++)
		w[i] = -1; /* not a candidate */
	n = nv;
	if (p->top_k > 0 && (size_t)p->top_k < nv)
		n = (size_t)p->top_k;
	for (size_t i = 0; i < n; i++) {
		w[sorted[i]] = expf((l[sorted[i]] - maxl) * inv_t);
		sum += w[sorted[i]];
	}
	if (p->top_p < 1) {
		double want = p->top_p * sum;

		for (size_t i = 0; i < n; i++) {
			cum += w[sorted[i]];
			if (cum >= want) {
				for (size_t j = i + 1; j < n; j++)
					w[sorted[j]] = -1;
				break;
			}
		}
	}
	for (size_t i = 0; i < nv; i++)
		if (w[i] >= 0 && w[i] < p->min_p)
			w[i] = -1;
	sum = 0;
	for (size_t i = 0; i < nv; i++)
		if (w[i] >= 0)
			sum += w[i];
	target = ref_uniform(rng) * sum;
	cum = 0;
	for (size_t i = 0; i < nv; i++) {
		if (w[i] < 0)
			continue;
		cum += w[i];
		if (w[i] > 0) {
			last = (int32_t)i;
			if (cum > target)
				return (int32_t)i;
		}
	}
	return last;
}

static void
assert_matches_reference(struct sample_params p, size_t nv, float sigma,
        int draws)
{
	float *l = malloc(nv * sizeof(*l)), *w = malloc(nv * sizeof(*w));
	uint32_t *scratch = malloc(nv * sizeof(*scratch));
	uint64_t rng[4], x = p.seed;
	struct sampler s;

	ck_assert(l && w && scratch);
	for (int i = 0; i < 4; i++)
		rng[i] = ref_splitmix(&x);
	ck_assert_int_eq(sampler_init(&s, &p), 0);
	for (int d = 0; d < draws; d++) {
		int32_t got, want;

		if (d % 10 == 0)
			fill_logits(l, nv, (uint64_t)d + p.seed, sigma);
		got = sampler_next(&s, l, nv, NULL);
		want = ref_next(rng, &p, l, nv, scratch, w);
		ck_assert_msg(got == want, "draw %d (T %g k %d p %g minp %g): "
		        "got %d, reference %d", d, p.temperature, p.top_k,
		        p.top_p, p.min_p, got, want);
	}
	sampler_fini(&s);
	free(l);
	free(w);
	free(scratch);
}

START_TEST(large_vocabulary_matches_full_sort_reference)
{
	/* nucleus of hundreds (sigma 3) and thousands (sigma 0.5) of tokens:
	 * the selection grows 256 -> 1024 -> 4096 -> all */
	assert_matches_reference(params(1, 0, 0.9f, 0, 21), 6000, 3.0f, 60);
	assert_matches_reference(params(1, 0, 0.9f, 0, 22), 6000, 0.5f, 60);
	assert_matches_reference(params(0.7f, 0, 0.5f, 0.01f, 23), 6000, 2.0f,
	        60);
	assert_matches_reference(params(1.3f, 50, 0.95f, 0, 24), 6000, 1.0f,
	        60);
	assert_matches_reference(params(1, 2000, 1, 0, 25), 6000, 1.0f, 60);
	assert_matches_reference(params(1, 0, 1, 0.05f, 26), 6000, 1.0f, 60);
	assert_matches_reference(params(0.8f, 0, 1, 0, 27), 32000, 2.0f, 30);
	assert_matches_reference(params(1, 40, 0.9f, 0.05f, 28), 32000, 2.0f,
	        30);
}
END_TEST

START_TEST(logprobs_match_hand_computed_log_softmax)
{
	float l[5] = { 1.0f, 2.0f, 3.0f, 0.5f, -1.25f };
	/* log softmax of l, computed by hand in double precision */
	double want[5] = { -2.469731065191624, -1.469731065191624,
		-0.469731065191624, -2.969731065191624, -4.719731065191624 };
	int32_t ids[5];
	float lps[5];
	struct sample_params p = params(0.3f, 0, 1, 0, 5);
	struct sampler s;

	for (int i = 0; i < 5; i++)
		ck_assert_float_eq_tol(sample_logprob(l, 5, i), want[i], 1e-5);
	ck_assert(sample_logprob(l, 5, 5) == -INFINITY);
	ck_assert(sample_logprob(l, 5, -1) == -INFINITY);
	/* sampler_next reports the temperature-1 logprob of its choice */
	ck_assert_int_eq(sampler_init(&s, &p), 0);
	for (int d = 0; d < 50; d++) {
		float lp;
		int32_t id = sampler_next(&s, l, 5, &lp);

		ck_assert(id >= 0 && id < 5);
		ck_assert_float_eq_tol(lp, want[id], 1e-5);
	}
	sampler_fini(&s);
	/* top logprobs: best first */
	ck_assert_uint_eq(sample_top_logprobs(l, 5, 3, ids, lps), 3);
	ck_assert_int_eq(ids[0], 2);
	ck_assert_int_eq(ids[1], 1);
	ck_assert_int_eq(ids[2], 0);
	for (int j = 0; j < 3; j++)
		ck_assert_float_eq_tol(lps[j], want[ids[j]], 1e-5);
	ck_assert_uint_eq(sample_top_logprobs(l, 5, 9, ids, lps), 5);
	ck_assert_int_eq(ids[4], 4);
	ck_assert_uint_eq(sample_top_logprobs(l, 5, 0, ids, lps), 0);
}
END_TEST

START_TEST(top_logprobs_break_ties_to_lower_id_and_skip_nan)
{
	float l[7] = { 1.0f, 3.0f, NAN, 3.0f, 2.0f, 3.0f, 0.0f };
	int32_t ids[7];
	float lps[7];
	double lse = 0;

	for (int i = 0; i < 7; i++)
		if (!isnan(l[i]))
			lse += exp(l[i]);
	lse = log(lse);
	ck_assert_uint_eq(sample_top_logprobs(l, 7, 4, ids, lps), 4);
	ck_assert_int_eq(ids[0], 1);
	ck_assert_int_eq(ids[1], 3);
	ck_assert_int_eq(ids[2], 5);
	ck_assert_int_eq(ids[3], 4);
	ck_assert_float_eq_tol(lps[0], 3.0 - lse, 1e-5);
	ck_assert_float_eq_tol(lps[3], 2.0 - lse, 1e-5);
	ck_assert_uint_eq(sample_top_logprobs(l, 7, 7, ids, lps), 4 + 2);
	ck_assert(sample_logprob(l, 7, 2) == -INFINITY);
}
END_TEST

START_TEST(stop_match_finds_earliest_and_partial_suffix)
{
	const char *stops[] = { "world", "lo", "", NULL, "</s>" };
	size_t part = 99;

	ck_assert_int_eq(sample_stop_match("Hello world", 11, stops, 5,
	        &part), 3);
	ck_assert_uint_eq(part, 0);
	ck_assert_int_eq(sample_stop_match("Hey wor", 7, stops, 5, &part), -1);
	ck_assert_uint_eq(part, 3);
	ck_assert_int_eq(sample_stop_match("Hey </", 6, stops, 5, &part), -1);
	ck_assert_uint_eq(part, 2);
	ck_assert_int_eq(sample_stop_match("Hey l", 5, stops, 5, &part), -1);
	ck_assert_uint_eq(part, 1);
	ck_assert_int_eq(sample_stop_match("abc", 3, stops, 5, &part), -1);
	ck_assert_uint_eq(part, 0);
	/* the whole text can be a prefix; a full stop string is a match */
	ck_assert_int_eq(sample_stop_match("worl", 4, stops, 5, &part), -1);
	ck_assert_uint_eq(part, 4);
	ck_assert_int_eq(sample_stop_match("</s>", 4, stops, 5, &part), 0);
	ck_assert_int_eq(sample_stop_match("", 0, stops, 5, &part), -1);
	ck_assert_uint_eq(part, 0);
	ck_assert_int_eq(sample_stop_match("xx", 2, NULL, 0, &part), -1);
	ck_assert_int_eq(sample_stop_match("x lo", 4, stops, 5, NULL), 2);
}
END_TEST

/* Pushes text and appends what is emitted to out. */
static int
push(struct sample_stop *st, const char *text, char *out)
{
	const char *e;
	size_t n;
	int rv = sample_stop_push(st, text, strlen(text), &e, &n);

	strncat(out, e, n);
	return rv;
}

START_TEST(stop_stream_holds_back_a_possible_stop)
{
	const char *stops[] = { "world!", "<|end|>" };
	struct sample_stop st;
	char out[256] = "";
	const char *e;
	size_t n;

	sample_stop_init(&st, stops, 2);
	ck_assert_int_eq(push(&st, "Hello wo", out), 0);
	ck_assert_str_eq(out, "Hello "); /* "wo" may start "world!" */
	ck_assert_int_eq(push(&st, "w", out), 0);
	ck_assert_str_eq(out, "Hello wo"); /* "wow": only "w" can */
	ck_assert_int_eq(push(&st, "orld", out), 0);
	ck_assert_str_eq(out, "Hello wo");
	/* spanning two pushes: "world" + "!" */
	ck_assert_int_eq(push(&st, "! bye", out), 1);
	ck_assert_str_eq(out, "Hello wo");
	/* after the stop nothing more comes out */
	ck_assert_int_eq(push(&st, "more", out), 1);
	sample_stop_flush(&st, &e, &n);
	ck_assert_uint_eq(n, 0);
	ck_assert_str_eq(out, "Hello wo");
	sample_stop_fini(&st);

	/* a stop spanning four pushes, text before it in the same push */
	out[0] = 0;
	sample_stop_init(&st, stops, 2);
	ck_assert_int_eq(push(&st, "a<", out), 0);
	ck_assert_int_eq(push(&st, "|e", out), 0);
	ck_assert_int_eq(push(&st, "nd", out), 0);
	ck_assert_str_eq(out, "a");
	ck_assert_int_eq(push(&st, "|>tail", out), 1);
	ck_assert_str_eq(out, "a");
	sample_stop_fini(&st);

	/* a held prefix that turns out not to be a stop is flushed */
	out[0] = 0;
	sample_stop_init(&st, stops, 2);
	ck_assert_int_eq(push(&st, "say <|en", out), 0);
	ck_assert_str_eq(out, "say ");
	ck_assert_int_eq(push(&st, "", out), 0);
	ck_assert_str_eq(out, "say ");
	sample_stop_flush(&st, &e, &n);
	strncat(out, e, n);
	ck_assert_str_eq(out, "say <|en");
	sample_stop_fini(&st);

	/* no stops: everything passes straight through */
	out[0] = 0;
	sample_stop_init(&st, NULL, 0);
	ck_assert_int_eq(push(&st, "abc", out), 0);
	ck_assert_str_eq(out, "abc");
	sample_stop_fini(&st);
}
END_TEST

START_TEST(stop_stream_output_equals_text_cut_at_first_stop)
{
	const char *stops[] = { "abca", "cc", "bab" };
	uint64_t x = 77;

	for (int trial = 0; trial < 500; trial++) {
		char text[64], out[80] = "";
		size_t len, at = 0;
		long cut;
		struct sample_stop st;
		const char *e;
		size_t n;
		int stopped = 0;

		x = x * 6364136223846793005ull + 1442695040888963407ull;
		len = 1 + (x >> 33) % 40;
		for (size_t i = 0; i < len; i++) {
			x = x * 6364136223846793005ull + 1;
			text[i] = (char)('a' + (x >> 40) % 3);
		}
		text[len] = 0;
		cut = sample_stop_match(text, len, stops, 3, NULL);
		sample_stop_init(&st, stops, 3);
		while (at < len) {
			size_t piece;

			x = x * 6364136223846793005ull + 1;
			piece = 1 + (x >> 45) % 5;
			if (piece > len - at)
				piece = len - at;
			stopped = sample_stop_push(&st, text + at, piece, &e, &n);
			ck_assert_int_ge(stopped, 0);
			strncat(out, e, n);
			at += piece;
		}
		if (!stopped) {
			sample_stop_flush(&st, &e, &n);
			strncat(out, e, n);
		}
		sample_stop_fini(&st);
		ck_assert_int_eq(stopped, cut >= 0);
		if (cut >= 0)
			text[cut] = 0;
		ck_assert_str_eq(out, text);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("sample");
	TCase *tc = tcase_create("sampler");
	TCase *ts = tcase_create("stop");

	tcase_add_test(tc, defaults_follow_the_openai_api);
	tcase_add_test(tc, invalid_params_are_rejected);
	tcase_add_test(tc, greedy_picks_argmax_with_lower_id_on_ties);
	tcase_add_test(tc, nan_and_inf_are_handled_when_sampling);
	tcase_add_test(tc, same_seed_same_tokens_different_seed_different);
	tcase_add_test(tc, top_k_1_is_greedy_at_any_temperature);
	tcase_add_test(tc, tiny_top_p_is_greedy);
	tcase_add_test(tc, tiny_temperature_is_greedy);
	tcase_add_test(tc, min_p_1_is_greedy);
	tcase_add_test(tc, temperature_1_draws_the_softmax);
	tcase_add_test(tc, temperature_half_draws_squared_probabilities);
	tcase_add_test(tc, temperature_2_draws_square_roots);
	tcase_add_test(tc, top_k_truncates_and_renormalises);
	tcase_add_test(tc, top_p_keeps_the_nucleus);
	tcase_add_test(tc, min_p_drops_tokens_below_a_fraction_of_the_best);
	tcase_add_test(tc, top_p_ends_the_nucleus_at_the_token_reaching_it);
	tcase_add_test(tc, top_k_selection_matches_full_sort);
	tcase_add_test(tc, large_vocabulary_matches_full_sort_reference);
	tcase_add_test(tc, logprobs_match_hand_computed_log_softmax);
	tcase_add_test(tc, top_logprobs_break_ties_to_lower_id_and_skip_nan);
	tcase_add_test(ts, stop_match_finds_earliest_and_partial_suffix);
	tcase_add_test(ts, stop_stream_holds_back_a_possible_stop);
	tcase_add_test(ts, stop_stream_output_equals_text_cut_at_first_stop);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, ts);
	return tu_run(s);
}
