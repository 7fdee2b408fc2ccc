/* The token -> expert affinity model: tables, predictions and their hit
 * rates, expert grouping, file I/O (affinity.h).  It never changes a
 * routing decision and never touches sockets. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "affinity.h"
#include "err.h"

#define AFF_MAGIC "EPMOEAF1"

struct aff_row {
	int32_t owner;                 /* token id, -1 = free */
	uint16_t e[AFF_SLOTS];
	uint16_t c[AFF_SLOTS];         /* 0 = empty slot */
};

struct affinity {
	uint32_t L, E, V, R;           /* layers, experts, vocab, rows per layer */
	struct aff_row *rows;          /* [L][R] */
	uint32_t *coact;               /* [L][E][E] */
	uint32_t *trans;               /* [L][E][E]: layer l -> l + 1 */
	uint64_t *load;                /* [L][E] */
	int learning, predicting;

	/* scored placements */
	int32_t *map[AFF_MAX_MAPS];    /* [L][E] or NULL */
	uint32_t map_w[AFF_MAX_MAPS];

	/* the current step */
	const int32_t *tok;
	uint32_t T, cap_T;
	uint8_t *prev_n;               /* [T] experts at the previous layer */
	int16_t *prev_e;               /* [T][AFF_MAX_K] */
	int prev_layer;                /* layer prev_* belong to, -1 = none */
	uint8_t *pred_n;               /* [AFF_N_PRED][T] */
	int16_t *pred_e;               /* [AFF_N_PRED][T][AFF_MAX_K] */
	int pred_layer;
	float *score;                  /* [E] scratch */
	uint8_t *mark;                 /* [max(E, W)] scratch */

	pthread_mutex_t mu;            /* guards stats and table reads by others */
	struct aff_layer_stats *st;    /* [L] */
};

static inline uint32_t
sat_add(uint32_t a, uint32_t b)
{
	return a > UINT32_MAX - b ? UINT32_MAX : a + b;
}

int
affinity_new(struct affinity **out, uint32_t n_layer, uint32_t n_expert,
        uint32_t n_vocab, uint32_t max_rows)
{
	struct affinity *a;

	if (n_layer == 0 || n_expert == 0 || n_vocab == 0 || n_expert > 4096 ||
	        n_layer > 4096)
		return EPMOE_EINVAL;
	if ((a = calloc(1, sizeof(*a))) == NULL)
		return EPMOE_ENOMEM;
	a->L = n_layer;
	a->E = n_expert;
	a->V = n_vocab;
	a->R = max_rows ? max_rows : AFF_DEFAULT_ROWS;
	if (a->R > n_vocab)
		a->R = n_vocab;
	a->learning = a->predicting = 1;
	a->prev_layer = a->pred_layer = -1;
	a->rows = malloc((size_t)a->L * a->R * sizeof(*a->rows));
	a->coact = calloc((size_t)a->L * a->E * a->E, sizeof(uint32_t));
	a->trans = calloc((size_t)a->L * a->E * a->E, sizeof(uint32_t));
	a->load = calloc((size_t)a->L * a->E, sizeof(uint64_t));
	a->st = calloc(a->L, sizeof(*a->st));
	a->score = malloc(a->E * sizeof(float));
	a->mark = malloc(a->E > 1024 ? a->E : 1024);
	if (!a->rows || !a->coact || !a->trans || !a->load || !a->st || !a->score ||
	        !a->mark || pthread_mutex_init(&a->mu, NULL) != 0) {
		free(a->rows);
		free(a->coact);
		free(a->trans);
		free(a->load);
		free(a->st);
		free(a->score);
		free(a->mark);
		free(a);
		return EPMOE_ENOMEM;
	}
	for (size_t i = 0; i < (size_t)a->L * a->R; i++) {
		memset(&a->rows[i], 0, sizeof(a->rows[i]));
		a->rows[i].owner = -1;
	}
	*out = a;
	return 0;
}

