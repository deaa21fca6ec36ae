// diloco_test.c: DiLoCo outer steps and the DDP baseline. The outer optimizer against a
// reference computed here in double; a single peer with outer lr 1 and no momentum trains
// bitwise as without DiLoCo; 3 peer processes with H = 1, lr 1, mu 0 average their parameters
// every step; DDP on 2 peers equals one peer with the doubled batch, and in one process two DDP
// modules end on the same bits, the exact mean, and report their named metrics; and the outer
// state survives a checkpoint and resume bit-exactly. Peers run on 127.0.0.1 over real TCP.
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "diloco/ddp.h"
#include "diloco/diloco.h"
#include "tests/test_util.h"
#include "train/base/err.h"

TestSuite(diloco, .timeout = 180);

#define SMALL                                                                            \
    "configs/tiny.ini --set model.n_layer=2 --set model.n_embd=32 --set model.n_head=2 " \
    "--set model.block_size=32 --set train.batch_size=8 --set train.eval_interval=0 "    \
    "--set train.threads=1 --set sparta.p=0 --set diloco.timeout_ms=20000"

Test(diloco, outer_nesterov_steps_match_a_reference_computed_from_the_same_deltas) {
    enum { N = 257 };
    float theta[N], buf[N], delta[3][N];
    double ref[N], rbuf[N];
    tu_rand_fill(theta, N, 1, -1, 1);
    for (int s = 0; s < 3; s++)
        tu_rand_fill(delta[s], N, 10 + s, -0.1f, 0.1f);
    for (int i = 0; i < N; i++)
        ref[i] = theta[i];
    const float lr = 0.7f, mu = 0.9f;
    for (int s = 0; s < 3; s++) {
        diloco_outer_update(theta, buf, delta[s], N, lr, mu, 1, s == 0);
        for (int i = 0; i < N; i++) { // torch.optim.SGD(momentum=mu, nesterov=True)
            rbuf[i] = s == 0 ? delta[s][i] : mu * rbuf[i] + delta[s][i];
            ref[i] -= lr * (delta[s][i] + mu * rbuf[i]);
        }
    }
    for (int i = 0; i < N; i++)
        cr_assert(fabs(theta[i] - ref[i]) < 1e-6, "i=%d %g vs %g", i, theta[i], ref[i]);
    // without Nesterov the update is lr * buf: a different result
    float t2[N], b2[N];
    tu_rand_fill(t2, N, 1, -1, 1);
    for (int s = 0; s < 3; s++)
        diloco_outer_update(t2, b2, delta[s], N, lr, mu, 0, s == 0);
    cr_assert(fabs(t2[0] - theta[0]) > 1e-4, "nesterov switch has no effect");
}

// load_params is tu_load_params or fails the test.
static float *load(const char *path, size_t *n) {
    float *p = tu_load_params(path, n);
    cr_assert(p, "%s", err_msg());
    return p;
}

static void run_alone(const char *dir, const char *data, const char *name, const char *extra) {
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s train " SMALL " --set data.dir=%s --set train.out_dir=%s/%s %s",
             tu_spartan(), data, dir, name, extra);
    cr_assert_eq(tu_run(cmd, 120, &out), 0, "%s", out);
    free(out);
}

Test(diloco, one_peer_with_lr_1_and_no_momentum_trains_bitwise_unchanged) {
    char *dir = tu_tmpdir("diloco"), data[600], a[700], b[700];
    snprintf(data, sizeof data, "%s/data", dir);
    cr_assert_eq(tu_prepare_char_data(data, NULL), 0);
    run_alone(dir, data, "plain", "--set train.max_iters=8");
    run_alone(dir, data, "outer",
              "--set train.max_iters=8 --set diloco.H=2 --set diloco.lr=1 --set diloco.momentum=0");
    snprintf(a, sizeof a, "%s/plain", dir);
    snprintf(b, sizeof b, "%s/outer", dir);
    size_t na, nb;
    float *pa = load(a, &na), *pb = load(b, &nb);
    cr_assert_eq(memcmp(pa, pb, na * sizeof(float)), 0, "DiLoCo with lr 1, mu 0 changed training");
    // and a real outer step (lr 0.7, Nesterov) does change it
    run_alone(dir, data, "nesterov", "--set train.max_iters=8 --set diloco.H=2");
    snprintf(b, sizeof b, "%s/nesterov", dir);
    float *pc = load(b, &nb);
    cr_assert_neq(memcmp(pa, pc, na * sizeof(float)), 0, "the outer step did nothing");
    free(pa);
    free(pb);
    free(pc);
    tu_rm_rf(dir);
    free(dir);
}

