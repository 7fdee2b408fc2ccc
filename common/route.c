/* Routing policies (shared/design/routing.md): the policy object and
 * route_run(), which turns one MoE layer's gate logits into CSR (token ->
 * experts, weights).  The spec language is in route_spec.c, the OT solvers
 * in route_ot.c.
 *
 * Every policy is a pure function of the logits, the routing groups and,
 * for lossfree, the layer's bias; route_run() never looks at anything
 * else.  native must stay cheap: it runs for every token of every layer,
 * so it writes CSR directly and touches no scratch beyond one row.
 */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "fmath.h"
#include "rng.h"
#include "route.h"

/* ---- primitives ------------------------------------------------------- */

void
route_topk(const float *x, int n, int k, int32_t *idx)
{
	float v[64], *val = v, thr;
	int m = 0;

	if (k > 64) {
		/* rare: a k this large needs no speed */
		for (int j = 0; j < k; j++) {
			int best = -1;

			for (int e = 0; e < n; e++) {
				int used = 0;

				for (int q = 0; q < j && !used; q++)
					used = idx[q] == e;
				if (!used && (best < 0 || x[e] > x[best]))
					best = e;
			}
			idx[j] = best;
		}
		return;
	}
	/* Insertion into a sorted list of size k; a later equal value never
	 * passes an earlier one, so ties go to the lower index. */
	for (int e = 0; e < k; e++) {
		float xe = x[e];
		int j = m++;

		while (j > 0 && xe > val[j - 1]) {
			val[j] = val[j - 1];
			idx[j] = idx[j - 1];
			j--;
		}
		val[j] = xe;
		idx[j] = e;
	}
	thr = val[k - 1];
	for (int e = k; e < n; e++) {
		float xe = x[e];
		int j = k - 1;

		if (!(xe > thr))
			continue;
		while (j > 0 && xe > val[j - 1]) {
			val[j] = val[j - 1];
			idx[j] = idx[j - 1];
			j--;
		}
		val[j] = xe;
		idx[j] = e;
		thr = val[k - 1];
	}
}

/* a before b in "larger value first, then smaller index". */
static inline int
better(float va, int32_t ia, float vb, int32_t ib)
{
	return va > vb || (va == vb && ia < ib);
}

static inline void
swap_pair(float *val, int32_t *idx, int a, int b)
{
	float v = val[a];
	int32_t i = idx[a];

	val[a] = val[b];
	idx[a] = idx[b];
	val[b] = v;
	idx[b] = i;
}

void
route_select(float *val, int32_t *idx, int n, int m)
{
	int lo = 0, hi = n - 1;

	if (m <= 0 || m >= n)
		return;
	/* Quickselect for position m - 1 under the total order better();
	 * median-of-three pivot. */
	while (lo < hi) {
		int mid = lo + (hi - lo) / 2, i, j;
		float pv;
		int32_t pi;

		if (better(val[mid], idx[mid], val[lo], idx[lo]))
			swap_pair(val, idx, mid, lo);
		if (better(val[hi], idx[hi], val[lo], idx[lo]))
			swap_pair(val, idx, hi, lo);
		if (better(val[hi], idx[hi], val[mid], idx[mid]))
			swap_pair(val, idx, hi, mid);
		/* now lo >= mid >= hi in the order; pivot = mid */
		pv = val[mid];
		pi = idx[mid];
		i = lo;
		j = hi;
		while (i <= j) {
			while (better(val[i], idx[i], pv, pi))
				i++;
			while (better(pv, pi, val[j], idx[j]))
				j--;
			if (i <= j) {
				swap_pair(val, idx, i, j);
				i++;
				j--;
			}
		}
		if (m - 1 <= j)
			hi = j;
		else if (m - 1 >= i)
			lo = i;
		else
			break;
	}
}

/* ---- the policy object ------------------------------------------------ */

struct pair {
	uint32_t tok;
	int32_t e;
	float w;
};

struct route_policy {
	struct route_cfg cfg;   /* resolved: no native sentinels */
	int E, n_layers;
	float *bias;            /* lossfree [n_layers][E] */
	uint16_t *worker;       /* [n_layers][E] */
	int n_workers;
	uint32_t *wload;        /* [n_workers] */
	struct route_stats st;
	struct route_ot ot;
	/* scratch, grown by ensure() */
	size_t cap_T;           /* tokens the T-sized buffers hold */
	float *row;             /* [E] a cleaned logits row */
	float *srow;            /* [E] scores of one row */
	uint32_t *ecnt;         /* [E] per-expert counters */
	uint32_t *eoff;         /* [E + 1] */
	int32_t *sel;           /* [T, k] per-token choices */
	float *selw;            /* [T, k] their weights */
	uint8_t *keep;          /* [T, k] capacity: pair survives */
	int32_t *gidx;          /* [T] tokens of the current group */
	int32_t *dec;           /* [T] tokens of the decode group */
	uint32_t *cursor;       /* [T] CSR assembly */
	float *G, *A, *B;       /* [T, E] group logits, plan/P/U, cost */
	float *vals;            /* [T x E] selection values */
	int32_t *vidx;          /* [T x E] selection indices */
	uint8_t *mask;          /* [T x E] */
	struct pair *pairs;     /* pre-CSR output of group policies */
	size_t n_pairs, cap_pairs;
};

