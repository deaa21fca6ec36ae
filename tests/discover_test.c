// discover_test.c: LAN discovery. The announcement's encoding and its checks on bytes (round
// trip, forged, another cluster, truncated and random datagrams), then discover objects over
// 127.0.0.1 on a port each test picks: crafted datagrams are counted under their reason, peers
// find each other and agree on the ranks, a duplicated node ID is reported on both sides, and
// the node ID and key files. Nothing leaves localhost.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sparta/peer/discover.h"
#include "tests/test_util.h"
#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/base/rng.h"
#include "train/base/sys.h"

TestSuite(discover, .timeout = 30);

static const uint8_t KEY[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t KEY2[32] = "another cluster's key, 32 bytes.";

static uint64_t now_ms(void) {
    struct timespec t = sys_wall_time();
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static discover_announce sample(uint8_t node_byte, uint64_t run_id) {
    discover_announce a = {.cluster = discover_cluster_id(KEY, sizeof KEY),
                           .run_id = run_id,
                           .instance = 0x1122334455667788ull,
                           .time_ms = now_ms(),
                           .nonce = 42};
    memset(a.node, node_byte, sizeof a.node);
    snprintf(a.addr, sizeof a.addr, "10.0.0.%d:7000", node_byte);
    return a;
}

static int free_udp_port(void) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    cr_assert(bind(s, (struct sockaddr *)&a, sizeof a) == 0 &&
              getsockname(s, (struct sockaddr *)&a, &l) == 0);
    close(s);
    return ntohs(a.sin_port);
}

static void send_to(int port, const void *buf, size_t n) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(sendto(s, buf, n, 0, (struct sockaddr *)&a, sizeof a), (ssize_t)n);
    close(s);
}

// wait_received waits (bounded) until d has received at least n datagrams besides its own.
static void wait_received(discover *d, uint64_t n, discover_stats *st) {
    for (int i = 0; i < 300; i++) {
        discover_get_stats(d, st);
        if (st->received - st->n[DISCOVER_SELF] >= n) return;
        sys_sleep_ms(10);
    }
    cr_assert_fail("received %llu of %llu datagrams", (unsigned long long)st->received,
                   (unsigned long long)n);
}

// A listener that announces only to itself (127.0.0.2 is this host too), seldom, so that it
// counts besides its own only what the test sends it.
static discover *listener(int port, uint8_t node_byte, uint64_t run_id) {
    discover_opts o = {.key = KEY,
                       .key_len = sizeof KEY,
                       .run_id = run_id,
                       .advertise = "127.0.0.1:7000",
                       .port = port,
                       .dest = "127.0.0.2",
                       .period_ms = 10000};
    memset(o.node, node_byte, sizeof o.node);
    discover *d = NULL;
    cr_assert_eq(discover_create(&d, &o), ERR_OK, "%s", err_msg());
    return d;
}

Test(discover, announcement_round_trips) {
    discover_announce a = sample(7, 0xABCDEFull), b;
    uint8_t buf[DISCOVER_MAX_BYTES];
    size_t n = discover_pack(&a, KEY, sizeof KEY, buf, sizeof buf);
    cr_assert_eq(n, DISCOVER_FIXED_BYTES + strlen(a.addr));
    cr_assert_eq(discover_unpack(buf, n, KEY, sizeof KEY, &b), DISCOVER_ACCEPTED);
    cr_assert(b.cluster == a.cluster && b.run_id == a.run_id && b.instance == a.instance &&
              b.time_ms == a.time_ms && b.nonce == a.nonce);
    cr_assert(!memcmp(a.node, b.node, sizeof a.node));
    cr_assert_str_eq(b.addr, a.addr);
    // addresses that cannot be sent: empty, too long, with a space; a buffer too small
    discover_announce c = a;
    c.addr[0] = 0;
    cr_assert_eq(discover_pack(&c, KEY, sizeof KEY, buf, sizeof buf), 0);
    snprintf(c.addr, sizeof c.addr, "a b:1");
    cr_assert_eq(discover_pack(&c, KEY, sizeof KEY, buf, sizeof buf), 0);
    cr_assert_eq(discover_pack(&a, KEY, sizeof KEY, buf, n - 1), 0);
}

