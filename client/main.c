/* epmoe: the command-line tool.  Dispatches to one subcommand per file
 * (client/cmd_*.c). */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "log.h"

struct subcmd {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
};

static const struct subcmd subcmds[] = {
	{ "run", cmd_run, "generate text locally, in-process" },
	{ "logits", cmd_logits, "write all positions' logits as raw float32" },
	{ "perplexity", cmd_perplexity, "perplexity of a text file" },
	{ "calibrate", cmd_calibrate, "build an affinity file (speculative pre-scheduling)" },
	{ "tokenize", cmd_tokenize, "print the token ids of a text" },
	{ "route", cmd_route, "apply a routing policy to a logits matrix" },
	{ "generate", cmd_generate, "complete a prompt on a running server" },
	{ "chat", cmd_chat, "interactive chat with a running server" },
	{ "bench", cmd_bench, "load generator against a running server" },
	{ "mkmodel", cmd_mkmodel, "write a random-weight MoE model (GGUF)" },
	{ "quantize", cmd_quantize, "write a quantised copy of a model (q4_k_m, ...)" },
	{ "inspect", cmd_inspect, "print a GGUF file's metadata and tensors" },
	{ "health", cmd_health, "exit 0 when a router (or a worker's health file) is ready" },
};

static void
usage(FILE *f)
{
	fprintf(f, "usage: epmoe COMMAND [ARGS]   (epmoe COMMAND --help for its "
	           "options)\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(subcmds) / sizeof(subcmds[0]); i++)
		fprintf(f, "  %-11s %s\n", subcmds[i].name, subcmds[i].help);
}

int
main(int argc, char **argv)
{
	log_set_name("epmoe");
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	        strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(subcmds) / sizeof(subcmds[0]); i++) {
		if (strcmp(argv[1], subcmds[i].name) == 0)
			return subcmds[i].fn(argc - 1, argv + 1);
	}
	fprintf(stderr, "epmoe: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return 2;
}
