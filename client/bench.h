/* Benchmark modes of `epmoe bench` (one file each), and the machine
 * probes the engine benchmark shares with `bench machine`. */
#ifndef EPMOE_BENCH_H
#define EPMOE_BENCH_H

#include <stddef.h>

struct pool;

int bench_machine(int argc, char **argv);
int bench_engine(int argc, char **argv);
int bench_route(int argc, char **argv);
int bench_server(int argc, char **argv);

/* The machine's limits measured on pool's threads (bench_machine.c):
 * buffers for a read-bandwidth probe over mb MiB and an sgemm probe.
 * Borrows pool.  Free with bench_probe_free(). */
struct bench_probe;
int bench_probe_new(struct bench_probe **out, struct pool *pool, size_t mb);
void bench_probe_free(struct bench_probe *p);
/* Memory read bandwidth in GB/s, the best of reps passes. */
double bench_probe_bw(struct bench_probe *p, int reps);
/* OpenBLAS sgemm GFLOP/s ([512x1024]·[1024x2816] split over the pool like
 * the engine's products), the best of reps. */
double bench_probe_sgemm(struct bench_probe *p, int reps);

#endif
