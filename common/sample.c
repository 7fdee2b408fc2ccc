/* Token sampling (order of the filters and costs in sample.h), the
 * xoshiro256** generator, log-probabilities and stop strings.
 *
 * The ranking "a before b" is: larger logit, then lower id.  It is a
 * strict total order over distinct ids, so selection and sorting give the
 * same candidates and the same draw whatever algorithm orders them.
 * Nothing here knows about tokenizers or requests.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "rng.h"
#include "sample.h"

/* Up to this k, top-k is one insertion pass rather than a quickselect. */
#define TOPK_INSERT 128

void
sample_params_default(struct sample_params *p)
{
	p->temperature = 1.0f;
	p->top_k = 0;
	p->top_p = 1.0f;
	p->min_p = 0.0f;
	p->seed = 0;
}

static uint64_t
rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman, Vigna, "Scrambled linear pseudorandom number
 * generators", 2018). */
static uint64_t
xoshiro_next(uint64_t s[4])
{
	uint64_t r = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double
rng_uniform(uint64_t s[4])
{
	return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

int
sampler_init(struct sampler *s, const struct sample_params *p)
{
	uint64_t x;

	if (p == NULL || !isfinite(p->temperature) || p->temperature < 0 ||
	    !(p->top_p > 0 && p->top_p <= 1) ||
	    !(p->min_p >= 0 && p->min_p <= 1) || p->top_k < 0)
		return EPMOE_EINVAL;
	memset(s, 0, sizeof(*s));
	s->p = *p;
	x = p->seed;
	for (int i = 0; i < 4; i++)
		s->rng[i] = rng_splitmix64(&x);
	return 0;
}

void
sampler_fini(struct sampler *s)
{
	if (s == NULL)
		return;
	free(s->idx);
	free(s->prob);
	s->idx = NULL;
	s->prob = NULL;
	s->cap = 0;
}

static int
grow(struct sampler *s, size_t n)
{
	uint32_t *idx;
	float *prob;

	if (n <= s->cap)
		return 0;
	if ((idx = realloc(s->idx, n * sizeof(*idx))) == NULL)
		return EPMOE_ENOMEM;
	s->idx = idx;
	if ((prob = realloc(s->prob, n * sizeof(*prob))) == NULL)
		return EPMOE_ENOMEM;
	s->prob = prob;
	s->cap = n;
	return 0;
}

static int
before(const float *l, uint32_t a, uint32_t b)
{
	return l[a] > l[b] || (l[a] == l[b] && a < b);
}

static int
cmp_rank(const void *pa, const void *pb, void *ctx)
{
	uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;

	if (a == b)
		return 0;
	return before(ctx, a, b) ? -1 : 1;
}

static void
sort_rank(uint32_t *idx, size_t n, const float *l)
{
	qsort_r(idx, n, sizeof(*idx), cmp_rank, (void *)l);
}

static void
swap_u32(uint32_t *a, uint32_t *b)
{
	uint32_t t = *a;

	*a = *b;
	*b = t;
}

/* Rearranges idx[0..n) so that idx[0..k) are the k best (in any order).
 * Quickselect with a median-of-three pivot; after 2 log2(n) rounds
 * without converging it sorts what is left, so the worst case is
 * O(n log n). */
static void
select_top(uint32_t *idx, size_t n, size_t k, const float *l)
{
	size_t lo = 0, hi = n;
	int budget = 8;

	if (k == 0 || k >= n)
		return;
	for (size_t m = n; m > 1; m >>= 1)
		budget += 2;
	while (hi - lo > 16) {
		size_t mid = lo + (hi - lo) / 2, store;
		uint32_t p;

		if (budget-- == 0) {
			sort_rank(idx + lo, hi - lo, l);
			return;
		}
		/* median of idx[lo], idx[mid], idx[hi-1] moved to hi-1 */
		if (before(l, idx[mid], idx[lo]))
			swap_u32(&idx[mid], &idx[lo]);
		if (before(l, idx[hi - 1], idx[lo]))
			swap_u32(&idx[hi - 1], &idx[lo]);
		if (before(l, idx[mid], idx[hi - 1]))
			swap_u32(&idx[mid], &idx[hi - 1]);
		p = idx[hi - 1];
		store = lo;
		for (size_t i = lo; i < hi - 1; i++)
			if (before(l, idx[i], p))
				swap_u32(&idx[i], &idx[store++]);
		swap_u32(&idx[store], &idx[hi - 1]);
		/* [lo, store) better than p, (store, hi) worse */
		if (k == store || k == store + 1)
			return;
		if (k < store)
			hi = store;
		else
			lo = store + 1;
	}
	/* insertion sort of the small rest */
	for (size_t i = lo + 1; i < hi; i++) {
		uint32_t v = idx[i];
		size_t j = i;

		while (j > lo && before(l, v, idx[j - 1])) {
			idx[j] = idx[j - 1];
			j--;
		}
		idx[j] = v;
	}
}

/* For small k: one pass keeping the k best seen so far in out[0..k),
 * sorted; most ids cost one comparison with the current k-th.  Skips NaN
 * and, with no_neg_inf, -inf.  Returns how many are in out. */
static size_t
top_insert(const float *l, size_t n, size_t k, uint32_t *out, int no_neg_inf)
{
	size_t have = 0;

	for (size_t i = 0; i < n; i++) {
		size_t j;

		if (have == k && !before(l, (uint32_t)i, out[k - 1]))
			continue;
		if (isnan(l[i]) || (no_neg_inf && l[i] == -INFINITY))
			continue;
		j = have < k ? have++ : k - 1;
		while (j > 0 && before(l, (uint32_t)i, out[j - 1])) {
			out[j] = out[j - 1];
			j--;
		}
		out[j] = (uint32_t)i;
	}
	return have;
}

size_t
sample_top_k(const float *logits, size_t n_vocab, size_t k, uint32_t *idx)
{
	size_t n = 0;

	if (logits == NULL || n_vocab > UINT32_MAX || k == 0)
		return 0;
	if (k <= TOPK_INSERT)
		return top_insert(logits, n_vocab, k, idx, 0);
	for (size_t i = 0; i < n_vocab; i++)
		if (!isnan(logits[i]))
			idx[n++] = (uint32_t)i;
	if (k > n)
		k = n;
	select_top(idx, n, k, logits);
	sort_rank(idx, k, logits);
	return k;
}

/* Lowest-id largest logit; NaN never wins.  -1 if all are NaN or -inf. */
static long
argmax(const float *l, size_t n)
{
	long best = -1;

	for (size_t i = 0; i < n; i++) {
		if (isnan(l[i]) || l[i] == -INFINITY)
			continue;
		if (best < 0 || l[i] > l[best])
			best = (long)i;
	}
	return best;
}

/* Rearranges the candidates idx[0..n) (weights w[id]) so that idx[0..m)
 * is the top-p nucleus: the shortest prefix in rank order whose mass
 * reaches want.  Returns m.  A quickselect that carries the mass of the
 * part known to be in the nucleus, so expected O(n) with no sort: the
 * nucleus can be most of a flat 150k vocabulary. */
static size_t
nucleus(uint32_t *idx, size_t n, const float *l, const float *w,
        double want)
{
	size_t lo = 0, hi = n;
	double acc = 0; /* mass of idx[0..lo), all in the nucleus */
	int budget = 8;

	for (size_t m = n; m > 1; m >>= 1)
		budget += 2;
	while (hi - lo > 16 && budget-- > 0) {
		size_t mid = lo + (hi - lo) / 2, store = lo;
		double better = 0;
		uint32_t p;

		if (before(l, idx[mid], idx[lo]))
			swap_u32(&idx[mid], &idx[lo]);
		if (before(l, idx[hi - 1], idx[lo]))
			swap_u32(&idx[hi - 1], &idx[lo]);
		if (before(l, idx[mid], idx[hi - 1]))
			swap_u32(&idx[mid], &idx[hi - 1]);
		p = idx[hi - 1];
		for (size_t i = lo; i < hi - 1; i++) {
			if (before(l, idx[i], p)) {
				better += w[idx[i]];
				swap_u32(&idx[i], &idx[store++]);
			}
		}
		swap_u32(&idx[store], &idx[hi - 1]);
		if (acc + better >= want) {
			hi = store; /* the nucleus ends before the pivot */
			continue;
		}
		acc += better + w[p];
		if (acc >= want)
			return store + 1;
		lo = store + 1;
	}
	sort_rank(idx + lo, hi - lo, l);
	for (size_t i = lo; i < hi; i++) {
		acc += w[idx[i]];
		if (acc >= want)
			return i + 1;
	}
	return hi; /* rounding: all that is left */
}

static int
cmp_u32(const void *pa, const void *pb)
{
	uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;

	return a < b ? -1 : a > b;
}

/* Draws one of the ids idx[0..n) (ascending) with weights w[id]. */
static uint32_t
draw_list(uint64_t rng[4], const uint32_t *idx, size_t n, const float *w)
{
	double sum = 0, target, cum = 0;

	for (size_t i = 0; i < n; i++)
		sum += w[idx[i]];
	target = rng_uniform(rng) * sum;
	for (size_t i = 0; i < n; i++) {
		cum += w[idx[i]];
		if (w[idx[i]] > 0 && cum > target)
			return idx[i];
	}
	for (size_t i = n; i-- > 1;) /* rounding: the last with weight */
		if (w[idx[i]] > 0)
			return idx[i];
	return idx[0];
}

/* Whether id i is in a candidate set given by its worst member c (every
 * id ranked at or before c) and the min-p floor on weights. */
static int
in_set(const float *l, const float *w, uint32_t i, uint32_t c, float floor)
{
	return !isnan(l[i]) && (i == c || before(l, i, c)) && w[i] >= floor;
}

/* draw_list over the set {i : in_set(i)} scanned in id order: for sets too
 * large to sort. */
static uint32_t
draw_scan(uint64_t rng[4], const float *l, size_t n_vocab, const float *w,
        uint32_t c, float floor)
{
	double sum = 0, target, cum = 0;
	uint32_t last = c;

	for (uint32_t i = 0; i < n_vocab; i++)
		if (in_set(l, w, i, c, floor))
			sum += w[i];
	target = rng_uniform(rng) * sum;
	for (uint32_t i = 0; i < n_vocab; i++) {
		if (!in_set(l, w, i, c, floor))
			continue;
		cum += w[i];
		if (w[i] > 0) {
			last = i;
			if (cum > target)
				return i;
		}
	}
	return last;
}

int32_t
sampler_next(struct sampler *s, const float *logits, size_t n_vocab,
        float *logprob)
{
	const struct sample_params *p = &s->p;
	const float *l = logits;
	uint32_t *idx;
	float *w, maxl, inv_t, floor;
	size_t n = 0;
	double total = 0;
	long best;
	int permuted = 0, rv;
	int32_t id;

	if (logits == NULL || n_vocab == 0 || n_vocab > INT32_MAX)
		return EPMOE_EINVAL;
	if ((best = argmax(l, n_vocab)) < 0)
		return EPMOE_EINVAL;
	maxl = l[best];
	/* a temperature so small that 1/T overflows is greedy too */
	inv_t = p->temperature > 0 ? 1.0f / p->temperature : INFINITY;
	if (isinf(inv_t) || p->top_k == 1 || maxl == INFINITY) {
		id = (int32_t)best;
		goto out;
	}
	if ((rv = grow(s, n_vocab)) != 0)
		return rv;
	idx = s->idx;
	w = s->prob; /* indexed by id, valid for candidates only */
	/* 1. top-k (any order) */
	if (p->top_k > 0 && (size_t)p->top_k <= TOPK_INSERT) {
		n = top_insert(l, n_vocab, (size_t)p->top_k, idx, 1);
		permuted = 1;
	} else {
		for (size_t i = 0; i < n_vocab; i++)
			if (!isnan(l[i]) && l[i] != -INFINITY)
				idx[n++] = (uint32_t)i;
		if (p->top_k > 0 && (size_t)p->top_k < n) {
			select_top(idx, n, (size_t)p->top_k, l);
			n = (size_t)p->top_k;
			permuted = 1;
		}
	}
	/* 2. softmax with temperature, unnormalised: the best weighs 1 */
	for (size_t i = 0; i < n; i++) {
		w[idx[i]] = expf((l[idx[i]] - maxl) * inv_t);
		total += w[idx[i]];
	}
	/* 3. top-p */
	if (p->top_p < 1) {
		n = nucleus(idx, n, l, w, p->top_p * total);
		permuted = 1;
	}
	/* 4. min-p: w >= min_p * w_max, and w_max = 1 */
	floor = p->min_p;
	/* draw, scanning the survivors in id order */
	if (!permuted || n <= n_vocab / 8) {
		size_t m = 0;

		for (size_t i = 0; i < n; i++)
			if (w[idx[i]] >= floor)
				idx[m++] = idx[i];
		if (permuted)
			qsort(idx, m, sizeof(*idx), cmp_u32);
		id = (int32_t)draw_list(s->rng, idx, m, w);
	} else {
		uint32_t c = idx[0];

		for (size_t i = 1; i < n; i++)
			if (before(l, c, idx[i]))
				c = idx[i];
		id = (int32_t)draw_scan(s->rng, l, n_vocab, w, c, floor);
	}
out:
	if (logprob != NULL)
		*logprob = sample_logprob(logits, n_vocab, id);
	return id;
}

/* log sum exp of the non-NaN logits; +inf if any is +inf. */
static double
log_sum_exp(const float *l, size_t n, size_t *n_posinf)
{
	double m = -INFINITY, sum = 0;
	size_t ninf = 0;

	for (size_t i = 0; i < n; i++) {
		if (isnan(l[i]))
			continue;
		if (l[i] == INFINITY)
			ninf++;
		if (l[i] > m)
			m = l[i];
	}
	*n_posinf = ninf;
	if (ninf > 0 || m == -INFINITY)
		return m;
	for (size_t i = 0; i < n; i++)
		if (!isnan(l[i]))
			sum += exp((double)l[i] - m);
	return m + log(sum);
}

/* log p of a logit x given the row's log-sum-exp. */
static float
logprob_of(float x, double lse, size_t n_posinf)
{
	if (isnan(x))
		return -INFINITY;
	if (n_posinf > 0)
		return x == INFINITY ? (float)-log((double)n_posinf) :
		        -INFINITY;
	if (lse == -INFINITY)
		return -INFINITY;
	return (float)((double)x - lse);
}

float
sample_logprob(const float *logits, size_t n_vocab, int32_t id)
{
	size_t ninf;
	double lse;

	if (logits == NULL || id < 0 || (size_t)id >= n_vocab)
		return -INFINITY;
	lse = log_sum_exp(logits, n_vocab, &ninf);
	return logprob_of(logits[id], lse, ninf);
}

size_t
sample_top_logprobs(const float *logits, size_t n_vocab, size_t n,
        int32_t *ids, float *lps)
{
	size_t have, ninf;
	double lse;

	if (logits == NULL || n == 0 || n_vocab > INT32_MAX)
		return 0;
	/* int32_t and uint32_t ids share a representation below INT32_MAX */
	have = top_insert(logits, n_vocab, n, (uint32_t *)ids, 0);
	lse = log_sum_exp(logits, n_vocab, &ninf);
	for (size_t j = 0; j < have; j++)
		lps[j] = logprob_of(logits[ids[j]], lse, ninf);
	return have;
}

long
sample_stop_match(const char *text, size_t len, const char *const *stops,
        size_t n_stops, size_t *partial)
{
	long first = -1;
	size_t hold = 0;

	for (size_t s = 0; s < n_stops; s++) {
		const char *hit;
		size_t sl;

		if (stops[s] == NULL || (sl = strlen(stops[s])) == 0)
			continue;
		if (len < sl)
			continue;
		hit = memmem(text, len, stops[s], sl);
		if (hit != NULL && (first < 0 || hit - text < first))
			first = hit - text;
	}
	if (first >= 0) {
		if (partial != NULL)
			*partial = 0;
		return first;
	}
	for (size_t s = 0; s < n_stops && partial != NULL; s++) {
		size_t sl;

		if (stops[s] == NULL || (sl = strlen(stops[s])) == 0)
			continue;
		/* longest proper prefix of the stop that ends the text */
		for (size_t m = sl - 1 < len ? sl - 1 : len; m > hold; m--) {
			if (memcmp(text + len - m, stops[s], m) == 0) {
				hold = m;
				break;
			}
		}
	}
	if (partial != NULL)
		*partial = hold;
	return -1;
}

void
sample_stop_init(struct sample_stop *st, const char *const *stops,
        size_t n_stops)
{
	memset(st, 0, sizeof(*st));
	st->stops = stops;
	st->n_stops = n_stops;
}

void
sample_stop_fini(struct sample_stop *st)
{
	if (st == NULL)
		return;
	free(st->buf);
	memset(st, 0, sizeof(*st));
}

int
sample_stop_push(struct sample_stop *st, const char *text, size_t len,
        const char **emit, size_t *emit_len)
{
	size_t hold;
	long at;

	*emit = "";
	*emit_len = 0;
	if (st->stopped)
		return 1;
	/* drop what was emitted last time, keep what was held back */
	if (st->off > 0) {
		memmove(st->buf, st->buf + st->off, st->len - st->off);
		st->len -= st->off;
		st->off = 0;
	}
	if (st->buf == NULL || len > st->cap - st->len) {
		size_t cap = st->cap ? st->cap : 64;
		char *b;

		while (cap - st->len < len)
			cap *= 2;
		if ((b = realloc(st->buf, cap)) == NULL)
			return EPMOE_ENOMEM;
		st->buf = b;
		st->cap = cap;
	}
	if (len > 0)
		memcpy(st->buf + st->len, text, len);
	st->len += len;
	at = sample_stop_match(st->buf, st->len, st->stops, st->n_stops,
	        &hold);
	if (at >= 0) {
		st->stopped = 1;
		st->len = st->off = (size_t)at;
		*emit = st->buf;
		*emit_len = (size_t)at;
		return 1;
	}
	st->off = st->len - hold;
	*emit = st->buf;
	*emit_len = st->off;
	return 0;
}

void
sample_stop_flush(struct sample_stop *st, const char **emit,
        size_t *emit_len)
{
	*emit = st->buf != NULL ? st->buf + st->off : "";
	*emit_len = st->len - st->off;
	st->off = st->len;
}
