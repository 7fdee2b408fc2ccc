/* The epmoe client library: one API over the router's two client
 * transports, chosen by the URL scheme.
 *
 *   http://, https://                      the OpenAI-compatible HTTP API
 *                                          (libcurl; streaming is SSE)
 *   tcp://, tcp4://, tcp6://, ipc://,      the NNG API: REQ/REP, one
 *   inproc://, tls+tcp://                  wire-framed ClientMsg per request,
 *                                          one ClientReply back; streaming
 *                                          by polling with offsets
 *
 * Threads: a client is used by one thread at a time (make one per thread
 * for concurrent requests).  Nothing here keeps global state except
 * libcurl's, initialised once by the first epmoe_client_new.
 *
 * Errors: functions return 0 or a negative EPMOE_E* code.  When the
 * server answered with an error the code follows its status (400
 * EPMOE_EINVAL, 404 EPMOE_ENOENT, 413 EPMOE_ERANGE, 429 EPMOE_EBUSY, 503
 * EPMOE_EUNAVAIL, 504 EPMOE_ETIMEDOUT, other 5xx EPMOE_EINTERNAL);
 * transport failures are EPMOE_EIO (cannot connect, connection lost),
 * EPMOE_ETIMEDOUT, and a reply that makes no sense is EPMOE_EPROTO.
 * epmoe_client_error() then tells the details (the server's message).
 */
#ifndef EPMOE_CLIENT_H
#define EPMOE_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#define EPMOE_DEFAULT_SERVER "http://127.0.0.1:8080"
#define EPMOE_MAX_STOP 4 /* stop strings per request (OpenAI's limit) */

struct epmoe_client;

enum epmoe_transport {
	EPMOE_TRANSPORT_HTTP = 1,
	EPMOE_TRANSPORT_NNG = 2
};

/* The transport of url, from its scheme (case-insensitive).  Returns 0 or
 * EPMOE_EINVAL (no scheme, an unknown one, or nothing after "//"). */
int epmoe_url_transport(const char *url, enum epmoe_transport *out);

struct epmoe_client_opts {
	uint32_t connect_timeout_ms; /* 0: 5000 */
	uint32_t timeout_ms;         /* whole request, streaming included;
	                              * 0: 600000 */
	uint32_t poll_wait_ms;       /* NNG streaming: how long the server may
	                              * hold each poll; 0: 1000 */
	const char *api_key;         /* the router's API key, or NULL: sent as
	                              * "Authorization: Bearer KEY" over HTTP
	                              * and in ClientMsg.api_key over NNG
	                              * (copied by epmoe_client_new) */
};

/* Connects to url (NNG: dials now; HTTP: checks the URL, connects on the
 * first request).  A trailing "/" or "/v1" of an HTTP URL is dropped.
 * opts may be NULL (defaults).  On success *out is the caller's: release
 * with epmoe_client_free.  Returns 0, EPMOE_EINVAL (bad URL), EPMOE_EIO
 * (NNG dial failed; the message is in *errmsg when errmsg is not NULL:
 * errmsg_size bytes), EPMOE_ENOMEM. */
int epmoe_client_new(struct epmoe_client **out, const char *url,
        const struct epmoe_client_opts *opts, char *errmsg,
        size_t errmsg_size);
void epmoe_client_free(struct epmoe_client *c);

enum epmoe_transport epmoe_client_transport(const struct epmoe_client *c);

/* What went wrong in the last failed call on c. */
struct epmoe_error {
	int code;                /* the EPMOE_E* code returned */
	int status;              /* HTTP status of the server's answer (NNG
	                          * statuses mapped to their HTTP equivalents);
	                          * 0 when the server did not answer */
	uint32_t retry_after_ms; /* 429/503: when to retry (0: not said) */
	char message[512];       /* the server's message, or what failed */
};

/* Borrowed from c; valid until the next call on c. */
const struct epmoe_error *epmoe_client_error(const struct epmoe_client *c);

/* Generation parameters.  Fields left at their epmoe_gen_params_init
 * values are not sent (the server's defaults apply).  Strings and the
 * stop array are borrowed for the call. */
struct epmoe_gen_params {
	const char *model;       /* NULL: the server's first model */
	int32_t max_tokens;      /* -1: the server's default */
	float temperature;       /* NAN: default (1); [0, 2]; 0 = greedy */
	float top_p;             /* NAN: default (1); (0, 1] */
	int32_t top_k;           /* -1: default (off); 0 = off */
	float min_p;             /* NAN: default (off); [0, 1] */
	int has_seed;
	uint64_t seed;           /* when has_seed; <= 2^53 over HTTP (JSON) */
	const char *const *stop; /* [n_stop] non-empty strings */
	size_t n_stop;           /* <= EPMOE_MAX_STOP */
	const char *routing;     /* routing policy spec, NULL: the server's */
	int ignore_eos;          /* keep going past EOS (load tests) */
	int stream;              /* produce the text as it is generated */
};

