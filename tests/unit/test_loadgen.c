/* The load generator: arrival process statistics (rate and burstiness
 * over many seeded draws), datasets (random, prompts file, ShareGPT, the
 * KJV sample in the repository), SLO parsing, the summary statistics and
 * confidence intervals, and `epmoe bench server` end to end against a
 * scripted OpenAI-compatible server with known latencies: goodput, errors
 * by kind and the JSON schema of the results. */
#include <arpa/inet.h>
#include <check.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cJSON.h>

#include "bench.h"
#include "err.h"
#include "lg_arrival.h"
#include "lg_dataset.h"
#include "lg_stats.h"
#include "testutil.h"

/* ---- arrival process ---- */

struct moments {
	double mean, cv2; /* mean and squared coefficient of variation */
};

static struct moments
gap_moments(double rate, double b, uint64_t seed, size_t n)
{
	struct lg_arrival a;
	double sum = 0, ss = 0;
	struct moments m;
	int bad = 0;

	ck_assert_int_eq(lg_arrival_init(&a, rate, b, seed), 0);
	for (size_t i = 0; i < n; i++) {
		double g = lg_arrival_gap(&a);
		bad |= !(g >= 0 && isfinite(g));
		sum += g;
		ss += g * g;
	}
	ck_assert_msg(!bad, "a gap was negative or not finite");
	m.mean = sum / (double)n;
	m.cv2 = (ss / (double)n - m.mean * m.mean) / (m.mean * m.mean);
	return m;
}

/* 400000 gaps: the mean's relative standard error is <= 0.32% for CV <= 2
 * (B >= 0.25), so 1.5% is over 4.5 sigma; the variance's relative error
 * is below 0.9% for gamma shapes >= 0.25 (kurtosis 3 + 6/B), so 5% is
 * over 5 sigma.  Seeded: the draws are the same on every run. */
#define N_GAPS 400000

START_TEST(poisson_gaps_have_the_asked_mean_rate_and_unit_cv)
{
	static const double rates[] = { 0.5, 10, 250 };

	for (size_t i = 0; i < 3; i++) {
		struct moments m = gap_moments(rates[i], 1, 42 + i, N_GAPS);
		ck_assert_msg(fabs(m.mean * rates[i] - 1) < 0.015,
		        "rate %g: mean gap %g", rates[i], m.mean);
		ck_assert_msg(fabs(m.cv2 - 1) < 0.05, "rate %g: cv^2 %g", rates[i],
		        m.cv2);
	}
}
END_TEST

START_TEST(gamma_burstiness_sets_the_cv_and_keeps_the_rate)
{
	static const double bs[] = { 0.25, 0.5, 2, 8 };

	for (size_t i = 0; i < 4; i++) {
		struct moments m = gap_moments(4, bs[i], 7 + i, N_GAPS);
		ck_assert_msg(fabs(m.mean * 4 - 1) < 0.015, "B %g: mean gap %g",
		        bs[i], m.mean);
		/* gamma(shape B): var / mean^2 = 1 / B */
		ck_assert_msg(fabs(m.cv2 * bs[i] - 1) < 0.05, "B %g: cv^2 %g", bs[i],
		        m.cv2);
	}
}
END_TEST

START_TEST(poisson_counts_in_windows_have_variance_equal_to_mean)
{
	/* a Poisson process: arrivals per 1 s window are Poisson(rate), so
	 * their index of dispersion (variance / mean) is 1; a burstier
	 * process (B = 0.25) is over-dispersed */
	enum { N = 200000 };
	static double t[N];
	struct lg_arrival a;

	for (int burst = 0; burst < 2; burst++) {
		double b = burst ? 0.25 : 1, sum = 0, ss = 0;
		long counts[4096] = { 0 }, nw;
		ck_assert_int_eq(lg_arrival_init(&a, 100, b, 99), 0);
		lg_arrival_schedule(&a, t, N);
		nw = (long)floor(t[N - 1]);
		ck_assert(nw > 1000 && nw < 4096);
		for (size_t i = 0; i < N; i++)
			if ((long)t[i] < nw)
				counts[(long)t[i]]++;
		for (long w = 0; w < nw; w++) {
			sum += counts[w];
			ss += (double)counts[w] * counts[w];
		}
		double mean = sum / nw, var = ss / nw - mean * mean;
		ck_assert_msg(fabs(mean / 100 - 1) < 0.02, "B %g: %g arrivals/s", b,
		        mean);
		if (burst)
			ck_assert_msg(var / mean > 2, "B 0.25: dispersion %g", var / mean);
		else
			/* the estimate's sd is sqrt(2 / windows) = 3%: 4 sigma */
			ck_assert_msg(fabs(var / mean - 1) < 0.12, "dispersion %g",
			        var / mean);
	}
}
END_TEST

START_TEST(schedule_is_seeded_cumulative_and_starts_at_zero)
{
	double t1[1000], t2[1000], t3[1000];
	struct lg_arrival a;

	ck_assert_int_eq(lg_arrival_init(&a, 5, 0.5, 123), 0);
	lg_arrival_schedule(&a, t1, 1000);
	ck_assert_int_eq(lg_arrival_init(&a, 5, 0.5, 123), 0);
	lg_arrival_schedule(&a, t2, 1000);
	ck_assert_int_eq(lg_arrival_init(&a, 5, 0.5, 124), 0);
	lg_arrival_schedule(&a, t3, 1000);
	ck_assert(t1[0] == 0);
	ck_assert_mem_eq(t1, t2, sizeof(t1));
	ck_assert(memcmp(t1, t3, sizeof(t1)) != 0);
	for (int i = 1; i < 1000; i++)
		ck_assert(t1[i] >= t1[i - 1]);
}
END_TEST

