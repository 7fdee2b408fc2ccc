/* epmoe route: applies a routing policy (common/route.h) to a gate-logits
 * matrix read from a raw float32 file, or generated at random, and prints
 * the routing as JSON; --bench N times route_run() instead.
 *
 * It builds the same route_policy the engine builds, so what it prints is
 * what the server would route for one MoE layer of one step.
 */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cmd.h"
#include "err.h"
#include "route.h"

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: epmoe route --policy P[:key=value,...] --tokens T --experts E\n"
	    "                   (--logits FILE.f32 | --random SEED) [options]\n"
	    "\n"
	    "Applies a routing policy to gate logits [T, E] and prints JSON:\n"
	    "  {\"policy\", \"tokens\": [[[expert, weight], ...], ...], \"load\",\n"
	    "   \"maxvio\", \"experts_per_token\", \"ot_runs\", \"iterations\",\n"
	    "   \"nonfinite\", \"dropped\"}\n"
	    "\n"
	    "options:\n"
	    "  --policy SPEC       routing policy (default native); see below\n"
	    "  --logits FILE       raw little-endian float32 [T, E], row-major;\n"
	    "                      its size must be T*E*4 bytes\n"
	    "  --random SEED       use N(0, scale^2) logits instead of a file\n"
	    "  --scale S           std of --random logits (default 1)\n"
	    "  --skew S            add S x a fixed N(0,1) value per expert to\n"
	    "                      --random logits (skewed load; default 0)\n"
	    "  --tokens T          tokens (rows)\n"
	    "  --experts E         routed experts (columns)\n"
	    "  --k K               the model's native experts per token (default 2)\n"
	    "  --renorm 0|1        the model's norm_topk_prob (default 0)\n"
	    "  --group-sizes a,b,..  prefill sequences of a, b, ... tokens (sum T);\n"
	    "                      each is its own routing group\n"
	    "  --decode            all T tokens form one decode group\n"
	    "                      (default: one prefill group of all T)\n"
	    "  --workers W         expert->worker map: contiguous blocks over W\n"
	    "                      workers (ssr lambda schedule)\n"
	    "  --step N            step number passed to the policy (default 0)\n"
	    "  --bench N           time N calls of route_run and print\n"
	    "                      {\"us_per_call\": ...} instead of the routing\n"
	    "  -h, --help          this help\n"
	    "\n");
	route_print_help(f);
}

static int
parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *s == '\0' || *end != '\0' || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static int
parse_double(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || *s == '\0' || *end != '\0' || !isfinite(v))
		return -1;
	*out = v;
	return 0;
}

/* Reads exactly T*E floats; on a size mismatch says what it expected. */
static int
read_logits(const char *path, long T, long E, float *S)
{
	FILE *f = fopen(path, "rb");
	struct stat st;
	size_t want = (size_t)T * (size_t)E;

	if (f == NULL) {
		fprintf(stderr, "epmoe route: cannot open %s: %s\n", path,
		    strerror(errno));
		return -1;
	}
	if (fstat(fileno(f), &st) != 0 ||
	    (uint64_t)st.st_size != (uint64_t)want * 4) {
		fprintf(stderr, "epmoe route: %s has %lld bytes, expected "
		    "%zu (T=%ld x E=%ld x 4)\n", path,
		    (long long)st.st_size, want * 4, T, E);
		fclose(f);
		return -1;
	}
	if (fread(S, sizeof(float), want, f) != want) {
		fprintf(stderr, "epmoe route: short read on %s\n", path);
		fclose(f);
		return -1;
	}
	fclose(f);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	for (size_t i = 0; i < want; i++) {
		uint32_t u;

		memcpy(&u, &S[i], 4);
		u = __builtin_bswap32(u);
		memcpy(&S[i], &u, 4);
	}
#endif
	return 0;
}

