/* Quantised models end to end, against llama.cpp (../shared/testdata):
 *  - the logits of every llama-quantize file, the prompt in one batch and
 *    the greedy continuation one token at a time through the KV cache;
 *  - epmoe quantize: the type of every tensor equals llama-quantize's under
 *    the same preset, and the quantised model is as close to its F32
 *    original as llama-quantize's file is (same engine, same tokens);
 *  - epmoe perplexity --protocol llama on the KJV model: within 0.5% of
 *    llama-perplexity's figures;
 *  - a file holding a type epmoe cannot run opens (inspect) and fails to
 *    load with a message naming the type.
 *
 * Tolerances against llama.cpp's logits.  epmoe rounds activations as
 * llama.cpp does, so the products are the same integers and most
 * positions agree to float summation noise (measured 2e-7 .. 4e-6;
 * TOL_NOISE 1e-4).  An activation that falls within that noise of a
 * rounding boundary (x * 127 / max = k + 1/2) rounds the other way in one
 * of the two programs; that changes the position's logits by up to about
 * 0.05 (measured), and when it happens before the attention of a prompt
 * position it reaches every later position through the KV cache.  So: at
 * least 75% of the prompt positions within TOL_NOISE, and of the
 * continuation too when the prompt had no such flip (or, when a flip
 * happens during the continuation, which the KV cache then carries to
 * later positions, all positions before it, at least a third of them:
 * float summation order alone decides whether an activation that close to
 * a boundary flips, and the F32 products do not sum in llama.cpp's order;
 * measured: mixtral-q-q4_k_m the first 9 of 15, mixtral-q-q3_k_m the first
 * 7 of 15 in the sanitizer build, whose -O1 sums in yet another order);
 * every position within
 * TOL_FLIP = 0.15; relative RMS over all logits within 0.02 (llama.cpp's
 * own quantisation error is 0.05 .. 0.5 of the logits); and the same
 * greedy token wherever llama.cpp's top two logits are more than TOL_FLIP
 * apart. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine.h"
#include "err.h"
#include "gguf.h"
#include "mkmodel.h"
#include "model.h"
#include "quant_model.h"
#include "testutil.h"

#define TOL_NOISE 1e-4f
#define TOL_FLIP 0.15f
#define TOL_RELRMS 0.02
#define MIN_AGREE 0.75

static const char *const files[] = { "mixtral-q-q2_k", "mixtral-q-q3_k_m",
	"mixtral-q-q4_0", "mixtral-q-q4_k_m", "mixtral-q-q5_k_m", "mixtral-q-q6_k",
	"qwen2moe-q-q4_k_m", "qwen2moe-q-q5_0", "kjv-moe-lossfree-q4_k_m" };
#define N_FILES (sizeof(files) / sizeof(files[0]))


static float *
read_f32(const char *name, const char *ext, size_t want)
{
	char f[256];
	size_t len;
	float *v;

	snprintf(f, sizeof(f), "%s.%s", name, ext);
	v = tu_read(tu_data(f), &len);
	ck_assert_msg(v != NULL, "cannot read %s", f);
	ck_assert_uint_eq(len, want * sizeof(float));
	return v;
}

static size_t
read_ids(const char *name, const char *ext, int32_t *ids, size_t cap)
{
	char f[256];
	char *txt;
	size_t n;

	snprintf(f, sizeof(f), "%s.%s", name, ext);
	txt = tu_read(tu_data(f), NULL);
	ck_assert_msg(txt != NULL, "cannot read %s", f);
	n = tu_parse_ids(txt, ids, cap);
	free(txt);
	return n;
}



/* agreement of positions: counts, max |diff|, sums for the relative RMS */
struct agree {
	size_t n, close;
	size_t lead; /* positions within TOL_NOISE before the first beyond */
	float maxd;
	double dd, rr;
};

