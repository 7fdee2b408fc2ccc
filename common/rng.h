/* splitmix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
 * generators", OOPSLA 2014): the one seed expander and integer mixer of
 * the project.  The samplers' generator (xoshiro256**, sample.c) is seeded
 * through it; ids, weight streams and schedules mix with it. */
#ifndef EPMOE_RNG_H
#define EPMOE_RNG_H

#include <stdint.h>

/* Advances *state and returns the next output. */
static inline uint64_t
rng_splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The output of one step from state x: a bijection of 64-bit integers. */
static inline uint64_t
rng_mix64(uint64_t x)
{
	return rng_splitmix64(&x);
}

#endif
