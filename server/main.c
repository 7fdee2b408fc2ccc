/* epmoe-router: the router daemon.  Parses the command line, starts the
 * router's core (router.c: model, experts, scheduler), the statistics
 * (stats.c) and the front ends (api.c: HTTP, nngapi.c: NNG) on one libuv
 * loop, and shuts down cleanly on SIGINT/SIGTERM. */
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "apikey.h"
#include "balance.h"
#include "envargs.h"
#include "err.h"
#include "log.h"
#include "nngapi.h"
#include "router.h"
#include "stats.h"

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe-router --model M [options]\n"
	        "Every flag can also be set by the EPMOE_* variable named with it;\n"
	        "a typed flag wins over its variable.\n"
	        "  -m, --model M            GGUF model (env EPMOE_MODEL)\n"
	        "      --model-name NAME    id served in the API (default: file name;\n"
	        "                           env EPMOE_MODEL_NAME)\n"
	        "      --local              run the experts in this process (env EPMOE_LOCAL=1)\n"
	        "  -w, --workers N          spawn N local worker processes (default 2;\n"
	        "                           env EPMOE_WORKERS)\n"
	        "      --expect-workers N   wait for N workers in all, counting remote ones\n"
	        "                           that dial --control (default: --workers;\n"
	        "                           env EPMOE_EXPECT_WORKERS)\n"
	        "      --http ADDR          HTTP API address (default 127.0.0.1:8080;\n"
	        "                           env EPMOE_HTTP)\n"
	        "      --nng URL            NNG client API, \"\" = off (default\n"
	        "                           tcp://127.0.0.1:5555; env EPMOE_NNG)\n"
	        "      --control URL        worker control endpoint (default\n"
	        "                           tcp://127.0.0.1:5556; env EPMOE_CONTROL)\n"
	        "      --experts-per-worker a,b,...  contiguous blocks of these sizes\n"
	        "                           (env EPMOE_EXPERTS_PER_WORKER)\n"
	        "      --placement FILE     explicit placement (JSON; env EPMOE_PLACEMENT)\n"
	        "      --routing P          default routing policy (default native;\n"
	        "                           env EPMOE_ROUTING)\n"
	        "  -t, --threads N          engine threads (default: all cores;\n"
	        "                           env EPMOE_THREADS)\n"
	        "  -c, --ctx N              context length per sequence (default: the\n"
	        "                           model's; env EPMOE_CTX)\n"
	        "      --kv-type T          KV cache f32 (default) or f16: half the memory,\n"
	        "                           so twice the sequences per --kv-budget-mb\n"
	        "                           (env EPMOE_KV_TYPE)\n"
	        "      --max-running N      sequences decoding at once (default 32;\n"
	        "                           env EPMOE_MAX_RUNNING)\n"
	        "      --max-waiting N      wait queue bound, 429 beyond (default 64;\n"
	        "                           env EPMOE_MAX_WAITING)\n"
	        "      --step-tokens N      token budget of one step (default 512;\n"
	        "                           env EPMOE_STEP_TOKENS)\n"
	        "      --prefill-chunk N    prompt tokens per step while other sequences\n"
	        "                           decode (default 128, 0 = the step budget;\n"
	        "                           env EPMOE_PREFILL_CHUNK)\n"
	        "      --kv-budget-mb N     KV cache budget in MiB (default 4096;\n"
	        "                           env EPMOE_KV_BUDGET_MB): running sequences\n"
	        "                           and the prefix cache together\n"
	        "      --prefix-cache on|off  reuse the KV of prompt prefixes earlier\n"
	        "                           requests computed (default on; 1/0 too;\n"
	        "                           env EPMOE_PREFIX_CACHE)\n"
	        "      --max-tokens N       default max_tokens for chat (default 256;\n"
	        "                           env EPMOE_MAX_TOKENS)\n"
	        "      --max-tokens-limit N largest max_tokens accepted (default: context;\n"
	        "                           env EPMOE_MAX_TOKENS_LIMIT)\n"
	        "      --expert-timeout-ms N  deadline of one expert batch (default 10000;\n"
	        "                           env EPMOE_EXPERT_TIMEOUT_MS)\n"
	        "      --deadline-floor-ms N  shortest adaptive batch deadline: a batch is\n"
	        "                           given max(this, --deadline-k x p99 of its worker's\n"
	        "                           recent replies) when its experts have other copies\n"
	        "                           (default 200; env EPMOE_DEADLINE_FLOOR_MS)\n"
	        "      --deadline-k N       that multiple of p99, a real number (default 3;\n"
	        "                           env EPMOE_DEADLINE_K)\n"
	        "      --hedge N            send a duplicate of a batch to another copy when it\n"
	        "                           is pending at N x p99, a real number; 0 = off\n"
	        "                           (default 0; env EPMOE_HEDGE)\n"
	        "      --replica MODE       which copy of a replicated expert serves a token\n"
	        "                           group: dynamic (least outstanding tokens, power of\n"
	        "                           two choices) or static (seeded spread); default\n"
	        "                           dynamic (env EPMOE_REPLICA)\n"
	        "      --replica-seed N     seed of the static spread (default 0;\n"
	        "                           env EPMOE_REPLICA_SEED)\n"
	        "      --heartbeat-ms N     worker report period; a worker silent for 3 periods\n"
	        "                           is fenced, for 6 it is reported hung and, if started\n"
	        "                           here, killed and restarted (default 500;\n"
	        "                           env EPMOE_HEARTBEAT_MS)\n"
	        "      --no-degraded        keep a lost worker's experts unserved until it comes\n"
	        "                           back (default: load them on live workers;\n"
	        "                           env EPMOE_NO_DEGRADED=1)\n"
	        "      --balance MODE       off|eplb|llep|all: EPLB re-placement with redundant\n"
	        "                           slots, LLEP per-step spill to copies, or both\n"
	        "                           (default all; env EPMOE_BALANCE)\n"
	        "      --eplb-interval N    steps between EPLB checks (default 64;\n"
	        "                           env EPMOE_EPLB_INTERVAL)\n"
	        "      --eplb-threshold N   re-place when worker max/mean over the window\n"
	        "                           exceeds N (default 1.10; env EPMOE_EPLB_THRESHOLD)\n"
	        "      --eplb-window N      steps of load statistics kept (default 256;\n"
	        "                           env EPMOE_EPLB_WINDOW)\n"
	        "      --redundant-slots N  extra expert slots per layer for replicas, rounded\n"
	        "                           up to whole slots per worker (default: what\n"
	        "                           the replica RAM holds; env EPMOE_REDUNDANT_SLOTS)\n"
	        "      --replica-ram-mb N   RAM for replicas over all layers, used when no\n"
	        "                           redundant slot count is given (default 0;\n"
	        "                           env EPMOE_REPLICA_RAM_MB)\n"
	        "      --replica-dtype DT   model (default: replicas are exact copies) or\n"
	        "                           q8_0 (Replicate-and-Quantize: every copy of an\n"
	        "                           expert after its first is held as Q8_0, about\n"
	        "                           half the RAM of F16; tokens served by a replica\n"
	        "                           then differ slightly; env EPMOE_REPLICA_DTYPE)\n"
	        "      --hosts N            hosts the workers are spread over, for\n"
	        "                           hierarchical EPLB (default 1; env EPMOE_HOSTS)\n"
	        "      --record-routing F   write every step's (layer, expert) token counts to F\n"
	        "                           (for epmoe bench balance; env EPMOE_RECORD_ROUTING)\n"
	        "      --elastic on|off     a worker registering beyond the starting ones gets\n"
	        "                           experts (re-planned over the live workers), and a\n"
	        "                           worker asking to drain (SIGTERM) has its experts\n"
	        "                           moved away before it goes (default on;\n"
	        "                           env EPMOE_ELASTIC)\n"
	        "      --max-workers N      worker places, for workers joining later (default\n"
	        "                           twice the expected workers with --elastic on, else\n"
	        "                           the expected; env EPMOE_MAX_WORKERS)\n"
	        "      --llep-lambda N      LLEP runs when a layer's worker max/mean > N\n"
	        "                           (default 1.3; env EPMOE_LLEP_LAMBDA)\n"
	        "      --llep-alpha N       LLEP caps a worker at N x mean (default 1.0;\n"
	        "                           env EPMOE_LLEP_ALPHA)\n"
	        "      --llep-cache N       with --balance llep: experts each worker may\n"
	        "                           borrow for LLEP to spill to when a skew\n"
	        "                           persists, least recently used dropped first\n"
	        "                           (default 2, 0 = none; env EPMOE_LLEP_CACHE)\n"
	        "      --llep-min-chunk N   smallest spilled token chunk (default 4;\n"
	        "                           env EPMOE_LLEP_MIN_CHUNK)\n"
	        "      --drain-timeout-s N  on SIGTERM, refuse new requests and finish the\n"
	        "                           running ones for up to N s, then stop (default\n"
	        "                           30, 0 = stop at once; a second signal stops at\n"
	        "                           once; env EPMOE_DRAIN_TIMEOUT_S)\n"
	        "  security:\n"
	        "      --tls-cert F         mutual TLS with the workers: this router's\n"
	        "                           certificate (PEM; deploy/mkcerts.sh makes them;\n"
	        "                           env EPMOE_TLS_CERT); with the key and the CA\n"
	        "                           the control URL is tls+tcp:// (default\n"
	        "                           tls+tcp://127.0.0.1:5556)\n"
	        "      --tls-key F          its private key (env EPMOE_TLS_KEY)\n"
	        "      --tls-ca F           the CA a worker's certificate must chain to\n"
	        "                           (env EPMOE_TLS_CA)\n"
	        "      --api-key KEY        require this key (Authorization: Bearer KEY over\n"
	        "                           HTTP, api_key over NNG); repeatable (env\n"
	        "                           EPMOE_API_KEY; prefer --api-key-file: arguments\n"
	        "                           are visible to other users)\n"
	        "      --api-key-file F     keys, one per line (env EPMOE_API_KEY_FILE)\n"
	        "      --metrics-auth       /metrics needs a key too (default: open, like\n"
	        "                           /health; env EPMOE_METRICS_AUTH=1)\n"
	        "      --http-max-connections N   open HTTP connections (default 1024); at\n"
	        "                           the cap a new one closes the oldest idle or\n"
	        "                           half-sent one (env EPMOE_HTTP_MAX_CONNECTIONS)\n"
	        "      --http-max-per-client N    connections of one client address (default\n"
	        "                           128, 0 = no cap; env EPMOE_HTTP_MAX_PER_CLIENT)\n"
	        "      --http-header-timeout-ms N request line and headers must arrive within\n"
	        "                           this (default 10000; env EPMOE_HTTP_HEADER_TIMEOUT_MS)\n"
	        "      --http-body-timeout-ms N   the body within this after the headers\n"
	        "                           (default 30000; env EPMOE_HTTP_BODY_TIMEOUT_MS)\n"
	        "      --http-idle-timeout-ms N   idle keep-alive connections are closed\n"
	        "                           after this (default 60000; env\n"
	        "                           EPMOE_HTTP_IDLE_TIMEOUT_MS)\n"
	        "      --spec SPEC          speculative pre-scheduling: off, predict (experts\n"
	        "                           predicted before each gate, hit rates in /v1/stats\n"
	        "                           and /metrics), group (experts often chosen together\n"
	        "                           share a worker; needs --affinity), cobatch (two\n"
	        "                           micro-batches in flight, split by predicted\n"
	        "                           workers), prefetch (workers page in the next\n"
	        "                           layer's predicted experts: madvise WILLNEED), all,\n"
	        "                           or parts joined by '+' (default off; env\n"
	        "                           EPMOE_SPEC)\n"
	        "      --affinity FILE      affinity model from epmoe calibrate (default: learnt\n"
	        "                           online from scratch; env EPMOE_AFFINITY)\n"
	        "      --log-json           log one JSON object per line (env EPMOE_LOG_JSON=1)\n"
	        "      --log-level L        debug|info|warn|error (default info;\n"
	        "                           env EPMOE_LOG_LEVEL)\n"
	        "      --print-config       print the arguments as parsed, each with its\n"
	        "                           source (a flag or an EPMOE_* variable), and exit\n"
	        "                           (env EPMOE_PRINT_CONFIG=1)\n"
	        "  -h, --help               this help\n");
}

