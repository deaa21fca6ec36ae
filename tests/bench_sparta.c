// bench_sparta.c: SPARTA cost, printed as `BENCH <key> <value>` lines.
//   sparta_overhead      per-peer tokens/s of 2 local peers exchanging p = 0.005 every step,
//                        divided by the same 2 peers with the exchange off: the median over
//                        interleaved rounds, and sparta_overhead_spread their range and IQR
//   sparta_tok_s_off/on  the two rates (medians over the rounds)
//   sparta_bytes_vs_ddp  bytes sent per step and peer, relative to a full fp32 gradient ring
//                        all-reduce with the same P: 2 (P-1)/P * 4 N bytes
//   tls_overhead         per-peer tokens/s of the same exchanging pair with net.tls (certificates
//                        from `spartan keys`), divided by without: interleaved rounds again
//   agg_trimmed_overhead, agg_median_overhead
//                        per-peer tokens/s of 4 peers exchanging p = 0.005 with
//                        sparta.aggregate = trimmed_mean (one of 4 values cut from each end) or
//                        median, divided by the same 4 peers with the mean: interleaved rounds
//   agg_ns_per_value_{mean,trimmed_mean,median}, agg_ratio_{trimmed_mean,median}
//                        the rule alone (agg_rows, one thread) over 5 rows of the k = 622,199
//                        values of GPT-2 124M at p = 0.005: ns per value, and the ratio to the
//                        mean
// Peers are real `spartan train` processes on 127.0.0.1 (1 thread each) training the tiny config
// on the bundled tinyshakespeare; the first steps (start-up, connection) are not counted.
// Each round runs the pair with the exchange off and then on, or on and then off (the order
// alternates from round to round), STEPS steps each, and gives one ratio, so load that drifts over
// the minutes of the benchmark hits both runs of a round alike. Each run is a fresh pair of
// processes: the trainer takes no commands, and start-up is outside the SKIP window anyway.
// 5 rounds of each comparison (about 3.5 minutes each on 2 cores), 3 under BENCH_QUICK=1;
// BENCH_ROUNDS or BENCH_ROUNDS_SPARTA sets it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sparta/peer/agg.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"
#include "train/ops.h"

#define STEPS 150
#define SKIP  30

static const char *bin(void) {
    const char *b = getenv("SPARTAN_BIN");
    return b && *b ? b : "bin/spartan";
}

// column reads a metrics.csv and returns the mean of column col over rows after SKIP.
static double column_mean(const char *path, int col) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[1024];
    double sum = 0;
    int n = 0, row = 0;
    while (fgets(line, sizeof line, f)) {
        if (row++ <= SKIP) continue; // header and warm-up
        char *p = line;
        for (int c = 0; c < col && p; c++) {
            p = strchr(p, ',');
            if (p) p++;
        }
        if (!p) continue;
        sum += strtod(p, NULL);
        n++;
    }
    fclose(f);
    return n ? sum / n : -1;
}

// One side of a comparison: its name in BENCH keys, SPARTA's p, the keys folder (NULL: no TLS),
// the peers (0: 2) and more --set options (NULL: none).
typedef struct {
    const char *name;
    float p;
    const char *tls;
    int peers;
    const char *sets;
} pair_side;

