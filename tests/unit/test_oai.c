/* OpenAI API JSON: valid requests of every kind parse to the values sent,
 * each malformed case gives its status, parameter and message, and the
 * builders produce JSON that parses back with OpenAI's field names.  (The
 * ranges of generation fields are gen.c's: test_gen.) */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "err.h"
#include "oai.h"
#include "utf8.h"
#include "testutil.h"

static const char *const models[] = { "tiny-moe", "other" };

static struct oai_config
cfg_default(void)
{
	struct oai_config c = { models, 2, 1000, 0 };
	return c;
}

static int
parse_cmpl(const char *json, struct oai_completion_req *r, struct oai_error *e)
{
	struct oai_config c = cfg_default();

	memset(e, 0, sizeof(*e));
	return oai_parse_completion(json, strlen(json), &c, r, e);
}

static int
parse_chat(const char *json, struct oai_chat_req *r, struct oai_error *e)
{
	struct oai_config c = cfg_default();

	memset(e, 0, sizeof(*e));
	return oai_parse_chat(json, strlen(json), &c, r, e);
}

/* Asserts that a completion request fails with status, param and a message
 * containing needle. */
static void
cmpl_fails(const char *json, int status, const char *param, const char *needle)
{
	struct oai_completion_req r;
	struct oai_error e;
	int rc = parse_cmpl(json, &r, &e);

	ck_assert_msg(rc == EPMOE_EINVAL, "accepted: %s", json);
	ck_assert_int_eq(e.status, status);
	ck_assert_str_eq(e.param, param);
	ck_assert_msg(strstr(e.message, needle) != NULL,
	        "message '%s' lacks '%s' (%s)", e.message, needle, json);
	ck_assert_ptr_nonnull(e.type);
}

static void
chat_fails(const char *json, int status, const char *param, const char *needle)
{
	struct oai_chat_req r;
	struct oai_error e;
	int rc = parse_chat(json, &r, &e);

	ck_assert_msg(rc == EPMOE_EINVAL, "accepted: %s", json);
	ck_assert_int_eq(e.status, status);
	ck_assert_str_eq(e.param, param);
	ck_assert_msg(strstr(e.message, needle) != NULL,
	        "message '%s' lacks '%s' (%s)", e.message, needle, json);
}

START_TEST(completion_with_every_field_parses)
{
	struct oai_completion_req r;
	struct oai_error e;

	ck_assert_int_eq(parse_cmpl("{\"model\": \"tiny-moe\", \"prompt\": "
	        "\"Hello\", \"max_tokens\": 32, \"temperature\": 0.5, "
	        "\"top_p\": 0.9, \"top_k\": 40, \"min_p\": 0.05, \"seed\": 1234, "
	        "\"stop\": [\"\\n\", \"END\"], \"stream\": true, "
	        "\"stream_options\": {\"include_usage\": true}, \"echo\": true, "
	        "\"logprobs\": 3, \"n\": 1, \"best_of\": 1, \"user\": \"u1\", "
	        "\"presence_penalty\": 0, \"logit_bias\": {}, "
	        "\"routing\": \"ssr:lambda=1.3\"}", &r, &e), 0);
	ck_assert_str_eq(r.model, "tiny-moe");
	ck_assert_str_eq(r.prompt, "Hello");
	ck_assert_uint_eq(r.prompt_len, 5);
	ck_assert_ptr_null(r.prompt_tokens);
	ck_assert_int_eq(r.gen.has_max_tokens, 1);
	ck_assert_int_eq(r.gen.max_tokens, 32);
	ck_assert_str_eq(r.gen.max_tokens_key, "max_tokens");
	ck_assert_double_eq(r.gen.temperature, 0.5);
	ck_assert_double_eq(r.gen.top_p, 0.9);
	ck_assert_int_eq(r.gen.top_k, 40);
	ck_assert_double_eq(r.gen.min_p, 0.05);
	ck_assert_int_eq(r.gen.has_seed, 1);
	ck_assert_uint_eq(r.gen.seed, 1234);
	ck_assert_uint_eq(r.gen.n_stop, 2);
	ck_assert_str_eq(r.gen.stop[0], "\n");
	ck_assert_str_eq(r.gen.stop[1], "END");
	ck_assert_int_eq(r.gen.stream, 1);
	ck_assert_int_eq(r.gen.include_usage, 1);
	ck_assert_int_eq(r.echo, 1);
	ck_assert_int_eq(r.has_logprobs, 1);
	ck_assert_int_eq(r.logprobs, 3);
	ck_assert_str_eq(r.gen.routing, "ssr:lambda=1.3");
	oai_completion_req_fini(&r);
	ck_assert_ptr_null(r.model);
	oai_completion_req_fini(NULL);
}
END_TEST

START_TEST(completion_absent_and_null_fields_are_not_given)
{
	struct oai_completion_req r;
	struct oai_error e;

	ck_assert_int_eq(parse_cmpl("{\"model\":\"other\",\"prompt\":\"\","
	        "\"temperature\":null,\"stop\":null,\"logprobs\":null}", &r, &e), 0);
	ck_assert_str_eq(r.model, "other");
	ck_assert_str_eq(r.prompt, "");
	ck_assert_int_eq(r.gen.has_max_tokens, 0);
	ck_assert_int_eq(r.gen.has_temperature, 0);
	ck_assert_int_eq(r.gen.has_top_p, 0);
	ck_assert_int_eq(r.gen.has_top_k, 0);
	ck_assert_int_eq(r.gen.has_min_p, 0);
	ck_assert_int_eq(r.gen.has_seed, 0);
	ck_assert_uint_eq(r.gen.n_stop, 0);
	ck_assert_int_eq(r.gen.stream, 0);
	ck_assert_int_eq(r.gen.include_usage, 0);
	ck_assert_int_eq(r.echo, 0);
	ck_assert_int_eq(r.has_logprobs, 0);
	ck_assert_ptr_null(r.gen.routing);
	oai_completion_req_fini(&r);
}
END_TEST