/* Flag <- variable table: every flag of parse_args has a row. */
static const struct envarg env_table[] = {
	{ "model", "EPMOE_MODEL", false, false },
	{ "model-name", "EPMOE_MODEL_NAME", false, false },
	{ "local", "EPMOE_LOCAL", true, false },
	{ "workers", "EPMOE_WORKERS", false, false },
	{ "expect-workers", "EPMOE_EXPECT_WORKERS", false, false },
	{ "http", "EPMOE_HTTP", false, false },
	{ "nng", "EPMOE_NNG", false, true },
	{ "control", "EPMOE_CONTROL", false, false },
	{ "experts-per-worker", "EPMOE_EXPERTS_PER_WORKER", false, false },
	{ "placement", "EPMOE_PLACEMENT", false, false },
	{ "routing", "EPMOE_ROUTING", false, false },
	{ "threads", "EPMOE_THREADS", false, false },
	{ "ctx", "EPMOE_CTX", false, false },
	{ "kv-type", "EPMOE_KV_TYPE", false, false },
	{ "max-running", "EPMOE_MAX_RUNNING", false, false },
	{ "max-waiting", "EPMOE_MAX_WAITING", false, false },
	{ "step-tokens", "EPMOE_STEP_TOKENS", false, false },
	{ "kv-budget-mb", "EPMOE_KV_BUDGET_MB", false, false },
	{ "prefix-cache", "EPMOE_PREFIX_CACHE", false, false },
	{ "prefill-chunk", "EPMOE_PREFILL_CHUNK", false, false },
	{ "max-tokens", "EPMOE_MAX_TOKENS", false, false },
	{ "max-tokens-limit", "EPMOE_MAX_TOKENS_LIMIT", false, false },
	{ "expert-timeout-ms", "EPMOE_EXPERT_TIMEOUT_MS", false, false },
	{ "deadline-floor-ms", "EPMOE_DEADLINE_FLOOR_MS", false, false },
	{ "deadline-k", "EPMOE_DEADLINE_K", false, false },
	{ "hedge", "EPMOE_HEDGE", false, false },
	{ "replica", "EPMOE_REPLICA", false, false },
	{ "replica-seed", "EPMOE_REPLICA_SEED", false, false },
	{ "heartbeat-ms", "EPMOE_HEARTBEAT_MS", false, false },
	{ "no-degraded", "EPMOE_NO_DEGRADED", true, false },
	{ "balance", "EPMOE_BALANCE", false, false },
	{ "eplb-interval", "EPMOE_EPLB_INTERVAL", false, false },
	{ "eplb-threshold", "EPMOE_EPLB_THRESHOLD", false, false },
	{ "eplb-window", "EPMOE_EPLB_WINDOW", false, false },
	{ "redundant-slots", "EPMOE_REDUNDANT_SLOTS", false, false },
	{ "replica-ram-mb", "EPMOE_REPLICA_RAM_MB", false, false },
	{ "replica-dtype", "EPMOE_REPLICA_DTYPE", false, false },
	{ "llep-cache", "EPMOE_LLEP_CACHE", false, false },
	{ "hosts", "EPMOE_HOSTS", false, false },
	{ "llep-lambda", "EPMOE_LLEP_LAMBDA", false, false },
	{ "record-routing", "EPMOE_RECORD_ROUTING", false, false },
	{ "llep-alpha", "EPMOE_LLEP_ALPHA", false, false },
	{ "llep-min-chunk", "EPMOE_LLEP_MIN_CHUNK", false, false },
	{ "elastic", "EPMOE_ELASTIC", false, false },
	{ "max-workers", "EPMOE_MAX_WORKERS", false, false },
	{ "drain-timeout-s", "EPMOE_DRAIN_TIMEOUT_S", false, false },
	{ "tls-cert", "EPMOE_TLS_CERT", false, false },
	{ "tls-key", "EPMOE_TLS_KEY", false, false },
	{ "tls-ca", "EPMOE_TLS_CA", false, false },
	{ "api-key", "EPMOE_API_KEY", false, false },
	{ "api-key-file", "EPMOE_API_KEY_FILE", false, false },
	{ "metrics-auth", "EPMOE_METRICS_AUTH", true, false },
	{ "http-max-connections", "EPMOE_HTTP_MAX_CONNECTIONS", false, false },
	{ "http-max-per-client", "EPMOE_HTTP_MAX_PER_CLIENT", false, false },
	{ "http-header-timeout-ms", "EPMOE_HTTP_HEADER_TIMEOUT_MS", false, false },
	{ "http-body-timeout-ms", "EPMOE_HTTP_BODY_TIMEOUT_MS", false, false },
	{ "http-idle-timeout-ms", "EPMOE_HTTP_IDLE_TIMEOUT_MS", false, false },
	{ "spec", "EPMOE_SPEC", false, false },
	{ "affinity", "EPMOE_AFFINITY", false, false },
	{ "log-json", "EPMOE_LOG_JSON", true, false },
	{ "log-level", "EPMOE_LOG_LEVEL", false, false },
	{ "print-config", "EPMOE_PRINT_CONFIG", true, false },
};

