// ops_test.c: the ops_ kernels against naive double-precision loops (forward), central finite
// differences of L = sum(out * R) (backward), and bitwise reproducibility. Sizes are small and
// odd (B=2, T=5, C=12, NH=3, V=37) so every edge path runs; determinism tests use sizes large
// enough to take the OpenMP paths. Each test runs in its own Criterion process.
#include <criterion/criterion.h>

#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/ops.h"

#define B  2
#define T  5
#define C  12
#define NH 3
#define V  37
#define N  (B * T)

// Gradients start at this value so that a kernel that overwrites instead of accumulating fails.
#define PREFILL 0.5f

// Finite differences: step h on float inputs of size O(1). The forward runs in float, so L has
// rounding noise of ~1e-7 * sqrt(#outputs); divided by 2h that is ~1e-5 of the gradient scale,
// and the O(h^2) truncation error is of the same order. Measured errors (max |g - fd| over max
// |fd| per tensor, OPS_TEST_VERBOSE=1 prints them) are 1e-6 to 3.4e-5. FD_TOL = 5e-4 sits 15x
// above that and far below what a bug costs: a flipped sign gives 2.0, overwriting instead of
// accumulating gives PREFILL / max|g| (0.1 or more here), and dropping either mean term of the
// LayerNorm input gradient gives 0.29 and 0.38 (fd_check_catches_dropped_layernorm_terms).
#define FD_H   1e-2f
#define FD_TOL 5e-4

static void suite_init(void) { ops_init(0); }

TestSuite(ops, .timeout = 30, .init = suite_init);

// ---------------------------------------------------------------------------------------------
// Helpers.

static float *rnd(size_t n, uint64_t seed, float lo, float hi) {
    float *x = xmalloc(n * sizeof *x);
    tu_rand_fill(x, n, seed, lo, hi);
    return x;
}

static float *filled(size_t n, float v) {
    float *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = v;
    return x;
}

static float *copy(const float *x, size_t n) {
    float *y = xmalloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

// rand_ids fills ids(n) with values in [0, hi) from the shared generator.
static void rand_ids(int32_t *ids, size_t n, uint64_t seed, int hi) {
    float *u = rnd(n, seed, 0.0f, (float)hi);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)u[i] < hi ? (int32_t)u[i] : hi - 1;
    free(u);
}

static double dotd(const float *y, const float *r, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)y[i] * r[i];
    return s;
}

// A scalar loss of some float tensors, evaluated by running a forward kernel.
typedef double (*loss_fn)(void *ctx);

// fd_grad fills fd(n) with central differences of loss(ctx) with respect to x(n), which must be
// one of the tensors loss reads. The step actually taken is recomputed in float.
static void fd_grad(double *fd, float *x, size_t n, loss_fn loss, void *ctx) {
    for (size_t i = 0; i < n; i++) {
        const float s = x[i];
        const float xp = s + FD_H, xm = s - FD_H;
        x[i] = xp;
        const double lp = loss(ctx);
        x[i] = xm;
        const double lm = loss(ctx);
        x[i] = s;
        fd[i] = (lp - lm) / ((double)xp - (double)xm);
    }
}

// grad_err returns max |g - fd| / max |fd|: the error relative to the tensor's gradient scale.
static double grad_err(const double *g, const double *fd, size_t n) {
    double e = 0.0, s = 1e-30;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(g[i] - fd[i]));
        s = fmax(s, fabs(fd[i]));
    }
    return e / s;
}

// fd_check compares an accumulated gradient (pre-filled with PREFILL) with finite differences.
static void fd_check(const char *what, const float *grad, float *x, size_t n, loss_fn loss,
                     void *ctx) {
    double *fd = xmalloc(n * sizeof *fd), *g = xmalloc(n * sizeof *g);
    fd_grad(fd, x, n, loss, ctx);
    for (size_t i = 0; i < n; i++)
        g[i] = (double)grad[i] - PREFILL;
    const double e = grad_err(g, fd, n);
    if (getenv("OPS_TEST_VERBOSE")) cr_log_info("%s: fd error %.3g", what, e);
    cr_expect(e < FD_TOL, "%s: gradient error %.3g of its scale exceeds %.1g", what, e, FD_TOL);
    free(fd);
    free(g);
}

static void expect_close(const char *what, const float *got, const double *want, size_t n,
                         double atol, double rtol) {
    for (size_t i = 0; i < n; i++) {
        const double err = fabs((double)got[i] - want[i]);
        const int ok = err <= atol + rtol * fabs(want[i]);
        cr_expect(ok, "%s[%zu] = %.9g, want %.9g (err %.3g)", what, i, got[i], want[i], err);
        if (!ok) return; // one message per tensor
    }
}

static void expect_same_bits(const char *what, const float *a, const float *b, size_t n) {
    cr_expect(memcmp(a, b, n * sizeof *a) == 0, "%s: two runs differ", what);
}

// ---------------------------------------------------------------------------------------------
// Setup, BLAS wrapper.

Test(ops, init_uses_all_cores_for_zero_or_negative) {
    cr_expect_geq(ops_init(0), 1);
    cr_expect_eq(ops_init(-3), ops_init(0), "negative thread counts mean all cores");
    cr_expect_eq(ops_init(1), 1);
    cr_expect_eq(ops_threads(), 1);
    cr_expect_eq(ops_init(2), 2);
    cr_expect_eq(ops_threads(), 2);
}

Test(ops, blas_name_names_the_library) {
    const char *s = ops_blas_name();
    cr_assert(s && *s);
    cr_expect(strncmp(s, "OpenBLAS ", 9) == 0 || strcmp(s, "Accelerate") == 0, "name: %s", s);
}

