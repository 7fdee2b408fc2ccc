/* Results of the load generator (see lg_stats.h): records, summaries,
 * SLO goodput, confidence intervals and the result JSON. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "err.h"
#include "lg_stats.h"

#define MAX_GAPS (1u << 20)

void
lg_rec_chunk(struct lg_rec *r, double t)
{
	if (r->n_chunks == 0) {
		r->t_first = t;
	} else if (r->n_gaps < MAX_GAPS) {
		if (r->n_gaps == r->cap_gaps) {
			size_t cap = r->cap_gaps ? r->cap_gaps * 2 : 64;
			double *ng = realloc(r->gaps, cap * sizeof(*ng));
			if (ng == NULL)
				goto out; /* lose this gap rather than the run */
			r->gaps = ng;
			r->cap_gaps = cap;
		}
		r->gaps[r->n_gaps++] = t - r->t_prev;
	}
out:
	r->t_prev = t;
	r->n_chunks++;
}

void
lg_rec_fail(struct lg_rec *r, const char *kind, const char *msg)
{
	r->ok = 0;
	snprintf(r->err_kind, sizeof(r->err_kind), "%s", kind);
	free(r->err_msg);
	r->err_msg = strdup(msg ? msg : kind);
}

void
lg_rec_fini(struct lg_rec *r)
{
	if (r == NULL)
		return;
	free(r->gaps);
	free(r->err_msg);
	r->gaps = NULL;
	r->err_msg = NULL;
	r->n_gaps = r->cap_gaps = 0;
}

/* ---- SLOs ---- */

int
lg_slo_any(const struct lg_slo *s)
{
	return s != NULL && (!isnan(s->ttft) || !isnan(s->tpot) ||
	        !isnan(s->e2el));
}

int
lg_slo_parse(const char *s, struct lg_slo *out, char *err, size_t err_size)
{
	struct lg_slo r = { NAN, NAN, NAN };
	const char *p = s;

	if (s == NULL || *s == '\0') {
		snprintf(err, err_size, "empty SLO list");
		return EPMOE_EINVAL;
	}
	while (*p) {
		char key[16], *end;
		size_t kl = strcspn(p, "=:,");
		double v, unit = 1e-3;
		if (kl == 0 || kl >= sizeof(key) || (p[kl] != '=' && p[kl] != ':')) {
			snprintf(err, err_size, "expected KEY=VALUE at '%.32s'", p);
			return EPMOE_EINVAL;
		}
		memcpy(key, p, kl);
		key[kl] = '\0';
		p += kl + 1;
		v = strtod(p, &end);
		if (end == p || !isfinite(v) || v <= 0) {
			snprintf(err, err_size, "%s: expected a time > 0 at '%.32s'", key, p);
			return EPMOE_EINVAL;
		}
		p = end;
		if (strncmp(p, "us", 2) == 0) {
			unit = 1e-6;
			p += 2;
		} else if (strncmp(p, "ms", 2) == 0) {
			p += 2;
		} else if (*p == 's') {
			unit = 1;
			p++;
		}
		if (*p != ',' && *p != '\0') {
			snprintf(err, err_size, "%s: unknown unit at '%.32s' (us, ms, s)",
			        key, p);
			return EPMOE_EINVAL;
		}
		if (*p == ',')
			p++;
		if (strcmp(key, "ttft") == 0)
			r.ttft = v * unit;
		else if (strcmp(key, "tpot") == 0)
			r.tpot = v * unit;
		else if (strcmp(key, "e2e") == 0 || strcmp(key, "e2el") == 0)
			r.e2el = v * unit;
		else {
			snprintf(err, err_size, "unknown objective '%s' (ttft, tpot, e2e)",
			        key);
			return EPMOE_EINVAL;
		}
	}
	*out = r;
	return 0;
}

/* ---- distributions ---- */

static int
cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double
pct(const double *v, size_t n, double q)
{
	double pos = q * (double)(n - 1);
	size_t lo = (size_t)floor(pos), hi = (size_t)ceil(pos);

	return v[lo] + (v[hi] - v[lo]) * (pos - (double)lo);
}

