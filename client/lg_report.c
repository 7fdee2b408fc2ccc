/* Reports of the load generator (see lg_report.h): tables, point JSON,
 * the machine's description. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cJSON.h>

#include "lg_report.h"

void
lg_point_label(const struct lg_point *p, char *buf, size_t size)
{
	size_t n;

	if (p->closed) {
		snprintf(buf, size, "concurrency %ld", p->max_inflight);
		return;
	}
	if (isinf(p->rate))
		snprintf(buf, size, "rate inf");
	else
		snprintf(buf, size, "rate %g/s", p->rate);
	n = strlen(buf);
	if (p->burstiness != 1 && !isinf(p->rate) && n < size)
		snprintf(buf + n, size - n, ", burstiness %g", p->burstiness);
	n = strlen(buf);
	if (p->cap_given && n < size)
		snprintf(buf + n, size - n, ", max concurrency %ld", p->max_inflight);
}

/* ---- tables ---- */

typedef double (*field_fn)(const struct lg_result *r);

static double
f_req(const struct lg_result *r) { return r->request_throughput; }
static double
f_good(const struct lg_result *r) { return r->request_goodput; }
static double
f_in(const struct lg_result *r) { return r->input_throughput; }
static double
f_out(const struct lg_result *r) { return r->output_throughput; }
static double
f_ttft50(const struct lg_result *r) { return r->ttft.median; }
static double
f_ttft99(const struct lg_result *r) { return r->ttft.p99; }
static double
f_tpot50(const struct lg_result *r) { return r->tpot.median; }
static double
f_itl99(const struct lg_result *r) { return r->itl.p99; }
static double
f_e2e50(const struct lg_result *r) { return r->e2el.median; }
static double
f_e2e99(const struct lg_result *r) { return r->e2el.p99; }

static struct lg_ci
runs_ci(const struct lg_result *runs, size_t n, field_fn f)
{
	double v[128];
	size_t k = 0;

	for (size_t i = 0; i < n && k < 128; i++) {
		double x = f(&runs[i]);
		if (isfinite(x))
			v[k++] = x;
	}
	return lg_ci95(v, k);
}

static double
runs_mean(const struct lg_result *runs, size_t n, field_fn f)
{
	return runs_ci(runs, n, f).mean;
}

static void
print_ci(FILE *f, const char *name, const struct lg_result *runs, size_t n,
        field_fn fn, double scale, const char *unit)
{
	struct lg_ci c = runs_ci(runs, n, fn);

	if (c.n == 0 || isnan(c.mean))
		return;
	fprintf(f, "  %-22s %10.3f  [%.3f, %.3f] %s\n", name, c.mean * scale,
	        c.lo * scale, c.hi * scale, unit);
}

static void
dist_row(FILE *f, const char *name, const struct lg_result *runs, size_t n,
        size_t off)
{
	double m = 0, md = 0, p90 = 0, p99 = 0;
	size_t k = 0, samples = 0;

	for (size_t i = 0; i < n; i++) {
		const struct lg_dist *d = (const struct lg_dist *)(const void *)
		        ((const char *)&runs[i] + off);
		if (d->n == 0)
			continue;
		m += d->mean;
		md += d->median;
		p90 += d->p90;
		p99 += d->p99;
		samples += d->n;
		k++;
	}
	if (k == 0) {
		fprintf(f, "  %-6s %10s %10s %10s %10s   (no samples)\n", name, "-",
		        "-", "-", "-");
		return;
	}
	fprintf(f, "  %-6s %10.2f %10.2f %10.2f %10.2f   (%zu samples)\n", name,
	        m / k * 1e3, md / k * 1e3, p90 / k * 1e3, p99 / k * 1e3, samples);
}

static void
slo_text(const struct lg_slo *s, char *buf, size_t size)
{
	size_t n = 0;

	buf[0] = '\0';
	if (!isnan(s->ttft))
		n += (size_t)snprintf(buf + n, size - n, "ttft <= %gms ", s->ttft * 1e3);
	if (!isnan(s->tpot) && n < size)
		n += (size_t)snprintf(buf + n, size - n, "tpot <= %gms ", s->tpot * 1e3);
	if (!isnan(s->e2el) && n < size)
		n += (size_t)snprintf(buf + n, size - n, "e2e <= %gms ", s->e2el * 1e3);
	if (n > 0 && n < size)
		buf[n - 1] = '\0';
}

