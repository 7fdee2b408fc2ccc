/* LLEP's cache of borrowed experts (balancing.md §4): with `--balance llep`
 * and no replicas, a skew that persists has nowhere to spill, so the
 * balancer borrows: at a check where the window's worker max/mean exceeds
 * LLEP's lambda, the hottest expert of the busiest worker in the most
 * skewed layer gets one more copy on that layer's least-loaded live
 * worker, and LLEP spills to it from the next step on.  Each worker keeps
 * at most `cap` borrowed copies; a full worker drops its least recently
 * used one (a borrowed copy is used while its expert stays at least as
 * hot as its layer's mean) to make room.  A borrowed copy is always an
 * extra copy: the expert's own copies stay where they are.
 *
 * Pure planning on immutable maps (placement.h): this module keeps only
 * the list of borrowed copies and builds the next map; the balancer hands
 * it to the cluster, which loads it live like any other placement.  Not
 * thread-safe (the balancer's check thread owns it). */
#ifndef EPMOE_BORROW_H
#define EPMOE_BORROW_H

#include <stdbool.h>
#include <stdint.h>

#include "placement.h"

struct borrow;

/* For maps of up to n_worker workers, cap borrowed copies per worker
 * (>= 1).  EPMOE_EINVAL, EPMOE_ENOMEM.  Free with borrow_free. */
int borrow_new(struct borrow **out, uint32_t n_worker, uint32_t cap);
void borrow_free(struct borrow *bw);

/* What one plan did. */
struct borrow_step {
	int32_t layer, expert;  /* borrowed now (-1: nothing) */
	int32_t from, to;       /* busiest worker, the worker it lands on */
	int32_t evicted_layer, evicted_expert; /* dropped from `to` (-1: none) */
};

/* One check: w[L * E] expert loads over the window, in[n_worker] the
 * live members (NULL: all), now a clock for recency.  When some layer's
 * worker max/mean on cur exceeds lambda and a borrow helps, *out gets the
 * next map (epoch unset) and *step what changed; else *out = NULL.
 * Borrowed copies cur no longer has are forgotten first.  0 or
 * EPMOE_ENOMEM / EPMOE_EINVAL (shape). */
int borrow_plan(struct borrow *bw, const struct placement *cur, const double *w,
        const bool *in, double lambda, uint64_t now, struct placement **out,
        struct borrow_step *step);

/* Borrowed copies held now, over all workers. */
uint32_t borrow_count(const struct borrow *bw);

#endif
