/* `epmoe bench engine`: prefill and decode speed of a model in process,
 * each phase divided by the machine's limit probed around it in the same
 * run (bench_machine.c): prefill and batched decode FLOP rates by the
 * OpenBLAS sgemm rate, batch-1 decode's weight bytes per second by the
 * memory read bandwidth.  Human-readable by default, one JSON object with
 * --json (what `make bench` reads). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "clock.h"
#include "cli.h"
#include "engine.h"
#include "err.h"
#include "model.h"
#include "pool.h"

#define MAX_BATCHES 8
#define SHORT_PROMPT 16 /* prompt of the decode sequences after the first */

static double
mat_elems(const struct tmat *t)
{
	return (double)t->n_in * t->n_out;
}

/* Weights one token multiplies at native routing: dense part, k experts
 * per layer, LM head (2 FLOPs each). */
static double
weights_per_token(const struct model *m)
{
	const struct model_hparams *hp = &m->hp;
	double w = mat_elems(&m->output);

	for (uint32_t i = 0; i < hp->n_layer; i++) {
		const struct model_layer *l = &m->layers[i];
		w += mat_elems(&l->wq) + mat_elems(&l->wk) + mat_elems(&l->wv) +
		        mat_elems(&l->wo) + mat_elems(&l->gate_inp);
		w += (mat_elems(&l->gate_exps) + mat_elems(&l->up_exps) +
		             mat_elems(&l->down_exps)) / hp->n_expert * hp->n_expert_used;
		if (l->has_shexp)
			w += mat_elems(&l->gate_shexp) + mat_elems(&l->up_shexp) +
			        mat_elems(&l->down_shexp);
	}
	return w;
}

/* Attention FLOPs of one query row over P keys, all layers: scores and
 * values, 2 * 2 * hd per (head, key). */
static double
att_flops(const struct model *m, double P)
{
	const struct model_hparams *hp = &m->hp;
	return 4.0 * hp->head_dim * hp->n_head * P * hp->n_layer;
}

/* FLOPs of one prefill of T tokens (causal: T(T+1)/2 scored pairs), with
 * logits for the last row only. */
static double
prefill_flops(const struct model *m, uint32_t T)
{
	double d = m->hp.n_embd, per_tok = 2.0 * (weights_per_token(m) - mat_elems(&m->output));
	return per_tok * T + att_flops(m, (double)T * (T + 1) / 2.0) +
	        2.0 * d * m->hp.n_vocab;
}

/* VmRSS of this process in MiB (0 if unknown). */
static double
rss_now_mb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	double kb = 0;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %lf kB", &kb) == 1)
			break;
	fclose(f);
	return kb / 1024.0;
}

struct probes {
	double sgemm, bw; /* the better of the probes before and after */
};

static void
probe(struct bench_probe *p, struct probes *out, int first)
{
	double g = bench_probe_sgemm(p, 3), b = bench_probe_bw(p, 3);

	if (first || g > out->sgemm)
		out->sgemm = g;
	if (first || b > out->bw)
		out->bw = b;
}

struct decode_res {
	long batch;
	double s, tok_s, gflops, weight_gbs;
	struct probes mach;
	struct engine_timing split;
};

static void
split_json(const struct engine_timing *t)
{
	printf("{\"attn\":%.4f,\"gate\":%.4f,\"route\":%.4f,\"moe\":%.4f,"
	       "\"shexp\":%.4f,\"head\":%.4f}", t->attn, t->gate, t->route, t->moe,
	        t->shexp, t->head);
}

static int
parse_batches(const char *s, long *b, int *n)
{
	int32_t *ids;
	size_t k;

	if (cli_ids(s, &ids, &k) != 0) /* frees what it allocated */
		return EPMOE_EINVAL;
	if (k == 0 || k > MAX_BATCHES) {
		free(ids);
		return EPMOE_EINVAL;
	}
	for (size_t i = 0; i < k; i++) {
		if (ids[i] < 1 || ids[i] > 1024) {
			free(ids);
			return EPMOE_EINVAL;
		}
		b[i] = ids[i];
	}
	*n = (int)k;
	free(ids);
	return 0;
}

