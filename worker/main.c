/* epmoe-worker: command line, environment and signals around worker.c.
 * Exit status: 0 after a clean shutdown (SIGTERM / SIGINT), 1 when the
 * worker cannot start or the router refuses it for good, 2 on a usage
 * error. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	        "Serves expert FFN batches for an epmoe-router.\n"
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
	        "      --tls-cert F, --tls-key F, --tls-ca F  mutual TLS with the router:\n"
	        "                       this worker's certificate, its key and the CA the\n"
	        "                       router's certificate must chain to (PEM; env\n"
	        "                       EPMOE_TLS_CERT, EPMOE_TLS_KEY, EPMOE_TLS_CA); URLs\n"
	        "                       are then tls+tcp:// (default listen\n"
	        "                       tls+tcp://127.0.0.1:0)\n"
	        "      --log-json       JSON log lines (env EPMOE_LOG_JSON=1)\n"
	        "      --log-level L    debug, info, warn or error (env EPMOE_LOG_LEVEL;\n"
	        "                       default info)\n"
	        "  -h, --help           this help\n");
}

static int
bad(const char *opt, const char *msg)
{
	fprintf(stderr, "epmoe-worker: %s%s%s\n", opt ? opt : "", opt ? ": " : "",
	        msg);
	fprintf(stderr, "try 'epmoe-worker --help'\n");
	return 2;
}

static const char *
env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
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

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "router", required_argument, NULL, 'r' },
		{ "model", required_argument, NULL, 'm' },
		{ "listen", required_argument, NULL, 'l' },
		{ "advertise", required_argument, NULL, 'A' },
		{ "threads", required_argument, NULL, 't' },
		{ "id", required_argument, NULL, 'i' },
		{ "node", required_argument, NULL, 'N' },
		{ "log-json", no_argument, NULL, 'J' },
		{ "log-level", required_argument, NULL, 'L' },
		{ "tls-cert", required_argument, NULL, 1001 },
		{ "tls-key", required_argument, NULL, 1002 },
		{ "tls-ca", required_argument, NULL, 1003 },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct worker_cfg cfg = { 0 };
	const char *threads = env("EPMOE_THREADS"), *level = env("EPMOE_LOG_LEVEL");
	const char *json = env("EPMOE_LOG_JSON");
	enum log_level lvl;
	struct sigaction sa;
	char err[512] = "";
	int c, rc, log_json = json && strcmp(json, "0") != 0;

	cfg.router_url = env("EPMOE_ROUTER");
	cfg.model_path = env("EPMOE_MODEL");
	cfg.listen_url = env("EPMOE_LISTEN");
	cfg.advertise_url = env("EPMOE_ADVERTISE");
	cfg.id = env("EPMOE_WORKER_ID");
	cfg.node = env("EPMOE_NODE");
	cfg.tls_cert = env("EPMOE_TLS_CERT");
	cfg.tls_key = env("EPMOE_TLS_KEY");
	cfg.tls_ca = env("EPMOE_TLS_CA");
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":r:m:l:t:i:h", opts, NULL)) != -1) {
		switch (c) {
		case 'r': cfg.router_url = optarg; break;
		case 'm': cfg.model_path = optarg; break;
		case 'l': cfg.listen_url = optarg; break;
		case 'A': cfg.advertise_url = optarg; break;
		case 't': threads = optarg; break;
		case 'i': cfg.id = optarg; break;
		case 'N': cfg.node = optarg; break;
		case 'J': log_json = 1; break;
		case 'L': level = optarg; break;
		case 1001: cfg.tls_cert = optarg; break;
		case 1002: cfg.tls_key = optarg; break;
		case 1003: cfg.tls_ca = optarg; break;
		case 'h':
			usage(stdout);
			return 0;
		case ':':
			return bad(argv[optind - 1], "missing value");
		default:
			return bad(argv[optind - 1], "unknown option");
		}
	}
	if (optind < argc)
		return bad(argv[optind], "unexpected argument");
	if (cfg.router_url == NULL)
		return bad("--router", "required (or set EPMOE_ROUTER)");
	if (cfg.model_path == NULL)
		return bad("--model", "required (or set EPMOE_MODEL)");
	if (threads && parse_threads(threads, &cfg.n_threads) != 0)
		return bad("--threads", "expected an integer in [0, 1024]");
	if (level && log_parse_level(level, &lvl) != 0)
		return bad("--log-level", "expected debug, info, warn or error");
	if ((cfg.tls_cert || cfg.tls_key || cfg.tls_ca) &&
	        !(cfg.tls_cert && cfg.tls_key && cfg.tls_ca))
		return bad("--tls-cert/--tls-key/--tls-ca", "give all three or none");
	if (cfg.id && strlen(cfg.id) > 100)
		return bad("--id", "longer than 100 characters");
	log_set_name("epmoe-worker");
	log_set_json(log_json);
	if (level)
		log_set_level(lvl);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	rc = worker_run(&cfg, &stop_flag, err, sizeof(err));
	if (rc != 0) {
		log_error("%s", err[0] ? err : epmoe_strerror(rc));
		return 1;
	}
	return 0;
}
