/* mkmodel: deterministic output, llama.cpp's layout for each architecture
 * (checked against the files in $EPMOE_TESTDATA), weight scales, the
 * vocabulary, flag validation, and the mkmodel / inspect commands. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "err.h"
#include "gguf.h"
#include "mkmodel.h"
#include "testutil.h"

#define SP "\xe2\x96\x81" /* U+2581 */

static char tmpdir[256];

static void
tmp_setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_mkmodel.XXXXXX");
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

static void *
read_bytes(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	long len;
	void *p;

	ck_assert_msg(f != NULL, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	p = malloc((size_t)len + 1);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(fread(p, 1, (size_t)len, f), (size_t)len);
	fclose(f);
	*n = (size_t)len;
	return p;
}

static void
write_model(const struct mkmodel_cfg *c, const char *path)
{
	char err[512];
	int rc = mkmodel_write(c, path, err, sizeof(err));

	ck_assert_msg(rc == 0, "mkmodel_write: %d %s", rc, err);
}

static struct gguf_file *
open_ok(const char *path)
{
	struct gguf_file *g;
	char err[512];

	ck_assert_msg(gguf_open(&g, path, err, sizeof(err)) == 0, "%s", err);
	return g;
}

static const enum mkmodel_arch archs[3] = { MKMODEL_LLAMA, MKMODEL_QWEN2MOE,
	MKMODEL_OLMOE };
static const char *const testdata_names[3] = { "mixtral-tiny-f32.gguf",
	"qwen2moe-tiny-f32.gguf", "olmoe-tiny-f32.gguf" };

/* ---- determinism ---- */

START_TEST(same_seed_gives_identical_bytes_for_every_arch)
{
	for (int a = 0; a < 3; a++) {
		struct mkmodel_cfg c;
		char p1[512], p2[512];
		size_t n1, n2;
		void *b1, *b2;

		ck_assert_int_eq(mkmodel_preset(&c, archs[a], "tiny"), 0);
		c.seed = 1234;
		c.n_threads = 1;
		tmp_path(p1, sizeof(p1), "a.gguf");
		tmp_path(p2, sizeof(p2), "b.gguf");
		write_model(&c, p1);
		c.n_threads = 2; /* threads must not change the bytes */
		write_model(&c, p2);
		b1 = read_bytes(p1, &n1);
		b2 = read_bytes(p2, &n2);
		ck_assert_uint_eq(n1, n2);
		ck_assert_msg(memcmp(b1, b2, n1) == 0, "arch %d differs", a);
		free(b1);
		free(b2);
	}
}
END_TEST

START_TEST(different_seed_gives_different_weights_same_header)
{
	struct mkmodel_cfg c;
	struct gguf_file *g1, *g2;
	char p1[512], p2[512];
	size_t n1, n2;
	uint8_t *b1, *b2;

	ck_assert_int_eq(mkmodel_preset(&c, MKMODEL_QWEN2MOE, "tiny"), 0);
	tmp_path(p1, sizeof(p1), "s1.gguf");
	tmp_path(p2, sizeof(p2), "s2.gguf");
	c.seed = 1;
	write_model(&c, p1);
	c.seed = 2;
	write_model(&c, p2);
	b1 = read_bytes(p1, &n1);
	b2 = read_bytes(p2, &n2);
	ck_assert_uint_eq(n1, n2);
	g1 = open_ok(p1);
	g2 = open_ok(p2);
	ck_assert_uint_eq(g1->data_offset, g2->data_offset);
	ck_assert_int_eq(memcmp(b1, b2, g1->data_offset), 0);
	/* every tensor differs */
	for (uint64_t i = 0; i < g1->n_tensors; i++)
		ck_assert_msg(memcmp(g1->tensors[i].data, g2->tensors[i].data,
		                      g1->tensors[i].size) != 0,
		        "tensor %.*s identical across seeds",
		        (int)g1->tensors[i].name.len, g1->tensors[i].name.ptr);
	/* and tensors of the same shape differ from each other */
	ck_assert_int_ne(memcmp(gguf_find_tensor(g1, "blk.0.attn_q.weight")->data,
	                         gguf_find_tensor(g1, "blk.1.attn_q.weight")->data,
	                         64 * 64 * 4), 0);
	gguf_close(g1);
	gguf_close(g2);
	free(b1);
	free(b2);
}
END_TEST

/* ---- layout against llama.cpp's files ---- */

static int
kv_value_eq(const struct gguf_kv *a, const struct gguf_kv *b)
{
	if (a->type != b->type)
		return 0;
	switch (a->type) {
	case GGUF_TYPE_STRING:
		return a->v.str.len == b->v.str.len &&
		        memcmp(a->v.str.ptr, b->v.str.ptr, a->v.str.len) == 0;
	case GGUF_TYPE_ARRAY:
		if (a->v.arr.type != b->v.arr.type || a->v.arr.n != b->v.arr.n)
			return 0;
		for (uint64_t i = 0; i < a->v.arr.n; i++) {
			if (a->v.arr.type == GGUF_TYPE_STRING) {
				struct gguf_str x = a->v.arr.strs[i],
				                y = b->v.arr.strs[i];

				if (x.len != y.len ||
				        memcmp(x.ptr, y.ptr, x.len) != 0)
					return 0;
			} else if (gguf_arr_f32(a, i) != gguf_arr_f32(b, i)) {
				return 0;
			}
		}
		return 1;
	case GGUF_TYPE_FLOAT32:
	case GGUF_TYPE_FLOAT64:
		return a->v.f64 == b->v.f64;
	default:
		return a->v.u64 == b->v.u64;
	}
}

START_TEST(tiny_preset_matches_testdata_keys_values_and_tensors)
{
	const char *td = getenv("EPMOE_TESTDATA");

	ck_assert_msg(td != NULL, "EPMOE_TESTDATA is not set");
	for (int a = 0; a < 3; a++) {
		struct mkmodel_cfg c;
		struct gguf_file *g, *r;
		char path[512], ref[512];

		ck_assert_int_eq(mkmodel_preset(&c, archs[a], "tiny"), 0);
		tmp_path(path, sizeof(path), "tiny.gguf");
		write_model(&c, path);
		snprintf(ref, sizeof(ref), "%s/%s", td, testdata_names[a]);
		g = open_ok(path);
		r = open_ok(ref);
		/* the same keys in the same order with the same values
		 * (vocabulary included), except the model's name */
		ck_assert_uint_eq(g->n_kv, r->n_kv);
		for (uint64_t i = 0; i < g->n_kv; i++) {
			const struct gguf_kv *x = &g->kv[i], *y = &r->kv[i];

			ck_assert_msg(x->key.len == y->key.len &&
			                memcmp(x->key.ptr, y->key.ptr,
			                        x->key.len) == 0,
			        "%s: key %lu is %.*s, llama.cpp has %.*s",
			        testdata_names[a], (unsigned long)i,
			        (int)x->key.len, x->key.ptr, (int)y->key.len,
			        y->key.ptr);
			if (gguf_str_eq(x->key, "general.name"))
				continue;
			ck_assert_msg(kv_value_eq(x, y), "%s: value of %.*s differs",
			        testdata_names[a], (int)x->key.len, x->key.ptr);
		}
		/* the same tensors in the same order, shapes, types, offsets */
		ck_assert_uint_eq(g->n_tensors, r->n_tensors);
		for (uint64_t i = 0; i < g->n_tensors; i++) {
			const struct gguf_tensor *x = &g->tensors[i],
			                         *y = &r->tensors[i];

			ck_assert_msg(x->name.len == y->name.len &&
			                memcmp(x->name.ptr, y->name.ptr,
			                        x->name.len) == 0,
			        "%s: tensor %lu is %.*s, llama.cpp has %.*s",
			        testdata_names[a], (unsigned long)i,
			        (int)x->name.len, x->name.ptr, (int)y->name.len,
			        y->name.ptr);
			ck_assert_uint_eq(x->n_dims, y->n_dims);
			for (int d = 0; d < GGUF_MAX_DIMS; d++)
				ck_assert_uint_eq(x->ne[d], y->ne[d]);
			ck_assert_int_eq(x->type, y->type);
			ck_assert_uint_eq(x->offset, y->offset);
		}
		gguf_close(g);
		gguf_close(r);
	}
}
END_TEST

/* mean and std of a float32 tensor */
static void
stats(const struct gguf_file *g, const char *name, double *mean, double *std)
{
	const struct gguf_tensor *t = gguf_find_tensor(g, name);
	float *v;
	double s = 0, ss = 0;

	ck_assert_msg(t != NULL, "no tensor %s", name);
	v = malloc(t->n_elements * sizeof(float));
	ck_assert_int_eq(dtype_row_to_f32(t->type, t->data, v, t->n_elements), 0);
	for (uint64_t i = 0; i < t->n_elements; i++)
		s += v[i];
	*mean = s / (double)t->n_elements;
	for (uint64_t i = 0; i < t->n_elements; i++)
		ss += (v[i] - *mean) * (v[i] - *mean);
	*std = sqrt(ss / (double)t->n_elements);
	free(v);
}

START_TEST(weights_have_std_one_over_sqrt_fan_in_and_norms_near_one)
{
	struct mkmodel_cfg c;
	struct gguf_file *g;
	char path[512];
	double m, sd;

	ck_assert_int_eq(mkmodel_preset(&c, MKMODEL_QWEN2MOE, "tiny"), 0);
	c.n_embd = 256;
	c.n_ff = 512;
	c.n_ff_shexp = 384;
	tmp_path(path, sizeof(path), "scale.gguf");
	write_model(&c, path);
	g = open_ok(path);
	/* >= 64k samples each: 5% covers the sampling error many times */
	stats(g, "blk.0.attn_q.weight", &m, &sd);
	ck_assert_double_eq_tol(sd, 1.0 / 16.0, 0.05 / 16.0);
	ck_assert_double_eq_tol(m, 0.0, 0.004);
	stats(g, "blk.1.ffn_up_exps.weight", &m, &sd);
	ck_assert_double_eq_tol(sd, 1.0 / 16.0, 0.05 / 16.0);
	stats(g, "blk.1.ffn_down_exps.weight", &m, &sd);
	ck_assert_double_eq_tol(sd, 1.0 / sqrt(512.0), 0.05 / sqrt(512.0));
	stats(g, "blk.0.ffn_down_shexp.weight", &m, &sd);
	ck_assert_double_eq_tol(sd, 1.0 / sqrt(384.0), 0.05 / sqrt(384.0));
	stats(g, "token_embd.weight", &m, &sd);
	ck_assert_double_eq_tol(sd, 1.0, 0.05);
	ck_assert_double_eq_tol(m, 0.0, 0.02);
	stats(g, "output.weight", &m, &sd);
	ck_assert_double_eq_tol(sd, 1.0 / 16.0, 0.05 / 16.0);
	/* router: twice the usual scale */
	stats(g, "blk.0.ffn_gate_inp.weight", &m, &sd);
	ck_assert_double_eq_tol(sd, 2.0 / 16.0, 0.2 / 16.0);
	/* norms: 1 +- 0.1 */
	stats(g, "blk.0.attn_norm.weight", &m, &sd);
	ck_assert_double_eq_tol(m, 1.0, 0.03);
	ck_assert_double_eq_tol(sd, 0.1, 0.02);
	stats(g, "output_norm.weight", &m, &sd);
	ck_assert_double_eq_tol(m, 1.0, 0.03);
	/* biases are small */
	stats(g, "blk.1.attn_q.bias", &m, &sd);
	ck_assert_double_eq_tol(sd, 0.02, 0.005);
	gguf_close(g);
}
END_TEST

static int
name_ends(struct gguf_str s, const char *suffix)
{
	size_t n = strlen(suffix);

	return s.len >= n && memcmp(s.ptr + s.len - n, suffix, n) == 0;
}

START_TEST(f16_bf16_q8_0_models_quantise_the_same_weights)
{
	static const enum dtype types[] = { DTYPE_F16, DTYPE_BF16,
		DTYPE_Q8_0 };
	static const uint32_t ftype[] = { 1, 32, 7 };
	struct mkmodel_cfg c;
	struct gguf_file *gf, *gq;
	char pf[512], pq[512];
	float *ref, *q;
	uint32_t ft;

	ck_assert_int_eq(mkmodel_preset(&c, MKMODEL_OLMOE, "tiny"), 0);
	tmp_path(pf, sizeof(pf), "f32.gguf");
	write_model(&c, pf);
	gf = open_ok(pf);
	for (int k = 0; k < 3; k++) {
		const struct gguf_tensor *tf, *tq;

		c.dtype = types[k];
		tmp_path(pq, sizeof(pq), "q.gguf");
		write_model(&c, pq);
		gq = open_ok(pq);
		ck_assert_int_eq(gguf_get_u32(gq, "general.file_type", &ft), 0);
		ck_assert_uint_eq(ft, ftype[k]);
		for (uint64_t i = 0; i < gq->n_tensors; i++) {
			const struct gguf_tensor *t = &gq->tensors[i];
			int keep_f32 = t->n_dims == 1 ||
			        name_ends(t->name, "ffn_gate_inp.weight");

			ck_assert_msg(t->type == (keep_f32 ? DTYPE_F32 : types[k]),
			        "%.*s has type %s", (int)t->name.len, t->name.ptr,
			        dtype_name(t->type));
		}
		/* the generator draws the same floats before converting */
		tf = gguf_find_tensor(gf, "blk.1.ffn_down_exps.weight");
		tq = gguf_find_tensor(gq, "blk.1.ffn_down_exps.weight");
		ref = malloc(tf->n_elements * 4);
		q = malloc(tf->n_elements * 4);
		ck_assert_int_eq(dtype_row_to_f32(tf->type, tf->data, ref,
		                         tf->n_elements), 0);
		ck_assert_int_eq(dtype_row_to_f32(tq->type, tq->data, q,
		                         tq->n_elements), 0);
		for (uint64_t i = 0; i < tf->n_elements; i++) {
			/* f16: 2^-11 relative; bf16: 2^-8; q8_0: half a step
			 * d = max|x| / 127 (max|x| <= 3.47 std) plus the f16
			 * error of d times |q| <= 127 (0.062 d) */
			double tol = k == 0 ? fabs(ref[i]) * 0x1p-11 + 1e-7 :
			             k == 1 ? fabs(ref[i]) * 0x1p-8 + 1e-7 :
			                      3.5 / sqrt(128.0) / 127.0 * 0.57;

			ck_assert_msg(fabs(q[i] - ref[i]) <= tol,
			        "type %d element %lu: %g vs %g", k,
			        (unsigned long)i, q[i], ref[i]);
		}
		/* norms identical in all variants */
		ck_assert_int_eq(memcmp(gguf_find_tensor(gf,
		                         "blk.0.attn_k_norm.weight")->data,
		                         gguf_find_tensor(gq,
		                         "blk.0.attn_k_norm.weight")->data, 256), 0);
		free(ref);
		free(q);
		gguf_close(gq);
	}
	gguf_close(gf);
}
END_TEST

START_TEST(custom_shapes_follow_the_flags)
{
	struct mkmodel_cfg c;
	struct gguf_file *g;
	const struct gguf_tensor *t;
	char path[512];
	uint32_t u;

	ck_assert_int_eq(mkmodel_preset(&c, MKMODEL_LLAMA, "tiny"), 0);
	c.n_layer = 3;
	c.n_embd = 96;
	c.n_head = 6;
	c.n_head_kv = 3;
	c.n_ff = 40;
	c.n_expert = 5;
	c.n_expert_used = 3;
	c.n_vocab = 1000;
	snprintf(c.name, sizeof(c.name), "custom");
	tmp_path(path, sizeof(path), "custom.gguf");
	write_model(&c, path);
	g = open_ok(path);
	ck_assert_uint_eq(g->n_tensors, 3 + 3 * 10);
	ck_assert_int_eq(gguf_get_u32(g, "llama.rope.dimension_count", &u), 0);
	ck_assert_uint_eq(u, 16);
	ck_assert_int_eq(gguf_get_u32(g, "llama.expert_used_count", &u), 0);
	ck_assert_uint_eq(u, 3);
	ck_assert_int_eq(gguf_get_u32(g, "llama.vocab_size", &u), 0);
	ck_assert_uint_eq(u, 1000);
	{
		struct gguf_str s;

		ck_assert_int_eq(gguf_get_str(g, "general.name", &s), 0);
		ck_assert(gguf_str_eq(s, "custom"));
	}
	t = gguf_find_tensor(g, "blk.2.attn_k.weight");
	ck_assert_uint_eq(t->ne[0], 96);
	ck_assert_uint_eq(t->ne[1], 48);
	t = gguf_find_tensor(g, "blk.2.ffn_down_exps.weight");
	ck_assert_uint_eq(t->ne[0], 40);
	ck_assert_uint_eq(t->ne[1], 96);
	ck_assert_uint_eq(t->ne[2], 5);
	t = gguf_find_tensor(g, "output.weight");
	ck_assert_uint_eq(t->ne[1], 1000);
	ck_assert_ptr_null(gguf_find_tensor(g, "blk.3.attn_q.weight"));
	gguf_close(g);
}
END_TEST

/* ---- vocabulary ---- */

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
has_token(const struct mkmodel_vocab *v, const char *s)
{
	for (uint32_t i = 0; i < v->n; i++) {
		if (strcmp(v->tokens[i], s) == 0)
			return 1;
	}
	return 0;
}

START_TEST(vocab_is_unique_ordered_and_useful)
{
	struct mkmodel_vocab v;
	char **sorted;

	ck_assert_int_eq(mkmodel_vocab_init(&v, 32000), 0);
	ck_assert_uint_eq(v.n, 32000);
	ck_assert_str_eq(v.tokens[0], "<unk>");
	ck_assert_str_eq(v.tokens[1], "<s>");
	ck_assert_str_eq(v.tokens[2], "</s>");
	ck_assert_str_eq(v.tokens[3], "<0x00>");
	ck_assert_str_eq(v.tokens[3 + 0xAB], "<0xAB>");
	ck_assert_str_eq(v.tokens[258], "<0xFF>");
	ck_assert_str_eq(v.tokens[259], SP);
	ck_assert_int_eq(v.types[0], 2);
	ck_assert_int_eq(v.types[1], 3);
	ck_assert_int_eq(v.types[2], 3);
	for (uint32_t i = 3; i < 259; i++) {
		ck_assert_int_eq(v.types[i], 6);
		ck_assert_float_eq(v.scores[i], 0.0f);
	}
	for (uint32_t i = 259; i < v.n; i++) {
		ck_assert_int_eq(v.types[i], 1);
		ck_assert_float_eq(v.scores[i], -(float)(i - 258));
		ck_assert_uint_gt(strlen(v.tokens[i]), 0);
	}
	/* every printable ASCII character alone */
	for (int c = 0x21; c < 0x7f; c++) {
		char s[2] = { (char)c, 0 };

		ck_assert_msg(has_token(&v, s), "missing '%s'", s);
	}
	/* whole English words, with and without the word boundary, and
	 * the prefixes that let merges reach them */
	ck_assert(has_token(&v, SP "the"));
	ck_assert(has_token(&v, SP "quick"));
	ck_assert(has_token(&v, SP "qui"));
	ck_assert(has_token(&v, SP "brown"));
	ck_assert(has_token(&v, SP "fox"));
	ck_assert(has_token(&v, SP "world"));
	ck_assert(has_token(&v, SP "The"));
	ck_assert(has_token(&v, "the"));
	ck_assert(has_token(&v, "ing"));
	ck_assert(has_token(&v, "tion"));
	ck_assert(has_token(&v, "th"));
	/* unique */
	sorted = malloc(v.n * sizeof(*sorted));
	memcpy(sorted, v.tokens, v.n * sizeof(*sorted));
	qsort(sorted, v.n, sizeof(*sorted), cmp_str);
	for (uint32_t i = 1; i < v.n; i++)
		ck_assert_msg(strcmp(sorted[i - 1], sorted[i]) != 0,
		        "duplicate token '%s'", sorted[i]);
	free(sorted);
	mkmodel_vocab_fini(&v);
	mkmodel_vocab_fini(&v); /* idempotent */

	/* the limits build, beyond them is an error */
	ck_assert_int_eq(mkmodel_vocab_init(&v, MKMODEL_MIN_VOCAB), 0);
	ck_assert_str_eq(v.tokens[MKMODEL_MIN_VOCAB - 1], "~");
	mkmodel_vocab_fini(&v);
	ck_assert_int_eq(mkmodel_vocab_init(&v, MKMODEL_MAX_VOCAB), 0);
	ck_assert_uint_eq(v.n, MKMODEL_MAX_VOCAB);
	mkmodel_vocab_fini(&v);
	ck_assert_int_eq(mkmodel_vocab_init(&v, MKMODEL_MIN_VOCAB - 1),
	        EPMOE_EINVAL);
	ck_assert_int_eq(mkmodel_vocab_init(&v, MKMODEL_MAX_VOCAB + 1),
	        EPMOE_EINVAL);
}
END_TEST

/* ---- configuration ---- */

START_TEST(presets_have_the_documented_shapes)
{
	struct mkmodel_cfg c;
	uint64_t sz;

	ck_assert_int_eq(mkmodel_preset(&c, MKMODEL_LLAMA, "tiny"), 0);
	ck_assert_uint_eq(c.n_vocab, 512);
	ck_assert_uint_eq(c.n_embd, 64);
	ck_assert_uint_eq(c.n_layer, 2);
	ck_assert_uint_eq(c.n_head, 4);
	ck_assert_uint_eq(c.n_head_kv, 2);
	ck_assert_uint_eq(c.n_expert, 8);
	ck_assert_uint_eq(c.n_expert_used, 2);
	ck_assert_uint_eq(c.n_ff, 128);
	ck_assert_uint_eq(c.n_ff_shexp, 192);
	ck_assert_int_eq(c.dtype, DTYPE_F32);
	ck_assert_int_eq(mkmodel_preset(&c, MKMODEL_OLMOE, "tiny"), 0);
	ck_assert_uint_eq(c.n_head_kv, 4);
	ck_assert_int_eq(mkmodel_preset(&c, MKMODEL_LLAMA, "small"), 0);
	ck_assert_uint_eq(c.n_embd, 1024);
	ck_assert_uint_eq(c.n_layer, 8);
	ck_assert_uint_eq(c.n_ff, 2816);
	ck_assert_uint_eq(c.n_head, 16);
	ck_assert_uint_eq(c.n_head_kv, 4);
	ck_assert_uint_eq(c.n_vocab, 32000);
	ck_assert_int_eq(mkmodel_validate(&c, NULL, 0), 0);
	sz = mkmodel_data_size(&c);
	ck_assert_msg(sz > 2400000000ull && sz < 2700000000ull, "%llu",
	        (unsigned long long)sz);
	ck_assert_int_eq(mkmodel_preset(&c, MKMODEL_LLAMA, "huge"), EPMOE_EINVAL);
}
END_TEST

static void
expect_invalid(const struct mkmodel_cfg *c, const char *what)
{
	char err[256] = "";

	ck_assert_int_eq(mkmodel_validate(c, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_msg(strstr(err, what) != NULL, "'%s' not in '%s'", what, err);
}

START_TEST(validation_rejects_inconsistent_shapes)
{
	struct mkmodel_cfg c, b;

	ck_assert_int_eq(mkmodel_preset(&b, MKMODEL_LLAMA, "tiny"), 0);
	c = b, c.n_head = 5;
	expect_invalid(&c, "dim 64 is not divisible by heads 5");
	c = b, c.n_head = 4, c.n_head_kv = 3;
	expect_invalid(&c, "heads 4 is not divisible by kv-heads 3");
	c = b, c.n_head_kv = 8;
	expect_invalid(&c, "kv-heads is 8");
	c = b, c.n_expert_used = 9;
	expect_invalid(&c, "top-k is 9, must be in 1..8");
	c = b, c.n_expert_used = 0;
	expect_invalid(&c, "top-k is 0");
	c = b, c.n_vocab = 300;
	expect_invalid(&c, "vocab is 300, must be in 354..");
	c = b, c.n_layer = 0;
	expect_invalid(&c, "layers is 0");
	c = b, c.n_embd = 60, c.n_head = 4; /* head dim 15: odd */
	expect_invalid(&c, "must be even");
	c = b, c.dtype = DTYPE_Q8_0, c.n_ff = 100;
	expect_invalid(&c, "multiples of 32");
	c = b, c.dtype = DTYPE_Q4_K;
	expect_invalid(&c, "dtype q4_K not supported");
	ck_assert_int_eq(mkmodel_preset(&b, MKMODEL_OLMOE, "tiny"), 0);
	c = b, c.n_head_kv = 2;
	expect_invalid(&c, "olmoe needs kv-heads == heads");
	ck_assert_int_eq(mkmodel_preset(&b, MKMODEL_QWEN2MOE, "tiny"), 0);
	c = b, c.n_ff_shexp = 0;
	expect_invalid(&c, "shared-ff is 0");
	ck_assert_int_eq(mkmodel_validate(&b, NULL, 0), 0);
	{
		char err[256], path[512];

		c = b, c.n_head = 5;
		tmp_path(path, sizeof(path), "never.gguf");
		ck_assert_int_eq(mkmodel_write(&c, path, err, sizeof(err)),
		        EPMOE_EINVAL);
		ck_assert(access(path, F_OK) != 0);
	}
}
END_TEST

/* ---- commands ---- */

/* Runs fn with stdout and stderr sent to file out; returns its status. */
static int
run_cmd(int (*fn)(int, char **), char **argv, const char *out)
{
	int argc = 0, so, se, fd, rc;

	while (argv[argc] != NULL)
		argc++;
	fflush(stdout);
	fflush(stderr);
	so = dup(1);
	se = dup(2);
	fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_ge(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	close(fd);
	rc = fn(argc, argv);
	fflush(stdout);
	fflush(stderr);
	dup2(so, 1);
	dup2(se, 2);
	close(so);
	close(se);
	return rc;
}

static int
file_contains(const char *path, const char *s)
{
	size_t n;
	char *b = read_bytes(path, &n);
	int r;

	b[n] = '\0';
	r = strstr(b, s) != NULL;
	free(b);
	return r;
}

START_TEST(mkmodel_command_writes_the_library_model)
{
	char out[512], lib[512], log[512];
	struct mkmodel_cfg c;
	size_t n1, n2;
	void *b1, *b2;

	tmp_path(out, sizeof(out), "cli.gguf");
	tmp_path(lib, sizeof(lib), "lib.gguf");
	tmp_path(log, sizeof(log), "log.txt");
	{
		char *argv[] = { "mkmodel", "--arch", "qwen2moe", "--out", out,
			"--dtype", "f16", "--seed", "77", "--layers", "3",
			"--experts", "4", "--threads", "2", "-q", NULL };

		ck_assert_int_eq(run_cmd(cmd_mkmodel, argv, log), 0);
	}
	ck_assert_int_eq(mkmodel_preset(&c, MKMODEL_QWEN2MOE, "tiny"), 0);
	c.dtype = DTYPE_F16;
	c.seed = 77;
	c.n_layer = 3;
	c.n_expert = 4;
	write_model(&c, lib);
	b1 = read_bytes(out, &n1);
	b2 = read_bytes(lib, &n2);
	ck_assert_uint_eq(n1, n2);
	ck_assert_int_eq(memcmp(b1, b2, n1), 0);
	free(b1);
	free(b2);

	{
		char *argv[] = { "mkmodel", "--help", NULL };

		ck_assert_int_eq(run_cmd(cmd_mkmodel, argv, log), 0);
		ck_assert(file_contains(log, "--kv-heads"));
		ck_assert(file_contains(log, "--shared-ff"));
		ck_assert(file_contains(log, "(default 4096)"));
	}
	{
		char *argv[] = { "mkmodel", "--arch", "llama", "--out", out,
			"--heads", "5", NULL };

		ck_assert_int_eq(run_cmd(cmd_mkmodel, argv, log), 2);
		ck_assert(file_contains(log, "not divisible by heads 5"));
	}
	{
		char *argv[] = { "mkmodel", "--arch", "gpt2", "--out", out, NULL };

		ck_assert_int_eq(run_cmd(cmd_mkmodel, argv, log), 2);
		ck_assert(file_contains(log, "unknown --arch 'gpt2'"));
	}
	{
		char *argv[] = { "mkmodel", "--arch", "llama", "--out", out,
			"--dim", "12x", NULL };

		ck_assert_int_eq(run_cmd(cmd_mkmodel, argv, log), 2);
		ck_assert(file_contains(log, "--dim: '12x' is not a number"));
	}
	{
		char *argv[] = { "mkmodel", "--arch", "llama", NULL };

		ck_assert_int_eq(run_cmd(cmd_mkmodel, argv, log), 2);
		ck_assert(file_contains(log, "required"));
	}
	{
		/* olmoe: kv heads follow --heads */
		char *argv[] = { "mkmodel", "--arch", "olmoe", "--out", out,
			"--heads", "8", "-q", NULL };
		struct gguf_file *g;
		uint32_t u;

		ck_assert_int_eq(run_cmd(cmd_mkmodel, argv, log), 0);
		g = open_ok(out);
		ck_assert_int_eq(gguf_get_u32(g, "olmoe.attention.head_count_kv",
		                         &u), 0);
		ck_assert_uint_eq(u, 8);
		gguf_close(g);
	}
}
END_TEST

START_TEST(inspect_prints_metadata_and_tensors_or_the_error)
{
	char model[512], log[512], bad[512];
	struct mkmodel_cfg c;
	FILE *f;

	tmp_path(model, sizeof(model), "m.gguf");
	tmp_path(log, sizeof(log), "inspect.txt");
	tmp_path(bad, sizeof(bad), "bad.gguf");
	ck_assert_int_eq(mkmodel_preset(&c, MKMODEL_QWEN2MOE, "tiny"), 0);
	write_model(&c, model);
	{
		char *argv[] = { "inspect", model, NULL };

		ck_assert_int_eq(run_cmd(cmd_inspect, argv, log), 0);
	}
	ck_assert(file_contains(log, "GGUF version 3, alignment 32"));
	ck_assert(file_contains(log, "28 metadata keys, 37 tensors"));
	ck_assert(file_contains(log, "general.architecture"));
	ck_assert(file_contains(log, "\"qwen2moe\""));
	ck_assert(file_contains(log, "string[512]"));
	ck_assert(file_contains(log, "[\"<unk>\", \"<s>\", \"</s>\""));
	ck_assert(file_contains(log, "(504 more)"));
	ck_assert(file_contains(log, "9.99999975e-06"));
	ck_assert(file_contains(log, "blk.1.ffn_down_shexp.weight"));
	ck_assert(file_contains(log, "128 x 64 x 8"));
	ck_assert(file_contains(log, "total: 37 tensors"));

	f = fopen(bad, "wb");
	fwrite("GGUF\x01\0\0\0", 1, 8, f);
	fclose(f);
	{
		char *argv[] = { "inspect", bad, NULL };

		ck_assert_int_eq(run_cmd(cmd_inspect, argv, log), 1);
	}
	ck_assert(file_contains(log, "unsupported GGUF version 1"));
	ck_assert(file_contains(log, bad));
	{
		char *argv[] = { "inspect", "--help", NULL };

		ck_assert_int_eq(run_cmd(cmd_inspect, argv, log), 0);
		ck_assert(file_contains(log, "usage: epmoe inspect FILE"));
	}
	{
		char *argv[] = { "inspect", NULL };

		ck_assert_int_eq(run_cmd(cmd_inspect, argv, log), 2);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("mkmodel");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
	tcase_add_test(tc, same_seed_gives_identical_bytes_for_every_arch);
	tcase_add_test(tc, different_seed_gives_different_weights_same_header);
	tcase_add_test(tc, tiny_preset_matches_testdata_keys_values_and_tensors);
	tcase_add_test(tc, weights_have_std_one_over_sqrt_fan_in_and_norms_near_one);
	tcase_add_test(tc, f16_bf16_q8_0_models_quantise_the_same_weights);
	tcase_add_test(tc, custom_shapes_follow_the_flags);
	tcase_add_test(tc, vocab_is_unique_ordered_and_useful);
	tcase_add_test(tc, presets_have_the_documented_shapes);
	tcase_add_test(tc, validation_rejects_inconsistent_shapes);
	tcase_add_test(tc, mkmodel_command_writes_the_library_model);
	tcase_add_test(tc, inspect_prints_metadata_and_tensors_or_the_error);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
