/* Datasets of the load generator: what each request asks and how many
 * tokens it should generate.
 *
 *   random    synthetic prompts of random words, input and output lengths
 *             drawn uniformly from [L(1-r), L(1+r)] (vLLM's random dataset
 *             with --random-range-ratio r)
 *   prompts   a text file, one prompt per non-empty line, in file order;
 *             every request generates output_len tokens
 *   sharegpt  a ShareGPT-format JSON array of conversations: the first
 *             user turn ("from": "human" / "role": "user") is the prompt,
 *             the length of the reply that follows it ("gpt" / "assistant")
 *             the output length; in file order; pairs with a prompt or a
 *             reply under 4 tokens, a prompt over 1024 or both over 2048
 *             are skipped (vLLM's filter)
 *
 * Token counts come from a caller-supplied counter (the server's
 * tokenizer, say) or, when it cannot tell, from words x tokens_per_word.
 * Requests use the items round-robin.  No network I/O here.
 */
#ifndef EPMOE_LG_DATASET_H
#define EPMOE_LG_DATASET_H

#include <stddef.h>
#include <stdint.h>

enum lg_data_kind { LG_DATA_RANDOM, LG_DATA_PROMPTS, LG_DATA_SHAREGPT };

/* Largest dataset file read, and most items kept. */
#define LG_DATA_MAX_FILE (256u << 20)
#define LG_DATA_MAX_ITEMS 65536

struct lg_item {
	char *prompt;         /* owned, NUL-terminated */
	uint32_t prompt_len;  /* tokens (counted or estimated) */
	uint32_t output_len;  /* tokens to generate (max_tokens) */
};

struct lg_dataset {
	struct lg_item *items; /* [n] */
	size_t n;
	size_t skipped;        /* sharegpt: conversations left out */
};

/* Tokens in text, or a negative value when the counter cannot tell. */
typedef long (*lg_count_fn)(void *ud, const char *text);

struct lg_data_cfg {
	enum lg_data_kind kind;
	const char *path;         /* prompts, sharegpt */
	size_t n;                 /* items wanted (random: made; files: at
	                           * most this many read), >= 1 */
	uint32_t input_len;       /* random: mean prompt tokens, >= 1 */
	uint32_t output_len;      /* random: mean; prompts: every request;
	                           * sharegpt: used when output_len_set */
	int output_len_set;       /* sharegpt: output_len overrides the reply */
	double range_ratio;       /* random: [0, 1) */
	uint64_t seed;            /* random */
	double tokens_per_word;   /* > 0; estimates when count says nothing */
	lg_count_fn count;        /* may be NULL */
	void *count_ud;
};

/* Loads or makes the dataset.  On success *out is the caller's:
 * lg_dataset_fini.  On failure a message is in err[0..err_size) and the
 * code is EPMOE_EINVAL (bad settings, a file that is not what it should
 * be, nothing usable in it), EPMOE_EIO (cannot read), EPMOE_ERANGE (file
 * too large) or EPMOE_ENOMEM. */
int lg_dataset_load(const struct lg_data_cfg *cfg, struct lg_dataset *out,
        char *err, size_t err_size);
void lg_dataset_fini(struct lg_dataset *d);

/* Random words of the synthetic prompts: n_words of them, deterministic
 * for (seed, idx).  The caller frees the result; NULL when out of memory. */
char *lg_words(uint64_t seed, uint64_t idx, uint32_t n_words);

/* Name of a kind ("random", "prompts", "sharegpt") and back (0 or
 * EPMOE_EINVAL). */
const char *lg_data_kind_name(enum lg_data_kind k);
int lg_data_kind_parse(const char *s, enum lg_data_kind *out);

#endif
