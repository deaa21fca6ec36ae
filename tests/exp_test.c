// exp_test.c: the experiment runner (experiments/run) end to end in --quick mode, its failure
// paths (a peer with a bad config value, a killed peer, an interrupted runner), the network
// namespaces and their rate limit (root only), and the correlation it records against a direct
// computation. Every run uses a temp folder and its own prepared data.
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/test_util.h"
#include "train/ckpt.h"
#include "train/gpt.h"

TestSuite(exp, .timeout = 60);

typedef struct {
    char *dir;
    char cmd[8000]; // tu_run adds its wrapper within 8192
} fixture;

static void fx_open(fixture *f) {
    f->dir = tu_data_tmpdir("exp");
    cr_assert(f->dir, "cannot prepare the test data");
}

static void fx_close(fixture *f) {
    tu_rm_rf(f->dir);
    free(f->dir);
}

// runner_cmd writes into f->cmd the runner command for the sparta_p005_async quick run into
// <dir>/<out>, followed by extra options. The shell execs it, so signals reach the runner.
static const char *runner_cmd(fixture *f, const char *out, const char *extra) {
    snprintf(f->cmd, sizeof f->cmd,
             "exec env SPARTAN_BIN=%s python3 experiments/run sparta_p005_async --quick --quiet "
             "--out %s/%s --set data.dir=%s/d %s",
             tu_spartan(), f->dir, out, f->dir, extra);
    return f->cmd;
}

static char *read_text(const char *dir, const char *name) {
    char path[4096], *data = NULL;
    size_t n;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return tu_read_file(path, &data, &n) == 0 ? data : NULL;
}

// sh_out runs cmd and returns its output (caller frees), failing the test if cmd fails.
static char *sh_out(const char *cmd) {
    char *out = NULL;
    int rc = tu_run(cmd, 30, &out);
    cr_assert_eq(rc, 0, "%s: %s", cmd, out ? out : "");
    return out;
}

// listing returns the files under dir (relative, sorted, one a line; caller frees), to four
// levels: <dir>/scratch/init/shared/ckpt_*.h5 is the deepest a run writes.
static char *listing(const char *dir) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cd %s && find . -maxdepth 4 -type f | cut -c3- | LC_ALL=C sort",
             dir);
    return sh_out(cmd);
}

// run_json prints the Python expression expr over m, the parsed <dir>/run.json with its objects
// as attributes (m.ranks[0].log.done.step), and returns the output (caller frees). The shell
// gets expr inside "...": no quotes, $ or backslash in it.
static char *run_json(const char *dir, const char *expr) {
    char cmd[2000];
    snprintf(cmd, sizeof cmd,
             "python3 -c \"import json, sys, types; m = json.load(open(sys.argv[1]), "
             "object_hook=lambda d: types.SimpleNamespace(**d)); print(%s)\" %s/run.json",
             expr, dir);
    return sh_out(cmd);
}

// split_csv splits line (modified in place) at commas into at most max fields, keeping empty
// fields (strtok would merge them).
static int split_csv(char *line, char **fields, int max) {
    line[strcspn(line, "\r\n")] = 0;
    int n = 0;
    for (char *p = line; n < max;) {
        fields[n++] = p;
        char *c = strchr(p, ',');
        if (!c) break;
        *c = 0;
        p = c + 1;
    }
    return n;
}

static double csv_field(const char *csv, int row, const char *col) {
    char *copy = strdup(csv), *lines[64], *save = NULL;
    int n = 0;
    for (char *l = strtok_r(copy, "\n", &save); l && n < 64; l = strtok_r(NULL, "\n", &save))
        lines[n++] = l;
    cr_assert(row + 1 < n, "no row %d", row);
    char *head[64], *vals[64];
    int nh = split_csv(lines[0], head, 64), nv = split_csv(lines[row + 1], vals, 64);
    cr_assert_eq(nh, nv);
    double v = NAN;
    for (int i = 0; i < nh; i++)
        if (!strcmp(head[i], col)) v = strtod(vals[i], NULL);
    free(copy);
    return v;
}

