/* Quantised copies of GGUF models.  See quant_model.h.
 *
 * The type rules restate llama-quantize's (b4747, llama_tensor_get_type)
 * for the presets listed there: same tensor categories (by name), same
 * layer choices ("more bits" for the first and last eighth of the layers
 * and every third in between), same 8-expert special cases; tested
 * against the type of every tensor in the llama-quantize files of
 * ../shared/testdata.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "err.h"
#include "pool.h"
#include "quant_model.h"

static const struct {
	const char *name;
	enum dtype base;
	uint32_t ftype; /* general.file_type: llama.cpp's LLAMA_FTYPE_* */
} presets[QUANT_PRESET_COUNT] = {
	[QUANT_F32] = { "f32", DTYPE_F32, 0 },
	[QUANT_F16] = { "f16", DTYPE_F16, 1 },
	[QUANT_BF16] = { "bf16", DTYPE_BF16, 32 },
	[QUANT_Q4_0] = { "q4_0", DTYPE_Q4_0, 2 },
	[QUANT_Q4_1] = { "q4_1", DTYPE_Q4_1, 3 },
	[QUANT_Q5_0] = { "q5_0", DTYPE_Q5_0, 8 },
	[QUANT_Q5_1] = { "q5_1", DTYPE_Q5_1, 9 },
	[QUANT_Q8_0] = { "q8_0", DTYPE_Q8_0, 7 },
	[QUANT_Q2_K] = { "q2_k", DTYPE_Q2_K, 10 },
	[QUANT_Q3_K_S] = { "q3_k_s", DTYPE_Q3_K, 11 },
	[QUANT_Q3_K_M] = { "q3_k_m", DTYPE_Q3_K, 12 },
	[QUANT_Q3_K_L] = { "q3_k_l", DTYPE_Q3_K, 13 },
	[QUANT_Q4_K_S] = { "q4_k_s", DTYPE_Q4_K, 14 },
	[QUANT_Q4_K_M] = { "q4_k_m", DTYPE_Q4_K, 15 },
	[QUANT_Q5_K_S] = { "q5_k_s", DTYPE_Q5_K, 16 },
	[QUANT_Q5_K_M] = { "q5_k_m", DTYPE_Q5_K, 17 },
	[QUANT_Q6_K] = { "q6_k", DTYPE_Q6_K, 18 },
};

int
quant_preset_parse(const char *s, enum quant_preset *out)
{
	for (int p = 0; p < QUANT_PRESET_COUNT; p++) {
		if (strcasecmp(s, presets[p].name) == 0) {
			*out = (enum quant_preset)p;
			return 0;
		}
	}
	return EPMOE_EINVAL;
}

const char *
quant_preset_name(enum quant_preset p)
{
	return (unsigned)p < QUANT_PRESET_COUNT ? presets[p].name : "?";
}

const char *
quant_preset_list(void)
{
	return "q2_k, q3_k_s, q3_k_m, q3_k_l, q4_0, q4_1, q4_k_s, q4_k_m, q5_0, "
	       "q5_1, q5_k_s, q5_k_m, q6_k, q8_0, f16, bf16, f32";
}

static int
fail(char *err, size_t err_len, int rc, const char *fmt, ...)
{
	va_list ap;

	if (err && err_len) {
		va_start(ap, fmt);
		vsnprintf(err, err_len, fmt, ap);
		va_end(ap);
	}
	return rc;
}

/* ---- the type rules ---- */

enum cat { C_OTHER, C_OUTPUT, C_EMBD, C_ATTN_V, C_ATTN_K, C_ATTN_Q, C_ATTN_OUT,
	C_FFN_UP, C_FFN_GATE, C_FFN_DOWN };

static int
has(struct gguf_str s, const char *sub)
{
	size_t n = strlen(sub);

	for (size_t i = 0; i + n <= s.len; i++)
		if (memcmp(s.ptr + i, sub, n) == 0)
			return 1;
	return 0;
}

static enum cat
category(struct gguf_str n)
{
	if (gguf_str_eq(n, "output.weight"))
		return C_OUTPUT;
	if (gguf_str_eq(n, "token_embd.weight"))
		return C_EMBD;
	if (has(n, "attn_v.weight"))
		return C_ATTN_V;
	if (has(n, "attn_k.weight"))
		return C_ATTN_K;
	if (has(n, "attn_q.weight"))
		return C_ATTN_Q;
	if (has(n, "attn_output.weight"))
		return C_ATTN_OUT;
	if (has(n, "ffn_up"))
		return C_FFN_UP;
	if (has(n, "ffn_gate"))
		return C_FFN_GATE;
	if (has(n, "ffn_down"))
		return C_FFN_DOWN;
	return C_OTHER;
}

