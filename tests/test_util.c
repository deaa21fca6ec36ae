// test_util.c: shared test helpers. Single-threaded; called from Criterion test bodies and the
// benchmark programs.
#include "tests/test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <time.h>
#include <unistd.h>

#include "data/tok.h"
#include "train/base/err.h"
#include "train/base/sys.h"
#include "train/ckpt.h"
#include "train/gpt.h"

char *tu_tmpdir(const char *tag) {
    const char *base = getenv("TMPDIR");
    char buf[512];
    snprintf(buf, sizeof buf, "%s/spartan-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    char *p = mkdtemp(buf);
    if (!p) return NULL;
    char *r = malloc(strlen(p) + 1);
    strcpy(r, p);
    return r;
}

void tu_rm_rf(const char *path) {
    if (!path || !*path || strcmp(path, "/") == 0) return;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "tu_rm_rf: could not remove %s\n", path);
}

void tu_rand_fill(float *x, size_t n, uint64_t seed, float lo, float hi) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = lo + (hi - lo) * (float)((s >> 40) * (1.0 / 16777216.0));
    }
}

const char *tu_spartan(void) {
    const char *b = getenv("SPARTAN_BIN");
    return b && *b ? b : "bin/spartan";
}

int tu_run(const char *cmd, int timeout_s, char **out) {
    char full[16384];
    // timeout(1) bounds the child; output is collected through a pipe. cmd is single-quoted
    // for the outer shell, its own quotes as '\''.
    size_t o = (size_t)snprintf(full, sizeof full, "timeout -k 2 %d sh -c '", timeout_s);
    for (const char *c = cmd; *c && o + 8 < sizeof full; c++) {
        if (*c == '\'') {
            memcpy(full + o, "'\\''", 4);
            o += 4;
        } else {
            full[o++] = *c;
        }
    }
    snprintf(full + o, sizeof full - o, "' 2>&1");
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += r;
        if (cap - len < 1024) buf = realloc(buf, cap *= 2);
    }
    buf[len] = 0;
    int st = pclose(p);
    if (out)
        *out = buf;
    else
        free(buf);
    if (st == -1) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

int tu_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

int tu_read_file(const char *path, char **data, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)sz + 1);
    size_t r = fread(buf, 1, (size_t)sz, f);
    fclose(f);
    if (r != (size_t)sz) {
        free(buf);
        return -1;
    }
    buf[sz] = 0;
    *data = buf;
    if (n) *n = (size_t)sz;
    return 0;
}

int tu_files_equal(const char *a, const char *b) {
    char *da, *db;
    size_t na, nb;
    if (tu_read_file(a, &da, &na)) return 0;
    if (tu_read_file(b, &db, &nb)) {
        free(da);
        return 0;
    }
    int eq = na == nb && memcmp(da, db, na) == 0;
    free(da);
    free(db);
    return eq;
}

peer_group *tu_group(const char *dir, int rank, int world, uint64_t run_id) {
    char addr[PEER_MAX_MEMBERS][PEER_ADDR_MAX];
    const char *peers[PEER_MAX_MEMBERS];
    for (int i = 0; i < world && i < PEER_MAX_MEMBERS; i++) {
        snprintf(addr[i], sizeof addr[i], "ipc://%s/g%d", dir, i);
        peers[i] = addr[i];
    }
    peer_opts o = {.listen = peers[rank],
                   .peers = peers,
                   .world = world,
                   .rank = rank,
                   .run_id = run_id,
                   .tag = "test-net"};
    peer_group *g = NULL;
    if (peer_group_create(&g, &o)) {
        fprintf(stderr, "tu_group: %s\n", err_msg());
        abort();
    }
    return g;
}

int tu_wait_linked(peer_group *a, int ra, peer_group *b, int rb) {
    for (int i = 0; i < 800 && !(peer_connected(a, rb) && peer_connected(b, ra)); i++)
        peer_wait_view(a, PEER_MAX_MEMBERS, 25); // wakes on every change of a's links
    return peer_connected(a, rb) && peer_connected(b, ra);
}