static void
default_workers(struct route_policy *p)
{
	int W = p->cfg.workers > 0 ? p->cfg.workers : p->E;

	if (W > p->E)
		W = p->E;
	p->n_workers = W;
	for (int l = 0; l < p->n_layers; l++)
		for (int e = 0; e < p->E; e++)
			p->worker[(size_t)l * p->E + e] =
			    (uint16_t)((long)e * W / p->E);
}

int
route_policy_new(struct route_policy **out, const struct route_cfg *cfg,
    const struct route_model *m, char *err, size_t err_len)
{
	struct route_policy *p;
	struct route_cfg c;
	int rc;

	if (out == NULL) {
		epmoe_set_err(err, err_len, "invalid routing policy");
		return EPMOE_EINVAL;
	}
	if ((rc = route_cfg_resolve(cfg, m, &c, err, err_len)) != 0)
		return rc;
	if ((p = calloc(1, sizeof(*p))) == NULL)
		goto nomem;
	p->cfg = c;
	p->E = m->n_experts;
	p->n_layers = m->n_layers;
	route_ot_init(&p->ot);
	p->worker = calloc((size_t)p->n_layers * p->E, sizeof(*p->worker));
	p->row = calloc((size_t)p->E, sizeof(float));
	p->srow = calloc((size_t)p->E, sizeof(float));
	p->ecnt = calloc((size_t)p->E, sizeof(uint32_t));
	p->eoff = calloc((size_t)p->E + 1, sizeof(uint32_t));
	p->wload = calloc((size_t)p->E, sizeof(uint32_t));
	if (p->wload == NULL || p->worker == NULL || p->row == NULL || p->srow == NULL ||
	    p->ecnt == NULL || p->eoff == NULL)
		goto nomem;
	if (c.kind == ROUTE_LOSSFREE &&
	    (p->bias = calloc((size_t)p->n_layers * p->E, sizeof(float))) ==
	    NULL)
		goto nomem;
	default_workers(p);
	*out = p;
	return 0;
nomem:
	route_policy_free(p);
	epmoe_set_err(err, err_len, "out of memory");
	return EPMOE_ENOMEM;
}

void
route_policy_free(struct route_policy *p)
{
	if (p == NULL)
		return;
	route_ot_fini(&p->ot);
	free(p->bias);
	free(p->worker);
	free(p->row);
	free(p->srow);
	free(p->ecnt);
	free(p->eoff);
	free(p->wload);
	free(p->sel);
	free(p->selw);
	free(p->keep);
	free(p->gidx);
	free(p->dec);
	free(p->cursor);
	free(p->G);
	free(p->A);
	free(p->B);
	free(p->vals);
	free(p->vidx);
	free(p->mask);
	free(p->pairs);
	free(p);
}

const struct route_cfg *
route_policy_cfg(const struct route_policy *p)
{
	return &p->cfg;
}

int
route_policy_set_workers(struct route_policy *p,
    const uint16_t *worker_of_expert, int n_workers)
{
	size_t n;
	uint32_t *wl;

	if (p == NULL || worker_of_expert == NULL || n_workers < 1 ||
	    n_workers > 65536)
		return EPMOE_EINVAL;
	n = (size_t)p->n_layers * p->E;
	for (size_t i = 0; i < n; i++)
		if (worker_of_expert[i] >= n_workers)
			return EPMOE_EINVAL;
	if ((wl = calloc((size_t)n_workers, sizeof(*wl))) == NULL)
		return EPMOE_ENOMEM;
	free(p->wload);
	p->wload = wl;
	memcpy(p->worker, worker_of_expert, n * sizeof(*p->worker));
	p->n_workers = n_workers;
	return 0;
}

void
route_policy_reset(struct route_policy *p)
{
	if (p == NULL)
		return;
	if (p->bias != NULL)
		memset(p->bias, 0, (size_t)p->n_layers * p->E * sizeof(float));
	memset(&p->st, 0, sizeof(p->st));
}

const float *
route_policy_bias(const struct route_policy *p, int layer)
{
	if (p == NULL || p->bias == NULL || layer < 0 || layer >= p->n_layers)
		return NULL;
	return p->bias + (size_t)layer * p->E;
}

