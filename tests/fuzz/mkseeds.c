/* Writes the binary seeds of the fuzz corpora: well-formed wire frames of
 * every kind (corpus/wire) and small GGUF models of every architecture
 * (corpus/gguf), so the fuzzers start from inputs that get deep.  Run by
 * `make fuzz-seeds` (the output is committed); text seeds are written by
 * hand.  Usage: mkseeds DIR (DIR/wire and DIR/gguf must exist). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe.pb-c.h"
#include "err.h"
#include "gguf.h"
#include "mkmodel.h"
#include "tok_int.h"
#include "wire.h"

static const char *dir;

static void
put(const char *sub, const char *name, const void *p, size_t n)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name);
	if ((f = fopen(path, "wb")) == NULL || fwrite(p, 1, n, f) != n) {
		perror(path);
		exit(1);
	}
	fclose(f);
}

static void
frame(const char *name, int kind, const ProtobufCMessage *m, const float *rows,
        size_t n_floats)
{
	static char buf[1 << 16];
	size_t len;

	if (wire_pack(buf, sizeof(buf), kind, m, rows, n_floats, &len) != 0) {
		fprintf(stderr, "pack %s: %s\n", name, wire_errmsg());
		exit(1);
	}
	put("wire", name, buf, len);
}

static void
wire_seeds(void)
{
	Epmoe__ControlMsg c = EPMOE__CONTROL_MSG__INIT;
	Epmoe__WorkerHello h = EPMOE__WORKER_HELLO__INIT;
	Epmoe__ExpertBatch b = EPMOE__EXPERT_BATCH__INIT;
	Epmoe__ExpertGroup g0 = EPMOE__EXPERT_GROUP__INIT, g1 = EPMOE__EXPERT_GROUP__INIT;
	Epmoe__ExpertGroup *gs[2] = { &g0, &g1 };
	Epmoe__ExpertResult r = EPMOE__EXPERT_RESULT__INIT;
	Epmoe__ClientMsg cm = EPMOE__CLIENT_MSG__INIT;
	Epmoe__CompletionRequest cr = EPMOE__COMPLETION_REQUEST__INIT;
	Epmoe__ChatMessage msg = EPMOE__CHAT_MESSAGE__INIT, *msgs[1] = { &msg };
	Epmoe__ClientReply rep = EPMOE__CLIENT_REPLY__INIT;
	Epmoe__HealthReply hr = EPMOE__HEALTH_REPLY__INIT;
	float weights[3] = { 0.5f, 0.5f, 1.0f }, rows[3 * 4];
	uint32_t combine[3] = { 0, 1, 1 }, gather[3] = { 0, 1, 2 };
	uint32_t ptok[3] = { 1, 20, 30 };
	char *stop[2] = { "\n", "END" };

	for (int i = 0; i < 12; i++)
		rows[i] = (float)i * 0.25f;
	c.version = EPMOE_PROTO_VERSION;
	c.seq = 7;
	h.version = EPMOE_PROTO_VERSION;
	h.worker_id = "w1";
	h.boot_id = 42;
	h.threads = 2;
	h.model_hash = 0x1234;
	h.data_url = "tcp://127.0.0.1:7001";
	h.node = "n1";
	c.msg_case = EPMOE__CONTROL_MSG__MSG_HELLO;
	c.hello = &h;
	frame("control_hello", WIRE_CONTROL, &c.base, NULL, 0);

	b.version = EPMOE_PROTO_VERSION;
	b.batch_id = 9;
	b.epoch = 1;
	b.layer = 1;
	g0.slot = 0; g0.expert = 1; g0.n_tokens = 2;
	g1.slot = 1; g1.expert = 3; g1.n_tokens = 1;
	b.n_groups = 2;
	b.groups = gs;
	b.n_weights = 3;
	b.weights = weights;
	b.n_combine = 3;
	b.combine = combine;
	b.n_gather = 3;
	b.gather = gather;
	b.n_rows_in = 3;
	b.n_rows_out = 2;
	b.dim = 4;
	frame("batch", WIRE_BATCH, &b.base, rows, 12);

	r.version = EPMOE_PROTO_VERSION;
	r.batch_id = 9;
	r.status = EPMOE__STATUS__STATUS_OK;
	r.n_rows = 2;
	r.dim = 4;
	frame("result", WIRE_RESULT, &r.base, rows, 8);
	r.status = EPMOE__STATUS__STATUS_STALE_PLACEMENT;
	r.message = "stale";
	r.n_rows = 0;
	frame("result_stale", WIRE_RESULT, &r.base, NULL, 0);

	cm.version = EPMOE_PROTO_VERSION;
	cm.msg_case = EPMOE__CLIENT_MSG__MSG_COMPLETE;
	cm.complete = &cr;
	cr.model = "m";
	cr.prompt = "In the beginning";
	cr.max_tokens = 8;
	cr.temperature_opt_case = EPMOE__COMPLETION_REQUEST__TEMPERATURE_OPT_TEMPERATURE;
	cr.temperature = 0.7f;
	cr.top_k = 40;
	cr.n_stop = 2;
	cr.stop = stop;
	cr.routing_policy = "ssr:lambda=1.3";
	cr.logprobs_opt_case = EPMOE__COMPLETION_REQUEST__LOGPROBS_OPT_LOGPROBS;
	cr.logprobs = 2;
	frame("client_complete", WIRE_CLIENT, &cm.base, NULL, 0);
	cr.prompt = "";
	cr.n_prompt_tokens = 3;
	cr.prompt_tokens = ptok;
	frame("client_tokens", WIRE_CLIENT, &cm.base, NULL, 0);
	cr.n_prompt_tokens = 0;
	msg.role = "user";
	msg.content = "hello";
	cr.n_messages = 1;
	cr.messages = msgs;
	frame("client_chat", WIRE_CLIENT, &cm.base, NULL, 0);

	rep.version = EPMOE_PROTO_VERSION;
	rep.msg_case = EPMOE__CLIENT_REPLY__MSG_HEALTH;
	rep.health = &hr;
	hr.ok = 1;
	frame("client_reply_health", WIRE_CLIENT_REPLY, &rep.base, NULL, 0);
}

static void
gguf_seeds(void)
{
	static const enum mkmodel_arch arch[] = { MKMODEL_LLAMA,
		MKMODEL_QWEN2MOE, MKMODEL_OLMOE };
	char err[256], path[512], name[64];

	for (size_t i = 0; i < sizeof(arch) / sizeof(arch[0]); i++) {
		struct mkmodel_cfg c;

		mkmodel_preset(&c, arch[i], "tiny");
		c.n_layer = 1;
		c.n_embd = 16;
		c.n_ff = 8;
		c.n_ff_shexp = 8;
		c.n_expert = 2;
		c.n_expert_used = 1;
		c.n_vocab = MKMODEL_MIN_VOCAB;
		c.n_head = 2;
		c.n_head_kv = arch[i] == MKMODEL_OLMOE ? 2 : 1;
		c.dtype = DTYPE_F16;
		c.n_threads = 1;
		snprintf(name, sizeof(name), "%s.gguf", mkmodel_arch_name(arch[i]));
		snprintf(path, sizeof(path), "%s/gguf/%s", dir, name);
		if (mkmodel_write(&c, path, err, sizeof(err)) != 0) {
			fprintf(stderr, "%s\n", err);
			exit(1);
		}
	}
}

/* Metadata only: a byte-level BPE tokenizer (what tok_load reads). */
static void
gguf_bpe_seed(void)
{
	static const char *const extra[] = { "\xc4\xa0t", "he", "\xc4\xa0the",
		"<|endoftext|>", "<|im_end|>" };
	static const char *const merges[] = { "\xc4\xa0 t", "h e", "\xc4\xa0t he" };
	enum { N = 256 + 5 };
	static char bytes[256][3];
	const char *tokens[N];
	int32_t types[N];
	struct gguf_writer *w;
	char err[256], path[512];

	for (int i = 0; i < 256; i++) {
		bytes[i][tok_bpe_byte_utf8((uint8_t)i, bytes[i])] = '\0';
		tokens[i] = bytes[i];
		types[i] = 1;
	}
	for (int i = 0; i < 5; i++) {
		tokens[256 + i] = extra[i];
		types[256 + i] = i >= 3 ? 3 : 1;
	}
	snprintf(path, sizeof(path), "%s/gguf/bpe_tokenizer.gguf", dir);
	if (gguf_writer_new(&w, 3) != 0 ||
	        gguf_writer_set_str(w, "general.architecture", "qwen2moe") != 0 ||
	        gguf_writer_set_u32(w, "qwen2moe.context_length", 4096) != 0 ||
	        gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2") != 0 ||
	        gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2") != 0 ||
	        gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokens, N) != 0 ||
	        gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32,
	             types, N) != 0 ||
	        gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, 3) != 0 ||
	        gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 259) != 0 ||
	        gguf_writer_write(w, path, err, sizeof(err)) != 0) {
		fprintf(stderr, "bpe seed: %s\n", err);
		exit(1);
	}
	gguf_writer_free(w);
}

int
main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: mkseeds DIR\n");
		return 2;
	}
	dir = argv[1];
	wire_seeds();
	gguf_seeds();
	gguf_bpe_seed();
	return 0;
}
