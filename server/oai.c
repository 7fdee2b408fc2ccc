/* OpenAI API JSON: request parsing/validation and response builders.
 * See oai.h.  Everything here is a pure function of its arguments (apart
 * from the id counter); it must not do I/O or know about the engine.
 *
 * Parsers build into a local struct and copy it to *out only when the
 * whole request is valid, so a failed parse leaves nothing to free.
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "err.h"
#include "oai.h"
#include "rng.h"
#include "utf8.h"

/* ---- errors ---- */

void
oai_error_set(struct oai_error *err, int status, const char *param,
        const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return;
	err->status = status;
	if (status == 429)
		err->type = "rate_limit_error";
	else if (status >= 500)
		err->type = "server_error";
	else
		err->type = "invalid_request_error";
	err->code = NULL;
	snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
}

static int
fail_nomem(struct oai_error *err)
{
	oai_error_set(err, 500, NULL, "out of memory");
	return EPMOE_ENOMEM;
}

/* Message and param may quote request bytes (a path, a model name, a
 * key), possibly cut inside a character by the fixed buffers: both are
 * made valid UTF-8 so the body stays valid JSON. */
cJSON *
oai_error_body(const struct oai_error *err)
{
	cJSON *root = NULL, *e;
	char *msg = utf8_clean(err->message, strlen(err->message), NULL);
	char *param = utf8_clean(err->param, strlen(err->param), NULL);

	if (msg == NULL || param == NULL || (root = cJSON_CreateObject()) == NULL)
		goto out;
	if ((e = cJSON_AddObjectToObject(root, "error")) == NULL ||
	    cJSON_AddStringToObject(e, "message", msg) == NULL ||
	    cJSON_AddStringToObject(e, "type",
	        err->type ? err->type : "invalid_request_error") == NULL ||
	    (param[0] ? cJSON_AddStringToObject(e, "param", param)
	              : cJSON_AddNullToObject(e, "param")) == NULL ||
	    (err->code ? cJSON_AddStringToObject(e, "code", err->code)
	               : cJSON_AddNullToObject(e, "code")) == NULL) {
		cJSON_Delete(root);
		root = NULL;
	}
out:
	free(msg);
	free(param);
	return root;
}

/* ---- JSON access helpers ---- */

/* The last member named key (duplicates: the last wins), or NULL. */
static const cJSON *
obj_get(const cJSON *obj, const char *key)
{
	const cJSON *found = NULL;

	for (const cJSON *c = obj->child; c != NULL; c = c->next)
		if (c->string != NULL && strcmp(c->string, key) == 0)
			found = c;
	return found;
}

/* Like obj_get, but a JSON null counts as absent. */
static const cJSON *
opt(const cJSON *obj, const char *key)
{
	const cJSON *v = obj_get(obj, key);

	return v != NULL && !cJSON_IsNull(v) ? v : NULL;
}

/* Reads an optional number into *out (its range is gen.c's to check).
 * Returns 0 (absent: *out untouched), 1 (set) or EPMOE_EINVAL. */
static int
get_double(const cJSON *root, const char *key, double *out,
        struct oai_error *err)
{
	const cJSON *v = opt(root, key);

	if (v == NULL)
		return 0;
	if (!cJSON_IsNumber(v)) {
		oai_error_set(err, 400, key, "'%s' must be a number", key);
		return EPMOE_EINVAL;
	}
	*out = v->valuedouble;
	return 1;
}

/* As get_double for an integer that a 64-bit signed integer holds. */
static int
get_int(const cJSON *root, const char *key, int64_t *out, struct oai_error *err)
{
	const cJSON *v = opt(root, key);
	double d;

	if (v == NULL)
		return 0;
	d = v->valuedouble;
	if (!cJSON_IsNumber(v) || !isfinite(d) || d != floor(d) ||
	    d < -9223372036854775808.0 || d >= 9223372036854775808.0) {
		oai_error_set(err, 400, key, "'%s' must be an integer", key);
		return EPMOE_EINVAL;
	}
	*out = (int64_t)d;
	return 1;
}

static int
get_bool(const cJSON *root, const char *key, int *out, struct oai_error *err)
{
	const cJSON *v = opt(root, key);

	if (v == NULL)
		return 0;
	if (!cJSON_IsBool(v)) {
		oai_error_set(err, 400, key, "'%s' must be a boolean", key);
		return EPMOE_EINVAL;
	}
	*out = cJSON_IsTrue(v);
	return 1;
}

/* Parses body as one JSON object: rejects empty bodies, syntax errors,
 * trailing data, NUL characters in strings and non-object top levels. */
static int
parse_root(const char *body, size_t len, cJSON **out, struct oai_error *err)
{
	const char *end = NULL;
	size_t i;
	cJSON *root;

	for (i = 0; i < len; i++)
		if (body[i] != ' ' && body[i] != '\t' && body[i] != '\r' &&
		    body[i] != '\n')
			break;
	if (i == len) {
		oai_error_set(err, 400, NULL,
		        "the request body is empty; expected a JSON object");
		return EPMOE_EINVAL;
	}
	/* JSON text is UTF-8 (RFC 8259 §8.1) and cJSON copies string bytes
	 * unchecked: ill-formed bytes would reach the prompt, the stop strings
	 * and the echoes. */
	if ((i = utf8_valid_prefix(body, len)) != len) {
		oai_error_set(err, 400, NULL,
		        "the request body is not valid UTF-8 (bad byte 0x%02x at offset %zu)",
		        (unsigned char)body[i], i);
		return EPMOE_EINVAL;
	}
	/* cJSON would silently cut a string at an escaped NUL. */
	for (i = 0; i + 1 < len; i++) {
		if (body[i] != '\\')
			continue;
		if (body[i + 1] == 'u' && i + 5 < len &&
		    memcmp(body + i + 2, "0000", 4) == 0) {
			oai_error_set(err, 400, NULL,
			        "strings must not contain NUL characters (\\u0000)");
			return EPMOE_EINVAL;
		}
		i++; /* skip the escaped character */
	}
	root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
	if (root == NULL) {
		size_t at = end != NULL && end >= body ? (size_t)(end - body) : 0;

		oai_error_set(err, 400, NULL,
		        "the request body is not valid JSON (error at byte %zu)", at);
		return EPMOE_EINVAL;
	}
	if (end != body + len) {
		cJSON_Delete(root);
		oai_error_set(err, 400, NULL,
		        "unexpected data after the JSON value at byte %zu",
		        (size_t)(end - body));
		return EPMOE_EINVAL;
	}
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		oai_error_set(err, 400, NULL, "the request body must be a JSON object");
		return EPMOE_EINVAL;
	}
	*out = root;
	return 0;
}

