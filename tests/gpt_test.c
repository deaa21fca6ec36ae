// gpt_test.c: the whole model. (1) The PyTorch cross-check against tests/fixtures/tiny_ref.h5
// (written by scripts/make-fixtures): logits, loss, every gradient, and the parameters after 3
// AdamW steps with clipping. (2) A finite-difference check of the full backward pass on a tiny
// config. (3) Determinism and the parameter table. (4) gpt_load refusing a file too small for
// the model its attributes declare.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/ckpt.h"
#include "train/gpt.h"
#include "train/ops.h"
#include "train/optim.h"

TestSuite(gpt, .timeout = 60);

#define FIXTURE "tests/fixtures/tiny_ref.h5"

typedef struct {
    ckpt_reader *r;
    gpt_model *m;
    int B, T, V;
    int32_t *x, *y;
} fixture;

static int64_t attr_i(ckpt_reader *r, const char *name) {
    int64_t v = 0;
    cr_assert_eq(ckpt_read_attr_i64(r, name, &v), ERR_OK, "%s", err_msg());
    return v;
}

static double attr_f(ckpt_reader *r, const char *name) {
    double v = 0;
    cr_assert_eq(ckpt_read_attr_f64(r, name, &v), ERR_OK, "%s", err_msg());
    return v;
}

static void fixture_open(fixture *f) {
    ops_init(0);
    cr_assert_eq(ckpt_reader_open(&f->r, FIXTURE), ERR_OK, "%s (run make fixtures)", err_msg());
    cfg_model mc;
    cr_assert_eq(gpt_read_config(f->r, &mc), ERR_OK, "%s", err_msg());
    f->B = (int)attr_i(f->r, "B");
    f->T = (int)attr_i(f->r, "T");
    f->V = mc.vocab_size;
    cr_assert_eq(gpt_create(&f->m, &mc, f->B, 1), ERR_OK, "%s", err_msg());
    cr_assert_eq(gpt_read_slab(f->m, f->r, "model/", gpt_params(f->m)), ERR_OK, "%s", err_msg());
    size_t n = (size_t)f->B * f->T, shape[2] = {(size_t)f->B, (size_t)f->T};
    float *tmp = malloc(n * sizeof(float));
    f->x = malloc(n * sizeof(int32_t));
    f->y = malloc(n * sizeof(int32_t));
    cr_assert_eq(ckpt_read_tensor(f->r, "tokens/x", tmp, 2, shape), ERR_OK, "%s", err_msg());
    for (size_t i = 0; i < n; i++)
        f->x[i] = (int32_t)tmp[i];
    cr_assert_eq(ckpt_read_tensor(f->r, "tokens/y", tmp, 2, shape), ERR_OK, "%s", err_msg());
    for (size_t i = 0; i < n; i++)
        f->y[i] = (int32_t)tmp[i];
    free(tmp);
}

static void fixture_close(fixture *f) {
    ckpt_reader_close(f->r);
    gpt_destroy(f->m);
    free(f->x);
    free(f->y);
}

// max_abs_diff_slab compares a model-shaped slab to the fixture's datasets under prefix and
// returns the largest absolute difference, reporting the tensor where it occurs.
// Entries where mask is non-NULL and mask[i] is 0 are left out (see the AdamW test).
// If rms is non-NULL it receives the root-mean-square difference over the compared entries and
// *over the number of entries that differ by more than 1e-5.
static double max_abs_diff_slab(fixture *f, const char *prefix, const float *slab, char *where,
                                const unsigned char *mask, double *rms, size_t *over) {
    float *ref = malloc(gpt_n_params(f->m) * sizeof(float));
    cr_assert_eq(gpt_read_slab(f->m, f->r, prefix, ref), ERR_OK, "%s", err_msg());
    int nv;
    const gpt_view *v = gpt_views(f->m, &nv);
    double worst = 0, sum2 = 0;
    size_t counted = 0;
    for (int i = 0; i < nv; i++)
        for (size_t j = 0; j < v[i].count; j++) {
            if (mask && !mask[v[i].offset + j]) continue;
            double d = fabs((double)slab[v[i].offset + j] - ref[v[i].offset + j]);
            sum2 += d * d;
            counted++;
            if (over && d > 1e-5) (*over)++;
            if (d > worst) {
                worst = d;
                sprintf(where, "%s[%zu] got %g want %g", v[i].name, j, slab[v[i].offset + j],
                        ref[v[i].offset + j]);
            }
        }
    free(ref);
    if (rms) *rms = sqrt(sum2 / (double)(counted ? counted : 1));
    return worst;
}