void
lg_print_point(FILE *f, const struct lg_point *p, int idx, int n_points,
        const struct lg_result *runs, size_t n_runs, const struct lg_slo *slo)
{
	char label[128], slo_s[128];
	long started = 0, completed = 0, failed = 0, good = 0;
	double dur = 0, peak_tok = 0, peak_conc = 0, lag = 0;
	struct lg_err_count ek[LG_MAX_ERR_KINDS];
	size_t n_ek = 0;

	lg_point_label(p, label, sizeof(label));
	for (size_t i = 0; i < n_runs; i++) {
		const struct lg_result *r = &runs[i];
		started += r->started;
		completed += r->completed;
		failed += r->failed;
		good += r->good;
		dur += r->duration;
		peak_tok += r->max_output_tokens_per_s;
		peak_conc += (double)r->max_concurrent_requests;
		lag += r->mean_send_lag;
		for (size_t k = 0; k < r->n_err_kinds; k++) {
			size_t j;
			for (j = 0; j < n_ek && strcmp(ek[j].kind, r->errors[k].kind); j++)
				;
			if (j == n_ek) {
				if (n_ek == LG_MAX_ERR_KINDS)
					continue;
				ek[n_ek++] = r->errors[k];
			} else {
				ek[j].n += r->errors[k].n;
			}
		}
	}
	fprintf(f, "== %s, %ld requests", label, p->n);
	if (n_runs > 1)
		fprintf(f, " x %zu runs", n_runs);
	if (n_points > 1)
		fprintf(f, "   [point %d of %d]", idx + 1, n_points);
	fprintf(f, "\n");
	fprintf(f, "  requests    %ld completed, %ld failed, of %ld sent, in %.2f s%s\n",
	        completed, failed, started, dur / (double)n_runs,
	        n_runs > 1 ? " (mean per run)" : "");
	fprintf(f, "  throughput  %.2f req/s, input %.1f tok/s, output %.1f tok/s "
	        "(peak %.0f tok/s, %.0f in flight)\n",
	        runs_mean(runs, n_runs, f_req), runs_mean(runs, n_runs, f_in),
	        runs_mean(runs, n_runs, f_out), peak_tok / (double)n_runs,
	        peak_conc / (double)n_runs);
	if (!p->closed && !isinf(p->rate) && lag / (double)n_runs > 0.05)
		fprintf(f, "  note        requests went out %.0f ms late on average "
		        "(the concurrency cap held them)\n", lag / (double)n_runs * 1e3);
	if (lg_slo_any(slo)) {
		slo_text(slo, slo_s, sizeof(slo_s));
		fprintf(f, "  goodput     %.2f req/s (%ld of %ld met %s)\n",
		        runs_mean(runs, n_runs, f_good), good, completed, slo_s);
	}
	for (size_t k = 0; k < n_ek; k++)
		fprintf(f, "  errors      %s: %ld (first: %.160s)\n", ek[k].kind,
		        ek[k].n, ek[k].first_msg);
	fprintf(f, "  %-6s %10s %10s %10s %10s   (ms%s)\n", "", "mean", "median",
	        "p90", "p99", n_runs > 1 ? ", mean over runs" : "");
	dist_row(f, "ttft", runs, n_runs, offsetof(struct lg_result, ttft));
	dist_row(f, "tpot", runs, n_runs, offsetof(struct lg_result, tpot));
	dist_row(f, "itl", runs, n_runs, offsetof(struct lg_result, itl));
	dist_row(f, "e2el", runs, n_runs, offsetof(struct lg_result, e2el));
	if (n_runs > 1) {
		fprintf(f, "  95%% confidence intervals over %zu runs (Student t):\n",
		        n_runs);
		print_ci(f, "request throughput", runs, n_runs, f_req, 1, "req/s");
		print_ci(f, "output throughput", runs, n_runs, f_out, 1, "tok/s");
		if (lg_slo_any(slo))
			print_ci(f, "goodput", runs, n_runs, f_good, 1, "req/s");
		print_ci(f, "median ttft", runs, n_runs, f_ttft50, 1e3, "ms");
		print_ci(f, "median tpot", runs, n_runs, f_tpot50, 1e3, "ms");
		print_ci(f, "p99 itl", runs, n_runs, f_itl99, 1e3, "ms");
		print_ci(f, "median e2el", runs, n_runs, f_e2e50, 1e3, "ms");
	}
	fflush(f);
}

