// ckpt_test.c: Criterion suite for ckpt_: bit-exact round trips (NaN payloads, infinities,
// denormals), atomic commit/abort through "<path>.tmp", and clear ERR_IO / ERR_FORMAT errors for
// missing, garbage, truncated and mismatched files. One temp directory per test (Criterion forks).
#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/ckpt.h"

static char *dir;

static void setup(void) {
    dir = tu_tmpdir("ckpt");
    cr_assert(dir, "cannot create a temp dir");
}

static void teardown(void) {
    tu_rm_rf(dir);
    free(dir);
}

TestSuite(ckpt, .timeout = 30, .init = setup, .fini = teardown);

// in_dir formats "<dir>/<name>" into buf (PATH_MAX-sized buffers in every test).
static char *in_dir(char *buf, const char *name) {
    snprintf(buf, 1024, "%s/%s", dir, name);
    return buf;
}

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void assert_bits_equal(const float *a, const float *b, size_t n, const char *what) {
    cr_assert(memcmp(a, b, n * sizeof *a) == 0, "%s differs bitwise", what);
}

// write_simple writes a small valid checkpoint: "model/a" (3, 5) filled from seed, attr step.
static void write_simple(const char *path, uint64_t seed, int64_t step) {
    float a[15];
    tu_rand_fill(a, 15, seed, -1.0f, 1.0f);
    ckpt_writer *w;
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_tensor(w, "model/a", a, 2, (size_t[]){3, 5}), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_i64(w, "step", step), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_writer_commit(w), ERR_OK, "%s", err_msg());
}

