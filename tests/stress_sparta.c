// stress_sparta.c: a concurrency stress of the SPARTA exchanger for ThreadSanitizer (`make
// tsan`; Criterion's process arena does not start under TSan, so this is a plain program). P
// exchangers run in one process, each driven by its own "trainer" thread over the peer layer,
// in alltoall and ring mode, synchronous and not, and one is destroyed while traffic flows. It
// checks the invariants that hold under any interleaving and exits non-zero on a violation; TSan
// reports data races on its own. Every loop is bounded.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/sparta.h"
#include "tests/test_util.h"
#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/base/log.h"

enum { P = 3, N = 20000, STEPS = 200 };

typedef struct {
    sparta_exchanger *ex;
    peer_group *g;
    float params[N];
    int rank, rc;
    long steps;
    const cfg *c;
} peer;

// trainer waits for its group to connect, creates its peer's exchanger, then steps.
static void *trainer(void *arg) {
    peer *p = arg;
    if (peer_wait_view(p->g, P, 10000) != P) fprintf(stderr, "rank %d: peers missing\n", p->rank);
    p->rc = sparta_create(&p->ex, &p->c->sparta, p->g, p->rank, P, 7, 42, N);
    if (p->rc) fprintf(stderr, "create %d: %s\n", p->rank, err_msg());
    for (long s = 1; s <= p->steps && !p->rc; s++) {
        for (int i = 0; i < N; i++)
            p->params[i] += 0.001f * (float)(p->rank + 1); // "training"
        p->rc = sparta_after_step(p->ex, p->params, N, s);
    }
    return NULL;
}

static int run(const char *reduce, int sync, int kill_one) {
    static peer peers[P];
    cfg c;
    cfg_defaults(&c);
    c.sparta.p = 0.05f;
    c.sparta.sync = sync;
    c.sparta.max_stale = 5;
    c.sparta.timeout_ms = 2000;
    char kv[64];
    snprintf(kv, sizeof kv, "sparta.reduce=%s", reduce);
    if (cfg_set(&c, kv)) return fprintf(stderr, "%s\n", err_msg()), 1;
    char *dir = tu_tmpdir("stress");
    pthread_t th[P];
    for (int i = 0; i < P; i++) {
        peer *p = &peers[i];
        memset(p, 0, sizeof *p);
        p->rank = i;
        p->steps = kill_one && i == P - 1 ? STEPS / 4 : STEPS;
        p->c = &c;
        p->g = tu_group(dir, i, P, 42);
        for (int j = 0; j < N; j++)
            p->params[j] = (float)j;
    }
    for (int i = 0; i < P; i++)
        pthread_create(&th[i], NULL, trainer, &peers[i]);
    int bad = 0;
    if (kill_one) { // the last peer stops early and is destroyed while the others go on
        pthread_join(th[P - 1], NULL);
        sparta_destroy(peers[P - 1].ex);
        peer_group_destroy(peers[P - 1].g);
        peers[P - 1].ex = NULL;
        peers[P - 1].g = NULL;
    }
    for (int i = 0; i < P - (kill_one ? 1 : 0); i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < P; i++) {
        if (!peers[i].ex) continue;
        sparta_stats st;
        sparta_get_stats(peers[i].ex, &st);
        uint64_t rounds = st.rounds_done + st.rounds_late + st.rounds_dropped;
        // every round posted before the last max_stale steps has been resolved exactly once
        if (peers[i].rc || rounds + 6 < STEPS || rounds > STEPS) {
            fprintf(stderr, "%s sync=%d kill=%d rank %d: rc %d, %llu rounds resolved of %d\n",
                    reduce, sync, kill_one, i, peers[i].rc, (unsigned long long)rounds, STEPS);
            bad = 1;
        }
        if (sync && !kill_one && st.rounds_done != STEPS) {
            fprintf(stderr, "%s sync rank %d: only %llu rounds complete\n", reduce, i,
                    (unsigned long long)st.rounds_done);
            bad = 1;
        }
        sparta_destroy(peers[i].ex);
    }
    for (int i = 0; i < P; i++)
        peer_group_destroy(peers[i].g);
    tu_rm_rf(dir);
    free(dir);
    printf("%s sync=%d kill=%d: %s\n", reduce, sync, kill_one, bad ? "FAILED" : "ok");
    return bad;
}

int main(void) {
    log_set_level(LOG_WARN);
    int bad = 0;
    bad |= run("alltoall", 0, 0);
    bad |= run("alltoall", 1, 0);
    bad |= run("ring", 1, 0);
    bad |= run("ring", 0, 0);
    bad |= run("alltoall", 0, 1);
    printf("%s\n", bad ? "stress: FAILED" : "stress: ok");
    return bad;
}
