/* The project's pseudo-random generator: splitmix64 to expand a seed,
 * xoshiro256** for the stream, uniform doubles in [0, 1).  Deterministic
 * for a seed on every platform; not for cryptography.  State is the
 * caller's (four uint64_t), so each sequence, thread or chunk has its own.
 */
#ifndef EPMOE_RNG_H
#define EPMOE_RNG_H

#include <stdint.h>

/* splitmix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
 * generators", 2014): advances *x and returns the next output. */
static inline uint64_t
rng_splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Fills s[0..4) from seed (never all zero). */
static inline void
rng_seed(uint64_t s[4], uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		s[i] = rng_splitmix64(&seed);
}

static inline uint64_t
rng_rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman, Vigna, "Scrambled linear pseudorandom number
 * generators", 2018). */
static inline uint64_t
rng_next(uint64_t s[4])
{
	uint64_t r = rng_rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rng_rotl(s[3], 45);
	return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double
rng_uniform(uint64_t s[4])
{
	return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

#endif
