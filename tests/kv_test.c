// kv_test.c: the KV-cache engine against gpt_forward. Every logits row kv_step returns must equal
// the no-cache forward pass over the slot's whole sequence at the same position (prefill, decode,
// mixed steps, several slots, reused slots, odd sizes), greedy generation must match the no-cache
// generator token for token, and every bad request must fail with ERR_INVAL and change nothing.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "infer/kv.h"
#include "infer/sample.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/gpt.h"
#include "train/ops.h"

TestSuite(kv, .timeout = 60);

// Tolerance: |kv - forward| <= REL_TOL * (1 + max |forward logit|) over each row. Both paths
// evaluate the same float32 expressions and differ only in summation order (sgemm blocking vs the
// engine's 8-lane dot products, the softmax scale applied before or after the sum, libm expf vs
// ops.c's exp) and in fused multiply-adds, so the error scales with the logits. Over every row of
// these tests (sums of up to 4C = 512 terms, logits up to 6.5) the largest difference measured is
// 7.2e-6, i.e. 1.1e-6 of the row's scale (a few float ulps); 1e-5 leaves 10x headroom for other
// BLAS builds and thread counts and stays 4-5 orders of magnitude below the effect of a lost or
// shifted position embedding or a changed context (see
// tolerance_is_far_below_position_and_context_effects).
#define REL_TOL 1e-5

static const cfg_model TINY = {
    .n_layer = 2, .n_head = 2, .n_embd = 32, .block_size = 16, .vocab_size = 50};
// GPT-2's head width, 64, takes the engine's register-blocked value sum.
static const cfg_model WIDE = {
    .n_layer = 2, .n_head = 2, .n_embd = 128, .block_size = 12, .vocab_size = 70};
// Sizes that are not multiples of 8 (C = 36, hs = 12, V = 37) reach the kernels' scalar tails.
static const cfg_model ODD = {
    .n_layer = 1, .n_head = 3, .n_embd = 36, .block_size = 10, .vocab_size = 37};

// new_model builds a model with uniform(-0.3, 0.3) parameters (LayerNorm gains 1 + that).
// nanoGPT's N(0, 0.02) init with zero biases gives nearly uniform attention and logits near 0, so
// position, context and bias bugs would barely show.
static gpt_model *new_model(const cfg_model *mc, uint64_t seed) {
    ops_init(0);
    gpt_model *m = NULL;
    cr_assert_eq(gpt_create(&m, mc, 1, 0), ERR_OK, "%s", err_msg());
    float *P = gpt_params(m);
    tu_rand_fill(P, gpt_n_params(m), seed, -0.3f, 0.3f);
    int nv;
    const gpt_view *v = gpt_views(m, &nv);
    for (int i = 0; i < nv; i++)
        if (v[i].ndim == 1 && strstr(v[i].name, "ln_") && strstr(v[i].name, ".weight"))
            for (size_t j = 0; j < v[i].count; j++)
                P[v[i].offset + j] += 1.0f;
    return m;
}

static kv_engine *new_engine(const gpt_model *m, int slots, int max_tok) {
    kv_engine *e = NULL;
    cr_assert_eq(kv_create(&e, m, slots, max_tok), ERR_OK, "%s", err_msg());
    return e;
}

// random_tokens fills seq(n) with ids in [0, V) from seed.
static void random_tokens(int32_t *seq, int n, int V, uint64_t seed) {
    float *u = malloc((size_t)n * sizeof(float));
    tu_rand_fill(u, (size_t)n, seed, 0.0f, 1.0f);
    for (int i = 0; i < n; i++)
        seq[i] = (int32_t)(u[i] * (float)V) % V;
    free(u);
}

// ref_row returns gpt_forward's logits at the last position of seq[0 .. len).
static const float *ref_row(gpt_model *m, const int32_t *seq, int len) {
    gpt_forward(m, seq, NULL, 1, len);
    return gpt_logits(m) + (size_t)(len - 1) * gpt_config(m)->vocab_size;
}

