/* HTTP server: a real server on 127.0.0.1 (port 0) with its uv loop in a
 * thread, driven over plain blocking sockets.  Covers keep-alive,
 * pipelining, request bodies, limits, streaming, deferred answers, client
 * disconnects and their close hooks, timeouts, connection limits, and
 * clean teardown (uv_loop_close succeeds; ASan finds no leak). */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <http_parser.h>
#include <uv.h>

#include "err.h"
#include "http.h"
#include "testutil.h"

/* ---- the server under test, on its own loop thread ---- */

struct fixture {
	uv_loop_t loop;
	uv_async_t stop;
	pthread_t thread;
	struct http_server *srv;
	int port;
	atomic_int n_requests;
	atomic_int n_hooks;
	atomic_int hook_seen_closed; /* http_req_is_closed() inside the hook */
	atomic_int closed_cb;
	atomic_int last_write_rc;
	int loop_close_rc;
};

static struct fixture F;

enum job_kind { JOB_DEFER, JOB_STREAM, JOB_FOREVER, JOB_FLOOD };

/* A request answered later from a timer. */
struct job {
	uv_timer_t t;
	struct http_req *req;
	enum job_kind kind;
	int left, i, ms;
};

static void
job_free(uv_handle_t *h)
{
	free(h->data);
}

static void
job_finish(struct job *j)
{
	http_req_release(j->req);
	j->req = NULL;
	uv_close((uv_handle_t *)&j->t, job_free);
}

static void
on_hook(struct http_req *req, void *ud)
{
	struct job *j = ud;

	atomic_fetch_add(&F.n_hooks, 1);
	if (http_req_is_closed(req))
		atomic_fetch_add(&F.hook_seen_closed, 1);
	atomic_store(&F.last_write_rc, http_stream_write(req, "x", 1));
	if (j != NULL)
		job_finish(j);
	else
		http_req_release(req);
}

static void
on_job(uv_timer_t *t)
{
	struct job *j = t->data;
	char line[64];
	int n;

	switch (j->kind) {
	case JOB_DEFER:
		n = snprintf(line, sizeof(line), "deferred %d", j->ms);
		http_respond(j->req, 200, "text/plain", line, (size_t)n, NULL);
		job_finish(j);
		return;
	case JOB_STREAM:
		n = snprintf(line, sizeof(line), "data: %d\n\n", j->i++);
		http_stream_write(j->req, line, (size_t)n);
		if (--j->left == 0) {
			http_stream_end(j->req);
			job_finish(j);
			return;
		}
		break;
	case JOB_FOREVER:
		http_stream_write(j->req, "data: tick\n\n", 12);
		break;
	case JOB_FLOOD: {
		static char block[64 * 1024];

		for (int k = 0; k < 8; k++)
			if (http_stream_write(j->req, block, sizeof(block)) != 0)
				return; /* dropped: the hook finishes the job */
		break;
	}
	}
	uv_timer_start(&j->t, on_job, (uint64_t)j->ms, 0);
}

static int
query_int(const struct http_req *req, const char *key, int def)
{
	const char *p = strstr(req->query, key);

	if (p == NULL || p[strlen(key)] != '=')
		return def;
	return atoi(p + strlen(key) + 1);
}

static void
start_job(struct http_req *req, enum job_kind kind, int ms, int left)
{
	struct job *j = calloc(1, sizeof(*j));

	ck_assert_ptr_nonnull(j);
	j->req = req;
	j->kind = kind;
	j->ms = ms;
	j->left = left;
	uv_timer_init(&F.loop, &j->t);
	j->t.data = j;
	ck_assert_int_eq(http_req_on_close(req, on_hook, j), 0);
	uv_timer_start(&j->t, on_job, (uint64_t)ms, 0);
}

