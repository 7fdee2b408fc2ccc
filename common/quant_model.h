/* Quantised copies of GGUF models: llama.cpp's quantisation presets (which
 * tensor gets which type) and the writer that converts a file.
 *
 * The presets follow llama-quantize (b4747) for the types epmoe supports:
 * a base type per preset, more bits for the tensors that need them
 * (attn_v, ffn_down of some layers, attn_output of 8-expert models, the
 * output head), Q8_0 for attn_k / attn_v of 8-expert models, and legacy
 * 32-value blocks for rows whose width is not a multiple of 256 (Q4_K ->
 * Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; Q2_K and Q3_K -> Q4_0 where
 * llama.cpp b4747 would pick IQ4_NL, which epmoe does not run).  Norms,
 * biases, routers and other 1-D tensors stay as they are.
 *
 * Must not load the model for inference: it reads tensors through the
 * GGUF mapping and writes one tensor at a time.
 */
#ifndef EPMOE_QUANT_MODEL_H
#define EPMOE_QUANT_MODEL_H

#include <stddef.h>

#include "gguf.h"

enum quant_preset {
	QUANT_F32, QUANT_F16, QUANT_BF16,
	QUANT_Q4_0, QUANT_Q4_1, QUANT_Q5_0, QUANT_Q5_1, QUANT_Q8_0,
	QUANT_Q2_K, QUANT_Q3_K_S, QUANT_Q3_K_M, QUANT_Q3_K_L,
	QUANT_Q4_K_S, QUANT_Q4_K_M, QUANT_Q5_K_S, QUANT_Q5_K_M, QUANT_Q6_K,
	QUANT_PRESET_COUNT
};

/* "q4_k_m", "Q8_0", ... (any case); 0 or EPMOE_EINVAL. */
int quant_preset_parse(const char *s, enum quant_preset *out);
const char *quant_preset_name(enum quant_preset p);
/* All names, comma-separated, for help texts. */
const char *quant_preset_list(void);

/* The type each tensor of g gets under preset p: types[i] for
 * g->tensors[i] (caller's array of g->n_tensors).  EPMOE_EFORMAT with a
 * message when g lacks what the rules need (architecture, block count). */
int quant_plan(const struct gguf_file *g, enum quant_preset p,
        enum dtype *types, char *err, size_t err_len);

/* Writes in's model to out with tensor types from quant_plan (metadata
 * copied; general.file_type and general.quantization_version set as
 * llama-quantize sets them), converting on n_threads threads (0: online
 * CPUs).  Every source type epmoe supports may be converted; tensors
 * keeping their type are copied byte for byte.  On failure out is left
 * untouched and err says why. */
int quant_model_write(const char *in, const char *out, enum quant_preset p,
        int n_threads, char *err, size_t err_len);

#endif