Test(discover, a_changed_byte_or_tag_is_forged_and_another_key_another_cluster) {
    discover_announce a = sample(7, 1), b;
    uint8_t buf[DISCOVER_MAX_BYTES];
    size_t n = discover_pack(&a, KEY, sizeof KEY, buf, sizeof buf);
    for (size_t i = 16; i < n; i++) { // every byte after the cluster id is covered by the tag
        uint8_t x[DISCOVER_MAX_BYTES];
        memcpy(x, buf, n);
        x[i] ^= 0x01;
        discover_verdict v = discover_unpack(x, n, KEY, sizeof KEY, &b);
        // a flipped address byte may make it unprintable: that is a format error first
        cr_assert(v == DISCOVER_FORGED || (i >= 64 && i < n - 32 && v == DISCOVER_BAD_FORMAT),
                  "byte %zu: %s", i, discover_verdict_str(v));
    }
    // this cluster's id, signed with another key (a spoofer who saw the id): forged
    n = discover_pack(&a, KEY2, sizeof KEY2, buf, sizeof buf);
    cr_assert_eq(discover_unpack(buf, n, KEY, sizeof KEY, &b), DISCOVER_FORGED);
    // another key's cluster id: another cluster, and the tag is not even computed
    a.cluster = discover_cluster_id(KEY2, sizeof KEY2);
    n = discover_pack(&a, KEY2, sizeof KEY2, buf, sizeof buf);
    cr_assert_eq(discover_unpack(buf, n, KEY, sizeof KEY, &b), DISCOVER_OTHER_CLUSTER);
    cr_assert_neq(discover_cluster_id(KEY, sizeof KEY), discover_cluster_id(KEY2, sizeof KEY2));
}

Test(discover, truncated_and_random_datagrams_are_bad_format) {
    discover_announce a = sample(7, 1), b;
    uint8_t buf[DISCOVER_MAX_BYTES + 8];
    size_t n = discover_pack(&a, KEY, sizeof KEY, buf, sizeof buf);
    for (size_t len = 0; len < n; len++)
        cr_assert_eq(discover_unpack(buf, len, KEY, sizeof KEY, &b), DISCOVER_BAD_FORMAT, "len %zu",
                     len);
    buf[n] = 0; // one byte too many
    cr_assert_eq(discover_unpack(buf, n + 1, KEY, sizeof KEY, &b), DISCOVER_BAD_FORMAT);
    uint8_t x[DISCOVER_MAX_BYTES + 8];
    memcpy(x, buf, n);
    x[6] = 0xff; // an address length beyond the datagram
    cr_assert_eq(discover_unpack(x, n, KEY, sizeof KEY, &b), DISCOVER_BAD_FORMAT);
    uint64_t s = 99;
    for (int k = 0; k < 20000; k++) { // random bytes, and random bytes behind a valid header
        size_t len = (size_t)(rng_hash(s++) % sizeof x);
        for (size_t i = 0; i < len; i++)
            x[i] = (uint8_t)rng_hash(s++);
        if (k % 2) memcpy(x, buf, len < 8 ? len : 8);
        discover_verdict v = discover_unpack(x, len, KEY, sizeof KEY, &b);
        cr_assert(v == DISCOVER_BAD_FORMAT || v == DISCOVER_OTHER_CLUSTER, "k=%d", k);
    }
}

