// discover.c: LAN discovery (discover.h has the wire layout and what is rejected). One thread
// per object owns the UDP socket: it announces every period (jittered, a fresh nonce per
// datagram and destination) and classifies what arrives; the members, the replay cache and the
// counters live under one mutex, and discover_wait sleeps on a condition variable the thread
// signals. A datagram is checked in order of cost: size and magic, cluster id, tag (HMAC-SHA256,
// CRYPTO_memcmp), timestamp window, replay cache, run id; only an authentic one enters the cache.
#include "sparta/peer/discover.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <inttypes.h>
#include <net/if.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sparta/peer/le.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"

#define REPLAY_N     4096  // (node, nonce) pairs remembered: > 30 s of 5 announcements/s x 25
#define MAX_DESTS    32    // broadcast destinations per round
#define LOG_EVERY_MS 10000 // a reason is logged at its first datagram, then at most this often
#define LIVE_MS      3000  // a member not heard for this long is not counted as found
#define INSTANCE_MS  1000  // another instance of a node heard within this of the last: duplicated

static const char *const verdict_names[DISCOVER_N_VERDICTS] = {
    "accepted", "self",     "bad_format", "other_cluster", "forged",
    "stale",    "replayed", "other_run",  "duplicate_id"};

const char *discover_verdict_str(discover_verdict v) {
    return (unsigned)v < DISCOVER_N_VERDICTS ? verdict_names[v] : "?";
}

static void hex_id(const uint8_t id[DISCOVER_ID_BYTES], char *hex) {
    for (int i = 0; i < DISCOVER_ID_BYTES; i++)
        snprintf(hex + 2 * i, 3, "%02x", id[i]);
}

static uint64_t rand64(void) {
    uint64_t v = 0;
    if (RAND_bytes((unsigned char *)&v, sizeof v) != 1) { // never on a working OpenSSL
        struct timespec t = sys_wall_time();
        v = ((uint64_t)t.tv_nsec << 20) ^ (uint64_t)t.tv_sec ^ ((uint64_t)getpid() << 40);
    }
    return v;
}

static uint64_t wall_ms(void) {
    struct timespec t = sys_wall_time();
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static void hmac(const uint8_t *key, size_t key_len, const uint8_t *data, size_t n,
                 uint8_t out[DISCOVER_TAG_BYTES]) {
    unsigned int len = DISCOVER_TAG_BYTES;
    unsigned char *r = HMAC(EVP_sha256(), key, (int)key_len, data, n, out, &len);
    ASSERT(r && len == DISCOVER_TAG_BYTES); // only fails without SHA-256 in libcrypto
}

uint64_t discover_cluster_id(const uint8_t *key, size_t key_len) {
    static const char text[] = "spartan discover cluster id";
    uint8_t tag[DISCOVER_TAG_BYTES];
    hmac(key, key_len, (const uint8_t *)text, sizeof text - 1, tag);
    return le_get64(tag);
}

static int addr_ok(const char *s, size_t len) {
    if (len == 0 || len >= DISCOVER_ADDR_MAX) return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] <= ' ' || s[i] > '~') return 0;
    return 1;
}

size_t discover_pack(const discover_announce *a, const uint8_t *key, size_t key_len, uint8_t *buf,
                     size_t n) {
    size_t L = strnlen(a->addr, DISCOVER_ADDR_MAX);
    if (!addr_ok(a->addr, L) || n < DISCOVER_FIXED_BYTES + L) return 0;
    le_put32(buf, DISCOVER_MAGIC);
    le_put16(buf + 4, DISCOVER_VERSION);
    le_put16(buf + 6, (uint16_t)L);
    le_put64(buf + 8, a->cluster);
    le_put64(buf + 16, a->run_id);
    memcpy(buf + 24, a->node, DISCOVER_ID_BYTES);
    le_put64(buf + 40, a->instance);
    le_put64(buf + 48, a->time_ms);
    le_put64(buf + 56, a->nonce);
    memcpy(buf + 64, a->addr, L);
    hmac(key, key_len, buf, 64 + L, buf + 64 + L);
    return DISCOVER_FIXED_BYTES + L;
}

