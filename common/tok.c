/* The tokenizer core: vocabulary tables built from plain arrays, special
 * token matching, the encode driver, pieces, decoding and the streaming
 * decoder.  The merge algorithms live in tok_spm.c and tok_bpe.c, the GGUF
 * metadata reader in tok_gguf.c.  Nothing here changes a struct tok after
 * tok_new_from_vocab() returns.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "tok_int.h"

/* ---- id vector and merge queue ---- */

int
tok_ivec_push(struct tok_ivec *iv, int32_t id)
{
	if (iv->n == iv->cap) {
		size_t cap = iv->cap ? 2 * iv->cap : 64;
		int32_t *v = realloc(iv->v, cap * sizeof(*v));

		if (v == NULL)
			return EPMOE_ENOMEM;
		iv->v = v;
		iv->cap = cap;
	}
	iv->v[iv->n++] = id;
	return 0;
}

/* a ranks before b */
static bool
bigram_before(const struct tok_bigram *a, const struct tok_bigram *b)
{
	return a->key > b->key || (a->key == b->key && a->left < b->left);
}

int
tok_heap_push(struct tok_heap *h, const struct tok_bigram *b)
{
	size_t i;

	if (h->n == h->cap) {
		size_t cap = h->cap ? 2 * h->cap : 64;
		struct tok_bigram *v = realloc(h->v, cap * sizeof(*v));

		if (v == NULL)
			return EPMOE_ENOMEM;
		h->v = v;
		h->cap = cap;
	}
	for (i = h->n++; i > 0; i = (i - 1) / 2) {
		size_t p = (i - 1) / 2;

		if (!bigram_before(b, &h->v[p]))
			break;
		h->v[i] = h->v[p];
	}
	h->v[i] = *b;
	return 0;
}

bool
tok_heap_pop(struct tok_heap *h, struct tok_bigram *b)
{
	struct tok_bigram last;
	size_t i = 0;

	if (h->n == 0)
		return false;
	*b = h->v[0];
	last = h->v[--h->n];
	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= h->n)
			break;
		if (c + 1 < h->n && bigram_before(&h->v[c + 1], &h->v[c]))
			c++;
		if (!bigram_before(&h->v[c], &last))
			break;
		h->v[i] = h->v[c];
		i = c;
	}
	if (h->n > 0)
		h->v[i] = last;
	return true;
}

/* ---- construction ---- */

void
tok_vocab_init(struct tok_vocab *v, enum tok_model model)
{
	memset(v, 0, sizeof(*v));
	v->model = model;
	v->bos_id = v->eos_id = v->unk_id = TOK_ID_NONE;
	v->pad_id = v->eot_id = v->eom_id = TOK_ID_NONE;
	v->add_bos = v->add_eos = v->add_space_prefix = -1;
}

void
tok_free(struct tok *t)
{
	if (t == NULL)
		return;
	tok_bpe_free_re(t);
	strmap_fini(&t->vocab);
	strmap_fini(&t->merges);
	free(t->text_arena);
	free(t->text_off);
	free(t->text_len);
	free(t->scores);
	free(t->types);
	free(t->specials);
	free(t->special_lens);
	free(t->special_slot);
	free(t->piece_arena);
	free(t->piece_off);
	free(t->piece_len);
	free(t->piece_hidden);
	free(t->merge_arena);
	free(t);
}

static size_t
vlen(const char *const *s, const size_t *lens, uint32_t i)
{
	return lens ? lens[i] : strlen(s[i]);
}

/* Copies the token texts into one arena (an empty text becomes
 * "[EMPTY_<id>]", as llama.cpp does, so every token can be looked up) and
 * fills the text -> id map. */
