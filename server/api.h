/* The OpenAI-compatible HTTP front end: routes HTTP requests, translates
 * OpenAI JSON (oai.c) into generation requests (gen.c) and scheduler
 * events back into JSON responses or Server-Sent Events, maps EPMOE_E*
 * codes to HTTP statuses, and serves the observability routes from
 * stats.c.  Loop thread only. */
#ifndef EPMOE_API_H
#define EPMOE_API_H

struct gen_msg;
struct gen_req;
struct oai_chat_req;
struct oai_completion_req;
struct router;

/* Listens on r->cfg.http_addr (r->http).  0 or an EPMOE_E* code (logged). */
int api_start(struct router *r);
/* Stops listening and closes the connections (the loop finishes the
 * closes).  Idempotent. */
void api_stop(struct router *r);

/* The gen request of a parsed completion / chat request (everything
 * borrowed from c; msgs: room for c's n_messages). */
void api_gen_completion(const struct oai_completion_req *c, struct gen_req *q);
void api_gen_chat(const struct oai_chat_req *c, struct gen_msg *msgs,
        struct gen_req *q);

#endif
