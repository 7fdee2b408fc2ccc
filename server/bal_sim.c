/* `epmoe bench balance`: replays a routing trace (--record-routing)
 * through the balancer's own placement code (eplb.h, llep.h, placement.h)
 * for W simulated workers on H hosts with R redundant slots a layer, and
 * prints, for balance off / eplb / llep / all, worker max/mean token load
 * per step (mean, p50, p99, max), re-placements and weight copies moved,
 * and a modelled step time: the sum over layers of the busiest worker's
 * tokens (a layer waits for its slowest worker), relative to off.
 * EPLB here is what the router does: every --interval steps, when the
 * window's max/mean exceeds --threshold, a new plan from the window sums;
 * each expert's token group goes whole to its least-loaded copy (the
 * dispatcher's dynamic replica choice; plans assume copies share evenly).
 * LLEP splits each layer's hot experts over the copies that exist, as the
 * dispatcher does; alone (no EPLB replicas) it borrows copies to spill to
 * at the same interval checks, as the router does (borrow.h,
 * --llep-cache; applied at once here, after a load in the router).
 * Lives with the server code (the code it replays); the epmoe CLI calls
 * bal_sim_main.  No sockets, no threads. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balance.h"
#include "borrow.h"
#include "eplb.h"
#include "err.h"
#include "llep.h"
#include "placement.h"

int bal_sim_main(int argc, char **argv);

struct trace {
	uint32_t L, E, T;
	uint32_t *c;     /* [T][L][E] */
};

static int
trace_load(const char *path, struct trace *t)
{
	FILE *f = fopen(path, "r");
	char magic[32];
	int ver;
	size_t cap = 0, le;

	memset(t, 0, sizeof(*t));
	if (f == NULL) {
		fprintf(stderr, "epmoe bench balance: cannot open %s\n", path);
		return EPMOE_EIO;
	}
	if (fscanf(f, "%31s %d %u %u", magic, &ver, &t->L, &t->E) != 4 ||
	        strcmp(magic, BAL_TRACE_MAGIC) != 0 || ver != 1 || t->L == 0 || t->E == 0 ||
	        t->L > 4096 || t->E > 4096) {
		fprintf(stderr, "epmoe bench balance: %s is not a routing trace\n", path);
		fclose(f);
		return EPMOE_EFORMAT;
	}
	le = (size_t)t->L * t->E;
	for (;;) {
		unsigned v;
		size_t i;
		if (t->T == cap) {
			size_t nc = cap ? 2 * cap : 256;
			uint32_t *a = realloc(t->c, nc * le * sizeof(*a));
			if (a == NULL || nc > 1000000) {
				free(a ? a : t->c);
				fclose(f);
				return EPMOE_ENOMEM;
			}
			t->c = a;
			cap = nc;
		}
		for (i = 0; i < le && fscanf(f, "%u", &v) == 1; i++)
			t->c[(size_t)t->T * le + i] = v;
		if (i == 0)
			break;
		if (i != le) {
			fprintf(stderr, "epmoe bench balance: %s: step %u is cut short\n", path, t->T);
			fclose(f);
			return EPMOE_EFORMAT;
		}
		t->T++;
	}
	fclose(f);
	if (t->T == 0) {
		fprintf(stderr, "epmoe bench balance: %s has no steps\n", path);
		return EPMOE_EFORMAT;
	}
	return 0;
}

struct sim_cfg {
	uint32_t W, H, R, interval, window;
	double threshold, expert_mb;
	struct llep_cfg llep;
	uint32_t llep_cache;  /* borrowed copies per worker (llep alone) */
};

struct sim_out {
	double *ratio;       /* [T] per step */
	double time;         /* sum over steps of sum_l max_w */
	uint64_t replacements, moved;
};

static int
dcmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Worker tokens of one layer of one step under p (copies share evenly),
 * or split by LLEP over the copies. */
static void
layer_loads(const struct placement *p, uint32_t l, const uint32_t *cnt, bool llep,
        const struct llep_cfg *lc, double *wl, uint32_t *native, bool *holds,
        struct llep_chunk *ch)
{
	uint32_t E = p->n_expert, W = p->n_worker, n = 0;
	bool skipped = true;

	memset(wl, 0, W * sizeof(*wl));
	if (llep) {
		memset(holds, 0, (size_t)E * W * sizeof(*holds));
		for (uint32_t e = 0; e < E; e++)
			for (uint32_t r = 0; r < placement_expert_copies(p, l, e); r++) {
				int32_t w = placement_slot_worker(p, l,
				        (uint32_t)placement_expert_slot(p, l, e, r));
				if (r == 0)
					native[e] = (uint32_t)w;
				holds[(size_t)e * W + (uint32_t)w] = true;
			}
		if (llep_plan(cnt, E, W, native, holds, lc, ch, &n, &skipped) == 0 && !skipped) {
			for (uint32_t i = 0; i < n; i++)
				wl[ch[i].worker] += ch[i].end - ch[i].start;
			return;
		}
	}
	/* as the dispatcher: each expert's group whole to one copy, the
	 * least loaded so far (dynamic choice, in expert order) */
	for (uint32_t e = 0; e < E; e++) {
		uint32_t nc = placement_expert_copies(p, l, e), best = UINT32_MAX;
		for (uint32_t r = 0; r < nc; r++) {
			uint32_t w = (uint32_t)placement_slot_worker(p, l,
			        (uint32_t)placement_expert_slot(p, l, e, r));
			if (best == UINT32_MAX || wl[w] < wl[best])
				best = w;
		}
		wl[best] += cnt[e];
	}
}

