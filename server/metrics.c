/* Prometheus metrics registry and text exposition (format 0.0.4).
 *
 * Values are doubles stored as their bit patterns in 64-bit atomics so that
 * updates from any thread need no lock: add is a compare-and-swap loop, set
 * a store.  Histogram buckets hold non-cumulative counts; rendering
 * accumulates them.  Families and series are append-only lists guarded by
 * one mutex (taken to register, to create a series and to render).
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "metrics.h"

const double metrics_default_buckets[METRICS_N_DEFAULT_BUCKETS] = {
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
};

struct metrics_series {
	struct metrics_series *next;
	struct metrics_family *fam;
	char **values;             /* [fam->n_labels], owned */
	_Atomic uint64_t val;      /* counter/gauge value, histogram sum (f64 bits) */
	_Atomic uint64_t *buckets; /* histogram: [fam->n_buckets + 1], last = +Inf */
};

struct metrics_family {
	struct metrics_family *next;
	struct metrics *reg;
	enum metrics_type type;
	char *name;
	char *help;
	char *labels[METRICS_MAX_LABELS];
	size_t n_labels;
	double *bounds; /* [n_buckets] */
	size_t n_buckets;
	struct metrics_series *series, **series_tail;
	struct metrics_series *single; /* the series of an unlabelled family */
};

struct metrics {
	pthread_mutex_t mu;
	struct metrics_family *fams, **fams_tail;
};

static uint64_t
f2u(double v)
{
	uint64_t u;

	memcpy(&u, &v, sizeof(u));
	return u;
}

static double
u2f(uint64_t u)
{
	double v;

	memcpy(&v, &u, sizeof(v));
	return v;
}

static void
atomic_add_f64(_Atomic uint64_t *a, double v)
{
	uint64_t old = atomic_load_explicit(a, memory_order_relaxed);

	while (!atomic_compare_exchange_weak_explicit(a, &old,
	        f2u(u2f(old) + v), memory_order_relaxed, memory_order_relaxed))
		;
}

int
metrics_new(struct metrics **out)
{
	struct metrics *m;

	if ((m = calloc(1, sizeof(*m))) == NULL)
		return EPMOE_ENOMEM;
	if (pthread_mutex_init(&m->mu, NULL) != 0) {
		free(m);
		return EPMOE_ENOMEM;
	}
	m->fams_tail = &m->fams;
	*out = m;
	return 0;
}

static void
series_free(struct metrics_series *s, size_t n_labels)
{
	if (s == NULL)
		return;
	if (s->values != NULL) {
		for (size_t i = 0; i < n_labels; i++)
			free(s->values[i]);
		free(s->values);
	}
	free(s->buckets);
	free(s);
}

static void
family_free(struct metrics_family *f)
{
	struct metrics_series *s, *next;

	if (f == NULL)
		return;
	for (s = f->series; s != NULL; s = next) {
		next = s->next;
		series_free(s, f->n_labels);
	}
	for (size_t i = 0; i < f->n_labels; i++)
		free(f->labels[i]);
	free(f->name);
	free(f->help);
	free(f->bounds);
	free(f);
}

void
metrics_free(struct metrics *m)
{
	struct metrics_family *f, *next;

	if (m == NULL)
		return;
	for (f = m->fams; f != NULL; f = next) {
		next = f->next;
		family_free(f);
	}
	pthread_mutex_destroy(&m->mu);
	free(m);
}

static int
name_ok(const char *s, int allow_colon)
{
	if (s == NULL || *s == '\0')
		return 0;
	for (size_t i = 0; s[i] != '\0'; i++) {
		char c = s[i];
		int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		        c == '_' || (allow_colon && c == ':');
		if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
			return 0;
	}
	return 1;
}

/* Allocates a series with zeroed values; values are copied.  Does not link
 * it into the family. */
static int
series_new(struct metrics_family *f, const char *const *values,
        struct metrics_series **out)
{
	struct metrics_series *s;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return EPMOE_ENOMEM;
	s->fam = f;
	if (f->n_labels > 0) {
		if ((s->values = calloc(f->n_labels, sizeof(*s->values))) == NULL)
			goto nomem;
		for (size_t i = 0; i < f->n_labels; i++)
			if ((s->values[i] = strdup(values[i])) == NULL)
				goto nomem;
	}
	if (f->type == METRICS_HISTOGRAM) {
		s->buckets = calloc(f->n_buckets + 1, sizeof(*s->buckets));
		if (s->buckets == NULL)
			goto nomem;
	}
	*out = s;
	return 0;
nomem:
	series_free(s, f->n_labels);
	return EPMOE_ENOMEM;
}