Test(ckpt, round_trip_is_bit_exact_for_tensors_and_attributes) {
    char path[1024];
    in_dir(path, "rt.h5");
    // 1-D: special bit patterns a lossy path (double conversion, NaN canonicalisation) would break.
    const uint32_t special[] = {0x7fc00000u, 0x7fc12345u, 0xffc00001u, 0x7f800001u,
                                0x7f800000u, 0xff800000u, 0x00000001u, 0x807fffffu,
                                0x80000000u, 0x3f800000u, 0x7f7fffffu};
    enum { NS = sizeof special / sizeof special[0] };
    float s[NS];
    for (int i = 0; i < NS; i++)
        s[i] = from_bits(special[i]);
    // 2-D odd sizes, 3-D, 4-D and a single element.
    static float b[13 * 17], c[3 * 5 * 7], d[2 * 3 * 4 * 5], e[1];
    tu_rand_fill(b, 13 * 17, 1, -3.0f, 3.0f);
    tu_rand_fill(c, 3 * 5 * 7, 2, -1e-30f, 1e-30f);
    tu_rand_fill(d, 2 * 3 * 4 * 5, 3, 0.0f, 1e6f);
    e[0] = -42.5f;
    // Multi-KB config with newlines, plus one over HDF5's 64 KiB compact attribute limit.
    size_t big = 100 * 1024;
    char *cfg = malloc(big + 1);
    size_t k = 0;
    for (int line = 0; k + 64 < big; line++)
        k += (size_t)snprintf(cfg + k, big + 1 - k, "[section%d]\nkey_%d = %d ; comment\n",
                              line % 7, line, line * 31);
    cfg[k] = 0;
    char small_cfg[4096];
    snprintf(small_cfg, sizeof small_cfg, "%.*s", (int)sizeof small_cfg - 1, cfg);
    const uint64_t rng[4] = {~0ull, 0x8000000000000001ull, 0, 0x0123456789abcdefull};

    ckpt_writer *w;
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_tensor(w, "special", s, 1, (size_t[]){NS}), ERR_OK, "%s", err_msg());
    cr_assert_eq(
        ckpt_write_tensor(w, "model/transformer.h.0.attn.c_attn.weight", b, 2, (size_t[]){13, 17}),
        ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_tensor(w, "optim/m/transformer.h.0.attn.c_attn.weight", c, 3,
                                   (size_t[]){3, 5, 7}),
                 ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_tensor(w, "optim/v/x.y.z", d, 4, (size_t[]){2, 3, 4, 5}), ERR_OK, "%s",
                 err_msg());
    cr_assert_eq(ckpt_write_tensor(w, "one", e, 1, (size_t[]){1}), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_i64(w, "step", INT64_MIN), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_i64(w, "tokens", 123456789012345ll), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_f64(w, "lr", 6e-4), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_f64(w, "tiny", 4.9e-324), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_str(w, "config", small_cfg), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_str(w, "big_config", cfg), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_str(w, "empty", ""), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_u64s(w, "rng", rng, 4), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_u64s(w, "no_rng", NULL, 0), ERR_OK, "%s", err_msg());
    // Writing an attribute twice keeps the last value.
    cr_assert_eq(ckpt_write_attr_i64(w, "replaced", 1), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_i64(w, "replaced", 2), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_writer_commit(w), ERR_OK, "%s", err_msg());

    ckpt_reader *r;
    cr_assert_eq(ckpt_reader_open(&r, path), ERR_OK, "%s", err_msg());
    float s2[NS], e2[1];
    static float b2[13 * 17], c2[3 * 5 * 7], d2[2 * 3 * 4 * 5];
    cr_assert_eq(ckpt_read_tensor(r, "special", s2, 1, (size_t[]){NS}), ERR_OK, "%s", err_msg());
    cr_assert_eq(
        ckpt_read_tensor(r, "model/transformer.h.0.attn.c_attn.weight", b2, 2, (size_t[]){13, 17}),
        ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_read_tensor(r, "optim/m/transformer.h.0.attn.c_attn.weight", c2, 3,
                                  (size_t[]){3, 5, 7}),
                 ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_read_tensor(r, "optim/v/x.y.z", d2, 4, (size_t[]){2, 3, 4, 5}), ERR_OK, "%s",
                 err_msg());
    cr_assert_eq(ckpt_read_tensor(r, "one", e2, 1, (size_t[]){1}), ERR_OK, "%s", err_msg());
    uint32_t got[NS];
    memcpy(got, s2, sizeof got);
    for (int i = 0; i < NS; i++)
        cr_assert_eq(got[i], special[i], "special[%d]: 0x%08x != 0x%08x", i, got[i], special[i]);
    assert_bits_equal(b, b2, 13 * 17, "2-D tensor");
    assert_bits_equal(c, c2, 3 * 5 * 7, "3-D tensor");
    assert_bits_equal(d, d2, 2 * 3 * 4 * 5, "4-D tensor");
    assert_bits_equal(e, e2, 1, "1-element tensor");

    int64_t i64;
    double f64;
    char *str;
    uint64_t rng2[4] = {0};
    cr_assert_eq(ckpt_read_attr_i64(r, "step", &i64), ERR_OK, "%s", err_msg());
    cr_assert_eq(i64, INT64_MIN);
    cr_assert_eq(ckpt_read_attr_i64(r, "tokens", &i64), ERR_OK, "%s", err_msg());
    cr_assert_eq(i64, 123456789012345ll);
    cr_assert_eq(ckpt_read_attr_i64(r, "replaced", &i64), ERR_OK, "%s", err_msg());
    cr_assert_eq(i64, 2);
    cr_assert_eq(ckpt_read_attr_f64(r, "lr", &f64), ERR_OK, "%s", err_msg());
    cr_assert(memcmp(&f64, &(double){6e-4}, sizeof f64) == 0, "lr=%.17g", f64);
    cr_assert_eq(ckpt_read_attr_f64(r, "tiny", &f64), ERR_OK, "%s", err_msg());
    cr_assert(memcmp(&f64, &(double){4.9e-324}, sizeof f64) == 0, "tiny=%g", f64);
    cr_assert_eq(ckpt_read_attr_str(r, "config", &str), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(str, small_cfg);
    cr_assert(strchr(str, '\n') && strlen(str) > 2000, "config lost its lines");
    free(str);
    cr_assert_eq(ckpt_read_attr_str(r, "big_config", &str), ERR_OK, "%s", err_msg());
    cr_assert_eq(strlen(str), strlen(cfg));
    cr_assert_str_eq(str, cfg);
    free(str);
    cr_assert_eq(ckpt_read_attr_str(r, "empty", &str), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(str, "");
    free(str);
    cr_assert_eq(ckpt_read_attr_u64s(r, "rng", rng2, 4), ERR_OK, "%s", err_msg());
    for (int i = 0; i < 4; i++)
        cr_assert_eq(rng2[i], rng[i], "rng[%d]", i);
    cr_assert_eq(ckpt_read_attr_u64s(r, "no_rng", NULL, 0), ERR_OK, "%s", err_msg());
    ckpt_reader_close(r);
    free(cfg);
}

Test(ckpt, commit_leaves_only_the_final_file) {
    char path[1024], tmp[1024];
    in_dir(path, "c.h5");
    in_dir(tmp, "c.h5.tmp");
    ckpt_writer *w;
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_OK, "%s", err_msg());
    cr_assert(exists(tmp), "writes must go to the temp file");
    cr_assert(!exists(path), "final path must not appear before commit");
    cr_assert_eq(ckpt_write_attr_i64(w, "step", 7), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_writer_commit(w), ERR_OK, "%s", err_msg());
    cr_assert(exists(path));
    cr_assert(!exists(tmp), "commit left %s behind", tmp);
}

