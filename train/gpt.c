// gpt.c: GPT-2 forward and backward over one parameter slab with named views (the llm.c layout,
// nanoGPT names). Invariant: every buffer is allocated in gpt_create; forward/backward only
// write into preallocated slabs. Called from the trainer thread; kernels use OpenMP inside.
//
// Per layer l, with N = B*T rows (shapes for the largest batch, max_B*block_size):
//   res[l] (N,C) --ln_1--> ln1 (N,C) --c_attn--> qkv (N,3C) --attention--> atty (N,C)
//   res2 = res[l] + c_proj(atty);  ln2 = ln_2(res2);  fch = c_fc(ln2) (N,4C);  fcg = gelu(fch)
//   res[l+1] = res2 + mlp.c_proj(fcg)
// then lnf = ln_f(res[L]) and logits = lnf @ wte^T (N,V), the tied lm_head.
#include "train/gpt.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "train/base/ckdir.h"
#include "train/base/err.h"
#include "train/base/rng.h"
#include "train/ops.h"

// Parameter tensors of one block, in nanoGPT state-dict order.
enum {
    P_LN1W,
    P_LN1B,
    P_QKVW,
    P_QKVB,
    P_ATTPROJW,
    P_ATTPROJB,
    P_LN2W,
    P_LN2B,
    P_FCW,
    P_FCB,
    P_FCPROJW,
    P_FCPROJB,
    P_PER_LAYER
};

static const char *layer_names[P_PER_LAYER] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};

// Activations saved by the forward pass for one layer.
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; // (N,C), (N), (N)
    float *qkv;                       // (N,3C)
    float *att;                       // (B,NH,T,T) softmax probabilities
    float *atty;                      // (N,C) attention output, heads concatenated
    float *res2;                      // (N,C) residual after attention
    float *ln2, *ln2_mean, *ln2_rstd; // (N,C), (N), (N)
    float *fch, *fcg;                 // (N,4C) pre- and post-GELU
    float *res_out;                   // (N,C) residual after the MLP = next layer's input
} layer_acts;

struct gpt_model {
    cfg_model cfg;
    int max_B, train;
    size_t n_params;
    int n_views;
    gpt_view *views;
    float *params, *grads;
    float *acts;                      // activation slab
    float *bwd;                       // backward scratch slab
    float *encoded;                   // (N,C) embeddings = residual input of layer 0
    layer_acts *layers;               // L entries
    float *lnf, *lnf_mean, *lnf_rstd; // (N,C), (N), (N)
    float *logits;                    // (N,V) logits, then probabilities
    float *losses;                    // (N)
    // backward scratch, reused by every layer
    float *dres, *dln, *dqkv, *datty, *dfch, *dfcg, *datt;
    const int32_t *last_x, *last_y;
    int last_B, last_T;
    float last_loss;
};

static void add_view(gpt_model *m, const char *name, int ndim, size_t d0, size_t d1) {
    gpt_view *v = &m->views[m->n_views++];
    snprintf(v->name, sizeof v->name, "%s", name);
    v->ndim = ndim;
    v->shape[0] = d0;
    v->shape[1] = ndim > 1 ? d1 : 1;
    v->count = d0 * v->shape[1];
    v->offset = m->n_params;
    v->decay = ndim >= 2;
    m->n_params += v->count;
}

// layer_shape gives tensor p of a block of width C: d0 rows and d1 columns (0: a vector).
static void layer_shape(int p, size_t C, size_t *d0, size_t *d1) {
    static const size_t rows[P_PER_LAYER] = {1, 1, 3, 3, 1, 1, 1, 1, 4, 4, 1, 1};
    static const size_t cols[P_PER_LAYER] = {0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 0};
    *d0 = rows[p] * C;
    *d1 = cols[p] * C;
}