// row_tol is the tolerance for a row whose reference logits are ref(n).
static double row_tol(const float *ref, int n) {
    double mx = 0;
    for (int i = 0; i < n; i++)
        mx = fmax(mx, fabs(ref[i]));
    return REL_TOL * (1 + mx);
}

static double max_diff(const float *a, const float *b, int n) {
    double d = 0;
    for (int i = 0; i < n; i++) {
        double x = fabs((double)a[i] - (double)b[i]);
        if (!(x <= d)) d = x; // NaN propagates as a failure
    }
    return d;
}

// expect_row asserts that got(V) equals the forward logits of seq[0 .. len).
static void expect_row(gpt_model *m, const float *got, const int32_t *seq, int len,
                       const char *what) {
    const int V = gpt_config(m)->vocab_size;
    const float *ref = ref_row(m, seq, len);
    const double d = max_diff(got, ref, V), tol = row_tol(ref, V);
    cr_assert(d <= tol, "%s: position %d: max |kv - forward| = %g > %g", what, len - 1, d, tol);
}

// step1 feeds one entry and asserts success.
static void step1(kv_engine *e, int slot, const int32_t *toks, int n, float *logits) {
    const int32_t *t[1] = {toks};
    cr_assert_eq(kv_step(e, 1, &slot, t, &n, logits), ERR_OK, "%s", err_msg());
}

Test(kv, decode_one_token_at_a_time_matches_forward_at_every_position) {
    gpt_model *m = new_model(&TINY, 1);
    kv_engine *e = new_engine(m, 2, 4);
    int32_t seq[16];
    random_tokens(seq, 16, TINY.vocab_size, 11);
    float logits[50];
    int s = kv_slot_open(e);
    cr_assert_geq(s, 0);
    for (int t = 0; t < 16; t++) {
        cr_assert_eq(kv_slot_pos(e, s), t);
        step1(e, s, &seq[t], 1, logits);
        expect_row(m, logits, seq, t + 1, "decode");
    }
    cr_assert_eq(kv_slot_pos(e, s), 16);
    kv_destroy(e);
    gpt_destroy(m);
}

Test(kv, prefill_of_every_length_then_decode_matches_forward) {
    gpt_model *m = new_model(&TINY, 2);
    kv_engine *e = new_engine(m, 1, 16);
    int32_t seq[16];
    random_tokens(seq, 16, TINY.vocab_size, 12);
    float logits[50];
    for (int k = 1; k <= 16; k++) {
        int s = kv_slot_open(e);
        cr_assert_eq(s, 0, "the only slot is free again after close");
        step1(e, s, seq, k, logits); // one prefill of the first k tokens
        cr_assert_eq(kv_slot_pos(e, s), k);
        expect_row(m, logits, seq, k, "prefill");
        for (int t = k; t < 16; t++) { // then decode the rest on top of the prefilled cache
            step1(e, s, &seq[t], 1, logits);
            expect_row(m, logits, seq, t + 1, "decode after prefill");
        }
        kv_slot_close(e, s);
    }
    kv_destroy(e);
    gpt_destroy(m);
}

Test(kv, mixed_prefill_and_decode_in_one_step_match_forward) {
    gpt_model *m = new_model(&TINY, 3);
    kv_engine *e = new_engine(m, 3, 16);
    int32_t a[16], b[16];
    random_tokens(a, 16, TINY.vocab_size, 13);
    random_tokens(b, 16, TINY.vocab_size, 14);
    float logits[2 * 50];
    int sa = kv_slot_open(e), sb = kv_slot_open(e);
    step1(e, sb, b, 5, logits); // B is mid-sequence, A is empty
    // prefill 9 tokens of A and decode B's 6th token in one call; then the reverse order
    int slots[2] = {sa, sb}, ntok[2] = {9, 1};
    const int32_t *toks[2] = {a, &b[5]};
    cr_assert_eq(kv_step(e, 2, slots, toks, ntok, logits), ERR_OK, "%s", err_msg());
    expect_row(m, logits, a, 9, "mixed: prefill entry");
    expect_row(m, logits + 50, b, 6, "mixed: decode entry");
    int slots2[2] = {sb, sa}, ntok2[2] = {7, 1};
    const int32_t *toks2[2] = {&b[6], &a[9]};
    cr_assert_eq(kv_step(e, 2, slots2, toks2, ntok2, logits), ERR_OK, "%s", err_msg());
    expect_row(m, logits, b, 13, "mixed: second prefill entry");
    expect_row(m, logits + 50, a, 10, "mixed: second decode entry");
    cr_assert_eq(kv_slot_pos(e, sa), 10);
    cr_assert_eq(kv_slot_pos(e, sb), 13);
    kv_destroy(e);
    gpt_destroy(m);
}

