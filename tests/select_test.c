// select_test.c: SPARTA index selection. Sets have exactly k distinct sorted indices in [0, n);
// they depend only on (seed, round), also in another process; rounds differ; coverage over many
// rounds is uniform within bounds derived from the binomial distribution; partitioned chunks
// tile [0, n) once per cycle; select_k rounds and clamps. Single-threaded per test (the
// cross-process test forks a child).
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sparta/select.h"
#include "train/base/err.h"

TestSuite(select, .timeout = 30);

#define SEED     20240611ull
#define R_ROUNDS 2000 // rounds in the coverage tests

// ---------------------------------------------------------------------------------------------
// Helpers.

// check_set asserts that idx(m) is strictly increasing (so sorted and distinct) and below n.
static void check_set(const uint32_t *idx, size_t m, size_t n, const char *what) {
    for (size_t i = 1; i < m; i++)
        cr_assert_lt(idx[i - 1], idx[i], "%s: idx[%zu] = %u, idx[%zu] = %u", what, i - 1,
                     idx[i - 1], i, idx[i]);
    if (m > 0)
        cr_assert_lt((size_t)idx[m - 1], n, "%s: idx %u out of [0, %zu)", what, idx[m - 1], n);
}

static uint32_t *pick(int sel, uint64_t seed, uint64_t round, size_t n, size_t k, size_t *m) {
    uint32_t *idx = xmalloc((k ? k : 1) * sizeof *idx);
    *m = select_indices(sel, seed, round, n, k, idx);
    cr_assert_eq(*m, select_count(sel, seed, round, n, k), "n=%zu k=%zu round=%llu", n, k,
                 (unsigned long long)round);
    return idx;
}

// overlap counts the common elements of two sorted sets.
static size_t overlap(const uint32_t *a, size_t na, const uint32_t *b, size_t nb) {
    size_t i = 0, j = 0, c = 0;
    while (i < na && j < nb) {
        if (a[i] < b[j])
            i++;
        else if (a[i] > b[j])
            j++;
        else
            c++, i++, j++;
    }
    return c;
}

// binom_bounds returns [lo, hi] such that X ~ Binomial(n, p) falls below lo, and above hi, each
// with probability at most tail (pmf summed in logs with lgamma).
static void binom_bounds(int n, double p, double tail, int *lo, int *hi) {
    double acc = 0;
    *lo = 0;
    for (int x = 0; x <= n; x++) {
        double lp = lgamma(n + 1.0) - lgamma(x + 1.0) - lgamma(n - x + 1.0) + x * log(p) +
                    (n - x) * log1p(-p);
        if (acc + exp(lp) > tail) break;
        acc += exp(lp);
        *lo = x + 1;
    }
    acc = 0;
    *hi = n;
    for (int x = n; x >= 0; x--) {
        double lp = lgamma(n + 1.0) - lgamma(x + 1.0) - lgamma(n - x + 1.0) + x * log(p) +
                    (n - x) * log1p(-p);
        if (acc + exp(lp) > tail) break;
        acc += exp(lp);
        *hi = x - 1;
    }
}

// ---------------------------------------------------------------------------------------------
// select_k and select_count.

Test(select, select_k_rounds_to_nearest_and_clamps_to_1_and_n) {
    cr_assert_eq(select_k(0.005, 124439808), 622199); // 622199.04
    cr_assert_eq(select_k(0.25, 10), 3);              // 2.5 rounds up
    cr_assert_eq(select_k(0.24, 10), 2);
    cr_assert_eq(select_k(0.05, 1000), 50);
    cr_assert_eq(select_k(1e-12, 1000), 1, "a tiny p still selects one index");
    cr_assert_eq(select_k(1e-300, 1), 1);
    cr_assert_eq(select_k(0.001, 1), 1);
    cr_assert_eq(select_k(1.0, 1000), 1000);
    cr_assert_eq(select_k(0.9996, 1000), 1000);
    cr_assert_eq(select_k(2.0, 1000), 1000);
    cr_assert_eq(select_k(0.0, 1000), 0);
    cr_assert_eq(select_k(-0.5, 1000), 0);
    cr_assert_eq(select_k(NAN, 1000), 0);
    cr_assert_eq(select_k(0.5, 0), 0);
}

