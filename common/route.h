/* Routing policies: gate logits S [T, E] -> (token, expert, weight).
 *
 * Every policy of shared/design/routing.md is a pure function of the
 * logits, the routing groups of the step and (for lossfree) a per-layer
 * bias (route.c).  The spec language is route_spec.c; the OT solvers
 * (log-domain Sinkhorn, §0.1, and the capped Fermi-Dirac variant, §0.2)
 * are in route_ot.c and declared below too.
 * Nothing here knows about workers, sockets or the model file: the engine
 * passes the model's facts (E, native k, norm_topk_prob, layers) and an
 * optional expert->worker map.
 *
 * Spec strings: POLICY[:key=value,...], e.g. "native", "topk:k=1,renorm=1",
 * "capacity:factor=1.25,drop=probs", "expert_choice:c=2",
 * "sinkhorn:xi=1,kernel=capped,iters=100,tol=1e-4", "ssr:p=0.01,seed=7",
 * "ssr:lambda=1.3,workers=4", "usmoe:rate=0.5,budget=0.75,weights=u",
 * "lossfree:u=0.001".  route_print_help() lists every key and default.
 *
 * Threading: a struct route_policy holds scratch buffers and lossfree
 * state; use one per thread (route_run is not reentrant on one object).
 */
#ifndef EPMOE_ROUTE_H
#define EPMOE_ROUTE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum route_kind {
	ROUTE_NATIVE = 0,
	ROUTE_TOPK,
	ROUTE_CAPACITY,
	ROUTE_EXPERT_CHOICE,
	ROUTE_SINKHORN,
	ROUTE_SSR,
	ROUTE_USMOE,
	ROUTE_LOSSFREE,
	ROUTE_N_KINDS
};

enum route_kernel { ROUTE_KERNEL_EXP = 0, ROUTE_KERNEL_CAPPED = 1 };
enum route_cost { ROUTE_COST_LOGITS = 0, ROUTE_COST_SOFTMAX = 1 };
enum route_drop { ROUTE_DROP_POSITION = 0, ROUTE_DROP_PROBS = 1 };
enum route_score { ROUTE_SCORE_SOFTMAX = 0, ROUTE_SCORE_SIGMOID = 1 };
/* usmoe gate weights of the chosen pairs (routing.md §6.2). */
enum route_uweights {
	ROUTE_UW_MODEL = -1,  /* renorm if the model renormalises top-k, else u */
	ROUTE_UW_U = 0,       /* U itself (the paper, on models without renorm) */
	ROUTE_UW_RENORM = 1,  /* U / sum of U over the token's chosen experts */
	ROUTE_UW_ROWSUM = 2   /* U / its full-row sum (the USMoE code's
	                       * norm_topk_prob branch) */
};
/* When ssr runs its OT step (routing.md "Selective application"). */
enum route_ssr_sched {
	ROUTE_SSR_LAMBDA = 0, /* busiest worker of plain top-k > lambda x mean */
	ROUTE_SSR_P = 1       /* seeded per-(step, layer) draw with prob. p */
};

/* A parsed policy spec.  "Native" sentinels (k = 0, renorm = -1, xi = 0)
 * are resolved against the model in route_policy_new(). */
struct route_cfg {
	enum route_kind kind;
	int k;                /* experts per token; 0 = the model's k */
	int renorm;           /* 0/1; -1 = the model's norm_topk_prob */
	/* capacity (§1.2) */
	float factor;         /* capacity factor; 0 = no capacity */
	int min_capacity;     /* capacity = max(capacity, min_capacity) */
	enum route_drop drop;
	/* expert_choice (§3) */
	float c;              /* average experts per token */
	/* sinkhorn, ssr (§0.1, §0.2, §4.2, §5) */
	enum route_kernel kernel;
	enum route_cost cost;
	float xi;             /* temperature; 0 = 1 (exp) or 0.1 (capped) */
	int iters;            /* iteration cap */
	float tol;            /* column residual < tol x column mass */
	/* ssr schedule (§5.4 and the serving schedule) */
	enum route_ssr_sched sched;
	float p;
	uint64_t seed;
	float lambda;         /* 0 = run OT on every step */
	int workers;          /* default map: contiguous blocks; 0 = E */
	/* usmoe (§6) */
	float rate;
	float budget;         /* kept pairs = round(budget x T x k) */
	enum route_uweights uweights;
	/* lossfree (§2.2) */
	float u;
	enum route_score score;
};

/* Fills *cfg with the defaults of policy kind. */
void route_cfg_default(struct route_cfg *cfg, enum route_kind kind);

/* Parses spec into *out.  On error returns EPMOE_EINVAL and writes a
 * one-line reason into err (if err_len > 0); *out is untouched. */
int route_parse(const char *spec, struct route_cfg *out, char *err,
    size_t err_len);

