// allreduce_test.c: the ring all-reduce over the peer layer. P peers run as threads of one process,
// each with its own peer group (ipc:// sockets) and ar_ctx. Results are checked against a
// simulation of the ring (the documented summation order, each hop through the wire codec: bitwise
// equal) and against the exact mean in double (fp32 within float rounding; bf16/int8 within the
// bound stated in allreduce.h), and the bytes against the exact ring volume. Also: the int8 codec,
// world = 1, a missing peer, stale or foreign messages, bad arguments. Threads: ar_mean runs on
// peer threads; all assertions run on the test thread.
#include <criterion/criterion.h>

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sparta/peer/allreduce.h"
#include "sparta/peer/peer.h"
#include "sparta/peer/wire.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"

TestSuite(allreduce, .timeout = 60);

#define RUN_ID  0x5EED0A11ull
#define MAXP    4
#define WAIT_MS 20000

// ---- a ring of P in-process peers -------------------------------------------------------------

typedef struct peer {
    ar_ctx *ctx;
    float *x;
    size_t n;
    uint64_t tag;
    int timeout_ms, rc;
    ar_stats st;
    char msg[256];
    int agree;                     // ar_agree first, then ar_mean_group over the members
    int start_after_ms;            // sleep this long before starting
    const atomic_int *after;       // if set, start only once it is non-zero (another peer's done)
    atomic_int done;               // set when this peer's call has returned
    atomic_int agreed;             // set when its ar_agree has returned
    const atomic_int *before_ring; // if set, agreed: run the ring only once it is non-zero
    int members[MAXP], nm, ahead;
    // all-gather instead of the ring (after ar_agree_except with except, if set): rows by
    // position, or none (check only)
    int gather, check_only;
    const unsigned char *except;
    float *rows[MAXP];
    unsigned char bad[MAXP];
} peer;

typedef struct ring {
    int world, live; // peers 0 .. live-1 exist; the others never start
    char *dir;       // the ipc:// sockets
    peer_group *g[MAXP];
    peer p[MAXP];
} ring;

static peer_group *group_at(const char *dir, int rank, int world) {
    return tu_group(dir, rank, world, RUN_ID);
}

// ring_open connects `live` of `world` peers (ipc:// sockets: no ports to race for).
static void ring_open(ring *r, int world, int live, size_t max_n, int dtype) {
    memset(r, 0, sizeof *r);
    r->world = world;
    r->live = live;
    r->dir = tu_tmpdir("ar");
    for (int i = 0; i < live; i++) {
        r->g[i] = group_at(r->dir, i, world);
        cr_assert_eq(ar_create(&r->p[i].ctx, r->g[i], PEER_CH_RING, i, world, RUN_ID, max_n, dtype),
                     ERR_OK, "%s", err_msg());
    }
}

static void ring_close(ring *r) {
    for (int i = 0; i < r->live; i++) {
        ar_destroy(r->p[i].ctx);
        peer_group_destroy(r->g[i]);
    }
    tu_rm_rf(r->dir);
    free(r->dir);
}

// ring_wait_up waits (bounded) until ranks a and b hold a link to each other.
static void ring_wait_up(ring *r, int a, int b) {
    for (int i = 0; i < 400 && !(peer_connected(r->g[a], b) && peer_connected(r->g[b], a)); i++)
        peer_wait_view(r->g[a], r->world + 1, 25);
    cr_assert(peer_connected(r->g[a], b) && peer_connected(r->g[b], a), "ranks %d, %d not up", a,
              b);
}

// ring_add starts the next rank of the ring (rank live) and waits until it is linked to every
// live rank.
static void ring_add(ring *r, size_t max_n, int dtype) {
    int k = r->live;
    cr_assert(k < r->world);
    r->g[k] = group_at(r->dir, k, r->world);
    cr_assert_eq(ar_create(&r->p[k].ctx, r->g[k], PEER_CH_RING, k, r->world, RUN_ID, max_n, dtype),
                 ERR_OK, "%s", err_msg());
    r->live = k + 1;
    for (int i = 0; i < k; i++)
        ring_wait_up(r, i, k);
}

static void *peer_main(void *arg) {
    peer *p = arg;
    if (p->start_after_ms) usleep((useconds_t)p->start_after_ms * 1000);
    while (p->after && !atomic_load(p->after))
        usleep(1000);
    if (p->agree) {
        p->rc = ar_agree_except(p->ctx, p->tag, p->timeout_ms, p->except, p->members, &p->nm,
                                &p->ahead, NULL);
        atomic_store(&p->agreed, 1);
        while (p->before_ring && !atomic_load(p->before_ring))
            usleep(1000);
        if (!p->rc && p->nm > 0 && p->gather)
            p->rc = ar_gather_group(p->ctx, p->x, p->n, p->tag, p->members, p->nm, p->timeout_ms,
                                    p->check_only ? NULL : p->rows, p->bad, &p->st);
        else if (!p->rc && p->nm > 0)
            p->rc =
                ar_mean_group(p->ctx, p->x, p->n, p->tag, p->members, p->nm, p->timeout_ms, &p->st);
    } else {
        p->rc = ar_mean(p->ctx, p->x, p->n, p->tag, p->timeout_ms, &p->st);
    }
    snprintf(p->msg, sizeof p->msg, "%s", p->rc ? err_msg() : "");
    atomic_store(&p->done, 1);
    return NULL;
}

// ring_run runs ar_mean(xs[i], n, tag) on every live peer at once and waits for all of them.
static void ring_run(ring *r, float **xs, size_t n, uint64_t tag, int timeout_ms) {
    pthread_t th[MAXP];
    for (int i = 0; i < r->live; i++) {
        r->p[i].x = xs[i];
        r->p[i].n = n;
        r->p[i].tag = tag;
        r->p[i].timeout_ms = timeout_ms;
        cr_assert_eq(pthread_create(&th[i], NULL, peer_main, &r->p[i]), 0);
    }
    for (int i = 0; i < r->live; i++)
        pthread_join(th[i], NULL);
}

// ring_recv is the number of ring-channel messages rank has received.
static uint64_t ring_recv(ring *r, int rank) {
    peer_stats st;
    peer_get_stats(r->g[rank], &st);
    return st.msgs_recv[PEER_CH_RING];
}

static void ring_expect_ok(const ring *r) {
    for (int i = 0; i < r->live; i++)
        cr_assert_eq(r->p[i].rc, ERR_OK, "rank %d: %s: %s", i, err_str(r->p[i].rc), r->p[i].msg);
}

// ---- the ring, re-derived from allreduce.h -----------------------------------------------------

