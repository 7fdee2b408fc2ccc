/* epmoe-router: the router daemon.  Parses the command line, starts the
 * router's core (router.c: model, experts, scheduler), the statistics
 * (stats.c) and the front ends (api.c: HTTP, nngapi.c: NNG) on one libuv
 * loop, and shuts down cleanly on SIGINT/SIGTERM. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
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
	        "      --drain-timeout-s N  on SIGTERM, refuse new requests and finish the\n"
	        "                           running ones for up to N s, then stop (default\n"
	        "                           30, 0 = stop at once; a second signal stops at\n"
	        "                           once; env EPMOE_DRAIN_TIMEOUT_S)\n"
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
	{ "drain-timeout-s", "EPMOE_DRAIN_TIMEOUT_S", false, false },
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

static int
parse_args(int argc, char **argv, struct router_cfg *c, bool *print)
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
		{ "drain-timeout-s", required_argument, NULL, 'G' },
		{ "print-config", no_argument, NULL, 'p' },
		{ "log-json", no_argument, NULL, 'J' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	long v;
	int o;
	enum log_level lvl;

	c->http_addr = "127.0.0.1:8080";
	c->nng_url = "tcp://127.0.0.1:5555";
	c->control_url = "tcp://127.0.0.1:5556";
	c->kv_type = DTYPE_F32;
	c->workers = 2;
	c->expect_workers = -1;
	c->max_tokens_default = 256;
	c->expert_timeout_ms = 10000;
	c->drain_timeout_s = 30;
	sched_cfg_default(&c->sched);
	while ((o = getopt_long(argc, argv, "m:w:t:c:h", opts, NULL)) != -1) {
		switch (o) {
		case 'm': c->model_path = optarg; break;
		case 'N': c->model_name = optarg; break;
		case 'L': c->local = true; break;
		case 'H': c->http_addr = optarg; break;
		case 'n': c->nng_url = optarg; break;
		case 'C': c->control_url = optarg; break;
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
		case 'G':
			if (num("--drain-timeout-s", optarg, 0, 86400, &v))
				return -1;
			c->drain_timeout_s = (uint32_t)v;
			break;
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
	if (!c->local && c->expect_workers == 0) {
		fprintf(stderr, "epmoe-router: no workers: use --local, --workers N or --expect-workers N\n");
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
	rc = parse_args(ea.argc, ea.argv, &r.cfg, &print);
	cur_args = NULL;
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
	uv_loop_close(r.loop);
	free(name);
	envargs_fini(&ea);
	log_info("stopped");
	return status;
}
