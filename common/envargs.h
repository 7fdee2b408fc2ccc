/* Command-line flags from EPMOE_* environment variables, for the daemons
 * (epmoe-router, epmoe-worker): container and Kubernetes files then differ
 * only in their environment.
 *
 * Each variable that is set becomes "--flag=value" in front of the typed
 * arguments, so one getopt loop parses both and a typed flag overrides its
 * variable (getopt keeps the last value).  This module only rewrites argv;
 * it knows nothing of what a flag means (validation stays in the parser).
 */
#ifndef EPMOE_ENVARGS_H
#define EPMOE_ENVARGS_H

#include <stdbool.h>
#include <stdio.h>

struct envarg {
	const char *flag;  /* long option name without "--" */
	const char *var;   /* EPMOE_* variable */
	bool boolean;      /* a flag without value: given when var is set to
	                      anything but "", "0", "false" or "no" */
	bool keep_empty;   /* var="" passes an empty value (else "" = unset) */
};

struct envargs {
	int argc;
	char **argv;  /* argv[0], the variables' flags, then the typed ones */
	int n_env;    /* argv[1..n_env] came from the environment */
	const struct envarg *from[64]; /* the entry of argv[1..n_env] */
};

/* Builds e->argv from table t (n entries, at most 64) and the typed argv.
 * Returns 0 or EPMOE_ENOMEM / EPMOE_EINVAL (n too large).  Release with
 * envargs_fini; argv strings of the caller are borrowed. */
int envargs_init(struct envargs *e, const struct envarg *t, size_t n, int argc,
        char **argv);
void envargs_fini(struct envargs *e);

/* The variable argv[i] came from, or NULL when it was typed. */
const char *envargs_source(const struct envargs *e, int i);

/* Writes the arguments as the parser sees them, one a line, each with
 * where it came from ("EPMOE_X" or "typed"), for --print-config. */
void envargs_print(const struct envargs *e, FILE *f);

#endif