int tu_free_ports(int n, int *ports) {
    char cmd[128], line[1024];
    if (n < 1 || n > 64) return -1;
    snprintf(cmd, sizeof cmd, "python3 scripts/local-cluster --ports %d", n);
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    int got = 0;
    if (fgets(line, sizeof line, f)) {
        for (char *p = line, *end; got < n; p = end + 1) {
            long v = strtol(p, &end, 10);
            if (end == p || v <= 0 || v > 65535) break;
            ports[got++] = (int)v;
            if (*end != ',') break;
        }
    }
    int st = pclose(f);
    if (got != n || st != 0) {
        fprintf(stderr, "tu_free_ports: '%s' gave %d of %d ports\n", cmd, got, n);
        return -1;
    }
    return 0;
}

float *tu_load_params(const char *path, size_t *n) {
    gpt_model *m;
    if (gpt_load(&m, path, 1, 0, NULL, NULL)) return NULL;
    *n = gpt_n_params(m);
    float *p = malloc(*n * sizeof(float));
    memcpy(p, gpt_params(m), *n * sizeof(float));
    gpt_destroy(m);
    return p;
}

int tu_prepare_char_data(const char *dir, char **out) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s data prepare --tokenizer char data/tinyshakespeare.txt %s",
             tu_spartan(), dir);
    return tu_run(cmd, 60, out);
}

int tu_cluster_open(tu_cluster *c, int world) {
    memset(c, 0, sizeof *c);
    c->world = world;
    c->dir = tu_tmpdir("cluster");
    if (!c->dir) return -1;
    snprintf(c->data, sizeof c->data, "%s/data", c->dir);
    if (tu_prepare_char_data(c->data, NULL) != 0) return -1;
    int ports[64];
    if (world > 64 || tu_free_ports(world, ports)) return -1; // one address per peer
    for (int i = 0; i < world; i++) {
        char a[32];
        snprintf(a, sizeof a, "%s127.0.0.1:%d", i ? "," : "", ports[i]);
        strcat(c->peers, a);
    }
    return 0;
}

// spawn starts `BIN train ARGS NET` (BIN: spartan) for slot with its folder and log (see
// tu_cluster).
static int spawn(tu_cluster *c, int slot, const char *bin, const char *args, const char *net) {
    char cmd[8192], log[700];
    snprintf(log, sizeof log, "%s/rank%d.log", c->dir, slot);
    snprintf(cmd, sizeof cmd, "exec %s train %s --set data.dir=%s --set train.out_dir=%s/rank%d %s",
             bin, args, c->data, c->dir, slot, net);
    pid_t pid = fork();
    if (pid == 0) {
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGTERM); // a test that fails mid-way leaves no peer running
#endif
        if (!freopen(log, "a", stderr)) _exit(126);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return (int)pid;
}

int tu_cluster_start(tu_cluster *c, int rank, const char *args) {
    return tu_cluster_start_bin(c, rank, tu_spartan(), args);
}

int tu_cluster_start_bin(tu_cluster *c, int rank, const char *bin, const char *args) {
    char net[700];
    snprintf(net, sizeof net, "--peers %s --rank %d", c->peers, rank);
    return spawn(c, rank, bin, args, net);
}

int tu_cluster_start_peers(tu_cluster *c, int rank, const char *args, const char *peers) {
    char net[1200];
    snprintf(net, sizeof net, "--peers %s --rank %d", peers, rank);
    return spawn(c, rank, tu_spartan(), args, net);
}

double tu_cluster_metric(const tu_cluster *c, int rank, const char *col) {
    char path[700];
    snprintf(path, sizeof path, "%s/rank%d/metrics.csv", c->dir, rank);
    return tu_last_metric(path, col);
}

double tu_cluster_wait_metric(const tu_cluster *c, int rank, const char *col, double v,
                              int limit_s) {
    double x = -1;
    for (int i = 0; i < limit_s * 50 && (x = tu_cluster_metric(c, rank, col)) < v; i++)
        usleep(20000);
    return x;
}

int tu_cluster_port(const tu_cluster *c, int rank) {
    const char *p = c->peers;
    for (int i = 0; i < rank && p; i++) {
        p = strchr(p, ',');
        if (p) p++;
    }
    const char *colon = p ? strchr(p, ':') : NULL;
    return colon ? atoi(colon + 1) : -1;
}

