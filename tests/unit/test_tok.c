/* Tokenizer: SentencePiece merges by score and byte fallback, byte-level BPE
 * with its pre-tokenizers, special tokens, decoding and streaming, built
 * from small in-memory vocabularies whose expected ids are derived by hand
 * in the comments; then the reference models of shared/testdata (ids
 * computed by llama.cpp). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "err.h"
#include "gguf.h"
#include "testutil.h"
#include "tok.h"
#include "tok_int.h"

/* ---- vocabulary builders ---- */

#define MAXV 600

struct vb {
	char *tok[MAXV];
	float sc[MAXV];
	int32_t ty[MAXV];
	uint32_t n;
	const char *merges[64];
	uint32_t n_merges;
};

static int32_t
vb_add(struct vb *b, const char *s, float score, int type)
{
	ck_assert_uint_lt(b->n, MAXV);
	b->tok[b->n] = strdup(s);
	b->sc[b->n] = score;
	b->ty[b->n] = type;
	return (int32_t)b->n++;
}

static void
vb_free(struct vb *b)
{
	for (uint32_t i = 0; i < b->n; i++)
		free(b->tok[i]);
}

static struct tok *
vb_build(struct vb *b, enum tok_model model, const char *pre)
{
	struct tok_vocab v;
	struct tok *t = NULL;
	char err[256] = "";
	int rc;

	tok_vocab_init(&v, model);
	v.n_tokens = b->n;
	v.tokens = (const char *const *)b->tok;
	v.scores = b->sc;
	v.types = b->ty;
	v.merges = b->merges;
	v.n_merges = b->n_merges;
	v.pre = pre;
	if (model == TOK_MODEL_SPM) {
		v.unk_id = 0;
		v.bos_id = 1;
		v.eos_id = 2;
	}
	rc = tok_new_from_vocab(&t, &v, err, sizeof(err));
	ck_assert_msg(rc == 0, "tok_new_from_vocab: %s (%s)", epmoe_strerror(rc),
	        err);
	return t;
}

/* The SentencePiece test vocabulary:
 *   0 <unk>  1 <s>  2 </s>  3..258 <0x00>..<0xFF>
 *   259 ▁ -1   260 h -2   261 e -3   262 l -4   263 o -5   264 w -6
 *   265 r -7   266 d -8   267 ll -9  268 he -10 269 ▁h -11 270 ▁he -12
 *   271 a -13  272 aa -14 273 ▁w -15 274 or -16 275 ▁wor -17
 *   276 é -18  277 <|im_start|> (control)  278 <|im (control)
 *   279 <tool> (user-defined)  280 中 -19
 * A byte b is id 3 + b. */
static struct tok *
spm_tiny(struct vb *b)
{
	static const char *const pieces[] = { "\xe2\x96\x81", "h", "e", "l",
		"o", "w", "r", "d", "ll", "he", "\xe2\x96\x81h",
		"\xe2\x96\x81he", "a", "aa", "\xe2\x96\x81w", "or",
		"\xe2\x96\x81wor", "\xc3\xa9" };
	char buf[8];

	memset(b, 0, sizeof(*b));
	vb_add(b, "<unk>", 0, TOK_TYPE_UNKNOWN);
	vb_add(b, "<s>", 0, TOK_TYPE_CONTROL);
	vb_add(b, "</s>", 0, TOK_TYPE_CONTROL);
	for (int i = 0; i < 256; i++) {
		snprintf(buf, sizeof(buf), "<0x%02X>", i);
		vb_add(b, buf, 0, TOK_TYPE_BYTE);
	}
	for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++)
		vb_add(b, pieces[i], -1.0f - (float)i, TOK_TYPE_NORMAL);
	vb_add(b, "<|im_start|>", 0, TOK_TYPE_CONTROL);
	vb_add(b, "<|im", 0, TOK_TYPE_CONTROL);
	vb_add(b, "<tool>", 0, TOK_TYPE_USER_DEFINED);
	vb_add(b, "\xe4\xb8\xad", -19, TOK_TYPE_NORMAL);
	ck_assert_uint_eq(b->n, 281);
	return vb_build(b, TOK_MODEL_SPM, NULL);
}

#define B(x) (3 + (x)) /* SPM byte token */

/* GPT-2's byte-to-unicode alphabet, written independently of tok_bpe.c. */
static void
byte_char(int byte, char out[3])
{
	int printable = (byte >= 33 && byte <= 126) ||
	        (byte >= 161 && byte <= 172) || (byte >= 174 && byte <= 255);
	int cp = byte, k = 0;

	if (!printable) {
		for (int c = 0; c < byte; c++)
			k += !((c >= 33 && c <= 126) || (c >= 161 && c <= 172) ||
			        (c >= 174 && c <= 255));
		cp = 256 + k;
	}
	if (cp < 0x80) {
		out[0] = (char)cp;
		out[1] = 0;
	} else {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		out[2] = 0;
	}
}

/* The byte-level BPE test vocabulary: ids 0..255 are the 256 byte
 * characters in byte order (so a byte's id is the byte), then
 *   256 Ġt  257 he  258 Ġthe  259 in  260 Ġw  261 or  262 Ġwor  263 ld
 *   264 Ġworld  265 Ġxyz (no merge leads to it)  266 <|endoftext|>
 *   (control)  267 aa
 * merges by rank: 0 "Ġ t", 1 "h e", 2 "Ġt he", 3 "i n", 4 "Ġ w", 5 "o r",
 * 6 "Ġw or", 7 "l d", 8 "Ġwor ld", 9 "a a". */
static struct tok *
bpe_tiny(struct vb *b, const char *pre)
{
	static const char *const extra[] = { "\xc4\xa0t", "he",
		"\xc4\xa0the", "in", "\xc4\xa0w", "or", "\xc4\xa0wor", "ld",
		"\xc4\xa0world", "\xc4\xa0xyz" };
	static const char *const merges[] = { "\xc4\xa0 t", "h e",
		"\xc4\xa0t he", "i n", "\xc4\xa0 w", "o r", "\xc4\xa0w or", "l d",
		"\xc4\xa0wor ld", "a a" };
	char buf[3];

	memset(b, 0, sizeof(*b));
	for (int i = 0; i < 256; i++) {
		byte_char(i, buf);
		vb_add(b, buf, 0, TOK_TYPE_NORMAL);
	}
	for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++)
		vb_add(b, extra[i], 0, TOK_TYPE_NORMAL);
	vb_add(b, "<|endoftext|>", 0, TOK_TYPE_CONTROL);
	vb_add(b, "aa", 0, TOK_TYPE_NORMAL);
	for (size_t i = 0; i < sizeof(merges) / sizeof(merges[0]); i++)
		b->merges[b->n_merges++] = merges[i];
	return vb_build(b, TOK_MODEL_BPE, pre);
}

/* ---- helpers ---- */

