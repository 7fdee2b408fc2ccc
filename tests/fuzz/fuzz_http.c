/* libFuzzer target: the HTTP/1.1 server (server/http.c over http-parser)
 * reading a client's bytes.  Each input is sent whole on a fresh
 * connection (a socketpair adopted by a real server on a libuv loop),
 * followed by the client's FIN; the loop runs until the server has closed
 * the connection.  The handler answers like the API does: a JSON 404 that
 * quotes the path, an echo of the body, a streamed reply.  Properties: no
 * crash, leak or hang; every connection ends; every JSON response body
 * the client receives (errors included) is valid UTF-8 JSON. */
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <stdint.h>
#include <strings.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "err.h"
#include "fuzz_util.h"
#include "http.h"
#include "oai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uv_loop_t loop;
static struct http_server *srv;

/* A HEAD response carries no body; the client's parser cannot know that
 * from the response alone, so the handler marks it. */
#define HEAD_MARK "X-Fuzz-Head: 1\r\n"

static void
on_request(struct http_req *req, void *ud)
{
	const char *extra = strcmp(req->method, "HEAD") == 0 ? HEAD_MARK : NULL;

	(void)ud;
	if (strcmp(req->path, "/echo") == 0) {
		http_respond(req, 200, "text/plain", req->body, req->body_len, extra);
	} else if (strcmp(req->path, "/stream") == 0) {
		if (http_stream_begin(req, 200, "text/event-stream", extra) == 0) {
			http_stream_write(req, "data: 1\n\n", 9);
			http_stream_write(req, req->query, strlen(req->query));
			http_stream_end(req);
		}
	} else {
		struct oai_error e;
		cJSON *body;

		oai_error_set(&e, 404, NULL, "no route for %s %.100s%s%s",
		        req->method, req->path, req->query[0] ? "?" : "",
		        req->query);
		if ((body = oai_error_body(&e)) != NULL) {
			http_respond_json(req, 404, body, extra);
			cJSON_Delete(body);
		}
	}
	http_req_release(req);
}

/* What the client received, parsed as responses. */
struct rx {
	http_parser p;
	int json;        /* the current response is application/json */
	int in_ct;       /* the last header field was Content-Type */
	int in_head;     /* the last header field was the HEAD mark */
	int head;        /* the current response answers a HEAD */
	char *body;
	size_t len, cap;
};

static int
rx_field(http_parser *p, const char *at, size_t len)
{
	struct rx *x = p->data;

	x->in_ct = len == 12 && strncasecmp(at, "content-type", 12) == 0;
	x->in_head = len == 11 && strncasecmp(at, "x-fuzz-head", 11) == 0;
	x->head |= x->in_head;
	return 0;
}

static int
rx_value(http_parser *p, const char *at, size_t len)
{
	struct rx *x = p->data;

	if (x->in_ct)
		x->json = len >= 16 && strncmp(at, "application/json", 16) == 0;
	return 0;
}

static int
rx_begin(http_parser *p)
{
	struct rx *x = p->data;

	x->json = 0;
	x->head = 0;
	x->len = 0;
	return 0;
}

/* 1: no body follows (http-parser's rule for answers to HEAD). */
static int
rx_headers(http_parser *p)
{
	struct rx *x = p->data;

	return x->head ? 1 : 0;
}

static int
rx_body(http_parser *p, const char *at, size_t len)
{
	struct rx *x = p->data;

	if (x->len + len > x->cap) {
		size_t cap = (x->len + len) * 2;
		char *b = realloc(x->body, cap);

		if (b == NULL)
			return -1;
		x->body = b;
		x->cap = cap;
	}
	memcpy(x->body + x->len, at, len);
	x->len += len;
	return 0;
}

static int
rx_done(http_parser *p)
{
	struct rx *x = p->data;

	if (x->json && !x->head)
		fz_check_json(x->body ? x->body : "", x->len, "a JSON response body");
	return 0;
}

static int
init_once(void)
{
	struct http_config cfg;

	if (srv != NULL)
		return 0;
	if (uv_loop_init(&loop) != 0)
		return -1;
	http_config_default(&cfg);
	cfg.max_body_size = 64 * 1024;
	return http_server_start(&srv, &loop, "127.0.0.1:0", &cfg, on_request,
	        NULL);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static http_parser_settings rs;
	struct rx x = { 0 };
	size_t off = 0;
	int sv[2], eof = 0, shut = 0, hung = 0;
	char buf[65536];

	if (size > 256 * 1024 || init_once() != 0)
		return 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return 0;
	fcntl(sv[1], F_SETFL, O_NONBLOCK);
	if (http_server_adopt(srv, sv[0]) != 0) {
		close(sv[0]);
		close(sv[1]);
		return 0;
	}
	http_parser_settings_init(&rs);
	rs.on_message_begin = rx_begin;
	rs.on_header_field = rx_field;
	rs.on_header_value = rx_value;
	rs.on_headers_complete = rx_headers;
	rs.on_body = rx_body;
	rs.on_message_complete = rx_done;
	http_parser_init(&x.p, HTTP_RESPONSE);
	x.p.data = &x;
	/* Bounded: every iteration makes progress or lets the loop run; the
	 * server's shortest timer here is far away, so a connection that is
	 * still open after this many rounds is stuck. */
	for (int round = 0; !(eof && http_server_n_connections(srv) == 0); round++) {
		ssize_t n;

		FZ_CHECK(round < 100000, "the connection never ended (%zu bytes in)",
		        size);
		if (off < size) {
			n = write(sv[1], data + off, size - off);
			if (n > 0)
				off += (size_t)n;
			else if (n < 0 && errno != EAGAIN)
				off = size; /* the server closed: stop sending */
		}
		if (off == size && !shut) {
			shutdown(sv[1], SHUT_WR);
			shut = 1;
		}
		uv_run(&loop, UV_RUN_NOWAIT);
		while (!eof && (n = read(sv[1], buf, sizeof(buf))) != 0) {
			if (n < 0) {
				if (errno != EAGAIN)
					eof = 1;
				break;
			}
			if (!hung && http_parser_execute(&x.p, &rs, buf, (size_t)n) !=
			        (size_t)n)
				hung = 1; /* e.g. a HEAD reply: stop checking */
		}
		if (n == 0)
			eof = 1;
	}
	close(sv[1]);
	free(x.body);
	return 0;
}
