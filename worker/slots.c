/* Expert slot table and loader thread of the worker.  See slots.h. */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "err.h"
#include "hash.h"
#include "log.h"
#include "model.h"
#include "quant.h"
#include "slots.h"

enum { S_NONE = 0, S_LOADING, S_READY, S_FAILED };

/* An expert quantized to Q8_0: its gate, up and down matrices, owned.
 * Dropped copies wait on the junk list until slots_reap (the data loop
 * may still be computing with them). */
struct qcopy {
	struct qcopy *next;
	struct tmat m[3];
	size_t bytes;
	_Alignas(64) unsigned char data[];
};

struct entry {
	uint8_t state;
	bool busy;          /* the loader is on it */
	bool want_q8;       /* precision the last LOAD asked for */
	bool reload;        /* READY at the other precision: re-load, keep serving */
	struct qcopy *q;    /* the Q8_0 copy served (READY), or NULL: the model's */
	int32_t slot;
	uint32_t gen;       /* bumped on every (re)queue: stale loads are dropped */
	uint64_t from;      /* first epoch it serves */
	uint64_t checksum;
	Epmoe__Status fail; /* why, when S_FAILED */
};

struct slots {
	const struct model *m;
	uint32_t L, E;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct entry *t;     /* [L][E] */
	uint64_t epoch;
	uint32_t n_held, n_loading;
	uint32_t n_q8;       /* READY copies held as Q8_0 */
	uint64_t q8_bytes;
	struct qcopy *junk;  /* dropped copies, freed by slots_reap */
	bool stop, started;
	pthread_t th;
	slots_ready_fn fn;
	void *arg;
	/* the last order: the slots it named */
	bool have_order;
	uint64_t order_id;
	uint32_t n_last, cap_last;
	uint32_t *last;      /* [n_last] layer * E + expert */
	/* report scratch */
	Epmoe__SlotState *st;
	Epmoe__SlotState **stp;
	uint32_t cap_st;
};

static struct entry *
at(struct slots *s, uint32_t l, uint32_t e)
{
	return &s->t[(size_t)l * s->E + e];
}

static void
set_state(struct slots *s, struct entry *x, uint8_t st)
{
	s->n_held -= x->state == S_LOADING || x->state == S_READY;
	s->n_loading -= x->state == S_LOADING;
	x->state = st;
	s->n_held += st == S_LOADING || st == S_READY;
	s->n_loading += st == S_LOADING;
}

/* Drops x's Q8_0 copy (lock held): onto the junk list. */
static void
drop_q(struct slots *s, struct entry *x)
{
	if (x->q == NULL)
		return;
	s->n_q8--;
	s->q8_bytes -= x->q->bytes;
	x->q->next = s->junk;
	s->junk = x->q;
	x->q = NULL;
}

static void
free_list(struct qcopy *q)
{
	while (q) {
		struct qcopy *n = q->next;
		free(q);
		q = n;
	}
}

static uint64_t
mix(uint64_t h, uint64_t v)
{
	return hash_fnv1a(&v, sizeof(v), h);
}

/* Faults in the pages of one matrix and hashes one byte of each. */
static uint64_t
touch(const struct tmat *t, uint64_t h)
{
	const volatile uint8_t *p = t->data;
	size_t n = (size_t)t->n_out * t->row_size;

	h = mix(h, n);
	for (size_t i = 0; i < n; i += 4096)
		h = mix(h, p[i]);
	if (n > 0)
		h = mix(h, p[n - 1]);
	return h;
}

/* Drops the pages of a matrix the worker no longer reads (its Q8_0 copy
 * serves instead); only whole pages inside it. */
static void
unmap_pages(const struct tmat *t)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t lo = (uintptr_t)t->data, hi = lo + (size_t)t->n_out * t->row_size;

	lo = (lo + pg - 1) & ~(pg - 1);
	hi &= ~(pg - 1);
	if (t->data != NULL && hi > lo)
		(void)madvise((void *)lo, hi - lo, MADV_DONTNEED); /* only a hint */
}

/* The three matrices of (l, e) quantized to Q8_0 into one owned block:
 * 0, EPMOE_ENOMEM, or EPMOE_ENOTSUP (a row length not a multiple of 32,
 * or a type that cannot be read as f32). */
