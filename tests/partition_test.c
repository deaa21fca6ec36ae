// partition_test.c: no split brain. Four `spartan train` peers (SPARTA off, DiLoCo H = 10) on
// 127.0.0.1, with a cable (test_util.h) on every link, so the test can cut the network between
// any two groups of peers: the links go silent (they do not close), the heartbeats time them
// out, and each side goes on with what it has. In a 1+3 partition only the three commit outer
// steps; the one keeps its inner steps and takes their state once the cables are mended. In a
// 2+2 partition neither side commits; after the heal all four commit together again. Throughout,
// every outer step number has one theta_g: the peers log its CRC32C with each outer step they
// commit or take, and the test compares them across all logs. Every wait is bounded and waits
// for an event (a log line, a metric).
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_util.h"

TestSuite(partition, .timeout = 300);

enum { P = 4 };

#define ARGS                                                                                 \
    "configs/tiny.ini --set model.n_layer=2 --set model.n_embd=32 --set model.n_head=2 "     \
    "--set model.block_size=32 --set train.batch_size=8 --set train.eval_interval=0 "        \
    "--set train.threads=1 --set sparta.p=0 --set diloco.H=10 --set diloco.timeout_ms=1500 " \
    "--set net.heartbeat_timeout=500 --set train.max_iters=1000000 --set train.log_interval=1"

typedef struct mesh {
    tu_cluster c;
    tu_cable *cab[P][P]; // cab[i][j], i < j: the link rank i dials to rank j
    int pid[P];
} mesh;

// mesh_start starts peer i (again) with ARGS and extra.
static void mesh_start(mesh *m, int i, const char *extra) {
    char peers[512] = "", args[2048];
    for (int k = 0; k < P; k++) // its own address and the lower ranks' as they are
        snprintf(peers + strlen(peers), sizeof peers - strlen(peers), "%s127.0.0.1:%d",
                 k ? "," : "", k > i ? tu_cable_port(m->cab[i][k]) : tu_cluster_port(&m->c, k));
    snprintf(args, sizeof args, "%s %s", ARGS, extra);
    m->pid[i] = tu_cluster_start_peers(&m->c, i, args, peers);
    cr_assert_gt(m->pid[i], 0);
}

static void mesh_open(mesh *m, const char *extra) {
    memset(m, 0, sizeof *m);
    cr_assert_eq(tu_cluster_open(&m->c, P), 0);
    for (int i = 0; i < P; i++)
        for (int j = i + 1; j < P; j++) {
            m->cab[i][j] = tu_cable_open(tu_cluster_port(&m->c, j));
            cr_assert(m->cab[i][j], "no cable");
        }
    for (int i = 0; i < P; i++)
        mesh_start(m, i, extra);
}

// cut sets every cable between peers of different sides to CUT, the others to PASS.
static void cut(mesh *m, const int *side) {
    for (int i = 0; i < P; i++)
        for (int j = i + 1; j < P; j++)
            tu_cable_set(m->cab[i][j], side[i] != side[j] ? TU_CABLE_CUT : TU_CABLE_PASS, 0);
}

static double metric(mesh *m, int r, const char *col);
static double wait_metric(mesh *m, int r, const char *col, double v, int limit_s);

static double outer(mesh *m, int r) { return metric(m, r, "diloco_outer_steps"); }

static double wait_outer(mesh *m, int r, double v, int limit_s) {
    return wait_metric(m, r, "diloco_outer_steps", v, limit_s);
}

// metric / wait_metric: column col of rank r's metrics.csv (tu_cluster_metric).
static double metric(mesh *m, int r, const char *col) { return tu_cluster_metric(&m->c, r, col); }

static double wait_metric(mesh *m, int r, const char *col, double v, int limit_s) {
    return tu_cluster_wait_metric(&m->c, r, col, v, limit_s);
}

// count returns how often needle occurs in rank r's log.
static int count(mesh *m, int r, const char *needle) {
    char *log = tu_cluster_log(&m->c, r);
    int n = 0;
    for (const char *p = log; (p = strstr(p, needle)); p++)
        n++;
    free(log);
    return n;
}

// wait_count waits (at most limit_s) until needle occurs at least n times in rank r's log.
static int wait_count(mesh *m, int r, const char *needle, int n, int limit_s) {
    int k = 0;
    for (int i = 0; i < limit_s * 20 && (k = count(m, r, needle)) < n; i++)
        usleep(50000);
    return k;
}

