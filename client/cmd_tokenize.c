/* epmoe tokenize: prints the token ids of a text (and optionally each
 * token's piece) using the tokenizer stored in a model's GGUF metadata.
 * Reads only the metadata; no weights are loaded. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "err.h"
#include "gguf.h"
#include "tok.h"

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe tokenize --model FILE [options] TEXT\n"
	        "       epmoe tokenize --model FILE [options] -f TEXTFILE\n"
	        "\n"
	        "Prints the token ids of TEXT, comma-separated on one line, as the\n"
	        "model's tokenizer (tokenizer.ggml.* metadata) encodes it.  BOS and\n"
	        "EOS are added when the model says so.\n"
	        "\n"
	        "options:\n"
	        "  -m, --model FILE  the GGUF model (only its metadata is read)\n"
	        "  -f, --file FILE   read the text from FILE ('-': stdin)\n"
	        "      --no-bos      do not add BOS\n"
	        "      --special     parse control tokens written in the text\n"
	        "                    (e.g. <s>, <|im_start|>) as their ids\n"
	        "      --pieces      then print one line per token: id, a tab and\n"
	        "                    its piece (control bytes and bytes that are not\n"
	        "                    UTF-8 shown as \\n, \\t, \\xNN)\n"
	        "  -h, --help        show this help\n");
}

static char *
read_all(const char *path, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	size_t n = 0, cap = 65536;
	char *buf;

	if (f == NULL)
		return NULL;
	if ((buf = malloc(cap)) == NULL)
		goto fail;
	for (;;) {
		size_t r = fread(buf + n, 1, cap - n, f);

		n += r;
		if (n < cap) {
			if (ferror(f))
				goto fail;
			break;
		}
		{
			char *nb = realloc(buf, cap * 2);

			if (nb == NULL)
				goto fail;
			buf = nb;
			cap *= 2;
		}
	}
	if (f != stdin)
		fclose(f);
	*len = n;
	return buf;
fail:
	free(buf);
	if (f != stdin)
		fclose(f);
	return NULL;
}

/* Length of the valid UTF-8 character at s[0..n), or 0. */
static size_t
utf8_char(const unsigned char *s, size_t n)
{
	size_t need;

	if (s[0] >= 0xC2 && s[0] <= 0xDF)
		need = 2;
	else if (s[0] >= 0xE0 && s[0] <= 0xEF)
		need = 3;
	else if (s[0] >= 0xF0 && s[0] <= 0xF4)
		need = 4;
	else
		return 0;
	if (n < need)
		return 0;
	for (size_t i = 1; i < need; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
	}
	if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] > 0x9F) ||
	        (s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] > 0x8F))
		return 0;
	return need;
}

static void
print_piece(const char *p, size_t n)
{
	const unsigned char *s = (const unsigned char *)p;

	for (size_t i = 0; i < n;) {
		size_t k;

		if (s[i] == '\n') {
			fputs("\\n", stdout);
		} else if (s[i] == '\t') {
			fputs("\\t", stdout);
		} else if (s[i] == '\r') {
			fputs("\\r", stdout);
		} else if (s[i] == '\\') {
			fputs("\\\\", stdout);
		} else if (s[i] < 0x20 || s[i] == 0x7f) {
			printf("\\x%02x", s[i]);
		} else if (s[i] < 0x80) {
			putchar(s[i]);
		} else if ((k = utf8_char(s + i, n - i)) > 0) {
			fwrite(s + i, 1, k, stdout);
			i += k;
			continue;
		} else {
			printf("\\x%02x", s[i]);
		}
		i++;
	}
}

int
cmd_tokenize(int argc, char **argv)
{
	enum { OPT_NO_BOS = 256, OPT_SPECIAL, OPT_PIECES };
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "file", required_argument, NULL, 'f' },
		{ "no-bos", no_argument, NULL, OPT_NO_BOS },
		{ "special", no_argument, NULL, OPT_SPECIAL },
		{ "pieces", no_argument, NULL, OPT_PIECES },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *model = NULL, *file = NULL;
	unsigned flags = TOK_ADD_SPECIAL;
	bool pieces = false;
	char err[512] = "", *text = NULL, *buf = NULL;
	size_t len = 0, n_ids = 0;
	struct gguf_file *g = NULL;
	struct tok *t = NULL;
	int32_t *ids = NULL;
	int c, rc, status = 1;

	optind = 1;
	while ((c = getopt_long(argc, argv, "m:f:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'f': file = optarg; break;
		case OPT_NO_BOS: flags &= ~TOK_ADD_BOS; break;
		case OPT_SPECIAL: flags |= TOK_PARSE_SPECIAL; break;
		case OPT_PIECES: pieces = true; break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (model == NULL || (file == NULL) == (optind == argc) ||
	        argc - optind > 1) {
		fprintf(stderr, "epmoe tokenize: need --model and exactly one of "
		        "TEXT or -f FILE\n\n");
		usage(stderr);
		return 2;
	}
	if (file != NULL) {
		if ((buf = read_all(file, &len)) == NULL) {
			fprintf(stderr, "epmoe tokenize: cannot read %s\n", file);
			return 1;
		}
		text = buf;
	} else {
		text = argv[optind];
		len = strlen(text);
	}
	if ((rc = gguf_open(&g, model, err, sizeof(err))) != 0) {
		fprintf(stderr, "epmoe tokenize: %s\n", err);
		goto out;
	}
	if ((rc = tok_load(&t, g, err, sizeof(err))) != 0) {
		fprintf(stderr, "epmoe tokenize: %s: %s\n", model, err);
		goto out;
	}
	if ((rc = tok_encode(t, text, len, flags, &ids, &n_ids)) != 0) {
		fprintf(stderr, "epmoe tokenize: %s\n", epmoe_strerror(rc));
		goto out;
	}
	for (size_t i = 0; i < n_ids; i++)
		printf("%s%d", i ? "," : "", ids[i]);
	putchar('\n');
	if (pieces) {
		char *piece = malloc(tok_max_piece_len(t) + 1);

		if (piece == NULL)
			goto out;
		for (size_t i = 0; i < n_ids; i++) {
			int n = tok_piece(t, ids[i], piece,
			        tok_max_piece_len(t) + 1, TOK_DECODE_SPECIAL);

			printf("%d\t", ids[i]);
			if (n > 0)
				print_piece(piece, (size_t)n);
			putchar('\n');
		}
		free(piece);
	}
	status = fflush(stdout) == 0 ? 0 : 1;
out:
	free(ids);
	tok_free(t);
	gguf_close(g);
	free(buf);
	return status;
}
