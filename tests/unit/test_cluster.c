/* Placement maps (contiguous blocks, explicit counts, placement files and
 * their errors) and the router's control plane, driven by a fake worker
 * that speaks the control protocol by hand over a real tcp socket:
 * registration, refusals with reasons (wrong model, no free place),
 * heartbeats, restarts, leaving, heartbeat timeouts, events, and
 * malformed control messages answered without disturbing the router. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>

#include "cluster.h"
#include "err.h"
#include "model.h"
#include "placement.h"
#include "testutil.h"
#include "wire.h"
#include "wire_nng.h"

/* ---- placement ---- */

static void
check_layer(const struct placement *p, uint32_t l, const int *want_worker)
{
	for (uint32_t e = 0; e < p->n_expert; e++) {
		ck_assert_uint_eq(placement_expert_copies(p, l, e), 1);
		int32_t s = placement_expert_slot(p, l, e, 0);
		ck_assert_int_ge(s, 0);
		ck_assert_int_eq(placement_slot_expert(p, l, (uint32_t)s), (int)e);
		ck_assert_int_eq(placement_slot_worker(p, l, (uint32_t)s), want_worker[e]);
	}
	/* slots run in (worker, expert) order */
	for (uint32_t s = 1; s < p->n_slot; s++) {
		int32_t w0 = placement_slot_worker(p, l, s - 1), w1 = placement_slot_worker(p, l, s);
		if (w1 < 0)
			continue;
		ck_assert(w0 < w1 || (w0 == w1 && placement_slot_expert(p, l, s - 1) <
		        placement_slot_expert(p, l, s)));
	}
}

START_TEST(contiguous_placement_splits_experts_in_blocks)
{
	struct placement *p;
	static const int even[8] = { 0, 0, 0, 0, 1, 1, 1, 1 };
	static const int three[8] = { 0, 0, 0, 1, 1, 1, 2, 2 };
	static const int seven[7] = { 0, 0, 0, 1, 1, 2, 2 };
	static const int one[8] = { 0 };

	ck_assert_int_eq(placement_contiguous(&p, 2, 8, 2), 0);
	ck_assert_uint_eq(p->n_slot, 8);
	ck_assert_uint_eq(p->n_worker, 2);
	ck_assert_uint_eq(p->epoch, 1);
	check_layer(p, 0, even);
	check_layer(p, 1, even);
	ck_assert_uint_eq(placement_worker_slots(p, 0), 8);
	placement_free(p);

	ck_assert_int_eq(placement_contiguous(&p, 3, 8, 3), 0);
	for (uint32_t l = 0; l < 3; l++)
		check_layer(p, l, three);
	ck_assert_uint_eq(placement_worker_slots(p, 2), 6);
	placement_free(p);

	ck_assert_int_eq(placement_contiguous(&p, 1, 7, 3), 0);
	check_layer(p, 0, seven);
	placement_free(p);

	ck_assert_int_eq(placement_contiguous(&p, 1, 8, 1), 0);
	check_layer(p, 0, one);
	placement_free(p);

	p = NULL;
	ck_assert_int_eq(placement_contiguous(&p, 1, 8, 9), EPMOE_EINVAL);
	ck_assert_int_eq(placement_contiguous(&p, 1, 8, 0), EPMOE_EINVAL);
	ck_assert_ptr_null(p);
}
END_TEST

START_TEST(explicit_counts_give_uneven_blocks_and_reject_junk)
{
	struct placement *p;
	uint32_t *c, n;
	char err[256];
	static const int want[8] = { 0, 1, 1, 1, 1, 1, 3, 3 };
	static const char *const junk[] = { "", "1,,2", "a", "1,2,", ",1", "-1,9",
		"1;7", "1 ,7", "99999999999" };

	ck_assert_int_eq(placement_parse_counts("1,5,0,2", &c, &n, err, sizeof(err)), 0);
	ck_assert_uint_eq(n, 4);
	ck_assert_int_eq(placement_from_counts(&p, 2, 8, c, n, err, sizeof(err)), 0);
	check_layer(p, 0, want);
	check_layer(p, 1, want);
	ck_assert_uint_eq(placement_worker_slots(p, 2), 0);
	placement_free(p);
	/* counts must sum to E */
	ck_assert_int_eq(placement_from_counts(&p, 2, 9, c, n, err, sizeof(err)),
	        EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "9 experts"));
	free(c);
	for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
		err[0] = '\0';
		ck_assert_msg(placement_parse_counts(junk[i], &c, &n, err, sizeof(err)) ==
		        EPMOE_EINVAL, "accepted '%s'", junk[i]);
		ck_assert(err[0] != '\0');
	}
}
END_TEST

