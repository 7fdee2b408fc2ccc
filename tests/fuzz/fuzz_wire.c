/* libFuzzer target: NNG frames (common/wire.c) as a worker, the router's
 * dispatcher, its control plane and its client API receive them.  The
 * input is a whole frame; it is decoded as the kind its header names (and
 * as every other kind, which must be refused).  Properties: no crash, no
 * leak, no read outside the frame; a decoded batch/result passes or fails
 * its semantic check with a message; a client request's gen translation
 * is checked or refused with a message. */
#include <stdint.h>
#include <string.h>

#include "err.h"
#include "fuzz_util.h"
#include "gen.h"
#include "nngapi.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_client(const Epmoe__ClientMsg *cm)
{
	static const struct gen_limits lim = {
		.model = "m", .n_vocab = 1000, .max_tokens_limit = 512,
		.gate = { .n_experts = 8, .k = 2, .renorm = 0, .n_layers = 4 },
	};
	const Epmoe__CompletionRequest *cr;
	struct gen_msg *msgs;
	struct gen_req q;
	struct gen_plan pl;
	struct gen_err ge;

	if (cm->msg_case != EPMOE__CLIENT_MSG__MSG_COMPLETE ||
	        (cr = cm->complete) == NULL)
		return;
	if ((msgs = calloc(cr->n_messages + 1, sizeof(*msgs))) == NULL)
		return;
	nngapi_gen_req(cr, msgs, &q);
	memset(&ge, 0, sizeof(ge));
	if (gen_check(&lim, &q, &pl, &ge) != 0)
		FZ_CHECK(ge.message[0] != '\0', "gen refusal without a message");
	free(msgs);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wire_frame f;
	void *buf;

	if (size > (1u << 20))
		return 0;
	/* NNG message bodies are 4-byte aligned; so is malloc */
	if ((buf = malloc(size ? size : 1)) == NULL)
		return 0;
	memcpy(buf, data, size);
	if (wire_peek(buf, size, &f) != 0)
		f.kind = 0;
	for (int kind = 1; kind <= WIRE_KIND_MAX; kind++) {
		ProtobufCMessage *m = NULL;
		const float *rows;
		size_t n;
		int rc = wire_unpack(buf, size, kind, NULL, &m, &rows, &n);

		if (rc != 0) {
			FZ_CHECK(m == NULL, "output written on failure");
			FZ_CHECK(wire_errmsg()[0] != '\0', "no reason given");
			continue;
		}
		FZ_CHECK(kind == f.kind, "decoded as kind %d, frame says %u",
		        kind, f.kind);
		FZ_CHECK(n == 0 || rows != NULL, "rows missing");
		FZ_CHECK(n * sizeof(float) <= size, "rows beyond the frame");
		switch (kind) {
		case WIRE_BATCH:
			if (wire_check_batch((Epmoe__ExpertBatch *)m, n, NULL) != 0)
				FZ_CHECK(wire_errmsg()[0] != '\0', "no reason");
			break;
		case WIRE_RESULT: {
			struct wire_expect ex = { 1, 0, 4, 8 };

			wire_check_result((Epmoe__ExpertResult *)m, n, NULL);
			wire_check_result((Epmoe__ExpertResult *)m, n, &ex);
			break;
		}
		case WIRE_CLIENT:
			check_client((Epmoe__ClientMsg *)m);
			break;
		default:
			break;
		}
		protobuf_c_message_free_unpacked(m, NULL);
	}
	free(buf);
	return 0;
}
