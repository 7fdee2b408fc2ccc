/* Datasets of the load generator (see lg_dataset.h): synthetic random
 * prompts, a prompts file, a ShareGPT JSON file.  Reads files and counts
 * tokens through the caller's counter; never talks to a server itself. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "cli.h"
#include "err.h"
#include "lg_arrival.h"
#include "lg_dataset.h"
#include "rng.h"

/* ShareGPT filter (vLLM's is_valid_sequence defaults). */
#define SG_MIN_LEN 4
#define SG_MAX_PROMPT 1024
#define SG_MAX_TOTAL 2048

static int
fail(char *err, size_t size, int code, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL && size > 0) {
		va_start(ap, fmt);
		vsnprintf(err, size, fmt, ap);
		va_end(ap);
	}
	return code;
}

static const char *const words[] = {
	"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "time",
	"river", "mountain", "light", "small", "house", "stone", "green",
	"water", "open", "people", "city", "morning", "under", "between",
	"story", "number", "winter", "garden", "signal", "expert", "router",
	"token", "model", "ocean", "paper", "window", "silver", "forest",
	"market", "simple", "bright", "engine", "travel", "answer", "little",
	"moment", "yellow", "music", "table", "north", "orange", "summer",
	"purple", "animal", "letter", "mirror", "planet", "bridge", "castle",
};
#define N_WORDS (sizeof(words) / sizeof(words[0]))
#define MAX_WORD_LEN 8

char *
lg_words(uint64_t seed, uint64_t idx, uint32_t n_words)
{
	uint64_t s = rng_mix64(seed ^ rng_mix64(idx ^ 0x5eed));
	size_t len = 0;
	char *p = malloc((size_t)n_words * (MAX_WORD_LEN + 1) + 1);

	if (p == NULL)
		return NULL;
	for (uint32_t i = 0; i < n_words; i++) {
		const char *w = words[rng_splitmix64(&s) % N_WORDS];
		size_t wl = strlen(w);
		if (i > 0)
			p[len++] = ' ';
		memcpy(p + len, w, wl);
		len += wl;
	}
	p[len] = '\0';
	return p;
}

const char *
lg_data_kind_name(enum lg_data_kind k)
{
	switch (k) {
	case LG_DATA_RANDOM: return "random";
	case LG_DATA_PROMPTS: return "prompts";
	case LG_DATA_SHAREGPT: return "sharegpt";
	}
	return "?";
}

int
lg_data_kind_parse(const char *s, enum lg_data_kind *out)
{
	if (strcmp(s, "random") == 0)
		*out = LG_DATA_RANDOM;
	else if (strcmp(s, "prompts") == 0)
		*out = LG_DATA_PROMPTS;
	else if (strcmp(s, "sharegpt") == 0)
		*out = LG_DATA_SHAREGPT;
	else
		return EPMOE_EINVAL;
	return 0;
}

void
lg_dataset_fini(struct lg_dataset *d)
{
	if (d == NULL)
		return;
	for (size_t i = 0; i < d->n; i++)
		free(d->items[i].prompt);
	free(d->items);
	memset(d, 0, sizeof(*d));
}

/* Words in text (runs of non-space bytes). */
static size_t
count_words(const char *t)
{
	size_t n = 0;
	int in = 0;

	for (; *t; t++) {
		int sp = *t == ' ' || *t == '\n' || *t == '\t' || *t == '\r';
		if (!sp && !in)
			n++;
		in = !sp;
	}
	return n;
}

