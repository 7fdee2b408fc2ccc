/* The distributed expert path end to end on 127.0.0.1: real workers (as
 * threads of this process, or as epmoe-worker children from EPMOE_BIN), a
 * real cluster and the dispatch backend.
 *
 * Numerics: worker and local mode run the same expert code (moe_ffn_run),
 * so a layer's expert output equals moe_local's bit for bit for every
 * token whose partial sums add up in local mode's order, and within 1e-5
 * for the others, for random routing (tokens with no expert, experts on
 * one worker, on several, the same expert twice); engine logits with
 * workers equal the local engine's bit for bit on every test model with
 * 1, 2 and 3 workers.  The
 * worker computes and combines a hand-built batch correctly and answers
 * garbage, truncated frames, stale epochs / slots and bad shapes with
 * error statuses while it keeps serving.  Faults: a stopped worker, a
 * SIGKILLed worker process and a worker that never answers make run()
 * return EPMOE_EUNAVAIL within the deadline with cluster_ready() false,
 * and the path works again once a worker is back.  The last test prints
 * the layer round trip on loopback (d = 1024, T = 1 and 16, 2 worker
 * processes): it measures, it asserts only correctness. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>

#include "cluster.h"
#include "dispatch.h"
#include "engine.h"
#include "err.h"
#include "mkmodel.h"
#include "model.h"
#include "moe.h"
#include "placement.h"
#include "pool.h"
#include "spawn.h"
#include "testutil.h"
#include "wire.h"
#include "wire_nng.h"
#include "worker.h"

#define TOL_LAYER 1e-5f
/* The test models route top-2 and workers hold contiguous blocks of
 * experts: the router's sum of the workers' partial sums is then the sum
 * local mode forms, term for term, and both run the same expert code
 * (moe_ffn_run), so the logits are equal bit for bit. */
#define TOL_LOGITS 0.0f
#define GREEDY_MARGIN 1e-3f
#define MAX_W 3

static const char *const models[] = { "mixtral-tiny-f32", "qwen2moe-tiny-f32",
	"olmoe-tiny-f32" };

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static struct model *
load_model(const char *name)
{
	struct model *m;
	char path[256], err[512];

	snprintf(path, sizeof(path), "%s.gguf", name);
	ck_assert_msg(model_load(&m, tu_data(path), err, sizeof(err)) == 0, "%s", err);
	return m;
}

/* ---- workers as threads ---- */

struct wthread {
	pthread_t th;
	volatile sig_atomic_t stop;
	struct worker *w;
	int rc;
	bool running;
};

static void *
wthread_main(void *arg)
{
	struct wthread *t = arg;

	t->rc = worker_serve(t->w, &t->stop);
	return NULL;
}

