/* Wire frames: every message family round-trips with its rows, and every
 * kind of malformed frame (truncated, trailing bytes, wrong magic, version
 * or kind, bad lengths, garbage protobuf, random byte flips) is rejected
 * with an error, never a crash.  Also the shape checks of batches and
 * results, and frames through real nng messages and an ipc socket. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include "err.h"
#include "testutil.h"
#include "wire.h"
#include "wire_nng.h"

/* 4-byte aligned scratch for frames. */
static uint32_t frame_mem[1 << 16];
#define FRAME ((uint8_t *)frame_mem)
#define FRAME_CAP sizeof(frame_mem)

/* A batch of 2 groups: expert 3 in slot 7 (2 tokens), expert 5 in slot 9
 * (1 token); 3 input rows of dim 4, combined into 2 output rows. */
struct test_batch {
	Epmoe__ExpertBatch b;
	Epmoe__ExpertGroup g[2];
	Epmoe__ExpertGroup *gp[2];
	float weights[3];
	uint32_t combine[3];
	float rows[12];
};

static void
test_batch_init(struct test_batch *t)
{
	Epmoe__ExpertBatch b = EPMOE__EXPERT_BATCH__INIT;
	Epmoe__ExpertGroup g = EPMOE__EXPERT_GROUP__INIT;

	t->b = b;
	t->g[0] = g;
	t->g[1] = g;
	t->g[0].slot = 7;
	t->g[0].expert = 3;
	t->g[0].n_tokens = 2;
	t->g[0].weights_version = 11;
	t->g[1].slot = 9;
	t->g[1].expert = 5;
	t->g[1].n_tokens = 1;
	t->gp[0] = &t->g[0];
	t->gp[1] = &t->g[1];
	t->weights[0] = 0.5f;
	t->weights[1] = 0.25f;
	t->weights[2] = 0.125f;
	t->combine[0] = 0;
	t->combine[1] = 1;
	t->combine[2] = 0;
	for (int i = 0; i < 12; i++)
		t->rows[i] = (float)i * 1.5f - 3.0f;
	t->b.version = EPMOE_PROTO_VERSION;
	t->b.batch_id = 0x1122334455667788ull;
	t->b.attempt = 2;
	t->b.epoch = 42;
	t->b.layer = 6;
	t->b.n_groups = 2;
	t->b.groups = t->gp;
	t->b.n_weights = 3;
	t->b.weights = t->weights;
	t->b.n_combine = 3;
	t->b.combine = t->combine;
	t->b.n_rows_in = 3;
	t->b.n_rows_out = 2;
	t->b.dim = 4;
	t->b.step = 99;
}

/* Packs the test batch into FRAME; returns the frame length. */
static size_t
pack_test_batch(void)
{
	struct test_batch t;
	size_t len;

	test_batch_init(&t);
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_BATCH, &t.b.base,
	        t.rows, 12, &len), 0);
	return len;
}

/* Builds a frame by hand (for frames wire_pack refuses to make). */
static size_t
make_frame(uint8_t *buf, uint8_t version, uint8_t kind, const void *hdr,
        uint32_t hl, const void *payload, uint32_t pl)
{
	size_t at;

	memcpy(buf, WIRE_MAGIC, 4);
	buf[4] = version;
	buf[5] = kind;
	buf[6] = buf[7] = 0;
	for (int i = 0; i < 4; i++) {
		buf[8 + i] = (uint8_t)(hl >> (8 * i));
		buf[12 + i] = (uint8_t)(pl >> (8 * i));
	}
	memcpy(buf + 16, hdr, hl);
	at = 16 + hl;
	while (at % 4 != 0)
		buf[at++] = 0;
	if (pl > 0)
		memcpy(buf + at, payload, pl);
	return at + pl;
}

static int
unpack_batch(const void *buf, size_t len, Epmoe__ExpertBatch **out,
        const float **rows, size_t *n)
{
	ProtobufCMessage *m = NULL;
	int rv;

	rv = wire_unpack(buf, len, WIRE_BATCH, NULL, &m, rows, n);
	if (rv == 0)
		*out = (Epmoe__ExpertBatch *)m;
	return rv;
}

START_TEST(batch_round_trips_with_rows)
{
	struct test_batch t;
	Epmoe__ExpertBatch *b;
	const float *rows;
	size_t len, n;

	test_batch_init(&t);
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_BATCH, &t.b.base,
	        t.rows, 12, &len), 0);
	ck_assert_uint_eq(len, wire_msg_size(&t.b.base, 12));
	ck_assert_uint_eq(len % 4, 0);
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), 0);
	ck_assert_uint_eq(n, 12);
	ck_assert_uint_eq((uintptr_t)rows % 4, 0);
	ck_assert_mem_eq(rows, t.rows, sizeof(t.rows));
	ck_assert_uint_eq(b->version, EPMOE_PROTO_VERSION);
	ck_assert(b->batch_id == 0x1122334455667788ull);
	ck_assert_uint_eq(b->attempt, 2);
	ck_assert(b->epoch == 42);
	ck_assert_uint_eq(b->layer, 6);
	ck_assert_uint_eq(b->n_groups, 2);
	ck_assert_uint_eq(b->groups[0]->slot, 7);
	ck_assert_uint_eq(b->groups[0]->expert, 3);
	ck_assert_uint_eq(b->groups[0]->n_tokens, 2);
	ck_assert_uint_eq(b->groups[0]->weights_version, 11);
	ck_assert_uint_eq(b->groups[1]->slot, 9);
	ck_assert_uint_eq(b->groups[1]->expert, 5);
	ck_assert_uint_eq(b->n_weights, 3);
	ck_assert_float_eq(b->weights[1], 0.25f);
	ck_assert_uint_eq(b->n_combine, 3);
	ck_assert_uint_eq(b->combine[1], 1);
	ck_assert_uint_eq(b->n_rows_in, 3);
	ck_assert_uint_eq(b->n_rows_out, 2);
	ck_assert_uint_eq(b->dim, 4);
	ck_assert_int_eq(wire_check_batch(b, n, NULL), 0);
	protobuf_c_message_free_unpacked(&b->base, NULL);
}
END_TEST

