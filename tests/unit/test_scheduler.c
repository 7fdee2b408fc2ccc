/* The scheduler's admission (server/scheduler.c) over the real engine on
 * a tiny test model: a burst fills the free running slots at once, then
 * the wait queue, and only then is refused; the KV budget bounds the
 * slots; a cancelled queued request gives its place back; the routing
 * policy cache stays within its bound; a refused request's prompt stays
 * the caller's.  Every wait is bounded. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "clock.h"
#include "engine.h"
#include "err.h"
#include "model.h"
#include "scheduler.h"
#include "testutil.h"
#include "tok.h"

struct fixture {
	uv_loop_t loop;
	struct model *m;
	struct engine *e;
	struct tok *tk;
	struct sched *s;
};

/* What a request's events said. */
struct job {
	bool done;
	int err;
	const char *finish;
	uint32_t n_gen;
	char msg[256];
};

static struct fixture F;

static void
setup(const struct sched_cfg *cfg)
{
	struct engine_opts eo = { .n_threads = 1 };
	char err[256];

	memset(&F, 0, sizeof(F));
	ck_assert_int_eq(uv_loop_init(&F.loop), 0);
	ck_assert_int_eq(model_load(&F.m, tu_data("mixtral-tiny-f32.gguf"), err, sizeof(err)), 0);
	ck_assert_int_eq(engine_new(&F.e, F.m, &eo, err, sizeof(err)), 0);
	ck_assert_int_eq(tok_load(&F.tk, F.m->gguf, err, sizeof(err)), 0);
	ck_assert_int_eq(sched_new(&F.s, &F.loop, F.e, F.tk, cfg), 0);
}

static void
teardown(void)
{
	sched_stop(F.s);
	uv_run(&F.loop, UV_RUN_DEFAULT);
	sched_free(F.s);
	tok_free(F.tk);
	engine_free(F.e);
	model_free(F.m);
	ck_assert_int_eq(uv_loop_close(&F.loop), 0);
}

static void
on_event(const struct sched_event *ev, void *ud)
{
	struct job *j = ud;

	if (ev->kind == SCHED_EV_TOKEN && ev->n_toks)
		j->n_gen++;
	if (ev->kind != SCHED_EV_DONE && ev->kind != SCHED_EV_ERROR)
		return;
	j->done = true;
	j->err = ev->kind == SCHED_EV_ERROR ? ev->err : 0;
	j->finish = ev->finish_reason;
	snprintf(j->msg, sizeof(j->msg), "%s", ev->message);
	sched_req_free(ev->req);
}

/* Submits a 4-token prompt for max_tokens tokens.  On success the prompt
 * is the scheduler's; on failure it is freed here (it is still ours: a
 * leak under ASan otherwise, a double free if the scheduler had it). */
static int
submit(struct job *j, uint32_t max_tokens, const char *routing, struct sched_req **out)
{
	struct sched_req_params p = { 0 };
	char err[256];
	int rc;

	memset(j, 0, sizeof(*j));
	p.prompt = malloc(4 * sizeof(int32_t));
	ck_assert_ptr_nonnull(p.prompt);
	for (int i = 0; i < 4; i++)
		p.prompt[i] = 10 + i;
	p.n_prompt = 4;
	p.max_tokens = max_tokens;
	sample_params_default(&p.sample);
	p.sample.temperature = 0;
	p.routing = routing;
	p.ignore_eos = true;
	p.cb = on_event;
	p.ud = j;
	rc = sched_submit(F.s, &p, out, err, sizeof(err));
	if (rc == 0) {
		ck_assert_ptr_null(p.prompt);
	} else {
		ck_assert_ptr_nonnull(p.prompt);
		free(p.prompt);
	}
	return rc;
}

/* Runs the loop until jobs[0..n) are done (bounded: 120 s). */
static void
wait_done(struct job *jobs, size_t n)
{
	double end = clock_now() + 120;

	for (;;) {
		size_t k = 0;
		for (size_t i = 0; i < n; i++)
			k += jobs[i].done;
		if (k == n)
			return;
		ck_assert_msg(clock_now() < end, "%zu of %zu requests finished in time", k, n);
		uv_run(&F.loop, UV_RUN_NOWAIT);
		usleep(1000);
	}
}

static struct sched_stats
stats(void)
{
	struct sched_stats st;
	sched_get_stats(F.s, &st);
	return st;
}

START_TEST(a_burst_fills_free_slots_then_the_queue_then_is_refused)
{
	struct sched_cfg cfg;
	struct sched_req *r;
	struct job jobs[10];

	sched_cfg_default(&cfg);
	cfg.max_running = 4;
	cfg.max_waiting = 2;
	setup(&cfg);
	/* long requests: none finishes while the burst arrives */
	for (int i = 0; i < 10; i++) {
		int rc = submit(&jobs[i], 200, NULL, &r);
		ck_assert_msg(rc == (i < 6 ? 0 : EPMOE_EBUSY), "request %d: %d", i, rc);
		if (rc)
			jobs[i].done = true;
	}
	struct sched_stats st = stats();
	ck_assert_uint_eq(st.slots_used, 4);
	ck_assert_uint_eq(st.waiting, 2);
	wait_done(jobs, 10);
	for (int i = 0; i < 6; i++) {
		ck_assert_msg(jobs[i].err == 0, "request %d: %s", i, jobs[i].msg);
		ck_assert_str_eq(jobs[i].finish, "length");
		ck_assert_uint_eq(jobs[i].n_gen, 200);
	}
	st = stats();
	ck_assert_uint_eq(st.slots_used, 0);
	ck_assert_uint_eq(st.waiting, 0);
	ck_assert_uint_eq(st.kv_bytes_used, 0);
	/* every slot is free again: the next request runs at once */
	ck_assert_int_eq(submit(&jobs[0], 1, NULL, &r), 0);
	ck_assert_uint_eq(stats().slots_used, 1);
	wait_done(jobs, 1);
	teardown();
}
END_TEST

