/* Weight products Y = X · Wᵀ (ops.h) for every weight type: the per-type
 * kernels (matmul.h), the register-tiled kernel they share, and the split
 * of the work over the pool.  Must not allocate per call except the
 * per-thread panel scratch of the f32 fallback, which grows once.
 *
 * The kernel reads the weights in their file type and converts them in
 * registers.  With up to 6 token rows (decode) it takes one weight row at
 * a time against every token row, so a thread reads its rows as one
 * sequential stream and every weight byte once; with more (prefill) it
 * takes tiles of 6 weight rows x 2 token rows (24 accumulators), walking
 * k-blocks of 1024 elements so the 6 rows stay in L1 while the token rows
 * of a block stay in L2.  Every output accumulates in two vector chains
 * reduced by one lane tree at the end of its row, on both paths, which is
 * what makes the results batch-invariant (matmul.h).
 *
 * OpenBLAS is not used for weight products: it has no F16/BF16/Q8_0
 * kernels, and the packaged build runs its Haswell (256-bit) kernels on
 * this AVX-512 machine; the kernel here measured 1.3-1.7x its sgemm on the
 * prefill shapes (thread CPU time, d 1024, ff 2816, 128 tokens).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "err.h"
#include "matmul.h"
#include "quant.h"

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

float *
mm_scratch(size_t n)
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

/* ---- vectors: VL lanes of f32, and loads of VL weights as f32 ---- */

enum mm_ty { TY_F32, TY_F16, TY_BF16 };

/* The kernels are left out of the sanitizers: instrumented they run 20 to
 * 50 times slower, and with them the whole SAN test suite.  Their reads
 * are bounded by the tmat's shape, which test_ops checks for every tile
 * shape against reference loops in the plain build. */
#define NOSAN __attribute__((no_sanitize("address", "undefined")))
#define INLINE static inline __attribute__((always_inline)) NOSAN

/* One weight as f32 (k tails and the scalar build). */
INLINE float
el_w(int ty, const uint8_t *w, size_t c)
{
	uint16_t h;
	uint32_t u;
	float f;

	switch (ty) {
	case TY_F16:
		memcpy(&h, w + 2 * c, 2);
		return fp16_to_f32(h);
	case TY_BF16:
		memcpy(&h, w + 2 * c, 2);
		u = (uint32_t)h << 16;
		memcpy(&f, &u, 4);
		return f;
	default:
		memcpy(&f, w + 4 * c, 4);
		return f;
	}
}


#if defined(__AVX512F__)
#define VL 16
typedef __m512 vf;
INLINE vf vf_zero(void) { return _mm512_setzero_ps(); }
INLINE vf vf_ldx(const float *p) { return _mm512_loadu_ps(p); }
INLINE vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }

/* Σ of the lanes by the tree (i, i+8), (i, i+4), (i, i+2), (i, i+1):
 * vf_sum4 reduces by the same tree, so every output gets the same bits
 * whichever of the two reduced it. */
INLINE float
vf_sum(vf a)
{
	__m256 h = _mm256_add_ps(_mm512_castps512_ps256(a),
	        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
	__m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
	__m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
	return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
}

INLINE void
vf_sum4(vf a, vf b, vf c, vf d, float *out)
{
	/* (i, i+8): the lanes of a then b, of c then d */
	__m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44),
	        _mm512_shuffle_f32x4(a, b, 0xee));
	__m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44),
	        _mm512_shuffle_f32x4(c, d, 0xee));
	/* (i, i+4): one 128-bit quarter per input */
	__m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88),
	        _mm512_shuffle_f32x4(ab, cd, 0xdd));
	/* (i, i+2), then (i, i+1), inside each quarter */
	s = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4e));
	s = _mm512_add_ps(s, _mm512_permute_ps(s, 0xb1));
	_mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_permutexvar_ps(
	        _mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12), s)));
}

INLINE vf
ld_w(int ty, const uint8_t *w, size_t c)
{
	switch (ty) {
	case TY_F16:
		return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(w + 2 * c)));
	case TY_BF16:
		return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
		        _mm256_loadu_si256((const __m256i *)(const void *)(w + 2 * c))), 16));
	default:
		return _mm512_loadu_ps((const float *)(const void *)w + c);
	}
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define VL 8
typedef __m256 vf;
INLINE vf vf_zero(void) { return _mm256_setzero_ps(); }
INLINE vf vf_ldx(const float *p) { return _mm256_loadu_ps(p); }
INLINE vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }

INLINE float
vf_sum(vf a)
{
	__m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
	__m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
	return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
}

INLINE void
vf_sum4(vf a, vf b, vf c, vf d, float *out)
{
	out[0] = vf_sum(a);
	out[1] = vf_sum(b);
	out[2] = vf_sum(c);
	out[3] = vf_sum(d);
}

INLINE vf
ld_w(int ty, const uint8_t *w, size_t c)
{
	switch (ty) {
	case TY_F16:
		return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(w + 2 * c)));
	case TY_BF16:
		return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(
		        _mm_loadu_si128((const __m128i *)(const void *)(w + 2 * c))), 16));
	default:
		return _mm256_loadu_ps((const float *)(const void *)w + c);
	}
}

#else
#define VL 1
typedef float vf;
INLINE vf vf_zero(void) { return 0.0f; }
INLINE vf vf_ldx(const float *p) { return *p; }
INLINE vf vf_fma(vf a, vf b, vf c) { return a * b + c; }
INLINE float vf_sum(vf a) { return a; }

INLINE void
vf_sum4(vf a, vf b, vf c, vf d, float *out)
{
	out[0] = a;
	out[1] = b;
	out[2] = c;
	out[3] = d;
}

INLINE vf ld_w(int ty, const uint8_t *w, size_t c) { return el_w(ty, w, c); }
#endif

/* ---- the tile ---- */

#define CHAINS 2    /* vector accumulators per output */
#define FEW_T 6     /* up to this many token rows: one weight row at a time */
#define TILE_R 6    /* more: tiles of 6 weight rows x 2 token rows */
#define TILE_T 2
#define KC 1024     /* row elements per k-block on the many-token path */
#define UNROLL _Pragma("GCC unroll 8")

/* Y[t * ldy + r] = (w row r) · (X row t) for r < R, t < TB; weight rows rs
 * bytes apart, k elements; this call covers row elements [c0, c1).
 *
 * Every output accumulates in CHAINS vector chains (vector step i of the
 * row goes to chain i % CHAINS, so even a lone row has independent FMAs
 * in flight); at the end of the row chain 0 + chain 1 is reduced by the
 * lane tree and the scalar k % VL tail is added.  A call that does not
 * reach the end of the row leaves its accumulators in spill, and the call
 * for the next elements picks them up: the arithmetic per output is the
 * same whatever R, TB and the k-blocks are. */
INLINE void
tile(int ty, const int R, const int TB, const uint8_t *w, size_t rs, int c0,
        int c1, int k, const float *X, int ldx, float *Y, int ldy, vf *spill)
{
	vf acc[CHAINS][TILE_R][3];
	int c = c0;

	UNROLL for (int h = 0; h < CHAINS; h++)
		UNROLL for (int r = 0; r < R; r++)
			UNROLL for (int t = 0; t < TB; t++)
				acc[h][r][t] = c0 ? spill[(h * R + r) * TB + t] : vf_zero();
#define STEP(H, C0) do {                                                        \
		vf wv[TILE_R];                                                  \
		UNROLL for (int r = 0; r < R; r++)                              \
			wv[r] = ld_w(ty, w + (size_t)r * rs, (size_t)(C0));     \
		UNROLL for (int t = 0; t < TB; t++) {                           \
			vf xv = vf_ldx(X + (size_t)t * ldx + (C0));             \
			UNROLL for (int r = 0; r < R; r++)                      \
				acc[H][r][t] = vf_fma(wv[r], xv, acc[H][r][t]); \
		}                                                               \
	} while (0)
	for (; c + CHAINS * VL <= c1; c += CHAINS * VL) {
		STEP(0, c);
		STEP(1, c + VL);
	}
	if (c1 < k) {
		/* k-blocks are multiples of CHAINS * VL: nothing left over */
		UNROLL for (int h = 0; h < CHAINS; h++)
			UNROLL for (int r = 0; r < R; r++)
				UNROLL for (int t = 0; t < TB; t++)
					spill[(h * R + r) * TB + t] = acc[h][r][t];
		return;
	}
	for (; c + VL <= k; c += VL)
		STEP(0, c);