// all_four_commit waits until every peer has committed one more outer step with all four.
static void all_four_commit(mesh *m, const char *after) {
    int four[P];
    for (int r = 0; r < P; r++)
        four[r] = count(m, r, "peers=4/4");
    for (int r = 0; r < P; r++)
        cr_assert_gt(wait_count(m, r, "peers=4/4", four[r] + 1, 60), four[r],
                     "rank %d never committed with all four after %s:\n%s", r, after,
                     tu_cluster_log(&m->c, r));
}

// one_theta checks that every outer step number has one theta_g CRC in all the logs and returns
// how many outer steps were logged. After a whole-cluster restart (every peer killed at once, then
// all resumed: each log then holds a "resumed from" line) the outer steps after `kept`, the newest
// one any checkpoint held, were lost with the processes and are committed again: above `kept` the
// lines before the restart and those after it are checked each among themselves. kept < 0: no
// restart.
static int one_theta(mesh *m, long kept) {
    enum { MAX = 100000 };
    unsigned *crc = calloc(2 * MAX, sizeof *crc);
    int *who = calloc(2 * MAX, sizeof *who), steps = 0;
    for (int r = 0; r < P; r++) {
        char *log = tu_cluster_log(&m->c, r);
        const char *restart = kept >= 0 ? strstr(log, "resumed from") : NULL;
        for (const char *p = log; (p = strstr(p, "outer step=")); p++) {
            long t = atol(p + strlen("outer step="));
            const char *eol = strchr(p, '\n'), *th = strstr(p, "theta=");
            if (!th || (eol && th > eol) || t <= 0 || t >= MAX) continue;
            long k = t + (restart && p > restart && t > kept ? MAX : 0);
            unsigned c = (unsigned)strtoul(th + 6, NULL, 16);
            if (!who[k]) {
                who[k] = r + 1;
                crc[k] = c;
                steps++;
            }
            cr_assert_eq(crc[k], c, "outer step %ld: theta %08x on rank %d, %08x on rank %d", t,
                         crc[k], who[k] - 1, c, r);
        }
        free(log);
    }
    free(crc);
    free(who);
    return steps;
}

// resumed_outer returns the newest outer step (H steps each) that the peers resumed from: the
// largest "resumed from PATH at step N" in their logs, divided by H; -1 if none resumed.
static long resumed_outer(mesh *m, int H) {
    long best = -1;
    for (int r = 0; r < P; r++) {
        char *log = tu_cluster_log(&m->c, r);
        const char *p = strstr(log, "resumed from"), *at = p ? strstr(p, " at step ") : NULL;
        if (at) {
            long o = atol(at + strlen(" at step ")) / H;
            best = o > best ? o : best;
        }
        free(log);
    }
    return best;
}

static void mesh_stop(mesh *m) {
    for (int i = 0; i < P; i++)
        kill(m->pid[i], SIGINT);
    for (int i = 0; i < P; i++)
        cr_assert_eq(tu_wait_exit(m->pid[i], 60), 0, "peer %d failed:\n%s", i,
                     tu_cluster_log(&m->c, i));
}

static void mesh_close(mesh *m) {
    for (int i = 0; i < P; i++)
        for (int j = i + 1; j < P; j++)
            tu_cable_close(m->cab[i][j]);
    tu_cluster_close(&m->c);
}

