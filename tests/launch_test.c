// launch_test.c: what `spartan launch` plans and runs, without ssh. The plan (ranks slot by slot,
// ports, addresses, rank 0's join address with IPv6 brackets, bad names and port ranges), shell
// quoting checked by running /bin/sh on it, and the commands themselves run through a stand-in
// "ssh" that does what ssh does with its last argument (hand it to the login shell): the config
// lands on the host, and a peer gets its rank, join address and --set values intact and is
// stopped by SIGTERM when the launcher closes its input (sh gives background jobs /dev/null as
// input and SIGINT ignored: both once broke Ctrl-C). Also: procs that never started touch no
// descriptor, `spartan probe` between two listeners, and --dry-run.
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/pki.h"
#include "train/base/rng.h"
#include "train/cmd/hostfile.h"
#include "train/cmd/launch_plan.h"
#include "train/cmd/proc.h"

TestSuite(launch, .timeout = 60);

// The stand-in ssh: drops the options and the host, runs the remote command line with sh, as
// sshd runs it with the login shell.
#define FAKE_SSH "fake_ssh() { while [ $# -gt 1 ]; do shift; done; sh -c \"$1\"; }; fake_ssh"

static hostfile parse(const char *text) {
    hostfile h;
    int rc = hostfile_parse(&h, text, strlen(text), "hosts.txt");
    cr_assert_eq(rc, ERR_OK, "%s", err_msg());
    return h;
}

static launch_opts opts(void) {
    return (launch_opts){.name = "job", .rev = "abc123", .data_id = ""};
}

Test(launch, ranks_go_slot_by_slot_with_ports_and_addresses) {
    hostfile h = parse("a slots=2 port=4000\n"
                       "b ssh_port=2222\n"
                       "c slots=3 threads=4\n");
    launch_opts o = opts();
    o.status_port = 8100;
    const char *sets[] = {"net.status_host=10.0.0.5"};
    o.sets = sets;
    o.n_sets = 1;
    launch_plan p;
    cr_assert_eq(launch_plan_make(&p, &h, &o), ERR_OK, "%s", err_msg());
    cr_assert_eq(p.n, 6);
    int host[] = {0, 0, 1, 2, 2, 2}, slot[] = {0, 1, 0, 0, 1, 2};
    int port[] = {4000,
                  4001,
                  LAUNCH_DEFAULT_PORT,
                  LAUNCH_DEFAULT_PORT,
                  LAUNCH_DEFAULT_PORT + 1,
                  LAUNCH_DEFAULT_PORT + 2};
    const char *addr[] = {"a", "a", "b", "c", "c", "c"};
    for (int r = 0; r < 6; r++) {
        cr_expect_eq(p.peers[r].rank, r);
        cr_expect_eq(p.peers[r].host, host[r], "rank %d", r);
        cr_expect_eq(p.peers[r].slot, slot[r], "rank %d", r);
        cr_expect_eq(p.peers[r].port, port[r], "rank %d", r);
        cr_expect_str_eq(p.peers[r].addr, addr[r], "rank %d", r);
        cr_expect_eq(p.peers[r].threads, r >= 3 ? 4 : 0, "rank %d", r);
    }
    cr_expect_str_eq(p.join, "a:4000");
    cr_expect_str_eq(p.o.ssh, LAUNCH_DEFAULT_SSH);
    cr_expect_str_eq(p.o.dir, LAUNCH_DEFAULT_DIR);
    // the peer of slot 1 serves its status on status_port + 1
    char *c = launch_cmd_peer(&p, 4);
    cr_expect(strstr(c, "net.status_port=8101") != NULL, "%s", c);
    // on every interface (to be read from here), unless the user's --set, which comes after, says
    const char *any = strstr(c, "net.status_host=0.0.0.0"),
               *own = strstr(c, "status_host=10.0.0.5");
    cr_expect(any && own && any < own, "%s", c);
    cr_expect(strstr(c, " -p 2222") == NULL, "the ssh port of host b leaked into c: %s", c);
    free(c);
    c = launch_cmd_peer(&p, 2);
    cr_expect(strstr(c, " -p 2222 ") != NULL, "%s", c);
    free(c);
    launch_plan_free(&p);
    hostfile_free(&h);
}