static int
from_json(struct placement **p, const char *js, uint32_t L, uint32_t E, char *err)
{
	err[0] = '\0';
	return placement_from_json(p, js, strlen(js), L, E, err, 256);
}

START_TEST(placement_file_parses_layers_and_replicas)
{
	struct placement *p, *q;
	char err[256];
	cJSON *j;
	char *txt;
	static const int l0[4] = { 1, 0, 1, 0 };

	/* one entry for every layer */
	ck_assert_int_eq(from_json(&p, "{\"layers\": [[1, 0, 1, 0]]}", 3, 4, err), 0);
	ck_assert_uint_eq(p->n_worker, 2);
	for (uint32_t l = 0; l < 3; l++)
		check_layer(p, l, l0);
	placement_free(p);

	/* per layer, with a replica and an idle worker 3 */
	ck_assert_int_eq(from_json(&p, "{\"n_workers\": 4, \"layers\": "
	        "[[0, [1, 2], 2, 0], [2, 2, 1, 0]]}", 2, 4, err), 0);
	ck_assert_uint_eq(p->n_worker, 4);
	ck_assert_uint_eq(p->max_copies, 2);
	ck_assert_uint_eq(p->n_slot, 5);
	ck_assert_uint_eq(placement_expert_copies(p, 0, 1), 2);
	ck_assert_int_eq(placement_slot_worker(p, 0,
	        (uint32_t)placement_expert_slot(p, 0, 1, 0)), 1);
	ck_assert_int_eq(placement_slot_worker(p, 0,
	        (uint32_t)placement_expert_slot(p, 0, 1, 1)), 2);
	ck_assert_uint_eq(placement_expert_copies(p, 1, 1), 1);
	/* layer 1 uses 4 of the 5 slots */
	ck_assert_int_eq(placement_slot_worker(p, 1, 4), -1);
	ck_assert_uint_eq(placement_worker_slots(p, 3), 0);
	ck_assert_uint_eq(placement_worker_slots(p, 2), 4);

	/* to_json writes the file format back: it parses to the same map */
	ck_assert_int_eq(placement_to_json(p, &j), 0);
	txt = cJSON_PrintUnformatted(j);
	ck_assert_ptr_nonnull(strstr(txt, "[[0,[1,2],2,0],[2,2,1,0]]"));
	ck_assert_int_eq(from_json(&q, txt, 2, 4, err), 0);
	ck_assert_uint_eq(q->n_slot, p->n_slot);
	ck_assert_mem_eq(q->slot_worker, p->slot_worker, 2 * p->n_slot * sizeof(int32_t));
	ck_assert_mem_eq(q->phy2log, p->phy2log, 2 * p->n_slot * sizeof(int32_t));
	placement_free(q);
	cJSON_free(txt);
	cJSON_Delete(j);
	placement_free(p);
}
END_TEST

START_TEST(placement_file_errors_name_the_problem)
{
	static const struct {
		const char *json, *msg;
	} bad[] = {
		{ "{\"layers\": [[0, 0, 1", "not valid JSON" },
		{ "[1, 2]", "\"layers\" array" },
		{ "{\"layer\": [[0, 0, 1, 1]]}", "\"layers\" array" },
		{ "{\"layers\": [[0, 0, 1, 1], [0, 0, 1, 1]]}", "expected 1 (every layer) or 3" },
		{ "{\"layers\": [[0, 0, 1]]}", "has 3 entries, the model has 4 experts" },
		{ "{\"layers\": [[0, 0, 1, -1]]}", "layers[0][3]" },
		{ "{\"layers\": [[0, 0, 1, 1.5]]}", "layers[0][3]" },
		{ "{\"layers\": [[0, 0, 1, \"1\"]]}", "layers[0][3]" },
		{ "{\"layers\": [[0, 0, 1, 5000]]}", "layers[0][3]" },
		{ "{\"layers\": [[0, [1, 1], 1, 0]]}", "worker 1 listed twice" },
		{ "{\"layers\": [[0, [], 1, 0]]}", "replica list" },
		{ "{\"layers\": [[0, 0, 1, 1], 7]}", "expected 1" },
		{ "{\"layers\": [7]}", "layers[0] is not an array" },
		{ "{\"n_workers\": 1, \"layers\": [[0, 0, 1, 1]]}", "n_workers" },
		{ "{\"n_workers\": 2.5, \"layers\": [[0, 0, 1, 1]]}", "n_workers" },
	};
	struct placement *p = NULL;
	char err[256];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(from_json(&p, bad[i].json, 3, 4, err) == EPMOE_EFORMAT,
		        "accepted %s", bad[i].json);
		ck_assert_msg(strstr(err, bad[i].msg) != NULL, "%s: message '%s' lacks '%s'",
		        bad[i].json, err, bad[i].msg);
		ck_assert_ptr_null(p);
	}
	ck_assert_int_eq(placement_load_file(&p, "/nonexistent/placement.json", 3, 4,
	        err, sizeof(err)), EPMOE_EIO);
	ck_assert_ptr_nonnull(strstr(err, "/nonexistent/placement.json"));
}
END_TEST

