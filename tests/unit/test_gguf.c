/* GGUF reader, writer and tensor conversions.
 *
 * Reads the reference models in $EPMOE_TESTDATA; round-trips every
 * metadata type and every supported tensor type through the writer; builds
 * a small well-formed file byte by byte, then corrupts or truncates it at
 * known offsets and checks each error code and message; checks F16, BF16
 * and Q8_0 conversions against hand-computed values and the vectorised
 * rows against the scalar reference, bit for bit.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "gguf.h"
#include "testutil.h"

/* ---- helpers ---- */

static char tmpdir[256];

static void
tmp_setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_gguf.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void
tmp_teardown(void)
{
	DIR *d = opendir(tmpdir);
	struct dirent *e;
	char p[512];

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", tmpdir, e->d_name);
		unlink(p);
	}
	closedir(d);
	rmdir(tmpdir);
}

static void
tmp_path(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", tmpdir, name);
}

static void
write_bytes(const char *path, const void *p, size_t n)
{
	FILE *f;

	/* a fresh file: rewriting a truncated one makes ext4 flush it to
	 * disk on close (auto_da_alloc), which is slow */
	unlink(path);
	f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(p, 1, n, f), n);
	ck_assert_int_eq(fclose(f), 0);
}

static int
file_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* Byte builder for hand-made files; each put returns the offset written. */
struct bld {
	uint8_t *p;
	size_t len;
	size_t cap;
};

static size_t
b_put(struct bld *b, const void *d, size_t n)
{
	size_t at = b->len;

	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		ck_assert_ptr_nonnull(b->p);
	}
	memcpy(b->p + b->len, d, n);
	b->len += n;
	return at;
}

static size_t
b_u32(struct bld *b, uint32_t v)
{
	return b_put(b, &v, 4);
}

static size_t
b_u64(struct bld *b, uint64_t v)
{
	return b_put(b, &v, 8);
}

static size_t
b_str(struct bld *b, const char *s)
{
	size_t at = b_u64(b, strlen(s));

	b_put(b, s, strlen(s));
	return at;
}

static void
b_pad(struct bld *b, size_t a)
{
	static const uint8_t z[64];

	while (b->len % a)
		b_put(b, z, 1);
}

static void
patch_u32(struct bld *b, size_t at, uint32_t v)
{
	memcpy(b->p + at, &v, 4);
}

static void
patch_u64(struct bld *b, size_t at, uint64_t v)
{
	memcpy(b->p + at, &v, 8);
}

/* Offsets of the fields of the hand-built good file. */
struct good {
	size_t version, n_tensors, n_kv;
	size_t kv[4], kv_type[4], kv_val[4];
	size_t ti[3], ti_ndims[3], ti_ne[3], ti_type[3], ti_off[3];
	size_t tinfo_end, data;
};

/* A valid GGUF v3 file: 4 keys (a string, general.alignment = 32, a u32,
 * a string array) and 3 tensors (f32 {4,2}, f16 {8}, q8_0 {32,2}).  The
 * last tensor ends exactly at the end of the file. */
static void
build_good(struct bld *b, struct good *g)
{
	static const struct {
		const char *name;
		uint32_t n_dims;
		uint64_t ne[2];
		uint32_t type;
		uint64_t off;
	} ts[3] = {
		{ "t.f32", 2, { 4, 2 }, DTYPE_F32, 0 },
		{ "t.f16", 1, { 8, 1 }, DTYPE_F16, 32 },
		{ "t.q8_", 2, { 32, 2 }, DTYPE_Q8_0, 64 },
	};

	memset(b, 0, sizeof(*b));
	b_u32(b, GGUF_MAGIC);
	g->version = b_u32(b, 3);
	g->n_tensors = b_u64(b, 3);
	g->n_kv = b_u64(b, 4);

	g->kv[0] = b_str(b, "general.architecture");
	g->kv_type[0] = b_u32(b, GGUF_TYPE_STRING);
	g->kv_val[0] = b_str(b, "llama");
	g->kv[1] = b_str(b, "general.alignment");
	g->kv_type[1] = b_u32(b, GGUF_TYPE_UINT32);
	g->kv_val[1] = b_u32(b, 32);
	g->kv[2] = b_str(b, "test.count");
	g->kv_type[2] = b_u32(b, GGUF_TYPE_UINT32);
	g->kv_val[2] = b_u32(b, 7);
	g->kv[3] = b_str(b, "test.strs");
	g->kv_type[3] = b_u32(b, GGUF_TYPE_ARRAY);
	g->kv_val[3] = b_u32(b, GGUF_TYPE_STRING);
	b_u64(b, 2);
	b_str(b, "a");
	b_str(b, "bc");

	for (int i = 0; i < 3; i++) {
		g->ti[i] = b_str(b, ts[i].name);
		g->ti_ndims[i] = b_u32(b, ts[i].n_dims);
		g->ti_ne[i] = b_u64(b, ts[i].ne[0]);
		if (ts[i].n_dims > 1)
			b_u64(b, ts[i].ne[1]);
		g->ti_type[i] = b_u32(b, ts[i].type);
		g->ti_off[i] = b_u64(b, ts[i].off);
	}
	g->tinfo_end = b->len;
	b_pad(b, 32);
	g->data = b->len;
	/* 64 + 2 * 34 = 132 bytes of data; deterministic content */
	for (int i = 0; i < 132; i++) {
		uint8_t v = (uint8_t)(i * 7 + 3);

		b_put(b, &v, 1);
	}
	/* q8_0 scales: 1.0 */
	b->p[g->data + 64] = 0x00;
	b->p[g->data + 65] = 0x3c;
	b->p[g->data + 64 + 34] = 0x00;
	b->p[g->data + 64 + 35] = 0x3c;
}

/* Writes b to a file, opens it and expects code with a message naming the
 * file and containing what. */
static void
expect_fail(const struct bld *b, size_t len, int code, const char *what)
{
	char path[512], err[512];
	struct gguf_file *g = NULL;
	int rc;

	tmp_path(path, sizeof(path), "bad.gguf");
	write_bytes(path, b->p, len);
	memset(err, 0, sizeof(err));
	rc = gguf_open(&g, path, err, sizeof(err));
	ck_assert_msg(rc == code, "expected %d (%s), got %d: %s", code,
	        what, rc, err);
	ck_assert_ptr_null(g);
	ck_assert_msg(strncmp(err, path, strlen(path)) == 0,
	        "message does not start with the path: %s", err);
	ck_assert_msg(strstr(err, what) != NULL, "'%s' not in '%s'", what, err);
	ck_assert_ptr_null(strchr(err, '\n'));
}

/* ---- reading the reference models ---- */

