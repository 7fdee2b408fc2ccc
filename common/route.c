/* Routing policies (shared/design/routing.md): spec parsing, the policy
 * object and route_run(), which turns one MoE layer's gate logits into
 * CSR (token -> experts, weights).  The OT solvers are in route_ot.c.
 *
 * Every policy is a pure function of the logits, the routing groups and,
 * for lossfree, the layer's bias; route_run() never looks at anything
 * else.  native must stay cheap: it runs for every token of every layer,
 * so it writes CSR directly and touches no scratch beyond one row.
 */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "route.h"

/* ---- names, keys, defaults ------------------------------------------- */

static const char *const kind_names[ROUTE_N_KINDS] = {
	"native", "topk", "capacity", "expert_choice", "sinkhorn", "ssr",
	"usmoe", "lossfree"
};

static const char *const kind_help[ROUTE_N_KINDS] = {
	"the model's own gate: softmax, top-k (ties to the lower index), "
	"weights renormalised iff norm_topk_prob",
	"token-choice top-k with a chosen k and renormalisation",
	"top-k with a per-expert capacity ceil(T*k/E*factor) per routing "
	"group; excess pairs are dropped, weights not renormalised (§1.2)",
	"each expert takes its ceil(T*c/E) best tokens by softmax "
	"probability; weights = probability (§3)",
	"selection by the top-k of a balanced OT plan, weights from the "
	"softmax of the logits (S-BASE, §0.1, §4.2)",
	"Selective Sinkhorn Routing: top-k of the OT plan, weights = the "
	"renormalised plan (capped kernel: softmax weights), OT only on "
	"selected (step, layer)s, plain top-k otherwise (§5)",
	"Unified Sparse MoE: U = (1-rate)*softmax + rate*(2/E)*sigmoid, the "
	"top budget*T*k pairs of the group, weights from U as the model "
	"weighs its top-k (§6)",
	"auxiliary-loss-free bias: select by score + bias, weights from the "
	"score, bias += u*sign(mean - load) after each call (§2.2)"
};

/* Causal, and the group kinds each policy accepts (bit per kind), from
 * the table at the top of routing.md. */
static const int kind_causal[ROUTE_N_KINDS] = { 1, 1, 1, 0, 0, 0, 0, 1 };
#define GK_BOTH ((1 << ROUTE_GROUP_PREFILL) | (1 << ROUTE_GROUP_DECODE))
#define GK_PREFILL (1 << ROUTE_GROUP_PREFILL)
/* expert_choice and usmoe are whole-sequence methods in their papers
 * (routing.md §3, §6.3: neither defines a per-step decode variant), so
 * epmoe serves them for prompts only: a request that generates tokens
 * with them is refused.  sinkhorn and ssr balance the decode step too. */
static const int kind_groups[ROUTE_N_KINDS] = {
	GK_BOTH, GK_BOTH, GK_BOTH, GK_PREFILL, GK_BOTH, GK_BOTH, GK_PREFILL, GK_BOTH
};

enum key_type { KT_INT, KT_FLOAT, KT_U64, KT_ENUM };

enum key_id {
	K_K, K_RENORM, K_FACTOR, K_MIN, K_DROP, K_C, K_KERNEL, K_COST, K_XI,
	K_ITERS, K_TOL, K_P, K_SEED, K_LAMBDA, K_WORKERS, K_RATE, K_BUDGET,
	K_U, K_SCORE, K_WEIGHTS, K_N
};

static const char *const drop_names[] = { "position", "probs", NULL };
static const char *const kernel_names[] = { "exp", "capped", NULL };
static const char *const cost_names[] = { "logits", "softmax", NULL };
static const char *const score_names[] = { "softmax", "sigmoid", NULL };
static const char *const uweights_names[] = { "u", "renorm", "rowsum", NULL };

struct key_desc {
	const char *name;
	enum key_type type;
	size_t off;
	double min, max;       /* inclusive; min_open: value must exceed min */
	int min_open;
	const char *const *names;
	const char *range;     /* for error messages */
	const char *dflt;      /* for help */
	const char *help;
};

#define OFF(f) offsetof(struct route_cfg, f)

static const struct key_desc keys[K_N] = {
	[K_K] = { "k", KT_INT, OFF(k), 1, 4096, 0, NULL,
	    "an integer >= 1", "the model's k", "experts per token" },
	[K_RENORM] = { "renorm", KT_INT, OFF(renorm), 0, 1, 0, NULL,
	    "0 or 1", "the model's norm_topk_prob",
	    "1: softmax weights renormalised over the chosen experts, 0: "
	    "full-softmax probabilities" },
	[K_FACTOR] = { "factor", KT_FLOAT, OFF(factor), 0, 1e6, 0, NULL,
	    "a number >= 0", "1.25", "capacity factor; 0 = no capacity" },
	[K_MIN] = { "min", KT_INT, OFF(min_capacity), 0, 1e9, 0, NULL,
	    "an integer >= 0", "0", "minimum capacity per expert" },
	[K_DROP] = { "drop", KT_ENUM, OFF(drop), 0, 0, 0, drop_names,
	    NULL, "position",
	    "position: an expert keeps the first tokens (all first choices "
	    "before second choices, GShard order); probs: its largest "
	    "weights" },
	[K_C] = { "c", KT_FLOAT, OFF(c), 0, 1e6, 1, NULL,
	    "a number > 0", "2", "average experts per token" },
	[K_KERNEL] = { "kernel", KT_ENUM, OFF(kernel), 0, 0, 0, kernel_names,
	    NULL, "exp",
	    "exp: entropic OT, rows 1, columns T/E (§0.1); capped: "
	    "0 <= plan <= 1, rows k, columns T*k/E (§0.2)" },
	[K_COST] = { "cost", KT_ENUM, OFF(cost), 0, 0, 0, cost_names,
	    NULL, "logits", "OT cost matrix: the logits or their softmax" },
	[K_XI] = { "xi", KT_FLOAT, OFF(xi), 0, 1e6, 1, NULL,
	    "a number > 0", "1 (exp), 0.1 (capped)", "OT temperature" },
	[K_ITERS] = { "iters", KT_INT, OFF(iters), 1, 100000, 0, NULL,
	    "an integer from 1 to 100000", "100", "OT iteration cap" },
	[K_TOL] = { "tol", KT_FLOAT, OFF(tol), 0, 1, 0, NULL,
	    "a number from 0 to 1", "1e-4",
	    "stop when every column sum is within tol x its target" },
	[K_P] = { "p", KT_FLOAT, OFF(p), 0, 1, 0, NULL,
	    "a number from 0 to 1", "(lambda schedule)",
	    "random schedule: run OT on a (step, layer) with probability p "
	    "(seeded hash draw)" },
	[K_SEED] = { "seed", KT_U64, OFF(seed), 0, 0, 0, NULL,
	    "an unsigned integer", "0", "seed of the p schedule" },
	[K_LAMBDA] = { "lambda", KT_FLOAT, OFF(lambda), 0, 1e6, 0, NULL,
	    "a number >= 0", "1.3",
	    "load schedule: run OT when plain top-k would load the busiest "
	    "worker above lambda x the mean worker load; 0 = always" },
	[K_WORKERS] = { "workers", KT_INT, OFF(workers), 0, 65535, 0, NULL,
	    "an integer from 0 to 65535", "0 (one per expert)",
	    "workers of the default expert->worker map (contiguous blocks); "
	    "the engine may set the real map" },
	[K_RATE] = { "rate", KT_FLOAT, OFF(rate), 0, 1, 0, NULL,
	    "a number from 0 to 1", "0.5",
	    "share of the expert-side score (2/E)*sigmoid in U" },
	[K_BUDGET] = { "budget", KT_FLOAT, OFF(budget), 0, 1e6, 1, NULL,
	    "a number > 0", "1",
	    "kept pairs = round(budget x T x k) per routing group" },
	[K_U] = { "u", KT_FLOAT, OFF(u), 0, 1e3, 0, NULL,
	    "a number >= 0", "0.001", "bias update rate" },
	[K_SCORE] = { "score", KT_ENUM, OFF(score), 0, 0, 0, score_names,
	    NULL, "softmax", "the gate's score function" },
	/* The paper's U suits models whose gate does not renormalise its
	 * top-k (those it was run on); a renormalising model fed U gets
	 * weights summing to well under 1 (routing.md §6.2). */
	[K_WEIGHTS] = { "weights", KT_ENUM, OFF(uweights), 0, 0, 0,
	    uweights_names, NULL,
	    "renorm if the model renormalises its top-k, else u",
	    "u: U itself; renorm: U divided by its sum over the token's "
	    "chosen experts; rowsum: U divided by its full-row sum (the "
	    "USMoE code's norm_topk_prob branch)" },
};

