/* The prefix cache: blocks of KV keyed by chained token hashes, a hash
 * table over them and one LRU list.  See prefix.h for the contract.
 *
 * Must not: touch a sequence's cache beyond the positions it is told to
 * copy, or free a block a hold references or a cached block continues
 * (its children would become unreachable but still hold memory).
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "hash.h"
#include "prefix.h"

struct pc_block {
	uint64_t key;              /* chained hash of tokens[0 .. end of block) */
	struct pc_block *parent;   /* the block before (NULL: the first) */
	uint32_t n_child;          /* cached blocks whose parent this is */
	uint32_t refs;             /* holds referencing it */
	struct pc_block *hnext;    /* hash bucket chain */
	struct pc_block *prev, *next; /* LRU list: head = most recent */
	int32_t *tokens;           /* [block_tokens] */
	uint8_t *kv;               /* [n_layer][2 (k, v)][block_tokens][row] */
};

struct pcache {
	struct engine *e;
	uint32_t bt;               /* block_tokens */
	uint32_t n_layer;
	size_t row;                /* bytes of one position of one layer's K */
	size_t block_bytes;
	struct pc_block **bucket;
	size_t n_bucket;           /* power of two */
	struct pc_block *head, *tail;
	uint64_t n_blocks, evictions, inserted;
	_Atomic size_t pinned;
};

int
pcache_new(struct pcache **out, struct engine *e, uint32_t block_tokens)
{
	const struct model *m = engine_model(e);
	struct pcache *c;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return EPMOE_ENOMEM;
	c->e = e;
	c->bt = block_tokens ? block_tokens : PCACHE_BLOCK_TOKENS;
	c->n_layer = m->hp.n_layer;
	/* engine_kv_bytes counts K and V of every layer */
	c->row = engine_kv_bytes(e, 1) / (2 * (size_t)c->n_layer);
	c->block_bytes = (size_t)2 * c->n_layer * c->bt * c->row;
	c->n_bucket = 256;
	if ((c->bucket = calloc(c->n_bucket, sizeof(*c->bucket))) == NULL) {
		free(c);
		return EPMOE_ENOMEM;
	}
	*out = c;
	return 0;
}

static void
block_free(struct pc_block *b)
{
	free(b->tokens);
	free(b->kv);
	free(b);
}

void
pcache_free(struct pcache *c)
{
	if (c == NULL)
		return;
	for (struct pc_block *b = c->head, *n; b; b = n) {
		n = b->next;
		block_free(b);
	}
	free(c->bucket);
	free(c);
}

uint32_t
pcache_block_tokens(const struct pcache *c)
{
	return c->bt;
}

size_t
pcache_block_bytes(const struct pcache *c)
{
	return c->block_bytes;
}

size_t
pcache_pinned_bytes(const struct pcache *c)
{
	return c ? atomic_load(&c->pinned) : 0;
}

void
pcache_get_stats(const struct pcache *c, struct pcache_stats *st)
{
	st->n_blocks = c->n_blocks;
	st->bytes = c->n_blocks * c->block_bytes;
	st->pinned_bytes = atomic_load(&c->pinned);
	st->evictions = c->evictions;
	st->inserted = c->inserted;
}

/* ---- LRU list ---- */

static void
lru_unlink(struct pcache *c, struct pc_block *b)
{
	if (b->prev)
		b->prev->next = b->next;
	else
		c->head = b->next;
	if (b->next)
		b->next->prev = b->prev;
	else
		c->tail = b->prev;
	b->prev = b->next = NULL;
}

static void
lru_front(struct pcache *c, struct pc_block *b)
{
	b->prev = NULL;
	b->next = c->head;
	if (c->head)
		c->head->prev = b;
	else
		c->tail = b;
	c->head = b;
}

/* ---- hash table ---- */

static uint64_t
block_key(uint64_t parent_key, const int32_t *tokens, uint32_t n)
{
	return hash_fnv1a(tokens, n * sizeof(*tokens), parent_key);
}

static struct pc_block *
find(const struct pcache *c, uint64_t key, const struct pc_block *parent,
        const int32_t *tokens)
{
	for (struct pc_block *b = c->bucket[key & (c->n_bucket - 1)]; b; b = b->hnext)
		if (b->key == key && b->parent == parent &&
		        memcmp(b->tokens, tokens, c->bt * sizeof(*tokens)) == 0)
			return b;
	return NULL;
}

static void
table_grow(struct pcache *c)
{
	size_t nb = c->n_bucket * 2;
	struct pc_block **t = calloc(nb, sizeof(*t));

	if (t == NULL)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < c->n_bucket; i++) {
		for (struct pc_block *b = c->bucket[i], *n; b; b = n) {
			n = b->hnext;
			b->hnext = t[b->key & (nb - 1)];
			t[b->key & (nb - 1)] = b;
		}
	}
	free(c->bucket);
	c->bucket = t;
	c->n_bucket = nb;
}

static void
table_remove(struct pcache *c, struct pc_block *b)
{
	struct pc_block **pp = &c->bucket[b->key & (c->n_bucket - 1)];

	while (*pp != b)
		pp = &(*pp)->hnext;
	*pp = b->hnext;
}

/* ---- holds ---- */

