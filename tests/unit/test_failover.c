/* Failover, end to end: the real epmoe-router with real epmoe-worker
 * processes on 127.0.0.1, 16 concurrent greedy streams over HTTP, and
 * workers killed (SIGKILL) or hung (SIGSTOP) under them:
 *   - every expert on both workers: SIGKILL of one mid-stream fails no
 *     request and changes no token (the outputs equal an undisturbed run
 *     of the same requests); SIGSTOP fails none, no stream stalls longer
 *     than a few deadlines, and after SIGCONT the worker registers again
 *     and takes traffic; under load both copies do work;
 *   - no replicas, two workers: SIGKILL of one may fail the requests in
 *     flight, but /health is 200 and new requests succeed within 5 s,
 *     served by the survivor (degraded placement); when the worker
 *     returns the original placement is restored and it serves again; a
 *     worker hung by SIGSTOP is fenced, served around within 5 s, then
 *     killed and restarted by the router;
 *   - a second worker with the id of a live one is refused (and logged).
 *   - --replica-dtype q8_0: the second copy of every expert is held as
 *     Q8_0 (counted in /v1/stats and /metrics) and serves.
 * Every wait is bounded. */
#include <cJSON.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "serve_util.h"
#include "testutil.h"

#define N_STREAMS 16
#define MODEL "mixtral-tiny-f32.gguf"

static struct tu_router R;

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Every expert of every layer on workers 0 and 1 (half of them listed 1
 * first), as a placement file. */
static const char *
replica_file(void)
{
	static char path[64];
	const char *js = "{\"layers\": [[[0, 1], [1, 0], [0, 1], [1, 0], [0, 1], "
	        "[1, 0], [0, 1], [1, 0]]]}";
	int fd;

	snprintf(path, sizeof(path), "/tmp/epmoe-failover-XXXXXX");
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, js, strlen(js)), (int)strlen(js));
	close(fd);
	return path;
}

static void
stop_router(void)
{
	tu_router_log(&R);
	int st = tu_router_stop(&R);
	ck_assert_msg(st == 0, "router exit status %d; log: %s", st, R.log);
}

/* ---- streams ---- */

struct stream {
	int i, max_tokens;
	long status;
	char *raw;
	size_t len;
	int chunks;               /* SSE data lines seen */
	double last, max_gap;     /* seconds between data arrivals */
	atomic_int *progress;     /* chunks of all streams */
};

static size_t
on_stream(char *d, size_t sz, size_t nm, void *ud)
{
	struct stream *s = ud;
	size_t n = sz * nm;
	char *p = realloc(s->raw, s->len + n + 1);
	double t = now_s();

	if (p == NULL)
		return 0;
	s->raw = p;
	memcpy(s->raw + s->len, d, n);
	s->len += n;
	s->raw[s->len] = '\0';
	if (s->last > 0 && t - s->last > s->max_gap)
		s->max_gap = t - s->last;
	s->last = t;
	for (size_t k = 0; k + 5 < n; k++)
		if (memcmp(d + k, "data:", 5) == 0) {
			s->chunks++;
			atomic_fetch_add(s->progress, 1);
		}
	return n;
}

static void *
stream_main(void *arg)
{
	struct stream *s = arg;
	CURL *c = curl_easy_init();
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	char url[128], body[256];

	snprintf(url, sizeof(url), "http://%s/v1/completions", R.http);
	snprintf(body, sizeof(body),
	        "{\"prompt\":\"In the beginning %d\",\"max_tokens\":%d,\"temperature\":0,"
	        "\"stream\":true,\"ignore_eos\":true}", s->i, s->max_tokens);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_stream);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	s->last = now_s();
	curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &s->status);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	return NULL;
}

/* The concatenated text of a stream's chunks (malloc'd). */
static char *
stream_text(const struct stream *s)
{
	char *out = calloc(1, s->len + 1), *copy = strdup(s->raw ? s->raw : ""), *save;
	size_t n = 0;

	for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		cJSON *j, *t;
		if (strncmp(line, "data: ", 6) != 0 || strcmp(line + 6, "[DONE]") == 0)
			continue;
		j = cJSON_Parse(line + 6);
		t = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "text");
		if (cJSON_IsString(t)) {
			size_t l = strlen(t->valuestring);
			memcpy(out + n, t->valuestring, l);
			n += l;
		}
		cJSON_Delete(j);
	}
	free(copy);
	return out;
}