#define KEYS_END K_N
static const int kind_keys[ROUTE_N_KINDS][13] = {
	[ROUTE_NATIVE] = { KEYS_END },
	[ROUTE_TOPK] = { K_K, K_RENORM, KEYS_END },
	[ROUTE_CAPACITY] = { K_K, K_RENORM, K_FACTOR, K_MIN, K_DROP, KEYS_END },
	[ROUTE_EXPERT_CHOICE] = { K_C, KEYS_END },
	[ROUTE_SINKHORN] = { K_K, K_RENORM, K_KERNEL, K_COST, K_XI, K_ITERS,
	    K_TOL, KEYS_END },
	[ROUTE_SSR] = { K_K, K_RENORM, K_KERNEL, K_COST, K_XI, K_ITERS, K_TOL,
	    K_P, K_SEED, K_LAMBDA, K_WORKERS, KEYS_END },
	[ROUTE_USMOE] = { K_K, K_RATE, K_BUDGET, K_WEIGHTS, KEYS_END },
	[ROUTE_LOSSFREE] = { K_K, K_RENORM, K_U, K_SCORE, KEYS_END },
};

const char *
route_kind_name(enum route_kind kind)
{
	if ((int)kind < 0 || kind >= ROUTE_N_KINDS)
		return NULL;
	return kind_names[kind];
}

int
route_policy_causal(enum route_kind kind)
{
	if ((int)kind < 0 || kind >= ROUTE_N_KINDS)
		return 0;
	return kind_causal[kind];
}

void
route_cfg_default(struct route_cfg *cfg, enum route_kind kind)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->kind = kind;
	cfg->k = 0;
	cfg->renorm = -1;
	cfg->factor = 1.25f;
	cfg->min_capacity = 0;
	cfg->drop = ROUTE_DROP_POSITION;
	cfg->c = 2.0f;
	cfg->kernel = ROUTE_KERNEL_EXP;
	cfg->cost = ROUTE_COST_LOGITS;
	cfg->xi = 0.0f;
	cfg->iters = 100;
	cfg->tol = 1e-4f;
	cfg->sched = ROUTE_SSR_LAMBDA;
	cfg->p = 0.0f;
	cfg->seed = 0;
	cfg->lambda = 1.3f;
	cfg->workers = 0;
	cfg->rate = 0.5f;
	cfg->budget = 1.0f;
	cfg->u = 0.001f;
	cfg->score = ROUTE_SCORE_SOFTMAX;
	cfg->uweights = ROUTE_UW_MODEL;
}

static void
seterr(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || err_len == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
}

static void
list_keys(enum route_kind kind, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	for (const int *k = kind_keys[kind]; *k != KEYS_END; k++) {
		int w = snprintf(buf + n, len - n, "%s%s", n ? ", " : "",
		    keys[*k].name);

		if (w < 0 || (size_t)w >= len - n)
			break;
		n += (size_t)w;
	}
}

static int
parse_value(const struct key_desc *kd, const char *v, struct route_cfg *cfg)
{
	char *end;
	void *dst = (char *)cfg + kd->off;

	if (*v == '\0')
		return -1;
	switch (kd->type) {
	case KT_INT: {
		long x;

		errno = 0;
		x = strtol(v, &end, 10);
		if (errno || *end != '\0' || x < kd->min || x > kd->max)
			return -1;
		*(int *)dst = (int)x;
		return 0;
	}
	case KT_FLOAT: {
		double x;

		errno = 0;
		x = strtod(v, &end);
		if (errno || *end != '\0' || !isfinite(x) || x < kd->min ||
		    x > kd->max || (kd->min_open && x <= kd->min))
			return -1;
		*(float *)dst = (float)x;
		return 0;
	}
	case KT_U64: {
		unsigned long long x;

		if (*v == '-' || *v == '+')
			return -1;
		errno = 0;
		x = strtoull(v, &end, 10);
		if (errno || *end != '\0')
			return -1;
		*(uint64_t *)dst = (uint64_t)x;
		return 0;
	}
	case KT_ENUM:
		for (int i = 0; kd->names[i] != NULL; i++) {
			if (strcmp(v, kd->names[i]) == 0) {
				*(int *)dst = i;
				return 0;
			}
		}
		return -1;
	}
	return -1;
}

static void
describe_range(const struct key_desc *kd, char *buf, size_t len)
{
	size_t n = 0;

	if (kd->type != KT_ENUM) {
		snprintf(buf, len, "%s", kd->range);
		return;
	}
	n = (size_t)snprintf(buf, len, "one of: ");
	for (int i = 0; kd->names[i] != NULL && n < len; i++)
		n += (size_t)snprintf(buf + n, len - n, "%s%s", i ? ", " : "",
		    kd->names[i]);
}

