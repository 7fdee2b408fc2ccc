/* The balancer end to end: the real epmoe-router with 4 local workers on
 * 127.0.0.1 and 16 concurrent greedy streams.  With --balance all, a
 * small window and interval and 4 redundant slots, EPLB re-places the
 * experts live while the streams run (the epoch protocol loads the new
 * copies, commits, retires) and LLEP splits hot groups over the copies:
 * no request fails and every stream's text equals a --balance off run of
 * the same requests.  /v1/stats and /metrics show the load statistics
 * and the re-placements.  With --balance llep alone, LLEP borrows copies
 * of hot experts to spill to (--llep-cache) and the outputs stay the
 * same.  Every wait is bounded. */
#include <cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "serve_util.h"
#include "testutil.h"

#define N_STREAMS 16
#define N_TOKENS 24
#define MODEL "mixtral-tiny-f32.gguf"

static struct tu_router R;

/* 16 streams at once; their texts into out[] (malloc'd); none may fail. */
static void
run_streams(char **out)
{
	ck_assert_int_eq(tu_greedy_streams(&R, N_STREAMS, N_TOKENS, out), 0);
}

static cJSON *
get_stats(void)
{
	char *resp = NULL;
	long st = 0;
	cJSON *j;

	ck_assert_int_eq(tu_http(&R, "GET", "/v1/stats", NULL, &st, &resp), 0);
	ck_assert_int_eq(st, 200);
	j = cJSON_Parse(resp);
	free(resp);
	ck_assert_ptr_nonnull(j);
	return j;
}

static double
num(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItem(o, k);
	ck_assert_msg(cJSON_IsNumber(v), "no number %s", k);
	return v->valuedouble;
}

static void
start(const char *const *args)
{
	ck_assert_msg(tu_router_start_wait(&R, tu_data(MODEL), args, 60, 1) == 0, "%s", R.log);
}

static void
stop(void)
{
	tu_router_log(&R);
	int st = tu_router_stop(&R);
	ck_assert_msg(st == 0, "router exit status %d; log: %s", st, R.log);
}

/* The simulator replaying the trace at the router's size (4 workers, no
 * balancing) sees the worker max/mean the router measured (within 5%:
 * the router averages per layer call, the simulator per step). */
static void
check_simulation(const char *trace, double measured)
{
	char cmd[512], line[256];
	double sim = -1;
	FILE *f;

	snprintf(cmd, sizeof(cmd), "%s bench balance --trace %s --workers 4", tu_bin("epmoe"),
	        trace);
	f = popen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "off ", 4) == 0)
			sscanf(line + 4, "%lf", &sim);
	ck_assert_int_eq(pclose(f), 0);
	unlink(trace);
	ck_assert_msg(measured > 1.0 && fabs(sim - measured) < 0.05 * measured,
	        "simulated max/mean %.3f, measured %.3f", sim, measured);
}

/* Waits (bounded) until a placement epoch after the first committed. */
static void
wait_commit(void)
{
	for (int i = 0; i < 300; i++) {
		cJSON *j = get_stats();
		double c = num(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workers"), "failover"),
		        "commits");
		cJSON_Delete(j);
		if (c >= 1)
			return;
		usleep(50000);
	}
	ck_abort_msg("no placement committed within 15 s");
}

