// hello_test.c: the start-up handshake. hello_diff on texts; two meshes that exchange hellos
// on connect; and `spartan train` peers that differ, that cannot be reached, or that never
// exchange, each of which must stop with a message that says why.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sparta/peer/hello.h"
#include "sparta/peer/peer.h"
#include "tests/test_util.h"
#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/base/sys.h"

TestSuite(hello, .timeout = 120);

Test(hello, diff_names_each_differing_key_with_both_values) {
    char out[512];
    cr_assert_eq(hello_diff("a=1\nb=2\n", "a=1\nb=2\n", out, sizeof out), 0);
    cr_assert_str_eq(out, "");
    cr_assert_eq(hello_diff("a=1\nb=2\n", "a=1\nb=3\n", out, sizeof out), 1);
    cr_assert_str_eq(out, "b = 3 there, 2 here");
    // a key only one side has (another build) is named too, from either side
    cr_assert_eq(hello_diff("a=1\n", "a=1\nc=9\n", out, sizeof out), 1);
    cr_assert_str_eq(out, "c = 9 there, (none) here");
    cr_assert_eq(hello_diff("a=1\nc=9\n", "a=2\n", out, sizeof out), 2);
    cr_assert_str_eq(out, "a = 2 there, 1 here; c = (none) there, 9 here");
}

Test(hello, text_holds_the_shared_keys_and_not_the_per_peer_ones) {
    cfg c;
    cfg_defaults(&c);
    char a[HELLO_TEXT_MAX], b[HELLO_TEXT_MAX], out[512];
    hello_text(&c, 3, a, sizeof a);
    cr_assert(strstr(a, "model.n_embd=") && strstr(a, "train.seed=1337\n") &&
                  strstr(a, "sparta.p=") && strstr(a, "diloco.H=") && strstr(a, "world=3\n"),
              "%s", a);
    c.train.threads = 7; // per peer: may differ
    c.sparta.max_stale = 3;
    hello_text(&c, 3, b, sizeof b);
    cr_assert_eq(hello_diff(a, b, out, sizeof out), 0, "%s", out);
    c.train.seed = 5;
    hello_text(&c, 3, b, sizeof b);
    cr_assert_eq(hello_diff(a, b, out, sizeof out), 1);
    cr_assert_str_eq(out, "train.seed = 5 there, 1337 here");
}

// Peers that aggregate differently would drift apart: the rules are shared settings, named when
// they differ; net.max_offences is each peer's own.
Test(hello, peers_with_other_aggregation_rules_differ_by_name) {
    cfg c;
    cfg_defaults(&c);
    char a[HELLO_TEXT_MAX], b[HELLO_TEXT_MAX], out[512];
    hello_text(&c, 5, a, sizeof a);
    c.net.max_offences = 0;
    hello_text(&c, 5, b, sizeof b);
    cr_assert_eq(hello_diff(a, b, out, sizeof out), 0, "%s", out);
    c.sparta.aggregate = CFG_AGG_MEDIAN;
    c.diloco.max_norm = 2;
    hello_text(&c, 5, b, sizeof b);
    cr_assert_eq(hello_diff(a, b, out, sizeof out), 2);
    cr_assert_str_eq(out, "sparta.aggregate = median there, mean here; diloco.max_norm = 2 there, "
                          "0 here");
}

static peer_group *group_with(const char *dir, int rank, const char *shared) {
    char a0[PEER_ADDR_MAX], a1[PEER_ADDR_MAX];
    snprintf(a0, sizeof a0, "ipc://%s/h0", dir);
    snprintf(a1, sizeof a1, "ipc://%s/h1", dir);
    const char *peers[2] = {a0, a1};
    peer_opts o = {.listen = peers[rank],
                   .peers = peers,
                   .world = 2,
                   .rank = rank,
                   .run_id = 5,
                   .shared = shared};
    peer_group *g;
    cr_assert_eq(peer_group_create(&g, &o), ERR_OK, "%s", err_msg());
    return g;
}

// hello_wait over real groups: peers with the same settings start together; a peer whose
// settings differ is refused by the peer layer, and its start fails naming the key.
Test(hello, the_start_waits_for_the_peers_and_fails_naming_a_mismatched_key) {
    char *dir = tu_tmpdir("hello");
    peer_group *g0 = group_with(dir, 0, "train.seed=1\n"),
               *g1 = group_with(dir, 1, "train.seed=1\n");
    int n = -1;
    cr_assert_eq(hello_wait(g0, 2, 10000, 0, "test", &n), ERR_OK, "%s", err_msg());
    cr_assert_eq(n, 1);
    peer_group_destroy(g1);
    g1 = group_with(dir, 1, "train.seed=2\n");
    cr_assert_eq(hello_wait(g1, 2, 10000, 0, "test", &n), ERR_PEER);
    cr_assert(strstr(err_msg(), "another configuration") && strstr(err_msg(), "train.seed"), "%s",
              err_msg());
    cr_assert_eq(n, 0);
    // allowed alone, the same start goes on
    cr_assert_eq(hello_wait(g1, 2, 100, 1, "test", &n), ERR_OK, "%s", err_msg());
    peer_group_destroy(g1);
    peer_group_destroy(g0);
    tu_rm_rf(dir);
    free(dir);
}