static int
build_vocab(struct tok *t, const struct tok_vocab *v, char *err,
        size_t err_len)
{
	size_t total = 0, off = 0;
	int rc;

	for (uint32_t i = 0; i < v->n_tokens; i++) {
		if (v->tokens[i] == NULL) {
			epmoe_set_err(err, err_len, "token %u is NULL", i);
			return EPMOE_EINVAL;
		}
		total += vlen(v->tokens, v->token_lens, i) + 1 + 24;
	}
	if ((t->text_arena = malloc(total)) == NULL ||
	        (t->text_off = malloc(v->n_tokens * sizeof(size_t))) == NULL ||
	        (t->text_len = malloc(v->n_tokens * sizeof(uint32_t))) == NULL ||
	        (t->scores = malloc(v->n_tokens * sizeof(float))) == NULL ||
	        (t->types = malloc(v->n_tokens)) == NULL)
		return EPMOE_ENOMEM;
	for (uint32_t i = 0; i < v->n_tokens; i++) {
		size_t n = vlen(v->tokens, v->token_lens, i);

		if (n > UINT32_MAX / 2) {
			epmoe_set_err(err, err_len, "token %u is too long", i);
			return EPMOE_EFORMAT;
		}
		t->text_off[i] = off;
		if (n == 0) {
			n = (size_t)sprintf(t->text_arena + off, "[EMPTY_%u]", i);
		} else {
			memcpy(t->text_arena + off, v->tokens[i], n);
			t->text_arena[off + n] = '\0';
		}
		t->text_len[i] = (uint32_t)n;
		off += n + 1;
		if (n > t->max_token_len)
			t->max_token_len = n;
		t->scores[i] = v->scores ? v->scores[i] : 0.0f;
		if (v->types == NULL) {
			t->types[i] = TOK_TYPE_NORMAL;
		} else if (v->types[i] < 0 || v->types[i] > TOK_TYPE_BYTE) {
			t->types[i] = TOK_TYPE_UNDEFINED;
		} else {
			t->types[i] = (uint8_t)v->types[i];
		}
	}
	if ((rc = strmap_init(&t->vocab, v->n_tokens)) != 0)
		return rc;
	for (uint32_t i = 0; i < v->n_tokens; i++) {
		int32_t old;

		rc = strmap_put(&t->vocab, tok_text(t, (int32_t)i),
		        t->text_len[i], (int32_t)i, &old);
		if (rc < 0)
			return rc;
		if (rc == 1) {
			epmoe_set_err(err, err_len, "duplicate token in vocabulary: "
			        "'%s' has ids %d and %u", tok_text(t, (int32_t)i),
			        old, i);
			return EPMOE_EFORMAT;
		}
	}
	return 0;
}

static int
build_merges(struct tok *t, const struct tok_vocab *v)
{
	size_t total = 0, off = 0;
	int rc;

	for (uint32_t i = 0; i < v->n_merges; i++)
		total += vlen(v->merges, v->merge_lens, i);
	if ((t->merge_arena = malloc(total + 1)) == NULL)
		return EPMOE_ENOMEM;
	if ((rc = strmap_init(&t->merges, v->n_merges)) != 0)
		return rc;
	for (uint32_t i = 0; i < v->n_merges; i++) {
		size_t n = vlen(v->merges, v->merge_lens, i);
		const char *sp;

		memcpy(t->merge_arena + off, v->merges[i], n);
		/* "left right" with the space after the first byte: a line
		 * without one can never match a pair and is skipped */
		sp = n > 1 ? memchr(t->merge_arena + off + 1, ' ', n - 1) : NULL;
		if (sp != NULL) {
			/* the first occurrence keeps its rank */
			if ((rc = strmap_put(&t->merges, t->merge_arena + off, n,
			        (int32_t)i, NULL)) < 0)
				return rc;
			if (n > t->max_merge_len)
				t->max_merge_len = n;
		}
		off += n;
	}
	return 0;
}