static int
family_register(struct metrics *m, enum metrics_type type, const char *name,
        const char *help, const char *const *labels, size_t n_labels,
        const double *bounds, size_t n_bounds, struct metrics_family **out)
{
	struct metrics_family *f, *g;
	int rc = EPMOE_ENOMEM;

	if (m == NULL || !name_ok(name, 1) || n_labels > METRICS_MAX_LABELS ||
	    (n_labels > 0 && labels == NULL) || (n_bounds > 0 && bounds == NULL))
		return EPMOE_EINVAL;
	for (size_t i = 0; i < n_labels; i++) {
		if (!name_ok(labels[i], 0) || strncmp(labels[i], "__", 2) == 0)
			return EPMOE_EINVAL;
		if (type == METRICS_HISTOGRAM && strcmp(labels[i], "le") == 0)
			return EPMOE_EINVAL;
		for (size_t j = 0; j < i; j++)
			if (strcmp(labels[i], labels[j]) == 0)
				return EPMOE_EINVAL;
	}
	for (size_t i = 0; i < n_bounds; i++)
		if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
			return EPMOE_EINVAL;

	if ((f = calloc(1, sizeof(*f))) == NULL)
		return EPMOE_ENOMEM;
	f->reg = m;
	f->type = type;
	f->series_tail = &f->series;
	if ((f->name = strdup(name)) == NULL ||
	    (f->help = strdup(help ? help : "")) == NULL)
		goto out;
	for (size_t i = 0; i < n_labels; i++) {
		if ((f->labels[i] = strdup(labels[i])) == NULL)
			goto out;
		f->n_labels = i + 1;
	}
	if (n_bounds > 0) {
		if ((f->bounds = malloc(n_bounds * sizeof(*f->bounds))) == NULL)
			goto out;
		memcpy(f->bounds, bounds, n_bounds * sizeof(*f->bounds));
	}
	f->n_buckets = n_bounds;
	if (n_labels == 0) {
		if ((rc = series_new(f, NULL, &f->single)) != 0)
			goto out;
		f->series = f->single;
		f->series_tail = &f->single->next;
	}

	pthread_mutex_lock(&m->mu);
	for (g = m->fams; g != NULL; g = g->next)
		if (strcmp(g->name, name) == 0)
			break;
	if (g != NULL) {
		pthread_mutex_unlock(&m->mu);
		rc = EPMOE_EINVAL;
		goto out;
	}
	*m->fams_tail = f;
	m->fams_tail = &f->next;
	pthread_mutex_unlock(&m->mu);
	if (out != NULL)
		*out = f;
	return 0;
out:
	family_free(f);
	return rc;
}

int
metrics_counter(struct metrics *m, const char *name, const char *help,
        const char *const *label_names, size_t n_labels,
        struct metrics_family **out)
{
	return family_register(m, METRICS_COUNTER, name, help, label_names,
	        n_labels, NULL, 0, out);
}

int
metrics_gauge(struct metrics *m, const char *name, const char *help,
        const char *const *label_names, size_t n_labels,
        struct metrics_family **out)
{
	return family_register(m, METRICS_GAUGE, name, help, label_names,
	        n_labels, NULL, 0, out);
}

int
metrics_histogram(struct metrics *m, const char *name, const char *help,
        const char *const *label_names, size_t n_labels,
        const double *buckets, size_t n_buckets,
        struct metrics_family **out)
{
	return family_register(m, METRICS_HISTOGRAM, name, help, label_names,
	        n_labels, buckets, n_buckets, out);
}

int
metrics_series(struct metrics_family *f, const char *const *label_values,
        struct metrics_series **out)
{
	struct metrics_series *s, *fresh = NULL;
	int rc;

	if (f == NULL)
		return EPMOE_EINVAL;
	if (f->n_labels == 0) {
		*out = f->single;
		return 0;
	}
	if (label_values == NULL)
		return EPMOE_EINVAL;
	for (size_t i = 0; i < f->n_labels; i++)
		if (label_values[i] == NULL)
			return EPMOE_EINVAL;

