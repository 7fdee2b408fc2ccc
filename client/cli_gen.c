/* Options shared by generate, chat and bench server.  See cli_gen.h. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_gen.h"
#include "err.h"

int
cli_gen_init(struct cli_gen *g, const char *cmd)
{
	const char *t;

	memset(g, 0, sizeof(*g));
	epmoe_gen_params_init(&g->p);
	g->server = cli_env("EPMOE_SERVER", EPMOE_DEFAULT_SERVER);
	g->p.model = cli_env("EPMOE_MODEL", NULL);
	g->p.max_tokens = CLI_GEN_DEFAULT_MAX_TOKENS;
	g->p.stop = g->stops;
	g->timeout_s = 600;
	g->api_key = cli_env("EPMOE_API_KEY", NULL);
	if ((t = cli_env("EPMOE_TIMEOUT", NULL)) != NULL &&
	        cli_float(t, 0.001, 86400, &g->timeout_s) != 0)
		return cli_bad(cmd, "EPMOE_TIMEOUT", "expects seconds in (0, 86400]");
	return 0;
}

int
cli_gen_opt(struct cli_gen *g, const char *cmd, int c, const char *arg)
{
	long l;
	double d;

	switch (c) {
	case CLI_GEN_SERVER: {
		enum epmoe_transport tr;
		if (epmoe_url_transport(arg, &tr) != 0)
			return cli_bad(cmd, "--server", "expects http://HOST:PORT or "
			        "tcp://HOST:PORT (NNG), ipc://PATH, inproc://NAME");
		g->server = arg;
		return 0;
	}
	case CLI_GEN_MODEL:
		if (arg[0] == '\0')
			return cli_bad(cmd, "--model", "expects a model id");
		g->p.model = arg;
		return 0;
	case CLI_GEN_MAX_TOKENS:
		if (cli_long(arg, 0, 1 << 20, &l))
			return cli_bad(cmd, "--max-tokens", "expects 0..1048576");
		g->p.max_tokens = (int32_t)l;
		return 0;
	case CLI_GEN_TEMP:
		if (cli_float(arg, 0, 2, &d))
			return cli_bad(cmd, "--temp", "expects a number in [0, 2]");
		g->p.temperature = (float)d;
		return 0;
	case CLI_GEN_TOP_P:
		if (cli_float(arg, 0, 1, &d) || d == 0)
			return cli_bad(cmd, "--top-p", "expects a number in (0, 1]");
		g->p.top_p = (float)d;
		return 0;
	case CLI_GEN_TOP_K:
		if (cli_long(arg, 0, 1 << 30, &l))
			return cli_bad(cmd, "--top-k", "expects an integer >= 0");
		g->p.top_k = (int32_t)l;
		return 0;
	case CLI_GEN_MIN_P:
		if (cli_float(arg, 0, 1, &d))
			return cli_bad(cmd, "--min-p", "expects a number in [0, 1]");
		g->p.min_p = (float)d;
		return 0;
	case CLI_GEN_SEED:
		/* JSON numbers are exact up to 2^53 */
		if (cli_long(arg, 0, 9007199254740992L, &l))
			return cli_bad(cmd, "--seed", "expects an integer in [0, 2^53]");
		g->p.has_seed = 1;
		g->p.seed = (uint64_t)l;
		return 0;
	case CLI_GEN_STOP:
		if (g->p.n_stop == EPMOE_MAX_STOP)
			return cli_bad(cmd, "--stop", "at most 4 stop strings");
		if (arg[0] == '\0')
			return cli_bad(cmd, "--stop", "expects a non-empty string");
		g->stops[g->p.n_stop++] = arg;
		return 0;
	case CLI_GEN_ROUTING:
		if (arg[0] == '\0')
			return cli_bad(cmd, "--routing", "expects a policy spec");
		g->p.routing = arg;
		return 0;
	case CLI_GEN_TIMEOUT:
		if (cli_float(arg, 0.001, 86400, &g->timeout_s))
			return cli_bad(cmd, "--timeout", "expects seconds in (0, 86400]");
		return 0;
	case CLI_GEN_IGNORE_EOS:
		g->p.ignore_eos = 1;
		return 0;
	case CLI_GEN_API_KEY:
		if (arg[0] == '\0')
			return cli_bad(cmd, "--api-key", "expects a key");
		g->api_key = arg;
		return 0;
	}
	return 1;
}

void
cli_gen_help(FILE *f)
{
	fprintf(f,
	        "  -s, --server URL     the router: http://HOST:PORT (HTTP API) or\n"
	        "                       tcp://HOST:PORT, ipc://PATH (NNG API)\n"
	        "                       (env EPMOE_SERVER; default %s)\n"
	        "  -m, --model M        model id (env EPMOE_MODEL; default: the\n"
	        "                       server's first)\n"
	        "  -n, --max-tokens N   tokens to generate at most (default %d)\n"
	        "      --temp T         temperature in [0, 2], 0 = greedy (default:\n"
	        "                       the server's, 1)\n"
	        "      --top-p P        nucleus sampling (default: the server's, 1)\n"
	        "      --top-k K        top-k, 0 = off (default: the server's, off)\n"
	        "      --min-p P        min-p (default: the server's, off)\n"
	        "      --seed S         sampler seed (default: the server picks)\n"
	        "      --stop S         stop string (repeatable, up to %d)\n"
	        "      --routing P      routing policy spec, e.g. native, ssr:k=2\n"
	        "                       (default: the server's)\n"
	        "      --ignore-eos     keep generating past end-of-sequence\n"
	        "      --timeout S      seconds a request may take (env\n"
	        "                       EPMOE_TIMEOUT; default 600)\n"
	        "      --api-key KEY    the router's API key (env EPMOE_API_KEY, which\n"
	        "                       other users cannot read in the process list)\n",
	        EPMOE_DEFAULT_SERVER, CLI_GEN_DEFAULT_MAX_TOKENS, EPMOE_MAX_STOP);
}

int
cli_gen_connect(const struct cli_gen *g, const char *cmd,
        struct epmoe_client **out)
{
	struct epmoe_client_opts o = { 0 };
	char err[512] = "";
	int rc;

	o.timeout_ms = (uint32_t)(g->timeout_s * 1000 + 0.5);
	o.api_key = g->api_key;
	if (o.timeout_ms == 0)
		o.timeout_ms = 1;
	if (o.timeout_ms < 5000)
		o.connect_timeout_ms = o.timeout_ms;
	if ((rc = epmoe_client_new(out, g->server, &o, err, sizeof(err))) != 0) {
		fprintf(stderr, "epmoe %s: %s\n", cmd, err[0] ? err :
		        epmoe_strerror(rc));
		return rc == EPMOE_EINVAL ? 2 : 1;
	}
	return 0;
}

void
cli_gen_print_error(const char *cmd, struct epmoe_client *c)
{
	const struct epmoe_error *e = epmoe_client_error(c);

	if (e->status != 0)
		fprintf(stderr, "epmoe %s: server error %d: %s\n", cmd, e->status,
		        e->message);
	else
		fprintf(stderr, "epmoe %s: %s\n", cmd, e->message[0] ? e->message :
		        epmoe_strerror(e->code));
	if (e->retry_after_ms > 0)
		fprintf(stderr, "epmoe %s: the server asks to retry after %.1f s\n",
		        cmd, e->retry_after_ms / 1000.0);
}
