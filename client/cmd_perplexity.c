/* epmoe perplexity: perplexity of a text file, in process.
 *
 * Two protocols.  "windows" (the default; the trainer in train/ evaluates
 * the same way, so the numbers agree): the whole file is tokenized once
 * without BOS; the token stream is cut into consecutive, non-overlapping
 * windows of ctx-1 tokens; each window is fed as [BOS] + window (a fresh
 * sequence), and every window token is scored given its prefix; the last
 * window may be shorter.  "llama" (llama-perplexity's): the file is
 * tokenized with BOS in front, cut into floor(n / ctx) chunks of ctx
 * tokens (the rest is dropped), the first token of every chunk is
 * replaced by BOS, and only the second half of each chunk is scored
 * (positions ctx/2 .. ctx-2 predicting the next token).  Either way
 * PPL = exp(mean negative log-likelihood) over the scored tokens.  With
 * --url the windows are scored by a running server instead (its
 * placement, replicas and quantized replicas; ppl_remote.c); the model
 * file then only gives the tokenizer. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "cli.h"
#include "cmd.h"
#include "engine.h"
#include "err.h"
#include "model.h"
#include "ppl_remote.h"
#include "route.h"
#include "tok.h"

/* Balance statistics of the policy over the run (engine route observer). */
struct route_acc {
	uint32_t n_expert, n_workers;
	uint64_t calls, tokens, pairs, ot_runs;
	double maxvio_sum, worker_ratio_sum, seconds;
};

static void
on_route(void *ud, struct route_policy *p, uint32_t layer, uint32_t n_tok,
        const struct route_info *info, double seconds)
{
	struct route_acc *a = ud;
	double w[256] = { 0 }, sum = 0, mx = 0;
	uint32_t W = a->n_workers, E = a->n_expert;

	a->calls++;
	a->tokens += n_tok;
	a->pairs += info->n_pairs;
	a->ot_runs += info->ot_ran ? 1 : 0;
	a->seconds += seconds;
	if (isfinite(info->maxvio))
		a->maxvio_sum += info->maxvio;
	/* busiest of W workers holding contiguous blocks of experts */
	for (uint32_t e = 0; e < E; e++)
		w[(uint64_t)e * W / E] += info->load[e];
	for (uint32_t i = 0; i < W; i++) {
		sum += w[i];
		if (w[i] > mx)
			mx = w[i];
	}
	if (sum > 0)
		a->worker_ratio_sum += mx / (sum / W);
}

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: epmoe perplexity --model M --file TEXT [options]\n"
	        "  -m, --model M      GGUF model (env EPMOE_MODEL)\n"
	        "  -f, --file F       text to score\n"
	        "  -c, --ctx N        window length in tokens, BOS included (default 512)\n"
	        "      --protocol P   windows (default: every token of consecutive\n"
	        "                     windows) or llama (llama-perplexity's: chunks of\n"
	        "                     N tokens, BOS first, second half of each scored)\n"
	        "      --max-windows N  score at most N windows / chunks (default: all)\n"
	        "  -t, --threads N    threads (env EPMOE_THREADS; default: all cores)\n"
	        "      --routing P    routing policy spec (default native)\n"
	        "      --workers W    report worker balance as if W workers held\n"
	        "                     contiguous blocks of experts (default 4)\n"
	        "      --kv-type T    KV cache f32 (default) or f16\n"
	        "      --url U        score on the server at U (http://host:port)\n"
	        "                     instead of in process (windows protocol only)\n"
	        "      --api-key K    the server's API key (env EPMOE_API_KEY)\n"
	        "      --json         print the result as one JSON object\n");
}

