// launch_cmd.c: `spartan launch HOSTFILE CONFIG`: one command starts and watches a training job
// across machines over ssh. Phases, every one on all hosts in parallel and bounded in time:
//   1. preflight  ssh reachable, OS/arch, cores, free disk, dependencies, what is there already
//   2. ship       the checkout's revision (git archive | tar) and its build, where not built
//                 yet; the data folder's files, where not there yet; the config
//   3. probe      every host listens on its peer ports and connects to every other's
//   4. run        one ssh per peer; output lines prefixed host:rank; a live table on a terminal
//   5. fetch      (--fetch DIR) every peer's newest checkpoint back, then a summary
// A host that fails a phase is named with the reason, and nothing starts. Ctrl-C asks every peer
// to stop (each saves a checkpoint): the ssh connections' input is closed, which the peer's
// remote wrapper turns into SIGTERM (launch_plan.h). Main thread only; signals only set a flag.
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "train/base/args.h"
#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/base/pki.h"
#include "train/base/sys.h"
#include "train/cmd/hostfile.h"
#include "train/cmd/launch_cmd.h"
#include "train/cmd/launch_plan.h"
#include "train/cmd/proc.h"

#define MAX_SETS       64
#define MAX_DATA_FILES 64

static volatile sig_atomic_t interrupts;
static void on_signal(int sig) {
    (void)sig;
    interrupts++;
}

typedef struct launch_args {
    const char *hostfile, *config, *ssh, *dir, *name, *fetch, *on_failure, *keys;
    const char *sets[MAX_SETS];
    int n_sets;
    int install_deps, detach, stop, dry_run, resume, overwrite, plain, no_share;
    int preflight_s, build_s, stop_s, status_port;
} launch_args;

// What is known of a host.
typedef struct host_state {
    char label[272]; // how messages name the host: "host", or "[host]:ssh_port" when two
                     // entries of the hostfile name the same host
    int failed;      // a phase failed: reason says which and why
    char reason[768];
    char os[32], arch[32];
    int cores;
    long disk_kb;
    int built, has_data, deps_ok;
    char missing[256]; // tools and libraries that are not there
    int reach_ok, reach_n;
    char unreachable[256];
    char last[320]; // the last output line of the current phase (ssh's own errors)
} host_state;

// What is known of a peer while it runs.
typedef struct peer_state {
    int step, max_step, peers, ckpt_step;
    double loss, val, tok_s, sent_mb, stale;
    char status[48]; // "running", "exit 0", "killed by SIGKILL", "ssh lost (exit 255)"
    int exited, ok;
} peer_state;

typedef struct job {
    launch_args a;
    hostfile hf;
    launch_plan plan;
    host_state *hs;
    peer_state *ps;
    proc *procs;
    char src[PATH_MAX], commit[64], rev[64], data_dir[PATH_MAX], data_id[32];
    char keys[PATH_MAX]; // the cluster folder whose certificates the hosts get, or ""
    char files[MAX_DATA_FILES][256];
    int n_files;
    int tty;            // live table
    int table_lines;    // lines of the table on the screen now
    double launched_ms; // when the launcher started
    double started_ms;  // when the peers were started
    int first_steps;    // peers that have reported a step
} job;

static int add_set(void *ctx, const char *kv) {
    launch_args *a = ctx;
    if (a->n_sets == MAX_SETS) return err_set(ERR_INVAL, "--set: more than %d of them", MAX_SETS);
    if (!strchr(kv, '=')) return err_set(ERR_INVAL, "--set '%s': expected SECTION.KEY=VALUE", kv);
    a->sets[a->n_sets++] = kv;
    return ERR_OK;
}

// ---- local facts: the checkout's revision, the data folder ----

// capture_line keeps the first output line of a command.
static void capture_line(void *ctx, int i, const char *line) {
    (void)i;
    char *out = ctx;
    if (!out[0]) snprintf(out, 64, "%s", line);
}

// git_line runs a git command in the checkout and returns its first output line in out (64).
static int git_line(const job *j, const char *args, char *out) {
    char cmd[PATH_MAX + 256];
    snprintf(cmd, sizeof cmd, "git -C '%s' %s 2>/dev/null", j->src, args);
    out[0] = 0;
    int st = proc_run(cmd, NULL, 0, 30000, capture_line, out);
    return st == 0 && out[0] ? 0 : -1;
}

// find_revision finds the checkout (the working directory's git top level, which must be a
// spartan tree) and the commit to ship: HEAD, or a commit of HEAD plus the uncommitted changes
// of tracked files (git stash create). The revision id is that commit's tree.
static int find_revision(job *j) {
    char top[64 + PATH_MAX] = "";
    if (!getcwd(j->src, sizeof j->src))
        return err_set(ERR_IO, "launch: getcwd: %s", strerror(errno));
    if (proc_run("git rev-parse --show-toplevel 2>/dev/null", NULL, 0, 30000, capture_line, top) !=
            0 ||
        !top[0])
        return err_set(ERR_INVAL, "launch: run spartan launch in a git checkout of spartan (it "
                                  "ships the checkout's source to the hosts with git archive)");
    snprintf(j->src, sizeof j->src, "%s", top);
    char probe[PATH_MAX + 32];
    snprintf(probe, sizeof probe, "%s/train/cmd/main.c", j->src);
    if (access(probe, R_OK) != 0)
        return err_set(ERR_INVAL, "launch: %s is not a spartan checkout (no train/cmd/main.c)",
                       j->src);
    char stash[64] = "";
    git_line(j, "stash create", stash);
    if (stash[0]) {
        snprintf(j->commit, sizeof j->commit, "%s", stash);
        fprintf(stderr, "launch: the checkout has uncommitted changes: they are shipped too "
                        "(untracked files are not)\n");
    } else if (git_line(j, "rev-parse HEAD", j->commit)) {
        return err_set(ERR_INVAL, "launch: %s has no commit to ship", j->src);
    }
    char arg[96], tree[64];
    snprintf(arg, sizeof arg, "rev-parse %s^{tree}", j->commit);
    if (git_line(j, arg, tree)) return err_set(ERR_IO, "launch: git rev-parse %s failed", arg);
    snprintf(j->rev, sizeof j->rev, "%.12s", tree);
    return ERR_OK;
}

