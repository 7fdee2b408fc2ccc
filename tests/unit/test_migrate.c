/* The live-placement state machine (server/migrate.h) and the maps it is
 * driven with (placement_mix, placement_cover):
 *   - a registered worker's first order is its complete set; it becomes
 *     ready only when its reports show every slot loaded;
 *   - LOAD -> READY -> COMMIT: a layer switches only when its new copies
 *     on up workers are READY, one epoch per commit, layers that are ready
 *     first commit first; copies on workers that are not up do not hold
 *     a commit back;
 *   - RETIRE: an old copy is freed only after the last user of the map
 *     that had it released it; orders repeat until a report shows them
 *     done, and stop then;
 *   - a replaced or cancelled target frees what it had staged and keeps
 *     what the new one wants;
 *   - the degraded cover gives every expert of a lost worker one copy on
 *     a live worker, spreads them, keeps the previous choice, waits for
 *     workers that never registered, and restores home when all are up;
 *   - replica order is kept as given (a file's [1, 0] reads back as such);
 *   - Replicate-and-Quantize: with q8 on, an expert's copies after its
 *     first are ordered as Q8_0, and a copy whose place in the order
 *     changes is re-loaded at its new precision; a worker's Q8_0 slot
 *     computes within Q8_0's error of the model's weights, reports itself
 *     quantized, and goes back to the exact copy while serving throughout.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "err.h"
#include "migrate.h"
#include "model.h"
#include "moe.h"
#include "pool.h"
#include "slots.h"
#include "placement.h"
#include "testutil.h"

#define L 2
#define E 4

/* A map from owner lists written as a string per layer: "0,1,1,0" or
 * with replicas "01,1,1,0" (each digit a worker). */
static struct placement *
map(const char *l0, const char *l1, uint32_t W)
{
	uint32_t cnt[L * E] = { 0 };
	int32_t own[L * E * 4];
	const char *ls[L] = { l0, l1 };
	struct placement *p;

	for (uint32_t l = 0; l < L; l++) {
		const char *s = ls[l];
		for (uint32_t e = 0; e < E; e++) {
			size_t i = (size_t)l * E + e;
			while (*s && *s != ',')
				own[i * 4 + cnt[i]++] = *s++ - '0';
			if (*s == ',')
				s++;
		}
	}
	ck_assert_int_eq(placement_build(&p, L, E, W, cnt, own, 4), 0);
	return p;
}

static bool
has(const struct placement *p, uint32_t l, uint32_t e, uint32_t w)
{
	return placement_has(p, l, e, w);
}

/* Acks every op of w's order as done (LOAD -> READY, FREE -> NONE);
 * returns how many ops there were. */
static uint32_t
ack_all(struct mig *g, uint32_t w)
{
	struct mig_order o;

	ck_assert_int_eq(mig_order(g, w, &o), 0);
	for (uint32_t i = 0; i < o.n_ops; i++)
		mig_ack(g, w, o.ops[i].layer, o.ops[i].expert,
		        o.ops[i].load ? MIG_READY : MIG_NONE, o.ops[i].quant);
	return o.n_ops;
}

/* Registers workers 0..W-1 with everything loaded. */
static void
register_all(struct mig *g, uint32_t W)
{
	for (uint32_t w = 0; w < W; w++) {
		mig_worker_reset(g, w);
		ack_all(g, w);
		ck_assert(mig_worker_ready(g, w));
		ck_assert(!mig_worker_pending(g, w));
	}
}