/* The byte a "<0xNN>" text stands for, or -1. */
static int
hex_byte(const char *s, size_t n)
{
	unsigned v = 0;

	if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
		return -1;
	for (int i = 3; i < 5; i++) {
		char c = s[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else
			return -1;
	}
	return (int)v;
}

static void
build_byte_ids(struct tok *t)
{
	for (int b = 0; b < 256; b++) {
		char buf[8];
		size_t n;

		if (t->model == TOK_MODEL_SPM) {
			/* "<0xNN>", else the byte itself as a piece */
			snprintf(buf, sizeof(buf), "<0x%02X>", b);
			t->byte_id[b] = strmap_get(&t->vocab, buf, 6);
			if (t->byte_id[b] < 0) {
				buf[0] = (char)b;
				t->byte_id[b] = strmap_get(&t->vocab, buf, 1);
			}
		} else {
			n = tok_bpe_byte_utf8((uint8_t)b, buf);
			t->byte_id[b] = strmap_get(&t->vocab, buf, n);
		}
	}
}

/* Replaces every "▁" by a space; returns the new length. */
static size_t
unescape_spaces(char *s, size_t n)
{
	size_t o = 0;

	for (size_t i = 0; i < n;) {
		if (i + 3 <= n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
			s[o++] = ' ';
			i += 3;
		} else {
			s[o++] = s[i++];
		}
	}
	return o;
}

static int
build_pieces(struct tok *t)
{
	size_t total = 0, off = 0;

	for (uint32_t i = 0; i < t->n_vocab; i++)
		total += t->text_len[i];
	if ((t->piece_arena = malloc(total + 1)) == NULL ||
	        (t->piece_off = malloc(t->n_vocab * sizeof(size_t))) == NULL ||
	        (t->piece_len = malloc(t->n_vocab * sizeof(uint32_t))) == NULL ||
	        (t->piece_hidden = malloc(t->n_vocab)) == NULL)
		return EPMOE_ENOMEM;
	for (uint32_t i = 0; i < t->n_vocab; i++) {
		const char *s = tok_text(t, (int32_t)i);
		size_t n = t->text_len[i];
		char *d = t->piece_arena + off;
		int byte;

		t->piece_off[i] = off;
		t->piece_hidden[i] = 0;
		switch (t->types[i]) {
		case TOK_TYPE_CONTROL:
		case TOK_TYPE_UNKNOWN:
			t->piece_hidden[i] = 1; /* shown as written when asked */
			/* fall through */
		case TOK_TYPE_USER_DEFINED:
			memcpy(d, s, n);
			break;
		case TOK_TYPE_NORMAL:
			if (t->model == TOK_MODEL_SPM) {
				memcpy(d, s, n);
				n = unescape_spaces(d, n);
			} else {
				n = tok_bpe_unmap(s, n, d);
			}
			break;
		case TOK_TYPE_BYTE:
			if ((byte = hex_byte(s, n)) >= 0) {
				d[0] = (char)byte;
				n = 1;
			} else if (t->model == TOK_MODEL_BPE) {
				n = tok_bpe_unmap(s, n, d);
			} else {
				memcpy(d, s, n);
			}
			break;
		default: /* unused, undefined: nothing, as llama.cpp */
			n = 0;
			break;
		}
		t->piece_len[i] = (uint32_t)n;
		off += n;
		if (n > t->max_piece_len)
			t->max_piece_len = n;
	}
	return 0;
}

static int
cmp_special(const void *a, const void *b, void *arg)
{
	const struct tok *t = arg;
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;

	if (t->text_len[x] != t->text_len[y])
		return t->text_len[x] > t->text_len[y] ? -1 : 1;
	return x < y ? -1 : x > y;
}

static int
build_specials(struct tok *t)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < t->n_vocab; i++) {
		uint8_t ty = t->types[i];

		n += ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED ||
		        ty == TOK_TYPE_UNKNOWN;
	}
	if (n == 0)
		return 0;
	if ((t->specials = malloc(n * sizeof(int32_t))) == NULL ||
	        (t->special_lens = malloc(n * sizeof(uint32_t))) == NULL ||
	        (t->special_slot = malloc(t->n_vocab * sizeof(int32_t))) == NULL)
		return EPMOE_ENOMEM;
	for (uint32_t i = 0; i < t->n_vocab; i++)
		t->special_slot[i] = -1;
	for (uint32_t i = 0; i < t->n_vocab; i++) {
		uint8_t ty = t->types[i];

		if (ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED ||
		        ty == TOK_TYPE_UNKNOWN) {
			t->specials[t->n_specials++] = (int32_t)i;
			t->special_first[(uint8_t)tok_text(t, (int32_t)i)[0] / 8] |=
			        (uint8_t)(1u << ((uint8_t)tok_text(t, (int32_t)i)[0] % 8));
		}
	}
	/* longest first, then by id, so the order is deterministic */
	qsort_r(t->specials, t->n_specials, sizeof(int32_t), cmp_special, t);
	for (uint32_t i = 0; i < t->n_specials; i++) {
		uint32_t l = t->text_len[t->specials[i]];

		t->special_slot[t->specials[i]] = (int32_t)i;

		if (t->n_special_lens == 0 ||
		        t->special_lens[t->n_special_lens - 1] != l)
			t->special_lens[t->n_special_lens++] = l;
	}
	return 0;
}