START_TEST(infinite_rate_sends_everything_at_once_and_bad_values_fail)
{
	struct lg_arrival a;
	double t[16];

	ck_assert_int_eq(lg_arrival_init(&a, INFINITY, 1, 1), 0);
	lg_arrival_schedule(&a, t, 16);
	for (int i = 0; i < 16; i++)
		ck_assert(t[i] == 0);
	ck_assert_int_eq(lg_arrival_init(&a, 0, 1, 1), EPMOE_EINVAL);
	ck_assert_int_eq(lg_arrival_init(&a, -1, 1, 1), EPMOE_EINVAL);
	ck_assert_int_eq(lg_arrival_init(&a, NAN, 1, 1), EPMOE_EINVAL);
	ck_assert_int_eq(lg_arrival_init(&a, 1, 0, 1), EPMOE_EINVAL);
	ck_assert_int_eq(lg_arrival_init(&a, 1, INFINITY, 1), EPMOE_EINVAL);
}
END_TEST

START_TEST(gamma_sampler_matches_mean_and_variance)
{
	static const double shapes[] = { 0.3, 1, 3.7, 40 };
	uint64_t s = 5;

	for (size_t k = 0; k < 4; k++) {
		double a = shapes[k], sc = 2, sum = 0, ss = 0;
		const int n = 300000;
		for (int i = 0; i < n; i++) {
			double x = lg_gamma(&s, a, sc);
			sum += x;
			ss += x * x;
		}
		double mean = sum / n, var = ss / n - mean * mean;
		/* Gamma(a, s): mean a s, variance a s^2 */
		ck_assert_msg(fabs(mean / (a * sc) - 1) < 0.02, "shape %g: mean %g",
		        a, mean);
		ck_assert_msg(fabs(var / (a * sc * sc) - 1) < 0.05, "shape %g: var %g",
		        a, var);
	}
}
END_TEST

/* ---- datasets ---- */

static long
count_words(void *ud, const char *t)
{
	long n = 0;
	int in = 0;

	(void)ud;
	for (; *t; t++) {
		int sp = *t == ' ' || *t == '\n';
		n += !sp && !in;
		in = !sp;
	}
	return n;
}

static char tmpdir[64];

static void
mk_tmpdir(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/epmoe-lg-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

/* Checked teardown: removes what mk_tmpdir made. */
static void
rm_tmpdir(void)
{
	char cmd[128];

	if (tmpdir[0] == '\0')
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	tmpdir[0] = '\0';
}

static const char *
write_tmp(const char *name, const char *text, size_t len)
{
	static char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	ck_assert_ptr_nonnull(f = fopen(path, "wb"));
	ck_assert_uint_eq(fwrite(text, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
	return path;
}

static struct lg_data_cfg
cfg_of(enum lg_data_kind k, const char *path, size_t n)
{
	struct lg_data_cfg c;

	memset(&c, 0, sizeof(c));
	c.kind = k;
	c.path = path;
	c.n = n;
	c.input_len = 32;
	c.output_len = 16;
	c.tokens_per_word = 1;
	c.count = count_words;
	return c;
}

START_TEST(random_dataset_draws_lengths_in_range_deterministically)
{
	struct lg_data_cfg c = cfg_of(LG_DATA_RANDOM, NULL, 2000);
	struct lg_dataset d, d2;
	char err[256];
	double in_sum = 0, out_sum = 0;

	c.input_len = 100;
	c.output_len = 40;
	c.range_ratio = 0.5;
	c.tokens_per_word = 2;
	c.seed = 9;
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), 0);
	ck_assert_uint_eq(d.n, 2000);
	for (size_t i = 0; i < d.n; i++) {
		const struct lg_item *it = &d.items[i];
		ck_assert(it->prompt_len >= 50 && it->prompt_len <= 150);
		ck_assert(it->output_len >= 20 && it->output_len <= 60);
		/* words = round(tokens / tokens per word) */
		ck_assert_int_eq(count_words(NULL, it->prompt),
		        lround(it->prompt_len / 2.0));
		in_sum += it->prompt_len;
		out_sum += it->output_len;
	}
	/* uniform on [50, 150]: mean 100, sd 29; 2000 draws: se 0.65 */
	ck_assert_msg(fabs(in_sum / d.n - 100) < 3, "mean input %g", in_sum / d.n);
	ck_assert_msg(fabs(out_sum / d.n - 40) < 1.5, "mean output %g",
	        out_sum / d.n);
	ck_assert_int_eq(lg_dataset_load(&c, &d2, err, sizeof(err)), 0);
	for (size_t i = 0; i < d.n; i++) {
		ck_assert_str_eq(d.items[i].prompt, d2.items[i].prompt);
		ck_assert_uint_eq(d.items[i].output_len, d2.items[i].output_len);
	}
	lg_dataset_fini(&d);
	lg_dataset_fini(&d2);
	/* ratio 0: every length is the mean */
	c.range_ratio = 0;
	c.n = 50;
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), 0);
	for (size_t i = 0; i < d.n; i++)
		ck_assert(d.items[i].prompt_len == 100 && d.items[i].output_len == 40);
	lg_dataset_fini(&d);
	c.range_ratio = 1;
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), EPMOE_EINVAL);
}
END_TEST

START_TEST(prompts_file_keeps_nonblank_lines_in_order)
{
	const char text[] = "first prompt here\r\n\n  \nsecond one\nthird\n";
	struct lg_data_cfg c;
	struct lg_dataset d;
	char err[256];

	mk_tmpdir();
	c = cfg_of(LG_DATA_PROMPTS, write_tmp("p.txt", text, sizeof(text) - 1), 10);
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), 0);
	ck_assert_uint_eq(d.n, 3);
	ck_assert_str_eq(d.items[0].prompt, "first prompt here");
	ck_assert_str_eq(d.items[1].prompt, "second one");
	ck_assert_str_eq(d.items[2].prompt, "third");
	ck_assert_uint_eq(d.items[0].prompt_len, 3);
	ck_assert_uint_eq(d.items[2].output_len, 16);
	lg_dataset_fini(&d);
	/* at most n items */
	c.n = 2;
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), 0);
	ck_assert_uint_eq(d.n, 2);
	lg_dataset_fini(&d);
	/* nothing usable, a binary file, a missing file: errors that say so */
	c = cfg_of(LG_DATA_PROMPTS, write_tmp("e.txt", "\n \n", 3), 10);
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "no prompts"));
	c = cfg_of(LG_DATA_PROMPTS, write_tmp("b.bin", "a\0b\n", 4), 10);
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "NUL"));
	c = cfg_of(LG_DATA_PROMPTS, "/nonexistent/prompts.txt", 10);
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), EPMOE_EIO);
	ck_assert_ptr_nonnull(strstr(err, "/nonexistent/prompts.txt"));
	c = cfg_of(LG_DATA_PROMPTS, tmpdir, 10);
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), EPMOE_EINVAL);
	c = cfg_of(LG_DATA_PROMPTS, NULL, 10);
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), EPMOE_EINVAL);
}
END_TEST