static bool
stream_ok(const struct stream *s)
{
	return s->status == 200 && s->raw && strstr(s->raw, "[DONE]") &&
	        !strstr(s->raw, "\"error\"");
}

struct run {
	pthread_t th[N_STREAMS];
	struct stream s[N_STREAMS];
	atomic_int progress;
};

static void
run_start(struct run *r, int max_tokens)
{
	memset(r, 0, sizeof(*r));
	atomic_init(&r->progress, 0);
	for (int i = 0; i < N_STREAMS; i++) {
		r->s[i] = (struct stream){ .i = i, .max_tokens = max_tokens,
			.progress = &r->progress };
		ck_assert_int_eq(pthread_create(&r->th[i], NULL, stream_main, &r->s[i]), 0);
	}
}

/* Waits (bounded) until the streams delivered n chunks in all. */
static void
run_wait_progress(struct run *r, int n)
{
	for (int i = 0; i < 3000 && atomic_load(&r->progress) < n; i++)
		usleep(2000);
	ck_assert_int_ge(atomic_load(&r->progress), n);
}

static void
run_join(struct run *r)
{
	for (int i = 0; i < N_STREAMS; i++)
		pthread_join(r->th[i], NULL);
}

static void
run_free(struct run *r)
{
	for (int i = 0; i < N_STREAMS; i++)
		free(r->s[i].raw);
}

/* ---- router and workers ---- */

/* A greedy completion; its HTTP status (and text into *text when 200). */
static long
complete(const char *prompt, int n, char **text)
{
	char body[256], *resp = NULL;
	long st = 0;

	snprintf(body, sizeof(body),
	        "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true}",
	        prompt, n);
	if (tu_http(&R, "POST", "/v1/completions", body, &st, &resp) != 0)
		return -1;
	if (text) {
		cJSON *j = cJSON_Parse(resp);
		cJSON *t = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0),
		        "text");
		*text = cJSON_IsString(t) ? strdup(t->valuestring) : NULL;
		cJSON_Delete(j);
	}
	free(resp);
	return st;
}

/* Seconds from t0 until /health is 200 and a new request succeeds
 * (bounded by limit_s); -1 if never. */
static double
time_to_serve(double t0, double limit_s)
{
	while (now_s() - t0 < limit_s) {
		char *resp = NULL;
		long st = 0;
		if (tu_http(&R, "GET", "/health", NULL, &st, &resp) == 0 && st == 200) {
			free(resp);
			if (complete("Hello", 4, NULL) == 200)
				return now_s() - t0;
		} else {
			free(resp);
		}
		usleep(20000);
	}
	return -1;
}

/* Children of the router (its spawned workers), from /proc. */
static int
children(pid_t pid, pid_t *out, int cap)
{
	char path[64], buf[512];
	int n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	if (fgets(buf, sizeof(buf), f)) {
		char *p = buf, *end;
		while (n < cap) {
			long v = strtol(p, &end, 10);
			if (end == p)
				break;
			out[n++] = (pid_t)v;
			p = end;
		}
	}
	fclose(f);
	return n;
}

/* The pid of the router's worker with this id (from its command line). */
static pid_t
worker_pid(const char *id)
{
	pid_t kids[8];
	int n = children(R.pid, kids, 8);

	for (int i = 0; i < n; i++) {
		char path[64], cmd[2048];
		size_t len;
		FILE *f;
		snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)kids[i]);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		len = fread(cmd, 1, sizeof(cmd) - 1, f);
		fclose(f);
		for (size_t k = 0; k + strlen(id) < len; k++)
			if (cmd[k] == '\0' && strcmp(cmd + k + 1, id) == 0)
				return kids[i];
	}
	return 0;
}

/* An epmoe-worker started by the test (not by the router). */
static pid_t
start_worker(const char *id, const char *log)
{
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(tu_bin("epmoe-worker"), "epmoe-worker", "--router", R.control_url,
		        "--model", tu_data(MODEL), "--id", id, "--threads", "1", (char *)NULL);
		_exit(127);
	}
	return pid;
}

static void
reap(pid_t pid)
{
	int st;

	if (pid <= 0)
		return;
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
}

/* Waits (bounded) until n workers are up. */
static void
wait_live(int n, double limit_s)
{
	double t0 = now_s();
	cJSON *j;

	while (now_s() - t0 < limit_s) {
		int live = -1;
		if (tu_get_json(&R, "/v1/stats", &j) == 200)
			live = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workers"),
			        "workers_live")->valueint;
		cJSON_Delete(j);
		if (live == n)
			return;
		usleep(20000);
	}
	ck_abort_msg("%d workers not up within %.0f s", n, limit_s);
}