static void
cmp_row(struct agree *a, const float *got, const float *want, size_t V,
        const char *what, size_t pos)
{
	float md = 0;

	for (size_t i = 0; i < V; i++) {
		float d = fabsf(got[i] - want[i]);
		ck_assert_msg(isfinite(got[i]), "%s pos %zu: non-finite logit", what, pos);
		md = fmaxf(md, d);
		a->dd += (double)d * d;
		a->rr += (double)want[i] * want[i];
	}
	ck_assert_msg(md <= TOL_FLIP, "%s pos %zu: max |diff| %g > %g", what, pos, md,
	        TOL_FLIP);
	if (tu_margin(want, V) > TOL_FLIP)
		ck_assert_msg(tu_argmax(got, V) == tu_argmax(want, V),
		        "%s pos %zu: greedy id %d, llama.cpp %d", what, pos,
		        tu_argmax(got, V), tu_argmax(want, V));
	a->lead += md <= TOL_NOISE && a->lead == a->n;
	a->n++;
	a->close += md <= TOL_NOISE;
	a->maxd = fmaxf(a->maxd, md);
}

static void
check_agree(const struct agree *a, const char *name, const char *what,
        int need_close)
{
	double rel = sqrt(a->dd / a->rr);

	fprintf(stderr, "%s %s: %zu/%zu positions within %g, max |diff| %.3g, "
	                "relative RMS %.2g\n", name, what, a->close, a->n, TOL_NOISE,
	        a->maxd, rel);
	/* a flip during the continuation reaches later positions through the
	 * KV cache: there the positions before it must be close, and be at
	 * least a third of them */
	int flip_carried = need_close == 2 && 3 * a->lead >= a->n;
	ck_assert_msg(!need_close || flip_carried ||
	                (double)a->close >= MIN_AGREE * (double)a->n,
	        "%s %s: only %zu of %zu positions within %g (the first %zu)", name, what,
	        a->close, a->n, TOL_NOISE, a->lead);
	ck_assert_msg(rel <= TOL_RELRMS, "%s %s: relative RMS %g > %g", name, what, rel,
	        TOL_RELRMS);
}

