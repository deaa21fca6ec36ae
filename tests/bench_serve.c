// bench_serve.c: KV-cache decoding benchmarks (infer/kv.h), printed as `BENCH <key> <value>` lines.
//   serve_bw_gb_s                  streaming read bandwidth: sum over 512 MiB on all threads
//   serve_bw_limit_tok_s_124m      that bandwidth / bytes of weights one decoded token reads
//   serve_decode_tok_s_124m        one stream, greedy, 1 token per kv_step (1 / median step)
//   serve_decode_frac_of_bw_limit  the line above over the bandwidth bound
//   serve_ttft_ms_124m             64-token prompt: prefill + first logits + sample (median)
//   serve_prefill_tok_s_124m       prompt tokens/s filling a slot to position 960 in 64-token steps
//   serve_decode_tok_s_124m_pos960 one stream decoding at positions 960..1023 (long context)
//   serve_agg_tok_s_124m_c8        8 streams, one kv_step of 8 entries x 1 token (8 / median)
//   serve_agg_vs_single_c8         aggregate over single-stream tokens/s
//   serve_decode_vs_torch          against scripts/bench-torch --decode (PyTorch KV cache)
// Model: GPT-2 124M (L12 NH12 C768, block_size 1024, V 50257), random init. Medians resist the
// other processes of a shared machine. BENCH_QUICK=1 times fewer steps; BENCH_NO_TORCH=1 skips
// the PyTorch run.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "gpt.h"
#include "kv.h"
#include "ops.h"
#include "sample.h"
#include "test_util.h"

#define SLOTS  8
#define PROMPT 16 // decode benchmarks start after a prompt of this length
#define TTFT_P 64
#define LONG_P 960 // long-context decoding starts here (a multiple of TTFT_P)

static void check(int rc, const char *what) {
    if (rc == ERR_OK) return;
    fprintf(stderr, "bench_serve: %s: %s\n", what, err_msg());
    exit(1);
}

// read_bw_gb_s returns the best of several timed sums over a 512 MiB buffer (GB/s). Each
// thread keeps 64 independent partial sums, so the loop is limited by memory, not by the
// latency of one chain of additions.
static double read_bw_gb_s(void) {
    const size_t n = (size_t)128 << 20; // floats
    float *x = xalloc_aligned(n * sizeof(float));
    ops_zero(x, n);
    for (size_t i = 0; i < n; i += 1024)
        x[i] = 1.0f;
    double best = 0, check_sum = 0;
    for (int r = 0; r < 6; r++) {
        double t0 = tu_now_s(), tot = 0;
#pragma omp parallel for schedule(static) reduction(+ : tot)
        for (size_t b = 0; b < n; b += 16384) {
            float acc[64] = {0};
            for (size_t i = b; i < b + 16384; i += 64) {
#pragma omp simd
                for (int j = 0; j < 64; j++)
                    acc[j] += x[i + j];
            }
            float s = 0;
            for (int j = 0; j < 64; j++)
                s += acc[j];
            tot += s;
        }
        double dt = tu_now_s() - t0;
        if (r > 0 && n * sizeof(float) / dt / 1e9 > best) best = n * sizeof(float) / dt / 1e9;
        check_sum = tot;
    }
    if (check_sum != (double)(n / 1024)) fprintf(stderr, "bench_serve: bad bandwidth sum\n");
    free(x);
    return best;
}

// fill_tokens writes n deterministic pseudo-random token ids into t.
static void fill_tokens(int32_t *t, int n, int V, unsigned seed) {
    for (int i = 0; i < n; i++)
        t[i] = (int32_t)(((unsigned)i * 7919u + seed * 104729u + 13u) % (unsigned)V);
}

// torch_decode_tok_s runs scripts/bench-torch in decode mode and returns 1 / its median seconds
// per token (the statistic used for ours), or -1 if torch is unavailable or the run fails.
static double torch_decode_tok_s(const cfg_model *mc, int steps, int threads) {
    if (getenv("BENCH_NO_TORCH")) return -1;
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "scripts/bench-torch --n-layer %d --n-head %d --n-embd %d --block-size %d "
             "--vocab %d --prompt %d --decode %d --warmup 4 --threads %d 2>/dev/null",
             mc->n_layer, mc->n_head, mc->n_embd, mc->block_size, mc->vocab_size, PROMPT, steps,
             threads);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[256];
    double overall = -1, ms = -1;
    while (fgets(line, sizeof line, p)) {
        sscanf(line, "torch_decode_tok_s %lf", &overall);
        sscanf(line, "torch_decode_ms_tok %lf", &ms); // absent on torch_unavailable
    }
    pclose(p);
    if (ms <= 0) return -1;
    fprintf(stderr, "bench_serve: torch decode median %.1f ms/tok, %.2f tok/s overall\n", ms,
            overall);
    return 1e3 / ms;
}

