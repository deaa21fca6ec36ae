// peer_test.c: the peer layer. Over ipc:// where no TCP port is the point (static groups,
// channels, the handshake's refusals, rendezvous and views), over tcp://127.0.0.1 where it is
// (port 0, strangers that connect first, garbage, truncated and bad-CRC frames on every channel,
// a link that answers slowly). Every wait is bounded and waits for an event.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "sparta/peer/frame.h"
#include "sparta/peer/le.h"
#include "sparta/peer/peer.h"
#include "sparta/peer/wire.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"

TestSuite(peer, .timeout = 40);

static const char *SHARED = "model.n_layer=2\ntrain.seed=1\n";

static int
    group_max_offences; // peer_opts.max_offences of the next group_of (0 unless a test sets it)

// group_of makes member rank of a static group over the addresses addr[0..world).
// group_keyed is group_of with a cluster key of 32 bytes (NULL: none).
static peer_group *group_keyed(const char *const *addr, int world, int rank, const char *shared,
                               const unsigned char *key) {
    peer_opts o = {.listen = addr[rank],
                   .peers = addr,
                   .world = world,
                   .rank = rank,
                   .run_id = 42,
                   .shared = shared ? shared : SHARED,
                   .build = "test",
                   .tag = "peer-test",
                   .max_offences = group_max_offences,
                   .cluster_key = key,
                   .cluster_key_len = key ? 32 : 0};
    peer_group *g;
    cr_assert_eq(peer_group_create(&g, &o), ERR_OK, "%s", err_msg());
    return g;
}

static peer_group *group_of(const char *const *addr, int world, int rank, const char *shared) {
    return group_keyed(addr, world, rank, shared, NULL);
}

static void ipc_addrs(const char *dir, int n, char addr[][PEER_ADDR_MAX], const char **ptr) {
    for (int i = 0; i < n; i++) {
        snprintf(addr[i], PEER_ADDR_MAX, "ipc://%s/p%d", dir, i);
        ptr[i] = addr[i];
    }
}

static peer_msg *recv_on(peer_group *g, int ch) {
    peer_msg *m = NULL;
    int rc = peer_recv(g, ch, 10000, &m);
    cr_assert_eq(rc, ERR_OK, "recv on %d: %s", ch, err_msg());
    return m;
}

Test(peer, a_static_group_delivers_on_every_channel_with_sender_ranks) {
    char *dir = tu_tmpdir("peer");
    char addr[3][PEER_ADDR_MAX];
    const char *a[3];
    ipc_addrs(dir, 3, addr, a);
    peer_group *g[3];
    for (int i = 2; i >= 0; i--) // any start order
        g[i] = group_of(a, 3, i, NULL);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(peer_wait_view(g[i], 3, 10000), 3, "rank %d sees fewer than 3", i);
    for (int ch = PEER_CH_CONTROL; ch < PEER_CH_STATE; ch++) // STATE carries peer_call only
        for (int s = 0; s < 3; s++)
            for (int d = 0; d < 3; d++) {
                if (s == d) continue;
                char text[64];
                snprintf(text, sizeof text, "ch%d %d->%d", ch, s, d);
                cr_assert_eq(peer_send(g[s], d, ch, text, strlen(text) + 1), ERR_OK, "%s",
                             err_msg());
            }
    for (int ch = PEER_CH_CONTROL; ch < PEER_CH_STATE; ch++)
        for (int d = 0; d < 3; d++) {
            int seen = 0;
            for (int k = 0; k < 2; k++) {
                peer_msg *m = recv_on(g[d], ch);
                char want[64];
                snprintf(want, sizeof want, "ch%d %d->%d", ch, m->from, d);
                cr_assert_str_eq(m->data, want);
                cr_assert_eq(m->channel, ch);
                seen |= 1 << m->from;
                peer_msg_free(g[d], m);
            }
            cr_assert_eq(seen, 7 & ~(1 << d), "rank %d ch %d heard from %x", d, ch, seen);
        }
    peer_view v;
    peer_get_view(g[1], &v);
    cr_assert_eq(v.n, 3);
    cr_assert_eq(v.self, 1);
    for (int i = 0; i < 3; i++)
        cr_assert(v.m[i].connected && v.m[i].rank == i);
    // nothing else is queued, and a poll says so at once
    peer_msg *m;
    cr_assert_eq(peer_recv(g[0], PEER_CH_SPARTA, 0, &m), ERR_TIMEOUT);
    peer_stats st;
    peer_get_stats(g[0], &st);
    cr_assert_eq(st.msgs_recv[PEER_CH_SPARTA], 2);
    cr_assert_eq(st.bad_crc + st.bad_header + st.refused + st.strangers, 0);
    for (int i = 0; i < 3; i++)
        peer_group_destroy(g[i]);
    tu_rm_rf(dir);
    free(dir);
}

Test(peer, a_restarted_member_is_taken_back) {
    char *dir = tu_tmpdir("peer");
    char addr[2][PEER_ADDR_MAX];
    const char *a[2];
    ipc_addrs(dir, 2, addr, a);
    peer_group *g0 = group_of(a, 2, 0, NULL), *g1 = group_of(a, 2, 1, NULL);
    cr_assert_eq(peer_wait_view(g0, 2, 10000), 2);
    peer_view v;
    peer_get_view(g0, &v);
    uint64_t e0 = v.epoch;
    peer_group_destroy(g1);
    for (int i = 0; i < 200 && peer_connected(g0, 1); i++)
        peer_wait_view(g0, 3, 50); // wakes on every view change
    cr_assert(!peer_connected(g0, 1), "rank 1's link outlived it");
    g1 = group_of(a, 2, 1, NULL);
    cr_assert_eq(peer_wait_view(g0, 2, 10000), 2, "the restarted rank 1 was not taken back");
    cr_assert_eq(peer_wait_view(g1, 2, 10000), 2);
    peer_get_view(g0, &v);
    cr_assert_geq(v.epoch, e0 + 2, "epoch %llu after a leave and a join (was %llu)",
                  (unsigned long long)v.epoch, (unsigned long long)e0);
    cr_assert_eq(peer_send(g1, 0, PEER_CH_CONTROL, "back", 5), ERR_OK);
    peer_msg *m = recv_on(g0, PEER_CH_CONTROL);
    cr_assert_str_eq(m->data, "back");
    peer_msg_free(g0, m);
    peer_group_destroy(g0);
    peer_group_destroy(g1);
    tu_rm_rf(dir);
    free(dir);
}

