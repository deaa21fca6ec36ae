// state_test.c: a joiner takes the DiLoCo state (theta_g, momentum, outer step) from a live
// member, in one process: three peer groups over ipc://, ranks 0 and 1 hold the same outer state
// (loaded from one checkpoint), rank 2 starts fresh and joins. Its parameters and its outer state
// then equal the members' bit for bit; a copy that a member damages after taking its CRCs fails
// the end-to-end check and is fetched again from the other member; and a member that dies in the
// middle of a copy (its group closed once part of the state has crossed, on a link slowed by the
// peer layer's emulation) leaves the joiner to fetch from the other member. Waits are bounded.
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diloco/diloco.h"
#include "sparta/peer/peer.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"
#include "train/ckpt.h"

TestSuite(state, .timeout = 120);

enum { N = 3000000, OUTER = 5, STEP = 57 }; // 12 MB per vector: two chunks of the copy each

typedef struct world3 {
    char *dir;
    peer_group *g[3];
    diloco *d[3];
    float *theta, *mom, *params;
} world3;

static cfg_diloco dcfg(void) {
    return (cfg_diloco){.H = 10, .lr = 0.7f, .momentum = 0.9f, .nesterov = 1, .timeout_ms = 5000};
}

// group2 makes rank 2's group: its links read at rate_mbit (0: full speed).
static peer_group *group2(const char *dir, double rate_mbit) {
    char addr[3][PEER_ADDR_MAX];
    const char *peers[3];
    for (int i = 0; i < 3; i++) {
        snprintf(addr[i], sizeof addr[i], "ipc://%s/g%d", dir, i);
        peers[i] = addr[i];
    }
    peer_opts o = {.listen = peers[2],
                   .peers = peers,
                   .world = 3,
                   .rank = 2,
                   .run_id = 9,
                   .tag = "test-net",
                   .rate_mbit = rate_mbit};
    peer_group *g;
    cr_assert_eq(peer_group_create(&g, &o), ERR_OK, "%s", err_msg());
    return g;
}

// open3 gives ranks 0 and 1 one outer state (OUTER outer steps, inner step STEP) from a
// checkpoint, and rank 2 a fresh one.
static void open3(world3 *w, double rate_mbit) {
    memset(w, 0, sizeof *w);
    w->dir = tu_tmpdir("state");
    w->theta = malloc(N * sizeof(float));
    w->mom = malloc(N * sizeof(float));
    w->params = malloc(N * sizeof(float));
    tu_rand_fill(w->theta, N, 1, -1, 1);
    tu_rand_fill(w->mom, N, 2, -0.1f, 0.1f);
    tu_rand_fill(w->params, N, 3, -1, 1);
    char path[600];
    snprintf(path, sizeof path, "%s/outer.h5", w->dir);
    ckpt_writer *cw;
    size_t shape[1] = {N};
    cr_assert_eq(ckpt_writer_open(&cw, path), ERR_OK);
    cr_assert_eq(ckpt_write_tensor(cw, "outer/theta_g", w->theta, 1, shape), ERR_OK);
    cr_assert_eq(ckpt_write_tensor(cw, "outer/momentum", w->mom, 1, shape), ERR_OK);
    cr_assert_eq(ckpt_write_attr_i64(cw, "outer_steps", OUTER), ERR_OK);
    cr_assert_eq(ckpt_writer_commit(cw), ERR_OK);
    cfg_diloco dc = dcfg();
    for (int r = 0; r < 3; r++) {
        w->g[r] = r == 2 ? group2(w->dir, rate_mbit) : tu_group(w->dir, r, 3, 9);
        cr_assert_eq(diloco_create(&w->d[r], &dc, w->g[r], r, 3, 77, w->params, N), ERR_OK, "%s",
                     err_msg());
    }
    for (int r = 0; r < 2; r++) {
        ckpt_reader *cr;
        cr_assert_eq(ckpt_reader_open(&cr, path), ERR_OK);
        cr_assert_eq(diloco_load(w->d[r], cr), ERR_OK, "%s", err_msg());
        ckpt_reader_close(cr);
        long step = STEP; // where they are: after_step records it (not an outer step: 57 % 10)
        cr_assert_eq(diloco_after_step(w->d[r], w->params, N, &step), ERR_OK);
    }
    cr_assert(peer_wait_view(w->g[2], 3, 10000) == 3, "rank 2 did not link to both");
    cr_assert(tu_wait_linked(w->g[0], 0, w->g[1], 1), "ranks 0 and 1 did not link");
}