int tu_cluster_join(tu_cluster *c, int slot, const char *args) {
    char addr[8][32];
    int n = 0;
    for (const char *p = c->peers; *p && n < 8; n++) { // the cluster's addresses, in order
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        snprintf(addr[n], sizeof addr[n], "%.*s", (int)len, p);
        if (!comma) break;
        p = comma + 1;
    }
    n++;
    char net[700];
    snprintf(net, sizeof net, "--join %s --set net.world=%d --set net.listen=%s", addr[0], c->world,
             addr[slot < n ? slot : 0]);
    return spawn(c, slot, tu_spartan(), args, net);
}

int tu_write_char_ckpt(const char *path, int L, int C, int T, uint64_t seed, float scale, long step,
                       const char *vocab) {
    tok_tokenizer *tok = NULL;
    gpt_model *m = NULL;
    ckpt_writer *w = NULL;
    char *spec = NULL;
    int rc = tok_char_create(&tok, vocab, strlen(vocab));
    if (!rc) {
        spec = tok_spec(tok);
        cfg_model mc = {.n_layer = L,
                        .n_head = 2,
                        .n_embd = C,
                        .block_size = T,
                        .vocab_size = tok_vocab_size(tok)};
        rc = gpt_create(&m, &mc, 1, 0);
    }
    if (!rc) {
        tu_rand_fill(gpt_params(m), gpt_n_params(m), seed, -scale, scale);
        rc = ckpt_writer_open(&w, path);
    }
    if (!rc) rc = gpt_write_config(m, w);
    if (!rc) rc = gpt_write_slab(m, w, "model/", gpt_params(m));
    if (!rc) rc = ckpt_write_attr_str(w, "tokenizer", spec);
    if (!rc) rc = ckpt_write_attr_i64(w, "step", step);
    if (rc)
        ckpt_writer_abort(w); // NULL-safe
    else
        rc = ckpt_writer_commit(w);
    gpt_destroy(m);
    tok_destroy(tok);
    free(spec);
    return rc ? -1 : 0;
}

int tu_wait_file_has(const char *path, const char *want, int timeout_ms, char **text) {
    char *t = NULL;
    int found = 0;
    for (int waited = 0;; waited += 10) {
        free(t);
        t = NULL;
        if (tu_read_file(path, &t, NULL)) t = NULL;
        found = t && strstr(t, want);
        if (found || waited >= timeout_ms) break;
        usleep(10000);
    }
    if (!t) t = calloc(1, 1);
    if (text)
        *text = t;
    else
        free(t);
    return found;
}

int tu_serve_start(const char *args, const char *out_path, const char *err_path, int *port) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "exec %s serve %s", tu_spartan(), args);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(out_path, "w", stdout) || !freopen(err_path, "w", stderr)) _exit(126);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    if (pid < 0) return -1;
    // up to 30 s in steps of 10 ms, until the URL line or the server's exit
    for (int i = 0; i < 3000; i++) {
        char *text = NULL;
        const char *u = NULL;
        if (!tu_read_file(out_path, &text, NULL)) u = strstr(text, "127.0.0.1:");
        int p = u && strstr(text, "listening on http") ? atoi(u + strlen("127.0.0.1:")) : 0;
        free(text);
        if (p > 0) {
            *port = p;
            return (int)pid;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "tu_serve_start: `%s` exited before its URL line\n", cmd);
            return -1;
        }
        usleep(10000);
    }
    fprintf(stderr, "tu_serve_start: no URL line from `%s` in 30 s\n", cmd);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

