/* Elastic workers, end to end: the real epmoe-router with real
 * epmoe-worker processes on 127.0.0.1 and 16 concurrent greedy streams
 * over HTTP:
 *   - join: a router started for 2 workers, serving them under load; a
 *     third worker registers: it gets experts (the placement re-planned
 *     over the live workers, loaded through the epoch protocol) and
 *     serves tokens within a bounded time, no request fails and every
 *     stream's text equals a run of the same requests on 2 workers with
 *     the balancer and elasticity off;
 *   - rolling restart: every worker in turn gets SIGTERM under load: it
 *     drains (its experts move to the other worker before it stops),
 *     exits 0, and is started again with the same id; it takes tokens
 *     again; no request fails and no token changes;
 *   - a lone worker's drain has nowhere to go: it times out, is logged,
 *     and the worker exits 0 anyway.
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
#define N_TOKENS 32
#define MODEL "mixtral-tiny-f32.gguf"

static struct tu_router R;

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- streams ---- */

/* One round of N_STREAMS streams at once; their texts into out[]
 * (malloc'd, NULL for a failed stream).  The failures. */
static int
round_run(char **out)
{
	return tu_greedy_streams(&R, N_STREAMS, N_TOKENS, out);
}

/* Load in the background: rounds until stopped, every text compared
 * with want[]. */
struct load {
	pthread_t th;
	char **want;
	atomic_int stop;
	atomic_int rounds, failed, differ;
	char first_diff[512];
};

static void *
load_main(void *arg)
{
	struct load *ld = arg;

	while (!atomic_load(&ld->stop)) {
		char *got[N_STREAMS];
		atomic_fetch_add(&ld->failed, round_run(got));
		for (int i = 0; i < N_STREAMS; i++) {
			if (got[i] && strcmp(got[i], ld->want[i]) != 0 &&
			        atomic_fetch_add(&ld->differ, 1) == 0)
				snprintf(ld->first_diff, sizeof(ld->first_diff),
				        "stream %d: '%.200s' vs '%.200s'", i, got[i], ld->want[i]);
			free(got[i]);
		}
		atomic_fetch_add(&ld->rounds, 1);
	}
	return NULL;
}

static void
load_start(struct load *ld, char **want)
{
	memset(ld, 0, sizeof(*ld));
	ld->want = want;
	ck_assert_int_eq(pthread_create(&ld->th, NULL, load_main, ld), 0);
}

/* Stops after the round in progress (and at least one more round). */
static void
load_stop(struct load *ld)
{
	int r0 = atomic_load(&ld->rounds);

	for (int i = 0; i < 1200 && atomic_load(&ld->rounds) < r0 + 1; i++)
		usleep(50000);
	atomic_store(&ld->stop, 1);
	pthread_join(ld->th, NULL);
	ck_assert_msg(atomic_load(&ld->failed) == 0, "%d streams failed",
	        atomic_load(&ld->failed));
	ck_assert_msg(atomic_load(&ld->differ) == 0, "%d streams differ; first: %s",
	        atomic_load(&ld->differ), ld->first_diff);
}

/* ---- router and workers ---- */

static double
sched_failed(void)
{
	cJSON *j;
	double v;

	ck_assert_int_eq(tu_get_json(&R, "/v1/stats", &j), 200);
	v = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "scheduler"),
	        "requests_failed")->valuedouble;
	cJSON_Delete(j);
	return v;
}

/* An epmoe-worker started by the test, its log appended to log, with a
 * drain timeout of drain_ms. */
static pid_t
start_worker_drain(const char *id, const char *log, const char *drain_ms)
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
		        "--model", tu_data(MODEL), "--id", id, "--threads", "1",
		        "--drain-timeout-ms", drain_ms, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static pid_t