// Slots at different positions advance together by different counts. The first step feeds 26
// rows, more than the engine's small-batch kernel takes (24), so it also covers the sgemm path.
Test(kv, slots_of_different_lengths_in_one_step_match_forward) {
    gpt_model *m = new_model(&TINY, 4);
    kv_engine *e = new_engine(m, 4, 32);
    enum { S = 4 };
    int32_t seq[S][16];
    int slot[S], len[S] = {0};
    for (int i = 0; i < S; i++) {
        random_tokens(seq[i], 16, TINY.vocab_size, 20 + (uint64_t)i);
        slot[i] = kv_slot_open(e);
    }
    float logits[S * 50];
    const int plan[3][S] = {{9, 1, 4, 12}, {1, 6, 1, 1}, {3, 1, 11, 3}};
    for (int p = 0; p < 3; p++) {
        int ntok[S], slots[S];
        const int32_t *toks[S];
        for (int i = 0; i < S; i++) {
            slots[i] = slot[S - 1 - i]; // entries need not be in slot order
            ntok[i] = plan[p][S - 1 - i];
            toks[i] = &seq[S - 1 - i][len[S - 1 - i]];
        }
        cr_assert_eq(kv_step(e, S, slots, toks, ntok, logits), ERR_OK, "%s", err_msg());
        for (int i = 0; i < S; i++) {
            const int k = S - 1 - i;
            len[k] += ntok[i];
            cr_assert_eq(kv_slot_pos(e, slot[k]), len[k]);
            expect_row(m, logits + (size_t)i * 50, seq[k], len[k], "several slots");
        }
    }
    kv_destroy(e);
    gpt_destroy(m);
}

Test(kv, reopened_slot_forgets_its_old_sequence) {
    gpt_model *m = new_model(&TINY, 5);
    kv_engine *e = new_engine(m, 2, 16);
    int32_t a[16], b[16], c[16];
    random_tokens(a, 16, TINY.vocab_size, 31);
    random_tokens(b, 16, TINY.vocab_size, 32);
    random_tokens(c, 16, TINY.vocab_size, 33);
    float logits[50];
    int s0 = kv_slot_open(e), s1 = kv_slot_open(e);
    step1(e, s0, a, 12, logits);
    step1(e, s1, c, 4, logits);
    kv_slot_close(e, s0);
    cr_assert_eq(kv_slot_pos(e, s0), 0);
    int s = kv_slot_open(e);
    cr_assert_eq(s, s0, "the freed slot is reused");
    cr_assert_eq(kv_slot_pos(e, s), 0);
    // A shorter new sequence: stale keys of `a` at positions >= 3 must not be attended to.
    step1(e, s, b, 3, logits);
    expect_row(m, logits, b, 3, "reopened slot");
    for (int t = 3; t < 8; t++) {
        step1(e, s, &b[t], 1, logits);
        expect_row(m, logits, b, t + 1, "reopened slot decode");
    }
    step1(e, s1, &c[4], 1, logits); // the other slot was not disturbed
    expect_row(m, logits, c, 5, "neighbour slot");
    kv_destroy(e);
    gpt_destroy(m);
}

