/* Metrics registry: each metric type renders to the exact Prometheus text
 * 0.0.4 expected, labels are escaped, invalid names are refused, and
 * concurrent updates are not lost. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "metrics.h"
#include "testutil.h"

static char *
render(struct metrics *m)
{
	char *text = NULL;
	size_t len = 0;

	ck_assert_int_eq(metrics_render(m, &text, &len), 0);
	ck_assert_ptr_nonnull(text);
	ck_assert_uint_eq(strlen(text), len);
	return text;
}

START_TEST(counter_renders_help_type_and_value)
{
	struct metrics *m;
	struct metrics_family *f;
	char *text;

	ck_assert_int_eq(metrics_new(&m), 0);
	ck_assert_int_eq(metrics_counter(m, "epmoe_requests_total",
	        "Requests served.", NULL, 0, &f), 0);
	text = render(m);
	ck_assert_str_eq(text,
	        "# HELP epmoe_requests_total Requests served.\n"
	        "# TYPE epmoe_requests_total counter\n"
	        "epmoe_requests_total 0\n");
	free(text);
	metrics_inc(metrics_family_series(f));
	metrics_add(metrics_family_series(f), 2.5);
	metrics_add(metrics_family_series(f), -10); /* ignored: counters only go up */
	metrics_add(metrics_family_series(f), NAN);
	ck_assert_double_eq(metrics_value(metrics_family_series(f)), 3.5);
	text = render(m);
	ck_assert_str_eq(text,
	        "# HELP epmoe_requests_total Requests served.\n"
	        "# TYPE epmoe_requests_total counter\n"
	        "epmoe_requests_total 3.5\n");
	free(text);
	metrics_free(m);
}
END_TEST

START_TEST(labelled_series_render_in_creation_order_with_escaping)
{
	static const char *const labels[] = { "method", "path" };
	const char *v1[] = { "GET", "/v1/models" };
	const char *v2[] = { "POST", "a\"b\\c\nd" };
	struct metrics *m;
	struct metrics_family *f;
	struct metrics_series *s1, *s2, *again;
	char *text;

	ck_assert_int_eq(metrics_new(&m), 0);
	ck_assert_int_eq(metrics_counter(m, "http_requests_total",
	        "HTTP requests\nby \\ method.", labels, 2, &f), 0);
	ck_assert_ptr_null(metrics_family_series(f));
	text = render(m);
	ck_assert_str_eq(text,
	        "# HELP http_requests_total HTTP requests\\nby \\\\ method.\n"
	        "# TYPE http_requests_total counter\n");
	free(text);
	ck_assert_int_eq(metrics_series(f, v2, &s2), 0);
	ck_assert_int_eq(metrics_series(f, v1, &s1), 0);
	ck_assert_int_eq(metrics_series(f, v2, &again), 0);
	ck_assert_ptr_eq(s2, again);
	ck_assert_int_eq(metrics_series(f, NULL, &again), EPMOE_EINVAL);
	metrics_inc(s1);
	metrics_inc(s2);
	metrics_inc(s2);
	text = render(m);
	ck_assert_str_eq(text,
	        "# HELP http_requests_total HTTP requests\\nby \\\\ method.\n"
	        "# TYPE http_requests_total counter\n"
	        "http_requests_total{method=\"POST\",path=\"a\\\"b\\\\c\\nd\"} 2\n"
	        "http_requests_total{method=\"GET\",path=\"/v1/models\"} 1\n");
	free(text);
	metrics_free(m);
}
END_TEST

START_TEST(gauge_sets_adds_and_renders_special_values)
{
	static const char *const labels[] = { "worker" };
	const char *w0[] = { "0" }, *w1[] = { "1" }, *w2[] = { "2" };
	struct metrics *m;
	struct metrics_family *f;
	struct metrics_series *a, *b, *c;
	char *text;

	ck_assert_int_eq(metrics_new(&m), 0);
	ck_assert_int_eq(metrics_gauge(m, "epmoe_worker_queue", "Queue depth.",
	        labels, 1, &f), 0);
	ck_assert_int_eq(metrics_series(f, w0, &a), 0);
	ck_assert_int_eq(metrics_series(f, w1, &b), 0);
	ck_assert_int_eq(metrics_series(f, w2, &c), 0);
	metrics_set(a, 7);
	metrics_add(a, -2);
	metrics_set(b, 0.1);
	metrics_set(c, -INFINITY);
	text = render(m);
	ck_assert_str_eq(text,
	        "# HELP epmoe_worker_queue Queue depth.\n"
	        "# TYPE epmoe_worker_queue gauge\n"
	        "epmoe_worker_queue{worker=\"0\"} 5\n"
	        "epmoe_worker_queue{worker=\"1\"} 0.1\n"
	        "epmoe_worker_queue{worker=\"2\"} -Inf\n");
	free(text);
	metrics_set(c, NAN);
	metrics_set(b, 1e-300);
	text = render(m);
	ck_assert_ptr_nonnull(strstr(text, "epmoe_worker_queue{worker=\"2\"} NaN\n"));
	ck_assert_ptr_nonnull(strstr(text, "epmoe_worker_queue{worker=\"1\"} 1e-300\n"));
	free(text);
	metrics_free(m);
}
END_TEST