static int
model_known(const struct oai_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_models; i++)
		if (cfg->models[i] != NULL && strcmp(cfg->models[i], name) == 0)
			return 1;
	return 0;
}

/* Checks "model" and copies it to *out.  required: a missing model is an
 * error unless cfg->model_optional (then *out stays NULL: the server's);
 * not required: a missing model leaves *out NULL.  The name is checked
 * against cfg->models when there are any. */
static int
get_model(const cJSON *root, const struct oai_config *cfg, int required,
        char **out, struct oai_error *err)
{
	const cJSON *v = opt(root, "model");
	const char *name;

	if (v == NULL) {
		if (required && !cfg->model_optional) {
			oai_error_set(err, 400, "model",
			        "you must provide a model parameter");
			return EPMOE_EINVAL;
		}
		return 0;
	}
	if (!cJSON_IsString(v)) {
		oai_error_set(err, 400, "model", "'model' must be a string");
		return EPMOE_EINVAL;
	}
	name = v->valuestring;
	if (cfg->n_models > 0 && !model_known(cfg, name)) {
		oai_error_set(err, 404, "model", "the model '%.100s' does not exist; "
		        "this server serves '%.100s'", name, cfg->models[0]);
		err->code = "model_not_found";
		return EPMOE_EINVAL;
	}
	if ((*out = strdup(name)) == NULL)
		return fail_nomem(err);
	return 0;
}

/* Reads an array of token ids (integers in [0, n_vocab)). */
static int
get_token_ids(const cJSON *arr, const struct oai_config *cfg,
        const char *param, int32_t **out, size_t *n_out,
        struct oai_error *err)
{
	int n = cJSON_GetArraySize(arr), i = 0;
	double hi = cfg->n_vocab > 0 ? cfg->n_vocab - 1.0 : INT32_MAX;
	int32_t *ids = NULL;
	const cJSON *c;

	if (n > 0 && (ids = malloc((size_t)n * sizeof(*ids))) == NULL)
		return fail_nomem(err);
	cJSON_ArrayForEach(c, arr) {
		double d = c->valuedouble;

		if (!cJSON_IsNumber(c) || !isfinite(d) || d != floor(d) || d < 0 ||
		    d > hi) {
			free(ids);
			if (cfg->n_vocab > 0)
				oai_error_set(err, 400, param,
				        "'%s' must hold token ids, integers in [0, %d)",
				        param, cfg->n_vocab);
			else
				oai_error_set(err, 400, param,
				        "'%s' must hold token ids, non-negative integers",
				        param);
			return EPMOE_EINVAL;
		}
		ids[i++] = (int32_t)d;
	}
	*out = ids;
	*n_out = (size_t)n;
	return 0;
}

static void
gen_fini(struct oai_gen *g)
{
	for (size_t i = 0; i < g->n_stop; i++)
		free(g->stop[i]);
	free(g->stop);
	free(g->routing);
	memset(g, 0, sizeof(*g));
}

/* "stop": a string or an array of strings (their number and contents
 * are gen.c's to check). */
static int
get_stop(const cJSON *root, struct oai_gen *g, struct oai_error *err)
{
	const cJSON *v = opt(root, "stop"), *c;
	size_t n = 0;

	if (v == NULL)
		return 0;
	if (!cJSON_IsString(v) && !cJSON_IsArray(v))
		goto bad;
	if (cJSON_IsArray(v)) {
		cJSON_ArrayForEach(c, v) {
			if (!cJSON_IsString(c))
				goto bad;
			n++;
		}
	} else {
		n = 1;
	}
	if (n == 0)
		return 0;
	if ((g->stop = calloc(n, sizeof(*g->stop))) == NULL)
		return fail_nomem(err);
	if (cJSON_IsString(v)) {
		if ((g->stop[0] = strdup(v->valuestring)) == NULL)
			return fail_nomem(err);
		g->n_stop = 1;
		return 0;
	}
	cJSON_ArrayForEach(c, v) {
		if ((g->stop[g->n_stop] = strdup(c->valuestring)) == NULL)
			return fail_nomem(err);
		g->n_stop++;
	}
	return 0;
bad:
	oai_error_set(err, 400, "stop", "'stop' must be a string or an array of strings");
	return EPMOE_EINVAL;
}

/* Refuses a field that is set to something other than its neutral value. */
static int
refuse_unsupported(const cJSON *root, struct oai_error *err)
{
	static const char *const zero_numbers[] = {
		"presence_penalty", "frequency_penalty"
	};
	const cJSON *v;

	for (size_t i = 0; i < sizeof(zero_numbers) / sizeof(*zero_numbers); i++) {
		double d = 0;
		int rc = get_double(root, zero_numbers[i], &d, err);

		if (rc < 0)
			return rc;
		if (d != 0) {
			oai_error_set(err, 400, zero_numbers[i],
			        "'%s' is not supported by this server (only 0)",
			        zero_numbers[i]);
			return EPMOE_EINVAL;
		}
	}
	if ((v = opt(root, "logit_bias")) != NULL &&
	    (!cJSON_IsObject(v) || v->child != NULL)) {
		oai_error_set(err, 400, "logit_bias",
		        "'logit_bias' is not supported by this server");
		return EPMOE_EINVAL;
	}
	return 0;
}

/* The fields both endpoints share, as sent.  chat: max_completion_tokens
 * goes before max_tokens. */