static void
start_replicated(void)
{
	const char *file = replica_file();
	const char *args[] = { "--workers", "2", "--placement", file, NULL };

	ck_assert_msg(tu_router_start(&R, tu_data(MODEL), args) == 0, "%s", R.log);
	unlink(file);
	wait_live(2, 30);
}

/* ---- with replicas ---- */

START_TEST(replicas_sigkill_mid_stream_fails_nothing_and_changes_no_token)
{
	struct run a, b;
	pid_t w;
	double t0, t_0, t_1;

	start_replicated();
	/* undisturbed; under load both copies do work */
	t_0 = tu_stats_worker_num(&R, "local-0", "tokens");
	t_1 = tu_stats_worker_num(&R, "local-1", "tokens");
	run_start(&a, 96);
	run_join(&a);
	ck_assert_double_gt(tu_stats_worker_num(&R, "local-0", "tokens"), t_0);
	ck_assert_double_gt(tu_stats_worker_num(&R, "local-1", "tokens"), t_1);
	/* the same requests, one worker killed once they are well under way */
	run_start(&b, 96);
	run_wait_progress(&b, N_STREAMS * 8);
	ck_assert_int_gt(w = worker_pid("local-1"), 0);
	t0 = now_s();
	ck_assert_int_eq(kill(w, SIGKILL), 0);
	run_join(&b);
	for (int i = 0; i < N_STREAMS; i++) {
		ck_assert_msg(stream_ok(&a.s[i]), "undisturbed stream %d failed: %.300s", i,
		        a.s[i].raw);
		ck_assert_msg(stream_ok(&b.s[i]), "stream %d failed after the kill: %.300s", i,
		        b.s[i].raw);
		char *ta = stream_text(&a.s[i]), *tb = stream_text(&b.s[i]);
		ck_assert_str_eq(ta, tb);
		free(ta);
		free(tb);
	}
	/* fenced at once (connection), never an expert without a copy, no
	 * request failed */
	printf("failover: replicas, SIGKILL: streams done %.3f s after the kill\n",
	        now_s() - t0);
	{
		cJSON *j;
		ck_assert_int_eq(tu_get_json(&R, "/v1/stats", &j), 200);
		ck_assert_double_ge(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(
		        cJSON_GetObjectItem(j, "workers"), "failover"), "fenced"),
		        "connection")->valuedouble, 1);
		cJSON *d = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workers"), "dispatch");
		ck_assert_double_eq(cJSON_GetObjectItem(d, "unserved_tokens")->valuedouble, 0);
		ck_assert_double_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "scheduler"),
		        "requests_failed")->valuedouble, 0);
		cJSON_Delete(j);
	}
	run_free(&a);
	run_free(&b);
	stop_router();
}
END_TEST

START_TEST(replicas_sigstop_fails_nothing_and_the_worker_rejoins)
{
	struct run a, b;
	pid_t w;
	double gap = 0, t1;
	cJSON *j, *x;
	int regs = 0;

	start_replicated();
	run_start(&a, 96);
	run_join(&a);
	run_start(&b, 96);
	run_wait_progress(&b, N_STREAMS * 8);
	ck_assert_int_gt(w = worker_pid("local-0"), 0);
	ck_assert_int_eq(kill(w, SIGSTOP), 0);
	usleep(1000 * 1000); /* hung for 1 s: past its deadline, before the kill */
	ck_assert_int_eq(kill(w, SIGCONT), 0);
	run_join(&b);
	for (int i = 0; i < N_STREAMS; i++) {
		ck_assert_msg(stream_ok(&b.s[i]), "stream %d failed: %.300s", i, b.s[i].raw);
		char *ta = stream_text(&a.s[i]), *tb = stream_text(&b.s[i]);
		ck_assert_str_eq(ta, tb);
		free(ta);
		free(tb);
		if (b.s[i].max_gap > gap)
			gap = b.s[i].max_gap;
	}
	/* a deadline (max(200 ms, 3 x p99)), not the 1 s hang nor the 10 s
	 * timeout, held the streams up */
	ck_assert_msg(gap < 2.5, "a stream stalled for %.3f s", gap);
	printf("failover: replicas, SIGSTOP 1 s: longest gap between chunks %.3f s\n", gap);
	/* it was fenced and registers again, same process */
	wait_live(2, 10);
	ck_assert_int_eq(worker_pid("local-0"), w);
	ck_assert_int_eq(tu_get_json(&R, "/v1/stats", &j), 200);
	cJSON_ArrayForEach(x, tu_stats_workers(j))
		if (strcmp(cJSON_GetObjectItem(x, "id")->valuestring, "local-0") == 0)
			regs = cJSON_GetObjectItem(x, "registrations")->valueint;
	ck_assert_double_ge(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(
	        cJSON_GetObjectItem(j, "workers"), "failover"), "fenced"), "deadline")->valuedouble +
	        cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(
	        cJSON_GetObjectItem(j, "workers"), "failover"), "fenced"), "heartbeat")->valuedouble, 1);
	cJSON_Delete(j);
	ck_assert_int_ge(regs, 2);
	/* and takes traffic again */
	t1 = tu_stats_worker_num(&R, "local-0", "tokens");
	run_free(&a);
	run_start(&a, 32);
	run_join(&a);
	for (int i = 0; i < N_STREAMS; i++)
		ck_assert(stream_ok(&a.s[i]));
	ck_assert_double_gt(tu_stats_worker_num(&R, "local-0", "tokens"), t1);
	run_free(&a);
	run_free(&b);
	stop_router();
}
END_TEST

