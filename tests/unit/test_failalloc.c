/* Allocation-failure tests, SQLite style: a test allocator fails the n-th
 * allocation, and each parser that reads untrusted input (the GGUF reader
 * with the tokenizer and model loading behind it, wire unpacking, the
 * OpenAI request parser, the routing spec parser and policy) runs with
 * n = 1, 2, ... until it succeeds.  Every failure must be a clean error
 * (an error code and a message, no crash), and nothing may leak: under
 * ASan (make test SAN=1) LeakSanitizer checks after every run.  The last,
 * successful run must give what a run without injection gives.
 *
 * The test allocator: this binary is linked with -Wl,--wrap for malloc,
 * calloc, realloc, strdup and strndup (see the Makefile), so every
 * allocation the project's own code makes goes through fa_*; cJSON's go
 * through its hooks (cJSON_InitHooks) and protobuf-c's through wire.c's
 * allocator, which calls malloc.  Allocations inside other libraries are
 * not counted.  The allocator also records the largest request, which
 * shows that a hostile size in a file is refused before it is allocated.
 */
#include <check.h>
#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define HAVE_LSAN 1
#else
#define HAVE_LSAN 0
#endif

#include "engine.h"
#include "err.h"
#include "gen.h"
#include "gguf.h"
#include "mkmodel.h"
#include "model.h"
#include "oai.h"
#include "route.h"
#include "testutil.h"
#include "tok.h"
#include "wire.h"

/* ---- the test allocator ---- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

static struct {
	long countdown;     /* fail when it reaches 0; < 0: never */
	bool failed;        /* an allocation was failed since arming */
	size_t max_request; /* largest size asked for since fa_reset_max */
} fa = { -1, false, 0 };

/* 1 when this allocation must fail. */
static int
fa_fail(size_t n)
{
	if (n > fa.max_request)
		fa.max_request = n;
	if (fa.countdown < 0)
		return 0;
	if (--fa.countdown == 0) {
		fa.countdown = -1; /* one failure per run ("transient") */
		fa.failed = true;
		return 1;
	}
	return 0;
}

void *
__wrap_malloc(size_t n)
{
	return fa_fail(n) ? NULL : __real_malloc(n);
}

void *
__wrap_calloc(size_t n, size_t m)
{
	return fa_fail(n * m) ? NULL : __real_calloc(n, m);
}

void *
__wrap_realloc(void *p, size_t n)
{
	return fa_fail(n) ? NULL : __real_realloc(p, n);
}

char *
__wrap_strdup(const char *s)
{
	return fa_fail(strlen(s) + 1) ? NULL : __real_strdup(s);
}

char *
__wrap_strndup(const char *s, size_t n)
{
	return fa_fail(n + 1) ? NULL : __real_strndup(s, n);
}

static void *
cjson_malloc(size_t n)
{
	return __wrap_malloc(n);
}

static void
cjson_free(void *p)
{
	free(p);
}

/* Fails the n-th allocation from now on (n >= 1). */
static void
fa_arm(long n)
{
	fa.countdown = n;
	fa.failed = false;
}

/* Stops failing; returns whether an allocation was failed. */
static bool
fa_disarm(void)
{
	fa.countdown = -1;
	return fa.failed;
}

/* Check's assertions allocate (they record their location), so inside a
 * run the checks only note the first problem; fail_each asserts on it
 * once the allocator is disarmed. */
static char op_problem[512];

#define EXPECT(cond, ...)                                                     \
	do {                                                                  \
		if (!(cond) && op_problem[0] == '\0')                       \
			snprintf(op_problem, sizeof(op_problem), __VA_ARGS__); \
	} while (0)

/* After each run: under ASan, nothing allocated by the run is left. */
static void
check_no_leak(const char *what, long n)
{
#if HAVE_LSAN
	ck_assert_msg(__lsan_do_recoverable_leak_check() == 0,
	        "%s leaks when allocation %ld fails (see the report above)", what, n);
#else
	(void)what;
	(void)n;
#endif
}

