// bench_peer.c: the peer layer's data plane and handshake over loopback, as `BENCH` lines:
//   peer_stream_vs_tcp     one 512 MB transfer through the peer layer (1 MiB frames on the ring
//                          channel, as the all-reduce sends them, the sender waiting for each,
//                          the receiver taking and freeing them) over the same bytes through a
//                          plain TCP socket (1 MiB writes and reads), interleaved rounds, median
//                          and spread
//   peer_stream_gbps       the peer layer's rate (GB/s, median over the rounds)
//   tcp_stream_gbps        the plain socket's rate in the same rounds
//   peer_handshake_ms      from creating rank 0 of a pair (rank 1 up) to both seeing the link
//   tls_stream_vs_peer     the same 512 MB transfer over a pair with net.tls (tls+tcp://, mutual
//                          certificates from train/base/pki.c) over the plain pair, in the same
//                          interleaved rounds (what a DiLoCo all-reduce's ring frames pay)
//   tls_stream_gbps        the TLS pair's rate
//   tls_handshake_ms       peer_handshake_ms with TLS (the TLS handshake, then ours)
//   peer_small_latency_ms  one-way latency of small SPARTA messages (one every 2 ms), median
//                          and max, alone (_idle) and while a 512 MB ring transfer runs on the same
//                          link (_bulk): a small message waits behind at most one bulk frame
//                          (median over HS_REPS)
// The two ends are threads of this process.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sparta/peer/allreduce.h"
#include "sparta/peer/peer.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/pki.h"
#include "train/base/sys.h"

#define TOTAL   ((size_t)512 << 20)
#define CHUNK   AR_MSG_BYTES // the all-reduce's message size
#define HS_REPS 15

static unsigned char *sbuf, *rbuf;

// ---- plain TCP ------------------------------------------------------------------------------

typedef struct {
    int lfd;
    size_t got;
} tcp_sink;

static void *tcp_recv_main(void *p) {
    tcp_sink *s = p;
    int fd = accept(s->lfd, NULL, NULL);
    while (fd >= 0 && s->got < TOTAL) {
        ssize_t r = read(fd, rbuf, CHUNK);
        if (r <= 0) break;
        s->got += (size_t)r;
    }
    if (fd >= 0) {
        (void)!write(fd, "k", 1);
        close(fd);
    }
    return NULL;
}

static int tcp_run(void *ctx, int warm, int n, double *v) {
    (void)ctx;
    for (int i = -warm; i < n; i++) {
        int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t sl = sizeof sa;
        if (bind(l, (struct sockaddr *)&sa, sizeof sa) || listen(l, 1) ||
            getsockname(l, (struct sockaddr *)&sa, &sl))
            return -1;
        tcp_sink s = {.lfd = l};
        pthread_t t;
        pthread_create(&t, NULL, tcp_recv_main, &s);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&sa, sizeof sa)) return -1;
        double t0 = sys_now_s();
        for (size_t sent = 0; sent < TOTAL;) {
            ssize_t w = write(c, sbuf, CHUNK < TOTAL - sent ? CHUNK : TOTAL - sent);
            if (w <= 0) return -1;
            sent += (size_t)w;
        }
        char k;
        if (read(c, &k, 1) != 1) return -1;
        double dt = sys_now_s() - t0;
        pthread_join(t, NULL);
        close(c);
        close(l);
        if (s.got != TOTAL) return -1;
        if (i >= 0) v[i] = dt;
    }
    return 0;
}

// ---- the peer layer -------------------------------------------------------------------------

typedef struct {
    peer_group *g[2];
} pair;

typedef struct {
    peer_group *g;
    size_t got;
    int rc;
} peer_sink;

static void *peer_recv_main(void *p) {
    peer_sink *s = p;
    while (s->got < TOTAL) {
        peer_msg *m;
        if ((s->rc = peer_recv(s->g, PEER_CH_RING, 30000, &m))) break;
        s->got += m->len;
        peer_msg_free(s->g, m);
    }
    return NULL;
}

// The certificates of the TLS pair: a CA and peers p0, p1 in keys_dir (made in main).
static char keys_dir[256], tls_file[2][3][320], *keys_root;

static int make_keys(void) {
    keys_root = tu_tmpdir("bench-peer");
    snprintf(keys_dir, sizeof keys_dir, "%s/keys", keys_root);
    if (pki_ca_init(keys_dir, "bench", 2) || pki_issue(keys_dir, "p0", 2) ||
        pki_issue(keys_dir, "p1", 2))
        return -1;
    for (int r = 0; r < 2; r++) {
        snprintf(tls_file[r][0], sizeof tls_file[r][0], "%s/ca.crt", keys_dir);
        snprintf(tls_file[r][1], sizeof tls_file[r][1], "%s/p%d.crt", keys_dir, r);
        snprintf(tls_file[r][2], sizeof tls_file[r][2], "%s/p%d.key", keys_dir, r);
    }
    return 0;
}

