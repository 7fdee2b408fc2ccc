/* The forward pass over a batch of sequences.  See engine.h.
 *
 * Layout of a step: the tokens of all items are concatenated into T rows.
 * Per layer:
 *   xn = RMSNorm(x) · attn_norm                     [T, d]
 *   q, k, v = xn · W{q,k,v}ᵀ (+ bias)               [T, nh·hd], [T, nkv·hd] x2
 *   (olmoe / qwen3moe: RMSNorm on q and k)
 *   RoPE(q, k) at each token's position; k, v appended to its sequence's cache
 *   a = softmax(q·Kᵀ/√hd, causal) · V per head      [T, nh·hd]
 *   x += a · Woᵀ
 *   xn = RMSNorm(x) · ffn_norm;  S = xn · Wgateᵀ     [T, E]
 *   routing policy(S, groups) -> (token, expert, weight)
 *   x += experts(xn) (+ sigmoid(xn·g_sh) · shared(xn) for qwen2moe)
 * then RMSNorm · output_norm and the LM head for the rows that want logits.
 *
 * Two micro-batches (engine_set_microbatch): the items are reordered so
 * that each half's rows are contiguous; every row buffer is shared (each
 * half touches only its rows) and each half has its own routing scratch
 * (struct eng_rs), so both stay valid while one half's experts are out
 * and the other runs attention, gate and routing (step_split).
 */
#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "affinity.h"
#include "engine.h"
#include "engine_plan.h"
#include "err.h"
#include "fmath.h"
#include "log.h"

/* Routing scratch of one micro-batch: the policy's output and, for a step
 * mixing policies, the per-policy gathers (rows local to the batch). */
struct eng_rs {
	struct route_out rout;
	struct route_group *groups;      /* [n_items] */
	struct route_policy **pols;      /* [n_items] distinct policies of a step */
	uint32_t cap_items;
	uint32_t *pair_lo, *pair_hi;     /* [T] pair range of each row */
	int32_t *perm;      /* [T] rows reordered so groups are contiguous */
	float *gate_perm;
	uint32_t *off_perm;
	int32_t *exp_perm;
	float *w_perm;
	size_t cap_pairs;
	uint32_t cap_t;
};

/* One micro-batch of a step: items[0 .. n_items) own rows [r0, r0 + T)
 * of the step's buffers (item_row0 absolute). */
struct eng_mb {
	unsigned idx;                /* 0 or 1: its routing scratch, backend slot */
	struct eng_item *items;
	uint32_t n_items;
	const uint32_t *item_row0;
	uint32_t r0, T;
	struct eng_rs *rs;
	struct moe_assign a;
};

struct engine {
	const struct model *m;
	struct pool *pool;
	struct moe_backend *local;
	struct moe_backend *experts;
	struct route_policy *policy;
	uint32_t n_ctx;
	enum dtype kv_type;   /* F32 or F16 */
	size_t kv_es;         /* its element size */
	uint64_t n_steps;
	struct engine_timing timing;

	/* per-step scratch, grown to the largest step seen */
	uint32_t cap_t;
	float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *moe;
	float *sh_g, *sh_u;
	int32_t *pos;       /* [T] position of each row */
	uint32_t *row_item; /* [T] item of each row */
	uint32_t cap_rows_out;
	float *head_in, *head_out;
	/* routing scratch, one per micro-batch (both live while two are in
	 * flight) */
	struct eng_rs rs[2];
	engine_route_fn route_obs;
	void *route_obs_ud;
	struct affinity *aff;  /* speculative predictions (borrowed), or NULL */
	bool prefetch;         /* pass the next layer's likely experts (hint) */
	uint8_t *pf_mask;      /* [E] */
	uint32_t *pf_list;     /* [E] */
	int32_t *row_tok;      /* [cap_row_tok] token id of each row of the step */
	uint32_t cap_row_tok;
	uint16_t *worker_of;             /* [L * E] expert -> worker, or NULL */
	int n_workers;
	/* two micro-batches (engine_set_microbatch) */
	bool mb_on, cobatch;
	struct engine_mb_stats mbst;
	struct eng_item *mb_items;       /* [cap_mb] the step's items, halves in order */
	uint32_t *mb_orig;               /* [cap_mb] original index of each */
	uint32_t *mb_row0;               /* [cap_mb] first row of each */
	double *mb_score;                /* [cap_score] co-batching scores */
	size_t cap_score;
	uint32_t cap_mb;
	uint32_t *aff_off;               /* both halves' routing, for affinity */
	int32_t *aff_exp;
	float *aff_w;
	size_t cap_aff;
	uint32_t cap_aff_off;
	uint8_t *wseen;                  /* [2 * n_workers] */
	/* attention scratch per thread: [OP_ATT_QCHUNK, positions], grown
	 * to the longest sequence seen (at most n_ctx) */
	float **att_s;
	size_t att_cap;
	uint32_t att_pos;   /* positions att_s covers */
};

/* Checks that one sequence of n_ctx positions fits the memory budget:
 * its KV cache (2 x layers x kv heads x head dim elements per position)
 * plus the per-thread attention scratch ([rows, n_ctx] floats each, and
 * one head's keys and values in f32 with an F16 cache).
 * Every size here comes from the model file, so a corrupt or hostile
 * context_length must be caught before it becomes a malloc. */
static int
ctx_fits(const struct model *m, uint32_t n_ctx, bool from_model,
        enum dtype kv_type, int n_threads, uint64_t budget, char *err,
        size_t err_len)
{
	const struct model_hparams *hp = &m->hp;
	double gib = 1024.0 * 1024.0 * 1024.0;
	uint64_t att_rows = OP_ATT_QCHUNK > hp->n_head / hp->n_head_kv ?
	        OP_ATT_QCHUNK : hp->n_head / hp->n_head_kv;
	/* below 2^64: layers, heads and head_dim are bounded by the loader
	 * (4096 x 1024 x 1024) and n_ctx by 2^32 */
	double es = kv_type == DTYPE_F16 ? 2.0 : 4.0;
	double kv = 2.0 * hp->n_layer * hp->n_head_kv * hp->head_dim * es * n_ctx;
	double scratch = ((double)att_rows + (kv_type == DTYPE_F16 ?
	        2.0 * hp->head_dim : 0.0)) * n_ctx * 4.0 * n_threads;

	if (budget == 0) {
		long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);

		budget = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz
		                              : (uint64_t)1 << 34;
	}
	if (kv + scratch <= (double)budget)
		return 0;
	if (err != NULL && err_len > 0)
		snprintf(err, err_len,
		        "context length %u%s needs %.2f GiB for one sequence (KV cache %.2f GiB + attention scratch %.2f GiB), more than the memory budget of %.2f GiB: choose a shorter context (--ctx)",
		        n_ctx, from_model ? " (the model's context_length)" : "",
		        (kv + scratch) / gib, kv / gib, scratch / gib,
		        (double)budget / gib);
	return EPMOE_ERANGE;
}

