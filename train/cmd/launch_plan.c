// launch_plan.c: the peers of a launch and the shell commands that run them (launch_plan.h).
// Every command is written for /bin/sh on the launcher's machine: `SSH [-p P] [-l U] HOST
// 'sh -c SCRIPT'`, the script quoted once for the local shell and once for the remote one. The
// remote login shell may be zsh (macOS): the scripts themselves always run under sh.
#include "train/cmd/launch_plan.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/base/pki.h"

void launch_shell_quote(FILE *f, const char *s) {
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'')
            fputs("'\\''", f);
        else
            fputc(*s, f);
    }
    fputc('\'', f);
}

// A growing text: open_memstream's FILE, closed by sb_done into the malloc'd string.
typedef struct sb {
    FILE *f;
    char *buf;
    size_t len;
} sb;

static void sb_open(sb *b) {
    b->buf = NULL;
    b->len = 0;
    b->f = open_memstream(&b->buf, &b->len);
    if (!b->f) err_oom("launch command", 4096);
}

static char *sb_done(sb *b) {
    if (fclose(b->f) != 0 || !b->buf) err_oom("launch command", b->len);
    return b->buf;
}

static int valid_name(const char *s) {
    if (!*s || *s == '.' || *s == '-') return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

int launch_plan_make(launch_plan *p, const hostfile *hf, const launch_opts *o) {
    memset(p, 0, sizeof *p);
    if (!o->name || !valid_name(o->name))
        return err_set(ERR_INVAL, "launch: run name '%s': use letters, digits, '.', '_' and '-'",
                       o->name ? o->name : "");
    launch_peer *peers = xcalloc((size_t)hf->peers, sizeof *peers);
    int r = 0;
    for (int h = 0; h < hf->n; h++) {
        const hostfile_host *e = &hf->hosts[h];
        int base = e->port ? e->port : LAUNCH_DEFAULT_PORT;
        int top = base, st = o->status_port;
        if (base + e->slots - 1 <= 65535 && st > 0 && st + e->slots - 1 > 65535) top = st;
        if (top + e->slots - 1 > 65535) {
            free(peers);
            return err_set(ERR_INVAL, "launch: host %s: %s ports %d..%d are past 65535", e->host,
                           top == base ? "peer" : "status", top, top + e->slots - 1);
        }
        for (int s = 0; s < e->slots; s++, r++) {
            launch_peer *q = &peers[r];
            q->rank = r;
            q->host = h;
            q->slot = s;
            q->port = base + s;
            q->threads = e->threads;
            snprintf(q->addr, sizeof q->addr, "%s", e->n_ips ? e->ips[0] : e->host);
        }
    }
    p->hf = hf;
    p->o = *o;
    if (!p->o.ssh || !*p->o.ssh) p->o.ssh = LAUNCH_DEFAULT_SSH;
    if (!p->o.dir || !*p->o.dir) p->o.dir = LAUNCH_DEFAULT_DIR;
    if (!p->o.data_id) p->o.data_id = "";
    p->peers = peers;
    p->n = r;
    const launch_peer *z = &peers[0];
    // an IPv6 address goes in brackets in host:port
    snprintf(p->join, sizeof p->join, strchr(z->addr, ':') ? "[%s]:%d" : "%s:%d", z->addr, z->port);
    return ERR_OK;
}

void launch_plan_free(launch_plan *p) {
    if (!p) return;
    free(p->peers);
    p->peers = NULL;
    p->n = 0;
}

// has_word_ci: needle occurs in s, ignoring case (ssh options are case-insensitive).
static int has_word_ci(const char *s, const char *needle) {
    size_t n = strlen(needle);
    for (; *s; s++)
        if (strncasecmp(s, needle, n) == 0) return 1;
    return 0;
}

int launch_ssh_can_share(const char *ssh) {
    if (!ssh || !*ssh) return 1;
    const char *end = ssh + strcspn(ssh, " \t"), *base = end;
    while (base > ssh && base[-1] != '/')
        base--;
    if (end - base != 3 || strncmp(base, "ssh", 3) != 0) return 0;
    static const char *const own[] = {"ControlMaster", "ControlPath", "ControlPersist"};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (has_word_ci(ssh, own[i])) return 0;
    return 1;
}

// ssh_prefix writes `SSH [sharing] [-p PORT] [-l USER] HOST ` for host entry h. A shared
// connection outlives its last session by 15 s (the next phase's command reuses it).
static void ssh_prefix(sb *b, const launch_plan *p, int h) {
    const hostfile_host *e = &p->hf->hosts[h];
    fprintf(b->f, "%s", p->o.ssh);
    if (p->o.ssh_control) {
        fputs(" -o ControlMaster=auto -o ControlPersist=15 -o ControlPath=", b->f);
        sb tmp;
        sb_open(&tmp);
        fprintf(tmp.f, "%s/%%C", p->o.ssh_control);
        char *path = sb_done(&tmp);
        launch_shell_quote(b->f, path);
        free(path);
    }
    if (e->ssh_port != 22) fprintf(b->f, " -p %d", e->ssh_port);
    if (e->user[0]) fprintf(b->f, " -l %s", e->user);
    fprintf(b->f, " %s ", e->host);
}

// prelude writes the script lines every remote script starts with: D (the host's folder, made
// absolute), S (the revision's tree), R (the run's folder), P (the data folder), and a PATH that
// has Homebrew's tools (a non-interactive macOS login does not).
static void prelude(sb *b, const launch_plan *p, int h) {
    const hostfile_host *e = &p->hf->hosts[h];
    fputs("PATH=$PATH:/opt/homebrew/bin:/usr/local/bin; export PATH\nD=", b->f);
    launch_shell_quote(b->f, e->dir[0] ? e->dir : p->o.dir);
    fputs("\ncase $D in \"~\") D=$HOME ;; \"~/\"*) D=$HOME/${D#\"~/\"} ;; esac\n"
          "case $D in /*) ;; *) D=$HOME/$D ;; esac\n",
          b->f);
    fprintf(b->f, "S=$D/src/%s; R=$D/runs/%s; P=$D/data/%s\n", p->o.rev, p->o.name,
            p->o.data_id[0] ? p->o.data_id : "none");
}

// remote finishes a command that runs script (sb s, consumed) on host h through `sh -c`, with
// optional local text before (a pipeline feeding it) and after (a redirection) the ssh call.
static char *remote(const launch_plan *p, int h, sb *s, const char *before, const char *after) {
    char *script = sb_done(s);
    sb inner, b;
    sb_open(&inner);
    fputs("sh -c ", inner.f);
    launch_shell_quote(inner.f, script);
    char *rcmd = sb_done(&inner);
    sb_open(&b);
    if (before) fputs(before, b.f);
    ssh_prefix(&b, p, h);
    launch_shell_quote(b.f, rcmd);
    if (after) fputs(after, b.f);
    free(rcmd);
    free(script);
    return sb_done(&b);
}

// ssh_then is the ssh command to host h followed by tail (its remote command and options).
static char *ssh_then(const launch_plan *p, int h, const char *tail) {
    sb b;
    sb_open(&b);
    ssh_prefix(&b, p, h);
    fputs(tail, b.f);
    return sb_done(&b);
}

char *launch_cmd_ssh_exit(const launch_plan *p, int host) {
    return ssh_then(p, host, "-O exit 2>/dev/null");
}

char *launch_cmd_preflight(const launch_plan *p, int host) {
    return ssh_then(p, host, "'sh -s run'");
}

char *launch_preflight_script(const launch_plan *p, int host, const char *check_deps) {
    sb b;
    sb_open(&b);
    prelude(&b, p, host);
    fputs("echo \"preflight os=$(uname -s) arch=$(uname -m)\"\n"
          "echo \"preflight cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu)\"\n"
          "d=$D; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done\n"
          "echo \"preflight disk_kb=$(df -Pk \"$d\" | awk 'NR==2 {print $4}')\"\n"
          "if [ -f \"$S/.built\" ]; then echo preflight built=1; else echo preflight built=0; fi\n"
          "if [ -f \"$P/.complete\" ]; then echo preflight data=1; else echo preflight data=0; fi\n"
          "for t in make cc tar; do\n"
          "    command -v $t >/dev/null 2>&1 || echo \"preflight missing=$t\"\n"
          "done\n"
          "VERBOSE=1\n",
          b.f);
    fputs(check_deps, b.f);
    return sb_done(&b);
}

char *launch_cmd_build(const launch_plan *p, int host, const char *src, const char *commit) {
    sb s, pre;
    sb_open(&s);
    prelude(&s, p, host);
    fputs("rm -rf \"$S.part\" && mkdir -p \"$S.part\" && tar -xf - -C \"$S.part\" || exit 1\n"
          "cd \"$S.part\" || exit 1\n",
          s.f);
    if (p->o.install_deps)
        fputs("sh scripts/install-deps run > install-deps.log 2>&1 ||\n"
              "    { tail -n 20 install-deps.log; echo 'scripts/install-deps failed'; exit 1; }\n",
              s.f);
    fputs("n=$(getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu)\n"
          "make -j\"$n\" all > build.log 2>&1 || { tail -n 20 build.log; echo 'build failed'; exit "
          "1; }\n"
          "cd \"$D/src\" && rm -rf \"$S\" && mv \"$S.part\" \"$S\" && touch \"$S/.built\" && echo "
          "built\n",
          s.f);
    sb_open(&pre);
    fputs("git -C ", pre.f);
    launch_shell_quote(pre.f, src);
    fprintf(pre.f, " archive --format=tar %s | ", commit);
    char *before = sb_done(&pre);
    char *cmd = remote(p, host, &s, before, NULL);
    free(before);
    return cmd;
}

char *launch_cmd_data(const launch_plan *p, int host, const char *dir, const char *const *files,
                      int n) {
    sb s, pre;
    sb_open(&s);
    prelude(&s, p, host);
    fputs("rm -rf \"$P.part\" && mkdir -p \"$P.part\" && tar -xf - -C \"$P.part\" &&\n"
          "touch \"$P.part/.complete\" && rm -rf \"$P\" && mv \"$P.part\" \"$P\" && echo shipped\n",
          s.f);
    sb_open(&pre);
    fputs("tar -cf - -C ", pre.f);
    launch_shell_quote(pre.f, dir);
    for (int i = 0; i < n; i++) {
        fputc(' ', pre.f);
        launch_shell_quote(pre.f, files[i]);
    }
    fputs(" | ", pre.f);
    char *before = sb_done(&pre);
    char *cmd = remote(p, host, &s, before, NULL);
    free(before);
    return cmd;
}

char *launch_cmd_config(const launch_plan *p, int host, const char *config) {
    sb s, post;
    sb_open(&s);
    prelude(&s, p, host);
    fputs("mkdir -p \"$R\" && cat > \"$R/config.ini.part\" && mv \"$R/config.ini.part\" "
          "\"$R/config.ini\"\n",
          s.f);
    sb_open(&post);
    fputs(" < ", post.f);
    launch_shell_quote(post.f, config);
    char *after = sb_done(&post);
    char *cmd = remote(p, host, &s, NULL, after);
    free(after);
    return cmd;
}

void launch_key_name(const launch_plan *p, int h, char *buf, size_t n) {
    char base[PKI_NAME_MAX + 1];
    for (int k = 0;; k++) {
        const char *src = p->hf->hosts[k].host;
        size_t i = 0;
        for (; src[i] && i < PKI_NAME_MAX - 4; i++) {
            char ch = src[i];
            int ok = isalnum((unsigned char)ch) || (i && (ch == '.' || ch == '-' || ch == '_'));
            base[i] = ok ? ch : i ? '-' : 'h'; // never a leading '-' (tar would take an option)
        }
        base[i] = 0;
        if (!strcmp(base, "ca")) snprintf(base, sizeof base, "ca-host"); // ca.crt is the CA's
        if (k == h) break;
    }
    // an earlier host of the same name: this one is told apart by its index
    int dup = 0;
    for (int k = 0; k < h && !dup; k++) {
        char other[PKI_NAME_MAX + 8];
        launch_key_name(p, k, other, sizeof other);
        dup = !strcmp(other, base);
    }
    if (dup)
        snprintf(buf, n, "%s-%d", base, h);
    else
        snprintf(buf, n, "%s", base);
}

int launch_needs_keys(const launch_plan *p) {
    for (int r = 0; r < p->n; r++)
        if (!cfg_loopback_host(p->peers[r].addr)) return 1;
    return 0;
}

char *launch_cmd_keys(const launch_plan *p, int host) {
    char name[PKI_NAME_MAX + 8];
    launch_key_name(p, host, name, sizeof name);
    sb s, pre;
    sb_open(&s);
    prelude(&s, p, host);
    fputs("umask 077 && mkdir -p \"$R\" && rm -rf \"$R/tls.part\" && mkdir \"$R/tls.part\" &&\n"
          "tar -xf - -C \"$R/tls.part\" && chmod 600 \"$R/tls.part\"/*.key &&\n"
          "rm -rf \"$R/tls\" && mv \"$R/tls.part\" \"$R/tls\" && echo shipped\n",
          s.f);
    sb_open(&pre);
    fputs("tar -cf - -C ", pre.f);
    launch_shell_quote(pre.f, p->o.keys);
    fprintf(pre.f, " ca.crt %s.crt %s.key | ", name, name);
    char *before = sb_done(&pre);
    char *cmd = remote(p, host, &s, before, NULL);
    free(before);
    return cmd;
}

// addr_port writes host:port, an IPv6 address in brackets.
static void addr_port(FILE *f, const launch_peer *q) {
    fprintf(f, strchr(q->addr, ':') ? "[%s]:%d" : "%s:%d", q->addr, q->port);
}

char *launch_cmd_probe(const launch_plan *p, int host, int timeout_ms) {
    sb s, list;
    sb_open(&list);
    int nl = 0, nc = 0;
    fputs(" --listen ", list.f);
    for (int r = 0; r < p->n; r++) {
        if (p->peers[r].host != host) continue;
        fprintf(list.f, "%s", nl++ ? "," : "");
        addr_port(list.f, &p->peers[r]);
    }
    for (int r = 0; r < p->n; r++) {
        if (p->peers[r].host == host) continue;
        fputs(nc++ ? "," : " --connect ", list.f);
        addr_port(list.f, &p->peers[r]);
    }
    char *args = sb_done(&list);
    sb_open(&s);
    prelude(&s, p, host);
    fprintf(s.f, "exec \"$S/bin/spartan\" probe%s --timeout %d\n", args, timeout_ms);
    free(args);
    return remote(p, host, &s, NULL, NULL);
}

char *launch_cmd_peer(const launch_plan *p, int r) {
    const launch_peer *q = &p->peers[r];
    sb s, a;
    // the train command line
    sb_open(&a);
    // A job of one peer trains alone: no group to found or join.
    if (p->n > 1) fprintf(a.f, "env SPARTAN_WORLD_SIZE=%d ", p->n);
    fputs("\"$S/bin/spartan\" train \"$R/config.ini\"", a.f);
    // the status port is for `spartan status HOST:PORT` from the launcher's machine: every
    // interface, unless the user's --set (after this one) says otherwise
    if (p->o.status_port > 0) fputs(" --set net.status_host=0.0.0.0", a.f);
    if (p->o.keys) { // the host's own certificate (launch_cmd_keys put it there)
        char name[PKI_NAME_MAX + 8];
        launch_key_name(p, q->host, name, sizeof name);
        fprintf(a.f,
                " --set net.tls=true --set \"net.tls_ca=$R/tls/ca.crt\" --set "
                "\"net.tls_cert=$R/tls/%s.crt\" --set \"net.tls_key=$R/tls/%s.key\"",
                name, name);
    }
    for (int i = 0; i < p->o.n_sets; i++) {
        fputs(" --set ", a.f);
        launch_shell_quote(a.f, p->o.sets[i]);
    }
    if (p->o.data_id[0]) fputs(" --set \"data.dir=$P\"", a.f);
    fprintf(a.f, " --set \"train.out_dir=$R/r%d\"", r);
    if (p->n > 1) {
        fputs(" --set net.listen=", a.f);
        addr_port(a.f, q);
    }
    if (q->threads > 0) fprintf(a.f, " --set train.threads=%d", q->threads);
    if (p->o.status_port > 0) fprintf(a.f, " --set net.status_port=%d", p->o.status_port + q->slot);
    if (p->n > 1) fprintf(a.f, " --rank %d --join %s", r, p->join);
    if (p->o.resume) fprintf(a.f, " --resume \"$R/r%d\"", r);
    if (p->o.overwrite) fputs(" --overwrite", a.f);
    char *train = sb_done(&a);

    sb_open(&s);
    prelude(&s, p, q->host);
    fputs("cd \"$S\" && mkdir -p \"$R\" || exit 1\n", s.f);
    if (p->o.detach) {
        fprintf(s.f, "nohup %s > \"$R/r%d.log\" 2>&1 < /dev/null &\n", train, r);
        fprintf(s.f, "echo $! > \"$R/r%d.pid\"; echo \"started pid $! (log $R/r%d.log)\"\n", r, r);
    } else {
        // The peer runs in the background so that this shell can watch the connection: when its
        // input ends (the launcher stops the job, or the connection dies), the peer gets SIGTERM
        // (it saves a checkpoint and stops, as on SIGINT). Not SIGINT: sh starts background
        // commands with SIGINT ignored, and a signal that comes before the peer's handler is
        // installed would be lost. sh also gives background commands /dev/null as their input,
        // so the watcher reads the connection through descriptor 3. It holds no output
        // descriptor, so the connection closes when the peer exits.
        fprintf(s.f, "%s < /dev/null 2>&1 &\np=$!\necho $p > \"$R/r%d.pid\"\n", train, r);
        fprintf(s.f,
                "trap 'kill -TERM $p 2>/dev/null' INT TERM HUP\n"
                "exec 3<&0\n"
                "(cat <&3 > /dev/null 2>&1; kill -TERM $p 2>/dev/null) > /dev/null 2>&1 &\n"
                "w=$!\n"
                "exec 3<&-\n"
                "while :; do wait $p; rc=$?; kill -0 $p 2>/dev/null || break; done\n"
                "kill $w 2>/dev/null; rm -f \"$R/r%d.pid\"\nexit $rc\n",
                r);
    }
    free(train);
    return remote(p, q->host, &s, NULL, NULL);
}

char *launch_cmd_stop(const launch_plan *p, int host) {
    sb s;
    sb_open(&s);
    prelude(&s, p, host);
    fputs("n=0\n", s.f);
    for (int r = 0; r < p->n; r++) {
        if (p->peers[r].host != host) continue;
        fprintf(
            s.f,
            "if [ -f \"$R/r%d.pid\" ] && kill -TERM \"$(cat \"$R/r%d.pid\")\" 2>/dev/null; then\n"
            "    echo \"stopped rank %d\"; n=$((n + 1)); rm -f \"$R/r%d.pid\"\n"
            "else echo \"rank %d: not running\"; fi\n",
            r, r, r, r, r);
    }
    return remote(p, host, &s, NULL, NULL);
}

char *launch_cmd_fetch(const launch_plan *p, int r, const char *dir) {
    sb s, post;
    sb_open(&s);
    prelude(&s, p, p->peers[r].host);
    fprintf(s.f,
            "cd \"$R/r%d\" || exit 1\n"
            "f=$(ls -1 ckpt_*.h5 2>/dev/null | tail -n 1)\n"
            "[ -n \"$f\" ] || { echo \"no checkpoint in $R/r%d\" >&2; exit 1; }\n"
            "m=; [ -f metrics.csv ] && m=metrics.csv\n"
            "tar -cf - \"$f\" $m\n",
            r, r);
    sb_open(&post);
    fprintf(post.f, " | tar -xf - -C ");
    char sub[32];
    snprintf(sub, sizeof sub, "/r%d", r);
    size_t n = strlen(dir) + strlen(sub) + 1;
    char *dest = xmalloc(n);
    snprintf(dest, n, "%s%s", dir, sub);
    launch_shell_quote(post.f, dest);
    char *after = sb_done(&post);
    sb pre;
    sb_open(&pre);
    fputs("mkdir -p ", pre.f);
    launch_shell_quote(pre.f, dest);
    fputs(" && ", pre.f);
    char *before = sb_done(&pre);
    char *cmd = remote(p, p->peers[r].host, &s, before, after);
    free(before);
    free(after);
    free(dest);
    return cmd;
}
