/* libFuzzer target: the OpenAI request JSON (server/oai.c) and the request
 * rules behind it (server/gen.c), as POST bodies reach them.  The first
 * byte picks the endpoint, the rest is the body.  Properties: no crash or
 * leak; a refusal is a 4xx/5xx with a message whose error body is valid
 * UTF-8 JSON; an accepted body holds only valid UTF-8 strings and its gen
 * request is either checked or refused with a message. */
#include <stdint.h>
#include <string.h>

#include "api.h"
#include "err.h"
#include "fuzz_util.h"
#include "gen.h"
#include "oai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_error(const struct oai_error *e)
{
	cJSON *body = oai_error_body(e);

	FZ_CHECK(e->status >= 400 && e->status < 600, "status %d", e->status);
	FZ_CHECK(e->message[0] != '\0', "a refusal without a message");
	fz_check_cjson(body, "error body");
	cJSON_Delete(body);
}

static void
check_gen(const struct gen_req *q)
{
	static const struct gen_limits lim = {
		.model = "m", .n_vocab = 1000, .max_tokens_limit = 512,
		.gate = { .n_experts = 8, .k = 2, .renorm = 0, .n_layers = 4 },
	};
	struct gen_plan pl;
	struct gen_err ge;

	memset(&ge, 0, sizeof(ge));
	if (gen_check(&lim, q, &pl, &ge) != 0)
		FZ_CHECK(ge.message[0] != '\0', "gen refusal without a message");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const models[] = { "m" };
	struct oai_config cfg = { .models = models, .n_models = 1,
		.n_vocab = 1000, .model_optional = 1 };
	const char *body;
	size_t len;
	struct oai_error e;
	int which;

	if (size < 1 || size > 65536)
		return 0;
	which = data[0] % 4;
	body = (const char *)data + 1;
	len = size - 1;
	memset(&e, 0, sizeof(e));
	switch (which) {
	case 0: {
		struct oai_completion_req c;
		struct gen_req q;

		if (oai_parse_completion(body, len, &cfg, &c, &e) != 0) {
			check_error(&e);
			break;
		}
		if (c.prompt != NULL)
			FZ_CHECK(utf8_valid_prefix(c.prompt, c.prompt_len) ==
			        c.prompt_len, "prompt is not valid UTF-8");
		api_gen_completion(&c, &q);
		check_gen(&q);
		oai_completion_req_fini(&c);
		break;
	}
	case 1: {
		struct oai_chat_req c;
		struct gen_msg *msgs;
		struct gen_req q;

		if (oai_parse_chat(body, len, &cfg, &c, &e) != 0) {
			check_error(&e);
			break;
		}
		for (size_t i = 0; i < c.n_messages; i++)
			FZ_CHECK(utf8_valid_prefix(c.messages[i].content,
			        c.messages[i].content_len) == c.messages[i].content_len,
			        "message is not valid UTF-8");
		if ((msgs = calloc(c.n_messages, sizeof(*msgs))) != NULL) {
			api_gen_chat(&c, msgs, &q);
			check_gen(&q);
			free(msgs);
		}
		oai_chat_req_fini(&c);
		break;
	}
	case 2: {
		struct oai_tokenize_req t;

		if (oai_parse_tokenize(body, len, &cfg, &t, &e) != 0) {
			check_error(&e);
			break;
		}
		oai_tokenize_req_fini(&t);
		break;
	}
	default: {
		struct oai_detokenize_req t;

		if (oai_parse_detokenize(body, len, &cfg, &t, &e) != 0) {
			check_error(&e);
			break;
		}
		for (size_t i = 0; i < t.n_tokens; i++)
			FZ_CHECK(t.tokens[i] >= 0 && t.tokens[i] < 1000,
			        "token %d accepted", t.tokens[i]);
		oai_detokenize_req_fini(&t);
		break;
	}
	}
	return 0;
}
