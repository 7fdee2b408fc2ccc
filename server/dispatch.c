/* Scatter/gather of one MoE layer over the workers, with re-dispatch,
 * adaptive deadlines and hedging.  See dispatch.h.
 *
 * One call: groups (one per expert used) -> requests (one per worker,
 * then re-sends and hedges) -> replies claimed by groups -> combine.
 * The NNG completion callback only records the result and signals; every
 * decision and every NNG operation is made on the calling thread, so a
 * request is never cancelled while another thread posts on its aio. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "clock.h"
#include "ops.h"
#include "cluster.h"
#include "deadline.h"
#include "dispatch.h"
#include "err.h"
#include "log.h"
#include "matmul.h"
#include "model.h"
#include "netsock.h"
#include "placement.h"
#include "replica.h"
#include "wire.h"
#include "wire_nng.h"

#define POLL_MS 50            /* look at the cluster's view this often */
#define MAX_MSGS 4096         /* requests of one call, a bound on loops */

enum { M_IDLE = 0, M_SEND, M_RECV, M_DONE, M_FAILED };
enum { G_PENDING = 0, G_DONE, G_LOST };

/* One request of the call (reused across calls). */
struct dmsg {
	struct dispatch *ds;
	nng_aio *aio;
	nng_ctx ctx;
	bool ctx_open;
	int sock_id;
	/* set by the callback under ds->mu */
	bool completed;
	int rv;
	struct dmsg *next_done;
	/* the calling thread's */
	int state;
	bool inflight;        /* an operation is posted on aio */
	bool abandon;         /* given up by us: no report, no re-send */
	bool fenced;          /* its worker was fenced meanwhile */
	bool local;           /* failed here (memory, context): not the worker's fault */
	bool is_hedge;
	int twin;             /* hedge pair, -1 */
	uint32_t worker, gen, attempt;
	uint64_t batch_id;
	uint64_t t_send, deadline_ns, hedge_ns;
	bool has_alt;         /* every group has another live copy */
	bool pairs;           /* one output row per entry */
	uint32_t *grp, n_grp; /* group indices, expert order */
	uint32_t n_rows, n_entries;
	uint32_t cap_grp, cap_entries;
	uint32_t *row_tok;    /* [n_rows] token of each message row */
	uint32_t *gather;     /* [n_entries] message row of each entry */
	uint32_t *combine;    /* [n_entries] output row of each entry */
	float *weights;       /* [n_entries] */
	Epmoe__ExpertGroup *groups;
	Epmoe__ExpertGroup **gp;
	nng_msg *spare;       /* a buffer to pack the next request into */
	nng_msg *reply;
	Epmoe__ExpertResult *res;
	const float *rows;
};

struct group {
	uint32_t expert;
	uint32_t first, n;    /* its pairs: ds->order[first .. first + n) */
	int done_msg;         /* request whose reply holds it, -1 */
	uint32_t entry0;      /* its first entry in that request */
	int32_t want;         /* worker LLEP chose for it, -1: replica choice */
	uint8_t state;
};

struct dispatch {
	struct moe_backend be;
	struct cluster *c;
	const struct model *m;
	uint32_t W, d, L;
	struct dispatch_cfg cfg;
	struct dl_cfg dl;
	struct replica_ctx rc;
	uint64_t next_batch_id;

	pthread_mutex_t mu;   /* completions */
	pthread_cond_t cv;
	struct dmsg *done_head;

	struct dmsg **msg;
	uint32_t n_msg, cap_msg;
	struct cluster_peer *cp;
	uint64_t *load;       /* [W] outstanding tokens, plus this call's */
	uint32_t *served;     /* [W] pairs each worker computed in this call */
	bool *bad;            /* [W] failed in this call */
	bool *near;           /* [W] on the router's node */
	uint32_t *cand_w;     /* [W] candidates of a pick */
	int32_t *cand_s;

	/* the call's routing, grouped */
	const struct placement *pl;
	uint32_t layer;
	const struct moe_assign *a;
	const float *x;
	uint32_t *order;      /* [n_pairs] pair indices grouped by expert */
	uint32_t *pair_tok;   /* [n_pairs] token of each pair */
	uint32_t *pair_grp;   /* [n_pairs] group of each pair */
	uint32_t *pair_pos;   /* [n_pairs] position in its group */
	size_t cap_pairs;
	uint32_t *ecount;     /* [E + 1] */
	struct group *grp;
	uint32_t n_grp, cap_grp;
	uint32_t *tok_row;    /* [T] row of a token in the request being built */
	uint32_t *tok_stamp;  /* [T] which build tok_row belongs to */
	uint32_t stamp;
	uint8_t *unserved;    /* [T] */
	uint32_t cap_tok, n_unserved;
	bool pairs_mode;

	/* LLEP scratch */
	uint32_t *l_load, *l_native; /* [E] */
	int32_t *l_grp;              /* [E] group of each expert, -1 */
	bool *l_holds;               /* [E * W] */
	struct llep_chunk *l_chunks; /* [2 * E * W] */
	struct group *l_old;         /* [E] the groups before the split */

	/* the prefetch hint for the next call (moe_backend.hint): experts of
	 * layer hint_layer, sent with requests of layer hint_layer - 1 */
	uint32_t *hint;              /* [E] */
	uint32_t n_hint, hint_layer;

	/* the call in flight between call_submit and call_wait */
	bool in_call;
	int call_rc;          /* a failure of the submit half */
	uint32_t call_T;
	size_t call_pairs;
	float *call_out;
	uint64_t call_t0, call_end, call_pack;
	unsigned call_version;
	/* micro-batch 1 of the asynchronous pair (made at its first submit)
	 * and whichever of the two last failed (for unserved()) */
	struct dispatch *mb1;
	struct dispatch *last_failed;

	pthread_mutex_t smu;
	struct dispatch_stats st;
};

/* Grows *arr to hold n elements of size sz (capacity doubles). */
static int
grow(void **arr, uint32_t *cap, size_t n, size_t sz)
{
	size_t c = *cap ? *cap : 16;
	void *a;

	if (n <= *cap)
		return 0;
	while (c < n)
		c *= 2;
	if (c > UINT32_MAX || (a = realloc(*arr, c * sz)) == NULL)
		return EPMOE_ENOMEM;
	*arr = a;
	*cap = (uint32_t)c;
	return 0;
}

/* ---- completions (NNG threads) ---- */

static void
on_aio(void *arg)
{
	struct dmsg *m = arg;
	struct dispatch *ds = m->ds;

	pthread_mutex_lock(&ds->mu);
	m->rv = nng_aio_result(m->aio);
	m->completed = true;
	m->next_done = ds->done_head;
	ds->done_head = m;
	pthread_cond_signal(&ds->cv);
	pthread_mutex_unlock(&ds->mu);
}

/* ---- requests ---- */

static void
msg_release(struct dmsg *m)
{
	if (m->res != NULL) {
		protobuf_c_message_free_unpacked(&m->res->base, NULL);
		m->res = NULL;
	}
	if (m->reply != NULL) {
		if (m->spare != NULL)
			nng_msg_free(m->spare);
		m->spare = m->reply;
		m->reply = NULL;
	}
	m->rows = NULL;
}