// A short run can end before a slow peer starts: the members still waiting at start-up do not
// wait the timeout out for one that was linked and left; they wait only for those that never
// came (rank 3 here, until it comes), and the diagnosis says that it left.
Test(peer, the_start_up_wait_does_not_wait_for_a_member_that_left) {
    char *dir = tu_tmpdir("peer");
    char addr[4][PEER_ADDR_MAX];
    const char *a[4];
    ipc_addrs(dir, 4, addr, a);
    peer_group *g[4] = {NULL};
    for (int i = 0; i < 3; i++)
        g[i] = group_of(a, 4, i, NULL);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(peer_wait_view(g[i], 3, 10000), 3, "rank %d sees fewer than 3", i);
    peer_group_destroy(g[1]); // its run ended
    for (int i = 0; i < 200 && peer_connected(g[0], 1); i++)
        peer_wait_view(g[0], 4, 50); // wakes on every view change
    cr_assert(!peer_connected(g[0], 1), "rank 1's link outlived it");
    // rank 3 never came: it is still waited for (a short wait, to see that it is)
    double t0 = sys_now_ms();
    cr_assert_eq(peer_wait_start(g[0], 4, 300), 2);
    cr_assert(sys_now_ms() - t0 >= 290, "rank 3, which never came, was not waited for");
    char why[600];
    peer_diagnose(g[0], 1, why, sizeof why);
    cr_assert(strstr(why, "connected and left"), "%s", why);
    // once rank 3 is there, nobody is left to wait for: the wait ends without its 20 s timeout
    // (rank 3 itself, which never saw rank 1, waits for it: it cannot know that it left)
    g[3] = group_of(a, 4, 3, NULL);
    t0 = sys_now_ms();
    cr_assert_eq(peer_wait_start(g[0], 4, 20000), 3, "rank 3 did not link to rank 0");
    cr_assert(sys_now_ms() - t0 < 10000, "waited %.0f ms for the member that left",
              sys_now_ms() - t0);
    for (int i = 0; i < 4; i++)
        if (i != 1) peer_group_destroy(g[i]);
    tu_rm_rf(dir);
    free(dir);
}

// Two peers whose shared settings differ: each refuses the other, and both name the key.
Test(peer, a_peer_with_other_settings_or_run_is_refused_naming_the_field_on_both_sides) {
    char *dir = tu_tmpdir("peer");
    char addr[3][PEER_ADDR_MAX];
    const char *a[3];
    ipc_addrs(dir, 3, addr, a);
    peer_group *g0 = group_of(a, 3, 0, NULL), *g1 = group_of(a, 3, 1, NULL);
    peer_group *g2 = group_of(a, 3, 2, "model.n_layer=2\ntrain.seed=7\n");
    cr_assert_eq(peer_wait_view(g0, 2, 10000), 2);
    // rank 2 is refused by both and gives up waiting at once
    cr_assert_eq(peer_wait_view(g2, 3, 10000), 1);
    char why[600];
    cr_assert_eq(peer_diagnose(g2, 0, why, sizeof why), PEER_DIAG_MISMATCH, "%s", why);
    cr_assert(strstr(why, "refused") && strstr(why, "train.seed"), "rank 2 about 0: %s", why);
    int kind = PEER_DIAG_DOWN;
    for (int i = 0; i < 400; i++) { // rank 0 may take the hello a moment after rank 2 refused it
        kind = peer_diagnose(g0, 2, why, sizeof why);
        if (kind == PEER_DIAG_MISMATCH) break; // not "connection refused": rank 2 not up yet
        peer_wait_view(g0, 4, 25);
    }
    cr_assert(strstr(why, "refused") && strstr(why, "train.seed"), "rank 0 about 2: %s", why);
    cr_assert_eq(kind, PEER_DIAG_MISMATCH, "rank 0 about 2: %s", why);
    // the good pair still exchanges
    cr_assert_eq(peer_send(g0, 1, PEER_CH_SPARTA, "ok", 3), ERR_OK);
    peer_msg *m = recv_on(g1, PEER_CH_SPARTA);
    peer_msg_free(g1, m);
    peer_stats st;
    peer_get_stats(g0, &st);
    cr_assert_geq(st.refused, 1);
    peer_group_destroy(g2);
    // another run id
    peer_opts o = {.listen = a[2],
                   .peers = a,
                   .world = 3,
                   .rank = 2,
                   .run_id = 43,
                   .shared = SHARED,
                   .build = "test"};
    cr_assert_eq(peer_group_create(&g2, &o), ERR_OK, "%s", err_msg());
    cr_assert_eq(peer_wait_view(g2, 3, 10000), 1);
    cr_assert_eq(peer_diagnose(g2, 1, why, sizeof why), PEER_DIAG_MISMATCH, "%s", why);
    cr_assert(strstr(why, "run id"), "%s", why);
    peer_group_destroy(g2);
    peer_group_destroy(g1);
    peer_group_destroy(g0);
    tu_rm_rf(dir);
    free(dir);
}

// ---- rendezvous ----------------------------------------------------------------------------

static peer_group *joiner(const char *listen, const char *join, int want) {
    peer_opts o = {.listen = listen,
                   .join = join,
                   .want_rank = want,
                   .run_id = 42,
                   .shared = SHARED,
                   .build = "test",
                   .tag = "peer-test"};
    peer_group *g;
    cr_assert_eq(peer_group_create(&g, &o), ERR_OK, "%s", err_msg());
    return g;
}

static void views_agree(peer_group **g, int n) {
    peer_view v0, v;
    for (int tries = 0; tries < 400; tries++) {
        int ok = 1;
        peer_get_view(g[0], &v0);
        for (int i = 0; i < n && ok; i++) {
            ok = peer_wait_view(g[i], n, 10000) == n;
            peer_get_view(g[i], &v);
            ok = ok && v.epoch == v0.epoch && v.n == n;
        }
        if (ok) return;
        peer_wait_view(g[0], n + 1, 25); // wait for a change
    }
    cr_assert_fail("the views did not agree");
}

Test(peer, every_peer_given_one_join_address_forms_one_group) {
    char *dir = tu_tmpdir("peer");
    char addr[5][PEER_ADDR_MAX];
    const char *a[5];
    ipc_addrs(dir, 5, addr, a);
    // the founder is the one whose address is the join address; the others start at once
    peer_group *g[5];
    g[0] = joiner(a[0], a[0], -1);
    for (int i = 1; i < 4; i++)
        g[i] = joiner(a[i], a[0], -1);
    views_agree(g, 4);
    int seen[4] = {0};
    for (int i = 0; i < 4; i++) {
        int r = peer_rank(g[i]);
        cr_assert(r >= 0 && r < 4 && !seen[r], "rank %d given twice or out of range", r);
        seen[r] = 1;
    }
    cr_assert_eq(peer_rank(g[0]), 0, "the founder is rank 0");
    // a fifth joins later, through a member that is not the coordinator
    int via = peer_rank(g[2]) ? 2 : 1;
    g[4] = joiner(a[4], a[via], -1);
    cr_assert_eq(peer_rank(g[4]), 4, "the joiner got rank %d", peer_rank(g[4]));
    views_agree(g, 5);
    // everyone can reach everyone
    for (int s = 0; s < 5; s++)
        for (int d = 0; d < 5; d++)
            if (s != d) {
                int rd = peer_rank(g[d]);
                cr_assert_eq(peer_send(g[s], rd, PEER_CH_CONTROL, &s, sizeof s), ERR_OK, "%s",
                             err_msg());
            }
    for (int d = 0; d < 5; d++)
        for (int k = 0; k < 4; k++)
            peer_msg_free(g[d], recv_on(g[d], PEER_CH_CONTROL));
    // a member leaves: the coordinator takes it out of the view; a new joiner gets its rank
    int gone = peer_rank(g[2]);
    peer_view v;
    peer_get_view(g[0], &v);
    uint64_t epoch = v.epoch;
    peer_group_destroy(g[2]);
    for (int i = 0; i < 400; i++) {
        peer_get_view(g[0], &v);
        if (v.n == 4) break;
        peer_wait_view(g[0], 6, 25);
    }
    cr_assert_eq(v.n, 4, "the view still has %d members", v.n);
    cr_assert_gt(v.epoch, epoch);
    g[2] = joiner(a[2], a[0], -1);
    cr_assert_eq(peer_rank(g[2]), gone, "the lowest free rank is %d, got %d", gone,
                 peer_rank(g[2]));
    views_agree(g, 5);
    for (int i = 0; i < 5; i++)
        peer_group_destroy(g[i]);
    tu_rm_rf(dir);
    free(dir);
}