START_TEST(histogram_renders_cumulative_buckets_sum_and_count)
{
	static const double bounds[] = { 0.01, 0.1, 1 };
	struct metrics *m;
	struct metrics_family *f;
	struct metrics_series *s;
	char *text;

	ck_assert_int_eq(metrics_new(&m), 0);
	ck_assert_int_eq(metrics_histogram(m, "epmoe_ttft_seconds",
	        "Time to first token.", NULL, 0, bounds, 3, &f), 0);
	s = metrics_family_series(f);
	metrics_observe(s, 0.005);
	metrics_observe(s, 0.01);  /* le is inclusive */
	metrics_observe(s, 0.5);
	metrics_observe(s, 3);
	metrics_inc(s);            /* ignored for a histogram */
	metrics_set(s, 100);       /* ignored */
	text = render(m);
	ck_assert_str_eq(text,
	        "# HELP epmoe_ttft_seconds Time to first token.\n"
	        "# TYPE epmoe_ttft_seconds histogram\n"
	        "epmoe_ttft_seconds_bucket{le=\"0.01\"} 2\n"
	        "epmoe_ttft_seconds_bucket{le=\"0.1\"} 2\n"
	        "epmoe_ttft_seconds_bucket{le=\"1\"} 3\n"
	        "epmoe_ttft_seconds_bucket{le=\"+Inf\"} 4\n"
	        "epmoe_ttft_seconds_sum 3.515\n"
	        "epmoe_ttft_seconds_count 4\n");
	free(text);
	metrics_free(m);
}
END_TEST

START_TEST(labelled_histogram_puts_le_last)
{
	static const char *const labels[] = { "policy" };
	const char *v[] = { "ssr" };
	struct metrics *m;
	struct metrics_family *f;
	struct metrics_series *s;
	char *text;

	ck_assert_int_eq(metrics_new(&m), 0);
	ck_assert_int_eq(metrics_histogram(m, "step_seconds", "Step time.",
	        labels, 1, metrics_default_buckets, METRICS_N_DEFAULT_BUCKETS,
	        &f), 0);
	ck_assert_int_eq(metrics_series(f, v, &s), 0);
	metrics_observe(s, 0.2);
	metrics_observe(s, 20);
	text = render(m);
	ck_assert_ptr_nonnull(strstr(text,
	        "step_seconds_bucket{policy=\"ssr\",le=\"0.1\"} 0\n"
	        "step_seconds_bucket{policy=\"ssr\",le=\"0.25\"} 1\n"));
	ck_assert_ptr_nonnull(strstr(text,
	        "step_seconds_bucket{policy=\"ssr\",le=\"10\"} 1\n"
	        "step_seconds_bucket{policy=\"ssr\",le=\"+Inf\"} 2\n"
	        "step_seconds_sum{policy=\"ssr\"} 20.2\n"
	        "step_seconds_count{policy=\"ssr\"} 2\n"));
	free(text);
	metrics_free(m);
}
END_TEST

START_TEST(families_render_in_registration_order)
{
	struct metrics *m;
	char *text;

	ck_assert_int_eq(metrics_new(&m), 0);
	ck_assert_int_eq(metrics_gauge(m, "b_gauge", "B.", NULL, 0, NULL), 0);
	ck_assert_int_eq(metrics_counter(m, "a_total", "A.", NULL, 0, NULL), 0);
	ck_assert_int_eq(metrics_histogram(m, "c_seconds", "", NULL, 0, NULL, 0,
	        NULL), 0);
	text = render(m);
	ck_assert_str_eq(text,
	        "# HELP b_gauge B.\n# TYPE b_gauge gauge\nb_gauge 0\n"
	        "# HELP a_total A.\n# TYPE a_total counter\na_total 0\n"
	        "# HELP c_seconds \n# TYPE c_seconds histogram\n"
	        "c_seconds_bucket{le=\"+Inf\"} 0\nc_seconds_sum 0\nc_seconds_count 0\n");
	free(text);
	metrics_free(m);
}
END_TEST