void
route_policy_stats(const struct route_policy *p, struct route_stats *st)
{
	*st = p->st;
}

/* ---- output ------------------------------------------------------------ */

void
route_out_init(struct route_out *o)
{
	memset(o, 0, sizeof(*o));
}

void
route_out_fini(struct route_out *o)
{
	if (o == NULL)
		return;
	free(o->off);
	free(o->expert);
	free(o->weight);
	free(o->load);
	memset(o, 0, sizeof(*o));
}

static int
grow_buf(void **pp, size_t *cap, size_t need, size_t elem)
{
	void *q;
	size_t n;

	if (need == 0)
		need = 1;       /* never leave a NULL buffer behind */
	if (need <= *cap && *pp != NULL)
		return 0;
	n = *cap ? *cap : 16;
	while (n < need)
		n *= 2;
	if ((q = realloc(*pp, n * elem)) == NULL)
		return EPMOE_ENOMEM;
	*pp = q;
	*cap = n;
	return 0;
}

static int
out_reserve(struct route_out *o, uint32_t T, uint32_t E, size_t pairs)
{
	size_t c;

	c = o->cap_tok;
	if (grow_buf((void **)&o->off, &c, (size_t)T + 1, sizeof(*o->off)))
		return EPMOE_ENOMEM;
	o->cap_tok = c;
	c = o->cap_pairs;
	if (grow_buf((void **)&o->expert, &c, pairs, sizeof(*o->expert)))
		return EPMOE_ENOMEM;
	c = o->cap_pairs;
	if (grow_buf((void **)&o->weight, &c, pairs, sizeof(*o->weight)))
		return EPMOE_ENOMEM;
	o->cap_pairs = c;
	if (grow_buf((void **)&o->load, &o->cap_load, E, sizeof(*o->load)))
		return EPMOE_ENOMEM;
	o->n_tokens = T;
	o->n_experts = E;
	return 0;
}

/* Grows the T-dependent scratch of policy p for T tokens. */
static int
ensure(struct route_policy *p, uint32_t T)
{
	size_t n = T, k = (size_t)p->cfg.k, ne = (size_t)T * p->E;
	enum route_kind kind = p->cfg.kind;
	int group = !route_policy_causal(kind);
	size_t c;

	if (n <= p->cap_T && p->cap_T > 0)
		return 0;
	n = p->cap_T ? p->cap_T : 16;
	while (n < T)
		n *= 2;
	ne = n * p->E;
#define GROW(f, cnt) \
	do { \
		c = 0; \
		free(p->f); \
		p->f = NULL; \
		if (grow_buf((void **)&p->f, &c, (cnt), sizeof(*p->f))) \
			return EPMOE_ENOMEM; \
	} while (0)
	GROW(sel, n * k);
	GROW(selw, n * k);
	GROW(gidx, n);
	GROW(dec, n);
	GROW(cursor, n);
	if (kind == ROUTE_CAPACITY) {
		GROW(keep, n * k);
		GROW(vals, n * k);
		GROW(vidx, n * k);
	}
	if (group) {
		GROW(G, ne);
		GROW(A, ne);
		GROW(B, ne);
		GROW(vals, ne);
		GROW(vidx, ne);
		GROW(mask, ne);
	}
#undef GROW
	p->cap_T = n;
	return 0;
}

static int
pairs_push(struct route_policy *p, uint32_t tok, int32_t e, float w)
{
	if (p->n_pairs == p->cap_pairs &&
	    grow_buf((void **)&p->pairs, &p->cap_pairs, p->n_pairs + 1,
	    sizeof(*p->pairs)))
		return EPMOE_ENOMEM;
	p->pairs[p->n_pairs].tok = tok;
	p->pairs[p->n_pairs].e = e;
	p->pairs[p->n_pairs].w = w;
	p->n_pairs++;
	return 0;
}

/* ---- per-token helpers ----------------------------------------------- */

/* Returns row t of S, or a copy with non-finite values replaced by the
 * row's smallest finite value (0 if none is finite), counting them
 * (routing.md §0 rule 5, per token so that per-token policies stay
 * batch-independent). */
static const float *
clean_row(const float *x, int E, float *buf, uint32_t *nf)
{
	float mn = FLT_MAX, mx;

	if (route_row_scan(x, E, &mx))
		return x;
	for (int e = 0; e < E; e++)
		if (isfinite(x[e]) && x[e] < mn)
			mn = x[e];
	if (mn == FLT_MAX)
		mn = 0.0f;
	for (int e = 0; e < E; e++) {
		if (isfinite(x[e])) {
			buf[e] = x[e];
		} else {
			buf[e] = mn;
			(*nf)++;
		}
	}
	return buf;
}

static inline float
row_max(const float *x, int E)
{
	float m;

	route_row_scan(x, E, &m);
	return m;
}