// find_data lists the regular files at the top of the config's data.dir and makes the data id
// from their names, sizes and modification times (FNV-1a), so a changed shard is shipped again.
static int find_data(job *j, const cfg *c) {
    if (!c->data.dir[0]) return ERR_OK;
    if (!realpath(c->data.dir, j->data_dir))
        return err_set(ERR_IO, "launch: data.dir '%s': %s (prepare it with spartan data prepare)",
                       c->data.dir, strerror(errno));
    DIR *d = opendir(j->data_dir);
    if (!d) return err_set(ERR_IO, "launch: data.dir '%s': %s", j->data_dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) && j->n_files < MAX_DATA_FILES) {
        if (e->d_name[0] == '.' || strlen(e->d_name) >= sizeof j->files[0]) continue;
        char p[PATH_MAX + 256];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", j->data_dir, e->d_name);
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
            snprintf(j->files[j->n_files++], sizeof j->files[0], "%s", e->d_name);
    }
    closedir(d);
    qsort(j->files, (size_t)j->n_files, sizeof j->files[0],
          (int (*)(const void *, const void *))strcmp);
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < j->n_files; i++) {
        char p[PATH_MAX + 256], rec[512];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", j->data_dir, j->files[i]);
        stat(p, &st);
        int n = snprintf(rec, sizeof rec, "%s/%lld/%lld;", j->files[i], (long long)st.st_size,
                         (long long)st.st_mtime);
        for (int k = 0; k < n; k++)
            h = (h ^ (unsigned char)rec[k]) * 1099511628211ull;
    }
    if (!j->n_files) return err_set(ERR_INVAL, "launch: data.dir '%s' holds no files", j->data_dir);
    snprintf(j->data_id, sizeof j->data_id, "%012llx", (unsigned long long)(h >> 16));
    return ERR_OK;
}

// ---- running one phase on every host ----

typedef struct phase {
    job *j;
    const char *name;
    int *who; // proc index -> host (or rank, for per-peer phases)
    void (*line)(job *j, int who, const char *line);
} phase;

static void phase_line(void *ctx, int i, const char *line) {
    phase *ph = ctx;
    host_state *h = &ph->j->hs[ph->who[i]];
    (void)h;
    if (ph->line) ph->line(ph->j, ph->who[i], line);
}

// run_phase runs cmds[0..n) at once (inputs[i] on stdin, may be NULL) and waits up to
// timeout_s; a command still running then is killed. statuses[i] gets the wait status, -2 when
// killed for time, -1 when it could not start. Returns 0, or -1 when Ctrl-C stopped the phase.
static int run_phase(phase *ph, char **cmds, char **inputs, int n, int timeout_s, int *statuses) {
    proc *ps = xcalloc((size_t)n, sizeof *ps);
    for (int i = 0; i < n; i++) {
        statuses[i] = -1;
        if (!cmds[i]) continue;
        if (proc_start(&ps[i], cmds[i], 0, inputs ? inputs[i] : NULL,
                       inputs && inputs[i] ? strlen(inputs[i]) : 0))
            fprintf(stderr, "launch: %s: %s\n", ph->name, err_msg());
    }
    double end = sys_now_ms() + timeout_s * 1000.0;
    int stopped = 0;
    while (proc_poll(ps, n, 200, phase_line, ph) > 0) {
        if (interrupts) {
            stopped = 1;
            break;
        }
        if (sys_now_ms() > end) break;
    }
    for (int i = 0; i < n; i++) {
        if (!ps[i].pid) continue;
        statuses[i] = ps[i].exited ? ps[i].status : -2;
        proc_free(&ps[i]);
    }
    free(ps);
    return stopped ? -1 : 0;
}

static void fail_host(job *j, int h, const char *fmt, const char *what) {
    host_state *s = &j->hs[h];
    if (s->failed) return;
    s->failed = 1;
    snprintf(s->reason, sizeof s->reason, fmt, what);
}

// why_failed describes a phase command's end for host h: a deadline, ssh's own error (exit 255
// with its last line), or the last output line.
static void why_failed(job *j, int h, int status, const char *phase_name, int timeout_s) {
    char buf[700], d[48];
    host_state *s = &j->hs[h];
    if (status == -2)
        snprintf(buf, sizeof buf, "%s timed out after %d s", phase_name, timeout_s);
    else if (status == -1)
        snprintf(buf, sizeof buf, "%s could not start", phase_name);
    else if (WIFEXITED(status) && WEXITSTATUS(status) == 255)
        snprintf(buf, sizeof buf, "ssh failed: %s", s->last[0] ? s->last : "no reason given");
    else {
        proc_describe(status, d, sizeof d);
        snprintf(buf, sizeof buf, "%s failed (%s)%s%s", phase_name, d, s->last[0] ? ": " : "",
                 s->last);
    }
    fail_host(j, h, "%s", buf);
}

// ---- 1. preflight ----

static void preflight_line(job *j, int h, const char *line) {
    host_state *s = &j->hs[h];
    if (!strncmp(line, "preflight ", 10)) {
        const char *kv = line + 10;
        if (!strncmp(kv, "os=", 3))
            sscanf(kv, "os=%31s arch=%31s", s->os, s->arch);
        else if (!strncmp(kv, "cores=", 6))
            s->cores = atoi(kv + 6);
        else if (!strncmp(kv, "disk_kb=", 8))
            s->disk_kb = atol(kv + 8);
        else if (!strncmp(kv, "built=", 6))
            s->built = kv[6] == '1';
        else if (!strncmp(kv, "data=", 5))
            s->has_data = kv[5] == '1';
        else if (!strncmp(kv, "missing=", 8)) {
            size_t n = strlen(s->missing);
            snprintf(s->missing + n, sizeof s->missing - n, "%s%s", n ? ", " : "", kv + 8);
        }
        return;
    }
    const char *x = strstr(line, "\xe2\x9c\x97 "); // "✗ NAME" from check-deps
    if (x) {
        size_t n = strlen(s->missing);
        snprintf(s->missing + n, sizeof s->missing - n, "%s%s", n ? ", " : "", x + 4);
        return;
    }
    if (!strstr(line, "\xe2\x9c\x93")) snprintf(s->last, sizeof s->last, "%s", line);
}

