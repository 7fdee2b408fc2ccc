/* Shared test helpers.  See testutil.h. */
#include <math.h>
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

size_t
tu_parse_ids(const char *s, int32_t *out, size_t cap)
{
	size_t n = 0;
	char *end;

	while (*s && *s != '\n' && n < cap) {
		out[n++] = (int32_t)strtol(s, &end, 10);
		if (end == s)
			break;
		s = end;
		if (*s == ',')
			s++;
	}
	return n;
}

int
tu_argmax(const float *v, size_t n)
{
	size_t b = 0;

	for (size_t i = 1; i < n; i++)
		if (v[i] > v[b])
			b = i;
	return (int)b;
}

float
tu_margin(const float *v, size_t n)
{
	float a = -INFINITY, b = -INFINITY;

	for (size_t i = 0; i < n; i++) {
		if (v[i] > a) {
			b = a;
			a = v[i];
		} else if (v[i] > b) {
			b = v[i];
		}
	}
	return a - b;
}