static void
expect_ids(const struct tok *t, const char *text, unsigned flags,
        const int32_t *want, size_t n_want)
{
	int32_t *ids = NULL;
	size_t n = 0;
	char got[1024] = "";
	int rc = tok_encode(t, text, strlen(text), flags, &ids, &n);

	ck_assert_int_eq(rc, 0);
	for (size_t i = 0; i < n && strlen(got) < sizeof(got) - 16; i++)
		snprintf(got + strlen(got), sizeof(got) - strlen(got), "%d,",
		        ids[i]);
	ck_assert_msg(n == n_want, "'%s': %zu ids, want %zu (got %s)", text, n,
	        n_want, got);
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(ids[i] == want[i], "'%s': id %zu is %d, want %d "
		        "(got %s)", text, i, ids[i], want[i], got);
	free(ids);
}

#define EXPECT(t, text, flags, ...) do { \
	static const int32_t want_[] = { __VA_ARGS__ }; \
	expect_ids(t, text, flags, want_, sizeof(want_) / sizeof(want_[0])); \
} while (0)

static void
roundtrip(const struct tok *t, const char *text, size_t len, unsigned flags)
{
	int32_t *ids = NULL;
	size_t n = 0, out_len = 0;
	char *out = NULL;

	ck_assert_int_eq(tok_encode(t, text, len, flags, &ids, &n), 0);
	ck_assert_int_eq(tok_decode(t, ids, n, 0, &out, &out_len), 0);
	ck_assert_msg(out_len == len && memcmp(out, text, len) == 0,
	        "round trip of '%.*s' gave '%s'", (int)len, text, out);
	free(ids);
	free(out);
}

static const char *const rt_texts[] = {
	"Hello world, the quick brown fox",
	"caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9 \xc3\xb1" "and\xc3\xba",
	"\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\xe7\xac\xa6 "
	"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
	"\xf0\x9f\x98\x80 \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd!",
	"mixed: \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 "
	"\xce\xb1\xce\xb2\xce\xb3 \xd8\xb9\xd8\xb1\xd8\xa8\xd9\x8a "
	"\xe4\xb8\xad a1",
	" leading space",
	"trailing space ",
	"   three leading, multiple   inner    spaces   ",
	"line one\nline two\r\n\ttabbed\t\tend\n",
	"\n\n",
	" ",
	"",
	"it's we'll I'M 12345 $1.50 <|im_start|> <tool>",
};

/* ---- SentencePiece ---- */

START_TEST(spm_merges_by_highest_score)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);

	/* "▁hello": ll (-9) first, then he (-10); "▁h" (-11) is stale, so
	 * ▁ + he = ▁he (-12): ▁he ll o */
	EXPECT(t, "hello", TOK_ADD_SPECIAL, 1, 270, 267, 263);
	/* "▁world": ▁w (-15), or (-16), ▁w+or = ▁wor (-17): ▁wor l d */
	EXPECT(t, "world", 0, 275, 262, 266);
	/* "H" has no piece: its byte 0x48 */
	EXPECT(t, "Hello world", TOK_ADD_SPECIAL, 1, 259, B(0x48), 261, 267,
	        263, 275, 262, 266);
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(spm_ties_go_to_the_leftmost_pair)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);

	/* "▁aaa": both "aa" pairs score -14; the left one merges: ▁ aa a */
	EXPECT(t, "aaa", 0, 259, 272, 271);
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(spm_space_prefix_and_spaces_become_u2581)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);

	/* "▁▁he": ▁he wins over ▁▁ (no such piece) */
	EXPECT(t, " he", 0, 259, 270);
	/* "he▁▁" */
	EXPECT(t, "he  ", 0, 270, 259, 259);
	EXPECT(t, "", TOK_ADD_SPECIAL, 1);
	EXPECT(t, "", 0);
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(spm_without_space_prefix)
{
	struct vb b;
	struct tok_vocab v;
	struct tok *t = NULL;
	char buf[8];

	tok_free(spm_tiny(&b));
	tok_vocab_init(&v, TOK_MODEL_SPM);
	v.n_tokens = b.n;
	v.tokens = (const char *const *)b.tok;
	v.scores = b.sc;
	v.types = b.ty;
	v.bos_id = 1;
	v.add_space_prefix = 0;
	ck_assert_int_eq(tok_new_from_vocab(&t, &v, NULL, 0), 0);
	/* "hello" without ▁: he ll o */
	EXPECT(t, "hello", TOK_ADD_SPECIAL, 1, 268, 267, 263);
	ck_assert(!tok_add_space_prefix(t));
	ck_assert_int_eq(tok_piece(t, 259, buf, sizeof(buf), 0), 1);
	ck_assert_str_eq(buf, " ");
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(spm_byte_fallback_for_missing_characters)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);

	/* é is a piece, ñ (C3 B1) is not: its two byte tokens */
	EXPECT(t, "\xc3\xa9", 0, 259, 276);
	EXPECT(t, "\xc3\xb1", 0, 259, B(0xC3), B(0xB1));
	/* "▁café": c and f by byte, a and é by piece */
	EXPECT(t, "caf\xc3\xa9", 0, 259, B('c'), 271, B('f'), 276);
	/* 中 is a piece, 文 (E6 96 87) is not */
	EXPECT(t, "\xe4\xb8\xad\xe6\x96\x87", 0, 259, 280, B(0xE6), B(0x96),
	        B(0x87));
	/* a 4-byte emoji */
	EXPECT(t, "\xf0\x9f\x98\x80", 0, 259, B(0xF0), B(0x9F), B(0x98),
	        B(0x80));
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(spm_unk_only_when_bytes_are_missing)
{
	struct tok_vocab v;
	struct tok *t = NULL;
	const char *toks[] = { "<unk>", "<s>", "\xe2\x96\x81", "a",
		"<0x62>" };
	int32_t types[] = { 2, 3, 1, 1, 6 };

	tok_vocab_init(&v, TOK_MODEL_SPM);
	v.n_tokens = 5;
	v.tokens = toks;
	v.types = types;
	v.unk_id = 0;
	v.bos_id = 1;
	ck_assert_int_eq(tok_new_from_vocab(&t, &v, NULL, 0), 0);
	/* "▁abc": ▁ a, b has its byte token, c has none: <unk> */
	EXPECT(t, "abc", 0, 2, 3, 4, 0);
	tok_free(t);
}
END_TEST

