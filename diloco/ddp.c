// ddp.c: the DDP baseline. After backward pass t (gradients complete, before clipping and AdamW):
//   g = (sum over peers of g_peer, in ring order) / P        (ar_mean, tag t)
// so P peers with batch B take exactly the step of one peer with batch P B, up to float summation
// order, and stay bitwise identical to each other. A peer that misses an all-reduce stops the run
// (there is no partial DDP step). Trainer thread only; it runs no thread of its own.
#include "diloco/ddp.h"

#include <stdlib.h>
#include <string.h>

#include "sparta/peer/allreduce.h"
#include "sparta/peer/wire.h"
#include "train/base/err.h"
#include "train/base/log.h"

struct ddp {
    cfg_ddp pc;
    int rank, world;
    size_t n;
    ar_ctx *ar;
    uint64_t steps_averaged, bytes_sent, bytes_recv, msgs_dropped;
    double ms_sum;
};

// wire_dtype maps ddp.dtype to the all-reduce's value type.
static int wire_dtype(cfg_dtype t) {
    return t == CFG_DTYPE_INT8 ? WIRE_INT8 : t == CFG_DTYPE_BF16 ? WIRE_BF16 : WIRE_FP32;
}

int ddp_create(ddp **out, const cfg_ddp *pc, peer_group *g, int rank, int world, uint64_t run_id,
               size_t n) {
    if (world < 2 || rank < 0 || rank >= world)
        return err_set(ERR_INVAL, "ddp: rank %d of %d peers", rank, world);
    ddp *d = xcalloc(1, sizeof *d);
    d->pc = *pc;
    d->rank = rank;
    d->world = world;
    d->n = n;
    int rc = ar_create(&d->ar, g, PEER_CH_RING, rank, world, run_id, n, wire_dtype(pc->dtype));
    if (rc) {
        ddp_destroy(d);
        return rc;
    }
    *out = d;
    return ERR_OK;
}

int ddp_average(ddp *d, float *grads, size_t n, long step) {
    ASSERT(n == d->n);
    ar_stats st;
    int rc = ar_mean(d->ar, grads, n, (uint64_t)step, d->pc.timeout_ms, &st);
    d->bytes_sent += st.bytes_sent;
    d->bytes_recv += st.bytes_recv;
    d->msgs_dropped += st.msgs_dropped;
    d->ms_sum += st.ms;
    if (rc) return err_set(rc, "DDP step %ld: all-reduce failed: %s", step, err_msg());
    d->steps_averaged++;
    return ERR_OK;
}

void ddp_get_stats(ddp *d, ddp_stats *st) {
    memset(st, 0, sizeof *st);
    st->steps_averaged = d->steps_averaged;
    st->bytes_sent = d->bytes_sent;
    st->bytes_recv = d->bytes_recv;
    st->msgs_dropped = d->msgs_dropped;
    st->allreduce_ms = d->steps_averaged ? d->ms_sum / (double)d->steps_averaged : 0;
}

void ddp_destroy(ddp *d) {
    if (!d) return;
    if (d->ar)
        LOG_I("ddp", "done steps_averaged=%llu sent_mb=%.2f", (unsigned long long)d->steps_averaged,
              d->bytes_sent / 1e6);
    ar_destroy(d->ar);
    free(d);
}

// ---- train_sync adapter ----------------------------------------------------------------------

static int sync_after_backward(void *ctx, float *grads, size_t n, long step) {
    return ddp_average(ctx, grads, n, step);
}

static void sync_metrics(void *ctx, train_sync_metrics *m) {
    ddp_stats st;
    ddp_get_stats(ctx, &st);
    m->exchanges += st.steps_averaged;
    m->bytes_sent += st.bytes_sent;
    m->bytes_recv += st.bytes_recv;
    m->msgs_dropped += st.msgs_dropped;
    train_sync_metric(m, "ddp_steps_averaged", NULL, (double)st.steps_averaged, 0);
    train_sync_metric(m, "ddp_allreduce_ms", "allreduce_ms", st.allreduce_ms, 3);
}

static void sync_destroy(void *ctx) { ddp_destroy(ctx); }

int ddp_sync_create(train_sync *out, const cfg_ddp *pc, peer_group *g, const train_sync_run *run,
                    size_t n_params) {
    memset(out, 0, sizeof *out);
    ddp *d = NULL;
    // The run id of the all-reduce messages, as DiLoCo's (they never combine).
    int rc = ddp_create(&d, pc, g, run->rank, run->world, run->run_id ^ 0xD11C0ull, n_params);
    if (rc) return rc;
    out->ctx = d;
    out->after_backward = sync_after_backward;
    out->get_metrics = sync_metrics;
    out->destroy = sync_destroy;
    LOG_I("ddp", "peers=%d dtype=%s", run->world, cfg_dtype_str(pc->dtype));
    return ERR_OK;
}