// A peer that was linked and left (its short run ended first) is not waited for, and is not
// "no peer could be reached": the start goes on alone, at once instead of after the 20 s wait.
Test(hello, a_start_whose_every_peer_was_here_and_left_goes_on_alone_at_once) {
    char *dir = tu_tmpdir("hello");
    peer_group *g0 = group_with(dir, 0, "train.seed=1\n"),
               *g1 = group_with(dir, 1, "train.seed=1\n");
    cr_assert_eq(peer_wait_view(g0, 2, 10000), 2);
    peer_group_destroy(g1);
    for (int i = 0; i < 200 && peer_connected(g0, 1); i++)
        peer_wait_view(g0, 3, 50); // wakes on every view change
    cr_assert(!peer_connected(g0, 1), "rank 1's link outlived it");
    int n = -1;
    double t0 = sys_now_ms();
    cr_assert_eq(hello_wait(g0, 2, 20000, 0, "test", &n), ERR_OK, "%s", err_msg());
    cr_assert_eq(n, 0);
    cr_assert(sys_now_ms() - t0 < 10000, "waited %.0f ms for a peer that left", sys_now_ms() - t0);
    peer_group_destroy(g0);
    tu_rm_rf(dir);
    free(dir);
}

#define SMALL                                                                            \
    "configs/tiny.ini --set model.n_layer=1 --set model.n_embd=16 --set model.n_head=2 " \
    "--set model.block_size=16 --set train.batch_size=4 --set train.threads=1 "          \
    "--set train.eval_interval=0 --set sparta.timeout_ms=10000 "

// run_pair starts two peers with args0 and args1 and returns both exit statuses.
static void run_pair(tu_cluster *c, const char *args0, const char *args1, int *rc) {
    int pid[2] = {tu_cluster_start(c, 0, args0), tu_cluster_start(c, 1, args1)};
    cr_assert(pid[0] > 0 && pid[1] > 0);
    for (int i = 0; i < 2; i++)
        rc[i] = tu_wait_exit(pid[i], 90);
}

Test(hello, peers_with_another_seed_stop_and_say_what_differs) {
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, 2), 0);
    int rc[2];
    run_pair(&c, SMALL "--set train.max_iters=20",
             SMALL "--set train.max_iters=20 --set train.seed=7 --set model.n_layer=2", rc);
    for (int i = 0; i < 2; i++) {
        char *log = tu_cluster_log(&c, i), *other = tu_cluster_log(&c, 1 - i);
        cr_assert_eq(rc[i], 1, "rank %d exited %d:\n%s", i, rc[i], log);
        cr_assert(strstr(log, "runs another configuration") && strstr(log, "train.seed = ") &&
                      strstr(log, "model.n_layer = "),
                  "rank %d:\n%s\nthe other:\n%s", i, log, other);
        free(other);
        cr_assert(!strstr(log, "step=1/"), "rank %d trained anyway:\n%s", i, log);
        free(log);
    }
    tu_cluster_close(&c);
}

Test(hello, unreachable_peers_are_named_with_the_reason_and_the_run_stops_unless_resumed) {
    char *dir = tu_data_tmpdir("hello");
    cr_assert(dir);
    int port[2];
    cr_assert_eq(tu_free_ports(2, port), 0);
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "%s train " SMALL "--set train.max_iters=3 --set sparta.timeout_ms=500 "
             "--set data.dir=%s/d --set train.out_dir=%s/run --set net.insecure=true "
             "--peers 127.0.0.1:%d,nosuchhost.invalid:7000,127.0.0.1:%d --rank 0",
             tu_spartan(), dir, dir, port[0], port[1]);
    int rc = tu_run(cmd, 60, &out);
    cr_assert_eq(rc, 1, "rc %d:\n%s", rc, out);
    cr_assert(strstr(out, "peer 1 (nosuchhost.invalid:7000) not connected: cannot resolve host"),
              "%s", out);
    cr_assert(strstr(out, "peer 2 (127.0.0.1:") && strstr(out, "refused"), "%s", out);
    cr_assert(strstr(out, "no peer could be reached") && strstr(out, "net.allow_alone"), "%s", out);
    free(out);
    // with net.allow_alone it trains alone, and says it starts without them
    char alone[4200];
    snprintf(alone, sizeof alone, "%s --set net.allow_alone=true", cmd);
    rc = tu_run(alone, 60, &out);
    cr_assert_eq(rc, 0, "rc %d:\n%s", rc, out);
    cr_assert(strstr(out, "starting with 0 of 2 other peers") && strstr(out, "step=3/3"), "%s",
              out);
    free(out);
    // a peer resuming that run (its peers may have finished without it) goes on alone without
    // net.allow_alone, and says so
    char again[4200];
    snprintf(again, sizeof again, "%s --resume auto --set train.max_iters=5", cmd);
    rc = tu_run(again, 60, &out);
    cr_assert_eq(rc, 0, "rc %d:\n%s", rc, out);
    cr_assert(strstr(out, "starting with 0 of 2 other peers") && strstr(out, "step=5/5") &&
                  strstr(out, "since the resume at step 3: it finished alone"),
              "%s", out);
    free(out);
    tu_rm_rf(dir);
    free(dir);
}