START_TEST(pack_begin_lets_rows_be_written_in_place)
{
	struct test_batch t;
	Epmoe__ExpertBatch *b;
	const float *rows;
	float *dst;
	size_t len, n;

	test_batch_init(&t);
	ck_assert_int_eq(wire_pack_begin(FRAME, FRAME_CAP, WIRE_BATCH,
	        &t.b.base, 12, &dst, &len), 0);
	ck_assert_ptr_eq(dst, (float *)(FRAME + len - 48));
	for (int i = 0; i < 12; i++)
		dst[i] = t.rows[i];
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), 0);
	ck_assert_ptr_eq(rows, dst);
	ck_assert_mem_eq(rows, t.rows, sizeof(t.rows));
	protobuf_c_message_free_unpacked(&b->base, NULL);
}
END_TEST

START_TEST(result_round_trips_with_rows)
{
	Epmoe__ExpertResult r = EPMOE__EXPERT_RESULT__INIT, *u;
	ProtobufCMessage *m;
	struct wire_expect exp = { 77, 3, 2, 5 };
	float out[10];
	const float *rows;
	size_t len, n;

	for (int i = 0; i < 10; i++)
		out[i] = -(float)i / 7.0f;
	out[3] = NAN;
	r.version = EPMOE_PROTO_VERSION;
	r.batch_id = 77;
	r.attempt = 3;
	r.n_rows = 2;
	r.dim = 5;
	r.compute_us = 1234;
	r.epoch = 42;
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_RESULT, &r.base, out,
	        10, &len), 0);
	ck_assert_int_eq(wire_unpack(FRAME, len, WIRE_RESULT, NULL, &m, &rows,
	        &n), 0);
	u = (Epmoe__ExpertResult *)m;
	ck_assert_uint_eq(n, 10);
	ck_assert_mem_eq(rows, out, sizeof(out));
	ck_assert(u->batch_id == 77);
	ck_assert_uint_eq(u->attempt, 3);
	ck_assert_int_eq(u->status, EPMOE__STATUS__STATUS_OK);
	ck_assert(u->compute_us == 1234);
	ck_assert_int_eq(wire_check_result(u, n, &exp), 0);
	protobuf_c_message_free_unpacked(m, NULL);
}
END_TEST

START_TEST(control_messages_round_trip)
{
	Epmoe__ControlMsg c = EPMOE__CONTROL_MSG__INIT, *u;
	Epmoe__WorkerHello h = EPMOE__WORKER_HELLO__INIT;
	Epmoe__SlotOrder so = EPMOE__SLOT_ORDER__INIT;
	Epmoe__SlotAssign sa[2] = { EPMOE__SLOT_ASSIGN__INIT,
		EPMOE__SLOT_ASSIGN__INIT };
	Epmoe__SlotAssign *sap[2] = { &sa[0], &sa[1] };
	ProtobufCMessage *m;
	const float *rows;
	size_t len, n;

	c.version = EPMOE_PROTO_VERSION;
	c.seq = 5;
	c.msg_case = EPMOE__CONTROL_MSG__MSG_HELLO;
	c.hello = &h;
	h.version = EPMOE_PROTO_VERSION;
	h.worker_id = "worker-a";
	h.boot_id = 0xdeadbeefcafeull;
	h.threads = 2;
	h.ram_bytes = 8ull << 30;
	h.model_hash = 0x0123456789abcdefull;
	h.model_name = "tiny-mixtral";
	h.has_model_file = 1;
	h.data_url = "tcp://127.0.0.1:7001";
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_CONTROL, &c.base,
	        NULL, 0, &len), 0);
	ck_assert_int_eq(wire_unpack(FRAME, len, WIRE_CONTROL, NULL, &m, &rows,
	        &n), 0);
	u = (Epmoe__ControlMsg *)m;
	ck_assert_ptr_null(rows);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(u->msg_case, EPMOE__CONTROL_MSG__MSG_HELLO);
	ck_assert_str_eq(u->hello->worker_id, "worker-a");
	ck_assert(u->hello->boot_id == 0xdeadbeefcafeull);
	ck_assert(u->hello->ram_bytes == 8ull << 30);
	ck_assert(u->hello->model_hash == 0x0123456789abcdefull);
	ck_assert_str_eq(u->hello->data_url, "tcp://127.0.0.1:7001");
	ck_assert_int_eq(u->hello->has_model_file, 1);
	protobuf_c_message_free_unpacked(m, NULL);

	sa[0].op = EPMOE__SLOT_OP__SLOT_OP_LOAD;
	sa[0].layer = 1;
	sa[0].expert = 2;
	sa[0].slot = 3;
	sa[1].op = EPMOE__SLOT_OP__SLOT_OP_FREE;
	sa[1].layer = 4;
	sa[1].expert = 5;
	sa[1].slot = 6;
	so.order_id = 8;
	so.epoch = 9;
	so.n_slots = 2;
	so.slots = sap;
	c.msg_case = EPMOE__CONTROL_MSG__MSG_SLOT_ORDER;
	c.slot_order = &so;
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_CONTROL, &c.base,
	        NULL, 0, &len), 0);
	ck_assert_int_eq(wire_unpack(FRAME, len, WIRE_CONTROL, NULL, &m, &rows,
	        &n), 0);
	u = (Epmoe__ControlMsg *)m;
	ck_assert_int_eq(u->msg_case, EPMOE__CONTROL_MSG__MSG_SLOT_ORDER);
	ck_assert(u->slot_order->epoch == 9);
	ck_assert_uint_eq(u->slot_order->n_slots, 2);
	ck_assert_int_eq(u->slot_order->slots[1]->op,
	        EPMOE__SLOT_OP__SLOT_OP_FREE);
	ck_assert_uint_eq(u->slot_order->slots[1]->slot, 6);
	ck_assert_uint_eq(u->slot_order->slots[0]->expert, 2);
	protobuf_c_message_free_unpacked(m, NULL);
}
END_TEST

