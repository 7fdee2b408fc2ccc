/* Shared by the libFuzzer targets (tests/fuzz/fuzz_*.c): the checks every
 * target applies to what it produced.  A failed check aborts, which
 * libFuzzer reports as a crash with the input that caused it. */
#ifndef EPMOE_FUZZ_UTIL_H
#define EPMOE_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "utf8.h"

#define FZ_CHECK(cond, ...)                                               \
	do {                                                              \
		if (!(cond)) {                                            \
			fprintf(stderr, "fuzz check failed: %s: ", #cond); \
			fprintf(stderr, __VA_ARGS__);                     \
			fputc('\n', stderr);                              \
			abort();                                          \
		}                                                         \
	} while (0)

/* s[0..len) is valid UTF-8 and one complete JSON value. */
static inline void
fz_check_json(const char *s, size_t len, const char *what)
{
	cJSON *j;

	FZ_CHECK(utf8_valid_prefix(s, len) == len, "%s is not valid UTF-8: %.*s",
	        what, (int)(len > 300 ? 300 : len), s);
	j = cJSON_ParseWithLength(s, len);
	FZ_CHECK(j != NULL, "%s is not valid JSON: %.*s", what,
	        (int)(len > 300 ? 300 : len), s);
	cJSON_Delete(j);
}

/* The text of json (compact) checked as above; NULL json is out of
 * memory, which the targets do not treat as a bug. */
static inline void
fz_check_cjson(const cJSON *json, const char *what)
{
	char *s;

	if (json == NULL || (s = cJSON_PrintUnformatted(json)) == NULL)
		return;
	fz_check_json(s, strlen(s), what);
	cJSON_free(s);
}

/* A NUL-terminated copy of data (libFuzzer's buffer is not terminated). */
static inline char *
fz_strndup(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	if (s != NULL) {
		memcpy(s, data, size);
		s[size] = '\0';
	}
	return s;
}

#endif