START_TEST(reads_every_testdata_model)
{
	const char *td = getenv("EPMOE_TESTDATA");
	char pat[512], err[512];
	glob_t gl;
	int seen = 0;

	ck_assert_msg(td != NULL, "EPMOE_TESTDATA is not set");
	snprintf(pat, sizeof(pat), "%s/*.gguf", td);
	ck_assert_int_eq(glob(pat, 0, NULL, &gl), 0);
	ck_assert_uint_ge(gl.gl_pathc, 12);
	for (size_t i = 0; i < gl.gl_pathc; i++) {
		struct gguf_file *g;
		const struct gguf_tensor *t;
		const struct gguf_kv *kv;
		char arch[32], key[96];
		uint32_t u;
		float f;
		uint64_t n_t;
		bool b;

		ck_assert_msg(gguf_open(&g, gl.gl_pathv[i], err, sizeof(err)) == 0,
		        "%s", err);
		ck_assert_uint_eq(g->version, 3);
		ck_assert_uint_eq(g->alignment, 32);
		ck_assert_uint_eq(g->data_offset % 32, 0);
		ck_assert_int_eq(gguf_get_strcpy(g, "general.architecture", arch,
		                         sizeof(arch)), 0);
		if (strcmp(arch, "llama") == 0)
			n_t = 23;
		else if (strcmp(arch, "qwen2moe") == 0)
			n_t = 37;
		else if (strcmp(arch, "olmoe") == 0)
			n_t = 27;
		else
			ck_abort_msg("unexpected architecture %s", arch);
		/* every tensor lies in the file and has a type epmoe runs */
		for (uint64_t j = 0; j < g->n_tensors; j++) {
			t = &g->tensors[j];
			ck_assert_ptr_eq(t->data, g->base + g->data_offset + t->offset);
			ck_assert_uint_le(g->data_offset + t->offset + t->size, g->file_size);
			ck_assert_msg(dtype_supported(t->type), "%s: %s", gl.gl_pathv[i],
			        dtype_name(t->type));
		}
		if (strstr(gl.gl_pathv[i], "-tiny-f32.gguf") == NULL) {
			/* the llama-quantize files (testdata README: dim 256,
			 * 8 experts; 2 layers and vocab 512, or the 4-layer
			 * KJV model with vocab 4096) */
			int kjv = strstr(gl.gl_pathv[i], "kjv-") != NULL;
			snprintf(key, sizeof(key), "%s.embedding_length", arch);
			ck_assert_int_eq(gguf_get_u32(g, key, &u), 0);
			ck_assert_uint_eq(u, 256);
			snprintf(key, sizeof(key), "%s.block_count", arch);
			ck_assert_int_eq(gguf_get_u32(g, key, &u), 0);
			ck_assert_uint_eq(u, kjv ? 4 : 2);
			ck_assert_uint_eq(g->n_tensors, n_t + (kjv ? 20 : 0));
			ck_assert_int_eq(gguf_get_u32(g, "general.quantization_version", &u), 0);
			ck_assert_uint_eq(u, 2);
			t = gguf_find_tensor(g, "token_embd.weight");
			ck_assert_ptr_nonnull(t);
			ck_assert_uint_eq(t->ne[1], kjv ? 4096 : 512);
			ck_assert_uint_eq(t->size, dtype_row_size(t->type, 256) * t->ne[1]);
			gguf_close(g);
			continue;
		}
		seen++;
		ck_assert_uint_eq(g->n_tensors, n_t);
		snprintf(key, sizeof(key), "%s.embedding_length", arch);
		ck_assert_int_eq(gguf_get_u32(g, key, &u), 0);
		ck_assert_uint_eq(u, 64);
		snprintf(key, sizeof(key), "%s.block_count", arch);
		ck_assert_int_eq(gguf_get_u32(g, key, &u), 0);
		ck_assert_uint_eq(u, 2);
		snprintf(key, sizeof(key), "%s.expert_count", arch);
		ck_assert_int_eq(gguf_get_u32(g, key, &u), 0);
		ck_assert_uint_eq(u, 8);
		snprintf(key, sizeof(key), "%s.rope.freq_base", arch);
		ck_assert_int_eq(gguf_get_f32(g, key, &f), 0);
		ck_assert_float_eq(f, 10000.0f);
		ck_assert_int_eq(gguf_get_bool(g, "tokenizer.ggml.add_bos_token",
		                         &b), 0);
		ck_assert(b);
		ck_assert_int_eq(gguf_get_arr(g, "tokenizer.ggml.tokens",
		                         GGUF_TYPE_STRING, &kv), 0);
		ck_assert_uint_eq(kv->v.arr.n, 512);
		ck_assert(gguf_str_eq(kv->v.arr.strs[1], "<s>"));
		ck_assert(gguf_str_eq(kv->v.arr.strs[3], "<0x00>"));
		ck_assert(gguf_str_eq(kv->v.arr.strs[259], "\xe2\x96\x81"));
		ck_assert_int_eq(gguf_get_arr(g, "tokenizer.ggml.scores",
		                         GGUF_TYPE_FLOAT32, &kv), 0);
		ck_assert_float_eq(gguf_arr_f32(kv, 260), -2.0f);
		ck_assert_int_eq(gguf_get_arr(g, "tokenizer.ggml.token_type",
		                         GGUF_TYPE_INT32, &kv), 0);
		ck_assert_int_eq(gguf_arr_i64(kv, 0), 2);
		ck_assert_int_eq(gguf_arr_i64(kv, 300), 1);

		t = gguf_find_tensor(g, "token_embd.weight");
		ck_assert_ptr_nonnull(t);
		ck_assert_uint_eq(t->n_dims, 2);
		ck_assert_uint_eq(t->ne[0], 64);
		ck_assert_uint_eq(t->ne[1], 512);
		ck_assert_int_eq(t->type, DTYPE_F32);
		ck_assert_uint_eq(t->size, 64 * 512 * 4);
		t = gguf_find_tensor(g, "blk.1.ffn_gate_exps.weight");
		ck_assert_ptr_nonnull(t);
		ck_assert_uint_eq(t->n_dims, 3);
		ck_assert_uint_eq(t->ne[0], 64);
		ck_assert_uint_eq(t->ne[1], 128);
		ck_assert_uint_eq(t->ne[2], 8);
		t = gguf_find_tensor(g, "blk.0.ffn_down_exps.weight");
		ck_assert_ptr_nonnull(t);
		ck_assert_uint_eq(t->ne[0], 128);
		ck_assert_uint_eq(t->ne[1], 64);
		ck_assert_uint_eq(t->ne[2], 8);
		t = gguf_find_tensor(g, "blk.0.ffn_gate_inp.weight");
		ck_assert_ptr_nonnull(t);
		ck_assert_uint_eq(t->ne[0], 64);
		ck_assert_uint_eq(t->ne[1], 8);
		ck_assert_ptr_nonnull(gguf_find_tensor(g, "output.weight"));
		ck_assert_ptr_null(gguf_find_tensor(g, "output.weight2"));
		/* data pointers agree with offsets, tensors lie in the file */
		for (uint64_t j = 0; j < g->n_tensors; j++) {
			t = &g->tensors[j];
			ck_assert_ptr_eq(t->data,
			        g->base + g->data_offset + t->offset);
			ck_assert_uint_le(g->data_offset + t->offset + t->size,
			        g->file_size);
		}
		/* norms are near 1 */
		t = gguf_find_tensor(g, "output_norm.weight");
		ck_assert_ptr_nonnull(t);
		ck_assert_float_eq_tol(((const float *)t->data)[0], 1.0f, 0.5f);
		gguf_close(g);
	}
	globfree(&gl);
	ck_assert_int_ge(seen, 3);
}
END_TEST

/* ---- writer round trip ---- */

static const struct gguf_kv *
kv_of(const struct gguf_file *g, const char *key, enum gguf_type t)
{
	const struct gguf_kv *kv = gguf_find_kv(g, key);

	ck_assert_msg(kv != NULL, "key %s missing", key);
	ck_assert_int_eq(kv->type, t);
	return kv;
}

static int
fill_ramp(void *ctx, void *dst, size_t size)
{
	int *calls = ctx;

	for (size_t i = 0; i < size; i++)
		((uint8_t *)dst)[i] = (uint8_t)(i * 13 + 5);
	(*calls)++;
	return 0;
}