START_TEST(a_registered_worker_gets_its_complete_set_and_is_ready_once_loaded)
{
	struct mig *g;
	struct mig_order o;
	uint32_t loads = 0;

	ck_assert_int_eq(mig_new(&g, map("0,0,1,1", "0,1,0,1", 2), 2), 0);
	ck_assert_uint_eq(mig_epoch(g), 1);
	mig_worker_reset(g, 0);
	ck_assert(mig_worker_pending(g, 0));
	ck_assert_int_eq(mig_order(g, 0, &o), 0);
	ck_assert(o.complete);
	ck_assert_uint_eq(o.epoch, 1);
	ck_assert_uint_eq(o.n_ops, 4);
	for (uint32_t i = 0; i < o.n_ops; i++) {
		ck_assert(o.ops[i].load);
		ck_assert(has(mig_committed(g), o.ops[i].layer, o.ops[i].expert, 0));
		ck_assert_int_ge(o.ops[i].slot, 0);
		loads++;
	}
	ck_assert(!mig_worker_ready(g, 0));
	/* loading: the loads are repeated, not complete any more */
	for (uint32_t i = 0; i < o.n_ops; i++)
		mig_ack(g, 0, o.ops[i].layer, o.ops[i].expert, MIG_LOADING, false);
	ck_assert_int_eq(mig_order(g, 0, &o), 0);
	ck_assert(!o.complete);
	ck_assert_uint_eq(o.n_ops, loads);
	ck_assert(!mig_worker_ready(g, 0));
	ck_assert_uint_eq(ack_all(g, 0), loads);
	ck_assert(mig_worker_ready(g, 0));
	ck_assert(!mig_worker_pending(g, 0));
	/* nothing more to say */
	ck_assert_int_eq(mig_order(g, 0, &o), 0);
	ck_assert_uint_eq(o.n_ops, 0);
	/* a reset (re-registration) starts over */
	mig_worker_reset(g, 0);
	ck_assert(!mig_worker_ready(g, 0));
	ck_assert_int_eq(mig_order(g, 0, &o), 0);
	ck_assert(o.complete);
	mig_free(g);
}
END_TEST

START_TEST(a_layer_commits_only_when_its_new_copies_are_ready)
{
	struct mig *g;
	struct mig_step st;
	struct mig_order o;
	bool up[2] = { true, true };
	const struct placement *held;

	ck_assert_int_eq(mig_new(&g, map("0,0,1,1", "0,0,1,1", 2), 2), 0);
	register_all(g, 2);
	/* a user holds epoch 1 across the switch */
	held = mig_acquire(g);
	/* move layer 0 expert 2 and layer 1 expert 3 to worker 0 */
	ck_assert_int_eq(mig_set_target(g, map("0,0,0,1", "0,0,1,0", 2)), 0);
	ck_assert_ptr_nonnull(mig_target(g));
	ck_assert(mig_worker_pending(g, 0));
	ck_assert(!mig_worker_pending(g, 1));
	ck_assert_int_eq(mig_order(g, 0, &o), 0);
	ck_assert(!o.complete);
	ck_assert_uint_eq(o.n_ops, 2);
	ck_assert(o.ops[0].load && o.ops[0].layer == 0 && o.ops[0].expert == 2);
	ck_assert(o.ops[1].load && o.ops[1].layer == 1 && o.ops[1].expert == 3);
	/* nothing READY: no commit */
	ck_assert_int_eq(mig_step(g, up, &st), 0);
	ck_assert_uint_eq(st.layers_committed, 0);
	ck_assert_uint_eq(mig_epoch(g), 1);
	/* layer 1's copy loaded first: layer 1 commits alone, epoch 2 */
	mig_ack(g, 0, 0, 2, MIG_LOADING, false);
	mig_ack(g, 0, 1, 3, MIG_READY, false);
	ck_assert_int_eq(mig_step(g, up, &st), 0);
	ck_assert_uint_eq(st.layers_committed, 1);
	ck_assert_uint_eq(st.epoch, 2);
	ck_assert(!st.target_done);
	ck_assert_uint_eq(mig_epoch(g), 2);
	ck_assert(has(mig_committed(g), 1, 3, 0) && !has(mig_committed(g), 1, 3, 1));
	ck_assert(has(mig_committed(g), 0, 2, 1) && !has(mig_committed(g), 0, 2, 0));
	ck_assert_uint_eq(mig_n_retiring(g), 1);
	/* the held map is unchanged: its user keeps its copies */
	ck_assert(has(held, 1, 3, 1));
	/* worker 1's old copy of layer 1 expert 3 is still wanted (held) */
	ck_assert_int_eq(mig_order(g, 1, &o), 0);
	ck_assert_uint_eq(o.n_ops, 0);
	/* layer 0 next: epoch 3, the target is done */
	mig_ack(g, 0, 0, 2, MIG_READY, false);
	ck_assert_int_eq(mig_step(g, up, &st), 0);
	ck_assert_uint_eq(st.layers_committed, 1);
	ck_assert_uint_eq(st.epoch, 3);
	ck_assert(st.target_done);
	ck_assert_ptr_null(mig_target(g));
	/* epoch 2 had no users: dropped at once; epoch 1 is still held and
	 * has both old copies on worker 1: nothing is freed yet */
	ck_assert_uint_eq(mig_n_retiring(g), 1);
	ck_assert_int_eq(mig_order(g, 1, &o), 0);
	ck_assert_uint_eq(o.n_ops, 0);
	/* RETIRE: released, the next step frees the last old copy */
	mig_release(g, held);
	ck_assert_int_eq(mig_step(g, up, &st), 0);
	ck_assert_uint_eq(st.maps_retired, 1);
	ck_assert_uint_eq(mig_n_retiring(g), 0);
	ck_assert_int_eq(mig_order(g, 1, &o), 0);
	ck_assert_uint_eq(o.n_ops, 2);
	for (uint32_t i = 0; i < 2; i++)
		ck_assert(!o.ops[i].load);
	/* repeated until a report shows them done, then silent */
	ck_assert_int_eq(mig_order(g, 1, &o), 0);
	ck_assert_uint_eq(o.n_ops, 2);
	ck_assert_uint_eq(ack_all(g, 1), 2);
	ck_assert(!mig_worker_pending(g, 1));
	ck_assert_int_eq(mig_order(g, 1, &o), 0);
	ck_assert_uint_eq(o.n_ops, 0);
	mig_free(g);
}
END_TEST

