/* The client library and the CLI commands that use it, without a router:
 * the SSE parser gives the same events at every chunk boundary of a
 * recorded stream; the client's JSON matches what the server's oai
 * module builds and parses (both directions); URL schemes pick the right
 * transport; bad arguments give exit status 2 and transport failures 1;
 * and the whole request paths run against small scripted servers: an
 * NNG REP socket (inproc) that streams by polling with overlapping
 * offsets, errors and cancels, and an HTTP server on a loopback socket
 * that sends SSE in ragged pieces and error envelopes. */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cJSON.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "bench.h"
#include "cl_oai.h"
#include "cmd.h"
#include "epmoe_client.h"
#include "err.h"
#include "oai.h"
#include "sse.h"
#include "testutil.h"
#include "wire.h"
#include "wire_nng.h"

/* ---- SSE ---- */

/* Events collected as "type|data" joined by "\x1e". */
struct evlog {
	char buf[16384];
	size_t len;
	int n;
	int stop_at; /* return 7 on this event (1-based); 0: never */
};

static int
ev_collect(void *ud, const char *type, const char *data, size_t len)
{
	struct evlog *l = ud;
	int k;

	ck_assert_uint_eq(strlen(data), len); /* NUL-terminated, no NULs */
	k = snprintf(l->buf + l->len, sizeof(l->buf) - l->len, "%s|%s\x1e", type,
	        data);
	ck_assert(k > 0 && (size_t)k < sizeof(l->buf) - l->len);
	l->len += (size_t)k;
	l->n++;
	return l->stop_at == l->n ? 7 : 0;
}

/* A stream as the router sends it (the server's own builders), followed
 * by what other servers may send: comments, CRLF and lone CR line ends,
 * multi-line data, named events, "data:" without a space, an event
 * without data, and an unfinished event at the end. */
static char *
recorded_stream(size_t *len, char *expect, size_t expect_size)
{
	static const char *pieces[] = { "Hel", "lo, ", "w\xc3\xa9rld", "!" };
	char *s = malloc(65536), *frame;
	size_t n = 0, fl, e = 0;
	struct oai_choice ch;
	struct oai_usage u = { 5, 4, 0 };
	cJSON *j;

	ck_assert_ptr_nonnull(s);
	for (size_t i = 0; i < 4; i++) {
		memset(&ch, 0, sizeof(ch));
		ch.text = pieces[i];
		ch.text_len = strlen(pieces[i]);
		ch.finish_reason = i == 3 ? "length" : NULL;
		j = oai_completion_chunk("cmpl-1", "tiny", 1700000000, &ch, 1);
		ck_assert_ptr_nonnull(j);
		ck_assert_int_eq(oai_sse_frame(j, &frame, &fl), 0);
		cJSON_Delete(j);
		memcpy(s + n, frame, fl);
		n += fl;
		/* the expected event: the frame minus "data: " and "\n\n" */
		e += (size_t)snprintf(expect + e, expect_size - e, "message|%.*s\x1e",
		        (int)(fl - 8), frame + 6);
		free(frame);
	}
	j = oai_usage_chunk("cmpl-1", "tiny", 1700000000, 0, &u);
	ck_assert_int_eq(oai_sse_frame(j, &frame, &fl), 0);
	cJSON_Delete(j);
	memcpy(s + n, frame, fl);
	n += fl;
	e += (size_t)snprintf(expect + e, expect_size - e, "message|%.*s\x1e",
	        (int)(fl - 8), frame + 6);
	free(frame);
	static const char tail[] =
	        ": keep-alive comment\r\n"
	        "\r\n"
	        "event: ping\r\n"
	        "data: {\"a\":1}\r\n"
	        "\r\n"
	        "data:no-space\rdata:  two spaces\r\r"
	        "id: 5\nretry: 100\n\n"
	        "data: line1\ndata: line2\ndata\n\n"
	        "data: [DONE]\n\n"
	        "data: unfinished\n";
	memcpy(s + n, tail, sizeof(tail) - 1);
	n += sizeof(tail) - 1;
	snprintf(expect + e, expect_size - e, "%s",
	        "ping|{\"a\":1}\x1e"
	        "message|no-space\n two spaces\x1e"
	        "message|line1\nline2\n\x1e"
	        "message|[DONE]\x1e");
	*len = n;
	return s;
}

static void
parse_in_pieces(const char *s, size_t len, const size_t *cuts, size_t n_cuts,
        struct evlog *l)
{
	struct sse_parser p;
	size_t at = 0;

	memset(l, 0, sizeof(*l));
	sse_parser_init(&p, ev_collect, l);
	for (size_t i = 0; i <= n_cuts; i++) {
		size_t end = i < n_cuts ? cuts[i] : len;
		ck_assert_int_eq(sse_feed(&p, s + at, end - at), 0);
		at = end;
	}
	sse_parser_fini(&p);
}

START_TEST(sse_events_are_the_same_at_every_chunk_boundary)
{
	static char expect[16384];
	struct evlog l;
	size_t len, cut[2];
	char *s = recorded_stream(&len, expect, sizeof(expect));

	parse_in_pieces(s, len, NULL, 0, &l);
	ck_assert_str_eq(l.buf, expect);
	ck_assert_int_eq(l.n, 9);
	/* two pieces, cut at every byte offset (inside "\r\n" too) */
	for (size_t i = 0; i <= len; i++) {
		cut[0] = i;
		parse_in_pieces(s, len, cut, 1, &l);
		ck_assert_msg(strcmp(l.buf, expect) == 0, "cut at %zu", i);
	}
	/* three pieces: every first cut, second cut 1..17 bytes later */
	for (size_t i = 0; i <= len; i++)
		for (size_t k = 1; k <= 17 && i + k <= len; k += 4) {
			cut[0] = i;
			cut[1] = i + k;
			parse_in_pieces(s, len, cut, 2, &l);
			ck_assert_msg(strcmp(l.buf, expect) == 0, "cuts at %zu, %zu", i,
			        i + k);
		}
	/* one byte at a time */
	{
		struct sse_parser p;
		memset(&l, 0, sizeof(l));
		sse_parser_init(&p, ev_collect, &l);
		for (size_t i = 0; i < len; i++)
			ck_assert_int_eq(sse_feed(&p, s + i, 1), 0);
		sse_parser_fini(&p);
		ck_assert_str_eq(l.buf, expect);
	}
	free(s);
}
END_TEST

