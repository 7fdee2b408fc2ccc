/* HTTP/1.1 server on libuv with http-parser.  See http.h for the contract.
 *
 * A connection is a small state machine:
 *
 *   OPEN      reading and parsing; at most one request is "active" (handed
 *             to the handler and not yet fully answered).  While one is
 *             active, incoming bytes are only buffered (up to PIPELINE_CAP,
 *             then reading pauses), so pipelined requests are answered in
 *             order and a client that hangs up is still noticed (EOF).
 *   DRAINING  the last response is queued; uv_shutdown sends FIN after it
 *             and input is read and discarded until EOF or LINGER_MS, so
 *             the kernel does not reset the connection while the client
 *             still reads (e.g. after a 413 with unread body bytes).
 *   CLOSING   uv_close called on the socket and the timer; the connection
 *             is freed when both close callbacks ran, and only then is an
 *             active request detached and its close hook called.
 *
 * One timer per connection serves as idle timeout, request (slowloris)
 * timeout, drain/linger timeout and, with a 0 delay, to resume parsing of
 * buffered pipelined requests outside of the caller's stack.  The module
 * never calls the handler or a hook from inside a call the owner made
 * (http_respond & co.): those run from libuv callbacks only.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cJSON.h>
#include <http_parser.h>
#include <uv.h>

#include "err.h"
#include "http.h"
#include "log.h"

#define READ_BUF_SIZE (64 * 1024)
#define PIPELINE_CAP (64 * 1024) /* unparsed bytes buffered while answering */
#define LINGER_MS 2000           /* discard input this long after FIN */
#define REFUSE_SLACK 64          /* connections beyond the max still told 503 */
#define IN_KEEP_MAX (16 * 1024)  /* larger idle input buffers are freed */

struct buf {
	char *p;
	size_t len, cap;
};

enum hstate { HS_URL, HS_FIELD, HS_VALUE };
enum rstate { RS_NONE, RS_STREAM, RS_DONE };
enum cstate { CS_OPEN, CS_DRAINING, CS_CLOSING };

struct req_impl {
	struct http_req pub;     /* first member: &pub == the impl */
	struct http_conn *conn;  /* set while active; NULL once detached */
	struct buf head;         /* url\0 (name\0 value\0)* path\0 query\0 */
	struct buf body;
	size_t *hoff;            /* [2 * n_hdrs] name/value offsets into head */
	size_t n_hdrs, cap_hdrs;
	const char **hptr;       /* [2 * n_hdrs] once the headers are complete */
	size_t url_len;
	size_t hdr_bytes;        /* counted against max_header_size */
	enum hstate hstate;
	int headers_done;
	int is_head;
	int keep_alive;
	enum rstate rstate;
	int chunked;             /* stream framing: chunked, else close-delimited */
	int released;
	http_req_close_fn on_close;
	void *on_close_ud;
	char peer[64];
};

struct http_conn {
	struct http_server *srv;
	struct http_conn *prev, *next;
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_shutdown_t shut;
	int n_handles;           /* handles whose close callback is pending */
	enum cstate state;
	http_parser parser;
	struct buf in;           /* received bytes; in.p[in_off..len) unparsed */
	size_t in_off;
	struct req_impl *cur;    /* being received */
	struct req_impl *ready;  /* complete, set by on_message_complete */
	struct req_impl *active; /* with the handler, response not ended */
	int err_status;          /* set by a parser callback that refused */
	const char *err_msg;
	int reading;
	int in_process;
	int resume;              /* the timer is a 0-delay "parse more" */
	int idle_armed;
	int eof;                 /* the peer sent FIN */
	uint64_t id, n_reqs;
	char peer[64];
	char host[48];           /* the peer's address without the port: the
	                          * key of the per-client cap */
};

struct http_server {
	uv_loop_t *loop;
	uv_tcp_t listener;
	struct http_config cfg;
	http_handler_fn handler;
	void *ud;
	http_server_closed_fn closed_cb;
	int closing;
	int listener_open;
	struct http_conn *conns;
	size_t n_conns;
	uint64_t next_conn_id;
	struct http_counters counters;
	int port;
	http_parser_settings settings;
	time_t date_sec;
	char date[40];
	char rbuf[READ_BUF_SIZE]; /* every read lands here and is consumed at once */
};

struct wreq {
	uv_write_t req;
	size_t len;
	char data[];
};

static void conn_close(struct http_conn *c);
static void conn_shutdown(struct http_conn *c);
static void conn_process(struct http_conn *c);
static void on_timer(uv_timer_t *t);

/* ---- small helpers ---- */

static int
buf_reserve(struct buf *b, size_t extra)
{
	size_t cap;
	char *p;

	if (extra <= b->cap - b->len)
		return 0;
	if (extra > SIZE_MAX / 2 - b->len)
		return EPMOE_ENOMEM;
	cap = b->cap ? b->cap : 256;
	while (cap - b->len < extra)
		cap *= 2;
	if ((p = realloc(b->p, cap)) == NULL)
		return EPMOE_ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

/* d must not point into b (see buf_append_own). */
static int
buf_append(struct buf *b, const void *d, size_t n)
{
	if (buf_reserve(b, n) != 0)
		return EPMOE_ENOMEM;
	if (n > 0)
		memcpy(b->p + b->len, d, n);
	b->len += n;
	return 0;
}

/* Appends n bytes that start at offset off of b itself: the reserve may
 * move b->p, so the source is found after it. */
static int
buf_append_own(struct buf *b, size_t off, size_t n)
{
	if (buf_reserve(b, n) != 0)
		return EPMOE_ENOMEM;
	if (n > 0)
		memmove(b->p + b->len, b->p + off, n);
	b->len += n;
	return 0;
}

static int __attribute__((format(printf, 2, 3)))
buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || buf_reserve(b, (size_t)n + 1) != 0)
		return EPMOE_ENOMEM;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