discover_verdict discover_unpack(const uint8_t *buf, size_t len, const uint8_t *key, size_t key_len,
                                 discover_announce *a) {
    memset(a, 0, sizeof *a);
    if (len < DISCOVER_FIXED_BYTES || len > DISCOVER_MAX_BYTES) return DISCOVER_BAD_FORMAT;
    size_t L = le_get16(buf + 6);
    if (le_get32(buf) != DISCOVER_MAGIC || le_get16(buf + 4) != DISCOVER_VERSION ||
        len != DISCOVER_FIXED_BYTES + L || !addr_ok((const char *)buf + 64, L))
        return DISCOVER_BAD_FORMAT;
    a->cluster = le_get64(buf + 8);
    if (a->cluster != discover_cluster_id(key, key_len)) return DISCOVER_OTHER_CLUSTER;
    uint8_t tag[DISCOVER_TAG_BYTES];
    hmac(key, key_len, buf, 64 + L, tag);
    if (CRYPTO_memcmp(tag, buf + 64 + L, DISCOVER_TAG_BYTES) != 0) return DISCOVER_FORGED;
    a->run_id = le_get64(buf + 16);
    memcpy(a->node, buf + 24, DISCOVER_ID_BYTES);
    a->instance = le_get64(buf + 40);
    a->time_ms = le_get64(buf + 48);
    a->nonce = le_get64(buf + 56);
    memcpy(a->addr, buf + 64, L);
    a->addr[L] = 0;
    return DISCOVER_ACCEPTED;
}

typedef struct {
    uint8_t node[DISCOVER_ID_BYTES];
    uint64_t instance, last_ts;
    double heard_ms;
    char addr[DISCOVER_ADDR_MAX];
    int dup; // heard from two instances: its addresses are in addr and dup_addr
    char dup_addr[DISCOVER_ADDR_MAX];
} member;

typedef struct {
    uint8_t node[DISCOVER_ID_BYTES];
    uint64_t nonce;
} seen;

struct discover {
    // set at create, read-only after
    uint8_t key[DISCOVER_KEY_MAX];
    size_t key_len;
    uint64_t cluster, run_id, instance;
    uint8_t node[DISCOVER_ID_BYTES];
    char node_hex[2 * DISCOVER_ID_BYTES + 1];
    char adv[DISCOVER_ADDR_MAX]; // the advertised address, or only ":port" when per destination
    int adv_wild;
    int port, period_ms, window_ms;
    char dest[64];
    char tag[32];
    int fd;
    pthread_t thread;
    atomic_int stop;
    // under mu
    pthread_mutex_t mu;
    pthread_cond_t cv;
    member *m;
    int n_m, cap_m;
    seen *cache;
    int cache_next, cache_n;
    discover_stats st;
    char self_addr[DISCOVER_ADDR_MAX];
    char dup_msg[512];                      // this node's ID announced by another instance
    double logged_ms[DISCOVER_N_VERDICTS];  // when each reason was last logged
    uint64_t logged_n[DISCOVER_N_VERDICTS]; // its count then
};

// ---- receiving ----

static member *find_member(discover *d, const uint8_t *node) {
    for (int i = 0; i < d->n_m; i++)
        if (!memcmp(d->m[i].node, node, DISCOVER_ID_BYTES)) return &d->m[i];
    return NULL;
}

static int seen_before(discover *d, const discover_announce *a) {
    for (int i = 0; i < d->cache_n; i++)
        if (d->cache[i].nonce == a->nonce && !memcmp(d->cache[i].node, a->node, DISCOVER_ID_BYTES))
            return 1;
    seen *s = &d->cache[d->cache_next];
    memcpy(s->node, a->node, DISCOVER_ID_BYTES);
    s->nonce = a->nonce;
    d->cache_next = (d->cache_next + 1) % REPLAY_N;
    if (d->cache_n < REPLAY_N) d->cache_n++;
    return 0;
}

