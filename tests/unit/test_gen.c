/* Generation requests (server/gen.c): every field's default and the edges
 * of its range, the routing spec's canonical form and checks, the token
 * offsets of an echoed prompt, and the two front ends' translations
 * (OpenAI JSON through oai.c + api.c, protobuf through nngapi.c) giving
 * the same verdict and the same plan for the same values. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "epmoe.pb-c.h"
#include "err.h"
#include "gen.h"
#include "nngapi.h"
#include "oai.h"
#include "testutil.h"

static const struct gen_limits lim = {
	.model = "tiny-moe", .n_vocab = 1000, .max_tokens_limit = 512,
	.gate = { .n_experts = 8, .k = 2, .renorm = 0, .n_layers = 4 },
	.default_routing = NULL,
};

static struct gen_req
cmpl(void)
{
	struct gen_req q;

	gen_req_init(&q, GEN_COMPLETION);
	q.text = "Hello";
	q.text_len = 5;
	return q;
}

/* Asserts that q fails with code on field, the message holding needle. */
static void
fails(const struct gen_req *q, int code, enum gen_field field, const char *needle)
{
	struct gen_plan pl;
	struct gen_err e;
	int rc = gen_check(&lim, q, &pl, &e);

	ck_assert_msg(rc == code, "rc %d, want %d (%s)", rc, code, rc ? e.message : "accepted");
	ck_assert_int_eq(e.code, code);
	ck_assert_int_eq(e.field, field);
	ck_assert_msg(strstr(e.message, needle), "'%s' lacks '%s'", e.message, needle);
}

static struct gen_plan
passes(const struct gen_req *q)
{
	struct gen_plan pl;
	struct gen_err e;

	ck_assert_msg(gen_check(&lim, q, &pl, &e) == 0, "refused: %s", e.message);
	return pl;
}

START_TEST(defaults_follow_openai_and_the_seed_is_picked)
{
	struct gen_req q = cmpl();
	struct gen_plan a = passes(&q), b = passes(&q);

	ck_assert_int_eq(a.max_tokens, GEN_COMPLETION_MAX_TOKENS);
	ck_assert_float_eq(a.sample.temperature, 1.0f);
	ck_assert_float_eq(a.sample.top_p, 1.0f);
	ck_assert_int_eq(a.sample.top_k, 0);
	ck_assert_float_eq(a.sample.min_p, 0.0f);
	ck_assert_str_eq(a.routing, "");
	ck_assert(!a.logprobs);
	/* no seed given: each request gets its own */
	ck_assert_uint_ne(a.sample.seed, b.sample.seed);
	q.has_seed = true;
	q.seed = UINT64_MAX;
	ck_assert_uint_eq(passes(&q).sample.seed, UINT64_MAX);
	/* chat without max_tokens: the server picks once the prompt is known */
	struct gen_msg m = { "user", "hi" };
	gen_req_init(&q, GEN_CHAT);
	q.msgs = &m;
	q.n_msgs = 1;
	ck_assert_int_eq(passes(&q).max_tokens, -1);
}
END_TEST

START_TEST(sampling_ranges_are_checked_at_their_edges)
{
	static const struct {
		int field;            /* 0 temperature, 1 top_p, 2 min_p */
		double v;
		bool ok;
	} cases[] = {
		{ 0, 0, true }, { 0, 2, true }, { 0, -1e-9, false }, { 0, 2.000001, false },
		{ 0, NAN, false }, { 0, INFINITY, false },
		{ 1, 1e-9, true }, { 1, 1, true }, { 1, 0, false }, { 1, 1.000001, false },
		{ 1, -0.5, false },
		{ 2, 0, true }, { 2, 1, true }, { 2, -1e-9, false }, { 2, 1.000001, false },
	};
	static const enum gen_field fields[] = { GEN_F_TEMPERATURE, GEN_F_TOP_P, GEN_F_MIN_P };
	static const char *const ranges[] = { "[0, 2]", "(0, 1]", "[0, 1]" };

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct gen_req q = cmpl();
		double *v = cases[i].field == 0 ? &q.temperature :
		        cases[i].field == 1 ? &q.top_p : &q.min_p;
		bool *has = cases[i].field == 0 ? &q.has_temperature :
		        cases[i].field == 1 ? &q.has_top_p : &q.has_min_p;
		*v = cases[i].v;
		*has = true;
		if (cases[i].ok) {
			struct gen_plan pl = passes(&q);
			float got = cases[i].field == 0 ? pl.sample.temperature :
			        cases[i].field == 1 ? pl.sample.top_p : pl.sample.min_p;
			ck_assert_float_eq(got, (float)cases[i].v);
		} else {
			fails(&q, EPMOE_EINVAL, fields[cases[i].field], ranges[cases[i].field]);
		}
	}
}
END_TEST