START_TEST(roundtrips_every_value_and_tensor_type)
{
	static const uint8_t au8[] = { 0, 7, 255 };
	static const int8_t ai8[] = { -128, 0, 127 };
	static const uint16_t au16[] = { 0, 1000, 65535 };
	static const int16_t ai16[] = { -32768, -5, 32767 };
	static const uint32_t au32[] = { 0, 123456789, 4294967295u };
	static const int32_t ai32[] = { INT32_MIN, -1, INT32_MAX };
	static const float af32[] = { -1.5f, 0.0f, 3.25f };
	static const uint8_t abool[] = { 1, 0, 1 };
	static const uint64_t au64[] = { 0, 1ull << 40, UINT64_MAX };
	static const int64_t ai64[] = { INT64_MIN, -3, INT64_MAX };
	static const double af64[] = { -1e300, 0.5, 2.0 };
	static const char *const strs[] = { "alpha", "", "\xe2\x96\x81word" };
	static const struct { const char *key; enum gguf_type t; const void *d; }
	        arrs[] = {
		{ "a.u8", GGUF_TYPE_UINT8, au8 }, { "a.i8", GGUF_TYPE_INT8, ai8 },
		{ "a.u16", GGUF_TYPE_UINT16, au16 },
		{ "a.i16", GGUF_TYPE_INT16, ai16 },
		{ "a.u32", GGUF_TYPE_UINT32, au32 },
		{ "a.i32", GGUF_TYPE_INT32, ai32 },
		{ "a.f32", GGUF_TYPE_FLOAT32, af32 },
		{ "a.bool", GGUF_TYPE_BOOL, abool },
		{ "a.u64", GGUF_TYPE_UINT64, au64 },
		{ "a.i64", GGUF_TYPE_INT64, ai64 },
		{ "a.f64", GGUF_TYPE_FLOAT64, af64 },
	};
	const uint64_t ne_f32[] = { 3, 5 }, ne_f16[] = { 7 },
	               ne_bf16[] = { 2, 3, 2 }, ne_q8[] = { 64, 2, 1, 3 };
	float f32d[15];
	uint16_t f16d[7], bf16d[12];
	uint8_t q8d[2 * 34 * 2 * 3];
	char path[512], err[512], buf[16];
	struct gguf_writer *w;
	struct gguf_file *g;
	const struct gguf_kv *kv;
	const struct gguf_tensor *t;
	int calls = 0;

	for (int i = 0; i < 15; i++)
		f32d[i] = (float)i * 0.5f - 3.0f;
	for (int i = 0; i < 7; i++)
		f16d[i] = (uint16_t)(0x3c00 + i);
	for (int i = 0; i < 12; i++)
		bf16d[i] = (uint16_t)(0x3f80 + i);
	for (size_t i = 0; i < sizeof(q8d); i++)
		q8d[i] = (uint8_t)(i * 31);

	for (uint32_t version = 2; version <= 3; version++) {
		tmp_path(path, sizeof(path), "rt.gguf");
		ck_assert_int_eq(gguf_writer_new(&w, version), 0);
		ck_assert_int_eq(gguf_writer_set_u8(w, "s.u8", 200), 0);
		ck_assert_int_eq(gguf_writer_set_i8(w, "s.i8", -100), 0);
		ck_assert_int_eq(gguf_writer_set_u16(w, "s.u16", 60000), 0);
		ck_assert_int_eq(gguf_writer_set_i16(w, "s.i16", -30000), 0);
		ck_assert_int_eq(gguf_writer_set_u32(w, "s.u32", 4000000000u), 0);
		ck_assert_int_eq(gguf_writer_set_i32(w, "s.i32", -2000000000), 0);
		ck_assert_int_eq(gguf_writer_set_u64(w, "s.u64",
		                         (1ull << 63) + 5), 0);
		ck_assert_int_eq(gguf_writer_set_i64(w, "s.i64", -(1ll << 62)), 0);
		ck_assert_int_eq(gguf_writer_set_f32(w, "s.f32", 1.5f), 0);
		ck_assert_int_eq(gguf_writer_set_f64(w, "s.f64", -2.25e300), 0);
		ck_assert_int_eq(gguf_writer_set_bool(w, "s.bool", true), 0);
		ck_assert_int_eq(gguf_writer_set_str(w, "s.str", "h\xc3\xa9llo"), 0);
		ck_assert_int_eq(gguf_writer_set_str(w, "s.empty", ""), 0);
		for (size_t i = 0; i < sizeof(arrs) / sizeof(arrs[0]); i++)
			ck_assert_int_eq(gguf_writer_set_arr(w, arrs[i].key,
			                         arrs[i].t, arrs[i].d, 3), 0);
		ck_assert_int_eq(gguf_writer_set_arr_str(w, "a.str", strs, 3), 0);
		ck_assert_int_eq(gguf_writer_set_arr(w, "a.empty",
		                         GGUF_TYPE_UINT32, NULL, 0), 0);
		ck_assert_int_eq(gguf_writer_set_arr_str(w, "a.emptystr", NULL, 0),
		        0);
		ck_assert_int_eq(gguf_writer_set_alignment(w, 64), 0);
		ck_assert_int_eq(gguf_writer_add_tensor(w, "f32", DTYPE_F32, 2,
		                         ne_f32, f32d, sizeof(f32d)), 0);
		ck_assert_int_eq(gguf_writer_add_tensor(w, "f16", DTYPE_F16, 1,
		                         ne_f16, f16d, sizeof(f16d)), 0);
		ck_assert_int_eq(gguf_writer_add_tensor_fn(w, "fill",
		                         DTYPE_F32, 1, ne_f16, fill_ramp,
		                         &calls), 0);
		ck_assert_int_eq(gguf_writer_add_tensor(w, "bf16", DTYPE_BF16,
		                         3, ne_bf16, bf16d, sizeof(bf16d)), 0);
		ck_assert_int_eq(gguf_writer_add_tensor(w, "q8", DTYPE_Q8_0, 4,
		                         ne_q8, q8d, sizeof(q8d)), 0);
		ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof(err)), 0);
		gguf_writer_free(w);
		ck_assert_int_eq(calls, (int)version - 1);
		{
			char tp[600];

			snprintf(tp, sizeof(tp), "%s.tmp", path);
			ck_assert(!file_exists(tp));
		}

		ck_assert_msg(gguf_open(&g, path, err, sizeof(err)) == 0, "%s",
		        err);
		ck_assert_uint_eq(g->version, version);
		ck_assert_uint_eq(g->alignment, 64);
		ck_assert_uint_eq(g->n_kv, 13 + 11 + 3 + 1);
		ck_assert_uint_eq(g->data_offset % 64, 0);
#define KV(k, ty) (kv = kv_of(g, k, ty))
		ck_assert_uint_eq(KV("s.u8", GGUF_TYPE_UINT8)->v.u64, 200);
		ck_assert_int_eq(KV("s.i8", GGUF_TYPE_INT8)->v.i64, -100);
		ck_assert_uint_eq(KV("s.u16", GGUF_TYPE_UINT16)->v.u64, 60000);
		ck_assert_int_eq(KV("s.i16", GGUF_TYPE_INT16)->v.i64, -30000);
		ck_assert_uint_eq(KV("s.u32", GGUF_TYPE_UINT32)->v.u64,
		        4000000000u);
		ck_assert_int_eq(KV("s.i32", GGUF_TYPE_INT32)->v.i64,
		        -2000000000);
		ck_assert_uint_eq(KV("s.u64", GGUF_TYPE_UINT64)->v.u64,
		        (1ull << 63) + 5);
		ck_assert_int_eq(KV("s.i64", GGUF_TYPE_INT64)->v.i64,
		        -(1ll << 62));
		ck_assert_double_eq(KV("s.f32", GGUF_TYPE_FLOAT32)->v.f64, 1.5);
		ck_assert_double_eq(KV("s.f64", GGUF_TYPE_FLOAT64)->v.f64,
		        -2.25e300);
		ck_assert_uint_eq(KV("s.bool", GGUF_TYPE_BOOL)->v.u64, 1);
		ck_assert(gguf_str_eq(KV("s.str", GGUF_TYPE_STRING)->v.str,
		        "h\xc3\xa9llo"));
		ck_assert_uint_eq(KV("s.empty", GGUF_TYPE_STRING)->v.str.len, 0);
		for (size_t i = 0; i < sizeof(arrs) / sizeof(arrs[0]); i++) {
			KV(arrs[i].key, GGUF_TYPE_ARRAY);
			ck_assert_int_eq(kv->v.arr.type, arrs[i].t);
			ck_assert_uint_eq(kv->v.arr.n, 3);
		}
		kv = gguf_find_kv(g, "a.u8");
		ck_assert_int_eq(gguf_arr_i64(kv, 2), 255);
		kv = gguf_find_kv(g, "a.i8");
		ck_assert_int_eq(gguf_arr_i64(kv, 0), -128);
		kv = gguf_find_kv(g, "a.u16");
		ck_assert_int_eq(gguf_arr_i64(kv, 2), 65535);
		kv = gguf_find_kv(g, "a.i16");
		ck_assert_int_eq(gguf_arr_i64(kv, 0), -32768);
		kv = gguf_find_kv(g, "a.u32");
		ck_assert_int_eq(gguf_arr_i64(kv, 2), 4294967295ll);
		kv = gguf_find_kv(g, "a.i32");
		ck_assert_int_eq(gguf_arr_i64(kv, 0), INT32_MIN);
		kv = gguf_find_kv(g, "a.f32");
		ck_assert_float_eq(gguf_arr_f32(kv, 2), 3.25f);
		kv = gguf_find_kv(g, "a.bool");
		ck_assert_int_eq(gguf_arr_i64(kv, 0), 1);
		ck_assert_int_eq(gguf_arr_i64(kv, 1), 0);
		kv = gguf_find_kv(g, "a.u64");
		ck_assert_uint_eq((uint64_t)gguf_arr_i64(kv, 2), UINT64_MAX);
		kv = gguf_find_kv(g, "a.i64");
		ck_assert_int_eq(gguf_arr_i64(kv, 0), INT64_MIN);
		kv = gguf_find_kv(g, "a.f64");
		ck_assert_float_eq(gguf_arr_f32(kv, 1), 0.5f);
		ck_assert_int_eq(gguf_get_arr(g, "a.str", GGUF_TYPE_STRING, &kv),
		        0);
		ck_assert_uint_eq(kv->v.arr.n, 3);
		for (int i = 0; i < 3; i++)
			ck_assert(gguf_str_eq(kv->v.arr.strs[i], strs[i]));
		ck_assert_int_eq(gguf_get_arr(g, "a.empty", GGUF_TYPE_UINT32, &kv),
		        0);
		ck_assert_uint_eq(kv->v.arr.n, 0);
		ck_assert_int_eq(gguf_get_arr(g, "a.emptystr", GGUF_TYPE_STRING,
		                         &kv), 0);
		ck_assert_uint_eq(kv->v.arr.n, 0);
