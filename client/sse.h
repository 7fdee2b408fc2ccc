/* Incremental parser of a Server-Sent Events stream (the WHATWG HTML
 * "event stream" format), for the HTTP side of the client library.
 *
 * Bytes are fed in whatever pieces the transport delivers: an event, a
 * line or a CRLF pair may be split at any byte and the events come out
 * the same.  Lines end in "\n", "\r\n" or a lone "\r"; "data:" lines of
 * one event are joined with "\n"; a blank line dispatches the event (none
 * when it has no data); ":" lines are comments; a single space after the
 * colon is dropped; "id" and "retry" are ignored.  An unfinished event at
 * the end of the stream is dropped, as the spec says.
 *
 * It does no I/O and knows nothing of JSON or of OpenAI's "[DONE]".
 */
#ifndef EPMOE_SSE_H
#define EPMOE_SSE_H

#include <stddef.h>

/* Largest event (data bytes) or line accepted; beyond it sse_feed fails. */
#define SSE_MAX_EVENT (16u << 20)

/* One complete event: type is "message" unless an "event:" line named it
 * (NUL-terminated); data is data_len bytes followed by a NUL.  Both are
 * borrowed for the duration of the call.  Returning non-zero stops the
 * parse: sse_feed returns that value. */
typedef int (*sse_event_fn)(void *ud, const char *type, const char *data,
        size_t data_len);

struct sse_parser {
	sse_event_fn cb;
	void *ud;
	char *line;        /* current line, without its terminator */
	size_t line_len, line_cap;
	char *data;        /* data of the event being built, "\n"-joined */
	size_t data_len, data_cap;
	int has_data;      /* a data: line was seen for this event */
	char type[64];     /* event type of the event being built */
	int after_cr;      /* the last byte was a "\r": a "\n" next is not a
	                    * new line */
	int failed;        /* a callback or limit stopped the parser */
};

/* Sets up p (caller's memory) to call cb(ud, ...) per event.  Release
 * with sse_parser_fini. */
void sse_parser_init(struct sse_parser *p, sse_event_fn cb, void *ud);
void sse_parser_fini(struct sse_parser *p);

/* Parses len more bytes of the stream (buf borrowed).  Returns 0, the
 * callback's non-zero value (the parser then refuses more input with
 * EPMOE_ESTATE), EPMOE_ERANGE (a line or event over SSE_MAX_EVENT) or
 * EPMOE_ENOMEM. */
int sse_feed(struct sse_parser *p, const char *buf, size_t len);

#endif
