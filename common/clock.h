/* Monotonic time in seconds, for timings and deadlines (never wall-clock
 * time, which can jump). */
#ifndef EPMOE_CLOCK_H
#define EPMOE_CLOCK_H

#include <time.h>

static inline double
clock_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
