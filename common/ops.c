/* Forward-pass kernels.  See ops.h for the shapes and the strategy.
 * Must not allocate per call except the per-thread conversion scratch,
 * which grows once and is freed when its thread exits. */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "err.h"
#include "ops.h"
#include "quant.h"

/* Below this many token rows products take the row-at-a-time path (each
 * weight row read once, converted in registers, dotted with every token;
 * measured faster than OpenBLAS sgemv/sgemm here up to about 32 rows, for
 * F32 too); from it on, sgemm (after converting blocks of rows for
 * F16/BF16/Q8_0). */
#define SMALL_N 32
/* Weight rows converted per sgemm call on the block path. */
#define BLOCK_ROWS 256u

void openblas_set_num_threads(int num_threads);

void
op_blas_init(void)
{
	openblas_set_num_threads(1);
}

/* ---- per-thread scratch ---- */

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

struct scratch {
	float *p;
	size_t cap;
};

static void
scratch_free(void *s)
{
	struct scratch *sc = s;
	if (sc) {
		free(sc->p);
		free(sc);
	}
}

static void
scratch_key_init(void)
{
	pthread_key_create(&scratch_key, scratch_free);
}

/* A thread-local buffer of at least n floats, or NULL. */
static float *
scratch_get(size_t n)
{
	struct scratch *sc;

	pthread_once(&scratch_once, scratch_key_init);
	sc = pthread_getspecific(scratch_key);
	if (sc == NULL) {
		if ((sc = calloc(1, sizeof(*sc))) == NULL)
			return NULL;
		pthread_setspecific(scratch_key, sc);
	}
	if (sc->cap < n) {
		float *p = aligned_alloc(64, ((n * sizeof(float)) + 63) & ~(size_t)63);
		if (p == NULL)
			return NULL;
		free(sc->p);
		sc->p = p;
		sc->cap = n;
	}
	return sc->p;
}

/* ---- elementwise ---- */

float
op_dot(const float *a, const float *b, int n)
{
	int i = 0;
#if defined(__AVX512F__)
	__m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	for (; i + 32 <= n; i += 32) {
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
		s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16),
		        _mm512_loadu_ps(b + i + 16), s1);
	}
	for (; i + 16 <= n; i += 16)
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
	float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
#elif defined(__AVX2__) && defined(__FMA__)
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	for (; i + 16 <= n; i += 16) {
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8),
		        _mm256_loadu_ps(b + i + 8), s1);
	}
	s0 = _mm256_add_ps(s0, s1);
	__m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
	h = _mm_add_ps(h, _mm_movehl_ps(h, h));
	h = _mm_add_ss(h, _mm_movehdup_ps(h));
	float s = _mm_cvtss_f32(h);
#else
	float s = 0.0f;
#endif
	for (; i < n; i++)
		s += a[i] * b[i];
	return s;
}

void
op_rmsnorm(float *y, const float *x, const float *w, int n, float eps)
{
	double ss = 0.0;
	float scale;

	for (int i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	scale = (float)(1.0 / sqrt(ss / n + eps));
	if (w) {
		for (int i = 0; i < n; i++)
			y[i] = x[i] * scale * w[i];
	} else {
		for (int i = 0; i < n; i++)
			y[i] = x[i] * scale;
	}
}

void
op_rope(float *x, int n_heads, int head_dim, int n_rot, int pos,
        const float *freq, int neox)
{
	int half = n_rot / 2;
	float cs[512], sn[512];

	for (int i = 0; i < half && i < 512; i++) {
		float th = (float)pos * freq[i];
		cs[i] = cosf(th);
		sn[i] = sinf(th);
	}
	for (int h = 0; h < n_heads; h++) {
		float *v = x + (size_t)h * head_dim;
		for (int i = 0; i < half; i++) {
			int a = neox ? i : 2 * i;
			int b = neox ? i + half : 2 * i + 1;
			float x0 = v[a], x1 = v[b];
			v[a] = x0 * cs[i] - x1 * sn[i];
			v[b] = x0 * sn[i] + x1 * cs[i];
		}
	}
}

#if defined(__AVX512F__)
/* e^x for 16 lanes: x = k·ln2 + r with |r| <= ln2/2, a degree-6 Taylor
 * polynomial for e^r (relative error < 2e-7) and 2^k by scalef. */
static inline __m512
exp512(__m512 x)
{
	const __m512 ln2 = _mm512_set1_ps(0.69314718056f);
	x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-88.0f));
	__m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f)),
	        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(k, ln2, x);
	__m512 p = _mm512_set1_ps(1.0f / 720);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	return _mm512_scalef_ps(p, k);
}
#endif