// sgemm on padded leading dimensions, every transpose combination, with beta != 0.
Test(ops, sgemm_matches_naive_for_all_transposes) {
    enum { M = 7, NN = 5, K = 9, LD = 13 };
    float *a = rnd(LD * LD, 1, -1, 1), *b = rnd(LD * LD, 2, -1, 1), *c0 = rnd(M * LD, 3, -1, 1);
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            float *c = copy(c0, M * LD);
            double want[M * NN];
            for (int i = 0; i < M; i++) {
                for (int j = 0; j < NN; j++) {
                    double s = 0.0;
                    for (int k = 0; k < K; k++)
                        s += (double)(ta ? a[k * LD + i] : a[i * LD + k]) *
                             (tb ? b[j * LD + k] : b[k * LD + j]);
                    want[i * NN + j] = 0.5 * s - 2.0 * c0[i * LD + j];
                }
            }
            ops_sgemm(ta, tb, M, NN, K, 0.5f, a, LD, b, LD, -2.0f, c, LD);
            for (int i = 0; i < M; i++) {
                for (int j = 0; j < NN; j++)
                    cr_expect(fabs(c[i * LD + j] - want[i * NN + j]) < 1e-5, "ta=%d tb=%d", ta, tb);
                for (int j = NN; j < LD; j++)
                    cr_expect_eq(c[i * LD + j], c0[i * LD + j], "padding was written");
            }
            free(c);
        }
    }
    free(a);
    free(b);
    free(c0);
}

// ---------------------------------------------------------------------------------------------
// Encoder.

Test(ops, encoder_forward_adds_token_and_position_rows) {
    int32_t inp[N];
    rand_ids(inp, N, 10, V);
    float *wte = rnd(V * C, 11, -1, 1), *wpe = rnd(T * C, 12, -1, 1), *out = filled(N * C, 9);
    ops_encoder_forward(out, inp, wte, wpe, B, T, C);
    double want[N * C];
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            want[n * C + c] = (double)wte[inp[n] * C + c] + wpe[(n % T) * C + c];
    expect_close("out", out, want, N * C, 0, 6e-8);
    free(wte);
    free(wpe);
    free(out);
}

struct enc_ctx {
    const int32_t *inp;
    float *wte, *wpe, *out;
    const float *r;
};

static double enc_loss(void *p) {
    struct enc_ctx *x = p;
    ops_encoder_forward(x->out, x->inp, x->wte, x->wpe, B, T, C);
    return dotd(x->out, x->r, N * C);
}

Test(ops, encoder_backward_matches_finite_differences) {
    int32_t inp[N];
    rand_ids(inp, N, 20, V);
    inp[7] = inp[2]; // a repeated token must collect both rows
    struct enc_ctx x = {inp, rnd(V * C, 21, -1, 1), rnd(T * C, 22, -1, 1), filled(N * C, 0),
                        rnd(N * C, 23, -1, 1)};
    float *dwte = filled(V * C, PREFILL), *dwpe = filled(T * C, PREFILL);
    ops_encoder_backward(dwte, dwpe, x.r, inp, B, T, C);
    fd_check("dwte", dwte, x.wte, V * C, enc_loss, &x);
    fd_check("dwpe", dwpe, x.wpe, T * C, enc_loss, &x);
    ops_encoder_backward(NULL, NULL, x.r, inp, B, T, C); // NULL outputs are skipped
    free(x.wte);
    free(x.wpe);
    free(x.out);
    free((float *)x.r);
    free(dwte);
    free(dwpe);
}

// ---------------------------------------------------------------------------------------------
// LayerNorm.

static void ref_layernorm(double *out, double *mean, double *rstd, const float *inp, const float *w,
                          const float *b, int n_, int c_) {
    for (int n = 0; n < n_; n++) {
        const float *x = inp + (size_t)n * c_;
        double m = 0, v = 0;
        for (int c = 0; c < c_; c++)
            m += x[c];
        m /= c_;
        for (int c = 0; c < c_; c++)
            v += (x[c] - m) * (x[c] - m);
        const double rs = 1.0 / sqrt(v / c_ + 1e-5);
        for (int c = 0; c < c_; c++)
            out[(size_t)n * c_ + c] = (x[c] - m) * rs * w[c] + b[c];
        mean[n] = m;
        rstd[n] = rs;
    }
}

static void check_layernorm_forward(int n_, int c_, uint64_t seed) {
    const size_t nc = (size_t)n_ * c_;
    float *inp = rnd(nc, seed, -2, 3), *w = rnd(c_, seed + 1, 0.5f, 1.5f);
    float *b = rnd(c_, seed + 2, -1, 1), *out = filled(nc, 0);
    float *mean = filled(n_, 0), *rstd = filled(n_, 0);
    double *ro = xmalloc(nc * sizeof *ro), *rm = xmalloc(n_ * sizeof *rm);
    double *rr = xmalloc(n_ * sizeof *rr);
    ops_layernorm_forward(out, mean, rstd, inp, w, b, n_, c_);
    ref_layernorm(ro, rm, rr, inp, w, b, n_, c_);
    expect_close("out", out, ro, nc, 2e-6, 2e-6);
    expect_close("mean", mean, rm, n_, 1e-6, 1e-6);
    expect_close("rstd", rstd, rr, n_, 0, 2e-6);
    free(inp);
    free(w);
    free(b);
    free(out);
    free(mean);
    free(rstd);
    free(ro);
    free(rm);
    free(rr);
}

Test(ops, layernorm_forward_matches_reference) { check_layernorm_forward(N, C, 30); }

