// train_test.c: bin/spartan as a user runs it: train, eval, sample, bit-exact resume, SIGINT,
// and every bad-input case of the trainer (clear error, exit status != 0, no crash). Each test
// prepares the char-level tinyshakespeare data in its own temp folder and trains a very small
// model for a few steps.
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "data/data.h"
#include "tests/test_util.h"
#include "train/base/ckdir.h"
#include "train/base/err.h"
#include "train/ckpt.h"
#include "train/gpt.h"

TestSuite(train, .timeout = 120);

// A model small enough that 20 steps take well under a second.
#define SMALL_ANY_THREADS                                                            \
    "--set model.n_layer=2 --set model.n_embd=32 --set model.n_head=2 "              \
    "--set model.block_size=32 --set train.batch_size=8 --set train.log_interval=5 " \
    "--set train.eval_interval=10 --set train.eval_iters=2"
#define SMALL SMALL_ANY_THREADS " --set train.threads=2"

typedef struct {
    char *dir;      // temp folder
    char data[600]; // prepared data folder
    char out[600];  // train.out_dir
} env;

static void env_open(env *e) {
    e->dir = tu_tmpdir("train");
    cr_assert(e->dir);
    snprintf(e->data, sizeof e->data, "%s/data", e->dir);
    snprintf(e->out, sizeof e->out, "%s/out", e->dir);
    char *out = NULL;
    int rc = tu_prepare_char_data(e->data, &out);
    cr_assert_eq(rc, 0, "data prepare failed: %s", out);
    free(out);
}

static void env_close(env *e) {
    tu_rm_rf(e->dir);
    free(e->dir);
}

// train runs `spartan train configs/tiny.ini SMALL --set data.dir --set out_dir extra`.
static int train(env *e, const char *extra, char **out) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "%s train configs/tiny.ini " SMALL " --set data.dir=%s --set train.out_dir=%s %s",
             tu_spartan(), e->data, e->out, extra);
    return tu_run(cmd, 90, out);
}

static float *load_params(const char *path, size_t *n) {
    float *p = tu_load_params(path, n);
    cr_assert(p, "%s", err_msg());
    return p;
}