	pthread_mutex_lock(&f->reg->mu);
	for (s = f->series; s != NULL; s = s->next) {
		size_t i;

		for (i = 0; i < f->n_labels; i++)
			if (strcmp(s->values[i], label_values[i]) != 0)
				break;
		if (i == f->n_labels)
			break;
	}
	if (s == NULL) {
		if ((rc = series_new(f, label_values, &fresh)) != 0) {
			pthread_mutex_unlock(&f->reg->mu);
			return rc;
		}
		*f->series_tail = fresh;
		f->series_tail = &fresh->next;
		s = fresh;
	}
	pthread_mutex_unlock(&f->reg->mu);
	*out = s;
	return 0;
}

struct metrics_series *
metrics_family_series(struct metrics_family *f)
{
	return f != NULL ? f->single : NULL;
}

void
metrics_inc(struct metrics_series *s)
{
	metrics_add(s, 1.0);
}

void
metrics_add(struct metrics_series *s, double v)
{
	if (s == NULL || s->fam->type == METRICS_HISTOGRAM)
		return;
	if (s->fam->type == METRICS_COUNTER && !(v >= 0))
		return;
	atomic_add_f64(&s->val, v);
}

void
metrics_set(struct metrics_series *s, double v)
{
	if (s == NULL || s->fam->type != METRICS_GAUGE)
		return;
	atomic_store_explicit(&s->val, f2u(v), memory_order_relaxed);
}

void
metrics_observe(struct metrics_series *s, double v)
{
	struct metrics_family *f;
	size_t b;

	if (s == NULL || s->fam->type != METRICS_HISTOGRAM)
		return;
	f = s->fam;
	/* Bucket i counts v <= bounds[i] (and > bounds[i-1]); NaN goes to +Inf. */
	for (b = 0; b < f->n_buckets; b++)
		if (v <= f->bounds[b])
			break;
	atomic_fetch_add_explicit(&s->buckets[b], 1, memory_order_relaxed);
	atomic_add_f64(&s->val, v);
}

void
metrics_hist_load(struct metrics_series *s, const uint64_t *counts, double sum)
{
	if (s == NULL || s->fam->type != METRICS_HISTOGRAM)
		return;
	for (size_t b = 0; b <= s->fam->n_buckets; b++)
		atomic_store_explicit(&s->buckets[b], counts[b], memory_order_relaxed);
	atomic_store_explicit(&s->val, f2u(sum), memory_order_relaxed);
}

size_t
metrics_hist_read(const struct metrics_series *s, uint64_t *counts,
        size_t cap, const double **bounds, double *sum)
{
	struct metrics_series *m = (struct metrics_series *)s;
	size_t n;

	if (s == NULL || s->fam->type != METRICS_HISTOGRAM)
		return 0;
	n = s->fam->n_buckets + 1;
	for (size_t b = 0; b < n && b < cap; b++)
		counts[b] = atomic_load_explicit(&m->buckets[b], memory_order_relaxed);
	if (bounds != NULL)
		*bounds = s->fam->bounds;
	if (sum != NULL)
		*sum = u2f(atomic_load_explicit(&m->val, memory_order_relaxed));
	return n;
}

double
metrics_value(const struct metrics_series *s)
{
	if (s == NULL)
		return 0;
	return u2f(atomic_load_explicit(&((struct metrics_series *)s)->val,
	        memory_order_relaxed));
}

/* ---- rendering ---- */

struct sbuf {
	char *p;
	size_t len, cap;
	int oom;
};

static void
sb_reserve(struct sbuf *b, size_t n)
{
	char *np;
	size_t cap;

	if (b->oom || b->len + n + 1 <= b->cap)
		return;
	cap = b->cap ? b->cap : 1024;
	while (cap < b->len + n + 1)
		cap *= 2;
	if ((np = realloc(b->p, cap)) == NULL) {
		b->oom = 1;
		return;
	}
	b->p = np;
	b->cap = cap;
}

static void
sb_put(struct sbuf *b, const char *s, size_t n)
{
	sb_reserve(b, n);
	if (b->oom)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
sb_str(struct sbuf *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

static void __attribute__((format(printf, 2, 3)))
sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof(tmp))
		sb_put(b, tmp, (size_t)n);
}

