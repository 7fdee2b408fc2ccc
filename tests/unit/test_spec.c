/* The speculative pre-scheduler in the router (--spec, --affinity):
 *   - --spec values parse (parts joined by '+'), junk is refused;
 *   - predictions never change outputs: greedy tokens and their logprobs
 *     through a real router and 2 workers are the same with --spec off
 *     and --spec all (grouped placement from an affinity file made here),
 *     and /v1/stats and /metrics report per-layer hit rates, the
 *     prefetch hints sent and the experts the workers paged in on them;
 *   - --spec cobatch (two micro-batches in flight) gives the same greedy
 *     tokens for several concurrent requests as --spec off;
 *   - an affinity file made for another model stops the router with a
 *     message naming it. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "affinity.h"
#include "engine.h"
#include "err.h"
#include "model.h"
#include "router.h"
#include "serve_util.h"
#include "testutil.h"
#include "tok.h"

#define MODEL "mixtral-tiny-f32.gguf"

START_TEST(spec_values_parse)
{
	unsigned s = 99;
	char buf[64];

	ck_assert_int_eq(router_spec_parse("off", &s), 0);
	ck_assert_uint_eq(s, 0);
	ck_assert_int_eq(router_spec_parse("all", &s), 0);
	ck_assert_uint_eq(s, ROUTER_SPEC_ALL);
	ck_assert_int_eq(router_spec_parse("cobatch+prefetch", &s), 0);
	ck_assert_uint_eq(s, ROUTER_SPEC_COBATCH | ROUTER_SPEC_PREFETCH);
	ck_assert_str_eq(router_spec_name(s, buf, sizeof(buf)), "cobatch+prefetch");
	ck_assert_int_eq(router_spec_parse("predict+group", &s), 0);
	ck_assert_uint_eq(s, ROUTER_SPEC_PREDICT | ROUTER_SPEC_GROUP);
	ck_assert_str_eq(router_spec_name(s, buf, sizeof(buf)), "predict+group");
	ck_assert_str_eq(router_spec_name(0, buf, sizeof(buf)), "off");
	ck_assert_str_eq(router_spec_name(ROUTER_SPEC_ALL, buf, sizeof(buf)), "all");
	s = 42;
	ck_assert_int_eq(router_spec_parse("", &s), EPMOE_EINVAL);
	ck_assert_int_eq(router_spec_parse("predict+", &s), EPMOE_EINVAL);
	ck_assert_int_eq(router_spec_parse("fast", &s), EPMOE_EINVAL);
	ck_assert_int_eq(router_spec_parse("predictx", &s), EPMOE_EINVAL);
	ck_assert_uint_eq(s, 42);
}
END_TEST

/* An affinity file for MODEL from a short text run in process. */
static void
make_affinity(const char *path, int other_shape)
{
	static const char *text =
	        "In the beginning God created the heaven and the earth. And the earth "
	        "was without form, and void; and darkness was upon the face of the deep.";
	struct model *m;
	struct engine *e;
	struct tok *tk;
	struct eng_seq *s;
	struct affinity *a;
	char err[256];
	int32_t *ids;
	size_t n;

	ck_assert_int_eq(model_load(&m, tu_data(MODEL), err, sizeof(err)), 0);
	ck_assert_int_eq(engine_new(&e, m, NULL, err, sizeof(err)), 0);
	ck_assert_int_eq(tok_load(&tk, m->gguf, err, sizeof(err)), 0);
	ck_assert_int_eq(tok_encode(tk, text, strlen(text), TOK_ADD_BOS, &ids, &n), 0);
	ck_assert_int_eq(affinity_new(&a, m->hp.n_layer + (other_shape ? 1 : 0),
	        m->hp.n_expert, m->hp.n_vocab, 0), 0);
	if (!other_shape) {
		engine_set_affinity(e, a);
		ck_assert_int_eq(eng_seq_new(e, &s), 0);
		struct eng_item it = { .seq = s, .tokens = ids, .n_tokens = (uint32_t)n,
			.logits = ENG_LOGITS_NONE };
		ck_assert_int_eq(engine_step(e, &it, 1), 0);
		eng_seq_free(s);
	}
	ck_assert_int_eq(affinity_save(a, path, err, sizeof(err)), 0);
	affinity_free(a);
	free(ids);
	tok_free(tk);
	engine_free(e);
	model_free(m);
}

