/* Generation requests: the rules every front end's requests go by.  See
 * gen.h.  Nothing here knows a wire format. */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "err.h"
#include "gen.h"
#include "rng.h"
#include "router.h"
#include "stats.h"

static const char *const field_names[] = {
	[GEN_F_NONE] = NULL, [GEN_F_MODEL] = "model", [GEN_F_PROMPT] = "prompt",
	[GEN_F_MESSAGES] = "messages", [GEN_F_MAX_TOKENS] = "max_tokens",
	[GEN_F_TEMPERATURE] = "temperature", [GEN_F_TOP_P] = "top_p",
	[GEN_F_TOP_K] = "top_k", [GEN_F_MIN_P] = "min_p", [GEN_F_STOP] = "stop",
	[GEN_F_ROUTING] = "routing", [GEN_F_LOGPROBS] = "logprobs",
};

const char *
gen_field_name(enum gen_field f)
{
	return (unsigned)f < sizeof(field_names) / sizeof(field_names[0]) ?
	        field_names[f] : NULL;
}

static int fail(struct gen_err *err, int code, enum gen_field f,
        const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int
fail(struct gen_err *err, int code, enum gen_field f, const char *fmt, ...)
{
	va_list ap;

	err->code = code;
	err->field = f;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return code;
}

/* A number for messages: integers without a fraction. */
static const char *
num_str(char *buf, size_t size, double d)
{
	if (isfinite(d) && d == floor(d) && fabs(d) < 1e15)
		snprintf(buf, size, "%.0f", d);
	else
		snprintf(buf, size, "%g", d);
	return buf;
}

/* The real-valued sampling fields: one row each, the whole definition. */
static const struct real_field {
	enum gen_field f;
	double lo, hi;
	bool lo_open;
} reals[] = {
	{ GEN_F_TEMPERATURE, 0, 2, false },
	{ GEN_F_TOP_P, 0, 1, true },
	{ GEN_F_MIN_P, 0, 1, false },
};

static int
check_real(const struct real_field *rf, double v, struct gen_err *err)
{
	char b[32];

	if (isfinite(v) && (rf->lo_open ? v > rf->lo : v >= rf->lo) && v <= rf->hi)
		return 0;
	return fail(err, EPMOE_EINVAL, rf->f, "'%s' must be a number in %c%g, %g], got %s",
	        gen_field_name(rf->f), rf->lo_open ? '(' : '[', rf->lo, rf->hi,
	        num_str(b, sizeof(b), v));
}

static int
check_int(enum gen_field f, int64_t v, int64_t lo, int64_t hi, struct gen_err *err)
{
	if (v >= lo && v <= hi)
		return 0;
	return fail(err, EPMOE_EINVAL, f, "'%s' must be an integer in [%lld, %lld], got %lld",
	        gen_field_name(f), (long long)lo, (long long)hi, (long long)v);
}

void
gen_req_init(struct gen_req *q, enum gen_kind kind)
{
	memset(q, 0, sizeof(*q));
	q->kind = kind;
}

uint64_t
gen_seed(void)
{
	static _Atomic uint64_t counter;

	return rng_mix64(clock_now_ns() ^ rng_mix64(atomic_fetch_add(&counter, 1)));
}

void
gen_token_offsets(const char *text, size_t len, const struct sched_tok *toks,
        size_t n, size_t *off)
{
	size_t pos = 0;

	for (size_t i = 0; i < n; i++) {
		const char *p = toks[i].text ? toks[i].text : "";
		size_t pl = toks[i].text_len, rest = len - pos;

		off[i] = pos;
		if (pl <= rest && memcmp(text + pos, p, pl) == 0)
			pos += pl;
		else if (pl > 0 && p[0] == ' ' && pl - 1 <= rest &&
		        memcmp(text + pos, p + 1, pl - 1) == 0)
			pos += pl - 1;
	}
}

int
gen_check_routing(const struct route_model *gate, const char *spec, bool decode,
        char *canon, struct gen_err *err)
{
	struct route_cfg cfg, resolved;
	char msg[256] = "";

	if (strlen(spec) > GEN_MAX_ROUTING)
		return fail(err, EPMOE_EINVAL, GEN_F_ROUTING,
		        "'routing' is longer than %d bytes", GEN_MAX_ROUTING);
	if (route_parse(spec, &cfg, msg, sizeof(msg)) != 0 ||
	        route_cfg_resolve(&cfg, gate, &resolved, msg, sizeof(msg)) != 0)
		return fail(err, EPMOE_EINVAL, GEN_F_ROUTING, "%s", msg);
	/* a request routes its prompt and, when it generates, its tokens */
	if (route_check(&resolved, ROUTE_GROUP_PREFILL, msg, sizeof(msg)) != 0)
		return fail(err, EPMOE_EINVAL, GEN_F_ROUTING, "%s", msg);
	if (decode && route_check(&resolved, ROUTE_GROUP_DECODE, msg, sizeof(msg)) != 0)
		return fail(err, EPMOE_EINVAL, GEN_F_ROUTING, "%s; it routes whole prompts "
		        "only: use it with max_tokens 0 (scoring with echo and logprobs), or "
		        "pick a policy that routes decode steps", msg);
	/* the resolved configuration is the policy: one spelling for all the
	 * specs that make the same one ("sinkhorn" = "sinkhorn:xi=1.0") */
	if (route_format(&resolved, canon, GEN_MAX_ROUTING + 1) != 0)
		return fail(err, EPMOE_EINVAL, GEN_F_ROUTING, "'routing' is too long");
	return 0;
}

static int
check_prompt(const struct gen_limits *lim, const struct gen_req *q,
        struct gen_err *err)
{
	int forms = (q->text != NULL) + (q->ids != NULL) + (q->msgs != NULL);

	if (q->kind == GEN_CHAT) {
		if (q->msgs == NULL || q->n_msgs == 0 || forms != 1)
			return fail(err, EPMOE_EINVAL, GEN_F_MESSAGES,
			        "'messages' must be a non-empty list");
		for (size_t i = 0; i < q->n_msgs; i++) {
			const char *role = q->msgs[i].role ? q->msgs[i].role : "";
			if (strcmp(role, "system") && strcmp(role, "user") &&
			        strcmp(role, "assistant"))
				return fail(err, EPMOE_EINVAL, GEN_F_MESSAGES, "messages[%zu].role "
				        "must be one of system, user, assistant", i);
			if (q->msgs[i].content == NULL)
				return fail(err, EPMOE_EINVAL, GEN_F_MESSAGES,
				        "messages[%zu].content is required", i);
		}
		return 0;
	}
	if (forms != 1 || q->msgs != NULL)
		return fail(err, EPMOE_EINVAL, GEN_F_PROMPT,
		        "give the prompt as text or as token ids");
	for (size_t i = 0; q->ids && i < q->n_ids; i++)
		if (q->ids[i] >= lim->n_vocab)
			return fail(err, EPMOE_EINVAL, GEN_F_PROMPT, "'prompt' must hold token "
			        "ids, integers in [0, %u); position %zu holds %u", lim->n_vocab,
			        i, q->ids[i]);
	return 0;
}

static int
check_sampling(const struct gen_req *q, struct sample_params *sp,
        struct gen_err *err)
{
	int rc;

	sample_params_default(sp);
	if (q->has_temperature) {
		if ((rc = check_real(&reals[0], q->temperature, err)) != 0)
			return rc;
		sp->temperature = (float)q->temperature;
	}
	if (q->has_top_p) {
		if ((rc = check_real(&reals[1], q->top_p, err)) != 0)
			return rc;
		sp->top_p = (float)q->top_p;
	}
	if (q->has_min_p) {
		if ((rc = check_real(&reals[2], q->min_p, err)) != 0)
			return rc;
		sp->min_p = (float)q->min_p;
	}
	/* -1 is vLLM's spelling of "off", like 0 */
	if (q->has_top_k) {
		if ((rc = check_int(GEN_F_TOP_K, q->top_k, -1, INT32_MAX, err)) != 0)
			return rc;
		sp->top_k = q->top_k < 0 ? 0 : (int32_t)q->top_k;
	}
	sp->seed = q->has_seed ? q->seed : gen_seed();
	return 0;
}

int
gen_check(const struct gen_limits *lim, const struct gen_req *q,
        struct gen_plan *out, struct gen_err *err)
{
	struct gen_plan pl;
	char b[32];
	int rc;

	memset(&pl, 0, sizeof(pl));
	if (q->model && q->model[0] && strcmp(q->model, lim->model) != 0)
		return fail(err, EPMOE_ENOENT, GEN_F_MODEL, "the model '%.100s' does not exist; "
		        "this server serves '%.100s'", q->model, lim->model);
	if ((rc = check_prompt(lim, q, err)) != 0)
		return rc;
	pl.max_tokens = q->kind == GEN_CHAT ? -1 : GEN_COMPLETION_MAX_TOKENS;
	if (q->has_max_tokens) {
		if (q->max_tokens > (int64_t)lim->max_tokens_limit)
			return fail(err, EPMOE_EINVAL, GEN_F_MAX_TOKENS, "'max_tokens' must be at "
			        "most %u (this server's limit), got %s", lim->max_tokens_limit,
			        num_str(b, sizeof(b), (double)q->max_tokens));
		if ((rc = check_int(GEN_F_MAX_TOKENS, q->max_tokens, q->kind == GEN_CHAT,
		             lim->max_tokens_limit, err)) != 0)
			return rc;
		pl.max_tokens = q->max_tokens;
	}
	if ((rc = check_sampling(q, &pl.sample, err)) != 0)
		return rc;
	if (q->n_stop > GEN_MAX_STOP)
		return fail(err, EPMOE_EINVAL, GEN_F_STOP, "'stop' may hold at most %d strings",
		        GEN_MAX_STOP);
	for (size_t i = 0; i < q->n_stop; i++)
		if (q->stop[i] == NULL || q->stop[i][0] == '\0')
			return fail(err, EPMOE_EINVAL, GEN_F_STOP, "stop strings must not be empty");
	if (q->has_logprobs) {
		if ((rc = check_int(GEN_F_LOGPROBS, q->logprobs, 0, q->kind == GEN_CHAT ?
		             GEN_MAX_TOP_LOGPROBS : GEN_MAX_LOGPROBS, err)) != 0)
			return rc;
		pl.logprobs = true;
		pl.top_logprobs = (uint32_t)q->logprobs;
	}
	if (q->routing && q->routing[0]) {
		if ((rc = gen_check_routing(&lim->gate, q->routing, pl.max_tokens != 0,
		             pl.routing, err)) != 0)
			return rc;
		/* the server's default runs as the engine's own policy */
		if (lim->default_routing && strcmp(pl.routing, lim->default_routing) == 0)
			pl.routing[0] = '\0';
	}
	*out = pl;
	return 0;
}

/* ---- submission ---- */

static int
build_prompt(struct router *r, const struct gen_req *q, int32_t **ids,
        size_t *n, struct gen_err *err)
{
	int rc;

	*ids = NULL;
	*n = 0;
	if (q->msgs) {
		const char **roles = calloc(q->n_msgs, sizeof(*roles));
		const char **contents = calloc(q->n_msgs, sizeof(*contents));
		rc = roles && contents ? 0 : EPMOE_ENOMEM;
		for (size_t i = 0; rc == 0 && i < q->n_msgs; i++) {
			roles[i] = q->msgs[i].role;
			contents[i] = q->msgs[i].content;
		}
		if (rc == 0)
			rc = router_chat_prompt(r, roles, contents, q->n_msgs, ids, n);
		free(roles);
		free(contents);
	} else if (q->ids) {
		if ((*ids = malloc((q->n_ids ? q->n_ids : 1) * sizeof(**ids))) == NULL)
			return fail(err, EPMOE_ENOMEM, GEN_F_NONE, "out of memory");
		for (size_t i = 0; i < q->n_ids; i++)
			(*ids)[i] = (int32_t)q->ids[i];
		*n = q->n_ids;
		rc = 0;
	} else {
		rc = router_tokenize(r, q->text, q->text_len, true, false, ids, n);
	}
	if (rc != 0)
		return fail(err, rc, GEN_F_NONE, "cannot build the prompt: %s", epmoe_strerror(rc));
	if (*n == 0) {
		free(*ids);
		*ids = NULL;
		return fail(err, EPMOE_EINVAL, q->msgs ? GEN_F_MESSAGES : GEN_F_PROMPT,
		        "the prompt is empty");
	}
	return 0;
}

static void
limits_of(struct router *r, struct gen_limits *lim)
{
	const struct model_hparams *hp = &r->model->hp;

	lim->model = r->cfg.model_name;
	lim->n_vocab = hp->n_vocab;
	lim->max_tokens_limit = r->cfg.max_tokens_limit;
	lim->gate = (struct route_model){ .n_experts = (int)hp->n_expert,
		.k = (int)hp->n_expert_used, .renorm = hp->expert_weights_norm,
		.n_layers = (int)hp->n_layer };
	lim->default_routing = r->default_routing[0] ? r->default_routing : NULL;
}

static int
submit(struct router *r, const struct gen_req *q, sched_event_fn cb, void *ud,
        struct sched_req **out, struct gen_err *err)
{
	struct sched_req_params p = { 0 };
	struct gen_limits lim;
	struct gen_plan pl;
	char msg[320] = "";
	int rc;

	limits_of(r, &lim);
	if ((rc = gen_check(&lim, q, &pl, err)) != 0)
		return rc;
	if (!router_ready(r))
		return fail(err, EPMOE_EUNAVAIL, GEN_F_NONE, r->stopping ?
		        "the server is shutting down; retry on another" :
		        "the experts are not all served yet (workers starting or down); retry");
	if ((rc = build_prompt(r, q, &p.prompt, &p.n_prompt, err)) != 0)
		return rc;
	if (pl.max_tokens < 0) {
		/* chat without a limit: up to the server default, within context */
		uint32_t n_ctx = engine_n_ctx(r->engine);
		uint32_t room = n_ctx > p.n_prompt ? n_ctx - (uint32_t)p.n_prompt : 0;
		pl.max_tokens = r->cfg.max_tokens_default < room ? r->cfg.max_tokens_default : room;
	}
	p.max_tokens = (uint32_t)pl.max_tokens;
	p.sample = pl.sample;
	for (size_t i = 0; i < q->n_stop; i++) {
		if ((p.stop[i] = strdup(q->stop[i])) == NULL) {
			rc = fail(err, EPMOE_ENOMEM, GEN_F_NONE, "out of memory");
			goto out;
		}
		p.n_stop = i + 1;
	}
	p.routing = pl.routing[0] ? pl.routing : NULL;
	p.echo = q->echo;
	p.top_logprobs = pl.top_logprobs;
	p.ignore_eos = q->ignore_eos;
	p.cb = cb;
	p.ud = ud;
	if ((rc = sched_submit(r->sched, &p, out, msg, sizeof(msg))) != 0)
		fail(err, rc, rc == EPMOE_ERANGE ? GEN_F_MAX_TOKENS :
		        rc == EPMOE_EINVAL ? GEN_F_PROMPT : GEN_F_NONE, "%s", msg);
out:
	/* what the scheduler did not take is still ours */
	free(p.prompt);
	for (size_t i = 0; i < p.n_stop; i++)
		free(p.stop[i]);
	return rc;
}

int
gen_submit(struct router *r, const struct gen_req *q, sched_event_fn cb,
        void *ud, struct sched_req **out, struct gen_err *err)
{
	int rc = submit(r, q, cb, ud, out, err);

	if (rc != 0)
		stats_count_reject(r->stats, rc);
	return rc;
}