// with_tls gives rank's options the TLS files, or none.
static void with_tls(peer_opts *o, int rank, int tls) {
    o->tls_ca = tls ? tls_file[rank][0] : NULL;
    o->tls_cert = tls ? tls_file[rank][1] : NULL;
    o->tls_key = tls ? tls_file[rank][2] : NULL;
}

static int pair_open(pair *p, int tls) {
    const char *a[2] = {"127.0.0.1:0", "127.0.0.1:0"};
    peer_opts o = {.listen = a[1], .peers = a, .world = 2, .rank = 1, .run_id = 1};
    with_tls(&o, 1, tls);
    if (peer_group_create(&p->g[1], &o)) return -1;
    char a1[PEER_ADDR_MAX];
    snprintf(a1, sizeof a1, "%s", peer_self_addr(p->g[1]));
    const char *b[2] = {"127.0.0.1:0", a1};
    o.listen = b[0];
    o.peers = b;
    o.rank = 0; // the lower rank dials
    with_tls(&o, 0, tls);
    if (peer_group_create(&p->g[0], &o)) return -1;
    if (peer_wait_view(p->g[0], 2, 10000) != 2 || peer_wait_view(p->g[1], 2, 10000) != 2) return -1;
    return 0;
}

static int peer_run(void *ctx, int warm, int n, double *v) {
    pair *p = ctx;
    for (int i = -warm; i < n; i++) {
        peer_sink s = {.g = p->g[0]};
        pthread_t t;
        pthread_create(&t, NULL, peer_recv_main, &s);
        double t0 = sys_now_s();
        int rc = 0;
        for (size_t sent = 0; sent < TOTAL && !rc; sent += CHUNK)
            rc = peer_send_wait(p->g[1], 0, PEER_CH_RING, sbuf, CHUNK, 30000);
        pthread_join(t, NULL);
        double dt = sys_now_s() - t0;
        if (rc || s.rc || s.got != TOTAL) {
            fprintf(stderr, "bench_peer: transfer failed: %s\n", err_msg());
            return -1;
        }
        if (i >= 0) v[i] = dt;
    }
    return 0;
}

// ---- small messages behind a bulk transfer ------------------------------------------------

typedef struct {
    peer_group *g;
    int n;
    double *lat;
    size_t got_bulk;
    int bulk, rc;
} lat_sink;

// small messages carry their send time; bulk frames are taken and freed
static void *lat_recv_main(void *p) {
    lat_sink *s = p;
    int got = 0;
    while (got < s->n) {
        peer_msg *m;
        if ((s->rc = peer_recv(s->g, PEER_CH_SPARTA, 30000, &m))) break;
        double t;
        memcpy(&t, m->data, sizeof t);
        s->lat[got++] = sys_now_ms() - t;
        peer_msg_free(s->g, m);
    }
    return NULL;
}

static void *bulk_drain_main(void *p) {
    lat_sink *s = p;
    while (s->got_bulk < TOTAL) {
        peer_msg *m;
        if (peer_recv(s->g, PEER_CH_RING, 30000, &m)) break;
        s->got_bulk += m->len;
        peer_msg_free(s->g, m);
    }
    return NULL;
}

typedef struct {
    pair *p;
    int rc;
} bulk_src;

static void *bulk_send_main(void *a) {
    bulk_src *b = a;
    for (size_t sent = 0; sent < TOTAL && !b->rc; sent += CHUNK)
        b->rc = peer_send_wait(b->p->g[1], 0, PEER_CH_RING, sbuf, CHUNK, 30000);
    return NULL;
}

// small_latency sends n small messages 2 ms apart from rank 1 to rank 0 (with a 512 MB ring
// transfer on the same link when bulk) and returns the median and max one-way latency.
static int small_latency(pair *p, int bulk, int n, double *med, double *max) {
    double *lat = calloc((size_t)n, sizeof(double));
    lat_sink s = {.g = p->g[0], .n = n, .lat = lat};
    bulk_src b = {.p = p};
    pthread_t tr, td, tb;
    pthread_create(&tr, NULL, lat_recv_main, &s);
    if (bulk) {
        pthread_create(&td, NULL, bulk_drain_main, &s);
        pthread_create(&tb, NULL, bulk_send_main, &b);
    }
    for (int i = 0; i < n; i++) {
        unsigned char msg[64] = {0};
        double t = sys_now_ms();
        memcpy(msg, &t, sizeof t);
        if (peer_send(p->g[1], 0, PEER_CH_SPARTA, msg, sizeof msg)) break;
        sys_sleep_ms(2); // the pace of the probe itself
    }
    pthread_join(tr, NULL);
    if (bulk) {
        pthread_join(tb, NULL);
        pthread_join(td, NULL);
    }
    int ok = !s.rc && !b.rc;
    *med = tu_median(lat, n);
    *max = 0;
    for (int i = 0; i < n; i++)
        if (lat[i] > *max) *max = lat[i];
    free(lat);
    return ok ? 0 : -1;
}