struct run {
	char *text;
	double lp[16];
	int n_lp;
	cJSON *stats;
	char *metrics;
};

/* The spec.prefetch object of /v1/stats (owned by *root). */
static cJSON *
prefetch_stats(struct tu_router *R, cJSON **root)
{
	char *resp = NULL;
	long status;

	ck_assert_int_eq(tu_http(R, "GET", "/v1/stats", NULL, &status, &resp), 0);
	ck_assert_int_eq(status, 200);
	*root = cJSON_Parse(resp);
	free(resp);
	ck_assert_ptr_nonnull(*root);
	return cJSON_GetObjectItem(cJSON_GetObjectItem(*root, "spec"), "prefetch");
}

/* wait_paged: waits (10 s at most) for the workers' load reports to say
 * they paged in experts on the router's prefetch hints. */
static void
serve_once(const char *const *args, struct run *out, bool wait_paged)
{
	struct tu_router R;
	const char *body = "{\"prompt\":\"And God said, Let there be\",\"max_tokens\":12,"
	                   "\"temperature\":0,\"logprobs\":1}";
	char *resp = NULL;
	long status;
	cJSON *j, *c, *lp;

	ck_assert_msg(tu_router_start(&R, tu_data(MODEL), args) == 0,
	        "router did not become healthy; log: %s", R.log);
	ck_assert_int_eq(tu_http(&R, "POST", "/v1/completions", body, &status, &resp), 0);
	ck_assert_msg(status == 200, "status %ld: %s", status, resp);
	j = cJSON_Parse(resp);
	c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
	out->text = strdup(cJSON_GetObjectItem(c, "text")->valuestring);
	lp = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "logprobs"), "token_logprobs");
	ck_assert_ptr_nonnull(lp);
	out->n_lp = cJSON_GetArraySize(lp);
	ck_assert_int_le(out->n_lp, 16);
	for (int i = 0; i < out->n_lp; i++)
		out->lp[i] = cJSON_GetArrayItem(lp, i)->valuedouble;
	cJSON_Delete(j);
	free(resp);
	for (int i = 0; wait_paged && i < 100; i++) {
		cJSON *root, *pf = prefetch_stats(&R, &root);
		cJSON *paged = cJSON_GetObjectItem(pf, "paged_experts");
		bool done = paged && paged->valuedouble > 0;
		cJSON_Delete(root);
		if (done)
			break;
		usleep(100 * 1000);
	}
	ck_assert_int_eq(tu_http(&R, "GET", "/v1/stats", NULL, &status, &resp), 0);
	ck_assert_int_eq(status, 200);
	out->stats = cJSON_Parse(resp);
	free(resp);
	ck_assert_int_eq(tu_http(&R, "GET", "/metrics", NULL, &status, &resp), 0);
	ck_assert_int_eq(status, 200);
	out->metrics = resp;
	tu_router_log(&R);
	ck_assert_int_eq(tu_router_stop(&R), 0);
}

