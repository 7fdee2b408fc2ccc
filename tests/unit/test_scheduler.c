/* The scheduler's admission (server/scheduler.c) over the real engine on
 * a tiny test model: a burst fills the free running slots at once, then
 * the wait queue, and only then is refused; the KV budget bounds the
 * slots; a cancelled queued request gives its place back; the routing
 * policy cache stays within its bound; a refused request's prompt stays
 * the caller's.  Every wait is bounded. */
#include <check.h>
#include <stdatomic.h>
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
	uint32_t cached;        /* DONE: prompt tokens from the prefix cache */
	int32_t ids[8];         /* the first generated tokens */
	float lps[8];           /* their logprobs */
	float top[8][5];        /* and their best alternatives' */
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

	if (ev->kind == SCHED_EV_TOKEN && ev->n_toks) {
		if (j->n_gen < 8) {
			j->ids[j->n_gen] = ev->toks[0].id;
			j->lps[j->n_gen] = ev->toks[0].logprob;
			for (uint32_t k = 0; k < ev->toks[0].n_top && k < 5; k++)
				j->top[j->n_gen][k] = ev->toks[0].top[k].logprob;
		}
		j->n_gen++;
	}
	if (ev->kind != SCHED_EV_DONE && ev->kind != SCHED_EV_ERROR)
		return;
	j->done = true;
	j->err = ev->kind == SCHED_EV_ERROR ? ev->err : 0;
	j->finish = ev->finish_reason;
	j->cached = ev->cached_tokens;
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

/* Submits prompt[0..n) (copied) for max_tokens greedy tokens with 5
 * alternatives each; 0 or the error. */
static int
submit_prompt(struct job *j, const int32_t *prompt, size_t n, uint32_t max_tokens,
        bool echo, struct sched_req **out)
{
	struct sched_req_params p = { 0 };
	char err[256];
	int rc;

	memset(j, 0, sizeof(*j));
	p.prompt = malloc(n * sizeof(int32_t));
	ck_assert_ptr_nonnull(p.prompt);
	memcpy(p.prompt, prompt, n * sizeof(int32_t));
	p.n_prompt = n;
	p.max_tokens = max_tokens;
	sample_params_default(&p.sample);
	p.sample.temperature = 0;
	p.top_logprobs = 5;
	p.echo = echo;
	p.ignore_eos = true;
	p.cb = on_event;
	p.ud = j;
	rc = sched_submit(F.s, &p, out, err, sizeof(err));
	if (rc != 0)
		free(p.prompt);
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

/* The same generation within the F32 tolerance: tokens, their logprobs
 * and their alternatives' (1e-4). */
static void
assert_same_generation(const struct job *a, const struct job *b, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		ck_assert_int_eq(a->ids[i], b->ids[i]);
		ck_assert_float_eq_tol(a->lps[i], b->lps[i], 1e-4f);
		for (int k = 0; k < 5; k++)
			ck_assert_float_eq_tol(a->top[i][k], b->top[i][k], 1e-4f);
	}
}

/* A repeated prompt starts from the cached KV of its whole blocks (all
 * but its last token's block is reused), reports them as cached tokens,
 * and generates what the cold run did; a prompt sharing only its first
 * block reuses that one; echo bypasses the cache. */
START_TEST(a_cache_hit_gives_the_cold_run_and_reports_cached_tokens)
{
	struct sched_cfg cfg;
	struct sched_req *r;
	struct job cold, hot, part, echo;
	int32_t prompt[40];

	sched_cfg_default(&cfg);
	setup(&cfg);
	for (int i = 0; i < 40; i++)
		prompt[i] = 10 + (i * 7) % 50;
	ck_assert_int_eq(submit_prompt(&cold, prompt, 40, 6, false, &r), 0);
	wait_done(&cold, 1);
	ck_assert_msg(cold.err == 0, "%s", cold.msg);
	ck_assert_uint_eq(cold.cached, 0);
	ck_assert_int_eq(submit_prompt(&hot, prompt, 40, 6, false, &r), 0);
	wait_done(&hot, 1);
	ck_assert_msg(hot.err == 0, "%s", hot.msg);
	ck_assert_uint_eq(hot.cached, 32);
	assert_same_generation(&cold, &hot, 6);
	prompt[20] = 3;
	ck_assert_int_eq(submit_prompt(&part, prompt, 40, 1, false, &r), 0);
	wait_done(&part, 1);
	ck_assert_uint_eq(part.cached, 16);
	ck_assert_int_eq(submit_prompt(&echo, prompt, 40, 1, true, &r), 0);
	wait_done(&echo, 1);
	ck_assert_uint_eq(echo.cached, 0);
	struct sched_stats st = stats();
	ck_assert(st.prefix_cache);
	ck_assert_uint_eq(st.pc_lookup_tokens, 120);
	ck_assert_uint_eq(st.pc_hit_tokens, 48);
	ck_assert_uint_gt(st.pc_cached_tokens, 0);
	teardown();
}
END_TEST