START_TEST(client_messages_round_trip)
{
	Epmoe__ClientMsg c = EPMOE__CLIENT_MSG__INIT, *u;
	Epmoe__CompletionRequest req = EPMOE__COMPLETION_REQUEST__INIT;
	Epmoe__ClientReply r = EPMOE__CLIENT_REPLY__INIT, *ru;
	Epmoe__CompletionResponse resp = EPMOE__COMPLETION_RESPONSE__INIT;
	Epmoe__TokenLogprob tl = EPMOE__TOKEN_LOGPROB__INIT, *tlp = &tl;
	char *stops[2] = { "\n\n", "END" };
	uint32_t toks[3] = { 10, 20, 30 };
	ProtobufCMessage *m;
	const float *rows;
	size_t len, n;

	req.request_id = "r1";
	req.prompt = "Hello";
	req.max_tokens = 16;
	req.temperature_opt_case =
	        EPMOE__COMPLETION_REQUEST__TEMPERATURE_OPT_TEMPERATURE;
	req.temperature = 0.0f; /* greedy: must survive as "present, 0" */
	req.top_k = 40;
	req.seed_opt_case = EPMOE__COMPLETION_REQUEST__SEED_OPT_SEED;
	req.seed = 0;
	req.n_stop = 2;
	req.stop = stops;
	req.routing_policy = "topk";
	req.stream = 1;
	c.version = EPMOE_PROTO_VERSION;
	c.msg_case = EPMOE__CLIENT_MSG__MSG_COMPLETE;
	c.complete = &req;
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_CLIENT, &c.base,
	        NULL, 0, &len), 0);
	ck_assert_int_eq(wire_unpack(FRAME, len, WIRE_CLIENT, NULL, &m, &rows,
	        &n), 0);
	u = (Epmoe__ClientMsg *)m;
	ck_assert_int_eq(u->msg_case, EPMOE__CLIENT_MSG__MSG_COMPLETE);
	ck_assert_str_eq(u->complete->prompt, "Hello");
	ck_assert_int_eq(u->complete->temperature_opt_case,
	        EPMOE__COMPLETION_REQUEST__TEMPERATURE_OPT_TEMPERATURE);
	ck_assert_float_eq(u->complete->temperature, 0.0f);
	ck_assert_int_eq(u->complete->top_p_opt_case,
	        EPMOE__COMPLETION_REQUEST__TOP_P_OPT__NOT_SET);
	ck_assert_int_eq(u->complete->seed_opt_case,
	        EPMOE__COMPLETION_REQUEST__SEED_OPT_SEED);
	ck_assert_int_eq(u->complete->logprobs_opt_case,
	        EPMOE__COMPLETION_REQUEST__LOGPROBS_OPT__NOT_SET);
	ck_assert_uint_eq(u->complete->n_stop, 2);
	ck_assert_str_eq(u->complete->stop[1], "END");
	ck_assert_int_eq(u->complete->stream, 1);
	protobuf_c_message_free_unpacked(m, NULL);

	tl.token = 20;
	tl.logprob = -0.75f;
	resp.request_id = "r1";
	resp.n_tokens = 3;
	resp.tokens = toks;
	resp.text = " world";
	resp.token_offset = 4;
	resp.finish_reason = EPMOE__FINISH_REASON__FINISH_STOP;
	resp.n_logprobs = 1;
	resp.logprobs = &tlp;
	resp.done = 1;
	r.version = EPMOE_PROTO_VERSION;
	r.msg_case = EPMOE__CLIENT_REPLY__MSG_COMPLETION;
	r.completion = &resp;
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_CLIENT_REPLY, &r.base,
	        NULL, 0, &len), 0);
	ck_assert_int_eq(wire_unpack(FRAME, len, WIRE_CLIENT_REPLY, NULL, &m,
	        &rows, &n), 0);
	ru = (Epmoe__ClientReply *)m;
	ck_assert_int_eq(ru->msg_case, EPMOE__CLIENT_REPLY__MSG_COMPLETION);
	ck_assert_uint_eq(ru->completion->n_tokens, 3);
	ck_assert_uint_eq(ru->completion->tokens[2], 30);
	ck_assert_str_eq(ru->completion->text, " world");
	ck_assert_uint_eq(ru->completion->token_offset, 4);
	ck_assert_int_eq(ru->completion->finish_reason,
	        EPMOE__FINISH_REASON__FINISH_STOP);
	ck_assert_float_eq(ru->completion->logprobs[0]->logprob, -0.75f);
	ck_assert_int_eq(ru->completion->done, 1);
	protobuf_c_message_free_unpacked(m, NULL);
}
END_TEST

