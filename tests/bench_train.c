// bench_train.c: training-step benchmarks, printed as `BENCH <key> <value>` lines.
//   sgemm_peak_gflops   cblas_sgemm 2048^3 on all threads, the best call of the run (the MFU
//                       denominator: 10 calls first, then 2 in each 124M round)
//   train_124m_*        GPT-2 124M (L12 NH12 C768 V50257) at B=4, T=64: ms/step, MFU, peak RSS
//   train_tiny_*        configs/tiny.ini's model (L4 NH4 C128 V65) at B=32, T=64: tokens/s
//   *_vs_torch          speed ratio against the same step in PyTorch (scripts/bench-torch),
//                       skipped when torch is not installed
// A step is forward + backward + clip + AdamW, on random tokens (data loading is not timed).
//
// Ratios are measured in interleaved rounds (tu_interleave): one PyTorch process per model stays
// up for the whole benchmark (bench-torch --serve) and is told over a pipe to run k steps, our
// model lives in this process, and each round times a few steps of each, the side that goes first
// alternating. Each round gives one ratio (PyTorch's median ms/step over ours); `X` is the median
// over the rounds and `X_spread` their range and IQR. The ms/step and tokens/s figures are medians
// over every timed step of every round. MFU is per round (that round's median step) against the
// best sgemm call of the run: other load only slows a call down, so the best is the machine's
// peak, while a best of 2 calls per round fell to a third of it in a loaded round.
// Rounds (BENCH_ROUNDS, or BENCH_ROUNDS_TINY / BENCH_ROUNDS_124M): tiny 15 rounds of 10 steps a
// side (about 45 s in all); 124M 9 rounds of 3 of our steps and 1 of PyTorch's (about 4 + 7 s a
// round on 2 cores, 2 minutes with start-up). BENCH_QUICK=1: 3 and 2 rounds.
// BENCH_NO_TORCH=1 skips PyTorch (the absolute figures are still measured, in the same rounds).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"
#include "train/gpt.h"
#include "train/ops.h"
#include "train/optim.h"

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
        double t0 = sys_now_s();
        ops_sgemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double dt = sys_now_s() - t0;
        double g = 2.0 * n * n * (double)n / dt / 1e9;
        if (r > 0 && g > best) best = g; // the first run warms up the thread pool
    }
    free(a);
    free(b);
    free(c);
    return best;
}

// An in-process training setup whose steps the rounds time.
typedef struct trainer {
    gpt_model *m;
    optim_adamw *o;
    cfg_train tc;
    int32_t *x, *y;
    int B, T;
} trainer;

static void trainer_init(trainer *t, const cfg_model *mc, int B, int T) {
    if (gpt_create(&t->m, mc, B, 1)) {
        fprintf(stderr, "bench: %s\n", err_msg());
        exit(1);
    }
    gpt_init_params(t->m, 1);
    optim_create(&t->o, gpt_n_params(t->m));
    t->tc = (cfg_train){
        .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .grad_clip = 1.0f};
    t->B = B;
    t->T = T;
    t->x = xmalloc((size_t)B * T * sizeof(int32_t));
    t->y = xmalloc((size_t)B * T * sizeof(int32_t));
    for (int i = 0; i < B * T; i++) {
        t->x[i] = (int32_t)((i * 7919u + 13u) % (unsigned)mc->vocab_size);
        t->y[i] = (int32_t)((i * 104729u + 7u) % (unsigned)mc->vocab_size);
    }
}

static void trainer_fini(trainer *t) {
    free(t->x);
    free(t->y);
    optim_destroy(t->o);
    gpt_destroy(t->m);
}

// trainer_run is a tu_side run: warm untimed steps, then n timed ones (seconds each) into v.
static int trainer_run(void *ctx, int warm, int n, double *v) {
    trainer *t = ctx;
    for (int s = 0; s < warm + n; s++) {
        double t0 = sys_now_s();
        gpt_zero_grad(t->m);
        gpt_forward(t->m, t->x, t->y, t->B, t->T);
        gpt_backward(t->m, 1.0f);
        float norm = optim_grad_norm(gpt_grads(t->m), gpt_n_params(t->m));
        optim_step(t->o, t->m, &t->tc, 1e-4f, optim_clip_scale(norm, t->tc.grad_clip));
        if (s >= warm) v[s - warm] = sys_now_s() - t0;
    }
    return 0;
}

