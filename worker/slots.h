/* The worker's expert slots: which (layer, expert) copies it holds, in
 * what state, from which placement epoch on, and the loader thread that
 * brings new ones in while the worker keeps serving (balancing.md §6; the
 * router side is server/migrate.h).
 *
 * A worker holds at most one copy of an expert, so slots are keyed by
 * (layer, expert); the router's slot number is kept for logs.  States:
 * LOADING (queued or being loaded into staging), READY (serves batches).
 * Loading means bringing the expert's three matrices into memory: their
 * bytes are views of the model file mapping (common/model.h), so the
 * loader faults every page in and hashes one byte of each 4 KiB page with
 * the matrix sizes (the checksum reported with READY: it tells a slot
 * loaded from a different file, not bit rot).  Freeing drops the slot from
 * the table; its pages are page cache the kernel reclaims.
 *
 * Quantized copies (Replicate-and-Quantize, --replica-dtype q8_0 on the
 * router): a LOAD with `quantized` set makes the slot an owned Q8_0 copy
 * of the three matrices (about 53% of F16, 27% of F32) and drops the
 * source pages from the worker's mapping; batches then compute with it.
 * A LOAD of a slot held READY at the other precision re-loads it in the
 * background while the old copy keeps serving, then swaps.  A dropped
 * copy is freed by the data loop (slots_reap) between batches, never
 * under a batch computing with it.
 *
 * Orders (SlotOrder): LOAD of a slot held READY or LOADING is a no-op,
 * FREE of a slot not held is a no-op, COMMIT is informational, so the
 * router may repeat an order until it sees it done.  A complete order
 * drops every slot it does not list.  A loaded slot serves batches whose
 * epoch is >= the epoch of the order that loaded it.  Orders asking for
 * weights over the network, or naming a layer or expert outside the model,
 * fail that slot (reported, never fatal).
 *
 * Thread-safe: the data loop checks batches, the control thread applies
 * orders and reads states, the loader thread loads; one internal mutex,
 * never held while touching weight pages.
 */
#ifndef EPMOE_SLOTS_H
#define EPMOE_SLOTS_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe.pb-c.h"

struct model;
struct slots;

/* Called by the loader thread (no lock held) after a load finished. */
typedef void (*slots_ready_fn)(void *arg);

/* Starts the loader thread.  Borrows m (must outlive the table).  Free
 * with slots_free. */
int slots_new(struct slots **out, const struct model *m, slots_ready_fn fn,
        void *arg);
/* Stops the loader (a load in progress finishes its expert first). */
void slots_free(struct slots *s);

/* Applies an order (see above).  Returns 0 or EPMOE_ENOMEM; bad entries
 * are logged and reported as failed, not errors. */
int slots_apply(struct slots *s, const Epmoe__SlotOrder *o);

/* A new router (another boot id) numbers its placement epochs from 1
 * again: every held slot serves from epoch 0 on, and the newest epoch is
 * forgotten, so its batches are not refused as older than slots an
 * earlier router ordered.  The weights stay loaded. */
void slots_new_router(struct slots *s);

/* The state now of every slot named by the last order applied, for the
 * LoadReport (order_reply).  Returns 0 and fills *out, whose arrays stay
 * valid until the next slots_report / slots_apply; EPMOE_ENOENT when no
 * order came yet. */
int slots_report(struct slots *s, Epmoe__SlotOrderReply *out);

/* Whether every group of batch b names a slot held READY for b's epoch:
 * 0, or EPMOE_ESTATE with the reason in why.  On 0 and with mats (room
 * for 3 per group) non-NULL, group g's Q8_0 matrices (gate, up, down) are
 * in mats[3g..3g+2], or all-zero when it serves the model's own weights;
 * they stay valid until the caller's next slots_reap. */
struct tmat;
int slots_check(struct slots *s, const Epmoe__ExpertBatch *b, struct tmat *mats,
        char *why, size_t why_len);

/* Frees the copies dropped since the last call.  Only the one thread
 * that computes with slots_check's matrices may call it, between
 * batches. */
void slots_reap(struct slots *s);

/* Prefetch hint: starts paging in (madvise MADV_WILLNEED) the weights of
 * those of expert[0..n) of `layer` held READY here; the others are
 * ignored.  Returns how many were advised, and their bytes in *bytes. */
uint32_t slots_prefetch(struct slots *s, uint32_t layer, const uint32_t *expert,
        size_t n, uint64_t *bytes);

/* Newest epoch of an order applied; slots held (any state); slots
 * loading. */
uint64_t slots_epoch(struct slots *s);
uint32_t slots_held(struct slots *s);
uint32_t slots_loading(struct slots *s);
/* READY copies held as Q8_0, and their bytes in *bytes (may be NULL). */
uint32_t slots_quantized(struct slots *s, uint64_t *bytes);

#endif