static void
buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

static struct req_impl *
impl(const struct http_req *req)
{
	return (struct req_impl *)req;
}

static void
req_free(struct req_impl *r)
{
	if (r == NULL)
		return;
	buf_free(&r->head);
	buf_free(&r->body);
	free(r->hoff);
	free(r->hptr);
	free(r);
}

void
http_config_default(struct http_config *cfg)
{
	cfg->max_header_size = 16 * 1024;
	cfg->max_body_size = 8 * 1024 * 1024;
	cfg->max_connections = 1024;
	cfg->max_per_client = 128;
	cfg->idle_timeout_ms = 60000;
	cfg->header_timeout_ms = 10000;
	cfg->body_timeout_ms = 30000;
	cfg->max_write_queue = 64 * 1024 * 1024;
	cfg->backlog = 511;
}

const char *
http_status_text(int status)
{
	const char *s = http_status_str((enum http_status)status);

	return strcmp(s, "<unknown>") == 0 ? "Unknown" : s;
}

/* The Date header value, formatted at most once a second. */
static const char *
server_date(struct http_server *srv)
{
	time_t now = time(NULL);
	struct tm tm;

	if (now != srv->date_sec) {
		gmtime_r(&now, &tm);
		strftime(srv->date, sizeof(srv->date),
		        "%a, %d %b %Y %H:%M:%S GMT", &tm);
		srv->date_sec = now;
	}
	return srv->date;
}

static int
no_crlf(const char *s)
{
	return s == NULL || strpbrk(s, "\r\n") == NULL;
}

/* extra_headers: NULL, "", or whole lines each ending in CRLF and no
 * empty line (which would end the header block early). */
static int
extra_ok(const char *extra)
{
	size_t n;

	if (extra == NULL || *extra == '\0')
		return 1;
	n = strlen(extra);
	return n >= 2 && strcmp(extra + n - 2, "\r\n") == 0 &&
	        strncmp(extra, "\r\n", 2) != 0 && strstr(extra, "\r\n\r\n") == NULL;
}

enum framing { FR_LENGTH, FR_CHUNKED, FR_CLOSE };

/* Writes the status line and headers into h. */
static int
head_build(struct buf *h, struct http_server *srv, int status,
        const char *ct, const char *extra, enum framing fr, size_t len,
        int keep_alive, int http_minor)
{
	int rc = buf_printf(h, "HTTP/1.1 %d %s\r\nDate: %s\r\n", status,
	        http_status_text(status), server_date(srv));

	if (rc == 0 && ct != NULL)
		rc = buf_printf(h, "Content-Type: %s\r\n", ct);
	if (rc == 0 && fr == FR_LENGTH && status >= 200 && status != 204 &&
	    status != 304)
		rc = buf_printf(h, "Content-Length: %zu\r\n", len);
	if (rc == 0 && fr == FR_CHUNKED)
		rc = buf_printf(h, "Transfer-Encoding: chunked\r\n");
	if (rc == 0 && !keep_alive)
		rc = buf_printf(h, "Connection: close\r\n");
	else if (rc == 0 && http_minor == 0)
		rc = buf_printf(h, "Connection: keep-alive\r\n");
	if (rc == 0 && extra != NULL)
		rc = buf_printf(h, "%s", extra);
	if (rc == 0)
		rc = buf_printf(h, "\r\n");
	return rc;
}

/* A write request holding copies of head, then n body bytes, then tn
 * tail bytes (any may be empty). */
static struct wreq *
wreq_new(const struct buf *head, const void *body, size_t n, const char *tail,
        size_t tn)
{
	size_t hl = head ? head->len : 0;
	struct wreq *w;

	if (n > SIZE_MAX - sizeof(*w) - hl - tn)
		return NULL;
	if ((w = malloc(sizeof(*w) + hl + n + tn)) == NULL)
		return NULL;
	if (hl > 0)
		memcpy(w->data, head->p, hl);
	if (n > 0)
		memcpy(w->data + hl, body, n);
	if (tn > 0)
		memcpy(w->data + hl + n, tail, tn);
	w->len = hl + n + tn;
	return w;
}

static void
on_write(uv_write_t *req, int status)
{
	struct http_conn *c = req->handle->data;

	free(req); /* the uv_write_t is the first member of struct wreq */
	if (status < 0 && c->state != CS_CLOSING) {
		log_debug("http: conn %llu: write failed: %s",
		        (unsigned long long)c->id, uv_strerror(status));
		conn_close(c);
	}
}

/* Queues w (ownership moves to the write) on c.  A failure closes c. */
static int
conn_write(struct http_conn *c, struct wreq *w)
{
	uv_buf_t b;
	int rc;

	if (c->state == CS_CLOSING) {
		free(w);
		return EPMOE_ECLOSED;
	}
	b.base = w->data;
	b.len = w->len;
	rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
	if (rc < 0) {
		free(w);
		conn_close(c);
		return EPMOE_ECLOSED;
	}
	return 0;
}