static int preflight(job *j) {
    int n = j->hf.n;
    char path[PATH_MAX + 32], *deps;
    size_t len;
    snprintf(path, sizeof path, "%s/scripts/check-deps", j->src);
    if (sys_read_file(path, PROC_INPUT_MAX / 2, "script", &deps, &len)) return ERR_IO;
    char **cmds = xcalloc((size_t)n, sizeof *cmds), **in = xcalloc((size_t)n, sizeof *in);
    int *st = xcalloc((size_t)n, sizeof *st), *who = xcalloc((size_t)n, sizeof *who);
    for (int h = 0; h < n; h++) {
        cmds[h] = launch_cmd_preflight(&j->plan, h);
        in[h] = launch_preflight_script(&j->plan, h, deps);
        who[h] = h;
    }
    fprintf(stderr, "launch: preflight of %d host%s (at most %d s)\n", n, n > 1 ? "s" : "",
            j->a.preflight_s);
    phase ph = {.j = j, .name = "preflight", .who = who, .line = preflight_line};
    int rc = run_phase(&ph, cmds, in, n, j->a.preflight_s, st);
    for (int h = 0; h < n && !rc; h++) {
        host_state *s = &j->hs[h];
        if (!s->os[0]) {
            why_failed(j, h, st[h], "preflight", j->a.preflight_s);
            continue;
        }
        s->deps_ok = !s->missing[0];
        if (!s->deps_ok && !j->a.install_deps)
            fail_host(j, h,
                      "missing dependencies: %s (install them with scripts/install-deps, or "
                      "give --install-deps)",
                      s->missing);
        else if (s->disk_kb > 0 && s->disk_kb < 200 * 1024 && !s->built)
            fail_host(j, h, "%s", "less than 200 MB free disk for the build");
    }
    for (int h = 0; h < n; h++)
        free(cmds[h]), free(in[h]);
    free(cmds), free(in), free(st), free(who), free(deps);
    return rc;
}

// ---- 2. ship and build ----

static void ship_line(job *j, int h, const char *line) {
    snprintf(j->hs[h].last, sizeof j->hs[h].last, "%s", line);
    if (strcmp(line, "built") && strcmp(line, "shipped"))
        fprintf(stderr, "  %s: %s\n", j->hs[h].label, line);
}

static int ship(job *j) {
    int n = j->hf.n, need = 0;
    char **cmds = xcalloc((size_t)n, sizeof *cmds);
    int *st = xcalloc((size_t)n, sizeof *st), *who = xcalloc((size_t)n, sizeof *who), rc = 0;
    phase ph = {.j = j, .who = who, .line = ship_line};
    for (int h = 0; h < n; h++) {
        who[h] = h;
        j->hs[h].last[0] = 0;
        if (!j->hs[h].failed && !j->hs[h].built) {
            cmds[h] = launch_cmd_build(&j->plan, h, j->src, j->commit);
            need++;
        }
    }
    for (int h = 0; h < n; h++)
        if (!j->hs[h].failed && j->hs[h].built)
            fprintf(stderr, "launch: %s: revision %s is built there already\n", j->hs[h].label,
                    j->rev);
    if (need) {
        fprintf(stderr,
                "launch: shipping revision %s and building it on %d host%s (at most %d s)\n",
                j->rev, need, need > 1 ? "s" : "", j->a.build_s);
        double t0 = sys_now_ms();
        ph.name = "build";
        rc = run_phase(&ph, cmds, NULL, n, j->a.build_s, st);
        for (int h = 0; h < n && !rc; h++) {
            if (!cmds[h]) continue;
            if (st[h] == 0)
                j->hs[h].built = 1;
            else
                why_failed(j, h, st[h], "build", j->a.build_s);
        }
        if (!rc) fprintf(stderr, "launch: built in %.1f s\n", (sys_now_ms() - t0) / 1e3);
    }
    // the data, where it is not there, and the config everywhere
    const char *files[MAX_DATA_FILES];
    for (int i = 0; i < j->n_files; i++)
        files[i] = j->files[i];
    for (int pass = 0; pass < 3 && !rc; pass++) {
        need = 0;
        for (int h = 0; h < n; h++) {
            free(cmds[h]);
            cmds[h] = NULL;
            j->hs[h].last[0] = 0;
            if (j->hs[h].failed) continue;
            if (pass == 0 && j->n_files && !j->hs[h].has_data)
                cmds[h] = launch_cmd_data(&j->plan, h, j->data_dir, files, j->n_files), need++;
            if (pass == 1) cmds[h] = launch_cmd_config(&j->plan, h, j->a.config), need++;
            if (pass == 2 && j->keys[0]) cmds[h] = launch_cmd_keys(&j->plan, h), need++;
        }
        if (!need) continue;
        if (pass == 0)
            fprintf(stderr, "launch: shipping the data (%d files of %s) to %d host%s\n", j->n_files,
                    j->data_dir, need, need > 1 ? "s" : "");
        ph.name = pass == 0   ? "shipping the data"
                  : pass == 1 ? "shipping the config"
                              : "shipping the keys";
        rc = run_phase(&ph, cmds, NULL, n, j->a.build_s, st);
        for (int h = 0; h < n && !rc; h++)
            if (cmds[h] && st[h] != 0) why_failed(j, h, st[h], ph.name, j->a.build_s);
    }
    for (int h = 0; h < n; h++)
        free(cmds[h]);
    free(cmds), free(st), free(who);
    return rc;
}

// ---- 3. probe ----

static void probe_line(job *j, int h, const char *line) {
    host_state *s = &j->hs[h];
    if (!strncmp(line, "probe reach ", 12)) {
        s->reach_n++;
        if (strstr(line, " ok")) {
            s->reach_ok++;
        } else {
            size_t n = strlen(s->unreachable);
            snprintf(s->unreachable + n, sizeof s->unreachable - n, "%s%s", n ? "; " : "",
                     line + 12);
        }
    } else if (!strncmp(line, "probe listen ", 13) && strstr(line, " fail: ")) {
        char buf[400];
        snprintf(buf, sizeof buf, "cannot listen on %s", line + 13);
        fail_host(j, h, "%s", buf);
    } else if (strncmp(line, "probe done", 10)) {
        snprintf(s->last, sizeof s->last, "%s", line);
    }
}