start_worker(const char *id, const char *log)
{
	return start_worker_drain(id, log, "30000");
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

/* Waits (bounded) for worker id to be up and hold slots. */
static void
wait_slots(const char *id, double limit_s)
{
	double t0 = now_s();

	while (now_s() - t0 < limit_s) {
		cJSON *j, *w;
		bool ok = false;
		if (tu_get_json(&R, "/v1/stats", &j) == 200) {
			cJSON_ArrayForEach(w, tu_stats_workers(j))
				if (strcmp(cJSON_GetObjectItem(w, "id")->valuestring, id) == 0)
					ok = strcmp(cJSON_GetObjectItem(w, "state")->valuestring, "up") == 0 &&
					        cJSON_GetObjectItem(w, "slots")->valuedouble > 0;
		}
		cJSON_Delete(j);
		if (ok)
			return;
		usleep(50000);
	}
	tu_router_log(&R);
	ck_abort_msg("worker %s holds no slots after %.0f s; router log: %s", id, limit_s, R.log);
}

static void
stop_router(void)
{
	tu_router_log(&R);
	int st = tu_router_stop(&R);
	ck_assert_msg(st == 0, "router exit status %d; log: %s", st, R.log);
}

/* The texts of one round on 2 spawned workers, balancer and elasticity
 * off: what every later run must reproduce. */
static void
reference(char **want)
{
	const char *args[] = { "--workers", "2", "--threads", "1", "--balance", "off",
		"--elastic", "off", NULL };

	ck_assert_msg(tu_router_start_wait(&R, tu_data(MODEL), args, 60, 1) == 0, "%s", R.log);
	ck_assert_int_eq(round_run(want), 0);
	stop_router();
}

START_TEST(a_third_worker_joining_under_load_takes_tokens)
{
	const char *args[] = { "--workers", "0", "--expect-workers", "2", "--eplb-interval", "8",
		NULL };
	char *want[N_STREAMS], log[128];
	struct load ld;
	pid_t a, b, c;
	double t0, tok = 0, t_join;

	reference(want);
	snprintf(log, sizeof(log), "/tmp/epmoe-elastic-join-%d.log", (int)getpid());
	ck_assert_msg(tu_router_start_wait(&R, tu_data(MODEL), args, 30, 0) == 0, "%s", R.log);
	a = start_worker("alpha", log);
	b = start_worker("beta", log);
	wait_slots("alpha", 30);
	wait_slots("beta", 30);
	load_start(&ld, want);
	for (int i = 0; i < 600 && atomic_load(&ld.rounds) < 1; i++)
		usleep(50000);
	c = start_worker("gamma", log);
	t0 = now_s();
	/* bounded: registration, a re-plan, the loads and a commit */
	while (now_s() - t0 < 60 && (tok = tu_stats_worker_num(&R, "gamma", "tokens")) <= 0)
		usleep(50000);
	t_join = now_s() - t0;
	load_stop(&ld);
	ck_assert_msg(tok > 0, "the joining worker took no tokens in 60 s");
	printf("elastic: the third worker served tokens %.2f s after it started (%d rounds of %d streams, 0 failed)\n",
	        t_join, atomic_load(&ld.rounds), N_STREAMS);
	ck_assert_double_ge(tu_stats_failover_num(&R, "joins"), 1);
	ck_assert_double_eq(sched_failed(), 0);
	ck_assert_double_gt(tu_stats_worker_num(&R, "gamma", "slots"), 0);
	{
		char *resp = NULL;
		long st = 0;
		ck_assert_int_eq(tu_http(&R, "GET", "/metrics", NULL, &st, &resp), 0);
		ck_assert_int_eq(st, 200);
		ck_assert_ptr_nonnull(strstr(resp, "epmoe_worker_joins_total 1"));
		free(resp);
	}
	stop_router();
	ck_assert_ptr_nonnull(strstr(R.log, "joins: planning the experts over the live workers"));
	reap(a);
	reap(b);
	reap(c);
	unlink(log);
	for (int i = 0; i < N_STREAMS; i++)
		free(want[i]);
}
END_TEST

START_TEST(rolling_restart_of_every_worker_under_load_fails_nothing)
{
	const char *args[] = { "--workers", "0", "--expect-workers", "2", NULL };
	const char *ids[2] = { "alpha", "beta" };
	char *want[N_STREAMS], log[128];
	struct load ld;
	pid_t pid[2];

	reference(want);
	snprintf(log, sizeof(log), "/tmp/epmoe-elastic-roll-%d.log", (int)getpid());
	ck_assert_msg(tu_router_start_wait(&R, tu_data(MODEL), args, 30, 0) == 0, "%s", R.log);
	for (int k = 0; k < 2; k++)
		pid[k] = start_worker(ids[k], log);
	for (int k = 0; k < 2; k++)
		wait_slots(ids[k], 30);
	load_start(&ld, want);
	for (int i = 0; i < 600 && atomic_load(&ld.rounds) < 1; i++)
		usleep(50000);
	for (int k = 0; k < 2; k++) {
		double t0 = now_s(), tok;
		int st = -1;
		pid_t r = 0;

		ck_assert_int_eq(kill(pid[k], SIGTERM), 0);
		/* drains (at most its 30 s timeout), then exits 0 */
		while (now_s() - t0 < 45 && (r = waitpid(pid[k], &st, WNOHANG)) == 0)
			usleep(20000);
		ck_assert_msg(r == pid[k], "worker %s did not exit within 45 s of SIGTERM", ids[k]);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %s exit status %d",
		        ids[k], st);
		printf("elastic: worker %s drained and exited %.2f s after SIGTERM\n", ids[k],
		        now_s() - t0);
		pid[k] = start_worker(ids[k], log);
		wait_slots(ids[k], 60);
		/* and takes tokens again */
		tok = tu_stats_worker_num(&R, ids[k], "tokens");
		t0 = now_s();
		while (now_s() - t0 < 60 && tu_stats_worker_num(&R, ids[k], "tokens") <= tok)
			usleep(50000);
		ck_assert_double_gt(tu_stats_worker_num(&R, ids[k], "tokens"), tok);
	}
	load_stop(&ld);
	ck_assert_double_eq(sched_failed(), 0);
	ck_assert_double_ge(tu_stats_failover_num(&R, "drains"), 2);
	ck_assert_double_ge(tu_stats_failover_num(&R, "drains_done"), 2);
	stop_router();
	{
		char *wl = tu_read(log, NULL);
		ck_assert_ptr_nonnull(wl);
		ck_assert_msg(strstr(wl, "drained in") != NULL, "no drain in the worker log");
		ck_assert_msg(strstr(wl, "drain timed out") == NULL, "a drain timed out");
		free(wl);
	}
	for (int k = 0; k < 2; k++)
		reap(pid[k]);
	unlink(log);
	for (int i = 0; i < N_STREAMS; i++)
		free(want[i]);
}
END_TEST