int
route_parse(const char *spec, struct route_cfg *out, char *err,
    size_t err_len)
{
	char buf[512], *name, *rest, *item, *save = NULL;
	struct route_cfg cfg;
	int kind = -1, seen[K_N] = { 0 };
	char range[160], klist[160];

	if (spec == NULL || *spec == '\0') {
		seterr(err, err_len, "empty routing policy");
		return EPMOE_EINVAL;
	}
	if (strlen(spec) >= sizeof(buf)) {
		seterr(err, err_len, "routing policy spec too long");
		return EPMOE_EINVAL;
	}
	strcpy(buf, spec);
	name = buf;
	rest = strchr(buf, ':');
	if (rest != NULL)
		*rest++ = '\0';
	for (int i = 0; i < ROUTE_N_KINDS; i++)
		if (strcmp(name, kind_names[i]) == 0)
			kind = i;
	if (kind < 0) {
		seterr(err, err_len, "unknown routing policy '%s' (policies: "
		    "native, topk, capacity, expert_choice, sinkhorn, ssr, "
		    "usmoe, lossfree)", name);
		return EPMOE_EINVAL;
	}
	route_cfg_default(&cfg, (enum route_kind)kind);
	if (rest == NULL) {
		*out = cfg;
		return 0;
	}
	list_keys((enum route_kind)kind, klist, sizeof(klist));
	if (*rest == '\0') {
		seterr(err, err_len, "%s: nothing after ':'", name);
		return EPMOE_EINVAL;
	}
	for (item = strtok_r(rest, ",", &save); item != NULL;
	    item = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(item, '=');
		const struct key_desc *kd = NULL;
		int id = -1;

		if (eq == NULL) {
			seterr(err, err_len, "%s: expected key=value, got '%s'",
			    name, item);
			return EPMOE_EINVAL;
		}
		*eq = '\0';
		for (const int *k = kind_keys[kind]; *k != KEYS_END; k++)
			if (strcmp(item, keys[*k].name) == 0)
				id = *k;
		if (id < 0) {
			if (klist[0] == '\0')
				seterr(err, err_len, "%s: unknown key '%s' (the "
				    "policy takes no keys)", name, item);
			else
				seterr(err, err_len, "%s: unknown key '%s' "
				    "(keys: %s)", name, item, klist);
			return EPMOE_EINVAL;
		}
		kd = &keys[id];
		if (seen[id]) {
			seterr(err, err_len, "%s: key '%s' given twice", name,
			    item);
			return EPMOE_EINVAL;
		}
		seen[id] = 1;
		if (parse_value(kd, eq + 1, &cfg) != 0) {
			describe_range(kd, range, sizeof(range));
			seterr(err, err_len, "%s: bad value '%s' for %s (%s)",
			    name, eq + 1, kd->name, range);
			return EPMOE_EINVAL;
		}
	}
	if (seen[K_P] && (seen[K_LAMBDA] || seen[K_WORKERS])) {
		seterr(err, err_len, "ssr: give either p (random schedule) or "
		    "lambda/workers (load schedule), not both");
		return EPMOE_EINVAL;
	}
	if (seen[K_SEED] && !seen[K_P]) {
		seterr(err, err_len, "ssr: seed belongs to the random schedule; "
		    "give p as well");
		return EPMOE_EINVAL;
	}
	if (seen[K_P])
		cfg.sched = ROUTE_SSR_P;
	*out = cfg;
	return 0;
}

static int
key_is_default(int id, const struct route_cfg *c, const struct route_cfg *d)
{
	const void *a = (const char *)c + keys[id].off;
	const void *b = (const char *)d + keys[id].off;

	switch (keys[id].type) {
	case KT_INT:
	case KT_ENUM:
		return *(const int *)a == *(const int *)b;
	case KT_FLOAT:
		return *(const float *)a == *(const float *)b;
	case KT_U64:
		return *(const uint64_t *)a == *(const uint64_t *)b;
	}
	return 1;
}

int
route_format(const struct route_cfg *cfg, char *buf, size_t len)
{
	struct route_cfg d;
	size_t n;
	int w, sep = ':';

	if (route_kind_name(cfg->kind) == NULL || len == 0)
		return EPMOE_EINVAL;
	route_cfg_default(&d, cfg->kind);
	w = snprintf(buf, len, "%s", kind_names[cfg->kind]);
	if (w < 0 || (size_t)w >= len)
		return EPMOE_ERANGE;
	n = (size_t)w;
	for (const int *k = kind_keys[cfg->kind]; *k != KEYS_END; k++) {
		const struct key_desc *kd = &keys[*k];
		const void *v = (const char *)cfg + kd->off;
		int show = !key_is_default(*k, cfg, &d);

		if (cfg->kind == ROUTE_SSR) {
			int rnd = cfg->sched == ROUTE_SSR_P;

			if (*k == K_P)
				show = rnd;
			else if (*k == K_SEED)
				show = show && rnd;
			else if (*k == K_LAMBDA || *k == K_WORKERS)
				show = show && !rnd;
		}
		if (!show)
			continue;
		switch (kd->type) {
		case KT_INT:
			w = snprintf(buf + n, len - n, "%c%s=%d", sep, kd->name,
			    *(const int *)v);
			break;
		case KT_FLOAT: {
			/* shortest form that reads back as the same float */
			float f = *(const float *)v;
			char num[32];

			for (int prec = 6; prec <= 9; prec++) {
				snprintf(num, sizeof(num), "%.*g", prec,
				    (double)f);
				if (strtof(num, NULL) == f)
					break;
			}
			w = snprintf(buf + n, len - n, "%c%s=%s", sep,
			    kd->name, num);
			break;
		}
		case KT_U64:
			w = snprintf(buf + n, len - n, "%c%s=%" PRIu64, sep,
			    kd->name, *(const uint64_t *)v);
			break;
		case KT_ENUM: {
			int i = *(const int *)v, n_names = 0;

			while (kd->names[n_names] != NULL)
				n_names++;
			if (i < 0 || i >= n_names)
				return EPMOE_EINVAL;
			w = snprintf(buf + n, len - n, "%c%s=%s", sep, kd->name,
			    kd->names[i]);
			break;
		}
		}
		if (w < 0 || (size_t)w >= len - n)
			return EPMOE_ERANGE;
		n += (size_t)w;
		sep = ',';
	}
	return 0;
}

void
route_print_help(FILE *f)
{
	fprintf(f, "Routing policies: POLICY[:key=value,...]\n");
	for (int i = 0; i < ROUTE_N_KINDS; i++) {
		fprintf(f, "\n  %s%s\n      %s\n", kind_names[i],
		    kind_causal[i] ? "" : "  (non-causal: routes per prefill "
		    "sequence and across the decode step)", kind_help[i]);
		for (const int *k = kind_keys[i]; *k != KEYS_END; k++) {
			const struct key_desc *kd = &keys[*k];
			char range[160];

			describe_range(kd, range, sizeof(range));
			fprintf(f, "      %-7s %s; %s; default %s\n", kd->name,
			    kd->help, range, kd->dflt);
		}
	}
}

int
route_check(const struct route_cfg *cfg, enum route_group_kind kind,
    char *err, size_t err_len)
{
	if (cfg == NULL || route_kind_name(cfg->kind) == NULL) {
		seterr(err, err_len, "invalid routing policy");
		return EPMOE_EINVAL;
	}
	if (kind != ROUTE_GROUP_PREFILL && kind != ROUTE_GROUP_DECODE) {
		seterr(err, err_len, "invalid routing group kind %d",
		    (int)kind);
		return EPMOE_EINVAL;
	}
	if (!(kind_groups[cfg->kind] & (1 << kind))) {
		seterr(err, err_len, "routing policy '%s' cannot route %s "
		    "tokens", kind_names[cfg->kind],
		    kind == ROUTE_GROUP_DECODE ? "decode" : "prefill");
		return EPMOE_ENOTSUP;
	}
	return 0;
}

/* ---- primitives ------------------------------------------------------- */

void
route_topk(const float *x, int n, int k, int32_t *idx)
{
	float v[64], *val = v, thr;
	int m = 0;

	if (k > 64) {
		/* rare: a k this large needs no speed */
		for (int j = 0; j < k; j++) {
			int best = -1;

			for (int e = 0; e < n; e++) {
				int used = 0;

				for (int q = 0; q < j && !used; q++)
					used = idx[q] == e;
				if (!used && (best < 0 || x[e] > x[best]))
					best = e;
			}
			idx[j] = best;
		}
		return;
	}
	/* Insertion into a sorted list of size k; a later equal value never
	 * passes an earlier one, so ties go to the lower index. */
	for (int e = 0; e < k; e++) {
		float xe = x[e];
		int j = m++;

		while (j > 0 && xe > val[j - 1]) {
			val[j] = val[j - 1];
			idx[j] = idx[j - 1];
			j--;
		}
		val[j] = xe;
		idx[j] = e;
	}
	thr = val[k - 1];
	for (int e = k; e < n; e++) {
		float xe = x[e];
		int j = k - 1;

		if (!(xe > thr))
			continue;
		while (j > 0 && xe > val[j - 1]) {
			val[j] = val[j - 1];
			idx[j] = idx[j - 1];
			j--;
		}
		val[j] = xe;
		idx[j] = e;
		thr = val[k - 1];
	}
}

