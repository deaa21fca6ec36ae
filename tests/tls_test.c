// tls_test.c: the peer layer over tls+tcp:// (sparta/peer/tls.c) and its signed handshake
// (sparta/peer/ident.c: a forged member id, a replayed or unsigned hello and an expired
// certificate are refused and counted; a flood of strangers is bounded) with certificates from
// `spartan keys` (train/base/pki.c): two peers of the cluster link and exchange; a peer whose
// certificate another CA signed, and plaintext clients on the TLS port, never get a hello in
// (counted) while the real pair goes on; a readable key, a missing or non-PEM file and a key of
// another certificate are refused at start, naming the setting.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "sparta/peer/frame.h"
#include "sparta/peer/handshake.h"
#include "sparta/peer/ident.h"
#include "sparta/peer/peer.h"
#include "sparta/peer/tls.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/pki.h"
#include "train/base/sys.h"

TestSuite(tls, .timeout = 60);

static const char *SHARED = "model.n_layer=2\ntrain.seed=1\n";

// A cluster folder (CA, peers "a", "b" and "c") and another CA's folder with peer "evil".
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
    cr_assert_eq(pki_issue(f->cluster, "c", 30), ERR_OK, "%s", err_msg()); // an insider
    cr_assert_eq(pki_issue(f->other, "evil", 30), ERR_OK, "%s", err_msg());
}

static void fx_close(pki_fx *f) {
    tu_rm_rf(f->dir);
    free(f->dir);
}

// The files of one peer: the CA it trusts, its certificate and key.
typedef struct {
    char ca[700], cert[700], key[700];
} tls_files;

static tls_files id_of(const char *trust_dir, const char *dir, const char *name) {
    tls_files i;
    snprintf(i.ca, sizeof i.ca, "%s/ca.crt", trust_dir);
    snprintf(i.cert, sizeof i.cert, "%s/%s.crt", dir, name);
    snprintf(i.key, sizeof i.key, "%s/%s.key", dir, name);
    return i;
}