int
engine_new(struct engine **out, const struct model *m,
        const struct engine_opts *o, char *err, size_t err_len)
{
	struct engine *e;
	int n_threads = o && o->n_threads > 0 ? o->n_threads :
	        (int)sysconf(_SC_NPROCESSORS_ONLN);
	int rc;
	uint32_t n_ctx = o && o->n_ctx ? o->n_ctx : m->hp.n_ctx_train;
	enum dtype kv_type = o ? o->kv_type : DTYPE_F32;

	if (n_threads < 1)
		n_threads = 1;
	if (n_ctx == 0)
		n_ctx = 4096;
	if (kv_type != DTYPE_F32 && kv_type != DTYPE_F16) {
		if (err && err_len)
			snprintf(err, err_len, "KV cache type %s is not supported (f32 or f16)",
			        dtype_name(kv_type));
		return EPMOE_EINVAL;
	}
	if ((rc = ctx_fits(m, n_ctx, !(o && o->n_ctx), kv_type, n_threads,
	             o ? o->mem_budget : 0, err, err_len)) != 0)
		return rc;
	op_blas_init();
	if ((e = calloc(1, sizeof(*e))) == NULL)
		return EPMOE_ENOMEM;
	e->m = m;
	e->n_ctx = n_ctx;
	e->kv_type = kv_type;
	e->kv_es = kv_type == DTYPE_F16 ? 2 : 4;
	if ((rc = pool_new(&e->pool, n_threads)) != 0)
		goto fail;
	if ((rc = moe_local_new(&e->local, m, e->pool)) != 0)
		goto fail;
	e->experts = e->local;
	route_out_init(&e->rs[0].rout);
	route_out_init(&e->rs[1].rout);
	if ((rc = engine_policy_new(e, o && o->routing ? o->routing : "native",
	             &e->policy, err, err_len)) != 0)
		goto fail;
	if ((e->att_s = calloc((size_t)n_threads, sizeof(float *))) == NULL) {
		rc = EPMOE_ENOMEM;
		goto fail;
	}
	*out = e;
	return 0;
fail:
	if (rc == EPMOE_ENOMEM && err && err_len)
		snprintf(err, err_len, "out of memory creating the engine");
	engine_free(e);
	return rc;
}

void
engine_free(struct engine *e)
{
	if (e == NULL)
		return;
	if (e->local)
		e->local->free(e->local);
	route_policy_free(e->policy);
	for (int i = 0; i < 2; i++) {
		struct eng_rs *rs = &e->rs[i];
		route_out_fini(&rs->rout);
		free(rs->groups);
		free(rs->pols);
		free(rs->pair_lo);
		free(rs->pair_hi);
		free(rs->perm);
		free(rs->gate_perm);
		free(rs->off_perm);
		free(rs->exp_perm);
		free(rs->w_perm);
	}
	free(e->mb_items);
	free(e->mb_orig);
	free(e->mb_row0);
	free(e->mb_score);
	free(e->aff_off);
	free(e->pf_mask);
	free(e->pf_list);
	free(e->aff_exp);
	free(e->aff_w);
	free(e->wseen);
	if (e->att_s) {
		for (int i = 0; i < pool_size(e->pool); i++)
			free(e->att_s[i]);
		free(e->att_s);
	}
	pool_free(e->pool);
	free(e->x);
	free(e->xn);
	free(e->q);
	free(e->k);
	free(e->v);
	free(e->att);
	free(e->tmp);
	free(e->gate);
	free(e->moe);
	free(e->sh_g);
	free(e->sh_u);
	free(e->pos);
	free(e->row_item);
	free(e->head_in);
	free(e->head_out);
	free(e->worker_of);
	free(e->row_tok);
	free(e);
}

void
engine_set_experts(struct engine *e, struct moe_backend *be)
{
	e->experts = be ? be : e->local;
}

struct pool *
engine_pool(struct engine *e)
{
	return e->pool;
}

const struct model *
engine_model(const struct engine *e)
{
	return e->m;
}

uint32_t
engine_n_ctx(const struct engine *e)
{
	return e->n_ctx;
}

enum dtype
engine_kv_type(const struct engine *e)
{
	return e->kv_type;
}

int
engine_kv_type_parse(const char *s, enum dtype *out)
{
	if (strcmp(s, "f32") == 0)
		*out = DTYPE_F32;
	else if (strcmp(s, "f16") == 0)
		*out = DTYPE_F16;
	else
		return EPMOE_EINVAL;
	return 0;
}

struct route_policy *
engine_policy(struct engine *e)
{
	return e->policy;
}

int
engine_policy_new(const struct engine *e, const char *spec,
        struct route_policy **out, char *err, size_t err_len)
{
	const struct model_hparams *hp = &e->m->hp;
	struct route_cfg cfg;
	struct route_model rm = { .n_experts = (int)hp->n_expert,
		.k = (int)hp->n_expert_used, .renorm = hp->expert_weights_norm,
		.n_layers = (int)hp->n_layer };
	int rc;

	if ((rc = route_parse(spec, &cfg, err, err_len)) != 0)
		return rc;
	if ((rc = route_policy_new(out, &cfg, &rm, err, err_len)) != 0)
		return rc;
	if (e->worker_of)
		route_policy_set_workers(*out, e->worker_of, e->n_workers);
	return 0;
}

int
engine_set_worker_map(struct engine *e, const uint16_t *worker_of, int n_workers)
{
	const struct model_hparams *hp = &e->m->hp;
	size_t n = (size_t)hp->n_layer * hp->n_expert;
	uint16_t *map = malloc(n * sizeof(*map));

	if (map == NULL)
		return EPMOE_ENOMEM;
	uint8_t *seen = calloc(2 * (size_t)(n_workers > 0 ? n_workers : 1), 1);

	if (seen == NULL) {
		free(map);
		return EPMOE_ENOMEM;
	}
	free(e->wseen);
	e->wseen = seen;
	memcpy(map, worker_of, n * sizeof(*map));
	free(e->worker_of);
	e->worker_of = map;
	e->n_workers = n_workers;
	return route_policy_set_workers(e->policy, map, n_workers);
}

void
engine_set_microbatch(struct engine *e, bool on, bool cobatch)
{
	e->mb_on = on;
	e->cobatch = cobatch;
}

const struct engine_mb_stats *
engine_mb_stats(const struct engine *e)
{
	return &e->mbst;
}

void
engine_set_affinity(struct engine *e, struct affinity *a)
{
	e->aff = a;
}

int
engine_set_prefetch(struct engine *e, bool on)
{
	uint32_t E = e->m->hp.n_expert;

	if (on && e->pf_mask == NULL) {
		e->pf_mask = malloc(E);
		e->pf_list = malloc(E * sizeof(*e->pf_list));
		if (e->pf_mask == NULL || e->pf_list == NULL) {
			free(e->pf_mask);
			free(e->pf_list);
			e->pf_mask = NULL;
			e->pf_list = NULL;
			return EPMOE_ENOMEM;
		}
	}
	e->prefetch = on;
	return 0;
}

/* The experts of layer il + 1 that micro-batch mb's tokens will likely
 * use, now that the gate of il has decided, to the backend's hint. */
static void
prefetch_hint(struct engine *e, struct eng_mb *mb, uint32_t il)
{
	const struct model_hparams *hp = &e->m->hp;
	uint32_t n = 0;

	if (!e->prefetch || e->aff == NULL || e->experts->hint == NULL ||
	        il + 1 >= hp->n_layer)
		return;
	if (affinity_next(e->aff, il, &mb->a, mb->r0, hp->n_expert_used, e->pf_mask) > 0)
		for (uint32_t f = 0; f < hp->n_expert; f++)
			if (e->pf_mask[f])
				e->pf_list[n++] = f;
	e->experts->hint(e->experts, mb->idx, il + 1, e->pf_list, n);
}

void
engine_set_route_observer(struct engine *e, engine_route_fn fn, void *ud)
{
	e->route_obs = fn;
	e->route_obs_ud = ud;
}

const struct engine_timing *
engine_timing(const struct engine *e)
{
	return &e->timing;
}

void
engine_timing_reset(struct engine *e)
{
	memset(&e->timing, 0, sizeof(e->timing));
}

/* ---- sequences ---- */

