/* A small Prometheus metrics registry: counters, gauges and histograms
 * (fixed buckets, in seconds by convention), optionally labelled, rendered
 * in the Prometheus text exposition format 0.0.4.
 *
 * Registration and series creation take the registry's mutex; updates of a
 * series (metrics_inc/add/set/observe) are lock-free atomics and may come
 * from any thread.  Look a labelled series up once and keep the pointer: it
 * stays valid until metrics_free().  Rendering reads each value atomically;
 * a histogram's _count is the sum of its buckets, so _bucket{le="+Inf"}
 * and _count always agree.  This module does no I/O.
 */
#ifndef EPMOE_METRICS_H
#define EPMOE_METRICS_H

#include <stddef.h>

/* Content-Type of the rendered text (for GET /metrics). */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Most labels a family may have. */
#define METRICS_MAX_LABELS 8

enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

struct metrics;        /* the registry */
struct metrics_family; /* one metric name: type, help, label names */
struct metrics_series; /* one labelled time series of a family */

/* Prometheus' default latency buckets in seconds:
 * .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10 (METRICS_N_DEFAULT_BUCKETS). */
#define METRICS_N_DEFAULT_BUCKETS 11
extern const double metrics_default_buckets[METRICS_N_DEFAULT_BUCKETS];

/* Creates an empty registry.  Free with metrics_free(). */
int metrics_new(struct metrics **out);
/* Frees the registry with every family and series (NULL is fine). */
void metrics_free(struct metrics *m);

/* Registers a family.  name must match [a-zA-Z_:][a-zA-Z0-9_:]* and be new
 * in the registry; label names must match [a-zA-Z_][a-zA-Z0-9_]*, must not
 * start with "__", and a histogram may not use "le".  help (any text) and
 * the names are copied.  A family without labels gets its single series at
 * once (rendered as 0 before the first update).  Returns 0, EPMOE_EINVAL
 * (bad or duplicate name) or EPMOE_ENOMEM.  *out (optional) is borrowed:
 * it lives as long as the registry. */
int metrics_counter(struct metrics *m, const char *name, const char *help,
        const char *const *label_names, size_t n_labels,
        struct metrics_family **out);
int metrics_gauge(struct metrics *m, const char *name, const char *help,
        const char *const *label_names, size_t n_labels,
        struct metrics_family **out);
/* buckets: n_buckets finite upper bounds, strictly increasing (copied);
 * the +Inf bucket is implicit.  n_buckets may be 0 (only +Inf). */
int metrics_histogram(struct metrics *m, const char *name, const char *help,
        const char *const *label_names, size_t n_labels,
        const double *buckets, size_t n_buckets,
        struct metrics_family **out);

/* Finds or creates the series of f with these label values (n_labels of
 * them, in the order of the family's label names; any UTF-8 text, copied;
 * NULL when the family has no labels).  *out is borrowed and lives as long
 * as the registry.  Returns 0, EPMOE_EINVAL (NULL value) or EPMOE_ENOMEM. */
int metrics_series(struct metrics_family *f, const char *const *label_values,
        struct metrics_series **out);
/* The single series of a family registered without labels (NULL if it has
 * labels). */
struct metrics_series *metrics_family_series(struct metrics_family *f);

/* Updates.  Thread-safe, lock-free, never fail.  A counter ignores negative
 * or NaN increments; metrics_set on a counter or a histogram and
 * metrics_observe on anything but a histogram are ignored. */
void metrics_inc(struct metrics_series *s);
void metrics_add(struct metrics_series *s, double v);
void metrics_set(struct metrics_series *s, double v);
void metrics_observe(struct metrics_series *s, double v);
/* Replaces a histogram series' state with counts kept elsewhere: counts
 * has n_buckets + 1 entries (per bucket, not cumulative; the last is +Inf)
 * and sum is the sum of the observations. */
void metrics_hist_load(struct metrics_series *s, const uint64_t *counts,
        double sum);

/* Reads a histogram series: up to cap per-bucket counts (not cumulative;
 * the last is +Inf) into counts, the upper bounds of the finite buckets
 * into *bounds (borrowed, as long as the registry lives; may be NULL) and
 * the sum into *sum (may be NULL).  Returns the number of buckets
 * including +Inf (which may exceed cap), or 0 when s is not a histogram.
 * Each count is read atomically; together they are a near snapshot. */
size_t metrics_hist_read(const struct metrics_series *s, uint64_t *counts,
        size_t cap, const double **bounds, double *sum);

/* Current value of a counter or gauge (a histogram: its sum). */
double metrics_value(const struct metrics_series *s);

/* Renders every family in registration order, series in creation order,
 * as Prometheus text 0.0.4.  On success *out is a NUL-terminated string
 * of *out_len bytes owned by the caller (free with free()).  Returns 0 or
 * EPMOE_ENOMEM. */
int metrics_render(struct metrics *m, char **out, size_t *out_len);

#endif
