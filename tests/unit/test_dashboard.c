/* The router's live view: histogram quantiles against a reference, the
 * decisions log (wrap-around, concurrent writers, its JSON), and a real
 * router serving GET /dashboard (the embedded page, self-contained, with
 * its security headers) and the /v1/stats sections the page reads.  The
 * page itself is rendered in Chromium by tests/integration/dashboard.sh. */
#include <check.h>
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>
#include <curl/curl.h>

#include "dashboard.h"
#include "err.h"
#include "rng.h"
#include "serve_util.h"
#include "testutil.h"

START_TEST(quantile_interpolates_inside_buckets_like_prometheus)
{
	const double b[] = { 1, 2, 4 };
	const uint64_t c[] = { 2, 2, 4, 0 }, inf[] = { 0, 0, 0, 5 }, none[4] = { 0 };

	ck_assert_double_eq_tol(dash_hist_quantile(b, c, 4, 0.25), 1, 1e-12);
	ck_assert_double_eq_tol(dash_hist_quantile(b, c, 4, 0.5), 2, 1e-12);
	ck_assert_double_eq_tol(dash_hist_quantile(b, c, 4, 0.9), 3.6, 1e-12);
	ck_assert_double_eq_tol(dash_hist_quantile(b, c, 4, 1.0), 4, 1e-12);
	/* all in +Inf: the last finite bound is all that is known */
	ck_assert_double_eq_tol(dash_hist_quantile(b, inf, 4, 0.5), 4, 1e-12);
	ck_assert(isnan(dash_hist_quantile(b, none, 4, 0.5)));
}
END_TEST

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

START_TEST(quantile_lies_in_the_bucket_of_the_exact_quantile)
{
	/* random latencies: the estimate must fall in the bucket that holds
	 * the exact (sorted-sample) quantile */
	const double b[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
		0.5, 1 };
	enum { NB = 11, N = 5000 };
	static double v[N];
	uint64_t c[NB], s = 3;

	for (int trial = 0; trial < 20; trial++) {
		memset(c, 0, sizeof(c));
		for (int i = 0; i < N; i++) {
			/* log-uniform over 0.5 ms .. 2 s */
			v[i] = 0.0005 * pow(4000, (double)(rng_splitmix64(&s) >> 11) * 0x1.0p-53);
			int k = 0;
			while (k < NB - 1 && v[i] > b[k])
				k++;
			c[k]++;
		}
		qsort(v, N, sizeof(v[0]), cmp_double);
		for (double q = 0.1; q < 0.96; q += 0.2) {
			double exact = v[(int)ceil(q * N) - 1];
			double est = dash_hist_quantile(b, c, NB, q);
			int k = 0;
			while (k < NB - 1 && exact > b[k])
				k++;
			double lo = k == 0 ? 0 : b[k - 1], hi = k < NB - 1 ? b[k] : b[NB - 2];
			ck_assert_msg(est >= lo - 1e-12 && est <= hi + 1e-12,
			        "q %.2f: estimate %g outside [%g, %g] (exact %g)", q, est,
			        lo, hi, exact);
		}
	}
}
END_TEST

struct writer {
	struct dash *d;
	int id;
};

static void *
writer_thread(void *arg)
{
	struct writer *w = arg;
	char detail[64];

	for (int i = 0; i < 100; i++) {
		struct dash_decision x;
		dash_decision_init(&x, "balancer", "move");
		x.layer = w->id;
		x.expert = i;
		snprintf(detail, sizeof(detail), "writer %d entry %d", w->id, i);
		x.detail = detail;
		dash_decision(w->d, &x);
	}
	return NULL;
}