START_TEST(completion_prompt_forms)
{
	struct oai_completion_req r;
	struct oai_error e;

	ck_assert_int_eq(parse_cmpl("{\"model\":\"tiny-moe\",\"prompt\":[\"one\"]}",
	        &r, &e), 0);
	ck_assert_str_eq(r.prompt, "one");
	oai_completion_req_fini(&r);

	ck_assert_int_eq(parse_cmpl("{\"model\":\"tiny-moe\",\"prompt\":[1,2,999]}",
	        &r, &e), 0);
	ck_assert_ptr_null(r.prompt);
	ck_assert_uint_eq(r.n_prompt_tokens, 3);
	ck_assert_int_eq(r.prompt_tokens[0], 1);
	ck_assert_int_eq(r.prompt_tokens[2], 999);
	oai_completion_req_fini(&r);

	ck_assert_int_eq(parse_cmpl("{\"model\":\"tiny-moe\",\"prompt\":[[7,8]],"
	        "\"max_tokens\":0,\"echo\":true,\"logprobs\":0}", &r, &e), 0);
	ck_assert_uint_eq(r.n_prompt_tokens, 2);
	ck_assert_int_eq(r.prompt_tokens[1], 8);
	ck_assert_int_eq(r.gen.has_max_tokens, 1);
	ck_assert_int_eq(r.gen.max_tokens, 0);
	ck_assert_int_eq(r.has_logprobs, 1);
	ck_assert_int_eq(r.logprobs, 0);
	oai_completion_req_fini(&r);

	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":[\"a\",\"b\"]}", 400,
	        "prompt", "batched prompts are not supported");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":[[1],[2]]}", 400,
	        "prompt", "batched prompts are not supported");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":[]}", 400, "prompt",
	        "empty array");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":[[]]}", 400, "prompt",
	        "empty token array");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":[1,2.5]}", 400, "prompt",
	        "token ids");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":[1,\"x\"]}", 400, "prompt",
	        "token ids");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":[-1]}", 400, "prompt",
	        "[0, 1000)");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":[1000]}", 400, "prompt",
	        "[0, 1000)");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":5}", 400, "prompt",
	        "must be a string");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":[{}]}", 400, "prompt",
	        "must be a string");
	cmpl_fails("{\"model\":\"tiny-moe\"}", 400, "prompt", "is required");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":null}", 400, "prompt",
	        "is required");
}
END_TEST

START_TEST(completion_fields_are_type_checked)
{
	const char *p = "{\"model\":\"tiny-moe\",\"prompt\":\"x\",";
	char json[256];
	static const struct {
		const char *field;
		const char *param;
		const char *needle;
	} cases[] = {
		{ "\"max_tokens\": 1e400", "max_tokens", "must be an integer" },
		{ "\"max_tokens\": 1e19", "max_tokens", "must be an integer" },
		{ "\"max_tokens\": 1.5", "max_tokens", "must be an integer" },
		{ "\"max_tokens\": \"10\"", "max_tokens", "must be an integer" },
		{ "\"temperature\": \"hot\"", "temperature", "must be a number" },
		{ "\"top_p\": [1]", "top_p", "must be a number" },
		{ "\"top_k\": 1.5", "top_k", "must be an integer" },
		{ "\"min_p\": true", "min_p", "must be a number" },
		{ "\"seed\": 1.5", "seed", "64-bit integer" },
		{ "\"seed\": 1e30", "seed", "64-bit integer" },
		{ "\"n\": 2", "n", "only n = 1" },
		{ "\"best_of\": 3", "best_of", "best_of = 1" },
		{ "\"logprobs\": true", "logprobs", "must be an integer" },
		{ "\"echo\": 1", "echo", "must be a boolean" },
		{ "\"stream\": \"yes\"", "stream", "must be a boolean" },
		{ "\"stream_options\": {\"include_usage\": true}", "stream_options",
		  "only allowed when 'stream' is true" },
		{ "\"stream\": true, \"stream_options\": 1", "stream_options",
		  "must be an object" },
		{ "\"stream\": true, \"stream_options\": {\"include_usage\": 1}",
		  "stream_options.include_usage", "must be a boolean" },
		{ "\"presence_penalty\": 0.5", "presence_penalty", "not supported" },
		{ "\"frequency_penalty\": 3", "frequency_penalty", "not supported" },
		{ "\"logit_bias\": {\"5\": 10}", "logit_bias", "not supported" },
		{ "\"suffix\": \"end\"", "suffix", "not supported" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		snprintf(json, sizeof(json), "%s%s}", p, cases[i].field);
		cmpl_fails(json, 400, cases[i].param, cases[i].needle);
	}
}
END_TEST

START_TEST(completion_seed_top_k_and_duplicates)
{
	struct oai_completion_req r;
	struct oai_error e;

	ck_assert_int_eq(parse_cmpl("{\"model\":\"tiny-moe\",\"prompt\":\"x\","
	        "\"seed\":-1,\"top_k\":-1,\"max_tokens\":5,\"max_tokens\":7,"
	        "\"top_p\":1,\"temperature\":0}", &r, &e), 0);
	ck_assert_uint_eq(r.gen.seed, UINT64_MAX);
	ck_assert_int_eq(r.gen.top_k, -1);
	ck_assert_int_eq(r.gen.max_tokens, 7); /* the last duplicate wins */
	ck_assert_double_eq(r.gen.top_p, 1.0);
	ck_assert_double_eq(r.gen.temperature, 0.0);
	oai_completion_req_fini(&r);
}
END_TEST

START_TEST(completion_stop_forms)
{
	struct oai_completion_req r;
	struct oai_error e;

	ck_assert_int_eq(parse_cmpl("{\"model\":\"tiny-moe\",\"prompt\":\"x\","
	        "\"stop\":\"###\"}", &r, &e), 0);
	ck_assert_uint_eq(r.gen.n_stop, 1);
	ck_assert_str_eq(r.gen.stop[0], "###");
	oai_completion_req_fini(&r);
	ck_assert_int_eq(parse_cmpl("{\"model\":\"tiny-moe\",\"prompt\":\"x\","
	        "\"stop\":[\"a\",\"b\",\"c\",\"d\"]}", &r, &e), 0);
	ck_assert_uint_eq(r.gen.n_stop, 4);
	ck_assert_str_eq(r.gen.stop[3], "d");
	oai_completion_req_fini(&r);
	/* how many and whether empty is gen.c's to say */
	ck_assert_int_eq(parse_cmpl("{\"model\":\"tiny-moe\",\"prompt\":\"x\","
	        "\"stop\":[\"a\",\"b\",\"c\",\"d\",\"\"]}", &r, &e), 0);
	ck_assert_uint_eq(r.gen.n_stop, 5);
	ck_assert_str_eq(r.gen.stop[4], "");
	oai_completion_req_fini(&r);
	ck_assert_int_eq(parse_cmpl("{\"model\":\"tiny-moe\",\"prompt\":\"x\","
	        "\"stop\":[]}", &r, &e), 0);
	ck_assert_uint_eq(r.gen.n_stop, 0);
	oai_completion_req_fini(&r);
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":\"x\",\"stop\":[1]}", 400,
	        "stop", "array of strings");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":\"x\",\"stop\":{}}", 400,
	        "stop", "array of strings");
}
END_TEST