#undef KV
		ck_assert_uint_eq(g->n_tensors, 5);
		t = gguf_find_tensor(g, "f32");
		ck_assert_uint_eq(t->ne[0], 3);
		ck_assert_uint_eq(t->ne[1], 5);
		ck_assert_uint_eq(t->ne[2], 1);
		ck_assert_int_eq(memcmp(t->data, f32d, sizeof(f32d)), 0);
		t = gguf_find_tensor(g, "f16");
		ck_assert_int_eq(t->type, DTYPE_F16);
		ck_assert_uint_eq(t->size, sizeof(f16d));
		ck_assert_int_eq(memcmp(t->data, f16d, sizeof(f16d)), 0);
		t = gguf_find_tensor(g, "fill");
		ck_assert_uint_eq(t->size, 28);
		for (int i = 0; i < 28; i++)
			ck_assert_uint_eq(((const uint8_t *)t->data)[i],
			        (uint8_t)(i * 13 + 5));
		t = gguf_find_tensor(g, "bf16");
		ck_assert_uint_eq(t->n_dims, 3);
		ck_assert_uint_eq(t->ne[2], 2);
		ck_assert_int_eq(memcmp(t->data, bf16d, sizeof(bf16d)), 0);
		t = gguf_find_tensor(g, "q8");
		ck_assert_uint_eq(t->n_dims, 4);
		ck_assert_uint_eq(t->n_elements, 64 * 2 * 3);
		ck_assert_uint_eq(t->size, sizeof(q8d));
		ck_assert_int_eq(memcmp(t->data, q8d, sizeof(q8d)), 0);
		for (uint64_t i = 0; i < g->n_tensors; i++)
			ck_assert_uint_eq(g->tensors[i].offset % 64, 0);
		ck_assert_int_eq(gguf_get_strcpy(g, "s.str", buf, sizeof(buf)), 0);
		ck_assert_str_eq(buf, "h\xc3\xa9llo");
		gguf_close(g);
	}
}
END_TEST

START_TEST(getters_convert_in_range_and_reject_the_rest)
{
	char path[512], err[512], small[4];
	struct gguf_writer *w;
	struct gguf_file *g;
	const struct gguf_kv *kv;
	struct gguf_str s;
	uint32_t u32;
	uint64_t u64;
	int64_t i64;
	float f;
	bool b;

	tmp_path(path, sizeof(path), "get.gguf");
	ck_assert_int_eq(gguf_writer_new(&w, 3), 0);
	gguf_writer_set_u8(w, "u8", 9);
	gguf_writer_set_u64(w, "big", 1ull << 40);
	gguf_writer_set_i32(w, "neg", -4);
	gguf_writer_set_i64(w, "pos", 77);
	gguf_writer_set_f64(w, "f64", 0.25);
	gguf_writer_set_bool(w, "yes", true);
	gguf_writer_set_str(w, "str", "hello");
	ck_assert_int_eq(gguf_writer_set_arr(w, "arr", GGUF_TYPE_INT16,
	                         (int16_t[]){ 1, -2 }, 2), 0);
	ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof(err)), 0);
	gguf_writer_free(w);
	ck_assert_int_eq(gguf_open(&g, path, err, sizeof(err)), 0);

	ck_assert_int_eq(gguf_get_u32(g, "u8", &u32), 0);
	ck_assert_uint_eq(u32, 9);
	ck_assert_int_eq(gguf_get_u32(g, "big", &u32), EPMOE_EFORMAT);
	ck_assert_int_eq(gguf_get_u64(g, "big", &u64), 0);
	ck_assert_uint_eq(u64, 1ull << 40);
	ck_assert_int_eq(gguf_get_u32(g, "neg", &u32), EPMOE_EFORMAT);
	ck_assert_int_eq(gguf_get_i64(g, "neg", &i64), 0);
	ck_assert_int_eq(i64, -4);
	ck_assert_int_eq(gguf_get_u32(g, "pos", &u32), 0);
	ck_assert_uint_eq(u32, 77);
	ck_assert_int_eq(gguf_get_f32(g, "neg", &f), 0);
	ck_assert_float_eq(f, -4.0f);
	ck_assert_int_eq(gguf_get_f32(g, "f64", &f), 0);
	ck_assert_float_eq(f, 0.25f);
	ck_assert_int_eq(gguf_get_u32(g, "f64", &u32), EPMOE_EFORMAT);
	ck_assert_int_eq(gguf_get_f32(g, "str", &f), EPMOE_EFORMAT);
	ck_assert_int_eq(gguf_get_bool(g, "yes", &b), 0);
	ck_assert(b);
	ck_assert_int_eq(gguf_get_bool(g, "u8", &b), EPMOE_EFORMAT);
	ck_assert_int_eq(gguf_get_str(g, "str", &s), 0);
	ck_assert(gguf_str_eq(s, "hello"));
	ck_assert(!gguf_str_eq(s, "hell"));
	ck_assert_int_eq(gguf_get_str(g, "u8", &s), EPMOE_EFORMAT);
	ck_assert_int_eq(gguf_get_strcpy(g, "str", small, sizeof(small)),
	        EPMOE_ERANGE);
	ck_assert_int_eq(gguf_get_arr(g, "arr", GGUF_TYPE_INT16, &kv), 0);
	ck_assert_int_eq(gguf_arr_i64(kv, 1), -2);
	ck_assert_float_eq(gguf_arr_f32(kv, 1), -2.0f);
	ck_assert_int_eq(gguf_get_arr(g, "arr", GGUF_TYPE_COUNT, &kv), 0);
	ck_assert_int_eq(gguf_get_arr(g, "arr", GGUF_TYPE_INT32, &kv),
	        EPMOE_EFORMAT);
	ck_assert_int_eq(gguf_get_arr(g, "str", GGUF_TYPE_COUNT, &kv),
	        EPMOE_EFORMAT);
	ck_assert_int_eq(gguf_get_u32(g, "nope", &u32), EPMOE_ENOENT);
	ck_assert_int_eq(gguf_get_str(g, "nope", &s), EPMOE_ENOENT);
	ck_assert_int_eq(gguf_get_arr(g, "nope", GGUF_TYPE_COUNT, &kv),
	        EPMOE_ENOENT);
	ck_assert_ptr_null(gguf_find_kv(g, "nope"));
	ck_assert_uint_eq(g->n_tensors, 0);
	gguf_close(g);
}
END_TEST

/* ---- writer errors ---- */

static int
fill_fail(void *ctx, void *dst, size_t size)
{
	return EPMOE_EIO;
}

START_TEST(writer_rejects_bad_input_and_leaves_no_partial_file)
{
	const uint64_t ne[] = { 4, 2 }, ne0[] = { 4, 0 }, neq[] = { 16 };
	float d[8] = { 0 };
	char path[512], tmp[520], err[512];
	struct gguf_writer *w;

	ck_assert_int_eq(gguf_writer_new(&w, 1), EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_new(&w, 4), EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_new(&w, 3), 0);
	ck_assert_int_eq(gguf_writer_set_u32(w, "k", 1), 0);
	ck_assert_int_eq(gguf_writer_set_str(w, "k", "x"), EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_set_arr(w, "a", GGUF_TYPE_STRING, d, 1),
	        EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_set_arr(w, "a", GGUF_TYPE_ARRAY, d, 1),
	        EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_set_alignment(w, 0), EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_set_alignment(w, 48), EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_add_tensor(w, "t", DTYPE_F32, 2, ne,
	                         d, sizeof(d)), 0);
	ck_assert_int_eq(gguf_writer_add_tensor(w, "t", DTYPE_F32, 2, ne,
	                         d, sizeof(d)), EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_add_tensor(w, "u", DTYPE_F32, 2, ne,
	                         d, sizeof(d) - 4), EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_add_tensor(w, "u", DTYPE_F32, 2, ne0,
	                         d, 0), EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_add_tensor(w, "u", DTYPE_F32, 5, ne,
	                         d, sizeof(d)), EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_add_tensor(w, "u", DTYPE_Q4_K, 2, ne,
	                         d, sizeof(d)), EPMOE_EINVAL); /* ne0 % 256 */
	ck_assert_int_eq(gguf_writer_add_tensor(w, "u", (enum dtype)16, 2, ne,
	                         d, sizeof(d)), EPMOE_EINVAL); /* iq2_xxs */
	ck_assert_int_eq(gguf_writer_add_tensor(w, "u", DTYPE_Q8_0, 1, neq,
	                         d, 18), EPMOE_EINVAL);
	ck_assert_int_eq(gguf_writer_add_tensor_fn(w, "v", DTYPE_F32, 2,
	                         ne, fill_fail, NULL), 0);

	/* a failing fill names the tensor and leaves nothing behind */
	tmp_path(path, sizeof(path), "w.gguf");
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof(err)),
	        EPMOE_EIO);
	ck_assert_ptr_nonnull(strstr(err, "'v'"));
	ck_assert_ptr_nonnull(strstr(err, path));
	ck_assert(!file_exists(path));
	ck_assert(!file_exists(tmp));
	gguf_writer_free(w);

	/* an unwritable directory gives an error naming the file */
	ck_assert_int_eq(gguf_writer_new(&w, 3), 0);
	ck_assert_int_ne(gguf_writer_write(w, "/nonexistent-dir/x.gguf", err,
	                         sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, "/nonexistent-dir/x.gguf"));
	gguf_writer_free(w);
	gguf_writer_free(NULL);
}
END_TEST