struct lg_dist
lg_dist_of(double *v, size_t n)
{
	struct lg_dist d = { n, NAN, NAN, NAN, NAN, NAN, NAN, NAN };
	double sum = 0, ss = 0;

	if (n == 0)
		return d;
	qsort(v, n, sizeof(*v), cmp_dbl);
	for (size_t i = 0; i < n; i++)
		sum += v[i];
	d.mean = sum / (double)n;
	for (size_t i = 0; i < n; i++)
		ss += (v[i] - d.mean) * (v[i] - d.mean);
	d.std = sqrt(ss / (double)n);
	d.median = pct(v, n, 0.50);
	d.p90 = pct(v, n, 0.90);
	d.p99 = pct(v, n, 0.99);
	d.min = v[0];
	d.max = v[n - 1];
	return d;
}

double
lg_t975(size_t df)
{
	/* two-sided 95% critical values of Student's t, df = 1..30 */
	static const double t[] = { 12.706, 4.303, 3.182, 2.776, 2.571, 2.447,
		2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
		2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
		2.060, 2.056, 2.052, 2.048, 2.045, 2.042 };

	if (df == 0)
		return NAN;
	if (df <= 30)
		return t[df - 1];
	/* Cornish-Fisher expansion to second order; within 0.001 above 30 */
	double z = 1.959964, z3 = z * z * z, z5 = z3 * z * z;
	return z + (z3 + z) / (4.0 * df) +
	        (5 * z5 + 16 * z3 + 3 * z) / (96.0 * df * df);
}

struct lg_ci
lg_ci95(const double *v, size_t n)
{
	struct lg_ci c = { n, NAN, NAN, NAN, NAN };
	double sum = 0, ss = 0, half;

	if (n == 0)
		return c;
	for (size_t i = 0; i < n; i++)
		sum += v[i];
	c.mean = sum / (double)n;
	if (n == 1) {
		c.lo = c.hi = c.mean;
		c.std = 0;
		return c;
	}
	for (size_t i = 0; i < n; i++)
		ss += (v[i] - c.mean) * (v[i] - c.mean);
	c.std = sqrt(ss / (double)(n - 1)); /* sample standard deviation */
	half = lg_t975(n - 1) * c.std / sqrt((double)n);
	c.lo = c.mean - half;
	c.hi = c.mean + half;
	return c;
}

/* ---- the summary ---- */

static double
rec_ttft(const struct lg_rec *r, int streamed)
{
	return streamed ? r->t_first - r->t0 : r->t_end - r->t0;
}

static double
rec_tpot(const struct lg_rec *r, int streamed)
{
	if (!streamed || r->out_tokens <= 1)
		return 0;
	return (r->t_end - r->t_first) / (double)(r->out_tokens - 1);
}

static int
rec_good(const struct lg_rec *r, int streamed, const struct lg_slo *s)
{
	if (!isnan(s->ttft) && rec_ttft(r, streamed) > s->ttft)
		return 0;
	if (!isnan(s->tpot) && rec_tpot(r, streamed) > s->tpot)
		return 0;
	if (!isnan(s->e2el) && r->t_end - r->t0 > s->e2el)
		return 0;
	return 1;
}

static void
count_error(struct lg_result *o, const struct lg_rec *r)
{
	size_t k;

	for (k = 0; k < o->n_err_kinds && strcmp(o->errors[k].kind, r->err_kind);
	        k++)
		;
	if (k == o->n_err_kinds) {
		if (k < LG_MAX_ERR_KINDS) {
			o->n_err_kinds++;
			snprintf(o->errors[k].kind, sizeof(o->errors[k].kind), "%s",
			        r->err_kind);
			snprintf(o->errors[k].first_msg, sizeof(o->errors[k].first_msg),
			        "%s", r->err_msg ? r->err_msg : r->err_kind);
		} else {
			/* the last slot collects the kinds beyond the table */
			k = LG_MAX_ERR_KINDS - 1;
			snprintf(o->errors[k].kind, sizeof(o->errors[k].kind), "other");
		}
	}
	o->errors[k].n++;
}

/* Peak output tokens in one second and peak requests in flight in one
 * second, from the chunk times (one chunk ~ one token when streamed), as
 * vLLM computes max_output_tokens_per_s and max_concurrent_requests. */
static int
peaks(const struct lg_rec *recs, size_t n, double t_start, double t_end,
        struct lg_result *o)
{
	size_t nb = (size_t)ceil(t_end - t_start) + 1;
	double *tok;
	long *conc;

