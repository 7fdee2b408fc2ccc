/* The two front ends end to end: a real epmoe-router (local experts) on
 * 127.0.0.1, spoken to over HTTP (libcurl) and NNG (REQ):
 *   - every boundary value of every request field is accepted or refused
 *     alike over HTTP and NNG, with the same message;
 *   - a burst of 64 streams against --max-running 32 --max-waiting 4 gets
 *     32 running at once, 4 waiting and 28 refusals (429, counted by
 *     reason in /metrics);
 *   - 2000 distinct routing specs leave the router's memory where it was
 *     (policy cache and routing statistics bounded);
 *   - logprobs.text_offset of an echoed prompt indexes into the returned
 *     text, over HTTP (whole and streamed) and NNG;
 *   - `epmoe run` prints the text the API returns for the same greedy run.
 * Every wait is bounded. */
#include <cJSON.h>
#include <curl/curl.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "epmoe.pb-c.h"
#include "serve_util.h"
#include "testutil.h"
#include "wire.h"
#include "wire_nng.h"

static const char *const tiny = "mixtral-tiny-f32.gguf";
static const char *const kjv = "models/kjv-moe-best.gguf";
static struct tu_router R;

static void
start(const char *model_path, const char *const *extra)
{
	const char *args[16] = { "--local", "--threads", "1" };
	int n = 3;

	for (int i = 0; extra && extra[i] && n < 15; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	ck_assert_msg(tu_router_start(&R, model_path, args) == 0,
	        "router did not become healthy; log: %s", R.log);
}

static void
stop(void)
{
	tu_router_log(&R);
	int st = tu_router_stop(&R);
	ck_assert_msg(st == 0, "router exit status %d; log: %s", st, R.log);
}

/* One request over NNG; the reply (caller frees with
 * protobuf_c_message_free_unpacked). */
static Epmoe__ClientReply *
nng_call(Epmoe__ClientMsg *cm)
{
	nng_socket s;
	nng_msg *req, *rep = NULL;
	ProtobufCMessage *hdr;

	cm->version = EPMOE_PROTO_VERSION;
	ck_assert_int_eq(wire_nng_new(&req, WIRE_CLIENT, &cm->base, 0, NULL), 0);
	ck_assert_int_eq(nng_req0_open(&s), 0);
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 60000);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 5000);
	ck_assert_int_eq(nng_dial(s, R.nng_url, NULL, 0), 0);
	ck_assert_int_eq(nng_sendmsg(s, req, 0), 0);
	ck_assert_int_eq(nng_recvmsg(s, &rep, 0), 0);
	nng_close(s);
	ck_assert_int_eq(wire_nng_unpack(rep, WIRE_CLIENT_REPLY, &epmoe__client_reply__descriptor,
	                         &hdr, NULL, NULL), 0);
	nng_msg_free(rep);
	return (Epmoe__ClientReply *)hdr;
}

static cJSON *
http_json(const char *method, const char *path, const char *body, long *status)
{
	char *resp = NULL;
	cJSON *j;

	ck_assert_int_eq(tu_http(&R, method, path, body, status, &resp), 0);
	j = cJSON_Parse(resp);
	ck_assert_msg(j != NULL, "%s: not JSON: %s", path, resp);
	free(resp);
	return j;
}

/* ---- the same fields both ways ---- */

struct field_case {
	const char *json;  /* the field as JSON */
	void (*set)(Epmoe__CompletionRequest *cr, double v);
	double v;
	bool ok;
};

static void
set_temp(Epmoe__CompletionRequest *cr, double v)
{
	cr->temperature_opt_case = EPMOE__COMPLETION_REQUEST__TEMPERATURE_OPT_TEMPERATURE;
	cr->temperature = (float)v;
}

static void
set_top_p(Epmoe__CompletionRequest *cr, double v)
{
	cr->top_p_opt_case = EPMOE__COMPLETION_REQUEST__TOP_P_OPT_TOP_P;
	cr->top_p = (float)v;
}

