/* Router process helpers for the serving suites.  See serve_util.h. */
#include <arpa/inet.h>
#include <cJSON.h>
#include <check.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "serve_util.h"
#include "testutil.h"

int
tu_free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t l = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	        getsockname(fd, (struct sockaddr *)&a, &l) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

void
tu_router_log(struct tu_router *R)
{
	FILE *f = fopen(R->logpath, "rb");
	long n;

	R->log[0] = '\0';
	if (f == NULL)
		return;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, n > (long)sizeof(R->log) - 1 ? n - (long)sizeof(R->log) + 1 : 0, SEEK_SET);
	n = (long)fread(R->log, 1, sizeof(R->log) - 1, f);
	R->log[n > 0 ? n : 0] = '\0';
	fclose(f);
}

struct buf {
	char *p;
	size_t n;
};

static size_t
on_data(char *d, size_t sz, size_t nm, void *ud)
{
	struct buf *b = ud;
	char *np = realloc(b->p, b->n + sz * nm + 1);
	if (np == NULL)
		return 0;
	b->p = np;
	memcpy(b->p + b->n, d, sz * nm);
	b->n += sz * nm;
	b->p[b->n] = '\0';
	return sz * nm;
}

int
tu_http(struct tu_router *R, const char *method, const char *path,
        const char *body, long *status, char **resp)
{
	CURL *c = curl_easy_init();
	struct buf b = { calloc(1, 1), 0 };
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	char url[256];
	CURLcode rc;

	snprintf(url, sizeof(url), "http://%s%s", R->http, path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	if (body)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	rc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	if (rc != CURLE_OK) {
		free(b.p);
		*resp = NULL;
		return -1;
	}
	*resp = b.p;
	return 0;
}

struct par_call {
	struct tu_router *R;
	const char *path, *body;
	long *status;
	char **resp;
	int rc;
};

static void *
par_main(void *arg)
{
	struct par_call *p = arg;
	p->rc = tu_http(p->R, "POST", p->path, p->body, p->status, p->resp);
	return NULL;
}

int
tu_http_parallel(struct tu_router *R, const char *path,
        const char *const *bodies, int n, long *status, char **resp)
{
	pthread_t th[64];
	struct par_call pc[64];
	int rc = 0, started = 0;

	if (n > 64)
		return -1;
	for (int i = 0; i < n; i++) {
		pc[i] = (struct par_call){ R, path, bodies[i], &status[i], &resp[i], -1 };
		resp[i] = NULL;
		status[i] = 0;
		if (pthread_create(&th[i], NULL, par_main, &pc[i]) != 0)
			break;
		started++;
	}
	for (int i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		rc |= pc[i].rc;
	}
	return started == n ? rc : -1;
}

int
tu_sse(struct tu_router *R, const char *path, const char *body, long *status,
        char **text, int *done_seen)
{
	char *resp = NULL, *line, *save;
	size_t len = 0;
	char *out = calloc(1, 1);

	*done_seen = 0;
	if (tu_http(R, "POST", path, body, status, &resp) != 0) {
		*text = out;
		return -1;
	}
	for (line = strtok_r(resp, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "data: ", 6) != 0)
			continue;
		if (strcmp(line + 6, "[DONE]") == 0) {
			*done_seen = 1;
			continue;
		}
		cJSON *j = cJSON_Parse(line + 6);
		cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
		cJSON *t = cJSON_GetObjectItem(ch, "text");
		if (!cJSON_IsString(t))
			t = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "delta"), "content");
		if (cJSON_IsString(t)) {
			size_t l = strlen(t->valuestring);
			char *no = realloc(out, len + l + 1);
			if (no) {
				out = no;
				memcpy(out + len, t->valuestring, l + 1);
				len += l;
			}
		}
		cJSON_Delete(j);
	}
	free(resp);
	*text = out;
	return 0;
}

long
tu_get_json(struct tu_router *R, const char *path, cJSON **out)
{
	char *resp = NULL;
	long st = 0;

	*out = NULL;
	if (tu_http(R, "GET", path, NULL, &st, &resp) != 0)
		return -1;
	*out = cJSON_Parse(resp);
	free(resp);
	return st;
}

cJSON *
tu_stats_workers(cJSON *stats)
{
	return cJSON_GetObjectItem(cJSON_GetObjectItem(stats, "workers"), "workers");
}

double
tu_stats_worker_num(struct tu_router *R, const char *id, const char *key)
{
	cJSON *j, *w;
	double n = -1;

	ck_assert_int_eq(tu_get_json(R, "/v1/stats", &j), 200);
	cJSON_ArrayForEach(w, tu_stats_workers(j))
		if (strcmp(cJSON_GetObjectItem(w, "id")->valuestring, id) == 0)
			n = cJSON_GetObjectItem(w, key)->valuedouble;
	cJSON_Delete(j);
	return n;
}

