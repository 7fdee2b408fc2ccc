/* Expert-parallel load balancing (balancing.md §3): a C port of the
 * DeepSeek EPLB algorithm (replicate the hottest experts into redundant
 * slots, pack slots onto workers with equal slot counts), and the step
 * that turns its slot plan into a placement map that moves little
 * (§3.5).  Pure functions over arrays; no I/O, no locks, no sockets.
 *
 * Slot plan: phy2log[l][s] is the logical expert held by physical slot s
 * of layer l, s in [0, S); worker w owns slots [w*S/W, (w+1)*S/W).
 */
#ifndef EPMOE_EPLB_H
#define EPMOE_EPLB_H

#include <stdbool.h>
#include <stdint.h>

#include "placement.h"

/* Balanced packing (§3.1): n items of weight w into P packs of exactly
 * n / P items each, heaviest item first into the lightest pack with room
 * (ties: lower item index first, lowest pack).  pack[i], rank[i] out.
 * EPMOE_EINVAL when P is 0 or does not divide n. */
int eplb_pack(const double *w, uint32_t n, uint32_t P, int32_t *pack,
        int32_t *rank);

/* Replication (§3.2): E experts into S >= E slots; each extra slot goes
 * to the expert with the largest load per copy (ties: lowest e).
 * phy2log[S], phyrank[S], logcnt[E] out. */
int eplb_replicate(const double *w, uint32_t E, uint32_t S, int32_t *phy2log,
        int32_t *phyrank, int32_t *logcnt);

/* The whole policy for L layers (§3.3): hierarchical when G % N == 0
 * (groups packed to nodes, replicas inside each node, then to workers),
 * otherwise global (the same with G = N = 1).  weight[L][E] loads;
 * S slots per layer (a multiple of W, >= E), G expert groups (divides E),
 * N nodes (divides W), W workers.  phy2log[L][S] and logcnt[L][E] out
 * (logcnt may be NULL).  EPMOE_EINVAL on a shape that does not fit,
 * EPMOE_ENOMEM. */
int eplb_rebalance(const double *weight, uint32_t L, uint32_t E, uint32_t S,
        uint32_t G, uint32_t N, uint32_t W, int32_t *phy2log, int32_t *logcnt);

/* A placement from a slot plan, moving little (§3.5).  Workers of one node
 * (W / N consecutive packs) are interchangeable, so per layer the plan's
 * packs are matched to the workers of that node greedily by how many of
 * the pack's experts the worker holds in cur (NULL: identity); two slots
 * of one expert on one worker become one copy.  *moved (may be NULL) gets
 * the (layer, expert, worker) copies not in cur.  Epoch 1.  Free with
 * placement_free. */
int eplb_to_placement(const int32_t *phy2log, uint32_t L, uint32_t E,
        uint32_t S, uint32_t N, uint32_t W, const struct placement *cur,
        struct placement **out, uint64_t *moved);

/* The whole policy over a subset of worker places (the live members of
 * an elastic cluster): members[M] distinct indices < n_worker, in the
 * order the plan's workers take them.  S = E + R slots per layer, raised
 * to a multiple of M (at least M); hierarchical over N nodes only when N
 * divides M.  The result (moving little from cur, which may be NULL)
 * names the members' own indices in a map of n_worker workers; *moved as
 * for eplb_to_placement.  EPMOE_EINVAL, EPMOE_ENOMEM. */
int eplb_plan_members(const double *w, uint32_t L, uint32_t E, uint32_t R,
        uint32_t N, const uint32_t *members, uint32_t M, uint32_t n_worker,
        const struct placement *cur, struct placement **out, uint64_t *moved);

/* Worker load of a placement for per-expert loads w[L][E], each expert's
 * load split evenly over its copies: load[W] summed over layers (may be
 * NULL) and returns max/mean over the W workers (1 when all are 0). */
double eplb_worker_ratio(const struct placement *p, const double *w,
        double *load);
/* The same with max and mean over the workers k with in[k] only (the
 * live members of an elastic cluster; in NULL: all); load[] still gets
 * every worker. */
double eplb_worker_ratio_in(const struct placement *p, const double *w,
        double *load, const bool *in);

#endif
