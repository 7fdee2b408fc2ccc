/* Two micro-batches in flight (engine_set_microbatch): a step split into
 * two halves, ping-pong through an expert backend with submit/wait, gives
 * the logits of the same step run as one batch.  The backend here defers
 * each half's expert work to wait(), so the engine's buffers for a half
 * must stay untouched while the other half runs its attention, gate and
 * routing: any scratch shared between live halves changes the logits.
 * Tolerance: max |logit difference| <= 1e-5 (only the products' row
 * blocking can differ; the reference models give bit-identical rows).
 * Policies that look at the whole batch (expert_choice) and steps of one
 * sequence are not split.  Co-batching puts sequences predicted on the
 * same worker into the same half (synthetic affinity, known answer). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "affinity.h"
#include "engine.h"
#include "engine_plan.h"
#include "err.h"
#include "model.h"
#include "testutil.h"

#define TOL 1e-5f

static const char *const models[] = { "mixtral-tiny-f32", "qwen2moe-tiny-f32",
	"olmoe-tiny-f32" };

/* A backend whose submit() only records the call; wait() runs it on the
 * in-process experts. */
struct deferred {
	struct moe_backend be;
	struct moe_backend *inner;
	struct {
		bool out;
		uint32_t layer;
		const float *x;
		const struct moe_assign *a;
		float *out_buf;
	} mb[2];
	int n_out, max_out;
	unsigned submits, waits, runs;
};

static int
d_run(struct moe_backend *be, uint32_t layer, const float *x,
        const struct moe_assign *a, float *out)
{
	struct deferred *d = (struct deferred *)be;
	d->runs++;
	return d->inner->run(d->inner, layer, x, a, out);
}

static int
d_submit(struct moe_backend *be, unsigned mb, uint32_t layer, const float *x,
        const struct moe_assign *a, float *out)
{
	struct deferred *d = (struct deferred *)be;

	ck_assert_uint_lt(mb, 2);
	ck_assert_msg(!d->mb[mb].out, "micro-batch %u submitted twice", mb);
	d->mb[mb].out = true;
	d->mb[mb].layer = layer;
	d->mb[mb].x = x;
	d->mb[mb].a = a;
	d->mb[mb].out_buf = out;
	d->submits++;
	if (++d->n_out > d->max_out)
		d->max_out = d->n_out;
	return 0;
}

static int
d_wait(struct moe_backend *be, unsigned mb)
{
	struct deferred *d = (struct deferred *)be;

	ck_assert_uint_lt(mb, 2);
	ck_assert_msg(d->mb[mb].out, "wait without submit");
	d->mb[mb].out = false;
	d->n_out--;
	d->waits++;
	return d->inner->run(d->inner, d->mb[mb].layer, d->mb[mb].x, d->mb[mb].a,
	        d->mb[mb].out_buf);
}

static void
d_free(struct moe_backend *be)
{
	(void)be;
}

