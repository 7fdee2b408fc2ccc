/* LLEP planner (server/llep.h) against a naive reference on random
 * loads: the same chunks as a plain transcription of balancing.md §4.2
 * (which recomputes every worker's effective load from scratch and picks
 * helpers by a linear scan); every token of every expert assigned exactly
 * once, in order; spills only to holders; no chunk below m_min unless it
 * is an expert's last; no worker above alpha x mean unless all holders
 * are full; skipped (everything native) when max/mean < lambda.  And the
 * cache of borrowed experts LLEP spills to without replicas (borrow.h). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "borrow.h"
#include "err.h"
#include "llep.h"
#include "placement.h"
#include "rng.h"
#include "testutil.h"

enum { MAXE = 64, MAXP = 16 };

/* The reference: §4.2 line by line, O(E^2 P^2), no sorting helpers. */
static uint32_t
naive(const uint32_t *load, uint32_t E, uint32_t P, const uint32_t *nat,
        const bool *holds, double alpha, double lambda, uint32_t m,
        struct llep_chunk *out)
{
	int64_t asg[MAXP] = { 0 }, nl[MAXP] = { 0 };
	bool done[MAXE] = { false };
	uint64_t tot = 0, mx = 0;
	uint32_t n = 0;
	int64_t cap;

	for (uint32_t e = 0; e < E; e++) {
		nl[nat[e]] += load[e];
		tot += load[e];
	}
	for (uint32_t p = 0; p < P; p++)
		if ((uint64_t)nl[p] > mx)
			mx = (uint64_t)nl[p];
	cap = (int64_t)(alpha * (double)tot / P);
	if (cap < 1)
		cap = 1;
	for (uint32_t k = 0; k < E; k++) {
		uint32_t e = E;
		int64_t eff[MAXP], L, off = 0, r;
		bool other = false;
		/* the heaviest expert not yet done, lowest index first */
		for (uint32_t i = 0; i < E; i++)
			if (!done[i] && (e == E || load[i] > load[e]))
				e = i;
		done[e] = true;
		if ((L = load[e]) == 0)
			continue;
		/* pending = native load of experts not yet done */
		for (uint32_t p = 0; p < P; p++) {
			eff[p] = asg[p];
			for (uint32_t i = 0; i < E; i++)
				if (!done[i] && nat[i] == p)
					eff[p] += load[i];
			if (p != nat[e] && holds[e * P + p])
				other = true;
		}
		if (tot == 0 || (double)mx * P / (double)tot < lambda || !other ||
		        cap - eff[nat[e]] >= L) {
			out[n++] = (struct llep_chunk){ e, nat[e], 0, (uint32_t)L };
			asg[nat[e]] += L;
			continue;
		}
		if (cap - eff[nat[e]] > 0) {
			off = cap - eff[nat[e]];
			out[n++] = (struct llep_chunk){ e, nat[e], 0, (uint32_t)off };
			asg[nat[e]] += off;
			eff[nat[e]] += off;
		}
		for (r = L - off; r > 0;) {
			bool tried[MAXP] = { false }, placed = false;
			int64_t first = -1;
			for (;;) {
				int64_t o = -1;
				for (uint32_t p = 0; p < P; p++)
					if (p != nat[e] && holds[e * P + p] && !tried[p] &&
					        (o < 0 || (eff[p] < 0 ? 0 : eff[p]) <
					                (eff[o] < 0 ? 0 : eff[o])))
						o = p;
				if (o < 0)
					break;
				if (first < 0)
					first = o;
				tried[o] = true;
				int64_t c = cap - eff[o] < r ? cap - eff[o] : r;
				if (c <= 0 || (c < m && r > c))
					continue;
				out[n++] = (struct llep_chunk){ e, (uint32_t)o, (uint32_t)off,
					(uint32_t)(off + c) };
				asg[o] += c;
				eff[o] += c;
				off += c;
				r -= c;
				placed = true;
				break;
			}
			if (!placed) {
				out[n++] = (struct llep_chunk){ e, (uint32_t)first, (uint32_t)off,
					(uint32_t)(off + r) };
				asg[first] += r;
				r = 0;
			}
		}
	}
	return n;
}

