/* Which copy of an expert serves a group of tokens (balancing.md §3.6).
 *
 *   static   the copies on the router's own node if any, else all of them;
 *            among those a fixed one per (layer, expert), spread by a
 *            seeded hash so each copy gets about the same number of
 *            (layer, expert) pairs.  Deterministic, blind to load.
 *   dynamic  power of two choices: two distinct copies drawn at random,
 *            the one whose worker has fewer outstanding tokens wins (the
 *            first drawn on a tie).  With two copies that is "the less
 *            loaded one".  The default.
 *
 * Candidates are given in placement order (a placement file's replica
 * order is kept), already filtered to live workers.  Pure functions plus
 * a generator state; no locks.
 */
#ifndef EPMOE_REPLICA_H
#define EPMOE_REPLICA_H

#include <stdbool.h>
#include <stdint.h>

enum replica_mode { REPLICA_DYNAMIC = 0, REPLICA_STATIC };

struct replica_ctx {
	enum replica_mode mode;
	uint64_t seed;   /* static spread */
	uint64_t rng;    /* dynamic draws (splitmix64 state) */
};

/* "static" / "dynamic" -> mode (0 / EPMOE_EINVAL). */
int replica_mode_parse(const char *s, enum replica_mode *out);
const char *replica_mode_name(enum replica_mode m);

void replica_init(struct replica_ctx *rc, enum replica_mode mode, uint64_t seed);

/* Index (< n) into workers[] of the copy to use for (layer, expert).
 * load[w]: outstanding tokens of worker w (dynamic); near[w]: worker w is
 * on the router's node (static; NULL = all are).  n must be >= 1. */
uint32_t replica_pick(struct replica_ctx *rc, uint32_t layer, uint32_t expert,
        const uint32_t *workers, uint32_t n, const uint64_t *load,
        const bool *near);

#endif