// host_of copies the host part of "host:port" (brackets kept) into buf.
static void host_of(const char *addr, char *buf, size_t n) {
    const char *colon = strrchr(addr, ':');
    size_t len = colon ? (size_t)(colon - addr) : strlen(addr);
    snprintf(buf, n, "%.*s", (int)len, addr);
}

// classify decides what a datagram from src is and updates the members; under mu.
static discover_verdict classify(discover *d, const uint8_t *buf, size_t len, const char *src,
                                 discover_announce *a) {
    discover_verdict v = discover_unpack(buf, len, d->key, d->key_len, a);
    if (v != DISCOVER_ACCEPTED) return v;
    uint64_t now = wall_ms();
    uint64_t skew = a->time_ms > now ? a->time_ms - now : now - a->time_ms;
    if (skew > (uint64_t)d->window_ms) return DISCOVER_STALE;
    if (seen_before(d, a)) return DISCOVER_REPLAYED;
    if (a->run_id != d->run_id) return DISCOVER_OTHER_RUN;
    if (!memcmp(a->node, d->node, DISCOVER_ID_BYTES)) {
        if (a->instance == d->instance) return DISCOVER_SELF;
        if (!d->dup_msg[0])
            snprintf(d->dup_msg, sizeof d->dup_msg,
                     "discover: this machine's node ID %s is also announced by %s (from %s, "
                     "another process instance): a state folder was copied; delete its node_id "
                     "on one of the two machines (a new one is made at the next start)",
                     d->node_hex, a->addr, src);
        return DISCOVER_DUPLICATE_ID;
    }
    double t = sys_now_ms();
    member *m = find_member(d, a->node);
    if (m && m->instance != a->instance) {
        if (m->dup || t - m->heard_ms < INSTANCE_MS) { // two processes announce one ID
            if (!m->dup) snprintf(m->dup_addr, sizeof m->dup_addr, "%s", a->addr);
            m->dup = 1;
            return DISCOVER_DUPLICATE_ID;
        }
        m->instance = a->instance; // the process restarted: take the new instance
        m->last_ts = 0;
    }
    if (m && a->time_ms < m->last_ts) return DISCOVER_REPLAYED; // older than the last one
    if (!m) {
        if (d->n_m == d->cap_m) {
            d->cap_m = d->cap_m ? 2 * d->cap_m : 8;
            d->m = xrealloc(d->m, (size_t)d->cap_m * sizeof *d->m);
        }
        m = &d->m[d->n_m++];
        memset(m, 0, sizeof *m);
        memcpy(m->node, a->node, DISCOVER_ID_BYTES);
        m->instance = a->instance;
        snprintf(m->addr, sizeof m->addr, "%s", a->addr);
    } else {
        char h[DISCOVER_ADDR_MAX];
        host_of(a->addr, h, sizeof h); // prefer the address the datagram came from
        if (!strcmp(h, src)) snprintf(m->addr, sizeof m->addr, "%s", a->addr);
    }
    m->last_ts = a->time_ms;
    m->heard_ms = t;
    return DISCOVER_ACCEPTED;
}

static void on_datagram(discover *d, const uint8_t *buf, size_t len, const char *src) {
    discover_announce a;
    pthread_mutex_lock(&d->mu);
    discover_verdict v = classify(d, buf, len, src, &a);
    d->st.received++;
    d->st.n[v]++;
    uint64_t n = d->st.n[v];
    double t = sys_now_ms();
    int log_it = v != DISCOVER_ACCEPTED && v != DISCOVER_SELF &&
                 (d->logged_n[v] == 0 || t - d->logged_ms[v] >= LOG_EVERY_MS);
    if (log_it) {
        d->logged_n[v] = n;
        d->logged_ms[v] = t;
    }
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    if (!log_it) return;
    if (v == DISCOVER_OTHER_CLUSTER || v == DISCOVER_OTHER_RUN)
        LOG_I(d->tag, "ignored an announcement from %s: reason=%s count=%" PRIu64 "%s%s", src,
              discover_verdict_str(v), n, v == DISCOVER_OTHER_RUN ? " addr=" : "",
              v == DISCOVER_OTHER_RUN ? a.addr : "");
    else
        LOG_W(d->tag, "ignored an announcement from %s: reason=%s count=%" PRIu64, src,
              discover_verdict_str(v), n);
}

