// corr_cmd.c: Pearson correlation of peers' flattened parameters (`spartan corr`). The vectors are
// the checkpoints' parameter slabs in the model's fixed view order, the tied lm_head once.
#include "train/cmd/corr_cmd.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/base/args.h"
#include "train/base/err.h"
#include "train/gpt.h"
#include "train/ops.h"

double corr_pearson(const float *a, const float *b, size_t n) {
    double sa = 0, sb = 0;
#pragma omp parallel for reduction(+ : sa, sb) schedule(static)
    for (size_t i = 0; i < n; i++) {
        sa += a[i];
        sb += b[i];
    }
    double ma = sa / (double)n, mb = sb / (double)n, saa = 0, sbb = 0, sab = 0;
#pragma omp parallel for reduction(+ : saa, sbb, sab) schedule(static)
    for (size_t i = 0; i < n; i++) {
        double da = a[i] - ma, db = b[i] - mb;
        saa += da * da;
        sbb += db * db;
        sab += da * db;
    }
    return (saa > 0 && sbb > 0) ? sab / sqrt(saa * sbb) : 0.0;
}

int corr_cmd_main(int argc, char **argv) {
    const char *paths[256];
    int np = 0, threads = 0;
    const args_opt opts[] = {
        {"--threads", NULL, ARGS_INT, &threads, 0, 1024, NULL, "N", "compute threads (0 = all)"},
    };
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), paths, 256, &np);
    if (rc == ARGS_HELP) {
        printf("usage: spartan corr CKPT CKPT... [--threads N]\n\n"
               "Prints the Pearson correlation of every pair of checkpoints' flattened\n"
               "parameters, then their mean as the last line: `corr <value>`.\n\n");
        args_print_table(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    if (!rc && np < 2) rc = err_set(ERR_INVAL, "need at least two checkpoints");
    if (rc) {
        fprintf(stderr, "spartan corr: %s (see spartan corr --help)\n", err_msg());
        return 2;
    }
    ops_init(threads);
    gpt_model **m = xcalloc((size_t)np, sizeof *m);
    for (int i = 0; i < np && !rc; i++) {
        rc = gpt_load(&m[i], paths[i], 1, 0, NULL, NULL);
        if (!rc && gpt_n_params(m[i]) != gpt_n_params(m[0]))
            rc = err_set(ERR_FORMAT, "%s: %zu parameters, but %s has %zu", paths[i],
                         gpt_n_params(m[i]), paths[0], gpt_n_params(m[0]));
    }
    if (rc) {
        fprintf(stderr, "spartan corr: %s\n", err_msg());
    } else {
        double sum = 0;
        int pairs = 0;
        for (int i = 0; i < np; i++)
            for (int j = i + 1; j < np; j++) {
                double c = corr_pearson(gpt_params(m[i]), gpt_params(m[j]), gpt_n_params(m[0]));
                printf("pair %d %d %.6f\n", i, j, c);
                sum += c;
                pairs++;
            }
        printf("corr %.6f\n", sum / pairs);
    }
    for (int i = 0; i < np; i++)
        gpt_destroy(m[i]);
    free(m);
    return rc ? 1 : 0;
}