double
tu_stats_failover_num(struct tu_router *R, const char *key)
{
	cJSON *j;
	double v;

	ck_assert_int_eq(tu_get_json(R, "/v1/stats", &j), 200);
	v = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "workers"),
	        "failover"), key)->valuedouble;
	cJSON_Delete(j);
	return v;
}

struct greedy {
	struct tu_router *R;
	int i, n_tokens;
	long status;
	int done;
	char *text;
};

static void *
greedy_main(void *arg)
{
	struct greedy *g = arg;
	char body[256];

	snprintf(body, sizeof(body),
	        "{\"prompt\":\"And God said %d\",\"max_tokens\":%d,\"temperature\":0,"
	        "\"stream\":true,\"ignore_eos\":true}", g->i * 7, g->n_tokens);
	tu_sse(g->R, "/v1/completions", body, &g->status, &g->text, &g->done);
	return NULL;
}

int
tu_greedy_streams(struct tu_router *R, int n, int n_tokens, char **text)
{
	pthread_t *th = calloc((size_t)n, sizeof(*th));
	struct greedy *g = calloc((size_t)n, sizeof(*g));
	int failed = 0, started = 0;

	if (th == NULL || g == NULL)
		abort();
	for (; started < n; started++) {
		g[started] = (struct greedy){ .R = R, .i = started, .n_tokens = n_tokens };
		if (pthread_create(&th[started], NULL, greedy_main, &g[started]) != 0)
			break;
	}
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < n; i++) {
		if (i < started && g[i].status == 200 && g[i].done && g[i].text &&
		        strstr(g[i].text, "\"error\"") == NULL) {
			text[i] = g[i].text;
		} else {
			failed++;
			free(g[i].text);
			text[i] = NULL;
		}
	}
	free(th);
	free(g);
	return failed;
}

static int
healthy(struct tu_router *R)
{
	char *resp = NULL;
	long st = 0;
	int ok = tu_http(R, "GET", "/health", NULL, &st, &resp) == 0 && st == 200;
	free(resp);
	return ok;
}

int
tu_router_start_wait(struct tu_router *R, const char *model,
        const char *const *args, int wait_s, int want_healthy)
{
	const char *argv[64];
	char bin[4096], ctl[80];
	int n = 0, fd;
	pid_t parent;

	memset(R, 0, sizeof(*R));
	R->http_port = tu_free_port();
	snprintf(R->http, sizeof(R->http), "127.0.0.1:%d", R->http_port);
	snprintf(R->nng_url, sizeof(R->nng_url), "tcp://127.0.0.1:%d", tu_free_port());
	snprintf(R->control_url, sizeof(R->control_url), "tcp://127.0.0.1:%d", tu_free_port());
	snprintf(R->logpath, sizeof(R->logpath), "/tmp/epmoe-test-router-%d-%d.log",
	        (int)getpid(), R->http_port);
	snprintf(bin, sizeof(bin), "%s", tu_bin("epmoe-router"));
	snprintf(ctl, sizeof(ctl), "%s", R->control_url);
	argv[n++] = bin;
	argv[n++] = "--model";
	argv[n++] = model;
	argv[n++] = "--http";
	argv[n++] = R->http;
	argv[n++] = "--nng";
	argv[n++] = R->nng_url;
	argv[n++] = "--control";
	argv[n++] = ctl;
	for (int i = 0; args && args[i] && n < 62; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	parent = getpid();
	R->pid = fork();
	if (R->pid < 0)
		return -1;
	if (R->pid == 0) {
		/* the router goes when the test does, also one that an
		 * assertion ended before tu_router_stop */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(127);
		setpgid(0, 0);
		fd = open(R->logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	setpgid(R->pid, R->pid);
	if (wait_s <= 0)
		wait_s = 60;
	for (int i = 0; i < wait_s * 20; i++) {
		int st;
		if (waitpid(R->pid, &st, WNOHANG) == R->pid) {
			R->pid = 0;
			tu_router_log(R);
			return -1;
		}
		if (!want_healthy) {
			char *resp = NULL;
			long code = 0;
			if (tu_http(R, "GET", "/health", NULL, &code, &resp) == 0) {
				free(resp);
				return 0;
			}
		} else if (healthy(R)) {
			return 0;
		}
		usleep(50000);
	}
	tu_router_log(R);
	return -1;
}

int
tu_router_start(struct tu_router *R, const char *model, const char *const *args)
{
	return tu_router_start_wait(R, model, args, 60, 1);
}

int
tu_router_stop(struct tu_router *R)
{
	int st = -1;

	if (R->pid <= 0)
		return -1;
	kill(R->pid, SIGTERM);
	for (int i = 0; i < 200; i++) {
		if (waitpid(R->pid, &st, WNOHANG) == R->pid) {
			kill(-R->pid, SIGKILL); /* workers left in its group */
			R->pid = 0;
			unlink(R->logpath);
			return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
		}
		usleep(50000);
	}
	kill(-R->pid, SIGKILL);
	kill(R->pid, SIGKILL);
	waitpid(R->pid, &st, 0);
	R->pid = 0;
	return -1;
}
