/* OT solvers for the balancing routing policies (routing.md §0.1, §0.2).
 *
 * Both solvers keep C/xi twice, row-major [T, Ep] and transposed [E, Tp]
 * (rows padded to a multiple of the vector width), so that each half step
 * is "for each row i: for each lane j: acc[j] op= F(M[i][j] + y[i])": the
 * reduction runs across rows while the lanes stay independent, which
 * vectorises without reassociating floating-point sums.  The vector code
 * uses GCC vector extensions (8 floats) and a Cephes-style expf.
 *
 * Must not allocate once the workspace has grown to the largest T x E.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "route.h"

#ifndef ROUTE_VL
#ifdef __AVX512F__
#define ROUTE_VL 16
#else
#define ROUTE_VL 8
#endif
#endif
#define VL ROUTE_VL

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(float))));

/* Padding value of C/xi: exp() of it is 0, and it never wins a max. */
#define PAD_VAL (-1e30f)

static inline vf
vsplat(float x)
{
	return (vf){ 0 } + x;
}

static inline vf
vload(const float *p)
{
	vf v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static inline void
vstore(float *p, vf v)
{
	memcpy(p, &v, sizeof(v));
}

static inline vf
vsel(vi m, vf a, vf b)
{
	return (vf)((m & (vi)a) | (~m & (vi)b));
}

static inline vf
vmax(vf a, vf b)
{
	return vsel(a > b, a, b);
}

static inline vf
vmin(vf a, vf b)
{
	return vsel(a < b, a, b);
}

/* exp(x): range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 minimax
 * polynomial (Cephes expf coefficients), scale by 2^n through the exponent
 * bits.  Below ln(FLT_MIN) the result is 0; above 88 it saturates. */
#define EXP_LO (-87.33654f)
#define EXP_HI 88.0f
#define EXP_MAGIC 12582912.0f /* 1.5 * 2^23: adding it rounds to an int */

static inline vf
vexp(vf x)
{
	vi under = x < vsplat(EXP_LO);
	vf t, n, r, p, y;
	vi ni;

	x = vmax(vmin(x, vsplat(EXP_HI)), vsplat(EXP_LO));
	t = x * 1.44269504088896341f + EXP_MAGIC;
	n = t - EXP_MAGIC;
	ni = (vi)t - (vi)vsplat(EXP_MAGIC);
	r = x - n * 0.693359375f;
	r = r - n * -2.12194440e-4f;
	p = vsplat(1.9875691500e-4f);
	p = p * r + 1.3981999507e-3f;
	p = p * r + 8.3334519073e-3f;
	p = p * r + 4.1665795894e-2f;
	p = p * r + 1.6666665459e-1f;
	p = p * r + 5.0000001201e-1f;
	y = p * r * r + r + 1.0f;
	y = y * (vf)((ni + 127) << 23);
	return (vf)((vi)y & ~under);
}

float
route_expf(float x)
{
	float buf[VL];

	vstore(buf, vexp(vsplat(x)));
	return buf[0];
}

int
route_row_scan(const float *x, int n, float *max)
{
	vf m = vsplat(-FLT_MAX);
	vi bad = (vi){ 0 };
	float mb[VL], mx = -FLT_MAX;
	int i = 0, ok = 1;

	if (n < VL) {
		for (; i < n; i++) {
			ok &= isfinite(x[i]) != 0;
			mx = x[i] > mx ? x[i] : mx;
		}
		*max = mx;
		return ok;
	}
	for (; i + VL <= n; i += VL) {
		vf v = vload(x + i);

		m = vmax(m, v);
		bad |= ~((v - v) == 0.0f);  /* NaN - NaN, Inf - Inf: NaN */
	}
	vstore(mb, m);
	for (int l = 0; l < VL; l++) {
		ok &= bad[l] == 0;
		mx = mb[l] > mx ? mb[l] : mx;
	}
	for (; i < n; i++) {
		ok &= isfinite(x[i]) != 0;
		mx = x[i] > mx ? x[i] : mx;
	}
	*max = mx;
	return ok;
}

double
route_sumexp(const float *x, int n, float m)
{
	vf acc = vsplat(0.0f), vm = vsplat(m);
	float buf[VL];
	double s = 0.0;
	int i = 0;

	for (; i + VL <= n; i += VL)
		acc += vexp(vload(x + i) - vm);
	if (i < n) {
		float tail[VL];

		for (int l = 0; l < VL; l++)
			tail[l] = i + l < n ? x[i + l] - m : -FLT_MAX;
		acc += vexp(vload(tail));
	}
	vstore(buf, acc);
	for (int l = 0; l < VL; l++)
		s += buf[l];
	return s;
}

static inline size_t
pad_to(size_t n)
{
	return (n + VL - 1) / VL * VL;
}

static int
grow(float **p, size_t *cap, size_t n)
{
	float *q;

	if (n <= *cap)
		return 0;
	if ((q = realloc(*p, n * sizeof(*q))) == NULL)
		return EPMOE_ENOMEM;
	*p = q;
	*cap = n;
	return 0;
}

void
route_ot_init(struct route_ot *w)
{
	memset(w, 0, sizeof(*w));
}

void
route_ot_fini(struct route_ot *w)
{
	if (w == NULL)
		return;
	free(w->K);
	free(w->KT);
	free(w->f);
	free(w->g);
	free(w->tmp);
	memset(w, 0, sizeof(*w));
}

/* Sizes the workspace and fills K = C/xi and KT, both padded. */
static int
ot_prepare(struct route_ot *w, const float *C, int T, int E, float xi)
{
	size_t Tp = pad_to((size_t)T), Ep = pad_to((size_t)E);
	size_t nmax = Tp > Ep ? Tp : Ep;
	size_t kk = Tp * Ep;
	float inv = 1.0f / xi;
	vf vmn, vmx;
	int rc;

	if ((rc = grow(&w->K, &w->cap_k, kk)) != 0 ||
	    (rc = grow(&w->KT, &w->cap_kt, kk)) != 0)
		return rc;
	if ((rc = grow(&w->f, &w->cap_f, Tp)) != 0 ||
	    (rc = grow(&w->g, &w->cap_g, Ep)) != 0 ||
	    (rc = grow(&w->tmp, &w->cap_tmp, 4 * nmax)) != 0)
		return rc;
	/* Tiles of 16 rows so the transposed writes stay contiguous. */
	w->kmin = FLT_MAX;
	w->kmax = -FLT_MAX;
	vmn = vsplat(FLT_MAX);
	vmx = vsplat(-FLT_MAX);
	for (int t0 = 0; t0 < T; t0 += 16) {
		int t1 = t0 + 16 < T ? t0 + 16 : T;

		for (int t = t0; t < t1; t++) {
			float *row = w->K + (size_t)t * Ep;
			const float *c = C + (size_t)t * E;
			int e = 0;

			for (; e + VL <= E; e += VL) {
				vf v = vload(c + e) * inv;

				vmn = vmin(vmn, v);
				vmx = vmax(vmx, v);
				vstore(row + e, v);
			}
			for (; e < E; e++) {
				float v = c[e] * inv;

				row[e] = v;
				w->kmin = v < w->kmin ? v : w->kmin;
				w->kmax = v > w->kmax ? v : w->kmax;
			}
			for (size_t q = (size_t)E; q < Ep; q++)
				row[q] = PAD_VAL;
		}
		for (int e = 0; e < E; e++) {
			float *dst = w->KT + (size_t)e * Tp;

			for (int t = t0; t < t1; t++)
				dst[t] = w->K[(size_t)t * Ep + e];
		}
	}
	for (int e = 0; e < E; e++)
		for (size_t t = (size_t)T; t < Tp; t++)
			w->KT[(size_t)e * Tp + t] = PAD_VAL;
	{
		float a[VL], b[VL];

		vstore(a, vmn);
		vstore(b, vmx);
		for (int l = 0; l < VL; l++) {
			w->kmin = a[l] < w->kmin ? a[l] : w->kmin;
			w->kmax = b[l] > w->kmax ? b[l] : w->kmax;
		}
	}
	return 0;
}

/* out[j] = LSE_i (M[i][j] + y[i]) for every lane j < nj (nj padded).
 * M is [ni, nj] row-major.  shift, if not NULL, is an upper bound of
 * max_i (M[i][j] + y[i]) per lane known from the previous half step; it
 * saves the max pass.  A lane whose shifted sum underflows is redone with
 * its true maximum. */
static void
lse_lanes(const float *M, int ni, size_t nj, const float *y,
    const float *shift, float *out)
{
	for (size_t j = 0; j < nj; j += VL) {
		vf m, s = vsplat(0.0f);
		float mb[VL], sb[VL];
		int redo = 0;

		if (shift != NULL) {
			m = vload(shift + j);
			for (int i = 0; i < ni; i++)
				s += vexp(vload(M + (size_t)i * nj + j) + y[i] -
				    m);
			vstore(sb, s);
			for (int l = 0; l < VL; l++)
				redo |= !(sb[l] > 1e-20f && sb[l] < 1e30f);
		}
		if (shift == NULL || redo) {
			m = vsplat(-FLT_MAX);
			for (int i = 0; i < ni; i++)
				m = vmax(m, vload(M + (size_t)i * nj + j) + y[i]);
			s = vsplat(0.0f);
			for (int i = 0; i < ni; i++)
				s += vexp(vload(M + (size_t)i * nj + j) + y[i] -
				    m);
		}
		vstore(mb, m);
		vstore(sb, s);
		for (int l = 0; l < VL; l++)
			out[j + l] = mb[l] + logf(sb[l]);
	}
}

/* out[j] = sum_i y[i] M[i][j] for lanes j < nj; four partial sums break
 * the FMA latency chain. */
static void
matvec_lanes(const float *M, int ni, size_t nj, const float *y, float *out)
{
	size_t j = 0;

	/* Four lane blocks at a time, one row after the other: a single
	 * contiguous pass over M with four independent accumulators. */
	for (; j + 4 * VL <= nj; j += 4 * VL) {
		vf a0 = vsplat(0.0f), a1 = a0, a2 = a0, a3 = a0;

		for (int i = 0; i < ni; i++) {
			const float *r = M + (size_t)i * nj + j;
			float yi = y[i];

			a0 += yi * vload(r);
			a1 += yi * vload(r + VL);
			a2 += yi * vload(r + 2 * VL);
			a3 += yi * vload(r + 3 * VL);
		}
		vstore(out + j, a0);
		vstore(out + j + VL, a1);
		vstore(out + j + 2 * VL, a2);
		vstore(out + j + 3 * VL, a3);
	}
	/* Narrow remainder: four rows at a time break the FMA chain. */
	for (; j < nj; j += VL) {
		vf a0 = vsplat(0.0f), a1 = a0, a2 = a0, a3 = a0;
		int i = 0;

		for (; i + 4 <= ni; i += 4) {
			const float *r = M + (size_t)i * nj + j;

			a0 += y[i] * vload(r);
			a1 += y[i + 1] * vload(r + nj);
			a2 += y[i + 2] * vload(r + 2 * nj);
			a3 += y[i + 3] * vload(r + 3 * nj);
		}
		for (; i < ni; i++)
			a0 += y[i] * vload(M + (size_t)i * nj + j);
		vstore(out + j, (a0 + a1) + (a2 + a3));
	}
}

/* The §0.1 iteration in scaling form: Kx = exp(C/xi - M) with M the
 * largest entry (a constant shift of f, absorbed by the first column
 * step, so the iterates equal the log-domain ones), u = e^(f+M), v = e^g.
 * Returns 1 (nothing written) when the range of C/xi or of a scaling is
 * too wide for float; the caller then runs the log-domain iteration. */
static int
sk_scaling(struct route_ot *w, int T, int E, float row_mass,
    float col_mass, int max_iter, float tol, float *plan,
    struct route_ot_result *res)
{
	size_t Tp = pad_to((size_t)T), Ep = pad_to((size_t)E);
	size_t nmax = Tp > Ep ? Tp : Ep;
	float *u = w->f, *v = w->g, *cacc = w->tmp, *racc = w->tmp + nmax;
	float *colsum = w->tmp + 2 * nmax;
	float M = w->kmax, resid = 0.0f;
	int it = 0, conv = 0;

	if (!(M - w->kmin < 80.0f))
		return 1;
	/* K and KT become exp(K - M); padding (PAD_VAL) becomes 0. */
	for (size_t i = 0; i < (size_t)T * Ep; i += VL)
		vstore(w->K + i, vexp(vload(w->K + i) - M));
	for (size_t i = 0; i < (size_t)E * Tp; i += VL)
		vstore(w->KT + i, vexp(vload(w->KT + i) - M));
	for (size_t t = 0; t < Tp; t++)
		u[t] = 1.0f;
	for (size_t e = 0; e < Ep; e++)
		v[e] = 1.0f;
	for (;;) {
		int bad = 0;

		/* column sums of diag(u) Kx: lanes e */
		matvec_lanes(w->K, T, Ep, u, cacc);
		if (it > 0 && tol > 0.0f) {
			float r = 0.0f;

			for (int e = 0; e < E; e++) {
				float d = fabsf(v[e] * cacc[e] - col_mass);

				if (!(d <= r))
					r = d;
			}
			if (r < tol * col_mass) {
				conv = 1;
				break;
			}
		}
		if (it == max_iter)
			break;
		for (int e = 0; e < E; e++) {
			v[e] = col_mass / cacc[e];
			bad |= !(v[e] > 1e-30f && v[e] < 1e30f);
		}
		matvec_lanes(w->KT, E, Tp, v, racc);
		for (int t = 0; t < T; t++) {
			u[t] = row_mass / racc[t];
			bad |= !(u[t] > 1e-30f && u[t] < 1e30f);
		}
		if (bad)
			return 1;
		it++;
	}
	for (size_t e = 0; e < Ep; e++)
		colsum[e] = 0.0f;
	for (int t = 0; t < T; t++) {
		const float *kr = w->K + (size_t)t * Ep;
		float *pr = plan + (size_t)t * E;
		float ut = u[t];

		for (size_t e = 0; e < Ep; e += VL) {
			vf pv = ut * vload(kr + e) * vload(v + e);

			vstore(colsum + e, vload(colsum + e) + pv);
			if ((int)e + VL <= E) {
				vstore(pr + e, pv);
			} else {
				float buf[VL];

				vstore(buf, pv);
				memcpy(pr + e, buf, (size_t)(E - (int)e) *
				    sizeof(float));
			}
		}
	}
	for (int e = 0; e < E; e++) {
		float d = fabsf(colsum[e] - col_mass) / col_mass;

		if (!(d <= resid))
			resid = d;
	}
	if (res != NULL) {
		res->iters = it;
		res->converged = conv;
		res->residual = resid;
		res->log_domain = 0;
	}
	return 0;
}

int
route_sinkhorn(struct route_ot *w, const float *C, int T, int E, float xi,
    float row_mass, float col_mass, int max_iter, float tol, float *plan,
    struct route_ot_result *res)
{
	size_t Tp, Ep;
	float la, lb, *clse, *rlse, *colsum, *shift;
	int rc, it = 0, conv = 0;
	float resid = 0.0f;

	if (T < 1 || E < 1 || !(xi > 0.0f) || !(row_mass > 0.0f) ||
	    !(col_mass > 0.0f) || max_iter < 0 || !(tol >= 0.0f))
		return EPMOE_EINVAL;
	if ((rc = ot_prepare(w, C, T, E, xi)) != 0)
		return rc;
	if (!w->log_only) {
		if (sk_scaling(w, T, E, row_mass, col_mass, max_iter, tol, plan,
		    res) == 0)
			return 0;
		/* out of float range: start over in the log domain */
		if ((rc = ot_prepare(w, C, T, E, xi)) != 0)
			return rc;
	}
	Tp = pad_to((size_t)T);
	Ep = pad_to((size_t)E);
	clse = w->tmp;
	rlse = w->tmp + (Tp > Ep ? Tp : Ep);
	colsum = rlse + (Tp > Ep ? Tp : Ep);
	shift = colsum + (Tp > Ep ? Tp : Ep);
	la = logf(row_mass);
	lb = logf(col_mass);
	memset(w->f, 0, Tp * sizeof(float));
	memset(w->g, 0, Ep * sizeof(float));
	for (;;) {
		/* Column step; its LSE also gives the column sums of the plan
		 * left by the previous row step: exp(clse + g_old). */
		if (it > 0)
			for (size_t e = 0; e < Ep; e++)
				shift[e] = la - w->g[e];
		lse_lanes(w->K, T, Ep, w->f, it > 0 ? shift : NULL, clse);
		if (it > 0 && tol > 0.0f) {
			float r = 0.0f;

			for (int e = 0; e < E; e++) {
				float d = fabsf(expf(clse[e] + w->g[e]) - col_mass);

				if (!(d <= r))
					r = d;
			}
			if (r < tol * col_mass) {
				conv = 1;
				break;
			}
		}
		if (it == max_iter)
			break;
		for (int e = 0; e < E; e++)
			w->g[e] = lb - clse[e];
		for (size_t t = 0; t < Tp; t++)
			shift[t] = lb - w->f[t];
		lse_lanes(w->KT, E, Tp, w->g, shift, rlse);
		for (int t = 0; t < T; t++)
			w->f[t] = la - rlse[t];
		it++;
	}
	/* Plan and its column sums. */
	for (int e = 0; e < E; e++)
		colsum[e] = 0.0f;
	for (int t = 0; t < T; t++) {
		const float *kr = w->K + (size_t)t * Ep;
		float *pr = plan + (size_t)t * E;
		vf ft = vsplat(w->f[t]);
		float buf[VL];

		for (size_t e = 0; e < Ep; e += VL) {
			vf v = vexp(vload(kr + e) + ft + vload(w->g + e));
			int n = (int)e + VL <= E ? VL : E - (int)e;

			vstore(buf, v);
			for (int l = 0; l < n; l++) {
				pr[e + l] = buf[l];
				colsum[e + l] += buf[l];
			}
		}
	}
	for (int e = 0; e < E; e++) {
		float d = fabsf(colsum[e] - col_mass) / col_mass;

		if (!(d <= resid))
			resid = d;
	}
	if (res != NULL) {
		res->iters = it;
		res->converged = conv;
		res->residual = resid;
		res->log_domain = 1;
	}
	return 0;
}

/* ---- capped OT -------------------------------------------------------- */

static inline vf
vsigmoid(vf z)
{
	return 1.0f / (1.0f + vexp(-z));
}

/* One half step of the capped solver: for every lane j < nreal find x[j]
 * with  F_j(x) = sum_i sigmoid(M[i][j] + y[i] + x) - target = 0
 * (bracketed Newton, bisection when Newton leaves the bracket).  x holds
 * the warm start on entry.  Returns the largest |F_j| at the warm start;
 * if that is below stop, x is left unchanged.  tmp needs 4 x nj floats. */
static float
solve_lanes(const float *M, int ni, size_t nj, int nreal, const float *y,
    float *x, float target, float stop, float *tmp)
{
	float *Fb = tmp, *Db = tmp + nj, *lob = tmp + 2 * nj, *hib = tmp + 3 * nj;
	float q = target / (float)ni;
	float L = logf(q / (1.0f - q));
	float worst = 0.0f;
	float ftol = 1e-6f * target;

	/* Pass 1: F and F' at the warm start, and the bracket: with every
	 * sigmoid <= q (>= q) the sum is <= target (>= target). */
	for (size_t j = 0; j < nj; j += VL) {
		vf xj = vload(x + j);
		vf F = vsplat(0.0f), D = F;
		vf zmax = vsplat(-FLT_MAX), zmin = vsplat(FLT_MAX);

		for (int i = 0; i < ni; i++) {
			vf z = vload(M + (size_t)i * nj + j) + y[i];
			vf s = vsigmoid(z + xj);

			zmax = vmax(zmax, z);
			zmin = vmin(zmin, z);
			F += s;
			D += s * (1.0f - s);
		}
		vstore(Fb + j, F - target);
		vstore(Db + j, D);
		vstore(lob + j, L - zmax);
		vstore(hib + j, L - zmin);
	}
	for (int j = 0; j < nreal; j++) {
		float a = fabsf(Fb[j]);

		if (!(a <= worst))
			worst = a;
	}
	if (worst < stop)
		return worst;
	/* Newton on every lane block until all its lanes are within ftol. */
	for (size_t j = 0; j < nj; j += VL) {
		vf xj = vload(x + j), F = vload(Fb + j), D = vload(Db + j);
		vf lo = vload(lob + j), hi = vload(hib + j);

		vi valid;

		for (int l = 0; l < VL; l++)
			valid[l] = (int)j + l < nreal ? -1 : 0;
		for (int step = 0; step < 60; step++) {
			vi done = ((F <= ftol) & (F >= -ftol)) | ~valid;
			vi pos = F > 0.0f;
			vf xn;
			int fin = 1;

			for (int l = 0; l < VL; l++)
				fin &= done[l] != 0;
			if (fin)
				break;
			/* Keep the bracket around the root (x inside it). */
			hi = vsel(pos & (xj < hi), xj, hi);
			lo = vsel(~pos & (xj > lo), xj, lo);
			xn = xj - F / D;
			xn = vsel((xn > lo) & (xn < hi), xn, 0.5f * (lo + hi));
			xj = vsel(done, xj, xn);
			F = vsplat(0.0f);
			D = F;
			for (int i = 0; i < ni; i++) {
				vf z = vload(M + (size_t)i * nj + j) + y[i];
				vf s = vsigmoid(z + xj);

				F += s;
				D += s * (1.0f - s);
			}
			F -= target;
		}
		vstore(x + j, xj);
	}
	return worst;
}

int
route_sinkhorn_capped(struct route_ot *w, const float *C, int T, int E,
    float xi, float row_mass, float col_mass, int max_iter, float tol,
    float *plan, struct route_ot_result *res)
{
	size_t Tp, Ep;
	float *colsum;
	int rc, it = 0, conv = 0;
	float resid = 0.0f;

	if (T < 1 || E < 1 || !(xi > 0.0f) || !(row_mass > 0.0f) ||
	    !(row_mass < (float)E) || !(col_mass > 0.0f) ||
	    !(col_mass < (float)T) || max_iter < 0 || !(tol >= 0.0f))
		return EPMOE_EINVAL;
	if ((rc = ot_prepare(w, C, T, E, xi)) != 0)
		return rc;
	Tp = pad_to((size_t)T);
	Ep = pad_to((size_t)E);
	memset(w->f, 0, Tp * sizeof(float));
	memset(w->g, 0, Ep * sizeof(float));
	for (;;) {
		float stop = (it > 0 && tol > 0.0f) ? tol * col_mass : 0.0f;
		float r;

		if (it == max_iter)
			break;
		/* Column step; at its warm start F is the column residual of
		 * the plan left by the previous row step. */
		r = solve_lanes(w->K, T, Ep, E, w->f, w->g, col_mass, stop,
		    w->tmp);
		if (it > 0 && r < stop) {
			conv = 1;
			break;
		}
		solve_lanes(w->KT, E, Tp, T, w->g, w->f, row_mass, 0.0f,
		    w->tmp);
		it++;
	}
	colsum = w->tmp;
	for (int e = 0; e < E; e++)
		colsum[e] = 0.0f;
	for (int t = 0; t < T; t++) {
		const float *kr = w->K + (size_t)t * Ep;
		float *pr = plan + (size_t)t * E;
		vf ft = vsplat(w->f[t]);
		float buf[VL];

		for (size_t e = 0; e < Ep; e += VL) {
			vf v = vsigmoid(vload(kr + e) + ft + vload(w->g + e));
			int n = (int)e + VL <= E ? VL : E - (int)e;

			vstore(buf, v);
			for (int l = 0; l < n; l++) {
				pr[e + l] = buf[l];
				colsum[e + l] += buf[l];
			}
		}
	}
	for (int e = 0; e < E; e++) {
		float d = fabsf(colsum[e] - col_mass) / col_mass;

		if (!(d <= resid))
			resid = d;
	}
	if (res != NULL) {
		res->iters = it;
		res->converged = conv;
		res->residual = resid;
		res->log_domain = 1;
	}
	return 0;
}