static int probe(job *j) {
    int n = j->hf.n, timeout_ms = 10000, rc = 0;
    proc *ps = xcalloc((size_t)n, sizeof *ps);
    int *who = xcalloc((size_t)n, sizeof *who), *done = xcalloc((size_t)n, sizeof *done);
    for (int h = 0; h < n; h++) {
        who[h] = h;
        j->hs[h].last[0] = 0;
        if (j->hs[h].failed) continue;
        char *cmd = launch_cmd_probe(&j->plan, h, timeout_ms);
        if (proc_start(&ps[h], cmd, 1, NULL, 0)) fail_host(j, h, "probe: %s", err_msg());
        free(cmd);
    }
    phase ph = {.j = j, .name = "probe", .who = who, .line = probe_line};
    fprintf(stderr, "launch: checking that every peer reaches every other peer's port\n");
    // every probe keeps listening until all have finished connecting: then their stdin closes
    double end = sys_now_ms() + timeout_ms + 20000.0;
    for (;;) {
        int finished = 1;
        for (int h = 0; h < n; h++) {
            host_state *s = &j->hs[h];
            if (ps[h].pid && !ps[h].exited && s->reach_n < j->plan.n - j->hf.hosts[h].slots)
                finished = 0;
        }
        if (finished) break;
        if (proc_poll(ps, n, 200, phase_line, &ph) == 0) break;
        if (interrupts) rc = -1;
        if (interrupts || sys_now_ms() > end) break;
    }
    for (int h = 0; h < n; h++)
        proc_close_stdin(&ps[h]);
    double stop = sys_now_ms() + 5000;
    while (sys_now_ms() < stop && proc_poll(ps, n, 200, phase_line, &ph) > 0) {
    }
    for (int h = 0; h < n; h++) {
        host_state *s = &j->hs[h];
        if (!ps[h].pid) continue;
        int st = ps[h].exited ? ps[h].status : -2;
        proc_free(&ps[h]);
        if (s->failed) continue;
        int want = j->plan.n - j->hf.hosts[h].slots;
        if (s->reach_ok < want && s->unreachable[0])
            fail_host(j, h, "cannot reach %s", s->unreachable);
        else if (s->reach_ok < want)
            why_failed(j, h, st, "probe", timeout_ms / 1000);
    }
    free(ps), free(who), free(done);
    return rc;
}

// ---- the tables ----

static void print_host_table(job *j, FILE *f) {
    fprintf(f, "\n%-24s %-16s %5s %9s %-12s %-10s %s\n", "HOST", "OS/ARCH", "CORES", "FREE", "DEPS",
            "BUILD", "REACHES");
    for (int h = 0; h < j->hf.n; h++) {
        host_state *s = &j->hs[h];
        char osarch[72] = "?", free_[16] = "?", reach[32] = "-", name[300];
        if (s->os[0]) snprintf(osarch, sizeof osarch, "%s/%s", s->os, s->arch);
        if (s->disk_kb > 0) snprintf(free_, sizeof free_, "%.1f GB", s->disk_kb / 1048576.0);
        if (s->reach_n) snprintf(reach, sizeof reach, "%d/%d", s->reach_ok, s->reach_n);
        snprintf(name, sizeof name, "%s", j->hs[h].label);
        fprintf(f, "%-24s %-16s %5d %9s %-12s %-10s %s\n", name, osarch, s->cores, free_,
                !s->os[0]    ? "?"
                : s->deps_ok ? "ok"
                             : "missing",
                s->built   ? "ok"
                : s->os[0] ? "needed"
                           : "?",
                reach);
    }
    int bad = 0;
    for (int h = 0; h < j->hf.n; h++)
        if (j->hs[h].failed) {
            if (!bad++) fputc('\n', f);
            fprintf(f, "launch: %s: %s\n", j->hs[h].label, j->hs[h].reason);
        }
    fputc('\n', f);
}

static void fmt_bytes(char *buf, size_t n, double mb) {
    if (mb >= 1000)
        snprintf(buf, n, "%.2f GB", mb / 1e3);
    else
        snprintf(buf, n, "%.2f MB", mb);
}

// peer_name writes "host:rank" (the host's label).
static void peer_name(const job *j, int r, char *buf, size_t n) {
    snprintf(buf, n, "%s:%d", j->hs[j->plan.peers[r].host].label, r);
}

// label_hosts names each host as messages show it: its name, with the ssh port where another
// entry names the same host (two sshd on one machine, as the tests run them).
static void label_hosts(job *j) {
    for (int h = 0; h < j->hf.n; h++) {
        const hostfile_host *e = &j->hf.hosts[h];
        int dup = 0;
        for (int o = 0; o < j->hf.n; o++)
            dup |= o != h && !strcmp(j->hf.hosts[o].host, e->host);
        if (dup)
            snprintf(j->hs[h].label, sizeof j->hs[h].label, "[%s]:%d", e->host,
                     e->ssh_port ? e->ssh_port : 22);
        else
            snprintf(j->hs[h].label, sizeof j->hs[h].label, "%s", e->host);
    }
}

static void print_peer_table(job *j, FILE *f) {
    fprintf(f, "%-22s %-12s %9s %8s %8s %10s %5s %6s %8s\n", "PEER", "STATE", "STEP", "LOSS",
            "TOK/S", "SENT", "PEERS", "STALE", "CKPT");
    for (int r = 0; r < j->plan.n; r++) {
        peer_state *p = &j->ps[r];
        char name[300], step[24] = "-", loss[16] = "-", tok[16] = "-", sent[16] = "-",
                        peers[16] = "-", stale[12] = "-", ck[16] = "-";
        peer_name(j, r, name, sizeof name);
        if (p->step) snprintf(step, sizeof step, "%d/%d", p->step, p->max_step);
        if (p->step) snprintf(loss, sizeof loss, "%.4f", p->loss);
        if (p->tok_s > 0) snprintf(tok, sizeof tok, "%.0f", p->tok_s);
        if (p->sent_mb >= 0) fmt_bytes(sent, sizeof sent, p->sent_mb);
        if (p->peers >= 0) snprintf(peers, sizeof peers, "%d", p->peers);
        if (p->stale >= 0) snprintf(stale, sizeof stale, "%.2f", p->stale);
        if (p->ckpt_step) snprintf(ck, sizeof ck, "%d", p->ckpt_step);
        fprintf(f, "%-22s %-12s %9s %8s %8s %10s %5s %6s %8s\n", name, p->status, step, loss, tok,
                sent, peers, stale, ck);
    }
}

// On a terminal the peer table stays under the scrolling log: it is erased before a line is
// printed and drawn again after.
static void table_erase(job *j) {
    if (j->tty && j->table_lines) printf("\033[%dA\033[J", j->table_lines);
    j->table_lines = 0;
}

static void table_draw(job *j) {
    if (!j->tty) return;
    print_peer_table(j, stdout);
    j->table_lines = j->plan.n + 1;
    fflush(stdout);
}

// ---- 4. run ----