START_TEST(placement_file_loads_from_disk)
{
	char path[] = "/tmp/epmoe-placement-XXXXXX";
	const char *js = "{\"layers\": [[1, 1, 0, 0, 0, 0, 1, 1]]}";
	struct placement *p;
	char err[256];
	int fd = mkstemp(path);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, js, strlen(js)), (int)strlen(js));
	close(fd);
	ck_assert_int_eq(placement_load_file(&p, path, 2, 8, err, sizeof(err)), 0);
	ck_assert_uint_eq(placement_worker_slots(p, 0), 8);
	ck_assert_int_eq(placement_slot_worker(p, 1, 0), 0);
	ck_assert_int_eq(placement_slot_expert(p, 1, 0), 2);
	placement_free(p);
	unlink(path);
}
END_TEST

/* ---- control plane ---- */

static struct model *
load_model(void)
{
	struct model *m;
	char err[256];

	ck_assert_msg(model_load(&m, tu_data("mixtral-tiny-f32.gguf"), err,
	        sizeof(err)) == 0, "%s", err);
	return m;
}

START_TEST(cluster_config_errors_are_explained)
{
	struct model *m = load_model();
	struct cluster *c = NULL;
	struct cluster_cfg cfg = { .control_url = "tcp://127.0.0.1:0", .model = m };
	char err[256];

	ck_assert_int_eq(cluster_new(&c, &cfg, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "no placement"));
	cfg.n_workers = 9;
	ck_assert_int_eq(cluster_new(&c, &cfg, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "8 experts"));
	cfg.n_workers = 2;
	cfg.experts_per_worker = "4,3";
	ck_assert_int_eq(cluster_new(&c, &cfg, err, sizeof(err)), EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "experts-per-worker"));
	cfg.experts_per_worker = "4,2,2";
	ck_assert_int_eq(cluster_new(&c, &cfg, err, sizeof(err)), EPMOE_EINVAL);
	cfg.n_workers = 0;
	ck_assert_int_eq(cluster_new(&c, &cfg, err, sizeof(err)), 0);
	ck_assert_uint_eq(cluster_n_workers(c), 3);
	ck_assert(!cluster_ready(c));
	cluster_free(c);
	cfg.experts_per_worker = NULL;
	cfg.placement_file = "/nonexistent.json";
	ck_assert_int_eq(cluster_new(&c, &cfg, err, sizeof(err)), EPMOE_EIO);
	cfg.placement_file = NULL;
	cfg.control_url = NULL;
	ck_assert_int_eq(cluster_new(&c, &cfg, err, sizeof(err)), EPMOE_EINVAL);
	model_free(m);
}
END_TEST

/* A fake worker: a REQ socket on the control URL, messages built by hand.
 * It "loads" at once: its reports answer the last order with every LOAD
 * READY and every FREE done (NOT_FOUND). */
struct fake {
	nng_socket s;
	uint64_t boot;
	uint32_t index;
	uint64_t order_id;
	uint32_t n_last;
	uint32_t last_l[64], last_e[64];
	bool last_load[64];
	uint32_t held;       /* slots held after the orders */
	bool got_order;
};

