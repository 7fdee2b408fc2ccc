/* Serving, end to end: starts the real epmoe-router (local experts) on
 * 127.0.0.1 and talks to it over real sockets (HTTP with libcurl, NNG REQ),
 * comparing its answers with the in-process engine:
 *   - greedy completions equal local greedy generation, on every test model;
 *   - prompt logprobs from echo + logprobs equal the local engine's
 *     log-softmax within 1e-4;
 *   - 16 concurrent streamed requests all complete, each equal to its
 *     non-streamed answer;
 *   - bad input gets its error status and the server keeps serving;
 *   - garbage on the NNG endpoint gets an error reply.
 * Every wait is bounded. */
#include <arpa/inet.h>
#include <cJSON.h>
#include <curl/curl.h>
#include <math.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "epmoe.pb-c.h"
#include "epmoe_client.h"
#include "model.h"
#include "serve_util.h"
#include "testutil.h"
#include "tok.h"
#include "wire.h"
#include "wire_nng.h"

static struct tu_router R;

static void
start_local(const char *model)
{
	const char *args[] = { "--local", NULL };
	ck_assert_msg(tu_router_start(&R, tu_data(model), args) == 0,
	        "router did not become healthy; log: %s", R.log);
}

/* Stops the router and checks it exits cleanly (under ASan, leaks and
 * errors make the exit status non-zero). */
static void
stop_router(void)
{
	char path[128];
	snprintf(path, sizeof(path), "%s", R.logpath);
	tu_router_log(&R);
	int st = tu_router_stop(&R);
	ck_assert_msg(st == 0, "router exit status %d; log: %s", st, R.log);
}

/* Local greedy generation, detokenized the way the server streams. */
static char *
local_greedy(const char *model, const char *prompt, int n)
{
	struct model *m;
	struct engine *e;
	struct tok *tk;
	struct eng_seq *s;
	struct tok_stream ts;
	char err[256];
	int32_t *ids;
	size_t n_ids, len = 0;
	char *out = calloc(1, 4096);

	ck_assert_int_eq(model_load(&m, tu_data(model), err, sizeof(err)), 0);
	ck_assert_int_eq(engine_new(&e, m, NULL, err, sizeof(err)), 0);
	ck_assert_int_eq(tok_load(&tk, m->gguf, err, sizeof(err)), 0);
	ck_assert_int_eq(tok_encode(tk, prompt, strlen(prompt), TOK_ADD_BOS, &ids, &n_ids), 0);
	ck_assert_int_eq(eng_seq_new(e, &s), 0);
	ck_assert_int_eq(tok_stream_init(&ts, tk, 0), 0);
	float *logits = malloc(m->hp.n_vocab * sizeof(float));
	struct eng_item it = { .seq = s, .tokens = ids, .n_tokens = (uint32_t)n_ids,
		.logits = ENG_LOGITS_LAST, .out = logits };
	ck_assert_int_eq(engine_step(e, &it, 1), 0);
	for (int g = 0; g < n; g++) {
		int32_t best = 0;
		for (uint32_t v = 1; v < m->hp.n_vocab; v++)
			if (logits[v] > logits[best])
				best = (int32_t)v;
		if (tok_is_eog(tk, best))
			break;
		const char *t;
		size_t tl;
		ck_assert_int_eq(tok_stream_push(&ts, best, &t, &tl), 0);
		memcpy(out + len, t, tl);
		len += tl;
		if (g + 1 == n)
			break;
		struct eng_item d = { .seq = s, .tokens = &best, .n_tokens = 1,
			.logits = ENG_LOGITS_LAST, .out = logits, .decode = true };
		ck_assert_int_eq(engine_step(e, &d, 1), 0);
	}
	const char *t;
	size_t tl;
	tok_stream_flush(&ts, &t, &tl);
	memcpy(out + len, t, tl);
	len += tl;
	out[len] = '\0';
	tok_stream_fini(&ts);
	free(logits);
	free(ids);
	eng_seq_free(s);
	tok_free(tk);
	engine_free(e);
	model_free(m);
	return out;
}

static char *
completion_text(const char *body)
{
	cJSON *j = cJSON_Parse(body);
	ck_assert_msg(j != NULL, "not JSON: %s", body);
	cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
	cJSON *t = cJSON_GetObjectItem(c, "text");
	ck_assert_msg(cJSON_IsString(t), "no text in %s", body);
	char *s = strdup(t->valuestring);
	cJSON_Delete(j);
	return s;
}

static const char *const models[] = { "mixtral-tiny-f32.gguf", "qwen2moe-tiny-f32.gguf",
	"olmoe-tiny-f32.gguf" };

START_TEST(greedy_completion_equals_local_generation)
{
	const char *prompt = "Hello world, the quick brown fox";
	char body[256], *resp = NULL;
	long status;

	start_local(models[_i]);
	snprintf(body, sizeof(body),
	        "{\"prompt\":\"%s\",\"max_tokens\":16,\"temperature\":0}", prompt);
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
	ck_assert_msg(status == 200, "status %ld: %s", status, resp);
	char *got = completion_text(resp);
	char *want = local_greedy(models[_i], prompt, 16);
	ck_assert_str_eq(got, want);
	free(got);
	free(want);
	free(resp);
	stop_router();
}
END_TEST

