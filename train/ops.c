// ops.c: GPT-2 forward/backward kernels on plain float arrays. Matrix products go through
// cblas_sgemm (this is the only file that includes the BLAS header); everything else is OpenMP
// over rows or channel blocks with SIMD inner loops. Invariants: no allocation, backward kernels
// accumulate (+=), and every reduction runs in a fixed order, so results are bitwise
// reproducible for a given thread count. Trainer thread only (kernels fork OpenMP teams).
#include "train/ops.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <omp.h>

#ifdef USE_ACCELERATE
#include <Accelerate/Accelerate.h>
#else
#include <cblas.h>
#endif

#include "train/base/err.h"

// Below this many floats of work a kernel runs on the calling thread: forking the team costs a
// few microseconds, more than the work itself.
#define PAR_MIN 32768

// Channel-block width for reductions over rows (dw, db, dbias, dwte): each block is owned by one
// thread, which walks the rows in order, so sums never depend on the schedule.
#define CBLK 64

// Elementwise kernels split n into fixed pieces of EW_BLK floats; threads take whole pieces and
// run a SIMD loop over each (gcc leaves some `parallel for simd` bodies scalar).
#define EW_BLK ((size_t)8192)

static inline size_t ew_pieces(size_t n) { return (n + EW_BLK - 1) / EW_BLK; }

static inline size_t ew_end(size_t piece, size_t n) {
    return (piece + 1) * EW_BLK < n ? (piece + 1) * EW_BLK : n;
}

// MADD(a, b, c) = a * b + c, fused where the target has FMA (it vectorizes either way; without
// hardware FMA fmaf would be a slow library call).
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(__aarch64__)
#define MADD(a, b, c) fmaf(a, b, c)
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

static int g_threads;

int ops_init(int threads) {
    if (threads <= 0) threads = omp_get_num_procs();
    omp_set_num_threads(threads);
#ifndef USE_ACCELERATE
    openblas_set_num_threads(threads);
#endif
    g_threads = threads;
    return threads;
}

int ops_threads(void) { return g_threads > 0 ? g_threads : omp_get_max_threads(); }

const char *ops_blas_name(void) {
#ifdef USE_ACCELERATE
    return "Accelerate";
#else
    // openblas_get_config() reads "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ... Zen ...": keep
    // the first two words (name and version) and append the core actually selected at runtime.
    static char name[128];
    if (!name[0]) {
        const char *cfg = openblas_get_config();
        int words = 0, len = 0;
        while (cfg[len] && len < 64) {
            if (cfg[len] == ' ' && ++words == 2) break;
            len++;
        }
        const int par = openblas_get_parallel();
        snprintf(name, sizeof name, "%.*s %s (%s)", len, cfg, openblas_get_corename(),
                 par == 2   ? "openmp"
                 : par == 1 ? "pthreads"
                            : "serial");
    }
    return name;
#endif
}

void ops_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, transa ? CblasTrans : CblasNoTrans,
                transb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// ---------------------------------------------------------------------------------------------
// Vectorizable exp. libm's expf only vectorizes under -ffast-math (glibc declares its libmvec
// variants only then), so this is a plain-C version that gcc and clang turn into SIMD code:
// e^x = 2^n * e^r with n = round(x / ln2), |r| <= ln2/2, e^r by its degree-7 Taylor polynomial
// (truncation error < 6e-9 relative), 2^n built in the exponent bits. |x| is clamped to 87 so
// the result is always a normal float (no inf, no denormals); that changes e^x only where it is
// below 1.7e-38 (or, for x > 87, where nothing here can produce it). NaN stays NaN. Error
// < 0.9 ulp (measured). Everything is done with integer ops on the float bits: a float
// compare-and-select or a float-to-int conversion after one would be left scalar by gcc under
// -ftrapping-math.
static inline float exp_clamped(float x) {
    union {
        float f;
        uint32_t u;
    } b = {.f = x};
    const uint32_t mag = b.u & 0x7fffffffu, e87 = 0x42ae0000u; // bits of 87.0f
    b.u = mag > e87 && mag <= 0x7f800000u ? (b.u & 0x80000000u) | e87 : b.u;
    x = b.f;
    // Adding 1.5 * 2^23 rounds x / ln2 to the nearest integer n (ties to even), which then sits
    // in the low mantissa bits: bits(t) = bits(1.5 * 2^23) + n.
    const float shifter = 12582912.0f;
    union {
        float f;
        int32_t i;
    } t = {.f = MADD(x, 1.44269504088896341f, shifter)};
    const float n = t.f - shifter;
    // ln2 split in two: n * ln2_hi is exact for |n| < 2^11.
    float r = MADD(-n, 0.693145751953125f, x);
    r = MADD(-n, 1.42860682030941723e-6f, r);
    float p = 1.0f / 5040.0f;
    p = MADD(p, r, 1.0f / 720.0f);
    p = MADD(p, r, 1.0f / 120.0f);
    p = MADD(p, r, 1.0f / 24.0f);
    p = MADD(p, r, 1.0f / 6.0f);
    p = MADD(p, r, 0.5f);
    p = MADD(p, r, 1.0f);
    p = MADD(p, r, 1.0f);
    union {
        uint32_t u;
        float f;
    } s = {.u = (uint32_t)(t.i - 0x4b400000 + 127) << 23};
    return p * s.f;
}