static uint64_t
rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double
rng_normal(uint64_t *s)
{
	double u1 = ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
	double u2 = (double)(rng_next(s) >> 11) / 9007199254740992.0;

	return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void
random_logits(uint64_t seed, double scale, double skew, long T, long E,
    float *S)
{
	uint64_t s = seed;
	double *bias = calloc((size_t)E, sizeof(double));

	for (long e = 0; e < E && bias != NULL; e++)
		bias[e] = skew * rng_normal(&s);
	for (long t = 0; t < T; t++)
		for (long e = 0; e < E; e++)
			S[t * E + e] = (float)(scale * rng_normal(&s) +
			    (bias ? bias[e] : 0.0));
	free(bias);
}

/* Parses "a,b,c" into prefill groups that must sum to T. */
static int
parse_groups(const char *s, long T, struct route_group **out, int *n_out)
{
	struct route_group *g = NULL;
	int n = 0;
	long sum = 0;
	char *buf = strdup(s), *tok, *save = NULL;

	if (buf == NULL)
		return -1;
	for (tok = strtok_r(buf, ",", &save); tok != NULL;
	    tok = strtok_r(NULL, ",", &save)) {
		long v;
		struct route_group *ng;

		if (parse_long(tok, 1, 1L << 30, &v) != 0) {
			fprintf(stderr, "epmoe route: bad group size '%s'\n",
			    tok);
			goto fail;
		}
		if ((ng = realloc(g, (size_t)(n + 1) * sizeof(*g))) == NULL)
			goto fail;
		g = ng;
		g[n].start = (uint32_t)sum;
		g[n].n = (uint32_t)v;
		g[n].kind = ROUTE_GROUP_PREFILL;
		n++;
		sum += v;
	}
	if (n == 0 || sum != T) {
		fprintf(stderr, "epmoe route: --group-sizes sum to %ld, "
		    "expected --tokens %ld\n", sum, T);
		goto fail;
	}
	free(buf);
	*out = g;
	*n_out = n;
	return 0;
fail:
	free(buf);
	free(g);
	return -1;
}

static double
now_us(void)
{
	struct timespec ts;

	/* CPU time of the process: the machine may be shared */
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static cJSON *
routing_json(const char *spec, const struct route_out *o,
    const struct route_info *in, const struct route_stats *st)
{
	cJSON *root = cJSON_CreateObject(), *toks, *load;

	if (root == NULL)
		return NULL;
	cJSON_AddStringToObject(root, "policy", spec);
	toks = cJSON_AddArrayToObject(root, "tokens");
	for (uint32_t t = 0; toks != NULL && t < o->n_tokens; t++) {
		cJSON *row = cJSON_CreateArray();

		for (uint32_t i = o->off[t]; row != NULL && i < o->off[t + 1];
		    i++) {
			cJSON *pr = cJSON_CreateArray();

			cJSON_AddItemToArray(pr,
			    cJSON_CreateNumber(o->expert[i]));
			cJSON_AddItemToArray(pr,
			    cJSON_CreateNumber(o->weight[i]));
			cJSON_AddItemToArray(row, pr);
		}
		cJSON_AddItemToArray(toks, row);
	}
	load = cJSON_AddArrayToObject(root, "load");
	for (uint32_t e = 0; load != NULL && e < o->n_experts; e++)
		cJSON_AddItemToArray(load, cJSON_CreateNumber(o->load[e]));
	cJSON_AddNumberToObject(root, "maxvio", in->maxvio);
	cJSON_AddNumberToObject(root, "experts_per_token",
	    in->experts_per_token);
	cJSON_AddNumberToObject(root, "ot_runs", (double)st->ot_calls);
	cJSON_AddNumberToObject(root, "ot_groups", in->ot_groups);
	cJSON_AddNumberToObject(root, "iterations", in->ot_iters);
	cJSON_AddNumberToObject(root, "ot_residual", in->ot_residual);
	cJSON_AddNumberToObject(root, "worker_ratio", in->worker_ratio);
	cJSON_AddNumberToObject(root, "nonfinite", in->n_nonfinite);
	cJSON_AddNumberToObject(root, "dropped", in->n_dropped);
	return root;
}

int
cmd_route(int argc, char **argv)
{
	const char *spec = "native", *logits = NULL, *gsizes = NULL;
	long T = -1, E = -1, k = 2, renorm = 0, workers = 0, bench = 0;
	long step = 0, seed = -1;
	double scale = 1.0, skew = 0.0;
	int decode = 0, rc = 1, n_groups = 0;
	struct route_group *groups = NULL, dgroup;
	struct route_cfg cfg;
	struct route_model m;
	struct route_policy *pol = NULL;
	struct route_out out;
	struct route_info info;
	struct route_stats st;
	char err[256], canon[512];
	float *S = NULL;
	cJSON *json;
	char *text;

	route_out_init(&out);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0;

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(a, "--decode") == 0) {
			decode = 1;
			continue;
		}
		if (v == NULL) {
			fprintf(stderr, "epmoe route: %s needs a value (or is "
			    "unknown; see --help)\n", a);
			return 2;
		}
		i++;
		if (strcmp(a, "--policy") == 0)
			spec = v;
		else if (strcmp(a, "--logits") == 0)
			logits = v;
		else if (strcmp(a, "--group-sizes") == 0)
			gsizes = v;
		else if (strcmp(a, "--tokens") == 0)
			bad = parse_long(v, 0, 1L << 24, &T);
		else if (strcmp(a, "--experts") == 0)
			bad = parse_long(v, 1, 65535, &E);
		else if (strcmp(a, "--k") == 0)
			bad = parse_long(v, 1, 65535, &k);
		else if (strcmp(a, "--renorm") == 0)
			bad = parse_long(v, 0, 1, &renorm);
		else if (strcmp(a, "--workers") == 0)
			bad = parse_long(v, 1, 65535, &workers);
		else if (strcmp(a, "--bench") == 0)
			bad = parse_long(v, 1, 100000000, &bench);
		else if (strcmp(a, "--step") == 0)
			bad = parse_long(v, 0, INT64_MAX >> 1, &step);
		else if (strcmp(a, "--random") == 0)
			bad = parse_long(v, 0, INT64_MAX >> 1, &seed);
		else if (strcmp(a, "--scale") == 0)
			bad = parse_double(v, &scale);
		else if (strcmp(a, "--skew") == 0)
			bad = parse_double(v, &skew);
		else {
			fprintf(stderr, "epmoe route: unknown option %s (see "
			    "--help)\n", a);
			return 2;
		}
		if (bad) {
			fprintf(stderr, "epmoe route: bad value '%s' for %s\n",
			    v, a);
			return 2;
		}
	}
	if (T < 0 || E < 0) {
		fprintf(stderr, "epmoe route: --tokens and --experts are "
		    "required (see --help)\n");
		return 2;
	}
	if ((logits == NULL) == (seed < 0)) {
		fprintf(stderr, "epmoe route: give exactly one of --logits "
		    "and --random\n");
		return 2;
	}
	if (gsizes != NULL && decode) {
		fprintf(stderr, "epmoe route: --group-sizes and --decode "
		    "exclude each other\n");
		return 2;
	}
	if (k > E) {
		fprintf(stderr, "epmoe route: --k %ld exceeds --experts %ld\n",
		    k, E);
		return 2;
	}
	if (route_parse(spec, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "epmoe route: %s\n", err);
		return 2;
	}
	m.n_experts = (int)E;
	m.k = (int)k;
	m.renorm = (int)renorm;
	m.n_layers = 1;
	if (route_policy_new(&pol, &cfg, &m, err, sizeof(err)) != 0) {
		fprintf(stderr, "epmoe route: %s\n", err);
		return 2;
	}
	if (workers > 0) {
		uint16_t *map = malloc((size_t)E * sizeof(*map));

		if (map == NULL)
			goto out;
		for (long e = 0; e < E; e++)
			map[e] = (uint16_t)(e * workers / E);
		if (route_policy_set_workers(pol, map, (int)(workers < E ?
		    workers : E)) != 0) {
			free(map);
			fprintf(stderr, "epmoe route: bad --workers\n");
			goto out;
		}
		free(map);
	}
	if ((S = malloc(((size_t)T * (size_t)E + 1) * sizeof(float))) == NULL) {
		fprintf(stderr, "epmoe route: out of memory\n");
		goto out;
	}
	if (logits != NULL) {
		if (read_logits(logits, T, E, S) != 0)
			goto out;
	} else {
		random_logits((uint64_t)seed, scale, skew, T, E, S);
	}
	if (gsizes != NULL &&
	    parse_groups(gsizes, T, &groups, &n_groups) != 0)
		goto out;
	if (decode) {
		dgroup.start = 0;
		dgroup.n = (uint32_t)T;
		dgroup.kind = ROUTE_GROUP_DECODE;
		groups = &dgroup;
		n_groups = 1;
	}
	if (route_format(route_policy_cfg(pol), canon, sizeof(canon)) != 0)
		snprintf(canon, sizeof(canon), "%s", spec);
	if (bench > 0) {
		double t0, t1;
		int r;

		/* warm-up grows the buffers */
		if ((r = route_run(pol, 0, (uint64_t)step, S, (uint32_t)T,
		    groups, n_groups, &out, &info)) != 0) {
			fprintf(stderr, "epmoe route: %s\n",
			    epmoe_strerror(r));
			goto out;
		}
		route_policy_reset(pol);
		t0 = now_us();
		for (long i = 0; i < bench; i++)
			route_run(pol, 0, (uint64_t)(step + i), S,
			    (uint32_t)T, groups, n_groups, &out, &info);
		t1 = now_us();
		route_policy_stats(pol, &st);
		printf("{\"policy\": \"%s\", \"tokens\": %ld, \"experts\": %ld, "
		    "\"k\": %ld, \"calls\": %ld, \"us_per_call\": %.2f, "
		    "\"ot_runs\": %llu, \"iterations_per_ot\": %.1f}\n", canon, T,
		    E, (long)route_policy_cfg(pol)->k, bench,
		    (t1 - t0) / (double)bench,
		    (unsigned long long)st.ot_calls,
		    st.ot_groups ? (double)st.ot_iters / st.ot_groups : 0.0);
		rc = 0;
		goto out;
	}
	{
		int r = route_run(pol, 0, (uint64_t)step, S, (uint32_t)T,
		    groups, n_groups, &out, &info);

		if (r != 0) {
			fprintf(stderr, "epmoe route: %s\n", epmoe_strerror(r));
			goto out;
		}
	}
	route_policy_stats(pol, &st);
	if ((json = routing_json(canon, &out, &info, &st)) == NULL ||
	    (text = cJSON_PrintUnformatted(json)) == NULL) {
		cJSON_Delete(json);
		fprintf(stderr, "epmoe route: out of memory\n");
		goto out;
	}
	printf("%s\n", text);
	cJSON_free(text);
	cJSON_Delete(json);
	rc = 0;
out:
	if (groups != &dgroup)
		free(groups);
	free(S);
	route_out_fini(&out);
	route_policy_free(pol);
	return rc;
}
