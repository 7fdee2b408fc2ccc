/* libFuzzer target: the routing spec language (common/route_spec.c) as a
 * request's "routing" field reaches it.  Properties: route_parse never
 * crashes and either fails with a message or yields a configuration whose
 * canonical form (route_format) parses back to the same canonical form;
 * the server's check of a request spec (gen_check_routing) agrees. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "err.h"
#include "fuzz_util.h"
#include "gen.h"
#include "route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct route_model gate = { .n_experts = 8, .k = 2,
		.renorm = 0, .n_layers = 4 };
	struct route_cfg cfg, again, resolved;
	char err[256], f1[512], f2[512], canon[GEN_MAX_ROUTING + 1];
	struct gen_err ge;
	char *spec;

	if (size > 4096 || (spec = fz_strndup(data, size)) == NULL)
		return 0;
	err[0] = '\0';
	if (route_parse(spec, &cfg, err, sizeof(err)) != 0) {
		FZ_CHECK(err[0] != '\0', "a refusal without a message");
		goto checks;
	}
	FZ_CHECK(route_format(&cfg, f1, sizeof(f1)) == 0, "format failed");
	FZ_CHECK(route_parse(f1, &again, err, sizeof(err)) == 0,
	        "canonical form '%s' does not parse: %s", f1, err);
	FZ_CHECK(route_format(&again, f2, sizeof(f2)) == 0, "format failed");
	FZ_CHECK(strcmp(f1, f2) == 0, "canonical form unstable: '%s' -> '%s'",
	        f1, f2);
	if (route_cfg_resolve(&cfg, &gate, &resolved, err, sizeof(err)) == 0) {
		route_check(&resolved, ROUTE_GROUP_DECODE, err, sizeof(err));
		route_check(&resolved, ROUTE_GROUP_PREFILL, err, sizeof(err));
	}
checks:
	for (int decode = 0; decode < 2; decode++) {
		memset(&ge, 0, sizeof(ge));
		if (gen_check_routing(&gate, spec, decode, canon, &ge) == 0) {
			struct route_cfg c2;

			FZ_CHECK(strlen(canon) <= GEN_MAX_ROUTING, "canonical too long");
			FZ_CHECK(canon[0] == '\0' ||
			        route_parse(canon, &c2, err, sizeof(err)) == 0,
			        "gen canonical '%s' does not parse: %s", canon, err);
		} else {
			FZ_CHECK(ge.message[0] != '\0', "gen refusal without a message");
		}
	}
	free(spec);
	return 0;
}