static void
conn_arm(struct http_conn *c, uint64_t ms)
{
	uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* Sends a module-made error with an OpenAI-style JSON body, no keep-alive. */
static int
conn_send_error(struct http_conn *c, int status, const char *msg,
        const char *extra)
{
	struct buf head = { 0 };
	struct wreq *w = NULL;
	cJSON *root, *e;
	char *body = NULL;
	int rc = EPMOE_ENOMEM;

	if ((root = cJSON_CreateObject()) != NULL &&
	    (e = cJSON_AddObjectToObject(root, "error")) != NULL &&
	    cJSON_AddStringToObject(e, "message", msg) != NULL &&
	    cJSON_AddStringToObject(e, "type", status >= 500 ? "server_error"
	                                   : "invalid_request_error") != NULL &&
	    cJSON_AddNullToObject(e, "param") != NULL &&
	    cJSON_AddNullToObject(e, "code") != NULL)
		body = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (body != NULL &&
	    head_build(&head, c->srv, status, "application/json", extra,
	        FR_LENGTH, strlen(body), 0, 1) == 0 &&
	    (w = wreq_new(&head, body, strlen(body), NULL, 0)) != NULL)
		rc = conn_write(c, w);
	cJSON_free(body);
	buf_free(&head);
	return rc;
}

/* Answers a protocol error and closes gracefully. */
static void
conn_fail(struct http_conn *c, int status, const char *msg)
{
	log_debug("http: conn %llu (%s): %d %s", (unsigned long long)c->id,
	        c->peer, status, msg);
	req_free(c->cur);
	c->cur = NULL;
	if (conn_send_error(c, status, msg, NULL) != 0) {
		conn_close(c);
		return;
	}
	conn_shutdown(c);
}

/* ---- connection lifecycle ---- */

static void
server_maybe_finish(struct http_server *srv)
{
	http_server_closed_fn cb;
	void *ud;

	if (!srv->closing || srv->listener_open || srv->n_conns > 0)
		return;
	cb = srv->closed_cb;
	ud = srv->ud;
	free(srv);
	if (cb != NULL)
		cb(ud);
}

static void
conn_free(struct http_conn *c)
{
	struct http_server *srv = c->srv;
	struct req_impl *r = c->active;

	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	srv->n_conns--;
	req_free(c->cur);
	req_free(c->ready);
	buf_free(&c->in);
	free(c);

	/* The active request outlives its connection until released. */
	if (r != NULL) {
		r->conn = NULL;
		if (r->released) {
			req_free(r);
		} else if (r->on_close != NULL) {
			http_req_close_fn cb = r->on_close;

			r->on_close = NULL;
			cb(&r->pub, r->on_close_ud); /* may release r */
		}
	}
	server_maybe_finish(srv);
}

static void
on_handle_closed(uv_handle_t *h)
{
	struct http_conn *c = h->data;

	if (--c->n_handles == 0)
		conn_free(c);
}

/* Abrupt close: pending writes are dropped. */
static void
conn_close(struct http_conn *c)
{
	if (c->state == CS_CLOSING)
		return;
	c->state = CS_CLOSING;
	c->reading = 0;
	uv_close((uv_handle_t *)&c->timer, on_handle_closed);
	uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void
on_shutdown(uv_shutdown_t *req, int status)
{
	struct http_conn *c = req->handle->data;

	if (c->state == CS_CLOSING)
		return;
	if (status < 0 || c->eof) {
		conn_close(c); /* sent all; the peer already said goodbye */
		return;
	}
	conn_arm(c, LINGER_MS); /* everything was sent; wait for the peer's FIN */
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void
conn_read_start(struct http_conn *c)
{
	if (c->reading || c->state == CS_CLOSING)
		return;
	if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
		conn_close(c);
		return;
	}
	c->reading = 1;
}

/* Graceful close: FIN after the queued writes, then discard input. */
static void
conn_shutdown(struct http_conn *c)
{
	if (c->state != CS_OPEN)
		return;
	c->state = CS_DRAINING;
	c->resume = 0;
	if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
		conn_close(c);
		return;
	}
	/* bounds the time the queued response may take to leave */
	conn_arm(c, c->srv->cfg.idle_timeout_ms);
	conn_read_start(c);
}

static void
on_timer(uv_timer_t *t)
{
	struct http_conn *c = t->data;

	switch (c->state) {
	case CS_OPEN:
		if (c->resume) {
			conn_process(c);
		} else if (c->active != NULL) {
			/* the handler has it: no timeout applies */
		} else if (c->cur != NULL) {
			c->srv->counters.timeouts++;
			conn_fail(c, 408, c->cur->headers_done
			        ? "the request body did not arrive in time"
			        : "the request headers did not arrive in time");
		} else {
			conn_close(c); /* idle keep-alive connection */
		}
		break;
	case CS_DRAINING:
		conn_close(c);
		break;
	case CS_CLOSING:
		break;
	}
}

/* The response of the active request ended (queued in full). */
static void
response_done(struct req_impl *r)
{
	struct http_conn *c = r->conn;
	int keep = r->keep_alive && !c->srv->closing;

	r->rstate = RS_DONE;
	c->active = NULL;
	r->conn = NULL;
	if (r->released)
		req_free(r);
	if (!keep) {
		conn_shutdown(c);
		return;
	}
	if (c->in_process)
		return; /* conn_process's loop goes on with the next request */
	if (c->in_off < c->in.len) {
		/* Parse the pipelined rest from the loop, not from the
		 * caller's stack (the handler must not be re-entered). */
		c->resume = 1;
		c->idle_armed = 0;
		conn_arm(c, 0);
	} else {
		c->idle_armed = 1;
		conn_arm(c, c->srv->cfg.idle_timeout_ms);
	}
	conn_read_start(c);
}

static void
dispatch(struct http_conn *c, struct req_impl *r)
{
	c->active = r;
	r->conn = c;
	r->pub.conn_id = c->id;
	r->pub.seq = c->n_reqs++;
	uv_timer_stop(&c->timer);
	c->idle_armed = 0;
	c->srv->handler(&r->pub, c->srv->ud);
}

static int
status_for_errno(enum http_errno e, const char **msg)
{
	switch (e) {
	case HPE_HEADER_OVERFLOW:
		*msg = "the request headers are too large";
		return 431;
	default:
		*msg = http_errno_description(e);
		return 400;
	}
}

static void
conn_process(struct http_conn *c)
{
	if (c->in_process)
		return;
	c->in_process = 1;
	c->resume = 0;
	while (c->state == CS_OPEN && c->active == NULL && c->in_off < c->in.len) {
		size_t avail = c->in.len - c->in_off, n;
		enum http_errno e;

		http_parser_pause(&c->parser, 0);
		n = http_parser_execute(&c->parser, &c->srv->settings,
		        c->in.p + c->in_off, avail);
		c->in_off += n;
		e = HTTP_PARSER_ERRNO(&c->parser);
		if (c->state != CS_OPEN)
			break;
		if (c->ready != NULL) {
			struct req_impl *r = c->ready;

			c->ready = NULL;
			dispatch(c, r);
			continue;
		}
		if (e != HPE_OK && e != HPE_PAUSED) {
			const char *msg;
			int st = status_for_errno(e, &msg);
			char text[160];

			if (c->err_status != 0) {
				conn_fail(c, c->err_status, c->err_msg);
			} else {
				snprintf(text, sizeof(text), "malformed HTTP request: %s",
				        msg);
				conn_fail(c, st, st == 400 ? text : msg);
			}
			break;
		}
		if (n < avail) {
			conn_fail(c, 400, "malformed HTTP request");
			break;
		}
	}
	if (c->in_off == c->in.len) {
		c->in_off = c->in.len = 0;
		if (c->in.cap > IN_KEEP_MAX)
			buf_free(&c->in);
	} else if (c->in_off > 0 && c->in_off >= c->in.cap / 2) {
		memmove(c->in.p, c->in.p + c->in_off, c->in.len - c->in_off);
		c->in.len -= c->in_off;
		c->in_off = 0;
	}
	if (c->state == CS_OPEN) {
		if (c->active == NULL && c->cur == NULL && !c->idle_armed) {
			c->idle_armed = 1;
			conn_arm(c, c->srv->cfg.idle_timeout_ms);
		}
		if (c->in.len - c->in_off < PIPELINE_CAP)
			conn_read_start(c);
	}
	c->in_process = 0;
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	struct http_conn *c = h->data;

	b->base = c->srv->rbuf;
	b->len = sizeof(c->srv->rbuf);
}

static void
on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct http_conn *c = s->data;

	if (n == 0 || c->state == CS_CLOSING)
		return;
	if (n < 0) {
		if (c->state == CS_OPEN && n == UV_EOF && c->active == NULL &&
		    c->cur == NULL && c->in_off == c->in.len) {
			c->eof = 1;
			conn_shutdown(c); /* let queued responses leave */
			return;
		}
		/* The client is gone: an active request gets its hook. */
		conn_close(c);
		return;
	}
	if (c->state == CS_DRAINING)
		return; /* discarded */
	if (buf_append(&c->in, b->base, (size_t)n) != 0) {
		conn_close(c);
		return;
	}
	if (c->active != NULL && c->in.len - c->in_off >= PIPELINE_CAP) {
		uv_read_stop(s);
		c->reading = 0;
	}
	conn_process(c);
}