/* a before b in "larger value first, then smaller index". */
static inline int
better(float va, int32_t ia, float vb, int32_t ib)
{
	return va > vb || (va == vb && ia < ib);
}

static inline void
swap_pair(float *val, int32_t *idx, int a, int b)
{
	float v = val[a];
	int32_t i = idx[a];

	val[a] = val[b];
	idx[a] = idx[b];
	val[b] = v;
	idx[b] = i;
}

void
route_select(float *val, int32_t *idx, int n, int m)
{
	int lo = 0, hi = n - 1;

	if (m <= 0 || m >= n)
		return;
	/* Quickselect for position m - 1 under the total order better();
	 * median-of-three pivot. */
	while (lo < hi) {
		int mid = lo + (hi - lo) / 2, i, j;
		float pv;
		int32_t pi;

		if (better(val[mid], idx[mid], val[lo], idx[lo]))
			swap_pair(val, idx, mid, lo);
		if (better(val[hi], idx[hi], val[lo], idx[lo]))
			swap_pair(val, idx, hi, lo);
		if (better(val[hi], idx[hi], val[mid], idx[mid]))
			swap_pair(val, idx, hi, mid);
		/* now lo >= mid >= hi in the order; pivot = mid */
		pv = val[mid];
		pi = idx[mid];
		i = lo;
		j = hi;
		while (i <= j) {
			while (better(val[i], idx[i], pv, pi))
				i++;
			while (better(pv, pi, val[j], idx[j]))
				j--;
			if (i <= j) {
				swap_pair(val, idx, i, j);
				i++;
				j--;
			}
		}
		if (m - 1 <= j)
			hi = j;
		else if (m - 1 >= i)
			lo = i;
		else
			break;
	}
}

/* ---- the policy object ------------------------------------------------ */

struct pair {
	uint32_t tok;
	int32_t e;
	float w;
};

struct route_policy {
	struct route_cfg cfg;   /* resolved: no native sentinels */
	int E, n_layers;
	float *bias;            /* lossfree [n_layers][E] */
	uint16_t *worker;       /* [n_layers][E] */
	int n_workers;
	uint32_t *wload;        /* [n_workers] */
	struct route_stats st;
	struct route_ot ot;
	/* scratch, grown by ensure() */
	size_t cap_T;           /* tokens the T-sized buffers hold */
	float *row;             /* [E] a cleaned logits row */
	float *srow;            /* [E] scores of one row */
	uint32_t *ecnt;         /* [E] per-expert counters */
	uint32_t *eoff;         /* [E + 1] */
	int32_t *sel;           /* [T, k] per-token choices */
	float *selw;            /* [T, k] their weights */
	uint8_t *keep;          /* [T, k] capacity: pair survives */
	int32_t *gidx;          /* [T] tokens of the current group */
	int32_t *dec;           /* [T] tokens of the decode group */
	uint32_t *cursor;       /* [T] CSR assembly */
	float *G, *A, *B;       /* [T, E] group logits, plan/P/U, cost */
	float *vals;            /* [T x E] selection values */
	int32_t *vidx;          /* [T x E] selection indices */
	uint8_t *mask;          /* [T x E] */
	struct pair *pairs;     /* pre-CSR output of group policies */
	size_t n_pairs, cap_pairs;
};

static uint64_t
mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static void
default_workers(struct route_policy *p)
{
	int W = p->cfg.workers > 0 ? p->cfg.workers : p->E;

	if (W > p->E)
		W = p->E;
	p->n_workers = W;
	for (int l = 0; l < p->n_layers; l++)
		for (int e = 0; e < p->E; e++)
			p->worker[(size_t)l * p->E + e] =
			    (uint16_t)((long)e * W / p->E);
}

int
route_policy_new(struct route_policy **out, const struct route_cfg *cfg,
    const struct route_model *m, char *err, size_t err_len)
{
	struct route_policy *p;
	struct route_cfg c;
	const char *name;

	if (cfg == NULL || m == NULL || out == NULL ||
	    (name = route_kind_name(cfg->kind)) == NULL) {
		seterr(err, err_len, "invalid routing policy");
		return EPMOE_EINVAL;
	}
	if (m->n_experts < 1 || m->n_experts > 65535 || m->k < 1 ||
	    m->k > m->n_experts || m->n_layers < 1 ||
	    (m->renorm != 0 && m->renorm != 1)) {
		seterr(err, err_len, "invalid model gate: %d experts, k=%d, "
		    "%d layers", m->n_experts, m->k, m->n_layers);
		return EPMOE_EINVAL;
	}
	c = *cfg;
	if (c.kind == ROUTE_NATIVE || c.k == 0)
		c.k = m->k;
	if (c.kind == ROUTE_NATIVE || c.renorm < 0)
		c.renorm = m->renorm;
	if (c.uweights == ROUTE_UW_MODEL)
		c.uweights = m->renorm ? ROUTE_UW_RENORM : ROUTE_UW_U;
	if (!(c.xi > 0.0f))
		c.xi = c.kernel == ROUTE_KERNEL_CAPPED ? 0.1f : 1.0f;
	if (c.k > m->n_experts) {
		seterr(err, err_len, "%s: k=%d exceeds the model's %d experts",
		    name, c.k, m->n_experts);
		return EPMOE_EINVAL;
	}
	if ((p = calloc(1, sizeof(*p))) == NULL)
		goto nomem;
	p->cfg = c;
	p->E = m->n_experts;
	p->n_layers = m->n_layers;
	route_ot_init(&p->ot);
	p->worker = calloc((size_t)p->n_layers * p->E, sizeof(*p->worker));
	p->row = calloc((size_t)p->E, sizeof(float));
	p->srow = calloc((size_t)p->E, sizeof(float));
	p->ecnt = calloc((size_t)p->E, sizeof(uint32_t));
	p->eoff = calloc((size_t)p->E + 1, sizeof(uint32_t));
	p->wload = calloc((size_t)p->E, sizeof(uint32_t));
	if (p->wload == NULL || p->worker == NULL || p->row == NULL || p->srow == NULL ||
	    p->ecnt == NULL || p->eoff == NULL)
		goto nomem;
	if (c.kind == ROUTE_LOSSFREE &&
	    (p->bias = calloc((size_t)p->n_layers * p->E, sizeof(float))) ==
	    NULL)
		goto nomem;
	default_workers(p);
	*out = p;
	return 0;
nomem:
	route_policy_free(p);
	seterr(err, err_len, "out of memory");
	return EPMOE_ENOMEM;
}

void
route_policy_free(struct route_policy *p)
{
	if (p == NULL)
		return;
	route_ot_fini(&p->ot);
	free(p->bias);
	free(p->worker);
	free(p->row);
	free(p->srow);
	free(p->ecnt);
	free(p->eoff);
	free(p->wload);
	free(p->sel);
	free(p->selw);
	free(p->keep);
	free(p->gidx);
	free(p->dec);
	free(p->cursor);
	free(p->G);
	free(p->A);
	free(p->B);
	free(p->vals);
	free(p->vidx);
	free(p->mask);
	free(p->pairs);
	free(p);
}