/* Remembers an order of a reply (the fake applies it at once). */
static void
fake_take(struct fake *f, const Epmoe__HelloReply *hr)
{
	const Epmoe__SlotOrder *o = hr->order;

	if (o == NULL)
		return;
	f->got_order = true;
	f->order_id = o->order_id;
	if (o->complete)
		f->held = 0;
	f->n_last = 0;
	for (size_t i = 0; i < o->n_slots && f->n_last < 64; i++) {
		f->last_l[f->n_last] = o->slots[i]->layer;
		f->last_e[f->n_last] = o->slots[i]->expert;
		f->last_load[f->n_last] = o->slots[i]->op == EPMOE__SLOT_OP__SLOT_OP_LOAD;
		f->held += f->last_load[f->n_last] ? 1 : -1;
		f->n_last++;
	}
}

static void
fake_open(struct fake *f, const char *url)
{
	ck_assert_int_eq(nng_req0_open(&f->s), 0);
	ck_assert_int_eq(nng_socket_set_ms(f->s, NNG_OPT_RECVTIMEO, 3000), 0);
	ck_assert_int_eq(nng_socket_set_ms(f->s, NNG_OPT_SENDTIMEO, 3000), 0);
	ck_assert_int_eq(nng_dial(f->s, url, NULL, 0), 0);
}

/* Sends raw bytes, returns the decoded ControlMsg reply. */
static Epmoe__ControlMsg *
raw_call(struct fake *f, const void *buf, size_t len)
{
	ProtobufCMessage *hdr;
	const float *rows;
	size_t nf;
	nng_msg *m;

	ck_assert_int_eq(nng_msg_alloc(&m, len), 0);
	if (len)
		memcpy(nng_msg_body(m), buf, len);
	ck_assert_int_eq(nng_sendmsg(f->s, m, 0), 0);
	ck_assert_int_eq(nng_recvmsg(f->s, &m, 0), 0);
	ck_assert_int_eq(wire_nng_unpack(m, WIRE_CONTROL, NULL, &hdr, &rows, &nf), 0);
	nng_msg_free(m);
	return (Epmoe__ControlMsg *)hdr;
}

static Epmoe__ControlMsg *
call(struct fake *f, Epmoe__ControlMsg *req)
{
	ProtobufCMessage *hdr;
	const float *rows;
	size_t nf;
	nng_msg *m;

	req->version = EPMOE_PROTO_VERSION;
	ck_assert_int_eq(wire_nng_pack(&m, WIRE_CONTROL, &req->base, NULL, 0), 0);
	ck_assert_int_eq(nng_sendmsg(f->s, m, 0), 0);
	ck_assert_int_eq(nng_recvmsg(f->s, &m, 0), 0);
	ck_assert_int_eq(wire_nng_unpack(m, WIRE_CONTROL, NULL, &hdr, &rows, &nf), 0);
	nng_msg_free(m);
	ck_assert_int_eq(((Epmoe__ControlMsg *)hdr)->msg_case,
	        EPMOE__CONTROL_MSG__MSG_HELLO_REPLY);
	return (Epmoe__ControlMsg *)hdr;
}

static Epmoe__ControlMsg *
hello(struct fake *f, const char *id, uint64_t boot, uint64_t model_hash)
{
	Epmoe__ControlMsg req = EPMOE__CONTROL_MSG__INIT;
	Epmoe__WorkerHello h = EPMOE__WORKER_HELLO__INIT;
	Epmoe__ControlMsg *r;

	h.version = EPMOE_PROTO_VERSION;
	h.worker_id = (char *)id;
	h.boot_id = boot;
	h.threads = 1;
	h.model_hash = model_hash;
	h.model_name = (char *)"fake";
	h.data_url = (char *)"tcp://127.0.0.1:9"; /* nobody listens: fine */
	h.node = (char *)"testnode";
	req.msg_case = EPMOE__CONTROL_MSG__MSG_HELLO;
	req.hello = &h;
	r = call(f, &req);
	if (r->hello_reply->accepted) {
		f->boot = boot;
		f->index = r->hello_reply->worker_index;
		f->got_order = false;
		fake_take(f, r->hello_reply);
	}
	return r;
}

