// data_test.c: token shards (round trips, header validation), the batch loader (determinism,
// resume, targets), meta.json, and `spartan data prepare` called in-process through
// data_cmd_main (plus one run of the real binary). Runs from the repo root; single-threaded.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/data.h"
#include "data/tok.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/cmd/data_cmd.h"

TestSuite(data, .timeout = 30);

static char *path_in(const char *dir, const char *name) {
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

static long fsize(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

// ramp fills tokens with a deterministic pattern: t[i] = (i * 7919 + 13) % mod.
static int32_t *ramp(size_t n, int32_t mod) {
    int32_t *t = malloc(n * sizeof *t);
    for (size_t i = 0; i < n; i++)
        t[i] = (int32_t)((i * 7919 + 13) % (size_t)mod);
    return t;
}

static void roundtrip(size_t n, int32_t mod, int want_dtype) {
    char *dir = tu_tmpdir("data");
    char *p = path_in(dir, "s.bin");
    int32_t *tok = ramp(n, mod);
    tok[n / 2] = mod - 1; // make the maximum present
    cr_assert_eq(data_shard_write(p, tok, n), ERR_OK, "%s", err_msg());
    size_t width = want_dtype == DATA_U16 ? 2 : 4;
    cr_assert_eq(fsize(p), (long)(32 + width * n));
    char *raw;
    size_t rn;
    cr_assert_eq(tu_read_file(p, &raw, &rn), 0);
    cr_assert(memcmp(raw, "STKN", 4) == 0, "magic bytes on disk are S T K N");
    cr_assert_eq((uint8_t)raw[4], 1);          // version, little-endian
    cr_assert_eq((uint8_t)raw[8], want_dtype); // dtype
    cr_assert_eq((uint8_t)raw[16], (uint8_t)n);
    free(raw);
    data_shard *s;
    cr_assert_eq(data_shard_open(&s, p), ERR_OK, "%s", err_msg());
    cr_assert_eq(data_shard_len(s), n);
    int32_t *back = malloc(n * sizeof *back);
    data_shard_read(s, 0, n, back);
    cr_assert(memcmp(back, tok, n * sizeof *tok) == 0, "tokens differ after round trip");
    data_shard_read(s, n - 3, 3, back);
    cr_assert(memcmp(back, tok + n - 3, 3 * sizeof *tok) == 0);
    cr_assert_eq(data_shard_max_token(s), mod - 1);
    cr_assert_eq(data_shard_max_token(s), mod - 1, "cached value stays the same");
    data_shard_close(s);
    free(back);
    free(tok);
    free(p);
    tu_rm_rf(dir);
    free(dir);
}

Test(data, shard_round_trip_uses_uint16_when_ids_fit) { roundtrip(10001, 65536, DATA_U16); }

Test(data, shard_round_trip_uses_uint32_for_large_ids) { roundtrip(10001, 100000, DATA_U32); }

Test(data, shard_write_replaces_atomically_and_leaves_no_temp_file) {
    char *dir = tu_tmpdir("data");
    char *p = path_in(dir, "s.bin");
    int32_t a[] = {1, 2, 3}, b[] = {9, 8};
    cr_assert_eq(data_shard_write(p, a, 3), ERR_OK);
    cr_assert_eq(data_shard_write(p, b, 2), ERR_OK);
    data_shard *s;
    cr_assert_eq(data_shard_open(&s, p), ERR_OK, "%s", err_msg());
    cr_assert_eq(data_shard_len(s), 2);
    data_shard_close(s);
    char *out;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls -A %s", dir);
    cr_assert_eq(tu_run(cmd, 5, &out), 0);
    cr_assert_str_eq(out, "s.bin\n", "only the shard remains, got: %s", out);
    free(out);
    free(p);
    tu_rm_rf(dir);
    free(dir);
}

Test(data, shard_write_errors_name_the_path) {
    int32_t a[] = {1, -5};
    cr_assert_eq(data_shard_write("/nonexistent-dir/x.bin", a, 1), ERR_IO);
    cr_assert(strstr(err_msg(), "/nonexistent-dir/x.bin"), "%s", err_msg());
    char *dir = tu_tmpdir("data");
    char *p = path_in(dir, "neg.bin");
    cr_assert_eq(data_shard_write(p, a, 2), ERR_INVAL);
    cr_assert(strstr(err_msg(), "negative") && strstr(err_msg(), p), "%s", err_msg());
    cr_assert_eq(fsize(p), -1, "nothing written for rejected tokens");
    free(p);
    tu_rm_rf(dir);
    free(dir);
}

// corrupt writes a valid 4-token shard, then applies a change and expects open to fail.
static void expect_open_error(const char *what, int rc_want, const char *msg_part,
                              void (*mutate)(char *buf, size_t *n)) {
    char *dir = tu_tmpdir("data");
    char *p = path_in(dir, "bad.bin");
    int32_t tok[] = {1, 2, 3, 4};
    cr_assert_eq(data_shard_write(p, tok, 4), ERR_OK);
    char *buf;
    size_t n;
    cr_assert_eq(tu_read_file(p, &buf, &n), 0);
    mutate(buf, &n);
    cr_assert_eq(tu_write_file(p, buf, n), 0);
    data_shard *s = NULL;
    cr_assert_eq(data_shard_open(&s, p), rc_want, "%s: %s", what, err_msg());
    cr_assert_null(s);
    cr_assert(strstr(err_msg(), p), "%s: message must name the file: %s", what, err_msg());
    cr_assert(strstr(err_msg(), msg_part), "%s: %s", what, err_msg());
    free(buf);
    free(p);
    tu_rm_rf(dir);
    free(dir);
}

static void bad_magic(char *b, size_t *n) {
    (void)n;
    b[0] = 'X';
}
static void bad_version(char *b, size_t *n) {
    (void)n;
    b[4] = 2;
}
static void bad_dtype(char *b, size_t *n) {
    (void)n;
    b[8] = 3;
}
static void drop_last_byte(char *b, size_t *n) {
    (void)b;
    (*n)--;
}
static void cut_header(char *b, size_t *n) {
    (void)b;
    *n = 20;
}
static void make_empty(char *b, size_t *n) {
    (void)b;
    *n = 0;
}
static void more_tokens_claimed(char *b, size_t *n) {
    (void)n;
    b[16] = 100;
}

Test(data, shard_open_rejects_bad_headers_and_sizes) {
    expect_open_error("wrong magic", ERR_FORMAT, "magic", bad_magic);
    expect_open_error("wrong version", ERR_FORMAT, "version 2", bad_version);
    expect_open_error("wrong dtype", ERR_FORMAT, "dtype 3", bad_dtype);
    expect_open_error("truncated body", ERR_FORMAT, "truncated", drop_last_byte);
    expect_open_error("header says more", ERR_FORMAT, "truncated", more_tokens_claimed);
    expect_open_error("truncated header", ERR_FORMAT, "truncated", cut_header);
    expect_open_error("empty file", ERR_FORMAT, "empty", make_empty);
}

Test(data, shard_open_missing_file_is_err_io) {
    data_shard *s = NULL;
    cr_assert_eq(data_shard_open(&s, "/nonexistent-dir/none.bin"), ERR_IO);
    cr_assert(strstr(err_msg(), "/nonexistent-dir/none.bin"), "%s", err_msg());
    cr_assert_null(s);
}

// A shard whose token i is i (uint16), so window contents reveal their start.
static data_shard *counting_shard(const char *dir, size_t n) {
    char *p = path_in(dir, "count.bin");
    int32_t *t = malloc(n * sizeof *t);
    for (size_t i = 0; i < n; i++)
        t[i] = (int32_t)i;
    cr_assert_eq(data_shard_write(p, t, n), ERR_OK, "%s", err_msg());
    data_shard *s;
    cr_assert_eq(data_shard_open(&s, p), ERR_OK, "%s", err_msg());
    free(t);
    free(p);
    return s;
}

enum { B = 4, T = 16, STEPS = 12 };

static void draw(data_loader *dl, int steps, int32_t *x, int32_t *y) {
    for (int i = 0; i < steps; i++)
        data_loader_next(dl, x + i * B * T, y + i * B * T);
}

Test(data, loader_is_deterministic_per_seed_and_rank) {
    char *dir = tu_tmpdir("data");
    data_shard *s = counting_shard(dir, 50000);
    static int32_t x1[STEPS * B * T], y1[STEPS * B * T], x2[STEPS * B * T], y2[STEPS * B * T];
    data_loader *a, *b;
    cr_assert_eq(data_loader_create(&a, s, B, T, 42, 0), ERR_OK, "%s", err_msg());
    cr_assert_eq(data_loader_create(&b, s, B, T, 42, 0), ERR_OK);
    draw(a, STEPS, x1, y1);
    draw(b, STEPS, x2, y2);
    cr_assert(memcmp(x1, x2, sizeof x1) == 0 && memcmp(y1, y2, sizeof y1) == 0);
    cr_assert_eq(data_loader_pos(a), STEPS);
    data_loader_destroy(b);
    cr_assert_eq(data_loader_create(&b, s, B, T, 42, 1), ERR_OK);
    draw(b, STEPS, x2, y2);
    cr_assert(memcmp(x1, x2, sizeof x1) != 0, "another rank must see other windows");
    data_loader_destroy(b);
    cr_assert_eq(data_loader_create(&b, s, B, T, 43, 0), ERR_OK);
    draw(b, STEPS, x2, y2);
    cr_assert(memcmp(x1, x2, sizeof x1) != 0, "another seed must see other windows");
    // Consecutive batches and rows of one stream differ too.
    cr_assert(memcmp(x1, x1 + B * T, B * T * sizeof *x1) != 0);
    cr_assert_neq(x1[0], x1[T]);
    data_loader_destroy(a);
    data_loader_destroy(b);
    data_shard_close(s);
    tu_rm_rf(dir);
    free(dir);
}

Test(data, set_pos_reproduces_the_stream) {
    char *dir = tu_tmpdir("data");
    data_shard *s = counting_shard(dir, 50000);
    static int32_t x1[STEPS * B * T], y1[STEPS * B * T], x2[B * T], y2[B * T];
    data_loader *a, *b;
    cr_assert_eq(data_loader_create(&a, s, B, T, 7, 3), ERR_OK);
    draw(a, STEPS, x1, y1);
    cr_assert_eq(data_loader_create(&b, s, B, T, 7, 3), ERR_OK);
    for (int k = STEPS - 1; k >= 0; k -= 3) { // jump around, backwards too
        data_loader_set_pos(b, (uint64_t)k);
        cr_assert_eq(data_loader_pos(b), (uint64_t)k);
        data_loader_next(b, x2, y2);
        cr_assert(memcmp(x2, x1 + k * B * T, sizeof x2) == 0, "batch %d differs", k);
        cr_assert(memcmp(y2, y1 + k * B * T, sizeof y2) == 0, "targets %d differ", k);
        cr_assert_eq(data_loader_pos(b), (uint64_t)k + 1);
    }
    data_loader_destroy(a);
    data_loader_destroy(b);
    data_shard_close(s);
    tu_rm_rf(dir);
    free(dir);
}

Test(data, targets_are_inputs_shifted_by_one_within_the_shard) {
    char *dir = tu_tmpdir("data");
    size_t n = 1000;
    data_shard *s = counting_shard(dir, n);
    int32_t x[B * T], y[B * T];
    data_loader *dl;
    cr_assert_eq(data_loader_create(&dl, s, B, T, 1, 0), ERR_OK);
    for (int step = 0; step < 50; step++) {
        data_loader_next(dl, x, y);
        for (int b = 0; b < B; b++) {
            int32_t start = x[b * T];
            cr_assert(start >= 0 && (size_t)start <= n - T - 1, "start %d", start);
            for (int t = 0; t < T; t++) {
                cr_assert_eq(x[b * T + t], start + t);     // a contiguous window
                cr_assert_eq(y[b * T + t], start + t + 1); // next token
            }
        }
    }
    data_loader_destroy(dl);
    data_shard_close(s);
    tu_rm_rf(dir);
    free(dir);
}

Test(data, every_window_start_including_the_last_is_drawn) {
    char *dir = tu_tmpdir("data");
    data_shard *s = counting_shard(dir, T + 3); // starts 0, 1, 2
    int32_t x[B * T], y[B * T];
    int seen[3] = {0};
    data_loader *dl;
    cr_assert_eq(data_loader_create(&dl, s, B, T, 5, 0), ERR_OK);
    for (int i = 0; i < 50; i++) {
        data_loader_next(dl, x, y);
        for (int b = 0; b < B; b++) {
            cr_assert(x[b * T] >= 0 && x[b * T] <= 2, "start %d", x[b * T]);
            seen[x[b * T]]++;
        }
    }
    cr_assert(seen[0] && seen[1] && seen[2], "seen %d %d %d", seen[0], seen[1], seen[2]);
    data_loader_destroy(dl);
    data_shard_close(s);
    tu_rm_rf(dir);
    free(dir);
}

Test(data, loader_rejects_a_shard_shorter_than_one_window) {
    char *dir = tu_tmpdir("data");
    data_shard *s = counting_shard(dir, T);
    data_loader *dl = NULL;
    cr_assert_eq(data_loader_create(&dl, s, B, T, 1, 0), ERR_INVAL);
    cr_assert(strstr(err_msg(), "16 tokens") && strstr(err_msg(), "at least 17"), "%s", err_msg());
    cr_assert_null(dl);
    cr_assert_eq(data_loader_create(&dl, s, 0, T, 1, 0), ERR_INVAL);
    data_shard_close(s);
    s = counting_shard(dir, T + 1); // exactly one window: always start 0
    cr_assert_eq(data_loader_create(&dl, s, B, T, 1, 0), ERR_OK, "%s", err_msg());
    int32_t x[B * T], y[B * T];
    data_loader_next(dl, x, y);
    cr_assert(x[0] == 0 && x[3 * T] == 0 && y[T - 1] == T);
    data_loader_destroy(dl);
    data_shard_close(s);
    // An empty shard (0 tokens) is a valid file but no loader can use it.
    char *p = path_in(dir, "empty.bin");
    cr_assert_eq(data_shard_write(p, NULL, 0), ERR_OK);
    cr_assert_eq(data_shard_open(&s, p), ERR_OK, "%s", err_msg());
    cr_assert_eq(data_shard_len(s), 0);
    cr_assert_eq(data_loader_create(&dl, s, 1, 1, 1, 0), ERR_INVAL);
    data_shard_close(s);
    free(p);
    tu_rm_rf(dir);
    free(dir);
}

Test(data, meta_read_checks_fields_and_names_the_file) {
    char *dir = tu_tmpdir("data");
    char *m = path_in(dir, "meta.json");
    char *spec = NULL;
    int v = 0;
    cr_assert_eq(data_meta_read(dir, &spec, &v), ERR_IO);
    cr_assert(strstr(err_msg(), m), "%s", err_msg());
    const char *good = "{\"tokenizer\": \"char:0a20\", \"vocab_size\": 2, \"n_train\": 5}";
    cr_assert_eq(tu_write_file(m, good, strlen(good)), 0);
    cr_assert_eq(data_meta_read(dir, &spec, &v), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(spec, "char:0a20");
    cr_assert_eq(v, 2);
    free(spec);
    const char *bad[] = {"{\"tokenizer\": ", "{\"vocab_size\": 2}", "{\"tokenizer\": \"gpt2\"}",
                         "{\"tokenizer\": \"gpt2\", \"vocab_size\": -3}"};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(tu_write_file(m, bad[i], strlen(bad[i])), 0);
        cr_assert_eq(data_meta_read(dir, &spec, &v), ERR_FORMAT, "case %d", i);
        cr_assert(strstr(err_msg(), m), "%s", err_msg());
    }
    free(m);
    tu_rm_rf(dir);
    free(dir);
}

static int run_data_cmd(int argc, const char **argv) { return data_cmd_main(argc, (char **)argv); }

// read_all_tokens reads a whole shard.
static int32_t *read_shard(const char *path, size_t *n) {
    data_shard *s;
    cr_assert_eq(data_shard_open(&s, path), ERR_OK, "%s", err_msg());
    *n = data_shard_len(s);
    int32_t *t = malloc((*n ? *n : 1) * sizeof *t);
    data_shard_read(s, 0, *n, t);
    data_shard_close(s);
    return t;
}

Test(data, prepare_char_splits_tokens_and_decodes_back_to_the_input) {
    char *dir = tu_tmpdir("data");
    char *in = path_in(dir, "in.txt");
    const char *text = "It is the east, and Juliet is the sun.\nArise, fair sun.\n";
    size_t n = strlen(text);
    cr_assert_eq(tu_write_file(in, text, n), 0);
    char *out = path_in(dir, "a/b/out"); // parents are created
    const char *argv[] = {"data", "prepare", "--tokenizer", "char", "--val-fraction=0.25", in, out};
    cr_assert_eq(run_data_cmd(7, argv), 0, "%s", err_msg());
    char *spec;
    int v;
    cr_assert_eq(data_meta_read(out, &spec, &v), ERR_OK, "%s", err_msg());
    tok_tokenizer *t;
    cr_assert_eq(tok_from_spec(&t, spec), ERR_OK, "%s", err_msg());
    cr_assert_eq(tok_vocab_size(t), v);
    char *tr = path_in(out, "train.bin"), *va = path_in(out, "val.bin");
    size_t nt, nv;
    int32_t *a = read_shard(tr, &nt), *b = read_shard(va, &nv);
    cr_assert_eq(nv, n / 4, "val gets the last floor(F*n) tokens");
    cr_assert_eq(nt + nv, n);
    int32_t *all = malloc(n * sizeof *all);
    memcpy(all, a, nt * sizeof *a);
    memcpy(all + nt, b, nv * sizeof *b);
    char *back;
    size_t len;
    cr_assert_eq(tok_decode(t, all, n, &back, &len), ERR_OK);
    cr_assert(len == n && memcmp(back, text, n) == 0, "train+val must decode to the input");
    free(back);
    free(all);
    free(a);
    free(b);
    free(tr);
    free(va);
    free(spec);
    tok_destroy(t);
    free(in);
    free(out);
    tu_rm_rf(dir);
    free(dir);
}

Test(data, prepare_gpt2_on_tinyshakespeare_writes_shards_and_meta) {
    char *dir = tu_tmpdir("data");
    const char *argv[] = {"data", "prepare", "--tokenizer", "gpt2", "data/tinyshakespeare.txt",
                          dir};
    cr_assert_eq(run_data_cmd(6, argv), 0, "%s", err_msg());
    char *spec;
    int v;
    cr_assert_eq(data_meta_read(dir, &spec, &v), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(spec, "gpt2");
    cr_assert_eq(v, 50257);
    char *tr = path_in(dir, "train.bin"), *va = path_in(dir, "val.bin");
    size_t nt, nv;
    int32_t *a = read_shard(tr, &nt), *b = read_shard(va, &nv);
    cr_assert_eq(nt + nv, 338025);
    cr_assert_eq(nv, 33802, "default val fraction 0.1: floor(0.1 * 338025)");
    cr_assert_eq(a[0], 5962); // "First"
    cr_assert_eq(fsize(tr), (long)(32 + 2 * nt), "GPT-2 ids fit uint16");
    free(a);
    free(b);
    free(tr);
    free(va);
    free(spec);
    tu_rm_rf(dir);
    free(dir);
}

// count_of returns how many times needle occurs in hay.
static int count_of(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

Test(data, zero_val_fraction_writes_no_val_shard_and_training_skips_eval_once, .timeout = 90) {
    char *dir = tu_tmpdir("data");
    char *in = path_in(dir, "in.txt");
    char text[2000];
    for (size_t i = 0; i < sizeof text - 1; i++)
        text[i] = "abcd efgh\n"[i % 10];
    cr_assert_eq(tu_write_file(in, text, sizeof text - 1), 0);
    char *out = path_in(dir, "out");
    char *va = path_in(out, "val.bin"), *tr = path_in(out, "train.bin");
    // A first prepare with a val split, then F = 0 into the same folder: its val.bin must go.
    const char *with_val[] = {"data", "prepare", "--val-fraction", "0.5", "--tokenizer", "char",
                              in,     out};
    cr_assert_eq(run_data_cmd(8, with_val), 0, "%s", err_msg());
    cr_assert_gt(fsize(va), 32);
    const char *argv[] = {"data", "prepare", "--val-fraction", "0", "--tokenizer", "char", in, out};
    cr_assert_eq(run_data_cmd(8, argv), 0, "%s", err_msg());
    cr_assert_eq(fsize(va), -1, "F = 0 writes no val.bin and leaves no old one");
    size_t nt;
    free(read_shard(tr, &nt));
    cr_assert_eq(nt, sizeof text - 1, "every token goes to train.bin");
    char *meta = path_in(out, "meta.json"), *m = NULL;
    cr_assert_eq(tu_read_file(meta, &m, NULL), 0);
    cr_assert(strstr(m, "\"n_val\": 0"), "%s", m);
    free(m);
    free(meta);

    // Training on it evaluates nothing and says so once, even with an eval every step.
    char cmd[2048], *log = NULL;
    snprintf(cmd, sizeof cmd,
             "%s train configs/tiny.ini --set data.dir=%s --set train.out_dir=%s/run "
             "--set model.n_layer=1 --set model.n_embd=16 --set model.n_head=2 "
             "--set model.block_size=16 --set train.batch_size=4 --set train.max_iters=3 "
             "--set train.eval_interval=1 --set train.threads=1 --overwrite",
             tu_spartan(), out, dir);
    cr_assert_eq(tu_run(cmd, 60, &log), 0, "%s", log);
    cr_assert_eq(count_of(log, "evaluation skipped"), 1, "%s", log);
    cr_assert(strstr(log, "no val shard") && strstr(log, va), "%s", log);
    cr_assert(!strstr(log, "val_loss="), "%s", log);
    free(log);
    char *csv = NULL, path[1024];
    snprintf(path, sizeof path, "%s/run/metrics.csv", dir);
    cr_assert_eq(tu_read_file(path, &csv, NULL), 0);
    cr_assert(strstr(csv, "\n3,") && count_of(csv, ",,") >= 3, "val_loss cells stay empty: %s",
              csv);
    free(csv);
    // A val.bin too short for one window (an old empty one) is skipped the same way, by name.
    cr_assert_eq(data_shard_write(va, NULL, 0), ERR_OK);
    cr_assert_eq(tu_run(cmd, 60, &log), 0, "%s", log);
    cr_assert_eq(count_of(log, "evaluation skipped"), 1, "%s", log);
    cr_assert(strstr(log, "holds 0 tokens") && strstr(log, va), "%s", log);
    free(log);
    free(va);
    free(tr);
    free(in);
    free(out);
    tu_rm_rf(dir);
    free(dir);
}

Test(data, prepare_rejects_bad_arguments_and_inputs) {
    char *dir = tu_tmpdir("data");
    char *in = path_in(dir, "in.txt");
    cr_assert_eq(tu_write_file(in, "abc", 3), 0);
    char *out = path_in(dir, "out");
    char *empty = path_in(dir, "empty.txt");
    cr_assert_eq(tu_write_file(empty, "", 0), 0);
    char *under_file = path_in(in, "sub"); // a folder below a regular file cannot exist
    struct {
        int argc;
        const char *argv[8];
        int rc;
    } cases[] = {
        {2, {"data", "prepare"}, 2},
        {5, {"data", "prepare", "--tokenizer", "char", in}, 2},
        {6, {"data", "prepare", "--tokenizer", "bpe", in, out}, 2},
        {5, {"data", "prepare", in, out, "--tokenizer"}, 2},
        {8, {"data", "prepare", "--tokenizer", "char", "--val-fraction", "1.5", in, out}, 2},
        {8, {"data", "prepare", "--tokenizer", "char", "--val-fraction", "x", in, out}, 2},
        {7, {"data", "prepare", "--tokenizer", "char", "--bogus", in, out}, 2},
        {2, {"data", "frobnicate"}, 2},
        {6, {"data", "prepare", "--tokenizer", "char", "/nonexistent/in.txt", out}, 1},
        {6, {"data", "prepare", "--tokenizer", "char", empty, out}, 1},
        {6, {"data", "prepare", "--tokenizer", "char", in, under_file}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_assert_eq(run_data_cmd(cases[i].argc, cases[i].argv), cases[i].rc, "case %zu", i);
    cr_assert_eq(fsize(out), -1, "no output folder after failures");
    free(in);
    free(out);
    free(empty);
    free(under_file);
    tu_rm_rf(dir);
    free(dir);
}

Test(data, spartan_binary_prepares_and_reports_errors) {
    char *dir = tu_tmpdir("data");
    char cmd[1024], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s data prepare --help", tu_spartan());
    cr_assert_eq(tu_run(cmd, 10, &out), 0, "%s", out);
    cr_assert(strstr(out, "--val-fraction") && strstr(out, "no val.bin"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s data prepare --tokenizer char /nonexistent/x.txt %s/o",
             tu_spartan(), dir);
    cr_assert_eq(tu_run(cmd, 10, &out), 1, "%s", out);
    cr_assert(strstr(out, "/nonexistent/x.txt"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s data prepare --tokenizer char data/tinyshakespeare.txt %s/o",
             tu_spartan(), dir);
    cr_assert_eq(tu_run(cmd, 20, &out), 0, "%s", out);
    cr_assert(strstr(out, "tokens=1115394") && strstr(out, "vocab=65"), "%s", out);
    free(out);
    tu_rm_rf(dir);
    free(dir);
}
