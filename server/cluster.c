/* Worker registry, control protocol and fencing of the router (the
 * placement side is cluster_place.c, the JSON views cluster_json.c).  See
 * cluster.h.
 *
 * One control thread owns the control REP socket and is the only writer of
 * registrations; the dispatcher (engine thread) and the HTTP loop read
 * state and report request outcomes through the mutex.  Nothing here
 * blocks while holding the mutex: sockets are dialed and closed outside
 * it, and event callbacks run after it is released.  No socket is closed
 * while another thread may be blocked on it (an NNG 1.5.2 crash, see
 * netsock.h): the control socket after its thread has exited, data
 * sockets only in cluster_free. */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/supplemental/util/platform.h>

#include "clock.h"
#include "cluster.h"
#include "cluster_int.h"
#include "err.h"
#include "log.h"
#include "migrate.h"
#include "model.h"
#include "netsock.h"
#include "wire.h"
#include "wire_nng.h"

#define POLL_MS 100        /* control recv timeout: liveness check period */
#define CLOSE_MS 2000      /* longest wait for one socket close */
#define FAST_HB_MS 50      /* report period asked while an order is pending */
#define HOLD_BASE_MS 500   /* re-registration hold after 2 deadline misses */
#define HOLD_MAX_MS 30000
#define HUNG_STREAK 3      /* deadline misses in a row: report it hung */

const double cluster_hist_bounds_s[CLUSTER_HIST_BUCKETS] = {
	50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
	50e-3, 100e-3, 250e-3, 1.0, __builtin_inf()
};

/* ---- lifecycle ---- */

int
cluster_new(struct cluster **out, const struct cluster_cfg *cfg, char *err,
        size_t err_len)
{
	struct cluster *c;
	const struct model_hparams *hp;
	int rc;

	if (cfg == NULL || cfg->model == NULL) {
		snprintf(err, err_len, "cluster: no model");
		return EPMOE_EINVAL;
	}
	if (cfg->control_url == NULL || *cfg->control_url == '\0' ||
	        strlen(cfg->control_url) >= 500) {
		snprintf(err, err_len, "cluster: no control URL (or longer than 500 bytes)");
		return EPMOE_EINVAL;
	}
	hp = &cfg->model->hp;
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return EPMOE_ENOMEM;
	pthread_mutex_init(&c->mu, NULL);
	atomic_init(&c->stop, 0);
	atomic_init(&c->replacing, false);
	c->m = cfg->model;
	snprintf(c->url_in, sizeof(c->url_in), "%s", cfg->control_url);
	c->tls = cfg->tls;
	snprintf(c->url, sizeof(c->url), "%s", cfg->control_url);
	c->hb_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : 500;
	c->degraded_off = cfg->no_degraded;
	c->elastic = cfg->elastic;
	c->replica_q8 = cfg->replica_q8;
	atomic_init(&c->version, 1);
	if (gethostname(c->node, sizeof(c->node)) != 0)
		snprintf(c->node, sizeof(c->node), "localhost");
	c->node[sizeof(c->node) - 1] = '\0';
	c->hb_timeout_ms = cfg->heartbeat_timeout_ms ? cfg->heartbeat_timeout_ms :
	        3 * c->hb_ms;
	c->boot_id = cfg->boot_id;
	if (c->boot_id == 0 &&
	        getrandom(&c->boot_id, sizeof(c->boot_id), 0) != (ssize_t)sizeof(c->boot_id))
		c->boot_id = clock_now_ns() ^ (uint64_t)getpid();
	if (c->boot_id == 0)
		c->boot_id = 1;

	if (cfg->placement_file && *cfg->placement_file) {
		rc = placement_load_file(&c->home, cfg->placement_file, hp->n_layer,
		        hp->n_expert, err, err_len);
	} else if (cfg->experts_per_worker && *cfg->experts_per_worker) {
		uint32_t *counts, n;
		char why[256] = "";
		rc = placement_parse_counts(cfg->experts_per_worker, &counts, &n,
		        why, sizeof(why));
		if (rc == 0) {
			if (cfg->n_workers && cfg->n_workers != n) {
				snprintf(why, sizeof(why), "%u workers but %u experts-per-worker entries",
				        cfg->n_workers, n);
				rc = EPMOE_EINVAL;
			} else {
				rc = placement_from_counts(&c->home, hp->n_layer, hp->n_expert,
				        counts, n, why, sizeof(why));
			}
			free(counts);
		}
		if (rc != 0)
			snprintf(err, err_len, "experts-per-worker: %s", why);
	} else if (cfg->n_workers && cfg->worker_of) {
		size_t n = (size_t)hp->n_layer * hp->n_expert;
		uint32_t *cnt = malloc(n * sizeof(*cnt));
		rc = EPMOE_ENOMEM;
		if (cnt) {
			for (size_t i = 0; i < n; i++)
				cnt[i] = 1;
			rc = placement_build(&c->home, hp->n_layer, hp->n_expert, cfg->n_workers,
			        cnt, cfg->worker_of, 1);
			free(cnt);
		}
		if (rc != 0)
			snprintf(err, err_len, "grouped placement over %u workers: %s",
			        cfg->n_workers, epmoe_strerror(rc));
	} else if (cfg->n_workers) {
		rc = placement_contiguous(&c->home, hp->n_layer, hp->n_expert,
		        cfg->n_workers);
		if (rc == EPMOE_EINVAL)
			snprintf(err, err_len, "%u workers for a model of %u experts: need 1..%u workers",
			        cfg->n_workers, hp->n_expert,
			        hp->n_expert < PLACEMENT_MAX_WORKERS ? hp->n_expert :
			        PLACEMENT_MAX_WORKERS);
	} else {
		snprintf(err, err_len, "no placement: give a worker count, experts per worker or a placement file");
		rc = EPMOE_EINVAL;
	}
	if (rc != 0) {
		cluster_free(c);
		return rc;
	}
	c->W = c->W0 = c->home->n_worker;
	if (cfg->max_workers > c->W)
		c->W = cfg->max_workers > PLACEMENT_MAX_WORKERS ? PLACEMENT_MAX_WORKERS :
		        cfg->max_workers;
	{
		/* the committed map starts as a copy of home */
		struct placement *first;
		if ((rc = placement_dup(&first, c->home)) != 0 ||
		        (rc = mig_new(&c->mig, first, c->W)) != 0) {
			cluster_free(c);
			return rc;
		}
		mig_set_quantized(c->mig, cfg->replica_q8);
	}
	if ((c->w = calloc(c->W, sizeof(*c->w))) == NULL) {
		cluster_free(c);
		return EPMOE_ENOMEM;
	}
	for (uint32_t i = 0; i < c->W; i++) {
		c->w[i].c = c;
		c->w[i].index = i;
		atomic_init(&c->w[i].outstanding, 0);
		dl_init(&c->w[i].lat);
	}
	*out = c;
	return 0;
}

