// insider_peer.c: a malicious member of a run, for tests/insider_test.c and experiments/insider.
// `insider_peer ATTACK train CONFIG [spartan train options]` is `spartan train` itself (the real
// trainer, config, TLS certificate and handshake: it joins as a normal member with valid
// settings), with a static peer group opened from net.peers as bin/spartan opens it and the
// SPARTA or DiLoCo module it runs wrapped so that what this peer contributes is replaced:
//   huge   every value 1e30 (SPARTA: the values sent; DiLoCo: the pseudo-gradient)
//   nan    every value NaN
//   flip   -10 times the honest contribution (SPARTA: -10 x[I_r]; DiLoCo: -10 delta)
//   none   the honest one (a control: it trains like any peer)
// SPARTA is tampered with through the parameters: params[I_r] are set just before the module
// gathers round r and put back after it (with sparta.sync the round is applied in that call,
// over the tampered values only where the aggregate did not overwrite them). DiLoCo: params are
// set to theta_g - delta' before the outer step, which then leaves params = theta_g. Only this
// test program can do this; bin/spartan has no such option. Main thread (the trainer's).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diloco/diloco.h"
#include "sparta/peer/hello.h"
#include "sparta/peer/peer.h"
#include "sparta/select.h"
#include "sparta/sparta.h"
#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/cmd/cmds.h"

typedef enum { A_NONE, A_HUGE, A_NAN, A_FLIP } attack;
static const char *const attack_words[] = {"none", "huge", "nan", "flip"};
static attack the_attack;

typedef struct evil {
    train_sync inner; // the real module
    peer_group *g;
    int diloco, H, selector;
    long every;
    uint64_t seed;
    size_t n, kmax, count;
    uint32_t *idx; // SPARTA: the round's indices, and the values they held before tampering
    float *saved;
} evil;