static bool
hold_push(struct pcache *c, struct pcache_hold *h, struct pc_block *b)
{
	if (h->n == h->cap) {
		uint32_t nc = h->cap ? 2 * h->cap : 16;
		struct pc_block **nb = realloc(h->b, nc * sizeof(*nb));
		if (nb == NULL)
			return false;
		h->b = nb;
		h->cap = nc;
	}
	h->b[h->n++] = b;
	if (b->refs++ == 0)
		atomic_fetch_add(&c->pinned, c->block_bytes);
	return true;
}

void
pcache_release(struct pcache *c, struct pcache_hold *h)
{
	for (uint32_t i = 0; i < h->n; i++)
		if (--h->b[i]->refs == 0)
			atomic_fetch_sub(&c->pinned, c->block_bytes);
	free(h->b);
	h->b = NULL;
	h->n = h->cap = 0;
}

/* ---- copies between blocks and sequences ---- */

/* Copies block b's KV into positions [pos, pos + bt) of seq, or (out)
 * those positions of seq into b. */
static void
block_copy(struct pcache *c, struct pc_block *b, struct eng_seq *seq,
        uint32_t pos, bool out)
{
	size_t n = (size_t)c->bt * c->row, off = (size_t)pos * c->row;

	for (uint32_t l = 0; l < c->n_layer; l++) {
		uint8_t *bk = b->kv + (size_t)l * 2 * n, *bv = bk + n;
		uint8_t *sk = (uint8_t *)seq->k[l] + off, *sv = (uint8_t *)seq->v[l] + off;
		if (out) {
			memcpy(bk, sk, n);
			memcpy(bv, sv, n);
		} else {
			memcpy(sk, bk, n);
			memcpy(sv, bv, n);
		}
	}
}

uint32_t
pcache_match(struct pcache *c, const int32_t *tokens, uint32_t n_max,
        struct eng_seq *seq, struct pcache_hold *h)
{
	struct pc_block *parent = h->n ? h->b[h->n - 1] : NULL;
	uint64_t key = parent ? parent->key : HASH_FNV1A_INIT;
	uint32_t nb = n_max / c->bt, n0 = h->n;

	if (seq->n_pos != h->n * c->bt || seq->cap < nb * c->bt)
		return seq->n_pos;
	for (uint32_t i = h->n; i < nb; i++) {
		const int32_t *t = tokens + (size_t)i * c->bt;
		key = block_key(key, t, c->bt);
		struct pc_block *b = find(c, key, parent, t);
		if (b == NULL || !hold_push(c, h, b))
			break;
		block_copy(c, b, seq, i * c->bt, false);
		parent = b;
	}
	/* most recent last for the first blocks: leaves age first, and a
	 * prefix shared by many stays */
	for (uint32_t i = h->n; i-- > n0;) {
		lru_unlink(c, h->b[i]);
		lru_front(c, h->b[i]);
	}
	seq->n_pos = h->n * c->bt;
	return seq->n_pos;
}

/* Evicts the least recently used block nobody holds or continues. */
static bool
evict_one(struct pcache *c)
{
	struct pc_block *b = c->tail;

	while (b && (b->refs || b->n_child))
		b = b->prev;
	if (b == NULL)
		return false;
	lru_unlink(c, b);
	table_remove(c, b);
	if (b->parent)
		b->parent->n_child--;
	block_free(b);
	c->n_blocks--;
	c->evictions++;
	return true;
}

size_t
pcache_trim(struct pcache *c, size_t max_bytes)
{
	while (c->n_blocks * c->block_bytes > max_bytes && evict_one(c))
		;
	return c->n_blocks * c->block_bytes;
}

uint32_t
pcache_store(struct pcache *c, const int32_t *tokens, uint32_t n,
        const struct eng_seq *seq, struct pcache_hold *h, size_t max_bytes)
{
	uint32_t nb = n / c->bt;
	struct pc_block *parent = h->n ? h->b[h->n - 1] : NULL;
	uint64_t key = parent ? parent->key : HASH_FNV1A_INIT;

	if (n > seq->n_pos)
		nb = seq->n_pos / c->bt;
	while (h->n < nb) {
		const int32_t *t = tokens + (size_t)h->n * c->bt;
		struct pc_block *b;
		key = block_key(key, t, c->bt);
		if ((b = find(c, key, parent, t)) == NULL) {
			if (pcache_trim(c, max_bytes > c->block_bytes ? max_bytes - c->block_bytes : 0) +
			        c->block_bytes > max_bytes)
				break;
			if ((b = calloc(1, sizeof(*b))) == NULL ||
			        (b->tokens = malloc(c->bt * sizeof(*t))) == NULL ||
			        (b->kv = malloc(c->block_bytes)) == NULL) {
				if (b)
					free(b->tokens);
				free(b);
				break;
			}
			b->key = key;
			b->parent = parent;
			memcpy(b->tokens, t, c->bt * sizeof(*t));
			block_copy(c, b, (struct eng_seq *)seq, h->n * c->bt, true);
			if (c->n_blocks >= 2 * c->n_bucket)
				table_grow(c);
			b->hnext = c->bucket[key & (c->n_bucket - 1)];
			c->bucket[key & (c->n_bucket - 1)] = b;
			if (parent)
				parent->n_child++;
			lru_front(c, b);
			c->n_blocks++;
			c->inserted++;
		} else {
			lru_unlink(c, b);
			lru_front(c, b);
		}
		if (!hold_push(c, h, b))
			break;
		parent = b;
	}
	return h->n;
}