static void
wthread_start(struct wthread *t, const char *router, const struct model *m,
        const char *id)
{
	struct worker_cfg cfg = { .router_url = router, .model = m,
		.listen_url = "tcp://127.0.0.1:0", .id = id, .n_threads = 1,
		.rpc_timeout_ms = 1000 };
	char err[256];

	memset(t, 0, sizeof(*t));
	ck_assert_msg(worker_new(&t->w, &cfg, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(pthread_create(&t->th, NULL, wthread_main, t), 0);
	t->running = true;
}

static void
wthread_stop(struct wthread *t)
{
	if (!t->running)
		return;
	t->stop = 1;
	pthread_join(t->th, NULL);
	ck_assert_int_eq(t->rc, 0);
	worker_free(t->w);
	t->running = false;
}

static void
wait_ready(struct cluster *c, bool want)
{
	for (int i = 0; i < 1500; i++) {
		if (cluster_ready(c) == want)
			return;
		nng_msleep(10);
	}
	ck_abort_msg("cluster_ready() did not become %d in 15 s", want);
}

/* A cluster with W worker threads and a dispatch backend. */
struct fix {
	struct model *m;
	struct cluster *c;
	struct wthread w[MAX_W];
	uint32_t W;
	struct moe_backend *be;
};

/* placement_file / experts_per_worker may be NULL (contiguous over W). */
static void
fix_start_placed(struct fix *f, const char *model, uint32_t W,
        uint32_t deadline_ms, const char *placement_file,
        const char *experts_per_worker)
{
	struct cluster_cfg cc = { .control_url = "tcp://127.0.0.1:0",
		.n_workers = W, .heartbeat_ms = 200, .heartbeat_timeout_ms = 5000,
		.no_degraded = true, /* failures here stay visible */
		.placement_file = placement_file,
		.experts_per_worker = experts_per_worker };
	struct dispatch_cfg dc = { .timeout_ms = deadline_ms };
	char err[256], id[32];

	memset(f, 0, sizeof(*f));
	f->m = load_model(model);
	f->W = W;
	cc.model = f->m;
	ck_assert_msg(cluster_new(&f->c, &cc, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(cluster_start(f->c), 0);
	for (uint32_t i = 0; i < W; i++) {
		snprintf(id, sizeof(id), "w%u", i);
		wthread_start(&f->w[i], cluster_control_url(f->c), f->m, id);
	}
	wait_ready(f->c, true);
	/* ready needs one live copy of each expert: wait for every worker */
	for (int i = 0; i < 1500 && cluster_n_live(f->c) < W; i++)
		nng_msleep(10);
	ck_assert_uint_eq(cluster_n_live(f->c), W);
	ck_assert_int_eq(dispatch_new(&f->be, f->c, f->m, &dc), 0);
}

static void
fix_start(struct fix *f, const char *model, uint32_t W, uint32_t deadline_ms)
{
	fix_start_placed(f, model, W, deadline_ms, NULL, NULL);
}

static void
fix_stop(struct fix *f)
{
	f->be->free(f->be);
	for (uint32_t i = 0; i < f->W; i++)
		wthread_stop(&f->w[i]);
	cluster_free(f->c);
	model_free(f->m);
}

/* ---- routing ---- */

struct routing {
	uint32_t T;
	uint32_t off[65];
	int32_t expert[64 * 16];
	float weight[64 * 16];
	struct moe_assign a;
};

/* Random routing over E experts; tokens 0..4 are fixed cases: no expert,
 * two experts of one worker block, the first and last expert, one expert
 * twice, every expert. */
static void
make_routing(struct routing *r, uint32_t T, uint32_t E, unsigned seed)
{
	uint32_t n = 0;

	ck_assert_uint_le(T, 64);
	srand(seed);
	r->T = T;
	for (uint32_t t = 0; t < T; t++) {
		r->off[t] = n;
		if (t == 0) {
			/* nothing */
		} else if (t == 1) {
			r->expert[n++] = 0;
			r->expert[n++] = 1;
		} else if (t == 2) {
			r->expert[n++] = 0;
			r->expert[n++] = (int32_t)E - 1;
		} else if (t == 3) {
			r->expert[n++] = 2;
			r->expert[n++] = 2;
		} else if (t == 4) {
			for (uint32_t e = 0; e < E; e++)
				r->expert[n++] = (int32_t)(E - 1 - e);
		} else {
			uint32_t k = (uint32_t)rand() % 4;
			bool used[64] = { false };
			for (uint32_t i = 0; i < k; i++) {
				uint32_t e = (uint32_t)rand() % E;
				if (used[e])
					continue;
				used[e] = true;
				r->expert[n++] = (int32_t)e;
			}
		}
	}
	r->off[T] = n;
	for (uint32_t i = 0; i < n; i++)
		r->weight[i] = 0.05f + (float)rand() / (float)RAND_MAX;
	r->a.n_tok = T;
	r->a.off = r->off;
	r->a.expert = r->expert;
	r->a.weight = r->weight;
}

/* r's first two experts of each token: a top-2 routing, where the worker
 * combines a token's terms and so adds them as local mode does. */
static void
routing_top2(struct routing *r2, const struct routing *r)
{
	uint32_t n = 0;

	r2->T = r->T;
	for (uint32_t t = 0; t < r->T; t++) {
		r2->off[t] = n;
		for (uint32_t i = r->off[t]; i < r->off[t + 1] && i < r->off[t] + 2; i++) {
			r2->expert[n] = r->expert[i];
			r2->weight[n++] = r->weight[i];
		}
	}
	r2->off[r->T] = n;
	r2->a.n_tok = r->T;
	r2->a.off = r2->off;
	r2->a.expert = r2->expert;
	r2->a.weight = r2->weight;
}

static float *
random_rows(uint32_t T, uint32_t d, unsigned seed)
{
	float *x = malloc((size_t)T * d * sizeof(float));

	srand(seed);
	for (size_t i = 0; i < (size_t)T * d; i++)
		x[i] = 2.0f * (float)rand() / (float)RAND_MAX - 1.0f;
	return x;
}

static float
max_diff(const float *a, const float *b, size_t n)
{
	float md = 0;

	for (size_t i = 0; i < n; i++) {
		float d = fabsf(a[i] - b[i]);
		ck_assert_msg(isfinite(a[i]), "non-finite output at %zu", i);
		if (d > md)
			md = d;
	}
	return md;
}

/* Runs the local backend for reference. */
static void
local_layer(const struct model *m, uint32_t layer, const float *x,
        const struct moe_assign *a, float *out)
{
	struct pool *p;
	struct moe_backend *lb;

	ck_assert_int_eq(pool_new(&p, 1), 0);
	ck_assert_int_eq(moe_local_new(&lb, m, p), 0);
	ck_assert_int_eq(lb->run(lb, layer, x, a, out), 0);
	lb->free(lb);
	pool_free(p);
}

START_TEST(layer_output_matches_local_experts)
{
	struct fix f;
	struct routing r, r2;
	uint32_t W = (uint32_t)_i + 1, T = 37;
	struct dispatch_stats st;

	fix_start(&f, models[0], W, 5000);
	uint32_t d = f.m->hp.n_embd, E = f.m->hp.n_expert;
	float *x = random_rows(T, d, 11), *want = malloc((size_t)T * d * 4);
	float *got = malloc((size_t)T * d * 4), *again = malloc((size_t)T * d * 4);
	float *want2 = malloc((size_t)T * d * 4), *got2 = malloc((size_t)T * d * 4);

	make_routing(&r, T, E, 5 + W);
	routing_top2(&r2, &r);
	for (uint32_t l = 0; l < f.m->hp.n_layer; l++) {
		local_layer(f.m, l, x, &r.a, want);
		memset(got, 0x7f, (size_t)T * d * 4); /* must be overwritten */
		ck_assert_int_eq(f.be->run(f.be, l, x, &r.a, got), 0);
		float md = max_diff(got, want, (size_t)T * d);
		ck_assert_msg(md <= TOL_LAYER, "W=%u layer %u: max |diff| %g", W, l, md);
		/* a token without experts gets zeros */
		for (uint32_t k = 0; k < d; k++)
			ck_assert(got[k] == 0.0f);
		/* same placement, same input: bit-identical */
		ck_assert_int_eq(f.be->run(f.be, l, x, &r.a, again), 0);
		ck_assert_mem_eq(got, again, (size_t)T * d * 4);
	}
	/* one message per involved worker per call; every token row once
	 * per worker that needs it */
	dispatch_stats(f.be, &st);
	ck_assert_uint_eq(st.calls, 2 * f.m->hp.n_layer);
	ck_assert_uint_eq(st.failures, 0);
	ck_assert_uint_eq(st.msgs, 2 * f.m->hp.n_layer * W);
	ck_assert_uint_eq(st.pairs, 2 * f.m->hp.n_layer * r.off[T]);
	/* a token is sent once to each worker hosting any of its experts */
	{
		const struct placement *pl = cluster_placement_acquire(f.c);
		uint64_t rows = 0;
		for (uint32_t l = 0; l < f.m->hp.n_layer; l++) {
			for (uint32_t t = 0; t < T; t++) {
				bool on[MAX_W] = { false };
				for (uint32_t i = r.off[t]; i < r.off[t + 1]; i++)
					on[placement_slot_worker(pl, l, (uint32_t)
					        placement_expert_slot(pl, l, (uint32_t)r.expert[i], 0))] = true;
				for (uint32_t w = 0; w < W; w++)
					rows += on[w];
			}
		}
		cluster_placement_release(f.c, pl);
		ck_assert_uint_eq(st.rows_sent, 2 * rows);
		ck_assert_uint_lt(st.rows_sent, st.pairs);
	}
	ck_assert_uint_gt(st.bytes_sent, st.rows_sent * d * 4);
	for (uint32_t l = 0; l < f.m->hp.n_layer; l++) {
		/* same code, same order: with at most two experts a token (more
		 * are summed by the router in a fixed order of its own, within
		 * the tolerance above), bit for bit wherever the router's sum
		 * of partial sums adds the same terms in the same order as
		 * local mode (each token's experts in id order; workers hold
		 * contiguous blocks, so that is the case unless a worker after
		 * the token's first one holds two or more of its experts) */
		local_layer(f.m, l, x, &r2.a, want2);
		ck_assert_int_eq(f.be->run(f.be, l, x, &r2.a, got2), 0);
		float md = max_diff(got2, want2, (size_t)T * d);
		ck_assert_msg(md <= TOL_LAYER, "W=%u layer %u top-2: max |diff| %g", W, l, md);
		{
			const struct placement *pl = cluster_placement_acquire(f.c);
			uint32_t same = 0;
			for (uint32_t t = 0; t < T; t++) {
				uint32_t per_w[MAX_W] = { 0 }, first = MAX_W;
				bool ok = true;
				for (uint32_t i = r2.off[t]; i < r2.off[t + 1]; i++) {
					uint32_t wk = (uint32_t)placement_slot_worker(pl, l,
					        (uint32_t)placement_expert_slot(pl, l,
					                (uint32_t)r2.expert[i], 0));
					per_w[wk]++;
					if (wk < first)
						first = wk;
				}
				for (uint32_t wk = first + 1; wk < W; wk++)
					ok = ok && per_w[wk] <= 1;
				if (!ok)
					continue;
				same++;
				ck_assert_msg(memcmp(got2 + (size_t)t * d, want2 + (size_t)t * d,
				                      d * sizeof(float)) == 0,
				        "W=%u layer %u token %u differs from local mode", W, l, t);
			}
			cluster_placement_release(f.c, pl);
			ck_assert_uint_gt(same, T / 2);
		}
	}
	/* no pairs: nothing sent, zeros out */
	{
		uint32_t off0[3] = { 0, 0, 0 };
		struct moe_assign none = { 2, off0, NULL, NULL };
		dispatch_stats_reset(f.be);
		ck_assert_int_eq(f.be->run(f.be, 0, x, &none, got), 0);
		for (size_t i = 0; i < 2 * d; i++)
			ck_assert(got[i] == 0.0f);
		dispatch_stats(f.be, &st);
		ck_assert_uint_eq(st.msgs, 0);
	}
	/* an expert out of range is the caller's error */
	r.expert[0] = (int32_t)E;
	ck_assert_int_eq(f.be->run(f.be, 0, x, &r.a, got), EPMOE_EINVAL);
	ck_assert(cluster_ready(f.c));
	free(x);
	free(want);
	free(got);
	free(again);
	free(want2);
	free(got2);
	fix_stop(&f);
}
END_TEST

START_TEST(replicas_and_uneven_blocks_serve_the_same_numbers)
{
	char path[] = "/tmp/epmoe-placement-XXXXXX";
	const char *js = "{\"layers\": [[[0, 1], [1, 0], [0, 1], [0, 1], "
	        "[0, 1], [0, 1], [0, 1], [1, 0]]]}";
	struct fix f;
	struct routing r;
	uint32_t T = 24;
	int fd = mkstemp(path);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, js, strlen(js)), (int)strlen(js));
	close(fd);
	/* every expert on both workers, two of them listed worker 1 first:
	 * one worker is enough */
	fix_start_placed(&f, models[1], 2, 3000, path, NULL);
	uint32_t d = f.m->hp.n_embd;
	float *x = random_rows(T, d, 21), *want = malloc((size_t)T * d * 4);
	float *got = malloc((size_t)T * d * 4);
	struct dispatch_stats st;

	make_routing(&r, T, f.m->hp.n_expert, 17);
	for (int pass = 0; pass < 2; pass++) {
		for (uint32_t l = 0; l < f.m->hp.n_layer; l++) {
			local_layer(f.m, l, x, &r.a, want);
			ck_assert_int_eq(f.be->run(f.be, l, x, &r.a, got), 0);
			ck_assert_float_le(max_diff(got, want, (size_t)T * d), TOL_LAYER);
		}
		dispatch_stats(f.be, &st);
		/* dynamic replica choice: the token groups are shared by both
		 * copies while both live (a message to each per layer), only
		 * worker 1 is used after worker 0 left */
		ck_assert_uint_eq(st.msgs, (pass == 0 ? 2 : 1) * f.m->hp.n_layer);
		dispatch_stats_reset(f.be);
		if (pass == 0) {
			wthread_stop(&f.w[0]);
			ck_assert(cluster_ready(f.c));
			ck_assert_uint_eq(cluster_n_live(f.c), 1);
		}
	}
	free(x);
	free(want);
	free(got);
	fix_stop(&f);
	unlink(path);

	/* uneven explicit blocks: 1 expert on worker 0, 7 on worker 1 */
	fix_start_placed(&f, models[2], 2, 3000, NULL, "1,7");
	d = f.m->hp.n_embd;
	x = random_rows(T, d, 22);
	want = malloc((size_t)T * d * 4);
	got = malloc((size_t)T * d * 4);
	for (uint32_t l = 0; l < f.m->hp.n_layer; l++) {
		local_layer(f.m, l, x, &r.a, want);
		ck_assert_int_eq(f.be->run(f.be, l, x, &r.a, got), 0);
		ck_assert_float_le(max_diff(got, want, (size_t)T * d), TOL_LAYER);
	}
	free(x);
	free(want);
	free(got);
	fix_stop(&f);
}
END_TEST

/* ---- engine logits ---- */

static size_t
parse_ids(const char *s, int32_t *out, size_t cap)
{
	size_t n = 0;
	char *end;

	while (*s && *s != '\n' && n < cap) {
		out[n++] = (int32_t)strtol(s, &end, 10);
		s = end;
		if (*s == ',')
			s++;
	}
	return n;
}

static int
argmax(const float *v, size_t n)
{
	size_t b = 0;

	for (size_t i = 1; i < n; i++)
		if (v[i] > v[b])
			b = i;
	return (int)b;
}

static float
margin(const float *v, size_t n)
{
	float a = -INFINITY, b = -INFINITY;

	for (size_t i = 0; i < n; i++) {
		if (v[i] > a) {
			b = a;
			a = v[i];
		} else if (v[i] > b) {
			b = v[i];
		}
	}
	return a - b;
}

static void
check_engine(const char *name)
{
	char f_ids[256], *txt, err[256];
	int32_t ids[64];
	size_t n_ids;
	struct engine_opts o = { .n_threads = 1 };

	snprintf(f_ids, sizeof(f_ids), "%s.ids.txt", name);
	txt = tu_read(tu_data(f_ids), NULL);
	ck_assert_ptr_nonnull(txt);
	n_ids = parse_ids(txt, ids, 64);
	free(txt);

	for (uint32_t W = 1; W <= MAX_W; W++) {
		struct fix f;
		struct engine *el, *ed;
		struct eng_seq *sl, *sd;
		float *ol, *od, md = 0;
		uint32_t V;
		int32_t tok;

		fix_start(&f, name, W, 5000);
		V = f.m->hp.n_vocab;
		ck_assert_msg(engine_new(&el, f.m, &o, err, sizeof(err)) == 0, "%s", err);
		ck_assert_msg(engine_new(&ed, f.m, &o, err, sizeof(err)) == 0, "%s", err);
		engine_set_experts(ed, f.be);
		ck_assert_int_eq(eng_seq_new(el, &sl), 0);
		ck_assert_int_eq(eng_seq_new(ed, &sd), 0);
		ol = malloc(n_ids * V * sizeof(float));
		od = malloc(n_ids * V * sizeof(float));
		{
			struct eng_item il = { .seq = sl, .tokens = ids, .n_tokens = (uint32_t)n_ids,
				.logits = ENG_LOGITS_ALL, .out = ol };
			struct eng_item id = il;
			id.seq = sd;
			id.out = od;
			ck_assert_int_eq(engine_step(el, &il, 1), 0);
			ck_assert_int_eq(engine_step(ed, &id, 1), 0);
		}
		for (size_t p = 0; p < n_ids; p++) {
			float d = max_diff(od + p * V, ol + p * V, V);
			if (d > md)
				md = d;
			if (margin(ol + p * V, V) > GREEDY_MARGIN)
				ck_assert_int_eq(argmax(od + p * V, V), argmax(ol + p * V, V));
		}
		/* decode: the local engine's greedy token fed to both */
		tok = argmax(ol + (n_ids - 1) * V, V);
		for (int g = 0; g < 6; g++) {
			struct eng_item il = { .seq = sl, .tokens = &tok, .n_tokens = 1,
				.logits = ENG_LOGITS_LAST, .out = ol, .decode = true };
			struct eng_item id = il;
			id.seq = sd;
			id.out = od;
			ck_assert_int_eq(engine_step(el, &il, 1), 0);
			ck_assert_int_eq(engine_step(ed, &id, 1), 0);
			float d = max_diff(od, ol, V);
			if (d > md)
				md = d;
			if (margin(ol, V) > GREEDY_MARGIN)
				ck_assert_int_eq(argmax(od, V), argmax(ol, V));
			tok = argmax(ol, V);
		}
		ck_assert_msg(md <= TOL_LOGITS, "%s with %u workers: max |logit diff| %g",
		        name, W, md);
		free(ol);
		free(od);
		eng_seq_free(sl);
		eng_seq_free(sd);
		engine_free(ed);
		engine_free(el);
		fix_stop(&f);
	}
}

START_TEST(engine_logits_with_workers_match_local)
{
	check_engine(models[_i]);
}
END_TEST

/* ---- the worker's data socket, by hand ---- */

struct batch {
	Epmoe__ExpertBatch b;
	Epmoe__ExpertGroup g[2];
	Epmoe__ExpertGroup *gp[2];
	float weights[4];
	uint32_t combine[4];
	uint32_t gather[4];
};

/* 3 input rows; expert 2 (slot 2) takes rows 0, 2; expert 5 (slot 5)
 * takes rows 2, 1; outputs: row 0 = .5 f2(x0) + 1 f5(x1), row 1 =
 * .25 f2(x2) + .75 f5(x2). */
static void
batch_init(struct batch *t, uint64_t epoch, uint32_t d)
{
	Epmoe__ExpertBatch b = EPMOE__EXPERT_BATCH__INIT;
	Epmoe__ExpertGroup g = EPMOE__EXPERT_GROUP__INIT;
	static const float w[4] = { 0.5f, 0.25f, 0.75f, 1.0f };
	static const uint32_t comb[4] = { 0, 1, 1, 0 };
	static const uint32_t gat[4] = { 0, 2, 2, 1 };

	t->b = b;
	t->g[0] = g;
	t->g[1] = g;
	t->g[0].slot = 2;
	t->g[0].expert = 2;
	t->g[0].n_tokens = 2;
	t->g[1].slot = 5;
	t->g[1].expert = 5;
	t->g[1].n_tokens = 2;
	t->gp[0] = &t->g[0];
	t->gp[1] = &t->g[1];
	memcpy(t->weights, w, sizeof(w));
	memcpy(t->combine, comb, sizeof(comb));
	memcpy(t->gather, gat, sizeof(gat));
	t->b.version = EPMOE_PROTO_VERSION;
	t->b.batch_id = 77;
	t->b.attempt = 3;
	t->b.epoch = epoch;
	t->b.layer = 1;
	t->b.n_groups = 2;
	t->b.groups = t->gp;
	t->b.n_weights = 4;
	t->b.weights = t->weights;
	t->b.n_combine = 4;
	t->b.combine = t->combine;
	t->b.n_gather = 4;
	t->b.gather = t->gather;
	t->b.n_rows_in = 3;
	t->b.n_rows_out = 2;
	t->b.dim = d;
}

/* Sends a message, returns the decoded result (rows into *rows_msg). */
static Epmoe__ExpertResult *
data_call(nng_socket s, nng_msg *m, nng_msg **keep, const float **rows, size_t *nf)
{
	ProtobufCMessage *hdr;

	ck_assert_int_eq(nng_sendmsg(s, m, 0), 0);
	ck_assert_int_eq(nng_recvmsg(s, &m, 0), 0);
	ck_assert_int_eq(wire_nng_unpack(m, WIRE_RESULT, NULL, &hdr, rows, nf), 0);
	*keep = m;
	return (Epmoe__ExpertResult *)hdr;
}

static Epmoe__Status
send_status(nng_socket s, nng_msg *m, const char *want_msg)
{
	Epmoe__ExpertResult *r;
	const float *rows;
	nng_msg *keep;
	size_t nf;
	Epmoe__Status st;

	r = data_call(s, m, &keep, &rows, &nf);
	st = r->status;
	ck_assert_uint_eq(nf, 0);
	if (want_msg)
		ck_assert_msg(strstr(r->message, want_msg) != NULL, "message '%s' lacks '%s'",
		        r->message, want_msg);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	nng_msg_free(keep);
	return st;
}

static nng_msg *
raw_msg(const void *buf, size_t len)
{
	nng_msg *m;

	ck_assert_int_eq(nng_msg_alloc(&m, len), 0);
	memcpy(nng_msg_body(m), buf, len);
	return m;
}

START_TEST(worker_combines_and_rejects_bad_batches)
{
	struct fix f;
	struct batch t;
	nng_socket s;
	nng_msg *m, *keep;
	uint8_t junk[512];
	uint32_t d;
	float *x, *y2 = NULL, *y5 = NULL, want[2 * 64];
	struct moe_ffn *ffn;
	const float *rows;
	size_t nf, len;
	Epmoe__ExpertResult *r;
	struct worker_stats ws;
	struct worker *w0 = NULL;
	struct pool *pool;
	int fd;
	struct sockaddr_in sa = { .sin_family = AF_INET };

	/* worker 0 holds experts 0..6, worker 1 expert 7 */
	fix_start_placed(&f, models[0], 2, 5000, NULL, "7,1");
	d = f.m->hp.n_embd;
	ck_assert_uint_le(d, 64);
	x = random_rows(3, d, 3);
	/* every slot of worker index 0 loaded (7 experts x 2 layers) before
	 * the checks that depend on them (15 s at most); the two threads
	 * register in either order, so index 0 is either of them */
	for (int i = 0; i < 1500; i++) {
		worker_get_stats(f.w[0].w, &ws);
		w0 = ws.registered && ws.index != 0 ? f.w[1].w : f.w[0].w;
		worker_get_stats(w0, &ws);
		if (ws.registered && ws.index == 0 && ws.n_slots == 14)
			break;
		nng_msleep(10);
	}
	ck_assert_uint_eq(ws.n_slots, 14);
	ck_assert_int_eq(nng_req0_open(&s), 0);
	ck_assert_int_eq(nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 5000), 0);
	ck_assert_int_eq(nng_dial(s, worker_data_url(w0), NULL, 0), 0);

	/* garbage, empty, truncated */
	srand(9);
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)rand();
	ck_assert_int_eq(send_status(s, raw_msg(junk, sizeof(junk)), "magic"),
	        EPMOE__STATUS__STATUS_PROTOCOL);
	ck_assert_int_eq(send_status(s, raw_msg(junk, 0), NULL),
	        EPMOE__STATUS__STATUS_PROTOCOL);
	batch_init(&t, 1, d);
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_BATCH, &t.b.base, x, 3 * d), 0);
	len = nng_msg_len(m);
	ck_assert_int_eq(nng_msg_chop(m, 5), 0);
	ck_assert_int_eq(send_status(s, m, "truncated"), EPMOE__STATUS__STATUS_PROTOCOL);
	/* a frame of another kind */
	{
		Epmoe__ExpertResult rr = EPMOE__EXPERT_RESULT__INIT;
		rr.version = EPMOE_PROTO_VERSION;
		ck_assert_int_eq(wire_nng_pack(&m, WIRE_RESULT, &rr.base, NULL, 0), 0);
		ck_assert_int_eq(send_status(s, m, "kind"), EPMOE__STATUS__STATUS_PROTOCOL);
	}
	/* shapes: rows missing, combine out of range, NaN weight, wrong dim */
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_BATCH, &t.b.base, x, 2 * d), 0);
	ck_assert_int_eq(send_status(s, m, "rows"), EPMOE__STATUS__STATUS_INVALID);
	t.combine[2] = 2;
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_BATCH, &t.b.base, x, 3 * d), 0);
	ck_assert_int_eq(send_status(s, m, "combine"), EPMOE__STATUS__STATUS_INVALID);
	batch_init(&t, 1, d);
	t.weights[1] = NAN;
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_BATCH, &t.b.base, x, 3 * d), 0);
	ck_assert_int_eq(send_status(s, m, "finite"), EPMOE__STATUS__STATUS_INVALID);
	batch_init(&t, 1, d);
	t.b.n_rows_out = 1000000;
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_BATCH, &t.b.base, x, 3 * d), 0);
	ck_assert_int_eq(send_status(s, m, "output rows"), EPMOE__STATUS__STATUS_INVALID);
	batch_init(&t, 1, d / 2);
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_BATCH, &t.b.base, x, 3 * (d / 2)), 0);
	ck_assert_int_eq(send_status(s, m, "dim"), EPMOE__STATUS__STATUS_INVALID);
	/* stale: an epoch older than the order that loaded the slot, an
	 * expert the worker does not hold */
	batch_init(&t, 0, d);
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_BATCH, &t.b.base, x, 3 * d), 0);
	ck_assert_int_eq(send_status(s, m, "older"), EPMOE__STATUS__STATUS_STALE_PLACEMENT);
	batch_init(&t, 1, d);
	t.g[1].expert = 7;
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_BATCH, &t.b.base, x, 3 * d), 0);
	ck_assert_int_eq(send_status(s, m, "expert 7 (slot 5) is not held"),
	        EPMOE__STATUS__STATUS_STALE_PLACEMENT);
	/* raw TCP garbage on the data port: connection dropped, still serving */
	sa.sin_port = htons((uint16_t)atoi(strrchr(worker_data_url(w0), ':') + 1));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(write(fd, junk, sizeof(junk)), (int)sizeof(junk));
	close(fd);

	/* the good batch: worker-side combine */
	batch_init(&t, 1, d);
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_BATCH, &t.b.base, x, 3 * d), 0);
	ck_assert_uint_eq(nng_msg_len(m), len);
	r = data_call(s, m, &keep, &rows, &nf);
	ck_assert_int_eq(r->status, EPMOE__STATUS__STATUS_OK);
	ck_assert_uint_eq(r->batch_id, 77);
	ck_assert_uint_eq(r->attempt, 3);
	ck_assert_uint_eq(r->n_rows, 2);
	ck_assert_uint_eq(r->dim, d);
	ck_assert_uint_eq(r->epoch, 1);
	ck_assert_uint_eq(nf, 2 * d);
	/* reference: f2 on rows (0, 2), f5 on rows (2, 1), each expert
	 * alone through the expert path with unit weights */
	ck_assert_int_eq(pool_new(&pool, 1), 0);
	ck_assert_int_eq(moe_ffn_new(&ffn, f.m, pool), 0);
	y2 = malloc(2 * d * sizeof(float));
	y5 = malloc(2 * d * sizeof(float));
	{
		uint32_t e2 = 2, e5 = 5, cnt = 2, in2[2] = { 0, 2 }, in5[2] = { 2, 1 };
		uint32_t outr[2] = { 0, 1 };
		float ones[2] = { 1.0f, 1.0f };
		struct moe_work w2 = { 1, &e2, &cnt, in2, outr, ones, 3, 2, NULL };
		struct moe_work w5 = { 1, &e5, &cnt, in5, outr, ones, 3, 2, NULL };
		ck_assert_int_eq(moe_ffn_run(ffn, 1, x, &w2, y2), 0);
		ck_assert_int_eq(moe_ffn_run(ffn, 1, x, &w5, y5), 0);
	}
	for (uint32_t k = 0; k < d; k++) {
		want[k] = 0.5f * y2[k] + 1.0f * y5[d + k];
		want[d + k] = 0.25f * y2[d + k] + 0.75f * y5[k];
	}
	ck_assert_float_le(max_diff(rows, want, 2 * d), 1e-6f);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	nng_msg_free(keep);
	worker_get_stats(w0, &ws);
	ck_assert(ws.registered);
	ck_assert_uint_eq(ws.batches, 1);
	ck_assert_uint_eq(ws.tokens, 4);
	ck_assert_uint_eq(ws.rejected, 11);
	ck_assert_uint_eq(ws.stale, 2);
	ck_assert_uint_eq(ws.n_slots, 14);
	moe_ffn_free(ffn);
	free(y2);
	free(y5);
	pool_free(pool);
	free(x);
	nng_close(s);
	fix_stop(&f);
}
END_TEST