void
lg_print_summary(FILE *f, const struct lg_point *pts,
        const struct lg_result *const *runs, size_t n_runs, size_t n_points)
{
	fprintf(f, "== summary (ms; mean over runs)\n");
	fprintf(f, "  %-34s %7s %7s %9s %8s %8s %8s %8s %8s %8s %6s\n", "load",
	        "req/s", "good/s", "out tok/s", "ttft p50", "ttft p99", "tpot p50",
	        "itl p99", "e2el p50", "e2el p99", "failed");
	for (size_t i = 0; i < n_points; i++) {
		const struct lg_result *r = runs[i];
		char label[128];
		long failed = 0;
		double good = runs_mean(r, n_runs, f_good);
		for (size_t k = 0; k < n_runs; k++)
			failed += r[k].failed;
		lg_point_label(&pts[i], label, sizeof(label));
		fprintf(f, "  %-34s %7.2f ", label, runs_mean(r, n_runs, f_req));
		if (isnan(good))
			fprintf(f, "%7s ", "-");
		else
			fprintf(f, "%7.2f ", good);
		fprintf(f, "%9.1f %8.1f %8.1f %8.2f %8.2f %8.1f %8.1f %6ld\n",
		        runs_mean(r, n_runs, f_out),
		        runs_mean(r, n_runs, f_ttft50) * 1e3,
		        runs_mean(r, n_runs, f_ttft99) * 1e3,
		        runs_mean(r, n_runs, f_tpot50) * 1e3,
		        runs_mean(r, n_runs, f_itl99) * 1e3,
		        runs_mean(r, n_runs, f_e2e50) * 1e3,
		        runs_mean(r, n_runs, f_e2e99) * 1e3, failed);
	}
	fflush(f);
}

/* ---- JSON ---- */

static void
add_shape(cJSON *o, const struct lg_point *p)
{
	char label[128];

	lg_point_label(p, label, sizeof(label));
	cJSON_AddStringToObject(o, "label", label);
	cJSON_AddStringToObject(o, "mode", p->closed ? "closed" : "open");
	if (isinf(p->rate))
		cJSON_AddStringToObject(o, "request_rate", "inf");
	else
		cJSON_AddNumberToObject(o, "request_rate", p->rate);
	cJSON_AddNumberToObject(o, "burstiness", p->burstiness);
	if (p->closed || p->cap_given)
		cJSON_AddNumberToObject(o, "max_concurrency", (double)p->max_inflight);
	else
		cJSON_AddNullToObject(o, "max_concurrency");
	cJSON_AddNumberToObject(o, "num_prompts", (double)p->n);
}