/* ---- parser callbacks ---- */

static int
parse_refuse(struct http_conn *c, int status, const char *msg)
{
	c->err_status = status;
	c->err_msg = msg;
	return -1;
}

static int
cb_message_begin(http_parser *p)
{
	struct http_conn *c = p->data;
	struct req_impl *r;

	if ((r = calloc(1, sizeof(*r))) == NULL)
		return parse_refuse(c, 500, "out of memory");
	r->hstate = HS_URL;
	memcpy(r->peer, c->peer, sizeof(r->peer));
	r->pub.peer = r->peer;
	req_free(c->cur);
	c->cur = r;
	c->idle_armed = 0;
	conn_arm(c, c->srv->cfg.header_timeout_ms);
	return 0;
}

/* Appends header-block bytes, enforcing max_header_size. */
static int
head_add(struct http_conn *c, struct req_impl *r, const char *at, size_t len)
{
	if (len > c->srv->cfg.max_header_size ||
	    r->hdr_bytes + len > c->srv->cfg.max_header_size)
		return parse_refuse(c, 431, "the request headers are too large");
	r->hdr_bytes += len;
	if (buf_append(&r->head, at, len) != 0)
		return parse_refuse(c, 500, "out of memory");
	return 0;
}

static int
cb_url(http_parser *p, const char *at, size_t len)
{
	struct http_conn *c = p->data;
	struct req_impl *r = c->cur;

	r->url_len += len;
	return head_add(c, r, at, len);
}

static int
cb_header_field(http_parser *p, const char *at, size_t len)
{
	struct http_conn *c = p->data;
	struct req_impl *r = c->cur;

	if (r->headers_done)
		return 0; /* chunked trailers are ignored */
	if (r->hstate != HS_FIELD) {
		/* ends the URL or the previous value; starts a header */
		if (head_add(c, r, "", 1) != 0)
			return -1;
		if (r->n_hdrs == r->cap_hdrs) {
			size_t cap = r->cap_hdrs ? r->cap_hdrs * 2 : 16;
			size_t *h = realloc(r->hoff, 2 * cap * sizeof(*h));

			if (h == NULL)
				return parse_refuse(c, 500, "out of memory");
			r->hoff = h;
			r->cap_hdrs = cap;
		}
		r->hoff[2 * r->n_hdrs] = r->head.len;
		r->hoff[2 * r->n_hdrs + 1] = 0;
		r->n_hdrs++;
		r->hdr_bytes += 4; /* ": " and CRLF on the wire */
		r->hstate = HS_FIELD;
	}
	return head_add(c, r, at, len);
}

static int
cb_header_value(http_parser *p, const char *at, size_t len)
{
	struct http_conn *c = p->data;
	struct req_impl *r = c->cur;

	if (r->headers_done)
		return 0;
	if (r->hstate != HS_VALUE) {
		if (head_add(c, r, "", 1) != 0) /* ends the name */
			return -1;
		r->hoff[2 * r->n_hdrs - 1] = r->head.len;
		r->hstate = HS_VALUE;
	}
	return head_add(c, r, at, len);
}

