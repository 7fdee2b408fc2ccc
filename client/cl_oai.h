/* The client's side of the OpenAI-compatible JSON: request bodies built
 * from epmoe_gen_params, and decoding of responses, stream chunks and the
 * error envelope.  The mirror of server/oai.h; shared by the client
 * library and the load generator (which drives libcurl itself).
 *
 * Pure functions over cJSON: no I/O.
 */
#ifndef EPMOE_CL_OAI_H
#define EPMOE_CL_OAI_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe_client.h"

/* JSON body of a /v1/completions request (msgs NULL: prompt) or of a
 * /v1/chat/completions request (msgs[0..n_msgs)).  model NULL: not sent.
 * Streaming requests ask for a final usage chunk.  p must have passed
 * epmoe_gen_params_check.  On success *out (NUL-terminated) is the
 * caller's: free().  Returns 0, EPMOE_EINVAL or EPMOE_ENOMEM. */
int cl_oai_request(const char *model, const char *prompt,
        const struct epmoe_chat_msg *msgs, size_t n_msgs,
        const struct epmoe_gen_params *p, char **out);

/* What one response or stream chunk says.  Text comes from
 * choices[0].text (completions), choices[0].message.content (chat) or
 * choices[0].delta.content (chat chunk). */
struct cl_oai_delta {
	char *text;              /* owned; NULL when the object has none */
	size_t text_len;
	char finish_reason[16];  /* "" when null or absent */
	int has_usage;
	uint32_t prompt_tokens, completion_tokens;
	/* prompt tokens the server took from its cache rather than prefilled:
	 * usage.prompt_tokens_details.cached_tokens (OpenAI, epmoe), else
	 * usage.prompt_tokens - timings.prompt_n (llama-server, whose timings
	 * count the tokens it evaluated) */
	int has_cached;
	uint32_t cached_tokens;
	char *id;                /* owned, NULL when absent */
	char *model;             /* owned, NULL when absent */
	int is_error;            /* an {"error": {...}} object */
	char error[512];         /* its message */
};

/* Parses json[0..len).  On success *out is the caller's:
 * cl_oai_delta_fini.  Returns 0, EPMOE_EPROTO (not a JSON object, or
 * fields of the wrong type) or EPMOE_ENOMEM. */
int cl_oai_parse(const char *json, size_t len, struct cl_oai_delta *out);
void cl_oai_delta_fini(struct cl_oai_delta *d);

/* The message of an error body: error.message of the OpenAI envelope,
 * else the body itself (printable bytes, truncated), else "HTTP <status>". */
void cl_oai_error_message(const char *body, size_t len, int status,
        char *msg, size_t size);

/* Model ids of a /v1/models body.  On success *ids is the caller's
 * (epmoe_strv_free).  Returns 0, EPMOE_EPROTO, EPMOE_ENOMEM. */
int cl_oai_parse_models(const char *json, size_t len, char ***ids,
        size_t *n_ids);

#endif