Test(discover, received_datagrams_are_counted_by_reason) {
    int port = free_udp_port();
    discover *d = listener(port, 1, 5);
    uint8_t buf[DISCOVER_MAX_BYTES], bad[DISCOVER_MAX_BYTES];
    discover_announce a = sample(2, 5);
    size_t n = discover_pack(&a, KEY, sizeof KEY, buf, sizeof buf);
    send_to(port, buf, n); // accepted
    send_to(port, buf, n); // the same again: replayed
    memcpy(bad, buf, n);
    bad[n - 1] ^= 0x80; // forged tag
    send_to(port, bad, n);
    discover_announce s = sample(3, 5);
    s.time_ms -= 60000; // a minute old: stale
    size_t sn = discover_pack(&s, KEY, sizeof KEY, bad, sizeof bad);
    send_to(port, bad, sn);
    discover_announce r = sample(4, 6); // another run
    send_to(port, bad, discover_pack(&r, KEY, sizeof KEY, bad, sizeof bad));
    discover_announce o = sample(5, 5); // another cluster
    o.cluster = discover_cluster_id(KEY2, sizeof KEY2);
    send_to(port, bad, discover_pack(&o, KEY2, sizeof KEY2, bad, sizeof bad));
    discover_announce old = a; // member 2 again, older than its last: replayed
    old.nonce = 43;
    old.time_ms -= 1000;
    send_to(port, bad, discover_pack(&old, KEY, sizeof KEY, bad, sizeof bad));
    send_to(port, "garbage", 7);
    discover_stats st;
    wait_received(d, 8, &st);
    cr_assert_eq(st.n[DISCOVER_ACCEPTED], 1);
    cr_assert_eq(st.n[DISCOVER_REPLAYED], 2);
    cr_assert_eq(st.n[DISCOVER_FORGED], 1);
    cr_assert_eq(st.n[DISCOVER_STALE], 1);
    cr_assert_eq(st.n[DISCOVER_OTHER_RUN], 1);
    cr_assert_eq(st.n[DISCOVER_OTHER_CLUSTER], 1);
    cr_assert_eq(st.n[DISCOVER_BAD_FORMAT], 1);
    cr_assert_eq(st.received - st.n[DISCOVER_SELF], 8);
    char text[256];
    discover_stats_text(&st, text, sizeof text);
    cr_assert(strstr(text, "forged=1") && strstr(text, "replayed=2"), "%s", text);
    discover_destroy(d);
}

static discover *peer(int port, uint8_t node_byte, uint64_t instance, const char *adv) {
    discover_opts o = {.key = KEY,
                       .key_len = sizeof KEY,
                       .run_id = 9,
                       .instance = instance,
                       .advertise = adv,
                       .port = port,
                       .dest = "127.255.255.255",
                       .period_ms = 50};
    memset(o.node, node_byte, sizeof o.node);
    discover *d = NULL;
    cr_assert_eq(discover_create(&d, &o), ERR_OK, "%s", err_msg());
    return d;
}

typedef struct {
    discover *d;
    int world, timeout, rc;
    discover_member m[4];
    char msg[1024];
} waiter;

static void *wait_thread(void *arg) {
    waiter *w = arg;
    w->rc = discover_wait(w->d, w->world, w->timeout, w->m);
    snprintf(w->msg, sizeof w->msg, "%s", w->rc ? err_msg() : "");
    return NULL;
}

static void wait_all(waiter *w, int n) {
    pthread_t t[4];
    for (int i = 0; i < n; i++)
        pthread_create(&t[i], NULL, wait_thread, &w[i]);
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
}

Test(discover, peers_find_each_other_and_agree_on_the_ranks) {
    int port = free_udp_port();
    // the ranks are the order of the node IDs (0x20 < 0x30 < 0x40), not the start order
    waiter w[3] = {{.d = peer(port, 0x30, 0, "0.0.0.0:7003"), .world = 3, .timeout = 5000},
                   {.d = peer(port, 0x40, 0, "127.0.0.1:7004"), .world = 3, .timeout = 5000},
                   {.d = peer(port, 0x20, 0, ":7002"), .world = 3, .timeout = 5000}};
    wait_all(w, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(w[i].rc, ERR_OK, "peer %d: %s", i, w[i].msg);
        cr_assert_str_eq(w[i].m[0].addr, "127.0.0.1:7002"); // the wildcard: the sending address
        cr_assert_str_eq(w[i].m[1].addr, "127.0.0.1:7003");
        cr_assert_str_eq(w[i].m[2].addr, "127.0.0.1:7004");
        cr_assert_eq(w[i].m[0].node[0], 0x20);
        cr_assert_eq(w[i].m[2].node[0], 0x40);
    }
    cr_assert(w[2].m[0].self && w[0].m[1].self && w[1].m[2].self);
    cr_assert(!w[0].m[0].self && !w[0].m[2].self);
    // a fourth peer expected that never comes: a timeout naming the ones found
    waiter t = {.d = w[0].d, .world = 4, .timeout = 400};
    double t0 = sys_now_ms();
    wait_all(&t, 1);
    cr_assert_eq(t.rc, ERR_TIMEOUT);
    cr_assert(sys_now_ms() - t0 < 3000);
    cr_assert(strstr(t.msg, "found 3 of 4") && strstr(t.msg, "127.0.0.1:7004"), "%s", t.msg);
    // more peers than the world: refused, not guessed
    waiter m = {.d = w[0].d, .world = 2, .timeout = 2000};
    wait_all(&m, 1);
    cr_assert_eq(m.rc, ERR_PEER);
    cr_assert(strstr(m.msg, "3 peers announce this run but net.world = 2"), "%s", m.msg);
    for (int i = 0; i < 3; i++)
        discover_destroy(w[i].d);
}