static int
quantize_expert(const struct model *m, uint32_t l, uint32_t e, struct qcopy **out)
{
	const struct model_layer *ly = &m->layers[l];
	struct tmat src[3];
	size_t off[3], total = 0, n_max = 0;
	struct qcopy *q;
	float *row;
	int rc = 0;

	for (int k = 0; k < 3; k++) {
		src[k] = model_expert(ly, &m->hp, (enum model_expert_mat)k, e);
		if (src[k].n_in % QK8_0 != 0)
			return EPMOE_ENOTSUP;
		off[k] = total;
		total += (dtype_row_size(DTYPE_Q8_0, src[k].n_in) * src[k].n_out + 63) & ~(size_t)63;
		if (src[k].n_in > n_max)
			n_max = src[k].n_in;
	}
	q = aligned_alloc(64, (sizeof(*q) + total + 63) & ~(size_t)63);
	row = malloc(n_max * sizeof(*row));
	if (q == NULL || row == NULL) {
		free(q);
		free(row);
		return EPMOE_ENOMEM;
	}
	q->next = NULL;
	q->bytes = total;
	for (int k = 0; rc == 0 && k < 3; k++) {
		struct tmat *t = &q->m[k];
		t->type = DTYPE_Q8_0;
		t->n_in = src[k].n_in;
		t->n_out = src[k].n_out;
		t->row_size = dtype_row_size(DTYPE_Q8_0, t->n_in);
		t->data = q->data + off[k];
		for (uint32_t r = 0; rc == 0 && r < t->n_out; r++) {
			rc = tmat_row_f32(&src[k], r, row);
			if (rc == 0)
				rc = quant_row_from_f32(DTYPE_Q8_0, row,
				        (unsigned char *)t->data + (size_t)r * t->row_size, t->n_in);
		}
	}
	free(row);
	if (rc != 0) {
		free(q);
		return rc;
	}
	for (int k = 0; k < 3; k++)
		unmap_pages(&src[k]);
	*out = q;
	return 0;
}

/* Loads (l, e): faults in its pages (the checksum) and, when q8, makes
 * its Q8_0 copy into *q.  Returns 0 or an EPMOE_E* code. */
static int
load_expert(const struct model *m, uint32_t l, uint32_t e, bool q8,
        uint64_t *sum, struct qcopy **q)
{
	const struct model_layer *ly = &m->layers[l];
	uint64_t h = mix(HASH_FNV1A_INIT, m->identity);

	h = mix(h, ((uint64_t)l << 32) | e);
	for (int k = 0; k < 3; k++) {
		struct tmat t = model_expert(ly, &m->hp, (enum model_expert_mat)k, e);
		h = touch(&t, h);
	}
	*sum = h;
	*q = NULL;
	return q8 ? quantize_expert(m, l, e, q) : 0;
}

