// bench_allreduce.c: speed of the ring all-reduce (sparta/peer/allreduce.h) on the GPT-2 124M
// vector, printed as `BENCH <key> <value>` lines:
//   allreduce_gbps        fp32 on the wire: GB/s of the fp32 vector (4 N bytes) per call
//   allreduce_gbps_bf16   the same vector and measure, bf16 on the wire
//   allreduce_gbps_int8   the same vector and measure, int8 on the wire
//   allreduce_gbps_p4     fp32 among 4 peers
//   allreduce_gbps_tls / _mac  fp32 between 2 peers over TLS (net.tls) / with a cluster key's
//                         HMAC tag on every frame, and allreduce_tls_vs_plain / _mac_vs_plain,
//                         their ratios to allreduce_gbps of the same run
//   diloco_bytes_vs_ddp_h100_fp32 / _int8   bytes per step of DiLoCo with H = 100 (one all-reduce
//                         per 100 steps, as measured) over DDP's (one fp32 all-reduce per step)
//   diloco_outer_step_ms  a 124M outer step: the fp32 all-reduce plus the local passes (delta,
//                         Nesterov update, copy), and diloco_outer_step_net_fraction, the
//                         all-reduce's share of it
// The peers are threads of this process, each with its own peer group on 127.0.0.1; the time of
// a call is from starting the threads to joining them; the best of REPS calls after one warm-up.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "diloco/diloco.h"
#include "sparta/peer/allreduce.h"
#include "sparta/peer/peer.h"
#include "sparta/peer/wire.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/pki.h"
#include "train/base/sys.h"

#define N_124M  124439808u
#define REPS    3
#define WAIT_MS 60000

typedef struct peer {
    ar_ctx *ctx;
    float *x;
    uint64_t tag;
    int rc;
    ar_stats st;
} peer;

static void *peer_main(void *arg) {
    peer *p = arg;
    p->rc = ar_mean(p->ctx, p->x, N_124M, p->tag, WAIT_MS, &p->st);
    if (p->rc) fprintf(stderr, "bench_allreduce: %s: %s\n", err_str(p->rc), err_msg());
    return NULL;
}

// Security of a run's links: none, TLS (one certificate for every peer, their member ids differ
// by salt), or a cluster key.
enum { SEC_NONE, SEC_TLS, SEC_MAC };
static char tls_ca[600], tls_crt[600], tls_key[600];
static const unsigned char cluster_key[32] = "bench cluster key, 32 bytes long";

// bench_dtype returns the best GB/s of REPS calls among P peers (threads, each with its own
// peer group on 127.0.0.1, ephemeral ports), or a negative value on failure; *bytes gets the
// bytes rank 0 sent in one call.
static double bench_dtype(int dtype, int P, int sec, float **x, double *bytes) {
    peer_group *g[4] = {NULL};
    peer p[4] = {{0}};
    double best = -1;
    char addr[4][PEER_ADDR_MAX];
    const char *peers[4];
    for (int i = 0; i < P; i++) {
        snprintf(addr[i], sizeof addr[i], "127.0.0.1:0");
        peers[i] = addr[i];
    }
    for (int i = P - 1; i >= 0; i--) { // rank i dials the ranks above it, whose ports are known
        peer_opts o = {.listen = peers[i],
                       .peers = peers,
                       .world = P,
                       .rank = i,
                       .run_id = 0xBE7C4,
                       .tag = "bench"};
        if (sec == SEC_TLS) o.tls_ca = tls_ca, o.tls_cert = tls_crt, o.tls_key = tls_key;
        if (sec == SEC_MAC) o.cluster_key = cluster_key, o.cluster_key_len = sizeof cluster_key;
        if (peer_group_create(&g[i], &o) ||
            ar_create(&p[i].ctx, g[i], PEER_CH_RING, i, P, 0xBE7C4, N_124M, dtype)) {
            fprintf(stderr, "bench_allreduce: %s\n", err_msg());
            goto done;
        }
        snprintf(addr[i], sizeof addr[i], "%s", peer_self_addr(g[i]));
        p[i].x = x[i];
    }
    for (int i = 0; i < P; i++)
        if (peer_wait_view(g[i], P, 10000) != P) {
            fprintf(stderr, "bench_allreduce: the peers did not connect\n");
            goto done;
        }
    for (int rep = 0; rep <= REPS; rep++) { // rep 0 warms up (buffers)
        pthread_t th[4];
        double t0 = sys_now_s();
        for (int i = 0; i < P; i++) {
            p[i].tag = (uint64_t)rep + 1;
            pthread_create(&th[i], NULL, peer_main, &p[i]);
        }
        for (int i = 0; i < P; i++)
            pthread_join(th[i], NULL);
        double s = sys_now_s() - t0;
        int bad = 0;
        for (int i = 0; i < P; i++)
            bad |= p[i].rc;
        if (bad) goto done;
        double gbps = 4.0 * N_124M / s / 1e9;
        fprintf(stderr, "  dtype=%d P=%d sec=%d rep=%d s=%.3f GB/s=%.3f sent=%llu recv=%llu\n",
                dtype, P, sec, rep, s, gbps, (unsigned long long)p[0].st.bytes_sent,
                (unsigned long long)p[0].st.bytes_recv);
        if (rep > 0 && gbps > best) best = gbps;
        *bytes = (double)p[0].st.bytes_sent;
    }
done:
    for (int i = 0; i < P; i++) {
        ar_destroy(p[i].ctx);
        peer_group_destroy(g[i]);
    }
    return best;
}

