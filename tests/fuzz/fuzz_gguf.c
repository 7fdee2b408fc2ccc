/* libFuzzer target: the GGUF reader (common/gguf.c) and what is built from
 * a file's metadata before any weight is used: the tokenizer
 * (common/tok_gguf.c) and the model's hyperparameters and tensor views
 * (common/model.c).  Properties: a bad file is refused with a message,
 * never a crash, a leak, a read outside the buffer or an allocation larger
 * than the file can justify (ASan's allocation limit catches those:
 * run with -malloc_limit_mb). */
#include <inttypes.h>
#include <stdint.h>
#include <string.h>

#include "err.h"
#include "fuzz_util.h"
#include "log.h"
#include "gguf.h"
#include "model.h"
#include "tok.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
walk(const struct gguf_file *g)
{
	volatile uint64_t sink = 0;

	for (uint64_t i = 0; i < g->n_kv; i++) {
		const struct gguf_kv *kv = &g->kv[i];

		char key[80];

		snprintf(key, sizeof(key), "%.*s", (int)(kv->key.len < 79 ? kv->key.len : 79), kv->key.ptr);
		if (strlen(key) == kv->key.len)
			FZ_CHECK(gguf_find_kv(g, key) != NULL, "key %s not found", key);
		if (kv->type == GGUF_TYPE_ARRAY) {
			uint64_t n = kv->v.arr.n < 64 ? kv->v.arr.n : 64;

			for (uint64_t j = 0; j < n; j++) {
				if (kv->v.arr.type == GGUF_TYPE_STRING)
					sink += kv->v.arr.strs[j].len > 0 ?
					        (uint8_t)kv->v.arr.strs[j].ptr[0] : 0;
				else if (kv->v.arr.type == GGUF_TYPE_FLOAT32 ||
				        kv->v.arr.type == GGUF_TYPE_FLOAT64)
					sink += (uint64_t)(gguf_arr_f32(kv, j) != 0);
				else
					sink += (uint64_t)gguf_arr_i64(kv, j);
			}
		} else if (kv->type == GGUF_TYPE_STRING && kv->v.str.len > 0) {
			sink += (uint8_t)kv->v.str.ptr[kv->v.str.len - 1];
		}
	}
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct gguf_tensor *t = &g->tensors[i];

		FZ_CHECK((const uint8_t *)t->data >= g->base &&
		        (const uint8_t *)t->data + t->size <= g->base + g->file_size,
		        "tensor %" PRIu64 " outside the file", i);
		if (t->size > 0)
			sink += ((const uint8_t *)t->data)[t->size - 1];
	}
	(void)sink;
}

/* Bad files are expected: their warnings would only slow the run. */
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_set_level(LOG_ERROR);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gguf_file *g;
	struct model *m;
	struct tok *t;
	char err[512];
	void *buf;
	int rc;

	if (size > (4u << 20) || (buf = malloc(size ? size : 1)) == NULL)
		return 0;
	memcpy(buf, data, size);
	err[0] = '\0';
	if ((rc = gguf_open_mem(&g, "fuzz.gguf", buf, size, err, sizeof(err))) != 0) {
		FZ_CHECK(err[0] != '\0', "refused (%d) without a message", rc);
		free(buf);
		return 0;
	}
	walk(g);
	err[0] = '\0';
	if ((rc = tok_load(&t, g, err, sizeof(err))) == 0) {
		int32_t *ids = NULL;
		size_t n = 0;

		if (tok_encode(t, "Hello world", 11, TOK_ADD_SPECIAL, &ids, &n) == 0)
			free(ids);
		tok_free(t);
	} else {
		FZ_CHECK(err[0] != '\0', "tokenizer refused (%d) without a message", rc);
	}
	err[0] = '\0';
	if ((rc = model_load_gguf(&m, g, err, sizeof(err))) == 0) {
		FZ_CHECK(m->hp.n_ctx_train <= MODEL_MAX_CTX, "context %u accepted",
		        m->hp.n_ctx_train);
		model_free(m);
	} else {
		FZ_CHECK(err[0] != '\0', "model refused (%d) without a message", rc);
	}
	free(buf);
	return 0;
}