START_TEST(logits_match_llama_cpp)
{
	const char *name = files[_i];
	char path[256], err[512] = "";
	struct model *m;
	struct engine *e;
	struct eng_seq *s;
	struct engine_opts o = { .n_threads = 2 };
	int32_t ids[256], gen[64];
	size_t n_ids, n_gen, V;
	struct agree ap = { 0 }, ag = { 0 };

	snprintf(path, sizeof(path), "%s.gguf", name);
	ck_assert_msg(model_load(&m, tu_data(path), err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(engine_new(&e, m, &o, err, sizeof(err)) == 0, "%s", err);
	V = m->hp.n_vocab;
	n_ids = read_ids(name, "ids.txt", ids, 256);
	n_gen = read_ids(name, "gen.txt", gen, 64);
	float *want = read_f32(name, "logits.f32", n_ids * V);
	float *wgen = read_f32(name, "genlogits.f32", n_gen * V);
	float *out = malloc(n_ids * V * sizeof(float));

	ck_assert_int_eq(eng_seq_new(e, &s), 0);
	struct eng_item it = { .seq = s, .tokens = ids, .n_tokens = (uint32_t)n_ids,
		.logits = ENG_LOGITS_ALL, .out = out };
	ck_assert_int_eq(engine_step(e, &it, 1), 0);
	for (size_t p = 0; p < n_ids; p++)
		cmp_row(&ap, out + p * V, want + p * V, V, name, p);
	check_agree(&ap, name, "prompt", 1);
	/* llama.cpp's greedy tokens fed back one at a time */
	for (size_t g = 0; g + 1 < n_gen; g++) {
		struct eng_item d1 = { .seq = s, .tokens = &gen[g], .n_tokens = 1,
			.logits = ENG_LOGITS_LAST, .out = out, .decode = true };
		ck_assert_int_eq(engine_step(e, &d1, 1), 0);
		cmp_row(&ag, out, wgen + (g + 1) * V, V, name, n_ids + g);
	}
	check_agree(&ag, name, "continuation", ap.close == ap.n ? 2 : 0);
	free(out);
	free(want);
	free(wgen);
	eng_seq_free(s);
	engine_free(e);
	model_free(m);
}
END_TEST

/* ---- epmoe quantize against llama-quantize ---- */

static char tmpdir[] = "/tmp/epmoe-tqm-XXXXXX";

static void
tmp_setup(void)
{
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void
tmp_teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
}

/* The random originals the testdata README names (mkmodel, seeds 11, 12). */
static void
write_original(int qwen, const char *path)
{
	struct mkmodel_cfg c;
	char err[256];

	ck_assert_int_eq(mkmodel_preset(&c, qwen ? MKMODEL_QWEN2MOE : MKMODEL_LLAMA,
	                         "tiny"), 0);
	c.n_embd = 256;
	c.n_ff = 512;
	c.n_ff_shexp = 768;
	c.n_layer = 2;
	c.n_expert = 8;
	c.n_expert_used = 2;
	c.n_vocab = 512;
	c.n_head = 4;
	c.n_head_kv = 2;
	c.seed = qwen ? 12 : 11;
	ck_assert_msg(mkmodel_write(&c, path, err, sizeof(err)) == 0, "%s", err);
}

/* logits of path at every position of ids */
static float *
run_logits(const char *path, const int32_t *ids, size_t n)
{
	struct model *m;
	struct engine *e;
	struct eng_seq *s;
	struct engine_opts o = { .n_threads = 2 };
	char err[512] = "";
	float *out;

	ck_assert_msg(model_load(&m, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(engine_new(&e, m, &o, err, sizeof(err)) == 0, "%s", err);
	out = malloc(n * m->hp.n_vocab * sizeof(float));
	ck_assert_int_eq(eng_seq_new(e, &s), 0);
	struct eng_item it = { .seq = s, .tokens = ids, .n_tokens = (uint32_t)n,
		.logits = ENG_LOGITS_ALL, .out = out };
	ck_assert_int_eq(engine_step(e, &it, 1), 0);
	eng_seq_free(s);
	engine_free(e);
	model_free(m);
	return out;
}

static double
rel_rms(const float *a, const float *b, size_t n)
{
	double d = 0, r = 0;

	for (size_t i = 0; i < n; i++) {
		d += (double)(a[i] - b[i]) * (a[i] - b[i]);
		r += (double)b[i] * b[i];
	}
	return sqrt(d / r);
}

/* For each llama-quantize file of a random model: the same preset applied
 * by epmoe quantize to the F32 original gives every tensor the same type,
 * and logits at least as close to the original's (within 15%) over 128
 * positions of random tokens. */
START_TEST(quantize_matches_llama_quantize)
{
	const char *name = files[_i]; /* the 8 random-model files */
	int qwen = strncmp(name, "qwen", 4) == 0;
	const char *preset = strrchr(name, '-') + 1;
	char orig[256], mine[256], theirs[256], err[512];
	enum quant_preset p;
	struct gguf_file *a, *b;
	int32_t ids[128];

	snprintf(orig, sizeof(orig), "%s/orig.gguf", tmpdir);
	snprintf(mine, sizeof(mine), "%s/%s.gguf", tmpdir, preset);
	snprintf(theirs, sizeof(theirs), "%s.gguf", name);
	write_original(qwen, orig);
	ck_assert_int_eq(quant_preset_parse(preset, &p), 0);
	ck_assert_msg(quant_model_write(orig, mine, p, 2, err, sizeof(err)) == 0, "%s", err);

	ck_assert_msg(gguf_open(&a, mine, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(gguf_open(&b, tu_data(theirs), err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(a->n_tensors, b->n_tensors);
	for (uint64_t i = 0; i < b->n_tensors; i++) {
		const struct gguf_tensor *tb = &b->tensors[i], *ta;
		char tn[128];
		snprintf(tn, sizeof(tn), "%.*s", (int)tb->name.len, tb->name.ptr);
		ta = gguf_find_tensor(a, tn);
		ck_assert_msg(ta != NULL, "%s: no tensor %s", preset, tn);
		ck_assert_msg(ta->type == tb->type, "%s: %s is %s, llama-quantize wrote %s",
		        preset, tn, dtype_name(ta->type), dtype_name(tb->type));
		ck_assert_uint_eq(ta->size, tb->size);
	}
	uint32_t ft;
	ck_assert_int_eq(gguf_get_u32(a, "general.file_type", &ft), 0);
	uint32_t ftb;
	ck_assert_int_eq(gguf_get_u32(b, "general.file_type", &ftb), 0);
	ck_assert_uint_eq(ft, ftb);
	gguf_close(a);
	gguf_close(b);

	ids[0] = 1;
	for (int i = 1; i < 128; i++)
		ids[i] = 3 + (int32_t)((i * 2654435761u) % 509);
	float *lo = run_logits(orig, ids, 128);
	float *lm = run_logits(mine, ids, 128);
	float *lt = run_logits(tu_data(theirs), ids, 128);
	double em = rel_rms(lm, lo, 128 * 512), et = rel_rms(lt, lo, 128 * 512);
	fprintf(stderr, "%s: relative RMS to the F32 original: epmoe quantize %.4f, "
	                "llama-quantize %.4f\n", name, em, et);
	ck_assert_msg(em <= 1.15 * et, "%s: epmoe quantize %.4f vs llama-quantize %.4f",
	        name, em, et);
	free(lo);
	free(lm);
	free(lt);
}
END_TEST

/* ---- perplexity ---- */

static double
run_ppl(const char *model, char *out, size_t cap)
{
	char cmd[1024];
	FILE *p;
	size_t n;
	const char *k;

	snprintf(cmd, sizeof(cmd), "%s perplexity --model %s --file models/kjv-test.txt "
	                           "--ctx 256 --protocol llama --threads 2 --json",
	        tu_bin("epmoe"), model);
	ck_assert_ptr_nonnull(p = popen(cmd, "r"));
	n = fread(out, 1, cap - 1, p);
	out[n] = '\0';
	ck_assert_int_eq(pclose(p), 0);
	ck_assert_msg((k = strstr(out, "\"perplexity\":")) != NULL, "no perplexity in %s", out);
	return strtod(k + 13, NULL);
}

/* llama-perplexity -c 256 (testdata README): Q4_K_M 48.8618, F16 48.8112 */
START_TEST(perplexity_matches_llama_perplexity)
{
	static const struct {
		const char *model;
		double ppl;
	} ref[] = {
		{ "kjv-moe-lossfree-q4_k_m.gguf", 48.8618 },
		{ "models/kjv-moe-lossfree.gguf", 48.8112 },
	};
	char out[4096];
	const char *model = _i == 0 ? tu_data(ref[0].model) : ref[1].model;
	double got = run_ppl(model, out, sizeof(out));

	ck_assert_msg(fabs(got / ref[_i].ppl - 1.0) <= 0.005, "%s: epmoe %.4f, llama.cpp %.4f",
	        model, got, ref[_i].ppl);
	/* 123 chunks of 256, 127 scored each */
	ck_assert_ptr_nonnull(strstr(out, "\"windows\":123,"));
	ck_assert_ptr_nonnull(strstr(out, "\"tokens\":15621,"));
	ck_assert_ptr_nonnull(strstr(out, "\"protocol\":\"llama\""));
}
END_TEST

/* ---- types epmoe cannot run ---- */

/* Copies src to dst with tensor `name`'s type field set to type. */
static void
copy_with_type(const char *src, const char *dst, const char *name, uint32_t type)
{
	size_t len, nl = strlen(name);
	uint8_t *b = tu_read(src, &len), *p = NULL;
	uint32_t nd;
	FILE *f;

	ck_assert_ptr_nonnull(b);
	for (size_t i = 8; i + nl < len && p == NULL; i++) {
		uint64_t sl;
		memcpy(&sl, b + i - 8, 8);
		if (sl == nl && memcmp(b + i, name, nl) == 0)
			p = b + i + nl;
	}
	ck_assert_ptr_nonnull(p);
	memcpy(&nd, p, 4);
	memcpy(p + 4 + 8 * nd, &type, 4);
	ck_assert_ptr_nonnull(f = fopen(dst, "wb"));
	ck_assert_uint_eq(fwrite(b, 1, len, f), len);
	fclose(f);
	free(b);
}

START_TEST(unsupported_types_open_and_are_named_when_loaded)
{
	char path[256], cmd[512], out[8192], err[512] = "";
	struct gguf_file *g;
	struct model *m;
	FILE *p;
	size_t n;

	/* iq4_nl has Q4_0's geometry (32 values in 18 bytes) */
	snprintf(path, sizeof(path), "%s/iq.gguf", tmpdir);
	copy_with_type(tu_data("mixtral-q-q4_0.gguf"), path, "blk.0.attn_q.weight", 20);
	ck_assert_msg(gguf_open(&g, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(gguf_find_tensor(g, "blk.0.attn_q.weight")->type, 20);
	gguf_close(g);
	snprintf(cmd, sizeof(cmd), "%s inspect %s", tu_bin("epmoe"), path);
	ck_assert_ptr_nonnull(p = popen(cmd, "r"));
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	ck_assert_int_eq(pclose(p), 0);
	ck_assert_ptr_nonnull(strstr(out, "iq4_nl"));
	ck_assert_ptr_nonnull(strstr(out, "q6_K"));
	ck_assert_int_eq(model_load(&m, path, err, sizeof(err)), EPMOE_ENOTSUP);
	ck_assert_msg(strstr(err, "blk.0.attn_q.weight") && strstr(err, "iq4_nl") &&
	                strstr(err, "q4_K"), "message: %s", err);
	/* the quantiser refuses to convert it, naming it */
	snprintf(cmd, sizeof(cmd), "%s/out.gguf", tmpdir);
	ck_assert_int_ne(quant_model_write(path, cmd, QUANT_Q8_0, 1, err, sizeof(err)), 0);
	ck_assert_msg(strstr(err, "iq4_nl") != NULL, "message: %s", err);
	ck_assert_int_ne(access(cmd, F_OK), 0);
}
END_TEST

/* epmoe quantize's command line: bad presets, missing files */
START_TEST(quantize_cli_rejects_bad_input)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd), "%s quantize %s %s/x.gguf q9_k 2>/dev/null",
	        tu_bin("epmoe"), tu_data("mixtral-tiny-f32.gguf"), tmpdir);
	ck_assert_int_eq(WEXITSTATUS(system(cmd)), 2);
	snprintf(cmd, sizeof(cmd), "%s quantize %s/none.gguf %s/x.gguf q4_0 2>/dev/null",
	        tu_bin("epmoe"), tmpdir, tmpdir);
	ck_assert_int_eq(WEXITSTATUS(system(cmd)), 1);
	snprintf(cmd, sizeof(cmd), "%s/x.gguf", tmpdir);
	ck_assert_int_ne(access(cmd, F_OK), 0);
	/* the tiny model's rows (64) fit no block type but Q8_0-sized ones:
	 * q4_k_m falls back to 32-value blocks and the result loads */
	snprintf(cmd, sizeof(cmd), "%s quantize %s %s/t.gguf q4_k_m >/dev/null",
	        tu_bin("epmoe"), tu_data("mixtral-tiny-f32.gguf"), tmpdir);
	ck_assert_int_eq(system(cmd), 0);
	snprintf(cmd, sizeof(cmd), "%s/t.gguf", tmpdir);
	struct model *m;
	char err[512] = "";
	ck_assert_msg(model_load(&m, cmd, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(m->layers[0].gate_exps.type, DTYPE_Q5_0);
	ck_assert_int_eq(m->output.type, DTYPE_Q8_0);
	model_free(m);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("quant_models");
	TCase *tl = tcase_create("llama_cpp_logits");
	TCase *tq = tcase_create("quantize");
	TCase *tp = tcase_create("perplexity");

	tcase_set_timeout(tl, 120);
	tcase_add_loop_test(tl, logits_match_llama_cpp, 0, N_FILES);
	tcase_set_timeout(tq, 240);
	tcase_add_unchecked_fixture(tq, tmp_setup, tmp_teardown);
	tcase_add_loop_test(tq, quantize_matches_llama_quantize, 0, N_FILES - 1);
	tcase_add_test(tq, unsupported_types_open_and_are_named_when_loaded);
	tcase_add_test(tq, quantize_cli_rejects_bad_input);
	tcase_set_timeout(tp, 600);
	tcase_add_loop_test(tp, perplexity_matches_llama_perplexity, 0, 2);
	suite_add_tcase(s, tl);
	suite_add_tcase(s, tq);
	suite_add_tcase(s, tp);
	return tu_run(s);
}