Test(ops, layernorm_forward_matches_reference_on_threaded_sizes) {
    check_layernorm_forward(67, 768, 31);
}

struct ln_ctx {
    float *inp, *w, *b, *out, *mean, *rstd;
    const float *r;
};

static double ln_loss(void *p) {
    struct ln_ctx *x = p;
    ops_layernorm_forward(x->out, x->mean, x->rstd, x->inp, x->w, x->b, N, C);
    return dotd(x->out, x->r, N * C);
}

static struct ln_ctx ln_make(void) {
    return (struct ln_ctx){rnd(N * C, 40, -2, 2), rnd(C, 41, 0.5f, 1.5f), rnd(C, 42, -1, 1),
                           filled(N * C, 0),      filled(N, 0),           filled(N, 0),
                           rnd(N * C, 43, -1, 1)};
}

static void ln_free(struct ln_ctx *x) {
    free(x->inp);
    free(x->w);
    free(x->b);
    free(x->out);
    free(x->mean);
    free(x->rstd);
    free((float *)x->r);
}

Test(ops, layernorm_backward_matches_finite_differences) {
    struct ln_ctx x = ln_make();
    ln_loss(&x); // saves mean and rstd
    float *dinp = filled(N * C, PREFILL), *dw = filled(C, PREFILL), *db = filled(C, PREFILL);
    ops_layernorm_backward(dinp, dw, db, x.r, x.inp, x.w, x.mean, x.rstd, N, C);
    fd_check("dinp", dinp, x.inp, N * C, ln_loss, &x);
    fd_check("dw", dw, x.w, C, ln_loss, &x);
    fd_check("db", db, x.b, C, ln_loss, &x);
    // Each output alone, the others NULL, gives the same values.
    float *dw2 = filled(C, PREFILL);
    ops_layernorm_backward(NULL, dw2, NULL, x.r, x.inp, x.w, x.mean, x.rstd, N, C);
    expect_same_bits("dw alone", dw, dw2, C);
    ln_free(&x);
    free(dinp);
    free(dw);
    free(db);
    free(dw2);
}

// The FD tolerance must catch a missing term. Build the LayerNorm input gradient in double
// without each of its two mean terms and check that fd_check's error measure rejects it by a
// wide margin, while the full formula passes.
Test(ops, fd_check_catches_dropped_layernorm_terms) {
    struct ln_ctx x = ln_make();
    ln_loss(&x);
    double *fd = xmalloc(N * C * sizeof *fd), *full = xmalloc(N * C * sizeof *full);
    double *no_mean = xmalloc(N * C * sizeof *fd), *no_var = xmalloc(N * C * sizeof *fd);
    fd_grad(fd, x.inp, N * C, ln_loss, &x);
    ln_loss(&x); // mean and rstd at the unperturbed input again
    for (int n = 0; n < N; n++) {
        double mg = 0, mgx = 0;
        for (int c = 0; c < C; c++) {
            const double xh = (x.inp[n * C + c] - x.mean[n]) * x.rstd[n];
            mg += (double)x.w[c] * x.r[n * C + c] / C;
            mgx += (double)x.w[c] * x.r[n * C + c] * xh / C;
        }
        for (int c = 0; c < C; c++) {
            const double xh = (x.inp[n * C + c] - x.mean[n]) * x.rstd[n];
            const double g = (double)x.w[c] * x.r[n * C + c];
            full[n * C + c] = (g - mg - xh * mgx) * x.rstd[n];
            no_mean[n * C + c] = (g - xh * mgx) * x.rstd[n];
            no_var[n * C + c] = (g - mg) * x.rstd[n];
        }
    }
    const double e_full = grad_err(full, fd, N * C);
    const double e_mean = grad_err(no_mean, fd, N * C);
    const double e_var = grad_err(no_var, fd, N * C);
    if (getenv("OPS_TEST_VERBOSE"))
        cr_log_info("layernorm dinp: full %.3g, no mean %.3g, no var %.3g", e_full, e_mean, e_var);
    cr_expect(e_full < FD_TOL, "full formula: %.3g", e_full);
    cr_expect(e_mean > 20 * FD_TOL, "dropping mean(g) only costs %.3g", e_mean);
    cr_expect(e_var > 20 * FD_TOL, "dropping xhat*mean(g*xhat) only costs %.3g", e_var);
    ln_free(&x);
    free(fd);
    free(full);
    free(no_mean);
    free(no_var);
}

// ---------------------------------------------------------------------------------------------
// Matmul.

static void check_matmul_forward(int with_bias) {
    enum { OC = 7 };
    float *inp = rnd(N * C, 50, -1, 1), *w = rnd(OC * C, 51, -1, 1), *bias = rnd(OC, 52, -1, 1);
    float *out = filled(N * OC, 123);
    ops_matmul_forward(out, inp, w, with_bias ? bias : NULL, N, C, OC);
    double want[N * OC];
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            double s = with_bias ? bias[o] : 0.0;
            for (int c = 0; c < C; c++)
                s += (double)inp[n * C + c] * w[o * C + c];
            want[n * OC + o] = s;
        }
    }
    expect_close("out", out, want, N * OC, 2e-6, 1e-6);
    free(inp);
    free(w);
    free(bias);
    free(out);
}

Test(ops, matmul_forward_matches_reference_with_bias) { check_matmul_forward(1); }

Test(ops, matmul_forward_matches_reference_without_bias) { check_matmul_forward(0); }

enum { MM_OC = 7 };

struct mm_ctx {
    float *inp, *w, *bias, *out;
    const float *r;
};