/* Writes the canonical spec of cfg (policy name plus every key that
 * differs from its default) into buf.  route_parse() of the result gives
 * back cfg.  Returns 0, or EPMOE_ERANGE if buf is too short. */
int route_format(const struct route_cfg *cfg, char *buf, size_t len);

/* Prints every policy with its keys, their meaning and defaults. */
void route_print_help(FILE *f);

/* Policy names ("native", "topk", ...); NULL for an invalid kind. */
const char *route_kind_name(enum route_kind kind);

/* 1 if the policy routes every token by itself (its result for a token
 * does not depend on other tokens of the step), else 0.  capacity counts
 * as causal per token but its drops depend on the group (routing.md). */
int route_policy_causal(enum route_kind kind);

/* Routing groups.  A PREFILL segment is one sequence's prompt chunk and is
 * its own group; all DECODE segments of one call form one group together
 * (the decode tokens of the step).  Per-token policies ignore groups except
 * capacity, whose capacity is computed per group. */
enum route_group_kind { ROUTE_GROUP_PREFILL = 0, ROUTE_GROUP_DECODE = 1 };

struct route_group {
	uint32_t start;       /* first token (row of S) */
	uint32_t n;           /* number of tokens */
	enum route_group_kind kind;
};

/* Checks that policy cfg may route a group of this kind (the "where it
 * applies" column of routing.md); the server calls it before accepting a
 * per-request policy.  Returns 0, or EPMOE_ENOTSUP with a message in err. */
int route_check(const struct route_cfg *cfg, enum route_group_kind kind,
    char *err, size_t err_len);

/* The model's native gate. */
struct route_model {
	int n_experts;        /* E routed experts (shared experts excluded) */
	int k;                /* native experts per token */
	int renorm;           /* norm_topk_prob: weights renormalised over top-k */
	int n_layers;         /* MoE layers (per-layer state is indexed 0..) */
};

/* Resolves the native sentinels of cfg (k, renorm, xi) against model m
 * and checks the result fits it (k <= E): what route_policy_new does
 * before it allocates, so a spec can be checked against a model without
 * building a policy.  On success *out gets the resolved configuration;
 * else EPMOE_EINVAL with a message in err. */
int route_cfg_resolve(const struct route_cfg *cfg, const struct route_model *m,
    struct route_cfg *out, char *err, size_t err_len);

/* Output, CSR by token: token t has pairs off[t] .. off[t+1]-1.  Within a
 * token, per-token policies list experts best first (top-k order);
 * expert_choice and usmoe list them by ascending expert index.  Buffers
 * grow as needed and are reused across calls. */
struct route_out {
	uint32_t n_tokens;
	uint32_t n_experts;
	uint32_t *off;        /* [n_tokens + 1] */
	int32_t *expert;      /* [off[n_tokens]] */
	float *weight;        /* [off[n_tokens]] */
	uint32_t *load;       /* [n_experts] pairs per expert */
	size_t cap_tok, cap_pairs, cap_load;
};

void route_out_init(struct route_out *o);
void route_out_fini(struct route_out *o);

/* Per-call statistics (routing.md "Balance metrics"). */
struct route_info {
	const uint32_t *load; /* [E] pairs per expert: out->load (borrowed) */
	uint32_t n_pairs;     /* (token, expert) pairs routed */
	float maxvio;         /* (max load - mean load) / mean load */
	float experts_per_token;
	uint32_t n_nonfinite; /* NaN/Inf logits replaced (§0 rule 5) */
	uint32_t n_dropped;   /* pairs dropped by capacity */
	int ot_ran;           /* 1 if an OT plan was used for any group */
	uint32_t ot_groups;   /* groups routed with an OT plan */
	uint32_t ot_iters;    /* iterations summed over those groups */
	float ot_residual;    /* worst relative column residual */
	float worker_ratio;   /* ssr lambda: busiest worker / mean of top-k */
};

/* Cumulative counters of a policy since creation or route_policy_reset. */
struct route_stats {
	uint64_t calls;
	uint64_t ot_calls;    /* calls where OT ran (ssr: "how often it fired") */
	uint64_t ot_groups;
	uint64_t ot_iters;
	uint64_t nonfinite;
	uint64_t dropped;
	uint64_t pairs;
};

struct route_policy;

/* Creates a policy for a model.  Resolves native sentinels (k, renorm,
 * xi) and checks them against the model (k <= E, ...).  On success *out
 * is the caller's; release with route_policy_free().  On failure returns
 * EPMOE_EINVAL / EPMOE_ENOMEM with a message in err. */
int route_policy_new(struct route_policy **out, const struct route_cfg *cfg,
    const struct route_model *m, char *err, size_t err_len);
void route_policy_free(struct route_policy *p);

/* The resolved configuration (no native sentinels left).  Borrowed. */
const struct route_cfg *route_policy_cfg(const struct route_policy *p);

