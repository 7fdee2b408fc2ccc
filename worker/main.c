/* epmoe-worker: command line, environment and signals around worker.c,
 * and the health file (--health-file) that `epmoe health --file` reads in
 * a container's health check.
 * Exit status: 0 after a clean shutdown (SIGTERM / SIGINT), 1 when the
 * worker cannot start or the router refuses it for good, 2 on a usage
 * error. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "envargs.h"
#include "err.h"
#include "log.h"
#include "worker.h"

static volatile sig_atomic_t stop_flag;

static void
on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe-worker --router URL --model M [options]\n"
	        "Serves expert FFN batches for an epmoe-router.  Every flag can also be\n"
	        "set by the EPMOE_* variable named with it; a typed flag wins.\n"
	        "  -r, --router URL     router control URL, e.g. tcp://127.0.0.1:5560\n"
	        "                       (env EPMOE_ROUTER; required)\n"
	        "  -m, --model M        GGUF model file, the router's model (env EPMOE_MODEL;\n"
	        "                       required)\n"
	        "  -l, --listen URL     data socket URL (env EPMOE_LISTEN;\n"
	        "                       default tcp://127.0.0.1:0 = a free port; ipc:///tmp/x.sock)\n"
	        "      --advertise URL  data URL told to the router (env EPMOE_ADVERTISE;\n"
	        "                       default: the bound listen URL)\n"
	        "  -t, --threads N      compute threads (env EPMOE_THREADS; default 0 = all CPUs)\n"
	        "  -i, --id NAME        stable worker name; a restart with the same name takes\n"
	        "                       back its place (env EPMOE_WORKER_ID; default host-pid)\n"
	        "      --node NAME      machine name for placement (env EPMOE_NODE;\n"
	        "                       default: the host name)\n"
	        "      --tls-cert F     mutual TLS with the router: this worker's\n"
	        "                       certificate (PEM; env EPMOE_TLS_CERT); with the\n"
	        "                       key and the CA the URLs are tls+tcp:// (default\n"
	        "                       listen tls+tcp://127.0.0.1:0)\n"
	        "      --tls-key F      its private key (env EPMOE_TLS_KEY)\n"
	        "      --tls-ca F       the CA the router's certificate must chain to\n"
	        "                       (env EPMOE_TLS_CA)\n"
	        "      --health-file F  rewrite F every second while serving (state, worker\n"
	        "                       index, placement epoch) and remove it on exit, for\n"
	        "                       `epmoe health --file F` (env EPMOE_HEALTH_FILE)\n"
	        "      --drain-timeout-ms N  on SIGTERM, ask the router to move this worker's\n"
	        "                       experts to the others and keep serving until it is\n"
	        "                       drained, at most N ms, then leave and exit 0; 0 =\n"
	        "                       leave at once (env EPMOE_DRAIN_TIMEOUT_MS;\n"
	        "                       default 30000)\n"
	        "      --log-json       JSON log lines (env EPMOE_LOG_JSON=1)\n"
	        "      --log-level L    debug, info, warn or error (env EPMOE_LOG_LEVEL;\n"
	        "                       default info)\n"
	        "      --print-config   print the arguments as parsed, each with its source\n"
	        "                       (a flag or an EPMOE_* variable), and exit\n"
	        "                       (env EPMOE_PRINT_CONFIG=1)\n"
	        "  -h, --help           this help\n");
}

/* Flag <- variable table: every flag of main's getopt loop has a row. */
static const struct envarg env_table[] = {
	{ "router", "EPMOE_ROUTER", false, false },
	{ "model", "EPMOE_MODEL", false, false },
	{ "listen", "EPMOE_LISTEN", false, false },
	{ "advertise", "EPMOE_ADVERTISE", false, false },
	{ "threads", "EPMOE_THREADS", false, false },
	{ "id", "EPMOE_WORKER_ID", false, false },
	{ "node", "EPMOE_NODE", false, false },
	{ "health-file", "EPMOE_HEALTH_FILE", false, false },
	{ "tls-cert", "EPMOE_TLS_CERT", false, false },
	{ "tls-key", "EPMOE_TLS_KEY", false, false },
	{ "tls-ca", "EPMOE_TLS_CA", false, false },
	{ "drain-timeout-ms", "EPMOE_DRAIN_TIMEOUT_MS", false, false },
	{ "log-json", "EPMOE_LOG_JSON", true, false },
	{ "log-level", "EPMOE_LOG_LEVEL", false, false },
	{ "print-config", "EPMOE_PRINT_CONFIG", true, false },
};