/* Weights of the chosen experts sel[0..k-1] of a logits row: the softmax
 * over the chosen logits (renorm) or their full-softmax probability. */
static void
gate_weights(const float *x, int E, const int32_t *sel, int k, int renorm,
    float *w)
{
	float m;
	double s = 0.0;

	if (renorm) {
		m = x[sel[0]];
		for (int j = 1; j < k; j++)
			if (x[sel[j]] > m)
				m = x[sel[j]];
		for (int j = 0; j < k; j++) {
			w[j] = expf(x[sel[j]] - m);
			s += w[j];
		}
	} else {
		m = row_max(x, E);
		s = route_sumexp(x, E, m);
		for (int j = 0; j < k; j++)
			w[j] = expf(x[sel[j]] - m);
	}
	for (int j = 0; j < k; j++)
		w[j] = (float)(w[j] / s);
}

/* Row softmax of x into y. */
static void
softmax_row(const float *x, int E, float *y)
{
	float m = row_max(x, E);
	double s = 0.0;

	for (int e = 0; e < E; e++) {
		y[e] = expf(x[e] - m);
		s += y[e];
	}
	for (int e = 0; e < E; e++)
		y[e] = (float)(y[e] / s);
}

/* Per-token top-k with gate weights for every token of S into p->sel and
 * p->selw ([T, k]). */
static void
topk_all(struct route_policy *p, const float *S, uint32_t T, int k,
    int renorm, uint32_t *nf)
{
	int E = p->E;

	for (uint32_t t = 0; t < T; t++) {
		const float *x = clean_row(S + (size_t)t * E, E, p->row, nf);
		int32_t *sel = p->sel + (size_t)t * k;

		route_topk(x, E, k, sel);
		gate_weights(x, E, sel, k, renorm, p->selw + (size_t)t * k);
	}
}

static void
emit_fixed_k(struct route_policy *p, uint32_t T, int k, struct route_out *o)
{
	size_t n = (size_t)T * k;

	for (uint32_t t = 0; t <= T; t++)
		o->off[t] = t * (uint32_t)k;
	memcpy(o->expert, p->sel, n * sizeof(int32_t));
	memcpy(o->weight, p->selw, n * sizeof(float));
}

/* ---- groups ------------------------------------------------------------ */

static int
check_groups(const struct route_group *g, int n, uint32_t T)
{
	uint64_t next = 0;

	if (g == NULL)
		return n == 0 ? 0 : EPMOE_EINVAL;
	if (n < 0)
		return EPMOE_EINVAL;
	for (int i = 0; i < n; i++) {
		if (g[i].start != next ||
		    (g[i].kind != ROUTE_GROUP_PREFILL &&
		    g[i].kind != ROUTE_GROUP_DECODE))
			return EPMOE_EINVAL;
		next += g[i].n;
	}
	return next == T ? 0 : EPMOE_EINVAL;
}

/* Calls fn for every routing group: each PREFILL segment alone, then all
 * DECODE segments together; tok lists the group's tokens in order. */
typedef int (*group_fn)(struct route_policy *p, const float *S,
    const int32_t *tok, uint32_t n, struct route_info *info);

static int
for_each_group(struct route_policy *p, const float *S, uint32_t T,
    const struct route_group *g, int n_groups, group_fn fn,
    struct route_info *info)
{
	uint32_t nd = 0;
	int rc;

	if (g == NULL) {
		for (uint32_t t = 0; t < T; t++)
			p->gidx[t] = (int32_t)t;
		return T ? fn(p, S, p->gidx, T, info) : 0;
	}
	for (int i = 0; i < n_groups; i++) {
		if (g[i].n == 0)
			continue;
		if (g[i].kind == ROUTE_GROUP_DECODE) {
			for (uint32_t j = 0; j < g[i].n; j++)
				p->dec[nd++] = (int32_t)(g[i].start + j);
			continue;
		}
		for (uint32_t j = 0; j < g[i].n; j++)
			p->gidx[j] = (int32_t)(g[i].start + j);
		if ((rc = fn(p, S, p->gidx, g[i].n, info)) != 0)
			return rc;
	}
	if (nd > 0 && (rc = fn(p, S, p->dec, nd, info)) != 0)
		return rc;
	return 0;
}

/* Copies the group's rows into p->G [n, E], cleaning non-finite values. */
static void
gather(struct route_policy *p, const float *S, const int32_t *tok,
    uint32_t n, struct route_info *info)
{
	int E = p->E;

	for (uint32_t j = 0; j < n; j++) {
		const float *x = S + (size_t)tok[j] * E;
		float *d = p->G + (size_t)j * E;
		const float *c = clean_row(x, E, d, &info->n_nonfinite);

		if (c != d)
			memcpy(d, x, (size_t)E * sizeof(float));
	}
}