static double handshake_ms(int tls) {
    double ms[HS_REPS];
    for (int i = 0; i < HS_REPS; i++) {
        const char *a[2] = {"127.0.0.1:0", "127.0.0.1:0"};
        peer_opts o = {.listen = a[1],
                       .peers = a,
                       .world = 2,
                       .rank = 1,
                       .run_id = 1,
                       .shared = "model.n_layer=12\n"};
        peer_group *g0, *g1;
        with_tls(&o, 1, tls);
        if (peer_group_create(&g1, &o)) return -1;
        char a1[PEER_ADDR_MAX];
        snprintf(a1, sizeof a1, "%s", peer_self_addr(g1));
        const char *b[2] = {"127.0.0.1:0", a1};
        o.listen = b[0];
        o.peers = b;
        o.rank = 0;
        with_tls(&o, 0, tls);
        double t0 = sys_now_ms();
        if (peer_group_create(&g0, &o)) return -1;
        int ok = peer_wait_view(g0, 2, 10000) == 2 && peer_wait_view(g1, 2, 10000) == 2;
        ms[i] = sys_now_ms() - t0;
        peer_group_destroy(g1);
        peer_group_destroy(g0);
        if (!ok) return -1;
    }
    return tu_median(ms, HS_REPS);
}

int main(void) {
    sbuf = malloc(CHUNK);
    rbuf = malloc(CHUNK);
    memset(sbuf, 1, CHUNK);
    memset(rbuf, 0, CHUNK);
    pair p, pt;
    if (make_keys() || pair_open(&p, 0) || pair_open(&pt, 1)) {
        fprintf(stderr, "bench_peer: %s\n", err_msg());
        return 1;
    }
    int rounds = tu_bench_rounds("peer", 7, 3), reps = 1;
    double *all = calloc((size_t)(3 * rounds * reps), sizeof(double));
    double *med = calloc((size_t)(3 * rounds), sizeof(double));
    tu_side sides[3] = {
        {"peer", peer_run, &p, 1, reps, all, med},
        {"tcp", tcp_run, NULL, 1, reps, all + rounds * reps, med + rounds},
        {"tls", peer_run, &pt, 1, reps, all + 2 * rounds * reps, med + 2 * rounds},
    };
    if (tu_interleave(sides, 3, rounds)) return 1;
    double ratio[64], tls_ratio[64], pg[64], tg[64], sg[64];
    for (int r = 0; r < rounds; r++) {
        ratio[r] = med[rounds + r] / med[r];         // tcp time / peer time = peer rate / tcp rate
        tls_ratio[r] = med[r] / med[2 * rounds + r]; // = TLS rate / plain rate
        pg[r] = TOTAL / med[r] / 1e9;
        tg[r] = TOTAL / med[rounds + r] / 1e9;
        sg[r] = TOTAL / med[2 * rounds + r] / 1e9;
    }
    tu_bench_ratio("peer_stream_vs_tcp", ratio, rounds, 3);
    printf("BENCH peer_stream_gbps %.2f\n", tu_median(pg, rounds));
    printf("BENCH tcp_stream_gbps %.2f\n", tu_median(tg, rounds));
    tu_bench_ratio("tls_stream_vs_peer", tls_ratio, rounds, 3);
    printf("BENCH tls_stream_gbps %.2f\n", tu_median(sg, rounds));
    peer_group_destroy(pt.g[1]);
    peer_group_destroy(pt.g[0]);
    double lmed, lmax;
    if (small_latency(&p, 0, 100, &lmed, &lmax)) return 1;
    printf("BENCH peer_small_latency_ms_idle %.3f (max %.3f)\n", lmed, lmax);
    if (small_latency(&p, 1, 100, &lmed, &lmax)) return 1;
    printf("BENCH peer_small_latency_ms_bulk %.3f (max %.3f; one 1 MiB frame at %.2f GB/s is "
           "%.2f ms)\n",
           lmed, lmax, tu_median(pg, rounds), CHUNK / (tu_median(pg, rounds) * 1e9) * 1e3);
    peer_group_destroy(p.g[1]);
    peer_group_destroy(p.g[0]);
    double hs = handshake_ms(0), hst = handshake_ms(1);
    if (hs < 0 || hst < 0) return 1;
    printf("BENCH peer_handshake_ms %.2f\n", hs);
    printf("BENCH tls_handshake_ms %.2f\n", hst);
    tu_rm_rf(keys_root);
    free(keys_root);
    free(all);
    free(med);
    free(sbuf);
    free(rbuf);
    return 0;
}