void
affinity_free(struct affinity *a)
{
	if (a == NULL)
		return;
	for (int i = 0; i < AFF_MAX_MAPS; i++)
		free(a->map[i]);
	free(a->rows);
	free(a->coact);
	free(a->trans);
	free(a->load);
	free(a->st);
	free(a->score);
	free(a->mark);
	free(a->prev_n);
	free(a->prev_e);
	free(a->pred_n);
	free(a->pred_e);
	pthread_mutex_destroy(&a->mu);
	free(a);
}

size_t
affinity_bytes(const struct affinity *a)
{
	return (size_t)a->L * a->R * sizeof(struct aff_row) +
	       2 * (size_t)a->L * a->E * a->E * sizeof(uint32_t) +
	       (size_t)a->L * a->E * sizeof(uint64_t);
}

uint32_t affinity_n_layer(const struct affinity *a) { return a->L; }
uint32_t affinity_n_expert(const struct affinity *a) { return a->E; }
void affinity_set_learning(struct affinity *a, int on) { a->learning = on; }
void affinity_set_predicting(struct affinity *a, int on) { a->predicting = on; }

int
affinity_set_map(struct affinity *a, int idx, const int32_t *worker_of,
        uint32_t n_worker)
{
	int32_t *m = NULL;

	if (idx < 0 || idx >= AFF_MAX_MAPS || n_worker > 1024)
		return EPMOE_EINVAL;
	if (worker_of) {
		for (size_t i = 0; i < (size_t)a->L * a->E; i++)
			if (worker_of[i] < 0 || (uint32_t)worker_of[i] >= n_worker)
				return EPMOE_EINVAL;
		if ((m = malloc((size_t)a->L * a->E * sizeof(*m))) == NULL)
			return EPMOE_ENOMEM;
		memcpy(m, worker_of, (size_t)a->L * a->E * sizeof(*m));
	}
	pthread_mutex_lock(&a->mu);
	free(a->map[idx]);
	a->map[idx] = m;
	a->map_w[idx] = n_worker;
	pthread_mutex_unlock(&a->mu);
	return 0;
}

/* ---- token rows ---- */

static struct aff_row *
row_of(const struct affinity *a, uint32_t layer, int32_t tok)
{
	return &a->rows[(size_t)layer * a->R + (uint32_t)tok % a->R];
}

/* Misra-Gries update of tok's row with expert e. */
static void
row_learn(struct aff_row *r, int32_t tok, uint16_t e)
{
	int free_slot = -1;

	if (r->owner != tok) {
		/* another token holds the row: decay it; take the row once empty */
		int live = 0;
		for (int i = 0; i < AFF_SLOTS; i++) {
			if (r->c[i])
				r->c[i]--;
			live |= r->c[i] != 0;
		}
		if (live && r->owner >= 0)
			return;
		memset(r, 0, sizeof(*r));
		r->owner = tok;
	}
	for (int i = 0; i < AFF_SLOTS; i++) {
		if (r->c[i] && r->e[i] == e) {
			if (r->c[i] < UINT16_MAX)
				r->c[i]++;
			return;
		}
		if (r->c[i] == 0 && free_slot < 0)
			free_slot = i;
	}
	if (free_slot >= 0) {
		r->e[free_slot] = e;
		r->c[free_slot] = 1;
		return;
	}
	for (int i = 0; i < AFF_SLOTS; i++)
		r->c[i]--;
}