static void
handler(struct http_req *req, void *ud)
{
	char hdrs[512], body[64];
	const char *p = req->path;
	int n;

	atomic_fetch_add(&F.n_requests, 1);
	if (strcmp(p, "/hello") == 0) {
		ck_assert_int_eq(http_respond(req, 200, "text/plain", "hello", 5,
		        NULL), 0);
		/* a second answer is refused */
		ck_assert_int_eq(http_respond(req, 200, NULL, "", 0, NULL),
		        EPMOE_ESTATE);
		ck_assert_int_eq(http_req_on_close(req, on_hook, NULL),
		        EPMOE_ESTATE);
		http_req_release(req);
	} else if (strcmp(p, "/echo") == 0) {
		const char *x = http_req_header(req, "x-TEST");

		snprintf(hdrs, sizeof(hdrs), "X-Method: %s\r\nX-Seq: %llu\r\n"
		        "X-Query: %s\r\nX-Test: %s\r\nX-Peer-Ok: %d\r\n",
		        req->method, (unsigned long long)req->seq, req->query,
		        x ? x : "-", strncmp(req->peer, "127.0.0.1:", 10) == 0);
		ck_assert_int_eq(req->body[req->body_len], '\0');
		http_respond(req, 200, req->content_type, req->body, req->body_len,
		        hdrs);
		http_req_release(req);
	} else if (strcmp(p, "/headers") == 0) {
		const char *name, *value;
		size_t len = 0;

		for (size_t i = 0; i < http_req_n_headers(req); i++) {
			ck_assert_int_eq(http_req_header_at(req, i, &name, &value), 0);
			len += (size_t)snprintf(hdrs + len, sizeof(hdrs) - len,
			        "%s=%s;", name, value);
		}
		ck_assert_int_eq(http_req_header_at(req, 99, &name, &value),
		        EPMOE_ERANGE);
		http_respond(req, 200, "text/plain", hdrs, len, NULL);
		http_req_release(req);
	} else if (strcmp(p, "/json") == 0) {
		cJSON *j = cJSON_CreateObject();

		cJSON_AddStringToObject(j, "ok", "yes");
		ck_assert_int_eq(http_respond_json(req, 201, j, NULL), 0);
		cJSON_Delete(j);
		http_req_release(req);
	} else if (strcmp(p, "/stats") == 0) {
		n = snprintf(body, sizeof(body), "%zu",
		        http_server_n_connections(F.srv));
		http_respond(req, 200, "text/plain", body, (size_t)n, NULL);
		http_req_release(req);
	} else if (strcmp(p, "/defer") == 0) {
		start_job(req, JOB_DEFER, query_int(req, "ms", 50), 1);
	} else if (strcmp(p, "/stream") == 0) {
		ck_assert_int_eq(http_stream_write(req, "x", 1), EPMOE_ESTATE);
		ck_assert_int_eq(http_stream_begin(req, 200, "text/event-stream",
		        "Cache-Control: no-cache\r\n"), 0);
		start_job(req, JOB_STREAM, query_int(req, "ms", 5),
		        query_int(req, "n", 5));
	} else if (strcmp(p, "/forever") == 0) {
		ck_assert_int_eq(http_stream_begin(req, 200, "text/event-stream",
		        NULL), 0);
		start_job(req, JOB_FOREVER, 10, 0);
	} else if (strcmp(p, "/flood") == 0) {
		ck_assert_int_eq(http_stream_begin(req, 200,
		        "application/octet-stream", NULL), 0);
		start_job(req, JOB_FLOOD, 1, 0);
	} else if (strcmp(p, "/hang") == 0) {
		ck_assert_int_eq(http_req_on_close(req, on_hook, NULL), 0);
	} else if (strcmp(p, "/drop") == 0) {
		http_req_release(req);
	} else if (strcmp(p, "/dropstream") == 0) {
		http_stream_begin(req, 200, "text/plain", NULL);
		http_stream_write(req, "partial", 7);
		http_req_release(req);
	} else if (strcmp(p, "/badargs") == 0) {
		ck_assert_int_eq(http_respond(req, 200, "text/plain", "x", 1,
		        "X-Bad: 1"), EPMOE_EINVAL);
		ck_assert_int_eq(http_respond(req, 200, "text/plain", "x", 1,
		        "X-A: 1\r\n\r\nX-B: 2\r\n"), EPMOE_EINVAL);
		ck_assert_int_eq(http_respond(req, 200, "text/plain\r\nX: y", "x", 1,
		        NULL), EPMOE_EINVAL);
		ck_assert_int_eq(http_respond(req, 99, NULL, "", 0, NULL),
		        EPMOE_EINVAL);
		http_respond(req, 204, NULL, NULL, 0, NULL);
		http_req_release(req);
	} else {
		http_respond(req, 404, "application/json", "{}", 2, NULL);
		http_req_release(req);
	}
}

static void
on_server_closed(void *ud)
{
	ck_assert_ptr_eq(ud, &F);
	atomic_store(&F.closed_cb, 1);
	uv_close((uv_handle_t *)&F.stop, NULL);
}

static void
on_stop(uv_async_t *a)
{
	http_server_close(F.srv, on_server_closed);
}