void
op_softmax(float *x, int n)
{
	float m = -INFINITY;
	double s = 0.0;
	int i = 0;

	for (int j = 0; j < n; j++)
		if (x[j] > m)
			m = x[j];
#if defined(__AVX512F__)
	__m512 mv = _mm512_set1_ps(m), acc = _mm512_setzero_ps();
	for (; i + 16 <= n; i += 16) {
		__m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
		_mm512_storeu_ps(x + i, e);
		acc = _mm512_add_ps(acc, e);
	}
	s = _mm512_reduce_add_ps(acc);
#endif
	for (; i < n; i++) {
		x[i] = expf(x[i] - m);
		s += x[i];
	}
	float inv = (float)(1.0 / s);
	for (int j = 0; j < n; j++)
		x[j] *= inv;
}

void
op_swiglu(float *g, const float *u, int n)
{
	int i = 0;
#if defined(__AVX512F__)
	const __m512 one = _mm512_set1_ps(1.0f);
	for (; i + 16 <= n; i += 16) {
		__m512 x = _mm512_loadu_ps(g + i);
		__m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
		__m512 y = _mm512_div_ps(x, _mm512_add_ps(one, e));
		_mm512_storeu_ps(g + i, _mm512_mul_ps(y, _mm512_loadu_ps(u + i)));
	}
#endif
	for (; i < n; i++)
		g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* ---- matrix products ---- */

int
tmat_row_f32(const struct tmat *m, uint32_t r, float *dst)
{
	const uint8_t *row = (const uint8_t *)m->data + (size_t)r * m->row_size;
	return dtype_row_to_f32(m->type, row, dst, m->n_in);
}

/* ---- fused dot kernels: one weight row, converted in registers, dotted
 * with one token row.  Rows are walked one after the other, so each thread
 * reads its weights as one sequential stream (what the hardware
 * prefetchers follow best; interleaving several short rows measured at a
 * third of the bandwidth), and a row stays in L1 for the next tokens. ---- */

#if defined(__AVX512F__)
#define DOT_ROW_FN(NAME, LOADW)                                                \
	static int NAME(const uint8_t *w, const float *x, int n, float *y)    \
	{                                                                      \
		__m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();    \
		__m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();    \
		int c = 0;                                                     \
		for (; c + 64 <= n; c += 64) {                                 \
			a0 = _mm512_fmadd_ps(LOADW(w, c), _mm512_loadu_ps(x + c), a0); \
			a1 = _mm512_fmadd_ps(LOADW(w, c + 16), _mm512_loadu_ps(x + c + 16), a1); \
			a2 = _mm512_fmadd_ps(LOADW(w, c + 32), _mm512_loadu_ps(x + c + 32), a2); \
			a3 = _mm512_fmadd_ps(LOADW(w, c + 48), _mm512_loadu_ps(x + c + 48), a3); \
		}                                                              \
		for (; c + 16 <= n; c += 16)                                   \
			a0 = _mm512_fmadd_ps(LOADW(w, c), _mm512_loadu_ps(x + c), a0); \
		*y = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1),  \
		        _mm512_add_ps(a2, a3)));                               \
		return c;                                                      \
	}

#define LW_F16(p, c) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((p) + 2 * (size_t)(c))))
#define LW_BF16(p, c) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32( \
	_mm256_loadu_si256((const __m256i *)((p) + 2 * (size_t)(c)))), 16))
#define LW_F32(p, c) _mm512_loadu_ps((const float *)(const void *)(p) + (c))

DOT_ROW_FN(dot_row_f16, LW_F16)
DOT_ROW_FN(dot_row_bf16, LW_BF16)
DOT_ROW_FN(dot_row_f32, LW_F32)
#endif

/* *y = row j of W · x.  The part the vector kernel did not cover (all of
 * it without AVX-512) goes through a conversion into buf. */
static int
dot_row(const struct tmat *W, uint32_t j, const float *x, float *y, float *buf)
{
	const uint8_t *w = (const uint8_t *)W->data + (size_t)j * W->row_size;
	int n = (int)W->n_in, done = 0;
	float s = 0.0f;
	int rc;

#if defined(__AVX512F__)
	switch (W->type) {
	case DTYPE_F16: done = dot_row_f16(w, x, n, &s); break;
	case DTYPE_BF16: done = dot_row_bf16(w, x, n, &s); break;
	case DTYPE_F32: done = dot_row_f32(w, x, n, &s); break;
	default: break;
	}
#endif
	if (done < n) {
		if (W->type == DTYPE_F32) {
			const float *wr = (const float *)(const void *)w;
			for (int c = done; c < n; c++)
				s += wr[c] * x[c];
		} else {
			/* whole row (block-aligned), then the uncovered part */
			if ((rc = tmat_row_f32(W, j, buf)) != 0)
				return rc;
			s += op_dot(buf + done, x + done, n - done);
		}
	}
	*y = s;
	return 0;
}