uint32_t
affinity_token_top(const struct affinity *a, uint32_t layer, int32_t tok,
        int32_t *out, uint32_t cap)
{
	const struct aff_row *r;
	uint8_t used[AFF_SLOTS] = { 0 };
	uint32_t n = 0;

	if (layer >= a->L || tok < 0 || (uint32_t)tok >= a->V)
		return 0;
	r = row_of(a, layer, tok);
	if (r->owner != tok)
		return 0;
	while (n < cap && n < AFF_SLOTS) {
		int best = -1;
		for (int i = 0; i < AFF_SLOTS; i++)
			if (!used[i] && r->c[i] &&
			        (best < 0 || r->c[i] > r->c[best] ||
			         (r->c[i] == r->c[best] && r->e[i] < r->e[best])))
				best = i;
		if (best < 0)
			break;
		used[best] = 1;
		out[n++] = r->e[best];
	}
	return n;
}

uint32_t
affinity_coact(const struct affinity *a, uint32_t layer, uint32_t e, uint32_t f)
{
	if (layer >= a->L || e >= a->E || f >= a->E)
		return 0;
	return a->coact[((size_t)layer * a->E + e) * a->E + f];
}

uint32_t
affinity_trans(const struct affinity *a, uint32_t layer, uint32_t e, uint32_t f)
{
	if (layer >= a->L || e >= a->E || f >= a->E)
		return 0;
	return a->trans[((size_t)layer * a->E + e) * a->E + f];
}

uint64_t
affinity_load(const struct affinity *a, uint32_t layer, uint32_t e)
{
	if (layer >= a->L || e >= a->E)
		return 0;
	return a->load[(size_t)layer * a->E + e];
}

/* ---- the step ---- */

int
affinity_step(struct affinity *a, const int32_t *tok, uint32_t n_rows)
{
	if (n_rows > a->cap_T) {
		uint32_t c = n_rows < 64 ? 64 : n_rows;
		uint8_t *pn = realloc(a->prev_n, c);
		if (pn == NULL)
			return EPMOE_ENOMEM;
		a->prev_n = pn;
		int16_t *pe = realloc(a->prev_e, (size_t)c * AFF_MAX_K * sizeof(int16_t));
		if (pe == NULL)
			return EPMOE_ENOMEM;
		a->prev_e = pe;
		uint8_t *qn = realloc(a->pred_n, (size_t)AFF_N_PRED * c);
		if (qn == NULL)
			return EPMOE_ENOMEM;
		a->pred_n = qn;
		int16_t *qe = realloc(a->pred_e, (size_t)AFF_N_PRED * c * AFF_MAX_K * sizeof(int16_t));
		if (qe == NULL)
			return EPMOE_ENOMEM;
		a->pred_e = qe;
		a->cap_T = c;
	}
	a->tok = tok;
	a->T = n_rows;
	a->prev_layer = a->pred_layer = -1;
	return 0;
}

/* The k best experts by a->score (score > 0), best first, ties to the
 * lower index. */
static uint32_t
top_by_score(struct affinity *a, uint32_t k, int16_t *out)
{
	uint32_t n = 0;

	memset(a->mark, 0, a->E);
	while (n < k) {
		int best = -1;
		for (uint32_t e = 0; e < a->E; e++)
			if (!a->mark[e] && a->score[e] > 0.0f &&
			        (best < 0 || a->score[e] > a->score[best]))
				best = (int)e;
		if (best < 0)
			break;
		a->mark[best] = 1;
		out[n++] = (int16_t)best;
	}
	return n;
}

/* a->score = the token's usual experts at layer (shares of its row's
 * counters; all zero for an unseen token). */
static void
score_token(struct affinity *a, uint32_t layer, int32_t tok)
{
	const struct aff_row *r = NULL;
	float tot = 0.0f;

	memset(a->score, 0, a->E * sizeof(float));
	if (tok >= 0 && (uint32_t)tok < a->V) {
		r = row_of(a, layer, tok);
		if (r->owner != tok)
			r = NULL;
	}
	if (r == NULL)
		return;
	for (int i = 0; i < AFF_SLOTS; i++)
		tot += r->c[i];
	for (int i = 0; i < AFF_SLOTS; i++)
		if (r->c[i])
			a->score[r->e[i]] = (float)r->c[i] / tot;
}