static void
set_min_p(Epmoe__CompletionRequest *cr, double v)
{
	cr->min_p = (float)v;
}

static void
set_top_k(Epmoe__CompletionRequest *cr, double v)
{
	cr->top_k = (uint32_t)v;
}

static void
set_max(Epmoe__CompletionRequest *cr, double v)
{
	cr->max_tokens = (uint32_t)v;
}

static void
set_lp(Epmoe__CompletionRequest *cr, double v)
{
	cr->logprobs_opt_case = EPMOE__COMPLETION_REQUEST__LOGPROBS_OPT_LOGPROBS;
	cr->logprobs = (uint32_t)v;
}

static void
set_stops(Epmoe__CompletionRequest *cr, double v)
{
	static char *stops[] = { "x1", "x2", "x3", "x4", "x5" };
	static char *empty[] = { "" };
	cr->stop = v > 0 ? stops : empty;
	cr->n_stop = v > 0 ? (size_t)v : 1;
}

static void
set_routing(Epmoe__CompletionRequest *cr, double v)
{
	static char *specs[] = { "ssr:lambda=1.5", "nosuch", "usmoe", "topk:k=99" };
	cr->routing_policy = specs[(int)v];
}

static void
set_model(Epmoe__CompletionRequest *cr, double v)
{
	cr->model = v > 0 ? "gpt-4" : "mixtral-tiny-f32";
}

static void
set_ids(Epmoe__CompletionRequest *cr, double v)
{
	static uint32_t ok[] = { 1, 511 }, bad[] = { 1, 512 };
	cr->prompt_tokens = v > 0 ? bad : ok;
	cr->n_prompt_tokens = 2;
}

/* --max-tokens-limit 8; the tiny model's vocabulary is 512 tokens */
static const struct field_case fields[] = {
	{ "\"temperature\": 0", set_temp, 0, true },
	{ "\"temperature\": 2", set_temp, 2, true },
	{ "\"temperature\": 2.5", set_temp, 2.5, false },
	{ "\"temperature\": -0.5", set_temp, -0.5, false },
	{ "\"top_p\": 1", set_top_p, 1, true },
	{ "\"top_p\": 0.25", set_top_p, 0.25, true },
	{ "\"top_p\": 0", set_top_p, 0, false },
	{ "\"top_p\": 1.5", set_top_p, 1.5, false },
	{ "\"min_p\": 1", set_min_p, 1, true },
	{ "\"min_p\": 1.5", set_min_p, 1.5, false },
	{ "\"min_p\": -0.5", set_min_p, -0.5, false },
	{ "\"top_k\": 1", set_top_k, 1, true },
	{ "\"top_k\": 2147483647", set_top_k, 2147483647.0, true },
	{ "\"top_k\": 2147483648", set_top_k, 2147483648.0, false },
	{ "\"max_tokens\": 1", set_max, 1, true },
	{ "\"max_tokens\": 8", set_max, 8, true },
	{ "\"max_tokens\": 9", set_max, 9, false },
	{ "\"logprobs\": 5", set_lp, 5, true },
	{ "\"logprobs\": 6", set_lp, 6, false },
	{ "\"stop\": [\"x1\",\"x2\",\"x3\",\"x4\"]", set_stops, 4, true },
	{ "\"stop\": [\"x1\",\"x2\",\"x3\",\"x4\",\"x5\"]", set_stops, 5, false },
	{ "\"stop\": [\"\"]", set_stops, 0, false },
	{ "\"routing\": \"ssr:lambda=1.5\"", set_routing, 0, true },
	{ "\"routing\": \"nosuch\"", set_routing, 1, false },
	{ "\"routing\": \"usmoe\"", set_routing, 2, false },
	{ "\"routing\": \"topk:k=99\"", set_routing, 3, false },
	{ "\"model\": \"mixtral-tiny-f32\"", set_model, 0, true },
	{ "\"model\": \"gpt-4\"", set_model, 1, false },
	{ "\"prompt\": [1, 511]", set_ids, 0, true },
	{ "\"prompt\": [1, 512]", set_ids, 1, false },
};