/* ---- capacity (§1.2) --------------------------------------------------- */

static uint32_t
capacity_of(const struct route_cfg *c, uint32_t n, int E)
{
	double x;
	uint32_t cap;

	if (!(c->factor > 0.0f))
		return n;
	x = (double)n * c->k / E * c->factor;
	cap = (uint32_t)ceil(x - 1e-9);
	if (cap < (uint32_t)c->min_capacity)
		cap = (uint32_t)c->min_capacity;
	return cap;
}

static int
capacity_group(struct route_policy *p, const float *S, const int32_t *tok,
    uint32_t n, struct route_info *info)
{
	int E = p->E, k = p->cfg.k;
	uint32_t cap = capacity_of(&p->cfg, n, E);

	(void)S;
	memset(p->ecnt, 0, (size_t)E * sizeof(uint32_t));
	if (p->cfg.drop == ROUTE_DROP_POSITION) {
		/* GShard order: every first choice, then every second... */
		for (int r = 0; r < k; r++) {
			for (uint32_t j = 0; j < n; j++) {
				size_t i = (size_t)tok[j] * k + r;
				int32_t e = p->sel[i];

				if (p->ecnt[e] < cap) {
					p->ecnt[e]++;
				} else {
					p->keep[i] = 0;
					info->n_dropped++;
				}
			}
		}
		return 0;
	}
	/* probs: bucket the group's pairs by expert, keep each expert's cap
	 * largest weights (ties: earlier token, then earlier choice). */
	for (uint32_t j = 0; j < n; j++)
		for (int r = 0; r < k; r++)
			p->ecnt[p->sel[(size_t)tok[j] * k + r]]++;
	p->eoff[0] = 0;
	for (int e = 0; e < E; e++)
		p->eoff[e + 1] = p->eoff[e] + p->ecnt[e];
	memcpy(p->ecnt, p->eoff, (size_t)E * sizeof(uint32_t));
	for (uint32_t j = 0; j < n; j++) {
		for (int r = 0; r < k; r++) {
			size_t i = (size_t)tok[j] * k + r;
			uint32_t at = p->ecnt[p->sel[i]]++;

			p->vals[at] = p->selw[i];
			p->vidx[at] = (int32_t)(j * (uint32_t)k + (uint32_t)r);
		}
	}
	for (int e = 0; e < E; e++) {
		uint32_t o = p->eoff[e], m = p->eoff[e + 1] - o;

		if (m <= cap)
			continue;
		route_select(p->vals + o, p->vidx + o, (int)m, (int)cap);
		for (uint32_t q = cap; q < m; q++) {
			int32_t v = p->vidx[o + q];
			size_t i = (size_t)tok[v / k] * k + v % k;

			p->keep[i] = 0;
			info->n_dropped++;
		}
	}
	return 0;
}

/* ---- expert choice (§3) ------------------------------------------------ */

static int
expert_choice_group(struct route_policy *p, const float *S,
    const int32_t *tok, uint32_t n, struct route_info *info)
{
	int E = p->E, rc;
	double x = (double)n * p->cfg.c / E;
	uint32_t cap = (uint32_t)fmin(ceil(x - 1e-9), (double)n);

	if (cap < 1)
		cap = 1;
	gather(p, S, tok, n, info);
	for (uint32_t j = 0; j < n; j++)
		softmax_row(p->G + (size_t)j * E, E, p->A + (size_t)j * E);
	memset(p->mask, 0, (size_t)n * E);
	for (int e = 0; e < E; e++) {
		for (uint32_t j = 0; j < n; j++) {
			p->vals[j] = p->A[(size_t)j * E + e];
			p->vidx[j] = (int32_t)j;
		}
		route_select(p->vals, p->vidx, (int)n, (int)cap);
		for (uint32_t q = 0; q < cap; q++)
			p->mask[(size_t)p->vidx[q] * E + e] = 1;
	}
	for (uint32_t j = 0; j < n; j++)
		for (int e = 0; e < E; e++)
			if (p->mask[(size_t)j * E + e] &&
			    (rc = pairs_push(p, (uint32_t)tok[j], e,
			    p->A[(size_t)j * E + e])) != 0)
				return rc;
	return 0;
}

/* ---- USMoE (§6) ----------------------------------------------------------- */