// spawn runs `exec cmd` (exec: signals reach spartan itself) in the background with its stderr
// in log, and returns its pid.
static pid_t spawn(const char *cmd, const char *log) {
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        if (!freopen(log, "w", stderr)) _exit(126);
        char full[4200];
        snprintf(full, sizeof full, "exec %s", cmd);
        execl("/bin/sh", "sh", "-c", full, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int count_lines(const char *path) {
    char *text;
    if (tu_read_file(path, &text, NULL)) return -1;
    int n = 0;
    for (char *p = text; *p; p++)
        n += *p == '\n';
    free(text);
    return n;
}

Test(train, trains_writes_metrics_and_checkpoint_then_eval_and_sample_work) {
    env e;
    env_open(&e);
    char *out = NULL, path[700], cmd[2048];
    int rc = train(&e, "--set train.max_iters=20", &out);
    cr_assert_eq(rc, 0, "train failed: %s", out);
    cr_assert(strstr(out, "step=20/20"), "no progress line: %s", out);
    cr_assert(strstr(out, "val_loss="), "no val loss: %s", out);
    free(out);
    snprintf(path, sizeof path, "%s/metrics.csv", e.out);
    cr_assert_eq(count_lines(path), 21, "metrics.csv: header + one row per step");
    snprintf(path, sizeof path, "%s/ckpt_00000020.h5", e.out);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "no final checkpoint");
    snprintf(path, sizeof path, "%s/ckpt_00000020.h5.tmp", e.out);
    cr_assert_neq(stat(path, &st), 0, "temp file left behind");

    snprintf(cmd, sizeof cmd, "%s eval %s --data %s/val.bin --max-windows 16", tu_spartan(), e.out,
             e.data);
    rc = tu_run(cmd, 60, &out);
    cr_assert_eq(rc, 0, "eval failed: %s", out);
    char *last = strstr(out, "loss ");
    cr_assert(last, "%s", out);
    float loss = strtof(last + 5, NULL);
    cr_assert(loss > 1.0f && loss < 4.5f, "eval loss %g", loss);
    free(out);

    snprintf(cmd, sizeof cmd, "%s sample %s --prompt ROMEO: --tokens 40 --seed 3", tu_spartan(),
             e.out);
    rc = tu_run(cmd, 60, &out);
    cr_assert_eq(rc, 0, "sample failed: %s", out);
    cr_assert(strncmp(out, "ROMEO:", 6) == 0 && strlen(out) >= 46, "sample output: %s", out);
    char *again = NULL;
    tu_run(cmd, 60, &again);
    cr_assert_str_eq(out, again, "sampling with the same seed must repeat");
    free(out);
    free(again);
    env_close(&e);
}

// A fresh run into a folder that holds another run stops and names --resume and --overwrite;
// without the guard the old run's newer ckpt_8 would be picked over the new run's ckpt_2.
Test(train, fresh_run_into_a_used_folder_is_refused_unless_overwrite) {
    env e;
    env_open(&e);
    char *out = NULL, path[700];
    int rc = train(&e, "--set train.max_iters=8", &out);
    cr_assert_eq(rc, 0, "%s", out);
    free(out);
    rc = train(&e, "--set train.max_iters=2", &out);
    cr_assert_eq(rc, 2, "rc %d: %s", rc, out);
    cr_assert(strstr(out, "already holds a run") && strstr(out, "up to step 8") &&
                  strstr(out, "--resume") && strstr(out, "--overwrite"),
              "%s", out);
    free(out);
    snprintf(path, sizeof path, "%s/metrics.csv", e.out);
    cr_assert_eq(count_lines(path), 9, "the refused run touched metrics.csv");
    rc = train(&e, "--set train.max_iters=2 --overwrite", &out);
    cr_assert_eq(rc, 0, "%s", out);
    free(out);
    cr_assert_eq(count_lines(path), 3, "metrics.csv: header + 2 rows of the new run");
    struct stat st;
    snprintf(path, sizeof path, "%s/ckpt_00000008.h5", e.out);
    cr_assert_neq(stat(path, &st), 0, "the old run's checkpoint is still there");
    char *newest = NULL;
    cr_assert_eq(ckdir_resolve(e.out, &newest), ERR_OK, "%s", err_msg());
    cr_assert(strstr(newest, "ckpt_00000002.h5"), "newest is %s", newest);
    free(newest);
    env_close(&e);
}

Test(train, resume_is_bit_exact) {
    env e;
    env_open(&e);
    char *out = NULL, a[700], b[700], extra[1024];
    // straight: 16 steps into out/
    int rc = train(&e, "--set train.max_iters=16", &out);
    cr_assert_eq(rc, 0, "%s", out);
    free(out);
    snprintf(a, sizeof a, "%s/ckpt_00000016.h5", e.out);
    // split: 8 steps into out2/, then resume to 16
    char *keep = strdup(e.out);
    strcat(e.out, "2");
    rc = train(&e, "--set train.max_iters=8", &out);
    cr_assert_eq(rc, 0, "%s", out);
    free(out);
    snprintf(extra, sizeof extra, "--set train.max_iters=16 --resume %s/ckpt_00000008.h5", e.out);
    rc = train(&e, extra, &out);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "resumed"), "%s", out);
    free(out);
    snprintf(b, sizeof b, "%s/ckpt_00000016.h5", e.out);
    size_t na, nb;
    float *pa = load_params(a, &na), *pb = load_params(b, &nb);
    cr_assert_eq(na, nb);
    cr_assert_eq(memcmp(pa, pb, na * sizeof(float)), 0, "resumed parameters differ");
    // and the runs must actually have trained (parameters differ from the step-8 checkpoint)
    char mid[700];
    snprintf(mid, sizeof mid, "%s/ckpt_00000008.h5", e.out);
    size_t nm;
    float *pm = load_params(mid, &nm);
    cr_assert_neq(memcmp(pa, pm, na * sizeof(float)), 0);
    free(pa);
    free(pb);
    free(pm);
    free(keep);
    env_close(&e);
}