static int
check_id(const char *what, int32_t id, uint32_t n, char *err, size_t err_len)
{
	if (id == TOK_ID_NONE || (id >= 0 && (uint32_t)id < n))
		return 0;
	epmoe_set_err(err, err_len, "%s id %d out of range (vocabulary of %u)", what,
	        id, n);
	return EPMOE_EINVAL;
}

int
tok_new_from_vocab(struct tok **out, const struct tok_vocab *v, char *err,
        size_t err_len)
{
	struct tok *t;
	int rc;

	if (out == NULL || v == NULL) {
		epmoe_set_err(err, err_len, "no vocabulary");
		return EPMOE_EINVAL;
	}
	if (v->model != TOK_MODEL_SPM && v->model != TOK_MODEL_BPE) {
		epmoe_set_err(err, err_len, "unknown tokenizer model %d", v->model);
		return EPMOE_EINVAL;
	}
	if (v->n_tokens == 0 || v->tokens == NULL || v->n_tokens > INT32_MAX) {
		epmoe_set_err(err, err_len, "empty vocabulary");
		return EPMOE_EINVAL;
	}
	if (v->model == TOK_MODEL_BPE && v->n_merges > 0 && v->merges == NULL) {
		epmoe_set_err(err, err_len, "merges missing");
		return EPMOE_EINVAL;
	}
	if ((rc = check_id("BOS", v->bos_id, v->n_tokens, err, err_len)) ||
	        (rc = check_id("EOS", v->eos_id, v->n_tokens, err, err_len)) ||
	        (rc = check_id("UNK", v->unk_id, v->n_tokens, err, err_len)) ||
	        (rc = check_id("PAD", v->pad_id, v->n_tokens, err, err_len)) ||
	        (rc = check_id("EOT", v->eot_id, v->n_tokens, err, err_len)) ||
	        (rc = check_id("EOM", v->eom_id, v->n_tokens, err, err_len)))
		return rc;
	if ((t = calloc(1, sizeof(*t))) == NULL)
		return EPMOE_ENOMEM;
	t->model = v->model;
	t->n_vocab = v->n_tokens;
	t->bos = v->bos_id;
	t->eos = v->eos_id;
	t->unk = v->unk_id;
	t->pad = v->pad_id;
	t->eot = v->eot_id;
	t->eom = v->eom_id;
	if (t->model == TOK_MODEL_BPE) {
		t->pre = tok_bpe_pre_find(v->pre);
		if (t->pre == NULL) {
			log_warn("tok: unknown pre-tokenizer '%s': using gpt2",
			         v->pre);
			t->pre = tok_bpe_pre_gpt2();
		}
		t->ignore_merges = tok_bpe_pre_ignore_merges(t->pre);
		t->add_bos = v->add_bos >= 0 ? v->add_bos :
		        tok_bpe_pre_add_bos(t->pre);
		t->add_space_prefix = false;
	} else {
		t->add_bos = v->add_bos >= 0 ? v->add_bos : true;
		t->add_space_prefix = v->add_space_prefix >= 0 ?
		        v->add_space_prefix : true;
	}
	t->add_eos = v->add_eos > 0;
	if ((rc = build_vocab(t, v, err, err_len)) != 0)
		goto fail;
	if (t->model == TOK_MODEL_BPE) {
		if ((rc = build_merges(t, v)) != 0 ||
		        (rc = tok_bpe_compile(t, err, err_len)) != 0)
			goto fail;
	}
	build_byte_ids(t);
	if ((rc = build_pieces(t)) != 0 || (rc = build_specials(t)) != 0)
		goto fail;
	*out = t;
	return 0;
fail:
	if (rc == EPMOE_ENOMEM)
		epmoe_set_err(err, err_len, "out of memory building the tokenizer");
	tok_free(t);
	return rc;
}

