/* Byte-level BPE (tokenizer.ggml.model = gpt2), as llama.cpp's
 * llm_tokenizer_bpe does it:
 *
 *   1. pre-tokenize: the regexes of the model's tokenizer.ggml.pre run in
 *      turn, each splitting every piece the previous one produced into its
 *      matches and the unmatched gaps between them (a gap is a piece too);
 *   2. each piece's bytes are written in GPT-2's byte-to-unicode alphabet
 *      (printable bytes stand for themselves, the others become U+0100..);
 *   3. starting from single characters, the adjacent pair with the lowest
 *      rank in tokenizer.ggml.merges is merged until no pair has a rank
 *      (ties: the leftmost); with ignore_merges (llama3) a piece that is
 *      itself a token is taken whole;
 *   4. each final symbol is its token, or else the tokens of its single
 *      byte characters.
 *
 * The regexes run on PCRE2 (UTF + UCP, JIT when available).  Differences
 * from llama.cpp, both for input llama.cpp handles badly: invalid UTF-8 is
 * kept as bytes (llama.cpp turns it into U+FFFD), and a symbol missing from
 * the vocabulary falls back per byte character (llama.cpp looks up single
 * raw bytes of the UTF-8 text, which rarely exist, and drops them).
 * Must not: apply Unicode normalisation, or let one fragment's regex match
 * see the text of another.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "tok_int.h"

/* ---- pre-tokenizers ---- */

/* GPT-2's split: contractions, letters, digits, other symbols, each with an
 * optional leading space, and whitespace runs not followed by a
 * non-space. */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+" \
	"| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"

/* Llama 3: case-insensitive contractions (spelt out as llama.cpp does, so
 * that no Unicode case folding applies), a letter run with one optional
 * non-letter/digit/newline in front, digit groups of 1-3, symbols with
 * trailing newlines, newline runs, whitespace. */
#define RE_CONTRACTIONS \
	"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3 RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+" \
	"|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+" \
	"|\\s+(?!\\S)|\\s+"
/* Qwen2: as Llama 3 but one digit at a time. */
#define RE_QWEN2 RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+" \
	"|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+" \
	"|\\s+(?!\\S)|\\s+"

#define RE_CJK "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"

/* DeepSeek LLM's letter class: the cased letters of Unicode (Latin, Greek,
 * Cyrillic, Armenian, Georgian, Cherokee, ... and fullwidth Latin). */
#define RE_DEEPSEEK_LETTERS "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}" \
	"\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}" \
	"\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}" \
	"\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}" \
	"\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}" \
	"\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}" \
	"\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}" \
	"\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}" \
	"\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}" \
	"\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}" \
	"\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}" \
	"\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}" \
	"\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}" \
	"\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}" \
	"\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}" \
	"\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}" \
	"\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}" \
	"\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}" \
	"\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}" \
	"\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}" \
	"\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}" \
	"\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}" \
	"\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+"

struct tok_pre_def {
	const char *name;
	const char *aliases[12]; /* other tokenizer.ggml.pre values */
	const char *re[TOK_MAX_RE];
	bool ignore_merges;
	bool add_bos;
};

static const struct tok_pre_def pre_defs[] = {
	{ "default", { NULL },
	  { "[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+",
	    "[0-9][0-9][0-9]" }, false, false },
	{ "gpt2", { "gpt-2", "phi-2", "mpt", "olmo", "jais", "jina-es",
	            "jina-de", "jina-v1-en", "jina-v2-es", "jina-v2-de",
	            "jina-v2-code", "roberta-bpe" },
	  { RE_GPT2 }, false, false },
	{ "llama3", { "llama-bpe", "llama-v3", "falcon3", "pixtral" },
	  { RE_LLAMA3 }, true, true },
	{ "dbrx", { NULL }, { RE_LLAMA3 }, false, false },
	{ "smaug-bpe", { NULL }, { RE_LLAMA3 }, false, false },
	{ "chatglm-bpe", { "glm4" }, { RE_LLAMA3 }, false, false },
	{ "qwen2", { "stablelm2", "deepseek-r1-qwen", "megrez" },
	  { RE_QWEN2 }, false, false },
	{ "deepseek-llm", { NULL },
	  { "[\\r\\n]", RE_DEEPSEEK_LETTERS,
	    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}"
	    "\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
	    "\\s+$", RE_CJK, "\\p{N}+" }, false, false },
	{ "deepseek-coder", { NULL },
	  { "[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK, "\\p{N}" },
	  false, false },
	{ "falcon", { NULL },
	  { "[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]" },
	  false, false },
	{ "starcoder", { "refact", "command-r", "smollm", "codeshell",
	                 "exaone", "minerva-7b" },
	  { "\\p{N}", RE_GPT2 }, false, false },
};