// ---- sending ----

typedef struct {
    struct sockaddr_in to;
    char src[INET_ADDRSTRLEN]; // the local address it goes out from ("" if unknown)
} dest;

static void local_addr_for(const struct sockaddr_in *to, char *src, size_t n) {
    src[0] = 0;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) return;
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
    struct sockaddr_in me;
    socklen_t ml = sizeof me;
    if (connect(s, (const struct sockaddr *)to, sizeof *to) == 0 &&
        getsockname(s, (struct sockaddr *)&me, &ml) == 0 && me.sin_addr.s_addr != INADDR_ANY)
        inet_ntop(AF_INET, &me.sin_addr, src, (socklen_t)n);
    close(s);
}

// list_dests fills ds: the configured destination, or every up IPv4 interface's broadcast
// address (its own address as the source) and then 255.255.255.255.
static int list_dests(const discover *d, dest *ds) {
    int n = 0;
    if (d->dest[0]) {
        memset(&ds[0], 0, sizeof ds[0]);
        ds[0].to.sin_family = AF_INET;
        ds[0].to.sin_port = htons((uint16_t)d->port);
        inet_pton(AF_INET, d->dest, &ds[0].to.sin_addr);
        local_addr_for(&ds[0].to, ds[0].src, sizeof ds[0].src);
        return 1;
    }
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) == 0) {
        for (struct ifaddrs *i = ifs; i && n < MAX_DESTS - 1; i = i->ifa_next) {
            if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP) ||
                !(i->ifa_flags & IFF_BROADCAST) || !i->ifa_broadaddr)
                continue;
            memset(&ds[n], 0, sizeof ds[n]);
            ds[n].to = *(const struct sockaddr_in *)i->ifa_broadaddr;
            ds[n].to.sin_family = AF_INET;
            ds[n].to.sin_port = htons((uint16_t)d->port);
            inet_ntop(AF_INET, &((const struct sockaddr_in *)i->ifa_addr)->sin_addr, ds[n].src,
                      sizeof ds[n].src);
            n++;
        }
        freeifaddrs(ifs);
    }
    memset(&ds[n], 0, sizeof ds[n]);
    ds[n].to.sin_family = AF_INET;
    ds[n].to.sin_port = htons((uint16_t)d->port);
    ds[n].to.sin_addr.s_addr = htonl(INADDR_BROADCAST);
    local_addr_for(&ds[n].to, ds[n].src, sizeof ds[n].src);
    return n + 1;
}

static void announce(discover *d, const dest *ds, int n_ds) {
    for (int i = 0; i < n_ds; i++) {
        discover_announce a = {.cluster = d->cluster,
                               .run_id = d->run_id,
                               .instance = d->instance,
                               .time_ms = wall_ms(),
                               .nonce = rand64()};
        memcpy(a.node, d->node, DISCOVER_ID_BYTES);
        if (d->adv_wild && !ds[i].src[0]) continue; // no address to give on that route
        if (d->adv_wild)
            snprintf(a.addr, sizeof a.addr, "%s%s", ds[i].src, d->adv);
        else
            snprintf(a.addr, sizeof a.addr, "%s", d->adv);
        uint8_t buf[DISCOVER_MAX_BYTES];
        size_t len = discover_pack(&a, d->key, d->key_len, buf, sizeof buf);
        if (!len) continue;
        pthread_mutex_lock(&d->mu);
        if (!d->self_addr[0]) snprintf(d->self_addr, sizeof d->self_addr, "%s", a.addr);
        pthread_mutex_unlock(&d->mu);
        if (sendto(d->fd, buf, len, 0, (const struct sockaddr *)&ds[i].to, sizeof ds[i].to) < 0) {
            char to[INET_ADDRSTRLEN] = "?";
            inet_ntop(AF_INET, &ds[i].to.sin_addr, to, sizeof to);
            LOG_D(d->tag, "send to %s: %s", to, strerror(errno));
        }
    }
}

