/* Helpers shared by the Check suites: paths of the reference data and the
 * built binaries, whole-file reads, and running a suite. */
#ifndef EPMOE_TESTUTIL_H
#define EPMOE_TESTUTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

/* $EPMOE_TESTDATA/name (or ../shared/testdata/name) into a static buffer. */
const char *tu_data(const char *name);
/* $EPMOE_BIN/name (or build/bin/name). */
const char *tu_bin(const char *name);
/* Whole file, NUL-terminated; NULL if unreadable.  Free with free(). */
void *tu_read(const char *path, size_t *len);
/* Comma-separated integers up to the end of the line (at most cap);
 * returns how many. */
size_t tu_parse_ids(const char *s, int32_t *out, size_t cap);
/* Index of the largest of v[n]; top-1 minus top-2 value. */
int tu_argmax(const float *v, size_t n);
float tu_margin(const float *v, size_t n);
/* Runs the suite (forked per test unless CK_FORK=no); returns exit status. */
int tu_run(Suite *s);

#endif