Test(train, sigint_saves_a_checkpoint_and_exits_cleanly) {
    env e;
    env_open(&e);
    char cmd[4096], log[700];
    snprintf(log, sizeof log, "%s/log.txt", e.dir);
    snprintf(cmd, sizeof cmd,
             "%s train configs/tiny.ini " SMALL
             " --set data.dir=%s --set train.out_dir=%s --set train.max_iters=1000000",
             tu_spartan(), e.data, e.out);
    pid_t pid = spawn(cmd, log);
    // wait (bounded) for training to make progress
    char metrics[700];
    snprintf(metrics, sizeof metrics, "%s/metrics.csv", e.out);
    for (int i = 0; i < 300 && count_lines(metrics) < 5; i++)
        usleep(100000);
    cr_assert(count_lines(metrics) >= 5, "training made no progress");
    kill(pid, SIGINT);
    int rc = tu_wait_exit(pid, 30); // a hang is -1 (the zeroed status used to pass as exit 0)
    cr_assert_eq(rc, 0, "spartan train after SIGINT: exit %d", rc);
    char *text;
    tu_read_file(log, &text, NULL);
    cr_assert(strstr(text, "interrupted"), "%s", text);
    free(text);
    gpt_model *m;
    int64_t step = 0;
    cr_assert_eq(gpt_load(&m, e.out, 1, 0, NULL, &step), ERR_OK, "%s", err_msg());
    cr_assert(step >= 4 && step < 1000000, "step %lld", (long long)step);
    gpt_destroy(m);
    env_close(&e);
}

// expect_fail runs cmd and checks exit status != 0, no signal, and that the output names want.
static void expect_fail(const char *cmd, const char *want) {
    char *out = NULL;
    int rc = tu_run(cmd, 60, &out);
    cr_assert(rc != 0 && rc < 128, "expected a clean failure, got %d for: %s\n%s", rc, cmd, out);
    cr_assert(strstr(out, want), "error does not mention '%s': %s", want, out);
    cr_assert(!strstr(out, "AddressSanitizer") && !strstr(out, "Assertion"), "%s", out);
    free(out);
}

Test(train, bad_config_and_arguments_give_clear_errors) {
    env e;
    env_open(&e);
    char cmd[2048], path[700];
    snprintf(cmd, sizeof cmd, "%s train %s/none.ini", tu_spartan(), e.dir);
    expect_fail(cmd, "none.ini");
    snprintf(path, sizeof path, "%s/bad.ini", e.dir);
    const char *bad = "[model]\nn_layer = 2\n[train]\nbatch_sise = 4\n";
    tu_write_file(path, bad, strlen(bad));
    snprintf(cmd, sizeof cmd, "%s train %s", tu_spartan(), path);
    expect_fail(cmd, "bad.ini:4");
    expect_fail(cmd, "train.batch_sise");
    const char *garbage = "[model\nn_layer = 2\n";
    tu_write_file(path, garbage, strlen(garbage));
    expect_fail(cmd, "bad.ini:1");
    snprintf(cmd, sizeof cmd, "%s train configs/tiny.ini --bogus", tu_spartan());
    expect_fail(cmd, "--bogus");
    snprintf(cmd, sizeof cmd, "%s train configs/tiny.ini --set model.n_head=3", tu_spartan());
    expect_fail(cmd, "n_head");
    env_close(&e);
}