// run_pair trains the side's peers (2 unless it says) and returns the mean per-peer tokens/s;
// *bytes gets the mean bytes sent per step of rank 0.
static double run_pair(const char *dir, const char *data, int round, const pair_side *side,
                       double *bytes) {
    enum { MAXP = 8 };
    int P = side->peers ? side->peers : 2, port[MAXP];
    if (P > MAXP || tu_free_ports(P, port)) exit(1);
    char peers[MAXP * 24] = "";
    for (int r = 0; r < P; r++)
        snprintf(peers + strlen(peers), sizeof peers - strlen(peers), "%s127.0.0.1:%d",
                 r ? "," : "", port[r]);
    pid_t pid[MAXP];
    for (int r = 0; r < P; r++) {
        char cmd[4096], sets[1024] = "";
        if (side->tls) // tls: the folder of `spartan keys` with peers p0 and p1
            snprintf(sets, sizeof sets,
                     "--set net.tls=true --set net.tls_ca=%s/ca.crt --set net.tls_cert=%s/p%d.crt "
                     "--set net.tls_key=%s/p%d.key",
                     side->tls, side->tls, r, side->tls, r);
        snprintf(
            cmd, sizeof cmd,
            "exec %s train configs/tiny.ini --set data.dir=%s --set train.out_dir=%s/%d_%s_r%d "
            "--set train.max_iters=%d --set train.eval_interval=0 --set train.threads=1 "
            "--set train.log_interval=1000 --set sparta.p=%g %s %s --peers %s --rank %d "
            "--overwrite 2>%s/%d_%s_r%d.log",
            bin(), data, dir, round, side->name, r, STEPS, side->p, sets,
            side->sets ? side->sets : "", peers, r, dir, round, side->name, r);
        pid[r] = fork();
        if (pid[r] == 0) {
            execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
            _exit(127);
        }
    }
    int ok = 1;
    for (int r = 0; r < P; r++) {
        int st;
        waitpid(pid[r], &st, 0);
        ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    if (!ok) {
        fprintf(stderr, "bench_sparta: a peer failed; see %s\n", dir);
        exit(1);
    }
    double tok = 0;
    for (int r = 0; r < P; r++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%d_%s_r%d/metrics.csv", dir, round, side->name, r);
        tok += column_mean(path, 5) / P;            // tokens_per_s
        if (r == 0) *bytes = column_mean(path, 10); // bytes_sent_step
    }
    return tok;
}

// compare runs rounds interleaved rounds of pairs a and b (a first in even rounds), prints
// BENCH <what>_tok_s_<a.name>, ..._<b.name> (medians) and <what>_overhead (b over a, per round);
// *bytes gets b's bytes sent per step.
static void compare(const char *dir, const char *data, int rounds, const pair_side *a,
                    const pair_side *b, const char *what, double *bytes) {
    double *ta = xmalloc((size_t)rounds * sizeof(double)),
           *tb = xmalloc((size_t)rounds * sizeof(double)),
           *ratio = xmalloc((size_t)rounds * sizeof(double));
    double ba;
    for (int r = 0; r < rounds; r++) {
        for (int j = 0; j < 2; j++) {
            if ((r + j) % 2 == 0)
                ta[r] = run_pair(dir, data, r, a, &ba);
            else
                tb[r] = run_pair(dir, data, r, b, bytes);
        }
        ratio[r] = tb[r] / ta[r];
        fprintf(stderr, "bench_sparta: %s round %d/%d (%s first): %s %.0f %s %.0f tok/s (%.3f)\n",
                what, r + 1, rounds, r % 2 ? b->name : a->name, a->name, ta[r], b->name, tb[r],
                ratio[r]);
    }
    printf("BENCH %s_tok_s_%s %.0f\n", what, a->name, tu_spread_of(ta, rounds).median);
    printf("BENCH %s_tok_s_%s %.0f\n", what, b->name, tu_spread_of(tb, rounds).median);
    char key[64];
    snprintf(key, sizeof key, "%s_overhead", what);
    tu_bench_ratio(key, ratio, rounds, 3);
    free(ta);
    free(tb);
    free(ratio);
}

// bench_rules times agg_rows alone: 5 rows of k values (GPT-2 124M at p = 0.005), one thread,
// the median of 7 repetitions per rule, as ns per value and as a ratio to the mean.
static void bench_rules(void) {
    enum { M = 5, REPS = 7 };
    size_t k = 622199;
    float *data = xmalloc(M * k * sizeof(float)), *out = xmalloc(k * sizeof(float));
    const float *rows[M];
    tu_rand_fill(data, M * k, 1, -1.0f, 1.0f);
    for (int q = 0; q < M; q++)
        rows[q] = data + (size_t)q * k;
    ops_init(1);
    static const char *const names[3] = {"mean", "trimmed_mean", "median"};
    double ns[3];
    for (int rule = 0; rule < 3; rule++) {
        double t[REPS];
        for (int i = 0; i < REPS; i++) {
            double t0 = sys_now_ms();
            agg_rows((cfg_aggregate)rule, 0.25f, rows, M, k, out);
            t[i] = (sys_now_ms() - t0) * 1e6 / (double)k;
        }
        ns[rule] = tu_median(t, REPS);
        printf("BENCH agg_ns_per_value_%s %.2f\n", names[rule], ns[rule]);
    }
    for (int rule = 1; rule < 3; rule++)
        printf("BENCH agg_ratio_%s %.2f\n", names[rule], ns[rule] / ns[0]);
    free(data);
    free(out);
}

int main(void) {
    char dir[] = "/tmp/spartan-bench-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char data[256], cmd[1024];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(cmd, sizeof cmd,
             "%s data prepare --tokenizer char data/tinyshakespeare.txt %s >/dev/null", bin(),
             data);
    if (system(cmd) != 0) return 1;
    const int rounds = tu_bench_rounds("sparta", 5, 3);
    double b_on = 0;
    bench_rules();
    const pair_side off = {"off", 0.0f, NULL, 0, NULL}, on = {"on", 0.005f, NULL, 0, NULL};
    compare(dir, data, rounds, &off, &on, "sparta", &b_on);
    // the same exchanging pair with and without TLS
    char keys[300];
    snprintf(keys, sizeof keys, "%s/keys", dir);
    snprintf(cmd, sizeof cmd,
             "%s keys init %s >/dev/null && %s keys add %s p0 >/dev/null && "
             "%s keys add %s p1 >/dev/null",
             bin(), keys, bin(), keys, bin(), keys);
    if (system(cmd) != 0) return 1;
    const pair_side plain = {"plain", 0.005f, NULL, 0, NULL}, tls = {"tls", 0.005f, keys, 0, NULL};
    double b_tls;
    compare(dir, data, rounds, &plain, &tls, "tls", &b_tls);
    // the aggregation rules, 4 peers (the robust rules cut one of 4 values from each end)
    const pair_side mean = {"mean", 0.005f, NULL, 4, "--set sparta.aggregate=mean"},
                    trimmed = {"trimmed", 0.005f, NULL, 4, "--set sparta.aggregate=trimmed_mean"},
                    median = {"median", 0.005f, NULL, 4, "--set sparta.aggregate=median"};
    double b_agg;
    compare(dir, data, rounds, &mean, &trimmed, "agg_trimmed", &b_agg);
    compare(dir, data, rounds, &mean, &median, "agg_median", &b_agg);
    // the tiny model's parameter count, read back from a checkpoint-free formula: N is printed in
    // the peer's log; recompute it the same way as gpt_create for L4 C128 T64 V65
    double C = 128, L = 4, V = 65, T = 64;
    double N = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
    double ddp = 2.0 * (2 - 1) / 2 * 4 * N;
    printf("BENCH sparta_bytes_per_step %.0f\n", b_on);
    printf("BENCH sparta_bytes_vs_ddp %.5f (1/%.0f)\n", b_on / ddp, ddp / b_on);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 1;
    return 0;
}
