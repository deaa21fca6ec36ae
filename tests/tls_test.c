// tls_test.c: the peer layer over tls+tcp:// (sparta/peer/tls.c) with certificates from
// `spartan keys` (train/base/pki.c): two peers of the cluster link and exchange; a peer whose
// certificate another CA signed, and plaintext clients on the TLS port, never get a hello in
// (counted) while the real pair goes on; a readable key, a missing or non-PEM file and a key of
// another certificate are refused at start, naming the setting.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sparta/peer/peer.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/pki.h"
#include "train/base/sys.h"

TestSuite(tls, .timeout = 60);

static const char *SHARED = "model.n_layer=2\ntrain.seed=1\n";

// A cluster folder (CA, peers "a" and "b") and another CA's folder with peer "evil".
typedef struct {
    char *dir;
    char cluster[600], other[600];
} pki_fx;

static void fx_open(pki_fx *f) {
    f->dir = tu_tmpdir("tls");
    snprintf(f->cluster, sizeof f->cluster, "%s/cluster", f->dir);
    snprintf(f->other, sizeof f->other, "%s/other", f->dir);
    cr_assert_eq(pki_ca_init(f->cluster, "cluster", 30), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_ca_init(f->other, "other", 30), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_issue(f->cluster, "a", 30), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_issue(f->cluster, "b", 30), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_issue(f->other, "evil", 30), ERR_OK, "%s", err_msg());
}

static void fx_close(pki_fx *f) {
    tu_rm_rf(f->dir);
    free(f->dir);
}

// The files of one peer: the CA it trusts, its certificate and key.
typedef struct {
    char ca[700], cert[700], key[700];
} ident;

static ident id_of(const char *trust_dir, const char *dir, const char *name) {
    ident i;
    snprintf(i.ca, sizeof i.ca, "%s/ca.crt", trust_dir);
    snprintf(i.cert, sizeof i.cert, "%s/%s.crt", dir, name);
    snprintf(i.key, sizeof i.key, "%s/%s.key", dir, name);
    return i;
}

// group makes rank of a static pair on 127.0.0.1 (addrs[rank] may be port 0) with identity id
// (NULL: plain TCP).
static int group(peer_group **g, const char *const *addrs, int rank, const ident *id) {
    peer_opts o = {.listen = addrs[rank],
                   .peers = addrs,
                   .world = 2,
                   .rank = rank,
                   .run_id = 42,
                   .shared = SHARED,
                   .build = "test",
                   .handshake_ms = 500,
                   .tls_ca = id ? id->ca : NULL,
                   .tls_cert = id ? id->cert : NULL,
                   .tls_key = id ? id->key : NULL};
    return peer_group_create(g, &o);
}

// pair: rank 1 with id1 on an ephemeral port, then rank 0 with id0 dialling it.
static void pair(peer_group **g0, peer_group **g1, const ident *id0, const ident *id1) {
    const char *a[2] = {"127.0.0.1:0", "127.0.0.1:0"};
    cr_assert_eq(group(g1, a, 1, id1), ERR_OK, "%s", err_msg());
    char a1[PEER_ADDR_MAX];
    snprintf(a1, sizeof a1, "%s", peer_self_addr(*g1));
    const char *b[2] = {"127.0.0.1:0", a1};
    cr_assert_eq(group(g0, b, 0, id0), ERR_OK, "%s", err_msg());
}

