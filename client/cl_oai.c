/* Client-side OpenAI JSON.  See cl_oai.h. */
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "cl_oai.h"
#include "err.h"

static int
add_gen(cJSON *root, const struct epmoe_gen_params *p)
{
	char seed[32];

	if (p->max_tokens >= 0 &&
	        !cJSON_AddNumberToObject(root, "max_tokens", p->max_tokens))
		return EPMOE_ENOMEM;
	if (!isnan(p->temperature) &&
	        !cJSON_AddNumberToObject(root, "temperature", p->temperature))
		return EPMOE_ENOMEM;
	if (!isnan(p->top_p) && !cJSON_AddNumberToObject(root, "top_p", p->top_p))
		return EPMOE_ENOMEM;
	if (p->top_k >= 0 && !cJSON_AddNumberToObject(root, "top_k", p->top_k))
		return EPMOE_ENOMEM;
	if (!isnan(p->min_p) && !cJSON_AddNumberToObject(root, "min_p", p->min_p))
		return EPMOE_ENOMEM;
	if (p->has_seed) {
		/* exact digits: a double would round seeds above 2^53 */
		snprintf(seed, sizeof(seed), "%" PRIu64, p->seed);
		if (!cJSON_AddRawToObject(root, "seed", seed))
			return EPMOE_ENOMEM;
	}
	if (p->n_stop > 0) {
		cJSON *a = cJSON_AddArrayToObject(root, "stop");
		if (a == NULL)
			return EPMOE_ENOMEM;
		for (size_t i = 0; i < p->n_stop; i++) {
			cJSON *s = cJSON_CreateString(p->stop[i]);
			if (s == NULL || !cJSON_AddItemToArray(a, s)) {
				cJSON_Delete(s);
				return EPMOE_ENOMEM;
			}
		}
	}
	if (p->routing && !cJSON_AddStringToObject(root, "routing", p->routing))
		return EPMOE_ENOMEM;
	/* not OpenAI's; vLLM's name, ignored by servers that do not know it */
	if (p->ignore_eos && !cJSON_AddTrueToObject(root, "ignore_eos"))
		return EPMOE_ENOMEM;
	if (p->stream) {
		cJSON *so;
		if (!cJSON_AddTrueToObject(root, "stream") ||
		        (so = cJSON_AddObjectToObject(root, "stream_options")) == NULL ||
		        !cJSON_AddTrueToObject(so, "include_usage"))
			return EPMOE_ENOMEM;
	}
	return 0;
}

int
cl_oai_request(const char *model, const char *prompt,
        const struct epmoe_chat_msg *msgs, size_t n_msgs,
        const struct epmoe_gen_params *p, char **out)
{
	cJSON *root;
	char *s;
	int rc = EPMOE_ENOMEM;

	if ((msgs == NULL && prompt == NULL) || (msgs != NULL && n_msgs == 0))
		return EPMOE_EINVAL;
	if ((root = cJSON_CreateObject()) == NULL)
		return EPMOE_ENOMEM;
	if (model && !cJSON_AddStringToObject(root, "model", model))
		goto out;
	if (msgs == NULL) {
		if (!cJSON_AddStringToObject(root, "prompt", prompt))
			goto out;
	} else {
		cJSON *a = cJSON_AddArrayToObject(root, "messages");
		if (a == NULL)
			goto out;
		for (size_t i = 0; i < n_msgs; i++) {
			cJSON *m = cJSON_CreateObject();
			if (m == NULL || !cJSON_AddItemToArray(a, m)) {
				cJSON_Delete(m);
				goto out;
			}
			if (msgs[i].role == NULL || msgs[i].content == NULL) {
				rc = EPMOE_EINVAL;
				goto out;
			}
			if (!cJSON_AddStringToObject(m, "role", msgs[i].role) ||
			        !cJSON_AddStringToObject(m, "content", msgs[i].content))
				goto out;
		}
	}
	if ((rc = add_gen(root, p)) != 0)
		goto out;
	if ((s = cJSON_PrintUnformatted(root)) == NULL) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	*out = s;
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}

