// bench_ops.c: speed of each ops_ kernel at GPT-2 124M training sizes (B=4, T=64, C=768, NH=12,
// V=50257, 124M parameters). Prints `BENCH ops_<kernel>_gbps <GB/s>` for memory-bound kernels
// (bytes = the minimum each must read and write) and `_gflops` for the sgemm-based ones, each
// the best of several timed repetitions. Usage: bench_ops [threads [n_params]]. Single-threaded
// driver; the kernels use OpenMP and BLAS threads internally.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <omp.h>

#include "train/base/err.h"
#include "train/ops.h"

enum { B = 4, T = 64, C = 768, NH = 12, V = 50257, N = B * T };

// Deterministic fill in [-a, a), in parallel so the first touch of fresh pages is shared out.
static float *buf(size_t n, float a, uint32_t seed) {
    float *x = xalloc_aligned(n * sizeof *x);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint32_t h = (uint32_t)i * 2654435761u + seed * 40503u;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        x[i] = a * ((float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
    }
    return x;
}

// TIME runs stmt `inner` times per repetition and stores the best time per call in seconds.
#define TIME(best, reps, inner, stmt)                             \
    do {                                                          \
        stmt;                                                     \
        best = INFINITY;                                          \
        for (int r_ = 0; r_ < (reps); r_++) {                     \
            const double t0_ = omp_get_wtime();                   \
            for (int i_ = 0; i_ < (inner); i_++)                  \
                stmt;                                             \
            const double dt_ = (omp_get_wtime() - t0_) / (inner); \
            best = dt_ < best ? dt_ : best;                       \
        }                                                         \
    } while (0)

static void report_bw(const char *name, double sec, double bytes) {
    printf("BENCH ops_%s_gbps %.1f\n", name, bytes / sec * 1e-9);
    printf("BENCH ops_%s_ms %.4f\n", name, sec * 1e3);
}

static void report_flops(const char *name, double sec, double flops) {
    printf("BENCH ops_%s_gflops %.1f\n", name, flops / sec * 1e-9);
    printf("BENCH ops_%s_ms %.4f\n", name, sec * 1e3);
}

int main(int argc, char **argv) {
    const int threads = ops_init(argc > 1 ? atoi(argv[1]) : 0);
    const size_t np = argc > 2 ? strtoull(argv[2], NULL, 10) : 124439808;
    printf("# threads=%d blas=%s B=%d T=%d C=%d NH=%d V=%d params=%zu\n", threads, ops_blas_name(),
           B, T, C, NH, V, np);
    const size_t nc = (size_t)N * C, n4 = 4 * nc, nv = (size_t)N * V;
    double t;

    // Activation-sized kernels (they fit in L2/L3, as they do inside a training step).
    int32_t *tok = xmalloc(N * sizeof *tok);
    for (int i = 0; i < N; i++)
        tok[i] = (int32_t)((i * 7919u) % V);
    float *wte = buf((size_t)V * C, 0.02f, 1), *wpe = buf((size_t)T * C, 0.02f, 2);
    float *dwte = buf((size_t)V * C, 0, 3), *dwpe = buf((size_t)T * C, 0, 4);
    float *x = buf(nc, 1, 5), *y = buf(nc, 1, 6), *d = buf(nc, 1, 7), *dx = buf(nc, 0, 8);
    float *w = buf(C, 1, 9), *bb = buf(C, 1, 10), *dw = buf(C, 0, 11), *db = buf(C, 0, 12);
    float *mean = buf(N, 0, 13), *rstd = buf(N, 0, 14);
    TIME(t, 5, 100, ops_encoder_forward(y, tok, wte, wpe, B, T, C));
    report_bw("encoder_fwd", t, 3.0 * nc * 4);
    TIME(t, 5, 100, ops_encoder_backward(dwte, dwpe, d, tok, B, T, C));
    report_bw("encoder_bwd", t, 5.0 * nc * 4);
    TIME(t, 5, 100, ops_layernorm_forward(y, mean, rstd, x, w, bb, N, C));
    report_bw("layernorm_fwd", t, 2.0 * nc * 4);
    TIME(t, 5, 100, ops_layernorm_backward(dx, dw, db, d, x, w, mean, rstd, N, C));
    report_bw("layernorm_bwd", t, 4.0 * nc * 4);
    TIME(t, 5, 100, ops_add(y, x, d, nc));
    report_bw("residual_add", t, 3.0 * nc * 4);
    TIME(t, 5, 100, ops_acc(dx, d, nc));
    report_bw("residual_acc", t, 3.0 * nc * 4);

    float *h = buf(n4, 2, 15), *hg = buf(n4, 0, 16), *dh = buf(n4, 1, 17), *dhg = buf(n4, 0, 18);
    TIME(t, 5, 50, ops_gelu_forward(hg, h, n4));
    report_bw("gelu_fwd", t, 2.0 * n4 * 4);
    TIME(t, 5, 50, ops_gelu_backward(dhg, h, dh, n4));
    report_bw("gelu_bwd", t, 4.0 * n4 * 4);

    // Attention: 2 (forward) or 4 (backward) sgemms of T x T x hs per (b, h); flops of those.
    float *qkv = buf(3 * nc, 1, 19), *dqkv = buf(3 * nc, 0, 20);
    float *att = buf((size_t)B * NH * T * T, 0, 21), *scr = buf((size_t)B * NH * T * T, 0, 22);
    TIME(t, 5, 50, ops_attention_forward(y, att, qkv, B, T, C, NH));
    report_flops("attention_fwd", t, 2.0 * 2.0 * B * NH * T * T * (C / NH));
    TIME(t, 5, 50, ops_attention_backward(dqkv, scr, d, qkv, att, B, T, C, NH));
    report_flops("attention_bwd", t, 4.0 * 2.0 * B * NH * T * T * (C / NH));

    // Linear layers at the MLP (C -> 4C) and LM head (C -> V) shapes, and a square sgemm for peak.
    float *wfc = buf((size_t)4 * C * C, 0.02f, 23), *dwfc = buf((size_t)4 * C * C, 0, 24);
    float *bfc = buf(4 * C, 0.02f, 25), *dbfc = buf(4 * C, 0, 26);
    TIME(t, 5, 10, ops_matmul_forward(h, x, wfc, bfc, N, C, 4 * C));
    report_flops("matmul_fc_fwd", t, 2.0 * N * C * 4 * C);
    TIME(t, 5, 10, ops_matmul_backward(dx, dwfc, dbfc, dh, x, wfc, N, C, 4 * C));
    report_flops("matmul_fc_bwd", t, 4.0 * N * C * 4 * C);
    float *logits = buf(nv, 1, 27);
    TIME(t, 3, 2, ops_matmul_forward(logits, x, wte, NULL, N, C, V));
    report_flops("matmul_lmhead_fwd", t, 2.0 * N * C * V);
    TIME(t, 3, 2, ops_matmul_backward(dx, dwte, NULL, logits, x, wte, N, C, V));
    report_flops("matmul_lmhead_bwd", t, 4.0 * N * C * V);
    {
        enum { S = 2048 };
        float *a = buf((size_t)S * S, 1, 28), *b2 = buf((size_t)S * S, 1, 29);
        float *c2 = buf((size_t)S * S, 0, 30);
        TIME(t, 3, 1, ops_sgemm(0, 1, S, S, S, 1.0f, a, S, b2, S, 0.0f, c2, S));
        report_flops("sgemm_2048", t, 2.0 * S * S * S);
        free(a);
        free(b2);
        free(c2);
    }

    // Softmax + cross-entropy over (N, V), in place as the model uses it. The backward runs on
    // the probabilities; re-running it on its own output keeps the data finite.
    float *losses = buf(N, 0, 31);
    int32_t *tgt = xmalloc(N * sizeof *tgt);
    for (int i = 0; i < N; i++)
        tgt[i] = (int32_t)((i * 104729u) % V);
    float *lg = buf(nv, 4, 32);
    TIME(t, 5, 5, ops_softmax_xent_forward(losses, lg, lg, tgt, N, V));
    report_bw("softmax_xent_fwd", t, 2.0 * nv * 4);
    TIME(t, 5, 5, ops_softmax_xent_backward(lg, lg, tgt, 1.0f / N, N, V));
    report_bw("softmax_xent_bwd", t, 2.0 * nv * 4);

    // Parameter-sized kernels over np floats each (2 GB in all for 124M: touching it takes
    // a few seconds on this machine).
    free(dwte);
    free(wte);
    free(logits);
    free(lg);
    float *p = buf(np, 0.1f, 33), *g = buf(np, 0.01f, 34), *m = buf(np, 0, 35), *v = buf(np, 0, 36);
    volatile double sink = 0;
    TIME(t, 3, 1, sink += ops_sumsq(g, np));
    report_bw("sumsq", t, 1.0 * np * 4);
    TIME(t, 3, 1, ops_scale(g, 1.0f, np));
    report_bw("scale", t, 2.0 * np * 4);
    int step = 0;
    TIME(t, 3, 1, ops_adamw_step(p, g, m, v, np, 6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, ++step, 1.0f));
    report_bw("adamw", t, 7.0 * np * 4);
    TIME(t, 3, 1, ops_zero(g, np));
    report_bw("zero", t, 1.0 * np * 4);
    (void)sink;
    return 0;
}