START_TEST(model_is_checked_against_served_models)
{
	struct oai_completion_req r;
	struct oai_config c = cfg_default();
	struct oai_error e;
	const char *body = "{\"prompt\":\"x\"}";

	cmpl_fails("{\"model\":\"gpt-4\",\"prompt\":\"x\"}", 404, "model",
	        "the model 'gpt-4' does not exist");
	ck_assert_int_eq(parse_cmpl("{\"model\":\"gpt-4\",\"prompt\":\"x\"}", &r,
	        &e), EPMOE_EINVAL);
	ck_assert_str_eq(e.code, "model_not_found");
	ck_assert_str_eq(e.type, "invalid_request_error");
	cmpl_fails(body, 400, "model", "you must provide a model");
	cmpl_fails("{\"model\":7,\"prompt\":\"x\"}", 400, "model",
	        "must be a string");
	c.model_optional = 1;
	ck_assert_int_eq(oai_parse_completion(body, strlen(body), &c, &r, &e), 0);
	ck_assert_ptr_null(r.model); /* the server's */
	oai_completion_req_fini(&r);
	/* without a list of models any name passes (gen.c checks it) */
	c.n_models = 0;
	body = "{\"model\":\"gpt-4\",\"prompt\":\"x\"}";
	ck_assert_int_eq(oai_parse_completion(body, strlen(body), &c, &r, &e), 0);
	ck_assert_str_eq(r.model, "gpt-4");
	oai_completion_req_fini(&r);
}
END_TEST

START_TEST(malformed_bodies_are_rejected)
{
	struct oai_completion_req r;
	struct oai_config c = cfg_default();
	struct oai_error e;
	const char with_nul[] = "{\"model\":\"tiny-moe\",\"prompt\":\"x\"}\0";

	cmpl_fails("", 400, "", "empty");
	cmpl_fails("  \n ", 400, "", "empty");
	cmpl_fails("[1,2]", 400, "", "must be a JSON object");
	cmpl_fails("\"text\"", 400, "", "must be a JSON object");
	cmpl_fails("null", 400, "", "must be a JSON object");
	cmpl_fails("{\"model\":", 400, "", "not valid JSON");
	cmpl_fails("{\"model\":NaN}", 400, "", "not valid JSON");
	cmpl_fails("{} {}", 400, "", "unexpected data after");
	cmpl_fails("{\"model\":\"tiny-moe\",\"prompt\":\"a\\u0000b\"}", 400, "",
	        "NUL");
	/* an escaped backslash followed by u0000 is plain text */
	ck_assert_int_eq(parse_cmpl("{\"model\":\"tiny-moe\",\"prompt\":"
	        "\"a\\\\u0000b\"}", &r, &e), 0);
	ck_assert_str_eq(r.prompt, "a\\u0000b");
	oai_completion_req_fini(&r);
	/* a body need not be NUL-terminated */
	ck_assert_int_eq(oai_parse_completion(with_nul, sizeof(with_nul) - 2, &c,
	        &r, &e), 0);
	oai_completion_req_fini(&r);
}
END_TEST

START_TEST(routing_accepts_string_and_object_forms)
{
	static const struct {
		const char *in, *out;
	} ok[] = {
		{ "\"native\"", "native" },
		{ "\"ssr:lambda=1.3,kernel=capped\"", "ssr:lambda=1.3,kernel=capped" },
		/* the string form is the spec language's to read (route_parse) */
		{ "\"SSR:k=a,b\"", "SSR:k=a,b" },
		{ "\"\"", "" },
		{ "{\"policy\":\"topk\"}", "topk" },
		{ "{\"policy\":\"ssr\",\"lambda\":1.3,\"kernel\":\"capped\","
		  "\"ssr.p\":0.05,\"renorm\":true,\"k\":2}",
		  "ssr:lambda=1.3,kernel=capped,ssr.p=0.05,renorm=true,k=2" },
		{ "{\"k\":1,\"policy\":\"topk\",\"k\":3}", "topk:k=3" },
		{ "{\"policy\":\"capacity\",\"capacity_factor\":-1e-3}",
		  "capacity:capacity_factor=-0.001" },
	};
	static const struct {
		const char *in, *param;
	} bad[] = {
		{ "5", "routing" },
		{ "[\"ssr\"]", "routing" },
		{ "{\"lambda\":1}", "routing.policy" },
		{ "{\"policy\":\"a b\"}", "routing.policy" },
		{ "{\"policy\":\"ssr\",\"k\":{}}", "routing.k" },
		{ "{\"policy\":\"ssr\",\"k\":\"a,b\"}", "routing.k" },
		{ "{\"policy\":\"ssr\",\"a=b\":1}", "routing.a=b" },
	};
	char json[256];

	for (size_t i = 0; i < sizeof(ok) / sizeof(*ok); i++) {
		struct oai_completion_req r;
		struct oai_error e;

		snprintf(json, sizeof(json),
		        "{\"model\":\"tiny-moe\",\"prompt\":\"x\",\"routing\":%s}",
		        ok[i].in);
		ck_assert_msg(parse_cmpl(json, &r, &e) == 0, "%s: %s", json,
		        e.message);
		ck_assert_str_eq(r.gen.routing, ok[i].out);
		oai_completion_req_fini(&r);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		snprintf(json, sizeof(json),
		        "{\"model\":\"tiny-moe\",\"prompt\":\"x\",\"routing\":%s}",
		        bad[i].in);
		cmpl_fails(json, 400, bad[i].param, "routing");
	}
}
END_TEST