static int
cb_headers_complete(http_parser *p)
{
	struct http_conn *c = p->data;
	struct req_impl *r = c->cur;
	struct http_server *srv = c->srv;
	struct http_parser_url u;
	size_t path_off, query_off;
	const char *expect;
	int body_expected;

	/* Terminate the last piece; a name without a value gets "". */
	if (buf_append(&r->head, "", 1) != 0)
		return parse_refuse(c, 500, "out of memory");
	if (r->hstate == HS_FIELD) {
		r->hoff[2 * r->n_hdrs - 1] = r->head.len;
		if (buf_append(&r->head, "", 1) != 0)
			return parse_refuse(c, 500, "out of memory");
	}
	if (r->url_len > 0xffff)
		return parse_refuse(c, 414, "the request URL is too long");
	http_parser_url_init(&u);
	if (http_parser_parse_url(r->head.p, r->url_len,
	        p->method == HTTP_CONNECT, &u) != 0)
		return parse_refuse(c, 400, "malformed request URL");
	path_off = r->head.len;
	if ((u.field_set & (1 << UF_PATH)) != 0) {
		if (buf_append_own(&r->head, u.field_data[UF_PATH].off,
		        u.field_data[UF_PATH].len) != 0)
			return parse_refuse(c, 500, "out of memory");
	} else if (buf_append(&r->head, "/", 1) != 0) {
		return parse_refuse(c, 500, "out of memory");
	}
	if (buf_append(&r->head, "", 1) != 0)
		return parse_refuse(c, 500, "out of memory");
	query_off = r->head.len;
	if ((u.field_set & (1 << UF_QUERY)) != 0 &&
	    buf_append_own(&r->head, u.field_data[UF_QUERY].off,
	        u.field_data[UF_QUERY].len) != 0)
		return parse_refuse(c, 500, "out of memory");
	if (buf_append(&r->head, "", 1) != 0)
		return parse_refuse(c, 500, "out of memory");

	/* No more appends to head: resolve offsets into pointers. */
	if (r->n_hdrs > 0 &&
	    (r->hptr = malloc(2 * r->n_hdrs * sizeof(*r->hptr))) == NULL)
		return parse_refuse(c, 500, "out of memory");
	for (size_t i = 0; i < 2 * r->n_hdrs; i++)
		r->hptr[i] = r->head.p + r->hoff[i];
	r->headers_done = 1;
	r->pub.method = http_method_str((enum http_method)p->method);
	r->pub.path = r->head.p + path_off;
	r->pub.query = r->head.p + query_off;
	r->pub.body = "";
	r->pub.http_major = p->http_major;
	r->pub.http_minor = p->http_minor;
	r->pub.content_type = http_req_header(&r->pub, "Content-Type");
	r->is_head = p->method == HTTP_HEAD;

	body_expected = (p->flags & F_CHUNKED) != 0 ||
	        (p->content_length > 0 && p->content_length != ULLONG_MAX);
	if ((p->flags & F_CHUNKED) == 0 && p->content_length != ULLONG_MAX) {
		if (p->content_length > srv->cfg.max_body_size)
			return parse_refuse(c, 413, "the request body is too large");
		if (p->content_length > 0 &&
		    buf_reserve(&r->body, (size_t)p->content_length + 1) != 0)
			return parse_refuse(c, 500, "out of memory");
	}
	if (body_expected)
		conn_arm(c, srv->cfg.body_timeout_ms);
	if ((expect = http_req_header(&r->pub, "Expect")) != NULL) {
		if (strcasecmp(expect, "100-continue") != 0)
			return parse_refuse(c, 417, "unsupported Expect header");
		if (body_expected && p->http_major == 1 && p->http_minor >= 1) {
			static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
			struct buf b = { (char *)cont, sizeof(cont) - 1, 0 };
			struct wreq *w = wreq_new(&b, NULL, 0, NULL, 0);

			if (w == NULL)
				return parse_refuse(c, 500, "out of memory");
			if (conn_write(c, w) != 0)
				return -1;
		}
	}
	return 0;
}

static int
cb_body(http_parser *p, const char *at, size_t len)
{
	struct http_conn *c = p->data;
	struct req_impl *r = c->cur;

	if (len > c->srv->cfg.max_body_size ||
	    r->body.len + len > c->srv->cfg.max_body_size)
		return parse_refuse(c, 413, "the request body is too large");
	if (buf_append(&r->body, at, len) != 0)
		return parse_refuse(c, 500, "out of memory");
	return 0;
}

static int
cb_message_complete(http_parser *p)
{
	struct http_conn *c = p->data;
	struct req_impl *r = c->cur;

	if (r->body.len > 0) {
		if (buf_reserve(&r->body, 1) != 0)
			return parse_refuse(c, 500, "out of memory");
		r->body.p[r->body.len] = '\0';
		r->pub.body = r->body.p;
	}
	r->pub.body_len = r->body.len;
	r->keep_alive = http_should_keep_alive(p);
	c->cur = NULL;
	c->ready = r;
	http_parser_pause(p, 1); /* one request at a time */
	return 0;
}

/* ---- server ---- */

/* A new connection on the server's list; NULL when out of memory. */
static struct http_conn *
conn_new(struct http_server *srv)
{
	struct http_conn *c;

	if ((c = calloc(1, sizeof(*c))) == NULL) {
		log_error("http: out of memory accepting a connection");
		return NULL;
	}
	c->srv = srv;
	c->id = ++srv->next_conn_id;
	uv_tcp_init(srv->loop, &c->tcp);
	uv_timer_init(srv->loop, &c->timer);
	c->tcp.data = c;
	c->timer.data = c;
	c->n_handles = 2;
	c->next = srv->conns;
	if (srv->conns != NULL)
		srv->conns->prev = c;
	srv->conns = c;
	srv->n_conns++;
	return c;
}