Test(ckpt, abort_leaves_nothing) {
    char path[1024], tmp[1024];
    in_dir(path, "a.h5");
    in_dir(tmp, "a.h5.tmp");
    ckpt_writer *w;
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_OK, "%s", err_msg());
    float x[4] = {1, 2, 3, 4};
    cr_assert_eq(ckpt_write_tensor(w, "model/x", x, 1, (size_t[]){4}), ERR_OK, "%s", err_msg());
    ckpt_writer_abort(w);
    ckpt_writer_abort(NULL);
    cr_assert(!exists(tmp) && !exists(path), "abort left a file behind");
}

Test(ckpt, commit_replaces_an_existing_checkpoint_and_a_stale_tmp) {
    char path[1024], tmp[1024];
    in_dir(path, "o.h5");
    in_dir(tmp, "o.h5.tmp");
    write_simple(path, 1, 100);
    cr_assert_eq(tu_write_file(tmp, "stale junk", 10), 0);
    write_simple(path, 2, 200);
    cr_assert(!exists(tmp));
    ckpt_reader *r;
    cr_assert_eq(ckpt_reader_open(&r, path), ERR_OK, "%s", err_msg());
    int64_t step;
    float a[15], want[15];
    tu_rand_fill(want, 15, 2, -1.0f, 1.0f);
    cr_assert_eq(ckpt_read_attr_i64(r, "step", &step), ERR_OK, "%s", err_msg());
    cr_assert_eq(step, 200);
    cr_assert_eq(ckpt_read_tensor(r, "model/a", a, 2, (size_t[]){3, 5}), ERR_OK, "%s", err_msg());
    assert_bits_equal(a, want, 15, "overwritten tensor");
    ckpt_reader_close(r);
}

Test(ckpt, failed_write_keeps_the_older_checkpoint) {
    char path[1024], old[1024], tmp[1024];
    in_dir(path, "k.h5");
    in_dir(old, "k.copy");
    in_dir(tmp, "k.h5.tmp");
    write_simple(path, 1, 100);
    char *bytes;
    size_t n;
    cr_assert_eq(tu_read_file(path, &bytes, &n), 0);
    cr_assert_eq(tu_write_file(old, bytes, n), 0);
    free(bytes);

    ckpt_writer *w;
    float x[2] = {1, 2};
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_tensor(w, "model/a", x, 1, (size_t[]){2}), ERR_OK, "%s", err_msg());
    // The same name twice is an I/O error naming the dataset.
    cr_assert_eq(ckpt_write_tensor(w, "model/a", x, 1, (size_t[]){2}), ERR_IO);
    cr_assert(strstr(err_msg(), "model/a") && strstr(err_msg(), path), "msg: %s", err_msg());
    ckpt_writer_abort(w);
    cr_assert(tu_files_equal(path, old), "the older checkpoint was modified");
    cr_assert(!exists(tmp));
}