/* A request slot for this call: reuses one of an earlier call. */
static struct dmsg *
msg_new(struct dispatch *ds)
{
	struct dmsg *m;

	if (ds->n_msg == MAX_MSGS)
		return NULL;
	if (ds->n_msg == ds->cap_msg) {
		uint32_t cap = ds->cap_msg ? 2 * ds->cap_msg : 8;
		struct dmsg **a = realloc(ds->msg, cap * sizeof(*a));
		if (a == NULL)
			return NULL;
		memset(a + ds->cap_msg, 0, (cap - ds->cap_msg) * sizeof(*a));
		ds->msg = a;
		ds->cap_msg = cap;
	}
	if ((m = ds->msg[ds->n_msg]) == NULL) {
		if ((m = calloc(1, sizeof(*m))) == NULL)
			return NULL;
		m->ds = ds;
		if (nng_aio_alloc(&m->aio, on_aio, m) != 0) {
			free(m);
			return NULL;
		}
		ds->msg[ds->n_msg] = m;
	}
	ds->n_msg++;
	m->state = M_IDLE;
	m->completed = m->inflight = m->abandon = m->fenced = m->is_hedge = false;
	m->local = false;
	m->twin = -1;
	m->n_grp = m->n_rows = m->n_entries = 0;
	m->rv = 0;
	return m;
}

static int
msg_index(struct dispatch *ds, const struct dmsg *m)
{
	for (uint32_t i = 0; i < ds->n_msg; i++)
		if (ds->msg[i] == m)
			return (int)i;
	return -1;
}

/* Slot of expert e's copy on worker w in the call's map, or -1. */
static int32_t
copy_slot(const struct dispatch *ds, uint32_t e, uint32_t w)
{
	const struct placement *pl = ds->pl;

	for (uint32_t r = 0; r < placement_expert_copies(pl, ds->layer, e); r++) {
		int32_t s = placement_expert_slot(pl, ds->layer, e, r);
		if (placement_slot_worker(pl, ds->layer, (uint32_t)s) == (int32_t)w)
			return s;
	}
	return -1;
}

/* Live copies of expert e (workers not failed in this call) into
 * ds->cand_w / cand_s; how many. */
static uint32_t
candidates(struct dispatch *ds, uint32_t e)
{
	const struct placement *pl = ds->pl;
	uint32_t n = 0;

	for (uint32_t r = 0; r < placement_expert_copies(pl, ds->layer, e); r++) {
		int32_t s = placement_expert_slot(pl, ds->layer, e, r);
		int32_t w = placement_slot_worker(pl, ds->layer, (uint32_t)s);
		if (w < 0 || (uint32_t)w >= ds->W || !ds->cp[w].alive || ds->bad[w])
			continue;
		ds->cand_w[n] = (uint32_t)w;
		ds->cand_s[n] = s;
		n++;
	}
	return n;
}

/* Room in m for n_grp groups and n_entries entries (rows <= entries). */
static int
msg_reserve(struct dmsg *m, size_t n_grp, size_t n_entries)
{
	if (n_grp > m->cap_grp) {
		size_t c = m->cap_grp ? 2 * (size_t)m->cap_grp : 16;
		while (c < n_grp)
			c *= 2;
		uint32_t *g = realloc(m->grp, c * sizeof(*g));
		if (g == NULL)
			return EPMOE_ENOMEM;
		m->grp = g;
		Epmoe__ExpertGroup *eg = realloc(m->groups, c * sizeof(*eg));
		if (eg == NULL)
			return EPMOE_ENOMEM;
		m->groups = eg;
		Epmoe__ExpertGroup **gp = realloc(m->gp, c * sizeof(*gp));
		if (gp == NULL)
			return EPMOE_ENOMEM;
		m->gp = gp;
		m->cap_grp = (uint32_t)c;
	}
	if (n_entries > m->cap_entries) {
		size_t c = m->cap_entries ? 2 * (size_t)m->cap_entries : 64;
		while (c < n_entries)
			c *= 2;
		if (c > UINT32_MAX)
			return EPMOE_ENOMEM;
		uint32_t **u[3] = { &m->gather, &m->combine, &m->row_tok };
		for (int i = 0; i < 3; i++) {
			uint32_t *a = realloc(*u[i], c * sizeof(uint32_t));
			if (a == NULL)
				return EPMOE_ENOMEM;
			*u[i] = a;
		}
		float *w = realloc(m->weights, c * sizeof(*w));
		if (w == NULL)
			return EPMOE_ENOMEM;
		m->weights = w;
		m->cap_entries = (uint32_t)c;
	}
	return 0;
}

/* Adds group g to request m (the rows of its tokens m lacks).  Requests
 * are built one at a time: tok_row belongs to the last msg_begin. */
static int
msg_add_group(struct dispatch *ds, struct dmsg *m, uint32_t gi)
{
	const struct group *g = &ds->grp[gi];
	const struct moe_assign *a = ds->a;
	Epmoe__ExpertGroup eg = EPMOE__EXPERT_GROUP__INIT;

	if (msg_reserve(m, (size_t)m->n_grp + 1, (size_t)m->n_entries + g->n) != 0)
		return EPMOE_ENOMEM;
	eg.slot = (uint32_t)copy_slot(ds, g->expert, m->worker);
	eg.expert = g->expert;
	eg.n_tokens = g->n;
	m->groups[m->n_grp] = eg;
	m->grp[m->n_grp++] = gi;
	for (uint32_t k = 0; k < g->n; k++) {
		uint32_t p = ds->order[g->first + k], t = ds->pair_tok[p];
		uint32_t j = m->n_entries++;
		if (ds->tok_stamp[t] != ds->stamp) {
			ds->tok_stamp[t] = ds->stamp;
			ds->tok_row[t] = m->n_rows;
			m->row_tok[m->n_rows++] = t;
		}
		m->gather[j] = ds->tok_row[t];
		m->combine[j] = m->pairs ? j : ds->tok_row[t];
		m->weights[j] = a->weight[p];
	}
	return 0;
}

/* Starts building a request to worker w. */
static struct dmsg *
msg_begin(struct dispatch *ds, uint32_t w, uint32_t attempt)
{
	struct dmsg *m = msg_new(ds);

	if (m == NULL)
		return NULL;
	m->worker = w;
	m->gen = ds->cp[w].gen;
	m->attempt = attempt;
	m->pairs = ds->pairs_mode;
	if (++ds->stamp == 0) { /* wrapped: clear the stamps */
		memset(ds->tok_stamp, 0, ds->cap_tok * sizeof(*ds->tok_stamp));
		ds->stamp = 1;
	}
	return m;
}