/* ---- properties ---- */

enum tok_model
tok_model(const struct tok *t)
{
	return t->model;
}

uint32_t
tok_n_vocab(const struct tok *t)
{
	return t->n_vocab;
}

int32_t
tok_bos(const struct tok *t)
{
	return t->bos;
}

int32_t
tok_eos(const struct tok *t)
{
	return t->eos;
}

int32_t
tok_eot(const struct tok *t)
{
	return t->eot;
}

int32_t
tok_eom(const struct tok *t)
{
	return t->eom;
}

int32_t
tok_unk(const struct tok *t)
{
	return t->unk;
}

int32_t
tok_pad(const struct tok *t)
{
	return t->pad;
}

bool
tok_add_bos(const struct tok *t)
{
	return t->add_bos;
}

bool
tok_add_eos(const struct tok *t)
{
	return t->add_eos;
}

bool
tok_add_space_prefix(const struct tok *t)
{
	return t->add_space_prefix;
}

const char *
tok_pre_name(const struct tok *t)
{
	return t->model == TOK_MODEL_BPE ? tok_bpe_pre_name(t->pre) : "";
}

bool
tok_is_eog(const struct tok *t, int32_t id)
{
	return id >= 0 && (id == t->eos || id == t->eot || id == t->eom);
}

static bool
valid_id(const struct tok *t, int32_t id)
{
	return id >= 0 && (uint32_t)id < t->n_vocab;
}

int
tok_token_type(const struct tok *t, int32_t id)
{
	return valid_id(t, id) ? t->types[id] : EPMOE_EINVAL;
}

const char *
tok_token_text(const struct tok *t, int32_t id, size_t *len)
{
	if (!valid_id(t, id))
		return NULL;
	if (len)
		*len = t->text_len[id];
	return tok_text(t, id);
}

int32_t
tok_find(const struct tok *t, const char *s, size_t len)
{
	return strmap_get(&t->vocab, s, len);
}

/* ---- encoding ---- */

/* A piece of the text to encode: raw text (id < 0) or a special token. */
struct frag {
	int32_t id;
	size_t off, len;
};

struct frags {
	struct frag *v;
	size_t n, cap;
};

static int
frag_push(struct frags *f, int32_t id, size_t off, size_t len)
{
	if (f->n == f->cap) {
		size_t cap = f->cap ? 2 * f->cap : 16;
		struct frag *v = realloc(f->v, cap * sizeof(*v));

		if (v == NULL)
			return EPMOE_ENOMEM;
		f->v = v;
		f->cap = cap;
	}
	f->v[f->n].id = id;
	f->v[f->n].off = off;
	f->v[f->n].len = len;
	f->n++;
	return 0;
}

static bool
special_wanted(const struct tok *t, int32_t id, bool parse_special)
{
	/* user-defined tokens always; control and unknown ones on request */
	return parse_special || t->types[id] == TOK_TYPE_USER_DEFINED;
}

