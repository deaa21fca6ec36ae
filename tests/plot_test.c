// plot_test.c: `spartan plot`, run as a user runs it. PNGs come from the metrics.csv of real
// training runs (one peer, and two SPARTA peers for the bytes panel) and from files in the same
// format written here (no val loss, zero counters, a resumed run's repeated steps). Each PNG
// must start with the PNG signature and be as wide and as tall as its panels. Bad inputs must
// fail naming the file and line; a missing or failing gnuplot must be reported with the install
// step or gnuplot's own words. Only the tests that need a real gnuplot skip without one.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/test_util.h"

TestSuite(plot, .timeout = 120);

#define SMALL                                                                            \
    "configs/tiny.ini --set model.n_layer=2 --set model.n_embd=32 --set model.n_head=2 " \
    "--set model.block_size=32 --set train.batch_size=8 --set train.threads=1 "          \
    "--set train.eval_iters=2"

// The header of earlier builds of spartan train (every module's counters in fixed columns); such
// files must still plot. Rows below follow it field for field.
#define HEADER                                                                                   \
    "step,loss,val_loss,lr,grad_norm,tokens_per_s,ms_per_step,elapsed_s,bytes_sent,bytes_recv,"  \
    "bytes_sent_step,bytes_recv_step,rounds,rounds_late,rounds_dropped,msgs_dropped,stale_mean," \
    "stale_max,xchg_ms\n"
// What spartan train writes now for a SPARTA run (train/cmd/train_cmd.c): the common columns,
// then SPARTA's named metrics.
#define HEADER_NOW                                                                                \
    "step,loss,val_loss,lr,grad_norm,tokens_per_s,ms_per_step,elapsed_s,bytes_sent,bytes_recv,"   \
    "bytes_sent_step,bytes_recv_step,msgs_dropped,sparta_rounds_done,sparta_rounds_late,"         \
    "sparta_rounds_dropped,sparta_stale_mean,sparta_stale_max,sparta_xchg_ms,sparta_round_peers," \
    "sparta_nonfinite,net_offences,net_expelled,net_suspected,net_timed_out,net_links_up,"        \
    "net_links_down\n"

static void need_gnuplot(void) {
    if (tu_run("command -v gnuplot", 10, NULL) != 0)
        cr_skip_test("gnuplot is not installed (scripts/install-deps test installs it)");
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

// png_size checks that path is a PNG of plausible size and returns its width and height.
static void png_size(const char *path, unsigned *w, unsigned *h) {
    char *data;
    size_t n;
    cr_assert_eq(tu_read_file(path, &data, &n), 0, "no PNG at %s", path);
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    cr_assert(n > 24 && memcmp(data, sig, 8) == 0, "%s does not start with the PNG signature",
              path);
    cr_assert(memcmp(data + 12, "IHDR", 4) == 0, "%s: no IHDR chunk first", path);
    const unsigned char *u = (const unsigned char *)data;
    *w = (unsigned)u[16] << 24 | (unsigned)u[17] << 16 | (unsigned)u[18] << 8 | u[19];
    *h = (unsigned)u[20] << 24 | (unsigned)u[21] << 16 | (unsigned)u[22] << 8 | u[23];
    cr_assert(n > 10000 && n < 10000000, "%s: implausible size %zu bytes", path, n);
    cr_assert(*w >= 400 && *w <= 4000 && *h >= 200 && *h <= 8000, "%s: %ux%u", path, *w, *h);
    free(data);
}

// plot runs `spartan plot ARGS` with TMPDIR=<dir>/tmp (to see that no script is left behind)
// and returns its exit status; *out gets stdout and stderr.
static int plot(const char *dir, const char *args, char **out) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/tmp && TMPDIR=%s/tmp %s plot %s", dir, dir, tu_spartan(),
             args);
    return tu_run(cmd, 60, out);
}