Test(train, bad_checkpoints_give_clear_errors) {
    env e;
    env_open(&e);
    char *out = NULL, cmd[4096], ck[700], bad[700];
    int rc = train(&e, "--set train.max_iters=4", &out);
    cr_assert_eq(rc, 0, "%s", out);
    free(out);
    snprintf(ck, sizeof ck, "%s/ckpt_00000004.h5", e.out);
    // missing
    snprintf(cmd, sizeof cmd, "%s sample %s/nope.h5", tu_spartan(), e.dir);
    expect_fail(cmd, "nope.h5");
    // garbage bytes
    snprintf(bad, sizeof bad, "%s/garbage.h5", e.dir);
    tu_write_file(bad, "this is not hdf5 at all, just text\n", 35);
    snprintf(cmd, sizeof cmd, "%s eval %s --data %s/val.bin", tu_spartan(), bad, e.data);
    expect_fail(cmd, "garbage.h5");
    // truncated: the first half of a real checkpoint
    char *data;
    size_t n;
    cr_assert_eq(tu_read_file(ck, &data, &n), 0);
    snprintf(bad, sizeof bad, "%s/trunc.h5", e.dir);
    tu_write_file(bad, data, n / 2);
    free(data);
    snprintf(cmd, sizeof cmd, "%s sample %s --tokens 5", tu_spartan(), bad);
    expect_fail(cmd, "trunc.h5");
    char extra[1024];
    snprintf(extra, sizeof extra, "--set train.max_iters=8 --resume %s", bad);
    rc = train(&e, extra, &out);
    cr_assert(rc != 0 && rc < 128 && strstr(out, "trunc.h5"), "rc %d: %s", rc, out);
    free(out);
    // shapes that do not match the config
    snprintf(extra, sizeof extra, "--set train.max_iters=8 --set model.n_embd=64 --resume %s", ck);
    rc = train(&e, extra, &out);
    cr_assert(rc != 0 && rc < 128 && strstr(out, "does not match"), "rc %d: %s", rc, out);
    free(out);
    env_close(&e);
}

static void write_shard_file(const char *path, uint32_t magic, uint64_t ntok) {
    FILE *f = fopen(path, "wb");
    uint32_t h[4] = {magic, DATA_VERSION, DATA_U16, 0};
    uint64_t h2[2] = {ntok, 0};
    fwrite(h, 4, 4, f);
    fwrite(h2, 8, 2, f);
    for (uint64_t i = 0; i < ntok; i++) {
        uint16_t t = (uint16_t)(i % 7);
        fwrite(&t, 2, 1, f);
    }
    fclose(f);
}

Test(train, bad_data_and_output_folders_give_clear_errors) {
    env e;
    env_open(&e);
    char *out = NULL, path[700], cmd[4096];
    // data too short for one batch window
    snprintf(path, sizeof path, "%s/train.bin", e.data);
    write_shard_file(path, DATA_MAGIC, 10);
    int rc = train(&e, "--set train.max_iters=2", &out);
    cr_assert(rc != 0 && rc < 128 && strstr(out, "train.bin"), "rc %d: %s", rc, out);
    free(out);
    // empty shard
    write_shard_file(path, DATA_MAGIC, 0);
    rc = train(&e, "--set train.max_iters=2", &out);
    cr_assert(rc != 0 && rc < 128 && strstr(out, "train.bin"), "rc %d: %s", rc, out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s eval configs --data %s", tu_spartan(), path);
    expect_fail(cmd, "configs");
    // wrong magic
    write_shard_file(path, 0x12345678u, 5000);
    rc = train(&e, "--set train.max_iters=2", &out);
    cr_assert(rc != 0 && rc < 128 && strstr(out, "train.bin"), "rc %d: %s", rc, out);
    free(out);
    // unwritable output folder (a path below a regular file)
    write_shard_file(path, DATA_MAGIC, 5000);
    snprintf(cmd, sizeof cmd,
             "%s train configs/tiny.ini " SMALL
             " --set data.dir=%s --set train.out_dir=%s/train.bin/out --set train.max_iters=2",
             tu_spartan(), e.data, e.data);
    expect_fail(cmd, "train.bin/out");
    env_close(&e);
}

Test(train, missing_data_folder_error_says_how_to_prepare_it) {
    char *dir = tu_tmpdir("train"), cmd[4096], want[1024];
    cr_assert(dir);
    snprintf(cmd, sizeof cmd,
             "%s train configs/tiny.ini --set data.dir=%s/nodata --set train.out_dir=%s/out",
             tu_spartan(), dir, dir);
    snprintf(want, sizeof want,
             "`bin/spartan data prepare --tokenizer char data/tinyshakespeare.txt %s/nodata`", dir);
    expect_fail(cmd, want);
    // A folder that exists but was never prepared, with the GPT-2 vocabulary: the BPE tokenizer.
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/empty && %s train configs/gpt2-124m.ini --set data.dir=%s/empty "
             "--set train.out_dir=%s/out",
             dir, tu_spartan(), dir, dir);
    snprintf(want, sizeof want,
             "`bin/spartan data prepare --tokenizer gpt2 data/tinyshakespeare.txt %s/empty`", dir);
    expect_fail(cmd, want);
    tu_rm_rf(dir);
    free(dir);
}