START_TEST(copies_on_workers_that_are_not_up_do_not_hold_a_commit)
{
	struct mig *g;
	struct mig_step st;
	bool up[3] = { true, true, false };

	ck_assert_int_eq(mig_new(&g, map("0,0,1,1", "0,0,1,1", 3), 3), 0);
	register_all(g, 2);
	/* expert 3 of both layers gains a copy on worker 2 (down) */
	ck_assert_int_eq(mig_set_target(g, map("0,0,1,12", "0,0,1,12", 3)), 0);
	ck_assert_int_eq(mig_step(g, up, &st), 0);
	ck_assert_uint_eq(st.layers_committed, 2);
	ck_assert(st.target_done);
	ck_assert(has(mig_committed(g), 0, 3, 2));
	/* worker 2 loads them when it registers (complete order) */
	{
		struct mig_order o;
		mig_worker_reset(g, 2);
		ck_assert_int_eq(mig_order(g, 2, &o), 0);
		ck_assert(o.complete);
		ck_assert_uint_eq(o.n_ops, 2);
	}
	mig_free(g);
}
END_TEST

START_TEST(a_replaced_target_frees_what_it_staged_and_keeps_what_is_wanted)
{
	struct mig *g;
	struct mig_step st;
	struct mig_order o;
	bool up[2] = { true, true };

	ck_assert_int_eq(mig_new(&g, map("0,0,1,1", "0,0,1,1", 2), 2), 0);
	register_all(g, 2);
	/* target A: worker 0 also serves experts 2 and 3 of layer 0 */
	ck_assert_int_eq(mig_set_target(g, map("0,0,10,10", "0,0,1,1", 2)), 0);
	ck_assert_uint_eq(ack_all(g, 0), 2);
	/* replaced before its commit by B: only expert 3 */
	ck_assert_int_eq(mig_set_target(g, map("0,0,1,10", "0,0,1,1", 2)), 0);
	ck_assert_int_eq(mig_order(g, 0, &o), 0);
	ck_assert_uint_eq(o.n_ops, 1);
	ck_assert(!o.ops[0].load && o.ops[0].layer == 0 && o.ops[0].expert == 2);
	/* expert 3 is READY already: B commits at once */
	ck_assert_int_eq(mig_step(g, up, &st), 0);
	ck_assert(st.target_done);
	ck_assert(has(mig_committed(g), 0, 3, 0));
	ck_assert(!has(mig_committed(g), 0, 2, 0));
	ck_assert_uint_eq(ack_all(g, 0), 1);
	/* a target equal to the committed map is no transition; going back
	 * drops the extra copy once nobody holds the map */
	ck_assert_int_eq(mig_set_target(g, map("0,0,1,10", "0,0,1,1", 2)), 0);
	ck_assert_ptr_null(mig_target(g));
	ck_assert_int_eq(mig_set_target(g, map("0,0,1,1", "0,0,1,1", 2)), 0);
	ck_assert_int_eq(mig_step(g, up, &st), 0);
	ck_assert(st.target_done);
	ck_assert_uint_eq(st.epoch, 3);
	ck_assert_int_eq(mig_order(g, 0, &o), 0);
	ck_assert_uint_eq(o.n_ops, 1);
	ck_assert(!o.ops[0].load && o.ops[0].expert == 3);
	/* a bad target is refused and freed */
	ck_assert_int_eq(mig_set_target(g, map("0,0,1,1", "0,0,1,1", 3)), EPMOE_EINVAL);
	mig_free(g);
}
END_TEST

