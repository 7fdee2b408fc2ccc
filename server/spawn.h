/* Local worker processes for `epmoe-router --workers N`: starts N
 * epmoe-worker children pointed at the router's control URL, each with
 * its own id ("<prefix>-<i>") and data listener on an ephemeral
 * 127.0.0.1 port, and reaps them.
 *
 * Children get PR_SET_PDEATHSIG(SIGTERM), so they exit if the router dies
 * without stopping them.  Linux sends it when the *thread* that forked
 * exits: call spawn_start (and spawn_poll with restart) from a thread that
 * lives as long as the router, e.g. main.  spawn_stop forwards SIGTERM,
 * waits, then SIGKILLs whatever is left; every child is waited for, so no
 * zombies.  Children inherit stdout/stderr (their log lines go where the
 * router's go) and start with an empty signal mask and default handlers.
 *
 * Router shutdown order: free the dispatch backends, spawn_stop (the
 * workers send Leave and exit 0), then cluster_free.
 *
 * Not thread-safe: one thread owns a struct spawn.
 */
#ifndef EPMOE_SPAWN_H
#define EPMOE_SPAWN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct spawn;

struct spawn_cfg {
	const char *worker_bin;  /* NULL = "epmoe-worker" next to the running
	                            binary (readlink /proc/self/exe) */
	const char *router_url;  /* control URL the workers dial (required) */
	const char *model_path;  /* GGUF (required) */
	uint32_t n_workers;      /* >= 1 */
	int threads;             /* --threads of each worker; 0 = omit */
	const char *listen_host; /* NULL = 127.0.0.1 (tcp://HOST:0) */
	const char *id_prefix;   /* NULL = "local" */
	bool log_json;           /* pass --log-json */
	bool restart;            /* spawn_poll restarts children that exit */
};

/* Starts the children.  On failure none is left running (EPMOE_ENOENT:
 * worker binary not found or not executable).  Free with spawn_free(). */
int spawn_start(struct spawn **out, const struct spawn_cfg *cfg);

/* Reaps children that exited (non-blocking), logs how they ended and,
 * with cfg.restart, starts them again (same id: the cluster takes them
 * back as restarts).  Returns how many exited.  Call it periodically or
 * on SIGCHLD. */
int spawn_poll(struct spawn *s);

/* SIGTERM to every live child, waits up to timeout_ms for them to exit,
 * then SIGKILL and wait.  Returns how many needed SIGKILL. */
int spawn_stop(struct spawn *s, uint32_t timeout_ms);

/* Sends sig to child i (tests: kill a worker).  EPMOE_ERANGE / ESTATE. */
int spawn_kill(struct spawn *s, uint32_t i, int sig);

/* Sends sig to the running child whose id is id, if it has been running
 * for at least min_age_ms (so a report about an earlier incarnation does
 * not hit its replacement).  Returns its pid, 0 when no such child (or
 * too young), or a negative EPMOE_E* code. */
long spawn_kill_id(struct spawn *s, const char *id, int sig, uint32_t min_age_ms);

/* Pid of child i, or 0 when it is not running. */
pid_t spawn_pid(const struct spawn *s, uint32_t i);
uint32_t spawn_n(const struct spawn *s);

/* spawn_stop(s, 5000) if still running, then frees.  NULL is fine. */
void spawn_free(struct spawn *s);

#endif