	if (nb > 1000000)
		nb = 1000000;
	tok = calloc(nb, sizeof(*tok));
	conc = calloc(nb, sizeof(*conc));
	if (tok == NULL || conc == NULL) {
		free(tok);
		free(conc);
		return EPMOE_ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		const struct lg_rec *r = &recs[i];
		if (!r->started)
			continue;
		size_t b0 = (size_t)(r->t0 - t_start), b1 = (size_t)(r->t_end - t_start);
		for (size_t b = b0; b <= b1 && b < nb; b++)
			conc[b]++;
		if (!r->ok || r->n_chunks == 0)
			continue;
		/* tokens spread over the chunks: out_tokens / n_chunks each */
		double per = (double)r->out_tokens / r->n_chunks, t = r->t_first;
		size_t b = (size_t)(t - t_start);
		if (b < nb)
			tok[b] += per;
		for (size_t g = 0; g < r->n_gaps; g++) {
			t += r->gaps[g];
			b = (size_t)(t - t_start);
			if (b < nb)
				tok[b] += per;
		}
		/* chunks past the kept gaps land at the end */
		if (r->n_chunks > r->n_gaps + 1) {
			b = (size_t)(r->t_end - t_start);
			if (b < nb)
				tok[b] += per * (r->n_chunks - r->n_gaps - 1);
		}
	}
	for (size_t b = 0; b < nb; b++) {
		if (tok[b] > o->max_output_tokens_per_s)
			o->max_output_tokens_per_s = tok[b];
		if (conc[b] > o->max_concurrent_requests)
			o->max_concurrent_requests = conc[b];
	}
	free(tok);
	free(conc);
	return 0;
}

int
lg_summarize(const struct lg_rec *recs, size_t n, int streamed,
        const struct lg_slo *slo, struct lg_result *out)
{
	struct lg_result o;
	double *ttft = NULL, *tpot = NULL, *e2e = NULL, *itl = NULL;
	double t_start = INFINITY, t_end = -INFINITY, lag = 0;
	size_t n_ttft = 0, n_tpot = 0, n_e2e = 0, n_itl = 0, gaps = 0;
	int rc = EPMOE_ENOMEM;

	memset(&o, 0, sizeof(o));
	o.num_prompts = (long)n;
	o.request_goodput = NAN;
	for (size_t i = 0; i < n; i++)
		if (recs[i].ok)
			gaps += recs[i].n_gaps;
	ttft = malloc((n + 1) * sizeof(*ttft));
	tpot = malloc((n + 1) * sizeof(*tpot));
	e2e = malloc((n + 1) * sizeof(*e2e));
	itl = malloc((gaps + 1) * sizeof(*itl));
	if (ttft == NULL || tpot == NULL || e2e == NULL || itl == NULL)
		goto out;
	for (size_t i = 0; i < n; i++) {
		const struct lg_rec *r = &recs[i];
		if (!r->started)
			continue;
		o.started++;
		lag += r->t0 - r->t_sched;
		if (r->t0 < t_start)
			t_start = r->t0;
		if (r->t_end > t_end)
			t_end = r->t_end;
		if (!r->ok) {
			o.failed++;
			count_error(&o, r);
			continue;
		}
		o.completed++;
		o.total_input_tokens += r->in_tokens;
		o.total_output_tokens += r->out_tokens;
		if (r->has_cached) {
			o.total_cached_tokens += r->cached_tokens;
			o.cached_reported++;
		}
		e2e[n_e2e++] = r->t_end - r->t0;
		if (streamed) {
			ttft[n_ttft++] = r->t_first - r->t0;
			if (r->out_tokens > 1)
				tpot[n_tpot++] = rec_tpot(r, streamed);
			if (r->n_gaps > 0)
				memcpy(itl + n_itl, r->gaps, r->n_gaps * sizeof(*itl));
			n_itl += r->n_gaps;
		}
		if (lg_slo_any(slo) && rec_good(r, streamed, slo))
			o.good++;
	}
	o.duration = o.started ? t_end - t_start : 0;
	o.mean_send_lag = o.started ? lag / (double)o.started : 0;
	if (o.duration > 0) {
		o.request_throughput = o.completed / o.duration;
		o.input_throughput = o.total_input_tokens / o.duration;
		o.output_throughput = o.total_output_tokens / o.duration;
		o.total_token_throughput = (o.total_input_tokens +
		        o.total_output_tokens) / o.duration;
		if (lg_slo_any(slo))
			o.request_goodput = o.good / o.duration;
	} else if (lg_slo_any(slo)) {
		o.request_goodput = 0;
	}
	o.ttft = lg_dist_of(ttft, n_ttft);
	o.tpot = lg_dist_of(tpot, n_tpot);
	o.itl = lg_dist_of(itl, n_itl);
	o.e2el = lg_dist_of(e2e, n_e2e);
	if (o.started && (rc = peaks(recs, n, t_start, t_end, &o)) != 0)
		goto out;
	*out = o;
	rc = 0;
out:
	free(ttft);
	free(tpot);
	free(e2e);
	free(itl);
	return rc;
}