START_TEST(sharegpt_takes_first_user_turn_and_reply_length)
{
	const char text[] =
	        "[{\"id\": \"a\", \"conversations\": ["
	        "  {\"from\": \"human\", \"value\": \"one two three four five\"},"
	        "  {\"from\": \"gpt\", \"value\": \"a b c d e f g\"},"
	        "  {\"from\": \"human\", \"value\": \"later turn\"}]},"
	        " {\"id\": \"b\", \"conversation\": ["
	        "  {\"role\": \"user\", \"content\": \"six seven eight nine\"},"
	        "  {\"role\": \"assistant\", \"content\": \"h i j k l\"}]},"
	        " {\"id\": \"no reply\", \"conversations\": ["
	        "  {\"from\": \"human\", \"value\": \"alone here with no answer\"}]},"
	        " {\"id\": \"short\", \"conversations\": ["
	        "  {\"from\": \"human\", \"value\": \"hi\"},"
	        "  {\"from\": \"gpt\", \"value\": \"x y z w v\"}]},"
	        " {\"id\": \"system first\", \"conversations\": ["
	        "  {\"from\": \"gpt\", \"value\": \"welcome\"},"
	        "  {\"from\": \"human\", \"value\": \"p q r s t\"},"
	        "  {\"from\": \"gpt\", \"value\": \"m n o p\"}]},"
	        " {\"id\": \"bad\", \"conversations\": 7},"
	        " 12]";
	struct lg_data_cfg c;
	struct lg_dataset d;
	char err[256];

	mk_tmpdir();
	c = cfg_of(LG_DATA_SHAREGPT, write_tmp("s.json", text, sizeof(text) - 1),
	        100);
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), 0);
	ck_assert_uint_eq(d.n, 3);
	ck_assert_uint_eq(d.skipped, 4);
	ck_assert_str_eq(d.items[0].prompt, "one two three four five");
	ck_assert_uint_eq(d.items[0].prompt_len, 5);
	ck_assert_uint_eq(d.items[0].output_len, 7);
	ck_assert_str_eq(d.items[1].prompt, "six seven eight nine");
	ck_assert_uint_eq(d.items[1].output_len, 5);
	ck_assert_str_eq(d.items[2].prompt, "p q r s t");
	ck_assert_uint_eq(d.items[2].output_len, 4);
	lg_dataset_fini(&d);
	/* --output-len overrides the replies */
	c.output_len_set = 1;
	c.output_len = 9;
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), 0);
	ck_assert_uint_eq(d.items[0].output_len, 9);
	lg_dataset_fini(&d);
	/* without a counter, words x tokens per word */
	c.output_len_set = 0;
	c.count = NULL;
	c.tokens_per_word = 2;
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), 0);
	ck_assert_uint_eq(d.items[0].prompt_len, 10);
	ck_assert_uint_eq(d.items[0].output_len, 14);
	lg_dataset_fini(&d);
	/* not JSON, not an array, nothing usable */
	c = cfg_of(LG_DATA_SHAREGPT, write_tmp("x.json", "[{\"a\": ", 7), 10);
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "not JSON"));
	c = cfg_of(LG_DATA_SHAREGPT, write_tmp("o.json", "{\"a\": 1}", 8), 10);
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "array"));
	c = cfg_of(LG_DATA_SHAREGPT, write_tmp("n.json", "[1, 2]", 6), 10);
	ck_assert_int_eq(lg_dataset_load(&c, &d, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "no usable"));
}
END_TEST

