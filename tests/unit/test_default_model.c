/* The default model of `make run` (models/kjv-moe-best.gguf, trained on the
 * King James Bible by train/) writes words: a few greedy tokens from a
 * KJV-style prompt detokenize into words that all occur in the training
 * text (models/kjv-words.txt, the distinct words of the training split). A
 * random-weight model, a broken export or a tokenizer mismatch would put
 * fragments and byte soup there instead. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "model.h"
#include "testutil.h"
#include "tok.h"

#define MODEL "models/kjv-moe-best.gguf"
#define WORDS "models/kjv-words.txt"

/* 1 if w (lower-cased) is a line of the word list. */
static int
known(const char *list, const char *w)
{
	size_t n = strlen(w);
	for (const char *p = list; (p = strstr(p, w)) != NULL; p++)
		if ((p == list || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
			return 1;
	return 0;
}

static void
generate(const char *prompt, int n_gen, char *out, size_t cap)
{
	struct model *m;
	struct engine *e;
	struct tok *tk;
	struct eng_seq *s;
	struct tok_stream ts;
	char err[256];
	int32_t *ids;
	size_t n_ids, len = 0;

	ck_assert_msg(model_load(&m, MODEL, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(engine_new(&e, m, NULL, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(tok_load(&tk, m->gguf, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(tok_encode(tk, prompt, strlen(prompt), TOK_ADD_BOS, &ids, &n_ids), 0);
	ck_assert_int_eq(eng_seq_new(e, &s), 0);
	ck_assert_int_eq(tok_stream_init(&ts, tk, 0), 0);
	float *logits = malloc(m->hp.n_vocab * sizeof(float));
	struct eng_item it = { .seq = s, .tokens = ids, .n_tokens = (uint32_t)n_ids,
		.logits = ENG_LOGITS_LAST, .out = logits };
	ck_assert_int_eq(engine_step(e, &it, 1), 0);
	for (int g = 0; g < n_gen; g++) {
		int32_t best = 0;
		const char *t;
		size_t tl;
		for (uint32_t v = 1; v < m->hp.n_vocab; v++)
			if (logits[v] > logits[best])
				best = (int32_t)v;
		if (tok_is_eog(tk, best))
			break;
		ck_assert_int_eq(tok_stream_push(&ts, best, &t, &tl), 0);
		ck_assert(len + tl < cap);
		memcpy(out + len, t, tl);
		len += tl;
		struct eng_item d = { .seq = s, .tokens = &best, .n_tokens = 1,
			.logits = ENG_LOGITS_LAST, .out = logits, .decode = true };
		ck_assert_int_eq(engine_step(e, &d, 1), 0);
	}
	out[len] = '\0';
	tok_stream_fini(&ts);
	free(logits);
	free(ids);
	eng_seq_free(s);
	tok_free(tk);
	engine_free(e);
	model_free(m);
}

START_TEST(default_model_generates_training_words)
{
	static const char *const prompts[] = { "In the beginning",
		"And the LORD spake unto Moses, saying,", "Blessed are the" };
	char *list = tu_read(WORDS, NULL), text[4096], word[64];

	ck_assert_msg(list != NULL, "cannot read %s", WORDS);
	for (char *p = list; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	for (size_t i = 0; i < sizeof(prompts) / sizeof(prompts[0]); i++) {
		int n_words = 0;
		generate(prompts[i], 24, text, sizeof(text));
		for (const char *p = text; *p;) {
			size_t n = 0;
			while (*p && !isalpha((unsigned char)*p))
				p++;
			while (isalpha((unsigned char)*p) && n + 1 < sizeof(word))
				word[n++] = (char)tolower((unsigned char)*p++);
			word[n] = '\0';
			if (n == 0)
				continue;
			/* the last word may be cut by the token limit */
			if (*p == '\0')
				break;
			ck_assert_msg(known(list, word), "'%s' (in \"%s\" -> \"%s\") is not a KJV word",
			        word, prompts[i], text);
			n_words++;
		}
		ck_assert_msg(n_words >= 5, "too few words in \"%s\"", text);
	}
	free(list);
}
END_TEST

/* `epmoe perplexity --json` on the held-out books with windows of 256 and
 * extra options; returns the perplexity, the JSON in out. */
static double
perplexity(const char *model, const char *opts, char *out, size_t cap)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd), "%s perplexity --model %s --file models/kjv-test.txt --ctx 256 --json %s",
	        tu_bin("epmoe"), model, opts);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	size_t n = fread(out, 1, cap - 1, p);
	out[n] = '\0';
	ck_assert_int_eq(pclose(p), 0);
	const char *k = strstr(out, "\"perplexity\":");
	ck_assert_msg(k != NULL, "no perplexity in: %s", out);
	return strtod(k + 13, NULL);
}

/* epmoe perplexity on the held-out books equals the trainer's own test
 * perplexity of each committed model (models/README.md) within 1%: the
 * export, the tokenizer and the engine agree on trained weights. */
START_TEST(perplexity_matches_the_trainer)
{
	static const struct {
		const char *model;
		double ppl;
	} ref[] = {
		{ "models/kjv-moe-aux.gguf", 51.18 },
		{ "models/kjv-moe-ssr.gguf", 53.15 },
		{ "models/kjv-moe-lossfree.gguf", 50.78 },
	};
	char out[4096];
	size_t i = (size_t)_i;
	double got = perplexity(ref[i].model, "", out, sizeof(out));

	ck_assert_msg(fabs(got / ref[i].ppl - 1.0) <= 0.01, "%s: epmoe %.3f, trainer %.2f",
	        ref[i].model, got, ref[i].ppl);
	ck_assert_ptr_nonnull(strstr(out, "\"tokens\":31563"));
}
END_TEST

/* The F16 KV cache (--kv-type f16) changes the perplexity of a trained
 * model by less than 1e-4 relative (measured: 2e-6). */
START_TEST(f16_kv_cache_keeps_the_perplexity)
{
	char out[4096];
	double p32 = perplexity("models/kjv-moe-lossfree.gguf", "--max-windows 16",
	        out, sizeof(out));
	double p16 = perplexity("models/kjv-moe-lossfree.gguf",
	        "--max-windows 16 --kv-type f16", out, sizeof(out));

	ck_assert_msg(fabs(p16 / p32 - 1.0) <= 1e-4, "F32 cache %.6f, F16 cache %.6f", p32, p16);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("default_model");
	TCase *tc = tcase_create("kjv");

	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, default_model_generates_training_words);
	tcase_add_loop_test(tc, perplexity_matches_the_trainer, 0, 3);
	tcase_add_test(tc, f16_kv_cache_keeps_the_perplexity);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