static size_t seg_lo(size_t n, int world, int s) { return (size_t)s * n / (size_t)world; }

// Values per message: the largest multiple of 4096 whose message fits in 8 MiB (the numbers of
// allreduce.h, checked against the byte sizes here).
static size_t chunk_values(int dtype) {
    size_t c = dtype == WIRE_FP32 ? 258048 : dtype == WIRE_BF16 ? 520192 : 1044480;
    return c;
}

static size_t payload(int dtype, size_t count) {
    if (dtype == WIRE_FP32) return 4 * count;
    if (dtype == WIRE_BF16) return 2 * count;
    return 4 * ((count + 4095) / 4096) + count;
}

// seg_bytes: every message of segment s, headers included.
static uint64_t seg_bytes(size_t n, int world, int s, int dtype) {
    size_t lo = seg_lo(n, world, s), hi = seg_lo(n, world, s + 1), c = chunk_values(dtype);
    uint64_t b = 0;
    for (size_t a = lo; a < hi; a += c)
        b += 48 + payload(dtype, hi - a < c ? hi - a : c);
    return b;
}

// expect_bytes: rank r sends every segment but r+1 (reduce-scatter) and every segment but r+2
// (all-gather), and receives every segment but r and every segment but r+1.
static void expect_bytes(const ring *r, size_t n, int dtype, const uint64_t *extra_recv) {
    int P = r->world;
    for (int k = 0; k < r->live; k++) {
        uint64_t sent = 0, recv = 0;
        for (int s = 0; s < P; s++) {
            uint64_t b = seg_bytes(n, P, s, dtype);
            sent += (s != (k + 1) % P) * b + (s != (k + 2) % P) * b;
            recv += (s != k) * b + (s != (k + 1) % P) * b;
        }
        if (extra_recv) recv += extra_recv[k];
        cr_assert_eq(r->p[k].st.bytes_sent, sent, "rank %d: sent %llu bytes, want %llu", k,
                     (unsigned long long)r->p[k].st.bytes_sent, (unsigned long long)sent);
        cr_assert_eq(r->p[k].st.bytes_recv, recv, "rank %d: received %llu bytes, want %llu", k,
                     (unsigned long long)r->p[k].st.bytes_recv, (unsigned long long)recv);
    }
}

// codec passes v(len) through one message of dtype and back (the values of one int8 block).
static void codec(float *v, size_t len, int dtype, unsigned char *buf) {
    if (dtype == WIRE_FP32) return;
    wire_header h = {
        .dtype = (uint16_t)dtype, .run_id = 1, .k = (uint32_t)len, .count = (uint32_t)len};
    wire_encode(buf, &h, v);
    wire_values(buf, &h, v);
}

// check_ring compares every peer's result res[k] with (a) the simulated ring: segment s summed
// as ((x_s + x_{s+1}) + ...) / P, each hop through the codec, which must match bitwise, and
// (b) the exact mean in double, within the bound of allreduce.h plus float rounding:
//   int8: (1/P) sum_hops max|block of S_j| / 127 + max|block of mean| / 127
//   bf16: (1/P) sum_hops |S_j| 2^-8 + |mean| 2^-8           fp32: float rounding only.
// Returns the largest error seen relative to its bound (<= 1 on success).
static double check_ring(float *const *orig, float *const *res, int P, size_t n, int dtype) {
    enum { BLK = 4096 };
    float acc[BLK];
    double hop[BLK], absum[BLK], worst = 0;
    unsigned char *buf = xmalloc(WIRE_HEADER + 4 * BLK + 64);
    for (int s = 0; s < P; s++) {
        size_t lo = seg_lo(n, P, s), hi = seg_lo(n, P, s + 1);
        for (size_t b0 = lo; b0 < hi; b0 += BLK) { // int8 blocks start every 4096 from lo
            size_t len = hi - b0 < BLK ? hi - b0 : BLK;
            for (size_t i = 0; i < len; i++) {
                acc[i] = orig[s][b0 + i];
                hop[i] = 0;
                absum[i] = fabs(acc[i]);
            }
            for (int j = 1; j <= P; j++) { // hop j carries S_j; j == P is the final mean
                if (j == P)
                    for (size_t i = 0; i < len; i++)
                        acc[i] /= (float)P;
                double m = 0;
                for (size_t i = 0; i < len; i++)
                    m = fmax(m, fabs(acc[i]));
                double w = j < P ? 1.0 / P : 1.0;
                for (size_t i = 0; i < len; i++)
                    hop[i] += w * (dtype == WIRE_INT8   ? m / 127
                                   : dtype == WIRE_BF16 ? fabs(acc[i]) / 256
                                                        : 0);
                codec(acc, len, dtype, buf);
                if (j == P) break;
                const float *x = orig[(s + j) % P] + b0;
                for (size_t i = 0; i < len; i++) {
                    acc[i] = acc[i] + x[i];
                    absum[i] += fabs(x[i]);
                }
            }
            for (size_t i = 0; i < len; i++) {
                double exact = 0;
                for (int p = 0; p < P; p++)
                    exact += orig[p][b0 + i];
                exact /= P;
                double bound = hop[i] + 4 * P * FLT_EPSILON * absum[i] / P + 1e-30;
                for (int k = 0; k < P; k++) {
                    float got = res[k][b0 + i];
                    cr_assert(memcmp(&got, &acc[i], sizeof got) == 0,
                              "rank %d value %zu (segment %d): %.9g, the ring gives %.9g", k,
                              b0 + i, s, got, acc[i]);
                }
                double e = fabs((double)acc[i] - exact);
                cr_assert(e <= bound, "value %zu: error %.3g exceeds bound %.3g (exact %.9g)",
                          b0 + i, e, bound, exact);
                worst = fmax(worst, e / bound);
            }
        }
    }
    free(buf);
    return worst;
}

// The three parts of one check: identical bits on every peer, the ring values, the bytes.
typedef struct vecs {
    int P;
    size_t n;
    float *orig[MAXP], *x[MAXP];
} vecs;

static void vecs_fill(vecs *v, int P, size_t n, uint64_t seed) {
    *v = (vecs){0};
    v->P = P;
    v->n = n;
    for (int p = 0; p < P; p++) {
        v->orig[p] = xmalloc((n ? n : 1) * sizeof(float));
        v->x[p] = xmalloc((n ? n : 1) * sizeof(float));
        tu_rand_fill(v->orig[p], n, seed * 16 + (uint64_t)p, -1, 1);
        // Blocks of very different magnitudes and a few outliers, so per-block scales matter.
        for (size_t i = 0; i < n; i++) {
            size_t blk = i / 4096;
            v->orig[p][i] *= blk % 3 == 1 ? 1e-3f : blk % 3 == 2 ? 50.0f : 1.0f;
            if (i % 1009 == 7) v->orig[p][i] *= 20;
        }
        memcpy(v->x[p], v->orig[p], n * sizeof(float));
    }
}