START_TEST(every_field_is_accepted_and_refused_alike_over_http_and_nng)
{
	const char *extra[] = { "--max-tokens-limit", "8", NULL };
	char body[512];

	start(tu_data(tiny), extra);
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		const struct field_case *c = &fields[i];
		bool sets_max = strstr(c->json, "max_tokens") != NULL;
		bool sets_prompt = strstr(c->json, "\"prompt\"") != NULL;
		long status;

		snprintf(body, sizeof(body), "{%s%s%s}", c->json,
		        sets_max ? "" : ", \"max_tokens\": 2",
		        sets_prompt ? "" : ", \"prompt\": \"Hello\"");
		cJSON *j = http_json("POST", "/v1/completions", body, &status);
		ck_assert_msg((status == 200) == c->ok, "HTTP %s: %ld", body, status);

		Epmoe__ClientMsg cm = EPMOE__CLIENT_MSG__INIT;
		Epmoe__CompletionRequest cr = EPMOE__COMPLETION_REQUEST__INIT;
		cr.prompt = "Hello";
		cr.max_tokens = 2;
		c->set(&cr, c->v);
		cm.msg_case = EPMOE__CLIENT_MSG__MSG_COMPLETE;
		cm.complete = &cr;
		Epmoe__ClientReply *rep = nng_call(&cm);
		if (c->ok) {
			ck_assert_msg(rep->msg_case == EPMOE__CLIENT_REPLY__MSG_COMPLETION &&
			        rep->completion->done &&
			        rep->completion->status == EPMOE__STATUS__STATUS_OK,
			        "NNG %s refused", c->json);
		} else {
			const cJSON *m = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"),
			        "message");
			ck_assert_msg(rep->msg_case == EPMOE__CLIENT_REPLY__MSG_ERROR,
			        "NNG %s accepted", c->json);
			ck_assert_int_eq(rep->error->status, status == 404 ?
			        EPMOE__STATUS__STATUS_NOT_FOUND : EPMOE__STATUS__STATUS_INVALID);
			ck_assert_msg(cJSON_IsString(m), "%s: no message", body);
			ck_assert_str_eq(rep->error->message, m->valuestring);
		}
		protobuf_c_message_free_unpacked(&rep->base, NULL);
		cJSON_Delete(j);
	}
	stop();
}
END_TEST

/* ---- a burst ---- */

struct burst {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int arrived;   /* responses whose headers are in */
	bool release;  /* the test has looked: the clients may go */
};

struct burst_client {
	struct burst *b;
	long status;
};

/* At the end of the headers: count in, hold the connection (so the
 * request stays in the server) until released, then abort. */
static size_t
burst_header(char *d, size_t sz, size_t nm, void *ud)
{
	struct burst_client *c = ud;
	size_t n = sz * nm;

	if (n >= 12 && strncmp(d, "HTTP/1.", 7) == 0)
		c->status = strtol(d + 9, NULL, 10);
	if (!(n == 2 && d[0] == '\r' && d[1] == '\n'))
		return n;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 120;
	pthread_mutex_lock(&c->b->mu);
	c->b->arrived++;
	pthread_cond_broadcast(&c->b->cv);
	while (!c->b->release && pthread_cond_timedwait(&c->b->cv, &c->b->mu, &until) == 0)
		;
	pthread_mutex_unlock(&c->b->mu);
	return 0;
}

static size_t
discard(char *d, size_t sz, size_t nm, void *ud)
{
	return sz * nm;
}

