/* envargs: EPMOE_* variables become flags in front of the typed ones. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "envargs.h"
#include "err.h"
#include "testutil.h"

static const struct envarg table[] = {
	{ "model", "EPMOE_T_MODEL", false, false },
	{ "nng", "EPMOE_T_NNG", false, true },
	{ "local", "EPMOE_T_LOCAL", true, false },
	{ "threads", "EPMOE_T_THREADS", false, false },
};
#define N_TABLE (sizeof(table) / sizeof(table[0]))

static void
clear(void)
{
	for (size_t i = 0; i < N_TABLE; i++)
		unsetenv(table[i].var);
}

START_TEST(set_variables_come_first_in_table_order)
{
	char *argv[] = { "prog", "--threads", "3", NULL };
	struct envargs e;

	clear();
	setenv("EPMOE_T_THREADS", "8", 1);
	setenv("EPMOE_T_MODEL", "/m.gguf", 1);
	ck_assert_int_eq(envargs_init(&e, table, N_TABLE, 3, argv), 0);
	ck_assert_int_eq(e.argc, 5);
	ck_assert_int_eq(e.n_env, 2);
	ck_assert_str_eq(e.argv[0], "prog");
	ck_assert_str_eq(e.argv[1], "--model=/m.gguf");
	ck_assert_str_eq(e.argv[2], "--threads=8");
	ck_assert_str_eq(e.argv[3], "--threads"); /* typed: parsed last, wins */
	ck_assert_str_eq(e.argv[4], "3");
	ck_assert_ptr_null(e.argv[5]);
	ck_assert_str_eq(envargs_source(&e, 1), "EPMOE_T_MODEL");
	ck_assert_str_eq(envargs_source(&e, 2), "EPMOE_T_THREADS");
	ck_assert_ptr_null(envargs_source(&e, 3));
	ck_assert_ptr_null(envargs_source(&e, 0));
	envargs_fini(&e);
}
END_TEST

START_TEST(empty_and_boolean_values)
{
	char *argv[] = { "prog", NULL };
	struct envargs e;

	clear();
	setenv("EPMOE_T_MODEL", "", 1);   /* "" = unset */
	setenv("EPMOE_T_NNG", "", 1);     /* keep_empty: "" = off */
	setenv("EPMOE_T_LOCAL", "0", 1);  /* false */
	ck_assert_int_eq(envargs_init(&e, table, N_TABLE, 1, argv), 0);
	ck_assert_int_eq(e.n_env, 1);
	ck_assert_str_eq(e.argv[1], "--nng=");
	envargs_fini(&e);
	const char *no[] = { "", "0", "false", "NO" }, *yes[] = { "1", "yes", "true", "on" };
	for (size_t i = 0; i < 4; i++) {
		clear();
		setenv("EPMOE_T_LOCAL", no[i], 1);
		ck_assert_int_eq(envargs_init(&e, table, N_TABLE, 1, argv), 0);
		ck_assert_int_eq(e.n_env, 0);
		envargs_fini(&e);
		setenv("EPMOE_T_LOCAL", yes[i], 1);
		ck_assert_int_eq(envargs_init(&e, table, N_TABLE, 1, argv), 0);
		ck_assert_int_eq(e.n_env, 1);
		ck_assert_str_eq(e.argv[1], "--local");
		envargs_fini(&e);
	}
}
END_TEST

START_TEST(nothing_set_keeps_argv)
{
	char *argv[] = { "prog", "-m", "x", NULL };
	struct envargs e;

	clear();
	ck_assert_int_eq(envargs_init(&e, table, N_TABLE, 3, argv), 0);
	ck_assert_int_eq(e.argc, 3);
	ck_assert_int_eq(e.n_env, 0);
	ck_assert_ptr_eq(e.argv[1], argv[1]);
	envargs_fini(&e);
	envargs_fini(&e); /* twice is harmless */
	ck_assert_int_eq(envargs_init(&e, table, 65, 3, argv), EPMOE_EINVAL);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("envargs");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, set_variables_come_first_in_table_order);
	tcase_add_test(tc, empty_and_boolean_values);
	tcase_add_test(tc, nothing_set_keeps_argv);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