Test(launch, join_uses_the_first_ip_and_brackets_ipv6) {
    hostfile h = parse("[{\"ssh\": \"mini1\", \"ips\": [\"fe80::1\", \"10.0.0.5\"]},"
                       " {\"ssh\": \"mini2\", \"ips\": [\"10.0.0.6\"]}]");
    launch_opts o = opts();
    launch_plan p;
    cr_assert_eq(launch_plan_make(&p, &h, &o), ERR_OK, "%s", err_msg());
    cr_expect_str_eq(p.join, "[fe80::1]:29500");
    cr_expect_str_eq(p.peers[1].addr, "10.0.0.6");
    char *c = launch_cmd_peer(&p, 1);
    cr_expect(strstr(c, "--join [fe80::1]:29500") != NULL, "%s", c);
    cr_expect(strstr(c, "net.listen=10.0.0.6:29500") != NULL, "%s", c);
    free(c);
    c = launch_cmd_peer(&p, 0);
    cr_expect(strstr(c, "net.listen=[fe80::1]:29500") != NULL, "%s", c);
    free(c);
    launch_plan_free(&p);
    hostfile_free(&h);
}

Test(launch, one_peer_trains_alone) {
    hostfile h = parse("solo\n");
    launch_opts o = opts();
    launch_plan p;
    cr_assert_eq(launch_plan_make(&p, &h, &o), ERR_OK, "%s", err_msg());
    char *c = launch_cmd_peer(&p, 0);
    cr_expect(strstr(c, "--join") == NULL && strstr(c, "SPARTAN_WORLD_SIZE") == NULL &&
                  strstr(c, "net.listen") == NULL,
              "a job of one peer has no group: %s", c);
    free(c);
    launch_plan_free(&p);
    hostfile_free(&h);
}

// OpenSSH connection sharing goes on OpenSSH's ssh only, and never over the user's own Control*
// options; with a control folder every command to a host names the same socket, and the end
// is `ssh -O exit` to it.
Test(launch, ssh_sharing_only_for_openssh_without_its_own_control_options) {
    const char *yes[] = {NULL,     "", "ssh", LAUNCH_DEFAULT_SSH, "/usr/bin/ssh -F cluster.conf",
                         "ssh\t-v"};
    const char *no[] = {"autossh -M 0",
                        "sshpass -p x ssh",
                        "ssh -o ControlMaster=no",
                        "ssh -o controlpath=/tmp/c",
                        "ssh -oControlPersist=no",
                        "myssh"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        cr_expect(launch_ssh_can_share(yes[i]), "'%s' should share", yes[i] ? yes[i] : "NULL");
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        cr_expect(!launch_ssh_can_share(no[i]), "'%s' should not share", no[i]);
    hostfile h = parse("mini1 user=alice ssh_port=2222\nmini2\n");
    launch_opts o = opts();
    o.ssh_control = "/tmp/spartan-ssh-abc";
    launch_plan p;
    cr_assert_eq(launch_plan_make(&p, &h, &o), ERR_OK, "%s", err_msg());
    const char *share = "-o ControlMaster=auto -o ControlPersist=15 "
                        "-o ControlPath='/tmp/spartan-ssh-abc/%C' -p 2222 -l alice mini1 ";
    char *cmds[] = {launch_cmd_preflight(&p, 0), launch_cmd_config(&p, 0, "c.ini"),
                    launch_cmd_probe(&p, 0, 1000), launch_cmd_peer(&p, 0),
                    launch_cmd_ssh_exit(&p, 0)};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        cr_expect(strstr(cmds[i], share), "command %zu does not share: %s", i, cmds[i]);
        free(cmds[i]);
    }
    char *ex = launch_cmd_ssh_exit(&p, 1);
    cr_expect(strstr(ex, "ControlPath='/tmp/spartan-ssh-abc/%C' mini2 -O exit"), "%s", ex);
    free(ex);
    launch_plan_free(&p);
    o.ssh_control = NULL; // off: nothing of it in the commands
    cr_assert_eq(launch_plan_make(&p, &h, &o), ERR_OK, "%s", err_msg());
    char *c = launch_cmd_preflight(&p, 0);
    cr_expect(strstr(c, "Control") == NULL, "%s", c);
    free(c);
    launch_plan_free(&p);
    hostfile_free(&h);
}

