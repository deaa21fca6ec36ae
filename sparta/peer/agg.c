// agg.c: the aggregation rules of agg.h. The robust rules sort each coordinate's m values as
// unsigned keys that order like the IEEE total order (flip every bit of a negative float, the sign
// bit of a positive one), so ties and signed zeros sort the same way on every peer; m is a few
// peers, so an insertion sort on the stack does it (qsort beyond 32). The mean keeps SPARTA's
// order of operations (the first row, plus each further row in turn, divided by m), blockwise so
// that out may be a row. Pure; trainer thread (OpenMP).
#include "sparta/peer/agg.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "train/base/err.h"

enum {
    BLOCK = 256,     // mean: coordinates per block (a stack accumulator)
    NORM_PARTS = 64, // agg_norm: fixed blocks, whatever the thread count
    INSERTION_MAX = 32,
};

int agg_trim_count(float trim, int m) {
    int t = (int)floor((double)trim * m + 1e-6);
    if (t < 0) t = 0;
    if (t > (m - 1) / 2) t = (m - 1) / 2;
    return t;
}

static inline uint32_t key_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

static inline float float_of(uint32_t k) {
    uint32_t u = k & 0x80000000u ? k ^ 0x80000000u : ~k;
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

static void sort_keys(uint32_t *k, int m) {
    if (m > INSERTION_MAX)
        qsort(k, (size_t)m, sizeof *k, cmp_key);
    else
        agg_sort_u32(k, (size_t)m);
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

// sorted_rows: the trimmed mean (t cut from each end) or the median of each coordinate.
static void sorted_rows(int median, int t, const float *const *rows, int m, size_t n, float *out) {
    float div = (float)(m - 2 * t);
#pragma omp parallel for schedule(static) if (n > 16384)
    for (size_t i = 0; i < n; i++) {
        uint32_t k[AGG_MAX_ROWS];
        for (int q = 0; q < m; q++)
            k[q] = key_of(rows[q][i]);
        sort_keys(k, m);
        if (median) {
            out[i] = m % 2 ? float_of(k[m / 2])
                           : 0.5f * float_of(k[m / 2 - 1]) + 0.5f * float_of(k[m / 2]);
        } else {
            float s = float_of(k[t]);
            for (int j = t + 1; j < m - t; j++)
                s += float_of(k[j]);
            out[i] = s / div;
        }
    }
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