/* ---- without replicas ---- */

/* Experts split over two workers the test starts itself (so a killed
 * one stays dead until the test restarts it). */
static void
start_split(pid_t *w0, pid_t *w1, char *log, size_t log_len)
{
	const char *args[] = { "--workers", "0", "--expect-workers", "2", NULL };

	ck_assert_msg(tu_router_start_wait(&R, tu_data(MODEL), args, 30, 0) == 0, "%s", R.log);
	snprintf(log, log_len, "/tmp/epmoe-failover-workers-%d.log", (int)getpid());
	*w0 = start_worker("w0", log);
	*w1 = start_worker("w1", log);
	wait_live(2, 30);
}

static int
pairs(const char *key)
{
	cJSON *j;
	int v;

	ck_assert_int_eq(tu_get_json(&R, "/v1/placement", &j), 200);
	v = cJSON_GetObjectItem(j, key)->valueint;
	cJSON_Delete(j);
	return v;
}

/* Waits (bounded) for the placement to be home again. */
static void
wait_restored(double limit_s)
{
	double t0 = now_s();

	while (now_s() - t0 < limit_s) {
		cJSON *j;
		bool done = false;
		if (tu_get_json(&R, "/v1/placement", &j) == 200) {
			char *lay = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "layers"));
			done = cJSON_GetObjectItem(j, "degraded_pairs")->valueint == 0 &&
			        cJSON_IsNull(cJSON_GetObjectItem(j, "target")) && lay &&
			        strcmp(lay, "[[0,0,0,0,1,1,1,1],[0,0,0,0,1,1,1,1]]") == 0;
			cJSON_free(lay);
		}
		cJSON_Delete(j);
		if (done)
			return;
		usleep(20000);
	}
	ck_abort_msg("the placement was not restored within %.0f s", limit_s);
}

START_TEST(no_replicas_sigkill_is_served_by_the_survivor_within_5s_then_restored)
{
	struct run a;
	pid_t w0, w1;
	char log[128];
	double t0, dt, before, t1;
	int ok = 0;

	start_split(&w0, &w1, log, sizeof(log));
	run_start(&a, 200);
	run_wait_progress(&a, N_STREAMS * 4);
	before = tu_stats_worker_num(&R, "w0", "tokens");
	t0 = now_s();
	ck_assert_int_eq(kill(w1, SIGKILL), 0);
	waitpid(w1, NULL, 0);
	dt = time_to_serve(t0, 5.0);
	ck_assert_msg(dt >= 0, "not serving again 5 s after the kill");
	run_join(&a);
	for (int i = 0; i < N_STREAMS; i++)
		ok += stream_ok(&a.s[i]);
	printf("failover: no replicas, SIGKILL: serving again after %.3f s, %d of %d streams in flight completed\n",
	        dt, ok, N_STREAMS);
	/* degraded: the survivor serves every expert */
	ck_assert_int_gt(pairs("degraded_pairs"), 0);
	ck_assert_int_eq(pairs("unserved_pairs"), 0);
	ck_assert_int_eq(complete("And God said", 16, NULL), 200);
	ck_assert_double_gt(tu_stats_worker_num(&R, "w0", "tokens"), before);
	ck_assert_double_ge(tu_stats_failover_num(&R, "recoveries"), 1);
	ck_assert_double_gt(tu_stats_failover_num(&R, "last_recovery_s"), 0);
	/* and /metrics says so */
	{
		char *resp = NULL;
		long st;
		ck_assert_int_eq(tu_http(&R, "GET", "/metrics", NULL, &st, &resp), 0);
		ck_assert_int_eq(st, 200);
		ck_assert_ptr_nonnull(strstr(resp, "epmoe_workers_fenced_total{cause=\"connection\"} 1"));
		ck_assert_ptr_nonnull(strstr(resp, "epmoe_recoveries_total 1"));
		ck_assert_ptr_null(strstr(resp, "epmoe_degraded_pairs 0\n"));
		ck_assert_ptr_nonnull(strstr(resp, "epmoe_unserved_pairs 0\n"));
		ck_assert_ptr_nonnull(strstr(resp, "epmoe_placement_commits_total"));
		free(resp);
	}
	/* it returns: the original placement comes back, it serves again */
	w1 = start_worker("w1", log);
	wait_live(2, 30);
	wait_restored(10);
	t1 = tu_stats_worker_num(&R, "w1", "tokens");
	ck_assert_int_eq(complete("Let there be light", 24, NULL), 200);
	ck_assert_double_gt(tu_stats_worker_num(&R, "w1", "tokens"), t1);
	run_free(&a);
	stop_router();
	reap(w0);
	reap(w1);
	unlink(log);
}
END_TEST