START_TEST(kjv_sharegpt_sample_loads_whole)
{
	struct lg_data_cfg c = cfg_of(LG_DATA_SHAREGPT,
	        "deploy/loadtest/kjv-sharegpt.json", 1000);
	struct lg_dataset d;
	char err[256];
	double out = 0;

	ck_assert_msg(lg_dataset_load(&c, &d, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(d.n, 100);
	ck_assert_uint_eq(d.skipped, 0);
	for (size_t i = 0; i < d.n; i++) {
		ck_assert(strncmp(d.items[i].prompt, "Continue the text: ", 19) == 0);
		out += d.items[i].output_len;
	}
	/* one to four verses of about 30 words */
	ck_assert_msg(out / d.n > 20 && out / d.n < 200, "mean reply %g", out / d.n);
	lg_dataset_fini(&d);
}
END_TEST

/* ---- SLOs and statistics ---- */

START_TEST(slo_list_parses_units_and_rejects_junk)
{
	struct lg_slo s;
	char err[160];

	ck_assert_int_eq(lg_slo_parse("ttft=500ms,tpot=50ms,e2e=2s", &s, err,
	        sizeof(err)), 0);
	ck_assert_double_eq_tol(s.ttft, 0.5, 1e-12);
	ck_assert_double_eq_tol(s.tpot, 0.05, 1e-12);
	ck_assert_double_eq_tol(s.e2el, 2, 1e-12);
	/* vLLM's spelling: KEY:VALUE in milliseconds */
	ck_assert_int_eq(lg_slo_parse("ttft:250,e2el:1500", &s, err, sizeof(err)),
	        0);
	ck_assert_double_eq_tol(s.ttft, 0.25, 1e-12);
	ck_assert_double_eq_tol(s.e2el, 1.5, 1e-12);
	ck_assert(isnan(s.tpot));
	ck_assert_int_eq(lg_slo_parse("tpot=800us", &s, err, sizeof(err)), 0);
	ck_assert_double_eq_tol(s.tpot, 0.0008, 1e-12);
	ck_assert_int_eq(lg_slo_parse("ttft=5h", &s, err, sizeof(err)),
	        EPMOE_EINVAL);
	ck_assert_int_eq(lg_slo_parse("speed=5", &s, err, sizeof(err)),
	        EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "speed"));
	ck_assert_int_eq(lg_slo_parse("ttft=0", &s, err, sizeof(err)),
	        EPMOE_EINVAL);
	ck_assert_int_eq(lg_slo_parse("ttft", &s, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_int_eq(lg_slo_parse("", &s, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_int_eq(lg_slo_parse("ttft=-3ms", &s, err, sizeof(err)),
	        EPMOE_EINVAL);
}
END_TEST

/* A finished request sent at t0 with the first chunk after ttft and n
 * chunks gap apart. */
static void
rec_ok(struct lg_rec *r, double t0, double ttft, int n, double gap)
{
	memset(r, 0, sizeof(*r));
	r->started = 1;
	r->t_sched = t0;
	r->t0 = t0;
	for (int i = 0; i < n; i++)
		lg_rec_chunk(r, t0 + ttft + i * gap);
	r->t_end = t0 + ttft + (n - 1) * gap;
	r->ok = 1;
	r->out_tokens = (uint32_t)n;
	r->in_tokens = 10;
}

START_TEST(summary_gives_vllm_definitions_goodput_and_errors)
{
	struct lg_rec recs[6];
	struct lg_result res;
	struct lg_slo slo = { 0.2, NAN, NAN };
	cJSON *o;

	/* four requests: TTFT 0.1/0.1/0.3/0.3 s, 5 chunks 0.05 s apart */
	rec_ok(&recs[0], 0.0, 0.1, 5, 0.05);
	rec_ok(&recs[1], 0.5, 0.1, 5, 0.05);
	rec_ok(&recs[2], 1.0, 0.3, 5, 0.05);
	rec_ok(&recs[3], 1.5, 0.3, 5, 0.05);
	/* a 429 and one never sent */
	memset(&recs[4], 0, sizeof(recs[4]));
	recs[4].started = 1;
	recs[4].t0 = recs[4].t_sched = 2.0;
	recs[4].t_end = 2.01;
	lg_rec_fail(&recs[4], "http_429", "busy");
	memset(&recs[5], 0, sizeof(recs[5]));
	ck_assert_int_eq(lg_summarize(recs, 6, 1, &slo, &res), 0);
	ck_assert_int_eq(res.num_prompts, 6);
	ck_assert_int_eq(res.started, 5);
	ck_assert_int_eq(res.completed, 4);
	ck_assert_int_eq(res.failed, 1);
	ck_assert_int_eq(res.good, 2);
	/* the first send to the last end: 0 .. 1.5 + 0.3 + 0.2 */
	ck_assert_double_eq_tol(res.duration, 2.01, 1e-9);
	ck_assert_double_eq_tol(res.request_throughput, 4 / 2.01, 1e-9);
	ck_assert_double_eq_tol(res.request_goodput, 2 / 2.01, 1e-9);
	ck_assert_double_eq_tol(res.output_throughput, 20 / 2.01, 1e-9);
	ck_assert_uint_eq(res.total_input_tokens, 40);
	ck_assert_uint_eq(res.ttft.n, 4);
	ck_assert_double_eq_tol(res.ttft.mean, 0.2, 1e-12);
	ck_assert_double_eq_tol(res.ttft.median, 0.2, 1e-12);
	ck_assert_double_eq_tol(res.ttft.std, 0.1, 1e-12);
	/* numpy.percentile([.1,.1,.3,.3], 90) = 0.3; 99 too */
	ck_assert_double_eq_tol(res.ttft.p90, 0.3, 1e-12);
	/* TPOT = (E2E - TTFT) / (n - 1) = 0.05; 16 gaps of 0.05 */
	ck_assert_double_eq_tol(res.tpot.mean, 0.05, 1e-12);
	ck_assert_uint_eq(res.itl.n, 16);
	ck_assert_double_eq_tol(res.itl.p99, 0.05, 1e-12);
	ck_assert_double_eq_tol(res.e2el.median, 0.4, 1e-12);
	ck_assert_uint_eq(res.n_err_kinds, 1);
	ck_assert_str_eq(res.errors[0].kind, "http_429");
	ck_assert_str_eq(res.errors[0].first_msg, "busy");
	ck_assert_int_eq(res.max_concurrent_requests, 2);
	/* the JSON: vLLM's names, milliseconds */
	ck_assert_ptr_nonnull(o = cJSON_CreateObject());
	ck_assert_int_eq(lg_result_json(&res, recs, 6, 1, o), 0);
	ck_assert_double_eq_tol(cJSON_GetObjectItem(o, "mean_ttft_ms")->valuedouble,
	        200, 1e-9);
	ck_assert_double_eq_tol(cJSON_GetObjectItem(o, "median_tpot_ms")->valuedouble,
	        50, 1e-9);
	ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(o,
	        "errors_by_kind"), "http_429")->valueint, 1);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "ttfts")), 5);
	ck_assert(cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "ttfts"),
	        4)));
	ck_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "errors"),
	        4)->valuestring, "busy");
	cJSON_Delete(o);
	/* no SLO: goodput is null */
	ck_assert_int_eq(lg_summarize(recs, 6, 1, NULL, &res), 0);
	ck_assert(isnan(res.request_goodput));
	ck_assert_ptr_nonnull(o = cJSON_CreateObject());
	ck_assert_int_eq(lg_result_json(&res, recs, 6, 0, o), 0);
	ck_assert(cJSON_IsNull(cJSON_GetObjectItem(o, "request_goodput")));
	ck_assert_ptr_null(cJSON_GetObjectItem(o, "ttfts"));
	cJSON_Delete(o);
	for (int i = 0; i < 6; i++)
		lg_rec_fini(&recs[i]);
}
END_TEST

