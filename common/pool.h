/* A small fork-join thread pool for the numeric kernels.
 *
 * pool_run(p, fn, ctx) runs fn(ctx, i, n) on every thread i in [0, n) of the
 * pool (the caller is thread 0) and returns when all are done.  Workers spin
 * briefly after a job (decode issues ~100 small jobs per token, so a futex
 * wake per job would cost more than the work) and then sleep.
 *
 * OpenBLAS is set to one thread by the engine: all parallelism is ours, so
 * BLAS threads never compete with pool threads for the two cores.
 */
#ifndef EPMOE_POOL_H
#define EPMOE_POOL_H

typedef void (*pool_fn)(void *ctx, int ith, int nth);

struct pool;

/* Creates a pool of n_threads (>= 1; 1 = no extra threads).  Free with
 * pool_free(). */
int pool_new(struct pool **out, int n_threads);
void pool_free(struct pool *p);
int pool_size(const struct pool *p);

/* Runs fn on all threads; not reentrant (one caller thread at a time). */
void pool_run(struct pool *p, pool_fn fn, void *ctx);

/* Splits [0, n) into nth near-equal parts aligned to `align`; writes
 * thread ith's [*lo, *hi). */
void pool_split(long n, int ith, int nth, long align, long *lo, long *hi);

#endif
