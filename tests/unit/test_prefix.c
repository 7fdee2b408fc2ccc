/* The prefix cache (server/prefix.c) over the real engine on a tiny test
 * model: a match copies back exactly the KV bytes a sequence stored; keys
 * chain, so a block matches only behind the same prefix and a partial
 * block never matches; a block is stored once however many sequences
 * hold it; eviction takes the least recently used blocks nobody holds,
 * leaves before the blocks they continue, and never a held block; and
 * decoding on from a cache hit gives the logits of a cold run.  Over F32
 * and F16 KV caches. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "model.h"
#include "prefix.h"
#include "testutil.h"

#define BT 4 /* block tokens */

static struct model *M;
static struct engine *E;

/* Each test runs over an F32 and an F16 KV cache (loop index 0, 1): the
 * cache copies bytes of either. */
static void
open_engine(int i)
{
	struct engine_opts eo = { .n_threads = 1, .kv_type = i ? DTYPE_F16 : DTYPE_F32 };
	char err[256];

	ck_assert_int_eq(engine_new(&E, M, &eo, err, sizeof(err)), 0);
}

static void
setup(void)
{
	char err[256];

	ck_assert_int_eq(model_load(&M, tu_data("mixtral-tiny-f32.gguf"), err, sizeof(err)), 0);
}

static void
teardown(void)
{
	engine_free(E);
	model_free(M);
}

/* A sequence that prefilled tokens[0..n); logits of the last into out
 * (n_vocab floats) when out is not NULL. */
static struct eng_seq *
prefill(const int32_t *tokens, uint32_t n, float *out)
{
	struct eng_seq *s;

	ck_assert_int_eq(eng_seq_new(E, &s), 0);
	ck_assert_int_eq(eng_seq_reserve(E, s, n + 8), 0);
	struct eng_item it = { .seq = s, .tokens = tokens, .n_tokens = n,
		.logits = out ? ENG_LOGITS_LAST : ENG_LOGITS_NONE, .out = out };
	ck_assert_int_eq(engine_step(E, &it, 1), 0);
	return s;
}

static size_t
row_bytes(void)
{
	return engine_kv_bytes(E, 1) / (2 * (size_t)M->hp.n_layer);
}

/* Positions [0, n) of a and b hold the same K and V bytes. */
static void
assert_same_kv(const struct eng_seq *a, const struct eng_seq *b, uint32_t n)
{
	size_t len = n * row_bytes();
	for (uint32_t l = 0; l < M->hp.n_layer; l++) {
		ck_assert(memcmp(a->k[l], b->k[l], len) == 0);
		ck_assert(memcmp(a->v[l], b->v[l], len) == 0);
	}
}

static void
tokens_from(int32_t *t, uint32_t n, int32_t first)
{
	for (uint32_t i = 0; i < n; i++)
		t[i] = first + (int32_t)i;
}

START_TEST(a_match_gives_back_the_stored_kv_of_whole_blocks)
{
	struct pcache *c;
	struct pcache_hold h1 = { 0 }, h2 = { 0 };
	int32_t t[11];
	struct eng_seq *a, *b;

	tokens_from(t, 11, 5);
	open_engine(_i);
	ck_assert_int_eq(pcache_new(&c, E, BT), 0);
	a = prefill(t, 11, NULL);
	/* 11 tokens: two whole blocks, the partial third is not stored */
	ck_assert_uint_eq(pcache_store(c, t, 11, a, &h1, SIZE_MAX), 2);
	ck_assert_int_eq(eng_seq_new(E, &b), 0);
	ck_assert_int_eq(eng_seq_reserve(E, b, 16), 0);
	ck_assert_uint_eq(pcache_match(c, t, 11, b, &h2), 8);
	ck_assert_uint_eq(b->n_pos, 8);
	assert_same_kv(a, b, 8);
	/* shared, not stored twice */
	struct pcache_stats st;
	pcache_get_stats(c, &st);
	ck_assert_uint_eq(st.n_blocks, 2);
	ck_assert_uint_eq(st.bytes, 2 * pcache_block_bytes(c));
	ck_assert_uint_eq(pcache_block_bytes(c), engine_kv_bytes(E, BT));
	ck_assert_uint_eq(st.pinned_bytes, 2 * pcache_block_bytes(c));
	pcache_release(c, &h1);
	ck_assert_uint_eq(pcache_pinned_bytes(c), 2 * pcache_block_bytes(c));
	pcache_release(c, &h2);
	ck_assert_uint_eq(pcache_pinned_bytes(c), 0);
	eng_seq_free(a);
	eng_seq_free(b);
	pcache_free(c);
}
END_TEST

START_TEST(a_block_matches_only_behind_the_same_prefix)
{
	struct pcache *c;
	struct pcache_hold h = { 0 }, h2 = { 0 };
	int32_t t[8], u[8];
	struct eng_seq *a, *b;

	tokens_from(t, 8, 5);
	memcpy(u, t, sizeof(u));
	u[1] = 60; /* first block differs, second is the same tokens */
	open_engine(_i);
	ck_assert_int_eq(pcache_new(&c, E, BT), 0);
	a = prefill(t, 8, NULL);
	ck_assert_uint_eq(pcache_store(c, t, 8, a, &h, SIZE_MAX), 2);
	ck_assert_int_eq(eng_seq_new(E, &b), 0);
	ck_assert_int_eq(eng_seq_reserve(E, b, 8), 0);
	ck_assert_uint_eq(pcache_match(c, u, 8, b, &h2), 0);
	ck_assert_uint_eq(h2.n, 0);
	/* fewer tokens than a block: nothing */
	ck_assert_uint_eq(pcache_match(c, t, BT - 1, b, &h2), 0);
	/* n_max cuts at whole blocks */
	ck_assert_uint_eq(pcache_match(c, t, 2 * BT - 1, b, &h2), BT);
	pcache_release(c, &h2);
	pcache_release(c, &h);
	eng_seq_free(a);
	eng_seq_free(b);
	pcache_free(c);
}
END_TEST

