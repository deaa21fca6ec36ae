// bench_elastic.c: failure detection, state transfer and rejoining, as `BENCH` lines:
//   detect_ms             from SIGKILL of a member (a process of its own: this program run as
//                         `bench_elastic --member ...`) to its removal from the view of both
//                         survivors (this process's two groups), median of 5; the kernel closes
//                         a dead process's sockets, so this is the link-down path
//   detect_ms_silent      the same for a member whose link goes silent without closing (a cable
//                         cut, tests/test_util.h: a machine that lost power or a partition):
//                         what net.heartbeat_timeout (1000 ms here) decides, median of 5
//   state_transfer_vs_nng the DiLoCo state of GPT-2 124M (theta_g and the momentum, 2 x
//                         124,439,808 floats: 995.5 MB) copied by a joiner over loopback TCP
//                         (diloco_join: chunked requests, the end-to-end CRC check, and the
//                         joiner's parameters set to theta_g) over the same bytes through a plain
//                         nng stream (8 MiB writes) from a 995.5 MB buffer into another,
//                         interleaved rounds; `_hot`: the plain stream from one 8 MiB buffer into
//                         another, again and again (both stay in the cache)
//   state_transfer_mb_s   the joiner's rate (MB/s, median over the rounds)
// `bench_elastic --transfer` runs the state transfer alone.
//   heartbeat_bytes_s     what an idle member sends per second in heartbeats, per link (and for
//                         47 links, a member of 48): 8 members in this process, idle for 3 s,
//                         their SYS frames counted (25 bytes each with its header)
//   rejoin_s              from the start of a restarted `spartan train` peer (3 peers, SPARTA
//                         every 5 steps, DiLoCo H = 50) to its first contributed SPARTA round,
//                         median of 5 (and the max)
#include <nng/nng.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "diloco/diloco.h"
#include "sparta/peer/peer.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"

enum { REPS = 5 };
#define N124M 124439808ul

// member_main: `--member A0,A1,A2 RANK`: be member RANK of the static group until killed.
static int member_main(char *list, int rank) {
    const char *peers[3];
    char *save = NULL;
    for (int i = 0; i < 3; i++)
        peers[i] = strtok_r(i ? NULL : list, ",", &save);
    peer_opts o = {.listen = peers[rank], .peers = peers, .world = 3, .rank = rank, .run_id = 3};
    peer_group *g;
    if (peer_group_create(&g, &o)) return 1;
    for (;;)
        sys_sleep_ms(1000);
}

static peer_group *member(const char *const *peers, int rank) {
    peer_opts o = {.listen = peers[rank], .peers = peers, .world = 3, .rank = rank, .run_id = 3};
    peer_group *g;
    if (peer_group_create(&g, &o)) {
        fprintf(stderr, "bench_elastic: %s\n", err_msg());
        exit(1);
    }
    return g;
}

// wait_gone waits (at most 20 s) until neither survivor holds a link to rank 2; returns the ms.
static double wait_gone(peer_group *a, peer_group *b, double t0) {
    while ((peer_connected(a, 2) || peer_connected(b, 2)) && sys_now_ms() - t0 < 20000)
        peer_wait_view(a, 4, 1);
    return sys_now_ms() - t0;
}

// detect measures one removal: rank 2 is a process (kill) or this process's group behind a cable
// (cut). Returns the ms, or -1.
static double detect(const char *self, int kill_it) {
    int port[3];
    if (tu_free_ports(3, port)) return -1;
    char a[3][64], via[200];
    for (int i = 0; i < 3; i++)
        snprintf(a[i], sizeof a[i], "127.0.0.1:%d", port[i]);
    tu_cable *cab[2] = {NULL, NULL};
    const char *p0[3] = {a[0], a[1], a[2]}, *p1[3] = {a[0], a[1], a[2]};
    char v0[64], v1[64];
    if (!kill_it) { // ranks 0 and 1 dial rank 2 through a cable each
        cab[0] = tu_cable_open(port[2]);
        cab[1] = tu_cable_open(port[2]);
        snprintf(v0, sizeof v0, "127.0.0.1:%d", tu_cable_port(cab[0]));
        snprintf(v1, sizeof v1, "127.0.0.1:%d", tu_cable_port(cab[1]));
        p0[2] = v0;
        p1[2] = v1;
    }
    pid_t pid = -1;
    peer_group *g2 = NULL;
    if (kill_it) {
        snprintf(via, sizeof via, "%s,%s,%s", a[0], a[1], a[2]);
        pid = fork();
        if (pid == 0) {
            execl(self, self, "--member", via, "2", (char *)NULL);
            _exit(127);
        }
    } else {
        const char *p2[3] = {a[0], a[1], a[2]}; // it listens on its real address
        g2 = member(p2, 2);
    }
    peer_group *g0 = member(p0, 0), *g1 = member(p1, 1);
    double ms = -1;
    if (peer_wait_view(g0, 3, 10000) == 3 && peer_wait_view(g1, 3, 10000) == 3) {
        double t0 = sys_now_ms();
        if (kill_it) {
            kill(pid, SIGKILL);
        } else {
            tu_cable_set(cab[0], TU_CABLE_CUT, 0);
            tu_cable_set(cab[1], TU_CABLE_CUT, 0);
        }
        ms = wait_gone(g0, g1, t0);
    }
    if (kill_it) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    peer_group_destroy(g0);
    peer_group_destroy(g1);
    peer_group_destroy(g2);
    tu_cable_close(cab[0]);
    tu_cable_close(cab[1]);
    return ms;
}

