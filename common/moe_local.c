/* In-process experts: turns a layer's routing (CSR by token) into the
 * grouped work list of moe.h, experts in id order and each expert's
 * tokens in order, and runs it through the shared grouped FFN and combine
 * (moe_ffn.c), as the worker does with its batches. */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "model.h"
#include "moe.h"

struct moe_local {
	struct moe_backend be;
	const struct model *m;
	struct moe_ffn *ffn;
	/* [E] per expert; [pairs] per (token, expert) pair, expert-major */
	uint32_t *expert, *count, *pos;
	uint32_t *tok;
	float *w;
	size_t cap_pairs;
};

static int
grow(struct moe_local *ml, size_t pairs)
{
	if (pairs <= ml->cap_pairs)
		return 0;
	uint32_t *t = realloc(ml->tok, pairs * sizeof(*t));
	if (t == NULL)
		return EPMOE_ENOMEM;
	ml->tok = t;
	float *w = realloc(ml->w, pairs * sizeof(*w));
	if (w == NULL)
		return EPMOE_ENOMEM;
	ml->w = w;
	ml->cap_pairs = pairs;
	return 0;
}

static int
local_run(struct moe_backend *be, uint32_t layer, const float *x,
        const struct moe_assign *a, float *out)
{
	struct moe_local *ml = (struct moe_local *)be;
	uint32_t E = ml->m->hp.n_expert, T = a->n_tok, n_groups = 0;
	size_t n_pairs = a->off[T];
	int rc;

	/* bucket the pairs by expert (counting sort, stable in token order) */
	memset(ml->pos, 0, E * sizeof(uint32_t));
	for (size_t i = 0; i < n_pairs; i++) {
		if (a->expert[i] < 0 || (uint32_t)a->expert[i] >= E)
			return EPMOE_EINVAL;
		ml->pos[a->expert[i]]++;
	}
	if ((rc = grow(ml, n_pairs)) != 0)
		return rc;
	for (uint32_t e = 0, s = 0; e < E; e++) {
		uint32_t c = ml->pos[e];
		if (c) {
			ml->expert[n_groups] = e;
			ml->count[n_groups++] = c;
		}
		ml->pos[e] = s;
		s += c;
	}
	for (uint32_t t = 0; t < T; t++) {
		for (uint32_t i = a->off[t]; i < a->off[t + 1]; i++) {
			uint32_t p = ml->pos[a->expert[i]]++;
			ml->tok[p] = t;
			ml->w[p] = a->weight[i];
		}
	}
	struct moe_work w = { .n_groups = n_groups, .expert = ml->expert,
		.count = ml->count, .in_row = ml->tok, .out_row = ml->tok,
		.weight = ml->w, .n_in = T, .n_out = T };
	return moe_ffn_run(ml->ffn, layer, x, &w, out);
}

static void
local_free(struct moe_backend *be)
{
	struct moe_local *ml = (struct moe_local *)be;

	if (ml == NULL)
		return;
	moe_ffn_free(ml->ffn);
	free(ml->expert);
	free(ml->count);
	free(ml->pos);
	free(ml->tok);
	free(ml->w);
	free(ml);
}

int
moe_local_new(struct moe_backend **out, const struct model *m,
        struct pool *pool)
{
	struct moe_local *ml;
	uint32_t E = m->hp.n_expert;

	if ((ml = calloc(1, sizeof(*ml))) == NULL)
		return EPMOE_ENOMEM;
	ml->be.run = local_run;
	ml->be.free = local_free;
	ml->m = m;
	ml->expert = calloc(E, sizeof(uint32_t));
	ml->count = calloc(E, sizeof(uint32_t));
	ml->pos = calloc(E, sizeof(uint32_t));
	if (!ml->expert || !ml->count || !ml->pos ||
	        moe_ffn_new(&ml->ffn, m, pool) != 0) {
		local_free(&ml->be);
		return EPMOE_ENOMEM;
	}
	*out = &ml->be;
	return 0;
}
