/* Local epmoe-worker children: fork/exec, PR_SET_PDEATHSIG, reaping,
 * SIGTERM then SIGKILL on stop.  See spawn.h. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "err.h"
#include "log.h"
#include "spawn.h"

#define QUICK_EXIT_NS 1000000000ull /* an exit this soon after start... */
#define MAX_QUICK_EXITS 5           /* ...this many times in a row: give up */

struct child {
	pid_t pid;             /* 0 = not running */
	char id[64];
	uint64_t started_ns;
	uint32_t quick_exits;
	bool given_up;
};

struct spawn {
	char bin[PATH_MAX];
	char router[512];
	char model[PATH_MAX];
	char listen[300];
	char threads[16];
	bool log_json, restart, stopping;
	uint32_t n;
	struct child *c;
};

static int
default_bin(char *dst, size_t cap)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n <= 0)
		return EPMOE_ENOENT;
	self[n] = '\0';
	if ((slash = strrchr(self, '/')) == NULL)
		return EPMOE_ENOENT;
	*slash = '\0';
	if ((size_t)snprintf(dst, cap, "%s/epmoe-worker", self) >= cap)
		return EPMOE_ERANGE;
	return 0;
}

static int
start_child(struct spawn *s, uint32_t i)
{
	struct child *c = &s->c[i];
	char *argv[16];
	int k = 0;
	pid_t parent = getpid(), pid;

	argv[k++] = s->bin;
	argv[k++] = (char *)"--router";
	argv[k++] = s->router;
	argv[k++] = (char *)"--model";
	argv[k++] = s->model;
	argv[k++] = (char *)"--listen";
	argv[k++] = s->listen;
	argv[k++] = (char *)"--id";
	argv[k++] = c->id;
	if (s->threads[0]) {
		argv[k++] = (char *)"--threads";
		argv[k++] = s->threads;
	}
	if (s->log_json)
		argv[k++] = (char *)"--log-json";
	argv[k] = NULL;

	if ((pid = fork()) < 0)
		return epmoe_err_from_errno(errno);
	if (pid == 0) {
		/* child: only async-signal-safe calls until exec */
		struct sigaction dfl;
		sigset_t mask;
		int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2 };

		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(127); /* the router died before prctl */
		memset(&dfl, 0, sizeof(dfl));
		dfl.sa_handler = SIG_DFL;
		for (size_t j = 0; j < sizeof(sigs) / sizeof(sigs[0]); j++)
			sigaction(sigs[j], &dfl, NULL);
		/* SIGTERM stays blocked through exec: a parent-death signal
		 * that comes before the worker has installed its handler waits
		 * for it (epmoe-worker unblocks SIGTERM in main) instead of
		 * killing the worker half-started */
		sigemptyset(&mask);
		sigaddset(&mask, SIGTERM);
		sigprocmask(SIG_SETMASK, &mask, NULL);
		execv(s->bin, argv);
		_exit(127);
	}
	c->pid = pid;
	c->started_ns = clock_now_ns();
	log_info("spawn: started worker %s (pid %ld): %s --router %s --listen %s",
	        c->id, (long)pid, s->bin, s->router, s->listen);
	return 0;
}