START_TEST(every_truncation_is_rejected)
{
	size_t len = pack_test_batch();
	Epmoe__ExpertBatch *b = NULL;
	const float *rows;
	size_t n;

	for (size_t cut = 0; cut < len; cut++) {
		/* a fresh exact-size copy so ASan sees any read past cut */
		uint8_t *p = malloc(cut > 0 ? cut : 1);

		ck_assert_ptr_nonnull(p);
		memcpy(p, FRAME, cut);
		ck_assert_int_eq(unpack_batch(p, cut, &b, &rows, &n),
		        EPMOE_EPROTO);
		free(p);
	}
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), 0);
	protobuf_c_message_free_unpacked(&b->base, NULL);
}
END_TEST

START_TEST(trailing_bytes_are_rejected)
{
	size_t len = pack_test_batch();
	Epmoe__ExpertBatch *b = NULL;
	const float *rows;
	size_t n;

	for (size_t extra = 1; extra <= 9; extra++) {
		memset(FRAME + len, 0, extra);
		ck_assert_int_eq(unpack_batch(FRAME, len + extra, &b, &rows,
		        &n), EPMOE_EPROTO);
		ck_assert_ptr_nonnull(strstr(wire_errmsg(), "trailing"));
	}
}
END_TEST

START_TEST(wrong_magic_version_or_kind_is_rejected)
{
	size_t len = pack_test_batch();
	Epmoe__ExpertBatch *b = NULL;
	ProtobufCMessage *m = NULL;
	const float *rows;
	size_t n;

	FRAME[0] = 'X';
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	ck_assert_ptr_nonnull(strstr(wire_errmsg(), "magic"));
	FRAME[0] = 'E';
	FRAME[4] = EPMOE_PROTO_VERSION + 1;
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	{
		char want[32];
		snprintf(want, sizeof(want), "version %d", EPMOE_PROTO_VERSION + 1);
		ck_assert_ptr_nonnull(strstr(wire_errmsg(), want));
	}
	FRAME[4] = EPMOE_PROTO_VERSION;
	ck_assert_int_eq(wire_unpack(FRAME, len, WIRE_RESULT, NULL, &m, &rows,
	        &n), EPMOE_EPROTO);
	ck_assert_ptr_nonnull(strstr(wire_errmsg(), "kind"));
	FRAME[5] = 200;
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	FRAME[5] = WIRE_BATCH;
	FRAME[7] = 1;
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	ck_assert_ptr_nonnull(strstr(wire_errmsg(), "reserved"));
	FRAME[7] = 0;
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), 0);
	protobuf_c_message_free_unpacked(&b->base, NULL);
}
END_TEST

START_TEST(peek_reports_what_a_peer_speaks)
{
	size_t len = pack_test_batch();
	struct wire_frame f;

	FRAME[4] = 7;
	ck_assert_int_eq(wire_peek(FRAME, len, &f), 0);
	ck_assert_uint_eq(f.version, 7);
	ck_assert_uint_eq(f.kind, WIRE_BATCH);
	ck_assert_uint_eq(f.payload_len, 48);
	ck_assert_int_eq(wire_peek(FRAME, len - 1, &f), EPMOE_EPROTO);
}
END_TEST

START_TEST(lengths_past_the_end_are_rejected)
{
	size_t len = pack_test_batch();
	Epmoe__ExpertBatch *b = NULL;
	const float *rows;
	size_t n;
	uint8_t save[8];

	memcpy(save, FRAME + 8, 8);
	/* header_len pointing past the end, huge, and off by 4 */
	FRAME[8] = 0xff;
	FRAME[9] = 0xff;
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	memset(FRAME + 8, 0xff, 4);
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	ck_assert_ptr_nonnull(strstr(wire_errmsg(), "limit"));
	memcpy(FRAME + 8, save, 8);
	FRAME[8] += 4;
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	/* payload_len past the end and maximal */
	memcpy(FRAME + 8, save, 8);
	FRAME[12] += 4;
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	ck_assert_ptr_nonnull(strstr(wire_errmsg(), "truncated"));
	memset(FRAME + 12, 0xff, 4);
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	memcpy(FRAME + 8, save, 8);
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), 0);
	protobuf_c_message_free_unpacked(&b->base, NULL);
}
END_TEST

START_TEST(payload_not_multiple_of_4_is_rejected)
{
	struct test_batch t;
	uint8_t hdr[512];
	size_t hl, len;
	Epmoe__ExpertBatch *b = NULL;
	const float *rows;
	size_t n;

	test_batch_init(&t);
	hl = protobuf_c_message_pack(&t.b.base, hdr);
	for (uint32_t pl = 45; pl < 48; pl++) {
		len = make_frame(FRAME, EPMOE_PROTO_VERSION, WIRE_BATCH, hdr,
		        (uint32_t)hl, t.rows, pl);
		ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n),
		        EPMOE_EPROTO);
		ck_assert_ptr_nonnull(strstr(wire_errmsg(), "multiple of 4"));
	}
	len = make_frame(FRAME, EPMOE_PROTO_VERSION, WIRE_BATCH, hdr,
	        (uint32_t)hl, t.rows, 48);
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), 0);
	protobuf_c_message_free_unpacked(&b->base, NULL);
}
END_TEST

START_TEST(nonzero_padding_is_rejected)
{
	size_t len = pack_test_batch();
	struct wire_frame f;
	Epmoe__ExpertBatch *b = NULL;
	const float *rows;
	size_t n;

	ck_assert_int_eq(wire_peek(FRAME, len, &f), 0);
	if (f.header_len % 4 == 0) {
		/* no padding in this layout: make some by hand */
		uint8_t hdr[512];

		memcpy(hdr, FRAME + 16, f.header_len);
		hdr[f.header_len] = 0;
		len = make_frame(FRAME, EPMOE_PROTO_VERSION, WIRE_BATCH, hdr,
		        f.header_len + 1, FRAME + 16 + f.header_len, 48);
		ck_assert_int_eq(wire_peek(FRAME, len, &f), 0);
	}
	FRAME[16 + f.header_len] = 0x5a;
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	ck_assert_ptr_nonnull(strstr(wire_errmsg(), "padding"));
}
END_TEST