static void *
loader_main(void *arg)
{
	struct slots *s = arg;

	pthread_mutex_lock(&s->mu);
	while (!s->stop) {
		uint32_t l = 0, e = 0, gen = 0;
		bool found = false, q8 = false;

		for (size_t i = 0; !found && i < (size_t)s->L * s->E; i++) {
			struct entry *x = &s->t[i];
			if ((x->state == S_LOADING || (x->state == S_READY && x->reload)) &&
			        !x->busy) {
				x->busy = true;
				l = (uint32_t)(i / s->E);
				e = (uint32_t)(i % s->E);
				gen = x->gen;
				q8 = x->want_q8;
				found = true;
			}
		}
		if (!found) {
			pthread_cond_wait(&s->cv, &s->mu);
			continue;
		}
		pthread_mutex_unlock(&s->mu);
		uint64_t sum;
		struct qcopy *q;
		int rc = load_expert(s->m, l, e, q8, &sum, &q);
		pthread_mutex_lock(&s->mu);
		struct entry *x = at(s, l, e);
		x->busy = false;
		bool current = x->gen == gen && x->want_q8 == q8 &&
		        (x->state == S_LOADING || (x->state == S_READY && x->reload));
		if (current && rc != 0) {
			log_error("slots: layer %u expert %u: no Q8_0 copy: %s", l, e,
			        epmoe_strerror(rc));
			if (x->state == S_LOADING) {
				x->fail = rc == EPMOE_ENOMEM ? EPMOE__STATUS__STATUS_NO_MEMORY :
				        EPMOE__STATUS__STATUS_UNSUPPORTED;
				set_state(s, x, S_FAILED);
			} else {
				x->reload = false; /* keeps serving; the router asks again */
			}
		} else if (current) {
			/* the swap: batches checked from now on use the new copy */
			drop_q(s, x);
			x->q = q;
			q = NULL;
			if (x->q) {
				s->n_q8++;
				s->q8_bytes += x->q->bytes;
			}
			x->reload = false;
			x->checksum = sum;
			set_state(s, x, S_READY);
			log_debug("slots: layer %u expert %u ready%s (checksum %016" PRIx64 ")",
			        l, e, x->q ? " as Q8_0" : "", sum);
		}
		free(q); /* a load overtaken by a newer order */
		if (s->n_loading == 0 && s->fn) {
			slots_ready_fn fn = s->fn;
			void *a = s->arg;
			pthread_mutex_unlock(&s->mu);
			fn(a);
			pthread_mutex_lock(&s->mu);
		}
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

int
slots_new(struct slots **out, const struct model *m, slots_ready_fn fn, void *arg)
{
	struct slots *s;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return EPMOE_ENOMEM;
	s->m = m;
	s->L = m->hp.n_layer;
	s->E = m->hp.n_expert;
	s->fn = fn;
	s->arg = arg;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	if ((s->t = calloc((size_t)s->L * s->E, sizeof(*s->t))) == NULL) {
		slots_free(s);
		return EPMOE_ENOMEM;
	}
	if (pthread_create(&s->th, NULL, loader_main, s) != 0) {
		slots_free(s);
		return EPMOE_ENOMEM;
	}
	s->started = true;
	*out = s;
	return 0;
}

void
slots_free(struct slots *s)
{
	if (s == NULL)
		return;
	if (s->started) {
		pthread_mutex_lock(&s->mu);
		s->stop = true;
		pthread_cond_signal(&s->cv);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->th, NULL);
	}
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	for (size_t i = 0; s->t && i < (size_t)s->L * s->E; i++)
		free(s->t[i].q);
	free_list(s->junk);
	free(s->t);
	free(s->last);
	free(s->st);
	free(s->stp);
	free(s);
}

/* One LOAD / FREE / COMMIT of an order (lock held).  Returns whether the
 * loader has new work. */
static bool
apply_one(struct slots *s, const Epmoe__SlotAssign *a, uint64_t epoch)
{
	struct entry *x;

	if (a->layer >= s->L || a->expert >= s->E)
		return false;
	x = at(s, a->layer, a->expert);
	switch (a->op) {
	case EPMOE__SLOT_OP__SLOT_OP_LOAD:
		x->slot = (int32_t)a->slot;
		if (x->state == S_READY) {
			/* held: a no-op, unless at the other precision */
			bool held_q8 = x->q != NULL;
			if (x->want_q8 == a->quantized && (x->reload || held_q8 == a->quantized))
				return false;
			x->want_q8 = a->quantized;
			x->reload = held_q8 != a->quantized;
			x->gen++;
			return x->reload;
		}
		if (x->state == S_LOADING) {
			if (x->want_q8 == a->quantized)
				return false;
			x->want_q8 = a->quantized; /* a load under way is dropped */
			x->gen++;
			return true;
		}
		if (a->source != EPMOE__WEIGHT_SOURCE__WEIGHT_SOURCE_LOCAL) {
			log_error("slots: layer %u expert %u: weights over the network are not supported yet",
			        a->layer, a->expert);
			x->fail = EPMOE__STATUS__STATUS_UNSUPPORTED;
			set_state(s, x, S_FAILED);
			return false;
		}
		x->gen++;
		x->from = epoch;
		x->want_q8 = a->quantized;
		x->reload = false;
		set_state(s, x, S_LOADING);
		return true;
	case EPMOE__SLOT_OP__SLOT_OP_FREE:
		x->gen++;
		x->reload = false;
		drop_q(s, x);
		set_state(s, x, S_NONE);
		return false;
	default: /* COMMIT: the router switched; nothing to do here */
		return false;
	}
}

int
slots_apply(struct slots *s, const Epmoe__SlotOrder *o)
{
	uint32_t *last = NULL;
	bool work = false, *listed = NULL;
	size_t n = o->n_slots;

	if (n > 0 && (last = malloc(n * sizeof(*last))) == NULL)
		return EPMOE_ENOMEM;
	if (o->complete &&
	        (listed = calloc((size_t)s->L * s->E, sizeof(*listed))) == NULL) {
		free(last);
		return EPMOE_ENOMEM;
	}
	pthread_mutex_lock(&s->mu);
	s->n_last = 0;
	for (size_t i = 0; i < n; i++) {
		const Epmoe__SlotAssign *a = o->slots[i];
		if (a->layer >= s->L || a->expert >= s->E) {
			log_error("slots: order names layer %u expert %u, outside the model (%u layers, %u experts): ignored",
			        a->layer, a->expert, s->L, s->E);
			continue;
		}
		work |= apply_one(s, a, o->epoch);
		if (listed && a->op == EPMOE__SLOT_OP__SLOT_OP_LOAD)
			listed[(size_t)a->layer * s->E + a->expert] = true;
		last[s->n_last++] = a->layer * s->E + a->expert;
	}
	if (listed) {
		for (size_t i = 0; i < (size_t)s->L * s->E; i++) {
			if (!listed[i] && s->t[i].state != S_NONE) {
				s->t[i].gen++;
				s->t[i].reload = false;
				drop_q(s, &s->t[i]);
				set_state(s, &s->t[i], S_NONE);
			}
		}
	}
	free(s->last);
	s->last = last;
	s->have_order = true;
	s->order_id = o->order_id;
	if (o->epoch > s->epoch)
		s->epoch = o->epoch;
	if (work)
		pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
	free(listed);
	return 0;
}

void
slots_new_router(struct slots *s)
{
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < (size_t)s->L * s->E; i++)
		s->t[i].from = 0;
	s->epoch = 0;
	pthread_mutex_unlock(&s->mu);
}

