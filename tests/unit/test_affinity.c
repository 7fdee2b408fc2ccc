/* The affinity model (common/affinity.h) on synthetic routings with known
 * answers: a token's usual experts, co-activation and layer-to-layer
 * counts; predictions from the token id alone hit every pair of a learnt
 * token, those with the previous layer also hit unseen tokens whose next
 * experts follow from their previous ones; token rows stay bounded and
 * never report an expert the token did not use; grouping puts co-chosen
 * experts on one worker within the count bound, halving the (token,
 * worker) pairs against contiguous blocks; files round-trip and bad files
 * are refused with a message. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "affinity.h"
#include "err.h"
#include "testutil.h"

#define E 8

/* Two experts per token at each layer: layer 0 {t%8, (t+3)%8}, layer l
 * adds l to both. */
static void
experts_of(int32_t tok, uint32_t layer, int32_t out[2])
{
	out[0] = (int32_t)((tok % E + layer) % E);
	out[1] = (int32_t)(((tok + 3) % E + layer) % E);
}

/* Runs the tokens [lo, hi) through L layers as one step. */
static void
run_step(struct affinity *a, uint32_t L, int32_t lo, int32_t hi, int predict)
{
	uint32_t T = (uint32_t)(hi - lo), off[256];
	int32_t tok[256], ex[512];
	float w[512];
	struct moe_assign asg = { T, off, ex, w };

	ck_assert_uint_le(T, 255);
	for (uint32_t t = 0; t < T; t++)
		tok[t] = lo + (int32_t)t;
	ck_assert_int_eq(affinity_step(a, tok, T), 0);
	for (uint32_t l = 0; l < L; l++) {
		if (predict)
			affinity_predict(a, l, 2);
		for (uint32_t t = 0; t <= T; t++)
			off[t] = 2 * t;
		for (uint32_t t = 0; t < T; t++) {
			experts_of(tok[t], l, &ex[2 * t]);
			w[2 * t] = w[2 * t + 1] = 0.5f;
		}
		affinity_observe(a, l, &asg);
	}
}

START_TEST(learns_usual_experts_coactivation_and_transitions)
{
	struct affinity *a;
	int32_t top[4];

	ck_assert_int_eq(affinity_new(&a, 2, E, 100, 0), 0);
	for (int pass = 0; pass < 3; pass++)
		run_step(a, 2, 0, 100, 0);
	/* token 5: {5, 0} at layer 0, {6, 1} at layer 1, 3 times each */
	ck_assert_uint_eq(affinity_token_top(a, 0, 5, top, 4), 2);
	ck_assert_int_eq(top[0], 0);
	ck_assert_int_eq(top[1], 5);
	ck_assert_uint_eq(affinity_token_top(a, 1, 5, top, 4), 2);
	ck_assert_int_eq(top[0], 1);
	ck_assert_int_eq(top[1], 6);
	ck_assert_uint_eq(affinity_token_top(a, 0, 100, top, 4), 0);
	/* {0, 5} together: the 12 tokens with t % 8 == 5, three passes */
	ck_assert_uint_eq(affinity_coact(a, 0, 5, 0), 36);
	ck_assert_uint_eq(affinity_coact(a, 0, 0, 5), 36);
	ck_assert_uint_eq(affinity_coact(a, 0, 0, 1), 0);
	ck_assert_uint_eq(affinity_load(a, 0, 5), 3 * (12 + 13));
	/* e at layer 0 most often goes to e + 1 at layer 1 */
	for (uint32_t e = 0; e < E; e++) {
		uint32_t best = 0;
		for (uint32_t f = 1; f < E; f++)
			if (affinity_trans(a, 0, e, f) > affinity_trans(a, 0, e, best))
				best = f;
		ck_assert_uint_eq(best, (e + 1) % E);
	}
	affinity_free(a);
}
END_TEST