// build_views lays out the parameter slab in nanoGPT state-dict order.
static void build_views(gpt_model *m) {
    size_t C = (size_t)m->cfg.n_embd, L = (size_t)m->cfg.n_layer;
    m->views = xcalloc(2 + L * P_PER_LAYER + 2, sizeof(gpt_view));
    add_view(m, "transformer.wte.weight", 2, (size_t)m->cfg.vocab_size, C);
    add_view(m, "transformer.wpe.weight", 2, (size_t)m->cfg.block_size, C);
    for (size_t l = 0; l < L; l++)
        for (int p = 0; p < P_PER_LAYER; p++) {
            char name[GPT_NAME_MAX];
            size_t d0, d1;
            snprintf(name, sizeof name, "transformer.h.%zu.%s", l, layer_names[p]);
            layer_shape(p, C, &d0, &d1);
            add_view(m, name, d1 ? 2 : 1, d0, d1);
        }
    add_view(m, "transformer.ln_f.weight", 1, C, 0);
    add_view(m, "transformer.ln_f.bias", 1, C, 0);
}

// params_of returns the parameter count of mc as build_views lays it out, in double: a config
// read from a file may not fit in size_t (L, C, T and V up to 2^24 each).
static double params_of(const cfg_model *mc) {
    double C = mc->n_embd, per_layer = 0;
    for (int p = 0; p < P_PER_LAYER; p++) {
        size_t d0, d1;
        layer_shape(p, 1, &d0, &d1); // the shape in units of C
        per_layer += (double)d0 * C * (d1 ? (double)d1 * C : 1);
    }
    return ((double)mc->vocab_size + mc->block_size + 2) * C + (double)mc->n_layer * per_layer;
}

// lp returns parameter tensor p of layer l inside slab (params or grads).
static inline float *lp(const gpt_model *m, float *slab, int l, int p) {
    return slab + m->views[2 + l * P_PER_LAYER + p].offset;
}
#define WTE(m, s)  ((s) + (m)->views[0].offset)
#define WPE(m, s)  ((s) + (m)->views[1].offset)
#define LNFW(m, s) ((s) + (m)->views[(m)->n_views - 2].offset)
#define LNFB(m, s) ((s) + (m)->views[(m)->n_views - 1].offset)

// carve hands out consecutive regions of a slab.
static float *carve(float **cur, size_t n) {
    float *p = *cur;
    *cur += (n + 15) & ~(size_t)15; // keep 64-byte alignment
    return p;
}

static size_t padded(size_t n) { return (n + 15) & ~(size_t)15; }

