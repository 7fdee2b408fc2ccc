/* Monotonic time, for timings and deadlines (never wall-clock time, which
 * can jump): seconds as a double, or nanoseconds as an integer. */
#ifndef EPMOE_CLOCK_H
#define EPMOE_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline double
clock_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t
clock_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