static double mm_loss(void *p) {
    struct mm_ctx *x = p;
    ops_matmul_forward(x->out, x->inp, x->w, x->bias, N, C, MM_OC);
    return dotd(x->out, x->r, N * MM_OC);
}

Test(ops, matmul_backward_matches_finite_differences) {
    struct mm_ctx x = {rnd(N * C, 60, -1, 1), rnd(MM_OC * C, 61, -1, 1), rnd(MM_OC, 62, -1, 1),
                       filled(N * MM_OC, 0), rnd(N * MM_OC, 63, -1, 1)};
    float *dinp = filled(N * C, PREFILL), *dw = filled(MM_OC * C, PREFILL);
    float *db = filled(MM_OC, PREFILL);
    ops_matmul_backward(dinp, dw, db, x.r, x.inp, x.w, N, C, MM_OC);
    fd_check("dinp", dinp, x.inp, N * C, mm_loss, &x);
    fd_check("dw", dw, x.w, MM_OC * C, mm_loss, &x);
    fd_check("dbias", db, x.bias, MM_OC, mm_loss, &x);
    // NULL outputs are skipped; the remaining one gets the same values.
    float *db2 = filled(MM_OC, PREFILL);
    ops_matmul_backward(NULL, NULL, db2, x.r, x.inp, x.w, N, C, MM_OC);
    expect_same_bits("dbias alone", db, db2, MM_OC);
    free(x.inp);
    free(x.w);
    free(x.bias);
    free(x.out);
    free((float *)x.r);
    free(dinp);
    free(dw);
    free(db);
    free(db2);
}

// ---------------------------------------------------------------------------------------------
// Attention.

static void ref_attention(double *out, double *att, const float *qkv, int b_, int t_, int c_,
                          int nh) {
    const int hs = c_ / nh;
    const double scale = 1.0 / sqrt(hs);
    for (int b = 0; b < b_; b++) {
        for (int h = 0; h < nh; h++) {
            double *a = att + ((size_t)b * nh + h) * t_ * t_;
            for (int t = 0; t < t_; t++) {
                const float *q = qkv + ((size_t)b * t_ + t) * 3 * c_ + h * hs;
                double mx = -INFINITY;
                for (int j = 0; j < t_; j++) {
                    const float *k = qkv + ((size_t)b * t_ + j) * 3 * c_ + c_ + h * hs;
                    double s = 0;
                    for (int i = 0; i < hs; i++)
                        s += (double)q[i] * k[i];
                    a[t * t_ + j] = j <= t ? s * scale : -INFINITY;
                    mx = fmax(mx, a[t * t_ + j]);
                }
                double sum = 0;
                for (int j = 0; j < t_; j++)
                    sum += a[t * t_ + j] = exp(a[t * t_ + j] - mx);
                for (int j = 0; j < t_; j++)
                    a[t * t_ + j] /= sum;
                for (int i = 0; i < hs; i++) {
                    double o = 0;
                    for (int j = 0; j < t_; j++)
                        o += a[t * t_ + j] *
                             qkv[((size_t)b * t_ + j) * 3 * c_ + 2 * c_ + h * hs + i];
                    out[((size_t)b * t_ + t) * c_ + h * hs + i] = o;
                }
            }
        }
    }
}

Test(ops, attention_forward_is_causal_softmax_weighted_values) {
    float *qkv = rnd(N * 3 * C, 70, -2, 2), *out = filled(N * C, 9),
          *att = filled(B * NH * T * T, 9);
    ops_attention_forward(out, att, qkv, B, T, C, NH);
    double rout[N * C], ratt[B * NH * T * T];
    ref_attention(rout, ratt, qkv, B, T, C, NH);
    expect_close("att", att, ratt, B * NH * T * T, 1e-6, 2e-6);
    expect_close("out", out, rout, N * C, 1e-6, 2e-6);
    for (int r = 0; r < B * NH * T; r++) {
        const int t = r % T;
        double s = 0;
        for (int j = 0; j < T; j++) {
            s += att[r * T + j];
            if (j > t) cr_expect_eq(att[r * T + j], 0.0f, "row %d col %d above the diagonal", r, j);
        }
        cr_expect(fabs(s - 1.0) < 1e-6, "row %d sums to %.9g", r, s);
    }
    free(qkv);
    free(out);
    free(att);
}

// The ASSERT aborts. It runs in a child whose stderr goes to a file, so that the test checks the
// message and the passing suite's output stays clean.
Test(ops, attention_rejects_heads_that_do_not_divide_channels) {
    char *dir = tu_tmpdir("ops"), log[1024];
    cr_assert(dir);
    snprintf(log, sizeof log, "%s/stderr.txt", dir);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || dup2(fd, 2) < 0) _exit(126);
        float qkv[3 * 10], out[10], att[1];
        memset(qkv, 0, sizeof qkv);
        ops_attention_forward(out, att, qkv, 1, 1, 10, 3);
        _exit(0);
    }
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "wait status %#x, want SIGABRT", st);
    char *text = NULL;
    cr_assert_eq(tu_read_file(log, &text, NULL), 0);
    cr_assert(strstr(text, "spartan: assertion failed: NH > 0 && C % NH == 0"), "stderr: %s", text);
    free(text);
    tu_rm_rf(dir);
    free(dir);
}

struct att_ctx {
    float *qkv, *out, *att;
    const float *r;
};

static double att_loss(void *p) {
    struct att_ctx *x = p;
    ops_attention_forward(x->out, x->att, x->qkv, B, T, C, NH);
    return dotd(x->out, x->r, N * C);
}

