/* Replica choice: static seeded spread or dynamic power of two choices.
 * See replica.h. */
#include <string.h>

#include "err.h"
#include "replica.h"
#include "rng.h"

int
replica_mode_parse(const char *s, enum replica_mode *out)
{
	if (s && strcmp(s, "dynamic") == 0)
		*out = REPLICA_DYNAMIC;
	else if (s && strcmp(s, "static") == 0)
		*out = REPLICA_STATIC;
	else
		return EPMOE_EINVAL;
	return 0;
}

const char *
replica_mode_name(enum replica_mode m)
{
	return m == REPLICA_STATIC ? "static" : "dynamic";
}

void
replica_init(struct replica_ctx *rc, enum replica_mode mode, uint64_t seed)
{
	rc->mode = mode;
	rc->seed = seed;
	rc->rng = rng_mix64(seed ^ 0x5eedull);
}

uint32_t
replica_pick(struct replica_ctx *rc, uint32_t layer, uint32_t expert,
        const uint32_t *workers, uint32_t n, const uint64_t *load,
        const bool *near)
{
	uint32_t a, b;

	if (n <= 1)
		return 0;
	if (rc->mode == REPLICA_STATIC) {
		uint32_t n_near = 0, k;
		uint64_t h = rng_mix64(rc->seed ^ ((uint64_t)layer << 32 | expert));

		for (uint32_t i = 0; near && i < n; i++)
			n_near += near[workers[i]];
		if (near == NULL || n_near == 0 || n_near == n)
			return (uint32_t)(h % n);
		k = (uint32_t)(h % n_near);
		for (uint32_t i = 0; i < n; i++)
			if (near[workers[i]] && k-- == 0)
				return i;
		return 0;
	}
	a = (uint32_t)(rng_splitmix64(&rc->rng) % n);
	b = (uint32_t)(rng_splitmix64(&rc->rng) % (n - 1));
	if (b >= a)
		b++;
	return load[workers[b]] < load[workers[a]] ? b : a;
}
