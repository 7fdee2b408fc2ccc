/* Tokenizers read from GGUF metadata: SentencePiece-style ("llama") and
 * byte-level BPE ("gpt2"), with special/added tokens, detokenization and a
 * streaming UTF-8-safe decoder.
 *
 * The core is built from plain arrays (tok_new_from_vocab); tok_load() is a
 * thin layer that reads the tokenizer.ggml.* metadata of a GGUF file into
 * those arrays.  Encoding reproduces llama.cpp's llm_tokenizer_spm and
 * llm_tokenizer_bpe (see tok_spm.c and tok_bpe.c for the few documented
 * differences).  A struct tok is immutable after construction: encode and
 * decode may run concurrently from several threads on one tokenizer.
 *
 * Invalid UTF-8 in the text to encode never fails: both tokenizers keep the
 * bytes (SentencePiece through its <0xNN> byte tokens, byte-level BPE through
 * its 256 byte symbols), so decode(encode(text)) gives the bytes back.
 */
#ifndef EPMOE_TOK_H
#define EPMOE_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gguf_file;
struct tok;

#define TOK_ID_NONE (-1)

enum tok_model {
	TOK_MODEL_SPM = 1, /* tokenizer.ggml.model = llama */
	TOK_MODEL_BPE = 2  /* tokenizer.ggml.model = gpt2 */
};

/* tokenizer.ggml.token_type values (SentencePiece numbering). */
enum tok_type {
	TOK_TYPE_UNDEFINED = 0,
	TOK_TYPE_NORMAL = 1,
	TOK_TYPE_UNKNOWN = 2,
	TOK_TYPE_CONTROL = 3,
	TOK_TYPE_USER_DEFINED = 4,
	TOK_TYPE_UNUSED = 5,
	TOK_TYPE_BYTE = 6
};

/* Everything a tokenizer is built from.  All pointers are borrowed for the
 * duration of tok_new_from_vocab() only: the tokenizer copies what it keeps. */
struct tok_vocab {
	enum tok_model model;
	uint32_t n_tokens;
	const char *const *tokens; /* [n_tokens] token texts */
	const size_t *token_lens;  /* [n_tokens] byte lengths; NULL: NUL-terminated */
	const float *scores;       /* [n_tokens]; NULL: all 0 */
	const int32_t *types;      /* [n_tokens] enum tok_type; NULL: all normal */
	/* BPE only: merges "left right", rank = index (lower merges first). */
	uint32_t n_merges;
	const char *const *merges;
	const size_t *merge_lens;  /* NULL: NUL-terminated */
	/* BPE pre-tokenizer name (tokenizer.ggml.pre); NULL: "default".  An
	 * unknown name falls back to "gpt2" with a logged warning. */
	const char *pre;
	/* Special ids, TOK_ID_NONE when absent.  Out-of-range ids are
	 * rejected (EPMOE_EINVAL). */
	int32_t bos_id, eos_id, unk_id, pad_id, eot_id, eom_id;
	/* 1 on, 0 off, -1 the model's default: BOS is added by SPM (and by BPE
	 * with the llama3 pre-tokenizer), EOS never; the space prefix is on
	 * for SPM and never used by BPE. */
	int add_bos, add_eos, add_space_prefix;
};

/* Sets v to "nothing given": no tokens, all special ids TOK_ID_NONE, all
 * flags -1 (model default). */
void tok_vocab_init(struct tok_vocab *v, enum tok_model model);

/* Builds a tokenizer from arrays.  Errors (EPMOE_EINVAL for bad arguments,
 * EPMOE_EFORMAT for a bad vocabulary such as a duplicate token or a bad
 * regex, EPMOE_ENOMEM) come with a one-line message in err when err is not
 * NULL.  On success *out is the caller's; release with tok_free(). */
int tok_new_from_vocab(struct tok **out, const struct tok_vocab *v, char *err,
        size_t err_len);

/* Builds a tokenizer from the tokenizer.ggml.* metadata of g (only the
 * metadata: no tensor is read).  Required: tokenizer.ggml.model ("llama" or
 * "gpt2"), tokenizer.ggml.tokens, and for gpt2 tokenizer.ggml.merges.
 * Optional: scores, token_type (each as long as tokens), pre,
 * bos/eos/unknown/padding/eot/eom_token_id, add_bos_token, add_eos_token,
 * add_space_prefix.  Absent ids take llama.cpp's defaults for SPM (BOS 1,
 * EOS 2, UNK 0); an absent EOT is looked up by text (<|eot_id|>,
 * <|im_end|>, <end_of_turn>, ...).  A missing key gives EPMOE_ENOENT, a
 * mistyped or mismatched one EPMOE_EFORMAT, an unsupported model
 * EPMOE_ENOTSUP, each with a message naming the key.  g is borrowed (the
 * tokenizer keeps no pointer into it). */
int tok_load(struct tok **out, const struct gguf_file *g, char *err,
        size_t err_len);

void tok_free(struct tok *t);

/* ---- properties ---- */

enum tok_model tok_model(const struct tok *t);
uint32_t tok_n_vocab(const struct tok *t);
int32_t tok_bos(const struct tok *t); /* TOK_ID_NONE when absent */
int32_t tok_eos(const struct tok *t);
int32_t tok_eot(const struct tok *t);
int32_t tok_eom(const struct tok *t);
int32_t tok_unk(const struct tok *t);
int32_t tok_pad(const struct tok *t);
bool tok_add_bos(const struct tok *t);
bool tok_add_eos(const struct tok *t);
bool tok_add_space_prefix(const struct tok *t);
/* Name of the BPE pre-tokenizer in use ("gpt2", "llama3", ...; "" for
 * SPM). */