START_TEST(integer_fields_are_checked_at_their_edges)
{
	struct gen_req q = cmpl();
	struct gen_msg m = { "user", "hi" };

	/* top_k: -1 and 0 are off */
	q.has_top_k = true;
	q.top_k = -1;
	ck_assert_int_eq(passes(&q).sample.top_k, 0);
	q.top_k = INT32_MAX;
	ck_assert_int_eq(passes(&q).sample.top_k, INT32_MAX);
	q.top_k = (int64_t)INT32_MAX + 1;
	fails(&q, EPMOE_EINVAL, GEN_F_TOP_K, "[-1, 2147483647]");
	q.top_k = -2;
	fails(&q, EPMOE_EINVAL, GEN_F_TOP_K, "got -2");
	/* max_tokens: a completion may score only (0); the limit is inclusive */
	q = cmpl();
	q.has_max_tokens = true;
	q.max_tokens = 0;
	ck_assert_int_eq(passes(&q).max_tokens, 0);
	q.max_tokens = 512;
	ck_assert_int_eq(passes(&q).max_tokens, 512);
	q.max_tokens = 513;
	fails(&q, EPMOE_EINVAL, GEN_F_MAX_TOKENS, "at most 512");
	q.max_tokens = -1;
	fails(&q, EPMOE_EINVAL, GEN_F_MAX_TOKENS, "[0, 512]");
	gen_req_init(&q, GEN_CHAT);
	q.msgs = &m;
	q.n_msgs = 1;
	q.has_max_tokens = true;
	q.max_tokens = 0;
	fails(&q, EPMOE_EINVAL, GEN_F_MAX_TOKENS, "[1, 512]");
	q.max_tokens = 1;
	ck_assert_int_eq(passes(&q).max_tokens, 1);
	/* logprobs: 5 alternatives for completions, 20 for chat */
	q.has_logprobs = true;
	q.logprobs = 20;
	ck_assert_uint_eq(passes(&q).top_logprobs, 20);
	q.logprobs = 21;
	fails(&q, EPMOE_EINVAL, GEN_F_LOGPROBS, "[0, 20]");
	q = cmpl();
	q.has_logprobs = true;
	q.logprobs = 0;
	ck_assert(passes(&q).logprobs);
	q.logprobs = 5;
	ck_assert_uint_eq(passes(&q).top_logprobs, 5);
	q.logprobs = 6;
	fails(&q, EPMOE_EINVAL, GEN_F_LOGPROBS, "[0, 5]");
	q.logprobs = -1;
	fails(&q, EPMOE_EINVAL, GEN_F_LOGPROBS, "[0, 5]");
}
END_TEST

