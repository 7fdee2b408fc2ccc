/* Helpers shared by the Check suites: paths of the reference data and the
 * built binaries, whole-file reads, and running a suite. */
#ifndef EPMOE_TESTUTIL_H
#define EPMOE_TESTUTIL_H

#include <check.h>
#include <stddef.h>

/* $EPMOE_TESTDATA/name (or ../shared/testdata/name) into a static buffer. */
const char *tu_data(const char *name);
/* $EPMOE_BIN/name (or build/bin/name). */
const char *tu_bin(const char *name);
/* Whole file, NUL-terminated; NULL if unreadable.  Free with free(). */
void *tu_read(const char *path, size_t *len);
/* Runs the suite (forked per test unless CK_FORK=no); returns exit status. */
int tu_run(Suite *s);

#endif