/* a->score += the transitions from experts pe[0..n) at layer - 1 to
 * layer, each normalised and weighted 1/n. */
static void
score_trans(struct affinity *a, uint32_t layer, const int32_t *pe, uint32_t n)
{
	uint32_t E = a->E;

	for (uint32_t i = 0; i < n; i++) {
		const uint32_t *tr;
		double sum = 0.0;
		if (pe[i] < 0 || (uint32_t)pe[i] >= E)
			continue;
		tr = &a->trans[((size_t)(layer - 1) * E + (uint32_t)pe[i]) * E];
		for (uint32_t f = 0; f < E; f++)
			sum += tr[f];
		if (sum <= 0.0)
			continue;
		for (uint32_t f = 0; f < E; f++)
			a->score[f] += (float)(tr[f] / sum / n);
	}
}

void
affinity_predict(struct affinity *a, uint32_t layer, uint32_t k)
{
	uint32_t T = a->T;

	if (!a->predicting || layer >= a->L || a->tok == NULL)
		return;
	if (k > AFF_MAX_K)
		k = AFF_MAX_K;
	for (uint32_t t = 0; t < T; t++) {
		uint8_t *n0 = &a->pred_n[t], *n1 = &a->pred_n[T + t];
		int16_t *p0 = &a->pred_e[(size_t)t * AFF_MAX_K];
		int16_t *p1 = &a->pred_e[((size_t)T + t) * AFF_MAX_K];

		score_token(a, layer, a->tok[t]);
		*n0 = (uint8_t)top_by_score(a, k, p0);
		/* + the transitions from the row's experts at layer - 1 */
		if (layer > 0 && a->prev_layer == (int)layer - 1 && a->prev_n[t]) {
			int32_t pe[AFF_MAX_K];
			for (uint32_t i = 0; i < a->prev_n[t]; i++)
				pe[i] = a->prev_e[(size_t)t * AFF_MAX_K + i];
			score_trans(a, layer, pe, a->prev_n[t]);
		}
		*n1 = (uint8_t)top_by_score(a, k, p1);
	}
	a->pred_layer = (int)layer;
}

uint32_t
affinity_next(struct affinity *a, uint32_t layer, const struct moe_assign *asg,
        uint32_t row0, uint32_t k, uint8_t *mask)
{
	uint32_t n = 0;
	int16_t top[AFF_MAX_K];

	memset(mask, 0, a->E);
	if (layer + 1 >= a->L || a->tok == NULL || row0 > a->T ||
	        asg->n_tok > a->T - row0)
		return 0;
	if (k > AFF_MAX_K)
		k = AFF_MAX_K;
	for (uint32_t t = 0; t < asg->n_tok; t++) {
		uint32_t lo = asg->off[t], m = asg->off[t + 1] - lo;
		score_token(a, layer + 1, a->tok[row0 + t]);
		score_trans(a, layer + 1, asg->expert + lo, m);
		m = top_by_score(a, k, top);
		for (uint32_t i = 0; i < m; i++) {
			n += !mask[top[i]];
			mask[top[i]] = 1;
		}
	}
	return n;
}

uint32_t
affinity_predicted(const struct affinity *a, uint32_t row, enum aff_pred which,
        int32_t *out, uint32_t cap)
{
	uint32_t n;

	if (row >= a->T || a->pred_layer < 0 || (int)which < 0 || which >= AFF_N_PRED)
		return 0;
	n = a->pred_n[(size_t)which * a->T + row];
	if (n > cap)
		n = cap;
	for (uint32_t i = 0; i < n; i++)
		out[i] = a->pred_e[((size_t)which * a->T + row) * AFF_MAX_K + i];
	return n;
}

