/* In-process expert execution: groups a layer's tokens by expert, runs each
 * expert's SwiGLU FFN as three matrix products over its group, and adds the
 * weighted results back per token.  Experts are visited in id order so the
 * summation order is fixed. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "model.h"
#include "moe.h"

struct moe_local {
	struct moe_backend be;
	const struct model *m;
	struct pool *pool;
	/* scratch, grown as needed */
	uint32_t *count, *start, *tok;
	float *w, *xe, *ye, *h;
	size_t cap_pairs, cap_rows;
};

int
moe_expert_ffn(const struct model *m, struct pool *pool, uint32_t layer,
        uint32_t expert, const float *x_e, uint32_t n, float *y_e,
        float *scratch)
{
	const struct model_hparams *hp = &m->hp;
	const struct model_layer *l = &m->layers[layer];
	uint32_t ff = hp->n_ff_exp, d = hp->n_embd;
	float *g = scratch, *u = scratch + (size_t)n * ff;
	struct tmat wg = model_expert(l, hp, MODEL_EXP_GATE, expert);
	struct tmat wu = model_expert(l, hp, MODEL_EXP_UP, expert);
	struct tmat wd = model_expert(l, hp, MODEL_EXP_DOWN, expert);
	int rc;

	/* g, u: [n, ff] = x_e [n, d] · W{g,u}ᵀ, in one pool round */
	const struct tmat *W[2] = { &wg, &wu };
	float *Y[2] = { g, u };
	int ldy[2] = { (int)ff, (int)ff };
	if ((rc = op_matmul_multi(pool, 2, W, x_e, (int)n, (int)d, Y, ldy)) != 0)
		return rc;
	op_swiglu(g, u, (int)((size_t)n * ff));
	/* y_e [n, d] = h [n, ff] · Wdᵀ */
	return op_matmul(pool, &wd, g, (int)n, (int)ff, y_e, (int)d);
}

static int
grow(struct moe_local *ml, size_t pairs, size_t rows)
{
	const struct model_hparams *hp = &ml->m->hp;

	if (pairs > ml->cap_pairs) {
		uint32_t *t = realloc(ml->tok, pairs * sizeof(*t));
		if (t == NULL)
			return EPMOE_ENOMEM;
		ml->tok = t;
		float *w = realloc(ml->w, pairs * sizeof(*w));
		if (w == NULL)
			return EPMOE_ENOMEM;
		ml->w = w;
		ml->cap_pairs = pairs;
	}
	if (rows > ml->cap_rows) {
		free(ml->xe);
		free(ml->ye);
		free(ml->h);
		ml->xe = malloc(rows * hp->n_embd * sizeof(float));
		ml->ye = malloc(rows * hp->n_embd * sizeof(float));
		ml->h = malloc(2 * rows * hp->n_ff_exp * sizeof(float));
		if (!ml->xe || !ml->ye || !ml->h) {
			ml->cap_rows = 0;
			return EPMOE_ENOMEM;
		}
		ml->cap_rows = rows;
	}
	return 0;
}

/* All experts of a layer in two pool rounds: pairs are in expert-major
 * order (ml->tok, ml->w); rows go to xe [n_pairs, d], gate/up to
 * h [2][n_pairs, ff], outputs to ye [n_pairs, d]. */
static int
run_fused(struct moe_local *ml, uint32_t layer, const float *x, size_t n_pairs,
        float *out)
{
	const struct model_hparams *hp = &ml->m->hp;
	const struct model_layer *l = &ml->m->layers[layer];
	uint32_t E = hp->n_expert, d = hp->n_embd, ff = hp->n_ff_exp;
	float *g = ml->h, *u = ml->h + n_pairs * ff;
	struct op_mm mm[2 * 256];
	struct tmat mats[3 * 256];
	int n_mm = 0, rc;

	if (E > 256)
		return EPMOE_ENOTSUP;
	for (size_t i = 0; i < n_pairs; i++)
		memcpy(ml->xe + i * d, x + (size_t)ml->tok[i] * d, d * sizeof(float));
	for (uint32_t e = 0; e < E; e++) {
		uint32_t n = ml->count[e], s = ml->start[e];
		if (n == 0)
			continue;
		mats[3 * e] = model_expert(l, hp, MODEL_EXP_GATE, e);
		mats[3 * e + 1] = model_expert(l, hp, MODEL_EXP_UP, e);
		mats[3 * e + 2] = model_expert(l, hp, MODEL_EXP_DOWN, e);
		mm[n_mm++] = (struct op_mm){ &mats[3 * e], ml->xe + (size_t)s * d, (int)n,
			(int)d, g + (size_t)s * ff, (int)ff };
		mm[n_mm++] = (struct op_mm){ &mats[3 * e + 1], ml->xe + (size_t)s * d, (int)n,
			(int)d, u + (size_t)s * ff, (int)ff };
	}
	if ((rc = op_matmul_batch(ml->pool, n_mm, mm)) != 0)
		return rc;
	op_swiglu(g, u, (int)(n_pairs * ff));
	n_mm = 0;
	for (uint32_t e = 0; e < E; e++) {
		uint32_t n = ml->count[e], s = ml->start[e];
		if (n == 0)
			continue;
		mm[n_mm++] = (struct op_mm){ &mats[3 * e + 2], g + (size_t)s * ff, (int)n,
			(int)ff, ml->ye + (size_t)s * d, (int)d };
	}
	if ((rc = op_matmul_batch(ml->pool, n_mm, mm)) != 0)
		return rc;
	/* combine in expert order, as the expert-by-expert path does */
	for (size_t i = 0; i < n_pairs; i++) {
		float *o = out + (size_t)ml->tok[i] * d;
		const float *y = ml->ye + i * d;
		float w = ml->w[i];
		for (uint32_t j = 0; j < d; j++)
			o[j] += w * y[j];
	}
	return 0;
}