START_TEST(a_failed_load_is_not_repeated_and_holds_its_layer)
{
	struct mig *g;
	struct mig_step st;
	struct mig_order o;
	bool up[2] = { true, true };

	ck_assert_int_eq(mig_new(&g, map("0,0,1,1", "0,0,1,1", 2), 2), 0);
	register_all(g, 2);
	ck_assert_int_eq(mig_set_target(g, map("0,0,1,10", "0,0,1,1", 2)), 0);
	mig_ack(g, 0, 0, 3, MIG_FAILED, false);
	ck_assert_int_eq(mig_order(g, 0, &o), 0);
	ck_assert_uint_eq(o.n_ops, 0);
	ck_assert(!mig_worker_pending(g, 0));
	ck_assert_int_eq(mig_step(g, up, &st), 0);
	ck_assert_uint_eq(st.layers_committed, 0);
	/* a new registration clears it */
	mig_worker_reset(g, 0);
	ck_assert_int_eq(mig_order(g, 0, &o), 0);
	ck_assert(o.complete);
	ck_assert_uint_eq(o.n_ops, 5);
	mig_free(g);
}
END_TEST

START_TEST(mix_takes_the_layers_asked)
{
	struct placement *a = map("0,0,1,1", "0,0,1,1", 2), *b = map("1,1,0,0", "01,1,0,0", 2);
	struct placement *m;
	bool take[L] = { false, true };

	ck_assert_int_eq(placement_mix(&m, a, b, take), 0);
	ck_assert(placement_layer_equal(m, a, 0));
	ck_assert(placement_layer_equal(m, b, 1));
	ck_assert(!placement_layer_equal(m, b, 0));
	ck_assert_uint_eq(m->max_copies, 2);
	placement_free(m);
	placement_free(a);
	placement_free(b);
}
END_TEST