/* A heartbeat; with ack, it answers the last order (see struct fake). */
static Epmoe__ControlMsg *
report_ack(struct fake *f, uint64_t epoch, bool ack)
{
	Epmoe__ControlMsg req = EPMOE__CONTROL_MSG__INIT, *r;
	Epmoe__LoadReport lr = EPMOE__LOAD_REPORT__INIT;
	Epmoe__SlotOrderReply orep = EPMOE__SLOT_ORDER_REPLY__INIT;
	Epmoe__SlotState st[64], *stp[64];

	lr.worker_index = f->index;
	lr.boot_id = f->boot;
	lr.epoch = epoch;
	lr.tokens_served = 42;
	if (ack && f->got_order) {
		for (uint32_t i = 0; i < f->n_last; i++) {
			Epmoe__SlotState x = EPMOE__SLOT_STATE__INIT;
			x.layer = f->last_l[i];
			x.expert = f->last_e[i];
			x.status = f->last_load[i] ? EPMOE__STATUS__STATUS_OK :
			        EPMOE__STATUS__STATUS_NOT_FOUND;
			st[i] = x;
			stp[i] = &st[i];
		}
		orep.order_id = f->order_id;
		orep.n_slots = f->n_last;
		orep.slots = stp;
		lr.order_reply = &orep;
	}
	req.msg_case = EPMOE__CONTROL_MSG__MSG_LOAD_REPORT;
	req.load_report = &lr;
	r = call(f, &req);
	if (r->hello_reply->accepted)
		fake_take(f, r->hello_reply);
	return r;
}

static Epmoe__ControlMsg *
report(struct fake *f, uint64_t epoch)
{
	return report_ack(f, epoch, true);
}

static Epmoe__ControlMsg *
leave(struct fake *f)
{
	Epmoe__ControlMsg req = EPMOE__CONTROL_MSG__INIT;
	Epmoe__Leave lv = EPMOE__LEAVE__INIT;

	lv.worker_index = f->index;
	lv.boot_id = f->boot;
	lv.reason = (char *)"test";
	req.msg_case = EPMOE__CONTROL_MSG__MSG_LEAVE;
	req.leave = &lv;
	return call(f, &req);
}

static void
free_msg(Epmoe__ControlMsg *m)
{
	protobuf_c_message_free_unpacked(&m->base, NULL);
}

/* Events recorded by the callback (control thread). */
struct evlog {
	pthread_mutex_t mu;
	int n;
	uint32_t worker[64];
	bool up[64];
	char reason[64][96];
};

static void
on_event(void *arg, const struct cluster_event *ev)
{
	struct evlog *l = arg;

	pthread_mutex_lock(&l->mu);
	if (l->n < 64) {
		l->worker[l->n] = ev->worker;
		l->up[l->n] = ev->up;
		snprintf(l->reason[l->n], sizeof(l->reason[0]), "%s", ev->reason);
		l->n++;
	}
	pthread_mutex_unlock(&l->mu);
}

/* Waits (bounded) until the log holds n events. */
static void
wait_events(struct evlog *l, int n)
{
	for (int i = 0; i < 300; i++) {
		int have;
		pthread_mutex_lock(&l->mu);
		have = l->n;
		pthread_mutex_unlock(&l->mu);
		if (have >= n)
			return;
		nng_msleep(10);
	}
	ck_abort_msg("expected %d events", n);
}

static struct cluster *
start_cluster(struct model *m, uint32_t W, uint32_t hb_timeout_ms, struct evlog *l)
{
	struct cluster_cfg cfg = { .control_url = "tcp://127.0.0.1:0", .model = m,
		.n_workers = W, .heartbeat_ms = 200,
		.heartbeat_timeout_ms = hb_timeout_ms };
	struct cluster *c;
	char err[256];

	ck_assert_msg(cluster_new(&c, &cfg, err, sizeof(err)) == 0, "%s", err);
	if (l)
		cluster_set_event_cb(c, on_event, l);
	ck_assert_int_eq(cluster_start(c), 0);
	ck_assert_ptr_null(strstr(cluster_control_url(c), ":0"));
	return c;
}

START_TEST(hello_with_wrong_model_is_refused_with_a_reason)
{
	struct model *m = load_model();
	struct cluster *c = start_cluster(m, 2, 60000, NULL);
	struct fake f;
	Epmoe__ControlMsg *r;

	fake_open(&f, cluster_control_url(c));
	r = hello(&f, "w-bad", 7, m->identity ^ 1);
	ck_assert(!r->hello_reply->accepted);
	ck_assert_int_eq(r->hello_reply->status, EPMOE__STATUS__STATUS_INVALID);
	ck_assert_ptr_nonnull(strstr(r->hello_reply->reason, "model identity mismatch"));
	ck_assert_ptr_null(r->hello_reply->order);
	free_msg(r);
	ck_assert_uint_eq(cluster_n_live(c), 0);
	/* the same socket may then register properly */
	r = hello(&f, "w-good", 8, m->identity);
	ck_assert(r->hello_reply->accepted);
	free_msg(r);
	/* joining: routable only once a report confirms the epoch */
	ck_assert_uint_eq(cluster_n_live(c), 0);
	free_msg(report(&f, 1));
	ck_assert_uint_eq(cluster_n_live(c), 1);
	nng_close(f.s);
	cluster_free(c);
	model_free(m);
}
END_TEST