#undef STEP
	UNROLL for (int t = 0; t < TB; t++) {
		float s[TILE_R];
		vf a[TILE_R];
		UNROLL for (int r = 0; r < R; r++)
			a[r] = acc[0][r][t] + acc[1][r][t];
		int r = 0;
		for (; r + 4 <= R; r += 4)
			vf_sum4(a[r], a[r + 1], a[r + 2], a[r + 3], s + r);
		for (; r < R; r++)
			s[r] = vf_sum(a[r]);
		/* the k % VL tail, in order, after the vector part */
		for (r = 0; r < R && c < k; r++) {
			float e = 0.0f;
			for (int cc = c; cc < k; cc++)
				e += el_w(ty, w + (size_t)r * rs, (size_t)cc) * X[(size_t)t * ldx + cc];
			s[r] += e;
		}
		UNROLL for (r = 0; r < R; r++)
			Y[(size_t)t * ldy + r] = s[r];
	}
}

/* One weight row against n <= FEW_T token rows, up to 3 at a time (more
 * live token rows run out of registers); the row stays in L1 for the
 * next ones. */
INLINE void
row_few(int ty, const uint8_t *w, int k, const float *X, int ldx, int n,
        float *Y, int ldy)
{
	while (n > 0) {
		int m = n == 4 ? 2 : n > 3 ? 3 : n;
		switch (m) {
		case 1: tile(ty, 1, 1, w, 0, 0, k, k, X, ldx, Y, ldy, NULL); break;
		case 2: tile(ty, 1, 2, w, 0, 0, k, k, X, ldx, Y, ldy, NULL); break;
		default: tile(ty, 1, 3, w, 0, 0, k, k, X, ldx, Y, ldy, NULL); break;
		}
		X += (size_t)m * ldx;
		Y += (size_t)m * ldy;
		n -= m;
	}
}

/* Token rows per block on the many-token path: a block's rows of X, one
 * k-block wide, stay in L2 (1 MiB here) while the weight rows go past. */
#define NB_MAX 96

/* Few token rows (decode): one weight row at a time, so each thread reads
 * its rows as one sequential stream (what the hardware prefetchers follow
 * best), each row against every token row.  Many (prefill): tiles of
 * TILE_R weight rows x TILE_T token rows, so each load feeds more FMAs;
 * the tiles of a token block walk a k-block of their 6 rows (24 KiB of
 * f32 at most: L1) before the next one. */
INLINE void
dot_ty(int ty, const struct tmat *W, uint32_t r0, uint32_t r1, const float *X,
        int n, int ldx, float *Y, int ldy)
{
	const uint8_t *w = (const uint8_t *)W->data;
	size_t rs = W->row_size;
	int k = (int)W->n_in;
	vf spill[NB_MAX / TILE_T * CHAINS * TILE_R * TILE_T];

	if (n <= FEW_T) {
		for (uint32_t j = r0; j < r1; j++)
			row_few(ty, w + (size_t)j * rs, k, X, ldx, n, Y + j, ldy);
		return;
	}
	for (int t0 = 0; t0 < n; t0 += NB_MAX) {
		int tn = n - t0 < NB_MAX ? n - t0 : NB_MAX;
		const float *Xb = X + (size_t)t0 * ldx;
		float *Yb = Y + (size_t)t0 * ldy;
		uint32_t j = r0;
		for (; j + TILE_R <= r1; j += TILE_R) {
			const uint8_t *wj = w + (size_t)j * rs;
			for (int c0 = 0; c0 < k; c0 += KC) {
				int c1 = k - c0 <= KC ? k : c0 + KC, t = 0;
				vf *sp = spill;
				for (; t + TILE_T <= tn; t += TILE_T, sp += CHAINS * TILE_R * TILE_T)
					tile(ty, TILE_R, TILE_T, wj, rs, c0, c1, k, Xb + (size_t)t * ldx,
					        ldx, Yb + (size_t)t * ldy + j, ldy, sp);
				if (t < tn)
					tile(ty, TILE_R, 1, wj, rs, c0, c1, k, Xb + (size_t)t * ldx, ldx,
					        Yb + (size_t)t * ldy + j, ldy, sp);
			}
		}
		for (; j < r1; j++)
			for (int t = 0; t < tn; t += FEW_T)
				row_few(ty, w + (size_t)j * rs, k, Xb + (size_t)t * ldx, ldx,
				        tn - t < FEW_T ? tn - t : FEW_T, Yb + (size_t)t * ldy + j, ldy);
	}
}