// sqrt_nonneg: sqrt(v) for v >= 0 (0 gives 0), within 1.7e-7 relative. sqrtf itself stays scalar:
// gcc keeps a branch to the libm call that sets errno for negative input (-fmath-errno is the
// default), which blocks vectorizing the AdamW loop and costs 5x there. So: the classic bit-level
// guess of 1/sqrt(v) (3.4% error), three Newton steps (3.4e-2 -> 1.8e-3 -> 4.6e-6 -> 3e-11,
// i.e. float rounding), then sqrt(v) = v * (1 / sqrt(v)). For v = 0 the guess stays finite and
// the product is 0; denormal v gives a rougher result, but AdamW adds eps = 1e-8 >> 1e-19 to it.
static inline float sqrt_nonneg(float v) {
    union {
        float f;
        uint32_t u;
    } b = {.f = v};
    b.u = 0x5f3759dfu - (b.u >> 1);
    float y = b.f;
    const float h = 0.5f * v;
    y = y * MADD(-h * y, y, 1.5f);
    y = y * MADD(-h * y, y, 1.5f);
    y = y * MADD(-h * y, y, 1.5f);
    return v * y;
}

// ---------------------------------------------------------------------------------------------
// Encoder.

void ops_encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, int B,
                         int T, int C) {
    const int N = B * T;
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const int32_t id = inp[n];
        ASSERT(id >= 0);
        float *restrict o = out + (size_t)n * C;
        const float *restrict e = wte + (size_t)id * C;
        const float *restrict p = wpe + (size_t)(n % T) * C;
#pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] = e[c] + p[c];
    }
}

void ops_encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B,
                          int T, int C) {
    const int N = B * T;
    const int nblk = (C + CBLK - 1) / CBLK;
    // Tokens repeat, so rows of dwte are hit many times: each thread owns a block of channels
    // and visits every token in order, which keeps the sums race-free and deterministic.
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int blk = 0; blk < nblk; blk++) {
        const int c0 = blk * CBLK, c1 = c0 + CBLK < C ? c0 + CBLK : C;
        for (int n = 0; n < N; n++) {
            const float *restrict d = dout + (size_t)n * C;
            if (dwte) {
                float *restrict g = dwte + (size_t)inp[n] * C;
#pragma omp simd
                for (int c = c0; c < c1; c++)
                    g[c] += d[c];
            }
            if (dwpe) {
                float *restrict g = dwpe + (size_t)(n % T) * C;
#pragma omp simd
                for (int c = c0; c < c1; c++)
                    g[c] += d[c];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm.

void ops_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                           const float *b, int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *restrict x = inp + (size_t)n * C;
        float *restrict o = out + (size_t)n * C;
        // Two passes (mean, then centred variance): the row is in L1 and this avoids the
        // cancellation of E[x^2] - E[x]^2.
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++)
            s += x[c];
        const float m = s / (float)C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) {
            const float d = x[c] - m;
            v += d * d;
        }
        const float rs = 1.0f / sqrtf(v / (float)C + 1e-5f);
#pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] = (x[c] - m) * rs * w[c] + b[c];
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = rs;
    }
}

