/* Loading a MoE model from GGUF: reads the hyperparameters of the
 * architecture, finds and shape-checks every tensor, and builds views into
 * the mapping.  It must not copy matrices (the point of mmap) and must
 * reject, with a message, any file the engine could not run correctly. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "hash.h"
#include "model.h"

static const char *const arch_names[] = { "llama", "qwen2moe", "olmoe",
	"qwen3moe" };

const char *
model_arch_name(enum model_arch a)
{
	return (unsigned)a < 4 ? arch_names[a] : "?";
}

struct loader {
	struct model *m;
	char *err;
	size_t err_len;
};

static int
fail(struct loader *L, int rc, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (L->err && L->err_len) {
		n = snprintf(L->err, L->err_len, "%s: ", L->m->path);
		if (n < 0 || (size_t)n >= L->err_len)
			return rc;
		va_start(ap, fmt);
		vsnprintf(L->err + n, L->err_len - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return rc;
}

static int
get_u32(struct loader *L, const char *key, uint32_t *out, int required,
        uint32_t dflt)
{
	char full[160];
	int rc;

	snprintf(full, sizeof(full), "%s.%s", arch_names[L->m->hp.arch], key);
	rc = gguf_get_u32(L->m->gguf, full, out);
	if (rc == EPMOE_ENOENT && !required) {
		*out = dflt;
		return 0;
	}
	if (rc == EPMOE_ENOENT)
		return fail(L, EPMOE_EFORMAT, "missing metadata key %s", full);
	if (rc)
		return fail(L, EPMOE_EFORMAT, "metadata key %s is not a valid unsigned integer", full);
	return 0;
}

static int
get_f32(struct loader *L, const char *key, float *out, float dflt)
{
	char full[160];
	int rc;

	snprintf(full, sizeof(full), "%s.%s", arch_names[L->m->hp.arch], key);
	rc = gguf_get_f32(L->m->gguf, full, out);
	if (rc == EPMOE_ENOENT) {
		*out = dflt;
		return 0;
	}
	if (rc || !isfinite(*out))
		return fail(L, EPMOE_EFORMAT, "metadata key %s is not a valid number", full);
	return 0;
}

static const struct gguf_tensor *
find(struct loader *L, const char *name)
{
	return gguf_find_tensor(L->m->gguf, name);
}

/* Checks tensor t has exactly the dims given (ne0, ne1, ne2; 0 = absent). */
static int
check_shape(struct loader *L, const struct gguf_tensor *t, uint64_t ne0,
        uint64_t ne1, uint64_t ne2)
{
	uint64_t want[3] = { ne0, ne1 ? ne1 : 1, ne2 ? ne2 : 1 };
	for (int i = 0; i < 3; i++) {
		if (t->ne[i] != want[i])
			return fail(L, EPMOE_EFORMAT,
			        "tensor %.*s has shape [%llu, %llu, %llu], expected [%llu, %llu, %llu]",
			        (int)t->name.len, t->name.ptr,
			        (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
			        (unsigned long long)t->ne[2], (unsigned long long)want[0],
			        (unsigned long long)want[1], (unsigned long long)want[2]);
	}
	if (t->ne[3] != 1)
		return fail(L, EPMOE_EFORMAT, "tensor %.*s has 4 dimensions",
		        (int)t->name.len, t->name.ptr);
	if (!dtype_supported(t->type))
		return fail(L, EPMOE_ENOTSUP,
		        "tensor %.*s has type %s, which epmoe cannot compute with; supported tensor types: %s",
		        (int)t->name.len, t->name.ptr, dtype_name(t->type),
		        dtype_supported_list());
	if (t->ne[0] % dtype_block_elems(t->type) != 0)
		return fail(L, EPMOE_EFORMAT, "tensor %.*s: row length %llu is not a multiple of the %s block",
		        (int)t->name.len, t->name.ptr, (unsigned long long)t->ne[0],
		        dtype_name(t->type));
	return 0;
}

/* A matrix (2-D or stacked 3-D viewed as 2-D). */
static int
load_mat(struct loader *L, struct tmat *out, const char *name, uint64_t ne0,
        uint64_t ne1, uint64_t ne2, int required)
{
	const struct gguf_tensor *t = find(L, name);
	int rc;

	if (t == NULL) {
		if (!required)
			return 0;
		return fail(L, EPMOE_EFORMAT, "missing tensor %s", name);
	}
	if ((rc = check_shape(L, t, ne0, ne1, ne2)) != 0)
		return rc;
	out->type = t->type;
	out->n_in = (uint32_t)ne0;
	out->n_out = (uint32_t)(t->ne[1] * t->ne[2]);
	out->row_size = dtype_row_size(t->type, ne0);
	out->data = t->data;
	L->m->weight_bytes += t->size;
	return 0;
}

/* A 1-D tensor converted to an owned f32 array. */
static int
load_vec(struct loader *L, float **out, const char *name, uint64_t n,
        int required)
{
	const struct gguf_tensor *t = find(L, name);
	float *v;
	int rc;

	if (t == NULL) {
		if (!required)
			return 0;
		return fail(L, EPMOE_EFORMAT, "missing tensor %s", name);
	}
	if ((rc = check_shape(L, t, n, 0, 0)) != 0)
		return rc;
	if ((v = malloc(n * sizeof(float))) == NULL)
		return EPMOE_ENOMEM;
	if ((rc = dtype_row_to_f32(t->type, t->data, v, n)) != 0) {
		free(v);
		return fail(L, rc, "cannot convert tensor %s", name);
	}
	L->m->weight_bytes += t->size;
	*out = v;
	return 0;
}

static int
load_hparams(struct loader *L)
{
	struct model *m = L->m;
	struct model_hparams *hp = &m->hp;
	struct gguf_str arch;
	const struct gguf_tensor *te;
	char key[160];
	bool b;
	int rc, found = 0;

	if (gguf_get_str(m->gguf, "general.architecture", &arch) != 0)
		return fail(L, EPMOE_EFORMAT, "missing metadata key general.architecture");
	for (int i = 0; i < 4; i++) {
		if (gguf_str_eq(arch, arch_names[i])) {
			hp->arch = (enum model_arch)i;
			found = 1;
		}
	}
	if (!found)
		return fail(L, EPMOE_ENOTSUP,
		        "unsupported architecture '%.*s'; supported: llama (with experts), qwen2moe, olmoe, qwen3moe",
		        (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
	gguf_get_strcpy(m->gguf, "general.name", m->name, sizeof(m->name));
	if ((rc = get_u32(L, "embedding_length", &hp->n_embd, 1, 0)) ||
	        (rc = get_u32(L, "block_count", &hp->n_layer, 1, 0)) ||
	        (rc = get_u32(L, "attention.head_count", &hp->n_head, 1, 0)) ||
	        (rc = get_u32(L, "attention.head_count_kv", &hp->n_head_kv, 0, hp->n_head)) ||
	        (rc = get_u32(L, "context_length", &hp->n_ctx_train, 0, 4096)) ||
	        (rc = get_u32(L, "expert_count", &hp->n_expert, 0, 0)) ||
	        (rc = get_u32(L, "expert_used_count", &hp->n_expert_used, 0, 0)) ||
	        (rc = get_f32(L, "attention.layer_norm_rms_epsilon", &hp->rms_eps, 1e-5f)) ||
	        (rc = get_f32(L, "rope.freq_base", &hp->rope_base, 10000.0f)))
		return rc;
	if (hp->n_expert < 1 || hp->n_expert_used < 1)
		return fail(L, EPMOE_ENOTSUP,
		        "not a mixture-of-experts model (%s.expert_count / expert_used_count missing or 0)",
		        arch_names[hp->arch]);
	if (hp->n_expert_used > hp->n_expert || hp->n_expert > 4096)
		return fail(L, EPMOE_EFORMAT, "expert_used_count %u / expert_count %u out of range",
		        hp->n_expert_used, hp->n_expert);
	if (hp->n_embd == 0 || hp->n_layer == 0 || hp->n_head == 0 ||
	        hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv != 0 ||
	        hp->n_layer > 4096 || hp->n_embd > 65536 || hp->n_head > 1024)
		return fail(L, EPMOE_EFORMAT, "inconsistent attention shape (embd %u, heads %u, kv heads %u, layers %u)",
		        hp->n_embd, hp->n_head, hp->n_head_kv, hp->n_layer);
	/* head_dim: from key_length when present, else n_embd / n_head */
	if ((rc = get_u32(L, "attention.key_length", &hp->head_dim, 0,
	             hp->n_embd / hp->n_head)) != 0)
		return rc;
	if (hp->head_dim == 0 || hp->head_dim % 2 || hp->head_dim > 1024)
		return fail(L, EPMOE_EFORMAT, "invalid head dimension %u", hp->head_dim);
	if ((rc = get_u32(L, "rope.dimension_count", &hp->n_rot, 0, hp->head_dim)) != 0)
		return rc;
	if (hp->n_rot > hp->head_dim || hp->n_rot % 2)
		return fail(L, EPMOE_EFORMAT, "rope.dimension_count %u invalid for head dim %u",
		        hp->n_rot, hp->head_dim);
	hp->rope_neox = hp->arch != MODEL_ARCH_LLAMA;
	hp->expert_weights_norm = hp->arch == MODEL_ARCH_LLAMA ||
	        hp->arch == MODEL_ARCH_QWEN3MOE;
	snprintf(key, sizeof(key), "%s.expert_weights_norm", arch_names[hp->arch]);
	if (gguf_get_bool(m->gguf, key, &b) == 0)
		hp->expert_weights_norm = b;
	if ((te = find(L, "token_embd.weight")) == NULL)
		return fail(L, EPMOE_EFORMAT, "missing tensor token_embd.weight");
	hp->n_vocab = (uint32_t)te->ne[1];
	/* expert ff from the tensor itself: the metadata keys differ by arch */
	if ((te = find(L, "blk.0.ffn_gate_exps.weight")) == NULL) {
		if (find(L, "blk.0.ffn_gate.0.weight"))
			return fail(L, EPMOE_ENOTSUP,
			        "experts stored as separate tensors (old Mixtral layout); re-convert with a current llama.cpp");
		return fail(L, EPMOE_EFORMAT, "missing tensor blk.0.ffn_gate_exps.weight");
	}
	hp->n_ff_exp = (uint32_t)te->ne[1];
	te = find(L, "blk.0.ffn_gate_shexp.weight");
	hp->n_ff_shexp = te ? (uint32_t)te->ne[1] : 0;
	if (hp->n_vocab == 0 || hp->n_ff_exp == 0)
		return fail(L, EPMOE_EFORMAT, "empty vocabulary or expert size");
	return 0;
}

static int
load_layer(struct loader *L, uint32_t il)
{
	struct model *m = L->m;
	const struct model_hparams *hp = &m->hp;
	struct model_layer *l = &m->layers[il];
	uint64_t d = hp->n_embd, q = (uint64_t)hp->n_head * hp->head_dim;
	uint64_t kv = (uint64_t)hp->n_head_kv * hp->head_dim;
	uint64_t E = hp->n_expert, ff = hp->n_ff_exp;
	char n[128];
	int rc;
	const struct gguf_tensor *t;

#define NAME(s) (snprintf(n, sizeof(n), "blk.%u." s, il), n)
	if ((rc = load_vec(L, &l->attn_norm, NAME("attn_norm.weight"), d, 1)) ||
	        (rc = load_mat(L, &l->wq, NAME("attn_q.weight"), d, q, 0, 1)) ||
	        (rc = load_mat(L, &l->wk, NAME("attn_k.weight"), d, kv, 0, 1)) ||
	        (rc = load_mat(L, &l->wv, NAME("attn_v.weight"), d, kv, 0, 1)) ||
	        (rc = load_mat(L, &l->wo, NAME("attn_output.weight"), q, d, 0, 1)) ||
	        (rc = load_vec(L, &l->bq, NAME("attn_q.bias"), q, 0)) ||
	        (rc = load_vec(L, &l->bk, NAME("attn_k.bias"), kv, 0)) ||
	        (rc = load_vec(L, &l->bv, NAME("attn_v.bias"), kv, 0)) ||
	        (rc = load_vec(L, &l->ffn_norm, NAME("ffn_norm.weight"), d, 1)) ||
	        (rc = load_mat(L, &l->gate_inp, NAME("ffn_gate_inp.weight"), d, E, 0, 1)) ||
	        (rc = load_mat(L, &l->gate_exps, NAME("ffn_gate_exps.weight"), d, ff, E, 1)) ||
	        (rc = load_mat(L, &l->up_exps, NAME("ffn_up_exps.weight"), d, ff, E, 1)) ||
	        (rc = load_mat(L, &l->down_exps, NAME("ffn_down_exps.weight"), ff, d, E, 1)))
		return rc;
	/* q/k norms: per head (qwen3moe) or over the full width (olmoe) */
	if ((t = find(L, NAME("attn_q_norm.weight"))) != NULL) {
		l->qk_norm_per_head = t->ne[0] == hp->head_dim && q != hp->head_dim;
		if ((rc = load_vec(L, &l->q_norm, NAME("attn_q_norm.weight"),
		             l->qk_norm_per_head ? hp->head_dim : q, 1)) ||
		        (rc = load_vec(L, &l->k_norm, NAME("attn_k_norm.weight"),
		             l->qk_norm_per_head ? hp->head_dim : kv, 1)))
			return rc;
	}
	if (hp->n_ff_shexp) {
		uint64_t fs = hp->n_ff_shexp;
		l->has_shexp = true;
		if ((rc = load_vec(L, &l->shexp_gate, NAME("ffn_gate_inp_shexp.weight"), d, 0)) ||
		        (rc = load_mat(L, &l->gate_shexp, NAME("ffn_gate_shexp.weight"), d, fs, 0, 1)) ||
		        (rc = load_mat(L, &l->up_shexp, NAME("ffn_up_shexp.weight"), d, fs, 0, 1)) ||
		        (rc = load_mat(L, &l->down_shexp, NAME("ffn_down_shexp.weight"), fs, d, 0, 1)))
			return rc;
	}
#undef NAME
	return 0;
}

int
model_load(struct model **out, const char *path, char *err, size_t err_len)
{
	struct model *m;
	struct loader L;
	const struct model_hparams *hp;
	int rc;

	if ((m = calloc(1, sizeof(*m))) == NULL)
		return EPMOE_ENOMEM;
	L.m = m;
	L.err = err;
	L.err_len = err_len;
	if ((m->path = strdup(path)) == NULL) {
		free(m);
		return EPMOE_ENOMEM;
	}
	if ((rc = gguf_open(&m->gguf, path, err, err_len)) != 0) {
		free(m->path);
		free(m);
		return rc;
	}
	if ((rc = load_hparams(&L)) != 0)
		goto out;
	hp = &m->hp;
	if ((rc = load_mat(&L, &m->tok_embd, "token_embd.weight", hp->n_embd,
	             hp->n_vocab, 0, 1)) ||
	        (rc = load_vec(&L, &m->output_norm, "output_norm.weight", hp->n_embd, 1)))
		goto out;
	if (find(&L, "output.weight")) {
		if ((rc = load_mat(&L, &m->output, "output.weight", hp->n_embd,
		             hp->n_vocab, 0, 1)) != 0)
			goto out;
	} else {
		m->output = m->tok_embd; /* tied */
	}
	if ((m->layers = calloc(hp->n_layer, sizeof(*m->layers))) == NULL) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	for (uint32_t il = 0; il < hp->n_layer; il++)
		if ((rc = load_layer(&L, il)) != 0)
			goto out;
	if ((m->rope_freq = malloc(hp->n_rot / 2 * sizeof(float) + 1)) == NULL) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < hp->n_rot / 2; i++)
		m->rope_freq[i] = powf(hp->rope_base, -2.0f * (float)i / (float)hp->n_rot);
	m->identity = hash_fnv1a(m->gguf->base, m->gguf->data_offset, HASH_FNV1A_INIT);
	m->identity = hash_fnv1a(&m->gguf->file_size,
	        sizeof(m->gguf->file_size), m->identity);
	*out = m;
	return 0;
out:
	model_free(m);
	return rc;
}

void
model_free(struct model *m)
{
	if (m == NULL)
		return;
	if (m->layers) {
		for (uint32_t i = 0; i < m->hp.n_layer; i++) {
			struct model_layer *l = &m->layers[i];
			free(l->attn_norm);
			free(l->bq);
			free(l->bk);
			free(l->bv);
			free(l->q_norm);
			free(l->k_norm);
			free(l->ffn_norm);
			free(l->shexp_gate);
		}
		free(m->layers);
	}
	free(m->output_norm);
	free(m->rope_freq);
	gguf_close(m->gguf);
	free(m->path);
	free(m);
}

struct tmat
model_expert(const struct model_layer *l, const struct model_hparams *hp,
        enum model_expert_mat which, uint32_t e)
{
	const struct tmat *s = which == MODEL_EXP_GATE ? &l->gate_exps :
	        which == MODEL_EXP_UP ? &l->up_exps : &l->down_exps;
	struct tmat v = *s;
	uint32_t rows = which == MODEL_EXP_DOWN ? hp->n_embd : hp->n_ff_exp;

	v.n_out = rows;
	v.data = (const uint8_t *)s->data + (size_t)e * rows * s->row_size;
	return v;
}

int
model_embed(const struct model *m, int32_t id, float *dst)
{
	if (id < 0 || (uint32_t)id >= m->hp.n_vocab)
		return EPMOE_EINVAL;
	return tmat_row_f32(&m->tok_embd, (uint32_t)id, dst);
}

static uint64_t
mat_bytes(const struct tmat *t)
{
	return (uint64_t)t->n_out * t->row_size;
}

uint64_t
model_bytes_per_token(const struct model *m)
{
	const struct model_hparams *hp = &m->hp;
	uint64_t b = mat_bytes(&m->output);

	for (uint32_t i = 0; i < hp->n_layer; i++) {
		const struct model_layer *l = &m->layers[i];
		b += mat_bytes(&l->wq) + mat_bytes(&l->wk) + mat_bytes(&l->wv) +
		        mat_bytes(&l->wo) + mat_bytes(&l->gate_inp);
		b += (mat_bytes(&l->gate_exps) + mat_bytes(&l->up_exps) +
		             mat_bytes(&l->down_exps)) / hp->n_expert * hp->n_expert_used;
		if (l->has_shexp)
			b += mat_bytes(&l->gate_shexp) + mat_bytes(&l->up_shexp) +
			        mat_bytes(&l->down_shexp);
	}
	return b;
}