START_TEST(the_kv_budget_bounds_the_running_slots)
{
	struct sched_cfg cfg;
	struct sched_req *r;
	struct job jobs[5];

	sched_cfg_default(&cfg);
	cfg.max_running = 8;
	cfg.max_waiting = 8;
	setup(&cfg);
	/* room for the reservations (prompt + max_tokens) of two requests */
	cfg.kv_budget_bytes = 2 * engine_kv_bytes(F.e, 4 + 100);
	sched_stop(F.s);
	uv_run(&F.loop, UV_RUN_DEFAULT);
	sched_free(F.s);
	ck_assert_int_eq(sched_new(&F.s, &F.loop, F.e, F.tk, &cfg), 0);
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(submit(&jobs[i], 100, NULL, &r), 0);
	struct sched_stats st = stats();
	ck_assert_uint_eq(st.slots_used, 2);
	ck_assert_uint_eq(st.waiting, 3);
	ck_assert_uint_eq(st.kv_bytes_used, cfg.kv_budget_bytes);
	wait_done(jobs, 5);
	for (int i = 0; i < 5; i++)
		ck_assert_msg(jobs[i].err == 0, "request %d: %s", i, jobs[i].msg);
	ck_assert_uint_eq(stats().kv_bytes_used, 0);
	teardown();
}
END_TEST

START_TEST(a_cancelled_queued_request_gives_its_place_back)
{
	struct sched_cfg cfg;
	struct sched_req *a, *b, *c;
	struct job ja, jb, jc;

	sched_cfg_default(&cfg);
	cfg.max_running = 1;
	cfg.max_waiting = 1;
	setup(&cfg);
	ck_assert_int_eq(submit(&ja, 2000, NULL, &a), 0);
	ck_assert_int_eq(submit(&jb, 2000, NULL, &b), 0);
	ck_assert_int_eq(submit(&jc, 2000, NULL, &c), EPMOE_EBUSY);
	sched_cancel(b);
	wait_done(&jb, 1);
	ck_assert_int_eq(jb.err, EPMOE_ECANCELED);
	ck_assert_uint_eq(jb.n_gen, 0);
	ck_assert_uint_eq(stats().waiting, 0);
	ck_assert_int_eq(submit(&jc, 2000, NULL, &c), 0);
	ck_assert_uint_eq(stats().waiting, 1);
	sched_cancel(a);
	sched_cancel(c);
	wait_done(&ja, 1);
	wait_done(&jc, 1);
	ck_assert_int_eq(ja.err, EPMOE_ECANCELED);
	ck_assert_int_eq(jc.err, EPMOE_ECANCELED);
	ck_assert_uint_eq(stats().slots_used, 0);
	ck_assert_uint_eq(stats().requests_cancelled, 3);
	teardown();
}
END_TEST

START_TEST(routing_policies_are_cached_within_a_bound)
{
	struct sched_cfg cfg;
	struct sched_req *r;
	struct job j;
	char spec[64];

	sched_cfg_default(&cfg);
	setup(&cfg);
	for (int i = 0; i < SCHED_POLICY_CACHE + 36; i++) {
		snprintf(spec, sizeof(spec), "ssr:lambda=%.3f", 1.0 + i / 1000.0);
		ck_assert_int_eq(submit(&j, 1, spec, &r), 0);
		wait_done(&j, 1);
		ck_assert_msg(j.err == 0, "%s: %s", spec, j.msg);
		ck_assert_uint_le(stats().policies_cached, SCHED_POLICY_CACHE);
	}
	ck_assert_uint_eq(stats().policies_cached, SCHED_POLICY_CACHE);
	/* a cached one is found again */
	ck_assert_int_eq(submit(&j, 1, spec, &r), 0);
	wait_done(&j, 1);
	ck_assert_uint_eq(stats().policies_cached, SCHED_POLICY_CACHE);
	teardown();
}
END_TEST

START_TEST(after_stop_requests_are_refused_and_stay_the_callers)
{
	struct sched_cfg cfg;
	struct sched_req *r;
	struct job j;

	sched_cfg_default(&cfg);
	setup(&cfg);
	ck_assert_int_eq(submit(&j, 1000, NULL, &r), 0);
	sched_stop(F.s); /* the pending request fails with its final event */
	ck_assert(j.done);
	ck_assert_int_eq(j.err, EPMOE_ECLOSED);
	ck_assert_int_eq(submit(&j, 1, NULL, &r), EPMOE_ECLOSED);
	teardown();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("scheduler");
	TCase *tc = tcase_create("admission");

	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, a_burst_fills_free_slots_then_the_queue_then_is_refused);
	tcase_add_test(tc, the_kv_budget_bounds_the_running_slots);
	tcase_add_test(tc, a_cancelled_queued_request_gives_its_place_back);
	tcase_add_test(tc, routing_policies_are_cached_within_a_bound);
	tcase_add_test(tc, after_stop_requests_are_refused_and_stay_the_callers);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