void
cl_oai_delta_fini(struct cl_oai_delta *d)
{
	if (d == NULL)
		return;
	free(d->text);
	free(d->id);
	free(d->model);
	memset(d, 0, sizeof(*d));
}

/* A u32 counter: a non-negative integral number. */
static int
get_u32(const cJSON *o, const char *name, uint32_t *v)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, name);

	if (x == NULL || cJSON_IsNull(x))
		return 0;
	if (!cJSON_IsNumber(x) || !(x->valuedouble >= 0) ||
	        x->valuedouble > 4294967295.0 ||
	        x->valuedouble != floor(x->valuedouble))
		return EPMOE_EPROTO;
	*v = (uint32_t)x->valuedouble;
	return 0;
}

/* Copies an optional string member into *dst (owned). */
static int
dup_str(const cJSON *o, const char *name, char **dst)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, name);

	if (x == NULL || cJSON_IsNull(x))
		return 0;
	if (!cJSON_IsString(x))
		return EPMOE_EPROTO;
	if ((*dst = strdup(x->valuestring)) == NULL)
		return EPMOE_ENOMEM;
	return 0;
}

static int
parse_choice(const cJSON *c, struct cl_oai_delta *d)
{
	const cJSON *fr, *txt = NULL, *sub;

	if (!cJSON_IsObject(c))
		return EPMOE_EPROTO;
	if ((txt = cJSON_GetObjectItemCaseSensitive(c, "text")) == NULL) {
		sub = cJSON_GetObjectItemCaseSensitive(c, "message");
		if (sub == NULL)
			sub = cJSON_GetObjectItemCaseSensitive(c, "delta");
		if (sub != NULL && !cJSON_IsNull(sub)) {
			if (!cJSON_IsObject(sub))
				return EPMOE_EPROTO;
			txt = cJSON_GetObjectItemCaseSensitive(sub, "content");
		}
	}
	if (txt != NULL && !cJSON_IsNull(txt)) {
		if (!cJSON_IsString(txt))
			return EPMOE_EPROTO;
		d->text_len = strlen(txt->valuestring);
		if ((d->text = strdup(txt->valuestring)) == NULL)
			return EPMOE_ENOMEM;
	}
	fr = cJSON_GetObjectItemCaseSensitive(c, "finish_reason");
	if (fr != NULL && !cJSON_IsNull(fr)) {
		if (!cJSON_IsString(fr))
			return EPMOE_EPROTO;
		snprintf(d->finish_reason, sizeof(d->finish_reason), "%s",
		        fr->valuestring);
	}
	return 0;
}

/* The cached prompt tokens of a usage object u of root, if it says. */
static int
parse_cached(const cJSON *root, const cJSON *u, struct cl_oai_delta *d)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(u,
	        "prompt_tokens_details"), *y;
	uint32_t v;
	int rc;

	if (x != NULL && !cJSON_IsNull(x)) {
		if (!cJSON_IsObject(x))
			return EPMOE_EPROTO;
		y = cJSON_GetObjectItemCaseSensitive(x, "cached_tokens");
		if (y == NULL || cJSON_IsNull(y))
			return 0;
		if ((rc = get_u32(x, "cached_tokens", &v)) != 0)
			return rc;
		d->cached_tokens = v;
		d->has_cached = 1;
		return 0;
	}
	x = cJSON_GetObjectItemCaseSensitive(root, "timings");
	if (x == NULL || !cJSON_IsObject(x))
		return 0;
	y = cJSON_GetObjectItemCaseSensitive(x, "prompt_n");
	if (y == NULL || cJSON_IsNull(y))
		return 0;
	if ((rc = get_u32(x, "prompt_n", &v)) != 0)
		return rc;
	d->cached_tokens = v < d->prompt_tokens ? d->prompt_tokens - v : 0;
	d->has_cached = 1;
	return 0;
}