static int
usmoe_group(struct route_policy *p, const float *S, const int32_t *tok,
    uint32_t n, struct route_info *info)
{
	int E = p->E, rc;
	size_t ne = (size_t)n * E;
	float r = p->cfg.rate, se = 2.0f / (float)E;
	double want = floor((double)p->cfg.budget * n * p->cfg.k + 0.5);
	size_t m = want < 1.0 ? 1 : want > (double)ne ? ne : (size_t)want;

	gather(p, S, tok, n, info);
	for (uint32_t j = 0; j < n; j++) {
		const float *x = p->G + (size_t)j * E;
		float *U = p->A + (size_t)j * E;

		softmax_row(x, E, U);
		for (int e = 0; e < E; e++)
			U[e] = (1.0f - r) * U[e] + r * se * fmath_sigmoid(x[e]);
	}
	for (size_t i = 0; i < ne; i++) {
		p->vals[i] = p->A[i];
		p->vidx[i] = (int32_t)i;
	}
	route_select(p->vals, p->vidx, (int)ne, (int)m);
	memset(p->mask, 0, ne);
	for (size_t q = 0; q < m; q++)
		p->mask[p->vidx[q]] = 1;
	for (uint32_t j = 0; j < n; j++) {
		const float *U = p->A + (size_t)j * E;
		const uint8_t *mk = p->mask + (size_t)j * E;
		double s = 0.0;

		for (int e = 0; e < E; e++)
			if (p->cfg.uweights == ROUTE_UW_ROWSUM ||
			    (p->cfg.uweights == ROUTE_UW_RENORM && mk[e]))
				s += U[e];
		if (p->cfg.uweights == ROUTE_UW_U || !(s > 0.0))
			s = 1.0;
		for (int e = 0; e < E; e++)
			if (mk[e] && (rc = pairs_push(p, (uint32_t)tok[j], e,
			    (float)(U[e] / s))) != 0)
				return rc;
	}
	return 0;
}

/* ---- sinkhorn and ssr (§0.1, §0.2, §4.2, §5) --------------------------- */

/* Plain top-k of the group (used when OT is pointless: one token, or
 * k = E). */
static int
plain_group(struct route_policy *p, const int32_t *tok, uint32_t n)
{
	int k = p->cfg.k, rc;

	for (uint32_t j = 0; j < n; j++) {
		const float *x = p->G + (size_t)j * p->E;
		int32_t *sel = p->sel;
		float *w = p->selw;

		route_topk(x, p->E, k, sel);
		gate_weights(x, p->E, sel, k, p->cfg.renorm, w);
		for (int q = 0; q < k; q++)
			if ((rc = pairs_push(p, (uint32_t)tok[j], sel[q],
			    w[q])) != 0)
				return rc;
	}
	return 0;
}

static int
ot_group(struct route_policy *p, const float *S, const int32_t *tok,
    uint32_t n, struct route_info *info)
{
	const struct route_cfg *c = &p->cfg;
	int E = p->E, k = c->k, rc;
	const float *C;
	struct route_ot_result res;
	int plan_weights = c->kind == ROUTE_SSR &&
	    c->kernel == ROUTE_KERNEL_EXP;

	gather(p, S, tok, n, info);
	/* One token: the column constraint forces a uniform plan, which
	 * carries no preference; k = E: every expert is chosen anyway. */
	if (n < 2 || k >= E)
		return plain_group(p, tok, n);
	C = p->G;
	if (c->cost == ROUTE_COST_SOFTMAX) {
		for (uint32_t j = 0; j < n; j++)
			softmax_row(p->G + (size_t)j * E, E,
			    p->B + (size_t)j * E);
		C = p->B;
	}
	if (c->kernel == ROUTE_KERNEL_EXP)
		rc = route_sinkhorn(&p->ot, C, (int)n, E, c->xi, 1.0f,
		    (float)n / (float)E, c->iters, c->tol, p->A, &res);
	else
		rc = route_sinkhorn_capped(&p->ot, C, (int)n, E, c->xi,
		    (float)k, (float)n * (float)k / (float)E, c->iters, c->tol,
		    p->A, &res);
	if (rc != 0)
		return rc;
	info->ot_ran = 1;
	info->ot_groups++;
	info->ot_iters += (uint32_t)res.iters;
	if (!(res.residual <= info->ot_residual))
		info->ot_residual = res.residual;
	for (uint32_t j = 0; j < n; j++) {
		const float *pl = p->A + (size_t)j * E;
		int32_t *sel = p->sel;
		float *w = p->selw;

		route_topk(pl, E, k, sel);
		if (plan_weights) {
			double s = 0.0;

			for (int q = 0; q < k; q++)
				s += pl[sel[q]];
			for (int q = 0; q < k; q++)
				w[q] = s > 0.0 ? (float)(pl[sel[q]] / s) :
				    1.0f / (float)k;
		} else {
			gate_weights(p->G + (size_t)j * E, E, sel, k,
			    c->renorm, w);
		}
		for (int q = 0; q < k; q++)
			if ((rc = pairs_push(p, (uint32_t)tok[j], sel[q],
			    w[q])) != 0)
				return rc;
	}
	return 0;
}