START_TEST(chat_with_every_field_parses)
{
	struct oai_chat_req r;
	struct oai_error e;

	ck_assert_int_eq(parse_chat("{\"model\":\"tiny-moe\",\"messages\":["
	        "{\"role\":\"system\",\"content\":\"Be brief.\"},"
	        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"},"
	        "{\"type\":\"text\",\"text\":\"there\"}]},"
	        "{\"role\":\"assistant\",\"content\":\"Hello\",\"name\":\"bot\"},"
	        "{\"role\":\"developer\",\"content\":\"\"}],"
	        "\"max_tokens\":9,\"max_completion_tokens\":20,\"temperature\":0.7,"
	        "\"logprobs\":true,\"top_logprobs\":2,\"stream\":true,"
	        "\"routing\":{\"policy\":\"native\"},\"tools\":[],"
	        "\"response_format\":{\"type\":\"text\"}}", &r, &e), 0);
	ck_assert_str_eq(r.model, "tiny-moe");
	ck_assert_uint_eq(r.n_messages, 4);
	ck_assert_int_eq(r.messages[0].role, OAI_ROLE_SYSTEM);
	ck_assert_str_eq(r.messages[0].content, "Be brief.");
	ck_assert_int_eq(r.messages[1].role, OAI_ROLE_USER);
	ck_assert_str_eq(r.messages[1].content, "Hi\nthere");
	ck_assert_uint_eq(r.messages[1].content_len, 8);
	ck_assert_int_eq(r.messages[2].role, OAI_ROLE_ASSISTANT);
	ck_assert_int_eq(r.messages[3].role, OAI_ROLE_SYSTEM);
	ck_assert_str_eq(r.messages[3].content, "");
	ck_assert_int_eq(r.gen.max_tokens, 20); /* max_completion_tokens wins */
	ck_assert_str_eq(r.gen.max_tokens_key, "max_completion_tokens");
	ck_assert_double_eq(r.gen.temperature, 0.7);
	ck_assert_int_eq(r.logprobs, 1);
	ck_assert_int_eq(r.top_logprobs, 2);
	ck_assert_int_eq(r.gen.stream, 1);
	ck_assert_str_eq(r.gen.routing, "native");
	oai_chat_req_fini(&r);

	ck_assert_int_eq(parse_chat("{\"model\":\"tiny-moe\",\"messages\":["
	        "{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":3}", &r,
	        &e), 0);
	ck_assert_int_eq(r.gen.max_tokens, 3);
	ck_assert_int_eq(r.logprobs, 0);
	oai_chat_req_fini(&r);
	ck_assert_int_eq(parse_chat("{\"model\":\"tiny-moe\",\"messages\":["
	        "{\"role\":\"user\",\"content\":\"x\"}]}", &r, &e), 0);
	ck_assert_int_eq(r.gen.has_max_tokens, 0);
	oai_chat_req_fini(&r);
}
END_TEST

START_TEST(chat_invalid_cases)
{
	const char *u = "{\"role\":\"user\",\"content\":\"x\"}";
	char json[512];

	chat_fails("{\"model\":\"tiny-moe\"}", 400, "messages", "non-empty array");
	chat_fails("{\"model\":\"tiny-moe\",\"messages\":[]}", 400, "messages",
	        "non-empty array");
	chat_fails("{\"model\":\"tiny-moe\",\"messages\":{}}", 400, "messages",
	        "non-empty array");
	chat_fails("{\"model\":\"tiny-moe\",\"messages\":[1]}", 400, "messages[0]",
	        "must be an object");
	snprintf(json, sizeof(json), "{\"model\":\"tiny-moe\",\"messages\":[%s,"
	        "{\"role\":\"tool\",\"content\":\"x\"}]}", u);
	chat_fails(json, 400, "messages[1].role", "got 'tool'");
	chat_fails("{\"model\":\"tiny-moe\",\"messages\":[{\"content\":\"x\"}]}",
	        400, "messages[0].role", "is required");
	chat_fails("{\"model\":\"tiny-moe\",\"messages\":[{\"role\":\"user\"}]}",
	        400, "messages[0].content", "is required");
	chat_fails("{\"model\":\"tiny-moe\",\"messages\":[{\"role\":\"user\","
	        "\"content\":null}]}", 400, "messages[0].content", "is required");
	chat_fails("{\"model\":\"tiny-moe\",\"messages\":[{\"role\":\"user\","
	        "\"content\":5}]}", 400, "messages[0].content", "must be a string");
	chat_fails("{\"model\":\"tiny-moe\",\"messages\":[{\"role\":\"user\","
	        "\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}", 400,
	        "messages[0].content", "only {\"type\": \"text\"");
	chat_fails("{\"model\":\"tiny-moe\",\"messages\":[{\"role\":\"user\","
	        "\"content\":[{\"type\":\"text\"}]}]}", 400,
	        "messages[0].content", "text must be a string");
	snprintf(json, sizeof(json), "{\"model\":\"tiny-moe\",\"messages\":[%s],"
	        "\"max_completion_tokens\":0.5}", u);
	chat_fails(json, 400, "max_completion_tokens", "must be an integer");
	snprintf(json, sizeof(json), "{\"model\":\"tiny-moe\",\"messages\":[%s],"
	        "\"top_logprobs\":2}", u);
	chat_fails(json, 400, "top_logprobs", "requires 'logprobs'");
	snprintf(json, sizeof(json), "{\"model\":\"tiny-moe\",\"messages\":[%s],"
	        "\"logprobs\":true,\"top_logprobs\":\"2\"}", u);
	chat_fails(json, 400, "top_logprobs", "must be an integer");
	snprintf(json, sizeof(json), "{\"model\":\"tiny-moe\",\"messages\":[%s],"
	        "\"logprobs\":1}", u);
	chat_fails(json, 400, "logprobs", "must be a boolean");
	snprintf(json, sizeof(json), "{\"model\":\"tiny-moe\",\"messages\":[%s],"
	        "\"tools\":[{\"type\":\"function\"}]}", u);
	chat_fails(json, 400, "tools", "not supported");
	snprintf(json, sizeof(json), "{\"model\":\"tiny-moe\",\"messages\":[%s],"
	        "\"response_format\":{\"type\":\"json_object\"}}", u);
	chat_fails(json, 400, "response_format", "text");
	snprintf(json, sizeof(json), "{\"model\":\"tiny-moe\",\"messages\":[%s],"
	        "\"n\":3}", u);
	chat_fails(json, 400, "n", "only n = 1");
	snprintf(json, sizeof(json), "{\"model\":\"big\",\"messages\":[%s]}", u);
	chat_fails(json, 404, "model", "does not exist");
}
END_TEST

