// avg_cmd.c: `spartan avg OUT CKPT CKPT...`, the element-wise mean of checkpoints' /model/
// weights, written as a checkpoint that `spartan eval`, `sample` and `corr` read like any other.
// Invariant: the mean is summed in argument order in float and divided by the count, as SPARTA
// averages (so the mean of two values is the correctly rounded (a + b) / 2). Everything that is
// not /model/ (attributes, AdamW moments, DiLoCo outer state) is copied from one checkpoint, the
// first or --base, so the output can also be resumed. Main thread only.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/base/args.h"
#include "train/base/ckdir.h"
#include "train/base/err.h"
#include "train/ckpt.h"
#include "train/cmd/cmds.h"
#include "train/gpt.h"
#include "train/ops.h"

#define AVG_MAX_INPUTS 1024

// The root attributes a checkpoint may carry besides the architecture (gpt_write_config), by
// type. Missing ones are skipped: a file written by an older version still averages.
static const char *const i64_attrs[] = {"format_version", "step", "optim_t", "data_pos",
                                        "outer_steps"};
static const char *const str_attrs[] = {"tokenizer", "config"};

static void avg_usage(FILE *f, const args_opt *opts, int n_opts) {
    fprintf(f, "usage: spartan avg OUT CKPT|DIR CKPT|DIR... [--base CKPT|DIR]\n\n"
               "Writes OUT, a checkpoint whose /model/ weights are the element-wise mean of the\n"
               "given checkpoints' (same architecture; summed in argument order, then divided\n"
               "by their count). Attributes (tokenizer, config, step, ...), AdamW moments and\n"
               "DiLoCo outer state are copied from the first checkpoint, or from --base. Evaluate\n"
               "the mean model with `spartan eval OUT --data SHARD`.\n\n"
               "options:\n");
    args_print_table(f, opts, n_opts);
}

// same_arch reports whether two architectures are equal.
static int same_arch(const cfg_model *a, const cfg_model *b) {
    return a->n_layer == b->n_layer && a->n_head == b->n_head && a->n_embd == b->n_embd &&
           a->block_size == b->block_size && a->vocab_size == b->vocab_size;
}

// add_model adds the /model/ weights of the checkpoint at path (a resolved file) to sum(n),
// using buf(n) as scratch. The architecture must equal m's. Returns ERR_OK or an error naming
// the file (ERR_IO missing, ERR_FORMAT corrupt or another shape).
static int add_model(const gpt_model *m, const char *path, float *sum, float *buf) {
    ckpt_reader *r = NULL;
    cfg_model mc;
    int rc = ckpt_reader_open(&r, path);
    if (!rc) rc = gpt_read_config(r, &mc);
    const cfg_model *want = gpt_config(m);
    if (!rc && !same_arch(&mc, want))
        rc = err_set(ERR_FORMAT,
                     "%s: model L=%d NH=%d C=%d T=%d V=%d differs from the first checkpoint's "
                     "L=%d NH=%d C=%d T=%d V=%d",
                     path, mc.n_layer, mc.n_head, mc.n_embd, mc.block_size, mc.vocab_size,
                     want->n_layer, want->n_head, want->n_embd, want->block_size, want->vocab_size);
    if (!rc) rc = gpt_read_slab(m, r, "model/", buf);
    ckpt_reader_close(r);
    if (rc) {
        if (!strstr(err_msg(), path)) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", err_msg());
            err_set(rc, "%s: %s", path, msg);
        }
        return rc;
    }
    size_t n = gpt_n_params(m);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        sum[i] += buf[i];
    return ERR_OK;
}