/* The only worker cannot hand its experts to anyone: its drain times out
 * (logged), it leaves and exits 0 anyway. */
START_TEST(a_drain_with_nowhere_to_go_times_out_and_exits_0)
{
	const char *args[] = { "--workers", "0", "--expect-workers", "1", NULL };
	char log[128];
	double t0;
	int st = -1;
	pid_t a, r = 0;

	snprintf(log, sizeof(log), "/tmp/epmoe-elastic-alone-%d.log", (int)getpid());
	ck_assert_msg(tu_router_start_wait(&R, tu_data(MODEL), args, 30, 0) == 0, "%s", R.log);
	a = start_worker_drain("solo", log, "1000");
	wait_slots("solo", 30);
	t0 = now_s();
	ck_assert_int_eq(kill(a, SIGTERM), 0);
	while (now_s() - t0 < 20 && (r = waitpid(a, &st, WNOHANG)) == 0)
		usleep(20000);
	ck_assert_msg(r == a, "the worker did not exit within 20 s");
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert_double_ge(now_s() - t0, 0.9);
	ck_assert_double_eq(tu_stats_failover_num(&R, "drains"), 1);
	ck_assert_double_eq(tu_stats_failover_num(&R, "drains_done"), 0);
	stop_router();
	ck_assert_ptr_nonnull(strstr(R.log, "no live worker to move the experts to"));
	{
		char *wl = tu_read(log, NULL);
		ck_assert_ptr_nonnull(wl);
		ck_assert_msg(strstr(wl, "drain timed out after 1000 ms: leaving anyway") != NULL,
		        "%s", wl);
		free(wl);
	}
	unlink(log);
}
END_TEST

START_TEST(bad_elastic_flags_are_refused)
{
	const char *bad[][2] = { { "--elastic", "maybe" }, { "--max-workers", "0" },
		{ "--max-workers", "x" } };
	char cmd[512];

	for (int i = 0; i < 3; i++) {
		snprintf(cmd, sizeof(cmd), "%s --model %s %s %s 2>/dev/null",
		        tu_bin("epmoe-router"), tu_data(MODEL), bad[i][0], bad[i][1]);
		ck_assert_int_eq(WEXITSTATUS(system(cmd)), 2);
	}
	snprintf(cmd, sizeof(cmd), "%s --router tcp://127.0.0.1:1 --model %s --drain-timeout-ms -5 2>/dev/null",
	        tu_bin("epmoe-worker"), tu_data(MODEL));
	ck_assert_int_eq(WEXITSTATUS(system(cmd)), 2);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("elastic");
	TCase *t = tcase_create("live");
	int rc;

	tcase_set_timeout(t, 300);
	tcase_add_test(t, a_third_worker_joining_under_load_takes_tokens);
	tcase_add_test(t, rolling_restart_of_every_worker_under_load_fails_nothing);
	tcase_add_test(t, a_drain_with_nowhere_to_go_times_out_and_exits_0);
	tcase_add_test(t, bad_elastic_flags_are_refused);
	suite_add_tcase(s, t);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	rc = tu_run(s);
	curl_global_cleanup();
	return rc;
}