START_TEST(plans_equal_the_naive_reference_on_random_loads)
{
	uint64_t rs = 1234;
	static struct llep_chunk got[2 * MAXE * MAXP], want[2 * MAXE * MAXP];
	uint32_t load[MAXE], nat[MAXE];
	bool holds[MAXE * MAXP];
	int spilled = 0, skipped_n = 0;

	for (int it = 0; it < 400; it++) {
		uint32_t P = 2 + (uint32_t)(rng_splitmix64(&rs) % 7);
		uint32_t E = P * (1 + (uint32_t)(rng_splitmix64(&rs) % 6));
		struct llep_cfg cfg = { .alpha = 1.0 + (double)(rng_splitmix64(&rs) % 3) * 0.1,
			.lambda = 1.0 + (double)(rng_splitmix64(&rs) % 4) * 0.2,
			.m_min = 1 + (uint32_t)(rng_splitmix64(&rs) % 12) };
		bool all = it % 3 == 0, skipped;
		uint32_t n, nn, hot = (uint32_t)(rng_splitmix64(&rs) % E);

		for (uint32_t e = 0; e < E; e++) {
			uint32_t r = (uint32_t)(rng_splitmix64(&rs) % 100);
			load[e] = e == hot ? r * 5 : (r < 20 ? 0 : r);
			nat[e] = e / (E / P);
			for (uint32_t p = 0; p < P; p++)
				holds[e * P + p] = p == nat[e] || all ||
				        rng_splitmix64(&rs) % 3 == 0;
		}
		ck_assert_int_eq(llep_plan(load, E, P, nat, holds, &cfg, got, &n, &skipped), 0);
		nn = naive(load, E, P, nat, holds, cfg.alpha, cfg.lambda, cfg.m_min, want);
		ck_assert_uint_eq(n, nn);
		ck_assert_msg(memcmp(got, want, n * sizeof(*got)) == 0, "iteration %d differs", it);
		skipped_n += skipped;
		/* invariants */
		for (uint32_t e = 0; e < E; e++) {
			uint32_t next = 0, cnt = 0;
			for (uint32_t i = 0; i < n; i++) {
				if (got[i].expert != e)
					continue;
				ck_assert_uint_eq(got[i].start, next);
				ck_assert_uint_gt(got[i].end, got[i].start);
				ck_assert(holds[e * P + got[i].worker]);
				next = got[i].end;
				cnt++;
			}
			ck_assert_uint_eq(next, load[e]);
			spilled += cnt > 1;
		}
		for (uint32_t i = 0; i < n; i++) {
			bool last = i + 1 == n || got[i + 1].expert != got[i].expert;
			if (got[i].worker != nat[got[i].expert] && !last)
				ck_assert_uint_ge(got[i].end - got[i].start, cfg.m_min);
		}
	}
	/* the random cases exercised both branches */
	ck_assert_int_gt(spilled, 50);
	ck_assert_int_gt(skipped_n, 10);
}
END_TEST

START_TEST(a_hot_expert_spills_to_its_copies_down_to_the_cap)
{
	/* 4 workers, 8 experts, expert 0 (worker 0) takes 400 of 520 tokens,
	 * with copies on every worker */
	uint32_t load[8] = { 400, 20, 20, 20, 20, 20, 10, 10 }, nat[8], wl[4] = { 0 };
	bool holds[8 * 4];
	struct llep_chunk c[64];
	struct llep_cfg cfg = { .alpha = 1.0, .lambda = 1.3, .m_min = 8 };
	uint32_t n;
	bool skipped;

	for (uint32_t e = 0; e < 8; e++) {
		nat[e] = e / 2;
		for (uint32_t p = 0; p < 4; p++)
			holds[e * 4 + p] = e == 0 || p == nat[e];
	}
	ck_assert(llep_ratio(load, 8, 4, nat) > 3.0);
	ck_assert_int_eq(llep_plan(load, 8, 4, nat, holds, &cfg, c, &n, &skipped), 0);
	ck_assert(!skipped);
	for (uint32_t i = 0; i < n; i++)
		wl[c[i].worker] += c[i].end - c[i].start;
	/* cap = 130 tokens a worker: every worker at 130 */
	for (uint32_t p = 0; p < 4; p++)
		ck_assert_uint_eq(wl[p], 130);
	/* without copies nothing moves */
	for (uint32_t p = 1; p < 4; p++)
		holds[p] = false;
	ck_assert_int_eq(llep_plan(load, 8, 4, nat, holds, &cfg, c, &n, &skipped), 0);
	for (uint32_t i = 0; i < n; i++)
		ck_assert_uint_eq(c[i].worker, nat[c[i].expert]);
	ck_assert_int_eq(llep_plan(load, 8, 0, nat, NULL, &cfg, c, &n, NULL), EPMOE_EINVAL);
}
END_TEST

