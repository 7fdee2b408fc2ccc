/* API keys (server/apikey.c): which keys are accepted, how a key file is
 * read, and the Authorization header forms. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "apikey.h"
#include "err.h"
#include "testutil.h"

static struct apikeys *
keys_of(const char *const *keys, size_t n)
{
	struct apikeys *k;
	char err[256];

	ck_assert_int_eq(apikeys_new(&k), 0);
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(apikeys_add(k, keys[i], err, sizeof(err)) == 0, "%s", err);
	return k;
}

START_TEST(only_a_whole_key_matches)
{
	static const char *const keys[] = { "sk-alpha-123", "beta" };
	struct apikeys *k = keys_of(keys, 2);

	ck_assert_uint_eq(apikeys_count(k), 2);
	ck_assert(apikeys_match(k, "sk-alpha-123", 12));
	ck_assert(apikeys_match(k, "beta", 4));
	ck_assert(!apikeys_match(k, "sk-alpha-12", 11));   /* a prefix */
	ck_assert(!apikeys_match(k, "sk-alpha-1234", 13)); /* longer */
	ck_assert(!apikeys_match(k, "bet", 3));
	ck_assert(!apikeys_match(k, "betA", 4));
	ck_assert(!apikeys_match(k, "", 0));
	ck_assert(!apikeys_match(k, "beta\0", 5));          /* a NUL after */
	ck_assert(!apikeys_match(NULL, "beta", 4));
	apikeys_free(k);
	/* an empty set matches nothing */
	k = keys_of(NULL, 0);
	ck_assert_uint_eq(apikeys_count(k), 0);
	ck_assert(!apikeys_match(k, "", 0));
	apikeys_free(k);
	apikeys_free(NULL);
}
END_TEST

START_TEST(bad_keys_are_refused_without_echoing_them)
{
	struct apikeys *k;
	char err[256], big[APIKEY_MAX_LEN + 2];

	ck_assert_int_eq(apikeys_new(&k), 0);
	ck_assert_int_eq(apikeys_add(k, "", err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "empty"));
	ck_assert_int_eq(apikeys_add(k, "has space", err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_null(strstr(err, "has space"));
	ck_assert_int_eq(apikeys_add(k, "tab\there", err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_int_eq(apikeys_add(k, "caf\xc3\xa9", err, sizeof(err)), EPMOE_EINVAL);
	memset(big, 'k', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ck_assert_int_eq(apikeys_add(k, big, err, sizeof(err)), EPMOE_EINVAL);
	big[APIKEY_MAX_LEN] = '\0';
	ck_assert_int_eq(apikeys_add(k, big, err, sizeof(err)), 0);
	ck_assert_uint_eq(apikeys_count(k), 1);
	apikeys_free(k);
}
END_TEST

START_TEST(key_files_skip_comments_and_blank_lines)
{
	char path[] = "/tmp/epmoe-keys-XXXXXX", err[512];
	struct apikeys *k;
	int fd = mkstemp(path);
	FILE *f;

	ck_assert_int_ge(fd, 0);
	ck_assert_ptr_nonnull(f = fdopen(fd, "w"));
	fputs("# production keys\n\n  first-key  \r\n\tsecond-key\n# old-key\nthird\n", f);
	fclose(f);
	ck_assert_int_eq(apikeys_new(&k), 0);
	ck_assert_msg(apikeys_load_file(k, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(apikeys_count(k), 3);
	ck_assert(apikeys_match(k, "first-key", 9));
	ck_assert(apikeys_match(k, "second-key", 10));
	ck_assert(apikeys_match(k, "third", 5));
	ck_assert(!apikeys_match(k, "old-key", 7));
	ck_assert(!apikeys_match(k, "# old-key", 9));
	apikeys_free(k);
	/* a file without a key, a bad key and a missing file are errors */
	ck_assert_ptr_nonnull(f = fopen(path, "w"));
	fputs("# nothing here\n\n", f);
	fclose(f);
	ck_assert_int_eq(apikeys_new(&k), 0);
	ck_assert_int_eq(apikeys_load_file(k, path, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "no API key"));
	ck_assert_ptr_nonnull(f = fopen(path, "w"));
	fputs("good\nbad key\n", f);
	fclose(f);
	ck_assert_int_eq(apikeys_load_file(k, path, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, ":2:"));
	unlink(path);
	ck_assert_int_ne(apikeys_load_file(k, path, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, path));
	apikeys_free(k);
}
END_TEST

START_TEST(bearer_header_forms)
{
	static const char *const keys[] = { "sk-1" };
	struct apikeys *k = keys_of(keys, 1);

	ck_assert_int_eq(apikeys_check_bearer(k, "Bearer sk-1"), 0);
	ck_assert_int_eq(apikeys_check_bearer(k, "bearer sk-1"), 0);
	ck_assert_int_eq(apikeys_check_bearer(k, "BEARER \t sk-1 "), 0);
	ck_assert_int_eq(apikeys_check_bearer(k, NULL), EPMOE_EAUTH);
	ck_assert_int_eq(apikeys_check_bearer(k, ""), EPMOE_EAUTH);
	ck_assert_int_eq(apikeys_check_bearer(k, "Bearer"), EPMOE_EAUTH);
	ck_assert_int_eq(apikeys_check_bearer(k, "Bearer "), EPMOE_EAUTH);
	ck_assert_int_eq(apikeys_check_bearer(k, "Bearersk-1"), EPMOE_EAUTH);
	ck_assert_int_eq(apikeys_check_bearer(k, "Basic sk-1"), EPMOE_EAUTH);
	ck_assert_int_eq(apikeys_check_bearer(k, "Bearer sk-2"), EPMOE_EAUTH);
	ck_assert_int_eq(apikeys_check_bearer(k, "Bearer sk-1 sk-1"), EPMOE_EAUTH);
	apikeys_free(k);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("apikey");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, only_a_whole_key_matches);
	tcase_add_test(tc, bad_keys_are_refused_without_echoing_them);
	tcase_add_test(tc, key_files_skip_comments_and_blank_lines);
	tcase_add_test(tc, bearer_header_forms);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