START_TEST(tokenize_and_detokenize_parse)
{
	struct oai_config c = cfg_default();
	struct oai_tokenize_req t;
	struct oai_detokenize_req d;
	struct oai_error e;
	const char *j;

	j = "{\"prompt\":\"Hello world\"}";
	ck_assert_int_eq(oai_parse_tokenize(j, strlen(j), &c, &t, &e), 0);
	ck_assert_str_eq(t.text, "Hello world");
	ck_assert_uint_eq(t.text_len, 11);
	ck_assert_int_eq(t.add_special, 1);
	oai_tokenize_req_fini(&t);
	j = "{\"model\":\"tiny-moe\",\"text\":\"hi\",\"add_special\":false}";
	ck_assert_int_eq(oai_parse_tokenize(j, strlen(j), &c, &t, &e), 0);
	ck_assert_str_eq(t.text, "hi");
	ck_assert_int_eq(t.add_special, 0);
	oai_tokenize_req_fini(&t);
	j = "{\"add_special\":true}";
	ck_assert_int_eq(oai_parse_tokenize(j, strlen(j), &c, &t, &e), EPMOE_EINVAL);
	ck_assert_int_eq(e.status, 400);
	ck_assert_str_eq(e.param, "prompt");
	j = "{\"text\":[1]}";
	ck_assert_int_eq(oai_parse_tokenize(j, strlen(j), &c, &t, &e), EPMOE_EINVAL);
	ck_assert_str_eq(e.param, "text");
	j = "{\"model\":\"nope\",\"prompt\":\"x\"}";
	ck_assert_int_eq(oai_parse_tokenize(j, strlen(j), &c, &t, &e), EPMOE_EINVAL);
	ck_assert_int_eq(e.status, 404);
	j = "{\"prompt\":\"x\",\"add_special\":\"no\"}";
	ck_assert_int_eq(oai_parse_tokenize(j, strlen(j), &c, &t, &e), EPMOE_EINVAL);
	ck_assert_str_eq(e.param, "add_special");

	j = "{\"tokens\":[5,6,7]}";
	ck_assert_int_eq(oai_parse_detokenize(j, strlen(j), &c, &d, &e), 0);
	ck_assert_uint_eq(d.n_tokens, 3);
	ck_assert_int_eq(d.tokens[2], 7);
	oai_detokenize_req_fini(&d);
	j = "{\"tokens\":[]}";
	ck_assert_int_eq(oai_parse_detokenize(j, strlen(j), &c, &d, &e), 0);
	ck_assert_uint_eq(d.n_tokens, 0);
	oai_detokenize_req_fini(&d);
	j = "{\"tokens\":[\"a\"]}";
	ck_assert_int_eq(oai_parse_detokenize(j, strlen(j), &c, &d, &e),
	        EPMOE_EINVAL);
	ck_assert_str_eq(e.param, "tokens");
	j = "{\"tokens\":[1000]}";
	ck_assert_int_eq(oai_parse_detokenize(j, strlen(j), &c, &d, &e),
	        EPMOE_EINVAL);
	j = "{}";
	ck_assert_int_eq(oai_parse_detokenize(j, strlen(j), &c, &d, &e),
	        EPMOE_EINVAL);
	ck_assert_str_eq(e.param, "tokens");
	j = "[]";
	ck_assert_int_eq(oai_parse_detokenize(j, strlen(j), &c, &d, &e),
	        EPMOE_EINVAL);
}
END_TEST

/* Prints and re-parses a tree, as a client would see it. */
static cJSON *
roundtrip(cJSON *tree)
{
	char *txt;
	cJSON *back;

	ck_assert_ptr_nonnull(tree);
	txt = cJSON_PrintUnformatted(tree);
	ck_assert_ptr_nonnull(txt);
	back = cJSON_Parse(txt);
	ck_assert_ptr_nonnull(back);
	cJSON_free(txt);
	cJSON_Delete(tree);
	return back;
}

static const cJSON *
at(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	ck_assert_msg(v != NULL, "missing '%s'", key);
	return v;
}

static const char *
str_at(const cJSON *o, const char *key)
{
	const cJSON *v = at(o, key);

	ck_assert_msg(cJSON_IsString(v), "'%s' is not a string", key);
	return v->valuestring;
}

static double
num_at(const cJSON *o, const char *key)
{
	const cJSON *v = at(o, key);

	ck_assert_msg(cJSON_IsNumber(v), "'%s' is not a number", key);
	return v->valuedouble;
}

START_TEST(error_envelope_has_openai_fields)
{
	struct oai_error e;
	cJSON *j;
	const cJSON *err;

	oai_error_set(&e, 400, "max_tokens", "bad %s", "value");
	j = roundtrip(oai_error_body(&e));
	err = at(j, "error");
	ck_assert_str_eq(str_at(err, "message"), "bad value");
	ck_assert_str_eq(str_at(err, "type"), "invalid_request_error");
	ck_assert_str_eq(str_at(err, "param"), "max_tokens");
	ck_assert(cJSON_IsNull(at(err, "code")));
	cJSON_Delete(j);

	oai_error_set(&e, 503, NULL, "no workers");
	j = roundtrip(oai_error_body(&e));
	err = at(j, "error");
	ck_assert_str_eq(str_at(err, "type"), "server_error");
	ck_assert(cJSON_IsNull(at(err, "param")));
	cJSON_Delete(j);

	oai_error_set(&e, 429, NULL, "queue full");
	ck_assert_str_eq(e.type, "rate_limit_error");
	oai_error_set(&e, 413, NULL, "too big");
	ck_assert_str_eq(e.type, "invalid_request_error");
	oai_error_set(&e, 500, NULL, "bug");
	ck_assert_str_eq(e.type, "server_error");
}
END_TEST