START_TEST(sse_callback_stop_ends_the_parse)
{
	struct sse_parser p;
	struct evlog l;
	const char *s = "data: a\n\ndata: b\n\ndata: c\n\n";

	memset(&l, 0, sizeof(l));
	l.stop_at = 2;
	sse_parser_init(&p, ev_collect, &l);
	ck_assert_int_eq(sse_feed(&p, s, strlen(s)), 7);
	ck_assert_int_eq(l.n, 2);
	ck_assert_int_eq(sse_feed(&p, "data: d\n\n", 9), EPMOE_ESTATE);
	ck_assert_int_eq(l.n, 2);
	sse_parser_fini(&p);
}
END_TEST

START_TEST(sse_blank_lines_and_comments_alone_make_no_event)
{
	struct sse_parser p;
	struct evlog l;
	const char *s = "\n\n: hi\n\nevent: x\n\nid: 3\n\r\n";

	memset(&l, 0, sizeof(l));
	sse_parser_init(&p, ev_collect, &l);
	ck_assert_int_eq(sse_feed(&p, s, strlen(s)), 0);
	ck_assert_int_eq(l.n, 0);
	/* the "event: x" above must not leak into the next event */
	ck_assert_int_eq(sse_feed(&p, "data: y\n\n", 9), 0);
	ck_assert_str_eq(l.buf, "message|y\x1e");
	sse_parser_fini(&p);
}
END_TEST

START_TEST(sse_oversized_line_is_refused)
{
	struct sse_parser p;
	struct evlog l;
	size_t n = SSE_MAX_EVENT + 16;
	char *big = malloc(n);

	ck_assert_ptr_nonnull(big);
	memset(big, 'x', n);
	memcpy(big, "data: ", 6);
	memset(&l, 0, sizeof(l));
	sse_parser_init(&p, ev_collect, &l);
	ck_assert_int_eq(sse_feed(&p, big, n), EPMOE_ERANGE);
	ck_assert_int_eq(l.n, 0);
	sse_parser_fini(&p);
	free(big);
}
END_TEST

/* ---- JSON against the server's oai module ---- */

static const char *const models[] = { "tiny" };

START_TEST(request_body_parses_on_the_server_as_given)
{
	struct epmoe_gen_params p;
	const char *stops[] = { "\n\n", "END" };
	struct oai_config cfg = { models, 1, 512, 0 };
	struct oai_completion_req r;
	struct oai_chat_req cr;
	struct oai_error e;
	struct epmoe_chat_msg msgs[] = { { "system", "be brief" },
	                                 { "user", "h\xc3\xa9llo \"q\"" } };
	char *body;

	epmoe_gen_params_init(&p);
	p.max_tokens = 7;
	p.temperature = 0.5f;
	p.top_p = 0.9f;
	p.top_k = 40;
	p.min_p = 0.05f;
	p.has_seed = 1;
	p.seed = 9007199254740991ull;
	p.stop = stops;
	p.n_stop = 2;
	p.routing = "ssr:k=2";
	p.stream = 1;
	ck_assert_int_eq(cl_oai_request("tiny", "Once upon", NULL, 0, &p, &body), 0);
	memset(&e, 0, sizeof(e));
	ck_assert_msg(oai_parse_completion(body, strlen(body), &cfg, &r, &e) == 0,
	        "%s: %s", body, e.message);
	ck_assert_str_eq(r.model, "tiny");
	ck_assert_str_eq(r.prompt, "Once upon");
	ck_assert_int_eq(r.gen.max_tokens, 7);
	ck_assert_double_eq_tol(r.gen.temperature, 0.5, 1e-6);
	ck_assert_double_eq_tol(r.gen.top_p, 0.9, 1e-6);
	ck_assert_int_eq(r.gen.top_k, 40);
	ck_assert_double_eq_tol(r.gen.min_p, 0.05, 1e-6);
	ck_assert_int_eq(r.gen.has_seed, 1);
	ck_assert_uint_eq(r.gen.seed, 9007199254740991ull);
	ck_assert_uint_eq(r.gen.n_stop, 2);
	ck_assert_str_eq(r.gen.stop[0], "\n\n");
	ck_assert_str_eq(r.gen.stop[1], "END");
	ck_assert_int_eq(r.gen.stream, 1);
	ck_assert_int_eq(r.gen.include_usage, 1);
	ck_assert_str_eq(r.gen.routing, "ssr:k=2");
	oai_completion_req_fini(&r);
	free(body);

	/* defaults are left out: the server's defaults apply */
	epmoe_gen_params_init(&p);
	ck_assert_int_eq(cl_oai_request(NULL, "x", msgs, 2, &p, &body), 0);
	ck_assert_ptr_null(strstr(body, "temperature"));
	ck_assert_ptr_null(strstr(body, "stream"));
	ck_assert_ptr_null(strstr(body, "\"model\""));
	cfg.model_optional = 1;
	ck_assert_msg(oai_parse_chat(body, strlen(body), &cfg, &cr, &e) == 0,
	        "%s: %s", body, e.message);
	ck_assert_uint_eq(cr.n_messages, 2);
	ck_assert_int_eq(cr.messages[0].role, OAI_ROLE_SYSTEM);
	ck_assert_str_eq(cr.messages[1].content, "h\xc3\xa9llo \"q\"");
	ck_assert_int_eq(cr.gen.has_max_tokens, 0);
	ck_assert_int_eq(cr.gen.has_temperature, 0);
	ck_assert_int_eq(cr.gen.stream, 0);
	oai_chat_req_fini(&cr);
	free(body);

	ck_assert_int_eq(cl_oai_request(NULL, NULL, NULL, 0, &p, &body),
	        EPMOE_EINVAL);
	ck_assert_int_eq(cl_oai_request(NULL, NULL, msgs, 0, &p, &body),
	        EPMOE_EINVAL);
}
END_TEST

static struct cl_oai_delta
parse_tree(cJSON *j)
{
	struct cl_oai_delta d;
	char *s = cJSON_PrintUnformatted(j);

	ck_assert_ptr_nonnull(s);
	ck_assert_msg(cl_oai_parse(s, strlen(s), &d) == 0, "%s", s);
	free(s);
	cJSON_Delete(j);
	return d;
}