/* Rows [r0, r1) of W against n token rows, one weight row at a time. */
static int
matmul_rows_small(const struct tmat *W, uint32_t r0, uint32_t r1,
        const float *X, int n, int ldx, float *Y, int ldy)
{
	float *buf = scratch_get(W->n_in);

	if (buf == NULL)
		return EPMOE_ENOMEM;
	for (uint32_t j = r0; j < r1; j++) {
		for (int r = 0; r < n; r++) {
			int rc = dot_row(W, j, X + (size_t)r * ldx, &Y[(size_t)r * ldy + j], buf);
			if (rc)
				return rc;
		}
	}
	return 0;
}

/* Rows [r0, r1) of W against many token rows: convert blocks of weight
 * rows to f32 and let sgemm do the work.  For block-quantised weights the
 * token rows are first rounded as the integer path rounds them (quant.h),
 * so both paths compute the same products. */
static int
matmul_rows_block(const struct tmat *W, uint32_t r0, uint32_t r1,
        const float *X, int n, int ldx, float *Y, int ldy)
{
	uint32_t k = W->n_in;
	int round_x = quant_is_weight(W->type);
	float *buf;

	if ((buf = scratch_get((size_t)BLOCK_ROWS * k + (round_x ? (size_t)n * k : 0))) == NULL)
		return EPMOE_ENOMEM;
	if (round_x) {
		float *xr = buf + (size_t)BLOCK_ROWS * k;
		for (int r = 0; r < n; r++)
			quant_act_round(W->type, X + (size_t)r * ldx, xr + (size_t)r * k, k);
		X = xr;
		ldx = (int)k;
	}
	for (uint32_t j0 = r0; j0 < r1; j0 += BLOCK_ROWS) {
		uint32_t nb = r1 - j0 < BLOCK_ROWS ? r1 - j0 : BLOCK_ROWS;
		for (uint32_t j = 0; j < nb; j++) {
			int rc = tmat_row_f32(W, j0 + j, buf + (size_t)j * k);
			if (rc)
				return rc;
		}
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)nb,
		        (int)k, 1.0f, X, ldx, buf, (int)k, 0.0f, Y + j0, ldy);
	}
	return 0;
}

int
op_matmul_rows(const struct tmat *W, uint32_t r0, uint32_t r1,
        const float *X, int n, int ldx, float *Y, int ldy)
{
	if (r1 <= r0 || n <= 0)
		return 0;
	if (W->type == DTYPE_F32 && n >= SMALL_N) {
		/* in blocks of weight rows, as the converted types do: OpenBLAS
		 * measured faster on 256-row blocks than on a whole slice */
		int lw = (int)(W->row_size / sizeof(float));
		uint32_t blk = BLOCK_ROWS;
		for (uint32_t j0 = r0; j0 < r1; j0 += blk) {
			uint32_t nb = r1 - j0 < blk ? r1 - j0 : blk;
			const float *w = (const float *)((const uint8_t *)W->data +
			        (size_t)j0 * W->row_size);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)nb,
			        (int)W->n_in, 1.0f, X, ldx, w, lw, 0.0f, Y + j0, ldy);
		}
		return 0;
	}
	if (!dtype_supported(W->type))
		return EPMOE_ENOTSUP;
	if (quant_is_weight(W->type) && (n < SMALL_N || !quant_prefill_sgemm(W->type)))
		return quant_matmul_rows(W->type, W->data, W->row_size, W->n_in, r0, r1,
		        X, n, ldx, Y, ldy);
	if (n < SMALL_N)
		return matmul_rows_small(W, r0, r1, X, n, ldx, Y, ldy);
	return matmul_rows_block(W, r0, r1, X, n, ldx, Y, ldy);
}

struct matmul_job {
	const struct op_mm *mm;  /* n_mm products */
	int n_mm;
	long total;              /* weight rows of all products */
	int rc[64];
};

/* Thread ith takes a contiguous range of the concatenated weight rows of
 * all the products (16-row aligned), so one pool round covers them all. */
static void
matmul_worker(void *ctx, int ith, int nth)
{
	struct matmul_job *j = ctx;
	long lo, hi, base = 0;
	int rc = 0;

	pool_split(j->total, ith, nth, 16, &lo, &hi);
	for (int m = 0; m < j->n_mm && rc == 0 && lo < hi; m++) {
		const struct op_mm *p = &j->mm[m];
		long rows = p->W->n_out;
		long a = lo > base ? lo - base : 0, b = hi - base < rows ? hi - base : rows;
		if (a < b && p->n > 0)
			rc = op_matmul_rows(p->W, (uint32_t)a, (uint32_t)b, p->X, p->n,
			        p->ldx, p->Y, p->ldy);
		base += rows;
	}
	j->rc[ith & 63] = rc;
}