START_TEST(predictions_hit_learnt_tokens_and_transitions_cover_new_ones)
{
	struct affinity *a;
	struct aff_layer_stats s0, s1;
	int32_t p[4], want[2];

	ck_assert_int_eq(affinity_new(&a, 2, E, 200, 0), 0);
	for (int pass = 0; pass < 2; pass++)
		run_step(a, 2, 0, 100, 0);
	affinity_stats_reset(a);
	/* learnt tokens: both predictors hit every pair */
	run_step(a, 2, 0, 100, 1);
	affinity_hits(a, 0, &s0);
	affinity_hits(a, 1, &s1);
	ck_assert_uint_eq(s0.pairs, 200);
	ck_assert_uint_eq(s0.hits[AFF_PRED_TOK], 200);
	ck_assert_uint_eq(s1.hits[AFF_PRED_TOK], 200);
	ck_assert_uint_eq(s1.hits[AFF_PRED_TOK_PREV], 200);
	/* the last prediction of row 7 (token 7) at layer 1 */
	experts_of(7, 1, want);
	ck_assert_uint_eq(affinity_predicted(a, 7, AFF_PRED_TOK, p, 4), 0); /* scored, cleared */
	/* unseen tokens: the token table knows nothing, the transitions know */
	affinity_set_learning(a, 0);
	affinity_stats_reset(a);
	run_step(a, 2, 100, 200, 1);
	affinity_hits(a, 0, &s0);
	affinity_hits(a, 1, &s1);
	ck_assert_uint_eq(s0.hits[AFF_PRED_TOK], 0);
	ck_assert_uint_eq(s0.hits[AFF_PRED_TOK_PREV], 0);
	ck_assert_uint_eq(s1.hits[AFF_PRED_TOK], 0);
	ck_assert_uint_eq(s1.hits[AFF_PRED_TOK_PREV], 200);
	ck_assert_uint_eq(affinity_token_top(a, 0, 150, p, 4), 0);
	affinity_free(a);
}
END_TEST

/* The prefetch hint for layer l + 1 is the union of every row's best
 * two experts there, from its token and its experts at layer l; rows are
 * the step's rows from row0 on; nothing past the last layer. */
START_TEST(next_layer_hint_is_the_union_of_the_rows_predictions)
{
	struct affinity *a;
	int32_t tok[3] = { 1, 7, 12 }, ex[4], want[2];
	uint32_t off[3] = { 0, 2, 4 };
	float w[4] = { 0.5f, 0.5f, 0.5f, 0.5f };
	struct moe_assign asg = { 2, off, ex, w };
	uint8_t mask[E], expect[E];
	uint32_t n_expect = 0;

	ck_assert_int_eq(affinity_new(&a, 3, E, 200, 0), 0);
	for (int pass = 0; pass < 2; pass++)
		run_step(a, 3, 0, 100, 0);
	/* rows 1 and 2 of a three-row step: tokens 7 and 12 at layer 0 */
	ck_assert_int_eq(affinity_step(a, tok, 3), 0);
	experts_of(7, 0, &ex[0]);
	experts_of(12, 0, &ex[2]);
	memset(expect, 0, sizeof(expect));
	for (int r = 1; r < 3; r++) {
		experts_of(tok[r], 1, want);
		for (int i = 0; i < 2; i++) {
			n_expect += !expect[want[i]];
			expect[want[i]] = 1;
		}
	}
	ck_assert_uint_eq(affinity_next(a, 0, &asg, 1, 2, mask), n_expect);
	ck_assert_uint_eq(n_expect, 3);
	ck_assert_mem_eq(mask, expect, E);
	/* an unseen token still gets the transitions' experts */
	tok[1] = 150;
	tok[2] = 151;
	ck_assert_int_eq(affinity_step(a, tok, 3), 0);
	ck_assert_uint_eq(affinity_next(a, 0, &asg, 1, 2, mask), n_expect);
	ck_assert_mem_eq(mask, expect, E);
	/* the last layer has no next; rows past the step are refused */
	ck_assert_uint_eq(affinity_next(a, 2, &asg, 1, 2, mask), 0);
	ck_assert_uint_eq(affinity_next(a, 0, &asg, 2, 2, mask), 0);
	for (int i = 0; i < E; i++)
		ck_assert_uint_eq(mask[i], 0);
	affinity_free(a);
}
END_TEST

