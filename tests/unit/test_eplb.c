/* EPLB (server/eplb.h): the C port reproduces the DeepSeek README vector
 * (balancing.md §3.4) exactly; packing keeps equal counts and puts the
 * heaviest items apart; replication gives extra slots to the hottest
 * experts; the placement built from a plan keeps copies that the current
 * map already has (a plan equal to the current map moves nothing), and
 * under Zipf load EPLB with redundant slots brings worker max/mean close
 * to 1 where contiguous blocks are far from it. */
#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "eplb.h"
#include "err.h"
#include "placement.h"
#include "testutil.h"

START_TEST(reproduces_the_deepseek_readme_vector)
{
	static const double w[2 * 12] = {
		90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86,
		20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27,
	};
	static const int32_t want[2 * 16] = {
		5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1,
		7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1,
	};
	int32_t p2l[2 * 16], cnt[2 * 12];

	ck_assert_int_eq(eplb_rebalance(w, 2, 12, 16, 4, 2, 8, p2l, cnt), 0);
	for (int i = 0; i < 32; i++)
		ck_assert_msg(p2l[i] == want[i], "slot %d: got %d, want %d", i, p2l[i], want[i]);
	/* logcnt agrees with the plan */
	for (int l = 0; l < 2; l++)
		for (int e = 0; e < 12; e++) {
			int n = 0;
			for (int s = 0; s < 16; s++)
				n += p2l[l * 16 + s] == e;
			ck_assert_int_eq(cnt[l * 12 + e], n);
		}
}
END_TEST