int gpt_create(gpt_model **out, const cfg_model *mc, int max_B, int train) {
    if (mc->vocab_size <= 0 || mc->n_layer <= 0 || mc->n_head <= 0 || mc->n_embd <= 0 ||
        mc->block_size <= 0 || max_B <= 0)
        return err_set(ERR_INVAL, "gpt: invalid model config (L=%d NH=%d C=%d T=%d V=%d B=%d)",
                       mc->n_layer, mc->n_head, mc->n_embd, mc->block_size, mc->vocab_size, max_B);
    if (mc->n_embd % mc->n_head)
        return err_set(ERR_INVAL, "gpt: n_embd %d is not divisible by n_head %d", mc->n_embd,
                       mc->n_head);
    gpt_model *m = xcalloc(1, sizeof *m);
    m->cfg = *mc;
    m->max_B = max_B;
    m->train = train;
    build_views(m);
    ASSERT((double)m->n_params == params_of(mc)); // the count gpt_load checks files against
    m->params = xalloc_aligned(m->n_params * sizeof(float));
    memset(m->params, 0, m->n_params * sizeof(float));
    if (train) {
        m->grads = xalloc_aligned(m->n_params * sizeof(float));
        memset(m->grads, 0, m->n_params * sizeof(float));
    }

    size_t L = (size_t)mc->n_layer, C = (size_t)mc->n_embd, V = (size_t)mc->vocab_size;
    size_t T = (size_t)mc->block_size, NH = (size_t)mc->n_head, N = (size_t)max_B * T;
    size_t att = (size_t)max_B * NH * T * T;
    size_t per_layer = 2 * padded(N * C) + 4 * padded(N) + padded(3 * N * C) + padded(att) +
                       3 * padded(N * C) + 2 * padded(4 * N * C);
    size_t total = padded(N * C) + (train ? L : 1) * per_layer + padded(N * C) + 2 * padded(N) +
                   padded(N * V) + padded(N);
    m->acts = xalloc_aligned(total * sizeof(float));
    memset(m->acts, 0, total * sizeof(float));
    float *cur = m->acts;
    m->encoded = carve(&cur, N * C);
    m->layers = xcalloc(L, sizeof(layer_acts));
    // Training keeps every layer's activations for the backward pass. Inference needs only one
    // layer's worth at a time: all layers share those buffers (res_out is read as the next
    // layer's input before it is overwritten), which cuts activation memory by a factor of L.
    for (size_t l = 0; l < L; l++) {
        layer_acts *a = &m->layers[l];
        if (!train && l > 0) {
            *a = m->layers[0];
            continue;
        }
        a->ln1 = carve(&cur, N * C);
        a->ln1_mean = carve(&cur, N);
        a->ln1_rstd = carve(&cur, N);
        a->qkv = carve(&cur, 3 * N * C);
        a->att = carve(&cur, att);
        a->atty = carve(&cur, N * C);
        a->res2 = carve(&cur, N * C);
        a->ln2 = carve(&cur, N * C);
        a->ln2_mean = carve(&cur, N);
        a->ln2_rstd = carve(&cur, N);
        a->fch = carve(&cur, 4 * N * C);
        a->fcg = carve(&cur, 4 * N * C);
        a->res_out = carve(&cur, N * C);
    }
    m->lnf = carve(&cur, N * C);
    m->lnf_mean = carve(&cur, N);
    m->lnf_rstd = carve(&cur, N);
    m->logits = carve(&cur, N * V);
    m->losses = carve(&cur, N);
    ASSERT((size_t)(cur - m->acts) <= total);

    if (train) {
        size_t btotal = 3 * padded(N * C) + padded(3 * N * C) + 2 * padded(4 * N * C) + padded(att);
        m->bwd = xalloc_aligned(btotal * sizeof(float));
        memset(m->bwd, 0, btotal * sizeof(float));
        cur = m->bwd;
        m->dres = carve(&cur, N * C);
        m->dln = carve(&cur, N * C);
        m->datty = carve(&cur, N * C);
        m->dqkv = carve(&cur, 3 * N * C);
        m->dfch = carve(&cur, 4 * N * C);
        m->dfcg = carve(&cur, 4 * N * C);
        m->datt = carve(&cur, att);
        ASSERT((size_t)(cur - m->bwd) <= btotal);
    }
    *out = m;
    return ERR_OK;
}

void gpt_destroy(gpt_model *m) {
    if (!m) return;
    free(m->views);
    free(m->params);
    free(m->grads);
    free(m->acts);
    free(m->bwd);
    free(m->layers);
    free(m);
}

void gpt_init_params(gpt_model *m, uint64_t seed) {
    float proj_std = 0.02f / sqrtf(2.0f * (float)m->cfg.n_layer);
    for (int i = 0; i < m->n_views; i++) {
        const gpt_view *v = &m->views[i];
        float *p = m->params + v->offset;
        const char *suffix = strrchr(v->name, '.'); // ".weight" or ".bias"
        int is_ln = strstr(v->name, ".ln_") != NULL || strstr(v->name, "ln_f") != NULL;
        if (v->ndim == 1) {
            float val = (is_ln && strcmp(suffix, ".weight") == 0) ? 1.0f : 0.0f;
            for (size_t j = 0; j < v->count; j++)
                p[j] = val;
            continue;
        }
        float std = strstr(v->name, "c_proj.weight") ? proj_std : 0.02f;
        // Each tensor gets its own stream keyed by (seed, view index) so adding views later
        // does not shift the others' values.
        uint64_t key = rng_hash(seed ^ rng_hash((uint64_t)i + 1));
#pragma omp parallel for schedule(static)
        for (size_t j = 0; j < v->count; j++)
            p[j] = std * rng_normal(key, j);
    }
}

const cfg_model *gpt_config(const gpt_model *m) { return &m->cfg; }
size_t gpt_n_params(const gpt_model *m) { return m->n_params; }
float *gpt_params(gpt_model *m) { return m->params; }
float *gpt_grads(gpt_model *m) { return m->grads; }
const float *gpt_logits(const gpt_model *m) { return m->logits; }