static void *discover_thread(void *arg) {
    discover *d = arg;
    dest ds[MAX_DESTS];
    int n_ds = 0;
    double next = 0, refresh = 0;
    uint64_t jit = d->instance | 1;
    while (!atomic_load(&d->stop)) {
        double now = sys_now_ms();
        if (now >= refresh) { // interfaces may come and go
            n_ds = list_dests(d, ds);
            refresh = now + 5000;
        }
        if (now >= next) {
            announce(d, ds, n_ds);
            jit ^= jit << 13, jit ^= jit >> 7, jit ^= jit << 17;
            next = now + d->period_ms * (0.75 + 0.5 * (double)(jit % 1000) / 1000.0);
        }
        int wait = (int)(next - sys_now_ms());
        if (wait > 100) wait = 100; // the stop flag is checked at least this often
        if (wait < 0) wait = 0;
        struct pollfd p = {.fd = d->fd, .events = POLLIN};
        if (poll(&p, 1, wait) <= 0) continue;
        for (int k = 0; k < 64; k++) { // drain, bounded
            uint8_t buf[DISCOVER_MAX_BYTES + 1];
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t r =
                recvfrom(d->fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
            if (r < 0) break;
            char src[INET_ADDRSTRLEN + 8] = "?";
            if (fl >= sizeof from && from.sin_family == AF_INET)
                inet_ntop(AF_INET, &from.sin_addr, src, sizeof src);
            on_datagram(d, buf, (size_t)r, src);
        }
    }
    return NULL;
}

// ---- the public calls ----

int discover_create(discover **out, const discover_opts *o) {
    *out = NULL;
    if (!o->key || o->key_len < DISCOVER_KEY_MIN || o->key_len > DISCOVER_KEY_MAX)
        return err_set(ERR_INVAL, "discover: the cluster key must hold %d to %d bytes",
                       DISCOVER_KEY_MIN, DISCOVER_KEY_MAX);
    const char *adv = o->advertise ? o->advertise : "";
    const char *colon = strrchr(adv, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || !end || *end || port < 1 || port > 65535 || strlen(adv) >= DISCOVER_ADDR_MAX)
        return err_set(ERR_INVAL, "discover: advertised address '%s' is not host:port", adv);
    struct in_addr dst;
    const char *dh = o->dest ? o->dest : "";
    if (dh[0] && inet_pton(AF_INET, dh, &dst) != 1)
        return err_set(ERR_INVAL, "net.discover_addr '%s' is not an IPv4 address", dh);
    discover *d = xcalloc(1, sizeof *d);
    memcpy(d->key, o->key, o->key_len);
    d->key_len = o->key_len;
    d->cluster = discover_cluster_id(d->key, d->key_len);
    d->run_id = o->run_id;
    d->instance = o->instance ? o->instance : rand64();
    memcpy(d->node, o->node, DISCOVER_ID_BYTES);
    hex_id(d->node, d->node_hex);
    size_t hl = (size_t)(colon - adv);
    d->adv_wild = hl == 0 || (hl == 7 && !strncmp(adv, "0.0.0.0", 7));
    snprintf(d->adv, sizeof d->adv, "%s", d->adv_wild ? colon : adv);
    d->port = o->port ? o->port : DISCOVER_PORT;
    d->period_ms = o->period_ms > 0 ? o->period_ms : 200;
    d->window_ms = o->window_ms > 0 ? o->window_ms : 30000;
    snprintf(d->dest, sizeof d->dest, "%s", dh);
    snprintf(d->tag, sizeof d->tag, "%s", o->tag ? o->tag : "discover");
    d->cache = xcalloc(REPLAY_N, sizeof *d->cache);
    pthread_mutex_init(&d->mu, NULL);
    sys_cond_init(&d->cv);
    d->fd = socket(AF_INET, SOCK_DGRAM, 0);
    int one = 1, rc = ERR_OK;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d->port)};
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (d->fd < 0 || setsockopt(d->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        setsockopt(d->fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) ||
        setsockopt(d->fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) ||
        bind(d->fd, (struct sockaddr *)&a, sizeof a))
        rc = err_set(ERR_NET, "discover: cannot bind UDP port %d: %s", d->port, strerror(errno));
    if (!rc && dh[0] && (ntohl(dst.s_addr) >> 28) == 14) { // 224.0.0.0/4: join the group
        struct ip_mreq mr = {.imr_multiaddr = dst};
        mr.imr_interface.s_addr = htonl(INADDR_ANY);
        if (setsockopt(d->fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof mr) ||
            setsockopt(d->fd, IPPROTO_IP, IP_MULTICAST_LOOP, &one, sizeof one))
            rc = err_set(ERR_NET, "discover: cannot join multicast group %s: %s", dh,
                         strerror(errno));
    }
    if (!rc && pthread_create(&d->thread, NULL, discover_thread, d))
        rc = err_set(ERR_NET, "discover: cannot start its thread");
    if (rc) {
        if (d->fd >= 0) close(d->fd);
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
        free(d->cache);
        free(d);
        return rc;
    }
    LOG_I(d->tag, "node=%s announcing %s on UDP port %d to %s", d->node_hex,
          d->adv_wild ? "<interface address>" : d->adv, d->port,
          d->dest[0] ? d->dest : "255.255.255.255 and every interface's broadcast address");
    *out = d;
    return ERR_OK;
}