// parse_progress reads the figures of a peer's log line into its state: the progress line
// (step=S/M loss= tok/s= sent_mb= peers= stale=), val_loss=, and "checkpoint step=".
static void parse_progress(peer_state *p, const char *line) {
    int is_ckpt = strstr(line, " checkpoint step=") != NULL;
    char buf[PROC_LINE_MAX];
    snprintf(buf, sizeof buf, "%s", line);
    char *save = NULL;
    for (char *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(t, '=');
        if (!eq) continue;
        *eq = 0;
        const char *k = t, *v = eq + 1;
        if (!strcmp(k, "step")) {
            if (is_ckpt)
                p->ckpt_step = atoi(v);
            else if (strchr(v, '/'))
                sscanf(v, "%d/%d", &p->step, &p->max_step);
        } else if (!strcmp(k, "loss"))
            p->loss = atof(v);
        else if (!strcmp(k, "val_loss"))
            p->val = atof(v);
        else if (!strcmp(k, "tok/s"))
            p->tok_s = atof(v);
        else if (!strcmp(k, "sent_mb"))
            p->sent_mb = atof(v);
        else if (!strcmp(k, "peers"))
            p->peers = atoi(v);
        else if (!strcmp(k, "stale"))
            p->stale = atof(v);
    }
}

static void run_line(void *ctx, int r, const char *line) {
    job *j = ctx;
    peer_state *p = &j->ps[r];
    int had = p->step;
    parse_progress(p, line);
    if (!had && p->step && ++j->first_steps == j->plan.n) {
        table_erase(j);
        double now = sys_now_ms();
        printf("launch: every peer has made its first step, %.1f s after the launch (%.1f s "
               "after they started)\n",
               (now - j->launched_ms) / 1e3, (now - j->started_ms) / 1e3);
    }
    char name[300];
    peer_name(j, r, name, sizeof name);
    table_erase(j);
    printf("%s %s\n", name, line);
    table_draw(j);
    if (!j->tty) fflush(stdout);
}

// stop_all asks every running peer to stop (end of its connection's input).
static void stop_all(job *j) {
    for (int r = 0; r < j->plan.n; r++)
        proc_close_stdin(&j->procs[r]);
}

static int run_peers(job *j) {
    int n = j->plan.n, stopping = 0, failures = 0;
    double kill_at = 0;
    j->procs = xcalloc((size_t)n, sizeof *j->procs);
    j->started_ms = sys_now_ms();
    for (int r = 0; r < n; r++) {
        peer_state *p = &j->ps[r];
        p->sent_mb = p->stale = -1;
        p->peers = -1;
        snprintf(p->status, sizeof p->status, "starting");
        char *cmd = launch_cmd_peer(&j->plan, r);
        if (proc_start(&j->procs[r], cmd, 1, NULL, 0)) {
            snprintf(p->status, sizeof p->status, "not started");
            p->exited = 1;
            failures++;
        }
        free(cmd);
    }
    fprintf(stderr, "launch: %d peers started (rank 0 founds the group at %s)%s\n", n, j->plan.join,
            j->tty ? "" : "; Ctrl-C stops them all");
    table_draw(j);
    int handled = 0;
    for (;;) {
        int left = proc_poll(j->procs, n, 250, run_line, j);
        for (int r = 0; r < n; r++) { // newly ended peers
            peer_state *p = &j->ps[r];
            if (p->exited || !j->procs[r].exited) {
                if (!p->exited && p->step && !strcmp(p->status, "starting"))
                    snprintf(p->status, sizeof p->status, "running");
                continue;
            }
            p->exited = 1;
            int st = j->procs[r].status;
            p->ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
            if (WIFEXITED(st) && WEXITSTATUS(st) == 255)
                snprintf(p->status, sizeof p->status, "ssh lost");
            else
                proc_describe(st, p->status, sizeof p->status);
            char name[300];
            peer_name(j, r, name, sizeof name);
            table_erase(j);
            if (!p->ok) {
                failures++;
                printf("launch: %s %s%s\n", name,
                       !strcmp(p->status, "ssh lost") ? "lost its ssh connection (exit 255)"
                                                      : p->status,
                       stopping ? ""
                       : !strcmp(j->a.on_failure, "stop")
                           ? ": stopping the others (--on-failure stop)"
                           : ": the others go on (--on-failure continue)");
                if (!stopping && !strcmp(j->a.on_failure, "stop")) {
                    stopping = 1;
                    kill_at = sys_now_ms() + j->a.stop_s * 1000.0;
                    stop_all(j);
                }
            } else {
                printf("launch: %s finished (%s)\n", name, p->status);
            }
            table_draw(j);
        }
        if (!left) break;
        if (interrupts > handled) {
            handled = interrupts;
            table_erase(j);
            if (!stopping) {
                printf("launch: stopping every peer (each saves a checkpoint; Ctrl-C again "
                       "kills them)\n");
                stopping = 1;
                kill_at = sys_now_ms() + j->a.stop_s * 1000.0;
                stop_all(j);
            } else {
                printf("launch: killing the ssh connections (the peers get SIGTERM)\n");
                kill_at = sys_now_ms();
            }
            table_draw(j);
        }
        if (stopping && sys_now_ms() >= kill_at) {
            for (int r = 0; r < n; r++)
                proc_kill(&j->procs[r], SIGTERM);
            kill_at = sys_now_ms() + 2000;
        }
    }
    table_erase(j);
    for (int r = 0; r < n; r++)
        proc_free(&j->procs[r]);
    return failures;
}

// ---- 5. fetch, summary ----

static void fetch_line(job *j, int r, const char *line) {
    char name[300];
    peer_name(j, r, name, sizeof name);
    fprintf(stderr, "  %s: %s\n", name, line);
}

static int fetch(job *j) {
    int n = j->plan.n, bad = 0;
    if (sys_mkdir_p(j->a.fetch)) {
        fprintf(stderr, "launch: --fetch: %s\n", err_msg());
        return 1;
    }
    char **cmds = xcalloc((size_t)n, sizeof *cmds);
    int *st = xcalloc((size_t)n, sizeof *st), *who = xcalloc((size_t)n, sizeof *who);
    for (int r = 0; r < n; r++) {
        who[r] = r;
        cmds[r] = launch_cmd_fetch(&j->plan, r, j->a.fetch);
    }
    fprintf(stderr, "launch: fetching every peer's newest checkpoint into %s\n", j->a.fetch);
    phase ph = {.j = j, .name = "fetch", .who = who, .line = fetch_line};
    run_phase(&ph, cmds, NULL, n, j->a.build_s, st);
    for (int r = 0; r < n; r++) {
        char name[300], d[48];
        peer_name(j, r, name, sizeof name);
        if (st[r] != 0) {
            proc_describe(st[r], d, sizeof d);
            fprintf(stderr, "launch: %s: fetch failed (%s)\n", name, st[r] == -2 ? "timed out" : d);
            bad = 1;
        }
        free(cmds[r]);
    }
    free(cmds), free(st), free(who);
    return bad;
}

