/* Sampling the next token from a row of logits: greedy, temperature,
 * top-k, top-p, min-p, with a per-request seeded generator (the same seed
 * gives the same tokens), log-probabilities for the API, and stop strings
 * with hold-back for streaming.  Max-token limits are the caller's.
 *
 * Filters apply in this order (temperature before top-p and min-p, as in
 * Hugging Face transformers; llama.cpp's default chain applies the
 * temperature last, so its nucleus differs when T != 1):
 *   1. top-k: keep the k largest logits (ties: lower id first);
 *   2. softmax with temperature: p_i ~ exp((l_i - max) / T);
 *   3. top-p: keep the smallest prefix of the tokens sorted by p whose
 *      mass reaches top_p (the token that crosses top_p is kept);
 *   4. min-p: keep tokens with p_i >= min_p * max_j p_j;
 * then draw from what is left, renormalised.  Temperature 0 (or so small
 * that 1/T overflows a float, or top_k 1) is greedy: argmax, ties to the
 * lower id.
 *
 * NaN logits are never chosen; if any logit is +inf the choice is the
 * lowest-id +inf logit, as in greedy mode.  A row without a single
 * finite or +inf logit is EPMOE_EINVAL.
 *
 * Cost per token: a few O(n_vocab) passes (one expf per candidate), an
 * expected-O(n) quickselect for top-k and another, carrying the mass,
 * for top-p; the vocabulary is never sorted.  The draw walks the
 * survivors in id order (sorting them when they are few, else scanning
 * the vocabulary).
 */
#ifndef EPMOE_SAMPLE_H
#define EPMOE_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

struct sample_params {
	float temperature; /* 0 = greedy (default 1.0 from the API) */
	int32_t top_k;     /* 0 = off */
	float top_p;       /* 1 = off */
	float min_p;       /* 0 = off */
	uint64_t seed;
};

/* Defaults of the OpenAI API: temperature 1, top_p 1, top_k off, min_p off,
 * seed 0 (the caller sets a random or request-derived one). */
void sample_params_default(struct sample_params *p);

/* Per-sequence sampler state: the generator. */
struct sampler {
	struct sample_params p;
	uint64_t rng[4]; /* xoshiro256** state, seeded by splitmix64(seed) */
	/* scratch, grown as needed, freed by sampler_fini */
	uint32_t *idx;
	float *prob;
	size_t cap;
};

/* Returns 0 or EPMOE_EINVAL (temperature < 0 or not finite, top_p outside
 * (0,1], min_p outside [0,1], top_k < 0); s is untouched on failure.
 * Call sampler_fini when done (safe on a zeroed sampler). */
int sampler_init(struct sampler *s, const struct sample_params *p);
void sampler_fini(struct sampler *s);

/* Picks a token from logits[0..n_vocab).  Deterministic for the sampler's
 * seed and call sequence (each non-greedy call draws one random number).
 * Returns the id (>= 0) or a negative EPMOE_E* code: EPMOE_EINVAL (empty
 * or unusable row, n_vocab > INT32_MAX), EPMOE_ENOMEM.  When logprob is
 * not NULL, writes log softmax(logits)[id] at temperature 1 (what the
 * OpenAI API reports), whatever the sampling parameters. */
int32_t sampler_next(struct sampler *s, const float *logits, size_t n_vocab,
        float *logprob);

/* Writes into idx[0..) the ids of the k largest logits, best first (ties:
 * lower id first, NaN skipped), using idx[0..n_vocab) as scratch (it must
 * hold n_vocab entries).  Returns how many ids lead idx: min(k, number of
 * non-NaN logits).  O(n_vocab + k log k) expected; the same selection the
 * sampler uses for top-k and top-p. */
size_t sample_top_k(const float *logits, size_t n_vocab, size_t k,
        uint32_t *idx);

/* log softmax of logits at id (temperature 1); NaN logits count as
 * absent.  -INFINITY when id is out of range or its logit is NaN. */
float sample_logprob(const float *logits, size_t n_vocab, int32_t id);

/* Writes the n best ids by logit (ties: lower id first, NaN skipped) into
 * ids and their log-probabilities into lps; returns how many were written
 * (<= n).  O(n_vocab * n) worst case, allocates nothing. */
size_t sample_top_logprobs(const float *logits, size_t n_vocab, size_t n,
        int32_t *ids, float *lps);

/* Looks for any of the stop strings in text[0..len) (empty or NULL stop
 * strings are ignored).  Returns the offset of the earliest match, or -1
 * if none.  *partial (may be NULL) is set to 0 on a match, else to the
 * length of the longest suffix of text that is a proper prefix of a stop
 * string (text that must be held back while streaming). */
long sample_stop_match(const char *text, size_t len, const char *const *stops,
        size_t n_stops, size_t *partial);

/* Streaming stop-string filter: text goes in piece by piece, text that can
 * no longer be part of a stop string comes out, and the stream ends at
 * the first stop string (which is not emitted), even one spanning pieces. */
struct sample_stop {
	const char *const *stops; /* borrowed: alive as long as the filter */
	size_t n_stops;
	char *buf;  /* [0, off) last emitted, [off, len) held back */
	size_t off, len, cap;
	int stopped;
};

/* Borrows stops[0..n_stops). */
void sample_stop_init(struct sample_stop *st, const char *const *stops,
        size_t n_stops);
void sample_stop_fini(struct sample_stop *st);

/* Appends text[0..len) and sets *emit / *emit_len to the text to send now
 * (borrowed from st: valid until the next call on st).  Returns 1 once a
 * stop string was found (the text before it is emitted; everything after
 * it, now and in later pushes, is dropped), 0 if not, or EPMOE_ENOMEM (then
 * nothing is emitted and the text is not taken). */
int sample_stop_push(struct sample_stop *st, const char *text, size_t len,
        const char **emit, size_t *emit_len);

/* End of generation without a stop string: emits the held-back text. */
void sample_stop_flush(struct sample_stop *st, const char **emit,
        size_t *emit_len);

#endif
