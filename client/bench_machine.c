/* `epmoe bench machine` and the machine probes the engine benchmark runs
 * between its phases: the memory read bandwidth and the OpenBLAS sgemm
 * FLOP rate on the engine's threads, the two limits the engine's figures
 * are divided by.  On a shared machine they move from one minute to the
 * next, so a ratio is only meaningful against a probe of the same run. */
#include <cblas.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bench.h"
#include "clock.h"
#include "cli.h"
#include "err.h"
#include "ops.h"
#include "pool.h"

/* sgemm shape: C [512, 2816] = A [512, 1024] · Bᵀ, an expert's gate
 * product over a 512-token prompt */
#define G_M 512
#define G_N 2816
#define G_K 1024

struct bench_probe {
	struct pool *pool;
	float *buf;          /* bandwidth buffer */
	size_t n;            /* its floats */
	float *A, *B, *C;    /* sgemm operands */
	double sum[64];
};

static void
bw_worker(void *ctx, int ith, int nth)
{
	struct bench_probe *p = ctx;
	long lo, hi;

	pool_split((long)p->n, ith, nth, 4096, &lo, &hi);
	/* read every cache line; 4 accumulators so the adds are not the limit */
	float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
	for (long i = lo; i + 64 <= hi; i += 64) {
		a0 += p->buf[i];
		a1 += p->buf[i + 16];
		a2 += p->buf[i + 32];
		a3 += p->buf[i + 48];
	}
	p->sum[ith & 63] = a0 + a1 + a2 + a3;
}

/* split by columns over the pool, like the engine's products */
static void
gemm_worker(void *ctx, int ith, int nth)
{
	struct bench_probe *p = ctx;
	long lo, hi;

	pool_split(G_N, ith, nth, 16, &lo, &hi);
	if (hi > lo)
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, G_M, (int)(hi - lo),
		        G_K, 1.0f, p->A, G_K, p->B + (size_t)lo * G_K, G_K, 0.0f,
		        p->C + lo, G_N);
}

int
bench_probe_new(struct bench_probe **out, struct pool *pool, size_t mb)
{
	struct bench_probe *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return EPMOE_ENOMEM;
	p->pool = pool;
	p->n = mb << 18;
	p->buf = malloc(p->n * sizeof(float));
	p->A = malloc((size_t)G_M * G_K * sizeof(float));
	p->B = malloc((size_t)G_N * G_K * sizeof(float));
	p->C = malloc((size_t)G_M * G_N * sizeof(float));
	if (!p->buf || !p->A || !p->B || !p->C) {
		bench_probe_free(p);
		return EPMOE_ENOMEM;
	}
	for (size_t i = 0; i < p->n; i++)
		p->buf[i] = (float)(i & 7);
	for (size_t i = 0; i < (size_t)G_M * G_K; i++)
		p->A[i] = (float)((i * 7) % 13) * 0.01f;
	for (size_t i = 0; i < (size_t)G_N * G_K; i++)
		p->B[i] = (float)((i * 5) % 11) * 0.01f;
	pool_run(pool, gemm_worker, p); /* warm up */
	*out = p;
	return 0;
}

void
bench_probe_free(struct bench_probe *p)
{
	if (p == NULL)
		return;
	free(p->buf);
	free(p->A);
	free(p->B);
	free(p->C);
	free(p);
}

double
bench_probe_bw(struct bench_probe *p, int reps)
{
	double best = 1e30;

	for (int r = 0; r < reps; r++) {
		double t0 = clock_now();
		pool_run(p->pool, bw_worker, p);
		double dt = clock_now() - t0;
		if (dt < best)
			best = dt;
	}
	return (double)p->n * sizeof(float) / best / 1e9;
}

double
bench_probe_sgemm(struct bench_probe *p, int reps)
{
	double best = 1e30;

	for (int r = 0; r < reps; r++) {
		double t0 = clock_now();
		pool_run(p->pool, gemm_worker, p);
		double dt = clock_now() - t0;
		if (dt < best)
			best = dt;
	}
	return 2.0 * G_M * G_N * G_K / best / 1e9;
}

int
bench_machine(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "threads", required_argument, NULL, 't' },
		{ "mb", required_argument, NULL, 'b' },
		{ "json", no_argument, NULL, 'J' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	long threads = 0, mb = 1024;
	int json = 0, c;
	struct pool *pool;
	struct bench_probe *p;

	optind = 1;
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
		case 'J': json = 1; break;
		case 'h':
			printf("usage: epmoe bench machine [--threads N] [--mb MB] [--json]\n"
			       "  the OpenBLAS sgemm FLOP rate ([512x1024]·[1024x2816], split over\n"
			       "  the threads like the engine's products) and the memory read\n"
			       "  bandwidth over MB MiB (default 1024), best of 5 each\n");
			return 0;
		default: return 2;
		}
	}
	if (threads == 0)
		threads = sysconf(_SC_NPROCESSORS_ONLN);
	op_blas_init();
	if (pool_new(&pool, (int)threads) != 0)
		return 1;
	if (bench_probe_new(&p, pool, (size_t)mb) != 0) {
		fprintf(stderr, "epmoe bench machine: out of memory for %ld MiB\n", mb);
		pool_free(pool);
		return 1;
	}
	double bw = bench_probe_bw(p, 5), gf = bench_probe_sgemm(p, 5);
	if (json)
		printf("{\"bench\":\"machine\",\"threads\":%ld,\"read_bw_gbs\":%.2f,"
		       "\"sgemm_gflops\":%.2f}\n", threads, bw, gf);
	else
		printf("machine, %ld threads: OpenBLAS sgemm %.1f GFLOP/s, memory read %.1f GB/s\n",
		        threads, gf, bw);
	bench_probe_free(p);
	pool_free(pool);
	return 0;
}