static void vecs_free(vecs *v) {
    for (int p = 0; p < v->P; p++) {
        free(v->orig[p]);
        free(v->x[p]);
    }
}

static void expect_identical(const vecs *v) {
    for (int p = 1; p < v->P; p++)
        cr_assert(memcmp(v->x[0], v->x[p], v->n * sizeof(float)) == 0,
                  "rank %d differs from rank 0", p);
}

// run_and_check: one all-reduce of fresh vectors on an open ring, every check.
static double run_and_check(ring *r, size_t n, int dtype, uint64_t tag) {
    vecs v;
    vecs_fill(&v, r->world, n, tag);
    ring_run(r, v.x, n, tag, WAIT_MS);
    ring_expect_ok(r);
    expect_identical(&v);
    double worst = check_ring(v.orig, v.x, r->world, n, dtype);
    expect_bytes(r, n, dtype, NULL);
    for (int k = 0; k < r->live; k++)
        cr_assert_eq(r->p[k].st.msgs_dropped, 0, "rank %d dropped messages", k);
    vecs_free(&v);
    return worst;
}

// ---- the int8 codec
// ------------------------------------------------------------------------------

Test(allreduce, int8_codec_round_trip_is_within_half_a_step_of_each_block) {
    enum { N = 3 * 4096 + 123 }; // three full blocks and a partial one
    static float v[N], back[N], again[N];
    unsigned char *m = xmalloc(WIRE_HEADER + wire_payload_size(WIRE_INT8, N));
    unsigned char *m2 = xmalloc(WIRE_HEADER + wire_payload_size(WIRE_INT8, N));
    float mags[] = {1.0f, 3e-30f, 7e4f, 1e-38f, 1e30f};
    for (int t = 0; t < 5; t++) {
        tu_rand_fill(v, N, 100 + (uint64_t)t, -mags[t], mags[t]);
        v[5000] = 40 * mags[t]; // an outlier in block 1
        for (size_t i = 2 * 4096; i < 3 * 4096; i++)
            v[i] = 0; // an all-zero block
        wire_header h = {.dtype = WIRE_INT8, .run_id = 9, .k = N, .count = N}, d;
        size_t len = wire_encode(m, &h, v);
        cr_assert_eq(len, WIRE_HEADER + 4 * 4 + N);
        cr_assert_eq(wire_decode(m, len, 9, &d), ERR_OK, "%s", err_msg());
        wire_values(m, &d, back);
        for (size_t b = 0; b < 4; b++) {
            size_t lo = b * 4096, hi = lo + 4096 < N ? lo + 4096 : N;
            double mx = 0;
            for (size_t i = lo; i < hi; i++)
                mx = fmax(mx, fabs(v[i]));
            for (size_t i = lo; i < hi; i++) {
                double e = fabs((double)back[i] - v[i]);
                cr_assert(e <= mx / 127, "magnitude %g value %zu: error %g > max/127 = %g", mags[t],
                          i, e, mx / 127);
                // (+ 128 smallest subnormals: a subnormal scale is itself rounded)
                cr_assert(e <= mx / 254 * 1.001 + 128 * FLT_TRUE_MIN,
                          "magnitude %g value %zu: error %g > half a step %g", mags[t], i, e,
                          mx / 254);
            }
        }
        for (size_t i = 2 * 4096; i < 3 * 4096; i++)
            cr_assert(back[i] == 0, "all-zero block decodes to zeros");
        // Decoding and encoding again repeats the message byte for byte (ring forwarding).
        cr_assert_eq(wire_encode(m2, &h, back), len);
        cr_assert(memcmp(m, m2, len) == 0, "magnitude %g: re-encoding changed the bytes", mags[t]);
        wire_values(m2, &d, again);
        cr_assert(memcmp(back, again, sizeof back) == 0);
    }
    free(m);
    free(m2);
}

Test(allreduce, int8_re_encoding_repeats_the_bytes_for_any_block_maximum) {
    // The scale must be a fixed point of (127 s) / 127; test many maxima over the whole range.
    enum { N = 64 };
    float v[N], back[N];
    unsigned char m[WIRE_HEADER + 4 + N], m2[sizeof m];
    uint64_t s = 12345;
    for (int it = 0; it < 200000; it++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        uint32_t bits = 0x00800000u + (uint32_t)(s % (0x7B000000u - 0x00800000u)); // normal floats
        float mx;
        memcpy(&mx, &bits, sizeof mx);
        tu_rand_fill(v, N, s, -mx, mx);
        v[s % N] = (s >> 20) & 1 ? mx : -mx;
        wire_header h = {.dtype = WIRE_INT8, .run_id = 9, .k = N, .count = N};
        size_t len = wire_encode(m, &h, v);
        wire_values(m, &h, back);
        wire_encode(m2, &h, back);
        cr_assert(memcmp(m, m2, len) == 0, "max %a: re-encoding changed the bytes", (double)mx);
    }
}

Test(allreduce, int8_block_with_inf_or_nan_decodes_to_nan_and_others_are_kept) {
    enum { N = 4096 + 10 };
    static float v[N], back[N];
    unsigned char *m = xmalloc(WIRE_HEADER + wire_payload_size(WIRE_INT8, N));
    tu_rand_fill(v, N, 3, -1, 1);
    v[10] = INFINITY;
    v[4096 + 3] = NAN;
    for (int t = 0; t < 2; t++) {
        wire_header h = {.dtype = WIRE_INT8, .run_id = 9, .k = N, .count = N};
        wire_encode(m, &h, v);
        wire_values(m, &h, back);
        for (size_t i = 0; i < N; i++)
            cr_assert(t == 1 && i < 4096 ? fabsf(back[i] - v[i]) <= 1.0f / 127 : isnan(back[i]),
                      "case %d value %zu: %g", t, i, back[i]);
        v[10] = 0.5f; // second pass: only the second block is poisoned
    }
    free(m);
}

