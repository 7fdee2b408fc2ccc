/* The grouped expert FFN and the weighted combine: the one expert-compute
 * path, run by local mode (moe_local.c) and by epmoe-worker on the same
 * kind of work list (moe.h, struct moe_work).
 *
 * Per layer and slice of entries: the entries' token rows are gathered
 * into one matrix; every group's gate and up products run in one pool
 * round (each expert's weights streamed once for all its tokens of the
 * step, the threads sharing the rows of all experts); SwiGLU per row;
 * every down product in a second round; then each result, times its
 * weight, is added into its output row, entries in list order.  The
 * kernels are batch-invariant (matmul.h), so an entry's result does not
 * depend on the other entries: a worker given the same list as local mode
 * returns the same bits.  This file is compiled without FMA contraction
 * (Makefile): the combine rounds weight x output before adding it, so with
 * experts placed on workers in id order local mode's sum equals the
 * router's sum of the workers' partial sums bit for bit.  Must not
 * allocate per call once its scratch has grown to the largest slice.
 */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "model.h"
#include "moe.h"
#include "ops.h"
#include "pool.h"

/* Entries computed at once: bounds the scratch (about 30 MiB for d 1024,
 * ff 2816) while leaving a 512-token prefill one slice. */
#define SLICE 1024u

struct moe_ffn {
	const struct model *m;
	struct pool *pool;
	float *xe, *h, *ye;       /* [SLICE or less, d], [2][.., ff], [.., d] */
	size_t cap_rows;
	struct op_mm *mm;
	struct tmat *mats;
	size_t cap_mm;
};

int
moe_ffn_new(struct moe_ffn **out, const struct model *m, struct pool *pool)
{
	struct moe_ffn *f;

	if ((f = calloc(1, sizeof(*f))) == NULL)
		return EPMOE_ENOMEM;
	f->m = m;
	f->pool = pool;
	*out = f;
	return 0;
}

void
moe_ffn_free(struct moe_ffn *f)
{
	if (f == NULL)
		return;
	free(f->xe);
	free(f->h);
	free(f->ye);
	free(f->mm);
	free(f->mats);
	free(f);
}

/* 64-byte aligned floats: the product kernels load whole cache lines. */
static float *
alloc_rows(size_t n)
{
	return aligned_alloc(64, (n * sizeof(float) + 63) & ~(size_t)63);
}

static int
grow(struct moe_ffn *f, size_t rows, size_t n_mm)
{
	size_t d = f->m->hp.n_embd, ff = f->m->hp.n_ff_exp;

	if (rows > f->cap_rows) {
		free(f->xe);
		free(f->h);
		free(f->ye);
		f->xe = alloc_rows(rows * d);
		f->h = alloc_rows(2 * rows * ff);
		f->ye = alloc_rows(rows * d);
		if (!f->xe || !f->h || !f->ye) {
			f->cap_rows = 0;
			return EPMOE_ENOMEM;
		}
		f->cap_rows = rows;
	}
	if (n_mm > f->cap_mm) {
		struct op_mm *mm = realloc(f->mm, n_mm * sizeof(*mm));
		if (mm == NULL)
			return EPMOE_ENOMEM;
		f->mm = mm;
		struct tmat *mats = realloc(f->mats, n_mm * sizeof(*mats));
		if (mats == NULL)
			return EPMOE_ENOMEM;
		f->mats = mats;
		f->cap_mm = n_mm;
	}
	return 0;
}

struct swiglu_job {
	float *g;
	const float *u;
	size_t n_rows, ff;
};

/* Row by row, so an element's result never depends on its row's place. */
static void
swiglu_worker(void *ctx, int ith, int nth)
{
	struct swiglu_job *j = ctx;
	long lo, hi;

	pool_split((long)j->n_rows, ith, nth, 1, &lo, &hi);
	for (long r = lo; r < hi; r++)
		op_swiglu(j->g + (size_t)r * j->ff, j->u + (size_t)r * j->ff, (int)j->ff);
}

/* Entries [e0, e1) of w, which cover groups from g0 on (group g0 starting
 * at entry s0). */