void ops_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, const float *mean, const float *rstd, int N, int C) {
    const int par = (size_t)N * C >= PAR_MIN;
    if (dinp) {
        // dinp = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = w * dout, xhat the
        // normalized input: the two mean terms come from mean and rstd depending on every x.
#pragma omp parallel for schedule(static) if (par)
        for (int n = 0; n < N; n++) {
            const float *restrict x = inp + (size_t)n * C;
            const float *restrict d = dout + (size_t)n * C;
            float *restrict di = dinp + (size_t)n * C;
            const float m = mean[n], rs = rstd[n];
            float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
            for (int c = 0; c < C; c++) {
                const float g = w[c] * d[c];
                sg += g;
                sgx += g * ((x[c] - m) * rs);
            }
            const float mg = sg / (float)C, mgx = sgx / (float)C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                const float xh = (x[c] - m) * rs;
                di[c] += (w[c] * d[c] - mg - xh * mgx) * rs;
            }
        }
    }
    if (dw || db) {
        const int nblk = (C + CBLK - 1) / CBLK;
#pragma omp parallel for schedule(static) if (par)
        for (int blk = 0; blk < nblk; blk++) {
            const int c0 = blk * CBLK, c1 = c0 + CBLK < C ? c0 + CBLK : C;
            for (int n = 0; n < N; n++) {
                const float *restrict x = inp + (size_t)n * C;
                const float *restrict d = dout + (size_t)n * C;
                const float m = mean[n], rs = rstd[n];
                if (dw) {
#pragma omp simd
                    for (int c = c0; c < c1; c++)
                        dw[c] += (x[c] - m) * rs * d[c];
                }
                if (db) {
#pragma omp simd
                    for (int c = c0; c < c1; c++)
                        db[c] += d[c];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Linear layers: weights (OC, C) as PyTorch, so forward is inp @ w^T.

void ops_matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N,
                        int C, int OC) {
    float beta = 0.0f;
    if (bias) {
        // Seed out with the bias rows and let sgemm add onto them (beta = 1): one pass over out.
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= PAR_MIN)
        for (int n = 0; n < N; n++)
            memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof *out);
        beta = 1.0f;
    }
    ops_sgemm(0, 1, N, OC, C, 1.0f, inp, C, w, C, beta, out, OC);
}

void ops_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int N, int C, int OC) {
    if (dinp) ops_sgemm(0, 0, N, C, OC, 1.0f, dout, OC, w, C, 1.0f, dinp, C); // (N,OC)@(OC,C)
    if (dw) ops_sgemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);   // (OC,N)@(N,C)
    if (dbias) {
        const int nblk = (OC + CBLK - 1) / CBLK;
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= PAR_MIN)
        for (int blk = 0; blk < nblk; blk++) {
            const int o0 = blk * CBLK, o1 = o0 + CBLK < OC ? o0 + CBLK : OC;
            for (int n = 0; n < N; n++) {
                const float *restrict d = dout + (size_t)n * OC;
#pragma omp simd
                for (int o = o0; o < o1; o++)
                    dbias[o] += d[o];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Causal self-attention. Per (b, h): Q, K, V are (T, hs) views into qkv with row stride 3C, so
// every product is one sgemm on strided views; the (b, h) loop is the OpenMP loop, and OpenBLAS
// (OpenMP build) runs each sgemm single-threaded inside it.

void ops_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH) {
    ASSERT(NH > 0 && C % NH == 0);
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static) if (B * NH > 1 && (size_t)B * T * T * NH >= 4096)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * T * C3 + (size_t)h * hs;
        const float *k = q + C, *v = q + 2 * C;
        float *a = att + (size_t)bh * T * T; // (T, T)
        // Pre-attention scores for all (t, t2); the half above the diagonal is discarded, which
        // wastes some flops but keeps this one sgemm.
        ops_sgemm(0, 1, T, T, hs, scale, q, C3, k, C3, 0.0f, a, T);
        for (int t = 0; t < T; t++) {
            float *restrict row = a + (size_t)t * T;
            float mx = row[0];
#pragma omp simd reduction(max : mx)
            for (int j = 1; j <= t; j++)
                mx = row[j] > mx ? row[j] : mx;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j <= t; j++) {
                const float e = exp_clamped(row[j] - mx);
                row[j] = e;
                s += e;
            }
            const float inv = 1.0f / s;
#pragma omp simd
            for (int j = 0; j <= t; j++)
                row[j] *= inv;
            for (int j = t + 1; j < T; j++)
                row[j] = 0.0f;
        }
        // (T, T) @ (T, hs) into columns h*hs.. of out (B, T, C).
        ops_sgemm(0, 0, T, hs, T, 1.0f, a, T, v, C3, 0.0f, out + (size_t)b * T * C + h * hs, C);
    }
}