START_TEST(rejects_shapes_that_do_not_fit)
{
	double w[12] = { 1 };
	int32_t p2l[16];

	ck_assert_int_eq(eplb_rebalance(w, 1, 12, 10, 1, 1, 2, p2l, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(eplb_rebalance(w, 1, 12, 15, 1, 1, 2, p2l, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(eplb_rebalance(w, 1, 12, 16, 5, 1, 2, p2l, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(eplb_rebalance(w, 1, 12, 16, 1, 3, 8, p2l, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(eplb_rebalance(w, 1, 12, 16, 1, 1, 0, p2l, NULL), EPMOE_EINVAL);
}
END_TEST

START_TEST(packing_keeps_counts_and_spreads_the_heaviest)
{
	double w[8] = { 100, 1, 1, 90, 1, 1, 1, 1 };
	int32_t pack[8], rank[8], n[2] = { 0, 0 };

	ck_assert_int_eq(eplb_pack(w, 8, 2, pack, rank), 0);
	for (int i = 0; i < 8; i++)
		n[pack[i]]++;
	ck_assert_int_eq(n[0], 4);
	ck_assert_int_eq(n[1], 4);
	ck_assert_int_ne(pack[0], pack[3]);
	ck_assert_int_eq(eplb_pack(w, 8, 3, pack, rank), EPMOE_EINVAL);
}
END_TEST

START_TEST(replication_goes_to_the_hottest_per_copy)
{
	double w[4] = { 10, 100, 30, 1 };
	int32_t p2l[7], rank[7], cnt[4];

	ck_assert_int_eq(eplb_replicate(w, 4, 7, p2l, rank, cnt), 0);
	/* 100 -> 50 -> 33.3 -> (30 vs 33.3): three extra copies of expert 1 */
	ck_assert_int_eq(cnt[1], 4);
	ck_assert_int_eq(cnt[0] + cnt[2] + cnt[3], 3);
	ck_assert_int_eq(p2l[4], 1);
	ck_assert_int_eq(rank[6], 3);
}
END_TEST

START_TEST(a_plan_equal_to_the_map_moves_nothing_and_duplicates_merge)
{
	struct placement *cur, *p;
	int32_t plan[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };
	int32_t swapped[8] = { 4, 5, 6, 7, 0, 1, 2, 3 };
	int32_t dup[8] = { 0, 0, 2, 3, 4, 5, 6, 7 };
	uint64_t moved = 99;

	ck_assert_int_eq(placement_contiguous(&cur, 1, 8, 2), 0);
	ck_assert_int_eq(eplb_to_placement(plan, 1, 8, 8, 1, 2, cur, &p, &moved), 0);
	ck_assert_uint_eq(moved, 0);
	ck_assert(placement_layer_equal(cur, p, 0));
	placement_free(p);
	/* the packs come in the other order: matched back, nothing moves */
	ck_assert_int_eq(eplb_to_placement(swapped, 1, 8, 8, 1, 2, cur, &p, &moved), 0);
	ck_assert_uint_eq(moved, 0);
	ck_assert(placement_layer_equal(cur, p, 0));
	placement_free(p);
	/* two slots of expert 0 on worker 0 are one copy; expert 1 has none
	 * in the plan, which a placement cannot express */
	ck_assert_int_eq(eplb_to_placement(dup, 1, 8, 8, 1, 2, cur, &p, &moved), EPMOE_EINVAL);
	placement_free(cur);
}
END_TEST

/* Zipf(1.2) loads over 16 experts, hot experts moved per layer. */
static void
zipf(double *w, uint32_t L, uint32_t E)
{
	for (uint32_t l = 0; l < L; l++)
		for (uint32_t e = 0; e < E; e++)
			w[l * E + (e * 5 + l * 3) % E] = 1000.0 / pow(e + 1, 1.2);
}

/* An elastic cluster: 8 experts contiguous on places 0 and 1 of 4; place
 * 3 joins: the plan over members {0, 1, 3} uses only them, serves every
 * expert, gives each member whole slots (8 -> 9 slots, one replica) and
 * loads fewer copies than a reload of everything.  Place 0 drains: over
 * {1, 3} nothing lands on 0 or 2. */
START_TEST(a_plan_over_members_uses_only_them_and_moves_little)
{
	double w[2 * 8];
	struct placement *cur, *np, *np2;
	uint32_t m3[3] = { 0, 1, 3 }, m2[2] = { 1, 3 }, bad[2] = { 1, 1 };
	uint64_t moved = 0;

	for (int i = 0; i < 16; i++)
		w[i] = 1.0;
	ck_assert_int_eq(placement_contiguous(&cur, 2, 8, 2), 0);
	ck_assert_int_eq(eplb_plan_members(w, 2, 8, 0, 1, m3, 3, 4, cur, &np, &moved), 0);
	ck_assert_uint_eq(np->n_worker, 4);
	ck_assert_uint_eq(placement_worker_slots(np, 2), 0);
	for (uint32_t k = 0; k < 3; k++)
		ck_assert_uint_eq(placement_worker_slots(np, m3[k]), 2 * 3);
	for (uint32_t l = 0; l < 2; l++)
		for (uint32_t e = 0; e < 8; e++)
			ck_assert_uint_ge(placement_expert_copies(np, l, e), 1);
	/* at least the new member's 3 per layer, less than everything */
	ck_assert_uint_ge(moved, 6);
	ck_assert_uint_lt(moved, 2 * 9);
	ck_assert_int_eq(eplb_plan_members(w, 2, 8, 0, 1, m2, 2, 4, np, &np2, &moved), 0);
	ck_assert_uint_eq(placement_worker_slots(np2, 0), 0);
	ck_assert_uint_eq(placement_worker_slots(np2, 2), 0);
	ck_assert_uint_eq(placement_worker_slots(np2, 1) + placement_worker_slots(np2, 3), 16);
	for (uint32_t l = 0; l < 2; l++)
		for (uint32_t e = 0; e < 8; e++)
			ck_assert_uint_eq(placement_expert_copies(np2, l, e), 1);
	ck_assert_uint_lt(moved, 16);
	ck_assert_int_eq(eplb_plan_members(w, 2, 8, 0, 1, bad, 2, 4, np, &np2, &moved),
	        EPMOE_EINVAL);
	ck_assert_int_eq(eplb_plan_members(w, 2, 8, 0, 1, m3, 0, 4, np, &np2, &moved),
	        EPMOE_EINVAL);
	ck_assert_int_eq(eplb_plan_members(w, 2, 8, 0, 1, m3, 3, 3, np, &np2, &moved),
	        EPMOE_EINVAL);
	placement_free(cur);
	placement_free(np);
	placement_free(np2);
}
END_TEST

START_TEST(zipf_load_is_balanced_with_redundant_slots)
{
	enum { L = 4, E = 16, W = 4, S = 20 };
	double w[L * E], before, after;
	int32_t p2l[L * S];
	struct placement *cur, *p;
	uint64_t moved;

	zipf(w, L, E);
	ck_assert_int_eq(placement_contiguous(&cur, L, E, W), 0);
	before = eplb_worker_ratio(cur, w, NULL);
	ck_assert_int_eq(eplb_rebalance(w, L, E, S, 1, 1, W, p2l, NULL), 0);
	ck_assert_int_eq(eplb_to_placement(p2l, L, E, S, 1, W, cur, &p, &moved), 0);
	after = eplb_worker_ratio(p, w, NULL);
	ck_assert_msg(before > 1.5 && after < 1.15, "max/mean %.3f -> %.3f", before, after);
	ck_assert_uint_gt(moved, 0);
	ck_assert_uint_lt(moved, (uint64_t)L * S);
	/* an expert's first copy stays first wherever it is kept (it is the
	 * exact one under --replica-dtype q8_0) */
	{
		uint32_t kept = 0;
		for (uint32_t l = 0; l < L; l++) {
			for (uint32_t e = 0; e < E; e++) {
				int32_t fw = placement_slot_worker(cur, l,
				        (uint32_t)placement_expert_slot(cur, l, e, 0));
				if (!placement_has(p, l, e, (uint32_t)fw))
					continue;
				kept++;
				ck_assert_int_eq(placement_slot_worker(p, l,
				        (uint32_t)placement_expert_slot(p, l, e, 0)), fw);
			}
		}
		ck_assert_uint_gt(kept, 0);
	}
	/* balancing again from the balanced map moves nothing */
	{
		struct placement *q;
		uint64_t again = 99;
		ck_assert_int_eq(eplb_to_placement(p2l, L, E, S, 1, W, p, &q, &again), 0);
		ck_assert_uint_eq(again, 0);
		placement_free(q);
	}
	placement_free(p);
	placement_free(cur);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("eplb");
	TCase *t = tcase_create("eplb");

	tcase_add_test(t, reproduces_the_deepseek_readme_vector);
	tcase_add_test(t, rejects_shapes_that_do_not_fit);
	tcase_add_test(t, packing_keeps_counts_and_spreads_the_heaviest);
	tcase_add_test(t, replication_goes_to_the_hottest_per_copy);
	tcase_add_test(t, a_plan_equal_to_the_map_moves_nothing_and_duplicates_merge);
	tcase_add_test(t, zipf_load_is_balanced_with_redundant_slots);
	tcase_add_test(t, a_plan_over_members_uses_only_them_and_moves_little);
	suite_add_tcase(s, t);
	return tu_run(s);
}