START_TEST(spm_round_trips)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);

	for (size_t i = 0; i < sizeof(rt_texts) / sizeof(rt_texts[0]); i++) {
		roundtrip(t, rt_texts[i], strlen(rt_texts[i]), TOK_ADD_SPECIAL);
		roundtrip(t, rt_texts[i], strlen(rt_texts[i]), 0);
	}
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(invalid_utf8_is_kept_as_bytes)
{
	static const char bad[] = "a\xff\xc3(\xe2\x96 \x80z\xf0\x9f";
	struct vb b, c, d;
	struct tok *t = spm_tiny(&b), *u = bpe_tiny(&c, "llama3");
	struct tok *g = bpe_tiny(&d, "gpt2");

	roundtrip(t, bad, sizeof(bad) - 1, TOK_ADD_SPECIAL);
	roundtrip(u, bad, sizeof(bad) - 1, 0);
	roundtrip(g, bad, sizeof(bad) - 1, 0);
	/* SPM: 0xFF "starts" a 4-byte symbol that takes the rest: bytes */
	EXPECT(t, "\xff\xc3(", 0, 259, B(0xFF), B(0xC3), B('('));
	/* BPE: the bytes' own tokens */
	EXPECT(g, "\xff", 0, 0xFF);
	tok_free(t);
	tok_free(u);
	tok_free(g);
	vb_free(&b);
	vb_free(&c);
	vb_free(&d);
}
END_TEST

/* ---- special tokens ---- */

START_TEST(special_tokens_parsed_only_when_asked)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);

	/* the text after a special token gets the space prefix again */
	EXPECT(t, "<|im_start|>hello", TOK_PARSE_SPECIAL, 277, 270, 267, 263);
	EXPECT(t, "<s>hello", TOK_PARSE_SPECIAL | TOK_ADD_BOS, 1, 1, 270, 267,
	        263);
	/* not parsed: "▁<|im_start|>hello" as text, by bytes, then he ll o */
	EXPECT(t, "<|im_start|>hello", 0, 259, B('<'), B('|'), B('i'), B('m'),
	        B('_'), B('s'), B('t'), 271, 265, B('t'), B('|'), B('>'), 268,
	        267, 263);
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(special_tokens_longest_match_first)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);

	EXPECT(t, "<|im_start|>", TOK_PARSE_SPECIAL, 277);
	EXPECT(t, "<|im", TOK_PARSE_SPECIAL, 278);
	EXPECT(t, "<|im<|im_start|>", TOK_PARSE_SPECIAL, 278, 277);
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(user_defined_tokens_always_match)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);
	char buf[16];

	/* "▁a" <tool> "▁b" (b by byte) */
	EXPECT(t, "a<tool>b", 0, 259, 271, 279, 259, B('b'));
	/* user-defined pieces render as text, control ones only on request */
	ck_assert_int_eq(tok_piece(t, 279, buf, sizeof(buf), 0), 6);
	ck_assert_str_eq(buf, "<tool>");
	ck_assert_int_eq(tok_piece(t, 277, buf, sizeof(buf), 0), 0);
	ck_assert_str_eq(buf, "");
	ck_assert_int_eq(tok_piece(t, 277, buf, sizeof(buf),
	        TOK_DECODE_SPECIAL), 12);
	ck_assert_str_eq(buf, "<|im_start|>");
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(bos_eos_follow_flags_and_eog)
{
	struct tok_vocab v;
	struct tok *t = NULL;
	const char *toks[] = { "<unk>", "<s>", "</s>", "<eot>", "\xe2\x96\x81",
		"a" };
	int32_t types[] = { 2, 3, 3, 3, 1, 1 };

	tok_vocab_init(&v, TOK_MODEL_SPM);
	v.n_tokens = 6;
	v.tokens = toks;
	v.types = types;
	v.unk_id = 0;
	v.bos_id = 1;
	v.eos_id = 2;
	v.eot_id = 3;
	v.add_eos = 1;
	ck_assert_int_eq(tok_new_from_vocab(&t, &v, NULL, 0), 0);
	ck_assert(tok_add_bos(t)); /* SPM default */
	ck_assert(tok_add_eos(t));
	EXPECT(t, "a", TOK_ADD_SPECIAL, 1, 4, 5, 2);
	EXPECT(t, "a", TOK_ADD_EOS, 4, 5, 2);
	EXPECT(t, "a", 0, 4, 5);
	ck_assert(tok_is_eog(t, 2));
	ck_assert(tok_is_eog(t, 3));
	ck_assert(!tok_is_eog(t, 1));
	ck_assert(!tok_is_eog(t, 5));
	ck_assert(!tok_is_eog(t, -1));
	ck_assert(!tok_is_eog(t, 99));
	ck_assert_int_eq(tok_eot(t), 3);
	ck_assert_int_eq(tok_eom(t), TOK_ID_NONE);
	tok_free(t);
}
END_TEST

/* ---- byte-level BPE ---- */