static void exchange(peer_group *g0, peer_group *g1) {
    cr_assert_eq(peer_send(g0, 1, PEER_CH_CONTROL, "over tls", 9), ERR_OK, "%s", err_msg());
    peer_msg *m = NULL;
    cr_assert_eq(peer_recv(g1, PEER_CH_CONTROL, 10000, &m), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(m->data, "over tls");
    cr_assert_eq(m->from, 0);
    peer_msg_free(g1, m);
}

static uint64_t strangers_of(peer_group *g) {
    peer_stats st;
    peer_get_stats(g, &st);
    return st.strangers;
}

// wait_strangers waits (bounded) until g has closed more than `than` connections without a hello.
static uint64_t wait_strangers(peer_group *g, uint64_t than) {
    double t0 = sys_now_ms();
    while (strangers_of(g) <= than && sys_now_ms() - t0 < 15000)
        usleep(10000);
    return strangers_of(g);
}

Test(tls, two_peers_of_the_cluster_link_and_exchange) {
    pki_fx f;
    fx_open(&f);
    ident a = id_of(f.cluster, f.cluster, "a"), b = id_of(f.cluster, f.cluster, "b");
    peer_group *g0, *g1;
    pair(&g0, &g1, &a, &b);
    cr_assert_eq(peer_wait_view(g0, 2, 10000), 2, "the TLS pair did not link");
    cr_assert_eq(peer_wait_view(g1, 2, 10000), 2);
    cr_assert(strncmp(peer_self_addr(g1), "127.0.0.1:", 10) == 0, "self address %s",
              peer_self_addr(g1));
    exchange(g0, g1);
    cr_assert_eq(strangers_of(g1), 0);
    peer_group_destroy(g0);
    peer_group_destroy(g1);
    fx_close(&f);
}

// A certificate from another CA, and a peer with no TLS at all: neither links, both are
// counted. The intruder trusts both CAs (its own first, so that its start-up check passes), so
// only the cluster's side can refuse it.
Test(tls, a_certificate_of_another_ca_or_none_never_links) {
    pki_fx f;
    fx_open(&f);
    ident b = id_of(f.cluster, f.cluster, "b"), evil = id_of(f.cluster, f.other, "evil");
    snprintf(evil.ca, sizeof evil.ca, "%s/both.crt", f.dir);
    char cmd[2200], *out = NULL;
    snprintf(cmd, sizeof cmd, "cat %s/ca.crt %s/ca.crt > %s", f.other, f.cluster, evil.ca);
    cr_assert_eq(tu_run(cmd, 10, &out), 0, "%s", out);
    free(out);
    peer_group *g0, *g1;
    pair(&g0, &g1, &evil, &b);
    uint64_t n = wait_strangers(g1, 0);
    cr_assert_gt(n, 0, "the other CA's peer was not turned away");
    cr_assert(!peer_connected(g1, 0) && !peer_connected(g0, 1), "the intruder linked");
    peer_group_destroy(g0);
    // plain TCP against the TLS port
    char a1[PEER_ADDR_MAX];
    snprintf(a1, sizeof a1, "%s", peer_self_addr(g1));
    const char *c[2] = {"127.0.0.1:0", a1};
    cr_assert_eq(group(&g0, c, 0, NULL), ERR_OK, "%s", err_msg());
    cr_assert_gt(wait_strangers(g1, n), n, "the plaintext peer was not turned away");
    cr_assert(!peer_connected(g1, 0), "a plaintext peer linked to a TLS one");
    peer_group_destroy(g0);
    peer_group_destroy(g1);
    fx_close(&f);
}

// tcp_connect: a plain TCP connection to 127.0.0.1:port (the test fails without one).
static int tcp_connect(int port) {
    int fd = tu_tcp_connect(port);
    cr_assert_geq(fd, 0, "cannot connect to port %d", port);
    return fd;
}

// Plaintext clients on the TLS port, garbage and silence, 20 of them at once: the real pair
// links and exchanges all the same.
Test(tls, plaintext_clients_on_the_tls_port_do_not_stop_the_real_pair) {
    pki_fx f;
    fx_open(&f);
    ident a = id_of(f.cluster, f.cluster, "a"), b = id_of(f.cluster, f.cluster, "b");
    const char *addrs[2] = {"127.0.0.1:0", "127.0.0.1:0"};
    peer_group *g1, *g0;
    cr_assert_eq(group(&g1, addrs, 1, &b), ERR_OK, "%s", err_msg());
    int port = atoi(strrchr(peer_self_addr(g1), ':') + 1), fds[20];
    char junk[512];
    memset(junk, 0x5A, sizeof junk);
    for (int i = 0; i < 20; i++) {
        fds[i] = tcp_connect(port);
        if (i % 2) cr_assert_eq(write(fds[i], junk, sizeof junk), (ssize_t)sizeof junk);
    }
    char a1[PEER_ADDR_MAX];
    snprintf(a1, sizeof a1, "%s", peer_self_addr(g1));
    const char *c[2] = {"127.0.0.1:0", a1};
    cr_assert_eq(group(&g0, c, 0, &a), ERR_OK, "%s", err_msg());
    cr_assert_eq(peer_wait_view(g0, 2, 15000), 2, "the real pair did not link past the clients");
    exchange(g0, g1);
    for (int i = 0; i < 20; i++)
        close(fds[i]);
    peer_group_destroy(g0);
    peer_group_destroy(g1);
    fx_close(&f);
}

Test(tls, bad_files_are_refused_at_start_naming_the_setting) {
    pki_fx f;
    fx_open(&f);
    const char *addrs[2] = {"127.0.0.1:0", "127.0.0.1:0"};
    peer_group *g = NULL;
    ident a = id_of(f.cluster, f.cluster, "a");
    // a key that others can read
    cr_assert_eq(chmod(a.key, 0644), 0);
    cr_assert_eq(group(&g, addrs, 0, &a), ERR_INVAL);
    cr_assert(strstr(err_msg(), "net.tls_key") && strstr(err_msg(), "chmod 600"), "%s", err_msg());
    cr_assert_eq(chmod(a.key, 0600), 0);
    // a missing CA file
    ident m = a;
    snprintf(m.ca, sizeof m.ca, "%s/nope.crt", f.dir);
    cr_assert_eq(group(&g, addrs, 0, &m), ERR_IO);
    cr_assert(strstr(err_msg(), "net.tls_ca") && strstr(err_msg(), "nope.crt"), "%s", err_msg());
    // a certificate file that is not PEM
    ident p = a;
    snprintf(p.cert, sizeof p.cert, "%s/junk.crt", f.dir);
    FILE *j = fopen(p.cert, "w");
    fputs("not a certificate\n", j);
    fclose(j);
    cr_assert_eq(group(&g, addrs, 0, &p), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "net.tls_cert") && strstr(err_msg(), "junk.crt"), "%s", err_msg());
    // b's key with a's certificate
    ident x = a;
    snprintf(x.key, sizeof x.key, "%s/b.key", f.cluster);
    cr_assert_eq(group(&g, addrs, 0, &x), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "net.tls_cert") && strstr(err_msg(), "net.tls_key"), "%s",
              err_msg());
    // a certificate of another CA, refused before it is ever offered
    ident e = id_of(f.cluster, f.other, "evil");
    cr_assert_eq(group(&g, addrs, 0, &e), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "evil.crt is not signed by net.tls_ca"), "%s", err_msg());
    // only some of the three
    peer_opts o = {.listen = addrs[0], .peers = addrs, .world = 2, .rank = 0, .tls_ca = a.ca};
    cr_assert_eq(peer_group_create(&g, &o), ERR_INVAL);
    cr_assert(strstr(err_msg(), "the CA, the certificate and the key"), "%s", err_msg());
    fx_close(&f);
}