START_TEST(registration_assigns_indices_and_slot_orders)
{
	struct model *m = load_model();
	struct evlog l = { .mu = PTHREAD_MUTEX_INITIALIZER };
	struct cluster *c = start_cluster(m, 2, 60000, &l);
	struct fake a, b, x;
	Epmoe__ControlMsg *r;
	const Epmoe__HelloReply *hr;
	cJSON *j;
	char *txt;

	fake_open(&a, cluster_control_url(c));
	fake_open(&b, cluster_control_url(c));
	fake_open(&x, cluster_control_url(c));
	r = hello(&a, "alpha", 100, m->identity);
	hr = r->hello_reply;
	ck_assert(hr->accepted);
	ck_assert_uint_eq(hr->worker_index, 0);
	ck_assert_uint_eq(hr->placement_epoch, 1);
	ck_assert_uint_eq(hr->router_boot_id, cluster_boot_id(c));
	ck_assert_uint_eq(hr->heartbeat_ms, 200);
	ck_assert_ptr_nonnull(hr->order);
	/* 2 layers x experts 0..3 */
	ck_assert_uint_eq(hr->order->n_slots, 8);
	for (size_t i = 0; i < hr->order->n_slots; i++) {
		ck_assert_uint_lt(hr->order->slots[i]->expert, 4);
		ck_assert_uint_eq(hr->order->slots[i]->slot, hr->order->slots[i]->expert);
	}
	free_msg(r);
	free_msg(report(&a, 1));
	ck_assert(!cluster_ready(c));
	r = hello(&b, "beta", 200, m->identity);
	ck_assert(r->hello_reply->accepted);
	ck_assert_uint_eq(r->hello_reply->worker_index, 1);
	ck_assert_uint_ge(r->hello_reply->order->slots[0]->expert, 4);
	free_msg(r);
	ck_assert(!cluster_ready(c));
	/* a report that does not show the slots loaded gets the loads again
	 * (quick reports asked), still joining */
	r = report_ack(&b, 0, false);
	ck_assert(r->hello_reply->accepted);
	ck_assert_ptr_nonnull(r->hello_reply->order);
	ck_assert(!r->hello_reply->order->complete);
	ck_assert_uint_eq(r->hello_reply->order->n_slots, 8);
	ck_assert_uint_lt(r->hello_reply->heartbeat_ms, 200);
	free_msg(r);
	ck_assert(!cluster_ready(c));
	free_msg(report(&b, 1));
	ck_assert(cluster_ready(c));
	ck_assert_uint_eq(cluster_n_live(c), 2);

	/* a third live worker finds no place */
	r = hello(&x, "gamma", 300, m->identity);
	ck_assert(!r->hello_reply->accepted);
	ck_assert_int_eq(r->hello_reply->status, EPMOE__STATUS__STATUS_BUSY);
	ck_assert_ptr_nonnull(strstr(r->hello_reply->reason, "taken"));
	free_msg(r);

	/* heartbeats are acked (nothing to change: no order, the normal
	 * period); an unknown boot id is told to register */
	r = report(&a, 1);
	ck_assert(r->hello_reply->accepted);
	ck_assert_ptr_null(r->hello_reply->order);
	ck_assert_uint_eq(r->hello_reply->heartbeat_ms, 200);
	free_msg(r);
	x.index = 0;
	x.boot = 999;
	r = report(&x, 1);
	ck_assert(!r->hello_reply->accepted);
	ck_assert_int_eq(r->hello_reply->status, EPMOE__STATUS__STATUS_NOT_FOUND);
	free_msg(r);

	/* a second process with the id of live alpha is refused */
	r = hello(&x, "alpha", 101, m->identity);
	ck_assert(!r->hello_reply->accepted);
	ck_assert_int_eq(r->hello_reply->status, EPMOE__STATUS__STATUS_BUSY);
	ck_assert_ptr_nonnull(strstr(r->hello_reply->reason, "in use by a live worker"));
	free_msg(r);
	ck_assert(cluster_ready(c));
	/* once alpha is gone, its restart (new boot id) takes its index */
	free_msg(leave(&a));
	ck_assert(!cluster_ready(c));
	r = hello(&a, "alpha", 101, m->identity);
	ck_assert(r->hello_reply->accepted);
	ck_assert_uint_eq(r->hello_reply->worker_index, 0);
	free_msg(r);
	ck_assert(!cluster_ready(c));
	free_msg(report(&a, 1));
	ck_assert(cluster_ready(c));
	/* beta leaves: not ready; its heartbeat is refused; gamma takes the place */
	r = leave(&b);
	ck_assert(r->hello_reply->accepted);
	free_msg(r);
	ck_assert(!cluster_ready(c));
	r = report(&b, 1);
	ck_assert(!r->hello_reply->accepted);
	ck_assert_ptr_nonnull(strstr(r->hello_reply->reason, "left"));
	free_msg(r);
	r = hello(&x, "gamma", 300, m->identity);
	ck_assert(r->hello_reply->accepted);
	ck_assert_uint_eq(r->hello_reply->worker_index, 1);
	free_msg(r);
	free_msg(report(&x, 1));
	ck_assert(cluster_ready(c));

	wait_events(&l, 6);
	pthread_mutex_lock(&l.mu);
	ck_assert(l.up[0] && l.worker[0] == 0 && strcmp(l.reason[0], "registered") == 0);
	ck_assert(l.up[1] && l.worker[1] == 1);
	ck_assert(!l.up[2] && l.worker[2] == 0 && strstr(l.reason[2], "left: test"));
	ck_assert(l.up[3] && l.worker[3] == 0 && strcmp(l.reason[3], "restarted") == 0);
	ck_assert(!l.up[4] && l.worker[4] == 1 && strstr(l.reason[4], "left: test"));
	ck_assert(l.up[5] && l.worker[5] == 1 && strstr(l.reason[5], "took the place of beta"));
	pthread_mutex_unlock(&l.mu);

	ck_assert_int_eq(cluster_stats_json(c, &j), 0);
	txt = cJSON_PrintUnformatted(j);
	ck_assert_ptr_nonnull(strstr(txt, "\"ready\":true"));
	ck_assert_ptr_nonnull(strstr(txt, "\"id\":\"gamma\""));
	ck_assert_ptr_nonnull(strstr(txt, "\"latency_p99_us\""));
	ck_assert_ptr_nonnull(strstr(txt, "\"refused_duplicate_ids\":1"));
	ck_assert_ptr_nonnull(strstr(txt, "\"left\":2"));
	cJSON_free(txt);
	cJSON_Delete(j);
	ck_assert_int_eq(cluster_placement_json(c, &j), 0);
	txt = cJSON_PrintUnformatted(j);
	ck_assert_ptr_nonnull(strstr(txt, "\"layers\":[[0,0,0,0,1,1,1,1],[0,0,0,0,1,1,1,1]]"));
	ck_assert_ptr_nonnull(strstr(txt, "\"id\":\"alpha\""));
	cJSON_free(txt);
	cJSON_Delete(j);

	nng_close(a.s);
	nng_close(b.s);
	nng_close(x.s);
	cluster_free(c);
	model_free(m);
}
END_TEST