START_TEST(bounded_rows_never_report_a_foreign_expert)
{
	struct affinity *a, *big;
	int32_t top[4], want[2];

	ck_assert_int_eq(affinity_new(&a, 2, E, 200, 16), 0);
	ck_assert_int_eq(affinity_new(&big, 2, E, 200, 0), 0);
	ck_assert_uint_lt(affinity_bytes(a), affinity_bytes(big));
	for (int pass = 0; pass < 3; pass++) {
		run_step(a, 2, 0, 200, 0);
	}
	for (int32_t t = 0; t < 200; t++) {
		uint32_t n = affinity_token_top(a, 0, t, top, 4);
		experts_of(t, 0, want);
		for (uint32_t i = 0; i < n; i++)
			ck_assert(top[i] == want[0] || top[i] == want[1]);
	}
	affinity_free(a);
	affinity_free(big);
}
END_TEST

/* Cliques {0,5} {1,6} {2,7} {3,4}: token t uses clique t % 4. */
static void
clique_step(struct affinity *a, uint32_t T, int heavy)
{
	static const int32_t cl[4][2] = { { 0, 5 }, { 1, 6 }, { 2, 7 }, { 3, 4 } };
	uint32_t off[257];
	int32_t tok[256], ex[512];
	float w[512];
	struct moe_assign asg = { T, off, ex, w };

	for (uint32_t t = 0; t < T; t++) {
		uint32_t c = heavy && t % 2 ? 0 : t % 4;
		tok[t] = (int32_t)t;
		off[t] = 2 * t;
		ex[2 * t] = cl[c][0];
		ex[2 * t + 1] = cl[c][1];
		w[2 * t] = w[2 * t + 1] = 0.5f;
	}
	off[T] = 2 * T;
	ck_assert_int_eq(affinity_step(a, tok, T), 0);
	affinity_observe(a, 0, &asg);
}

START_TEST(grouping_colocates_coactivated_experts_within_bounds)
{
	struct affinity *a;
	int32_t grouped[E], contig[E];
	struct aff_layer_stats s;
	uint32_t cnt[4] = { 0 };

	ck_assert_int_eq(affinity_new(&a, 1, E, 256, 0), 0);
	clique_step(a, 256, 0);
	ck_assert_int_eq(affinity_group(a, 4, 0.1, grouped), 0);
	for (uint32_t e = 0; e < E; e++) {
		contig[e] = (int32_t)(e / 2);
		cnt[grouped[e]]++;
	}
	for (int w = 0; w < 4; w++)
		ck_assert_uint_eq(cnt[w], 2);
	ck_assert_int_eq(grouped[0], grouped[5]);
	ck_assert_int_eq(grouped[1], grouped[6]);
	ck_assert_int_eq(grouped[2], grouped[7]);
	ck_assert_int_eq(grouped[3], grouped[4]);
	ck_assert_uint_gt(affinity_group_score(a, grouped), affinity_group_score(a, contig));
	/* scored on the same routing: each token's row goes to one worker
	 * when grouped, to two with contiguous blocks */
	ck_assert_int_eq(affinity_set_map(a, 0, contig, 4), 0);
	ck_assert_int_eq(affinity_set_map(a, 1, grouped, 4), 0);
	affinity_set_learning(a, 0);
	affinity_stats_reset(a);
	clique_step(a, 256, 0);
	affinity_hits(a, 0, &s);
	ck_assert_uint_eq(s.pairs, 512);
	ck_assert_uint_eq(s.tok_workers[0], 512);
	ck_assert_uint_eq(s.tok_workers[1], 256);
	ck_assert_uint_eq(s.step_workers[1], 4);
	ck_assert_int_eq(affinity_set_map(a, 0, NULL, 0), 0);
	contig[3] = 9;
	ck_assert_int_eq(affinity_set_map(a, 0, contig, 4), EPMOE_EINVAL);
	ck_assert_int_eq(affinity_group(a, 0, 0.1, grouped), EPMOE_EINVAL);
	ck_assert_int_eq(affinity_group(a, 9, 0.1, grouped), EPMOE_EINVAL);
	affinity_free(a);

	/* a skewed load: the count bound still holds on every worker */
	ck_assert_int_eq(affinity_new(&a, 1, E, 256, 0), 0);
	clique_step(a, 256, 1);
	ck_assert_int_eq(affinity_group(a, 3, 0.1, grouped), 0);
	memset(cnt, 0, sizeof(cnt));
	for (uint32_t e = 0; e < E; e++) {
		ck_assert_int_ge(grouped[e], 0);
		ck_assert_int_lt(grouped[e], 3);
		cnt[grouped[e]]++;
	}
	for (int w = 0; w < 3; w++)
		ck_assert_uint_le(cnt[w], 3);
	affinity_free(a);
}
END_TEST