#define N_PRE (sizeof(pre_defs) / sizeof(pre_defs[0]))

const struct tok_pre_def *
tok_bpe_pre_find(const char *name)
{
	if (name == NULL || name[0] == '\0')
		name = "default";
	for (size_t i = 0; i < N_PRE; i++) {
		if (strcmp(pre_defs[i].name, name) == 0)
			return &pre_defs[i];
		for (size_t j = 0; j < 12 && pre_defs[i].aliases[j]; j++) {
			if (strcmp(pre_defs[i].aliases[j], name) == 0)
				return &pre_defs[i];
		}
	}
	return NULL;
}

const struct tok_pre_def *
tok_bpe_pre_gpt2(void)
{
	return tok_bpe_pre_find("gpt2");
}

const char *
tok_bpe_pre_name(const struct tok_pre_def *p)
{
	return p->name;
}

bool
tok_bpe_pre_ignore_merges(const struct tok_pre_def *p)
{
	return p->ignore_merges;
}

bool
tok_bpe_pre_add_bos(const struct tok_pre_def *p)
{
	return p->add_bos;
}

int
tok_bpe_compile(struct tok *t, char *err, size_t err_len)
{
	/* MATCH_INVALID_UTF: invalid UTF-8 never matches and ends up in the
	 * gaps, so it is kept as bytes.  DOLLAR_ENDONLY: "$" is the end of
	 * the fragment only, as in std::regex. */
	const uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF |
	        PCRE2_DOLLAR_ENDONLY;

	for (int i = 0; i < TOK_MAX_RE && t->pre->re[i]; i++) {
		int ec;
		PCRE2_SIZE eo;
		pcre2_code *re = pcre2_compile((PCRE2_SPTR)t->pre->re[i],
		        PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);

		if (re == NULL) {
			PCRE2_UCHAR msg[120];

			pcre2_get_error_message(ec, msg, sizeof(msg));
			if (err)
				snprintf(err, err_len, "pre-tokenizer %s: regex "
				         "%d: %s at offset %zu", t->pre->name, i,
				         (const char *)msg, (size_t)eo);
			return EPMOE_EINTERNAL;
		}
		/* without JIT (e.g. not built in) the interpreter is used */
		(void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
		t->re[t->n_re++] = re;
	}
	return 0;
}

void
tok_bpe_free_re(struct tok *t)
{
	for (int i = 0; i < t->n_re; i++)
		pcre2_code_free(t->re[i]);
	t->n_re = 0;
}

/* ---- GPT-2's byte <-> unicode alphabet ---- */

/* The code point standing for byte b: printable Latin-1 bytes stand for
 * themselves; the 68 others (0x00-0x20, 0x7F-0xA0, 0xAD) get 256, 257, ...
 * in byte order. */
static uint32_t
byte_cp(uint8_t b)
{
	if (b <= 0x20)
		return 256 + b;
	if (b >= 0x7F && b <= 0xA0)
		return 256 + 33 + (b - 0x7F);
	if (b == 0xAD)
		return 256 + 67;
	return b;
}

/* The inverse of byte_cp, or -1 for a code point outside the alphabet. */
static int
cp_byte(uint32_t cp)
{
	if (cp < 256)
		return cp <= 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD ?
		        -1 : (int)cp;
	if (cp < 256 + 33)
		return (int)(cp - 256);
	if (cp < 256 + 67)
		return (int)(cp - 256 - 33 + 0x7F);
	return cp == 256 + 67 ? 0xAD : -1;
}

size_t
tok_bpe_byte_utf8(uint8_t b, char buf[2])
{
	uint32_t cp = byte_cp(b);

	if (cp < 0x80) {
		buf[0] = (char)cp;
		return 1;
	}
	buf[0] = (char)(0xC0 | (cp >> 6));
	buf[1] = (char)(0x80 | (cp & 0x3F));
	return 2;
}

size_t
tok_bpe_unmap(const char *s, size_t len, char *dst)
{
	size_t o = 0;

	for (size_t i = 0; i < len;) {
		uint8_t c = (uint8_t)s[i];
		size_t n = 1;
		uint32_t cp = c;
		int b;

		/* the alphabet is below U+0144: one or two bytes */
		if ((c & 0xE0) == 0xC0 && i + 1 < len &&
		        ((uint8_t)s[i + 1] & 0xC0) == 0x80) {
			cp = ((uint32_t)(c & 0x1F) << 6) | ((uint8_t)s[i + 1] & 0x3F);
			n = 2;
		} else if (c >= 0x80) {
			cp = UINT32_MAX; /* not in the alphabet */
		}
		if ((b = cp_byte(cp)) >= 0) {
			dst[o++] = (char)b;
		} else {
			/* not in the alphabet: copied as it is */
			memcpy(dst + o, s + i, n);
			o += n;
		}
		i += n;
	}
	return o;
}

/* ---- per-call state ---- */

struct span {
	size_t off, len;
};

struct tok_bpe_ctx {
	pcre2_match_data *md;  /* reused for every match of the call */
	pcre2_match_context *mctx;
	pcre2_jit_stack *jstack;
	struct span *a, *b;    /* pre-tokenizer pieces, two generations */
	size_t cap_a, cap_b;
	char *enc;             /* a piece in the byte alphabet */
	size_t cap_enc;
	struct tok_sym *syms;
	size_t cap_syms;
	char *key;             /* "left right" lookup key */
	size_t cap_key;
	struct tok_heap heap;
};

int
tok_bpe_ctx_new(const struct tok *t, struct tok_bpe_ctx **out)
{
	struct tok_bpe_ctx *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return EPMOE_ENOMEM;
	/* one match data block fits every regex: 1 pair is all we read */
	if ((c->md = pcre2_match_data_create(1, NULL)) == NULL ||
	        (c->mctx = pcre2_match_context_create(NULL)) == NULL) {
		tok_bpe_ctx_free(c);
		return EPMOE_ENOMEM;
	}
	/* a JIT stack larger than the 32 KiB default for long runs; if it
	 * cannot be had the match falls back to the interpreter */
	c->jstack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, NULL);
	if (c->jstack)
		pcre2_jit_stack_assign(c->mctx, NULL, c->jstack);
	(void)t;
	*out = c;
	return 0;
}