/* Marks in present[] (one flag per entry of t->specials) the special
 * tokens that occur somewhere in the text: one pass, looking up each
 * distinct special length at each position whose byte can start one. */
static void
find_present(const struct tok *t, const char *s, size_t len,
        bool parse_special, uint8_t *present, bool *any)
{
	*any = false;
	for (size_t i = 0; i < len; i++) {
		uint8_t c = (uint8_t)s[i];

		if (!(t->special_first[c / 8] & (1u << (c % 8))))
			continue;
		for (uint32_t k = 0; k < t->n_special_lens; k++) {
			uint32_t l = t->special_lens[k];
			int32_t id;

			if (l > len - i)
				continue;
			id = strmap_get(&t->vocab, s + i, l);
			if (id < 0 || t->special_slot[id] < 0 ||
			        !special_wanted(t, id, parse_special))
				continue;
			present[t->special_slot[id]] = 1;
			*any = true;
		}
	}
}

/* Splits the text around special tokens the way llama.cpp's
 * tokenizer_st_partition does: token by token, longest first, every
 * occurrence in every remaining text fragment. */
static int
partition(const struct tok *t, const char *s, size_t len, bool parse_special,
        struct frags *out)
{
	struct frags cur = { 0 }, nxt = { 0 };
	uint8_t *present = NULL;
	bool any = false;
	int rc = 0;

	if ((rc = frag_push(&cur, -1, 0, len)) != 0)
		goto out;
	if (t->n_specials > 0) {
		if ((present = calloc(t->n_specials, 1)) == NULL) {
			rc = EPMOE_ENOMEM;
			goto out;
		}
		find_present(t, s, len, parse_special, present, &any);
	}
	for (uint32_t j = 0; any && j < t->n_specials; j++) {
		int32_t id = t->specials[j];
		const char *pat = tok_text(t, id);
		size_t plen = t->text_len[id];

		if (!present[j])
			continue;
		nxt.n = 0;
		for (size_t k = 0; k < cur.n; k++) {
			struct frag f = cur.v[k];
			size_t pos = f.off, end = f.off + f.len;

			if (f.id >= 0) {
				if ((rc = frag_push(&nxt, f.id, 0, 0)) != 0)
					goto out;
				continue;
			}
			while (pos < end) {
				const char *m = memmem(s + pos, end - pos, pat, plen);

				if (m == NULL)
					break;
				if ((size_t)(m - s) > pos && (rc = frag_push(&nxt, -1,
				        pos, (size_t)(m - s) - pos)) != 0)
					goto out;
				if ((rc = frag_push(&nxt, id, 0, 0)) != 0)
					goto out;
				pos = (size_t)(m - s) + plen;
			}
			if (pos < end && (rc = frag_push(&nxt, -1, pos,
			        end - pos)) != 0)
				goto out;
		}
		{
			struct frags tmp = cur;

			cur = nxt;
			nxt = tmp;
		}
	}
	*out = cur;
	cur.v = NULL;
out:
	free(cur.v);
	free(nxt.v);
	free(present);
	return rc;
}

