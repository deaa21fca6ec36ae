// sparta_test.c: SPARTA end to end. In-process over the peer layer (ipc:// sockets): one
// exchanger (rank 1 of 2) and the test acting as rank 0 through its own peer group,
// so the test controls exactly what arrives when (the "test clock" is the step counter it passes
// to sparta_after_step). As processes: three `spartan train` peers with p = 1 and sync, and a
// peer killed with SIGKILL and restarted.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sparta/peer/peer.h"
#include "sparta/peer/wire.h"
#include "sparta/select.h"
#include "sparta/sparta.h"
#include "tests/test_util.h"
#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/base/sys.h"
#include "train/gpt.h"

TestSuite(sparta, .timeout = 120);

// ---- in-process: one exchanger and a test-controlled peer ------------------------------------

enum { NP = 1000 };

typedef struct {
    sparta_exchanger *ex;
    peer_group *peer; // the test's rank 0
    peer_group *g1;   // the exchanger's (rank 1)
    char *dir;
    uint64_t run_id, seed;
    size_t k;
    cfg_sparta sc;
    float params[NP];
} rig;

static int rig_delay; // sparta.delay of the next rig_open (0 unless a test sets it)

static void rig_open(rig *r, int max_stale, const char *dtype) {
    memset(r, 0, sizeof *r);
    cfg c;
    cfg_defaults(&c);
    char kv[64];
    snprintf(kv, sizeof kv, "sparta.dtype=%s", dtype);
    cr_assert_eq(cfg_set(&c, kv), ERR_OK, "%s", err_msg());
    r->sc = c.sparta;
    r->sc.p = 0.1f;
    r->sc.max_stale = max_stale;
    r->sc.delay = rig_delay;
    r->sc.timeout_ms = 5000;
    r->run_id = 0xABCDEF12345ull;
    r->seed = 99;
    r->k = select_k(r->sc.p, NP);
    r->dir = tu_tmpdir("sparta");
    r->peer = tu_group(r->dir, 0, 2, 1);
    r->g1 = tu_group(r->dir, 1, 2, 1);
    cr_assert(tu_wait_linked(r->peer, 0, r->g1, 1), "the pair did not connect");
    for (int i = 0; i < NP; i++)
        r->params[i] = (float)i;
    cr_assert_eq(sparta_create(&r->ex, &r->sc, r->g1, 1, 2, r->seed, r->run_id, NP), ERR_OK, "%s",
                 err_msg());
}

static void rig_close(rig *r) {
    sparta_destroy(r->ex);
    peer_group_destroy(r->g1);
    peer_group_destroy(r->peer);
    tu_rm_rf(r->dir);
    free(r->dir);
}

// send_values sends round `round` from the fake rank 0 with every value equal to v.
static void send_values(rig *r, long round, float v, uint64_t run_id) {
    float vals[NP];
    for (size_t i = 0; i < r->k; i++)
        vals[i] = v;
    static uint8_t buf[WIRE_HEADER + 4 * NP];
    wire_header h = {.dtype = WIRE_FP32,
                     .run_id = run_id,
                     .sender = 0,
                     .kind = WIRE_VALUES,
                     .round = (uint64_t)round,
                     .k = (uint32_t)r->k,
                     .offset = 0,
                     .count = (uint32_t)r->k};
    size_t len = wire_encode(buf, &h, vals);
    cr_assert_eq(peer_send(r->peer, 1, PEER_CH_SPARTA, buf, len), ERR_OK, "%s", err_msg());
}

// recv_round waits for the exchanger's message of a round and checks it carries x[I_round].
static void expect_round_message(rig *r, long round, const float *x_at_post) {
    uint32_t idx[NP];
    size_t n = select_indices(SELECT_RANDOM, r->seed, (uint64_t)round, NP, r->k, idx);
    for (int tries = 0; tries < 50; tries++) {
        peer_msg *m;
        if (peer_recv(r->peer, PEER_CH_SPARTA, 200, &m) != ERR_OK) continue;
        wire_header h;
        cr_assert_eq(wire_decode(m->data, m->len, r->run_id, &h), ERR_OK, "%s", err_msg());
        if ((long)h.round != round) {
            peer_msg_free(r->peer, m);
            continue;
        }
        cr_assert_eq(m->from, 1);
        cr_assert_eq(h.count, n);
        float got[NP];
        wire_values(m->data, &h, got);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(got[i], x_at_post[idx[i]], "i=%zu", i);
        peer_msg_free(r->peer, m);
        return;
    }
    cr_assert_fail("no message for round %ld", round);
}

