// heartbeat_test.c: failure detection in the peer layer (peer_opts.heartbeat_ms). A pair of
// members over tcp://127.0.0.1 with a cable (test_util.h) on the link rank 0 dials: cut, the link
// goes silent without closing, as behind a dead switch, and both sides take it down within the
// timeout, then link again once it is mended; an idle link stays up on heartbeats alone; a
// pause shorter than the timeout drops nothing; and a frame that takes several timeouts to cross
// a slow cable keeps the link up, because its bytes are heartbeats too. Every wait is bounded and
// waits for an event; the one timed bound (detection) is the property under test.
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sparta/peer/frame.h"
#include "sparta/peer/peer.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"

TestSuite(heartbeat, .timeout = 60);

typedef struct pair {
    peer_group *g[2];
    tu_cable *cable;
} pair;

// pair_open links rank 0 to rank 1 through a cable, with heartbeat timeout hb_ms on both.
static void pair_open(pair *p, int hb_ms) {
    int port[1];
    cr_assert_eq(tu_free_ports(1, port), 0);
    p->cable = tu_cable_open(port[0]);
    cr_assert(p->cable, "no cable");
    char real[64], via[64];
    snprintf(real, sizeof real, "127.0.0.1:%d", port[0]);
    snprintf(via, sizeof via, "127.0.0.1:%d", tu_cable_port(p->cable));
    const char *addrs[2] = {"127.0.0.1:0", via};
    for (int r = 1; r >= 0; r--) {
        peer_opts o = {.listen = r ? real : "127.0.0.1:0",
                       .peers = addrs,
                       .world = 2,
                       .rank = r,
                       .run_id = 5,
                       .build = "test",
                       .tag = "hb-test",
                       .heartbeat_ms = hb_ms};
        cr_assert_eq(peer_group_create(&p->g[r], &o), ERR_OK, "%s", err_msg());
    }
    cr_assert(tu_wait_linked(p->g[0], 0, p->g[1], 1), "the pair did not link");
}

static void pair_close(pair *p) {
    peer_group_destroy(p->g[0]);
    peer_group_destroy(p->g[1]);
    tu_cable_close(p->cable);
}

static peer_stats stats(peer_group *g) {
    peer_stats st;
    peer_get_stats(g, &st);
    return st;
}

// wait_down waits (up to limit_ms) until neither side holds the link; returns the ms it took.
static double wait_down(pair *p, double limit_ms) {
    double t0 = sys_now_ms();
    while ((peer_connected(p->g[0], 1) || peer_connected(p->g[1], 0)) &&
           sys_now_ms() - t0 < limit_ms)
        peer_wait_view(p->g[0], 3, 5); // a bounded sleep on the group's own condition
    return sys_now_ms() - t0;
}

// exchange sends a message each way and checks that it arrives.
static void exchange(pair *p, const char *text) {
    for (int r = 0; r < 2; r++) {
        cr_assert_eq(peer_send(p->g[r], 1 - r, PEER_CH_CONTROL, text, strlen(text) + 1), ERR_OK,
                     "%s", err_msg());
        peer_msg *m = NULL;
        cr_assert_eq(peer_recv(p->g[1 - r], PEER_CH_CONTROL, 10000, &m), ERR_OK, "no '%s'", text);
        cr_assert_str_eq(m->data, text);
        peer_msg_free(p->g[1 - r], m);
    }
}

Test(heartbeat, a_silent_link_is_taken_down_within_the_timeout_and_comes_back_when_mended) {
    enum { HB = 600 };
    pair p;
    pair_open(&p, HB);
    exchange(&p, "before");
    tu_cable_set(p.cable, TU_CABLE_CUT, 0);
    double ms = wait_down(&p, 10 * HB);
    cr_assert(!peer_connected(p.g[0], 1) && !peer_connected(p.g[1], 0),
              "a silent link is still up after %.0f ms", ms);
    // silence starts at the last byte, at most a heartbeat (HB / 5) before the cut
    cr_assert(ms < HB + 400, "took %.0f ms to notice, with a %d ms timeout", ms, HB);
    for (int r = 0; r < 2; r++) {
        peer_stats st = stats(p.g[r]);
        cr_assert(st.timed_out >= 1 && st.suspected >= 1, "rank %d: timed_out %llu suspected %llu",
                  r, (unsigned long long)st.timed_out, (unsigned long long)st.suspected);
    }
    char why[256];
    cr_assert_eq(peer_diagnose(p.g[1], 0, why, sizeof why), PEER_DIAG_LEFT, "%s", why);
    tu_cable_set(p.cable, TU_CABLE_PASS, 0);
    cr_assert(tu_wait_linked(p.g[0], 0, p.g[1], 1), "no link after the cable was mended");
    exchange(&p, "after");
    cr_assert_geq(stats(p.g[0]).links_up, 2);
    pair_close(&p);
}

Test(heartbeat, an_idle_link_stays_up_on_heartbeats_and_a_short_pause_drops_nothing) {
    enum { HB = 1500 };
    pair p;
    pair_open(&p, HB);
    // idle for three timeouts: only heartbeats cross (wait for them to have been counted)
    peer_stats s0 = stats(p.g[1]);
    for (int i = 0; i < 4500 / 50; i++) {
        cr_assert(peer_connected(p.g[0], 1) && peer_connected(p.g[1], 0),
                  "an idle link went down after %d ms", i * 50);
        sys_sleep_ms(50);
    }
    peer_stats s1 = stats(p.g[1]);
    cr_assert_geq(s1.msgs_sent[PEER_CH_SYS] - s0.msgs_sent[PEER_CH_SYS], 3,
                  "too few heartbeats went out");
    // a pause of a quarter of the timeout: silence is at most that plus one heartbeat interval
    tu_cable_set(p.cable, TU_CABLE_CUT, 0);
    sys_sleep_ms(HB / 4);
    tu_cable_set(p.cable, TU_CABLE_PASS, 0);
    exchange(&p, "after the pause");
    for (int r = 0; r < 2; r++) {
        peer_stats st = stats(p.g[r]);
        cr_assert(st.timed_out == 0 && st.links_down == 0, "rank %d: timed_out %llu down %llu", r,
                  (unsigned long long)st.timed_out, (unsigned long long)st.links_down);
    }
    pair_close(&p);
}