// Both peers connect, but no SPARTA round falls in 3 steps (every 5): the run exchanged nothing
// and must not look like a success.
Test(hello, a_run_that_never_exchanged_exits_non_zero_unless_allowed) {
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, 2), 0);
    const char *args = SMALL "--set train.max_iters=3 --set sparta.every=5";
    int rc[2];
    run_pair(&c, args, args, rc);
    for (int i = 0; i < 2; i++) {
        char *log = tu_cluster_log(&c, i);
        cr_assert_eq(rc[i], 1, "rank %d exited %d:\n%s", i, rc[i], log);
        cr_assert(strstr(log, "no exchange with any peer happened"), "rank %d:\n%s", i, log);
        free(log);
    }
    char allowed[1024];
    snprintf(allowed, sizeof allowed, "%s --set net.allow_alone=true --overwrite", args);
    run_pair(&c, allowed, allowed, rc);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(rc[i], 0, "rank %d with net.allow_alone exited %d", i, rc[i]);
    tu_cluster_close(&c);
}

// Three peers, the third with another seed: the peer layer refuses it on both sides, the third
// stops naming the key, and the good pair trains on and exchanges.
Test(hello, a_mismatched_peer_is_refused_and_the_good_peers_train_on) {
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, 3), 0);
    // DiLoCo outer steps make the good pair exchange for sure (the agreement waits 1 s for the
    // refused peer, then the two average among themselves)
    const char *good =
        SMALL "--set train.max_iters=20 --set diloco.H=10 --set diloco.timeout_ms=1000";
    int pid[3] = {tu_cluster_start(&c, 0, good), tu_cluster_start(&c, 1, good),
                  tu_cluster_start(&c, 2,
                                   SMALL "--set train.max_iters=20 --set diloco.H=10 "
                                         "--set diloco.timeout_ms=1000 --set train.seed=7")};
    int rc[3];
    for (int i = 0; i < 3; i++)
        rc[i] = tu_wait_exit(pid[i], 90);
    char *log = tu_cluster_log(&c, 2);
    cr_assert_eq(rc[2], 1, "the mismatched peer exited %d:\n%s", rc[2], log);
    cr_assert(strstr(log, "runs another configuration") && strstr(log, "train.seed = "), "%s", log);
    free(log);
    for (int i = 0; i < 2; i++) {
        log = tu_cluster_log(&c, i);
        cr_assert_eq(rc[i], 0, "good rank %d exited %d:\n%s", i, rc[i], log);
        cr_assert(strstr(log, "refused") && strstr(log, "train.seed = "), "rank %d:\n%s", i, log);
        char path[800];
        snprintf(path, sizeof path, "%s/rank%d/metrics.csv", c.dir, i);
        cr_assert_eq(tu_last_metric(path, "diloco_outer_steps"), 2, "rank %d:\n%s", i, log);
        cr_assert(strstr(log, "2 of 3 peers present"), "rank %d:\n%s", i, log);
        free(log);
    }
    tu_cluster_close(&c);
}

// A stranger connects to a peer's port before the other peer starts, speaks nng's SP header and
// sends garbage, and keeps its connection open: the two real peers still complete their rounds
// (before the peer layer, the stranger held the PAIR slot and 0 of 150 rounds completed).
Test(hello, a_stranger_on_a_peer_port_does_not_stop_the_exchange) {
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, 2), 0);
    const char *args = SMALL "--set train.max_iters=30 --set sparta.sync=true";
    int pid1 = tu_cluster_start(&c, 1, args);
    cr_assert(pid1 > 0);
    int port = atoi(strrchr(c.peers, ':') + 1), fd = -1;
    for (int i = 0; i < 400 && fd < 0; i++) { // until rank 1 listens
        fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
            close(fd);
            fd = -1;
            sys_sleep_ms(25);
        }
    }
    cr_assert(fd >= 0, "rank 1 never listened on %d", port);
    static const unsigned char sp[8] = {0, 'S', 'P', 0, 0, 0x10, 0, 0};
    char junk[2048];
    memset(junk, 0x5A, sizeof junk);
    cr_assert_eq(write(fd, sp, sizeof sp), (ssize_t)sizeof sp);
    cr_assert_eq(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    int pid0 = tu_cluster_start(&c, 0, args);
    int rc0 = tu_wait_exit(pid0, 90), rc1 = tu_wait_exit(pid1, 90);
    close(fd);
    char *log = tu_cluster_log(&c, 0);
    cr_assert(rc0 == 0 && rc1 == 0, "exits %d %d:\n%s", rc0, rc1, log);
    char path[800];
    snprintf(path, sizeof path, "%s/rank0/metrics.csv", c.dir);
    cr_assert_geq(tu_last_metric(path, "sparta_rounds_done"), 30, "rounds:\n%s", log);
    free(log);
    tu_cluster_close(&c);
}