Test(sparta, round_is_applied_when_complete_and_dropped_after_max_stale) {
    rig r;
    rig_open(&r, 5, "fp32");
    uint32_t idx1[NP], idx2[NP];
    size_t k = select_indices(SELECT_RANDOM, r.seed, 1, NP, r.k, idx1);
    select_indices(SELECT_RANDOM, r.seed, 2, NP, r.k, idx2);
    float x1[NP];
    memcpy(x1, r.params, sizeof x1);
    // steps 1..3 post rounds 1..3; nothing has come from the peer, so nothing changes
    for (long s = 1; s <= 3; s++) {
        cr_assert_eq(sparta_after_step(r.ex, r.params, NP, s), ERR_OK);
        if (s == 1) expect_round_message(&r, 1, x1);
        cr_assert_eq(memcmp(r.params, x1, sizeof x1), 0, "applied before complete (step %ld)", s);
    }
    // the peer's round 1 arrives between steps 3 and 4: applied exactly at step 4
    send_values(&r, 1, 1000.0f, r.run_id);
    cr_assert(sparta_wait_round(r.ex, 1, 5000), "round 1 did not complete");
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 4), ERR_OK);
    for (size_t i = 0; i < k; i++) {
        float want = (1000.0f + x1[idx1[i]]) / 2.0f; // rank order: rank 0 (1000) + rank 1
        cr_assert_eq(r.params[idx1[i]], want, "index %u", idx1[i]);
    }
    sparta_stats st;
    sparta_get_stats(r.ex, &st);
    cr_assert_eq(st.rounds_done, 1u);
    cr_assert_float_eq(st.stale_max, 3.0, 1e-9);
    // round 2 never comes: still pending at step 6 (2 + 4), dropped at step 7 (2 + D)
    float before[NP];
    for (long s = 5; s <= 6; s++)
        cr_assert_eq(sparta_after_step(r.ex, r.params, NP, s), ERR_OK);
    sparta_get_stats(r.ex, &st);
    cr_assert_eq(st.rounds_dropped, 0u, "dropped before its deadline");
    memcpy(before, r.params, sizeof before);
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 7), ERR_OK);
    sparta_get_stats(r.ex, &st);
    cr_assert(st.rounds_dropped >= 1, "round 2 not dropped at its deadline");
    for (size_t i = 0; i < k; i++)
        cr_assert_eq(r.params[idx2[i]], before[idx2[i]]);
    // its values arriving afterwards are counted and never applied
    uint64_t bad = st.msgs_dropped;
    send_values(&r, 2, -5000.0f, r.run_id);
    for (int i = 0; i < 100 && st.msgs_dropped == bad; i++) {
        usleep(10000);
        sparta_get_stats(r.ex, &st);
    }
    cr_assert_eq(st.msgs_dropped, bad + 1, "late message not counted");
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 8), ERR_OK);
    for (size_t i = 0; i < k; i++)
        cr_assert_neq(r.params[idx2[i]], -2500.0f);
    rig_close(&r);
}

// A peer far ahead makes this one jump its round counter (catch_up). Rounds still open are
// applied before the jump, at their staleness in this peer's own steps: the jump itself must
// not count as staleness (it used to: stale_max 21-35 with max_stale 15 on 3 oversubscribed
// peers).
Test(sparta, catch_up_jump_does_not_count_as_staleness) {
    rig r;
    rig_open(&r, 5, "fp32"); // 8 slots
    for (long s = 1; s <= 3; s++)
        cr_assert_eq(sparta_after_step(r.ex, r.params, NP, s), ERR_OK);
    // the peer sends rounds 1 .. 40 in order: 1..3 complete ours, 10.. are beyond our window
    for (long round = 1; round <= 40; round++)
        send_values(&r, round, 1000.0f, r.run_id);
    sparta_stats st;
    sparta_get_stats(r.ex, &st);
    for (int i = 0; i < 1000 && st.msgs_dropped < 31; i++) { // rounds 10..40 filed (dropped)
        usleep(10000);
        sparta_get_stats(r.ex, &st);
    }
    cr_assert_geq(st.msgs_dropped, 31u, "the peer's rounds did not arrive");
    cr_assert_eq(st.rounds_done, 0u);
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 4), ERR_OK); // jumps to round ~41
    sparta_get_stats(r.ex, &st);
    cr_assert_eq(st.rounds_done, 3u, "rounds 1..3 are applied at the jump");
    cr_assert_leq(st.stale_max, 5.0, "staleness %.0f beyond max_stale 5", st.stale_max);
    cr_assert_float_eq(st.stale_max, 3.0, 1e-9); // round 1, posted at step 1, applied at step 4
    rig_close(&r);
}