/* ---- faults ---- */

START_TEST(stopped_worker_makes_run_unavailable_until_it_returns)
{
	struct fix f;
	struct routing r;
	uint32_t T = 20;
	double t0;

	fix_start(&f, models[0], 2, 2000);
	uint32_t d = f.m->hp.n_embd;
	float *x = random_rows(T, d, 4), *want = malloc((size_t)T * d * 4);
	float *got = malloc((size_t)T * d * 4);

	make_routing(&r, T, f.m->hp.n_expert, 8);
	local_layer(f.m, 0, x, &r.a, want);
	ck_assert_int_eq(f.be->run(f.be, 0, x, &r.a, got), 0);
	ck_assert_float_le(max_diff(got, want, (size_t)T * d), TOL_LAYER);
	/* stop worker 1: it leaves, the cluster is not ready, run fails fast */
	wthread_stop(&f.w[1]);
	ck_assert(!cluster_ready(f.c));
	t0 = now_s();
	ck_assert_int_eq(f.be->run(f.be, 0, x, &r.a, got), EPMOE_EUNAVAIL);
	ck_assert(now_s() - t0 < 2.0);
	/* back with the same id (a restart): works again */
	wthread_start(&f.w[1], cluster_control_url(f.c), f.m, "w1");
	wait_ready(f.c, true);
	ck_assert_int_eq(f.be->run(f.be, 0, x, &r.a, got), 0);
	ck_assert_float_le(max_diff(got, want, (size_t)T * d), TOL_LAYER);
	free(x);
	free(want);
	free(got);
	fix_stop(&f);
}
END_TEST