// ---- the command ----

static void usage(FILE *f, const args_opt *opts, int n) {
    fprintf(f, "usage: spartan launch HOSTFILE CONFIG [--set SECTION.KEY=VALUE ...] [options]\n\n"
               "Start and watch one training job across machines over ssh. HOSTFILE has one line\n"
               "per host: `host [user=U] [ssh_port=P] [port=P] [dir=D] [slots=N] [threads=N]`,\n"
               "`#` comments; MLX's JSON hostfile works too. Run it in a git checkout of spartan:\n"
               "every host gets the checkout's revision (with its uncommitted changes), builds it\n"
               "(unless built already), and gets the config and data.dir's files. Peers join rank\n"
               "0's group (--join) with their rank; their output comes back as `host:rank line`.\n"
               "Ctrl-C stops every peer (each saves a checkpoint); so does a lost connection,\n"
               "unless --detach. The exit status is 1 when a peer or host failed.\n\n");
    args_print_table(f, opts, n);
}

static int parse_args(int argc, char **argv, launch_args *a) {
    memset(a, 0, sizeof *a);
    a->ssh = getenv("SPARTAN_SSH");
    a->on_failure = "continue";
    a->preflight_s = 30;
    a->build_s = 1800;
    a->stop_s = 60;
    args_opt opts[] = {
        {"--set", NULL, ARGS_REPEAT, a, 0, 0, add_set, "SECTION.KEY=VALUE",
         "override a config key on every peer (repeatable)"},
        {"--ssh", NULL, ARGS_STR, &a->ssh, 0, 0, NULL, "COMMAND",
         "the ssh program and its options, e.g. 'ssh -F cluster.sshconfig' (else SPARTAN_SSH;\n"
         "default: " LAUNCH_DEFAULT_SSH ")"},
        {"--dir", NULL, ARGS_STR, &a->dir, 0, 0, NULL, "DIR",
         "the folder on hosts without dir= [~/" LAUNCH_DEFAULT_DIR "]"},
        {"--name", NULL, ARGS_STR, &a->name, 0, 0, NULL, "NAME",
         "the run's name: its folder DIR/runs/NAME on every host [the config's file name]"},
        {"--keys", NULL, ARGS_STR, &a->keys, 0, 0, NULL, "DIR",
         "a cluster folder of `spartan keys` (made if missing): each host gets the CA's\n"
         "certificate and its own certificate and key (never the CA key), and the peers run with\n"
         "net.tls. Used by default (~/.spartan/keys) when a peer is beyond loopback and the\n"
         "config sets neither net.tls nor net.insecure"},
        {"--install-deps", NULL, ARGS_FLAG, &a->install_deps, 0, 0, NULL, NULL,
         "run scripts/install-deps on hosts that miss dependencies"},
        {"--on-failure", NULL, ARGS_STR, &a->on_failure, 0, 0, NULL, "stop|continue",
         "what one failed peer does to the rest [continue: SPARTA and DiLoCo go on without it]"},
        {"--fetch", NULL, ARGS_STR, &a->fetch, 0, 0, NULL, "DIR",
         "copy every peer's newest checkpoint and metrics.csv to DIR/r<rank> at the end"},
        {"--detach", NULL, ARGS_FLAG, &a->detach, 0, 0, NULL, NULL,
         "start the peers and return; they keep running (logs in DIR/runs/NAME/r<rank>.log)"},
        {"--stop", NULL, ARGS_FLAG, &a->stop, 0, 0, NULL, NULL,
         "stop the detached peers of this run (SIGTERM: each saves a checkpoint)"},
        {"--resume", NULL, ARGS_FLAG, &a->resume, 0, 0, NULL, NULL,
         "every peer continues from its newest checkpoint of this run"},
        {"--overwrite", NULL, ARGS_FLAG, &a->overwrite, 0, 0, NULL, NULL,
         "start afresh where the run's folders hold an earlier run"},
        {"--dry-run", NULL, ARGS_FLAG, &a->dry_run, 0, 0, NULL, NULL,
         "print every command per host, run nothing"},
        {"--plain", NULL, ARGS_FLAG, &a->plain, 0, 0, NULL, NULL,
         "plain lines even on a terminal (no live table)"},
        {"--no-ssh-share", NULL, ARGS_FLAG, &a->no_share, 0, 0, NULL, NULL,
         "one ssh login per command (by default the commands to a host share one OpenSSH\n"
         "connection: ControlMaster, unless --ssh sets Control* options itself)"},
        {"--status-port", NULL, ARGS_INT, &a->status_port, 1, 65535, NULL, "PORT",
         "peer slot s of each host serves /status, /metrics and the cluster page on PORT+s\n"
         "(net.status_port, on every interface: net.status_host=0.0.0.0 unless --set says\n"
         "otherwise; `spartan status HOST:PORT` reads it)"},
        {"--preflight-timeout", NULL, ARGS_INT, &a->preflight_s, 1, 3600, NULL, "S",
         "seconds for the preflight of all hosts [30]"},
        {"--build-timeout", NULL, ARGS_INT, &a->build_s, 1, 86400, NULL, "S",
         "seconds for shipping and building [1800]"},
        {"--stop-timeout", NULL, ARGS_INT, &a->stop_s, 1, 3600, NULL, "S",
         "seconds stopping peers may take before their connections are killed [60]"},
    };
    const char *pos[2];
    int n_pos = 0;
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), pos, 2, &n_pos);
    if (rc == ARGS_HELP) {
        usage(stdout, opts, ARGS_COUNT(opts));
        return ARGS_HELP;
    }
    if (!rc && n_pos != 2)
        rc = err_set(ERR_INVAL, "expected HOSTFILE and CONFIG (see spartan launch --help)");
    if (!rc && strcmp(a->on_failure, "stop") && strcmp(a->on_failure, "continue"))
        rc = err_set(ERR_INVAL, "--on-failure '%s': expected stop or continue", a->on_failure);
    if (!rc && a->detach && a->fetch)
        rc =
            err_set(ERR_INVAL, "--fetch needs the launcher to wait for the end: not with --detach");
    if (!rc && a->resume && a->overwrite)
        rc = err_set(ERR_INVAL, "--resume and --overwrite contradict each other");
    if (rc) return rc;
    a->hostfile = pos[0];
    a->config = pos[1];
    return ERR_OK;
}