Test(sparta, forced_delay_applies_a_complete_round_exactly_delay_steps_after_posting) {
    rig_delay = 3;
    rig r;
    rig_open(&r, 5, "fp32");
    uint32_t idx1[NP];
    size_t k = select_indices(SELECT_RANDOM, r.seed, 1, NP, r.k, idx1);
    float x1[NP];
    memcpy(x1, r.params, sizeof x1);
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 1), ERR_OK);
    expect_round_message(&r, 1, x1);
    send_values(&r, 1, 1000.0f, r.run_id);
    cr_assert(sparta_wait_round(r.ex, 1, 5000), "round 1 did not complete");
    for (long s = 2; s <= 3; s++) { // complete, but held back until step 1 + 3
        cr_assert_eq(sparta_after_step(r.ex, r.params, NP, s), ERR_OK);
        cr_assert_eq(memcmp(r.params, x1, sizeof x1), 0, "applied at step %ld, before 1 + 3", s);
    }
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 4), ERR_OK);
    for (size_t i = 0; i < k; i++)
        cr_assert_eq(r.params[idx1[i]], (1000.0f + x1[idx1[i]]) / 2.0f, "index %u", idx1[i]);
    sparta_stats st;
    sparta_get_stats(r.ex, &st);
    cr_assert_eq(st.rounds_done, 1u);
    cr_assert_float_eq(st.stale_max, 3.0, 1e-9);
    rig_close(&r);
}

Test(sparta, garbage_truncated_bad_crc_and_foreign_messages_are_dropped) {
    rig r;
    rig_open(&r, 15, "fp32");
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 1), ERR_OK);
    static uint8_t good[WIRE_HEADER + 4 * NP], bad[WIRE_HEADER + 4 * NP];
    float vals[NP] = {0};
    wire_header h = {.dtype = WIRE_FP32,
                     .run_id = r.run_id,
                     .sender = 0,
                     .kind = WIRE_VALUES,
                     .round = 1,
                     .k = (uint32_t)r.k,
                     .offset = 0,
                     .count = (uint32_t)r.k};
    size_t len = wire_encode(good, &h, vals);
    const char junk[] = "this is not a sparta message at all";
    int sent = 0;
    cr_assert_eq(peer_send(r.peer, 1, PEER_CH_SPARTA, junk, sizeof junk), ERR_OK);
    sent++;
    cr_assert_eq(peer_send(r.peer, 1, PEER_CH_SPARTA, good, len / 2), ERR_OK); // truncated
    sent++;
    memcpy(bad, good, len);
    bad[WIRE_HEADER + 5] ^= 0x40; // payload bit flip: CRC mismatch
    cr_assert_eq(peer_send(r.peer, 1, PEER_CH_SPARTA, bad, len), ERR_OK);
    sent++;
    wire_header h2 = h;
    h2.run_id ^= 1; // another run
    size_t len2 = wire_encode(bad, &h2, vals);
    cr_assert_eq(peer_send(r.peer, 1, PEER_CH_SPARTA, bad, len2), ERR_OK);
    sent++;
    h2 = h;
    h2.round = 1u << 30; // a round far outside the window
    len2 = wire_encode(bad, &h2, vals);
    cr_assert_eq(peer_send(r.peer, 1, PEER_CH_SPARTA, bad, len2), ERR_OK);
    sent++;
    sparta_stats st;
    sparta_get_stats(r.ex, &st);
    for (int i = 0; i < 200 && st.msgs_dropped < (uint64_t)sent; i++) {
        usleep(10000);
        sparta_get_stats(r.ex, &st);
    }
    cr_assert_eq(st.msgs_dropped, (uint64_t)sent);
    // the exchanger is alive and still completes a round with a valid message
    send_values(&r, 1, 3.0f, r.run_id);
    cr_assert(sparta_wait_round(r.ex, 1, 5000), "valid message after garbage was not filed");
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 2), ERR_OK);
    sparta_get_stats(r.ex, &st);
    cr_assert_eq(st.rounds_done, 1u);
    rig_close(&r);
}

// A round whose values hold one NaN or inf is not averaged: the sender is left out of it (here
// the only other peer, so the round is dropped, at once: it does not wait for the deadline), it
// is counted, and the exchanger reports an offence of the sender to the peer layer.
Test(sparta, a_peer_with_non_finite_values_is_left_out_of_the_round_and_reported) {
    rig r;
    rig_open(&r, 15, "fp32");
    float x0[NP];
    memcpy(x0, r.params, sizeof x0);
    const float bad[] = {NAN, INFINITY};
    for (long round = 1; round <= 2; round++) {
        cr_assert_eq(sparta_after_step(r.ex, r.params, NP, round), ERR_OK);
        send_values(&r, round, bad[round - 1], r.run_id);
        cr_assert(sparta_wait_round(r.ex, round, 5000), "round %ld waited for a rejected peer",
                  round);
    }
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 3), ERR_OK);
    for (int i = 0; i < NP; i++)
        cr_assert(isfinite(r.params[i]), "index %d", i);
    sparta_stats st;
    sparta_get_stats(r.ex, &st);
    cr_assert_eq(st.nonfinite, 2u);
    cr_assert_eq(st.rounds_done, 0u);
    cr_assert_geq(st.rounds_dropped, 2u);
    peer_stats ps;
    peer_get_stats(r.g1, &ps);
    cr_assert_eq(ps.offences, 2u);
    cr_assert_eq(ps.expelled, 0u, "net.max_offences = 0 here: never expelled");
    // a valid round is averaged as before
    uint32_t idx[NP];
    size_t k = select_indices(SELECT_RANDOM, r.seed, 3, NP, r.k, idx);
    float x3[NP];
    memcpy(x3, r.params, sizeof x3);
    send_values(&r, 3, 5.0f, r.run_id);
    cr_assert(sparta_wait_round(r.ex, 3, 5000));
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 4), ERR_OK);
    for (size_t i = 0; i < k; i++)
        cr_assert_eq(r.params[idx[i]], (5.0f + x3[idx[i]]) / 2.0f, "index %u", idx[i]);
    rig_close(&r);
}