Test(ckpt, failed_commit_removes_tmp_and_reports_io_error) {
    // The final path is a non-empty directory, so the rename fails after the data is written.
    char path[1024], inner[1024], tmp[1024];
    in_dir(path, "isdir.h5");
    in_dir(inner, "isdir.h5/keep");
    in_dir(tmp, "isdir.h5.tmp");
    cr_assert_eq(mkdir(path, 0755), 0);
    cr_assert_eq(tu_write_file(inner, "x", 1), 0);
    ckpt_writer *w;
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_i64(w, "step", 1), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_writer_commit(w), ERR_IO);
    cr_assert(strstr(err_msg(), path), "msg: %s", err_msg());
    cr_assert(!exists(tmp), "failed commit left %s", tmp);
    cr_assert(exists(inner));
}

Test(ckpt, unwritable_directory_is_io_error_naming_it) {
    char path[1024], missing[1024], file[1024], under_file[1024];
    in_dir(missing, "no/such/dir");
    in_dir(path, "no/such/dir/c.h5");
    ckpt_writer *w = (ckpt_writer *)1;
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_IO);
    cr_assert_null(w);
    cr_assert(strstr(err_msg(), missing), "msg: %s", err_msg());

    // A regular file where the directory should be: fails even for root.
    in_dir(file, "plain");
    cr_assert_eq(tu_write_file(file, "x", 1), 0);
    in_dir(under_file, "plain/c.h5");
    cr_assert_eq(ckpt_writer_open(&w, under_file), ERR_IO);
    cr_assert(strstr(err_msg(), file), "msg: %s", err_msg());

    if (geteuid() != 0) { // root ignores directory permissions
        char ro[1024], in_ro[1024];
        in_dir(ro, "ro");
        cr_assert_eq(mkdir(ro, 0555), 0);
        in_dir(in_ro, "ro/c.h5");
        cr_assert_eq(ckpt_writer_open(&w, in_ro), ERR_IO);
        cr_assert(strstr(err_msg(), ro), "msg: %s", err_msg());
        chmod(ro, 0755);
    }
}

Test(ckpt, missing_file_is_io_error_naming_it) {
    char path[1024];
    in_dir(path, "absent.h5");
    ckpt_reader *r = (ckpt_reader *)1;
    cr_assert_eq(ckpt_reader_open(&r, path), ERR_IO);
    cr_assert_null(r);
    cr_assert(strstr(err_msg(), path), "msg: %s", err_msg());
    ckpt_reader_close(NULL);
}

static void assert_open_format_error(const char *path) {
    ckpt_reader *r = NULL;
    int rc = ckpt_reader_open(&r, path);
    if (rc == ERR_OK) ckpt_reader_close(r);
    cr_assert_eq(rc, ERR_FORMAT, "%s: got %s (%s)", path, err_str(rc), err_msg());
    cr_assert_null(r);
    cr_assert(strstr(err_msg(), path), "msg: %s", err_msg());
}

Test(ckpt, garbage_and_empty_files_are_format_errors) {
    char path[1024];
    unsigned char junk[8192];
    uint64_t s = 12345;
    for (size_t i = 0; i < sizeof junk; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        junk[i] = (unsigned char)(s >> 56);
    }
    cr_assert_eq(tu_write_file(in_dir(path, "junk.h5"), junk, sizeof junk), 0);
    assert_open_format_error(path);
    cr_assert_eq(tu_write_file(in_dir(path, "text.h5"), "[model]\nn_layer = 4\n", 20), 0);
    assert_open_format_error(path);
    cr_assert_eq(tu_write_file(in_dir(path, "empty.h5"), "", 0), 0);
    assert_open_format_error(path);
}

// write_two writes "small" (16 floats) then "big" (n floats) so that big's data is the tail.
static void write_two(const char *path, float *big, size_t n) {
    float small[16];
    tu_rand_fill(small, 16, 5, -1.0f, 1.0f);
    tu_rand_fill(big, n, 6, -1.0f, 1.0f);
    ckpt_writer *w;
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_tensor(w, "small", small, 1, (size_t[]){16}), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_tensor(w, "model/big", big, 2, (size_t[]){n / 64, 64}), ERR_OK, "%s",
                 err_msg());
    cr_assert_eq(ckpt_write_attr_i64(w, "step", 3), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_writer_commit(w), ERR_OK, "%s", err_msg());
}