const gpt_view *gpt_views(const gpt_model *m, int *n) {
    *n = m->n_views;
    return m->views;
}

const gpt_view *gpt_find_view(const gpt_model *m, const char *name) {
    for (int i = 0; i < m->n_views; i++)
        if (strcmp(m->views[i].name, name) == 0) return &m->views[i];
    return NULL;
}

float gpt_forward(gpt_model *m, const int32_t *x, const int32_t *y, int B, int T) {
    ASSERT(B > 0 && B <= m->max_B && T > 0 && T <= m->cfg.block_size);
    int C = m->cfg.n_embd, V = m->cfg.vocab_size, NH = m->cfg.n_head, N = B * T;
    float *P = m->params;
    ops_encoder_forward(m->encoded, x, WTE(m, P), WPE(m, P), B, T, C);
    const float *res = m->encoded;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        layer_acts *a = &m->layers[l];
        ops_layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, res, lp(m, P, l, P_LN1W),
                              lp(m, P, l, P_LN1B), N, C);
        ops_matmul_forward(a->qkv, a->ln1, lp(m, P, l, P_QKVW), lp(m, P, l, P_QKVB), N, C, 3 * C);
        ops_attention_forward(a->atty, a->att, a->qkv, B, T, C, NH);
        ops_matmul_forward(a->res2, a->atty, lp(m, P, l, P_ATTPROJW), lp(m, P, l, P_ATTPROJB), N, C,
                           C);
        ops_add(a->res2, a->res2, res, (size_t)N * C);
        ops_layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, lp(m, P, l, P_LN2W),
                              lp(m, P, l, P_LN2B), N, C);
        ops_matmul_forward(a->fch, a->ln2, lp(m, P, l, P_FCW), lp(m, P, l, P_FCB), N, C, 4 * C);
        ops_gelu_forward(a->fcg, a->fch, (size_t)N * 4 * C);
        ops_matmul_forward(a->res_out, a->fcg, lp(m, P, l, P_FCPROJW), lp(m, P, l, P_FCPROJB), N,
                           4 * C, C);
        ops_add(a->res_out, a->res_out, a->res2, (size_t)N * C);
        res = a->res_out;
    }
    ops_layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, res, LNFW(m, P), LNFB(m, P), N, C);
    ops_matmul_forward(m->logits, m->lnf, WTE(m, P), NULL, N, C, V);
    m->last_x = x;
    m->last_y = y;
    m->last_B = B;
    m->last_T = T;
    m->last_loss = 0;
    if (!y) return 0;
    ops_softmax_xent_forward(m->losses, m->logits, m->logits, y, N, V);
    double sum = 0;
    int counted = 0;
    for (int i = 0; i < N; i++)
        if (y[i] >= 0) {
            sum += m->losses[i];
            counted++;
        }
    m->last_loss = counted ? (float)(sum / counted) : 0.0f;
    return m->last_loss;
}

void gpt_zero_grad(gpt_model *m) {
    ASSERT(m->grads);
    ops_zero(m->grads, m->n_params);
}

