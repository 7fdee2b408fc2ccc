/* TEMPORARY: local mode only, until the cluster module lands. */
#include <cJSON.h>
#include <stdio.h>

#include "err.h"
#include "log.h"
#include "router.h"

int
glue_start(struct router *r)
{
	if (!r->cfg.local) {
		log_error("distributed mode is not available yet; use --local");
		return EPMOE_ENOTSUP;
	}
	return 0;
}

void
glue_stop(struct router *r)
{
}

struct cJSON *
glue_workers_json(struct router *r)
{
	return NULL;
}

struct cJSON *
glue_placement_json(struct router *r)
{
	return NULL;
}

void
glue_export_metrics(struct router *r)
{
}

bool
router_ready(struct router *r)
{
	return true;
}
