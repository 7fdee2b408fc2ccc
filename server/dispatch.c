/* Scatter/gather of one MoE layer over the workers.  See dispatch.h. */
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
#include "cluster.h"
#include "dispatch.h"
#include "err.h"
#include "log.h"
#include "model.h"
#include "netsock.h"
#include "placement.h"
#include "wire.h"
#include "wire_nng.h"

enum { P_IDLE = 0, P_SEND, P_RECV, P_DONE, P_FAILED };

/* Per worker: its REQ context, aio, reply, and the batch being built. */
struct peer {
	nng_ctx ctx;
	bool ctx_open;
	int sock_id;          /* socket the context belongs to */
	nng_aio *aio;
	nng_msg *spare;       /* last reply, reused as the next request */
	nng_msg *reply;
	Epmoe__ExpertResult *res;
	const float *rows;    /* reply rows, [n_rows, d] */
	int state;
	uint64_t batch_id;
	uint32_t gen;
	uint64_t t_send;

	uint32_t last_tok;    /* while building: last token given a row */
	uint32_t n_rows, n_entries, n_groups;
	uint32_t cap_rows, cap_entries, cap_groups;
	uint32_t *row_tok;    /* [n_rows] token of each message row */
	float *weights;       /* [n_entries] */
	uint32_t *combine;    /* [n_entries] message row of each entry */
	Epmoe__ExpertGroup *groups;
	Epmoe__ExpertGroup **gp;
};

struct dispatch {
	struct moe_backend be;
	struct cluster *c;
	const struct model *m;
	uint32_t W, d, deadline_ms;
	struct peer *p;
	struct cluster_peer *cp;
	uint64_t next_batch_id;