START_TEST(replacement_under_load_fails_nothing_and_changes_no_token)
{
	char trace[64];
	const char *off[] = { "--workers", "4", "--threads", "1", "--balance", "off",
		"--record-routing", trace, NULL };
	const char *all[] = { "--workers", "4", "--threads", "1", "--balance", "all",
		"--redundant-slots", "4", "--eplb-interval", "4", "--eplb-window", "8",
		"--eplb-threshold", "1.0", "--llep-lambda", "1.0", "--llep-min-chunk", "1", NULL };
	const char *llep[] = { "--workers", "4", "--threads", "1", "--balance", "llep",
		"--llep-cache", "2", "--eplb-interval", "4", "--eplb-window", "8",
		"--llep-lambda", "1.0", "--llep-min-chunk", "1", NULL };
	char *want[N_STREAMS], *got[N_STREAMS];
	cJSON *j, *b;
	double repl = 0;

	snprintf(trace, sizeof(trace), "/tmp/epmoe-trace-%d.txt", (int)getpid());
	start(off);
	run_streams(want);
	j = get_stats();
	b = cJSON_GetObjectItem(j, "balance");
	check_simulation(trace, num(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "routing"), "native"),
	        "worker_max_over_mean"));
	ck_assert_str_eq(cJSON_GetObjectItem(b, "mode")->valuestring, "off");
	ck_assert_double_eq(num(b, "replacements"), 0);
	/* the statistics run with the balancer off too */
	ck_assert_double_gt(num(b, "steps"), N_TOKENS - 1);
	cJSON_Delete(j);
	stop();

	start(all);
	/* re-placements are planned in the first round, loaded and committed
	 * while it runs or just after; the second runs on the new map */
	for (int round = 0; round < 2; round++) {
		if (round == 1)
			wait_commit();
		run_streams(got);
		for (int i = 0; i < N_STREAMS; i++) {
			ck_assert_msg(strcmp(got[i], want[i]) == 0,
			        "round %d stream %d differs:\n%s\nvs off:\n%s", round, i, got[i], want[i]);
			free(got[i]);
		}
	}
	j = get_stats();
	b = cJSON_GetObjectItem(j, "balance");
	ck_assert_str_eq(cJSON_GetObjectItem(b, "mode")->valuestring, "all");
	repl = num(b, "replacements");
	ck_assert_msg(repl >= 1, "no re-placement ran: %s", cJSON_PrintUnformatted(b));
	ck_assert_double_gt(num(b, "moved_bytes"), 0);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(b, "worker_window_load")), 4);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(b, "layers")), 2);
	ck_assert_double_eq(num(cJSON_GetObjectItem(j, "scheduler"), "requests_failed"), 0);
	/* the measured per-layer-call worker max/mean */
	ck_assert_double_ge(num(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workers"), "dispatch"),
	        "layer_worker_max_mean"), 1.0);
	ck_assert_double_le(num(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workers"), "dispatch"),
	        "layer_worker_max_mean"), 4.0);
	/* LLEP split hot groups over the new copies */
	ck_assert_double_gt(num(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workers"), "dispatch"),
	        "llep_split_groups"), 0);
	ck_assert_double_ge(num(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workers"), "failover"),
	        "commits"), 1);
	/* every inter-token gap is counted once, as steady or as during a
	 * re-placement */
	{
		cJSON *ip = cJSON_GetObjectItem(b, "itl_by_placement");
		double steady = num(cJSON_GetObjectItem(ip, "steady"), "tokens");
		double during = num(cJSON_GetObjectItem(ip, "replacing"), "tokens");
		double all_itl = num(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "latency"), "itl"),
		        "count");
		ck_assert_double_gt(steady, 0);
		ck_assert_double_eq(steady + during, all_itl);
		ck_assert_ptr_nonnull(cJSON_GetObjectItem(ip, "p99_ratio"));
	}
	cJSON_Delete(j);
	{
		char *resp = NULL;
		long st = 0;
		ck_assert_int_eq(tu_http(&R, "GET", "/metrics", NULL, &st, &resp), 0);
		ck_assert_int_eq(st, 200);
		ck_assert_ptr_nonnull(strstr(resp, "epmoe_balance_replacements_total "));
		ck_assert_ptr_nonnull(strstr(resp, "epmoe_expert_load_ewma{layer=\"1\",expert=\"7\"}"));
		ck_assert_ptr_nonnull(strstr(resp, "epmoe_worker_window_tokens{worker=\"3\"}"));
		ck_assert_ptr_nonnull(strstr(resp, "epmoe_worker_outstanding_tokens{worker=\"0\"}"));
		free(resp);
	}
	stop();

	/* LLEP alone borrows copies to spill to; outputs stay the same */
	start(llep);
	for (int round = 0; round < 2; round++) {
		run_streams(got);
		for (int i = 0; i < N_STREAMS; i++) {
			ck_assert_msg(strcmp(got[i], want[i]) == 0,
			        "llep round %d stream %d differs:\n%s\nvs off:\n%s", round, i,
			        got[i], want[i]);
			free(got[i]);
		}
	}
	j = get_stats();
	b = cJSON_GetObjectItem(j, "balance");
	ck_assert_msg(num(b, "borrows") >= 1, "nothing borrowed: %s", cJSON_PrintUnformatted(b));
	ck_assert_double_le(num(b, "borrowed"), 4 * 2);
	ck_assert_double_eq(num(cJSON_GetObjectItem(b, "settings"), "llep_cache"), 2);
	ck_assert_double_eq(num(cJSON_GetObjectItem(j, "scheduler"), "requests_failed"), 0);
	cJSON_Delete(j);
	stop();
	for (int i = 0; i < N_STREAMS; i++)
		free(want[i]);
}
END_TEST

START_TEST(bad_balance_flags_are_refused)
{
	const char *bad[][3] = { { "--balance", "sometimes", NULL },
		{ "--eplb-threshold", "0.5", NULL }, { "--redundant-slots", "-1", NULL },
		{ "--llep-cache", "-1", NULL }, { "--replica-dtype", "q4_0", NULL } };

	for (int i = 0; i < 5; i++) {
		char cmd[512];
		snprintf(cmd, sizeof(cmd), "%s --model %s %s %s 2>/dev/null",
		        tu_bin("epmoe-router"), tu_data(MODEL), bad[i][0], bad[i][1]);
		ck_assert_int_eq(WEXITSTATUS(system(cmd)), 2);
	}
	for (int i = 0; i < 3; i++) {
		static const char *const skew[] = { "zipf:0", "zipf:x", "pareto:1" };
		char cmd[512];
		snprintf(cmd, sizeof(cmd), "%s mkmodel --preset tiny --out /tmp/epmoe-skew-%d.gguf "
		        "--gate-skew %s 2>/dev/null", tu_bin("epmoe"), (int)getpid(), skew[i]);
		ck_assert_int_eq(WEXITSTATUS(system(cmd)), 2);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("balance");
	TCase *t = tcase_create("live");

	tcase_set_timeout(t, 240);
	tcase_add_test(t, replacement_under_load_fails_nothing_and_changes_no_token);
	tcase_add_test(t, bad_balance_flags_are_refused);
	suite_add_tcase(s, t);
	return tu_run(s);
}