/* Replaces the expert->worker map used by ssr's lambda schedule.
 * worker_of_expert is [n_layers][E] (copied); values in [0, n_workers).
 * Default: contiguous blocks of experts over cfg.workers workers. */
int route_policy_set_workers(struct route_policy *p,
    const uint16_t *worker_of_expert, int n_workers);

/* Clears lossfree biases and the cumulative counters. */
void route_policy_reset(struct route_policy *p);

/* The lossfree bias of a layer ([E], borrowed, valid until the policy is
 * freed), or NULL for other policies. */
const float *route_policy_bias(const struct route_policy *p, int layer);

void route_policy_stats(const struct route_policy *p, struct route_stats *st);

/* Routes one MoE layer of one step.
 *   S      [T, E] row-major float32 gate logits (borrowed, not modified)
 *   groups n_groups segments in token order, covering 0..T-1 exactly;
 *          groups == NULL means one PREFILL group of all T tokens
 *   step   the engine's step counter (ssr p schedule)
 * Writes out (grown as needed) and, if info != NULL, *info.  lossfree
 * updates the layer's bias after routing.  Does not allocate once the
 * buffers have grown to the largest T seen. */
int route_run(struct route_policy *p, int layer, uint64_t step,
    const float *S, uint32_t T, const struct route_group *groups,
    int n_groups, struct route_out *out, struct route_info *info);

/* ---- OT solvers (route_ot.c) ---------------------------------------- */

/* Reusable workspace of the solvers; buffers grow as needed. */
struct route_ot {
	float *K;             /* [T, Ep] C / xi, rows padded to Ep */
	float *KT;            /* [E, Tp] the transpose, rows padded to Tp */
	float *f;             /* [Tp] row potentials */
	float *g;             /* [Ep] column potentials */
	float *tmp;           /* [max(Tp, Ep) x 4] */
	size_t cap_k, cap_kt, cap_f, cap_g, cap_tmp;
	int log_only;         /* 1: skip the scaling fast path (tests) */
	float kmin, kmax;     /* range of C / xi, set by the solvers */
};

struct route_ot_result {
	int iters;            /* full (column, row) iterations done */
	int converged;        /* residual < tol before the cap */
	float residual;       /* max_e |column sum - col_mass| / col_mass */
	int log_domain;       /* 1 if the log-domain iteration was used */
};

void route_ot_init(struct route_ot *w);
void route_ot_fini(struct route_ot *w);

/* Log-domain Sinkhorn (routing.md §0.1) with uniform marginals:
 *   max <Pi, C> - xi sum Pi (log Pi - 1),  rows row_mass, columns col_mass
 * (T x row_mass must equal E x col_mass).  C is [T, E]; plan receives
 * Pi [T, E].  Stops when the column residual after a row step is below
 * tol x col_mass, or after max_iter iterations (tol = 0: exactly max_iter).
 * The iterates start from f = g = 0 as in §0.1.  When C/xi spans less
 * than ~80 the same iteration runs in scaling form (u = e^f, v = e^g,
 * exp(C/xi - max) precomputed: multiply-adds, no exp per iteration); if a
 * scaling leaves [1e-30, 1e30] it restarts in the log domain. */
int route_sinkhorn(struct route_ot *w, const float *C, int T, int E,
    float xi, float row_mass, float col_mass, int max_iter, float tol,
    float *plan, struct route_ot_result *res);

/* Capped OT (routing.md §0.2): as above with 0 <= Pi <= 1 and the
 * Fermi-Dirac entropy; Pi = sigmoid((C + f + g) / xi).  Needs
 * row_mass < E and col_mass < T. */
int route_sinkhorn_capped(struct route_ot *w, const float *C, int T, int E,
    float xi, float row_mass, float col_mass, int max_iter, float tol,
    float *plan, struct route_ot_result *res);

/* ---- small primitives, exposed for tests ------------------------------ */

/* Indices of the k largest x[0..n-1], best first, ties to the lower index
 * (routing.md §0 rule 1).  k <= n. */
void route_topk(const float *x, int n, int k, int32_t *idx);

/* Rearranges (val, idx) so that the first m entries are the m best under
 * "larger val first, then smaller idx first".  Order within is unspecified.
 * m <= n. */
void route_select(float *val, int32_t *idx, int n, int m);

/* 1 if every x[0..n-1] is finite (n >= 1); *max gets the largest
 * value (meaningful when all are finite). */
int route_row_scan(const float *x, int n, float *max);

/* sum_i exp(x[i] - m) for n >= 0 values (vectorised, double total). */
double route_sumexp(const float *x, int n, float m);

/* exp(x) in float, accurate to ~2 ulp, 0 below -87.3, saturating above
 * 88.7.  The solvers use its vector form. */
float route_expf(float x);

#endif