const struct route_cfg *
route_policy_cfg(const struct route_policy *p)
{
	return &p->cfg;
}

int
route_policy_set_workers(struct route_policy *p,
    const uint16_t *worker_of_expert, int n_workers)
{
	size_t n;
	uint32_t *wl;

	if (p == NULL || worker_of_expert == NULL || n_workers < 1 ||
	    n_workers > 65536)
		return EPMOE_EINVAL;
	n = (size_t)p->n_layers * p->E;
	for (size_t i = 0; i < n; i++)
		if (worker_of_expert[i] >= n_workers)
			return EPMOE_EINVAL;
	if ((wl = calloc((size_t)n_workers, sizeof(*wl))) == NULL)
		return EPMOE_ENOMEM;
	free(p->wload);
	p->wload = wl;
	memcpy(p->worker, worker_of_expert, n * sizeof(*p->worker));
	p->n_workers = n_workers;
	return 0;
}

void
route_policy_reset(struct route_policy *p)
{
	if (p == NULL)
		return;
	if (p->bias != NULL)
		memset(p->bias, 0, (size_t)p->n_layers * p->E * sizeof(float));
	memset(&p->st, 0, sizeof(p->st));
}

const float *
route_policy_bias(const struct route_policy *p, int layer)
{
	if (p == NULL || p->bias == NULL || layer < 0 || layer >= p->n_layers)
		return NULL;
	return p->bias + (size_t)layer * p->E;
}

void
route_policy_stats(const struct route_policy *p, struct route_stats *st)
{
	*st = p->st;
}

/* ---- output ------------------------------------------------------------ */

void
route_out_init(struct route_out *o)
{
	memset(o, 0, sizeof(*o));
}

void
route_out_fini(struct route_out *o)
{
	if (o == NULL)
		return;
	free(o->off);
	free(o->expert);
	free(o->weight);
	free(o->load);
	memset(o, 0, sizeof(*o));
}

static int
grow_buf(void **pp, size_t *cap, size_t need, size_t elem)
{
	void *q;
	size_t n;

	if (need == 0)
		need = 1;       /* never leave a NULL buffer behind */
	if (need <= *cap && *pp != NULL)
		return 0;
	n = *cap ? *cap : 16;
	while (n < need)
		n *= 2;
	if ((q = realloc(*pp, n * elem)) == NULL)
		return EPMOE_ENOMEM;
	*pp = q;
	*cap = n;
	return 0;
}

static int
out_reserve(struct route_out *o, uint32_t T, uint32_t E, size_t pairs)
{
	size_t c;

	c = o->cap_tok;
	if (grow_buf((void **)&o->off, &c, (size_t)T + 1, sizeof(*o->off)))
		return EPMOE_ENOMEM;
	o->cap_tok = c;
	c = o->cap_pairs;
	if (grow_buf((void **)&o->expert, &c, pairs, sizeof(*o->expert)))
		return EPMOE_ENOMEM;
	c = o->cap_pairs;
	if (grow_buf((void **)&o->weight, &c, pairs, sizeof(*o->weight)))
		return EPMOE_ENOMEM;
	o->cap_pairs = c;
	if (grow_buf((void **)&o->load, &o->cap_load, E, sizeof(*o->load)))
		return EPMOE_ENOMEM;
	o->n_tokens = T;
	o->n_experts = E;
	return 0;
}

/* Grows the T-dependent scratch of policy p for T tokens. */
static int
ensure(struct route_policy *p, uint32_t T)
{
	size_t n = T, k = (size_t)p->cfg.k, ne = (size_t)T * p->E;
	enum route_kind kind = p->cfg.kind;
	int group = !kind_causal[kind];
	size_t c;

	if (n <= p->cap_T && p->cap_T > 0)
		return 0;
	n = p->cap_T ? p->cap_T : 16;
	while (n < T)
		n *= 2;
	ne = n * p->E;
#define GROW(f, cnt) \
	do { \
		c = 0; \
		free(p->f); \
		p->f = NULL; \
		if (grow_buf((void **)&p->f, &c, (cnt), sizeof(*p->f))) \
			return EPMOE_ENOMEM; \
	} while (0)
	GROW(sel, n * k);
	GROW(selw, n * k);
	GROW(gidx, n);
	GROW(dec, n);
	GROW(cursor, n);
	if (kind == ROUTE_CAPACITY) {
		GROW(keep, n * k);
		GROW(vals, n * k);
		GROW(vidx, n * k);
	}
	if (group) {
		GROW(G, ne);
		GROW(A, ne);
		GROW(B, ne);
		GROW(vals, ne);
		GROW(vidx, ne);
		GROW(mask, ne);
	}
#undef GROW
	p->cap_T = n;
	return 0;
}

static int
pairs_push(struct route_policy *p, uint32_t tok, int32_t e, float w)
{
	if (p->n_pairs == p->cap_pairs &&
	    grow_buf((void **)&p->pairs, &p->cap_pairs, p->n_pairs + 1,
	    sizeof(*p->pairs)))
		return EPMOE_ENOMEM;
	p->pairs[p->n_pairs].tok = tok;
	p->pairs[p->n_pairs].e = e;
	p->pairs[p->n_pairs].w = w;
	p->n_pairs++;
	return 0;
}

/* ---- per-token helpers ----------------------------------------------- */

/* Returns row t of S, or a copy with non-finite values replaced by the
 * row's smallest finite value (0 if none is finite), counting them
 * (routing.md §0 rule 5, per token so that per-token policies stay
 * batch-independent). */
static const float *
clean_row(const float *x, int E, float *buf, uint32_t *nf)
{
	float mn = FLT_MAX, mx;

	if (route_row_scan(x, E, &mx))
		return x;
	for (int e = 0; e < E; e++)
		if (isfinite(x[e]) && x[e] < mn)
			mn = x[e];
	if (mn == FLT_MAX)
		mn = 0.0f;
	for (int e = 0; e < E; e++) {
		if (isfinite(x[e])) {
			buf[e] = x[e];
		} else {
			buf[e] = mn;
			(*nf)++;
		}
	}
	return buf;
}

static inline float
row_max(const float *x, int E)
{
	float m;

	route_row_scan(x, E, &m);
	return m;
}

/* Weights of the chosen experts sel[0..k-1] of a logits row: the softmax
 * over the chosen logits (renorm) or their full-softmax probability. */
static void
gate_weights(const float *x, int E, const int32_t *sel, int k, int renorm,
    float *w)
{
	float m;
	double s = 0.0;

	if (renorm) {
		m = x[sel[0]];
		for (int j = 1; j < k; j++)
			if (x[sel[j]] > m)
				m = x[sel[j]];
		for (int j = 0; j < k; j++) {
			w[j] = expf(x[sel[j]] - m);
			s += w[j];
		}
	} else {
		m = row_max(x, E);
		s = route_sumexp(x, E, m);
		for (int j = 0; j < k; j++)
			w[j] = expf(x[sel[j]] - m);
	}
	for (int j = 0; j < k; j++)
		w[j] = (float)(w[j] / s);
}

/* Row softmax of x into y. */
static void
softmax_row(const float *x, int E, float *y)
{
	float m = row_max(x, E);
	double s = 0.0;

	for (int e = 0; e < E; e++) {
		y[e] = expf(x[e] - m);
		s += y[e];
	}
	for (int e = 0; e < E; e++)
		y[e] = (float)(y[e] / s);
}