Test(launch, bad_names_and_port_ranges_are_refused) {
    hostfile h = parse("a\n");
    launch_opts o = opts();
    launch_plan p;
    const char *bad[] = {"", "../x", "a b", "-x", ".hidden", "x;rm"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        o.name = bad[i];
        cr_expect_eq(launch_plan_make(&p, &h, &o), ERR_INVAL, "name '%s'", bad[i]);
        cr_expect(strstr(err_msg(), "run name") != NULL, "%s", err_msg());
    }
    o = opts();
    o.status_port = 65535;
    hostfile_free(&h);
    h = parse("a slots=2\n");
    cr_expect_eq(launch_plan_make(&p, &h, &o), ERR_INVAL, "status ports past 65535");
    cr_expect(strstr(err_msg(), "host a: ") != NULL, "%s", err_msg());
    hostfile_free(&h);
}

// sh_echo runs `printf %s QUOTED` in /bin/sh and returns what it printed (malloc'd).
static char *sh_echo(const char *s) {
    char *q = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&q, &n);
    fputs("printf %s ", f);
    launch_shell_quote(f, s);
    fclose(f);
    char *out = NULL;
    int rc = tu_run(q, 10, &out);
    cr_assert_eq(rc, 0, "sh failed on %s", q);
    free(q);
    return out;
}

Test(launch, shell_quote_survives_sh) {
    const char *cases[] = {"",          "plain",  "it's",
                           "''",        "a b\tc", "$HOME `id` $(id) \\ \" ; | & *",
                           "new\nline", "'\\''"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *got = sh_echo(cases[i]);
        cr_expect_str_eq(got, cases[i]);
        free(got);
    }
    uint64_t ctr = 0;
    const char alphabet[] = "ab '\"\\$`;|&()*?[]{}!#~\t\n=";
    for (int t = 0; t < 200; t++) {
        char s[40];
        int len = (int)(rng_u64(7, ctr++) % (sizeof s - 1));
        for (int k = 0; k < len; k++)
            s[k] = alphabet[rng_u64(7, ctr++) % (sizeof alphabet - 1)];
        s[len] = 0;
        char *got = sh_echo(s);
        cr_expect_str_eq(got, s, "case %d", t);
        free(got);
    }
}

// A host's folder with a stand-in spartan at src/REV/bin/spartan that prints its arguments one
// per line, says "ready", then waits for SIGTERM (SIGINT it leaves to sh's default for
// background jobs: ignored) and says "got TERM" before it exits 0.
static char *fake_host(void) {
    char *d = tu_tmpdir("launch");
    char path[512];
    snprintf(path, sizeof path, "%s/src/abc123/bin", d);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    cr_assert_eq(tu_run(cmd, 10, NULL), 0);
    snprintf(path, sizeof path, "%s/src/abc123/bin/spartan", d);
    const char *script = "#!/bin/sh\n"
                         "for a in \"$@\"; do echo \"arg $a\"; done\n"
                         "trap 'echo got TERM; exit 0' TERM\n"
                         "echo ready\n"
                         "while :; do sleep 0.05; done\n";
    cr_assert_eq(tu_write_file(path, script, strlen(script)), 0);
    chmod(path, 0755);
    return d;
}

typedef struct seen {
    char lines[64][256];
    int n;
} seen;

static void keep_line(void *ctx, int i, const char *line) {
    (void)i;
    seen *s = ctx;
    if (s->n < 64) snprintf(s->lines[s->n++], sizeof s->lines[0], "%s", line);
}

static int has_line(const seen *s, const char *line) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->lines[i], line)) return 1;
    return 0;
}

// wait_line polls p until line appeared (or the child ended, or 20 s passed).
static int wait_line(proc *p, seen *s, const char *line) {
    for (int k = 0; k < 100 && !has_line(s, line); k++)
        if (proc_poll(p, 1, 200, keep_line, s) == 0) break;
    return has_line(s, line);
}

