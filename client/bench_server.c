/* epmoe bench server: the load generator's command.  Parses the options,
 * connects (any OpenAI-compatible HTTP server, or epmoe's NNG API), loads
 * the dataset, then runs each load point of the sweep (--rates or
 * --concurrency lists), each --repeat times: arrival schedule
 * (lg_arrival), requests (lg_drive), summary (lg_stats), table and JSON
 * (lg_report).  The JSON file is rewritten after every point, so an
 * interrupted sweep keeps what it measured.
 *
 * Bounded: at most 64 points x 100 repeats, each point by --requests,
 * --duration and --timeout (lg_drive's hard stop).
 */
#include <getopt.h>
#include <math.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "bench.h"
#include "cli.h"
#include "cli_gen.h"
#include "epmoe_client.h"
#include "err.h"
#include "git_commit.h"
#include "lg_arrival.h"
#include "lg_dataset.h"
#include "lg_drive.h"
#include "lg_report.h"
#include "lg_stats.h"

#define CMD "bench server"
#define MAX_POINTS 64
#define MAX_REPEAT 100
#define MAX_REQUESTS 1000000
/* Objectives when --slo does not say: a first token within a second and
 * at least ten tokens a second after it (faster than people read). */
#define DEFAULT_SLO "ttft=1s,tpot=100ms"

enum {
	OPT_CONCURRENCY = CLI_GEN_LAST + 1,
	OPT_RATE,
	OPT_RATES,
	OPT_BURSTINESS,
	OPT_MAX_CONCURRENCY,
	OPT_REQUESTS,
	OPT_DURATION,
	OPT_DATASET,
	OPT_DATASET_PATH,
	OPT_PROMPT_FILE,
	OPT_INPUT_LEN,
	OPT_OUTPUT_LEN,
	OPT_RANGE_RATIO,
	OPT_DATA_SEED,
	OPT_CHAT,
	OPT_STREAM,
	OPT_NO_STREAM,
	OPT_NO_IGNORE_EOS,
	OPT_EXTRA_BODY,
	OPT_SLO,
	OPT_REPEAT,
	OPT_WARMUP,
	OPT_JSON,
	OPT_SAVE_DETAILED,
	OPT_STATS_URL,
	OPT_STATS_INTERVAL,
	OPT_LABEL,
	OPT_QUIET,
};

struct opts {
	struct cli_gen g;
	double rates[MAX_POINTS];
	size_t n_rates;
	long conc[MAX_POINTS];
	size_t n_conc;
	int rate_single;           /* --rate (not --rates) */
	double burstiness;
	long max_concurrency;      /* 0: not given */
	long requests;
	double duration_s;
	enum lg_data_kind kind;
	int kind_given;
	const char *path;
	long input_len, output_len;
	int output_len_given;
	double range_ratio;
	unsigned long long data_seed;
	int chat;
	const char *extra_body;    /* --extra-body JSON object, checked */
	struct lg_slo slo;
	int slo_default;           /* no --slo: DEFAULT_SLO */
	long repeat, warmup;
	int json;
	const char *json_path;
	int detailed;
	const char *stats_url;
	double stats_interval;
	const char *label;
	int quiet;
};

/* "1,2.5,inf" -> values (> 0; "inf" allowed when allow_inf). */
static int
parse_list(const char *s, double *v, size_t cap, size_t *n, int allow_inf)
{
	char buf[1024], *tok, *save;

	if (strlen(s) >= sizeof(buf))
		return EPMOE_EINVAL;
	snprintf(buf, sizeof(buf), "%s", s);
	*n = 0;
	for (tok = strtok_r(buf, ",", &save); tok != NULL;
	        tok = strtok_r(NULL, ",", &save)) {
		double d;
		if (*n == cap)
			return EPMOE_EINVAL;
		if (allow_inf && (strcmp(tok, "inf") == 0 || strcmp(tok, "INF") == 0))
			d = INFINITY;
		else if (cli_float(tok, 1e-9, 1e9, &d) != 0)
			return EPMOE_EINVAL;
		v[(*n)++] = d;
	}
	return *n > 0 ? 0 : EPMOE_EINVAL;
}