Test(select, counts_are_k_or_the_last_partition_chunk) {
    cr_assert_eq(select_count(SELECT_RANDOM, SEED, 7, 1003, 50), 50);
    for (uint64_t r = 0; r < 42; r++) // 21 chunks: 20 of 50 and one of 3
        cr_assert_eq(select_count(SELECT_PARTITIONED, SEED, r, 1003, 50), r % 21 == 20 ? 3 : 50,
                     "round %llu", (unsigned long long)r);
    cr_assert_eq(select_count(SELECT_RANDOM, SEED, 0, 1000, 0), 0);
    cr_assert_eq(select_count(SELECT_PARTITIONED, SEED, 0, 1000, 0), 0);
    cr_assert_eq(select_count(SELECT_PARTITIONED, SEED, 5, 1000, 1000), 1000);
    uint32_t dummy = 12345;
    cr_assert_eq(select_indices(SELECT_RANDOM, SEED, 0, 0, 0, &dummy), 0);
    cr_assert_eq(dummy, 12345, "nothing written for k = 0");
}

// ---------------------------------------------------------------------------------------------
// Set properties.

Test(select, sets_have_k_sorted_distinct_indices_in_range) {
    size_t cases[][2] = {{1, 1},
                         {2, 1},
                         {2, 2},
                         {3, 2},
                         {17, 5},
                         {64, 64},
                         {65, 65},
                         {100, 99},
                         {1000, 50},
                         {4097, 4000},
                         {100003, 100003},
                         {1000000, 5000},
                         {124439808, 622199},
                         {UINT32_MAX, 3000}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int sel = 0; sel < 2; sel++)
            for (uint64_t r = 0; r < 3; r++) {
                size_t n = cases[c][0], k = cases[c][1], m;
                uint32_t *idx = pick(sel, SEED, r, n, k, &m);
                if (sel == SELECT_RANDOM) cr_assert_eq(m, k, "n=%zu", n);
                char what[96];
                snprintf(what, sizeof what, "sel=%d n=%zu k=%zu round=%llu", sel, n, k,
                         (unsigned long long)r);
                check_set(idx, m, n, what);
                if (m == n) // the whole domain: exactly 0 .. n-1
                    cr_assert_eq(idx[n - 1], n - 1, "%s", what);
                free(idx);
            }
}

// SELECT_RANDOM takes a prefix of one permutation, so a smaller k gives a subset.
Test(select, random_sets_of_one_round_are_nested_in_k) {
    size_t n = 100000, m1, m2;
    uint32_t *small = pick(SELECT_RANDOM, SEED, 9, n, 300, &m1);
    uint32_t *big = pick(SELECT_RANDOM, SEED, 9, n, 3000, &m2);
    cr_assert_eq(overlap(small, m1, big, m2), 300);
    free(small);
    free(big);
}

