/* Fork-join thread pool: spin-then-futex workers.  See pool.h. */
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "err.h"
#include "pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

struct pool_thread {
	struct pool *p;
	int ith;
	pthread_t th;
};

struct pool {
	int n;
	struct pool_thread *threads;
	pool_fn fn;
	void *ctx;
	_Atomic unsigned gen;     /* bumped once per job */
	_Atomic unsigned pending; /* workers still running the job */
	_Atomic int caller_sleeping;
	_Atomic int sleepers;     /* workers blocked in futex_wait */
	_Atomic int stop;
	long spin_ns;
};

static long
futex(_Atomic unsigned *addr, int op, unsigned val)
{
	return syscall(SYS_futex, (unsigned *)addr, op, val, NULL, NULL, 0);
}

static void *
pool_main(void *arg)
{
	struct pool_thread *t = arg;
	struct pool *p = t->p;
	unsigned seen = 0;

	for (;;) {
		unsigned g = atomic_load(&p->gen);
		if (g == seen) {
			uint64_t t0 = clock_now_ns();
			for (int i = 1;; i++) {
				cpu_relax();
				g = atomic_load(&p->gen);
				if (g != seen)
					break;
				if ((i & 63) == 0 && (long)(clock_now_ns() - t0) > p->spin_ns)
					break;
			}
		}
		if (g == seen) {
			atomic_fetch_add(&p->sleepers, 1);
			futex(&p->gen, FUTEX_WAIT_PRIVATE, seen);
			atomic_fetch_sub(&p->sleepers, 1);
			continue;
		}
		seen = g;
		if (atomic_load(&p->stop))
			break;
		p->fn(p->ctx, t->ith, p->n);
		if (atomic_fetch_sub(&p->pending, 1) == 1 &&
		        atomic_load(&p->caller_sleeping))
			futex(&p->pending, FUTEX_WAKE_PRIVATE, 1);
	}
	return NULL;
}

int
pool_new(struct pool **out, int n_threads)
{
	struct pool *p;
	const char *s;

	if (n_threads < 1 || n_threads > 1024)
		return EPMOE_EINVAL;
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return EPMOE_ENOMEM;
	p->n = n_threads;
	p->spin_ns = 50000;
	if ((s = getenv("EPMOE_SPIN_US")) != NULL)
		p->spin_ns = atol(s) * 1000L;
	if (n_threads > 1) {
		p->threads = calloc((size_t)n_threads, sizeof(*p->threads));
		if (p->threads == NULL) {
			free(p);
			return EPMOE_ENOMEM;
		}
		for (int i = 1; i < n_threads; i++) {
			p->threads[i].p = p;
			p->threads[i].ith = i;
			if (pthread_create(&p->threads[i].th, NULL, pool_main,
			            &p->threads[i]) != 0) {
				p->n = i; /* stop the ones started */
				pool_free(p);
				return EPMOE_ENOMEM;
			}
		}
	}
	*out = p;
	return 0;
}

void
pool_free(struct pool *p)
{
	if (p == NULL)
		return;
	if (p->n > 1) {
		atomic_store(&p->stop, 1);
		atomic_fetch_add(&p->gen, 1);
		futex(&p->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
		for (int i = 1; i < p->n; i++)
			pthread_join(p->threads[i].th, NULL);
	}
	free(p->threads);
	free(p);
}

int
pool_size(const struct pool *p)
{
	return p ? p->n : 1;
}

void
pool_run(struct pool *p, pool_fn fn, void *ctx)
{
	if (p == NULL || p->n == 1) {
		fn(ctx, 0, 1);
		return;
	}
	p->fn = fn;
	p->ctx = ctx;
	atomic_store(&p->pending, p->n - 1);
	atomic_fetch_add(&p->gen, 1);
	if (atomic_load(&p->sleepers) > 0)
		futex(&p->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
	fn(ctx, 0, p->n);
	/* spin a little (the others are usually about done), then sleep so a
	 * descheduled worker gets the core back */
	for (int i = 0; i < 2000 && atomic_load(&p->pending) > 0; i++)
		cpu_relax();
	for (;;) {
		unsigned left = atomic_load(&p->pending);
		if (left == 0)
			break;
		atomic_store(&p->caller_sleeping, 1);
		futex(&p->pending, FUTEX_WAIT_PRIVATE, left);
		atomic_store(&p->caller_sleeping, 0);
	}
}

void
pool_split(long n, int ith, int nth, long align, long *lo, long *hi)
{
	long blocks, per, extra, b0, b1;

	if (align < 1)
		align = 1;
	blocks = (n + align - 1) / align;
	per = blocks / nth;
	extra = blocks % nth;
	b0 = ith * per + (ith < extra ? ith : extra);
	b1 = b0 + per + (ith < extra ? 1 : 0);
	*lo = b0 * align < n ? b0 * align : n;
	*hi = b1 * align < n ? b1 * align : n;
}
