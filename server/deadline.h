/* How long the router waits for one expert batch: a per-worker estimator
 * of recent reply latency by batch size, and the deadline and hedge time
 * derived from it (reliability.md §11.2):
 *
 *     deadline(w, n) = min(cap, max(floor, k x p99(w, n)))
 *
 * p99(w, n) is the 99th percentile of the last DL_RING successful replies
 * of worker w whose batch had about n token rows (buckets of powers of
 * two: 1, 2-3, 4-7, ..., >= 4096).  A bucket with fewer than min_samples
 * replies borrows: first from the nearest larger bucket that has enough
 * (a bigger batch is not faster), else from the nearest smaller one scaled
 * by the row ratio (latency grows at most linearly with rows); with no
 * data at all the deadline is the cap.  So a worker that slows down for
 * good raises its own deadline, one that stops answering misses it after
 * a few multiples of its usual latency, and a first large prefill batch
 * is not mistaken for a hang.
 *
 * Plain data and arithmetic: no locks, no clock (the caller passes
 * latencies); the cluster keeps one per worker under its lock.
 */
#ifndef EPMOE_DEADLINE_H
#define EPMOE_DEADLINE_H

#include <stdint.h>

#define DL_BUCKETS 13
#define DL_RING 128

struct dl_est {
	uint32_t lat_us[DL_BUCKETS][DL_RING];
	uint32_t n[DL_BUCKETS];      /* samples held (<= DL_RING) */
	uint32_t head[DL_BUCKETS];
	uint32_t p99_us[DL_BUCKETS]; /* cached percentile of the ring */
	uint32_t stale[DL_BUCKETS];  /* samples since the cache */
};

struct dl_cfg {
	uint32_t floor_ms;     /* shortest deadline */
	uint32_t cap_ms;       /* longest deadline, and the one without data */
	double k;              /* multiple of p99 */
	uint32_t min_samples;  /* replies a bucket needs to speak (>= 1) */
};

/* Defaults: floor 200 ms, cap 10000 ms, k = 3, 8 samples. */
void dl_cfg_default(struct dl_cfg *c);

void dl_init(struct dl_est *d);
/* Records one successful reply of a batch of n_rows rows. */
void dl_observe(struct dl_est *d, uint32_t n_rows, uint64_t latency_us);
/* The p99 latency expected for a batch of n_rows rows (µs), with the
 * borrowing rules above; 0 when there is no data. */
uint64_t dl_p99_us(struct dl_est *d, uint32_t n_rows, uint32_t min_samples);
/* The deadline for a batch of n_rows rows, in ms. */
uint32_t dl_deadline_ms(struct dl_est *d, uint32_t n_rows, const struct dl_cfg *c);

#endif