/* log softmax of row at id, in double */
static double
logprob(const float *row, uint32_t V, int32_t id)
{
	double m = row[0], s = 0;
	for (uint32_t i = 1; i < V; i++)
		if (row[i] > m)
			m = row[i];
	for (uint32_t i = 0; i < V; i++)
		s += exp(row[i] - m);
	return row[id] - m - log(s);
}

START_TEST(echo_logprobs_equal_local_logits)
{
	const char *prompt = "Hello world, the quick brown fox";
	char body[256], *resp = NULL, err[256];
	long status;
	struct model *m;
	struct engine *e;
	struct tok *tk;
	struct eng_seq *s;
	int32_t *ids;
	size_t n_ids;

	start_local(models[_i]);
	snprintf(body, sizeof(body),
	        "{\"prompt\":\"%s\",\"max_tokens\":0,\"echo\":true,\"logprobs\":1}", prompt);
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
	ck_assert_msg(status == 200, "status %ld: %s", status, resp);
	cJSON *j = cJSON_Parse(resp);
	cJSON *lp = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(
	        cJSON_GetObjectItem(j, "choices"), 0), "logprobs"), "token_logprobs");
	ck_assert_ptr_nonnull(lp);

	ck_assert_int_eq(model_load(&m, tu_data(models[_i]), err, sizeof(err)), 0);
	ck_assert_int_eq(engine_new(&e, m, NULL, err, sizeof(err)), 0);
	ck_assert_int_eq(tok_load(&tk, m->gguf, err, sizeof(err)), 0);
	ck_assert_int_eq(tok_encode(tk, prompt, strlen(prompt), TOK_ADD_BOS, &ids, &n_ids), 0);
	ck_assert_int_eq(cJSON_GetArraySize(lp), (int)n_ids);
	float *logits = malloc(n_ids * m->hp.n_vocab * sizeof(float));
	ck_assert_int_eq(eng_seq_new(e, &s), 0);
	struct eng_item it = { .seq = s, .tokens = ids, .n_tokens = (uint32_t)n_ids,
		.logits = ENG_LOGITS_ALL, .out = logits };
	ck_assert_int_eq(engine_step(e, &it, 1), 0);
	ck_assert(cJSON_IsNull(cJSON_GetArrayItem(lp, 0)));
	for (size_t i = 1; i < n_ids; i++) {
		double want = logprob(logits + (i - 1) * m->hp.n_vocab, m->hp.n_vocab, ids[i]);
		double got = cJSON_GetArrayItem(lp, (int)i)->valuedouble;
		ck_assert_msg(fabs(got - want) <= 1e-4, "token %zu: server %g, local %g", i, got, want);
	}
	free(logits);
	free(ids);
	eng_seq_free(s);
	tok_free(tk);
	engine_free(e);
	model_free(m);
	cJSON_Delete(j);
	free(resp);
	stop_router();
}
END_TEST

struct stream_job {
	int i;
	char *text;
	int done_seen;
	long status;
};

static void *
stream_one(void *arg)
{
	struct stream_job *j = arg;
	char body[256];

	snprintf(body, sizeof(body),
	        "{\"prompt\":\"Stream number %d\",\"max_tokens\":24,\"temperature\":0,\"stream\":true}",
	        j->i);
	tu_sse(&R, "/v1/completions", body, &j->status, &j->text, &j->done_seen);
	return NULL;
}

/* A scoring request (max_tokens 0) may fill the whole context; one token
 * more, or room for a generated token, is refused with 400. */
START_TEST(a_scoring_request_may_fill_the_context)
{
	const char *args[] = { "--local", "--ctx", "16", NULL };
	char body[512], *resp = NULL;
	long status = 0;
	int n;

	ck_assert_msg(tu_router_start(&R, tu_data(models[0]), args) == 0, "%s", R.log);
	for (int k = 0; k < 3; k++) {
		int ids = k == 1 ? 17 : 16, max_tokens = k == 2 ? 1 : 0;
		n = snprintf(body, sizeof(body), "{\"prompt\":[1");
		for (int i = 1; i < ids; i++)
			n += snprintf(body + n, sizeof(body) - (size_t)n, ",%d", 10 + i);
		snprintf(body + n, sizeof(body) - (size_t)n,
		        "],\"max_tokens\":%d,\"echo\":true,\"logprobs\":0}", max_tokens);
		ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
		if (k == 0) {
			cJSON *j = cJSON_Parse(resp);
			cJSON *lp = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(
			        cJSON_GetObjectItem(j, "choices"), 0), "logprobs"), "token_logprobs");
			ck_assert_msg(status == 200, "status %ld: %s", status, resp);
			ck_assert_int_eq(cJSON_GetArraySize(lp), 16);
			cJSON_Delete(j);
		} else {
			ck_assert_msg(status == 400 && strstr(resp, "context"), "status %ld: %s",
			        status, resp);
		}
		free(resp);
		resp = NULL;
	}
	stop_router();
}
END_TEST

