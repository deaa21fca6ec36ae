// bench_serve.c: KV-cache decoding benchmarks (infer/kv.h), printed as `BENCH <key> <value>` lines.
//   serve_bw_gb_s                  streaming read bandwidth: sum over 512 MiB on all threads, the
//                                  best pass of the run (6 first, then 2 in each round)
//   serve_bw_limit_tok_s_124m      that bandwidth / bytes of weights one decoded token reads
//   serve_decode_tok_s_124m        one stream, greedy, 1 token per kv_step (1 / median step)
//   serve_decode_frac_of_bw_limit  each round's decode rate over the bandwidth bound
//   serve_ttft_ms_124m             64-token prompt: prefill + first logits + sample (median)
//   serve_prefill_tok_s_124m       prompt tokens/s filling a slot to position 960 in 64-token steps
//   serve_decode_tok_s_124m_pos960 one stream decoding at positions 960..1023 (long context)
//   serve_agg_tok_s_124m_c8        8 streams, one kv_step of 8 entries x 1 token (8 / median)
//   serve_agg_vs_single_c8         aggregate over single-stream tokens/s
//   serve_decode_vs_torch          against PyTorch's KV-cache decoding (scripts/bench-torch)
// Model: GPT-2 124M (L12 NH12 C768, block_size 1024, V 50257), random init.
// The three ratios come from interleaved rounds (tu_interleave). Each round runs, in an order that
// rotates from round to round: one stream (a fresh slot, a 16-token prompt, 4 untimed and 24 timed
// decode steps), 8 streams (8 fresh slots, 2 untimed and 12 timed batched steps), two bandwidth
// passes, and the same single-stream round in a persistent PyTorch process (bench-torch --serve,
// told over a pipe). Each round gives each ratio once; `X` is the median over the rounds and
// `X_spread` their range and IQR. The decode and aggregate tokens/s are medians over every timed
// step of every round. The bandwidth bound uses the best pass of the run: load only slows a pass,
// and the best of a round's two passes swung between 18 and 50 GB/s on the shared machine. 7 rounds
// (about 25 s), 3 under BENCH_QUICK=1; BENCH_ROUNDS or BENCH_ROUNDS_SERVE sets it. BENCH_NO_TORCH=1
// leaves PyTorch out.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "infer/kv.h"
#include "infer/sample.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"
#include "train/gpt.h"
#include "train/ops.h"

#define SLOTS  8
#define PROMPT 16 // decode benchmarks start after a prompt of this length
#define TTFT_P 64
#define LONG_P 960 // long-context decoding starts here (a multiple of TTFT_P)

static void check(int rc, const char *what) {
    if (rc == ERR_OK) return;
    fprintf(stderr, "bench_serve: %s: %s\n", what, err_msg());
    exit(1);
}

// A 512 MiB buffer of floats for streaming-read bandwidth passes.
typedef struct bw_buf {
    float *x;
    size_t n;
} bw_buf;

static void bw_init(bw_buf *b) {
    b->n = (size_t)128 << 20; // floats
    b->x = xalloc_aligned(b->n * sizeof(float));
    ops_zero(b->x, b->n);
    for (size_t i = 0; i < b->n; i += 1024)
        b->x[i] = 1.0f;
}

// bw_pass sums the buffer once on all threads and returns GB/s. Each thread keeps 64 independent
// partial sums, so the loop is limited by memory, not by the latency of one chain of additions.
static double bw_pass(const bw_buf *b) {
    const size_t n = b->n;
    const float *x = b->x;
    double t0 = sys_now_s(), tot = 0;
#pragma omp parallel for schedule(static) reduction(+ : tot)
    for (size_t blk = 0; blk < n; blk += 16384) {
        float acc[64] = {0};
        for (size_t i = blk; i < blk + 16384; i += 64) {
#pragma omp simd
            for (int j = 0; j < 64; j++)
                acc[j] += x[i + j];
        }
        float s = 0;
        for (int j = 0; j < 64; j++)
            s += acc[j];
        tot += s;
    }
    double dt = sys_now_s() - t0;
    if (tot != (double)(n / 1024)) fprintf(stderr, "bench_serve: bad bandwidth sum\n");
    return n * sizeof(float) / dt / 1e9;
}