static int
local_run(struct moe_backend *be, uint32_t layer, const float *x,
        const struct moe_assign *a, float *out)
{
	struct moe_local *ml = (struct moe_local *)be;
	const struct model_hparams *hp = &ml->m->hp;
	uint32_t E = hp->n_expert, d = hp->n_embd, T = a->n_tok;
	size_t n_pairs = a->off[T], max_rows = 0;
	int rc;

	memset(out, 0, (size_t)T * d * sizeof(float));
	if (n_pairs == 0)
		return 0;
	/* bucket the pairs by expert (counting sort, stable in token order) */
	memset(ml->count, 0, E * sizeof(uint32_t));
	for (size_t i = 0; i < n_pairs; i++) {
		if (a->expert[i] < 0 || (uint32_t)a->expert[i] >= E)
			return EPMOE_EINVAL;
		ml->count[a->expert[i]]++;
	}
	for (uint32_t e = 0, s = 0; e < E; e++) {
		ml->start[e] = s;
		s += ml->count[e];
		if (ml->count[e] > max_rows)
			max_rows = ml->count[e];
	}
	/* few rows per expert (decode): every expert's rows gathered at once,
	 * all gate/up products in one pool round, all down products in
	 * another; else expert by expert */
	bool fused = max_rows < 32;
	if ((rc = grow(ml, n_pairs, fused ? n_pairs : max_rows)) != 0)
		return rc;
	{
		uint32_t fill[4096];
		uint32_t *pos = E <= 4096 ? fill : NULL;
		if (pos == NULL)
			return EPMOE_ENOTSUP;
		memcpy(pos, ml->start, E * sizeof(uint32_t));
		for (uint32_t t = 0; t < T; t++) {
			for (uint32_t i = a->off[t]; i < a->off[t + 1]; i++) {
				uint32_t e = (uint32_t)a->expert[i];
				ml->tok[pos[e]] = t;
				ml->w[pos[e]] = a->weight[i];
				pos[e]++;
			}
		}
	}
	if (fused)
		return run_fused(ml, layer, x, n_pairs, out);
	for (uint32_t e = 0; e < E; e++) {
		uint32_t n = ml->count[e], s = ml->start[e];
		if (n == 0)
			continue;
		for (uint32_t i = 0; i < n; i++)
			memcpy(ml->xe + (size_t)i * d, x + (size_t)ml->tok[s + i] * d,
			        d * sizeof(float));
		if ((rc = moe_expert_ffn(ml->m, ml->pool, layer, e, ml->xe, n,
		             ml->ye, ml->h)) != 0)
			return rc;
		for (uint32_t i = 0; i < n; i++) {
			float *o = out + (size_t)ml->tok[s + i] * d;
			const float *y = ml->ye + (size_t)i * d;
			float w = ml->w[s + i];
			for (uint32_t j = 0; j < d; j++)
				o[j] += w * y[j];
		}
	}
	return 0;
}

static void
local_free(struct moe_backend *be)
{
	struct moe_local *ml = (struct moe_local *)be;

	if (ml == NULL)
		return;
	free(ml->count);
	free(ml->start);
	free(ml->tok);
	free(ml->w);
	free(ml->xe);
	free(ml->ye);
	free(ml->h);
	free(ml);
}

int
moe_local_new(struct moe_backend **out, const struct model *m,
        struct pool *pool)
{
	struct moe_local *ml;

	if ((ml = calloc(1, sizeof(*ml))) == NULL)
		return EPMOE_ENOMEM;
	ml->be.run = local_run;
	ml->be.free = local_free;
	ml->m = m;
	ml->pool = pool;
	ml->count = calloc(m->hp.n_expert, sizeof(uint32_t));
	ml->start = calloc(m->hp.n_expert, sizeof(uint32_t));
	if (!ml->count || !ml->start) {
		local_free(&ml->be);
		return EPMOE_ENOMEM;
	}
	*out = &ml->be;
	return 0;
}
