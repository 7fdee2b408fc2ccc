/* epmoe logits: run token ids through the model and write the logits of
 * every position as raw little-endian float32 [n_tokens, n_vocab].  The
 * ids are fed as given (no BOS added).  --incremental feeds them one at a
 * time through the KV cache instead of in one batch. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmd.h"
#include "engine.h"
#include "err.h"
#include "model.h"

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe logits --model M --tokens 1,2,3 --out F [options]\n"
	        "  -m, --model M       GGUF model (env EPMOE_MODEL)\n"
	        "      --tokens IDS    comma-separated token ids, fed as given\n"
	        "  -o, --out F         output file: float32 [n_tokens, n_vocab]\n"
	        "  -t, --threads N     threads (env EPMOE_THREADS; default: all cores)\n"
	        "      --routing P     routing policy spec (default native)\n"
	        "      --incremental   one token per step through the KV cache\n");
}

int
cmd_logits(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "tokens", required_argument, NULL, 'T' },
		{ "out", required_argument, NULL, 'o' },
		{ "threads", required_argument, NULL, 't' },
		{ "routing", required_argument, NULL, 'r' },
		{ "incremental", no_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *model = cli_env("EPMOE_MODEL", NULL), *out = NULL;
	const char *tokens = NULL, *routing = NULL;
	long threads = 0;
	int incremental = 0, c, rc = 1;
	int32_t *ids = NULL;
	size_t n_ids = 0;
	struct model *m = NULL;
	struct engine *e = NULL;
	struct eng_seq *s = NULL;
	float *logits = NULL;
	FILE *f = NULL;

	if (cli_env("EPMOE_THREADS", NULL))
		cli_long(getenv("EPMOE_THREADS"), 0, 1024, &threads);
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:o:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'T': tokens = optarg; break;
		case 'o': out = optarg; break;
		case 'r': routing = optarg; break;
		case 'i': incremental = 1; break;
		case 't':
			if (cli_long(optarg, 0, 1024, &threads))
				return cli_bad("logits", "--threads", "expects 0..1024");
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!model || !tokens || !out) {
		usage(stderr);
		return 2;
	}
	if (cli_ids(tokens, &ids, &n_ids))
		return cli_bad("logits", "--tokens", "expects comma-separated non-negative ids");
	if (cli_load("logits", model, (int)threads, routing, DTYPE_F32, &m, &e))
		goto done;
	uint32_t V = m->hp.n_vocab;
	if ((logits = malloc(n_ids * V * sizeof(float))) == NULL ||
	        eng_seq_new(e, &s) != 0) {
		fprintf(stderr, "epmoe logits: out of memory\n");
		goto done;
	}
	if (incremental) {
		for (size_t i = 0; i < n_ids; i++) {
			struct eng_item it = { .seq = s, .tokens = ids + i, .n_tokens = 1,
				.logits = ENG_LOGITS_LAST, .out = logits + i * V,
				.decode = i > 0 };
			if ((rc = engine_step(e, &it, 1)) != 0)
				break;
		}
	} else {
		struct eng_item it = { .seq = s, .tokens = ids, .n_tokens = (uint32_t)n_ids,
			.logits = ENG_LOGITS_ALL, .out = logits };
		rc = engine_step(e, &it, 1);
	}
	if (rc) {
		fprintf(stderr, "epmoe logits: %s%s\n", epmoe_strerror(rc),
		        rc == EPMOE_EINVAL ? " (a token id is out of the vocabulary?)" :
		        rc == EPMOE_ERANGE ? " (more tokens than the context holds)" : "");
		rc = 1;
		goto done;
	}
	if ((f = fopen(out, "wb")) == NULL ||
	        fwrite(logits, sizeof(float), n_ids * V, f) != n_ids * V) {
		fprintf(stderr, "epmoe logits: cannot write %s\n", out);
		rc = 1;
		goto done;
	}
	rc = 0;
done:
	if (f && fclose(f) != 0 && rc == 0) {
		fprintf(stderr, "epmoe logits: cannot write %s\n", out);
		rc = 1;
	}
	free(logits);
	free(ids);
	eng_seq_free(s);
	engine_free(e);
	model_free(m);
	return rc ? 1 : 0;
}