/* llama-quantize converts 2-D and 3-D weights only, and never norms or
 * the expert router */
static int
quantisable(const struct gguf_tensor *t)
{
	uint32_t nd = 1;

	for (uint32_t d = 1; d < GGUF_MAX_DIMS; d++)
		if (t->ne[d] > 1)
			nd = d + 1;
	return nd >= 2 && t->name.len >= 6 &&
	        memcmp(t->name.ptr + t->name.len - 6, "weight", 6) == 0 &&
	        !has(t->name, "_norm.weight") && !has(t->name, "ffn_gate_inp.weight");
}

/* "blk.N." -> N, else -1 */
static int
layer_of(struct gguf_str n)
{
	int v = 0, i = 4;

	if (n.len < 6 || memcmp(n.ptr, "blk.", 4) != 0)
		return -1;
	if ((size_t)i >= n.len || n.ptr[i] < '0' || n.ptr[i] > '9')
		return -1;
	for (; (size_t)i < n.len && n.ptr[i] >= '0' && n.ptr[i] <= '9' && v < 1000000; i++)
		v = v * 10 + (n.ptr[i] - '0');
	return (size_t)i < n.len && n.ptr[i] == '.' ? v : -1;
}

static int
more_bits(int i, int n)
{
	return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* the 32-value type standing in for a K-quant on rows of a width that is
 * not a multiple of 256 */
static enum dtype
fallback(enum dtype t, uint64_t ne0)
{
	if (ne0 % dtype_block_elems(t) == 0)
		return t;
	switch (t) {
	case DTYPE_Q2_K: case DTYPE_Q3_K: t = DTYPE_Q4_0; break;
	case DTYPE_Q4_K: t = DTYPE_Q5_0; break;
	case DTYPE_Q5_K: t = DTYPE_Q5_1; break;
	case DTYPE_Q6_K: t = DTYPE_Q8_0; break;
	default: break;
	}
	return ne0 % dtype_block_elems(t) == 0 ? t : DTYPE_F16;
}

struct plan_ctx {
	enum quant_preset p;
	uint32_t n_layer, n_expert, n_gqa;
	int tied; /* no output.weight: token_embd is the head too */
};

static enum dtype
rule(const struct plan_ctx *c, const struct gguf_tensor *t, int i_v, int n_v)
{
	enum quant_preset p = c->p;
	enum dtype nt = presets[p].base;
	enum cat k = category(t->name);
	int L = layer_of(t->name), n = (int)c->n_layer;

	if (k == C_OUTPUT || (c->tied && k == C_EMBD)) {
		if (t->ne[0] % dtype_block_elems(nt) != 0)
			return DTYPE_Q8_0;
		return nt != DTYPE_Q8_0 ? DTYPE_Q6_K : nt;
	}
	switch (k) {
	case C_ATTN_V:
		if (p == QUANT_Q2_K)
			nt = c->n_gqa >= 4 ? DTYPE_Q4_K : DTYPE_Q3_K;
		else if (p == QUANT_Q3_K_M)
			nt = i_v < 2 ? DTYPE_Q5_K : DTYPE_Q4_K;
		else if (p == QUANT_Q3_K_L)
			nt = DTYPE_Q5_K;
		else if ((p == QUANT_Q4_K_M || p == QUANT_Q5_K_M) && more_bits(i_v, n_v))
			nt = DTYPE_Q6_K;
		else if (p == QUANT_Q4_K_S && i_v < 4)
			nt = DTYPE_Q5_K;
		if (c->n_expert == 8)
			nt = DTYPE_Q8_0;
		break;
	case C_ATTN_K:
		if (c->n_expert == 8)
			nt = DTYPE_Q8_0;
		break;
	case C_FFN_DOWN:
		if (L < 0)
			break;
		if (p == QUANT_Q2_K)
			nt = DTYPE_Q3_K;
		else if (p == QUANT_Q3_K_M)
			nt = L < n / 16 ? DTYPE_Q5_K : DTYPE_Q4_K;
		else if (p == QUANT_Q3_K_L)
			nt = DTYPE_Q5_K;
		else if ((p == QUANT_Q4_K_M || p == QUANT_Q5_K_M) && more_bits(L, n))
			nt = DTYPE_Q6_K;
		else if (p == QUANT_Q4_K_S && L < n / 8)
			nt = DTYPE_Q5_K;
		break;
	case C_ATTN_OUT:
		if (c->n_expert == 8) {
			if (p == QUANT_Q2_K || p == QUANT_Q3_K_S || p == QUANT_Q3_K_M ||
			        p == QUANT_Q4_K_S || p == QUANT_Q4_K_M)
				nt = DTYPE_Q5_K;
		} else {
			if (p == QUANT_Q2_K)
				nt = DTYPE_Q3_K;
			else if (p == QUANT_Q3_K_M)
				nt = DTYPE_Q4_K;
			else if (p == QUANT_Q3_K_L)
				nt = DTYPE_Q5_K;
		}
		break;
	default:
		break;
	}
	return nt;
}

static int
arch_u32(const struct gguf_file *g, const char *arch, const char *key,
        uint32_t *out)
{
	char full[160];

	snprintf(full, sizeof(full), "%s.%s", arch, key);
	return gguf_get_u32(g, full, out);
}

int
quant_plan(const struct gguf_file *g, enum quant_preset p, enum dtype *types,
        char *err, size_t err_len)
{
	struct plan_ctx c = { .p = p, .n_expert = 1, .tied = 1 };
	char arch[64];
	uint32_t nh = 1, nkv = 1;
	int n_v = 0;

	if ((unsigned)p >= QUANT_PRESET_COUNT)
		return EPMOE_EINVAL;
	if (gguf_get_strcpy(g, "general.architecture", arch, sizeof(arch)) != 0)
		return fail(err, err_len, EPMOE_EFORMAT, "%s: no general.architecture", g->path);
	if (arch_u32(g, arch, "block_count", &c.n_layer) != 0)
		return fail(err, err_len, EPMOE_EFORMAT, "%s: no %s.block_count", g->path, arch);
	arch_u32(g, arch, "expert_count", &c.n_expert);
	arch_u32(g, arch, "attention.head_count", &nh);
	if (arch_u32(g, arch, "attention.head_count_kv", &nkv) != 0 || nkv == 0)
		nkv = nh;
	c.n_gqa = nh / nkv;
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		if (category(g->tensors[i].name) == C_OUTPUT)
			c.tied = 0;
		if (category(g->tensors[i].name) == C_ATTN_V)
			n_v++;
	}
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct gguf_tensor *t = &g->tensors[i];
		int i_v = 0;

		types[i] = t->type;
		if (!quantisable(t) || !dtype_supported(t->type))
			continue;
		if (p == QUANT_F32 || p == QUANT_F16 || p == QUANT_BF16) {
			types[i] = presets[p].base;
			continue;
		}
		/* llama.cpp visits attn_v tensors in layer order */
		for (uint64_t j = 0; j < g->n_tensors; j++)
			if (category(g->tensors[j].name) == C_ATTN_V &&
			        layer_of(g->tensors[j].name) < layer_of(t->name))
				i_v++;
		types[i] = fallback(rule(&c, t, i_v, n_v), t->ne[0]);
	}
	return 0;
}

