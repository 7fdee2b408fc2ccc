/* epmoe generate: one completion from a running router, over HTTP or NNG
 * (the URL scheme decides).  The text goes to stdout (as it arrives when
 * streaming, the default on a terminal), usage and timing to stderr; with
 * --json one JSON object goes to stdout instead.
 *
 * Exit status: 0 done, 1 the server or the transport failed (the
 * server's message is printed), 2 usage error. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "cli.h"
#include "cli_gen.h"
#include "cmd.h"
#include "epmoe_client.h"
#include "err.h"

#define MAX_STDIN (16u << 20)

enum {
	OPT_STREAM = CLI_GEN_LAST + 1,
	OPT_NO_STREAM,
	OPT_CHAT,
	OPT_SYSTEM,
	OPT_JSON,
	OPT_QUIET,
};

static void
usage(FILE *f)
{
	fprintf(f, "usage: epmoe generate [options] TEXT    (TEXT '-': read "
	           "standard input)\n"
	           "  complete TEXT on a running router\n");
	cli_gen_help(f);
	fprintf(f,
	        "      --stream         print the text as it arrives (default when\n"
	        "                       stdout is a terminal)\n"
	        "      --no-stream      print the text once complete (default\n"
	        "                       otherwise)\n"
	        "      --chat           send TEXT as a user message (chat API)\n"
	        "      --system TEXT    with --chat: a system message first\n"
	        "      --json           print one JSON object (id, model, text,\n"
	        "                       finish_reason, usage, timing) on stdout\n"
	        "  -q, --quiet          no usage / timing line on stderr\n"
	        "exit status: 0 done, 1 server or transport error, 2 usage error\n");
}

static int
on_chunk(void *ud, const struct epmoe_chunk *ch)
{
	if (ch->text_len > 0) {
		fwrite(ch->text, 1, ch->text_len, stdout);
		fflush(stdout);
	}
	return 0;
}

static int
print_json(const struct epmoe_completion *r, enum epmoe_transport tr)
{
	cJSON *o = cJSON_CreateObject(), *u, *t, *d;
	char *s;

	if (o == NULL)
		return EPMOE_ENOMEM;
	cJSON_AddStringToObject(o, "id", r->id ? r->id : "");
	cJSON_AddStringToObject(o, "model", r->model ? r->model : "");
	cJSON_AddStringToObject(o, "text", r->text);
	cJSON_AddStringToObject(o, "finish_reason", r->finish_reason);
	if (r->has_usage && (u = cJSON_AddObjectToObject(o, "usage")) != NULL) {
		cJSON_AddNumberToObject(u, "prompt_tokens", r->prompt_tokens);
		cJSON_AddNumberToObject(u, "completion_tokens", r->completion_tokens);
		cJSON_AddNumberToObject(u, "total_tokens",
		        (double)r->prompt_tokens + r->completion_tokens);
		if (r->has_cached && (d = cJSON_AddObjectToObject(u,
		        "prompt_tokens_details")) != NULL)
			cJSON_AddNumberToObject(d, "cached_tokens",
			        r->cached_tokens);
	} else {
		cJSON_AddNullToObject(o, "usage");
	}
	if (r->n_tokens > 0) {
		cJSON *a = cJSON_AddArrayToObject(o, "tokens");
		for (size_t i = 0; a != NULL && i < r->n_tokens; i++)
			cJSON_AddItemToArray(a, cJSON_CreateNumber(r->tokens[i]));
	}
	if ((t = cJSON_AddObjectToObject(o, "timing")) != NULL) {
		cJSON_AddNumberToObject(t, "ttft_ms", r->ttft_s * 1e3);
		cJSON_AddNumberToObject(t, "total_ms", r->total_s * 1e3);
	}
	cJSON_AddStringToObject(o, "transport",
	        tr == EPMOE_TRANSPORT_HTTP ? "http" : "nng");
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (s == NULL)
		return EPMOE_ENOMEM;
	printf("%s\n", s);
	free(s);
	return 0;
}

int
cmd_generate(int argc, char **argv)
{
	static const struct option opts[] = {
		CLI_GEN_OPTIONS,
		{ "stream", no_argument, NULL, OPT_STREAM },
		{ "no-stream", no_argument, NULL, OPT_NO_STREAM },
		{ "chat", no_argument, NULL, OPT_CHAT },
		{ "system", required_argument, NULL, OPT_SYSTEM },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "quiet", no_argument, NULL, OPT_QUIET },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct cli_gen g;
	struct epmoe_client *cl = NULL;
	struct epmoe_completion r;
	struct epmoe_chat_msg msgs[2];
	size_t n_msgs = 0;
	const char *text, *system = NULL;
	char *input = NULL;
	int stream = -1, chat = 0, json = 0, quiet = 0, c, rc;

	if ((rc = cli_gen_init(&g, "generate")) != 0)
		return rc;
	optind = 1;
	while ((c = getopt_long(argc, argv, CLI_GEN_SHORT "qh", opts, NULL)) != -1) {
		switch (c) {
		case OPT_STREAM: stream = 1; break;
		case OPT_NO_STREAM: stream = 0; break;
		case OPT_CHAT: chat = 1; break;
		case OPT_SYSTEM: system = optarg; break;
		case OPT_JSON: json = 1; break;
		case 'q':
		case OPT_QUIET: quiet = 1; break;
		case 'h': usage(stdout); return 0;
		case '?': usage(stderr); return 2;
		default:
			if ((rc = cli_gen_opt(&g, "generate", c, optarg)) != 0) {
				if (rc == 1)
					usage(stderr);
				return 2;
			}
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "epmoe generate: %s\n", optind >= argc ?
		        "no TEXT given" : "give the TEXT as one argument (quote it)");
		usage(stderr);
		return 2;
	}
	if (system != NULL && !chat)
		return cli_bad("generate", "--system", "only with --chat");
	text = argv[optind];
	if (strcmp(text, "-") == 0) {
		size_t len;
		if (cli_read_file("/dev/stdin", &input, &len) != 0) {
			fprintf(stderr, "epmoe generate: cannot read standard input\n");
			return 1;
		}
		if (len > MAX_STDIN || strlen(input) != len) {
			fprintf(stderr, "epmoe generate: standard input is too large or "
			        "holds NUL bytes\n");
			free(input);
			return 2;
		}
		text = input;
	}
	if (stream < 0)
		stream = !json && isatty(STDOUT_FILENO);
	g.p.stream = stream;
	if ((rc = cli_gen_connect(&g, "generate", &cl)) != 0)
		goto out;
	if (chat) {
		if (system != NULL)
			msgs[n_msgs++] = (struct epmoe_chat_msg){ "system", system };
		msgs[n_msgs++] = (struct epmoe_chat_msg){ "user", text };
		rc = epmoe_chat(cl, msgs, n_msgs, &g.p,
		        stream && !json ? on_chunk : NULL, NULL, &r);
	} else {
		rc = epmoe_complete(cl, text, &g.p,
		        stream && !json ? on_chunk : NULL, NULL, &r);
	}
	if (rc != 0) {
		if (stream && !json)
			fputc('\n', stdout);
		cli_gen_print_error("generate", cl);
		rc = rc == EPMOE_EINVAL && epmoe_client_error(cl)->status == 0 ? 2 : 1;
		goto out;
	}
	if (json) {
		rc = print_json(&r, epmoe_client_transport(cl)) == 0 ? 0 : 1;
	} else {
		if (!stream)
			fwrite(r.text, 1, r.text_len, stdout);
		if (r.text_len == 0 || r.text[r.text_len - 1] != '\n')
			fputc('\n', stdout);
	}
	fflush(stdout);
	if (!quiet) {
		fprintf(stderr, "[%s", r.finish_reason[0] ? r.finish_reason : "done");
		if (r.has_usage)
			fprintf(stderr, "; %u prompt + %u completion tokens",
			        r.prompt_tokens, r.completion_tokens);
		if (r.has_usage && r.has_cached)
			fprintf(stderr, " (%u prompt tokens cached)",
			        r.cached_tokens);
		fprintf(stderr, "; first text %.0f ms, total %.0f ms", r.ttft_s * 1e3,
		        r.total_s * 1e3);
		/* streamed: the decode rate after the first text; else the
		 * whole request's rate */
		if (r.has_usage && r.n_chunks > 1 && r.completion_tokens > 1 &&
		        r.total_s > r.ttft_s)
			fprintf(stderr, ", %.1f tok/s after the first",
			        (r.completion_tokens - 1) / (r.total_s - r.ttft_s));
		else if (r.has_usage && r.completion_tokens > 0 && r.total_s > 0)
			fprintf(stderr, ", %.1f tok/s", r.completion_tokens / r.total_s);
		fprintf(stderr, "]\n");
	}
	epmoe_completion_fini(&r);
out:
	epmoe_client_free(cl);
	free(input);
	return rc;
}