// ---- state transfer --------------------------------------------------------------------------

typedef struct xfer {
    peer_group *g[2];
    diloco *d[2];
    float *params, *p1;
    char *dir;
} xfer;

static int xfer_open(xfer *x, size_t n) {
    x->dir = tu_tmpdir("elastic");
    x->params = xalloc_aligned(n * sizeof(float));
    x->p1 = xalloc_aligned(n * sizeof(float));
    tu_rand_fill(x->params, n, 1, -1, 1);
    memset(x->p1, 0, n * sizeof(float));
    cfg_diloco dc = {.H = 10, .lr = 0.7f, .momentum = 0.9f, .nesterov = 1, .timeout_ms = 30000};
    int port[2];
    char a[2][64];
    if (tu_free_ports(2, port)) return -1;
    const char *peers[2] = {a[0], a[1]};
    for (int r = 0; r < 2; r++)
        snprintf(a[r], sizeof a[r], "127.0.0.1:%d", port[r]); // loopback TCP, as the plain stream
    for (int r = 0; r < 2; r++) {
        peer_opts o = {.listen = peers[r], .peers = peers, .world = 2, .rank = r, .run_id = 11};
        if (peer_group_create(&x->g[r], &o)) return -1;
        if (diloco_create(&x->d[r], &dc, x->g[r], r, 2, 5, x->params, n)) return -1;
    }
    return tu_wait_linked(x->g[0], 0, x->g[1], 1) ? 0 : -1;
}

// xfer_run: one copy of rank 0's state by rank 1 (rank 0 is one outer step ahead of it: it
// loaded a state of outer step 1 once; rank 1 is set back to 0 before each copy).
static int xfer_run(void *arg, int warm, int n, double *v) {
    xfer *x = arg;
    for (int i = 0; i < warm + n; i++) {
        long step = 0;
        double t0 = sys_now_s();
        int rc = diloco_join(x->d[1], x->p1, N124M, &step);
        if (rc || diloco_outer_steps(x->d[1]) != 1) {
            fprintf(stderr, "bench_elastic: the copy failed: %s\n", err_msg());
            return -1;
        }
        if (i >= warm) v[i - warm] = sys_now_s() - t0;
        diloco_set_outer_steps(x->d[1], 0); // the next one copies again
    }
    return 0;
}

// A plain nng stream over loopback: the same bytes in 8 MiB writes, from one buffer of total
// bytes into another (whole) or from one 8 MiB buffer into another, again and again (hot: both
// stay in the cache).
typedef struct plain {
    nng_stream_listener *l;
    nng_stream *s, *c;
    unsigned char *buf, *rbuf;
    size_t total;
    int whole;
    pthread_t th;
} plain;

static int io(nng_stream *s, void *p, size_t n, int send) {
    nng_aio *aio;
    if (nng_aio_alloc(&aio, NULL, NULL)) return -1;
    size_t done = 0;
    int rv = 0;
    while (done < n && !rv) {
        nng_iov iov = {(char *)p + done, n - done};
        nng_aio_set_iov(aio, 1, &iov);
        if (send)
            nng_stream_send(s, aio);
        else
            nng_stream_recv(s, aio);
        nng_aio_wait(aio);
        rv = nng_aio_result(aio);
        done += nng_aio_count(aio);
    }
    nng_aio_free(aio);
    return rv ? -1 : 0;
}

static void *plain_recv(void *arg) {
    plain *p = arg;
    for (size_t off = 0; off < p->total; off += (size_t)8 << 20) {
        size_t len = p->total - off < ((size_t)8 << 20) ? p->total - off : (size_t)8 << 20;
        if (io(p->c, p->rbuf + (p->whole ? off : 0), len, 0)) break;
    }
    return NULL;
}

