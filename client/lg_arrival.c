/* Arrival process of the load generator: gamma inter-arrival gaps (see
 * lg_arrival.h).  Pure computation over a seeded generator. */
#include <math.h>

#include "err.h"
#include "lg_arrival.h"
#include "rng.h"

int
lg_arrival_init(struct lg_arrival *a, double rate, double burstiness,
        uint64_t seed)
{
	if (!(rate > 0) || !isfinite(burstiness) || !(burstiness > 0))
		return EPMOE_EINVAL;
	a->rate = rate;
	a->burstiness = burstiness;
	a->rng = seed;
	return 0;
}

double
lg_uniform(uint64_t *state)
{
	return (double)(rng_splitmix64(state) >> 11) * 0x1.0p-53;
}

double
lg_normal(uint64_t *s)
{
	double u, v, q;

	/* accepts with probability pi/4 per pair: the loop ends */
	do {
		u = 2 * lg_uniform(s) - 1;
		v = 2 * lg_uniform(s) - 1;
		q = u * u + v * v;
	} while (q >= 1 || q == 0);
	return u * sqrt(-2 * log(q) / q);
}

double
lg_gamma(uint64_t *s, double shape, double scale)
{
	double boost = 1, d, c, x, v, u;

	if (shape < 1) {
		/* G(a) = G(a + 1) * U^(1/a) */
		do
			u = lg_uniform(s);
		while (u == 0);
		boost = pow(u, 1 / shape);
		shape += 1;
	}
	d = shape - 1.0 / 3;
	c = 1 / sqrt(9 * d);
	/* acceptance is above 95% for every shape >= 1 */
	for (;;) {
		do {
			x = lg_normal(s);
			v = 1 + c * x;
		} while (v <= 0);
		v = v * v * v;
		u = lg_uniform(s);
		if (u < 1 - 0.0331 * x * x * x * x)
			break;
		if (u > 0 && log(u) < 0.5 * x * x + d * (1 - v + log(v)))
			break;
	}
	return d * v * boost * scale;
}

double
lg_arrival_gap(struct lg_arrival *a)
{
	if (isinf(a->rate))
		return 0;
	/* mean = shape * scale = 1 / rate */
	return lg_gamma(&a->rng, a->burstiness, 1 / (a->rate * a->burstiness));
}

void
lg_arrival_schedule(struct lg_arrival *a, double *t, size_t n)
{
	double at = 0;

	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			at += lg_arrival_gap(a);
		t[i] = at;
	}
}
