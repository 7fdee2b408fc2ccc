/* epmoe run: local generation, in-process (the reference for every
 * distributed run).  Streams the generated text to stdout; timings to
 * stderr. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "cli.h"
#include "cmd.h"
#include "engine.h"
#include "err.h"
#include "model.h"
#include "sample.h"
#include "tok.h"

#define MAX_STOPS 8

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe run --model M -p TEXT [options]\n"
	        "  -m, --model M      GGUF model (env EPMOE_MODEL)\n"
	        "  -p, --prompt TEXT  the prompt (or -f FILE)\n"
	        "  -f, --file F       read the prompt from a file\n"
	        "  -n, --n-predict N  tokens to generate (default 64)\n"
	        "      --temp T       temperature, 0 = greedy (default 0.8)\n"
	        "      --top-k K      top-k, 0 = off (default 40)\n"
	        "      --top-p P      nucleus sampling (default 0.95)\n"
	        "      --min-p P      min-p relative to the best token (default 0.05)\n"
	        "  -s, --seed S       sampler seed (default: from the clock; printed)\n"
	        "      --stop S       stop string (repeatable, up to %d)\n"
	        "  -t, --threads N    threads (env EPMOE_THREADS; default: all cores)\n"
	        "      --routing P    routing policy spec (default native)\n"
	        "      --kv-type T    KV cache f32 (default) or f16 (half the memory)\n"
	        "      --ids          print the generated token ids instead of text\n"
	        "      --no-bos       do not add BOS even if the model wants it\n"
	        "      --ignore-eos   keep generating past end-of-sequence\n",
	        MAX_STOPS);
}

int
cmd_run(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "prompt", required_argument, NULL, 'p' },
		{ "file", required_argument, NULL, 'f' },
		{ "n-predict", required_argument, NULL, 'n' },
		{ "temp", required_argument, NULL, 'T' },
		{ "top-k", required_argument, NULL, 'K' },
		{ "top-p", required_argument, NULL, 'P' },
		{ "min-p", required_argument, NULL, 'M' },
		{ "seed", required_argument, NULL, 's' },
		{ "stop", required_argument, NULL, 'S' },
		{ "threads", required_argument, NULL, 't' },
		{ "routing", required_argument, NULL, 'r' },
		{ "ids", no_argument, NULL, 'I' },
		{ "kv-type", required_argument, NULL, 'V' },
		{ "no-bos", no_argument, NULL, 'B' },
		{ "ignore-eos", no_argument, NULL, 'E' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *model = cli_env("EPMOE_MODEL", NULL), *prompt = NULL;
	const char *file = NULL, *routing = NULL, *stops[MAX_STOPS];
	size_t n_stops = 0;
	long n_predict = 64, threads = 0, top_k = 40, seed = -1;
	double temp = 0.8, top_p = 0.95, min_p = 0.05;
	int print_ids = 0, no_bos = 0, ignore_eos = 0, c, rc = 1;
	enum dtype kv_type = DTYPE_F32;
	char *file_text = NULL, *text = NULL;
	size_t text_len = 0, text_cap = 0;
	int32_t *ids = NULL;
	size_t n_ids = 0;
	struct model *m = NULL;
	struct engine *e = NULL;
	struct tok *tk = NULL;
	struct eng_seq *s = NULL;
	struct sampler smp;
	struct tok_stream ts;
	float *logits = NULL;
	int smp_ok = 0, ts_ok = 0;
	char err[512];

	if (cli_env("EPMOE_THREADS", NULL))
		cli_long(getenv("EPMOE_THREADS"), 0, 1024, &threads);
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:p:f:n:s:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'p': prompt = optarg; break;
		case 'f': file = optarg; break;
		case 'r': routing = optarg; break;
		case 'I': print_ids = 1; break;
		case 'V':
			if (engine_kv_type_parse(optarg, &kv_type))
				return cli_bad("run", "--kv-type", "expects f32 or f16");
			break;
		case 'B': no_bos = 1; break;
		case 'E': ignore_eos = 1; break;
		case 'n':
			if (cli_long(optarg, 0, 1 << 20, &n_predict))
				return cli_bad("run", "--n-predict", "expects 0..1048576");
			break;
		case 'T':
			if (cli_float(optarg, 0, 100, &temp))
				return cli_bad("run", "--temp", "expects a number >= 0");
			break;
		case 'K':
			if (cli_long(optarg, 0, 1 << 30, &top_k))
				return cli_bad("run", "--top-k", "expects an integer >= 0");
			break;
		case 'P':
			if (cli_float(optarg, 1e-9, 1, &top_p))
				return cli_bad("run", "--top-p", "expects a number in (0, 1]");
			break;
		case 'M':
			if (cli_float(optarg, 0, 1, &min_p))
				return cli_bad("run", "--min-p", "expects a number in [0, 1]");
			break;
		case 's':
			if (cli_long(optarg, 0, 0x7fffffffffffffffL, &seed))
				return cli_bad("run", "--seed", "expects a non-negative integer");
			break;
		case 'S':
			if (n_stops == MAX_STOPS)
				return cli_bad("run", "--stop", "too many stop strings");
			stops[n_stops++] = optarg;
			break;
		case 't':
			if (cli_long(optarg, 0, 1024, &threads))
				return cli_bad("run", "--threads", "expects 0..1024");
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!model || (!prompt && !file)) {
		usage(stderr);
		return 2;
	}
	if (file) {
		size_t len;
		if (cli_read_file(file, &file_text, &len)) {
			fprintf(stderr, "epmoe run: cannot read %s\n", file);
			return 1;
		}
		prompt = file_text;
	}
	if (seed < 0)
		seed = (long)(time(NULL) & 0x7fffffff);
	if (cli_load("run", model, (int)threads, routing, kv_type, &m, &e))
		goto done;
	if (tok_load(&tk, m->gguf, err, sizeof(err)) != 0) {
		fprintf(stderr, "epmoe run: %s\n", err);
		goto done;
	}
	if (tok_encode(tk, prompt, strlen(prompt), no_bos ? 0 : TOK_ADD_BOS, &ids,
	            &n_ids) != 0 || n_ids == 0) {
		fprintf(stderr, "epmoe run: cannot tokenize the prompt (empty?)\n");
		goto done;
	}
	if (n_ids + (size_t)n_predict > engine_n_ctx(e)) {
		fprintf(stderr, "epmoe run: prompt (%zu tokens) + %ld exceeds the context (%u)\n",
		        n_ids, n_predict, engine_n_ctx(e));
		goto done;
	}
	struct sample_params sp = { .temperature = (float)temp, .top_k = (int32_t)top_k,
		.top_p = (float)top_p, .min_p = (float)min_p, .seed = (uint64_t)seed };
	if (sampler_init(&smp, &sp) != 0) {
		fprintf(stderr, "epmoe run: invalid sampling parameters\n");
		goto done;
	}
	smp_ok = 1;
	if (tok_stream_init(&ts, tk, 0) != 0)
		goto done;
	ts_ok = 1;
	if ((logits = malloc(m->hp.n_vocab * sizeof(float))) == NULL ||
	        eng_seq_new(e, &s) != 0)
		goto done;

	double t0 = clock_now(), t1 = t0;
	struct eng_item it = { .seq = s, .tokens = ids, .n_tokens = (uint32_t)n_ids,
		.logits = ENG_LOGITS_LAST, .out = logits };
	long n_gen = 0;
	const char *stop_reason = "length";
	if ((rc = engine_step(e, &it, 1)) != 0) {
		fprintf(stderr, "epmoe run: %s\n", epmoe_strerror(rc));
		goto done;
	}
	t1 = clock_now();
	while (n_gen < n_predict) {
		int32_t id = sampler_next(&smp, logits, m->hp.n_vocab, NULL);
		const char *piece;
		size_t plen, partial;
		if (id < 0) {
			rc = id;
			break;
		}
		n_gen++;
		if (!ignore_eos && tok_is_eog(tk, id)) {
			stop_reason = "eos";
			break;
		}
		if (print_ids) {
			printf("%s%d", n_gen > 1 ? "," : "", id);
		} else {
			if (tok_stream_push(&ts, id, &piece, &plen) != 0)
				break;
			if (text_len + plen + 1 > text_cap) {
				text_cap = (text_len + plen + 1) * 2;
				char *nt = realloc(text, text_cap);
				if (nt == NULL)
					break;
				text = nt;
			}
			size_t before = text_len;
			memcpy(text + text_len, piece, plen);
			text_len += plen;
			text[text_len] = '\0';
			long at = n_stops ? sample_stop_match(text, text_len, stops, n_stops, &partial) : -1;
			if (at >= 0) {
				if ((size_t)at > before)
					fwrite(text + before, 1, (size_t)at - before, stdout);
				stop_reason = "stop";
				break;
			}
			fwrite(piece, 1, plen, stdout);
		}
		fflush(stdout);
		if (n_gen == n_predict)
			break;
		struct eng_item d = { .seq = s, .tokens = &id, .n_tokens = 1,
			.logits = ENG_LOGITS_LAST, .out = logits, .decode = true };
		if ((rc = engine_step(e, &d, 1)) != 0) {
			fprintf(stderr, "\nepmoe run: %s\n", epmoe_strerror(rc));
			goto done;
		}
	}
	if (!print_ids) {
		const char *tail;
		size_t tl;
		if (tok_stream_flush(&ts, &tail, &tl) == 0 && strcmp(stop_reason, "stop"))
			fwrite(tail, 1, tl, stdout);
	}
	printf("\n");
	double t2 = clock_now();
	fprintf(stderr,
	        "epmoe run: prompt %zu tokens in %.3f s (%.1f tok/s), generated %ld in %.3f s (%.2f tok/s), stop: %s, seed %ld\n",
	        n_ids, t1 - t0, n_ids / (t1 - t0), n_gen, t2 - t1,
	        n_gen > 1 ? (n_gen - 1) / (t2 - t1) : 0.0, stop_reason, seed);
	rc = 0;
done:
	if (smp_ok)
		sampler_fini(&smp);
	if (ts_ok)
		tok_stream_fini(&ts);
	free(text);
	free(logits);
	free(ids);
	free(file_text);
	eng_seq_free(s);
	tok_free(tk);
	engine_free(e);
	model_free(m);
	return rc ? 1 : 0;
}
