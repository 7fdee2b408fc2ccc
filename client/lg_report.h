/* Reports of the load generator: the table printed per load point and
 * the sweep summary, the JSON of a point (one run, or the mean and 95%
 * confidence interval of repeated runs with each run kept), and the
 * description of the machine that ran it.  Formatting only: the numbers
 * come from lg_stats. */
#ifndef EPMOE_LG_REPORT_H
#define EPMOE_LG_REPORT_H

#include <stddef.h>
#include <stdio.h>

#include "lg_stats.h"

struct cJSON;

/* The load shape of one point. */
struct lg_point {
	double rate;          /* requests/s, INFINITY: all at once */
	double burstiness;
	long max_inflight;    /* the cap in effect */
	int cap_given;        /* the cap was asked for (else JSON null) */
	int closed;           /* closed loop: --concurrency max_inflight */
	long n;               /* requests */
};

/* "rate 4/s" (with ", burstiness B" unless 1), "rate inf", "concurrency 8";
 * ", max concurrency C" when a cap was given under open loop. */
void lg_point_label(const struct lg_point *p, char *buf, size_t size);

/* The table of one point: runs[0..n_runs) are its repeated runs. */
void lg_print_point(FILE *f, const struct lg_point *p, int idx, int n_points,
        const struct lg_result *runs, size_t n_runs, const struct lg_slo *slo);

/* One line per point: throughput, goodput and the main percentiles (the
 * mean over each point's runs). */
void lg_print_summary(FILE *f, const struct lg_point *pts,
        const struct lg_result *const *runs, size_t n_runs, size_t n_points);

/* The JSON of a point: its load shape (vLLM's request_rate, burstiness,
 * max_concurrency, num_prompts, plus our "mode"), then, for one run, the
 * run's fields; for several, each field's mean over the runs, "runs" (the
 * run objects, taken over: the array's items move into the result) and
 * "ci95": {field: {"mean", "lo", "hi", "n"}}.  run_objs[i] are the
 * objects lg_result_json filled.  Returns the point object (caller's) or
 * NULL when out of memory; run_objs are consumed either way. */
struct cJSON *lg_point_json(const struct lg_point *p, struct cJSON **run_objs,
        size_t n_runs);

/* Adds "machine": {hostname, cpu, cpus, mem_total_bytes, kernel, os} to o. */
void lg_machine_json(struct cJSON *o);

#endif