Test(diloco, three_peers_with_h1_lr1_mu0_average_their_parameters_every_step) {
    enum { P = 3 };
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, P), 0);
    int bad = tu_cluster_run(&c,
                             SMALL " --set diloco.H=1 --set diloco.lr=1 --set diloco.momentum=0 "
                                   "--set train.max_iters=2 --set train.ckpt_interval=1 "
                                   "--set train.keep_ckpts=0",
                             120);
    if (bad >= 0) cr_assert_fail("peer %d failed:\n%s", bad, tu_cluster_log(&c, bad));
    size_t n;
    char path[800];
    float *x[P], *own[P];
    for (int i = 0; i < P; i++) {
        snprintf(path, sizeof path, "%s/rank%d/ckpt_00000001.h5", c.dir, i);
        x[i] = load(path, &n);
        char name[32];
        snprintf(name, sizeof name, "alone%d", i);
        char extra[64];
        snprintf(extra, sizeof extra, "--rank %d --set train.max_iters=1", i);
        run_alone(c.dir, c.data, name, extra);
        snprintf(path, sizeof path, "%s/%s", c.dir, name);
        own[i] = load(path, &n);
    }
    for (int i = 1; i < P; i++)
        cr_assert_eq(memcmp(x[0], x[i], n * sizeof(float)), 0, "peers differ after the outer step");
    // theta_g - mean(theta_g - x_i) is the mean of the x_i up to float rounding of the deltas
    double err = 0, norm = 0;
    for (size_t j = 0; j < n; j++) {
        double m = ((double)own[0][j] + own[1][j] + own[2][j]) / 3.0;
        err = fmax(err, fabs(x[0][j] - m));
        norm = fmax(norm, fabs(m));
    }
    cr_assert(err <= 1e-6 * (1 + norm), "max error %g against the directly computed mean", err);
    for (int i = 0; i < P; i++) {
        free(x[i]);
        free(own[i]);
    }
    tu_cluster_close(&c);
}

Test(diloco, ddp_on_two_peers_equals_one_peer_with_the_doubled_batch) {
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, 2), 0);
    int bad = tu_cluster_run(&c, SMALL " --set train.mode=ddp --set train.max_iters=5", 120);
    if (bad >= 0) cr_assert_fail("peer %d failed:\n%s", bad, tu_cluster_log(&c, bad));
    run_alone(c.dir, c.data, "single", "--set train.batch_size=16 --set train.max_iters=5");
    char path[800];
    size_t n;
    snprintf(path, sizeof path, "%s/rank0", c.dir);
    float *a = load(path, &n);
    snprintf(path, sizeof path, "%s/rank1", c.dir);
    float *b = load(path, &n);
    snprintf(path, sizeof path, "%s/single", c.dir);
    float *s = load(path, &n);
    cr_assert_eq(memcmp(a, b, n * sizeof(float)), 0, "DDP peers differ");
    double d2 = 0, s2 = 0;
    for (size_t j = 0; j < n; j++) {
        d2 += ((double)a[j] - s[j]) * ((double)a[j] - s[j]);
        s2 += (double)s[j] * s[j];
    }
    // only the float summation order differs (two half-batch means averaged vs one mean)
    cr_assert(sqrt(d2 / s2) <= 1e-5, "relative difference %g", sqrt(d2 / s2));
    free(a);
    free(b);
    free(s);
    tu_cluster_close(&c);
}

// One DDP peer of the in-process pair: builds its train_sync over its peer group (the all-reduce
// waits for the other peer, so both run at once) and averages one step's gradients through the
// after_backward hook.
typedef struct {
    cfg c;
    peer_group *grp;
    train_sync_run run;
    train_sync sync;
    float g[1000];
    int rc;
} ddp_peer;