Test(ops, attention_backward_matches_finite_differences) {
    struct att_ctx x = {rnd(N * 3 * C, 80, -1.5f, 1.5f), filled(N * C, 0),
                        filled(B * NH * T * T, 0), rnd(N * C, 81, -1, 1)};
    att_loss(&x);
    float *dqkv = filled(N * 3 * C, PREFILL), *scratch = filled(B * NH * T * T, 7);
    ops_attention_backward(dqkv, scratch, x.r, x.qkv, x.att, B, T, C, NH);
    // Check q, k and v separately so each has its own gradient scale.
    double *fd = xmalloc(N * 3 * C * sizeof *fd);
    fd_grad(fd, x.qkv, N * 3 * C, att_loss, &x);
    for (int part = 0; part < 3; part++) {
        double pf[N * C], pg[N * C];
        for (int n = 0; n < N; n++) {
            for (int c = 0; c < C; c++) {
                pf[n * C + c] = fd[n * 3 * C + part * C + c];
                pg[n * C + c] = (double)dqkv[n * 3 * C + part * C + c] - PREFILL;
            }
        }
        const double e = grad_err(pg, pf, N * C);
        if (getenv("OPS_TEST_VERBOSE")) cr_log_info("d%c: fd error %.3g", "qkv"[part], e);
        cr_expect(e < FD_TOL, "d%c: gradient error %.3g exceeds %.1g", "qkv"[part], e, FD_TOL);
    }
    free(fd);
    free(x.qkv);
    free(x.out);
    free(x.att);
    free((float *)x.r);
    free(dqkv);
    free(scratch);
}

// ---------------------------------------------------------------------------------------------
// GELU.

static double ref_gelu(double x) {
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

// GELU must match its tanh definition. The reference is the definition's cancellation-free
// double form x / (1 + exp(-2u)) (checked against 0.5 x (1 + tanh u) where that is well
// conditioned). Relative error is 1e-6 or better down to x = -3; below, y is tiny and float's
// rounding of u (relative error of exp(-2u) ~ |u| ulp) dominates, so an absolute 1e-8 applies.
// It runs on the threaded path and in place.
Test(ops, gelu_forward_matches_tanh_definition) {
    enum { M = 48001 };
    float *x = xmalloc(M * sizeof *x), *y = filled(M, 0);
    double *want = xmalloc(M * sizeof *want);
    for (int i = 0; i < M; i++)
        x[i] = -12.0f + 24.0f * (float)i / (M - 1);
    ops_gelu_forward(y, x, M);
    for (int i = 0; i < M; i++) {
        const double xd = x[i];
        want[i] = xd / (1.0 + exp(-2.0 * 0.7978845608028654 * (xd + 0.044715 * xd * xd * xd)));
        if (xd > -3.0)
            cr_assert(fabs(want[i] - ref_gelu(xd)) <= 1e-12 * fabs(want[i]), "reference x=%g", xd);
    }
    expect_close("gelu", y, want, M, 1e-8, 1e-6);
    float maxrel_tanhf = 0; // against the float tanhf formula where it is well conditioned
    for (int i = 0; i < M; i++) {
        if (x[i] < -2.0f) continue;
        const float u = 0.7978845608028654f * (x[i] + 0.044715f * x[i] * x[i] * x[i]);
        const float yt = 0.5f * x[i] * (1.0f + tanhf(u));
        if (yt != 0.0f) maxrel_tanhf = fmaxf(maxrel_tanhf, fabsf(y[i] - yt) / fabsf(yt));
    }
    cr_expect(maxrel_tanhf < 1e-6f, "relative difference to tanhf %.3g", maxrel_tanhf);
    ops_gelu_forward(x, x, M); // in place
    expect_same_bits("in place", x, y, M);
    free(x);
    free(y);
    free(want);
}

struct gelu_ctx {
    float *inp, *out;
    const float *r;
    size_t n;
};

static double gelu_loss(void *p) {
    struct gelu_ctx *x = p;
    ops_gelu_forward(x->out, x->inp, x->n);
    return dotd(x->out, x->r, x->n);
}

Test(ops, gelu_backward_matches_finite_differences) {
    enum { M = 101 };
    struct gelu_ctx x = {rnd(M, 90, -4, 4), filled(M, 0), rnd(M, 91, -1, 1), M};
    float *dinp = filled(M, PREFILL);
    ops_gelu_backward(dinp, x.inp, x.r, M);
    fd_check("dinp", dinp, x.inp, M, gelu_loss, &x);
    free(x.inp);
    free(x.out);
    free((float *)x.r);
    free(dinp);
}

// ---------------------------------------------------------------------------------------------
// Elementwise and reductions.

Test(ops, add_acc_scale_zero_do_what_they_say) {
    enum { M = 70001 }; // odd, and above the threading threshold
    float *a = rnd(M, 100, -1, 1), *b = rnd(M, 101, -1, 1), *o = filled(M, 0);
    ops_add(o, a, b, M);
    for (int i = 0; i < M; i++)
        cr_assert_eq(o[i], a[i] + b[i], "add i=%d", i);
    ops_add(a, a, b, M); // out aliases a
    expect_same_bits("add in place", a, o, M);
    ops_acc(o, b, M);
    for (int i = 0; i < M; i++)
        cr_assert_eq(o[i], a[i] + b[i], "acc i=%d", i);
    ops_scale(o, -0.25f, M);
    for (int i = 0; i < M; i++)
        cr_assert_eq(o[i], (a[i] + b[i]) * -0.25f, "scale i=%d", i);
    ops_zero(o, M - 3);
    for (int i = 0; i < M - 3; i++)
        cr_assert_eq(o[i], 0.0f, "zero i=%d", i);
    for (int i = M - 3; i < M; i++)
        cr_assert_neq(o[i], 0.0f, "zero wrote past n at %d", i);
    free(a);
    free(b);
    free(o);
}

Test(ops, sumsq_matches_double_and_ignores_thread_count) {
    enum { M = 1000003 };
    float *x = rnd(M, 110, -3, 3);
    double want = 0;
    for (int i = 0; i < M; i++)
        want += (double)x[i] * x[i];
    ops_init(1);
    const double s1 = ops_sumsq(x, M);
    ops_init(2);
    const double s2 = ops_sumsq(x, M);
    cr_expect(fabs(s1 - want) <= 1e-12 * want, "sumsq %.17g want %.17g", s1, want);
    cr_expect(memcmp(&s1, &s2, sizeof s1) == 0, "1 and 2 threads differ: %.17g %.17g", s1, s2);
    cr_expect_eq(ops_sumsq(x, 0), 0.0);
    cr_expect_eq(ops_sumsq(x, 3), (double)x[0] * x[0] + (double)x[1] * x[1] + (double)x[2] * x[2]);
    free(x);
}

// ---------------------------------------------------------------------------------------------
// Softmax + cross-entropy.

static void ref_lse_loss(double *loss, double *probs, const float *logits, const int32_t *tg,
                         int n_, int v_) {
    for (int n = 0; n < n_; n++) {
        const float *x = logits + (size_t)n * v_;
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < v_; j++)
            mx = fmax(mx, x[j]);
        for (int j = 0; j < v_; j++)
            s += exp(x[j] - mx);
        const double lse = mx + log(s);
        for (int j = 0; j < v_; j++)
            probs[(size_t)n * v_ + j] = exp(x[j] - lse);
        loss[n] = tg[n] >= 0 ? lse - x[tg[n]] : 0.0;
    }
}