START_TEST(eviction_takes_unheld_least_recent_leaves_first)
{
	struct pcache *c;
	struct pcache_hold ha = { 0 }, hb = { 0 }, hc = { 0 }, hm = { 0 };
	int32_t ta[8], tb[8], tc[8];
	struct eng_seq *a, *b, *s3, *m;
	size_t B;

	tokens_from(ta, 8, 5);
	tokens_from(tb, 8, 30);
	tokens_from(tc, 8, 60);
	open_engine(_i);
	ck_assert_int_eq(pcache_new(&c, E, BT), 0);
	B = pcache_block_bytes(c);
	a = prefill(ta, 8, NULL);
	b = prefill(tb, 8, NULL);
	s3 = prefill(tc, 8, NULL);
	ck_assert_uint_eq(pcache_store(c, ta, 8, a, &ha, SIZE_MAX), 2);
	ck_assert_uint_eq(pcache_store(c, tb, 8, b, &hb, SIZE_MAX), 2);
	pcache_release(c, &hb);  /* b's blocks: unheld, older than c's */
	ck_assert_uint_eq(pcache_store(c, tc, 8, s3, &hc, SIZE_MAX), 2);
	pcache_release(c, &hc);
	/* a holds its blocks: trimming to nothing leaves exactly them */
	ck_assert_uint_eq(pcache_trim(c, 0), 2 * B);
	ck_assert_int_eq(eng_seq_new(E, &m), 0);
	ck_assert_int_eq(eng_seq_reserve(E, m, 8), 0);
	ck_assert_uint_eq(pcache_match(c, ta, 8, m, &hm), 8);
	assert_same_kv(a, m, 8);
	pcache_release(c, &hm);
	eng_seq_free(m);
	/* with room for 3 blocks, b's (older) go before c's; the leaf of a
	 * chain goes before its first block */
	ck_assert_uint_eq(pcache_store(c, tb, 8, b, &hb, SIZE_MAX), 2);
	pcache_release(c, &hb);
	ck_assert_uint_eq(pcache_store(c, tc, 8, s3, &hc, SIZE_MAX), 2);
	pcache_release(c, &hc);
	ck_assert_uint_eq(pcache_trim(c, 5 * B), 5 * B);
	struct pcache_stats st;
	pcache_get_stats(c, &st);
	ck_assert_uint_eq(st.n_blocks, 5);
	ck_assert_int_eq(eng_seq_new(E, &m), 0);
	ck_assert_int_eq(eng_seq_reserve(E, m, 8), 0);
	ck_assert_uint_eq(pcache_match(c, tb, 8, m, &hm), BT); /* its leaf went */
	pcache_release(c, &hm);
	m->n_pos = 0;
	ck_assert_uint_eq(pcache_match(c, tc, 8, m, &hm), 8);
	pcache_release(c, &hm);
	/* a store beyond max_bytes stores nothing new */
	pcache_release(c, &ha);
	ck_assert_uint_eq(pcache_trim(c, 0), 0);
	ck_assert_uint_eq(pcache_store(c, ta, 8, a, &ha, B), 1);
	pcache_release(c, &ha);
	eng_seq_free(m);
	eng_seq_free(a);
	eng_seq_free(b);
	eng_seq_free(s3);
	pcache_free(c);
}
END_TEST

/* The next token's logits after a prompt whose first blocks came from the
 * cache equal a cold prefill of the whole prompt (F32: 1e-4). */
START_TEST(decoding_from_a_hit_gives_cold_logits)
{
	uint32_t V = M->hp.n_vocab;
	float *cold = malloc(V * sizeof(float)), *hot = malloc(V * sizeof(float));
	struct pcache *c;
	struct pcache_hold h = { 0 }, h2 = { 0 };
	int32_t t[13];
	struct eng_seq *a, *b;

	tokens_from(t, 13, 7);
	open_engine(_i);
	ck_assert_int_eq(pcache_new(&c, E, BT), 0);
	a = prefill(t, 13, cold);
	ck_assert_uint_eq(pcache_store(c, t, 13, a, &h, SIZE_MAX), 3);
	ck_assert_int_eq(eng_seq_new(E, &b), 0);
	ck_assert_int_eq(eng_seq_reserve(E, b, 16), 0);
	ck_assert_uint_eq(pcache_match(c, t, 12, b, &h2), 12);
	struct eng_item it = { .seq = b, .tokens = t + 12, .n_tokens = 1,
		.logits = ENG_LOGITS_LAST, .out = hot };
	ck_assert_int_eq(engine_step(E, &it, 1), 0);
	for (uint32_t v = 0; v < V; v++)
		ck_assert_float_eq_tol(hot[v], cold[v], 1e-4f);
	pcache_release(c, &h);
	pcache_release(c, &h2);
	eng_seq_free(a);
	eng_seq_free(b);
	pcache_free(c);
	free(cold);
	free(hot);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("prefix");
	TCase *tc = tcase_create("core");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, a_match_gives_back_the_stored_kv_of_whole_blocks, 0, 2);
	tcase_add_loop_test(tc, a_block_matches_only_behind_the_same_prefix, 0, 2);
	tcase_add_loop_test(tc, eviction_takes_unheld_least_recent_leaves_first, 0, 2);
	tcase_add_loop_test(tc, decoding_from_a_hit_gives_cold_logits, 0, 2);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
