/* The live-placement state machine: maps with user counts, per-worker slot
 * states, orders, commits and retirements.  See migrate.h.  No I/O, no
 * locks: the caller serialises every call. */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "migrate.h"

/* A map and how many users hold it. */
struct held {
	struct placement *p;
	uint32_t refs;
};

struct mig {
	uint32_t L, E, W;
	struct held cur;
	struct held *old;        /* retiring maps */
	uint32_t n_old, cap_old;
	struct placement *target;
	uint8_t *have;           /* [W][L*E] enum mig_slot */
	uint8_t *hq;             /* [W][L*E] the READY copy is Q8_0 */
	uint8_t *want;           /* [W][L*E] WANT_*, valid when !want_dirty */
	bool q8;                 /* copies after an expert's first are Q8_0 */
	bool want_dirty;
	bool *complete;          /* [W] next order is complete */
	struct mig_op *ops;      /* scratch of mig_order, [L*E] */
};

enum { WANT_NONE = 0, WANT_FULL, WANT_Q8 };

static size_t
idx(const struct mig *g, uint32_t w, uint32_t l, uint32_t e)
{
	return ((size_t)w * g->L + l) * g->E + e;
}

int
mig_new(struct mig **out, struct placement *initial, uint32_t n_worker)
{
	struct mig *g;
	size_t n;

	if (initial == NULL)
		return EPMOE_EINVAL;
	if (n_worker < initial->n_worker || n_worker == 0) {
		placement_free(initial);
		return EPMOE_EINVAL;
	}
	if ((g = calloc(1, sizeof(*g))) == NULL) {
		placement_free(initial);
		return EPMOE_ENOMEM;
	}
	g->L = initial->n_layer;
	g->E = initial->n_expert;
	g->W = n_worker;
	g->cur.p = initial;
	if (initial->epoch == 0)
		initial->epoch = 1;
	n = (size_t)g->W * g->L * g->E;
	g->have = calloc(n, 1);
	g->hq = calloc(n, 1);
	g->want = calloc(n, 1);
	g->complete = calloc(g->W, sizeof(*g->complete));
	g->ops = calloc((size_t)g->L * g->E, sizeof(*g->ops));
	if (!g->have || !g->hq || !g->want || !g->complete || !g->ops) {
		mig_free(g);
		return EPMOE_ENOMEM;
	}
	g->want_dirty = true;
	*out = g;
	return 0;
}

void
mig_free(struct mig *g)
{
	if (g == NULL)
		return;
	placement_free(g->cur.p);
	for (uint32_t i = 0; i < g->n_old; i++)
		placement_free(g->old[i].p);
	free(g->old);
	placement_free(g->target);
	free(g->have);
	free(g->hq);
	free(g->want);
	free(g->complete);
	free(g->ops);
	free(g);
}

const struct placement *
mig_committed(const struct mig *g)
{
	return g->cur.p;
}

const struct placement *
mig_target(const struct mig *g)
{
	return g->target;
}

uint64_t
mig_epoch(const struct mig *g)
{
	return g->cur.p->epoch;
}

uint32_t
mig_n_retiring(const struct mig *g)
{
	return g->n_old;
}

const struct placement *
mig_acquire(struct mig *g)
{
	g->cur.refs++;
	return g->cur.p;
}

void
mig_release(struct mig *g, const struct placement *p)
{
	if (p == NULL)
		return;
	if (p == g->cur.p) {
		if (g->cur.refs > 0)
			g->cur.refs--;
		return;
	}
	for (uint32_t i = 0; i < g->n_old; i++) {
		if (g->old[i].p != p)
			continue;
		if (g->old[i].refs > 0)
			g->old[i].refs--;
		return;
	}
}

/* Marks the copies of map p as wanted, at the precision p gives them
 * (with q8, every copy of an expert after its first is Q8_0). */
static void
want_map(struct mig *g, const struct placement *p)
{
	if (p == NULL)
		return;
	for (uint32_t l = 0; l < p->n_layer; l++) {
		for (uint32_t e = 0; e < p->n_expert; e++) {
			for (uint32_t r = 0; r < placement_expert_copies(p, l, e); r++) {
				int32_t w = placement_slot_worker(p, l,
				        (uint32_t)placement_expert_slot(p, l, e, r));
				if (w >= 0 && (uint32_t)w < g->W)
					g->want[idx(g, (uint32_t)w, l, e)] =
					        g->q8 && r > 0 ? WANT_Q8 : WANT_FULL;
			}
		}
	}
}