void
affinity_observe(struct affinity *a, uint32_t layer, const struct moe_assign *asg)
{
	uint32_t T = asg->n_tok, E = a->E;
	struct aff_layer_stats d = { 0 };
	int scored = a->pred_layer == (int)layer && T == a->T;
	int has_prev = layer > 0 && a->prev_layer == (int)layer - 1 && T == a->T;

	if (layer >= a->L || T != a->T || a->tok == NULL)
		return;
	pthread_mutex_lock(&a->mu);
	for (int m = 0; m < AFF_MAX_MAPS; m++) {
		const int32_t *wm;
		if ((wm = a->map[m]) == NULL)
			continue;
		wm += (size_t)layer * E;
		memset(a->mark, 0, a->map_w[m]);
		for (uint32_t t = 0; t < T; t++)
			for (uint32_t i = asg->off[t]; i < asg->off[t + 1]; i++) {
				int32_t w = wm[asg->expert[i]], dup = 0;
				for (uint32_t j = asg->off[t]; j < i; j++)
					dup |= wm[asg->expert[j]] == w;
				d.tok_workers[m] += !dup;
				if (!a->mark[w]) {
					a->mark[w] = 1;
					d.step_workers[m]++;
				}
			}
	}
	for (uint32_t t = 0; t < T; t++) {
		uint32_t lo = asg->off[t], hi = asg->off[t + 1];
		int32_t tok = a->tok[t];
		uint8_t *pn = &a->prev_n[t];
		int16_t *pe = &a->prev_e[(size_t)t * AFF_MAX_K];

		d.pairs += hi - lo;
		if (scored)
			for (int p = 0; p < AFF_N_PRED; p++) {
				const int16_t *q = &a->pred_e[((size_t)p * T + t) * AFF_MAX_K];
				uint32_t nq = a->pred_n[(size_t)p * T + t];
				for (uint32_t i = lo; i < hi; i++)
					for (uint32_t j = 0; j < nq; j++)
						if (q[j] == asg->expert[i]) {
							d.hits[p]++;
							break;
						}
			}
		if (a->learning) {
			for (uint32_t i = lo; i < hi; i++) {
				uint32_t e = (uint32_t)asg->expert[i];
				if (e >= E)
					continue;
				a->load[(size_t)layer * E + e]++;
				if (tok >= 0 && (uint32_t)tok < a->V)
					row_learn(row_of(a, layer, tok), tok, (uint16_t)e);
				for (uint32_t j = lo; j < hi; j++) {
					uint32_t f = (uint32_t)asg->expert[j];
					if (j != i && f < E) {
						uint32_t *c = &a->coact[((size_t)layer * E + e) * E + f];
						*c = sat_add(*c, 1);
					}
				}
				if (has_prev)
					for (uint32_t j = 0; j < *pn; j++) {
						uint32_t *c = &a->trans[((size_t)(layer - 1) * E +
						        (uint32_t)pe[j]) * E + e];
						*c = sat_add(*c, 1);
					}
			}
		}
		/* the row's experts become the previous layer's */
		*pn = 0;
		for (uint32_t i = lo; i < hi && *pn < AFF_MAX_K; i++)
			if ((uint32_t)asg->expert[i] < E)
				pe[(*pn)++] = (int16_t)asg->expert[i];
	}
	d.rows = T;
	d.steps = 1;
	{
		struct aff_layer_stats *s = &a->st[layer];
		s->pairs += d.pairs;
		s->rows += d.rows;
		s->steps += d.steps;
		if (scored)
			for (int p = 0; p < AFF_N_PRED; p++)
				s->hits[p] += d.hits[p];
		for (int m = 0; m < AFF_MAX_MAPS; m++) {
			s->tok_workers[m] += d.tok_workers[m];
			s->step_workers[m] += d.step_workers[m];
		}
	}
	pthread_mutex_unlock(&a->mu);
	a->prev_layer = (int)layer;
	a->pred_layer = -1;
}

void
affinity_hits(struct affinity *a, uint32_t layer, struct aff_layer_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (layer >= a->L)
		return;
	pthread_mutex_lock(&a->mu);
	*out = a->st[layer];
	pthread_mutex_unlock(&a->mu);
}