static int
get_gen(const cJSON *root, int chat, struct oai_gen *g, struct oai_error *err)
{
	const cJSON *v;
	double d;
	int rc, b;

	g->max_tokens_key = chat && opt(root, "max_completion_tokens") != NULL ?
	        "max_completion_tokens" : "max_tokens";
	if ((rc = get_int(root, g->max_tokens_key, &g->max_tokens, err)) < 0)
		return rc;
	g->has_max_tokens = rc == 1;
	if ((rc = get_double(root, "temperature", &g->temperature, err)) < 0)
		return rc;
	g->has_temperature = rc == 1;
	if ((rc = get_double(root, "top_p", &g->top_p, err)) < 0)
		return rc;
	g->has_top_p = rc == 1;
	if ((rc = get_int(root, "top_k", &g->top_k, err)) < 0)
		return rc;
	g->has_top_k = rc == 1;
	if ((rc = get_double(root, "min_p", &g->min_p, err)) < 0)
		return rc;
	g->has_min_p = rc == 1;
	if ((v = opt(root, "seed")) != NULL) {
		d = v->valuedouble;
		/* int64 or uint64 range: every integer a double holds there */
		if (!cJSON_IsNumber(v) || !isfinite(d) || d != floor(d) ||
		    d < -9223372036854775808.0 || d >= 18446744073709551616.0) {
			oai_error_set(err, 400, "seed",
			        "'seed' must be a 64-bit integer");
			return EPMOE_EINVAL;
		}
		g->seed = d < 0 ? (uint64_t)(int64_t)d : (uint64_t)d;
		g->has_seed = 1;
	}
	int64_t n;
	if ((rc = get_int(root, "n", &n, err)) < 0)
		return rc;
	if (rc == 1 && n != 1) {
		oai_error_set(err, 400, "n",
		        "only n = 1 is supported; send one request per completion");
		return EPMOE_EINVAL;
	}
	if ((rc = get_stop(root, g, err)) < 0)
		return rc;
	if ((rc = get_bool(root, "stream", &g->stream, err)) < 0)
		return rc;
	/* extension (as vLLM has it): keep generating past end-of-sequence */
	if ((rc = get_bool(root, "ignore_eos", &g->ignore_eos, err)) < 0)
		return rc;
	if ((v = opt(root, "stream_options")) != NULL) {
		if (!cJSON_IsObject(v)) {
			oai_error_set(err, 400, "stream_options",
			        "'stream_options' must be an object");
			return EPMOE_EINVAL;
		}
		if (!g->stream) {
			oai_error_set(err, 400, "stream_options",
			        "'stream_options' is only allowed when 'stream' is true");
			return EPMOE_EINVAL;
		}
		b = 0;
		if ((rc = get_bool(v, "include_usage", &b, err)) < 0) {
			snprintf(err->param, sizeof(err->param),
			        "stream_options.include_usage");
			return rc;
		}
		g->include_usage = b;
	}
	if ((rc = refuse_unsupported(root, err)) < 0)
		return rc;
	if ((v = opt(root, "routing")) != NULL &&
	    (rc = oai_routing_render(v, &g->routing, err)) < 0)
		return rc;
	return 0;
}

/* ---- /v1/completions ---- */

static int
get_prompt(const cJSON *root, const struct oai_config *cfg,
        struct oai_completion_req *r, struct oai_error *err)
{
	const cJSON *v = opt(root, "prompt"), *first;
	int n;

	if (v == NULL) {
		oai_error_set(err, 400, "prompt", "'prompt' is required");
		return EPMOE_EINVAL;
	}
	if (cJSON_IsArray(v)) {
		n = cJSON_GetArraySize(v);
		first = v->child;
		if (n == 0) {
			oai_error_set(err, 400, "prompt",
			        "'prompt' must not be an empty array");
			return EPMOE_EINVAL;
		}
		if (cJSON_IsNumber(first))
			return get_token_ids(v, cfg, "prompt", &r->prompt_tokens,
			        &r->n_prompt_tokens, err);
		if ((cJSON_IsString(first) || cJSON_IsArray(first)) && n > 1) {
			oai_error_set(err, 400, "prompt",
			        "batched prompts are not supported; send one prompt "
			        "per request");
			return EPMOE_EINVAL;
		}
		if (cJSON_IsArray(first)) {
			if (cJSON_GetArraySize(first) == 0) {
				oai_error_set(err, 400, "prompt",
				        "'prompt' must not hold an empty token array");
				return EPMOE_EINVAL;
			}
			return get_token_ids(first, cfg, "prompt", &r->prompt_tokens,
			        &r->n_prompt_tokens, err);
		}
		v = first;
	}
	if (!cJSON_IsString(v)) {
		oai_error_set(err, 400, "prompt",
		        "'prompt' must be a string, an array of token ids, or an "
		        "array holding one of those");
		return EPMOE_EINVAL;
	}
	if ((r->prompt = strdup(v->valuestring)) == NULL)
		return fail_nomem(err);
	r->prompt_len = strlen(r->prompt);
	return 0;
}

void
oai_completion_req_fini(struct oai_completion_req *r)
{
	if (r == NULL)
		return;
	free(r->model);
	free(r->prompt);
	free(r->prompt_tokens);
	gen_fini(&r->gen);
	memset(r, 0, sizeof(*r));
}

int
oai_parse_completion(const char *body, size_t len,
        const struct oai_config *cfg, struct oai_completion_req *out,
        struct oai_error *err)
{
	struct oai_completion_req r = { 0 };
	const cJSON *v;
	cJSON *root;
	int64_t i64;
	int rc;