static int plain_run(void *arg, int warm, int n, double *v) {
    plain *p = arg;
    for (int i = 0; i < warm + n; i++) {
        double t0 = sys_now_s();
        pthread_create(&p->th, NULL, plain_recv, p);
        int rc = 0;
        for (size_t off = 0; off < p->total && !rc; off += (size_t)8 << 20) {
            size_t len = p->total - off < ((size_t)8 << 20) ? p->total - off : (size_t)8 << 20;
            rc = io(p->s, p->buf + (p->whole ? off : 0), len, 1);
        }
        pthread_join(p->th, NULL);
        if (rc) return -1;
        if (i >= warm) v[i - warm] = sys_now_s() - t0;
    }
    return 0;
}

static int plain_open(plain *p, size_t total, int whole) {
    int port[1];
    char url[64];
    if (tu_free_ports(1, port)) return -1;
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port[0]);
    size_t bytes = whole ? total : (size_t)8 << 20;
    p->total = total;
    p->whole = whole;
    p->buf = xalloc_aligned(bytes);
    p->rbuf = xalloc_aligned(bytes);
    memset(p->buf, 7, bytes);
    memset(p->rbuf, 0, bytes);
    nng_stream_dialer *d;
    nng_aio *a1, *a2;
    if (nng_stream_listener_alloc(&p->l, url) || nng_stream_listener_listen(p->l) ||
        nng_stream_dialer_alloc(&d, url) || nng_aio_alloc(&a1, NULL, NULL) ||
        nng_aio_alloc(&a2, NULL, NULL))
        return -1;
    nng_stream_listener_accept(p->l, a1);
    nng_stream_dialer_dial(d, a2);
    nng_aio_wait(a1);
    nng_aio_wait(a2);
    if (nng_aio_result(a1) || nng_aio_result(a2)) return -1;
    p->c = nng_aio_get_output(a1, 0);
    p->s = nng_aio_get_output(a2, 0);
    nng_aio_free(a1);
    nng_aio_free(a2);
    return 0;
}

// ---- rejoin ----------------------------------------------------------------------------------