void gpt_backward(gpt_model *m, float scale) {
    ASSERT(m->train && m->last_y);
    int B = m->last_B, T = m->last_T, N = B * T;
    int C = m->cfg.n_embd, V = m->cfg.vocab_size, NH = m->cfg.n_head, L = m->cfg.n_layer;
    size_t NC = (size_t)N * C;
    float *P = m->params, *G = m->grads;
    const int32_t *y = m->last_y;
    int counted = 0;
    for (int i = 0; i < N; i++)
        counted += y[i] >= 0;
    float dscale = counted ? scale / (float)counted : 0.0f;

    // d(mean loss)/d(logits), in place over the probabilities.
    ops_softmax_xent_backward(m->logits, m->logits, y, dscale, N, V);
    // lm_head (tied): logits = lnf @ wte^T
    ops_zero(m->dln, NC);
    ops_matmul_backward(m->dln, WTE(m, G), NULL, m->logits, m->lnf, WTE(m, P), N, C, V);
    ops_zero(m->dres, NC);
    const float *res_last = L > 0 ? m->layers[L - 1].res_out : m->encoded;
    ops_layernorm_backward(m->dres, LNFW(m, G), LNFB(m, G), m->dln, res_last, LNFW(m, P),
                           m->lnf_mean, m->lnf_rstd, N, C);
    // m->dres now holds d/d(res_out of the last layer); walk the layers backwards. The residual
    // connections mean dres passes through each block unchanged plus the branch contributions.
    for (int l = L - 1; l >= 0; l--) {
        layer_acts *a = &m->layers[l];
        const float *res_in = l > 0 ? m->layers[l - 1].res_out : m->encoded;
        // MLP branch: res_out = res2 + c_proj(gelu(c_fc(ln_2(res2))))
        ops_zero(m->dfcg, 4 * NC);
        ops_matmul_backward(m->dfcg, lp(m, G, l, P_FCPROJW), lp(m, G, l, P_FCPROJB), m->dres,
                            a->fcg, lp(m, P, l, P_FCPROJW), N, 4 * C, C);
        ops_zero(m->dfch, 4 * NC);
        ops_gelu_backward(m->dfch, a->fch, m->dfcg, 4 * NC);
        ops_zero(m->dln, NC);
        ops_matmul_backward(m->dln, lp(m, G, l, P_FCW), lp(m, G, l, P_FCB), m->dfch, a->ln2,
                            lp(m, P, l, P_FCW), N, C, 4 * C);
        ops_layernorm_backward(m->dres, lp(m, G, l, P_LN2W), lp(m, G, l, P_LN2B), m->dln, a->res2,
                               lp(m, P, l, P_LN2W), a->ln2_mean, a->ln2_rstd, N, C);
        // attention branch: res2 = res_in + c_proj(attn(c_attn(ln_1(res_in))))
        ops_zero(m->datty, NC);
        ops_matmul_backward(m->datty, lp(m, G, l, P_ATTPROJW), lp(m, G, l, P_ATTPROJB), m->dres,
                            a->atty, lp(m, P, l, P_ATTPROJW), N, C, C);
        ops_zero(m->dqkv, 3 * NC);
        ops_attention_backward(m->dqkv, m->datt, m->datty, a->qkv, a->att, B, T, C, NH);
        ops_zero(m->dln, NC);
        ops_matmul_backward(m->dln, lp(m, G, l, P_QKVW), lp(m, G, l, P_QKVB), m->dqkv, a->ln1,
                            lp(m, P, l, P_QKVW), N, C, 3 * C);
        ops_layernorm_backward(m->dres, lp(m, G, l, P_LN1W), lp(m, G, l, P_LN1B), m->dln, res_in,
                               lp(m, P, l, P_LN1W), a->ln1_mean, a->ln1_rstd, N, C);
    }
    ops_encoder_backward(WTE(m, G), WPE(m, G), m->dres, m->last_x, B, T, C);
}

double gpt_flops_per_token(const gpt_model *m, int T) {
    double N = (double)(m->n_params - m->views[1].count);
    return 6.0 * N + 12.0 * m->cfg.n_layer * m->cfg.n_embd * (double)T;
}

// slab_io writes (w non-NULL) or reads (r non-NULL) one dataset per view, named prefix + name.
static int slab_io(const gpt_model *m, const char *prefix, float *slab, ckpt_writer *w,
                   ckpt_reader *r) {
    for (int i = 0; i < m->n_views; i++) {
        const gpt_view *v = &m->views[i];
        char name[GPT_NAME_MAX + 64];
        snprintf(name, sizeof name, "%s%s", prefix, v->name);
        int rc = w ? ckpt_write_tensor(w, name, slab + v->offset, v->ndim, v->shape)
                   : ckpt_read_tensor(r, name, slab + v->offset, v->ndim, v->shape);
        if (rc) return rc;
    }
    return ERR_OK;
}

int gpt_write_slab(const gpt_model *m, ckpt_writer *w, const char *prefix, const float *slab) {
    return slab_io(m, prefix, (float *)slab, w, NULL); // only read through w
}

