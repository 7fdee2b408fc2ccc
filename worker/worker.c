/* The expert worker: data loop (REP: validate, compute, combine, reply)
 * and control thread (REQ: register, heartbeat, re-register, leave).
 * See worker.h for the protocol.  It must never crash or stop serving on
 * bad input: every malformed message gets an error reply and a log line. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/supplemental/util/platform.h>

#include "clock.h"
#include "err.h"
#include "log.h"
#include "model.h"
#include "moe.h"
#include "netsock.h"
#include "ops.h"
#include "pool.h"
#include "slots.h"
#include "wire.h"
#include "wire_nng.h"
#include "worker.h"

#define DEFAULT_LISTEN "tcp://127.0.0.1:0"
#define DEFAULT_LISTEN_TLS "tls+tcp://127.0.0.1:0"
#define POLL_MS 100            /* data recv timeout: how often stop is seen */
#define DEFAULT_HEARTBEAT_MS 1000
#define MAX_SLOT_ID 65536      /* slot ids in a batch must stay below */
#define FAST_REPORT_MS 50      /* report period while an order is carried out */

struct worker {
	char router_url[512];
	char id[128];
	char node[128];
	char data_url[512];
	uint32_t rpc_timeout_ms;
	uint32_t drain_timeout_ms;
	size_t recv_max;
	struct model *own;        /* loaded here, or NULL when borrowed */
	const struct model *m;
	struct pool *pool;
	int n_threads;
	uint64_t boot_id;
	nng_socket data;
	nng_socket ctl;
	bool data_open, ctl_open;
	struct netsock_tls *tls;  /* mutual TLS identity, or NULL */
	nng_aio *ctl_aio;
	uint64_t ctl_seq;

	struct slots *slots;      /* thread-safe on its own */
	atomic_int report_now;    /* a load finished: report at once */

	pthread_mutex_t mu;       /* guards everything below */
	bool registered;
	uint32_t index;
	uint64_t router_boot;
	uint32_t heartbeat_ms;
	struct worker_stats st;

	const volatile sig_atomic_t *stop;
	atomic_int quit;          /* stop, or a fatal refusal */
	int fatal;

	/* data loop: the shared expert path and its inputs, grown as needed */
	struct moe_ffn *ffn;
	uint32_t *g_expert, *g_count; /* [cap_groups] */
	struct tmat *g_mats;          /* [cap_groups][3] Q8_0 copies (slots) */
	size_t cap_groups;
	float *out;                   /* [cap_out, d] */
	size_t cap_out;
};

static void on_slots_ready(void *arg);

/* A stop was asked (signal) or the worker must quit.  The data loop
 * keeps serving after a stop while the control thread drains: it ends
 * on quit, which the control thread sets once it has left. */
static bool
stopping(struct worker *w)
{
	return (w->stop != NULL && *w->stop) || atomic_load(&w->quit) != 0;
}

static uint64_t
random_u64(void)
{
	uint64_t v = 0;

	if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
		v = (clock_now_ns() / 1000) ^ ((uint64_t)getpid() << 32);
	return v ? v : 1;
}

static void
copy_str(char *dst, size_t cap, const char *src)
{
	snprintf(dst, cap, "%s", src ? src : "");
}

/* The data URL to advertise: the bound URL with a wildcard host replaced
 * by the host name. */
static int
advertise(char *dst, size_t cap, const char *bound)
{
	static const char *const wild[] = { "0.0.0.0", "*", "[::]", "" };
	const char *host = strstr(bound, "://"), *colon;
	char hn[256];

	if (host == NULL || (strncmp(bound, "tcp", 3) != 0 &&
	        strncmp(bound, "tls+tcp", 7) != 0))
		return snprintf(dst, cap, "%s", bound) >= (int)cap ? EPMOE_ERANGE : 0;
	host += 3;
	colon = strrchr(host, ':');
	if (colon == NULL)
		return snprintf(dst, cap, "%s", bound) >= (int)cap ? EPMOE_ERANGE : 0;
	for (size_t i = 0; i < sizeof(wild) / sizeof(wild[0]); i++) {
		if ((size_t)(colon - host) == strlen(wild[i]) &&
		        strncmp(host, wild[i], strlen(wild[i])) == 0) {
			if (gethostname(hn, sizeof(hn)) != 0)
				snprintf(hn, sizeof(hn), "localhost");
			hn[sizeof(hn) - 1] = '\0';
			return snprintf(dst, cap, "%.*s%s%s", (int)(host - bound),
			        bound, hn, colon) >= (int)cap ? EPMOE_ERANGE : 0;
		}
	}
	return snprintf(dst, cap, "%s", bound) >= (int)cap ? EPMOE_ERANGE : 0;
}