START_TEST(files_round_trip_and_bad_files_are_refused)
{
	struct affinity *a, *b = NULL;
	char path[64], err[256];
	int32_t t1[4], t2[4];
	FILE *f;

	snprintf(path, sizeof(path), "/tmp/test_affinity_%ld.bin", (long)getpid());
	ck_assert_int_eq(affinity_new(&a, 2, E, 100, 0), 0);
	run_step(a, 2, 0, 100, 0);
	ck_assert_int_eq(affinity_save(a, path, err, sizeof(err)), 0);
	ck_assert_int_eq(affinity_load_file(&b, path, 2, E, 100, err, sizeof(err)), 0);
	for (int32_t t = 0; t < 100; t++) {
		uint32_t n = affinity_token_top(a, 1, t, t1, 4);
		ck_assert_uint_eq(affinity_token_top(b, 1, t, t2, 4), n);
		ck_assert_mem_eq(t1, t2, n * sizeof(int32_t));
	}
	ck_assert_uint_eq(affinity_coact(b, 0, 5, 0), affinity_coact(a, 0, 5, 0));
	ck_assert_uint_eq(affinity_trans(b, 0, 5, 6), affinity_trans(a, 0, 5, 6));
	affinity_free(b);
	/* another model's shape */
	ck_assert_int_eq(affinity_load_file(&b, path, 3, E, 100, err, sizeof(err)), EPMOE_EFORMAT);
	ck_assert_ptr_nonnull(strstr(err, "made for 2 layers"));
	/* truncated */
	ck_assert_int_eq(truncate(path, 100), 0);
	ck_assert_int_eq(affinity_load_file(&b, path, 2, E, 100, err, sizeof(err)), EPMOE_EFORMAT);
	/* not ours */
	f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	fputs("{\"hello\": 1}\n", f);
	fclose(f);
	ck_assert_int_eq(affinity_load_file(&b, path, 2, E, 100, err, sizeof(err)), EPMOE_EFORMAT);
	ck_assert_ptr_nonnull(strstr(err, "not an epmoe affinity file"));
	unlink(path);
	ck_assert_int_eq(affinity_load_file(&b, path, 2, E, 100, err, sizeof(err)), EPMOE_EIO);
	ck_assert_int_eq(affinity_new(&b, 0, E, 100, 0), EPMOE_EINVAL);
	affinity_free(a);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("affinity");
	TCase *t = tcase_create("model");

	tcase_add_test(t, learns_usual_experts_coactivation_and_transitions);
	tcase_add_test(t, predictions_hit_learnt_tokens_and_transitions_cover_new_ones);
	tcase_add_test(t, bounded_rows_never_report_a_foreign_expert);
	tcase_add_test(t, next_layer_hint_is_the_union_of_the_rows_predictions);
	tcase_add_test(t, grouping_colocates_coactivated_experts_within_bounds);
	tcase_add_test(t, files_round_trip_and_bad_files_are_refused);
	suite_add_tcase(s, t);
	return tu_run(s);
}