Test(peer, a_join_without_a_group_times_out_naming_the_address) {
    char *dir = tu_tmpdir("peer");
    char me[PEER_ADDR_MAX], there[PEER_ADDR_MAX];
    snprintf(me, sizeof me, "ipc://%s/me", dir);
    snprintf(there, sizeof there, "ipc://%s/nobody", dir);
    peer_opts o = {.listen = me, .join = there, .want_rank = -1, .join_ms = 500, .shared = SHARED};
    peer_group *g;
    cr_assert_eq(peer_group_create(&g, &o), ERR_TIMEOUT);
    cr_assert(strstr(err_msg(), "nobody"), "%s", err_msg());
    tu_rm_rf(dir);
    free(dir);
}

// ---- TCP: strangers and garbage ------------------------------------------------------------

// tcp_connect: a plain TCP connection to 127.0.0.1:port (the test fails without one).
static int tcp_connect(int port) {
    int fd = tu_tcp_connect(port);
    cr_assert_geq(fd, 0, "cannot connect to port %d", port);
    return fd;
}

// read_to_end reads what the other side sends until it closes (bounded by a 10 s receive
// timeout) and returns 1 if it closed, 0 if it was still open.
static int read_to_end(int fd) {
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r == 0) return 1;
        if (r < 0) return 0;
    }
}

static int port_of(peer_group *g) { return atoi(strrchr(peer_self_addr(g), ':') + 1); }

static void write_all(int fd, const void *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        cr_assert_gt(w, 0);
        p = (const char *)p + w;
        n -= (size_t)w;
    }
}

// pair_tcp makes a static pair on 127.0.0.1 with rank 1 on an ephemeral port (the lower rank
// dials); before rank 0 starts, strangers(port, arg) may connect to rank 1 first.
static void pair_tcp(peer_group **g0, peer_group **g1, void (*strangers)(int port, void *),
                     void *arg, int handshake_ms) {
    const char *a[2] = {"127.0.0.1:0", "127.0.0.1:0"};
    peer_opts o = {.listen = a[1],
                   .peers = a,
                   .world = 2,
                   .rank = 1,
                   .run_id = 42,
                   .shared = SHARED,
                   .build = "test",
                   .handshake_ms = handshake_ms};
    cr_assert_eq(peer_group_create(g1, &o), ERR_OK, "%s", err_msg());
    if (strangers) strangers(port_of(*g1), arg);
    char a1[PEER_ADDR_MAX];
    snprintf(a1, sizeof a1, "%s", peer_self_addr(*g1));
    const char *b[2] = {"127.0.0.1:0", a1};
    o.listen = b[0];
    o.peers = b;
    o.rank = 0;
    cr_assert_eq(peer_group_create(g0, &o), ERR_OK, "%s", err_msg());
    cr_assert_eq(peer_wait_view(*g0, 2, 10000), 2, "the real pair did not connect");
    cr_assert_eq(peer_wait_view(*g1, 2, 10000), 2);
}

typedef struct {
    int fds[3];
} strangers;

// Three strangers connect first: one speaks nng's SP header and garbage, one sends garbage that
// looks like nothing, one sends nothing at all and keeps its connection open.
static void connect_strangers(int port, void *arg) {
    strangers *s = arg;
    static const unsigned char sp[8] = {0, 'S', 'P', 0, 0, 0x10, 0, 0}; // SP, PAIR v0
    s->fds[0] = tcp_connect(port);
    write_all(s->fds[0], sp, sizeof sp);
    char junk[4096];
    memset(junk, 0xA5, sizeof junk);
    write_all(s->fds[0], junk, sizeof junk);
    s->fds[1] = tcp_connect(port);
    write_all(s->fds[1], junk, 100);
    s->fds[2] = tcp_connect(port);
}

Test(peer, strangers_that_connect_first_do_not_stop_two_real_peers) {
    strangers s;
    peer_group *g0, *g1;
    pair_tcp(&g0, &g1, connect_strangers, &s, 300);
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(peer_send(g1, 0, PEER_CH_SPARTA, &i, sizeof i), ERR_OK, "%s", err_msg());
        peer_msg *m = recv_on(g0, PEER_CH_SPARTA);
        cr_assert_eq(*(int *)m->data, i);
        peer_msg_free(g0, m);
    }
    // the silent one is closed after the handshake deadline: its read sees the end
    cr_assert(read_to_end(s.fds[2]), "the silent stranger's connection stayed open");
    peer_stats st;
    peer_get_stats(g1, &st);
    cr_assert_geq(st.strangers, 2, "strangers %llu", (unsigned long long)st.strangers);
    for (int i = 0; i < 3; i++)
        close(s.fds[i]);
    peer_group_destroy(g1);
    peer_group_destroy(g0);
}

