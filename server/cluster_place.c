/* The placement side of the cluster: which map batches use, how it moves
 * (degraded cover of lost workers, live transitions through migrate.h,
 * cluster_set_placement), readiness and time to recover.  Runs under the
 * cluster lock: the control thread advances it after every message and
 * poll; the dispatcher acquires maps.  See cluster.h. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "eplb.h"
#include "cluster.h"
#include "cluster_int.h"
#include "err.h"
#include "log.h"
#include "migrate.h"

const struct placement *
cluster_pl(struct cluster *c)
{
	return mig_committed(c->mig);
}

/* Whether (l, e) has a copy on an up worker in map p. */
static bool
served(struct cluster *c, const struct placement *p, uint32_t l, uint32_t e)
{
	for (uint32_t r = 0; r < placement_expert_copies(p, l, e); r++) {
		int32_t w = placement_slot_worker(p, l, (uint32_t)placement_expert_slot(p, l, e, r));
		if (w >= 0 && (uint32_t)w < c->W && c->w[w].state == W_UP)
			return true;
	}
	return false;
}

bool
cluster_ready_locked(struct cluster *c)
{
	const struct placement *p = cluster_pl(c);

	for (uint32_t l = 0; l < p->n_layer; l++)
		for (uint32_t e = 0; e < p->n_expert; e++)
			if (!served(c, p, l, e))
				return false;
	return true;
}

bool
cluster_ready(struct cluster *c)
{
	bool ok;

	pthread_mutex_lock(&c->mu);
	ok = cluster_ready_locked(c);
	pthread_mutex_unlock(&c->mu);
	return ok;
}

void
cluster_pairs_locked(struct cluster *c, uint32_t *degraded, uint32_t *unserved)
{
	const struct placement *p = cluster_pl(c);
	uint32_t d = 0, u = 0;

	for (uint32_t l = 0; l < p->n_layer; l++) {
		for (uint32_t e = 0; e < p->n_expert; e++) {
			if (!served(c, p, l, e))
				u++;
			else if (!served(c, c->home, l, e))
				d++;
		}
	}
	*degraded = d;
	*unserved = u;
}

void
cluster_changed_locked(struct cluster *c)
{
	c->target_dirty = true;
}

/* Readiness edges: the time from losing the last live copy of some
 * (layer, expert) to every one served again is the time to recover.  The
 * loss is dated when the worker was last known good (its last heartbeat,
 * for one that went silent), not when the router noticed. */
static void
track_ready(struct cluster *c)
{
	bool ready = cluster_ready_locked(c);
	uint64_t now = clock_now_ns();

	if (!ready && c->was_ready && c->unready_since_ns == 0) {
		c->unready_since_ns = c->outage_hint_ns && c->outage_hint_ns < now ?
		        c->outage_hint_ns : now;
	} else if (ready && c->unready_since_ns != 0) {
		double s = (double)(now - c->unready_since_ns) * 1e-9;
		c->recoveries++;
		c->last_recovery_s = s;
		c->sum_recovery_s += s;
		if (s > c->max_recovery_s)
			c->max_recovery_s = s;
		c->unready_since_ns = 0;
		log_info("cluster: recovered in %.3f s: every expert is served again (epoch %" PRIu64 ")",
		        s, mig_epoch(c->mig));
	}
	if (ready)
		c->was_ready = true;
}

/* The target: home, plus a copy on a live worker of every expert whose
 * home copies are all down (unless degraded service is off). */
static void
retarget(struct cluster *c)
{
	bool up[PLACEMENT_MAX_WORKERS] = { false }, lost[PLACEMENT_MAX_WORKERS] = { false };
	const struct placement *prev = mig_target(c->mig);
	struct placement *t;
	uint32_t extra = 0;
	int rc;

	c->target_dirty = false;
	if (c->closing) /* workers leave because the router stops */
		return;
	/* a worker that was never up is not lost: the service is not up yet
	 * (health says so), nothing to cover; one registering again is, until
	 * it is up */
	for (uint32_t w = 0; w < c->W; w++) {
		up[w] = c->w[w].state == W_UP;
		lost[w] = !up[w] && c->w[w].ever_up;
	}
	if (c->degraded_off) {
		rc = placement_dup(&t, c->home);
	} else {
		rc = placement_cover(&t, c->home, up, lost, prev ? prev : cluster_pl(c),
		        &extra);
	}
	if (rc != 0) {
		c->target_dirty = true; /* try again at the next poll */
		log_error("cluster: cannot compute a placement: %s", epmoe_strerror(rc));
		return;
	}
	if (extra != c->n_extra) {
		bool any_lost = false, any_up = false;
		for (uint32_t w = 0; w < c->W; w++) {
			any_lost |= lost[w];
			any_up |= up[w];
		}
		if (extra > 0)
			log_warn("cluster: degraded: %u (layer, expert) pairs have no live copy; loading them on live workers",
			        extra);
		else if (!any_lost)
			log_info("cluster: every worker of the placement is back: restoring it");
		else if (!any_up)
			log_warn("cluster: no live worker left to serve the experts");
	}
	c->n_extra = extra;
	if ((rc = mig_set_target(c->mig, t)) != 0)
		log_error("cluster: cannot set the placement target: %s", epmoe_strerror(rc));
}

uint32_t
cluster_members_locked(struct cluster *c, uint32_t *idx)
{
	uint32_t n = 0;

	for (uint32_t w = 0; w < c->W; w++)
		if (c->w[w].state == W_UP && !c->w[w].draining)
			idx[n++] = w;
	return n;
}