/* ---- the writer ---- */

/* One tensor's conversion, rows split over the pool's threads. */
struct conv {
	const struct gguf_tensor *t;
	enum dtype to;
	uint8_t *dst;
	uint64_t rows;
	float *scratch; /* [n_threads][ne0] */
	int rc[64];
};

static void
conv_worker(void *ctx, int ith, int nth)
{
	struct conv *c = ctx;
	uint64_t ne0 = c->t->ne[0];
	size_t src_row = dtype_row_size(c->t->type, ne0);
	size_t dst_row = dtype_row_size(c->to, ne0);
	float *buf = c->scratch + (size_t)ith * ne0;
	long lo, hi;
	int rc = 0;

	pool_split((long)c->rows, ith, nth, 1, &lo, &hi);
	for (long r = lo; r < hi && rc == 0; r++) {
		const uint8_t *s = (const uint8_t *)c->t->data + (size_t)r * src_row;
		if ((rc = dtype_row_to_f32(c->t->type, s, buf, ne0)) == 0)
			rc = dtype_row_from_f32(c->to, buf, c->dst + (size_t)r * dst_row, ne0);
	}
	c->rc[ith & 63] = rc;
}

struct fill_ctx {
	const struct gguf_tensor *t;
	enum dtype to;
	struct pool *pool;
	float *scratch;
};