Test(allreduce, int8_sizes_and_decoding_checks) {
    cr_assert_eq(wire_payload_size(WIRE_INT8, 0), 0);
    cr_assert_eq(wire_payload_size(WIRE_INT8, 1), 5);
    cr_assert_eq(wire_payload_size(WIRE_INT8, 4096), 4100);
    cr_assert_eq(wire_payload_size(WIRE_INT8, 4097), 4105);
    cr_assert_eq(wire_payload_size(WIRE_FP32, 10), 40);
    cr_assert_eq(wire_payload_size(WIRE_BF16, 10), 20);
    cr_assert_eq(wire_payload_size(3, 10), 0);
    cr_assert_eq(wire_value_size(WIRE_INT8), 0);
    size_t mib8 = (size_t)8 << 20;
    uint32_t c = wire_max_count(WIRE_INT8, mib8);
    cr_assert_leq(WIRE_HEADER + wire_payload_size(WIRE_INT8, c), mib8);
    cr_assert_gt(WIRE_HEADER + wire_payload_size(WIRE_INT8, c + 1), mib8);
    cr_assert_eq(c, 2045u * 4096 + 4056, "max int8 count %u", c);
    cr_assert_eq(wire_max_count(WIRE_INT8, WIRE_HEADER + 4), 0);
    cr_assert_eq(wire_max_count(WIRE_INT8, WIRE_HEADER + 5), 1);
    for (int d = 1; d <= 8; d *= 2) { // the ring's chunk sizes, as documented
        if (d == 4) continue;
        size_t ch = chunk_values(d);
        cr_assert_eq(ch % 4096, 0);
        cr_assert_leq(WIRE_HEADER + payload(d, ch), AR_MSG_BYTES);
        cr_assert_gt(WIRE_HEADER + payload(d, ch + 4096), AR_MSG_BYTES, "dtype %d", d);
    }
    // A valid int8 message; every single bit flip and a wrong length are rejected.
    float v[7] = {1, -2, 0.5f, 3, 0, -0.25f, 2};
    unsigned char m[WIRE_HEADER + 4 + 7];
    wire_header h = {.dtype = WIRE_INT8, .run_id = 9, .k = 20, .offset = 3, .count = 7}, d;
    size_t len = wire_encode(m, &h, v);
    cr_assert_eq(len, sizeof m);
    cr_assert_eq(wire_decode(m, len, 9, &d), ERR_OK, "%s", err_msg());
    cr_assert_eq(d.dtype, WIRE_INT8);
    for (size_t bit = 0; bit < 8 * len; bit++) {
        m[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        cr_assert_eq(wire_decode(m, len, 9, &d), ERR_FORMAT, "flip of bit %zu accepted", bit);
        m[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    }
    cr_assert_eq(wire_decode(m, len - 1, 9, &d), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "length"), "%s", err_msg());
}

// ---- the ring
// ---------------------------------------------------------------------------------------

Test(allreduce, fp32_mean_is_exact_ring_sum_and_identical_for_2_3_4_peers) {
    // n not divisible by P, n < P (empty segments), n = 1, and a few blocks.
    size_t ns[] = {1000, 1001, 1, 2, 3, 10007};
    for (int P = 2; P <= 4; P++) {
        ring r;
        ring_open(&r, P, P, 10007, WIRE_FP32);
        for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
            double worst = run_and_check(&r, ns[t], WIRE_FP32, 100 + t);
            cr_assert_leq(worst, 1.0, "P %d n %zu", P, ns[t]);
        }
        ring_close(&r);
    }
}

Test(allreduce, bf16_and_int8_are_identical_on_all_peers_and_within_the_bound) {
    int dtypes[2] = {WIRE_BF16, WIRE_INT8};
    for (int d = 0; d < 2; d++) {
        for (int P = 2; P <= 4; P++) {
            ring r;
            ring_open(&r, P, P, 3 * 4096 * 4 + 77, dtypes[d]);
            size_t ns[] = {3 * 4096 * 4 + 77, 5, 2};
            for (size_t t = 0; t < 3; t++) {
                double worst = run_and_check(&r, ns[t], dtypes[d], 7 + t);
                // With blocks of one value, int8 can be exact; with thousands it never is.
                if (t == 0) cr_assert_gt(worst, 0.01, "dtype %d P %d: no rounding?", dtypes[d], P);
            }
            ring_close(&r);
        }
    }
}

Test(allreduce, segments_of_several_messages_round_trip_fp32_and_int8) {
    // P = 2 and 6M floats: 3M per segment = 2 fp32 messages. int8 needs 8,376,320 per message:
    // 17M floats give 2 int8 messages per segment, the second holding a partial block.
    ring r;
    ring_open(&r, 2, 2, 6000001, WIRE_FP32);
    run_and_check(&r, 6000001, WIRE_FP32, 1);
    ring_close(&r);
    ring_open(&r, 2, 2, 17000001, WIRE_INT8);
    run_and_check(&r, 17000001, WIRE_INT8, 1);
    ring_close(&r);
}

Test(allreduce, world_of_one_is_a_bitwise_noop) {
    char *dir = tu_tmpdir("ar");
    peer_group *m = group_at(dir, 0, 1);
    ar_ctx *c;
    cr_assert_eq(ar_create(&c, m, PEER_CH_RING, 0, 1, RUN_ID, 8, WIRE_INT8), ERR_OK, "%s",
                 err_msg());
    float x[8] = {1.5f, -0.0f, NAN, INFINITY, 1e-45f, 3, -7, 0.1f}, y[8];
    memcpy(y, x, sizeof x);
    ar_stats st;
    double t0 = sys_now_ms();
    cr_assert_eq(ar_mean(c, x, 8, 1, 1000, &st), ERR_OK, "%s", err_msg());
    cr_assert_lt(sys_now_ms() - t0, 1000.0); // returns at once (loose: CI machines are noisy)
    cr_assert(memcmp(x, y, sizeof x) == 0, "x changed");
    cr_assert(st.bytes_sent == 0 && st.bytes_recv == 0 && st.msgs_dropped == 0);
    ar_destroy(c);
    peer_group_destroy(m);
    tu_rm_rf(dir);
    free(dir);
}

Test(allreduce, missing_peer_gives_timeout_and_leaves_x_unchanged) {
    // P = 2 with rank 1 absent, then P = 3 with rank 2 absent: every live peer gives up after
    // about timeout_ms without progress.
    for (int P = 2; P <= 3; P++) {
        ring r;
        ring_open(&r, P, P - 1, 5000, WIRE_FP32);
        vecs v;
        vecs_fill(&v, P - 1, 5000, 3);
        double t0 = sys_now_ms();
        ring_run(&r, v.x, 5000, 1, 300);
        double ms = sys_now_ms() - t0;
        for (int k = 0; k < P - 1; k++) {
            cr_assert_eq(r.p[k].rc, ERR_TIMEOUT, "P %d rank %d: %s", P, k, err_str(r.p[k].rc));
            cr_assert(strstr(r.p[k].msg, "300 ms"), "message: %s", r.p[k].msg);
            cr_assert(memcmp(v.x[k], v.orig[k], 5000 * sizeof(float)) == 0, "x changed");
        }
        cr_assert(ms >= 290 && ms < 5000, "P %d: gave up after %.0f ms, want ~300", P, ms);
        vecs_free(&v);
        ring_close(&r);
    }
}

