/* The batch deadline estimator (server/deadline.h): deadline = min(cap,
 * max(floor, k x p99)) of a worker's recent replies of about the same
 * size; the cap without data; a single outlier among 128 replies does not
 * move p99, two do; old replies age out of the ring; a size without
 * enough data borrows from a larger batch size, else from a smaller one
 * scaled by the row ratio. */
#include <check.h>
#include <stdlib.h>

#include "deadline.h"
#include "testutil.h"

static struct dl_cfg
cfg(uint32_t floor, uint32_t cap, double k)
{
	struct dl_cfg c;

	dl_cfg_default(&c);
	c.floor_ms = floor;
	c.cap_ms = cap;
	c.k = k;
	return c;
}

START_TEST(defaults_and_no_data_give_the_cap)
{
	struct dl_est *d = malloc(sizeof(*d));
	struct dl_cfg c;

	dl_cfg_default(&c);
	ck_assert_uint_eq(c.floor_ms, 200);
	ck_assert_uint_eq(c.cap_ms, 10000);
	ck_assert(c.k == 3.0);
	dl_init(d);
	ck_assert_uint_eq(dl_p99_us(d, 16, c.min_samples), 0);
	ck_assert_uint_eq(dl_deadline_ms(d, 16, &c), 10000);
	/* fewer samples than needed: still no data */
	for (int i = 0; i < 7; i++)
		dl_observe(d, 16, 5000);
	ck_assert_uint_eq(dl_deadline_ms(d, 16, &c), 10000);
	dl_observe(d, 16, 5000);
	ck_assert_uint_eq(dl_p99_us(d, 16, c.min_samples), 5000);
	free(d);
}
END_TEST

START_TEST(deadline_is_k_times_p99_between_floor_and_cap)
{
	struct dl_est *d = malloc(sizeof(*d));
	struct dl_cfg c = cfg(10, 1000, 3.0);

	dl_init(d);
	for (int i = 0; i < 50; i++)
		dl_observe(d, 16, 20000 + (uint64_t)i); /* ~20 ms */
	/* p99 of 20000..20049 = ceil(.99 * 50) = 50th = 20049 */
	ck_assert_uint_eq(dl_p99_us(d, 16, 8), 20049);
	ck_assert_uint_eq(dl_deadline_ms(d, 16, &c), 61); /* ceil(3 x 20.049) */
	c.floor_ms = 200;
	ck_assert_uint_eq(dl_deadline_ms(d, 16, &c), 200);
	c.floor_ms = 10;
	c.cap_ms = 50;
	ck_assert_uint_eq(dl_deadline_ms(d, 16, &c), 50);
	free(d);
}
END_TEST

START_TEST(one_outlier_in_128_does_not_move_p99_two_do)
{
	struct dl_est *d = malloc(sizeof(*d));

	dl_init(d);
	for (int i = 0; i < 127; i++)
		dl_observe(d, 1, 1000);
	dl_observe(d, 1, 900000);
	ck_assert_uint_eq(dl_p99_us(d, 1, 8), 1000);
	dl_observe(d, 1, 900000); /* replaces the oldest 1000 */
	ck_assert_uint_eq(dl_p99_us(d, 1, 8), 900000);
	/* a slow spell ages out of the ring */
	for (int i = 0; i < DL_RING; i++)
		dl_observe(d, 1, 2000);
	ck_assert_uint_eq(dl_p99_us(d, 1, 8), 2000);
	free(d);
}
END_TEST

START_TEST(sizes_without_data_borrow_from_their_neighbours)
{
	struct dl_est *d = malloc(sizeof(*d));

	dl_init(d);
	/* only batches of 16..31 rows seen, p99 10 ms */
	for (int i = 0; i < 20; i++)
		dl_observe(d, 20, 10000);
	/* a smaller batch: the larger batch's p99 bounds it */
	ck_assert_uint_eq(dl_p99_us(d, 1, 8), 10000);
	ck_assert_uint_eq(dl_p99_us(d, 4, 8), 10000);
	/* a larger one: scaled by rows / 31 (the largest size seen) */
	ck_assert_uint_eq(dl_p99_us(d, 310, 8), 100000);
	ck_assert_uint_eq(dl_p99_us(d, 31, 8), 10000);
	/* buckets: 4 and 5 rows share one, 8 does not */
	for (int i = 0; i < 10; i++)
		dl_observe(d, 4, 3000);
	ck_assert_uint_eq(dl_p99_us(d, 5, 8), 3000);
	ck_assert_uint_eq(dl_p99_us(d, 7, 8), 3000);
	ck_assert_uint_eq(dl_p99_us(d, 8, 8), 10000);
	/* huge batches share the last bucket */
	for (int i = 0; i < 10; i++)
		dl_observe(d, 1u << 20, 700000);
	ck_assert_uint_eq(dl_p99_us(d, 5000, 8), 700000);
	free(d);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("deadline");
	TCase *t = tcase_create("estimator");

	tcase_add_test(t, defaults_and_no_data_give_the_cap);
	tcase_add_test(t, deadline_is_k_times_p99_between_floor_and_cap);
	tcase_add_test(t, one_outlier_in_128_does_not_move_p99_two_do);
	tcase_add_test(t, sizes_without_data_borrow_from_their_neighbours);
	suite_add_tcase(s, t);
	return tu_run(s);
}