static inline float
sigmoidf(float z)
{
	if (z >= 0.0f)
		return 1.0f / (1.0f + expf(-z));
	else {
		float ez = expf(z);

		return ez / (1.0f + ez);
	}
}

/* Per-token top-k with gate weights for every token of S into p->sel and
 * p->selw ([T, k]). */
static void
topk_all(struct route_policy *p, const float *S, uint32_t T, int k,
    int renorm, uint32_t *nf)
{
	int E = p->E;

	for (uint32_t t = 0; t < T; t++) {
		const float *x = clean_row(S + (size_t)t * E, E, p->row, nf);
		int32_t *sel = p->sel + (size_t)t * k;

		route_topk(x, E, k, sel);
		gate_weights(x, E, sel, k, renorm, p->selw + (size_t)t * k);
	}
}

static void
emit_fixed_k(struct route_policy *p, uint32_t T, int k, struct route_out *o)
{
	size_t n = (size_t)T * k;

	for (uint32_t t = 0; t <= T; t++)
		o->off[t] = t * (uint32_t)k;
	memcpy(o->expert, p->sel, n * sizeof(int32_t));
	memcpy(o->weight, p->selw, n * sizeof(float));
}

/* ---- groups ------------------------------------------------------------ */

static int
check_groups(const struct route_group *g, int n, uint32_t T)
{
	uint64_t next = 0;

	if (g == NULL)
		return n == 0 ? 0 : EPMOE_EINVAL;
	if (n < 0)
		return EPMOE_EINVAL;
	for (int i = 0; i < n; i++) {
		if (g[i].start != next ||
		    (g[i].kind != ROUTE_GROUP_PREFILL &&
		    g[i].kind != ROUTE_GROUP_DECODE))
			return EPMOE_EINVAL;
		next += g[i].n;
	}
	return next == T ? 0 : EPMOE_EINVAL;
}

/* Calls fn for every routing group: each PREFILL segment alone, then all
 * DECODE segments together; tok lists the group's tokens in order. */
typedef int (*group_fn)(struct route_policy *p, const float *S,
    const int32_t *tok, uint32_t n, struct route_info *info);

static int
for_each_group(struct route_policy *p, const float *S, uint32_t T,
    const struct route_group *g, int n_groups, group_fn fn,
    struct route_info *info)
{
	uint32_t nd = 0;
	int rc;

	if (g == NULL) {
		for (uint32_t t = 0; t < T; t++)
			p->gidx[t] = (int32_t)t;
		return T ? fn(p, S, p->gidx, T, info) : 0;
	}
	for (int i = 0; i < n_groups; i++) {
		if (g[i].n == 0)
			continue;
		if (g[i].kind == ROUTE_GROUP_DECODE) {
			for (uint32_t j = 0; j < g[i].n; j++)
				p->dec[nd++] = (int32_t)(g[i].start + j);
			continue;
		}
		for (uint32_t j = 0; j < g[i].n; j++)
			p->gidx[j] = (int32_t)(g[i].start + j);
		if ((rc = fn(p, S, p->gidx, g[i].n, info)) != 0)
			return rc;
	}
	if (nd > 0 && (rc = fn(p, S, p->dec, nd, info)) != 0)
		return rc;
	return 0;
}

/* Copies the group's rows into p->G [n, E], cleaning non-finite values. */
static void
gather(struct route_policy *p, const float *S, const int32_t *tok,
    uint32_t n, struct route_info *info)
{
	int E = p->E;

	for (uint32_t j = 0; j < n; j++) {
		const float *x = S + (size_t)tok[j] * E;
		float *d = p->G + (size_t)j * E;
		const float *c = clean_row(x, E, d, &info->n_nonfinite);

		if (c != d)
			memcpy(d, x, (size_t)E * sizeof(float));
	}
}

/* ---- capacity (§1.2) --------------------------------------------------- */

static uint32_t
capacity_of(const struct route_cfg *c, uint32_t n, int E)
{
	double x;
	uint32_t cap;

	if (!(c->factor > 0.0f))
		return n;
	x = (double)n * c->k / E * c->factor;
	cap = (uint32_t)ceil(x - 1e-9);
	if (cap < (uint32_t)c->min_capacity)
		cap = (uint32_t)c->min_capacity;
	return cap;
}

static int
capacity_group(struct route_policy *p, const float *S, const int32_t *tok,
    uint32_t n, struct route_info *info)
{
	int E = p->E, k = p->cfg.k;
	uint32_t cap = capacity_of(&p->cfg, n, E);

	(void)S;
	memset(p->ecnt, 0, (size_t)E * sizeof(uint32_t));
	if (p->cfg.drop == ROUTE_DROP_POSITION) {
		/* GShard order: every first choice, then every second... */
		for (int r = 0; r < k; r++) {
			for (uint32_t j = 0; j < n; j++) {
				size_t i = (size_t)tok[j] * k + r;
				int32_t e = p->sel[i];

				if (p->ecnt[e] < cap) {
					p->ecnt[e]++;
				} else {
					p->keep[i] = 0;
					info->n_dropped++;
				}
			}
		}
		return 0;
	}
	/* probs: bucket the group's pairs by expert, keep each expert's cap
	 * largest weights (ties: earlier token, then earlier choice). */
	for (uint32_t j = 0; j < n; j++)
		for (int r = 0; r < k; r++)
			p->ecnt[p->sel[(size_t)tok[j] * k + r]]++;
	p->eoff[0] = 0;
	for (int e = 0; e < E; e++)
		p->eoff[e + 1] = p->eoff[e] + p->ecnt[e];
	memcpy(p->ecnt, p->eoff, (size_t)E * sizeof(uint32_t));
	for (uint32_t j = 0; j < n; j++) {
		for (int r = 0; r < k; r++) {
			size_t i = (size_t)tok[j] * k + r;
			uint32_t at = p->ecnt[p->sel[i]]++;

			p->vals[at] = p->selw[i];
			p->vidx[at] = (int32_t)(j * (uint32_t)k + (uint32_t)r);
		}
	}
	for (int e = 0; e < E; e++) {
		uint32_t o = p->eoff[e], m = p->eoff[e + 1] - o;

		if (m <= cap)
			continue;
		route_select(p->vals + o, p->vidx + o, (int)m, (int)cap);
		for (uint32_t q = cap; q < m; q++) {
			int32_t v = p->vidx[o + q];
			size_t i = (size_t)tok[v / k] * k + v % k;

			p->keep[i] = 0;
			info->n_dropped++;
		}
	}
	return 0;
}

/* ---- expert choice (§3) ------------------------------------------------ */

static int
expert_choice_group(struct route_policy *p, const float *S,
    const int32_t *tok, uint32_t n, struct route_info *info)
{
	int E = p->E, rc;
	double x = (double)n * p->cfg.c / E;
	uint32_t cap = (uint32_t)fmin(ceil(x - 1e-9), (double)n);

	if (cap < 1)
		cap = 1;
	gather(p, S, tok, n, info);
	for (uint32_t j = 0; j < n; j++)
		softmax_row(p->G + (size_t)j * E, E, p->A + (size_t)j * E);
	memset(p->mask, 0, (size_t)n * E);
	for (int e = 0; e < E; e++) {
		for (uint32_t j = 0; j < n; j++) {
			p->vals[j] = p->A[(size_t)j * E + e];
			p->vidx[j] = (int32_t)j;
		}
		route_select(p->vals, p->vidx, (int)n, (int)cap);
		for (uint32_t q = 0; q < cap; q++)
			p->mask[(size_t)p->vidx[q] * E + e] = 1;
	}
	for (uint32_t j = 0; j < n; j++)
		for (int e = 0; e < E; e++)
			if (p->mask[(size_t)j * E + e] &&
			    (rc = pairs_push(p, (uint32_t)tok[j], e,
			    p->A[(size_t)j * E + e])) != 0)
				return rc;
	return 0;
}