START_TEST(sixteen_concurrent_streams_complete)
{
	pthread_t th[16];
	struct stream_job jobs[16];

	start_local(models[0]);
	for (int i = 0; i < 16; i++) {
		jobs[i] = (struct stream_job){ .i = i % 4 };
		pthread_create(&th[i], NULL, stream_one, &jobs[i]);
	}
	for (int i = 0; i < 16; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < 16; i++) {
		char body[256], *resp = NULL;
		long status;
		ck_assert_int_eq(jobs[i].status, 200);
		ck_assert_msg(jobs[i].done_seen, "stream %d did not end with [DONE]", i);
		/* a stream's text equals the same request without streaming */
		snprintf(body, sizeof(body),
		        "{\"prompt\":\"Stream number %d\",\"max_tokens\":24,\"temperature\":0}", i % 4);
		ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
		char *whole = completion_text(resp);
		ck_assert_str_eq(jobs[i].text, whole);
		free(whole);
		free(resp);
		free(jobs[i].text);
	}
	stop_router();
}
END_TEST

START_TEST(bad_requests_get_errors_and_the_server_keeps_serving)
{
	static const struct {
		const char *path, *body;
		long status;
		const char *needle;
	} cases[] = {
		{ "/v1/completions", "{not json", 400, "JSON" },
		{ "/v1/completions", "[1,2]", 400, NULL },
		{ "/v1/completions", "{\"prompt\": 42}", 400, "prompt" },
		{ "/v1/completions", "{\"prompt\":\"x\",\"model\":\"nope\"}", 404, "nope" },
		{ "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":-5}", 400, "max_tokens" },
		{ "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":100000000}", 400, "max_tokens" },
		{ "/v1/completions", "{\"prompt\":\"x\",\"temperature\":\"hot\"}", 400, "temperature" },
		{ "/v1/completions", "{\"prompt\":[1,2,99999]}", 400, NULL },
		{ "/v1/completions", "{\"prompt\":\"x\",\"routing\":\"nosuch\"}", 400, "routing" },
		/* a whole-prompt policy on a request that generates */
		{ "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":4,\"routing\":\"usmoe\"}", 400, "max_tokens 0" },
		{ "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":4,\"routing\":{\"policy\":\"expert_choice\",\"c\":2}}", 400, "decode" },
		{ "/v1/chat/completions", "{\"messages\":[]}", 400, "messages" },
		{ "/v1/chat/completions", "{\"messages\":[{\"role\":\"pirate\",\"content\":\"x\"}]}", 400, NULL },
		{ "/v1/nothing", "{}", 404, NULL },
	};
	char *resp;
	long status;

	start_local(models[0]);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		resp = NULL;
		ck_assert_int_eq(tu_http(&R, "POST", cases[i].path, cases[i].body, &status, &resp), 0);
		ck_assert_msg(status == cases[i].status, "case %zu (%s): status %ld, want %ld: %s",
		        i, cases[i].body, status, cases[i].status, resp);
		cJSON *j = cJSON_Parse(resp);
		ck_assert_msg(j && cJSON_GetObjectItem(j, "error"), "case %zu: no error envelope: %s", i, resp);
		if (cases[i].needle)
			ck_assert_msg(strstr(resp, cases[i].needle), "case %zu: '%s' not in %s", i,
			        cases[i].needle, resp);
		cJSON_Delete(j);
		free(resp);
	}
	/* an oversize body: 413 */
	size_t big = 9u << 20;
	char *huge = malloc(big + 1);
	memset(huge, 'a', big);
	huge[big] = '\0';
	memcpy(huge, "{\"prompt\":\"", 11);
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", huge, &status, &resp), 0);
	ck_assert_int_eq(status, 413);
	free(resp);
	free(huge);
	/* wrong method */
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "GET", "/v1/completions", NULL, &status, &resp), 0);
	ck_assert_int_eq(status, 405);
	free(resp);
	/* still serving */
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions",
	                         "{\"prompt\":\"x\",\"max_tokens\":2}", &status, &resp), 0);
	ck_assert_int_eq(status, 200);
	free(resp);
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "GET", "/health", NULL, &status, &resp), 0);
	ck_assert_int_eq(status, 200);
	free(resp);
	stop_router();
}
END_TEST

/* Every routing policy serves a request: the ones that route decode steps
 * generate, the whole-prompt ones score a prompt (max_tokens 0), and the
 * statistics name each policy that ran. */