static void
usage(FILE *f)
{
	fprintf(f,
"usage: epmoe bench server [options]\n"
"  load generator against a running OpenAI-compatible server (HTTP) or an\n"
"  epmoe router (HTTP or NNG): TTFT, TPOT, ITL, E2E latency (mean, median,\n"
"  p90, p99), throughput, goodput under SLOs, errors by kind\n"
"load shape (one point, or a sweep with one result per point):\n"
"  -c, --concurrency C[,C...]  closed loop: C requests in flight (default 4)\n"
"  -r, --rate R          open loop: R requests/s ('inf': all at once)\n"
"      --rates R[,R...]  open-loop sweep, e.g. 1,2,4,inf\n"
"      --burstiness B    gamma inter-arrivals of shape B (1 = Poisson, the\n"
"                        default; < 1 burstier)\n"
"      --max-concurrency C  cap on requests in flight under open loop\n"
"                        (default: %d over HTTP, %d over NNG)\n"
"  -N, --requests N      requests per point (default 64)\n"
"  -d, --duration S      send nothing after S seconds of a point (default 300)\n"
"      --repeat N        run each point N times: mean and 95%% confidence\n"
"                        interval (default 1)\n"
"      --warmup N        N requests before the first point, not measured\n"
"dataset:\n"
"      --dataset random|prompts|sharegpt  (default random)\n"
"      --dataset-path F  the prompts file (one per line) or ShareGPT JSON\n"
"      --prompt-file F   same as --dataset prompts --dataset-path F\n"
"  -p, --input-len I     random: prompt tokens (default 32)\n"
"      --output-len O    tokens per request (random: mean; prompts: each;\n"
"                        sharegpt: instead of the reply's length); default 32\n"
"                        (--max-tokens is the same)\n"
"      --range-ratio R   random: lengths uniform in [L(1-R), L(1+R)] (0)\n"
"      --data-seed S     seed of the random dataset and arrivals (0)\n"
"request:\n"
"      --chat            /v1/chat/completions with one user turn\n"
"      --stream / --no-stream  streamed output (default; without it only E2E)\n"
"      --no-ignore-eos   let requests stop at end-of-sequence (default: ask\n"
"                        for ignore_eos, so output lengths are as asked)\n"
"      --extra-body JSON  members added to every request's JSON body (HTTP),\n"
"                        e.g. '{\"cache_prompt\":false}' for llama-server\n"
"output:\n"
"      --slo LIST        goodput objectives, e.g. ttft=500ms,tpot=50ms,e2e=5s\n"
"                        (--goodput is the same; bare numbers are ms;\n"
"                        default " DEFAULT_SLO "; 'none': no goodput)\n"
"      --json FILE       the results as JSON into FILE (tables still on\n"
"                        stdout); '-': JSON alone on stdout\n"
"      --save-detailed   per-request arrays in the JSON (ttfts, itls, ...)\n"
"      --stats-interval S  sample the server's /v1/stats every S s into the\n"
"                        JSON (per-worker load over time)\n"
"      --stats-url URL   where /v1/stats is (default: the server's, over HTTP)\n"
"      --label TEXT      a name for this run in the JSON\n"
"  -q, --quiet           no progress bar or progress lines\n"
"server and sampling (as in epmoe generate, but --timeout is 60 s unless\n"
"EPMOE_TIMEOUT says otherwise):\n",
	        LG_MAX_INFLIGHT_HTTP, LG_MAX_INFLIGHT_NNG);
	cli_gen_help(f);
	fprintf(f, "  (default server: %s)\n", EPMOE_DEFAULT_SERVER);
}

/* Parses argv into o.  Returns 0, 2 (usage error, printed) or -1 (help
 * printed). */