/* The health file: written by its own thread so that it says the process
 * runs and what the control thread last achieved. */
struct health {
	const char *path;
	struct worker *w;
	pthread_t th;
	bool started;
};

static int
health_write(const struct health *h)
{
	struct worker_stats st;
	char tmp[4096];
	FILE *f;

	worker_get_stats(h->w, &st);
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", h->path) >= (int)sizeof(tmp))
		return EPMOE_ERANGE;
	if ((f = fopen(tmp, "w")) == NULL)
		return epmoe_err_from_errno(errno);
	fprintf(f, "state=%s index=%u epoch=%llu slots=%u batches=%llu pid=%ld\n",
	        st.registered ? "registered" : "waiting", st.index,
	        (unsigned long long)st.epoch, st.n_slots, (unsigned long long)st.batches,
	        (long)getpid());
	if (fclose(f) != 0 || rename(tmp, h->path) != 0) {
		int rc = epmoe_err_from_errno(errno);
		unlink(tmp);
		return rc;
	}
	return 0;
}

static void *
health_main(void *arg)
{
	struct health *h = arg;
	bool warned = false;

	while (!stop_flag) {
		int rc = health_write(h);
		if (rc != 0 && !warned) {
			log_warn("cannot write the health file %s: %s", h->path, epmoe_strerror(rc));
			warned = true;
		}
		for (int i = 0; i < 20 && !stop_flag; i++)
			usleep(50000);
	}
	return NULL;
}

static int
bad(const char *opt, const char *msg)
{
	fprintf(stderr, "epmoe-worker: %s%s%s\n", opt ? opt : "", opt ? ": " : "",
	        msg);
	fprintf(stderr, "try 'epmoe-worker --help'\n");
	return 2;
}

static int
parse_threads(const char *s, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end != '\0' || v < 0 || v > 1024)
		return EPMOE_EINVAL;
	*out = (int)v;
	return 0;
}

/* Parses e's arguments into cfg and the logging/health settings.
 * Returns 0, -1 after --help (exit 0), or 2 on a usage error. */