START_TEST(bpe_merges_by_rank)
{
	struct vb b;
	struct tok *t = bpe_tiny(&b, "gpt2");

	/* "Ġthe": Ġ t (0), h e (1), Ġt he (2) */
	EXPECT(t, " the", 0, 258);
	/* "the": only h e: t he */
	EXPECT(t, "the", 0, 't', 257);
	/* "Ġworld": Ġ w (4), o r (5), Ġw or (6), l d (7), Ġwor ld (8) */
	EXPECT(t, "the world", 0, 't', 257, 264);
	/* "Hello": no merges, byte by byte */
	EXPECT(t, "Hello the", TOK_ADD_SPECIAL, 'H', 'e', 'l', 'l', 'o', 258);
	/* ties: both "a a" pairs have rank 9, the left one merges */
	EXPECT(t, "aaa", 0, 267, 'a');
	/* "in" merges inside the word "inin" at both places */
	EXPECT(t, "inin", 0, 259, 259);
	/* é is C3 A9: its two byte characters */
	EXPECT(t, "\xc3\xa9", 0, 0xC3, 0xA9);
	ck_assert(!tok_add_bos(t));
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(bpe_every_byte_maps_to_its_token)
{
	struct vb b;
	struct tok *t = bpe_tiny(&b, "gpt2");

	for (int i = 0; i < 256; i++) {
		char c = (char)i, buf[4];
		int32_t *ids;
		size_t n;

		ck_assert_int_eq(tok_encode(t, &c, 1, 0, &ids, &n), 0);
		ck_assert_uint_eq(n, 1);
		ck_assert_int_eq(ids[0], i);
		ck_assert_int_eq(tok_piece(t, i, buf, sizeof(buf), 0), 1);
		ck_assert_int_eq((uint8_t)buf[0], i);
		free(ids);
	}
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(bpe_llama3_takes_whole_words_in_vocab)
{
	struct vb b, c;
	struct tok *t = bpe_tiny(&b, "llama3");
	struct tok *g = bpe_tiny(&c, "gpt2");

	/* "Ġxyz" is a token without a merge path: llama3 ignores merges */
	EXPECT(t, " xyz", 0, 265);
	EXPECT(g, " xyz", 0, ' ', 'x', 'y', 'z');
	ck_assert(tok_add_bos(t)); /* llama3's default, no BOS id set */
	ck_assert_str_eq(tok_pre_name(t), "llama3");
	tok_free(t);
	tok_free(g);
	vb_free(&b);
	vb_free(&c);
}
END_TEST

START_TEST(bpe_special_tokens)
{
	struct vb b;
	struct tok *t = bpe_tiny(&b, "gpt2");
	int32_t *ids = NULL;
	size_t n = 0;

	EXPECT(t, "the<|endoftext|> the", TOK_PARSE_SPECIAL, 't', 257, 266,
	        258);
	/* not parsed: 13 byte tokens ("<|", "endoftext", "|>": no merges) */
	ck_assert_int_eq(tok_encode(t, "<|endoftext|>", 13, 0, &ids, &n), 0);
	ck_assert_uint_eq(n, 13);
	for (size_t i = 0; i < n; i++)
		ck_assert_int_eq(ids[i], (uint8_t)"<|endoftext|>"[i]);
	free(ids);
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(bpe_round_trips)
{
	static const char *const pres[] = { "gpt2", "llama3", "qwen2",
		"default", "deepseek-llm", "deepseek-coder", "falcon",
		"starcoder", "refact", "command-r", "dbrx", "smaug-bpe",
		"olmo", "llama-bpe" };
	struct vb b;

	for (size_t p = 0; p < sizeof(pres) / sizeof(pres[0]); p++) {
		struct tok *t = bpe_tiny(&b, pres[p]);

		for (size_t i = 0; i < sizeof(rt_texts) / sizeof(rt_texts[0]);
		        i++)
			roundtrip(t, rt_texts[i], strlen(rt_texts[i]), 0);
		tok_free(t);
		vb_free(&b);
	}
}
END_TEST

START_TEST(bpe_unknown_pre_falls_back_to_gpt2)
{
	struct vb b;
	struct tok *t = bpe_tiny(&b, "no-such-pre");

	ck_assert_str_eq(tok_pre_name(t), "gpt2");
	tok_free(t);
	vb_free(&b);
	t = bpe_tiny(&b, NULL);
	ck_assert_str_eq(tok_pre_name(t), "default");
	tok_free(t);
	vb_free(&b);
}
END_TEST

/* Checks the pre-tokenizer splits of text: want is a list of pieces
 * separated by '|' ('|' itself does not occur in the texts). */
static void
expect_split(const struct tok *t, const char *text, const char *want)
{
	size_t *sp = NULL, n = 0;
	char got[512] = "";

	ck_assert_int_eq(tok_bpe_split(t, text, strlen(text), &sp, &n), 0);
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			strcat(got, "|");
		strncat(got, text + sp[2 * i], sp[2 * i + 1]);
	}
	ck_assert_msg(strcmp(got, want) == 0, "%s split of '%s': got '%s', "
	        "want '%s'", tok_pre_name(t), text, got, want);
	free(sp);
}

START_TEST(gpt2_pretokenizer_splits)
{
	struct vb b;
	struct tok *t = bpe_tiny(&b, "gpt2");

	expect_split(t, "I'm here", "I|'m| here");
	expect_split(t, "Don't you'll we've they're", "Don|'t| you|'ll| we|'ve|"
	        " they|'re");
	/* lowercase contractions only: 'S is a symbol, then a letter */
	expect_split(t, "HE'S", "HE|'|S");
	/* digits in one run */
	expect_split(t, "12345 apples", "12345| apples");
	/* a run of spaces leaves the last one to the next word */
	expect_split(t, "hello   world", "hello|  | world");
	/* a newline before a letter matches nothing: a gap of its own */
	expect_split(t, "hi!\n\nok", "hi|!|\n|\n|ok");
	expect_split(t, "a\tb", "a|\t|b");
	expect_split(t, "$100 + x", "$|100| +| x");
	expect_split(t, "trailing  ", "trailing|  ");
	expect_split(t, "h\xc3\xa9llo w\xc3\xb6rld", "h\xc3\xa9llo| w\xc3\xb6rld");
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(llama3_pretokenizer_splits)
{
	struct vb b;
	struct tok *t = bpe_tiny(&b, "llama3");

	expect_split(t, "I'm here", "I|'m| here");
	/* contractions in any case */
	expect_split(t, "HE'S YOU'LL", "HE|'S| YOU|'LL");
	/* digits in groups of 1-3 */
	expect_split(t, "1234567", "123|456|7");
	expect_split(t, "12345 apples", "123|45| apples");
	expect_split(t, "hello   world", "hello|  | world");
	/* symbols take their trailing newlines */
	expect_split(t, "hi!\n\nok", "hi|!\n\n|ok");
	/* whitespace up to a newline, then one space before the word */
	expect_split(t, "x  \n  y", "x|  \n| | y");
	/* one non-letter may lead a word */
	expect_split(t, "$abc ,hello", "$abc| ,|hello");
	expect_split(t, "$100", "$|100");
	expect_split(t, "a\nb", "a|\n|b");
	expect_split(t, "trailing  ", "trailing|  ");
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(other_pretokenizer_splits)
{
	struct vb b;
	struct tok *t;

	/* default: punctuation first, then gpt2, then digit runs, then
	 * groups of three digits; unmatched gaps are pieces too */
	t = bpe_tiny(&b, "default");
	expect_split(t, "Hello, world! 123", "Hello|,| world|!| |123");
	tok_free(t);
	vb_free(&b);
	/* qwen2: one digit at a time */
	t = bpe_tiny(&b, "qwen2");
	expect_split(t, "x1234", "x|1|2|3|4");
	tok_free(t);
	vb_free(&b);
	/* starcoder: digits split first */
	t = bpe_tiny(&b, "starcoder");
	expect_split(t, "ab 12", "ab| |1|2");
	tok_free(t);
	vb_free(&b);
	/* deepseek-coder: newlines alone, letters with one leading space */
	t = bpe_tiny(&b, "deepseek-coder");
	expect_split(t, "ab\ncd 12", "ab|\n|cd| |1|2");
	tok_free(t);
	vb_free(&b);
	/* deepseek-llm: trailing whitespace at the end of a piece */
	t = bpe_tiny(&b, "deepseek-llm");
	expect_split(t, "Hi there  ", "Hi| there|  ");
	tok_free(t);
	vb_free(&b);
}
END_TEST

/* ---- decoding ---- */

START_TEST(pieces_and_decode)
{
	struct vb b, c;
	struct tok *t = spm_tiny(&b), *u = bpe_tiny(&c, "gpt2");
	static const int32_t ids[] = { 1, 270, 267, 263, 275, 262, 266, 2 };
	char buf[16], *out = NULL;
	size_t n;

	/* ▁he -> " he"; a byte token -> its byte */
	ck_assert_int_eq(tok_piece(t, 270, buf, sizeof(buf), 0), 3);
	ck_assert_str_eq(buf, " he");
	ck_assert_int_eq(tok_piece(t, B(0x0A), buf, sizeof(buf), 0), 1);
	ck_assert_str_eq(buf, "\n");
	/* truncation: the full length is returned */
	ck_assert_int_eq(tok_piece(t, 275, buf, 2, 0), 4);
	ck_assert_int_eq(memcmp(buf, " w", 2), 0);
	/* leading space removed after BOS, control tokens hidden */
	ck_assert_int_eq(tok_decode(t, ids, 8, 0, &out, &n), 0);
	ck_assert_str_eq(out, "hello world");
	ck_assert_uint_eq(n, 11);
	free(out);
	ck_assert_int_eq(tok_decode(t, ids, 8, TOK_DECODE_SPECIAL, &out, NULL),
	        0);
	ck_assert_str_eq(out, "<s>hello world</s>");
	free(out);
	/* without BOS the first piece is the sequence start */
	ck_assert_int_eq(tok_decode(t, ids + 1, 3, 0, &out, NULL), 0);
	ck_assert_str_eq(out, "hello");
	free(out);
	ck_assert_int_eq(tok_decode(t, NULL, 0, 0, &out, &n), 0);
	ck_assert_str_eq(out, "");
	free(out);
	/* byte-level: Ġthe -> " the", the Ġ byte character -> a space */
	ck_assert_int_eq(tok_piece(u, 258, buf, sizeof(buf), 0), 4);
	ck_assert_str_eq(buf, " the");
	ck_assert_int_eq(tok_piece(u, ' ', buf, sizeof(buf), 0), 1);
	ck_assert_str_eq(buf, " ");
	ck_assert_int_eq(tok_piece(u, 0xC3, buf, sizeof(buf), 0), 1);
	ck_assert_int_eq((uint8_t)buf[0], 0xC3);
	tok_free(t);
	tok_free(u);
	vb_free(&b);
	vb_free(&c);
}
END_TEST

START_TEST(invalid_ids_are_rejected)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);
	struct tok_stream s;
	const int32_t bad1[] = { 1, 281 }, bad2[] = { -1 };
	char buf[8], *out = (char *)0x1;
	const char *txt;
	size_t n;

	ck_assert_int_eq(tok_piece(t, 281, buf, sizeof(buf), 0), EPMOE_EINVAL);
	ck_assert_int_eq(tok_piece(t, -1, buf, sizeof(buf), 0), EPMOE_EINVAL);
	ck_assert_int_eq(tok_decode(t, bad1, 2, 0, &out, &n), EPMOE_EINVAL);
	ck_assert_int_eq(tok_decode(t, bad2, 1, 0, &out, &n), EPMOE_EINVAL);
	ck_assert_ptr_eq(out, (char *)0x1); /* untouched on error */
	ck_assert_int_eq(tok_token_type(t, 281), EPMOE_EINVAL);
	ck_assert_ptr_null(tok_token_text(t, 281, NULL));
	ck_assert_int_eq(tok_stream_init(&s, t, 0), 0);
	ck_assert_int_eq(tok_stream_push(&s, 1000, &txt, &n), EPMOE_EINVAL);
	ck_assert_int_eq(tok_stream_push(&s, INT32_MIN, &txt, &n),
	        EPMOE_EINVAL);
	tok_stream_fini(&s);
	tok_free(t);
	vb_free(&b);
}
END_TEST

/* Pushes ids into s and returns the concatenated output (static). */
static const char *
stream_all(struct tok_stream *s, const int32_t *ids, size_t n, bool flush,
        size_t *n_nonempty)
{
	static char acc[256];
	const char *txt;
	size_t len;

	acc[0] = '\0';
	*n_nonempty = 0;
	for (size_t i = 0; i < n; i++) {
		ck_assert_int_eq(tok_stream_push(s, ids[i], &txt, &len), 0);
		ck_assert_uint_eq(strlen(txt), len);
		*n_nonempty += len > 0;
		strcat(acc, txt);
	}
	if (flush) {
		ck_assert_int_eq(tok_stream_flush(s, &txt, &len), 0);
		*n_nonempty += len > 0;
		strcat(acc, txt);
	}
	return acc;
}

START_TEST(stream_holds_back_split_characters)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);
	struct tok_stream s;
	static const int32_t emoji[] = { B(0xF0), B(0x9F), B(0x98), B(0x80) };
	const char *txt;
	size_t len;

	ck_assert_int_eq(tok_stream_init(&s, t, 0), 0);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(tok_stream_push(&s, emoji[i], &txt, &len), 0);
		ck_assert_uint_eq(len, 0);
		ck_assert_str_eq(txt, "");
	}
	ck_assert_int_eq(tok_stream_push(&s, emoji[3], &txt, &len), 0);
	ck_assert_uint_eq(len, 4);
	ck_assert_str_eq(txt, "\xf0\x9f\x98\x80");
	ck_assert_int_eq(tok_stream_flush(&s, &txt, &len), 0);
	ck_assert_uint_eq(len, 0);
	tok_stream_fini(&s);
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(stream_strips_the_space_after_bos_only)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);
	struct tok_stream s;
	static const int32_t seq[] = { 1, 270, 267, 263, 275 };
	size_t ne;

	ck_assert_int_eq(tok_stream_init(&s, t, 0), 0);
	ck_assert_str_eq(stream_all(&s, seq, 5, true, &ne), "hello wor");
	/* a continuation (no BOS): the space is real */
	ck_assert_str_eq(stream_all(&s, seq + 1, 4, true, &ne), " hello wor");
	tok_stream_fini(&s);
	ck_assert_int_eq(tok_stream_init(&s, t, TOK_STREAM_SEQ_START), 0);
	ck_assert_str_eq(stream_all(&s, seq + 1, 4, true, &ne), "hello wor");
	/* after a flush the stream starts a sequence again */
	ck_assert_str_eq(stream_all(&s, seq + 1, 2, true, &ne), "hell");
	tok_stream_fini(&s);
	ck_assert_int_eq(tok_stream_init(&s, t, TOK_DECODE_SPECIAL), 0);
	ck_assert_str_eq(stream_all(&s, seq, 3, true, &ne), "<s>hell");
	tok_stream_fini(&s);
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(stream_replaces_invalid_bytes)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);
	struct tok_stream s;
	/* FF can never start a character; F0 followed by 'a' is cut short;
	 * a lone continuation byte; a dangling lead byte at the end */
	static const int32_t seq[] = { B(0xFF), B(0xF0), B('a'), B(0x80),
		B(0xE4), B(0xB8), B(0xAD), B(0xE4) };
	size_t ne;

	ck_assert_int_eq(tok_stream_init(&s, t, 0), 0);
	ck_assert_str_eq(stream_all(&s, seq, 8, true, &ne),
	        "\xef\xbf\xbd\xef\xbf\xbd" "a\xef\xbf\xbd\xe4\xb8\xad"
	        "\xef\xbf\xbd");
	tok_stream_fini(&s);
	tok_free(t);
	vb_free(&b);
}
END_TEST