START_TEST(tpot_and_e2e_objectives_count_as_vllm_does)
{
	struct lg_rec recs[3];
	struct lg_result res;
	struct lg_slo slo = { NAN, 0.03, 0.5 };

	rec_ok(&recs[0], 0, 0.05, 10, 0.02); /* tpot .02, e2e .23: good */
	rec_ok(&recs[1], 0, 0.05, 10, 0.04); /* tpot .04: bad */
	rec_ok(&recs[2], 0, 0.6, 1, 0);      /* one token: tpot 0, e2e .6: bad */
	ck_assert_int_eq(lg_summarize(recs, 3, 1, &slo, &res), 0);
	ck_assert_int_eq(res.good, 1);
	ck_assert_uint_eq(res.tpot.n, 2); /* one-token answers have no TPOT */
	slo.e2el = NAN;
	ck_assert_int_eq(lg_summarize(recs, 3, 1, &slo, &res), 0);
	ck_assert_int_eq(res.good, 2);
	for (int i = 0; i < 3; i++)
		lg_rec_fini(&recs[i]);
}
END_TEST

START_TEST(confidence_interval_uses_student_t)
{
	const double v[] = { 1, 2, 3, 4, 5 };
	struct lg_ci c = lg_ci95(v, 5);

	ck_assert_double_eq_tol(c.mean, 3, 1e-12);
	ck_assert_double_eq_tol(c.std, sqrt(2.5), 1e-12);
	/* t(0.975, 4) = 2.776 */
	ck_assert_double_eq_tol(c.hi - c.mean, 2.776 * sqrt(2.5) / sqrt(5), 1e-9);
	ck_assert_double_eq_tol(c.mean - c.lo, c.hi - c.mean, 1e-12);
	c = lg_ci95(v, 1);
	ck_assert(c.lo == 1 && c.hi == 1);
	/* beyond the table: within 0.002 of the exact quantiles */
	ck_assert_double_eq_tol(lg_t975(40), 2.0211, 0.002);
	ck_assert_double_eq_tol(lg_t975(60), 2.0003, 0.002);
	ck_assert_double_eq_tol(lg_t975(120), 1.9799, 0.002);
	ck_assert_double_eq_tol(lg_t975(1), 12.706, 1e-3);
}
END_TEST

/* ---- a scripted OpenAI-compatible server ---- */

/* Prompts say what to do: "fast" (TTFT 20 ms), "slow" (TTFT 1500 ms), both
 * then 8 chunks 10 ms apart; "e429" (a 429), "estream" (an error event
 * after one chunk), "hang" (no answer for 3 s).  /health and /tokenize
 * answer 404, as on servers that have neither. */
#define SRV_MAX_CONN 128

struct srv {
	int fd, port;
	pthread_t th;
	atomic_int stop;
	pthread_t conn[SRV_MAX_CONN];
	int n_conn;
	int no_models;          /* answer /v1/models with a 404 */
	atomic_int n_completions;
};

static void
ms_sleep(struct srv *s, int ms)
{
	for (int i = 0; i < ms / 10 && !atomic_load(&s->stop); i++)
		usleep(10000);
}

static void
say(int fd, const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > 0 && write(fd, buf, (size_t)n) < 0)
		return;
}

struct conn {
	struct srv *s;
	int fd;
};

static void *
conn_thread(void *arg)
{
	struct conn *c = arg;
	struct srv *s = c->s;
	int fd = c->fd;
	char req[65536];
	size_t len = 0;
	char *body, *hdr_end;
	long clen = 0;

	free(c);
	/* the whole request: headers, then Content-Length bytes */
	for (;;) {
		struct pollfd p = { fd, POLLIN, 0 };
		ssize_t r;
		if (poll(&p, 1, 2000) <= 0)
			goto out;
		if ((r = read(fd, req + len, sizeof(req) - 1 - len)) <= 0)
			goto out;
		len += (size_t)r;
		req[len] = '\0';
		if ((hdr_end = strstr(req, "\r\n\r\n")) != NULL) {
			char *cl = strcasestr(req, "Content-Length:");
			clen = cl ? atol(cl + 15) : 0;
			if ((size_t)(hdr_end + 4 - req) + (size_t)clen <= len)
				break;
		}
		if (len >= sizeof(req) - 1)
			goto out;
	}
	body = hdr_end + 4;
	if (strncmp(req, "GET /v1/models ", 15) == 0 && !s->no_models) {
		const char *j = "{\"object\":\"list\",\"data\":[{\"id\":\"scripted\","
		        "\"object\":\"model\"}]}";
		say(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
		        "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
		        strlen(j), j);
	} else if (strncmp(req, "POST /v1/completions ", 21) == 0) {
		cJSON *j = cJSON_Parse(body);
		const cJSON *pr = cJSON_GetObjectItem(j, "prompt");
		const char *p = cJSON_IsString(pr) ? pr->valuestring : "";
		atomic_fetch_add(&s->n_completions, 1);
		if (strcmp(p, "e429") == 0) {
			const char *e = "{\"error\":{\"message\":\"too busy\","
			        "\"type\":\"rate_limit\"}}";
			say(fd, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: "
			        "application/json\r\nContent-Length: %zu\r\n"
			        "Connection: close\r\n\r\n%s", strlen(e), e);
		} else if (strcmp(p, "hang") == 0) {
			ms_sleep(s, 3000);
		} else {
			say(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
			        "Connection: close\r\n\r\n");
			ms_sleep(s, strcmp(p, "slow") == 0 ? 1500 : 20);
			for (int i = 0; i < 8; i++) {
				if (i > 0)
					ms_sleep(s, 10);
				if (i == 1 && strcmp(p, "estream") == 0) {
					say(fd, "data: {\"error\":{\"message\":\"expert worker "
					        "lost\",\"type\":\"server_error\"}}\n\n");
					break;
				}
				say(fd, "data: {\"id\":\"c\",\"object\":\"text_completion\","
				        "\"choices\":[{\"index\":0,\"text\":\" w%d\","
				        "\"finish_reason\":%s}]}\n\n", i,
				        i == 7 ? "\"length\"" : "null");
			}
			if (strcmp(p, "estream") != 0)
				say(fd, "data: {\"id\":\"c\",\"object\":\"text_completion\","
				        "\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
				        "\"completion_tokens\":8,\"total_tokens\":11}}\n\n"
				        "data: [DONE]\n\n");
		}
		cJSON_Delete(j);
	} else {
		const char *e = "{\"error\":{\"message\":\"no such route\"}}";
		say(fd, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
		        "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
		        strlen(e), e);
	}
out:
	close(fd);
	return NULL;
}