START_TEST(stops_model_prompt_and_messages_are_checked)
{
	const char *stops[] = { "a", "b", "c", "d", "e" };
	const char *empty[] = { "x", "" };
	const uint32_t ids[] = { 1, 999 }, bad_ids[] = { 1, 1000 };
	struct gen_msg m[] = { { "system", "s" }, { "pirate", "x" } };
	struct gen_req q = cmpl();

	q.stop = stops;
	q.n_stop = 4;
	passes(&q);
	q.n_stop = 5;
	fails(&q, EPMOE_EINVAL, GEN_F_STOP, "at most 4");
	q.stop = empty;
	q.n_stop = 2;
	fails(&q, EPMOE_EINVAL, GEN_F_STOP, "must not be empty");
	q = cmpl();
	q.model = "gpt-4";
	fails(&q, EPMOE_ENOENT, GEN_F_MODEL, "the model 'gpt-4' does not exist");
	q.model = "tiny-moe";
	passes(&q);
	q.model = "";
	passes(&q);
	q = cmpl();
	q.text = NULL;
	q.ids = ids;
	q.n_ids = 2;
	passes(&q);
	q.ids = bad_ids;
	fails(&q, EPMOE_EINVAL, GEN_F_PROMPT, "[0, 1000)");
	q.text = "x";
	q.ids = ids;
	fails(&q, EPMOE_EINVAL, GEN_F_PROMPT, "text or as token ids");
	gen_req_init(&q, GEN_CHAT);
	q.msgs = m;
	q.n_msgs = 2;
	fails(&q, EPMOE_EINVAL, GEN_F_MESSAGES, "messages[1].role");
	q.n_msgs = 0;
	fails(&q, EPMOE_EINVAL, GEN_F_MESSAGES, "non-empty");
}
END_TEST

START_TEST(routing_is_parsed_once_canonical_and_checked)
{
	struct gen_req q = cmpl();
	struct gen_limits l2 = lim;
	struct gen_plan pl;
	struct gen_err e;
	char canon[GEN_MAX_ROUTING + 1], big[GEN_MAX_ROUTING + 8];

	/* one spelling per policy: what the spec resolves to on this model */
	static const char *const same[][2] = {
		{ "ssr:lambda=1.50", "ssr:lambda=1.5" },
		{ "ssr", "ssr:lambda=1.3" },
		{ "topk:renorm=0,k=1", "topk:k=1,renorm=0" },
		{ "sinkhorn", "sinkhorn:xi=1.0" },
	};
	for (size_t i = 0; i < 4; i++) {
		char a[GEN_MAX_ROUTING + 1];
		q.routing = same[i][0];
		snprintf(a, sizeof(a), "%s", passes(&q).routing);
		q.routing = same[i][1];
		ck_assert_str_eq(passes(&q).routing, a);
	}
	q.routing = "ssr:lambda=1.50";
	ck_assert_ptr_nonnull(strstr(passes(&q).routing, "lambda=1.5"));
	q.routing = "sinkhorn:xi=2";
	ck_assert_ptr_nonnull(strstr(passes(&q).routing, "xi=2"));
	q.routing = "";
	ck_assert_str_eq(passes(&q).routing, "");
	q.routing = "nosuch";
	fails(&q, EPMOE_EINVAL, GEN_F_ROUTING, "unknown routing policy");
	q.routing = "ssr:k=a,b";
	fails(&q, EPMOE_EINVAL, GEN_F_ROUTING, "ssr");
	q.routing = "topk:k=9";
	fails(&q, EPMOE_EINVAL, GEN_F_ROUTING, "exceeds the model's 8 experts");
	/* whole-prompt policies score prompts only */
	q.routing = "usmoe";
	fails(&q, EPMOE_EINVAL, GEN_F_ROUTING, "max_tokens 0");
	q.has_max_tokens = true;
	q.max_tokens = 0;
	ck_assert_int_eq(strncmp(passes(&q).routing, "usmoe", 5), 0);
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	q.routing = big;
	fails(&q, EPMOE_EINVAL, GEN_F_ROUTING, "longer than 256");
	/* the server's default runs as the engine's own policy */
	ck_assert_int_eq(gen_check_routing(&lim.gate, "sinkhorn:xi=1.0", true, canon, &e), 0);
	l2.default_routing = canon;
	q = cmpl();
	q.routing = "sinkhorn";
	ck_assert_int_eq(gen_check(&l2, &q, &pl, &e), 0);
	ck_assert_str_eq(pl.routing, "");
}
END_TEST

static struct sched_tok
tok(const char *t)
{
	return (struct sched_tok){ .text = (char *)t, .text_len = strlen(t) };
}

