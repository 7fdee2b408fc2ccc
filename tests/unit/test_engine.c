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
 * as running them alone, bit for bit: every kernel's result for a row is
 * independent of the other rows of the step (common/matmul.h). */
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
	ck_assert_mem_eq(both, solo_b, V * sizeof(float));
	ck_assert_mem_eq(both + V, solo_a, r.n_ids * V * sizeof(float));
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

/* Continuous batching: S sequences with prompts of different lengths
 * decode 6 greedy steps all in one step each, on 2 threads; the same
 * sequences decoded one at a time on 1 thread give the same logits bit
 * for bit (and so the same tokens). */
START_TEST(batched_decode_equals_one_at_a_time_decode)
{
	enum { S = 5, STEPS = 6 };
	struct ref r;
	struct model *m;
	struct engine *eb, *e1;
	struct eng_seq *sb[S], *s1[S];
	size_t V = 512;
	float *lb = malloc(S * V * sizeof(float)), *l1 = malloc(V * sizeof(float));
	int32_t tok[S];
	char err[256];
	struct engine_opts o1 = { .n_threads = 1 };

	load_ref(models[_i], &r);
	load(models[_i], &m, &eb, 2);
	ck_assert_msg(engine_new(&e1, m, &o1, err, sizeof(err)) == 0, "%s", err);
	for (int i = 0; i < S; i++) {
		uint32_t n = 2 + (uint32_t)(i * 3) % (uint32_t)(r.n_ids - 2);
		ck_assert_int_eq(eng_seq_new(eb, &sb[i]), 0);
		ck_assert_int_eq(eng_seq_new(e1, &s1[i]), 0);
		struct eng_item p = { .seq = sb[i], .tokens = r.ids + i % 3, .n_tokens = n };
		ck_assert_int_eq(engine_step(eb, &p, 1), 0);
		p.seq = s1[i];
		ck_assert_int_eq(engine_step(e1, &p, 1), 0);
		tok[i] = r.ids[(i + 7) % r.n_ids];
	}
	for (int g = 0; g < STEPS; g++) {
		struct eng_item it[S];
		for (int i = 0; i < S; i++)
			it[i] = (struct eng_item){ .seq = sb[i], .tokens = &tok[i], .n_tokens = 1,
				.logits = ENG_LOGITS_LAST, .out = lb + i * V, .decode = true };
		ck_assert_int_eq(engine_step(eb, it, S), 0);
		for (int i = 0; i < S; i++) {
			struct eng_item one = { .seq = s1[i], .tokens = &tok[i], .n_tokens = 1,
				.logits = ENG_LOGITS_LAST, .out = l1, .decode = true };
			ck_assert_int_eq(engine_step(e1, &one, 1), 0);
			ck_assert_msg(memcmp(l1, lb + i * V, V * sizeof(float)) == 0,
			        "%s step %d sequence %d: batched logits differ", models[_i], g, i);
			tok[i] = tu_argmax(l1, V);
		}
	}
	for (int i = 0; i < S; i++) {
		eng_seq_free(sb[i]);
		eng_seq_free(s1[i]);
	}
	free(lb);
	free(l1);
	engine_free(eb);
	engine_free(e1);
	model_free(m);
	free_ref(&r);
}
END_TEST

/* The F16 KV cache against the F32 one on the reference prompt and its
 * greedy continuation: keys and values rounded to F16 (relative error
 * 2^-11) move the logits by at most TOL_KV_F16 here, and the greedy
 * tokens stay llama.cpp's wherever the top two logits differ by more than
 * that. */
#define TOL_KV_F16 2e-3f

START_TEST(f16_kv_cache_stays_close_to_f32)
{
	struct ref r;
	struct model *m;
	struct engine *e32, *e16;
	struct eng_seq *a, *b;
	size_t V = 512;
	char err[256];
	struct engine_opts o = { .n_threads = 2, .kv_type = DTYPE_F16 };
	float md = 0;

	load_ref(models[_i], &r);
	load(models[_i], &m, &e32, 2);
	ck_assert_msg(engine_new(&e16, m, &o, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(engine_kv_type(e16), DTYPE_F16);
	ck_assert_uint_eq(engine_kv_bytes(e16, 100) * 2, engine_kv_bytes(e32, 100));
	float *o32 = malloc(r.n_ids * V * sizeof(float)), *o16 = malloc(r.n_ids * V * sizeof(float));
	ck_assert_int_eq(eng_seq_new(e32, &a), 0);
	ck_assert_int_eq(eng_seq_new(e16, &b), 0);
	struct eng_item pa = { .seq = a, .tokens = r.ids, .n_tokens = (uint32_t)r.n_ids,
		.logits = ENG_LOGITS_ALL, .out = o32 };
	struct eng_item pb = pa;
	pb.seq = b;
	pb.out = o16;
	ck_assert_int_eq(engine_step(e32, &pa, 1), 0);
	ck_assert_int_eq(engine_step(e16, &pb, 1), 0);
	for (size_t i = 0; i < r.n_ids * V; i++) {
		float d = fabsf(o32[i] - o16[i]);
		if (d > md)
			md = d;
	}
	ck_assert_msg(md > 0, "the F16 cache changed nothing: is it used?");
	for (size_t g = 0; g + 1 < r.n_gen; g++) {
		struct eng_item da = { .seq = a, .tokens = &r.gen[g], .n_tokens = 1,
			.logits = ENG_LOGITS_LAST, .out = o32, .decode = true };
		struct eng_item db = da;
		db.seq = b;
		db.out = o16;
		ck_assert_int_eq(engine_step(e32, &da, 1), 0);
		ck_assert_int_eq(engine_step(e16, &db, 1), 0);
		for (size_t i = 0; i < V; i++) {
			float d = fabsf(o32[i] - o16[i]);
			if (d > md)
				md = d;
		}
		if (tu_margin(o32, V) > 2 * TOL_KV_F16)
			ck_assert_int_eq(tu_argmax(o16, V), tu_argmax(o32, V));
	}
	ck_assert_msg(md <= TOL_KV_F16, "%s: F16 KV moved a logit by %g", models[_i], md);
	free(o32);
	free(o16);
	eng_seq_free(a);
	eng_seq_free(b);
	engine_free(e32);
	engine_free(e16);
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
	tcase_add_loop_test(tc, batched_decode_equals_one_at_a_time_decode, 0, 3);
	tcase_add_loop_test(tc, f16_kv_cache_stays_close_to_f32, 0, 3);
	tcase_add_test(tc, bad_items_are_rejected_without_side_effects);
	tcase_add_test(tc, bad_model_files_give_messages);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