int
slots_report(struct slots *s, Epmoe__SlotOrderReply *out)
{
	Epmoe__SlotOrderReply r = EPMOE__SLOT_ORDER_REPLY__INIT;
	bool all_ok = true;

	pthread_mutex_lock(&s->mu);
	if (!s->have_order) {
		pthread_mutex_unlock(&s->mu);
		return EPMOE_ENOENT;
	}
	if (s->n_last > s->cap_st) {
		Epmoe__SlotState *st = realloc(s->st, s->n_last * sizeof(*st));
		Epmoe__SlotState **stp = st ? realloc(s->stp, s->n_last * sizeof(*stp)) : NULL;
		if (st)
			s->st = st;
		if (stp == NULL) {
			pthread_mutex_unlock(&s->mu);
			return EPMOE_ENOMEM;
		}
		s->stp = stp;
		s->cap_st = s->n_last;
	}
	for (uint32_t i = 0; i < s->n_last; i++) {
		Epmoe__SlotState st = EPMOE__SLOT_STATE__INIT;
		const struct entry *x = &s->t[s->last[i]];
		st.layer = s->last[i] / s->E;
		st.expert = s->last[i] % s->E;
		st.slot = x->slot < 0 ? 0 : (uint32_t)x->slot;
		switch (x->state) {
		case S_READY:
			st.status = EPMOE__STATUS__STATUS_OK;
			st.checksum = x->checksum;
			st.quantized = x->q != NULL;
			break;
		case S_LOADING:
			st.status = EPMOE__STATUS__STATUS_BUSY;
			break;
		case S_NONE:
			st.status = EPMOE__STATUS__STATUS_NOT_FOUND;
			break;
		default:
			st.status = x->fail ? x->fail : EPMOE__STATUS__STATUS_INTERNAL;
			all_ok = false;
			break;
		}
		s->st[i] = st;
		s->stp[i] = &s->st[i];
	}
	r.order_id = s->order_id;
	r.epoch = s->epoch;
	r.status = all_ok ? EPMOE__STATUS__STATUS_OK : EPMOE__STATUS__STATUS_UNSUPPORTED;
	r.message = (char *)(all_ok ? "" : "a slot could not be loaded (see the worker's log)");
	r.n_slots = s->n_last;
	r.slots = s->stp;
	pthread_mutex_unlock(&s->mu);
	*out = r;
	return 0;
}

void
slots_reap(struct slots *s)
{
	struct qcopy *j;

	pthread_mutex_lock(&s->mu);
	j = s->junk;
	s->junk = NULL;
	pthread_mutex_unlock(&s->mu);
	free_list(j);
}