static void *
burst_one(void *arg)
{
	struct burst_client *c = arg;
	char url[128];
	CURL *h = curl_easy_init();

	snprintf(url, sizeof(url), "http://%s/v1/completions", R.http);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, "{\"prompt\":\"Hello world\","
	        "\"max_tokens\":3000,\"stream\":true,\"ignore_eos\":true}");
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, burst_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, 180L);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_perform(h);
	curl_easy_cleanup(h);
	return NULL;
}

/* The value of a Prometheus sample line starting with name, or -1. */
static double
metric(const char *text, const char *name)
{
	const char *p = strstr(text, name);
	return p ? strtod(p + strlen(name), NULL) : -1;
}

START_TEST(a_burst_of_64_fills_32_slots_and_4_places_before_refusing)
{
	const char *extra[] = { "--max-running", "32", "--max-waiting", "4", NULL };
	struct burst b = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
	struct burst_client cl[64];
	pthread_t th[64];
	int n200 = 0, n429 = 0;
	long status;
	char *resp;

	start(tu_data(tiny), extra);
	for (int i = 0; i < 64; i++) {
		cl[i] = (struct burst_client){ .b = &b };
		ck_assert_int_eq(pthread_create(&th[i], NULL, burst_one, &cl[i]), 0);
	}
	double end = clock_now() + 120;
	pthread_mutex_lock(&b.mu);
	while (b.arrived < 64 && clock_now() < end) {
		struct timespec t;
		clock_gettime(CLOCK_REALTIME, &t);
		t.tv_sec += 1;
		pthread_cond_timedwait(&b.cv, &b.mu, &t);
	}
	int arrived = b.arrived;
	pthread_mutex_unlock(&b.mu);
	/* every response has its status and no request has ended: look */
	cJSON *j = http_json("GET", "/v1/stats", NULL, &status);
	cJSON *s = cJSON_GetObjectItem(j, "scheduler");
	int slots = cJSON_GetObjectItem(s, "slots_used")->valueint;
	int waiting = cJSON_GetObjectItem(s, "waiting")->valueint;
	cJSON_Delete(j);
	pthread_mutex_lock(&b.mu);
	b.release = true;
	pthread_cond_broadcast(&b.cv);
	pthread_mutex_unlock(&b.mu);
	for (int i = 0; i < 64; i++) {
		pthread_join(th[i], NULL);
		n200 += cl[i].status == 200;
		n429 += cl[i].status == 429;
	}
	ck_assert_int_eq(arrived, 64);
	ck_assert_int_eq(slots, 32);
	ck_assert_int_eq(waiting, 4);
	ck_assert_int_eq(n200, 36);
	ck_assert_int_eq(n429, 28);
	ck_assert_int_eq(tu_http(&R, "GET", "/metrics", NULL, &status, &resp), 0);
	ck_assert_double_eq(metric(resp, "epmoe_requests_rejected_total{reason=\"queue_full\"} "),
	        28);
	free(resp);
	stop();
}
END_TEST

/* ---- routing specs ---- */

static long
rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

static size_t
collect(char *d, size_t sz, size_t nm, void *ud)
{
	long *st = ud;
	(void)d;
	*st = 1;
	return sz * nm;
}

/* n completions with distinct routing specs over one connection. */
static void
distinct_specs(int first, int n)
{
	char url[128], body[256];
	CURL *h = curl_easy_init();
	struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
	long got = 0, status = 0;

	snprintf(url, sizeof(url), "http://%s/v1/completions", R.http);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &got);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	for (int i = first; i < first + n; i++) {
		snprintf(body, sizeof(body), "{\"prompt\":\"Hello\",\"max_tokens\":1,"
		        "\"routing\":\"ssr:lambda=%.4f\"}", 1.0 + (i + 1) / 10000.0);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
		ck_assert_int_eq(curl_easy_perform(h), CURLE_OK);
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
		ck_assert_msg(status == 200, "%s: %ld", body, status);
	}
	curl_slist_free_all(hd);
	curl_easy_cleanup(h);
}

