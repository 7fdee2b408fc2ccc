/* epmoe calibrate: builds an affinity model file (common/affinity.h) by
 * running a text through the model in process, and reports how well the
 * speculative pre-scheduler would do on it.
 *
 * The text is tokenized once and cut into windows of ctx tokens, each
 * run as a fresh sequence (prefill).  The affinity model learns online
 * from every routing decision, scoring its predictions first, as the
 * router does.  With --holdout F the last fraction F of the windows is
 * the evaluation part: the placements (contiguous blocks and the grouping
 * computed from the first part) are scored on it, and the hit rates
 * printed are those of that part.  The file written holds everything
 * learnt. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "affinity.h"
#include "clock.h"
#include "cli.h"
#include "cmd.h"
#include "engine.h"
#include "err.h"
#include "model.h"
#include "tok.h"

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe calibrate --model M --file TEXT --out FILE [options]\n"
	        "  -m, --model M      GGUF model (env EPMOE_MODEL)\n"
	        "  -f, --file F       calibration text\n"
	        "  -o, --out FILE     affinity file to write (router --affinity FILE)\n"
	        "  -c, --ctx N        window length in tokens (default 128)\n"
	        "      --max-tokens N use at most the first N tokens of the text\n"
	        "      --holdout F    evaluate on the last fraction F of the windows\n"
	        "                     (0..0.9, default 0.25; 0 = no evaluation)\n"
	        "      --workers W    workers of the scored placements (default 4)\n"
	        "      --slack S      grouping load bound: (1 + S) x mean (default 0.2)\n"
	        "  -t, --threads N    threads (env EPMOE_THREADS; default: all cores)\n"
	        "      --json         print the report as one JSON object\n");
}

/* Runs windows [w0, w1) of ids through the engine. */
static int
run_windows(struct engine *e, struct eng_seq *s, const int32_t *ids, size_t n_ids,
        size_t ctx, size_t w0, size_t w1)
{
	for (size_t w = w0; w < w1; w++) {
		size_t at = w * ctx, n = n_ids - at < ctx ? n_ids - at : ctx;
		struct eng_item it = { .seq = s, .tokens = ids + at, .n_tokens = (uint32_t)n,
			.logits = ENG_LOGITS_NONE };
		int rc;
		eng_seq_truncate(s, 0);
		if ((rc = engine_step(e, &it, 1)) != 0)
			return rc;
	}
	return 0;
}