int
cl_oai_parse(const char *json, size_t len, struct cl_oai_delta *out)
{
	struct cl_oai_delta d;
	cJSON *root;
	const cJSON *x;
	int rc = EPMOE_EPROTO;

	memset(&d, 0, sizeof(d));
	if ((root = cJSON_ParseWithLength(json, len)) == NULL)
		return EPMOE_EPROTO;
	if (!cJSON_IsObject(root))
		goto out;
	if ((x = cJSON_GetObjectItemCaseSensitive(root, "error")) != NULL &&
	        !cJSON_IsNull(x)) {
		const cJSON *m = cJSON_IsObject(x) ?
		        cJSON_GetObjectItemCaseSensitive(x, "message") : x;
		d.is_error = 1;
		snprintf(d.error, sizeof(d.error), "%s",
		        cJSON_IsString(m) ? m->valuestring : "unspecified error");
	}
	if ((rc = dup_str(root, "id", &d.id)) != 0 ||
	        (rc = dup_str(root, "model", &d.model)) != 0)
		goto out;
	rc = EPMOE_EPROTO;
	if ((x = cJSON_GetObjectItemCaseSensitive(root, "choices")) != NULL) {
		if (!cJSON_IsArray(x))
			goto out;
		if (cJSON_GetArraySize(x) > 0 &&
		        (rc = parse_choice(cJSON_GetArrayItem(x, 0), &d)) != 0)
			goto out;
	}
	rc = EPMOE_EPROTO;
	if ((x = cJSON_GetObjectItemCaseSensitive(root, "usage")) != NULL &&
	        !cJSON_IsNull(x)) {
		if (!cJSON_IsObject(x))
			goto out;
		if ((rc = get_u32(x, "prompt_tokens", &d.prompt_tokens)) != 0 ||
		        (rc = get_u32(x, "completion_tokens",
		                &d.completion_tokens)) != 0)
			goto out;
		d.has_usage = 1;
		if ((rc = parse_cached(root, x, &d)) != 0)
			goto out;
	}
	rc = 0;
out:
	cJSON_Delete(root);
	if (rc != 0)
		cl_oai_delta_fini(&d);
	else
		*out = d;
	return rc;
}

void
cl_oai_error_message(const char *body, size_t len, int status, char *msg,
        size_t size)
{
	struct cl_oai_delta d;
	size_t k = 0;

	if (size == 0)
		return;
	msg[0] = '\0';
	if (body != NULL && len > 0 && cl_oai_parse(body, len, &d) == 0) {
		if (d.is_error)
			snprintf(msg, size, "%s", d.error);
		cl_oai_delta_fini(&d);
		if (msg[0])
			return;
	}
	/* not the envelope: show the body's printable bytes, one line */
	for (size_t i = 0; body != NULL && i < len && k + 1 < size; i++) {
		unsigned char ch = (unsigned char)body[i];
		msg[k++] = (isprint(ch) || ch >= 0x80) ? (char)ch : ' ';
	}
	while (k > 0 && msg[k - 1] == ' ')
		k--;
	msg[k] = '\0';
	if (k == 0)
		snprintf(msg, size, "HTTP %d", status);
}

int
cl_oai_parse_models(const char *json, size_t len, char ***ids, size_t *n_ids)
{
	cJSON *root;
	const cJSON *data, *m;
	char **v = NULL;
	size_t n = 0;
	int rc = EPMOE_EPROTO;

	if ((root = cJSON_ParseWithLength(json, len)) == NULL)
		return EPMOE_EPROTO;
	data = cJSON_GetObjectItemCaseSensitive(root, "data");
	if (!cJSON_IsArray(data))
		goto out;
	if ((v = calloc((size_t)cJSON_GetArraySize(data) + 1, sizeof(*v))) == NULL) {
		rc = EPMOE_ENOMEM;
		goto out;
	}
	cJSON_ArrayForEach(m, data) {
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
		if (!cJSON_IsString(id))
			goto out;
		if ((v[n] = strdup(id->valuestring)) == NULL) {
			rc = EPMOE_ENOMEM;
			goto out;
		}
		n++;
	}
	*ids = v;
	*n_ids = n;
	v = NULL;
	rc = 0;
out:
	if (v != NULL)
		epmoe_strv_free(v, n);
	cJSON_Delete(root);
	return rc;
}