// A member that was linked when the call began and leaves during it (its process ends) ends the
// call with ERR_PEER naming it, long before the timeout (20 s): the ring cannot finish, and the
// caller's next try (a new agreement) should not wait.
Test(allreduce, a_member_leaving_during_the_call_ends_it_with_err_peer) {
    ring r;
    ring_open(&r, 3, 3, 5000, WIRE_FP32);
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++)
            ring_wait_up(&r, a, b);
    vecs v;
    vecs_fill(&v, 3, 5000, 16);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) { // rank 2 never calls: 0 and 1 wait for it
        r.p[i] = (peer){.ctx = r.p[i].ctx, .x = v.x[i], .n = 5000, .tag = 3, .timeout_ms = WAIT_MS};
        cr_assert_eq(pthread_create(&th[i], NULL, peer_main, &r.p[i]), 0);
    }
    double t0 = sys_now_ms();
    peer_stats st;
    do { // both are in the call once each has sent its first chunk
        cr_assert(sys_now_ms() - t0 < WAIT_MS, "ranks 0, 1 sent nothing");
        usleep(1000);
        peer_get_stats(r.g[1], &st);
    } while (st.msgs_sent[PEER_CH_RING] == 0 || ring_recv(&r, 1) == 0);
    ar_destroy(r.p[2].ctx); // rank 2 goes away
    peer_group_destroy(r.g[2]);
    r.live = 2;
    t0 = sys_now_ms();
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    double ms = sys_now_ms() - t0;
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(r.p[i].rc, ERR_PEER, "rank %d: %s: %s", i, err_str(r.p[i].rc), r.p[i].msg);
        cr_assert(strstr(r.p[i].msg, "member 2 left"), "rank %d: %s", i, r.p[i].msg);
        cr_assert(memcmp(v.x[i], v.orig[i], 5000 * sizeof(float)) == 0, "x changed");
    }
    cr_assert(ms < WAIT_MS / 2, "the call went on %.0f ms after rank 2 left", ms);
    vecs_free(&v);
    ring_close(&r);
}

Test(allreduce, agreement_with_everyone_present_gives_every_rank_and_the_full_mean) {
    ring r;
    ring_open(&r, 3, 3, 3000, WIRE_FP32);
    vecs v;
    vecs_fill(&v, 3, 3000, 11);
    for (int a = 0; a < 3; a++) // the agreement waits for the members the view links to
        for (int b = a + 1; b < 3; b++)
            ring_wait_up(&r, a, b);
    for (int i = 0; i < 3; i++)
        r.p[i].agree = 1;
    r.p[2].start_after_ms = 100; // a little late, well within the timeout
    ring_run(&r, v.x, 3000, 7, 3000);
    ring_expect_ok(&r);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(r.p[i].nm, 3, "rank %d agreed on %d members", i, r.p[i].nm);
        cr_assert_eq(r.p[i].ahead, 0);
    }
    check_ring(v.orig, v.x, 3, 3000, WIRE_FP32);
    expect_identical(&v);
    vecs_free(&v);
    ring_close(&r);
}

// A dead peer has no link in the view, so the agreement does not wait for it at all (it waited
// out the whole timeout before the agreement started from the view).
Test(allreduce, agreement_leaves_out_a_dead_peer_at_once_and_the_rest_average_among_themselves) {
    ring r;
    ring_open(&r, 3, 2, 3000, WIRE_FP32); // rank 2 never starts
    // The live ranks must see each other before the agreement starts: on a loaded machine the
    // links can take a while to come up (1 of 5 runs failed with "1 members").
    ring_wait_up(&r, 0, 1);
    vecs v;
    vecs_fill(&v, 2, 3000, 12);
    for (int i = 0; i < 2; i++)
        r.p[i].agree = 1;
    double t0 = sys_now_ms();
    ring_run(&r, v.x, 3000, 9, 20000);
    double ms = sys_now_ms() - t0;
    ring_expect_ok(&r);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(r.p[i].nm, 2, "rank %d agreed on %d members", i, r.p[i].nm);
        cr_assert(r.p[i].members[0] == 0 && r.p[i].members[1] == 1);
    }
    for (size_t j = 0; j < 3000; j++) // two values: the ring sum is exact in either order
        cr_assert_eq(v.x[0][j], (v.orig[0][j] + v.orig[1][j]) / 2.0f, "j=%zu", j);
    expect_identical(&v);
    cr_assert(ms < 10000, "waited %.0f ms: the dead peer's 20 s timeout was waited out", ms);
    vecs_free(&v);
    ring_close(&r);
}

Test(allreduce, a_peer_arriving_after_the_decision_learns_it_is_out) {
    ring r;
    ring_open(&r, 2, 2, 1000, WIRE_FP32);
    ring_wait_up(&r, 0, 1);
    double t0;
    vecs v;
    vecs_fill(&v, 2, 1000, 13);
    r.p[0].agree = r.p[1].agree = 1;
    r.p[1].after = &r.p[0].done; // rank 1 starts once rank 0 has given up on it (200 ms)
    ring_run(&r, v.x, 1000, 5, 200);
    ring_expect_ok(&r);
    cr_assert_eq(r.p[0].nm, 1, "rank 0 should go on alone, got %d members", r.p[0].nm);
    cr_assert_eq(r.p[1].nm, 0, "rank 1 should know it was left out, got %d members", r.p[1].nm);
    cr_assert(memcmp(v.x[0], v.orig[0], 1000 * sizeof(float)) == 0, "alone: x must not change");
    // the next call: rank 0's later tag tells a peer still at tag 5 that it is behind
    int mem[MAXP], nm, ahead;
    pthread_t th;
    peer_stats st0;
    peer_get_stats(r.g[0], &st0);
    uint64_t sent = st0.msgs_sent[PEER_CH_RING];
    r.p[0].tag = 6;
    r.p[0].n = 1000;
    r.p[0].timeout_ms = 200;
    cr_assert_eq(pthread_create(&th, NULL, peer_main, &r.p[0]), 0);
    // rank 1 looks once rank 0's HERE of tag 6 is on its way (not after a guessed sleep)
    for (t0 = sys_now_ms(); st0.msgs_sent[PEER_CH_RING] == sent; peer_get_stats(r.g[0], &st0)) {
        cr_assert(sys_now_ms() - t0 < 10000, "rank 0 sent nothing for tag 6");
        usleep(1000);
    }
    cr_assert_eq(ar_agree(r.p[1].ctx, 5, 400, mem, &nm, &ahead, NULL), ERR_OK, "%s", err_msg());
    pthread_join(th, NULL);
    cr_assert_eq(ahead, 1, "a HERE of tag 6 must mark tag 5 as behind");
    vecs_free(&v);
    ring_close(&r);
}