cJSON *
lg_point_json(const struct lg_point *p, cJSON **run_objs, size_t n_runs)
{
	cJSON *o = cJSON_CreateObject(), *runs, *ci, *ek;

	if (o == NULL || n_runs == 0)
		goto fail;
	add_shape(o, p);
	if (n_runs == 1) {
		/* the run's fields at the top, as vLLM writes one run */
		while (run_objs[0]->child != NULL) {
			cJSON *it = cJSON_DetachItemViaPointer(run_objs[0],
			        run_objs[0]->child);
			cJSON_AddItemToObject(o, it->string, it);
		}
		cJSON_Delete(run_objs[0]);
		run_objs[0] = NULL;
		return o;
	}
	cJSON_AddNumberToObject(o, "repeat", (double)n_runs);
	ci = cJSON_AddObjectToObject(o, "ci95");
	for (size_t f = 0; lg_result_fields[f] != NULL && ci != NULL; f++) {
		double v[128];
		size_t k = 0;
		struct lg_ci c;
		for (size_t i = 0; i < n_runs && k < 128; i++) {
			const cJSON *x = cJSON_GetObjectItemCaseSensitive(run_objs[i],
			        lg_result_fields[f]);
			if (cJSON_IsNumber(x))
				v[k++] = x->valuedouble;
		}
		if (k == 0) {
			cJSON_AddNullToObject(o, lg_result_fields[f]);
			continue;
		}
		c = lg_ci95(v, k);
		cJSON_AddNumberToObject(o, lg_result_fields[f], c.mean);
		cJSON *e = cJSON_AddObjectToObject(ci, lg_result_fields[f]);
		if (e != NULL) {
			cJSON_AddNumberToObject(e, "mean", c.mean);
			cJSON_AddNumberToObject(e, "lo", c.lo);
			cJSON_AddNumberToObject(e, "hi", c.hi);
			cJSON_AddNumberToObject(e, "n", (double)c.n);
		}
	}
	/* errors summed over the runs */
	if ((ek = cJSON_AddObjectToObject(o, "errors_by_kind")) != NULL) {
		for (size_t i = 0; i < n_runs; i++) {
			const cJSON *re = cJSON_GetObjectItemCaseSensitive(run_objs[i],
			        "errors_by_kind"), *x;
			cJSON_ArrayForEach(x, re) {
				cJSON *have = cJSON_GetObjectItemCaseSensitive(ek, x->string);
				if (have != NULL)
					cJSON_SetNumberValue(have, have->valuedouble + x->valuedouble);
				else
					cJSON_AddNumberToObject(ek, x->string, x->valuedouble);
			}
		}
	}
	if ((runs = cJSON_AddArrayToObject(o, "runs")) == NULL)
		goto fail;
	for (size_t i = 0; i < n_runs; i++) {
		cJSON_AddItemToArray(runs, run_objs[i]);
		run_objs[i] = NULL;
	}
	return o;
fail:
	cJSON_Delete(o);
	for (size_t i = 0; i < n_runs; i++) {
		cJSON_Delete(run_objs[i]);
		run_objs[i] = NULL;
	}
	return NULL;
}

static void
read_line_value(const char *path, const char *key, char *out, size_t size)
{
	FILE *f = fopen(path, "r");
	char line[512];
	size_t kl = strlen(key);

	if (f == NULL)
		return;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, key, kl) != 0)
			continue;
		char *v = strchr(line + kl, ':');
		if (v == NULL)
			continue;
		v++;
		while (*v == ' ' || *v == '\t')
			v++;
		v[strcspn(v, "\n")] = '\0';
		snprintf(out, size, "%s", v);
		break;
	}
	fclose(f);
}

void
lg_machine_json(cJSON *o)
{
	cJSON *m = cJSON_AddObjectToObject(o, "machine");
	char host[256] = "", cpu[256] = "", mem[64] = "", os[256] = "";
	struct utsname u;

	if (m == NULL)
		return;
	if (gethostname(host, sizeof(host) - 1) != 0)
		host[0] = '\0';
	read_line_value("/proc/cpuinfo", "model name", cpu, sizeof(cpu));
	read_line_value("/proc/meminfo", "MemTotal", mem, sizeof(mem));
	cJSON_AddStringToObject(m, "hostname", host);
	cJSON_AddStringToObject(m, "cpu", cpu);
	cJSON_AddNumberToObject(m, "cpus", (double)sysconf(_SC_NPROCESSORS_ONLN));
	/* MemTotal is in kB */
	cJSON_AddNumberToObject(m, "mem_total_bytes", atof(mem) * 1024);
	if (uname(&u) == 0) {
		char k[400];
		snprintf(k, sizeof(k), "%s %s %s", u.sysname, u.release, u.machine);
		cJSON_AddStringToObject(m, "kernel", k);
	}
	{
		FILE *f = fopen("/etc/os-release", "r");
		char line[256];
		if (f != NULL) {
			while (fgets(line, sizeof(line), f) != NULL) {
				if (strncmp(line, "PRETTY_NAME=", 12) == 0) {
					char *v = line + 12;
					v[strcspn(v, "\n")] = '\0';
					if (*v == '"') {
						v++;
						v[strcspn(v, "\"")] = '\0';
					}
					snprintf(os, sizeof(os), "%s", v);
				}
			}
			fclose(f);
		}
	}
	cJSON_AddStringToObject(m, "os", os);
}