void tu_kill(int pid) {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

int tu_wait_exit(int pid, int timeout_s) {
    int st;
    for (int i = 0; i < timeout_s * 20; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
        usleep(50000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

char *tu_cluster_log(tu_cluster *c, int rank) {
    char path[700], *text = NULL;
    snprintf(path, sizeof path, "%s/rank%d.log", c->dir, rank);
    if (tu_read_file(path, &text, NULL)) {
        text = malloc(1);
        text[0] = 0;
    }
    return text;
}

int tu_cluster_run(tu_cluster *c, const char *args, int timeout_s) {
    int pid[64], bad = -1;
    for (int i = 0; i < c->world; i++)
        pid[i] = tu_cluster_start(c, i, args);
    for (int i = 0; i < c->world; i++)
        if (tu_wait_exit(pid[i], timeout_s) != 0 && bad < 0) bad = i;
    return bad;
}

void tu_cluster_close(tu_cluster *c) {
    if (getenv("TU_KEEP"))
        fprintf(stderr, "kept %s\n", c->dir); // for a look at the logs
    else
        tu_rm_rf(c->dir);
    free(c->dir);
    c->dir = NULL;
}

double tu_last_metric(const char *path, const char *column) {
    char *csv;
    if (tu_read_file(path, &csv, NULL)) return -1;
    size_t len = strlen(csv);
    while (len && csv[len - 1] == '\n')
        csv[--len] = 0;
    // the column's index in the header line
    int col = -1, c = 0;
    size_t want = strlen(column);
    for (const char *h = csv; *h && *h != '\n'; c++) {
        size_t n = strcspn(h, ",\n");
        if (n == want && !strncmp(h, column, n)) col = c;
        h += n;
        if (*h == ',') h++;
    }
    char *row = strrchr(csv, '\n');
    double v = -1;
    if (row && col >= 0) {
        c = 0;
        char *p = row + 1;
        for (; *p && c < col; p++)
            if (*p == ',') c++;
        if (c == col) v = strtod(p, NULL);
    }
    free(csv);
    return v;
}

int tu_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double tu_median(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, tu_cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

char *tu_data_tmpdir(const char *tag) {
    char *dir = tu_tmpdir(tag), path[1024], *out = NULL;
    if (!dir) return NULL;
    snprintf(path, sizeof path, "%s/d", dir);
    if (tu_prepare_char_data(path, &out) != 0) {
        fprintf(stderr, "%s: preparing data: %s\n", tag, out ? out : "?");
        free(out);
        tu_rm_rf(dir);
        free(dir);
        return NULL;
    }
    free(out);
    return dir;
}

int tu_bench_rounds(const char *name, int def, int def_quick) {
    char var[128] = "BENCH_ROUNDS_";
    size_t k = strlen(var);
    for (const char *c = name; *c && k + 1 < sizeof var; c++)
        var[k++] = (char)toupper((unsigned char)*c);
    var[k] = 0;
    const char *vals[2] = {getenv(var), getenv("BENCH_ROUNDS")};
    for (int i = 0; i < 2; i++) {
        if (!vals[i] || !*vals[i]) continue;
        char *end;
        long r = strtol(vals[i], &end, 10);
        if (*end == 0 && r >= 1 && r <= 1000) return (int)r;
        fprintf(stderr, "bench: ignoring %s=%s (want 1..1000)\n", i ? "BENCH_ROUNDS" : var,
                vals[i]);
    }
    return getenv("BENCH_QUICK") ? def_quick : def;
}

int tu_interleave(tu_side *sides, int n_sides, int rounds) {
    for (int r = 0; r < rounds; r++) {
        char line[512];
        int len = snprintf(line, sizeof line, "bench: round %d/%d:", r + 1, rounds);
        for (int j = 0; j < n_sides; j++) {
            tu_side *s = &sides[(r + j) % n_sides];
            double *v = s->all + (size_t)r * s->n;
            if (s->run(s->ctx, s->warm, s->n, v)) {
                fprintf(stderr, "bench: round %d: side %s failed\n", r + 1, s->name);
                return -1;
            }
            s->med[r] = tu_spread_of(v, s->n).median;
            if (len < (int)sizeof line)
                len +=
                    snprintf(line + len, sizeof line - (size_t)len, " %s %.4g", s->name, s->med[r]);
        }
        fprintf(stderr, "%s\n", line);
    }
    return 0;
}

// quantile of sorted x(n) at q in [0, 1], interpolating linearly between order statistics.
static double quantile(const double *x, int n, double q) {
    double pos = q * (n - 1);
    int i = (int)pos;
    if (i >= n - 1) return x[n - 1];
    return x[i] + (pos - i) * (x[i + 1] - x[i]);
}

tu_spread tu_spread_of(const double *x, int n) {
    double *s = malloc((size_t)n * sizeof *s);
    memcpy(s, x, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, tu_cmp_double);
    tu_spread r = {.median = quantile(s, n, 0.5),
                   .q1 = quantile(s, n, 0.25),
                   .q3 = quantile(s, n, 0.75),
                   .min = s[0],
                   .max = s[n - 1],
                   .n = n};
    free(s);
    return r;
}

double tu_bench_ratio(const char *key, const double *x, int n, int decimals) {
    tu_spread s = tu_spread_of(x, n);
    char vals[2048];
    int len = 0;
    for (int i = 0; i < n && len < (int)sizeof vals; i++)
        len += snprintf(vals + len, sizeof vals - (size_t)len, " %.*f", decimals + 1, x[i]);
    fprintf(stderr, "bench: %s per round:%s\n", key, vals);
    printf("BENCH %s %.*f\n", key, decimals, s.median);
    printf("BENCH %s_spread %.*f-%.*f (iqr %.*f-%.*f, %d rounds)\n", key, decimals, s.min, decimals,
           s.max, decimals, s.q1, decimals, s.q3, n);
    fflush(stdout);
    return s.median;
}

int tu_proc_start(tu_proc *p, const char *cmd) {
    int in[2], out[2]; // in: parent -> child stdin; out: child stdout -> parent
    memset(p, 0, sizeof *p);
    p->pid = -1;
    if (pipe(in)) return -1;
    if (pipe(out)) {
        close(in[0]);
        close(in[1]);
        return -1;
    }
    // The parent's ends must not leak into this or a later child, or EOF would never come.
    fcntl(in[1], F_SETFD, FD_CLOEXEC);
    fcntl(out[0], F_SETFD, FD_CLOEXEC);
    signal(SIGPIPE, SIG_IGN);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) { // only async-signal-safe calls until exec
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]);
        close(out[1]);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    if (pid < 0) {
        close(in[1]);
        close(out[0]);
        return -1;
    }
    p->pid = (int)pid;
    p->to = fdopen(in[1], "w");
    p->from = fdopen(out[0], "r");
    if (!p->to || !p->from) {
        tu_proc_stop(p);
        return -1;
    }
    return 0;
}

int tu_proc_read(tu_proc *p, char *buf, size_t n) {
    if (!p->from || !fgets(buf, (int)n, p->from)) return -1;
    buf[strcspn(buf, "\n")] = 0;
    return 0;
}

int tu_proc_ask(tu_proc *p, const char *line, char *buf, size_t n) {
    if (!p->to || fprintf(p->to, "%s\n", line) < 0 || fflush(p->to)) return -1;
    return tu_proc_read(p, buf, n);
}

int tu_torch_times(tu_proc *p, const char *verb, int warm, int n, double *v) {
    char cmd[64], line[16384];
    snprintf(cmd, sizeof cmd, "%s %d %d", verb, warm, n);
    int bad = tu_proc_ask(p, cmd, line, sizeof line) || strncmp(line, "ms ", 3) != 0;
    const char *c = line + 2;
    for (int i = 0; i < n && !bad; i++) {
        char *end;
        v[i] = strtod(c, &end) / 1e3;
        bad = end == c;
        c = end;
    }
    if (bad) fprintf(stderr, "bench: bench-torch answered '%s' to '%s'\n", line, cmd);
    return bad ? -1 : 0;
}

int tu_proc_stop(tu_proc *p) {
    if (p->to) fclose(p->to);
    if (p->from) fclose(p->from);
    p->to = p->from = NULL;
    if (p->pid <= 0) return -1;
    int st;
    pid_t w = waitpid(p->pid, &st, 0);
    p->pid = -1;
    if (w < 0) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

int tu_tcp_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

// ---- cable -----------------------------------------------------------------------------------

enum { CABLE_PAIRS = 16, CABLE_BUF = 65536 };

typedef struct cable_dir {
    int from, to;
    char buf[CABLE_BUF];
    size_t n; // bytes held, not yet written
    double tokens;
} cable_dir;

struct tu_cable {
    int lfd, port, target;
    _Atomic int mode, stop;
    _Atomic double rate;
    pthread_t th;
    cable_dir d[CABLE_PAIRS][2]; // [pair][a->b, b->a]; from < 0: unused
};

static void cable_drop(tu_cable *c, int i) {
    close(c->d[i][0].from);
    close(c->d[i][0].to);
    c->d[i][0].from = c->d[i][1].from = -1;
}

// cable_move reads what d may take and writes what it holds. Returns -1 when a side closed.
static int cable_move(tu_cable *c, cable_dir *d, double dt) {
    double rate = atomic_load(&c->rate);
    if (rate > 0) {
        d->tokens += rate * dt;
        if (d->tokens > rate / 10 + CABLE_BUF) d->tokens = rate / 10 + CABLE_BUF;
    }
    size_t room = CABLE_BUF - d->n;
    if (rate > 0 && d->tokens < (double)room) room = d->tokens > 0 ? (size_t)d->tokens : 0;
    if (room) {
        ssize_t r = recv(d->from, d->buf + d->n, room, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return -1;
        if (r > 0) {
            d->n += (size_t)r;
            if (rate > 0) d->tokens -= (double)r;
        }
    }
    if (d->n) {
        ssize_t w = send(d->to, d->buf, d->n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        if (w > 0) {
            memmove(d->buf, d->buf + w, d->n - (size_t)w);
            d->n -= (size_t)w;
        }
    }
    return 0;
}

static void *cable_main(void *arg) {
    tu_cable *c = arg;
    double last = sys_now_ms();
    while (!atomic_load(&c->stop)) {
        struct pollfd pf[1 + 2 * CABLE_PAIRS];
        int np = 0, cut = atomic_load(&c->mode) == TU_CABLE_CUT;
        pf[np++] = (struct pollfd){c->lfd, POLLIN, 0};
        for (int i = 0; i < CABLE_PAIRS && !cut; i++)
            for (int k = 0; k < 2 && c->d[i][0].from >= 0; k++) {
                cable_dir *d = &c->d[i][k];
                double rate = atomic_load(&c->rate);
                if (d->n < CABLE_BUF && (rate <= 0 || d->tokens >= 1)) // room, and the rate allows
                    pf[np++] = (struct pollfd){d->from, POLLIN, 0};
                if (d->n) pf[np++] = (struct pollfd){d->to, POLLOUT, 0};
            }
        poll(pf, (nfds_t)np, 5);
        if (pf[0].revents & POLLIN) {
            int a = accept(c->lfd, NULL, NULL), b = a >= 0 ? tu_tcp_connect(c->target) : -1;
            int i = 0;
            while (i < CABLE_PAIRS && c->d[i][0].from >= 0)
                i++;
            if (a >= 0 && (b < 0 || i == CABLE_PAIRS)) {
                close(a);
                if (b >= 0) close(b);
            } else if (a >= 0) {
                c->d[i][0].from = c->d[i][1].to = a;
                c->d[i][0].to = c->d[i][1].from = b;
                c->d[i][0].n = c->d[i][1].n = 0;
                c->d[i][0].tokens = c->d[i][1].tokens = 0;
            }
        }
        double now = sys_now_ms(), dt = (now - last) / 1000.0;
        last = now;
        for (int i = 0; i < CABLE_PAIRS && !cut; i++)
            if (c->d[i][0].from >= 0 &&
                (cable_move(c, &c->d[i][0], dt) || cable_move(c, &c->d[i][1], dt)))
                cable_drop(c, i);
    }
    for (int i = 0; i < CABLE_PAIRS; i++)
        if (c->d[i][0].from >= 0) cable_drop(c, i);
    return NULL;
}

tu_cable *tu_cable_open(int target) {
    tu_cable *c = calloc(1, sizeof *c);
    c->target = target;
    for (int i = 0; i < CABLE_PAIRS; i++)
        c->d[i][0].from = c->d[i][1].from = -1;
    c->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (c->lfd < 0 || bind(c->lfd, (struct sockaddr *)&sa, sizeof sa) || listen(c->lfd, 16) ||
        getsockname(c->lfd, (struct sockaddr *)&sa, &sl)) {
        if (c->lfd >= 0) close(c->lfd);
        free(c);
        return NULL;
    }
    c->port = ntohs(sa.sin_port);
    if (pthread_create(&c->th, NULL, cable_main, c)) {
        close(c->lfd);
        free(c);
        return NULL;
    }
    return c;
}

int tu_cable_port(const tu_cable *c) { return c->port; }

void tu_cable_set(tu_cable *c, int mode, double bytes_per_s) {
    atomic_store(&c->rate, bytes_per_s);
    atomic_store(&c->mode, mode);
}

void tu_cable_close(tu_cable *c) {
    if (!c) return;
    atomic_store(&c->stop, 1);
    pthread_join(c->th, NULL);
    close(c->lfd);
    free(c);
}