// torch_open starts a persistent scripts/bench-torch --serve for the same model and waits for it
// to be ready (model built, warmup steps done). Returns 0, or -1 if torch is unavailable.
static int torch_open(tu_proc *p, const cfg_model *mc, int B, int T, int warmup, int threads) {
    if (getenv("BENCH_NO_TORCH")) return -1;
    char cmd[512], line[256];
    snprintf(cmd, sizeof cmd,
             "exec scripts/bench-torch --serve --n-layer %d --n-head %d --n-embd %d "
             "--block-size %d --vocab %d --batch %d --warmup %d --threads %d 2>/dev/null",
             mc->n_layer, mc->n_head, mc->n_embd, T, mc->vocab_size, B, warmup, threads);
    if (tu_proc_start(p, cmd)) return -1;
    if (tu_proc_read(p, line, sizeof line) || strcmp(line, "ready") != 0) {
        tu_proc_stop(p);
        return -1;
    }
    return 0;
}

// torch_run is a tu_side run over the persistent PyTorch process.
static int torch_run(void *ctx, int warm, int n, double *v) {
    return tu_torch_times(ctx, "train", warm, n, v);
}

// sgemm_run is a tu_side run: n sgemm 2048^3 calls into v as GFLOP/s (the round's peak is the
// best of them).
typedef struct sgemm_ctx {
    float *a, *b, *c;
    int n;
} sgemm_ctx;

static int sgemm_run(void *ctx, int warm, int n, double *v) {
    sgemm_ctx *g = ctx;
    for (int r = 0; r < warm + n; r++) {
        double t0 = sys_now_s();
        ops_sgemm(0, 0, g->n, g->n, g->n, 1.0f, g->a, g->n, g->b, g->n, 0.0f, g->c, g->n);
        double dt = sys_now_s() - t0;
        if (r >= warm) v[r - warm] = 2.0 * g->n * g->n * (double)g->n / dt / 1e9;
    }
    return 0;
}

// max_of returns the largest of x(n).
static double max_of(const double *x, int n) {
    double m = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    return m;
}

// side_alloc sets a side's buffers for rounds rounds.
static void side_alloc(tu_side *s, int rounds) {
    s->all = xmalloc((size_t)rounds * s->n * sizeof(double));
    s->med = xmalloc((size_t)rounds * sizeof(double));
}

static void side_free(tu_side *s) {
    free(s->all);
    free(s->med);
}