static void assert_no_leftovers(const char *dir, const char *png) {
    char path[1024], *out = NULL;
    snprintf(path, sizeof path, "%s.tmp", png);
    cr_assert(!exists(path), "%s left behind", path);
    snprintf(path, sizeof path, "ls -A %s/tmp", dir);
    cr_assert_eq(tu_run(path, 10, &out), 0);
    cr_assert_str_eq(out, "", "temporary files left in TMPDIR: %s", out);
    free(out);
}

// write_csv writes text to <dir>/<name>/metrics.csv.
static void write_csv(const char *dir, const char *name, const char *text) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    mkdir(path, 0777);
    snprintf(path, sizeof path, "%s/%s/metrics.csv", dir, name);
    cr_assert_eq(tu_write_file(path, text, strlen(text)), 0);
}

Test(plot, single_peer_run_gives_a_png_with_loss_and_val_loss_and_no_bytes_panel) {
    need_gnuplot();
    char *dir = tu_data_tmpdir("plot");
    cr_assert(dir, "cannot prepare the test data");
    char cmd[4096], path[1024], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "%s train " SMALL " --set train.max_iters=12 --set train.eval_interval=4 "
             "--set data.dir=%s/d --set train.out_dir=%s/run",
             tu_spartan(), dir, dir);
    cr_assert_eq(tu_run(cmd, 90, &out), 0, "train failed: %s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s/run", dir);
    cr_assert_eq(plot(dir, cmd, &out), 0, "%s", out);
    snprintf(path, sizeof path, "%s/run/metrics.png", dir);
    cr_assert(strstr(out, path), "the summary names the default output: %s", out);
    cr_assert(strstr(out, "12 steps (1..12)"), "%s", out);
    cr_assert(strstr(out, "loss (train, val)") && strstr(out, "tokens/s") &&
                  strstr(out, "learning rate") && strstr(out, "gradient norm"),
              "%s", out);
    cr_assert(!strstr(out, "MB sent"), "a single peer sends nothing, so no bytes panel: %s", out);
    cr_assert(!strstr(out, "SPARTA rounds"), "no SPARTA, so no rounds panel: %s", out);
    free(out);
    unsigned w, h;
    png_size(path, &w, &h);
    cr_assert_eq(w, 900);
    assert_no_leftovers(dir, path);
    // -o puts it elsewhere; the default file is not touched.
    snprintf(cmd, sizeof cmd, "%s/run -o %s/other.png", dir, dir);
    cr_assert_eq(plot(dir, cmd, &out), 0, "%s", out);
    free(out);
    snprintf(path, sizeof path, "%s/other.png", dir);
    unsigned w2, h2;
    png_size(path, &w2, &h2);
    cr_assert(w2 == w && h2 == h, "same run, same size: %ux%u vs %ux%u", w, h, w2, h2);
    tu_rm_rf(dir);
    free(dir);
}

// zero_bytes rewrites a real metrics.csv with its byte counters (fields 9 to 12) set to 0.
static char *zero_bytes(const char *text) {
    char *z = malloc(strlen(text) + 1), *o = z;
    int field = 1, line = 1;
    for (const char *p = text; *p; p++) {
        if (*p == '\n') {
            line++;
            field = 1;
        } else if (*p == ',') {
            field++;
        } else if (line > 1 && field >= 9 && field <= 12) { // a digit of a byte counter
            if (p[-1] == ',') *o++ = '0';
            continue;
        }
        *o++ = *p;
    }
    *o = 0;
    return z;
}