static int
simulate(const struct trace *t, const struct sim_cfg *c, bool eplb, bool llep,
        struct sim_out *o)
{
	uint32_t L = t->L, E = t->E, W = c->W, S;
	size_t le = (size_t)L * E;
	uint32_t *counts = calloc(W, sizeof(*counts));
	double *win = calloc(le, sizeof(*win)), *wl = calloc(W, sizeof(*wl));
	int32_t *p2l;
	uint32_t *native = calloc(E, sizeof(*native));
	bool *holds = calloc((size_t)E * W, sizeof(*holds));
	struct llep_chunk *ch = calloc(2 * (size_t)E * W, sizeof(*ch));
	struct placement *p = NULL;
	struct borrow *bw = NULL;
	char err[128];
	int rc = EPMOE_ENOMEM;

	S = E + c->R > W ? E + c->R : W;
	S = (S + W - 1) / W * W;
	p2l = malloc((size_t)L * S * sizeof(*p2l));
	memset(o, 0, sizeof(*o));
	o->ratio = calloc(t->T, sizeof(*o->ratio));
	if (!counts || !win || !wl || !p2l || !native || !holds || !ch || !o->ratio)
		goto out;
	if (llep && !eplb && c->llep_cache > 0 && (rc = borrow_new(&bw, W, c->llep_cache)) != 0)
		goto out;
	for (uint32_t w = 0; w < W; w++)
		counts[w] = E / W + (w < E % W);
	if ((rc = placement_from_counts(&p, L, E, counts, W, err, sizeof(err))) != 0)
		goto out;
	for (uint32_t s = 0; s < t->T; s++) {
		const uint32_t *cs = t->c + (size_t)s * le;
		double smax = 0, stot = 0;

		for (size_t i = 0; i < le; i++) {
			win[i] += cs[i];
			if (s >= c->window)
				win[i] -= t->c[(size_t)(s - c->window) * le + i];
		}
		for (uint32_t l = 0; l < L; l++) {
			double mx = 0, tot = 0;
			layer_loads(p, l, cs + (size_t)l * E, llep, &c->llep, wl, native, holds, ch);
			for (uint32_t w = 0; w < W; w++) {
				tot += wl[w];
				if (wl[w] > mx)
					mx = wl[w];
			}
			smax += mx;
			stot += tot / W;
		}
		o->ratio[s] = stot > 0 ? smax / stot : 1.0;
		o->time += smax;
		if (bw && (s + 1) % c->interval == 0 &&
		        eplb_worker_ratio(p, win, NULL) > c->llep.lambda) {
			struct placement *np;
			struct borrow_step bs;
			if ((rc = borrow_plan(bw, p, win, NULL, c->llep.lambda, s, &np, &bs)) != 0)
				goto out;
			if (np) {
				placement_free(p);
				p = np;
				o->replacements++;
				o->moved++;
			}
		}
		if (eplb && (s + 1) % c->interval == 0 &&
		        eplb_worker_ratio(p, win, NULL) > c->threshold) {
			struct placement *np;
			uint64_t mv = 0;
			if ((rc = eplb_rebalance(win, L, E, S, 1, c->H, W, p2l, NULL)) != 0 ||
			        (rc = eplb_to_placement(p2l, L, E, S, c->H, W, p, &np, &mv)) != 0)
				goto out;
			if (mv > 0 && eplb_worker_ratio(np, win, NULL) < 0.97 * eplb_worker_ratio(p, win, NULL)) {
				placement_free(p);
				p = np;
				o->replacements++;
				o->moved += mv;
			} else {
				placement_free(np);
			}
		}
	}
	rc = 0;
out:
	placement_free(p);
	borrow_free(bw);
	free(counts);
	free(win);
	free(wl);
	free(p2l);
	free(native);
	free(holds);
	free(ch);
	return rc;
}

static void
usage(FILE *f)
{
	fprintf(f, "usage: epmoe bench balance --trace FILE [--workers W] [--hosts H]\n"
	           "                           [--redundant R] [options]\n"
	           "Replays a routing trace (epmoe-router --record-routing FILE) through\n"
	           "the router's placement code for W simulated workers and prints worker\n"
	           "max/mean per step, re-placements, copies moved and a modelled step time\n"
	           "for balance off, eplb, llep and all.\n"
	           "  --workers W        simulated workers, 1..1024 (default 4)\n"
	           "  --hosts H          hosts, divides W (default 1)\n"
	           "  --redundant R      redundant slots a layer (default W)\n"
	           "  --interval N       steps between EPLB checks (default 64)\n"
	           "  --window N         steps of load kept (default 256)\n"
	           "  --threshold X      EPLB above this max/mean (default 1.10)\n"
	           "  --llep-lambda X    (default 1.3)   --llep-alpha X (default 1.0)\n"
	           "  --llep-min-chunk N (default 4)   --llep-cache N (default 2: experts a\n"
	           "                     worker may borrow for llep alone; 0 = none)\n"
	           "  --expert-mb X      MiB of one expert, for bytes moved (default 1)\n");
}