/* LLEP's cache of borrowed experts (server/borrow.h): a persisting skew
 * borrows the busiest worker's hottest expert onto the least-loaded live
 * worker, as an extra copy; a balanced load borrows nothing; a worker at
 * its cap drops its least recently used loan; non-members never get one. */
START_TEST(a_persisting_skew_borrows_the_hot_expert_and_a_full_worker_drops_its_lru)
{
	enum { E = 8, W = 4 };
	struct placement *cur, *np, *np2;
	struct borrow *bw;
	struct borrow_step st;
	double w[E] = { 100, 10, 10, 10, 10, 10, 10, 10 }, flat[E];
	bool in[W] = { true, true, true, true };

	for (int e = 0; e < E; e++)
		flat[e] = 10;
	ck_assert_int_eq(placement_contiguous(&cur, 1, E, W), 0);
	ck_assert_int_eq(borrow_new(&bw, W, 1), 0);
	/* the map edit borrowing uses: no second copy on a holder, never an
	 * expert's last copy */
	ck_assert_int_eq(placement_copy_edit(&np, cur, 0, 0, 0, true), EPMOE_EINVAL);
	ck_assert_int_eq(placement_copy_edit(&np, cur, 0, 0, 0, false), EPMOE_EINVAL);
	ck_assert_int_eq(placement_copy_edit(&np, cur, 0, 0, 1, false), EPMOE_EINVAL);
	/* balanced: nothing */
	ck_assert_int_eq(borrow_plan(bw, cur, flat, NULL, 1.3, 1, &np, &st), 0);
	ck_assert_ptr_null(np);
	ck_assert_int_eq(st.layer, -1);
	/* expert 0 (worker 0) hot: a copy on worker 1, the first least loaded */
	ck_assert_int_eq(borrow_plan(bw, cur, w, in, 1.3, 2, &np, &st), 0);
	ck_assert_ptr_nonnull(np);
	ck_assert_int_eq(st.expert, 0);
	ck_assert_int_eq(st.from, 0);
	ck_assert_int_eq(st.to, 1);
	ck_assert_int_eq(st.evicted_layer, -1);
	ck_assert_uint_eq(placement_expert_copies(np, 0, 0), 2);
	ck_assert(placement_has(np, 0, 0, 0) && placement_has(np, 0, 0, 1));
	ck_assert_uint_eq(borrow_count(bw), 1);
	/* now expert 4 (worker 2) is hot and worker 1 the least loaded: at
	 * its cap of 1 it drops expert 0's copy (no longer hot) for it */
	double w2[E] = { 10, 30, 10, 10, 100, 10, 20, 20 };
	ck_assert_int_eq(borrow_plan(bw, np, w2, in, 1.3, 3, &np2, &st), 0);
	ck_assert_ptr_nonnull(np2);
	ck_assert_int_eq(st.expert, 4);
	ck_assert_int_eq(st.from, 2);
	ck_assert_int_eq(st.to, 1);
	ck_assert_int_eq(st.evicted_expert, 0);
	ck_assert_uint_eq(placement_expert_copies(np2, 0, 0), 1);
	ck_assert(placement_has(np2, 0, 0, 0));
	ck_assert(placement_has(np2, 0, 4, 2) && placement_has(np2, 0, 4, 1));
	/* the expert's own copy stays first */
	ck_assert_int_eq(placement_slot_worker(np2, 0,
	        (uint32_t)placement_expert_slot(np2, 0, 4, 0)), 2);
	ck_assert_uint_eq(borrow_count(bw), 1);
	placement_free(np2);
	/* worker 1 not a member: the copy goes to the least loaded member,
	 * worker 0 (35 against 40 on worker 3) */
	in[1] = false;
	ck_assert_int_eq(borrow_plan(bw, np, w2, in, 1.3, 4, &np2, &st), 0);
	ck_assert_ptr_nonnull(np2);
	ck_assert_int_eq(st.to, 0);
	ck_assert(!placement_has(np2, 0, 4, 1));
	placement_free(np2);
	placement_free(np);
	placement_free(cur);
	borrow_free(bw);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("llep");
	TCase *t = tcase_create("plan");

	tcase_add_test(t, plans_equal_the_naive_reference_on_random_loads);
	tcase_add_test(t, a_hot_expert_spills_to_its_copies_down_to_the_cap);
	tcase_add_test(t, a_persisting_skew_borrows_the_hot_expert_and_a_full_worker_drops_its_lru);
	suite_add_tcase(s, t);
	return tu_run(s);
}