START_TEST(decisions_log_keeps_the_newest_and_shows_them_oldest_first)
{
	struct dash *d;
	pthread_t th[4];
	struct writer w[4];
	struct dash_decision x;
	char longtext[400];

	ck_assert_int_eq(dash_new(&d), 0);
	for (int i = 0; i < 4; i++) {
		w[i].d = d;
		w[i].id = i;
		ck_assert_int_eq(pthread_create(&th[i], NULL, writer_thread, &w[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	ck_assert_uint_eq(dash_decisions_total(d), 400);
	/* long strings are cut, not overflowed; NULL log is a no-op */
	memset(longtext, 'x', sizeof(longtext) - 1);
	longtext[sizeof(longtext) - 1] = '\0';
	dash_decision_init(&x, "prescheduler", longtext);
	x.detail = longtext;
	x.before = 1.5;
	x.after = 1.1;
	dash_decision(d, &x);
	dash_decision(NULL, &x);
	ck_assert_uint_eq(dash_decisions_total(d), 401);
	/* the JSON: the newest DASH_DECISIONS_SHOWN, oldest first */
	{
		cJSON *j = cJSON_CreateObject(), *o, *e, *last = NULL;
		int k = 0;
		dash_decisions_json(d, j);
		o = cJSON_GetObjectItem(j, "decisions");
		ck_assert_int_eq(cJSON_GetObjectItem(o, "total")->valueint, 401);
		ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "entries")),
		        DASH_DECISIONS_SHOWN);
		cJSON_ArrayForEach(e, cJSON_GetObjectItem(o, "entries")) {
			ck_assert_int_eq(cJSON_GetObjectItem(e, "seq")->valueint,
			        401 - DASH_DECISIONS_SHOWN + 1 + k);
			ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(e, "time_unix")));
			last = e;
			k++;
		}
		/* a writer's entry: its fields; "none" fields are null */
		e = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "entries"), 0);
		ck_assert_str_eq(cJSON_GetObjectItem(e, "source")->valuestring, "balancer");
		ck_assert_str_eq(cJSON_GetObjectItem(e, "action")->valuestring, "move");
		ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(e, "layer")));
		ck_assert(cJSON_IsNull(cJSON_GetObjectItem(e, "from_worker")));
		ck_assert(cJSON_IsNull(cJSON_GetObjectItem(e, "before")));
		ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItem(e, "detail")->valuestring,
		        "writer "));
		/* the last: cut strings, numbers kept */
		ck_assert_str_eq(cJSON_GetObjectItem(last, "source")->valuestring,
		        "prescheduler");
		ck_assert_uint_eq(strlen(cJSON_GetObjectItem(last, "action")->valuestring),
		        31);
		ck_assert_uint_lt(strlen(cJSON_GetObjectItem(last, "detail")->valuestring),
		        160);
		ck_assert(cJSON_IsNull(cJSON_GetObjectItem(last, "layer")));
		ck_assert_double_eq(cJSON_GetObjectItem(last, "before")->valuedouble, 1.5);
		ck_assert_double_eq(cJSON_GetObjectItem(last, "after")->valuedouble, 1.1);
		cJSON_Delete(j);
		/* a NULL log gives an empty one */
		j = cJSON_CreateObject();
		dash_decisions_json(NULL, j);
		o = cJSON_GetObjectItem(j, "decisions");
		ck_assert_int_eq(cJSON_GetObjectItem(o, "total")->valueint, 0);
		cJSON_Delete(j);
	}
	dash_free(d);
	dash_free(NULL);
}
END_TEST

/* ---- a real router ---- */

static struct tu_router R;

struct resp {
	char *body;
	size_t len;
	char ctype[128];
	char csp[512];
	long status;
};

static size_t
on_body(char *p, size_t sz, size_t n, void *ud)
{
	struct resp *r = ud;
	char *nb = realloc(r->body, r->len + sz * n + 1);

	if (nb == NULL)
		return 0;
	r->body = nb;
	memcpy(r->body + r->len, p, sz * n);
	r->len += sz * n;
	r->body[r->len] = '\0';
	return sz * n;
}

static void
header_value(const char *line, size_t n, const char *name, char *out,
        size_t size)
{
	size_t k = strlen(name), i = 0;

	if (n <= k || strncasecmp(line, name, k) != 0)
		return;
	line += k;
	n -= k;
	while (n > 0 && *line == ' ') {
		line++;
		n--;
	}
	while (n > 0 && *line != '\r' && *line != '\n' && i + 1 < size) {
		out[i++] = *line++;
		n--;
	}
	out[i] = '\0';
}

static size_t
on_header(char *p, size_t sz, size_t n, void *ud)
{
	struct resp *r = ud;

	header_value(p, sz * n, "Content-Type:", r->ctype, sizeof(r->ctype));
	header_value(p, sz * n, "Content-Security-Policy:", r->csp, sizeof(r->csp));
	return sz * n;
}

static void
get(const char *path, int head, struct resp *r)
{
	CURL *e = curl_easy_init();
	char url[256];

	memset(r, 0, sizeof(*r));
	ck_assert_ptr_nonnull(e);
	snprintf(url, sizeof(url), "http://%s%s", R.http, path);
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_NOBODY, head ? 1L : 0L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
	ck_assert_int_eq(curl_easy_perform(e), CURLE_OK);
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
	curl_easy_cleanup(e);
}

/* Lower-cased copy, for searching the page. */
static char *
lower(const char *s, size_t n)
{
	char *l = malloc(n + 1);

	ck_assert_ptr_nonnull(l);
	for (size_t i = 0; i < n; i++)
		l[i] = (char)tolower((unsigned char)s[i]);
	l[n] = '\0';
	return l;
}