NOSAN int
mm_dot_f32(const struct tmat *W, uint32_t r0, uint32_t r1, const float *X,
        int n, int ldx, float *Y, int ldy)
{
	dot_ty(TY_F32, W, r0, r1, X, n, ldx, Y, ldy);
	return 0;
}

NOSAN static int
dot_f16(const struct tmat *W, uint32_t r0, uint32_t r1, const float *X,
        int n, int ldx, float *Y, int ldy)
{
	dot_ty(TY_F16, W, r0, r1, X, n, ldx, Y, ldy);
	return 0;
}

NOSAN static int
dot_bf16(const struct tmat *W, uint32_t r0, uint32_t r1, const float *X,
        int n, int ldx, float *Y, int ldy)
{
	dot_ty(TY_BF16, W, r0, r1, X, n, ldx, Y, ldy);
	return 0;
}

/* Any type dtype_row_to_f32 reads. */
static int
rows_to_f32(const struct tmat *W, uint32_t r0, uint32_t r1, float *dst)
{
	for (uint32_t r = r0; r < r1; r++) {
		int rc = dtype_row_to_f32(W->type,
		        (const uint8_t *)W->data + (size_t)r * W->row_size,
		        dst + (size_t)(r - r0) * W->n_in, W->n_in);
		if (rc)
			return rc;
	}
	return 0;
}

/* Rows [r0, r1) of W (any type kk->to_f32 reads) against X: converted
 * MM_PANEL_ROWS at a time into buf, then the f32 tile. */
static int
panels(const struct mm_kern *kk, const struct tmat *W, uint32_t r0,
        uint32_t r1, const float *X, int n, int ldx, float *Y, int ldy,
        float *buf)
{
	int rc;

	for (uint32_t j0 = r0; j0 < r1; j0 += MM_PANEL_ROWS) {
		uint32_t nb = r1 - j0 < MM_PANEL_ROWS ? r1 - j0 : MM_PANEL_ROWS;
		struct tmat P = { DTYPE_F32, W->n_in, nb, (size_t)W->n_in * sizeof(float), buf };
		if ((rc = kk->to_f32(W, j0, j0 + nb, buf)) != 0)
			return rc;
		mm_dot_f32(&P, 0, nb, X, n, ldx, Y + j0, ldy);
	}
	return 0;
}

/* Block-quantised weights (quant.h): the activations are rounded as
 * llama.cpp rounds them, then quant.c's integer dot products; with at
 * least MM_QUANT_PANEL_N token rows, for the types quant_prefill_sgemm
 * names, dequantised panels through the f32 tile on the rounded rows
 * instead (the same products summed in float, faster there). */
static const struct mm_kern k_quant_panel = { NULL, rows_to_f32, 0 };

static int
dot_quant(const struct tmat *W, uint32_t r0, uint32_t r1, const float *X,
        int n, int ldx, float *Y, int ldy)
{
	size_t k = W->n_in;
	float *buf, *xr;

	if (n < MM_QUANT_PANEL_N || !quant_prefill_sgemm(W->type))
		return quant_matmul_rows(W->type, W->data, W->row_size, W->n_in, r0, r1,
		        X, n, ldx, Y, ldy);
	if ((buf = mm_scratch((size_t)MM_PANEL_ROWS * k + (size_t)n * k)) == NULL)
		return EPMOE_ENOMEM;
	xr = buf + (size_t)MM_PANEL_ROWS * k;
	for (int r = 0; r < n; r++)
		quant_act_round(W->type, X + (size_t)r * ldx, xr + (size_t)r * k, k);
	return panels(&k_quant_panel, W, r0, r1, xr, n, (int)k, Y, ldy, buf);
}

/* ---- the per-type table ---- */

const struct mm_kern *
mm_kern_of(enum dtype t)
{
	static const struct mm_kern k_f32 = { mm_dot_f32, rows_to_f32, 0 };
	static const struct mm_kern k_f16 = { dot_f16, rows_to_f32, 0 };
	static const struct mm_kern k_bf16 = { dot_bf16, rows_to_f32, 0 };
	static const struct mm_kern k_quant = { dot_quant, rows_to_f32, 0 };

	switch (t) {
	case DTYPE_F32: return &k_f32;
	case DTYPE_F16: return &k_f16;
	case DTYPE_BF16: return &k_bf16;
	default: return quant_is_weight(t) ? &k_quant : NULL;
	}
}