void ops_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                            const float *att, int B, int T, int C, int NH) {
    ASSERT(NH > 0 && C % NH == 0);
    if (!dqkv) return;
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for schedule(static) if (B * NH > 1 && (size_t)B * T * T * NH >= 4096)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const size_t off = (size_t)b * T * C3 + (size_t)h * hs;
        const float *q = qkv + off, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
        const float *a = att + (size_t)bh * T * T;
        const float *d = dout + (size_t)b * T * C + h * hs; // (T, hs), row stride C
        float *da = scratch + (size_t)bh * T * T;           // (T, T)
        // out = A V  =>  dA = dout V^T, dV += A^T dout.
        ops_sgemm(0, 1, T, T, hs, 1.0f, d, C, v, C3, 0.0f, da, T);
        ops_sgemm(1, 0, T, hs, T, 1.0f, a, T, d, C, 1.0f, dv, C3);
        // Softmax backward in place: dS = A * (dA - sum_j A dA), zero above the diagonal.
        for (int t = 0; t < T; t++) {
            const float *restrict ar = a + (size_t)t * T;
            float *restrict dr = da + (size_t)t * T;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j <= t; j++)
                s += ar[j] * dr[j];
#pragma omp simd
            for (int j = 0; j <= t; j++)
                dr[j] = ar[j] * (dr[j] - s);
            for (int j = t + 1; j < T; j++)
                dr[j] = 0.0f;
        }
        // S = scale Q K^T  =>  dQ += scale dS K, dK += scale dS^T Q.
        ops_sgemm(0, 0, T, hs, T, scale, da, T, k, C3, 1.0f, dq, C3);
        ops_sgemm(1, 0, T, hs, T, scale, da, T, q, C3, 1.0f, dk, C3);
    }
}

// ---------------------------------------------------------------------------------------------
// GELU, tanh approximation: y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// With 1 + tanh(u) = 2 sigmoid(2u) this is y = x / (1 + e^(-2u)), which needs one exp, has no
// cancellation for negative x, and vectorizes. dy/dx = s + 2 x s (1 - s) u' with s = sigmoid(2u).

#define GELU_K0 0.7978845608028654f // sqrt(2/pi)
#define GELU_K1 0.044715f

void ops_gelu_forward(float *out, const float *inp, size_t n) {
    // out may alias inp, so no restrict here; each element is read before it is written.
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t pc = 0; pc < ew_pieces(n); pc++) {
        const size_t hi = ew_end(pc, n);
#pragma omp simd
        for (size_t i = pc * EW_BLK; i < hi; i++) {
            const float x = inp[i];
            const float u = GELU_K0 * (x + GELU_K1 * x * x * x);
            out[i] = x / (1.0f + exp_clamped(-2.0f * u));
        }
    }
}

void ops_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    if (!dinp) return;
    float *restrict di = dinp;
    const float *restrict xs = inp, *restrict d = dout;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t pc = 0; pc < ew_pieces(n); pc++) {
        const size_t hi = ew_end(pc, n);
#pragma omp simd
        for (size_t i = pc * EW_BLK; i < hi; i++) {
            const float x = xs[i];
            const float x2 = x * x;
            const float u = GELU_K0 * (x + GELU_K1 * x2 * x);
            const float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * x2);
            const float s = 1.0f / (1.0f + exp_clamped(-2.0f * u));
            di[i] += (s + 2.0f * x * s * (1.0f - s) * du) * d[i];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise.

void ops_add(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t pc = 0; pc < ew_pieces(n); pc++) {
        const size_t hi = ew_end(pc, n);
#pragma omp simd
        for (size_t i = pc * EW_BLK; i < hi; i++)
            out[i] = a[i] + b[i];
    }
}

void ops_acc(float *dst, const float *src, size_t n) {
    float *restrict d = dst;
    const float *restrict s = src;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t pc = 0; pc < ew_pieces(n); pc++) {
        const size_t hi = ew_end(pc, n);
#pragma omp simd
        for (size_t i = pc * EW_BLK; i < hi; i++)
            d[i] += s[i];
    }
}

void ops_scale(float *x, float s, size_t n) {
    float *restrict p = x;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t pc = 0; pc < ew_pieces(n); pc++) {
        const size_t hi = ew_end(pc, n);
#pragma omp simd
        for (size_t i = pc * EW_BLK; i < hi; i++)
            p[i] *= s;
    }
}