START_TEST(cover_gives_lost_experts_a_live_copy_and_restores_home)
{
	struct placement *home = map("0,0,1,1", "0,1,2,2", 3), *c, *c2;
	bool up[3] = { true, false, true }, lost[3] = { false, true, false };
	bool never[3] = { false, false, false };
	uint32_t extra;

	/* worker 1 lost: layer 0 experts 2 and 3, layer 1 expert 1 */
	ck_assert_int_eq(placement_cover(&c, home, up, lost, NULL, &extra), 0);
	ck_assert_uint_eq(extra, 3);
	for (uint32_t l = 0; l < L; l++)
		for (uint32_t e = 0; e < E; e++) {
			bool live = has(c, l, e, 0) || has(c, l, e, 2);
			ck_assert_msg(live, "layer %u expert %u has no live copy", l, e);
			/* home copies stay, first */
			int32_t hw = placement_slot_worker(home, l,
			        (uint32_t)placement_expert_slot(home, l, e, 0));
			ck_assert_int_eq(placement_slot_worker(c, l,
			        (uint32_t)placement_expert_slot(c, l, e, 0)), hw);
		}
	/* spread over the live workers by load: layer 0 has 2 on worker 0,
	 * none on 2: both extras go to worker 2 */
	ck_assert(has(c, 0, 2, 2) && has(c, 0, 3, 2));
	/* layer 1: worker 0 has 1 copy, worker 2 has 2: the extra goes to 0 */
	ck_assert(has(c, 1, 1, 0));
	/* the next cover keeps those choices although loads would differ */
	{
		bool up2[3] = { false, false, true }, lost2[3] = { true, true, false };
		ck_assert_int_eq(placement_cover(&c2, home, up2, lost2, c, &extra), 0);
		ck_assert(has(c2, 0, 2, 2) && has(c2, 0, 3, 2));
		ck_assert(has(c2, 0, 0, 2) && has(c2, 1, 1, 2));
		placement_free(c2);
	}
	/* a worker that never registered is not lost: nothing to cover */
	ck_assert_int_eq(placement_cover(&c2, home, up, never, c, &extra), 0);
	ck_assert_uint_eq(extra, 0);
	for (uint32_t l = 0; l < L; l++)
		ck_assert(placement_layer_equal(c2, home, l));
	placement_free(c2);
	/* everyone back: home */
	{
		bool all[3] = { true, true, true };
		ck_assert_int_eq(placement_cover(&c2, home, all, NULL, c, &extra), 0);
		ck_assert_uint_eq(extra, 0);
		for (uint32_t l = 0; l < L; l++)
			ck_assert(placement_layer_equal(c2, home, l));
		placement_free(c2);
	}
	placement_free(c);
	placement_free(home);
}
END_TEST

START_TEST(replica_order_is_kept_as_given)
{
	const char *js = "{\"layers\": [[[1, 0], [0, 1], 2, [2, 0, 1]]]}";
	struct placement *p;
	char err[256], *txt;
	cJSON *j;

	ck_assert_int_eq(placement_from_json(&p, js, strlen(js), 1, 4, err, sizeof(err)), 0);
	ck_assert_int_eq(placement_slot_worker(p, 0, (uint32_t)placement_expert_slot(p, 0, 0, 0)), 1);
	ck_assert_int_eq(placement_slot_worker(p, 0, (uint32_t)placement_expert_slot(p, 0, 0, 1)), 0);
	ck_assert_int_eq(placement_slot_worker(p, 0, (uint32_t)placement_expert_slot(p, 0, 3, 0)), 2);
	ck_assert_int_eq(placement_to_json(p, &j), 0);
	txt = cJSON_PrintUnformatted(j);
	ck_assert_ptr_nonnull(strstr(txt, "[[[1,0],[0,1],2,[2,0,1]]]"));
	cJSON_free(txt);
	cJSON_Delete(j);
	placement_free(p);
}
END_TEST

/* A worker keeps its slots across a router restart; the new router numbers
 * its epochs from 1 again, and its batches must not be refused as older
 * than the slots the earlier router ordered at a later epoch. */