static void *ctl_main(void *arg);

int
cluster_start(struct cluster *c)
{
	int rc;

	if (c->started)
		return EPMOE_ESTATE;
	if ((rc = netsock_rep_listen(&c->ctl, c->url_in, NETSOCK_CTL_RECV_MAX,
	             c->tls, c->url, sizeof(c->url))) != 0) {
		log_error("cluster: cannot listen on %s: %s", c->url_in,
		        epmoe_strerror(rc));
		return rc;
	}
	c->ctl_open = true;
	nng_socket_set_ms(c->ctl, NNG_OPT_RECVTIMEO, POLL_MS);
	nng_socket_set_ms(c->ctl, NNG_OPT_SENDTIMEO, 1000);
	if ((rc = pthread_create(&c->th, NULL, ctl_main, c)) != 0) {
		nng_close(c->ctl);
		c->ctl_open = false;
		return epmoe_err_from_errno(rc);
	}
	c->started = true;
	log_info("cluster: control socket on %s, waiting for %u workers (placement epoch %" PRIu64 ", %u slots per layer; heartbeat %u ms, fenced after %u ms of silence%s; %u worker places, elastic %s)",
	        c->url, c->home->n_worker, mig_epoch(c->mig), mig_committed(c->mig)->n_slot,
	        c->hb_ms, c->hb_timeout_ms,
	        c->degraded_off ? "; no degraded service" : "", c->W,
	        c->elastic ? "on" : "off");
	return 0;
}