#define MAX_RUNS 20000

/* Runs op with allocation n failing for n = 1, 2, ... until a run fails
 * none; op returns 0 on success, else an EPMOE_E* code, and checks its
 * own message.  Returns the number of failing runs. */
static long
fail_each(const char *what, int (*op)(void *ud, bool injected), void *ud)
{
	long n;

	for (n = 1; n < MAX_RUNS; n++) {
		int rc;
		bool injected;

		op_problem[0] = '\0';
		fa_arm(n);
		rc = op(ud, true);
		injected = fa_disarm();
		ck_assert_msg(op_problem[0] == '\0', "%s, allocation %ld failing: %s",
		        what, n, op_problem);
		check_no_leak(what, n);
		if (!injected) {
			ck_assert_msg(rc == 0, "%s: fails (%s) without an injected failure",
			        what, epmoe_strerror(rc));
			return n - 1;
		}
		ck_assert_msg(rc < 0, "%s: allocation %ld failed, yet it returned %d",
		        what, n, rc);
	}
	ck_abort_msg("%s: still allocating after %d runs", what, MAX_RUNS);
	return -1;
}

static void
setup(void)
{
	cJSON_Hooks h = { cjson_malloc, cjson_free };

	cJSON_InitHooks(&h);
}

/* ---- the GGUF reader, tokenizer and model loading ---- */

struct blob {
	void *data;
	size_t len;
};

static struct blob
read_seed(const char *rel)
{
	char path[512];
	struct blob b;

	snprintf(path, sizeof(path), "tests/fuzz/corpus/%s", rel);
	b.data = tu_read(path, &b.len);
	ck_assert_msg(b.data != NULL, "cannot read %s (run from the worktree)", path);
	return b;
}

static int
op_gguf(void *ud, bool injected)
{
	struct blob *b = ud;
	struct gguf_file *g;
	struct model *m;
	struct tok *t;
	char err[256] = "";
	int rc;

	if ((rc = gguf_open_mem(&g, "seed.gguf", b->data, b->len, err, sizeof(err))) != 0) {
		EXPECT(err[0] != '\0', "gguf: no message");
		EXPECT(rc == EPMOE_ENOMEM, "gguf: rc %d", rc);
		return rc;
	}
	err[0] = '\0';
	if ((rc = tok_load(&t, g, err, sizeof(err))) != 0) {
		EXPECT(err[0] != '\0', "tok_load: no message for %d", rc);
		gguf_close(g);
		return rc;
	}
	tok_free(t);
	err[0] = '\0';
	if ((rc = model_load_gguf(&m, g, err, sizeof(err))) != 0) {
		EXPECT(err[0] != '\0', "model_load_gguf: no message for %d", rc);
		EXPECT(rc == EPMOE_ENOMEM, "model_load_gguf: rc %d", rc);
		return rc;
	}
	EXPECT(m->hp.n_layer == 1, "n_layer %u", m->hp.n_layer);
	model_free(m);
	(void)injected;
	return 0;
}

START_TEST(gguf_reader_fails_cleanly_at_every_allocation)
{
	static const char *const seeds[] = { "gguf/llama.gguf", "gguf/qwen2moe.gguf",
		"gguf/olmoe.gguf" };

	for (size_t i = 0; i < sizeof(seeds) / sizeof(*seeds); i++) {
		struct blob b = read_seed(seeds[i]);
		long runs = fail_each(seeds[i], op_gguf, &b);

		ck_assert_msg(runs > 20, "%s: only %ld allocations", seeds[i], runs);
		free(b.data);
	}
}
END_TEST

/* ---- wire unpacking ---- */

