/* The OpenAI-compatible HTTP API as JSON: request parsing into plain C
 * structs (types and the OpenAI-specific rules; the ranges of generation
 * fields are gen.c's, shared with the NNG API), and builders for
 * responses, streaming chunks, the error envelope and Server-Sent Events
 * framing.
 *
 * Pure functions over cJSON: no I/O, no engine, no HTTP (the router glues
 * server/http and the engine to these).  Field names and shapes follow the
 * OpenAI API so the official clients parse them: /v1/completions,
 * /v1/chat/completions, /v1/models, plus /tokenize and /detokenize.
 *
 * A parse function fills *out only on success and then the caller owns it
 * (release with the matching _fini).  On failure it fills *err with the
 * HTTP status, the OpenAI error type, the offending parameter and a
 * message, ready for oai_error_body().  null for an optional field means
 * "not given"; unknown fields are ignored; of duplicate keys the last wins.
 */
#ifndef EPMOE_OAI_H
#define EPMOE_OAI_H

#include <stddef.h>
#include <stdint.h>

struct cJSON;

#define OAI_MAX_ROUTING 256     /* bytes of a routing object rendered */

/* Server-Sent Events end-of-stream marker, already framed. */
#define OAI_SSE_DONE "data: [DONE]\n\n"
#define OAI_SSE_CONTENT_TYPE "text/event-stream"
#define OAI_JSON_CONTENT_TYPE "application/json"

/* What the parsers check against; all borrowed. */
struct oai_config {
	const char *const *models; /* served model ids; none: any name passes */
	size_t n_models;
	int32_t n_vocab;           /* token ids must be < n_vocab; 0 = unchecked
	                            * (below 2^31) */
	int model_optional;        /* "model" may be absent (then NULL) */
};

/* An API error: what the HTTP response carries. */
struct oai_error {
	int status;        /* 400, 404, 413, 429, 500, 503 */
	const char *type;  /* static: "invalid_request_error", "server_error", ... */
	const char *code;  /* static or NULL (JSON null): e.g. "model_not_found" */
	char param[64];    /* offending parameter, "" for null */
	char message[320];
};

/* Fields shared by completions and chat completions, as sent (has_*: the
 * field was given and not null). */
struct oai_gen {
	int has_max_tokens;
	int64_t max_tokens;
	const char *max_tokens_key;  /* static: "max_tokens", or for chat
	                              * "max_completion_tokens" when given */
	int has_temperature;
	double temperature;
	int has_top_p;
	double top_p;
	int has_top_k;
	int64_t top_k;
	int has_min_p;
	double min_p;
	int has_seed;
	uint64_t seed;               /* int64 values as their two's complement */
	char **stop;                 /* [n_stop] strings, owned */
	size_t n_stop;
	int stream;
	int include_usage;           /* stream_options.include_usage */
	int ignore_eos;              /* extension: generate past EOS */
	char *routing;               /* "policy[:key=value,...]" as given, or
	                              * rendered from the object form; NULL:
	                              * absent; owned */
};

/* POST /v1/completions.  The prompt is either text (prompt != NULL) or
 * token ids (prompt_tokens != NULL); a batch of prompts is refused. */
struct oai_completion_req {
	char *model;             /* NULL when absent; owned */
	char *prompt;            /* NUL-terminated, prompt_len bytes, owned */
	size_t prompt_len;
	int32_t *prompt_tokens;  /* [n_prompt_tokens], owned */
	size_t n_prompt_tokens;
	int echo;                /* prepend the prompt to the output */
	int has_logprobs;
	int64_t logprobs;        /* top alternatives per token */
	struct oai_gen gen;
};

enum oai_role { OAI_ROLE_SYSTEM, OAI_ROLE_USER, OAI_ROLE_ASSISTANT };

struct oai_message {
	enum oai_role role;  /* "developer" is read as system */
	char *content;       /* text parts concatenated, owned */
	size_t content_len;
};

/* POST /v1/chat/completions.  The engine applies the chat template. */
struct oai_chat_req {
	char *model;
	struct oai_message *messages; /* [n_messages] >= 1, owned */
	size_t n_messages;
	int logprobs;                 /* bool */
	int64_t top_logprobs;         /* only with logprobs (0 otherwise) */
	struct oai_gen gen;
};

/* POST /tokenize: {"prompt" | "text" | "content": string, "add_special"}. */
struct oai_tokenize_req {
	char *text;       /* owned */
	size_t text_len;
	int add_special;  /* add BOS etc.; default 1 */
};

/* POST /detokenize: {"tokens": [ids]}. */
struct oai_detokenize_req {
	int32_t *tokens;  /* [n_tokens], owned (NULL when empty) */
	size_t n_tokens;
};

/* Each returns 0, EPMOE_EINVAL (a bad request: *err says why, status 400,
 * or 404 for an unknown model) or EPMOE_ENOMEM (*err: 500).  body is
 * len bytes of JSON (borrowed, need not be NUL-terminated). */
int oai_parse_completion(const char *body, size_t len,
        const struct oai_config *cfg, struct oai_completion_req *out,
        struct oai_error *err);
int oai_parse_chat(const char *body, size_t len, const struct oai_config *cfg,
        struct oai_chat_req *out, struct oai_error *err);
int oai_parse_tokenize(const char *body, size_t len,
        const struct oai_config *cfg, struct oai_tokenize_req *out,
        struct oai_error *err);
int oai_parse_detokenize(const char *body, size_t len,
        const struct oai_config *cfg, struct oai_detokenize_req *out,
        struct oai_error *err);