static int cmp_member(const void *a, const void *b) {
    return memcmp(((const discover_member *)a)->node, ((const discover_member *)b)->node,
                  DISCOVER_ID_BYTES);
}

// found_list writes "addr (node xxxxxxxx), ..." of the live members, self first; returns how
// many (self included) and fills out (world entries at most) when out is not NULL. Under mu.
static int found_list(discover *d, double now, char *buf, size_t n, discover_member *out, int cap,
                      int *dups) {
    size_t len = (size_t)snprintf(buf, n, "%s (node %.8s, this one)",
                                  d->self_addr[0] ? d->self_addr : "?", d->node_hex);
    int k = 1;
    if (out && cap > 0) {
        memset(&out[0], 0, sizeof out[0]);
        memcpy(out[0].node, d->node, DISCOVER_ID_BYTES);
        snprintf(out[0].node_hex, sizeof out[0].node_hex, "%s", d->node_hex);
        snprintf(out[0].addr, sizeof out[0].addr, "%s", d->self_addr);
        out[0].self = 1;
    }
    *dups = 0;
    for (int i = 0; i < d->n_m; i++) {
        member *m = &d->m[i];
        if (now - m->heard_ms > LIVE_MS) continue;
        char hex[2 * DISCOVER_ID_BYTES + 1];
        hex_id(m->node, hex);
        if (m->dup) {
            (*dups)++;
            if (len < n)
                len += (size_t)snprintf(buf + len, n - len, ", DUPLICATED node %s at %s and at %s",
                                        hex, m->addr, m->dup_addr);
            continue;
        }
        if (len < n) len += (size_t)snprintf(buf + len, n - len, ", %s (node %.8s)", m->addr, hex);
        if (out && k < cap) {
            memset(&out[k], 0, sizeof out[k]);
            memcpy(out[k].node, m->node, DISCOVER_ID_BYTES);
            snprintf(out[k].node_hex, sizeof out[k].node_hex, "%s", hex);
            snprintf(out[k].addr, sizeof out[k].addr, "%s", m->addr);
        }
        k++;
    }
    return k;
}