START_TEST(distinct_routing_specs_leave_memory_bounded)
{
	long status;

	if (access(kjv, R_OK) != 0)
		return; /* run from the repository's top */
	/* the demo model: 4 layers of 8 experts, what the README measures */
	start(kjv, NULL);
	/* warm up: buffers, the first policies, the metric families */
	distinct_specs(0, 200);
	long before = rss_kib(R.pid);
	distinct_specs(200, 1800);
	long after = rss_kib(R.pid);
	cJSON *j = http_json("GET", "/v1/stats", NULL, &status);
	int cached = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "scheduler"),
	        "policies_cached")->valueint;
	int named = cJSON_GetArraySize(cJSON_GetObjectItem(j, "routing"));
	cJSON *other = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "routing"), "other");
	ck_assert_int_le(cached, 64);
	ck_assert_int_le(named, 64 + 1);
	ck_assert_ptr_nonnull(other);
	cJSON_Delete(j);
	/* ASan keeps freed memory in quarantine: RSS says nothing there */
	if (getenv("ASAN_OPTIONS") == NULL)
		ck_assert_msg(after - before < 4096, "RSS grew by %ld KiB over 1800 specs "
		        "(%ld -> %ld)", after - before, before, after);
	stop();
}
END_TEST

/* ---- text offsets ---- */

static void
assert_offsets(const cJSON *offs, const int *want, int n)
{
	ck_assert_int_ge(cJSON_GetArraySize(offs), n);
	for (int i = 0; i < n; i++)
		ck_assert_msg(cJSON_GetArrayItem(offs, i)->valueint == want[i],
		        "text_offset[%d] = %d, want %d", i,
		        cJSON_GetArrayItem(offs, i)->valueint, want[i]);
}

START_TEST(echo_offsets_index_into_the_returned_text)
{
	/* <s> " In" " the" " beginning" " God" in "In the beginning God" */
	static const int want[] = { 0, 0, 2, 6, 16 };
	const char *body = "{\"prompt\":\"In the beginning God\",\"max_tokens\":2,"
	        "\"echo\":true,\"logprobs\":0,\"temperature\":0}";
	long status;
	char *resp = NULL;

	if (access(kjv, R_OK) != 0)
		return; /* run from the repository's top */
	start(kjv, NULL);
	cJSON *j = http_json("POST", "/v1/completions", body, &status);
	ck_assert_int_eq(status, 200);
	cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
	const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
	cJSON *lp = cJSON_GetObjectItem(c, "logprobs");
	cJSON *offs = cJSON_GetObjectItem(lp, "text_offset");
	assert_offsets(offs, want, 5);
	/* the generated tokens start where the prompt ends */
	ck_assert_int_eq(cJSON_GetArraySize(offs), 7);
	ck_assert_int_eq(cJSON_GetArrayItem(offs, 5)->valueint, 20);
	ck_assert_int_eq(strncmp(text, "In the beginning God", 20), 0);
	cJSON_Delete(j);

	/* streamed: the same offsets, chunk by chunk */
	const char *sbody = "{\"prompt\":\"In the beginning God\",\"max_tokens\":2,"
	        "\"echo\":true,\"logprobs\":0,\"temperature\":0,\"stream\":true}";
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", sbody, &status, &resp), 0);
	cJSON *all = cJSON_CreateArray();
	char *save, *line;
	for (line = strtok_r(resp, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "data: {", 7) != 0)
			continue;
		cJSON *ch = cJSON_Parse(line + 6);
		cJSON *o = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(
		        cJSON_GetObjectItem(ch, "choices"), 0), "logprobs"), "text_offset");
		cJSON *e;
		cJSON_ArrayForEach(e, o)
			cJSON_AddItemToArray(all, cJSON_CreateNumber(e->valuedouble));
		cJSON_Delete(ch);
	}
	free(resp);
	assert_offsets(all, want, 5);
	ck_assert_int_eq(cJSON_GetArrayItem(all, 5)->valueint, 20);
	cJSON_Delete(all);

	/* over NNG: byte offsets into prompt_text */
	Epmoe__ClientMsg cm = EPMOE__CLIENT_MSG__INIT;
	Epmoe__CompletionRequest cr = EPMOE__COMPLETION_REQUEST__INIT;
	cr.prompt = "In the beginning God";
	cr.max_tokens = 2;
	cr.echo = true;
	cr.logprobs_opt_case = EPMOE__COMPLETION_REQUEST__LOGPROBS_OPT_LOGPROBS;
	cr.logprobs = 0;
	cm.msg_case = EPMOE__CLIENT_MSG__MSG_COMPLETE;
	cm.complete = &cr;
	Epmoe__ClientReply *rep = nng_call(&cm);
	ck_assert_int_eq(rep->msg_case, EPMOE__CLIENT_REPLY__MSG_COMPLETION);
	ck_assert_str_eq(rep->completion->prompt_text, "In the beginning God");
	ck_assert_uint_eq(rep->completion->n_prompt_logprobs, 5);
	for (int i = 0; i < 5; i++)
		ck_assert_uint_eq(rep->completion->prompt_logprobs[i]->text_offset,
		        (unsigned)want[i]);
	ck_assert_uint_eq(rep->completion->n_logprobs, rep->completion->n_tokens);
	ck_assert_uint_eq(rep->completion->logprobs[0]->text_offset, 0);
	protobuf_c_message_free_unpacked(&rep->base, NULL);
	stop();
}
END_TEST