void
affinity_stats_reset(struct affinity *a)
{
	pthread_mutex_lock(&a->mu);
	memset(a->st, 0, a->L * sizeof(*a->st));
	pthread_mutex_unlock(&a->mu);
}

/* ---- grouping ---- */

/* Co-activation of e with the experts of worker w (symmetric counts). */
static uint64_t
gain_with(const struct affinity *a, const uint32_t *C, const int32_t *wo,
        uint32_t e, int32_t w, uint32_t skip)
{
	uint64_t g = 0;
	for (uint32_t f = 0; f < a->E; f++)
		if (f != e && f != skip && wo[f] == w)
			g += (uint64_t)C[(size_t)e * a->E + f] + C[(size_t)f * a->E + e];
	return g;
}

/* Local search: swaps two experts of different workers while that adds
 * co-activation within workers and keeps the load bound. */
static void
group_improve(const struct affinity *a, const uint32_t *C, const uint64_t *ld,
        int32_t *wo, uint64_t *wload, double bound)
{
	uint32_t E = a->E;

	for (int pass = 0; pass < 8; pass++) {
		int improved = 0;
		for (uint32_t e = 0; e < E; e++)
			for (uint32_t f = e + 1; f < E; f++) {
				int32_t we = wo[e], wf = wo[f];
				int64_t delta;
				if (we == wf)
					continue;
				delta = (int64_t)gain_with(a, C, wo, e, wf, f) +
				        (int64_t)gain_with(a, C, wo, f, we, e) -
				        (int64_t)gain_with(a, C, wo, e, we, e) -
				        (int64_t)gain_with(a, C, wo, f, wf, f);
				if (delta <= 0)
					continue;
				if ((double)(wload[we] - ld[e] + ld[f]) > bound &&
				        ld[f] > ld[e])
					continue;
				if ((double)(wload[wf] - ld[f] + ld[e]) > bound &&
				        ld[e] > ld[f])
					continue;
				wload[we] += ld[f] - ld[e];
				wload[wf] += ld[e] - ld[f];
				wo[e] = wf;
				wo[f] = we;
				improved = 1;
			}
		if (!improved)
			break;
	}
}