static void bench_124m(int threads, double peak) {
    const cfg_model big = {
        .n_layer = 12, .n_head = 12, .n_embd = 768, .block_size = 64, .vocab_size = 50257};
    const int B = 4, T = 64, rounds = tu_bench_rounds("124m", 9, 2);
    trainer t;
    trainer_init(&t, &big, B, T);
    const double flops = gpt_flops_per_token(t.m, T) * B * T;
    double warm_dt;
    trainer_run(&t, 1, 1, &warm_dt); // fresh AdamW state and first touch of the activations
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru); // our process only: PyTorch is a child and not counted
    const int n = 2048;
    sgemm_ctx g = {xalloc_aligned((size_t)n * n * sizeof(float)),
                   xalloc_aligned((size_t)n * n * sizeof(float)),
                   xalloc_aligned((size_t)n * n * sizeof(float)), n};
    for (size_t i = 0; i < (size_t)n * n; i++) {
        g.a[i] = (float)(i % 17) * 0.01f;
        g.b[i] = (float)(i % 13) * 0.01f;
    }
    tu_proc py;
    const int have_torch = torch_open(&py, &big, B, T, 1, threads) == 0;
    tu_side sides[3] = {{"ours_s", trainer_run, &t, 0, 3, NULL, NULL},
                        {"peak_gflops", sgemm_run, &g, 0, 2, NULL, NULL},
                        {"torch_s", torch_run, &py, 0, 1, NULL, NULL}};
    const int n_sides = have_torch ? 3 : 2;
    for (int i = 0; i < n_sides; i++)
        side_alloc(&sides[i], rounds);
    fprintf(stderr, "bench: 124M, %d rounds\n", rounds);
    if (tu_interleave(sides, n_sides, rounds)) exit(1);

    const double s = tu_spread_of(sides[0].all, rounds * sides[0].n).median;
    const double best = max_of(sides[1].all, rounds * sides[1].n);
    if (best > peak) peak = best;
    printf("BENCH sgemm_peak_gflops %.1f\n", peak);
    double *mfu = xmalloc((size_t)rounds * sizeof(double));
    for (int r = 0; r < rounds; r++)
        mfu[r] = flops / sides[0].med[r] / 1e9 / peak;
    printf("BENCH train_124m_ms_step %.1f\n", s * 1e3);
    tu_bench_ratio("train_124m_mfu", mfu, rounds, 3);
    printf("BENCH train_124m_gflops %.1f\n", flops / s / 1e9);
    printf("BENCH train_124m_peak_rss_mb %.0f\n", ru.ru_maxrss / 1024.0);
    fflush(stdout);
    if (have_torch) {
        const double ts = tu_spread_of(sides[2].all, rounds * sides[2].n).median;
        double *ratio = xmalloc((size_t)rounds * sizeof(double));
        for (int r = 0; r < rounds; r++) {
            ratio[r] = sides[2].med[r] / sides[0].med[r];
            mfu[r] = flops / sides[2].med[r] / 1e9 / peak;
        }
        tu_bench_ratio("train_124m_vs_torch", ratio, rounds, 2);
        printf("BENCH torch_124m_ms_step %.1f\n", ts * 1e3);
        tu_bench_ratio("torch_124m_mfu", mfu, rounds, 3);
        free(ratio);
        tu_proc_stop(&py);
    } else {
        printf("BENCH train_124m_vs_torch skipped (torch unavailable)\n");
    }
    free(mfu);
    for (int i = 0; i < n_sides; i++)
        side_free(&sides[i]);
    free(g.a);
    free(g.b);
    free(g.c);
    trainer_fini(&t);
}

static void bench_tiny(int threads) {
    const cfg_model tiny = {
        .n_layer = 4, .n_head = 4, .n_embd = 128, .block_size = 64, .vocab_size = 65};
    const int B = 32, T = 64, rounds = tu_bench_rounds("tiny", 15, 3);
    trainer t;
    trainer_init(&t, &tiny, B, T);
    double warm_dt;
    trainer_run(&t, 2, 1, &warm_dt);
    tu_proc py;
    const int have_torch = torch_open(&py, &tiny, B, T, 3, threads) == 0;
    // One untimed step a round lets each side's caches and thread pool warm up again after the
    // other side ran.
    tu_side sides[2] = {{"ours_s", trainer_run, &t, 1, 10, NULL, NULL},
                        {"torch_s", torch_run, &py, 1, 10, NULL, NULL}};
    const int n_sides = have_torch ? 2 : 1;
    for (int i = 0; i < n_sides; i++)
        side_alloc(&sides[i], rounds);
    fprintf(stderr, "bench: tiny, %d rounds\n", rounds);
    if (tu_interleave(sides, n_sides, rounds)) exit(1);
    const double ts = tu_spread_of(sides[0].all, rounds * sides[0].n).median;
    printf("BENCH train_tiny_tok_s %.0f\n", B * T / ts);
    printf("BENCH train_tiny_ms_step %.2f\n", ts * 1e3);
    fflush(stdout);
    if (have_torch) {
        double ratio[1000];
        for (int r = 0; r < rounds; r++)
            ratio[r] = sides[1].med[r] / sides[0].med[r];
        tu_bench_ratio("train_tiny_vs_torch", ratio, rounds, 2);
        tu_proc_stop(&py);
    } else {
        printf("BENCH train_tiny_vs_torch skipped (torch unavailable)\n");
    }
    for (int i = 0; i < n_sides; i++)
        side_free(&sides[i]);
    trainer_fini(&t);
}

int main(void) {
    int threads = ops_init(0);
    fprintf(stderr, "bench: threads=%d blas=\"%s\"\n", threads, ops_blas_name());
    bench_124m(threads, sgemm_peak_gflops());
    bench_tiny(threads);
    return 0;
}
