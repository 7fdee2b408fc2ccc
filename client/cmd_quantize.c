/* epmoe quantize: writes a quantised copy of a GGUF model under one of
 * llama-quantize's presets (q4_k_m, q8_0, ...).  The rules and the
 * conversion are quant_model_write() (common/quant_model.c); this file
 * parses flags and prints what went where. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmd.h"
#include "err.h"
#include "gguf.h"
#include "quant_model.h"

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe quantize IN OUT PRESET [--threads N]\n"
	        "\n"
	        "Writes IN (a GGUF model of any supported type) to OUT with its\n"
	        "matrices converted as llama-quantize's PRESET does: a base type plus\n"
	        "more bits where llama.cpp puts them (attn_v, some ffn_down layers,\n"
	        "attn_output of 8-expert models, the output head), and 32-value\n"
	        "block types for rows whose width is not a multiple of 256.  Norms,\n"
	        "biases and the expert router stay as they are.  Prints the number\n"
	        "of tensors per type.\n"
	        "\n"
	        "presets: %s\n"
	        "\n"
	        "options:\n"
	        "  -t, --threads N   conversion threads (default: all online CPUs)\n"
	        "  -h, --help        show this help\n",
	        quant_preset_list());
}

int
cmd_quantize(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	enum quant_preset p;
	long threads = 0;
	char err[512];
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "t:h", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			if (cli_long(optarg, 0, 64, &threads))
				return cli_bad("quantize", "--threads", "expects 0..64");
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (argc - optind != 3) {
		usage(stderr);
		return 2;
	}
	const char *in = argv[optind], *out = argv[optind + 1];
	if (quant_preset_parse(argv[optind + 2], &p) != 0) {
		fprintf(stderr, "epmoe quantize: unknown preset '%s' (presets: %s)\n",
		        argv[optind + 2], quant_preset_list());
		return 2;
	}
	if (quant_model_write(in, out, p, (int)threads, err, sizeof(err)) != 0) {
		fprintf(stderr, "epmoe quantize: %s\n", err);
		return 1;
	}
	/* summary from the file as written */
	struct gguf_file *g;
	unsigned count[DTYPE_COUNT] = { 0 };
	if (gguf_open(&g, out, err, sizeof(err)) != 0) {
		fprintf(stderr, "epmoe quantize: %s\n", err);
		return 1;
	}
	for (uint64_t i = 0; i < g->n_tensors; i++)
		if ((unsigned)g->tensors[i].type < DTYPE_COUNT)
			count[g->tensors[i].type]++;
	printf("wrote %s (%s, %.1f MB):", out, quant_preset_name(p), g->file_size / 1e6);
	for (int t = 0; t < DTYPE_COUNT; t++)
		if (count[t])
			printf(" %s %u", dtype_name((enum dtype)t), count[t]);
	printf("\n");
	gguf_close(g);
	return 0;
}
