/* The one non-cryptographic hash of the project: 64-bit FNV-1a (Fowler,
 * Noll, Vo), for hash tables and file identities.  Not for anything an
 * attacker may choose keys against where collisions would cost more than
 * a longer probe. */
#ifndef EPMOE_HASH_H
#define EPMOE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_FNV1A_INIT 0xcbf29ce484222325ull

/* Continues hash h (start with HASH_FNV1A_INIT) over p[0..n). */
static inline uint64_t
hash_fnv1a(const void *p, size_t n, uint64_t h)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

#endif