int
eng_seq_new(struct engine *e, struct eng_seq **out)
{
	struct eng_seq *s;
	uint32_t L = e->m->hp.n_layer;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return EPMOE_ENOMEM;
	s->n_layer = L;
	s->k = calloc(L, sizeof(void *));
	s->v = calloc(L, sizeof(void *));
	if (!s->k || !s->v) {
		eng_seq_free(s);
		return EPMOE_ENOMEM;
	}
	*out = s;
	return 0;
}

void
eng_seq_free(struct eng_seq *s)
{
	if (s == NULL)
		return;
	for (uint32_t i = 0; s->k && s->v && i < s->n_layer; i++) {
		free(s->k[i]);
		free(s->v[i]);
	}
	free(s->k);
	free(s->v);
	free(s);
}

size_t
engine_kv_bytes(const struct engine *e, uint32_t n_pos)
{
	const struct model_hparams *hp = &e->m->hp;
	return (size_t)2 * hp->n_layer * n_pos * hp->n_head_kv * hp->head_dim *
	        e->kv_es;
}

int
eng_seq_reserve(struct engine *e, struct eng_seq *s, uint32_t n_pos)
{
	const struct model_hparams *hp = &e->m->hp;
	size_t row = (size_t)hp->n_head_kv * hp->head_dim * e->kv_es;
	uint32_t cap;

	if (n_pos <= s->cap)
		return 0;
	if (n_pos > e->n_ctx)
		return EPMOE_ERANGE;
	cap = s->cap ? s->cap : 64;
	while (cap < n_pos)
		cap *= 2;
	if (cap > e->n_ctx)
		cap = e->n_ctx;
	for (uint32_t i = 0; i < s->n_layer; i++) {
		void *k = realloc(s->k[i], cap * row);
		if (k == NULL)
			return EPMOE_ENOMEM;
		s->k[i] = k;
		void *v = realloc(s->v[i], cap * row);
		if (v == NULL)
			return EPMOE_ENOMEM;
		s->v[i] = v;
	}
	s->cap = cap;
	return 0;
}

void
eng_seq_truncate(struct eng_seq *s, uint32_t n_pos)
{
	if (n_pos < s->n_pos)
		s->n_pos = n_pos;
}

/* ---- scratch ---- */

/* Step scratch (contents not kept), 64-byte aligned: the product kernels
 * load whole cache lines of it. */
static int
grow_f(float **p, size_t n)
{
	float *q = aligned_alloc(64, (n * sizeof(float) + 127) & ~(size_t)63);
	if (q == NULL)
		return EPMOE_ENOMEM;
	free(*p);
	*p = q;
	return 0;
}

static int
grow_step(struct engine *e, uint32_t T, uint32_t n_items)
{
	const struct model_hparams *hp = &e->m->hp;
	size_t d = hp->n_embd, qd = (size_t)hp->n_head * hp->head_dim;
	size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
	size_t fs = hp->n_ff_shexp;
	int rc;

	if (T > e->cap_t) {
		size_t big = d > qd ? d : qd;
		if ((rc = grow_f(&e->x, T * d)) || (rc = grow_f(&e->xn, T * d)) ||
		        (rc = grow_f(&e->q, T * qd)) || (rc = grow_f(&e->k, T * kvd)) ||
		        (rc = grow_f(&e->v, T * kvd)) || (rc = grow_f(&e->att, T * qd)) ||
		        (rc = grow_f(&e->tmp, T * big)) ||
		        (rc = grow_f(&e->gate, T * hp->n_expert)) ||
		        (rc = grow_f(&e->moe, T * d)))
			return rc;
		if (fs && ((rc = grow_f(&e->sh_g, T * fs)) || (rc = grow_f(&e->sh_u, T * fs))))
			return rc;
		int32_t *pos = realloc(e->pos, T * sizeof(int32_t));
		if (pos == NULL)
			return EPMOE_ENOMEM;
		e->pos = pos;
		uint32_t *ri = realloc(e->row_item, T * sizeof(uint32_t));
		if (ri == NULL)
			return EPMOE_ENOMEM;
		e->row_item = ri;
		e->cap_t = T;
	}
	return 0;
}

/* Routing scratch for a micro-batch of up to T rows and n_items items. */
static int
grow_rs(struct engine *e, struct eng_rs *rs, uint32_t T, uint32_t n_items)
{
	int rc;

	if (T > rs->cap_t) {
		if ((rc = grow_f(&rs->gate_perm, (size_t)T * e->m->hp.n_expert)) != 0)
			return rc;
		int32_t *perm = realloc(rs->perm, T * sizeof(int32_t));
		if (perm == NULL)
			return EPMOE_ENOMEM;
		rs->perm = perm;
		uint32_t *op = realloc(rs->off_perm, (T + 1) * sizeof(uint32_t));
		if (op == NULL)
			return EPMOE_ENOMEM;
		rs->off_perm = op;
		uint32_t *lo = realloc(rs->pair_lo, T * sizeof(uint32_t));
		if (lo == NULL)
			return EPMOE_ENOMEM;
		rs->pair_lo = lo;
		uint32_t *hi = realloc(rs->pair_hi, T * sizeof(uint32_t));
		if (hi == NULL)
			return EPMOE_ENOMEM;
		rs->pair_hi = hi;
		rs->cap_t = T;
	}
	if (n_items > rs->cap_items) {
		struct route_group *g = realloc(rs->groups, n_items * sizeof(*g));
		if (g == NULL)
			return EPMOE_ENOMEM;
		rs->groups = g;
		struct route_policy **p = realloc(rs->pols, n_items * sizeof(*p));
		if (p == NULL)
			return EPMOE_ENOMEM;
		rs->pols = p;
		rs->cap_items = n_items;
	}
	return 0;
}

/* ---- attention ---- */

struct att_job {
	struct engine *e;
	struct eng_item *items;
	uint32_t n_items;
	const uint32_t *item_row0; /* first row of each item */
	uint32_t layer;
	atomic_uint next;          /* next task to take */
	int rc;
};

/* Attention of one item's rows for one head (see op_attn_head).  An F16
 * cache is converted for the head into f32 scratch after the scores
 * (s_buf holds att_rows * att_pos + 2 * att_pos * hd floats). */
static int
att_head(struct engine *e, const struct eng_item *it, uint32_t row0,
        uint32_t layer, uint32_t h, float *s_buf)
{
	const struct model_hparams *hp = &e->m->hp;
	uint32_t hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
	uint32_t g = h / (nh / nkv), P = it->seq->n_pos + it->n_tokens;
	size_t qs = (size_t)nh * hd, ks = (size_t)nkv * hd;
	const float *K, *V;
	int ldk = (int)ks;

	if (e->kv_type == DTYPE_F16) {
		const uint16_t *k16 = (const uint16_t *)it->seq->k[layer] + (size_t)g * hd;
		const uint16_t *v16 = (const uint16_t *)it->seq->v[layer] + (size_t)g * hd;
		size_t att_rows = OP_ATT_QCHUNK > nh / nkv ? OP_ATT_QCHUNK : nh / nkv;
		float *kf = s_buf + att_rows * e->att_pos, *vf = kf + (size_t)e->att_pos * hd;
		for (uint32_t j = 0; j < P; j++) {
			dtype_row_to_f32(DTYPE_F16, k16 + (size_t)j * ks, kf + (size_t)j * hd, hd);
			dtype_row_to_f32(DTYPE_F16, v16 + (size_t)j * ks, vf + (size_t)j * hd, hd);
		}
		K = kf;
		V = vf;
		ldk = (int)hd;
	} else {
		K = (const float *)it->seq->k[layer] + (size_t)g * hd;
		V = (const float *)it->seq->v[layer] + (size_t)g * hd;
	}
	op_attn_head(e->q + (size_t)row0 * qs + (size_t)h * hd, (int)qs, K, V, ldk,
	        (int)it->n_tokens, (int)it->seq->n_pos, (int)hd,
	        e->att + (size_t)row0 * qs + (size_t)h * hd, (int)qs, s_buf);
	return 0;
}