Test(ops, softmax_xent_forward_matches_log_sum_exp) {
    float *logits = rnd(N * V, 120, -8, 8), *probs = filled(N * V, 0), *losses = filled(N, 9);
    for (int j = 0; j < V; j++)
        logits[3 * V + j] += 70.0f; // large logits stay finite
    int32_t tg[N];
    rand_ids(tg, N, 121, V);
    tg[4] = -1;
    tg[8] = -100;
    ops_softmax_xent_forward(losses, probs, logits, tg, N, V);
    double rl[N], rp[N * V];
    ref_lse_loss(rl, rp, logits, tg, N, V);
    expect_close("losses", losses, rl, N, 2e-6, 2e-6);
    expect_close("probs", probs, rp, N * V, 1e-30, 1e-6);
    cr_expect_eq(losses[4], 0.0f, "ignored target has loss 0");
    cr_expect_eq(losses[8], 0.0f, "ignored target has loss 0");
    for (int n = 0; n < N; n++) {
        double s = 0;
        for (int j = 0; j < V; j++)
            s += probs[n * V + j];
        cr_expect(fabs(s - 1) < 1e-6, "row %d probs sum to %.9g", n, s);
    }
    // In place (probs aliases logits) gives the same results.
    float *losses2 = filled(N, 9);
    ops_softmax_xent_forward(losses2, logits, logits, tg, N, V);
    expect_same_bits("probs in place", logits, probs, N * V);
    expect_same_bits("losses in place", losses2, losses, N);
    free(logits);
    free(probs);
    free(losses);
    free(losses2);
}

#define XENT_SCALE 0.3f

struct xent_ctx {
    float *logits, *probs, *losses;
    const int32_t *tg;
};

static double xent_loss(void *p) {
    struct xent_ctx *x = p;
    ops_softmax_xent_forward(x->losses, x->probs, x->logits, x->tg, N, V);
    double s = 0;
    for (int n = 0; n < N; n++)
        s += (double)XENT_SCALE * x->losses[n];
    return s;
}

Test(ops, softmax_xent_backward_matches_finite_differences_and_rows_sum_to_zero) {
    int32_t tg[N];
    rand_ids(tg, N, 130, V);
    tg[6] = -1;
    struct xent_ctx x = {rnd(N * V, 131, -3, 3), filled(N * V, 0), filled(N, 0), tg};
    xent_loss(&x);
    float *dl = filled(N * V, 42);
    ops_softmax_xent_backward(dl, x.probs, tg, XENT_SCALE, N, V);
    // It overwrites: shift by PREFILL so fd_check's accumulate convention applies.
    for (int i = 0; i < N * V; i++)
        dl[i] += PREFILL;
    fd_check("dlogits", dl, x.logits, N * V, xent_loss, &x);
    xent_loss(&x); // probs at the unperturbed logits again
    ops_softmax_xent_backward(dl, x.probs, tg, XENT_SCALE, N, V);
    for (int n = 0; n < N; n++) {
        double s = 0;
        for (int j = 0; j < V; j++) {
            s += dl[n * V + j];
            if (tg[n] < 0) cr_expect_eq(dl[n * V + j], 0.0f, "ignored row %d has gradient", n);
        }
        cr_expect(fabs(s) < 1e-6, "row %d gradient sums to %.3g", n, s);
    }
    // In place (dlogits aliases probs) gives the same values.
    ops_softmax_xent_backward(x.probs, x.probs, tg, XENT_SCALE, N, V);
    expect_same_bits("in place", x.probs, dl, N * V);
    free(x.logits);
    free(x.probs);
    free(x.losses);
    free(dl);
}

// ---------------------------------------------------------------------------------------------
// AdamW.