Test(train, rank_comes_from_the_flag_then_the_launchers_environment) {
    env e;
    env_open(&e);
    char *out = NULL, cmd[4096];
    const char *base = "train configs/tiny.ini " SMALL " --set train.max_iters=1";
    snprintf(cmd, sizeof cmd, "RANK=3 %s %s --set data.dir=%s --set train.out_dir=%s/a",
             tu_spartan(), base, e.data, e.dir);
    cr_assert_eq(tu_run(cmd, 60, &out), 0, "%s", out);
    cr_assert(strstr(out, "rank=3/1"), "RANK not used: %s", out);
    free(out);
    snprintf(cmd, sizeof cmd,
             "OMPI_COMM_WORLD_RANK=4 SPARTAN_RANK=2 %s %s --set data.dir=%s "
             "--set train.out_dir=%s/b",
             tu_spartan(), base, e.data, e.dir);
    cr_assert_eq(tu_run(cmd, 60, &out), 0, "%s", out);
    cr_assert(strstr(out, "rank=2/1"), "SPARTAN_RANK must win: %s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "RANK=3 %s %s --rank 1 --set data.dir=%s --set train.out_dir=%s/c",
             tu_spartan(), base, e.data, e.dir);
    cr_assert_eq(tu_run(cmd, 60, &out), 0, "%s", out);
    cr_assert(strstr(out, "rank=1/1"), "--rank must win: %s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "PMI_RANK=x %s %s --set data.dir=%s --set train.out_dir=%s/d",
             tu_spartan(), base, e.data, e.dir);
    expect_fail(cmd, "PMI_RANK");
    snprintf(cmd, sizeof cmd,
             "%s %s --rank 2 --peers 127.0.0.1:1,127.0.0.1:2 --set data.dir=%s "
             "--set train.out_dir=%s/e",
             tu_spartan(), base, e.data, e.dir);
    expect_fail(cmd, "2 peers");
    env_close(&e);
}

Test(train, local_cluster_runs_peers_and_summarises_or_reports_a_failure) {
    env e;
    env_open(&e);
    char *out = NULL, cmd[4096];
    snprintf(cmd, sizeof cmd,
             "SPARTAN_BIN=%s scripts/local-cluster 2 configs/tiny.ini --runs %s --name "
             "ok " SMALL_ANY_THREADS
             " --set data.dir=%s --set train.max_iters=6 --set sparta.sync=true",
             tu_spartan(), e.dir, e.data);
    cr_assert_eq(tu_run(cmd, 90, &out), 0, "%s", out);
    cr_assert(strstr(out, "rank 0: exit 0 step 6") && strstr(out, "rank 1: exit 0 step 6"), "%s",
              out);
    cr_assert(strstr(out, "rounds 6"), "no completed rounds in the summary: %s", out);
    free(out);
    char path[700];
    snprintf(path, sizeof path, "%s/ok/rank1/ckpt_00000006.h5", e.dir);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "no checkpoint in runs/<name>/rank1");
    // the cores are divided among the peers: threads = cores / 2 (at least 1) each
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    char want[64];
    snprintf(want, sizeof want, " threads=%ld ", cores / 2 > 1 ? cores / 2 : 1);
    for (int r = 0; r < 2; r++) {
        char *log = NULL;
        size_t n = 0;
        snprintf(path, sizeof path, "%s/ok/rank%d/train.log", e.dir, r);
        cr_assert_eq(tu_read_file(path, &log, &n), 0, "no %s", path);
        cr_assert(strstr(log, want), "rank %d does not run%s: %s", r, want, log);
        free(log);
    }
    // a peer that fails (rank 1's data folder does not exist) stops the run with its log tail
    snprintf(cmd, sizeof cmd,
             "SPARTAN_BIN=%s scripts/local-cluster 2 configs/tiny.ini --runs %s --name bad " SMALL
             " --set data.dir=%s/missing --set train.max_iters=6",
             tu_spartan(), e.dir, e.dir);
    int rc = tu_run(cmd, 90, &out);
    cr_assert(rc != 0 && rc < 128, "rc %d: %s", rc, out);
    cr_assert(strstr(out, "log tail") && strstr(out, "missing"), "%s", out);
    free(out);
    env_close(&e);
}