/* The oldest open connection other than c that has no request with the
 * handler (idle, or still sending one), among those of c's address when
 * same_host; also counts in *n_host the open connections of c's address.
 * The list runs newest first. */
static struct http_conn *
conn_victim(struct http_conn *c, int same_host, size_t *n_host)
{
	struct http_conn *v = NULL;

	*n_host = 0;
	for (struct http_conn *o = c->srv->conns; o != NULL; o = o->next) {
		int mine = strcmp(o->host, c->host) == 0;

		if (o->state != CS_OPEN)
			continue;
		*n_host += mine;
		if (o != c && o->active == NULL && o->ready == NULL &&
		        (!same_host || mine))
			v = o;
	}
	return v;
}

/* Applies the caps to the new connection c: closes an idle or slow one to
 * make room when it can.  Returns 0 to serve c, else c was refused. */
static int
conn_admit(struct http_conn *c)
{
	struct http_server *srv = c->srv;
	struct http_conn *v;
	size_t n_host, n_open = 0;
	const char *why = NULL;

	for (struct http_conn *o = srv->conns; o != NULL; o = o->next)
		n_open += o->state == CS_OPEN;
	if (srv->cfg.max_per_client > 0) {
		v = conn_victim(c, 1, &n_host);
		if (n_host > srv->cfg.max_per_client) {
			if (v == NULL)
				why = "too many connections from this client";
			else {
				log_debug("http: %s: closing its idle connection %llu (per-client cap %u)",
				        c->host, (unsigned long long)v->id,
				        srv->cfg.max_per_client);
				srv->counters.evicted++;
				conn_close(v);
				n_open--;
			}
		}
	}
	if (why == NULL && n_open > srv->cfg.max_connections) {
		if ((v = conn_victim(c, 0, &n_host)) == NULL)
			why = "too many connections";
		else {
			log_debug("http: closing idle connection %llu (%s) for %s (cap %u)",
			        (unsigned long long)v->id, v->peer, c->peer,
			        srv->cfg.max_connections);
			srv->counters.evicted++;
			conn_close(v);
		}
	}
	if (why == NULL)
		return 0;
	srv->counters.refused++;
	if (srv->n_conns > (size_t)srv->cfg.max_connections + REFUSE_SLACK) {
		conn_close(c);
		return -1;
	}
	log_debug("http: refusing %s: %s", c->peer, why);
	if (conn_send_error(c, 503, why, "Retry-After: 1\r\n") != 0) {
		conn_close(c);
		return -1;
	}
	conn_shutdown(c);
	return -1;
}

/* Names the peer, applies the caps and starts reading. */
static void
conn_begin(struct http_conn *c)
{
	struct http_server *srv = c->srv;
	struct sockaddr_storage ss;
	int len = sizeof(ss);

	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
		if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

			uv_ip6_name(a, c->host, sizeof(c->host));
			snprintf(c->peer, sizeof(c->peer), "[%s]:%d", c->host,
			        ntohs(a->sin6_port));
		} else if (ss.ss_family == AF_INET) {
			struct sockaddr_in *a = (struct sockaddr_in *)&ss;

			uv_ip4_name(a, c->host, sizeof(c->host));
			snprintf(c->peer, sizeof(c->peer), "%s:%d", c->host,
			        ntohs(a->sin_port));
		}
	}
	if (c->host[0] == '\0') { /* a UNIX socket or an unknown family */
		snprintf(c->host, sizeof(c->host), "local");
		snprintf(c->peer, sizeof(c->peer), "local");
	}
	uv_tcp_nodelay(&c->tcp, 1);
	if (conn_admit(c) != 0)
		return;
	http_parser_init(&c->parser, HTTP_REQUEST);
	c->parser.data = c;
	c->idle_armed = 1;
	conn_arm(c, srv->cfg.idle_timeout_ms);
	conn_read_start(c);
}

static void
on_connection(uv_stream_t *l, int status)
{
	struct http_server *srv = l->data;
	struct http_conn *c;

	if (status < 0) {
		log_warn("http: accept: %s", uv_strerror(status));
		return;
	}
	if (srv->closing || (c = conn_new(srv)) == NULL)
		return;
	if (uv_accept(l, (uv_stream_t *)&c->tcp) < 0) {
		conn_close(c);
		return;
	}
	conn_begin(c);
}

int
http_server_adopt(struct http_server *srv, uv_os_sock_t fd)
{
	struct http_conn *c;

	if (srv == NULL || srv->closing)
		return EPMOE_ESTATE;
	if ((c = conn_new(srv)) == NULL)
		return EPMOE_ENOMEM;
	if (uv_tcp_open(&c->tcp, fd) < 0) {
		conn_close(c); /* the handle holds no socket: fd stays the caller's */
		return EPMOE_EIO;
	}
	conn_begin(c);
	return 0;
}

void
http_server_get_counters(const struct http_server *srv, struct http_counters *out)
{
	*out = srv->counters;
}

static void
on_listener_closed(uv_handle_t *h)
{
	struct http_server *srv = h->data;

	srv->listener_open = 0;
	server_maybe_finish(srv);
}