START_TEST(router_serves_the_self_contained_page)
{
	const char *args[] = { "--local", NULL };
	struct resp r;
	char *l;

	ck_assert_msg(tu_router_start(&R, tu_data("mixtral-tiny-f32.gguf"),
	        args) == 0, "router did not start: %s", R.log);
	get("/dashboard", 0, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(r.ctype, "text/html; charset=utf-8");
	/* the page as it was embedded, byte for byte */
	ck_assert_uint_eq(r.len, dash_page_html_len);
	ck_assert_mem_eq(r.body, dash_page_html, r.len);
	/* nothing may be loaded from elsewhere: the browser enforces it */
	ck_assert_ptr_nonnull(strstr(r.csp, "default-src 'none'"));
	ck_assert_ptr_nonnull(strstr(r.csp, "connect-src 'self'"));
	/* and the page asks for nothing: no external script, style, font or
	 * image, no absolute URL at all */
	l = lower(r.body, r.len);
	ck_assert_ptr_null(strstr(l, "http://"));
	ck_assert_ptr_null(strstr(l, "https://"));
	ck_assert_ptr_null(strstr(l, "src="));
	ck_assert_ptr_null(strstr(l, "<link"));
	ck_assert_ptr_null(strstr(l, "@import"));
	ck_assert_ptr_null(strstr(l, "url("));
	ck_assert_ptr_nonnull(strstr(l, "/v1/stats"));
	free(l);
	free(r.body);
	/* HEAD: the headers alone; POST: not allowed */
	get("/dashboard", 1, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_uint_eq(r.len, 0);
	free(r.body);
	{
		long st = 0;
		char *resp = NULL;
		ck_assert_int_eq(tu_http(&R, "POST", "/dashboard", "{}", &st, &resp), 0);
		ck_assert_int_eq(st, 405);
		free(resp);
	}
	ck_assert_int_eq(tu_router_stop(&R), 0);
}
END_TEST

START_TEST(stats_carry_server_latency_and_decisions_sections)
{
	const char *args[] = { "--local", NULL };
	long st = 0;
	char *resp = NULL;
	cJSON *j, *o, *lat, *b, *t;

	ck_assert_msg(tu_router_start(&R, tu_data("mixtral-tiny-f32.gguf"),
	        args) == 0, "router did not start: %s", R.log);
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions",
	        "{\"prompt\": \"In the beginning\", \"max_tokens\": 4, "
	        "\"stream\": true}", &st, &resp), 0);
	ck_assert_int_eq(st, 200);
	free(resp);
	ck_assert_int_eq(tu_http(&R, "GET", "/v1/stats", NULL, &st, &resp), 0);
	ck_assert_int_eq(st, 200);
	ck_assert_ptr_nonnull(j = cJSON_Parse(resp));
	free(resp);
	o = cJSON_GetObjectItem(j, "server");
	ck_assert(cJSON_IsObject(o));
	ck_assert_str_eq(cJSON_GetObjectItem(o, "mode")->valuestring, "local");
	ck_assert(cJSON_IsString(cJSON_GetObjectItem(o, "model")));
	ck_assert(cJSON_GetObjectItem(o, "uptime_s")->valuedouble >= 0);
	ck_assert(cJSON_GetObjectItem(o, "time_unix")->valuedouble > 1.6e9);
	ck_assert_int_eq(cJSON_GetObjectItem(o, "n_layers")->valueint,
	        cJSON_GetArraySize(cJSON_GetObjectItem(j, "expert_tokens")));
	lat = cJSON_GetObjectItem(j, "latency");
	b = cJSON_GetObjectItem(lat, "bounds_s");
	ck_assert(cJSON_IsArray(b) && cJSON_GetArraySize(b) > 3);
	for (const char *const *n = (const char *const[]){ "ttft", "itl", "e2e",
	        "queue", NULL }; *n; n++) {
		double sum = 0;
		const cJSON *c;
		t = cJSON_GetObjectItem(lat, *n);
		ck_assert_msg(cJSON_IsObject(t), "no latency.%s", *n);
		ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(t, "counts")),
		        cJSON_GetArraySize(b) + 1);
		cJSON_ArrayForEach(c, cJSON_GetObjectItem(t, "counts"))
			sum += c->valuedouble;
		ck_assert_double_eq(sum, cJSON_GetObjectItem(t, "count")->valuedouble);
	}
	/* one request: one TTFT, three gaps between four tokens */
	t = cJSON_GetObjectItem(lat, "ttft");
	ck_assert_int_eq(cJSON_GetObjectItem(t, "count")->valueint, 1);
	ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(t, "p50_s")));
	ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(lat, "itl"),
	        "count")->valueint, 3);
	/* nothing decides yet: an empty log, ready for the balancer */
	o = cJSON_GetObjectItem(j, "decisions");
	ck_assert_int_eq(cJSON_GetObjectItem(o, "total")->valueint, 0);
	ck_assert_int_eq(cJSON_GetObjectItem(o, "capacity")->valueint,
	        DASH_DECISIONS_KEPT);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "entries")), 0);
	cJSON_Delete(j);
	ck_assert_int_eq(tu_router_stop(&R), 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("dashboard");
	TCase *tc = tcase_create("core");
	TCase *tr = tcase_create("router");

	tcase_add_test(tc, quantile_interpolates_inside_buckets_like_prometheus);
	tcase_add_test(tc, quantile_lies_in_the_bucket_of_the_exact_quantile);
	tcase_add_test(tc, decisions_log_keeps_the_newest_and_shows_them_oldest_first);
	tcase_add_test(tr, router_serves_the_self_contained_page);
	tcase_add_test(tr, stats_carry_server_latency_and_decisions_sections);
	tcase_set_timeout(tr, 120);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, tr);
	return tu_run(s);
}