static uint32_t
tokens_of(const struct lg_data_cfg *cfg, const char *text)
{
	long n = cfg->count ? cfg->count(cfg->count_ud, text) : -1;

	if (n < 0)
		n = lround((double)count_words(text) * cfg->tokens_per_word);
	return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

/* Uniform integer in [floor(m(1-r)), ceil(m(1+r))], at least 1. */
static uint32_t
draw_len(uint64_t *s, uint32_t mean, double r)
{
	double lo = floor(mean * (1 - r)), hi = ceil(mean * (1 + r));
	double v;

	if (lo < 1)
		lo = 1;
	if (hi < lo)
		hi = lo;
	v = lo + floor(lg_uniform(s) * (hi - lo + 1));
	return v > hi ? (uint32_t)hi : (uint32_t)v;
}

static int
push(struct lg_dataset *d, size_t *cap, char *prompt, uint32_t in_len,
        uint32_t out_len)
{
	if (d->n == *cap) {
		size_t nc = *cap ? *cap * 2 : 64;
		struct lg_item *ni = realloc(d->items, nc * sizeof(*ni));
		if (ni == NULL)
			return EPMOE_ENOMEM;
		d->items = ni;
		*cap = nc;
	}
	d->items[d->n].prompt = prompt;
	d->items[d->n].prompt_len = in_len;
	d->items[d->n].output_len = out_len;
	d->n++;
	return 0;
}

static int
make_random(const struct lg_data_cfg *cfg, struct lg_dataset *d, char *err,
        size_t err_size)
{
	uint64_t s = cfg->seed;
	size_t cap = 0;

	for (size_t i = 0; i < cfg->n; i++) {
		uint32_t in = draw_len(&s, cfg->input_len, cfg->range_ratio);
		uint32_t out = draw_len(&s, cfg->output_len, cfg->range_ratio);
		long nw = lround((double)in / cfg->tokens_per_word);
		char *p;
		if (nw < 1)
			nw = 1;
		if ((p = lg_words(cfg->seed, i, (uint32_t)nw)) == NULL ||
		        push(d, &cap, p, in, out) != 0) {
			free(p);
			return fail(err, err_size, EPMOE_ENOMEM, "out of memory");
		}
	}
	return 0;
}

static int
read_file(const char *path, char **buf, size_t *len, char *err,
        size_t err_size)
{
	struct stat st;
	int rc;

	if (stat(path, &st) != 0)
		return fail(err, err_size, EPMOE_EIO, "cannot read %s: %s", path,
		        strerror(errno));
	if (!S_ISREG(st.st_mode))
		return fail(err, err_size, EPMOE_EINVAL, "%s is not a file", path);
	if ((uint64_t)st.st_size > LG_DATA_MAX_FILE)
		return fail(err, err_size, EPMOE_ERANGE, "%s is larger than %u MiB",
		        path, LG_DATA_MAX_FILE >> 20);
	if ((rc = cli_read_file(path, buf, len)) != 0)
		return fail(err, err_size, rc == EPMOE_ENOMEM ? EPMOE_ENOMEM :
		        EPMOE_EIO, "cannot read %s: %s", path, epmoe_strerror(rc));
	return 0;
}

static int
load_prompts(const struct lg_data_cfg *cfg, struct lg_dataset *d, char *err,
        size_t err_size)
{
	char *buf, *line, *save;
	size_t len, cap = 0;
	int rc;

	if ((rc = read_file(cfg->path, &buf, &len, err, err_size)) != 0)
		return rc;
	if (memchr(buf, '\0', len) != NULL) {
		free(buf);
		return fail(err, err_size, EPMOE_EINVAL, "%s holds NUL bytes: not "
		        "a text file of prompts", cfg->path);
	}
	for (line = strtok_r(buf, "\n", &save); line != NULL && d->n < cfg->n;
	        line = strtok_r(NULL, "\n", &save)) {
		size_t l = strlen(line);
		char *p;
		while (l > 0 && (line[l - 1] == '\r' || line[l - 1] == ' '))
			line[--l] = '\0';
		if (l == 0)
			continue;
		if ((p = strdup(line)) == NULL ||
		        push(d, &cap, p, tokens_of(cfg, p), cfg->output_len) != 0) {
			free(p);
			free(buf);
			return fail(err, err_size, EPMOE_ENOMEM, "out of memory");
		}
	}
	free(buf);
	if (d->n == 0)
		return fail(err, err_size, EPMOE_EINVAL, "no prompts in %s (one per "
		        "line)", cfg->path);
	return 0;
}

/* The speaker and the text of a ShareGPT turn (either spelling). */
static int
turn_of(const cJSON *t, const char **who, const char **text)
{
	const cJSON *w = cJSON_GetObjectItemCaseSensitive(t, "from");
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, "value");

	if (w == NULL)
		w = cJSON_GetObjectItemCaseSensitive(t, "role");
	if (v == NULL)
		v = cJSON_GetObjectItemCaseSensitive(t, "content");
	if (!cJSON_IsString(w) || !cJSON_IsString(v))
		return -1;
	*who = w->valuestring;
	*text = v->valuestring;
	return 0;
}

static int
is_user(const char *w)
{
	return strcmp(w, "human") == 0 || strcmp(w, "user") == 0;
}

static int
is_reply(const char *w)
{
	return strcmp(w, "gpt") == 0 || strcmp(w, "assistant") == 0 ||
	        strcmp(w, "chatgpt") == 0 || strcmp(w, "bard") == 0 ||
	        strcmp(w, "bing") == 0;
}