/* ---- malformed files ---- */

START_TEST(good_handmade_file_opens)
{
	struct bld b;
	struct good o;
	char path[512], err[512];
	struct gguf_file *g;
	const struct gguf_tensor *t;
	uint32_t u;

	build_good(&b, &o);
	tmp_path(path, sizeof(path), "good.gguf");
	write_bytes(path, b.p, b.len);
	ck_assert_msg(gguf_open(&g, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(g->n_kv, 4);
	ck_assert_uint_eq(g->n_tensors, 3);
	ck_assert_uint_eq(g->data_offset, o.data);
	ck_assert_int_eq(gguf_get_u32(g, "test.count", &u), 0);
	ck_assert_uint_eq(u, 7);
	t = gguf_find_tensor(g, "t.q8_");
	ck_assert_ptr_nonnull(t);
	ck_assert_uint_eq(t->size, 68);
	ck_assert_ptr_eq(t->data, g->base + o.data + 64);
	ck_assert_str_eq(g->path, path);
	gguf_close(g);
	gguf_close(NULL);
	free(b.p);
}
END_TEST

START_TEST(bad_magic_and_versions_are_rejected)
{
	struct bld b;
	struct good o;

	build_good(&b, &o);
	b.p[0] = 'X';
	expect_fail(&b, b.len, EPMOE_EFORMAT, "not a GGUF file");
	b.p[0] = 'G';
	patch_u32(&b, o.version, 1);
	expect_fail(&b, b.len, EPMOE_ENOTSUP, "unsupported GGUF version 1");
	patch_u32(&b, o.version, 4);
	expect_fail(&b, b.len, EPMOE_ENOTSUP, "unsupported GGUF version 4");
	patch_u32(&b, o.version, 0x03000000);
	expect_fail(&b, b.len, EPMOE_ENOTSUP, "big-endian");
	patch_u32(&b, o.version, 2);
	{
		/* version 2 has the same layout and is accepted */
		char path[512];
		struct gguf_file *g;

		tmp_path(path, sizeof(path), "v2.gguf");
		write_bytes(path, b.p, b.len);
		ck_assert_int_eq(gguf_open(&g, path, NULL, 0), 0);
		ck_assert_uint_eq(g->version, 2);
		gguf_close(g);
	}
	expect_fail(&b, 0, EPMOE_EFORMAT, "truncated: header");
	expect_fail(&b, 3, EPMOE_EFORMAT, "truncated: header");
	expect_fail(&b, 20, EPMOE_EFORMAT, "truncated: header");
	free(b.p);
}
END_TEST

START_TEST(truncation_anywhere_is_an_error)
{
	struct bld b;
	struct good o;
	char path[512], err[512];

	build_good(&b, &o);
	/* named places first */
	expect_fail(&b, o.kv[2] + 3, EPMOE_EFORMAT,
	        "truncated: key-value pair 3 of 4 extends past end of file");
	expect_fail(&b, o.kv_val[2] + 2, EPMOE_EFORMAT,
	        "key-value pair 3 of 4 ('test.count') extends past end");
	expect_fail(&b, o.ti[1] + 10, EPMOE_EFORMAT,
	        "truncated: tensor info 2 of 3 extends past end of file (size");
	expect_fail(&b, o.ti_off[2] + 4, EPMOE_EFORMAT,
	        "tensor info 3 of 3");
	expect_fail(&b, o.data + 100, EPMOE_EFORMAT,
	        "truncated: tensor 't.q8_' (3 of 3) data");
	if (o.data > o.tinfo_end)
		expect_fail(&b, o.data - 1, EPMOE_EFORMAT,
		        "truncated: data section at offset");
	/* every shorter prefix fails cleanly */
	tmp_path(path, sizeof(path), "cut.gguf");
	for (size_t len = 0; len < b.len; len++) {
		struct gguf_file *g = NULL;
		int rc;

		write_bytes(path, b.p, len);
		rc = gguf_open(&g, path, err, sizeof(err));
		ck_assert_msg(rc == EPMOE_EFORMAT, "len %zu: rc %d", len, rc);
		ck_assert_ptr_nonnull(strstr(err, path));
		ck_assert_ptr_nonnull(strstr(err, "truncated"));
	}
	free(b.p);
}
END_TEST

START_TEST(huge_counts_and_lengths_fail_without_allocating)
{
	struct bld b;
	struct good o;

	/* counts of 2^60 with nothing behind them */
	memset(&b, 0, sizeof(b));
	b_u32(&b, GGUF_MAGIC);
	b_u32(&b, 3);
	b_u64(&b, 0);
	b_u64(&b, 1ull << 60);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "truncated: key-value pair 1 of 1152921504606846976 extends "
	        "past end of file (size 24)");
	patch_u64(&b, 8, 1ull << 60);
	patch_u64(&b, 16, 0);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "truncated: tensor info 1 of 1152921504606846976 extends");
	free(b.p);

	/* in a good file, the bytes run out (or stop making sense) long
	 * before 2^60 entries; under ASan a huge allocation would abort */
	build_good(&b, &o);
	patch_u64(&b, o.n_kv, 1ull << 60);
	expect_fail(&b, b.len, EPMOE_EFORMAT, "");
	patch_u64(&b, o.n_kv, 4);
	patch_u64(&b, o.n_tensors, 1ull << 60);
	expect_fail(&b, b.len, EPMOE_EFORMAT, "");
	patch_u64(&b, o.n_tensors, UINT64_MAX);
	expect_fail(&b, b.len, EPMOE_EFORMAT, "of 18446744073709551615");
	patch_u64(&b, o.n_tensors, 3);
	patch_u64(&b, o.kv[0], 1ull << 60); /* key length */
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "truncated: key-value pair 1 of 4 extends past end of file");
	patch_u64(&b, o.kv[0], 20);
	patch_u64(&b, o.kv_val[0], UINT64_MAX); /* string value length */
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "key-value pair 1 of 4 ('general.architecture') extends");
	patch_u64(&b, o.kv_val[0], 5);
	patch_u64(&b, o.kv_val[3] + 4, 1ull << 60); /* string array count */
	expect_fail(&b, b.len, EPMOE_EFORMAT, "('test.strs') extends past end");
	patch_u64(&b, o.kv_val[3] + 4, 2);
	patch_u64(&b, o.ti[0], 1ull << 62); /* tensor name length */
	expect_fail(&b, b.len, EPMOE_EFORMAT, "tensor info 1 of 3 extends");
	free(b.p);

	/* a numeric array whose count times element size wraps */
	memset(&b, 0, sizeof(b));
	b_u32(&b, GGUF_MAGIC);
	b_u32(&b, 3);
	b_u64(&b, 0);
	b_u64(&b, 1);
	b_str(&b, "arr");
	b_u32(&b, GGUF_TYPE_ARRAY);
	b_u32(&b, GGUF_TYPE_UINT64);
	b_u64(&b, (1ull << 61) + 1);
	b_u64(&b, 0);
	expect_fail(&b, b.len, EPMOE_EFORMAT, "('arr') extends past end");
	free(b.p);
}
END_TEST

START_TEST(bad_tensor_infos_are_rejected)
{
	struct bld b;
	struct good o;

	build_good(&b, &o);
	patch_u32(&b, o.ti_ndims[1], 5);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "tensor 't.f16' (2 of 3): n_dims 5 is not in 1..4");
	patch_u32(&b, o.ti_ndims[1], 0);
	expect_fail(&b, b.len, EPMOE_EFORMAT, "n_dims 0");
	patch_u32(&b, o.ti_ndims[1], 1);

	patch_u64(&b, o.ti_ne[0], 0);
	expect_fail(&b, b.len, EPMOE_EFORMAT, "dimension 0 is 0");
	patch_u64(&b, o.ti_ne[0], 1ull << 62); /* x2 = 2^63 elements */
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "tensor 't.f32' (1 of 3): element count overflows");
	patch_u64(&b, o.ti_ne[0], 1ull << 61); /* 2^62 f32 = 2^64 bytes */
	expect_fail(&b, b.len, EPMOE_EFORMAT, "byte size overflows");
	patch_u64(&b, o.ti_ne[0], 4);

	patch_u32(&b, o.ti_type[0], 99);
	expect_fail(&b, b.len, EPMOE_ENOTSUP,
	        "type99, whose layout is not known (supported: f32, f16, bf16, "
	        "q4_0, q4_1, q5_0, q5_1, q8_0, q2_K");
	patch_u32(&b, o.ti_type[0], 32); /* retired by ggml */
	expect_fail(&b, b.len, EPMOE_ENOTSUP, "has tensor type type32");
	/* known types open even when epmoe cannot compute with them; the
	 * block size still has to divide the row */
	patch_u32(&b, o.ti_type[0], DTYPE_Q4_K);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "row length 4 is not a multiple of the q4_K block size 256");
	patch_u32(&b, o.ti_type[0], 20); /* iq4_nl */
	expect_fail(&b, b.len, EPMOE_EFORMAT, "of the iq4_nl block size 32");
	patch_u32(&b, o.ti_type[0], DTYPE_F32);

	patch_u64(&b, o.ti_ne[2], 16);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "row length 16 is not a multiple of the q8_0 block size 32");
	patch_u64(&b, o.ti_ne[2], 32);

	patch_u64(&b, o.ti_off[1], 36);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "tensor 't.f16' (2 of 3): offset 36 is not a multiple of the "
	        "alignment 32");
	patch_u64(&b, o.ti_off[1], 1ull << 40);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "truncated: tensor 't.f16' (2 of 3) data");
	patch_u64(&b, o.ti_off[1], UINT64_MAX - 31);
	expect_fail(&b, b.len, EPMOE_EFORMAT, "extends past end of file");
	patch_u64(&b, o.ti_off[1], 32);

	memcpy(b.p + o.ti[1] + 8, "t.f32", 5);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "duplicate tensor name in tensor 't.f32' (2 of 3)");
	free(b.p);
}
END_TEST