START_TEST(spec_on_and_off_give_identical_tokens_through_workers)
{
	char path[64];
	struct run off, on;
	const char *args_off[] = { "--workers", "2", "--spec", "off", NULL };
	const char *args_on[] = { "--workers", "2", "--spec", "all", "--affinity", path, NULL };
	cJSON *sp, *layers;

	snprintf(path, sizeof(path), "/tmp/test_spec_%ld.aff", (long)getpid());
	make_affinity(path, 0);
	serve_once(args_off, &off, false);
	serve_once(args_on, &on, true);
	unlink(path);
	ck_assert_str_eq(on.text, off.text);
	ck_assert_int_eq(on.n_lp, off.n_lp);
	ck_assert_int_gt(on.n_lp, 0);
	/* the grouped placement adds worker partial sums in another order */
	for (int i = 0; i < on.n_lp; i++)
		ck_assert_msg(fabs(on.lp[i] - off.lp[i]) <= 1e-4, "logprob %d: %g vs %g", i,
		        on.lp[i], off.lp[i]);
	sp = cJSON_GetObjectItem(off.stats, "spec");
	ck_assert_str_eq(cJSON_GetObjectItem(sp, "mode")->valuestring, "off");
	ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(sp, "predicting")));
	ck_assert_ptr_null(strstr(off.metrics, "epmoe_spec_hit_rate"));
	sp = cJSON_GetObjectItem(on.stats, "spec");
	ck_assert_str_eq(cJSON_GetObjectItem(sp, "mode")->valuestring, "all");
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(sp, "predicting")));
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(sp, "grouped_placement")));
	layers = cJSON_GetObjectItem(sp, "layers");
	ck_assert_int_gt(cJSON_GetArraySize(layers), 0);
	for (int l = 0; l < cJSON_GetArraySize(layers); l++) {
		cJSON *o = cJSON_GetArrayItem(layers, l);
		double h0 = cJSON_GetObjectItem(o, "hit_rate_token")->valuedouble;
		double h1 = cJSON_GetObjectItem(o, "hit_rate_token_prev")->valuedouble;
		ck_assert_double_gt(cJSON_GetObjectItem(o, "pairs")->valuedouble, 0);
		ck_assert(h0 >= 0 && h0 <= 1 && h1 >= 0 && h1 <= 1);
	}
	/* the prompt's tokens were in the calibration text: some hits */
	ck_assert_double_gt(cJSON_GetObjectItem(sp, "hit_rate_token")->valuedouble, 0);
	ck_assert_ptr_nonnull(strstr(on.metrics, "epmoe_spec_hit_rate{layer=\"0\",predictor=\"token\"}"));
	ck_assert_ptr_nonnull(strstr(on.metrics, "epmoe_spec_pairs_total{layer=\"0\"}"));
	/* prefetch hints: sent with the batches, paged in by the workers */
	sp = cJSON_GetObjectItem(cJSON_GetObjectItem(off.stats, "spec"), "prefetch");
	ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(sp, "on")));
	ck_assert_double_eq(cJSON_GetObjectItem(sp, "hinted_requests")->valuedouble, 0);
	ck_assert_double_eq(cJSON_GetObjectItem(sp, "paged_experts")->valuedouble, 0);
	sp = cJSON_GetObjectItem(cJSON_GetObjectItem(on.stats, "spec"), "prefetch");
	ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(sp, "on")));
	ck_assert_double_gt(cJSON_GetObjectItem(sp, "hinted_requests")->valuedouble, 0);
	ck_assert_double_ge(cJSON_GetObjectItem(sp, "hinted_experts")->valuedouble,
	        cJSON_GetObjectItem(sp, "hinted_requests")->valuedouble);
	ck_assert_double_gt(cJSON_GetObjectItem(sp, "paged_experts")->valuedouble, 0);
	ck_assert_double_gt(cJSON_GetObjectItem(sp, "paged_bytes")->valuedouble, 0);
	ck_assert_ptr_nonnull(strstr(on.metrics, "epmoe_spec_prefetch_requests_total"));
	ck_assert_ptr_null(strstr(off.metrics, "epmoe_spec_prefetch_requests_total"));
	free(on.text);
	free(off.text);
	free(on.metrics);
	free(off.metrics);
	cJSON_Delete(on.stats);
	cJSON_Delete(off.stats);
}
END_TEST

/* Several greedy completions at once (so steps hold several sequences
 * and split into two micro-batches); their texts and logprobs. */
#define N_PAR 4

struct par {
	char *text[N_PAR];
	double lp[N_PAR][16];
	int n_lp[N_PAR];
	cJSON *stats;
};

