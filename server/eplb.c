/* EPLB: replication and packing of expert slots (balancing.md §3), and
 * the low-movement mapping of a slot plan onto workers (§3.5).  Pure
 * computation; see eplb.h.  Tie-breaking follows §3 exactly: the unit
 * test checks the §3.4 vector. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "eplb.h"
#include "err.h"

/* Items by weight descending, lower index first on a tie. */
struct item { double w; uint32_t i; };

static int
item_cmp(const void *a, const void *b)
{
	const struct item *x = a, *y = b;

	if (x->w != y->w)
		return x->w > y->w ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

int
eplb_pack(const double *w, uint32_t n, uint32_t P, int32_t *pack, int32_t *rank)
{
	struct item *it;
	double *pw;
	uint32_t *pn, per;

	if (P == 0 || n % P != 0)
		return EPMOE_EINVAL;
	per = n / P;
	if (per == 1) {
		for (uint32_t i = 0; i < n; i++) {
			pack[i] = (int32_t)i;
			rank[i] = 0;
		}
		return 0;
	}
	it = malloc(n * sizeof(*it));
	pw = calloc(P, sizeof(*pw));
	pn = calloc(P, sizeof(*pn));
	if (it == NULL || pw == NULL || pn == NULL) {
		free(it);
		free(pw);
		free(pn);
		return EPMOE_ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++)
		it[i] = (struct item){ w[i], i };
	qsort(it, n, sizeof(*it), item_cmp);
	for (uint32_t k = 0; k < n; k++) {
		uint32_t g = it[k].i, best = P;
		for (uint32_t p = 0; p < P; p++)
			if (pn[p] < per && (best == P || pw[p] < pw[best]))
				best = p;
		pack[g] = (int32_t)best;
		rank[g] = (int32_t)pn[best];
		pw[best] += w[g];
		pn[best]++;
	}
	free(it);
	free(pw);
	free(pn);
	return 0;
}

int
eplb_replicate(const double *w, uint32_t E, uint32_t S, int32_t *phy2log,
        int32_t *phyrank, int32_t *logcnt)
{
	if (E == 0 || S < E)
		return EPMOE_EINVAL;
	for (uint32_t e = 0; e < E; e++) {
		phy2log[e] = (int32_t)e;
		phyrank[e] = 0;
		logcnt[e] = 1;
	}
	for (uint32_t i = E; i < S; i++) {
		uint32_t best = 0;
		for (uint32_t e = 1; e < E; e++)
			if (w[e] / logcnt[e] > w[best] / logcnt[best])
				best = e;
		phy2log[i] = (int32_t)best;
		phyrank[i] = logcnt[best];
		logcnt[best]++;
	}
	return 0;
}

/* One layer of §3.3.  Scratch sizes: see eplb_rebalance. */
static int
rebalance_layer(const double *w, uint32_t E, uint32_t S, uint32_t G,
        uint32_t N, uint32_t W, int32_t *phy2log, int32_t *logcnt)
{
	uint32_t gs = E / G, gpn = G / N, En = E / N, Sn = S / N, spg = S / W;
	double *tpg = calloc(G, sizeof(*tpg)), *wm = malloc(En * sizeof(*wm)),
	       *tpp = malloc(Sn * sizeof(*tpp));
	int32_t *gpack = malloc(G * sizeof(int32_t)), *grank = malloc(G * sizeof(int32_t)),
	        *log2mlog = malloc(E * sizeof(int32_t)), *mlog2log = malloc(E * sizeof(int32_t)),
	        *p2m = malloc(Sn * sizeof(int32_t)), *prank = malloc(Sn * sizeof(int32_t)),
	        *mcnt = malloc(En * sizeof(int32_t)), *pk = malloc(Sn * sizeof(int32_t)),
	        *rk = malloc(Sn * sizeof(int32_t));
	int rc = EPMOE_ENOMEM;

	if (!tpg || !wm || !tpp || !gpack || !grank || !log2mlog || !mlog2log || !p2m ||
	        !prank || !mcnt || !pk || !rk)
		goto out;
	/* step 1: groups to nodes; experts renumbered node by node */
	for (uint32_t g = 0; g < G; g++)
		for (uint32_t k = 0; k < gs; k++)
			tpg[g] += w[g * gs + k];
	if ((rc = eplb_pack(tpg, G, N, gpack, grank)) != 0)
		goto out;
	for (uint32_t g = 0; g < G; g++)
		for (uint32_t k = 0; k < gs; k++) {
			int32_t m = (int32_t)(((uint32_t)gpack[g] * gpn + (uint32_t)grank[g]) * gs + k);
			log2mlog[g * gs + k] = m;
			mlog2log[m] = (int32_t)(g * gs + k);
		}
	for (uint32_t j = 0; j < N; j++) {
		/* step 2: replicas inside node j */
		for (uint32_t i = 0; i < En; i++)
			wm[i] = w[mlog2log[j * En + i]];
		if ((rc = eplb_replicate(wm, En, Sn, p2m, prank, mcnt)) != 0)
			goto out;
		/* step 3: replicas to the node's workers */
		for (uint32_t i = 0; i < Sn; i++)
			tpp[i] = wm[p2m[i]] / mcnt[p2m[i]];
		if ((rc = eplb_pack(tpp, Sn, W / N, pk, rk)) != 0)
			goto out;
		for (uint32_t i = 0; i < Sn; i++)
			phy2log[j * Sn + (uint32_t)pk[i] * spg + (uint32_t)rk[i]] =
			        mlog2log[j * En + (uint32_t)p2m[i]];
		if (logcnt)
			for (uint32_t i = 0; i < En; i++)
				logcnt[mlog2log[j * En + i]] = mcnt[i];
	}
	rc = 0;
out:
	free(tpg); free(wm); free(tpp); free(gpack); free(grank); free(log2mlog);
	free(mlog2log); free(p2m); free(prank); free(mcnt); free(pk); free(rk);
	return rc;
}

int
eplb_rebalance(const double *weight, uint32_t L, uint32_t E, uint32_t S,
        uint32_t G, uint32_t N, uint32_t W, int32_t *phy2log, int32_t *logcnt)
{
	int rc;

	if (E == 0 || W == 0 || S < E || S % W != 0 || G == 0 || E % G != 0 || N == 0 ||
	        W % N != 0)
		return EPMOE_EINVAL;
	if (G % N != 0) /* global policy */
		G = N = 1;
	if (E % N != 0 || S % N != 0)
		return EPMOE_EINVAL;
	for (uint32_t l = 0; l < L; l++)
		if ((rc = rebalance_layer(weight + (size_t)l * E, E, S, G, N, W,
		             phy2log + (size_t)l * S, logcnt ? logcnt + (size_t)l * E : NULL)) != 0)
			return rc;
	return 0;
}

/* eplb_to_placement with the plan's worker w standing for worker place
 * wmap[w] (NULL: itself) of a map over n_out workers. */
static int
to_placement(const int32_t *phy2log, uint32_t L, uint32_t E, uint32_t S,
        uint32_t N, uint32_t W, const uint32_t *wmap, uint32_t n_out,
        const struct placement *cur, struct placement **out, uint64_t *moved)
{
	uint32_t spg, wpn, r_cap = W;
	uint32_t *cnt = calloc((size_t)L * E, sizeof(*cnt));
	int32_t *own = malloc((size_t)L * E * r_cap * sizeof(*own));
	uint32_t *ov = malloc((size_t)W * W * sizeof(*ov));
	int32_t *pack2w = malloc(W * sizeof(*pack2w));
	bool *wused = malloc(W * sizeof(*wused));
	uint64_t mv = 0;
	int rc = EPMOE_EINVAL;

	if (!cnt || !own || !ov || !pack2w || !wused) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	if (W == 0 || N == 0 || S % W != 0 || W % N != 0)
		goto out;
	if (cur && (cur->n_layer != L || cur->n_expert != E))
		goto out;
	spg = S / W;
	wpn = W / N;
	for (uint32_t l = 0; l < L; l++) {
		const int32_t *p2l = phy2log + (size_t)l * S;

		/* overlap of pack p with worker w of the same node */
		memset(ov, 0, (size_t)W * W * sizeof(*ov));
		for (uint32_t s = 0; s < S; s++) {
			uint32_t p = s / spg, node = p / wpn;
			if (p2l[s] < 0 || (uint32_t)p2l[s] >= E)
				goto out;
			for (uint32_t w = node * wpn; cur && w < (node + 1) * wpn; w++) {
				uint32_t rw = wmap ? wmap[w] : w;
				if (rw < cur->n_worker && placement_has(cur, l, (uint32_t)p2l[s], rw))
					ov[p * W + w]++;
			}
		}
		for (uint32_t p = 0; p < W; p++)
			pack2w[p] = -1;
		memset(wused, 0, W * sizeof(*wused));
		/* greedy: the largest overlap first, lowest (pack, worker) on a tie */
		for (uint32_t k = 0; k < W; k++) {
			int32_t bp = -1, bw = -1;
			uint32_t best = 0;
			for (uint32_t p = 0; p < W; p++) {
				if (pack2w[p] >= 0)
					continue;
				for (uint32_t w = (p / wpn) * wpn; w < (p / wpn + 1) * wpn; w++)
					if (!wused[w] && (bp < 0 || ov[p * W + w] > best)) {
						bp = (int32_t)p;
						bw = (int32_t)w;
						best = ov[p * W + w];
					}
			}
			pack2w[bp] = bw;
			wused[bw] = true;
		}
		for (uint32_t s = 0; s < S; s++) {
			uint32_t e = (uint32_t)p2l[s], w = (uint32_t)pack2w[s / spg];
			if (wmap)
				w = wmap[w];
			size_t le = (size_t)l * E + e;
			bool dup = false;
			for (uint32_t r = 0; r < cnt[le]; r++)
				dup |= own[le * r_cap + r] == (int32_t)w;
			if (dup)
				continue;
			own[le * r_cap + cnt[le]++] = (int32_t)w;
			if (cur == NULL || w >= cur->n_worker || !placement_has(cur, l, e, w))
				mv++;
		}
	}
	/* an expert's first copy stays first where it is kept: the copy order
	 * decides which copy is exact under --replica-dtype q8_0 */
	for (uint32_t l = 0; cur && l < L; l++) {
		for (uint32_t e = 0; e < E; e++) {
			size_t le = (size_t)l * E + e;
			int32_t fw = placement_slot_worker(cur, l,
			        (uint32_t)placement_expert_slot(cur, l, e, 0));
			for (uint32_t r = 1; r < cnt[le]; r++) {
				if (own[le * r_cap + r] != fw)
					continue;
				own[le * r_cap + r] = own[le * r_cap];
				own[le * r_cap] = fw;
				break;
			}
		}
	}
	if ((rc = placement_build(out, L, E, n_out, cnt, own, r_cap)) == 0 && moved)
		*moved = mv;
out:
	free(cnt);
	free(own);
	free(ov);
	free(pack2w);
	free(wused);
	return rc;
}

int
eplb_to_placement(const int32_t *phy2log, uint32_t L, uint32_t E, uint32_t S,
        uint32_t N, uint32_t W, const struct placement *cur,
        struct placement **out, uint64_t *moved)
{
	return to_placement(phy2log, L, E, S, N, W, NULL, W, cur, out, moved);
}

int
eplb_plan_members(const double *w, uint32_t L, uint32_t E, uint32_t R,
        uint32_t N, const uint32_t *members, uint32_t M, uint32_t n_worker,
        const struct placement *cur, struct placement **out, uint64_t *moved)
{
	uint32_t S = E + R;
	int32_t *p2l;
	int rc;

	if (M == 0 || L == 0 || E == 0 || n_worker > PLACEMENT_MAX_WORKERS)
		return EPMOE_EINVAL;
	for (uint32_t i = 0; i < M; i++) {
		if (members[i] >= n_worker)
			return EPMOE_EINVAL;
		for (uint32_t k = 0; k < i; k++)
			if (members[k] == members[i])
				return EPMOE_EINVAL;
	}
	if (S < M)
		S = M;
	if (S % M != 0)
		S += M - S % M;
	if (N == 0 || M % N != 0)
		N = 1;
	if ((p2l = malloc((size_t)L * S * sizeof(*p2l))) == NULL)
		return EPMOE_ENOMEM;
	if ((rc = eplb_rebalance(w, L, E, S, 1, N, M, p2l, NULL)) == 0)
		rc = to_placement(p2l, L, E, S, N, M, members, n_worker, cur, out, moved);
	free(p2l);
	return rc;
}

double
eplb_worker_ratio(const struct placement *p, const double *w, double *load)
{
	return eplb_worker_ratio_in(p, w, load, NULL);
}

double
eplb_worker_ratio_in(const struct placement *p, const double *w, double *load,
        const bool *in)
{
	uint32_t W = p->n_worker, E = p->n_expert, n_in = 0;
	double sum_max = 0, sum_mean = 0;
	double *lw = calloc(W ? W : 1, sizeof(*lw));

	if (lw == NULL)
		return 1.0;
	for (uint32_t k = 0; k < W; k++)
		n_in += !in || in[k];
	if (n_in == 0)
		n_in = W ? W : 1;
	if (load)
		memset(load, 0, W * sizeof(*load));
	for (uint32_t l = 0; l < p->n_layer; l++) {
		double tot = 0, mx = 0;
		memset(lw, 0, W * sizeof(*lw));
		for (uint32_t e = 0; e < E; e++) {
			uint32_t n = placement_expert_copies(p, l, e);
			double x = w[(size_t)l * E + e];
			for (uint32_t r = 0; r < n; r++) {
				int32_t s = placement_expert_slot(p, l, e, r);
				int32_t wk = placement_slot_worker(p, l, (uint32_t)s);
				if (wk >= 0 && (uint32_t)wk < W)
					lw[wk] += x / n;
			}
			tot += x;
		}
		for (uint32_t k = 0; k < W; k++) {
			if (load)
				load[k] += lw[k];
			if (!in || in[k])
				mx = lw[k] > mx ? lw[k] : mx;
		}
		sum_max += mx;
		sum_mean += tot / n_in;
	}
	free(lw);
	return sum_mean > 0 ? sum_max / sum_mean : 1.0;
}