/* The windows protocol on a server: the model file gives the tokenizer. */
static int
remote(const char *url, const char *key, const char *model, const char *file,
        const char *text, size_t text_len, long ctx, long max_windows, int json)
{
	struct model *m = NULL;
	struct tok *tk = NULL;
	int32_t *ids = NULL, *win = NULL;
	size_t n_ids = 0, scored = 0, windows = 0;
	double sum = 0, t0 = clock_now();
	char err[512];
	int rc = 1;

	if (model_load(&m, model, err, sizeof(err)) != 0 ||
	        tok_load(&tk, m->gguf, err, sizeof(err)) != 0) {
		fprintf(stderr, "epmoe perplexity: %s\n", err);
		goto done;
	}
	if (tok_bos(tk) == TOK_ID_NONE ||
	        tok_encode(tk, text, text_len, 0, &ids, &n_ids) != 0 || n_ids == 0 ||
	        (win = malloc((size_t)ctx * sizeof(*win))) == NULL) {
		fprintf(stderr, "epmoe perplexity: cannot tokenize %s (empty, or no BOS token)\n",
		        file);
		goto done;
	}
	for (size_t at = 0; at < n_ids; at += (size_t)ctx - 1) {
		size_t n = n_ids - at < (size_t)ctx - 1 ? n_ids - at : (size_t)ctx - 1;
		if (max_windows > 0 && windows == (size_t)max_windows)
			break;
		win[0] = tok_bos(tk);
		memcpy(win + 1, ids + at, n * sizeof(*win));
		if (ppl_remote_window(url, key, win, n + 1, &sum, &scored, err, sizeof(err)) != 0) {
			fprintf(stderr, "epmoe perplexity: %s\n", err);
			goto done;
		}
		windows++;
		if (!json && windows % 10 == 0)
			fprintf(stderr, "[%zu windows] ppl %.4f\n", windows, exp(sum / scored));
	}
	double dt = clock_now() - t0;
	if (json)
		printf("{\"url\":\"%s\",\"file\":\"%s\",\"protocol\":\"windows\",\"ctx\":%ld,"
		       "\"windows\":%zu,\"tokens\":%zu,\"nll\":%.6f,\"perplexity\":%.6f,"
		       "\"seconds\":%.3f}\n", url, file, ctx, windows, scored, sum / scored,
		        exp(sum / scored), dt);
	else
		printf("perplexity %.4f over %zu tokens (%zu windows of %ld, scored by %s) in %.1f s\n",
		        exp(sum / scored), scored, windows, ctx, url, dt);
	rc = 0;
done:
	free(ids);
	free(win);
	tok_free(tk);
	model_free(m);
	return rc;
}

/* -log softmax(row)[id] in double */
static double
nll(const float *row, uint32_t V, int32_t id)
{
	float mx = row[0];
	double s = 0;
	for (uint32_t i = 1; i < V; i++)
		if (row[i] > mx)
			mx = row[i];
	for (uint32_t i = 0; i < V; i++)
		s += exp((double)row[i] - mx);
	return log(s) + mx - row[id];
}