/* "host:port", "[v6]:port", ":port" -> a socket address. */
static int
parse_addr(const char *addr, struct sockaddr_storage *ss)
{
	char host[64];
	const char *port_s, *end;
	char *stop;
	long port;
	size_t hl;
	int v6 = 0;

	if (addr == NULL)
		return EPMOE_EINVAL;
	if (addr[0] == '[') {
		if ((end = strchr(addr, ']')) == NULL || end[1] != ':')
			return EPMOE_EINVAL;
		hl = (size_t)(end - addr - 1);
		if (hl == 0 || hl >= sizeof(host))
			return EPMOE_EINVAL;
		memcpy(host, addr + 1, hl);
		host[hl] = '\0';
		port_s = end + 2;
		v6 = 1;
	} else {
		if ((end = strrchr(addr, ':')) == NULL)
			return EPMOE_EINVAL;
		hl = (size_t)(end - addr);
		if (hl >= sizeof(host))
			return EPMOE_EINVAL;
		memcpy(host, addr, hl);
		host[hl] = '\0';
		if (hl == 0)
			strcpy(host, "0.0.0.0");
		else if (strcmp(host, "localhost") == 0)
			strcpy(host, "127.0.0.1");
		port_s = end + 1;
	}
	if (*port_s < '0' || *port_s > '9')
		return EPMOE_EINVAL;
	port = strtol(port_s, &stop, 10);
	if (*stop != '\0' || port < 0 || port > 65535)
		return EPMOE_EINVAL;
	memset(ss, 0, sizeof(*ss));
	if (v6)
		return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0
		        ? 0 : EPMOE_EINVAL;
	return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0
	        ? 0 : EPMOE_EINVAL;
}

int
http_server_start(struct http_server **out, uv_loop_t *loop, const char *addr,
        const struct http_config *cfg, http_handler_fn handler, void *ud)
{
	struct sockaddr_storage ss;
	struct http_server *srv;
	int len = sizeof(ss), rc;

	if (loop == NULL || handler == NULL || parse_addr(addr, &ss) != 0)
		return EPMOE_EINVAL;
	if (cfg != NULL && (cfg->max_header_size == 0 ||
	    cfg->max_connections == 0 || cfg->idle_timeout_ms == 0 ||
	    cfg->header_timeout_ms == 0 || cfg->body_timeout_ms == 0 ||
	    cfg->max_write_queue == 0 ||
	    cfg->backlog <= 0))
		return EPMOE_EINVAL;
	if ((srv = calloc(1, sizeof(*srv))) == NULL)
		return EPMOE_ENOMEM;
	if (cfg != NULL)
		srv->cfg = *cfg;
	else
		http_config_default(&srv->cfg);
	srv->loop = loop;
	srv->handler = handler;
	srv->ud = ud;
	http_parser_settings_init(&srv->settings);
	srv->settings.on_message_begin = cb_message_begin;
	srv->settings.on_url = cb_url;
	srv->settings.on_header_field = cb_header_field;
	srv->settings.on_header_value = cb_header_value;
	srv->settings.on_headers_complete = cb_headers_complete;
	srv->settings.on_body = cb_body;
	srv->settings.on_message_complete = cb_message_complete;
	if ((rc = uv_tcp_init(loop, &srv->listener)) < 0) {
		free(srv);
		return EPMOE_EIO;
	}
	srv->listener.data = srv;
	srv->listener_open = 1;
	rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&srv->listener, srv->cfg.backlog,
		        on_connection);
	if (rc == 0)
		rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
	if (rc < 0) {
		log_error("http: cannot listen on %s: %s", addr, uv_strerror(rc));
		srv->closing = 1;
		uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
		return EPMOE_EIO;
	}
	srv->port = ss.ss_family == AF_INET6
	        ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
	        : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	*out = srv;
	return 0;
}

int
http_server_port(const struct http_server *srv)
{
	return srv->port;
}

size_t
http_server_n_connections(const struct http_server *srv)
{
	return srv->n_conns;
}

void
http_server_close(struct http_server *srv, http_server_closed_fn cb)
{
	if (srv == NULL || srv->closing)
		return;
	srv->closing = 1;
	srv->closed_cb = cb;
	uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
	for (struct http_conn *c = srv->conns; c != NULL; c = c->next)
		conn_close(c);
}

/* ---- requests ---- */

const char *
http_req_header(const struct http_req *req, const char *name)
{
	const struct req_impl *r = impl(req);

	for (size_t i = 0; r->hptr != NULL && i < r->n_hdrs; i++)
		if (strcasecmp(r->hptr[2 * i], name) == 0)
			return r->hptr[2 * i + 1];
	return NULL;
}

size_t
http_req_n_headers(const struct http_req *req)
{
	return impl(req)->n_hdrs;
}

int
http_req_header_at(const struct http_req *req, size_t i, const char **name,
        const char **value)
{
	const struct req_impl *r = impl(req);

	if (i >= r->n_hdrs || r->hptr == NULL)
		return EPMOE_ERANGE;
	*name = r->hptr[2 * i];
	*value = r->hptr[2 * i + 1];
	return 0;
}

/* 0 if r may start a response now. */
static int
answerable(const struct req_impl *r)
{
	if (r->rstate == RS_DONE)
		return EPMOE_ESTATE;
	if (r->conn == NULL || r->conn->state != CS_OPEN)
		return EPMOE_ECLOSED;
	if (r->rstate != RS_NONE)
		return EPMOE_ESTATE;
	return 0;
}

int
http_respond(struct http_req *req, int status, const char *content_type,
        const void *body, size_t len, const char *extra_headers)
{
	struct req_impl *r = impl(req);
	struct buf head = { 0 };
	struct wreq *w;
	int rc, no_body;

	if (req == NULL)
		return EPMOE_EINVAL;
	if ((rc = answerable(r)) != 0)
		return rc;
	if (status < 100 || status > 599 || !no_crlf(content_type) ||
	    !extra_ok(extra_headers) || (body == NULL && len > 0))
		return EPMOE_EINVAL;
	no_body = r->is_head || status < 200 || status == 204 || status == 304;
	rc = head_build(&head, r->conn->srv, status, content_type, extra_headers,
	        FR_LENGTH, len, r->keep_alive && !r->conn->srv->closing,
	        r->pub.http_minor);
	w = rc == 0 ? wreq_new(&head, body, no_body ? 0 : len, NULL, 0) : NULL;
	buf_free(&head);
	if (w == NULL)
		return EPMOE_ENOMEM;
	if ((rc = conn_write(r->conn, w)) != 0)
		return rc;
	response_done(r);
	return 0;
}