Test(sparta, bf16_rounds_carry_two_bytes_per_value) {
    rig r;
    rig_open(&r, 15, "bf16");
    cr_assert_eq(sparta_after_step(r.ex, r.params, NP, 1), ERR_OK);
    peer_msg *m = NULL;
    cr_assert_eq(peer_recv(r.peer, PEER_CH_SPARTA, 10000, &m), ERR_OK);
    cr_assert_eq(m->len, WIRE_HEADER + 2 * r.k);
    peer_msg_free(r.peer, m);
    sparta_stats st;
    sparta_get_stats(r.ex, &st);
    // the sender counts once the frame is written, which may be after it arrived here
    for (int i = 0; i < 100 && st.bytes_sent == 0; i++) {
        usleep(10000);
        sparta_get_stats(r.ex, &st);
    }
    cr_assert_eq(st.bytes_sent, WIRE_HEADER + 2 * r.k);
    rig_close(&r);
}

// ---- processes -------------------------------------------------------------------------------

#define SMALL                                                                        \
    "--set model.n_layer=2 --set model.n_embd=32 --set model.n_head=2 "              \
    "--set model.block_size=32 --set train.batch_size=8 --set train.log_interval=1 " \
    "--set train.eval_interval=0 --set train.eval_iters=1 --set train.threads=1 "    \
    "--set sparta.timeout_ms=20000"

typedef tu_cluster cluster;

static void cluster_open(cluster *c, int world) {
    cr_assert_eq(tu_cluster_open(c, world), 0, "cannot set up the cluster");
}

static pid_t start_peer(cluster *c, int rank, const char *extra) {
    char args[4096];
    snprintf(args, sizeof args, "configs/tiny.ini " SMALL " %s", extra);
    pid_t pid = tu_cluster_start(c, rank, args);
    cr_assert(pid > 0);
    return pid;
}

static int wait_exit(pid_t pid, int timeout_s) { return tu_wait_exit(pid, timeout_s); }

static char *peer_log(cluster *c, int rank) { return tu_cluster_log(c, rank); }

// run_all starts world peers with the same extra options and requires every one to succeed.
static void run_all(cluster *c, int world, const char *extra) {
    char args[4096];
    snprintf(args, sizeof args, "configs/tiny.ini " SMALL " %s", extra);
    cr_assert_eq(c->world, world);
    int bad = tu_cluster_run(c, args, 120);
    if (bad >= 0) {
        char *log = tu_cluster_log(c, bad);
        cr_assert_fail("peer %d failed:\n%s", bad, log);
    }
}

static float *load(const char *path, size_t *n) {
    float *p = tu_load_params(path, n);
    cr_assert(p, "%s", err_msg());
    return p;
}

// expect_round_bytes checks rank 0's byte counters after `steps` sync rounds of `want` bytes
// each way (every peer sends and receives the same). A frame is counted when it is written or
// delivered, which can be after the step's metrics row: sync round s completes only once the
// others' values of round s are in (so received >= s rounds) and our round s + 1 is not posted
// before row s is written (so sent <= s rounds); the others have our round s - 1 by then.
static void expect_round_bytes(cluster *c, int steps, double want) {
    char path[800];
    snprintf(path, sizeof path, "%s/rank0/metrics.csv", c->dir);
    double sent = tu_last_metric(path, "bytes_sent"), recv = tu_last_metric(path, "bytes_recv");
    cr_assert(sent >= 0.99 * (steps - 1) * want && sent <= 1.01 * steps * want,
              "sent %.0f bytes in %d rounds of %.0f", sent, steps, want);
    cr_assert(recv >= 0.99 * steps * want && recv <= 1.01 * (steps + 1) * want,
              "received %.0f bytes in %d rounds of %.0f", recv, steps, want);
}