static void *ddp_peer_main(void *arg) {
    ddp_peer *p = arg;
    p->rc = ddp_sync_create(&p->sync, &p->c.ddp, p->grp, &p->run, 1000);
    if (!p->rc) p->rc = p->sync.after_backward(p->sync.ctx, p->g, 1000, 7);
    return NULL;
}

Test(diloco, ddp_module_averages_gradients_to_the_same_bits_and_names_its_metrics) {
    enum { N = 1000 };
    static ddp_peer p[2];
    char *dir = tu_tmpdir("ddp");
    float want[N];
    for (int i = 0; i < 2; i++) {
        cfg_defaults(&p[i].c);
        p[i].c.ddp.timeout_ms = 20000;
        p[i].grp = tu_group(dir, i, 2, 0xDD9);
        p[i].run = (train_sync_run){.rank = i, .world = 2, .run_id = 0xDD9, .hello = "ddp test\n"};
        tu_rand_fill(p[i].g, N, 11 + (uint64_t)i, -1, 1);
    }
    for (int j = 0; j < N; j++) // two peers: (a + b) / 2 in either order, exactly
        want[j] = (p[0].g[j] + p[1].g[j]) / 2;
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, ddp_peer_main, &p[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(p[i].rc, ERR_OK, "peer %d: %s", i, err_msg());
    cr_assert_eq(memcmp(p[0].g, p[1].g, sizeof want), 0, "DDP peers differ");
    cr_assert_eq(memcmp(p[0].g, want, sizeof want), 0, "not the mean of the two peers");
    train_sync_metrics m;
    memset(&m, 0, sizeof m);
    p[0].sync.get_metrics(p[0].sync.ctx, &m);
    cr_assert_eq(m.exchanges, 1u);
    cr_assert_gt(m.bytes_sent, 4u * N / 2, "half the fp32 vector goes each way at least");
    cr_assert_eq(m.n, 2);
    cr_assert_str_eq(m.metrics[0].name, "ddp_steps_averaged");
    cr_assert_float_eq(m.metrics[0].value, 1.0, 1e-12);
    cr_assert_str_eq(m.metrics[1].name, "ddp_allreduce_ms");
    cr_assert_str_eq(m.metrics[1].label, "allreduce_ms");
    for (int i = 0; i < 2; i++) {
        p[i].sync.destroy(p[i].sync.ctx);
        peer_group_destroy(p[i].grp);
    }
    tu_rm_rf(dir);
    free(dir);
}

Test(diloco, outer_state_is_checkpointed_and_resume_is_bit_exact) {
    char *dir = tu_tmpdir("diloco"), data[600], a[700], b[700];
    snprintf(data, sizeof data, "%s/data", dir);
    cr_assert_eq(tu_prepare_char_data(data, NULL), 0);
    run_alone(dir, data, "straight", "--set train.max_iters=8 --set diloco.H=3");
    run_alone(dir, data, "split", "--set train.max_iters=4 --set diloco.H=3");
    char extra[800];
    snprintf(extra, sizeof extra, "--set train.max_iters=8 --set diloco.H=3 --resume %s/split",
             dir);
    run_alone(dir, data, "split", extra);
    snprintf(a, sizeof a, "%s/straight/ckpt_00000008.h5", dir);
    snprintf(b, sizeof b, "%s/split/ckpt_00000008.h5", dir);
    size_t na, nb;
    float *pa = load(a, &na), *pb = load(b, &nb);
    cr_assert_eq(memcmp(pa, pb, na * sizeof(float)), 0, "resume with DiLoCo is not bit-exact");
    free(pa);
    free(pb);
    tu_rm_rf(dir);
    free(dir);
}

Test(diloco, sparta_and_diloco_run_together) {
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, 2), 0);
    // SMALL turns SPARTA off; switch it back on next to DiLoCo (sync keeps the test exact)
    int bad = tu_cluster_run(&c,
                             SMALL " --set sparta.p=0.01 --set sparta.sync=true --set diloco.H=5 "
                                   "--set train.max_iters=10",
                             120);
    if (bad >= 0) cr_assert_fail("peer %d failed:\n%s", bad, tu_cluster_log(&c, bad));
    char *log = tu_cluster_log(&c, 0);
    cr_assert(strstr(log, "sparta rank=0/2") && strstr(log, "diloco H=5"), "%s", log);
    free(log);
    char path[800];
    size_t n;
    snprintf(path, sizeof path, "%s/rank0", c.dir);
    float *a = load(path, &n);
    snprintf(path, sizeof path, "%s/rank1", c.dir);
    float *b = load(path, &n);
    // the last step is an outer step: both peers end on the same theta_g
    cr_assert_eq(memcmp(a, b, n * sizeof(float)), 0, "peers differ after the final outer step");
    snprintf(path, sizeof path, "%s/rank0/metrics.csv", c.dir);
    char *csv;
    cr_assert_eq(tu_read_file(path, &csv, NULL), 0);
    // bytes sent by rank 0: SPARTA, k = round(0.01 N) fp32 values + a header per step; DiLoCo,
    // 2 outer steps, each a 2-peer ring that sends N values in two messages (allreduce.h)
    char *last = strstr(csv, "\n10,");
    cr_assert(last, "no row for step 10");
    char *p = last + 1;
    for (int col = 0; col < 8; col++)
        p = strchr(p, ',') + 1;
    unsigned long long sent = strtoull(p, NULL, 10);
    size_t k = (size_t)(0.01 * (double)n + 0.5);
    unsigned long long want = 10ull * (4 * k + 48) + 2ull * (4 * n + 2 * 48);
    // plus DiLoCo's small messages, which depend on timing (resends while a peer is awaited),
    // reported in the log: membership (a HERE of 48 bytes and a VIEW of 56 per outer step, at
    // least) and state requests (28 bytes each: one to the other peer when joining)
    log = tu_cluster_log(&c, 0);
    const char *of = strstr(log, "(membership ");
    unsigned long long agree = 0, ctl = 0;
    cr_assert(
        of && sscanf(of, "(membership %llu bytes, state requests %llu bytes)", &agree, &ctl) == 2,
        "%s", log);
    free(log);
    cr_assert(agree >= 2 * (48 + 56) && agree < 20000, "membership bytes %llu", agree);
    cr_assert_eq(ctl, 28u, "state request bytes %llu", ctl);
    cr_assert_eq(sent, want + agree + ctl,
                 "bytes sent %llu, expected %llu ring + %llu membership + %llu requests (n = %zu)",
                 sent, want, agree, ctl, n);
    free(csv);
    free(a);
    free(b);
    tu_cluster_close(&c);
}