START_TEST(server_responses_decode_to_text_finish_and_usage)
{
	struct oai_choice ch;
	struct oai_usage u = { 11, 3, 0 };
	struct cl_oai_delta d;
	struct oai_error e;

	memset(&ch, 0, sizeof(ch));
	ch.text = "abc";
	ch.text_len = 3;
	ch.finish_reason = "stop";
	d = parse_tree(oai_completion_response("cmpl-9", "tiny", 1, &ch, &u));
	ck_assert_str_eq(d.text, "abc");
	ck_assert_str_eq(d.finish_reason, "stop");
	ck_assert_str_eq(d.id, "cmpl-9");
	ck_assert_str_eq(d.model, "tiny");
	ck_assert_int_eq(d.has_usage, 1);
	ck_assert_uint_eq(d.prompt_tokens, 11);
	ck_assert_uint_eq(d.completion_tokens, 3);
	cl_oai_delta_fini(&d);

	d = parse_tree(oai_chat_response("chatcmpl-1", "tiny", 1, &ch, &u));
	ck_assert_str_eq(d.text, "abc");
	ck_assert_str_eq(d.finish_reason, "stop");
	cl_oai_delta_fini(&d);

	/* chat chunks: the role-only first chunk has no text */
	ch.text = NULL;
	ch.finish_reason = NULL;
	d = parse_tree(oai_chat_chunk("c", "tiny", 1, "assistant", &ch, 1));
	ck_assert_ptr_null(d.text);
	ck_assert_str_eq(d.finish_reason, "");
	ck_assert_int_eq(d.has_usage, 0); /* "usage": null */
	cl_oai_delta_fini(&d);
	ch.text = "z";
	ch.text_len = 1;
	d = parse_tree(oai_chat_chunk("c", "tiny", 1, NULL, &ch, 0));
	ck_assert_str_eq(d.text, "z");
	cl_oai_delta_fini(&d);
	d = parse_tree(oai_usage_chunk("c", "tiny", 1, 1, &u));
	ck_assert_ptr_null(d.text);
	ck_assert_int_eq(d.has_usage, 1);
	ck_assert_uint_eq(d.completion_tokens, 3);
	cl_oai_delta_fini(&d);

	/* cached prompt tokens: OpenAI's prompt_tokens_details, else
	 * llama-server's timings (prompt_n: the tokens it evaluated) */
	u.cached_tokens = 8;
	d = parse_tree(oai_usage_chunk("c", "tiny", 1, 0, &u));
	ck_assert_int_eq(d.has_cached, 1);
	ck_assert_uint_eq(d.cached_tokens, 8);
	cl_oai_delta_fini(&d);
	static const char *const ll[] = {
		"{\"usage\":{\"prompt_tokens\":300,\"completion_tokens\":4},"
		"\"timings\":{\"prompt_n\":44,\"predicted_n\":4}}",
		"{\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":4}}",
	};
	ck_assert_int_eq(cl_oai_parse(ll[0], strlen(ll[0]), &d), 0);
	ck_assert_int_eq(d.has_cached, 1);
	ck_assert_uint_eq(d.cached_tokens, 256);
	cl_oai_delta_fini(&d);
	ck_assert_int_eq(cl_oai_parse(ll[1], strlen(ll[1]), &d), 0);
	ck_assert_int_eq(d.has_cached, 0);
	cl_oai_delta_fini(&d);

	/* the error envelope */
	oai_error_set(&e, 429, NULL, "queue full (%d waiting)", 64);
	d = parse_tree(oai_error_body(&e));
	ck_assert_int_eq(d.is_error, 1);
	ck_assert_str_eq(d.error, "queue full (64 waiting)");
	cl_oai_delta_fini(&d);
}
END_TEST

START_TEST(malformed_responses_are_protocol_errors)
{
	static const char *bad[] = {
		"", "not json", "[1,2]", "{\"choices\": 3}",
		"{\"choices\": [{\"text\": 5}]}",
		"{\"choices\": [{\"delta\": {\"content\": []}}]}",
		"{\"choices\": [{\"finish_reason\": 1}]}",
		"{\"usage\": {\"completion_tokens\": -1}}",
		"{\"usage\": {\"prompt_tokens\": 1.5}}",
		"{\"id\": 7}",
	};
	struct cl_oai_delta d;
	char msg[64];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(cl_oai_parse(bad[i], strlen(bad[i]), &d) == EPMOE_EPROTO,
		        "accepted: %s", bad[i]);
	/* error messages: the envelope, else the body, else the status */
	cl_oai_error_message("{\"error\":{\"message\":\"no such model\"}}", 37,
	        404, msg, sizeof(msg));
	ck_assert_str_eq(msg, "no such model");
	cl_oai_error_message("Bad Gateway\r\n", 13, 502, msg, sizeof(msg));
	ck_assert_str_eq(msg, "Bad Gateway");
	cl_oai_error_message(NULL, 0, 502, msg, sizeof(msg));
	ck_assert_str_eq(msg, "HTTP 502");
}
END_TEST

/* ---- URLs and parameters ---- */

START_TEST(url_scheme_selects_the_transport)
{
	static const struct {
		const char *url;
		int rc;
		enum epmoe_transport tr;
	} cases[] = {
		{ "http://127.0.0.1:8080", 0, EPMOE_TRANSPORT_HTTP },
		{ "HTTP://localhost:80/v1", 0, EPMOE_TRANSPORT_HTTP },
		{ "https://example:443", 0, EPMOE_TRANSPORT_HTTP },
		{ "tcp://127.0.0.1:5555", 0, EPMOE_TRANSPORT_NNG },
		{ "tcp4://127.0.0.1:5555", 0, EPMOE_TRANSPORT_NNG },
		{ "ipc:///tmp/epmoe.sock", 0, EPMOE_TRANSPORT_NNG },
		{ "inproc://x", 0, EPMOE_TRANSPORT_NNG },
		{ "tls+tcp://127.0.0.1:5556", 0, EPMOE_TRANSPORT_NNG },
		{ "127.0.0.1:8080", EPMOE_EINVAL, 0 },
		{ "ftp://host", EPMOE_EINVAL, 0 },
		{ "http://", EPMOE_EINVAL, 0 },
		{ "tcp://", EPMOE_EINVAL, 0 },
		{ "http://a b", EPMOE_EINVAL, 0 },
		{ "ws://127.0.0.1:1", EPMOE_EINVAL, 0 },
		{ "", EPMOE_EINVAL, 0 },
	};
	enum epmoe_transport tr;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		tr = 0;
		ck_assert_msg(epmoe_url_transport(cases[i].url, &tr) == cases[i].rc,
		        "%s", cases[i].url);
		if (cases[i].rc == 0)
			ck_assert_msg(tr == cases[i].tr, "%s", cases[i].url);
	}
	ck_assert_int_eq(epmoe_url_transport(NULL, &tr), EPMOE_EINVAL);
}
END_TEST