int
worker_new(struct worker **out, const struct worker_cfg *cfg, char *err,
        size_t err_len)
{
	struct worker *w;
	char bound[512], hn[64];
	const char *listen;
	int rc;

	if (cfg == NULL || cfg->router_url == NULL || *cfg->router_url == '\0') {
		snprintf(err, err_len, "no router URL (--router)");
		return EPMOE_EINVAL;
	}
	if (cfg->model == NULL && (cfg->model_path == NULL || *cfg->model_path == '\0')) {
		snprintf(err, err_len, "no model (--model)");
		return EPMOE_EINVAL;
	}
	if ((w = calloc(1, sizeof(*w))) == NULL)
		return EPMOE_ENOMEM;
	pthread_mutex_init(&w->mu, NULL);
	atomic_init(&w->quit, 0);
	if ((cfg->tls_cert || cfg->tls_key || cfg->tls_ca) &&
	        (rc = netsock_tls_new(&w->tls, cfg->tls_cert, cfg->tls_key,
	             cfg->tls_ca, err, err_len)) != 0)
		goto fail;
	if (gethostname(hn, sizeof(hn)) != 0)
		snprintf(hn, sizeof(hn), "localhost");
	hn[sizeof(hn) - 1] = '\0';
	copy_str(w->router_url, sizeof(w->router_url), cfg->router_url);
	if (cfg->id && *cfg->id)
		copy_str(w->id, sizeof(w->id), cfg->id);
	else
		snprintf(w->id, sizeof(w->id), "%s-%ld", hn, (long)getpid());
	copy_str(w->node, sizeof(w->node), cfg->node && *cfg->node ? cfg->node : hn);
	w->rpc_timeout_ms = cfg->rpc_timeout_ms ? cfg->rpc_timeout_ms : 2000;
	w->drain_timeout_ms = cfg->drain_timeout_ms;
	w->recv_max = cfg->data_recv_max ? cfg->data_recv_max : NETSOCK_DATA_RECV_MAX;
	w->heartbeat_ms = DEFAULT_HEARTBEAT_MS;
	w->boot_id = random_u64();
	if (cfg->model) {
		w->m = cfg->model;
	} else {
		if ((rc = model_load(&w->own, cfg->model_path, err, err_len)) != 0)
			goto fail;
		w->m = w->own;
	}
	w->n_threads = cfg->n_threads > 0 ? cfg->n_threads :
	        (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (w->n_threads < 1)
		w->n_threads = 1;
	op_blas_init();
	if ((rc = pool_new(&w->pool, w->n_threads)) != 0) {
		snprintf(err, err_len, "cannot start %d compute threads", w->n_threads);
		goto fail;
	}
	if ((rc = slots_new(&w->slots, w->m, on_slots_ready, w)) != 0) {
		snprintf(err, err_len, "cannot start the slot loader");
		goto fail;
	}
	if ((rc = moe_ffn_new(&w->ffn, w->m, w->pool)) != 0) {
		snprintf(err, err_len, "out of memory");
		goto fail;
	}
	listen = cfg->listen_url ? cfg->listen_url :
	        w->tls ? DEFAULT_LISTEN_TLS : DEFAULT_LISTEN;
	if (netsock_url_check(listen, w->tls, err, err_len) != 0 ||
	        netsock_url_check(w->router_url, w->tls, err, err_len) != 0) {
		rc = EPMOE_EINVAL;
		goto fail;
	}
	if ((rc = netsock_rep_listen(&w->data, listen, w->recv_max, w->tls,
	             bound, sizeof(bound))) != 0) {
		snprintf(err, err_len, "cannot listen on %s: %s", listen,
		        epmoe_strerror(rc));
		goto fail;
	}
	w->data_open = true;
	nng_socket_set_ms(w->data, NNG_OPT_RECVTIMEO, POLL_MS);
	nng_socket_set_ms(w->data, NNG_OPT_SENDTIMEO, 1000);
	if (cfg->advertise_url && *cfg->advertise_url)
		rc = snprintf(w->data_url, sizeof(w->data_url), "%s",
		        cfg->advertise_url) >= (int)sizeof(w->data_url) ? EPMOE_ERANGE : 0;
	else
		rc = advertise(w->data_url, sizeof(w->data_url), bound);
	if (rc != 0) {
		snprintf(err, err_len, "data URL too long");
		goto fail;
	}
	if ((rc = netsock_req_dial(&w->ctl, w->router_url, NETSOCK_CTL_RECV_MAX,
	             w->tls)) != 0) {
		snprintf(err, err_len, "cannot dial router %s: %s", w->router_url,
		        epmoe_strerror(rc));
		goto fail;
	}
	w->ctl_open = true;
	if (nng_aio_alloc(&w->ctl_aio, NULL, NULL) != 0) {
		rc = EPMOE_ENOMEM;
		goto fail;
	}
	*out = w;
	return 0;
fail:
	worker_free(w);
	return rc;
}

const char *
worker_data_url(const struct worker *w)
{
	return w->data_url;
}

void
worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	if (w->ctl_aio) {
		nng_aio_stop(w->ctl_aio);
		nng_aio_free(w->ctl_aio);
	}
	if (w->ctl_open)
		netsock_close_bounded(w->ctl, 2000);
	if (w->data_open)
		netsock_close_bounded(w->data, 2000);
	slots_free(w->slots);
	netsock_tls_free(w->tls); /* NNG holds its own references */
	pool_free(w->pool);
	model_free(w->own);
	moe_ffn_free(w->ffn);
	free(w->g_expert);
	free(w->g_count);
	free(w->g_mats);
	free(w->out);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

void
worker_get_stats(struct worker *w, struct worker_stats *out)
{
	pthread_mutex_lock(&w->mu);
	*out = w->st;
	out->registered = w->registered;
	out->index = w->index;
	pthread_mutex_unlock(&w->mu);
	out->epoch = w->slots ? slots_epoch(w->slots) : 0;
	out->n_slots = w->slots ? slots_held(w->slots) : 0;
}

/* ---- data path ---- */

static int
grow_scratch(struct worker *w, size_t n_groups, size_t out_rows)
{
	size_t d = w->m->hp.n_embd;

	if (n_groups > w->cap_groups) {
		uint32_t *e = realloc(w->g_expert, n_groups * sizeof(*e));
		if (e == NULL)
			return EPMOE_ENOMEM;
		w->g_expert = e;
		uint32_t *c = realloc(w->g_count, n_groups * sizeof(*c));
		if (c == NULL)
			return EPMOE_ENOMEM;
		w->g_count = c;
		struct tmat *m = realloc(w->g_mats, 3 * n_groups * sizeof(*m));
		if (m == NULL)
			return EPMOE_ENOMEM;
		w->g_mats = m;
		w->cap_groups = n_groups;
	}
	if (out_rows > w->cap_out) {
		float *o = realloc(w->out, out_rows * d * sizeof(float));
		if (o == NULL)
			return EPMOE_ENOMEM;
		w->out = o;
		w->cap_out = out_rows;
	}
	return 0;
}

/* Packs an ExpertResult into *msg (reused).  rows: n_rows * dim floats to
 * copy after the header, or NULL. */
static int
pack_result(struct worker *w, nng_msg **msg, const Epmoe__ExpertBatch *b,
        Epmoe__Status status, const char *message, const float *rows,
        uint32_t n_rows, uint64_t compute_us, uint64_t queue_us)
{
	Epmoe__ExpertResult r = EPMOE__EXPERT_RESULT__INIT;
	float *dst;
	int rc;

	r.version = EPMOE_PROTO_VERSION;
	if (b != NULL) {
		r.batch_id = b->batch_id;
		r.attempt = b->attempt;
	}
	r.status = status;
	r.message = (char *)(message ? message : "");
	r.epoch = slots_epoch(w->slots);
	pthread_mutex_lock(&w->mu);
	r.worker_index = w->index;
	pthread_mutex_unlock(&w->mu);
	if (status == EPMOE__STATUS__STATUS_OK) {
		r.n_rows = n_rows;
		r.dim = w->m->hp.n_embd;
		r.compute_us = compute_us;
		r.queue_us = queue_us;
	} else {
		rows = NULL;
		n_rows = 0;
	}
	rc = netsock_msg_pack(msg, WIRE_RESULT, &r.base,
	        (size_t)n_rows * (rows ? w->m->hp.n_embd : 0), &dst);
	if (rc == 0 && rows != NULL && n_rows > 0)
		memcpy(dst, rows, (size_t)n_rows * w->m->hp.n_embd * sizeof(float));
	return rc;
}

/* Checks the batch against the slots held (slots.h): every group's
 * (layer, expert) READY for the batch's epoch.  Returns 0 or fills why. */
static int
check_slots(struct worker *w, const Epmoe__ExpertBatch *b, char *why,
        size_t why_len)
{
	bool reg;

	pthread_mutex_lock(&w->mu);
	reg = w->registered;
	pthread_mutex_unlock(&w->mu);
	if (!reg) {
		snprintf(why, why_len, "worker holds no slots (not registered)");
		return EPMOE_ESTATE;
	}
	/* no batch computes now: copies dropped by orders can go */
	slots_reap(w->slots);
	if (grow_scratch(w, b->n_groups, b->n_rows_out) != 0) {
		snprintf(why, why_len, "out of memory for %zu groups", b->n_groups);
		return EPMOE_ENOMEM;
	}
	return slots_check(w->slots, b, w->g_mats, why, why_len);
}

/* Expert FFNs of every group, combined per output row into w->out: the
 * batch is the work list of the shared expert path (moe_ffn_run), groups
 * in batch order, entry j reading input row gather[j] (row j without a
 * gather map) and adding into output row combine[j]. */
static int
compute_batch(struct worker *w, const Epmoe__ExpertBatch *b, const float *rows)
{
	int rc;

	if ((rc = grow_scratch(w, b->n_groups, b->n_rows_out)) != 0)
		return rc;
	for (size_t g = 0; g < b->n_groups; g++) {
		w->g_expert[g] = b->groups[g]->expert;
		w->g_count[g] = b->groups[g]->n_tokens;
	}
	struct moe_work wk = { .n_groups = (uint32_t)b->n_groups,
		.expert = w->g_expert, .count = w->g_count,
		.in_row = b->n_gather ? b->gather : NULL, .out_row = b->combine,
		.mats = w->g_mats,
		.weight = b->weights, .n_in = b->n_rows_in, .n_out = b->n_rows_out };
	return moe_ffn_run(w->ffn, b->layer, rows, &wk, w->out);
}

static void
count_reject(struct worker *w, bool stale)
{
	pthread_mutex_lock(&w->mu);
	w->st.rejected++;
	w->st.stale += stale;
	pthread_mutex_unlock(&w->mu);
}

/* Handles one request; consumes msg and returns the reply (NULL if none
 * could be built). */
static nng_msg *
serve_one(struct worker *w, nng_msg *msg, uint64_t t_recv)
{
	const struct model_hparams *hp = &w->m->hp;
	Epmoe__ExpertBatch *b = NULL;
	ProtobufCMessage *hdr = NULL;
	const float *rows = NULL;
	size_t n_floats = 0, n_entries = 0;
	struct wire_limits lim = { 0 };
	char why[256];
	uint64_t t0, t1;
	int rc;

	rc = wire_nng_unpack(msg, WIRE_BATCH, NULL, &hdr, &rows, &n_floats);
	if (rc != 0) {
		static struct log_limit bad_lim = LOG_LIMIT_INIT;

		log_warn_limited(&bad_lim, "data: rejected a malformed message (%zu bytes): %s",
		        nng_msg_len(msg), wire_errmsg());
		snprintf(why, sizeof(why), "%s", wire_errmsg());
		count_reject(w, false);
		rc = pack_result(w, &msg, NULL, rc == EPMOE_EPROTO ?
		        EPMOE__STATUS__STATUS_PROTOCOL : EPMOE__STATUS__STATUS_INVALID,
		        why, NULL, 0, 0, 0);
		goto reply;
	}
	b = (Epmoe__ExpertBatch *)hdr;
	lim.n_layers = hp->n_layer;
	lim.n_experts = hp->n_expert;
	lim.n_slots = MAX_SLOT_ID;
	lim.max_dim = hp->n_embd;
	lim.max_rows = (uint32_t)(w->recv_max / (sizeof(float) * hp->n_embd));
	if (wire_check_batch(b, n_floats, &lim) != 0) {
		log_warn("data: rejected batch %" PRIu64 ": %s", b->batch_id,
		        wire_errmsg());
		snprintf(why, sizeof(why), "%s", wire_errmsg());
		count_reject(w, false);
		rc = pack_result(w, &msg, b, EPMOE__STATUS__STATUS_INVALID, why,
		        NULL, 0, 0, 0);
		goto reply;
	}
	for (size_t g = 0; g < b->n_groups; g++)
		n_entries += b->groups[g]->n_tokens;
	/* output rows nobody adds into are pointless: bounding them by the
	 * entries keeps a small frame from asking for a huge buffer */
	if (b->n_rows_out > n_entries && b->n_rows_out > b->n_rows_in) {
		snprintf(why, sizeof(why), "%u output rows for %zu entries",
		        b->n_rows_out, n_entries);
		log_warn("data: rejected batch %" PRIu64 ": %s", b->batch_id, why);
		count_reject(w, false);
		rc = pack_result(w, &msg, b, EPMOE__STATUS__STATUS_INVALID, why,
		        NULL, 0, 0, 0);
		goto reply;
	}
	if (b->dim != hp->n_embd) {
		snprintf(why, sizeof(why), "batch dim %u, the model's is %u", b->dim,
		        hp->n_embd);
		log_warn("data: rejected batch %" PRIu64 ": %s", b->batch_id, why);
		count_reject(w, false);
		rc = pack_result(w, &msg, b, EPMOE__STATUS__STATUS_INVALID, why,
		        NULL, 0, 0, 0);
		goto reply;
	}
	if (check_slots(w, b, why, sizeof(why)) != 0) {
		log_warn("data: stale batch %" PRIu64 " (layer %u): %s", b->batch_id,
		        b->layer, why);
		count_reject(w, true);
		rc = pack_result(w, &msg, b, EPMOE__STATUS__STATUS_STALE_PLACEMENT,
		        why, NULL, 0, 0, 0);
		goto reply;
	}
	if (b->n_prefetch > 0 && b->layer + 1 < hp->n_layer) {
		/* the next layer's likely experts start paging in while this
		 * layer computes */
		uint64_t bytes;
		uint32_t n = slots_prefetch(w->slots, b->layer + 1, b->prefetch,
		        b->n_prefetch, &bytes);
		pthread_mutex_lock(&w->mu);
		w->st.prefetch_experts += n;
		w->st.prefetch_bytes += bytes;
		pthread_mutex_unlock(&w->mu);
	}
	t0 = (clock_now_ns() / 1000);
	rc = compute_batch(w, b, rows);
	t1 = (clock_now_ns() / 1000);
	if (rc != 0) {
		snprintf(why, sizeof(why), "expert compute failed: %s",
		        epmoe_strerror(rc));
		log_error("data: batch %" PRIu64 ": %s", b->batch_id, why);
		count_reject(w, false);
		rc = pack_result(w, &msg, b, rc == EPMOE_ENOMEM ?
		        EPMOE__STATUS__STATUS_NO_MEMORY : EPMOE__STATUS__STATUS_INTERNAL,
		        why, NULL, 0, 0, 0);
		goto reply;
	}
	pthread_mutex_lock(&w->mu);
	w->st.batches++;
	w->st.tokens += n_entries;
	for (size_t g = 0; g < b->n_groups; g++)
		if (w->g_mats[3 * g].data)
			w->st.tokens_q8 += b->groups[g]->n_tokens;
	w->st.rows_in += b->n_rows_in;
	w->st.compute_us += t1 - t0;
	pthread_mutex_unlock(&w->mu);
	/* the input rows are consumed: the request buffer becomes the reply */
	rc = pack_result(w, &msg, b, EPMOE__STATUS__STATUS_OK, NULL, w->out,
	        b->n_rows_out, t1 - t0, t0 - t_recv);
reply:
	if (hdr != NULL)
		protobuf_c_message_free_unpacked(hdr, NULL);
	if (rc != 0) {
		log_error("data: cannot build a reply: %s", epmoe_strerror(rc));
		nng_msg_free(msg);
		return NULL;
	}
	return msg;
}

static void
data_loop(struct worker *w)
{
	while (!atomic_load(&w->quit)) {
		if (stopping(w)) {
			bool reg;
			pthread_mutex_lock(&w->mu);
			reg = w->registered;
			pthread_mutex_unlock(&w->mu);
			if (!reg) /* nothing to drain: the control thread may be
			             waiting for an unreachable router */
				break;
		}
		nng_msg *msg, *rep;
		uint64_t t_recv;
		int rv = nng_recvmsg(w->data, &msg, 0);

		if (rv == NNG_ETIMEDOUT)
			continue;
		if (rv == NNG_ECLOSED)
			break;
		if (rv != 0) {
			log_warn("data: receive failed: %s", nng_strerror(rv));
			nng_msleep(10);
			continue;
		}
		t_recv = (clock_now_ns() / 1000);
		if ((rep = serve_one(w, msg, t_recv)) == NULL)
			continue;
		if ((rv = nng_sendmsg(w->data, rep, 0)) != 0) {
			log_debug("data: reply not sent: %s", nng_strerror(rv));
			nng_msg_free(rep);
		}
	}
}

/* ---- control path ---- */

/* One request/reply on the control socket with a deadline.  On success
 * *rep is the caller's (protobuf_c_message_free_unpacked). */
static int
ctl_call(struct worker *w, Epmoe__ControlMsg *req, Epmoe__ControlMsg **rep,
        uint32_t timeout_ms)
{
	ProtobufCMessage *hdr;
	const float *rows;
	size_t nf;
	nng_msg *m;
	int rv;

	req->version = EPMOE_PROTO_VERSION;
	req->seq = ++w->ctl_seq;
	if ((rv = wire_nng_pack(&m, WIRE_CONTROL, &req->base, NULL, 0)) != 0)
		return rv;
	nng_aio_set_msg(w->ctl_aio, m);
	nng_aio_set_timeout(w->ctl_aio, (nng_duration)timeout_ms);
	nng_send_aio(w->ctl, w->ctl_aio);
	nng_aio_wait(w->ctl_aio);
	if ((rv = nng_aio_result(w->ctl_aio)) != 0) {
		nng_msg_free(nng_aio_get_msg(w->ctl_aio));
		nng_aio_set_msg(w->ctl_aio, NULL);
		return wire_nng_err(rv);
	}
	nng_aio_set_timeout(w->ctl_aio, (nng_duration)timeout_ms);
	nng_recv_aio(w->ctl, w->ctl_aio);
	nng_aio_wait(w->ctl_aio);
	if ((rv = nng_aio_result(w->ctl_aio)) != 0)
		return wire_nng_err(rv);
	m = nng_aio_get_msg(w->ctl_aio);
	nng_aio_set_msg(w->ctl_aio, NULL);
	rv = wire_nng_unpack(m, WIRE_CONTROL, NULL, &hdr, &rows, &nf);
	if (rv != 0) {
		log_warn("control: malformed reply from the router: %s", wire_errmsg());
		nng_msg_free(m);
		return rv;
	}
	nng_msg_free(m);
	*rep = (Epmoe__ControlMsg *)hdr;
	return 0;
}

/* Applies a slot order from the router (slots.h): loads go to the loader
 * thread, the worker keeps serving. */
static int
apply_order(struct worker *w, const Epmoe__SlotOrder *o)
{
	uint32_t loads = 0, frees = 0;
	int rc;

	for (size_t i = 0; i < o->n_slots; i++) {
		loads += o->slots[i]->op == EPMOE__SLOT_OP__SLOT_OP_LOAD;
		frees += o->slots[i]->op == EPMOE__SLOT_OP__SLOT_OP_FREE;
	}
	if ((rc = slots_apply(w->slots, o)) != 0)
		return rc;
	log_debug("control: order %" PRIu64 " (epoch %" PRIu64 "%s): %u loads, %u frees; %u slots held, %u loading",
	        o->order_id, o->epoch, o->complete ? ", complete" : "", loads, frees,
	        slots_held(w->slots), slots_loading(w->slots));
	return 0;
}

/* Loader thread: every queued load is done; report at once. */
static void
on_slots_ready(void *arg)
{
	struct worker *w = arg;

	atomic_store(&w->report_now, 1);
}

static uint64_t
ram_total(uint64_t *free_out)
{
	struct sysinfo si;

	if (sysinfo(&si) != 0) {
		*free_out = 0;
		return 0;
	}
	*free_out = (uint64_t)si.freeram * si.mem_unit;
	return (uint64_t)si.totalram * si.mem_unit;
}

enum { REG_OK = 0, REG_RETRY = 1, REG_FATAL = 2 };

static int
do_hello(struct worker *w, bool *logged_wait)
{
	Epmoe__ControlMsg req = EPMOE__CONTROL_MSG__INIT, *rep = NULL;
	Epmoe__WorkerHello h = EPMOE__WORKER_HELLO__INIT;
	const Epmoe__HelloReply *r;
	int rc, res = REG_RETRY;
	bool boot_changed;

	h.version = EPMOE_PROTO_VERSION;
	h.worker_id = w->id;
	h.boot_id = w->boot_id;
	h.threads = (uint32_t)w->n_threads;
	h.ram_bytes = ram_total(&h.ram_free_bytes);
	h.model_hash = w->m->identity;
	h.model_name = (char *)w->m->name;
	h.has_model_file = true;
	h.data_url = w->data_url;
	h.control_url = (char *)"";
	h.xfer_url = (char *)"";
	h.node = w->node;
	req.msg_case = EPMOE__CONTROL_MSG__MSG_HELLO;
	req.hello = &h;
	if ((rc = ctl_call(w, &req, &rep, w->rpc_timeout_ms)) != 0) {
		if (!*logged_wait && !stopping(w))
			log_info("waiting for the router at %s (%s)", w->router_url,
			        epmoe_strerror(rc));
		*logged_wait = true;
		return REG_RETRY;
	}
	*logged_wait = false;
	if (rep->msg_case != EPMOE__CONTROL_MSG__MSG_HELLO_REPLY) {
		log_warn("control: the router answered hello with message %d", rep->msg_case);
		goto out;
	}
	r = rep->hello_reply;
	if (!r->accepted) {
		bool fatal = r->status == EPMOE__STATUS__STATUS_INVALID ||
		        r->status == EPMOE__STATUS__STATUS_PROTOCOL;
		log_error("router %s refused this worker%s: %s", w->router_url,
		        fatal ? "" : " (will retry)", r->reason ? r->reason : "");
		res = fatal ? REG_FATAL : REG_RETRY;
		goto out;
	}
	pthread_mutex_lock(&w->mu);
	boot_changed = w->router_boot != 0 && w->router_boot != r->router_boot_id;
	pthread_mutex_unlock(&w->mu);
	if (boot_changed) {
		log_info("router %s restarted (boot %016" PRIx64 "): its placement epochs start again",
		        w->router_url, r->router_boot_id);
		slots_new_router(w->slots);
	}
	if (r->order != NULL && (rc = apply_order(w, r->order)) != 0) {
		log_error("control: cannot apply the slot order: %s", epmoe_strerror(rc));
		goto out;
	}
	pthread_mutex_lock(&w->mu);
	w->registered = true;
	w->index = r->worker_index;
	w->router_boot = r->router_boot_id;
	w->heartbeat_ms = r->heartbeat_ms ? r->heartbeat_ms : DEFAULT_HEARTBEAT_MS;
	w->st.registrations++;
	pthread_mutex_unlock(&w->mu);
	log_info("registered with router %s as worker %u (id %s, data %s, epoch %" PRIu64 ", %u slots)",
	        w->router_url, r->worker_index, w->id, w->data_url,
	        slots_epoch(w->slots), slots_held(w->slots));
	res = REG_OK;
out:
	protobuf_c_message_free_unpacked(&rep->base, NULL);
	return res;
}

/* Heartbeat.  Returns 0, EPMOE_ENOENT when the router wants a new
 * registration, or a transport error. */
static int
do_report(struct worker *w, bool *drained)
{
	Epmoe__ControlMsg req = EPMOE__CONTROL_MSG__INIT, *rep = NULL;
	Epmoe__LoadReport lr = EPMOE__LOAD_REPORT__INIT;
	Epmoe__SlotOrderReply orep;
	const Epmoe__HelloReply *r;
	uint64_t router_boot;
	int rc = 0;

	atomic_store(&w->report_now, 0);
	lr.epoch = slots_epoch(w->slots);
	if (slots_report(w->slots, &orep) == 0)
		lr.order_reply = &orep;
	pthread_mutex_lock(&w->mu);
	lr.worker_index = w->index;
	lr.tokens_served = w->st.tokens;
	lr.batches_served = w->st.batches;
	lr.compute_us = w->st.compute_us;
	lr.prefetch_experts = w->st.prefetch_experts;
	lr.prefetch_bytes = w->st.prefetch_bytes;
	lr.quantized_tokens = w->st.tokens_q8;
	slots_quantized(w->slots, &lr.quantized_bytes);
	router_boot = w->router_boot;
	pthread_mutex_unlock(&w->mu);
	lr.boot_id = w->boot_id;
	ram_total(&lr.ram_free_bytes);
	req.msg_case = EPMOE__CONTROL_MSG__MSG_LOAD_REPORT;
	req.load_report = &lr;
	if ((rc = ctl_call(w, &req, &rep, w->rpc_timeout_ms)) != 0)
		return rc;
	if (rep->msg_case != EPMOE__CONTROL_MSG__MSG_HELLO_REPLY) {
		rc = EPMOE_EPROTO;
		goto out;
	}
	r = rep->hello_reply;
	if (!r->accepted) {
		log_info("router %s does not know this worker any more (%s): registering again",
		        w->router_url, r->reason ? r->reason : "");
		rc = EPMOE_ENOENT;
	} else if (r->router_boot_id != router_boot) {
		log_info("router %s restarted: registering again", w->router_url);
		rc = EPMOE_ENOENT;
	} else {
		pthread_mutex_lock(&w->mu);
		w->heartbeat_ms = r->heartbeat_ms ? r->heartbeat_ms : DEFAULT_HEARTBEAT_MS;
		pthread_mutex_unlock(&w->mu);
		if (drained)
			*drained = r->drained;
		/* frees and repeated loads are done at once: tell the router
		 * without waiting a period (new loads report when they end) */
		if (r->order != NULL && (rc = apply_order(w, r->order)) == 0 &&
		        slots_loading(w->slots) == 0)
			atomic_store(&w->report_now, 1);
	}
out:
	protobuf_c_message_free_unpacked(&rep->base, NULL);
	return rc;
}

/* Leave: drain (the router moves this worker's experts away; *drained
 * when it already has) or gone now.  0 or a transport error. */
static int
do_leave(struct worker *w, bool drain, bool *drained)
{
	Epmoe__ControlMsg req = EPMOE__CONTROL_MSG__INIT, *rep = NULL;
	Epmoe__Leave lv = EPMOE__LEAVE__INIT;
	int rc;

	pthread_mutex_lock(&w->mu);
	lv.worker_index = w->index;
	if (!drain)
		w->registered = false;
	pthread_mutex_unlock(&w->mu);
	lv.boot_id = w->boot_id;
	lv.reason = (char *)"shutdown";
	lv.drain = drain;
	req.msg_case = EPMOE__CONTROL_MSG__MSG_LEAVE;
	req.leave = &lv;
	if ((rc = ctl_call(w, &req, &rep, 1000)) == 0) {
		const Epmoe__HelloReply *r = rep->msg_case == EPMOE__CONTROL_MSG__MSG_HELLO_REPLY ?
		        rep->hello_reply : NULL;
		if (drained)
			/* refused: the router does not know us, nothing to move */
			*drained = r == NULL || !r->accepted || r->drained;
		if (!drain)
			log_info("left router %s", w->router_url);
		protobuf_c_message_free_unpacked(&rep->base, NULL);
	} else {
		log_warn("could not tell router %s that this worker leaves", w->router_url);
	}
	return rc;
}

/* After a stop: asks the router to move this worker's experts away and
 * keeps serving and reporting until it says no placement uses this
 * worker, or drain_timeout_ms pass (logged); the caller then leaves. */
static void
do_drain(struct worker *w)
{
	uint64_t t0 = clock_now_ns(), lim = (uint64_t)w->drain_timeout_ms * 1000000u;
	bool drained = false;

	if (do_leave(w, true, &drained) != 0)
		return;
	if (!drained)
		log_info("draining: the router moves this worker's experts to the others (at most %u ms)",
		        w->drain_timeout_ms);
	while (!drained) {
		uint32_t hb;
		int rc;

		if (clock_now_ns() - t0 > lim) {
			log_warn("drain timed out after %u ms: leaving anyway", w->drain_timeout_ms);
			return;
		}
		pthread_mutex_lock(&w->mu);
		hb = w->heartbeat_ms;
		pthread_mutex_unlock(&w->mu);
		nng_msleep(hb < 200 ? hb : 200);
		rc = do_report(w, &drained);
		if (rc == EPMOE_ENOENT)
			drained = true; /* the router forgot us: nothing to move */
	}
	log_info("drained in %.2f s: no placement uses this worker",
	        (double)(clock_now_ns() - t0) * 1e-9);
}

/* Sleeps up to ms, waking early on stop or when a report is due. */
static void
nap(struct worker *w, uint32_t ms)
{
	while (ms > 0 && !stopping(w) && !atomic_load(&w->report_now)) {
		uint32_t step = ms < 50 ? ms : 50;
		nng_msleep(step);
		ms -= step;
	}
}

static void *
ctl_main(void *arg)
{
	struct worker *w = arg;
	bool registered = false, logged_wait = false, logged_lost = false;
	bool report_now = false;
	uint32_t backoff = 100;

	while (!stopping(w)) {
		uint32_t hb;
		int rc;

		if (!registered) {
			rc = do_hello(w, &logged_wait);
			if (rc == REG_FATAL) {
				w->fatal = EPMOE_EINVAL;
				atomic_store(&w->quit, 1);
				break;
			}
			if (rc != REG_OK) {
				nap(w, backoff);
				backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
				continue;
			}
			registered = true;
			backoff = 100;
			/* confirms the order: the router routes to us after it */
			report_now = true;
		}
		if (!report_now) {
			pthread_mutex_lock(&w->mu);
			hb = w->heartbeat_ms;
			pthread_mutex_unlock(&w->mu);
			nap(w, hb);
			if (stopping(w))
				break;
		}
		report_now = false;
		rc = do_report(w, NULL);
		if (rc == EPMOE_ENOENT) {
			pthread_mutex_lock(&w->mu);
			w->registered = false;
			pthread_mutex_unlock(&w->mu);
			registered = false;
			logged_lost = false;
		} else if (rc != 0) {
			if (!logged_lost)
				log_warn("heartbeat to router %s failed: %s", w->router_url,
				        epmoe_strerror(rc));
			logged_lost = true;
		} else {
			if (logged_lost)
				log_info("router %s reachable again", w->router_url);
			logged_lost = false;
		}
	}
	if (registered && w->fatal == 0) {
		/* a drain needs the data loop serving (it stops early only
		 * when the stop came before the registration) */
		if (w->drain_timeout_ms > 0 && !atomic_load(&w->quit))
			do_drain(w);
		do_leave(w, false, NULL);
	}
	atomic_store(&w->quit, 1); /* the data loop may stop now */
	return NULL;
}

int
worker_serve(struct worker *w, const volatile sig_atomic_t *stop)
{
	pthread_t th;
	int rc;

	w->stop = stop;
	if ((rc = pthread_create(&th, NULL, ctl_main, w)) != 0)
		return epmoe_err_from_errno(rc);
	log_info("worker %s serving on %s (model %s, %u layers x %u experts, %d threads)",
	        w->id, w->data_url, w->m->name[0] ? w->m->name : w->m->path ? w->m->path : "?",
	        w->m->hp.n_layer, w->m->hp.n_expert, w->n_threads);
	data_loop(w);
	atomic_store(&w->quit, 1);
	/* a hello waiting for an unreachable router need not run out its
	 * deadline; once registered, the control thread's calls are short
	 * and it must be left to send Leave */
	pthread_mutex_lock(&w->mu);
	if (!w->registered)
		nng_aio_cancel(w->ctl_aio);
	pthread_mutex_unlock(&w->mu);
	pthread_join(th, NULL);
	log_info("worker %s stopped", w->id);
	return w->fatal;
}

int
worker_run(const struct worker_cfg *cfg, const volatile sig_atomic_t *stop,
        char *err, size_t err_len)
{
	struct worker *w;
	int rc;

	if ((rc = worker_new(&w, cfg, err, err_len)) != 0)
		return rc;
	rc = worker_serve(w, stop);
	if (rc != 0)
		snprintf(err, err_len, "the router refused this worker (see the log)");
	worker_free(w);
	return rc;
}
