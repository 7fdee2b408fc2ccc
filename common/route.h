/* TEMPORARY native-only routing until the routing module lands. */
#ifndef EPMOE_ROUTE_H
#define EPMOE_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum route_group_kind { ROUTE_GROUP_PREFILL, ROUTE_GROUP_DECODE };
struct route_group {
	uint32_t start, n;
	enum route_group_kind kind;
};
struct route_out {
	uint32_t *off;
	int32_t *expert;
	float *weight;
	size_t cap_tok, cap_pairs;
};
struct route_policy;

int route_policy_new(struct route_policy **out, const char *spec,
        uint32_t n_expert, uint32_t k, bool renorm, uint32_t n_layer,
        char *err, size_t err_len);
void route_policy_free(struct route_policy *p);
void route_out_fini(struct route_out *o);
int route_run(struct route_policy *p, uint32_t layer, uint64_t step,
        const float *S, uint32_t T, const struct route_group *g,
        uint32_t n_groups, struct route_out *out);
#endif
