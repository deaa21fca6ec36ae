// avg_test.c: `spartan avg`, the element-wise mean of checkpoints. The mean of known checkpoints
// is compared bit for bit with a direct computation; the output must carry the first (or
// --base) checkpoint's attributes, evaluate and resume; bad inputs must fail naming the file.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test_util.h"
#include "train/ckpt.h"

TestSuite(avg, .timeout = 60);

// A folder with prepared data and tiny checkpoints (L1 C16) trained for a few steps.
typedef struct {
    char *dir;
    char cmd[4096];
} fixture;

static void fx_open(fixture *f) {
    f->dir = tu_data_tmpdir("avg");
    cr_assert(f->dir, "cannot prepare the test data");
}

// fx_train trains the model named name with the given seed and extra --set arguments for
// steps steps into <dir>/<name>/ (one checkpoint, at the end).
static void fx_train(fixture *f, const char *name, int seed, int steps, const char *extra) {
    char *out = NULL;
    snprintf(f->cmd, sizeof f->cmd,
             "%s train configs/tiny.ini --set data.dir=%s/d --set train.out_dir=%s/%s "
             "--set train.seed=%d --set train.max_iters=%d --set model.n_layer=1 "
             "--set model.n_embd=16 --set model.n_head=2 --set train.eval_interval=0 "
             "--set train.threads=1 %s",
             tu_spartan(), f->dir, f->dir, name, seed, steps, extra);
    cr_assert_eq(tu_run(f->cmd, 60, &out), 0, "%s\n%s", f->cmd, out);
    free(out);
}

// fx_run runs `spartan <args>` (args may hold %s = the folder, used up to 4 times) and returns
// its status; *out gets the output.
static int fx_run(fixture *f, char **out, const char *args) {
    char a[2048];
    snprintf(a, sizeof a, args, f->dir, f->dir, f->dir, f->dir);
    snprintf(f->cmd, sizeof f->cmd, "%s %s", tu_spartan(), a);
    return tu_run(f->cmd, 60, out);
}

static void fx_close(fixture *f) {
    tu_rm_rf(f->dir);
    free(f->dir);
}

static float *params(fixture *f, const char *name, size_t *n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    float *p = tu_load_params(path, n);
    cr_assert(p, "cannot load %s", path);
    return p;
}

static char *attr_str(fixture *f, const char *file, const char *name) {
    char path[1024], *v = NULL;
    snprintf(path, sizeof path, "%s/%s", f->dir, file);
    ckpt_reader *r = NULL;
    cr_assert_eq(ckpt_reader_open(&r, path), 0, "%s", path);
    cr_assert_eq(ckpt_read_attr_str(r, name, &v), 0, "%s: no attribute %s", path, name);
    ckpt_reader_close(r);
    return v;
}

static int64_t attr_i64(fixture *f, const char *file, const char *name) {
    char path[1024];
    int64_t v = -1;
    snprintf(path, sizeof path, "%s/%s", f->dir, file);
    ckpt_reader *r = NULL;
    cr_assert_eq(ckpt_reader_open(&r, path), 0, "%s", path);
    cr_assert_eq(ckpt_read_attr_i64(r, name, &v), 0, "%s: no attribute %s", path, name);
    ckpt_reader_close(r);
    return v;
}

Test(avg, mean_of_two_checkpoints_is_exact_and_keeps_the_attributes) {
    fixture f;
    fx_open(&f);
    fx_train(&f, "a", 1, 3, "");
    fx_train(&f, "b", 2, 5, "");
    char *out = NULL;
    cr_assert_eq(fx_run(&f, &out, "avg %s/m.h5 %s/a %s/b"), 0, "%s", out);
    free(out);
    size_t na, nb, nm;
    float *a = params(&f, "a", &na), *b = params(&f, "b", &nb), *m = params(&f, "m.h5", &nm);
    cr_assert(na == nb && nb == nm && na > 1000, "%zu %zu %zu", na, nb, nm);
    size_t differ = 0;
    for (size_t i = 0; i < na; i++) {
        float want = (a[i] + b[i]) / 2.0f; // correctly rounded mean (scaling by 1/2 is exact)
        cr_assert_eq(m[i], want, "i=%zu: %.9g, want %.9g (a %.9g b %.9g)", i, m[i], want, a[i],
                     b[i]);
        differ += a[i] != b[i];
    }
    cr_assert(differ > na / 2, "the inputs must differ for the test to mean anything");
    // the first checkpoint's attributes: tokenizer, config text and step (3, not b's 5)
    char *ta = attr_str(&f, "a/ckpt_00000003.h5", "tokenizer");
    char *tm = attr_str(&f, "m.h5", "tokenizer");
    cr_assert_str_eq(tm, ta);
    char *ca = attr_str(&f, "a/ckpt_00000003.h5", "config"), *cm = attr_str(&f, "m.h5", "config");
    cr_assert_str_eq(cm, ca);
    cr_assert_eq(attr_i64(&f, "m.h5", "step"), 3);
    // the mean model evaluates like any checkpoint
    cr_assert_eq(fx_run(&f, &out, "eval %s/m.h5 --data %s/d/val.bin --max-windows 8"), 0, "%s",
                 out);
    cr_assert(strstr(out, "loss "), "%s", out);
    free(out);
    free(a), free(b), free(m), free(ta), free(tm), free(ca), free(cm);
    fx_close(&f);
}

