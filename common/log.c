/* Logging to stderr, text or JSON lines.  See log.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"

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

/* Appends s to buf as a JSON string body (no quotes). */
static size_t
json_escape(char *buf, size_t cap, size_t n, const char *s)
{
	for (; *s && n + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
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