int
tmat_row_f32(const struct tmat *m, uint32_t r, float *dst)
{
	const uint8_t *row = (const uint8_t *)m->data + (size_t)r * m->row_size;
	return dtype_row_to_f32(m->type, row, dst, m->n_in);
}

int
op_matmul_rows(const struct tmat *W, uint32_t r0, uint32_t r1,
        const float *X, int n, int ldx, float *Y, int ldy)
{
	const struct mm_kern *kk = mm_kern_of(W->type);
	float *buf;

	if (kk == NULL)
		return EPMOE_ENOTSUP;
	if (r1 <= r0 || n <= 0)
		return 0;
	if (kk->dot && (kk->dot_max_n == 0 || n <= kk->dot_max_n))
		return kk->dot(W, r0, r1, X, n, ldx, Y, ldy);
	if ((buf = mm_scratch((size_t)MM_PANEL_ROWS * W->n_in)) == NULL)
		return EPMOE_ENOMEM;
	return panels(kk, W, r0, r1, X, n, ldx, Y, ldy, buf);
}

/* ---- threading ---- */

/* The products of a round are cut into chunks of rows of about equal work
 * (rows x tokens x k); threads take the next chunk from a counter, so a
 * thread that lost its core for a while (a shared machine) does not hold
 * the round up.  Each output is computed by one chunk, so which thread
 * did it never changes its bits. */
#define MM_MAX_CHUNKS 1024
#define MM_CHUNKS_PER_THREAD 8
#define MM_ALIGN 48   /* rows: whole 6-row tiles and 64-byte lines of Y */

struct mm_chunk {
	uint32_t mm, lo, hi;
};

struct mm_job {
	const struct op_mm *mm;
	int n_chunk;
	atomic_int next;
	atomic_int rc;
	struct mm_chunk chunk[MM_MAX_CHUNKS];
};

static void
mm_worker(void *ctx, int ith, int nth)
{
	struct mm_job *j = ctx;

	(void)ith;
	(void)nth;
	for (;;) {
		int c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
		if (c >= j->n_chunk)
			break;
		const struct mm_chunk *ch = &j->chunk[c];
		const struct op_mm *p = &j->mm[ch->mm];
		int rc = op_matmul_rows(p->W, ch->lo, ch->hi, p->X, p->n, p->ldx, p->Y, p->ldy);
		if (rc)
			atomic_store(&j->rc, rc);
	}
}

/* Cuts the products into at most MM_MAX_CHUNKS chunks of about `target`
 * multiply-adds.  Returns the count, or -1 if they do not fit. */
static int
plan_chunks(struct mm_job *j, int n_mm, double target)
{
	int nc = 0;

	for (int m = 0; m < n_mm; m++) {
		const struct op_mm *p = &j->mm[m];
		uint32_t rows = p->W->n_out;
		double per_row = (double)p->n * p->W->n_in;
		uint32_t step;

		if (p->n <= 0 || rows == 0)
			continue;
		step = (uint32_t)(target / per_row);
		step -= step % MM_ALIGN;
		if (step < MM_ALIGN)
			step = MM_ALIGN;
		for (uint32_t lo = 0; lo < rows; lo += step) {
			if (nc == MM_MAX_CHUNKS)
				return -1;
			j->chunk[nc++] = (struct mm_chunk){ (uint32_t)m, lo,
				rows - lo < step ? rows : lo + step };
		}
	}
	return nc;
}

int
op_matmul_batch(struct pool *pool, int n_mm, const struct op_mm *mm)
{
	int nth = pool_size(pool);
	double work = 0;

	for (int m = 0; m < n_mm; m++) {
		if (mm_kern_of(mm[m].W->type) == NULL)
			return EPMOE_ENOTSUP;
		if (mm[m].n > 0)
			work += (double)mm[m].W->n_out * mm[m].W->n_in * mm[m].n;
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
	struct mm_job job, *j = &job; /* 12 KiB of stack */
	j->mm = mm;
	double target = work / ((double)nth * MM_CHUNKS_PER_THREAD);
	while ((j->n_chunk = plan_chunks(j, n_mm, target)) < 0)
		target *= 2;
	atomic_init(&j->next, 0);
	atomic_init(&j->rc, 0);
	pool_run(pool, mm_worker, j);
	return atomic_load(&j->rc);
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
