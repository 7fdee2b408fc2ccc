/* epmoe chat: a conversation with a running router.  Each line read from
 * standard input is a user turn; the whole conversation so far goes to
 * the chat API (HTTP /v1/chat/completions or an NNG CompletionRequest
 * with messages) and the reply streams to stdout.  "/reset" forgets the
 * conversation (not the system message), "/quit" or end of input ends.
 * Works the same with stdin not a terminal (scripts), minus the prompt.
 *
 * Exit status: 0, or 1 if any turn failed (the conversation goes on
 * without that turn), 2 usage error. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_gen.h"
#include "cmd.h"
#include "epmoe_client.h"
#include "err.h"

#define MAX_MESSAGES 512     /* oldest turns are dropped beyond this */
#define MAX_LINE (1u << 20)  /* longest user line accepted */

enum {
	OPT_SYSTEM = CLI_GEN_LAST + 1,
	OPT_NO_STREAM,
	OPT_QUIET,
};

static void
usage(FILE *f)
{
	fprintf(f, "usage: epmoe chat [options]\n"
	           "  chat with a running router: one line of standard input per "
	           "turn;\n"
	           "  /reset forgets the conversation, /quit (or end of input) "
	           "ends it\n");
	cli_gen_help(f);
	fprintf(f,
	        "      --system TEXT    system message at the start (default none)\n"
	        "      --no-stream      print each reply once complete\n"
	        "  -q, --quiet          no usage / timing line per turn on stderr\n"
	        "exit status: 0, 1 if a turn failed, 2 usage error\n");
}

struct history {
	struct epmoe_chat_msg *m; /* contents owned (cast away const to free) */
	size_t n, cap;
	size_t n_fixed;           /* leading messages /reset keeps (system) */
};

static void
hist_drop(struct history *h, size_t from)
{
	for (size_t i = from; i < h->n; i++)
		free((char *)h->m[i].content);
	h->n = from;
}

static int
hist_add(struct history *h, const char *role, const char *text, size_t len)
{
	char *s;

	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 16;
		struct epmoe_chat_msg *nm = realloc(h->m, cap * sizeof(*nm));
		if (nm == NULL)
			return EPMOE_ENOMEM;
		h->m = nm;
		h->cap = cap;
	}
	if ((s = malloc(len + 1)) == NULL)
		return EPMOE_ENOMEM;
	memcpy(s, text, len);
	s[len] = '\0';
	h->m[h->n].role = role;
	h->m[h->n].content = s;
	h->n++;
	return 0;
}

/* Drops the oldest user/assistant pair while over the limit. */
static void
hist_trim(struct history *h)
{
	while (h->n > MAX_MESSAGES && h->n - h->n_fixed >= 2) {
		free((char *)h->m[h->n_fixed].content);
		free((char *)h->m[h->n_fixed + 1].content);
		memmove(h->m + h->n_fixed, h->m + h->n_fixed + 2,
		        (h->n - h->n_fixed - 2) * sizeof(*h->m));
		h->n -= 2;
	}
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

int
cmd_chat(int argc, char **argv)
{
	static const struct option opts[] = {
		CLI_GEN_OPTIONS,
		{ "system", required_argument, NULL, OPT_SYSTEM },
		{ "no-stream", no_argument, NULL, OPT_NO_STREAM },
		{ "quiet", no_argument, NULL, OPT_QUIET },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct cli_gen g;
	struct epmoe_client *cl = NULL;
	struct history h = { 0 };
	const char *system = NULL;
	char *line = NULL;
	size_t line_cap = 0;
	int stream = 1, quiet = 0, c, rc, failed = 0, tty;

	if ((rc = cli_gen_init(&g, "chat")) != 0)
		return rc;
	optind = 1;
	while ((c = getopt_long(argc, argv, CLI_GEN_SHORT "qh", opts, NULL)) != -1) {
		switch (c) {
		case OPT_SYSTEM: system = optarg; break;
		case OPT_NO_STREAM: stream = 0; break;
		case 'q':
		case OPT_QUIET: quiet = 1; break;
		case 'h': usage(stdout); return 0;
		case '?': usage(stderr); return 2;
		default:
			if ((rc = cli_gen_opt(&g, "chat", c, optarg)) != 0) {
				if (rc == 1)
					usage(stderr);
				return 2;
			}
		}
	}
	if (optind != argc) {
		fprintf(stderr, "epmoe chat: unexpected argument '%s' (turns come "
		        "from standard input)\n", argv[optind]);
		return 2;
	}
	g.p.stream = stream;
	if ((rc = cli_gen_connect(&g, "chat", &cl)) != 0)
		return rc;
	if (system != NULL) {
		if (hist_add(&h, "system", system, strlen(system)) != 0)
			goto nomem;
		h.n_fixed = 1;
	}
	tty = isatty(STDIN_FILENO);
	for (;;) {
		struct epmoe_completion r;
		ssize_t n;

		if (tty) {
			fprintf(stderr, "> ");
			fflush(stderr);
		}
		if ((n = getline(&line, &line_cap, stdin)) < 0)
			break;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n == 0)
			continue;
		if ((size_t)n > MAX_LINE || strlen(line) != (size_t)n) {
			fprintf(stderr, "epmoe chat: line too long or with NUL bytes; "
			        "skipped\n");
			failed = 1;
			continue;
		}
		if (strcmp(line, "/quit") == 0 || strcmp(line, "/exit") == 0)
			break;
		if (strcmp(line, "/reset") == 0) {
			hist_drop(&h, h.n_fixed);
			if (tty)
				fprintf(stderr, "(conversation reset)\n");
			continue;
		}
		if (hist_add(&h, "user", line, (size_t)n) != 0)
			goto nomem;
		rc = epmoe_chat(cl, h.m, h.n, &g.p, stream ? on_chunk : NULL, NULL,
		        &r);
		if (rc != 0) {
			if (stream)
				fputc('\n', stdout);
			fflush(stdout);
			cli_gen_print_error("chat", cl);
			hist_drop(&h, h.n - 1); /* the turn did not happen */
			failed = 1;
			continue;
		}
		if (!stream)
			fwrite(r.text, 1, r.text_len, stdout);
		fputc('\n', stdout);
		fflush(stdout);
		if (!quiet)
			fprintf(stderr, "[%s; %u prompt + %u completion tokens; "
			        "%.0f ms]\n", r.finish_reason[0] ? r.finish_reason :
			        "done", r.prompt_tokens, r.completion_tokens,
			        r.total_s * 1e3);
		rc = hist_add(&h, "assistant", r.text, r.text_len);
		epmoe_completion_fini(&r);
		if (rc != 0)
			goto nomem;
		hist_trim(&h);
	}
	rc = failed ? 1 : 0;
	goto out;
nomem:
	fprintf(stderr, "epmoe chat: out of memory\n");
	rc = 1;
out:
	hist_drop(&h, 0);
	free(h.m);
	free(line);
	epmoe_client_free(cl);
	return rc;
}