/* ---- USMoE (§6) ----------------------------------------------------------- */

static int
usmoe_group(struct route_policy *p, const float *S, const int32_t *tok,
    uint32_t n, struct route_info *info)
{
	int E = p->E, rc;
	size_t ne = (size_t)n * E;
	float r = p->cfg.rate, se = 2.0f / (float)E;
	double want = floor((double)p->cfg.budget * n * p->cfg.k + 0.5);
	size_t m = want < 1.0 ? 1 : want > (double)ne ? ne : (size_t)want;

	gather(p, S, tok, n, info);
	for (uint32_t j = 0; j < n; j++) {
		const float *x = p->G + (size_t)j * E;
		float *U = p->A + (size_t)j * E;

		softmax_row(x, E, U);
		for (int e = 0; e < E; e++)
			U[e] = (1.0f - r) * U[e] + r * se * sigmoidf(x[e]);
	}
	for (size_t i = 0; i < ne; i++) {
		p->vals[i] = p->A[i];
		p->vidx[i] = (int32_t)i;
	}
	route_select(p->vals, p->vidx, (int)ne, (int)m);
	memset(p->mask, 0, ne);
	for (size_t q = 0; q < m; q++)
		p->mask[p->vidx[q]] = 1;
	for (uint32_t j = 0; j < n; j++) {
		const float *U = p->A + (size_t)j * E;
		const uint8_t *mk = p->mask + (size_t)j * E;
		double s = 0.0;

		for (int e = 0; e < E; e++)
			if (p->cfg.uweights == ROUTE_UW_ROWSUM ||
			    (p->cfg.uweights == ROUTE_UW_RENORM && mk[e]))
				s += U[e];
		if (p->cfg.uweights == ROUTE_UW_U || !(s > 0.0))
			s = 1.0;
		for (int e = 0; e < E; e++)
			if (mk[e] && (rc = pairs_push(p, (uint32_t)tok[j], e,
			    (float)(U[e] / s))) != 0)
				return rc;
	}
	return 0;
}

/* ---- sinkhorn and ssr (§0.1, §0.2, §4.2, §5) --------------------------- */

/* Plain top-k of the group (used when OT is pointless: one token, or
 * k = E). */
static int
plain_group(struct route_policy *p, const int32_t *tok, uint32_t n)
{
	int k = p->cfg.k, rc;

	for (uint32_t j = 0; j < n; j++) {
		const float *x = p->G + (size_t)j * p->E;
		int32_t *sel = p->sel;
		float *w = p->selw;

		route_topk(x, p->E, k, sel);
		gate_weights(x, p->E, sel, k, p->cfg.renorm, w);
		for (int q = 0; q < k; q++)
			if ((rc = pairs_push(p, (uint32_t)tok[j], sel[q],
			    w[q])) != 0)
				return rc;
	}
	return 0;
}

static int
ot_group(struct route_policy *p, const float *S, const int32_t *tok,
    uint32_t n, struct route_info *info)
{
	const struct route_cfg *c = &p->cfg;
	int E = p->E, k = c->k, rc;
	const float *C;
	struct route_ot_result res;
	int plan_weights = c->kind == ROUTE_SSR &&
	    c->kernel == ROUTE_KERNEL_EXP;

	gather(p, S, tok, n, info);
	/* One token: the column constraint forces a uniform plan, which
	 * carries no preference; k = E: every expert is chosen anyway. */
	if (n < 2 || k >= E)
		return plain_group(p, tok, n);
	C = p->G;
	if (c->cost == ROUTE_COST_SOFTMAX) {
		for (uint32_t j = 0; j < n; j++)
			softmax_row(p->G + (size_t)j * E, E,
			    p->B + (size_t)j * E);
		C = p->B;
	}
	if (c->kernel == ROUTE_KERNEL_EXP)
		rc = route_sinkhorn(&p->ot, C, (int)n, E, c->xi, 1.0f,
		    (float)n / (float)E, c->iters, c->tol, p->A, &res);
	else
		rc = route_sinkhorn_capped(&p->ot, C, (int)n, E, c->xi,
		    (float)k, (float)n * (float)k / (float)E, c->iters, c->tol,
		    p->A, &res);
	if (rc != 0)
		return rc;
	info->ot_ran = 1;
	info->ot_groups++;
	info->ot_iters += (uint32_t)res.iters;
	if (!(res.residual <= info->ot_residual))
		info->ot_residual = res.residual;
	for (uint32_t j = 0; j < n; j++) {
		const float *pl = p->A + (size_t)j * E;
		int32_t *sel = p->sel;
		float *w = p->selw;

		route_topk(pl, E, k, sel);
		if (plan_weights) {
			double s = 0.0;

			for (int q = 0; q < k; q++)
				s += pl[sel[q]];
			for (int q = 0; q < k; q++)
				w[q] = s > 0.0 ? (float)(pl[sel[q]] / s) :
				    1.0f / (float)k;
		} else {
			gate_weights(p->G + (size_t)j * E, E, sel, k,
			    c->renorm, w);
		}
		for (int q = 0; q < k; q++)
			if ((rc = pairs_push(p, (uint32_t)tok[j], sel[q],
			    w[q])) != 0)
				return rc;
	}
	return 0;
}

/* ssr: should this (step, layer) run OT?  Fills p->sel/selw with plain
 * top-k of every token when the decision needs it (lambda schedule). */
static int
ssr_decide(struct route_policy *p, int layer, uint64_t step, const float *S,
    uint32_t T, struct route_info *info, int *have_topk)
{
	const struct route_cfg *c = &p->cfg;
	const uint16_t *wk = p->worker + (size_t)layer * p->E;
	uint32_t *wload = p->wload, wmax = 0;
	double mean;
	int k = c->k;

	*have_topk = 0;
	if (c->sched == ROUTE_SSR_P) {
		uint64_t h = mix64(c->seed ^ mix64(step ^ mix64((uint64_t)layer)));
		double uval = (double)(h >> 11) * (1.0 / 9007199254740992.0);

		return uval < (double)c->p;
	}
	if (!(c->lambda > 0.0f))
		return 1;
	topk_all(p, S, T, k, c->renorm, &info->n_nonfinite);
	*have_topk = 1;
	memset(wload, 0, (size_t)p->n_workers * sizeof(*wload));
	for (size_t i = 0; i < (size_t)T * k; i++)
		wload[wk[p->sel[i]]]++;
	for (int w = 0; w < p->n_workers; w++)
		if (wload[w] > wmax)
			wmax = wload[w];
	mean = (double)T * k / p->n_workers;
	info->worker_ratio = mean > 0.0 ? (float)(wmax / mean) : 0.0f;
	return wmax > c->lambda * mean;
}

/* ---- route_run ---------------------------------------------------------- */