Test(heartbeat, a_frame_that_takes_several_timeouts_to_cross_is_its_own_heartbeat) {
    enum { HB = 400 };
    pair p;
    pair_open(&p, HB);
    size_t len = (size_t)4 << 20; // 4 MiB at 2 MB/s: about 2 s, five timeouts
    tu_cable_set(p.cable, TU_CABLE_PASS, 2e6);
    unsigned char *big = malloc(len);
    for (size_t i = 0; i < len; i++)
        big[i] = (unsigned char)(i * 31);
    double t0 = sys_now_ms();
    cr_assert_eq(peer_send_wait(p.g[0], 1, PEER_CH_RING, big, len, 30000), ERR_OK, "%s", err_msg());
    peer_msg *m = NULL;
    cr_assert_eq(peer_recv(p.g[1], PEER_CH_RING, 30000, &m), ERR_OK, "the frame did not arrive");
    double ms = sys_now_ms() - t0;
    cr_assert(m->len == len && !memcmp(m->data, big, len), "the frame changed");
    peer_msg_free(p.g[1], m);
    cr_assert_gt(ms, 2.5 * HB, "the cable did not slow the frame down (%.0f ms)", ms);
    for (int r = 0; r < 2; r++) {
        peer_stats st = stats(p.g[r]);
        cr_assert(st.timed_out == 0 && st.links_down == 0,
                  "rank %d: a %.0f ms transfer timed the link out (%llu)", r, ms,
                  (unsigned long long)st.timed_out);
    }
    tu_cable_set(p.cable, TU_CABLE_PASS, 0);
    exchange(&p, "after the transfer");
    free(big);
    pair_close(&p);
}

// ---- real processes: SIGSTOP -----------------------------------------------------------------

// Two `spartan train` peers (SPARTA every step) with a 1 s timeout. One is stopped (SIGSTOP)
// for 300 ms: nothing is dropped on either side (no timeout, no link down), and it says on
// waking that it was not running. Then it is stopped for 3 s: the other times the link out,
// keeps training alone, and links again when the stopped one runs again (SIGCONT).
#define PEER_ARGS                                                                        \
    "configs/tiny.ini --set model.n_layer=1 --set model.n_embd=32 --set model.n_head=2 " \
    "--set model.block_size=32 --set train.batch_size=8 --set train.eval_interval=0 "    \
    "--set train.threads=1 --set train.log_interval=1 --set train.max_iters=1000000 "    \
    "--set sparta.p=0.01 --set net.heartbeat_timeout=1000"

Test(heartbeat, a_sigstopped_peer_is_kept_below_the_timeout_and_timed_out_above_it) {
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, 2), 0);
    int pid[2];
    for (int r = 0; r < 2; r++)
        pid[r] = tu_cluster_start(&c, r, PEER_ARGS);
    cr_assert_geq(tu_cluster_wait_metric(&c, 1, "sparta_rounds_done", 20, 60), 20, "no rounds:\n%s",
                  tu_cluster_log(&c, 1));
    kill(pid[1], SIGSTOP);
    sys_sleep_ms(300);
    kill(pid[1], SIGCONT);
    double s1 = tu_cluster_metric(&c, 1, "step");
    cr_assert_geq(tu_cluster_wait_metric(&c, 1, "step", s1 + 20, 60), s1 + 20, "rank 1 stalled");
    for (int r = 0; r < 2; r++) {
        cr_assert_eq(tu_cluster_metric(&c, r, "net_timed_out"), 0, "rank %d timed a link out:\n%s",
                     r, tu_cluster_log(&c, r));
        cr_assert_eq(tu_cluster_metric(&c, r, "net_links_down"), 0, "rank %d lost a link", r);
    }
    kill(pid[1], SIGSTOP);
    cr_assert_geq(tu_cluster_wait_metric(&c, 0, "net_timed_out", 1, 30), 1,
                  "rank 0 kept the link:\n%s", tu_cluster_log(&c, 0));
    double s0 = tu_cluster_metric(&c, 0, "step");
    cr_assert_geq(tu_cluster_wait_metric(&c, 0, "step", s0 + 20, 60), s0 + 20,
                  "rank 0 stopped training");
    sys_sleep_ms(1000); // stopped for about 3 s in all
    kill(pid[1], SIGCONT);
    cr_assert_geq(tu_cluster_wait_metric(&c, 0, "net_links_up", 2, 60), 2,
                  "no link after SIGCONT:\n%s", tu_cluster_log(&c, 0));
    char *log = tu_cluster_log(&c, 1);
    cr_assert(strstr(log, "was not running for"), "%s", log);
    free(log);
    for (int r = 0; r < 2; r++) {
        kill(pid[r], SIGINT);
        cr_assert_eq(tu_wait_exit(pid[r], 60), 0, "rank %d:\n%s", r, tu_cluster_log(&c, r));
    }
    tu_cluster_close(&c);
}
