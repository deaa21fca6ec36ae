// bench_sparta.c: SPARTA cost, printed as `BENCH <key> <value>` lines.
//   sparta_overhead      per-peer tokens/s of 2 local peers exchanging p = 0.005 every step,
//                        divided by the same 2 peers with the exchange off (same run)
//   sparta_bytes_vs_ddp  bytes sent per step and peer, relative to a full fp32 gradient ring
//                        all-reduce with the same P: 2 (P-1)/P * 4 N bytes
// Peers are real `spartan train` processes on 127.0.0.1 (1 thread each) training the tiny config
// on the bundled tinyshakespeare; the first steps (start-up, connection) are not counted.
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

#include "test_util.h"

#define STEPS 300
#define SKIP  50

static const char *bin(void) {
    const char *b = getenv("SPARTAN_BIN");
    return b && *b ? b : "bin/spartan";
}

// free_base returns a base port with free ports above it (see tu_free_port_base), or -1.
static int free_base(void) { return tu_free_port_base(4); }

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

// run_pair trains 2 peers with the given p and returns the mean per-peer tokens/s; *bytes gets
// the mean bytes sent per step of rank 0.
static double run_pair(const char *dir, const char *data, float p, double *bytes) {
    int base = free_base();
    if (base < 0) {
        fprintf(stderr, "bench_sparta: no free ports\n");
        exit(1);
    }
    pid_t pid[2];
    for (int r = 0; r < 2; r++) {
        char cmd[2048];
        snprintf(
            cmd, sizeof cmd,
            "exec %s train configs/tiny.ini --set data.dir=%s --set train.out_dir=%s/p%g_r%d "
            "--set train.max_iters=%d --set train.eval_interval=0 --set train.threads=1 "
            "--set train.log_interval=1000 --set sparta.p=%g --peers 127.0.0.1:%d,127.0.0.1:%d "
            "--rank %d 2>%s/p%g_r%d.log",
            bin(), data, dir, p, r, STEPS, p, base, base + 2, r, dir, p, r);
        pid[r] = fork();
        if (pid[r] == 0) {
            execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
            _exit(127);
        }
    }
    int ok = 1;
    for (int r = 0; r < 2; r++) {
        int st;
        waitpid(pid[r], &st, 0);
        ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    if (!ok) {
        fprintf(stderr, "bench_sparta: a peer failed; see %s\n", dir);
        exit(1);
    }
    double tok = 0;
    for (int r = 0; r < 2; r++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/p%g_r%d/metrics.csv", dir, p, r);
        tok += column_mean(path, 5) / 2;            // tokens_per_s
        if (r == 0) *bytes = column_mean(path, 10); // bytes_sent_step
    }
    return tok;
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
    double b_off, b_on;
    double off = run_pair(dir, data, 0.0f, &b_off);
    double on = run_pair(dir, data, 0.005f, &b_on);
    printf("BENCH sparta_tok_s_off %.0f\n", off);
    printf("BENCH sparta_tok_s_on %.0f\n", on);
    printf("BENCH sparta_overhead %.3f\n", on / off);
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