START_TEST(bad_metadata_is_rejected)
{
	struct bld b;
	struct good o;

	build_good(&b, &o);
	patch_u32(&b, o.kv_type[2], 13);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "key 'test.count': unknown value type 13");
	patch_u32(&b, o.kv_type[2], GGUF_TYPE_UINT32);
	patch_u32(&b, o.kv_val[3], GGUF_TYPE_ARRAY);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "key 'test.strs': nested arrays are not supported");
	patch_u32(&b, o.kv_val[3], 77);
	expect_fail(&b, b.len, EPMOE_EFORMAT, "unknown array element type 77");
	patch_u32(&b, o.kv_val[3], GGUF_TYPE_STRING);

	patch_u32(&b, o.kv_val[1], 0);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "general.alignment 0 is not a power of two");
	patch_u32(&b, o.kv_val[1], 24);
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "general.alignment 24 is not a power of two");
	patch_u32(&b, o.kv_val[1], 64); /* offset 32 no longer aligned */
	expect_fail(&b, b.len, EPMOE_EFORMAT, "not a multiple of the alignment 64");
	free(b.p);

	/* duplicate keys */
	memset(&b, 0, sizeof(b));
	b_u32(&b, GGUF_MAGIC);
	b_u32(&b, 3);
	b_u64(&b, 0);
	b_u64(&b, 2);
	for (int i = 0; i < 2; i++) {
		b_str(&b, "dup.key");
		b_u32(&b, GGUF_TYPE_UINT8);
		b_put(&b, "\x01", 1);
	}
	expect_fail(&b, b.len, EPMOE_EFORMAT, "duplicate key 'dup.key'");
	/* bool other than 0/1 */
	b.p[b.len - 1] = 2;
	patch_u32(&b, b.len - 5, GGUF_TYPE_BOOL);
	b.p[b.len - 6] = 'x'; /* "dup.kex": no longer a duplicate */
	expect_fail(&b, b.len, EPMOE_EFORMAT, "bool value 2 is not 0 or 1");
	free(b.p);

	/* general.alignment must be an integer */
	memset(&b, 0, sizeof(b));
	b_u32(&b, GGUF_MAGIC);
	b_u32(&b, 3);
	b_u64(&b, 0);
	b_u64(&b, 1);
	b_str(&b, "general.alignment");
	b_u32(&b, GGUF_TYPE_STRING);
	b_str(&b, "32");
	expect_fail(&b, b.len, EPMOE_EFORMAT,
	        "general.alignment has type string, not an integer");
	free(b.p);
}
END_TEST

START_TEST(files_that_are_not_there_or_not_files_are_errors)
{
	char err[512];
	struct gguf_file *g = NULL;

	ck_assert_int_eq(gguf_open(&g, "/nonexistent/x.gguf", err, sizeof(err)),
	        EPMOE_ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "/nonexistent/x.gguf"));
	ck_assert_int_eq(gguf_open(&g, tmpdir, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, tmpdir));
	ck_assert_ptr_null(g);
	/* a tiny err buffer is respected */
	ck_assert_int_eq(gguf_open(&g, "/nonexistent/x.gguf", err, 4),
	        EPMOE_ENOENT);
	ck_assert_uint_le(strlen(err), 3);
}
END_TEST

/* Flips random bytes in the header of a good file many times: the reader
 * must return 0 or a clean error, never crash or read out of bounds (run
 * under ASan with SAN=1). */
START_TEST(random_corruption_never_crashes)
{
	struct bld b;
	struct good o;
	char path[512], err[512];
	uint64_t s = 0x1234567;
	uint8_t *orig;
	int ok = 0, bad = 0;

	build_good(&b, &o);
	orig = malloc(b.len);
	memcpy(orig, b.p, b.len);
	tmp_path(path, sizeof(path), "fuzz.gguf");
	for (int it = 0; it < 3000; it++) {
		struct gguf_file *g = NULL;
		size_t len = b.len;
		int rc, k;

		memcpy(b.p, orig, b.len);
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		k = 1 + (int)((s >> 60) & 3);
		for (int j = 0; j < k; j++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			b.p[(s >> 33) % o.data] = (uint8_t)(s >> 17);
		}
		if ((s >> 20) % 4 == 0)
			len = (size_t)((s >> 24) % b.len);
		write_bytes(path, b.p, len);
		rc = gguf_open(&g, path, err, sizeof(err));
		if (rc == 0) {
			for (uint64_t i = 0; i < g->n_tensors; i++) {
				const struct gguf_tensor *t = &g->tensors[i];

				ck_assert(t->data >= (const void *)g->base);
				ck_assert_uint_le((size_t)((const uint8_t *)t->data -
				                          g->base) + t->size,
				        g->file_size);
			}
			gguf_close(g);
			ok++;
		} else {
			ck_assert(rc == EPMOE_EFORMAT || rc == EPMOE_ENOTSUP ||
			        rc == EPMOE_ENOMEM);
			ck_assert_ptr_nonnull(strstr(err, path));
			bad++;
		}
	}
	ck_assert_int_gt(bad, 750); /* at least the truncated quarter */
	ck_assert_int_gt(ok, 0);
	free(orig);
	free(b.p);
}
END_TEST

/* ---- conversions ---- */

static uint32_t
fbits(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	return u;
}

static float
bitsf(uint32_t u)
{
	float f;

	memcpy(&f, &u, 4);
	return f;
}

START_TEST(fp16_decodes_hand_computed_values)
{
	ck_assert_float_eq(fp16_to_f32(0x3c00), 1.0f);
	ck_assert_float_eq(fp16_to_f32(0xc000), -2.0f);
	ck_assert_float_eq(fp16_to_f32(0x7bff), 65504.0f);
	ck_assert_float_eq(fp16_to_f32(0x3555), 0.333251953125f);
	ck_assert_float_eq(fp16_to_f32(0x0001), ldexpf(1.0f, -24));
	ck_assert_float_eq(fp16_to_f32(0x03ff), 1023.0f * ldexpf(1.0f, -24));
	ck_assert_float_eq(fp16_to_f32(0x0400), ldexpf(1.0f, -14));
	ck_assert_float_eq(fp16_to_f32(0x8001), -ldexpf(1.0f, -24));
	ck_assert(isinf(fp16_to_f32(0x7c00)) && fp16_to_f32(0x7c00) > 0);
	ck_assert(isinf(fp16_to_f32(0xfc00)) && fp16_to_f32(0xfc00) < 0);
	ck_assert(isnan(fp16_to_f32(0x7e00)));
	ck_assert(isnan(fp16_to_f32(0x7c01))); /* signalling: still NaN */
	ck_assert_uint_eq(fbits(fp16_to_f32(0x8000)), 0x80000000u);
	ck_assert_uint_eq(fbits(fp16_to_f32(0x0000)), 0);
}
END_TEST