Test(ckpt, truncated_file_is_format_error) {
    char path[1024], half[1024];
    in_dir(path, "full.h5");
    in_dir(half, "half.h5");
    enum { N = 64 * 1024 };
    static float big[N];
    write_two(path, big, N);
    char *bytes;
    size_t n;
    cr_assert_eq(tu_read_file(path, &bytes, &n), 0);
    cr_assert_gt(n, N * sizeof(float));
    cr_assert_eq(tu_write_file(half, bytes, n / 2), 0);
    assert_open_format_error(half);
    // Only the 2 KiB superblock and headers: also refused.
    cr_assert_eq(tu_write_file(half, bytes, 2048), 0);
    assert_open_format_error(half);
    free(bytes);
}

// open_half runs on a thread of its own: it opens "<path>" expecting a truncated file.
static void *open_half(void *path) {
    ckpt_reader *r = NULL;
    int rc = ckpt_reader_open(&r, path);
    if (rc == ERR_OK) ckpt_reader_close(r);
    return (void *)(intptr_t)rc;
}

// HDF5 keeps its automatic error printing per thread (thread-safe builds): a thread other than
// the first to call ckpt_ (as the server's reload thread is) must not print HDF5-DIAG stacks.
Test(ckpt, errors_on_a_second_thread_print_nothing) {
    char path[1024], half[1024], log[1024];
    in_dir(path, "full.h5");
    in_dir(half, "half.h5");
    in_dir(log, "stderr.txt");
    enum { N = 64 * 1024 };
    static float big[N];
    write_two(path, big, N); // this thread calls ckpt_ first
    char *bytes;
    size_t n;
    cr_assert_eq(tu_read_file(path, &bytes, &n), 0);
    cr_assert_eq(tu_write_file(half, bytes, n / 2), 0);
    free(bytes);
    fflush(stderr);
    int saved = dup(2), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(saved >= 0 && fd >= 0 && dup2(fd, 2) == 2);
    pthread_t th;
    void *rc = NULL;
    cr_assert_eq(pthread_create(&th, NULL, open_half, half), 0);
    pthread_join(th, &rc);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    cr_assert_eq((int)(intptr_t)rc, ERR_FORMAT);
    char *text;
    cr_assert_eq(tu_read_file(log, &text, &n), 0);
    cr_assert_eq(n, 0, "the second thread printed:\n%s", text);
    free(text);
}

Test(ckpt, reading_data_cut_off_after_open_is_format_error) {
    char path[1024];
    in_dir(path, "cut.h5");
    enum { N = 64 * 1024 };
    static float big[N], got[N];
    write_two(path, big, N);
    ckpt_reader *r;
    cr_assert_eq(ckpt_reader_open(&r, path), ERR_OK, "%s", err_msg());
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(truncate(path, st.st_size / 2), 0);
    // HDF5's sec2 driver would read zeros past the end; ckpt must notice instead.
    int rc = ckpt_read_tensor(r, "model/big", got, 2, (size_t[]){N / 64, 64});
    cr_assert_eq(rc, ERR_FORMAT, "got %s (%s)", err_str(rc), err_msg());
    cr_assert(strstr(err_msg(), "model/big") && strstr(err_msg(), path), "msg: %s", err_msg());
    ckpt_reader_close(r);
}

Test(ckpt, wrong_shape_is_format_error_with_both_shapes) {
    char path[1024];
    in_dir(path, "s.h5");
    write_simple(path, 1, 1);
    ckpt_reader *r;
    cr_assert_eq(ckpt_reader_open(&r, path), ERR_OK, "%s", err_msg());
    float a[15] = {0};
    cr_assert_eq(ckpt_read_tensor(r, "model/a", a, 2, (size_t[]){5, 3}), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "model/a") && strstr(err_msg(), path), "msg: %s", err_msg());
    cr_assert(strstr(err_msg(), "(3, 5)") && strstr(err_msg(), "(5, 3)"), "msg: %s", err_msg());
    cr_assert_eq(ckpt_read_tensor(r, "model/a", a, 1, (size_t[]){15}), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "(3, 5)") && strstr(err_msg(), "(15)"), "msg: %s", err_msg());
    for (int i = 0; i < 15; i++)
        cr_assert_eq(a[i], 0.0f, "a mismatched read wrote data");
    ckpt_reader_close(r);
}