// A client that completes a real handshake and then sends, on every channel, a frame with a bad
// payload CRC (dropped, counted, the stream goes on), then a truncated frame, then a bad header
// (the stream is closed, counted). The real pair is not disturbed.
static int handshake_as(int port, const peer_group *peer_for_rank, int rank) {
    (void)peer_for_rank;
    int fd = tcp_connect(port);
    // a hello as peer.c writes it, for rank `rank` of 3 with the same run and settings
    unsigned char p[512], *q = p;
    *q++ = 1; // SYS_HELLO
    le_put32(q, 0), q += 4;
    le_put64(q, 42), q += 8;
    le_put64(q, 0x1234567), q += 8; // member id
    uint64_t h = 1469598103934665603ull;
    for (const char *s = SHARED; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    le_put64(q, h), q += 8;
    le_put32(q, (uint32_t)rank), q += 4;
    le_put32(q, 2), q += 4;
    *q++ = 0;
    le_put16(q, 4), q += 2;
    memcpy(q, "test", 4), q += 4;
    le_put16(q, 11), q += 2;
    memcpy(q, "127.0.0.1:1", 11), q += 11;
    le_put32(q, (uint32_t)strlen(SHARED)), q += 4;
    memcpy(q, SHARED, strlen(SHARED)), q += strlen(SHARED);
    unsigned char hdr[FRAME_HEADER], ack = 5; // SYS_ACK: we take the peer's hello
    frame_encode(hdr, PEER_CH_SYS, 0, p, (uint32_t)(q - p));
    write_all(fd, hdr, sizeof hdr);
    write_all(fd, p, (size_t)(q - p));
    frame_encode(hdr, PEER_CH_SYS, 1, &ack, 1);
    write_all(fd, hdr, sizeof hdr);
    write_all(fd, &ack, 1);
    return fd; // the next frame is number 2
}

Test(peer, bad_crc_truncated_and_bad_header_frames_are_dropped_and_counted) {
    // rank 1 of a pair (g0 below); the "client" takes rank 0's place first, sends its garbage,
    // then leaves, and the real rank 0 connects afterwards
    const char *a[2] = {"127.0.0.1:0", "127.0.0.1:0"};
    peer_opts o = {.listen = a[1],
                   .peers = a,
                   .world = 2,
                   .rank = 1,
                   .run_id = 42,
                   .shared = SHARED,
                   .build = "test"};
    peer_group *g0;
    cr_assert_eq(peer_group_create(&g0, &o), ERR_OK, "%s", err_msg());
    int fd = handshake_as(port_of(g0), g0, 0);
    cr_assert_eq(peer_wait_view(g0, 2, 10000), 2, "the crafted hello was not taken");
    uint32_t seq = 2;
    unsigned char hdr[FRAME_HEADER], payload[64];
    memset(payload, 7, sizeof payload);
    for (int ch = 0; ch < PEER_NCH; ch++) {
        frame_encode(hdr, (uint8_t)ch, seq++, payload, sizeof payload);
        payload[0] ^= 1; // the payload no longer matches its CRC
        write_all(fd, hdr, sizeof hdr);
        write_all(fd, payload, sizeof payload);
        payload[0] ^= 1;
    }
    // one good frame after them proves the stream went on
    frame_encode(hdr, PEER_CH_CONTROL, seq++, "good", 5);
    write_all(fd, hdr, sizeof hdr);
    write_all(fd, "good", 5);
    peer_msg *m = recv_on(g0, PEER_CH_CONTROL);
    cr_assert_str_eq(m->data, "good");
    peer_msg_free(g0, m);
    peer_stats st;
    peer_get_stats(g0, &st);
    cr_assert_eq(st.bad_crc, PEER_NCH, "bad_crc %llu", (unsigned long long)st.bad_crc);
    cr_assert_eq(st.msgs_recv[PEER_CH_CONTROL], 1);
    // a bad header: framing is lost, the stream is closed
    frame_encode(hdr, PEER_CH_SPARTA, seq++, payload, sizeof payload);
    hdr[9] ^= 0x40; // the length, under the header CRC
    write_all(fd, hdr, sizeof hdr);
    cr_assert(read_to_end(fd), "the stream with a bad header stayed open");
    close(fd);
    peer_get_stats(g0, &st);
    cr_assert_eq(st.bad_header, 1);
    // a truncated frame: the client dies in the middle of a payload
    fd = handshake_as(port_of(g0), g0, 0);
    for (int i = 0; i < 400 && !peer_connected(g0, 0); i++)
        peer_wait_view(g0, 2, 25);
    frame_encode(hdr, PEER_CH_RING, 2, payload, sizeof payload);
    write_all(fd, hdr, sizeof hdr);
    write_all(fd, payload, 10);
    close(fd);
    for (int i = 0; i < 400 && peer_connected(g0, 0); i++)
        peer_wait_view(g0, 3, 25);
    cr_assert(!peer_connected(g0, 0));
    peer_get_stats(g0, &st);
    cr_assert_eq(st.msgs_recv[PEER_CH_RING], 0, "a truncated frame was delivered");
    // the real rank 0 still gets in
    char a1[PEER_ADDR_MAX];
    snprintf(a1, sizeof a1, "%s", peer_self_addr(g0));
    const char *b[2] = {"127.0.0.1:0", a1};
    o.listen = b[0];
    o.peers = b;
    o.rank = 0;
    peer_group *g1;
    cr_assert_eq(peer_group_create(&g1, &o), ERR_OK, "%s", err_msg());
    cr_assert_eq(peer_wait_view(g0, 2, 10000), 2);
    cr_assert_eq(peer_wait_view(g1, 2, 10000), 2);
    cr_assert_eq(peer_send(g1, 1, PEER_CH_SPARTA, "real", 5), ERR_OK);
    m = recv_on(g0, PEER_CH_SPARTA);
    cr_assert_str_eq(m->data, "real");
    peer_msg_free(g0, m);
    peer_group_destroy(g1);
    peer_group_destroy(g0);
}

Test(peer, a_hello_of_another_protocol_version_is_refused_naming_both_versions) {
    peer_group *g0;
    const char *a[2] = {"127.0.0.1:0", "127.0.0.1:0"};
    peer_opts o = {.listen = a[0],
                   .peers = a,
                   .world = 2,
                   .rank = 0,
                   .run_id = 42,
                   .shared = SHARED,
                   .build = "test"};
    cr_assert_eq(peer_group_create(&g0, &o), ERR_OK, "%s", err_msg());
    int fd = tcp_connect(port_of(g0));
    unsigned char hdr[FRAME_HEADER];
    frame_encode(hdr, PEER_CH_SYS, 0, "x", 1);
    le_put16(hdr + 4, FRAME_VERSION + 1);
    le_put32(hdr + 20, frame_crc32c(hdr, 20));
    write_all(fd, hdr, sizeof hdr);
    write_all(fd, "x", 1);
    // the answer is a refusal in our protocol that names both versions, then the end
    unsigned char in[FRAME_HEADER + 600];
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, in + got, sizeof in - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    // skip our hello, find the refusal
    size_t off = 0;
    int found = 0;
    while (off + FRAME_HEADER <= got) {
        frame_header h;
        cr_assert_eq(frame_decode(in + off, &h), ERR_OK);
        if (h.len >= 2 && in[off + FRAME_HEADER] == 2) { // SYS_REFUSE, its kind, the text
            cr_assert_eq(in[off + FRAME_HEADER + 1], PEER_DIAG_REFUSED, "not a mismatch");
            char text[600] = {0};
            memcpy(text, in + off + FRAME_HEADER + 2, h.len - 2);
            char want[64];
            snprintf(want, sizeof want, "protocol version %d there, %d here", FRAME_VERSION + 1,
                     FRAME_VERSION);
            cr_assert(strstr(text, want), "refusal: %s", text);
            found = 1;
        }
        off += FRAME_HEADER + h.len;
    }
    cr_assert(found, "no refusal came back (%zu bytes)", got);
    peer_stats st;
    peer_get_stats(g0, &st);
    cr_assert_eq(st.refused, 1);
    peer_group_destroy(g0);
}

// ---- bulk transfers and priorities ---------------------------------------------------------

typedef struct {
    peer_group *g;
    int to, n;
    size_t len;
    unsigned char *buf;
    int rc;
} bulk_arg;

static void *bulk_sender(void *p) {
    bulk_arg *b = p;
    for (int i = 0; i < b->n && !b->rc; i++) {
        b->buf[0] = (unsigned char)i;
        b->rc = peer_send_wait(b->g, b->to, PEER_CH_RING, b->buf, b->len, 20000);
    }
    return NULL;
}

// On an emulated 200 Mbit/s link one 8 MiB frame takes about 0.34 s. A small SPARTA message sent
// while 6 such frames are queued must arrive before the third of them: it waits for at most the
// one in flight.
Test(peer, a_small_message_overtakes_queued_bulk_frames) {
    char *dir = tu_tmpdir("peer");
    char addr[2][PEER_ADDR_MAX];
    const char *a[2];
    ipc_addrs(dir, 2, addr, a);
    peer_opts o = {.listen = a[0],
                   .peers = a,
                   .world = 2,
                   .rank = 0,
                   .run_id = 42,
                   .shared = SHARED,
                   .rate_mbit = 200};
    peer_group *g0, *g1;
    cr_assert_eq(peer_group_create(&g0, &o), ERR_OK, "%s", err_msg());
    o.listen = a[1];
    o.rank = 1;
    cr_assert_eq(peer_group_create(&g1, &o), ERR_OK, "%s", err_msg());
    cr_assert_eq(peer_wait_view(g1, 2, 10000), 2);
    bulk_arg b = {.g = g1, .to = 0, .n = 6, .len = FRAME_MAX_PAYLOAD};
    b.buf = calloc(1, b.len);
    pthread_t t;
    pthread_create(&t, NULL, bulk_sender, &b);
    // wait until the first bulk frame has arrived, so that the rest are queued or in flight
    peer_msg *m = recv_on(g0, PEER_CH_RING);
    cr_assert_eq(((unsigned char *)m->data)[0], 0);
    peer_msg_free(g0, m);
    cr_assert_eq(peer_send(g1, 0, PEER_CH_SPARTA, "urgent", 7), ERR_OK);
    int bulk_before = 0;
    for (;;) {
        peer_msg *s = NULL;
        if (peer_recv(g0, PEER_CH_SPARTA, 0, &s) == ERR_OK) {
            cr_assert_str_eq(s->data, "urgent");
            peer_msg_free(g0, s);
            break;
        }
        if (peer_recv(g0, PEER_CH_RING, 50, &m) == ERR_OK) {
            bulk_before++;
            peer_msg_free(g0, m);
        }
        cr_assert_leq(bulk_before, 1, "the small message waited behind %d bulk frames",
                      bulk_before);
    }
    for (int i = 1 + bulk_before; i < 6; i++) {
        m = recv_on(g0, PEER_CH_RING);
        cr_assert_eq(((unsigned char *)m->data)[0], i, "bulk frames out of order");
        peer_msg_free(g0, m);
    }
    pthread_join(t, NULL);
    cr_assert_eq(b.rc, ERR_OK, "%s", err_msg());
    free(b.buf);
    peer_group_destroy(g1);
    peer_group_destroy(g0);
    tu_rm_rf(dir);
    free(dir);
}

// The emulated link carries no faster than its rate (a lower bound, so no luck is involved), and
// a loss of 0.5 drops about half of the frames, counted.
Test(peer, link_emulation_limits_the_rate_and_drops_the_lost_fraction) {
    char *dir = tu_tmpdir("peer");
    char addr[2][PEER_ADDR_MAX];
    const char *a[2];
    ipc_addrs(dir, 2, addr, a);
    peer_opts o = {.listen = a[0],
                   .peers = a,
                   .world = 2,
                   .rank = 0,
                   .shared = SHARED,
                   .rate_mbit = 40,
                   .delay_ms = 30};
    peer_group *g0, *g1;
    cr_assert_eq(peer_group_create(&g0, &o), ERR_OK, "%s", err_msg());
    o.listen = a[1];
    o.rank = 1;
    o.rate_mbit = 0;
    o.delay_ms = 0;
    o.loss = 0.5;
    o.seed = 3;
    cr_assert_eq(peer_group_create(&g1, &o), ERR_OK, "%s", err_msg());
    cr_assert_eq(peer_wait_view(g0, 2, 10000), 2);
    cr_assert_eq(peer_wait_view(g1, 2, 10000), 2);
    // 1 MB to rank 0 at 40 Mbit/s takes at least 0.2 s, plus 30 ms of delay
    static unsigned char buf[1 << 18];
    double t0 = sys_now_ms();
    for (int i = 0; i < 4; i++)
        cr_assert_eq(peer_send_wait(g1, 0, PEER_CH_RING, buf, sizeof buf, 10000), ERR_OK);
    peer_msg *m;
    for (int i = 0; i < 4; i++)
        peer_msg_free(g0, recv_on(g0, PEER_CH_RING));
    double ms = sys_now_ms() - t0, least = 4.0 * (sizeof buf + FRAME_HEADER) * 8 / 40e3 + 30;
    cr_assert_geq(ms, least * 0.99, "1 MB took %.1f ms, the emulated link needs %.1f", ms, least);
    // rank 1 loses about half of what it receives
    for (int i = 0; i < 200; i++)
        cr_assert_eq(peer_send_wait(g0, 1, PEER_CH_RING, &i, sizeof i, 10000), ERR_OK);
    peer_stats st;
    uint64_t got = 0, lost = 0;
    for (int i = 0; i < 400 && got + lost < 200; i++) { // wakes on each arrival
        if (peer_recv(g1, PEER_CH_RING, 50, &m) == ERR_OK) peer_msg_free(g1, m);
        peer_get_stats(g1, &st);
        got = st.msgs_recv[PEER_CH_RING];
        lost = st.recv_dropped[PEER_CH_RING];
    }
    cr_assert_eq(got + lost, 200);
    cr_assert(lost > 60 && lost < 140, "lost %llu of 200", (unsigned long long)lost);
    peer_group_destroy(g1);
    peer_group_destroy(g0);
    tu_rm_rf(dir);
    free(dir);
}

Test(peer, bad_arguments_are_named) {
    peer_group *g;
    peer_opts o = {.listen = "nohostport", .join = "x:1"};
    cr_assert_eq(peer_group_create(&g, &o), ERR_INVAL);
    cr_assert(strstr(err_msg(), "nohostport"), "%s", err_msg());
    const char *a[2] = {"127.0.0.1:0", "127.0.0.1:99999"};
    peer_opts s = {.listen = a[0], .peers = a, .world = 2, .rank = 0};
    cr_assert_eq(peer_group_create(&g, &s), ERR_INVAL);
    cr_assert(strstr(err_msg(), "99999"), "%s", err_msg());
    s.peers = NULL;
    cr_assert_eq(peer_group_create(&g, &s), ERR_INVAL);
    s.peers = a;
    s.rank = 2;
    cr_assert_eq(peer_group_create(&g, &s), ERR_INVAL);
    // a busy address names nng's reason
    s.rank = 0;
    a[1] = "127.0.0.1:1";
    cr_assert_eq(peer_group_create(&g, &s), ERR_OK, "%s", err_msg());
    char busy[PEER_ADDR_MAX];
    snprintf(busy, sizeof busy, "%s", peer_self_addr(g));
    peer_group *g2;
    peer_opts t = {.listen = busy, .join = busy, .want_rank = -1};
    cr_assert_eq(peer_group_create(&g2, &t), ERR_NET);
    cr_assert(strstr(err_msg(), busy), "%s", err_msg());
    char why[300];
    for (int i = 0; i < 400; i++) { // until the first dial has failed
        peer_diagnose(g, 1, why, sizeof why);
        if (!strstr(why, "no hello yet")) break;
        peer_wait_view(g, 3, 25);
    }
    cr_assert(strstr(why, "refused"), "%s", why); // rank 0 dials rank 1, where nothing listens
    peer_group_destroy(g);
}

// A linked pair over ipc:// sockets in a fresh folder.
typedef struct pair {
    char *dir;
    char addr[2][PEER_ADDR_MAX];
    const char *a[2];
    peer_group *g[2];
} pair;

static void pair_open(pair *p) {
    p->dir = tu_tmpdir("peer");
    ipc_addrs(p->dir, 2, p->addr, p->a);
    p->g[0] = group_of(p->a, 2, 0, NULL);
    p->g[1] = group_of(p->a, 2, 1, NULL);
    cr_assert_eq(peer_wait_view(p->g[1], 2, 10000), 2);
    cr_assert_eq(peer_wait_view(p->g[0], 2, 10000), 2);
}

static void pair_close(pair *p) {
    peer_group_destroy(p->g[1]);
    peer_group_destroy(p->g[0]);
    tu_rm_rf(p->dir);
    free(p->dir);
}

// ---- zero-copy posts and requests ---------------------------------------------------------

Test(peer, posted_frames_go_out_in_order_without_copies_and_a_queued_one_can_be_cancelled) {
    pair p;
    pair_open(&p);
    peer_group *g0 = p.g[0], *g1 = p.g[1];
    enum { K = 6, LEN = 1 << 20 };
    unsigned char *buf = malloc((size_t)K * LEN);
    peer_op *op[K];
    for (int i = 0; i < K; i++) {
        memset(buf + (size_t)i * LEN, i + 1, LEN);
        cr_assert_eq(peer_post(g1, 0, PEER_CH_RING, buf + (size_t)i * LEN, LEN, &op[i]), ERR_OK,
                     "%s", err_msg());
    }
    for (int i = 0; i < K; i++)
        cr_assert_eq(peer_op_wait(g1, op[i], 10000), ERR_OK, "%s", err_msg());
    for (int i = 0; i < K; i++) {
        peer_msg *m = recv_on(g0, PEER_CH_RING);
        cr_assert_eq(m->len, LEN);
        cr_assert_eq(((unsigned char *)m->data)[LEN - 1], i + 1, "frame %d out of order", i);
        peer_msg_free(g0, m);
    }
    // a queue filled past its bound refuses the next post, and a cancel releases a queued one
    int posted = 0, refused = 0;
    peer_op *many[64];
    while (posted < 64) {
        int rc = peer_post(g1, 0, PEER_CH_RING, buf, LEN, &many[posted]);
        if (rc == ERR_PEER) {
            refused = 1;
            break;
        }
        cr_assert_eq(rc, ERR_OK, "%s", err_msg());
        posted++;
    }
    cr_assert(refused || posted == 64);
    for (int i = posted - 1; i >= 0; i--)
        peer_op_cancel(g1, many[i]); // queued ones leave the queue, the one being written ends
    free(buf);
    pair_close(&p);
}

// A post with the caller's CRC carries it as is: the right one is delivered with it (peer_msg.crc),
// a wrong one is dropped by the receiver as a corrupt payload and counted, and the stream goes on.
Test(peer, a_post_with_the_callers_crc_is_checked_by_the_receiver) {
    pair p;
    pair_open(&p);
    peer_group *g0 = p.g[0], *g1 = p.g[1];
    enum { LEN = 100000 };
    unsigned char *buf = malloc(LEN);
    for (int i = 0; i < LEN; i++)
        buf[i] = (unsigned char)(i * 7 + 3);
    uint32_t crc = frame_crc32c(buf, LEN);
    peer_op *op;
    for (int i = 0; i < 3; i++) { // good, bad, good
        cr_assert_eq(peer_post_crc(g1, 0, PEER_CH_RING, buf, LEN, i == 1 ? crc ^ 4u : crc, &op),
                     ERR_OK, "%s", err_msg());
        cr_assert_eq(peer_op_wait(g1, op, 10000), ERR_OK, "%s", err_msg());
    }
    for (int i = 0; i < 2; i++) {
        peer_msg *m = recv_on(g0, PEER_CH_RING);
        cr_assert_eq(m->len, LEN);
        cr_assert_eq(m->crc, crc);
        cr_assert_eq(memcmp(m->data, buf, LEN), 0);
        peer_msg_free(g0, m);
    }
    peer_msg *m = NULL;
    cr_assert_eq(peer_recv(g0, PEER_CH_RING, 200, &m), ERR_TIMEOUT, "the bad frame was delivered");
    peer_stats st;
    peer_get_stats(g0, &st);
    cr_assert_eq(st.bad_crc, 1, "bad_crc %llu", (unsigned long long)st.bad_crc);
    free(buf);
    pair_close(&p);
}

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int hold, held; // hold: the server waits until the test clears it
} gate;