START_TEST(stream_matches_decode_on_every_text)
{
	struct vb b;
	struct tok *t = spm_tiny(&b);
	struct tok_stream s;

	ck_assert_int_eq(tok_stream_init(&s, t, 0), 0);
	for (size_t i = 0; i < sizeof(rt_texts) / sizeof(rt_texts[0]); i++) {
		int32_t *ids;
		size_t n, ne;

		ck_assert_int_eq(tok_encode(t, rt_texts[i], strlen(rt_texts[i]),
		        TOK_ADD_SPECIAL, &ids, &n), 0);
		ck_assert_str_eq(stream_all(&s, ids, n, true, &ne), rt_texts[i]);
		free(ids);
	}
	tok_stream_fini(&s);
	tok_free(t);
	vb_free(&b);
}
END_TEST

/* ---- validation ---- */

START_TEST(bad_vocabularies_are_rejected)
{
	struct tok_vocab v;
	struct tok *t = NULL;
	const char *dup[] = { "<unk>", "a", "b", "a" };
	char err[128] = "";

	tok_vocab_init(&v, TOK_MODEL_SPM);
	v.n_tokens = 4;
	v.tokens = dup;
	ck_assert_int_eq(tok_new_from_vocab(&t, &v, err, sizeof(err)),
	        EPMOE_EFORMAT);
	ck_assert_ptr_nonnull(strstr(err, "duplicate"));
	ck_assert_ptr_null(t);
	v.n_tokens = 3;
	v.bos_id = 3;
	ck_assert_int_eq(tok_new_from_vocab(&t, &v, err, sizeof(err)),
	        EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "BOS"));
	v.bos_id = TOK_ID_NONE;
	v.n_tokens = 0;
	ck_assert_int_eq(tok_new_from_vocab(&t, &v, err, sizeof(err)),
	        EPMOE_EINVAL);
	ck_assert_ptr_null(t);
}
END_TEST


