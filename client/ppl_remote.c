/* Scoring token windows on a running server, for epmoe perplexity --url:
 * one POST /v1/completions per window with the window as a token array,
 * max_tokens 0, echo and logprobs, and the sum of the returned prompt
 * token log-probabilities (the first token has none).  The server then
 * computes what the in-process path would, through its own placement:
 * workers, replicas, quantized replicas. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ppl_remote.h"

/* Responses are bounded: a window's echo is a few hundred bytes a token. */
#define MAX_RESPONSE (64u << 20)

struct buf {
	char *p;
	size_t n;
	bool over;
};

static size_t
on_write(char *data, size_t size, size_t nmemb, void *ud)
{
	struct buf *b = ud;
	size_t k = size * nmemb;
	char *p;

	if (b->n + k > MAX_RESPONSE) {
		b->over = true;
		return 0;
	}
	if ((p = realloc(b->p, b->n + k + 1)) == NULL)
		return 0;
	memcpy(p + b->n, data, k);
	b->p = p;
	b->n += k;
	p[b->n] = '\0';
	return k;
}

static char *
request_body(const int32_t *ids, size_t n, const char *model)
{
	cJSON *j = cJSON_CreateObject(), *a;
	char *s = NULL;

	if (j == NULL)
		return NULL;
	if ((a = cJSON_AddArrayToObject(j, "prompt")) != NULL) {
		for (size_t i = 0; i < n; i++)
			cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
		if (cJSON_GetArraySize(a) == (int)n && (!model ||
		        cJSON_AddStringToObject(j, "model", model)) &&
		        cJSON_AddNumberToObject(j, "max_tokens", 0) &&
		        cJSON_AddTrueToObject(j, "echo") &&
		        cJSON_AddNumberToObject(j, "logprobs", 0) &&
		        cJSON_AddNumberToObject(j, "temperature", 0))
			s = cJSON_PrintUnformatted(j);
	}
	cJSON_Delete(j);
	return s;
}

int
ppl_remote_window(const char *url, const char *api_key, const int32_t *ids,
        size_t n, double *nll, size_t *scored, char *err, size_t err_len)
{
	char full[1024], auth[600], *body;
	struct curl_slist *h = NULL;
	struct buf b = { 0 };
	long status = 0;
	int rc = -1;
	CURL *c;

	snprintf(full, sizeof(full), "%s/v1/completions", url);
	if ((body = request_body(ids, n, NULL)) == NULL || (c = curl_easy_init()) == NULL) {
		snprintf(err, err_len, "out of memory");
		free(body);
		return -1;
	}
	h = curl_slist_append(h, "Content-Type: application/json");
	if (api_key) {
		snprintf(auth, sizeof(auth), "Authorization: Bearer %s", api_key);
		h = curl_slist_append(h, auth);
	}
	curl_easy_setopt(c, CURLOPT_URL, full);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 600L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	CURLcode cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	if (cc != CURLE_OK) {
		snprintf(err, err_len, "%s: %s", full, b.over ? "response too large" :
		        curl_easy_strerror(cc));
	} else if (status != 200) {
		snprintf(err, err_len, "%s: HTTP %ld: %.300s", full, status, b.p ? b.p : "");
	} else {
		cJSON *j = cJSON_ParseWithLength(b.p ? b.p : "", b.n);
		cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
		cJSON *lp = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"),
		        "token_logprobs");
		int m = cJSON_GetArraySize(lp);
		if (!cJSON_IsArray(lp) || m < (int)n) {
			snprintf(err, err_len, "%s: no token_logprobs for the %zu prompt tokens",
			        full, n);
		} else {
			double s = 0;
			bool ok = true;
			for (int i = 1; i < (int)n; i++) {
				cJSON *v = cJSON_GetArrayItem(lp, i);
				ok &= cJSON_IsNumber(v);
				s -= cJSON_IsNumber(v) ? v->valuedouble : 0;
			}
			if (!ok) {
				snprintf(err, err_len, "%s: a prompt token's log-probability is missing",
				        full);
			} else {
				*nll += s;
				*scored += n - 1;
				rc = 0;
			}
		}
		cJSON_Delete(j);
	}
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	free(body);
	free(b.p);
	return rc;
}
