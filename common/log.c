/* Logging to stderr, text or JSON lines.  See log.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "utf8.h"

static const char *log_name = "epmoe";
static int log_json;
static enum log_level log_min = LOG_INFO;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void
log_set_name(const char *name)
{
	log_name = name ? name : "epmoe";
}

void
log_set_json(int on)
{
	log_json = on;
}

void
log_set_level(enum log_level lvl)
{
	log_min = lvl;
}

int
log_parse_level(const char *s, enum log_level *out)
{
	for (int i = 0; i < 4; i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return EPMOE_EINVAL;
}

/* Appends s to buf as a JSON string body (no quotes); a byte that is not
 * part of valid UTF-8 (request bytes quoted in a message) becomes '?', so
 * every line stays valid JSON. */
static size_t
json_escape(char *buf, size_t cap, size_t n, const char *s)
{
	for (; *s && n + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		size_t k;

		if (c >= 0x80) {
			k = utf8_seq((const unsigned char *)s, strnlen(s, 4));
			if (k == 0 || n + k + 7 >= cap) {
				buf[n++] = '?';
			} else {
				memcpy(buf + n, s, k);
				n += k;
				s += k - 1;
			}
			continue;
		}
		if (c == '"' || c == '\\') {
			buf[n++] = '\\';
			buf[n++] = (char)c;
		} else if (c == '\n') {
			buf[n++] = '\\';
			buf[n++] = 'n';
		} else if (c < 0x20) {
			n += (size_t)snprintf(buf + n, cap - n, "\\u%04x", c);
		} else {
			buf[n++] = (char)c;
		}
	}
	return n;
}

void
log_msg(enum log_level lvl, const char *fmt, ...)
{
	char msg[2048], line[4608];
	struct timespec ts;
	struct tm tm;
	char tbuf[32];
	va_list ap;
	size_t n;

	if (lvl < log_min)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(tbuf, sizeof(tbuf), "%Y-%m-%dT%H:%M:%S", &tm);
	if (log_json) {
		n = (size_t)snprintf(line, sizeof(line),
		        "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"proc\":\"",
		        tbuf, ts.tv_nsec / 1000000, level_names[lvl]);
		n = json_escape(line, sizeof(line), n, log_name);
		n += (size_t)snprintf(line + n, sizeof(line) - n,
		        "\",\"pid\":%d,\"msg\":\"", (int)getpid());
		n = json_escape(line, sizeof(line), n, msg);
		n += (size_t)snprintf(line + n, sizeof(line) - n, "\"}\n");
	} else {
		n = (size_t)snprintf(line, sizeof(line), "%s.%03ldZ %s[%d] %s: %s\n",
		        tbuf, ts.tv_nsec / 1000000, log_name, (int)getpid(),
		        level_names[lvl], msg);
	}
	if (n >= sizeof(line))
		n = sizeof(line) - 1;
	if (write(STDERR_FILENO, line, n) < 0) {
		/* nowhere left to report it */
	}
}

void
log_msg_limited(struct log_limit *l, enum log_level lvl, const char *fmt, ...)
{
	struct timespec ts;
	uint64_t now, dropped = 0;
	char msg[2048];
	va_list ap;
	int allow;

	if (lvl < log_min)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	pthread_mutex_lock(&l->mu);
	if (l->n_window == 0 || now - l->window_start_ms >= LOG_LIMIT_WINDOW_MS) {
		l->window_start_ms = now;
		l->n_window = 0;
	}
	allow = l->n_window < LOG_LIMIT_BURST;
	if (allow) {
		l->n_window++;
		dropped = l->suppressed;
		l->suppressed = 0;
	} else {
		l->suppressed++;
		l->total_suppressed++;
	}
	pthread_mutex_unlock(&l->mu);
	if (!allow)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (dropped > 0)
		log_msg(lvl, "%s (%llu similar messages were not logged)", msg,
		        (unsigned long long)dropped);
	else
		log_msg(lvl, "%s", msg);
}
