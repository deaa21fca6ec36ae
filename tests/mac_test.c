// mac_test.c: peer links under a cluster key without TLS (sparta/peer/mac.c). A man in the middle
// (a frame-aware TCP proxy on 127.0.0.1 between rank 0, which dials, and rank 1) flips a bit in
// a message, replays one, and injects one tagged under another key: each is dropped and counted
// at rank 1, and the messages around it arrive, on the same link. A peer under another key, or
// with none, is refused and counted and never links.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sparta/peer/frame.h"
#include "sparta/peer/handshake.h"
#include "sparta/peer/le.h"
#include "sparta/peer/mac.h"
#include "sparta/peer/peer.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"

TestSuite(mac, .timeout = 60);

static const unsigned char KEY[] = "a cluster key of 32 bytes, test.";
static const unsigned char OTHER[] = "another key, also long enough!!!";

// What the proxy does to the next CONTROL frame from rank 0.
enum { PASS, FLIP, REPLAY, FORGE };

typedef struct {
    int lfd, port, target; // listening socket, its port, rank 1's port
    _Atomic int mode, done, stop;
    pthread_t th;
} proxy;

// io_all reads (or writes) n bytes of fd, polling so that stop ends it. Returns 0 or -1.
static int io_all(proxy *p, int fd, void *buf, size_t n, int out) {
    for (size_t k = 0; k < n;) {
        struct pollfd pf = {fd, out ? POLLOUT : POLLIN, 0};
        if (p->stop) return -1;
        if (poll(&pf, 1, 100) <= 0) continue;
        ssize_t r = out ? write(fd, (char *)buf + k, n - k) : read(fd, (char *)buf + k, n - k);
        if (r <= 0) return -1;
        k += (size_t)r;
    }
    return 0;
}

typedef struct {
    proxy *p;
    int from, to;
} pump;

// back copies rank 1's bytes to rank 0 as they are.
static void *back(void *arg) {
    pump *u = arg;
    char buf[65536];
    while (!u->p->stop) {
        struct pollfd pf = {u->from, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0) continue;
        ssize_t r = read(u->from, buf, sizeof buf);
        if (r <= 0 || io_all(u->p, u->to, buf, (size_t)r, 1)) break;
    }
    shutdown(u->to, SHUT_WR);
    return NULL;
}

// forth reads rank 0's frames (their tags too, after its hello) and forwards them, applying the
// mode to the next CONTROL frame.
static void forth(proxy *p, int from, int to) {
    unsigned char hdr[FRAME_HEADER], *payload = malloc(FRAME_MAX_PAYLOAD + MAC_TAG);
    int tagged = 0;
    while (!p->stop) {
        if (io_all(p, from, hdr, FRAME_HEADER, 0)) break;
        frame_header h;
        if (frame_decode(hdr, &h)) break;
        size_t n = h.len + (tagged ? MAC_TAG : 0);
        if (io_all(p, from, payload, n, 0)) break;
        int mode = h.channel == PEER_CH_CONTROL ? p->mode : PASS;
        if (mode == FORGE) { // first a frame of our own, next in sequence, under another key
            unsigned char fh[FRAME_HEADER], fp[16 + MAC_TAG] = "forged message";
            frame_encode(fh, PEER_CH_CONTROL, h.seq, fp, 15);
            mac_ctx *m;
            cr_assert_eq(mac_new(&m, OTHER, 32), ERR_OK);
            mac_frame(m, fh, FRAME_HEADER - 4, fp, 15, fp + 15);
            mac_free(m);
            if (io_all(p, to, fh, FRAME_HEADER, 1) || io_all(p, to, fp, 15 + MAC_TAG, 1)) break;
        }
        if (mode == FLIP) payload[0] ^= 0x10;
        if (io_all(p, to, hdr, FRAME_HEADER, 1) || io_all(p, to, payload, n, 1)) break;
        if (mode == REPLAY && (io_all(p, to, hdr, FRAME_HEADER, 1) || io_all(p, to, payload, n, 1)))
            break;
        if (mode != PASS) {
            p->mode = PASS;
            p->done++;
        }
        if (h.channel == PEER_CH_SYS && h.len && payload[0] == SYS_HELLO) tagged = 1;
    }
    free(payload);
}