// read_bw_gb_s returns the best of 5 passes after a warm-up pass (GB/s).
static double read_bw_gb_s(const bw_buf *b) {
    double best = 0;
    for (int r = 0; r < 6; r++) {
        double g = bw_pass(b);
        if (r > 0 && g > best) best = g;
    }
    return best;
}

// bw_run is a tu_side run: n passes into v as GB/s (the round's figure is the best of them).
static int bw_run(void *ctx, int warm, int n, double *v) {
    for (int i = 0; i < warm + n; i++) {
        double g = bw_pass(ctx);
        if (i >= warm) v[i - warm] = g;
    }
    return 0;
}

// fill_tokens writes n deterministic pseudo-random token ids into t.
static void fill_tokens(int32_t *t, int n, int V, unsigned seed) {
    for (int i = 0; i < n; i++)
        t[i] = (int32_t)(((unsigned)i * 7919u + seed * 104729u + 13u) % (unsigned)V);
}

// What the decode rounds need: the engine, the scratch buffers and the sampler.
typedef struct dec_ctx {
    kv_engine *e;
    float *logits, *scratch;
    sample_params greedy;
    int V;
} dec_ctx;

// single_run is a tu_side run: a fresh slot, the PROMPT-token prompt, warm untimed and n timed
// greedy decode steps (seconds each) into v.
static int single_run(void *ctx, int warm, int n, double *v) {
    dec_ctx *d = ctx;
    int32_t prompt[PROMPT];
    int s = kv_slot_open(d->e), np = PROMPT;
    fill_tokens(prompt, PROMPT, d->V, 100);
    const int32_t *tp = prompt;
    check(kv_step(d->e, 1, &s, &tp, &np, d->logits), "kv_step (prompt)");
    int32_t tok = (int32_t)sample_next(d->logits, d->V, &d->greedy, 0, d->scratch);
    for (int i = 0; i < warm + n; i++) {
        const int32_t *tt = &tok;
        int one = 1;
        double a = sys_now_s();
        check(kv_step(d->e, 1, &s, &tt, &one, d->logits), "kv_step (decode)");
        tok = (int32_t)sample_next(d->logits, d->V, &d->greedy, (uint64_t)i, d->scratch);
        if (i >= warm) v[i - warm] = sys_now_s() - a;
    }
    kv_slot_close(d->e, s);
    return 0;
}

// agg_run is a tu_side run: SLOTS fresh slots with their prompts, then warm untimed and n timed
// kv_steps of SLOTS entries x 1 token (seconds each) into v.
static int agg_run(void *ctx, int warm, int n, double *v) {
    dec_ctx *d = ctx;
    int slot[SLOTS], ntok[SLOTS];
    int32_t tok[SLOTS], prompt[PROMPT];
    const int32_t *tp[SLOTS];
    for (int i = 0; i < SLOTS; i++) {
        slot[i] = kv_slot_open(d->e);
        int np = PROMPT;
        fill_tokens(prompt, PROMPT, d->V, 200 + (unsigned)i);
        const int32_t *p = prompt;
        check(kv_step(d->e, 1, &slot[i], &p, &np, d->logits), "kv_step (prompt)");
        tok[i] = (int32_t)sample_next(d->logits, d->V, &d->greedy, 0, d->scratch);
        ntok[i] = 1;
        tp[i] = &tok[i];
    }
    for (int it = 0; it < warm + n; it++) {
        double a = sys_now_s();
        check(kv_step(d->e, SLOTS, slot, tp, ntok, d->logits), "kv_step (batched decode)");
        for (int i = 0; i < SLOTS; i++)
            tok[i] = (int32_t)sample_next(d->logits + (size_t)i * d->V, d->V, &d->greedy,
                                          (uint64_t)it, d->scratch);
        if (it >= warm) v[it - warm] = sys_now_s() - a;
    }
    for (int i = 0; i < SLOTS; i++)
        kv_slot_close(d->e, slot[i]);
    return 0;
}

