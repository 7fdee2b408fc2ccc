/* tok_load: reads the tokenizer.ggml.* metadata of a GGUF file into the
 * plain arrays of struct tok_vocab and builds the tokenizer from them.
 * Defaults follow llama.cpp's llama_vocab::load.  Must not read tensors or
 * keep pointers into the file once the tokenizer is built.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "gguf.h"
#include "log.h"
#include "tok_int.h"

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"
#define KEY_ADD_BOS "tokenizer.ggml.add_bos_token"
#define KEY_ADD_EOS "tokenizer.ggml.add_eos_token"
#define KEY_ADD_PREFIX "tokenizer.ggml.add_space_prefix"

/* Reads an array key of n elements (n == 0: any length) of one of the
 * given element types into *out; *out NULL when absent and optional. */
static int
get_array(const struct gguf_file *g, const char *key, bool required,
        const enum gguf_type *types, int n_types, uint64_t n,
        const struct gguf_kv **out, char *err, size_t err_len)
{
	const struct gguf_kv *kv;
	int rc = gguf_get_arr(g, key, GGUF_TYPE_COUNT, &kv);

	*out = NULL;
	if (rc == EPMOE_ENOENT) {
		if (!required)
			return 0;
		epmoe_set_err(err, err_len, "missing required key %s", key);
		return EPMOE_ENOENT;
	}
	if (rc != 0) {
		epmoe_set_err(err, err_len, "%s is not an array", key);
		return EPMOE_EFORMAT;
	}
	for (int i = 0; i < n_types; i++) {
		if (kv->v.arr.type == types[i])
			goto type_ok;
	}
	epmoe_set_err(err, err_len, "%s: unexpected element type %s", key,
	        gguf_type_name(kv->v.arr.type));
	return EPMOE_EFORMAT;
type_ok:
	if (n != 0 && kv->v.arr.n != n) {
		epmoe_set_err(err, err_len, "%s has %llu elements but %s has %llu",
		        key, (unsigned long long)kv->v.arr.n, KEY_TOKENS,
		        (unsigned long long)n);
		return EPMOE_EFORMAT;
	}
	*out = kv;
	return 0;
}

/* An optional special id: def when absent; a value out of range is
 * ignored with a warning (llama.cpp does the same). */
static int
get_id(const struct gguf_file *g, const char *key, int32_t def, uint32_t n,
        int32_t *out, char *err, size_t err_len)
{
	uint32_t v;
	int rc = gguf_get_u32(g, key, &v);

	if (def >= 0 && (uint32_t)def >= n)
		def = TOK_ID_NONE;
	*out = def;
	if (rc == EPMOE_ENOENT)
		return 0;
	if (rc != 0) {
		epmoe_set_err(err, err_len, "%s is not an unsigned integer", key);
		return EPMOE_EFORMAT;
	}
	if (v >= n) {
		log_warn("tok: %s = %u is out of the vocabulary (%u): ignored",
		         key, v, n);
		return 0;
	}
	*out = (int32_t)v;
	return 0;
}

static int
get_flag(const struct gguf_file *g, const char *key, int *out, char *err,
        size_t err_len)
{
	bool b;
	int rc = gguf_get_bool(g, key, &b);

	*out = -1;
	if (rc == EPMOE_ENOENT)
		return 0;
	if (rc != 0) {
		epmoe_set_err(err, err_len, "%s is not a bool", key);
		return EPMOE_EFORMAT;
	}
	*out = b;
	return 0;
}

/* Texts that mark an end-of-turn token when tokenizer.ggml.eot_token_id is
 * absent (the ones llama.cpp recognises). */
static const char *const eot_texts[] = {
	"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
	"<|endoftext|>", "<|end_of_text|>", "<EOT>", "<|EOT|>",
	"<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
};