Test(diloco, first_outer_step_comes_after_exactly_h_steps_and_theta_g_is_its_own_copy) {
    enum { N = 64, H = 4 };
    cfg c;
    cfg_defaults(&c);
    c.diloco.H = H;
    float params[N];
    tu_rand_fill(params, N, 3, -1, 1);
    diloco *d;
    cr_assert_eq(diloco_create(&d, &c.diloco, NULL, 0, 1, 1, params, N), ERR_OK, "%s", err_msg());
    const float *g = diloco_theta_g(d);
    cr_assert(g != params && (g + N <= params || params + N <= g), "theta_g aliases the params");
    float start[N];
    memcpy(start, params, sizeof params);
    diloco_stats st;
    for (long step = 1; step <= 2 * H; step++) {
        for (int i = 0; i < N; i++)
            params[i] += 0.01f; // an inner step
        cr_assert(memcmp(g, start, sizeof start) == 0 || step > H, "theta_g moved at step %ld",
                  step);
        cr_assert_eq(diloco_after_step(d, params, N, &step), ERR_OK);
        diloco_get_stats(d, &st);
        cr_assert_eq(st.outer_steps, (uint64_t)(step / H), "outer steps after step %ld", step);
        if (step % H == 0) { // params = theta_g, and theta_g really moved
            cr_assert_eq(memcmp(params, g, sizeof params), 0);
            cr_assert_neq(memcmp(g, start, sizeof start), 0, "the outer step did nothing");
        }
    }
    diloco_destroy(d);
}