/* The newest map that has a copy decides its precision. */
static void
refresh_want(struct mig *g)
{
	if (!g->want_dirty)
		return;
	memset(g->want, 0, (size_t)g->W * g->L * g->E);
	for (uint32_t i = 0; i < g->n_old; i++)
		want_map(g, g->old[i].p);
	want_map(g, g->cur.p);
	want_map(g, g->target);
	g->want_dirty = false;
}

void
mig_set_quantized(struct mig *g, bool q8)
{
	g->q8 = q8;
	g->want_dirty = true;
}

/* Whether w's copy at i must be (re)loaded: wanted and not READY (nor
 * failed), or READY at the other precision. */
static bool
needs_load(const struct mig *g, size_t i)
{
	uint8_t h = g->have[i];

	if (g->want[i] == WANT_NONE)
		return false;
	if (h == MIG_READY)
		return (g->hq[i] != 0) != (g->want[i] == WANT_Q8);
	return h != MIG_FAILED;
}

/* Whether the target's layer l differs from the committed map. */
static bool
layer_changes(const struct mig *g, uint32_t l)
{
	return !placement_layer_equal(g->cur.p, g->target, l);
}

static bool
target_done(const struct mig *g)
{
	for (uint32_t l = 0; l < g->L; l++)
		if (layer_changes(g, l))
			return false;
	return true;
}

int
mig_set_target(struct mig *g, struct placement *t)
{
	if (t == NULL)
		return EPMOE_EINVAL;
	if (t->n_layer != g->L || t->n_expert != g->E || t->n_worker > g->W) {
		placement_free(t);
		return EPMOE_EINVAL;
	}
	placement_free(g->target);
	g->target = t;
	if (target_done(g)) {
		placement_free(g->target);
		g->target = NULL;
	}
	g->want_dirty = true;
	return 0;
}

void
mig_worker_reset(struct mig *g, uint32_t w)
{
	if (w >= g->W)
		return;
	memset(g->have + idx(g, w, 0, 0), MIG_NONE, (size_t)g->L * g->E);
	memset(g->hq + idx(g, w, 0, 0), 0, (size_t)g->L * g->E);
	g->complete[w] = true;
}

/* Slot number of (l, e) on w in the first map that has it, or -1. */
static int32_t
slot_of(const struct mig *g, uint32_t w, uint32_t l, uint32_t e)
{
	const struct placement *maps[2] = { g->cur.p, g->target };

	for (int m = 0; m < 2; m++) {
		const struct placement *p = maps[m];
		for (uint32_t r = 0; p && r < placement_expert_copies(p, l, e); r++) {
			int32_t s = placement_expert_slot(p, l, e, r);
			if (placement_slot_worker(p, l, (uint32_t)s) == (int32_t)w)
				return s;
		}
	}
	return -1;
}

int
mig_order(struct mig *g, uint32_t w, struct mig_order *out)
{
	uint32_t n = 0;

	memset(out, 0, sizeof(*out));
	if (w >= g->W)
		return EPMOE_EINVAL;
	refresh_want(g);
	out->epoch = g->cur.p->epoch;
	out->complete = g->complete[w];
	for (uint32_t l = 0; l < g->L; l++) {
		for (uint32_t e = 0; e < g->E; e++) {
			size_t i = idx(g, w, l, e);
			uint8_t h = g->have[i];
			bool load;
			if (g->want[i] && (out->complete || needs_load(g, i)))
				load = true;
			else if (!g->want[i] && !out->complete && h != MIG_NONE)
				load = false;
			else
				continue;
			g->ops[n++] = (struct mig_op){ l, e, slot_of(g, w, l, e), load,
				g->want[i] == WANT_Q8 };
		}
	}
	g->complete[w] = false;
	out->n_ops = n;
	out->ops = g->ops;
	return 0;
}

void
mig_ack(struct mig *g, uint32_t w, uint32_t layer, uint32_t expert,
        enum mig_slot st, bool quantized)
{
	if (w >= g->W || layer >= g->L || expert >= g->E || st > MIG_FAILED)
		return;
	g->have[idx(g, w, layer, expert)] = (uint8_t)st;
	g->hq[idx(g, w, layer, expert)] = st == MIG_READY && quantized;
}

uint64_t
mig_quantized(const struct mig *g)
{
	uint64_t n = 0;

	for (size_t i = 0; i < (size_t)g->W * g->L * g->E; i++)
		n += g->have[i] == MIG_READY && g->hq[i];
	return n;
}