START_TEST(client_new_refuses_bad_urls_with_a_message)
{
	struct epmoe_client *c = (struct epmoe_client *)0x1;
	char err[256] = "";

	ck_assert_int_eq(epmoe_client_new(&c, "localhost:8080", NULL, err,
	        sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_eq(c, (struct epmoe_client *)0x1); /* untouched */
	ck_assert_ptr_nonnull(strstr(err, "localhost:8080"));
	/* NNG dials at once: nobody listens there */
	ck_assert_int_eq(epmoe_client_new(&c, "inproc://nobody-here", NULL, err,
	        sizeof(err)), EPMOE_EIO);
	ck_assert_ptr_nonnull(strstr(err, "inproc://nobody-here"));
	/* HTTP connects on first use */
	ck_assert_int_eq(epmoe_client_new(&c, "http://127.0.0.1:1/", NULL, err,
	        sizeof(err)), 0);
	ck_assert_int_eq(epmoe_client_transport(c), EPMOE_TRANSPORT_HTTP);
	epmoe_client_free(c);
	epmoe_client_free(NULL);
}
END_TEST

START_TEST(gen_params_out_of_range_are_refused_before_sending)
{
	struct epmoe_gen_params p;
	struct epmoe_client *c;
	const char *empty[] = { "" };
	char why[128];

	epmoe_gen_params_init(&p);
	ck_assert_int_eq(epmoe_gen_params_check(&p, why, sizeof(why)), 0);
	p.temperature = 2.5f;
	ck_assert_int_eq(epmoe_gen_params_check(&p, why, sizeof(why)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(why, "temperature"));
	epmoe_gen_params_init(&p);
	p.top_p = 0;
	ck_assert_int_eq(epmoe_gen_params_check(&p, NULL, 0), EPMOE_EINVAL);
	epmoe_gen_params_init(&p);
	p.max_tokens = -2;
	ck_assert_int_eq(epmoe_gen_params_check(&p, NULL, 0), EPMOE_EINVAL);
	epmoe_gen_params_init(&p);
	p.n_stop = 5;
	ck_assert_int_eq(epmoe_gen_params_check(&p, NULL, 0), EPMOE_EINVAL);
	p.n_stop = 1;
	p.stop = empty;
	ck_assert_int_eq(epmoe_gen_params_check(&p, NULL, 0), EPMOE_EINVAL);
	/* the call fails before any connection is tried (port 1: none) */
	ck_assert_int_eq(epmoe_client_new(&c, "http://127.0.0.1:1", NULL, NULL, 0), 0);
	ck_assert_int_eq(epmoe_complete(c, "x", &p, NULL, NULL, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(epmoe_client_error(c)->status, 0);
	ck_assert_ptr_nonnull(strstr(epmoe_client_error(c)->message, "stop"));
	epmoe_client_free(c);
}
END_TEST

/* ---- CLI argument errors (exit status 2) and transport errors (1) ---- */

static int
run_cmd(int (*fn)(int, char **), const char *a0, ...)
{
	char *argv[32];
	int argc = 0;
	va_list ap;

	argv[argc++] = (char *)a0;
	va_start(ap, a0);
	for (char *s; (s = va_arg(ap, char *)) != NULL && argc < 31;)
		argv[argc++] = s;
	va_end(ap);
	argv[argc] = NULL;
	return fn(argc, argv);
}

START_TEST(cli_bad_arguments_exit_with_status_2)
{
	/* the messages are for people; the forked test drops them */
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stderr));
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "a", "b", NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "--temp", "x", "hi",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "--temp", "2.1", "hi",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "-n", "-1", "hi",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "--top-p", "0", "hi",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "--server",
	        "localhost:8080", "hi", NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "--stop", "a",
	        "--stop", "b", "--stop", "c", "--stop", "d", "--stop", "e", "hi",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "--system", "s", "hi",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "--bogus", "hi",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_chat, "chat", "extra", NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_chat, "chat", "--seed", "-3", NULL), 2);
	ck_assert_int_eq(run_cmd(bench_server, "server", "--concurrency", "0",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(bench_server, "server", "--requests", "x",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(bench_server, "server", "--duration", "-1",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_bench, "bench", "nosuchmode", NULL), 2);
	/* the in-process benchmarks and the KV cache type */
	ck_assert_int_eq(run_cmd(bench_engine, "engine", "--model", "m", "--batch", "1,a",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(bench_engine, "engine", "--model", "m", "--batch", "0",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(bench_engine, "engine", "--model", "m", "--batch",
	        "1,2,3,4,5,6,7,8,9", NULL), 2);
	ck_assert_int_eq(run_cmd(bench_engine, "engine", "--model", "m", "--kv-type", "q8",
	        NULL), 2);
	ck_assert_int_eq(run_cmd(bench_engine, "engine", NULL), 2);
	ck_assert_int_eq(run_cmd(bench_machine, "machine", "--mb", "1", NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_run, "run", "--model", "m", "-p", "x", "--kv-type",
	        "f64", NULL), 2);
	ck_assert_int_eq(run_cmd(cmd_perplexity, "perplexity", "--model", "m", "--file", "f",
	        "--kv-type", "", NULL), 2);
	/* help is not an error */
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stdout));
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "--help", NULL), 0);
	ck_assert_int_eq(run_cmd(bench_server, "server", "--help", NULL), 0);
}
END_TEST

START_TEST(cli_unreachable_server_exits_with_status_1)
{
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stderr));
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stdout));
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "--server",
	        "http://127.0.0.1:1", "--timeout", "5", "hi", NULL), 1);
	ck_assert_int_eq(run_cmd(cmd_generate, "generate", "--server",
	        "tcp://127.0.0.1:1", "hi", NULL), 1);
	ck_assert_int_eq(run_cmd(bench_server, "server", "--server",
	        "http://127.0.0.1:1", "-q", NULL), 1);
}
END_TEST

/* ---- a scripted NNG server ---- */

#define NNG_TEXT "The quick brown fox"
static const uint32_t nng_toks[] = { 10, 11, 12, 13 };
/* text byte offset after each token */
static const size_t nng_tok_end[] = { 3, 9, 15, 19 };

struct nng_srv {
	nng_socket sock;
	pthread_t th;
	int mode;              /* 0 normal, 1 busy error, 2 failing stream */
	int n_polls, n_cancels, n_complete;
	uint32_t last_wait_ms;
	char last_prompt[64];
	size_t last_n_messages;
	int last_stream;
	float last_temp;
	int has_temp;
	int gave;              /* tokens handed out so far */
};

