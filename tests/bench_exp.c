// bench_exp.c: the experiment runner's cost to the peers, printed as `BENCH <key> <value>` lines.
//   exp_runner_overhead      per-peer tokens/s under experiments/run divided by that of a plain
//                            scripts/local-cluster run of the same config (median over the
//                            rounds; target >= 0.97, i.e. within 3%), and
//                            exp_runner_overhead_spread, the rounds' range and IQR
//   exp_runner_tok_s, exp_local_cluster_tok_s   the two rates (means over the rounds)
//   exp_runner_overhead_of_means                 their ratio
//   exp_record_s             the runner's recording time after training (evals, avg, corr)
// Each round runs a plain local-cluster and the runner, 2 peers each (one core per peer, so
// neither run is oversubscribed), of configs/experiments/sparta_p005_async.ini, the cluster first
// in even rounds and the runner first in odd ones; the ratio of each adjacent pair cancels slow
// drifts in the machine's load, the alternating order cancels a drift within the pair, and the
// median over the rounds drops a disturbed pair. (Running both at once, 4 processes on 2 cores,
// made single rounds swing by +-25% depending on which run the scheduler favoured.) 5 rounds
// (about 30 s each on 2 cores), 3 under BENCH_QUICK=1; BENCH_ROUNDS or BENCH_ROUNDS_EXP sets
// it. Rates are taken over the wall-clock window in which both peers of a run are past SKIP steps
// and neither has finished, from the absolute timestamps of the progress lines (every 10 steps);
// they include the runner's checkpoint writes (every 50 steps). The cluster runs the runner's
// effective config without those checkpoints; the runner uses its default netns mode (namespaces
// when root) and --keep, so that its peers' logs stay (in <out>/scratch/).
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_util.h"
#include "train/base/err.h"

#define STEPS  600
#define SKIP   50
#define MAXPTS (STEPS / 10 + 8)

// A peer's progress: absolute time (s since midnight) at steps 1, 10, 20, ...
typedef struct {
    double t[MAXPTS];
    int step[MAXPTS];
    int n;
} progress;

static int read_progress(const char *log_path, progress *p) {
    char *text = NULL;
    size_t len;
    p->n = 0;
    if (tu_read_file(log_path, &text, &len)) return -1;
    for (char *line = text; line && *line && p->n < MAXPTS;) {
        int hh, mm, step;
        double ss;
        char *step_at = strstr(line, " I train step=");
        char *eol = strchr(line, '\n');
        if (step_at && (!eol || step_at < eol) && strchr(step_at, '/') &&
            sscanf(line, "%d:%d:%lf", &hh, &mm, &ss) == 3 &&
            sscanf(step_at, " I train step=%d/", &step) == 1) {
            p->t[p->n] = hh * 3600.0 + mm * 60.0 + ss;
            p->step[p->n++] = step;
        }
        line = eol ? eol + 1 : NULL;
    }
    free(text);
    return p->n >= 2 ? 0 : -1;
}

// time_at returns the time at which the peer reached step (first logged point at or after it).
static double time_at(const progress *p, int step) {
    for (int i = 0; i < p->n; i++)
        if (p->step[i] >= step) return p->t[i];
    return NAN;
}

// steps_at interpolates the step count at time t.
static double steps_at(const progress *p, double t) {
    for (int i = 1; i < p->n; i++)
        if (p->t[i] >= t) {
            double f = (t - p->t[i - 1]) / (p->t[i] - p->t[i - 1]);
            return p->step[i - 1] + f * (p->step[i] - p->step[i - 1]);
        }
    return NAN;
}

static void run_or_die(const char *cmd, int timeout_s) {
    char *out = NULL;
    int rc = tu_run(cmd, timeout_s, &out);
    if (rc) {
        fprintf(stderr, "bench_exp: `%s` failed (%d):\n%s\n", cmd, rc, out);
        exit(1);
    }
    free(out);
}