// two_slot_run prefills slot a with 4 tokens, then decodes it while slot b gets a 4-token prompt
// in the same step and is decoded alongside, checking every row against the forward pass.
static void two_slot_run(const cfg_model *mc, uint64_t seed) {
    gpt_model *m = new_model(mc, seed);
    const int T = mc->block_size, V = mc->vocab_size;
    kv_engine *e = new_engine(m, 2, 2 * T);
    int32_t *a = malloc((size_t)T * sizeof(int32_t)), *b = malloc((size_t)T * sizeof(int32_t));
    random_tokens(a, T, V, seed + 1);
    random_tokens(b, T, V, seed + 2);
    float *logits = malloc((size_t)2 * V * sizeof(float));
    int sa = kv_slot_open(e), sb = kv_slot_open(e);
    step1(e, sa, a, 4, logits);
    expect_row(m, logits, a, 4, "prefill");
    for (int la = 5, lb = 4; la <= T; la++, lb++) {
        int slots[2] = {sa, sb}, ntok[2] = {1, lb == 4 ? 4 : 1};
        const int32_t *toks[2] = {&a[la - 1], lb == 4 ? b : &b[lb - 1]};
        cr_assert_eq(kv_step(e, 2, slots, toks, ntok, logits), ERR_OK, "%s", err_msg());
        expect_row(m, logits, a, la, "decode a");
        expect_row(m, logits + V, b, lb, "decode b");
    }
    free(logits);
    free(a);
    free(b);
    kv_destroy(e);
    gpt_destroy(m);
}

Test(kv, odd_sizes_match_forward) { two_slot_run(&ODD, 41); }

Test(kv, gpt2_head_width_matches_forward) { two_slot_run(&WIDE, 43); }

Test(kv, greedy_generation_equals_no_cache_generation) {
    gpt_model *m = new_model(&TINY, 7);
    kv_engine *e = new_engine(m, 1, 16);
    const int V = TINY.vocab_size, T = TINY.block_size, P = 4;
    sample_params sp = {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 1};
    float scratch[2 * 50], logits[50];
    int32_t ref[16], got[16];
    random_tokens(ref, P, V, 51);
    memcpy(got, ref, P * sizeof(int32_t));
    // no cache: re-run the forward pass over the growing sequence, as `spartan sample` does
    for (int n = P; n < T; n++)
        ref[n] = sample_next(ref_row(m, ref, n), V, &sp, (uint64_t)n, scratch);
    int s = kv_slot_open(e);
    step1(e, s, got, P, logits);
    for (int n = P; n < T; n++) {
        got[n] = sample_next(logits, V, &sp, (uint64_t)n, scratch);
        if (n + 1 < T) step1(e, s, &got[n], 1, logits);
    }
    int distinct = 0;
    for (int n = P; n < T; n++) {
        cr_assert_eq(got[n], ref[n], "token %d: kv %d, no cache %d", n, got[n], ref[n]);
        distinct += n > P && got[n] != got[n - 1];
    }
    cr_assert_gt(distinct, 0, "a constant output would make this test weak");
    kv_destroy(e);
    gpt_destroy(m);
}