Test(exp, quick_run_writes_every_column_of_every_recorded_step, .timeout = 120) {
    fixture f;
    fx_open(&f);
    char *out = NULL;
    int rc = tu_run(runner_cmd(&f, "q", "--netns off"), 110, &out);
    cr_assert_eq(rc, 0, "%s\n%s", f.cmd, out);
    free(out);
    char dir[600];
    snprintf(dir, sizeof dir, "%s/q", f.dir);
    char *csv = read_text(dir, "metrics.csv");
    cr_assert(csv, "no metrics.csv");
    static const char *want[] = {"step",
                                 "wall_s",
                                 "tokens_per_peer",
                                 "val_loss_mean_model",
                                 "val_loss_peers",
                                 "corr",
                                 "loss_peers",
                                 "bytes_sent_per_peer",
                                 "bytes_recv_per_peer",
                                 "stale_mean",
                                 "rounds_done",
                                 "rounds_late",
                                 "rounds_dropped",
                                 "loss_r0",
                                 "val_loss_r0",
                                 "bytes_sent_r0",
                                 "elapsed_s_r0",
                                 "loss_r1",
                                 "val_loss_r1",
                                 "bytes_sent_r1",
                                 "elapsed_s_r1"};
    const int nw = (int)(sizeof want / sizeof want[0]);
    char *copy = strdup(csv), *save = NULL, *fields[64];
    char *line = strtok_r(copy, "\n", &save);
    int nf = split_csv(line, fields, 64);
    cr_assert_eq(nf, nw, "header has %d columns, want %d", nf, nw);
    for (int i = 0; i < nw; i++)
        cr_assert_str_eq(fields[i], want[i], "column %d", i);
    // steps 0, 10, ..., 50: every cell filled (step 0 has no train loss yet)
    int rows = 0;
    for (line = strtok_r(NULL, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        nf = split_csv(line, fields, 64);
        cr_assert_eq(nf, nw, "row %d: %d fields", rows, nf);
        cr_assert_eq(atoi(fields[0]), rows * 10);
        for (int i = 0; i < nw; i++) {
            int loss_col = !strncmp(want[i], "loss_", 5);
            if (rows == 0 && loss_col) continue;
            cr_assert(fields[i][0], "row %d: column %s is empty", rows, want[i]);
        }
        rows++;
    }
    cr_assert_eq(rows, 6);
    free(copy);
    // learning happened, peers exchanged, and the peers of one init start fully correlated
    cr_assert_float_eq(csv_field(csv, 0, "corr"), 1.0, 1e-9);
    double c5 = csv_field(csv, 5, "corr");
    cr_assert(c5 > 0.5 && c5 < 1.0, "corr %g", c5);
    cr_assert_lt(csv_field(csv, 5, "val_loss_mean_model"),
                 csv_field(csv, 0, "val_loss_mean_model"));
    cr_assert_gt(csv_field(csv, 5, "bytes_sent_r1"), csv_field(csv, 1, "bytes_sent_r1"));
    cr_assert_gt(csv_field(csv, 1, "bytes_sent_r1"), 0);
    free(csv);
    // the run folder keeps only what the report reads: no logs, config copies or checkpoints
    char *files = listing(dir);
    cr_assert_str_eq(files, "config.ini\nmetrics.csv\nrun.json\n");
    free(files);
    // one config, the peers' ([experiment] is not for peers: its keys are in run.json)
    char *meta = read_text(dir, "run.json"), *conf = read_text(dir, "config.ini");
    cr_assert(meta && strstr(meta, "\"git_commit\"") && strstr(meta, "\"seed\": 1337"), "%s", meta);
    cr_assert(conf && strstr(conf, "[sparta]") && !strstr(conf, "[experiment]"), "%s", conf);
    cr_assert(strstr(conf, "ckpt_interval = 10"), "%s", conf);
    // run.json: what ran, how it ended, and the peers' logs in summary
    char *got = run_json(dir, "m.status, m.exit_codes, m.experiment.label, m.command.split()[:2], "
                              "m.started <= m.finished, m.total_wall_s > 0");
    cr_assert_str_eq(got, "ok [0, 0] SPARTA p=0.005 async ['experiments/run', "
                          "'sparta_p005_async'] True True\n");
    free(got);
    got = run_json(dir, "[r.log.last_step.step for r in m.ranks], "
                        "[r.log.done.step for r in m.ranks], m.ranks[1].argv[1]");
    cr_assert_str_eq(got, "['50/50', '50/50'] [50, 50] train\n");
    free(got);
    free(meta), free(conf);
    fx_close(&f);
}

Test(exp, recorded_corr_and_mean_model_loss_match_the_tools, .timeout = 120) {
    fixture f;
    fx_open(&f);
    char *out = NULL;
    cr_assert_eq(tu_run(runner_cmd(&f, "k", "--netns off --keep"), 110, &out), 0, "%s", out);
    free(out);
    char dir[600];
    snprintf(dir, sizeof dir, "%s/k", f.dir);
    char *csv = read_text(dir, "metrics.csv");
    cr_assert(csv);
    // --keep keeps the scratch folder whole: per peer its log, the config copy and metrics.csv
    // that spartan writes, and every checkpoint; the step-0 state too
    char *files = listing(dir);
    const char *top = "config.ini\nmetrics.csv\nrun.json\nscratch/";
    cr_assert(!strncmp(files, top, strlen(top)), "%s", files);
    static const char *kept[] = {"scratch/init/shared/ckpt_00000000.h5\n",
                                 "scratch/rank0/ckpt_00000050.h5\n",
                                 "scratch/rank1/ckpt_00000010.h5\n",
                                 "scratch/rank0/config.ini\n",
                                 "scratch/rank1/metrics.csv\n",
                                 "scratch/rank0/train.log\n",
                                 "scratch/rank1/train.log\n"};
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
        cr_assert(strstr(files, kept[i]), "no %s in\n%s", kept[i], files);
    free(files);
    char *log = read_text(dir, "scratch/rank1/train.log");
    cr_assert(log && strstr(log, "step=50/50"), "%s", log);
    free(log);
    // step 30 is row 3: recompute it from the kept checkpoints with the tools themselves, with
    // one thread as the runner does (the loss sums in another order on two)
    snprintf(f.cmd, sizeof f.cmd,
             "%s corr --threads 1 %s/scratch/rank0/ckpt_00000030.h5 "
             "%s/scratch/rank1/ckpt_00000030.h5 | tail -1 && "
             "%s avg %s/m.h5 %s/scratch/rank0/ckpt_00000030.h5 %s/scratch/rank1/ckpt_00000030.h5 "
             ">/dev/null && "
             "%s eval %s/m.h5 --threads 1 --data %s/d/val.bin --max-windows 32 | tail -1",
             tu_spartan(), dir, dir, tu_spartan(), dir, dir, dir, tu_spartan(), dir, f.dir);
    cr_assert_eq(tu_run(f.cmd, 60, &out), 0, "%s", out);
    double corr = NAN, loss = NAN;
    cr_assert_eq(sscanf(out, "corr %lf\nloss %lf", &corr, &loss), 2, "%s", out);
    cr_assert_float_eq(csv_field(csv, 3, "corr"), corr, 1e-9);
    cr_assert_float_eq(csv_field(csv, 3, "val_loss_mean_model"), loss, 1e-9);
    free(out);
    free(csv);
    fx_close(&f);
}

// write_ckpt writes a 1-layer, 8-wide model whose parameters are v(n) as a checkpoint.
static void write_ckpt(const char *path, const float *v, size_t *n_out) {
    cfg_model mc = {.n_layer = 1, .n_head = 2, .n_embd = 8, .block_size = 4, .vocab_size = 5};
    gpt_model *m = NULL;
    cr_assert_eq(gpt_create(&m, &mc, 1, 0), 0);
    size_t n = gpt_n_params(m);
    if (v) memcpy(gpt_params(m), v, n * sizeof(float));
    ckpt_writer *w = NULL;
    cr_assert_eq(ckpt_writer_open(&w, path), 0);
    cr_assert_eq(gpt_write_config(m, w), 0);
    cr_assert_eq(gpt_write_slab(m, w, "model/", gpt_params(m)), 0);
    cr_assert_eq(ckpt_writer_commit(w), 0);
    *n_out = n;
    gpt_destroy(m);
}

Test(exp, corr_matches_a_direct_computation_on_known_vectors) {
    char *dir = tu_tmpdir("expcorr"), pa[1024], pb[1024], *out = NULL;
    size_t n;
    snprintf(pa, sizeof pa, "%s/a.h5", dir);
    write_ckpt(pa, NULL, &n); // learn n
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    // a_i = sin(i), b_i = 0.5 a_i + cos(3 i): a known, partly correlated pair
    for (size_t i = 0; i < n; i++) {
        a[i] = (float)sin((double)i);
        b[i] = 0.5f * a[i] + (float)cos(3.0 * (double)i);
    }
    write_ckpt(pa, a, &n);
    snprintf(pb, sizeof pb, "%s/b.h5", dir);
    write_ckpt(pb, b, &n);
    double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
    for (size_t i = 0; i < n; i++)
        sa += a[i], sb += b[i];
    for (size_t i = 0; i < n; i++) {
        double da = a[i] - sa / n, db = b[i] - sb / n;
        saa += da * da, sbb += db * db, sab += da * db;
    }
    double want = sab / sqrt(saa * sbb);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s corr %s %s", tu_spartan(), pa, pb);
    cr_assert_eq(tu_run(cmd, 30, &out), 0, "%s", out);
    char *line = strstr(out, "\ncorr ");
    cr_assert(line, "%s", out);
    double got = strtod(line + 6, NULL);
    cr_assert(want > 0.3 && want < 0.9, "the pair should be partly correlated: %g", want);
    cr_assert_float_eq(got, want, 1e-6, "spartan corr %.9f, direct %.9f", got, want);
    free(out);
    free(a), free(b);
    tu_rm_rf(dir);
    free(dir);
}

Test(exp, peer_with_a_bad_config_value_fails_the_run_with_its_log_tail, .timeout = 120) {
    fixture f;
    fx_open(&f);
    char *out = NULL;
    int rc =
        tu_run(runner_cmd(&f, "bad", "--netns off --set-rank 1 train.batch_size=0"), 110, &out);
    cr_assert_neq(rc, 0, "%s", out);
    cr_assert(strstr(out, "rank 1 exited with status 2"), "%s", out);
    cr_assert(strstr(out, "log tail") && strstr(out, "train.batch_size"), "%s", out);
    free(out);
    // run.json says how it ended; the checkpoints are gone, the logs stay to show why
    char dir[600];
    snprintf(dir, sizeof dir, "%s/bad", f.dir);
    char *got = run_json(dir, "m.status, m.exit_codes[1]");
    cr_assert_str_eq(got, "failed 2\n");
    free(got);
    got = run_json(dir, "m.error");
    cr_assert(strstr(got, "rank 1 exited with status 2") && strstr(got, "train.batch_size"), "%s",
              got);
    free(got);
    char *files = listing(dir);
    const char *top = "config.ini\nrun.json\nscratch/"; // no metrics.csv: nothing to report
    cr_assert(!strncmp(files, top, strlen(top)), "%s", files);
    cr_assert(strstr(files, "scratch/rank1/train.log\n") && !strstr(files, ".h5"), "%s", files);
    free(files);
    fx_close(&f);
}

// start_bg starts `sh -c cmd` in the background with its output in log; returns its pid.
static pid_t start_bg(const char *cmd, const char *log) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        FILE *fp = freopen(log, "w", stdout);
        if (!fp || dup2(1, 2) < 0) _exit(127);
        setpgid(0, 0);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

// wait_status waits at most timeout_s for pid; returns its exit code, 128+signal, or -1.
static int wait_status(pid_t pid, int timeout_s) {
    for (int i = 0; i < timeout_s * 20; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(50000);
    }
    kill(-pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

// wait_running waits until <dir>/scratch/rank1/metrics.csv has a row (training is under way)
// and returns the peers' pids from run.json.
static void wait_running(const char *dir, int *pids, int n, int timeout_s) {
    char path[1024];
    snprintf(path, sizeof path, "%s/scratch/rank1/metrics.csv", dir);
    for (int i = 0; i < timeout_s * 20; i++) {
        char *m = NULL;
        size_t len;
        int ok = tu_read_file(path, &m, &len) == 0 && strchr(m, '\n') &&
                 strchr(strchr(m, '\n') + 1, '\n');
        free(m);
        char *meta = ok ? read_text(dir, "run.json") : NULL;
        char *p = meta ? strstr(meta, "\"pids\": [") : NULL;
        if (p) {
            p += 9;
            for (int r = 0; r < n; r++) {
                pids[r] = (int)strtol(p, &p, 10);
                p += strspn(p, ", \n");
            }
            free(meta);
            return;
        }
        free(meta);
        usleep(50000);
    }
    cr_assert_fail("the peers did not start training within %ds", timeout_s);
}

static int netns_left(const char *prefix) {
    char cmd[256], *out = NULL;
    snprintf(cmd, sizeof cmd, "ip netns list | grep -c \"^%s-\"", prefix);
    tu_run(cmd, 10, &out);
    int n = atoi(out);
    free(out);
    return n;
}

static void netns_prefix(const char *dir, char *prefix, size_t n) {
    char *meta = read_text(dir, "run.json");
    char *p = meta ? strstr(meta, "\"netns_prefix\": \"") : NULL;
    cr_assert(p, "no netns_prefix in run.json: %s", meta);
    p += 17;
    snprintf(prefix, n, "%.*s", (int)strcspn(p, "\""), p);
    free(meta);
}

// netns_ok reports whether this machine lets us build the runner's network: root, iproute2,
// namespaces, veth pairs and tbf (a container can refuse any of them); why gets the reason.
static int netns_ok(char *why, size_t n) {
    char *out = NULL;
    int rc = tu_run("python3 experiments/netns.py available", 30, &out);
    snprintf(why, n, "network namespaces: %s", out ? out : "?");
    why[strcspn(why, "\n")] = 0;
    free(out);
    return rc == 0;
}

#define SKIP_WITHOUT_NETNS()                                        \
    do {                                                            \
        char why_[512];                                             \
        if (!netns_ok(why_, sizeof why_)) cr_skip_test("%s", why_); \
    } while (0)

// A long run (100000 steps) is started, a peer is killed once training runs, and the runner
// must stop the others, print that peer's log tail and exit 1; with root it runs in network
// namespaces, which must be gone afterwards.
Test(exp, killed_peer_fails_the_run_and_namespaces_are_removed, .timeout = 120) {
    fixture f;
    fx_open(&f);
    char why[512];
    int root = netns_ok(why, sizeof why); // "root": namespaces can be built
    char dir[600], log[1024], extra[256];
    snprintf(dir, sizeof dir, "%s/kill", f.dir);
    snprintf(log, sizeof log, "%s/runner.log", f.dir);
    snprintf(extra, sizeof extra, "--steps 100000 --netns %s", root ? "on" : "off");
    pid_t runner = start_bg(runner_cmd(&f, "kill", extra), log);
    int pids[2];
    wait_running(dir, pids, 2, 60);
    char prefix[64] = "";
    if (root) {
        netns_prefix(dir, prefix, sizeof prefix);
        cr_assert_eq(netns_left(prefix), 3, "hub + 2 peer namespaces while running");
    }
    cr_assert_eq(kill(pids[1], SIGKILL), 0);
    int rc = wait_status(runner, 60);
    char *out = read_text(f.dir, "runner.log");
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert(strstr(out, "rank 1 exited with status -9") && strstr(out, "log tail"), "%s", out);
    cr_assert(strstr(out, "I train step="), "the tail shows the peer's own log lines:\n%s", out);
    if (root) cr_assert_eq(netns_left(prefix), 0, "namespaces left behind");
    free(out);
    fx_close(&f);
}

Test(exp, interrupted_runner_stops_peers_and_removes_namespaces, .timeout = 120) {
    SKIP_WITHOUT_NETNS();
    fixture f;
    fx_open(&f);
    char dir[600], log[1024];
    snprintf(dir, sizeof dir, "%s/int", f.dir);
    snprintf(log, sizeof log, "%s/runner.log", f.dir);
    pid_t runner = start_bg(runner_cmd(&f, "int", "--steps 100000 --netns on"), log);
    int pids[2];
    wait_running(dir, pids, 2, 60);
    char prefix[64];
    netns_prefix(dir, prefix, sizeof prefix);
    cr_assert_eq(kill(runner, SIGTERM), 0);
    int rc = wait_status(runner, 60);
    char *out = read_text(f.dir, "runner.log");
    cr_assert_eq(rc, 130, "%s", out);
    cr_assert_eq(netns_left(prefix), 0, "namespaces left behind");
    for (int r = 0; r < 2; r++)
        cr_assert(kill(pids[r], 0) != 0, "peer %d still runs", r);
    free(out);
    fx_close(&f);
}

Test(exp, quick_run_in_rate_limited_namespaces, .timeout = 120) {
    SKIP_WITHOUT_NETNS();
    fixture f;
    fx_open(&f);
    char *out = NULL;
    int rc = tu_run(runner_cmd(&f, "ns", "--netns on --rate-mbit 50"), 110, &out);
    cr_assert_eq(rc, 0, "%s", out);
    free(out);
    char dir[600], prefix[64];
    snprintf(dir, sizeof dir, "%s/ns", f.dir);
    char *meta = read_text(dir, "run.json"), *conf = read_text(dir, "config.ini");
    cr_assert(strstr(meta, "\"mode\": \"netns\"") && strstr(meta, "\"10.213.0.2:"), "%s", meta);
    // tc limits the rate here, so the transport's own emulation stays off
    cr_assert(!strstr(conf, "rate_mbit"), "%s", conf);
    netns_prefix(dir, prefix, sizeof prefix);
    cr_assert_eq(netns_left(prefix), 0);
    free(meta), free(conf);
    fx_close(&f);
}

Test(exp, rate_limiter_keeps_throughput_within_10_percent, .timeout = 60) {
    SKIP_WITHOUT_NETNS();
    char *out = NULL;
    // 3 MB at 20 Mbit/s: about 1.2 s through tbf between two namespaces
    int rc = tu_run("python3 experiments/netns.py selftest --rate-mbit 20 --mbytes 3", 50, &out);
    cr_assert_eq(rc, 0, "%s", out);
    double mbit = NAN;
    int left = -1;
    char *p = strstr(out, "throughput_mbit");
    cr_assert(p && sscanf(p, "throughput_mbit %lf", &mbit) == 1, "%s", out);
    p = strstr(out, "left_after_close");
    cr_assert(p && sscanf(p, "left_after_close %d", &left) == 1, "%s", out);
    cr_assert(fabs(mbit / 20.0 - 1.0) < 0.10, "measured %.2f Mbit/s for a 20 Mbit/s limit", mbit);
    cr_assert_eq(left, 0);
    free(out);
}

Test(exp, stale_namespaces_of_a_dead_runner_are_swept) {
    SKIP_WITHOUT_NETNS();
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0); // its pid now names no process
    char cmd[512], *out = NULL, prefix[64];
    snprintf(prefix, sizeof prefix, "spx%d", (int)dead);
    snprintf(cmd, sizeof cmd, "ip netns add %s-h && ip netns add %s-0", prefix, prefix);
    cr_assert_eq(tu_run(cmd, 10, &out), 0, "%s", out);
    free(out);
    cr_assert_eq(netns_left(prefix), 2);
    cr_assert_eq(tu_run("python3 experiments/netns.py sweep", 30, &out), 0, "%s", out);
    cr_assert(strstr(out, prefix), "%s", out);
    free(out);
    cr_assert_eq(netns_left(prefix), 0);
}