START_TEST(no_replicas_a_hung_worker_is_served_around_killed_and_restarted)
{
	const char *args[] = { "--workers", "2", NULL };
	struct run a;
	pid_t w, w2 = 0;
	double t0, dt;

	ck_assert_msg(tu_router_start(&R, tu_data(MODEL), args) == 0, "%s", R.log);
	wait_live(2, 30);
	run_start(&a, 200);
	run_wait_progress(&a, N_STREAMS * 4);
	ck_assert_int_gt(w = worker_pid("local-1"), 0);
	t0 = now_s();
	ck_assert_int_eq(kill(w, SIGSTOP), 0);
	dt = time_to_serve(t0 + 0.05, 5.0);
	ck_assert_msg(dt >= 0, "not serving again 5 s after the hang");
	printf("failover: no replicas, SIGSTOP: serving again after %.3f s\n", dt + 0.05);
	run_join(&a);
	/* hung past twice the heartbeat timeout: killed and restarted */
	for (int i = 0; i < 500; i++) {
		w2 = worker_pid("local-1");
		if (w2 > 0 && w2 != w)
			break;
		usleep(20000);
	}
	ck_assert_msg(w2 > 0 && w2 != w, "the hung worker was not replaced");
	ck_assert_int_ne(kill(w, 0), 0); /* gone */
	wait_live(2, 30);
	wait_restored(10);
	ck_assert_int_eq(complete("Hello", 8, NULL), 200);
	tu_router_log(&R);
	ck_assert_ptr_nonnull(strstr(R.log, "hung"));
	run_free(&a);
	stop_router();
}
END_TEST

START_TEST(a_second_worker_with_a_live_workers_id_is_refused)
{
	const char *args[] = { "--workers", "0", "--expect-workers", "1", NULL };
	char log[128];
	pid_t a, b;
	cJSON *j;

	ck_assert_msg(tu_router_start_wait(&R, tu_data(MODEL), args, 30, 0) == 0, "%s", R.log);
	snprintf(log, sizeof(log), "/tmp/epmoe-failover-dup-%d.log", (int)getpid());
	a = start_worker("twin", log);
	wait_live(1, 30);
	b = start_worker("twin", log);
	for (int i = 0; i < 500 && tu_stats_failover_num(&R, "refused_duplicate_ids") < 1; i++)
		usleep(20000);
	ck_assert_double_ge(tu_stats_failover_num(&R, "refused_duplicate_ids"), 1);
	/* the first keeps its place and serves; one registration only */
	ck_assert_int_eq(complete("Hello", 8, NULL), 200);
	ck_assert_int_eq(tu_get_json(&R, "/v1/stats", &j), 200);
	ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(tu_stats_workers(j), 0),
	        "registrations")->valueint, 1);
	cJSON_Delete(j);
	tu_router_log(&R);
	ck_assert_ptr_nonnull(strstr(R.log, "in use by a live worker"));
	{
		char *wl = tu_read(log, NULL);
		ck_assert_ptr_nonnull(wl);
		ck_assert_ptr_nonnull(strstr(wl, "refused this worker"));
		free(wl);
	}
	stop_router();
	reap(a);
	reap(b);
	unlink(log);
}
END_TEST