START_TEST(fp16_encodes_round_to_nearest_even)
{
	ck_assert_uint_eq(f32_to_fp16(1.0f), 0x3c00);
	ck_assert_uint_eq(f32_to_fp16(-2.0f), 0xc000);
	ck_assert_uint_eq(f32_to_fp16(65504.0f), 0x7bff);
	ck_assert_uint_eq(f32_to_fp16(65519.0f), 0x7bff);
	ck_assert_uint_eq(f32_to_fp16(65520.0f), 0x7c00); /* tie -> even = inf */
	ck_assert_uint_eq(f32_to_fp16(1e9f), 0x7c00);
	ck_assert_uint_eq(f32_to_fp16(-INFINITY), 0xfc00);
	ck_assert_uint_eq(f32_to_fp16(-0.0f), 0x8000);
	/* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: even is 1 */
	ck_assert_uint_eq(f32_to_fp16(1.0f + ldexpf(1, -11)), 0x3c00);
	/* 1 + 3 * 2^-11 is halfway between mantissa 1 and 2: even is 2 */
	ck_assert_uint_eq(f32_to_fp16(1.0f + 3 * ldexpf(1, -11)), 0x3c02);
	ck_assert_uint_eq(f32_to_fp16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)),
	        0x3c01);
	/* subnormals: units of 2^-24 */
	ck_assert_uint_eq(f32_to_fp16(ldexpf(1, -24)), 0x0001);
	ck_assert_uint_eq(f32_to_fp16(ldexpf(1, -25)), 0x0000); /* tie -> 0 */
	ck_assert_uint_eq(f32_to_fp16(ldexpf(3, -26)), 0x0001); /* 0.75 unit */
	ck_assert_uint_eq(f32_to_fp16(ldexpf(3, -25)), 0x0002); /* 1.5 -> 2 */
	ck_assert_uint_eq(f32_to_fp16(ldexpf(5, -25)), 0x0002); /* 2.5 -> 2 */
	ck_assert_uint_eq(f32_to_fp16(ldexpf(1, -30)), 0x0000);
	ck_assert_uint_eq(f32_to_fp16(-ldexpf(1, -24)), 0x8001);
	/* largest subnormal rounds up into the smallest normal */
	ck_assert_uint_eq(f32_to_fp16(ldexpf(1, -14) - ldexpf(1, -26)), 0x0400);
	ck_assert_uint_eq(f32_to_fp16(NAN) & 0x7c00, 0x7c00);
	ck_assert_uint_ne(f32_to_fp16(NAN) & 0x03ff, 0);
	ck_assert_uint_eq(f32_to_fp16(bitsf(0x7f800001)) & 0x7e00, 0x7e00);
	/* every finite and infinite half survives a round trip */
	for (uint32_t h = 0; h < 65536; h++) {
		if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0)
			ck_assert(isnan(fp16_to_f32((uint16_t)h)));
		else
			ck_assert_uint_eq(f32_to_fp16(fp16_to_f32((uint16_t)h)), h);
	}
}
END_TEST

START_TEST(f32_to_f16_roundtrip_is_within_half_precision)
{
	uint64_t s = 99;

	for (int i = 0; i < 100000; i++) {
		float x, y;

		s = s * 6364136223846793005ull + 1442695040888963407ull;
		/* magnitudes from 2^-14 to 2^15, both signs */
		x = ldexpf((float)((s >> 40) & 0xffffff) / 16777216.0f + 1.0f,
		        (int)((s >> 20) % 29) - 14);
		if (s & 1)
			x = -x;
		y = fp16_to_f32(f32_to_fp16(x));
		ck_assert_msg(fabsf(y - x) <= fabsf(x) * ldexpf(1, -11),
		        "%g -> %g", x, y);
	}
}
END_TEST

START_TEST(bf16_converts_hand_computed_values)
{
	ck_assert_float_eq(bf16_to_f32(0x3f80), 1.0f);
	ck_assert_float_eq(bf16_to_f32(0xc000), -2.0f);
	ck_assert_float_eq(bf16_to_f32(0x4049), 3.140625f);
	ck_assert(isinf(bf16_to_f32(0x7f80)));
	ck_assert(isnan(bf16_to_f32(0x7fc0)));
	ck_assert_uint_eq(f32_to_bf16(1.0f), 0x3f80);
	ck_assert_uint_eq(f32_to_bf16(-2.0f), 0xc000);
	ck_assert_uint_eq(f32_to_bf16(bitsf(0x3f808000)), 0x3f80); /* tie, even */
	ck_assert_uint_eq(f32_to_bf16(bitsf(0x3f818000)), 0x3f82); /* tie, even */
	ck_assert_uint_eq(f32_to_bf16(bitsf(0x3f808001)), 0x3f81);
	ck_assert_uint_eq(f32_to_bf16(bitsf(0x3f807fff)), 0x3f80);
	ck_assert_uint_eq(f32_to_bf16(bitsf(0x7f7fffff)), 0x7f80); /* -> inf */
	ck_assert_uint_eq(f32_to_bf16(INFINITY), 0x7f80);
	ck_assert_uint_eq(f32_to_bf16(bitsf(0x00000001)), 0x0000);
	ck_assert_uint_eq(f32_to_bf16(bitsf(0x00018000)), 0x0002);
	/* NaN with payload only in the low bits stays NaN, not inf */
	ck_assert_uint_eq(f32_to_bf16(bitsf(0x7f800001)), 0x7fc0);
	ck_assert_uint_eq(f32_to_bf16(bitsf(0xffffffff)), 0xffff);
}
END_TEST

START_TEST(q8_0_dequantises_and_quantises_like_ggml)
{
	uint8_t blk[2 * 34];
	float out[64], x[64];

	/* block 0: d = 0.5 (0x3800), q = j - 16; block 1: d = -2, q = 127 */
	blk[0] = 0x00;
	blk[1] = 0x38;
	for (int j = 0; j < 32; j++)
		blk[2 + j] = (uint8_t)(int8_t)(j - 16);
	blk[34] = 0x00;
	blk[35] = 0xc0;
	for (int j = 0; j < 32; j++)
		blk[36 + j] = (uint8_t)(j == 0 ? 0x80 : 127); /* -128 first */
	ck_assert_int_eq(dtype_row_to_f32(DTYPE_Q8_0, blk, out, 64), 0);
	for (int j = 0; j < 32; j++)
		ck_assert_float_eq(out[j], 0.5f * (float)(j - 16));
	ck_assert_float_eq(out[32], 256.0f);
	for (int j = 33; j < 64; j++)
		ck_assert_float_eq(out[j], -254.0f);

	/* quantise: amax 12.7 -> d = 0.1, q = round(x / d) */
	for (int j = 0; j < 32; j++)
		x[j] = (j == 5) ? -12.7f : 0.26f * (float)(j - 16) / 4.0f;
	for (int j = 32; j < 64; j++)
		x[j] = 0.0f; /* all-zero block: d = 0, q = 0 */
	ck_assert_int_eq(dtype_row_from_f32(DTYPE_Q8_0, x, blk, 64), 0);
	{
		uint16_t dh;
		float d = 12.7f / 127.0f;

		memcpy(&dh, blk, 2);
		ck_assert_uint_eq(dh, f32_to_fp16(d));
		ck_assert_int_eq((int8_t)blk[2 + 5], -127);
		for (int j = 0; j < 32; j++)
			ck_assert_int_eq((int8_t)blk[2 + j],
			        (int)roundf(x[j] * (1.0f / d)));
		memcpy(&dh, blk + 34, 2);
		ck_assert_uint_eq(dh, 0);
		for (int j = 0; j < 32; j++)
			ck_assert_int_eq(blk[36 + j], 0);
	}
	ck_assert_int_eq(dtype_row_to_f32(DTYPE_Q8_0, blk, out, 64), 0);
	for (int j = 0; j < 64; j++)
		/* half a quantum (0.05) plus the f16 error of the scale
		 * times |q| <= 127 */
		ck_assert_float_eq_tol(out[j], x[j],
		        0.05f + 127 * 0.1f * ldexpf(1, -11) + 1e-4f);
	/* rows that are not whole blocks, and unsupported types */
	ck_assert_int_eq(dtype_row_to_f32(DTYPE_Q8_0, blk, out, 40),
	        EPMOE_EINVAL);
	ck_assert_int_eq(dtype_row_to_f32(DTYPE_Q4_K, blk, out, 32),
	        EPMOE_EINVAL);
	ck_assert_int_eq(dtype_row_to_f32((enum dtype)16, blk, out, 256),
	        EPMOE_ENOTSUP);
	ck_assert_int_eq(dtype_row_from_f32((enum dtype)20, x, blk, 32),
	        EPMOE_ENOTSUP);
}
END_TEST

/* The vectorised rows must equal the scalar reference bit for bit, on
 * every kind of input (all half patterns, NaNs, infinities, subnormals),
 * for odd lengths and unaligned pointers. */