START_TEST(prompt_offsets_index_into_the_returned_text)
{
	/* SentencePiece: the decoder drops the first piece's space */
	struct sched_tok t[] = { tok(""), tok(" In"), tok(" the"), tok(" beginning"),
		tok(" God") };
	const char *text = "In the beginning God";
	size_t off[5];

	gen_token_offsets(text, strlen(text), t, 5, off);
	ck_assert_uint_eq(off[0], 0);
	ck_assert_uint_eq(off[1], 0);
	ck_assert_uint_eq(off[2], 2);
	ck_assert_uint_eq(off[3], 6);
	ck_assert_uint_eq(off[4], 16);
	/* byte-level BPE keeps its spaces; a piece that is not in the text
	 * (a special token) takes no room */
	struct sched_tok u[] = { tok("<|s|>"), tok("Hi"), tok(" there") };
	gen_token_offsets("Hi there", 8, u, 3, off);
	ck_assert_uint_eq(off[0], 0);
	ck_assert_uint_eq(off[1], 0);
	ck_assert_uint_eq(off[2], 2);
}
END_TEST

/* ---- both front ends ---- */

/* One value of one field, as JSON and as the proto's field. */
struct fe_case {
	const char *json;     /* "\"temperature\": 2.5" */
	void (*set)(Epmoe__CompletionRequest *cr, const void *arg);
	const void *arg;
};

static void
set_temp(Epmoe__CompletionRequest *cr, const void *a)
{
	cr->temperature_opt_case = EPMOE__COMPLETION_REQUEST__TEMPERATURE_OPT_TEMPERATURE;
	cr->temperature = *(const float *)a;
}
static void
set_top_p(Epmoe__CompletionRequest *cr, const void *a)
{
	cr->top_p_opt_case = EPMOE__COMPLETION_REQUEST__TOP_P_OPT_TOP_P;
	cr->top_p = *(const float *)a;
}
static void
set_min_p(Epmoe__CompletionRequest *cr, const void *a)
{
	cr->min_p = *(const float *)a;
}
static void
set_top_k(Epmoe__CompletionRequest *cr, const void *a)
{
	cr->top_k = *(const uint32_t *)a;
}
static void
set_max(Epmoe__CompletionRequest *cr, const void *a)
{
	cr->max_tokens = *(const uint32_t *)a;
}
static void
set_seed(Epmoe__CompletionRequest *cr, const void *a)
{
	cr->seed_opt_case = EPMOE__COMPLETION_REQUEST__SEED_OPT_SEED;
	cr->seed = *(const uint64_t *)a;
}
static void
set_lp(Epmoe__CompletionRequest *cr, const void *a)
{
	cr->logprobs_opt_case = EPMOE__COMPLETION_REQUEST__LOGPROBS_OPT_LOGPROBS;
	cr->logprobs = *(const uint32_t *)a;
}
static void
set_routing(Epmoe__CompletionRequest *cr, const void *a)
{
	cr->routing_policy = (char *)a;
}
static void
set_model(Epmoe__CompletionRequest *cr, const void *a)
{
	cr->model = (char *)a;
}
static void
set_stops(Epmoe__CompletionRequest *cr, const void *a)
{
	static char *stops[] = { "a", "b", "c", "d", "e" };
	cr->stop = stops;
	cr->n_stop = *(const uint32_t *)a;
}
static void
set_empty_stop(Epmoe__CompletionRequest *cr, const void *a)
{
	static char *stops[] = { "" };
	cr->stop = stops;
	cr->n_stop = 1;
}
static void
set_ids(Epmoe__CompletionRequest *cr, const void *a)
{
	cr->prompt_tokens = (uint32_t *)a;
	cr->n_prompt_tokens = 2;
}

static const float f0 = 0, f2 = 2, f201 = 2.01f, fneg = -0.01f, f1 = 1, f101 = 1.01f,
        fsmall = 1e-6f, fhalf = 0.5f;