int
tok_load(struct tok **out, const struct gguf_file *g, char *err,
        size_t err_len)
{
	static const enum gguf_type str_t[] = { GGUF_TYPE_STRING };
	static const enum gguf_type score_t[] = { GGUF_TYPE_FLOAT32,
		GGUF_TYPE_INT32 };
	static const enum gguf_type type_t[] = { GGUF_TYPE_INT32,
		GGUF_TYPE_UINT32, GGUF_TYPE_INT8, GGUF_TYPE_UINT8 };
	const struct gguf_kv *kv_tok, *kv_sc, *kv_ty, *kv_mg = NULL;
	struct tok_vocab v;
	struct gguf_str model, pre;
	char pre_buf[64];
	const char **texts = NULL, **merges = NULL;
	size_t *lens = NULL, *mlens = NULL;
	float *scores = NULL;
	int32_t *types = NULL;
	struct tok *t = NULL;
	uint64_t n;
	int rc;

	if (out == NULL || g == NULL) {
		epmoe_set_err(err, err_len, "no file");
		return EPMOE_EINVAL;
	}
	rc = gguf_get_str(g, KEY_MODEL, &model);
	if (rc == EPMOE_ENOENT) {
		epmoe_set_err(err, err_len, "missing required key %s", KEY_MODEL);
		return rc;
	}
	if (rc != 0) {
		epmoe_set_err(err, err_len, "%s is not a string", KEY_MODEL);
		return EPMOE_EFORMAT;
	}
	if (gguf_str_eq(model, "llama")) {
		tok_vocab_init(&v, TOK_MODEL_SPM);
	} else if (gguf_str_eq(model, "gpt2")) {
		tok_vocab_init(&v, TOK_MODEL_BPE);
	} else {
		epmoe_set_err(err, err_len, "%s = '%.*s' is not supported (only "
		        "'llama' and 'gpt2')", KEY_MODEL,
		        (int)(model.len > 32 ? 32 : model.len), model.ptr);
		return EPMOE_ENOTSUP;
	}

	if ((rc = get_array(g, KEY_TOKENS, true, str_t, 1, 0, &kv_tok, err,
	        err_len)) != 0)
		return rc;
	n = kv_tok->v.arr.n;
	if (n == 0 || n > INT32_MAX) {
		epmoe_set_err(err, err_len, "%s has %llu tokens", KEY_TOKENS,
		        (unsigned long long)n);
		return EPMOE_EFORMAT;
	}
	if ((rc = get_array(g, KEY_SCORES, false, score_t, 2, n, &kv_sc, err,
	        err_len)) != 0 ||
	        (rc = get_array(g, KEY_TYPES, false, type_t, 4, n, &kv_ty, err,
	        err_len)) != 0)
		return rc;
	if (v.model == TOK_MODEL_BPE && (rc = get_array(g, KEY_MERGES, true,
	        str_t, 1, 0, &kv_mg, err, err_len)) != 0)
		return rc;

	rc = gguf_get_str(g, KEY_PRE, &pre);
	if (rc == 0) {
		size_t l = pre.len < sizeof(pre_buf) - 1 ? pre.len :
		        sizeof(pre_buf) - 1;

		memcpy(pre_buf, pre.ptr, l);
		pre_buf[l] = '\0';
		v.pre = pre_buf;
	} else if (rc != EPMOE_ENOENT) {
		epmoe_set_err(err, err_len, "%s is not a string", KEY_PRE);
		return EPMOE_EFORMAT;
	}

	/* llama.cpp's defaults: SPM has BOS 1, EOS 2, UNK 0 */
	{
		bool spm = v.model == TOK_MODEL_SPM;
		uint32_t nv = (uint32_t)n;

		if ((rc = get_id(g, "tokenizer.ggml.bos_token_id", spm ? 1 : -1,
		        nv, &v.bos_id, err, err_len)) != 0 ||
		        (rc = get_id(g, "tokenizer.ggml.eos_token_id",
		        spm ? 2 : -1, nv, &v.eos_id, err, err_len)) != 0 ||
		        (rc = get_id(g, "tokenizer.ggml.unknown_token_id",
		        spm ? 0 : -1, nv, &v.unk_id, err, err_len)) != 0 ||
		        (rc = get_id(g, "tokenizer.ggml.padding_token_id", -1,
		        nv, &v.pad_id, err, err_len)) != 0 ||
		        (rc = get_id(g, "tokenizer.ggml.eot_token_id", -1, nv,
		        &v.eot_id, err, err_len)) != 0 ||
		        (rc = get_id(g, "tokenizer.ggml.eom_token_id", -1, nv,
		        &v.eom_id, err, err_len)) != 0)
			return rc;
	}
	if ((rc = get_flag(g, KEY_ADD_BOS, &v.add_bos, err, err_len)) != 0 ||
	        (rc = get_flag(g, KEY_ADD_EOS, &v.add_eos, err, err_len)) != 0 ||
	        (rc = get_flag(g, KEY_ADD_PREFIX, &v.add_space_prefix, err,
	        err_len)) != 0)
		return rc;

	rc = EPMOE_ENOMEM;
	if ((texts = malloc(n * sizeof(*texts))) == NULL ||
	        (lens = malloc(n * sizeof(*lens))) == NULL)
		goto out;
	for (uint64_t i = 0; i < n; i++) {
		texts[i] = kv_tok->v.arr.strs[i].ptr;
		lens[i] = kv_tok->v.arr.strs[i].len;
	}
	if (kv_sc) {
		if ((scores = malloc(n * sizeof(*scores))) == NULL)
			goto out;
		for (uint64_t i = 0; i < n; i++) {
			scores[i] = kv_sc->v.arr.type == GGUF_TYPE_FLOAT32 ?
			        gguf_arr_f32(kv_sc, i) :
			        (float)gguf_arr_i64(kv_sc, i);
		}
	}
	if (kv_ty) {
		if ((types = malloc(n * sizeof(*types))) == NULL)
			goto out;
		for (uint64_t i = 0; i < n; i++) {
			int64_t x = gguf_arr_i64(kv_ty, i);

			types[i] = x < 0 || x > TOK_TYPE_BYTE ?
			        TOK_TYPE_UNDEFINED : (int32_t)x;
		}
	}
	if (kv_mg) {
		uint64_t nm = kv_mg->v.arr.n;

		if (nm > INT32_MAX) {
			epmoe_set_err(err, err_len, "%s has %llu merges", KEY_MERGES,
			        (unsigned long long)nm);
			rc = EPMOE_EFORMAT;
			goto out;
		}
		if (nm > 0 && ((merges = malloc(nm * sizeof(*merges))) == NULL ||
		        (mlens = malloc(nm * sizeof(*mlens))) == NULL))
			goto out;
		for (uint64_t i = 0; i < nm; i++) {
			merges[i] = kv_mg->v.arr.strs[i].ptr;
			mlens[i] = kv_mg->v.arr.strs[i].len;
		}
		v.n_merges = (uint32_t)nm;
		v.merges = merges;
		v.merge_lens = mlens;
	}
	v.n_tokens = (uint32_t)n;
	v.tokens = texts;
	v.token_lens = lens;
	v.scores = scores;
	v.types = types;
	if ((rc = tok_new_from_vocab(&t, &v, err, err_len)) != 0)
		goto out;
	if (t->add_bos && t->bos < 0) {
		epmoe_set_err(err, err_len, "%s is true but tokenizer.ggml.bos_token_id "
		        "is not set", KEY_ADD_BOS);
		rc = EPMOE_EFORMAT;
		goto out;
	}
	if (t->add_eos && t->eos < 0) {
		epmoe_set_err(err, err_len, "%s is true but tokenizer.ggml.eos_token_id "
		        "is not set", KEY_ADD_EOS);
		rc = EPMOE_EFORMAT;
		goto out;
	}
	for (size_t i = 0; t->eot < 0 &&
	        i < sizeof(eot_texts) / sizeof(eot_texts[0]); i++) {
		int32_t id = tok_find(t, eot_texts[i], strlen(eot_texts[i]));

		if (id >= 0 && id != t->eos)
			t->eot = id;
	}
	*out = t;
	t = NULL;
	rc = 0;
out:
	if (rc == EPMOE_ENOMEM)
		epmoe_set_err(err, err_len, "out of memory reading the vocabulary");
	tok_free(t);
	free(texts);
	free(lens);
	free(scores);
	free(types);
	free(merges);
	free(mlens);
	return rc;
}