static void
nng_reply(struct nng_srv *s, Epmoe__ClientReply *rep)
{
	nng_msg *m;

	rep->version = EPMOE_PROTO_VERSION;
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_CLIENT_REPLY, &rep->base, NULL, 0), 0);
	ck_assert_int_eq(nng_sendmsg(s->sock, m, 0), 0);
}

/* The part of the completion from token tok_from on; the text from the
 * token's start (so a chunk may repeat bytes the client has: it must
 * skip them by the offsets). */
static void
fill_chunk(Epmoe__CompletionResponse *cr, size_t tok_from, size_t tok_to,
        uint32_t *toks_buf, char *text_buf)
{
	size_t t0 = tok_from == 0 ? 0 : nng_tok_end[tok_from - 1];
	size_t t1 = tok_to == 0 ? 0 : nng_tok_end[tok_to - 1];

	for (size_t i = tok_from; i < tok_to; i++)
		toks_buf[i - tok_from] = nng_toks[i];
	cr->tokens = toks_buf;
	cr->n_tokens = tok_to - tok_from;
	cr->token_offset = (uint32_t)tok_from;
	memcpy(text_buf, NNG_TEXT + t0, t1 - t0);
	text_buf[t1 - t0] = '\0';
	cr->text = text_buf;
	cr->text_offset = t0;
}

static void *
nng_srv_main(void *arg)
{
	struct nng_srv *s = arg;

	for (;;) {
		Epmoe__ClientReply rep = EPMOE__CLIENT_REPLY__INIT;
		Epmoe__CompletionResponse cr = EPMOE__COMPLETION_RESPONSE__INIT;
		Epmoe__Usage us = EPMOE__USAGE__INIT;
		Epmoe__ErrorReply er = EPMOE__ERROR_REPLY__INIT;
		Epmoe__CancelReply cn = EPMOE__CANCEL_REPLY__INIT;
		Epmoe__HealthReply hr = EPMOE__HEALTH_REPLY__INIT;
		Epmoe__ModelsReply mr = EPMOE__MODELS_REPLY__INIT;
		Epmoe__ModelInfo mi = EPMOE__MODEL_INFO__INIT, *mip = &mi;
		Epmoe__TokenizeReply tr = EPMOE__TOKENIZE_REPLY__INIT;
		ProtobufCMessage *hdr;
		Epmoe__ClientMsg *msg;
		const float *rows;
		size_t nf;
		uint32_t tb[8];
		char txt[64];
		nng_msg *m;

		if (nng_recvmsg(s->sock, &m, 0) != 0)
			return NULL; /* closed: the test is over */
		ck_assert_int_eq(wire_nng_unpack(m, WIRE_CLIENT, NULL, &hdr, &rows,
		        &nf), 0);
		nng_msg_free(m);
		msg = (Epmoe__ClientMsg *)hdr;
		us.prompt_tokens = 5;
		us.completion_tokens = 4;
		switch (msg->msg_case) {
		case EPMOE__CLIENT_MSG__MSG_COMPLETE:
			s->n_complete++;
			snprintf(s->last_prompt, sizeof(s->last_prompt), "%s",
			        msg->complete->prompt);
			s->last_n_messages = msg->complete->n_messages;
			s->last_stream = msg->complete->stream;
			s->has_temp = msg->complete->temperature_opt_case ==
			        EPMOE__COMPLETION_REQUEST__TEMPERATURE_OPT_TEMPERATURE;
			s->last_temp = msg->complete->temperature;
			if (s->mode == 1) {
				er.status = EPMOE__STATUS__STATUS_BUSY;
				er.message = "queue full";
				er.retry_after_ms = 1500;
				rep.msg_case = EPMOE__CLIENT_REPLY__MSG_ERROR;
				rep.error = &er;
				break;
			}
			cr.request_id = "req-1";
			cr.model = "tiny";
			rep.msg_case = EPMOE__CLIENT_REPLY__MSG_COMPLETION;
			rep.completion = &cr;
			if (!msg->complete->stream) {
				fill_chunk(&cr, 0, 4, tb, txt);
				cr.done = 1;
				cr.finish_reason = EPMOE__FINISH_REASON__FINISH_LENGTH;
				cr.usage = &us;
			} else {
				/* the first token comes with the acknowledgement */
				fill_chunk(&cr, 0, 1, tb, txt);
				s->gave = 1;
			}
			break;
		case EPMOE__CLIENT_MSG__MSG_POLL: {
			const Epmoe__PollRequest *p = msg->poll;
			size_t from, to;
			s->n_polls++;
			s->last_wait_ms = p->wait_ms;
			ck_assert_str_eq(p->request_id, "req-1");
			/* the client asks from exactly what it has */
			ck_assert_uint_eq(p->token_offset, (uint32_t)s->gave);
			ck_assert_uint_eq(p->text_offset, nng_tok_end[s->gave - 1]);
			cr.request_id = "req-1";
			rep.msg_case = EPMOE__CLIENT_REPLY__MSG_COMPLETION;
			rep.completion = &cr;
			if (s->mode == 2 && s->gave == 2) {
				cr.status = EPMOE__STATUS__STATUS_UNAVAILABLE;
				cr.error = "worker 1 died";
				cr.done = 1;
				break;
			}
			/* resend one token the client already has, plus one new */
			from = (size_t)s->gave - 1;
			to = (size_t)s->gave + 1 < 4 ? (size_t)s->gave + 1 : 4;
			fill_chunk(&cr, from, to, tb, txt);
			s->gave = (int)to;
			if (to == 4) {
				cr.done = 1;
				cr.finish_reason = EPMOE__FINISH_REASON__FINISH_STOP;
				cr.usage = &us;
			}
			break;
		}
		case EPMOE__CLIENT_MSG__MSG_CANCEL:
			s->n_cancels++;
			cn.request_id = msg->cancel->request_id;
			rep.msg_case = EPMOE__CLIENT_REPLY__MSG_CANCEL;
			rep.cancel = &cn;
			break;
		case EPMOE__CLIENT_MSG__MSG_HEALTH:
			hr.ok = 0;
			hr.status = "loading";
			rep.msg_case = EPMOE__CLIENT_REPLY__MSG_HEALTH;
			rep.health = &hr;
			break;
		case EPMOE__CLIENT_MSG__MSG_MODELS:
			mi.id = "tiny";
			mr.models = &mip;
			mr.n_models = 1;
			rep.msg_case = EPMOE__CLIENT_REPLY__MSG_MODELS;
			rep.models = &mr;
			break;
		case EPMOE__CLIENT_MSG__MSG_TOKENIZE:
			/* one token per byte, for the test */
			tr.n_tokens = strlen(msg->tokenize->text) < 8 ?
			        strlen(msg->tokenize->text) : 8;
			for (size_t i = 0; i < tr.n_tokens; i++)
				tb[i] = (uint8_t)msg->tokenize->text[i];
			tr.tokens = tb;
			rep.msg_case = EPMOE__CLIENT_REPLY__MSG_TOKENIZE;
			rep.tokenize = &tr;
			break;
		default:
			er.status = EPMOE__STATUS__STATUS_UNSUPPORTED;
			er.message = "not in this script";
			rep.msg_case = EPMOE__CLIENT_REPLY__MSG_ERROR;
			rep.error = &er;
		}
		nng_reply(s, &rep);
		protobuf_c_message_free_unpacked(hdr, NULL);
	}
}