static size_t echo_server(void *arg, int from, const void *req, size_t len, peer_reply *rep) {
    gate *gt = arg;
    pthread_mutex_lock(&gt->mu);
    if (gt->hold) {
        gt->held = 1;
        pthread_cond_broadcast(&gt->cv);
        while (gt->hold)
            pthread_cond_wait(&gt->cv, &gt->mu);
    }
    pthread_mutex_unlock(&gt->mu);
    unsigned char *out = rep->buf;
    out[0] = (unsigned char)from;
    for (size_t i = 0; i < len; i++)
        out[1 + i] = ((const unsigned char *)req)[len - 1 - i];
    return len + 1;
}

// groups_up makes n (at most 3) groups on ipc addresses in dir (key: a cluster key, or NULL)
// into g and waits until each sees all n.
static void groups_up(const char *dir, int n, peer_group **g, const unsigned char *key) {
    char addr[3][PEER_ADDR_MAX];
    const char *a[3];
    ipc_addrs(dir, n, addr, a);
    for (int i = 0; i < n; i++)
        g[i] = group_keyed(a, n, i, NULL, key);
    for (int i = 0; i < n; i++)
        cr_assert_eq(peer_wait_view(g[i], n, 10000), n);
}

Test(peer, a_call_gets_its_servers_reply_and_times_out_or_fails_cleanly_otherwise) {
    char *dir = tu_tmpdir("peer");
    peer_group *g[3];
    groups_up(dir, 3, g, NULL);
    gate gt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    peer_set_server(g[0], echo_server, &gt);
    // a small request and one near the frame limit
    peer_msg *r;
    cr_assert_eq(peer_call(g[2], 0, "abc", 3, &r, 10000), ERR_OK, "%s", err_msg());
    cr_assert_eq(r->len, 4);
    cr_assert_eq(memcmp(r->data, "\002cba", 4), 0);
    peer_msg_free(g[2], r);
    size_t big = FRAME_MAX_PAYLOAD - 16;
    unsigned char *req = malloc(big);
    for (size_t i = 0; i < big; i++)
        req[i] = (unsigned char)(i * 7);
    cr_assert_eq(peer_call(g[1], 0, req, big, &r, 20000), ERR_OK, "%s", err_msg());
    cr_assert_eq(r->len, big + 1);
    cr_assert_eq(((unsigned char *)r->data)[0], 1);
    cr_assert_eq(((unsigned char *)r->data)[1], req[big - 1]);
    cr_assert_eq(((unsigned char *)r->data)[big], req[0]);
    peer_msg_free(g[1], r);
    free(req);
    // rank 1 serves nothing: the call says so at once instead of waiting out the timeout
    double t0 = sys_now_ms();
    cr_assert_eq(peer_call(g[2], 1, "x", 1, &r, 20000), ERR_OK, "%s", err_msg());
    cr_assert_null(r, "a reply from a member without a server");
    cr_assert_lt(sys_now_ms() - t0, 10000.0);
    // a held server: the call times out; the reply that comes later is dropped and counted
    pthread_mutex_lock(&gt.mu);
    gt.hold = 1;
    pthread_mutex_unlock(&gt.mu);
    cr_assert_eq(peer_call(g[2], 0, "late", 4, &r, 200), ERR_TIMEOUT);
    pthread_mutex_lock(&gt.mu);
    while (!gt.held)
        pthread_cond_wait(&gt.cv, &gt.mu);
    gt.hold = 0;
    pthread_cond_broadcast(&gt.cv);
    pthread_mutex_unlock(&gt.mu);
    peer_stats st;
    for (int i = 0; i < 400; i++) {
        peer_get_stats(g[2], &st);
        if (st.recv_dropped[PEER_CH_STATE]) break;
        peer_wait_view(g[2], 4, 25);
    }
    cr_assert_eq(st.recv_dropped[PEER_CH_STATE], 1, "the late reply was not dropped");
    // the next call works
    cr_assert_eq(peer_call(g[2], 0, "ok", 2, &r, 10000), ERR_OK, "%s", err_msg());
    peer_msg_free(g[2], r);
    peer_set_server(g[0], NULL, NULL);
    for (int i = 0; i < 3; i++)
        peer_group_destroy(g[i]);
    tu_rm_rf(dir);
    free(dir);
}