/* ---- GGUF metadata ---- */

static const char *const ref_models[] = { "mixtral-tiny-f32",
	"qwen2moe-tiny-f32", "olmoe-tiny-f32" };
#define REF_TEXT "Hello world, the quick brown fox"

static char *
read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	ck_assert_msg(f != NULL, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	if (len)
		*len = (size_t)n;
	return buf;
}

static struct tok *
load_ref(const char *name, struct gguf_file **gout)
{
	const char *dir = getenv("EPMOE_TESTDATA");
	char path[1024], err[256] = "";
	struct gguf_file *g = NULL;
	struct tok *t = NULL;
	int rc;

	ck_assert_msg(dir != NULL, "EPMOE_TESTDATA is not set");
	snprintf(path, sizeof(path), "%s/%s.gguf", dir, name);
	rc = gguf_open(&g, path, err, sizeof(err));
	ck_assert_msg(rc == 0, "gguf_open: %s", err);
	rc = tok_load(&t, g, err, sizeof(err));
	ck_assert_msg(rc == 0, "tok_load %s: %s", name, err);
	if (gout)
		*gout = g;
	else
		gguf_close(g);
	return t;
}

/* Parses comma-separated ids from s (up to the end of the line). */
static size_t
parse_ids(const char *s, int32_t *ids, size_t cap)
{
	size_t n = 0;

	while (*s && *s != '\n' && n < cap) {
		char *end;

		ids[n++] = (int32_t)strtol(s, &end, 10);
		s = *end == ',' ? end + 1 : end;
	}
	return n;
}

START_TEST(testdata_ids_match_llama_cpp)
{
	for (size_t m = 0; m < sizeof(ref_models) / sizeof(ref_models[0]); m++) {
		const char *dir = getenv("EPMOE_TESTDATA");
		char path[1024], *want_txt, *out;
		int32_t want[64], *ids;
		size_t n_want, n;
		struct tok *t = load_ref(ref_models[m], NULL);

		snprintf(path, sizeof(path), "%s/%s.ids.txt", dir, ref_models[m]);
		want_txt = read_file(path, NULL);
		n_want = parse_ids(want_txt, want, 64);
		ck_assert_uint_gt(n_want, 2);
		ck_assert_int_eq(tok_encode(t, REF_TEXT, strlen(REF_TEXT),
		        TOK_ADD_SPECIAL, &ids, &n), 0);
		ck_assert_msg(n == n_want, "%s: %zu ids, want %zu", ref_models[m],
		        n, n_want);
		for (size_t i = 0; i < n; i++)
			ck_assert_msg(ids[i] == want[i], "%s: id %zu is %d, want %d",
			        ref_models[m], i, ids[i], want[i]);
		ck_assert_int_eq(tok_decode(t, ids, n, 0, &out, NULL), 0);
		ck_assert_str_eq(out, REF_TEXT);
		ck_assert_int_eq(tok_model(t), TOK_MODEL_SPM);
		ck_assert_uint_eq(tok_n_vocab(t), 512);
		ck_assert_int_eq(tok_bos(t), 1);
		ck_assert_int_eq(tok_eos(t), 2);
		ck_assert_int_eq(tok_unk(t), 0);
		ck_assert(tok_add_bos(t) && !tok_add_eos(t));
		ck_assert(tok_add_space_prefix(t));
		ck_assert(tok_is_eog(t, 2));
		free(out);
		free(ids);
		free(want_txt);
		tok_free(t);
	}
}
END_TEST

/* NAME.gen.txt line 2 holds llama.cpp's pieces of the ids on line 1, each
 * in brackets. */
START_TEST(testdata_pieces_match_llama_cpp)
{
	for (size_t m = 0; m < sizeof(ref_models) / sizeof(ref_models[0]); m++) {
		const char *dir = getenv("EPMOE_TESTDATA");
		char path[1024], *gen, *line2, got[1024] = "";
		int32_t ids[64];
		size_t n, o = 0;
		struct tok *t = load_ref(ref_models[m], NULL);

		snprintf(path, sizeof(path), "%s/%s.gen.txt", dir, ref_models[m]);
		gen = read_file(path, NULL);
		n = parse_ids(gen, ids, 64);
		ck_assert_uint_eq(n, 16);
		line2 = strchr(gen, '\n') + 1;
		*strchr(line2, '\n') = '\0';
		for (size_t i = 0; i < n; i++) {
			int l;

			got[o++] = '[';
			l = tok_piece(t, ids[i], got + o, sizeof(got) - o - 2, 0);
			ck_assert_int_ge(l, 0);
			o += (size_t)l;
			got[o++] = ']';
		}
		got[o] = '\0';
		ck_assert_msg(strcmp(got, line2) == 0, "%s: pieces '%s', want '%s'",
		        ref_models[m], got, line2);
		free(gen);
		tok_free(t);
	}
}
END_TEST

START_TEST(testdata_round_trips)
{
	struct tok *t = load_ref("mixtral-tiny-f32", NULL);

	for (size_t i = 0; i < sizeof(rt_texts) / sizeof(rt_texts[0]); i++)
		roundtrip(t, rt_texts[i], strlen(rt_texts[i]), TOK_ADD_SPECIAL);
	/* <s> as text is only BOS when special tokens are parsed */
	EXPECT(t, "<s>", TOK_PARSE_SPECIAL, 1);
	tok_free(t);
}
END_TEST