Test(avg, mean_of_three_sums_in_argument_order_and_of_one_is_a_copy) {
    fixture f;
    fx_open(&f);
    fx_train(&f, "a", 1, 2, "");
    fx_train(&f, "b", 2, 2, "");
    fx_train(&f, "c", 3, 2, "");
    char *out = NULL;
    cr_assert_eq(fx_run(&f, &out, "avg %s/m.h5 %s/a %s/b %s/c"), 0, "%s", out);
    free(out);
    cr_assert_eq(fx_run(&f, &out, "avg %s/one.h5 %s/b"), 0, "%s", out);
    free(out);
    size_t n;
    float *a = params(&f, "a", &n), *b = params(&f, "b", &n), *c = params(&f, "c", &n);
    float *m = params(&f, "m.h5", &n), *one = params(&f, "one.h5", &n);
    for (size_t i = 0; i < n; i++) {
        float want = (a[i] + b[i] + c[i]) / 3.0f;
        cr_assert_eq(m[i], want, "i=%zu: %.9g, want %.9g", i, m[i], want);
        cr_assert_eq(one[i], b[i], "i=%zu", i);
    }
    free(a), free(b), free(c), free(m), free(one);
    fx_close(&f);
}

Test(avg, base_supplies_the_rest_and_the_output_resumes) {
    fixture f;
    fx_open(&f);
    fx_train(&f, "a", 7, 2, "");
    fx_train(&f, "b", 7, 4, "--set train.learning_rate=1e-2");
    char *out = NULL;
    // weights of a (step 2), everything else of b (step 4, same seed)
    cr_assert_eq(fx_run(&f, &out, "avg %s/m.h5 %s/a --base %s/b"), 0, "%s", out);
    free(out);
    cr_assert_eq(attr_i64(&f, "m.h5", "step"), 4);
    size_t n;
    float *a = params(&f, "a", &n), *m = params(&f, "m.h5", &n);
    cr_assert_eq(memcmp(a, m, n * sizeof(float)), 0);
    // it carries b's AdamW moments and data position, so training resumes from it at step 4
    snprintf(f.cmd, sizeof f.cmd,
             "%s train configs/tiny.ini --set data.dir=%s/d --set train.out_dir=%s/r "
             "--set train.seed=7 --set train.max_iters=5 --set model.n_layer=1 "
             "--set model.n_embd=16 --set model.n_head=2 --set train.eval_interval=0 "
             "--set train.threads=1 --resume %s/m.h5",
             tu_spartan(), f.dir, f.dir, f.dir);
    cr_assert_eq(tu_run(f.cmd, 60, &out), 0, "%s", out);
    cr_assert(strstr(out, "at step 4"), "%s", out);
    free(out);
    free(a), free(m);
    fx_close(&f);
}

Test(avg, mismatched_shapes_fail_naming_the_file) {
    fixture f;
    fx_open(&f);
    fx_train(&f, "a", 1, 2, "");
    fx_train(&f, "wide", 1, 2, "--set model.n_embd=32");
    char *out = NULL;
    cr_assert_eq(fx_run(&f, &out, "avg %s/m.h5 %s/a %s/wide"), 1, "%s", out);
    cr_assert(strstr(out, "wide/ckpt_00000002.h5") && strstr(out, "C=32") && strstr(out, "C=16"),
              "%s", out);
    free(out);
    cr_assert_eq(fx_run(&f, &out, "avg %s/m.h5 %s/a --base %s/wide"), 1, "%s", out);
    cr_assert(strstr(out, "--base") && strstr(out, "wide"), "%s", out);
    free(out);
    char path[1024];
    snprintf(path, sizeof path, "%s/m.h5", f.dir);
    FILE *fp = fopen(path, "r");
    cr_assert_null(fp, "no output may be left behind after a failure");
    fx_close(&f);
}

Test(avg, corrupt_truncated_or_missing_files_fail_naming_the_file) {
    fixture f;
    fx_open(&f);
    fx_train(&f, "a", 1, 2, "");
    char src[1024], dst[1024], *data = NULL, *out = NULL;
    size_t n;
    snprintf(src, sizeof src, "%s/a/ckpt_00000002.h5", f.dir);
    cr_assert_eq(tu_read_file(src, &data, &n), 0);
    snprintf(dst, sizeof dst, "%s/trunc.h5", f.dir);
    cr_assert_eq(tu_write_file(dst, data, n / 2), 0);
    snprintf(dst, sizeof dst, "%s/garbage.h5", f.dir);
    memset(data, 'x', 4096);
    cr_assert_eq(tu_write_file(dst, data, 4096), 0);
    free(data);
    cr_assert_eq(fx_run(&f, &out, "avg %s/m.h5 %s/a %s/trunc.h5"), 1, "%s", out);
    cr_assert(strstr(out, "trunc.h5"), "%s", out);
    free(out);
    cr_assert_eq(fx_run(&f, &out, "avg %s/m.h5 %s/garbage.h5 %s/a"), 1, "%s", out);
    cr_assert(strstr(out, "garbage.h5"), "%s", out);
    free(out);
    cr_assert_eq(fx_run(&f, &out, "avg %s/m.h5 %s/a %s/missing.h5"), 1, "%s", out);
    cr_assert(strstr(out, "missing.h5"), "%s", out);
    free(out);
    cr_assert_eq(fx_run(&f, &out, "avg %s/m.h5"), 2, "%s", out);
    cr_assert(strstr(out, "at least one checkpoint"), "%s", out);
    free(out);
    cr_assert_eq(fx_run(&f, &out, "avg %s/a/ckpt_00000002.h5 %s/a/ckpt_00000002.h5"), 1, "%s", out);
    cr_assert(strstr(out, "also an input"), "%s", out);
    free(out);
    fx_close(&f);
}