static void
load(const char *name, struct model **m, struct engine **e)
{
	char path[256], err[512] = "";
	struct engine_opts o = { .n_threads = 2 };
	snprintf(path, sizeof(path), "%s.gguf", name);
	ck_assert_msg(model_load(m, tu_data(path), err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(engine_new(e, *m, &o, err, sizeof(err)) == 0, "%s", err);
}

static float
max_diff(const float *a, const float *b, size_t n)
{
	float md = 0;
	for (size_t i = 0; i < n; i++) {
		float d = fabsf(a[i] - b[i]);
		ck_assert(isfinite(a[i]) && isfinite(b[i]));
		if (d > md)
			md = d;
	}
	return md;
}

/* Prefill S sequences of different lengths, then decode steps of all S
 * (plus one prefill chunk joining midway) on a split engine and a
 * one-batch engine; every step's logits compared. */
START_TEST(microbatched_steps_equal_single_batch_steps)
{
	enum { S = 5, STEPS = 4 };
	struct model *m;
	struct engine *e1, *e2;
	struct eng_seq *s1[S + 1], *s2[S + 1];
	struct deferred d = { .be = { .run = d_run, .free = d_free, .submit = d_submit,
		.wait = d_wait } };
	size_t V;
	int32_t prompt[40], tok[S + 1];
	float *l1, *l2, md = 0;

	load(models[_i], &m, &e1);
	{
		char err[256];
		struct engine_opts o = { .n_threads = 2 };
		ck_assert_msg(engine_new(&e2, m, &o, err, sizeof(err)) == 0, "%s", err);
	}
	V = m->hp.n_vocab;
	l1 = malloc((S + 1) * 12 * V * sizeof(float));
	l2 = malloc((S + 1) * 12 * V * sizeof(float));
	ck_assert_int_eq(moe_local_new(&d.inner, m, engine_pool(e2)), 0);
	engine_set_experts(e2, &d.be);
	engine_set_microbatch(e2, true, false);
	for (int i = 0; i < 40; i++)
		prompt[i] = (int32_t)((i * 37 + 11) % (int)V);
	for (int i = 0; i <= S; i++) {
		ck_assert_int_eq(eng_seq_new(e1, &s1[i]), 0);
		ck_assert_int_eq(eng_seq_new(e2, &s2[i]), 0);
	}
	/* one step prefilling S prompts of different lengths (split) */
	{
		struct eng_item a[S], b[S];
		uint32_t rows = 0;
		for (int i = 0; i < S; i++) {
			uint32_t n = 3 + (uint32_t)i * 4;
			a[i] = (struct eng_item){ .seq = s1[i], .tokens = prompt + i, .n_tokens = n,
				.logits = ENG_LOGITS_LAST, .out = l1 + i * V };
			b[i] = a[i];
			b[i].seq = s2[i];
			b[i].out = l2 + i * V;
			rows++;
		}
		ck_assert_int_eq(engine_step(e1, a, S), 0);
		ck_assert_int_eq(engine_step(e2, b, S), 0);
		md = max_diff(l1, l2, rows * V);
		ck_assert_msg(md <= TOL, "%s prefill: max |diff| %g", models[_i], md);
		for (int i = 0; i < S; i++)
			tok[i] = tu_argmax(l1 + i * V, V);
	}
	ck_assert_uint_eq(engine_mb_stats(e2)->steps, 1);
	ck_assert_uint_eq(d.submits, 2 * m->hp.n_layer);
	ck_assert_int_eq(d.max_out, 2);
	ck_assert_uint_eq(d.runs, 0);
	for (int g = 0; g < STEPS; g++) {
		struct eng_item a[S + 1], b[S + 1];
		uint32_t n = S, rows;
		for (int i = 0; i < S; i++) {
			a[i] = (struct eng_item){ .seq = s1[i], .tokens = &tok[i], .n_tokens = 1,
				.logits = ENG_LOGITS_LAST, .out = l1 + i * V, .decode = true };
			b[i] = a[i];
			b[i].seq = s2[i];
			b[i].out = l2 + i * V;
		}
		rows = S;
		if (g == 1) {
			/* a prompt chunk with every position's logits joins */
			a[S] = (struct eng_item){ .seq = s1[S], .tokens = prompt + 20, .n_tokens = 11,
				.logits = ENG_LOGITS_ALL, .out = l1 + S * V };
			b[S] = a[S];
			b[S].seq = s2[S];
			b[S].out = l2 + S * V;
			n++;
			rows += 11;
		}
		ck_assert_int_eq(engine_step(e1, a, n), 0);
		ck_assert_int_eq(engine_step(e2, b, n), 0);
		float d1 = max_diff(l1, l2, rows * V);
		ck_assert_msg(d1 <= TOL, "%s decode step %d: max |diff| %g", models[_i], g, d1);
		if (d1 > md)
			md = d1;
		for (int i = 0; i < S; i++) {
			tok[i] = tu_argmax(l1 + i * V, V);
			ck_assert_int_eq(tok[i], tu_argmax(l2 + i * V, V));
			ck_assert_uint_eq(s1[i]->n_pos, s2[i]->n_pos);
		}
	}
	ck_assert_uint_eq(engine_mb_stats(e2)->steps, 1 + STEPS);
	ck_assert_uint_eq(d.submits, d.waits);
	ck_assert_uint_eq(d.runs, 0);
	/* a step of one sequence runs as one batch */
	{
		struct eng_item one = { .seq = s2[0], .tokens = &tok[0], .n_tokens = 1,
			.logits = ENG_LOGITS_LAST, .out = l2, .decode = true };
		ck_assert_int_eq(engine_step(e2, &one, 1), 0);
		ck_assert_uint_eq(d.runs, m->hp.n_layer);
		ck_assert_uint_eq(engine_mb_stats(e2)->single, 1);
	}
	for (int i = 0; i <= S; i++) {
		eng_seq_free(s1[i]);
		eng_seq_free(s2[i]);
	}
	engine_set_experts(e2, NULL);
	d.inner->free(d.inner);
	free(l1);
	free(l2);
	engine_free(e1);
	engine_free(e2);
	model_free(m);
}
END_TEST

/* expert_choice picks tokens per expert over the whole batch: such a
 * step is never split, and neither is a step mixing it in. */
START_TEST(batch_wide_policies_are_not_split)
{
	struct model *m;
	struct engine *e;
	struct eng_seq *s[3];
	struct route_policy *ec;
	struct deferred d = { .be = { .run = d_run, .free = d_free, .submit = d_submit,
		.wait = d_wait } };
	char err[256];
	int32_t toks[3] = { 5, 9, 17 };
	float *l;

	load(models[0], &m, &e);
	l = malloc(3 * m->hp.n_vocab * sizeof(float));
	ck_assert_int_eq(moe_local_new(&d.inner, m, engine_pool(e)), 0);
	engine_set_experts(e, &d.be);
	engine_set_microbatch(e, true, false);
	ck_assert_msg(engine_policy_new(e, "expert_choice", &ec, err, sizeof(err)) == 0, "%s", err);
	struct eng_item it[3];
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(eng_seq_new(e, &s[i]), 0);
		it[i] = (struct eng_item){ .seq = s[i], .tokens = &toks[i], .n_tokens = 1,
			.logits = ENG_LOGITS_LAST, .out = l + i * m->hp.n_vocab, .decode = true };
	}
	it[1].policy = ec;
	ck_assert_int_eq(engine_step(e, it, 3), 0);
	ck_assert_uint_eq(engine_mb_stats(e)->steps, 0);
	ck_assert_uint_eq(engine_mb_stats(e)->single, 1);
	ck_assert_uint_eq(d.submits, 0);
	ck_assert_uint_eq(d.runs, m->hp.n_layer);
	/* without it the same sequences split */
	it[1].policy = NULL;
	ck_assert_int_eq(engine_step(e, it, 3), 0);
	ck_assert_uint_eq(engine_mb_stats(e)->steps, 1);
	ck_assert_uint_eq(d.submits, 2 * m->hp.n_layer);
	for (int i = 0; i < 3; i++)
		eng_seq_free(s[i]);
	route_policy_free(ec);
	engine_set_experts(e, NULL);
	d.inner->free(d.inner);
	free(l);
	engine_free(e);
	model_free(m);
}
END_TEST

/* Co-batching with known answers: tokens 10 and 11 always choose experts
 * on worker 0, 20 and 21 experts on worker 1 (a synthetic affinity model,
 * 2 workers of half the experts each).  Sequences predicted on the same
 * worker share a half; the balance bound (T/2 + T/8 rows) still splits
 * sequences that all want one worker. */
START_TEST(cobatching_groups_sequences_by_predicted_worker)
{
	struct model *m;
	struct engine *e;
	struct affinity *a;
	uint32_t L, E;
	uint16_t *map;
	uint8_t side[6];
	int32_t learn[4] = { 10, 11, 20, 21 };
	uint32_t off[5] = { 0, 2, 4, 6, 8 };
	int32_t ex[8];
	float w[8] = { .5f, .5f, .5f, .5f, .5f, .5f, .5f, .5f };

	load(models[0], &m, &e);
	L = m->hp.n_layer;
	E = m->hp.n_expert;
	ck_assert_uint_ge(E, 4);
	ck_assert_int_eq(affinity_new(&a, L, E, m->hp.n_vocab, 0), 0);
	for (int i = 0; i < 4; i++) {
		ex[2 * i] = i < 2 ? 0 : (int32_t)E - 2;
		ex[2 * i + 1] = i < 2 ? 1 : (int32_t)E - 1;
	}
	for (int round = 0; round < 3; round++) {
		struct moe_assign asg = { 4, off, ex, w };
		ck_assert_int_eq(affinity_step(a, learn, 4), 0);
		for (uint32_t l = 0; l < L; l++) {
			affinity_predict(a, l, 2);
			affinity_observe(a, l, &asg);
		}
	}
	map = malloc((size_t)L * E * sizeof(*map));
	for (uint32_t i = 0; i < L * E; i++)
		map[i] = (uint16_t)(i % E < E / 2 ? 0 : 1);
	engine_set_affinity(e, a);
	{
		int32_t t[4] = { 10, 11, 20, 21 };
		struct eng_item it[4];
		for (int i = 0; i < 4; i++)
			it[i] = (struct eng_item){ .tokens = &t[i], .n_tokens = 1, .decode = true };
		/* no worker map yet: nothing to plan with */
		ck_assert_int_eq(engine_cobatch_plan(e, it, 4, side), EPMOE_EINVAL);
		ck_assert_int_eq(engine_set_worker_map(e, map, 2), 0);
		ck_assert_int_eq(engine_cobatch_plan(e, it, 4, side), 0);
		ck_assert_msg(side[0] == side[1] && side[2] == side[3] && side[0] != side[2],
		        "sides %d %d %d %d", side[0], side[1], side[2], side[3]);
		/* interleaved: the same grouping */
		int32_t u[4] = { 10, 20, 11, 21 };
		for (int i = 0; i < 4; i++)
			it[i].tokens = &u[i];
		ck_assert_int_eq(engine_cobatch_plan(e, it, 4, side), 0);
		ck_assert_msg(side[0] == side[2] && side[1] == side[3] && side[0] != side[1],
		        "sides %d %d %d %d", side[0], side[1], side[2], side[3]);
	}
	{
		/* six sequences all predicted on worker 0: at most 3 rows a half */
		int32_t t[6] = { 10, 11, 10, 11, 10, 11 };
		struct eng_item it[6];
		int n0 = 0;
		for (int i = 0; i < 6; i++)
			it[i] = (struct eng_item){ .tokens = &t[i], .n_tokens = 1, .decode = true };
		ck_assert_int_eq(engine_cobatch_plan(e, it, 6, side), 0);
		for (int i = 0; i < 6; i++)
			n0 += side[i] == 0;
		ck_assert_int_eq(n0, 3);
	}
	engine_set_affinity(e, NULL);
	affinity_free(a);
	free(map);
	engine_free(e);
	model_free(m);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("microbatch");
	TCase *tc = tcase_create("engine");

	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, microbatched_steps_equal_single_batch_steps, 0, 3);
	tcase_add_test(tc, batch_wide_policies_are_not_split);
	tcase_add_test(tc, cobatching_groups_sequences_by_predicted_worker);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