	if ((rc = parse_root(body, len, &root, err)) < 0)
		return rc;
	if ((rc = get_model(root, cfg, 1, &r.model, err)) < 0 ||
	    (rc = get_prompt(root, cfg, &r, err)) < 0 ||
	    (rc = get_gen(root, 0, &r.gen, err)) < 0 ||
	    (rc = get_bool(root, "echo", &r.echo, err)) < 0)
		goto out;
	if ((rc = get_int(root, "logprobs", &r.logprobs, err)) < 0)
		goto out;
	r.has_logprobs = rc == 1;
	if ((rc = get_int(root, "best_of", &i64, err)) < 0)
		goto out;
	if (rc == 1 && i64 != 1) {
		oai_error_set(err, 400, "best_of", "only best_of = 1 is supported");
		rc = EPMOE_EINVAL;
		goto out;
	}
	if ((v = opt(root, "suffix")) != NULL &&
	    (!cJSON_IsString(v) || v->valuestring[0] != '\0')) {
		oai_error_set(err, 400, "suffix",
		        "'suffix' is not supported by this server");
		rc = EPMOE_EINVAL;
		goto out;
	}
	rc = 0;
out:
	cJSON_Delete(root);
	if (rc < 0) {
		oai_completion_req_fini(&r);
		return rc;
	}
	*out = r;
	return 0;
}

/* ---- /v1/chat/completions ---- */

static int
get_content(const cJSON *m, size_t idx, struct oai_message *msg,
        struct oai_error *err)
{
	const cJSON *v = opt(m, "content"), *part;
	char param[64];
	size_t len = 0, j = 0;
	char *s;

	snprintf(param, sizeof(param), "messages[%zu].content", idx);
	if (v == NULL) {
		oai_error_set(err, 400, param, "'%s' is required", param);
		return EPMOE_EINVAL;
	}
	if (cJSON_IsString(v)) {
		if ((msg->content = strdup(v->valuestring)) == NULL)
			return fail_nomem(err);
		msg->content_len = strlen(msg->content);
		return 0;
	}
	if (!cJSON_IsArray(v)) {
		oai_error_set(err, 400, param,
		        "'%s' must be a string or an array of text parts", param);
		return EPMOE_EINVAL;
	}
	/* Text parts are joined with newlines, as vLLM does. */
	cJSON_ArrayForEach(part, v) {
		const cJSON *type = cJSON_IsObject(part) ? opt(part, "type") : NULL;
		const cJSON *text = cJSON_IsObject(part) ? opt(part, "text") : NULL;

		if (type == NULL || !cJSON_IsString(type) ||
		    strcmp(type->valuestring, "text") != 0) {
			oai_error_set(err, 400, param,
			        "%s[%zu]: only {\"type\": \"text\", \"text\": ...} "
			        "parts are supported", param, j);
			return EPMOE_EINVAL;
		}
		if (text == NULL || !cJSON_IsString(text)) {
			oai_error_set(err, 400, param,
			        "%s[%zu].text must be a string", param, j);
			return EPMOE_EINVAL;
		}
		len += strlen(text->valuestring) + (j > 0);
		j++;
	}
	if ((s = malloc(len + 1)) == NULL)
		return fail_nomem(err);
	len = 0;
	j = 0;
	cJSON_ArrayForEach(part, v) {
		const char *t = opt(part, "text")->valuestring;
		size_t tl = strlen(t);

		if (j++ > 0)
			s[len++] = '\n';
		memcpy(s + len, t, tl);
		len += tl;
	}
	s[len] = '\0';
	msg->content = s;
	msg->content_len = len;
	return 0;
}

static int
get_messages(const cJSON *root, struct oai_chat_req *r, struct oai_error *err)
{
	const cJSON *v = opt(root, "messages"), *m;
	size_t n, i = 0;
	int rc;

	if (v == NULL || !cJSON_IsArray(v) || cJSON_GetArraySize(v) == 0) {
		oai_error_set(err, 400, "messages",
		        "'messages' must be a non-empty array");
		return EPMOE_EINVAL;
	}
	n = (size_t)cJSON_GetArraySize(v);
	if ((r->messages = calloc(n, sizeof(*r->messages))) == NULL)
		return fail_nomem(err);
	cJSON_ArrayForEach(m, v) {
		struct oai_message *msg = &r->messages[i];
		const cJSON *role;
		char param[64];

		if (!cJSON_IsObject(m)) {
			snprintf(param, sizeof(param), "messages[%zu]", i);
			oai_error_set(err, 400, param, "'%s' must be an object", param);
			return EPMOE_EINVAL;
		}
		role = opt(m, "role");
		snprintf(param, sizeof(param), "messages[%zu].role", i);
		if (role == NULL || !cJSON_IsString(role)) {
			oai_error_set(err, 400, param, "'%s' is required and must be "
			        "one of system, user, assistant", param);
			return EPMOE_EINVAL;
		}
		if (strcmp(role->valuestring, "system") == 0 ||
		    strcmp(role->valuestring, "developer") == 0) {
			msg->role = OAI_ROLE_SYSTEM;
		} else if (strcmp(role->valuestring, "user") == 0) {
			msg->role = OAI_ROLE_USER;
		} else if (strcmp(role->valuestring, "assistant") == 0) {
			msg->role = OAI_ROLE_ASSISTANT;
		} else {
			oai_error_set(err, 400, param, "'%s' must be one of system, "
			        "user, assistant; got '%.40s'", param,
			        role->valuestring);
			return EPMOE_EINVAL;
		}
		if ((rc = get_content(m, i, msg, err)) < 0)
			return rc;
		r->n_messages = ++i;
	}
	return 0;
}

void
oai_chat_req_fini(struct oai_chat_req *r)
{
	if (r == NULL)
		return;
	free(r->model);
	if (r->messages != NULL) {
		for (size_t i = 0; i < r->n_messages; i++)
			free(r->messages[i].content);
		free(r->messages);
	}
	gen_fini(&r->gen);
	memset(r, 0, sizeof(*r));
}

int
oai_parse_chat(const char *body, size_t len, const struct oai_config *cfg,
        struct oai_chat_req *out, struct oai_error *err)
{
	struct oai_chat_req r = { 0 };
	const cJSON *v;
	cJSON *root;
	int64_t i64;
	int rc;