// sync_run runs P = 3 peers with sync rounds and extra settings; every round must complete
// (metrics.csv column sparta_rounds_done) without a timeout and without a catch-up jump. A round
// that waited for its timeout logs "incomplete after": the log tells, not the wall time (which
// depends on the machine).
static void sync_run(const char *extra, int steps, int rounds) {
    cluster c;
    cluster_open(&c, 3);
    char args[1024];
    snprintf(args, sizeof args,
             "--set sparta.p=0.05 --set sparta.sync=true --set sparta.timeout_ms=20000 "
             "--set train.max_iters=%d %s",
             steps, extra);
    run_all(&c, 3, args);
    for (int i = 0; i < 3; i++) {
        char path[700];
        snprintf(path, sizeof path, "%s/rank%d/metrics.csv", c.dir, i);
        cr_assert_eq(tu_last_metric(path, "sparta_rounds_done"), rounds, "rank %d: %s: rounds", i,
                     extra);
        char *log = tu_cluster_log(&c, i);
        cr_assert(!strstr(log, "continuing at round") && !strstr(log, "incomplete after"),
                  "rank %d: %s:\n%s", i, extra, log);
        free(log);
    }
    tu_cluster_close(&c);
}

Test(sparta, sync_rounds_complete_with_max_stale_0_and_with_every_beyond_the_slot_window,
     .timeout = 180) {
    // max_stale = 0: a peer one round ahead must not have its values refused
    sync_run("--set sparta.max_stale=0", 20, 20);
    // every = 20 > max_stale + 2: rounds 20 steps apart are neighbours, not a jump ahead
    sync_run("--set sparta.every=20 --set sparta.max_stale=15", 60, 3);
}

Test(sparta, three_peers_with_full_fraction_stay_bitwise_equal_to_the_mean, .timeout = 180) {
    enum { P = 3, STEPS = 3 };
    cluster c;
    cluster_open(&c, P);
    run_all(&c, P,
            "--set sparta.p=1 --set sparta.sync=true --set train.max_iters=3 "
            "--set train.ckpt_interval=1 --set train.keep_ckpts=0");
    size_t n = 0;
    for (int s = 1; s <= STEPS; s++) {
        float *x[P];
        char path[800];
        for (int i = 0; i < P; i++) {
            snprintf(path, sizeof path, "%s/rank%d/ckpt_%08d.h5", c.dir, i, s);
            x[i] = load(path, &n);
        }
        for (int i = 1; i < P; i++)
            cr_assert_eq(memcmp(x[0], x[i], n * sizeof(float)), 0, "peers differ at step %d", s);
        // the mean computed directly: each peer's own step from the common state, alone
        float *own[P];
        for (int i = 0; i < P; i++) {
            char cmd[4096], *out = NULL, resume[800] = "";
            if (s > 1)
                snprintf(resume, sizeof resume, "--resume %s/rank%d/ckpt_%08d.h5", c.dir, i, s - 1);
            snprintf(cmd, sizeof cmd,
                     "%s train configs/tiny.ini " SMALL " --set data.dir=%s "
                     "--set train.out_dir=%s/alone%d_%d --rank %d --set train.max_iters=%d %s",
                     tu_spartan(), c.data, c.dir, i, s, i, s, resume);
            cr_assert_eq(tu_run(cmd, 60, &out), 0, "%s", out);
            free(out);
            snprintf(path, sizeof path, "%s/alone%d_%d/ckpt_%08d.h5", c.dir, i, s, s);
            own[i] = load(path, &n);
        }
        for (size_t j = 0; j < n; j++) {
            float m = own[0][j];
            for (int i = 1; i < P; i++)
                m += own[i][j];
            m /= (float)P;
            cr_assert_eq(memcmp(&m, &x[0][j], sizeof m), 0, "step %d param %zu: %g vs mean %g", s,
                         j, x[0][j], m);
        }
        for (int i = 0; i < P; i++) {
            free(x[i]);
            free(own[i]);
        }
    }
    // bytes on the wire: per round each peer sends k fp32 values + one header to P-1 peers
    expect_round_bytes(&c, STEPS, (double)(4 * n + WIRE_HEADER) * (P - 1));
    tu_cluster_close(&c);
}

