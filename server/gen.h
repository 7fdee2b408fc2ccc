/* Generation requests: what both front ends (HTTP in api.c, NNG in
 * nngapi.c) hand the server, and the one definition of the request rules:
 * the default, limit and range of every field, the seed of a request
 * without one, stop strings, the routing spec (parsed once, checked
 * against the model and canonicalised), the model name and the prompt
 * (text, token ids or chat messages).  The front ends only translate
 * their wire format into a struct gen_req and the scheduler's events
 * back; an error names the field (enum gen_field) so each front end can
 * word it its own way.
 *
 * gen_check is a pure function of the request and the limits; gen_submit
 * also tokenizes and hands the request to the scheduler.  Loop thread.
 */
#ifndef EPMOE_GEN_H
#define EPMOE_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "route.h"
#include "sample.h"
#include "scheduler.h"

struct router;

#define GEN_MAX_STOP 4            /* stop strings per request (OpenAI's) */
#define GEN_MAX_LOGPROBS 5        /* completions: alternatives per token */
#define GEN_MAX_TOP_LOGPROBS 20   /* chat: top_logprobs */
#define GEN_MAX_ROUTING 256       /* bytes of a routing spec */
#define GEN_COMPLETION_MAX_TOKENS 16 /* completions' default (OpenAI's) */

enum gen_kind { GEN_COMPLETION, GEN_CHAT };

/* The fields an error can name. */
enum gen_field {
	GEN_F_NONE, GEN_F_MODEL, GEN_F_PROMPT, GEN_F_MESSAGES, GEN_F_MAX_TOKENS,
	GEN_F_TEMPERATURE, GEN_F_TOP_P, GEN_F_TOP_K, GEN_F_MIN_P, GEN_F_STOP,
	GEN_F_ROUTING, GEN_F_LOGPROBS
};

/* The field's name as the OpenAI API spells it ("max_tokens", ...);
 * NULL for GEN_F_NONE. */
const char *gen_field_name(enum gen_field f);

struct gen_msg {
	const char *role;     /* "system", "user" or "assistant" */
	const char *content;
};

/* A request as the front end read it off its wire: values as sent, in
 * types wide enough to hold the bad ones, and whether each optional field
 * was given.  Everything is borrowed.  Exactly one prompt form: text (a
 * completion), token ids (a completion) or messages (a chat). */
struct gen_req {
	enum gen_kind kind;
	const char *model;              /* NULL or "": the served model */
	const char *text;               /* text[0..text_len) */
	size_t text_len;
	const uint32_t *ids;            /* [n_ids] */
	size_t n_ids;
	const struct gen_msg *msgs;     /* [n_msgs] */
	size_t n_msgs;
	bool has_max_tokens;
	int64_t max_tokens;             /* completion [0, limit], chat [1, limit] */
	bool has_temperature;
	double temperature;             /* [0, 2] */
	bool has_top_p;
	double top_p;                   /* (0, 1] */
	bool has_top_k;
	int64_t top_k;                  /* [-1, 2^31): 0 and -1 are off */
	bool has_min_p;
	double min_p;                   /* [0, 1] */
	bool has_seed;
	uint64_t seed;                  /* any; absent: the server picks one */
	const char *const *stop;        /* [n_stop], non-empty, n_stop <= 4 */
	size_t n_stop;
	const char *routing;            /* NULL or "": the server's default */
	bool echo;                      /* completions: prompt first */
	bool has_logprobs;
	int64_t logprobs;               /* alternatives per token: completion
	                                 * [0, 5], chat [0, 20] */
	bool ignore_eos;
};

/* An empty request of kind (no field given). */
void gen_req_init(struct gen_req *q, enum gen_kind kind);

/* What requests are checked against; from the router's configuration. */
struct gen_limits {
	const char *model;              /* the served model id */
	uint32_t n_vocab;
	uint32_t max_tokens_limit;      /* largest max_tokens accepted */
	struct route_model gate;        /* the model's router gate */
	const char *default_routing;    /* the server's canonical spec, or NULL
	                                 * ("native") */
};

/* A checked request with its defaults applied. */
struct gen_plan {
	int64_t max_tokens;             /* -1: chat without one (the server's
	                                 * default within the context, chosen
	                                 * once the prompt is tokenized) */
	struct sample_params sample;    /* the seed chosen when absent */
	char routing[GEN_MAX_ROUTING + 1]; /* canonical; "" = server default */
	bool logprobs;                  /* report logprobs */
	uint32_t top_logprobs;          /* alternatives per token */
};

struct gen_err {
	int code;                       /* EPMOE_E* */
	enum gen_field field;
	char message[320];
};

/* Checks every field of q against lim and applies the defaults.  Returns
 * 0 (*out filled) or a code with *err filled: EPMOE_EINVAL (a field out
 * of its range or a bad routing spec), EPMOE_ENOENT (another model). */
int gen_check(const struct gen_limits *lim, const struct gen_req *q,
        struct gen_plan *out, struct gen_err *err);

/* Checks a routing spec for requests that generate (decode: routes
 * decode steps too) or only score a prompt; on success writes its
 * canonical form into canon[GEN_MAX_ROUTING + 1].  0 or EPMOE_EINVAL. */
int gen_check_routing(const struct route_model *gate, const char *spec,
        bool decode, char *canon, struct gen_err *err);

/* Checks q, builds its prompt (tokenizing text, applying the chat
 * template to messages) and submits it to r's scheduler with callback
 * cb(ud).  On success *out is the scheduler's request (see
 * scheduler.h).  Errors:
 * those of gen_check, EPMOE_EUNAVAIL (the experts are not all served),
 * and sched_submit's (EPMOE_ERANGE, EPMOE_EBUSY, EPMOE_ECLOSED,
 * EPMOE_ENOMEM).  Every refusal is counted by reason in /metrics. */
int gen_submit(struct router *r, const struct gen_req *q, sched_event_fn cb,
        void *ud, struct sched_req **out, struct gen_err *err);

/* Where each of the n prompt tokens' text starts in text[0..len) (the
 * prompt as returned to the client, decoded), in bytes, into off[n].
 * Pieces are matched in order; a piece whose leading space the decoder
 * dropped (SentencePiece's space prefix at the start of a text) matches
 * without it, so offsets index into the returned text.  A piece that
 * does not match at all (a special token) starts where the last ended. */
void gen_token_offsets(const char *text, size_t len, const struct sched_tok *toks,
        size_t n, size_t *off);

/* A seed for a request that named none: distinct for every call. */
uint64_t gen_seed(void);

#endif