// body_server answers a request (u32 body bytes, u32 mode) with "HEAD" and a body of that many
// pattern bytes; mode 1 gives the body's CRC (crc_from), mode 2 a wrong one (a sender whose
// state changed after its seal, or a damaged copy).
enum { BODY_PLAIN, BODY_CLAIM, BODY_LIE };
static unsigned char body_byte(size_t i) { return (unsigned char)(i * 131u + (i >> 9)); }
static size_t body_server(void *arg, int from, const void *req, size_t len, peer_reply *rep) {
    (void)arg;
    (void)from;
    if (len != 8) return 0;
    uint32_t n = le_get32(req), mode = le_get32((const unsigned char *)req + 4);
    unsigned char *out = rep->buf;
    memcpy(out, "HEAD", 4);
    for (uint32_t i = 0; i < n; i++)
        out[4 + i] = body_byte(i);
    if (mode != BODY_PLAIN) {
        rep->crc_from = 4;
        rep->crc = wire_crc32c(out + 4, n) ^ (mode == BODY_LIE ? 1u : 0u);
    }
    return 4 + (size_t)n;
}

// call_body asks g's rank 0 for n body bytes in mode into dst(cap) and returns the call's code.
static int call_body(peer_group *g, uint32_t n, uint32_t mode, unsigned char *dst, size_t cap,
                     size_t *got, uint32_t *crc) {
    unsigned char req[8];
    le_put32(req, n);
    le_put32(req + 4, mode);
    peer_msg *r = NULL;
    int rc = peer_call_into(g, 0, req, sizeof req, 4, dst, cap, &r, got, crc, 20000);
    if (rc == ERR_OK) {
        cr_assert_not_null(r);
        cr_assert_eq(r->len, 4, "the head is %zu bytes", r->len);
        cr_assert_eq(memcmp(r->data, "HEAD", 4), 0);
        peer_msg_free(g, r);
    }
    return rc;
}