/* Says whether the prefix cache serves the default routing policy:
 * policies that route whole prompts bypass it. */
static void
log_prefix_cache(struct router *r)
{
	enum route_kind k = route_policy_cfg(engine_policy(r->engine))->kind;

	if (!r->cfg.sched.prefix_cache)
		log_info("prefix cache off");
	else if (k == ROUTE_EXPERT_CHOICE || k == ROUTE_USMOE)
		log_info("prefix cache on, but routing %s routes whole prompts: its requests "
		         "bypass the cache (per-token policies chosen per request use it)",
		        route_kind_name(k));
	else
		log_info("prefix cache on (blocks of %u tokens, within the KV budget)",
		        r->cfg.sched.block_tokens);
}

/* The arguments being parsed, to name a bad value's variable. */
static const struct envargs *cur_args;

static int
num(const char *opt, const char *s, long lo, long hi, long *out)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
		const char *src = cur_args ? envargs_source(cur_args, optind - 1) : NULL;
		fprintf(stderr, "epmoe-router: %s%s%s%s expects an integer in %ld..%ld, got '%s'\n",
		        opt, src ? " (from " : "", src ? src : "", src ? ")" : "", lo, hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

/* The keys of --api-key and --api-key-file, gathered while parsing. */
struct key_args {
	const char *keys[64];
	int n_keys;
	const char *files[8];
	int n_files;
};

static int
numf(const char *opt, const char *s, double lo, double hi, double *out)
{
	char *end;
	double v = strtod(s, &end);
	if (*s == '\0' || *end != '\0' || !(v >= lo && v <= hi)) {
		const char *src = cur_args ? envargs_source(cur_args, optind - 1) : NULL;
		fprintf(stderr, "epmoe-router: %s%s%s%s expects a number in %g..%g, got '%s'\n",
		        opt, src ? " (from " : "", src ? src : "", src ? ")" : "", lo, hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

static int
parse_args(int argc, char **argv, struct router_cfg *c, bool *print,
        struct key_args *ka)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "model-name", required_argument, NULL, 'N' },
		{ "local", no_argument, NULL, 'L' },
		{ "workers", required_argument, NULL, 'w' },
		{ "expect-workers", required_argument, NULL, 'X' },
		{ "http", required_argument, NULL, 'H' },
		{ "nng", required_argument, NULL, 'n' },
		{ "control", required_argument, NULL, 'C' },
		{ "experts-per-worker", required_argument, NULL, 'E' },
		{ "placement", required_argument, NULL, 'P' },
		{ "routing", required_argument, NULL, 'r' },
		{ "threads", required_argument, NULL, 't' },
		{ "ctx", required_argument, NULL, 'c' },
		{ "kv-type", required_argument, NULL, 'V' },
		{ "max-running", required_argument, NULL, 'R' },
		{ "max-waiting", required_argument, NULL, 'W' },
		{ "step-tokens", required_argument, NULL, 'S' },
		{ "kv-budget-mb", required_argument, NULL, 'K' },
		{ "prefix-cache", required_argument, NULL, 'Q' },
		{ "prefill-chunk", required_argument, NULL, 'F' },
		{ "max-tokens", required_argument, NULL, 'M' },
		{ "max-tokens-limit", required_argument, NULL, 'T' },
		{ "expert-timeout-ms", required_argument, NULL, 'D' },
		{ "deadline-floor-ms", required_argument, NULL, 1000 },
		{ "deadline-k", required_argument, NULL, 1001 },
		{ "hedge", required_argument, NULL, 1002 },
		{ "replica", required_argument, NULL, 1003 },
		{ "replica-seed", required_argument, NULL, 1004 },
		{ "heartbeat-ms", required_argument, NULL, 1005 },
		{ "no-degraded", no_argument, NULL, 1006 },
		{ "drain-timeout-s", required_argument, NULL, 'G' },
		{ "balance", required_argument, NULL, 1200 },
		{ "eplb-interval", required_argument, NULL, 1201 },
		{ "eplb-threshold", required_argument, NULL, 1202 },
		{ "eplb-window", required_argument, NULL, 1203 },
		{ "redundant-slots", required_argument, NULL, 1204 },
		{ "replica-ram-mb", required_argument, NULL, 1205 },
		{ "hosts", required_argument, NULL, 1206 },
		{ "llep-lambda", required_argument, NULL, 1207 },
		{ "llep-alpha", required_argument, NULL, 1208 },
		{ "llep-min-chunk", required_argument, NULL, 1209 },
		{ "record-routing", required_argument, NULL, 1210 },
		{ "replica-dtype", required_argument, NULL, 1211 },
		{ "llep-cache", required_argument, NULL, 1212 },
		{ "elastic", required_argument, NULL, 1220 },
		{ "max-workers", required_argument, NULL, 1221 },
		{ "print-config", no_argument, NULL, 'p' },
		{ "spec", required_argument, NULL, 1007 },
		{ "affinity", required_argument, NULL, 1008 },
		{ "log-json", no_argument, NULL, 'J' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "tls-cert", required_argument, NULL, 1101 },
		{ "tls-key", required_argument, NULL, 1102 },
		{ "tls-ca", required_argument, NULL, 1103 },
		{ "api-key", required_argument, NULL, 1104 },
		{ "api-key-file", required_argument, NULL, 1105 },
		{ "metrics-auth", no_argument, NULL, 1106 },
		{ "http-max-connections", required_argument, NULL, 1107 },
		{ "http-max-per-client", required_argument, NULL, 1108 },
		{ "http-header-timeout-ms", required_argument, NULL, 1109 },
		{ "http-body-timeout-ms", required_argument, NULL, 1110 },
		{ "http-idle-timeout-ms", required_argument, NULL, 1111 },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	long v;
	int o, control_given = 0;
	enum log_level lvl;

	http_config_default(&c->http);
	c->http_addr = "127.0.0.1:8080";
	c->nng_url = "tcp://127.0.0.1:5555";
	c->control_url = "tcp://127.0.0.1:5556";
	c->kv_type = DTYPE_F32;
	c->workers = 2;
	c->expect_workers = -1;
	c->max_tokens_default = 256;
	c->expert_timeout_ms = 10000;
	c->balance = BAL_ALL;
	c->elastic = true;
	c->redundant_slots = -1;
	c->llep_cache = 2;
	c->drain_timeout_s = 30;
	sched_cfg_default(&c->sched);
	while ((o = getopt_long(argc, argv, "m:w:t:c:h", opts, NULL)) != -1) {
		switch (o) {
		case 'm': c->model_path = optarg; break;
		case 'N': c->model_name = optarg; break;
		case 'L': c->local = true; break;
		case 'H': c->http_addr = optarg; break;
		case 'n': c->nng_url = optarg; break;
		case 'C': c->control_url = optarg; control_given = 1; break;
		case 'E': c->experts_per_worker = optarg; break;
		case 'P': c->placement = optarg; break;
		case 'r': c->routing = optarg; break;
		case 'J': c->log_json = true; break;
		case 'p': *print = true; break;
		case 'l':
			if (log_parse_level(optarg, &lvl) != 0) {
				fprintf(stderr, "epmoe-router: --log-level expects debug|info|warn|error\n");
				return -1;
			}
			log_set_level(lvl);
			break;
		case 'w':
			if (num("--workers", optarg, 0, 256, &v))
				return -1;
			c->workers = (int)v;
			break;
		case 'X':
			if (num("--expect-workers", optarg, 1, 4096, &v))
				return -1;
			c->expect_workers = (int)v;
			break;
		case 't':
			if (num("--threads", optarg, 0, 1024, &v))
				return -1;
			c->threads = (int)v;
			break;
		case 'c':
			if (num("--ctx", optarg, 16, 1 << 20, &v))
				return -1;
			c->n_ctx = (uint32_t)v;
			break;
		case 'V':
			if (engine_kv_type_parse(optarg, &c->kv_type) != 0) {
				const char *src = cur_args ? envargs_source(cur_args, optind - 1) : NULL;
				fprintf(stderr, "epmoe-router: --kv-type%s%s%s expects f32 or f16, got '%s'\n",
				        src ? " (from " : "", src ? src : "", src ? ")" : "", optarg);
				return -1;
			}
			break;
		case 'R':
			if (num("--max-running", optarg, 1, 4096, &v))
				return -1;
			c->sched.max_running = (uint32_t)v;
			break;
		case 'W':
			if (num("--max-waiting", optarg, 0, 1 << 20, &v))
				return -1;
			c->sched.max_waiting = (uint32_t)v;
			break;
		case 'S':
			if (num("--step-tokens", optarg, 1, 1 << 20, &v))
				return -1;
			c->sched.max_step_tokens = (uint32_t)v;
			break;
		case 'K':
			if (num("--kv-budget-mb", optarg, 1, 1 << 30, &v))
				return -1;
			c->sched.kv_budget_bytes = (size_t)v << 20;
			break;
		case 'F':
			if (num("--prefill-chunk", optarg, 0, 1 << 20, &v))
				return -1;
			c->sched.decode_prefill = (uint32_t)v;
			break;
		case 'Q':
			if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0 &&
			        strcmp(optarg, "1") != 0 && strcmp(optarg, "0") != 0) {
				const char *src = envargs_source(cur_args, optind - 1);
				fprintf(stderr, "epmoe-router: --prefix-cache%s%s%s expects on or off (1 or 0), "
				        "got '%s'\n", src ? " (from " : "", src ? src : "",
				        src ? ")" : "", optarg);
				return -1;
			}
			c->sched.prefix_cache = strcmp(optarg, "on") == 0 || strcmp(optarg, "1") == 0;
			break;
		case 'M':
			if (num("--max-tokens", optarg, 1, 1 << 20, &v))
				return -1;
			c->max_tokens_default = (uint32_t)v;
			break;
		case 'T':
			if (num("--max-tokens-limit", optarg, 1, 1 << 20, &v))
				return -1;
			c->max_tokens_limit = (uint32_t)v;
			break;
		case 'D':
			if (num("--expert-timeout-ms", optarg, 1, 3600000, &v))
				return -1;
			c->expert_timeout_ms = (uint32_t)v;
			break;
		case 1000:
			if (num("--deadline-floor-ms", optarg, 1, 3600000, &v))
				return -1;
			c->deadline_floor_ms = (uint32_t)v;
			break;
		case 1001:
			if (numf("--deadline-k", optarg, 1.0, 1000.0, &c->deadline_k))
				return -1;
			break;
		case 1002:
			if (numf("--hedge", optarg, 0.0, 1000.0, &c->hedge))
				return -1;
			break;
		case 1003:
			if (strcmp(optarg, "static") != 0 && strcmp(optarg, "dynamic") != 0) {
				fprintf(stderr, "epmoe-router: --replica expects static or dynamic, got '%s'\n",
				        optarg);
				return -1;
			}
			c->replica = optarg;
			break;
		case 1004:
			if (num("--replica-seed", optarg, 0, LONG_MAX, &v))
				return -1;
			c->replica_seed = (uint64_t)v;
			break;
		case 1005:
			if (num("--heartbeat-ms", optarg, 10, 600000, &v))
				return -1;
			c->heartbeat_ms = (uint32_t)v;
			break;
		case 1006: c->no_degraded = true; break;
		case 'G':
			if (num("--drain-timeout-s", optarg, 0, 86400, &v))
				return -1;
			c->drain_timeout_s = (uint32_t)v;
			break;
		case 1101: c->tls_cert = optarg; break;
		case 1102: c->tls_key = optarg; break;
		case 1103: c->tls_ca = optarg; break;
		case 1104:
			if (ka->n_keys == (int)(sizeof(ka->keys) / sizeof(ka->keys[0]))) {
				fprintf(stderr, "epmoe-router: too many --api-key (use --api-key-file)\n");
				return -1;
			}
			ka->keys[ka->n_keys++] = optarg;
			break;
		case 1105:
			if (ka->n_files == (int)(sizeof(ka->files) / sizeof(ka->files[0]))) {
				fprintf(stderr, "epmoe-router: too many --api-key-file\n");
				return -1;
			}
			ka->files[ka->n_files++] = optarg;
			break;
		case 1106: c->metrics_auth = true; break;
		case 1107:
			if (num("--http-max-connections", optarg, 1, 1 << 20, &v))
				return -1;
			c->http.max_connections = (uint32_t)v;
			break;
		case 1108:
			if (num("--http-max-per-client", optarg, 0, 1 << 20, &v))
				return -1;
			c->http.max_per_client = (uint32_t)v;
			break;
		case 1109:
			if (num("--http-header-timeout-ms", optarg, 1, 3600000, &v))
				return -1;
			c->http.header_timeout_ms = (uint64_t)v;
			break;
		case 1110:
			if (num("--http-body-timeout-ms", optarg, 1, 3600000, &v))
				return -1;
			c->http.body_timeout_ms = (uint64_t)v;
			break;
		case 1111:
			if (num("--http-idle-timeout-ms", optarg, 1, 86400000, &v))
				return -1;
			c->http.idle_timeout_ms = (uint64_t)v;
			break;
		case 1200:
			if (bal_mode_parse(optarg, &c->balance) != 0) {
				fprintf(stderr, "epmoe-router: --balance expects off|eplb|llep|all, got '%s'\n",
				        optarg);
				return -1;
			}
			break;
		case 1201:
			if (num("--eplb-interval", optarg, 1, 100000000, &v))
				return -1;
			c->eplb_interval = (uint32_t)v;
			break;
		case 1202:
			if (numf("--eplb-threshold", optarg, 1.0, 1000.0, &c->eplb_threshold))
				return -1;
			break;
		case 1203:
			if (num("--eplb-window", optarg, 1, 100000, &v))
				return -1;
			c->eplb_window = (uint32_t)v;
			break;
		case 1204:
			if (num("--redundant-slots", optarg, 0, 65536, &v))
				return -1;
			c->redundant_slots = (int32_t)v;
			break;
		case 1205:
			if (num("--replica-ram-mb", optarg, 0, 1L << 30, &v))
				return -1;
			c->replica_ram_mb = (uint64_t)v;
			break;
		case 1206:
			if (num("--hosts", optarg, 1, 1024, &v))
				return -1;
			c->hosts = (uint32_t)v;
			break;
		case 1207:
			if (numf("--llep-lambda", optarg, 1.0, 1000.0, &c->llep_lambda))
				return -1;
			break;
		case 1208:
			if (numf("--llep-alpha", optarg, 0.5, 1000.0, &c->llep_alpha))
				return -1;
			break;
		case 1209:
			if (num("--llep-min-chunk", optarg, 1, 1 << 24, &v))
				return -1;
			c->llep_min_chunk = (uint32_t)v;
			break;
		case 1210: c->record_routing = optarg; break;
		case 1212:
			if (num("--llep-cache", optarg, 0, 1024, &v))
				return -1;
			c->llep_cache = (uint32_t)v;
			break;
		case 1211:
			if (strcmp(optarg, "q8_0") == 0 || strcmp(optarg, "Q8_0") == 0) {
				c->replica_q8 = true;
			} else if (strcmp(optarg, "model") == 0) {
				c->replica_q8 = false;
			} else {
				fprintf(stderr, "epmoe-router: --replica-dtype expects model or q8_0, got '%s'\n",
				        optarg);
				return -1;
			}
			break;
		case 1220: {
			/* on|off, and what a boolean variable usually holds */
			static const char *const yes[] = { "on", "1", "true", "yes" };
			static const char *const no[] = { "off", "0", "false", "no" };
			int set = -1;
			for (int k = 0; k < 4; k++) {
				if (strcmp(optarg, yes[k]) == 0)
					set = 1;
				if (strcmp(optarg, no[k]) == 0)
					set = 0;
			}
			if (set < 0) {
				fprintf(stderr, "epmoe-router: --elastic expects on or off, got '%s'\n",
				        optarg);
				return -1;
			}
			c->elastic = set == 1;
			break;
		}
		case 1221:
			if (num("--max-workers", optarg, 1, 1024, &v))
				return -1;
			c->max_workers = (uint32_t)v;
			break;
		case 1007:
			if (router_spec_parse(optarg, &c->spec) != 0) {
				fprintf(stderr, "epmoe-router: --spec expects off, predict, group, cobatch, "
				        "prefetch, all or parts joined by '+', got '%s'\n", optarg);
				return -1;
			}
			break;
		case 1008: c->affinity = optarg; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "epmoe-router: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (c->model_path == NULL) {
		fprintf(stderr, "epmoe-router: --model is required (or EPMOE_MODEL)\n");
		usage(stderr);
		return -1;
	}
	if (c->expect_workers < 0)
		c->expect_workers = c->workers;
	if ((c->tls_cert || c->tls_key || c->tls_ca) &&
	        !(c->tls_cert && c->tls_key && c->tls_ca)) {
		fprintf(stderr, "epmoe-router: mutual TLS needs all three of --tls-cert, --tls-key and --tls-ca\n");
		return -1;
	}
	/* with TLS the default control endpoint speaks it too; a tcp:// URL
	 * that was asked for is refused later with a message */
	if (c->tls_cert && !control_given)
		c->control_url = "tls+tcp://127.0.0.1:5556";
	if (!c->local && c->expect_workers == 0) {
		fprintf(stderr, "epmoe-router: no workers: use --local, --workers N or --expect-workers N\n");
		return -1;
	}
	return 0;
}

/* The API key set of --api-key / --api-key-file (empty: the APIs are
 * open).  0, or -1 after a message. */
static int
load_keys(struct apikeys **out, const struct key_args *ka)
{
	char err[512];
	int rc = 0;

	if (apikeys_new(out) != 0) {
		fprintf(stderr, "epmoe-router: out of memory\n");
		return -1;
	}
	for (int i = 0; rc == 0 && i < ka->n_keys; i++)
		rc = apikeys_add(*out, ka->keys[i], err, sizeof(err));
	for (int i = 0; rc == 0 && i < ka->n_files; i++)
		rc = apikeys_load_file(*out, ka->files[i], err, sizeof(err));
	if (rc != 0) {
		fprintf(stderr, "epmoe-router: %s\n", err);
		apikeys_free(*out);
		*out = NULL;
		return -1;
	}
	return 0;
}

static char *
default_name(const char *path)
{
	const char *b = strrchr(path, '/');
	char *n = strdup(b ? b + 1 : path);
	size_t l = n ? strlen(n) : 0;
	if (n && l > 5 && strcmp(n + l - 5, ".gguf") == 0)
		n[l - 5] = '\0';
	return n;
}

/* Stops serving; the pending requests fail with their final events. */
static void
shutdown_all(struct router *r)
{
	api_stop(r);
	nngapi_stop(r->nngapi);
	router_stop(r);
}

static uv_timer_t drain_timer;
static uint64_t drain_deadline_ms;
static bool shut_down;

static void
shutdown_now(struct router *r)
{
	if (shut_down)
		return;
	shut_down = true;
	if (uv_is_active((uv_handle_t *)&drain_timer))
		uv_timer_stop(&drain_timer);
	shutdown_all(r);
	uv_stop(r->loop);
}

static void
on_drain_tick(uv_timer_t *t)
{
	struct router *r = t->data;
	struct sched_stats st;

	sched_get_stats(r->sched, &st);
	if (st.running + st.waiting == 0) {
		log_info("drained: no request left, stopping");
		shutdown_now(r);
	} else if (uv_now(r->loop) >= drain_deadline_ms) {
		log_warn("drain timeout: stopping with %u running and %u waiting requests",
		        st.running, st.waiting);
		shutdown_now(r);
	}
}

/* First SIGTERM/SIGINT: refuse new requests (/health answers 503
 * "stopping", so balancers and orchestrators stop sending), let the
 * running ones finish for up to --drain-timeout-s, then stop.  A second
 * signal stops at once. */
static void
on_signal(uv_signal_t *h, int signum)
{
	struct router *r = h->data;
	struct sched_stats st;

	if (r->stopping) {
		log_info("signal %d again: stopping now", signum);
		shutdown_now(r);
		return;
	}
	r->stopping = true;
	sched_get_stats(r->sched, &st);
	if (r->cfg.drain_timeout_s == 0 || st.running + st.waiting == 0) {
		log_info("signal %d: shutting down", signum);
		shutdown_now(r);
		return;
	}
	log_info("signal %d: draining %u running and %u waiting requests for up to %u s",
	        signum, st.running, st.waiting, r->cfg.drain_timeout_s);
	drain_deadline_ms = uv_now(r->loop) + (uint64_t)r->cfg.drain_timeout_s * 1000;
	drain_timer.data = r;
	uv_timer_start(&drain_timer, on_drain_tick, 100, 100);
}

static void
close_walk(uv_handle_t *h, void *arg)
{
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

int
main(int argc, char **argv)
{
	struct router r;
	struct key_args ka = { 0 };
	char *name = NULL;
	uv_signal_t sig_int, sig_term;
	struct envargs ea;
	bool print = false;
	int rc, status = 1;

	memset(&r, 0, sizeof(r));
	log_set_name("epmoe-router");
	signal(SIGPIPE, SIG_IGN);
	if (envargs_init(&ea, env_table, sizeof(env_table) / sizeof(env_table[0]), argc,
	            argv) != 0) {
		fprintf(stderr, "epmoe-router: out of memory\n");
		return 1;
	}
	cur_args = &ea;
	rc = parse_args(ea.argc, ea.argv, &r.cfg, &print, &ka);
	cur_args = NULL;
	if (rc == 0 && !print && load_keys(&r.apikeys, &ka) != 0)
		rc = -1;
	if (rc == 0 && print) {
		printf("epmoe-router arguments:\n");
		envargs_print(&ea, stdout);
	}
	if (rc != 0 || print) {
		envargs_fini(&ea);
		return rc != 0 ? 2 : 0;
	}
	/* local workers (--workers) inherit this environment: drop what
	 * names a single worker (an image may set it for its worker role) */
	unsetenv("EPMOE_HEALTH_FILE");
	unsetenv("EPMOE_ADVERTISE");
	unsetenv("EPMOE_WORKER_ID");
	unsetenv("EPMOE_NODE");
	unsetenv("EPMOE_API_KEY"); /* the workers need no key: keep it out of their environment */
	log_set_json(r.cfg.log_json);
	if (r.cfg.model_name == NULL &&
	        (r.cfg.model_name = name = default_name(r.cfg.model_path)) == NULL) {
		log_error("out of memory");
		envargs_fini(&ea);
		return 1;
	}
	r.loop = uv_default_loop();
	/* the core, then beside it the statistics and the front ends */
	if ((rc = router_start(&r)) != 0)
		goto out;
	if ((rc = stats_new(&r.stats, &r)) != 0) {
		log_error("cannot set up metrics: %s", epmoe_strerror(rc));
		goto out;
	}
	if ((rc = api_start(&r)) != 0)
		goto out;
	if (r.cfg.nng_url && r.cfg.nng_url[0] && (rc = nngapi_start(&r, &r.nngapi)) != 0)
		goto out;
	log_info("serving %s (%s, %u layers, %u experts top-%u, vocab %u, ctx %u) on http://%s%s%s,"
	         " experts %s, routing %s, %d threads, step budget %u tokens, max running %u,"
	         " wait queue %u, KV budget %zu MiB (%s)",
	        r.cfg.model_name, model_arch_name(r.model->hp.arch), r.model->hp.n_layer,
	        r.model->hp.n_expert, r.model->hp.n_expert_used, r.model->hp.n_vocab,
	        engine_n_ctx(r.engine), r.cfg.http_addr,
	        r.nngapi ? " and " : "", r.nngapi ? r.cfg.nng_url : "",
	        r.cluster ? "on workers" : "in process",
	        r.cfg.routing ? r.cfg.routing : "native", pool_size(engine_pool(r.engine)),
	        r.cfg.sched.max_step_tokens, r.cfg.sched.max_running, r.cfg.sched.max_waiting,
	        r.cfg.sched.kv_budget_bytes >> 20, dtype_name(r.cfg.kv_type));
	log_info("security: %s; client APIs %s (%zu API key%s)%s",
	        r.tls ? "mutual TLS with the workers" :
	        r.cluster ? "plain TCP with the workers (no --tls-*)" : "no workers",
	        apikeys_count(r.apikeys) ? "need a key" : "open", apikeys_count(r.apikeys),
	        apikeys_count(r.apikeys) == 1 ? "" : "s",
	        r.cfg.metrics_auth ? ", /metrics keyed" : "");
	log_prefix_cache(&r);
	uv_timer_init(r.loop, &drain_timer);
	uv_signal_init(r.loop, &sig_int);
	uv_signal_init(r.loop, &sig_term);
	sig_int.data = sig_term.data = &r;
	uv_signal_start(&sig_int, on_signal, SIGINT);
	uv_signal_start(&sig_term, on_signal, SIGTERM);
	uv_run(r.loop, UV_RUN_DEFAULT);
	status = 0;
out:
	shutdown_all(&r);
	/* let the final writes and closes finish, then close what is left */
	uv_run(r.loop, UV_RUN_NOWAIT);
	uv_walk(r.loop, close_walk, NULL);
	uv_run(r.loop, UV_RUN_DEFAULT);
	nngapi_free(r.nngapi);
	stats_free(r.stats);
	router_free(&r);
	apikeys_free(r.apikeys);
	uv_loop_close(r.loop);
	free(name);
	envargs_fini(&ea);
	log_info("stopped");
	return status;
}