static void
log_exit(const struct child *c, int status)
{
	if (WIFEXITED(status))
		log_info("spawn: worker %s (pid %ld) exited with status %d", c->id,
		        (long)c->pid, WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		log_warn("spawn: worker %s (pid %ld) killed by signal %d", c->id,
		        (long)c->pid, WTERMSIG(status));
}

int
spawn_start(struct spawn **out, const struct spawn_cfg *cfg)
{
	struct spawn *s;
	int rc;

	if (cfg == NULL || cfg->router_url == NULL || cfg->model_path == NULL ||
	        cfg->n_workers == 0 || cfg->n_workers > 1024)
		return EPMOE_EINVAL;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return EPMOE_ENOMEM;
	if ((s->c = calloc(cfg->n_workers, sizeof(*s->c))) == NULL) {
		free(s);
		return EPMOE_ENOMEM;
	}
	s->n = cfg->n_workers;
	if (cfg->worker_bin) {
		if ((size_t)snprintf(s->bin, sizeof(s->bin), "%s", cfg->worker_bin) >=
		        sizeof(s->bin))
			rc = EPMOE_ERANGE;
		else
			rc = 0;
	} else {
		rc = default_bin(s->bin, sizeof(s->bin));
	}
	if (rc == 0 && access(s->bin, X_OK) != 0)
		rc = EPMOE_ENOENT;
	if (rc != 0) {
		log_error("spawn: no worker binary at %s", s->bin[0] ? s->bin : "?");
		spawn_free(s);
		return rc;
	}
	if ((size_t)snprintf(s->router, sizeof(s->router), "%s", cfg->router_url) >=
	        sizeof(s->router) ||
	        (size_t)snprintf(s->model, sizeof(s->model), "%s", cfg->model_path) >=
	        sizeof(s->model) ||
	        (size_t)snprintf(s->listen, sizeof(s->listen), "tcp://%s:0",
	             cfg->listen_host ? cfg->listen_host : "127.0.0.1") >=
	        sizeof(s->listen)) {
		spawn_free(s);
		return EPMOE_ERANGE;
	}
	if (cfg->threads > 0)
		snprintf(s->threads, sizeof(s->threads), "%d", cfg->threads);
	s->log_json = cfg->log_json;
	s->restart = cfg->restart;
	for (uint32_t i = 0; i < s->n; i++)
		snprintf(s->c[i].id, sizeof(s->c[i].id), "%.40s-%u",
		        cfg->id_prefix ? cfg->id_prefix : "local", i);
	for (uint32_t i = 0; i < s->n; i++) {
		if ((rc = start_child(s, i)) != 0) {
			log_error("spawn: cannot start worker %s: %s", s->c[i].id,
			        epmoe_strerror(rc));
			spawn_free(s);
			return rc;
		}
	}
	*out = s;
	return 0;
}

int
spawn_poll(struct spawn *s)
{
	int n = 0;

	for (uint32_t i = 0; i < s->n; i++) {
		struct child *c = &s->c[i];
		int status;
		pid_t r;

		if (c->pid == 0)
			continue;
		r = waitpid(c->pid, &status, WNOHANG);
		if (r == 0 || (r < 0 && errno == EINTR))
			continue;
		if (r > 0)
			log_exit(c, status);
		n++;
		if (clock_now_ns() - c->started_ns < QUICK_EXIT_NS)
			c->quick_exits++;
		else
			c->quick_exits = 0;
		c->pid = 0;
		if (!s->restart || s->stopping || c->given_up)
			continue;
		if (c->quick_exits >= MAX_QUICK_EXITS) {
			log_error("spawn: worker %s exited %u times right after starting: not restarting it",
			        c->id, c->quick_exits);
			c->given_up = true;
			continue;
		}
		if (start_child(s, i) != 0)
			log_error("spawn: cannot restart worker %s", c->id);
	}
	return n;
}

int
spawn_stop(struct spawn *s, uint32_t timeout_ms)
{
	uint64_t end = clock_now_ns() + (uint64_t)timeout_ms * 1000000u;
	int killed = 0;
	bool left;

	s->stopping = true;
	for (uint32_t i = 0; i < s->n; i++)
		if (s->c[i].pid > 0)
			kill(s->c[i].pid, SIGTERM);
	do {
		left = false;
		for (uint32_t i = 0; i < s->n; i++) {
			struct child *c = &s->c[i];
			int status;
			pid_t r;

			if (c->pid == 0)
				continue;
			r = waitpid(c->pid, &status, WNOHANG);
			if (r > 0) {
				log_exit(c, status);
				c->pid = 0;
			} else if (r < 0 && errno != EINTR) {
				c->pid = 0; /* not our child any more */
			} else {
				left = true;
			}
		}
		if (left) {
			struct timespec ts = { 0, 10 * 1000000 };
			nanosleep(&ts, NULL);
		}
	} while (left && clock_now_ns() < end);
	for (uint32_t i = 0; i < s->n; i++) {
		struct child *c = &s->c[i];
		int status;

		if (c->pid == 0)
			continue;
		log_warn("spawn: worker %s (pid %ld) did not stop in %u ms: SIGKILL",
		        c->id, (long)c->pid, timeout_ms);
		kill(c->pid, SIGKILL);
		while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
			;
		c->pid = 0;
		killed++;
	}
	return killed;
}

int
spawn_kill(struct spawn *s, uint32_t i, int sig)
{
	if (i >= s->n)
		return EPMOE_ERANGE;
	if (s->c[i].pid == 0)
		return EPMOE_ESTATE;
	return kill(s->c[i].pid, sig) == 0 ? 0 : epmoe_err_from_errno(errno);
}

long
spawn_kill_id(struct spawn *s, const char *id, int sig, uint32_t min_age_ms)
{
	uint64_t now = clock_now_ns();

	for (uint32_t i = 0; i < s->n; i++) {
		struct child *c = &s->c[i];
		if (c->pid == 0 || strcmp(c->id, id) != 0)
			continue;
		if (now - c->started_ns < (uint64_t)min_age_ms * 1000000u)
			return 0;
		if (kill(c->pid, sig) != 0)
			return epmoe_err_from_errno(errno);
		return (long)c->pid;
	}
	return 0;
}

pid_t
spawn_pid(const struct spawn *s, uint32_t i)
{
	return i < s->n ? s->c[i].pid : 0;
}

uint32_t
spawn_n(const struct spawn *s)
{
	return s->n;
}

void
spawn_free(struct spawn *s)
{
	if (s == NULL)
		return;
	spawn_stop(s, 5000);
	free(s->c);
	free(s);
}