static int
op_wire(void *ud, bool injected)
{
	struct blob *b = ud;
	ProtobufCMessage *m = NULL;
	const float *rows;
	size_t n;
	struct wire_frame f;
	int rc;

	if (wire_peek(b->data, b->len, &f) != 0) {
		EXPECT(0, "seed does not peek");
		return EPMOE_EPROTO;
	}
	if ((rc = wire_unpack(b->data, b->len, f.kind, NULL, &m, &rows, &n)) != 0) {
		EXPECT(m == NULL, "output written on failure");
		EXPECT(rc == EPMOE_ENOMEM, "rc %d (%s)", rc, wire_errmsg());
		EXPECT(strstr(wire_errmsg(), "out of memory") != NULL, "%s", wire_errmsg());
		return rc;
	}
	if (f.kind == WIRE_BATCH)
		EXPECT(wire_check_batch((Epmoe__ExpertBatch *)m, n, NULL) == 0,
		        "decoded batch fails its check: %s", wire_errmsg());
	protobuf_c_message_free_unpacked(m, NULL);
	(void)injected;
	return 0;
}

START_TEST(wire_unpacking_fails_cleanly_at_every_allocation)
{
	static const char *const seeds[] = { "wire/batch", "wire/control_hello",
		"wire/client_complete", "wire/client_chat", "wire/result" };

	for (size_t i = 0; i < sizeof(seeds) / sizeof(*seeds); i++) {
		struct blob b = read_seed(seeds[i]);
		void *aligned = malloc(b.len);

		memcpy(aligned, b.data, b.len);
		free(b.data);
		b.data = aligned;
		ck_assert_msg(fail_each(seeds[i], op_wire, &b) >= 1,
		        "%s: no allocation", seeds[i]);
		free(b.data);
	}
}
END_TEST

/* ---- the OpenAI request parser ---- */

struct oai_case {
	int kind; /* 0 completion, 1 chat, 2 tokenize, 3 detokenize */
	const char *body;
};

static int
op_oai(void *ud, bool injected)
{
	static const char *const models[] = { "m" };
	const struct oai_case *c = ud;
	struct oai_config cfg = { .models = models, .n_models = 1,
		.n_vocab = 1000, .model_optional = 1 };
	struct oai_error e;
	cJSON *body;
	int rc;

	memset(&e, 0, sizeof(e));
	switch (c->kind) {
	case 0: {
		struct oai_completion_req r;

		if ((rc = oai_parse_completion(c->body, strlen(c->body), &cfg, &r, &e)) == 0) {
			EXPECT(strcmp(r.prompt, "In the beginning") == 0, "prompt");
			EXPECT(r.gen.n_stop == 2, "stops");
			EXPECT(r.gen.routing && strcmp(r.gen.routing, "ssr:lambda=1.3") == 0,
			        "routing");
			oai_completion_req_fini(&r);
		}
		break;
	}
	case 1: {
		struct oai_chat_req r;

		if ((rc = oai_parse_chat(c->body, strlen(c->body), &cfg, &r, &e)) == 0) {
			EXPECT(r.n_messages == 3, "messages");
			EXPECT(strcmp(r.messages[1].content, "hi\nthere") == 0, "content");
			oai_chat_req_fini(&r);
		}
		break;
	}
	case 2: {
		struct oai_tokenize_req r;

		if ((rc = oai_parse_tokenize(c->body, strlen(c->body), &cfg, &r, &e)) == 0)
			oai_tokenize_req_fini(&r);
		break;
	}
	default: {
		struct oai_detokenize_req r;

		if ((rc = oai_parse_detokenize(c->body, strlen(c->body), &cfg, &r, &e)) == 0) {
			EXPECT(r.n_tokens == 4, "tokens");
			oai_detokenize_req_fini(&r);
		}
		break;
	}
	}
	if (rc == 0)
		return 0;
	/* a failed allocation inside cJSON's parser reads as bad JSON (cJSON
	 * cannot tell them apart): a 400, still clean; ours are 500s */
	EXPECT(rc == EPMOE_ENOMEM || rc == EPMOE_EINVAL, "rc %d", rc);
	EXPECT(e.message[0] != '\0', "no message");
	EXPECT(e.status == 500 || e.status == 400, "status %d", e.status);
	/* the error body is built under injection too: NULL or whole */
	if ((body = oai_error_body(&e)) != NULL)
		cJSON_Delete(body);
	(void)injected;
	return rc;
}