Test(launch, config_and_peer_run_through_the_login_shell) {
    char *d = fake_host();
    char text[1024];
    snprintf(text, sizeof text, "h1 dir=%s\nh2 dir=%s port=29600\n", d, d);
    hostfile h = parse(text);
    launch_opts o = opts();
    o.ssh = FAKE_SSH;
    const char *sets[] = {"train.note=it's $HOME `x`", "model.n_layer=2"};
    o.sets = sets;
    o.n_sets = 2;
    launch_plan p;
    cr_assert_eq(launch_plan_make(&p, &h, &o), ERR_OK, "%s", err_msg());

    // the config is copied into D/runs/job/config.ini
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/local.ini", d);
    cr_assert_eq(tu_write_file(cfg, "[train]\nmax_iters = 3\n", 22), 0);
    char *c = launch_cmd_config(&p, 0, cfg);
    char *out = NULL;
    cr_assert_eq(tu_run(c, 20, &out), 0, "%s\n%s", c, out);
    free(out);
    free(c);
    char there[600];
    snprintf(there, sizeof there, "%s/runs/job/config.ini", d);
    cr_expect_eq(tu_files_equal(cfg, there), 1, "config.ini differs from what was shipped");

    // the peer of rank 1: its arguments arrive intact, and closing its input stops it
    c = launch_cmd_peer(&p, 1);
    proc pr;
    seen s = {0};
    cr_assert_eq(proc_start(&pr, c, 1, NULL, 0), ERR_OK);
    cr_assert(wait_line(&pr, &s, "ready"), "the peer never started: %s", c);
    cr_expect(has_line(&s, "arg train"));
    cr_expect(has_line(&s, "arg train.note=it's $HOME `x`"), "a --set value was mangled");
    cr_expect(has_line(&s, "arg --rank") && has_line(&s, "arg 1"));
    cr_expect(has_line(&s, "arg --join") && has_line(&s, "arg h1:29500"));
    cr_expect(has_line(&s, "arg net.listen=h2:29600"));
    snprintf(there, sizeof there, "arg train.out_dir=%s/runs/job/r1", d);
    cr_expect(has_line(&s, there), "no out_dir %s", there);
    // nothing stops it while the input is open (a watcher that read /dev/null stopped every
    // peer at once: it would show within this window)
    proc_poll(&pr, 1, 500, keep_line, &s);
    cr_expect(!has_line(&s, "got TERM") && !pr.exited, "the peer was stopped with its input open");
    // the launcher stops the job: end of input, then the peer gets SIGTERM and exits
    proc_close_stdin(&pr);
    cr_expect(wait_line(&pr, &s, "got TERM"), "closing the input did not stop the peer");
    for (int k = 0; k < 100 && proc_poll(&pr, 1, 200, keep_line, &s) > 0; k++) {
    }
    cr_assert(pr.exited, "the peer's connection did not end");
    cr_expect(WIFEXITED(pr.status) && WEXITSTATUS(pr.status) == 0, "status %d", pr.status);
    proc_free(&pr);
    free(c);
    launch_plan_free(&p);
    hostfile_free(&h);
    tu_rm_rf(d);
    free(d);
}

Test(launch, unstarted_procs_touch_no_descriptor) {
    // fd 0 is a pipe with data; zeroed procs are polled, closed and freed: it must stay ours
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    int saved = dup(0);
    cr_assert(saved >= 0);
    cr_assert(dup2(fds[0], 0) == 0);
    close(fds[0]);
    cr_assert_eq(write(fds[1], "x", 1), 1);
    proc ps[3];
    memset(ps, 0, sizeof ps);
    cr_expect_eq(proc_poll(ps, 3, 10, NULL, NULL), 0);
    for (int i = 0; i < 3; i++) {
        proc_close_stdin(&ps[i]);
        proc_kill(&ps[i], SIGTERM);
        proc_free(&ps[i]);
    }
    char b = 0;
    cr_expect(fcntl(0, F_GETFD) != -1, "fd 0 was closed");
    cr_expect_eq(read(0, &b, 1), 1, "fd 0 was read");
    cr_expect_eq(b, 'x');
    dup2(saved, 0);
    close(saved);
    close(fds[1]);
}