static int
parse(const struct envargs *e, struct worker_cfg *cfg, struct health *health,
        int *log_json, bool *print)
{
	static const struct option opts[] = {
		{ "router", required_argument, NULL, 'r' },
		{ "model", required_argument, NULL, 'm' },
		{ "listen", required_argument, NULL, 'l' },
		{ "advertise", required_argument, NULL, 'A' },
		{ "threads", required_argument, NULL, 't' },
		{ "id", required_argument, NULL, 'i' },
		{ "node", required_argument, NULL, 'N' },
		{ "health-file", required_argument, NULL, 'H' },
		{ "print-config", no_argument, NULL, 'p' },
		{ "log-json", no_argument, NULL, 'J' },
		{ "log-level", required_argument, NULL, 'L' },
		{ "tls-cert", required_argument, NULL, 1001 },
		{ "tls-key", required_argument, NULL, 1002 },
		{ "tls-ca", required_argument, NULL, 1003 },
		{ "drain-timeout-ms", required_argument, NULL, 1004 },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *threads = NULL, *level = NULL, *src;
	enum log_level lvl;
	int c;

	opterr = 0;
	while ((c = getopt_long(e->argc, e->argv, ":r:m:l:t:i:h", opts, NULL)) != -1) {
		switch (c) {
		case 'r': cfg->router_url = optarg; break;
		case 'm': cfg->model_path = optarg; break;
		case 'l': cfg->listen_url = optarg; break;
		case 'A': cfg->advertise_url = optarg; break;
		case 't': threads = optarg; break;
		case 'i': cfg->id = optarg; break;
		case 'N': cfg->node = optarg; break;
		case 'H': health->path = optarg; break;
		case 'p': *print = true; break;
		case 'J': *log_json = 1; break;
		case 'L': level = optarg; break;
		case 1001: cfg->tls_cert = optarg; break;
		case 1002: cfg->tls_key = optarg; break;
		case 1003: cfg->tls_ca = optarg; break;
		case 1004: {
			char *end;
			unsigned long v;
			errno = 0;
			v = strtoul(optarg, &end, 10);
			if (errno || end == optarg || *end != '\0' || optarg[0] == '-' ||
			        v > 86400000ul)
				return bad("--drain-timeout-ms", "expected an integer in [0, 86400000]");
			cfg->drain_timeout_ms = (uint32_t)v;
			break;
		}
		case 'h':
			usage(stdout);
			return -1;
		case ':':
			return bad(e->argv[optind - 1], "missing value");
		default:
			return bad(e->argv[optind - 1], "unknown option");
		}
	}
	if (optind < e->argc)
		return bad(e->argv[optind], "unexpected argument");
	if (cfg->router_url == NULL)
		return bad("--router", "required (or set EPMOE_ROUTER)");
	if (cfg->model_path == NULL)
		return bad("--model", "required (or set EPMOE_MODEL)");
	if (threads && parse_threads(threads, &cfg->n_threads) != 0) {
		src = NULL;
		for (int i = 1; i <= e->n_env; i++)
			if (strcmp(e->from[i - 1]->flag, "threads") == 0)
				src = e->from[i - 1]->var;
		return bad(src ? src : "--threads", "expected an integer in [0, 1024]");
	}
	if (level && log_parse_level(level, &lvl) != 0)
		return bad("--log-level", "expected debug, info, warn or error");
	if (level)
		log_set_level(lvl);
	if (cfg->id && strlen(cfg->id) > 100)
		return bad("--id", "longer than 100 characters");
	if ((cfg->tls_cert || cfg->tls_key || cfg->tls_ca) &&
	        !(cfg->tls_cert && cfg->tls_key && cfg->tls_ca))
		return bad("--tls-cert/--tls-key/--tls-ca", "give all three or none");
	if (health->path && (health->path[0] == '\0' || strlen(health->path) > 4000))
		return bad("--health-file", "empty or too long a path");
	return 0;
}

int
main(int argc, char **argv)
{
	struct worker_cfg cfg = { .drain_timeout_ms = 30000 };
	struct health health = { 0 };
	struct envargs ea;
	struct worker *w = NULL;
	struct sigaction sa;
	char err[512] = "";
	int rc, log_json = 0;
	bool print = false;

	/* first: a SIGTERM that comes during start-up (a router that dies at
	 * once takes its local workers along) still ends in a clean exit */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* a router that spawned us starts us with SIGTERM blocked (spawn.c):
	 * a stop that came early is delivered to the handler now */
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_UNBLOCK, &term, NULL);
	log_set_name("epmoe-worker");
	if (envargs_init(&ea, env_table, sizeof(env_table) / sizeof(env_table[0]), argc,
	            argv) != 0) {
		fprintf(stderr, "epmoe-worker: out of memory\n");
		return 1;
	}
	if ((rc = parse(&ea, &cfg, &health, &log_json, &print)) != 0 || print) {
		if (rc == 0) {
			printf("epmoe-worker arguments:\n");
			envargs_print(&ea, stdout);
		}
		envargs_fini(&ea);
		return rc < 0 ? 0 : rc;
	}
	log_set_json(log_json);

	if ((rc = worker_new(&w, &cfg, err, sizeof(err))) != 0) {
		log_error("%s", err[0] ? err : epmoe_strerror(rc));
		envargs_fini(&ea);
		return 1;
	}
	if (health.path) {
		health.w = w;
		if (pthread_create(&health.th, NULL, health_main, &health) == 0)
			health.started = true;
		else
			log_warn("cannot start the health file thread");
	}
	rc = worker_serve(w, &stop_flag);
	if (health.started) {
		stop_flag = 1;
		pthread_join(health.th, NULL);
		unlink(health.path);
	}
	worker_free(w);
	envargs_fini(&ea);
	if (rc != 0) {
		log_error("the router refused this worker (see the log)");
		return 1;
	}
	return 0;
}