	if ((rc = parse_root(body, len, &root, err)) < 0)
		return rc;
	if ((rc = get_model(root, cfg, 1, &r.model, err)) < 0 ||
	    (rc = get_messages(root, &r, err)) < 0 ||
	    (rc = get_gen(root, 1, &r.gen, err)) < 0 ||
	    (rc = get_bool(root, "logprobs", &r.logprobs, err)) < 0 ||
	    (rc = get_int(root, "top_logprobs", &i64, err)) < 0)
		goto out;
	if (rc == 1) {
		r.top_logprobs = i64;
		if (i64 != 0 && !r.logprobs) {
			oai_error_set(err, 400, "top_logprobs",
			        "'top_logprobs' requires 'logprobs' to be true");
			rc = EPMOE_EINVAL;
			goto out;
		}
	}
	if (((v = opt(root, "tools")) != NULL && (!cJSON_IsArray(v) ||
	        v->child != NULL)) ||
	    ((v = opt(root, "functions")) != NULL && (!cJSON_IsArray(v) ||
	        v->child != NULL))) {
		oai_error_set(err, 400, v->string,
		        "'%s' (tool calling) is not supported by this server",
		        v->string);
		rc = EPMOE_EINVAL;
		goto out;
	}
	if ((v = opt(root, "response_format")) != NULL) {
		const cJSON *t = cJSON_IsObject(v) ? opt(v, "type") : NULL;

		if (t == NULL || !cJSON_IsString(t) ||
		    strcmp(t->valuestring, "text") != 0) {
			oai_error_set(err, 400, "response_format",
			        "only {\"type\": \"text\"} is supported for "
			        "'response_format'");
			rc = EPMOE_EINVAL;
			goto out;
		}
	}
	rc = 0;
out:
	cJSON_Delete(root);
	if (rc < 0) {
		oai_chat_req_fini(&r);
		return rc;
	}
	*out = r;
	return 0;
}

/* ---- /tokenize, /detokenize ---- */

void
oai_tokenize_req_fini(struct oai_tokenize_req *r)
{
	if (r == NULL)
		return;
	free(r->text);
	memset(r, 0, sizeof(*r));
}

int
oai_parse_tokenize(const char *body, size_t len, const struct oai_config *cfg,
        struct oai_tokenize_req *out, struct oai_error *err)
{
	static const char *const keys[] = { "prompt", "text", "content" };
	struct oai_tokenize_req r = { 0 };
	const cJSON *v = NULL;
	const char *key = "prompt";
	char *model = NULL;
	cJSON *root;
	int rc;

	if ((rc = parse_root(body, len, &root, err)) < 0)
		return rc;
	r.add_special = 1;
	if ((rc = get_model(root, cfg, 0, &model, err)) < 0)
		goto out;
	for (size_t i = 0; i < sizeof(keys) / sizeof(*keys) && v == NULL; i++)
		if ((v = opt(root, keys[i])) != NULL)
			key = keys[i];
	if (v == NULL || !cJSON_IsString(v)) {
		oai_error_set(err, 400, key,
		        "'%s' is required and must be a string", key);
		rc = EPMOE_EINVAL;
		goto out;
	}
	if ((rc = get_bool(root, "add_special", &r.add_special, err)) < 0 ||
	    (rc = get_bool(root, "add_special_tokens", &r.add_special, err)) < 0)
		goto out;
	if ((r.text = strdup(v->valuestring)) == NULL) {
		rc = fail_nomem(err);
		goto out;
	}
	r.text_len = strlen(r.text);
	rc = 0;
out:
	free(model);
	cJSON_Delete(root);
	if (rc < 0) {
		oai_tokenize_req_fini(&r);
		return rc;
	}
	*out = r;
	return 0;
}

void
oai_detokenize_req_fini(struct oai_detokenize_req *r)
{
	if (r == NULL)
		return;
	free(r->tokens);
	memset(r, 0, sizeof(*r));
}

int
oai_parse_detokenize(const char *body, size_t len,
        const struct oai_config *cfg, struct oai_detokenize_req *out,
        struct oai_error *err)
{
	struct oai_detokenize_req r = { 0 };
	const cJSON *v;
	char *model = NULL;
	cJSON *root;
	int rc;

	if ((rc = parse_root(body, len, &root, err)) < 0)
		return rc;
	if ((rc = get_model(root, cfg, 0, &model, err)) < 0)
		goto out;
	if ((v = opt(root, "tokens")) == NULL || !cJSON_IsArray(v)) {
		oai_error_set(err, 400, "tokens",
		        "'tokens' is required and must be an array of token ids");
		rc = EPMOE_EINVAL;
		goto out;
	}
	rc = get_token_ids(v, cfg, "tokens", &r.tokens, &r.n_tokens, err);
out:
	free(model);
	cJSON_Delete(root);
	if (rc < 0) {
		oai_detokenize_req_fini(&r);
		return rc;
	}
	*out = r;
	return 0;
}

/* ---- routing extension ---- */

static int
chars_ok(const char *s, size_t n, const char *extra, int upper)
{
	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
		    (upper && c >= 'A' && c <= 'Z') ||
		    (c != '\0' && strchr(extra, c) != NULL))
			continue;
		return 0;
	}
	return 1;
}

#define ROUTING_NAME_CHARS ""
#define ROUTING_KEY_CHARS "."
#define ROUTING_VAL_CHARS ".+-"