START_TEST(completion_response_has_openai_fields)
{
	static const struct oai_top_logprob top1[] = {
		{ " world", 6, -0.25f }, { " there", 6, -1.5f }, { " world", 6, -3.0f }
	};
	const struct oai_token_logprob lps[] = {
		{ "Hello", 5, 0, 0, NULL, 0, 0 },
		{ " world", 6, -0.25f, 1, top1, 3, 5 },
		{ "\xe2\x82", 2, -INFINITY, 1, NULL, 0, 11 }, /* a split character */
	};
	struct oai_choice ch = { "Hello world\xe2\x82", 13, "length", lps, 3 };
	struct oai_usage u = { 1, 2, 0 };
	const cJSON *c, *lp, *a;
	cJSON *j;

	j = roundtrip(oai_completion_response("cmpl-1", "tiny-moe", 1700000000,
	        &ch, &u));
	ck_assert_str_eq(str_at(j, "id"), "cmpl-1");
	ck_assert_str_eq(str_at(j, "object"), "text_completion");
	ck_assert_double_eq(num_at(j, "created"), 1700000000);
	ck_assert_str_eq(str_at(j, "model"), "tiny-moe");
	ck_assert_int_eq(cJSON_GetArraySize(at(j, "choices")), 1);
	c = cJSON_GetArrayItem(at(j, "choices"), 0);
	ck_assert_str_eq(str_at(c, "text"), "Hello world\xef\xbf\xbd");
	ck_assert_double_eq(num_at(c, "index"), 0);
	ck_assert_str_eq(str_at(c, "finish_reason"), "length");
	lp = at(c, "logprobs");
	a = at(lp, "tokens");
	ck_assert_int_eq(cJSON_GetArraySize(a), 3);
	ck_assert_str_eq(cJSON_GetArrayItem(a, 1)->valuestring, " world");
	a = at(lp, "token_logprobs");
	ck_assert(cJSON_IsNull(cJSON_GetArrayItem(a, 0)));
	ck_assert_double_eq(cJSON_GetArrayItem(a, 1)->valuedouble, -0.25);
	ck_assert_double_eq(cJSON_GetArrayItem(a, 2)->valuedouble, -9999);
	a = at(lp, "top_logprobs");
	ck_assert(cJSON_IsNull(cJSON_GetArrayItem(a, 0)));
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetArrayItem(a, 1)), 2);
	ck_assert_double_eq(num_at(cJSON_GetArrayItem(a, 1), " world"), -0.25);
	ck_assert_double_eq(num_at(cJSON_GetArrayItem(a, 1), " there"), -1.5);
	a = at(lp, "text_offset");
	ck_assert_double_eq(cJSON_GetArrayItem(a, 0)->valuedouble, 0);
	ck_assert_double_eq(cJSON_GetArrayItem(a, 1)->valuedouble, 5);
	ck_assert_double_eq(cJSON_GetArrayItem(a, 2)->valuedouble, 11);
	a = at(j, "usage");
	ck_assert_double_eq(num_at(a, "prompt_tokens"), 1);
	ck_assert_double_eq(num_at(a, "completion_tokens"), 2);
	ck_assert_double_eq(num_at(a, "total_tokens"), 3);
	cJSON_Delete(j);
}
END_TEST

START_TEST(completion_chunk_and_usage_chunk)
{
	struct oai_choice ch = { "tok", 3, NULL, NULL, 0 };
	struct oai_usage u = { 4, 5, 0 };
	const cJSON *c;
	cJSON *j;

	j = roundtrip(oai_completion_chunk("cmpl-2", "tiny-moe", 1, &ch, 0));
	ck_assert_str_eq(str_at(j, "object"), "text_completion");
	c = cJSON_GetArrayItem(at(j, "choices"), 0);
	ck_assert_str_eq(str_at(c, "text"), "tok");
	ck_assert(cJSON_IsNull(at(c, "finish_reason")));
	ck_assert(cJSON_IsNull(at(c, "logprobs")));
	ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(j, "usage"));
	cJSON_Delete(j);

	j = roundtrip(oai_completion_chunk("cmpl-2", "tiny-moe", 1, &ch, 1));
	ck_assert(cJSON_IsNull(at(j, "usage")));
	cJSON_Delete(j);

	j = roundtrip(oai_usage_chunk("cmpl-2", "tiny-moe", 1, 0, &u));
	ck_assert_str_eq(str_at(j, "object"), "text_completion");
	ck_assert_int_eq(cJSON_GetArraySize(at(j, "choices")), 0);
	ck_assert(cJSON_IsArray(at(j, "choices")));
	ck_assert_double_eq(num_at(at(j, "usage"), "total_tokens"), 9);
	cJSON_Delete(j);

	j = roundtrip(oai_usage_chunk("chatcmpl-2", "tiny-moe", 1, 1, &u));
	ck_assert_str_eq(str_at(j, "object"), "chat.completion.chunk");
	cJSON_Delete(j);
}
END_TEST