int
affinity_group(const struct affinity *a, uint32_t n_worker, double slack,
        int32_t *worker_of)
{
	uint32_t E = a->E, W = n_worker;
	uint32_t cap_n;
	uint32_t *order = NULL, *cnt = NULL;
	uint64_t *wload = NULL;
	int rc = 0;

	if (W == 0 || W > E || W > 1024)
		return EPMOE_EINVAL;
	if (slack < 0.0)
		slack = 0.0;
	cap_n = (E + W - 1) / W;
	order = malloc(E * sizeof(*order));
	cnt = malloc(W * sizeof(*cnt));
	wload = malloc(W * sizeof(*wload));
	if (!order || !cnt || !wload) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	for (uint32_t l = 0; l < a->L; l++) {
		const uint64_t *ld = &a->load[(size_t)l * E];
		const uint32_t *C = &a->coact[(size_t)l * E * E];
		int32_t *wo = &worker_of[(size_t)l * E];
		uint64_t total = 0;
		double bound;

		for (uint32_t e = 0; e < E; e++) {
			order[e] = e;
			total += ld[e];
			wo[e] = -1;
		}
		bound = (1.0 + slack) * (double)total / W;
		/* heaviest first (insertion sort: E is small) */
		for (uint32_t i = 1; i < E; i++)
			for (uint32_t j = i; j > 0 && ld[order[j]] > ld[order[j - 1]]; j--) {
				uint32_t x = order[j];
				order[j] = order[j - 1];
				order[j - 1] = x;
			}
		memset(cnt, 0, W * sizeof(*cnt));
		memset(wload, 0, W * sizeof(*wload));
		/* greedy: each expert to the worker it co-activates most with,
		 * within both bounds; an unseen pattern goes to the least loaded */
		for (uint32_t i = 0; i < E; i++) {
			uint32_t e = order[i];
			int32_t best = -1, fallback = -1;
			uint64_t bg = 0;
			for (uint32_t w = 0; w < W; w++) {
				if (cnt[w] >= cap_n)
					continue;
				if (fallback < 0 || wload[w] < wload[fallback] ||
				        (wload[w] == wload[fallback] && cnt[w] < cnt[fallback]))
					fallback = (int32_t)w;
				if ((double)(wload[w] + ld[e]) > bound && wload[w] > 0)
					continue;
				uint64_t g = gain_with(a, C, wo, e, (int32_t)w, E);
				if (g > bg || (g == bg && best >= 0 && g > 0 &&
				        wload[w] < wload[best])) {
					bg = g;
					best = (int32_t)w;
				}
			}
			if (best < 0 || bg == 0)
				best = fallback;
			wo[e] = best;
			cnt[best]++;
			wload[best] += ld[e];
		}
		group_improve(a, C, ld, wo, wload, bound);
		/* the same search from contiguous blocks; keep the better */
		{
			int32_t *alt = (int32_t *)order; /* order is free by now */
			uint64_t s_g = 0, s_c = 0;
			memset(wload, 0, W * sizeof(*wload));
			for (uint32_t e = 0; e < E; e++) {
				alt[e] = (int32_t)((uint64_t)e * W / E);
				wload[alt[e]] += ld[e];
			}
			group_improve(a, C, ld, alt, wload, bound);
			for (uint32_t e = 0; e < E; e++)
				for (uint32_t f = 0; f < E; f++)
					if (e != f) {
						s_g += wo[e] == wo[f] ? C[(size_t)e * E + f] : 0;
						s_c += alt[e] == alt[f] ? C[(size_t)e * E + f] : 0;
					}
			if (s_c > s_g)
				memcpy(wo, alt, E * sizeof(*wo));
		}
	}
out:
	free(order);
	free(cnt);
	free(wload);
	return rc;
}

uint64_t
affinity_group_score(const struct affinity *a, const int32_t *worker_of)
{
	uint64_t s = 0;
	for (uint32_t l = 0; l < a->L; l++)
		for (uint32_t e = 0; e < a->E; e++)
			for (uint32_t f = 0; f < a->E; f++)
				if (e != f && worker_of[(size_t)l * a->E + e] ==
				        worker_of[(size_t)l * a->E + f])
					s += a->coact[((size_t)l * a->E + e) * a->E + f];
	return s;
}

/* ---- files ---- */

struct aff_hdr {
	char magic[8];
	uint32_t L, E, V, R, slots, pad;
};

int
affinity_save(struct affinity *a, const char *path, char *err, size_t err_len)
{
	struct aff_hdr h = { .L = a->L, .E = a->E, .V = a->V, .R = a->R, .slots = AFF_SLOTS };
	char tmp[4096];
	FILE *f;
	int ok;

	memcpy(h.magic, AFF_MAGIC, 8);
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		snprintf(err, err_len, "affinity file name too long");
		return EPMOE_EINVAL;
	}
	if ((f = fopen(tmp, "wb")) == NULL) {
		snprintf(err, err_len, "cannot write %s: %s", tmp, strerror(errno));
		return EPMOE_EIO;
	}
	pthread_mutex_lock(&a->mu);
	ok = fwrite(&h, sizeof(h), 1, f) == 1 &&
	     fwrite(a->rows, sizeof(*a->rows), (size_t)a->L * a->R, f) == (size_t)a->L * a->R &&
	     fwrite(a->coact, sizeof(uint32_t), (size_t)a->L * a->E * a->E, f) == (size_t)a->L * a->E * a->E &&
	     fwrite(a->trans, sizeof(uint32_t), (size_t)a->L * a->E * a->E, f) == (size_t)a->L * a->E * a->E &&
	     fwrite(a->load, sizeof(uint64_t), (size_t)a->L * a->E, f) == (size_t)a->L * a->E;
	pthread_mutex_unlock(&a->mu);
	if (fclose(f) != 0)
		ok = 0;
	if (!ok || rename(tmp, path) != 0) {
		snprintf(err, err_len, "cannot write %s: %s", path, strerror(errno));
		remove(tmp);
		return EPMOE_EIO;
	}
	return 0;
}