int
oai_routing_render(const cJSON *routing, char **out, struct oai_error *err)
{
	static const char *usage = "'routing' must be a string "
	        "\"policy[:key=value,...]\" or an object {\"policy\": \"name\", "
	        "\"key\": value, ...}";
	char buf[OAI_MAX_ROUTING + 1];
	size_t len = 0;
	const cJSON *pol, *c;
	char *s;

	if (routing != NULL && cJSON_IsString(routing)) {
		/* the spec language is route_parse's (through gen.c) */
		if ((s = strdup(routing->valuestring)) == NULL)
			return fail_nomem(err);
		*out = s;
		return 0;
	}
	if (routing == NULL || !cJSON_IsObject(routing)) {
		oai_error_set(err, 400, "routing", "%s", usage);
		return EPMOE_EINVAL;
	}
	pol = opt(routing, "policy");
	if (pol == NULL || !cJSON_IsString(pol) ||
	    !chars_ok(pol->valuestring, strlen(pol->valuestring),
	        ROUTING_NAME_CHARS, 0)) {
		oai_error_set(err, 400, "routing.policy", "'routing.policy' must be "
		        "a policy name ([a-z0-9_]+), e.g. \"native\" or \"ssr\"");
		return EPMOE_EINVAL;
	}
	len = (size_t)snprintf(buf, sizeof(buf), "%s", pol->valuestring);
	if (len >= sizeof(buf)) {
		/* the appends below index buf + len */
		oai_error_set(err, 400, "routing",
		        "'routing' renders to more than %d bytes", OAI_MAX_ROUTING);
		return EPMOE_EINVAL;
	}
	for (c = routing->child; c != NULL; c = c->next) {
		char val[64], param[64];
		const char *vs;
		size_t n;

		if (strcmp(c->string, "policy") == 0 || obj_get(routing, c->string) != c)
			continue; /* the policy, or a key repeated later */
		snprintf(param, sizeof(param), "routing.%.50s", c->string);
		if (!chars_ok(c->string, strlen(c->string), ROUTING_KEY_CHARS, 1)) {
			oai_error_set(err, 400, param, "routing keys must match "
			        "[A-Za-z0-9_.]+, got '%.50s'", c->string);
			return EPMOE_EINVAL;
		}
		if (cJSON_IsBool(c)) {
			vs = cJSON_IsTrue(c) ? "true" : "false";
		} else if (cJSON_IsNumber(c) && isfinite(c->valuedouble)) {
			double d = c->valuedouble;

			if (d == floor(d) && fabs(d) < 1e15) {
				snprintf(val, sizeof(val), "%.0f", d);
			} else {
				for (int prec = 15; prec <= 17; prec++) {
					snprintf(val, sizeof(val), "%.*g", prec, d);
					if (strtod(val, NULL) == d)
						break;
				}
			}
			vs = val;
		} else if (cJSON_IsString(c) &&
		    chars_ok(c->valuestring, strlen(c->valuestring),
		        ROUTING_VAL_CHARS, 1)) {
			vs = c->valuestring;
		} else {
			oai_error_set(err, 400, param, "'%s' must be a number, a "
			        "boolean or a string of [A-Za-z0-9_.+-]", param);
			return EPMOE_EINVAL;
		}
		n = (size_t)snprintf(buf + len, sizeof(buf) - len, "%c%s=%s",
		        strchr(buf, ':') ? ',' : ':', c->string, vs);
		if (n >= sizeof(buf) - len) {
			oai_error_set(err, 400, "routing",
			        "'routing' renders to more than %d bytes",
			        OAI_MAX_ROUTING);
			return EPMOE_EINVAL;
		}
		len += n;
	}
	if ((s = strdup(buf)) == NULL)
		return fail_nomem(err);
	*out = s;
	return 0;
}

/* ---- response builders ---- */

static pthread_once_t id_once = PTHREAD_ONCE_INIT;
static uint64_t id_seed;
static _Atomic uint64_t id_counter;

