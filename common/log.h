/* Logging: human-readable lines on stderr by default, one JSON object per
 * line with log_set_json(1) (the --log-json flag).  Thread-safe; a line is
 * written with one write(2).  Must not allocate on the hot path beyond a
 * stack buffer. */
#ifndef EPMOE_LOG_H
#define EPMOE_LOG_H

#include <pthread.h>
#include <stdint.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* Sets the process name printed in every line (borrowed; keep it alive). */
void log_set_name(const char *name);
void log_set_json(int on);
void log_set_level(enum log_level lvl);
/* Parses "debug|info|warn|error"; returns 0 or EPMOE_EINVAL. */
int log_parse_level(const char *s, enum log_level *out);

void log_msg(enum log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Rate limit for a warning that the network can trigger at will (a
 * malformed frame, a bad key): at most LOG_LIMIT_BURST lines per
 * LOG_LIMIT_WINDOW_MS per call site; the first line let through after a
 * quiet spell says how many were dropped.  One static struct log_limit
 * per call site, initialised with LOG_LIMIT_INIT; thread-safe. */
#define LOG_LIMIT_BURST 5
#define LOG_LIMIT_WINDOW_MS 10000
struct log_limit {
	pthread_mutex_t mu;
	uint64_t window_start_ms;
	uint32_t n_window;
	uint64_t suppressed;
	uint64_t total_suppressed; /* over the process's life (tests) */
};
#define LOG_LIMIT_INIT { PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0 }

void log_msg_limited(struct log_limit *l, enum log_level lvl, const char *fmt,
        ...) __attribute__((format(printf, 3, 4)));

#define log_warn_limited(l, ...) log_msg_limited((l), LOG_WARN, __VA_ARGS__)

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