// run_name is the config's file name without its folder and .ini.
static void run_name(const char *config, char *buf, size_t n) {
    const char *b = strrchr(config, '/');
    b = b ? b + 1 : config;
    snprintf(buf, n, "%s", b);
    char *dot = strrchr(buf, '.');
    if (dot && dot != buf) *dot = 0;
}

static void dry_run(job *j) {
    const char *files[MAX_DATA_FILES];
    for (int i = 0; i < j->n_files; i++)
        files[i] = j->files[i];
    for (int h = 0; h < j->hf.n; h++) {
        printf("# host %s\n", j->hs[h].label);
        char *c = launch_cmd_preflight(&j->plan, h);
        printf("## preflight (its stdin: a script that ends in scripts/check-deps)\n%s\n", c);
        free(c);
        c = launch_cmd_build(&j->plan, h, j->src, j->commit);
        printf("## ship and build revision %s (unless built there)\n%s\n", j->rev, c);
        free(c);
        if (j->n_files) {
            c = launch_cmd_data(&j->plan, h, j->data_dir, files, j->n_files);
            printf("## ship the data (unless there)\n%s\n", c);
            free(c);
        }
        c = launch_cmd_config(&j->plan, h, j->a.config);
        printf("## ship the config\n%s\n", c);
        free(c);
        if (j->keys[0]) {
            c = launch_cmd_keys(&j->plan, h);
            printf("## ship the host's certificate and key (from %s)\n%s\n", j->keys, c);
            free(c);
        }
        c = launch_cmd_probe(&j->plan, h, 10000);
        printf("## probe the peer ports\n%s\n", c);
        free(c);
        for (int r = 0; r < j->plan.n; r++) {
            if (j->plan.peers[r].host != h) continue;
            c = launch_cmd_peer(&j->plan, r);
            printf("## peer rank %d\n%s\n", r, c);
            free(c);
            if (j->a.fetch) {
                c = launch_cmd_fetch(&j->plan, r, j->a.fetch);
                printf("## fetch rank %d\n%s\n", r, c);
                free(c);
            }
        }
        printf("\n");
    }
}

// stop_detached runs --stop: SIGTERM to the detached peers of the run on every host.
static int stop_detached(job *j) {
    int n = j->hf.n, bad = 0;
    char **cmds = xcalloc((size_t)n, sizeof *cmds);
    int *st = xcalloc((size_t)n, sizeof *st), *who = xcalloc((size_t)n, sizeof *who);
    for (int h = 0; h < n; h++)
        who[h] = h, cmds[h] = launch_cmd_stop(&j->plan, h);
    phase ph = {.j = j, .name = "stop", .who = who, .line = ship_line};
    run_phase(&ph, cmds, NULL, n, j->a.preflight_s, st);
    for (int h = 0; h < n; h++) {
        if (st[h] != 0) {
            why_failed(j, h, st[h], "stop", j->a.preflight_s);
            fprintf(stderr, "launch: %s: %s\n", j->hs[h].label, j->hs[h].reason);
            bad = 1;
        }
        free(cmds[h]);
    }
    free(cmds), free(st), free(who);
    return bad;
}

static void summary(job *j, int failures) {
    printf("\n");
    print_peer_table(j, stdout);
    int ok = j->plan.n - failures;
    printf("\nlaunch: %d of %d peers finished cleanly", ok, j->plan.n);
    if (failures) {
        printf("; failed:");
        for (int r = 0; r < j->plan.n; r++) {
            if (j->ps[r].ok) continue;
            char name[300];
            peer_name(j, r, name, sizeof name);
            printf(" %s (%s)", name, j->ps[r].status);
        }
    }
    printf("\n");
}

// close_shared ends the shared ssh connections (ssh -O exit; a connection that is gone already
// just fails) and removes their folder.
static void close_shared(job *j, const char *control) {
    for (int h = 0; h < j->hf.n; h++) {
        char *cmd = launch_cmd_ssh_exit(&j->plan, h);
        proc_run(cmd, NULL, 0, 5000, NULL, NULL);
        free(cmd);
    }
    DIR *d = opendir(control); // sockets of masters that did not answer
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[400];
        snprintf(path, sizeof path, "%s/%s", control, e->d_name);
        unlink(path);
    }
    if (d) closedir(d);
    rmdir(control);
}

// prepare_keys decides whether the peers get keys (--keys, or by default when a peer is beyond
// loopback and the config sets neither net.tls nor net.insecure) and, unless make is 0 (a dry
// run), makes the cluster folder's CA and each host's certificate where missing and checks them.
// Sets j->keys and the plan's o.keys. Returns ERR_OK or the error (message set).
static int prepare_keys(job *j, const cfg *c, int make) {
    if (j->plan.n < 2) return ERR_OK;
    if (c->net.tls || c->net.insecure) { // the user chose: their files, or no keys
        if (j->a.keys)
            fprintf(stderr, "launch: --keys ignored: the config sets net.%s itself\n",
                    c->net.tls ? "tls" : "insecure");
        return ERR_OK;
    }
    if (!j->a.keys && !launch_needs_keys(&j->plan)) return ERR_OK;
    if (j->a.keys) {
        snprintf(j->keys, sizeof j->keys, "%s", j->a.keys);
    } else {
        const char *home = getenv("HOME");
        snprintf(j->keys, sizeof j->keys, "%s/.spartan/keys", home && home[0] ? home : ".");
    }
    j->plan.o.keys = j->keys;
    if (!make) return ERR_OK;
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/ca.crt", j->keys);
    int rc = ERR_OK;
    if (access(path, F_OK) != 0) {
        if (!j->a.keys) {
            snprintf(path, sizeof path, "%s/.spartan", getenv("HOME") ? getenv("HOME") : ".");
            mkdir(path, 0700);
        }
        rc = pki_ca_init(j->keys, "spartan cluster", 3650);
        if (rc) return rc;
        fprintf(stderr, "launch: made a cluster CA in %s (keep %s/ca.key private)\n", j->keys,
                j->keys);
    }
    for (int h = 0; h < j->hf.n && !rc; h++) {
        char name[PKI_NAME_MAX + 8], ca[PATH_MAX + 8], crt[PATH_MAX + 80], key[PATH_MAX + 80];
        launch_key_name(&j->plan, h, name, sizeof name);
        snprintf(ca, sizeof ca, "%s/ca.crt", j->keys);
        snprintf(crt, sizeof crt, "%s/%s.crt", j->keys, name);
        snprintf(key, sizeof key, "%s/%s.key", j->keys, name);
        if (access(crt, F_OK) != 0) {
            rc = pki_issue(j->keys, name, 825);
            if (!rc) fprintf(stderr, "launch: %s: issued certificate %s\n", j->hs[h].label, crt);
        }
        if (!rc && (rc = pki_check_peer(ca, crt, key)))
            rc = err_set(rc, "host %s: %s", j->hs[h].label, err_msg());
    }
    return rc;
}

