/* Open-addressing string map; see strmap.h.  Load factor at most 1/2,
 * linear probing, the 32-bit hash kept in each slot to skip most key
 * comparisons. */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "hash.h"
#include "strmap.h"

static uint32_t
hash_bytes(const char *s, size_t len)
{
	return (uint32_t)hash_fnv1a(s, len, HASH_FNV1A_INIT);
}

int
strmap_init(struct strmap *m, size_t n_expected)
{
	size_t cap = 16;

	/* load factor at most 1/2 */
	while (cap < 2 * n_expected)
		cap *= 2;
	if ((m->ents = calloc(cap, sizeof(*m->ents))) == NULL)
		return EPMOE_ENOMEM;
	m->mask = cap - 1;
	m->n = 0;
	return 0;
}

void
strmap_fini(struct strmap *m)
{
	free(m->ents);
	m->ents = NULL;
	m->n = 0;
}

static int
map_grow(struct strmap *m)
{
	struct strmap nm;
	size_t cap = (m->mask + 1) * 2;

	if ((nm.ents = calloc(cap, sizeof(*nm.ents))) == NULL)
		return EPMOE_ENOMEM;
	nm.mask = cap - 1;
	nm.n = m->n;
	for (size_t i = 0; i <= m->mask; i++) {
		size_t j;

		if (m->ents[i].key == NULL)
			continue;
		for (j = m->ents[i].hash & nm.mask; nm.ents[j].key;
		        j = (j + 1) & nm.mask)
			;
		nm.ents[j] = m->ents[i];
	}
	free(m->ents);
	*m = nm;
	return 0;
}

int
strmap_put(struct strmap *m, const char *key, size_t len, int32_t val,
        int32_t *old)
{
	uint32_t h = hash_bytes(key, len);
	size_t j;
	int rc;

	if (len > UINT32_MAX)
		return EPMOE_ERANGE;
	if (2 * (m->n + 1) > m->mask + 1 && (rc = map_grow(m)) != 0)
		return rc;
	for (j = h & m->mask; m->ents[j].key; j = (j + 1) & m->mask) {
		const struct strmap_ent *e = &m->ents[j];

		if (e->hash == h && e->len == len &&
		        memcmp(e->key, key, len) == 0) {
			if (old)
				*old = e->val;
			return 1;
		}
	}
	m->ents[j].key = key;
	m->ents[j].len = (uint32_t)len;
	m->ents[j].hash = h;
	m->ents[j].val = val;
	m->n++;
	return 0;
}

int32_t
strmap_get(const struct strmap *m, const char *key, size_t len)
{
	uint32_t h = hash_bytes(key, len);

	if (m->ents == NULL || len > UINT32_MAX)
		return -1;
	for (size_t j = h & m->mask; m->ents[j].key; j = (j + 1) & m->mask) {
		const struct strmap_ent *e = &m->ents[j];

		if (e->hash == h && e->len == len &&
		        memcmp(e->key, key, len) == 0)
			return e->val;
	}
	return -1;
}
