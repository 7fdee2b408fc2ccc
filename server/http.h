/* HTTP/1.1 server on a libuv loop (http-parser 2.9.4 for the framing).
 *
 * Serves keep-alive and pipelined requests (answered in order: a
 * connection parses its next request only once the current one is
 * answered), Content-Length and chunked request bodies, Expect:
 * 100-continue, HEAD, plain and chunked (streamed) responses.  Limits
 * (header and body size, connections in all and per client address,
 * idle, header and body timeouts, unsent bytes per client) come from
 * struct http_config; a violation gets its status (400, 408, 413, 417,
 * 431, 503) with a small JSON error body, then the connection is closed.  It knows nothing of the API on top: one
 * handler gets every request.
 *
 * Threads: every function here must be called on the loop thread, and
 * every callback runs there.  Nothing blocks.
 *
 * Evictions, 503s and timeouts are counted (http_server_get_counters).
 *
 * Request ownership.  The handler receives a request it must release
 * exactly once with http_req_release(), whether or not it answered and
 * whether or not the client is still there.  Until then the request and
 * everything it points to (path, headers, body) stay valid, so it may be
 * answered later (from a timer, an engine completion...).  Answer with
 * http_respond() once, or http_stream_begin() + http_stream_write()* +
 * http_stream_end().  If the connection drops before the response ends,
 * the hook set with http_req_on_close() runs once (the request is not
 * freed: it still waits for its release) and later writes return
 * EPMOE_ECLOSED without effect.  Releasing a request that was never
 * answered sends a 500; releasing one in the middle of a stream closes the
 * connection (the client sees a truncated response).
 */
#ifndef EPMOE_HTTP_H
#define EPMOE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct cJSON;
struct http_server;

struct http_config {
	size_t max_header_size;      /* request line + headers; 16 KiB; -> 431
	                              * (http-parser itself caps it at 80 KiB) */
	size_t max_body_size;        /* decoded body; 8 MiB; -> 413 */
	uint32_t max_connections;    /* open client connections; 1024.  At the
	                              * cap a new connection closes the oldest
	                              * one that has no request with the handler
	                              * (idle, or still sending its request); when
	                              * every one has, the new one gets 503 */
	uint32_t max_per_client;     /* connections of one client address; 128;
	                              * the same rule within that address; 0 =
	                              * no per-client cap */
	uint64_t idle_timeout_ms;    /* a connection with no request in progress
	                              * is closed after this; 60 s */
	uint64_t header_timeout_ms;  /* request line and headers must arrive
	                              * within this of the request's first byte;
	                              * 10 s; -> 408 */
	uint64_t body_timeout_ms;    /* the body must arrive within this of the
	                              * end of the headers; 30 s; -> 408 */
	size_t max_write_queue;      /* unsent response bytes per connection
	                              * before the client is dropped; 64 MiB */
	int backlog;                 /* listen(2) backlog; 511 */
};

/* A request as the handler sees it.  All fields are read-only and owned
 * by the module; they stay valid until http_req_release(). */
struct http_req {
	const char *method;       /* "GET", "POST", "HEAD", ... */
	const char *path;         /* URL path, not decoded: "/v1/models" */
	const char *query;        /* after '?', not decoded; "" when none */
	const char *body;         /* body_len bytes, then a NUL (not counted) */
	size_t body_len;
	const char *content_type; /* the Content-Type value or NULL */
	const char *peer;         /* client address "127.0.0.1:53211" */
	unsigned short http_major, http_minor;
	uint64_t conn_id;         /* connection id, unique per server */
	uint64_t seq;             /* 0-based index of the request on its
	                           * connection */
	void *data;               /* free for the owner's use */
};

/* Called for each complete request; must not block.  The handler owns req
 * from here on (see the file comment). */
typedef void (*http_handler_fn)(struct http_req *req, void *ud);
/* The connection of req dropped before its response ended. */
typedef void (*http_req_close_fn)(struct http_req *req, void *ud);
/* The server finished closing; ud is the handler's. */
typedef void (*http_server_closed_fn)(void *ud);

/* The defaults above. */
void http_config_default(struct http_config *cfg);

/* Listens on addr: "127.0.0.1:8080", "[::1]:8080", "localhost:8080" or
 * ":8080" (every IPv4 address); port 0 picks a free port (see
 * http_server_port).  cfg is copied (NULL: defaults).  On success *out is
 * the caller's, to be closed with http_server_close().  Returns 0,
 * EPMOE_EINVAL (bad address or config), EPMOE_EIO (bind/listen failed,
 * e.g. address in use) or EPMOE_ENOMEM.  After a bind/listen failure the
 * memory is freed on the next loop iteration (libuv handle close). */