/* Decode items take one task per (item, kv head): the query heads sharing
 * that kv head in one product; prefill items one task per (item, head).
 * Threads take the next task from a counter (a thread that loses its core
 * on a shared machine does not hold the others up). */
static void
att_worker(void *ctx, int ith, int nth)
{
	struct att_job *j = ctx;
	struct engine *e = j->e;
	const struct model_hparams *hp = &e->m->hp;
	uint32_t nh = hp->n_head, nkv = hp->n_head_kv, rep = nh / nkv, hd = hp->head_dim;
	uint32_t per_item = nh; /* tasks per item: the max of the two kinds */
	uint32_t n_tasks = j->n_items * per_item;
	float *s_buf = e->att_s[ith];

	(void)ith;
	(void)nth;
	for (uint32_t t; (t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < n_tasks;) {
		uint32_t i = t / per_item, h = t % per_item;
		const struct eng_item *it = &j->items[i];
		if (it->n_tokens == 1) {
			if (h >= nkv)
				continue;
			size_t qs = (size_t)nh * hd, ks = (size_t)nkv * hd;
			size_t off = (size_t)h * hd * e->kv_es;
			uint32_t row = j->item_row0[i];
			op_attn_decode(e->q + (size_t)row * qs + (size_t)h * rep * hd, (int)rep,
			        (const uint8_t *)it->seq->k[j->layer] + off,
			        (const uint8_t *)it->seq->v[j->layer] + off, e->kv_type, ks,
			        (int)it->seq->n_pos + 1, (int)hd,
			        e->att + (size_t)row * qs + (size_t)h * rep * hd, s_buf);
			continue;
		}
		int rc = att_head(e, it, j->item_row0[i], j->layer, h, s_buf);
		if (rc)
			j->rc = rc;
	}
}

/* Adds bias b [n] to each of T rows of y (stride n). */
static void
add_bias(float *y, const float *b, uint32_t T, size_t n)
{
	for (uint32_t t = 0; t < T; t++)
		for (size_t i = 0; i < n; i++)
			y[t * n + i] += b[i];
}

static int
attention_block(struct engine *e, const struct eng_mb *mb, uint32_t il)
{
	const struct model *m = e->m;
	const struct model_hparams *hp = &m->hp;
	const struct model_layer *l = &m->layers[il];
	uint32_t d = hp->n_embd, hd = hp->head_dim, T = mb->T, R = mb->r0;
	size_t qd = (size_t)hp->n_head * hd, kvd = (size_t)hp->n_head_kv * hd;
	struct eng_item *items = mb->items;
	uint32_t n_items = mb->n_items;
	const uint32_t *item_row0 = mb->item_row0;
	/* this micro-batch's rows of the step's buffers */
	float *x = e->x + (size_t)R * d, *xn = e->xn + (size_t)R * d;
	float *q = e->q + R * qd, *k = e->k + R * kvd, *v = e->v + R * kvd;
	float *att = e->att + R * qd, *tmp = e->tmp + (size_t)R * d;
	const int32_t *pos = e->pos + R;
	struct att_job job;
	int rc;

	for (uint32_t t = 0; t < T; t++)
		op_rmsnorm(xn + (size_t)t * d, x + (size_t)t * d, l->attn_norm,
		        (int)d, hp->rms_eps);
	{
		const struct tmat *W[3] = { &l->wq, &l->wk, &l->wv };
		float *Y[3] = { q, k, v };
		int ldy[3] = { (int)qd, (int)kvd, (int)kvd };
		if ((rc = op_matmul_multi(e->pool, 3, W, xn, (int)T, (int)d, Y, ldy)) != 0)
			return rc;
	}
	if (l->bq)
		add_bias(q, l->bq, T, qd);
	if (l->bk)
		add_bias(k, l->bk, T, kvd);
	if (l->bv)
		add_bias(v, l->bv, T, kvd);
	if (l->q_norm) {
		for (uint32_t t = 0; t < T; t++) {
			float *qr = q + t * qd, *kr = k + t * kvd;
			if (l->qk_norm_per_head) {
				for (uint32_t h = 0; h < hp->n_head; h++)
					op_rmsnorm(qr + h * hd, qr + h * hd, l->q_norm, (int)hd, hp->rms_eps);
				for (uint32_t h = 0; h < hp->n_head_kv; h++)
					op_rmsnorm(kr + h * hd, kr + h * hd, l->k_norm, (int)hd, hp->rms_eps);
			} else {
				op_rmsnorm(qr, qr, l->q_norm, (int)qd, hp->rms_eps);
				op_rmsnorm(kr, kr, l->k_norm, (int)kvd, hp->rms_eps);
			}
		}
	}
	for (uint32_t t = 0; t < T; t++) {
		op_rope(q + t * qd, (int)hp->n_head, (int)hd, (int)hp->n_rot, pos[t],
		        m->rope_freq, hp->rope_neox);
		op_rope(k + t * kvd, (int)hp->n_head_kv, (int)hd, (int)hp->n_rot,
		        pos[t], m->rope_freq, hp->rope_neox);
	}
	/* append k, v to each sequence's cache (rounded to F16 for an F16
	 * cache, as llama.cpp's default cache does) */
	for (uint32_t i = 0; i < n_items; i++) {
		struct eng_seq *s = items[i].seq;
		uint32_t r0 = item_row0[i];
		uint8_t *kd = (uint8_t *)s->k[il] + (size_t)s->n_pos * kvd * e->kv_es;
		uint8_t *vd = (uint8_t *)s->v[il] + (size_t)s->n_pos * kvd * e->kv_es;
		if (e->kv_type == DTYPE_F32) {
			memcpy(kd, e->k + (size_t)r0 * kvd, items[i].n_tokens * kvd * sizeof(float));
			memcpy(vd, e->v + (size_t)r0 * kvd, items[i].n_tokens * kvd * sizeof(float));
			continue;
		}
		dtype_row_from_f32(DTYPE_F16, e->k + (size_t)r0 * kvd, kd, items[i].n_tokens * kvd);
		dtype_row_from_f32(DTYPE_F16, e->v + (size_t)r0 * kvd, vd, items[i].n_tokens * kvd);
	}
	job.e = e;
	job.items = items;
	job.n_items = n_items;
	job.item_row0 = item_row0;
	job.layer = il;
	job.rc = 0;
	atomic_init(&job.next, 0);
	pool_run(e->pool, att_worker, &job);
	if (job.rc)
		return job.rc;
	if ((rc = op_matmul(e->pool, &l->wo, att, (int)T, (int)qd, tmp, (int)d)))
		return rc;
	for (size_t i = 0; i < (size_t)T * d; i++)
		x[i] += tmp[i];
	return 0;
}

/* ---- MoE block ---- */

static int
grow_pairs(struct eng_rs *rs, size_t n)
{
	if (n <= rs->cap_pairs)
		return 0;
	int32_t *ex = realloc(rs->exp_perm, n * sizeof(int32_t));
	if (ex == NULL)
		return EPMOE_ENOMEM;
	rs->exp_perm = ex;
	float *w = realloc(rs->w_perm, n * sizeof(float));
	if (w == NULL)
		return EPMOE_ENOMEM;
	rs->w_perm = w;
	rs->cap_pairs = n;
	return 0;
}

/* Calls the policy on rows described by groups (coordinates of S) and
 * feeds the observer. */
static int
route_call(struct engine *e, struct eng_rs *rs, struct route_policy *p,
        uint32_t il, const float *S, uint32_t T, const struct route_group *g,
        int n_groups)
{
	struct route_info info;
	double t0 = clock_now();
	int rc = route_run(p, (int)il, e->n_steps, S, T, g, n_groups, &rs->rout, &info);

	if (rc == 0 && e->route_obs)
		e->route_obs(e->route_obs_ud, p, il, T, &info, clock_now() - t0);
	return rc;
}

/* Routes the T rows of a micro-batch (S: its rows of the gate logits).
 * Every prefill item is its own routing group; the decode rows that
 * share a policy form one group.  With one policy in the step (the usual
 * case) the policy sees the rows in place; otherwise the rows of each
 * policy are gathered, routed, and the results put back into one CSR in
 * row order. */
static int
route_step(struct engine *e, struct eng_mb *mb, const float *S, uint32_t il)
{
	struct eng_rs *rs = mb->rs;
	struct eng_item *items = mb->items;
	uint32_t n_items = mb->n_items, T = mb->T, R = mb->r0;
	uint32_t E = e->m->hp.n_expert, n_pol = 0;
	struct route_group *g = rs->groups;
	struct moe_assign *a = &mb->a;
	int rc;

	for (uint32_t i = 0; i < n_items; i++) {
		struct route_policy *p = items[i].policy ? items[i].policy : e->policy;
		uint32_t j;
		for (j = 0; j < n_pol && rs->pols[j] != p; j++)
			;
		if (j == n_pol)
			rs->pols[n_pol++] = p;
	}
	if (n_pol == 1) {
		for (uint32_t i = 0; i < n_items; i++)
			g[i] = (struct route_group){ mb->item_row0[i] - R, items[i].n_tokens,
				items[i].decode ? ROUTE_GROUP_DECODE : ROUTE_GROUP_PREFILL };
		if ((rc = route_call(e, rs, rs->pols[0], il, S, T, g, (int)n_items)) != 0)
			return rc;
		a->n_tok = T;
		a->off = rs->rout.off;
		a->expert = rs->rout.expert;
		a->weight = rs->rout.weight;
		return 0;
	}
	/* several policies: route each policy's rows separately */
	uint32_t *lo = rs->pair_lo, *hi = rs->pair_hi, *off = rs->off_perm;
	size_t base = 0;
	for (uint32_t pi = 0; pi < n_pol; pi++) {
		uint32_t np = 0, ng = 0;
		for (uint32_t i = 0; i < n_items; i++) {
			struct route_policy *p = items[i].policy ? items[i].policy : e->policy;
			if (p != rs->pols[pi])
				continue;
			g[ng++] = (struct route_group){ np, items[i].n_tokens,
				items[i].decode ? ROUTE_GROUP_DECODE : ROUTE_GROUP_PREFILL };
			for (uint32_t r = 0; r < items[i].n_tokens; r++) {
				uint32_t row = mb->item_row0[i] - R + r;
				rs->perm[np] = (int32_t)row;
				memcpy(rs->gate_perm + (size_t)np * E, S + (size_t)row * E,
				        E * sizeof(float));
				np++;
			}
		}
		if ((rc = route_call(e, rs, rs->pols[pi], il, rs->gate_perm, np, g, (int)ng)) != 0)
			return rc;
		size_t n_pairs = rs->rout.off[np];
		if ((rc = grow_pairs(rs, base + n_pairs)) != 0)
			return rc;
		memcpy(rs->exp_perm + base, rs->rout.expert, n_pairs * sizeof(int32_t));
		memcpy(rs->w_perm + base, rs->rout.weight, n_pairs * sizeof(float));
		for (uint32_t t = 0; t < np; t++) {
			lo[rs->perm[t]] = (uint32_t)(base + rs->rout.off[t]);
			hi[rs->perm[t]] = (uint32_t)(base + rs->rout.off[t + 1]);
		}
		base += n_pairs;
	}
	/* one CSR in row order, stored after the per-policy results */
	off[0] = 0;
	for (uint32_t r = 0; r < T; r++)
		off[r + 1] = off[r] + (hi[r] - lo[r]);
	if ((rc = grow_pairs(rs, 2 * base)) != 0)
		return rc;
	for (uint32_t r = 0; r < T; r++)
		for (uint32_t p = lo[r], d = off[r]; p < hi[r]; p++, d++) {
			rs->exp_perm[base + d] = rs->exp_perm[p];
			rs->w_perm[base + d] = rs->w_perm[p];
		}
	a->n_tok = T;
	a->off = off;
	a->expert = rs->exp_perm + base;
	a->weight = rs->w_perm + base;
	return 0;
}

/* After the backend said EPMOE_EUNAVAIL for a micro-batch: the items
 * (orig: the caller's array; row_item holds indices into it) with a
 * token it could not serve.  The micro-batch's gate logits are free
 * scratch of at least T bytes here. */
static void
mark_unserved(struct engine *e, const struct eng_mb *mb, struct eng_item *orig)
{
	uint8_t *mask = (uint8_t *)(e->gate + (size_t)mb->r0 * e->m->hp.n_expert);

	if (e->experts->unserved == NULL)
		return;
	memset(mask, 0, mb->T);
	if (e->experts->unserved(e->experts, mask, mb->T) == 0)
		return;
	for (uint32_t r = 0; r < mb->T; r++)
		if (mask[r])
			orig[e->row_item[mb->r0 + r]].unserved = true;
}

/* Counts the workers the micro-batches' routing touches at layer il
 * (their assignments) and how many both touch. */
static void
count_workers(struct engine *e, struct eng_mb *mbs, int n_mb, uint32_t il)
{
	uint32_t W = (uint32_t)e->n_workers, E = e->m->hp.n_expert;
	const uint16_t *map = e->worker_of + (size_t)il * E;

	if (e->worker_of == NULL || W == 0 || e->wseen == NULL)
		return;
	memset(e->wseen, 0, 2 * (size_t)W);
	for (int h = 0; h < n_mb; h++) {
		const struct moe_assign *a = &mbs[h].a;
		for (uint32_t p = 0; p < a->off[a->n_tok]; p++) {
			uint16_t w = map[a->expert[p]];
			if (w < W)
				e->wseen[h * W + w] = 1;
		}
	}
	for (uint32_t w = 0; w < W; w++) {
		e->mbst.workers_mb[0] += e->wseen[w];
		e->mbst.workers_mb[1] += e->wseen[W + w];
		e->mbst.workers_both += e->wseen[w] & e->wseen[W + w];
	}
	e->mbst.layers++;
}

/* Both micro-batches' routing as one CSR over the step's rows (they are
 * adjacent: batch 0 first), for the affinity model. */
static int
merge_assign(struct engine *e, const struct eng_mb *mbs, struct moe_assign *out)
{
	const struct moe_assign *a0 = &mbs[0].a, *a1 = &mbs[1].a;
	uint32_t T = a0->n_tok + a1->n_tok;
	size_t n0 = a0->off[a0->n_tok], n1 = a1->off[a1->n_tok];

	if (n0 + n1 > e->cap_aff || e->aff_exp == NULL) {
		size_t c = n0 + n1 > e->cap_t * 2u ? n0 + n1 : e->cap_t * 2u;
		int32_t *ex = realloc(e->aff_exp, c * sizeof(*ex));
		if (ex == NULL)
			return EPMOE_ENOMEM;
		e->aff_exp = ex;
		float *w = realloc(e->aff_w, c * sizeof(*w));
		if (w == NULL)
			return EPMOE_ENOMEM;
		e->aff_w = w;
		e->cap_aff = c;
	}
	if (T + 1 > e->cap_aff_off) {
		uint32_t *o = realloc(e->aff_off, ((size_t)e->cap_t + 1) * sizeof(*o));
		if (o == NULL)
			return EPMOE_ENOMEM;
		e->aff_off = o;
		e->cap_aff_off = e->cap_t + 1;
	}
	uint32_t *off = e->aff_off;
	for (uint32_t t = 0; t <= a0->n_tok; t++)
		off[t] = a0->off[t];
	for (uint32_t t = 1; t <= a1->n_tok; t++)
		off[a0->n_tok + t] = (uint32_t)n0 + a1->off[t];
	memcpy(e->aff_exp, a0->expert, n0 * sizeof(int32_t));
	memcpy(e->aff_exp + n0, a1->expert, n1 * sizeof(int32_t));
	memcpy(e->aff_w, a0->weight, n0 * sizeof(float));
	memcpy(e->aff_w + n0, a1->weight, n1 * sizeof(float));
	*out = (struct moe_assign){ T, off, e->aff_exp, e->aff_w };
	return 0;
}

/* The first half of a layer's MoE block for micro-batch mb: ffn norm,
 * gate, routing; then its experts are started (async: submit, the reply
 * is collected by moe_back) or run.  The affinity model is fed by the
 * caller (it sees the whole step). */
static int
moe_front(struct engine *e, struct eng_mb *mb, uint32_t il, bool async)
{
	const struct model *m = e->m;
	const struct model_hparams *hp = &m->hp;
	const struct model_layer *l = &m->layers[il];
	uint32_t d = hp->n_embd, E = hp->n_expert, T = mb->T, R = mb->r0;
	float *x = e->x + (size_t)R * d, *xn = e->xn + (size_t)R * d;
	float *S = e->gate + (size_t)R * E;
	double t0, t1, t2;
	int rc;

	t0 = clock_now();
	for (uint32_t t = 0; t < T; t++)
		op_rmsnorm(xn + (size_t)t * d, x + (size_t)t * d, l->ffn_norm,
		        (int)d, hp->rms_eps);
	/* S [T, E] = xn · Wgateᵀ */
	if ((rc = op_matmul(e->pool, &l->gate_inp, xn, (int)T, (int)d, S, (int)E)))
		return rc;
	t1 = clock_now();
	if ((rc = route_step(e, mb, S, il)) != 0)
		return rc;
	t2 = clock_now();
	e->timing.gate += t1 - t0;
	e->timing.route += t2 - t1;
	prefetch_hint(e, mb, il);
	if (async)
		return e->experts->submit(e->experts, mb->idx, il, xn, &mb->a,
		        e->moe + (size_t)R * d);
	rc = e->experts->run(e->experts, il, xn, &mb->a, e->moe + (size_t)R * d);
	e->timing.moe += clock_now() - t2;
	return rc;
}

/* The second half: the experts' output (async: waited for here), the
 * shared expert and the residual.  A failure marks the items of orig
 * whose tokens found no live expert. */
static int
moe_back(struct engine *e, struct eng_mb *mb, uint32_t il, bool async,
        int front_rc, struct eng_item *orig)
{
	const struct model *m = e->m;
	const struct model_hparams *hp = &m->hp;
	const struct model_layer *l = &m->layers[il];
	uint32_t d = hp->n_embd, T = mb->T, R = mb->r0;
	float *x = e->x + (size_t)R * d, *xn = e->xn + (size_t)R * d;
	float *moe = e->moe + (size_t)R * d, *tmp = e->tmp + (size_t)R * d;
	double t3 = clock_now();
	int rc = front_rc;

	if (async) {
		rc = e->experts->wait(e->experts, mb->idx);
		e->timing.moe += clock_now() - t3;
		t3 = clock_now();
	}
	if (rc != 0) {
		if (rc == EPMOE_EUNAVAIL)
			mark_unserved(e, mb, orig);
		return rc;
	}
	if (l->has_shexp) {
		uint32_t fs = hp->n_ff_shexp;
		const struct tmat *W[2] = { &l->gate_shexp, &l->up_shexp };
		float *sg = e->sh_g + (size_t)R * fs, *su = e->sh_u + (size_t)R * fs;
		float *Y[2] = { sg, su };
		int ldy[2] = { (int)fs, (int)fs };
		if ((rc = op_matmul_multi(e->pool, 2, W, xn, (int)T, (int)d, Y, ldy)) != 0)
			return rc;
		op_swiglu(sg, su, (int)((size_t)T * fs));
		if ((rc = op_matmul(e->pool, &l->down_shexp, sg, (int)T, (int)fs, tmp, (int)d)))
			return rc;
		for (uint32_t t = 0; t < T; t++) {
			float gsh = l->shexp_gate ?
			        fmath_sigmoid(op_dot(xn + (size_t)t * d, l->shexp_gate, (int)d)) : 1.0f;
			float *y = tmp + (size_t)t * d, *mo = moe + (size_t)t * d;
			for (uint32_t c = 0; c < d; c++)
				mo[c] += gsh * y[c];
		}
		e->timing.shexp += clock_now() - t3;
	}
	for (size_t i = 0; i < (size_t)T * d; i++)
		x[i] += moe[i];
	return 0;
}

/* One batch, one layer: attention, then the MoE block through run(). */
static int
layer_single(struct engine *e, struct eng_mb *mb, uint32_t il,
        struct eng_item *orig)
{
	double t0 = clock_now();
	int rc;

	if ((rc = attention_block(e, mb, il)) != 0)
		return rc;
	e->timing.attn += clock_now() - t0;
	/* the prediction is made before the gate, from what is known then */
	if (e->aff)
		affinity_predict(e->aff, il, e->m->hp.n_expert_used);
	rc = moe_front(e, mb, il, false);
	if (rc == 0 && e->aff)
		affinity_observe(e->aff, il, &mb->a);
	return moe_back(e, mb, il, false, rc, orig);
}

/* ---- the step ---- */

static int
validate(struct engine *e, struct eng_item *items, uint32_t n_items,
        uint32_t *T_out)
{
	uint64_t T = 0;

	if (n_items == 0)
		return EPMOE_EINVAL;
	for (uint32_t i = 0; i < n_items; i++) {
		const struct eng_item *it = &items[i];
		if (it->seq == NULL || it->n_tokens == 0 || it->tokens == NULL)
			return EPMOE_EINVAL;
		if (it->logits != ENG_LOGITS_NONE && it->out == NULL)
			return EPMOE_EINVAL;
		if ((uint64_t)it->seq->n_pos + it->n_tokens > e->n_ctx)
			return EPMOE_ERANGE;
		for (uint32_t t = 0; t < it->n_tokens; t++)
			if (it->tokens[t] < 0 || (uint32_t)it->tokens[t] >= e->m->hp.n_vocab)
				return EPMOE_EINVAL;
		for (uint32_t j = 0; j < i; j++)
			if (items[j].seq == it->seq)
				return EPMOE_EINVAL;
		T += it->n_tokens;
	}
	if (T > (1u << 20))
		return EPMOE_ERANGE;
	*T_out = (uint32_t)T;
	return 0;
}

/* Attention and the MoE front of micro-batch mb at layer il, its experts
 * left in flight (*out set once they are). */
static int
front_async(struct engine *e, struct eng_mb *mb, uint32_t il, bool *out)
{
	double t0 = clock_now();
	int rc;

	if ((rc = attention_block(e, mb, il)) != 0)
		return rc;
	e->timing.attn += clock_now() - t0;
	/* predictions for every row of the step, before either gate */
	if (e->aff && mb->idx == 0)
		affinity_predict(e->aff, il, e->m->hp.n_expert_used);
	if ((rc = moe_front(e, mb, il, true)) == 0)
		*out = true;
	return rc;
}

/* The layers of a step in two micro-batches, ping-pong: while one's
 * experts are on the workers the router runs the other's attention,
 * gate and routing.
 *   front(A,0); for l: front(B,l); back(A,l); front(A,l+1); back(B,l)
 * Whatever fails, nothing is left in flight on return. */
static int
step_split(struct engine *e, struct eng_mb *mbs, struct eng_item *orig)
{
	uint32_t L = e->m->hp.n_layer;
	bool out_a = false, out_b = false;
	int rc, r2;

	rc = front_async(e, &mbs[0], 0, &out_a);
	for (uint32_t il = 0; rc == 0 && il < L; il++) {
		rc = front_async(e, &mbs[1], il, &out_b);
		if (rc == 0 && e->aff) {
			struct moe_assign all;
			if ((rc = merge_assign(e, mbs, &all)) == 0)
				affinity_observe(e->aff, il, &all);
		}
		if (rc == 0)
			count_workers(e, mbs, 2, il);
		if (out_a) {
			out_a = false;
			r2 = moe_back(e, &mbs[0], il, true, 0, orig);
			rc = rc ? rc : r2;
		}
		if (rc == 0 && il + 1 < L)
			rc = front_async(e, &mbs[0], il + 1, &out_a);
		if (out_b) {
			out_b = false;
			r2 = moe_back(e, &mbs[1], il, true, 0, orig);
			rc = rc ? rc : r2;
		}
	}
	if (out_a && e->experts->wait(e->experts, 0) == EPMOE_EUNAVAIL)
		mark_unserved(e, &mbs[0], orig);
	if (out_b && e->experts->wait(e->experts, 1) == EPMOE_EUNAVAIL)
		mark_unserved(e, &mbs[1], orig);
	return rc;
}

/* Whether a policy's choice for a token is independent of the other
 * tokens of the call (and of how many calls a step makes), so that
 * routing two halves separately equals routing them together. */
static bool
splittable(const struct engine *e, const struct eng_item *it)
{
	const struct route_policy *p = it->policy ? it->policy : e->policy;
	enum route_kind k = route_policy_cfg(p)->kind;

	return k == ROUTE_NATIVE || k == ROUTE_TOPK;
}

/* Speculative co-batching: side[i] for each item so that each half's
 * predicted workers (the affinity model's usual experts of the item's
 * tokens at every layer, through the worker map) are few and the two
 * halves' differ, neither half above T/2 + T/8 tokens (or the lighter
 * side when an item fits neither). */
static void
cobatch_sides(struct engine *e, const struct eng_item *items, uint32_t n_items,
        uint32_t T, uint8_t *side)
{
	const struct model_hparams *hp = &e->m->hp;
	uint32_t W = (uint32_t)e->n_workers, tok[2] = { 0, 0 };
	uint32_t cap = (T + 1) / 2 + T / 8;
	double *sc = e->mb_score, *acc = e->mb_score + (size_t)n_items * W;

	memset(sc, 0, ((size_t)n_items + 2) * W * sizeof(double));
	for (uint32_t i = 0; i < n_items; i++) {
		const struct eng_item *it = &items[i];
		/* the last few tokens stand for a prompt chunk */
		uint32_t t0 = it->n_tokens > 4 ? it->n_tokens - 4 : 0;
		for (uint32_t t = t0; t < it->n_tokens; t++)
			for (uint32_t l = 0; l < hp->n_layer; l++) {
				int32_t ex[AFF_SLOTS];
				uint32_t n = affinity_token_top(e->aff, l, it->tokens[t], ex,
				        hp->n_expert_used < AFF_SLOTS ? hp->n_expert_used : AFF_SLOTS);
				for (uint32_t j = 0; j < n; j++) {
					uint16_t w = e->worker_of[(size_t)l * hp->n_expert + (uint32_t)ex[j]];
					if (w < W)
						sc[(size_t)i * W + w] += 1.0;
				}
			}
	}
	for (uint32_t i = 0; i < n_items; i++) {
		const double *v = sc + (size_t)i * W;
		double pull[2] = { 0, 0 };
		int s;
		for (uint32_t w = 0; w < W; w++) {
			pull[0] += v[w] * acc[w];
			pull[1] += v[w] * acc[W + w];
		}
		if (pull[0] != pull[1])
			s = pull[0] > pull[1] ? 0 : 1;
		else
			s = tok[0] <= tok[1] ? 0 : 1;
		if (tok[s] + items[i].n_tokens > cap)
			s = !s;
		if (tok[s] + items[i].n_tokens > cap)
			s = tok[0] <= tok[1] ? 0 : 1;
		side[i] = (uint8_t)s;
		tok[s] += items[i].n_tokens;
		for (uint32_t w = 0; w < W; w++)
			acc[(size_t)s * W + w] += v[w];
	}
}

/* Co-batching scores: (n_items + 2) x n_workers doubles. */
static int
grow_score(struct engine *e, uint32_t n_items)
{
	size_t n = ((size_t)n_items + 2) * (size_t)e->n_workers;

	if (n <= e->cap_score)
		return 0;
	double *sc = realloc(e->mb_score, n * sizeof(*sc));
	if (sc == NULL)
		return EPMOE_ENOMEM;
	e->mb_score = sc;
	e->cap_score = n;
	return 0;
}

int
engine_cobatch_plan(struct engine *e, const struct eng_item *items,
        uint32_t n_items, uint8_t *side)
{
	uint32_t T = 0;
	int rc;

	if (e->aff == NULL || e->worker_of == NULL || e->n_workers <= 0)
		return EPMOE_EINVAL;
	if ((rc = grow_score(e, n_items)) != 0)
		return rc;
	for (uint32_t i = 0; i < n_items; i++)
		T += items[i].n_tokens;
	cobatch_sides(e, items, n_items, T, side);
	return 0;
}

/* Decides whether the step runs as two micro-batches and how the items
 * are split: fills mb_items/mb_orig with the first half's items, then
 * the second's (each in the caller's order) and returns the first
 * half's count, or 0 to run one batch. */
static uint32_t
plan_split(struct engine *e, struct eng_item *items, uint32_t n_items,
        uint32_t T)
{
	uint32_t tok[2] = { 0, 0 }, n0 = 0;
	uint8_t *side;

	if (!e->mb_on || n_items < 2 || e->experts->submit == NULL ||
	        e->experts->wait == NULL)
		return 0;
	for (uint32_t i = 0; i < n_items; i++)
		if (!splittable(e, &items[i]))
			return 0;
	if (n_items > e->cap_mb) {
		struct eng_item *it = realloc(e->mb_items, n_items * sizeof(*it));
		if (it == NULL)
			return 0;
		e->mb_items = it;
		uint32_t *o = realloc(e->mb_orig, n_items * sizeof(*o));
		if (o == NULL)
			return 0;
		e->mb_orig = o;
		uint32_t *r = realloc(e->mb_row0, n_items * sizeof(*r));
		if (r == NULL)
			return 0;
		e->mb_row0 = r;
		e->cap_mb = n_items;
	}
	if (e->n_workers > 0 && grow_score(e, n_items) != 0)
		return 0;
	/* the side of each item, kept in mb_row0 until the copy below */
	side = (uint8_t *)e->mb_row0;
	if (e->cobatch && e->aff && e->worker_of && e->n_workers > 0) {
		cobatch_sides(e, items, n_items, T, side);
		e->mbst.cobatched++;
	} else {
		for (uint32_t i = 0; i < n_items; i++) {
			side[i] = tok[0] <= tok[1] ? 0 : 1;
			tok[side[i]] += items[i].n_tokens;
		}
	}
	for (uint32_t i = 0; i < n_items; i++)
		n0 += side[i] == 0;
	if (n0 == 0 || n0 == n_items)
		return 0;
	for (uint32_t s = 0, k = 0; s < 2; s++)
		for (uint32_t i = 0; i < n_items; i++)
			if (side[i] == s)
				e->mb_orig[k++] = i;
	for (uint32_t k = 0; k < n_items; k++)
		e->mb_items[k] = items[e->mb_orig[k]];
	return n0;
}

int
engine_step(struct engine *e, struct eng_item *items, uint32_t n_items)
{
	const struct model *m = e->m;
	const struct model_hparams *hp = &m->hp;
	uint32_t d = hp->n_embd, V = hp->n_vocab, T, n_out = 0;
	uint32_t row0_small[64], *item_row0 = row0_small, n0;
	double t_start = clock_now(), t0;
	struct eng_item *orig = items;
	int rc;

	for (uint32_t i = 0; i < n_items; i++)
		items[i].unserved = false;
	if ((rc = validate(e, items, n_items, &T)) != 0)
		return rc;
	if ((rc = grow_step(e, T, n_items)) != 0 ||
	        (rc = grow_rs(e, &e->rs[0], T, n_items)) != 0)
		return rc;
	/* two micro-batches: the items reordered so each half's rows are
	 * contiguous (row_item keeps the caller's index) */
	if ((n0 = plan_split(e, items, n_items, T)) != 0) {
		if ((rc = grow_rs(e, &e->rs[1], T, n_items)) != 0)
			return rc;
		items = e->mb_items;
	}
	if (n_items > 64 && (item_row0 = malloc(n_items * sizeof(uint32_t))) == NULL)
		return EPMOE_ENOMEM;
	size_t att_rows = OP_ATT_QCHUNK > hp->n_head / hp->n_head_kv ?
	        OP_ATT_QCHUNK : hp->n_head / hp->n_head_kv;
	/* attention scratch for the longest sequence of this step, grown by
	 * powers of two up to n_ctx: a long context costs memory only once a
	 * sequence gets that long.  Scores [att_rows, positions], then (F16
	 * cache) one head's keys and values in f32. */
	uint32_t max_pos = 1, cap_pos = 64;
	for (uint32_t i = 0; i < n_items; i++)
		if (items[i].seq->n_pos + items[i].n_tokens > max_pos)
			max_pos = items[i].seq->n_pos + items[i].n_tokens;
	while (cap_pos < max_pos)
		cap_pos *= 2;
	if (cap_pos > e->n_ctx)
		cap_pos = e->n_ctx;
	if (e->att_pos < max_pos) {
		size_t need = (att_rows + (e->kv_type == DTYPE_F16 ?
		        2 * (size_t)hp->head_dim : 0)) * cap_pos;
		for (int j = 0; j < pool_size(e->pool); j++) {
			free(e->att_s[j]);
			if ((e->att_s[j] = malloc(need * sizeof(float))) == NULL) {
				e->att_cap = 0;
				e->att_pos = 0;
				rc = EPMOE_ENOMEM;
				goto out;
			}
		}
		e->att_cap = need;
		e->att_pos = cap_pos;
	}
	for (uint32_t i = 0, r = 0; i < n_items; i++) {
		struct eng_item *it = &items[i];
		if ((rc = eng_seq_reserve(e, it->seq, it->seq->n_pos + it->n_tokens)) != 0)
			goto out;
		item_row0[i] = r;
		for (uint32_t t = 0; t < it->n_tokens; t++, r++) {
			e->pos[r] = (int32_t)(it->seq->n_pos + t);
			e->row_item[r] = n0 ? e->mb_orig[i] : i;
			if ((rc = model_embed(m, it->tokens[t], e->x + (size_t)r * d)) != 0)
				goto out;
		}
		n_out += it->logits == ENG_LOGITS_ALL ? it->n_tokens :
		        it->logits == ENG_LOGITS_LAST ? 1 : 0;
	}
	if (e->aff) {
		if (T > e->cap_row_tok) {
			int32_t *rt = realloc(e->row_tok, T * sizeof(*rt));
			if (rt == NULL) {
				rc = EPMOE_ENOMEM;
				goto out;
			}
			e->row_tok = rt;
			e->cap_row_tok = T;
		}
		for (uint32_t i = 0, r = 0; i < n_items; i++)
			for (uint32_t t = 0; t < items[i].n_tokens; t++, r++)
				e->row_tok[r] = items[i].tokens[t];
		if ((rc = affinity_step(e->aff, e->row_tok, T)) != 0)
			goto out;
	}
	if (n0 == 0) {
		struct eng_mb mb = { 0, items, n_items, item_row0, 0, T, &e->rs[0], { 0 } };
		for (uint32_t il = 0; il < hp->n_layer; il++)
			if ((rc = layer_single(e, &mb, il, orig)) != 0)
				goto out;
		if (e->mb_on)
			e->mbst.single++;
	} else {
		uint32_t T0 = item_row0[n0];
		struct eng_mb mbs[2] = {
			{ 0, items, n0, item_row0, 0, T0, &e->rs[0], { 0 } },
			{ 1, items + n0, n_items - n0, item_row0 + n0, T0, T - T0, &e->rs[1], { 0 } },
		};
		if ((rc = step_split(e, mbs, orig)) != 0)
			goto out;
		e->mbst.steps++;
		e->mbst.tokens_mb[0] += T0;
		e->mbst.tokens_mb[1] += T - T0;
	}
	/* final norm + LM head over the rows that want logits, in one product */
	t0 = clock_now();
	if (n_out) {
		if (n_out > e->cap_rows_out) {
			if ((rc = grow_f(&e->head_in, (size_t)n_out * d)) ||
			        (rc = grow_f(&e->head_out, (size_t)n_out * V)))
				goto out;
			e->cap_rows_out = n_out;
		}
		uint32_t o = 0;
		for (uint32_t i = 0; i < n_items; i++) {
			const struct eng_item *it = &items[i];
			uint32_t first = it->logits == ENG_LOGITS_ALL ? 0 : it->n_tokens - 1;
			if (it->logits == ENG_LOGITS_NONE)
				continue;
			for (uint32_t t = first; t < it->n_tokens; t++, o++)
				op_rmsnorm(e->head_in + (size_t)o * d,
				        e->x + (size_t)(item_row0[i] + t) * d, m->output_norm,
				        (int)d, hp->rms_eps);
		}
		float *dst = e->head_out;
		/* a single item: write straight into its buffer */
		if (n_items == 1)
			dst = items[0].out;
		if ((rc = op_matmul(e->pool, &m->output, e->head_in, (int)n_out, (int)d,
		             dst, (int)V)) != 0)
			goto out;
		if (n_items > 1) {
			o = 0;
			for (uint32_t i = 0; i < n_items; i++) {
				const struct eng_item *it = &items[i];
				uint32_t rows = it->logits == ENG_LOGITS_ALL ? it->n_tokens :
				        it->logits == ENG_LOGITS_LAST ? 1 : 0;
				if (rows == 0)
					continue; /* a prefill chunk without logits: out is NULL */
				memcpy(it->out, e->head_out + (size_t)o * V,
				        (size_t)rows * V * sizeof(float));
				o += rows;
			}
		}
	}
	e->timing.head += clock_now() - t0;
	for (uint32_t i = 0; i < n_items; i++)
		items[i].seq->n_pos += items[i].n_tokens;
	e->n_steps++;
	e->timing.steps++;
	e->timing.tokens += T;
	e->timing.total += clock_now() - t_start;
out:
	if (item_row0 != row0_small)
		free(item_row0);
	return rc;
}