Test(gpt, forward_matches_pytorch_logits_and_loss) {
    fixture f;
    fixture_open(&f);
    float loss = gpt_forward(f.m, f.x, NULL, f.B, f.T);
    size_t n = (size_t)f.B * f.T * f.V, shape[3] = {(size_t)f.B, (size_t)f.T, (size_t)f.V};
    float *ref = malloc(n * sizeof(float));
    cr_assert_eq(ckpt_read_tensor(f.r, "logits", ref, 3, shape), ERR_OK, "%s", err_msg());
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs(gpt_logits(f.m)[i] - ref[i]));
    cr_assert(worst <= 1e-4, "logits max abs error %g", worst);
    float ref_loss;
    size_t one = 1;
    cr_assert_eq(ckpt_read_tensor(f.r, "loss", &ref_loss, 1, &one), ERR_OK, "%s", err_msg());
    loss = gpt_forward(f.m, f.x, f.y, f.B, f.T);
    double rel = fabs(loss - ref_loss) / fabs(ref_loss);
    cr_assert(rel <= 1e-5, "loss %.8f vs pytorch %.8f (rel %g)", loss, ref_loss, rel);
    free(ref);
    fixture_close(&f);
}

Test(gpt, every_gradient_matches_pytorch) {
    fixture f;
    fixture_open(&f);
    gpt_zero_grad(f.m);
    gpt_forward(f.m, f.x, f.y, f.B, f.T);
    gpt_backward(f.m, 1.0f);
    char where[256] = "";
    double worst = max_abs_diff_slab(&f, "grads/", gpt_grads(f.m), where, NULL, NULL, NULL);
    cr_assert(worst <= 1e-4, "gradient max abs error %g at %s", worst, where);
    float norm = optim_clip_grads(gpt_grads(f.m), gpt_n_params(f.m), 0);
    double ref_norm = attr_f(f.r, "grad_norm0");
    cr_assert(fabs(norm - ref_norm) <= 1e-5 * ref_norm, "grad norm %g vs %g", norm, ref_norm);
    fixture_close(&f);
}