/* ---- the CLI and the API agree ---- */

START_TEST(epmoe_run_prints_what_the_api_returns)
{
	const char *prompt = "And God said";
	char cmd[1024], out[4096] = "", body[256];
	long status;
	FILE *p;
	size_t n;

	if (access(kjv, R_OK) != 0)
		return;
	snprintf(cmd, sizeof(cmd), "%s run --model %s -p '%s' -n 8 --temp 0 --threads 1 "
	        "2>/dev/null", tu_bin("epmoe"), kjv, prompt);
	ck_assert_ptr_nonnull(p = popen(cmd, "r"));
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	ck_assert_int_eq(pclose(p), 0);
	ck_assert_msg(n > 0 && out[n - 1] == '\n', "epmoe run printed '%s'", out);
	out[n - 1] = '\0';
	start(kjv, NULL);
	snprintf(body, sizeof(body), "{\"prompt\":\"%s\",\"max_tokens\":8,\"temperature\":0}",
	        prompt);
	cJSON *j = http_json("POST", "/v1/completions", body, &status);
	ck_assert_int_eq(status, 200);
	const char *text = cJSON_GetObjectItem(cJSON_GetArrayItem(
	        cJSON_GetObjectItem(j, "choices"), 0), "text")->valuestring;
	ck_assert_msg(strcmp(out, text) == 0, "epmoe run '%s', API '%s'", out, text);
	ck_assert_int_eq(out[0], ' '); /* the leading space of the first piece */
	cJSON_Delete(j);
	stop();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("frontends");
	TCase *tc = tcase_create("router");

	curl_global_init(CURL_GLOBAL_DEFAULT);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, every_field_is_accepted_and_refused_alike_over_http_and_nng);
	tcase_add_test(tc, a_burst_of_64_fills_32_slots_and_4_places_before_refusing);
	tcase_add_test(tc, distinct_routing_specs_leave_memory_bounded);
	tcase_add_test(tc, echo_offsets_index_into_the_returned_text);
	tcase_add_test(tc, epmoe_run_prints_what_the_api_returns);
	suite_add_tcase(s, tc);
	int rc = tu_run(s);
	curl_global_cleanup();
	return rc;
}