// A peer whose links come up only after the others agreed (a restarted peer, just in time) never
// got their VIEW, and nobody is agreeing on its tag any more: the others answer its HERE with
// the VIEW they sent, so it learns at once that it was left out instead of waiting out the
// timeout (20 s here; 5 s in a DiLoCo outer step, where it stalled the restarted peer and,
// through it, the others).
Test(allreduce, a_peer_linked_after_the_decision_is_answered_with_the_view) {
    ring r;
    ring_open(&r, 3, 2, 1000, WIRE_FP32); // rank 2 is not there while 0 and 1 agree
    ring_wait_up(&r, 0, 1);
    vecs v;
    vecs_fill(&v, 3, 1000, 14);
    r.p[0].agree = r.p[1].agree = 1;
    ring_run(&r, v.x, 1000, 8, WAIT_MS);
    ring_expect_ok(&r);
    cr_assert(r.p[0].nm == 2 && r.p[1].nm == 2, "ranks 0, 1: %d, %d members", r.p[0].nm, r.p[1].nm);
    ring_add(&r, 1000, WIRE_FP32); // rank 2 comes up now, still at tag 8
    uint64_t recv0 = ring_recv(&r, 0), recv1 = ring_recv(&r, 1);
    peer *p2 = &r.p[2];
    p2->agree = 1;
    p2->tag = 8;
    p2->x = v.x[2];
    p2->n = 1000;
    p2->timeout_ms = WAIT_MS;
    atomic_store(&p2->done, 0);
    pthread_t th2, th[2];
    double t0 = sys_now_ms();
    cr_assert_eq(pthread_create(&th2, NULL, peer_main, p2), 0);
    // its HEREs reach ranks 0 and 1 while they train (in no call); their next agreement, tag 9,
    // finds them queued
    while (ring_recv(&r, 0) == recv0 || ring_recv(&r, 1) == recv1) {
        cr_assert(sys_now_ms() - t0 < 10000, "rank 2's HERE never arrived");
        usleep(1000);
    }
    for (int i = 0; i < 2; i++) {
        r.p[i].tag = 9;
        r.p[i].timeout_ms = WAIT_MS;
        cr_assert_eq(pthread_create(&th[i], NULL, peer_main, &r.p[i]), 0);
    }
    pthread_join(th2, NULL);
    double ms = sys_now_ms() - t0;
    cr_assert_eq(p2->rc, ERR_OK, "%s", p2->msg);
    cr_assert(p2->nm == 0 || p2->ahead, "rank 2 took itself for a member (%d members)", p2->nm);
    cr_assert(ms < WAIT_MS / 2, "rank 2 waited %.0f ms: nobody answered it", ms);
    // and it takes part in the next one with everyone
    p2->tag = 9;
    p2->ahead = 0;
    peer_main(p2);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    ring_expect_ok(&r);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(r.p[i].nm, 3, "tag 9: rank %d agreed on %d members", i, r.p[i].nm);
    expect_identical(&v);
    vecs_free(&v);
    ring_close(&r);
}

// The same peer linked after the decision, while the others are inside the all-reduce of that
// tag (where a restarted DiLoCo peer finds them): rank 0, waiting in the ring for rank 1, answers
// with its VIEW, and that VIEW alone settles that rank 2 is out (rank 1, held before its ring,
// says nothing).
Test(allreduce, a_peer_linked_during_the_all_reduce_is_answered_from_the_ring) {
    ring r;
    ring_open(&r, 3, 2, 1000, WIRE_FP32); // rank 2 is not there while 0 and 1 agree
    ring_wait_up(&r, 0, 1);
    vecs v;
    vecs_fill(&v, 3, 1000, 15);
    atomic_int go = 0;
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        r.p[i] = (peer){.ctx = r.p[i].ctx,
                        .x = v.x[i],
                        .n = 1000,
                        .tag = 12,
                        .timeout_ms = WAIT_MS,
                        .agree = 1};
    r.p[1].before_ring = &go;
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, peer_main, &r.p[i]), 0);
    double t0 = sys_now_ms();
    while (!atomic_load(&r.p[0].agreed) || !atomic_load(&r.p[1].agreed)) {
        cr_assert(sys_now_ms() - t0 < WAIT_MS, "ranks 0 and 1 never agreed");
        usleep(1000);
    }
    cr_assert(r.p[0].nm == 2 && r.p[1].nm == 2, "ranks 0, 1: %d, %d members", r.p[0].nm, r.p[1].nm);
    // now rank 0 waits in the ring for rank 1; rank 2 comes up, still at tag 12
    ring_add(&r, 1000, WIRE_FP32);
    peer *p2 = &r.p[2];
    *p2 = (peer){
        .ctx = p2->ctx, .x = v.x[2], .n = 1000, .tag = 12, .timeout_ms = WAIT_MS, .agree = 1};
    t0 = sys_now_ms();
    peer_main(p2);
    double ms = sys_now_ms() - t0;
    atomic_store(&go, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    ring_expect_ok(&r);
    cr_assert_eq(p2->nm, 0, "rank 2 took itself for a member (%d members)", p2->nm);
    cr_assert_eq(p2->ahead, 0);
    cr_assert(ms < WAIT_MS / 2, "rank 2 waited %.0f ms: nobody answered it", ms);
    cr_assert(memcmp(v.x[2], v.orig[2], 1000 * sizeof(float)) == 0, "left out: x must not change");
    for (size_t j = 0; j < 1000; j++) // ranks 0 and 1 averaged between themselves
        cr_assert_eq(v.x[0][j], (v.orig[0][j] + v.orig[1][j]) / 2.0f, "j=%zu", j);
    cr_assert_eq(memcmp(v.x[0], v.x[1], 1000 * sizeof(float)), 0);
    vecs_free(&v);
    ring_close(&r);
}