START_TEST(static_replica_choice_spreads_experts_over_both_copies)
{
	const char *file = replica_file();
	const char *args[] = { "--workers", "2", "--placement", file,
		"--replica", "static", NULL };
	double t0, t1;

	ck_assert_msg(tu_router_start(&R, tu_data(MODEL), args) == 0, "%s", R.log);
	unlink(file);
	wait_live(2, 30);
	t0 = tu_stats_worker_num(&R, "local-0", "tokens");
	t1 = tu_stats_worker_num(&R, "local-1", "tokens");
	ck_assert_int_eq(complete("In the beginning God created", 48, NULL), 200);
	ck_assert_double_gt(tu_stats_worker_num(&R, "local-0", "tokens"), t0);
	ck_assert_double_gt(tu_stats_worker_num(&R, "local-1", "tokens"), t1);
	stop_router();
}
END_TEST

/* --replica-dtype q8_0: every expert's second copy is held as Q8_0 by its
 * worker (16 of the 32 copies), reported in /v1/stats and /metrics; both
 * copies serve and every stream completes.  A router without the option
 * holds none. */
static double
quantized_copies(void)
{
	cJSON *j;
	double n = -1;

	if (tu_get_json(&R, "/v1/stats", &j) == 200) {
		cJSON *q = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workers"),
		        "quantized_copies");
		n = cJSON_IsNumber(q) ? q->valuedouble : -1;
	}
	cJSON_Delete(j);
	return n;
}

START_TEST(q8_replicas_are_held_quantized_and_serve)
{
	const char *file = replica_file();
	const char *args[] = { "--workers", "2", "--placement", file,
		"--balance", "off", "--replica-dtype", "q8_0", NULL };
	struct run a;
	double t0, t1, n = -1;
	char *resp = NULL;
	long st = 0;

	ck_assert_msg(tu_router_start(&R, tu_data(MODEL), args) == 0, "%s", R.log);
	wait_live(2, 30);
	for (int i = 0; i < 500 && (n = quantized_copies()) < 16; i++)
		usleep(20000);
	ck_assert_msg(n == 16, "%g quantized copies", n);
	ck_assert_int_eq(tu_http(&R, "GET", "/metrics", NULL, &st, &resp), 0);
	ck_assert_ptr_nonnull(strstr(resp, "epmoe_quantized_copies 16"));
	free(resp);
	t0 = tu_stats_worker_num(&R, "local-0", "tokens");
	t1 = tu_stats_worker_num(&R, "local-1", "tokens");
	run_start(&a, 48);
	run_join(&a);
	for (int i = 0; i < N_STREAMS; i++)
		ck_assert_msg(stream_ok(&a.s[i]), "stream %d failed: %.300s", i, a.s[i].raw);
	ck_assert_double_gt(tu_stats_worker_num(&R, "local-0", "tokens"), t0);
	ck_assert_double_gt(tu_stats_worker_num(&R, "local-1", "tokens"), t1);
	run_free(&a);
	stop_router();
	/* the default keeps replicas exact */
	args[6] = NULL;
	ck_assert_msg(tu_router_start(&R, tu_data(MODEL), args) == 0, "%s", R.log);
	unlink(file);
	wait_live(2, 30);
	ck_assert_double_eq(quantized_copies(), 0);
	stop_router();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("failover");
	TCase *tr = tcase_create("replicas");
	TCase *tn = tcase_create("no_replicas");

	curl_global_init(CURL_GLOBAL_DEFAULT);
	tcase_set_timeout(tr, 180);
	tcase_set_timeout(tn, 180);
	tcase_add_test(tr, replicas_sigkill_mid_stream_fails_nothing_and_changes_no_token);
	tcase_add_test(tr, replicas_sigstop_fails_nothing_and_the_worker_rejoins);
	tcase_add_test(tr, static_replica_choice_spreads_experts_over_both_copies);
	tcase_add_test(tr, q8_replicas_are_held_quantized_and_serve);
	tcase_add_test(tn, no_replicas_sigkill_is_served_by_the_survivor_within_5s_then_restored);
	tcase_add_test(tn, no_replicas_a_hung_worker_is_served_around_killed_and_restarted);
	tcase_add_test(tn, a_second_worker_with_a_live_workers_id_is_refused);
	suite_add_tcase(s, tr);
	suite_add_tcase(s, tn);
	int rc = tu_run(s);
	curl_global_cleanup();
	return rc;
}