// wait_metric polls a column of a metrics.csv until it reaches at least v (at most limit_s).
static double wait_metric(const char *path, const char *col, double v, int limit_s) {
    double x = -1;
    for (int i = 0; i < limit_s * 20 && (x = tu_last_metric(path, col)) < v; i++)
        usleep(50000);
    return x;
}

// The survivors run until the restarted peer has joined and taken outer steps with them (a dead
// peer costs them no wait now, so a fixed step count could end before the restart), then all
// stop; the checkpoints of a step every peer passed after the join, before any stopped, hold
// theta_g there.
Test(diloco, killed_peer_does_not_stop_outer_steps_and_rejoins_with_the_same_theta_g) {
    enum { P = 3, H = 10, CKPT = 50 };
    const char *ROUNDS = "diloco_outer_steps"; // the metrics.csv column of the outer steps
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, P), 0);
    char args[1024];
    snprintf(args, sizeof args,
             SMALL " --set diloco.H=%d --set diloco.timeout_ms=5000 --set train.max_iters=1000000 "
                   "--set train.log_interval=1 --set train.ckpt_interval=%d "
                   "--set train.keep_ckpts=0",
             H, CKPT);
    int pid[P];
    for (int i = 0; i < P; i++)
        pid[i] = tu_cluster_start(&c, i, args);
    char m0[700];
    snprintf(m0, sizeof m0, "%s/rank0/metrics.csv", c.dir);
    cr_assert(wait_metric(m0, ROUNDS, 3, 60) >= 3, "no outer steps:\n%s", tu_cluster_log(&c, 0));
    kill(pid[2], SIGKILL); // between outer steps 3 and 4 (or later): it misses the next ones
    waitpid(pid[2], NULL, 0);
    double r = tu_last_metric(m0, ROUNDS);
    cr_assert(wait_metric(m0, ROUNDS, r + 2, 60) >= r + 2, "outer steps stopped after the kill");
    char *log = tu_cluster_log(&c, 0);
    cr_assert(strstr(log, "2 of 3 peers present (missing: 2)"), "%s", log);
    free(log);
    // A fresh start (nothing to resume from) in its old folder, so the earlier run's
    // metrics.csv goes: --overwrite.
    char again[1200];
    snprintf(again, sizeof again, "%s --overwrite", args);
    pid[2] = tu_cluster_start(&c, 2, again);
    long joined = -1;
    for (int i = 0; i < 1200 && joined < 0; i++) {
        log = tu_cluster_log(&c, 2);
        const char *at = strstr(log, "joined the running peers");
        at = at ? strstr(at, "continuing at step ") : NULL;
        if (at) joined = atol(at + strlen("continuing at step "));
        free(log);
        if (joined < 0) usleep(50000);
    }
    cr_assert(joined >= 0, "the restarted peer never joined:\n%s", tu_cluster_log(&c, 2));
    // the first checkpoint step after it took part in an outer step with the others
    long common = (joined + 2 * H + CKPT - 1) / CKPT * CKPT;
    for (int i = 0; i < P; i++) { // every peer past that checkpoint before any stops
        char mi[700];
        snprintf(mi, sizeof mi, "%s/rank%d/metrics.csv", c.dir, i);
        cr_assert(wait_metric(mi, "step", (double)common + 1, 120) >= (double)common + 1,
                  "rank %d stalled before step %ld", i, common + 1);
    }
    for (int i = 0; i < P; i++) {
        kill(pid[i], SIGINT);
        cr_assert_eq(tu_wait_exit(pid[i], 120), 0, "peer %d failed:\n%s", i, tu_cluster_log(&c, i));
    }
    // the same theta_g everywhere at that step, bit for bit (not at a later one: the peers stop
    // one after the other, so the last outer steps can have fewer members)
    char path[800];
    size_t n;
    float *x[P];
    for (int i = 0; i < P; i++) {
        snprintf(path, sizeof path, "%s/rank%d/ckpt_%08ld.h5", c.dir, i, common);
        x[i] = load(path, &n);
    }
    for (int i = 1; i < P; i++)
        cr_assert_eq(memcmp(x[0], x[i], n * sizeof(float)), 0,
                     "rank %d holds another theta_g at step %ld", i, common);
    for (int i = 0; i < P; i++)
        free(x[i]);
    tu_cluster_close(&c);
}