int
bal_sim_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "trace", required_argument, NULL, 't' },
		{ "workers", required_argument, NULL, 'w' },
		{ "hosts", required_argument, NULL, 'H' },
		{ "redundant", required_argument, NULL, 'r' },
		{ "interval", required_argument, NULL, 'i' },
		{ "window", required_argument, NULL, 'n' },
		{ "threshold", required_argument, NULL, 'x' },
		{ "llep-lambda", required_argument, NULL, 'l' },
		{ "llep-alpha", required_argument, NULL, 'a' },
		{ "llep-min-chunk", required_argument, NULL, 'm' },
		{ "llep-cache", required_argument, NULL, 'c' },
		{ "expert-mb", required_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct sim_cfg c = { .W = 4, .H = 1, .interval = 64, .window = 256, .threshold = 1.10,
		.expert_mb = 1.0, .llep = { .alpha = 1.0, .lambda = 1.3, .m_min = 4 },
		.llep_cache = 2 };
	const char *path = NULL, *names[4] = { "off", "eplb", "llep", "all" };
	long redundant = -1;
	struct trace t;
	double base = 0;
	int ch;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		char *end = NULL;
		double v = optarg ? strtod(optarg, &end) : 0;
		if (ch != 't' && ch != 'h' && (end == optarg || *end != '\0' || !(v >= 0))) {
			fprintf(stderr, "epmoe bench balance: bad number '%s'\n", optarg);
			return 2;
		}
		switch (ch) {
		case 't': path = optarg; break;
		case 'w': c.W = (uint32_t)v; break;
		case 'H': c.H = (uint32_t)v; break;
		case 'r': redundant = (long)v; break;
		case 'i': c.interval = (uint32_t)v; break;
		case 'n': c.window = (uint32_t)v; break;
		case 'x': c.threshold = v; break;
		case 'l': c.llep.lambda = v; break;
		case 'a': c.llep.alpha = v; break;
		case 'm': c.llep.m_min = (uint32_t)v; break;
		case 'c': c.llep_cache = (uint32_t)v; break;
		case 'b': c.expert_mb = v; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (path == NULL || c.W == 0 || c.W > 1024 || c.H == 0 || c.W % c.H != 0 ||
	        c.interval == 0 || c.window == 0) {
		fprintf(stderr, "epmoe bench balance: need --trace, 1 <= W <= 1024, H dividing W, "
		                "interval and window >= 1\n");
		usage(stderr);
		return 2;
	}
	c.R = redundant >= 0 ? (uint32_t)redundant : c.W;
	if (trace_load(path, &t) != 0)
		return 1;
	printf("balance simulation: %u steps, %u layers, %u experts; %u workers on %u hosts, %u redundant slots a layer\n",
	        t.T, t.L, t.E, c.W, c.H, c.R);
	printf("%-5s %10s %10s %10s %10s %8s %12s %12s %10s\n", "mode", "mean", "p50", "p99",
	        "max", "replace", "copies", "moved_MiB", "step_time");
	for (int m = 0; m < 4; m++) {
		struct sim_out o;
		double sum = 0, *sorted;
		if (simulate(&t, &c, m & 1, m & 2, &o) != 0) {
			fprintf(stderr, "epmoe bench balance: simulation failed\n");
			free(o.ratio);
			free(t.c);
			return 1;
		}
		if ((sorted = malloc(t.T * sizeof(double))) == NULL) {
			free(o.ratio);
			free(t.c);
			return 1;
		}
		memcpy(sorted, o.ratio, t.T * sizeof(double));
		qsort(sorted, t.T, sizeof(double), dcmp);
		for (uint32_t s = 0; s < t.T; s++)
			sum += sorted[s];
		if (m == 0)
			base = o.time;
		printf("%-5s %10.3f %10.3f %10.3f %10.3f %8llu %12llu %12.1f %10.3f\n", names[m],
		        sum / t.T, sorted[t.T / 2], sorted[(size_t)(0.99 * (t.T - 1))],
		        sorted[t.T - 1], (unsigned long long)o.replacements,
		        (unsigned long long)o.moved, (double)o.moved * c.expert_mb,
		        base > 0 ? o.time / base : 1.0);
		free(sorted);
		free(o.ratio);
	}
	printf("(max/mean: busiest worker's tokens over the mean, summed over layers, per step;\n"
	       " step_time: modelled, sum over layers of the busiest worker's tokens, / off)\n");
	free(t.c);
	return 0;
}