START_TEST(garbage_protobuf_is_rejected)
{
	uint8_t junk[40];
	size_t len;
	Epmoe__ExpertBatch *b = NULL;
	const float *rows;
	size_t n;

	/* an unterminated varint, then a length-delimited field longer than
	 * the header */
	memset(junk, 0xff, sizeof(junk));
	len = make_frame(FRAME, EPMOE_PROTO_VERSION, WIRE_BATCH, junk, 40,
	        NULL, 0);
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	ck_assert_ptr_nonnull(strstr(wire_errmsg(), "decode"));
	junk[0] = (6 << 3) | 2; /* field 6 (groups), length 100 */
	junk[1] = 100;
	len = make_frame(FRAME, EPMOE_PROTO_VERSION, WIRE_BATCH, junk, 10,
	        NULL, 0);
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
}
END_TEST

START_TEST(message_version_must_match)
{
	struct test_batch t;
	uint8_t hdr[512];
	size_t hl, len;
	Epmoe__ExpertBatch *b = NULL;
	const float *rows;
	size_t n;

	test_batch_init(&t);
	t.b.version = 0;
	/* wire_pack refuses a header without the version */
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_BATCH, &t.b.base,
	        t.rows, 12, &len), EPMOE_EINVAL);
	/* and unpack refuses one made by hand */
	t.b.version = EPMOE_PROTO_VERSION + 1;
	hl = protobuf_c_message_pack(&t.b.base, hdr);
	len = make_frame(FRAME, EPMOE_PROTO_VERSION, WIRE_BATCH, hdr,
	        (uint32_t)hl, t.rows, 48);
	ck_assert_int_eq(unpack_batch(FRAME, len, &b, &rows, &n), EPMOE_EPROTO);
	{
		char want[32];
		snprintf(want, sizeof(want), "version is %d", EPMOE_PROTO_VERSION + 1);
		ck_assert_ptr_nonnull(strstr(wire_errmsg(), want));
	}
}
END_TEST

START_TEST(pack_refuses_bad_arguments)
{
	struct test_batch t;
	Epmoe__ExpertResult r = EPMOE__EXPERT_RESULT__INIT;
	float *dst;
	size_t len, need;

	test_batch_init(&t);
	need = wire_msg_size(&t.b.base, 12);
	ck_assert_uint_gt(need, 0);
	/* one byte short */
	ck_assert_int_eq(wire_pack(FRAME, need - 1, WIRE_BATCH, &t.b.base,
	        t.rows, 12, &len), EPMOE_ERANGE);
	ck_assert_int_eq(wire_pack(FRAME, need, WIRE_BATCH, &t.b.base,
	        t.rows, 12, &len), 0);
	ck_assert_uint_eq(len, need);
	/* a batch header under the result kind */
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_RESULT, &t.b.base,
	        t.rows, 12, &len), EPMOE_EINVAL);
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, 0, &t.b.base, t.rows, 12,
	        &len), EPMOE_EINVAL);
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_BATCH, &t.b.base,
	        NULL, 12, &len), EPMOE_EINVAL);
	/* rows that could not be aligned */
	ck_assert_int_eq(wire_pack_begin(FRAME + 1, FRAME_CAP - 1, WIRE_BATCH,
	        &t.b.base, 12, &dst, &len), EPMOE_EINVAL);
	/* copying rows into an unaligned buffer is fine */
	ck_assert_int_eq(wire_pack(FRAME + 1, FRAME_CAP - 1, WIRE_BATCH,
	        &t.b.base, t.rows, 12, &len), 0);
	/* over the payload limit */
	r.version = EPMOE_PROTO_VERSION;
	ck_assert_uint_eq(wire_size(10, (size_t)UINT32_MAX / 4 + 1), 0);
	ck_assert_uint_eq(wire_size(WIRE_MAX_HEADER_LEN + 1, 0), 0);
	ck_assert_int_eq(wire_pack(FRAME, FRAME_CAP, WIRE_RESULT, &r.base,
	        t.rows, (size_t)UINT32_MAX / 4 + 1, &len), EPMOE_ERANGE);
	ck_assert_uint_eq(wire_size(1, 3), 16 + 4 + 12);
	ck_assert_uint_eq(wire_size(4, 0), 20);
	ck_assert_uint_eq(wire_size(0, 0), 16);
}
END_TEST

START_TEST(unpack_refuses_unaligned_rows)
{
	size_t len = pack_test_batch();
	Epmoe__ExpertBatch *b = NULL;
	const float *rows;
	size_t n;

	memmove(FRAME + 2, FRAME, len);
	ck_assert_int_eq(unpack_batch(FRAME + 2, len, &b, &rows, &n),
	        EPMOE_EINVAL);
	ck_assert_ptr_nonnull(strstr(wire_errmsg(), "aligned"));
}
END_TEST

static int
check_copy(struct test_batch *t, size_t n_floats, const struct wire_limits *l)
{
	return wire_check_batch(&t->b, n_floats, l);
}