static const uint32_t u0 = 0, u1 = 1, u4 = 4, u5 = 5, u6 = 6, u512 = 512, u513 = 513,
        u_big = 2147483648u, u40 = 40;
static const uint64_t seed_big = 18446744073709549568ull; /* 2^64 - 2048 */
static const uint32_t ids_ok[] = { 1, 999 }, ids_bad[] = { 1, 1000 };

static const struct fe_case fe_cases[] = {
	{ "\"temperature\": 0", set_temp, &f0 },
	{ "\"temperature\": 2", set_temp, &f2 },
	{ "\"temperature\": 2.01", set_temp, &f201 },
	{ "\"temperature\": -0.01", set_temp, &fneg },
	{ "\"top_p\": 1", set_top_p, &f1 },
	{ "\"top_p\": 1e-6", set_top_p, &fsmall },
	{ "\"top_p\": 0", set_top_p, &f0 },
	{ "\"top_p\": 1.01", set_top_p, &f101 },
	{ "\"min_p\": 0.5", set_min_p, &fhalf },
	{ "\"min_p\": 1", set_min_p, &f1 },
	{ "\"min_p\": 1.01", set_min_p, &f101 },
	{ "\"min_p\": -0.01", set_min_p, &fneg },
	{ "\"top_k\": 40", set_top_k, &u40 },
	{ "\"top_k\": 2147483648", set_top_k, &u_big },
	{ "\"max_tokens\": 1", set_max, &u1 },
	{ "\"max_tokens\": 512", set_max, &u512 },
	{ "\"max_tokens\": 513", set_max, &u513 },
	{ "\"seed\": 18446744073709549568", set_seed, &seed_big },
	{ "\"logprobs\": 0", set_lp, &u0 },
	{ "\"logprobs\": 5", set_lp, &u5 },
	{ "\"logprobs\": 6", set_lp, &u6 },
	{ "\"stop\": [\"a\",\"b\",\"c\",\"d\"]", set_stops, &u4 },
	{ "\"stop\": [\"a\",\"b\",\"c\",\"d\",\"e\"]", set_stops, &u5 },
	{ "\"stop\": [\"\"]", set_empty_stop, NULL },
	{ "\"routing\": \"ssr:lambda=1.30\"", set_routing, "ssr:lambda=1.30" },
	{ "\"routing\": \"nosuch\"", set_routing, "nosuch" },
	{ "\"routing\": \"usmoe\"", set_routing, "usmoe" },
	{ "\"routing\": \"topk:k=9\"", set_routing, "topk:k=9" },
	{ "\"model\": \"tiny-moe\"", set_model, "tiny-moe" },
	{ "\"model\": \"gpt-4\"", set_model, "gpt-4" },
	{ "\"prompt\": [1, 999]", set_ids, ids_ok },
	{ "\"prompt\": [1, 1000]", set_ids, ids_bad },
};

