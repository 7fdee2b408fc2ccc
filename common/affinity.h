/* The token -> expert affinity model of the speculative pre-scheduler
 * (speculative.md §1, §5.4): learnt online from the routing decisions the
 * gate made, it predicts before a layer's gate runs which experts each
 * token will use, and scores those predictions once the gate has decided.
 *
 * Per layer l it holds, in memory bounded by the model's shape:
 *   - token id -> its usual experts: a few (AFF_SLOTS) counters per token,
 *     kept with the Misra-Gries frequent-items rule; at most max_rows token
 *     rows per layer (ids share a row modulo max_rows; a row changes owner
 *     once its counters have decayed to zero);
 *   - co-activation counts C[l][e][f]: e and f both in one token's set;
 *   - transitions T[l][e][f]: e at layer l, f at layer l + 1 (ExFlow's
 *     P(f at l+1 | e at l) up to normalisation);
 *   - per expert pair counts (its load).
 * Predictions never change what the gate decides; they are only scored.
 *
 * Not thread-safe for writers: one thread (the engine's) drives
 * affinity_step/predict/observe; the counters read by affinity_hits and
 * the file writer are guarded by an internal mutex.
 */
#ifndef EPMOE_AFFINITY_H
#define EPMOE_AFFINITY_H

#include <stddef.h>
#include <stdint.h>

#include "moe.h"

#define AFF_SLOTS 4        /* expert counters per token row */
#define AFF_MAX_K 16       /* largest predicted set per token */
#define AFF_MAX_MAPS 2     /* placements scored by affinity_observe */
#define AFF_DEFAULT_ROWS 65536u

enum aff_pred { AFF_PRED_TOK, AFF_PRED_TOK_PREV, AFF_N_PRED };

/* Cumulative counters of one layer. */
struct aff_layer_stats {
	uint64_t pairs;                 /* (token, expert) pairs the gate chose */
	uint64_t hits[AFF_N_PRED];      /* of them, predicted by each predictor */
	uint64_t rows;                  /* tokens observed */
	uint64_t steps;                 /* observe calls */
	/* per placement map set with affinity_set_map: */
	uint64_t tok_workers[AFF_MAX_MAPS]; /* distinct (token, worker) pairs */
	uint64_t step_workers[AFF_MAX_MAPS];/* distinct workers per call, summed */
};

struct affinity;

/* A model for n_layer layers of n_expert experts and a vocabulary of
 * n_vocab ids, with at most max_rows token rows per layer (0 =
 * AFF_DEFAULT_ROWS; never more than n_vocab).  EPMOE_EINVAL on a zero
 * size or n_expert > 4096.  Free with affinity_free. */
int affinity_new(struct affinity **out, uint32_t n_layer, uint32_t n_expert,
        uint32_t n_vocab, uint32_t max_rows);
void affinity_free(struct affinity *a);
/* Bytes the model's tables hold. */
size_t affinity_bytes(const struct affinity *a);
uint32_t affinity_n_layer(const struct affinity *a);
uint32_t affinity_n_expert(const struct affinity *a);

/* Whether observe() updates the tables (default 1); scoring continues
 * either way. */
void affinity_set_learning(struct affinity *a, int on);
/* Whether predict() runs (default 1). */
void affinity_set_predicting(struct affinity *a, int on);

/* Scores the placement worker_of ([n_layer][n_expert] worker indices,
 * copied; NULL clears) as map idx < AFF_MAX_MAPS: observe() counts the
 * distinct (token, worker) pairs and distinct workers per call it would
 * cause (the bytes and messages of sending a token's row once per worker). */
int affinity_set_map(struct affinity *a, int idx, const int32_t *worker_of,
        uint32_t n_worker);

/* The step driver, in order, from one thread:
 *   affinity_step(tokens of the step's T rows, borrowed until the next
 *   call), then per layer affinity_predict (before the gate) and
 *   affinity_observe (with the gate's decision for the same rows). */
int affinity_step(struct affinity *a, const int32_t *tok, uint32_t n_rows);
/* Predicts k (<= AFF_MAX_K) experts for each row of the step at layer l:
 * from the token id alone and from the token id plus the row's experts
 * at layer l - 1. */
void affinity_predict(struct affinity *a, uint32_t layer, uint32_t k);
/* The next layer's likely experts, for prefetch hints: for each row
 * row0 + t of the step whose experts at `layer` are asg's token t, its k
 * best experts at layer + 1 (the token's usual ones plus the
 * transitions from those experts, as the token_prev predictor scores
 * them), as a union: mask[f] = 1 (mask: n_expert bytes, overwritten).
 * Returns how many; 0 at the last layer or when asg does not fit the
 * step.  Read-only on the tables; same thread as affinity_predict. */
uint32_t affinity_next(struct affinity *a, uint32_t layer,
        const struct moe_assign *asg, uint32_t row0, uint32_t k, uint8_t *mask);
/* Scores the predictions of layer l against asg (asg->n_tok = the step's
 * rows), learns from asg, and remembers it as the rows' previous layer. */
void affinity_observe(struct affinity *a, uint32_t layer,
        const struct moe_assign *asg);
/* The last prediction of row r: writes up to cap experts, returns how
 * many. */
uint32_t affinity_predicted(const struct affinity *a, uint32_t row,
        enum aff_pred which, int32_t *out, uint32_t cap);

/* Lookups (the learnt tables). */
/* tok's most frequent experts at layer l, most frequent first; returns
 * how many (<= cap, <= AFF_SLOTS); 0 if the token was never seen. */
uint32_t affinity_token_top(const struct affinity *a, uint32_t layer,
        int32_t tok, int32_t *out, uint32_t cap);
uint32_t affinity_coact(const struct affinity *a, uint32_t layer,
        uint32_t e, uint32_t f);
uint32_t affinity_trans(const struct affinity *a, uint32_t layer,
        uint32_t e, uint32_t f);
uint64_t affinity_load(const struct affinity *a, uint32_t layer, uint32_t e);

/* A copy of layer l's counters. */
void affinity_hits(struct affinity *a, uint32_t layer,
        struct aff_layer_stats *out);
void affinity_stats_reset(struct affinity *a);

/* Speculative expert grouping (balanced co-clustering): per layer, puts
 * experts often chosen together by one token on the same worker.  Each
 * worker gets at most ceil(E / W) experts and at most (1 + slack) x the
 * mean learnt load (when that is achievable; the count bound always
 * holds).  worker_of: [n_layer][n_expert], written.  EPMOE_EINVAL if
 * n_worker is 0 or exceeds n_expert. */
int affinity_group(const struct affinity *a, uint32_t n_worker, double slack,
        int32_t *worker_of);
/* Sum over layers of co-activation counts between experts placed on the
 * same worker (the objective affinity_group maximises). */
uint64_t affinity_group_score(const struct affinity *a,
        const int32_t *worker_of);

/* File I/O (a binary dump of the tables).  affinity_load_file checks that
 * the file was made for a model of the given shape: EPMOE_EFORMAT with a
 * message otherwise; EPMOE_EIO when unreadable. */
int affinity_save(struct affinity *a, const char *path, char *err,
        size_t err_len);
int affinity_load_file(struct affinity **out, const char *path,
        uint32_t n_layer, uint32_t n_expert, uint32_t n_vocab, char *err,
        size_t err_len);

#endif