static int
load_sharegpt(const struct lg_data_cfg *cfg, struct lg_dataset *d, char *err,
        size_t err_size)
{
	char *buf;
	size_t len, cap = 0, idx = 0;
	cJSON *root;
	const cJSON *conv;
	int rc;

	if ((rc = read_file(cfg->path, &buf, &len, err, err_size)) != 0)
		return rc;
	root = cJSON_ParseWithLength(buf, len);
	if (root == NULL) {
		const char *at = cJSON_GetErrorPtr();
		size_t off = at && at >= buf && at <= buf + len ? (size_t)(at - buf) : 0;
		free(buf);
		return fail(err, err_size, EPMOE_EINVAL, "%s is not JSON (error near "
		        "byte %zu)", cfg->path, off);
	}
	free(buf);
	if (!cJSON_IsArray(root)) {
		cJSON_Delete(root);
		return fail(err, err_size, EPMOE_EINVAL, "%s: a ShareGPT file is a "
		        "JSON array of {\"conversations\": [...]} objects", cfg->path);
	}
	cJSON_ArrayForEach(conv, root) {
		const cJSON *turns, *t;
		const char *prompt = NULL, *reply = NULL, *who, *text;
		uint32_t in, out;
		char *p;

		if (d->n >= cfg->n)
			break;
		idx++;
		turns = cJSON_GetObjectItemCaseSensitive(conv, "conversations");
		if (turns == NULL)
			turns = cJSON_GetObjectItemCaseSensitive(conv, "conversation");
		if (!cJSON_IsArray(turns)) {
			d->skipped++;
			continue;
		}
		/* the first user turn and the reply right after it */
		cJSON_ArrayForEach(t, turns) {
			if (turn_of(t, &who, &text) != 0)
				break;
			if (prompt == NULL) {
				if (is_user(who))
					prompt = text;
			} else {
				if (is_reply(who))
					reply = text;
				break;
			}
		}
		if (prompt == NULL || reply == NULL || prompt[0] == '\0') {
			d->skipped++;
			continue;
		}
		in = tokens_of(cfg, prompt);
		out = cfg->output_len_set ? cfg->output_len : tokens_of(cfg, reply);
		if (in < SG_MIN_LEN || out < SG_MIN_LEN || in > SG_MAX_PROMPT ||
		        (uint64_t)in + out > SG_MAX_TOTAL) {
			d->skipped++;
			continue;
		}
		if ((p = strdup(prompt)) == NULL || push(d, &cap, p, in, out) != 0) {
			free(p);
			cJSON_Delete(root);
			return fail(err, err_size, EPMOE_ENOMEM, "out of memory");
		}
	}
	cJSON_Delete(root);
	if (d->n == 0)
		return fail(err, err_size, EPMOE_EINVAL, "%s: no usable conversation "
		        "among %zu (each needs a user turn followed by a reply, "
		        "%d to %d tokens)", cfg->path, idx, SG_MIN_LEN, SG_MAX_PROMPT);
	return 0;
}

int
lg_dataset_load(const struct lg_data_cfg *cfg, struct lg_dataset *out,
        char *err, size_t err_size)
{
	struct lg_dataset d = { 0 };
	struct lg_data_cfg c = *cfg;
	int rc;

	if (c.n == 0)
		return fail(err, err_size, EPMOE_EINVAL, "no items asked for");
	if (c.n > LG_DATA_MAX_ITEMS)
		c.n = LG_DATA_MAX_ITEMS;
	if (!(c.tokens_per_word > 0) || !isfinite(c.tokens_per_word))
		return fail(err, err_size, EPMOE_EINVAL, "tokens per word must be > 0");
	if (c.kind != LG_DATA_RANDOM && c.path == NULL)
		return fail(err, err_size, EPMOE_EINVAL, "the %s dataset needs a file",
		        lg_data_kind_name(c.kind));
	switch (c.kind) {
	case LG_DATA_RANDOM:
		if (c.input_len == 0 || c.output_len == 0)
			return fail(err, err_size, EPMOE_EINVAL, "random lengths must be "
			        ">= 1");
		if (!(c.range_ratio >= 0 && c.range_ratio < 1))
			return fail(err, err_size, EPMOE_EINVAL, "the range ratio must be "
			        "in [0, 1)");
		rc = make_random(&c, &d, err, err_size);
		break;
	case LG_DATA_PROMPTS:
		if (c.output_len == 0)
			return fail(err, err_size, EPMOE_EINVAL, "the output length must "
			        "be >= 1");
		rc = load_prompts(&c, &d, err, err_size);
		break;
	case LG_DATA_SHAREGPT:
		rc = load_sharegpt(&c, &d, err, err_size);
		break;
	default:
		return fail(err, err_size, EPMOE_EINVAL, "unknown dataset kind");
	}
	if (rc != 0) {
		lg_dataset_fini(&d);
		return rc;
	}
	*out = d;
	return 0;
}