int discover_wait(discover *d, int world, int timeout_ms, discover_member *out) {
    double t0 = sys_now_ms(), deadline = t0 + timeout_ms, settle = 0;
    int last = -1, rc = ERR_OK;
    char list[2048], stats[256];
    pthread_mutex_lock(&d->mu);
    for (;;) {
        double now = sys_now_ms();
        if (d->dup_msg[0]) {
            rc = err_set(ERR_PEER, "%s", d->dup_msg);
            break;
        }
        int dups = 0, n = found_list(d, now, list, sizeof list, NULL, 0, &dups);
        if (n != last && d->self_addr[0]) { // once its own address is known
            LOG_I(d->tag, "%d/%d peers found: %s", n, world, list);
            last = n;
        }
        if (dups) {
            rc = err_set(ERR_PEER, "discover: a node ID is duplicated (a copied state folder): %s",
                         list);
            break;
        }
        if (n > world) {
            rc = err_set(ERR_PEER,
                         "discover: %d peers announce this run but net.world = %d: %s (give each "
                         "cluster its own key, or set net.world)",
                         n, world, list);
            break;
        }
        if (n == world && d->self_addr[0]) {
            if (settle == 0) settle = now + 2 * d->period_ms;
            if (now >= settle) {
                found_list(d, now, list, sizeof list, out, world, &dups);
                qsort(out, (size_t)world, sizeof *out, cmp_member);
                break;
            }
        } else {
            settle = 0;
        }
        if (now >= deadline) {
            discover_stats_text(&d->st, stats, sizeof stats);
            rc = err_set(ERR_TIMEOUT,
                         "discover: found %d of %d peers within %d ms: %s (datagrams: %s; same "
                         "net.cluster_key_file, config and seed on every peer? UDP port %d open?)",
                         n, world, timeout_ms, list, stats, d->port);
            break;
        }
        double wake = deadline - now;
        if (wake > 100) wake = 100;
        struct timespec ts = sys_deadline(wake);
        pthread_cond_timedwait(&d->cv, &d->mu, &ts);
    }
    int dup = d->dup_msg[0] != 0;
    pthread_mutex_unlock(&d->mu);
    if (dup) sys_sleep_ms(1000); // keep announcing, so the other instance sees the clash too
    return rc;
}

void discover_get_stats(discover *d, discover_stats *st) {
    pthread_mutex_lock(&d->mu);
    *st = d->st;
    pthread_mutex_unlock(&d->mu);
}

void discover_stats_text(const discover_stats *st, char *buf, size_t n) {
    size_t len = (size_t)snprintf(buf, n, "received=%" PRIu64, st->received);
    for (int v = 0; v < DISCOVER_N_VERDICTS && len < n; v++)
        if (st->n[v])
            len += (size_t)snprintf(buf + len, n - len, " %s=%" PRIu64,
                                    discover_verdict_str((discover_verdict)v), st->n[v]);
}

void discover_destroy(discover *d) {
    if (!d) return;
    atomic_store(&d->stop, 1);
    pthread_join(d->thread, NULL);
    close(d->fd);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    free(d->m);
    free(d->cache);
    OPENSSL_cleanse(d->key, sizeof d->key);
    free(d);
}

// ---- node ID, key, port ----

int discover_node_id_path(char *buf, size_t n) {
    const char *s = getenv("SPARTAN_STATE_DIR");
    char home[1024];
    int len;
    if (s && s[0])
        len = snprintf(buf, n, "%s/node_id", s);
    else if (sys_state_home(home, sizeof home) == ERR_OK)
        len = snprintf(buf, n, "%s/spartan/node_id", home);
    else
        return err_set(ERR_INVAL, "discover: no place for the node ID: set SPARTAN_STATE_DIR");
    if (len < 0 || (size_t)len >= n) return err_set(ERR_INVAL, "discover: state path too long");
    return ERR_OK;
}

static int parse_id(const char *text, uint8_t id[DISCOVER_ID_BYTES]) {
    for (int i = 0; i < DISCOVER_ID_BYTES; i++) {
        unsigned v;
        char two[3] = {text[2 * i], text[2 * i + 1], 0};
        if (!two[0] || !two[1] || !strchr("0123456789abcdef", two[0]) ||
            !strchr("0123456789abcdef", two[1]) || sscanf(two, "%2x", &v) != 1)
            return -1;
        id[i] = (uint8_t)v;
    }
    const char *rest = text + 2 * DISCOVER_ID_BYTES;
    return rest[0] == 0 || (rest[0] == '\n' && rest[1] == 0) ? 0 : -1;
}

