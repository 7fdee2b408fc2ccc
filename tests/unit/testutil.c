/* Shared test helpers.  See testutil.h. */
#include <stdio.h>
#include <stdlib.h>

#include "testutil.h"

const char *
tu_data(const char *name)
{
	static char buf[4096];
	const char *d = getenv("EPMOE_TESTDATA");
	snprintf(buf, sizeof(buf), "%s/%s", d && *d ? d : "../shared/testdata", name);
	return buf;
}

const char *
tu_bin(const char *name)
{
	static char buf[4096];
	const char *d = getenv("EPMOE_BIN");
	snprintf(buf, sizeof(buf), "%s/%s", d && *d ? d : "build/bin", name);
	return buf;
}

void *
tu_read(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	if (f == NULL)
		return NULL;
	if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
	        fseek(f, 0, SEEK_SET) != 0 || (buf = malloc((size_t)n + 1)) == NULL) {
		fclose(f);
		return NULL;
	}
	if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		fclose(f);
		return NULL;
	}
	fclose(f);
	buf[n] = '\0';
	if (len)
		*len = (size_t)n;
	return buf;
}

int
tu_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int nf;

	srunner_run_all(sr, CK_NORMAL);
	nf = srunner_ntests_failed(sr);
	srunner_free(sr);
	return nf == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
