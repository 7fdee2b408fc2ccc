/* LLEP's cache of borrowed experts; see borrow.h. */
#include <stdlib.h>
#include <string.h>

#include "borrow.h"
#include "err.h"

struct loan {
	uint32_t layer, expert, worker;
	uint64_t used;   /* last check it was hot */
};

struct borrow {
	uint32_t W, cap;
	struct loan *loans;  /* [W * cap] */
	uint32_t n;
};

int
borrow_new(struct borrow **out, uint32_t n_worker, uint32_t cap)
{
	struct borrow *bw;

	if (n_worker == 0 || cap == 0)
		return EPMOE_EINVAL;
	if ((bw = calloc(1, sizeof(*bw))) == NULL)
		return EPMOE_ENOMEM;
	bw->W = n_worker;
	bw->cap = cap;
	if ((bw->loans = calloc((size_t)n_worker * cap, sizeof(*bw->loans))) == NULL) {
		free(bw);
		return EPMOE_ENOMEM;
	}
	*out = bw;
	return 0;
}

void
borrow_free(struct borrow *bw)
{
	if (bw == NULL)
		return;
	free(bw->loans);
	free(bw);
}

uint32_t
borrow_count(const struct borrow *bw)
{
	return bw->n;
}

int
borrow_plan(struct borrow *bw, const struct placement *cur, const double *w,
        const bool *in, double lambda, uint64_t now, struct placement **out,
        struct borrow_step *step)
{
	uint32_t L = cur->n_layer, E = cur->n_expert, W = cur->n_worker;
	uint32_t best_l = 0, n_in = 0;
	struct placement *mid = NULL;
	double *lw = NULL, best_ratio = lambda;
	int rc;

	*out = NULL;
	*step = (struct borrow_step){ -1, -1, -1, -1, -1, -1 };
	if (W > bw->W)
		return EPMOE_EINVAL;
	/* forget loans the map no longer has; refresh the hot ones */
	for (uint32_t k = 0; k < bw->n;) {
		struct loan *x = &bw->loans[k];
		if (x->layer >= L || x->expert >= E || x->worker >= W ||
		        !placement_has(cur, x->layer, x->expert, x->worker)) {
			*x = bw->loans[--bw->n];
			continue;
		}
		double mean = 0;
		for (uint32_t e = 0; e < E; e++)
			mean += w[(size_t)x->layer * E + e] / E;
		if (w[(size_t)x->layer * E + x->expert] >= mean && mean > 0)
			x->used = now;
		k++;
	}
	if ((lw = calloc((size_t)L * W, sizeof(*lw))) == NULL)
		return EPMOE_ENOMEM;
	for (uint32_t k = 0; k < W; k++)
		n_in += !in || in[k];
	if (n_in < 2)
		goto done;
	/* per-layer worker loads (copies share their expert's tokens); the
	 * most skewed layer above lambda */
	for (uint32_t l = 0; l < L; l++) {
		double *x = lw + (size_t)l * W, tot = 0, mx = 0;
		for (uint32_t e = 0; e < E; e++) {
			uint32_t n = placement_expert_copies(cur, l, e);
			for (uint32_t r = 0; r < n; r++) {
				int32_t wk = placement_slot_worker(cur, l,
				        (uint32_t)placement_expert_slot(cur, l, e, r));
				if (wk >= 0 && (uint32_t)wk < W)
					x[wk] += w[(size_t)l * E + e] / n;
			}
			tot += w[(size_t)l * E + e];
		}
		for (uint32_t k = 0; k < W; k++)
			if ((!in || in[k]) && x[k] > mx)
				mx = x[k];
		if (tot > 0 && mx / (tot / n_in) > best_ratio) {
			best_ratio = mx / (tot / n_in);
			best_l = l;
			step->layer = 0; /* found */
		}
	}
	if (step->layer < 0)
		goto done;
	step->layer = -1;
	{
		const double *x = lw + (size_t)best_l * W;
		int32_t hi = -1, lo = -1, e_best = -1;
		double e_load = 0;
		for (uint32_t k = 0; k < W; k++) {
			if (in && !in[k])
				continue;
			if (hi < 0 || x[k] > x[hi])
				hi = (int32_t)k;
			if (lo < 0 || x[k] < x[lo])
				lo = (int32_t)k;
		}
		/* the busiest worker's hottest expert the least loaded lacks */
		for (uint32_t e = 0; e < E; e++) {
			double share = w[(size_t)best_l * E + e] / placement_expert_copies(cur, best_l, e);
			if (!placement_has(cur, best_l, e, (uint32_t)hi) ||
			        placement_has(cur, best_l, e, (uint32_t)lo) || share <= e_load)
				continue;
			e_best = (int32_t)e;
			e_load = share;
		}
		/* worth it only if the copy's share does not just move the peak */
		if (e_best < 0 || hi == lo || x[lo] + e_load / 2 >= x[hi])
			goto done;
		/* room on lo: its least recently used loan goes */
		uint32_t held = 0;
		int32_t lru = -1;
		for (uint32_t k = 0; k < bw->n; k++) {
			if (bw->loans[k].worker != (uint32_t)lo)
				continue;
			held++;
			if (lru < 0 || bw->loans[k].used < bw->loans[lru].used)
				lru = (int32_t)k;
		}
		if (held >= bw->cap && lru >= 0) {
			struct loan *v = &bw->loans[lru];
			/* (EINVAL: its last copy, which is never dropped) */
			rc = placement_copy_edit(&mid, cur, v->layer, v->expert, v->worker, false);
			if (rc != 0 && rc != EPMOE_EINVAL) {
				free(lw);
				return rc;
			}
			step->evicted_layer = (int32_t)v->layer;
			step->evicted_expert = (int32_t)v->expert;
			*v = bw->loans[--bw->n];
		}
		rc = placement_copy_edit(out, mid ? mid : cur, best_l, (uint32_t)e_best,
		        (uint32_t)lo, true);
		placement_free(mid);
		if (rc != 0) {
			free(lw);
			return rc;
		}
		bw->loans[bw->n++] = (struct loan){ best_l, (uint32_t)e_best, (uint32_t)lo, now };
		step->layer = (int32_t)best_l;
		step->expert = e_best;
		step->from = hi;
		step->to = lo;
	}
done:
	free(lw);
	return 0;
}
