/* The co-batching planner of the engine's two micro-batches (engine.c),
 * exposed for tests: which half each item of a step would go to. */
#ifndef EPMOE_ENGINE_PLAN_H
#define EPMOE_ENGINE_PLAN_H

#include <stdint.h>

#include "engine.h"

/* side[i] = 0 or 1 for each of the n_items items, by their predicted
 * workers (the engine's affinity model and worker map) under the balance
 * bound of engine_set_microbatch.  EPMOE_EINVAL without an affinity model
 * or worker map, EPMOE_ENOMEM. */
int engine_cobatch_plan(struct engine *e, const struct eng_item *items,
        uint32_t n_items, uint8_t *side);

#endif