int
tok_encode(const struct tok *t, const char *text, size_t len, unsigned flags,
        int32_t **ids, size_t *n_ids)
{
	struct tok_ivec iv = { 0 };
	struct frags fr = { 0 };
	struct tok_bpe_ctx *bc = NULL;
	bool prev_special = true; /* SPM: the first text gets the prefix */
	int rc = 0;

	if (t == NULL || ids == NULL || n_ids == NULL ||
	        (text == NULL && len > 0))
		return EPMOE_EINVAL;
	if (len > 0 && (rc = partition(t, text, len,
	        (flags & TOK_PARSE_SPECIAL) != 0, &fr)) != 0)
		goto out;
	if (t->model == TOK_MODEL_BPE && (rc = tok_bpe_ctx_new(t, &bc)) != 0)
		goto out;
	if ((flags & TOK_ADD_BOS) && t->add_bos && t->bos >= 0 &&
	        (rc = tok_ivec_push(&iv, t->bos)) != 0)
		goto out;
	for (size_t i = 0; i < fr.n; i++) {
		const struct frag *f = &fr.v[i];

		if (f->id >= 0) {
			if ((rc = tok_ivec_push(&iv, f->id)) != 0)
				goto out;
			prev_special = true;
			continue;
		}
		if (t->model == TOK_MODEL_SPM) {
			rc = tok_spm_encode(t, text + f->off, f->len,
			        t->add_space_prefix && prev_special, &iv);
		} else {
			rc = tok_bpe_encode(t, bc, text + f->off, f->len, &iv);
		}
		if (rc != 0)
			goto out;
		prev_special = false;
	}
	if ((flags & TOK_ADD_EOS) && t->add_eos && t->eos >= 0 &&
	        (rc = tok_ivec_push(&iv, t->eos)) != 0)
		goto out;
	*ids = iv.v;
	*n_ids = iv.n;
	iv.v = NULL;
out:
	tok_bpe_ctx_free(bc);
	free(fr.v);
	free(iv.v);
	return rc;
}

/* ---- decoding ---- */

/* The piece of id as a pointer into the cache (id must be valid). */
static const char *
piece_ref(const struct tok *t, int32_t id, unsigned flags, size_t *len)
{
	if (t->piece_hidden[id] && !(flags & TOK_DECODE_SPECIAL)) {
		*len = 0;
		return "";
	}
	*len = t->piece_len[id];
	return t->piece_arena + t->piece_off[id];
}

int
tok_piece(const struct tok *t, int32_t id, char *buf, size_t cap,
        unsigned flags)
{
	const char *p;
	size_t n;

	if (t == NULL || !valid_id(t, id) || (buf == NULL && cap > 0))
		return EPMOE_EINVAL;
	p = piece_ref(t, id, flags, &n);
	if (n > INT32_MAX)
		return EPMOE_ERANGE;
	memcpy(buf, p, n < cap ? n : cap);
	if (n < cap)
		buf[n] = '\0';
	return (int)n;
}

size_t
tok_max_piece_len(const struct tok *t)
{
	return t->max_piece_len;
}

int
tok_decode(const struct tok *t, const int32_t *ids, size_t n, unsigned flags,
        char **out, size_t *out_len)
{
	size_t total = 0, o = 0;
	bool strip;
	char *s;

	if (t == NULL || out == NULL || (ids == NULL && n > 0))
		return EPMOE_EINVAL;
	for (size_t i = 0; i < n; i++) {
		size_t l;

		if (!valid_id(t, ids[i]))
			return EPMOE_EINVAL;
		piece_ref(t, ids[i], flags, &l);
		total += l;
	}
	if ((s = malloc(total + 1)) == NULL)
		return EPMOE_ENOMEM;
	strip = t->add_space_prefix;
	for (size_t i = 0; i < n; i++) {
		size_t l;
		const char *p = piece_ref(t, ids[i], flags, &l);

		if (strip && l > 0 && p[0] == ' ') {
			p++;
			l--;
		}
		memcpy(s + o, p, l);
		o += l;
		strip = t->add_space_prefix && ids[i] == t->bos;
	}
	s[o] = '\0';
	*out = s;
	if (out_len)
		*out_len = o;
	return 0;
}

/* ---- streaming ---- */

int
tok_stream_init(struct tok_stream *s, const struct tok *t, unsigned flags)
{
	memset(s, 0, sizeof(*s));
	s->t = t;
	s->flags = flags;
	s->strip_next = t->add_space_prefix && (flags & TOK_STREAM_SEQ_START);
	/* worst case: every pending and new byte invalid, 3 bytes each */
	s->cap = 3 * (t->max_piece_len + sizeof(s->pend)) + 1;
	if ((s->buf = malloc(s->cap)) == NULL)
		return EPMOE_ENOMEM;
	if ((s->in = malloc(t->max_piece_len + sizeof(s->pend))) == NULL) {
		free(s->buf);
		s->buf = NULL;
		return EPMOE_ENOMEM;
	}
	return 0;
}