/* n_gen greedy decode steps of the first `batch` sequences, each reset to
 * its prompt first. */
static int
run_decode(struct engine *e, const struct model *m, struct eng_seq **seqs,
        long batch, long n_prompt, long n_gen, float *logits, int32_t *toks,
        struct decode_res *res)
{
	uint32_t V = m->hp.n_vocab;
	struct eng_item *items = calloc((size_t)batch, sizeof(*items));
	double flops = 0, wpt = weights_per_token(m), t0;
	int rc = 0;

	if (items == NULL)
		return EPMOE_ENOMEM;
	for (long i = 0; i < batch; i++) {
		eng_seq_truncate(seqs[i], i == 0 ? (uint32_t)n_prompt : SHORT_PROMPT);
		toks[i] = (int32_t)(3 + ((uint64_t)i * 40503u) % (V - 3));
	}
	engine_timing_reset(e);
	t0 = clock_now();
	for (long g = 0; g < n_gen && rc == 0; g++) {
		for (long i = 0; i < batch; i++) {
			items[i] = (struct eng_item){ .seq = seqs[i], .tokens = &toks[i],
				.n_tokens = 1, .logits = ENG_LOGITS_LAST,
				.out = logits + (size_t)i * V, .decode = true };
			flops += 2.0 * wpt + att_flops(m, seqs[i]->n_pos + 1.0);
		}
		if ((rc = engine_step(e, items, (uint32_t)batch)) != 0)
			break;
		for (long i = 0; i < batch; i++) {
			/* greedy, so the run is deterministic */
			const float *l = logits + (size_t)i * V;
			uint32_t best = 0;
			for (uint32_t v = 1; v < V; v++)
				if (l[v] > l[best])
					best = v;
			toks[i] = (int32_t)best;
		}
	}
	res->s = clock_now() - t0;
	res->batch = batch;
	res->tok_s = (double)n_gen * batch / res->s;
	res->gflops = flops / res->s / 1e9;
	res->weight_gbs = (double)model_bytes_per_token(m) * n_gen / res->s / 1e9;
	res->split = *engine_timing(e);
	free(items);
	return rc;
}