static void close3(world3 *w) {
    for (int r = 0; r < 3; r++) {
        diloco_destroy(w->d[r]);
        peer_group_destroy(w->g[r]);
    }
    tu_rm_rf(w->dir);
    free(w->dir);
    free(w->theta);
    free(w->mom);
    free(w->params);
}

// check_joined: rank 2's parameters and theta_g are the members' theta_g, its momentum (saved
// to a checkpoint and read back) theirs, its outer step and step theirs.
static void check_joined(world3 *w, const float *p2, long step) {
    cr_assert_eq(memcmp(p2, w->theta, N * sizeof(float)), 0, "the joiner's params differ");
    cr_assert_eq(memcmp(diloco_theta_g(w->d[2]), w->theta, N * sizeof(float)), 0,
                 "the joiner's theta_g differs");
    cr_assert_eq(diloco_outer_steps(w->d[2]), OUTER);
    cr_assert_eq(step, STEP);
    char path[600];
    snprintf(path, sizeof path, "%s/joined.h5", w->dir);
    ckpt_writer *cw;
    cr_assert_eq(ckpt_writer_open(&cw, path), ERR_OK);
    cr_assert_eq(diloco_save(w->d[2], cw), ERR_OK);
    cr_assert_eq(ckpt_writer_commit(cw), ERR_OK);
    ckpt_reader *cr;
    float *m = malloc(N * sizeof(float));
    size_t shape[1] = {N};
    cr_assert_eq(ckpt_reader_open(&cr, path), ERR_OK);
    cr_assert_eq(ckpt_read_tensor(cr, "outer/momentum", m, 1, shape), ERR_OK);
    ckpt_reader_close(cr);
    cr_assert_eq(memcmp(m, w->mom, N * sizeof(float)), 0, "the joiner's momentum differs");
    free(m);
}

static diloco_stats stats(diloco *d) {
    diloco_stats st;
    diloco_get_stats(d, &st);
    return st;
}

Test(state, a_joiner_takes_the_members_state_bit_for_bit) {
    world3 w;
    open3(&w, 0);
    float *p2 = calloc(N, sizeof(float));
    long step = 0;
    cr_assert_eq(diloco_join(w.d[2], p2, N, &step), ERR_OK, "%s", err_msg());
    check_joined(&w, p2, step);
    diloco_stats st = stats(w.d[2]);
    cr_assert(st.resyncs == 1 && st.states_bad == 0 && st.state_retries == 0,
              "resyncs %llu bad %llu retries %llu", (unsigned long long)st.resyncs,
              (unsigned long long)st.states_bad, (unsigned long long)st.state_retries);
    free(p2);
    close3(&w);
}

Test(state, a_copy_damaged_by_its_sender_fails_the_check_and_comes_from_the_other_member) {
    world3 w;
    open3(&w, 0);
    diloco_corrupt_replies(w.d[0], 1); // rank 0 is asked first (equal states: the lower rank)
    float *p2 = calloc(N, sizeof(float));
    long step = 0;
    cr_assert_eq(diloco_join(w.d[2], p2, N, &step), ERR_OK, "%s", err_msg());
    check_joined(&w, p2, step);
    diloco_stats st = stats(w.d[2]);
    cr_assert(st.states_bad == 1 && st.state_retries == 1, "bad %llu retries %llu",
              (unsigned long long)st.states_bad, (unsigned long long)st.state_retries);
    free(p2);
    close3(&w);
}

typedef struct joiner {
    world3 *w;
    float *p2;
    long step;
    int rc;
} joiner;

static void *join_main(void *arg) {
    joiner *j = arg;
    j->rc = diloco_join(j->w->d[2], j->p2, N, &j->step);
    return NULL;
}

Test(state, a_member_that_dies_mid_copy_leaves_the_joiner_to_fetch_from_the_other) {
    world3 w;
    open3(&w, 400); // 24 MB at 400 Mbit/s: about half a second a copy
    joiner j = {.w = &w, .p2 = calloc(N, sizeof(float))};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, join_main, &j), 0);
    // once a third of a copy has crossed, rank 0 (asked first) dies
    peer_stats ps;
    for (int i = 0; i < 2000; i++) {
        peer_get_stats(w.g[2], &ps);
        if (ps.bytes_recv[PEER_CH_STATE] > (uint64_t)N * 8 / 3) break;
        sys_sleep_ms(5);
    }
    cr_assert_gt(ps.bytes_recv[PEER_CH_STATE], (uint64_t)N * 8 / 3, "the copy did not start");
    cr_assert_lt(ps.bytes_recv[PEER_CH_STATE], (uint64_t)N * 8, "the copy was over too soon");
    peer_group_close(w.g[0]);
    pthread_join(th, NULL);
    cr_assert_eq(j.rc, ERR_OK, "%s", err_msg());
    check_joined(&w, j.p2, j.step);
    cr_assert_eq(stats(w.d[2]).state_retries, 1);
    free(j.p2);
    close3(&w);
}