int http_server_start(struct http_server **out, uv_loop_t *loop,
        const char *addr, const struct http_config *cfg,
        http_handler_fn handler, void *ud);

/* The bound TCP port. */
int http_server_port(const struct http_server *srv);

/* Open client connections (including ones being refused or closing). */
size_t http_server_n_connections(const struct http_server *srv);

/* What the limits did since the start. */
struct http_counters {
	uint64_t evicted;       /* connections closed to make room (cap) */
	uint64_t refused;       /* connections answered 503 (cap, all busy) */
	uint64_t timeouts;      /* requests answered 408 */
};
void http_server_get_counters(const struct http_server *srv,
        struct http_counters *out);

/* Serves fd, an already connected stream socket (a socketpair end, an
 * accepted or inherited socket), as if the listener had accepted it: the
 * server owns and closes it.  The connection caps apply.  Returns 0,
 * EPMOE_ESTATE (server closing), EPMOE_EIO or EPMOE_ENOMEM (fd is then
 * still the caller's). */
int http_server_adopt(struct http_server *srv, uv_os_sock_t fd);

/* Stops accepting, drops every connection (their in-flight requests get
 * their close hooks) and, once every libuv handle is closed, frees the
 * server and calls cb(ud) (cb may be NULL).  The handler is not called
 * again.  Requests not yet released stay valid until released. */
void http_server_close(struct http_server *srv, http_server_closed_fn cb);

/* The value of the first header named name (case-insensitive), or NULL. */
const char *http_req_header(const struct http_req *req, const char *name);
/* Headers in arrival order: *name and *value of the i-th; returns 0, or
 * EPMOE_ERANGE when i >= http_req_n_headers(). */
size_t http_req_n_headers(const struct http_req *req);
int http_req_header_at(const struct http_req *req, size_t i,
        const char **name, const char **value);

/* Sends a whole response: status (100..599), content_type (NULL: none),
 * body (borrowed; copied), extra_headers (NULL or complete header lines,
 * each ending in "\r\n"; not Content-Length, Transfer-Encoding or
 * Connection, which are the module's).  HEAD gets the headers only.
 * Returns 0, EPMOE_ESTATE (already answered), EPMOE_ECLOSED (the client is
 * gone), EPMOE_EINVAL or EPMOE_ENOMEM. */
int http_respond(struct http_req *req, int status, const char *content_type,
        const void *body, size_t len, const char *extra_headers);

/* http_respond with the compact text of json and "application/json". */
int http_respond_json(struct http_req *req, int status,
        const struct cJSON *json, const char *extra_headers);

/* Starts a streamed response: chunked for HTTP/1.1 clients, ended by
 * closing the connection for HTTP/1.0.  Returns as http_respond. */
int http_stream_begin(struct http_req *req, int status,
        const char *content_type, const char *extra_headers);
/* Queues len bytes (copied) as one chunk; len 0 sends nothing.  Returns 0,
 * EPMOE_ESTATE (no stream begun or already ended), EPMOE_ECLOSED (client
 * gone, or dropped for exceeding max_write_queue) or EPMOE_ENOMEM. */
int http_stream_write(struct http_req *req, const void *data, size_t len);
/* Ends the stream (the last chunk).  Returns as http_stream_write. */
int http_stream_end(struct http_req *req);

/* Bytes queued to the client and not yet written (0 when gone): lets a
 * producer slow down for a slow reader. */
size_t http_req_write_queue_size(const struct http_req *req);

/* Sets the hook run (once, on the loop thread) if the connection drops
 * before the response ends.  Returns 0, or EPMOE_ECLOSED when it already
 * dropped (the hook is not set and will not run) or EPMOE_ESTATE when the
 * response already ended. */
int http_req_on_close(struct http_req *req, http_req_close_fn cb, void *ud);

/* Nonzero once the client is gone or the connection is closing. */
int http_req_is_closed(const struct http_req *req);

/* Gives the request back to the module (see the file comment).  The hook
 * will not run after this.  NULL is fine. */
void http_req_release(struct http_req *req);

/* The reason phrase of a status code ("OK", "Not Found", ...). */
const char *http_status_text(int status);

#endif
