/* Logging (common/log.c): a warning the network can trigger at will is
 * rate-limited, and JSON lines stay valid JSON whatever bytes a message
 * quotes. */
#include <check.h>
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "testutil.h"
#include "utf8.h"

/* Runs fn with stderr going to a file; returns what it wrote (free()). */
static char *
capture(void (*fn)(void))
{
	char path[] = "/tmp/epmoe-log-XXXXXX";
	int fd = mkstemp(path), saved = dup(STDERR_FILENO);
	char *out;
	size_t len;

	ck_assert_int_ge(fd, 0);
	fflush(stderr);
	dup2(fd, STDERR_FILENO);
	fn();
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(fd);
	out = tu_read(path, &len);
	unlink(path);
	ck_assert_ptr_nonnull(out);
	return out;
}

static size_t
count(const char *s, const char *needle)
{
	size_t n = 0;

	for (const char *p = s; (p = strstr(p, needle)) != NULL; p++)
		n++;
	return n;
}

static struct log_limit lim = LOG_LIMIT_INIT;

static void
flood(void)
{
	for (int i = 0; i < 200; i++)
		log_warn_limited(&lim, "malformed frame %d", i);
}

START_TEST(a_flood_of_warnings_is_rate_limited)
{
	char *out = capture(flood);

	ck_assert_uint_eq(count(out, "malformed frame"), LOG_LIMIT_BURST);
	ck_assert_ptr_nonnull(strstr(out, "malformed frame 0"));
	ck_assert_ptr_null(strstr(out, "malformed frame 5\n"));
	ck_assert_uint_eq(lim.total_suppressed, 200 - LOG_LIMIT_BURST);
	free(out);
	/* a new window lets the next one through, with the count dropped */
	lim.window_start_ms -= LOG_LIMIT_WINDOW_MS;
	out = capture(flood);
	ck_assert_ptr_nonnull(strstr(out, "malformed frame 0 (195 similar messages were not logged)"));
	free(out);
}
END_TEST

static void
bad_bytes(void)
{
	log_set_json(1);
	log_warn("no route for GET /\xff\xfe caf\xc3\xa9 \xe2\x82 \"q\"\n\t");
	log_set_json(0);
}

START_TEST(json_lines_stay_valid_with_bad_bytes)
{
	char *out = capture(bad_bytes);
	cJSON *j;

	ck_assert(utf8_valid_prefix(out, strlen(out)) == strlen(out));
	ck_assert_ptr_nonnull(j = cJSON_Parse(out));
	ck_assert_str_eq(cJSON_GetObjectItem(j, "msg")->valuestring,
	        "no route for GET /?? caf\xc3\xa9 ?? \"q\"\n\t");
	cJSON_Delete(j);
	free(out);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, a_flood_of_warnings_is_rate_limited);
	tcase_add_test(tc, json_lines_stay_valid_with_bad_bytes);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
