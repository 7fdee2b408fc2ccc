/* Random-weight MoE models in GGUF, laid out exactly as llama.cpp expects
 * for the llama (Mixtral), qwen2moe and olmoe architectures.
 *
 * The output depends only on the configuration and the seed (not on the
 * thread count): same cfg -> identical bytes.  Weights are normal-ish with
 * std 1/sqrt(fan_in) so activations stay O(1) through the layers; norms are
 * near 1; everything 1-D and the router stay F32 (as llama.cpp's converter
 * does), other matrices use cfg->dtype.  The vocabulary is SentencePiece
 * style with real English pieces (mkmodel_vocab_init).  Tensors are
 * generated while the file is written, so memory use is one tensor.
 */
#ifndef EPMOE_MKMODEL_H
#define EPMOE_MKMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

enum mkmodel_arch {
	MKMODEL_LLAMA = 0, /* Mixtral layout */
	MKMODEL_QWEN2MOE = 1,
	MKMODEL_OLMOE = 2,
};

/* Smallest vocabulary: <unk> <s> </s>, 256 byte tokens, U+2581 and the 94
 * printable ASCII characters. */
#define MKMODEL_MIN_VOCAB 354
#define MKMODEL_MAX_VOCAB 262144

struct mkmodel_cfg {
	enum mkmodel_arch arch;
	uint32_t n_layer;
	uint32_t n_embd;
	uint32_t n_ff;        /* width of each routed expert */
	uint32_t n_ff_shexp;  /* qwen2moe shared expert width (ignored else) */
	uint32_t n_expert;
	uint32_t n_expert_used;
	uint32_t n_vocab;
	uint32_t n_head;
	uint32_t n_head_kv;
	uint32_t n_ctx;       /* context_length metadata (4096) */
	float rope_base;      /* 10000 */
	float rms_eps;        /* 1e-5 */
	enum dtype dtype; /* matrices: f32, f16, bf16 or q8_0 */
	uint64_t seed;
	uint32_t n_threads;   /* 0: online CPUs; never changes the output */
	float gate_skew;      /* > 0: Zipf exponent A of expert popularity
	                         (a shared embedding direction and router
	                         biases along it, other hot experts per
	                         layer); 0: plain random routing */
	char name[64];        /* general.name; "" derives one from the shape */
};

/* "llama" (alias "mixtral"), "qwen2moe", "olmoe"; 0 or EPMOE_EINVAL. */
int mkmodel_arch_parse(const char *s, enum mkmodel_arch *out);
/* The general.architecture string. */
const char *mkmodel_arch_name(enum mkmodel_arch a);

/* Fills *cfg with a preset for arch: "tiny" (the shape of the files in
 * shared/testdata: vocab 512, dim 64, 2 layers, 4 heads, 2 kv heads (olmoe
 * 4), 8 experts top-2, expert ff 128, shared ff 192) or "small" (dim 1024,
 * 8 layers, 16 heads, 4 kv heads (olmoe 16), 8 experts top-2, expert ff
 * 2816, shared ff 2816, vocab 32000; about 2.5 GB in F32).  dtype F32,
 * seed 1.  Returns 0 or EPMOE_EINVAL for an unknown preset. */
int mkmodel_preset(struct mkmodel_cfg *cfg, enum mkmodel_arch arch,
        const char *preset);

/* Checks every field; on failure writes a one-line reason to err and
 * returns EPMOE_EINVAL. */
int mkmodel_validate(const struct mkmodel_cfg *cfg, char *err, size_t err_len);

/* Bytes of tensor data the model will hold (without the header). */
uint64_t mkmodel_data_size(const struct mkmodel_cfg *cfg);

/* Writes the model to path (via path.tmp).  err as for gguf_open. */
int mkmodel_write(const struct mkmodel_cfg *cfg, const char *path, char *err,
        size_t err_len);

/* The vocabulary mkmodel writes: tokens[i] (NUL-terminated UTF-8),
 * scores[i] and types[i] (llama.cpp token types: 1 normal, 2 unknown,
 * 3 control, 6 byte).  Caller's struct; release with mkmodel_vocab_fini. */
struct mkmodel_vocab {
	uint32_t n;
	char **tokens;
	float *scores;
	int32_t *types;
	char *arena; /* backing store of tokens */
};

/* Builds n_vocab tokens (MKMODEL_MIN_VOCAB..MKMODEL_MAX_VOCAB):
 * <unk> <s> </s>, <0x00>..<0xFF>, then pieces in decreasing usefulness
 * (score -1, -2, ...): U+2581, printable ASCII, U+2581 + letter, frequent
 * English words with U+2581 and every prefix needed to reach them by
 * merging, capitalised words, suffixes, bare words, letter n-grams.
 * Deterministic and unique.  Returns 0, EPMOE_EINVAL or EPMOE_ENOMEM. */
int mkmodel_vocab_init(struct mkmodel_vocab *v, uint32_t n_vocab);
void mkmodel_vocab_fini(struct mkmodel_vocab *v);

#endif