static float bad_value(float honest) {
    switch (the_attack) {
    case A_HUGE: return 1e30f;
    case A_NAN: return NAN;
    case A_FLIP: return -10.0f * honest;
    default: return honest;
    }
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static int evil_after_step(void *ctx, float *params, size_t n, long *at) {
    evil *e = ctx;
    long step = *at;
    if (e->diloco) {
        if (e->H > 0 && step % e->H == 0) { // delta' = bad(delta): params = theta_g - delta'
            const float *tg = diloco_theta_g(e->inner.ctx);
            for (size_t i = 0; i < n; i++)
                params[i] = tg[i] - bad_value(tg[i] - params[i]);
        }
        return e->inner.after_step(e->inner.ctx, params, n, at);
    }
    e->count = 0;
    if (step % e->every == 0) {
        e->count = select_indices(e->selector, e->seed, (uint64_t)step, n, e->kmax, e->idx);
        for (size_t i = 0; i < e->count; i++) {
            e->saved[i] = params[e->idx[i]];
            params[e->idx[i]] = bad_value(e->saved[i]);
        }
    }
    int rc = e->inner.after_step(e->inner.ctx, params, n, at);
    for (size_t i = 0; i < e->count; i++) // where the round was not applied: our own values back
        if (same_bits(params[e->idx[i]], bad_value(e->saved[i]))) params[e->idx[i]] = e->saved[i];
    return rc;
}

static void evil_metrics(void *ctx, train_sync_metrics *m) {
    evil *e = ctx;
    if (e->inner.get_metrics) e->inner.get_metrics(e->inner.ctx, m);
}

static void evil_destroy(void *ctx) {
    evil *e = ctx;
    if (e->inner.destroy) e->inner.destroy(e->inner.ctx);
    peer_group_destroy(e->g);
    free(e->idx);
    free(e->saved);
    free(e);
}

// open_peers opens this process's member of the static group net.peers lists, with the hello
// and TLS files of c, as bin/spartan does.
static int open_peers(peer_group **g, const cfg *c, int rank, int world, uint64_t run_id,
                      const char *hello) {
    char(*addr)[PEER_ADDR_MAX] = calloc((size_t)world, sizeof *addr);
    const char **peers = calloc((size_t)world, sizeof *peers);
    for (int i = 0; i < world; i++) {
        cfg_peer_entry(c->net.peers, i, addr[i], sizeof addr[i]);
        peers[i] = addr[i];
    }
    peer_opts o = {.listen = peers[rank],
                   .peers = peers,
                   .world = world,
                   .rank = rank,
                   .run_id = run_id,
                   .shared = hello,
                   .build = "insider",
                   .tag = "insider",
                   .tls_ca = c->net.tls ? c->net.tls_ca : NULL,
                   .tls_cert = c->net.tls ? c->net.tls_cert : NULL,
                   .tls_key = c->net.tls ? c->net.tls_key : NULL};
    int rc = peer_group_create(g, &o);
    free(peers);
    free(addr);
    return rc;
}

static int evil_factory(train_sync *out, const cfg *c, int *rank, int world, uint64_t run_id,
                        const float *params, size_t n, long start_step) {
    (void)start_step;
    memset(out, 0, sizeof *out);
    int use_sparta = c->sparta.p > 0, use_diloco = c->diloco.H > 0;
    if (world < 2 || *rank < 0 || use_sparta == use_diloco)
        return err_set(ERR_INVAL, "insider_peer: give --peers, --rank and either sparta.p > 0 or "
                                  "diloco.H > 0 (with sparta.p = 0)");
    char hello[HELLO_TEXT_MAX];
    hello_text(c, world, hello, sizeof hello);
    evil *e = calloc(1, sizeof *e);
    int rc = open_peers(&e->g, c, *rank, world, run_id, hello);
    int wait = use_sparta ? c->sparta.timeout_ms : c->diloco.timeout_ms;
    if (!rc) rc = hello_wait(e->g, world, wait, 0, "insider", NULL);
    train_sync_run run = {.rank = *rank, .world = world, .run_id = run_id, .hello = hello};
    if (!rc && use_sparta)
        rc = sparta_sync_create(&e->inner, &c->sparta, e->g, &run, c->train.seed, n);
    if (!rc && use_diloco) rc = diloco_sync_create(&e->inner, &c->diloco, e->g, &run, params, n);
    if (rc) {
        peer_group_destroy(e->g);
        free(e);
        return rc;
    }
    e->diloco = use_diloco;
    e->H = c->diloco.H;
    e->every = c->sparta.every;
    e->selector = c->sparta.selector == CFG_SELECT_PARTITIONED ? SELECT_PARTITIONED : SELECT_RANDOM;
    e->seed = c->train.seed;
    e->n = n;
    e->kmax = use_sparta ? select_k(c->sparta.p, n) : 0;
    e->idx = calloc(e->kmax ? e->kmax : 1, sizeof *e->idx);
    e->saved = calloc(e->kmax ? e->kmax : 1, sizeof *e->saved);
    LOG_W("insider", "rank %d of %d sends '%s' %s", *rank, world, attack_words[the_attack],
          use_sparta ? "SPARTA values" : "DiLoCo pseudo-gradients");
    *out = (train_sync){.ctx = e,
                        .after_step = evil_after_step,
                        .get_metrics = evil_metrics,
                        .destroy = evil_destroy};
    return ERR_OK;
}

int main(int argc, char **argv) {
    int a = -1;
    for (int i = 0; argc >= 3 && i < 4; i++)
        if (!strcmp(argv[1], attack_words[i])) a = i;
    if (a < 0 || strcmp(argv[2], "train") != 0) {
        fprintf(stderr, "usage: insider_peer none|huge|nan|flip train CONFIG [options of "
                        "spartan train]\n");
        return 2;
    }
    the_attack = (attack)a;
    return train_cmd_main(argc - 2, argv + 2, evil_factory);
}
