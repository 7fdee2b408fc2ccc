/* Options shared by the CLI commands that talk to a running router
 * (generate, chat, bench server): the server URL, the model, the sampling
 * flags and the timeout, with their --help lines and EPMOE_* variables.
 * Parsing only: the commands do the talking. */
#ifndef EPMOE_CLI_GEN_H
#define EPMOE_CLI_GEN_H

#include <getopt.h>
#include <stdio.h>

#include "epmoe_client.h"

/* getopt_long codes of the shared options (long-only ones above 255). */
enum {
	CLI_GEN_SERVER = 's',
	CLI_GEN_MODEL = 'm',
	CLI_GEN_MAX_TOKENS = 'n',
	CLI_GEN_TEMP = 1000,
	CLI_GEN_TOP_P,
	CLI_GEN_TOP_K,
	CLI_GEN_MIN_P,
	CLI_GEN_SEED,
	CLI_GEN_STOP,
	CLI_GEN_ROUTING,
	CLI_GEN_TIMEOUT,
	CLI_GEN_IGNORE_EOS,
	CLI_GEN_API_KEY,
	CLI_GEN_LAST
};

/* Entries for a struct option table; end the table with { 0 }. */
#define CLI_GEN_OPTIONS \
	{ "server", required_argument, NULL, CLI_GEN_SERVER }, \
	{ "model", required_argument, NULL, CLI_GEN_MODEL }, \
	{ "max-tokens", required_argument, NULL, CLI_GEN_MAX_TOKENS }, \
	{ "temp", required_argument, NULL, CLI_GEN_TEMP }, \
	{ "top-p", required_argument, NULL, CLI_GEN_TOP_P }, \
	{ "top-k", required_argument, NULL, CLI_GEN_TOP_K }, \
	{ "min-p", required_argument, NULL, CLI_GEN_MIN_P }, \
	{ "seed", required_argument, NULL, CLI_GEN_SEED }, \
	{ "stop", required_argument, NULL, CLI_GEN_STOP }, \
	{ "routing", required_argument, NULL, CLI_GEN_ROUTING }, \
	{ "timeout", required_argument, NULL, CLI_GEN_TIMEOUT }, \
	{ "ignore-eos", no_argument, NULL, CLI_GEN_IGNORE_EOS }, \
	{ "api-key", required_argument, NULL, CLI_GEN_API_KEY }

/* Short options of the shared set, for the getopt string. */
#define CLI_GEN_SHORT "s:m:n:"

#define CLI_GEN_DEFAULT_MAX_TOKENS 128

struct cli_gen {
	const char *server;               /* borrowed from argv or environ */
	struct epmoe_gen_params p;
	const char *stops[EPMOE_MAX_STOP];
	double timeout_s;
	const char *api_key;              /* NULL: none */
};

/* Defaults, then EPMOE_SERVER, EPMOE_MODEL, EPMOE_TIMEOUT, EPMOE_API_KEY.  Returns 0,
 * or 2 after printing what is wrong with a variable. */
int cli_gen_init(struct cli_gen *g, const char *cmd);

/* Takes option c with argument arg.  Returns 0 when c was one of the
 * shared options and fine, 1 when c is not a shared option, 2 after
 * printing a usage error. */
int cli_gen_opt(struct cli_gen *g, const char *cmd, int c, const char *arg);

/* The shared options' help lines. */
void cli_gen_help(FILE *f);

/* Opens the client for g.  Returns 0, or 1 after printing why not (the
 * CLI's exit status for a transport error; 2 for a bad URL). */
int cli_gen_connect(const struct cli_gen *g, const char *cmd,
        struct epmoe_client **out);

/* Prints "epmoe CMD: <what failed>" with the server's status. */
void cli_gen_print_error(const char *cmd, struct epmoe_client *c);

#endif
