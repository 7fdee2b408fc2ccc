/* The prefix cache: KV of token prefixes kept for reuse across requests.
 *
 * The KV of a sequence is cut into blocks of block_tokens positions.  A
 * block is keyed by the hash of its tokens chained onto its parent's key
 * (the block before it), so one key names a whole prefix; a lookup walks
 * a prompt block by block and stops at the first miss (vLLM's automatic
 * prefix caching).  Blocks also keep their tokens and their parent, so a
 * hash collision is a miss, never wrong KV.
 *
 * A hit copies the blocks' bytes into the new sequence's own cache (the
 * attention reads one contiguous cache per sequence): a hit costs a
 * memcpy instead of the prefill's compute.  Blocks are bytes of the
 * engine's KV type (F32 or F16), copied as they are.
 *
 * A running sequence holds a reference on every block it matched or
 * stored (struct pcache_hold); eviction takes only blocks nobody holds
 * and that no cached block continues, least recently used first.  Each
 * block is stored and counted once however many sequences share it.
 *
 * Engine thread only (not thread-safe); pcache_pinned_bytes may be read
 * from any thread.
 */
#ifndef EPMOE_PREFIX_H
#define EPMOE_PREFIX_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

#define PCACHE_BLOCK_TOKENS 16

struct pcache;
struct pc_block;

/* The blocks one sequence holds, in prefix order: b[i] covers positions
 * [i * block_tokens, (i + 1) * block_tokens). */
struct pcache_hold {
	struct pc_block **b;
	uint32_t n, cap;
};

struct pcache_stats {
	uint64_t n_blocks;      /* blocks held */
	uint64_t bytes;         /* their KV bytes */
	uint64_t pinned_bytes;  /* bytes of blocks running sequences hold */
	uint64_t evictions;     /* blocks evicted since creation */
	uint64_t inserted;      /* blocks stored since creation */
};

/* Creates a cache for e's sequences (e borrowed, must outlive it) with
 * blocks of block_tokens positions (0 = PCACHE_BLOCK_TOKENS).  Free with
 * pcache_free (every hold must have been released). */
int pcache_new(struct pcache **out, struct engine *e, uint32_t block_tokens);
void pcache_free(struct pcache *c);

uint32_t pcache_block_tokens(const struct pcache *c);
/* KV bytes of one block. */
size_t pcache_block_bytes(const struct pcache *c);
void pcache_get_stats(const struct pcache *c, struct pcache_stats *st);
/* Bytes of blocks some hold references (any thread). */
size_t pcache_pinned_bytes(const struct pcache *c);

/* Finds the longest run of cached whole blocks that is a prefix of
 * tokens[0..n_max), copies their KV into positions [0, matched) of seq
 * (which must have room for them: eng_seq_reserve) and references them
 * in h.  Continues from the blocks h holds when seq holds exactly those
 * (seq->n_pos == h->n * block_tokens; an empty seq and h to start), else
 * changes nothing.  Returns seq->n_pos: the positions now in seq (a
 * multiple of block_tokens).  On out of memory for h it matches fewer
 * blocks, never fails. */
uint32_t pcache_match(struct pcache *c, const int32_t *tokens, uint32_t n_max,
        struct eng_seq *seq, struct pcache_hold *h);

/* Stores the whole blocks of tokens[0..n) beyond those h already holds
 * (seq holds their KV: n <= seq->n_pos), taking references in h.  A block
 * already cached is shared, not stored twice.  A new block is stored only
 * while the cache's bytes stay within max_bytes (evicting unheld blocks
 * first); beyond that storing stops.  Returns the blocks h holds now. */
uint32_t pcache_store(struct pcache *c, const int32_t *tokens, uint32_t n,
        const struct eng_seq *seq, struct pcache_hold *h, size_t max_bytes);

/* Drops h's references (its blocks stay cached until evicted) and
 * empties h.  NULL-safe on c when h is empty. */
void pcache_release(struct pcache *c, struct pcache_hold *h);

/* Evicts unheld blocks, least recently used first, until the cache holds
 * at most max_bytes or nothing more can go.  Returns the bytes held. */
size_t pcache_trim(struct pcache *c, size_t max_bytes);

#endif
