/* A MoE model loaded from GGUF: hyperparameters and views of the weight
 * tensors inside the file mapping (matrices are never copied; 1-D tensors
 * such as norms and biases are converted to small owned f32 arrays).
 *
 * Supported architectures: `llama` with experts (Mixtral), `qwen2moe`
 * (shared expert with a sigmoid gate, q/k/v biases), `olmoe` (q/k
 * RMSNorm), `qwen3moe` (per-head q/k RMSNorm).  Supported tensor types:
 * F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K .. Q6_K, mixed
 * freely.  Anything else (the IQ formats, ...) is refused with a message
 * naming the type and listing what is supported.
 */
#ifndef EPMOE_MODEL_H
#define EPMOE_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "gguf.h"
#include "ops.h"

enum model_arch {
	MODEL_ARCH_LLAMA,
	MODEL_ARCH_QWEN2MOE,
	MODEL_ARCH_OLMOE,
	MODEL_ARCH_QWEN3MOE,
};

struct model_hparams {
	enum model_arch arch;
	uint32_t n_vocab;
	uint32_t n_embd;       /* d */
	uint32_t n_layer;
	uint32_t n_head;
	uint32_t n_head_kv;
	uint32_t head_dim;     /* n_embd / n_head unless the file says */
	uint32_t n_rot;        /* rotary dims per head */
	uint32_t n_ctx_train;
	uint32_t n_expert;     /* E */
	uint32_t n_expert_used;/* native k */
	uint32_t n_ff_exp;     /* expert hidden size */
	uint32_t n_ff_shexp;   /* shared expert hidden size, 0 if none */
	float rms_eps;
	float rope_base;
	bool rope_neox;        /* half-split RoPE (qwen2moe, olmoe, qwen3moe) */
	bool expert_weights_norm; /* renormalise top-k weights */
};

struct model_layer {
	float *attn_norm;                 /* [d] */
	struct tmat wq, wk, wv, wo;       /* [nh*hd, d], [nkv*hd, d] x2, [d, nh*hd] */
	float *bq, *bk, *bv;              /* optional biases */
	float *q_norm, *k_norm;           /* optional; per head [hd] or full width */
	bool qk_norm_per_head;
	float *ffn_norm;                  /* [d] */
	struct tmat gate_inp;             /* router [E, d] */
	/* stacked experts: n_out = ff * E (expert e = rows e*ff .. e*ff+ff) */
	struct tmat gate_exps, up_exps;   /* [E*ff, d] */
	struct tmat down_exps;            /* [E*d, ff] */
	float *shexp_gate;                /* [d], optional */
	struct tmat gate_shexp, up_shexp; /* [ff_sh, d] */
	struct tmat down_shexp;           /* [d, ff_sh] */
	bool has_shexp;
};

struct model {
	struct gguf_file *gguf;
	char *path;
	char name[128];
	struct model_hparams hp;
	struct tmat tok_embd;    /* [V, d] */
	float *output_norm;      /* [d] */
	struct tmat output;      /* [V, d]; tok_embd when tied */
	struct model_layer *layers;
	float *rope_freq;        /* [n_rot/2] */
	uint64_t identity;       /* hash of the header: same file => same id */
	uint64_t weight_bytes;   /* bytes of all tensor data */
};

/* Loads and validates the model at path.  On failure writes a one-line
 * message to err.  Free with model_free(). */
int model_load(struct model **out, const char *path, char *err, size_t err_len);
void model_free(struct model *m);

/* Which expert matrix of a layer. */
enum model_expert_mat { MODEL_EXP_GATE, MODEL_EXP_UP, MODEL_EXP_DOWN };

/* View of expert e's matrix (borrowed from m). */
struct tmat model_expert(const struct model_layer *l, const struct model_hparams *hp,
        enum model_expert_mat which, uint32_t e);

/* Embedding row of token id into dst[d]. */
int model_embed(const struct model *m, int32_t id, float *dst);

const char *model_arch_name(enum model_arch a);

/* Bytes of weights one token reads at batch 1 with native routing: dense
 * part + k experts per layer + LM head (for bandwidth ratios). */
uint64_t model_bytes_per_token(const struct model *m);

#endif
