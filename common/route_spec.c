/* The routing spec language: policy names, their keys with types, ranges
 * and defaults, route_parse / route_format (canonical text) / help, and
 * the check of where a policy applies.  No policy runs here (route.c). */
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
		float f;

		errno = 0;
		x = strtod(v, &end);
		if (errno || *end != '\0' || !isfinite(x) || x < kd->min ||
		    x > kd->max || (kd->min_open && x <= kd->min))
			return -1;
		/* checked again as stored: a tiny positive double rounds to
		 * float 0 ("budget=1e-300"), which an open minimum excludes */
		f = (float)x;
		if (f < kd->min || (kd->min_open && f <= kd->min))
			return -1;
		*(float *)dst = f;
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
		epmoe_set_err(err, err_len, "empty routing policy");
		return EPMOE_EINVAL;
	}
	if (strlen(spec) >= sizeof(buf)) {
		epmoe_set_err(err, err_len, "routing policy spec too long");
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
		epmoe_set_err(err, err_len, "unknown routing policy '%s' (policies: "
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
		epmoe_set_err(err, err_len, "%s: nothing after ':'", name);
		return EPMOE_EINVAL;
	}
	for (item = strtok_r(rest, ",", &save); item != NULL;
	    item = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(item, '=');
		const struct key_desc *kd = NULL;
		int id = -1;

		if (eq == NULL) {
			epmoe_set_err(err, err_len, "%s: expected key=value, got '%s'",
			    name, item);
			return EPMOE_EINVAL;
		}
		*eq = '\0';
		for (const int *k = kind_keys[kind]; *k != KEYS_END; k++)
			if (strcmp(item, keys[*k].name) == 0)
				id = *k;
		if (id < 0) {
			if (klist[0] == '\0')
				epmoe_set_err(err, err_len, "%s: unknown key '%s' (the "
				    "policy takes no keys)", name, item);
			else
				epmoe_set_err(err, err_len, "%s: unknown key '%s' "
				    "(keys: %s)", name, item, klist);
			return EPMOE_EINVAL;
		}
		kd = &keys[id];
		if (seen[id]) {
			epmoe_set_err(err, err_len, "%s: key '%s' given twice", name,
			    item);
			return EPMOE_EINVAL;
		}
		seen[id] = 1;
		if (parse_value(kd, eq + 1, &cfg) != 0) {
			describe_range(kd, range, sizeof(range));
			epmoe_set_err(err, err_len, "%s: bad value '%s' for %s (%s)",
			    name, eq + 1, kd->name, range);
			return EPMOE_EINVAL;
		}
	}
	if (seen[K_P] && (seen[K_LAMBDA] || seen[K_WORKERS])) {
		epmoe_set_err(err, err_len, "ssr: give either p (random schedule) or "
		    "lambda/workers (load schedule), not both");
		return EPMOE_EINVAL;
	}
	if (seen[K_SEED] && !seen[K_P]) {
		epmoe_set_err(err, err_len, "ssr: seed belongs to the random schedule; "
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
		epmoe_set_err(err, err_len, "invalid routing policy");
		return EPMOE_EINVAL;
	}
	if (kind != ROUTE_GROUP_PREFILL && kind != ROUTE_GROUP_DECODE) {
		epmoe_set_err(err, err_len, "invalid routing group kind %d",
		    (int)kind);
		return EPMOE_EINVAL;
	}
	if (!(kind_groups[cfg->kind] & (1 << kind))) {
		epmoe_set_err(err, err_len, "routing policy '%s' cannot route %s "
		    "tokens", kind_names[cfg->kind],
		    kind == ROUTE_GROUP_DECODE ? "decode" : "prefill");
		return EPMOE_ENOTSUP;
	}
	return 0;
}

int
route_cfg_resolve(const struct route_cfg *cfg, const struct route_model *m,
    struct route_cfg *out, char *err, size_t err_len)
{
	struct route_cfg c;
	const char *name;

	if (cfg == NULL || m == NULL || (name = route_kind_name(cfg->kind)) == NULL) {
		epmoe_set_err(err, err_len, "invalid routing policy");
		return EPMOE_EINVAL;
	}
	if (m->n_experts < 1 || m->n_experts > 65535 || m->k < 1 ||
	    m->k > m->n_experts || m->n_layers < 1 ||
	    (m->renorm != 0 && m->renorm != 1)) {
		epmoe_set_err(err, err_len, "invalid model gate: %d experts, k=%d, "
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
		epmoe_set_err(err, err_len, "%s: k=%d exceeds the model's %d experts",
		    name, c.k, m->n_experts);
		return EPMOE_EINVAL;
	}
	*out = c;
	return 0;
}
