// insider_test.c: robust averaging against an insider. Four honest `spartan train` peers and one
// malicious member (tests/insider_peer.c: the real trainer with a valid config, and a valid TLS
// certificate of the cluster's CA, whose contribution is replaced) train a small model with
// SPARTA and with DiLoCo. The attacks: huge values (1e30), NaNs, and -10 times the honest
// contribution. What is checked is the val loss of the honest peers' mean model (spartan avg,
// spartan eval) against the same run without the insider: with trimmed_mean or median it stays
// within 2%; with the plain mean the huge and the -10x attacks ruin it (the honest peers diverge,
// or the loss is far worse); NaNs are rejected with any rule, counted, and the insider is expelled
// after net.max_offences rounds of them. Every wait is for a process or a file (bounded).
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/pki.h"
#include "train/base/sys.h"

TestSuite(insider, .timeout = 120);

enum { HONEST = 4, INSIDER = 4 }; // ranks 0-3 honest; the insider is rank 4
#define MAX_OFFENCES 3

#define BASE                                                                                  \
    "configs/tiny.ini --set model.n_layer=1 --set model.n_embd=32 --set model.n_head=2 "      \
    "--set model.block_size=32 --set train.batch_size=8 --set train.max_iters=60 "            \
    "--set train.warmup_iters=5 --set train.eval_interval=0 --set train.eval_iters=1 "        \
    "--set train.threads=1 --set train.log_interval=20 --set net.max_offences=3 --overwrite " \
    "--set net.tls=true"
#define SPARTA "--set sparta.p=0.05 --set sparta.sync=true --set sparta.timeout_ms=20000"
#define DILOCO "--set sparta.p=0 --set diloco.H=10 --set diloco.timeout_ms=20000"

typedef struct {
    tu_cluster c; // 5 addresses and the prepared data
    char pki[700];
    const char *method; // SPARTA or DILOCO
    const char *module; // "sparta" or "diloco": its metrics.csv columns
    const char *extra;  // more options of the next runs ("" unless a test sets them)
    double base;        // the mean model's val loss without the insider
} fixture;

static void fx_open(fixture *f, const char *method, const char *module) {
    memset(f, 0, sizeof *f);
    cr_assert_eq(tu_cluster_open(&f->c, HONEST + 1), 0, "cannot set up the cluster");
    snprintf(f->pki, sizeof f->pki, "%s/pki", f->c.dir);
    cr_assert_eq(pki_ca_init(f->pki, "insider test", 30), ERR_OK, "%s", err_msg());
    for (int r = 0; r <= INSIDER; r++) {
        char name[16];
        snprintf(name, sizeof name, "p%d", r);
        cr_assert_eq(pki_issue(f->pki, name, 30), ERR_OK, "%s", err_msg());
    }
    f->method = method;
    f->module = module;
    f->extra = "";
}

static void fx_close(fixture *f) { tu_cluster_close(&f->c); }

static const char *insider_bin(void) {
    const char *b = getenv("INSIDER_PEER");
    b = b && *b ? b : "build/rel/tests/insider_peer";
    cr_assert(access(b, X_OK) == 0, "%s is not built (make build/rel/tests/insider_peer)", b);
    return b;
}

// args_of: the whole command line of rank r: the base, the method, the extra options, the rule
// and r's certificate.
static void args_of(const fixture *f, int r, const char *rule, char *out, size_t n) {
    snprintf(
        out, n,
        BASE
        " %s %s --set %s.aggregate=%s --set net.tls_ca=%s/ca.crt --set net.tls_cert=%s/p%d.crt "
        "--set net.tls_key=%s/p%d.key",
        f->method, f->extra, f->module, rule, f->pki, f->pki, r, f->pki, r);
}

// csv_of writes rank r's metrics.csv path into out.
static void csv_of(const fixture *f, int r, char *out, size_t n) {
    snprintf(out, n, "%s/rank%d/metrics.csv", f->c.dir, r);
}

