// sync.c: chaining two peer-synchronisation modules (SPARTA and DiLoCo together): every hook runs
// the first module's, then the second's; and the list of named metrics. Trainer thread only.
#include "train/sync.h"

#include <stdlib.h>
#include <string.h>

#include "train/base/err.h"

typedef struct {
    train_sync a, b;
} chain;

static int chain_after_step(void *ctx, float *params, size_t n, long *step) {
    chain *c = ctx;
    int rc = c->a.after_step ? c->a.after_step(c->a.ctx, params, n, step) : ERR_OK;
    if (!rc && c->b.after_step) rc = c->b.after_step(c->b.ctx, params, n, step);
    return rc;
}

static int chain_after_backward(void *ctx, float *grads, size_t n, long step) {
    chain *c = ctx;
    int rc = c->a.after_backward ? c->a.after_backward(c->a.ctx, grads, n, step) : ERR_OK;
    if (!rc && c->b.after_backward) rc = c->b.after_backward(c->b.ctx, grads, n, step);
    return rc;
}

static int chain_save(void *ctx, ckpt_writer *w) {
    chain *c = ctx;
    int rc = c->a.save ? c->a.save(c->a.ctx, w) : ERR_OK;
    if (!rc && c->b.save) rc = c->b.save(c->b.ctx, w);
    return rc;
}

static int chain_load(void *ctx, ckpt_reader *r) {
    chain *c = ctx;
    int rc = c->a.load ? c->a.load(c->a.ctx, r) : ERR_OK;
    if (!rc && c->b.load) rc = c->b.load(c->b.ctx, r);
    return rc;
}

static int chain_join(void *ctx, float *params, size_t n, long *step) {
    chain *c = ctx;
    int rc = c->a.join ? c->a.join(c->a.ctx, params, n, step) : ERR_OK;
    if (!rc && c->b.join) rc = c->b.join(c->b.ctx, params, n, step);
    return rc;
}

static void chain_metrics(void *ctx, train_sync_metrics *m) {
    chain *c = ctx;
    if (c->a.get_metrics) c->a.get_metrics(c->a.ctx, m);
    if (c->b.get_metrics) c->b.get_metrics(c->b.ctx, m);
}

static void chain_destroy(void *ctx) {
    chain *c = ctx;
    if (c->a.destroy) c->a.destroy(c->a.ctx);
    if (c->b.destroy) c->b.destroy(c->b.ctx);
    free(c);
}

int train_sync_chain(train_sync *out, const train_sync *a, const train_sync *b) {
    chain *c = xcalloc(1, sizeof *c);
    c->a = *a;
    c->b = *b;
    memset(out, 0, sizeof *out);
    out->ctx = c;
    out->after_step = chain_after_step;
    out->after_backward = chain_after_backward;
    out->save = chain_save;
    out->load = chain_load;
    out->join = chain_join;
    out->get_metrics = chain_metrics;
    out->destroy = chain_destroy;
    return ERR_OK;
}

void train_sync_metric(train_sync_metrics *m, const char *name, const char *label, double value,
                       int decimals) {
    ASSERT(m->n >= 0 && m->n < TRAIN_SYNC_MAX_METRICS);
    m->metrics[m->n++] = (train_metric){name, label, value, decimals};
}
