// optim.c: AdamW over the parameter slab, view by view so that weight decay follows the view's
// decay flag; the per-element update is ops_adamw_step. Trainer thread only.
#include "train/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/base/err.h"
#include "train/ops.h"

struct optim_adamw {
    size_t n;
    int t;
    float *m, *v;
};

int optim_create(optim_adamw **out, size_t n) {
    optim_adamw *o = xcalloc(1, sizeof *o);
    o->n = n;
    o->m = xalloc_aligned(n * sizeof(float));
    o->v = xalloc_aligned(n * sizeof(float));
    ops_zero(o->m, n);
    ops_zero(o->v, n);
    *out = o;
    return ERR_OK;
}

void optim_destroy(optim_adamw *o) {
    if (!o) return;
    free(o->m);
    free(o->v);
    free(o);
}

float *optim_m(optim_adamw *o) { return o->m; }
float *optim_v(optim_adamw *o) { return o->v; }
int optim_step_count(const optim_adamw *o) { return o->t; }
void optim_set_step_count(optim_adamw *o, int t) { o->t = t; }

float optim_grad_norm(const float *grads, size_t n) { return (float)sqrt(ops_sumsq(grads, n)); }

float optim_clip_scale(float norm, float max_norm) {
    return (max_norm > 0 && norm > max_norm) ? max_norm / (norm + 1e-6f) : 1.0f;
}

float optim_clip_grads(float *grads, size_t n, float max_norm) {
    float norm = optim_grad_norm(grads, n);
    float s = optim_clip_scale(norm, max_norm);
    if (s != 1.0f) ops_scale(grads, s, n);
    return norm;
}

void optim_step(optim_adamw *o, gpt_model *m, const cfg_train *tc, float lr, float gscale) {
    int nv;
    const gpt_view *views = gpt_views(m, &nv);
    float *p = gpt_params(m), *g = gpt_grads(m);
    ASSERT(g && gpt_n_params(m) == o->n);
    o->t++;
    for (int i = 0; i < nv; i++) {
        const gpt_view *v = &views[i];
        ops_adamw_step(p + v->offset, g + v->offset, o->m + v->offset, o->v + v->offset, v->count,
                       lr, tc->beta1, tc->beta2, tc->eps, v->decay ? tc->weight_decay : 0.0f, o->t,
                       gscale);
    }
}

float optim_lr(const cfg_train *tc, int step) {
    int decay_iters = tc->lr_decay_iters ? tc->lr_decay_iters : tc->max_iters;
    if (step < tc->warmup_iters)
        return tc->learning_rate * (float)(step + 1) / (float)tc->warmup_iters;
    if (step >= decay_iters) return tc->min_lr;
    double ratio = (double)(step - tc->warmup_iters) / (double)(decay_iters - tc->warmup_iters);
    double coeff = 0.5 * (1.0 + cos(M_PI * ratio));
    return (float)(tc->min_lr + coeff * (tc->learning_rate - tc->min_lr));
}
