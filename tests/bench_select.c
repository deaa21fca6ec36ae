// bench_select.c: select_indices at GPT-2 124M scale (n = 124,439,808, p = 0.005, k = 622,199),
// the per-step cost of SPARTA index selection, for both selectors. The first call (which grows
// the scratch buffer) is excluded; prints the median and the minimum (the least disturbed by
// other processes on a shared machine) of REPS rounds. Single-threaded.
#include <stdio.h>
#include <stdlib.h>

#include "sparta/select.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"

#define N_124M 124439808u
#define REPS   100

// time_ms fills res[0] with the median and res[1] with the minimum time of select_indices.
static int time_ms(int selector, size_t k, uint32_t *out, double res[2]) {
    double t[REPS];
    select_indices(selector, 1234, 0, N_124M, k, out); // warm-up: scratch and page faults
    for (int r = 0; r < REPS; r++) {
        double t0 = sys_now_ms();
        size_t m = select_indices(selector, 1234, (uint64_t)r + 1, N_124M, k, out);
        t[r] = sys_now_ms() - t0;
        if (m != k || out[m - 1] >= N_124M) return -1;
    }
    qsort(t, REPS, sizeof t[0], tu_cmp_double);
    res[0] = t[REPS / 2];
    res[1] = t[0];
    return 0;
}

int main(void) {
    size_t k = select_k(0.005, N_124M);
    uint32_t *out = xmalloc(k * sizeof *out);
    double r[2], q[2];
    if (time_ms(SELECT_RANDOM, k, out, r) != 0 || time_ms(SELECT_PARTITIONED, k, out, q) != 0) {
        fprintf(stderr, "bench_select: wrong result\n");
        return 1;
    }
    printf("BENCH select_indices_124m_ms %.3f\n", r[0]);
    printf("BENCH select_indices_124m_min_ms %.3f\n", r[1]);
    printf("BENCH select_indices_124m_partitioned_ms %.3f\n", q[0]);
    printf("BENCH select_indices_124m_partitioned_min_ms %.3f\n", q[1]);
    free(out);
    return 0;
}
