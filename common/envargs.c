/* EPMOE_* variables turned into command-line flags (see envargs.h).  Owns
 * the rewritten argv and the "--flag=value" strings it made; never reads a
 * flag's value. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "envargs.h"
#include "err.h"

#define ENVARGS_MAX 64

static bool
truthy(const char *v)
{
	return v[0] != '\0' && strcmp(v, "0") != 0 && strcasecmp(v, "false") != 0 &&
	        strcasecmp(v, "no") != 0;
}

int
envargs_init(struct envargs *e, const struct envarg *t, size_t n, int argc,
        char **argv)
{
	int k = 1;

	memset(e, 0, sizeof(*e));
	if (n > ENVARGS_MAX || argc < 1)
		return EPMOE_EINVAL;
	if ((e->argv = calloc(n + (size_t)argc + 1, sizeof(*e->argv))) == NULL)
		return EPMOE_ENOMEM;
	e->argv[0] = argv[0];
	for (size_t i = 0; i < n; i++) {
		const char *v = getenv(t[i].var);
		char *a;
		size_t len;

		if (v == NULL || (v[0] == '\0' && !t[i].keep_empty && !t[i].boolean))
			continue;
		if (t[i].boolean && !truthy(v))
			continue;
		len = strlen(t[i].flag) + strlen(v) + 4;
		if ((a = malloc(len)) == NULL) {
			e->n_env = k - 1;
			envargs_fini(e);
			return EPMOE_ENOMEM;
		}
		if (t[i].boolean)
			snprintf(a, len, "--%s", t[i].flag);
		else
			snprintf(a, len, "--%s=%s", t[i].flag, v);
		e->from[k - 1] = &t[i];
		e->argv[k++] = a;
	}
	e->n_env = k - 1;
	for (int i = 1; i < argc; i++)
		e->argv[k++] = argv[i];
	e->argv[k] = NULL;
	e->argc = k;
	return 0;
}

void
envargs_fini(struct envargs *e)
{
	if (e == NULL || e->argv == NULL)
		return;
	for (int i = 1; i <= e->n_env; i++)
		free(e->argv[i]);
	free(e->argv);
	memset(e, 0, sizeof(*e));
}

const char *
envargs_source(const struct envargs *e, int i)
{
	if (i < 1 || i > e->n_env)
		return NULL;
	return e->from[i - 1]->var;
}

void
envargs_print(const struct envargs *e, FILE *f)
{
	for (int i = 1; i < e->argc; i++) {
		const char *src = envargs_source(e, i);
		fprintf(f, "  %-40s (%s)\n", e->argv[i], src ? src : "typed");
	}
}