/* Escapes a label value (\\, \", \n) or, with help set, a HELP text (\\, \n). */
static void
sb_escaped(struct sbuf *b, const char *s, int help)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\')
			sb_put(b, "\\\\", 2);
		else if (*s == '\n')
			sb_put(b, "\\n", 2);
		else if (*s == '"' && !help)
			sb_put(b, "\\\"", 2);
		else
			sb_put(b, s, 1);
	}
}

/* Shortest text that reads back as v; Prometheus spellings of the
 * non-finite values. */
static void
sb_double(struct sbuf *b, double v)
{
	char tmp[40];

	if (isnan(v)) {
		sb_str(b, "NaN");
		return;
	}
	if (isinf(v)) {
		sb_str(b, v > 0 ? "+Inf" : "-Inf");
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
		if (strtod(tmp, NULL) == v)
			break;
	}
	sb_str(b, tmp);
}

/* Writes "{a="x",b="y"" plus, when le is set, ",le="<le>"", then "}";
 * nothing when there are no labels at all. */
static void
sb_labels(struct sbuf *b, const struct metrics_family *f,
        const struct metrics_series *s, const double *le)
{
	if (f->n_labels == 0 && le == NULL)
		return;
	sb_put(b, "{", 1);
	for (size_t i = 0; i < f->n_labels; i++) {
		if (i > 0)
			sb_put(b, ",", 1);
		sb_str(b, f->labels[i]);
		sb_put(b, "=\"", 2);
		sb_escaped(b, s->values[i], 0);
		sb_put(b, "\"", 1);
	}
	if (le != NULL) {
		if (f->n_labels > 0)
			sb_put(b, ",", 1);
		sb_put(b, "le=\"", 4);
		sb_double(b, *le);
		sb_put(b, "\"", 1);
	}
	sb_put(b, "}", 1);
}

static void
render_series(struct sbuf *b, const struct metrics_family *f,
        const struct metrics_series *s)
{
	double sum = u2f(atomic_load_explicit(&((struct metrics_series *)s)->val,
	        memory_order_relaxed));
	uint64_t cum = 0;

	if (f->type != METRICS_HISTOGRAM) {
		sb_str(b, f->name);
		sb_labels(b, f, s, NULL);
		sb_put(b, " ", 1);
		sb_double(b, sum);
		sb_put(b, "\n", 1);
		return;
	}
	for (size_t i = 0; i <= f->n_buckets; i++) {
		double le = i < f->n_buckets ? f->bounds[i] : INFINITY;

		cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
		sb_str(b, f->name);
		sb_str(b, "_bucket");
		sb_labels(b, f, s, &le);
		sb_printf(b, " %llu\n", (unsigned long long)cum);
	}
	sb_str(b, f->name);
	sb_str(b, "_sum");
	sb_labels(b, f, s, NULL);
	sb_put(b, " ", 1);
	sb_double(b, sum);
	sb_put(b, "\n", 1);
	sb_str(b, f->name);
	sb_str(b, "_count");
	sb_labels(b, f, s, NULL);
	sb_printf(b, " %llu\n", (unsigned long long)cum);
}

int
metrics_render(struct metrics *m, char **out, size_t *out_len)
{
	static const char *const type_names[] = { "counter", "gauge", "histogram" };
	struct sbuf b = { 0 };

	if (m == NULL)
		return EPMOE_EINVAL;
	sb_reserve(&b, 0); /* a valid empty string even with no families */
	pthread_mutex_lock(&m->mu);
	for (const struct metrics_family *f = m->fams; f != NULL; f = f->next) {
		sb_str(&b, "# HELP ");
		sb_str(&b, f->name);
		sb_put(&b, " ", 1);
		sb_escaped(&b, f->help, 1);
		sb_str(&b, "\n# TYPE ");
		sb_str(&b, f->name);
		sb_put(&b, " ", 1);
		sb_str(&b, type_names[f->type]);
		sb_put(&b, "\n", 1);
		for (const struct metrics_series *s = f->series; s != NULL; s = s->next)
			render_series(&b, f, s);
	}
	pthread_mutex_unlock(&m->mu);
	if (b.oom) {
		free(b.p);
		return EPMOE_ENOMEM;
	}
	b.p[b.len] = '\0';
	*out = b.p;
	*out_len = b.len;
	return 0;
}