void
tok_stream_fini(struct tok_stream *s)
{
	if (s == NULL)
		return;
	free(s->buf);
	free(s->in);
	s->buf = NULL;
	s->in = NULL;
}

/* Length of the sequence lead byte c starts (0: c cannot start one), and
 * the range its second byte must lie in (RFC 3629 table). */
static int
utf8_lead(uint8_t c, uint8_t *lo, uint8_t *hi)
{
	*lo = 0x80;
	*hi = 0xBF;
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		return 2;
	if (c >= 0xE0 && c <= 0xEF) {
		if (c == 0xE0)
			*lo = 0xA0;
		if (c == 0xED)
			*hi = 0x9F;
		return 3;
	}
	if (c >= 0xF0 && c <= 0xF4) {
		if (c == 0xF0)
			*lo = 0x90;
		if (c == 0xF4)
			*hi = 0x8F;
		return 4;
	}
	return 0;
}

static const char replacement[3] = { '\xef', '\xbf', '\xbd' }; /* U+FFFD */

/* Moves the complete characters of d[0..n) to s->buf (replacing invalid
 * bytes), keeps an incomplete tail in s->pend; returns bytes written. */
static size_t
stream_emit(struct tok_stream *s, const uint8_t *d, size_t n)
{
	size_t o = 0, i = 0;

	while (i < n) {
		uint8_t lo, hi;
		int need = utf8_lead(d[i], &lo, &hi);
		size_t k;

		if (need == 0) {
			memcpy(s->buf + o, replacement, 3);
			o += 3;
			i++;
			continue;
		}
		/* how many bytes of the sequence are well-formed */
		for (k = 1; k < (size_t)need && i + k < n; k++) {
			uint8_t c = d[i + k];

			if (k == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80)
				break;
		}
		if (k == (size_t)need) {
			memcpy(s->buf + o, d + i, k);
			o += k;
			i += k;
		} else if (i + k == n) {
			/* ran out of bytes: wait for the rest */
			memcpy(s->pend, d + i, k);
			s->n_pend = k;
			break;
		} else {
			/* a maximal invalid subpart: one U+FFFD */
			memcpy(s->buf + o, replacement, 3);
			o += 3;
			i += k;
		}
	}
	s->buf[o] = '\0';
	return o;
}

int
tok_stream_push(struct tok_stream *s, int32_t id, const char **text,
        size_t *len)
{
	const char *p;
	size_t l, np;

	if (s == NULL || s->buf == NULL || text == NULL || len == NULL ||
	        !valid_id(s->t, id))
		return EPMOE_EINVAL;
	p = piece_ref(s->t, id, s->flags, &l);
	if (s->strip_next && l > 0 && p[0] == ' ') {
		p++;
		l--;
	}
	s->strip_next = s->t->add_space_prefix && id == s->t->bos;
	np = s->n_pend;
	memcpy(s->in, s->pend, np);
	memcpy(s->in + np, p, l);
	s->n_pend = 0;
	*len = stream_emit(s, s->in, np + l);
	*text = s->buf;
	return 0;
}

int
tok_stream_flush(struct tok_stream *s, const char **text, size_t *len)
{
	size_t o = 0;

	if (s == NULL || s->buf == NULL || text == NULL || len == NULL)
		return EPMOE_EINVAL;
	if (s->n_pend > 0) {
		memcpy(s->buf, replacement, 3);
		o = 3;
	}
	s->n_pend = 0;
	s->strip_next = s->t->add_space_prefix &&
	        (s->flags & TOK_STREAM_SEQ_START);
	s->buf[o] = '\0';
	*text = s->buf;
	*len = o;
	return 0;
}