void epmoe_gen_params_init(struct epmoe_gen_params *p);

/* Checks p's ranges; returns 0 or EPMOE_EINVAL with a reason in
 * why[0..why_size) (why may be NULL). */
int epmoe_gen_params_check(const struct epmoe_gen_params *p, char *why,
        size_t why_size);

/* A piece of a completion as it arrives.  Everything is borrowed for the
 * duration of the callback. */
struct epmoe_chunk {
	const char *text;          /* new text (complete UTF-8), may be empty */
	size_t text_len;
	const uint32_t *tokens;    /* new token ids (NNG only; HTTP: none) */
	size_t n_tokens;
	const char *finish_reason; /* NULL until the last chunk */
};

/* Called for each piece with new text and once more (or on the same call)
 * with finish_reason set.  A non-zero return cancels the request (the
 * call then returns EPMOE_ECANCELED). */
typedef int (*epmoe_chunk_fn)(void *ud, const struct epmoe_chunk *ch);

/* A finished completion.  Owned by the caller: epmoe_completion_fini. */
struct epmoe_completion {
	char *id;                   /* the server's request id */
	char *model;
	char *text;                 /* the whole output, NUL-terminated */
	size_t text_len;
	uint32_t *tokens;           /* output token ids (NNG only) */
	size_t n_tokens;
	char finish_reason[16];     /* "stop", "length", ... */
	int has_usage;              /* the server reported usage */
	uint32_t prompt_tokens;
	uint32_t completion_tokens;
	int has_cached;             /* the server said how many prompt tokens */
	uint32_t cached_tokens;     /* it took from its prefix cache */
	uint32_t n_chunks;          /* pieces with text received */
	double ttft_s;              /* seconds from the call to the first text
	                             * (to the reply when not streaming) */
	double total_s;             /* seconds from the call to the end */
};

void epmoe_completion_fini(struct epmoe_completion *r);

/* Completes prompt (borrowed, NUL-terminated) with p (NULL: defaults).
 * cb (may be NULL) sees the pieces as they come when p->stream, else one
 * piece with the whole text.  On success *out (may be NULL) is filled
 * and the caller's.  Returns 0, EPMOE_EINVAL (bad parameters or a 400
 * from the server), EPMOE_ECANCELED (cb asked), or the errors above. */
int epmoe_complete(struct epmoe_client *c, const char *prompt,
        const struct epmoe_gen_params *p, epmoe_chunk_fn cb, void *ud,
        struct epmoe_completion *out);

struct epmoe_chat_msg {
	const char *role;    /* "system", "user", "assistant" */
	const char *content;
};

/* A chat completion of msgs[0..n_msgs) (the server applies the model's
 * template); otherwise as epmoe_complete. */
int epmoe_chat(struct epmoe_client *c, const struct epmoe_chat_msg *msgs,
        size_t n_msgs, const struct epmoe_gen_params *p, epmoe_chunk_fn cb,
        void *ud, struct epmoe_completion *out);

/* The ids of the served models.  On success *ids (an array of *n_ids
 * strings) is the caller's: epmoe_strv_free(*ids, *n_ids). */
int epmoe_models(struct epmoe_client *c, char ***ids, size_t *n_ids);
void epmoe_strv_free(char **v, size_t n);

struct epmoe_health {
	int ok;           /* serving (HTTP 200 / HealthReply.ok) */
	char status[32];  /* "ok", "loading", "degraded", ... */
};

/* Asks whether the server serves.  A server that answers "not ready"
 * (503) is a success with ok = 0; only a failure to get an answer is an
 * error. */
int epmoe_health(struct epmoe_client *c, struct epmoe_health *out);

/* Token ids of text (add_special: BOS etc.).  On success *tokens
 * (*n_tokens ids; NULL when 0) is the caller's: free(). */
int epmoe_tokenize(struct epmoe_client *c, const char *text, int add_special,
        uint32_t **tokens, size_t *n_tokens);

/* Text of tokens[0..n_tokens).  On success *text (NUL-terminated) is the
 * caller's: free(). */
int epmoe_detokenize(struct epmoe_client *c, const uint32_t *tokens,
        size_t n_tokens, char **text);

/* The EPMOE_E* code that an HTTP error status stands for (0 for 2xx). */
int epmoe_status_to_err(int http_status);

#endif
