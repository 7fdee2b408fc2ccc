/* Internals of the client library shared by its core (epmoe_client.c) and
 * its two transports (client_http.c, client_nng.c).  Not public: the
 * public API is epmoe_client.h. */
#ifndef EPMOE_CLIENT_INT_H
#define EPMOE_CLIENT_INT_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <nng/nng.h>

#include "epmoe_client.h"

struct epmoe_client {
	enum epmoe_transport tr;
	struct epmoe_client_opts o;
	struct epmoe_error err;
	/* HTTP */
	char *base;        /* scheme://host:port[/prefix], no trailing "/" */
	CURL *curl;
	char *model;       /* the server's first model, once asked */
	int model_asked;
	/* NNG */
	nng_socket sock;
	int sock_open;
	char *url;
};

/* Records the failure in c->err and returns code. */
int cl_set_err(struct epmoe_client *c, int code, int status,
        const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* The accumulator both transports feed: a completion as it arrives. */
struct cl_acc {
	struct epmoe_client *c;
	epmoe_chunk_fn cb;
	void *ud;
	double t0;
	struct epmoe_completion r;
	size_t text_cap, tok_cap;
	int finished;   /* the finish reason was delivered */
	int done;       /* the stream said it is over */
};

void cl_acc_init(struct cl_acc *a, struct epmoe_client *c, epmoe_chunk_fn cb,
        void *ud);
/* New output: appends it, times it and hands it to the callback.  finish
 * is NULL or "" while the completion goes on.  0 or the error recorded. */
int cl_acc_add(struct cl_acc *a, const char *text, size_t len,
        const uint32_t *toks, size_t n, const char *finish);
/* Copies s into *dst unless *dst is set or s is empty. */
int cl_acc_set_str(struct cl_acc *a, char **dst, const char *s);
/* Hands the finished result to out (or drops it when out is NULL). */
int cl_acc_finish(struct cl_acc *a, struct epmoe_completion *out);

/* The transports: open/close (close is safe on a client the transport
 * never opened), and one function per API call, each 0 or the error
 * recorded with cl_set_err. */
int cl_http_open(struct epmoe_client *c, const char *url, char *errmsg,
        size_t errmsg_size);
void cl_http_close(struct epmoe_client *c);
int cl_http_completion(struct epmoe_client *c, const char *prompt,
        const struct epmoe_chat_msg *msgs, size_t n_msgs,
        const struct epmoe_gen_params *p, struct cl_acc *a);
int cl_http_models(struct epmoe_client *c, char ***ids, size_t *n_ids);
int cl_http_health(struct epmoe_client *c, struct epmoe_health *h);
int cl_http_tokenize(struct epmoe_client *c, const char *text,
        int add_special, uint32_t **tokens, size_t *n_tokens);
int cl_http_detokenize(struct epmoe_client *c, const uint32_t *tokens,
        size_t n_tokens, char **text);

int cl_nng_open(struct epmoe_client *c, const char *url, char *errmsg,
        size_t errmsg_size);
void cl_nng_close(struct epmoe_client *c);
int cl_nng_completion(struct epmoe_client *c, const char *prompt,
        const struct epmoe_chat_msg *msgs, size_t n_msgs,
        const struct epmoe_gen_params *p, struct cl_acc *a);
int cl_nng_models(struct epmoe_client *c, char ***ids, size_t *n_ids);
int cl_nng_health(struct epmoe_client *c, struct epmoe_health *h);
int cl_nng_tokenize(struct epmoe_client *c, const char *text,
        int add_special, uint32_t **tokens, size_t *n_tokens);
int cl_nng_detokenize(struct epmoe_client *c, const uint32_t *tokens,
        size_t n_tokens, char **text);

#endif
