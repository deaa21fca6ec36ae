// bench_train.c: training-step benchmarks, printed as `BENCH <key> <value>` lines.
//   sgemm_peak_gflops   cblas_sgemm 2048^3 on all threads (the MFU denominator, same run)
//   train_124m_*        GPT-2 124M (L12 NH12 C768 V50257) at B=4, T=64: ms/step, MFU, peak RSS
//   train_tiny_*        configs/tiny.ini's model (L4 NH4 C128 V65) at B=32, T=64: tokens/s
//   *_vs_torch          speed ratio against the same step in PyTorch (scripts/bench-torch),
//                       skipped when torch is not installed
// A step is forward + backward + clip + AdamW, on random tokens (data loading is not timed).
// Environment: BENCH_QUICK=1 runs fewer steps; BENCH_NO_TORCH=1 skips the PyTorch runs.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "err.h"
#include "gpt.h"
#include "ops.h"
#include "optim.h"
#include "test_util.h"

static double sgemm_peak_gflops(void) {
    const int n = 2048;
    float *a = xalloc_aligned((size_t)n * n * sizeof(float));
    float *b = xalloc_aligned((size_t)n * n * sizeof(float));
    float *c = xalloc_aligned((size_t)n * n * sizeof(float));
    for (size_t i = 0; i < (size_t)n * n; i++) {
        a[i] = (float)(i % 17) * 0.01f;
        b[i] = (float)(i % 13) * 0.01f;
        c[i] = 0;
    }
    double best = 0;
    for (int r = 0; r < 10; r++) {
        double t0 = tu_now_s();
        ops_sgemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double dt = tu_now_s() - t0;
        double g = 2.0 * n * n * (double)n / dt / 1e9;
        if (r > 0 && g > best) best = g; // the first run warms up the thread pool
    }
    free(a);
    free(b);
    free(c);
    return best;
}

// time_steps builds a model and returns the median seconds per training step.
static double time_steps(const cfg_model *mc, int B, int T, int warmup, int steps,
                         double *flops_per_step) {
    gpt_model *m;
    if (gpt_create(&m, mc, B, 1)) {
        fprintf(stderr, "bench: %s\n", err_msg());
        exit(1);
    }
    gpt_init_params(m, 1);
    optim_adamw *o;
    optim_create(&o, gpt_n_params(m));
    cfg_train tc = {
        .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .grad_clip = 1.0f};
    int32_t *x = malloc((size_t)B * T * sizeof(int32_t)),
            *y = malloc((size_t)B * T * sizeof(int32_t));
    for (int i = 0; i < B * T; i++) {
        x[i] = (int32_t)((i * 7919u + 13u) % (unsigned)mc->vocab_size);
        y[i] = (int32_t)((i * 104729u + 7u) % (unsigned)mc->vocab_size);
    }
    double *dt = malloc((size_t)steps * sizeof(double));
    for (int s = 0; s < warmup + steps; s++) {
        double t0 = tu_now_s();
        gpt_zero_grad(m);
        gpt_forward(m, x, y, B, T);
        gpt_backward(m, 1.0f);
        float norm = optim_grad_norm(gpt_grads(m), gpt_n_params(m));
        optim_step(o, m, &tc, 1e-4f, optim_clip_scale(norm, tc.grad_clip));
        if (s >= warmup) dt[s - warmup] = tu_now_s() - t0;
    }
    qsort(dt, (size_t)steps, sizeof(double), tu_cmp_double);
    double med = dt[steps / 2];
    *flops_per_step = gpt_flops_per_token(m, T) * B * T;
    free(dt);
    free(x);
    free(y);
    optim_destroy(o);
    gpt_destroy(m);
    return med;
}

// torch_ms runs scripts/bench-torch for the same model and returns its median ms/step, or -1.
static double torch_ms(const cfg_model *mc, int B, int T, int warmup, int steps, int threads) {
    if (getenv("BENCH_NO_TORCH")) return -1;
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "scripts/bench-torch --n-layer %d --n-head %d --n-embd %d --block-size %d "
             "--vocab %d --batch %d --steps %d --warmup %d --threads %d 2>/dev/null",
             mc->n_layer, mc->n_head, mc->n_embd, T, mc->vocab_size, B, steps, warmup, threads);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[256];
    double ms = -1;
    while (fgets(line, sizeof line, p))
        if (sscanf(line, "torch_ms_step %lf", &ms) == 1) break;
    while (fgets(line, sizeof line, p)) {
    }
    pclose(p);
    return ms;
}

int main(void) {
    int quick = getenv("BENCH_QUICK") != NULL;
    int threads = ops_init(0);
    fprintf(stderr, "bench: threads=%d blas=\"%s\"\n", threads, ops_blas_name());
    double peak = sgemm_peak_gflops();
    printf("BENCH sgemm_peak_gflops %.1f\n", peak);
    fflush(stdout);

    cfg_model big = {
        .n_layer = 12, .n_head = 12, .n_embd = 768, .block_size = 64, .vocab_size = 50257};
    int B = 4, T = 64;
    double flops124, flops;
    double s = time_steps(&big, B, T, 1, quick ? 2 : 5, &flops124);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double mfu = flops124 / s / 1e9 / peak;
    printf("BENCH train_124m_ms_step %.1f\n", s * 1e3);
    printf("BENCH train_124m_mfu %.3f\n", mfu);
    printf("BENCH train_124m_gflops %.1f\n", flops124 / s / 1e9);
    printf("BENCH train_124m_peak_rss_mb %.0f\n", ru.ru_maxrss / 1024.0);
    fflush(stdout);

    cfg_model tiny = {.n_layer = 4, .n_head = 4, .n_embd = 128, .block_size = 64, .vocab_size = 65};
    int tb = 32;
    double ts = time_steps(&tiny, tb, T, 3, quick ? 10 : 30, &flops);
    printf("BENCH train_tiny_tok_s %.0f\n", tb * T / ts);
    printf("BENCH train_tiny_ms_step %.2f\n", ts * 1e3);
    fflush(stdout);

    double tt = torch_ms(&tiny, tb, T, 5, quick ? 10 : 20, threads);
    if (tt > 0)
        printf("BENCH train_tiny_vs_torch %.2f\n", tt / (ts * 1e3));
    else
        printf("BENCH train_tiny_vs_torch skipped (torch unavailable)\n");
    fflush(stdout);
    double tb_ms = torch_ms(&big, B, T, 1, quick ? 2 : 4, threads);
    if (tb_ms > 0) {
        printf("BENCH train_124m_vs_torch %.2f\n", tb_ms / (s * 1e3));
        printf("BENCH torch_124m_ms_step %.1f\n", tb_ms);
        printf("BENCH torch_124m_mfu %.3f\n", flops124 / (tb_ms / 1e3) / 1e9 / peak);
    } else {
        printf("BENCH train_124m_vs_torch skipped (torch unavailable)\n");
    }
    return 0;
}