START_TEST(inconsistent_batches_are_rejected)
{
	struct test_batch t;
	struct wire_limits lim = { 8, 6, 10, 4, 3 };
	uint32_t gather[3] = { 0, 1, 1 };

	test_batch_init(&t);
	ck_assert_int_eq(check_copy(&t, 12, NULL), 0);
	ck_assert_int_eq(check_copy(&t, 12, &lim), 0);
	/* rows x dim vs floats */
	ck_assert_int_eq(check_copy(&t, 11, NULL), EPMOE_EPROTO);
	ck_assert_int_eq(check_copy(&t, 16, NULL), EPMOE_EPROTO);
	t.b.dim = 0;
	ck_assert_int_eq(check_copy(&t, 0, NULL), EPMOE_EPROTO);
	t.b.dim = WIRE_MAX_DIM + 1;
	ck_assert_int_eq(check_copy(&t, 3 * (size_t)t.b.dim, NULL),
	        EPMOE_EPROTO);
	test_batch_init(&t);
	t.b.n_rows_in = 0x80000000u; /* rows x dim wraps in 32 bits */
	t.b.dim = 2;
	ck_assert_int_eq(check_copy(&t, 0, NULL), EPMOE_EPROTO);
	/* group sums */
	test_batch_init(&t);
	t.g[1].n_tokens = 2;
	ck_assert_int_eq(check_copy(&t, 12, NULL), EPMOE_EPROTO);
	ck_assert_ptr_nonnull(strstr(wire_errmsg(), "groups hold 4"));
	t.g[1].n_tokens = UINT32_MAX; /* no 32-bit wrap to a valid sum */
	t.g[0].n_tokens = 4;
	ck_assert_int_eq(check_copy(&t, 12, NULL), EPMOE_EPROTO);
	/* weights count and values */
	test_batch_init(&t);
	t.b.n_weights = 2;
	ck_assert_int_eq(check_copy(&t, 12, NULL), EPMOE_EPROTO);
	t.b.n_weights = 3;
	t.weights[2] = INFINITY;
	ck_assert_int_eq(check_copy(&t, 12, NULL), EPMOE_EPROTO);
	t.weights[2] = NAN;
	ck_assert_int_eq(check_copy(&t, 12, NULL), EPMOE_EPROTO);
	/* combine map */
	test_batch_init(&t);
	t.combine[2] = 2;
	ck_assert_int_eq(check_copy(&t, 12, NULL), EPMOE_EPROTO);
	ck_assert_ptr_nonnull(strstr(wire_errmsg(), "combine[2]"));
	t.combine[2] = 1;
	t.b.n_combine = 4;
	ck_assert_int_eq(check_copy(&t, 12, NULL), EPMOE_EPROTO);
	/* limits */
	test_batch_init(&t);
	t.b.layer = 8;
	ck_assert_int_eq(check_copy(&t, 12, &lim), EPMOE_EPROTO);
	test_batch_init(&t);
	t.g[1].expert = 6;
	ck_assert_int_eq(check_copy(&t, 12, &lim), EPMOE_EPROTO);
	test_batch_init(&t);
	t.g[1].slot = 10;
	ck_assert_int_eq(check_copy(&t, 12, &lim), EPMOE_EPROTO);
	test_batch_init(&t);
	lim.max_dim = 3;
	ck_assert_int_eq(check_copy(&t, 12, &lim), EPMOE_EPROTO);
	lim.max_dim = 4;
	lim.max_rows = 2;
	ck_assert_int_eq(check_copy(&t, 12, &lim), EPMOE_EPROTO);
	/* a prefetch hint names at most every expert of the model */
	{
		uint32_t pf[7] = { 0, 1, 2, 3, 4, 5, 5 };
		test_batch_init(&t);
		lim.max_rows = 10;
		t.b.n_prefetch = 6;
		t.b.prefetch = pf;
		ck_assert_int_eq(check_copy(&t, 12, &lim), 0);
		t.b.n_prefetch = 7;
		ck_assert_int_eq(check_copy(&t, 12, &lim), EPMOE_EPROTO);
		ck_assert_ptr_nonnull(strstr(wire_errmsg(), "prefetch"));
	}
	/* gather: 2 unique input rows feeding 3 entries */
	test_batch_init(&t);
	t.b.n_gather = 3;
	t.b.gather = gather;
	t.b.n_rows_in = 2;
	ck_assert_int_eq(check_copy(&t, 8, NULL), 0);
	gather[2] = 2;
	ck_assert_int_eq(check_copy(&t, 8, NULL), EPMOE_EPROTO);
	gather[2] = 1;
	t.b.n_gather = 2;
	ck_assert_int_eq(check_copy(&t, 8, NULL), EPMOE_EPROTO);
	ck_assert_int_eq(wire_check_batch(NULL, 0, NULL), EPMOE_EINVAL);
}
END_TEST

START_TEST(inconsistent_results_are_rejected)
{
	Epmoe__ExpertResult r = EPMOE__EXPERT_RESULT__INIT;
	struct wire_expect exp = { 5, 1, 2, 4 };

	r.version = EPMOE_PROTO_VERSION;
	r.batch_id = 5;
	r.attempt = 1;
	r.n_rows = 2;
	r.dim = 4;
	ck_assert_int_eq(wire_check_result(&r, 8, &exp), 0);
	ck_assert_int_eq(wire_check_result(&r, 8, NULL), 0);
	ck_assert_int_eq(wire_check_result(&r, 7, NULL), EPMOE_EPROTO);
	r.dim = 0;
	ck_assert_int_eq(wire_check_result(&r, 0, NULL), EPMOE_EPROTO);
	r.dim = 4;
	/* late reply to another attempt: ESTATE (drop), not a protocol error */
	r.attempt = 0;
	ck_assert_int_eq(wire_check_result(&r, 8, &exp), EPMOE_ESTATE);
	r.attempt = 1;
	r.batch_id = 6;
	ck_assert_int_eq(wire_check_result(&r, 8, &exp), EPMOE_ESTATE);
	r.batch_id = 5;
	/* shape differs from the batch */
	r.n_rows = 1;
	r.dim = 8;
	ck_assert_int_eq(wire_check_result(&r, 8, &exp), EPMOE_EPROTO);
	/* a failure carries no rows */
	r.status = EPMOE__STATUS__STATUS_STALE_PLACEMENT;
	r.n_rows = 0;
	r.dim = 0;
	ck_assert_int_eq(wire_check_result(&r, 0, &exp), 0);
	ck_assert_int_eq(wire_check_result(&r, 4, &exp), EPMOE_EPROTO);
	ck_assert_int_eq(wire_status_to_err(r.status), EPMOE_ESTATE);
}
END_TEST