Test(allreduce, group_arguments_are_checked) {
    ring r;
    ring_open(&r, 3, 1, 100, WIRE_FP32);
    float x[100] = {0};
    int not_me[2] = {1, 2}, unsorted[2] = {1, 0}, too_big[2] = {0, 3};
    cr_assert_eq(ar_mean_group(r.p[0].ctx, x, 100, 1, not_me, 2, 100, NULL), ERR_INVAL);
    cr_assert(strstr(err_msg(), "not among"), "%s", err_msg());
    cr_assert_eq(ar_mean_group(r.p[0].ctx, x, 100, 1, unsorted, 2, 100, NULL), ERR_INVAL);
    cr_assert_eq(ar_mean_group(r.p[0].ctx, x, 100, 1, too_big, 2, 100, NULL), ERR_INVAL);
    int alone[1] = {0};
    cr_assert_eq(ar_mean_group(r.p[0].ctx, x, 100, 1, alone, 1, 100, NULL), ERR_OK);
    ring_close(&r);
}

Test(allreduce, stale_tag_foreign_run_and_garbage_are_dropped_and_counted) {
    ring r;
    ring_open(&r, 2, 2, 3000, WIRE_FP32);
    ring_wait_up(&r, 0, 1);
    // What rank 0 would send first for tag 6 (an earlier, abandoned call), the same for another
    // run, and 100 bytes of garbage: all reach rank 1 before the tag-7 call's messages.
    float vals[1500];
    tu_rand_fill(vals, 1500, 1, -1, 1);
    wire_header h = {.dtype = WIRE_FP32,
                     .run_id = RUN_ID,
                     .sender = 0,
                     .kind = WIRE_RING_RS,
                     .round = 6,
                     .k = 3000,
                     .offset = 0,
                     .count = 1500};
    unsigned char *buf = xmalloc(WIRE_HEADER + 4 * 1500);
    size_t l1 = wire_encode(buf, &h, vals);
    cr_assert_eq(peer_send(r.g[0], 1, PEER_CH_RING, buf, l1), ERR_OK, "%s", err_msg());
    h.round = 7;
    h.run_id = RUN_ID + 1;
    size_t l2 = wire_encode(buf, &h, vals);
    cr_assert_eq(peer_send(r.g[0], 1, PEER_CH_RING, buf, l2), ERR_OK, "%s", err_msg());
    memset(buf, 0x5A, 100);
    cr_assert_eq(peer_send(r.g[0], 1, PEER_CH_RING, buf, 100), ERR_OK, "%s", err_msg());
    free(buf);
    vecs v;
    vecs_fill(&v, 2, 3000, 5);
    ring_run(&r, v.x, 3000, 7, WAIT_MS);
    ring_expect_ok(&r);
    expect_identical(&v);
    check_ring(v.orig, v.x, 2, 3000, WIRE_FP32);
    uint64_t extra[2] = {0, l1 + l2 + 100};
    expect_bytes(&r, 3000, WIRE_FP32, extra);
    cr_assert_eq(r.p[0].st.msgs_dropped, 0);
    cr_assert_eq(r.p[1].st.msgs_dropped, 3, "rank 1 dropped %llu",
                 (unsigned long long)r.p[1].st.msgs_dropped);
    vecs_free(&v);
    ring_close(&r);
}

Test(allreduce, peers_disagreeing_on_n_time_out_instead_of_mixing_values) {
    ring r;
    ring_open(&r, 2, 2, 200, WIRE_FP32);
    vecs v;
    vecs_fill(&v, 2, 200, 9);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        r.p[i] = (peer){
            .ctx = r.p[i].ctx, .x = v.x[i], .n = 100 + (size_t)i, .tag = 1, .timeout_ms = 1000};
        cr_assert_eq(pthread_create(&th[i], NULL, peer_main, &r.p[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    uint64_t dropped = 0;
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(r.p[i].rc, ERR_TIMEOUT, "rank %d: %s", i, err_str(r.p[i].rc));
        cr_assert(memcmp(v.x[i], v.orig[i], 200 * sizeof(float)) == 0, "x changed");
        dropped += r.p[i].st.msgs_dropped;
    }
    // each rank sends its first chunk at once; at least the one that arrives first is refused
    // (which rank receives within the timeout depends on scheduling, e.g. under ASan)
    cr_assert_gt(dropped, 0, "no mismatched message was dropped");
    vecs_free(&v);
    ring_close(&r);
}

static void *close_later(void *arg) {
    struct timespec ts = {0, 100 * 1000000L};
    nanosleep(&ts, NULL);
    peer_group_close(arg);
    return NULL;
}

Test(allreduce, closing_the_group_aborts_a_waiting_call_with_err_closed) {
    ring r;
    ring_open(&r, 2, 1, 100, WIRE_FP32); // rank 1 never comes
    float x[100] = {0};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, close_later, r.g[0]), 0);
    double t0 = sys_now_ms();
    int rc = ar_mean(r.p[0].ctx, x, 100, 1, 10000, NULL);
    pthread_join(th, NULL);
    cr_assert_eq(rc, ERR_CLOSED, "%s: %s", err_str(rc), err_msg());
    cr_assert_lt(sys_now_ms() - t0, 2000.0);
    ring_close(&r);
}