static void
nng_srv_start(struct nng_srv *s, const char *url, int mode)
{
	memset(s, 0, sizeof(*s));
	s->mode = mode;
	ck_assert_int_eq(nng_rep0_open(&s->sock), 0);
	ck_assert_int_eq(nng_listen(s->sock, url, NULL, 0), 0);
	ck_assert_int_eq(pthread_create(&s->th, NULL, nng_srv_main, s), 0);
}

static void
nng_srv_stop(struct nng_srv *s)
{
	nng_close(s->sock);
	pthread_join(s->th, NULL);
}

struct chunks {
	char text[256];
	size_t n, n_tok;
	int finishes;
	char finish[16];
	int cancel_after; /* return non-zero on this call (1-based), 0 never */
};

static int
on_chunk(void *ud, const struct epmoe_chunk *ch)
{
	struct chunks *k = ud;

	ck_assert_uint_lt(strlen(k->text) + ch->text_len, sizeof(k->text));
	strncat(k->text, ch->text, ch->text_len);
	k->n++;
	k->n_tok += ch->n_tokens;
	if (ch->finish_reason != NULL) {
		k->finishes++;
		snprintf(k->finish, sizeof(k->finish), "%s", ch->finish_reason);
	}
	return k->cancel_after != 0 && (size_t)k->cancel_after == k->n;
}

START_TEST(nng_stream_polls_from_its_offsets_and_skips_resent_output)
{
	struct nng_srv s;
	struct epmoe_client *c;
	struct epmoe_gen_params p;
	struct epmoe_completion r;
	struct chunks k;

	nng_srv_start(&s, "inproc://client-stream", 0);
	ck_assert_int_eq(epmoe_client_new(&c, "inproc://client-stream", NULL,
	        NULL, 0), 0);
	ck_assert_int_eq(epmoe_client_transport(c), EPMOE_TRANSPORT_NNG);
	epmoe_gen_params_init(&p);
	p.stream = 1;
	p.temperature = 0;
	memset(&k, 0, sizeof(k));
	ck_assert_int_eq(epmoe_complete(c, "Once", &p, on_chunk, &k, &r), 0);
	ck_assert_str_eq(k.text, NNG_TEXT);
	ck_assert_uint_eq(k.n_tok, 4);
	ck_assert_int_eq(k.finishes, 1);
	ck_assert_str_eq(k.finish, "stop");
	ck_assert_str_eq(r.text, NNG_TEXT);
	ck_assert_uint_eq(r.text_len, strlen(NNG_TEXT));
	ck_assert_uint_eq(r.n_tokens, 4);
	for (size_t i = 0; i < 4; i++)
		ck_assert_uint_eq(r.tokens[i], nng_toks[i]);
	ck_assert_str_eq(r.id, "req-1");
	ck_assert_str_eq(r.finish_reason, "stop");
	ck_assert_int_eq(r.has_usage, 1);
	ck_assert_uint_eq(r.completion_tokens, 4);
	ck_assert_uint_eq(r.n_chunks, 4);
	ck_assert(r.ttft_s >= 0 && r.ttft_s <= r.total_s);
	epmoe_completion_fini(&r);
	ck_assert_int_eq(s.n_polls, 3);
	ck_assert_uint_gt(s.last_wait_ms, 0);
	ck_assert_int_eq(s.last_stream, 1);
	ck_assert_int_eq(s.has_temp, 1);
	ck_assert_float_eq(s.last_temp, 0);
	ck_assert_str_eq(s.last_prompt, "Once");
	ck_assert_int_eq(s.n_cancels, 0);

	/* not streamed: one reply, one piece */
	epmoe_gen_params_init(&p);
	memset(&k, 0, sizeof(k));
	ck_assert_int_eq(epmoe_complete(c, "Twice", &p, on_chunk, &k, &r), 0);
	ck_assert_str_eq(r.text, NNG_TEXT);
	ck_assert_str_eq(r.finish_reason, "length");
	ck_assert_uint_eq(k.n, 1);
	ck_assert_int_eq(s.has_temp, 0);
	ck_assert_int_eq(s.n_polls, 3);
	epmoe_completion_fini(&r);
	epmoe_client_free(c);
	nng_srv_stop(&s);
}
END_TEST

START_TEST(nng_callback_cancel_sends_a_cancel_request)
{
	struct nng_srv s;
	struct epmoe_client *c;
	struct epmoe_gen_params p;
	struct epmoe_completion r;
	struct epmoe_chat_msg msgs[] = { { "user", "hi" } };
	struct chunks k;

	nng_srv_start(&s, "inproc://client-cancel", 0);
	ck_assert_int_eq(epmoe_client_new(&c, "inproc://client-cancel", NULL,
	        NULL, 0), 0);
	epmoe_gen_params_init(&p);
	p.stream = 1;
	memset(&k, 0, sizeof(k));
	k.cancel_after = 2;
	r.text = (char *)0x1;
	ck_assert_int_eq(epmoe_chat(c, msgs, 1, &p, on_chunk, &k, &r),
	        EPMOE_ECANCELED);
	ck_assert_ptr_eq(r.text, (char *)0x1); /* not written on failure */
	ck_assert_int_eq(epmoe_client_error(c)->code, EPMOE_ECANCELED);
	ck_assert_uint_eq(s.last_n_messages, 1);
	ck_assert_int_eq(s.n_cancels, 1);
	epmoe_client_free(c);
	nng_srv_stop(&s);
}
END_TEST

