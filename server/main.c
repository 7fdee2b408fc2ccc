/* epmoe-router: the router daemon.  Parses the command line, loads the
 * model's dense part and tokenizer, brings up the experts (in process with
 * --local, else on workers), starts the scheduler's engine thread and the
 * front ends (HTTP, NNG) on one libuv loop, and shuts down cleanly on
 * SIGINT/SIGTERM. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "router.h"

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe-router --model M [options]\n"
	        "  -m, --model M            GGUF model (env EPMOE_MODEL)\n"
	        "      --model-name NAME    id served in the API (default: file name)\n"
	        "      --local              run the experts in this process\n"
	        "  -w, --workers N          spawn N local worker processes (default 2;\n"
	        "                           env EPMOE_WORKERS)\n"
	        "      --expect-workers N   wait for N workers in all, counting remote ones\n"
	        "                           that dial --control (default: --workers)\n"
	        "      --http ADDR          HTTP API address (default 127.0.0.1:8080;\n"
	        "                           env EPMOE_HTTP)\n"
	        "      --nng URL            NNG client API, \"\" = off (default\n"
	        "                           tcp://127.0.0.1:5555; env EPMOE_NNG)\n"
	        "      --control URL        worker control endpoint (default\n"
	        "                           tcp://127.0.0.1:5556; env EPMOE_CONTROL)\n"
	        "      --experts-per-worker a,b,...  contiguous blocks of these sizes\n"
	        "      --placement FILE     explicit placement (JSON)\n"
	        "      --routing P          default routing policy (default native;\n"
	        "                           env EPMOE_ROUTING)\n"
	        "  -t, --threads N          engine threads (default: all cores;\n"
	        "                           env EPMOE_THREADS)\n"
	        "  -c, --ctx N              context length per sequence (default: the model's)\n"
	        "      --kv-type T          KV cache f32 (default) or f16: half the memory,\n"
	        "                           so twice the sequences per --kv-budget-mb\n"
	        "                           (env EPMOE_KV_TYPE)\n"
	        "      --max-running N      sequences decoding at once (default 32)\n"
	        "      --max-waiting N      wait queue bound, 429 beyond (default 64)\n"
	        "      --step-tokens N      token budget of one step (default 512)\n"
	        "      --kv-budget-mb N     KV cache budget in MiB (default 4096)\n"
	        "      --max-tokens N       default max_tokens for chat (default 256)\n"
	        "      --max-tokens-limit N largest max_tokens accepted (default: context)\n"
	        "      --expert-timeout-ms N  deadline of one expert batch (default 10000)\n"
	        "      --log-json           log one JSON object per line\n"
	        "      --log-level L        debug|info|warn|error (default info)\n");
}

static int
num(const char *opt, const char *s, long lo, long hi, long *out)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
		fprintf(stderr, "epmoe-router: %s expects an integer in %ld..%ld, got '%s'\n",
		        opt, lo, hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

static const char *
env(const char *name, const char *dflt)
{
	const char *v = getenv(name);
	return v ? v : dflt;
}

static int
parse_args(int argc, char **argv, struct router_cfg *c)
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
		{ "max-tokens", required_argument, NULL, 'M' },
		{ "max-tokens-limit", required_argument, NULL, 'T' },
		{ "expert-timeout-ms", required_argument, NULL, 'D' },
		{ "log-json", no_argument, NULL, 'J' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	long v;
	int o;
	enum log_level lvl;

	c->model_path = env("EPMOE_MODEL", NULL);
	c->http_addr = env("EPMOE_HTTP", "127.0.0.1:8080");
	c->nng_url = env("EPMOE_NNG", "tcp://127.0.0.1:5555");
	c->control_url = env("EPMOE_CONTROL", "tcp://127.0.0.1:5556");
	c->routing = env("EPMOE_ROUTING", NULL);
	if (engine_kv_type_parse(env("EPMOE_KV_TYPE", "f32"), &c->kv_type) != 0) {
		fprintf(stderr, "epmoe-router: EPMOE_KV_TYPE expects f32 or f16\n");
		return -1;
	}
	c->workers = 2;
	c->expect_workers = -1;
	c->max_tokens_default = 256;
	c->expert_timeout_ms = 10000;
	sched_cfg_default(&c->sched);
	if (getenv("EPMOE_WORKERS") && num("EPMOE_WORKERS", getenv("EPMOE_WORKERS"), 0, 256, &v) == 0)
		c->workers = (int)v;
	if (getenv("EPMOE_THREADS") && num("EPMOE_THREADS", getenv("EPMOE_THREADS"), 0, 1024, &v) == 0)
		c->threads = (int)v;
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
				fprintf(stderr, "epmoe-router: --kv-type expects f32 or f16, got '%s'\n",
				        optarg);
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

static void
on_signal(uv_signal_t *h, int signum)
{
	struct router *r = h->data;

	if (r->stopping)
		return;
	log_info("signal %d: shutting down", signum);
	r->stopping = true;
	api_stop(r);
	nngapi_stop(r->nngapi);
	/* fails what is pending; the events go out on this loop iteration */
	sched_stop(r->sched);
	glue_stop(r);
	uv_stop(r->loop);
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
	char err[512] = "", *name = NULL;
	uv_signal_t sig_int, sig_term;
	int rc, status = 1;

	memset(&r, 0, sizeof(r));
	log_set_name("epmoe-router");
	signal(SIGPIPE, SIG_IGN);
	if (parse_args(argc, argv, &r.cfg) != 0)
		return 2;
	log_set_json(r.cfg.log_json);
	if (r.cfg.model_name == NULL)
		r.cfg.model_name = name = default_name(r.cfg.model_path);
	r.created = (int64_t)time(NULL);
	r.loop = uv_default_loop();

	if ((rc = model_load(&r.model, r.cfg.model_path, err, sizeof(err))) != 0) {
		log_error("%s", err);
		goto out;
	}
	if ((rc = tok_load(&r.tok, r.model->gguf, err, sizeof(err))) != 0) {
		log_error("%s", err);
		goto out;
	}
	{
		const struct gguf_kv *kv = gguf_find_kv(r.model->gguf, "tokenizer.chat_template");
		if (kv && kv->type == GGUF_TYPE_STRING &&
		        (r.chat_template = strndup(kv->v.str.ptr, kv->v.str.len)) == NULL)
			goto out;
	}
	struct engine_opts eo = { .n_threads = r.cfg.threads, .n_ctx = r.cfg.n_ctx,
		.routing = r.cfg.routing, .kv_type = r.cfg.kv_type };
	if ((rc = engine_new(&r.engine, r.model, &eo, err, sizeof(err))) != 0) {
		log_error("%s", err[0] ? err : epmoe_strerror(rc));
		goto out;
	}
	if (r.cfg.max_tokens_limit == 0)
		r.cfg.max_tokens_limit = engine_n_ctx(r.engine);
	if ((rc = glue_start(&r)) != 0)
		goto out;
	if ((rc = sched_new(&r.sched, r.loop, r.engine, r.tok, &r.cfg.sched)) != 0) {
		log_error("cannot start the scheduler: %s", epmoe_strerror(rc));
		goto out;
	}
	if (r.cfg.routing && (rc = sched_check_routing(r.sched, r.cfg.routing, true, err,
	                              sizeof(err))) != 0) {
		log_error("--routing %s: %s", r.cfg.routing, err);
		goto out;
	}
	if ((rc = stats_init(&r)) != 0) {
		log_error("cannot set up metrics: %s", epmoe_strerror(rc));
		goto out;
	}
	if ((rc = api_start(&r)) != 0)
		goto out;
	if (r.cfg.nng_url && r.cfg.nng_url[0] && (rc = nngapi_start(&r, &r.nngapi)) != 0)
		goto out;
	r.boot_id = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
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
	uv_signal_init(r.loop, &sig_int);
	uv_signal_init(r.loop, &sig_term);
	sig_int.data = sig_term.data = &r;
	uv_signal_start(&sig_int, on_signal, SIGINT);
	uv_signal_start(&sig_term, on_signal, SIGTERM);
	uv_run(r.loop, UV_RUN_DEFAULT);
	/* let the final writes and closes finish, then close what is left */
	uv_run(r.loop, UV_RUN_NOWAIT);
	uv_walk(r.loop, close_walk, NULL);
	uv_run(r.loop, UV_RUN_DEFAULT);
	status = 0;
out:
	if (status != 0 && r.http)
		api_stop(&r);
	nngapi_stop(r.nngapi);
	if (r.sched)
		sched_stop(r.sched);
	uv_walk(r.loop, close_walk, NULL);
	uv_run(r.loop, UV_RUN_DEFAULT);
	nngapi_free(r.nngapi);
	sched_free(r.sched);
	if (r.metrics)
		stats_fini(&r);
	glue_free(&r);
	engine_free(r.engine);
	tok_free(r.tok);
	free(r.chat_template);
	model_free(r.model);
	uv_loop_close(r.loop);
	free(name);
	log_info("stopped");
	return status;
}