// call_into_pair runs the checks of peer_call_into over a pair of groups (key: frame tags).
static void call_into_pair(const unsigned char *key) {
    char *dir = tu_tmpdir("peer");
    peer_group *g[2];
    groups_up(dir, 2, g, key);
    peer_set_server(g[0], body_server, NULL);
    size_t n = (size_t)3 << 20, got = 0;
    uint32_t crc = 0;
    unsigned char *dst = malloc(n + 64), *want = malloc(n);
    for (size_t i = 0; i < n; i++)
        want[i] = body_byte(i);
    peer_stats st0, st1;
    peer_get_stats(g[1], &st0);
    for (uint32_t mode = BODY_PLAIN; mode <= BODY_CLAIM; mode++) {
        memset(dst, 0, n + 64);
        cr_assert_eq(call_body(g[1], (uint32_t)n, mode, dst, n + 64, &got, &crc), ERR_OK, "%s",
                     err_msg());
        cr_assert_eq(got, n, "mode %u: %zu body bytes", mode, got);
        cr_assert_eq(memcmp(dst, want, n), 0, "mode %u: the body differs", mode);
        cr_assert_eq(crc, wire_crc32c(want, n), "mode %u: crc %08x", mode, crc);
        cr_assert_eq(dst[n], 0, "written past the body");
    }
    peer_get_stats(g[1], &st1); // in place without tags; tagged frames come through a buffer
    cr_assert_eq(st1.in_place - st0.in_place, key ? 0u : 2u);
    // no body at all, and a reply of the head alone
    cr_assert_eq(call_body(g[1], 0, BODY_PLAIN, dst, n, &got, &crc), ERR_OK, "%s", err_msg());
    cr_assert_eq(got, 0);
    // a body whose frame CRC does not hold fails with ERR_FORMAT (not at the timeout)
    peer_get_stats(g[1], &st0);
    int rc = call_body(g[1], (uint32_t)n, BODY_LIE, dst, n, &got, &crc);
    cr_assert_eq(rc, ERR_FORMAT, "rc %d: %s", rc, err_msg());
    cr_assert(strstr(err_msg(), "CRC"), "%s", err_msg());
    peer_get_stats(g[1], &st1);
    cr_assert_eq(st1.bad_crc, st0.bad_crc + 1);
    // a body larger than the buffer
    rc = call_body(g[1], (uint32_t)n, BODY_PLAIN, dst, n - 1, &got, &crc);
    cr_assert_eq(rc, ERR_FORMAT, "rc %d: %s", rc, err_msg());
    cr_assert(strstr(err_msg(), "buffer"), "%s", err_msg());
    // and the link goes on
    cr_assert_eq(call_body(g[1], 1000, BODY_CLAIM, dst, n, &got, &crc), ERR_OK, "%s", err_msg());
    cr_assert_eq(memcmp(dst, want, 1000), 0);
    peer_set_server(g[0], NULL, NULL);
    for (int i = 0; i < 2; i++)
        peer_group_destroy(g[i]);
    free(dst);
    free(want);
    tu_rm_rf(dir);
    free(dir);
}

Test(peer, a_call_into_puts_the_body_in_place_and_a_damaged_one_fails_at_once) {
    call_into_pair(NULL);
}

Test(peer, a_call_into_over_tagged_frames_gives_the_same) {
    unsigned char key[32];
    for (int i = 0; i < 32; i++)
        key[i] = (unsigned char)(i * 7 + 1);
    call_into_pair(key);
}

// ---- a rendezvous group across a partition -----------------------------------------------

// view_size is how many members g's view holds (linked or not).
static int view_size(peer_group *g) { return peer_view_ranks(g, NULL, 0); }

// wait_views waits (20 s at most, paced by g[0]'s wake-ups) until g[0..n) hold views of want
// members and, with linked, every pair is linked. Returns 1 if they did.
static int wait_views(peer_group **g, int n, int want, int linked) {
    double end = sys_now_ms() + 20000;
    for (int i = 0; i < 1000000 && sys_now_ms() < end; i++) {
        int ok = 1;
        for (int a = 0; a < n && ok; a++) {
            ok = view_size(g[a]) == want;
            for (int b = 0; b < n && ok && linked; b++)
                ok = a == b || peer_connected(g[a], b);
        }
        if (ok) return 1;
        peer_wait_view(g[0], PEER_MAX_MEMBERS, 50);
    }
    return 0;
}

