// agg_test.c: the aggregation rules (sparta/peer/agg.h) against simple references: how many
// values the trimmed mean cuts, the trimmed mean and the median with odd and even counts, ties
// and signed zeros, results that do not depend on the order of the rows or the thread count, the
// mean in SPARTA's order of operations, outliers cut, and the finite check, norm and clip.
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/agg.h"
#include "tests/test_util.h"
#include "train/ops.h"

TestSuite(agg, .timeout = 30);

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

// ref_column: the reference of one coordinate: sort the values (distinct non-zero values here),
// keep the middle, sum them from the smallest up in float and divide, or take the middle.
static float ref_column(cfg_aggregate rule, float trim, float *v, int m) {
    qsort(v, (size_t)m, sizeof *v, cmp_float);
    if (rule == CFG_AGG_MEDIAN) return m % 2 ? v[m / 2] : 0.5f * v[m / 2 - 1] + 0.5f * v[m / 2];
    int t = agg_trim_count(trim, m);
    float s = v[t];
    for (int j = t + 1; j < m - t; j++)
        s += v[j];
    return s / (float)(m - 2 * t);
}

// rows_of points rows[q] at data + q * n.
static void rows_of(const float **rows, float *data, int m, size_t n) {
    for (int q = 0; q < m; q++)
        rows[q] = data + (size_t)q * n;
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

Test(agg, trim_count_cuts_floor_of_trim_times_m_and_leaves_one) {
    const struct {
        float trim;
        int m, t;
    } cases[] = {{0.25f, 4, 1}, {0.25f, 5, 1}, {0.25f, 7, 1}, {0.25f, 8, 2},  {0.2f, 5, 1},
                 {0.2f, 4, 0},  {0.2f, 10, 2}, {0.1f, 10, 1}, {0.15f, 20, 3}, {0.3f, 10, 3},
                 {0.5f, 4, 1},  {0.5f, 5, 2},  {0.5f, 2, 0},  {0.0f, 7, 0},   {0.25f, 1, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_assert_eq(agg_trim_count(cases[i].trim, cases[i].m), cases[i].t, "trim %g of %d",
                     cases[i].trim, cases[i].m);
}

Test(agg, median_of_odd_and_even_counts_and_ties) {
    float a[] = {3, 1, 2}, b[] = {4, 1, 3, 2}, c[] = {5, 5, 1, 5}, d[] = {2, 2};
    const float *ra[3] = {a, a + 1, a + 2}, *rb[4] = {b, b + 1, b + 2, b + 3};
    const float *rc[4] = {c, c + 1, c + 2, c + 3}, *rd[2] = {d, d + 1};
    float out;
    agg_rows(CFG_AGG_MEDIAN, 0, ra, 3, 1, &out);
    cr_assert_eq(out, 2.0f);
    agg_rows(CFG_AGG_MEDIAN, 0, rb, 4, 1, &out);
    cr_assert_eq(out, 2.5f);
    agg_rows(CFG_AGG_MEDIAN, 0, rc, 4, 1, &out);
    cr_assert_eq(out, 5.0f, "ties in the middle");
    agg_rows(CFG_AGG_MEDIAN, 0, rd, 2, 1, &out);
    cr_assert_eq(out, 2.0f);
    agg_rows(CFG_AGG_MEDIAN, 0, ra, 1, 1, &out);
    cr_assert_eq(out, 3.0f, "one value is its own median");
    // huge values: the even median does not overflow
    float h[] = {3e38f, 3.2e38f}, *rh[2] = {h, h + 1};
    agg_rows(CFG_AGG_MEDIAN, 0, (const float *const *)rh, 2, 1, &out);
    cr_assert(isfinite(out) && out > 3e38f, "%g", out);
}

// 1 to 9 rows and around 32, where the sorting network gives way to qsort per coordinate.
Test(agg, trimmed_mean_and_median_match_the_reference_for_1_to_40_rows) {
    enum { N = 257, MAXM = 40 };
    float *data = malloc(MAXM * N * sizeof(float)), out[N], col[MAXM];
    const float *rows[MAXM];
    const float trims[] = {0.0f, 0.1f, 0.2f, 0.25f, 0.34f, 0.5f};
    const int ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 31, 32, 33, 40};
    for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
        int m = ms[mi];
        tu_rand_fill(data, (size_t)m * N, 100 + (uint64_t)m, -2.0f, 3.0f);
        rows_of(rows, data, m, N);
        for (size_t ti = 0; ti < sizeof trims / sizeof trims[0]; ti++) {
            for (int rule = CFG_AGG_TRIMMED_MEAN; rule <= CFG_AGG_MEDIAN; rule++) {
                agg_rows((cfg_aggregate)rule, trims[ti], rows, m, N, out);
                for (int i = 0; i < N; i++) {
                    for (int q = 0; q < m; q++)
                        col[q] = rows[q][i];
                    float want = ref_column((cfg_aggregate)rule, trims[ti], col, m);
                    cr_assert(same_bits(out[i], want), "m=%d trim=%g rule=%d i=%d: %.9g vs %.9g", m,
                              trims[ti], rule, i, out[i], want);
                }
            }
        }
    }
    free(data);
}

Test(agg, mean_is_the_sum_in_row_order_divided_by_m_and_out_may_be_a_row) {
    enum { N = 1000, M = 5 };
    float data[M * N], out[N];
    const float *rows[M];
    tu_rand_fill(data, M * N, 7, -1.0f, 1.0f);
    rows_of(rows, data, M, N);
    agg_rows(CFG_AGG_MEAN, 0.25f, rows, M, N, out);
    for (int i = 0; i < N; i++) {
        float s = rows[0][i];
        for (int q = 1; q < M; q++)
            s += rows[q][i];
        cr_assert(same_bits(out[i], s / (float)M), "i=%d", i);
    }
    // into row 2 itself: the same bits
    float *row2 = data + 2 * N;
    agg_rows(CFG_AGG_MEAN, 0, rows, M, N, row2);
    cr_assert_eq(memcmp(row2, out, sizeof out), 0);
    tu_rand_fill(data, M * N, 7, -1.0f, 1.0f);
    agg_rows(CFG_AGG_MEDIAN, 0, rows, M, N, out);
    agg_rows(CFG_AGG_MEDIAN, 0, rows, M, N, row2);
    cr_assert_eq(memcmp(row2, out, sizeof out), 0, "the median into a row");
}

Test(agg, robust_results_do_not_depend_on_the_order_of_the_rows_or_on_signed_zeros) {
    enum { N = 500, M = 6 };
    float data[M * N], a[N], b[N];
    const float *rows[M], *perm[M];
    tu_rand_fill(data, M * N, 11, -1.0f, 1.0f);
    for (int i = 0; i < N; i += 7) { // ties and zeros of both signs in some columns
        data[i] = 0.0f;
        data[N + i] = -0.0f;
        data[2 * N + i] = data[3 * N + i];
    }
    rows_of(rows, data, M, N);
    const int order[M] = {3, 0, 5, 1, 4, 2};
    for (int q = 0; q < M; q++)
        perm[q] = rows[order[q]];
    for (int rule = CFG_AGG_TRIMMED_MEAN; rule <= CFG_AGG_MEDIAN; rule++) {
        agg_rows((cfg_aggregate)rule, 0.2f, rows, M, N, a);
        agg_rows((cfg_aggregate)rule, 0.2f, perm, M, N, b);
        cr_assert_eq(memcmp(a, b, sizeof a), 0, "rule %d depends on the row order", rule);
    }
    // -0 sorts before +0: the median of {+0, -0, +0} is +0, of {-0, +0, -0} is -0, either order
    float z[3] = {0.0f, -0.0f, 0.0f}, out;
    const float *rz[3] = {z, z + 1, z + 2}, *rz2[3] = {z + 1, z, z + 2};
    agg_rows(CFG_AGG_MEDIAN, 0, rz, 3, 1, &out);
    cr_assert(same_bits(out, 0.0f));
    agg_rows(CFG_AGG_MEDIAN, 0, rz2, 3, 1, &out);
    cr_assert(same_bits(out, 0.0f));
    float y[3] = {-0.0f, 0.0f, -0.0f};
    const float *ry[3] = {y, y + 1, y + 2};
    agg_rows(CFG_AGG_MEDIAN, 0, ry, 3, 1, &out);
    cr_assert(same_bits(out, -0.0f));
}

Test(agg, results_do_not_depend_on_the_thread_count) {
    enum { M = 5 };
    size_t n = 200000; // above the OpenMP thresholds
    float *data = malloc(M * n * sizeof(float)), *a = malloc(n * sizeof(float));
    float *b = malloc(n * sizeof(float));
    const float *rows[M];
    tu_rand_fill(data, M * n, 5, -1.0f, 1.0f);
    rows_of(rows, data, M, n);
    for (int rule = CFG_AGG_MEAN; rule <= CFG_AGG_MEDIAN; rule++) {
        ops_init(1);
        agg_rows((cfg_aggregate)rule, 0.25f, rows, M, n, a);
        double na = agg_norm(data, M * n);
        ops_init(2);
        agg_rows((cfg_aggregate)rule, 0.25f, rows, M, n, b);
        double nb = agg_norm(data, M * n);
        cr_assert_eq(memcmp(a, b, n * sizeof(float)), 0, "rule %d", rule);
        cr_assert_eq(memcmp(&na, &nb, sizeof na), 0, "the norm");
    }
    free(data);
    free(a);
    free(b);
}

Test(agg, an_outlier_per_coordinate_is_cut_by_the_trimmed_mean_and_the_median) {
    enum { N = 64, M = 5 };
    float data[M * N], out[N], col[M - 1];
    const float *rows[M];
    tu_rand_fill(data, M * N, 3, 0.5f, 1.5f);
    for (int i = 0; i < N; i++)
        data[4 * N + i] = i % 2 ? 1e30f : -1e30f; // an attacker's row
    rows_of(rows, data, M, N);
    agg_rows(CFG_AGG_TRIMMED_MEAN, 0.25f, rows, M, N, out);
    for (int i = 0; i < N; i++) {
        // one honest value goes with the outlier: the other end's extreme
        for (int q = 0; q < M - 1; q++)
            col[q] = rows[q][i];
        qsort(col, M - 1, sizeof *col, cmp_float);
        float want = i % 2 ? (col[1] + col[2]) + col[3] : (col[0] + col[1]) + col[2];
        cr_assert(same_bits(out[i], want / 3.0f), "i=%d: %g vs %g", i, out[i], want / 3.0f);
        cr_assert(out[i] >= 0.5f && out[i] <= 1.5f);
    }
    agg_rows(CFG_AGG_MEDIAN, 0, rows, M, N, out);
    for (int i = 0; i < N; i++)
        cr_assert(out[i] >= 0.5f && out[i] <= 1.5f, "i=%d: %g", i, out[i]);
    agg_rows(CFG_AGG_MEAN, 0, rows, M, N, out);
    cr_assert(fabsf(out[0]) > 1e29f, "the mean is not robust: %g", out[0]);
}

Test(agg, finite_check_norm_and_clip) {
    float x[100];
    tu_rand_fill(x, 100, 9, -1.0f, 1.0f);
    cr_assert(agg_finite(x, 100));
    x[37] = 3.4e38f;
    x[38] = 1e-45f; // subnormal
    cr_assert(agg_finite(x, 100), "large and subnormal values are finite");
    const float bad[] = {NAN, -NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 4; i++) {
        x[99] = bad[i];
        cr_assert(!agg_finite(x, 100), "value %d", i);
        x[99] = 0;
    }
    cr_assert(agg_finite(x, 0));
    tu_rand_fill(x, 100, 9, -1.0f, 1.0f);
    double ref = 0;
    for (int i = 0; i < 100; i++)
        ref += (double)x[i] * x[i];
    cr_assert_float_eq(agg_norm(x, 100), sqrt(ref), 1e-12);
    double norm;
    cr_assert_eq(agg_clip(x, 100, 1e9f, &norm), 0, "under the bound: unchanged");
    cr_assert_float_eq(norm, sqrt(ref), 1e-12);
    cr_assert_eq(agg_clip(x, 100, 0.5f, &norm), 1);
    cr_assert_float_eq(agg_norm(x, 100), 0.5, 1e-6);
    cr_assert_eq(agg_clip(x, 100, 0, NULL), 0, "0 = off");
    float big[3] = {1e30f, -1e30f, 1e30f};
    cr_assert_eq(agg_clip(big, 3, 2.0f, &norm), 1);
    cr_assert(isfinite(norm) && norm > 1e30);
    cr_assert_float_eq(agg_norm(big, 3), 2.0, 1e-6);
}
