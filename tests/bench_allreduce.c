// bench_allreduce.c: speed of the ring all-reduce (sparta/peer/allreduce.h) on the GPT-2 124M
// vector, printed as `BENCH <key> <value>` lines:
//   allreduce_gbps        fp32 on the wire: GB/s of the fp32 vector (4 N bytes) per call
//   allreduce_gbps_bf16   the same vector and measure, bf16 on the wire
//   allreduce_gbps_int8   the same vector and measure, int8 on the wire
//   diloco_bytes_vs_ddp_h100_fp32 / _int8   bytes per step of DiLoCo with H = 100 (one all-reduce
//                         per 100 steps, as measured) over DDP's (one fp32 all-reduce per step)
//   diloco_outer_step_ms  a 124M outer step: the fp32 all-reduce plus the local passes (delta,
//                         Nesterov update, copy), and diloco_outer_step_net_fraction, the
//                         all-reduce's share of it
// Two peers are threads of this process, each with its own net_mesh on 127.0.0.1; the time of a
// call is from starting both threads to joining both; the best of REPS calls after one warm-up.
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
#include "sparta/peer/net.h"
#include "sparta/peer/wire.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"

#define N_124M  124439808u
#define REPS    3
#define WAIT_MS 60000

// free_base returns a base port with free ports above it (see tu_free_port_base), or -1.
static int free_base(void) { return tu_free_port_base(12); }

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

// bench_dtype returns the best GB/s of REPS calls, or a negative value on failure; *bytes gets
// the bytes rank 0 sent in one call.
static double bench_dtype(int dtype, float **x, int base, double *bytes) {
    char a0[32], a1[32];
    snprintf(a0, sizeof a0, "127.0.0.1:%d", base);
    snprintf(a1, sizeof a1, "127.0.0.1:%d", base + 2);
    const char *peers[2] = {a0, a1};
    net_mesh *m[2] = {NULL, NULL};
    peer p[2] = {{0}};
    double best = -1;
    for (int i = 0; i < 2; i++) {
        if (net_mesh_create(&m[i], i, 2, peers, NULL) ||
            ar_create(&p[i].ctx, m[i], i, 2, 0xBE7C4, N_124M, dtype)) {
            fprintf(stderr, "bench_allreduce: %s\n", err_msg());
            goto done;
        }
        p[i].x = x[i];
    }
    for (int rep = 0; rep <= REPS; rep++) { // rep 0 warms up (connection, nng buffers)
        pthread_t th[2];
        double t0 = sys_now_s();
        for (int i = 0; i < 2; i++) {
            p[i].tag = (uint64_t)rep + 1;
            pthread_create(&th[i], NULL, peer_main, &p[i]);
        }
        for (int i = 0; i < 2; i++)
            pthread_join(th[i], NULL);
        double s = sys_now_s() - t0;
        if (p[0].rc || p[1].rc) goto done;
        double gbps = 4.0 * N_124M / s / 1e9;
        fprintf(stderr, "  dtype=%d rep=%d s=%.3f GB/s=%.3f sent=%llu recv=%llu\n", dtype, rep, s,
                gbps, (unsigned long long)p[0].st.bytes_sent,
                (unsigned long long)p[0].st.bytes_recv);
        if (rep > 0 && gbps > best) best = gbps;
        *bytes = (double)p[0].st.bytes_sent;
    }
done:
    for (int i = 0; i < 2; i++) {
        ar_destroy(p[i].ctx);
        net_mesh_destroy(m[i]);
    }
    return best;
}

int main(void) {
    int base = free_base();
    if (base < 0) {
        fprintf(stderr, "bench_allreduce: no free ports\n");
        return 1;
    }
    float *x[2];
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 2; i++) { // values in [-1, 1), as a pseudo-gradient scaled to O(1)
        x[i] = xmalloc((size_t)N_124M * sizeof(float));
        for (size_t j = 0; j < N_124M; j++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            x[i][j] = (float)((s >> 40) * (2.0 / 16777216.0) - 1.0);
        }
    }
    const struct {
        int dtype;
        const char *key;
    } runs[3] = {{WIRE_FP32, "allreduce_gbps"},
                 {WIRE_BF16, "allreduce_gbps_bf16"},
                 {WIRE_INT8, "allreduce_gbps_int8"}};
    int status = 0;
    double bytes[3] = {0}, gb[3] = {0};
    for (int r = 0; r < 3; r++) {
        // Each run gets fresh ports: a closed listener's port may linger in TIME_WAIT.
        double g = bench_dtype(runs[r].dtype, x, base + 4 * r, &bytes[r]);
        if (g < 0) {
            status = 1;
            continue;
        }
        gb[r] = g;
        printf("BENCH %s %.3f\n", runs[r].key, g);
        fflush(stdout);
    }
    if (!status) {
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
    free(x[0]);
    free(x[1]);
    return status;
}