START_TEST(both_front_ends_give_the_same_verdict_and_plan)
{
	const struct fe_case *c = &fe_cases[_i];
	struct oai_config cfg = { NULL, 0, 0, 1 };
	struct oai_completion_req hr;
	struct oai_error oe;
	Epmoe__CompletionRequest cr = EPMOE__COMPLETION_REQUEST__INIT;
	struct gen_msg msgs[1];
	struct gen_req qh, qn;
	struct gen_plan ph, pn;
	struct gen_err eh, en;
	char json[512];
	int rh, rn;

	/* over HTTP: the JSON through oai.c and api.c */
	snprintf(json, sizeof(json), "{%s%s}", c->json,
	        strstr(c->json, "\"prompt\"") ? "" : ", \"prompt\": \"Hello\"");
	ck_assert_msg(oai_parse_completion(json, strlen(json), &cfg, &hr, &oe) == 0,
	        "%s: %s", json, oe.message);
	api_gen_completion(&hr, &qh);
	rh = gen_check(&lim, &qh, &ph, &eh);
	/* over NNG: the protobuf through nngapi.c */
	cr.prompt = "Hello";
	c->set(&cr, c->arg);
	nngapi_gen_req(&cr, msgs, &qn);
	rn = gen_check(&lim, &qn, &pn, &en);

	ck_assert_msg(rh == rn, "%s: HTTP %d (%s), NNG %d (%s)", c->json, rh,
	        rh ? eh.message : "ok", rn, rn ? en.message : "ok");
	if (rh != 0) {
		ck_assert_int_eq(eh.field, en.field);
		ck_assert_str_eq(eh.message, en.message);
	} else {
		ck_assert_int_eq(ph.max_tokens, pn.max_tokens);
		ck_assert_float_eq(ph.sample.temperature, pn.sample.temperature);
		ck_assert_float_eq(ph.sample.top_p, pn.sample.top_p);
		ck_assert_float_eq(ph.sample.min_p, pn.sample.min_p);
		ck_assert_int_eq(ph.sample.top_k, pn.sample.top_k);
		if (qh.has_seed)
			ck_assert_uint_eq(ph.sample.seed, pn.sample.seed);
		ck_assert_str_eq(ph.routing, pn.routing);
		ck_assert_int_eq(ph.logprobs, pn.logprobs);
		ck_assert_uint_eq(ph.top_logprobs, pn.top_logprobs);
	}
	oai_completion_req_fini(&hr);
}
END_TEST

START_TEST(chat_messages_translate_alike)
{
	const char *json = "{\"messages\": [{\"role\": \"developer\", \"content\": \"s\"},"
	        " {\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 0}";
	struct oai_config cfg = { NULL, 0, 0, 1 };
	struct oai_chat_req hr;
	struct oai_error oe;
	Epmoe__CompletionRequest cr = EPMOE__COMPLETION_REQUEST__INIT;
	Epmoe__ChatMessage m0 = EPMOE__CHAT_MESSAGE__INIT, m1 = EPMOE__CHAT_MESSAGE__INIT;
	Epmoe__ChatMessage *ms[2] = { &m0, &m1 };
	struct gen_msg hm[2], nm[2];
	struct gen_req qh, qn;
	struct gen_plan pl;
	struct gen_err eh, en;

	ck_assert_int_eq(oai_parse_chat(json, strlen(json), &cfg, &hr, &oe), 0);
	api_gen_chat(&hr, hm, &qh);
	m0.role = "system";
	m0.content = "s";
	m1.role = "user";
	m1.content = "hi";
	cr.messages = ms;
	cr.n_messages = 2;
	nngapi_gen_req(&cr, nm, &qn);
	ck_assert_int_eq(qh.kind, GEN_CHAT);
	ck_assert_int_eq(qn.kind, GEN_CHAT);
	ck_assert_str_eq(qh.msgs[0].role, qn.msgs[0].role);
	ck_assert_str_eq(qh.msgs[1].content, qn.msgs[1].content);
	/* chat max_tokens 0 is refused; NNG cannot send 0 (it means "not
	 * given") and gets the server's default */
	ck_assert_int_eq(gen_check(&lim, &qh, &pl, &eh), EPMOE_EINVAL);
	ck_assert_int_eq(eh.field, GEN_F_MAX_TOKENS);
	ck_assert_int_eq(gen_check(&lim, &qn, &pl, &en), 0);
	ck_assert_int_eq(pl.max_tokens, -1);
	oai_chat_req_fini(&hr);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("gen");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, defaults_follow_openai_and_the_seed_is_picked);
	tcase_add_test(tc, sampling_ranges_are_checked_at_their_edges);
	tcase_add_test(tc, integer_fields_are_checked_at_their_edges);
	tcase_add_test(tc, stops_model_prompt_and_messages_are_checked);
	tcase_add_test(tc, routing_is_parsed_once_canonical_and_checked);
	tcase_add_test(tc, prompt_offsets_index_into_the_returned_text);
	tcase_add_loop_test(tc, both_front_ends_give_the_same_verdict_and_plan, 0,
	        (int)(sizeof(fe_cases) / sizeof(fe_cases[0])));
	tcase_add_test(tc, chat_messages_translate_alike);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
