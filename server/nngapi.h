/* The NNG client API: a REP socket speaking the ClientMsg / ClientReply
 * messages of proto/epmoe.proto, translated into generation requests
 * (gen.c) and scheduler events back into replies.  Loop thread only. */
#ifndef EPMOE_NNGAPI_H
#define EPMOE_NNGAPI_H

#include "epmoe.pb-c.h"
#include "gen.h"

struct nngapi;
struct router;

/* Listens on r->cfg.nng_url.  On failure after the loop handles were made
 * *out is still set: stop and free it as usual. */
int nngapi_start(struct router *r, struct nngapi **out);
/* Stops serving (closes the socket and the loop handles).  Idempotent;
 * NULL is fine. */
void nngapi_stop(struct nngapi *n);
/* After the scheduler delivered its last events and the loop closed the
 * handles.  NULL is fine. */
void nngapi_free(struct nngapi *n);

/* The gen request of a CompletionRequest (msgs: room for its n_messages
 * messages; everything borrowed from cr).  proto3 scalars have no
 * presence: 0 and "" read as "not given", except in a oneof. */
void nngapi_gen_req(const Epmoe__CompletionRequest *cr, struct gen_msg *msgs,
        struct gen_req *q);

#endif