enum mig_slot
mig_state(const struct mig *g, uint32_t w, uint32_t layer, uint32_t expert)
{
	if (w >= g->W || layer >= g->L || expert >= g->E)
		return MIG_NONE;
	return (enum mig_slot)g->have[idx(g, w, layer, expert)];
}

bool
mig_worker_ready(const struct mig *g, uint32_t w)
{
	const struct placement *p = g->cur.p;

	if (w >= g->W)
		return false;
	for (uint32_t l = 0; l < p->n_layer; l++)
		for (uint32_t s = 0; s < p->n_slot; s++)
			if (placement_slot_worker(p, l, s) == (int32_t)w &&
			        g->have[idx(g, w, l, (uint32_t)placement_slot_expert(p, l, s))] !=
			        MIG_READY)
				return false;
	return true;
}

bool
mig_worker_pending(const struct mig *g, uint32_t w)
{
	if (w >= g->W)
		return false;
	refresh_want((struct mig *)g);
	if (g->complete[w])
		return true;
	for (uint32_t l = 0; l < g->L; l++) {
		for (uint32_t e = 0; e < g->E; e++) {
			size_t i = idx(g, w, l, e);
			if (g->want[i] ? needs_load(g, i) : g->have[i] != MIG_NONE)
				return true;
		}
	}
	return false;
}

bool
mig_worker_unused(const struct mig *g, uint32_t w)
{
	if (w >= g->W)
		return true;
	refresh_want((struct mig *)g);
	for (uint32_t l = 0; l < g->L; l++)
		for (uint32_t e = 0; e < g->E; e++)
			if (g->want[idx(g, w, l, e)])
				return false;
	return true;
}

/* Whether target layer l can be committed: its copies new to the
 * committed map are READY wherever their worker is up. */
static bool
layer_ready(const struct mig *g, uint32_t l, const bool *up)
{
	const struct placement *t = g->target;

	for (uint32_t s = 0; s < t->n_slot; s++) {
		int32_t w = placement_slot_worker(t, l, s);
		int32_t e = placement_slot_expert(t, l, s);
		if (w < 0 || e < 0 || !up[w])
			continue;
		if (placement_has(g->cur.p, l, (uint32_t)e, (uint32_t)w))
			continue;
		if (g->have[idx(g, (uint32_t)w, l, (uint32_t)e)] != MIG_READY)
			return false;
	}
	return true;
}

static int
commit(struct mig *g, const bool *take, struct mig_step *st)
{
	struct placement *np;
	int rc;

	if ((rc = placement_mix(&np, g->cur.p, g->target, take)) != 0)
		return rc;
	if (g->cur.refs > 0) {
		if (g->n_old == g->cap_old) {
			uint32_t cap = g->cap_old ? 2 * g->cap_old : 4;
			struct held *o = realloc(g->old, cap * sizeof(*o));
			if (o == NULL) {
				placement_free(np);
				return EPMOE_ENOMEM;
			}
			g->old = o;
			g->cap_old = cap;
		}
		g->old[g->n_old++] = g->cur;
	} else {
		placement_free(g->cur.p);
	}
	np->epoch = st->epoch + 1;
	g->cur.p = np;
	g->cur.refs = 0;
	st->epoch = np->epoch;
	if (target_done(g)) {
		placement_free(g->target);
		g->target = NULL;
		st->target_done = true;
	}
	g->want_dirty = true;
	return 0;
}

int
mig_step(struct mig *g, const bool *up, struct mig_step *out)
{
	struct mig_step st = { 0 };
	int rc = 0;

	st.epoch = g->cur.p->epoch;
	if (g->target != NULL) {
		bool take[1024], *tk = take;
		uint32_t n = 0;

		if (g->L > 1024 && (tk = calloc(g->L, sizeof(*tk))) == NULL)
			return EPMOE_ENOMEM;
		for (uint32_t l = 0; l < g->L; l++) {
			tk[l] = layer_changes(g, l) && layer_ready(g, l, up);
			n += tk[l];
		}
		if (n > 0 && (rc = commit(g, tk, &st)) == 0)
			st.layers_committed = n;
		if (tk != take)
			free(tk);
		if (rc != 0)
			return rc;
	}
	/* retire what drained */
	for (uint32_t i = 0; i < g->n_old;) {
		if (g->old[i].refs == 0) {
			placement_free(g->old[i].p);
			g->old[i] = g->old[--g->n_old];
			st.maps_retired++;
			g->want_dirty = true;
		} else {
			i++;
		}
	}
	if (out)
		*out = st;
	return 0;
}