/* Writes a GGUF file holding the given metadata (set by fill) into a
 * temporary directory and opens it. */
typedef void (*meta_fn)(struct gguf_writer *w);

static struct gguf_file *
meta_file(meta_fn fill)
{
	char dir[] = "/tmp/test_tok.XXXXXX", path[64], err[256] = "";
	struct gguf_writer *w;
	struct gguf_file *g = NULL;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/m.gguf", dir);
	ck_assert_int_eq(gguf_writer_new(&w, 3), 0);
	fill(w);
	ck_assert_msg(gguf_writer_write(w, path, err, sizeof(err)) == 0, "%s",
	        err);
	gguf_writer_free(w);
	ck_assert_msg(gguf_open(&g, path, err, sizeof(err)) == 0, "%s", err);
	unlink(path);
	rmdir(dir);
	return g;
}

static const char *const m_toks[] = { "<unk>", "<s>", "</s>",
	"<|im_end|>", "\xe2\x96\x81", "a", "b", "ab", "\xe2\x96\x81" "ab" };
static const float m_scores[] = { 0, 0, 0, 0, -1, -2, -3, -4, -5 };
static const int32_t m_types[] = { 2, 3, 3, 3, 1, 1, 1, 1, 1 };
#define M_N 9

static void
m_tokens(struct gguf_writer *w)
{
	ck_assert_int_eq(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens",
	        m_toks, M_N), 0);
}

static void
m_good(struct gguf_writer *w)
{
	gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
	m_tokens(w);
	gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32,
	        m_scores, M_N);
	gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32,
	        m_types, M_N);
	/* out of range: ignored, the default (1) stays */
	gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 99);
	gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", true);
}

static void
m_no_model(struct gguf_writer *w)
{
	m_tokens(w);
}

static void
m_bert(struct gguf_writer *w)
{
	gguf_writer_set_str(w, "tokenizer.ggml.model", "bert");
	m_tokens(w);
}

static void
m_no_tokens(struct gguf_writer *w)
{
	gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
}

static void
m_short_scores(struct gguf_writer *w)
{
	gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
	m_tokens(w);
	gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32,
	        m_scores, M_N - 1);
}

static void
m_float_types(struct gguf_writer *w)
{
	gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
	m_tokens(w);
	gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_FLOAT32,
	        m_scores, M_N);
}

static void
m_gpt2_no_merges(struct gguf_writer *w)
{
	gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
	m_tokens(w);
}

static void
m_bad_flag(struct gguf_writer *w)
{
	gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
	m_tokens(w);
	gguf_writer_set_u32(w, "tokenizer.ggml.add_bos_token", 1);
}

static void
m_gpt2(struct gguf_writer *w)
{
	const char *toks[258], *merges[] = { "\xc4\xa0 t", "h e",
		"\xc4\xa0t he" };
	char bytes[256][3];

	for (int i = 0; i < 256; i++) {
		byte_char(i, bytes[i]);
		toks[i] = bytes[i];
	}
	toks[256] = "\xc4\xa0the";
	toks[257] = "<|endoftext|>";
	gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
	gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2");
	gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 258);
	gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, 3);
	gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 257);
}

static void
expect_load_error(meta_fn fill, int want_rc, const char *want_msg)
{
	struct gguf_file *g = meta_file(fill);
	struct tok *t = NULL;
	char err[256] = "";

	ck_assert_int_eq(tok_load(&t, g, err, sizeof(err)), want_rc);
	ck_assert_ptr_null(t);
	ck_assert_msg(strstr(err, want_msg) != NULL, "error '%s' does not "
	        "name '%s'", err, want_msg);
	gguf_close(g);
}

START_TEST(metadata_errors_name_the_key)
{
	expect_load_error(m_no_model, EPMOE_ENOENT, "tokenizer.ggml.model");
	expect_load_error(m_bert, EPMOE_ENOTSUP, "bert");
	expect_load_error(m_no_tokens, EPMOE_ENOENT, "tokenizer.ggml.tokens");
	expect_load_error(m_short_scores, EPMOE_EFORMAT, "tokenizer.ggml.scores");
	expect_load_error(m_float_types, EPMOE_EFORMAT,
	        "tokenizer.ggml.token_type");
	expect_load_error(m_gpt2_no_merges, EPMOE_ENOENT,
	        "tokenizer.ggml.merges");
	expect_load_error(m_bad_flag, EPMOE_EFORMAT,
	        "tokenizer.ggml.add_bos_token");
}
END_TEST

START_TEST(metadata_defaults_and_eot_by_text)
{
	struct gguf_file *g = meta_file(m_good);
	struct tok *t = NULL;
	char err[256] = "";

	ck_assert_msg(tok_load(&t, g, err, sizeof(err)) == 0, "%s", err);
	gguf_close(g); /* the tokenizer keeps nothing of the file */
	ck_assert_int_eq(tok_bos(t), 1);
	ck_assert_int_eq(tok_eos(t), 2);
	ck_assert_int_eq(tok_unk(t), 0);
	ck_assert_int_eq(tok_eot(t), 3); /* <|im_end|> */
	ck_assert(tok_is_eog(t, 3));
	ck_assert(tok_add_bos(t) && tok_add_eos(t));
	/* "▁ab ab": ▁ab (-5)... a b merge to ab (-4) first, then ▁+ab */
	EXPECT(t, "ab ab", TOK_ADD_SPECIAL, 1, 8, 8, 2);
	tok_free(t);

	g = meta_file(m_gpt2);
	ck_assert_msg(tok_load(&t, g, err, sizeof(err)) == 0, "%s", err);
	gguf_close(g);
	ck_assert_str_eq(tok_pre_name(t), "qwen2");
	ck_assert_int_eq(tok_bos(t), TOK_ID_NONE);
	ck_assert(!tok_add_bos(t));
	ck_assert_int_eq(tok_eot(t), TOK_ID_NONE); /* <|endoftext|> is EOS */
	EXPECT(t, "the the", TOK_ADD_SPECIAL, 't', 'h', 'e', 256);
	tok_free(t);
}
END_TEST

/* Runs cmd in a shell; returns its stdout (static) and exit status. */
static const char *
run_cmd(const char *cmd, int *status)
{
	static char out[4096];
	FILE *p = popen(cmd, "r");
	size_t n;

	ck_assert_ptr_nonnull(p);
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	*status = pclose(p);
	return out;
}

