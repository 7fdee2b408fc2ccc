/* Error codes: every code has its own message. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "testutil.h"

START_TEST(strerror_names_every_code)
{
	for (int e = EPMOE_EINTERNAL; e <= 0; e++) {
		const char *m = epmoe_strerror(e);
		ck_assert_ptr_nonnull(m);
		ck_assert_str_ne(m, "unknown error");
		for (int f = e + 1; f <= 0; f++)
			ck_assert_str_ne(m, epmoe_strerror(f));
	}
	ck_assert_str_eq(epmoe_strerror(-999), "unknown error");
}
END_TEST

START_TEST(errno_maps_to_codes)
{
	ck_assert_int_eq(epmoe_err_from_errno(ENOMEM), EPMOE_ENOMEM);
	ck_assert_int_eq(epmoe_err_from_errno(ENOENT), EPMOE_ENOENT);
	ck_assert_int_eq(epmoe_err_from_errno(EACCES), EPMOE_EIO);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("err");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, strerror_names_every_code);
	tcase_add_test(tc, errno_maps_to_codes);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
