/* Sampling the next token from a row of logits: greedy, temperature,
 * top-k, top-p, min-p, with a per-request seeded generator (the same seed
 * gives the same tokens).  Stop strings and max-token limits are the
 * caller's (they depend on detokenized text); see sample_stop_match. */
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
 * seed from the caller (e.g. a random or request-derived one). */
void sample_params_default(struct sample_params *p);

/* Per-sequence sampler state: the generator. */
struct sampler {
	struct sample_params p;
	uint64_t rng[4]; /* xoshiro256** state */
	/* scratch, grown as needed, freed by sampler_fini */
	uint32_t *idx;
	float *prob;
	size_t cap;
};

/* Returns 0 or EPMOE_EINVAL (temperature < 0, top_p outside (0,1],
 * min_p outside [0,1], top_k < 0). */
int sampler_init(struct sampler *s, const struct sample_params *p);
void sampler_fini(struct sampler *s);

/* Picks a token from logits[0..n_vocab).  Deterministic for the sampler's
 * seed and call sequence.  Ties in greedy mode go to the lower id.
 * Returns the id (>= 0) or a negative EPMOE_E* code (ENOMEM). When
 * logprob is not NULL, writes log softmax(logits)[id] at temperature 1
 * (what the OpenAI API reports). */
int32_t sampler_next(struct sampler *s, const float *logits, size_t n_vocab,
        float *logprob);

/* log softmax of logits at id (temperature 1). */
float sample_logprob(const float *logits, size_t n_vocab, int32_t id);

/* Writes the n best ids by logit (ties: lower id first) into ids and their
 * log-probabilities into lps; returns how many were written (<= n). */
size_t sample_top_logprobs(const float *logits, size_t n_vocab, size_t n,
        int32_t *ids, float *lps);

/* Looks for any of the stop strings in text[0..len).  Returns the offset
 * of the earliest match and writes it, or -1 if none; *partial is set to
 * the length of the longest suffix of text that is a proper prefix of a
 * stop string (text that must be held back while streaming). */
long sample_stop_match(const char *text, size_t len, const char *const *stops,
        size_t n_stops, size_t *partial);

#endif