Test(ckpt, missing_dataset_is_format_error_naming_it) {
    char path[1024];
    in_dir(path, "m.h5");
    write_simple(path, 1, 1);
    ckpt_reader *r;
    cr_assert_eq(ckpt_reader_open(&r, path), ERR_OK, "%s", err_msg());
    float a[15];
    const char *names[] = {"model/b", "optim/m/transformer.wte.weight", "model", "model/a/x"};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(ckpt_read_tensor(r, names[i], a, 2, (size_t[]){3, 5}), ERR_FORMAT, "%s",
                     names[i]);
        cr_assert(strstr(err_msg(), names[i]) && strstr(err_msg(), path), "msg: %s", err_msg());
    }
    ckpt_reader_close(r);
}

Test(ckpt, missing_or_mistyped_attribute_is_format_error_naming_it) {
    char path[1024];
    in_dir(path, "attr.h5");
    ckpt_writer *w;
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_i64(w, "step", 5), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_str(w, "config", "x"), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_u64s(w, "rng", (uint64_t[]){1, 2, 3}, 3), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_u64s(w, "one_u64", (uint64_t[]){9}, 1), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_writer_commit(w), ERR_OK, "%s", err_msg());

    ckpt_reader *r;
    cr_assert_eq(ckpt_reader_open(&r, path), ERR_OK, "%s", err_msg());
    int64_t i64;
    double f64;
    char *s = (char *)1;
    uint64_t u[4];
    cr_assert_eq(ckpt_read_attr_i64(r, "epoch", &i64), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "epoch") && strstr(err_msg(), path), "msg: %s", err_msg());
    cr_assert_eq(ckpt_read_attr_f64(r, "lr", &f64), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "lr"), "msg: %s", err_msg());
    cr_assert_eq(ckpt_read_attr_str(r, "notes", &s), ERR_FORMAT);
    cr_assert_null(s);
    cr_assert(strstr(err_msg(), "notes"), "msg: %s", err_msg());
    cr_assert_eq(ckpt_read_attr_u64s(r, "seed", u, 4), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "seed"), "msg: %s", err_msg());
    // Wrong kind or count.
    cr_assert_eq(ckpt_read_attr_i64(r, "config", &i64), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "config"), "msg: %s", err_msg());
    cr_assert_eq(ckpt_read_attr_i64(r, "one_u64", &i64), ERR_FORMAT, "unsigned read as int64");
    cr_assert_eq(ckpt_read_attr_str(r, "step", &s), ERR_FORMAT);
    cr_assert_eq(ckpt_read_attr_f64(r, "step", &f64), ERR_FORMAT);
    cr_assert_eq(ckpt_read_attr_u64s(r, "rng", u, 4), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "rng") && strstr(err_msg(), "3"), "msg: %s", err_msg());
    cr_assert_eq(ckpt_read_attr_u64s(r, "step", u, 1), ERR_FORMAT);
    ckpt_reader_close(r);
}

Test(ckpt, has_reports_datasets_only) {
    char path[1024];
    in_dir(path, "h.h5");
    write_simple(path, 1, 1);
    ckpt_reader *r;
    cr_assert_eq(ckpt_reader_open(&r, path), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_has(r, "model/a"), 1);
    cr_assert_eq(ckpt_has(r, "/model/a"), 1);
    cr_assert_eq(ckpt_has(r, "model"), 0, "a group is not a dataset");
    cr_assert_eq(ckpt_has(r, "model/b"), 0);
    cr_assert_eq(ckpt_has(r, "optim/m/model.a"), 0, "missing intermediate group");
    cr_assert_eq(ckpt_has(r, "model/a/deeper"), 0);
    cr_assert_eq(ckpt_has(r, "step"), 0, "an attribute is not a dataset");
    cr_assert_eq(ckpt_has(r, ""), 0);
    ckpt_reader_close(r);
}