	uint32_t *pair_slot, *pair_row, *order;
	size_t cap_pairs;
	uint32_t *slot_count;
	uint32_t cap_slots;

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

static int
peer_reserve(struct peer *p, size_t rows, size_t entries, size_t groups)
{
	uint32_t c;

	if (rows > p->cap_rows &&
	        grow((void **)&p->row_tok, &p->cap_rows, rows, sizeof(uint32_t)))
		return EPMOE_ENOMEM;
	if (entries > p->cap_entries) {
		c = p->cap_entries;
		if (grow((void **)&p->weights, &c, entries, sizeof(float)))
			return EPMOE_ENOMEM;
		c = p->cap_entries;
		if (grow((void **)&p->combine, &c, entries, sizeof(uint32_t)))
			return EPMOE_ENOMEM;
		p->cap_entries = c;
	}
	if (groups > p->cap_groups) {
		c = p->cap_groups;
		if (grow((void **)&p->groups, &c, groups, sizeof(*p->groups)))
			return EPMOE_ENOMEM;
		c = p->cap_groups;
		if (grow((void **)&p->gp, &c, groups, sizeof(*p->gp)))
			return EPMOE_ENOMEM;
		p->cap_groups = c;
	}
	return 0;
}

static int
reserve_pairs(struct dispatch *ds, size_t n_pairs, uint32_t n_slots)
{
	if (n_pairs > ds->cap_pairs) {
		size_t c = ds->cap_pairs ? ds->cap_pairs : 64;
		uint32_t *a, *b, *o;
		while (c < n_pairs)
			c *= 2;
		a = realloc(ds->pair_slot, c * sizeof(*a));
		if (a == NULL)
			return EPMOE_ENOMEM;
		ds->pair_slot = a;
		b = realloc(ds->pair_row, c * sizeof(*b));
		if (b == NULL)
			return EPMOE_ENOMEM;
		ds->pair_row = b;
		o = realloc(ds->order, c * sizeof(*o));
		if (o == NULL)
			return EPMOE_ENOMEM;
		ds->order = o;
		ds->cap_pairs = c;
	}
	if (n_slots + 1 > ds->cap_slots) {
		uint32_t *s = realloc(ds->slot_count, ((size_t)n_slots + 1) * sizeof(*s));
		if (s == NULL)
			return EPMOE_ENOMEM;
		ds->slot_count = s;
		ds->cap_slots = n_slots + 1;
	}
	return 0;
}

static int
remaining_ms(uint64_t deadline)
{
	uint64_t now = clock_now_ns();

	if (now >= deadline)
		return 1; /* let the aio fail at once with NNG_ETIMEDOUT */
	return (int)((deadline - now + 999999u) / 1000000u);
}

/* Opens (or re-opens, after the cluster replaced the socket) w's
 * context. */
static int
peer_ctx(struct peer *p, nng_socket sock)
{
	int rv;

	if (p->ctx_open && p->sock_id == nng_socket_id(sock))
		return 0;
	if (p->ctx_open) {
		nng_ctx_close(p->ctx);
		p->ctx_open = false;
	}
	if ((rv = nng_ctx_open(&p->ctx, sock)) != 0)
		return rv;
	/* no NNG resend: failures are the router's decision */
	nng_ctx_set_ms(p->ctx, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	p->ctx_open = true;
	p->sock_id = nng_socket_id(sock);
	return 0;
}

/* Ends w's request with an error: reports it, frees what it holds. */
static void
peer_fail(struct dispatch *ds, uint32_t w, int err, const char *why)
{
	struct peer *p = &ds->p[w];

	cluster_report(ds->c, w, p->gen, clock_now_ns() - p->t_send, 0, err, why);
	log_warn("dispatch: worker %u request %" PRIu64 " failed: %s", w,
	        p->batch_id, why);
	p->state = P_FAILED;
}

/* Cancels every request still in flight and frees its message. */
static void
cancel_all(struct dispatch *ds)
{
	for (uint32_t w = 0; w < ds->W; w++) {
		struct peer *p = &ds->p[w];
		if (p->state == P_SEND || p->state == P_RECV) {
			nng_msg *m;
			nng_aio_cancel(p->aio);
			nng_aio_wait(p->aio);
			/* a failed send leaves the request with us; a completed
			 * receive (raced with the cancel) hands us the reply */
			if ((m = nng_aio_get_msg(p->aio)) != NULL)
				nng_msg_free(m);
			nng_aio_set_msg(p->aio, NULL);
			p->state = P_IDLE;
		}
	}
}

/* Releases the replies of the call; keeps each as its peer's spare. */
static void
release_replies(struct dispatch *ds)
{
	for (uint32_t w = 0; w < ds->W; w++) {
		struct peer *p = &ds->p[w];
		if (p->res != NULL) {
			protobuf_c_message_free_unpacked(&p->res->base, NULL);
			p->res = NULL;
		}
		if (p->reply != NULL) {
			if (p->spare != NULL)
				nng_msg_free(p->spare);
			p->spare = p->reply;
			p->reply = NULL;
		}
		p->rows = NULL;
		p->state = P_IDLE;
	}
}

/* Packs and sends w's batch. */
static int
peer_send(struct dispatch *ds, uint32_t w, uint32_t layer, const float *x,
        uint64_t epoch, uint64_t deadline, uint64_t *bytes, uint64_t *pack_ns)
{
	struct peer *p = &ds->p[w];
	Epmoe__ExpertBatch b = EPMOE__EXPERT_BATCH__INIT;
	nng_msg *m = p->spare;
	float *dst;
	uint32_t d = ds->d;
	int rc, rv;
	char why[128];

	p->spare = NULL;
	p->batch_id = ++ds->next_batch_id;
	p->gen = ds->cp[w].gen;
	p->t_send = clock_now_ns();
	b.version = EPMOE_PROTO_VERSION;
	b.batch_id = p->batch_id;
	b.attempt = 0;
	b.epoch = epoch;
	b.layer = layer;
	b.n_groups = p->n_groups;
	b.groups = p->gp;
	b.n_weights = p->n_entries;
	b.weights = p->weights;
	b.n_combine = p->n_entries;
	b.combine = p->combine;
	b.n_gather = p->n_entries;
	b.gather = p->combine;
	b.n_rows_in = p->n_rows;
	b.n_rows_out = p->n_rows;
	b.dim = d;
	b.deadline_ms = ds->deadline_ms;
	if ((rc = netsock_msg_pack(&m, WIRE_BATCH, &b.base, (size_t)p->n_rows * d,
	             &dst)) != 0) {
		if (m != NULL)
			nng_msg_free(m);
		return rc;
	}
	/* [n_rows, d]: the distinct token rows this worker needs */
	for (uint32_t j = 0; j < p->n_rows; j++)
		memcpy(dst + (size_t)j * d, x + (size_t)p->row_tok[j] * d,
		        d * sizeof(float));
	*bytes += nng_msg_len(m);
	*pack_ns += clock_now_ns() - p->t_send;
	if ((rv = peer_ctx(p, ds->cp[w].sock)) != 0) {
		nng_msg_free(m);
		snprintf(why, sizeof(why), "cannot open a context: %s", nng_strerror(rv));
		peer_fail(ds, w, wire_nng_err(rv), why);
		return EPMOE_EUNAVAIL;
	}
	nng_aio_set_msg(p->aio, m);
	nng_aio_set_timeout(p->aio, remaining_ms(deadline));
	nng_ctx_send(p->ctx, p->aio);
	p->state = P_SEND;
	return 0;
}

/* Waits for w's send to complete and posts its receive. */
static int
peer_wait_send(struct dispatch *ds, uint32_t w, uint64_t deadline)
{
	struct peer *p = &ds->p[w];
	char why[128];
	int rv;

	nng_aio_wait(p->aio);
	if ((rv = nng_aio_result(p->aio)) != 0) {
		nng_msg *m = nng_aio_get_msg(p->aio);
		if (m != NULL)
			nng_msg_free(m);
		nng_aio_set_msg(p->aio, NULL);
		snprintf(why, sizeof(why), "send: %s", nng_strerror(rv));
		peer_fail(ds, w, wire_nng_err(rv), why);
		return EPMOE_EUNAVAIL;
	}
	nng_aio_set_timeout(p->aio, remaining_ms(deadline));
	nng_ctx_recv(p->ctx, p->aio);
	p->state = P_RECV;
	return 0;
}

/* Waits for w's reply and checks it. */
static int
peer_wait_recv(struct dispatch *ds, uint32_t w, uint64_t *bytes,
        uint64_t *max_compute_us)
{
	struct peer *p = &ds->p[w];
	struct wire_expect ex = { p->batch_id, 0, p->n_rows, ds->d };
	ProtobufCMessage *hdr;
	size_t nf;
	char why[256];
	int rv, rc;

	nng_aio_wait(p->aio);
	if ((rv = nng_aio_result(p->aio)) != 0) {
		snprintf(why, sizeof(why), "receive: %s", nng_strerror(rv));
		peer_fail(ds, w, wire_nng_err(rv), why);
		return EPMOE_EUNAVAIL;
	}
	p->reply = nng_aio_get_msg(p->aio);
	nng_aio_set_msg(p->aio, NULL);
	p->state = P_DONE;
	*bytes += nng_msg_len(p->reply);
	if ((rc = wire_nng_unpack(p->reply, WIRE_RESULT, NULL, &hdr, &p->rows,
	             &nf)) != 0) {
		snprintf(why, sizeof(why), "malformed reply: %s", wire_errmsg());
		peer_fail(ds, w, rc, why);
		return EPMOE_EUNAVAIL;
	}
	p->res = (Epmoe__ExpertResult *)hdr;
	if (p->res->status != EPMOE__STATUS__STATUS_OK) {
		snprintf(why, sizeof(why), "worker answered status %d: %.200s",
		        p->res->status, p->res->message ? p->res->message : "");
		peer_fail(ds, w, wire_status_to_err(p->res->status), why);
		return EPMOE_EUNAVAIL;
	}
	if ((rc = wire_check_result(p->res, nf, &ex)) != 0) {
		snprintf(why, sizeof(why), "bad reply: %s", wire_errmsg());
		peer_fail(ds, w, rc, why);
		return EPMOE_EUNAVAIL;
	}
	if (p->res->compute_us > *max_compute_us)
		*max_compute_us = p->res->compute_us;
	cluster_report(ds->c, w, p->gen, clock_now_ns() - p->t_send, p->n_entries, 0,
	        NULL);
	return 0;
}

/* Assigns every pair a slot on a live worker and every worker its rows,
 * then builds each worker's groups in ascending slot order. */
static int
plan(struct dispatch *ds, const struct placement *pl, uint32_t layer,
        const struct moe_assign *a)
{
	uint32_t T = a->n_tok, E = pl->n_expert, S = pl->n_slot;
	size_t n_pairs = a->off[T];
	int rc;

	if (a->off[0] != 0)
		return EPMOE_EINVAL;
	if ((rc = reserve_pairs(ds, n_pairs, S)) != 0)
		return rc;
	for (uint32_t w = 0; w < ds->W; w++) {
		struct peer *p = &ds->p[w];
		p->n_rows = p->n_entries = p->n_groups = 0;
		p->last_tok = UINT32_MAX;
	}
	memset(ds->slot_count, 0, ((size_t)S + 1) * sizeof(uint32_t));
	for (uint32_t t = 0; t < T; t++) {
		if (a->off[t + 1] < a->off[t] || a->off[t + 1] > n_pairs)
			return EPMOE_EINVAL;
		for (uint32_t i = a->off[t]; i < a->off[t + 1]; i++) {
			int32_t e = a->expert[i], s = -1, w = -1;
			struct peer *p;

			if (e < 0 || (uint32_t)e >= E)
				return EPMOE_EINVAL;
			for (uint32_t r = 0; r < placement_expert_copies(pl, layer,
			             (uint32_t)e); r++) {
				int32_t cs = placement_expert_slot(pl, layer, (uint32_t)e, r);
				int32_t cw = placement_slot_worker(pl, layer, (uint32_t)cs);
				if (ds->cp[cw].alive) {
					s = cs;
					w = cw;
					break;
				}
			}
			if (s < 0)
				return EPMOE_EUNAVAIL;
			p = &ds->p[w];
			if (p->last_tok != t) {
				if ((rc = peer_reserve(p, (size_t)p->n_rows + 1, 0, 0)) != 0)
					return rc;
				p->row_tok[p->n_rows++] = t;
				p->last_tok = t;
			}
			p->n_entries++;
			ds->pair_slot[i] = (uint32_t)s;
			ds->pair_row[i] = p->n_rows - 1;
			ds->slot_count[s]++;
		}
	}
	/* counting sort of the pairs by slot, stable (token order kept) */
	{
		uint32_t sum = 0;
		for (uint32_t s = 0; s < S; s++) {
			uint32_t c = ds->slot_count[s];
			ds->slot_count[s] = sum;
			sum += c;
		}
		ds->slot_count[S] = sum;
		for (size_t i = 0; i < n_pairs; i++)
			ds->order[ds->slot_count[ds->pair_slot[i]]++] = (uint32_t)i;
		/* slot_count[s] is now the end of slot s's run */
	}
	for (uint32_t w = 0; w < ds->W; w++) {
		struct peer *p = &ds->p[w];
		if (p->n_entries == 0)
			continue;
		if ((rc = peer_reserve(p, 0, p->n_entries, p->n_entries)) != 0)
			return rc;
		p->n_entries = 0;
	}
	for (uint32_t s = 0, begin = 0; s < S; s++) {
		uint32_t end = ds->slot_count[s];
		struct peer *p;
		Epmoe__ExpertGroup g = EPMOE__EXPERT_GROUP__INIT;

		if (end == begin)
			continue;
		p = &ds->p[placement_slot_worker(pl, layer, s)];
		g.slot = s;
		g.expert = (uint32_t)placement_slot_expert(pl, layer, s);
		g.n_tokens = end - begin;
		p->groups[p->n_groups] = g;
		p->gp[p->n_groups] = &p->groups[p->n_groups];
		p->n_groups++;
		for (uint32_t k = begin; k < end; k++) {
			uint32_t i = ds->order[k];
			p->weights[p->n_entries] = a->weight[i];
			p->combine[p->n_entries] = ds->pair_row[i];
			p->n_entries++;
		}
		begin = end;
	}
	return 0;
}

static int
dispatch_run(struct moe_backend *be, uint32_t layer, const float *x,
        const struct moe_assign *a, float *out)
{
	struct dispatch *ds = (struct dispatch *)be;
	const struct placement *pl;
	uint32_t T = a->n_tok, d = ds->d;
	uint64_t t0 = clock_now_ns(), t_got, t_end, deadline, pack_ns;
	uint64_t bytes_out = 0, bytes_in = 0, max_compute = 0, msgs = 0, rows = 0;
	size_t n_pairs = a->off[T];
	int rc = 0;

	memset(out, 0, (size_t)T * d * sizeof(float));
	if (n_pairs == 0) {
		pthread_mutex_lock(&ds->smu);
		ds->st.calls++;
		ds->st.tokens += T;
		pthread_mutex_unlock(&ds->smu);
		return 0;
	}
	if (layer >= ds->m->hp.n_layer)
		return EPMOE_EINVAL;
	deadline = t0 + (uint64_t)ds->deadline_ms * 1000000u;
	pl = cluster_placement_acquire(ds->c);
	cluster_peers(ds->c, ds->cp, ds->W);
	if ((rc = plan(ds, pl, layer, a)) != 0)
		goto out;
	pack_ns = clock_now_ns() - t0;

	/* scatter: every involved worker in flight at once */
	for (uint32_t w = 0; w < ds->W; w++) {
		if (ds->p[w].n_rows == 0)
			continue;
		if ((rc = peer_send(ds, w, layer, x, pl->epoch, deadline,
		             &bytes_out, &pack_ns)) != 0)
			goto out;
		msgs++;
		rows += ds->p[w].n_rows;
	}
	for (uint32_t w = 0; w < ds->W; w++)
		if (ds->p[w].state == P_SEND &&
		        (rc = peer_wait_send(ds, w, deadline)) != 0)
			goto out;
	/* gather */
	for (uint32_t w = 0; w < ds->W; w++)
		if (ds->p[w].state == P_RECV &&
		        (rc = peer_wait_recv(ds, w, &bytes_in, &max_compute)) != 0)
			goto out;
	t_got = clock_now_ns();
	/* combine, in worker index order */
	for (uint32_t w = 0; w < ds->W; w++) {
		const struct peer *p = &ds->p[w];
		if (p->state != P_DONE)
			continue;
		for (uint32_t j = 0; j < p->n_rows; j++) {
			float *o = out + (size_t)p->row_tok[j] * d;
			const float *y = p->rows + (size_t)j * d;
			for (uint32_t k = 0; k < d; k++)
				o[k] += y[k];
		}
	}
	t_end = clock_now_ns();
	pthread_mutex_lock(&ds->smu);
	{
		/* everything between packing and combining is waiting on
		 * the workers: transport (nng_ctx_send writes to the socket
		 * in this thread) and their compute */
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
		cancel_all(ds);
		memset(out, 0, (size_t)T * d * sizeof(float));
		if (rc == EPMOE_ETIMEDOUT || rc == EPMOE_ECLOSED)
			rc = EPMOE_EUNAVAIL;
	}
	release_replies(ds);
	cluster_placement_release(ds->c, pl);
	pthread_mutex_lock(&ds->smu);
	ds->st.calls++;
	ds->st.failures += rc != 0;
	ds->st.tokens += T;
	ds->st.pairs += n_pairs;
	ds->st.msgs += msgs;
	ds->st.rows_sent += rows;
	ds->st.bytes_sent += bytes_out;
	ds->st.bytes_recv += bytes_in;
	pthread_mutex_unlock(&ds->smu);
	return rc;
}

static void
dispatch_free(struct moe_backend *be)
{
	struct dispatch *ds = (struct dispatch *)be;

	if (ds == NULL)
		return;
	for (uint32_t w = 0; ds->p && w < ds->W; w++) {
		struct peer *p = &ds->p[w];
		if (p->aio) {
			nng_aio_stop(p->aio);
			nng_aio_free(p->aio);
		}
		if (p->ctx_open)
			nng_ctx_close(p->ctx);
		if (p->spare)
			nng_msg_free(p->spare);
		free(p->row_tok);
		free(p->weights);
		free(p->combine);
		free(p->groups);
		free(p->gp);
	}
	free(ds->p);
	free(ds->cp);
	free(ds->pair_slot);
	free(ds->pair_row);
	free(ds->order);
	free(ds->slot_count);
	pthread_mutex_destroy(&ds->smu);
	free(ds);
}

int
dispatch_new(struct moe_backend **out, struct cluster *c,
        const struct model *m, const struct dispatch_cfg *cfg)
{
	struct dispatch *ds;

	if (c == NULL || m == NULL)
		return EPMOE_EINVAL;
	if ((ds = calloc(1, sizeof(*ds))) == NULL)
		return EPMOE_ENOMEM;
	pthread_mutex_init(&ds->smu, NULL);
	ds->be.run = dispatch_run;
	ds->be.free = dispatch_free;
	ds->c = c;
	ds->m = m;
	ds->W = cluster_n_workers(c);
	ds->d = m->hp.n_embd;
	ds->deadline_ms = cfg && cfg->deadline_ms ? cfg->deadline_ms : 10000;
	ds->p = calloc(ds->W, sizeof(*ds->p));
	ds->cp = calloc(ds->W, sizeof(*ds->cp));
	if (ds->p == NULL || ds->cp == NULL) {
		dispatch_free(&ds->be);
		return EPMOE_ENOMEM;
	}
	for (uint32_t w = 0; w < ds->W; w++) {
		if (nng_aio_alloc(&ds->p[w].aio, NULL, NULL) != 0) {
			dispatch_free(&ds->be);
			return EPMOE_ENOMEM;
		}
	}
	*out = &ds->be;
	return 0;
}

void
dispatch_stats(struct moe_backend *be, struct dispatch_stats *out)
{
	struct dispatch *ds = (struct dispatch *)be;

	pthread_mutex_lock(&ds->smu);
	*out = ds->st;
	pthread_mutex_unlock(&ds->smu);
}

void
dispatch_stats_reset(struct moe_backend *be)
{
	struct dispatch *ds = (struct dispatch *)be;

	pthread_mutex_lock(&ds->smu);
	memset(&ds->st, 0, sizeof(ds->st));
	pthread_mutex_unlock(&ds->smu);
}