Test(partition, only_a_majority_commits_and_the_minority_takes_its_state_after_the_heal) {
    const char *NQ = "diloco_no_quorum";
    mesh m;
    mesh_open(&m, "");
    cr_assert_geq(wait_outer(&m, 0, 2, 120), 2, "no outer steps:\n%s", tu_cluster_log(&m.c, 0));

    // 1 + 3: rank 3 alone
    double n3 = metric(&m, 3, NQ);
    cut(&m, (const int[P]){0, 0, 0, 1});
    cr_assert_geq(wait_metric(&m, 3, NQ, n3 + 1, 60), n3 + 1,
                  "rank 3 went on committing alone:\n%s", tu_cluster_log(&m.c, 3));
    double o3 = outer(&m, 3), o0 = outer(&m, 0);
    cr_assert_geq(wait_outer(&m, 0, o0 + 3, 60), o0 + 3, "the three stopped committing:\n%s",
                  tu_cluster_log(&m.c, 0));
    cr_assert_geq(wait_metric(&m, 3, NQ, n3 + 3, 60), n3 + 3, "rank 3 is stuck");
    cr_assert_eq(outer(&m, 3), o3, "rank 3 committed an outer step alone");
    double maj = outer(&m, 0);
    int took = count(&m, 3, "took the outer state");
    cut(&m, (const int[P]){0, 0, 0, 0});
    cr_assert_gt(wait_count(&m, 3, "took the outer state", took + 1, 60), took,
                 "rank 3 did not take the majority's state:\n%s", tu_cluster_log(&m.c, 3));
    cr_assert_geq(wait_outer(&m, 3, maj, 60), maj);
    // all four in one committed view again (else the last view may hold three, of which two
    // are a majority)
    all_four_commit(&m, "the 1+3 heal");

    // 2 + 2: nobody has a majority
    double n0 = metric(&m, 0, NQ), n2 = metric(&m, 2, NQ);
    cut(&m, (const int[P]){0, 0, 1, 1});
    cr_assert_geq(wait_metric(&m, 0, NQ, n0 + 1, 60), n0 + 1, "ranks 0 and 1 still commit:\n%s",
                  tu_cluster_log(&m.c, 0));
    cr_assert_geq(wait_metric(&m, 2, NQ, n2 + 1, 60), n2 + 1, "ranks 2 and 3 still commit:\n%s",
                  tu_cluster_log(&m.c, 2));
    double at[P];
    for (int r = 0; r < P; r++)
        at[r] = outer(&m, r);
    cr_assert_geq(wait_metric(&m, 0, NQ, n0 + 4, 60), n0 + 4, "rank 0 is stuck");
    cr_assert_geq(wait_metric(&m, 2, NQ, n2 + 4, 60), n2 + 4, "rank 2 is stuck");
    for (int r = 0; r < P; r++)
        cr_assert_eq(outer(&m, r), at[r], "rank %d committed in a 2+2 partition", r);
    cut(&m, (const int[P]){0, 0, 0, 0});
    all_four_commit(&m, "the 2+2 heal");
    mesh_stop(&m);
    int steps = one_theta(&m, -1);
    cr_assert_gt(steps, 4, "%d outer steps in the logs:\n%s", steps, tu_cluster_log(&m.c, 0));
    mesh_close(&m);
}

// A power cut: every peer is killed at once (SIGKILL, between checkpoints that need not be at the
// same step everywhere), then all restart with --resume auto. Each resumes its own newest
// checkpoint, the peers agree on the newest committed state among them, and every outer step
// from then on is committed by all four with one theta_g. Outer steps up to the newest one a
// checkpoint held have one CRC in all logs, before and after the cut; the ones after it died with
// the processes, are committed again, and have one CRC among the lines after the restart.
Test(partition, a_cluster_killed_at_once_resumes_and_agrees_on_one_state) {
    const char *EXTRA = "--set train.ckpt_interval=7 --set train.keep_ckpts=2 --resume auto";
    mesh m;
    mesh_open(&m, EXTRA);
    cr_assert_geq(wait_outer(&m, 0, 3, 120), 3, "no outer steps:\n%s", tu_cluster_log(&m.c, 0));
    for (int r = 0; r < P; r++)
        kill(m.pid[r], SIGKILL);
    for (int r = 0; r < P; r++)
        waitpid(m.pid[r], NULL, 0);
    double before = 0;
    for (int r = 0; r < P; r++) {
        double o = outer(&m, r);
        before = o > before ? o : before;
    }
    for (int r = 0; r < P; r++)
        mesh_start(&m, r, EXTRA);
    for (int r = 0; r < P; r++)
        cr_assert_gt(wait_count(&m, r, "--resume auto: ", 1, 60), 0, "rank %d did not resume:\n%s",
                     r, tu_cluster_log(&m.c, r));
    all_four_commit(&m, "the restart");
    all_four_commit(&m, "the restart");
    for (int r = 0; r < P; r++)
        cr_assert_gt(outer(&m, r), before, "rank %d is not past outer step %.0f", r, before);
    mesh_stop(&m);
    long kept = resumed_outer(&m, 10);
    cr_assert_geq(kept, 0, "no peer logged where it resumed");
    int steps = one_theta(&m, kept);
    cr_assert_gt(steps, 4, "%d outer steps in the logs", steps);
    mesh_close(&m);
}