Test(select, same_seed_and_round_give_the_same_set_in_another_process) {
    enum { N = 1000003, K = 5003 };
    int fd[2];
    cr_assert_eq(pipe(fd), 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) { // child: fresh process, computes before the parent does anything
        close(fd[0]);
        uint32_t *v = xmalloc(2 * K * sizeof *v);
        select_indices(SELECT_RANDOM, SEED, 77, N, K, v);
        select_indices(SELECT_PARTITIONED, SEED, 77, N, K, v + K);
        const char *p = (const char *)v;
        size_t left = 2 * K * sizeof *v;
        while (left > 0) {
            ssize_t w = write(fd[1], p, left);
            if (w <= 0) _exit(2);
            p += w;
            left -= (size_t)w;
        }
        _exit(0);
    }
    close(fd[1]);
    // The parent's scratch state differs: other sizes and rounds first.
    size_t m;
    free(pick(SELECT_RANDOM, SEED, 1, 124439808, 622199, &m));
    free(pick(SELECT_PARTITIONED, SEED + 1, 3, 5000, 70, &m));
    uint32_t *mine = xmalloc(2 * K * sizeof *mine), *theirs = xmalloc(2 * K * sizeof *theirs);
    select_indices(SELECT_RANDOM, SEED, 77, N, K, mine);
    select_indices(SELECT_PARTITIONED, SEED, 77, N, K, mine + K);
    size_t got = 0;
    while (got < 2 * K * sizeof *theirs) {
        ssize_t r = read(fd[0], (char *)theirs + got, 2 * K * sizeof *theirs - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed");
    cr_assert_eq(got, 2 * K * sizeof *theirs, "child sent %zu bytes", got);
    cr_assert_eq(memcmp(mine, theirs, K * sizeof *mine), 0, "random sets differ");
    cr_assert_eq(memcmp(mine + K, theirs + K, K * sizeof *mine), 0, "partitioned sets differ");
    free(mine);
    free(theirs);
}

// Two rounds' sets of k from n overlap by k^2/n = 25 on average (hypergeometric, sd ~5); 100 or
// more common indices has probability far below 1e-20, so this only fails for correlated rounds.
Test(select, different_rounds_and_seeds_give_different_sets) {
    enum { N = 1000000, K = 5000, ROUNDS = 100 };
    uint32_t *sets[ROUNDS];
    size_t m;
    for (int r = 0; r < ROUNDS; r++)
        sets[r] = pick(SELECT_RANDOM, SEED, (uint64_t)r, N, K, &m);
    for (int a = 0; a < ROUNDS; a++)
        for (int b = a + 1; b < ROUNDS; b++) {
            size_t o = overlap(sets[a], K, sets[b], K);
            cr_assert_lt(o, 100, "rounds %d and %d share %zu indices", a, b, o);
        }
    uint32_t *other = pick(SELECT_RANDOM, SEED + 1, 0, N, K, &m);
    cr_assert_lt(overlap(sets[0], K, other, K), 100, "seeds differ, sets must too");
    // Rounds far apart (the 64-bit round reaches the key) also differ.
    uint32_t *far = pick(SELECT_RANDOM, SEED, 1ull << 40, N, K, &m);
    cr_assert_lt(overlap(sets[0], K, far, K), 100);
    free(other);
    free(far);
    for (int r = 0; r < ROUNDS; r++)
        free(sets[r]);
}

// Each index is selected in a round with probability k/n = 0.05, independently across rounds, so
// its hit count over R = 2000 rounds is Binomial(2000, 0.05): mean 100, sd 9.7. The bounds are the
// 5e-10 tails on each side ([46, 165]: the binomial is skewed), so one index fails with probability
// <= 1e-9 and any of n indices with probability <= n * 1e-9 = 1e-6 (union bound). Pearson's
// chi-square over the n cells is at most chi2(n - 1) in distribution (sampling without replacement
// within a round lowers the variance by 0.95); the bound n + 7 sqrt(2n) sits 7 sd above its mean
// (Wilson-Hilferty: p < 1e-9 for n = 500 and 1000). Total false-failure probability < 3e-6.
//
// coverage_ok judges hit counts of n indices over R rounds of k: every count within the binomial
// bounds and the chi-square below its bound. Writes the statistics into why.
static int coverage_ok(const int *hits, size_t n, size_t k, char *why, size_t why_len) {
    double p = (double)k / (double)n, mean = R_ROUNDS * p, chi2 = 0;
    int lo, hi, min = hits[0], max = hits[0];
    binom_bounds(R_ROUNDS, p, 5e-10, &lo, &hi);
    cr_assert(lo > 0 && hi < R_ROUNDS && lo < mean && hi > mean, "bounds [%d, %d]", lo, hi);
    for (size_t i = 0; i < n; i++) {
        min = hits[i] < min ? hits[i] : min;
        max = hits[i] > max ? hits[i] : max;
        chi2 += (hits[i] - mean) * (hits[i] - mean) / mean;
    }
    double bound = (double)n + 7 * sqrt(2.0 * (double)n);
    snprintf(why, why_len,
             "n=%zu k=%zu: hits in [%d, %d] (bounds [%d, %d]), chi2 %.1f (bound %.1f)", n, k, min,
             max, lo, hi, chi2, bound);
    if (getenv("SELECT_TEST_VERBOSE")) fprintf(stderr, "%s\n", why);
    return min >= lo && max <= hi && chi2 < bound;
}

static void check_coverage(size_t n, size_t k) {
    int *hits = xcalloc(n, sizeof *hits);
    uint32_t *idx = xmalloc(k * sizeof *idx);
    for (uint64_t r = 0; r < R_ROUNDS; r++) {
        cr_assert_eq(select_indices(SELECT_RANDOM, SEED, r, n, k, idx), k);
        for (size_t i = 0; i < k; i++)
            hits[idx[i]]++;
    }
    char why[160];
    cr_assert(coverage_ok(hits, n, k, why, sizeof why), "%s", why);
    free(hits);
    free(idx);
}

Test(select, random_coverage_is_uniform_over_many_rounds) {
    check_coverage(1000, 50); // 10 bits: halves of 5 and 5
    check_coverage(500, 25);  // 9 bits: halves of 5 and 4, plus cycle walking from 512
}

// The judge must be able to fail: a sampler that takes indices of the first half 20% more often
// (expected counts 109 and 91) stays inside the per-index bounds but not under the chi-square
// bound (about 1000 + 810 against 1313).
Test(select, coverage_check_rejects_a_slightly_biased_selector) {
    enum { N = 1000, K = 50 };
    int *hits = xcalloc(N, sizeof *hits);
    unsigned char mark[N];
    uint64_t s = 88172645463325252ull;
    for (int r = 0; r < R_ROUNDS; r++) {
        memset(mark, 0, sizeof mark);
        for (int got = 0; got < K;) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            uint32_t i = (uint32_t)(s % N);
            int keep = i < N / 2 || (s >> 40) % 6 < 5; // second half kept with probability 5/6
            if (keep && !mark[i]) mark[i] = 1, hits[i]++, got++;
        }
    }
    char why[160];
    cr_assert_not(coverage_ok(hits, N, K, why, sizeof why), "biased sampler passed: %s", why);
    free(hits);
}

// Marginal coverage cannot see a weak permutation (a 2-round Feistel network passes it), so this
// counts how often each pair of indices is selected together: n = 64, k = 16 (3-bit halves, the
// hardest case for a Feistel network), R = 20000 rounds. Pearson's statistic over the 2016 pairs
// has mean 2016 (1 - q) = 1897 for ideal uniform k-subsets, and sd 144 (measured over 200 runs of
// a Fisher-Yates sampler; pairs sharing an index are correlated, so it is not chi2(2015)). The
// bound, twice the mean, sits 13 sd above it. Measured: 6 rounds ~1900, 4 rounds 2600-3200,
// 2 rounds ~74000.
Test(select, pairs_of_indices_are_selected_together_uniformly) {
    enum { N = 64, K = 16, R = 20000 };
    int *together = xcalloc(N * N, sizeof *together);
    uint32_t idx[K];
    for (uint64_t r = 0; r < R; r++) {
        cr_assert_eq(select_indices(SELECT_RANDOM, SEED, r, N, K, idx), K);
        for (int a = 0; a < K; a++)
            for (int b = a + 1; b < K; b++)
                together[idx[a] * N + idx[b]]++;
    }
    double q = (double)K * (K - 1) / ((double)N * (N - 1)), e = R * q, stat = 0;
    int cells = 0;
    for (int a = 0; a < N; a++)
        for (int b = a + 1; b < N; b++, cells++)
            stat += (together[a * N + b] - e) * (together[a * N + b] - e) / e;
    double mean = cells * (1 - q);
    if (getenv("SELECT_TEST_VERBOSE"))
        fprintf(stderr, "pairs: statistic %.1f, ideal mean %.1f\n", stat, mean);
    cr_assert_lt(stat, 2 * mean, "pair statistic %.1f, ideal mean %.1f", stat, mean);
    free(together);
}

// ---------------------------------------------------------------------------------------------
// Partitioned selection.

static void check_partition(size_t n, size_t k, uint64_t seed) {
    size_t chunks = (n + k - 1) / k, m;
    unsigned char *seen = xcalloc(n, 1);
    for (uint64_t r = 0; r < chunks; r++) {
        uint32_t *idx = pick(SELECT_PARTITIONED, seed, r, n, k, &m);
        cr_assert_eq(m, r + 1 < chunks ? k : n - (chunks - 1) * k, "n=%zu k=%zu chunk %llu", n, k,
                     (unsigned long long)r);
        check_set(idx, m, n, "partitioned");
        for (size_t i = 0; i < m; i++) {
            cr_assert_eq(seen[idx[i]], 0, "n=%zu k=%zu: index %u in two chunks", n, k, idx[i]);
            seen[idx[i]] = 1;
        }
        // The next cycle repeats the chunk.
        uint32_t *again = pick(SELECT_PARTITIONED, seed, r + 3 * chunks, n, k, &m);
        cr_assert_eq(memcmp(idx, again, m * sizeof *idx), 0, "chunk %llu differs next cycle",
                     (unsigned long long)r);
        free(idx);
        free(again);
    }
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(seen[i], 1, "n=%zu k=%zu: index %zu never selected in a cycle", n, k, i);
    free(seen);
}

Test(select, partitioned_chunks_are_disjoint_and_cover_every_index_once_per_cycle) {
    check_partition(1000, 50, SEED);   // 20 full chunks
    check_partition(1003, 50, SEED);   // 20 full chunks and one of 3
    check_partition(7, 3, SEED);       // tiny domain
    check_partition(1, 1, SEED);       // single index
    check_partition(1000003, 5000, 5); // 201 chunks, the last of 3; radix-sort path
}

Test(select, partitioned_chunks_are_spread_and_depend_on_the_seed) {
    size_t n = 100000, k = 1000, m1, m2;
    uint32_t *a = pick(SELECT_PARTITIONED, SEED, 0, n, k, &m1);
    uint32_t *b = pick(SELECT_PARTITIONED, SEED + 1, 0, n, k, &m2);
    cr_assert_lt(overlap(a, m1, b, m2), 100, "another seed gives another partition");
    // A chunk is a random sample, not a contiguous range: about a tenth lies in each tenth.
    int tenth[10] = {0};
    for (size_t i = 0; i < m1; i++)
        tenth[a[i] / 10000]++;
    for (int t = 0; t < 10; t++)
        cr_assert(tenth[t] > 40 && tenth[t] < 160, "tenth %d holds %d of 1000", t, tenth[t]);
    free(a);
    free(b);
}
