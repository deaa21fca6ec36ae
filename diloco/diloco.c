// diloco.c: DiLoCo outer steps (Douillard et al. 2023, Algorithm 1) and the DDP baseline.
// Outer step t (every H inner steps), on every peer:
//   delta   = theta_g - theta_local                      (pseudo-gradient, own buffer)
//   delta   = mean over peers of delta                   (ring all-reduce, allreduce.h)
//   buf     = delta (t = 1) or mu * buf + delta
//   theta_g = theta_g - lr * (delta + mu * buf)          (Nesterov; plain momentum: lr * buf)
//   theta_local = theta_g                                (the inner AdamW state is kept)
// theta_g lives in its own buffer and never aliases the live parameters, the first outer step
// comes after exactly H inner steps, and every step changes theta_g unless delta = 0: the three
// bugs of public reference code this avoids. DDP averages the gradients after every backward pass
// with the same all-reduce. Trainer thread only; the all-reduce blocks.
#include "diloco.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "allreduce.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "wire.h"

struct diloco {
    cfg_diloco dc;
    int rank, world;
    size_t n;
    float *theta_g, *buf, *delta;
    int64_t outer_steps;
    net_mesh *mesh;
    ar_ctx *ar;
    uint64_t bytes_sent, bytes_recv, msgs_dropped;
    double ms_sum;
};

void diloco_outer_update(float *theta_g, float *buf, const float *delta, size_t n, float lr,
                         float mu, int nesterov, int first) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float b = first ? delta[i] : mu * buf[i] + delta[i];
        buf[i] = b;
        theta_g[i] -= lr * (nesterov ? delta[i] + mu * b : b);
    }
}

static int wire_dtype(const char *s) {
    return strcmp(s, "int8") == 0 ? WIRE_INT8 : strcmp(s, "bf16") == 0 ? WIRE_BF16 : WIRE_FP32;
}

