/* The one hash map of the project: open addressing from byte strings to
 * int32 values.  Keys are borrowed (they live in the caller's arena or
 * mapped file, unchanged while the map is used); the map never copies
 * them.  Used for the tokenizer's vocabulary and merges and for GGUF's
 * key and tensor names.  Not thread-safe for writers; concurrent readers
 * of a map nobody writes are fine. */
#ifndef EPMOE_STRMAP_H
#define EPMOE_STRMAP_H

#include <stddef.h>
#include <stdint.h>

struct strmap_ent {
	const char *key; /* NULL: empty slot */
	uint32_t len;
	uint32_t hash;
	int32_t val;
};

struct strmap {
	struct strmap_ent *ents;
	size_t mask; /* capacity - 1, capacity a power of two */
	size_t n;
};

/* Sized for n_expected keys (grows past that).  0 or EPMOE_ENOMEM;
 * release with strmap_fini (safe on a zeroed map). */
int strmap_init(struct strmap *m, size_t n_expected);
void strmap_fini(struct strmap *m);
/* Inserts key -> val unless key is present.  Returns 0 when inserted, 1
 * when present (then *old, if not NULL, gets the stored value),
 * EPMOE_ENOMEM, or EPMOE_ERANGE for a key of 4 GiB or more. */
int strmap_put(struct strmap *m, const char *key, size_t len, int32_t val,
        int32_t *old);
/* The value of key, or -1. */
int32_t strmap_get(const struct strmap *m, const char *key, size_t len);

#endif
