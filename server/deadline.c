/* Latency estimator and adaptive deadlines.  See deadline.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "deadline.h"

void
dl_cfg_default(struct dl_cfg *c)
{
	c->floor_ms = 200;
	c->cap_ms = 10000;
	c->k = 3.0;
	c->min_samples = 8;
}

void
dl_init(struct dl_est *d)
{
	memset(d, 0, sizeof(*d));
}

/* Bucket of a batch size: floor(log2(n)), capped. */
static uint32_t
bucket(uint32_t n_rows)
{
	uint32_t b = 0;

	while (n_rows > 1 && b < DL_BUCKETS - 1) {
		n_rows >>= 1;
		b++;
	}
	return b;
}

void
dl_observe(struct dl_est *d, uint32_t n_rows, uint64_t latency_us)
{
	uint32_t b = bucket(n_rows);

	d->lat_us[b][d->head[b]] = latency_us > UINT32_MAX ? UINT32_MAX :
	        (uint32_t)latency_us;
	d->head[b] = (d->head[b] + 1) % DL_RING;
	if (d->n[b] < DL_RING)
		d->n[b]++;
	d->stale[b]++;
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* p99 of bucket b (sorted again only after new samples: about one sort
 * of DL_RING values per batch, a few microseconds). */
static uint32_t
bucket_p99(struct dl_est *d, uint32_t b)
{
	uint32_t v[DL_RING], n = d->n[b];
	size_t k;

	if (n == 0)
		return 0;
	if (d->stale[b] == 0)
		return d->p99_us[b];
	memcpy(v, d->lat_us[b], n * sizeof(v[0]));
	qsort(v, n, sizeof(v[0]), cmp_u32);
	k = ((size_t)n * 99 + 99) / 100; /* ceil(0.99 n) */
	d->p99_us[b] = v[k - 1];
	d->stale[b] = 0;
	return d->p99_us[b];
}

uint64_t
dl_p99_us(struct dl_est *d, uint32_t n_rows, uint32_t min_samples)
{
	uint32_t b = bucket(n_rows);

	if (min_samples == 0)
		min_samples = 1;
	if (d->n[b] >= min_samples)
		return bucket_p99(d, b);
	for (uint32_t u = b + 1; u < DL_BUCKETS; u++)
		if (d->n[u] >= min_samples)
			return bucket_p99(d, u);
	for (uint32_t u = b; u-- > 0;) {
		if (d->n[u] >= min_samples) {
			/* the largest size of bucket u */
			double top = (double)((2ull << u) - 1);
			double scale = n_rows > top ? (double)n_rows / top : 1.0;
			return (uint64_t)ceil((double)bucket_p99(d, u) * scale);
		}
	}
	return 0;
}

uint32_t
dl_deadline_ms(struct dl_est *d, uint32_t n_rows, const struct dl_cfg *c)
{
	uint64_t p = dl_p99_us(d, n_rows, c->min_samples);
	double ms;

	if (p == 0)
		return c->cap_ms;
	ms = ceil(c->k * (double)p / 1000.0);
	if (ms < c->floor_ms)
		ms = c->floor_ms;
	if (ms > c->cap_ms)
		ms = c->cap_ms;
	return (uint32_t)ms;
}