const char *tok_pre_name(const struct tok *t);

/* True when id ends generation: EOS, EOT or EOM.  False for any other
 * value, including out-of-range ones. */
bool tok_is_eog(const struct tok *t, int32_t id);

/* enum tok_type of id, or EPMOE_EINVAL if out of range. */
int tok_token_type(const struct tok *t, int32_t id);
/* The vocabulary text of id (e.g. "▁the", "<0x0A>", "Ġthe"), NUL-terminated,
 * borrowed from t; NULL if id is out of range.  *len gets its length when
 * len is not NULL. */
const char *tok_token_text(const struct tok *t, int32_t id, size_t *len);
/* The id whose vocabulary text is exactly s[0..len), or TOK_ID_NONE. */
int32_t tok_find(const struct tok *t, const char *s, size_t len);

/* ---- encoding ---- */

#define TOK_ADD_BOS 1u       /* prepend BOS if the model adds one */
#define TOK_ADD_EOS 2u       /* append EOS if the model adds one */
#define TOK_ADD_SPECIAL (TOK_ADD_BOS | TOK_ADD_EOS)
#define TOK_PARSE_SPECIAL 4u /* control/unknown tokens written literally in
                                the text become their ids */

/* Tokenizes text[0..len) (any bytes; invalid UTF-8 is kept through byte
 * tokens).  User-defined tokens are always matched literally; with
 * TOK_PARSE_SPECIAL control and unknown tokens too, longest first, as
 * llama.cpp does.  On success *ids (free with free(); NULL when *n_ids is 0)
 * and *n_ids are the caller's.  Errors: EPMOE_EINVAL, EPMOE_ENOMEM,
 * EPMOE_EINTERNAL (a regex engine failure). */
int tok_encode(const struct tok *t, const char *text, size_t len,
        unsigned flags, int32_t **ids, size_t *n_ids);

/* ---- decoding ---- */

#define TOK_DECODE_SPECIAL 1u /* render control and unknown tokens as their
                                 text instead of nothing */

/* The bytes of one token: byte tokens give their byte, SentencePiece's "▁"
 * gives a space, byte-level BPE text is mapped back to bytes, user-defined
 * tokens give their text, control/unknown tokens give nothing unless
 * TOK_DECODE_SPECIAL, unused/undefined tokens give nothing.  Writes
 * min(length, cap) bytes to buf, NUL-terminated when length < cap, and
 * returns the full length (like snprintf), or EPMOE_EINVAL for an
 * out-of-range id. */
int tok_piece(const struct tok *t, int32_t id, char *buf, size_t cap,
        unsigned flags);

/* Longest piece length in bytes (for sizing buffers). */
size_t tok_max_piece_len(const struct tok *t);

/* Concatenates the pieces of ids[0..n) into a NUL-terminated string (*out,
 * free with free(); *out_len its length, may be NULL).  Leading-space rule
 * (SentencePiece with add_space_prefix only): the space the encoder put
 * before the text is removed from the first piece of the sequence and from
 * the piece right after a BOS, so decode(encode(s)) == s with or without
 * BOS.  This is what SentencePiece's own decoder does.  llama.cpp's
 * llama_detokenize differs slightly: it strips one space from the very
 * first token only, so a sequence starting with a kept BOS keeps the space
 * (and when it removes the BOS it keeps it too).  Bytes are returned as
 * they are (no UTF-8 repair).
 * Errors: EPMOE_EINVAL (an id out of range; nothing is written),
 * EPMOE_ENOMEM. */
int tok_decode(const struct tok *t, const int32_t *ids, size_t n,
        unsigned flags, char **out, size_t *out_len);

/* ---- streaming decoding ---- */

#define TOK_STREAM_SEQ_START 2u /* the first id starts a sequence: apply the
                                   leading-space rule to it (as tok_decode
                                   does); without it only a piece following a
                                   BOS pushed into the stream is stripped */

/* Turns ids arriving one at a time into text that is always complete,
 * valid UTF-8: a multi-byte character split across tokens (e.g. an emoji in
 * four byte tokens) is held back until its last byte arrives.  Bytes that
 * can never form a character become U+FFFD, one per maximal invalid
 * subsequence.  The caller owns the struct; flags: TOK_DECODE_SPECIAL,
 * TOK_STREAM_SEQ_START. */
struct tok_stream {
	const struct tok *t; /* borrowed */
	unsigned flags;
	bool strip_next;     /* drop one leading space of the next piece */
	uint8_t pend[4];     /* bytes of an incomplete character */
	size_t n_pend;
	char *buf;           /* output buffer, owned */
	size_t cap;
	uint8_t *in;         /* pending bytes + the new piece, owned */
};

/* Returns 0 or EPMOE_ENOMEM; release with tok_stream_fini(). */
int tok_stream_init(struct tok_stream *s, const struct tok *t, unsigned flags);
void tok_stream_fini(struct tok_stream *s);

/* Feeds one id.  *text (borrowed from s, valid until the next call, NUL-
 * terminated) and *len get the text that became complete, possibly empty.
 * EPMOE_EINVAL for an out-of-range id (the stream is unchanged). */
int tok_stream_push(struct tok_stream *s, int32_t id, const char **text,
        size_t *len);

/* Ends the stream: an incomplete character still held back comes out as
 * U+FFFD.  The stream is then empty and may be reused. */
int tok_stream_flush(struct tok_stream *s, const char **text, size_t *len);

#endif