static void *
loop_main(void *arg)
{
	uv_run(&F.loop, UV_RUN_DEFAULT);
	F.loop_close_rc = uv_loop_close(&F.loop);
	return NULL;
}

static void
start_server(const struct http_config *cfg)
{
	memset(&F, 0, sizeof(F));
	ck_assert_int_eq(uv_loop_init(&F.loop), 0);
	ck_assert_int_eq(uv_async_init(&F.loop, &F.stop, on_stop), 0);
	ck_assert_int_eq(http_server_start(&F.srv, &F.loop, "127.0.0.1:0", cfg,
	        handler, &F), 0);
	F.port = http_server_port(F.srv);
	ck_assert_int_gt(F.port, 0);
	ck_assert_int_eq(pthread_create(&F.thread, NULL, loop_main, NULL), 0);
}

/* Closes the server and checks the loop ends with no handle left. */
static void
stop_server(void)
{
	uv_async_send(&F.stop);
	pthread_join(F.thread, NULL);
	ck_assert_int_eq(atomic_load(&F.closed_cb), 1);
	ck_assert_int_eq(F.loop_close_rc, 0);
}

static void
config_small(struct http_config *cfg)
{
	http_config_default(cfg);
	cfg->max_header_size = 1024;
	cfg->max_body_size = 1024;
}

/* ---- a blocking HTTP client ---- */

struct resp {
	int status;
	char hdrs[4096]; /* "name: value\n", names lower-cased */
	size_t hlen;
	char body[1 << 16];
	size_t body_len;
	int n_chunks;
	int complete;
	int is_head;
	int in_value;
};

struct client {
	int fd;
	http_parser p;
	char buf[1 << 16];
	size_t off, len;
};