START_TEST(openai_request_parser_fails_cleanly_at_every_allocation)
{
	static const struct oai_case cases[] = {
		{ 0, "{\"model\":\"m\",\"prompt\":\"In the beginning\",\"max_tokens\":16,"
		     "\"temperature\":0.7,\"top_p\":0.9,\"seed\":42,\"stop\":[\"\\n\",\"END\"],"
		     "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
		     "\"logprobs\":2,\"routing\":\"ssr:lambda=1.3\"}" },
		{ 0, "{\"prompt\":\"In the beginning\",\"stop\":[\"a\",\"b\"],"
		     "\"routing\":{\"policy\":\"ssr\",\"lambda\":1.3}}" },
		{ 1, "{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
		     "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"},"
		     "{\"type\":\"text\",\"text\":\"there\"}]},{\"role\":\"assistant\","
		     "\"content\":\"hello\"}],\"logprobs\":true,\"top_logprobs\":3}" },
		{ 2, "{\"prompt\":\"hello world\",\"add_special\":false}" },
		{ 3, "{\"tokens\":[1,2,3,999]}" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++)
		ck_assert_msg(fail_each("oai", op_oai, (void *)&cases[i]) >= 2,
		        "case %zu: too few allocations", i);
}
END_TEST

/* ---- the routing spec parser and policies ---- */

static int
op_route(void *ud, bool injected)
{
	static const struct route_model gate = { .n_experts = 8, .k = 2,
		.renorm = 0, .n_layers = 4 };
	const char *spec = ud;
	struct route_cfg cfg;
	struct route_policy *p;
	struct gen_err ge;
	char err[256] = "", canon[GEN_MAX_ROUTING + 1];
	int rc;

	if ((rc = route_parse(spec, &cfg, err, sizeof(err))) != 0) {
		EXPECT(err[0] != '\0', "%s: no message", spec);
		return rc;
	}
	memset(&ge, 0, sizeof(ge));
	if ((rc = gen_check_routing(&gate, spec, false, canon, &ge)) != 0) {
		EXPECT(ge.message[0] != '\0', "gen: no message");
		return rc;
	}
	if ((rc = route_policy_new(&p, &cfg, &gate, err, sizeof(err))) != 0) {
		EXPECT(rc == EPMOE_ENOMEM, "%s: rc %d", spec, rc);
		EXPECT(err[0] != '\0', "%s: no message", spec);
		return rc;
	}
	route_policy_free(p);
	(void)injected;
	return 0;
}

START_TEST(routing_spec_parser_fails_cleanly_at_every_allocation)
{
	static const char *const specs[] = { "native", "topk:k=1,renorm=1",
		"capacity:factor=1.25,drop=probs", "expert_choice:c=2",
		"sinkhorn:xi=1.0,kernel=capped,iters=20", "ssr:lambda=1.3",
		"ssr:p=0.01", "usmoe:rate=0.5,budget=0.75", "lossfree:u=0.001" };

	for (size_t i = 0; i < sizeof(specs) / sizeof(*specs); i++)
		fail_each(specs[i], op_route, (void *)specs[i]);
}
END_TEST

/* ---- hostile sizes: refused before they are allocated ---- */

/* Writes a small model whose metadata says context_length ctx (patched in
 * place: mkmodel itself refuses absurd values). */