START_TEST(every_routing_policy_serves_a_request)
{
	static const char *const gen[] = { "native", "topk:k=1", "capacity:factor=1.25",
		"sinkhorn", "sinkhorn:kernel=capped", "ssr:p=0.5", "ssr:lambda=1.0",
		"lossfree:u=0.01" };
	static const char *const score[] = { "expert_choice:c=2", "usmoe:budget=0.75" };
	char body[512], *resp;
	long status;

	start_local(models[1]);
	for (size_t i = 0; i < sizeof(gen) / sizeof(gen[0]); i++) {
		snprintf(body, sizeof(body), "{\"prompt\":\"Hello world, the quick brown fox\","
		        "\"max_tokens\":6,\"temperature\":0,\"routing\":\"%s\"}", gen[i]);
		resp = NULL;
		ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
		ck_assert_msg(status == 200, "%s: %ld %s", gen[i], status, resp);
		cJSON *j = cJSON_Parse(resp);
		cJSON *u = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "completion_tokens");
		ck_assert_int_eq(u->valueint, 6);
		cJSON_Delete(j);
		free(resp);
	}
	for (size_t i = 0; i < sizeof(score) / sizeof(score[0]); i++) {
		snprintf(body, sizeof(body), "{\"prompt\":\"Hello world, the quick brown fox\","
		        "\"max_tokens\":0,\"echo\":true,\"logprobs\":0,\"routing\":\"%s\"}",
		        score[i]);
		resp = NULL;
		ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
		ck_assert_msg(status == 200, "%s: %ld %s", score[i], status, resp);
		ck_assert_ptr_nonnull(strstr(resp, "token_logprobs"));
		free(resp);
	}
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "GET", "/v1/stats", NULL, &status, &resp), 0);
	cJSON *j = cJSON_Parse(resp);
	cJSON *rt = cJSON_GetObjectItem(j, "routing");
	ck_assert_int_ge(cJSON_GetArraySize(rt), 8);
	int saw_ot = 0;
	cJSON *p;
	cJSON_ArrayForEach(p, rt)
	{
		ck_assert(cJSON_GetObjectItem(p, "tokens_routed")->valuedouble > 0);
		if (strncmp(p->string, "ssr", 3) == 0 || strncmp(p->string, "sinkhorn", 8) == 0)
			saw_ot += cJSON_GetObjectItem(p, "ot_runs")->valuedouble > 0;
	}
	ck_assert_int_ge(saw_ot, 2);
	cJSON_Delete(j);
	free(resp);
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "GET", "/metrics", NULL, &status, &resp), 0);
	ck_assert_ptr_nonnull(strstr(resp, "epmoe_routing_tokens_total{policy=\"usmoe"));
	ck_assert_ptr_nonnull(strstr(resp, "epmoe_expert_tokens_total{layer=\"1\",expert=\"7\"}"));
	ck_assert_ptr_nonnull(strstr(resp, "epmoe_time_to_first_token_seconds_bucket"));
	free(resp);
	stop_router();
}
END_TEST

struct burst_job {
	long status;
	char *resp;
};

static void *
burst_one(void *arg)
{
	struct burst_job *j = arg;
	tu_http(&R, "POST", "/v1/completions",
	        "{\"prompt\":\"Hello world\",\"max_tokens\":200,\"temperature\":0,"
	        "\"ignore_eos\":true}", &j->status, &j->resp);
	return NULL;
}

/* With one running sequence and a wait queue of one, a burst of requests
 * gets 429s (with the OpenAI error envelope), and the admitted ones
 * complete. */
START_TEST(a_full_wait_queue_answers_429)
{
	const char *args[] = { "--local", "--max-running", "1", "--max-waiting", "1", NULL };
	pthread_t th[8];
	struct burst_job jobs[8];
	int n429 = 0, n200 = 0;

	ck_assert_msg(tu_router_start(&R, tu_data(models[0]), args) == 0, "%s", R.log);
	for (int i = 0; i < 8; i++) {
		jobs[i] = (struct burst_job){ 0 };
		pthread_create(&th[i], NULL, burst_one, &jobs[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		if (jobs[i].status == 429) {
			n429++;
			ck_assert_ptr_nonnull(strstr(jobs[i].resp, "rate_limit_error"));
		} else if (jobs[i].status == 200) {
			n200++;
		}
		free(jobs[i].resp);
	}
	ck_assert_int_ge(n429, 1);
	ck_assert_int_ge(n200, 1);
	ck_assert_int_eq(n429 + n200, 8);
	stop_router();
}
END_TEST

static size_t
abort_after_two(char *d, size_t sz, size_t nm, void *ud)
{
	int *chunks = ud;
	return ++*chunks >= 2 ? 0 : sz * nm; /* 0: curl aborts the transfer */
}

/* A client that disconnects mid-stream cancels its request at the next
 * step: the scheduler counts it as cancelled and nothing keeps running. */
START_TEST(client_disconnect_cancels_the_request)
{
	char url[128], *resp;
	long status;
	int chunks = 0;

	start_local(models[0]);
	CURL *c = curl_easy_init();
	snprintf(url, sizeof(url), "http://%s/v1/completions", R.http);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS,
	        "{\"prompt\":\"Hello\",\"max_tokens\":3000,\"stream\":true,\"ignore_eos\":true}");
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, abort_after_two);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &chunks);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
	ck_assert_int_eq(curl_easy_perform(c), CURLE_WRITE_ERROR);
	curl_easy_cleanup(c);
	int cancelled = 0;
	for (int i = 0; i < 100 && !cancelled; i++) {
		resp = NULL;
		ck_assert_int_eq(tu_http(&R, "GET", "/v1/stats", NULL, &status, &resp), 0);
		cJSON *j = cJSON_Parse(resp);
		cJSON *s = cJSON_GetObjectItem(j, "scheduler");
		cancelled = cJSON_GetObjectItem(s, "requests_cancelled")->valueint == 1 &&
		        cJSON_GetObjectItem(s, "running")->valueint == 0;
		cJSON_Delete(j);
		free(resp);
		if (!cancelled)
			usleep(50000);
	}
	ck_assert_msg(cancelled, "the request was not cancelled");
	stop_router();
}
END_TEST