// Two `spartan train` processes with net.tls: they exchange SPARTA rounds over TLS; a third
// config with net.tls and a missing key file stops at start naming the key; net.tls without the
// files is a config error naming the first missing one.
Test(tls, two_trainers_exchange_over_tls_and_bad_settings_stop_them) {
    pki_fx f;
    fx_open(&f);
    tu_cluster c;
    cr_assert_eq(tu_cluster_open(&c, 2), 0);
    const char *base =
        "configs/tiny.ini --set model.n_layer=1 --set model.n_embd=16 --set model.n_head=2 "
        "--set model.block_size=16 --set train.batch_size=4 --set train.threads=1 "
        "--set train.eval_interval=0 --set train.max_iters=60 --set sparta.p=0.05 "
        "--set sparta.sync=true --set sparta.timeout_ms=10000 --set net.tls=true";
    int pid[2];
    for (int i = 0; i < 2; i++) {
        char args[3000];
        snprintf(args, sizeof args,
                 "%s --set net.tls_ca=%s/ca.crt --set net.tls_cert=%s/%s.crt "
                 "--set net.tls_key=%s/%s.key",
                 base, f.cluster, f.cluster, i ? "b" : "a", f.cluster, i ? "b" : "a");
        pid[i] = tu_cluster_start(&c, i, args);
        cr_assert_gt(pid[i], 0);
    }
    for (int i = 0; i < 2; i++) {
        char *log = NULL;
        int rc = tu_wait_exit(pid[i], 120);
        log = tu_cluster_log(&c, i);
        cr_assert_eq(rc, 0, "rank %d exit %d:\n%s", i, rc, log);
        cr_assert(strstr(log, "all 2 peers connected"), "rank %d:\n%s", i, log);
        char csv[700];
        snprintf(csv, sizeof csv, "%s/rank%d/metrics.csv", c.dir, i);
        double rounds = tu_last_metric(csv, "sparta_rounds_done");
        cr_assert(rounds >= 30, "rank %d: %.0f SPARTA rounds over TLS in 60 steps:\n%s", i, rounds,
                  log);
        free(log);
    }
    char cmd[3000], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "%s train %s --set net.tls_ca=%s/ca.crt --set net.tls_cert=%s/a.crt "
             "--set net.tls_key=%s/none.key --set data.dir=%s/data --set train.out_dir=%s/x "
             "--peers 127.0.0.1:1,127.0.0.1:2 --rank 0",
             tu_spartan(), base, f.cluster, f.cluster, f.cluster, c.dir, c.dir);
    cr_assert_neq(tu_run(cmd, 60, &out), 0, "%s", out);
    cr_assert(strstr(out, "net.tls_key") && strstr(out, "none.key"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s train %s --set net.tls_ca=%s/ca.crt", tu_spartan(), base,
             f.cluster);
    cr_assert_eq(tu_run(cmd, 60, &out), 2, "%s", out);
    cr_assert(strstr(out, "net.tls = true needs net.tls_cert"), "%s", out);
    free(out);
    tu_cluster_close(&c);
    fx_close(&f);
}
