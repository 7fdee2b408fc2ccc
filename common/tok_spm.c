/* SentencePiece-style tokenization (tokenizer.ggml.model = llama), the
 * "BPE by score" algorithm of llama.cpp's llm_tokenizer_spm:
 *
 *   1. spaces become "▁" (U+2581), with one more "▁" in front when the
 *      caller asks for the space prefix;
 *   2. the text is split into UTF-8 characters (a byte that cannot start a
 *      character, or a truncated sequence, is a symbol of its own bytes);
 *   3. repeatedly, the adjacent pair whose concatenation is a vocabulary
 *      piece with the highest score is merged (ties: the leftmost pair);
 *   4. each final symbol is its piece's id, or else its bytes' <0xNN>
 *      tokens, or else <unk> for a byte without one.
 *
 * A priority queue holds the candidate pairs, and a pair made stale by an
 * earlier merge is recognised by its size, so the whole text costs
 * O(n log n).  Must not: normalise the text (no NFKC), or look at anything
 * outside the fragment it is given.
 */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "tok_int.h"

#define SPACE_ESC "\xe2\x96\x81" /* U+2581 */

/* Length of the UTF-8 sequence a byte starts, by its high nibble (1 for a
 * continuation byte), as llama.cpp's unicode_len_utf8. */
static size_t
utf8_len(uint8_t c)
{
	static const uint8_t lens[16] = { 1, 1, 1, 1, 1, 1, 1, 1,
		1, 1, 1, 1, 2, 2, 3, 4 };
	return lens[c >> 4];
}

struct spm {
	const struct tok *t;
	const char *buf;
	struct tok_sym *syms;
	struct tok_heap heap;
};

/* Queues the merge of symbols left and right if their concatenation is a
 * vocabulary piece. */
static int
try_pair(struct spm *s, int32_t left, int32_t right)
{
	const struct tok_sym *l, *r;
	struct tok_bigram b;
	size_t n;
	int32_t id;

	if (left < 0 || right < 0)
		return 0;
	l = &s->syms[left];
	r = &s->syms[right];
	n = (size_t)l->n + r->n;
	if (n > s->t->max_token_len)
		return 0;
	id = strmap_get(&s->t->vocab, s->buf + l->start, n);
	if (id < 0)
		return 0;
	b.key = s->t->scores[id];
	b.left = left;
	b.right = right;
	b.size = (uint32_t)n;
	return tok_heap_push(&s->heap, &b);
}

static int
emit_symbol(const struct tok *t, const char *p, size_t n, struct tok_ivec *out)
{
	int32_t id = strmap_get(&t->vocab, p, n);
	int rc;

	if (id >= 0)
		return tok_ivec_push(out, id);
	for (size_t i = 0; i < n; i++) {
		id = t->byte_id[(uint8_t)p[i]];
		if (id < 0)
			id = t->unk;
		if (id < 0) {
			log_debug("tok: byte 0x%02x has no token and there is "
			          "no <unk>: dropped", (uint8_t)p[i]);
			continue;
		}
		if ((rc = tok_ivec_push(out, id)) != 0)
			return rc;
	}
	return 0;
}

int
tok_spm_encode(const struct tok *t, const char *s, size_t len, bool prefix,
        struct tok_ivec *out)
{
	struct spm st = { .t = t };
	char *buf = NULL;
	size_t n_spaces = 0, blen = 0, n_sym = 0;
	struct tok_bigram b;
	int rc = 0;

	for (size_t i = 0; i < len; i++)
		n_spaces += s[i] == ' ';
	/* each space grows from 1 to 3 bytes; the prefix adds 3 */
	if ((buf = malloc(len + 2 * n_spaces + 3 + 1)) == NULL)
		return EPMOE_ENOMEM;
	if (prefix) {
		memcpy(buf, SPACE_ESC, 3);
		blen = 3;
	}
	for (size_t i = 0; i < len; i++) {
		if (s[i] == ' ') {
			memcpy(buf + blen, SPACE_ESC, 3);
			blen += 3;
		} else {
			buf[blen++] = s[i];
		}
	}
	if (blen == 0)
		goto out;
	if (blen > INT32_MAX) {
		rc = EPMOE_ERANGE;
		goto out;
	}
	st.buf = buf;
	if ((st.syms = malloc(blen * sizeof(*st.syms))) == NULL) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	for (size_t off = 0; off < blen;) {
		size_t n = utf8_len((uint8_t)buf[off]);

		if (n > blen - off)
			n = blen - off;
		st.syms[n_sym].start = (uint32_t)off;
		st.syms[n_sym].n = (uint32_t)n;
		st.syms[n_sym].prev = (int32_t)n_sym - 1;
		off += n;
		st.syms[n_sym].next = off == blen ? -1 : (int32_t)n_sym + 1;
		n_sym++;
	}
	for (size_t i = 1; i < n_sym; i++) {
		if ((rc = try_pair(&st, (int32_t)i - 1, (int32_t)i)) != 0)
			goto out;
	}
	while (tok_heap_pop(&st.heap, &b)) {
		struct tok_sym *l = &st.syms[b.left], *r = &st.syms[b.right];

		/* stale: one side was merged away, or grew since queued */
		if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
			continue;
		l->n += r->n;
		r->n = 0;
		l->next = r->next;
		if (r->next >= 0)
			st.syms[r->next].prev = b.left;
		if ((rc = try_pair(&st, l->prev, b.left)) != 0 ||
		        (rc = try_pair(&st, b.left, l->next)) != 0)
			goto out;
	}
	for (int32_t i = 0; i != -1; i = st.syms[i].next) {
		if ((rc = emit_symbol(t, buf + st.syms[i].start, st.syms[i].n,
		        out)) != 0)
			goto out;
	}
out:
	free(st.heap.v);
	free(st.syms);
	free(buf);
	return rc;
}