Test(gpt, three_adamw_steps_with_clipping_match_pytorch) {
    fixture f;
    fixture_open(&f);
    cfg_train tc;
    memset(&tc, 0, sizeof tc);
    tc.beta1 = (float)attr_f(f.r, "beta1");
    tc.beta2 = (float)attr_f(f.r, "beta2");
    tc.eps = (float)attr_f(f.r, "eps");
    tc.weight_decay = (float)attr_f(f.r, "weight_decay");
    tc.grad_clip = (float)attr_f(f.r, "grad_clip");
    float lr = (float)attr_f(f.r, "lr");
    float ref_losses[3];
    size_t three = 3;
    cr_assert_eq(ckpt_read_tensor(f.r, "losses3", ref_losses, 1, &three), ERR_OK, "%s", err_msg());
    optim_adamw *o;
    optim_create(&o, gpt_n_params(f.m));
    for (int s = 0; s < 3; s++) {
        gpt_zero_grad(f.m);
        float loss = gpt_forward(f.m, f.x, f.y, f.B, f.T);
        cr_assert(fabs(loss - ref_losses[s]) <= 1e-5 * fabs(ref_losses[s]), "step %d loss %g vs %g",
                  s, loss, ref_losses[s]);
        gpt_backward(f.m, 1.0f);
        // the trainer's path: clipping folded into the AdamW pass
        float norm = optim_grad_norm(gpt_grads(f.m), gpt_n_params(f.m));
        if (s == 0) cr_assert(norm > tc.grad_clip, "the fixture must exercise clipping");
        optim_step(o, f.m, &tc, lr, optim_clip_scale(norm, tc.grad_clip));
    }
    char where[256] = "";
    // AdamW divides by sqrt(v), so an entry whose gradient is at the level of float rounding
    // (|g| ~ 1e-9 .. 1e-7 against typical 1e-2) moves by ~lr in a direction set by that noise:
    // both implementations are right and still disagree there. Examples: the key bias, whose
    // exact gradient is 0 (adding b_k shifts a whole softmax row by q.b_k), and weights whose
    // gradient happens to be ~1e-8. Entries with a step-1 reference gradient below 1e-6 are left
    // out and counted; they must be rare.
    size_t n = gpt_n_params(f.m), excluded = 0;
    float *g0 = malloc(n * sizeof(float));
    unsigned char *mask = malloc(n);
    cr_assert_eq(gpt_read_slab(f.m, f.r, "grads/", g0), ERR_OK, "%s", err_msg());
    for (size_t i = 0; i < n; i++) {
        mask[i] = fabsf(g0[i]) >= 1e-6f;
        excluded += !mask[i];
    }
    double rms = 0;
    size_t over = 0;
    double worst = max_abs_diff_slab(&f, "after3/", gpt_params(f.m), where, mask, &rms, &over);
    // The same amplification, weaker, reaches entries whose gradient nears zero at step 2 or 3:
    // scripts/make-fixtures measures PyTorch float32 against its own float64 rerun drifting by
    // 6.9e-4 on single entries. So single entries get 2e-3, while the bulk is held to 1e-5: at
    // most 1% of entries (0.3% here) may exceed it, and the RMS error must stay below 5e-6. A real
    // bug breaks both (dropping weight decay shifts 0.1-sized weights by 3e-4 over 3 steps; a wrong
    // bias correction moves every entry by ~lr).
    cr_assert(worst <= 2e-3, "parameters after 3 steps: max abs error %g at %s", worst, where);
    cr_assert(over * 100 < n, "%zu of %zu entries differ by more than 1e-5", over, n);
    cr_assert(rms <= 5e-6, "parameters after 3 steps: rms error %g", rms);
    cr_assert(excluded * 100 < n, "%zu of %zu entries have a negligible gradient", excluded, n);
    free(g0);
    free(mask);
    optim_destroy(o);
    fixture_close(&f);
}

// A tiny random model for the finite-difference check: non-default weights so that every term
// (LayerNorm gains and biases, attention, GELU curvature) contributes.
static gpt_model *tiny_model(int B, int32_t **x, int32_t **y) {
    cfg_model mc = {.n_layer = 2, .n_head = 2, .n_embd = 8, .block_size = 6, .vocab_size = 11};
    gpt_model *m;
    cr_assert_eq(gpt_create(&m, &mc, B, 1), ERR_OK, "%s", err_msg());
    tu_rand_fill(gpt_params(m), gpt_n_params(m), 7, -0.5f, 0.5f);
    int nv;
    const gpt_view *v = gpt_views(m, &nv);
    for (int i = 0; i < nv; i++) // LayerNorm gains around 1
        if (strstr(v[i].name, "ln_") && strstr(v[i].name, "weight"))
            for (size_t j = 0; j < v[i].count; j++)
                gpt_params(m)[v[i].offset + j] += 1.0f;
    int n = B * mc.block_size;
    *x = malloc(n * sizeof(int32_t));
    *y = malloc(n * sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        (*x)[i] = (i * 7 + 3) % mc.vocab_size;
        (*y)[i] = (i * 5 + 1) % mc.vocab_size;
    }
    return m;
}