// mean_val: the val loss of the honest peers' mean model.
static double mean_val(const fixture *f) {
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "%s avg %s/mean.h5 %s/rank0 %s/rank1 %s/rank2 %s/rank3 && %s eval %s/mean.h5 "
             "--data %s/val.bin --threads 1",
             tu_spartan(), f->c.dir, f->c.dir, f->c.dir, f->c.dir, f->c.dir, tu_spartan(), f->c.dir,
             f->c.data);
    cr_assert_eq(tu_run(cmd, 60, &out), 0, "%s\n%s", cmd, out);
    const char *l = strstr(out, "\nloss ");
    cr_assert(l, "%s", out);
    double v = atof(l + 6);
    free(out);
    return v;
}

// run_case trains the 4 honest peers with aggregation rule `rule` and, unless attack is NULL,
// the insider sending attack (huge, nan, flip). It returns the honest mean model's val loss, or
// INFINITY when the honest peers diverged (each stopped on a non-finite loss, as it should).
static double run_case(fixture *f, const char *rule, const char *attack) {
    double t0 = sys_now_ms();
    tu_cluster c = f->c; // without the insider: the first 4 addresses only
    if (!attack) {
        char *cut = c.peers;
        for (int i = 0; i < HONEST && cut; i++)
            cut = strchr(cut + 1, ',');
        cr_assert(cut);
        *cut = 0;
        c.world = HONEST;
    }
    char args[4096], bin[1024];
    int pid[HONEST + 1];
    for (int r = 0; r < HONEST; r++) {
        args_of(f, r, rule, args, sizeof args);
        pid[r] = tu_cluster_start(&c, r, args);
        cr_assert_gt(pid[r], 0);
    }
    if (attack) {
        args_of(f, INSIDER, rule, args, sizeof args);
        snprintf(bin, sizeof bin, "%s %s", insider_bin(), attack);
        pid[INSIDER] = tu_cluster_start_bin(&c, INSIDER, bin, args);
        cr_assert_gt(pid[INSIDER], 0);
    }
    // Wait for the honest peers. Once one has diverged the run is ruined: the others, which may
    // wait for it in vain (an all-reduce it left), are stopped.
    int rc[HONEST], done = 0, diverged = 0;
    for (int r = 0; r < HONEST; r++)
        rc[r] = -2;
    for (int i = 0; i < 90 * 50 && done < HONEST; i++) {
        for (int r = 0; r < HONEST; r++) {
            int st;
            if (rc[r] != -2 || waitpid(pid[r], &st, WNOHANG) != pid[r]) continue;
            rc[r] = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
            done++;
            char *log = tu_cluster_log(&c, r);
            int div = rc[r] == 1 && strstr(log, "training diverged");
            int killed = diverged && rc[r] == 128; // stopped by us below
            cr_assert(rc[r] == 0 || div || killed, "%s %s %s: rank %d exit %d:\n%s", f->module,
                      rule, attack ? attack : "-", r, rc[r], log);
            diverged += div;
            free(log);
        }
        if (diverged)
            for (int r = 0; r < HONEST; r++)
                if (rc[r] == -2) kill(pid[r], SIGKILL);
        if (done < HONEST) usleep(20000);
    }
    cr_assert_eq(done, HONEST, "the honest peers did not finish in 90 s");
    if (attack) { // done with it, whatever it still does
        kill(pid[INSIDER], SIGKILL);
        tu_wait_exit(pid[INSIDER], 10);
    }
    double v = diverged ? INFINITY : mean_val(f);
    fprintf(stderr,
            "insider %s aggregate=%s attack=%s%s%s: honest mean model val loss %.4f (%.1f s)\n",
            f->module, rule, attack ? attack : "(none)", *f->extra ? " " : "", f->extra, v,
            (sys_now_ms() - t0) / 1000);
    return v;
}