int
cmd_calibrate(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "file", required_argument, NULL, 'f' },
		{ "out", required_argument, NULL, 'o' },
		{ "ctx", required_argument, NULL, 'c' },
		{ "max-tokens", required_argument, NULL, 'M' },
		{ "holdout", required_argument, NULL, 'H' },
		{ "workers", required_argument, NULL, 'w' },
		{ "slack", required_argument, NULL, 'S' },
		{ "threads", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'J' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *model = cli_env("EPMOE_MODEL", NULL), *file = NULL, *out = NULL;
	long ctx = 128, threads = 0, max_tokens = 0, workers = 4;
	double holdout = 0.25, slack = 0.2;
	int json = 0, c, rc = 1;
	char *text = NULL, err[512], *end;
	size_t text_len, n_ids = 0;
	int32_t *ids = NULL, *contig = NULL, *grouped = NULL;
	struct model *m = NULL;
	struct engine *e = NULL;
	struct tok *tk = NULL;
	struct eng_seq *s = NULL;
	struct affinity *a = NULL;

	if (cli_env("EPMOE_THREADS", NULL))
		cli_long(getenv("EPMOE_THREADS"), 0, 1024, &threads);
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:f:o:c:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'f': file = optarg; break;
		case 'o': out = optarg; break;
		case 'J': json = 1; break;
		case 'c':
			if (cli_long(optarg, 2, 1 << 20, &ctx))
				return cli_bad("calibrate", "--ctx", "expects an integer >= 2");
			break;
		case 'M':
			if (cli_long(optarg, 1, 1L << 40, &max_tokens))
				return cli_bad("calibrate", "--max-tokens", "expects an integer >= 1");
			break;
		case 'w':
			if (cli_long(optarg, 1, 1024, &workers))
				return cli_bad("calibrate", "--workers", "expects 1..1024");
			break;
		case 'H':
			holdout = strtod(optarg, &end);
			if (*optarg == '\0' || *end != '\0' || !(holdout >= 0.0 && holdout <= 0.9))
				return cli_bad("calibrate", "--holdout", "expects a fraction in 0..0.9");
			break;
		case 'S':
			slack = strtod(optarg, &end);
			if (*optarg == '\0' || *end != '\0' || !(slack >= 0.0 && slack <= 100.0))
				return cli_bad("calibrate", "--slack", "expects a number in 0..100");
			break;
		case 't':
			if (cli_long(optarg, 0, 1024, &threads))
				return cli_bad("calibrate", "--threads", "expects 0..1024");
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!model || !file || !out) {
		usage(stderr);
		return 2;
	}
	if (cli_read_file(file, &text, &text_len)) {
		fprintf(stderr, "epmoe calibrate: cannot read %s\n", file);
		return 1;
	}
	if (cli_load("calibrate", model, (int)threads, NULL, DTYPE_F32, &m, &e))
		goto done;
	const struct model_hparams *hp = &m->hp;
	if ((uint64_t)ctx > engine_n_ctx(e))
		ctx = (long)engine_n_ctx(e);
	if ((uint32_t)workers > hp->n_expert)
		workers = hp->n_expert;
	if (tok_load(&tk, m->gguf, err, sizeof(err)) != 0) {
		fprintf(stderr, "epmoe calibrate: %s\n", err);
		goto done;
	}
	if (tok_encode(tk, text, text_len, 0, &ids, &n_ids) != 0 || n_ids == 0) {
		fprintf(stderr, "epmoe calibrate: cannot tokenize %s (empty?)\n", file);
		goto done;
	}
	if (max_tokens > 0 && n_ids > (size_t)max_tokens)
		n_ids = (size_t)max_tokens;
	if ((rc = affinity_new(&a, hp->n_layer, hp->n_expert, hp->n_vocab, 0)) != 0 ||
	        eng_seq_new(e, &s) != 0) {
		fprintf(stderr, "epmoe calibrate: out of memory\n");
		rc = 1;
		goto done;
	}
	engine_set_affinity(e, a);
	size_t n_win = (n_ids + (size_t)ctx - 1) / (size_t)ctx;
	size_t n_eval = (size_t)((double)n_win * holdout);
	if (holdout > 0 && n_eval == 0 && n_win > 1)
		n_eval = 1;
	size_t n_learn = n_win - n_eval;
	double t0 = clock_now();
	if ((rc = run_windows(e, s, ids, n_ids, (size_t)ctx, 0, n_learn)) != 0)
		goto engine_failed;
	if (n_eval) {
		size_t n = (size_t)hp->n_layer * hp->n_expert;
		if ((contig = malloc(n * sizeof(*contig))) == NULL ||
		        (grouped = malloc(n * sizeof(*grouped))) == NULL) {
			rc = EPMOE_ENOMEM;
			goto engine_failed;
		}
		for (size_t i = 0; i < n; i++)
			contig[i] = (int32_t)((i % hp->n_expert) * (size_t)workers / hp->n_expert);
		if ((rc = affinity_group(a, (uint32_t)workers, slack, grouped)) != 0 ||
		        (rc = affinity_set_map(a, 0, contig, (uint32_t)workers)) != 0 ||
		        (rc = affinity_set_map(a, 1, grouped, (uint32_t)workers)) != 0)
			goto engine_failed;
		affinity_stats_reset(a);
		if ((rc = run_windows(e, s, ids, n_ids, (size_t)ctx, n_learn, n_win)) != 0)
			goto engine_failed;
	}
	double dt = clock_now() - t0;
	if ((rc = affinity_save(a, out, err, sizeof(err))) != 0) {
		fprintf(stderr, "epmoe calibrate: %s\n", err);
		rc = 1;
		goto done;
	}
	/* the report */
	{
		struct aff_layer_stats tot = { 0 };
		if (json)
			printf("{\"model\":\"%s\",\"file\":\"%s\",\"tokens\":%zu,\"windows\":%zu,"
			       "\"eval_windows\":%zu,\"workers\":%ld,\"k\":%u,\"seconds\":%.2f,"
			       "\"affinity_bytes\":%zu,\"layers\":[",
			        model, file, n_ids, n_win, n_eval, workers, hp->n_expert_used, dt,
			        affinity_bytes(a));
		else
			printf("calibrated on %zu tokens (%zu windows of %ld, %zu evaluated) in %.1f s;"
			       " affinity model %.1f MiB -> %s\n"
			       "layer  hit(tok)  hit(tok+prev)  bytes/row(contig)  bytes/row(grouped)\n",
			        n_ids, n_win, ctx, n_eval, dt, affinity_bytes(a) / 1048576.0, out);
		for (uint32_t l = 0; l < hp->n_layer; l++) {
			struct aff_layer_stats st;
			double p;
			affinity_hits(a, l, &st);
			p = st.pairs ? (double)st.pairs : 1.0;
			tot.pairs += st.pairs;
			for (int i = 0; i < AFF_N_PRED; i++)
				tot.hits[i] += st.hits[i];
			for (int i = 0; i < AFF_MAX_MAPS; i++)
				tot.tok_workers[i] += st.tok_workers[i];
			if (json)
				printf("%s{\"layer\":%u,\"pairs\":%llu,\"hit_tok\":%.4f,\"hit_tok_prev\":%.4f,"
				       "\"bytes_ratio_contiguous\":%.4f,\"bytes_ratio_grouped\":%.4f}",
				        l ? "," : "", l, (unsigned long long)st.pairs, st.hits[0] / p,
				        st.hits[1] / p, st.tok_workers[0] / p, st.tok_workers[1] / p);
			else
				printf("%5u  %8.3f  %13.3f  %17.3f  %18.3f\n", l, st.hits[0] / p,
				        st.hits[1] / p, st.tok_workers[0] / p, st.tok_workers[1] / p);
		}
		double p = tot.pairs ? (double)tot.pairs : 1.0;
		if (json)
			printf("],\"hit_tok\":%.4f,\"hit_tok_prev\":%.4f,\"bytes_ratio_contiguous\":%.4f,"
			       "\"bytes_ratio_grouped\":%.4f}\n", tot.hits[0] / p, tot.hits[1] / p,
			        tot.tok_workers[0] / p, tot.tok_workers[1] / p);
		else
			printf("  all  %8.3f  %13.3f  %17.3f  %18.3f\n"
			       "(bytes/row: token rows sent per (token, expert) pair, one row per"
			       " worker a token uses, %ld workers)\n", tot.hits[0] / p, tot.hits[1] / p,
			        tot.tok_workers[0] / p, tot.tok_workers[1] / p, workers);
	}
	rc = 0;
	goto done;
engine_failed:
	fprintf(stderr, "epmoe calibrate: %s\n", epmoe_strerror(rc));
	rc = 1;
done:
	free(text);
	free(ids);
	free(contig);
	free(grouped);
	eng_seq_free(s);
	tok_free(tk);
	engine_free(e);
	affinity_free(a);
	model_free(m);
	return rc ? 1 : 0;
}
