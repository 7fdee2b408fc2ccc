/* TEMPORARY: the NNG client API lands next. */
#include "err.h"
#include "log.h"
#include "router.h"

int
nngapi_start(struct router *r, struct nngapi **out)
{
	log_warn("the NNG client API is not available yet (%s ignored)", r->cfg.nng_url);
	*out = NULL;
	return 0;
}

void
nngapi_stop(struct nngapi *n)
{
}