int
bench_engine(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "prompt-tokens", required_argument, NULL, 'p' },
		{ "gen", required_argument, NULL, 'n' },
		{ "threads", required_argument, NULL, 't' },
		{ "batch", required_argument, NULL, 'b' },
		{ "routing", required_argument, NULL, 'r' },
		{ "kv-type", required_argument, NULL, 'V' },
		{ "mb", required_argument, NULL, 'B' },
		{ "json", no_argument, NULL, 'J' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *model = cli_env("EPMOE_MODEL", NULL), *routing = NULL;
	long n_prompt = 512, n_gen = 64, threads = 0, batches[MAX_BATCHES] = { 1 };
	long mb = 1024, max_b = 1;
	int n_batches = 1, json = 0, c, rc = 1;
	enum dtype kv_type = DTYPE_F32;
	struct model *m = NULL;
	struct engine *e = NULL;
	struct bench_probe *bp = NULL;
	struct eng_seq **seqs = NULL;
	int32_t *toks = NULL;
	float *logits = NULL;
	struct decode_res dec[MAX_BATCHES];
	struct probes pre;
	struct engine_timing tp = { 0 };
	double t_prefill = 1e30;

	optind = 1;
	while ((c = getopt_long(argc, argv, "m:p:n:t:b:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'r': routing = optarg; break;
		case 'J': json = 1; break;
		case 'p':
			if (cli_long(optarg, 1, 1 << 16, &n_prompt))
				return cli_bad("bench engine", "--prompt-tokens", "expects 1..65536");
			break;
		case 'n':
			if (cli_long(optarg, 1, 1 << 16, &n_gen))
				return cli_bad("bench engine", "--gen", "expects 1..65536");
			break;
		case 't':
			if (cli_long(optarg, 0, 1024, &threads))
				return cli_bad("bench engine", "--threads", "expects 0..1024");
			break;
		case 'b':
			if (parse_batches(optarg, batches, &n_batches))
				return cli_bad("bench engine", "--batch",
				        "expects up to 8 batch sizes in 1..1024, like 1,16");
			break;
		case 'V':
			if (engine_kv_type_parse(optarg, &kv_type))
				return cli_bad("bench engine", "--kv-type", "expects f32 or f16");
			break;
		case 'B':
			if (cli_long(optarg, 64, 65536, &mb))
				return cli_bad("bench engine", "--mb", "expects 64..65536");
			break;
		case 'h':
			printf("usage: epmoe bench engine --model M [--prompt-tokens 512] [--gen 64]\n"
			       "       [--batch 1[,16,...]] [--threads N] [--routing P] [--kv-type f32|f16]\n"
			       "       [--mb 1024] [--json]\n"
			       "  prefill of one prompt (best of 3), then --gen greedy decode steps of\n"
			       "  each --batch many sequences; the machine (sgemm rate, read bandwidth\n"
			       "  over --mb MiB) is probed before and after each phase and every\n"
			       "  figure is also given as a ratio to it\n");
			return 0;
		default: return 2;
		}
	}
	if (model == NULL)
		return cli_bad("bench engine", "--model", "is required");
	for (int i = 0; i < n_batches; i++)
		if (batches[i] > max_b)
			max_b = batches[i];
	if (cli_load("bench engine", model, (int)threads, routing, kv_type, &m, &e))
		return 1;
	uint32_t V = m->hp.n_vocab;
	if (engine_n_ctx(e) < (uint32_t)n_prompt + (uint32_t)n_gen + 8) {
		fprintf(stderr, "epmoe bench engine: %ld + %ld tokens exceed the context (%u)\n",
		        n_prompt, n_gen, engine_n_ctx(e));
		goto done;
	}
	if ((rc = bench_probe_new(&bp, engine_pool(e), (size_t)mb)) != 0)
		goto fail;
	rc = EPMOE_ENOMEM;
	seqs = calloc((size_t)max_b, sizeof(*seqs));
	toks = malloc((size_t)(n_prompt > max_b ? n_prompt : max_b) * sizeof(int32_t));
	logits = malloc((size_t)max_b * V * sizeof(float));
	if (!seqs || !toks || !logits)
		goto fail;
	for (long i = 0; i < max_b; i++)
		if ((rc = eng_seq_new(e, &seqs[i])) != 0)
			goto fail;
	/* pseudo-random prompt ids, skipping the specials */
	for (long i = 0; i < n_prompt; i++)
		toks[i] = (int32_t)(3 + ((uint64_t)i * 2654435761u) % (V - 3));
	/* warm the mapping (page faults are not what we measure) */
	struct eng_item w = { .seq = seqs[0], .tokens = toks, .n_tokens = 8,
		.logits = ENG_LOGITS_LAST, .out = logits };
	if ((rc = engine_step(e, &w, 1)) != 0)
		goto fail;
	/* prefill: the best of 3 (one-shot timings on a shared machine vary) */
	probe(bp, &pre, 1);
	for (int rep = 0; rep < 3; rep++) {
		eng_seq_truncate(seqs[0], 0);
		engine_timing_reset(e);
		double t0 = clock_now();
		struct eng_item p = { .seq = seqs[0], .tokens = toks,
			.n_tokens = (uint32_t)n_prompt, .logits = ENG_LOGITS_LAST, .out = logits };
		if ((rc = engine_step(e, &p, 1)) != 0)
			goto fail;
		double dt = clock_now() - t0;
		if (dt < t_prefill) {
			t_prefill = dt;
			tp = *engine_timing(e);
		}
	}
	probe(bp, &pre, 0);
	/* the other decode sequences get a short prompt */
	for (long i = 1; i < max_b; i++) {
		struct eng_item q = { .seq = seqs[i], .tokens = toks, .n_tokens = SHORT_PROMPT };
		if ((rc = engine_step(e, &q, 1)) != 0)
			goto fail;
	}
	for (int b = 0; b < n_batches; b++) {
		probe(bp, &dec[b].mach, 1);
		if ((rc = run_decode(e, m, seqs, batches[b], n_prompt, n_gen, logits, toks,
		             &dec[b])) != 0)
			goto fail;
		probe(bp, &dec[b].mach, 0);
	}
	/* resident memory without the probe's buffer: model pages touched,
	 * KV cache and scratch */
	bench_probe_free(bp);
	bp = NULL;
	double rss_mb = rss_now_mb();
	double pf_gflops = prefill_flops(m, (uint32_t)n_prompt) / t_prefill / 1e9;
	const char *wt = dtype_name(m->layers[0].gate_exps.type);
	if (json) {
		printf("{\"bench\":\"engine\",\"model\":\"%s\",\"weight_type\":\"%s\","
		       "\"kv_type\":\"%s\",\"weights_gb\":%.3f,\"threads\":%d,"
		       "\"prompt_tokens\":%ld,\"prefill_s\":%.4f,\"prefill_tok_s\":%.2f,"
		       "\"prefill_gflops\":%.2f,\"prefill_sgemm_gflops\":%.2f,"
		       "\"prefill_over_sgemm\":%.3f,\"prefill_split\":",
		        model, wt, dtype_name(kv_type), m->weight_bytes / 1e9,
		        pool_size(engine_pool(e)), n_prompt, t_prefill, n_prompt / t_prefill,
		        pf_gflops, pre.sgemm, pf_gflops / pre.sgemm);
		split_json(&tp);
		printf(",\"gen\":%ld,\"bytes_per_token\":%.0f,\"decode\":[", n_gen,
		        (double)model_bytes_per_token(m));
		for (int b = 0; b < n_batches; b++) {
			const struct decode_res *r = &dec[b];
			printf("%s{\"batch\":%ld,\"decode_s\":%.4f,\"tok_s\":%.2f,\"gflops\":%.2f,"
			       "\"sgemm_gflops\":%.2f,\"over_sgemm\":%.3f,\"weight_gbs\":%.2f,"
			       "\"read_bw_gbs\":%.2f,\"over_bw\":%.3f,\"split\":", b ? "," : "",
			        r->batch, r->s, r->tok_s, r->gflops, r->mach.sgemm,
			        r->gflops / r->mach.sgemm, r->batch == 1 ? r->weight_gbs : 0.0,
			        r->mach.bw, r->batch == 1 ? r->weight_gbs / r->mach.bw : 0.0);
			split_json(&r->split);
			printf("}");
		}
		printf("],\"rss_mb\":%.1f}\n", rss_mb);
	} else {
		printf("engine: %s (%s weights, %s KV cache), %d threads\n", model, wt,
		        dtype_name(kv_type), pool_size(engine_pool(e)));
		printf("  prefill %ld tokens: %.1f tok/s, %.1f GFLOP/s = %.2f x sgemm "
		       "(%.1f GFLOP/s in the same run)\n", n_prompt, n_prompt / t_prefill,
		        pf_gflops, pf_gflops / pre.sgemm, pre.sgemm);
		for (int b = 0; b < n_batches; b++) {
			const struct decode_res *r = &dec[b];
			printf("  decode batch %ld: %.1f tok/s, %.1f GFLOP/s = %.2f x sgemm (%.1f)",
			        r->batch, r->tok_s, r->gflops, r->gflops / r->mach.sgemm,
			        r->mach.sgemm);
			if (r->batch == 1)
				printf("; weights %.1f GB/s = %.2f x read bandwidth (%.1f GB/s)",
				        r->weight_gbs, r->weight_gbs / r->mach.bw, r->mach.bw);
			printf("\n");
		}
		printf("  resident memory after the run %.0f MiB\n", rss_mb);
	}
	rc = 0;
	goto done;
fail:
	fprintf(stderr, "epmoe bench engine: %s\n", epmoe_strerror(rc));
	rc = 1;
done:
	for (long i = 0; seqs && i < max_b; i++)
		eng_seq_free(seqs[i]);
	free(seqs);
	free(toks);
	free(logits);
	bench_probe_free(bp);
	engine_free(e);
	model_free(m);
	return rc;
}