START_TEST(invalid_names_labels_and_buckets_are_refused)
{
	static const char *const bad_label[] = { "9x" };
	static const char *const reserved[] = { "__name" };
	static const char *const le[] = { "le" };
	static const char *const dup[] = { "a", "a" };
	static const double unsorted[] = { 1, 0.5 };
	static const double inf[] = { 1, INFINITY };
	struct metrics *m;

	ck_assert_int_eq(metrics_new(&m), 0);
	ck_assert_int_eq(metrics_counter(m, "", "", NULL, 0, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(metrics_counter(m, "1abc", "", NULL, 0, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(metrics_counter(m, "a-b", "", NULL, 0, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(metrics_counter(m, "ok:name_1", "", NULL, 0, NULL), 0);
	ck_assert_int_eq(metrics_gauge(m, "ok:name_1", "", NULL, 0, NULL),
	        EPMOE_EINVAL);
	ck_assert_int_eq(metrics_counter(m, "x", "", bad_label, 1, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(metrics_counter(m, "x", "", reserved, 1, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(metrics_counter(m, "x", "", dup, 2, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(metrics_histogram(m, "x", "", le, 1, NULL, 0, NULL),
	        EPMOE_EINVAL);
	ck_assert_int_eq(metrics_counter(m, "x", "", le, 1, NULL), 0);
	ck_assert_int_eq(metrics_histogram(m, "h", "", NULL, 0, unsorted, 2, NULL),
	        EPMOE_EINVAL);
	ck_assert_int_eq(metrics_histogram(m, "h", "", NULL, 0, inf, 2, NULL),
	        EPMOE_EINVAL);
	metrics_free(m);
	metrics_free(NULL);
}
END_TEST

#define N_THREADS 4
#define N_ITERS 20000

static void *
hammer(void *arg)
{
	struct metrics_family **fams = arg;
	static const char *const v[] = { "x" };
	struct metrics_series *c, *h;

	if (metrics_series(fams[0], v, &c) != 0)
		return NULL;
	h = metrics_family_series(fams[1]);
	for (int i = 0; i < N_ITERS; i++) {
		metrics_inc(c);
		metrics_observe(h, 0.5);
	}
	return NULL;
}

START_TEST(concurrent_updates_are_not_lost)
{
	static const char *const labels[] = { "k" };
	static const double bounds[] = { 1 };
	struct metrics_family *fams[2];
	struct metrics_series *c;
	struct metrics *m;
	pthread_t th[N_THREADS];
	char *text, want[128];

	ck_assert_int_eq(metrics_new(&m), 0);
	ck_assert_int_eq(metrics_counter(m, "n_total", "", labels, 1, &fams[0]), 0);
	ck_assert_int_eq(metrics_histogram(m, "h", "", NULL, 0, bounds, 1,
	        &fams[1]), 0);
	for (int i = 0; i < N_THREADS; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, hammer, fams), 0);
	for (int i = 0; i < N_THREADS; i++)
		pthread_join(th[i], NULL);
	ck_assert_int_eq(metrics_series(fams[0], (const char *const[]){ "x" }, &c), 0);
	ck_assert_double_eq(metrics_value(c), N_THREADS * N_ITERS);
	text = render(m);
	snprintf(want, sizeof(want), "n_total{k=\"x\"} %d\n", N_THREADS * N_ITERS);
	ck_assert_ptr_nonnull(strstr(text, want));
	snprintf(want, sizeof(want), "h_bucket{le=\"1\"} %d\n", N_THREADS * N_ITERS);
	ck_assert_ptr_nonnull(strstr(text, want));
	snprintf(want, sizeof(want), "h_sum %d\n", N_THREADS * N_ITERS / 2);
	ck_assert_ptr_nonnull(strstr(text, want));
	free(text);
	metrics_free(m);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, counter_renders_help_type_and_value);
	tcase_add_test(tc, labelled_series_render_in_creation_order_with_escaping);
	tcase_add_test(tc, gauge_sets_adds_and_renders_special_values);
	tcase_add_test(tc, histogram_renders_cumulative_buckets_sum_and_count);
	tcase_add_test(tc, labelled_histogram_puts_le_last);
	tcase_add_test(tc, families_render_in_registration_order);
	tcase_add_test(tc, invalid_names_labels_and_buckets_are_refused);
	tcase_add_test(tc, concurrent_updates_are_not_lost);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