int main(void) {
    float *x[4];
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 4; i++) { // values in [-1, 1), as a pseudo-gradient scaled to O(1)
        x[i] = xmalloc((size_t)N_124M * sizeof(float));
        for (size_t j = 0; j < N_124M; j++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            x[i][j] = (float)((s >> 40) * (2.0 / 16777216.0) - 1.0);
        }
    }
    char *keys = tu_tmpdir("bench-ar");
    snprintf(tls_ca, sizeof tls_ca, "%s/k/ca.crt", keys);
    snprintf(tls_crt, sizeof tls_crt, "%s/k/p.crt", keys);
    snprintf(tls_key, sizeof tls_key, "%s/k/p.key", keys);
    char kdir[600];
    snprintf(kdir, sizeof kdir, "%s/k", keys);
    if (pki_ca_init(kdir, "bench", 2) || pki_issue(kdir, "p", 2)) {
        fprintf(stderr, "bench_allreduce: %s\n", err_msg());
        return 1;
    }
    const struct {
        int dtype, P, sec;
        const char *key;
    } runs[6] = {{WIRE_FP32, 2, SEC_NONE, "allreduce_gbps"},
                 {WIRE_BF16, 2, SEC_NONE, "allreduce_gbps_bf16"},
                 {WIRE_INT8, 2, SEC_NONE, "allreduce_gbps_int8"},
                 {WIRE_FP32, 4, SEC_NONE, "allreduce_gbps_p4"},
                 {WIRE_FP32, 2, SEC_TLS, "allreduce_gbps_tls"},
                 {WIRE_FP32, 2, SEC_MAC, "allreduce_gbps_mac"}};
    int status = 0;
    double bytes[6] = {0}, gb[6] = {0};
    for (int r = 0; r < 6; r++) {
        double g = bench_dtype(runs[r].dtype, runs[r].P, runs[r].sec, x, &bytes[r]);
        if (g < 0) {
            status = 1;
            continue;
        }
        gb[r] = g;
        printf("BENCH %s %.3f\n", runs[r].key, g);
        fflush(stdout);
    }
    if (!status) {
        printf("BENCH allreduce_tls_vs_plain %.3f\n", gb[4] / gb[0]);
        printf("BENCH allreduce_mac_vs_plain %.3f\n", gb[5] / gb[0]);
        printf("BENCH diloco_bytes_vs_ddp_h100_fp32 %.5f (1/%.0f)\n", bytes[0] / 100 / bytes[0],
               100 * bytes[0] / bytes[0]);
        printf("BENCH diloco_bytes_vs_ddp_h100_int8 %.6f (1/%.0f)\n", bytes[2] / 100 / bytes[0],
               100 * bytes[0] / bytes[2]);
        // the local part of an outer step: delta = theta_g - x, the update, x = theta_g
        float *theta = xmalloc((size_t)N_124M * sizeof(float));
        float *buf = xmalloc((size_t)N_124M * sizeof(float));
        memcpy(theta, x[0], (size_t)N_124M * sizeof(float));
        memset(buf, 0, (size_t)N_124M * sizeof(float));
        double best = 1e9;
        for (int rep = 0; rep < 3; rep++) {
            double t0 = sys_now_s();
            for (size_t j = 0; j < N_124M; j++)
                x[1][j] = theta[j] - x[0][j];
            diloco_outer_update(theta, buf, x[1], N_124M, 0.7f, 0.9f, 1, rep == 0);
            memcpy(x[0], theta, (size_t)N_124M * sizeof(float));
            double dt = sys_now_s() - t0;
            if (dt < best) best = dt;
        }
        double net = 4.0 * N_124M / (gb[0] * 1e9);
        printf("BENCH diloco_outer_step_ms %.0f\n", (net + best) * 1e3);
        printf("BENCH diloco_outer_step_net_fraction %.2f\n", net / (net + best));
        free(theta);
        free(buf);
    }
    for (int i = 0; i < 4; i++)
        free(x[i]);
    tu_rm_rf(keys);
    free(keys);
    return status;
}