int main(void) {
    const int quick = getenv("BENCH_QUICK") != NULL;
    const int threads = ops_init(0);
    fprintf(stderr, "bench_serve: threads=%d blas=\"%s\"\n", threads, ops_blas_name());

    const double bw = read_bw_gb_s();
    printf("BENCH serve_bw_gb_s %.2f\n", bw);
    fflush(stdout);

    const cfg_model mc = {
        .n_layer = 12, .n_head = 12, .n_embd = 768, .block_size = 1024, .vocab_size = 50257};
    const int V = mc.vocab_size;
    double t0 = tu_now_s();
    gpt_model *m = NULL;
    check(gpt_create(&m, &mc, 1, 0), "gpt_create");
    gpt_init_params(m, 1);
    kv_engine *e = NULL;
    check(kv_create(&e, m, SLOTS, TTFT_P > SLOTS ? TTFT_P : SLOTS), "kv_create");
    fprintf(stderr, "bench_serve: model + engine (%d slots x %d positions) ready in %.1f s\n",
            SLOTS, mc.block_size, tu_now_s() - t0);

    // Bytes one decoded token must read: every parameter once (wte twice as embedding row and
    // lm_head, but the row is negligible), except wpe, of which it reads one row.
    const double wbytes =
        (double)(gpt_n_params(m) - gpt_find_view(m, "transformer.wpe.weight")->count) * 4;
    const double limit = bw * 1e9 / wbytes;
    printf("BENCH serve_bw_limit_tok_s_124m %.1f\n", limit);
    fflush(stdout);

    float *logits = xalloc_aligned((size_t)SLOTS * V * sizeof(float));
    float *scratch = xmalloc(2 * (size_t)V * sizeof(float));
    const sample_params greedy = {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 1};
    int32_t prompt[TTFT_P];

    // Time to first token: prefill TTFT_P tokens, logits of the last, greedy sample.
    const int ttft_runs = quick ? 3 : 7;
    double ttft[8];
    for (int r = 0; r <= ttft_runs; r++) { // run 0 warms up
        int s = kv_slot_open(e);
        fill_tokens(prompt, TTFT_P, V, (unsigned)r);
        const int32_t *tp = prompt;
        int n = TTFT_P;
        double a = tu_now_s();
        check(kv_step(e, 1, &s, &tp, &n, logits), "kv_step (prefill)");
        (void)sample_next(logits, V, &greedy, 0, scratch); // the first token
        if (r > 0) ttft[r - 1] = tu_now_s() - a;
        kv_slot_close(e, s);
    }
    const double ttft_ms = tu_median(ttft, ttft_runs) * 1e3;
    printf("BENCH serve_ttft_ms_124m %.1f\n", ttft_ms);
    fflush(stdout);

    // Single stream: prompt, 8 untimed decode steps, then `steps` timed ones.
    const int steps = quick ? 32 : 96, warm = 8, long_steps = mc.block_size - LONG_P - warm;
    double *dt = xmalloc((size_t)(steps > long_steps ? steps : long_steps) * sizeof(double));
    {
        int s = kv_slot_open(e), n = PROMPT;
        fill_tokens(prompt, PROMPT, V, 100);
        const int32_t *tp = prompt;
        check(kv_step(e, 1, &s, &tp, &n, logits), "kv_step (prompt)");
        int32_t tok = (int32_t)sample_next(logits, V, &greedy, 0, scratch);
        double total = 0;
        for (int i = 0; i < warm + steps; i++) {
            const int32_t *tt = &tok;
            int one = 1;
            double a = tu_now_s();
            check(kv_step(e, 1, &s, &tt, &one, logits), "kv_step (decode)");
            tok = (int32_t)sample_next(logits, V, &greedy, (uint64_t)i, scratch);
            double d = tu_now_s() - a;
            if (i >= warm) {
                dt[i - warm] = d;
                total += d;
            }
        }
        kv_slot_close(e, s);
        fprintf(stderr, "bench_serve: single stream: %d tokens in %.2f s (%.1f tok/s overall)\n",
                steps, total, steps / total);
    }
    const double single = 1.0 / tu_median(dt, steps);
    printf("BENCH serve_decode_tok_s_124m %.1f\n", single);
    printf("BENCH serve_decode_frac_of_bw_limit %.2f\n", single / limit);
    fflush(stdout);

    // Long context: fill a slot to LONG_P positions in TTFT_P-token steps, then decode.
    {
        int s = kv_slot_open(e);
        double a = tu_now_s();
        for (int p = 0; p < LONG_P; p += TTFT_P) {
            fill_tokens(prompt, TTFT_P, V, 300 + (unsigned)p);
            const int32_t *tp = prompt;
            int n = TTFT_P;
            check(kv_step(e, 1, &s, &tp, &n, logits), "kv_step (long prefill)");
        }
        const double fill = tu_now_s() - a;
        int32_t tok = (int32_t)sample_next(logits, V, &greedy, 0, scratch);
        for (int i = 0; i < warm + long_steps; i++) {
            const int32_t *tt = &tok;
            int one = 1;
            double b = tu_now_s();
            check(kv_step(e, 1, &s, &tt, &one, logits), "kv_step (long decode)");
            tok = (int32_t)sample_next(logits, V, &greedy, (uint64_t)i, scratch);
            if (i >= warm) dt[i - warm] = tu_now_s() - b;
        }
        kv_slot_close(e, s);
        printf("BENCH serve_prefill_tok_s_124m %.0f\n", LONG_P / fill);
        printf("BENCH serve_decode_tok_s_124m_pos%d %.1f\n", LONG_P,
               1.0 / tu_median(dt, long_steps));
        fflush(stdout);
    }

    // SLOTS streams advancing together: one kv_step of SLOTS entries x 1 token.
    const int agg_steps = quick ? 16 : 48;
    double *adt = xmalloc((size_t)agg_steps * sizeof(double));
    {
        int slot[SLOTS], ntok[SLOTS];
        int32_t tok[SLOTS];
        const int32_t *tp[SLOTS];
        for (int i = 0; i < SLOTS; i++) {
            slot[i] = kv_slot_open(e);
            int n = PROMPT;
            fill_tokens(prompt, PROMPT, V, 200 + (unsigned)i);
            const int32_t *p = prompt;
            check(kv_step(e, 1, &slot[i], &p, &n, logits), "kv_step (prompt)");
            tok[i] = (int32_t)sample_next(logits, V, &greedy, 0, scratch);
            ntok[i] = 1;
            tp[i] = &tok[i];
        }
        for (int it = 0; it < 4 + agg_steps; it++) {
            double a = tu_now_s();
            check(kv_step(e, SLOTS, slot, tp, ntok, logits), "kv_step (batched decode)");
            for (int i = 0; i < SLOTS; i++)
                tok[i] =
                    (int32_t)sample_next(logits + (size_t)i * V, V, &greedy, (uint64_t)it, scratch);
            if (it >= 4) adt[it - 4] = tu_now_s() - a;
        }
        for (int i = 0; i < SLOTS; i++)
            kv_slot_close(e, slot[i]);
    }
    const double agg = SLOTS / tu_median(adt, agg_steps);
    printf("BENCH serve_agg_tok_s_124m_c%d %.1f\n", SLOTS, agg);
    printf("BENCH serve_agg_vs_single_c%d %.2f\n", SLOTS, agg / single);
    fflush(stdout);

    kv_destroy(e);
    gpt_destroy(m);
    free(logits);
    free(scratch);
    free(dt);
    free(adt);

    const double tt = torch_decode_tok_s(&mc, quick ? 16 : 48, threads);
    if (tt > 0) {
        printf("BENCH torch_decode_tok_s_124m %.2f\n", tt);
        printf("BENCH serve_decode_vs_torch %.2f\n", single / tt);
    } else {
        printf("BENCH serve_decode_vs_torch skipped (torch unavailable)\n");
    }
    return 0;
}