void
tok_bpe_ctx_free(struct tok_bpe_ctx *c)
{
	if (c == NULL)
		return;
	pcre2_match_data_free(c->md);
	pcre2_match_context_free(c->mctx);
	pcre2_jit_stack_free(c->jstack);
	free(c->a);
	free(c->b);
	free(c->enc);
	free(c->syms);
	free(c->key);
	free(c->heap.v);
	free(c);
}

static int
grow(void **p, size_t *cap, size_t need, size_t elem)
{
	size_t n = *cap ? *cap : 16;
	void *q;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	if ((q = realloc(*p, n * elem)) == NULL)
		return EPMOE_ENOMEM;
	*p = q;
	*cap = n;
	return 0;
}

static int
span_push(struct span **v, size_t *n, size_t *cap, size_t off, size_t len)
{
	int rc;

	if ((rc = grow((void **)v, cap, *n + 1, sizeof(**v))) != 0)
		return rc;
	(*v)[*n].off = off;
	(*v)[*n].len = len;
	(*n)++;
	return 0;
}

static int
match_at(pcre2_code *re, struct tok_bpe_ctx *c, const char *s, size_t len,
        size_t start)
{
	int rc = pcre2_match(re, (PCRE2_SPTR)s, len, start, 0, c->md, c->mctx);

	if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* huge run: interpret instead */
		rc = pcre2_match(re, (PCRE2_SPTR)s, len, start, PCRE2_NO_JIT,
		        c->md, c->mctx);
	return rc;
}

