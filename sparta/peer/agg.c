// agg.c: the aggregation rules of agg.h. The robust rules sort each coordinate's m values as
// unsigned keys that order like the IEEE total order (flip every bit of a negative float, the sign
// bit of a positive one), so ties and signed zeros sort the same way on every peer. m is a few
// peers: up to NET_MAX rows, a block of BLOCK coordinates is sorted at once by a sorting network
// (odd-even transposition: m passes of compare-exchanges between neighbouring rows, each a
// branch-free min/max over the block, which vectorizes), about 20 times faster than an insertion
// sort per coordinate (bench_sparta: agg_ns_per_value_*); beyond NET_MAX, qsort per coordinate.
// The mean keeps SPARTA's order of operations (the first row, plus each further row in turn,
// divided by m). Both go block by block, reading a block of every row before writing that block,
// so out may be a row. Pure; trainer thread (OpenMP).
#include "sparta/peer/agg.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "train/base/err.h"

enum {
    BLOCK = 256,     // coordinates per block (stack buffers)
    NORM_PARTS = 64, // agg_norm: fixed blocks, whatever the thread count
    NET_MAX = 32,    // rows sorted by the network (keys of a block: NET_MAX x BLOCK x 4 bytes)
};

int agg_trim_count(float trim, int m) {
    int t = (int)floor((double)trim * m + 1e-6);
    if (t < 0) t = 0;
    if (t > (m - 1) / 2) t = (m - 1) / 2;
    return t;
}

// key_of: a negative float gets every bit flipped, a positive one its sign bit (branch-free).
static inline uint32_t key_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
}

static inline float float_of(uint32_t k) {
    uint32_t u = k ^ (~(uint32_t)((int32_t)k >> 31) | 0x80000000u); // top bit clear: negative
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int cmp_key(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

void agg_sort_u32(uint32_t *x, size_t m) {
    for (size_t i = 1; i < m; i++) {
        uint32_t v = x[i];
        size_t j = i;
        for (; j > 0 && x[j - 1] > v; j--)
            x[j] = x[j - 1];
        x[j] = v;
    }
}

// mean_rows: block by block, the rows summed in order into a stack accumulator, then divided.
static void mean_rows(const float *const *rows, int m, size_t n, float *out) {
    float div = (float)m;
    size_t nb = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t b = 0; b < nb; b++) {
        size_t lo = b * BLOCK, len = n - lo < BLOCK ? n - lo : BLOCK;
        float acc[BLOCK];
        memcpy(acc, rows[0] + lo, len * sizeof(float));
        for (int q = 1; q < m; q++) {
            const float *r = rows[q] + lo;
            for (size_t i = 0; i < len; i++)
                acc[i] += r[i];
        }
        for (size_t i = 0; i < len; i++)
            out[lo + i] = acc[i] / div;
    }
}

// keep writes out(len) from sorted keys, k[j * stride + i] the j-th smallest of coordinate i:
// the median, or the trimmed mean summed from the smallest kept value up.
static void keep(int median, int t, int m, const uint32_t *k, size_t stride, size_t len,
                 float *out) {
    if (median && m % 2) {
        for (size_t i = 0; i < len; i++)
            out[i] = float_of(k[(size_t)(m / 2) * stride + i]);
    } else if (median) {
        const uint32_t *a = k + (size_t)(m / 2 - 1) * stride, *b = a + stride;
        for (size_t i = 0; i < len; i++)
            out[i] = 0.5f * float_of(a[i]) + 0.5f * float_of(b[i]);
    } else {
        float div = (float)(m - 2 * t);
        for (size_t i = 0; i < len; i++)
            out[i] = float_of(k[(size_t)t * stride + i]);
        for (int j = t + 1; j < m - t; j++)
            for (size_t i = 0; i < len; i++)
                out[i] += float_of(k[(size_t)j * stride + i]);
        for (size_t i = 0; i < len; i++)
            out[i] /= div;
    }
}

// sorted_block: the rule over coordinates lo .. lo+len of the rows (m <= NET_MAX), by the network.
static void sorted_block(int median, int t, const float *const *rows, int m, size_t lo, size_t len,
                         float *out) {
    uint32_t k[NET_MAX * BLOCK];
    for (int q = 0; q < m; q++)
        for (size_t i = 0; i < len; i++)
            k[(size_t)q * BLOCK + i] = key_of(rows[q][lo + i]);
    for (int pass = 0; pass < m; pass++) // odd-even transposition: sorted after m passes
        for (int q = pass % 2; q + 1 < m; q += 2) {
            uint32_t *a = k + (size_t)q * BLOCK, *b = a + BLOCK;
            for (size_t i = 0; i < len; i++) {
                uint32_t x = a[i], y = b[i];
                a[i] = x < y ? x : y;
                b[i] = x < y ? y : x;
            }
        }
    keep(median, t, m, k, BLOCK, len, out + lo);
}

// sorted_rows: the trimmed mean (t cut from each end) or the median of each coordinate.
static void sorted_rows(int median, int t, const float *const *rows, int m, size_t n, float *out) {
    if (m > NET_MAX) { // many peers: one coordinate at a time
#pragma omp parallel for schedule(static) if (n > 4096)
        for (size_t i = 0; i < n; i++) {
            uint32_t k[AGG_MAX_ROWS];
            for (int q = 0; q < m; q++)
                k[q] = key_of(rows[q][i]);
            qsort(k, (size_t)m, sizeof *k, cmp_key);
            keep(median, t, m, k, 1, 1, out + i);
        }
        return;
    }
    size_t nb = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t b = 0; b < nb; b++)
        sorted_block(median, t, rows, m, b * BLOCK, n - b * BLOCK < BLOCK ? n - b * BLOCK : BLOCK,
                     out);
}

void agg_rows(cfg_aggregate rule, float trim, const float *const *rows, int m, size_t n,
              float *out) {
    ASSERT(m >= 1 && m <= AGG_MAX_ROWS && rows != NULL && (out != NULL || n == 0));
    if (rule == CFG_AGG_MEAN)
        mean_rows(rows, m, n, out);
    else
        sorted_rows(rule == CFG_AGG_MEDIAN, rule == CFG_AGG_MEDIAN ? 0 : agg_trim_count(trim, m),
                    rows, m, n, out);
}

int agg_finite(const float *x, size_t n) {
    uint32_t bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (n > (1u << 20))
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u; // exponent all ones: inf or NaN
    }
    return !bad;
}

double agg_norm(const float *x, size_t n) {
    double part[NORM_PARTS];
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int p = 0; p < NORM_PARTS; p++) {
        size_t lo = n * (size_t)p / NORM_PARTS, hi = n * (size_t)(p + 1) / NORM_PARTS;
        double s = 0;
        for (size_t i = lo; i < hi; i++)
            s += (double)x[i] * (double)x[i];
        part[p] = s;
    }
    double s = 0;
    for (int p = 0; p < NORM_PARTS; p++)
        s += part[p];
    return sqrt(s);
}

int agg_clip(float *x, size_t n, float max_norm, double *norm) {
    double v = agg_norm(x, n);
    if (norm) *norm = v;
    if (!(max_norm > 0) || !(v > max_norm)) return 0;
    float scale = (float)((double)max_norm / v);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        x[i] *= scale;
    return 1;
}