Test(discover, a_duplicated_node_id_is_reported_by_both_and_by_others) {
    int port = free_udp_port();
    // the same node ID in two processes (two instances): a copied state folder
    waiter w[3] = {{.d = peer(port, 0x55, 111, "127.0.0.1:7101"), .world = 3, .timeout = 5000},
                   {.d = peer(port, 0x55, 222, "127.0.0.1:7102"), .world = 3, .timeout = 5000},
                   {.d = peer(port, 0x66, 333, "127.0.0.1:7103"), .world = 3, .timeout = 5000}};
    wait_all(w, 3);
    cr_assert_eq(w[0].rc, ERR_PEER, "%s", w[0].msg);
    cr_assert_eq(w[1].rc, ERR_PEER, "%s", w[1].msg);
    cr_assert(strstr(w[0].msg, "node ID 5555") && strstr(w[0].msg, "127.0.0.1:7102"), "%s",
              w[0].msg);
    cr_assert(strstr(w[1].msg, "also announced by 127.0.0.1:7101"), "%s", w[1].msg);
    cr_assert_eq(w[2].rc, ERR_PEER, "%s", w[2].msg); // a third machine refuses too
    cr_assert(strstr(w[2].msg, "DUPLICATED node 5555"), "%s", w[2].msg);
    discover_stats st;
    discover_get_stats(w[0].d, &st);
    cr_assert_gt(st.n[DISCOVER_DUPLICATE_ID], 0);
    for (int i = 0; i < 3; i++)
        discover_destroy(w[i].d);
}

Test(discover, node_id_is_made_once_0600_in_the_state_folder) {
    char *dir = tu_tmpdir("discover-state");
    char state[600], path[700], want[700], cwd[512];
    snprintf(state, sizeof state, "%s/deep/er", dir);
    setenv("SPARTAN_STATE_DIR", state, 1);
    cr_assert_eq(discover_node_id_path(path, sizeof path), ERR_OK);
    snprintf(want, sizeof want, "%s/node_id", state);
    cr_assert_str_eq(path, want);
    uint8_t a[DISCOVER_ID_BYTES], b[DISCOVER_ID_BYTES];
    char ha[33], hb[33];
    cr_assert_eq(discover_node_id(path, a, ha), ERR_OK, "%s", err_msg());
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
    cr_assert_eq(discover_node_id(path, b, hb), ERR_OK);
    cr_assert(!memcmp(a, b, sizeof a));
    cr_assert_str_eq(ha, hb);
    cr_assert_eq(strlen(ha), 32);
    char *text = NULL;
    size_t n = 0;
    cr_assert_eq(tu_read_file(path, &text, &n), 0);
    cr_assert(n == 33 && !strncmp(text, ha, 32));
    free(text);
    // another folder: another ID
    snprintf(state, sizeof state, "%s/other", dir);
    setenv("SPARTAN_STATE_DIR", state, 1);
    cr_assert_eq(discover_node_id_path(path, sizeof path), ERR_OK);
    cr_assert_eq(discover_node_id(path, b, hb), ERR_OK);
    cr_assert(memcmp(a, b, sizeof a));
    // a file that holds no ID is an error, never overwritten
    cr_assert_eq(tu_write_file(path, "not an id\n", 10), 0);
    cr_assert_eq(discover_node_id(path, b, hb), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "holds no node ID"), "%s", err_msg());
    cr_assert_eq(tu_read_file(path, &text, &n), 0);
    cr_assert(n == 10);
    free(text);
    // the fallbacks: XDG_STATE_HOME, then HOME; never the working folder
    unsetenv("SPARTAN_STATE_DIR");
    setenv("XDG_STATE_HOME", "/x/state", 1);
    cr_assert_eq(discover_node_id_path(path, sizeof path), ERR_OK);
    cr_assert_str_eq(path, "/x/state/spartan/node_id");
    unsetenv("XDG_STATE_HOME");
    setenv("HOME", "/home/u", 1);
    cr_assert_eq(discover_node_id_path(path, sizeof path), ERR_OK);
    // the platform's folder under HOME (~/.local/state, macOS ~/Library/Application Support:
    // sys_test checks which)
    char home[600];
    cr_assert_eq(sys_state_home(home, sizeof home), ERR_OK);
    cr_assert(!strncmp(home, "/home/u/", 8), "%s", home);
    snprintf(want, sizeof want, "%s/spartan/node_id", home);
    cr_assert_str_eq(path, want);
    cr_assert(getcwd(cwd, sizeof cwd));
    cr_assert_neq(strncmp(path, cwd, strlen(cwd)), 0);
    unsetenv("HOME");
    cr_assert_eq(discover_node_id_path(path, sizeof path), ERR_INVAL);
    tu_rm_rf(dir);
    free(dir);
}