int
slots_check(struct slots *s, const Epmoe__ExpertBatch *b, struct tmat *mats,
        char *why, size_t why_len)
{
	int rc = 0;

	pthread_mutex_lock(&s->mu);
	if (b->layer >= s->L) {
		snprintf(why, why_len, "layer %u outside the model", b->layer);
		rc = EPMOE_ESTATE;
	}
	for (size_t g = 0; rc == 0 && g < b->n_groups; g++) {
		const Epmoe__ExpertGroup *gr = b->groups[g];
		const struct entry *x;
		if (gr->expert >= s->E) {
			snprintf(why, why_len, "expert %u outside the model", gr->expert);
			rc = EPMOE_ESTATE;
			break;
		}
		x = at(s, b->layer, gr->expert);
		if (x->state != S_READY) {
			snprintf(why, why_len, "layer %u expert %u (slot %u) is %s here",
			        b->layer, gr->expert, gr->slot,
			        x->state == S_LOADING ? "still loading" : "not held");
			rc = EPMOE_ESTATE;
		} else if (b->epoch < x->from) {
			snprintf(why, why_len, "batch epoch %" PRIu64 " is older than layer %u expert %u's slot (epoch %" PRIu64 ")",
			        b->epoch, b->layer, gr->expert, x->from);
			rc = EPMOE_ESTATE;
		} else if (mats && x->q) {
			memcpy(&mats[3 * g], x->q->m, 3 * sizeof(*mats));
		} else if (mats) {
			memset(&mats[3 * g], 0, 3 * sizeof(*mats));
		}
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/* Starts reading in one matrix's pages (the range rounded out to
 * pages); returns its bytes. */
static size_t
advise(const struct tmat *t)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t lo = (uintptr_t)t->data, hi = lo + (size_t)t->n_out * t->row_size;

	if (t->data == NULL || hi == lo)
		return 0;
	lo &= ~(pg - 1);
	/* only a hint: a failure (memory not from a mapping) changes nothing */
	(void)madvise((void *)lo, hi - lo, MADV_WILLNEED);
	return (size_t)(hi - (uintptr_t)t->data);
}

uint32_t
slots_prefetch(struct slots *s, uint32_t layer, const uint32_t *expert,
        size_t n, uint64_t *bytes)
{
	uint32_t held[64], n_held = 0, done = 0;

	*bytes = 0;
	if (layer >= s->L)
		return 0;
	for (size_t i0 = 0; i0 < n; i0 += 64) {
		size_t i1 = n - i0 < 64 ? n : i0 + 64;
		n_held = 0;
		pthread_mutex_lock(&s->mu);
		for (size_t i = i0; i < i1; i++)
			if (expert[i] < s->E && at(s, layer, expert[i])->state == S_READY &&
			        at(s, layer, expert[i])->q == NULL) /* a Q8_0 copy is in RAM */
				held[n_held++] = expert[i];
		pthread_mutex_unlock(&s->mu);
		for (uint32_t i = 0; i < n_held; i++) {
			const struct model_layer *ly = &s->m->layers[layer];
			for (int k = MODEL_EXP_GATE; k <= MODEL_EXP_DOWN; k++) {
				struct tmat t = model_expert(ly, &s->m->hp,
				        (enum model_expert_mat)k, held[i]);
				*bytes += advise(&t);
			}
		}
		done += n_held;
	}
	return done;
}

uint64_t
slots_epoch(struct slots *s)
{
	uint64_t e;

	pthread_mutex_lock(&s->mu);
	e = s->epoch;
	pthread_mutex_unlock(&s->mu);
	return e;
}

uint32_t
slots_held(struct slots *s)
{
	uint32_t n;

	pthread_mutex_lock(&s->mu);
	n = s->n_held;
	pthread_mutex_unlock(&s->mu);
	return n;
}

uint32_t
slots_quantized(struct slots *s, uint64_t *bytes)
{
	uint32_t n;

	pthread_mutex_lock(&s->mu);
	n = s->n_q8;
	if (bytes)
		*bytes = s->q8_bytes;
	pthread_mutex_unlock(&s->mu);
	return n;
}

uint32_t
slots_loading(struct slots *s)
{
	uint32_t n;

	pthread_mutex_lock(&s->mu);
	n = s->n_loading;
	pthread_mutex_unlock(&s->mu);
	return n;
}