int
http_respond_json(struct http_req *req, int status, const cJSON *json,
        const char *extra_headers)
{
	char *txt;
	int rc;

	if (json == NULL)
		return EPMOE_EINVAL;
	if ((txt = cJSON_PrintUnformatted(json)) == NULL)
		return EPMOE_ENOMEM;
	rc = http_respond(req, status, "application/json", txt, strlen(txt),
	        extra_headers);
	cJSON_free(txt);
	return rc;
}

int
http_stream_begin(struct http_req *req, int status, const char *content_type,
        const char *extra_headers)
{
	struct req_impl *r = impl(req);
	struct buf head = { 0 };
	struct wreq *w;
	int rc;

	if (req == NULL)
		return EPMOE_EINVAL;
	if ((rc = answerable(r)) != 0)
		return rc;
	if (status < 200 || status > 599 || status == 204 || status == 304 ||
	    !no_crlf(content_type) || !extra_ok(extra_headers))
		return EPMOE_EINVAL;
	r->chunked = r->pub.http_major == 1 && r->pub.http_minor >= 1;
	if (!r->chunked)
		r->keep_alive = 0; /* the end of the body is the end of the connection */
	rc = head_build(&head, r->conn->srv, status, content_type, extra_headers,
	        r->chunked ? FR_CHUNKED : FR_CLOSE, 0,
	        r->keep_alive && !r->conn->srv->closing, r->pub.http_minor);
	w = rc == 0 ? wreq_new(&head, NULL, 0, NULL, 0) : NULL;
	buf_free(&head);
	if (w == NULL)
		return EPMOE_ENOMEM;
	if ((rc = conn_write(r->conn, w)) != 0)
		return rc;
	r->rstate = RS_STREAM;
	return 0;
}

/* 0 if r has a stream open on a live connection. */
static int
streaming(const struct req_impl *r)
{
	if (r->rstate != RS_STREAM)
		return EPMOE_ESTATE;
	if (r->conn == NULL || r->conn->state != CS_OPEN)
		return EPMOE_ECLOSED;
	return 0;
}

int
http_stream_write(struct http_req *req, const void *data, size_t len)
{
	struct req_impl *r = impl(req);
	struct http_conn *c;
	struct buf head = { 0 };
	struct wreq *w;
	int rc;

	if (req == NULL || (data == NULL && len > 0))
		return EPMOE_EINVAL;
	if ((rc = streaming(r)) != 0)
		return rc;
	if (len == 0 || r->is_head)
		return 0;
	c = r->conn;
	if (r->chunked && buf_printf(&head, "%zx\r\n", len) != 0)
		return EPMOE_ENOMEM;
	w = wreq_new(&head, data, len, "\r\n", r->chunked ? 2 : 0);
	buf_free(&head);
	if (w == NULL)
		return EPMOE_ENOMEM;
	if ((rc = conn_write(c, w)) != 0)
		return rc;
	if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >
	    c->srv->cfg.max_write_queue) {
		log_warn("http: dropping %s: more than %zu bytes unsent", c->peer,
		        c->srv->cfg.max_write_queue);
		conn_close(c);
		return EPMOE_ECLOSED;
	}
	return 0;
}

int
http_stream_end(struct http_req *req)
{
	struct req_impl *r = impl(req);
	static const char last[] = "0\r\n\r\n";
	int rc;

	if (req == NULL)
		return EPMOE_EINVAL;
	if ((rc = streaming(r)) != 0)
		return rc;
	if (r->chunked && !r->is_head) {
		struct buf b = { (char *)last, sizeof(last) - 1, 0 };
		struct wreq *w = wreq_new(&b, NULL, 0, NULL, 0);

		if (w == NULL)
			return EPMOE_ENOMEM;
		if ((rc = conn_write(r->conn, w)) != 0)
			return rc;
	}
	response_done(r);
	return 0;
}

size_t
http_req_write_queue_size(const struct http_req *req)
{
	const struct req_impl *r = impl(req);

	if (r->conn == NULL || r->conn->state == CS_CLOSING)
		return 0;
	return uv_stream_get_write_queue_size((const uv_stream_t *)&r->conn->tcp);
}

int
http_req_on_close(struct http_req *req, http_req_close_fn cb, void *ud)
{
	struct req_impl *r = impl(req);

	if (r->rstate == RS_DONE)
		return EPMOE_ESTATE;
	if (r->conn == NULL)
		return EPMOE_ECLOSED;
	r->on_close = cb;
	r->on_close_ud = ud;
	return 0;
}

int
http_req_is_closed(const struct http_req *req)
{
	const struct req_impl *r = impl(req);

	return r->conn == NULL ? r->rstate != RS_DONE
	                       : r->conn->state == CS_CLOSING;
}

void
http_req_release(struct http_req *req)
{
	static const char unanswered[] = "{\"error\":{\"message\":\"the server "
	        "dropped the request without answering\",\"type\":"
	        "\"server_error\",\"param\":null,\"code\":null}}";
	struct req_impl *r;
	struct http_conn *c;

	if (req == NULL)
		return;
	r = impl(req);
	r->released = 1;
	r->on_close = NULL;
	if ((c = r->conn) == NULL) {
		req_free(r); /* answered, or its connection is gone */
		return;
	}
	if (c->state != CS_OPEN)
		return; /* conn_free detaches and frees it */
	if (r->rstate == RS_NONE) {
		/* Frees r through response_done on success. */
		if (http_respond(req, 500, "application/json", unanswered,
		        sizeof(unanswered) - 1, NULL) != 0)
			conn_close(c);
		return;
	}
	conn_close(c); /* mid-stream: the client must see a truncated body */
}