// Peers of one host share its cores: train.threads = 0 divides them, and an explicit count that
// oversubscribes the host is warned about.
Test(train, peers_on_one_host_divide_the_cores_and_oversubscription_is_warned) {
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, 2), 0);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    char want[64], args[2048];
    snprintf(want, sizeof want, " threads=%ld ", cores / 2 > 1 ? cores / 2 : 1);
    snprintf(args, sizeof args,
             "configs/tiny.ini " SMALL_ANY_THREADS
             " --set train.threads=0 --set train.max_iters=3");
    int bad = tu_cluster_run(&c, args, 90);
    cr_assert_eq(bad, -1, "peer %d failed:\n%s", bad, tu_cluster_log(&c, bad < 0 ? 0 : bad));
    for (int r = 0; r < 2; r++) {
        char *log = tu_cluster_log(&c, r);
        cr_assert(strstr(log, want), "rank %d does not run%s:\n%s", r, want, log);
        cr_assert(!strstr(log, "threads on"), "rank %d warned:\n%s", r, log);
        free(log);
    }
    snprintf(args, sizeof args,
             "configs/tiny.ini " SMALL_ANY_THREADS
             " --set train.threads=%ld --set train.max_iters=3"
             " --overwrite",
             cores);
    bad = tu_cluster_run(&c, args, 90);
    cr_assert_eq(bad, -1, "peer %d failed:\n%s", bad, tu_cluster_log(&c, bad < 0 ? 0 : bad));
    char *log = tu_cluster_log(&c, 0);
    char warn[128];
    snprintf(warn, sizeof warn, "%ld threads on %ld cores", 2 * cores, cores);
    cr_assert(strstr(log, warn), "no oversubscription warning (%s):\n%s", warn, log);
    free(log);
    tu_cluster_close(&c);
}