static void *
accept_thread(void *arg)
{
	struct srv *s = arg;

	while (!atomic_load(&s->stop)) {
		struct pollfd p = { s->fd, POLLIN, 0 };
		struct conn *c;
		int fd;
		if (poll(&p, 1, 100) <= 0)
			continue;
		if ((fd = accept(s->fd, NULL, NULL)) < 0)
			continue;
		if (s->n_conn == SRV_MAX_CONN || (c = malloc(sizeof(*c))) == NULL) {
			close(fd);
			continue;
		}
		c->s = s;
		c->fd = fd;
		if (pthread_create(&s->conn[s->n_conn], NULL, conn_thread, c) != 0) {
			free(c);
			close(fd);
			continue;
		}
		s->n_conn++;
	}
	return NULL;
}

static void
srv_start(struct srv *s)
{
	struct sockaddr_in a;
	socklen_t al = sizeof(a);
	int one = 1;

	memset(s, 0, sizeof(*s));
	ck_assert_int_ge(s->fd = socket(AF_INET, SOCK_STREAM, 0), 0);
	setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(s->fd, 64), 0);
	ck_assert_int_eq(getsockname(s->fd, (struct sockaddr *)&a, &al), 0);
	s->port = ntohs(a.sin_port);
	ck_assert_int_eq(pthread_create(&s->th, NULL, accept_thread, s), 0);
}

static void
srv_stop(struct srv *s)
{
	atomic_store(&s->stop, 1);
	pthread_join(s->th, NULL);
	for (int i = 0; i < s->n_conn; i++)
		pthread_join(s->conn[i], NULL);
	close(s->fd);
}

static int
run_bench(const char *a0, ...)
{
	char *argv[48];
	int argc = 0;
	va_list ap;

	argv[argc++] = (char *)a0;
	va_start(ap, a0);
	for (char *x; (x = va_arg(ap, char *)) != NULL && argc < 47;)
		argv[argc++] = x;
	va_end(ap);
	argv[argc] = NULL;
	return bench_server(argc, argv);
}

static cJSON *
read_json(const char *path)
{
	size_t len;
	char *text = tu_read(path, &len);
	cJSON *j;

	ck_assert_msg(text != NULL, "no %s", path);
	j = cJSON_Parse(text);
	free(text);
	ck_assert_msg(j != NULL, "%s is not JSON", path);
	return j;
}

static double
num(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	ck_assert_msg(cJSON_IsNumber(v), "%s is not a number", k);
	return v->valuedouble;
}

START_TEST(goodput_on_a_scripted_server_counts_the_fast_half)
{
	struct srv s;
	char url[64], *prompts = NULL, out[160];
	const char *pf;
	cJSON *j, *p;
	size_t n = 0, cap = 0;
	FILE *m = open_memstream(&prompts, &cap);

	/* 6 fast and 6 slow requests, 4 at a time */
	ck_assert_ptr_nonnull(m);
	for (int i = 0; i < 12; i++)
		fprintf(m, "%s\n", i % 2 ? "slow" : "fast");
	fclose(m);
	n = strlen(prompts);
	mk_tmpdir();
	pf = write_tmp("prompts.txt", prompts, n);
	free(prompts);
	snprintf(out, sizeof(out), "%s/r.json", tmpdir);
	srv_start(&s);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", s.port);
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stdout));
	ck_assert_int_eq(run_bench("server", "--server", url, "--prompt-file", pf,
	        "--concurrency", "4", "--requests", "12", "--slo", "ttft=750ms",
	        "--timeout", "20", "--json", out, "-q", NULL), 0);
	srv_stop(&s);
	ck_assert_int_eq(atomic_load(&s.n_completions), 12);
	j = read_json(out);
	p = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "points"), 0);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq((int)num(p, "completed"), 12);
	ck_assert_int_eq((int)num(p, "failed"), 0);
	/* TTFT 20 ms vs 1500 ms against a 750 ms objective: half are good
	 * (a fast one would have to be 37 times late to count as slow: a
	 * loaded machine once stretched 20 ms past 200 ms) */
	ck_assert_int_eq((int)num(p, "good_requests"), 6);
	ck_assert_double_eq_tol(num(p, "request_goodput"), 6 / num(p, "duration"),
	        1e-9);
	ck_assert_double_eq_tol(num(p, "request_throughput"),
	        12 / num(p, "duration"), 1e-9);
	/* usage: 8 tokens each */
	ck_assert_int_eq((int)num(p, "total_output_tokens"), 96);
	/* the scripted latencies, with room for a loaded machine */
	ck_assert_msg(num(p, "p99_ttft_ms") >= 1500, "p99 ttft %g",
	        num(p, "p99_ttft_ms"));
	ck_assert_msg(num(p, "median_ttft_ms") >= 20, "median ttft %g",
	        num(p, "median_ttft_ms"));
	ck_assert_msg(num(p, "median_itl_ms") >= 9 && num(p, "median_itl_ms") < 100,
	        "median itl %g", num(p, "median_itl_ms"));
	ck_assert_msg(num(p, "mean_tpot_ms") >= 9 && num(p, "mean_tpot_ms") < 100,
	        "mean tpot %g", num(p, "mean_tpot_ms"));
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(p,
	        "errors_by_kind")), 0);
	cJSON_Delete(j);
}
END_TEST

