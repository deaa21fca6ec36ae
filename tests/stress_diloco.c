// stress_diloco.c: a concurrency stress of DiLoCo's fault handling for ThreadSanitizer (`make
// tsan`). Three peers run in one process, each on its own "trainer" thread over the peer layer:
// outer steps every H steps, one peer destroyed halfway, a new one created in its place that
// joins (its state requests read the others' outer state on the links' reader threads while
// their trainers update it). It checks that every peer finishes, that the survivors took every
// outer step, and that all three end on the same theta_g bit for bit. Then three DDP peers (ddp.h)
// average their gradients for a number of steps on their own threads and must end on the same bits.
// TSan reports races on its own. Bounded.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diloco/ddp.h"
#include "diloco/diloco.h"
#include "tests/test_util.h"
#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/base/log.h"

enum { P = 3, N = 20000, H = 5, STEPS = 60 };

typedef struct {
    diloco *d;
    peer_group *g;
    float params[N];
    int rank, rc;
    long first, last; // steps first+1 .. last
    const cfg *c;
} peer;

static void *trainer(void *arg) {
    peer *p = arg;
    peer_wait_view(p->g, P, 10000);
    p->rc = diloco_create(&p->d, &p->c->diloco, p->g, p->rank, P, 0xD1, p->params, N);
    long step = p->first;
    if (!p->rc) p->rc = diloco_join(p->d, p->params, N, &step);
    for (long s = step + 1; s <= p->last && !p->rc; s++) {
        for (int i = 0; i < N; i++)
            p->params[i] += 0.001f * (float)((p->rank + 1) * (i % 7 + 1)); // "training"
        p->rc = diloco_after_step(p->d, p->params, N, &s);                 // may move s on
    }
    if (p->rc) fprintf(stderr, "rank %d: %s\n", p->rank, err_msg());
    return NULL;
}

// A DDP peer: its "gradients" change every step and are averaged with the others'.
typedef struct {
    ddp *d;
    peer_group *grp;
    float g[N];
    int rank, rc;
    const cfg *c;
} ddp_peer;

static void *ddp_trainer(void *arg) {
    ddp_peer *p = arg;
    peer_wait_view(p->grp, P, 10000);
    p->rc = ddp_create(&p->d, &p->c->ddp, p->grp, p->rank, P, 0xDD1, N);
    for (long s = 1; s <= STEPS && !p->rc; s++) {
        for (int i = 0; i < N; i++)
            p->g[i] = 0.5f * p->g[i] + (float)((p->rank + 1) * (i % 5 + 1)) * 1e-3f;
        p->rc = ddp_average(p->d, p->g, N, s);
    }
    if (p->rc) fprintf(stderr, "ddp rank %d: %s\n", p->rank, err_msg());
    return NULL;
}

// ddp_stress runs P DDP peers, each with its own peer group; returns 1 on a failure.
static int ddp_stress(const cfg *c) {
    static ddp_peer peers[P];
    pthread_t th[P];
    char *dir = tu_tmpdir("stress-ddp");
    for (int i = 0; i < P; i++) {
        peers[i].rank = i;
        peers[i].c = c;
        peers[i].grp = tu_group(dir, i, P, 0xDD1);
        pthread_create(&th[i], NULL, ddp_trainer, &peers[i]);
    }
    int bad = 0;
    for (int i = 0; i < P; i++) {
        pthread_join(th[i], NULL);
        bad |= peers[i].rc != 0;
    }
    for (int i = 1; i < P && !bad; i++)
        if (memcmp(peers[0].g, peers[i].g, sizeof peers[0].g)) {
            fprintf(stderr, "ddp peers 0 and %d end on different gradients\n", i);
            bad = 1;
        }
    for (int i = 0; i < P; i++) {
        ddp_stats st;
        if (peers[i].d) ddp_get_stats(peers[i].d, &st);
        if (peers[i].d && st.steps_averaged != STEPS) {
            fprintf(stderr, "ddp rank %d averaged %llu steps, want %d\n", i,
                    (unsigned long long)st.steps_averaged, STEPS);
            bad = 1;
        }
        ddp_destroy(peers[i].d);
    }
    for (int i = 0; i < P; i++)
        peer_group_destroy(peers[i].grp);
    tu_rm_rf(dir);
    free(dir);
    return bad;
}

int main(void) {
    log_set_level(LOG_WARN);
    cfg c;
    cfg_defaults(&c);
    c.diloco.H = H;
    c.diloco.timeout_ms = 2000;
    c.ddp.timeout_ms = 20000;
    char *dir = tu_tmpdir("stress-diloco");
    static peer peers[P + 1];
    for (int i = 0; i <= P; i++) {
        peer *p = &peers[i];
        p->rank = i < P ? i : P - 1; // peers[P] is rank P-1 restarted
        p->first = 0;
        p->last = i == P - 1 ? STEPS / 2 : STEPS;
        p->c = &c;
        if (i < P) p->g = tu_group(dir, p->rank, P, 0xD1);
        for (int j = 0; j < N; j++)
            p->params[j] = (float)j * 1e-3f;
    }
    pthread_t th[P + 1];
    for (int i = 0; i < P; i++)
        pthread_create(&th[i], NULL, trainer, &peers[i]);
    pthread_join(th[P - 1], NULL); // rank P-1 stops halfway and goes away
    diloco_destroy(peers[P - 1].d);
    peer_group_destroy(peers[P - 1].g);
    peers[P].g = tu_group(dir, P - 1, P, 0xD1);       // at the same address
    pthread_create(&th[P], NULL, trainer, &peers[P]); // and comes back: it joins
    int bad = peers[P - 1].rc != 0;
    for (int i = 0; i <= P; i++)
        if (i != P - 1) {
            pthread_join(th[i], NULL);
            bad |= peers[i].rc != 0;
        }
    diloco_stats st;
    for (int i = 0; i < P - 1; i++) {
        diloco_get_stats(peers[i].d, &st);
        if (st.outer_steps != STEPS / H) {
            fprintf(stderr, "rank %d took %llu outer steps, want %d\n", i,
                    (unsigned long long)st.outer_steps, STEPS / H);
            bad = 1;
        }
    }
    const float *g0 = diloco_theta_g(peers[0].d);
    if (memcmp(g0, diloco_theta_g(peers[1].d), N * sizeof(float)) ||
        memcmp(g0, diloco_theta_g(peers[P].d), N * sizeof(float))) {
        fprintf(stderr, "the peers end on different theta_g\n");
        bad = 1;
    }
    for (int i = 0; i <= P; i++)
        if (i != P - 1) {
            diloco_destroy(peers[i].d);
            peer_group_destroy(peers[i].g);
        }
    tu_rm_rf(dir);
    free(dir);
    bad |= ddp_stress(&c);
    printf("%s\n", bad ? "stress_diloco: FAILED" : "stress_diloco: ok");
    return bad;
}