// The rendezvous: 3 peers given the same --join address (the first one owns it) form one group,
// each gets a distinct rank, and with p = 1 sync SPARTA they end on the same bits as the same run
// with --peers (the set of ranks, and so of data streams, is the same).
Test(sparta, peers_joining_one_address_train_as_with_a_peer_list, .timeout = 180) {
    enum { P = 3 };
    cluster c;
    cluster_open(&c, P);
    char args[4096];
    snprintf(args, sizeof args,
             "configs/tiny.ini " SMALL " --set sparta.p=1 --set sparta.sync=true "
             "--set train.max_iters=3");
    int pid[P];
    for (int i = 0; i < P; i++)
        pid[i] = tu_cluster_join(&c, i, args);
    int seen[P] = {0};
    for (int i = 0; i < P; i++) {
        int rc = wait_exit(pid[i], 90);
        char *log = peer_log(&c, i);
        cr_assert_eq(rc, 0, "slot %d exited %d:\n%s", i, rc, log);
        const char *r = strstr(log, " rank=");
        const char *m = strstr(log, "train model");
        cr_assert(m && (r = strstr(m, " rank=")), "%s", log);
        int rank = atoi(r + 6);
        cr_assert(rank >= 0 && rank < P && !seen[rank], "rank %d twice or out of range:\n%s", rank,
                  log);
        seen[rank] = 1;
        free(log);
    }
    size_t n = 0;
    float *x[P];
    char path[800];
    for (int i = 0; i < P; i++) {
        snprintf(path, sizeof path, "%s/rank%d", c.dir, i);
        x[i] = load(path, &n);
    }
    for (int i = 1; i < P; i++)
        if (memcmp(x[0], x[i], n * sizeof(float))) {
            char *l0 = peer_log(&c, 0), *li = peer_log(&c, i);
            cr_assert_fail("joined peers differ:\n%s\nslot %d:\n%s", l0, i, li);
        }
    // the same run with the list
    run_all(&c, P, "--set sparta.p=1 --set sparta.sync=true --set train.max_iters=3 --overwrite");
    snprintf(path, sizeof path, "%s/rank0", c.dir);
    float *y = load(path, &n);
    if (memcmp(x[0], y, n * sizeof(float))) {
        char *l0 = peer_log(&c, 0), *l1 = peer_log(&c, 1), *l2 = peer_log(&c, 2);
        cr_assert_fail("the rendezvous run differs from --peers:\n%s\n---\n%s\n---\n%s", l0, l1,
                       l2);
    }
    free(y);
    for (int i = 0; i < P; i++)
        free(x[i]);
    tu_cluster_close(&c);
}

// A group started by 4 peers at one --join address with room for 5 (net.max_peers): a fifth peer
// that joins while they train is given rank 4 (the lowest free rank, its own data stream),
// catches up with the others' rounds, and then the rounds average all five.
Test(sparta, a_fifth_peer_joins_the_running_group_and_is_given_rank_4, .timeout = 240) {
    enum { P = 5 };
    cluster c;
    cluster_open(&c, P);
    c.world = P - 1; // net.world: four start the group
    char args[4096];
    snprintf(args, sizeof args,
             "configs/tiny.ini " SMALL " --set sparta.p=0.05 --set net.max_peers=%d "
             "--set train.max_iters=100000 --set train.ckpt_interval=0",
             P);
    int pid[P];
    for (int i = 0; i < P - 1; i++)
        pid[i] = tu_cluster_join(&c, i, args);
    char m0[700], m4[700];
    snprintf(m0, sizeof m0, "%s/rank0/metrics.csv", c.dir);
    snprintf(m4, sizeof m4, "%s/rank4/metrics.csv", c.dir);
    for (int i = 0; i < 1200 && tu_last_metric(m0, "sparta_rounds_done") < 20; i++)
        usleep(50000);
    cr_assert(tu_last_metric(m0, "sparta_rounds_done") >= 20, "the four never exchanged");
    pid[P - 1] = tu_cluster_join(&c, P - 1, args);
    // the fifth trains and completes rounds: it has every other member's values
    for (int i = 0; i < 1200 && tu_last_metric(m4, "sparta_rounds_done") < 20; i++)
        usleep(50000);
    char *log4 = peer_log(&c, P - 1);
    cr_assert(tu_last_metric(m4, "sparta_rounds_done") >= 20,
              "the fifth peer exchanged nothing:\n%s", log4);
    const char *m = strstr(log4, "train model"), *r = m ? strstr(m, " rank=") : NULL;
    cr_assert(r && atoi(r + 6) == 4, "the fifth peer was not given rank 4:\n%s", log4);
    free(log4);
    // and the others average its values: rank 0 applies rounds of all five
    for (int i = 0; i < 1200 && tu_last_metric(m0, "sparta_round_peers") < P; i++)
        usleep(50000);
    char *log0 = peer_log(&c, 0);
    cr_assert(strstr(log0, "up: rank=4"), "rank 0 never linked to rank 4:\n%s", log0);
    cr_assert_eq(tu_last_metric(m0, "sparta_round_peers"), P, "rank 0 never averaged 5 peers");
    free(log0);
    for (int i = 0; i < P; i++) {
        kill(pid[i], SIGINT);
        cr_assert_eq(wait_exit(pid[i], 60), 0, "peer %d did not stop cleanly", i);
    }
    tu_cluster_close(&c);
}