static pid_t start_bg(const char *cmd) {
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stdout)) _exit(127);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int wait_ok(pid_t pid) {
    int st;
    return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

int main(void) {
    char *dir = tu_tmpdir("bench_exp"), data[700], cmd[8000], path[1200];
    snprintf(data, sizeof data, "%s/d", dir);
    if (tu_prepare_char_data(data, NULL)) {
        fprintf(stderr, "bench_exp: cannot prepare data\n");
        return 1;
    }
    const double tokens_per_step = 16 * 64; // common.ini: batch_size 16, block_size 64
    // A short runner run writes the effective config the cluster runs (and warms the caches).
    snprintf(
        cmd, sizeof cmd,
        "exec env SPARTAN_BIN=%s python3 experiments/run sparta_p005_async --peers 2 --steps %d "
        "--quiet --out %s/cfg --set data.dir=%s --set train.log_interval=10",
        tu_spartan(), STEPS, dir, data);
    run_or_die(cmd, 600);
    const int rounds = tu_bench_rounds("exp", 5, 3);
    double *ratio = xmalloc((size_t)rounds * sizeof(double)), runner = 0, cluster = 0, record_s = 0;
    for (int round = 0; round < rounds; round++) {
        double rate[2]; // local-cluster, runner: tokens/s per peer
        for (int k = 0; k < 2; k++) {
            const int who = (round + k) % 2;
            if (who == 0)
                snprintf(cmd, sizeof cmd,
                         "exec env SPARTAN_BIN=%s python3 scripts/local-cluster 2 "
                         "%s/cfg/config.ini --name lc%d --runs %s --set train.ckpt_interval=0",
                         tu_spartan(), dir, round, dir);
            else
                snprintf(cmd, sizeof cmd,
                         "exec env SPARTAN_BIN=%s python3 experiments/run sparta_p005_async "
                         "--peers 2 --steps %d --quiet --keep --out %s/run%d --set data.dir=%s "
                         "--set train.log_interval=10",
                         tu_spartan(), STEPS, dir, round, data);
            if (!wait_ok(start_bg(cmd))) {
                fprintf(stderr, "bench_exp: round %d: a run failed (see %s)\n", round, dir);
                return 1;
            }
            progress p[2];
            for (int i = 0; i < 2; i++) {
                if (who == 0)
                    snprintf(path, sizeof path, "%s/lc%d/rank%d/train.log", dir, round, i);
                else
                    snprintf(path, sizeof path, "%s/run%d/scratch/rank%d/train.log", dir, round, i);
                if (read_progress(path, &p[i])) {
                    fprintf(stderr, "bench_exp: no progress lines in %s\n", path);
                    return 1;
                }
            }
            // the window in which both peers are past SKIP steps and neither has finished
            double t0 = fmax(time_at(&p[0], SKIP), time_at(&p[1], SKIP));
            double t1 = fmin(p[0].t[p[0].n - 1], p[1].t[p[1].n - 1]);
            if (!(t1 - t0 > 1.0)) {
                fprintf(stderr, "bench_exp: round %d: a window of only %.2f s\n", round, t1 - t0);
                return 1;
            }
            rate[who] = 0;
            for (int i = 0; i < 2; i++)
                rate[who] +=
                    (steps_at(&p[i], t1) - steps_at(&p[i], t0)) * tokens_per_step / (t1 - t0) / 2;
        }
        ratio[round] = rate[1] / rate[0];
        cluster += rate[0] / rounds;
        runner += rate[1] / rounds;
        char *meta = NULL;
        size_t n;
        snprintf(path, sizeof path, "%s/run%d/run.json", dir, round);
        if (!tu_read_file(path, &meta, &n) && strstr(meta, "\"record_wall_s\": "))
            record_s += strtod(strstr(meta, "\"record_wall_s\": ") + 17, NULL) / rounds;
        free(meta);
        fprintf(stderr,
                "bench_exp: round %d (%s first): local-cluster %.0f tok/s/peer, runner %.0f "
                "(%.3f)\n",
                round, round % 2 ? "runner" : "local-cluster", rate[0], rate[1], ratio[round]);
    }
    printf("BENCH exp_local_cluster_tok_s %.0f\n", cluster);
    printf("BENCH exp_runner_tok_s %.0f\n", runner);
    tu_bench_ratio("exp_runner_overhead", ratio, rounds, 4);
    printf("BENCH exp_runner_overhead_of_means %.4f\n", runner / cluster);
    printf("BENCH exp_record_s %.2f\n", record_s);
    free(ratio);
    tu_rm_rf(dir);
    free(dir);
    return 0;
}