// Three members of a rendezvous group behind cables: member r advertises cable A[r] in front of
// its port (the lower rank of a pair dials the higher's: link 1-2 crosses A[2]; a rejoin at the
// coordinator crosses A[0]), and ranks 1 and 2 join through cables J[1] and J[2] to rank 0 (their
// links to rank 0 are those connections). partition_heals cuts member iso off (2: J[2], A[2] and
// A[0]; 0, the coordinator: J[1], J[2] and A[0]), checks that the coordinator's side took the
// others out of its view while theirs kept it, mends the cables and waits for one view, linked.
static void partition_heals(int iso) {
    int port[3];
    cr_assert_eq(tu_free_ports(3, port), 0);
    tu_cable *A[3], *J[3] = {NULL, NULL, NULL};
    char listen[3][64], adv[3][64], join[3][64];
    for (int r = 0; r < 3; r++) {
        A[r] = tu_cable_open(port[r]);
        cr_assert_not_null(A[r]);
        snprintf(listen[r], sizeof listen[r], "127.0.0.1:%d", port[r]);
        snprintf(adv[r], sizeof adv[r], "127.0.0.1:%d", tu_cable_port(A[r]));
        snprintf(join[r], sizeof join[r], "%s", adv[0]);
        if (r) {
            J[r] = tu_cable_open(port[0]);
            cr_assert_not_null(J[r]);
            snprintf(join[r], sizeof join[r], "127.0.0.1:%d", tu_cable_port(J[r]));
        }
    }
    peer_group *g[3];
    for (int r = 0; r < 3; r++) {
        peer_opts o = {.listen = listen[r],
                       .join = join[r],
                       .want_rank = r,
                       .advertise = adv[r],
                       .run_id = 42,
                       .shared = SHARED,
                       .build = "test",
                       .tag = "peer-test",
                       .heartbeat_ms = 1000};
        cr_assert_eq(peer_group_create(&g[r], &o), ERR_OK, "rank %d: %s", r, err_msg());
        cr_assert_eq(peer_rank(g[r]), r);
    }
    cr_assert(wait_views(g, 3, 3, 1), "the group did not form");
    tu_cable *cut[3] = {iso == 2 ? J[2] : J[1], iso == 2 ? A[2] : J[2], A[0]};
    for (int i = 0; i < 3; i++)
        tu_cable_set(cut[i], TU_CABLE_CUT, 0);
    if (iso == 2) { // the coordinator's side: ranks 0 and 1; rank 2 keeps its view
        peer_group *side[2] = {g[0], g[1]};
        cr_assert(wait_views(side, 2, 2, 1), "ranks 0 and 1 kept rank 2 in their view");
    } else { // the coordinator alone; ranks 1 and 2 keep it in theirs
        cr_assert(wait_views(g, 1, 1, 0), "rank 0 kept the others in its view");
    }
    int other[2] = {iso == 2 ? 0 : 1, iso == 2 ? 1 : 2}; // the far side of the cut, from iso
    double end = sys_now_ms() + 20000; // and the far side finds itself cut off (its own timeouts)
    while ((peer_connected(g[iso], other[0]) || peer_connected(g[iso], other[1])) &&
           sys_now_ms() < end)
        peer_wait_view(g[iso], PEER_MAX_MEMBERS, 50);
    cr_assert(!peer_connected(g[iso], other[0]) && !peer_connected(g[iso], other[1]),
              "rank %d is still linked across the cut", iso);
    for (int r = iso == 2 ? 2 : 1; r < 3; r++) // the side without the coordinator
        cr_assert_eq(view_size(g[r]), 3, "rank %d's view lost members: nothing to rejoin", r);
    for (int i = 0; i < 3; i++)
        tu_cable_set(cut[i], TU_CABLE_PASS, 0);
    cr_assert(wait_views(g, 3, 3, 1), "no one view after the heal: views of %d, %d, %d",
              view_size(g[0]), view_size(g[1]), view_size(g[2]));
    peer_view v[3]; // the last view reaches everyone (bounded: views still on their way)
    end = sys_now_ms() + 20000;
    do {
        for (int r = 0; r < 3; r++)
            peer_get_view(g[r], &v[r]);
    } while ((v[0].epoch != v[1].epoch || v[1].epoch != v[2].epoch) && sys_now_ms() < end &&
             peer_wait_view(g[0], PEER_MAX_MEMBERS, 50) >= 0);
    cr_assert(v[0].epoch == v[1].epoch && v[1].epoch == v[2].epoch,
              "one view, but epochs %llu %llu %llu", (unsigned long long)v[0].epoch,
              (unsigned long long)v[1].epoch, (unsigned long long)v[2].epoch);
    for (int r = 0; r < 3; r++)
        peer_group_destroy(g[r]);
    for (int r = 0; r < 3; r++) {
        tu_cable_close(A[r]);
        tu_cable_close(J[r]);
    }
}

Test(peer, a_rendezvous_member_cut_off_by_a_partition_rejoins_when_it_heals) { partition_heals(2); }

Test(peer, rendezvous_members_cut_off_from_their_coordinator_rejoin_it_when_it_heals) {
    partition_heals(0);
}

// wait_diag waits (bounded, by the group's own wake-ups) until peer_diagnose(g, rank) holds want.
static int wait_diag(peer_group *g, int rank, const char *want, char *buf, size_t n) {
    for (int i = 0; i < 400; i++) {
        peer_diagnose(g, rank, buf, n);
        if (strstr(buf, want)) return 1;
        peer_wait_view(g, PEER_MAX_MEMBERS, 25);
    }
    return 0;
}

// An offender is expelled at max_offences: its link closes and it is not dialled again (not even
// its restarted process), and one that dials in is refused with the reason; the other links stay
// up. Offences and expulsions are counted; this process cannot expel itself.
Test(peer, a_member_is_expelled_after_max_offences_and_refused_from_then_on) {
    char *dir = tu_tmpdir("peer");
    char addr[3][PEER_ADDR_MAX];
    const char *a[3];
    ipc_addrs(dir, 3, addr, a);
    peer_group *g[3];
    group_max_offences = 2;
    for (int i = 0; i < 3; i++)
        g[i] = group_of(a, 3, i, NULL);
    group_max_offences = 0;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(peer_wait_view(g[i], 3, 10000), 3);
    cr_assert_eq(peer_offence(g[0], 2, "non-finite values"), 0, "one offence of two");
    cr_assert(peer_connected(g[0], 2) && !peer_expelled(g[0], 2));
    cr_assert_eq(peer_offence(g[0], 2, "non-finite values"), 1, "the second expels");
    cr_assert(peer_expelled(g[0], 2) && !peer_connected(g[0], 2));
    cr_assert_eq(peer_offence(g[0], 2, "again"), 1, "expelled stays expelled");
    char buf[600];
    cr_assert_eq(peer_diagnose(g[0], 2, buf, sizeof buf), PEER_DIAG_REFUSED);
    cr_assert(strstr(buf, "expelled: 2 offences") && strstr(buf, "non-finite values"), "%s", buf);
    // rank 2 sees the link go; the restarted rank 2 is not dialled again by rank 0
    for (int i = 0; i < 400 && peer_connected(g[2], 0); i++)
        peer_wait_view(g[2], PEER_MAX_MEMBERS, 25);
    cr_assert(!peer_connected(g[2], 0));
    peer_group_destroy(g[2]);
    g[2] = group_of(a, 3, 2, NULL);
    cr_assert_eq(peer_wait_view(g[2], 2, 10000), 2, "rank 1 takes the restarted rank 2 back");
    // rank 2 expels rank 1, which dials it: its hellos are refused with the reason
    cr_assert_eq(peer_expel(g[2], 2, "self"), ERR_INVAL);
    cr_assert_eq(peer_expel(g[2], 9999, "range"), ERR_INVAL);
    cr_assert_eq(peer_expel(g[2], 1, "by hand"), ERR_OK);
    cr_assert_eq(peer_expel(g[2], 1, "twice"), ERR_OK);
    cr_assert(wait_diag(g[1], 2, "rank 1 was expelled from this run", buf, sizeof buf), "%s", buf);
    cr_assert(!peer_connected(g[1], 2) && !peer_connected(g[2], 1));
    cr_assert(peer_connected(g[0], 1), "the other links stay up");
    peer_stats st;
    peer_get_stats(g[0], &st);
    cr_assert_eq(st.offences, 2);
    cr_assert_eq(st.expelled, 1);
    peer_get_stats(g[2], &st);
    cr_assert(st.expelled == 1 && st.refused >= 1, "expelled %llu refused %llu",
              (unsigned long long)st.expelled, (unsigned long long)st.refused);
    for (int i = 0; i < 3; i++)
        peer_group_destroy(g[i]);
    tu_rm_rf(dir);
    free(dir);
}