Test(discover, key_file_must_be_private_and_sized) {
    char *dir = tu_tmpdir("discover-key");
    char path[600];
    snprintf(path, sizeof path, "%s/cluster.key", dir);
    uint8_t key[DISCOVER_KEY_MAX];
    size_t n = 0;
    cr_assert_eq(tu_write_file(path, KEY, sizeof KEY), 0);
    chmod(path, 0644);
    cr_assert_eq(discover_load_key(path, key, &n), ERR_INVAL);
    cr_assert(strstr(err_msg(), "chmod 600") && strstr(err_msg(), "0644"), "%s", err_msg());
    chmod(path, 0640);
    cr_assert_eq(discover_load_key(path, key, &n), ERR_INVAL);
    chmod(path, 0600);
    cr_assert_eq(discover_load_key(path, key, &n), ERR_OK, "%s", err_msg());
    cr_assert(n == sizeof KEY && !memcmp(key, KEY, n));
    cr_assert_eq(tu_write_file(path, "short", 5), 0);
    cr_assert_eq(discover_load_key(path, key, &n), ERR_INVAL);
    cr_assert(strstr(err_msg(), "head -c 32 /dev/urandom"), "%s", err_msg());
    snprintf(path, sizeof path, "%s/missing.key", dir);
    cr_assert_eq(discover_load_key(path, key, &n), ERR_IO);
    tu_rm_rf(dir);
    free(dir);
}

Test(discover, config_needs_a_world_and_a_key_and_no_other_group) {
    static const char *const bad[][3] = {
        {"net.discover=lan", "net.world=3", NULL},                      // no key file
        {"net.discover=lan", "net.cluster_key_file=k", NULL},           // no world
        {"net.discover=lan", "net.cluster_key_file=k", "net.join=h:1"}, // a second way
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg c;
        cfg_defaults(&c);
        for (int k = 0; k < 3 && bad[i][k]; k++)
            cr_assert_eq(cfg_set(&c, bad[i][k]), ERR_OK, "%s", err_msg());
        if (i == 2) cfg_set(&c, "net.world=3");
        cr_assert_eq(cfg_validate(&c), ERR_INVAL, "case %zu", i);
        cr_assert(strstr(err_msg(), "net.discover"), "%s", err_msg());
    }
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(c.net.discover, CFG_DISCOVER_OFF);
    cr_assert_eq(c.net.discover_port, DISCOVER_PORT);
    cr_assert_eq(cfg_set(&c, "net.discover=lan"), ERR_OK);
    cr_assert_eq(cfg_set(&c, "net.world=3"), ERR_OK);
    cr_assert_eq(cfg_set(&c, "net.cluster_key_file=k"), ERR_OK);
    cr_assert_eq(cfg_validate(&c), ERR_OK, "%s", err_msg());
    cr_assert_eq(cfg_group_size(&c), 3);
    cr_assert_eq(cfg_set(&c, "net.discover=wan"), ERR_INVAL);
    cr_assert_eq(cfg_set(&c, "net.discover_port=0"), ERR_INVAL);
}