/* Opens (or re-opens, for another socket) m's REQ context. */
static int
msg_ctx(struct dmsg *m, nng_socket sock)
{
	int rv;

	if (m->ctx_open && m->sock_id == nng_socket_id(sock))
		return 0;
	if (m->ctx_open) {
		nng_ctx_close(m->ctx);
		m->ctx_open = false;
	}
	if ((rv = nng_ctx_open(&m->ctx, sock)) != 0)
		return rv;
	/* no NNG resend: failures are the router's decision */
	nng_ctx_set_ms(m->ctx, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	m->ctx_open = true;
	m->sock_id = nng_socket_id(sock);
	return 0;
}

static nng_duration
until_ms(uint64_t deadline)
{
	uint64_t now = clock_now_ns();

	if (now >= deadline)
		return 1; /* fails at once with NNG_ETIMEDOUT */
	return (nng_duration)((deadline - now + 999999u) / 1000000u);
}

static void fail_msg(struct dispatch *ds, struct dmsg *m, int err, const char *why);

/* Packs and sends request m; sets its deadline and hedge time. */
static void
msg_send(struct dispatch *ds, struct dmsg *m, uint64_t *pack_ns)
{
	Epmoe__ExpertBatch b = EPMOE__EXPERT_BATCH__INIT;
	nng_msg *nm = m->spare;
	uint64_t t0 = clock_now_ns(), p99 = 0;
	uint32_t d = ds->d, dl_ms;
	float *dst;
	char why[128];
	int rc, rv;

	m->spare = NULL;
	cluster_load_add(ds->c, m->worker, (int64_t)m->n_entries);
	/* a request with an alternative for every group may give up early */
	m->has_alt = true;
	for (uint32_t i = 0; i < m->n_grp && m->has_alt; i++) {
		uint32_t e = ds->grp[m->grp[i]].expert, n = candidates(ds, e);
		bool other = false;
		for (uint32_t k = 0; k < n; k++)
			other |= ds->cand_w[k] != m->worker;
		m->has_alt = other;
	}
	/* the estimator only matters when there is somewhere else to go */
	dl_ms = m->has_alt ? cluster_deadline_ms(ds->c, m->worker, m->n_rows, &ds->dl,
	        &p99) : ds->dl.cap_ms;
	m->batch_id = ++ds->next_batch_id;
	m->t_send = t0;
	m->deadline_ns = t0 + (uint64_t)dl_ms * 1000000u;
	m->hedge_ns = ds->cfg.hedge > 0 && m->has_alt && p99 > 0 && !m->is_hedge ?
	        t0 + (uint64_t)(ds->cfg.hedge * (double)p99 * 1000.0) : 0;
	b.version = EPMOE_PROTO_VERSION;
	b.batch_id = m->batch_id;
	b.attempt = m->attempt;
	b.epoch = ds->pl->epoch;
	b.layer = ds->layer;
	b.n_groups = m->n_grp;
	for (uint32_t i = 0; i < m->n_grp; i++)
		m->gp[i] = &m->groups[i];
	b.groups = m->gp;
	b.n_weights = m->n_entries;
	b.weights = m->weights;
	b.n_combine = m->n_entries;
	b.combine = m->combine;
	b.n_gather = m->n_entries;
	b.gather = m->gather;
	b.n_rows_in = m->n_rows;
	b.n_rows_out = m->pairs ? m->n_entries : m->n_rows;
	b.dim = d;
	b.deadline_ms = dl_ms;
	if (ds->n_hint > 0 && ds->hint_layer == ds->layer + 1) {
		b.n_prefetch = ds->n_hint;
		b.prefetch = ds->hint;
	}
	if ((rc = netsock_msg_pack(&nm, WIRE_BATCH, &b.base, (size_t)m->n_rows * d,
	             &dst)) != 0) {
		if (nm != NULL)
			nng_msg_free(nm);
		m->state = M_SEND;
		m->local = true;
		fail_msg(ds, m, rc, "cannot pack the request");
		return;
	}
	/* [n_rows, d]: the distinct token rows this worker needs */
	for (uint32_t j = 0; j < m->n_rows; j++)
		memcpy(dst + (size_t)j * d, ds->x + (size_t)m->row_tok[j] * d,
		        d * sizeof(float));
	pthread_mutex_lock(&ds->smu);
	ds->st.msgs++;
	ds->st.hinted_msgs += b.n_prefetch > 0;
	ds->st.hinted_experts += b.n_prefetch;
	ds->st.rows_sent += m->n_rows;
	ds->st.bytes_sent += nng_msg_len(nm);
	pthread_mutex_unlock(&ds->smu);
	*pack_ns += clock_now_ns() - t0;
	m->state = M_SEND;
	if ((rv = msg_ctx(m, ds->cp[m->worker].sock)) != 0) {
		nng_msg_free(nm);
		snprintf(why, sizeof(why), "cannot open a context: %s", nng_strerror(rv));
		m->local = true;
		fail_msg(ds, m, wire_nng_err(rv), why);
		return;
	}
	nng_aio_set_msg(m->aio, nm);
	nng_aio_set_timeout(m->aio, until_ms(m->deadline_ns));
	m->inflight = true;
	nng_ctx_send(m->ctx, m->aio);
}

/* Gives m up (its worker is not blamed): cancels its operation. */
static void
msg_abandon(struct dispatch *ds, struct dmsg *m)
{
	if (m->state != M_SEND && m->state != M_RECV)
		return;
	m->abandon = true;
	if (m->inflight)
		nng_aio_cancel(m->aio);
}

/* Sends the groups listed in gl (n <= 256 of them) to live copies on
 * workers that did not fail in this call, one request per worker (in
 * worker order, groups in list order); a group without a copy is lost.
 * Returns the index of the first request made. */
static uint32_t
send_groups(struct dispatch *ds, const uint32_t *gl, uint32_t n,
        uint32_t attempt, uint64_t *pack_ns)
{
	uint32_t first_new = ds->n_msg, gw[256];

	for (uint32_t i = 0; i < n; i++) {
		struct group *g = &ds->grp[gl[i]];
		uint32_t nc, k;

		gw[i] = UINT32_MAX;
		if (g->state != G_PENDING)
			continue;
		if ((nc = candidates(ds, g->expert)) == 0) {
			g->state = G_LOST;
			continue;
		}
		for (k = 0; g->want >= 0 && k < nc && ds->cand_w[k] != (uint32_t)g->want; k++)
			;
		if (g->want < 0 || k == nc)
			k = replica_pick(&ds->rc, ds->layer, g->expert, ds->cand_w, nc,
			        ds->load, ds->near);
		gw[i] = ds->cand_w[k];
		ds->load[gw[i]] += g->n;
	}
	for (uint32_t w = 0; w < ds->W; w++) {
		struct dmsg *m = NULL;
		for (uint32_t i = 0; i < n; i++) {
			if (gw[i] != w)
				continue;
			if (m == NULL && (m = msg_begin(ds, w, attempt)) == NULL) {
				ds->grp[gl[i]].state = G_LOST;
				continue;
			}
			if (msg_add_group(ds, m, gl[i]) != 0)
				ds->grp[gl[i]].state = G_LOST;
		}
	}
	for (uint32_t i = first_new; i < ds->n_msg; i++)
		if (ds->msg[i]->state == M_IDLE)
			msg_send(ds, ds->msg[i], pack_ns);
	return first_new;
}

/* Request m failed: blame its worker (unless we gave up on it) and send
 * its groups elsewhere, unless its hedge twin still carries them. */
static void
fail_msg(struct dispatch *ds, struct dmsg *m, int err, const char *why)
{
	struct dmsg *twin = m->twin >= 0 ? ds->msg[m->twin] : NULL;
	uint32_t gl[256], n = 0;
	uint64_t pack_ns = 0;
	bool quiet = m->abandon;

	m->state = M_FAILED;
	cluster_load_add(ds->c, m->worker, -(int64_t)m->n_entries);
	if (quiet) {
		pthread_mutex_lock(&ds->smu);
		ds->st.abandoned++;
		pthread_mutex_unlock(&ds->smu);
		if (!m->fenced)
			return;
	}
	ds->bad[m->worker] = true;
	if (!m->fenced && !m->local) {
		cluster_report(ds->c, m->worker, m->gen, clock_now_ns() - m->t_send,
		        m->n_rows, 0, err, why);
	}
	pthread_mutex_lock(&ds->smu);
	ds->st.batch_failures++;
	ds->st.stale += err == EPMOE_ESTATE;
	pthread_mutex_unlock(&ds->smu);
	if (twin != NULL && (twin->state == M_SEND || twin->state == M_RECV)) {
		log_info("dispatch: layer %u: worker %u batch %" PRIu64 " attempt %u failed (%s); its hedge on worker %u goes on",
		        ds->layer, m->worker, m->batch_id, m->attempt, why, twin->worker);
		return;
	}
	/* re-send what is still pending */
	{
		uint32_t n_pairs = 0, n_groups = 0, first = ds->n_msg;
		char to[96] = "";
		size_t tl = 0;

		for (uint32_t i = 0; i < m->n_grp; i++) {
			struct group *g = &ds->grp[m->grp[i]];
			if (g->state != G_PENDING)
				continue;
			n_pairs += g->n;
			n_groups++;
			gl[n++] = m->grp[i];
			if (n == sizeof(gl) / sizeof(gl[0])) {
				send_groups(ds, gl, n, m->attempt + 1, &pack_ns);
				n = 0;
			}
		}
		if (n > 0)
			send_groups(ds, gl, n, m->attempt + 1, &pack_ns);
		for (uint32_t i = first; i < ds->n_msg && tl + 12 < sizeof(to); i++)
			tl += (size_t)snprintf(to + tl, sizeof(to) - tl, "%s%u",
			        i == first ? "" : ", ", ds->msg[i]->worker);
		pthread_mutex_lock(&ds->smu);
		ds->st.redispatches += n_groups;
		ds->st.redispatched_pairs += n_pairs;
		pthread_mutex_unlock(&ds->smu);
		if (n_groups > 0)
			log_warn("dispatch: layer %u: worker %u batch %" PRIu64 " attempt %u failed (%s): %u token groups (%u pairs) re-sent to worker%s %s",
			        ds->layer, m->worker, m->batch_id, m->attempt, why, n_groups,
			        n_pairs, ds->n_msg - first > 1 ? "s" : "",
			        first == ds->n_msg ? "(none: no live copy)" : to);
	}
}

/* A good reply to m: its groups are done, unless its twin won first. */
static void
claim(struct dispatch *ds, struct dmsg *m)
{
	struct dmsg *twin = m->twin >= 0 ? ds->msg[m->twin] : NULL;
	uint32_t e0 = 0;

	m->state = M_DONE;
	cluster_load_add(ds->c, m->worker, -(int64_t)m->n_entries);
	cluster_report(ds->c, m->worker, m->gen, clock_now_ns() - m->t_send, m->n_rows,
	        m->n_entries, 0, NULL);
	for (uint32_t i = 0; i < m->n_grp; i++) {
		if (ds->grp[m->grp[i]].state == G_DONE) {
			/* the twin's reply came first: this one is dropped */
			m->state = M_FAILED;
			return;
		}
	}
	for (uint32_t i = 0; i < m->n_grp; i++) {
		struct group *g = &ds->grp[m->grp[i]];
		g->state = G_DONE;
		g->done_msg = msg_index(ds, m);
		g->entry0 = e0;
		e0 += g->n;
	}
	if (twin != NULL) {
		msg_abandon(ds, twin);
		if (m->is_hedge) {
			pthread_mutex_lock(&ds->smu);
			ds->st.hedges_won++;
			pthread_mutex_unlock(&ds->smu);
		}
	}
}

/* Checks the reply of m and claims it, or fails m. */
static void
take_reply(struct dispatch *ds, struct dmsg *m, uint64_t *bytes,
        uint64_t *max_compute_us)
{
	struct wire_expect ex = { m->batch_id, m->attempt,
		m->pairs ? m->n_entries : m->n_rows, ds->d };
	ProtobufCMessage *hdr;
	size_t nf;
	char why[256];
	int rc;

	*bytes += nng_msg_len(m->reply);
	if ((rc = wire_nng_unpack(m->reply, WIRE_RESULT, NULL, &hdr, &m->rows,
	             &nf)) != 0) {
		snprintf(why, sizeof(why), "malformed reply: %s", wire_errmsg());
		fail_msg(ds, m, rc, why);
		return;
	}
	m->res = (Epmoe__ExpertResult *)hdr;
	if (m->res->status != EPMOE__STATUS__STATUS_OK) {
		snprintf(why, sizeof(why), "worker answered status %d: %.200s",
		        m->res->status, m->res->message ? m->res->message : "");
		fail_msg(ds, m, wire_status_to_err(m->res->status), why);
		return;
	}
	if ((rc = wire_check_result(m->res, nf, &ex)) != 0) {
		/* a late or duplicate reply, or a wrong shape */
		snprintf(why, sizeof(why), "bad reply: %s", wire_errmsg());
		fail_msg(ds, m, rc == EPMOE_ESTATE ? EPMOE_EPROTO : rc, why);
		return;
	}
	if (m->res->compute_us > *max_compute_us)
		*max_compute_us = m->res->compute_us;
	claim(ds, m);
}

/* One completion of m, on the calling thread. */
static void
complete(struct dispatch *ds, struct dmsg *m, uint64_t *bytes,
        uint64_t *max_compute_us)
{
	int rv = m->rv;
	char why[160];

	m->inflight = false;
	m->completed = false;
	if (m->state == M_SEND) {
		if (rv != 0) {
			nng_msg *q = nng_aio_get_msg(m->aio);
			nng_aio_set_msg(m->aio, NULL);
			if (q != NULL) {
				if (m->spare == NULL)
					m->spare = q;
				else
					nng_msg_free(q);
			}
			snprintf(why, sizeof(why), "send: %s%s", nng_strerror(rv),
			        m->fenced ? " (worker fenced)" : "");
			fail_msg(ds, m, wire_nng_err(rv), why);
			return;
		}
		if (m->abandon) {
			fail_msg(ds, m, EPMOE_ECANCELED, "abandoned");
			return;
		}
		nng_aio_set_timeout(m->aio, until_ms(m->deadline_ns));
		m->state = M_RECV;
		m->inflight = true;
		nng_ctx_recv(m->ctx, m->aio);
		return;
	}
	if (m->state != M_RECV)
		return;
	if (rv != 0) {
		if (rv == NNG_ETIMEDOUT)
			snprintf(why, sizeof(why), "no reply within its %" PRIu64 " ms deadline",
			        (m->deadline_ns - m->t_send) / 1000000u);
		else
			snprintf(why, sizeof(why), "receive: %s%s", nng_strerror(rv),
			        m->fenced ? " (worker fenced)" : "");
		fail_msg(ds, m, wire_nng_err(rv), why);
		return;
	}
	m->reply = nng_aio_get_msg(m->aio);
	nng_aio_set_msg(m->aio, NULL);
	if (m->abandon) {
		*bytes += nng_msg_len(m->reply);
		fail_msg(ds, m, EPMOE_ECANCELED, "abandoned");
		return;
	}
	take_reply(ds, m, bytes, max_compute_us);
}

/* Duplicates m to another live worker holding all its groups. */
static void
hedge(struct dispatch *ds, struct dmsg *m, uint64_t *pack_ns)
{
	int best = -1;
	int mi = msg_index(ds, m);
	struct dmsg *h;

	m->hedge_ns = 0; /* once */
	for (uint32_t w = 0; w < ds->W; w++) {
		bool all = w != m->worker && ds->cp[w].alive && !ds->bad[w];
		for (uint32_t i = 0; all && i < m->n_grp; i++)
			all = copy_slot(ds, ds->grp[m->grp[i]].expert, w) >= 0;
		if (all && (best < 0 || ds->load[w] < ds->load[best]))
			best = (int)w;
	}
	if (best < 0 || (h = msg_begin(ds, (uint32_t)best, m->attempt + 1)) == NULL)
		return;
	/* msg_begin may have moved ds->msg: m stays valid (heap) */
	h->is_hedge = true;
	for (uint32_t i = 0; i < m->n_grp; i++) {
		if (msg_add_group(ds, h, m->grp[i]) != 0) {
			h->state = M_FAILED;
			return;
		}
	}
	h->twin = mi;
	m->twin = (int)(ds->n_msg - 1);
	ds->load[best] += h->n_entries;
	pthread_mutex_lock(&ds->smu);
	ds->st.hedges++;
	pthread_mutex_unlock(&ds->smu);
	log_info("dispatch: layer %u: worker %u batch %" PRIu64 " pending for %" PRIu64 " ms: hedged to worker %u",
	        ds->layer, m->worker, m->batch_id, (clock_now_ns() - m->t_send) / 1000000u,
	        (uint32_t)best);
	msg_send(ds, h, pack_ns);
}

/* Whether a request is still out. */
static bool
pending(const struct dmsg *m)
{
	return m->state == M_SEND || m->state == M_RECV;
}

/* Every group done, or one lost (the call fails: no point waiting). */
static bool
groups_settled(const struct dispatch *ds)
{
	bool all = true;

	for (uint32_t i = 0; i < ds->n_grp; i++) {
		if (ds->grp[i].state == G_LOST)
			return true;
		all &= ds->grp[i].state == G_DONE;
	}
	return all;
}

/* Waits for completions or until `until`; processes them. */
static void
wait_round(struct dispatch *ds, uint64_t until, uint64_t *bytes,
        uint64_t *max_compute_us)
{
	struct dmsg *list;
	struct timespec ts;

	ts.tv_sec = (time_t)(until / 1000000000u);
	ts.tv_nsec = (long)(until % 1000000000u);
	pthread_mutex_lock(&ds->mu);
	while (ds->done_head == NULL) {
		if (pthread_cond_timedwait(&ds->cv, &ds->mu, &ts) == ETIMEDOUT)
			break;
	}
	list = ds->done_head;
	ds->done_head = NULL;
	pthread_mutex_unlock(&ds->mu);
	/* oldest first (the list is LIFO) */
	{
		struct dmsg *rev = NULL;
		while (list) {
			struct dmsg *n = list->next_done;
			list->next_done = rev;
			rev = list;
			list = n;
		}
		list = rev;
	}
	while (list) {
		struct dmsg *n = list->next_done;
		complete(ds, list, bytes, max_compute_us);
		list = n;
	}
}

/* Requests to workers the cluster fenced meanwhile are given up now
 * rather than at their deadline. */
static void
watch_fences(struct dispatch *ds, unsigned *version)
{
	unsigned v = cluster_version(ds->c);

	if (v == *version)
		return;
	*version = v;
	cluster_peers(ds->c, ds->cp, ds->W);
	for (uint32_t i = 0; i < ds->n_msg; i++) {
		struct dmsg *m = ds->msg[i];
		const struct cluster_peer *p = &ds->cp[m->worker];
		if (!pending(m) || m->abandon || (p->alive && p->gen == m->gen))
			continue;
		m->fenced = true;
		msg_abandon(ds, m);
	}
}

/* Cancels what is still out and waits for it (end of the call). */
static void
drain(struct dispatch *ds)
{
	for (uint32_t i = 0; i < ds->n_msg; i++) {
		struct dmsg *m = ds->msg[i];
		if (m->inflight) {
			nng_aio_cancel(m->aio);
			nng_aio_wait(m->aio);
		}
	}
	pthread_mutex_lock(&ds->mu);
	ds->done_head = NULL;
	pthread_mutex_unlock(&ds->mu);
	for (uint32_t i = 0; i < ds->n_msg; i++) {
		struct dmsg *m = ds->msg[i];
		if (m->inflight) {
			nng_msg *q = nng_aio_get_msg(m->aio);
			nng_aio_set_msg(m->aio, NULL);
			if (q != NULL)
				nng_msg_free(q);
			m->inflight = false;
			cluster_load_add(ds->c, m->worker, -(int64_t)m->n_entries);
			pthread_mutex_lock(&ds->smu);
			ds->st.abandoned++;
			pthread_mutex_unlock(&ds->smu);
		}
		m->completed = false;
		if (pending(m))
			m->state = M_FAILED;
	}
}

/* ---- planning ---- */

static int
reserve(struct dispatch *ds, size_t n_pairs, uint32_t T)
{
	uint32_t E = ds->m->hp.n_expert;

	if (n_pairs > ds->cap_pairs) {
		size_t c = ds->cap_pairs ? ds->cap_pairs : 64;
		while (c < n_pairs)
			c *= 2;
		uint32_t **arrs[4] = { &ds->order, &ds->pair_tok, &ds->pair_grp, &ds->pair_pos };
		for (int i = 0; i < 4; i++) {
			uint32_t *a = realloc(*arrs[i], c * sizeof(uint32_t));
			if (a == NULL)
				return EPMOE_ENOMEM;
			*arrs[i] = a;
		}
		ds->cap_pairs = c;
	}
	if (T > ds->cap_tok) {
		uint32_t *r = realloc(ds->tok_row, (size_t)T * sizeof(*r));
		if (r == NULL)
			return EPMOE_ENOMEM;
		ds->tok_row = r;
		uint32_t *s = realloc(ds->tok_stamp, (size_t)T * sizeof(*s));
		if (s == NULL)
			return EPMOE_ENOMEM;
		memset(s + ds->cap_tok, 0, (size_t)(T - ds->cap_tok) * sizeof(*s));
		ds->tok_stamp = s;
		uint8_t *u = realloc(ds->unserved, T);
		if (u == NULL)
			return EPMOE_ENOMEM;
		ds->unserved = u;
		ds->cap_tok = T;
	}
	if (grow((void **)&ds->grp, &ds->cap_grp, E, sizeof(*ds->grp)))
		return EPMOE_ENOMEM;
	return 0;
}

/* Groups the pairs by expert (stable: token order within a group). */
static int
plan(struct dispatch *ds, const struct moe_assign *a)
{
	uint32_t T = a->n_tok, E = ds->m->hp.n_expert, max_k = 0;
	size_t n_pairs = a->off[T];
	int rc;

	if (a->off[0] != 0)
		return EPMOE_EINVAL;
	if ((rc = reserve(ds, n_pairs, T)) != 0)
		return rc;
	memset(ds->ecount, 0, ((size_t)E + 1) * sizeof(uint32_t));
	for (uint32_t t = 0; t < T; t++) {
		if (a->off[t + 1] < a->off[t] || a->off[t + 1] > n_pairs)
			return EPMOE_EINVAL;
		if (a->off[t + 1] - a->off[t] > max_k)
			max_k = a->off[t + 1] - a->off[t];
		for (uint32_t i = a->off[t]; i < a->off[t + 1]; i++) {
			if (a->expert[i] < 0 || (uint32_t)a->expert[i] >= E)
				return EPMOE_EINVAL;
			ds->pair_tok[i] = t;
			ds->ecount[a->expert[i]]++;
		}
	}
	ds->pairs_mode = max_k > 2;
	ds->n_grp = 0;
	{
		uint32_t sum = 0;
		for (uint32_t e = 0; e < E; e++) {
			uint32_t c = ds->ecount[e];
			if (c > 0) {
				ds->grp[ds->n_grp] = (struct group){ .expert = e, .first = sum,
					.n = c, .done_msg = -1, .want = -1, .state = G_PENDING };
				ds->n_grp++;
			}
			ds->ecount[e] = sum;
			sum += c;
		}
	}
	for (size_t i = 0; i < n_pairs; i++)
		ds->order[ds->ecount[a->expert[i]]++] = (uint32_t)i;
	for (uint32_t g = 0; g < ds->n_grp; g++) {
		for (uint32_t k = 0; k < ds->grp[g].n; k++) {
			uint32_t p = ds->order[ds->grp[g].first + k];
			ds->pair_grp[p] = g;
			ds->pair_pos[p] = k;
		}
	}
	return 0;
}

static int
chunk_cmp(const void *a, const void *b)
{
	const struct llep_chunk *x = a, *y = b;

	if (x->expert != y->expert)
		return x->expert < y->expert ? -1 : 1;
	return x->start < y->start ? -1 : x->start > y->start;
}

/* LLEP (llep.h): when this layer's worker max/mean (each expert on its
 * first live copy) exceeds lambda, the hot experts' groups are cut into
 * token ranges for their other live copies.  A token's math does not
 * change: each pair is still computed once by one copy of its expert and
 * combined as in step 7.  Groups of at least MM_QUANT_PANEL_N tokens are cut
 * only into pieces of at least that size (a piece merges with its
 * neighbour otherwise), so every piece keeps the matmul path of the whole
 * group and the outputs stay bit-identical to an unsplit call. */
static int
llep_split(struct dispatch *ds)
{
	uint32_t E = ds->m->hp.n_expert, W = ds->W, n_ch = 0, n_old = ds->n_grp, n = 0;
	bool any_copies = false, skipped;
	int rc;

	memset(ds->l_load, 0, E * sizeof(*ds->l_load));
	memset(ds->l_native, 0, E * sizeof(*ds->l_native));
	memset(ds->l_holds, 0, (size_t)E * W * sizeof(*ds->l_holds));
	for (uint32_t e = 0; e < E; e++)
		ds->l_grp[e] = -1;
	for (uint32_t g = 0; g < n_old; g++) {
		uint32_t e = ds->grp[g].expert, nc = candidates(ds, e);
		if (nc == 0)
			return 0; /* a lost expert: plain dispatch reports it */
		ds->l_load[e] = ds->grp[g].n;
		ds->l_native[e] = ds->cand_w[0];
		ds->l_grp[e] = (int32_t)g;
		for (uint32_t k = 0; k < nc; k++)
			ds->l_holds[(size_t)e * W + ds->cand_w[k]] = true;
		any_copies |= nc > 1;
	}
	if (!any_copies)
		return 0;
	if ((rc = llep_plan(ds->l_load, E, W, ds->l_native, ds->l_holds, &ds->cfg.llep_cfg,
	             ds->l_chunks, &n_ch, &skipped)) != 0)
		return rc;
	if (skipped)
		return 0;
	qsort(ds->l_chunks, n_ch, sizeof(*ds->l_chunks), chunk_cmp);
	/* keep pieces on the group's side of the small/large matmul switch */
	for (uint32_t i = 0; i < n_ch; i++) {
		struct llep_chunk *c = &ds->l_chunks[i];
		if (ds->l_load[c->expert] < MM_QUANT_PANEL_N || c->end - c->start >= MM_QUANT_PANEL_N)
			continue;
		if (i + 1 < n_ch && ds->l_chunks[i + 1].expert == c->expert) {
			ds->l_chunks[i + 1].start = c->start; /* into the next */
			c->end = c->start;
		} else if (i > 0 && ds->l_chunks[i - 1].expert == c->expert) {
			ds->l_chunks[i - 1].end = c->end;
			c->end = c->start;
		}
	}
	if (grow((void **)&ds->grp, &ds->cap_grp, n_ch > n_old ? n_ch : n_old,
	        sizeof(*ds->grp)) != 0)
		return EPMOE_ENOMEM;
	memcpy(ds->l_old, ds->grp, n_old * sizeof(*ds->grp));
	for (uint32_t i = 0; i < n_ch; i++) {
		const struct llep_chunk *c = &ds->l_chunks[i];
		const struct group *og = &ds->l_old[ds->l_grp[c->expert]];
		if (c->end == c->start)
			continue;
		ds->grp[n] = (struct group){ .expert = c->expert, .first = og->first + c->start,
			.n = c->end - c->start, .done_msg = -1, .want = (int32_t)c->worker,
			.state = G_PENDING };
		for (uint32_t k = 0; k < ds->grp[n].n; k++) {
			uint32_t p = ds->order[ds->grp[n].first + k];
			ds->pair_grp[p] = n;
			ds->pair_pos[p] = k;
		}
		n++;
	}
	ds->n_grp = n;
	pthread_mutex_lock(&ds->smu);
	ds->st.llep_calls++;
	ds->st.llep_split_groups += n - n_old;
	pthread_mutex_unlock(&ds->smu);
	return 0;
}

/* out = Σ over each token's experts of their weighted outputs. */
static void
combine(struct dispatch *ds, float *out)
{
	const struct moe_assign *a = ds->a;
	uint32_t d = ds->d;

	if (ds->pairs_mode) {
		/* a token's pairs in routing order */
		for (uint32_t t = 0; t < a->n_tok; t++) {
			float *o = out + (size_t)t * d;
			for (uint32_t i = a->off[t]; i < a->off[t + 1]; i++) {
				const struct group *g = &ds->grp[ds->pair_grp[i]];
				const struct dmsg *m = ds->msg[g->done_msg];
				const float *y = m->rows + (size_t)(g->entry0 + ds->pair_pos[i]) * d;
				for (uint32_t k = 0; k < d; k++)
					o[k] += y[k];
			}
		}
		return;
	}
	/* at most two experts a token: any order of adding is exact */
	for (uint32_t i = 0; i < ds->n_msg; i++) {
		const struct dmsg *m = ds->msg[i];
		if (m->state != M_DONE)
			continue;
		for (uint32_t j = 0; j < m->n_rows; j++) {
			float *o = out + (size_t)m->row_tok[j] * d;
			const float *y = m->rows + (size_t)j * d;
			for (uint32_t k = 0; k < d; k++)
				o[k] += y[k];
		}
	}
}

/* The first half of a call: plans the layer's routing and sends every
 * request.  Returns at once; call_wait() gathers. */
static void
call_submit(struct dispatch *ds, uint32_t layer, const float *x,
        const struct moe_assign *a, float *out)
{
	uint32_t T = a->n_tok, d = ds->d;
	int rc = 0;

	ds->in_call = true;
	ds->call_rc = 0;
	ds->call_T = T;
	ds->call_pairs = a->off[T];
	ds->call_out = out;
	ds->call_t0 = clock_now_ns();
	ds->call_pack = 0;
	ds->n_msg = 0;
	ds->pl = NULL;
	memset(out, 0, (size_t)T * d * sizeof(float));
	ds->n_unserved = 0;
	if (ds->call_pairs == 0)
		return;
	if (layer >= ds->L) {
		ds->call_rc = EPMOE_EINVAL;
		return;
	}
	ds->call_end = ds->call_t0 + 2 * (uint64_t)ds->dl.cap_ms * 1000000u;
	ds->pl = cluster_placement_acquire(ds->c);
	ds->layer = layer;
	ds->a = a;
	ds->x = x;
	ds->call_version = cluster_version(ds->c);
	cluster_peers(ds->c, ds->cp, ds->W);
	for (uint32_t w = 0; w < ds->W; w++) {
		ds->load[w] = ds->cp[w].load;
		ds->bad[w] = false;
		ds->near[w] = ds->cp[w].near;
	}
	if ((rc = plan(ds, a)) != 0 ||
	        (ds->cfg.llep && (rc = llep_split(ds)) != 0)) {
		ds->call_rc = rc;
		return;
	}
	{
		/* every group, in expert order: one request per worker */
		uint32_t gl[256], n = 0;
		for (uint32_t g = 0; g < ds->n_grp; g++) {
			gl[n++] = g;
			if (n == 256) {
				send_groups(ds, gl, n, 0, &ds->call_pack);
				n = 0;
			}
		}
		if (n > 0)
			send_groups(ds, gl, n, 0, &ds->call_pack);
	}
}

/* The second half: replies, failures, re-sends, hedges, then the
 * combine.  Returns what run() returns. */
static int
call_wait(struct dispatch *ds)
{
	uint32_t T = ds->call_T, d = ds->d, layer = ds->layer;
	uint64_t t0 = ds->call_t0, call_end = ds->call_end, t_got, t_end;
	uint64_t bytes_in = 0, max_compute = 0;
	size_t n_pairs = ds->call_pairs;
	float *out = ds->call_out;
	int rc = ds->call_rc;

	ds->in_call = false;
	if (n_pairs == 0 && rc == 0) {
		pthread_mutex_lock(&ds->smu);
		ds->st.calls++;
		ds->st.tokens += T;
		pthread_mutex_unlock(&ds->smu);
		return 0;
	}
	if (rc == EPMOE_EINVAL && ds->pl == NULL)
		return rc;
	if (rc != 0)
		goto out;
	/* gather: replies, failures, re-sends, hedges */
	while (!groups_settled(ds)) {
		uint64_t now = clock_now_ns(), until = now + POLL_MS * 1000000u;
		bool any = false;

		if (now >= call_end)
			break;
		for (uint32_t i = 0; i < ds->n_msg; i++) {
			struct dmsg *m = ds->msg[i];
			if (!pending(m))
				continue;
			any = true;
			if (m->hedge_ns != 0 && m->twin < 0) {
				if (m->hedge_ns <= now)
					hedge(ds, m, &ds->call_pack);
				else if (m->hedge_ns < until)
					until = m->hedge_ns;
			}
		}
		if (!any) /* nothing out, yet groups pending: cannot happen */
			break;
		if (until > call_end)
			until = call_end;
		wait_round(ds, until, &bytes_in, &max_compute);
		watch_fences(ds, &ds->call_version);
	}
	t_got = clock_now_ns();
	drain(ds);
	memset(ds->unserved, 0, T);
	for (uint32_t g = 0; g < ds->n_grp; g++) {
		struct group *gr = &ds->grp[g];
		if (gr->state == G_DONE)
			continue;
		gr->state = G_LOST;
		for (uint32_t k = 0; k < gr->n; k++) {
			uint32_t t = ds->pair_tok[ds->order[gr->first + k]];
			ds->n_unserved += !ds->unserved[t];
			ds->unserved[t] = 1;
		}
	}
	if (ds->n_unserved > 0) {
		rc = EPMOE_EUNAVAIL;
		log_warn("dispatch: layer %u: %u of %u tokens need experts no live worker serves",
		        layer, ds->n_unserved, T);
		goto out;
	}
	combine(ds, out);
	t_end = clock_now_ns();
	/* the layer waits for its busiest worker: pairs each one computed */
	memset(ds->served, 0, ds->W * sizeof(*ds->served));
	for (uint32_t g = 0; g < ds->n_grp; g++) {
		const struct group *gr = &ds->grp[g];
		if (gr->done_msg >= 0 && (uint32_t)gr->done_msg < ds->n_msg &&
		        ds->msg[gr->done_msg]->worker < ds->W)
			ds->served[ds->msg[gr->done_msg]->worker] += gr->n;
	}
	/* live: from the peers this call read (no second cluster lock) */
	uint32_t busiest = 0, live = 0;
	for (uint32_t w = 0; w < ds->W; w++) {
		busiest = ds->served[w] > busiest ? ds->served[w] : busiest;
		live += ds->cp[w].alive;
	}
	pthread_mutex_lock(&ds->smu);
	if (live > 0 && n_pairs > 0) {
		ds->st.busiest_pairs += busiest;
		ds->st.mean_pairs += (double)n_pairs / live;
	}
	{
		/* everything between packing and combining is waiting on
		 * the workers: transport and their compute (with two
		 * micro-batches in flight, also the router's work on the
		 * other one) */
		uint64_t pack_ns = ds->call_pack;
		double wait = (double)(t_got - t0 - pack_ns) * 1e-9;
		double comp = (double)max_compute * 1e-6;
		ds->st.t_pack += (double)pack_ns * 1e-9;
		ds->st.t_compute += comp < wait ? comp : wait;
		ds->st.t_wire += comp < wait ? wait - comp : 0;
		ds->st.t_combine += (double)(t_end - t_got) * 1e-9;
		ds->st.t_total += (double)(t_end - t0) * 1e-9;
	}
	pthread_mutex_unlock(&ds->smu);
out:
	if (rc != 0) {
		drain(ds);
		memset(out, 0, (size_t)T * d * sizeof(float));
		if (rc == EPMOE_ETIMEDOUT || rc == EPMOE_ECLOSED)
			rc = EPMOE_EUNAVAIL;
	}
	for (uint32_t i = 0; i < ds->n_msg; i++)
		msg_release(ds->msg[i]);
	if (ds->pl)
		cluster_placement_release(ds->c, ds->pl);
	ds->pl = NULL;
	pthread_mutex_lock(&ds->smu);
	ds->st.calls++;
	ds->st.failures += rc != 0;
	ds->st.tokens += T;
	ds->st.pairs += n_pairs;
	ds->st.bytes_recv += bytes_in;
	ds->st.unserved_tokens += ds->n_unserved;
	pthread_mutex_unlock(&ds->smu);
	return rc;
}

static int
dispatch_run(struct moe_backend *be, uint32_t layer, const float *x,
        const struct moe_assign *a, float *out)
{
	struct dispatch *ds = (struct dispatch *)be;
	int rc;

	call_submit(ds, layer, x, a, out);
	rc = call_wait(ds);
	ds->last_failed = rc != 0 ? ds : NULL;
	return rc;
}

static int dispatch_make(struct dispatch **out, struct cluster *c,
        const struct model *m, const struct dispatch_cfg *cfg);

/* The dispatcher of micro-batch mb: the backend itself for 0, its second
 * dispatcher (own requests, contexts, batch ids and scratch; same
 * cluster) for 1. */
static struct dispatch *
mb_of(struct dispatch *ds, unsigned mb, bool make)
{
	if (mb == 0)
		return ds;
	if (ds->mb1 == NULL && make) {
		if (dispatch_make(&ds->mb1, ds->c, ds->m, &ds->cfg) != 0)
			return NULL;
		/* batch ids of the two never meet */
		ds->mb1->next_batch_id = (uint64_t)1 << 62;
	}
	return ds->mb1;
}

static int
dispatch_submit(struct moe_backend *be, unsigned mb, uint32_t layer,
        const float *x, const struct moe_assign *a, float *out)
{
	struct dispatch *ds = mb_of((struct dispatch *)be, mb, true);

	if (mb > 1)
		return EPMOE_EINVAL;
	if (ds == NULL)
		return EPMOE_ENOMEM;
	if (ds->in_call)
		return EPMOE_EINVAL;
	call_submit(ds, layer, x, a, out);
	return 0;
}

static int
dispatch_wait(struct moe_backend *be, unsigned mb)
{
	struct dispatch *top = (struct dispatch *)be;
	struct dispatch *ds = mb > 1 ? NULL : mb_of(top, mb, false);
	int rc;

	if (ds == NULL || !ds->in_call)
		return EPMOE_EINVAL;
	rc = call_wait(ds);
	if (rc != 0)
		top->last_failed = ds;
	return rc;
}

static void
dispatch_hint(struct moe_backend *be, unsigned mb, uint32_t layer,
        const uint32_t *expert, uint32_t n)
{
	struct dispatch *ds = mb > 1 ? NULL : mb_of((struct dispatch *)be, mb, true);

	if (ds == NULL || ds->in_call)
		return;
	ds->n_hint = 0;
	ds->hint_layer = layer;
	for (uint32_t i = 0; i < n && ds->n_hint < ds->m->hp.n_expert; i++)
		if (expert[i] < ds->m->hp.n_expert)
			ds->hint[ds->n_hint++] = expert[i];
}

static uint32_t
dispatch_unserved(struct moe_backend *be, uint8_t *mask, uint32_t n_tok)
{
	struct dispatch *ds = ((struct dispatch *)be)->last_failed;

	if (ds == NULL || ds->n_unserved == 0)
		return 0;
	for (uint32_t t = 0; t < n_tok && t < ds->cap_tok; t++)
		mask[t] |= ds->unserved[t];
	return ds->n_unserved;
}

static void
dispatch_free(struct moe_backend *be)
{
	struct dispatch *ds = (struct dispatch *)be;

	if (ds == NULL)
		return;
	if (ds->mb1)
		dispatch_free(&ds->mb1->be);
	for (uint32_t i = 0; ds->msg && i < ds->cap_msg; i++) {
		struct dmsg *m = ds->msg[i];
		if (m == NULL)
			continue;
		nng_aio_stop(m->aio);
		nng_aio_free(m->aio);
		if (m->ctx_open)
			nng_ctx_close(m->ctx);
		msg_release(m);
		if (m->spare)
			nng_msg_free(m->spare);
		free(m->grp);
		free(m->row_tok);
		free(m->gather);
		free(m->combine);
		free(m->weights);
		free(m->groups);
		free(m->gp);
		free(m);
	}
	free(ds->msg);
	free(ds->cp);
	free(ds->load);
	free(ds->served);
	free(ds->bad);
	free(ds->near);
	free(ds->cand_w);
	free(ds->cand_s);
	free(ds->order);
	free(ds->pair_tok);
	free(ds->pair_grp);
	free(ds->pair_pos);
	free(ds->ecount);
	free(ds->grp);
	free(ds->tok_row);
	free(ds->tok_stamp);
	free(ds->unserved);
	free(ds->l_load);
	free(ds->l_native);
	free(ds->l_grp);
	free(ds->l_holds);
	free(ds->l_chunks);
	free(ds->l_old);
	free(ds->hint);
	pthread_cond_destroy(&ds->cv);
	pthread_mutex_destroy(&ds->mu);
	pthread_mutex_destroy(&ds->smu);
	free(ds);
}

static int
dispatch_make(struct dispatch **out, struct cluster *c,
        const struct model *m, const struct dispatch_cfg *cfg)
{
	struct dispatch *ds;
	pthread_condattr_t ca;

	if (c == NULL || m == NULL)
		return EPMOE_EINVAL;
	if ((ds = calloc(1, sizeof(*ds))) == NULL)
		return EPMOE_ENOMEM;
	pthread_mutex_init(&ds->smu, NULL);
	pthread_mutex_init(&ds->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ds->cv, &ca);
	pthread_condattr_destroy(&ca);
	ds->be.run = dispatch_run;
	ds->be.free = dispatch_free;
	ds->be.unserved = dispatch_unserved;
	ds->be.submit = dispatch_submit;
	ds->be.wait = dispatch_wait;
	ds->be.hint = dispatch_hint;
	ds->c = c;
	ds->m = m;
	ds->W = cluster_n_workers(c);
	ds->d = m->hp.n_embd;
	ds->L = m->hp.n_layer;
	if (cfg)
		ds->cfg = *cfg;
	dl_cfg_default(&ds->dl);
	if (ds->cfg.timeout_ms)
		ds->dl.cap_ms = ds->cfg.timeout_ms;
	if (ds->cfg.floor_ms)
		ds->dl.floor_ms = ds->cfg.floor_ms;
	if (ds->dl.floor_ms > ds->dl.cap_ms)
		ds->dl.floor_ms = ds->dl.cap_ms;
	if (ds->cfg.deadline_k > 0)
		ds->dl.k = ds->cfg.deadline_k;
	replica_init(&ds->rc, ds->cfg.replica, ds->cfg.replica_seed);
	ds->cp = calloc(ds->W, sizeof(*ds->cp));
	ds->load = calloc(ds->W, sizeof(*ds->load));
	ds->served = calloc(ds->W, sizeof(*ds->served));
	ds->bad = calloc(ds->W, sizeof(*ds->bad));
	ds->near = calloc(ds->W, sizeof(*ds->near));
	ds->cand_w = calloc(ds->W, sizeof(*ds->cand_w));
	ds->cand_s = calloc(ds->W, sizeof(*ds->cand_s));
	ds->ecount = calloc((size_t)m->hp.n_expert + 1, sizeof(*ds->ecount));
	ds->l_load = calloc(m->hp.n_expert, sizeof(*ds->l_load));
	ds->l_native = calloc(m->hp.n_expert, sizeof(*ds->l_native));
	ds->l_grp = calloc(m->hp.n_expert, sizeof(*ds->l_grp));
	ds->l_holds = calloc((size_t)m->hp.n_expert * ds->W, sizeof(*ds->l_holds));
	ds->l_chunks = calloc(2 * (size_t)m->hp.n_expert * ds->W, sizeof(*ds->l_chunks));
	ds->l_old = calloc(m->hp.n_expert, sizeof(*ds->l_old));
	ds->hint = calloc(m->hp.n_expert, sizeof(*ds->hint));
	if (!ds->hint || !ds->cp || !ds->load || !ds->served || !ds->bad || !ds->cand_w || !ds->cand_s ||
	        !ds->ecount || !ds->near || !ds->l_load || !ds->l_native || !ds->l_grp ||
	        !ds->l_holds || !ds->l_chunks || !ds->l_old) {
		dispatch_free(&ds->be);
		return EPMOE_ENOMEM;
	}
	*out = ds;
	return 0;
}

int
dispatch_new(struct moe_backend **out, struct cluster *c,
        const struct model *m, const struct dispatch_cfg *cfg)
{
	struct dispatch *ds;
	int rc = dispatch_make(&ds, c, m, cfg);

	if (rc == 0)
		*out = &ds->be;
	return rc;
}

/* a += b, field by field (every field is a counter or a sum) */
static void
stats_add(struct dispatch_stats *a, const struct dispatch_stats *b)
{
	a->calls += b->calls;
	a->failures += b->failures;
	a->tokens += b->tokens;
	a->pairs += b->pairs;
	a->msgs += b->msgs;
	a->rows_sent += b->rows_sent;
	a->bytes_sent += b->bytes_sent;
	a->bytes_recv += b->bytes_recv;
	a->batch_failures += b->batch_failures;
	a->redispatches += b->redispatches;
	a->redispatched_pairs += b->redispatched_pairs;
	a->hedges += b->hedges;
	a->hedges_won += b->hedges_won;
	a->abandoned += b->abandoned;
	a->stale += b->stale;
	a->unserved_tokens += b->unserved_tokens;
	a->llep_calls += b->llep_calls;
	a->llep_split_groups += b->llep_split_groups;
	a->hinted_msgs += b->hinted_msgs;
	a->hinted_experts += b->hinted_experts;
	a->busiest_pairs += b->busiest_pairs;
	a->mean_pairs += b->mean_pairs;
	a->t_pack += b->t_pack;
	a->t_wire += b->t_wire;
	a->t_compute += b->t_compute;
	a->t_combine += b->t_combine;
	a->t_total += b->t_total;
}

void
dispatch_stats(struct moe_backend *be, struct dispatch_stats *out)
{
	struct dispatch *ds = (struct dispatch *)be;

	pthread_mutex_lock(&ds->smu);
	*out = ds->st;
	pthread_mutex_unlock(&ds->smu);
	if (ds->mb1) {
		struct dispatch_stats b;
		dispatch_stats(&ds->mb1->be, &b);
		stats_add(out, &b);
	}
}

void
dispatch_stats_reset(struct moe_backend *be)
{
	struct dispatch *ds = (struct dispatch *)be;

	pthread_mutex_lock(&ds->smu);
	memset(&ds->st, 0, sizeof(ds->st));
	pthread_mutex_unlock(&ds->smu);
	if (ds->mb1)
		dispatch_stats_reset(&ds->mb1->be);
}