Test(launch, proc_start_works_with_stdio_closed) {
    // a launcher started with its stdin closed: the pipes take descriptor 0
    int saved = dup(0);
    close(0);
    proc pr;
    seen s = {0};
    int rc = proc_start(&pr, "read x; echo \"got $x\"", 1, "hello\n", 6);
    cr_assert_eq(rc, ERR_OK);
    cr_expect(pr.in_fd == 0 || pr.out_fd == 0, "the test meant a pipe to take descriptor 0");
    proc_close_stdin(&pr);
    for (int k = 0; k < 100 && proc_poll(&pr, 1, 200, keep_line, &s) > 0; k++) {
    }
    cr_expect(has_line(&s, "got hello"), "the child did not read its input (%d lines)", s.n);
    proc_free(&pr);
    dup2(saved, 0);
    close(saved);
}

Test(launch, probe_reaches_a_listener_and_names_a_dead_port) {
    int ports[3];
    cr_assert_eq(tu_free_ports(3, ports), 0);
    char cmd[2048], *out = NULL;
    // two probes that reach each other, and a third address where nothing listens; the first
    // keeps listening until its input (a fifo held open by the shell) ends, after the second
    char *d = tu_tmpdir("probe");
    cr_assert(snprintf(cmd, sizeof cmd,
                       "S=%s; T=%s; mkfifo $T/f || exit 9; "
                       "$S probe --listen 127.0.0.1:%d --connect 127.0.0.1:%d --timeout 20000 "
                       "< $T/f > $T/p1 2>&1 & exec 3> $T/f; "
                       "$S probe --listen 127.0.0.1:%d --connect 127.0.0.1:%d,127.0.0.1:%d "
                       "--timeout 1500 < /dev/null; rc=$?; exec 3>&-; wait; cat $T/p1; exit $rc",
                       tu_spartan(), d, ports[0], ports[1], ports[1], ports[0],
                       ports[2]) < (int)sizeof cmd);
    int rc = tu_run(cmd, 40, &out);
    cr_expect_eq(rc, 1, "a dead port must fail the probe:\n%s", out);
    char want[128];
    snprintf(want, sizeof want, "probe reach 127.0.0.1:%d ok", ports[0]);
    cr_expect(strstr(out, want) != NULL, "%s", out);
    snprintf(want, sizeof want, "probe reach 127.0.0.1:%d fail: ", ports[2]);
    cr_expect(strstr(out, want) != NULL, "%s", out);
    snprintf(want, sizeof want, "probe reach 127.0.0.1:%d ok", ports[1]);
    cr_expect(strstr(out, want) != NULL, "the first probe did not reach the second:\n%s", out);
    free(out);
    tu_rm_rf(d);
    free(d);
}