// The tolerance must separate a correct engine from the typical bugs: a position embedding that
// is lost or off by one, or a cached position missing from the context.
Test(kv, tolerance_is_far_below_position_and_context_effects) {
    gpt_model *m = new_model(&TINY, 8);
    const cfg_model *mc = gpt_config(m);
    const int V = mc->vocab_size, C = mc->n_embd;
    int32_t seq[16];
    random_tokens(seq, 16, V, 61);
    float *good = malloc((size_t)16 * V * sizeof(float));
    gpt_forward(m, seq, NULL, 1, 16);
    memcpy(good, gpt_logits(m), (size_t)16 * V * sizeof(float));
    // each effect is the smallest over rows of max |changed - good| / the row's tolerance
    double pos_effect = INFINITY, ctx_effect = INFINITY;
    // no position embedding
    float *wpe = gpt_params(m) + gpt_find_view(m, "transformer.wpe.weight")->offset;
    float *save = malloc((size_t)16 * C * sizeof(float));
    memcpy(save, wpe, (size_t)16 * C * sizeof(float));
    memset(wpe, 0, (size_t)16 * C * sizeof(float));
    gpt_forward(m, seq, NULL, 1, 16);
    for (int t = 0; t < 16; t++) {
        const float *g = good + (size_t)t * V;
        pos_effect = fmin(pos_effect, max_diff(g, gpt_logits(m) + t * V, V) / row_tol(g, V));
    }
    // positions shifted by one (the first row of wpe repeated)
    memcpy(wpe + C, save, (size_t)15 * C * sizeof(float));
    memcpy(wpe, save, (size_t)C * sizeof(float));
    gpt_forward(m, seq, NULL, 1, 16);
    for (int t = 1; t < 16; t++) {
        const float *g = good + (size_t)t * V;
        pos_effect = fmin(pos_effect, max_diff(g, gpt_logits(m) + t * V, V) / row_tol(g, V));
    }
    memcpy(wpe, save, (size_t)16 * C * sizeof(float));
    // the first token dropped from the context
    for (int t = 2; t < 16; t++) {
        const float *g = good + (size_t)t * V;
        ctx_effect = fmin(ctx_effect, max_diff(g, ref_row(m, seq + 1, t), V) / row_tol(g, V));
    }
    cr_assert_gt(pos_effect, 1000, "position effect only %g tolerances", pos_effect);
    cr_assert_gt(ctx_effect, 1000, "context effect only %g tolerances", ctx_effect);
    free(save);
    free(good);
    gpt_destroy(m);
}

// bad_step runs kv_step expecting ERR_INVAL with a message containing word, then checks that
// no slot moved and the logits were not written.
static void bad_step(kv_engine *e, int n, const int *slots, const int32_t *const *toks,
                     const int *ntok, const char *word, const char *what) {
    int before[4];
    for (int s = 0; s < 4; s++)
        before[s] = kv_slot_pos(e, s);
    float logits[4 * 50];
    for (int i = 0; i < 4 * 50; i++)
        logits[i] = 1234.5f;
    int rc = kv_step(e, n, slots, toks, ntok, logits);
    cr_assert_eq(rc, ERR_INVAL, "%s: got %s", what, err_str(rc));
    cr_assert(strstr(err_msg(), word), "%s: message '%s' lacks '%s'", what, err_msg(), word);
    for (int s = 0; s < 4; s++)
        cr_assert_eq(kv_slot_pos(e, s), before[s], "%s: slot %d moved", what, s);
    for (int i = 0; i < 4 * 50; i++)
        cr_assert_eq(logits[i], 1234.5f, "%s: logits written", what);
}