static void
write_model(const char *path, uint32_t layers, uint32_t dim, uint32_t ctx)
{
	struct mkmodel_cfg c;
	char err[256];
	size_t len;
	uint8_t *b, *k;
	FILE *f;

	mkmodel_preset(&c, MKMODEL_LLAMA, "tiny");
	c.n_layer = layers;
	c.n_embd = dim;
	c.n_head = 4;
	c.n_head_kv = 4;
	c.n_expert = 2;
	c.n_expert_used = 1;
	c.n_ff = 16;
	c.n_vocab = MKMODEL_MIN_VOCAB;
	c.n_ctx = 4096;
	c.dtype = DTYPE_F16;
	c.n_threads = 1;
	ck_assert_int_eq(mkmodel_write(&c, path, err, sizeof(err)), 0);
	b = tu_read(path, &len);
	ck_assert_ptr_nonnull(b);
	k = memmem(b, len, "llama.context_length", 20);
	ck_assert_ptr_nonnull(k);
	ck_assert_uint_eq(k[20], 4); /* GGUF_TYPE_UINT32, then the value */
	memcpy(k + 24, &ctx, 4);
	ck_assert_ptr_nonnull(f = fopen(path, "wb"));
	ck_assert_uint_eq(fwrite(b, 1, len, f), len);
	fclose(f);
	free(b);
}

/* The one-bit flip: context_length 268 M made the engine ask for
 * a 128 GiB allocation.  Now the loader refuses it, and a context within
 * the loader's bound that does not fit the memory budget is refused by
 * the engine, each with a message, and no allocation comes near it. */
START_TEST(absurd_context_length_is_refused_without_a_huge_allocation)
{
	char path[] = "/tmp/epmoe-ctx-XXXXXX";
	struct engine_opts eo = { .n_threads = 1 };
	struct engine *e;
	struct model *m;
	char err[512] = "";
	int fd = mkstemp(path);

	ck_assert_int_ge(fd, 0);
	close(fd);
	write_model(path, 1, 64, UINT32_C(1) << 28);
	fa.max_request = 0;
	ck_assert_int_eq(model_load(&m, path, err, sizeof(err)), EPMOE_EFORMAT);
	ck_assert_msg(strstr(err, "context_length 268435456") != NULL, "%s", err);
	ck_assert_uint_lt(fa.max_request, (size_t)64 << 20);

	/* 2^24 positions x 8 layers x 4 kv heads x 64 x 2 (K, V) x 4 bytes =
	 * 256 GiB of KV cache for one sequence */
	write_model(path, 8, 256, UINT32_C(1) << 24);
	ck_assert_int_eq(model_load(&m, path, err, sizeof(err)), 0);
	fa.max_request = 0;
	err[0] = '\0';
	ck_assert_int_eq(engine_new(&e, m, &eo, err, sizeof(err)), EPMOE_ERANGE);
	ck_assert_msg(strstr(err, "context length 16777216 (the model's context_length)") &&
	        strstr(err, "KV cache 256.00 GiB") && strstr(err, "--ctx"), "%s", err);
	ck_assert_uint_lt(fa.max_request, (size_t)64 << 20);
	/* an explicit context that fits works, and so does the budget knob */
	eo.n_ctx = 4096;
	ck_assert_int_eq(engine_new(&e, m, &eo, err, sizeof(err)), 0);
	engine_free(e);
	eo.mem_budget = (uint64_t)1 << 20; /* 1 MiB: 4096 positions need 64 MiB */
	ck_assert_int_eq(engine_new(&e, m, &eo, err, sizeof(err)), EPMOE_ERANGE);
	ck_assert_ptr_nonnull(strstr(err, "context length 4096 needs"));
	model_free(m);
	unlink(path);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("failalloc");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, gguf_reader_fails_cleanly_at_every_allocation);
	tcase_add_test(tc, wire_unpacking_fails_cleanly_at_every_allocation);
	tcase_add_test(tc, openai_request_parser_fails_cleanly_at_every_allocation);
	tcase_add_test(tc, routing_spec_parser_fails_cleanly_at_every_allocation);
	tcase_add_test(tc, absurd_context_length_is_refused_without_a_huge_allocation);
	suite_add_tcase(s, tc);
	return tu_run(s);
}