START_TEST(errors_are_counted_by_kind)
{
	struct srv s;
	char url[64], out[160];
	const char text[] = "e429\nestream\nhang\nfast\n";
	const char *pf;
	cJSON *j, *p, *ek;

	mk_tmpdir();
	pf = write_tmp("prompts.txt", text, sizeof(text) - 1);
	snprintf(out, sizeof(out), "%s/r.json", tmpdir);
	srv_start(&s);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", s.port);
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stdout));
	ck_assert_int_eq(run_bench("server", "--server", url, "--prompt-file", pf,
	        "--concurrency", "4", "--requests", "4", "--timeout", "1",
	        "--json", out, "-q", NULL), 0);
	srv_stop(&s);
	j = read_json(out);
	/* no --slo: the default objectives, said to be the default */
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "slo"),
	        "default")));
	ck_assert_double_eq_tol(num(cJSON_GetObjectItem(j, "slo"), "tpot_ms"), 100,
	        1e-9);
	p = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "points"), 0);
	ck_assert_int_eq((int)num(p, "good_requests"), 1);
	ck_assert_int_eq((int)num(p, "completed"), 1);
	ck_assert_int_eq((int)num(p, "failed"), 3);
	ek = cJSON_GetObjectItem(p, "errors_by_kind");
	ck_assert_int_eq((int)num(ek, "http_429"), 1);
	ck_assert_int_eq((int)num(ek, "stream_error"), 1);
	ck_assert_int_eq((int)num(ek, "timeout"), 1);
	ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(p, "first_errors"),
	        "http_429")->valuestring, "too busy");
	ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(p, "first_errors"),
	        "stream_error")->valuestring, "expert worker lost");
	cJSON_Delete(j);
}
END_TEST

START_TEST(a_server_without_models_list_works_with_model_given)
{
	struct srv s;
	char url[64], out[160];
	const char text[] = "fast\n";
	const char *pf;
	cJSON *j;

	mk_tmpdir();
	pf = write_tmp("prompts.txt", text, sizeof(text) - 1);
	snprintf(out, sizeof(out), "%s/r.json", tmpdir);
	srv_start(&s);
	s.no_models = 1;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", s.port);
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stdout));
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stderr));
	/* no model list and no --model: nothing to ask for */
	ck_assert_int_eq(run_bench("server", "--server", url, "--prompt-file", pf,
	        "--requests", "2", "-q", NULL), 1);
	ck_assert_int_eq(run_bench("server", "--server", url, "--prompt-file", pf,
	        "--requests", "2", "--model", "mine", "--json", out, "-q", NULL), 0);
	srv_stop(&s);
	j = read_json(out);
	ck_assert_str_eq(cJSON_GetObjectItem(j, "model_id")->valuestring, "mine");
	ck_assert_int_eq((int)num(cJSON_GetArrayItem(cJSON_GetObjectItem(j,
	        "points"), 0), "completed"), 2);
	cJSON_Delete(j);
}
END_TEST

/* The schema: key, and what it must be. */
enum jt { J_NUM, J_STR, J_OBJ, J_ARR, J_NUM_OR_NULL, J_NUM_OR_STR };

static void
want(const cJSON *o, const char *k, enum jt t)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	int ok = 0;

	switch (t) {
	case J_NUM: ok = cJSON_IsNumber(v); break;
	case J_STR: ok = cJSON_IsString(v); break;
	case J_OBJ: ok = cJSON_IsObject(v); break;
	case J_ARR: ok = cJSON_IsArray(v); break;
	case J_NUM_OR_NULL: ok = cJSON_IsNumber(v) || cJSON_IsNull(v); break;
	case J_NUM_OR_STR: ok = cJSON_IsNumber(v) || cJSON_IsString(v); break;
	}
	ck_assert_msg(ok, "JSON field %s missing or of the wrong type", k);
}