Test(gpt, backward_matches_finite_differences_of_the_whole_model) {
    ops_init(1);
    int B = 2, T = 6;
    int32_t *x, *y;
    gpt_model *m = tiny_model(B, &x, &y);
    gpt_zero_grad(m);
    gpt_forward(m, x, y, B, T);
    gpt_backward(m, 1.0f);
    size_t n = gpt_n_params(m);
    float *g = malloc(n * sizeof(float));
    memcpy(g, gpt_grads(m), n * sizeof(float));
    float *p = gpt_params(m);
    // Central differences in float32 with h = 1e-2: truncation O(h^2) ~ 1e-4 relative and loss
    // rounding ~1e-7 * 2.4 / 2h ~ 1e-5 absolute. A dropped term or wrong sign changes gradients
    // by O(|g|), far above the tolerance below.
    double h = 1e-2, err2 = 0, ref2 = 0, worst = 0;
    size_t checked = 0;
    for (size_t i = 0; i < n; i += 3) {
        float keep = p[i];
        p[i] = keep + (float)h;
        double lp = gpt_forward(m, x, y, B, T);
        p[i] = keep - (float)h;
        double lm = gpt_forward(m, x, y, B, T);
        p[i] = keep;
        double fd = (lp - lm) / (2 * h);
        double d = fabs(fd - g[i]);
        err2 += d * d;
        ref2 += fd * fd;
        double tol = 3e-4 + 2e-2 * fabs(fd);
        if (d / tol > worst) worst = d / tol;
        cr_assert(d <= tol, "param %zu: analytic %g vs finite difference %g", i, g[i], fd);
        checked++;
    }
    cr_assert(sqrt(err2 / ref2) < 5e-3, "relative gradient error %g over %zu params",
              sqrt(err2 / ref2), checked);
    free(g);
    free(x);
    free(y);
    gpt_destroy(m);
}

Test(gpt, forward_and_backward_are_deterministic) {
    ops_init(0);
    int B = 2, T = 6;
    int32_t *x, *y;
    gpt_model *m = tiny_model(B, &x, &y);
    size_t n = gpt_n_params(m);
    float *g1 = malloc(n * sizeof(float));
    gpt_zero_grad(m);
    float l1 = gpt_forward(m, x, y, B, T);
    gpt_backward(m, 1.0f);
    memcpy(g1, gpt_grads(m), n * sizeof(float));
    gpt_zero_grad(m);
    float l2 = gpt_forward(m, x, y, B, T);
    gpt_backward(m, 1.0f);
    cr_assert_eq(memcmp(&l1, &l2, sizeof l1), 0);
    cr_assert_eq(memcmp(g1, gpt_grads(m), n * sizeof(float)), 0, "gradients differ between runs");
    free(g1);
    free(x);
    free(y);
    gpt_destroy(m);
}

Test(gpt, parameter_table_uses_nanogpt_names_and_one_contiguous_slab) {
    cfg_model mc = {.n_layer = 3, .n_head = 2, .n_embd = 8, .block_size = 5, .vocab_size = 13};
    gpt_model *m;
    cr_assert_eq(gpt_create(&m, &mc, 1, 0), ERR_OK, "%s", err_msg());
    int nv;
    const gpt_view *v = gpt_views(m, &nv);
    cr_assert_eq(nv, 2 + 3 * 12 + 2);
    cr_assert_str_eq(v[0].name, "transformer.wte.weight");
    cr_assert_eq(v[0].shape[0], 13u);
    cr_assert_str_eq(v[1].name, "transformer.wpe.weight");
    const gpt_view *qkv = gpt_find_view(m, "transformer.h.2.attn.c_attn.weight");
    cr_assert(qkv && qkv->shape[0] == 24 && qkv->shape[1] == 8 && qkv->decay == 1);
    const gpt_view *b = gpt_find_view(m, "transformer.h.0.mlp.c_fc.bias");
    cr_assert(b && b->ndim == 1 && b->count == 32 && b->decay == 0);
    size_t off = 0;
    for (int i = 0; i < nv; i++) { // views tile the slab in order with no gaps
        cr_assert_eq(v[i].offset, off, "%s", v[i].name);
        off += v[i].count;
    }
    cr_assert_eq(off, gpt_n_params(m));
    // GPT-2 124M: 124,439,808 parameters with the tied head
    cfg_model big = {
        .n_layer = 12, .n_head = 12, .n_embd = 768, .block_size = 1024, .vocab_size = 50257};
    gpt_model *g;
    cr_assert_eq(gpt_create(&g, &big, 1, 0), ERR_OK);
    cr_assert_eq(gpt_n_params(g), 124439808u);
    gpt_destroy(g);
    gpt_destroy(m);
}