/* ---- JSON ---- */

const char *const lg_result_fields[] = {
	"duration", "completed", "failed", "num_started", "good_requests",
	"total_input_tokens", "total_output_tokens", "request_throughput",
	"request_goodput", "input_throughput", "output_throughput",
	"total_token_throughput", "max_output_tokens_per_s",
	"max_concurrent_requests",
	"mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p90_ttft_ms",
	"p99_ttft_ms", "max_ttft_ms",
	"mean_tpot_ms", "median_tpot_ms", "std_tpot_ms", "p90_tpot_ms",
	"p99_tpot_ms", "max_tpot_ms",
	"mean_itl_ms", "median_itl_ms", "std_itl_ms", "p90_itl_ms",
	"p99_itl_ms", "max_itl_ms",
	"mean_e2el_ms", "median_e2el_ms", "std_e2el_ms", "p90_e2el_ms",
	"p99_e2el_ms", "max_e2el_ms",
	NULL
};

/* A number, or null when it is NaN or infinite (JSON has neither). */
static cJSON *
num(double v)
{
	return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

static int
add(cJSON *o, const char *k, cJSON *v)
{
	if (v == NULL)
		return EPMOE_ENOMEM;
	if (!cJSON_AddItemToObject(o, k, v)) {
		cJSON_Delete(v);
		return EPMOE_ENOMEM;
	}
	return 0;
}

static int
add_dist(cJSON *o, const char *name, const struct lg_dist *d)
{
	static const char *const st[] = { "mean", "median", "std", "p90", "p99",
		"max" };
	const double v[] = { d->mean, d->median, d->std, d->p90, d->p99, d->max };
	char k[48];
	int rc = 0;

	for (size_t i = 0; i < 6 && rc == 0; i++) {
		snprintf(k, sizeof(k), "%s_%s_ms", st[i], name);
		rc = add(o, k, num(v[i] * 1e3));
	}
	return rc;
}

static int
add_detail(cJSON *o, const struct lg_rec *recs, size_t n)
{
	cJSON *in = cJSON_CreateArray(), *out = cJSON_CreateArray();
	cJSON *ttfts = cJSON_CreateArray(), *itls = cJSON_CreateArray();
	cJSON *errs = cJSON_CreateArray(), *e2es = cJSON_CreateArray();
	cJSON *starts = cJSON_CreateArray();
	int rc = 0;

	if (in == NULL || out == NULL || ttfts == NULL || itls == NULL ||
	        errs == NULL || e2es == NULL || starts == NULL)
		rc = EPMOE_ENOMEM;
	for (size_t i = 0; i < n && rc == 0; i++) {
		const struct lg_rec *r = &recs[i];
		cJSON *g;
		if (!r->started)
			continue;
		g = cJSON_CreateArray();
		if (g == NULL) {
			rc = EPMOE_ENOMEM;
			break;
		}
		for (size_t k = 0; r->ok && k < r->n_gaps; k++)
			cJSON_AddItemToArray(g, cJSON_CreateNumber(r->gaps[k]));
		cJSON_AddItemToArray(in, cJSON_CreateNumber(r->in_tokens));
		cJSON_AddItemToArray(out, cJSON_CreateNumber(r->ok ? r->out_tokens : 0));
		cJSON_AddItemToArray(ttfts, r->ok && r->n_chunks ?
		        cJSON_CreateNumber(r->t_first - r->t0) : cJSON_CreateNull());
		cJSON_AddItemToArray(itls, g);
		cJSON_AddItemToArray(errs, cJSON_CreateString(r->ok ? "" :
		        r->err_msg ? r->err_msg : r->err_kind));
		cJSON_AddItemToArray(e2es, r->ok ? cJSON_CreateNumber(r->t_end - r->t0) :
		        cJSON_CreateNull());
		cJSON_AddItemToArray(starts, cJSON_CreateNumber(r->t0));
	}
	if (rc == 0) {
		rc = add(o, "input_lens", in);
		in = NULL;
		if (rc == 0) { rc = add(o, "output_lens", out); out = NULL; }
		if (rc == 0) { rc = add(o, "ttfts", ttfts); ttfts = NULL; }
		if (rc == 0) { rc = add(o, "itls", itls); itls = NULL; }
		if (rc == 0) { rc = add(o, "errors", errs); errs = NULL; }
		if (rc == 0) { rc = add(o, "e2els", e2es); e2es = NULL; }
		if (rc == 0) { rc = add(o, "start_times", starts); starts = NULL; }
	}
	cJSON_Delete(in);
	cJSON_Delete(out);
	cJSON_Delete(ttfts);
	cJSON_Delete(itls);
	cJSON_Delete(errs);
	cJSON_Delete(e2es);
	cJSON_Delete(starts);
	return rc;
}

int
lg_result_json(const struct lg_result *r, const struct lg_rec *recs,
        size_t n, int detailed, cJSON *o)
{
	cJSON *ek, *fe;
	int rc = 0;

	rc |= add(o, "duration", num(r->duration));
	rc |= add(o, "completed", cJSON_CreateNumber(r->completed));
	rc |= add(o, "failed", cJSON_CreateNumber(r->failed));
	rc |= add(o, "num_started", cJSON_CreateNumber(r->started));
	rc |= add(o, "good_requests", isnan(r->request_goodput) ?
	        cJSON_CreateNull() : cJSON_CreateNumber(r->good));
	rc |= add(o, "total_input_tokens", cJSON_CreateNumber(
	        (double)r->total_input_tokens));
	rc |= add(o, "total_output_tokens", cJSON_CreateNumber(
	        (double)r->total_output_tokens));
	rc |= add(o, "total_cached_tokens", r->cached_reported ?
	        cJSON_CreateNumber((double)r->total_cached_tokens) :
	        cJSON_CreateNull());
	rc |= add(o, "cached_reported", cJSON_CreateNumber(
	        r->cached_reported));
	rc |= add(o, "request_throughput", num(r->request_throughput));
	rc |= add(o, "request_goodput", num(r->request_goodput));
	rc |= add(o, "input_throughput", num(r->input_throughput));
	rc |= add(o, "output_throughput", num(r->output_throughput));
	rc |= add(o, "total_token_throughput", num(r->total_token_throughput));
	rc |= add(o, "max_output_tokens_per_s", num(r->max_output_tokens_per_s));
	rc |= add(o, "max_concurrent_requests", cJSON_CreateNumber(
	        r->max_concurrent_requests));
	rc |= add(o, "mean_send_lag_ms", num(r->mean_send_lag * 1e3));
	if (rc != 0)
		return EPMOE_ENOMEM;
	if ((rc = add_dist(o, "ttft", &r->ttft)) != 0 ||
	        (rc = add_dist(o, "tpot", &r->tpot)) != 0 ||
	        (rc = add_dist(o, "itl", &r->itl)) != 0 ||
	        (rc = add_dist(o, "e2el", &r->e2el)) != 0)
		return rc;
	if ((ek = cJSON_AddObjectToObject(o, "errors_by_kind")) == NULL ||
	        (fe = cJSON_AddObjectToObject(o, "first_errors")) == NULL)
		return EPMOE_ENOMEM;
	for (size_t k = 0; k < r->n_err_kinds; k++) {
		if (cJSON_AddNumberToObject(ek, r->errors[k].kind,
		        (double)r->errors[k].n) == NULL ||
		        cJSON_AddStringToObject(fe, r->errors[k].kind,
		        r->errors[k].first_msg) == NULL)
			return EPMOE_ENOMEM;
	}
	if (detailed)
		return add_detail(o, recs, n);
	return 0;
}