/* Sends raw bytes over a REQ socket; returns the reply (or NULL). */
static nng_msg *
nng_raw(const char *url, const void *data, size_t len)
{
	nng_socket s;
	nng_msg *m = NULL;

	ck_assert_int_eq(nng_req0_open(&s), 0);
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 5000);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 5000);
	ck_assert_int_eq(nng_dial(s, url, NULL, 0), 0);
	ck_assert_int_eq(nng_send(s, (void *)data, len, 0), 0);
	if (nng_recvmsg(s, &m, 0) != 0)
		m = NULL;
	nng_close(s);
	return m;
}

static Epmoe__ClientReply *
nng_call(const char *url, Epmoe__ClientMsg *cm)
{
	nng_msg *req, *rep;
	ProtobufCMessage *hdr;

	cm->version = EPMOE_PROTO_VERSION;
	ck_assert_int_eq(wire_nng_new(&req, WIRE_CLIENT, &cm->base, 0, NULL), 0);
	rep = nng_raw(url, nng_msg_body(req), nng_msg_len(req));
	nng_msg_free(req);
	ck_assert_ptr_nonnull(rep);
	ck_assert_int_eq(wire_nng_unpack(rep, WIRE_CLIENT_REPLY, &epmoe__client_reply__descriptor,
	                         &hdr, NULL, NULL), 0);
	nng_msg_free(rep);
	return (Epmoe__ClientReply *)hdr;
}

START_TEST(nng_api_completes_and_rejects_garbage)
{
	static const unsigned char garbage[] = { 'E', 'P', 'M', 'W', 1, 4, 0, 0, 0xff, 0xff,
		0xff, 0x7f, 0, 0, 0, 0, 1, 2, 3 };
	nng_msg *rep;

	start_local(models[0]);
	/* garbage, a bare magic, a truncated frame: each gets an error reply */
	const void *bad[3] = { "hello there", garbage, garbage };
	size_t bad_len[3] = { 11, sizeof(garbage), 6 };
	for (int i = 0; i < 3; i++) {
		rep = nng_raw(R.nng_url, bad[i], bad_len[i]);
		ck_assert_msg(rep != NULL, "no reply to garbage %d", i);
		ProtobufCMessage *hdr;
		ck_assert_int_eq(wire_nng_unpack(rep, WIRE_CLIENT_REPLY,
		                         &epmoe__client_reply__descriptor, &hdr, NULL, NULL), 0);
		Epmoe__ClientReply *cr = (Epmoe__ClientReply *)hdr;
		ck_assert_int_eq(cr->msg_case, EPMOE__CLIENT_REPLY__MSG_ERROR);
		ck_assert_int_ne(cr->error->status, EPMOE__STATUS__STATUS_OK);
		protobuf_c_message_free_unpacked(hdr, NULL);
		nng_msg_free(rep);
	}
	/* a real completion over NNG equals the HTTP one */
	Epmoe__ClientMsg cm = EPMOE__CLIENT_MSG__INIT;
	Epmoe__CompletionRequest req = EPMOE__COMPLETION_REQUEST__INIT;
	req.prompt = "Hello world, the quick brown fox";
	req.max_tokens = 12;
	req.temperature_opt_case = EPMOE__COMPLETION_REQUEST__TEMPERATURE_OPT_TEMPERATURE;
	req.temperature = 0;
	cm.msg_case = EPMOE__CLIENT_MSG__MSG_COMPLETE;
	cm.complete = &req;
	Epmoe__ClientReply *cr = nng_call(R.nng_url, &cm);
	ck_assert_int_eq(cr->msg_case, EPMOE__CLIENT_REPLY__MSG_COMPLETION);
	ck_assert(cr->completion->done);
	ck_assert_uint_eq(cr->completion->n_tokens, 12);
	char *resp = NULL;
	long status;
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions",
	                         "{\"prompt\":\"Hello world, the quick brown fox\",\"max_tokens\":12,"
	                         "\"temperature\":0}", &status, &resp), 0);
	char *text = completion_text(resp);
	ck_assert_str_eq(cr->completion->text, text);
	free(text);
	free(resp);
	protobuf_c_message_free_unpacked(&cr->base, NULL);
	/* streamed over NNG: poll until done; the pieces add up */
	req.stream = true;
	cr = nng_call(R.nng_url, &cm);
	ck_assert_int_eq(cr->msg_case, EPMOE__CLIENT_REPLY__MSG_COMPLETION);
	char id[64];
	snprintf(id, sizeof(id), "%s", cr->completion->request_id);
	protobuf_c_message_free_unpacked(&cr->base, NULL);
	uint32_t toff = 0;
	uint64_t xoff = 0;
	int done = 0;
	for (int i = 0; i < 200 && !done; i++) {
		Epmoe__ClientMsg pm = EPMOE__CLIENT_MSG__INIT;
		Epmoe__PollRequest pr = EPMOE__POLL_REQUEST__INIT;
		pr.request_id = id;
		pr.token_offset = toff;
		pr.text_offset = xoff;
		pr.wait_ms = 500;
		pm.msg_case = EPMOE__CLIENT_MSG__MSG_POLL;
		pm.poll = &pr;
		cr = nng_call(R.nng_url, &pm);
		ck_assert_int_eq(cr->msg_case, EPMOE__CLIENT_REPLY__MSG_COMPLETION);
		ck_assert_uint_eq(cr->completion->token_offset, toff);
		toff += (uint32_t)cr->completion->n_tokens;
		xoff += strlen(cr->completion->text);
		done = cr->completion->done;
		protobuf_c_message_free_unpacked(&cr->base, NULL);
	}
	ck_assert(done);
	ck_assert_uint_eq(toff, 12);
	stop_router();
}
END_TEST

