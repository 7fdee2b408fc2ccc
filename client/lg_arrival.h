/* Arrival process of the load generator: when each request of an
 * open-loop run is sent.  Inter-arrival gaps are gamma distributed with
 * shape B (the burstiness) and mean 1/rate, as vLLM's `bench serve` draws
 * them: B = 1 is a Poisson process (exponential gaps), B < 1 burstier
 * (the gaps' squared coefficient of variation is 1/B), B > 1 more even.
 * An infinite rate sends everything at once.  Seeded: the same seed gives
 * the same schedule.  No I/O, no clock.
 */
#ifndef EPMOE_LG_ARRIVAL_H
#define EPMOE_LG_ARRIVAL_H

#include <stddef.h>
#include <stdint.h>

struct lg_arrival {
	double rate;        /* requests per second; INFINITY: no gaps */
	double burstiness;  /* gamma shape */
	uint64_t rng;       /* splitmix64 state */
};

/* Sets up a (caller's memory).  Returns 0, or EPMOE_EINVAL when rate is
 * not > 0 (NaN included) or burstiness is not a finite value > 0. */
int lg_arrival_init(struct lg_arrival *a, double rate, double burstiness,
        uint64_t seed);

/* Seconds from one arrival to the next (0 at an infinite rate). */
double lg_arrival_gap(struct lg_arrival *a);

/* Writes the send time of each of n requests, in seconds from the start,
 * into t[0..n): the first at 0, then cumulative gaps. */
void lg_arrival_schedule(struct lg_arrival *a, double *t, size_t n);

/* The draws below advance a splitmix64 state (common/rng.h), whose
 * stream passes BigCrush (it is Java's SplittableRandom). */

/* Uniform in [0, 1) with 53 random bits. */
double lg_uniform(uint64_t *state);

/* A draw from Gamma(shape, scale) (mean shape * scale); shape and scale
 * > 0.  Marsaglia and Tsang, "A simple method for generating gamma
 * variables", ACM TOMS 26(3), 2000, with their U^(1/shape) boost for
 * shape < 1. */
double lg_gamma(uint64_t *state, double shape, double scale);

/* A standard normal draw (Marsaglia's polar method). */
double lg_normal(uint64_t *state);

#endif