// --resume auto takes the newest checkpoint that reads as a whole one: a truncated newest one is
// skipped with a warning that names it, and the run continues bit-exactly from the one before
// (the same parameters at step 24 as a run straight through). With none at all it starts afresh;
// with only unreadable ones it stops, naming the folder.
Test(train, resume_auto_skips_a_truncated_newest_checkpoint_and_names_it) {
    env e;
    env_open(&e);
    char *out = NULL, ck[700], extra[1024];
    int rc = train(&e, "--resume auto --set train.max_iters=24", &out); // nothing yet: afresh
    cr_assert(rc == 0 && strstr(out, "starting afresh"), "rc %d: %s", rc, out);
    free(out);
    char straight[700];
    snprintf(straight, sizeof straight, "%s/ckpt_00000024.h5", e.out);
    size_t na, nb;
    float *pa = load_params(straight, &na);
    char *keep = strdup(e.out);
    strcat(e.out, "2");
    rc = train(&e, "--set train.max_iters=16 --set train.ckpt_interval=8 --set train.keep_ckpts=0",
               &out);
    cr_assert_eq(rc, 0, "%s", out);
    free(out);
    snprintf(ck, sizeof ck, "%s/ckpt_00000016.h5", e.out);
    char *data;
    size_t n;
    cr_assert_eq(tu_read_file(ck, &data, &n), 0);
    tu_write_file(ck, data, n / 2); // the newest is cut in half
    free(data);
    snprintf(extra, sizeof extra, "--resume auto --set train.max_iters=24");
    rc = train(&e, extra, &out);
    cr_assert(rc == 0, "rc %d: %s", rc, out);
    cr_assert(strstr(out, "skipping") && strstr(out, "ckpt_00000016.h5") &&
                  strstr(out, "ckpt_00000008.h5"),
              "%s", out);
    free(out);
    char b[700];
    snprintf(b, sizeof b, "%s/ckpt_00000024.h5", e.out);
    float *pb = load_params(b, &nb);
    cr_assert(na == nb && !memcmp(pa, pb, na * sizeof(float)), "auto-resumed parameters differ");
    // every checkpoint unreadable: a clear stop
    for (int s = 8; s <= 24; s += 8) {
        snprintf(ck, sizeof ck, "%s/ckpt_%08d.h5", e.out, s);
        tu_write_file(ck, "not a checkpoint", 16);
    }
    rc = train(&e, "--resume auto --set train.max_iters=32", &out);
    cr_assert(rc != 0 && rc < 128 && strstr(out, "none of the") && strstr(out, e.out), "rc %d: %s",
              rc, out);
    free(out);
    free(pa);
    free(pb);
    free(keep);
    env_close(&e);
}

// A peer killed (SIGKILL) while it writes a checkpoint leaves the one before intact: the write
// goes to a temp file that is renamed only when whole. The test kills the trainer as soon as a
// temp file appears (a model of a few million parameters takes a while to write), then loads the
// previous checkpoint and resumes from it with --resume auto.
Test(train, sigkill_during_a_checkpoint_write_leaves_the_previous_one_intact) {
    env e;
    env_open(&e);
    char cmd[4096], log[700];
    snprintf(log, sizeof log, "%s/log.txt", e.dir);
    snprintf(cmd, sizeof cmd,
             "%s train configs/tiny.ini --set model.n_layer=4 --set model.n_embd=256 "
             "--set model.n_head=4 --set model.block_size=32 --set train.batch_size=2 "
             "--set train.eval_interval=0 --set train.threads=2 --set data.dir=%s "
             "--set train.out_dir=%s --set train.max_iters=1000000 --set train.ckpt_interval=2 "
             "--set train.keep_ckpts=0",
             tu_spartan(), e.data, e.out);
    pid_t pid = spawn(cmd, log);
    // wait for a temp file while at least one checkpoint is complete (bounded)
    char tmp[800] = "";
    for (int i = 0; i < 60000 && !tmp[0]; i++) {
        long newest = -1;
        if (ckdir_count(e.out, &newest) > 0)
            for (long s = newest + 2; s <= newest + 4 && !tmp[0]; s += 2) {
                snprintf(tmp, sizeof tmp, "%s/ckpt_%08ld.h5.tmp", e.out, s);
                if (access(tmp, F_OK) != 0) tmp[0] = 0;
            }
        if (!tmp[0]) usleep(500);
    }
    cr_assert(tmp[0], "no checkpoint was ever being written");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    long newest = -1;
    int n = ckdir_count(e.out, &newest);
    cr_assert_gt(n, 0);
    char prev[800];
    ckdir_name(prev, sizeof prev, e.out, newest);
    gpt_model *m;
    int64_t step = 0;
    cr_assert_eq(gpt_load(&m, prev, 1, 0, NULL, &step), ERR_OK, "%s: %s", prev, err_msg());
    cr_assert_eq(step, newest);
    gpt_destroy(m);
    char *out = NULL, again[4300];
    snprintf(again, sizeof again, "%s --resume auto --set train.max_iters=%ld", cmd, newest + 2);
    int rc = tu_run(again, 120, &out);
    cr_assert(rc == 0 && strstr(out, prev), "rc %d: %s", rc, out);
    free(out);
    env_close(&e);
}