START_TEST(nng_errors_carry_status_message_and_retry_after)
{
	struct nng_srv s;
	struct epmoe_client *c;
	struct epmoe_gen_params p;
	struct epmoe_health h;
	const struct epmoe_error *e;
	char **ids;
	size_t n;
	uint32_t *toks;

	nng_srv_start(&s, "inproc://client-busy", 1);
	ck_assert_int_eq(epmoe_client_new(&c, "inproc://client-busy", NULL, NULL,
	        0), 0);
	ck_assert_int_eq(epmoe_complete(c, "x", NULL, NULL, NULL, NULL),
	        EPMOE_EBUSY);
	e = epmoe_client_error(c);
	ck_assert_int_eq(e->code, EPMOE_EBUSY);
	ck_assert_int_eq(e->status, 429);
	ck_assert_uint_eq(e->retry_after_ms, 1500);
	ck_assert_str_eq(e->message, "queue full");
	/* the other requests of the API */
	ck_assert_int_eq(epmoe_health(c, &h), 0);
	ck_assert_int_eq(h.ok, 0);
	ck_assert_str_eq(h.status, "loading");
	ck_assert_int_eq(epmoe_models(c, &ids, &n), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(ids[0], "tiny");
	epmoe_strv_free(ids, n);
	ck_assert_int_eq(epmoe_tokenize(c, "ab", 1, &toks, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(toks[1], 'b');
	free(toks);
	ck_assert_int_eq(epmoe_detokenize(c, NULL, 0, (char **)&ids),
	        EPMOE_ENOTSUP);
	ck_assert_int_eq(epmoe_client_error(c)->status, 400);
	epmoe_client_free(c);
	nng_srv_stop(&s);

	/* an error in the middle of a stream */
	nng_srv_start(&s, "inproc://client-fail", 2);
	ck_assert_int_eq(epmoe_client_new(&c, "inproc://client-fail", NULL, NULL,
	        0), 0);
	epmoe_gen_params_init(&p);
	p.stream = 1;
	ck_assert_int_eq(epmoe_complete(c, "x", &p, NULL, NULL, NULL),
	        EPMOE_EUNAVAIL);
	ck_assert_int_eq(epmoe_client_error(c)->status, 503);
	ck_assert_str_eq(epmoe_client_error(c)->message, "worker 1 died");
	epmoe_client_free(c);
	nng_srv_stop(&s);
}
END_TEST

/* ---- a scripted HTTP server ---- */

struct http_srv {
	int fd, port;
	pthread_t th;
	int n_conns;           /* connections to serve, then stop */
	const char *stream;    /* SSE body for /v1/completions (NULL: JSON) */
	char last_path[64];
	char last_body[2048];
};

static void
write_all(int fd, const char *s, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, s, n);
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

/* Reads one request (headers, then Content-Length bytes). */
static int
read_request(int fd, struct http_srv *s)
{
	char buf[8192], *hdr_end, *cl;
	size_t n = 0, need;

	for (;;) {
		ssize_t r = read(fd, buf + n, sizeof(buf) - 1 - n);
		if (r <= 0)
			return -1;
		n += (size_t)r;
		buf[n] = '\0';
		if ((hdr_end = strstr(buf, "\r\n\r\n")) != NULL)
			break;
		if (n == sizeof(buf) - 1)
			return -1;
	}
	sscanf(buf, "%*s %63s", s->last_path);
	cl = strcasestr(buf, "Content-Length:");
	need = cl ? (size_t)atol(cl + 15) : 0;
	while (n - (size_t)(hdr_end + 4 - buf) < need && n < sizeof(buf) - 1) {
		ssize_t r = read(fd, buf + n, sizeof(buf) - 1 - n);
		if (r <= 0)
			return -1;
		n += (size_t)r;
		buf[n] = '\0';
	}
	snprintf(s->last_body, sizeof(s->last_body), "%s", hdr_end + 4);
	return 0;
}

static void *
http_srv_main(void *arg)
{
	struct http_srv *s = arg;

	for (int i = 0; i < s->n_conns; i++) {
		int fd = accept(s->fd, NULL, NULL), one = 1;
		char head[512];
		const char *body;

		if (fd < 0)
			return NULL;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (read_request(fd, s) != 0) {
			close(fd);
			continue;
		}
		if (strcmp(s->last_path, "/v1/models") == 0) {
			body = "{\"object\":\"list\",\"data\":[{\"id\":\"tiny\","
			       "\"object\":\"model\"}]}";
			snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Type: "
			         "application/json\r\nContent-Length: %zu\r\nConnection: "
			         "close\r\n\r\n", strlen(body));
		} else if (strcmp(s->last_path, "/health") == 0) {
			body = "{\"status\":\"loading\"}";
			snprintf(head, sizeof(head), "HTTP/1.1 503 Service Unavailable\r\n"
			         "Content-Type: application/json\r\nContent-Length: %zu\r\n"
			         "Connection: close\r\n\r\n", strlen(body));
		} else if (s->stream == NULL) {
			body = "{\"error\":{\"message\":\"too many requests\",\"type\":"
			       "\"rate_limit_error\",\"param\":null,\"code\":null}}";
			snprintf(head, sizeof(head), "HTTP/1.1 429 Too Many Requests\r\n"
			         "Content-Type: application/json\r\nRetry-After: 2\r\n"
			         "Content-Length: %zu\r\nConnection: close\r\n\r\n",
			         strlen(body));
		} else {
			/* ragged pieces: 7 bytes at a time, each its own segment */
			static const char sse_head[] = "HTTP/1.1 200 OK\r\nContent-Type: "
			        "text/event-stream\r\nConnection: close\r\n\r\n";
			write_all(fd, sse_head, sizeof(sse_head) - 1);
			for (size_t at = 0, n = strlen(s->stream); at < n; at += 7) {
				write_all(fd, s->stream + at, n - at < 7 ? n - at : 7);
				usleep(200);
			}
			close(fd);
			continue;
		}
		write_all(fd, head, strlen(head));
		write_all(fd, body, strlen(body));
		close(fd);
	}
	return NULL;
}

static void
http_srv_start(struct http_srv *s, int n_conns, const char *stream)
{
	struct sockaddr_in a;
	socklen_t al = sizeof(a);
	int one = 1;

	memset(s, 0, sizeof(*s));
	s->n_conns = n_conns;
	s->stream = stream;
	ck_assert_int_ge(s->fd = socket(AF_INET, SOCK_STREAM, 0), 0);
	setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(s->fd, 8), 0);
	ck_assert_int_eq(getsockname(s->fd, (struct sockaddr *)&a, &al), 0);
	s->port = ntohs(a.sin_port);
	ck_assert_int_eq(pthread_create(&s->th, NULL, http_srv_main, s), 0);
}

static void
http_srv_stop(struct http_srv *s)
{
	pthread_join(s->th, NULL);
	close(s->fd);
}

START_TEST(http_stream_in_ragged_pieces_gives_the_whole_completion)
{
	static char expect[16384];
	struct http_srv s;
	struct epmoe_client *c;
	struct epmoe_gen_params p;
	struct epmoe_completion r;
	struct chunks k;
	char url[64];
	size_t len;
	char *stream = recorded_stream(&len, expect, sizeof(expect));

	/* the router's part of the recording, a comment, an event of another
	 * type, then the end */
	strcpy(strstr(stream, "data:no-space"), "data: [DONE]\n\n");
	/* /v1/models (the client asks for the default model), then the stream */
	http_srv_start(&s, 2, stream);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/", s.port);
	ck_assert_int_eq(epmoe_client_new(&c, url, NULL, NULL, 0), 0);
	epmoe_gen_params_init(&p);
	p.stream = 1;
	p.max_tokens = 4;
	memset(&k, 0, sizeof(k));
	ck_assert_int_eq(epmoe_complete(c, "Say", &p, on_chunk, &k, &r), 0);
	http_srv_stop(&s);
	ck_assert_str_eq(s.last_path, "/v1/completions");
	ck_assert_ptr_nonnull(strstr(s.last_body, "\"model\":\"tiny\""));
	ck_assert_ptr_nonnull(strstr(s.last_body, "\"include_usage\":true"));
	/* the ping event is not a completion chunk; the rest decode */
	ck_assert_str_eq(k.text, "Hello, w\xc3\xa9rld!");
	ck_assert_str_eq(r.text, "Hello, w\xc3\xa9rld!");
	ck_assert_str_eq(r.finish_reason, "length");
	ck_assert_int_eq(k.finishes, 1);
	ck_assert_int_eq(r.has_usage, 1);
	ck_assert_uint_eq(r.prompt_tokens, 5);
	ck_assert_uint_eq(r.completion_tokens, 4);
	ck_assert_uint_eq(r.n_chunks, 4);
	ck_assert_str_eq(r.id, "cmpl-1");
	epmoe_completion_fini(&r);
	epmoe_client_free(c);
	free(stream);
}
END_TEST

START_TEST(http_stream_cut_short_is_an_error)
{
	struct http_srv s;
	struct epmoe_client *c;
	struct epmoe_gen_params p;
	char url[64];
	const char *stream = "data: {\"choices\":[{\"text\":\"ab\",\"finish_reason\""
	                     ":null}]}\n\n";

	http_srv_start(&s, 1, stream);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", s.port);
	ck_assert_int_eq(epmoe_client_new(&c, url, NULL, NULL, 0), 0);
	epmoe_gen_params_init(&p);
	p.stream = 1;
	p.model = "tiny"; /* no /v1/models round trip */
	ck_assert_int_eq(epmoe_complete(c, "x", &p, NULL, NULL, NULL), EPMOE_EIO);
	ck_assert_ptr_nonnull(strstr(epmoe_client_error(c)->message, "ended"));
	http_srv_stop(&s);
	epmoe_client_free(c);
}
END_TEST

START_TEST(http_error_envelope_gives_code_message_and_retry_after)
{
	struct http_srv s;
	struct epmoe_client *c;
	struct epmoe_gen_params p;
	struct epmoe_health h;
	const struct epmoe_error *e;
	char url[64];

	http_srv_start(&s, 2, NULL);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", s.port);
	ck_assert_int_eq(epmoe_client_new(&c, url, NULL, NULL, 0), 0);
	epmoe_gen_params_init(&p);
	p.model = "tiny";
	ck_assert_int_eq(epmoe_complete(c, "x", &p, NULL, NULL, NULL), EPMOE_EBUSY);
	e = epmoe_client_error(c);
	ck_assert_int_eq(e->status, 429);
	ck_assert_uint_eq(e->retry_after_ms, 2000);
	ck_assert_str_eq(e->message, "too many requests");
	/* 503 from /health is an answer: not ready */
	ck_assert_int_eq(epmoe_health(c, &h), 0);
	ck_assert_int_eq(h.ok, 0);
	ck_assert_str_eq(h.status, "loading");
	http_srv_stop(&s);
	epmoe_client_free(c);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("client");
	TCase *t = tcase_create("sse");

	tcase_add_test(t, sse_events_are_the_same_at_every_chunk_boundary);
	tcase_add_test(t, sse_callback_stop_ends_the_parse);
	tcase_add_test(t, sse_blank_lines_and_comments_alone_make_no_event);
	tcase_add_test(t, sse_oversized_line_is_refused);
	suite_add_tcase(s, t);
	t = tcase_create("json");
	tcase_add_test(t, request_body_parses_on_the_server_as_given);
	tcase_add_test(t, server_responses_decode_to_text_finish_and_usage);
	tcase_add_test(t, malformed_responses_are_protocol_errors);
	suite_add_tcase(s, t);
	t = tcase_create("args");
	tcase_add_test(t, url_scheme_selects_the_transport);
	tcase_add_test(t, client_new_refuses_bad_urls_with_a_message);
	tcase_add_test(t, gen_params_out_of_range_are_refused_before_sending);
	tcase_add_test(t, cli_bad_arguments_exit_with_status_2);
	tcase_add_test(t, cli_unreachable_server_exits_with_status_1);
	suite_add_tcase(s, t);
	t = tcase_create("transports");
	tcase_set_timeout(t, 60);
	tcase_add_test(t, nng_stream_polls_from_its_offsets_and_skips_resent_output);
	tcase_add_test(t, nng_callback_cancel_sends_a_cancel_request);
	tcase_add_test(t, nng_errors_carry_status_message_and_retry_after);
	tcase_add_test(t, http_stream_in_ragged_pieces_gives_the_whole_completion);
	tcase_add_test(t, http_stream_cut_short_is_an_error);
	tcase_add_test(t, http_error_envelope_gives_code_message_and_retry_after);
	suite_add_tcase(s, t);
	return s;
}

int
main(void)
{
	return tu_run(suite());
}