Test(launch, dry_run_prints_every_command_and_runs_nothing) {
    char *d = tu_data_tmpdir("launch-dry");
    char hf[600], cmd[1024], *out = NULL;
    snprintf(hf, sizeof hf, "%s/hosts", d);
    const char *text = "mini1 user=me slots=2\nlinux1 ssh_port=2200 dir=/srv/sp\n";
    cr_assert_eq(tu_write_file(hf, text, strlen(text)), 0);
    snprintf(cmd, sizeof cmd,
             "env HOME=%s %s launch %s configs/tiny.ini --dry-run --ssh false --name dry "
             "--set data.dir=%s",
             d, tu_spartan(), hf, d);
    strncat(cmd, "/d", sizeof cmd - strlen(cmd) - 1);
    int rc = tu_run(cmd, 30, &out);
    cr_assert_eq(rc, 0, "%s", out);
    const char *want[] = {"## ship the host's certificate and key",
                          "net.tls=true",
                          "net.tls_cert=$R/tls/mini1.crt",
                          "# host mini1",
                          "# host linux1",
                          "## preflight",
                          "## ship and build",
                          "## peer rank 0",
                          "## peer rank 1",
                          "## peer rank 2",
                          "-p 2200",
                          "-l me",
                          "/srv/sp",
                          "--join mini1:29500"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_expect(strstr(out, want[i]) != NULL, "no '%s' in:\n%s", want[i], out);
    // `--ssh false` would have failed every command: nothing ran
    cr_expect(strstr(out, "preflight of") == NULL, "%s", out);
    char keys[700];
    snprintf(keys, sizeof keys, "%s/.spartan", d);
    cr_expect(access(keys, F_OK) != 0, "a dry run made keys in %s", keys);
    free(out);
    tu_rm_rf(d);
    free(d);
}

// Certificate names follow the host names, told apart when two entries name one host, never
// starting with '-' and never "ca"; keys go by default only where a peer is beyond loopback.
Test(launch, key_names_and_when_keys_are_needed) {
    hostfile h = parse("mini1 port=29500\nmini1 port=29600\n::1\nca\n");
    launch_opts o = opts();
    launch_plan p;
    cr_assert_eq(launch_plan_make(&p, &h, &o), ERR_OK, "%s", err_msg());
    char n[80];
    const char *want[] = {"mini1", "mini1-1", "h-1", "ca-host"};
    for (int i = 0; i < 4; i++) {
        launch_key_name(&p, i, n, sizeof n);
        cr_expect_str_eq(n, want[i]);
        cr_expect(pki_name_ok(n), "'%s' is not a certificate name", n);
    }
    cr_expect_eq(launch_needs_keys(&p), 1);
    launch_plan_free(&p);
    hostfile_free(&h);
    h = parse("127.0.0.1 port=29600\nlocalhost port=29700\n");
    cr_assert_eq(launch_plan_make(&p, &h, &o), ERR_OK, "%s", err_msg());
    cr_expect_eq(launch_needs_keys(&p), 0, "loopback peers need no keys");
    launch_plan_free(&p);
    hostfile_free(&h);
}

// launch_cmd_keys ships a host's own certificate and key and the CA certificate (not the CA key,
// not the other host's key) into D/runs/job/tls, private; its peers run with them.
Test(launch, keys_go_to_each_host_without_the_ca_key) {
    char *d = fake_host(), text[1024], keys[600];
    snprintf(keys, sizeof keys, "%s/keys", d);
    cr_assert_eq(pki_ca_init(keys, "test", 5), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_issue(keys, "h1", 5), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_issue(keys, "h2", 5), ERR_OK, "%s", err_msg());
    snprintf(text, sizeof text, "h1 dir=%s/h1\nh2 dir=%s/h2\n", d, d);
    hostfile h = parse(text);
    launch_opts o = opts();
    // a fake ssh as a program: the keys come through a pipeline into it
    char ssh[700];
    snprintf(ssh, sizeof ssh, "%s/ssh", d);
    const char *prog = "#!/bin/sh\nwhile [ $# -gt 1 ]; do shift; done\nexec sh -c \"$1\"\n";
    cr_assert_eq(tu_write_file(ssh, prog, strlen(prog)), 0);
    cr_assert_eq(chmod(ssh, 0700), 0);
    o.ssh = ssh;
    o.keys = keys;
    launch_plan p;
    cr_assert_eq(launch_plan_make(&p, &h, &o), ERR_OK, "%s", err_msg());
    char *c = launch_cmd_keys(&p, 1), *out = NULL;
    cr_assert_eq(tu_run(c, 20, &out), 0, "%s\n%s", c, out);
    cr_expect(strstr(out, "shipped") != NULL, "%s", out);
    free(out);
    free(c);
    char t[700], f[800];
    struct stat st;
    snprintf(t, sizeof t, "%s/h2/runs/job/tls", d);
    cr_assert_eq(stat(t, &st), 0, "no %s", t);
    cr_expect_eq(st.st_mode & 0777, 0700);
    snprintf(f, sizeof f, "%s/h2.key", t);
    cr_assert_eq(stat(f, &st), 0, "no %s", f);
    cr_expect_eq(st.st_mode & 0777, 0600);
    const char *absent[] = {"ca.key", "h1.key", "h1.crt"};
    for (int i = 0; i < 3; i++) {
        snprintf(f, sizeof f, "%s/%s", t, absent[i]);
        cr_expect(access(f, F_OK) != 0, "%s went to host h2", absent[i]);
    }
    snprintf(f, sizeof f, "%s/ca.crt", t);
    cr_expect(access(f, F_OK) == 0);
    c = launch_cmd_peer(&p, 1);
    cr_expect(strstr(c, "net.tls=true") && strstr(c, "net.tls_key=$R/tls/h2.key") &&
                  strstr(c, "net.tls_ca=$R/tls/ca.crt"),
              "%s", c);
    free(c);
    launch_plan_free(&p);
    hostfile_free(&h);
    tu_rm_rf(d);
    free(d);
}