Test(ops, adamw_matches_double_formula_over_steps) {
    enum { M = 1001 };
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
    float *p = rnd(M, 140, -1, 1), *m = filled(M, 0), *v = filled(M, 0);
    double *pd = xmalloc(M * sizeof *pd), *md = xcalloc(M, sizeof *md);
    double *vd = xcalloc(M, sizeof *vd);
    for (int i = 0; i < M; i++)
        pd[i] = p[i];
    for (int t = 1; t <= 4; t++) {
        float *g = rnd(M, 141 + t, -1, 1);
        for (int i = 0; i < 8; i++)
            g[i] = 0.0f; // v = 0: the update is 0, not NaN
        for (int i = 8; i < 16; i++)
            g[i] *= 1e4f; // large second moments
        for (int i = 16; i < 24; i++)
            g[i] *= 1e-12f; // v below eps^2
        ops_adamw_step(p, g, m, v, M, lr, b1, b2, eps, wd, t, 1.0f);
        for (int i = 0; i < M; i++) {
            md[i] = b1 * md[i] + (1.0 - b1) * g[i];
            vd[i] = b2 * vd[i] + (1.0 - b2) * (double)g[i] * g[i];
            const double mh = md[i] / (1 - pow(b1, t)), vh = vd[i] / (1 - pow(b2, t));
            pd[i] -= lr * (mh / (sqrt(vh) + eps) + wd * pd[i]);
        }
        free(g);
        expect_close("m", m, md, M, 1e-7, 1e-6);
        expect_close("v", v, vd, M, 1e-9, 1e-6);
        // An update is ~lr = 1e-2 and the weight decay term ~1e-3, so 5e-7 catches either.
        expect_close("p", p, pd, M, 5e-7, 0);
    }
    free(p);
    free(m);
    free(v);
    free(pd);
    free(md);
    free(vd);
}

// Starting from p = 0 with no weight decay, p is the sum of the updates themselves, so their
// accuracy shows (above, p ~ 1 hides errors below its own rounding): each update is
// lr * m^ / (sqrt(v^) + eps), |update| <= ~lr, and must be right to float precision, which needs
// the square root to be right to float precision. Gradients span 1e-6 .. 1e6.
Test(ops, adamw_updates_are_accurate_to_float_precision) {
    enum { M = 517 };
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    float *p = filled(M, 0), *m = filled(M, 0), *v = filled(M, 0);
    double *pd = xcalloc(M, sizeof *pd), *md = xcalloc(M, sizeof *md);
    double *vd = xcalloc(M, sizeof *vd);
    for (int t = 1; t <= 3; t++) {
        float *g = rnd(M, 150 + t, -2, 2);
        for (int i = 0; i < M; i++)
            g[i] *= powf(10.0f, (float)(i % 13) - 6.0f); // 1e-6 .. 1e6
        ops_adamw_step(p, g, m, v, M, lr, b1, b2, eps, 0.0f, t, 1.0f);
        for (int i = 0; i < M; i++) {
            md[i] = b1 * md[i] + (1.0 - b1) * g[i];
            vd[i] = b2 * vd[i] + (1.0 - b2) * (double)g[i] * g[i];
            pd[i] -= lr * (md[i] / (1 - pow(b1, t)) / (sqrt(vd[i] / (1 - pow(b2, t))) + eps));
        }
        free(g);
        double e = 0;
        for (int i = 0; i < M; i++)
            e = fmax(e, fabs(p[i] - pd[i]) / lr);
        if (getenv("OPS_TEST_VERBOSE")) cr_log_info("adamw t=%d: max error %.3g lr", t, e);
        // Measured: below 7e-7 lr after 3 steps; a square root with one Newton step too few
        // (4.6e-6 relative) gives 4.8e-6 lr at the first.
        expect_close("p", p, pd, M, 2e-6 * lr, 0);
    }
    free(p);
    free(m);
    free(v);
    free(pd);
    free(md);
    free(vd);
}

// ---------------------------------------------------------------------------------------------
// Determinism: every backward twice on identical inputs gives identical bits, at sizes that take
// the OpenMP paths. Kernels that do not use BLAS must also agree between 1 and 2 threads.

typedef void (*bwd_run)(float **outs, int run);

static void twice(const char *what, bwd_run f, const size_t *sizes, int nouts, int thread_free) {
    float *a[4], *b[4];
    for (int i = 0; i < nouts; i++) {
        a[i] = filled(sizes[i], PREFILL);
        b[i] = filled(sizes[i], PREFILL);
    }
    ops_init(thread_free ? 1 : 2);
    f(a, 0);
    ops_init(2);
    f(b, 1);
    for (int i = 0; i < nouts; i++) {
        cr_expect(memcmp(a[i], b[i], sizes[i] * sizeof(float)) == 0, "%s output %d differs", what,
                  i);
        free(a[i]);
        free(b[i]);
    }
}

enum { DB = 4, DT = 64, DC = 768, DN = DB * DT, DV = 50 };

static void run_encoder(float **o, int run) {
    (void)run;
    int32_t inp[DN];
    rand_ids(inp, DN, 150, DV); // 256 tokens over 50 ids: many repeats
    float *d = rnd((size_t)DN * DC, 151, -1, 1);
    ops_encoder_backward(o[0], o[1], d, inp, DB, DT, DC);
    free(d);
}

static void run_layernorm(float **o, int run) {
    (void)run;
    float *inp = rnd((size_t)DN * DC, 160, -1, 1), *d = rnd((size_t)DN * DC, 161, -1, 1);
    float *w = rnd(DC, 162, 0, 1), *b = rnd(DC, 163, 0, 1), *out = filled((size_t)DN * DC, 0);
    float *mean = filled(DN, 0), *rstd = filled(DN, 0);
    ops_layernorm_forward(out, mean, rstd, inp, w, b, DN, DC);
    ops_layernorm_backward(o[0], o[1], o[2], d, inp, w, mean, rstd, DN, DC);
    free(inp);
    free(d);
    free(w);
    free(b);
    free(out);
    free(mean);
    free(rstd);
}

