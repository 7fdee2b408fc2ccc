/* epmoe health: the readiness check of containers and orchestrators, so an
 * image needs no curl.  Asks a router (HTTP GET /health, or the NNG health
 * call) whether it serves, or reads a worker's health file (epmoe-worker
 * --health-file) and checks that it is fresh.
 *
 * Without a URL or --file it checks what this container runs: the worker's
 * file when $EPMOE_HEALTH_FILE names an existing file, else the router at
 * $EPMOE_HTTP (the router's own listen address; a wildcard host becomes
 * the loopback address), else http://127.0.0.1:8080.
 *
 * --live asks less of a router: that it answers at all (also while it
 * waits for workers or drains).  That is the liveness an orchestrator may
 * restart on, and what Docker Swarm needs before it publishes a task's
 * name (workers must reach the router before it can be ready).
 *
 * Exit status: 0 ready (or live), 1 not ready or no answer, 2 usage
 * error. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "cmd.h"
#include "epmoe_client.h"
#include "err.h"

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe health [options] [URL]\n"
	        "  exit 0 when the router at URL serves (HTTP /health answers 200, or\n"
	        "  the NNG health call says ok), 1 otherwise\n"
	        "  URL  http://HOST:PORT or tcp://HOST:PORT (default: the router of\n"
	        "       this container, from $EPMOE_HTTP, else http://127.0.0.1:8080)\n"
	        "      --file F         check a worker's health file instead: it must\n"
	        "                       exist and be rewritten within --max-age seconds\n"
	        "                       (default without URL: $EPMOE_HEALTH_FILE when that\n"
	        "                       file exists)\n"
	        "      --max-age S      seconds (default 10)\n"
	        "      --live           a router only has to answer (it may still wait\n"
	        "                       for workers, or drain): a liveness check\n"
	        "      --timeout MS     give up on the router after MS (default 5000)\n"
	        "  -q, --quiet          print nothing\n"
	        "exit status: 0 ready, 1 not ready or no answer, 2 usage error\n");
}

/* http://HOST:PORT from a router --http address ("0.0.0.0:8080"). */
static void
url_of_listen(const char *addr, char *out, size_t cap)
{
	static const char *const wild[] = { "0.0.0.0", "*", "", "[::]" };
	const char *colon = strrchr(addr, ':');

	if (colon) {
		for (size_t i = 0; i < sizeof(wild) / sizeof(wild[0]); i++) {
			if ((size_t)(colon - addr) == strlen(wild[i]) &&
			        strncmp(addr, wild[i], strlen(wild[i])) == 0) {
				snprintf(out, cap, "http://%s%s", i == 3 ? "[::1]" : "127.0.0.1",
				        colon);
				return;
			}
		}
	}
	snprintf(out, cap, "http://%s", addr);
}

static int
check_file(const char *path, long max_age, int quiet)
{
	struct stat st;
	char line[256] = "";
	FILE *f;
	double age;

	if (stat(path, &st) != 0) {
		if (!quiet)
			printf("not ready: %s: %s\n", path, strerror(errno));
		return 1;
	}
	age = difftime(time(NULL), st.st_mtime);
	if ((f = fopen(path, "r")) != NULL) {
		if (fgets(line, sizeof(line), f) == NULL)
			line[0] = '\0';
		fclose(f);
	}
	line[strcspn(line, "\n")] = '\0';
	if (age > (double)max_age || strncmp(line, "state=", 6) != 0) {
		if (!quiet)
			printf("not ready: %s %s (%.0f s old, limit %ld s)\n", path,
			        line[0] ? line : "empty", age, max_age);
		return 1;
	}
	if (!quiet)
		printf("ok: %s\n", line);
	return 0;
}

static int
check_url(const char *url, long timeout_ms, int live, int quiet)
{
	struct epmoe_client_opts o = { 0 };
	struct epmoe_client *cl = NULL;
	struct epmoe_health h;
	char msg[512] = "";
	int rc;

	o.connect_timeout_ms = o.timeout_ms = (uint32_t)timeout_ms;
	if ((rc = epmoe_client_new(&cl, url, &o, msg, sizeof(msg))) != 0) {
		if (!quiet)
			printf("not ready: %s: %s\n", url, msg[0] ? msg : epmoe_strerror(rc));
		return rc == EPMOE_EINVAL ? 2 : 1;
	}
	rc = epmoe_health(cl, &h);
	if (rc != 0) {
		if (!quiet)
			printf("not ready: %s: %s\n", url, epmoe_client_error(cl)->message);
		epmoe_client_free(cl);
		return 1;
	}
	if (!quiet)
		printf("%s: %s\n", h.ok ? "ok" : live ? "live" : "not ready", h.status);
	epmoe_client_free(cl);
	return h.ok || live ? 0 : 1;
}

int
cmd_health(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "file", required_argument, NULL, 'f' },
		{ "max-age", required_argument, NULL, 'a' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "live", no_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *file = NULL, *url = NULL, *ev;
	long max_age = 10, timeout_ms = 5000;
	char buf[512];
	int c, quiet = 0, live = 0;
	struct stat st;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":qh", opts, NULL)) != -1) {
		switch (c) {
		case 'f': file = optarg; break;
		case 'a':
			if (cli_long(optarg, 1, 86400, &max_age) != 0)
				return cli_bad("health", "--max-age", "expected seconds in 1..86400");
			break;
		case 'T':
			if (cli_long(optarg, 1, 3600000, &timeout_ms) != 0)
				return cli_bad("health", "--timeout", "expected ms in 1..3600000");
			break;
		case 'q': quiet = 1; break;
		case 'l': live = 1; break;
		case 'h': usage(stdout); return 0;
		case ':': return cli_bad("health", argv[optind - 1], "missing value");
		default: return cli_bad("health", argv[optind - 1], "unknown option");
		}
	}
	if (optind < argc)
		url = argv[optind++];
	if (optind < argc)
		return cli_bad("health", argv[optind], "unexpected argument");
	if (file && url)
		return cli_bad("health", "--file", "give a URL or --file, not both");
	if (file)
		return check_file(file, max_age, quiet);
	if (url == NULL) {
		ev = getenv("EPMOE_HEALTH_FILE");
		if (ev && *ev && stat(ev, &st) == 0)
			return check_file(ev, max_age, quiet);
		ev = getenv("EPMOE_HTTP");
		url_of_listen(ev && *ev ? ev : "127.0.0.1:8080", buf, sizeof(buf));
		url = buf;
	}
	return check_url(url, timeout_ms, live, quiet);
}