// open_behind: rank 2 holds the members' outer state too (it restarted from a checkpoint of the
// same outer step), with parameters of its own.
static float *open_behind(world3 *w) {
    open3(w, 0);
    char path[600];
    snprintf(path, sizeof path, "%s/outer.h5", w->dir);
    ckpt_reader *cr;
    cr_assert_eq(ckpt_reader_open(&cr, path), ERR_OK);
    cr_assert_eq(diloco_load(w->d[2], cr), ERR_OK, "%s", err_msg());
    ckpt_reader_close(cr);
    float *p2 = malloc(N * sizeof(float));
    tu_rand_fill(p2, N, 4, -1, 1);
    return p2;
}

Test(state, a_peer_behind_inside_the_outer_interval_takes_the_step_and_keeps_its_params) {
    world3 w;
    float *p2 = open_behind(&w), *own = malloc(N * sizeof(float));
    memcpy(own, p2, N * sizeof(float));
    long step = STEP - 6; // its checkpoint is 6 steps older than the others' step
    cr_assert_eq(diloco_join(w.d[2], p2, N, &step), ERR_OK, "%s", err_msg());
    cr_assert_eq(step, STEP, "continues at step %ld, not the members' %d", step, STEP);
    cr_assert_eq(memcmp(p2, own, N * sizeof(float)), 0, "its own parameters were replaced");
    cr_assert_eq(diloco_outer_steps(w.d[2]), OUTER);
    cr_assert_eq(stats(w.d[2]).resyncs, 0, "a state was copied that it already had");
    long ahead = STEP + 1; // a peer further on than everyone stays where it is
    cr_assert_eq(diloco_join(w.d[2], p2, N, &ahead), ERR_OK, "%s", err_msg());
    cr_assert_eq(ahead, STEP + 1);
    free(own);
    free(p2);
    close3(&w);
}

typedef struct outer_job {
    diloco *d;
    float *params;
    long step;
    int rc;
} outer_job;

static void *outer_main(void *arg) {
    outer_job *j = arg;
    j->rc = diloco_after_step(j->d, j->params, N, &j->step);
    return NULL;
}

Test(state, a_peer_behind_members_waiting_in_an_outer_step_joins_that_step) {
    world3 w;
    float *p2 = open_behind(&w);
    // ranks 0 and 1 reach the boundary of outer step OUTER + 1 (step 60) and wait for rank 2
    outer_job j[2];
    pthread_t th[2];
    for (int r = 0; r < 2; r++) {
        j[r] = (outer_job){.d = w.d[r], .params = malloc(N * sizeof(float)), .step = 60};
        memcpy(j[r].params, w.params, N * sizeof(float));
        cr_assert_eq(pthread_create(&th[r], NULL, outer_main, &j[r]), 0);
    }
    peer_stats a, b; // both are in it once they have proposed its members
    for (int i = 0; i < 2000; i++) {
        peer_get_stats(w.g[0], &a);
        peer_get_stats(w.g[1], &b);
        if (a.msgs_sent[PEER_CH_RING] && b.msgs_sent[PEER_CH_RING]) break;
        sys_sleep_ms(5);
    }
    cr_assert(a.msgs_sent[PEER_CH_RING] && b.msgs_sent[PEER_CH_RING],
              "the members did not start the outer step");
    long step = 41;
    cr_assert_eq(diloco_join(w.d[2], p2, N, &step), ERR_OK, "%s", err_msg());
    cr_assert_eq(step, 59, "continues at step %ld: one step before the members' boundary", step);
    step++; // its next inner step reaches the boundary: the three commit the outer step
    cr_assert_eq(diloco_after_step(w.d[2], p2, N, &step), ERR_OK, "%s", err_msg());
    for (int r = 0; r < 2; r++) {
        pthread_join(th[r], NULL);
        cr_assert_eq(j[r].rc, ERR_OK);
        cr_assert_eq(diloco_outer_steps(w.d[r]), OUTER + 1);
        cr_assert_eq(memcmp(diloco_theta_g(w.d[r]), diloco_theta_g(w.d[2]), N * sizeof(float)), 0,
                     "rank %d and rank 2 hold different theta_g", r);
        free(j[r].params);
    }
    cr_assert_eq(diloco_outer_steps(w.d[2]), OUTER + 1);
    free(p2);
    close3(&w);
}