int
cmd_perplexity(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "file", required_argument, NULL, 'f' },
		{ "ctx", required_argument, NULL, 'c' },
		{ "max-windows", required_argument, NULL, 'W' },
		{ "threads", required_argument, NULL, 't' },
		{ "routing", required_argument, NULL, 'r' },
		{ "json", no_argument, NULL, 'J' },
		{ "workers", required_argument, NULL, 'w' },
		{ "kv-type", required_argument, NULL, 'V' },
		{ "protocol", required_argument, NULL, 'P' },
		{ "url", required_argument, NULL, 'U' },
		{ "api-key", required_argument, NULL, 'K' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *model = cli_env("EPMOE_MODEL", NULL), *file = NULL;
	const char *routing = NULL, *url = NULL, *key = cli_env("EPMOE_API_KEY", NULL);
	long ctx = 512, threads = 0, max_windows = -1, workers = 4;
	int json = 0, c, rc = 1, llama = 0;
	enum dtype kv_type = DTYPE_F32;
	char *text = NULL, err[512];
	size_t text_len, n_ids = 0;
	int32_t *ids = NULL, *win = NULL;
	struct model *m = NULL;
	struct engine *e = NULL;
	struct tok *tk = NULL;
	struct eng_seq *s = NULL;
	float *logits = NULL;

	if (cli_env("EPMOE_THREADS", NULL))
		cli_long(getenv("EPMOE_THREADS"), 0, 1024, &threads);
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:f:c:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'f': file = optarg; break;
		case 'r': routing = optarg; break;
		case 'U': url = optarg; break;
		case 'K': key = optarg; break;
		case 'J': json = 1; break;
		case 'V':
			if (engine_kv_type_parse(optarg, &kv_type))
				return cli_bad("perplexity", "--kv-type", "expects f32 or f16");
			break;
		case 'P':
			if (strcmp(optarg, "llama") == 0)
				llama = 1;
			else if (strcmp(optarg, "windows") != 0)
				return cli_bad("perplexity", "--protocol", "expects windows or llama");
			break;
		case 'w':
			if (cli_long(optarg, 1, 256, &workers))
				return cli_bad("perplexity", "--workers", "expects 1..256");
			break;
		case 'c':
			if (cli_long(optarg, 2, 1 << 20, &ctx))
				return cli_bad("perplexity", "--ctx", "expects an integer >= 2");
			break;
		case 'W':
			if (cli_long(optarg, 1, 1L << 40, &max_windows))
				return cli_bad("perplexity", "--max-windows", "expects an integer >= 1");
			break;
		case 't':
			if (cli_long(optarg, 0, 1024, &threads))
				return cli_bad("perplexity", "--threads", "expects 0..1024");
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!model || !file) {
		usage(stderr);
		return 2;
	}
	if (url && (llama || routing)) {
		fprintf(stderr, "epmoe perplexity: --url scores with the windows protocol and the server's routing\n");
		return 2;
	}
	if (cli_read_file(file, &text, &text_len)) {
		fprintf(stderr, "epmoe perplexity: cannot read %s\n", file);
		return 1;
	}
	if (url) {
		rc = remote(url, key, model, file, text, text_len, ctx, max_windows, json);
		free(text);
		return rc;
	}
	if (cli_load("perplexity", model, (int)threads, routing, kv_type, &m, &e))
		goto done;
	struct route_acc acc = { .n_expert = m->hp.n_expert, .n_workers = (uint32_t)workers };
	if (acc.n_workers > acc.n_expert)
		acc.n_workers = acc.n_expert;
	engine_set_route_observer(e, on_route, &acc);
	{
		/* the same contiguous worker map for the statistics and for the
		 * policies that balance workers (ssr:lambda) */
		size_t n = (size_t)m->hp.n_layer * m->hp.n_expert;
		uint16_t *map = malloc(n * sizeof(*map));
		if (map == NULL)
			goto done;
		for (size_t i = 0; i < n; i++)
			map[i] = (uint16_t)((i % m->hp.n_expert) * acc.n_workers / m->hp.n_expert);
		engine_set_worker_map(e, map, (int)acc.n_workers);
		free(map);
	}
	if ((uint64_t)ctx > engine_n_ctx(e)) {
		fprintf(stderr, "epmoe perplexity: --ctx %ld exceeds the model's context %u\n",
		        ctx, engine_n_ctx(e));
		goto done;
	}
	if (tok_load(&tk, m->gguf, err, sizeof(err)) != 0) {
		fprintf(stderr, "epmoe perplexity: %s\n", err);
		goto done;
	}
	if (tok_bos(tk) == TOK_ID_NONE) {
		fprintf(stderr, "epmoe perplexity: the model has no BOS token\n");
		goto done;
	}
	if (tok_encode(tk, text, text_len, llama, &ids, &n_ids) != 0 || n_ids == 0) {
		fprintf(stderr, "epmoe perplexity: cannot tokenize %s (empty?)\n", file);
		goto done;
	}
	uint32_t V = m->hp.n_vocab;
	if ((logits = malloc((size_t)ctx * V * sizeof(float))) == NULL ||
	        (win = malloc((size_t)ctx * sizeof(int32_t))) == NULL ||
	        eng_seq_new(e, &s) != 0) {
		fprintf(stderr, "epmoe perplexity: out of memory\n");
		goto done;
	}
	double sum = 0, t0 = clock_now();
	size_t scored = 0, windows = 0;
	if (llama && n_ids < 2 * (size_t)ctx) {
		fprintf(stderr, "epmoe perplexity: %zu tokens; the llama protocol needs at "
		                "least 2 * ctx = %ld\n", n_ids, 2 * ctx);
		goto done;
	}
	for (size_t at = 0; llama && at + (size_t)ctx <= n_ids; at += (size_t)ctx) {
		if (max_windows > 0 && windows == (size_t)max_windows)
			break;
		memcpy(win, ids + at, (size_t)ctx * sizeof(int32_t));
		win[0] = tok_bos(tk);
		eng_seq_truncate(s, 0);
		struct eng_item it = { .seq = s, .tokens = win, .n_tokens = (uint32_t)ctx,
			.logits = ENG_LOGITS_ALL, .out = logits };
		if ((rc = engine_step(e, &it, 1)) != 0) {
			fprintf(stderr, "epmoe perplexity: %s\n", epmoe_strerror(rc));
			rc = 1;
			goto done;
		}
		for (size_t i = (size_t)ctx / 2; i + 1 < (size_t)ctx; i++)
			sum += nll(logits + i * V, V, win[i + 1]);
		scored += (size_t)ctx - 1 - (size_t)ctx / 2;
		windows++;
		if (!json && (windows % 10 == 0))
			fprintf(stderr, "[%zu chunks] ppl %.4f\n", windows, exp(sum / scored));
	}
	for (size_t at = 0; !llama && at < n_ids; at += (size_t)ctx - 1) {
		size_t n = n_ids - at < (size_t)ctx - 1 ? n_ids - at : (size_t)ctx - 1;
		if (max_windows > 0 && windows == (size_t)max_windows)
			break;
		win[0] = tok_bos(tk);
		memcpy(win + 1, ids + at, n * sizeof(int32_t));
		eng_seq_truncate(s, 0);
		/* the last position predicts nothing inside the window */
		struct eng_item it = { .seq = s, .tokens = win, .n_tokens = (uint32_t)n + 1,
			.logits = ENG_LOGITS_ALL, .out = logits };
		if ((rc = engine_step(e, &it, 1)) != 0) {
			fprintf(stderr, "epmoe perplexity: %s\n", epmoe_strerror(rc));
			rc = 1;
			goto done;
		}
		for (size_t i = 0; i < n; i++)
			sum += nll(logits + i * V, V, win[i + 1]);
		scored += n;
		windows++;
		if (!json && (windows % 10 == 0))
			fprintf(stderr, "[%zu windows] ppl %.4f\n", windows, exp(sum / scored));
	}
	double dt = clock_now() - t0, ppl = exp(sum / (double)scored);
	const struct engine_timing *tm = engine_timing(e);
	double calls = acc.calls ? (double)acc.calls : 1;
	if (json)
		printf("{\"model\":\"%s\",\"file\":\"%s\",\"routing\":\"%s\",\"protocol\":\"%s\",\"ctx\":%ld,"
		       "\"windows\":%zu,\"tokens\":%zu,\"nll\":%.6f,\"perplexity\":%.6f,"
		       "\"seconds\":%.3f,\"tokens_per_s\":%.1f,\"maxvio\":%.4f,"
		       "\"worker_max_over_mean\":%.4f,\"workers\":%u,\"experts_per_token\":%.4f,"
		       "\"ot_runs\":%llu,\"route_calls\":%llu,\"route_s\":%.4f,\"moe_s\":%.4f,"
		       "\"route_over_moe\":%.5f}\n",
		        model, file, routing ? routing : "native", llama ? "llama" : "windows",
		        ctx, windows, scored,
		        sum / scored, ppl, dt, (scored + windows) / dt, acc.maxvio_sum / calls,
		        acc.worker_ratio_sum / calls, acc.n_workers,
		        acc.tokens ? (double)acc.pairs / acc.tokens : 0,
		        (unsigned long long)acc.ot_runs, (unsigned long long)acc.calls,
		        acc.seconds, tm->moe, tm->moe > 0 ? acc.seconds / tm->moe : 0);
	else
		printf("perplexity %.4f over %zu tokens (%zu %s of %ld, routing %s) in %.1f s"
		       " (%.1f tok/s); MaxVio %.3f, worker max/mean %.3f (%u workers),"
		       " experts/token %.3f, OT runs %llu/%llu\n",
		        ppl, scored, windows, llama ? "llama-protocol chunks" : "windows", ctx,
		        routing ? routing : "native", dt,
		        (scored + windows) / dt, acc.maxvio_sum / calls,
		        acc.worker_ratio_sum / calls, acc.n_workers,
		        acc.tokens ? (double)acc.pairs / acc.tokens : 0,
		        (unsigned long long)acc.ot_runs, (unsigned long long)acc.calls);
	rc = 0;
done:
	free(text);
	free(ids);
	free(win);
	free(logits);
	eng_seq_free(s);
	tok_free(tk);
	engine_free(e);
	model_free(m);
	return rc ? 1 : 0;
}