Test(sparta, killed_peer_does_not_stall_the_others_and_is_picked_up_again, .timeout = 180) {
    enum { P = 3 };
    cluster c;
    cluster_open(&c, P);
    const char *extra =
        "--set sparta.p=0.05 --set sparta.max_stale=30 --set train.max_iters=100000 "
        "--set train.ckpt_interval=0";
    pid_t pid[P];
    for (int i = 0; i < P; i++)
        pid[i] = start_peer(&c, i, extra);
    char m0[700];
    snprintf(m0, sizeof m0, "%s/rank0/metrics.csv", c.dir);
    // rounds complete with every peer
    for (int i = 0; i < 600 && tu_last_metric(m0, "sparta_rounds_done") < 20; i++)
        usleep(50000);
    cr_assert(tu_last_metric(m0, "sparta_rounds_done") >= 20, "rounds never completed");
    kill(pid[2], SIGKILL);
    waitpid(pid[2], NULL, 0);
    double step_at_kill = tu_last_metric(m0, "step");
    // the others keep stepping: 50 more steps within a bounded time
    for (int i = 0; i < 600 && tu_last_metric(m0, "step") < step_at_kill + 50; i++)
        usleep(50000);
    cr_assert(tu_last_metric(m0, "step") >= step_at_kill + 50, "rank 0 stalled after the kill");
    // its link is down, so rounds complete among the two without waiting for it
    double done_dead = tu_last_metric(m0, "sparta_rounds_done");
    for (int i = 0; i < 600 && tu_last_metric(m0, "sparta_rounds_done") < done_dead + 20; i++)
        usleep(50000);
    cr_assert(tu_last_metric(m0, "sparta_rounds_done") >= done_dead + 20,
              "rounds stopped completing while a peer was dead");
    cr_assert_eq(tu_last_metric(m0, "sparta_round_peers"), 2, "the dead peer was averaged");
    char *log = peer_log(&c, 0);
    cr_assert(strstr(log, "link to rank=2 down"), "the loss was not logged:\n%s", log);
    free(log);
    // restart rank 2 afresh in its folder: rounds complete with all peers again
    char again[1024];
    snprintf(again, sizeof again, "%s --overwrite", extra);
    pid[2] = start_peer(&c, 2, again);
    for (int i = 0; i < 600 && tu_last_metric(m0, "sparta_round_peers") < P; i++)
        usleep(50000);
    cr_assert_eq(tu_last_metric(m0, "sparta_round_peers"), P, "restarted peer was not picked up");
    for (int i = 0; i < P; i++) {
        kill(pid[i], SIGINT);
        cr_assert_eq(wait_exit(pid[i], 60), 0, "peer %d did not stop cleanly", i);
    }
    tu_cluster_close(&c);
}

Test(sparta, ring_all_reduce_agrees_and_sends_two_thirds_of_alltoall, .timeout = 180) {
    enum { P = 3 };
    cluster c;
    cluster_open(&c, P);
    run_all(&c, P,
            "--set sparta.p=1 --set sparta.sync=true --set sparta.reduce=ring "
            "--set train.max_iters=2 --set train.ckpt_interval=1 --set train.keep_ckpts=0");
    size_t n = 0;
    float *x[P], *own[P];
    char path[800];
    for (int i = 0; i < P; i++) {
        snprintf(path, sizeof path, "%s/rank%d/ckpt_%08d.h5", c.dir, i, 1);
        x[i] = load(path, &n);
        char cmd[4096], *out = NULL;
        snprintf(cmd, sizeof cmd,
                 "%s train configs/tiny.ini " SMALL " --set data.dir=%s "
                 "--set train.out_dir=%s/alone%d --rank %d --set train.max_iters=1",
                 tu_spartan(), c.data, c.dir, i, i);
        cr_assert_eq(tu_run(cmd, 60, &out), 0, "%s", out);
        free(out);
        snprintf(path, sizeof path, "%s/alone%d/ckpt_%08d.h5", c.dir, i, 1);
        own[i] = load(path, &n);
    }
    for (int i = 1; i < P; i++)
        cr_assert_eq(memcmp(x[0], x[i], n * sizeof(float)), 0, "ring peers differ");
    // the ring sums in another order than rank order, so compare with a float tolerance
    for (size_t j = 0; j < n; j++) {
        float m = (own[0][j] + own[1][j] + own[2][j]) / 3.0f;
        cr_assert(fabsf(x[0][j] - m) <= 1e-6f * (1.0f + fabsf(m)), "param %zu: %g vs %g", j,
                  x[0][j], m);
    }
    // bytes: P-1 reduce-scatter and P-1 all-gather chunks of k/P values, each with a header
    double payload = 2.0 * (P - 1) / P * 4.0 * (double)n;
    expect_round_bytes(&c, 2, payload + 2 * (P - 1) * WIRE_HEADER);
    for (int i = 0; i < P; i++) {
        free(x[i]);
        free(own[i]);
    }
    tu_cluster_close(&c);
}

