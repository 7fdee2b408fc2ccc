/* Internals shared by tok.c (vocabulary, special tokens, decoding),
 * tok_spm.c (SentencePiece merges by score) and tok_bpe.c (byte-level BPE:
 * pre-tokenizer regexes and merges by rank).  Not part of the public API. */
#ifndef EPMOE_TOK_INT_H
#define EPMOE_TOK_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strmap.h"
#include "tok.h"

/* A growable array of ids. */
struct tok_ivec {
	int32_t *v;
	size_t n, cap;
};

int tok_ivec_push(struct tok_ivec *iv, int32_t id);

/* Candidate merge of two adjacent symbols.  key: larger merges first (SPM:
 * the score of the merged piece; BPE: minus the merge rank); ties go to the
 * smaller left index, as in llama.cpp's comparators. */
struct tok_bigram {
	double key;
	int32_t left, right;
	uint32_t size; /* bytes of the merged text when queued (staleness) */
};

struct tok_heap {
	struct tok_bigram *v;
	size_t n, cap;
};

int tok_heap_push(struct tok_heap *h, const struct tok_bigram *b);
/* Pops the best entry into *b; false when empty. */
bool tok_heap_pop(struct tok_heap *h, struct tok_bigram *b);

/* A run of symbols, linked as a list while merging.  Symbols are
 * contiguous slices of one buffer, so two neighbours' texts are adjacent. */
struct tok_sym {
	int32_t prev, next;
	uint32_t start, n; /* n == 0: merged into its left neighbour */
};

#define TOK_MAX_RE 6

struct tok_pre_def;
typedef struct pcre2_real_code_8 tok_pcre2_code;

struct tok {
	enum tok_model model;
	uint32_t n_vocab;
	char *text_arena;    /* every token text, each NUL-terminated */
	size_t *text_off;    /* [n_vocab] */
	uint32_t *text_len;  /* [n_vocab] */
	float *scores;       /* [n_vocab] */
	uint8_t *types;      /* [n_vocab] enum tok_type */
	struct strmap vocab;  /* text -> id */
	size_t max_token_len;
	int32_t byte_id[256];  /* byte fallback token of each byte, or -1 */

	/* Tokens matched literally before tokenizing (control, unknown and
	 * user-defined), longest first. */
	int32_t *specials;
	uint32_t n_specials;
	uint8_t special_first[32]; /* bitset of their first bytes */
	int32_t *special_slot;     /* [n_vocab] index in specials, or -1 */
	uint32_t *special_lens;    /* distinct lengths, descending */
	uint32_t n_special_lens;

	int32_t bos, eos, unk, pad, eot, eom;
	bool add_bos, add_eos, add_space_prefix;

	/* Decoded bytes of each token, rendered as with TOK_DECODE_SPECIAL;
	 * piece_hidden[i] set when the piece is empty without that flag. */
	char *piece_arena;
	size_t *piece_off;
	uint32_t *piece_len;
	uint8_t *piece_hidden;
	size_t max_piece_len;

	/* BPE */
	const struct tok_pre_def *pre;
	bool ignore_merges;  /* a pre-tokenized word in the vocabulary is one
	                        token even without a merge path (llama3) */
	char *merge_arena;
	struct strmap merges; /* "left right" -> rank */
	size_t max_merge_len;
	tok_pcre2_code *re[TOK_MAX_RE];
	int n_re;
};

static inline const char *
tok_text(const struct tok *t, int32_t id)
{
	return t->text_arena + t->text_off[id];
}

/* tok_spm.c: appends the tokens of one text fragment (spaces are escaped
 * here; prefix adds the leading "▁"). */
int tok_spm_encode(const struct tok *t, const char *s, size_t len,
        bool prefix, struct tok_ivec *out);

/* tok_bpe.c */
struct tok_bpe_ctx;
/* Looks up a pre-tokenizer by name (NULL: "default"); unknown names give
 * NULL. */
const struct tok_pre_def *tok_bpe_pre_find(const char *name);
const struct tok_pre_def *tok_bpe_pre_gpt2(void);
const char *tok_bpe_pre_name(const struct tok_pre_def *p);
bool tok_bpe_pre_ignore_merges(const struct tok_pre_def *p);
bool tok_bpe_pre_add_bos(const struct tok_pre_def *p);
/* Compiles t->pre's regexes into t->re. */
int tok_bpe_compile(struct tok *t, char *err, size_t err_len);
void tok_bpe_free_re(struct tok *t);
/* The byte-level form of byte b (GPT-2's bytes_to_unicode) as UTF-8 into
 * buf (1 or 2 bytes); returns the length. */
size_t tok_bpe_byte_utf8(uint8_t b, char buf[2]);
/* Maps byte-level text back to bytes: each character of the 256-char
 * alphabet becomes its byte; other characters are copied as they are.
 * dst needs len bytes.  Returns the bytes written. */
size_t tok_bpe_unmap(const char *s, size_t len, char *dst);
/* Per-call state (regex match data); free with tok_bpe_ctx_free. */
int tok_bpe_ctx_new(const struct tok *t, struct tok_bpe_ctx **out);
void tok_bpe_ctx_free(struct tok_bpe_ctx *c);
int tok_bpe_encode(const struct tok *t, struct tok_bpe_ctx *c,
        const char *s, size_t len, struct tok_ivec *out);
/* Pre-tokenizer splits of s (for tests): *spans gets pairs (off, len). */
int tok_bpe_split(const struct tok *t, const char *s, size_t len,
        size_t **spans, size_t *n_spans);

#endif