/* ssr: should this (step, layer) run OT?  Fills p->sel/selw with plain
 * top-k of every token when the decision needs it (lambda schedule). */
static int
ssr_decide(struct route_policy *p, int layer, uint64_t step, const float *S,
    uint32_t T, struct route_info *info, int *have_topk)
{
	const struct route_cfg *c = &p->cfg;
	const uint16_t *wk = p->worker + (size_t)layer * p->E;
	uint32_t *wload = p->wload, wmax = 0;
	double mean;
	int k = c->k;

	*have_topk = 0;
	if (c->sched == ROUTE_SSR_P) {
		uint64_t h = rng_mix64(c->seed ^ rng_mix64(step ^ rng_mix64((uint64_t)layer)));
		double uval = (double)(h >> 11) * (1.0 / 9007199254740992.0);

		return uval < (double)c->p;
	}
	if (!(c->lambda > 0.0f))
		return 1;
	topk_all(p, S, T, k, c->renorm, &info->n_nonfinite);
	*have_topk = 1;
	memset(wload, 0, (size_t)p->n_workers * sizeof(*wload));
	for (size_t i = 0; i < (size_t)T * k; i++)
		wload[wk[p->sel[i]]]++;
	for (int w = 0; w < p->n_workers; w++)
		if (wload[w] > wmax)
			wmax = wload[w];
	mean = (double)T * k / p->n_workers;
	info->worker_ratio = mean > 0.0 ? (float)(wmax / mean) : 0.0f;
	return wmax > c->lambda * mean;
}

/* ---- route_run ---------------------------------------------------------- */

/* Builds CSR from p->pairs (stable: a token's pairs keep their order). */
static int
assemble(struct route_policy *p, uint32_t T, struct route_out *o)
{
	if (out_reserve(o, T, (uint32_t)p->E, p->n_pairs))
		return EPMOE_ENOMEM;
	memset(o->off, 0, ((size_t)T + 1) * sizeof(uint32_t));
	for (size_t i = 0; i < p->n_pairs; i++)
		o->off[p->pairs[i].tok + 1]++;
	for (uint32_t t = 0; t < T; t++)
		o->off[t + 1] += o->off[t];
	memcpy(p->cursor, o->off, (size_t)T * sizeof(uint32_t));
	for (size_t i = 0; i < p->n_pairs; i++) {
		uint32_t at = p->cursor[p->pairs[i].tok]++;

		o->expert[at] = p->pairs[i].e;
		o->weight[at] = p->pairs[i].w;
	}
	return 0;
}

static void
native_run(struct route_policy *p, const float *S, uint32_t T,
    struct route_out *o, uint32_t *nf)
{
	int E = p->E, k = p->cfg.k, renorm = p->cfg.renorm;

	for (uint32_t t = 0; t < T; t++) {
		const float *x = clean_row(S + (size_t)t * E, E, p->row, nf);
		int32_t *sel = o->expert + (size_t)t * k;

		route_topk(x, E, k, sel);
		gate_weights(x, E, sel, k, renorm, o->weight + (size_t)t * k);
		o->off[t] = t * (uint32_t)k;
	}
	o->off[T] = T * (uint32_t)k;
}

static void
lossfree_run(struct route_policy *p, int layer, const float *S, uint32_t T,
    struct route_out *o, uint32_t *nf)
{
	int E = p->E, k = p->cfg.k;
	float *b = p->bias + (size_t)layer * E;
	float *q = p->row;   /* s + b */
	float *s = p->srow;  /* scores */
	float mean;

	for (uint32_t t = 0; t < T; t++) {
		const float *x = clean_row(S + (size_t)t * E, E, p->row, nf);
		int32_t *sel = o->expert + (size_t)t * k;
		float *w = o->weight + (size_t)t * k;
		double sum = 0.0;

		if (p->cfg.score == ROUTE_SCORE_SOFTMAX)
			softmax_row(x, E, s);
		else
			for (int e = 0; e < E; e++)
				s[e] = fmath_sigmoid(x[e]);
		/* x may alias q (p->row) from here on: s is complete. */
		for (int e = 0; e < E; e++)
			q[e] = s[e] + b[e];
		route_topk(q, E, k, sel);
		for (int j = 0; j < k; j++)
			sum += s[sel[j]];
		for (int j = 0; j < k; j++)
			w[j] = p->cfg.renorm && sum > 0.0 ?
			    (float)(s[sel[j]] / sum) : s[sel[j]];
		o->off[t] = t * (uint32_t)k;
	}
	o->off[T] = T * (uint32_t)k;
	if (T == 0)
		return;
	/* Select with the old bias, then update (§2.2). */
	memset(p->ecnt, 0, (size_t)E * sizeof(uint32_t));
	for (size_t i = 0; i < (size_t)T * k; i++)
		p->ecnt[o->expert[i]]++;
	mean = (float)T * (float)k / (float)E;
	for (int e = 0; e < E; e++) {
		float d = mean - (float)p->ecnt[e];

		b[e] += p->cfg.u * (float)((d > 0.0f) - (d < 0.0f));
	}
}

