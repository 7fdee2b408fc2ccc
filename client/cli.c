/* CLI helpers.  See cli.h. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine.h"
#include "err.h"
#include "model.h"

int
cli_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	if (s == NULL || *s == '\0')
		return EPMOE_EINVAL;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end != '\0' || v < lo || v > hi)
		return EPMOE_EINVAL;
	*out = v;
	return 0;
}

int
cli_float(const char *s, double lo, double hi, double *out)
{
	char *end;
	double v;

	if (s == NULL || *s == '\0')
		return EPMOE_EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || *end != '\0' || !isfinite(v) || v < lo || v > hi)
		return EPMOE_EINVAL;
	*out = v;
	return 0;
}

int
cli_ids(const char *s, int32_t **ids, size_t *n)
{
	size_t cap = 16, k = 0;
	int32_t *v = malloc(cap * sizeof(*v));
	const char *p = s;

	if (v == NULL)
		return EPMOE_ENOMEM;
	while (*p) {
		char *end;
		long x;
		while (*p == ' ')
			p++;
		errno = 0;
		x = strtol(p, &end, 10);
		if (end == p || errno || x < 0 || x > INT32_MAX) {
			free(v);
			return EPMOE_EINVAL;
		}
		if (k == cap) {
			int32_t *nv = realloc(v, 2 * cap * sizeof(*v));
			if (nv == NULL) {
				free(v);
				return EPMOE_ENOMEM;
			}
			v = nv;
			cap *= 2;
		}
		v[k++] = (int32_t)x;
		p = end;
		while (*p == ' ')
			p++;
		if (*p == ',')
			p++;
		else if (*p != '\0') {
			free(v);
			return EPMOE_EINVAL;
		}
	}
	if (k == 0) {
		free(v);
		return EPMOE_EINVAL;
	}
	*ids = v;
	*n = k;
	return 0;
}

const char *
cli_env(const char *name, const char *dflt)
{
	const char *v = getenv(name);
	return v && *v ? v : dflt;
}

int
cli_bad(const char *cmd, const char *opt, const char *msg)
{
	fprintf(stderr, "epmoe %s: option %s: %s (see epmoe %s --help)\n", cmd,
	        opt, msg, cmd);
	return 2;
}

int
cli_read_file(const char *path, char **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t n = 0, cap = 0;

	if (f == NULL)
		return epmoe_err_from_errno(errno);
	for (;;) {
		if (cap - n < 65536) {
			char *nb = realloc(buf, cap ? cap * 2 : 1 << 20);
			if (nb == NULL) {
				free(buf);
				fclose(f);
				return EPMOE_ENOMEM;
			}
			buf = nb;
			cap = cap ? cap * 2 : 1 << 20;
		}
		size_t r = fread(buf + n, 1, cap - n - 1, f);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(f)) {
		free(buf);
		fclose(f);
		return EPMOE_EIO;
	}
	fclose(f);
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
}

int
cli_load(const char *cmd, const char *path, int threads, const char *routing,
        enum dtype kv_type, struct model **m, struct engine **e)
{
	char err[512] = "";
	struct engine_opts o = { .n_threads = threads, .routing = routing,
		.kv_type = kv_type };
	int rc;

	if ((rc = model_load(m, path, err, sizeof(err))) != 0) {
		fprintf(stderr, "epmoe %s: %s\n", cmd, err[0] ? err : epmoe_strerror(rc));
		return rc;
	}
	if ((rc = engine_new(e, *m, &o, err, sizeof(err))) != 0) {
		fprintf(stderr, "epmoe %s: %s\n", cmd, err[0] ? err : epmoe_strerror(rc));
		model_free(*m);
		*m = NULL;
		return rc;
	}
	return 0;
}