static int
rc_field(http_parser *p, const char *at, size_t len)
{
	struct resp *r = p->data;

	if (r->in_value && r->hlen < sizeof(r->hdrs) - 1)
		r->hdrs[r->hlen++] = '\n';
	r->in_value = 0;
	for (size_t i = 0; i < len && r->hlen < sizeof(r->hdrs) - 1; i++) {
		char c = at[i];

		r->hdrs[r->hlen++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
	}
	return 0;
}

static int
rc_value(http_parser *p, const char *at, size_t len)
{
	struct resp *r = p->data;

	if (!r->in_value) {
		memcpy(r->hdrs + r->hlen, ": ", 2);
		r->hlen += 2;
	}
	r->in_value = 1;
	for (size_t i = 0; i < len && r->hlen < sizeof(r->hdrs) - 2; i++)
		r->hdrs[r->hlen++] = at[i];
	return 0;
}

static int
rc_headers_complete(http_parser *p)
{
	struct resp *r = p->data;

	if (r->in_value)
		r->hdrs[r->hlen++] = '\n';
	r->hdrs[r->hlen] = '\0';
	r->status = p->status_code;
	return r->is_head ? 1 : 0;
}

static int
rc_body(http_parser *p, const char *at, size_t len)
{
	struct resp *r = p->data;

	ck_assert_uint_le(r->body_len + len, sizeof(r->body) - 1);
	memcpy(r->body + r->body_len, at, len);
	r->body_len += len;
	r->body[r->body_len] = '\0';
	return 0;
}

static int
rc_chunk_header(http_parser *p)
{
	struct resp *r = p->data;

	if (p->content_length > 0)
		r->n_chunks++;
	return 0;
}

static int
rc_complete(http_parser *p)
{
	struct resp *r = p->data;

	r->complete = 1;
	http_parser_pause(p, 1);
	return 0;
}

static const http_parser_settings rc_settings = {
	.on_header_field = rc_field,
	.on_header_value = rc_value,
	.on_headers_complete = rc_headers_complete,
	.on_body = rc_body,
	.on_chunk_header = rc_chunk_header,
	.on_message_complete = rc_complete,
};

static void
set_timeout(int fd, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static struct client *
client_new(void)
{
	struct client *cl = calloc(1, sizeof(*cl));
	struct sockaddr_in a = { 0 };

	ck_assert_ptr_nonnull(cl);
	cl->fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(cl->fd, 0);
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)F.port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(cl->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	set_timeout(cl->fd, 5000);
	http_parser_init(&cl->p, HTTP_RESPONSE);
	return cl;
}

static void
client_free(struct client *cl)
{
	if (cl->fd >= 0)
		close(cl->fd);
	free(cl);
}

static void
client_send(struct client *cl, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = send(cl->fd, data, len, MSG_NOSIGNAL);

		ck_assert_int_gt(n, 0);
		data += n;
		len -= (size_t)n;
	}
}

static void
client_sends(struct client *cl, const char *s)
{
	client_send(cl, s, strlen(s));
}

/* Reads one response.  Returns 0, -1 (parse error), -2 (EOF before the
 * end) or -3 (timeout / socket error). */
static int
client_read(struct client *cl, struct resp *r, int is_head)
{
	memset(r, 0, sizeof(*r));
	r->is_head = is_head;
	cl->p.data = r;
	for (;;) {
		ssize_t k;

		if (cl->off < cl->len) {
			size_t n;

			http_parser_pause(&cl->p, 0);
			n = http_parser_execute(&cl->p, &rc_settings, cl->buf + cl->off,
			        cl->len - cl->off);
			cl->off += n;
			if (r->complete)
				return 0;
			if (HTTP_PARSER_ERRNO(&cl->p) != HPE_OK)
				return -1;
		}
		if (cl->off > 0) {
			memmove(cl->buf, cl->buf + cl->off, cl->len - cl->off);
			cl->len -= cl->off;
			cl->off = 0;
		}
		k = recv(cl->fd, cl->buf + cl->len, sizeof(cl->buf) - cl->len, 0);
		if (k == 0) {
			http_parser_pause(&cl->p, 0);
			http_parser_execute(&cl->p, &rc_settings, NULL, 0);
			return r->complete ? 0 : -2;
		}
		if (k < 0)
			return -3;
		cl->len += (size_t)k;
	}
}

/* 1 if the server closes the connection within the socket timeout. */
static int
client_sees_close(struct client *cl)
{
	char b[4096];

	ck_assert_uint_eq(cl->off, cl->len); /* no unread response bytes */
	for (;;) {
		ssize_t k = recv(cl->fd, b, sizeof(b), 0);

		if (k == 0 || (k < 0 && errno == ECONNRESET))
			return 1;
		if (k < 0)
			return 0;
	}
}

static int
has_header(const struct resp *r, const char *line)
{
	char want[512];

	snprintf(want, sizeof(want), "%s\n", line);
	return strstr(r->hdrs, want) != NULL;
}

static void
get(struct client *cl, const char *path, struct resp *r)
{
	char req[512];

	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
	client_sends(cl, req);
	ck_assert_int_eq(client_read(cl, r, 0), 0);
}

static void
wait_for(atomic_int *v, int want)
{
	for (int i = 0; i < 500 && atomic_load(v) < want; i++)
		usleep(10000);
	ck_assert_int_eq(atomic_load(v), want);
}

/* Asks the loop (through a request) how many connections are open,
 * counting the asking one; waits until it is want. */
static void
wait_connections(size_t want)
{
	for (int i = 0; i < 300; i++) {
		struct client *cl = client_new();
		struct resp r;

		get(cl, "/stats", &r);
		client_free(cl);
		if ((size_t)atoi(r.body) == want)
			return;
		usleep(10000);
	}
	ck_abort_msg("connections did not drop to %zu", want);
}

/* ---- tests ---- */

START_TEST(get_returns_body_with_length_and_date)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	get(cl, "/hello", &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(r.body, "hello");
	ck_assert(has_header(&r, "content-length: 5"));
	ck_assert(has_header(&r, "content-type: text/plain"));
	ck_assert_ptr_nonnull(strstr(r.hdrs, "date: "));
	ck_assert_ptr_null(strstr(r.hdrs, "connection: close"));
	get(cl, "/nope", &r);
	ck_assert_int_eq(r.status, 404);
	get(cl, "/json", &r);
	ck_assert_int_eq(r.status, 201);
	ck_assert(has_header(&r, "content-type: application/json"));
	ck_assert_str_eq(r.body, "{\"ok\":\"yes\"}");
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(keep_alive_serves_requests_in_sequence_on_one_connection)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	get(cl, "/echo?x=1", &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert(has_header(&r, "x-seq: 0"));
	ck_assert(has_header(&r, "x-query: x=1"));
	ck_assert(has_header(&r, "x-method: GET"));
	ck_assert(has_header(&r, "x-peer-ok: 1"));
	get(cl, "/echo", &r);
	ck_assert(has_header(&r, "x-seq: 1"));
	ck_assert(has_header(&r, "x-query: "));
	client_sends(cl, "GET /echo HTTP/1.1\r\nHost: t\r\nX-Test: v a l\r\n"
	        "Connection: close\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert(has_header(&r, "x-seq: 2"));
	ck_assert(has_header(&r, "x-test: v a l"));
	ck_assert(has_header(&r, "connection: close"));
	ck_assert(client_sees_close(cl));
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(pipelined_requests_are_answered_in_order)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	/* The first is answered 80 ms later; the others wait behind it. */
	client_sends(cl,
	        "GET /defer?ms=80 HTTP/1.1\r\nHost: t\r\n\r\n"
	        "GET /echo?second HTTP/1.1\r\nHost: t\r\n\r\n"
	        "POST /echo?third HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
	        "Content-Type: text/plain\r\n\r\nabcde"
	        "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_str_eq(r.body, "deferred 80");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert(has_header(&r, "x-query: second"));
	ck_assert(has_header(&r, "x-seq: 1"));
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert(has_header(&r, "x-query: third"));
	ck_assert_str_eq(r.body, "abcde");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_str_eq(r.body, "hello");
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(post_bodies_with_length_and_chunked_arrive_whole)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	client_sends(cl, "POST /echo HTTP/1.1\r\nHost: t\r\n"
	        "Content-Type: application/json\r\nContent-Length: 11\r\n\r\n");
	usleep(20000); /* the body in a separate segment */
	client_sends(cl, "{\"a\": [1]}\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_str_eq(r.body, "{\"a\": [1]}\n");
	ck_assert(has_header(&r, "content-type: application/json"));
	ck_assert(has_header(&r, "x-method: POST"));

	client_sends(cl, "POST /echo HTTP/1.1\r\nHost: t\r\n"
	        "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
	usleep(20000);
	client_sends(cl, "4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_str_eq(r.body, "abcdefg");
	ck_assert(has_header(&r, "x-seq: 1"));

	/* empty body */
	client_sends(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 200);
	ck_assert_uint_eq(r.body_len, 0);
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(body_over_limit_gets_413_and_server_keeps_serving)
{
	struct http_config cfg;
	struct client *cl;
	struct resp r;
	char *big = malloc(5000);
	cJSON *j;

	config_small(&cfg);
	start_server(&cfg);
	memset(big, 'a', 5000);
	cl = client_new();
	client_sends(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
	client_send(cl, big, 5000);
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 413);
	ck_assert(has_header(&r, "connection: close"));
	ck_assert(has_header(&r, "content-type: application/json"));
	j = cJSON_Parse(r.body);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"),
	        "type")->valuestring, "invalid_request_error");
	cJSON_Delete(j);
	ck_assert(client_sees_close(cl));
	client_free(cl);

	/* the same through chunks */
	cl = client_new();
	client_sends(cl, "POST /echo HTTP/1.1\r\nHost: t\r\n"
	        "Transfer-Encoding: chunked\r\n\r\n7d0\r\n");
	client_send(cl, big, 2000);
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 413);
	client_free(cl);

	/* exactly at the limit is fine */
	cl = client_new();
	client_sends(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
	client_send(cl, big, 1024);
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 200);
	ck_assert_uint_eq(r.body_len, 1024);
	get(cl, "/hello", &r);
	ck_assert_int_eq(r.status, 200);
	client_free(cl);
	free(big);
	stop_server();
}
END_TEST

START_TEST(header_over_limit_gets_431)
{
	struct http_config cfg;
	struct client *cl;
	struct resp r;
	char req[4096];

	config_small(&cfg);
	start_server(&cfg);
	cl = client_new();
	snprintf(req, sizeof(req), "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: %0*d\r\n\r\n",
	        2000, 7);
	client_sends(cl, req);
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 431);
	ck_assert(client_sees_close(cl));
	client_free(cl);

	/* many small headers add up too */
	cl = client_new();
	strcpy(req, "GET /hello HTTP/1.1\r\n");
	for (int i = 0; i < 100; i++)
		snprintf(req + strlen(req), sizeof(req) - strlen(req),
		        "X-H%d: v\r\n", i);
	strcat(req, "\r\n");
	client_sends(cl, req);
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 431);
	client_free(cl);

	cl = client_new();
	get(cl, "/hello", &r);
	ck_assert_int_eq(r.status, 200);
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(garbage_bytes_get_400_and_close)
{
	static const char *const bad[] = {
		"\x01\x02\x03 garbage\r\n\r\n",
		"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
		"GET / HTTP/9.9x\r\n\r\n",
		"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
		"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
		"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"GET /a b c HTTP/1.1\r\n\r\n",
	};
	struct client *cl;
	struct resp r;

	start_server(NULL);
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		cl = client_new();
		client_sends(cl, bad[i]);
		ck_assert_int_eq(client_read(cl, &r, 0), 0);
		ck_assert_msg(r.status == 400, "case %zu: %d", i, r.status);
		ck_assert_ptr_nonnull(strstr(r.body, "\"error\""));
		ck_assert(client_sees_close(cl));
		client_free(cl);
	}
	/* a good request after a bad one on a keep-alive connection: the
	 * good one is answered, then the bad one closes */
	cl = client_new();
	client_sends(cl, "GET /hello HTTP/1.1\r\n\r\nBLAH\x7f\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 200);
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 400);
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(expect_100_continue_gets_an_interim_response)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	client_sends(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
	        "Expect: 100-continue\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 100);
	client_sends(cl, "body");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(r.body, "body");
	client_free(cl);

	cl = client_new();
	client_sends(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
	        "Expect: something-else\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 417);
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(expect_with_too_large_body_gets_413_without_100)
{
	struct http_config cfg;
	struct client *cl;
	struct resp r;

	config_small(&cfg);
	start_server(&cfg);
	cl = client_new();
	client_sends(cl, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999\r\n"
	        "Expect: 100-continue\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 413);
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(head_gets_headers_only)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	client_sends(cl, "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 1), 0);
	ck_assert_int_eq(r.status, 200);
	ck_assert(has_header(&r, "content-length: 5"));
	ck_assert_uint_eq(r.body_len, 0);
	/* no stray body bytes: the next response parses cleanly */
	get(cl, "/hello", &r);
	ck_assert_str_eq(r.body, "hello");
	client_sends(cl, "HEAD /stream?n=2&ms=1 HTTP/1.1\r\nHost: t\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 1), 0);
	ck_assert(has_header(&r, "transfer-encoding: chunked"));
	usleep(50000);
	get(cl, "/hello", &r);
	ck_assert_str_eq(r.body, "hello");
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(http10_gets_close_unless_keep_alive)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	client_sends(cl, "GET /hello HTTP/1.0\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_str_eq(r.body, "hello");
	ck_assert(has_header(&r, "connection: close"));
	ck_assert(client_sees_close(cl));
	client_free(cl);

	cl = client_new();
	client_sends(cl, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert(has_header(&r, "connection: keep-alive"));
	/* an HTTP/1.0 stream is delimited by the close */
	client_sends(cl, "GET /stream?n=3&ms=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_ptr_null(strstr(r.hdrs, "transfer-encoding"));
	ck_assert_str_eq(r.body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(streamed_response_is_chunked_and_reassembles)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	get(cl, "/stream?n=5&ms=5", &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert(has_header(&r, "transfer-encoding: chunked"));
	ck_assert(has_header(&r, "content-type: text/event-stream"));
	ck_assert(has_header(&r, "cache-control: no-cache"));
	ck_assert_ptr_null(strstr(r.hdrs, "content-length"));
	ck_assert_int_eq(r.n_chunks, 5);
	ck_assert_str_eq(r.body,
	        "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n");
	/* the connection is still usable */
	get(cl, "/hello", &r);
	ck_assert_str_eq(r.body, "hello");
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(deferred_response_is_answered_from_a_timer)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	get(cl, "/defer?ms=100", &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(r.body, "deferred 100");
	client_free(cl);
	ck_assert_int_eq(atomic_load(&F.n_hooks), 0);
	stop_server();
}
END_TEST

START_TEST(client_disconnect_during_stream_fires_close_hook_once)
{
	struct client *cl;
	char b[256];

	start_server(NULL);
	cl = client_new();
	client_sends(cl, "GET /forever HTTP/1.1\r\nHost: t\r\n\r\n");
	ck_assert_int_gt(recv(cl->fd, b, sizeof(b), 0), 0); /* headers/chunks */
	client_free(cl);
	wait_for(&F.n_hooks, 1);
	ck_assert_int_eq(atomic_load(&F.hook_seen_closed), 1);
	ck_assert_int_eq(atomic_load(&F.last_write_rc), EPMOE_ECLOSED);
	usleep(100000);
	ck_assert_int_eq(atomic_load(&F.n_hooks), 1);
	stop_server();
	ck_assert_int_eq(atomic_load(&F.n_hooks), 1);
}
END_TEST

START_TEST(client_disconnect_while_deferred_fires_close_hook)
{
	struct client *cl;

	start_server(NULL);
	cl = client_new();
	client_sends(cl, "GET /hang HTTP/1.1\r\nHost: t\r\n\r\n");
	wait_for(&F.n_requests, 1);
	client_free(cl);
	wait_for(&F.n_hooks, 1);
	stop_server();
	ck_assert_int_eq(atomic_load(&F.n_hooks), 1);
}
END_TEST

START_TEST(server_close_fires_hooks_of_pending_requests)
{
	struct client *a, *b;

	start_server(NULL);
	a = client_new();
	b = client_new();
	client_sends(a, "GET /hang HTTP/1.1\r\nHost: t\r\n\r\n");
	client_sends(b, "GET /forever HTTP/1.1\r\nHost: t\r\n\r\n");
	wait_for(&F.n_requests, 2);
	stop_server();
	ck_assert_int_eq(atomic_load(&F.n_hooks), 2);
	ck_assert(client_sees_close(a));
	client_free(a);
	client_free(b);
}
END_TEST

START_TEST(released_without_answer_gets_500)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	get(cl, "/drop", &r);
	ck_assert_int_eq(r.status, 500);
	ck_assert_ptr_nonnull(strstr(r.body, "server_error"));
	get(cl, "/hello", &r); /* still keep-alive */
	ck_assert_int_eq(r.status, 200);
	/* released mid-stream: the body is cut short */
	client_sends(cl, "GET /dropstream HTTP/1.1\r\nHost: t\r\n\r\n");
	ck_assert_int_eq(client_read(cl, &r, 0), -2);
	ck_assert_str_eq(r.body, "partial");
	client_free(cl);
	ck_assert_int_eq(atomic_load(&F.n_hooks), 0);
	stop_server();
}
END_TEST

START_TEST(bad_response_arguments_are_refused)
{
	struct client *cl;
	struct resp r;

	start_server(NULL);
	cl = client_new();
	get(cl, "/badargs", &r);
	ck_assert_int_eq(r.status, 204);
	ck_assert_ptr_null(strstr(r.hdrs, "content-length"));
	get(cl, "/headers", &r);
	ck_assert_str_eq(r.body, "Host=t;");
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(idle_connection_is_closed_after_timeout)
{
	struct http_config cfg;
	struct client *cl;
	struct resp r;

	http_config_default(&cfg);
	cfg.idle_timeout_ms = 150;
	start_server(&cfg);
	cl = client_new();
	ck_assert(client_sees_close(cl)); /* silent from the start */
	client_free(cl);
	cl = client_new();
	get(cl, "/hello", &r);
	ck_assert(client_sees_close(cl)); /* silent after a response */
	client_free(cl);
	/* a slow deferred answer is not cut by the idle timeout */
	cl = client_new();
	get(cl, "/defer?ms=400", &r);
	ck_assert_str_eq(r.body, "deferred 400");
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(slow_request_gets_408)
{
	struct http_config cfg;
	struct client *cl;
	struct resp r;

	http_config_default(&cfg);
	cfg.request_timeout_ms = 200;
	start_server(&cfg);
	cl = client_new();
	client_sends(cl, "GET /hello HTTP/1.1\r\n");
	for (int i = 0; i < 3; i++) { /* trickling bytes does not extend it */
		usleep(80000);
		client_sends(cl, "X: y\r\n");
	}
	ck_assert_int_eq(client_read(cl, &r, 0), 0);
	ck_assert_int_eq(r.status, 408);
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(connections_beyond_the_limit_get_503)
{
	struct http_config cfg;
	struct client *cl[4], *extra;
	struct resp r;

	http_config_default(&cfg);
	cfg.max_connections = 4;
	start_server(&cfg);
	for (int i = 0; i < 4; i++) {
		cl[i] = client_new();
		get(cl[i], "/hello", &r);
		ck_assert_int_eq(r.status, 200);
	}
	extra = client_new();
	ck_assert_int_eq(client_read(extra, &r, 0), 0);
	ck_assert_int_eq(r.status, 503);
	ck_assert(has_header(&r, "retry-after: 1"));
	ck_assert(client_sees_close(extra));
	client_free(extra);
	for (int i = 0; i < 4; i++)
		client_free(cl[i]);
	wait_connections(1);
	stop_server();
}
END_TEST

START_TEST(many_connections_are_served_and_freed)
{
	enum { N_SEQ = 150, N_OPEN = 40 };
	struct client *open[N_OPEN];
	struct resp r;

	start_server(NULL);
	for (int i = 0; i < N_SEQ; i++) {
		struct client *cl = client_new();

		client_sends(cl, "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
		ck_assert_int_eq(client_read(cl, &r, 0), 0);
		ck_assert_str_eq(r.body, "hello");
		client_free(cl);
	}
	for (int i = 0; i < N_OPEN; i++) {
		open[i] = client_new();
		client_sends(open[i], i % 2 ? "GET /defer?ms=20 HTTP/1.1\r\n\r\n"
		                            : "GET /hello HTTP/1.1\r\n\r\n");
	}
	for (int i = 0; i < N_OPEN; i++) {
		ck_assert_int_eq(client_read(open[i], &r, 0), 0);
		ck_assert_int_eq(r.status, 200);
	}
	/* half of them hang up in the middle of a request */
	for (int i = 0; i < N_OPEN; i += 2)
		client_sends(open[i], "POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nab");
	for (int i = 0; i < N_OPEN; i++)
		client_free(open[i]);
	ck_assert_int_eq(atomic_load(&F.n_requests), N_SEQ + N_OPEN);
	wait_connections(1);
	stop_server();
}
END_TEST

START_TEST(slow_reader_of_a_stream_is_dropped)
{
	struct http_config cfg;
	struct client *cl;

	http_config_default(&cfg);
	cfg.max_write_queue = 1 << 20;
	start_server(&cfg);
	cl = client_new();
	client_sends(cl, "GET /flood HTTP/1.1\r\nHost: t\r\n\r\n");
	wait_for(&F.n_hooks, 1); /* the client never reads */
	client_free(cl);
	stop_server();
}
END_TEST

START_TEST(bad_addresses_and_busy_ports_are_refused)
{
	static const char *const bad[] = {
		"nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999",
		"127.0.0.1:80x", "[::1:80", "[]:80", "999.1.1.1:80", NULL
	};
	struct http_server *srv, *other;
	struct http_config cfg;
	uv_loop_t loop;
	char addr[64];

	ck_assert_int_eq(uv_loop_init(&loop), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		ck_assert_int_eq(http_server_start(&srv, &loop, bad[i], NULL,
		        handler, NULL), EPMOE_EINVAL);
	http_config_default(&cfg);
	cfg.max_connections = 0;
	ck_assert_int_eq(http_server_start(&srv, &loop, "127.0.0.1:0", &cfg,
	        handler, NULL), EPMOE_EINVAL);
	ck_assert_int_eq(http_server_start(&srv, &loop, "127.0.0.1:0", NULL,
	        handler, NULL), 0);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", http_server_port(srv));
	ck_assert_int_eq(http_server_start(&other, &loop, addr, NULL, handler,
	        NULL), EPMOE_EIO);
	http_server_close(srv, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("http");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, get_returns_body_with_length_and_date);
	tcase_add_test(tc, keep_alive_serves_requests_in_sequence_on_one_connection);
	tcase_add_test(tc, pipelined_requests_are_answered_in_order);
	tcase_add_test(tc, post_bodies_with_length_and_chunked_arrive_whole);
	tcase_add_test(tc, body_over_limit_gets_413_and_server_keeps_serving);
	tcase_add_test(tc, header_over_limit_gets_431);
	tcase_add_test(tc, garbage_bytes_get_400_and_close);
	tcase_add_test(tc, expect_100_continue_gets_an_interim_response);
	tcase_add_test(tc, expect_with_too_large_body_gets_413_without_100);
	tcase_add_test(tc, head_gets_headers_only);
	tcase_add_test(tc, http10_gets_close_unless_keep_alive);
	tcase_add_test(tc, streamed_response_is_chunked_and_reassembles);
	tcase_add_test(tc, deferred_response_is_answered_from_a_timer);
	tcase_add_test(tc, client_disconnect_during_stream_fires_close_hook_once);
	tcase_add_test(tc, client_disconnect_while_deferred_fires_close_hook);
	tcase_add_test(tc, server_close_fires_hooks_of_pending_requests);
	tcase_add_test(tc, released_without_answer_gets_500);
	tcase_add_test(tc, bad_response_arguments_are_refused);
	tcase_add_test(tc, idle_connection_is_closed_after_timeout);
	tcase_add_test(tc, slow_request_gets_408);
	tcase_add_test(tc, connections_beyond_the_limit_get_503);
	tcase_add_test(tc, many_connections_are_served_and_freed);
	tcase_add_test(tc, slow_reader_of_a_stream_is_dropped);
	tcase_add_test(tc, bad_addresses_and_busy_ports_are_refused);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
