// bench_status.c: what the status server of `spartan train` (net.status_port) costs a run,
// printed as `BENCH <key> <value>` lines.
//   status_overhead   tokens/s of training steps with the status server published every step and
//                     polled (GET /status, the full 512-step history) every 100 ms, divided by
//                     tokens/s of the same steps without it; target >= 0.99
//   status_polls      polls answered during the measured "with" steps
// The model is configs/tiny.ini's (L4 NH4 C128 V65) at B=8, T=64, on random tokens. Both sides
// run in this process in interleaved rounds (tu_interleave; 15 rounds of 20 steps a side, or
// BENCH_ROUNDS_STATUS_OVERHEAD, BENCH_QUICK=1: 3), the side that goes first alternating; each
// round gives one ratio (the median step of "without" over that of "with"). BENCH_THREADS=N
// sets the compute threads (default: all cores).
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data/fetch.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"
#include "train/cmd/status_srv.h"
#include "train/gpt.h"
#include "train/ops.h"
#include "train/optim.h"

typedef struct bench {
    gpt_model *m;
    optim_adamw *o;
    cfg_train tc;
    int32_t *x, *y;
    int B, T;
    long step;
    status_srv *srv; // NULL on the "without" side's context
    status_snap snap;
    _Atomic int polling, stop;
    _Atomic long polls;
    int port;
} bench;

// one_step runs one optimizer step and, with a server, publishes it as the train loop does.
static double one_step(bench *b) {
    double t0 = sys_now_s();
    gpt_zero_grad(b->m);
    float loss = gpt_forward(b->m, b->x, b->y, b->B, b->T);
    gpt_backward(b->m, 1.0f);
    float norm = optim_grad_norm(gpt_grads(b->m), gpt_n_params(b->m));
    optim_step(b->o, b->m, &b->tc, 1e-4f, optim_clip_scale(norm, b->tc.grad_clip));
    double dt = sys_now_s() - t0;
    b->step++;
    if (b->srv) {
        b->snap.step = (int)b->step;
        b->snap.loss = loss;
        b->snap.norm = norm;
        b->snap.tok_s = b->B * b->T / dt;
        b->snap.sync.bytes_sent += 1000;
        status_srv_publish(b->srv, &b->snap);
    }
    return sys_now_s() - t0;
}

typedef struct side {
    bench *b;
    int with;
} side;

static int side_run(void *ctx, int warm, int n, double *v) {
    side *s = ctx;
    bench *b = s->b;
    status_srv *srv = b->srv;
    if (!s->with) b->srv = NULL;
    for (int i = 0; i < warm; i++)
        one_step(b);
    if (s->with) b->polling = 1;
    for (int i = 0; i < n; i++)
        v[i] = one_step(b);
    b->polling = 0;
    if (!s->with) b->srv = srv;
    return 0;
}

// poller GETs /status every 100 ms while polling is set, as a dashboard would.
static void *poller(void *arg) {
    bench *b = arg;
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/status", b->port);
    while (!b->stop) {
        if (b->polling) {
            char *body = NULL;
            if (fetch_get(url, 2000, 1 << 20, &body, NULL, NULL) == ERR_OK) b->polls++;
            free(body);
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(void) {
    const char *th_env = getenv("BENCH_THREADS"); // compute threads (default: all cores)
    ops_init(th_env ? atoi(th_env) : 0);
    cfg_model mc = {.n_layer = 4, .n_head = 4, .n_embd = 128, .block_size = 64, .vocab_size = 65};
    bench b = {.B = 8, .T = 64};
    if (gpt_create(&b.m, &mc, b.B, 1)) {
        fprintf(stderr, "bench_status: %s\n", err_msg());
        return 1;
    }
    gpt_init_params(b.m, 1);
    optim_create(&b.o, gpt_n_params(b.m));
    b.tc = (cfg_train){
        .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .grad_clip = 1.0f};
    b.x = xmalloc((size_t)b.B * b.T * sizeof(int32_t));
    b.y = xmalloc((size_t)b.B * b.T * sizeof(int32_t));
    for (int i = 0; i < b.B * b.T; i++) {
        b.x[i] = (int32_t)((i * 7919u + 13u) % 65u);
        b.y[i] = (int32_t)((i * 104729u + 7u) % 65u);
    }
    if (status_srv_create(&b.srv, "127.0.0.1", 0)) {
        fprintf(stderr, "bench_status: %s\n", err_msg());
        return 1;
    }
    b.port = status_srv_port(b.srv);
    b.snap = (status_snap){.world = 1, .max_iters = 1000000, .val_loss = NAN, .ckpt_step = -1};
    for (int i = 0; i < STATUS_HIST; i++) // a full history, as in a long run
        one_step(&b);
    pthread_t th;
    pthread_create(&th, NULL, poller, &b);
    int rounds = tu_bench_rounds("status_overhead", 15, 3), n = 20;
    double *all = xcalloc((size_t)rounds * 2 * n, sizeof(double));
    double *med = xcalloc((size_t)rounds * 2, sizeof(double));
    side with = {&b, 1}, without = {&b, 0};
    tu_side sides[2] = {
        {"with", side_run, &with, 2, n, all, med},
        {"without", side_run, &without, 2, n, all + (size_t)rounds * n, med + rounds},
    };
    long polls0 = b.polls;
    if (tu_interleave(sides, 2, rounds)) return 1;
    long polls = b.polls - polls0;
    b.stop = 1;
    pthread_join(th, NULL);
    double *ratio = xcalloc((size_t)rounds, sizeof(double));
    for (int r = 0; r < rounds; r++)
        ratio[r] = med[rounds + r] / med[r]; // tokens/s with over without
    tu_bench_ratio("status_overhead", ratio, rounds, 4);
    printf("BENCH status_polls %ld\n", polls);
    free(ratio);
    free(all);
    free(med);
    status_srv_destroy(b.srv);
    free(b.x);
    free(b.y);
    optim_destroy(b.o);
    gpt_destroy(b.m);
    return 0;
}