static void *proxy_main(void *arg) {
    proxy *p = arg;
    while (!p->stop) {
        struct pollfd pf = {p->lfd, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0) continue;
        int a = accept(p->lfd, NULL, NULL);
        if (a < 0) continue;
        int b = tu_tcp_connect(p->target);
        if (b < 0) {
            close(a);
            continue;
        }
        pump u = {p, b, a};
        pthread_t t;
        pthread_create(&t, NULL, back, &u);
        forth(p, a, b);
        shutdown(b, SHUT_WR);
        pthread_join(t, NULL);
        close(a);
        close(b);
    }
    return NULL;
}

static void proxy_start(proxy *p, int target) {
    memset(p, 0, sizeof *p);
    p->target = target;
    p->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    cr_assert_eq(bind(p->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(p->lfd, 8), 0);
    socklen_t sl = sizeof sa;
    getsockname(p->lfd, (struct sockaddr *)&sa, &sl);
    p->port = ntohs(sa.sin_port);
    cr_assert_eq(pthread_create(&p->th, NULL, proxy_main, p), 0);
}

static void proxy_stop(proxy *p) {
    p->stop = 1;
    pthread_join(p->th, NULL);
    close(p->lfd);
}

// group makes rank of a static pair: it listens on listen, and dials addrs[1] (rank 0).
static int group(peer_group **g, int rank, const char *listen, const char *const *addrs,
                 const unsigned char *key) {
    peer_opts o = {.listen = listen,
                   .peers = addrs,
                   .world = 2,
                   .rank = rank,
                   .run_id = 7,
                   .shared = "model.n_layer=1\n",
                   .build = "test",
                   .handshake_ms = 1000,
                   .cluster_key = key,
                   .cluster_key_len = key ? 32 : 0};
    return peer_group_create(g, &o);
}

static peer_stats stats(peer_group *g) {
    peer_stats st;
    peer_get_stats(g, &st);
    return st;
}

// send_recv sends text from g0 and returns what g1 receives next (the test fails on nothing).
static void expect_next(peer_group *g0, peer_group *g1, const char *send, const char *want) {
    cr_assert_eq(peer_send(g0, 1, PEER_CH_CONTROL, send, strlen(send) + 1), ERR_OK, "%s",
                 err_msg());
    peer_msg *m = NULL;
    cr_assert_eq(peer_recv(g1, PEER_CH_CONTROL, 10000, &m), ERR_OK, "nothing after '%s'", send);
    cr_assert_str_eq(m->data, want);
    peer_msg_free(g1, m);
}

// wait_done waits (bounded) for the proxy to have applied n modes.
static void wait_done(proxy *p, int n) {
    for (int i = 0; i < 1000 && p->done < n; i++)
        usleep(10000);
    cr_assert_eq(p->done, n, "the proxy did not apply its change");
}

Test(mac, a_flipped_bit_a_replay_and_a_forged_frame_are_dropped_and_counted) {
    int port[1];
    cr_assert_eq(tu_free_ports(1, port), 0);
    proxy p;
    proxy_start(&p, port[0]);
    char real[64], via[64];
    snprintf(real, sizeof real, "127.0.0.1:%d", port[0]);
    snprintf(via, sizeof via, "127.0.0.1:%d", p.port);
    const char *addrs[2] = {"127.0.0.1:0", via};
    peer_group *g0, *g1;
    cr_assert_eq(group(&g1, 1, real, addrs, KEY), ERR_OK, "%s", err_msg());
    cr_assert_eq(group(&g0, 0, "127.0.0.1:0", addrs, KEY), ERR_OK, "%s", err_msg());
    cr_assert_eq(peer_wait_view(g0, 2, 10000), 2, "the pair did not link through the proxy");
    expect_next(g0, g1, "m1", "m1");
    p.mode = FLIP; // m2 is changed on the way: dropped, m3 comes
    cr_assert_eq(peer_send(g0, 1, PEER_CH_CONTROL, "m2", 3), ERR_OK);
    wait_done(&p, 1);
    expect_next(g0, g1, "m3", "m3");
    cr_assert_eq(stats(g1).bad_mac, 1);
    p.mode = REPLAY; // m4 twice: once taken, the copy dropped
    expect_next(g0, g1, "m4", "m4");
    wait_done(&p, 2);
    expect_next(g0, g1, "m5", "m5");
    cr_assert_eq(stats(g1).replayed, 1);
    p.mode = FORGE; // a frame under another key before m6
    expect_next(g0, g1, "m6", "m6");
    wait_done(&p, 3);
    peer_stats st = stats(g1);
    cr_assert(st.bad_mac == 2 && st.replayed == 1, "bad_mac %llu replayed %llu",
              (unsigned long long)st.bad_mac, (unsigned long long)st.replayed);
    cr_assert(peer_connected(g0, 1) && peer_connected(g1, 0), "the link went down");
    cr_assert_eq(st.bad_header, 0);
    peer_group_destroy(g0);
    peer_group_destroy(g1);
    proxy_stop(&p);
}

Test(mac, a_peer_under_another_key_or_none_is_refused_and_counted) {
    const char *addrs[2] = {"127.0.0.1:0", "127.0.0.1:0"};
    peer_group *g0, *g1;
    cr_assert_eq(group(&g1, 1, "127.0.0.1:0", addrs, KEY), ERR_OK, "%s", err_msg());
    char a1[PEER_ADDR_MAX];
    snprintf(a1, sizeof a1, "%s", peer_self_addr(g1));
    const char *b[2] = {"127.0.0.1:0", a1};
    const unsigned char *keys[2] = {OTHER, NULL};
    for (int i = 0; i < 2; i++) {
        uint64_t before = stats(g1).unproven + stats(g1).refused;
        cr_assert_eq(group(&g0, 0, "127.0.0.1:0", b, keys[i]), ERR_OK, "%s", err_msg());
        double t0 = sys_now_ms();
        while (stats(g1).unproven + stats(g1).refused == before && sys_now_ms() - t0 < 10000)
            usleep(10000);
        cr_assert_gt(stats(g1).unproven + stats(g1).refused, before, "peer %d was not refused", i);
        cr_assert(!peer_connected(g1, 0), "a peer %s linked",
                  i ? "without a key" : "under another key");
        peer_group_destroy(g0);
    }
    cr_assert_geq(stats(g1).unproven, 1, "the wrong key's hello was not counted");
    // and a short key is refused at start
    peer_opts o = {.listen = "127.0.0.1:0",
                   .peers = addrs,
                   .world = 2,
                   .rank = 0,
                   .cluster_key = KEY,
                   .cluster_key_len = 8};
    cr_assert_eq(peer_group_create(&g0, &o), ERR_INVAL);
    cr_assert(strstr(err_msg(), "16 or more"), "%s", err_msg());
    peer_group_destroy(g1);
}

Test(mac, tags_are_bound_to_direction_run_and_key) {
    unsigned char n1[32] = {1}, n2[32] = {2}, a[MAC_TAG], b[MAC_TAG];
    mac_link_key(KEY, 32, n1, n2, 32, 7, 99, a);
    mac_link_key(KEY, 32, n2, n1, 32, 7, 99, b);
    cr_assert(!mac_equal(a, b), "both directions share a key");
    mac_link_key(KEY, 32, n1, n2, 32, 8, 99, b);
    cr_assert(!mac_equal(a, b), "another run shares the key");
    mac_link_key(OTHER, 32, n1, n2, 32, 7, 99, b);
    cr_assert(!mac_equal(a, b), "another cluster key gives the same link key");
    mac_link_key(KEY, 32, n1, n2, 32, 7, 99, b);
    cr_assert(mac_equal(a, b));
    b[31] ^= 1;
    cr_assert(!mac_equal(a, b), "a one-bit difference compares equal");
}