START_TEST(statuses_map_to_error_codes_and_back)
{
	for (int s = EPMOE__STATUS__STATUS_OK; s <= EPMOE__STATUS__STATUS_UNAUTHORIZED;
	     s++) {
		int e = wire_status_to_err(s);

		ck_assert_int_le(e, 0);
		ck_assert_int_eq(wire_err_to_status(e), s);
	}
	ck_assert_int_eq(wire_status_to_err(999), EPMOE_EPROTO);
	ck_assert_int_eq(wire_err_to_status(-999),
	        EPMOE__STATUS__STATUS_INTERNAL);
}
END_TEST

/* splitmix64, for reproducible fuzzing */
static uint64_t
fuzz_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

START_TEST(random_byte_flips_never_crash)
{
	size_t len = pack_test_batch();
	uint8_t orig[512];
	uint64_t seed = 12345;
	int accepted = 0, rejected = 0, header_flips = 0;

	ck_assert_uint_le(len, sizeof(orig));
	memcpy(orig, FRAME, len);
	for (int it = 0; it < 4000; it++) {
		Epmoe__ExpertBatch *b = NULL;
		const float *rows;
		size_t n;
		int nflip = 1 + (int)(fuzz_next(&seed) % 4), touched_fixed;
		int rv;

		memcpy(FRAME, orig, len);
		for (int k = 0; k < nflip; k++) {
			size_t at = fuzz_next(&seed) % len;
			uint8_t x = (uint8_t)(1 + fuzz_next(&seed) % 255);

			FRAME[at] ^= x;
		}
		touched_fixed = memcmp(FRAME, orig, WIRE_FIXED_LEN) != 0;
		rv = unpack_batch(FRAME, len, &b, &rows, &n);
		if (rv == 0) {
			/* whatever decoded must be safe to check and free */
			(void)wire_check_batch(b, n, NULL);
			protobuf_c_message_free_unpacked(&b->base, NULL);
			accepted++;
		} else {
			ck_assert_int_eq(rv, EPMOE_EPROTO);
			rejected++;
		}
		if (touched_fixed) {
			/* every byte of the fixed header is checked */
			ck_assert_int_ne(rv, 0);
			header_flips++;
		}
	}
	ck_assert_int_gt(header_flips, 0);
	ck_assert_int_gt(rejected, header_flips);
	ck_assert_int_gt(accepted, 0); /* flips inside the rows decode fine */
}
END_TEST

START_TEST(nng_message_round_trip_is_aligned)
{
	struct test_batch t;

	test_batch_init(&t);
	/* vary the header length so the row offset moves */
	for (int extra = 0; extra < 8; extra++) {
		Epmoe__ExpertBatch *b;
		ProtobufCMessage *m;
		nng_msg *msg;
		float *dst;
		const float *rows;
		size_t n;

		t.b.step = (uint64_t)1 << (7 * extra);
		ck_assert_int_eq(wire_nng_new(&msg, WIRE_BATCH, &t.b.base, 12,
		        &dst), 0);
		ck_assert_uint_eq(nng_msg_len(msg), wire_msg_size(&t.b.base,
		        12));
		ck_assert_uint_eq((uintptr_t)dst % 4, 0);
		memcpy(dst, t.rows, sizeof(t.rows));
		ck_assert_int_eq(wire_nng_unpack(msg, WIRE_BATCH, NULL, &m,
		        &rows, &n), 0);
		b = (Epmoe__ExpertBatch *)m;
		ck_assert(b->step == t.b.step);
		ck_assert_mem_eq(rows, t.rows, sizeof(t.rows));
		protobuf_c_message_free_unpacked(m, NULL);
		nng_msg_free(msg);
	}
}
END_TEST