uint32_t
cluster_members(struct cluster *c, uint32_t *idx)
{
	uint32_t n;

	pthread_mutex_lock(&c->mu);
	n = cluster_members_locked(c, idx);
	pthread_mutex_unlock(&c->mu);
	return n;
}

void
cluster_set_planner(struct cluster *c, uint32_t redundant, uint32_t hosts,
        cluster_weights_fn fn, void *arg)
{
	pthread_mutex_lock(&c->mu);
	c->plan_R = redundant;
	c->plan_hosts = hosts;
	c->plan_fn = fn;
	c->plan_arg = arg;
	pthread_mutex_unlock(&c->mu);
}

/* A join or a drain: home becomes an EPLB plan over the live members
 * (weights: the planner's load window plus one per expert, so an idle
 * cluster splits by count), moving little from the committed map. */
static void
replan_members(struct cluster *c)
{
	uint32_t L = c->home->n_layer, E = c->home->n_expert, M;
	uint32_t *idx = malloc(c->W * sizeof(*idx));
	double *w = calloc((size_t)L * E, sizeof(*w));
	struct placement *np = NULL;
	uint64_t moved = 0;
	int rc;

	c->members_dirty = false;
	if (idx == NULL || w == NULL) {
		c->members_dirty = true; /* next poll */
		goto out;
	}
	if ((M = cluster_members_locked(c, idx)) == 0) {
		log_warn("cluster: no live worker to move the experts to: the placement stays");
		goto out;
	}
	if (c->plan_fn)
		c->plan_fn(c->plan_arg, w);
	for (size_t i = 0; i < (size_t)L * E; i++)
		w[i] += 1.0;
	if ((rc = eplb_plan_members(w, L, E, c->plan_R, c->plan_hosts, idx, M, c->W,
	             cluster_pl(c), &np, &moved)) != 0) {
		log_error("cluster: cannot plan the experts over %u workers: %s", M,
		        epmoe_strerror(rc));
		goto out;
	}
	placement_free(c->home);
	c->home = np;
	c->target_dirty = true;
	log_info("cluster: placement re-planned over %u live workers: %llu copies to load",
	        M, (unsigned long long)moved);
out:
	free(idx);
	free(w);
}

void
cluster_advance_locked(struct cluster *c)
{
	bool up[PLACEMENT_MAX_WORKERS] = { false };
	struct mig_step st;
	int rc;

	if (c->members_dirty)
		replan_members(c);
	if (c->target_dirty)
		retarget(c);
	for (uint32_t w = 0; w < c->W; w++)
		up[w] = c->w[w].state == W_UP;
	if ((rc = mig_step(c->mig, up, &st)) != 0) {
		log_error("cluster: placement step failed: %s", epmoe_strerror(rc));
	} else {
		if (st.layers_committed > 0) {
			c->commits++;
			atomic_fetch_add(&c->version, 1);
			log_info("cluster: placement epoch %" PRIu64 " committed (%u layers changed%s)",
			        st.epoch, st.layers_committed,
			        st.target_done ? ", transition done" : "");
		}
		if (st.maps_retired > 0)
			log_debug("cluster: %u older placement maps retired", st.maps_retired);
	}
	track_ready(c);
	atomic_store(&c->replacing, mig_target(c->mig) != NULL);
}

bool
cluster_replacing(struct cluster *c)
{
	return atomic_load(&c->replacing);
}

int
cluster_set_placement(struct cluster *c, struct placement *p)
{
	if (p == NULL)
		return EPMOE_EINVAL;
	if (p->n_layer != c->home->n_layer || p->n_expert != c->home->n_expert ||
	        p->n_worker > c->W) {
		placement_free(p);
		return EPMOE_EINVAL;
	}
	pthread_mutex_lock(&c->mu);
	placement_free(c->home);
	c->home = p;
	c->target_dirty = true;
	cluster_advance_locked(c);
	pthread_mutex_unlock(&c->mu);
	return 0;
}

const struct placement *
cluster_placement_acquire(struct cluster *c)
{
	const struct placement *p;

	pthread_mutex_lock(&c->mu);
	p = mig_acquire(c->mig);
	pthread_mutex_unlock(&c->mu);
	return p;
}

void
cluster_placement_release(struct cluster *c, const struct placement *p)
{
	if (p == NULL)
		return;
	pthread_mutex_lock(&c->mu);
	mig_release(c->mig, p);
	pthread_mutex_unlock(&c->mu);
}

void
cluster_failover(struct cluster *c, struct cluster_failover *out)
{
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&c->mu);
	out->fenced_heartbeat = c->fenced[FENCE_HEARTBEAT];
	out->fenced_connection = c->fenced[FENCE_CONNECTION];
	out->fenced_deadline = c->fenced[FENCE_DEADLINE];
	out->fenced_error = c->fenced[FENCE_ERROR];
	out->fenced_stale = c->fenced[FENCE_STALE];
	out->left = c->fenced[FENCE_LEFT];
	out->refused_duplicate_ids = c->refused_dup;
	out->joins = c->joins;
	out->drains = c->drains;
	out->drains_done = c->drains_done;
	out->commits = c->commits;
	out->epoch = mig_epoch(c->mig);
	out->transition = mig_target(c->mig) != NULL;
	cluster_pairs_locked(c, &out->degraded_pairs, &out->unserved_pairs);
	out->recoveries = c->recoveries;
	out->quantized_copies = mig_quantized(c->mig);
	out->recovery_s_total = c->sum_recovery_s;
	out->last_recovery_s = c->last_recovery_s;
	out->max_recovery_s = c->max_recovery_s;
	pthread_mutex_unlock(&c->mu);
}