static int read_id(const char *path, uint8_t id[DISCOVER_ID_BYTES]) {
    FILE *f = fopen(path, "r");
    if (!f) return errno == ENOENT ? -1 : err_set(ERR_IO, "%s: %s", path, strerror(errno));
    char text[64] = "";
    size_t r = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[r] = 0;
    if (parse_id(text, id))
        return err_set(ERR_FORMAT,
                       "%s holds no node ID (32 lowercase hex digits); delete it to make a new one",
                       path);
    return ERR_OK;
}

int discover_node_id(const char *path, uint8_t id[DISCOVER_ID_BYTES], char *hex) {
    int rc = read_id(path, id);
    if (rc < 0) { // no file yet: make one
        char dir[1024], tmp[1100], text[2 * DISCOVER_ID_BYTES + 2];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        if (slash && dir[0] && (rc = sys_mkdir_p(dir))) return rc;
        if (RAND_bytes(id, DISCOVER_ID_BYTES) != 1)
            return err_set(ERR_IO, "discover: no random bytes for a node ID");
        hex_id(id, text);
        strcat(text, "\n");
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%08" PRIx64, path, (long)getpid(), rand64());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd < 0) return err_set(ERR_IO, "%s: %s", tmp, strerror(errno));
        size_t len = strlen(text);
        int ok = write(fd, text, len) == (ssize_t)len && sys_fsync_durable(fd) == 0;
        close(fd);
        if (ok && link(tmp, path) != 0) {
            // EEXIST: another process made it first, so take that one; a file system without
            // hard links gets a rename (atomic too, but the last of two racing starts wins)
            if (errno == EEXIST)
                ok = 2;
            else
                ok = rename(tmp, path) == 0 ? 3 : 0;
        }
        int saved = errno;
        if (ok != 3) unlink(tmp);
        if (!ok) return err_set(ERR_IO, "cannot write the node ID %s: %s", path, strerror(saved));
        if (ok == 2 && (rc = read_id(path, id)) != ERR_OK)
            return rc < 0 ? err_set(ERR_IO, "%s vanished", path) : rc;
        rc = ERR_OK;
    }
    if (!rc && hex) hex_id(id, hex);
    return rc;
}

int discover_load_key(const char *path, uint8_t *key, size_t *len) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_set(ERR_IO, "cluster key file '%s': %s", path, strerror(errno));
    struct stat st;
    int rc = ERR_OK;
    if (fstat(fd, &st) != 0) {
        rc = err_set(ERR_IO, "cluster key file '%s': %s", path, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        rc = err_set(ERR_INVAL, "cluster key file '%s' is not a regular file", path);
    } else if (st.st_mode & 077) {
        rc = err_set(ERR_INVAL,
                     "cluster key file '%s' is accessible by its group or others (mode %04o): "
                     "run chmod 600 '%s'",
                     path, (unsigned)(st.st_mode & 07777), path);
    } else {
        uint8_t buf[DISCOVER_KEY_MAX + 1];
        size_t n = 0;
        ssize_t r;
        while (n < sizeof buf && (r = read(fd, buf + n, sizeof buf - n)) > 0)
            n += (size_t)r;
        if (n < DISCOVER_KEY_MIN || n > DISCOVER_KEY_MAX)
            rc = err_set(ERR_INVAL,
                         "cluster key file '%s' holds %zu%s bytes; a key has %d to %d (make one "
                         "with: head -c 32 /dev/urandom > %s)",
                         path, n, n > DISCOVER_KEY_MAX ? "+" : "", DISCOVER_KEY_MIN,
                         DISCOVER_KEY_MAX, path);
        else {
            memcpy(key, buf, n);
            *len = n;
        }
        OPENSSL_cleanse(buf, sizeof buf);
    }
    close(fd);
    return rc;
}

int discover_free_port(const char *host, int *port) {
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (host && host[0]) inet_pton(AF_INET, host, &a.sin_addr); // a name: every address
    int s = socket(AF_INET, SOCK_STREAM, 0);
    socklen_t al = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) ||
        getsockname(s, (struct sockaddr *)&a, &al)) {
        int e = errno;
        if (s >= 0) close(s);
        return err_set(ERR_NET, "no free TCP port: %s", strerror(e));
    }
    close(s);
    *port = ntohs(a.sin_port);
    return ERR_OK;
}