int
route_run(struct route_policy *p, int layer, uint64_t step, const float *S,
    uint32_t T, const struct route_group *groups, int n_groups,
    struct route_out *out, struct route_info *info)
{
	struct route_info in;
	const struct route_cfg *c;
	int rc = 0, k, E, ot = 0, have_topk = 0;
	uint32_t mx = 0;

	if (p == NULL || out == NULL || layer < 0 || layer >= p->n_layers ||
	    (T > 0 && S == NULL) || T > (1u << 30) ||
	    (groups != NULL && check_groups(groups, n_groups, T) != 0))
		return EPMOE_EINVAL;
	c = &p->cfg;
	k = c->k;
	E = p->E;
	memset(&in, 0, sizeof(in));
	if ((rc = ensure(p, T)) != 0)
		return rc;
	p->n_pairs = 0;
	switch (c->kind) {
	case ROUTE_NATIVE:
	case ROUTE_TOPK:
		if (out_reserve(out, T, (uint32_t)E, (size_t)T * k))
			return EPMOE_ENOMEM;
		native_run(p, S, T, out, &in.n_nonfinite);
		break;
	case ROUTE_LOSSFREE:
		if (out_reserve(out, T, (uint32_t)E, (size_t)T * k))
			return EPMOE_ENOMEM;
		lossfree_run(p, layer, S, T, out, &in.n_nonfinite);
		break;
	case ROUTE_CAPACITY:
		topk_all(p, S, T, k, c->renorm, &in.n_nonfinite);
		memset(p->keep, 1, (size_t)T * k);
		if ((rc = for_each_group(p, S, T, groups, n_groups,
		    capacity_group, &in)) != 0)
			return rc;
		for (uint32_t t = 0; t < T; t++)
			for (int r = 0; r < k; r++) {
				size_t i = (size_t)t * k + r;

				if (p->keep[i] && (rc = pairs_push(p, t,
				    p->sel[i], p->selw[i])) != 0)
					return rc;
			}
		rc = assemble(p, T, out);
		break;
	case ROUTE_EXPERT_CHOICE:
		if ((rc = for_each_group(p, S, T, groups, n_groups,
		    expert_choice_group, &in)) == 0)
			rc = assemble(p, T, out);
		break;
	case ROUTE_USMOE:
		if ((rc = for_each_group(p, S, T, groups, n_groups,
		    usmoe_group, &in)) == 0)
			rc = assemble(p, T, out);
		break;
	case ROUTE_SSR:
		if (T > 0) {
			ot = ssr_decide(p, layer, step, S, T, &in, &have_topk);
			if (ot < 0)
				return ot;
		}
		if (!ot) {
			/* plain top-k (SSR at inference, §5.4) */
			if (!have_topk)
				topk_all(p, S, T, k, c->renorm,
				    &in.n_nonfinite);
			if (out_reserve(out, T, (uint32_t)E, (size_t)T * k))
				return EPMOE_ENOMEM;
			emit_fixed_k(p, T, k, out);
			break;
		}
		/* The non-finite count comes from the OT pass alone. */
		in.n_nonfinite = 0;
		/* FALLTHROUGH */
	case ROUTE_SINKHORN:
		if ((rc = for_each_group(p, S, T, groups, n_groups, ot_group,
		    &in)) == 0)
			rc = assemble(p, T, out);
		break;
	default:
		return EPMOE_EINVAL;
	}
	if (rc != 0)
		return rc;
	/* balance metrics */
	memset(out->load, 0, (size_t)E * sizeof(uint32_t));
	in.n_pairs = out->off[T];
	for (uint32_t i = 0; i < in.n_pairs; i++)
		out->load[out->expert[i]]++;
	for (int e = 0; e < E; e++)
		if (out->load[e] > mx)
			mx = out->load[e];
	if (in.n_pairs > 0) {
		double mean = (double)in.n_pairs / E;

		in.maxvio = (float)((mx - mean) / mean);
	}
	in.experts_per_token = T ? (float)in.n_pairs / (float)T : 0.0f;
	in.load = out->load;
	p->st.calls++;
	p->st.ot_calls += in.ot_ran ? 1 : 0;
	p->st.ot_groups += in.ot_groups;
	p->st.ot_iters += in.ot_iters;
	p->st.nonfinite += in.n_nonfinite;
	p->st.dropped += in.n_dropped;
	p->st.pairs += in.n_pairs;
	if (info != NULL)
		*info = in;
	return 0;
}