START_TEST(silent_worker_is_marked_down_after_the_heartbeat_timeout)
{
	struct model *m = load_model();
	struct evlog l = { .mu = PTHREAD_MUTEX_INITIALIZER };
	struct cluster *c = start_cluster(m, 1, 300, &l);
	struct fake a;
	Epmoe__ControlMsg *r;
	int i;

	fake_open(&a, cluster_control_url(c));
	free_msg(hello(&a, "solo", 5, m->identity));
	free_msg(report(&a, 1));
	ck_assert(cluster_ready(c));
	/* heartbeats keep it alive past the timeout */
	for (i = 0; i < 4; i++) {
		nng_msleep(150);
		r = report(&a, 1);
		ck_assert(r->hello_reply->accepted);
		free_msg(r);
	}
	ck_assert(cluster_ready(c));
	/* silence: down within timeout + poll period (bounded wait) */
	for (i = 0; i < 200 && cluster_ready(c); i++)
		nng_msleep(10);
	ck_assert(!cluster_ready(c));
	wait_events(&l, 2);
	pthread_mutex_lock(&l.mu);
	ck_assert(!l.up[1]);
	ck_assert_ptr_nonnull(strstr(l.reason[1], "no heartbeat"));
	pthread_mutex_unlock(&l.mu);
	r = report(&a, 1);
	ck_assert(!r->hello_reply->accepted);
	ck_assert_int_eq(r->hello_reply->status, EPMOE__STATUS__STATUS_NOT_FOUND);
	free_msg(r);
	/* registering again brings it back */
	free_msg(hello(&a, "solo", 5, m->identity));
	free_msg(report(&a, 1));
	ck_assert(cluster_ready(c));
	nng_close(a.s);
	cluster_free(c);
	model_free(m);
}
END_TEST