// h5py must see PyTorch names and shapes; skipped where /usr/bin/python3 has no h5py.
Test(ckpt, h5py_reads_tensors_with_their_shapes_and_attributes) {
    if (tu_run("/usr/bin/python3 -c \"import h5py\"", 20, NULL) != 0)
        cr_skip_test("/usr/bin/python3 with h5py not available");
    char path[1024], py[1024], cmd[4096];
    in_dir(path, "py.h5");
    in_dir(py, "check.py");
    float wte[5 * 3], m[7];
    for (int i = 0; i < 15; i++)
        wte[i] = 0.5f * (float)i;
    for (int i = 0; i < 7; i++)
        m[i] = -(float)i;
    ckpt_writer *w;
    cr_assert_eq(ckpt_writer_open(&w, path), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_tensor(w, "model/transformer.wte.weight", wte, 2, (size_t[]){5, 3}),
                 ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_tensor(w, "optim/m/transformer.ln_f.bias", m, 1, (size_t[]){7}), ERR_OK,
                 "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_i64(w, "step", 42), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_f64(w, "lr", 0.25), ERR_OK, "%s", err_msg());
    cr_assert_eq(ckpt_write_attr_str(w, "config", "[model]\nn_layer = 12\n"), ERR_OK, "%s",
                 err_msg());
    cr_assert_eq(ckpt_write_attr_u64s(w, "rng", (uint64_t[]){1, 0xffffffffffffffffull}, 2), ERR_OK,
                 "%s", err_msg());
    cr_assert_eq(ckpt_writer_commit(w), ERR_OK, "%s", err_msg());
    const char *script =
        "import sys, h5py, numpy as np\n"
        "f = h5py.File(sys.argv[1], 'r')\n"
        "w = f['model/transformer.wte.weight']\n"
        "assert w.shape == (5, 3) and w.dtype == np.float32, (w.shape, w.dtype)\n"
        "assert (w[...] == np.arange(15, dtype=np.float32).reshape(5, 3) * 0.5).all()\n"
        "m = f['optim']['m']['transformer.ln_f.bias'][...]\n"
        "assert m.shape == (7,) and (m == -np.arange(7)).all(), m\n"
        "a = f.attrs\n"
        "assert a['step'] == 42 and a['lr'] == 0.25, dict(a)\n"
        "c = a['config']\n"
        "c = c.decode() if isinstance(c, bytes) else c\n"
        "assert c == '[model]\\nn_layer = 12\\n', repr(c)\n"
        "assert list(a['rng']) == [1, 2**64 - 1] and a['rng'].dtype == np.uint64\n"
        "g = h5py.File(sys.argv[2], 'w')\n"
        "g['model/transformer.wpe.weight'] = np.arange(6, dtype=np.float64).reshape(2, 3)\n"
        "g.attrs['step'] = 7\n"
        "g.attrs['fixed'] = np.bytes_(b'a=1\\nb=2')\n"
        "g.attrs['vlen'] = 'x\\ny'\n"
        "g.close()\n"
        "print('h5py ok', w.shape)\n";
    cr_assert_eq(tu_write_file(py, script, strlen(script)), 0);
    char from_py[1024];
    in_dir(from_py, "from_py.h5");
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s %s", py, path, from_py);
    char *out = NULL;
    int st = tu_run(cmd, 20, &out);
    cr_assert_eq(st, 0, "h5py check failed (%d):\n%s", st, out ? out : "");
    cr_assert(out && strstr(out, "h5py ok (5, 3)"), "output: %s", out ? out : "");
    free(out);

    // And the other way: a file written by h5py (float64 data, fixed-length bytes attribute).
    ckpt_reader *r;
    cr_assert_eq(ckpt_reader_open(&r, from_py), ERR_OK, "%s", err_msg());
    float wpe[6];
    cr_assert_eq(ckpt_read_tensor(r, "model/transformer.wpe.weight", wpe, 2, (size_t[]){2, 3}),
                 ERR_OK, "%s", err_msg());
    for (int i = 0; i < 6; i++)
        cr_assert_eq(wpe[i], (float)i, "wpe[%d]=%g", i, wpe[i]);
    int64_t step;
    char *s;
    cr_assert_eq(ckpt_read_attr_i64(r, "step", &step), ERR_OK, "%s", err_msg());
    cr_assert_eq(step, 7);
    cr_assert_eq(ckpt_read_attr_str(r, "fixed", &s), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(s, "a=1\nb=2");
    free(s);
    cr_assert_eq(ckpt_read_attr_str(r, "vlen", &s), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(s, "x\ny");
    free(s);
    ckpt_reader_close(r);
}