/* Splits s[0..len) with the pre-tokenizer; the pieces end in c->a[0..*n). */
static int
pre_split(const struct tok *t, struct tok_bpe_ctx *c, const char *s,
        size_t len, size_t *n_out)
{
	size_t n_a = 0, n_b;
	int rc;

	if ((rc = span_push(&c->a, &n_a, &c->cap_a, 0, len)) != 0)
		return rc;
	for (int r = 0; r < t->n_re; r++) {
		n_b = 0;
		for (size_t k = 0; k < n_a; k++) {
			/* each piece is matched on its own: lookarounds and
			 * "$" see its ends as the ends of the subject */
			const char *p = s + c->a[k].off;
			size_t plen = c->a[k].len, pos = 0, done = 0;

			while (pos < plen) {
				PCRE2_SIZE *ov;
				int m = match_at(t->re[r], c, p, plen, pos);

				if (m == PCRE2_ERROR_NOMATCH)
					break;
				if (m < 0) {
					log_error("tok: pre-tokenizer %s: regex "
					          "%d failed (pcre2 error %d)",
					          t->pre->name, r, m);
					return EPMOE_EINTERNAL;
				}
				ov = pcre2_get_ovector_pointer(c->md);
				if (ov[1] == ov[0]) {
					/* an empty match splits nothing: step
					 * over one character */
					pos = ov[0] + 1;
					while (pos < plen &&
					        ((uint8_t)p[pos] & 0xC0) == 0x80)
						pos++;
					continue;
				}
				if (ov[0] > done && (rc = span_push(&c->b, &n_b,
				        &c->cap_b, c->a[k].off + done,
				        ov[0] - done)) != 0)
					return rc;
				if ((rc = span_push(&c->b, &n_b, &c->cap_b,
				        c->a[k].off + ov[0], ov[1] - ov[0])) != 0)
					return rc;
				done = pos = ov[1];
			}
			if (done < plen && (rc = span_push(&c->b, &n_b,
			        &c->cap_b, c->a[k].off + done,
			        plen - done)) != 0)
				return rc;
		}
		{
			struct span *tv = c->a;
			size_t tc = c->cap_a;

			c->a = c->b;
			c->cap_a = c->cap_b;
			c->b = tv;
			c->cap_b = tc;
			n_a = n_b;
		}
	}
	*n_out = n_a;
	return 0;
}

int
tok_bpe_split(const struct tok *t, const char *s, size_t len, size_t **spans,
        size_t *n_spans)
{
	struct tok_bpe_ctx *c;
	size_t n = 0, *v = NULL;
	int rc;

	if (t->model != TOK_MODEL_BPE)
		return EPMOE_EINVAL;
	if ((rc = tok_bpe_ctx_new(t, &c)) != 0)
		return rc;
	if (len > 0 && (rc = pre_split(t, c, s, len, &n)) == 0 && n > 0) {
		if ((v = malloc(2 * n * sizeof(*v))) == NULL) {
			rc = EPMOE_ENOMEM;
		} else {
			for (size_t i = 0; i < n; i++) {
				v[2 * i] = c->a[i].off;
				v[2 * i + 1] = c->a[i].len;
			}
		}
	}
	tok_bpe_ctx_free(c);
	if (rc == 0) {
		*spans = v;
		*n_spans = n;
	}
	return rc;
}

/* Queues the merge of symbols left and right if "left right" has a rank. */
static int
try_pair(const struct tok *t, struct tok_bpe_ctx *c, int32_t left,
        int32_t right)
{
	const struct tok_sym *l, *r;
	struct tok_bigram b;
	size_t klen;
	int32_t rank;
	int rc;

	if (left < 0 || right < 0)
		return 0;
	l = &c->syms[left];
	r = &c->syms[right];
	klen = (size_t)l->n + 1 + r->n;
	if (klen > t->max_merge_len)
		return 0;
	if ((rc = grow((void **)&c->key, &c->cap_key, klen, 1)) != 0)
		return rc;
	memcpy(c->key, c->enc + l->start, l->n);
	c->key[l->n] = ' ';
	memcpy(c->key + l->n + 1, c->enc + r->start, r->n);
	if ((rank = strmap_get(&t->merges, c->key, klen)) < 0)
		return 0;
	b.key = -(double)rank;
	b.left = left;
	b.right = right;
	b.size = l->n + r->n;
	return tok_heap_push(&c->heap, &b);
}

