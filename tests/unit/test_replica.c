/* Replica choice (server/replica.h):
 *   dynamic: with two copies the less loaded one always wins, equal loads
 *   split about evenly; with more copies (power of two choices) the most
 *   loaded copy is never chosen and the least loaded wins about 2/3 of the
 *   time (two random distinct draws: it is in the pair with probability
 *   2/3 for three copies);
 *   static: one fixed copy per (layer, expert), the same for the same
 *   seed, spread evenly over the copies, copies on the router's node
 *   preferred. */
#include <check.h>
#include <stdlib.h>

#include "err.h"
#include "replica.h"
#include "testutil.h"

START_TEST(modes_parse_and_print)
{
	enum replica_mode m;

	ck_assert_int_eq(replica_mode_parse("static", &m), 0);
	ck_assert_int_eq(m, REPLICA_STATIC);
	ck_assert_int_eq(replica_mode_parse("dynamic", &m), 0);
	ck_assert_int_eq(m, REPLICA_DYNAMIC);
	ck_assert_int_eq(replica_mode_parse("nearest", &m), EPMOE_EINVAL);
	ck_assert_int_eq(replica_mode_parse(NULL, &m), EPMOE_EINVAL);
	ck_assert_str_eq(replica_mode_name(REPLICA_STATIC), "static");
	ck_assert_str_eq(replica_mode_name(REPLICA_DYNAMIC), "dynamic");
}
END_TEST

START_TEST(dynamic_takes_the_less_loaded_of_two)
{
	struct replica_ctx rc;
	uint32_t ws[2] = { 3, 1 }, n1 = 0;
	uint64_t load[4] = { 0, 5, 0, 10 };

	replica_init(&rc, REPLICA_DYNAMIC, 7);
	for (int i = 0; i < 1000; i++)
		ck_assert_uint_eq(replica_pick(&rc, 0, 0, ws, 2, load, NULL), 1);
	/* one copy: it */
	ck_assert_uint_eq(replica_pick(&rc, 0, 0, ws, 1, load, NULL), 0);
	/* equal loads: both used */
	load[3] = 5;
	for (int i = 0; i < 1000; i++)
		n1 += replica_pick(&rc, 0, 0, ws, 2, load, NULL);
	ck_assert_msg(n1 > 400 && n1 < 600, "%u of 1000 to the second copy", n1);
}
END_TEST

START_TEST(dynamic_power_of_two_never_picks_the_busiest)
{
	struct replica_ctx rc;
	uint32_t ws[3] = { 0, 1, 2 }, hits[3] = { 0 };
	uint64_t load[3] = { 50, 0, 100 };

	replica_init(&rc, REPLICA_DYNAMIC, 11);
	for (int i = 0; i < 3000; i++)
		hits[replica_pick(&rc, 2, 5, ws, 3, load, NULL)]++;
	ck_assert_uint_eq(hits[2], 0);
	ck_assert_msg(hits[1] > 1800 && hits[1] < 2200, "least loaded won %u of 3000", hits[1]);
	ck_assert_uint_eq(hits[0] + hits[1], 3000);
}
END_TEST

START_TEST(static_is_fixed_per_expert_and_spread_evenly)
{
	struct replica_ctx a, b, c;
	uint32_t ws[2] = { 0, 1 }, first = 0, diff = 0;
	uint64_t load[2] = { 0, 1000 };

	replica_init(&a, REPLICA_STATIC, 1);
	replica_init(&b, REPLICA_STATIC, 1);
	replica_init(&c, REPLICA_STATIC, 2);
	for (uint32_t l = 0; l < 8; l++) {
		for (uint32_t e = 0; e < 64; e++) {
			uint32_t k = replica_pick(&a, l, e, ws, 2, load, NULL);
			/* blind to load, the same every time and for the same seed */
			ck_assert_uint_eq(replica_pick(&a, l, e, ws, 2, load, NULL), k);
			ck_assert_uint_eq(replica_pick(&b, l, e, ws, 2, load, NULL), k);
			diff += replica_pick(&c, l, e, ws, 2, load, NULL) != k;
			first += k == 0;
		}
	}
	ck_assert_msg(first > 205 && first < 307, "%u of 512 pairs on the first copy", first);
	ck_assert_uint_gt(diff, 100); /* another seed, another spread */
}
END_TEST

START_TEST(static_prefers_copies_on_the_routers_node)
{
	struct replica_ctx rc;
	uint32_t ws[3] = { 0, 1, 2 };
	uint64_t load[3] = { 0 };
	bool near[3] = { false, true, false };

	replica_init(&rc, REPLICA_STATIC, 3);
	for (uint32_t e = 0; e < 100; e++)
		ck_assert_uint_eq(replica_pick(&rc, 0, e, ws, 3, load, near), 1);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("replica");
	TCase *t = tcase_create("choice");

	tcase_add_test(t, modes_parse_and_print);
	tcase_add_test(t, dynamic_takes_the_less_loaded_of_two);
	tcase_add_test(t, dynamic_power_of_two_never_picks_the_busiest);
	tcase_add_test(t, static_is_fixed_per_expert_and_spread_evenly);
	tcase_add_test(t, static_prefers_copies_on_the_routers_node);
	suite_add_tcase(s, t);
	return tu_run(s);
}