START_TEST(vector_rows_equal_scalar_rows_bit_for_bit)
{
	const size_t n = 65536 + 4099; /* every half pattern, odd tail */
	uint8_t *src = malloc(n * 4 + 64), *a = malloc(n * 4 + 64),
	        *b = malloc(n * 4 + 64);
	float *fs = malloc(n * 4 + 64);
	float *fa = malloc(n * 4), *fb = malloc(n * 4);
	uint64_t s = 7;

	for (size_t len = n; len >= n - 9; len -= 3) {
		/* f16 -> f32 from an odd address */
		for (size_t i = 0; i < len; i++) {
			uint16_t h = (uint16_t)(i < 65536 ? i : i * 40503u);

			memcpy(src + 1 + 2 * i, &h, 2);
		}
		ck_assert_int_eq(dtype_row_to_f32(DTYPE_F16, src + 1, fa, len),
		        0);
		ck_assert_int_eq(dtype_row_to_f32_ref(DTYPE_F16, src + 1, fb,
		                         len), 0);
		ck_assert_int_eq(memcmp(fa, fb, len * 4), 0);
		/* bf16 -> f32 */
		ck_assert_int_eq(dtype_row_to_f32(DTYPE_BF16, src + 1, fa, len),
		        0);
		ck_assert_int_eq(dtype_row_to_f32_ref(DTYPE_BF16, src + 1, fb,
		                         len), 0);
		ck_assert_int_eq(memcmp(fa, fb, len * 4), 0);
		/* f32 -> f16 / bf16 from random bit patterns, NaNs, subnormals,
		 * values near the f16 range and rounding ties */
		for (size_t i = 0; i < len; i++) {
			uint32_t u;

			s = s * 6364136223846793005ull + 1442695040888963407ull;
			u = (uint32_t)(s >> 32);
			switch (i % 6) {
			case 0: break;                                  /* anything */
			case 1: u = (u & 0x80001fff) | 0x38000000; break; /* ~2^-15 */
			case 2: u = (u & 0x8000ffff) | 0x47700000; break; /* ~65000 */
			case 3: u = (u & 0xffff0000) | 0x8000; break;  /* bf16 ties */
			case 4: u = (u & 0x807fffff) | 0x7f800000; break; /* inf/NaN */
			case 5: u = (u & 0x80ffffff) | 0x33000000; break; /* tiny */
			}
			memcpy((uint8_t *)fs + 4 + 4 * i, &u, 4);
		}
		ck_assert_int_eq(dtype_row_from_f32(DTYPE_F16,
		                         (float *)((uint8_t *)fs + 4), a + 1, len),
		        0);
		ck_assert_int_eq(dtype_row_from_f32_ref(DTYPE_F16,
		                         (float *)((uint8_t *)fs + 4), b + 1, len),
		        0);
		ck_assert_int_eq(memcmp(a + 1, b + 1, len * 2), 0);
		ck_assert_int_eq(dtype_row_from_f32(DTYPE_BF16,
		                         (float *)((uint8_t *)fs + 4), a + 1, len),
		        0);
		ck_assert_int_eq(dtype_row_from_f32_ref(DTYPE_BF16,
		                         (float *)((uint8_t *)fs + 4), b + 1, len),
		        0);
		ck_assert_int_eq(memcmp(a + 1, b + 1, len * 2), 0);
	}
	/* q8_0 -> f32: random blocks (random scales incl. NaN/inf/subnormal) */
	{
		size_t nb = 129, len = nb * 32;

		for (size_t i = 0; i < nb * 34; i++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			src[3 + i] = (uint8_t)(s >> 40);
		}
		ck_assert_int_eq(dtype_row_to_f32(DTYPE_Q8_0, src + 3, fa, len),
		        0);
		ck_assert_int_eq(dtype_row_to_f32_ref(DTYPE_Q8_0, src + 3, fb,
		                         len), 0);
		ck_assert_int_eq(memcmp(fa, fb, len * 4), 0);
	}
	/* f32 rows are copied */
	ck_assert_int_eq(dtype_row_to_f32(DTYPE_F32, fs, fa, 100), 0);
	ck_assert_int_eq(memcmp(fa, fs, 400), 0);
	free(src);
	free(a);
	free(b);
	free(fs);
	free(fa);
	free(fb);
}
END_TEST

START_TEST(type_tables_name_sizes_and_parse)
{
	enum dtype t;

	ck_assert_str_eq(dtype_name(DTYPE_F32), "f32");
	ck_assert_str_eq(dtype_name(DTYPE_Q8_0), "q8_0");
	ck_assert_str_eq(dtype_name(DTYPE_BF16), "bf16");
	ck_assert_str_eq(dtype_name(DTYPE_Q4_K), "q4_K");
	ck_assert_str_eq(dtype_name((enum dtype)99), "type99");
	ck_assert_str_eq(gguf_type_name(GGUF_TYPE_FLOAT64), "f64");
	ck_assert_str_eq(gguf_type_name(GGUF_TYPE_COUNT), "unknown");
	ck_assert_int_eq(dtype_parse("bf16", &t), 0);
	ck_assert_int_eq(t, DTYPE_BF16);
	ck_assert_int_eq(dtype_parse("Q8_0", &t), 0);
	ck_assert_int_eq(t, DTYPE_Q8_0);
	ck_assert_int_eq(dtype_parse("q4_k", &t), 0);
	ck_assert_int_eq(t, DTYPE_Q4_K);
	ck_assert_int_eq(dtype_parse("iq2_xxs", &t), EPMOE_EINVAL);
	ck_assert_int_eq(dtype_parse("q8_k", &t), EPMOE_EINVAL);
	ck_assert(dtype_supported(DTYPE_F16));
	ck_assert(dtype_supported(DTYPE_Q4_0));
	ck_assert(dtype_supported(DTYPE_Q6_K));
	ck_assert(!dtype_supported(DTYPE_Q8_K));
	ck_assert(!dtype_supported((enum dtype)16));
	ck_assert_str_eq(dtype_name((enum dtype)16), "iq2_xxs");
	ck_assert_uint_eq(dtype_block_size(DTYPE_Q8_0), 34);
	ck_assert_uint_eq(dtype_block_elems(DTYPE_Q8_0), 32);
	ck_assert_uint_eq(dtype_row_size(DTYPE_Q8_0, 64), 68);
	ck_assert_uint_eq(dtype_row_size(DTYPE_F16, 7), 14);
	/* the layouts of ggml-common.h */
	static const struct { enum dtype t; unsigned elems, bytes; } sz[] = {
		{ DTYPE_Q4_0, 32, 18 }, { DTYPE_Q4_1, 32, 20 }, { DTYPE_Q5_0, 32, 22 },
		{ DTYPE_Q5_1, 32, 24 }, { DTYPE_Q8_1, 32, 36 }, { DTYPE_Q2_K, 256, 84 },
		{ DTYPE_Q3_K, 256, 110 }, { DTYPE_Q4_K, 256, 144 },
		{ DTYPE_Q5_K, 256, 176 }, { DTYPE_Q6_K, 256, 210 },
		{ DTYPE_Q8_K, 256, 292 }, { (enum dtype)16, 256, 66 },
		{ (enum dtype)20, 32, 18 }, { (enum dtype)23, 256, 136 },
	};
	for (size_t i = 0; i < sizeof(sz) / sizeof(sz[0]); i++) {
		ck_assert_uint_eq(dtype_block_elems(sz[i].t), sz[i].elems);
		ck_assert_uint_eq(dtype_block_size(sz[i].t), sz[i].bytes);
	}
	ck_assert_uint_eq(dtype_block_size((enum dtype)31), 0);
	ck_assert_uint_eq(dtype_block_size((enum dtype)99), 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("gguf");
	TCase *rd = tcase_create("read");
	TCase *wr = tcase_create("write");
	TCase *bad = tcase_create("malformed");
	TCase *cv = tcase_create("convert");

	tcase_add_checked_fixture(rd, tmp_setup, tmp_teardown);
	tcase_add_checked_fixture(wr, tmp_setup, tmp_teardown);
	tcase_add_checked_fixture(bad, tmp_setup, tmp_teardown);
	tcase_add_test(rd, reads_every_testdata_model);
	tcase_add_test(wr, roundtrips_every_value_and_tensor_type);
	tcase_add_test(wr, getters_convert_in_range_and_reject_the_rest);
	tcase_add_test(wr, writer_rejects_bad_input_and_leaves_no_partial_file);
	tcase_add_test(bad, good_handmade_file_opens);
	tcase_add_test(bad, bad_magic_and_versions_are_rejected);
	tcase_add_test(bad, truncation_anywhere_is_an_error);
	tcase_add_test(bad, huge_counts_and_lengths_fail_without_allocating);
	tcase_add_test(bad, bad_tensor_infos_are_rejected);
	tcase_add_test(bad, bad_metadata_is_rejected);
	tcase_add_test(bad, files_that_are_not_there_or_not_files_are_errors);
	tcase_add_test(bad, random_corruption_never_crashes);
	tcase_add_test(cv, fp16_decodes_hand_computed_values);
	tcase_add_test(cv, fp16_encodes_round_to_nearest_even);
	tcase_add_test(cv, f32_to_f16_roundtrip_is_within_half_precision);
	tcase_add_test(cv, bf16_converts_hand_computed_values);
	tcase_add_test(cv, q8_0_dequantises_and_quantises_like_ggml);
	tcase_add_test(cv, vector_rows_equal_scalar_rows_bit_for_bit);
	tcase_add_test(cv, type_tables_name_sizes_and_parse);
	suite_add_tcase(s, rd);
	suite_add_tcase(s, wr);
	suite_add_tcase(s, bad);
	suite_add_tcase(s, cv);
	return tu_run(s);
}