/* Free what a successful parse allocated and zero the struct (NULL fine). */
void oai_completion_req_fini(struct oai_completion_req *r);
void oai_chat_req_fini(struct oai_chat_req *r);
void oai_tokenize_req_fini(struct oai_tokenize_req *r);
void oai_detokenize_req_fini(struct oai_detokenize_req *r);

/* Renders a routing request: a string "policy[:k=v,...]" is copied as it
 * is (route_parse reads it); an object {"policy": "ssr", "k": v, ...}
 * becomes "ssr:k=v,...", where policy names must be [a-z0-9_]+, keys
 * [A-Za-z0-9_.]+, values (string, number or bool -> "true"/"false")
 * [A-Za-z0-9_.+-]+ so nothing else can be rendered in.  On success *out is the
 * caller's (free()).  Returns 0, EPMOE_EINVAL (*err, param "routing") or
 * EPMOE_ENOMEM. */
int oai_routing_render(const struct cJSON *routing, char **out,
        struct oai_error *err);

/* Fills *err: status picks the type ("invalid_request_error" for 4xx but
 * 429 "rate_limit_error", "server_error" for 5xx); param may be NULL. */
void oai_error_set(struct oai_error *err, int status, const char *param,
        const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* {"error": {"message", "type", "param", "code"}}.  The caller owns the
 * result (cJSON_Delete); NULL when out of memory.  Retry-After for 429 and
 * 503 is an HTTP header: the caller adds it. */
struct cJSON *oai_error_body(const struct oai_error *err);

/* ---- responses ---- */

/* One alternative of a token position. */
struct oai_top_logprob {
	const char *text;  /* token bytes (any; not NUL-terminated) */
	size_t text_len;
	float logprob;
};

/* One token of the output with its log-probability.  For an echoed prompt
 * the first token has no logprob (has_logprob 0 -> null). */
struct oai_token_logprob {
	const char *text;
	size_t text_len;
	float logprob;
	int has_logprob;
	const struct oai_top_logprob *top; /* [n_top], borrowed */
	size_t n_top;
	size_t text_offset; /* completions: where its text starts in the
	                     * returned text (prompt + output), in characters
	                     * (code points), as OpenAI's text_offset */
};

/* One choice of a response or a chunk (index 0: n is always 1).  Text may
 * hold any bytes; invalid UTF-8 is replaced by U+FFFD in the JSON. */
struct oai_choice {
	const char *text;            /* NULL: no text (chat delta without
	                              * content) */
	size_t text_len;
	const char *finish_reason;   /* "stop", "length", ... or NULL (null) */
	const struct oai_token_logprob *lps; /* [n_lps]; NULL: "logprobs": null */
	size_t n_lps;
};

struct oai_usage {
	int32_t prompt_tokens;
	int32_t completion_tokens;
	int32_t cached_tokens;   /* of the prompt, reused from the prefix
	                            cache: usage.prompt_tokens_details */
};

/* Writes "<prefix><24 hex digits>" (e.g. "cmpl-...", "chatcmpl-...") into
 * buf, unique within the process and unlikely to repeat across processes. */
void oai_make_id(char *buf, size_t size, const char *prefix);

/* All builders return a new tree the caller owns (cJSON_Delete), or NULL
 * when out of memory.  Strings are borrowed and copied. */

/* {"id","object":"text_completion","created","model","choices":[{"text",
 * "index","logprobs":{tokens,token_logprobs,top_logprobs,text_offset}|null,
 * "finish_reason"}],"usage":{prompt_tokens,completion_tokens,total_tokens}} */
struct cJSON *oai_completion_response(const char *id, const char *model,
        int64_t created, const struct oai_choice *choice,
        const struct oai_usage *usage);

/* Streaming chunk of /v1/completions: the same object without usage, or
 * with "usage": null when usage_null (stream_options.include_usage). */
struct cJSON *oai_completion_chunk(const char *id, const char *model,
        int64_t created, const struct oai_choice *choice, int usage_null);

/* {"id","object":"chat.completion","created","model","choices":[{"index",
 * "message":{"role":"assistant","content"},"logprobs":{"content":[{token,
 * logprob,bytes,top_logprobs}]}|null,"finish_reason"}],"usage"} */
struct cJSON *oai_chat_response(const char *id, const char *model,
        int64_t created, const struct oai_choice *choice,
        const struct oai_usage *usage);

/* "chat.completion.chunk": choices[0].delta holds "role" when role is not
 * NULL (the first chunk) and "content" when choice->text is not NULL. */
struct cJSON *oai_chat_chunk(const char *id, const char *model,
        int64_t created, const char *role, const struct oai_choice *choice,
        int usage_null);

/* The final chunk of a stream with include_usage: "choices": [] and usage.
 * chat selects "chat.completion.chunk" over "text_completion". */
struct cJSON *oai_usage_chunk(const char *id, const char *model,
        int64_t created, int chat, const struct oai_usage *usage);

/* {"object":"list","data":[{"id","object":"model","created","owned_by"}]} */
struct cJSON *oai_models_response(const char *const *models, size_t n_models,
        int64_t created, const char *owned_by);

/* {"tokens": [...], "count": n} and, when max_model_len > 0, "max_model_len". */
struct cJSON *oai_tokenize_response(const int32_t *tokens, size_t n_tokens,
        int32_t max_model_len);
/* {"prompt": text} */
struct cJSON *oai_detokenize_response(const char *text, size_t text_len);

/* Frames json as one SSE event "data: <compact json>\n\n".  On success *out
 * (NUL-terminated, *out_len bytes) is the caller's (free()).  Returns 0,
 * EPMOE_EINVAL (json NULL) or EPMOE_ENOMEM. */
int oai_sse_frame(const struct cJSON *json, char **out, size_t *out_len);

#endif