// torch_open starts a persistent scripts/bench-torch --serve (decode only) for model mc and waits
// until it is ready. Returns 0, or -1 if torch is unavailable or it failed.
static int torch_open(tu_proc *p, const cfg_model *mc, int threads) {
    if (getenv("BENCH_NO_TORCH")) return -1;
    char cmd[512], line[256];
    snprintf(cmd, sizeof cmd,
             "exec scripts/bench-torch --serve --n-layer %d --n-head %d --n-embd %d "
             "--block-size %d --vocab %d --prompt %d --threads %d 2>/dev/null",
             mc->n_layer, mc->n_head, mc->n_embd, mc->block_size, mc->vocab_size, PROMPT, threads);
    if (tu_proc_start(p, cmd)) return -1;
    if (tu_proc_read(p, line, sizeof line) || strcmp(line, "ready") != 0) {
        tu_proc_stop(p);
        return -1;
    }
    return 0;
}

// torch_run is a tu_side run: the single-stream round of single_run in PyTorch, seconds per
// decode step into v.
static int torch_run(void *ctx, int warm, int n, double *v) {
    return tu_torch_times(ctx, "decode", warm, n, v);
}

static double max_of(const double *x, int n) {
    double m = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    return m;
}

int main(void) {
    const int quick = getenv("BENCH_QUICK") != NULL;
    const int threads = ops_init(0);
    fprintf(stderr, "bench_serve: threads=%d blas=\"%s\"\n", threads, ops_blas_name());

    bw_buf bwb;
    bw_init(&bwb);
    double bw = read_bw_gb_s(&bwb);

    const cfg_model mc = {
        .n_layer = 12, .n_head = 12, .n_embd = 768, .block_size = 1024, .vocab_size = 50257};
    const int V = mc.vocab_size;
    double t0 = sys_now_s();
    gpt_model *m = NULL;
    check(gpt_create(&m, &mc, 1, 0), "gpt_create");
    gpt_init_params(m, 1);
    kv_engine *e = NULL;
    check(kv_create(&e, m, SLOTS, TTFT_P > SLOTS ? TTFT_P : SLOTS), "kv_create");
    fprintf(stderr, "bench_serve: model + engine (%d slots x %d positions) ready in %.1f s\n",
            SLOTS, mc.block_size, sys_now_s() - t0);

    // Bytes one decoded token must read: every parameter once (wte twice as embedding row and
    // lm_head, but the row is negligible), except wpe, of which it reads one row.
    const double wbytes =
        (double)(gpt_n_params(m) - gpt_find_view(m, "transformer.wpe.weight")->count) * 4;
    dec_ctx d = {.e = e,
                 .logits = xalloc_aligned((size_t)SLOTS * V * sizeof(float)),
                 .scratch = xmalloc(2 * (size_t)V * sizeof(float)),
                 .greedy = {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 1},
                 .V = V};
    int32_t prompt[TTFT_P];

    // Time to first token: prefill TTFT_P tokens, logits of the last, greedy sample.
    const int ttft_runs = quick ? 3 : 7;
    double ttft[8];
    for (int r = 0; r <= ttft_runs; r++) { // run 0 warms up
        int s = kv_slot_open(e);
        fill_tokens(prompt, TTFT_P, V, (unsigned)r);
        const int32_t *tp = prompt;
        int n = TTFT_P;
        double a = sys_now_s();
        check(kv_step(e, 1, &s, &tp, &n, d.logits), "kv_step (prefill)");
        (void)sample_next(d.logits, V, &d.greedy, 0, d.scratch); // the first token
        if (r > 0) ttft[r - 1] = sys_now_s() - a;
        kv_slot_close(e, s);
    }
    const double ttft_ms = tu_median(ttft, ttft_runs) * 1e3;
    printf("BENCH serve_ttft_ms_124m %.1f\n", ttft_ms);
    fflush(stdout);

    // Interleaved rounds: one stream, 8 streams, bandwidth, PyTorch's one stream.
    const int rounds = tu_bench_rounds("serve", 7, 3);
    tu_proc py;
    const int have_torch = torch_open(&py, &mc, threads) == 0;
    tu_side sides[4] = {{"single_s", single_run, &d, 4, 24, NULL, NULL},
                        {"c8_s", agg_run, &d, 2, 12, NULL, NULL},
                        {"bw_gb_s", bw_run, &bwb, 0, 2, NULL, NULL},
                        {"torch_s", torch_run, &py, 4, 24, NULL, NULL}};
    const int n_sides = have_torch ? 4 : 3;
    for (int i = 0; i < n_sides; i++) {
        sides[i].all = xmalloc((size_t)rounds * sides[i].n * sizeof(double));
        sides[i].med = xmalloc((size_t)rounds * sizeof(double));
    }
    fprintf(stderr, "bench_serve: %d rounds\n", rounds);
    if (tu_interleave(sides, n_sides, rounds)) return 1;
    const double bw_best = max_of(sides[2].all, rounds * sides[2].n);
    if (bw_best > bw) bw = bw_best;
    const double limit = bw * 1e9 / wbytes;
    printf("BENCH serve_bw_gb_s %.2f\n", bw);
    printf("BENCH serve_bw_limit_tok_s_124m %.1f\n", limit);
    double *frac = xmalloc((size_t)rounds * sizeof(double));
    double *agg_vs = xmalloc((size_t)rounds * sizeof(double));
    double *vs_torch = xmalloc((size_t)rounds * sizeof(double));
    for (int r = 0; r < rounds; r++) {
        const double rate = 1.0 / sides[0].med[r];
        frac[r] = rate / limit;
        agg_vs[r] = SLOTS / sides[1].med[r] / rate;
        if (have_torch) vs_torch[r] = sides[3].med[r] / sides[0].med[r];
    }
    const double single = 1.0 / tu_spread_of(sides[0].all, rounds * sides[0].n).median;
    printf("BENCH serve_decode_tok_s_124m %.1f\n", single);
    tu_bench_ratio("serve_decode_frac_of_bw_limit", frac, rounds, 2);
    const double agg = SLOTS / tu_spread_of(sides[1].all, rounds * sides[1].n).median;
    printf("BENCH serve_agg_tok_s_124m_c%d %.1f\n", SLOTS, agg);
    char key[64];
    snprintf(key, sizeof key, "serve_agg_vs_single_c%d", SLOTS);
    tu_bench_ratio(key, agg_vs, rounds, 2);
    if (have_torch) {
        const double tt = 1.0 / tu_spread_of(sides[3].all, rounds * sides[3].n).median;
        printf("BENCH torch_decode_tok_s_124m %.2f\n", tt);
        tu_bench_ratio("serve_decode_vs_torch", vs_torch, rounds, 2);
        tu_proc_stop(&py);
    } else {
        printf("BENCH serve_decode_vs_torch skipped (torch unavailable)\n");
    }
    fflush(stdout);
    for (int i = 0; i < n_sides; i++) {
        free(sides[i].all);
        free(sides[i].med);
    }
    free(frac);
    free(agg_vs);
    free(vs_torch);
    free(bwb.x);

    // Long context: fill a slot to LONG_P positions in TTFT_P-token steps, then decode.
    const int warm = 8, long_steps = mc.block_size - LONG_P - warm;
    double *dt = xmalloc((size_t)long_steps * sizeof(double));
    {
        int s = kv_slot_open(e);
        double a = sys_now_s();
        for (int p = 0; p < LONG_P; p += TTFT_P) {
            fill_tokens(prompt, TTFT_P, V, 300 + (unsigned)p);
            const int32_t *tp = prompt;
            int n = TTFT_P;
            check(kv_step(e, 1, &s, &tp, &n, d.logits), "kv_step (long prefill)");
        }
        const double fill = sys_now_s() - a;
        int32_t tok = (int32_t)sample_next(d.logits, V, &d.greedy, 0, d.scratch);
        for (int i = 0; i < warm + long_steps; i++) {
            const int32_t *tt = &tok;
            int one = 1;
            double b = sys_now_s();
            check(kv_step(e, 1, &s, &tt, &one, d.logits), "kv_step (long decode)");
            tok = (int32_t)sample_next(d.logits, V, &d.greedy, (uint64_t)i, d.scratch);
            if (i >= warm) dt[i - warm] = sys_now_s() - b;
        }
        kv_slot_close(e, s);
        printf("BENCH serve_prefill_tok_s_124m %.0f\n", LONG_P / fill);
        printf("BENCH serve_decode_tok_s_124m_pos%d %.1f\n", LONG_P,
               1.0 / tu_median(dt, long_steps));
        fflush(stdout);
    }

    kv_destroy(e);
    gpt_destroy(m);
    free(d.logits);
    free(d.scratch);
    free(dt);
    return 0;
}
