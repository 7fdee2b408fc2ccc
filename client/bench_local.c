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

#include "clock.h"
#include "bench.h"
#include "cli.h"
#include "engine.h"
#include "err.h"
#include "model.h"
#include "ops.h"
#include "pool.h"
#include "route.h"

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
		double t0 = clock_now();
		pool_run(pool, bw_worker, &bj);
		double dt = clock_now() - t0;
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
		double t0 = clock_now();
		pool_run(pool, gemm_worker, &gj);
		double dt = clock_now() - t0;
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
	/* prefill: the best of 3 (one-shot timings on a shared machine vary) */
	double t_prefill = 1e30, t0;
	struct engine_timing tp = { 0 };
	for (int rep = 0; rep < 3; rep++) {
		eng_seq_truncate(seqs[0], 0);
		engine_timing_reset(e);
		t0 = clock_now();
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
	t0 = clock_now();
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
	double t_decode = clock_now() - t0;
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

/* ---- routing cost against an MoE layer ---- */

static float
lcg_unit(uint64_t *s)
{
	*s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
	return (float)((*s >> 40) * (1.0 / 16777216.0));
}

/* Time of one MoE layer (SwiGLU experts, in process) for the assignment
 * out, with random F32 weights of E experts [ff, d] x3. */
static double
moe_layer_time(struct pool *pool, const float *x, uint32_t T, uint32_t d,
        uint32_t ff, uint32_t E, const struct route_out *ro, float *wg, float *wu,
        float *wd)
{
	float *xe = malloc((size_t)T * d * 4), *g = malloc((size_t)T * ff * 4);
	float *u = malloc((size_t)T * ff * 4), *y = malloc((size_t)T * d * 4);
	float *out = calloc((size_t)T * d, 4);
	uint32_t *rows = malloc(T * sizeof(uint32_t));
	float *ws = malloc(T * sizeof(float));
	double t0 = clock_now();

	for (uint32_t e = 0; e < E; e++) {
		uint32_t n = 0;
		for (uint32_t t = 0; t < T; t++)
			for (uint32_t i = ro->off[t]; i < ro->off[t + 1]; i++)
				if ((uint32_t)ro->expert[i] == e) {
					rows[n] = t;
					ws[n++] = ro->weight[i];
				}
		if (n == 0)
			continue;
		for (uint32_t i = 0; i < n; i++)
			memcpy(xe + (size_t)i * d, x + (size_t)rows[i] * d, d * 4);
		struct tmat G = { DTYPE_F32, d, ff, d * 4, wg + (size_t)e * ff * d };
		struct tmat U = { DTYPE_F32, d, ff, d * 4, wu + (size_t)e * ff * d };
		struct tmat D = { DTYPE_F32, ff, d, ff * 4, wd + (size_t)e * ff * d };
		op_matmul(pool, &G, xe, (int)n, (int)d, g, (int)ff);
		op_matmul(pool, &U, xe, (int)n, (int)d, u, (int)ff);
		op_swiglu(g, u, (int)(n * ff));
		op_matmul(pool, &D, g, (int)n, (int)ff, y, (int)d);
		for (uint32_t i = 0; i < n; i++)
			for (uint32_t c = 0; c < d; c++)
				out[(size_t)rows[i] * d + c] += ws[i] * y[(size_t)i * d + c];
	}
	double dt = clock_now() - t0;
	free(xe);
	free(g);
	free(u);
	free(y);
	free(out);
	free(rows);
	free(ws);
	return dt;
}

int
bench_route(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "tokens", required_argument, NULL, 'T' },
		{ "experts", required_argument, NULL, 'E' },
		{ "dim", required_argument, NULL, 'd' },
		{ "ff-total", required_argument, NULL, 'f' },
		{ "k", required_argument, NULL, 'k' },
		{ "threads", required_argument, NULL, 't' },
		{ "policies", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	long T = 512, d = 1024, ff_total = 8 * 2816, k = 2, threads = 0;
	const char *experts = "8,16,32,64";
	const char *policies = "native,sinkhorn,ssr:lambda=1.3,ssr:p=0.01,expert_choice:c=2,usmoe,capacity:factor=1.25,lossfree,sinkhorn:kernel=capped";
	struct pool *pool;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'T':
			if (cli_long(optarg, 1, 1 << 16, &T))
				return cli_bad("bench route", "--tokens", "expects 1..65536");
			break;
		case 'E': experts = optarg; break;
		case 'p': policies = optarg; break;
		case 'd':
			if (cli_long(optarg, 16, 1 << 16, &d))
				return cli_bad("bench route", "--dim", "expects 16..65536");
			break;
		case 'f':
			if (cli_long(optarg, 16, 1 << 22, &ff_total))
				return cli_bad("bench route", "--ff-total", "expects 16..4194304");
			break;
		case 'k':
			if (cli_long(optarg, 1, 64, &k))
				return cli_bad("bench route", "--k", "expects 1..64");
			break;
		case 't':
			if (cli_long(optarg, 0, 1024, &threads))
				return cli_bad("bench route", "--threads", "expects 0..1024");
			break;
		case 'h':
			printf("usage: epmoe bench route [--tokens 512] [--experts 8,16,32,64]\n"
			       "       [--dim 1024] [--ff-total 22528] [--k 2] [--policies a,b,...]\n"
			       "  routing time of each policy on random skewed gate logits [T, E]\n"
			       "  against the time of one in-process MoE layer (F32 SwiGLU experts,\n"
			       "  expert ff = ff-total / E: fine-grained experts at equal size)\n");
			return 0;
		default: return 2;
		}
	}
	if (threads == 0)
		threads = sysconf(_SC_NPROCESSORS_ONLN);
	op_blas_init();
	if (pool_new(&pool, (int)threads) != 0)
		return 1;
	int32_t *Es;
	size_t nE;
	if (cli_ids(experts, &Es, &nE) != 0) {
		pool_free(pool);
		return cli_bad("bench route", "--experts", "expects a list like 8,16,32,64");
	}
	uint64_t seed = 42;
	float *x = malloc((size_t)T * d * 4);
	for (long i = 0; i < T * d; i++)
		x[i] = lcg_unit(&seed) * 2 - 1;
	for (size_t ie = 0; ie < nE; ie++) {
		uint32_t E = (uint32_t)Es[ie], ff = (uint32_t)(ff_total / E);
		if (E < (uint32_t)k || E > 4096 || ff < 1)
			continue;
		float *S = malloc((size_t)T * E * 4);
		float *wg = malloc((size_t)E * ff * d * 4), *wu = malloc((size_t)E * ff * d * 4);
		float *wd = malloc((size_t)E * ff * d * 4);
		if (!S || !wg || !wu || !wd) {
			free(S);
			free(wg);
			free(wu);
			free(wd);
			continue;
		}
		float sc = 1.0f / sqrtf((float)d);
		for (size_t i = 0; i < (size_t)E * ff * d; i++) {
			wg[i] = (lcg_unit(&seed) * 2 - 1) * sc;
			wu[i] = (lcg_unit(&seed) * 2 - 1) * sc;
			wd[i] = (lcg_unit(&seed) * 2 - 1) * sc;
		}
		/* logits with a per-expert skew, like a trained router's */
		for (long t = 0; t < T; t++)
			for (uint32_t e = 0; e < E; e++)
				S[(size_t)t * E + e] = (lcg_unit(&seed) * 2 - 1) * 3.0f +
				        1.5f * (float)(e % 4 == 0);
		char *list = strdup(policies), *save = NULL;
		for (char *spec = strtok_r(list, ",", &save); spec; spec = strtok_r(NULL, ",", &save)) {
			/* keys after ':' are separated by ';' on this command line */
			char full[256];
			snprintf(full, sizeof(full), "%s", spec);
			for (char *q = full; *q; q++)
				if (*q == ';')
					*q = ',';
			struct route_cfg cfg;
			struct route_model rm = { (int)E, (int)k, 1, 1 };
			struct route_policy *p;
			struct route_out ro;
			struct route_info info;
			char err[256];
			if (route_parse(full, &cfg, err, sizeof(err)) != 0 ||
			        route_policy_new(&p, &cfg, &rm, err, sizeof(err)) != 0) {
				fprintf(stderr, "bench route: %s: %s\n", full, err);
				continue;
			}
			route_out_init(&ro);
			route_run(p, 0, 0, S, (uint32_t)T, NULL, 0, &ro, &info); /* warm */
			double best = 1e30;
			for (int r = 0; r < 5; r++) {
				double t0 = clock_now();
				route_run(p, 0, (uint64_t)r + 1, S, (uint32_t)T, NULL, 0, &ro, &info);
				double dt = clock_now() - t0;
				if (dt < best)
					best = dt;
			}
			double moe = moe_layer_time(pool, x, (uint32_t)T, (uint32_t)d, ff, E, &ro,
			        wg, wu, wd);
			printf("{\"bench\":\"route\",\"experts\":%u,\"ff\":%u,\"tokens\":%ld,"
			       "\"policy\":\"%s\",\"route_us\":%.1f,\"moe_ms\":%.3f,"
			       "\"route_over_moe\":%.5f,\"maxvio\":%.4f,\"experts_per_token\":%.3f}\n",
			        E, ff, T, full, best * 1e6, moe * 1e3, best / moe, info.maxvio,
			        info.experts_per_token);
			fflush(stdout);
			route_out_fini(&ro);
			route_policy_free(p);
		}
		free(list);
		free(S);
		free(wg);
		free(wu);
		free(wd);
	}
	free(x);
	free(Es);
	pool_free(pool);
	return 0;
}