int
op_matmul_batch(struct pool *pool, int n_mm, const struct op_mm *mm)
{
	struct matmul_job j = { .mm = mm, .n_mm = n_mm };
	int nth = pool_size(pool);
	size_t work = 0;

	for (int m = 0; m < n_mm; m++) {
		j.total += mm[m].W->n_out;
		work += (size_t)mm[m].W->n_out * mm[m].W->n_in * (size_t)(mm[m].n > 0 ? mm[m].n : 0);
	}
	if (work == 0)
		return 0;
	/* tiny products are not worth waking the pool */
	if (nth == 1 || work < 32768) {
		for (int m = 0; m < n_mm; m++) {
			int rc = op_matmul_rows(mm[m].W, 0, mm[m].W->n_out, mm[m].X, mm[m].n,
			        mm[m].ldx, mm[m].Y, mm[m].ldy);
			if (rc)
				return rc;
		}
		return 0;
	}
	pool_run(pool, matmul_worker, &j);
	for (int i = 0; i < nth && i < 64; i++)
		if (j.rc[i])
			return j.rc[i];
	return 0;
}

int
op_matmul_multi(struct pool *pool, int n_w, const struct tmat *const *W,
        const float *X, int n, int ldx, float *const *Y, const int *ldy)
{
	struct op_mm mm[8];

	if (n_w > 8)
		return EPMOE_EINVAL;
	for (int m = 0; m < n_w; m++)
		mm[m] = (struct op_mm){ W[m], X, n, ldx, Y[m], ldy[m] };
	return op_matmul_batch(pool, n_w, mm);
}

int
op_matmul(struct pool *pool, const struct tmat *W, const float *X, int n,
        int ldx, float *Y, int ldy)
{
	struct op_mm mm = { W, X, n, ldx, Y, ldy };
	return op_matmul_batch(pool, 1, &mm);
}

void
op_attn_decode_group(const float *Q, int n_rep, const float *K, const float *V,
        int ldk, int P, int hd, float *O, float *s_buf)
{
	float scale = 1.0f / sqrtf((float)hd);

	/* S [n_rep, P] = Q [n_rep, hd] · K[0..P)ᵀ · scale: K read once for all
	 * the query heads that share it */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_rep, P, hd, scale, Q, hd,
	        K, ldk, 0.0f, s_buf, P);
	for (int r = 0; r < n_rep; r++)
		op_softmax(s_buf + (size_t)r * P, P);
	/* O [n_rep, hd] = S · V[0..P) */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n_rep, hd, P, 1.0f, s_buf, P,
	        V, ldk, 0.0f, O, hd);
}

void
op_attn_head(const float *Q, int ldq, const float *K, const float *V, int ldk,
        int n, int p0, int hd, float *O, int ldo, float *s_buf)
{
	float scale = 1.0f / sqrtf((float)hd);

	if (n == 1) {
		int P = p0 + 1;
		/* s [P] = K[0..P) · q · scale;  O = V[0..P)ᵀ · softmax(s) */
		cblas_sgemv(CblasRowMajor, CblasNoTrans, P, hd, scale, K, ldk, Q, 1, 0.0f,
		        s_buf, 1);
		op_softmax(s_buf, P);
		cblas_sgemv(CblasRowMajor, CblasTrans, P, hd, 1.0f, V, ldk, s_buf, 1, 0.0f,
		        O, 1);
		return;
	}
	for (int i0 = 0; i0 < n; i0 += OP_ATT_QCHUNK) {
		int nq = n - i0 < OP_ATT_QCHUNK ? n - i0 : OP_ATT_QCHUNK;
		int P = p0 + i0 + nq; /* keys visible to the chunk's last row */
		/* S [nq, P] = Q [nq, hd] · K[0..P)ᵀ · scale */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, P, hd, scale,
		        Q + (size_t)i0 * ldq, ldq, K, ldk, 0.0f, s_buf, P);
		for (int i = 0; i < nq; i++) {
			float *srow = s_buf + (size_t)i * P;
			int valid = p0 + i0 + i + 1;
			op_softmax(srow, valid);
			memset(srow + valid, 0, (size_t)(P - valid) * sizeof(float));
		}
		/* O [nq, hd] = S · V[0..P) */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, P, 1.0f,
		        s_buf, P, V, ldk, 0.0f, O + (size_t)i0 * ldo, ldo);
	}
}
