// hello_test.c: the start-up handshake. hello_diff on texts; two meshes that exchange hellos
// on connect; and `spartan train` peers that differ, that cannot be reached, or that never
// exchange, each of which must stop with a message that says why.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sparta/peer/hello.h"
#include "sparta/peer/net.h"
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
    char a[NET_HELLO_MAX], b[NET_HELLO_MAX], out[512];
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

// Two meshes: each gets the other's hello without either calling net_recv, and the hellos never
// show up as messages.
Test(hello, meshes_swap_hellos_on_connect_and_never_deliver_them) {
    int b = tu_free_port_base(4);
    cr_assert(b > 0);
    char a0[64], a1[64];
    snprintf(a0, sizeof a0, "127.0.0.1:%d", b);
    snprintf(a1, sizeof a1, "127.0.0.1:%d", b + 2);
    const char *peers[2] = {a0, a1};
    net_mesh *m[2];
    cr_assert_eq(net_mesh_create(&m[0], 0, 2, peers, NULL), ERR_OK, "%s", err_msg());
    net_set_hello(m[0], "zero", 4);
    cr_assert_eq(net_mesh_create(&m[1], 1, 2, peers, NULL), ERR_OK, "%s", err_msg());
    net_set_hello(m[1], "one", 3);
    char buf[64];
    int n0 = -1, n1 = -1;
    double t0 = sys_now_ms();
    while ((n0 < 0 || n1 < 0) && sys_now_ms() - t0 < 20000) {
        n0 = net_peer_hello(m[0], 1, buf, sizeof buf);
        n1 = net_peer_hello(m[1], 0, buf, sizeof buf);
        sys_sleep_ms(5);
    }
    cr_assert_eq(net_peer_hello(m[0], 1, buf, sizeof buf), 3);
    cr_assert_str_eq(buf, "one");
    cr_assert_eq(net_peer_hello(m[1], 0, buf, sizeof buf), 4);
    cr_assert_str_eq(buf, "zero");
    int peer;
    void *msg;
    size_t len;
    cr_assert_eq(net_recv(m[1], 100, &peer, &msg, &len), ERR_TIMEOUT, "a hello was delivered");
    net_stats st;
    net_get_stats(m[0], &st);
    cr_assert_eq(st.msgs_recv, 0u);
    net_mesh_destroy(m[0]);
    net_mesh_destroy(m[1]);
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
        char *log = tu_cluster_log(&c, i);
        cr_assert_eq(rc[i], 1, "rank %d exited %d:\n%s", i, rc[i], log);
        cr_assert(strstr(log, "runs another configuration") && strstr(log, "train.seed = ") &&
                      strstr(log, "model.n_layer = "),
                  "rank %d:\n%s", i, log);
        cr_assert(!strstr(log, "step=1/"), "rank %d trained anyway:\n%s", i, log);
        free(log);
    }
    tu_cluster_close(&c);
}

Test(hello, unreachable_peers_are_named_with_the_reason_and_the_run_stops) {
    char *dir = tu_data_tmpdir("hello");
    cr_assert(dir);
    int b = tu_free_port_base(4);
    cr_assert(b > 0);
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "%s train " SMALL "--set train.max_iters=3 --set sparta.timeout_ms=500 "
             "--set data.dir=%s/d --set train.out_dir=%s/run "
             "--peers 127.0.0.1:%d,nosuchhost.invalid:7000,127.0.0.1:%d --rank 0",
             tu_spartan(), dir, dir, b, b + 2);
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
