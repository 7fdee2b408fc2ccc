/* The forward pass against llama.cpp's logits on the reference models
 * (../shared/testdata): every prompt position in one batch, and the greedy
 * continuation one token at a time through the KV cache.  Tolerance: the
 * max absolute logit difference must stay within 1e-4 (the README's
 * independent numpy check agrees with llama.cpp to about 1e-6). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "err.h"
#include "model.h"
#include "testutil.h"

#define TOL_PROMPT 1e-4f
#define TOL_GEN 1e-4f
#define GREEDY_MARGIN 1e-3f

static const char *const models[] = { "mixtral-tiny-f32", "qwen2moe-tiny-f32",
	"olmoe-tiny-f32" };

struct ref {
	int32_t ids[256];
	size_t n_ids;
	int32_t gen[64];
	size_t n_gen;
	float *logits;    /* [n_ids, V] */
	float *genlogits; /* [n_gen, V] */
};


static void
load_ref(const char *name, struct ref *r)
{
	char f[256];
	char *txt;
	size_t len;

	snprintf(f, sizeof(f), "%s.ids.txt", name);
	txt = tu_read(tu_data(f), NULL);
	ck_assert_ptr_nonnull(txt);
	r->n_ids = tu_parse_ids(txt, r->ids, 256);
	free(txt);
	snprintf(f, sizeof(f), "%s.gen.txt", name);
	txt = tu_read(tu_data(f), NULL);
	ck_assert_ptr_nonnull(txt);
	r->n_gen = tu_parse_ids(txt, r->gen, 64);
	free(txt);
	snprintf(f, sizeof(f), "%s.logits.f32", name);
	r->logits = tu_read(tu_data(f), &len);
	ck_assert_ptr_nonnull(r->logits);
	ck_assert_uint_eq(len, r->n_ids * 512 * sizeof(float));
	snprintf(f, sizeof(f), "%s.genlogits.f32", name);
	r->genlogits = tu_read(tu_data(f), &len);
	ck_assert_ptr_nonnull(r->genlogits);
	ck_assert_uint_eq(len, r->n_gen * 512 * sizeof(float));
}

static void
free_ref(struct ref *r)
{
	free(r->logits);
	free(r->genlogits);
}



/* Compares one row; returns the max abs diff and checks greedy ids. */
static float
cmp_row(const float *got, const float *want, size_t V, const char *what, size_t pos)
{
	float md = 0;
	for (size_t i = 0; i < V; i++) {
		float d = fabsf(got[i] - want[i]);
		ck_assert_msg(isfinite(got[i]), "%s pos %zu: non-finite logit", what, pos);
		if (d > md)
			md = d;
	}
	if (tu_margin(want, V) > GREEDY_MARGIN)
		ck_assert_msg(tu_argmax(got, V) == tu_argmax(want, V),
		        "%s pos %zu: greedy id %d, llama.cpp %d", what, pos,
		        tu_argmax(got, V), tu_argmax(want, V));
	return md;
}