Test(kv, bad_steps_fail_with_a_clear_error_and_change_nothing) {
    gpt_model *m = new_model(&TINY, 9);
    kv_engine *e = new_engine(m, 4, 8); // slots 0..3, at most 8 new tokens per step
    int32_t seq[16];
    random_tokens(seq, 16, TINY.vocab_size, 71);
    float logits[50];
    int a = kv_slot_open(e), b = kv_slot_open(e), c = kv_slot_open(e);
    step1(e, a, seq, 3, logits);
    step1(e, b, seq, 8, logits);
    step1(e, b, seq + 8, 6, logits);
    kv_slot_close(e, c); // c is free again; slot 3 was never opened
    const int32_t bad_lo[1] = {-1}, bad_hi[1] = {50};
    const int32_t *ok1[2] = {&seq[3], &seq[14]};
    {
        int slots[2] = {a, c}, ntok[2] = {1, 1};
        bad_step(e, 2, slots, ok1, ntok, "not open", "closed slot");
        slots[1] = 3;
        bad_step(e, 2, slots, ok1, ntok, "not open", "never opened slot");
        slots[1] = -1;
        bad_step(e, 2, slots, ok1, ntok, "not open", "negative slot");
        slots[1] = 4;
        bad_step(e, 2, slots, ok1, ntok, "not open", "slot id past max_slots");
        slots[1] = a;
        bad_step(e, 2, slots, ok1, ntok, "repeated", "repeated slot");
    }
    {
        int slots[2] = {a, b}, ntok[2] = {1, 1};
        const int32_t *lo[2] = {&seq[3], bad_lo}, *hi[2] = {bad_hi, &seq[14]};
        bad_step(e, 2, slots, lo, ntok, "vocabulary", "token -1");
        bad_step(e, 2, slots, hi, ntok, "vocabulary", "token V");
        ntok[1] = 3; // b holds 14 of 16 positions
        bad_step(e, 2, slots, ok1, ntok, "block_size", "passing block_size");
        ntok[1] = 0;
        bad_step(e, 2, slots, ok1, ntok, "ntok", "ntok 0");
        ntok[1] = 1;
        const int32_t *null_tok[2] = {&seq[3], NULL};
        bad_step(e, 2, slots, null_tok, ntok, "NULL", "NULL token array");
        int ntok_big[2] = {7, 2}; // 9 > max_step_tokens 8
        const int32_t *long1[2] = {&seq[3], &seq[14]};
        bad_step(e, 2, slots, long1, ntok_big, "max_step_tokens", "too many tokens");
        bad_step(e, -1, slots, ok1, ntok, "n ", "negative n");
        bad_step(e, 2, NULL, ok1, ntok, "NULL", "NULL slots");
    }
    // After all that, the next valid step continues both sequences exactly.
    int slots[2] = {a, b}, ntok[2] = {1, 2};
    const int32_t *toks[2] = {&seq[3], &seq[14]};
    float out[2 * 50];
    cr_assert_eq(kv_step(e, 2, slots, toks, ntok, out), ERR_OK, "%s", err_msg());
    expect_row(m, out, seq, 4, "after errors, slot a");
    expect_row(m, out + 50, seq, 16, "after errors, slot b");
    cr_assert_eq(kv_step(e, 0, NULL, NULL, NULL, NULL), ERR_OK, "an empty step is a no-op");
    kv_destroy(e);
    gpt_destroy(m);
}

Test(kv, slots_open_until_full_and_closing_a_free_slot_is_harmless) {
    gpt_model *m = new_model(&TINY, 10);
    kv_engine *e = new_engine(m, 3, 4);
    cr_assert_eq(kv_vocab_size(e), 50);
    cr_assert_eq(kv_block_size(e), 16);
    cr_assert_eq(kv_slot_open(e), 0);
    cr_assert_eq(kv_slot_open(e), 1);
    cr_assert_eq(kv_slot_open(e), 2);
    cr_assert_eq(kv_slot_open(e), -1, "every slot is in use");
    cr_assert_eq(kv_slot_open(e), -1);
    kv_slot_close(e, 1);
    kv_slot_close(e, 1); // already free
    kv_slot_close(e, -1);
    kv_slot_close(e, 3); // out of range
    cr_assert_eq(kv_slot_pos(e, 3), -1);
    cr_assert_eq(kv_slot_open(e), 1, "the freed slot comes back");
    cr_assert_eq(kv_slot_open(e), -1);
    int32_t tok = 7;
    float logits[50];
    step1(e, 2, &tok, 1, logits);
    cr_assert_eq(kv_slot_pos(e, 2), 1);
    cr_assert_eq(kv_slot_pos(e, 0), 0);
    kv_destroy(e);
    kv_destroy(NULL);
    gpt_destroy(m);
}

Test(kv, create_rejects_bad_arguments) {
    gpt_model *m = new_model(&TINY, 11);
    kv_engine *e = NULL;
    cr_assert_eq(kv_create(&e, NULL, 1, 1), ERR_INVAL);
    cr_assert(strstr(err_msg(), "model"), "%s", err_msg());
    cr_assert_eq(kv_create(&e, m, 0, 1), ERR_INVAL);
    cr_assert(strstr(err_msg(), "max_slots"), "%s", err_msg());
    cr_assert_eq(kv_create(&e, m, 1, 0), ERR_INVAL);
    cr_assert(strstr(err_msg(), "max_step_tokens"), "%s", err_msg());
    cr_assert_null(e, "*out is untouched on failure");
    gpt_destroy(m);
}