START_TEST(killed_worker_process_fails_the_layer_then_is_restarted)
{
	struct model *m = load_model(models[1]);
	struct cluster_cfg cc = { .control_url = "tcp://127.0.0.1:0", .model = m,
		.n_workers = 2, .heartbeat_ms = 200, .heartbeat_timeout_ms = 5000,
		.no_degraded = true };
	struct dispatch_cfg dc = { .timeout_ms = 2000 };
	struct spawn_cfg sc = { .worker_bin = tu_bin("epmoe-worker"),
		.model_path = m->path, .n_workers = 2, .threads = 1,
		.id_prefix = "kid", .restart = true };
	struct cluster *c;
	struct spawn *sp;
	struct moe_backend *be;
	struct routing r;
	uint32_t T = 16, d = m->hp.n_embd;
	float *x = random_rows(T, d, 6), *want = malloc((size_t)T * d * 4);
	float *got = malloc((size_t)T * d * 4);
	char err[256];
	double t0, dt;
	pid_t old;
	int rc, i;

	ck_assert_msg(cluster_new(&c, &cc, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(cluster_start(c), 0);
	sc.router_url = cluster_control_url(c);
	ck_assert_int_eq(spawn_start(&sp, &sc), 0);
	ck_assert_uint_eq(spawn_n(sp), 2);
	wait_ready(c, true);
	ck_assert_int_eq(dispatch_new(&be, c, m, &dc), 0);
	make_routing(&r, T, m->hp.n_expert, 3);
	local_layer(m, 1, x, &r.a, want);
	ck_assert_int_eq(be->run(be, 1, x, &r.a, got), 0);
	ck_assert_float_le(max_diff(got, want, (size_t)T * d), TOL_LAYER);

	old = spawn_pid(sp, 1);
	ck_assert_int_eq(spawn_kill(sp, 1, SIGKILL), 0);
	t0 = now_s();
	rc = be->run(be, 1, x, &r.a, got);
	dt = now_s() - t0;
	ck_assert_int_eq(rc, EPMOE_EUNAVAIL);
	ck_assert_msg(dt < 2.0 + 1.0, "run took %.3f s with a 2 s deadline", dt);
	ck_assert(!cluster_ready(c));
	/* reaped and restarted (bounded wait) */
	for (i = 0; i < 500 && spawn_poll(sp) == 0; i++)
		nng_msleep(10);
	ck_assert_int_lt(i, 500);
	ck_assert_int_ne(spawn_pid(sp, 1), 0);
	ck_assert_int_ne(spawn_pid(sp, 1), old);
	wait_ready(c, true);
	ck_assert_int_eq(be->run(be, 1, x, &r.a, got), 0);
	ck_assert_float_le(max_diff(got, want, (size_t)T * d), TOL_LAYER);

	be->free(be);
	/* SIGTERM is enough: the workers leave and exit 0 */
	ck_assert_int_eq(spawn_stop(sp, 10000), 0);
	ck_assert_int_eq(spawn_pid(sp, 0), 0);
	spawn_free(sp);
	for (i = 0; i < 100 && cluster_n_live(c) > 0; i++)
		nng_msleep(10);
	ck_assert_uint_eq(cluster_n_live(c), 0);
	cluster_free(c);
	free(x);
	free(want);
	free(got);
	model_free(m);
}
END_TEST

static void fake_register(struct cluster *c, const struct model *m,
        const char *id, const char *url, uint32_t want_index, nng_socket *ctl);

START_TEST(silent_worker_times_out_within_the_deadline)
{
	struct model *m = load_model(models[0]);
	struct cluster_cfg cc = { .control_url = "tcp://127.0.0.1:0", .model = m,
		.n_workers = 2, .heartbeat_ms = 200, .heartbeat_timeout_ms = 60000,
		.no_degraded = true };
	struct dispatch_cfg dc = { .timeout_ms = 1000 };
	struct cluster *c;
	struct moe_backend *be;
	struct wthread real;
	nng_socket rep, ctl;
	nng_listener lst;
	nng_msg *msg;
	char url[64];
	int port;
	uint32_t T = 8, d = m->hp.n_embd;
	float *x = random_rows(T, d, 1), *got = malloc((size_t)T * d * 4);
	float *want = malloc((size_t)T * d * 4);
	struct routing r;
	char err[256];
	double t0, dt;

	ck_assert_msg(cluster_new(&c, &cc, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(cluster_start(c), 0);
	wthread_start(&real, cluster_control_url(c), m, "real");
	for (int i = 0; i < 500 && cluster_n_live(c) < 1; i++)
		nng_msleep(10);
	/* the fake: a data REP socket that never answers, registered by hand */
	ck_assert_int_eq(nng_rep0_open(&rep), 0);
	ck_assert_int_eq(nng_listen(rep, "tcp://127.0.0.1:0", &lst, 0), 0);
	ck_assert_int_eq(nng_listener_get_int(lst, NNG_OPT_TCP_BOUND_PORT, &port), 0);
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	fake_register(c, m, "mute", url, 1, &ctl);
	wait_ready(c, true);
	ck_assert_int_eq(dispatch_new(&be, c, m, &dc), 0);
	make_routing(&r, T, m->hp.n_expert, 2);
	t0 = now_s();
	ck_assert_int_eq(be->run(be, 0, x, &r.a, got), EPMOE_EUNAVAIL);
	dt = now_s() - t0;
	ck_assert_msg(dt >= 0.95 && dt < 4.0, "timed out after %.3f s (deadline 1 s)", dt);
	ck_assert(!cluster_ready(c));
	/* the batch did reach the fake: one request waiting */
	ck_assert_int_eq(nng_recvmsg(rep, &msg, NNG_FLAG_NONBLOCK), 0);
	nng_msg_free(msg);
	/* experts of the live worker still work */
	{
		uint32_t off[3] = { 0, 2, 3 };
		int32_t ex[3] = { 0, 3, 1 };
		float wt[3] = { 0.3f, 0.7f, 1.0f };
		struct moe_assign a = { 2, off, ex, wt };
		local_layer(m, 0, x, &a, want);
		ck_assert_int_eq(be->run(be, 0, x, &a, got), 0);
		ck_assert_float_le(max_diff(got, want, 2 * d), TOL_LAYER);
	}
	be->free(be);
	nng_close(ctl);
	nng_close(rep);
	wthread_stop(&real);
	cluster_free(c);
	free(x);
	free(got);
	free(want);
	model_free(m);
}
END_TEST

/* A fake data endpoint that takes one request and hangs up. */
struct hangup {
	nng_socket rep;
	int got;
};

static void *
hangup_main(void *arg)
{
	struct hangup *h = arg;
	nng_msg *m;

	if (nng_recvmsg(h->rep, &m, 0) == 0) {
		h->got = 1;
		nng_msg_free(m);
	}
	nng_close(h->rep);
	return NULL;
}

/* Registers a fake worker by hand (index wanted) with data URL url. */
static void
fake_register(struct cluster *c, const struct model *m, const char *id,
        const char *url, uint32_t want_index, nng_socket *ctl)
{
	Epmoe__ControlMsg req = EPMOE__CONTROL_MSG__INIT;
	Epmoe__WorkerHello h = EPMOE__WORKER_HELLO__INIT;
	ProtobufCMessage *hdr;
	const float *rows;
	size_t nf;
	nng_msg *msg;

	uint32_t live_before = cluster_n_live(c);

	h.version = EPMOE_PROTO_VERSION;
	h.worker_id = (char *)id;
	h.boot_id = 1;
	h.model_hash = m->identity;
	h.data_url = (char *)url;
	req.version = EPMOE_PROTO_VERSION;
	req.msg_case = EPMOE__CONTROL_MSG__MSG_HELLO;
	req.hello = &h;
	ck_assert_int_eq(nng_req0_open(ctl), 0);
	ck_assert_int_eq(nng_socket_set_ms(*ctl, NNG_OPT_RECVTIMEO, 3000), 0);
	ck_assert_int_eq(nng_dial(*ctl, cluster_control_url(c), NULL, 0), 0);
	ck_assert_int_eq(wire_nng_pack(&msg, WIRE_CONTROL, &req.base, NULL, 0), 0);
	ck_assert_int_eq(nng_sendmsg(*ctl, msg, 0), 0);
	ck_assert_int_eq(nng_recvmsg(*ctl, &msg, 0), 0);
	ck_assert_int_eq(wire_nng_unpack(msg, WIRE_CONTROL, NULL, &hdr, &rows, &nf), 0);
	ck_assert(((Epmoe__ControlMsg *)hdr)->hello_reply->accepted);
	ck_assert_uint_eq(((Epmoe__ControlMsg *)hdr)->hello_reply->worker_index,
	        want_index);
	/* joining until a report shows the slots of its order loaded */
	ck_assert_uint_eq(cluster_n_live(c), live_before);
	{
		const Epmoe__SlotOrder *o = ((Epmoe__ControlMsg *)hdr)->hello_reply->order;
		Epmoe__LoadReport lr = EPMOE__LOAD_REPORT__INIT;
		Epmoe__ControlMsg rq = EPMOE__CONTROL_MSG__INIT;
		Epmoe__SlotOrderReply orep = EPMOE__SLOT_ORDER_REPLY__INIT;
		Epmoe__SlotState st[64], *stp[64];
		ck_assert_ptr_nonnull(o);
		ck_assert_uint_le(o->n_slots, 64);
		for (size_t i = 0; i < o->n_slots; i++) {
			Epmoe__SlotState x = EPMOE__SLOT_STATE__INIT;
			x.layer = o->slots[i]->layer;
			x.expert = o->slots[i]->expert;
			x.status = EPMOE__STATUS__STATUS_OK;
			st[i] = x;
			stp[i] = &st[i];
		}
		orep.order_id = o->order_id;
		orep.n_slots = o->n_slots;
		orep.slots = stp;
		lr.order_reply = &orep;
		lr.worker_index = want_index;
		lr.boot_id = 1;
		lr.epoch = 1;
		rq.version = EPMOE_PROTO_VERSION;
		rq.msg_case = EPMOE__CONTROL_MSG__MSG_LOAD_REPORT;
		rq.load_report = &lr;
		{
			nng_msg *rep;
			ProtobufCMessage *rh;
			ck_assert_int_eq(wire_nng_pack(&rep, WIRE_CONTROL, &rq.base, NULL, 0), 0);
			ck_assert_int_eq(nng_sendmsg(*ctl, rep, 0), 0);
			ck_assert_int_eq(nng_recvmsg(*ctl, &rep, 0), 0);
			ck_assert_int_eq(wire_nng_unpack(rep, WIRE_CONTROL, NULL, &rh, &rows, &nf), 0);
			ck_assert(((Epmoe__ControlMsg *)rh)->hello_reply->accepted);
			protobuf_c_message_free_unpacked(rh, NULL);
			nng_msg_free(rep);
		}
		protobuf_c_message_free_unpacked(hdr, NULL);
		nng_msg_free(msg);
	}
}

START_TEST(worker_hanging_up_mid_request_fails_the_layer_fast)
{
	struct model *m = load_model(models[0]);
	struct cluster_cfg cc = { .control_url = "tcp://127.0.0.1:0", .model = m,
		.n_workers = 2, .heartbeat_ms = 200, .heartbeat_timeout_ms = 60000,
		.no_degraded = true };
	struct dispatch_cfg dc = { .timeout_ms = 5000 };
	struct cluster *c;
	struct moe_backend *be;
	struct wthread real;
	struct hangup h = { 0 };
	nng_socket ctl;
	nng_listener lst;
	pthread_t th;
	char url[64], err[256];
	int port;
	uint32_t T = 8, d = m->hp.n_embd;
	float *x = random_rows(T, d, 1), *got = malloc((size_t)T * d * 4);
	struct routing r;
	double t0, dt;

	ck_assert_msg(cluster_new(&c, &cc, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(cluster_start(c), 0);
	wthread_start(&real, cluster_control_url(c), m, "real");
	for (int i = 0; i < 500 && cluster_n_live(c) < 1; i++)
		nng_msleep(10);
	ck_assert_int_eq(nng_rep0_open(&h.rep), 0);
	ck_assert_int_eq(nng_listen(h.rep, "tcp://127.0.0.1:0", &lst, 0), 0);
	ck_assert_int_eq(nng_listener_get_int(lst, NNG_OPT_TCP_BOUND_PORT, &port), 0);
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	fake_register(c, m, "quitter", url, 1, &ctl);
	wait_ready(c, true);
	ck_assert_int_eq(pthread_create(&th, NULL, hangup_main, &h), 0);
	ck_assert_int_eq(dispatch_new(&be, c, m, &dc), 0);
	make_routing(&r, T, m->hp.n_expert, 2);
	t0 = now_s();
	ck_assert_int_eq(be->run(be, 0, x, &r.a, got), EPMOE_EUNAVAIL);
	dt = now_s() - t0;
	pthread_join(th, NULL);
	ck_assert_int_eq(h.got, 1);
	/* the disconnect, not the 5 s deadline, ended the call */
	ck_assert_msg(dt < 2.5, "failed after %.3f s", dt);
	ck_assert(!cluster_ready(c));
	be->free(be);
	nng_close(ctl);
	wthread_stop(&real);
	cluster_free(c);
	free(x);
	free(got);
	model_free(m);
}
END_TEST

/* ---- replicas: re-dispatch, adaptive deadlines, hedging ---- */

/* A fake data endpoint: answers every batch with STALE_PLACEMENT, or
 * (mute) takes batches and never answers. */
struct fakew {
	nng_socket rep;
	bool mute;
	int got;
	volatile int stop;
	pthread_t th;
	char url[64];
};

static void *
fakew_main(void *arg)
{
	struct fakew *f = arg;

	while (!f->stop) {
		ProtobufCMessage *hdr;
		const float *rows;
		size_t nf;
		nng_msg *m;

		if (nng_recvmsg(f->rep, &m, 0) != 0)
			continue;
		f->got++;
		if (f->mute || wire_nng_unpack(m, WIRE_BATCH, NULL, &hdr, &rows, &nf) != 0) {
			nng_msg_free(m);
			continue;
		}
		{
			Epmoe__ExpertBatch *b = (Epmoe__ExpertBatch *)hdr;
			Epmoe__ExpertResult r = EPMOE__EXPERT_RESULT__INIT;
			nng_msg *rep;
			r.version = EPMOE_PROTO_VERSION;
			r.batch_id = b->batch_id;
			r.attempt = b->attempt;
			r.status = EPMOE__STATUS__STATUS_STALE_PLACEMENT;
			r.message = (char *)"fake: no such slot";
			protobuf_c_message_free_unpacked(hdr, NULL);
			nng_msg_free(m);
			if (wire_nng_pack(&rep, WIRE_RESULT, &r.base, NULL, 0) == 0 &&
			        nng_sendmsg(f->rep, rep, 0) != 0)
				nng_msg_free(rep);
		}
	}
	return NULL;
}

static void
fakew_start(struct fakew *f, bool mute)
{
	nng_listener lst;
	int port;

	memset(f, 0, sizeof(*f));
	f->mute = mute;
	ck_assert_int_eq(nng_rep0_open(&f->rep), 0);
	ck_assert_int_eq(nng_socket_set_ms(f->rep, NNG_OPT_RECVTIMEO, 50), 0);
	ck_assert_int_eq(nng_listen(f->rep, "tcp://127.0.0.1:0", &lst, 0), 0);
	ck_assert_int_eq(nng_listener_get_int(lst, NNG_OPT_TCP_BOUND_PORT, &port), 0);
	snprintf(f->url, sizeof(f->url), "tcp://127.0.0.1:%d", port);
	ck_assert_int_eq(pthread_create(&f->th, NULL, fakew_main, f), 0);
}

static void
fakew_stop(struct fakew *f)
{
	f->stop = 1;
	pthread_join(f->th, NULL);
	nng_close(f->rep);
}

/* Every expert on worker 0 (real, a thread) and worker 1 (a fake). */
struct repfix {
	struct model *m;
	struct cluster *c;
	struct wthread real;
	struct fakew fake;
	nng_socket ctl;
	char path[64];
};

static void
repfix_start(struct repfix *r, bool mute)
{
	const char *js = "{\"layers\": [[[0, 1], [1, 0], [0, 1], [1, 0], "
	        "[0, 1], [1, 0], [0, 1], [1, 0]]]}";
	struct cluster_cfg cc = { .control_url = "tcp://127.0.0.1:0", .n_workers = 2,
		.heartbeat_ms = 200, .heartbeat_timeout_ms = 60000, .no_degraded = true };
	char err[256];
	int fd;

	memset(r, 0, sizeof(*r));
	snprintf(r->path, sizeof(r->path), "/tmp/epmoe-rep-XXXXXX");
	fd = mkstemp(r->path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, js, strlen(js)), (int)strlen(js));
	close(fd);
	r->m = load_model(models[0]);
	cc.model = r->m;
	cc.placement_file = r->path;
	ck_assert_msg(cluster_new(&r->c, &cc, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(cluster_start(r->c), 0);
	wthread_start(&r->real, cluster_control_url(r->c), r->m, "real");
	for (int i = 0; i < 500 && cluster_n_live(r->c) < 1; i++)
		nng_msleep(10);
	ck_assert_uint_eq(cluster_n_live(r->c), 1);
	fakew_start(&r->fake, mute);
	fake_register(r->c, r->m, "fake", r->fake.url, 1, &r->ctl);
	ck_assert_uint_eq(cluster_n_live(r->c), 2);
}

static void
repfix_stop(struct repfix *r)
{
	nng_close(r->ctl);
	fakew_stop(&r->fake);
	wthread_stop(&r->real);
	cluster_free(r->c);
	model_free(r->m);
	unlink(r->path);
}

/* Feeds worker w's latency history: p99 of 1 ms for every batch size. */
static void
seed_latency(struct cluster *c, uint32_t w)
{
	struct cluster_peer cp[2];

	cluster_peers(c, cp, 2);
	for (uint32_t rows = 1; rows < 8192; rows *= 2)
		for (int i = 0; i < 10; i++)
			cluster_report(c, w, cp[w].gen, 1000000, rows, 0, 0, NULL);
}

START_TEST(a_stale_copy_is_fenced_and_its_groups_go_to_the_live_one)
{
	struct repfix r;
	struct moe_backend *be;
	struct dispatch_cfg dc = { .timeout_ms = 5000 };
	struct dispatch_stats st;
	struct routing rt;
	uint32_t T = 24;
	float *x, *want, *got, *again;

	repfix_start(&r, false);
	uint32_t d = r.m->hp.n_embd;
	x = random_rows(T, d, 31);
	want = malloc((size_t)T * d * 4);
	got = malloc((size_t)T * d * 4);
	again = malloc((size_t)T * d * 4);
	ck_assert_int_eq(dispatch_new(&be, r.c, r.m, &dc), 0);
	make_routing(&rt, T, r.m->hp.n_expert, 13);
	local_layer(r.m, 0, x, &rt.a, want);
	/* dynamic choice sends the fake its share; it refuses; re-sent */
	ck_assert_int_eq(be->run(be, 0, x, &rt.a, got), 0);
	ck_assert_float_le(max_diff(got, want, (size_t)T * d), TOL_LAYER);
	dispatch_stats(be, &st);
	ck_assert_uint_ge(r.fake.got, 1);
	ck_assert_uint_eq(st.stale, 1);
	ck_assert_uint_eq(st.batch_failures, 1);
	ck_assert_uint_ge(st.redispatches, 1);
	ck_assert_uint_eq(st.failures, 0);
	/* fenced: no more traffic until it registers again */
	ck_assert_uint_eq(cluster_n_live(r.c), 1);
	ck_assert(cluster_ready(r.c));
	ck_assert_int_eq(be->run(be, 0, x, &rt.a, again), 0);
	/* the combine does not depend on who served what */
	ck_assert_mem_eq(got, again, (size_t)T * d * 4);
	be->free(be);
	free(x);
	free(want);
	free(got);
	free(again);
	repfix_stop(&r);
}
END_TEST

/* Two micro-batches in flight at once (submit/submit/wait/wait) with a
 * stale copy: each batch's refused groups are re-sent to the live copy on
 * their own, both layers come out right, batch ids never collide. */
START_TEST(two_micro_batches_in_flight_each_survive_a_stale_copy)
{
	struct repfix r;
	struct moe_backend *be;
	struct dispatch_cfg dc = { .timeout_ms = 5000 };
	struct dispatch_stats st;
	struct routing ra, rb;
	uint32_t Ta = 24, Tb = 17;
	float *xa, *xb, *wa, *wb, *ga, *gb;

	repfix_start(&r, false);
	uint32_t d = r.m->hp.n_embd;
	xa = random_rows(Ta, d, 41);
	xb = random_rows(Tb, d, 42);
	wa = malloc((size_t)Ta * d * 4);
	wb = malloc((size_t)Tb * d * 4);
	ga = malloc((size_t)Ta * d * 4);
	gb = malloc((size_t)Tb * d * 4);
	ck_assert_int_eq(dispatch_new(&be, r.c, r.m, &dc), 0);
	ck_assert_ptr_nonnull(be->submit);
	ck_assert_ptr_nonnull(be->wait);
	make_routing(&ra, Ta, r.m->hp.n_expert, 15);
	make_routing(&rb, Tb, r.m->hp.n_expert, 16);
	local_layer(r.m, 0, xa, &ra.a, wa);
	local_layer(r.m, 0, xb, &rb.a, wb);
	ck_assert_int_eq(be->submit(be, 0, 0, xa, &ra.a, ga), 0);
	ck_assert_int_eq(be->submit(be, 1, 0, xb, &rb.a, gb), 0);
	/* one call per micro-batch at a time */
	ck_assert_int_eq(be->submit(be, 1, 0, xb, &rb.a, gb), EPMOE_EINVAL);
	ck_assert_int_eq(be->submit(be, 2, 0, xb, &rb.a, gb), EPMOE_EINVAL);
	ck_assert_int_eq(be->wait(be, 0), 0);
	ck_assert_int_eq(be->wait(be, 1), 0);
	ck_assert_int_eq(be->wait(be, 1), EPMOE_EINVAL);
	ck_assert_float_le(max_diff(ga, wa, (size_t)Ta * d), TOL_LAYER);
	ck_assert_float_le(max_diff(gb, wb, (size_t)Tb * d), TOL_LAYER);
	dispatch_stats(be, &st);
	ck_assert_uint_eq(st.calls, 2);
	ck_assert_uint_eq(st.tokens, Ta + Tb);
	ck_assert_uint_eq(st.failures, 0);
	ck_assert_uint_ge(st.stale, 1);
	ck_assert_uint_ge(st.redispatches, 1);
	ck_assert_uint_eq(cluster_n_live(r.c), 1);
	/* again, the stale copy fenced: the same numbers; run() still works */
	ck_assert_int_eq(be->submit(be, 1, 0, xb, &rb.a, gb), 0);
	ck_assert_int_eq(be->run(be, 0, xa, &ra.a, ga), 0);
	ck_assert_int_eq(be->wait(be, 1), 0);
	ck_assert_float_le(max_diff(ga, wa, (size_t)Ta * d), TOL_LAYER);
	ck_assert_float_le(max_diff(gb, wb, (size_t)Tb * d), TOL_LAYER);
	dispatch_stats_reset(be);
	dispatch_stats(be, &st);
	ck_assert_uint_eq(st.calls, 0);
	be->free(be);
	free(xa);
	free(xb);
	free(wa);
	free(wb);
	free(ga);
	free(gb);
	repfix_stop(&r);
}
END_TEST

START_TEST(a_silent_copy_misses_its_adaptive_deadline_and_the_other_answers)
{
	struct repfix r;
	struct moe_backend *be;
	struct dispatch_cfg dc = { .timeout_ms = 10000, .floor_ms = 150 };
	struct dispatch_stats st;
	struct routing rt;
	uint32_t T = 24;
	float *x, *want, *got, *again;
	double t0, dt;

	repfix_start(&r, true);
	uint32_t d = r.m->hp.n_embd;
	x = random_rows(T, d, 32);
	want = malloc((size_t)T * d * 4);
	got = malloc((size_t)T * d * 4);
	again = malloc((size_t)T * d * 4);
	seed_latency(r.c, 1);
	ck_assert_int_eq(dispatch_new(&be, r.c, r.m, &dc), 0);
	make_routing(&rt, T, r.m->hp.n_expert, 14);
	local_layer(r.m, 1, x, &rt.a, want);
	t0 = now_s();
	ck_assert_int_eq(be->run(be, 1, x, &rt.a, got), 0);
	dt = now_s() - t0;
	/* max(150 ms, 3 x 1 ms), not the 10 s timeout */
	ck_assert_msg(dt >= 0.14 && dt < 3.0, "the layer took %.3f s", dt);
	ck_assert_float_le(max_diff(got, want, (size_t)T * d), TOL_LAYER);
	dispatch_stats(be, &st);
	ck_assert_uint_eq(st.batch_failures, 1);
	ck_assert_uint_ge(st.redispatches, 1);
	ck_assert_uint_eq(cluster_n_live(r.c), 1);
	ck_assert_int_eq(be->run(be, 1, x, &rt.a, again), 0);
	ck_assert_mem_eq(got, again, (size_t)T * d * 4);
	be->free(be);
	free(x);
	free(want);
	free(got);
	free(again);
	repfix_stop(&r);
}
END_TEST

START_TEST(a_late_batch_is_hedged_to_the_other_copy_without_fencing)
{
	struct repfix r;
	struct moe_backend *be;
	struct dispatch_cfg dc = { .timeout_ms = 10000, .floor_ms = 5000, .hedge = 2.0 };
	struct dispatch_stats st;
	struct routing rt;
	uint32_t T = 24;
	float *x, *want, *got;
	double t0, dt;

	repfix_start(&r, true);
	uint32_t d = r.m->hp.n_embd;
	x = random_rows(T, d, 33);
	want = malloc((size_t)T * d * 4);
	got = malloc((size_t)T * d * 4);
	seed_latency(r.c, 1);
	ck_assert_int_eq(dispatch_new(&be, r.c, r.m, &dc), 0);
	make_routing(&rt, T, r.m->hp.n_expert, 15);
	local_layer(r.m, 0, x, &rt.a, want);
	t0 = now_s();
	ck_assert_int_eq(be->run(be, 0, x, &rt.a, got), 0);
	dt = now_s() - t0;
	/* hedged at 2 x 1 ms: long before the 5 s deadline */
	ck_assert_msg(dt < 2.5, "the layer took %.3f s", dt);
	ck_assert_float_le(max_diff(got, want, (size_t)T * d), TOL_LAYER);
	dispatch_stats(be, &st);
	ck_assert_uint_eq(st.hedges, 1);
	ck_assert_uint_eq(st.hedges_won, 1);
	ck_assert_uint_eq(st.batch_failures, 0);
	ck_assert_uint_ge(st.abandoned, 1);
	/* a hedge lost is no fault: the slow copy stays live */
	ck_assert_uint_eq(cluster_n_live(r.c), 2);
	be->free(be);
	free(x);
	free(want);
	free(got);
	repfix_stop(&r);
}
END_TEST

/* Whether process pid catches SIGTERM yet (its handler is installed):
 * the SigCgt mask of /proc/PID/status. */
static int
catches_sigterm(pid_t pid)
{
	char path[64], line[256];
	unsigned long long mask = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%ld/status", (long)pid);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "SigCgt: %llx", &mask) == 1)
			break;
	fclose(f);
	return (mask >> (SIGTERM - 1)) & 1;
}

/* The test process adopts orphans (subreaper), a child process starts
 * two workers and dies without stopping them: PR_SET_PDEATHSIG must
 * make them exit, cleanly.  The child dies once both workers handle
 * SIGTERM (a worker still starting up, e.g. under a sanitizer on a busy
 * machine, would die of the signal instead). */
START_TEST(spawned_workers_die_with_the_router)
{
	int fds[2], status;
	pid_t router, pids[2];
	struct spawn_cfg sc = { .worker_bin = tu_bin("epmoe-worker"),
		.router_url = "tcp://127.0.0.1:1", .n_workers = 2, .threads = 1,
		.id_prefix = "orphan" };

	sc.model_path = tu_data("mixtral-tiny-f32.gguf");
	ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
	ck_assert_int_eq(pipe(fds), 0);
	router = fork();
	ck_assert_int_ge(router, 0);
	if (router == 0) {
		struct spawn *sp;
		pid_t p[2];
		if (spawn_start(&sp, &sc) != 0)
			_exit(3);
		p[0] = spawn_pid(sp, 0);
		p[1] = spawn_pid(sp, 1);
		if (write(fds[1], p, sizeof(p)) != (ssize_t)sizeof(p))
			_exit(4);
		/* no NNG calls in this child: NNG state does not survive fork */
		for (int k = 0; k < 1000 && !(catches_sigterm(p[0]) && catches_sigterm(p[1])); k++)
			usleep(10 * 1000);
		usleep(100 * 1000);
		_exit(0); /* no spawn_stop: the workers are orphaned */
	}
	close(fds[1]);
	ck_assert_int_eq(read(fds[0], pids, sizeof(pids)), (int)sizeof(pids));
	close(fds[0]);
	ck_assert_int_eq(waitpid(router, &status, 0), router);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	for (int i = 0; i < 2; i++) {
		pid_t r = 0;
		for (int k = 0; k < 1000 && r == 0; k++) {
			r = waitpid(pids[i], &status, WNOHANG);
			if (r == 0)
				nng_msleep(10);
		}
		ck_assert_msg(r == pids[i], "worker %d (pid %ld) still running 10 s after its router died",
		        i, (long)pids[i]);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		        "worker %d: status %#x", i, status);
	}
}
END_TEST

/* Helper mode of this binary (see main): a router that registers workers
 * until it is killed, in a process of its own so it can crash for real. */
static int
router_child(const char *model_path)
{
	struct model *m;
	struct cluster *c;
	struct cluster_cfg cc = { .control_url = "tcp://127.0.0.1:0",
		.n_workers = 1, .heartbeat_ms = 100, .heartbeat_timeout_ms = 5000 };
	char err[256];

	if (model_load(&m, model_path, err, sizeof(err)) != 0)
		return 3;
	cc.model = m;
	if (cluster_new(&c, &cc, err, sizeof(err)) != 0 || cluster_start(c) != 0)
		return 4;
	printf("%s\n", cluster_control_url(c));
	fflush(stdout);
	for (;;)
		pause(); /* until SIGKILL */
}

START_TEST(worker_registers_again_when_the_router_restarts)
{
	struct model *m = load_model(models[2]);
	struct cluster_cfg cc = { .model = m, .n_workers = 1,
		.heartbeat_ms = 100, .heartbeat_timeout_ms = 5000 };
	struct cluster *c;
	struct moe_backend *be;
	struct wthread w;
	struct worker_stats ws;
	struct routing r;
	char err[256], url[128] = "";
	uint32_t T = 9, d = m->hp.n_embd;
	float *x = random_rows(T, d, 2), *got = malloc((size_t)T * d * 4);
	float *want = malloc((size_t)T * d * 4);
	int fds[2], status, i;
	pid_t router;
	FILE *f;

	/* router A: a child process of its own (this binary in helper mode) */
	ck_assert_int_eq(pipe(fds), 0);
	router = fork();
	ck_assert_int_ge(router, 0);
	if (router == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl("/proc/self/exe", "test_dispatch", "--router-child", m->path,
		        (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	f = fdopen(fds[0], "r");
	ck_assert_ptr_nonnull(fgets(url, sizeof(url), f));
	fclose(f);
	url[strcspn(url, "\n")] = '\0';
	ck_assert_msg(strncmp(url, "tcp://127.0.0.1:", 16) == 0, "router child said '%s'", url);
	wthread_start(&w, url, m, "phoenix");
	for (i = 0; i < 1000; i++) {
		worker_get_stats(w.w, &ws);
		if (ws.registered)
			break;
		nng_msleep(10);
	}
	ck_assert(ws.registered);
	/* router A crashes; router B (new boot id) comes up on its address */
	ck_assert_int_eq(kill(router, SIGKILL), 0);
	ck_assert_int_eq(waitpid(router, &status, 0), router);
	cc.control_url = url;
	ck_assert_msg(cluster_new(&c, &cc, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(cluster_start(c), 0);
	ck_assert_str_eq(cluster_control_url(c), url);
	wait_ready(c, true);
	/* the router counts the worker up before the worker reads the reply */
	for (i = 0; i < 500; i++) {
		worker_get_stats(w.w, &ws);
		if (ws.registrations == 2)
			break;
		nng_msleep(10);
	}
	ck_assert_uint_eq(ws.registrations, 2);
	ck_assert_int_eq(dispatch_new(&be, c, m, NULL), 0);
	make_routing(&r, T, m->hp.n_expert, 4);
	local_layer(m, 1, x, &r.a, want);
	ck_assert_int_eq(be->run(be, 1, x, &r.a, got), 0);
	ck_assert_float_le(max_diff(got, want, (size_t)T * d), TOL_LAYER);
	be->free(be);
	wthread_stop(&w);
	cluster_free(c);
	free(x);
	free(got);
	free(want);
	model_free(m);
}
END_TEST

/* ---- numbers ---- */

static void
bench_case(struct moe_backend *be, const struct model *m, uint32_t T,
        const float *x, float *out, int iters)
{
	struct dispatch_stats st;
	uint32_t off[17], E = m->hp.n_expert;
	int32_t ex[32];
	float wt[32];
	struct moe_assign a = { T, off, ex, wt };

	/* top-2 routing; token t uses experts t % E and (t + E/2) % E: with
	 * two workers every token needs both */
	for (uint32_t t = 0; t < T; t++) {
		off[t] = 2 * t;
		ex[2 * t] = (int32_t)(t % E);
		ex[2 * t + 1] = (int32_t)((t + E / 2) % E);
		wt[2 * t] = 0.6f;
		wt[2 * t + 1] = 0.4f;
	}
	off[T] = 2 * T;
	for (int i = 0; i < 20; i++)
		ck_assert_int_eq(be->run(be, 0, x, &a, out), 0);
	dispatch_stats_reset(be);
	for (int i = 0; i < iters; i++)
		ck_assert_int_eq(be->run(be, 0, x, &a, out), 0);
	dispatch_stats(be, &st);
	printf("bench: d=%u T=%2u, 2 workers, tcp loopback: %.1f us per layer call "
	       "(pack %.1f, wire %.1f, worker compute %.1f, combine %.1f); "
	       "%.2f msgs and %.0f bytes (%.0f out + %.0f back) per token per layer\n",
	        m->hp.n_embd, T, st.t_total / (double)st.calls * 1e6,
	        st.t_pack / (double)st.calls * 1e6, st.t_wire / (double)st.calls * 1e6,
	        st.t_compute / (double)st.calls * 1e6,
	        st.t_combine / (double)st.calls * 1e6,
	        (double)st.msgs / (double)st.tokens,
	        (double)(st.bytes_sent + st.bytes_recv) / (double)st.tokens,
	        (double)st.bytes_sent / (double)st.tokens,
	        (double)st.bytes_recv / (double)st.tokens);
	fflush(stdout);
}

START_TEST(layer_round_trip_benchmark_prints_numbers)
{
	char path[] = "/tmp/epmoe-bench-XXXXXX", gguf[64], err[256];
	struct mkmodel_cfg mc;
	struct model *m;
	struct cluster *c;
	struct spawn *sp;
	struct moe_backend *be;
	struct cluster_cfg cc = { .control_url = "tcp://127.0.0.1:0",
		.n_workers = 2, .heartbeat_ms = 1000 };
	struct dispatch_cfg dc = { .timeout_ms = 10000 };
	struct spawn_cfg sc = { .worker_bin = tu_bin("epmoe-worker"), .n_workers = 2,
		.threads = 1, .id_prefix = "bench" };
	float *x, *out, *want;
	int fd = mkstemp(path);

	ck_assert_int_ge(fd, 0);
	close(fd);
	unlink(path);
	snprintf(gguf, sizeof(gguf), "%s.gguf", path);
	ck_assert_int_eq(mkmodel_preset(&mc, MKMODEL_LLAMA, "tiny"), 0);
	mc.n_embd = 1024;
	mc.n_layer = 1;
	mc.n_ff = 64;
	mc.n_head = 8;
	mc.n_head_kv = 8;
	mc.n_vocab = MKMODEL_MIN_VOCAB;
	mc.n_threads = 1;
	ck_assert_msg(mkmodel_write(&mc, gguf, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(model_load(&m, gguf, err, sizeof(err)) == 0, "%s", err);
	cc.model = m;
	ck_assert_msg(cluster_new(&c, &cc, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(cluster_start(c), 0);
	sc.router_url = cluster_control_url(c);
	sc.model_path = gguf;
	ck_assert_int_eq(spawn_start(&sp, &sc), 0);
	wait_ready(c, true);
	ck_assert_int_eq(dispatch_new(&be, c, m, &dc), 0);
	x = random_rows(16, 1024, 5);
	out = malloc(16 * 1024 * sizeof(float));
	want = malloc(16 * 1024 * sizeof(float));
	bench_case(be, m, 1, x, out, 300);
	bench_case(be, m, 16, x, out, 300);
	{
		/* and the numbers are right */
		uint32_t off[2] = { 0, 2 };
		int32_t ex[2] = { 1, 6 };
		float wt[2] = { 0.5f, 0.5f };
		struct moe_assign a = { 1, off, ex, wt };
		local_layer(m, 0, x, &a, want);
		ck_assert_int_eq(be->run(be, 0, x, &a, out), 0);
		ck_assert_float_le(max_diff(out, want, 1024), TOL_LAYER);
	}
	be->free(be);
	spawn_free(sp);
	cluster_free(c);
	model_free(m);
	unlink(gguf);
	free(x);
	free(out);
	free(want);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("dispatch");
	TCase *tn = tcase_create("numerics");
	TCase *tw = tcase_create("worker");
	TCase *tf = tcase_create("faults");
	TCase *tb = tcase_create("bench");

	tcase_add_loop_test(tn, layer_output_matches_local_experts, 0, MAX_W);
	tcase_add_test(tn, replicas_and_uneven_blocks_serve_the_same_numbers);
	tcase_add_loop_test(tn, engine_logits_with_workers_match_local, 0, 3);
	tcase_add_test(tw, worker_combines_and_rejects_bad_batches);
	tcase_add_test(tf, stopped_worker_makes_run_unavailable_until_it_returns);
	tcase_add_test(tf, killed_worker_process_fails_the_layer_then_is_restarted);
	tcase_add_test(tf, silent_worker_times_out_within_the_deadline);
	tcase_add_test(tf, worker_registers_again_when_the_router_restarts);
	tcase_add_test(tf, worker_hanging_up_mid_request_fails_the_layer_fast);
	tcase_add_test(tf, spawned_workers_die_with_the_router);
	tcase_add_test(tf, a_stale_copy_is_fenced_and_its_groups_go_to_the_live_one);
	tcase_add_test(tf, two_micro_batches_in_flight_each_survive_a_stale_copy);
	tcase_add_test(tf, a_silent_copy_misses_its_adaptive_deadline_and_the_other_answers);
	tcase_add_test(tf, a_late_batch_is_hedged_to_the_other_copy_without_fencing);
	tcase_add_test(tb, layer_round_trip_benchmark_prints_numbers);
	suite_add_tcase(s, tn);
	suite_add_tcase(s, tw);
	suite_add_tcase(s, tf);
	suite_add_tcase(s, tb);
	return s;
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--router-child") == 0)
		return router_child(argv[2]);
	return tu_run(suite());
}