/* A burst sharing a prompt: the oldest prefills it, the others (whose
 * chunks come in later steps) take its blocks from the cache. */
START_TEST(a_burst_sharing_a_prompt_prefills_it_once)
{
	struct sched_cfg cfg;
	struct sched_req *r;
	struct job j[3];
	int32_t prompt[40];

	sched_cfg_default(&cfg);
	cfg.max_step_tokens = 40;
	setup(&cfg);
	for (int i = 0; i < 40; i++)
		prompt[i] = 10 + (i * 11) % 50;
	for (int k = 0; k < 3; k++)
		ck_assert_int_eq(submit_prompt(&j[k], prompt, 40, 4, false, &r), 0);
	wait_done(j, 3);
	ck_assert_uint_eq(j[0].cached, 0);
	ck_assert_uint_eq(j[1].cached, 32);
	ck_assert_uint_eq(j[2].cached, 32);
	assert_same_generation(&j[0], &j[1], 4);
	assert_same_generation(&j[0], &j[2], 4);
	teardown();
}
END_TEST

/* With --prefix-cache off nothing is cached or reported. */
START_TEST(with_the_cache_off_nothing_is_reused)
{
	struct sched_cfg cfg;
	struct sched_req *r;
	struct job j;
	int32_t prompt[40];

	sched_cfg_default(&cfg);
	cfg.prefix_cache = false;
	setup(&cfg);
	for (int i = 0; i < 40; i++)
		prompt[i] = 10 + i;
	for (int k = 0; k < 2; k++) {
		ck_assert_int_eq(submit_prompt(&j, prompt, 40, 2, false, &r), 0);
		wait_done(&j, 1);
		ck_assert_uint_eq(j.cached, 0);
	}
	ck_assert(!stats().prefix_cache);
	ck_assert_uint_eq(stats().pc_hit_tokens, 0);
	teardown();
}
END_TEST

/* Under a KV budget with room for one long sequence, its blocks and one
 * short request: a stream of short requests with distinct prompts makes
 * the cache evict, but never the blocks the long running sequence holds
 * (they are the oldest): a request repeating its prompt still finds them,
 * and the long sequence generates what it generated alone. */