// Found by tests/fuzz/fuzz_ckpt: a checkpoint of attributes only, with n_layer = 2^24, made
// gpt_load allocate the model (tens of GB) before it found no weights.
Test(gpt, load_refuses_attributes_declaring_more_weights_than_the_file_holds) {
    char *dir = tu_tmpdir("gpt-load");
    char path[512];
    snprintf(path, sizeof path, "%s/big.h5", dir);
    ckpt_writer *w;
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_OK, "%s", err_msg());
    const char *names[5] = {"n_layer", "n_head", "n_embd", "block_size", "vocab_size"};
    const int64_t vals[5] = {1 << 24, 1, 4, 4, 8};
    for (int i = 0; i < 5; i++)
        cr_assert_eq(ckpt_write_attr_i64(w, names[i], vals[i]), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_writer_commit(w), ERR_OK, "%s", err_msg());
    gpt_model *m = NULL;
    cr_assert_eq(gpt_load(&m, path, 1, 0, NULL, NULL), ERR_FORMAT);
    cr_assert(m == NULL);
    cr_assert(strstr(err_msg(), "declare a model of 4093640760 parameters (L=16777216 NH=1 C=4 "
                                "T=4 V=8), 16374563040 bytes of float32 weights, but the file has"),
              "%s", err_msg());
    cr_assert(strstr(err_msg(), path), "%s", err_msg());
    tu_rm_rf(dir);
    free(dir);
}

Test(gpt, initialisation_follows_nanogpt_and_is_seeded) {
    cfg_model mc = {.n_layer = 2, .n_head = 2, .n_embd = 64, .block_size = 16, .vocab_size = 500};
    gpt_model *a, *b;
    gpt_create(&a, &mc, 1, 0);
    gpt_create(&b, &mc, 1, 0);
    gpt_init_params(a, 5);
    gpt_init_params(b, 5);
    cr_assert_eq(memcmp(gpt_params(a), gpt_params(b), gpt_n_params(a) * sizeof(float)), 0);
    const gpt_view *wte = gpt_find_view(a, "transformer.wte.weight");
    double s2 = 0;
    for (size_t j = 0; j < wte->count; j++)
        s2 += (double)gpt_params(a)[j] * gpt_params(a)[j];
    double sd = sqrt(s2 / wte->count);
    cr_assert(fabs(sd - 0.02) < 0.001, "wte std %g", sd);
    const gpt_view *ln = gpt_find_view(a, "transformer.h.1.ln_2.weight");
    cr_assert_float_eq(gpt_params(a)[ln->offset], 1.0f, 0);
    const gpt_view *bias = gpt_find_view(a, "transformer.h.1.attn.c_attn.bias");
    cr_assert_float_eq(gpt_params(a)[bias->offset + 5], 0.0f, 0);
    gpt_init_params(b, 6);
    cr_assert_neq(memcmp(gpt_params(a), gpt_params(b), gpt_n_params(a) * sizeof(float)), 0);
    gpt_destroy(a);
    gpt_destroy(b);
}

Test(gpt, inference_model_with_shared_layer_buffers_gives_identical_logits) {
    ops_init(0);
    int B = 2, T = 6;
    int32_t *x, *y;
    gpt_model *m = tiny_model(B, &x, &y); // training layout: per-layer activations
    gpt_model *inf;
    cr_assert_eq(gpt_create(&inf, gpt_config(m), B, 0), ERR_OK, "%s", err_msg());
    memcpy(gpt_params(inf), gpt_params(m), gpt_n_params(m) * sizeof(float));
    float l1 = gpt_forward(m, x, y, B, T);
    float l2 = gpt_forward(inf, x, y, B, T);
    cr_assert_eq(memcmp(&l1, &l2, sizeof l1), 0, "%g vs %g", l1, l2);
    gpt_forward(m, x, NULL, B, T);
    gpt_forward(inf, x, NULL, B, T);
    size_t n = (size_t)B * T * gpt_config(m)->vocab_size;
    cr_assert_eq(memcmp(gpt_logits(m), gpt_logits(inf), n * sizeof(float)), 0);
    cr_assert_null(gpt_grads(inf));
    free(x);
    free(y);
    gpt_destroy(inf);
    gpt_destroy(m);
}
