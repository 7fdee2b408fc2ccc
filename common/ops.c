/* Forward-pass kernels other than the weight products (common/matmul.c):
 * norms, RoPE, softmax, SwiGLU, attention.  See ops.h for the shapes.
 * Must not allocate. */
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

void openblas_set_num_threads(int num_threads);

void
op_blas_init(void)
{
	openblas_set_num_threads(1);
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

/* o[0..hd) += a · v[0..hd), v of type kv (F32 or F16). */
static void
axpy_kv(float *o, float a, const void *v, enum dtype kv, int hd)
{
	int c = 0;
#if defined(__AVX512F__)
	__m512 av = _mm512_set1_ps(a);
	if (kv == DTYPE_F16) {
		const uint16_t *h = v;
		for (; c + 16 <= hd; c += 16)
			_mm512_storeu_ps(o + c, _mm512_fmadd_ps(av, _mm512_cvtph_ps(
			        _mm256_loadu_si256((const __m256i *)(const void *)(h + c))),
			        _mm512_loadu_ps(o + c)));
	} else {
		const float *f = v;
		for (; c + 16 <= hd; c += 16)
			_mm512_storeu_ps(o + c, _mm512_fmadd_ps(av, _mm512_loadu_ps(f + c),
			        _mm512_loadu_ps(o + c)));
	}
#endif
	if (kv == DTYPE_F16) {
		const uint16_t *h = v;
		for (; c < hd; c++)
			o[c] += a * fp16_to_f32(h[c]);
	} else {
		const float *f = v;
		for (; c < hd; c++)
			o[c] += a * f[c];
	}
}

void
op_attn_decode(const float *Q, int n_rep, const void *K, const void *V,
        enum dtype kv, size_t ldk, int P, int hd, float *O, float *s_buf)
{
	float scale = 1.0f / sqrtf((float)hd);
	size_t es = kv == DTYPE_F16 ? 2 : 4;
	/* S [n_rep, P] = Q · K[0..P)ᵀ: K as the "weights" of a product, each
	 * key row read once for all the query heads that share it */
	struct tmat Kt = { kv, (uint32_t)hd, (uint32_t)P, ldk * es, K };

	op_matmul_rows(&Kt, 0, (uint32_t)P, Q, n_rep, hd, s_buf, P);
	for (int r = 0; r < n_rep; r++) {
		float *sr = s_buf + (size_t)r * P;
		for (int j = 0; j < P; j++)
			sr[j] *= scale;
		op_softmax(sr, P);
	}
	/* O [n_rep, hd] = S · V[0..P) */
	memset(O, 0, (size_t)n_rep * hd * sizeof(float));
	for (int j = 0; j < P; j++) {
		const uint8_t *vj = (const uint8_t *)V + (size_t)j * ldk * es;
		for (int r = 0; r < n_rep; r++)
			axpy_kv(O + (size_t)r * hd, s_buf[(size_t)r * P + j], vj, kv, hd);
	}
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
