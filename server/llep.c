/* LLEP least-loaded assignment with the minimum-chunk rule (balancing.md
 * §4.2, "pending native load" included); see llep.h. */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "llep.h"

double
llep_ratio(const uint32_t *load, uint32_t E, uint32_t P, const uint32_t *native)
{
	uint64_t mx = 0, tot = 0;
	uint64_t *wl = calloc(P ? P : 1, sizeof(*wl));

	if (wl == NULL || P == 0) {
		free(wl);
		return 1.0;
	}
	for (uint32_t e = 0; e < E; e++)
		if (native[e] < P)
			wl[native[e]] += load[e];
	for (uint32_t p = 0; p < P; p++) {
		tot += wl[p];
		if (wl[p] > mx)
			mx = wl[p];
	}
	free(wl);
	return tot ? (double)mx * P / (double)tot : 1.0;
}

struct ord { uint32_t v, i; };

static int
desc_cmp(const void *a, const void *b)
{
	const struct ord *x = a, *y = b;

	if (x->v != y->v)
		return x->v > y->v ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

int
llep_plan(const uint32_t *load, uint32_t E, uint32_t P, const uint32_t *native,
        const bool *holds, const struct llep_cfg *cfg, struct llep_chunk *out,
        uint32_t *n_out, bool *skipped)
{
	double alpha = cfg && cfg->alpha > 0 ? cfg->alpha : 1.0;
	double lambda = cfg && cfg->lambda > 0 ? cfg->lambda : 1.3;
	uint32_t m_min = cfg && cfg->m_min > 0 ? cfg->m_min : 1;
	int64_t *pending = calloc(P ? P : 1, sizeof(*pending));
	int64_t *assigned = calloc(P ? P : 1, sizeof(*assigned));
	struct ord *eo = malloc((E ? E : 1) * sizeof(*eo));
	struct ord *oo = malloc((P ? P : 1) * sizeof(*oo));
	uint64_t total = 0;
	int64_t m_alpha;
	uint32_t n = 0;
	bool skip;
	int rc = EPMOE_EINVAL;

	if (!pending || !assigned || !eo || !oo) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	if (P == 0)
		goto out;
	for (uint32_t e = 0; e < E; e++) {
		if (native[e] >= P)
			goto out;
		pending[native[e]] += load[e];
		total += load[e];
		eo[e] = (struct ord){ load[e], e };
	}
	qsort(eo, E, sizeof(*eo), desc_cmp);
	skip = llep_ratio(load, E, P, native) < lambda;
	m_alpha = (int64_t)(alpha * (double)total / P);
	if (m_alpha < 1)
		m_alpha = 1;
	for (uint32_t k = 0; k < E && eo[k].v > 0; k++) {
		uint32_t e = eo[k].i, nw = native[e];
		int64_t L = eo[k].v, avail, r, off = 0;

		bool other = false;

		for (uint32_t o = 0; o < P && !other; o++)
			other = o != nw && (holds == NULL || holds[(size_t)e * P + o]);
		pending[nw] -= L;
		avail = m_alpha - (assigned[nw] + pending[nw]);
		if (skip || avail >= L || !other) { /* case 1, or nowhere to spill */
			out[n++] = (struct llep_chunk){ e, nw, 0, (uint32_t)L };
			assigned[nw] += L;
			continue;
		}
		if (avail > 0) {
			out[n++] = (struct llep_chunk){ e, nw, 0, (uint32_t)avail };
			assigned[nw] += avail;
			off = avail;
		}
		r = L - off;
		while (r > 0) {
			uint32_t no = 0;
			bool placed = false;
			/* other holders by effective load, lower index on a tie */
			for (uint32_t o = 0; o < P; o++)
				if (o != nw && (holds == NULL || holds[(size_t)e * P + o])) {
					int64_t eff = assigned[o] + pending[o];
					oo[no++] = (struct ord){ (uint32_t)(eff < 0 ? 0 : eff), o };
				}
			/* ascending: reverse of desc_cmp on the value */
			for (uint32_t i = 1; i < no; i++)
				for (uint32_t j = i; j > 0 && (oo[j].v < oo[j - 1].v ||
				        (oo[j].v == oo[j - 1].v && oo[j].i < oo[j - 1].i)); j--) {
					struct ord t = oo[j];
					oo[j] = oo[j - 1];
					oo[j - 1] = t;
				}
			for (uint32_t i = 0; i < no && !placed; i++) {
				uint32_t o = oo[i].i;
				int64_t c = m_alpha - (assigned[o] + pending[o]);
				if (c > r)
					c = r;
				if (c <= 0 || (c < m_min && r > c))
					continue;
				out[n++] = (struct llep_chunk){ e, o, (uint32_t)off, (uint32_t)(off + c) };
				assigned[o] += c;
				off += c;
				r -= c;
				placed = true;
			}
			if (!placed) { /* everyone full: the least loaded takes the rest */
				uint32_t o = oo[0].i;
				out[n++] = (struct llep_chunk){ e, o, (uint32_t)off, (uint32_t)(off + r) };
				assigned[o] += r;
				r = 0;
			}
		}
	}
	*n_out = n;
	if (skipped)
		*skipped = skip;
	rc = 0;
out:
	free(pending);
	free(assigned);
	free(eo);
	free(oo);
	return rc;
}