// group makes rank of a static pair on 127.0.0.1 (addrs[rank] may be port 0) with identity id
// (NULL: plain TCP).
static int group(peer_group **g, const char *const *addrs, int rank, const tls_files *id) {
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
static void pair(peer_group **g0, peer_group **g1, const tls_files *id0, const tls_files *id1) {
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
    tls_files a = id_of(f.cluster, f.cluster, "a"), b = id_of(f.cluster, f.cluster, "b");
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
    tls_files b = id_of(f.cluster, f.cluster, "b"), evil = id_of(f.cluster, f.other, "evil");
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

Test(tls, bad_files_are_refused_at_start_naming_the_setting) {
    pki_fx f;
    fx_open(&f);
    const char *addrs[2] = {"127.0.0.1:0", "127.0.0.1:0"};
    peer_group *g = NULL;
    tls_files a = id_of(f.cluster, f.cluster, "a");
    // a key that others can read
    cr_assert_eq(chmod(a.key, 0644), 0);
    cr_assert_eq(group(&g, addrs, 0, &a), ERR_INVAL);
    cr_assert(strstr(err_msg(), "net.tls_key") && strstr(err_msg(), "chmod 600"), "%s", err_msg());
    cr_assert_eq(chmod(a.key, 0600), 0);
    // a missing CA file
    tls_files m = a;
    snprintf(m.ca, sizeof m.ca, "%s/nope.crt", f.dir);
    cr_assert_eq(group(&g, addrs, 0, &m), ERR_IO);
    cr_assert(strstr(err_msg(), "net.tls_ca") && strstr(err_msg(), "nope.crt"), "%s", err_msg());
    // a certificate file that is not PEM
    tls_files p = a;
    snprintf(p.cert, sizeof p.cert, "%s/junk.crt", f.dir);
    FILE *j = fopen(p.cert, "w");
    fputs("not a certificate\n", j);
    fclose(j);
    cr_assert_eq(group(&g, addrs, 0, &p), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "net.tls_cert") && strstr(err_msg(), "junk.crt"), "%s", err_msg());
    // b's key with a's certificate
    tls_files x = a;
    snprintf(x.key, sizeof x.key, "%s/b.key", f.cluster);
    cr_assert_eq(group(&g, addrs, 0, &x), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "net.tls_cert") && strstr(err_msg(), "net.tls_key"), "%s",
              err_msg());
    // a certificate of another CA, refused before it is ever offered
    tls_files e = id_of(f.cluster, f.other, "evil");
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

// ---- signed handshakes, by hand -------------------------------------------------------------

// expire re-signs dir/NAME.crt (issued by dir's CA) so that it expired yesterday.
static void expire(const char *dir, const char *name) {
    char crt[700], cak[700], cac[700];
    snprintf(crt, sizeof crt, "%s/%s.crt", dir, name);
    snprintf(cak, sizeof cak, "%s/ca.key", dir);
    snprintf(cac, sizeof cac, "%s/ca.crt", dir);
    X509 *x = NULL, *ca = NULL;
    EVP_PKEY *k = NULL;
    cr_assert_eq(pki_read_pem(crt, "cert", &x, NULL), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_read_pem(cac, "ca", &ca, NULL), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_read_pem(cak, "ca key", NULL, &k), ERR_OK, "%s", err_msg());
    cr_assert(X509_gmtime_adj(X509_getm_notBefore(x), -10 * 86400) &&
              X509_gmtime_adj(X509_getm_notAfter(x), -86400) && X509_sign(x, k, EVP_sha256()) > 0);
    FILE *f = fopen(crt, "w");
    cr_assert(f && PEM_write_X509(f, x));
    fclose(f);
    X509_free(x);
    X509_free(ca);
    EVP_PKEY_free(k);
}

// A hand-made member: a TLS stream to a peer, speaking the handshake frame by frame.
typedef struct {
    peer_tls tls;
    nng_stream_dialer *d;
    nng_stream *s;
    nng_aio *aio;
    uint32_t seq_out, seq_in;
} raw;

static void raw_open(raw *r, const char *addr, const tls_files *f) {
    memset(r, 0, sizeof *r);
    cr_assert_eq(peer_tls_load(&r->tls, f->ca, f->cert, f->key), ERR_OK, "%s", err_msg());
    char url[PEER_ADDR_MAX + 16];
    snprintf(url, sizeof url, "tls+tcp://%s", addr);
    cr_assert_eq(nng_stream_dialer_alloc(&r->d, url), 0);
    cr_assert_eq(nng_stream_dialer_set_ptr(r->d, NNG_OPT_TLS_CONFIG, r->tls.client), 0);
    cr_assert_eq(nng_aio_alloc(&r->aio, NULL, NULL), 0);
    nng_aio_set_timeout(r->aio, 10000);
    nng_stream_dialer_dial(r->d, r->aio);
    nng_aio_wait(r->aio);
    cr_assert_eq(nng_aio_result(r->aio), 0, "dial %s: %s", url,
                 nng_strerror(nng_aio_result(r->aio)));
    r->s = nng_aio_get_output(r->aio, 0);
}

static void raw_close(raw *r) {
    nng_stream_close(r->s);
    nng_stream_free(r->s);
    nng_stream_dialer_free(r->d);
    nng_aio_free(r->aio);
    peer_tls_free(&r->tls);
}

// raw_io moves all n bytes (send or receive, 10 s at most). Returns 0, or nng's error.
static int raw_io(raw *r, void *buf, size_t n, int send) {
    for (size_t done = 0; done < n;) {
        nng_iov iov = {(char *)buf + done, n - done};
        nng_aio_set_iov(r->aio, 1, &iov);
        nng_aio_set_timeout(r->aio, 10000);
        if (send)
            nng_stream_send(r->s, r->aio);
        else
            nng_stream_recv(r->s, r->aio);
        nng_aio_wait(r->aio);
        int rv = nng_aio_result(r->aio);
        if (rv) return rv;
        done += nng_aio_count(r->aio);
    }
    return 0;
}

static void raw_send(raw *r, const void *p, size_t n) {
    unsigned char hdr[FRAME_HEADER];
    frame_encode(hdr, PEER_CH_SYS, r->seq_out++, p, (uint32_t)n);
    cr_assert_eq(raw_io(r, hdr, sizeof hdr, 1), 0);
    cr_assert_eq(raw_io(r, (void *)p, n, 1), 0);
}

// raw_recv reads one SYS frame into buf (cap bytes) and returns its length (the test fails on
// anything else).
static size_t raw_recv(raw *r, unsigned char *buf, size_t cap) {
    unsigned char hdr[FRAME_HEADER];
    frame_header h;
    cr_assert_eq(raw_io(r, hdr, sizeof hdr, 0), 0, "no frame from the peer");
    cr_assert_eq(frame_decode(hdr, &h), ERR_OK, "%s", err_msg());
    cr_assert(h.channel == PEER_CH_SYS && h.len <= cap && h.seq == r->seq_in++);
    cr_assert_eq(raw_io(r, buf, h.len, 0), 0);
    return h.len;
}

// How the hand-made hello is signed.
enum { SIGN_RIGHT, SIGN_OTHER_NONCE, SIGN_NONE };

// try_hello dials addr with TLS files tf (a valid certificate of the cluster), takes the peer's
// nonce, sends ours and a hello claiming rank 0 of 2 and member id `member`, proven by the key of
// prover as `how` says, and writes the peer's answer (the type of its next message, and the text
// of a refusal) into reply. Returns the answer's type (SYS_ACK, SYS_REFUSE).
static int try_hello(const char *addr, const tls_files *tf, const ident *prover, uint64_t member,
                     int how, char *reply, size_t n) {
    raw r;
    raw_open(&r, addr, tf);
    unsigned char buf[16384], nonce[IDENT_NONCE];
    size_t len = raw_recv(&r, buf, sizeof buf);
    cr_assert(len == 1 + IDENT_NONCE && buf[0] == SYS_NONCE, "the peer did not send a nonce");
    memcpy(nonce, buf + 1, IDENT_NONCE);
    unsigned char mine[1 + IDENT_NONCE] = {SYS_NONCE};
    raw_send(&r, mine, sizeof mine);
    hs_hello h = {.run_id = 42,
                  .member = member,
                  .settings_hash = hs_settings_hash(SHARED),
                  .rank = 0,
                  .world = 2,
                  .shared = SHARED};
    snprintf(h.build, sizeof h.build, "test");
    snprintf(h.addr, sizeof h.addr, "127.0.0.1:1");
    len = hs_hello_encode(&h, buf, sizeof buf);
    cr_assert_gt(len, 0);
    if (how != SIGN_NONE) {
        unsigned char other[IDENT_NONCE] = {0};
        size_t pn = ident_prove(prover, buf, len, how == SIGN_RIGHT ? nonce : other, buf + len,
                                sizeof buf - len);
        cr_assert_gt(pn, 0);
        len += pn;
    }
    raw_send(&r, buf, len);
    int type = 0;
    for (int i = 0; i < 4 && type != SYS_ACK && type != SYS_REFUSE; i++) { // its hello comes too
        len = raw_recv(&r, buf, sizeof buf - 1);
        type = len ? buf[0] : 0;
    }
    buf[len] = 0;
    snprintf(reply, n, "%.500s", type == SYS_REFUSE && len > 2 ? (char *)buf + 2 : "");
    raw_close(&r);
    return type;
}

static uint64_t unproven_of(peer_group *g) {
    peer_stats st;
    peer_get_stats(g, &st);
    return st.unproven;
}

// The handshake binds a member id to a key: a valid member of the cluster is taken (ACK), but a
// valid certificate claiming another key's member id, a hello signed for another connection's
// nonce, an unsigned hello and an expired certificate are refused, named and counted; then the
// real pair links and exchanges.
Test(tls, a_forged_member_id_a_replay_an_unsigned_hello_or_an_expired_certificate_is_refused) {
    pki_fx f;
    fx_open(&f);
    cr_assert_eq(pki_issue(f.cluster, "old", 30), ERR_OK, "%s", err_msg());
    expire(f.cluster, "old");
    tls_files a = id_of(f.cluster, f.cluster, "a"), b = id_of(f.cluster, f.cluster, "b"),
              c = id_of(f.cluster, f.cluster, "c"), old = id_of(f.cluster, f.cluster, "old");
    ident *ic, *ia, *iold;
    cr_assert_eq(ident_load(&ic, c.ca, c.cert, c.key), ERR_OK, "%s", err_msg());
    cr_assert_eq(ident_load(&ia, a.ca, a.cert, a.key), ERR_OK, "%s", err_msg());
    cr_assert_eq(ident_load(&iold, old.ca, old.cert, old.key), ERR_OK, "%s", err_msg());
    const char *addrs[2] = {"127.0.0.1:1", "127.0.0.1:0"}; // rank 0 is not there yet
    peer_group *g1, *g0;
    cr_assert_eq(group(&g1, addrs, 1, &b), ERR_OK, "%s", err_msg());
    char a1[PEER_ADDR_MAX], why[600];
    snprintf(a1, sizeof a1, "%s", peer_self_addr(g1));
    // a member with its own id, rightly signed: taken
    cr_assert_eq(try_hello(a1, &c, ic, ident_member(ic), SIGN_RIGHT, why, sizeof why), SYS_ACK,
                 "a valid hello was refused: %s", why);
    cr_assert_eq(unproven_of(g1), 0);
    // c's certificate and key, claiming a's member id
    cr_assert_eq(try_hello(a1, &c, ic, ident_member(ia), SIGN_RIGHT, why, sizeof why), SYS_REFUSE);
    cr_assert(strstr(why, "forged member id") && strstr(why, "'c'"), "%s", why);
    cr_assert_eq(unproven_of(g1), 1);
    // signed for another nonce (a hello recorded elsewhere, replayed)
    cr_assert_eq(try_hello(a1, &c, ic, ident_member(ic), SIGN_OTHER_NONCE, why, sizeof why),
                 SYS_REFUSE);
    cr_assert(strstr(why, "does not verify"), "%s", why);
    cr_assert_eq(unproven_of(g1), 2);
    // no proof at all
    cr_assert_eq(try_hello(a1, &c, ic, ident_member(ic), SIGN_NONE, why, sizeof why), SYS_REFUSE);
    cr_assert(strstr(why, "without a proof"), "%s", why);
    cr_assert_eq(unproven_of(g1), 3);
    // an expired certificate of the cluster
    cr_assert_eq(try_hello(a1, &c, iold, ident_member(iold), SIGN_RIGHT, why, sizeof why),
                 SYS_REFUSE);
    cr_assert(strstr(why, "'old'") && strstr(why, "expired"), "%s", why);
    cr_assert_eq(unproven_of(g1), 4);
    // and a peer refuses its own expired certificate at start, naming it
    cr_assert_eq(group(&g0, addrs, 0, &old), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "old.crt expired on"), "%s", err_msg());
    // the real member a joins
    const char *b2[2] = {"127.0.0.1:0", a1};
    cr_assert_eq(group(&g0, b2, 0, &a), ERR_OK, "%s", err_msg());
    cr_assert_eq(peer_wait_view(g0, 2, 15000), 2, "the real pair did not link");
    exchange(g0, g1);
    cr_assert_eq(unproven_of(g0), 0);
    peer_group_destroy(g0);
    peer_group_destroy(g1);
    ident_free(ic);
    ident_free(ia);
    ident_free(iold);
    fx_close(&f);
}