START_TEST(a_new_router_starts_the_slots_epochs_again)
{
	struct model *m;
	struct slots *sl;
	char err[256], why[256];
	Epmoe__SlotAssign a = EPMOE__SLOT_ASSIGN__INIT, *ap = &a;
	Epmoe__SlotOrder o = EPMOE__SLOT_ORDER__INIT;
	Epmoe__ExpertGroup g = EPMOE__EXPERT_GROUP__INIT, *gp = &g;
	Epmoe__ExpertBatch b = EPMOE__EXPERT_BATCH__INIT;

	ck_assert_msg(model_load(&m, tu_data("mixtral-tiny-f32.gguf"), err, sizeof(err)) == 0,
	        "%s", err);
	ck_assert_int_eq(slots_new(&sl, m, NULL, NULL), 0);
	a.layer = 0;
	a.expert = 3;
	a.slot = 3;
	a.op = EPMOE__SLOT_OP__SLOT_OP_LOAD;
	a.source = EPMOE__WEIGHT_SOURCE__WEIGHT_SOURCE_LOCAL;
	o.order_id = 1;
	o.epoch = 4;
	o.n_slots = 1;
	o.slots = &ap;
	ck_assert_int_eq(slots_apply(sl, &o), 0);
	for (int i = 0; i < 1500 && slots_loading(sl) > 0; i++)
		usleep(10000);
	ck_assert_uint_eq(slots_loading(sl), 0);
	ck_assert_uint_eq(slots_held(sl), 1);
	g.expert = 3;
	g.slot = 3;
	b.layer = 0;
	b.epoch = 1;
	b.n_groups = 1;
	b.groups = &gp;
	ck_assert_int_eq(slots_check(sl, &b, NULL, why, sizeof(why)), EPMOE_ESTATE);
	ck_assert_msg(strstr(why, "older") != NULL, "%s", why);
	slots_new_router(sl);
	ck_assert_uint_eq(slots_epoch(sl), 0);
	ck_assert_int_eq(slots_check(sl, &b, NULL, why, sizeof(why)), 0);
	ck_assert_uint_eq(slots_held(sl), 1);
	slots_free(sl);
	model_free(m);
}
END_TEST

/* Whether w's current order loads (l, e), and at which precision. */
static bool
order_loads(struct mig *g, uint32_t w, uint32_t l, uint32_t e, bool *quant)
{
	struct mig_order o;

	ck_assert_int_eq(mig_order(g, w, &o), 0);
	for (uint32_t i = 0; i < o.n_ops; i++) {
		if (o.ops[i].load && o.ops[i].layer == l && o.ops[i].expert == e) {
			*quant = o.ops[i].quant;
			return true;
		}
	}
	return false;
}

START_TEST(replicas_after_the_first_copy_are_ordered_as_q8_and_follow_the_order)
{
	struct mig *g;
	struct mig_step st;
	bool up[2] = { true, true }, q = false;

	/* expert 0 of layer 0 on workers 0 then 1 */
	ck_assert_int_eq(mig_new(&g, map("01,0,1,1", "0,0,1,1", 2), 2), 0);
	mig_set_quantized(g, true);
	mig_worker_reset(g, 0);
	mig_worker_reset(g, 1);
	ck_assert(order_loads(g, 0, 0, 0, &q));
	ck_assert(!q);
	ck_assert(order_loads(g, 1, 0, 0, &q));
	ck_assert(q);
	ck_assert(order_loads(g, 1, 0, 2, &q));
	ck_assert(!q); /* a single copy is exact */
	register_all(g, 2);
	ck_assert_uint_eq(mig_quantized(g), 1);
	/* the order flips: worker 1's copy becomes the exact one */
	ck_assert_int_eq(mig_set_target(g, map("10,0,1,1", "0,0,1,1", 2)), 0);
	ck_assert_int_eq(mig_step(g, up, &st), 0);
	ck_assert_uint_eq(st.layers_committed, 1); /* no new copy to wait for */
	ck_assert(order_loads(g, 0, 0, 0, &q));
	ck_assert(q);
	ck_assert(order_loads(g, 1, 0, 0, &q));
	ck_assert(!q);
	ck_assert(mig_worker_pending(g, 0));
	/* a READY report at the old precision does not end it */
	mig_ack(g, 0, 0, 0, MIG_READY, false);
	ck_assert(mig_worker_pending(g, 0));
	ack_all(g, 0);
	ack_all(g, 1);
	ck_assert(!mig_worker_pending(g, 0));
	ck_assert(!mig_worker_pending(g, 1));
	ck_assert_uint_eq(mig_quantized(g), 1);
	/* off: every copy exact again */
	mig_set_quantized(g, false);
	ck_assert(order_loads(g, 0, 0, 0, &q));
	ck_assert(!q);
	ack_all(g, 0);
	ck_assert_uint_eq(mig_quantized(g), 0);
	mig_free(g);
}
END_TEST

