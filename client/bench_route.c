/* `epmoe bench route`: the cost of each routing policy against the time
 * of one in-process MoE layer (F32 SwiGLU experts) at the same shape.
 * Prints one JSON object per measurement (the bench script turns them
 * into a table). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "bench.h"
#include "cli.h"
#include "err.h"
#include "model.h"
#include "moe.h"
#include "ops.h"
#include "pool.h"
#include "route.h"

/* ---- routing cost against an MoE layer ---- */

static float
lcg_unit(uint64_t *s)
{
	*s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
	return (float)((*s >> 40) * (1.0 / 16777216.0));
}

/* Time of one MoE layer for the assignment ro: the in-process expert
 * backend on a one-layer model whose experts are the random F32 weights
 * wg, wu [E * ff, d] and wd [E * d, ff] (stacked as in a GGUF file). */
static double
moe_layer_time(struct pool *pool, const float *x, uint32_t T, uint32_t d,
        uint32_t ff, uint32_t E, const struct route_out *ro, float *wg, float *wu,
        float *wd)
{
	struct model_layer l = {
		.gate_exps = { DTYPE_F32, d, E * ff, (size_t)d * 4, wg },
		.up_exps = { DTYPE_F32, d, E * ff, (size_t)d * 4, wu },
		.down_exps = { DTYPE_F32, ff, E * d, (size_t)ff * 4, wd },
	};
	struct model m = { .hp = { .n_embd = d, .n_layer = 1, .n_expert = E,
		.n_ff_exp = ff }, .layers = &l };
	struct moe_assign a = { T, ro->off, ro->expert, ro->weight };
	struct moe_backend *be;
	float *out = malloc((size_t)T * d * 4);
	double dt = -1;

	if (out && moe_local_new(&be, &m, pool) == 0) {
		double t0 = clock_now();
		if (be->run(be, 0, x, &a, out) == 0)
			dt = clock_now() - t0;
		be->free(be);
	}
	free(out);
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