int gpt_read_slab(const gpt_model *m, ckpt_reader *r, const char *prefix, float *slab) {
    return slab_io(m, prefix, slab, NULL, r);
}

static const char *cfg_attr_names[5] = {"n_layer", "n_head", "n_embd", "block_size", "vocab_size"};

int gpt_write_config(const gpt_model *m, ckpt_writer *w) {
    const int vals[5] = {m->cfg.n_layer, m->cfg.n_head, m->cfg.n_embd, m->cfg.block_size,
                         m->cfg.vocab_size};
    for (int i = 0; i < 5; i++) {
        int rc = ckpt_write_attr_i64(w, cfg_attr_names[i], vals[i]);
        if (rc) return rc;
    }
    return ERR_OK;
}

int gpt_read_config(ckpt_reader *r, cfg_model *mc) {
    int *dst[5] = {&mc->n_layer, &mc->n_head, &mc->n_embd, &mc->block_size, &mc->vocab_size};
    for (int i = 0; i < 5; i++) {
        int64_t v;
        int rc = ckpt_read_attr_i64(r, cfg_attr_names[i], &v);
        if (rc) return rc;
        if (v <= 0 || v > (1 << 24))
            return err_set(ERR_FORMAT, "checkpoint attribute %s = %lld is out of range",
                           cfg_attr_names[i], (long long)v);
        *dst[i] = (int)v;
    }
    if (mc->n_embd % mc->n_head)
        return err_set(ERR_FORMAT, "checkpoint n_embd %d is not divisible by n_head %d", mc->n_embd,
                       mc->n_head);
    return ERR_OK;
}

// check_weights_fit refuses a checkpoint whose attributes declare more float32 weights than the
// file could hold, before anything is allocated for them: ckpt_ stores every tensor whole and
// uncompressed, so a real checkpoint has at least 4 bytes per parameter (found by
// tests/fuzz/fuzz_ckpt: a flipped n_layer of 2^24 made gpt_create ask for tens of GB).
static int check_weights_fit(const char *file, const cfg_model *mc) {
    struct stat st;
    if (stat(file, &st) != 0) return err_set(ERR_IO, "%s: %s", file, strerror(errno));
    double need = 4 * params_of(mc);
    if (need > (double)st.st_size)
        return err_set(ERR_FORMAT,
                       "%s: the attributes declare a model of %.0f parameters (L=%d NH=%d C=%d "
                       "T=%d V=%d), %.0f bytes of float32 weights, but the file has %lld bytes",
                       file, need / 4, mc->n_layer, mc->n_head, mc->n_embd, mc->block_size,
                       mc->vocab_size, need, (long long)st.st_size);
    return ERR_OK;
}

int gpt_load(gpt_model **out, const char *path, int max_B, int train, char **tok_spec,
             int64_t *step) {
    char *file = NULL;
    int rc = ckdir_resolve(path, &file);
    if (rc) return rc;
    ckpt_reader *r = NULL;
    gpt_model *m = NULL;
    char *spec = NULL;
    int64_t st = 0;
    cfg_model mc;
    rc = ckpt_reader_open(&r, file);
    if (!rc) rc = gpt_read_config(r, &mc);
    if (!rc) rc = check_weights_fit(file, &mc);
    if (!rc) rc = gpt_create(&m, &mc, max_B, train);
    if (!rc) rc = gpt_read_slab(m, r, "model/", m->params);
    if (!rc && tok_spec) rc = ckpt_read_attr_str(r, "tokenizer", &spec);
    if (!rc && step) rc = ckpt_read_attr_i64(r, "step", &st);
    ckpt_reader_close(r);
    if (rc) {
        if (!strstr(err_msg(), file)) { // make sure the message names the file
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", err_msg());
            err_set(rc, "%s: %s", file, msg);
        }
        gpt_destroy(m);
        free(spec);
        free(file);
        return rc;
    }
    free(file);
    *out = m;
    if (tok_spec) *tok_spec = spec;
    if (step) *step = st;
    return ERR_OK;
}