START_TEST(malformed_control_messages_get_error_replies)
{
	struct model *m = load_model();
	struct cluster *c = start_cluster(m, 1, 60000, NULL);
	struct fake f;
	Epmoe__ControlMsg *r, req = EPMOE__CONTROL_MSG__INIT;
	Epmoe__LoadQuery q = EPMOE__LOAD_QUERY__INIT;
	uint8_t junk[300], frame[512];
	size_t len;
	cJSON *j;
	char *txt;
	int fd;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	const char *port;

	fake_open(&f, cluster_control_url(c));
	/* random bytes, empty message, a truncated valid frame */
	srand(7);
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)rand();
	r = raw_call(&f, junk, sizeof(junk));
	ck_assert(!r->hello_reply->accepted);
	ck_assert_int_eq(r->hello_reply->status, EPMOE__STATUS__STATUS_PROTOCOL);
	ck_assert_ptr_nonnull(strstr(r->hello_reply->reason, "malformed"));
	free_msg(r);
	r = raw_call(&f, junk, 0);
	ck_assert_int_eq(r->hello_reply->status, EPMOE__STATUS__STATUS_PROTOCOL);
	free_msg(r);
	req.version = EPMOE_PROTO_VERSION;
	req.msg_case = EPMOE__CONTROL_MSG__MSG_LOAD_QUERY;
	req.load_query = &q;
	q.seq = 123456789;
	ck_assert_int_eq(wire_pack(frame, sizeof(frame), WIRE_CONTROL, &req.base,
	        NULL, 0, &len), 0);
	r = raw_call(&f, frame, len - 1);
	ck_assert_int_eq(r->hello_reply->status, EPMOE__STATUS__STATUS_PROTOCOL);
	free_msg(r);
	/* a well-formed message the router does not take */
	r = call(&f, &req);
	ck_assert_int_eq(r->hello_reply->status, EPMOE__STATUS__STATUS_UNSUPPORTED);
	free_msg(r);
	/* raw TCP garbage (no SP handshake): the connection is dropped */
	port = strrchr(cluster_control_url(c), ':') + 1;
	sa.sin_port = htons((uint16_t)atoi(port));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(write(fd, junk, sizeof(junk)), (int)sizeof(junk));
	close(fd);
	/* still serving */
	r = hello(&f, "after", 1, m->identity);
	ck_assert(r->hello_reply->accepted);
	free_msg(r);
	ck_assert_int_eq(cluster_stats_json(c, &j), 0);
	txt = cJSON_PrintUnformatted(j);
	ck_assert_ptr_nonnull(strstr(txt, "\"control_bad_messages\":4"));
	cJSON_free(txt);
	cJSON_Delete(j);
	nng_close(f.s);
	cluster_free(c);
	model_free(m);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("cluster");
	TCase *tp = tcase_create("placement");
	TCase *tc = tcase_create("control");

	tcase_add_test(tp, contiguous_placement_splits_experts_in_blocks);
	tcase_add_test(tp, explicit_counts_give_uneven_blocks_and_reject_junk);
	tcase_add_test(tp, placement_file_parses_layers_and_replicas);
	tcase_add_test(tp, placement_file_errors_name_the_problem);
	tcase_add_test(tp, placement_file_loads_from_disk);
	tcase_add_test(tc, cluster_config_errors_are_explained);
	tcase_add_test(tc, hello_with_wrong_model_is_refused_with_a_reason);
	tcase_add_test(tc, registration_assigns_indices_and_slot_orders);
	tcase_add_test(tc, silent_worker_is_marked_down_after_the_heartbeat_timeout);
	tcase_add_test(tc, malformed_control_messages_get_error_replies);
	suite_add_tcase(s, tp);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(suite());
}
