// corr_test.c: the Pearson correlation behind `spartan corr`, against values computed by hand,
// and the command on real checkpoints.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test_util.h"
#include "train/cmd/corr_cmd.h"

TestSuite(corr, .timeout = 60);

Test(corr, matches_a_direct_computation_on_known_vectors) {
    // a = 1..5, b = (2, 4, 5, 4, 5): mean a 3, mean b 4; sum da*db = 6, sum da^2 = 10,
    // sum db^2 = 6, so r = 6 / sqrt(60) = 0.7745966692
    const float a[5] = {1, 2, 3, 4, 5}, b[5] = {2, 4, 5, 4, 5};
    cr_assert_float_eq(corr_pearson(a, b, 5), 6.0 / sqrt(60.0), 1e-12);
    cr_assert_float_eq(corr_pearson(a, a, 5), 1.0, 1e-12);
    const float neg[5] = {5, 4, 3, 2, 1};
    cr_assert_float_eq(corr_pearson(a, neg, 5), -1.0, 1e-12);
    const float flat[5] = {2, 2, 2, 2, 2};
    cr_assert_float_eq(corr_pearson(a, flat, 5), 0.0, 0);
}

Test(corr, is_invariant_to_shift_and_scale_on_large_vectors) {
    enum { N = 100000 };
    float *a = malloc(N * sizeof(float)), *b = malloc(N * sizeof(float));
    tu_rand_fill(a, N, 1, -1, 1);
    for (int i = 0; i < N; i++)
        b[i] = 3.0f * a[i] + 7.0f;
    cr_assert_float_eq(corr_pearson(a, b, N), 1.0, 1e-9);
    tu_rand_fill(b, N, 2, -1, 1); // independent: near 0 (|r| < 5/sqrt(N) with overwhelming odds)
    cr_assert(fabs(corr_pearson(a, b, N)) < 5.0 / sqrt((double)N));
    free(a);
    free(b);
}

Test(corr, command_prints_the_mean_pairwise_correlation_last) {
    char *dir = tu_tmpdir("corr"), cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "%s data prepare --tokenizer char data/tinyshakespeare.txt %s/d >/dev/null && "
             "for s in 1 2; do %s train configs/tiny.ini --set data.dir=%s/d "
             "--set train.out_dir=%s/s$s --set train.seed=$s --set train.max_iters=2 "
             "--set model.n_layer=1 --set model.n_embd=16 --set model.n_head=2 "
             "--set train.eval_interval=0 2>/dev/null || exit 1; done && "
             "%s corr %s/s1 %s/s1 %s/s2",
             tu_spartan(), dir, tu_spartan(), dir, dir, tu_spartan(), dir, dir, dir);
    cr_assert_eq(tu_run(cmd, 60, &out), 0, "%s", out);
    char *last = strstr(out, "corr ");
    cr_assert(last, "%s", out);
    double c = strtod(last + 5, NULL);
    // pairs: (s1, s1) = 1 exactly; (s1, s2) and (s1, s2) are two independently seeded models,
    // correlated only through the LayerNorm ones, so the mean lies strictly between 1/3 and 1
    cr_assert(strstr(out, "pair 0 1 1.000000"), "%s", out);
    cr_assert(c > 0.34 && c < 1.0, "corr %g\n%s", c, out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s corr %s/s1", tu_spartan(), dir);
    cr_assert_eq(tu_run(cmd, 30, &out), 2, "one checkpoint must be refused: %s", out);
    free(out);
    tu_rm_rf(dir);
    free(dir);
}