/* Builds CSR from p->pairs (stable: a token's pairs keep their order). */
static int
assemble(struct route_policy *p, uint32_t T, struct route_out *o)
{
	if (out_reserve(o, T, (uint32_t)p->E, p->n_pairs))
		return EPMOE_ENOMEM;
	memset(o->off, 0, ((size_t)T + 1) * sizeof(uint32_t));
	for (size_t i = 0; i < p->n_pairs; i++)
		o->off[p->pairs[i].tok + 1]++;
	for (uint32_t t = 0; t < T; t++)
		o->off[t + 1] += o->off[t];
	memcpy(p->cursor, o->off, (size_t)T * sizeof(uint32_t));
	for (size_t i = 0; i < p->n_pairs; i++) {
		uint32_t at = p->cursor[p->pairs[i].tok]++;

		o->expert[at] = p->pairs[i].e;
		o->weight[at] = p->pairs[i].w;
	}
	return 0;
}

static void
native_run(struct route_policy *p, const float *S, uint32_t T,
    struct route_out *o, uint32_t *nf)
{
	int E = p->E, k = p->cfg.k, renorm = p->cfg.renorm;

	for (uint32_t t = 0; t < T; t++) {
		const float *x = clean_row(S + (size_t)t * E, E, p->row, nf);
		int32_t *sel = o->expert + (size_t)t * k;

		route_topk(x, E, k, sel);
		gate_weights(x, E, sel, k, renorm, o->weight + (size_t)t * k);
		o->off[t] = t * (uint32_t)k;
	}
	o->off[T] = T * (uint32_t)k;
}

static void
lossfree_run(struct route_policy *p, int layer, const float *S, uint32_t T,
    struct route_out *o, uint32_t *nf)
{
	int E = p->E, k = p->cfg.k;
	float *b = p->bias + (size_t)layer * E;
	float *q = p->row;   /* s + b */
	float *s = p->srow;  /* scores */
	float mean;

	for (uint32_t t = 0; t < T; t++) {
		const float *x = clean_row(S + (size_t)t * E, E, p->row, nf);
		int32_t *sel = o->expert + (size_t)t * k;
		float *w = o->weight + (size_t)t * k;
		double sum = 0.0;

		if (p->cfg.score == ROUTE_SCORE_SOFTMAX)
			softmax_row(x, E, s);
		else
			for (int e = 0; e < E; e++)
				s[e] = sigmoidf(x[e]);
		/* x may alias q (p->row) from here on: s is complete. */
		for (int e = 0; e < E; e++)
			q[e] = s[e] + b[e];
		route_topk(q, E, k, sel);
		for (int j = 0; j < k; j++)
			sum += s[sel[j]];
		for (int j = 0; j < k; j++)
			w[j] = p->cfg.renorm && sum > 0.0 ?
			    (float)(s[sel[j]] / sum) : s[sel[j]];
		o->off[t] = t * (uint32_t)k;
	}
	o->off[T] = T * (uint32_t)k;
	if (T == 0)
		return;
	/* Select with the old bias, then update (§2.2). */
	memset(p->ecnt, 0, (size_t)E * sizeof(uint32_t));
	for (size_t i = 0; i < (size_t)T * k; i++)
		p->ecnt[o->expert[i]]++;
	mean = (float)T * (float)k / (float)E;
	for (int e = 0; e < E; e++) {
		float d = mean - (float)p->ecnt[e];

		b[e] += p->cfg.u * (float)((d > 0.0f) - (d < 0.0f));
	}
}

int
route_run(struct route_policy *p, int layer, uint64_t step, const float *S,
    uint32_t T, const struct route_group *groups, int n_groups,
    struct route_out *out, struct route_info *info)
{
	struct route_info in;
	const struct route_cfg *c;
	int rc = 0, k, E, ot = 0, have_topk = 0;
	uint32_t mx = 0;

	if (p == NULL || out == NULL || layer < 0 || layer >= p->n_layers ||
	    (T > 0 && S == NULL) || T > (1u << 30) ||
	    (groups != NULL && check_groups(groups, n_groups, T) != 0))
		return EPMOE_EINVAL;
	c = &p->cfg;
	k = c->k;
	E = p->E;
	memset(&in, 0, sizeof(in));
	if ((rc = ensure(p, T)) != 0)
		return rc;
	p->n_pairs = 0;
	switch (c->kind) {
	case ROUTE_NATIVE:
	case ROUTE_TOPK:
		if (out_reserve(out, T, (uint32_t)E, (size_t)T * k))
			return EPMOE_ENOMEM;
		native_run(p, S, T, out, &in.n_nonfinite);
		break;
	case ROUTE_LOSSFREE:
		if (out_reserve(out, T, (uint32_t)E, (size_t)T * k))
			return EPMOE_ENOMEM;
		lossfree_run(p, layer, S, T, out, &in.n_nonfinite);
		break;
	case ROUTE_CAPACITY:
		topk_all(p, S, T, k, c->renorm, &in.n_nonfinite);
		memset(p->keep, 1, (size_t)T * k);
		if ((rc = for_each_group(p, S, T, groups, n_groups,
		    capacity_group, &in)) != 0)
			return rc;
		for (uint32_t t = 0; t < T; t++)
			for (int r = 0; r < k; r++) {
				size_t i = (size_t)t * k + r;

				if (p->keep[i] && (rc = pairs_push(p, t,
				    p->sel[i], p->selw[i])) != 0)
					return rc;
			}
		rc = assemble(p, T, out);
		break;
	case ROUTE_EXPERT_CHOICE:
		if ((rc = for_each_group(p, S, T, groups, n_groups,
		    expert_choice_group, &in)) == 0)
			rc = assemble(p, T, out);
		break;
	case ROUTE_USMOE:
		if ((rc = for_each_group(p, S, T, groups, n_groups,
		    usmoe_group, &in)) == 0)
			rc = assemble(p, T, out);
		break;
	case ROUTE_SSR:
		if (T > 0) {
			ot = ssr_decide(p, layer, step, S, T, &in, &have_topk);
			if (ot < 0)
				return ot;
		}
		if (!ot) {
			/* plain top-k (SSR at inference, §5.4) */
			if (!have_topk)
				topk_all(p, S, T, k, c->renorm,
				    &in.n_nonfinite);
			if (out_reserve(out, T, (uint32_t)E, (size_t)T * k))
				return EPMOE_ENOMEM;
			emit_fixed_k(p, T, k, out);
			break;
		}
		/* The non-finite count comes from the OT pass alone. */
		in.n_nonfinite = 0;
		/* FALLTHROUGH */
	case ROUTE_SINKHORN:
		if ((rc = for_each_group(p, S, T, groups, n_groups, ot_group,
		    &in)) == 0)
			rc = assemble(p, T, out);
		break;
	default:
		return EPMOE_EINVAL;
	}
	if (rc != 0)
		return rc;
	/* balance metrics */
	memset(out->load, 0, (size_t)E * sizeof(uint32_t));
	in.n_pairs = out->off[T];
	for (uint32_t i = 0; i < in.n_pairs; i++)
		out->load[out->expert[i]]++;
	for (int e = 0; e < E; e++)
		if (out->load[e] > mx)
			mx = out->load[e];
	if (in.n_pairs > 0) {
		double mean = (double)in.n_pairs / E;

		in.maxvio = (float)((mx - mean) / mean);
	}
	in.experts_per_token = T ? (float)in.n_pairs / (float)T : 0.0f;
	in.load = out->load;
	p->st.calls++;
	p->st.ot_calls += in.ot_ran ? 1 : 0;
	p->st.ot_groups += in.ot_groups;
	p->st.ot_iters += in.ot_iters;
	p->st.nonfinite += in.n_nonfinite;
	p->st.dropped += in.n_dropped;
	p->st.pairs += in.n_pairs;
	if (info != NULL)
		*info = in;
	return 0;
}
