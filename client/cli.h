/* Small helpers shared by the CLI subcommands: strict number parsing, id
 * lists, environment defaults, and loading a model + engine in one go. */
#ifndef EPMOE_CLI_H
#define EPMOE_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

struct model;
struct engine;

/* Parse the whole string or fail (returns 0 / EPMOE_EINVAL). */
int cli_long(const char *s, long lo, long hi, long *out);
int cli_float(const char *s, double lo, double hi, double *out);
/* "1,2,3" -> malloc'd array (free with free()); EPMOE_EINVAL on junk. */
int cli_ids(const char *s, int32_t **ids, size_t *n);
/* getenv(name) or dflt */
const char *cli_env(const char *name, const char *dflt);
/* Prints "epmoe CMD: option --X: MSG" and returns 2 (usage error exit). */
int cli_bad(const char *cmd, const char *opt, const char *msg);
/* Reads a whole file (NUL-terminated); free with free(). */
int cli_read_file(const char *path, char **out, size_t *len);

/* Loads model + engine; prints the error and returns non-zero on failure. */
int cli_load(const char *cmd, const char *path, int threads,
        const char *routing, enum dtype kv_type, struct model **m,
        struct engine **e);

#endif