// ---- gossip (sparta.fanout) ------------------------------------------------------------------

enum { GW = 5, GF = 2, GROUNDS = 3 };

typedef struct {
    sparta_exchanger *ex;
    float x[NP];
    int rc;
} gossip_peer;

static void *gossip_main(void *arg) {
    gossip_peer *p = arg;
    for (long step = 1; step <= GROUNDS && !p->rc; step++)
        p->rc = sparta_after_step(p->ex, p->x, NP, step);
    return NULL;
}

// Five exchangers with sparta.fanout = 2, p = 1 and sync rounds: in every round each peer sends
// its values to exactly the 2 receivers select_partners names and ends with the mean of its own
// and its 2 senders' values (computed here from the same offsets), and the mean over all peers
// stays what it was.
Test(sparta, gossip_rounds_average_with_the_drawn_partners_only) {
    char *dir = tu_tmpdir("gossip");
    peer_group *g[GW];
    gossip_peer p[GW];
    cfg c;
    cfg_defaults(&c);
    cfg_sparta sc = c.sparta;
    sc.p = 1.0f;
    sc.sync = 1;
    sc.fanout = GF;
    sc.timeout_ms = 10000;
    const uint64_t seed = 7;
    for (int r = 0; r < GW; r++)
        g[r] = tu_group(dir, r, GW, 1);
    cr_assert_eq(peer_wait_view(g[0], GW, 10000), GW, "the group did not form");
    for (int r = 0; r < GW; r++)
        cr_assert_eq(peer_wait_view(g[r], GW, 10000), GW);
    // on the heap: GCC 12 at -O3 -march=native vectorised the loop below with aligned loads
    // from these arrays on a stack they were not aligned on (a SIGSEGV in CI)
    float(*want)[NP] = calloc(GW, sizeof *want), (*next)[NP] = calloc(GW, sizeof *next);
    cr_assert(want && next);
    double sum0 = 0;
    for (int r = 0; r < GW; r++) {
        tu_rand_fill(p[r].x, NP, 100 + (uint64_t)r, -1, 1);
        memcpy(want[r], p[r].x, sizeof *want);
        p[r].rc = 0;
        for (int i = 0; i < NP; i++)
            sum0 += p[r].x[i];
        cr_assert_eq(sparta_create(&p[r].ex, &sc, g[r], r, GW, seed, 0x60551Bull, NP), ERR_OK, "%s",
                     err_msg());
    }
    pthread_t th[GW];
    for (int r = 0; r < GW; r++)
        pthread_create(&th[r], NULL, gossip_main, &p[r]);
    for (int r = 0; r < GW; r++)
        pthread_join(th[r], NULL);
    for (long round = 1; round <= GROUNDS; round++) { // the same rounds, by hand
        int d[GW];
        int f = select_partners(seed, (uint64_t)round, GW, GF, d);
        cr_assert_eq(f, GF);
        for (int r = 0; r < GW; r++)
            for (int i = 0; i < NP; i++) {
                double s = want[r][i];
                for (int j = 0; j < f; j++)
                    s += want[(r - d[j] + GW) % GW][i];
                next[r][i] = (float)(s / (f + 1));
            }
        memcpy(want, next, GW * sizeof *want);
    }
    double sum1 = 0;
    for (int r = 0; r < GW; r++) {
        cr_assert_eq(p[r].rc, ERR_OK, "rank %d: %s", r, err_msg());
        for (int i = 0; i < NP; i++) {
            cr_assert_float_eq(p[r].x[i], want[r][i], 1e-5f, "rank %d value %d: %g, want %g", r, i,
                               p[r].x[i], want[r][i]);
            sum1 += p[r].x[i];
        }
        peer_stats st;
        peer_get_stats(g[r], &st); // the last round's frames may still be on their way out
        for (int i = 0; i < 500 && st.msgs_sent[PEER_CH_SPARTA] < (uint64_t)GF * GROUNDS; i++) {
            sys_sleep_ms(10);
            peer_get_stats(g[r], &st);
        }
        cr_assert_eq(st.msgs_sent[PEER_CH_SPARTA], (uint64_t)GF * GROUNDS,
                     "rank %d sent %llu messages for %d rounds to %d partners", r,
                     (unsigned long long)st.msgs_sent[PEER_CH_SPARTA], GROUNDS, GF);
    }
    cr_assert(fabs(sum1 - sum0) < 1e-3, "the mean moved: %g -> %g", sum0, sum1);
    free(want);
    free(next);
    for (int r = 0; r < GW; r++) {
        sparta_destroy(p[r].ex);
        peer_group_destroy(g[r]);
    }
    tu_rm_rf(dir);
    free(dir);
}