static void
load(const char *name, struct model **m, struct engine **e, int threads)
{
	char path[256], err[512] = "";
	struct engine_opts o = { .n_threads = threads };
	snprintf(path, sizeof(path), "%s.gguf", name);
	ck_assert_msg(model_load(m, tu_data(path), err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(engine_new(e, *m, &o, err, sizeof(err)) == 0, "%s", err);
}

static void
check_model(const char *name, int threads)
{
	struct ref r;
	struct model *m;
	struct engine *e;
	struct eng_seq *s;
	size_t V = 512;
	float *out, md = 0;

	load_ref(name, &r);
	load(name, &m, &e, threads);
	ck_assert_uint_eq(m->hp.n_vocab, V);
	out = malloc(r.n_ids * V * sizeof(float));
	ck_assert_int_eq(eng_seq_new(e, &s), 0);
	struct eng_item it = { .seq = s, .tokens = r.ids, .n_tokens = (uint32_t)r.n_ids,
		.logits = ENG_LOGITS_ALL, .out = out };
	ck_assert_int_eq(engine_step(e, &it, 1), 0);
	for (size_t p = 0; p < r.n_ids; p++) {
		float d = cmp_row(out + p * V, r.logits + p * V, V, name, p);
		if (d > md)
			md = d;
	}
	ck_assert_msg(md <= TOL_PROMPT, "%s prompt: max |diff| %g > %g", name, md, TOL_PROMPT);
	/* continuation: llama.cpp's greedy tokens fed one at a time */
	md = 0;
	for (size_t g = 0; g + 1 < r.n_gen; g++) {
		struct eng_item d1 = { .seq = s, .tokens = &r.gen[g], .n_tokens = 1,
			.logits = ENG_LOGITS_LAST, .out = out, .decode = true };
		ck_assert_int_eq(engine_step(e, &d1, 1), 0);
		float d = cmp_row(out, r.genlogits + (g + 1) * V, V, name, r.n_ids + g);
		if (d > md)
			md = d;
		ck_assert_int_eq(tu_argmax(out, V), r.gen[g + 1]);
	}
	ck_assert_msg(md <= TOL_GEN, "%s decode: max |diff| %g > %g", name, md, TOL_GEN);
	ck_assert_uint_eq(s->n_pos, r.n_ids + r.n_gen - 1);
	free(out);
	eng_seq_free(s);
	engine_free(e);
	model_free(m);
	free_ref(&r);
}

START_TEST(mixtral_logits_match_llama_cpp)
{
	check_model(models[0], 2);
}
END_TEST

START_TEST(qwen2moe_logits_match_llama_cpp)
{
	check_model(models[1], 2);
}
END_TEST

START_TEST(olmoe_logits_match_llama_cpp)
{
	check_model(models[2], 2);
}
END_TEST

START_TEST(single_thread_matches_too)
{
	check_model(models[_i], 1);
}
END_TEST

/* Two sequences in one step (a prefill and a decode) give the same logits
 * as running them alone. */
START_TEST(batched_step_equals_separate_steps)
{
	struct ref r;
	struct model *m;
	struct engine *e;
	struct eng_seq *a, *b, *c;
	size_t V = 512;
	float *solo_a, *solo_b, *both;

	load_ref(models[_i], &r);
	load(models[_i], &m, &e, 2);
	solo_a = malloc(r.n_ids * V * sizeof(float));
	solo_b = malloc(V * sizeof(float));
	both = malloc((r.n_ids + 1) * V * sizeof(float));
	ck_assert_int_eq(eng_seq_new(e, &a), 0);
	ck_assert_int_eq(eng_seq_new(e, &b), 0);
	ck_assert_int_eq(eng_seq_new(e, &c), 0);
	/* b: the first 5 ids, then a decode token alone */
	struct eng_item pb = { .seq = b, .tokens = r.ids, .n_tokens = 5 };
	ck_assert_int_eq(engine_step(e, &pb, 1), 0);
	struct eng_item db = { .seq = b, .tokens = &r.ids[5], .n_tokens = 1,
		.logits = ENG_LOGITS_LAST, .out = solo_b, .decode = true };
	ck_assert_int_eq(engine_step(e, &db, 1), 0);
	struct eng_item pa = { .seq = a, .tokens = r.ids, .n_tokens = (uint32_t)r.n_ids,
		.logits = ENG_LOGITS_ALL, .out = solo_a };
	ck_assert_int_eq(engine_step(e, &pa, 1), 0);
	/* c: same prefix as b; then one step with c's decode and a's prefill */
	struct eng_item pc = { .seq = c, .tokens = r.ids, .n_tokens = 5 };
	ck_assert_int_eq(engine_step(e, &pc, 1), 0);
	eng_seq_truncate(a, 0);
	struct eng_item mix[2] = {
		{ .seq = c, .tokens = &r.ids[5], .n_tokens = 1, .logits = ENG_LOGITS_LAST,
		  .out = both, .decode = true },
		{ .seq = a, .tokens = r.ids, .n_tokens = (uint32_t)r.n_ids,
		  .logits = ENG_LOGITS_ALL, .out = both + V },
	};
	ck_assert_int_eq(engine_step(e, mix, 2), 0);
	for (size_t i = 0; i < V; i++)
		ck_assert_float_eq_tol(both[i], solo_b[i], 1e-5);
	for (size_t i = 0; i < r.n_ids * V; i++)
		ck_assert_float_eq_tol(both[V + i], solo_a[i], 1e-5);
	free(solo_a);
	free(solo_b);
	free(both);
	eng_seq_free(a);
	eng_seq_free(b);
	eng_seq_free(c);
	engine_free(e);
	model_free(m);
	free_ref(&r);
}
END_TEST

START_TEST(bad_items_are_rejected_without_side_effects)
{
	struct model *m;
	struct engine *e;
	struct eng_seq *s;
	int32_t bad[2] = { 1, 512 }, good[1] = { 1 };
	float out[512];

	load(models[0], &m, &e, 1);
	ck_assert_int_eq(eng_seq_new(e, &s), 0);
	struct eng_item it = { .seq = s, .tokens = bad, .n_tokens = 2 };
	ck_assert_int_eq(engine_step(e, &it, 1), EPMOE_EINVAL);
	ck_assert_uint_eq(s->n_pos, 0);
	bad[1] = -1;
	ck_assert_int_eq(engine_step(e, &it, 1), EPMOE_EINVAL);
	it.n_tokens = 0;
	ck_assert_int_eq(engine_step(e, &it, 1), EPMOE_EINVAL);
	struct eng_item nobuf = { .seq = s, .tokens = good, .n_tokens = 1,
		.logits = ENG_LOGITS_LAST, .out = NULL };
	ck_assert_int_eq(engine_step(e, &nobuf, 1), EPMOE_EINVAL);
	/* the same sequence twice in one step */
	struct eng_item twice[2] = { { .seq = s, .tokens = good, .n_tokens = 1 },
		{ .seq = s, .tokens = good, .n_tokens = 1 } };
	ck_assert_int_eq(engine_step(e, twice, 2), EPMOE_EINVAL);
	/* past the context */
	s->n_pos = engine_n_ctx(e);
	nobuf.out = out;
	ck_assert_int_eq(engine_step(e, &nobuf, 1), EPMOE_ERANGE);
	eng_seq_free(s);
	engine_free(e);
	model_free(m);
}
END_TEST

START_TEST(bad_model_files_give_messages)
{
	struct model *m = NULL;
	char err[512] = "";
	ck_assert_int_ne(model_load(&m, "/nonexistent/x.gguf", err, sizeof(err)), 0);
	ck_assert_ptr_null(m);
	ck_assert(strlen(err) > 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("engine");
	TCase *tc = tcase_create("reference");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, mixtral_logits_match_llama_cpp);
	tcase_add_test(tc, qwen2moe_logits_match_llama_cpp);
	tcase_add_test(tc, olmoe_logits_match_llama_cpp);
	tcase_add_loop_test(tc, single_thread_matches_too, 0, 3);
	tcase_add_loop_test(tc, batched_step_equals_separate_steps, 0, 3);
	tcase_add_test(tc, bad_items_are_rejected_without_side_effects);
	tcase_add_test(tc, bad_model_files_give_messages);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