static int
run_slice(struct moe_ffn *f, uint32_t layer, const float *x,
        const struct moe_work *w, size_t e0, size_t e1, uint32_t g0, size_t s0,
        float *out)
{
	const struct model_hparams *hp = &f->m->hp;
	const struct model_layer *l = &f->m->layers[layer];
	size_t d = hp->n_embd, ff = hp->n_ff_exp, n = e1 - e0;
	float *g = f->h, *u = f->h + n * ff;
	int n_up = 0, n_down, rc;

	for (size_t i = 0; i < n; i++) {
		size_t src = w->in_row ? w->in_row[e0 + i] : e0 + i;
		memcpy(f->xe + i * d, x + src * d, d * sizeof(float));
	}
	/* gate and up of every group part in the slice: one round */
	for (uint32_t gi = g0, s = (uint32_t)s0; gi < w->n_groups && s < e1; gi++) {
		size_t a = s > e0 ? s : e0, b = s + w->count[gi] < e1 ? s + w->count[gi] : e1;
		s += w->count[gi];
		if (a >= b)
			continue;
		struct tmat *mt = &f->mats[3 * (size_t)n_up / 2];
		if (w->mats && w->mats[3 * (size_t)gi].data) {
			memcpy(mt, &w->mats[3 * (size_t)gi], 3 * sizeof(*mt));
		} else {
			mt[0] = model_expert(l, hp, MODEL_EXP_GATE, w->expert[gi]);
			mt[1] = model_expert(l, hp, MODEL_EXP_UP, w->expert[gi]);
			mt[2] = model_expert(l, hp, MODEL_EXP_DOWN, w->expert[gi]);
		}
		size_t r = a - e0, rows = b - a;
		f->mm[n_up++] = (struct op_mm){ &mt[0], f->xe + r * d, (int)rows, (int)d,
			g + r * ff, (int)ff };
		f->mm[n_up++] = (struct op_mm){ &mt[1], f->xe + r * d, (int)rows, (int)d,
			u + r * ff, (int)ff };
	}
	if ((rc = op_matmul_batch(f->pool, n_up, f->mm)) != 0)
		return rc;
	{
		struct swiglu_job sj = { g, u, n, ff };
		if (n * ff >= 65536)
			pool_run(f->pool, swiglu_worker, &sj);
		else
			swiglu_worker(&sj, 0, 1);
	}
	/* every down product: the second round (mm[2i] held part i's gate) */
	n_down = n_up / 2;
	for (int i = 0; i < n_down; i++) {
		const struct op_mm *gm = &f->mm[2 * i];
		size_t r = (size_t)(gm->X - f->xe) / d;
		f->mm[i] = (struct op_mm){ &f->mats[3 * (size_t)i + 2], g + r * ff, gm->n,
			(int)ff, f->ye + r * d, (int)d };
	}
	if ((rc = op_matmul_batch(f->pool, n_down, f->mm)) != 0)
		return rc;
	/* the weighted combine, in entry order */
	for (size_t i = 0; i < n; i++) {
		float *o = out + (size_t)w->out_row[e0 + i] * d;
		const float *y = f->ye + i * d;
		float wt = w->weight[e0 + i];
		for (size_t k = 0; k < d; k++)
			o[k] += wt * y[k];
	}
	return 0;
}

int
moe_ffn_run(struct moe_ffn *f, uint32_t layer, const float *x,
        const struct moe_work *w, float *out)
{
	const struct model_hparams *hp = &f->m->hp;
	size_t n = 0, max_groups = 0;
	int rc;

	if (layer >= hp->n_layer)
		return EPMOE_EINVAL;
	for (uint32_t gi = 0; gi < w->n_groups; gi++) {
		if (w->expert[gi] >= hp->n_expert)
			return EPMOE_EINVAL;
		n += w->count[gi];
	}
	for (size_t j = 0; j < n; j++) {
		if (w->out_row[j] >= w->n_out)
			return EPMOE_EINVAL;
		if (w->in_row ? w->in_row[j] >= w->n_in : j >= w->n_in)
			return EPMOE_EINVAL;
	}
	memset(out, 0, (size_t)w->n_out * hp->n_embd * sizeof(float));
	if (n == 0)
		return 0;
	/* a slice holds at most all groups, plus one cut at each end */
	max_groups = w->n_groups + 2;
	if ((rc = grow(f, n < SLICE ? n : SLICE, 3 * max_groups)) != 0)
		return rc;
	uint32_t g0 = 0;
	size_t s0 = 0;
	for (size_t e0 = 0; e0 < n; e0 += SLICE) {
		size_t e1 = n - e0 < SLICE ? n : e0 + SLICE;
		/* the first group that reaches into the slice */
		while (g0 < w->n_groups && s0 + w->count[g0] <= e0)
			s0 += w->count[g0++];
		if ((rc = run_slice(f, layer, x, w, e0, e1, g0, s0, out)) != 0)
			return rc;
	}
	return 0;
}
