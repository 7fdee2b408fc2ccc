/* In-process benchmarks: the machine's limits (OpenBLAS sgemm FLOP rate,
 * memory read bandwidth) and the engine's prefill / decode speed on a
 * model, so `make bench` can print the engine as ratios of the machine
 * measured in the same run.  Prints one JSON object per measurement on
 * stdout (the bench script turns them into tables). */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "engine.h"
#include "err.h"
#include "model.h"
#include "ops.h"
#include "pool.h"

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- machine ---- */

struct bw_job {
	const float *buf;
	size_t n;
	double sum[64];
};

static void
bw_worker(void *ctx, int ith, int nth)
{
	struct bw_job *j = ctx;
	long lo, hi;

	pool_split((long)j->n, ith, nth, 4096, &lo, &hi);
	/* read every cache line; 4 accumulators so the adds are not the limit */
	float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
	for (long i = lo; i + 64 <= hi; i += 64) {
		a0 += j->buf[i];
		a1 += j->buf[i + 16];
		a2 += j->buf[i + 32];
		a3 += j->buf[i + 48];
	}
	j->sum[ith & 63] = a0 + a1 + a2 + a3;
}

struct gemm_job {
	int M, N, K;
	const float *A, *B;
	float *C;
};

static void
gemm_worker(void *ctx, int ith, int nth)
{
	struct gemm_job *j = ctx;
	long lo, hi;

	pool_split(j->N, ith, nth, 16, &lo, &hi);
	if (hi > lo)
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->M, (int)(hi - lo),
		        j->K, 1.0f, j->A, j->K, j->B + (size_t)lo * j->K, j->K, 0.0f,
		        j->C + lo, j->N);
}