int launch_cmd_main(int argc, char **argv) {
    double t_launch = sys_now_ms();
    job j;
    memset(&j, 0, sizeof j);
    int rc = parse_args(argc, argv, &j.a);
    if (rc == ARGS_HELP) return 0;
    if (rc) {
        fprintf(stderr, "spartan launch: %s\n", err_msg());
        return 2;
    }
    cfg c;
    cfg_defaults(&c);
    rc = hostfile_load(&j.hf, j.a.hostfile);
    if (!rc) rc = cfg_load_ini(&c, j.a.config);
    for (int i = 0; i < j.a.n_sets && !rc; i++)
        rc = cfg_set(&c, j.a.sets[i]);
    if (!rc) rc = cfg_validate(&c);
    if (rc) {
        fprintf(stderr, "spartan launch: %s\n", err_msg());
        hostfile_free(&j.hf);
        return 2;
    }
    char name[128];
    run_name(j.a.config, name, sizeof name);
    if (!j.a.name) j.a.name = name;
    if (!j.a.stop) rc = find_revision(&j);
    if (!rc && !j.a.stop) rc = find_data(&j, &c);
    launch_opts o = {.ssh = j.a.ssh,
                     .dir = j.a.dir,
                     .name = j.a.name,
                     .rev = j.rev[0] ? j.rev : "none",
                     .data_id = j.data_id,
                     .sets = j.a.sets,
                     .n_sets = j.a.n_sets,
                     .install_deps = j.a.install_deps,
                     .detach = j.a.detach,
                     .resume = j.a.resume,
                     .overwrite = j.a.overwrite,
                     .status_port = j.a.status_port};
    // one ssh connection per host for all phases (a login costs ~0.3 s even on a LAN); a short
    // folder in /tmp: a socket's path has at most ~104 bytes (macOS's TMPDIR alone is ~50)
    char control[64] = "";
    if (!rc && !j.a.dry_run && !j.a.no_share && launch_ssh_can_share(j.a.ssh)) {
        snprintf(control, sizeof control, "/tmp/spartan-ssh-XXXXXX");
        if (mkdtemp(control))
            o.ssh_control = control;
        else
            control[0] = 0; // no sharing: every command logs in on its own
    }
    if (!rc) rc = launch_plan_make(&j.plan, &j.hf, &o);
    if (rc) {
        fprintf(stderr, "spartan launch: %s\n", err_msg());
        hostfile_free(&j.hf);
        return 2;
    }
    j.launched_ms = t_launch;
    j.hs = xcalloc((size_t)j.hf.n, sizeof *j.hs);
    label_hosts(&j);
    j.ps = xcalloc((size_t)j.plan.n, sizeof *j.ps);
    j.tty = isatty(1) && !j.a.plain;
    if (!j.a.stop && (rc = prepare_keys(&j, &c, !j.a.dry_run))) {
        fprintf(stderr, "spartan launch: keys: %s\n", err_msg());
        free(j.hs);
        free(j.ps);
        if (control[0]) rmdir(control);
        launch_plan_free(&j.plan);
        hostfile_free(&j.hf);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term, old_hup;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);
    int status = 0;
    if (j.a.dry_run) {
        dry_run(&j);
    } else if (j.a.stop) {
        status = stop_detached(&j);
    } else {
        double t0 = sys_now_ms();
        int phase_rc = preflight(&j);
        int bad = 0;
        for (int h = 0; h < j.hf.n; h++)
            bad |= j.hs[h].failed;
        if (!phase_rc && !bad) phase_rc = ship(&j);
        for (int h = 0; h < j.hf.n; h++)
            bad |= j.hs[h].failed;
        if (!phase_rc && !bad) phase_rc = probe(&j);
        for (int h = 0; h < j.hf.n; h++) {
            bad |= j.hs[h].failed;
            // the cores of a host are shared among its peers, unless the hostfile says threads=
            for (int r = 0; r < j.plan.n; r++)
                if (j.plan.peers[r].host == h && !j.plan.peers[r].threads && j.hs[h].cores > 0) {
                    int t = j.hs[h].cores / j.hf.hosts[h].slots;
                    j.plan.peers[r].threads = t > 0 ? t : 1;
                }
        }
        print_host_table(&j, stderr);
        if (phase_rc) {
            fprintf(stderr, "launch: interrupted: nothing started\n");
            status = 130;
        } else if (bad) {
            fprintf(stderr, "launch: nothing started: fix the hosts above\n");
            status = 1;
        } else if (j.a.detach) {
            fprintf(stderr, "launch: ready in %.1f s\n", (sys_now_ms() - t0) / 1e3);
            for (int r = 0; r < j.plan.n; r++) {
                char *cmd = launch_cmd_peer(&j.plan, r), pname[300], line[64] = "";
                peer_name(&j, r, pname, sizeof pname);
                int st = proc_run(cmd, NULL, 0, j.a.preflight_s * 1000, capture_line, line);
                printf("%s %s\n", pname, st == 0 ? line : "failed to start");
                status |= st != 0;
                free(cmd);
            }
            printf("launch: detached; stop the run with: spartan launch %s %s --stop%s%s\n",
                   j.a.hostfile, j.a.config, j.a.name != name ? " --name " : "",
                   j.a.name != name ? j.a.name : "");
        } else {
            fprintf(stderr, "launch: ready in %.1f s\n", (sys_now_ms() - t0) / 1e3);
            int failures = run_peers(&j);
            int fetch_bad = j.a.fetch ? fetch(&j) : 0;
            summary(&j, failures);
            status = interrupts ? 130 : failures || fetch_bad ? 1 : 0;
        }
    }
    if (control[0]) close_shared(&j, control);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    free(j.hs);
    free(j.ps);
    free(j.procs);
    launch_plan_free(&j.plan);
    hostfile_free(&j.hf);
    return status;
}
