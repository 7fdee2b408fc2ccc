/* TEMPORARY native-only routing until the routing module lands. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "route.h"

struct route_policy {
	uint32_t E, k;
	bool renorm;
};

int
route_policy_new(struct route_policy **out, const char *spec,
        uint32_t n_expert, uint32_t k, bool renorm, uint32_t n_layer,
        char *err, size_t err_len)
{
	struct route_policy *p = calloc(1, sizeof(*p));
	if (!p)
		return EPMOE_ENOMEM;
	p->E = n_expert;
	p->k = k;
	p->renorm = renorm;
	*out = p;
	return 0;
}

void
route_policy_free(struct route_policy *p)
{
	free(p);
}

void
route_out_fini(struct route_out *o)
{
	free(o->off);
	free(o->expert);
	free(o->weight);
	memset(o, 0, sizeof(*o));
}

int
route_run(struct route_policy *p, uint32_t layer, uint64_t step,
        const float *S, uint32_t T, const struct route_group *g,
        uint32_t n_groups, struct route_out *o)
{
	uint32_t E = p->E, k = p->k;
	if (T + 1 > o->cap_tok) {
		free(o->off);
		o->off = malloc((T + 1) * sizeof(uint32_t));
		o->cap_tok = T + 1;
	}
	if ((size_t)T * k > o->cap_pairs) {
		free(o->expert);
		free(o->weight);
		o->expert = malloc((size_t)T * k * sizeof(int32_t));
		o->weight = malloc((size_t)T * k * sizeof(float));
		o->cap_pairs = (size_t)T * k;
	}
	for (uint32_t t = 0; t < T; t++) {
		const float *s = S + (size_t)t * E;
		float m = -INFINITY, sum = 0, sel = 0;
		int32_t *ex = o->expert + (size_t)t * k;
		float *w = o->weight + (size_t)t * k;
		o->off[t] = t * k;
		for (uint32_t e = 0; e < E; e++)
			if (s[e] > m)
				m = s[e];
		for (uint32_t e = 0; e < E; e++)
			sum += expf(s[e] - m);
		for (uint32_t i = 0; i < k; i++) {
			int best = -1;
			for (uint32_t e = 0; e < E; e++) {
				int used = 0;
				for (uint32_t j = 0; j < i; j++)
					used |= ex[j] == (int32_t)e;
				if (!used && (best < 0 || s[e] > s[best]))
					best = (int)e;
			}
			ex[i] = best;
			w[i] = expf(s[best] - m) / sum;
			sel += w[i];
		}
		if (p->renorm)
			for (uint32_t i = 0; i < k; i++)
				w[i] /= sel;
	}
	o->off[T] = T * k;
	return 0;
}