START_TEST(frames_cross_an_ipc_socket_aligned)
{
	struct test_batch t;
	nng_socket rep, req;
	nng_msg *msg;
	char url[128];
	float out[8];

	snprintf(url, sizeof(url), "ipc:///tmp/epmoe-test-wire-%d.ipc",
	        (int)getpid());
	test_batch_init(&t);
	ck_assert_int_eq(nng_rep0_open(&rep), 0);
	ck_assert_int_eq(nng_req0_open(&req), 0);
	ck_assert_int_eq(nng_socket_set_ms(rep, NNG_OPT_RECVTIMEO, 5000), 0);
	ck_assert_int_eq(nng_socket_set_ms(req, NNG_OPT_RECVTIMEO, 5000), 0);
	ck_assert_int_eq(nng_listen(rep, url, NULL, 0), 0);
	ck_assert_int_eq(nng_dial(req, url, NULL, 0), 0);
	for (int round = 0; round < 4; round++) {
		Epmoe__ExpertResult r = EPMOE__EXPERT_RESULT__INIT;
		struct wire_expect exp;
		ProtobufCMessage *m;
		const float *rows;
		size_t n;

		t.b.batch_id = 100 + (uint64_t)round;
		t.b.step = (uint64_t)1 << (9 * round); /* shift row offset */
		ck_assert_int_eq(wire_nng_pack(&msg, WIRE_BATCH, &t.b.base,
		        t.rows, 12), 0);
		ck_assert_int_eq(nng_sendmsg(req, msg, 0), 0);

		/* worker side */
		ck_assert_int_eq(nng_recvmsg(rep, &msg, 0), 0);
		/* REP moves the 4-byte request id from the body to the
		 * header: the body is 4- (not 8-) aligned, enough for rows */
		ck_assert_uint_eq((uintptr_t)nng_msg_body(msg) % 4, 0);
		ck_assert_int_eq(wire_nng_unpack(msg, WIRE_BATCH, NULL, &m,
		        &rows, &n), 0);
		ck_assert_uint_eq((uintptr_t)rows % 4, 0);
		ck_assert_int_eq(wire_check_batch((Epmoe__ExpertBatch *)m, n,
		        NULL), 0);
		ck_assert_mem_eq(rows, t.rows, sizeof(t.rows));
		r.version = EPMOE_PROTO_VERSION;
		r.batch_id = ((Epmoe__ExpertBatch *)m)->batch_id;
		r.attempt = ((Epmoe__ExpertBatch *)m)->attempt;
		r.n_rows = 2;
		r.dim = 4;
		for (int i = 0; i < 8; i++)
			out[i] = rows[i] + rows[i + 4];
		protobuf_c_message_free_unpacked(m, NULL);
		nng_msg_free(msg);
		ck_assert_int_eq(wire_nng_pack(&msg, WIRE_RESULT, &r.base, out,
		        8), 0);
		ck_assert_int_eq(nng_sendmsg(rep, msg, 0), 0);

		/* router side */
		ck_assert_int_eq(nng_recvmsg(req, &msg, 0), 0);
		ck_assert_int_eq(wire_nng_unpack(msg, WIRE_RESULT, NULL, &m,
		        &rows, &n), 0);
		ck_assert_uint_eq((uintptr_t)rows % 4, 0);
		exp.batch_id = t.b.batch_id;
		exp.attempt = t.b.attempt;
		exp.n_rows = 2;
		exp.dim = 4;
		ck_assert_int_eq(wire_check_result((Epmoe__ExpertResult *)m, n,
		        &exp), 0);
		ck_assert_mem_eq(rows, out, sizeof(out));
		protobuf_c_message_free_unpacked(m, NULL);
		nng_msg_free(msg);
	}
	nng_close(req);
	nng_close(rep);
	unlink(url + strlen("ipc://"));
}
END_TEST

START_TEST(nng_errors_map_to_codes)
{
	ck_assert_int_eq(wire_nng_err(0), 0);
	ck_assert_int_eq(wire_nng_err(NNG_ETIMEDOUT), EPMOE_ETIMEDOUT);
	ck_assert_int_eq(wire_nng_err(NNG_ECONNRESET), EPMOE_ECLOSED);
	ck_assert_int_eq(wire_nng_err(NNG_ECLOSED), EPMOE_ECLOSED);
	ck_assert_int_eq(wire_nng_err(NNG_EMSGSIZE), EPMOE_ERANGE);
	ck_assert_int_eq(wire_nng_err(NNG_ENOMEM), EPMOE_ENOMEM);
	ck_assert_int_eq(wire_nng_err(NNG_ECANCELED), EPMOE_ECANCELED);
	ck_assert_int_eq(wire_nng_err(NNG_ESYSERR | 12 /* ENOMEM */),
	        EPMOE_ENOMEM);
	ck_assert_int_eq(wire_nng_err(NNG_ETRANERR | 3), EPMOE_EIO);
}
END_TEST

START_TEST(kinds_have_descriptors_and_names)
{
	for (int k = 1; k <= WIRE_KIND_MAX; k++) {
		ck_assert_ptr_nonnull(wire_kind_desc(k));
		ck_assert_str_ne(wire_kind_name(k), "unknown");
	}
	ck_assert_ptr_null(wire_kind_desc(0));
	ck_assert_ptr_null(wire_kind_desc(WIRE_KIND_MAX + 1));
	ck_assert_str_eq(wire_kind_name(99), "unknown");
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("wire");
	TCase *tc = tcase_create("frames");
	TCase *tn = tcase_create("nng");

	tcase_add_test(tc, batch_round_trips_with_rows);
	tcase_add_test(tc, pack_begin_lets_rows_be_written_in_place);
	tcase_add_test(tc, result_round_trips_with_rows);
	tcase_add_test(tc, control_messages_round_trip);
	tcase_add_test(tc, client_messages_round_trip);
	tcase_add_test(tc, every_truncation_is_rejected);
	tcase_add_test(tc, trailing_bytes_are_rejected);
	tcase_add_test(tc, wrong_magic_version_or_kind_is_rejected);
	tcase_add_test(tc, peek_reports_what_a_peer_speaks);
	tcase_add_test(tc, lengths_past_the_end_are_rejected);
	tcase_add_test(tc, payload_not_multiple_of_4_is_rejected);
	tcase_add_test(tc, nonzero_padding_is_rejected);
	tcase_add_test(tc, garbage_protobuf_is_rejected);
	tcase_add_test(tc, message_version_must_match);
	tcase_add_test(tc, pack_refuses_bad_arguments);
	tcase_add_test(tc, unpack_refuses_unaligned_rows);
	tcase_add_test(tc, inconsistent_batches_are_rejected);
	tcase_add_test(tc, inconsistent_results_are_rejected);
	tcase_add_test(tc, statuses_map_to_error_codes_and_back);
	tcase_add_test(tc, random_byte_flips_never_crash);
	tcase_add_test(tc, kinds_have_descriptors_and_names);
	tcase_add_test(tn, nng_message_round_trip_is_aligned);
	tcase_add_test(tn, frames_cross_an_ipc_socket_aligned);
	tcase_add_test(tn, nng_errors_map_to_codes);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, tn);
	return tu_run(s);
}