// copy_rest copies from the checkpoint base (a resolved file with m's architecture) to w what is
// not /model/: the known attributes, the AdamW moments and the DiLoCo outer state, each when
// present. buf(n) is scratch. Returns ERR_OK or the ckpt_ error.
static int copy_rest(const gpt_model *m, const char *base, ckpt_writer *w, float *buf) {
    ckpt_reader *r = NULL;
    cfg_model mc;
    int rc = ckpt_reader_open(&r, base);
    if (!rc) rc = gpt_read_config(r, &mc);
    if (!rc && !same_arch(&mc, gpt_config(m)))
        rc = err_set(ERR_FORMAT, "--base %s: its model differs from the averaged checkpoints'",
                     base);
    for (size_t i = 0; !rc && i < sizeof i64_attrs / sizeof i64_attrs[0]; i++) {
        int64_t v;
        if (ckpt_read_attr_i64(r, i64_attrs[i], &v) == ERR_OK)
            rc = ckpt_write_attr_i64(w, i64_attrs[i], v);
    }
    for (size_t i = 0; !rc && i < sizeof str_attrs / sizeof str_attrs[0]; i++) {
        char *v = NULL;
        if (ckpt_read_attr_str(r, str_attrs[i], &v) == ERR_OK)
            rc = ckpt_write_attr_str(w, str_attrs[i], v);
        free(v);
    }
    uint64_t rng[2];
    if (!rc && ckpt_read_attr_u64s(r, "rng_state", rng, 2) == ERR_OK)
        rc = ckpt_write_attr_u64s(w, "rng_state", rng, 2);
    // gpt views give the moments their PyTorch shapes; the outer state is one flat vector.
    static const char *const slabs[] = {"optim/m/", "optim/v/"};
    const gpt_view *v0 = gpt_views(m, &(int){0});
    for (int s = 0; !rc && s < 2; s++) {
        char probe[300];
        snprintf(probe, sizeof probe, "%s%s", slabs[s], v0->name);
        if (!ckpt_has(r, probe)) continue;
        rc = gpt_read_slab(m, r, slabs[s], buf);
        if (!rc) rc = gpt_write_slab(m, w, slabs[s], buf);
    }
    static const char *const outer[] = {"outer/theta_g", "outer/momentum"};
    size_t shape[1] = {gpt_n_params(m)};
    for (int s = 0; !rc && s < 2; s++) {
        if (!ckpt_has(r, outer[s])) continue;
        rc = ckpt_read_tensor(r, outer[s], buf, 1, shape);
        if (!rc) rc = ckpt_write_tensor(w, outer[s], buf, 1, shape);
    }
    ckpt_reader_close(r);
    if (rc && !strstr(err_msg(), base)) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", err_msg());
        err_set(rc, "%s: %s", base, msg);
    }
    return rc;
}

// average writes out from the resolved checkpoint files files[0..n-1] and base. Returns ERR_OK
// or an error naming the file at fault.
static int average(const char *out, char **files, int n, const char *base) {
    gpt_model *m = NULL;
    int rc = gpt_load(&m, files[0], 1, 0, NULL, NULL); // params = running sum
    if (rc) return rc;
    size_t np = gpt_n_params(m);
    float *sum = gpt_params(m), *buf = xmalloc(np * sizeof(float));
    for (int i = 1; i < n && !rc; i++)
        rc = add_model(m, files[i], sum, buf);
    if (!rc) {
        float count = (float)n;
#pragma omp parallel for schedule(static) if (np > 65536)
        for (size_t i = 0; i < np; i++)
            sum[i] /= count;
    }
    ckpt_writer *w = NULL;
    if (!rc) rc = ckpt_writer_open(&w, out);
    if (!rc) rc = gpt_write_config(m, w);
    if (!rc) rc = gpt_write_slab(m, w, "model/", sum);
    if (!rc) rc = copy_rest(m, base, w, buf);
    if (!rc)
        rc = ckpt_writer_commit(w);
    else
        ckpt_writer_abort(w);
    free(buf);
    gpt_destroy(m);
    return rc;
}

int avg_cmd_main(int argc, char **argv) {
    const char *pos[AVG_MAX_INPUTS + 1], *base = NULL;
    int npos = 0, threads = 0;
    const args_opt opts[] = {
        {"--base", NULL, ARGS_STR, &base, 0, 0, NULL, "CKPT|DIR",
         "copy attributes, AdamW moments and outer state from this checkpoint\n"
         "(default: the first one averaged)"},
        {"--threads", NULL, ARGS_INT, &threads, 0, 1024, NULL, "N", "compute threads (0 = all)"},
    };
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), pos, AVG_MAX_INPUTS + 1, &npos);
    if (rc == ARGS_HELP) {
        avg_usage(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    if (!rc && npos < 2) rc = err_set(ERR_INVAL, "need OUT and at least one checkpoint");
    if (rc) {
        fprintf(stderr, "spartan avg: %s (see spartan avg --help)\n", err_msg());
        return 2;
    }
    ops_init(threads);
    int n = npos - 1;
    char **files = xcalloc((size_t)n, sizeof *files);
    char *base_file = NULL;
    for (int i = 0; i < n && !rc; i++)
        rc = ckdir_resolve(pos[i + 1], &files[i]);
    if (!rc && base) rc = ckdir_resolve(base, &base_file);
    for (int i = 0; i < n && !rc; i++)
        if (!strcmp(files[i], pos[0]))
            rc = err_set(ERR_INVAL, "output '%s' is also an input", pos[0]);
    if (!rc) rc = average(pos[0], files, n, base_file ? base_file : files[0]);
    if (rc)
        fprintf(stderr, "spartan avg: %s\n", err_msg());
    else
        printf("avg %d checkpoints -> %s\n", n, pos[0]);
    for (int i = 0; i < n; i++)
        free(files[i]);
    free(files);
    free(base_file);
    return rc ? 1 : 0;
}