void ops_zero(float *x, size_t n) {
    // One contiguous range per thread: memset switches to streaming stores only for large
    // sizes, and 1 MiB pieces ran at a third of the bandwidth.
    const int nt = n >= PAR_MIN ? omp_get_max_threads() : 1;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int t = 0; t < nt; t++) {
        const size_t lo = n / nt * t, hi = t == nt - 1 ? n : n / nt * (t + 1);
        memset(x + lo, 0, (hi - lo) * sizeof *x);
    }
}

// Sums go over a fixed number of contiguous parts, independent of the thread count, then the
// part sums are added in order: the result is the same bits on any machine and thread count.
#define SUMSQ_PARTS 64

double ops_sumsq(const float *x, size_t n) {
    double part[SUMSQ_PARTS];
    const size_t len = (n + SUMSQ_PARTS - 1) / SUMSQ_PARTS;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (int p = 0; p < SUMSQ_PARTS; p++) {
        const size_t lo = (size_t)p * len < n ? (size_t)p * len : n;
        const size_t hi = lo + len < n ? lo + len : n;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (size_t i = lo; i < hi; i++)
            s += (double)x[i] * (double)x[i];
        part[p] = s;
    }
    double s = 0.0;
    for (int p = 0; p < SUMSQ_PARTS; p++)
        s += part[p];
    return s;
}

// ---------------------------------------------------------------------------------------------
// Softmax + cross-entropy over V logits per row. A row of 50257 floats (200 KB) stays in L2
// between the max pass, the exp pass and the normalize pass, so DRAM sees one read and one write.

void ops_softmax_xent_forward(float *losses, float *probs, const float *logits,
                              const int32_t *targets, int N, int V) {
#pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *p = probs + (size_t)n * V; // may alias x
        const int32_t tgt = targets ? targets[n] : -1;
        ASSERT(tgt < V);
        const float xt = tgt >= 0 ? x[tgt] : 0.0f; // read before probs overwrites it
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < V; j++)
            mx = x[j] > mx ? x[j] : mx;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < V; j++) {
            const float e = exp_clamped(x[j] - mx);
            p[j] = e;
            s += e;
        }
        const float inv = (float)(1.0 / s);
#pragma omp simd
        for (int j = 0; j < V; j++)
            p[j] *= inv;
        // -log p[t] = log(sum e) - (x[t] - max), from the logits rather than the rounded prob.
        if (losses) losses[n] = tgt >= 0 ? (float)(log(s) - ((double)xt - mx)) : 0.0f;
    }
}

void ops_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *targets,
                               float scale, int N, int V) {
#pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * V;
        float *d = dlogits + (size_t)n * V; // may alias p
        const int32_t tgt = targets ? targets[n] : -1;
        ASSERT(tgt < V);
        if (tgt < 0) {
            memset(d, 0, (size_t)V * sizeof *d);
            continue;
        }
        const float pt = p[tgt]; // read before d overwrites it when d aliases p
#pragma omp simd
        for (int j = 0; j < V; j++)
            d[j] = p[j] * scale;
        d[tgt] = (pt - 1.0f) * scale;
    }
}

// ---------------------------------------------------------------------------------------------
// AdamW. Bias corrections are folded into two scalars computed in double once per call.

void ops_adamw_step(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                    float b2, float eps, float wd, int t, float gscale) {
    ASSERT(t >= 1);
    const float c1 = (float)(1.0 / (1.0 - pow(b1, t)));
    const float c2 = (float)(1.0 / (1.0 - pow(b2, t)));
    float *restrict pp = p, *restrict mm = m, *restrict vv = v;
    const float *restrict gg = g;
    const float a1 = 1.0f - b1, a2 = 1.0f - b2;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t pc = 0; pc < ew_pieces(n); pc++) {
        const size_t hi = ew_end(pc, n);
#pragma omp simd
        for (size_t i = pc * EW_BLK; i < hi; i++) {
            const float gi = gg[i] * gscale;
            const float mi = b1 * mm[i] + a1 * gi;
            const float vi = b2 * vv[i] + a2 * gi * gi;
            mm[i] = mi;
            vv[i] = vi;
            pp[i] -= lr * (mi * c1 / (sqrt_nonneg(vi * c2) + eps) + wd * pp[i]);
        }
    }
}