static int
fill(void *ctx, void *dst, size_t size)
{
	struct fill_ctx *f = ctx;
	struct conv c = { .t = f->t, .to = f->to, .dst = dst,
		.scratch = f->scratch };

	if (f->to == f->t->type) {
		memcpy(dst, f->t->data, size < f->t->size ? size : f->t->size);
		return 0;
	}
	c.rows = f->t->n_elements / f->t->ne[0];
	pool_run(f->pool, conv_worker, &c);
	for (int i = 0; i < pool_size(f->pool) && i < 64; i++)
		if (c.rc[i])
			return c.rc[i];
	return 0;
}

int
quant_model_write(const char *in, const char *out, enum quant_preset p,
        int n_threads, char *err, size_t err_len)
{
	struct gguf_file *g = NULL;
	struct gguf_writer *w = NULL;
	struct pool *pool = NULL;
	struct fill_ctx *fc = NULL;
	enum dtype *types = NULL;
	float *scratch = NULL;
	uint64_t max_ne0 = 1;
	int rc;

	if ((unsigned)p >= QUANT_PRESET_COUNT)
		return fail(err, err_len, EPMOE_EINVAL, "unknown preset");
	if (n_threads <= 0)
		n_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (n_threads < 1)
		n_threads = 1;
	if (n_threads > 64)
		n_threads = 64;
	if ((rc = gguf_open(&g, in, err, err_len)) != 0)
		return rc;
	if ((types = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*types))) == NULL ||
	        (fc = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*fc))) == NULL) {
		rc = fail(err, err_len, EPMOE_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = quant_plan(g, p, types, err, err_len)) != 0)
		goto out;
	for (uint64_t i = 0; i < g->n_tensors; i++)
		if (g->tensors[i].ne[0] > max_ne0)
			max_ne0 = g->tensors[i].ne[0];
	if ((rc = pool_new(&pool, n_threads)) != 0 ||
	        (scratch = malloc((size_t)n_threads * max_ne0 * sizeof(float))) == NULL ||
	        (rc = gguf_writer_new(&w, 3)) != 0) {
		rc = fail(err, err_len, rc ? rc : EPMOE_ENOMEM, "out of memory");
		goto out;
	}
	for (uint64_t i = 0; i < g->n_kv && rc == 0; i++) {
		const struct gguf_kv *kv = &g->kv[i];
		if (gguf_str_eq(kv->key, "general.file_type") ||
		        gguf_str_eq(kv->key, "general.quantization_version") ||
		        gguf_str_eq(kv->key, "general.alignment"))
			continue;
		rc = gguf_writer_copy_kv(w, kv);
	}
	if (rc == 0)
		rc = gguf_writer_set_u32(w, "general.file_type", presets[p].ftype);
	if (rc == 0 && p != QUANT_F32 && p != QUANT_F16 && p != QUANT_BF16)
		rc = gguf_writer_set_u32(w, "general.quantization_version", 2);
	if (rc == 0 && g->alignment != GGUF_DEFAULT_ALIGNMENT)
		rc = gguf_writer_set_alignment(w, g->alignment);
	if (rc != 0) {
		rc = fail(err, err_len, rc, "%s: cannot copy the metadata (%s)", in,
		        epmoe_strerror(rc));
		goto out;
	}
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct gguf_tensor *t = &g->tensors[i];
		char name[128];

		if (t->name.len >= sizeof(name)) {
			rc = fail(err, err_len, EPMOE_EFORMAT, "%s: tensor name too long", in);
			goto out;
		}
		memcpy(name, t->name.ptr, (size_t)t->name.len);
		name[t->name.len] = '\0';
		fc[i] = (struct fill_ctx){ t, types[i], pool, scratch };
		if ((rc = gguf_writer_add_tensor_fn(w, name, types[i], t->n_dims, t->ne,
		             fill, &fc[i])) != 0) {
			rc = fail(err, err_len, rc, "%s: cannot add tensor %s as %s (%s)", in,
			        name, dtype_name(types[i]), epmoe_strerror(rc));
			goto out;
		}
	}
	rc = gguf_writer_write(w, out, err, err_len);
out:
	gguf_writer_free(w);
	pool_free(pool);
	free(scratch);
	free(fc);
	free(types);
	gguf_close(g);
	return rc;
}