START_TEST(chat_response_and_chunks_have_openai_fields)
{
	static const struct oai_top_logprob top[] = { { "Hi", 2, -0.1f },
		{ "Yo", 2, -2.5f } };
	const struct oai_token_logprob lps[] = { { "Hi", 2, -0.1f, 1, top, 2, 0 } };
	struct oai_choice ch = { "Hi", 2, "stop", lps, 1 };
	struct oai_choice delta = { NULL, 0, NULL, NULL, 0 };
	struct oai_usage u = { 3, 1, 0 };
	const cJSON *c, *m, *e;
	cJSON *j;

	j = roundtrip(oai_chat_response("chatcmpl-1", "tiny-moe", 5, &ch, &u));
	ck_assert_str_eq(str_at(j, "object"), "chat.completion");
	c = cJSON_GetArrayItem(at(j, "choices"), 0);
	ck_assert_double_eq(num_at(c, "index"), 0);
	m = at(c, "message");
	ck_assert_str_eq(str_at(m, "role"), "assistant");
	ck_assert_str_eq(str_at(m, "content"), "Hi");
	ck_assert_str_eq(str_at(c, "finish_reason"), "stop");
	e = cJSON_GetArrayItem(at(at(c, "logprobs"), "content"), 0);
	ck_assert_str_eq(str_at(e, "token"), "Hi");
	ck_assert_double_eq_tol(num_at(e, "logprob"), -0.1, 1e-9);
	ck_assert_int_eq(cJSON_GetArraySize(at(e, "bytes")), 2);
	ck_assert_double_eq(cJSON_GetArrayItem(at(e, "bytes"), 0)->valuedouble, 'H');
	ck_assert_int_eq(cJSON_GetArraySize(at(e, "top_logprobs")), 2);
	ck_assert_str_eq(str_at(cJSON_GetArrayItem(at(e, "top_logprobs"), 1),
	        "token"), "Yo");
	ck_assert_double_eq(num_at(at(j, "usage"), "total_tokens"), 4);
	cJSON_Delete(j);

	/* first chunk: role and empty content */
	delta.text = "";
	j = roundtrip(oai_chat_chunk("chatcmpl-1", "tiny-moe", 5, "assistant",
	        &delta, 1));
	ck_assert_str_eq(str_at(j, "object"), "chat.completion.chunk");
	c = cJSON_GetArrayItem(at(j, "choices"), 0);
	ck_assert_str_eq(str_at(at(c, "delta"), "role"), "assistant");
	ck_assert_str_eq(str_at(at(c, "delta"), "content"), "");
	ck_assert(cJSON_IsNull(at(c, "finish_reason")));
	ck_assert(cJSON_IsNull(at(j, "usage")));
	cJSON_Delete(j);

	/* last chunk: empty delta and a finish reason */
	delta.text = NULL;
	delta.finish_reason = "length";
	j = roundtrip(oai_chat_chunk("chatcmpl-1", "tiny-moe", 5, NULL, &delta, 0));
	c = cJSON_GetArrayItem(at(j, "choices"), 0);
	ck_assert_ptr_null(at(c, "delta")->child);
	ck_assert_str_eq(str_at(c, "finish_reason"), "length");
	ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(j, "usage"));
	cJSON_Delete(j);
}
END_TEST

START_TEST(models_tokenize_and_detokenize_responses)
{
	const int32_t toks[] = { 1, 15043, 3186 };
	const cJSON *d;
	cJSON *j;

	j = roundtrip(oai_models_response(models, 2, 42, NULL));
	ck_assert_str_eq(str_at(j, "object"), "list");
	ck_assert_int_eq(cJSON_GetArraySize(at(j, "data")), 2);
	d = cJSON_GetArrayItem(at(j, "data"), 1);
	ck_assert_str_eq(str_at(d, "id"), "other");
	ck_assert_str_eq(str_at(d, "object"), "model");
	ck_assert_double_eq(num_at(d, "created"), 42);
	ck_assert_str_eq(str_at(d, "owned_by"), "epmoe");
	cJSON_Delete(j);

	j = roundtrip(oai_tokenize_response(toks, 3, 2048));
	ck_assert_int_eq(cJSON_GetArraySize(at(j, "tokens")), 3);
	ck_assert_double_eq(cJSON_GetArrayItem(at(j, "tokens"), 1)->valuedouble,
	        15043);
	ck_assert_double_eq(num_at(j, "count"), 3);
	ck_assert_double_eq(num_at(j, "max_model_len"), 2048);
	cJSON_Delete(j);

	j = roundtrip(oai_detokenize_response("a\xffz", 3));
	ck_assert_str_eq(str_at(j, "prompt"), "a\xef\xbf\xbdz");
	cJSON_Delete(j);
}
END_TEST

START_TEST(sse_frame_wraps_compact_json)
{
	cJSON *j = cJSON_CreateObject();
	char *frame;
	size_t len;

	cJSON_AddStringToObject(j, "text", "a\nb");
	cJSON_AddNumberToObject(j, "n", 1);
	ck_assert_int_eq(oai_sse_frame(j, &frame, &len), 0);
	ck_assert_str_eq(frame, "data: {\"text\":\"a\\nb\",\"n\":1}\n\n");
	ck_assert_uint_eq(len, strlen(frame));
	free(frame);
	cJSON_Delete(j);
	ck_assert_int_eq(oai_sse_frame(NULL, &frame, &len), EPMOE_EINVAL);
	ck_assert_str_eq(OAI_SSE_DONE, "data: [DONE]\n\n");
}
END_TEST

START_TEST(ids_have_prefix_and_do_not_repeat)
{
	char a[64], b[64];

	oai_make_id(a, sizeof(a), "cmpl-");
	oai_make_id(b, sizeof(b), "cmpl-");
	ck_assert_uint_eq(strlen(a), 5 + 24);
	ck_assert_int_eq(strncmp(a, "cmpl-", 5), 0);
	ck_assert_str_ne(a, b);
	for (int i = 0; i < 1000; i++) {
		oai_make_id(b, sizeof(b), "chatcmpl-");
		ck_assert_str_ne(a + 5, b + 9);
	}
}
END_TEST

START_TEST(invalid_utf8_is_replaced_in_every_text)
{
	/* overlong, surrogate, truncated 4-byte, lone continuation, valid 3- and
	 * 4-byte sequences, a NUL byte */
	const char raw[] = "\xc0\xaf|\xed\xa0\x80|\xf0\x9f\x98|\x80|\xe2\x82\xac|"
	        "\xf0\x9f\x98\x80|\x00|";
	struct oai_choice ch = { raw, sizeof(raw) - 1, NULL, NULL, 0 };
	const char *t;
	cJSON *j;

	j = roundtrip(oai_completion_chunk("c", "m", 0, &ch, 0));
	t = str_at(cJSON_GetArrayItem(at(j, "choices"), 0), "text");
	ck_assert_str_eq(t, "\xef\xbf\xbd\xef\xbf\xbd|"
	        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd|\xef\xbf\xbd|"
	        "\xe2\x82\xac|\xf0\x9f\x98\x80|\xef\xbf\xbd|");
	cJSON_Delete(j);
}
END_TEST