// rows_with counts the rows of a metrics.csv and finds, after the first `skip`, one whose column
// col is >= 1. Returns 1 if found.
static int contributed(const char *path, const char *col, int skip, int *rows) {
    char *text = NULL;
    *rows = 0;
    if (tu_read_file(path, &text, NULL)) return 0;
    char *line = text, *nl = strchr(line, '\n');
    if (!nl) {
        free(text);
        return 0;
    }
    *nl = 0;
    int idx = -1, k = 0;
    for (char *f = line, *e; f; f = e ? e + 1 : NULL, k++) {
        e = strchr(f, ',');
        if (e) *e = 0;
        if (!strcmp(f, col)) idx = k;
    }
    int found = 0;
    for (line = nl + 1; idx >= 0 && (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = 0;
        if ((*rows)++ < skip) continue;
        const char *f = line;
        for (int i = 0; i < idx && f; i++) {
            f = strchr(f, ',');
            if (f) f++;
        }
        if (f && atof(f) >= 1) found = 1;
    }
    free(text);
    return found;
}

static int rejoin(double *s, int n) {
    tu_cluster c;
    if (tu_cluster_open(&c, 3)) return -1;
    const char *args = "configs/tiny.ini --set train.eval_interval=0 --set train.threads=1 "
                       "--set train.max_iters=1000000 --set train.log_interval=1 "
                       "--set sparta.p=0.005 --set sparta.every=5 --set diloco.H=50 "
                       "--set diloco.timeout_ms=5000 --set train.ckpt_interval=50 "
                       "--set train.keep_ckpts=2";
    int pid[3];
    for (int r = 0; r < 3; r++)
        pid[r] = tu_cluster_start(&c, r, args);
    char m2[700];
    snprintf(m2, sizeof m2, "%s/rank2/metrics.csv", c.dir);
    int rows = 0, rc = 0;
    for (int i = 0; i < 600 && !contributed(m2, "sparta_rounds_done", 0, &rows); i++)
        sys_sleep_ms(50);
    char again[1024];
    snprintf(again, sizeof again, "%s --resume auto", args);
    for (int k = 0; k < n && !rc; k++) {
        kill(pid[2], SIGKILL);
        waitpid(pid[2], NULL, 0);
        contributed(m2, "sparta_rounds_done", 0, &rows);
        double t0 = sys_now_ms();
        pid[2] = tu_cluster_start(&c, 2, again);
        int got = 0, r2;
        while (!got && sys_now_ms() - t0 < 60000) {
            got = contributed(m2, "sparta_rounds_done", rows, &r2);
            if (!got) sys_sleep_ms(20);
        }
        s[k] = (sys_now_ms() - t0) / 1e3;
        if (!got) rc = -1;
    }
    for (int r = 0; r < 3; r++) {
        kill(pid[r], SIGKILL);
        waitpid(pid[r], NULL, 0);
    }
    if (rc)
        fprintf(stderr, "bench_elastic: a restarted peer did not contribute:\n%s\n",
                tu_cluster_log(&c, 2));
    tu_cluster_close(&c);
    return rc;
}

// heartbeat_bytes measures the heartbeat bytes per second and link of 8 idle members.
static double heartbeat_bytes(void) {
    enum { W = 8, IDLE_MS = 3000 };
    char *dir = tu_tmpdir("hb");
    peer_group *g[W];
    for (int r = 0; r < W; r++)
        g[r] = tu_group(dir, r, W, 21);
    for (int r = 0; r < W; r++)
        if (peer_wait_view(g[r], W, 10000) != W) return -1;
    peer_stats a[W], b[W];
    for (int r = 0; r < W; r++)
        peer_get_stats(g[r], &a[r]);
    double t0 = sys_now_ms();
    sys_sleep_ms(IDLE_MS);
    double s = (sys_now_ms() - t0) / 1e3, frames = 0;
    for (int r = 0; r < W; r++) {
        peer_get_stats(g[r], &b[r]);
        frames += (double)(b[r].msgs_sent[PEER_CH_SYS] - a[r].msgs_sent[PEER_CH_SYS]);
    }
    for (int r = 0; r < W; r++)
        peer_group_destroy(g[r]);
    tu_rm_rf(dir);
    free(dir);
    return frames * 25 / s / W / (W - 1);
}

// transfer measures state_transfer_*: rank 1 copies rank 0's state, against both plain streams.
static int transfer(void) {
    xfer x;
    plain p, hot;
    if (xfer_open(&x, N124M) || plain_open(&p, 2 * N124M * sizeof(float), 1) ||
        plain_open(&hot, 2 * N124M * sizeof(float), 0)) {
        fprintf(stderr, "bench_elastic: %s\n", err_msg());
        return 1;
    }
    diloco_set_outer_steps(x.d[0], 1); // rank 0 is ahead: rank 1 copies its state
    int rounds = tu_bench_rounds("elastic", 3, 2), reps = 1;
    double *all = calloc((size_t)(3 * rounds), sizeof(double));
    double *med = calloc((size_t)(3 * rounds), sizeof(double));
    tu_side sides[3] = {
        {"state", xfer_run, &x, 1, reps, all, med},
        {"nng", plain_run, &p, 1, reps, all + rounds, med + rounds},
        {"nng_hot", plain_run, &hot, 1, reps, all + 2 * rounds, med + 2 * rounds},
    };
    if (tu_interleave(sides, 3, rounds)) return 1;
    double ratio[16], hot_ratio[16], mbs[16];
    for (int r = 0; r < rounds; r++) {
        ratio[r] = med[rounds + r] / med[r];
        hot_ratio[r] = med[2 * rounds + r] / med[r];
        mbs[r] = 2.0 * N124M * 4 / med[r] / 1e6;
    }
    tu_bench_ratio("state_transfer_vs_nng", ratio, rounds, 3);
    tu_bench_ratio("state_transfer_vs_nng_hot", hot_ratio, rounds, 3);
    printf("BENCH state_transfer_mb_s %.0f\n", tu_median(mbs, rounds));
    for (int r = 0; r < 2; r++) {
        diloco_destroy(x.d[r]);
        peer_group_destroy(x.g[r]);
    }
    tu_rm_rf(x.dir);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "--member")) return member_main(argv[2], atoi(argv[3]));
    if (argc == 2 && !strcmp(argv[1], "--transfer")) return transfer();
    double hb = heartbeat_bytes();
    if (hb < 0) return 1;
    printf("BENCH heartbeat_bytes_s %.1f per link (%.0f per member of 48 peers)\n", hb, hb * 47);
    double ms[REPS], sil[REPS];
    for (int i = 0; i < REPS; i++)
        if ((ms[i] = detect(argv[0], 1)) < 0 || (sil[i] = detect(argv[0], 0)) < 0) return 1;
    tu_spread a = tu_spread_of(ms, REPS), b = tu_spread_of(sil, REPS);
    printf("BENCH detect_ms %.1f (min %.1f max %.1f, SIGKILL)\n", tu_median(ms, REPS), a.min,
           a.max);
    printf("BENCH detect_ms_silent %.1f (min %.1f max %.1f, a cut link, heartbeat_timeout 1000)\n",
           tu_median(sil, REPS), b.min, b.max);
    if (transfer()) return 1;

    double rj[REPS];
    if (rejoin(rj, REPS)) return 1;
    tu_spread c = tu_spread_of(rj, REPS);
    printf("BENCH rejoin_s %.2f (min %.2f max %.2f, 3 peers of the tiny config)\n",
           tu_median(rj, REPS), c.min, c.max);
    return 0;
}