/* ---- distributed: real workers ---- */

/* Greedy completions and prompt logprobs with the experts on 1, 2 and 3
 * worker processes equal local generation / the local engine. */
START_TEST(workers_give_the_local_tokens_and_logprobs)
{
	static const char *const nw[] = { "1", "2", "3" };
	const char *args[] = { "--workers", nw[_i % 3], NULL };
	const char *model = models[_i / 3];
	const char *prompt = "Hello world, the quick brown fox";
	char body[256], *resp = NULL;
	long status;

	ck_assert_msg(tu_router_start(&R, tu_data(model), args) == 0, "%s", R.log);
	snprintf(body, sizeof(body),
	        "{\"prompt\":\"%s\",\"max_tokens\":16,\"temperature\":0}", prompt);
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
	ck_assert_msg(status == 200, "status %ld: %s", status, resp);
	char *got = completion_text(resp);
	char *want = local_greedy(model, prompt, 16);
	ck_assert_str_eq(got, want);
	free(got);
	free(want);
	free(resp);
	/* the placement spreads the experts over all the workers */
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "GET", "/v1/placement", NULL, &status, &resp), 0);
	cJSON *j = cJSON_Parse(resp);
	ck_assert_int_eq(cJSON_GetObjectItem(j, "n_workers")->valueint, atoi(nw[_i % 3]));
	cJSON_Delete(j);
	free(resp);
	/* prompt logprobs: within 1e-4 of the local engine (checked by value
	 * against a local router run of the same request) */
	snprintf(body, sizeof(body),
	        "{\"prompt\":\"%s\",\"max_tokens\":0,\"echo\":true,\"logprobs\":0}", prompt);
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
	ck_assert_int_eq(status, 200);
	cJSON *dj = cJSON_Parse(resp);
	free(resp);
	stop_router();
	start_local(model);
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
	cJSON *lj = cJSON_Parse(resp);
	free(resp);
	cJSON *dl = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(
	        cJSON_GetObjectItem(dj, "choices"), 0), "logprobs"), "token_logprobs");
	cJSON *ll = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(
	        cJSON_GetObjectItem(lj, "choices"), 0), "logprobs"), "token_logprobs");
	ck_assert_int_eq(cJSON_GetArraySize(dl), cJSON_GetArraySize(ll));
	for (int i = 1; i < cJSON_GetArraySize(dl); i++)
		ck_assert_double_eq_tol(cJSON_GetArrayItem(dl, i)->valuedouble,
		        cJSON_GetArrayItem(ll, i)->valuedouble, 1e-4);
	cJSON_Delete(dj);
	cJSON_Delete(lj);
	stop_router();
}
END_TEST

/* The cached prompt tokens a completion's usage reports. */
static int
usage_cached(cJSON *j)
{
	cJSON *d = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "prompt_tokens_details");
	cJSON *c = cJSON_GetObjectItem(d, "cached_tokens");
	ck_assert_msg(cJSON_IsNumber(c), "no usage.prompt_tokens_details.cached_tokens");
	return c->valueint;
}

/* Prefix cache, local and with 2 workers (the KV stays on the router):
 * the second of two equal requests reuses the first's prompt blocks,
 * says so in usage, and its tokens' logprobs and alternatives equal the
 * cold run's within 1e-4. */
