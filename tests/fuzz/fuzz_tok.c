/* libFuzzer target: the tokenizers (common/tok*.c) on any bytes a prompt
 * can carry.  The first byte picks the tokenizer (SentencePiece, or
 * byte-level BPE with one of the pre-tokenizers, whose PCRE2 regexes are
 * what the input exercises) and the flags; the rest is the text.
 * Properties: no crash or leak; every id is in range; decoding the ids
 * gives back exactly the text for byte-level BPE (lossless); the
 * streaming decoder emits only valid UTF-8. */
#include <stdint.h>
#include <string.h>

#include "err.h"
#include "fuzz_util.h"
#include "log.h"
#include "mkmodel.h"
#include "tok.h"
#include "tok_int.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const pres[] = { "default", "gpt2", "llama3", "qwen2",
	"deepseek-llm", "deepseek-coder", "falcon", "starcoder" };
#define N_PRE (sizeof(pres) / sizeof(pres[0]))
static struct tok *toks[N_PRE + 1]; /* [0] SentencePiece, then BPE by pre */

static struct tok *
make_spm(void)
{
	struct mkmodel_vocab mv;
	struct tok_vocab v;
	struct tok *t = NULL;

	if (mkmodel_vocab_init(&mv, 1000) != 0)
		abort();
	tok_vocab_init(&v, TOK_MODEL_SPM);
	v.n_tokens = mv.n;
	v.tokens = (const char *const *)mv.tokens;
	v.scores = mv.scores;
	v.types = mv.types;
	v.bos_id = 1;
	v.eos_id = 2;
	v.unk_id = 0;
	if (tok_new_from_vocab(&t, &v, NULL, 0) != 0)
		abort();
	mkmodel_vocab_fini(&mv);
	return t;
}

/* The 256 byte characters, a few merged pieces and a control token. */
static struct tok *
make_bpe(const char *pre)
{
	static const char *const extra[] = { "\xc4\xa0t", "he", "\xc4\xa0the",
		"in", "\xc4\xa0w", "or", "\xc4\xa0wor", "ld", "\xc4\xa0world",
		"<|endoftext|>" };
	static const char *const merges[] = { "\xc4\xa0 t", "h e",
		"\xc4\xa0t he", "i n", "\xc4\xa0 w", "o r", "\xc4\xa0w or", "l d",
		"\xc4\xa0wor ld" };
	enum { N = 256 + sizeof(extra) / sizeof(extra[0]) };
	static char bytes[256][3];
	const char *tokens[N];
	int32_t types[N];
	struct tok_vocab v;
	struct tok *t = NULL;

	for (int i = 0; i < 256; i++) {
		size_t n = tok_bpe_byte_utf8((uint8_t)i, bytes[i]);

		bytes[i][n] = '\0';
		tokens[i] = bytes[i];
		types[i] = TOK_TYPE_NORMAL;
	}
	for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
		tokens[256 + i] = extra[i];
		types[256 + i] = TOK_TYPE_NORMAL;
	}
	types[N - 1] = TOK_TYPE_CONTROL;
	tok_vocab_init(&v, TOK_MODEL_BPE);
	v.n_tokens = N;
	v.tokens = tokens;
	v.types = types;
	v.n_merges = sizeof(merges) / sizeof(merges[0]);
	v.merges = merges;
	v.pre = pre;
	v.eos_id = N - 1;
	if (tok_new_from_vocab(&t, &v, NULL, 0) != 0)
		abort();
	return t;
}

/* Bad files are expected: their warnings would only slow the run. */
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_set_level(LOG_ERROR);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tok *t;
	struct tok_stream st;
	unsigned flags;
	int32_t *ids = NULL;
	size_t n = 0, sel;
	const char *text;
	size_t len;
	char *out = NULL;
	size_t out_len = 0;

	if (size < 1 || size > 8192)
		return 0;
	sel = (data[0] & 0x0f) % (N_PRE + 1);
	if (toks[sel] == NULL)
		toks[sel] = sel == 0 ? make_spm() : make_bpe(pres[sel - 1]);
	t = toks[sel];
	flags = (data[0] & 0x10 ? TOK_ADD_SPECIAL : 0) |
	        (data[0] & 0x20 ? TOK_PARSE_SPECIAL : 0);
	text = (const char *)data + 1;
	len = size - 1;
	if (tok_encode(t, text, len, flags, &ids, &n) != 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		FZ_CHECK(ids[i] >= 0 && (uint32_t)ids[i] < tok_n_vocab(t),
		        "id %d out of range", ids[i]);
	if (tok_decode(t, ids, n, 0, &out, &out_len) == 0) {
		if (sel > 0 && !(flags & TOK_PARSE_SPECIAL))
			FZ_CHECK(out_len == len && memcmp(out, text, len) == 0,
			        "byte-level BPE lost bytes: %zu in, %zu out", len,
			        out_len);
		free(out);
	}
	if (tok_stream_init(&st, t, TOK_STREAM_SEQ_START) == 0) {
		const char *piece;
		size_t plen;

		for (size_t i = 0; i < n; i++) {
			if (tok_stream_push(&st, ids[i], &piece, &plen) == 0)
				FZ_CHECK(utf8_valid_prefix(piece, plen) == plen,
				        "stream piece is not valid UTF-8");
		}
		if (tok_stream_flush(&st, &piece, &plen) == 0)
			FZ_CHECK(utf8_valid_prefix(piece, plen) == plen,
			        "stream tail is not valid UTF-8");
		tok_stream_fini(&st);
	}
	free(ids);
	return 0;
}