int
affinity_load_file(struct affinity **out, const char *path, uint32_t n_layer,
        uint32_t n_expert, uint32_t n_vocab, char *err, size_t err_len)
{
	struct aff_hdr h;
	struct affinity *a = NULL;
	FILE *f;
	int rc;
	long end;
	size_t want;

	if ((f = fopen(path, "rb")) == NULL) {
		snprintf(err, err_len, "cannot open affinity file %s: %s", path, strerror(errno));
		return EPMOE_EIO;
	}
	if (fread(&h, sizeof(h), 1, f) != 1 || memcmp(h.magic, AFF_MAGIC, 8) != 0) {
		snprintf(err, err_len, "%s: not an epmoe affinity file", path);
		rc = EPMOE_EFORMAT;
		goto out;
	}
	if (h.L != n_layer || h.E != n_expert || h.V != n_vocab || h.slots != AFF_SLOTS ||
	        h.R == 0 || h.R > n_vocab) {
		snprintf(err, err_len, "%s: made for %u layers, %u experts, %u tokens; the model has "
		        "%u, %u, %u", path, h.L, h.E, h.V, n_layer, n_expert, n_vocab);
		rc = EPMOE_EFORMAT;
		goto out;
	}
	want = sizeof(h) + (size_t)h.L * h.R * sizeof(struct aff_row) +
	       2 * (size_t)h.L * h.E * h.E * sizeof(uint32_t) + (size_t)h.L * h.E * sizeof(uint64_t);
	if (fseek(f, 0, SEEK_END) != 0 || (end = ftell(f)) < 0 || (size_t)end != want ||
	        fseek(f, (long)sizeof(h), SEEK_SET) != 0) {
		snprintf(err, err_len, "%s: truncated or oversized affinity file", path);
		rc = EPMOE_EFORMAT;
		goto out;
	}
	if ((rc = affinity_new(&a, h.L, h.E, h.V, h.R)) != 0) {
		snprintf(err, err_len, "out of memory for the affinity model");
		goto out;
	}
	if (fread(a->rows, sizeof(*a->rows), (size_t)a->L * a->R, f) != (size_t)a->L * a->R ||
	        fread(a->coact, sizeof(uint32_t), (size_t)a->L * a->E * a->E, f) != (size_t)a->L * a->E * a->E ||
	        fread(a->trans, sizeof(uint32_t), (size_t)a->L * a->E * a->E, f) != (size_t)a->L * a->E * a->E ||
	        fread(a->load, sizeof(uint64_t), (size_t)a->L * a->E, f) != (size_t)a->L * a->E) {
		snprintf(err, err_len, "%s: read error", path);
		rc = EPMOE_EIO;
		goto out;
	}
	/* a row's experts must be valid indices */
	for (size_t i = 0; i < (size_t)a->L * a->R; i++) {
		struct aff_row *r = &a->rows[i];
		if (r->owner < -1 || (r->owner >= 0 && (uint32_t)r->owner >= a->V))
			r->owner = -1;
		for (int s = 0; s < AFF_SLOTS; s++)
			if (r->e[s] >= a->E) {
				snprintf(err, err_len, "%s: expert index out of range", path);
				rc = EPMOE_EFORMAT;
				goto out;
			}
	}
	*out = a;
	a = NULL;
	rc = 0;
out:
	affinity_free(a);
	fclose(f);
	return rc;
}