static int open_fds(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static long rss_kib(void) {
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    int ok = fscanf(f, "%ld %ld", &pages, &rss) == 2;
    fclose(f);
    return ok ? rss * (sysconf(_SC_PAGESIZE) / 1024) : -1;
}

// A flood of FLOOD plaintext connections held open on the TLS port, garbage and silence: the
// real pair links and exchanges meanwhile, and the peer holds a bounded number of them (its
// handshake limit, not one descriptor per stranger) in bounded memory.
Test(tls, a_connection_flood_neither_stops_the_pair_nor_exhausts_descriptors_or_memory) {
    enum { FLOOD = 300 };
    pki_fx f;
    fx_open(&f);
    tls_files a = id_of(f.cluster, f.cluster, "a"), b = id_of(f.cluster, f.cluster, "b");
    const char *addrs[2] = {"127.0.0.1:0", "127.0.0.1:0"};
    peer_group *g1, *g0;
    cr_assert_eq(group(&g1, addrs, 1, &b), ERR_OK, "%s", err_msg());
    int port = atoi(strrchr(peer_self_addr(g1), ':') + 1), fds[FLOOD];
    int fd0 = open_fds();
    long rss0 = rss_kib();
    char junk[512];
    memset(junk, 0x5A, sizeof junk);
    for (int i = 0; i < FLOOD; i++) {
        fds[i] = tcp_connect(port);
        if (i % 2) cr_assert_eq(write(fds[i], junk, sizeof junk), (ssize_t)sizeof junk);
    }
    char a1[PEER_ADDR_MAX];
    snprintf(a1, sizeof a1, "%s", peer_self_addr(g1));
    const char *c[2] = {"127.0.0.1:0", a1};
    cr_assert_eq(group(&g0, c, 0, &a), ERR_OK, "%s", err_msg());
    cr_assert_eq(peer_wait_view(g0, 2, 20000), 2, "the real pair did not link during the flood");
    exchange(g0, g1);
    // the peer turns the strangers away (its handshake limit and timeout)
    uint64_t n = wait_strangers(g1, FLOOD / 2);
    int held = open_fds() - fd0 - FLOOD;
    long grew = rss_kib() - rss0;
    fprintf(stderr,
            "flood: %d strangers closed, %d descriptors held beyond the clients', rss +%ld KiB\n",
            (int)n, held, grew);
    cr_assert_gt(n, FLOOD / 2, "only %d of %d strangers turned away", (int)n, FLOOD);
    cr_assert_lt(held, 100, "the peer holds %d descriptors for %d strangers", held, FLOOD);
    cr_assert_lt(grew, 64 * 1024, "the flood cost %ld KiB", grew);
    for (int i = 0; i < FLOOD; i++)
        close(fds[i]);
    exchange(g0, g1);
    peer_group_destroy(g0);
    peer_group_destroy(g1);
    fx_close(&f);
}