START_TEST(a_prefix_cache_hit_gives_the_cold_logprobs)
{
	const char *local[] = { "--local", NULL }, *dist[] = { "--workers", "2", NULL };
	const char *body = "{\"prompt\":\"In the beginning God created the heaven and the "
	        "earth. And the earth was without form, and void; and darkness was upon the "
	        "face of the deep.\",\"max_tokens\":6,\"temperature\":0,\"logprobs\":5}";
	cJSON *j[2];
	long status;

	ck_assert_msg(tu_router_start(&R, tu_data(models[0]), _i ? dist : local) == 0, "%s",
	        R.log);
	for (int k = 0; k < 2; k++) {
		char *resp = NULL;
		ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
		ck_assert_msg(status == 200, "status %ld: %s", status, resp);
		j[k] = cJSON_Parse(resp);
		free(resp);
	}
	int n_prompt = cJSON_GetObjectItem(cJSON_GetObjectItem(j[0], "usage"),
	        "prompt_tokens")->valueint;
	ck_assert_int_gt(n_prompt, 16);
	ck_assert_int_eq(usage_cached(j[0]), 0);
	ck_assert_int_eq(usage_cached(j[1]), (n_prompt - 1) / 16 * 16);
	cJSON *lp[2], *top[2];
	for (int k = 0; k < 2; k++) {
		cJSON *l = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j[k],
		        "choices"), 0), "logprobs");
		lp[k] = cJSON_GetObjectItem(l, "token_logprobs");
		top[k] = cJSON_GetObjectItem(l, "top_logprobs");
	}
	ck_assert_int_eq(cJSON_GetArraySize(lp[0]), 6);
	ck_assert_int_eq(cJSON_GetArraySize(lp[1]), 6);
	for (int i = 0; i < 6; i++) {
		ck_assert_double_eq_tol(cJSON_GetArrayItem(lp[0], i)->valuedouble,
		        cJSON_GetArrayItem(lp[1], i)->valuedouble, 1e-4);
		cJSON *a = cJSON_GetArrayItem(top[0], i), *b = cJSON_GetArrayItem(top[1], i);
		ck_assert_int_eq(cJSON_GetArraySize(a), cJSON_GetArraySize(b));
		for (cJSON *x = a->child; x; x = x->next) {
			cJSON *y = cJSON_GetObjectItem(b, x->string);
			ck_assert_msg(y != NULL, "alternative '%s' missing after the hit", x->string);
			ck_assert_double_eq_tol(x->valuedouble, y->valuedouble, 1e-4);
		}
	}
	cJSON_Delete(j[0]);
	cJSON_Delete(j[1]);
	/* /metrics counts the hit */
	char *m = NULL;
	ck_assert_int_eq(tu_http(&R, "GET", "/metrics", NULL, &status, &m), 0);
	ck_assert_msg(strstr(m, "epmoe_prefix_cache_hit_tokens_total") != NULL, "%s", m);
	free(m);
	/* the NNG API's usage says it too: a cold prompt 0, its repeat the
	 * whole blocks before its last token */
	struct epmoe_client *c;
	struct epmoe_gen_params gp;
	char err[256];
	ck_assert_msg(epmoe_client_new(&c, R.nng_url, NULL, err, sizeof(err)) == 0, "%s", err);
	epmoe_gen_params_init(&gp);
	gp.max_tokens = 2;
	gp.temperature = 0;
	for (int k = 0; k < 2; k++) {
		struct epmoe_completion r;
		ck_assert_int_eq(epmoe_complete(c, "And God said, Let there be light: and "
		        "there was light. And God saw the light, that it was good: and God "
		        "divided the light from the darkness.", &gp, NULL, NULL, &r), 0);
		ck_assert_int_eq(r.has_usage, 1);
		ck_assert_int_eq(r.has_cached, 1);
		ck_assert_uint_gt(r.prompt_tokens, 16);
		ck_assert_uint_eq(r.cached_tokens, k == 0 ? 0 : (r.prompt_tokens - 1) / 16 * 16);
		epmoe_completion_fini(&r);
	}
	epmoe_client_free(c);
	stop_router();
}
END_TEST

/* Children of pid (from /proc). */
static int
children_of(pid_t pid, pid_t *out, int cap)
{
	char path[64], buf[512];
	int n = 0;
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return 0;
	if (fgets(buf, sizeof(buf), f)) {
		char *p = buf, *end;
		while (n < cap) {
			long v = strtol(p, &end, 10);
			if (end == p)
				break;
			out[n++] = (pid_t)v;
			p = end;
		}
	}
	fclose(f);
	return n;
}

struct long_job {
	long status;
	char *text;
	int done_seen;
	char *raw;
};

static void *
long_stream(void *arg)
{
	struct long_job *j = arg;
	tu_http(&R, "POST", "/v1/completions",
	        "{\"prompt\":\"Hello\",\"max_tokens\":4000,\"stream\":true,\"ignore_eos\":true}",
	        &j->status, &j->raw);
	return NULL;
}