// expect_near: within 2% of the run without the insider.
static void expect_near(const fixture *f, double v, const char *what) {
    cr_assert(isfinite(v) && fabs(v - f->base) <= 0.02 * f->base,
              "%s %s: val loss %.4f, %.1f%% from %.4f without the insider", f->module, what, v,
              100 * (v - f->base) / f->base, f->base);
}

// expect_ruined: the honest peers diverged, or their model is far worse (5 times the tolerance).
static void expect_ruined(const fixture *f, double v, const char *what) {
    cr_assert(!isfinite(v) || v > 1.10 * f->base,
              "%s %s: val loss %.4f against %.4f without the insider: not ruined", f->module, what,
              v, f->base);
}

// expect_expelled: every honest peer counted the insider's NaNs (at least max_offences rounds)
// and expelled it, saying so with its rank and address.
static void expect_expelled(fixture *f) {
    char col[64], path[800], want[128];
    snprintf(col, sizeof col, "%s_nonfinite", f->module);
    int port = atoi(strrchr(f->c.peers, ':') + 1); // the insider's is the last address
    snprintf(want, sizeof want, "expels rank=%d addr=127.0.0.1:%d", INSIDER, port);
    for (int r = 0; r < HONEST; r++) {
        csv_of(f, r, path, sizeof path);
        double nonfinite = tu_last_metric(path, col),
               expelled = tu_last_metric(path, "net_expelled");
        cr_assert(nonfinite >= MAX_OFFENCES, "rank %d: %s = %.0f", r, col, nonfinite);
        cr_assert_eq(expelled, 1, "rank %d: net_expelled = %.0f", r, expelled);
        char *log = tu_cluster_log(&f->c, r);
        cr_assert(strstr(log, want) && strstr(log, "offence 3 of 3"), "rank %d: no '%s':\n%s", r,
                  want, log);
        free(log);
    }
}

Test(insider,
     sparta_trimmed_mean_and_median_hold_off_huge_and_flipped_values_and_nans_are_dropped) {
    fixture f;
    fx_open(&f, SPARTA, "sparta");
    f.base = run_case(&f, "mean", NULL);
    expect_ruined(&f, run_case(&f, "mean", "huge"), "mean, huge values");
    expect_near(&f, run_case(&f, "trimmed_mean", "huge"), "trimmed_mean, huge values");
    expect_ruined(&f, run_case(&f, "mean", "flip"), "mean, -10x values");
    expect_near(&f, run_case(&f, "median", "flip"), "median, -10x values");
    expect_near(&f, run_case(&f, "mean", "nan"), "mean, NaNs");
    expect_expelled(&f);
    fx_close(&f);
}

Test(insider,
     diloco_median_and_trimmed_mean_hold_off_huge_and_flipped_deltas_and_nans_are_dropped) {
    fixture f;
    fx_open(&f, DILOCO, "diloco");
    f.base = run_case(&f, "mean", NULL);
    expect_ruined(&f, run_case(&f, "mean", "huge"), "mean, huge deltas");
    expect_near(&f, run_case(&f, "median", "huge"), "median, huge deltas");
    expect_ruined(&f, run_case(&f, "mean", "flip"), "mean, -10x deltas");
    expect_near(&f, run_case(&f, "trimmed_mean", "flip"), "trimmed_mean, -10x deltas");
    expect_near(&f, run_case(&f, "mean", "nan"), "mean, NaNs");
    expect_expelled(&f);
    // diloco.max_norm: the mean over the all-gather, each delta clipped to norm 1 (the honest
    // ones are about 1.2 here): the huge one is clipped at every outer step, and harmless
    f.extra = "--set diloco.max_norm=1";
    double v = run_case(&f, "mean", "huge");
    cr_assert(isfinite(v) && v < 1.05 * f.base, "mean, clipped huge deltas: %.4f vs %.4f", v,
              f.base);
    char path[800];
    csv_of(&f, 0, path, sizeof path);
    cr_assert_geq(tu_last_metric(path, "diloco_clipped"), 6, "every outer step clips one");
    fx_close(&f);
}