START_TEST(json_results_follow_the_schema_for_a_rate_sweep_with_repeats)
{
	static const char *const vllm_metrics[] = { "ttft", "tpot", "itl", "e2el" };
	static const char *const stats[] = { "mean", "median", "std", "p90", "p99" };
	struct srv s;
	char url[64], out[160];
	const char text[] = "fast\n";
	const char *pf;
	cJSON *j, *pts, *p, *m, *ci;

	mk_tmpdir();
	pf = write_tmp("prompts.txt", text, sizeof(text) - 1);
	snprintf(out, sizeof(out), "%s/r.json", tmpdir);
	srv_start(&s);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", s.port);
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stdout));
	ck_assert_int_eq(run_bench("server", "--server", url, "--prompt-file", pf,
	        "--rates", "50,inf", "--burstiness", "0.5", "--requests", "6",
	        "--repeat", "2", "--slo", "ttft=1s,tpot=100ms", "--save-detailed",
	        "--label", "schema", "--json", out, "-q", NULL), 0);
	srv_stop(&s);
	j = read_json(out);
	/* the document: who, what, where */
	want(j, "epmoe_bench", J_STR);
	want(j, "schema_version", J_NUM);
	want(j, "date", J_STR);
	want(j, "git_commit", J_STR);
	ck_assert(strlen(cJSON_GetObjectItem(j, "git_commit")->valuestring) > 0);
	want(j, "backend", J_STR);
	want(j, "base_url", J_STR);
	want(j, "model_id", J_STR);
	ck_assert_str_eq(cJSON_GetObjectItem(j, "model_id")->valuestring, "scripted");
	ck_assert_str_eq(cJSON_GetObjectItem(j, "label")->valuestring, "schema");
	want(j, "machine", J_OBJ);
	m = cJSON_GetObjectItem(j, "machine");
	want(m, "hostname", J_STR);
	want(m, "cpu", J_STR);
	want(m, "cpus", J_NUM);
	want(m, "mem_total_bytes", J_NUM);
	want(m, "kernel", J_STR);
	want(j, "dataset", J_OBJ);
	want(cJSON_GetObjectItem(j, "dataset"), "name", J_STR);
	want(j, "settings", J_OBJ);
	want(j, "slo", J_OBJ);
	ck_assert_double_eq_tol(num(cJSON_GetObjectItem(j, "slo"), "ttft_ms"),
	        1000, 1e-9);
	want(j, "points", J_ARR);
	pts = cJSON_GetObjectItem(j, "points");
	ck_assert_int_eq(cJSON_GetArraySize(pts), 2);
	/* the load shape, as vLLM names it */
	p = cJSON_GetArrayItem(pts, 0);
	ck_assert_double_eq_tol(num(p, "request_rate"), 50, 1e-12);
	ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(pts, 1),
	        "request_rate")->valuestring, "inf");
	cJSON_ArrayForEach(p, pts) {
		want(p, "label", J_STR);
		want(p, "mode", J_STR);
		want(p, "request_rate", J_NUM_OR_STR);
		ck_assert_double_eq_tol(num(p, "burstiness"), 0.5, 1e-12);
		ck_assert(cJSON_IsNull(cJSON_GetObjectItem(p, "max_concurrency")));
		ck_assert_int_eq((int)num(p, "num_prompts"), 6);
		/* vLLM's result fields (means over the two runs) */
		for (const char *const *k = lg_result_fields; *k; k++)
			want(p, *k, J_NUM_OR_NULL);
		for (int a = 0; a < 4; a++)
			for (int b = 0; b < 5; b++) {
				char key[48];
				snprintf(key, sizeof(key), "%s_%s_ms", stats[b], vllm_metrics[a]);
				want(p, key, J_NUM);
			}
		ck_assert_int_eq((int)num(p, "completed"), 6);
		want(p, "errors_by_kind", J_OBJ);
		/* repeats: each run, and a 95% interval around each mean */
		ck_assert_int_eq((int)num(p, "repeat"), 2);
		want(p, "runs", J_ARR);
		ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(p, "runs")), 2);
		ci = cJSON_GetObjectItem(p, "ci95");
		want(ci, "request_throughput", J_OBJ);
		m = cJSON_GetObjectItem(ci, "request_throughput");
		ck_assert(num(m, "lo") <= num(m, "mean") && num(m, "mean") <= num(m, "hi"));
		ck_assert_double_eq_tol(num(m, "mean"), num(p, "request_throughput"),
		        1e-9);
		/* --save-detailed: per-request arrays in each run */
		m = cJSON_GetArrayItem(cJSON_GetObjectItem(p, "runs"), 0);
		want(m, "ttfts", J_ARR);
		want(m, "itls", J_ARR);
		want(m, "input_lens", J_ARR);
		want(m, "output_lens", J_ARR);
		want(m, "errors", J_ARR);
		ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(m, "ttfts")), 6);
	}
	cJSON_Delete(j);
}
END_TEST

START_TEST(bad_load_options_are_usage_errors)
{
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stderr));
	ck_assert_int_eq(run_bench("server", "--rates", "1,x", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--rates", "0", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--rate", "-2", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--concurrency", "1.5", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--concurrency", "4", "--rate", "2",
	        NULL), 2);
	ck_assert_int_eq(run_bench("server", "--concurrency", "4",
	        "--max-concurrency", "2", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--burstiness", "0", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--slo", "ttft=fast", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--repeat", "0", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--dataset", "sharegpt", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--dataset", "csv", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--range-ratio", "1", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--json", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--extra-body", "[1]", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--extra-body", "{\"a\":", NULL), 2);
	ck_assert_int_eq(run_bench("server", "--server", "tcp://127.0.0.1:9",
	        "--extra-body", "{}", NULL), 2);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("loadgen");
	TCase *ta = tcase_create("arrivals");
	TCase *td = tcase_create("datasets");
	TCase *ts = tcase_create("statistics");
	TCase *tr = tcase_create("scripted server");

	tcase_add_test(ta, poisson_gaps_have_the_asked_mean_rate_and_unit_cv);
	tcase_add_test(ta, gamma_burstiness_sets_the_cv_and_keeps_the_rate);
	tcase_add_test(ta, poisson_counts_in_windows_have_variance_equal_to_mean);
	tcase_add_test(ta, schedule_is_seeded_cumulative_and_starts_at_zero);
	tcase_add_test(ta, infinite_rate_sends_everything_at_once_and_bad_values_fail);
	tcase_add_test(ta, gamma_sampler_matches_mean_and_variance);
	tcase_add_test(td, random_dataset_draws_lengths_in_range_deterministically);
	tcase_add_test(td, prompts_file_keeps_nonblank_lines_in_order);
	tcase_add_test(td, sharegpt_takes_first_user_turn_and_reply_length);
	tcase_add_test(td, kjv_sharegpt_sample_loads_whole);
	tcase_add_test(ts, slo_list_parses_units_and_rejects_junk);
	tcase_add_test(ts, summary_gives_vllm_definitions_goodput_and_errors);
	tcase_add_test(ts, tpot_and_e2e_objectives_count_as_vllm_does);
	tcase_add_test(ts, confidence_interval_uses_student_t);
	tcase_add_test(tr, goodput_on_a_scripted_server_counts_the_fast_half);
	tcase_add_test(tr, errors_are_counted_by_kind);
	tcase_add_test(tr, a_server_without_models_list_works_with_model_given);
	tcase_add_test(tr, json_results_follow_the_schema_for_a_rate_sweep_with_repeats);
	tcase_add_test(tr, bad_load_options_are_usage_errors);
	tcase_set_timeout(ta, 120);
	tcase_set_timeout(tr, 120);
	tcase_add_checked_fixture(td, NULL, rm_tmpdir);
	tcase_add_checked_fixture(tr, NULL, rm_tmpdir);
	suite_add_tcase(s, ta);
	suite_add_tcase(s, td);
	suite_add_tcase(s, ts);
	suite_add_tcase(s, tr);
	return tu_run(s);
}