START_TEST(eviction_under_a_small_budget_never_touches_running_sequences)
{
	struct sched_cfg cfg;
	struct sched_req *ra, *r;
	struct job alone, ja, jb, again;
	int32_t pa[40], pb[33];
	uint32_t long_gen = 600;

	sched_cfg_default(&cfg);
	setup(&cfg);
	/* reference: the long prompt's first tokens, cache off */
	sched_stop(F.s);
	uv_run(&F.loop, UV_RUN_DEFAULT);
	sched_free(F.s);
	for (int i = 0; i < 40; i++)
		pa[i] = 10 + (i * 3) % 40;
	cfg.prefix_cache = false;
	ck_assert_int_eq(sched_new(&F.s, &F.loop, F.e, F.tk, &cfg), 0);
	ck_assert_int_eq(submit_prompt(&alone, pa, 40, 8, false, &r), 0);
	wait_done(&alone, 1);
	sched_stop(F.s);
	uv_run(&F.loop, UV_RUN_DEFAULT);
	sched_free(F.s);
	cfg.prefix_cache = true;
	cfg.kv_budget_bytes = engine_kv_bytes(F.e, 40 + long_gen) + engine_kv_bytes(F.e, 32) +
	        engine_kv_bytes(F.e, 33 + 1) + engine_kv_bytes(F.e, 16);
	ck_assert_int_eq(sched_new(&F.s, &F.loop, F.e, F.tk, &cfg), 0);
	ck_assert_int_eq(submit_prompt(&ja, pa, 40, long_gen, false, &ra), 0);
	/* once its prompt is in, it holds its two whole blocks */
	double end = clock_now() + 60;
	while (stats().pc_pinned_bytes < engine_kv_bytes(F.e, 32) && !ja.done) {
		ck_assert(clock_now() < end);
		uv_run(&F.loop, UV_RUN_NOWAIT);
		usleep(1000);
	}
	for (int k = 0; k < 6; k++) {
		for (int i = 0; i < 33; i++)
			pb[i] = 100 + k * 40 + i;
		ck_assert_int_eq(submit_prompt(&jb, pb, 33, 1, false, &r), 0);
		wait_done(&jb, 1);
		ck_assert_msg(jb.err == 0, "%s", jb.msg);
	}
	ck_assert_msg(!ja.done, "the long request ended before the check");
	ck_assert_uint_gt(stats().pc_evictions, 0);
	ck_assert_uint_ge(stats().pc_pinned_bytes, engine_kv_bytes(F.e, 32));
	ck_assert_int_eq(submit_prompt(&again, pa, 40, 1, false, &r), 0);
	wait_done(&again, 1);
	ck_assert_msg(again.err == 0, "%s", again.msg);
	ck_assert_uint_eq(again.cached, 32);
	ck_assert_msg(!ja.done, "the long request ended before the check");
	sched_cancel(ra);
	wait_done(&ja, 1);
	assert_same_generation(&alone, &ja, 8);
	teardown();
}
END_TEST

static _Atomic uint32_t max_step_tokens;

static void
on_step(void *ud, const struct engine_timing *d, uint32_t tokens)
{
	(void)ud;
	(void)d;
	if (tokens > atomic_load(&max_step_tokens))
		atomic_store(&max_step_tokens, tokens);
}

/* Chunked prefill: a 300-token prompt arriving while a sequence decodes
 * goes in slices of decode_prefill tokens beside its decode token, never
 * in one 300-token step; alone, a prompt takes the whole step budget. */
START_TEST(a_long_prompt_is_prefilled_in_chunks_while_others_decode)
{
	struct sched_cfg cfg;
	struct sched_req *ra, *r;
	struct job ja, jb;
	int32_t prompt[300];

	sched_cfg_default(&cfg);
	cfg.decode_prefill = 64;
	cfg.prefix_cache = false;
	setup(&cfg);
	sched_set_observer(F.s, &(struct sched_observer){ .step = on_step });
	for (int i = 0; i < 300; i++)
		prompt[i] = 10 + i % 50;
	ck_assert_int_eq(submit(&ja, 2000, NULL, &ra), 0);
	double end = clock_now() + 60;
	while (ja.n_gen == 0) {
		ck_assert(clock_now() < end);
		uv_run(&F.loop, UV_RUN_NOWAIT);
		usleep(1000);
	}
	atomic_store(&max_step_tokens, 0);
	ck_assert_int_eq(submit_prompt(&jb, prompt, 300, 1, false, &r), 0);
	wait_done(&jb, 1);
	ck_assert_msg(jb.err == 0, "%s", jb.msg);
	ck_assert_msg(!ja.done, "the decoding request ended first");
	ck_assert_uint_eq(atomic_load(&max_step_tokens), 64 + 1);
	sched_cancel(ra);
	wait_done(&ja, 1);
	/* with nothing decoding, the prompt goes in one step */
	atomic_store(&max_step_tokens, 0);
	ck_assert_int_eq(submit_prompt(&jb, prompt, 300, 1, false, &r), 0);
	wait_done(&jb, 1);
	ck_assert_uint_eq(atomic_load(&max_step_tokens), 300);
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
	TCase *tp = tcase_create("prefix_cache");
	tcase_set_timeout(tp, 300);
	tcase_add_test(tp, a_cache_hit_gives_the_cold_run_and_reports_cached_tokens);
	tcase_add_test(tp, with_the_cache_off_nothing_is_reused);
	tcase_add_test(tp, a_burst_sharing_a_prompt_prefills_it_once);
	tcase_add_test(tp, eviction_under_a_small_budget_never_touches_running_sequences);
	tcase_add_test(tp, a_long_prompt_is_prefilled_in_chunks_while_others_decode);
	suite_add_tcase(s, tp);
	return tu_run(s);
}