// open_mesh connects the all-reduce mesh: the ports of net.peers shifted by world, so it never
// meets the SPARTA mesh, and waits up to timeout_ms for every peer.
static int open_mesh(net_mesh **out, const cfg_net *nc, int rank, int world, int timeout_ms) {
    char *list = xstrdup(nc->peers), *save = NULL;
    char(*addr)[160] = xcalloc((size_t)world, sizeof *addr);
    const char **peers = xcalloc((size_t)world, sizeof(char *));
    int n = 0, rc = ERR_OK;
    for (char *tok = strtok_r(list, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        char host[128];
        int port;
        rc = net_parse_hostport(tok, host, sizeof host, &port);
        if (!rc && n < world) {
            snprintf(addr[n], sizeof addr[n], strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
                     port + world);
            peers[n] = addr[n];
        }
        n++;
    }
    if (!rc && n != world)
        rc = err_set(ERR_INVAL, "net.peers: expected %d addresses, found %d", world, n);
    char listen[160] = "";
    if (!rc && nc->listen[0]) {
        char host[128];
        int port;
        rc = net_parse_hostport(nc->listen, host, sizeof host, &port);
        snprintf(listen, sizeof listen, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
                 port + world);
    }
    if (!rc) rc = net_mesh_create(out, rank, world, peers, listen[0] ? listen : NULL);
    if (!rc) net_set_link(*out, nc->rate_mbit, nc->delay_ms, nc->loss, 0xD11C0 + (uint64_t)rank);
    free(list);
    free(addr);
    free(peers);
    if (rc) return rc;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int up = 1;
        for (int p = 0; p < world; p++)
            if (p != rank && !net_connected(*out, p)) up = 0;
        if (up) return ERR_OK;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > timeout_ms) {
            LOG_W("diloco", "not every peer connected after %d ms: starting anyway", timeout_ms);
            return ERR_OK;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

// reduce averages x(n) over the peers and keeps the counters.
static int reduce(diloco *d, float *x, size_t n, uint64_t tag, const char *what) {
    if (!d->ar) return ERR_OK;
    ar_stats st;
    int rc = ar_mean(d->ar, x, n, tag, d->dc.timeout_ms, &st);
    d->bytes_sent += st.bytes_sent;
    d->bytes_recv += st.bytes_recv;
    d->msgs_dropped += st.msgs_dropped;
    d->ms_sum += st.ms;
    if (rc)
        return err_set(rc, "%s %llu: all-reduce failed: %s", what, (unsigned long long)tag,
                       err_msg());
    return ERR_OK;
}

int diloco_create(diloco **out, const cfg_diloco *dc, const cfg_net *nc, int rank, int world,
                  uint64_t run_id, const float *params, size_t n) {
    diloco *d = xcalloc(1, sizeof *d);
    d->dc = *dc;
    d->rank = rank;
    d->world = world;
    d->n = n;
    if (params) { // DDP needs no outer state
        d->theta_g = xalloc_aligned(n * sizeof(float));
        d->buf = xalloc_aligned(n * sizeof(float));
        d->delta = xalloc_aligned(n * sizeof(float));
        memcpy(d->theta_g, params, n * sizeof(float));
        memset(d->buf, 0, n * sizeof(float));
        memset(d->delta, 0, n * sizeof(float));
    }
    int rc = ERR_OK;
    if (world > 1) {
        rc = open_mesh(&d->mesh, nc, rank, world, dc->timeout_ms);
        if (!rc) rc = ar_create(&d->ar, d->mesh, rank, world, run_id, n, wire_dtype(dc->dtype));
    }
    if (rc) {
        diloco_destroy(d);
        return rc;
    }
    *out = d;
    return ERR_OK;
}

int diloco_after_step(diloco *d, float *params, size_t n, long step) {
    ASSERT(n == d->n && d->theta_g);
    if (d->dc.H <= 0 || step % d->dc.H != 0) return ERR_OK;
    float *delta = d->delta;
    const float *g = d->theta_g;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        delta[i] = g[i] - params[i];
    int rc = reduce(d, delta, n, (uint64_t)d->outer_steps + 1, "outer step");
    if (rc) return rc;
    diloco_outer_update(d->theta_g, d->buf, delta, n, d->dc.lr, d->dc.momentum, d->dc.nesterov,
                        d->outer_steps == 0);
    if (d->world == 1 && d->dc.lr == 1.0f && d->dc.momentum == 0.0f) {
        // Alone, the mean pseudo-gradient is our own, and with lr 1 and no momentum the outer step
        // lands exactly on the local parameters; theta_g - (theta_g - x) can differ from x in the
        // last bit, so take x itself and keep single-peer training bitwise unchanged.
        memcpy(d->theta_g, params, n * sizeof(float));
    }
    d->outer_steps++;
    memcpy(params, d->theta_g, n * sizeof(float));
    LOG_D("diloco", "outer step %lld at step %ld", (long long)d->outer_steps, step);
    return ERR_OK;
}

int diloco_save(diloco *d, ckpt_writer *w) {
    size_t shape[1] = {d->n};
    int rc = ckpt_write_tensor(w, "outer/theta_g", d->theta_g, 1, shape);
    if (!rc) rc = ckpt_write_tensor(w, "outer/momentum", d->buf, 1, shape);
    if (!rc) rc = ckpt_write_attr_i64(w, "outer_steps", d->outer_steps);
    return rc;
}

int diloco_load(diloco *d, ckpt_reader *r) {
    size_t shape[1] = {d->n};
    int64_t steps = 0;
    int rc = ckpt_read_tensor(r, "outer/theta_g", d->theta_g, 1, shape);
    if (!rc) rc = ckpt_read_tensor(r, "outer/momentum", d->buf, 1, shape);
    if (!rc) rc = ckpt_read_attr_i64(r, "outer_steps", &steps);
    if (!rc && steps < 0) rc = err_set(ERR_FORMAT, "outer_steps = %lld", (long long)steps);
    if (!rc) d->outer_steps = steps;
    return rc;
}

const float *diloco_theta_g(const diloco *d) { return d->theta_g; }

void diloco_get_stats(diloco *d, train_sync_stats *st) {
    memset(st, 0, sizeof *st);
    st->bytes_sent = d->bytes_sent;
    st->bytes_recv = d->bytes_recv;
    st->msgs_dropped = d->msgs_dropped;
    st->rounds_done = (uint64_t)d->outer_steps;
    st->latency_ms = d->outer_steps ? d->ms_sum / (double)d->outer_steps : 0;
}

void diloco_destroy(diloco *d) {
    if (!d) return;
    ar_destroy(d->ar);
    net_mesh_destroy(d->mesh);
    free(d->theta_g);
    free(d->buf);
    free(d->delta);
    free(d);
}

// ---- train_sync adapters ---------------------------------------------------------------------

static int sync_after_step(void *ctx, float *params, size_t n, long step) {
    return diloco_after_step(ctx, params, n, step);
}

static int sync_ddp(void *ctx, float *grads, size_t n, long step) {
    diloco *d = ctx;
    return reduce(d, grads, n, (uint64_t)step, "DDP step");
}

static int sync_save(void *ctx, ckpt_writer *w) { return diloco_save(ctx, w); }
static int sync_load(void *ctx, ckpt_reader *r) { return diloco_load(ctx, r); }

static void sync_stats(void *ctx, train_sync_stats *st) {
    diloco *d = ctx;
    diloco_get_stats(d, st);
    if (!d->theta_g) st->rounds_done = 0; // DDP: no outer steps
}

static void sync_destroy(void *ctx) { diloco_destroy(ctx); }

int diloco_sync_factory(train_sync *out, const cfg *c, int rank, int world, uint64_t run_id,
                        const float *params, size_t n_params) {
    memset(out, 0, sizeof *out);
    int ddp = strcmp(c->train.mode, "ddp") == 0;
    if (ddp && c->diloco.H > 0)
        return err_set(ERR_INVAL, "train.mode = ddp and diloco.H > 0 do not combine");
    if (!(ddp && world > 1) && c->diloco.H <= 0) return ERR_OK;
    diloco *d;
    int rc = diloco_create(&d, &c->diloco, &c->net, rank, world, run_id ^ 0xD11C0ull,
                           ddp ? NULL : params, n_params);
    if (rc) return rc;
    out->ctx = d;
    out->get_stats = sync_stats;
    out->destroy = sync_destroy;
    if (ddp) {
        out->after_backward = sync_ddp;
    } else {
        out->after_step = sync_after_step;
        out->save = sync_save;
        out->load = sync_load;
        LOG_I("diloco", "H=%d lr=%g momentum=%g nesterov=%d dtype=%s peers=%d", c->diloco.H,
              c->diloco.lr, c->diloco.momentum, c->diloco.nesterov, c->diloco.dtype, world);
    }
    return ERR_OK;
}
