// bulk_test.c: SPARTA's rounds while a DiLoCo outer all-reduce of GPT-2 124M (124,439,808 fp32
// values, 498 MB per peer) runs on the same links. Two peers, each a peer group (ipc://) with a
// SPARTA exchanger in sync mode (every round waits for the other's values) and the ring
// all-reduce on the ring channel, as `spartan train` runs them. The peer layer sends a link's
// frames in channel order and the all-reduce cuts its transfer into 1 MiB messages, so a SPARTA
// round waits behind at most one of them per hop; a round queued behind the whole transfer would
// take about as long as the all-reduce itself.
//
// Bound: every round that runs entirely inside the all-reduce takes at most a quarter of the
// all-reduce's wall time (a ratio in the same run: the suite runs on machines of any speed), and
// at least 10 rounds complete inside it. On this 2-core VM the all-reduce takes 1-2 s and the
// rounds about 1 ms (max about 10 ms); the test prints the figures.
#include <criterion/criterion.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/allreduce.h"
#include "sparta/peer/peer.h"
#include "sparta/peer/wire.h"
#include "sparta/sparta.h"
#include "tests/test_util.h"
#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/base/sys.h"

#define N_124M     124439808u
#define NS         100000 // SPARTA's model: k = 1000 values per round
#define MAX_ROUNDS 200000 // bounds the round loop (the all-reduce ends it long before)

typedef struct side {
    int rank;
    peer_group *g;
    sparta_exchanger *ex;
    ar_ctx *ar;
    float *x;         // the 124M vector
    float params[NS]; // SPARTA's parameters
    atomic_int ar_done;
    double ar_t0, ar_t1; // ms, monotonic
    int ar_rc;
    // rounds: start and duration of each sparta_after_step
    double *r_t0, *r_ms;
    int rounds, rc;
} side;

static void *ar_main(void *arg) {
    side *s = arg;
    s->ar_t0 = sys_now_ms();
    s->ar_rc = ar_mean(s->ar, s->x, N_124M, 1, 60000, NULL);
    s->ar_t1 = sys_now_ms();
    atomic_store(&s->ar_done, 1);
    return NULL;
}

static side sd[2];
static atomic_long stop_at; // the last step both sides run (LONG_MAX until both all-reduces end)

// rounds_main steps SPARTA (sync: each round waits for the other peer) until both all-reduces are
// over, timing every round. The sides are at most one step apart, so the first to see both done
// sets the last step two ahead, which neither has posted yet: both post every round up to it.
static void *rounds_main(void *arg) {
    side *s = arg;
    for (long step = 1; step <= MAX_ROUNDS && step <= atomic_load(&stop_at) && !s->rc; step++) {
        double t0 = sys_now_ms();
        s->rc = sparta_after_step(s->ex, s->params, NS, step);
        s->r_t0[s->rounds] = t0;
        s->r_ms[s->rounds++] = sys_now_ms() - t0;
        long unset = LONG_MAX;
        if (atomic_load(&sd[0].ar_done) && atomic_load(&sd[1].ar_done))
            atomic_compare_exchange_strong(&stop_at, &unset, step + 2);
    }
    return NULL;
}

Test(bulk, sparta_rounds_stay_fast_while_a_124m_all_reduce_runs, .timeout = 300) {
    cfg c;
    cfg_defaults(&c);
    c.sparta.p = 0.01f;
    c.sparta.sync = 1;
    c.sparta.timeout_ms = 60000;
    char *dir = tu_tmpdir("bulk");
    atomic_store(&stop_at, LONG_MAX);
    for (int i = 0; i < 2; i++) {
        side *s = &sd[i];
        memset(s, 0, sizeof *s);
        s->rank = i;
        s->g = tu_group(dir, i, 2, 7);
        s->x = malloc((size_t)N_124M * sizeof(float));
        cr_assert(s->x);
        for (size_t j = 0; j < N_124M; j++)
            s->x[j] = (float)(j % 1000) * (i ? 1.0f : -1.0f);
        s->r_t0 = calloc(MAX_ROUNDS + 1, sizeof(double));
        s->r_ms = calloc(MAX_ROUNDS + 1, sizeof(double));
        cr_assert_eq(ar_create(&s->ar, s->g, PEER_CH_RING, i, 2, 0xB01C, N_124M, WIRE_FP32), ERR_OK,
                     "%s", err_msg());
    }
    cr_assert(tu_wait_linked(sd[0].g, 0, sd[1].g, 1), "the pair did not connect");
    for (int i = 0; i < 2; i++)
        cr_assert_eq(sparta_create(&sd[i].ex, &c.sparta, sd[i].g, i, 2, 5, 0x5A, NS), ERR_OK, "%s",
                     err_msg());
    pthread_t ar_th[2], r_th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&r_th[i], NULL, rounds_main, &sd[i]);
    for (int i = 0; i < 2; i++)
        pthread_create(&ar_th[i], NULL, ar_main, &sd[i]);
    for (int i = 0; i < 2; i++) {
        pthread_join(ar_th[i], NULL);
        pthread_join(r_th[i], NULL);
    }
    for (int i = 0; i < 2; i++) {
        side *s = &sd[i];
        cr_assert_eq(s->ar_rc, ERR_OK, "rank %d: all-reduce failed", i);
        cr_assert_eq(s->rc, ERR_OK, "rank %d: SPARTA failed", i);
        cr_assert_eq(s->x[1], 0.0f, "rank %d: the all-reduce's mean is wrong", i); // -1 and +1
        double ar_ms = s->ar_t1 - s->ar_t0, max_ms = 0, sum = 0;
        int inside = 0;
        for (int r = 0; r < s->rounds; r++) {
            if (s->r_t0[r] < s->ar_t0 || s->r_t0[r] + s->r_ms[r] > s->ar_t1) continue;
            inside++;
            sum += s->r_ms[r];
            if (s->r_ms[r] > max_ms) max_ms = s->r_ms[r];
        }
        sparta_stats st;
        sparta_get_stats(s->ex, &st);
        printf("rank %d: 124M all-reduce %.0f ms; %d SPARTA rounds inside it, mean %.2f ms, "
               "max %.2f ms (bound %.0f ms); %llu rounds done, %llu late\n",
               i, ar_ms, inside, inside ? sum / inside : 0.0, max_ms, ar_ms / 4,
               (unsigned long long)st.rounds_done, (unsigned long long)st.rounds_late);
        cr_assert(inside >= 10, "rank %d: only %d rounds during the %.0f ms all-reduce", i, inside,
                  ar_ms);
        cr_assert(max_ms <= ar_ms / 4, "rank %d: a round took %.1f ms of a %.0f ms all-reduce", i,
                  max_ms, ar_ms);
    }
    for (int i = 0; i < 2; i++) {
        sparta_destroy(sd[i].ex);
        ar_destroy(sd[i].ar);
    }
    for (int i = 0; i < 2; i++) {
        peer_group_destroy(sd[i].g);
        free(sd[i].x);
        free(sd[i].r_t0);
        free(sd[i].r_ms);
    }
    tu_rm_rf(dir);
    free(dir);
}