static int
parse(struct opts *o, int argc, char **argv)
{
	static const struct option lopts[] = {
		CLI_GEN_OPTIONS,
		{ "concurrency", required_argument, NULL, OPT_CONCURRENCY },
		{ "rate", required_argument, NULL, OPT_RATE },
		{ "request-rate", required_argument, NULL, OPT_RATE },
		{ "rates", required_argument, NULL, OPT_RATES },
		{ "burstiness", required_argument, NULL, OPT_BURSTINESS },
		{ "max-concurrency", required_argument, NULL, OPT_MAX_CONCURRENCY },
		{ "requests", required_argument, NULL, OPT_REQUESTS },
		{ "num-prompts", required_argument, NULL, OPT_REQUESTS },
		{ "duration", required_argument, NULL, OPT_DURATION },
		{ "dataset", required_argument, NULL, OPT_DATASET },
		{ "dataset-path", required_argument, NULL, OPT_DATASET_PATH },
		{ "prompt-file", required_argument, NULL, OPT_PROMPT_FILE },
		{ "input-len", required_argument, NULL, OPT_INPUT_LEN },
		{ "prompt-tokens", required_argument, NULL, OPT_INPUT_LEN },
		{ "output-len", required_argument, NULL, OPT_OUTPUT_LEN },
		{ "range-ratio", required_argument, NULL, OPT_RANGE_RATIO },
		{ "data-seed", required_argument, NULL, OPT_DATA_SEED },
		{ "chat", no_argument, NULL, OPT_CHAT },
		{ "stream", no_argument, NULL, OPT_STREAM },
		{ "no-stream", no_argument, NULL, OPT_NO_STREAM },
		{ "no-ignore-eos", no_argument, NULL, OPT_NO_IGNORE_EOS },
		{ "extra-body", required_argument, NULL, OPT_EXTRA_BODY },
		{ "slo", required_argument, NULL, OPT_SLO },
		{ "goodput", required_argument, NULL, OPT_SLO },
		{ "repeat", required_argument, NULL, OPT_REPEAT },
		{ "warmup", required_argument, NULL, OPT_WARMUP },
		{ "json", required_argument, NULL, OPT_JSON },
		{ "save-detailed", no_argument, NULL, OPT_SAVE_DETAILED },
		{ "stats-url", required_argument, NULL, OPT_STATS_URL },
		{ "stats-interval", required_argument, NULL, OPT_STATS_INTERVAL },
		{ "label", required_argument, NULL, OPT_LABEL },
		{ "quiet", no_argument, NULL, OPT_QUIET },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	double d, v[MAX_POINTS];
	long l;
	size_t n;
	int c, rc;
	char err[160];

	optind = 1;
	while ((c = getopt_long(argc, argv, "s:m:n:c:r:N:p:d:qh", lopts,
	        NULL)) != -1) {
		switch (c) {
		case 'c':
		case OPT_CONCURRENCY:
			if (parse_list(optarg, v, MAX_POINTS, &n, 0) != 0)
				return cli_bad(CMD, "--concurrency", "expects C or C,C,... "
				        "(integers 1..1024, at most 64)");
			for (size_t i = 0; i < n; i++) {
				if (v[i] != floor(v[i]) || v[i] < 1 ||
				        v[i] > LG_MAX_INFLIGHT_HTTP)
					return cli_bad(CMD, "--concurrency", "expects integers "
					        "1..1024");
				o->conc[i] = (long)v[i];
			}
			o->n_conc = n;
			break;
		case 'r':
		case OPT_RATE:
			if (parse_list(optarg, v, 1, &n, 1) != 0)
				return cli_bad(CMD, "--rate", "expects requests/s > 0 or inf");
			o->rates[0] = v[0];
			o->n_rates = 1;
			o->rate_single = 1;
			break;
		case OPT_RATES:
			if (parse_list(optarg, o->rates, MAX_POINTS, &o->n_rates, 1) != 0)
				return cli_bad(CMD, "--rates", "expects R,R,... (requests/s "
				        "> 0 or inf; at most 64)");
			o->rate_single = 0;
			break;
		case OPT_BURSTINESS:
			if (cli_float(optarg, 1e-3, 1e3, &o->burstiness) != 0)
				return cli_bad(CMD, "--burstiness", "expects a number in "
				        "[0.001, 1000]");
			break;
		case OPT_MAX_CONCURRENCY:
			if (cli_long(optarg, 1, LG_MAX_INFLIGHT_HTTP, &o->max_concurrency))
				return cli_bad(CMD, "--max-concurrency", "expects 1..1024");
			break;
		case 'N':
		case OPT_REQUESTS:
			if (cli_long(optarg, 1, MAX_REQUESTS, &o->requests))
				return cli_bad(CMD, "--requests", "expects 1..1000000");
			break;
		case 'd':
		case OPT_DURATION:
			if (cli_float(optarg, 0.001, 86400, &o->duration_s))
				return cli_bad(CMD, "--duration", "expects seconds in "
				        "(0, 86400]");
			break;
		case OPT_DATASET:
			if (lg_data_kind_parse(optarg, &o->kind) != 0)
				return cli_bad(CMD, "--dataset", "expects random, prompts or "
				        "sharegpt");
			o->kind_given = 1;
			break;
		case OPT_DATASET_PATH: o->path = optarg; break;
		case OPT_PROMPT_FILE:
			o->path = optarg;
			o->kind = LG_DATA_PROMPTS;
			o->kind_given = 1;
			break;
		case 'p':
		case OPT_INPUT_LEN:
			if (cli_long(optarg, 1, 1 << 20, &o->input_len))
				return cli_bad(CMD, "--input-len", "expects 1..1048576");
			break;
		case OPT_OUTPUT_LEN:
			if (cli_long(optarg, 1, 1 << 20, &o->output_len))
				return cli_bad(CMD, "--output-len", "expects 1..1048576");
			o->output_len_given = 1;
			break;
		case OPT_RANGE_RATIO:
			if (cli_float(optarg, 0, 0.999, &o->range_ratio))
				return cli_bad(CMD, "--range-ratio", "expects a number in "
				        "[0, 1)");
			break;
		case OPT_DATA_SEED:
			if (cli_long(optarg, 0, 0x7fffffffffffffffL, &l))
				return cli_bad(CMD, "--data-seed", "expects an integer >= 0");
			o->data_seed = (unsigned long long)l;
			break;
		case OPT_CHAT: o->chat = 1; break;
		case OPT_STREAM: o->g.p.stream = 1; break;
		case OPT_NO_STREAM: o->g.p.stream = 0; break;
		case OPT_NO_IGNORE_EOS: o->g.p.ignore_eos = 0; break;
		case OPT_EXTRA_BODY: {
			cJSON *x = cJSON_Parse(optarg);
			int ok = cJSON_IsObject(x);
			cJSON_Delete(x);
			if (!ok)
				return cli_bad(CMD, "--extra-body", "expects a JSON object, "
				        "e.g. '{\"cache_prompt\":false}'");
			o->extra_body = optarg;
			break;
		}
		case OPT_SLO:
			o->slo_default = 0;
			if (strcmp(optarg, "none") == 0)
				o->slo = (struct lg_slo){ NAN, NAN, NAN };
			else if (lg_slo_parse(optarg, &o->slo, err, sizeof(err)) != 0)
				return cli_bad(CMD, "--slo", err);
			break;
		case OPT_REPEAT:
			if (cli_long(optarg, 1, MAX_REPEAT, &o->repeat))
				return cli_bad(CMD, "--repeat", "expects 1..100");
			break;
		case OPT_WARMUP:
			if (cli_long(optarg, 0, 10000, &o->warmup))
				return cli_bad(CMD, "--warmup", "expects 0..10000");
			break;
		case OPT_JSON:
			o->json = 1;
			o->json_path = strcmp(optarg, "-") == 0 ? NULL : optarg;
			break;
		case OPT_SAVE_DETAILED: o->detailed = 1; break;
		case OPT_STATS_URL: o->stats_url = optarg; break;
		case OPT_STATS_INTERVAL:
			if (cli_float(optarg, 0.05, 3600, &d))
				return cli_bad(CMD, "--stats-interval", "expects seconds in "
				        "[0.05, 3600]");
			o->stats_interval = d;
			break;
		case OPT_LABEL: o->label = optarg; break;
		case 'q':
		case OPT_QUIET: o->quiet = 1; break;
		case 'h': usage(stdout); return -1;
		case '?': usage(stderr); return 2;
		default:
			if ((rc = cli_gen_opt(&o->g, CMD, c, optarg)) != 0) {
				if (rc == 1)
					usage(stderr);
				return 2;
			}
		}
	}
	if (optind != argc) {
		fprintf(stderr, "epmoe " CMD ": unexpected argument '%s'\n",
		        argv[optind]);
		return 2;
	}
	if (o->n_conc > 0 && o->n_rates > 0)
		return cli_bad(CMD, "--concurrency", "is closed loop: with --rate or "
		        "--rates use --max-concurrency for a cap");
	if (o->n_conc > 0 && o->max_concurrency > 0)
		return cli_bad(CMD, "--max-concurrency", "applies to open loop "
		        "(--rate, --rates); --concurrency is the closed-loop count");
	if (o->kind != LG_DATA_RANDOM && o->path == NULL)
		return cli_bad(CMD, "--dataset", "prompts and sharegpt need "
		        "--dataset-path FILE");
	if (o->kind == LG_DATA_RANDOM && o->path != NULL && o->kind_given)
		return cli_bad(CMD, "--dataset-path", "is for the prompts and sharegpt "
		        "datasets");
	if (o->kind == LG_DATA_RANDOM && o->path != NULL)
		o->kind = LG_DATA_PROMPTS; /* a path alone: a prompts file */
	/* --max-tokens is --output-len */
	if (!o->output_len_given && o->g.p.max_tokens > 0) {
		o->output_len = o->g.p.max_tokens;
		o->output_len_given = 1;
	} else if (o->g.p.max_tokens == 0) {
		return cli_bad(CMD, "--max-tokens", "expects >= 1 for a load test");
	}
	o->g.p.max_tokens = -1;
	return 0;
}

/* ---- progress ---- */

struct prog {
	int tty, quiet;
	int point, n_points;
	long run, n_runs;
	double sched_end;       /* when the last request is due */
	char label[128];
};

static void
on_progress(void *ud, const struct lg_progress *p, int final)
{
	struct prog *g = ud;
	char bar[31];
	long fill;
	double eta;

	if (g->quiet)
		return;
	if (!g->tty) {
		if (!final)
			return;
		fprintf(stderr, "epmoe " CMD ": %s", g->label);
		if (g->n_runs > 1)
			fprintf(stderr, " (run %ld of %ld)", g->run + 1, g->n_runs);
		fprintf(stderr, ": %ld of %ld done, %ld failed, %.1f s\n", p->done,
		        p->n, p->errors, p->elapsed);
		return;
	}
	fill = p->n > 0 ? p->done * 30 / p->n : 30;
	for (int i = 0; i < 30; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[30] = '\0';
	eta = p->done > 0 ? p->elapsed * (double)(p->n - p->done) / p->done : NAN;
	if (g->sched_end - p->elapsed > eta || isnan(eta))
		eta = g->sched_end > p->elapsed ? g->sched_end - p->elapsed : eta;
	fprintf(stderr, "\r[%d/%d", g->point + 1, g->n_points);
	if (g->n_runs > 1)
		fprintf(stderr, " run %ld/%ld", g->run + 1, g->n_runs);
	fprintf(stderr, "] %.30s [%s] %ld/%ld %5.0fs ", g->label, bar, p->done,
	        p->n, p->elapsed);
	if (!final && isfinite(eta))
		fprintf(stderr, "ETA %4.0fs ", eta);
	else
		fprintf(stderr, "         ");
	fprintf(stderr, "in flight %ld, failed %ld \033[K", p->inflight, p->errors);
	if (final)
		fprintf(stderr, "\r\033[K");
	fflush(stderr);
}

/* ---- server probing ---- */

struct counter {
	struct epmoe_client *c;
	int broken;             /* the server has no tokenizer endpoint */
};

static long
count_tokens(void *ud, const char *text)
{
	struct counter *k = ud;
	uint32_t *t;
	size_t n;

	if (k->broken || k->c == NULL)
		return -1;
	if (epmoe_tokenize(k->c, text, 0, &t, &n) != 0) {
		k->broken = 1;
		return -1;
	}
	free(t);
	return (long)n;
}

/* Tokens per word of the synthetic text by the server's tokenizer (1.3
 * when it has none). */
static double
tokens_per_word(struct counter *k)
{
	const uint32_t n = 200;
	char *sample = lg_words(1, 0, n);
	long t = sample ? count_tokens(k, sample) : -1;

	free(sample);
	return t > 0 ? (double)t / n : 1.3;
}

/* Checks that the server serves, and finds the model id.  Returns 0 or 1
 * after printing why not. */
static int
probe(struct epmoe_client *c, const char *given_model, char **model)
{
	struct epmoe_health h;
	char **ids;
	size_t n_ids;

	/* epmoe and llama-server answer /health; a server that does not (a
	 * 404, an empty body) is still fine if it lists its models */
	if (epmoe_health(c, &h) == 0 && !h.ok && strcmp(h.status,
	        "unavailable") != 0) {
		fprintf(stderr, "epmoe " CMD ": the server is not ready (%s)\n",
		        h.status);
		return 1;
	}
	if (epmoe_models(c, &ids, &n_ids) != 0) {
		/* a server without /v1/models will do when --model names one */
		if (given_model != NULL && epmoe_client_error(c)->status != 0) {
			*model = strdup(given_model);
			return *model == NULL ? 1 : 0;
		}
		cli_gen_print_error(CMD, c);
		return 1;
	}
	if (given_model != NULL)
		*model = strdup(given_model);
	else if (n_ids > 0)
		*model = strdup(ids[0]);
	else
		*model = NULL;
	epmoe_strv_free(ids, n_ids);
	if (given_model == NULL && *model == NULL) {
		fprintf(stderr, "epmoe " CMD ": the server lists no model; give "
		        "--model\n");
		return 1;
	}
	return *model == NULL ? 1 : 0;
}

/* ---- the JSON document ---- */

static cJSON *
doc_new(const struct opts *o, const char *model, const struct lg_dataset *ds,
        double tpw, enum epmoe_transport tr)
{
	cJSON *j = cJSON_CreateObject(), *x;
	char date[32];
	time_t now = time(NULL);
	struct tm tm;

	if (j == NULL)
		return NULL;
	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
	cJSON_AddStringToObject(j, "epmoe_bench", "server");
	cJSON_AddNumberToObject(j, "schema_version", 1);
	cJSON_AddStringToObject(j, "date", date);
	cJSON_AddStringToObject(j, "git_commit", EPMOE_GIT_COMMIT);
	if (o->label)
		cJSON_AddStringToObject(j, "label", o->label);
	cJSON_AddStringToObject(j, "backend", tr == EPMOE_TRANSPORT_HTTP ?
	        (o->chat ? "openai-chat" : "openai") : "epmoe-nng");
	cJSON_AddStringToObject(j, "base_url", o->g.server);
	cJSON_AddStringToObject(j, "endpoint", tr != EPMOE_TRANSPORT_HTTP ? "" :
	        o->chat ? "/v1/chat/completions" : "/v1/completions");
	cJSON_AddStringToObject(j, "model_id", model);
	lg_machine_json(j);
	x = cJSON_AddObjectToObject(j, "dataset");
	if (x != NULL) {
		cJSON_AddStringToObject(x, "name", lg_data_kind_name(o->kind));
		if (o->path)
			cJSON_AddStringToObject(x, "path", o->path);
		cJSON_AddNumberToObject(x, "items", (double)ds->n);
		cJSON_AddNumberToObject(x, "skipped", (double)ds->skipped);
		if (o->kind == LG_DATA_RANDOM) {
			cJSON_AddNumberToObject(x, "input_len", (double)o->input_len);
			cJSON_AddNumberToObject(x, "range_ratio", o->range_ratio);
		}
		if (o->kind != LG_DATA_SHAREGPT || o->output_len_given)
			cJSON_AddNumberToObject(x, "output_len", (double)o->output_len);
		cJSON_AddNumberToObject(x, "tokens_per_word", tpw);
	}
	x = cJSON_AddObjectToObject(j, "settings");
	if (x != NULL) {
		cJSON_AddBoolToObject(x, "stream", o->g.p.stream);
		cJSON_AddBoolToObject(x, "ignore_eos", o->g.p.ignore_eos);
		cJSON_AddNumberToObject(x, "data_seed", (double)o->data_seed);
		cJSON_AddNumberToObject(x, "duration_limit_s", o->duration_s);
		cJSON_AddNumberToObject(x, "timeout_s", o->g.timeout_s);
		cJSON_AddNumberToObject(x, "repeat", (double)o->repeat);
		cJSON_AddNumberToObject(x, "warmup", (double)o->warmup);
		if (o->g.p.routing)
			cJSON_AddStringToObject(x, "routing", o->g.p.routing);
	}
	x = cJSON_AddObjectToObject(j, "slo");
	if (x != NULL) {
		if (!isnan(o->slo.ttft))
			cJSON_AddNumberToObject(x, "ttft_ms", o->slo.ttft * 1e3);
		if (!isnan(o->slo.tpot))
			cJSON_AddNumberToObject(x, "tpot_ms", o->slo.tpot * 1e3);
		if (!isnan(o->slo.e2el))
			cJSON_AddNumberToObject(x, "e2el_ms", o->slo.e2el * 1e3);
		cJSON_AddBoolToObject(x, "default", o->slo_default);
	}
	if (cJSON_AddArrayToObject(j, "points") == NULL) {
		cJSON_Delete(j);
		return NULL;
	}
	return j;
}

static int
doc_write(const cJSON *doc, const char *path)
{
	char *s = cJSON_PrintUnformatted(doc);
	char tmp[4096];
	FILE *f;
	int ok;

	if (s == NULL)
		return EPMOE_ENOMEM;
	if (path == NULL) {
		ok = printf("%s\n", s) >= 0;
		free(s);
		return ok ? 0 : EPMOE_EIO;
	}
	/* write then rename: a reader never sees half a file */
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	ok = f != NULL && fprintf(f, "%s\n", s) >= 0;
	if (f != NULL && fclose(f) != 0)
		ok = 0;
	free(s);
	if (!ok || rename(tmp, path) != 0) {
		fprintf(stderr, "epmoe " CMD ": cannot write %s\n", path);
		remove(tmp);
		return EPMOE_EIO;
	}
	return 0;
}

/* ---- running ---- */

struct env {
	const struct opts *o;
	enum epmoe_transport tr;
	const char *model;
	const struct lg_dataset *ds;
	const char *stats_url;
};

static void
drive_cfg(const struct env *e, struct lg_drive_cfg *dc, const double *sched,
        long n, long cap)
{
	memset(dc, 0, sizeof(*dc));
	dc->server = e->o->g.server;
	dc->tr = e->tr;
	dc->chat = e->o->chat;
	dc->extra_body = e->o->extra_body;
	dc->p = e->o->g.p;
	dc->p.model = e->model;
	dc->data = e->ds;
	dc->sched = sched;
	dc->n = n;
	dc->max_inflight = cap;
	dc->duration_s = e->o->duration_s;
	dc->timeout_s = e->o->g.timeout_s;
	dc->api_key = e->o->g.api_key;
}

static int
warm_up(const struct env *e, long n, long cap)
{
	struct lg_drive_cfg dc;
	struct lg_rec *recs = calloc((size_t)n, sizeof(*recs));
	double *sched = calloc((size_t)n, sizeof(*sched));
	long failed = 0;
	int rc = EPMOE_ENOMEM;

	if (recs != NULL && sched != NULL) {
		drive_cfg(e, &dc, sched, n, cap < n ? cap : n);
		rc = lg_drive(&dc, recs, NULL);
		for (long i = 0; i < n; i++) {
			failed += recs[i].started && !recs[i].ok;
			lg_rec_fini(&recs[i]);
		}
		if (!e->o->quiet)
			fprintf(stderr, "epmoe " CMD ": warm-up: %ld requests, %ld "
			        "failed\n", n, failed);
	}
	free(recs);
	free(sched);
	return rc;
}

/* One run of point p: fills *res and *obj (the run's JSON). */
static int
run_once(const struct env *e, const struct lg_point *p, uint64_t seed,
        struct prog *pg, struct lg_result *res, cJSON **obj)
{
	struct lg_drive_cfg dc;
	struct lg_arrival a;
	struct lg_rec *recs = calloc((size_t)p->n, sizeof(*recs));
	double *sched = calloc((size_t)p->n, sizeof(*sched));
	cJSON *samples = NULL;
	int rc = EPMOE_ENOMEM;

	*obj = NULL;
	if (recs == NULL || sched == NULL)
		goto out;
	if ((rc = lg_arrival_init(&a, p->rate, p->burstiness, seed)) != 0)
		goto out;
	lg_arrival_schedule(&a, sched, (size_t)p->n);
	pg->sched_end = sched[p->n - 1];
	drive_cfg(e, &dc, sched, p->n, p->max_inflight);
	dc.progress = on_progress;
	dc.progress_ud = pg;
	if (e->stats_url != NULL) {
		dc.stats_url = e->stats_url;
		dc.stats_interval_s = e->o->stats_interval;
	}
	rc = lg_drive(&dc, recs, e->stats_url ? &samples : NULL);
	if (rc == EPMOE_ETIMEDOUT)
		fprintf(stderr, "epmoe " CMD ": the point hit its time limit; "
		        "requests still running count as \"aborted\"\n");
	else if (rc != 0)
		goto out;
	if ((rc = lg_summarize(recs, (size_t)p->n, e->o->g.p.stream, &e->o->slo,
	        res)) != 0)
		goto out;
	if ((*obj = cJSON_CreateObject()) == NULL ||
	        (rc = lg_result_json(res, recs, (size_t)p->n, e->o->detailed,
	        *obj)) != 0) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	if (e->stats_url != NULL) {
		if (samples != NULL)
			cJSON_AddItemToObject(*obj, "server_stats", samples);
		else
			cJSON_AddNullToObject(*obj, "server_stats");
		samples = NULL;
	}
out:
	cJSON_Delete(samples);
	if (rc != 0) {
		cJSON_Delete(*obj);
		*obj = NULL;
	}
	for (long i = 0; recs != NULL && i < p->n; i++)
		lg_rec_fini(&recs[i]);
	free(recs);
	free(sched);
	return rc;
}

/* Builds the points of the sweep. */
static size_t
make_points(const struct opts *o, struct lg_point *pts)
{
	long cap_open = o->max_concurrency > 0 ? o->max_concurrency :
	        LG_MAX_INFLIGHT_HTTP;
	size_t n = 0;

	if (o->n_rates > 0) {
		for (size_t i = 0; i < o->n_rates; i++) {
			pts[n].rate = o->rates[i];
			pts[n].burstiness = o->burstiness;
			pts[n].max_inflight = cap_open;
			pts[n].cap_given = o->max_concurrency > 0;
			pts[n].closed = 0;
			pts[n].n = o->requests;
			n++;
		}
		return n;
	}
	if (o->n_conc == 0) {
		pts[0] = (struct lg_point){ INFINITY, 1, 4, 0, 1, o->requests };
		return 1;
	}
	for (size_t i = 0; i < o->n_conc; i++)
		pts[n++] = (struct lg_point){ INFINITY, 1, o->conc[i], 0, 1,
			o->requests };
	return n;
}

int
bench_server(int argc, char **argv)
{
	struct opts o;
	struct lg_point pts[MAX_POINTS];
	struct lg_result *res[MAX_POINTS] = { 0 };
	struct lg_data_cfg dcfg;
	struct lg_dataset ds = { 0 };
	struct counter k = { 0 };
	struct env e;
	struct prog pg;
	cJSON *doc = NULL, *points;
	char *model = NULL, err[512], stats_url[2100];
	size_t n_points;
	long total_ok = 0;
	double tpw;
	int rc;

	memset(&o, 0, sizeof(o));
	if ((rc = cli_gen_init(&o.g, CMD)) != 0)
		return rc;
	o.g.p.max_tokens = -1;
	o.g.p.stream = 1;
	o.g.p.ignore_eos = 1;
	if (cli_env("EPMOE_TIMEOUT", NULL) == NULL)
		o.g.timeout_s = 60;
	o.burstiness = 1;
	o.requests = 64;
	o.duration_s = 300;
	o.input_len = 32;
	o.output_len = 32;
	o.repeat = 1;
	if (lg_slo_parse(DEFAULT_SLO, &o.slo, err, sizeof(err)) != 0)
		return 1;
	o.slo_default = 1;
	if ((rc = parse(&o, argc, argv)) != 0)
		return rc < 0 ? 0 : rc;
	memset(&e, 0, sizeof(e));
	e.o = &o;
	if (epmoe_url_transport(o.g.server, &e.tr) != 0)
		return cli_bad(CMD, "--server", "expects http://HOST:PORT or an NNG URL");
	if (o.extra_body != NULL && e.tr != EPMOE_TRANSPORT_HTTP)
		return cli_bad(CMD, "--extra-body", "is for HTTP servers");
	n_points = make_points(&o, pts);
	for (size_t i = 0; i < n_points; i++)
		if (e.tr != EPMOE_TRANSPORT_HTTP && pts[i].max_inflight >
		        LG_MAX_INFLIGHT_NNG) {
			if (pts[i].closed || pts[i].cap_given)
				return cli_bad(CMD, "--concurrency", "over NNG the cap is 256 "
				        "in flight");
			pts[i].max_inflight = LG_MAX_INFLIGHT_NNG;
		}
	{
		/* up to 1024 connections in flight: lift the soft limit on open
		 * files to the hard one */
		struct rlimit rl;
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	if ((rc = cli_gen_connect(&o.g, CMD, &k.c)) != 0)
		return rc;
	if (probe(k.c, o.g.p.model, &model) != 0) {
		rc = 1;
		goto out;
	}
	/* the dataset, with the server's tokenizer when it has one */
	tpw = tokens_per_word(&k);
	memset(&dcfg, 0, sizeof(dcfg));
	dcfg.kind = o.kind;
	dcfg.path = o.path;
	dcfg.n = (size_t)(o.requests < LG_DATA_MAX_ITEMS ? o.requests :
	        LG_DATA_MAX_ITEMS);
	dcfg.input_len = (uint32_t)o.input_len;
	dcfg.output_len = (uint32_t)o.output_len;
	dcfg.output_len_set = o.output_len_given;
	dcfg.range_ratio = o.range_ratio;
	dcfg.seed = o.data_seed;
	dcfg.tokens_per_word = tpw;
	dcfg.count = count_tokens;
	dcfg.count_ud = &k;
	if ((rc = lg_dataset_load(&dcfg, &ds, err, sizeof(err))) != 0) {
		fprintf(stderr, "epmoe " CMD ": %s\n", err);
		rc = 1;
		goto out;
	}
	epmoe_client_free(k.c);
	k.c = NULL;
	if (!o.quiet && ds.skipped > 0)
		fprintf(stderr, "epmoe " CMD ": dataset: %zu items, %zu conversations "
		        "skipped\n", ds.n, ds.skipped);
	e.model = model;
	e.ds = &ds;
	if (o.stats_interval > 0) {
		if (o.stats_url != NULL) {
			e.stats_url = o.stats_url;
		} else if (e.tr == EPMOE_TRANSPORT_HTTP) {
			size_t n;
			snprintf(stats_url, sizeof(stats_url) - 16, "%s", o.g.server);
			n = strlen(stats_url);
			while (n > 0 && stats_url[n - 1] == '/')
				stats_url[--n] = '\0';
			if (n >= 3 && strcmp(stats_url + n - 3, "/v1") == 0)
				stats_url[n -= 3] = '\0';
			snprintf(stats_url + n, sizeof(stats_url) - n, "/v1/stats");
			e.stats_url = stats_url;
		} else {
			fprintf(stderr, "epmoe " CMD ": --stats-interval over NNG needs "
			        "--stats-url http://.../v1/stats\n");
			rc = 2;
			goto out;
		}
	}
	if ((doc = doc_new(&o, model, &ds, tpw, e.tr)) == NULL) {
		rc = 1;
		goto out;
	}
	points = cJSON_GetObjectItemCaseSensitive(doc, "points");
	if (o.warmup > 0 && (rc = warm_up(&e, o.warmup, pts[0].max_inflight)) != 0) {
		fprintf(stderr, "epmoe " CMD ": warm-up: %s\n", epmoe_strerror(rc));
		rc = 1;
		goto out;
	}
	memset(&pg, 0, sizeof(pg));
	pg.tty = isatty(STDERR_FILENO);
	pg.quiet = o.quiet;
	pg.n_points = (int)n_points;
	pg.n_runs = o.repeat;
	for (size_t i = 0; i < n_points; i++) {
		cJSON *objs[MAX_REPEAT] = { 0 }, *pj;
		if ((res[i] = calloc((size_t)o.repeat, sizeof(*res[i]))) == NULL) {
			rc = 1;
			goto out;
		}
		pg.point = (int)i;
		lg_point_label(&pts[i], pg.label, sizeof(pg.label));
		for (long r = 0; r < o.repeat; r++) {
			pg.run = r;
			/* each run of a point draws its own arrivals */
			rc = run_once(&e, &pts[i], o.data_seed * 1000003u + (uint64_t)r,
			        &pg, &res[i][r], &objs[r]);
			if (rc != 0) {
				fprintf(stderr, "epmoe " CMD ": %s\n", epmoe_strerror(rc));
				for (long q = 0; q < r; q++)
					cJSON_Delete(objs[q]);
				rc = 1;
				goto out;
			}
			total_ok += res[i][r].completed;
		}
		if (!(o.json && o.json_path == NULL))
			lg_print_point(stdout, &pts[i], (int)i, (int)n_points, res[i],
			        (size_t)o.repeat, &o.slo);
		if ((pj = lg_point_json(&pts[i], objs, (size_t)o.repeat)) == NULL) {
			rc = 1;
			goto out;
		}
		cJSON_AddItemToArray(points, pj);
		if (o.json && o.json_path != NULL &&
		        doc_write(doc, o.json_path) != 0) {
			rc = 1;
			goto out;
		}
	}
	if (n_points > 1 && !(o.json && o.json_path == NULL))
		lg_print_summary(stdout, pts, (const struct lg_result *const *)res,
		        (size_t)o.repeat, n_points);
	if (o.json && o.json_path == NULL && doc_write(doc, NULL) != 0) {
		rc = 1;
		goto out;
	}
	/* the tool ran: failing requests are results, unless all failed */
	rc = total_ok > 0 ? 0 : 1;
	if (rc != 0)
		fprintf(stderr, "epmoe " CMD ": every request failed\n");
out:
	cJSON_Delete(doc);
	for (size_t i = 0; i < n_points && i < MAX_POINTS; i++)
		free(res[i]);
	lg_dataset_fini(&ds);
	epmoe_client_free(k.c);
	free(model);
	return rc;
}