START_TEST(invalid_utf8_in_a_request_is_refused)
{
	/* raw bytes in strings, in keys and outside strings; surrogates and
	 * overlong forms too (cJSON would copy all of them through) */
	static const char *const bad[] = {
		"{\"prompt\":\"caf\xe9\"}",
		"{\"prompt\":\"\xc3\x28\"}",
		"{\"prompt\":\"\xed\xa0\x80\"}",
		"{\"prompt\":\"\xc0\xaf\"}",
		"{\"prompt\":\"\xf4\x90\x80\x80\"}",
		"{\"prompt\":\"x\",\"stop\":[\"\xff\"]}",
		"{\"pr\xffompt\":\"x\"}",
		"{\"prompt\":\"x\"}\xe2\x82",
	};
	struct oai_completion_req r;
	struct oai_error e;

	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		cmpl_fails(bad[i], 400, "", "not valid UTF-8");
	/* valid multi-byte text and escapes still pass */
	ck_assert_int_eq(parse_cmpl("{\"model\":\"tiny-moe\",\"prompt\":\"caf\xc3\xa9 \xf0\x9f\x98\x80 "
	        "\\u00e9 \\ud83d\\ude00\"}", &r, &e), 0);
	ck_assert_str_eq(r.prompt, "caf\xc3\xa9 \xf0\x9f\x98\x80 \xc3\xa9 \xf0\x9f\x98\x80");
	oai_completion_req_fini(&r);
}
END_TEST

/* A bad model name is quoted back; cut or ill-formed, the body stays valid
 * UTF-8 JSON (found by fuzzing 404/4xx bodies). */
START_TEST(error_bodies_quoting_request_bytes_are_valid_json)
{
	struct oai_error e;
	char name[400], *text;
	cJSON *body, *back;

	/* 2-byte characters cut by the message's %.100s */
	memset(name, 0, sizeof(name));
	for (int i = 0; i < 150; i++)
		memcpy(name + 2 * i, "\xc3\xa9", 2);
	oai_error_set(&e, 404, "model", "the model '%.101s' does not exist", name);
	ck_assert(utf8_valid_prefix(e.message, strlen(e.message)) != strlen(e.message));
	body = oai_error_body(&e);
	ck_assert_ptr_nonnull(body);
	text = cJSON_PrintUnformatted(body);
	ck_assert(utf8_valid_prefix(text, strlen(text)) == strlen(text));
	back = cJSON_Parse(text);
	ck_assert_ptr_nonnull(back);
	ck_assert_ptr_nonnull(strstr(cJSON_GetObjectItem(cJSON_GetObjectItem(back,
	        "error"), "message")->valuestring, "\xef\xbf\xbd"));
	cJSON_Delete(back);
	cJSON_free(text);
	cJSON_Delete(body);
	/* raw invalid bytes (a 404 quoting a path) */
	oai_error_set(&e, 404, "p\xff", "no route for GET /\xff\xfe\x80");
	body = oai_error_body(&e);
	text = cJSON_PrintUnformatted(body);
	ck_assert(utf8_valid_prefix(text, strlen(text)) == strlen(text));
	ck_assert_ptr_nonnull(strstr(text, "/\xef\xbf\xbd"));
	cJSON_free(text);
	cJSON_Delete(body);
}
END_TEST

/* A routing object whose policy name alone exceeds the rendering buffer
 * was appended to past its end (found by fuzz_oai). */
START_TEST(routing_object_with_a_huge_policy_name_is_refused)
{
	char json[1200], pol[700];

	memset(pol, 'a', sizeof(pol) - 1);
	pol[sizeof(pol) - 1] = '\0';
	snprintf(json, sizeof(json), "{\"model\":\"tiny-moe\",\"prompt\":\"x\","
	        "\"routing\":{\"policy\":\"%s\",\"k\":1}}", pol);
	cmpl_fails(json, 400, "routing", "more than");
	pol[OAI_MAX_ROUTING] = '\0'; /* exactly fills the buffer */
	snprintf(json, sizeof(json), "{\"model\":\"tiny-moe\",\"prompt\":\"x\","
	        "\"routing\":{\"policy\":\"%s\",\"k\":1}}", pol);
	cmpl_fails(json, 400, "routing", "more than");
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("oai");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, completion_with_every_field_parses);
	tcase_add_test(tc, completion_absent_and_null_fields_are_not_given);
	tcase_add_test(tc, completion_prompt_forms);
	tcase_add_test(tc, completion_fields_are_type_checked);
	tcase_add_test(tc, completion_seed_top_k_and_duplicates);
	tcase_add_test(tc, completion_stop_forms);
	tcase_add_test(tc, model_is_checked_against_served_models);
	tcase_add_test(tc, malformed_bodies_are_rejected);
	tcase_add_test(tc, routing_accepts_string_and_object_forms);
	tcase_add_test(tc, chat_with_every_field_parses);
	tcase_add_test(tc, chat_invalid_cases);
	tcase_add_test(tc, tokenize_and_detokenize_parse);
	tcase_add_test(tc, error_envelope_has_openai_fields);
	tcase_add_test(tc, completion_response_has_openai_fields);
	tcase_add_test(tc, completion_chunk_and_usage_chunk);
	tcase_add_test(tc, chat_response_and_chunks_have_openai_fields);
	tcase_add_test(tc, models_tokenize_and_detokenize_responses);
	tcase_add_test(tc, sse_frame_wraps_compact_json);
	tcase_add_test(tc, ids_have_prefix_and_do_not_repeat);
	tcase_add_test(tc, invalid_utf8_is_replaced_in_every_text);
	tcase_add_test(tc, invalid_utf8_in_a_request_is_refused);
	tcase_add_test(tc, error_bodies_quoting_request_bytes_are_valid_json);
	tcase_add_test(tc, routing_object_with_a_huge_policy_name_is_refused);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