static void run_matmul(float **o, int run) {
    (void)run;
    enum { IC = 96 };
    float *inp = rnd((size_t)DN * IC, 170, -1, 1), *d = rnd((size_t)DN * DC, 171, -1, 1);
    float *w = rnd((size_t)DC * IC, 172, -1, 1);
    ops_matmul_backward(o[0], o[1], o[2], d, inp, w, DN, IC, DC);
    free(inp);
    free(d);
    free(w);
}

enum { AT = 32, AC = 96, ANH = 4 };

static void run_attention(float **o, int run) {
    (void)run;
    float *qkv = rnd((size_t)DB * AT * 3 * AC, 180, -1, 1),
          *d = rnd((size_t)DB * AT * AC, 181, -1, 1);
    float *out = filled((size_t)DB * AT * AC, 0), *att = filled((size_t)DB * ANH * AT * AT, 0);
    float *scratch = filled((size_t)DB * ANH * AT * AT, 0);
    ops_attention_forward(out, att, qkv, DB, AT, AC, ANH);
    ops_attention_backward(o[0], scratch, d, qkv, att, DB, AT, AC, ANH);
    free(qkv);
    free(d);
    free(out);
    free(att);
    free(scratch);
}

static void run_gelu(float **o, int run) {
    (void)run;
    float *x = rnd(100003, 190, -5, 5), *d = rnd(100003, 191, -1, 1);
    ops_gelu_backward(o[0], x, d, 100003);
    free(x);
    free(d);
}

static void run_xent(float **o, int run) {
    (void)run;
    enum { XN = 8, XV = 5003 };
    float *logits = rnd(XN * XV, 200, -5, 5), *losses = filled(XN, 0);
    int32_t tg[XN];
    rand_ids(tg, XN, 201, XV);
    ops_softmax_xent_forward(losses, logits, logits, tg, XN, XV);
    ops_softmax_xent_backward(o[0], logits, tg, 1.0f / XN, XN, XV);
    free(logits);
    free(losses);
}

Test(ops, encoder_backward_is_deterministic) {
    const size_t s[] = {(size_t)DV * DC, (size_t)DT * DC};
    twice("encoder", run_encoder, s, 2, 1);
}

// The threaded encoder backward must also be right, not only repeatable: compare with the naive
// token-by-token loop.
Test(ops, encoder_backward_threaded_matches_naive_loop) {
    int32_t inp[DN];
    rand_ids(inp, DN, 150, DV);
    float *d = rnd((size_t)DN * DC, 151, -1, 1), *g = filled((size_t)DV * DC, PREFILL);
    double *want = xmalloc((size_t)DV * DC * sizeof *want);
    for (size_t i = 0; i < (size_t)DV * DC; i++)
        want[i] = PREFILL;
    for (int n = 0; n < DN; n++)
        for (int c = 0; c < DC; c++)
            want[(size_t)inp[n] * DC + c] += d[(size_t)n * DC + c];
    ops_encoder_backward(g, NULL, d, inp, DB, DT, DC);
    expect_close("dwte", g, want, (size_t)DV * DC, 1e-5, 1e-6);
    free(d);
    free(g);
    free(want);
}

Test(ops, layernorm_backward_is_deterministic) {
    const size_t s[] = {(size_t)DN * DC, DC, DC};
    twice("layernorm", run_layernorm, s, 3, 1);
}

Test(ops, matmul_backward_is_deterministic) {
    const size_t s[] = {(size_t)DN * 96, (size_t)DC * 96, DC};
    twice("matmul", run_matmul, s, 3, 0);
}

Test(ops, attention_backward_is_deterministic) {
    const size_t s[] = {(size_t)DB * AT * 3 * AC};
    twice("attention", run_attention, s, 1, 0);
}

Test(ops, gelu_backward_is_deterministic) {
    const size_t s[] = {100003};
    twice("gelu", run_gelu, s, 1, 1);
}

Test(ops, softmax_xent_backward_is_deterministic) {
    const size_t s[] = {8 * 5003};
    twice("xent", run_xent, s, 1, 1);
}

Test(ops, adamw_gradient_scale_equals_a_prescaled_gradient) {
    enum { M = 5000 };
    static float p1[M], p2[M], g[M], gs[M], m1[M], m2[M], v1[M], v2[M];
    tu_rand_fill(p1, M, 11, -1.0f, 1.0f);
    memcpy(p2, p1, sizeof p1);
    tu_rand_fill(g, M, 12, -2.0f, 2.0f);
    const float s = 0.37f;
    for (int i = 0; i < M; i++)
        gs[i] = g[i] * s;
    for (int t = 1; t <= 3; t++) {
        ops_adamw_step(p1, g, m1, v1, M, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, t, s);
        ops_adamw_step(p2, gs, m2, v2, M, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, t, 1.0f);
    }
    // g*s is computed inside the kernel exactly as in the prescaled copy, so results are equal
    cr_assert_eq(memcmp(p1, p2, sizeof p1), 0);
    cr_assert_eq(memcmp(v1, v2, sizeof v1), 0);
    // and the scale matters: an unscaled run differs
    ops_adamw_step(p2, g, m2, v2, M, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 4, 1.0f);
    ops_adamw_step(p1, g, m1, v1, M, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 4, s);
    cr_assert_neq(memcmp(p1, p2, sizeof p1), 0);
}