static void
id_init(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	id_seed = rng_mix64((uint64_t)ts.tv_sec * 1000000000ULL +
	        (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 32);
}

void
oai_make_id(char *buf, size_t size, const char *prefix)
{
	uint64_t n, a, b;

	pthread_once(&id_once, id_init);
	n = atomic_fetch_add(&id_counter, 1);
	/* splitmix64 is a bijection: distinct n give distinct a. */
	a = rng_mix64(id_seed + n * 0x9e3779b97f4a7c15ULL);
	b = rng_mix64(a ^ id_seed);
	snprintf(buf, size, "%s%016llx%08llx", prefix ? prefix : "",
	        (unsigned long long)a, (unsigned long long)(b >> 32));
}

static cJSON *
add_text(cJSON *obj, const char *key, const char *s, size_t len,
        size_t *n_chars)
{
	char *clean = utf8_clean(s ? s : "", s ? len : 0, n_chars);
	cJSON *item;

	if (clean == NULL)
		return NULL;
	item = cJSON_CreateString(clean);
	free(clean);
	if (item == NULL)
		return NULL;
	if (key == NULL ? !cJSON_AddItemToArray(obj, item)
	                : !cJSON_AddItemToObject(obj, key, item)) {
		cJSON_Delete(item);
		return NULL;
	}
	return item;
}

/* A float log-probability as the double with the same short decimal
 * spelling; -inf (probability 0) as -9999 like vLLM, since JSON has no
 * infinities. */
static double
lp_value(float lp)
{
	char b[32];

	if (!isfinite(lp) || lp < -9999.0f)
		return -9999.0;
	snprintf(b, sizeof(b), "%.9g", lp);
	return strtod(b, NULL);
}

static cJSON *
new_envelope(const char *id, const char *object, const char *model,
        int64_t created)
{
	cJSON *root = cJSON_CreateObject();

	if (root == NULL ||
	    cJSON_AddStringToObject(root, "id", id ? id : "") == NULL ||
	    cJSON_AddStringToObject(root, "object", object) == NULL ||
	    cJSON_AddNumberToObject(root, "created", (double)created) == NULL ||
	    cJSON_AddStringToObject(root, "model", model ? model : "") == NULL) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

static int
add_usage(cJSON *root, const struct oai_usage *u)
{
	cJSON *o, *d;

	if (u == NULL)
		return cJSON_AddNullToObject(root, "usage") != NULL;
	return (o = cJSON_AddObjectToObject(root, "usage")) != NULL &&
	        cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens) &&
	        cJSON_AddNumberToObject(o, "completion_tokens",
	            u->completion_tokens) &&
	        cJSON_AddNumberToObject(o, "total_tokens",
	            (double)u->prompt_tokens + u->completion_tokens) &&
	        (d = cJSON_AddObjectToObject(o, "prompt_tokens_details")) != NULL &&
	        cJSON_AddNumberToObject(d, "cached_tokens", u->cached_tokens);
}

static int
add_finish(cJSON *choice, const char *finish_reason)
{
	if (finish_reason == NULL)
		return cJSON_AddNullToObject(choice, "finish_reason") != NULL;
	return cJSON_AddStringToObject(choice, "finish_reason", finish_reason) !=
	        NULL;
}

/* Legacy completions logprobs: parallel arrays. */
static int
add_completion_logprobs(cJSON *choice, const struct oai_choice *c)
{
	cJSON *lp, *tokens, *tlps, *tops, *offs;

	if (c->lps == NULL)
		return cJSON_AddNullToObject(choice, "logprobs") != NULL;
	if ((lp = cJSON_AddObjectToObject(choice, "logprobs")) == NULL ||
	    (tokens = cJSON_AddArrayToObject(lp, "tokens")) == NULL ||
	    (tlps = cJSON_AddArrayToObject(lp, "token_logprobs")) == NULL ||
	    (tops = cJSON_AddArrayToObject(lp, "top_logprobs")) == NULL ||
	    (offs = cJSON_AddArrayToObject(lp, "text_offset")) == NULL)
		return 0;
	for (size_t i = 0; i < c->n_lps; i++) {
		const struct oai_token_logprob *t = &c->lps[i];
		cJSON *item, *top;
		size_t n_chars = 0;

		if (add_text(tokens, NULL, t->text, t->text_len, &n_chars) == NULL)
			return 0;
		item = t->has_logprob ? cJSON_CreateNumber(lp_value(t->logprob))
		                      : cJSON_CreateNull();
		if (item == NULL || !cJSON_AddItemToArray(tlps, item)) {
			cJSON_Delete(item);
			return 0;
		}
		if (t->top == NULL) {
			top = cJSON_CreateNull();
		} else {
			top = cJSON_CreateObject();
			for (size_t j = 0; top != NULL && j < t->n_top; j++) {
				char *k = utf8_clean(t->top[j].text, t->top[j].text_len,
				        NULL);

				if (k == NULL) {
					cJSON_Delete(top);
					return 0;
				}
				/* Two ids with one spelling: keep the first (best). */
				if (cJSON_GetObjectItemCaseSensitive(top, k) == NULL &&
				    cJSON_AddNumberToObject(top, k,
				        lp_value(t->top[j].logprob)) == NULL) {
					free(k);
					cJSON_Delete(top);
					return 0;
				}
				free(k);
			}
		}
		if (top == NULL || !cJSON_AddItemToArray(tops, top)) {
			cJSON_Delete(top);
			return 0;
		}
		item = cJSON_CreateNumber((double)t->text_offset);
		if (item == NULL || !cJSON_AddItemToArray(offs, item)) {
			cJSON_Delete(item);
			return 0;
		}
	}
	return 1;
}

static cJSON *
completion_common(const char *id, const char *model, int64_t created,
        const struct oai_choice *c, cJSON **choice_out)
{
	cJSON *root, *choices, *choice;

	if ((root = new_envelope(id, "text_completion", model, created)) == NULL)
		return NULL;
	if ((choices = cJSON_AddArrayToObject(root, "choices")) == NULL ||
	    (choice = cJSON_CreateObject()) == NULL)
		goto fail;
	if (!cJSON_AddItemToArray(choices, choice)) {
		cJSON_Delete(choice);
		goto fail;
	}
	if (add_text(choice, "text", c->text, c->text_len, NULL) == NULL ||
	    cJSON_AddNumberToObject(choice, "index", 0) == NULL ||
	    !add_completion_logprobs(choice, c) ||
	    !add_finish(choice, c->finish_reason))
		goto fail;
	*choice_out = choice;
	return root;
fail:
	cJSON_Delete(root);
	return NULL;
}

cJSON *
oai_completion_response(const char *id, const char *model, int64_t created,
        const struct oai_choice *choice, const struct oai_usage *usage)
{
	struct oai_usage zero = { 0 };
	cJSON *root, *ch;

	if ((root = completion_common(id, model, created, choice, &ch)) == NULL)
		return NULL;
	if (!add_usage(root, usage ? usage : &zero)) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

cJSON *
oai_completion_chunk(const char *id, const char *model, int64_t created,
        const struct oai_choice *choice, int usage_null)
{
	cJSON *root, *ch;

	if ((root = completion_common(id, model, created, choice, &ch)) == NULL)
		return NULL;
	if (usage_null && !add_usage(root, NULL)) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

static cJSON *
bytes_array(const char *s, size_t len)
{
	cJSON *a = cJSON_CreateArray();

	for (size_t i = 0; a != NULL && i < len; i++) {
		cJSON *n = cJSON_CreateNumber((unsigned char)s[i]);

		if (n == NULL || !cJSON_AddItemToArray(a, n)) {
			cJSON_Delete(n);
			cJSON_Delete(a);
			return NULL;
		}
	}
	return a;
}

/* One {"token","logprob","bytes"} entry, top_logprobs added by the caller. */
static cJSON *
chat_lp_entry(const char *text, size_t len, float lp)
{
	cJSON *e = cJSON_CreateObject(), *b;

	if (e == NULL || add_text(e, "token", text, len, NULL) == NULL ||
	    cJSON_AddNumberToObject(e, "logprob", lp_value(lp)) == NULL ||
	    (b = bytes_array(text, len)) == NULL) {
		cJSON_Delete(e);
		return NULL;
	}
	if (!cJSON_AddItemToObject(e, "bytes", b)) {
		cJSON_Delete(b);
		cJSON_Delete(e);
		return NULL;
	}
	return e;
}

/* Chat logprobs: {"content": [{token, logprob, bytes, top_logprobs}]}. */
static int
add_chat_logprobs(cJSON *choice, const struct oai_choice *c)
{
	cJSON *lp, *content;

	if (c->lps == NULL)
		return cJSON_AddNullToObject(choice, "logprobs") != NULL;
	if ((lp = cJSON_AddObjectToObject(choice, "logprobs")) == NULL ||
	    (content = cJSON_AddArrayToObject(lp, "content")) == NULL)
		return 0;
	for (size_t i = 0; i < c->n_lps; i++) {
		const struct oai_token_logprob *t = &c->lps[i];
		cJSON *e = chat_lp_entry(t->text, t->text_len, t->logprob), *tops;

		if (e == NULL)
			return 0;
		if (!cJSON_AddItemToArray(content, e)) {
			cJSON_Delete(e);
			return 0;
		}
		if ((tops = cJSON_AddArrayToObject(e, "top_logprobs")) == NULL)
			return 0;
		for (size_t j = 0; j < t->n_top; j++) {
			cJSON *te = chat_lp_entry(t->top[j].text, t->top[j].text_len,
			        t->top[j].logprob);

			if (te == NULL)
				return 0;
			if (!cJSON_AddItemToArray(tops, te)) {
				cJSON_Delete(te);
				return 0;
			}
		}
	}
	return 1;
}

static cJSON *
chat_common(const char *id, const char *object, const char *model,
        int64_t created, const struct oai_choice *c, const char *msg_key,
        const char *role, int always_content)
{
	cJSON *root, *choices, *choice, *msg;

	if ((root = new_envelope(id, object, model, created)) == NULL)
		return NULL;
	if ((choices = cJSON_AddArrayToObject(root, "choices")) == NULL ||
	    (choice = cJSON_CreateObject()) == NULL)
		goto fail;
	if (!cJSON_AddItemToArray(choices, choice)) {
		cJSON_Delete(choice);
		goto fail;
	}
	if (cJSON_AddNumberToObject(choice, "index", 0) == NULL ||
	    (msg = cJSON_AddObjectToObject(choice, msg_key)) == NULL)
		goto fail;
	if (role != NULL && cJSON_AddStringToObject(msg, "role", role) == NULL)
		goto fail;
	if ((c->text != NULL || always_content) &&
	    add_text(msg, "content", c->text, c->text_len, NULL) == NULL)
		goto fail;
	if (!add_chat_logprobs(choice, c) || !add_finish(choice, c->finish_reason))
		goto fail;
	return root;
fail:
	cJSON_Delete(root);
	return NULL;
}

cJSON *
oai_chat_response(const char *id, const char *model, int64_t created,
        const struct oai_choice *choice, const struct oai_usage *usage)
{
	struct oai_usage zero = { 0 };
	cJSON *root = chat_common(id, "chat.completion", model, created, choice,
	        "message", "assistant", 1);

	if (root != NULL && !add_usage(root, usage ? usage : &zero)) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

cJSON *
oai_chat_chunk(const char *id, const char *model, int64_t created,
        const char *role, const struct oai_choice *choice, int usage_null)
{
	cJSON *root = chat_common(id, "chat.completion.chunk", model, created,
	        choice, "delta", role, 0);

	if (root != NULL && usage_null && !add_usage(root, NULL)) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

cJSON *
oai_usage_chunk(const char *id, const char *model, int64_t created, int chat,
        const struct oai_usage *usage)
{
	struct oai_usage zero = { 0 };
	cJSON *root = new_envelope(id,
	        chat ? "chat.completion.chunk" : "text_completion", model, created);

	if (root == NULL)
		return NULL;
	if (cJSON_AddArrayToObject(root, "choices") == NULL ||
	    !add_usage(root, usage ? usage : &zero)) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

cJSON *
oai_models_response(const char *const *models, size_t n_models,
        int64_t created, const char *owned_by)
{
	cJSON *root = cJSON_CreateObject(), *data;

	if (root == NULL || cJSON_AddStringToObject(root, "object", "list") == NULL ||
	    (data = cJSON_AddArrayToObject(root, "data")) == NULL)
		goto fail;
	for (size_t i = 0; i < n_models; i++) {
		cJSON *m = cJSON_CreateObject();

		if (m == NULL)
			goto fail;
		if (!cJSON_AddItemToArray(data, m)) {
			cJSON_Delete(m);
			goto fail;
		}
		if (cJSON_AddStringToObject(m, "id", models[i]) == NULL ||
		    cJSON_AddStringToObject(m, "object", "model") == NULL ||
		    cJSON_AddNumberToObject(m, "created", (double)created) == NULL ||
		    cJSON_AddStringToObject(m, "owned_by",
		        owned_by ? owned_by : "epmoe") == NULL)
			goto fail;
	}
	return root;
fail:
	cJSON_Delete(root);
	return NULL;
}

cJSON *
oai_tokenize_response(const int32_t *tokens, size_t n_tokens,
        int32_t max_model_len)
{
	cJSON *root = cJSON_CreateObject(), *arr;

	if (root == NULL || (arr = cJSON_AddArrayToObject(root, "tokens")) == NULL)
		goto fail;
	for (size_t i = 0; i < n_tokens; i++) {
		cJSON *n = cJSON_CreateNumber(tokens[i]);

		if (n == NULL || !cJSON_AddItemToArray(arr, n)) {
			cJSON_Delete(n);
			goto fail;
		}
	}
	if (cJSON_AddNumberToObject(root, "count", (double)n_tokens) == NULL ||
	    (max_model_len > 0 &&
	     cJSON_AddNumberToObject(root, "max_model_len", max_model_len) == NULL))
		goto fail;
	return root;
fail:
	cJSON_Delete(root);
	return NULL;
}

cJSON *
oai_detokenize_response(const char *text, size_t text_len)
{
	cJSON *root = cJSON_CreateObject();

	if (root == NULL || add_text(root, "prompt", text, text_len, NULL) == NULL) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

int
oai_sse_frame(const cJSON *json, char **out, size_t *out_len)
{
	char *txt, *frame;
	size_t n;

	if (json == NULL)
		return EPMOE_EINVAL;
	if ((txt = cJSON_PrintUnformatted(json)) == NULL)
		return EPMOE_ENOMEM;
	n = strlen(txt);
	if ((frame = malloc(n + 9)) == NULL) {
		cJSON_free(txt);
		return EPMOE_ENOMEM;
	}
	memcpy(frame, "data: ", 6);
	memcpy(frame + 6, txt, n);
	memcpy(frame + 6 + n, "\n\n", 3);
	cJSON_free(txt);
	*out = frame;
	*out_len = n + 8;
	return 0;
}