START_TEST(cli_tokenize_prints_ids_and_pieces)
{
	const char *bin = getenv("EPMOE_BIN"), *dir = getenv("EPMOE_TESTDATA");
	char cmd[2048], path[1024], *want;
	const char *out;
	int st;

	ck_assert_msg(bin && dir, "EPMOE_BIN and EPMOE_TESTDATA must be set");
	snprintf(path, sizeof(path), "%s/mixtral-tiny-f32.ids.txt", dir);
	want = read_file(path, NULL);
	snprintf(cmd, sizeof(cmd), "'%s/epmoe' tokenize --model "
	         "'%s/mixtral-tiny-f32.gguf' '" REF_TEXT "'", bin, dir);
	out = run_cmd(cmd, &st);
	ck_assert_int_eq(st, 0);
	ck_assert_int_eq(strncmp(out, want, strcspn(want, "\n")), 0);
	ck_assert_int_eq(out[strcspn(want, "\n")], '\n');
	free(want);
	/* --no-bos --pieces: "▁hi" is a piece (431); "\n" is byte 0x0A (13) */
	snprintf(cmd, sizeof(cmd), "printf 'hi\\n' | '%s/epmoe' tokenize "
	         "--no-bos --pieces -m '%s/mixtral-tiny-f32.gguf' -f -", bin,
	         dir);
	out = run_cmd(cmd, &st);
	ck_assert_int_eq(st, 0);
	ck_assert_str_eq(out, "431,13\n431\t hi\n13\t\\n\n");
	snprintf(cmd, sizeof(cmd), "'%s/epmoe' tokenize --special -m "
	         "'%s/mixtral-tiny-f32.gguf' '</s>' 2>&1", bin, dir);
	out = run_cmd(cmd, &st);
	ck_assert_int_eq(st, 0);
	ck_assert_str_eq(out, "1,2\n");
	snprintf(cmd, sizeof(cmd), "'%s/epmoe' tokenize -m /nonexistent.gguf "
	         "x 2>/dev/null", bin);
	run_cmd(cmd, &st);
	ck_assert_int_eq(WEXITSTATUS(st), 1);
	snprintf(cmd, sizeof(cmd), "'%s/epmoe' tokenize x 2>/dev/null", bin);
	run_cmd(cmd, &st);
	ck_assert_int_eq(WEXITSTATUS(st), 2);
}
END_TEST

/* ---- size ---- */

/* Not a timed assert: prints the rate, checks the round trip. */
START_TEST(large_text_encodes_quickly)
{
	static const char *const words[] = { "hello", "world", "the", "quick",
		"caf\xc3\xa9", "\xe4\xb8\xad\xe6\x96\x87", "aaaa", "in", "x1",
		"\xf0\x9f\x98\x80", ",", ".\n", "  ", "he's", "12345" };
	const char *san = getenv("SAN");
	size_t size = (san && strcmp(san, "1") == 0) ? (1u << 20) : (4u << 20);
	char *text = malloc(size + 32);
	size_t len = 0;
	uint32_t rng = 12345;
	struct vb b, c;
	struct tok *tk[2];

	tk[0] = spm_tiny(&b);
	tk[1] = bpe_tiny(&c, "llama3");
	while (len < size) {
		const char *w;

		rng = rng * 1103515245u + 12345u;
		w = words[(rng >> 16) % (sizeof(words) / sizeof(words[0]))];
		memcpy(text + len, w, strlen(w));
		len += strlen(w);
		text[len++] = ' ';
	}
	for (int k = 0; k < 2; k++) {
		struct timespec t0, t1;
		int32_t *ids;
		size_t n;
		double dt;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		ck_assert_int_eq(tok_encode(tk[k], text, len, 0, &ids, &n), 0);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		dt = (double)(t1.tv_sec - t0.tv_sec) +
		        (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
		printf("tok: %s encoded %.1f MB into %zu ids in %.3f s "
		       "(%.1f MB/s)\n", k == 0 ? "spm" : "bpe/llama3",
		       (double)len / 1e6, n, dt, (double)len / 1e6 / dt);
		{
			char *out;
			size_t out_len;

			ck_assert_int_eq(tok_decode(tk[k], ids, n, 0, &out,
			        &out_len), 0);
			/* SPM: the prefix space is removed again */
			ck_assert_uint_eq(out_len, len);
			ck_assert_int_eq(memcmp(out, text, len), 0);
			free(out);
		}
		free(ids);
	}
	tok_free(tk[0]);
	tok_free(tk[1]);
	vb_free(&b);
	vb_free(&c);
	free(text);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("tok");
	TCase *spm = tcase_create("spm"), *bpe = tcase_create("bpe");
	TCase *dec = tcase_create("decode"), *big = tcase_create("size");
	TCase *gg = tcase_create("gguf");

	tcase_add_test(spm, spm_merges_by_highest_score);
	tcase_add_test(spm, spm_ties_go_to_the_leftmost_pair);
	tcase_add_test(spm, spm_space_prefix_and_spaces_become_u2581);
	tcase_add_test(spm, spm_without_space_prefix);
	tcase_add_test(spm, spm_byte_fallback_for_missing_characters);
	tcase_add_test(spm, spm_unk_only_when_bytes_are_missing);
	tcase_add_test(spm, spm_round_trips);
	tcase_add_test(spm, invalid_utf8_is_kept_as_bytes);
	tcase_add_test(spm, special_tokens_parsed_only_when_asked);
	tcase_add_test(spm, special_tokens_longest_match_first);
	tcase_add_test(spm, user_defined_tokens_always_match);
	tcase_add_test(spm, bos_eos_follow_flags_and_eog);
	tcase_add_test(spm, bad_vocabularies_are_rejected);
	tcase_add_test(bpe, bpe_merges_by_rank);
	tcase_add_test(bpe, bpe_every_byte_maps_to_its_token);
	tcase_add_test(bpe, bpe_llama3_takes_whole_words_in_vocab);
	tcase_add_test(bpe, bpe_special_tokens);
	tcase_add_test(bpe, bpe_round_trips);
	tcase_add_test(bpe, bpe_unknown_pre_falls_back_to_gpt2);
	tcase_add_test(bpe, gpt2_pretokenizer_splits);
	tcase_add_test(bpe, llama3_pretokenizer_splits);
	tcase_add_test(bpe, other_pretokenizer_splits);
	tcase_add_test(dec, pieces_and_decode);
	tcase_add_test(dec, invalid_ids_are_rejected);
	tcase_add_test(dec, stream_holds_back_split_characters);
	tcase_add_test(dec, stream_strips_the_space_after_bos_only);
	tcase_add_test(dec, stream_replaces_invalid_bytes);
	tcase_add_test(dec, stream_matches_decode_on_every_text);
	tcase_add_test(gg, testdata_ids_match_llama_cpp);
	tcase_add_test(gg, testdata_pieces_match_llama_cpp);
	tcase_add_test(gg, testdata_round_trips);
	tcase_add_test(gg, metadata_errors_name_the_key);
	tcase_add_test(gg, metadata_defaults_and_eot_by_text);
	tcase_add_test(gg, cli_tokenize_prints_ids_and_pieces);
	tcase_add_test(big, large_text_encodes_quickly);
	suite_add_tcase(s, spm);
	suite_add_tcase(s, bpe);
	suite_add_tcase(s, dec);
	suite_add_tcase(s, gg);
	suite_add_tcase(s, big);
	return tu_run(s);
}