/* Applies one LOAD of layer 0 expert 3 at the given precision. */
static void
load_03(struct slots *sl, bool quantized, uint64_t id)
{
	Epmoe__SlotAssign a = EPMOE__SLOT_ASSIGN__INIT, *ap = &a;
	Epmoe__SlotOrder o = EPMOE__SLOT_ORDER__INIT;

	a.layer = 0;
	a.expert = 3;
	a.slot = 3;
	a.op = EPMOE__SLOT_OP__SLOT_OP_LOAD;
	a.source = EPMOE__WEIGHT_SOURCE__WEIGHT_SOURCE_LOCAL;
	a.quantized = quantized;
	o.order_id = id;
	o.epoch = 1;
	o.n_slots = 1;
	o.slots = &ap;
	ck_assert_int_eq(slots_apply(sl, &o), 0);
}

START_TEST(a_q8_slot_computes_close_to_the_model_and_swaps_back_while_serving)
{
	enum { T = 5, D = 64 };
	struct model *m;
	struct slots *sl;
	struct pool *pool;
	struct moe_ffn *ffn;
	char err[256], why[256];
	Epmoe__ExpertGroup g = EPMOE__EXPERT_GROUP__INIT, *gp = &g;
	Epmoe__ExpertBatch b = EPMOE__EXPERT_BATCH__INIT;
	Epmoe__SlotOrderReply rep;
	struct tmat mats[3];
	uint64_t bytes = 0, r = 12345;
	uint32_t expert = 3, count = T, rows[T];
	float weight[T], x[T * D], ref[T * D], got[T * D];
	double num = 0, den = 0;
	bool differs = false;
	int i;

	ck_assert_msg(model_load(&m, tu_data("mixtral-tiny-f32.gguf"), err, sizeof(err)) == 0,
	        "%s", err);
	ck_assert_uint_eq(m->hp.n_embd, D);
	ck_assert_int_eq(pool_new(&pool, 1), 0);
	ck_assert_int_eq(moe_ffn_new(&ffn, m, pool), 0);
	ck_assert_int_eq(slots_new(&sl, m, NULL, NULL), 0);
	load_03(sl, true, 1);
	for (i = 0; i < 1500 && slots_quantized(sl, &bytes) == 0; i++)
		usleep(10000);
	ck_assert_uint_eq(slots_quantized(sl, &bytes), 1);
	/* gate and up [128 x 64], down [64 x 128]: 68 or 136 bytes a row in
	 * Q8_0 (256 or 512 in F32) */
	ck_assert_uint_eq(bytes, 3 * 128 * 68);
	ck_assert_int_eq(slots_report(sl, &rep), 0);
	ck_assert_uint_eq(rep.n_slots, 1);
	ck_assert_int_eq(rep.slots[0]->status, EPMOE__STATUS__STATUS_OK);
	ck_assert(rep.slots[0]->quantized);

	g.expert = 3;
	g.slot = 3;
	g.n_tokens = T;
	b.layer = 0;
	b.epoch = 1;
	b.n_groups = 1;
	b.groups = &gp;
	ck_assert_int_eq(slots_check(sl, &b, mats, why, sizeof(why)), 0);
	ck_assert_int_eq(mats[0].type, DTYPE_Q8_0);
	ck_assert_int_eq(mats[2].type, DTYPE_Q8_0);
	ck_assert_uint_eq(mats[2].n_in, 128);
	for (i = 0; i < T * D; i++) {
		r = r * 6364136223846793005ull + 1442695040888963407ull;
		x[i] = (float)((double)(r >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
	}
	for (i = 0; i < T; i++) {
		rows[i] = (uint32_t)i;
		weight[i] = 1.0f;
	}
	{
		struct moe_work w = { 1, &expert, &count, NULL, rows, weight, T, T, NULL };
		ck_assert_int_eq(moe_ffn_run(ffn, 0, x, &w, ref), 0);
		w.mats = mats;
		ck_assert_int_eq(moe_ffn_run(ffn, 0, x, &w, got), 0);
	}
	for (i = 0; i < T * D; i++) {
		num += (double)(got[i] - ref[i]) * (got[i] - ref[i]);
		den += (double)ref[i] * ref[i];
		differs |= got[i] != ref[i];
	}
	/* Q8_0 keeps about 8 bits a weight: well under 2% relative error */
	ck_assert_msg(differs && den > 0 && sqrt(num / den) < 0.02,
	        "relative error %g", sqrt(num / den));

	/* back to the exact copy: the slot serves all along */
	load_03(sl, false, 2);
	for (i = 0; i < 1500 && slots_quantized(sl, NULL) > 0; i++) {
		ck_assert_int_eq(slots_check(sl, &b, mats, why, sizeof(why)), 0);
		usleep(10000);
	}
	ck_assert_uint_eq(slots_quantized(sl, NULL), 0);
	ck_assert_int_eq(slots_check(sl, &b, mats, why, sizeof(why)), 0);
	ck_assert_ptr_null(mats[0].data);
	slots_reap(sl);
	ck_assert_int_eq(slots_report(sl, &rep), 0);
	ck_assert(!rep.slots[0]->quantized);
	/* quantized again; freed with the table (a copy on the junk list too) */
	load_03(sl, true, 3);
	for (i = 0; i < 1500 && slots_quantized(sl, NULL) == 0; i++)
		usleep(10000);
	ck_assert_uint_eq(slots_quantized(sl, NULL), 1);
	slots_free(sl);
	moe_ffn_free(ffn);
	pool_free(pool);
	model_free(m);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("migrate");
	TCase *tm = tcase_create("epochs");
	TCase *tp = tcase_create("maps");

	tcase_add_test(tm, a_registered_worker_gets_its_complete_set_and_is_ready_once_loaded);
	tcase_add_test(tm, a_layer_commits_only_when_its_new_copies_are_ready);
	tcase_add_test(tm, copies_on_workers_that_are_not_up_do_not_hold_a_commit);
	tcase_add_test(tm, a_replaced_target_frees_what_it_staged_and_keeps_what_is_wanted);
	tcase_add_test(tm, a_failed_load_is_not_repeated_and_holds_its_layer);
	tcase_add_test(tm, a_new_router_starts_the_slots_epochs_again);
	tcase_add_test(tm, replicas_after_the_first_copy_are_ordered_as_q8_and_follow_the_order);
	tcase_add_test(tm, a_q8_slot_computes_close_to_the_model_and_swaps_back_while_serving);
	tcase_add_test(tp, mix_takes_the_layers_asked);
	tcase_add_test(tp, cover_gives_lost_experts_a_live_copy_and_restores_home);
	tcase_add_test(tp, replica_order_is_kept_as_given);
	suite_add_tcase(s, tm);
	suite_add_tcase(s, tp);
	return s;
}

int
main(void)
{
	return tu_run(suite());
}