/* Appends the token of symbol i, whose bytes are w[i..end). */
static int
emit(const struct tok *t, struct tok_bpe_ctx *c, const char *w, int32_t i,
        size_t end, struct tok_ivec *out)
{
	const struct tok_sym *sym = &c->syms[i];
	int32_t id = strmap_get(&t->vocab, c->enc + sym->start, sym->n);
	int rc;

	if (id >= 0)
		return tok_ivec_push(out, id);
	for (size_t k = (size_t)i; k < end; k++) {
		id = t->byte_id[(uint8_t)w[k]];
		if (id < 0)
			id = t->unk;
		if (id < 0) {
			log_debug("tok: byte 0x%02x has no token: dropped",
			          (uint8_t)w[k]);
			continue;
		}
		if ((rc = tok_ivec_push(out, id)) != 0)
			return rc;
	}
	return 0;
}

/* Encodes one pre-tokenized piece. */
static int
encode_word(const struct tok *t, struct tok_bpe_ctx *c, const char *w,
        size_t wlen, struct tok_ivec *out)
{
	size_t elen = 0;
	struct tok_bigram b;
	int rc;

	if ((rc = grow((void **)&c->enc, &c->cap_enc, 2 * wlen, 1)) != 0 ||
	        (rc = grow((void **)&c->syms, &c->cap_syms, wlen,
	        sizeof(*c->syms))) != 0)
		return rc;
	/* initial symbol i is byte i: a merged symbol keeps the index of its
	 * first byte and spans up to its next symbol's */
	for (size_t i = 0; i < wlen; i++) {
		size_t n = tok_bpe_byte_utf8((uint8_t)w[i], c->enc + elen);

		c->syms[i].start = (uint32_t)elen;
		c->syms[i].n = (uint32_t)n;
		c->syms[i].prev = (int32_t)i - 1;
		c->syms[i].next = i + 1 == wlen ? -1 : (int32_t)i + 1;
		elen += n;
	}
	if (t->ignore_merges) {
		int32_t id = strmap_get(&t->vocab, c->enc, elen);

		if (id >= 0)
			return tok_ivec_push(out, id);
	}
	c->heap.n = 0;
	for (size_t i = 1; i < wlen; i++) {
		if ((rc = try_pair(t, c, (int32_t)i - 1, (int32_t)i)) != 0)
			return rc;
	}
	while (tok_heap_pop(&c->heap, &b)) {
		struct tok_sym *l = &c->syms[b.left], *r = &c->syms[b.right];

		/* sizes only grow, so equal size means the same text */
		if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
			continue;
		l->n += r->n;
		r->n = 0;
		l->next = r->next;
		if (r->next >= 0)
			c->syms[r->next].prev = b.left;
		if ((rc = try_pair(t, c, l->prev, b.left)) != 0 ||
		        (rc = try_pair(t, c, b.left, l->next)) != 0)
			return rc;
	}
	for (int32_t i = 0; i != -1; i = c->syms[i].next) {
		int32_t nx = c->syms[i].next;

		if ((rc = emit(t, c, w, i, nx < 0 ? wlen : (size_t)nx,
		        out)) != 0)
			return rc;
	}
	return 0;
}

int
tok_bpe_encode(const struct tok *t, struct tok_bpe_ctx *c, const char *s,
        size_t len, struct tok_ivec *out)
{
	size_t n;
	int rc;

	if (len == 0)
		return 0;
	if (len > UINT32_MAX / 2)
		return EPMOE_ERANGE;
	if ((rc = pre_split(t, c, s, len, &n)) != 0)
		return rc;
	for (size_t i = 0; i < n; i++) {
		if ((rc = encode_word(t, c, s + c->a[i].off, c->a[i].len,
		        out)) != 0)
			return rc;
	}
	return 0;
}