/* Killing a worker mid-request fails that request cleanly (an error event
 * ends its stream), /health reports the loss, the router restarts the
 * worker, and the next request is served by it again.  (No degraded
 * service here, so the loss stays visible until the restart; the
 * failover suite covers the rest.) */
START_TEST(a_killed_worker_fails_its_step_and_is_used_again)
{
	const char *args[] = { "--workers", "2", "--expert-timeout-ms", "3000",
		"--no-degraded", NULL };
	pthread_t th;
	struct long_job job = { 0 };
	pid_t kids[8];
	char *resp;
	long status;

	ck_assert_msg(tu_router_start(&R, tu_data(models[0]), args) == 0, "%s", R.log);
	ck_assert_int_eq(children_of(R.pid, kids, 8), 2);
	pthread_create(&th, NULL, long_stream, &job);
	usleep(300000);
	kill(kids[0], SIGKILL);
	/* health goes 503, then back to 200 once the worker is restarted */
	int saw_503 = 0, back = 0;
	for (int i = 0; i < 400 && !back; i++) {
		resp = NULL;
		if (tu_http(&R, "GET", "/health", NULL, &status, &resp) == 0) {
			if (status == 503)
				saw_503 = 1;
			else if (status == 200 && saw_503)
				back = 1;
		}
		free(resp);
		usleep(25000);
	}
	pthread_join(th, NULL);
	ck_assert_int_eq(job.status, 200);
	ck_assert_msg(job.raw && strstr(job.raw, "\"error\"") && strstr(job.raw, "worker"),
	        "the stream did not end with an error event");
	free(job.raw);
	if (!saw_503) {
		/* the restart can be quicker than the polling (a few ms on an
		 * idle machine): the cluster's own record of the outage, its
		 * recovery count, proves health said 503 meanwhile */
		cJSON *st = NULL, *fo;
		resp = NULL;
		if (tu_http(&R, "GET", "/v1/stats", NULL, &status, &resp) == 0 && status == 200)
			st = cJSON_Parse(resp);
		free(resp);
		fo = cJSON_GetObjectItem(cJSON_GetObjectItem(st, "workers"), "failover");
		saw_503 = cJSON_GetNumberValue(cJSON_GetObjectItem(fo, "recoveries")) >= 1;
		back = saw_503;
		cJSON_Delete(st);
	}
	ck_assert_msg(saw_503, "health never reported the lost worker");
	ck_assert_msg(back, "the worker did not come back");
	/* served again, by both workers */
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions",
	                         "{\"prompt\":\"Hello world, the quick brown fox\",\"max_tokens\":16,"
	                         "\"temperature\":0}", &status, &resp), 0);
	ck_assert_msg(status == 200, "%ld %s", status, resp);
	char *got = completion_text(resp);
	char *want = local_greedy(models[0], "Hello world, the quick brown fox", 16);
	ck_assert_str_eq(got, want);
	free(got);
	free(want);
	free(resp);
	resp = NULL;
	ck_assert_int_eq(tu_http(&R, "GET", "/v1/stats", NULL, &status, &resp), 0);
	cJSON *j = cJSON_Parse(resp);
	/* the killed worker registered a second time under its index */
	cJSON *ws = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workers"), "workers"), *w;
	int regs = 0;
	cJSON_ArrayForEach(w, ws)
	{
		regs += cJSON_GetObjectItem(w, "registrations")->valueint;
		ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(w, "alive")));
	}
	ck_assert_int_eq(cJSON_GetArraySize(ws), 2);
	ck_assert_int_eq(regs, 3);
	cJSON_Delete(j);
	free(resp);
	stop_router();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("serving");
	TCase *tc = tcase_create("local");

	curl_global_init(CURL_GLOBAL_DEFAULT);
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, greedy_completion_equals_local_generation, 0, 3);
	tcase_add_loop_test(tc, echo_logprobs_equal_local_logits, 0, 3);
	tcase_add_test(tc, a_scoring_request_may_fill_the_context);
	tcase_add_test(tc, sixteen_concurrent_streams_complete);
	tcase_add_test(tc, bad_requests_get_errors_and_the_server_keeps_serving);
	tcase_add_test(tc, nng_api_completes_and_rejects_garbage);
	tcase_add_test(tc, every_routing_policy_serves_a_request);
	tcase_add_test(tc, a_full_wait_queue_answers_429);
	tcase_add_test(tc, client_disconnect_cancels_the_request);
	suite_add_tcase(s, tc);
	TCase *td = tcase_create("distributed");
	tcase_set_timeout(td, 180);
	tcase_add_loop_test(td, workers_give_the_local_tokens_and_logprobs, 0, 9);
	tcase_add_test(td, a_killed_worker_fails_its_step_and_is_used_again);
	tcase_add_loop_test(td, a_prefix_cache_hit_gives_the_cold_logprobs, 0, 2);
	suite_add_tcase(s, td);
	int rc = tu_run(s);
	curl_global_cleanup();
	return rc;
}