int
bench_machine(int argc, char **argv)
{
	long threads = 0, mb = 1024;
	struct pool *pool;
	int c;

	optind = 1;
	static const struct option opts[] = {
		{ "threads", required_argument, NULL, 't' },
		{ "mb", required_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	while ((c = getopt_long(argc, argv, "t:h", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			if (cli_long(optarg, 0, 1024, &threads))
				return cli_bad("bench machine", "--threads", "expects 0..1024");
			break;
		case 'b':
			if (cli_long(optarg, 64, 65536, &mb))
				return cli_bad("bench machine", "--mb", "expects 64..65536");
			break;
		case 'h':
			printf("usage: epmoe bench machine [--threads N] [--mb MB]\n"
			       "  prints the OpenBLAS sgemm FLOP rate (prefill-like shape, the\n"
			       "  engine's threading) and the memory read bandwidth over MB MiB\n");
			return 0;
		default: return 2;
		}
	}
	if (threads == 0)
		threads = sysconf(_SC_NPROCESSORS_ONLN);
	op_blas_init();
	if (pool_new(&pool, (int)threads) != 0)
		return 1;
	/* bandwidth: a buffer much larger than the caches, read 5 times */
	size_t n = (size_t)mb << 18; /* floats */
	float *buf = malloc(n * sizeof(float));
	if (buf == NULL) {
		pool_free(pool);
		return 1;
	}
	for (size_t i = 0; i < n; i++)
		buf[i] = (float)(i & 7);
	struct bw_job bj = { .buf = buf, .n = n };
	double best = 1e30;
	for (int r = 0; r < 5; r++) {
		double t0 = now_s();
		pool_run(pool, bw_worker, &bj);
		double dt = now_s() - t0;
		if (dt < best)
			best = dt;
	}
	double bw = (double)n * sizeof(float) / best;
	free(buf);
	/* sgemm: C [512, 2816] = A [512, 1024] · Bᵀ, split by columns over the
	 * pool like the engine's prefill products */
	struct gemm_job gj = { .M = 512, .N = 2816, .K = 1024 };
	float *A = malloc((size_t)gj.M * gj.K * 4), *B = malloc((size_t)gj.N * gj.K * 4);
	float *C = malloc((size_t)gj.M * gj.N * 4);
	if (!A || !B || !C) {
		free(A);
		free(B);
		free(C);
		pool_free(pool);
		return 1;
	}
	for (size_t i = 0; i < (size_t)gj.M * gj.K; i++)
		A[i] = (float)((i * 7) % 13) * 0.01f;
	for (size_t i = 0; i < (size_t)gj.N * gj.K; i++)
		B[i] = (float)((i * 5) % 11) * 0.01f;
	gj.A = A;
	gj.B = B;
	gj.C = C;
	pool_run(pool, gemm_worker, &gj); /* warm up */
	best = 1e30;
	for (int r = 0; r < 5; r++) {
		double t0 = now_s();
		pool_run(pool, gemm_worker, &gj);
		double dt = now_s() - t0;
		if (dt < best)
			best = dt;
	}
	double flops = 2.0 * gj.M * gj.N * gj.K / best;
	printf("{\"bench\":\"machine\",\"threads\":%ld,\"read_bw_gbs\":%.2f,"
	       "\"sgemm_gflops\":%.2f}\n", threads, bw / 1e9, flops / 1e9);
	free(A);
	free(B);
	free(C);
	pool_free(pool);
	return 0;
}

/* ---- engine ---- */

/* FLOPs of one prefill of T tokens at native routing: every matrix a token
 * touches (attention projections, router, k experts, shared expert) twice
 * per weight, causal attention scores and values, and one LM-head row. */
static double
prefill_flops(const struct model *m, uint32_t T)
{
	const struct model_hparams *hp = &m->hp;
	double d = hp->n_embd, qd = (double)hp->n_head * hp->head_dim;
	double kvd = (double)hp->n_head_kv * hp->head_dim;
	double per_tok = 2.0 * (d * qd * 2 + d * kvd * 2 + d * hp->n_expert +
	        (double)hp->n_expert_used * 3.0 * d * hp->n_ff_exp +
	        3.0 * d * hp->n_ff_shexp);
	/* scores + values: 2 * 2 * hd per (query, key) pair, T²/2 pairs, per head */
	double att = 4.0 * hp->head_dim * hp->n_head * (double)T * (T + 1) / 2.0;
	return hp->n_layer * (per_tok * T + att) + 2.0 * d * hp->n_vocab;
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
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *model = cli_env("EPMOE_MODEL", NULL), *routing = NULL;
	long n_prompt = 512, n_gen = 64, threads = 0, batch = 1;
	struct model *m = NULL;
	struct engine *e = NULL;
	struct eng_seq **seqs = NULL;
	int32_t *toks = NULL;
	float *logits = NULL;
	int c, rc = 1;

	optind = 1;
	while ((c = getopt_long(argc, argv, "m:p:n:t:b:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'r': routing = optarg; break;
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
			if (cli_long(optarg, 1, 1024, &batch))
				return cli_bad("bench engine", "--batch", "expects 1..1024");
			break;
		case 'h':
			printf("usage: epmoe bench engine --model M [--prompt-tokens 512] [--gen 64]\n"
			       "       [--batch 1] [--threads N] [--routing P]\n"
			       "  prefill of one prompt, then --gen decode steps of --batch sequences\n");
			return 0;
		default: return 2;
		}
	}
	if (model == NULL)
		return cli_bad("bench engine", "--model", "is required");
	if (cli_load("bench engine", model, (int)threads, routing, &m, &e))
		return 1;
	uint32_t V = m->hp.n_vocab;
	seqs = calloc((size_t)batch, sizeof(*seqs));
	toks = malloc((size_t)(n_prompt > batch ? n_prompt : batch) * sizeof(int32_t));
	logits = malloc((size_t)batch * V * sizeof(float));
	if (!seqs || !toks || !logits)
		goto done;
	for (long i = 0; i < batch; i++)
		if (eng_seq_new(e, &seqs[i]) != 0)
			goto done;
	/* pseudo-random prompt ids, skipping the specials */
	for (long i = 0; i < n_prompt; i++)
		toks[i] = (int32_t)(3 + (i * 2654435761u) % (V - 3));
	/* warm the mapping (page faults are not what we measure) */
	struct eng_item w = { .seq = seqs[0], .tokens = toks, .n_tokens = 8,
		.logits = ENG_LOGITS_LAST, .out = logits };
	if ((rc = engine_step(e, &w, 1)) != 0)
		goto fail;
	eng_seq_truncate(seqs[0], 0);
	engine_timing_reset(e);
	double t0 = now_s();
	struct eng_item p = { .seq = seqs[0], .tokens = toks, .n_tokens = (uint32_t)n_prompt,
		.logits = ENG_LOGITS_LAST, .out = logits };
	if ((rc = engine_step(e, &p, 1)) != 0)
		goto fail;
	double t_prefill = now_s() - t0;
	struct engine_timing tp = *engine_timing(e);
	/* decode: batch sequences, each after a short prompt (the first reuses
	 * the long prefill) */
	for (long i = 1; i < batch; i++) {
		struct eng_item q = { .seq = seqs[i], .tokens = toks, .n_tokens = 16 };
		if ((rc = engine_step(e, &q, 1)) != 0)
			goto fail;
	}
	struct eng_item *items = calloc((size_t)batch, sizeof(*items));
	if (items == NULL)
		goto done;
	for (long i = 0; i < batch; i++)
		toks[i] = (int32_t)(3 + (i * 40503u) % (V - 3));
	engine_timing_reset(e);
	t0 = now_s();
	for (long g = 0; g < n_gen; g++) {
		for (long i = 0; i < batch; i++) {
			items[i] = (struct eng_item){ .seq = seqs[i], .tokens = &toks[i],
				.n_tokens = 1, .logits = ENG_LOGITS_LAST,
				.out = logits + (size_t)i * V, .decode = true };
		}
		if ((rc = engine_step(e, items, (uint32_t)batch)) != 0) {
			free(items);
			goto fail;
		}
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
	double t_decode = now_s() - t0;
	const struct engine_timing *td = engine_timing(e);
	free(items);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double bpt = (double)model_bytes_per_token(m);
	printf("{\"bench\":\"engine\",\"model\":\"%s\",\"weights_gb\":%.3f,\"threads\":%d,"
	       "\"prompt_tokens\":%ld,\"prefill_s\":%.4f,\"prefill_tok_s\":%.2f,"
	       "\"prefill_gflops\":%.2f,\"gen\":%ld,\"batch\":%ld,\"decode_s\":%.4f,"
	       "\"decode_tok_s\":%.2f,\"bytes_per_token\":%.0f,"
	       "\"decode_weight_gbs\":%.2f,\"peak_rss_mb\":%.1f,"
	       "\"prefill_split\":{\"attn\":%.4f,\"gate\":%.4f,\"route\":%.4f,\"moe\":%.4f,\"shexp\":%.4f,\"head\":%.4f},"
	       "\"decode_split\":{\"attn\":%.4f,\"gate\":%.4f,\"route\":%.4f,\"moe\":%.4f,\"shexp\":%.4f,\"head\":%.4f}}\n",
	        model, m->weight_bytes / 1e9, pool_size(engine_pool(e)), n_prompt,
	        t_prefill, n_prompt / t_prefill,
	        prefill_flops(m, (uint32_t)n_prompt) / t_prefill / 1e9, n_gen, batch,
	        t_decode, n_gen * batch / t_decode, bpt, bpt * n_gen / t_decode / 1e9,
	        ru.ru_maxrss / 1024.0, tp.attn, tp.gate, tp.route, tp.moe, tp.shexp,
	        tp.head, td->attn, td->gate, td->route, td->moe, td->shexp, td->head);
	rc = 0;
	goto done;
fail:
	fprintf(stderr, "epmoe bench engine: %s\n", epmoe_strerror(rc));
	rc = 1;
done:
	for (long i = 0; seqs && i < batch; i++)
		eng_seq_free(seqs[i]);
	free(seqs);
	free(toks);
	free(logits);
	engine_free(e);
	model_free(m);
	return rc;
}