Test(plot, two_peer_run_gets_a_bytes_panel_that_zero_counters_do_not) {
    need_gnuplot();
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, 2), 0, "cannot set up the cluster");
    int bad = tu_cluster_run(&c,
                             SMALL " --set train.max_iters=10 --set train.eval_interval=0 "
                                   "--set sparta.p=0.01 --set sparta.sync=true "
                                   "--set sparta.timeout_ms=20000",
                             120);
    if (bad >= 0) cr_assert_fail("peer %d failed:\n%s", bad, tu_cluster_log(&c, bad));
    char args[2048], path[1024], *out = NULL, *csv;
    snprintf(args, sizeof args, "%s/rank0", c.dir);
    cr_assert_eq(plot(c.dir, args, &out), 0, "%s", out);
    cr_assert(strstr(out, "10 steps (1..10)"), "%s", out);
    cr_assert(strstr(out, "MB sent and received (sent, received)"), "%s", out);
    cr_assert(strstr(out, "loss (train, val)"), "eval at the end only, one val point: %s", out);
    cr_assert(!strstr(out, "SPARTA rounds"), "sync rounds all complete: no rounds panel: %s", out);
    free(out);
    unsigned w, h, wz, hz;
    snprintf(path, sizeof path, "%s/rank0/metrics.png", c.dir);
    png_size(path, &w, &h);
    assert_no_leftovers(c.dir, path);

    snprintf(path, sizeof path, "%s/rank0/metrics.csv", c.dir);
    cr_assert_eq(tu_read_file(path, &csv, NULL), 0);
    cr_assert(strstr(csv, HEADER_NOW) == csv, "the header changed; update HEADER_NOW: %.1000s",
              csv);
    char *z = zero_bytes(csv);
    write_csv(c.dir, "zero", z);
    snprintf(args, sizeof args, "%s/zero", c.dir);
    cr_assert_eq(plot(c.dir, args, &out), 0, "%s", out);
    cr_assert(!strstr(out, "MB sent"), "zero counters: no bytes panel: %s", out);
    free(out);
    snprintf(path, sizeof path, "%s/zero/metrics.png", c.dir);
    png_size(path, &wz, &hz);
    cr_assert(wz == w && hz < h, "one panel fewer: %ux%u vs %ux%u", wz, hz, w, h);
    free(z);
    free(csv);
    tu_cluster_close(&c);
}

Test(plot, files_in_the_train_format_plot_what_they_hold) {
    need_gnuplot();
    char *dir = tu_tmpdir("plot");
    char args[1024], *out = NULL;
    // No val loss at all, a resumed run (steps 4..6 again), then a half-written last line.
    write_csv(dir, "resumed",
              HEADER "1,4.1,,1e-4,1.5,1000,10,0.01,0,0,0,0,0,0,0,0,0,0,0\n"
                     "2,4.0,,2e-4,1.4,1100,10,0.02,0,0,0,0,0,0,0,0,0,0,0\n"
                     "3,3.9,,3e-4,1.3,1200,10,0.03,0,0,0,0,0,0,0,0,0,0,0\n"
                     "4,3.8,,4e-4,1.2,1300,10,0.04,0,0,0,0,0,0,0,0,0,0,0\n"
                     "5,3.7,,5e-4,1.1,1400,10,0.05,0,0,0,0,0,0,0,0,0,0,0\n"
                     "4,3.85,,4e-4,1.2,1300,10,0.04,0,0,0,0,0,0,0,0,0,0,0\n"
                     "5,3.75,,5e-4,1.1,1400,10,0.05,0,0,0,0,0,0,0,0,0,0,0\n"
                     "6,3.65,,6e-4,1.0,1500,10,0.06,0,0,0,0,0,0,0,0,0,0,0\n"
                     "7,3.6,,7e");
    snprintf(args, sizeof args, "%s/resumed", dir);
    cr_assert_eq(plot(dir, args, &out), 0, "%s", out);
    cr_assert(strstr(out, "6 steps (1..6)"), "repeated steps replace the old ones: %s", out);
    cr_assert(strstr(out, "panels: loss (train), tokens/s"), "%s", out);
    free(out);
    // The layout of now, with late and dropped SPARTA rounds: the rounds panel.
    write_csv(
        dir, "late",
        HEADER_NOW
        "1,4.1,,1e-4,1.5,1000,10,0.01,100,100,100,100,0,0,1,0,1.000,1,2.000,2,0,0,0,0,0,1,0\n"
        "2,4.0,,2e-4,1.4,1100,10,0.02,200,200,100,100,0,1,1,0,1.500,2,2.000,2,0,0,0,0,0,1,0\n"
        "3,3.9,,3e-4,1.3,1200,10,0.03,300,300,100,100,0,2,1,1,1.500,2,2.000,2,0,0,0,0,0,1,0\n");
    snprintf(args, sizeof args, "%s/late", dir);
    cr_assert_eq(plot(dir, args, &out), 0, "%s", out);
    cr_assert(strstr(out, "SPARTA rounds late and dropped (late, dropped)"), "%s", out);
    free(out);
    // Only the columns that exist: step and loss (older or hand-made files).
    write_csv(dir, "lossonly", "step,loss\n1,3\n2,2.5\n3,2.2\n");
    snprintf(args, sizeof args, "%s/lossonly -o %s/lossonly.png", dir, dir);
    cr_assert_eq(plot(dir, args, &out), 0, "%s", out);
    cr_assert(strstr(out, "panels: loss (train)\n"), "%s", out);
    free(out);
    unsigned w, h, w1, h1;
    snprintf(args, sizeof args, "%s/resumed/metrics.png", dir);
    png_size(args, &w, &h);
    snprintf(args, sizeof args, "%s/lossonly.png", dir);
    png_size(args, &w1, &h1);
    cr_assert(h1 < h, "one panel is shorter than four: %u vs %u", h1, h);
    tu_rm_rf(dir);
    free(dir);
}