static void
serve_parallel(const char *const *args, struct par *out)
{
	static const char *prompts[N_PAR] = { "And God said, Let there be",
		"In the beginning", "The earth was without form", "Let the waters" };
	struct tu_router R;
	char body[N_PAR][256];
	const char *bodies[N_PAR];
	char *resp[N_PAR] = { NULL };
	long status[N_PAR];
	char *st = NULL;
	long s1;

	ck_assert_msg(tu_router_start(&R, tu_data(MODEL), args) == 0,
	        "router did not become healthy; log: %s", R.log);
	for (int i = 0; i < N_PAR; i++) {
		snprintf(body[i], sizeof(body[i]), "{\"prompt\":\"%s\",\"max_tokens\":10,"
		        "\"temperature\":0,\"logprobs\":1}", prompts[i]);
		bodies[i] = body[i];
	}
	ck_assert_int_eq(tu_http_parallel(&R, "/v1/completions", bodies, N_PAR, status, resp), 0);
	for (int i = 0; i < N_PAR; i++) {
		cJSON *j, *c, *lp;
		ck_assert_msg(status[i] == 200, "status %ld: %s", status[i], resp[i]);
		j = cJSON_Parse(resp[i]);
		c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
		out->text[i] = strdup(cJSON_GetObjectItem(c, "text")->valuestring);
		lp = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "logprobs"), "token_logprobs");
		ck_assert_ptr_nonnull(lp);
		out->n_lp[i] = cJSON_GetArraySize(lp);
		ck_assert_int_le(out->n_lp[i], 16);
		for (int k = 0; k < out->n_lp[i]; k++)
			out->lp[i][k] = cJSON_GetArrayItem(lp, k)->valuedouble;
		cJSON_Delete(j);
		free(resp[i]);
	}
	ck_assert_int_eq(tu_http(&R, "GET", "/v1/stats", NULL, &s1, &st), 0);
	ck_assert_int_eq(s1, 200);
	out->stats = cJSON_Parse(st);
	free(st);
	tu_router_log(&R);
	ck_assert_int_eq(tu_router_stop(&R), 0);
}

/* --spec cobatch splits steps of several sequences into two micro-batches
 * in flight at once on the workers: the same greedy tokens as --spec off,
 * logprobs within 1e-4 (the halves' products may block rows differently). */
START_TEST(cobatch_gives_identical_tokens_through_workers)
{
	struct par off, on;
	const char *args_off[] = { "--workers", "2", "--spec", "off", NULL };
	const char *args_on[] = { "--workers", "2", "--spec", "cobatch", NULL };
	cJSON *mb;

	serve_parallel(args_off, &off);
	serve_parallel(args_on, &on);
	for (int i = 0; i < N_PAR; i++) {
		ck_assert_str_eq(on.text[i], off.text[i]);
		ck_assert_int_eq(on.n_lp[i], off.n_lp[i]);
		ck_assert_int_gt(on.n_lp[i], 0);
		for (int k = 0; k < on.n_lp[i]; k++)
			ck_assert_msg(fabs(on.lp[i][k] - off.lp[i][k]) <= 1e-4,
			        "request %d logprob %d: %g vs %g", i, k, on.lp[i][k], off.lp[i][k]);
		free(on.text[i]);
		free(off.text[i]);
	}
	mb = cJSON_GetObjectItem(cJSON_GetObjectItem(on.stats, "spec"), "microbatch");
	ck_assert_ptr_nonnull(mb);
	ck_assert_double_gt(cJSON_GetObjectItem(mb, "split_steps")->valuedouble, 0);
	mb = cJSON_GetObjectItem(cJSON_GetObjectItem(off.stats, "spec"), "microbatch");
	ck_assert_ptr_nonnull(mb);
	ck_assert_double_eq(cJSON_GetObjectItem(mb, "split_steps")->valuedouble, 0);
	cJSON_Delete(on.stats);
	cJSON_Delete(off.stats);
}
END_TEST

START_TEST(affinity_file_of_another_model_is_refused)
{
	struct tu_router R;
	char path[64];
	const char *args[] = { "--local", "--spec", "predict", "--affinity", path, NULL };

	snprintf(path, sizeof(path), "/tmp/test_spec_bad_%ld.aff", (long)getpid());
	make_affinity(path, 1);
	ck_assert_int_ne(tu_router_start_wait(&R, tu_data(MODEL), args, 30, 1), 0);
	unlink(path);
	tu_router_log(&R);
	ck_assert_msg(strstr(R.log, "--affinity") && strstr(R.log, "made for"),
	        "log: %s", R.log);
	tu_router_stop(&R);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("spec");
	TCase *t = tcase_create("router");

	tcase_set_timeout(t, 120);
	tcase_add_test(t, spec_values_parse);
	tcase_add_test(t, spec_on_and_off_give_identical_tokens_through_workers);
	tcase_add_test(t, cobatch_gives_identical_tokens_through_workers);
	tcase_add_test(t, affinity_file_of_another_model_is_refused);
	suite_add_tcase(s, t);
	return tu_run(s);
}