void
cluster_free(struct cluster *c)
{
	if (c == NULL)
		return;
	if (c->started) {
		/* the thread sees the flag within its receive timeout; the
		 * socket is closed once nothing waits on it */
		atomic_store(&c->stop, 1);
		pthread_join(c->th, NULL);
	}
	if (c->ctl_open)
		netsock_close_bounded(c->ctl, CLOSE_MS);
	for (uint32_t i = 0; c->w && i < c->W; i++) {
		nng_socket s = c->w[i].sock;
		bool open;

		/* marked first so the pipe callback ignores the closing */
		pthread_mutex_lock(&c->mu);
		open = c->w[i].sock_open;
		c->w[i].sock_open = false;
		c->w[i].dialer_open = false;
		pthread_mutex_unlock(&c->mu);
		if (open) {
			/* no callback may outlive c, even if the close is
			 * abandoned */
			nng_pipe_notify(s, NNG_PIPE_EV_REM_POST, NULL, NULL);
			netsock_close_bounded(s, CLOSE_MS);
		}
	}
	free(c->w);
	mig_free(c->mig);
	placement_free(c->home);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

const char *
cluster_control_url(const struct cluster *c)
{
	return c->url;
}

uint32_t
cluster_n_workers(const struct cluster *c)
{
	return c->W;
}

void
cluster_prefetch_totals(struct cluster *c, uint64_t *experts, uint64_t *bytes)
{
	*experts = *bytes = 0;
	pthread_mutex_lock(&c->mu);
	for (uint32_t i = 0; i < c->W; i++) {
		*experts += c->w[i].rep_prefetch_experts;
		*bytes += c->w[i].rep_prefetch_bytes;
	}
	pthread_mutex_unlock(&c->mu);
}

void
cluster_closing(struct cluster *c)
{
	pthread_mutex_lock(&c->mu);
	c->closing = true;
	pthread_mutex_unlock(&c->mu);
}

uint32_t
cluster_n_used_locked(struct cluster *c)
{
	uint32_t n = c->W0;

	for (uint32_t i = n; i < c->W; i++)
		if (c->w[i].state != W_NEVER)
			n = i + 1;
	return n;
}

uint32_t
cluster_n_used(struct cluster *c)
{
	uint32_t n;

	pthread_mutex_lock(&c->mu);
	n = cluster_n_used_locked(c);
	pthread_mutex_unlock(&c->mu);
	return n;
}

uint64_t
cluster_boot_id(const struct cluster *c)
{
	return c->boot_id;
}

void
cluster_set_event_cb(struct cluster *c, cluster_event_fn fn, void *arg)
{
	pthread_mutex_lock(&c->mu);
	c->ev_fn = fn;
	c->ev_arg = arg;
	pthread_mutex_unlock(&c->mu);
}

/* ---- events (queued under the lock, delivered by the control thread) ---- */

static void
push_event_hung(struct cluster *c, uint32_t wi, bool up, bool hung,
        uint32_t silent_ms, const char *reason)
{
	struct cl_event *e;

	if (c->ev_n == MAX_EVENTS) {
		/* drop the oldest: a consumer this far behind sees the
		 * current state through cluster_stats_json anyway */
		c->ev_head = (c->ev_head + 1) % MAX_EVENTS;
		c->ev_n--;
	}
	e = &c->ev[(c->ev_head + c->ev_n) % MAX_EVENTS];
	c->ev_n++;
	e->worker = wi;
	e->up = up;
	e->hung = hung;
	e->silent_ms = silent_ms;
	snprintf(e->id, sizeof(e->id), "%s", c->w[wi].id);
	snprintf(e->reason, sizeof(e->reason), "%s", reason);
}

static void
push_event(struct cluster *c, uint32_t wi, bool up, const char *reason)
{
	push_event_hung(c, wi, up, false, 0, reason);
}

static void
fire_events(struct cluster *c)
{
	struct cl_event batch[16];

	for (;;) {
		cluster_event_fn fn;
		void *arg;
		uint32_t n = 0;

		pthread_mutex_lock(&c->mu);
		while (c->ev_n > 0 && n < 16) {
			batch[n++] = c->ev[c->ev_head];
			c->ev_head = (c->ev_head + 1) % MAX_EVENTS;
			c->ev_n--;
		}
		fn = c->ev_fn;
		arg = c->ev_arg;
		pthread_mutex_unlock(&c->mu);
		if (n == 0)
			return;
		for (uint32_t i = 0; fn && i < n; i++) {
			struct cluster_event ev = { batch[i].worker, batch[i].up,
				batch[i].hung, batch[i].silent_ms, batch[i].id,
				batch[i].reason };
			fn(arg, &ev);
		}
	}
}

static const char *const fence_name[FENCE_N] = {
	"left", "heartbeat", "connection", "deadline", "error", "stale"
};

/* Fences worker wi (lock held): down at once, no traffic, must register
 * again. */
static void
mark_down(struct cluster *c, uint32_t wi, const char *reason, enum fence cause)
{
	struct cl_worker *w = &c->w[wi];
	bool was_up = w->state == W_UP;

	if (w->state != W_UP && w->state != W_JOINING)
		return;
	w->state = W_DOWN;
	w->cause = cause;
	snprintf(w->down_reason, sizeof(w->down_reason), "%s", reason);
	c->fenced[cause]++;
	/* the outage began when it was last known good, not when we saw it */
	c->outage_hint_ns = cause == FENCE_HEARTBEAT ? w->last_hb_ns : clock_now_ns();
	atomic_fetch_add(&c->version, 1);
	cluster_changed_locked(c);
	if (was_up) /* a joining worker had no "up" event */
		push_event(c, wi, false, reason);
	if (cause == FENCE_LEFT)
		log_info("cluster: worker %u (%s) down: %s", wi, w->id, reason);
	else
		log_warn("cluster: worker %u (%s) fenced (%s): %s; it must register again",
		        wi, w->id, fence_name[cause], reason);
}

/* ---- control messages ---- */

/* Reply being built: a HelloReply and, for an order, its slot arrays. */
struct reply {
	Epmoe__HelloReply hr;
	Epmoe__SlotOrder order;
	Epmoe__SlotAssign *assign;
	Epmoe__SlotAssign **assign_p;
	char reason[320];
};

static void
reply_init(struct reply *r, struct cluster *c)
{
	Epmoe__HelloReply hr = EPMOE__HELLO_REPLY__INIT;
	Epmoe__SlotOrder so = EPMOE__SLOT_ORDER__INIT;

	memset(r, 0, sizeof(*r));
	r->hr = hr;
	r->order = so;
	r->hr.router_boot_id = c->boot_id;
	r->hr.heartbeat_ms = c->hb_ms;
	r->hr.placement_epoch = mig_epoch(c->mig);
	r->hr.reason = r->reason;
}

static void
refuse(struct reply *r, Epmoe__Status st, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void
refuse(struct reply *r, Epmoe__Status st, const char *fmt, ...)
{
	va_list ap;

	r->hr.accepted = false;
	r->hr.status = st;
	va_start(ap, fmt);
	vsnprintf(r->reason, sizeof(r->reason), fmt, ap);
	va_end(ap);
}

/* Attaches the slot order worker wi should get now, if any (lock held):
 * the complete set after a (re)registration, else the changes still to
 * make (migrate.h). */
static int
reply_order(struct reply *r, struct cluster *c, uint32_t wi)
{
	struct mig_order o;
	int rc;

	if ((rc = mig_order(c->mig, wi, &o)) != 0)
		return rc;
	if (o.n_ops == 0 && !o.complete)
		return 0;
	if (o.n_ops > 0) {
		r->assign = calloc(o.n_ops, sizeof(*r->assign));
		r->assign_p = calloc(o.n_ops, sizeof(*r->assign_p));
		if (r->assign == NULL || r->assign_p == NULL)
			return EPMOE_ENOMEM;
	}
	for (uint32_t k = 0; k < o.n_ops; k++) {
		Epmoe__SlotAssign a = EPMOE__SLOT_ASSIGN__INIT;
		a.op = o.ops[k].load ? EPMOE__SLOT_OP__SLOT_OP_LOAD :
		        EPMOE__SLOT_OP__SLOT_OP_FREE;
		a.layer = o.ops[k].layer;
		a.expert = o.ops[k].expert;
		a.slot = o.ops[k].slot < 0 ? 0 : (uint32_t)o.ops[k].slot;
		a.source = EPMOE__WEIGHT_SOURCE__WEIGHT_SOURCE_LOCAL;
		a.source_url = (char *)"";
		a.quantized = o.ops[k].quant;
		r->assign[k] = a;
		r->assign_p[k] = &r->assign[k];
	}
	r->order.order_id = ++c->order_seq;
	r->order.epoch = o.epoch;
	r->order.complete = o.complete;
	r->order.n_slots = o.n_ops;
	r->order.slots = r->assign_p;
	r->hr.order = &r->order;
	return 0;
}

static void
reply_fini(struct reply *r)
{
	free(r->assign);
	free(r->assign_p);
}

static bool
bad_name(const char *s)
{
	return s == NULL || *s == '\0' || strlen(s) >= ID_MAX;
}

/* A data connection to a worker closed (NNG reaper thread; takes only
 * the cluster mutex, whose holders never block): the worker is down at
 * once, so the next layer call fails fast instead of waiting for its
 * deadline.  Pipes of a dialer already replaced are ignored.  nng_close
 * of a socket waits for its pipe callbacks, so none runs after it. */
static void
on_pipe_rem(nng_pipe pipe, nng_pipe_ev ev, void *arg)
{
	struct cl_worker *w = arg;
	struct cluster *c = w->c;

	(void)ev;
	pthread_mutex_lock(&c->mu);
	if (w->dialer_open &&
	        nng_dialer_id(nng_pipe_dialer(pipe)) == nng_dialer_id(w->dialer))
		mark_down(c, w->index, "data connection lost", FENCE_CONNECTION);
	pthread_mutex_unlock(&c->mu);
}

static void
on_hello(struct cluster *c, const Epmoe__WorkerHello *h, struct reply *r)
{
	struct cl_worker *w;
	nng_socket sock;
	nng_dialer dialer, old;
	bool need_dial, open_sock, close_old = false, restart, takeover;
	char was[ID_MAX], why[64];
	uint32_t wi = UINT32_MAX;
	int rc;

	if (h->version != EPMOE_PROTO_VERSION) {
		refuse(r, EPMOE__STATUS__STATUS_PROTOCOL,
		        "worker speaks protocol %u, router %d", h->version,
		        EPMOE_PROTO_VERSION);
		goto refused;
	}
	if (h->model_hash != c->m->identity) {
		refuse(r, EPMOE__STATUS__STATUS_INVALID,
		        "model identity mismatch: worker has '%.100s' (%016" PRIx64
		        "), router serves '%.100s' (%016" PRIx64 ")",
		        h->model_name ? h->model_name : "", h->model_hash,
		        c->m->name, c->m->identity);
		goto refused;
	}
	if (bad_name(h->worker_id) || (h->node && strlen(h->node) >= ID_MAX)) {
		refuse(r, EPMOE__STATUS__STATUS_INVALID,
		        "worker id missing or longer than %d characters", ID_MAX - 1);
		goto refused;
	}
	if (h->data_url == NULL || *h->data_url == '\0' ||
	        strlen(h->data_url) >= sizeof(w->url)) {
		refuse(r, EPMOE__STATUS__STATUS_INVALID, "no (or too long a) data URL");
		goto refused;
	}

	/* choose the place (only this thread changes registrations) */
	pthread_mutex_lock(&c->mu);
	for (uint32_t i = 0; i < c->W && wi == UINT32_MAX; i++)
		if (c->w[i].state != W_NEVER && strcmp(c->w[i].id, h->worker_id) == 0)
			wi = i;
	for (uint32_t i = 0; i < c->W && wi == UINT32_MAX; i++)
		if (c->w[i].state == W_NEVER)
			wi = i;
	for (uint32_t i = 0; i < c->W && wi == UINT32_MAX; i++)
		if (c->w[i].state == W_DOWN)
			wi = i;
	if (wi == UINT32_MAX) {
		pthread_mutex_unlock(&c->mu);
		refuse(r, EPMOE__STATUS__STATUS_BUSY,
		        "all %u worker places are taken by live workers", c->W);
		goto refused;
	}
	w = &c->w[wi];
	if ((w->state == W_UP || w->state == W_JOINING) && w->boot_id != h->boot_id) {
		/* the id of a live worker: not to be taken over */
		bool first = w->refused_boot != h->boot_id;
		w->refused_boot = h->boot_id;
		c->refused_dup++;
		refuse(r, EPMOE__STATUS__STATUS_BUSY,
		        "worker id '%.100s' is in use by a live worker (boot %016" PRIx64
		        ", data %.200s, last heard %" PRIu64 " ms ago)", w->id, w->boot_id,
		        w->url, (clock_now_ns() - w->last_hb_ns) / 1000000u);
		pthread_mutex_unlock(&c->mu);
		if (first)
			log_warn("cluster: refused worker '%.100s' (boot %016" PRIx64 ", data %.200s): %s",
			        h->worker_id, h->boot_id, h->data_url, r->reason);
		return;
	}
	if (w->state == W_DOWN && strcmp(w->id, h->worker_id) == 0 &&
	        w->hold_until_ns > clock_now_ns()) {
		refuse(r, EPMOE__STATUS__STATUS_BUSY,
		        "fenced after %u missed deadlines in a row: register again in %" PRIu64 " ms",
		        w->deadline_streak, (w->hold_until_ns - clock_now_ns()) / 1000000u + 1);
		pthread_mutex_unlock(&c->mu);
		log_debug("cluster: worker '%.100s' held back: %s", h->worker_id, r->reason);
		return;
	}
	takeover = w->state != W_NEVER && strcmp(w->id, h->worker_id) != 0;
	restart = w->state != W_NEVER && !takeover && w->boot_id != h->boot_id;
	need_dial = !w->dialer_open || w->boot_id != h->boot_id ||
	        strcmp(w->url, h->data_url) != 0;
	open_sock = !w->sock_open;
	sock = w->sock;
	snprintf(was, sizeof(was), "%s", w->id);
	pthread_mutex_unlock(&c->mu);

	if (open_sock) {
		/* the socket stays for the cluster's life: publish it now */
		if ((rc = netsock_req_open(&sock, NETSOCK_DATA_RECV_MAX)) != 0) {
			refuse(r, EPMOE__STATUS__STATUS_INTERNAL, "cannot open a data socket: %s",
			        epmoe_strerror(rc));
			goto refused;
		}
		nng_pipe_notify(sock, NNG_PIPE_EV_REM_POST, on_pipe_rem, &c->w[wi]);
		pthread_mutex_lock(&c->mu);
		w->sock = sock;
		w->sock_open = true;
		pthread_mutex_unlock(&c->mu);
	}
	if (need_dial &&
	        (rc = netsock_dial(sock, h->data_url, NETSOCK_DATA_RECV_MAX,
	             c->tls, &dialer)) != 0) {
		refuse(r, EPMOE__STATUS__STATUS_INVALID, "cannot dial data URL %s: %s",
		        h->data_url, epmoe_strerror(rc));
		goto refused;
	}
	pthread_mutex_lock(&c->mu);
	/* it holds nothing yet: its order is the complete set */
	mig_worker_reset(c->mig, wi);
	if ((rc = reply_order(r, c, wi)) != 0) {
		pthread_mutex_unlock(&c->mu);
		if (need_dial)
			nng_dialer_close(dialer);
		refuse(r, EPMOE__STATUS__STATUS_NO_MEMORY, "out of memory");
		goto refused;
	}
	if (need_dial) {
		if (w->dialer_open) {
			old = w->dialer;
			close_old = true;
		}
		w->dialer = dialer;
		w->dialer_open = true;
	}
	snprintf(w->id, sizeof(w->id), "%s", h->worker_id);
	snprintf(w->node, sizeof(w->node), "%s", h->node ? h->node : "");
	snprintf(w->url, sizeof(w->url), "%s", h->data_url);
	w->down_reason[0] = '\0';
	w->boot_id = h->boot_id;
	w->threads = h->threads;
	w->ram_bytes = h->ram_bytes;
	w->rep_ram_free = h->ram_free_bytes;
	w->last_hb_ns = clock_now_ns();
	w->gen++;
	w->registrations++;
	w->state = W_JOINING;
	w->draining = false;
	w->hung_reported = false;
	if (takeover) {
		w->deadline_streak = 0;
		w->hold_until_ns = 0;
		dl_init(&w->lat);
	}
	atomic_fetch_add(&c->version, 1);
	if (takeover)
		snprintf(why, sizeof(why), "took the place of %.40s", was);
	else
		snprintf(why, sizeof(why), "%s", restart ? "restarted" :
		        w->registrations == 1 ? "registered" : "registered again");
	snprintf(w->join_reason, sizeof(w->join_reason), "%s", why);
	pthread_mutex_unlock(&c->mu);
	if (close_old)
		nng_dialer_close(old); /* its pipes' callbacks are now ignored */

	r->hr.accepted = true;
	r->hr.status = EPMOE__STATUS__STATUS_OK;
	r->hr.worker_index = wi;
	log_info("cluster: worker %u %s: id %s, node %s, data %s, boot %016" PRIx64 ", %u threads, %zu slots",
	        wi, why, h->worker_id, h->node ? h->node : "", h->data_url,
	        h->boot_id, h->threads, r->order.n_slots);
	return;
refused:
	log_warn("cluster: refused worker '%.100s' (%.200s): %s",
	        h->worker_id ? h->worker_id : "", h->data_url ? h->data_url : "",
	        r->reason);
}

/* The slot states a report carries (the answer to the worker's last
 * order) into the migration state (lock held). */
static void
take_slot_states(struct cluster *c, uint32_t wi, const Epmoe__SlotOrderReply *o)
{
	for (size_t i = 0; o && i < o->n_slots; i++) {
		const Epmoe__SlotState *st = o->slots[i];
		enum mig_slot ms;

		switch (st->status) {
		case EPMOE__STATUS__STATUS_OK: ms = MIG_READY; break;
		case EPMOE__STATUS__STATUS_BUSY: ms = MIG_LOADING; break;
		case EPMOE__STATUS__STATUS_NOT_FOUND: ms = MIG_NONE; break;
		default:
			ms = MIG_FAILED;
			if (mig_state(c->mig, wi, st->layer, st->expert) != MIG_FAILED)
				log_error("cluster: worker %u could not load layer %u expert %u: status %d (%.200s)",
				        wi, st->layer, st->expert, st->status,
				        o->message ? o->message : "");
			break;
		}
		mig_ack(c->mig, wi, st->layer, st->expert, ms, st->quantized);
	}
}

static void
on_report(struct cluster *c, const Epmoe__LoadReport *lr, struct reply *r)
{
	struct cl_worker *w;
	uint32_t wi = lr->worker_index;
	int rc = 0;

	pthread_mutex_lock(&c->mu);
	w = wi < c->W ? &c->w[wi] : NULL;
	if (w == NULL || w->state == W_NEVER || w->boot_id != lr->boot_id) {
		refuse(r, EPMOE__STATUS__STATUS_NOT_FOUND,
		        "unknown worker (index %u, boot %016" PRIx64 "): register again",
		        wi, lr->boot_id);
	} else if (w->state == W_DOWN) {
		refuse(r, EPMOE__STATUS__STATUS_NOT_FOUND,
		        "marked down (%s): register again", w->down_reason);
	} else {
		w->last_hb_ns = clock_now_ns();
		w->rep_tokens = lr->tokens_served;
		w->rep_batches = lr->batches_served;
		w->rep_compute_us = lr->compute_us;
		w->rep_ram_free = lr->ram_free_bytes;
		w->rep_prefetch_experts = lr->prefetch_experts;
		w->rep_prefetch_bytes = lr->prefetch_bytes;
		w->rep_q8_tokens = lr->quantized_tokens;
		w->rep_q8_bytes = lr->quantized_bytes;
		r->hr.accepted = true;
		r->hr.status = EPMOE__STATUS__STATUS_OK;
		r->hr.worker_index = wi;
		take_slot_states(c, wi, lr->order_reply);
		if (w->state == W_JOINING && mig_worker_ready(c->mig, wi)) {
			/* it holds every slot the committed map gives it:
			 * routable from now */
			w->state = W_UP;
			w->ever_up = true;
			atomic_fetch_add(&c->version, 1);
			cluster_changed_locked(c);
			push_event(c, wi, true, w->join_reason);
			log_info("cluster: worker %u (%s) live (%s)", wi, w->id, w->join_reason);
			if (c->elastic && placement_worker_slots(c->home, wi) == 0) {
				/* a place the placement does not use: a join */
				c->members_dirty = true;
				c->joins++;
				log_info("cluster: worker %u (%s) joins: planning the experts over the live workers",
				        wi, w->id);
			}
		}
		cluster_advance_locked(c);
		rc = reply_order(r, c, wi);
		if (w->draining && mig_worker_unused(c->mig, wi)) {
			r->hr.drained = true;
			if (!w->drained_told) {
				w->drained_told = true;
				c->drains_done++;
				log_info("cluster: worker %u (%s) drained: no placement uses it; it may leave",
				        wi, w->id);
			}
		}
		/* quick reports while it has orders to carry out */
		if (w->state == W_JOINING || w->draining || mig_worker_pending(c->mig, wi))
			r->hr.heartbeat_ms = FAST_HB_MS < c->hb_ms ? FAST_HB_MS : c->hb_ms;
	}
	pthread_mutex_unlock(&c->mu);
	if (rc != 0)
		refuse(r, EPMOE__STATUS__STATUS_NO_MEMORY, "out of memory");
}

static void
on_leave(struct cluster *c, const Epmoe__Leave *lv, struct reply *r)
{
	struct cl_worker *w;
	uint32_t wi = lv->worker_index;
	char why[160];

	pthread_mutex_lock(&c->mu);
	w = wi < c->W ? &c->w[wi] : NULL;
	if (w == NULL || w->state == W_NEVER || w->boot_id != lv->boot_id) {
		refuse(r, EPMOE__STATUS__STATUS_NOT_FOUND, "unknown worker");
	} else if (lv->drain && c->elastic && w->state == W_UP && !c->closing) {
		r->hr.accepted = true;
		r->hr.status = EPMOE__STATUS__STATUS_OK;
		r->hr.worker_index = wi;
		r->hr.heartbeat_ms = FAST_HB_MS < c->hb_ms ? FAST_HB_MS : c->hb_ms;
		if (!w->draining) {
			w->draining = true;
			w->drained_told = false;
			c->drains++;
			c->members_dirty = true;
			atomic_fetch_add(&c->version, 1);
			log_info("cluster: worker %u (%s) drains (%.120s): moving its experts to the other workers",
			        wi, w->id, lv->reason ? lv->reason : "");
			cluster_advance_locked(c);
		}
	} else {
		snprintf(why, sizeof(why), "left: %.120s", lv->reason ? lv->reason : "");
		mark_down(c, wi, why, FENCE_LEFT);
		r->hr.accepted = true;
		r->hr.status = EPMOE__STATUS__STATUS_OK;
		r->hr.worker_index = wi;
		r->hr.drained = true; /* nothing to wait for here */
	}
	pthread_mutex_unlock(&c->mu);
}

/* Handles one control request; consumes m, returns the reply or NULL. */
static nng_msg *
handle(struct cluster *c, nng_msg *m)
{
	Epmoe__ControlMsg out = EPMOE__CONTROL_MSG__INIT, *in = NULL;
	ProtobufCMessage *hdr = NULL;
	const float *rows;
	struct reply r;
	size_t nf = 0;
	float *dst;
	int rc;

	reply_init(&r, c);
	rc = wire_nng_unpack(m, WIRE_CONTROL, NULL, &hdr, &rows, &nf);
	if (rc != 0 || nf != 0) {
		static struct log_limit lim = LOG_LIMIT_INIT;
		const char *why = rc ? wire_errmsg() : "control messages carry no rows";
		pthread_mutex_lock(&c->mu);
		c->bad_msgs++;
		pthread_mutex_unlock(&c->mu);
		log_warn_limited(&lim, "cluster: malformed control message (%zu bytes): %s",
		        nng_msg_len(m), why);
		refuse(&r, EPMOE__STATUS__STATUS_PROTOCOL, "malformed control message: %s", why);
	} else {
		in = (Epmoe__ControlMsg *)hdr;
		out.seq = in->seq;
		switch (in->msg_case) {
		case EPMOE__CONTROL_MSG__MSG_HELLO:
			on_hello(c, in->hello, &r);
			break;
		case EPMOE__CONTROL_MSG__MSG_LOAD_REPORT:
			on_report(c, in->load_report, &r);
			break;
		case EPMOE__CONTROL_MSG__MSG_LEAVE:
			on_leave(c, in->leave, &r);
			break;
		default:
			pthread_mutex_lock(&c->mu);
			c->bad_msgs++;
			pthread_mutex_unlock(&c->mu);
			log_warn("cluster: unexpected control message (case %d)", in->msg_case);
			refuse(&r, EPMOE__STATUS__STATUS_UNSUPPORTED,
			        "the router does not take control message %d here",
			        in->msg_case);
			break;
		}
	}
	out.version = EPMOE_PROTO_VERSION;
	out.msg_case = EPMOE__CONTROL_MSG__MSG_HELLO_REPLY;
	out.hello_reply = &r.hr;
	rc = netsock_msg_pack(&m, WIRE_CONTROL, &out.base, 0, &dst);
	reply_fini(&r);
	if (hdr != NULL)
		protobuf_c_message_free_unpacked(hdr, NULL);
	if (rc != 0) {
		log_error("cluster: cannot build a control reply: %s", epmoe_strerror(rc));
		nng_msg_free(m);
		return NULL;
	}
	return m;
}

static void
check_timeouts(struct cluster *c)
{
	uint64_t now = clock_now_ns(), lim = (uint64_t)c->hb_timeout_ms * 1000000u;
	char why[64];

	pthread_mutex_lock(&c->mu);
	for (uint32_t i = 0; i < c->W; i++) {
		struct cl_worker *w = &c->w[i];
		if ((w->state == W_UP || w->state == W_JOINING) &&
		        now - w->last_hb_ns > lim) {
			snprintf(why, sizeof(why), "no heartbeat for %" PRIu64 " ms",
			        (now - w->last_hb_ns) / 1000000u);
			mark_down(c, i, why, FENCE_HEARTBEAT);
		}
		/* still silent long after: alive but stuck (or gone without
		 * closing its connection); whoever started it may kill it */
		if (w->state == W_DOWN && w->cause != FENCE_LEFT && !w->hung_reported &&
		        now - w->last_hb_ns > 2 * lim) {
			uint32_t ms = (uint32_t)((now - w->last_hb_ns) / 1000000u);
			w->hung_reported = true;
			snprintf(why, sizeof(why), "hung: no heartbeat for %u ms", ms);
			push_event_hung(c, i, false, true, ms, why);
		}
	}
	cluster_advance_locked(c);
	pthread_mutex_unlock(&c->mu);
}

static void *
ctl_main(void *arg)
{
	struct cluster *c = arg;

	while (!atomic_load(&c->stop)) {
		nng_msg *m, *rep;
		int rv = nng_recvmsg(c->ctl, &m, 0);

		if (rv == 0) {
			if ((rep = handle(c, m)) != NULL &&
			        nng_sendmsg(c->ctl, rep, 0) != 0)
				nng_msg_free(rep);
		} else if (rv == NNG_ECLOSED) {
			break;
		} else if (rv != NNG_ETIMEDOUT) {
			log_warn("cluster: control receive failed: %s", nng_strerror(rv));
			nng_msleep(10);
		}
		check_timeouts(c);
		fire_events(c);
	}
	return NULL;
}

/* ---- queries ---- */

uint32_t
cluster_n_live(struct cluster *c)
{
	uint32_t n = 0;

	pthread_mutex_lock(&c->mu);
	for (uint32_t i = 0; i < c->W; i++)
		n += c->w[i].state == W_UP;
	pthread_mutex_unlock(&c->mu);
	return n;
}

int
cluster_worker_hist(struct cluster *c, uint32_t w, struct cluster_hist *out)
{
	if (w >= c->W)
		return EPMOE_ERANGE;
	pthread_mutex_lock(&c->mu);
	*out = c->w[w].hist;
	pthread_mutex_unlock(&c->mu);
	return 0;
}

/* ---- dispatcher side ---- */

void
cluster_peers(struct cluster *c, struct cluster_peer *out, uint32_t n)
{
	pthread_mutex_lock(&c->mu);
	for (uint32_t i = 0; i < n && i < c->W; i++) {
		out[i].alive = c->w[i].state == W_UP && c->w[i].sock_open;
		out[i].sock = c->w[i].sock;
		out[i].gen = c->w[i].gen;
		out[i].load = atomic_load(&c->w[i].outstanding);
		out[i].near = c->w[i].node[0] == '\0' || strcmp(c->w[i].node, c->node) == 0;
	}
	pthread_mutex_unlock(&c->mu);
}

unsigned
cluster_version(struct cluster *c)
{
	return atomic_load(&c->version);
}

void
cluster_load_add(struct cluster *c, uint32_t w, int64_t delta)
{
	if (w < c->W)
		atomic_fetch_add(&c->w[w].outstanding, (uint_fast64_t)delta);
}

uint32_t
cluster_deadline_ms(struct cluster *c, uint32_t w, uint32_t n_rows,
        const struct dl_cfg *cfg, uint64_t *p99_us)
{
	uint32_t ms;

	if (w >= c->W)
		return cfg->cap_ms;
	pthread_mutex_lock(&c->mu);
	ms = dl_deadline_ms(&c->w[w].lat, n_rows, cfg);
	if (p99_us)
		*p99_us = dl_p99_us(&c->w[w].lat, n_rows, cfg->min_samples);
	pthread_mutex_unlock(&c->mu);
	return ms;
}

static enum fence
fence_of(int err)
{
	switch (err) {
	case EPMOE_ETIMEDOUT: return FENCE_DEADLINE;
	case EPMOE_ECLOSED: return FENCE_CONNECTION;
	case EPMOE_ESTATE: return FENCE_STALE;
	default: return FENCE_ERROR;
	}
}

void
cluster_report(struct cluster *c, uint32_t wi, uint32_t gen,
        uint64_t latency_ns, uint32_t n_rows, uint32_t n_tokens, int err,
        const char *why)
{
	struct cl_worker *w;
	double s = (double)latency_ns * 1e-9;
	uint64_t us = latency_ns / 1000u;

	if (wi >= c->W)
		return;
	pthread_mutex_lock(&c->mu);
	w = &c->w[wi];
	w->hist.count++;
	w->hist.sum_s += s;
	for (int i = 0; i < CLUSTER_HIST_BUCKETS; i++)
		if (s <= cluster_hist_bounds_s[i])
			w->hist.bucket[i]++;
	w->lat_us[w->lat_head] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
	w->lat_head = (w->lat_head + 1) % LAT_RING;
	if (w->lat_n < LAT_RING)
		w->lat_n++;
	if (err == 0) {
		w->batches++;
		w->tokens += n_tokens;
		if (w->gen == gen) {
			dl_observe(&w->lat, n_rows, us);
			w->deadline_streak = 0;
		}
	} else if (w->gen == gen && (w->state == W_UP || w->state == W_JOINING)) {
		enum fence f = fence_of(err);
		char r[192];

		w->errors++;
		snprintf(r, sizeof(r), "request failed: %.160s",
		        why ? why : epmoe_strerror(err));
		if (f == FENCE_DEADLINE) {
			w->deadline_streak++;
			if (w->deadline_streak >= 2) {
				uint64_t ms = (uint64_t)HOLD_BASE_MS << (w->deadline_streak - 2 < 16 ?
				        w->deadline_streak - 2 : 16);
				if (ms > HOLD_MAX_MS)
					ms = HOLD_MAX_MS;
				w->hold_until_ns = clock_now_ns() + ms * 1000000u;
			}
		}
		mark_down(c, wi, r, f);
		if (f == FENCE_DEADLINE) /* it stopped answering when sent to */
			c->outage_hint_ns = clock_now_ns() - latency_ns;
		cluster_advance_locked(c);
		if (f == FENCE_DEADLINE && w->deadline_streak >= HUNG_STREAK &&
		        !w->hung_reported) {
			char hw[96];
			w->hung_reported = true;
			snprintf(hw, sizeof(hw), "hung: %u deadlines missed in a row",
			        w->deadline_streak);
			push_event_hung(c, wi, false, true,
			        (uint32_t)((clock_now_ns() - w->last_hb_ns) / 1000000u), hw);
		}
	} else {
		w->errors++;
	}
	pthread_mutex_unlock(&c->mu);
}