Test(allreduce, bad_arguments_are_rejected_naming_the_argument) {
    char *dir = tu_tmpdir("ar");
    peer_group *m = group_at(dir, 0, 2); // rank 1 never comes
    static int sentinel;
    ar_ctx *c;
    struct {
        peer_group *mesh;
        int rank, world;
        uint64_t run_id;
        size_t max_n;
        int dtype;
        const char *word;
    } bad[] = {
        {m, 0, 2, RUN_ID, 10, 3, "dtype"},
        {m, 0, 2, RUN_ID, 10, 0, "dtype"},
        {m, 2, 2, RUN_ID, 10, WIRE_FP32, "rank"},
        {m, -1, 2, RUN_ID, 10, WIRE_FP32, "rank"},
        {m, 0, 0, RUN_ID, 10, WIRE_FP32, "world"},
        {m, 0, 2, 0, 10, WIRE_FP32, "run_id"},
        {m, 0, 2, RUN_ID, (size_t)UINT32_MAX + 1, WIRE_FP32, "max_n"},
        {NULL, 0, 2, RUN_ID, 10, WIRE_FP32, "group"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c = (ar_ctx *)&sentinel;
        int rc = ar_create(&c, bad[i].mesh, PEER_CH_RING, bad[i].rank, bad[i].world, bad[i].run_id,
                           bad[i].max_n, bad[i].dtype);
        cr_assert_eq(rc, ERR_INVAL, "case %zu: %s", i, err_str(rc));
        cr_assert_null(c, "case %zu: *out is NULL on failure", i);
        cr_assert(strstr(err_msg(), bad[i].word), "case %zu: '%s' does not name %s", i, err_msg(),
                  bad[i].word);
    }
    cr_assert_eq(ar_create(&c, m, PEER_CH_RING, 0, 2, RUN_ID, 10, WIRE_FP32), ERR_OK, "%s",
                 err_msg());
    float x[11] = {0};
    cr_assert_eq(ar_mean(c, x, 11, 1, 100, NULL), ERR_INVAL);
    cr_assert(strstr(err_msg(), "max_n"), "%s", err_msg());
    cr_assert_eq(ar_mean(c, x, 10, 1, 0, NULL), ERR_INVAL);
    cr_assert(strstr(err_msg(), "timeout_ms"), "%s", err_msg());
    cr_assert_eq(ar_mean(c, NULL, 10, 1, 100, NULL), ERR_INVAL);
    cr_assert_eq(ar_mean(c, x, 0, 1, 100, NULL), ERR_OK, "n = 0 is a no-op");
    ar_destroy(c);
    ar_destroy(NULL);
    peer_group_destroy(m);
    tu_rm_rf(dir);
    free(dir);
}

// ---- the all-gather ---------------------------------------------------------------------------

// gather_bytes: the bytes one member sends to each other member for n values: every chunk with
// its header.
static uint64_t gather_bytes(size_t n, int dtype) {
    size_t c = chunk_values(dtype);
    uint64_t b = 0;
    for (size_t a = 0; a < n; a += c)
        b += 48 + payload(dtype, n - a < c ? n - a : c);
    return b;
}

// gather_run: the live peers agree and all-gather v's vectors of n values, rows by rank (every
// rank is a member); gather_free frees the rows.
static void gather_run(ring *r, vecs *v, size_t n, uint64_t tag, int check_only) {
    for (int i = 0; i < r->live; i++) {
        peer *p = &r->p[i];
        p->agree = p->gather = 1;
        p->check_only = check_only;
        for (int q = 0; q < r->world; q++)
            p->rows[q] = q == i ? v->x[i] : xmalloc(n * sizeof(float));
    }
    ring_run(r, v->x, n, tag, WAIT_MS);
}

static void gather_free(ring *r) {
    for (int i = 0; i < r->live; i++)
        for (int q = 0; q < r->world; q++)
            if (q != i) free(r->p[i].rows[q]);
}

// Every member ends with every other member's vector, bit for bit as that member holds its own
// (fp32: x; bf16: x rounded, in place), and each sends exactly (P-1) times its chunks.
Test(allreduce, all_gather_gives_every_member_every_vector_and_its_own_as_decoded) {
    const int dtypes[2] = {WIRE_FP32, WIRE_BF16};
    for (int d = 0; d < 2; d++) {
        enum { P = 4 };
        size_t n = 3 * 258048 + 1234;
        ring r;
        ring_open(&r, P, P, n, dtypes[d]);
        for (int i = 1; i < P; i++)
            for (int j = 0; j < i; j++)
                ring_wait_up(&r, i, j);
        vecs v;
        vecs_fill(&v, P, n, 31 + (uint64_t)d);
        gather_run(&r, &v, n, 3, 0);
        ring_expect_ok(&r);
        for (int i = 0; i < P; i++) {
            cr_assert_eq(r.p[i].nm, P);
            for (int q = 0; q < P; q++) {
                cr_assert_eq(r.p[i].bad[q], 0, "rank %d: member %d flagged", i, q);
                cr_assert_eq(memcmp(r.p[i].rows[q], v.x[q], n * sizeof(float)), 0,
                             "dtype %d: rank %d's row of member %d differs from its own", dtypes[d],
                             i, q);
            }
            uint64_t want = (uint64_t)(P - 1) * gather_bytes(n, dtypes[d]);
            cr_assert_eq(r.p[i].st.bytes_sent, want, "rank %d sent %llu, want %llu", i,
                         (unsigned long long)r.p[i].st.bytes_sent, (unsigned long long)want);
            // plus any agreement message that came late (a HERE or VIEW sent again), dropped
            uint64_t got = r.p[i].st.bytes_recv, late = r.p[i].st.msgs_dropped * (48 + 4 * P);
            cr_assert(got >= want && got - want <= late, "rank %d received %llu, want %llu", i,
                      (unsigned long long)got, (unsigned long long)want);
        }
        if (dtypes[d] == WIRE_BF16) // in place: rounded to bf16 (the low 16 bits are zero)
            for (size_t j = 0; j < n; j += 997) {
                uint32_t u;
                memcpy(&u, &v.x[1][j], 4);
                cr_assert_eq(u & 0xFFFF, 0u, "j=%zu", j);
            }
        gather_free(&r);
        vecs_free(&v);
        ring_close(&r);
    }
}

// A member whose vector holds a NaN or an inf is flagged by every other member (also when the
// values are only checked, not kept); the others are not. A member that every member's agreement
// leaves out is out everywhere, even where it was heard: it learns that it is out.
Test(allreduce, all_gather_flags_non_finite_senders_and_the_agreement_can_leave_one_out) {
    enum { P = 3 };
    size_t n = 300000;
    ring r;
    ring_open(&r, P, P, n, WIRE_FP32);
    for (int i = 1; i < P; i++)
        for (int j = 0; j < i; j++)
            ring_wait_up(&r, i, j);
    for (int check_only = 0; check_only < 2; check_only++) {
        vecs v;
        vecs_fill(&v, P, n, 5);
        v.x[2][n - 3] = check_only ? INFINITY : NAN;
        gather_run(&r, &v, n, 10 + (uint64_t)check_only, check_only);
        ring_expect_ok(&r);
        for (int i = 0; i < P; i++)
            for (int q = 0; q < P; q++)
                cr_assert_eq(r.p[i].bad[q], q == 2 && i != 2, "rank %d flags member %d: %d", i, q,
                             r.p[i].bad[q]);
        gather_free(&r);
        vecs_free(&v);
    }
    // rank 0 leaves rank 2 out: ranks 0 and 1 agree on {0, 1}; rank 2 learns it is out
    unsigned char except[P] = {0, 0, 1};
    r.p[0].except = except;
    vecs v;
    vecs_fill(&v, P, n, 6);
    gather_run(&r, &v, n, 20, 0);
    ring_expect_ok(&r);
    cr_assert(r.p[0].nm == 2 && r.p[1].nm == 2 && r.p[2].nm == 0, "members: %d, %d, %d", r.p[0].nm,
              r.p[1].nm, r.p[2].nm);
    cr_assert(r.p[1].members[0] == 0 && r.p[1].members[1] == 1);
    cr_assert_eq(memcmp(r.p[1].rows[0], v.x[0], n * sizeof(float)), 0);
    gather_free(&r);
    vecs_free(&v);
    ring_close(&r);
}
