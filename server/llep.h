/* Least-Loaded Expert Parallelism (balancing.md §4): per step, cap each
 * worker at alpha x the mean load and spill the excess tokens of an
 * expert to the least-loaded other workers that hold a copy of it, never
 * in chunks smaller than m_min tokens unless it is the last remainder.
 * Pure computation (the dispatcher applies the plan); no I/O, no locks.
 *
 * Our adaptation (§4.4): spills go only to workers that already hold a
 * copy of the expert (replicas from EPLB), so no weights move per step.
 * With holds == NULL every worker may take any expert: the paper's LLA.
 */
#ifndef EPMOE_LLEP_H
#define EPMOE_LLEP_H

#include <stdbool.h>
#include <stdint.h>

struct llep_cfg {
	double alpha;     /* capacity factor; 0 = 1.0 */
	double lambda;    /* skip when max/mean < lambda; 0 = 1.3 */
	uint32_t m_min;   /* smallest spill chunk; 0 = 1 */
};

/* Tokens [start, end) of expert e's group (in its token order) go to
 * worker w. */
struct llep_chunk {
	uint32_t expert, worker, start, end;
};

/* max/mean of the workers' loads when every expert runs on native[e]
 * (1 when there is no load). */
double llep_ratio(const uint32_t *load, uint32_t E, uint32_t P,
        const uint32_t *native);

/* The least-loaded assignment (§4.2) of load[E] tokens over P workers:
 * native[e] < P is e's home worker; holds[e * P + w] says whether w may
 * take tokens of e (NULL: any); an expert no other worker holds stays
 * whole on native.  Writes at most 2 * E * P chunks to out (one per
 * (expert, worker) unless every holder is full; no-load experts get
 * none),
 * experts in descending load order (ties: lower e), an expert's chunks in
 * token order.  *n_out gets the count; *skipped is set when the ratio is
 * below lambda (then out has each loaded expert whole on its native
 * worker).  EPMOE_EINVAL on a native out of range or P == 0, EPMOE_ENOMEM. */
int llep_plan(const uint32_t *load, uint32_t E, uint32_t P,
        const uint32_t *native, const bool *holds, const struct llep_cfg *cfg,
        struct llep_chunk *out, uint32_t *n_out, bool *skipped);

#endif