Test(plot, bad_inputs_fail_naming_the_file_and_line) {
    char *dir = tu_tmpdir("plot");
    char args[1024], path[1024], *out = NULL;
    struct {
        const char *name, *csv; // csv NULL: the folder has no metrics.csv
        const char *want[2];
    } cases[] = {
        {"nometrics", NULL, {"nometrics/metrics.csv", "spartan train writes it"}},
        {"empty", "", {"empty/metrics.csv", "is empty"}},
        {"header", HEADER, {"header/metrics.csv", "no rows"}},
        {"short",
         HEADER "1,4.1,,1e-4,1.5,1000,10,0.01,0,0,0,0,0,0,0,0,0,0,0\n2,4.0,,2e-4\n",
         {"short/metrics.csv:3:", "4 fields, but the header has 19"}},
        {"nan", "step,loss\n1,3\n2,abc\n", {"nan/metrics.csv:3:", "loss = 'abc' is not a number"}},
        {"step", "step,loss\n1,3\n2.5,2\n", {"step/metrics.csv:3:", "step '2.5'"}},
        {"blank", "step,loss\n1,3\n\n2,2\n", {"blank/metrics.csv:3:", "empty line"}},
        {"nostep", "loss,step\n3,1\n", {"nostep/metrics.csv:1:", "not 'step'"}},
        {"noname", "step,,loss\n1,2,3\n", {"noname/metrics.csv:1:", "column 2 has no name"}},
        {"nothing", "step,other\n1,3\n", {"nothing/metrics.csv", "no values"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, cases[i].name);
        mkdir(path, 0777);
        if (cases[i].csv) write_csv(dir, cases[i].name, cases[i].csv);
        snprintf(args, sizeof args, "%s/%s", dir, cases[i].name);
        int rc = plot(dir, args, &out);
        cr_assert_eq(rc, 1, "case %s: rc %d: %s", cases[i].name, rc, out);
        for (int k = 0; k < 2; k++)
            cr_assert(strstr(out, cases[i].want[k]), "case %s: want '%s' in: %s", cases[i].name,
                      cases[i].want[k], out);
        snprintf(path, sizeof path, "%s/%s/metrics.png", dir, cases[i].name);
        cr_assert(!exists(path), "case %s: a PNG despite the error", cases[i].name);
        free(out);
    }
    // A folder that does not exist, and a file where the folder should be.
    snprintf(args, sizeof args, "%s/missing", dir);
    cr_assert_eq(plot(dir, args, &out), 1, "%s", out);
    cr_assert(strstr(out, "run folder") && strstr(out, "missing") && strstr(out, "No such file"),
              "%s", out);
    free(out);
    snprintf(args, sizeof args, "%s/nan/metrics.csv", dir);
    cr_assert_eq(plot(dir, args, &out), 1, "%s", out);
    cr_assert(strstr(out, "is not a folder"), "%s", out);
    free(out);
    // An output that cannot be written is named before gnuplot runs.
    write_csv(dir, "good", "step,loss\n1,3\n2,2.5\n");
    snprintf(args, sizeof args, "%s/good -o %s/no/such/dir/x.png", dir, dir);
    cr_assert_eq(plot(dir, args, &out), 1, "%s", out);
    cr_assert(strstr(out, "cannot write") && strstr(out, "no/such/dir/x.png"), "%s", out);
    free(out);
    // Bad command lines exit 2.
    cr_assert_eq(plot(dir, "", &out), 2, "%s", out);
    cr_assert(strstr(out, "need a run folder"), "%s", out);
    free(out);
    snprintf(args, sizeof args, "%s/good %s/good", dir, dir);
    cr_assert_eq(plot(dir, args, &out), 2, "%s", out);
    free(out);
    cr_assert_eq(plot(dir, "--bogus x", &out), 2, "%s", out);
    free(out);
    cr_assert_eq(plot(dir, "--help", &out), 0, "%s", out);
    cr_assert(strstr(out, "usage: spartan plot RUN_DIR") && strstr(out, "--output"), "%s", out);
    free(out);
    tu_rm_rf(dir);
    free(dir);
}

Test(plot, missing_or_failing_gnuplot_is_reported_and_leaves_no_png) {
    char *dir = tu_tmpdir("plot");
    char args[2048], path[1024], *out = NULL;
    write_csv(dir, "good", "step,loss\n1,3\n2,2.5\n");
    snprintf(path, sizeof path, "%s/good/metrics.png", dir);
    snprintf(args, sizeof args, "%s/good --gnuplot %s/no-gnuplot-here", dir, dir);
    cr_assert_eq(plot(dir, args, &out), 1, "%s", out);
    cr_assert(strstr(out, "gnuplot is not installed") && strstr(out, "scripts/install-deps test"),
              "%s", out);
    free(out);
    cr_assert(!exists(path));
    assert_no_leftovers(dir, path);
    // A gnuplot that fails: its words come through, and nothing is left at the output.
    char fake[1024];
    snprintf(fake, sizeof fake, "%s/fake-gnuplot", dir);
    const char *script = "#!/bin/sh\necho \"line 7: unknown terminal 'pngcairo'\" >&2\nexit 1\n";
    cr_assert_eq(tu_write_file(fake, script, strlen(script)), 0);
    chmod(fake, 0755);
    snprintf(args, sizeof args, "%s/good --gnuplot %s", dir, fake);
    cr_assert_eq(plot(dir, args, &out), 1, "%s", out);
    cr_assert(strstr(out, "gnuplot failed (exit status 1)") && strstr(out, "unknown terminal"),
              "%s", out);
    free(out);
    cr_assert(!exists(path));
    assert_no_leftovers(dir, path);
    // A gnuplot that exits 0 without drawing is an error too.
    snprintf(args, sizeof args, "%s/good --gnuplot true", dir);
    cr_assert_eq(plot(dir, args, &out), 1, "%s", out);
    cr_assert(strstr(out, "wrote no image"), "%s", out);
    free(out);
    cr_assert(!exists(path));
    assert_no_leftovers(dir, path);
    tu_rm_rf(dir);
    free(dir);
}
