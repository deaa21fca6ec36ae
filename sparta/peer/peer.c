// peer.c: the peer layer (see peer.h). One nng byte stream per pair of members, framed by
// frame.h. Each link has a reader thread (handshake, then frames into the channel queues) and a
// writer thread (frames out of the link's send queues, channel order first); the acceptor takes
// new streams and the maintainer dials, reaps dead links and, with link emulation, a third
// thread delivers frames when they are due.
// Invariant: everything below `mu` in peer_group and link (queues, view, by_rank, counters) is
// read and written under g->mu only; the streams are used by their link's two threads only, and
// closed (never freed) by others. A link is freed only by the maintainer or destroy, after both
// of its threads have been joined.
#include "sparta/peer/peer.h"
#include "sparta/peer/tls.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>

#include "sparta/peer/handshake.h"
#include "sparta/peer/hello.h"
#include "sparta/peer/ident.h"
#include "sparta/peer/le.h"
#include "sparta/peer/mac.h"
#include "sparta/peer/wire.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"

enum {
    DIAL_MIN_MS = 100,        // first redial after a failed dial or a lost link
    DIAL_MAX_MS = 1000,       // the wait doubles up to this
    DIAL_TIMEOUT_MS = 1000,   // one dial attempt
    MAINT_MS = 50,            // the maintainer's longest sleep
    MAX_PENDING = 32,         // connections still in their handshake; more are closed at once
    HELLO_MAX = 65536,        // the largest SYS payload
    RECVQ_MSGS = 4096,        // messages queued per channel for peer_recv
    POOL_MAX = 64,            // spare message buffers kept for reuse
    WRITE_TIMEOUT_MS = 60000, // a stream that takes no byte for this long is taken as dead
    HEARTBEAT_MS = 1000,      // peer_opts.heartbeat_ms's default
};
#define RECVQ_BYTES    ((size_t)512 << 20) // per channel
#define POOL_MAX_BYTES ((size_t)256 << 20)

// Link states.
enum { L_HANDSHAKE, L_UP, L_DEAD };
// A frame to send: copied (owned) or the caller's memory (peer_send_wait), which the caller's
// stack holds until state is F_DONE.
enum { F_QUEUED, F_WRITING, F_DONE };

// Send queue bound per link and channel (frames); RING and STATE senders wait instead.
static const int sendq_cap[PEER_NCH] = {64, 256, 64, 16, 4};
// Whether a full receive queue drops (1) or holds the reader back (0).
static const int recv_drops[PEER_NCH] = {1, 1, 1, 0, 0};
static const char *const ch_name[PEER_NCH] = {"sys", "control", "sparta", "ring", "state"};

typedef struct out_frame {
    struct out_frame *next;
    unsigned char hdr[FRAME_HEADER];
    const void *data;
    uint32_t len;
    int ch;
    peer_msg *owned; // a pool buffer holding a copy, or NULL (caller's memory)
    int has_crc;     // crc is the payload's CRC32C, from the caller (peer_post_crc)
    int mac;         // a tag follows (the link's tx, set when the frame was queued)
    uint32_t crc;
    struct plink *link; // zero-copy: the link whose queue holds it
    int state, rc;
} out_frame;

typedef struct emu_item {
    struct emu_item *next;
    double due;
    struct plink *l;
    peer_msg *m;
} emu_item;

typedef struct plink {
    peer_group *g;
    nng_stream *s;
    pthread_t rd, wr;
    nng_aio *raio, *waio;     // the reader's and the writer's (stopped to abort them)
    int dial_rank;            // the rank we dialled (static, or a view member), else -1
    int hint;                 // joining: the rank of the member we dialled
    int joining;              // we dialled the rendezvous address to join
    int rank;                 // the member's rank once up (-1 before)
    uint64_t member;          // its member id once its hello came
    char addr[PEER_ADDR_MAX]; // the address it listens on, as it said (or we fixed up)
    char remote[64];          // the IP the stream comes from
    char build[64];
    int state;
    int threads_done; // reader and writer have exited (count)
    int writing;      // the channel of the frame being written, or -1
    int in_pending;   // counted in g->pending (until its handshake ends)
    int lingering;    // (under mu) a refusal is out: reading until the other side closes
    int accept_rank;  // (under mu) we took the peer's hello as rank accept_rank (-1: not yet)
    int acked;        // (under mu) the peer took ours (SYS_ACK came)
    int nonce_in;     // signed handshakes: the other side's nonce came (and our hello went out)
    unsigned char my_nonce[IDENT_NONCE], their_nonce[IDENT_NONCE];
    char name[IDENT_NAME_MAX]; // signed handshakes: its certificate's CN, once proven
    mac_ctx *tx, *rx; // cluster key: the tags of our frames after our hello (the writer's), and of
                      // theirs after theirs (the reader's)
    out_frame *qh[PEER_NCH], *qt[PEER_NCH];
    int qn[PEER_NCH];
    pthread_cond_t wcv; // the writer waits for frames
    double emu_free;    // emulation: when the emulated wire from this member is free
    uint64_t emu_rng;
    // Failure detection (peer_opts.heartbeat_ms). The reader sets rx_wait while it waits on the
    // stream, and rx_ms (sys_now_ms) when it starts to wait and whenever bytes arrive; silence is
    // the time since rx_ms while rx_wait is set. tx_ms (under mu): the writer's last write.
    atomic_int rx_wait;
    _Atomic double rx_ms;
    double tx_ms;
    int suspect; // (under mu) logged as silent for half the timeout
    int held;    // (under mu) the watchdog is closing it: reap leaves it
    struct plink *next;
} plink;

struct peer_group {
    peer_opts o;
    char *listen_url, *join_url, *shared, *build, *tag;
    char self_addr[PEER_ADDR_MAX];
    uint64_t id, settings_hash;
    int is_static, world;
    nng_stream_listener *lst;
    pthread_t acc, maint, emu, watch;
    int emu_on;
    int hb_ms;       // peer_opts.heartbeat_ms with its default (<= 0: no failure detection)
    double hb_check; // (maintainer) the last check_silence

    pthread_mutex_t mu;
    pthread_cond_t cv; // links, view, completions, join progress
    int stop;
    int rank; // -1 until joined
    plink *links;
    int pending;
    plink *by_rank[PEER_MAX_MEMBERS];
    peer_member mem[PEER_MAX_MEMBERS]; // the view: mem[r].rank == r when present
    int present[PEER_MAX_MEMBERS];
    uint64_t epoch;
    double next_dial[PEER_MAX_MEMBERS];
    int dial_wait[PEER_MAX_MEMBERS];
    char dial_err[PEER_MAX_MEMBERS][192];
    char refusal[PEER_MAX_MEMBERS][528];
    unsigned char refusal_kind[PEER_MAX_MEMBERS]; // PEER_DIAG_MISMATCH or PEER_DIAG_REFUSED
    unsigned char left[PEER_MAX_MEMBERS];         // its link was up and went down (it left)
    // rendezvous progress
    int join_done, join_self;
    char join_err[600];
    double join_next;
    double orphan_ms; // a rendezvous member: since when it has no link to its coordinator (0: it
                      // has one)
    double orphan_logged; // when maint_rejoin last said so
    // receive queues
    peer_msg *rh[PEER_NCH], *rt[PEER_NCH];
    int rn[PEER_NCH], rwake[PEER_NCH];
    size_t rbytes[PEER_NCH];
    pthread_cond_t rcv[PEER_NCH];
    // spare buffers
    peer_msg *pool;
    int pool_n;
    size_t pool_bytes;
    emu_item *eh;
    // dialers, kept per address (the maintainer's only)
    nng_stream_dialer *dialer[PEER_MAX_MEMBERS], *join_dialer;
    peer_tls tls; // TLS settings (NULL configurations: plain TCP)
    ident *ident; // with TLS: our key, and the CA that other members' proofs must chain to
    unsigned char *mac_key; // without TLS, the cluster key (mac.h), or NULL
    size_t mac_len;
    int join_moved; // (under mu) join_url changed: join_dialer is for the old one
    char dialer_url[PEER_MAX_MEMBERS][PEER_ADDR_MAX + 8];
    // request/reply on PEER_CH_STATE
    peer_serve_fn serve;
    void *serve_arg;
    int serving; // calls of serve in progress
    uint32_t call_id;
    struct call *calls;
    peer_stats st;
    // misbehaving members (peer_offence, peer_expel)
    int offences[PEER_MAX_MEMBERS];
    unsigned char expelled[PEER_MAX_MEMBERS];
    uint64_t expelled_id[PEER_MAX_MEMBERS]; // the member id it had (0: not known)
};

// A peer_call waiting for its reply.
typedef struct call {
    struct call *next;
    uint32_t id;
    int rank;
    struct plink *link;
    peer_msg *reply;
    int done, rc;
    int damaged; // the reply came, but failed its frame's CRC check
    // peer_call_into: the body (past head bytes) goes straight into dst (cap bytes); filling
    // while the reader writes it there, then direct = 1 with its length and CRC32C
    void *dst;
    size_t head, cap, got;
    int filling, direct;
    uint32_t pcrc, hcrc; // its frame's payload CRC, and the CRC of the payload before the body
} call;

enum { RPC_REQ = 1, RPC_REP = 2, RPC_NOSERVER = 3, RPC_HDR = 5 };

// ---- small helpers -------------------------------------------------------------------------

// cv_wait_until waits on c (made by sys_cond_init) until signalled or sys_now_ms() reaches
// deadline (< 0: no deadline). Returns ETIMEDOUT once the deadline has passed.
static int cv_wait_until(pthread_cond_t *c, pthread_mutex_t *m, double deadline) {
    if (deadline < 0) return pthread_cond_wait(c, m);
    double left = deadline - sys_now_ms();
    if (left <= 0) return ETIMEDOUT;
    struct timespec ts = sys_deadline(left);
    return pthread_cond_timedwait(c, m, &ts);
}

static double deadline_of(int timeout_ms) {
    return timeout_ms < 0 ? -1.0 : sys_now_ms() + timeout_ms;
}

static uint64_t random_id(void) {
    uint64_t id = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&id, sizeof id, 1, f) != 1) id = 0;
    if (f) fclose(f);
    if (!id) id = ((uint64_t)getpid() << 32) ^ (uint64_t)(sys_now_ms() * 1e3) ^ (uint64_t)&id;
    return id ? id : 1;
}

// to_url turns "host:port" into "tcp://host:port" (with TLS: "tls+tcp://host:port"); a URL
// stays as it is (and a tcp:// one becomes tls+tcp:// with TLS).
static char *to_url(const peer_group *g, const char *addr) {
    const char *scheme = g->tls.client ? "tls+tcp://" : "tcp://";
    if (g->tls.client && !strncmp(addr, "tcp://", 6)) addr += 6;
    if (strstr(addr, "://")) return xstrdup(addr);
    size_t n = strlen(addr) + 12;
    char *u = xmalloc(n);
    snprintf(u, n, "%s%s", scheme, addr);
    return u;
}

static int addr_ok(const char *addr, const char *what) {
    if (!addr || !*addr) return err_set(ERR_INVAL, "peer: %s: empty address", what);
    if (strlen(addr) >= PEER_ADDR_MAX)
        return err_set(ERR_INVAL, "peer: %s '%s': longer than %d bytes", what, addr,
                       PEER_ADDR_MAX - 1);
    if (strstr(addr, "://")) return ERR_OK;
    const char *colon = strrchr(addr, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon[1] == 0 || *end || port < 0 || port > 65535)
        return err_set(ERR_INVAL, "peer: %s '%s': not host:port", what, addr);
    return ERR_OK;
}

// wildcard_host: "0.0.0.0:P", ":P", "[::]:P" listen everywhere, so others cannot dial them.
static int wildcard_host(const char *addr) {
    return !strncmp(addr, "0.0.0.0:", 8) || addr[0] == ':' || !strncmp(addr, "[::]:", 5) ||
           !strncmp(addr, "tcp://0.0.0.0:", 14);
}

static const char *tag(peer_group *g) { return g->tag; }

// ---- message buffers -----------------------------------------------------------------------

// msg_get returns a message with room for len bytes: a spare one when one is big enough (so
// the steady state touches no fresh memory), else a new one. Under mu.
static peer_msg *msg_get(peer_group *g, size_t len) {
    peer_msg **pp = &g->pool, *best = NULL, **bestp = NULL;
    for (; *pp; pp = &(*pp)->next_)
        if ((*pp)->cap_ >= len && (!best || (*pp)->cap_ < best->cap_)) {
            best = *pp;
            bestp = pp;
        }
    if (best) {
        *bestp = best->next_;
        g->pool_n--;
        g->pool_bytes -= best->cap_;
        best->next_ = NULL;
        best->len = len;
        return best;
    }
    peer_msg *m = xcalloc(1, sizeof *m);
    m->cap_ = len ? len : 1;
    m->data = xmalloc(m->cap_);
    m->len = len;
    return m;
}

static void msg_put(peer_group *g, peer_msg *m) {
    if (!m) return;
    m->data = (unsigned char *)m->data - m->skip_; // the buffer again
    m->skip_ = 0;
    if (g->pool_n >= POOL_MAX || g->pool_bytes + m->cap_ > POOL_MAX_BYTES) {
        // keep the larger buffers: drop the smallest spare if it is smaller than this one
        free(m->data);
        free(m);
        return;
    }
    m->next_ = g->pool;
    g->pool = m;
    g->pool_n++;
    g->pool_bytes += m->cap_;
}

// ---- stream I/O ----------------------------------------------------------------------------

// stream_io moves all of iov[0..n) through s (send or receive), continuing after partial
// transfers. timeout_ms bounds each step (< 0: none). progress (may be NULL) is set to
// sys_now_ms() whenever some bytes moved. Returns 0 or the nng error.
static int stream_io(nng_stream *s, nng_aio *aio, nng_iov *iov, int n, int send, int timeout_ms,
                     _Atomic double *progress) {
    nng_iov v[4];
    memcpy(v, iov, (size_t)n * sizeof *v);
    int first = 0;
    while (first < n) {
        nng_aio_set_iov(aio, (unsigned)(n - first), v + first);
        nng_aio_set_timeout(aio, timeout_ms < 0 ? NNG_DURATION_INFINITE : timeout_ms);
        if (send)
            nng_stream_send(s, aio);
        else
            nng_stream_recv(s, aio);
        nng_aio_wait(aio);
        int rv = nng_aio_result(aio);
        if (rv) return rv;
        size_t done = nng_aio_count(aio);
        if (done == 0) return NNG_ECLOSED;
        if (progress) atomic_store(progress, sys_now_ms());
        while (first < n && done >= v[first].iov_len) {
            done -= v[first].iov_len;
            first++;
        }
        if (first < n) {
            v[first].iov_buf = (char *)v[first].iov_buf + done;
            v[first].iov_len -= done;
        }
    }
    return 0;
}

// ---- view ----------------------------------------------------------------------------------

static int view_connected(peer_group *g) {
    int n = 0;
    for (int r = 0; r < PEER_MAX_MEMBERS; r++)
        if (g->present[r] && (r == g->rank || g->by_rank[r])) n++;
    return n;
}

static int lowest_present(peer_group *g) {
    for (int r = 0; r < PEER_MAX_MEMBERS; r++)
        if (g->present[r]) return r;
    return -1;
}

static void set_member(peer_group *g, int r, uint64_t id, const char *addr) {
    g->present[r] = 1;
    g->mem[r].rank = r;
    g->mem[r].id = id;
    snprintf(g->mem[r].addr, sizeof g->mem[r].addr, "%s", addr);
}

// ---- sending -------------------------------------------------------------------------------

// enqueue puts f on l's queue for its channel, if the queue holds fewer than cap frames (< 0: no
// bound). Under mu. Returns ERR_OK or ERR_PEER (full).
static int enqueue(plink *l, out_frame *f, int cap) {
    if (cap >= 0 && l->qn[f->ch] >= cap) return ERR_PEER;
    f->next = NULL;
    f->mac = l->tx != NULL;
    if (l->qt[f->ch])
        l->qt[f->ch]->next = f;
    else
        l->qh[f->ch] = f;
    l->qt[f->ch] = f;
    l->qn[f->ch]++;
    pthread_cond_signal(&l->wcv);
    return ERR_OK;
}

// send_copy queues a copy of data(len) on ch to l. Under mu.
static int send_copy(peer_group *g, plink *l, int ch, const void *data, size_t len) {
    if (l->state == L_DEAD || l->qn[ch] >= sendq_cap[ch]) return ERR_PEER;
    peer_msg *m = msg_get(g, len);
    if (len) memcpy(m->data, data, len);
    out_frame *f = xcalloc(1, sizeof *f);
    f->ch = ch;
    f->data = m->data;
    f->len = (uint32_t)len;
    f->owned = m;
    if (enqueue(l, f, sendq_cap[ch])) {
        msg_put(g, m);
        free(f);
        return ERR_PEER;
    }
    return ERR_OK;
}

// link_abort closes l's stream and stops both aios, so that a transfer in progress, or one that
// starts later, fails at once (closing the stream alone does not always wake a receive that
// started around the close). Not under mu.
static void link_abort(plink *l) {
    nng_stream_close(l->s);
    if (l->raio) nng_aio_stop(l->raio);
    if (l->waio) nng_aio_stop(l->waio);
}

static void *writer_main(void *arg) {
    plink *l = arg;
    peer_group *g = l->g;
    nng_aio *aio = l->waio;
    uint32_t seq = 0;
    pthread_mutex_lock(&g->mu);
    while (aio) {
        int ch = 0;
        while (ch < PEER_NCH && !l->qh[ch])
            ch++;
        if (l->state == L_DEAD) break;
        if (ch == PEER_NCH && g->hb_ms > 0 && l->state == L_UP) {
            // idle: a heartbeat once nothing has gone out for a fifth of the timeout
            double due = l->tx_ms + g->hb_ms / 5.0;
            if (sys_now_ms() < due) {
                cv_wait_until(&l->wcv, &g->mu, due);
                continue;
            }
            unsigned char ping = SYS_PING;
            send_copy(g, l, PEER_CH_SYS, &ping, 1);
            continue;
        }
        if (ch == PEER_NCH) {
            pthread_cond_wait(&l->wcv, &g->mu);
            continue;
        }
        out_frame *f = l->qh[ch];
        l->qh[ch] = f->next;
        if (!l->qh[ch]) l->qt[ch] = NULL;
        l->qn[ch]--;
        f->state = F_WRITING;
        l->writing = ch;
        pthread_cond_broadcast(&g->cv); // room for a sender waiting in peer_send_wait
        pthread_mutex_unlock(&g->mu);
        if (f->has_crc)
            frame_encode_crc(f->hdr, (uint8_t)ch, seq++, f->crc, f->len);
        else
            frame_encode(f->hdr, (uint8_t)ch, seq++, f->data, f->len);
        nng_iov iov[3] = {{f->hdr, FRAME_HEADER}, {(void *)f->data, f->len}, {NULL, 0}};
        int niov = 1;
        if (f->len) iov[niov++] = (nng_iov){(void *)f->data, f->len};
        unsigned char mac[MAC_TAG];
        if (f->mac) { // the tag covers the header (channel, length, sequence) and the payload
            mac_frame(l->tx, f->hdr, FRAME_HEADER - 4, f->data, f->len, mac);
            iov[niov++] = (nng_iov){mac, MAC_TAG};
        }
        int rv = stream_io(l->s, aio, iov, niov, 1, WRITE_TIMEOUT_MS, NULL);
        pthread_mutex_lock(&g->mu);
        l->writing = -1;
        l->tx_ms = sys_now_ms();
        if (!rv) {
            g->st.msgs_sent[ch]++;
            g->st.bytes_sent[ch] += f->len;
        }
        if (ch == PEER_CH_SYS) pthread_cond_broadcast(&g->cv); // a refusal may wait for it
        if (f->owned) {
            msg_put(g, f->owned);
            free(f);
        } else {
            f->rc = rv ? ERR_PEER : ERR_OK;
            f->state = F_DONE;
            pthread_cond_broadcast(&g->cv);
        }
        if (rv) {
            if (l->state != L_DEAD)
                LOG_D(tag(g), "link to rank=%d: send failed: %s", l->rank, nng_strerror(rv));
            l->state = L_DEAD;
            pthread_mutex_unlock(&g->mu);
            link_abort(l); // wakes the reader
            pthread_mutex_lock(&g->mu);
        }
    }
    // fail what is left: copies are freed, waiting callers are told
    for (int ch = 0; ch < PEER_NCH; ch++) {
        while (l->qh[ch]) {
            out_frame *f = l->qh[ch];
            l->qh[ch] = f->next;
            if (f->owned) {
                g->st.send_dropped[ch]++;
                msg_put(g, f->owned);
                free(f);
            } else {
                f->rc = ERR_PEER;
                f->state = F_DONE;
            }
        }
        l->qt[ch] = NULL;
        l->qn[ch] = 0;
    }
    l->threads_done++;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

// ---- SYS messages --------------------------------------------------------------------------

// hello_encode writes our hello (joining: on the link we dialled to join) into p, followed by its
// proof for the nonce the other side sent when handshakes are signed. Returns the length or 0.
static size_t hello_encode(peer_group *g, plink *l, unsigned char *p, size_t cap, int joining) {
    hs_hello h = {.run_id = g->o.run_id,
                  .member = g->id,
                  .settings_hash = g->settings_hash,
                  // joining: the rank asked for (a member that rejoins asks for its own)
                  .rank = joining && g->rank < 0 ? g->o.want_rank : g->rank,
                  .world = g->is_static ? g->world : 0,
                  .joining = joining, // only on the link we dialled to join
                  .shared = g->shared};
    snprintf(h.build, sizeof h.build, "%s", g->build);
    snprintf(h.addr, sizeof h.addr, "%s", g->self_addr);
    size_t n = hs_hello_encode(&h, p, cap);
    if (n && g->mac_key) {
        if (cap - n < MAC_TAG) return 0;
        mac_hello_proof(g->mac_key, g->mac_len, l->their_nonce, IDENT_NONCE, p, n, p + n);
        return n + MAC_TAG;
    }
    if (!n || !g->ident) return n;
    size_t pn = ident_prove(g->ident, p, n, l->their_nonce, p + n, cap - n);
    return pn ? n + pn : 0;
}

// send_sys_text sends type, then `pre` bytes of prefix (0 or 1), then text.
static void send_sys_text(peer_group *g, plink *l, int type, const unsigned char *pre, size_t np,
                          const char *text) {
    unsigned char buf[512];
    size_t n = strlen(text);
    if (n > sizeof buf - 1 - np) n = sizeof buf - 1 - np;
    buf[0] = (unsigned char)type;
    memcpy(buf + 1, pre, np);
    memcpy(buf + 1 + np, text, n);
    send_copy(g, l, PEER_CH_SYS, buf, n + 1 + np);
}

// view_encode writes the current view, telling the receiver its rank your_rank. Under mu.
static size_t view_encode(peer_group *g, unsigned char *p, size_t cap, int your_rank) {
    return hs_view_encode(g->epoch, your_rank, g->mem, g->present, p, cap);
}

static void broadcast_view(peer_group *g, plink *except) {
    unsigned char *buf = xmalloc(HELLO_MAX);
    size_t n = view_encode(g, buf, HELLO_MAX, -1);
    for (int r = 0; r < PEER_MAX_MEMBERS && n; r++)
        if (g->by_rank[r] && g->by_rank[r] != except)
            send_copy(g, g->by_rank[r], PEER_CH_SYS, buf, n);
    free(buf);
}

// view_apply installs a view from the coordinator (back: we rejoin, and a view that gives us
// our own rank back is taken even if its epoch is not past ours). Under mu. Returns the rank it
// assigns us (or -1), or -2 if the message is malformed.
static int view_apply(peer_group *g, const unsigned char *p, size_t len, int back) {
    int present[PEER_MAX_MEMBERS], yours;
    peer_member mem[PEER_MAX_MEMBERS];
    uint64_t epoch;
    if (hs_view_parse(p, len, &epoch, &yours, present, mem)) return -2;
    if (epoch <= g->epoch && g->rank >= 0 && !(back && yours == g->rank))
        return yours; // an old view
    g->epoch = epoch;
    for (int r = 0; r < PEER_MAX_MEMBERS; r++) {
        g->present[r] = present[r];
        if (present[r]) g->mem[r] = mem[r];
    }
    pthread_cond_broadcast(&g->cv);
    return yours;
}

// ---- the handshake -------------------------------------------------------------------------

// link_register makes l the link of rank r. Under mu.
static void link_register(peer_group *g, plink *l, int r) {
    l->rank = r;
    l->state = L_UP;
    g->by_rank[r] = l;
    if (l->in_pending) g->pending--;
    l->in_pending = 0;
    g->refusal[r][0] = 0;
    g->dial_err[r][0] = 0;
    g->dial_wait[r] = 0;
    g->left[r] = 0;
    l->tx_ms = sys_now_ms();
    atomic_store(&l->rx_ms, l->tx_ms);
    g->st.links_up++;
    pthread_cond_signal(&l->wcv); // the writer starts its heartbeats
    if (g->is_static) g->epoch++;
    LOG_I(tag(g), "rank=%d member=%016" PRIx64 " up: rank=%d member=%016" PRIx64 " addr=%s%s%s%s%s",
          g->rank, g->id, r, l->member, l->addr, l->name[0] ? " cert=" : "", l->name,
          l->dial_rank >= 0 ? " (dialled)" : "",
          strcmp(l->build, g->build) ? " build differs" : "");
    if (strcmp(l->build, g->build))
        LOG_W(tag(g), "rank=%d runs build '%s', this peer '%s'", r, l->build, g->build);
    pthread_cond_broadcast(&g->cv);
}

// accept_link: the peer's hello is good. A link is up only once both sides have taken each other's
// hello (each sends SYS_ACK), so neither side sends data on a link the other side is closing.
// Under mu.
static void accept_link(peer_group *g, plink *l, int r) {
    unsigned char ack = SYS_ACK;
    l->accept_rank = r;
    send_copy(g, l, PEER_CH_SYS, &ack, 1);
    if (l->acked) link_register(g, l, r);
}

// refuse: tell the other side why (kind: PEER_DIAG_MISMATCH for another run or other settings,
// else PEER_DIAG_REFUSED) and close. A refusal is type, kind, text. Under mu.
static void refuse(peer_group *g, plink *l, int rank, int kind, const char *why) {
    g->st.refused++;
    LOG_W(tag(g), "refused %s (member %016" PRIx64 "): %s", l->addr[0] ? l->addr : l->remote,
          l->member, why);
    if (rank >= 0 && rank < PEER_MAX_MEMBERS) {
        snprintf(g->refusal[rank], sizeof g->refusal[rank], "refused: %s", why);
        g->refusal_kind[rank] = (unsigned char)kind;
    }
    unsigned char k = (unsigned char)kind;
    send_sys_text(g, l, SYS_REFUSE, &k, 1, why);
    l->lingering = 1; // the reader closes after the refusal went out and the peer read it
}

static int refuse_expelled(peer_group *g, plink *l, const hs_hello *h);

// handle_hello checks the other side's hello and decides what l becomes. Under mu. Returns 0 if
// the link goes on (up, or waiting for a view as a joiner), -1 to close it.
static int handle_hello(peer_group *g, plink *l, const hs_hello *h) {
    char why[512];
    l->member = h->member;
    snprintf(l->build, sizeof l->build, "%s", h->build);
    if (h->member == g->id) { // we reached ourselves: the join address is ours
        if (l->joining) g->join_self = 1;
        pthread_cond_broadcast(&g->cv);
        return -1;
    }
    // the address it listens on, as others can dial it
    if (wildcard_host(h->addr) && l->remote[0]) {
        const char *port = strrchr(h->addr, ':');
        snprintf(l->addr, sizeof l->addr, "%s%s", l->remote, port ? port : "");
    } else {
        snprintf(l->addr, sizeof l->addr, "%s", h->addr);
    }
    if (refuse_expelled(g, l, h)) return -1;
    if (h->settings_hash != g->settings_hash) {
        char diff[400];
        int nd = hello_diff(g->shared, h->shared, diff, sizeof diff);
        snprintf(why, sizeof why, "settings differ: %s", nd ? diff : "(hash only)");
        refuse(g, l, h->rank, PEER_DIAG_MISMATCH, why);
        return -1;
    }
    if (g->o.run_id && h->run_id != g->o.run_id) {
        snprintf(why, sizeof why, "run id %016" PRIx64 " there, %016" PRIx64 " here", h->run_id,
                 g->o.run_id);
        refuse(g, l, h->rank, PEER_DIAG_MISMATCH, why);
        return -1;
    }
    if (g->is_static) {
        if (h->joining || h->world != g->world || h->rank < 0 || h->rank >= g->world ||
            h->rank == g->rank) {
            snprintf(why, sizeof why, "rank %d of %d there, rank %d of %d here", h->rank, h->world,
                     g->rank, g->world);
            refuse(g, l, h->rank >= 0 && h->rank < g->world ? h->rank : -1, PEER_DIAG_REFUSED, why);
            return -1;
        }
        if (l->dial_rank >= 0 && h->rank != l->dial_rank) {
            snprintf(why, sizeof why, "rank %d answered at rank %d's address %s", h->rank,
                     l->dial_rank, l->addr);
            refuse(g, l, l->dial_rank, PEER_DIAG_REFUSED, why);
            return -1;
        }
        plink *old = g->by_rank[h->rank];
        if (old && old->state == L_UP) {
            if (old->member == h->member) return -1; // a second link to the same member
            snprintf(why, sizeof why, "rank %d is held by a live member (%016" PRIx64 ")", h->rank,
                     old->member);
            refuse(g, l, -1, PEER_DIAG_REFUSED, why);
            return -1;
        }
        accept_link(g, l, h->rank);
        return 0;
    }
    // a rendezvous group
    if (l->joining) { // we dialled to join: a view, a redirect or a refusal follows
        l->hint = h->rank;
        return 0;
    }
    if (h->joining) {
        if (g->rank < 0) { // still founding or joining itself: the joiner dials again shortly
            LOG_D(tag(g), "a joiner came before this peer had a rank: closed, it will retry");
            return -1;
        }
        int coord = lowest_present(g);
        if (coord != g->rank) {
            unsigned char buf[1 + PEER_ADDR_MAX];
            size_t al = strlen(g->mem[coord].addr);
            buf[0] = SYS_REDIRECT;
            memcpy(buf + 1, g->mem[coord].addr, al);
            send_copy(g, l, PEER_CH_SYS, buf, al + 1);
            return -1;
        }
        int cap = g->o.max_members > 0 && g->o.max_members < PEER_MAX_MEMBERS ? g->o.max_members
                                                                              : PEER_MAX_MEMBERS;
        if (h->rank >= cap) {
            snprintf(why, sizeof why, "rank %d asked for, but the group has ranks 0 .. %d", h->rank,
                     cap - 1);
            refuse(g, l, -1, PEER_DIAG_REFUSED, why);
            return -1;
        }
        if (h->rank >= 0 && g->present[h->rank]) {
            snprintf(why, sizeof why, "rank %d is held by a live member", h->rank);
            refuse(g, l, -1, PEER_DIAG_REFUSED, why);
            return -1;
        }
        int r = h->rank;
        for (int i = 0; r < 0 && i < cap; i++)
            if (!g->present[i]) r = i;
        if (r < 0) {
            snprintf(why, sizeof why, "the group is full (%d peers)", cap);
            refuse(g, l, -1, PEER_DIAG_REFUSED, why);
            return -1;
        }
        g->epoch++;
        set_member(g, r, h->member, l->addr);
        LOG_I(tag(g), "rank=%d gives rank=%d to member %016" PRIx64 " at %s (epoch %" PRIu64 ")",
              g->rank, r, h->member, l->addr, g->epoch);
        unsigned char *buf = xmalloc(HELLO_MAX);
        size_t n = view_encode(g, buf, HELLO_MAX, r);
        if (n) send_copy(g, l, PEER_CH_SYS, buf, n);
        free(buf);
        link_register(g, l, r);
        broadcast_view(g, l);
        return 0;
    }
    // a member dials us after a view: it must be in the view with that id
    if (h->rank < 0 || h->rank >= PEER_MAX_MEMBERS || !g->present[h->rank] ||
        g->mem[h->rank].id != h->member) {
        // it may know a newer view than we do: let it redial
        snprintf(why, sizeof why, "rank %d (member %016" PRIx64 ") is not in view %" PRIu64,
                 h->rank, h->member, g->epoch);
        LOG_D(tag(g), "%s", why);
        return -1;
    }
    plink *old = g->by_rank[h->rank];
    if (old && old->state == L_UP) return -1;
    accept_link(g, l, h->rank);
    return 0;
}

// ---- receiving -----------------------------------------------------------------------------

// deliver puts m on its channel's queue. Under mu; may wait (RING, STATE) for room.
static void deliver(peer_group *g, plink *l, peer_msg *m) {
    int ch = m->channel;
    while (!recv_drops[ch] && !g->stop && l->state != L_DEAD &&
           (g->rn[ch] >= RECVQ_MSGS || g->rbytes[ch] + m->len > RECVQ_BYTES))
        cv_wait_until(&g->rcv[ch], &g->mu, sys_now_ms() + MAINT_MS);
    if (g->stop || g->rn[ch] >= RECVQ_MSGS || g->rbytes[ch] + m->len > RECVQ_BYTES) {
        g->st.recv_dropped[ch]++;
        msg_put(g, m);
        return;
    }
    m->next_ = NULL;
    if (g->rt[ch])
        g->rt[ch]->next_ = m;
    else
        g->rh[ch] = m;
    g->rt[ch] = m;
    g->rn[ch]++;
    g->rbytes[ch] += m->len;
    g->st.msgs_recv[ch]++;
    g->st.bytes_recv[ch] += m->len;
    pthread_cond_broadcast(&g->rcv[ch]);
}

// emulate holds m until the emulated wire from l has carried it (see peer.h). Under mu.
static void emulate(peer_group *g, plink *l, peer_msg *m) {
    double now = sys_now_ms();
    double start = l->emu_free > now ? l->emu_free : now;
    double tx =
        g->o.rate_mbit > 0 ? (double)(m->len + FRAME_HEADER) * 8.0 / (g->o.rate_mbit * 1e3) : 0.0;
    l->emu_free = start + tx;
    l->emu_rng = l->emu_rng * 6364136223846793005ull + 1442695040888963407ull;
    if (g->o.loss > 0 && (double)(l->emu_rng >> 11) / 9007199254740992.0 < g->o.loss) {
        g->st.recv_dropped[m->channel]++;
        msg_put(g, m);
    } else {
        emu_item *it = xcalloc(1, sizeof *it);
        it->due = l->emu_free + g->o.delay_ms;
        it->l = l;
        it->m = m;
        emu_item **pp = &g->eh;
        while (*pp && (*pp)->due <= it->due)
            pp = &(*pp)->next;
        it->next = *pp;
        *pp = it;
        pthread_cond_broadcast(&g->cv);
    }
    // the link reads no faster than the emulated wire carries
    while (!g->stop && l->state != L_DEAD && l->emu_free > sys_now_ms())
        cv_wait_until(&g->cv, &g->mu, l->emu_free);
}

static void *emu_main(void *arg) {
    peer_group *g = arg;
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        if (!g->eh) {
            pthread_cond_wait(&g->cv, &g->mu);
            continue;
        }
        if (g->eh->due > sys_now_ms()) {
            cv_wait_until(&g->cv, &g->mu, g->eh->due);
            continue;
        }
        emu_item *it = g->eh;
        g->eh = it->next;
        deliver(g, it->l, it->m);
        free(it);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

// link_down takes l out of the view's links. Under mu.
static void link_down(peer_group *g, plink *l) {
    if (l->in_pending) g->pending--;
    l->in_pending = 0;
    l->state = L_DEAD;
    pthread_cond_signal(&l->wcv);
    if (l->rank < 0 || g->by_rank[l->rank] != l) return;
    g->by_rank[l->rank] = NULL;
    g->left[l->rank] = 1;
    g->st.links_down++;
    pthread_cond_broadcast(&g->cv); // peer_wait_view stops waiting for it
    LOG_I(tag(g), "rank=%d link to rank=%d down", g->rank, l->rank);
    if (g->is_static) {
        g->epoch++;
    } else if (!g->stop && lowest_present(g) == g->rank) {
        // the coordinator takes a member that left out of the view
        g->present[l->rank] = 0;
        g->epoch++;
        LOG_I(tag(g), "rank=%d: rank=%d left (epoch %" PRIu64 ")", g->rank, l->rank, g->epoch);
        broadcast_view(g, NULL);
    }
    g->next_dial[l->rank] = sys_now_ms() + DIAL_MIN_MS;
    pthread_cond_broadcast(&g->cv);
}

// find_call returns the call on link l with id, or NULL. Under mu.
static call *find_call(peer_group *g, const plink *l, uint32_t id) {
    call *c = g->calls;
    while (c && !(c->id == id && c->link == l))
        c = c->next;
    return c;
}

// rpc_take handles a frame on the request channel: a request is answered by the server (on this
// reader's thread, so one at a time per link), a reply goes to the call that waits for it. Under
// mu (dropped while the server runs). Takes m.
static void rpc_take(peer_group *g, plink *l, peer_msg *m) {
    const unsigned char *p = m->data;
    if (m->len < RPC_HDR) {
        g->st.recv_dropped[PEER_CH_STATE]++;
        msg_put(g, m);
        return;
    }
    uint32_t id = le_get32(p + 1);
    if (p[0] == RPC_REQ) {
        unsigned char hdr[RPC_HDR] = {RPC_NOSERVER};
        le_put32(hdr + 1, id);
        size_t rlen = 0;
        peer_msg *out = NULL;
        peer_reply rep = {0};
        if (g->serve && !g->stop) { // the server writes straight into the reply's frame buffer
            peer_serve_fn fn = g->serve;
            void *arg = g->serve_arg;
            g->serving++;
            out = msg_get(g, FRAME_MAX_PAYLOAD);
            pthread_mutex_unlock(&g->mu);
            rep.buf = (unsigned char *)out->data + RPC_HDR;
            rlen = fn(arg, l->rank, p + RPC_HDR, m->len - RPC_HDR, &rep);
            if (rep.crc_from > rlen) rep.crc_from = 0;
            if (rep.crc_from) { // the frame's CRC from the server's, reading its head only
                unsigned char rh[RPC_HDR] = {RPC_REP};
                le_put32(rh + 1, id);
                uint32_t a = wire_crc32c_combine(wire_crc32c(rh, RPC_HDR),
                                                 wire_crc32c(rep.buf, rep.crc_from), rep.crc_from);
                rep.crc = wire_crc32c_combine(a, rep.crc, rlen - rep.crc_from);
            }
            pthread_mutex_lock(&g->mu);
            g->serving--;
            pthread_cond_broadcast(&g->cv);
            hdr[0] = RPC_REP;
            ASSERT(rlen <= PEER_REPLY_MAX); // the server wrote past its buffer
        } else {
            out = msg_get(g, RPC_HDR);
        }
        msg_put(g, m);
        g->st.msgs_recv[PEER_CH_STATE]++;
        out->len = RPC_HDR + rlen;
        memcpy(out->data, hdr, RPC_HDR);
        if (l->state == L_DEAD || l->qn[PEER_CH_STATE] >= sendq_cap[PEER_CH_STATE] * 4) {
            g->st.send_dropped[PEER_CH_STATE]++;
            msg_put(g, out);
            return;
        }
        out_frame *f = xcalloc(1, sizeof *f);
        f->ch = PEER_CH_STATE;
        f->data = out->data;
        f->len = (uint32_t)out->len;
        f->owned = out;
        f->has_crc = rep.crc_from > 0;
        f->crc = rep.crc;
        enqueue(l, f, -1); // bounded above, at 4 times the callers' bound
        return;
    }
    call *c = find_call(g, l, id);
    if (!c || c->done || (p[0] != RPC_REP && p[0] != RPC_NOSERVER)) {
        g->st.recv_dropped[PEER_CH_STATE]++;
        msg_put(g, m);
        return;
    }
    g->st.msgs_recv[PEER_CH_STATE]++;
    g->st.bytes_recv[PEER_CH_STATE] += m->len;
    c->done = 1;
    if (p[0] == RPC_NOSERVER) {
        c->rc = ERR_PEER;
        msg_put(g, m);
    } else {
        m->data = (unsigned char *)m->data + RPC_HDR; // the reply, without a copy
        m->skip_ = RPC_HDR;
        m->len -= RPC_HDR;
        m->from = l->rank;
        m->channel = PEER_CH_STATE;
        c->reply = m;
    }
    pthread_cond_broadcast(&g->cv);
}

// drain_sys lets a refusal or a redirect go out (at most 200 ms) before the stream closes.
// Under mu.
static void drain_sys(peer_group *g, plink *l) {
    double dl = sys_now_ms() + 200;
    while ((l->qh[PEER_CH_SYS] || l->writing == PEER_CH_SYS) && l->state != L_DEAD &&
           cv_wait_until(&g->cv, &g->mu, dl) != ETIMEDOUT)
        ;
}

// linger reads and discards what the other side still sends, until it closes or LINGER_MS pass,
// so that our close does not reset the connection with unread data (which would throw away our
// refusal before the other side reads it). Reader thread, not under mu.
static void linger(plink *l) {
    enum { LINGER_MS = 300 };
    char junk[4096];
    double end = sys_now_ms() + LINGER_MS;
    for (;;) {
        double left = end - sys_now_ms();
        if (left <= 0) break;
        nng_iov iov = {junk, sizeof junk};
        nng_aio_set_iov(l->raio, 1, &iov);
        nng_aio_set_timeout(l->raio, (int)left + 1);
        nng_stream_recv(l->s, l->raio);
        nng_aio_wait(l->raio);
        if (nng_aio_result(l->raio) || nng_aio_count(l->raio) == 0) break;
    }
}

// send_hello queues our hello on l (with its proof when handshakes are signed). Under mu.
static void send_hello(peer_group *g, plink *l) {
    unsigned char *hb = xmalloc(HELLO_MAX);
    size_t n = hello_encode(g, l, hb, HELLO_MAX, l->joining);
    ASSERT(n > 0);
    send_copy(g, l, PEER_CH_SYS, hb, n);
    free(hb);
    if (g->mac_key) { // every frame after the hello carries a tag
        unsigned char k[MAC_TAG];
        mac_link_key(g->mac_key, g->mac_len, l->my_nonce, l->their_nonce, IDENT_NONCE, g->o.run_id,
                     g->id, k);
        if (mac_new(&l->tx, k, sizeof k)) ASSERT(!"no HMAC");
        memset(k, 0, sizeof k);
    }
}

// handshake_step takes one SYS message p(len) of l's handshake: the other side's nonce (signed
// handshakes: our hello answers it), then its hello, whose proof must verify (ident.h) before
// handle_hello decides. Sets *done once the hello was taken. Under mu. Returns 1 to close l.
static int handshake_step(peer_group *g, plink *l, const unsigned char *p, size_t len, char *shared,
                          int *done) {
    int type = len ? p[0] : 0;
    char why[400], name[IDENT_NAME_MAX] = "";
    int sign = g->ident || g->mac_key;
    if (sign && !l->nonce_in) {
        if (type == SYS_NONCE && len == 1 + IDENT_NONCE) {
            memcpy(l->their_nonce, p + 1, IDENT_NONCE);
            l->nonce_in = 1;
            send_hello(g, l);
            return 0;
        }
        g->st.unproven++;
        refuse(g, l, -1, PEER_DIAG_REFUSED,
               type != SYS_HELLO ? "no handshake nonce first"
               : g->ident        ? "an unsigned hello: the members of this group sign their "
                                   "handshakes (net.tls = on)"
                                 : "a hello without the cluster key's proof (net.cluster_key_file "
                                   "is set here)");
        return 1;
    }
    if (!sign && type == SYS_NONCE) {
        refuse(g, l, -1, PEER_DIAG_REFUSED,
               "a signed handshake, but this peer has neither net.tls nor a cluster key");
        return 1;
    }
    hs_hello he;
    size_t used = 0;
    if (hs_hello_parse(p, len, &he, shared, HELLO_MAX, &used) || (!sign && used != len)) {
        g->st.strangers++;
        return 1;
    }
    if (g->mac_key) {
        unsigned char want[MAC_TAG];
        mac_hello_proof(g->mac_key, g->mac_len, l->my_nonce, IDENT_NONCE, p, used, want);
        if (len - used != MAC_TAG || !mac_equal(want, p + used)) {
            g->st.unproven++;
            l->member = he.member;
            refuse(g, l, -1, PEER_DIAG_REFUSED,
                   "its hello fails the cluster key check (another net.cluster_key_file?)");
            return 1;
        }
        unsigned char k[MAC_TAG];
        mac_link_key(g->mac_key, g->mac_len, l->their_nonce, l->my_nonce, IDENT_NONCE, g->o.run_id,
                     he.member, k);
        if (mac_new(&l->rx, k, sizeof k)) ASSERT(!"no HMAC");
        memset(k, 0, sizeof k);
    }
    if (g->ident && ident_check(g->ident, he.member, p, used, p + used, len - used, l->my_nonce,
                                name, sizeof name, why, sizeof why)) {
        g->st.unproven++;
        l->member = he.member;
        refuse(g, l, -1, PEER_DIAG_REFUSED, why);
        return 1;
    }
    snprintf(l->name, sizeof l->name, "%s", name);
    *done = 1;
    return handle_hello(g, l, &he) != 0;
}

// reply_damaged fails the call that a request-channel frame p(len) with a bad payload CRC
// answers, if its header still names one, at once rather than at its timeout (the id may be the
// damaged part: then the call waits, as for a lost reply). Under mu.
static void reply_damaged(peer_group *g, const plink *l, const unsigned char *p, size_t len) {
    if (len < RPC_HDR || p[0] != RPC_REP) return;
    call *c = find_call(g, l, le_get32(p + 1));
    if (!c || c->done || c->filling) return;
    c->done = 1;
    c->damaged = 1;
    pthread_cond_broadcast(&g->cv);
}

// reply_into reads the rest of a request-channel frame h, whose first RPC_HDR bytes pre were
// read, when it is a reply to a call that takes its body into a buffer of its own
// (peer_call_into) and the body fits: the head into a message, the body straight into the
// call's buffer. The frame's CRC check over the body is the caller's (its thread, so that this
// reader goes on reading meanwhile). Sets *took = 1 if it did (the frame is handled), else the
// caller reads the frame as usual. Returns 0 or the stream's error. Reader thread, not under mu.
static int reply_into(peer_group *g, plink *l, nng_aio *aio, const frame_header *h,
                      const unsigned char *pre, int *took) {
    *took = 0;
    if (pre[0] != RPC_REP) return 0;
    pthread_mutex_lock(&g->mu);
    call *c = find_call(g, l, le_get32(pre + 1));
    size_t rest = h->len - RPC_HDR, head = 0, body = 0;
    int ok = c && !c->done && c->dst && l->state == L_UP;
    if (ok) {
        head = rest < c->head ? rest : c->head;
        body = rest - head;
        ok = body <= c->cap;
    }
    if (!ok) {
        pthread_mutex_unlock(&g->mu);
        return 0;
    }
    c->filling = 1; // its caller waits for us before it returns, even after its timeout
    void *dst = c->dst;
    peer_msg *m = msg_get(g, RPC_HDR + head);
    pthread_mutex_unlock(&g->mu);
    memcpy(m->data, pre, RPC_HDR);
    nng_iov v[2];
    int nv = 0;
    if (head) v[nv++] = (nng_iov){(unsigned char *)m->data + RPC_HDR, head};
    if (body) v[nv++] = (nng_iov){dst, body};
    int rv = nv ? stream_io(l->s, aio, v, nv, 0, -1, &l->rx_ms) : 0;
    uint32_t hcrc = rv ? 0 : wire_crc32c(m->data, RPC_HDR + head);
    pthread_mutex_lock(&g->mu);
    c->filling = 0; // c is still listed: its caller waited for this
    pthread_cond_broadcast(&g->cv);
    if (rv) {
        msg_put(g, m);
        pthread_mutex_unlock(&g->mu);
        return rv;
    }
    *took = 1;
    c->done = 1;
    g->st.in_place++;
    g->st.msgs_recv[PEER_CH_STATE]++;
    g->st.bytes_recv[PEER_CH_STATE] += h->len;
    m->data = (unsigned char *)m->data + RPC_HDR;
    m->skip_ = RPC_HDR;
    m->len = head;
    m->from = l->rank;
    m->member = l->member;
    m->channel = PEER_CH_STATE;
    c->reply = m;
    c->direct = 1;
    c->got = body;
    c->pcrc = h->pcrc;
    c->hcrc = hcrc;
    pthread_mutex_unlock(&g->mu);
    return 0;
}

static void *reader_main(void *arg) {
    plink *l = arg;
    peer_group *g = l->g;
    nng_aio *aio = l->raio;
    char *shared = xmalloc(HELLO_MAX);
    unsigned char hdr[FRAME_HEADER];
    uint32_t seq = 0;
    int handshake = 1;
    while (aio) {
        pthread_mutex_lock(&g->mu);
        int dead = l->state == L_DEAD;
        pthread_mutex_unlock(&g->mu);
        if (dead) break;
        nng_iov iov = {hdr, FRAME_HEADER};
        atomic_store(&l->rx_ms, sys_now_ms());
        atomic_store(&l->rx_wait, 1);
        int rv = stream_io(l->s, aio, &iov, 1, 0, handshake ? g->o.handshake_ms : -1, &l->rx_ms);
        if (rv) {
            pthread_mutex_lock(&g->mu);
            if (handshake && !g->stop) {
                g->st.strangers++;
                LOG_D(tag(g), "closed a connection from %s without a hello: %s", l->remote,
                      nng_strerror(rv));
            }
            pthread_mutex_unlock(&g->mu);
            break;
        }
        frame_header h;
        int drc = frame_decode(hdr, &h);
        // with tags, the tag decides (below): a frame whose tag verifies is taken if its sequence
        // number is past the last one taken (frames dropped in between leave a gap), and is a
        // replay if not; without, frames come exactly in sequence
        int tagged = l->rx != NULL;
        int bad = drc ? 1 : !tagged && h.seq != seq ? 2 : 0;
        if (!bad && handshake && (h.channel != PEER_CH_SYS || h.len > HELLO_MAX)) bad = 3;
        if (bad) {
            pthread_mutex_lock(&g->mu);
            if (handshake && drc == ERR_PEER) { // another protocol: say so in ours
                char why[160];
                snprintf(why, sizeof why, "%s", err_msg() + strlen("frame: "));
                refuse(g, l, -1, PEER_DIAG_REFUSED, why);
                drain_sys(g, l);
                l->lingering = 1;
                pthread_mutex_unlock(&g->mu);
                linger(l);
                pthread_mutex_lock(&g->mu);
            } else if (handshake) {
                g->st.strangers++;
            } else {
                g->st.bad_header++;
            }
            LOG_D(tag(g), "closing the stream from %s: %s", l->remote,
                  bad == 1   ? err_msg()
                  : bad == 2 ? "frame out of sequence"
                             : "no hello first");
            pthread_mutex_unlock(&g->mu);
            break;
        }
        if (!tagged) seq++;
        // a reply on the request channel: its call may take the body straight into its buffer
        unsigned char pre[RPC_HDR];
        size_t have = 0;
        if (h.channel == PEER_CH_STATE && !handshake && !tagged && h.len >= RPC_HDR) {
            int took = 0;
            iov = (nng_iov){pre, RPC_HDR};
            rv = stream_io(l->s, aio, &iov, 1, 0, -1, &l->rx_ms);
            if (!rv) rv = reply_into(g, l, aio, &h, pre, &took);
            if (rv || took) atomic_store(&l->rx_wait, 0);
            if (rv) break;
            if (took) continue;
            have = RPC_HDR;
        }
        pthread_mutex_lock(&g->mu);
        peer_msg *m = msg_get(g, h.len);
        pthread_mutex_unlock(&g->mu);
        memcpy(m->data, pre, have);
        iov = (nng_iov){(unsigned char *)m->data + have, h.len - have};
        rv = h.len > have
                 ? stream_io(l->s, aio, &iov, 1, 0, handshake ? g->o.handshake_ms : -1, &l->rx_ms)
                 : 0;
        unsigned char mac[MAC_TAG], want[MAC_TAG];
        nng_iov tiov = {mac, MAC_TAG};
        if (!rv && tagged) rv = stream_io(l->s, aio, &tiov, 1, 0, -1, &l->rx_ms);
        atomic_store(&l->rx_wait, 0);
        // the checks of the payload run outside mu (8 MiB take a millisecond)
        int forged = 0, crc_ok = 0;
        if (!rv && tagged) {
            mac_frame(l->rx, hdr, FRAME_HEADER - 4, m->data, h.len, want);
            forged = !mac_equal(mac, want);
        }
        if (!rv && !forged) crc_ok = frame_payload_ok(&h, m->data);
        pthread_mutex_lock(&g->mu);
        if (rv) {
            if (handshake) g->st.strangers++;
            msg_put(g, m);
            pthread_mutex_unlock(&g->mu);
            break;
        }
        if (tagged) {
            int replay = !forged && h.seq < seq;
            if (!forged && !replay) seq = h.seq + 1;
            if (forged || replay) {
                if (forged)
                    g->st.bad_mac++;
                else
                    g->st.replayed++;
                LOG_D(tag(g), "dropped a %s frame from %s: %s", ch_name[h.channel], l->remote,
                      forged ? "its tag does not verify" : "a replay of an earlier frame");
                msg_put(g, m);
                pthread_mutex_unlock(&g->mu);
                continue;
            }
        }
        if (!crc_ok) {
            g->st.bad_crc++;
            LOG_D(tag(g), "dropped a %s frame from %s: payload CRC mismatch", ch_name[h.channel],
                  l->remote);
            if (h.channel == PEER_CH_STATE && !handshake) reply_damaged(g, l, m->data, h.len);
            msg_put(g, m);
            int stop = handshake; // a hello must be intact
            if (stop) g->st.strangers++;
            pthread_mutex_unlock(&g->mu);
            if (stop) break;
            continue;
        }
        m->channel = h.channel;
        m->crc = h.pcrc;
        m->from = l->rank;
        m->member = l->member;
        int close_it = 0;
        if (h.channel == PEER_CH_SYS) {
            const unsigned char *p = m->data;
            int type = h.len ? p[0] : 0;
            if (handshake) {
                int done = 0;
                close_it = handshake_step(g, l, p, h.len, shared, &done);
                if (done) handshake = 0;
            } else if (type == SYS_VIEW) {
                int back = l->joining && g->rank >= 0; // a member that rejoins (maint_rejoin)
                int yours = view_apply(g, p, h.len, back);
                if (yours == -2) {
                    g->st.recv_dropped[PEER_CH_SYS]++;
                } else if (l->joining && yours >= 0 && (g->rank < 0 || yours == g->rank)) {
                    if (back)
                        LOG_I(tag(g), "rank=%d is back in the view (epoch %" PRIu64 ")", g->rank,
                              g->epoch);
                    g->rank = yours;
                    g->join_done = 1;
                    l->joining = 0;
                    // the member that answered is in the view under its member id (its hello
                    // may carry no rank: it can answer before it knew it founds the group)
                    int r = l->hint;
                    if (r < 0 || r >= PEER_MAX_MEMBERS || !g->present[r] ||
                        g->mem[r].id != l->member)
                        for (r = 0; r < PEER_MAX_MEMBERS; r++)
                            if (g->present[r] && g->mem[r].id == l->member) break;
                    if (r < PEER_MAX_MEMBERS && !g->by_rank[r])
                        link_register(g, l, r);
                    else if (back)
                        close_it = 1;
                    pthread_cond_broadcast(&g->cv);
                } else if (back) {
                    close_it = 1; // the coordinator gave us another rank: not ours to take
                }
            } else if (type == SYS_PING && h.len == 1) {
                // a heartbeat: its bytes were the news
            } else if (type == SYS_ACK && h.len == 1) {
                l->acked = 1;
                if (l->accept_rank >= 0 && l->state == L_HANDSHAKE) {
                    plink *old = g->by_rank[l->accept_rank];
                    if (old && old != l && old->state == L_UP)
                        close_it = 1; // another link to that rank came up meanwhile
                    else
                        link_register(g, l, l->accept_rank);
                }
            } else if ((type == SYS_REFUSE && h.len >= 2) || type == SYS_REDIRECT) {
                char text[PEER_ADDR_MAX + 300];
                size_t skip = type == SYS_REFUSE ? 2 : 1; // a refusal carries its kind first
                size_t n = h.len - skip < sizeof text - 1 ? h.len - skip : sizeof text - 1;
                memcpy(text, p + skip, n);
                text[n] = 0;
                if (type == SYS_REFUSE) {
                    LOG_W(tag(g), "%s refused this peer: %s", l->addr[0] ? l->addr : l->remote,
                          text);
                    int r = l->rank >= 0 ? l->rank : l->dial_rank;
                    if (r >= 0) {
                        snprintf(g->refusal[r], sizeof g->refusal[r], "refused: %s", text);
                        g->refusal_kind[r] =
                            p[1] == PEER_DIAG_MISMATCH ? PEER_DIAG_MISMATCH : PEER_DIAG_REFUSED;
                    }
                    if (l->joining) snprintf(g->join_err, sizeof g->join_err, "refused: %s", text);
                } else if (l->joining && n > 0) {
                    LOG_I(tag(g), "%s redirects the join to %s", l->addr, text);
                    free(g->join_url);
                    g->join_url = to_url(g, text);
                    g->join_next = 0;
                    g->join_moved = 1; // the maintainer drops the old address's dialer
                }
                close_it = 1;
            } else {
                g->st.recv_dropped[PEER_CH_SYS]++;
            }
            msg_put(g, m);
        } else if (h.channel == PEER_CH_STATE && l->state == L_UP) {
            rpc_take(g, l, m); // takes m
        } else if (l->state != L_UP || h.channel >= PEER_NCH) {
            g->st.recv_dropped[h.channel < PEER_NCH ? h.channel : PEER_CH_SYS]++;
            msg_put(g, m);
        } else if (g->emu_on) {
            emulate(g, l, m);
        } else {
            deliver(g, l, m);
        }
        pthread_mutex_unlock(&g->mu);
        if (close_it) {
            pthread_mutex_lock(&g->mu);
            drain_sys(g, l);
            l->lingering = 1;
            pthread_mutex_unlock(&g->mu);
            linger(l);
            break;
        }
    }
    pthread_mutex_lock(&g->mu);
    link_down(g, l);
    pthread_mutex_unlock(&g->mu);
    link_abort(l);
    pthread_mutex_lock(&g->mu);
    l->threads_done++;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    free(shared);
    return NULL;
}

// ---- links ---------------------------------------------------------------------------------

// link_start wraps stream s (dialled to dial_rank, or accepted when -1) in a link, queues our
// hello and starts its threads. Under mu. Takes s.
static void link_start(peer_group *g, nng_stream *s, int dial_rank, int joining) {
    if (g->pending >= MAX_PENDING || g->stop) {
        g->st.strangers++;
        nng_stream_close(s);
        nng_stream_free(s);
        return;
    }
    plink *l = xcalloc(1, sizeof *l);
    l->g = g;
    l->s = s;
    l->dial_rank = dial_rank;
    l->joining = joining;
    l->rank = -1;
    l->state = L_HANDSHAKE;
    l->writing = -1;
    l->accept_rank = -1;
    l->emu_rng = g->o.seed ^ ((uint64_t)(dial_rank + 7) * 0x9E3779B97F4A7C15ull) ^ g->id;
    sys_cond_init(&l->wcv);
    nng_sockaddr sa;
    if (nng_stream_get_addr(s, NNG_OPT_REMADDR, &sa) == 0 && sa.s_family == NNG_AF_INET) {
        const unsigned char *ip = (const unsigned char *)&sa.s_in.sa_addr;
        snprintf(l->remote, sizeof l->remote, "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
    } else {
        snprintf(l->remote, sizeof l->remote, "%s", "local");
    }
    if (nng_aio_alloc(&l->raio, NULL, NULL) || nng_aio_alloc(&l->waio, NULL, NULL)) {
        if (l->raio) nng_aio_free(l->raio);
        nng_stream_close(s);
        nng_stream_free(s);
        pthread_cond_destroy(&l->wcv);
        free(l);
        return;
    }
    g->pending++;
    l->in_pending = 1;
    l->next = g->links;
    g->links = l;
    if (g->ident || g->mac_key) { // signed: nonces first, each hello answers the other's
        unsigned char nb[1 + IDENT_NONCE] = {SYS_NONCE};
        if (ident_nonce(l->my_nonce)) ASSERT(!"no randomness");
        memcpy(nb + 1, l->my_nonce, IDENT_NONCE);
        send_copy(g, l, PEER_CH_SYS, nb, sizeof nb);
    } else {
        send_hello(g, l);
    }
    if (pthread_create(&l->rd, NULL, reader_main, l)) {
        l->state = L_DEAD;
        l->threads_done = 1;
        nng_stream_close(s);
    }
    if (pthread_create(&l->wr, NULL, writer_main, l)) l->threads_done++;
}

static void link_free(plink *l) {
    mac_free(l->tx);
    mac_free(l->rx);
    pthread_cond_destroy(&l->wcv);
    nng_aio_free(l->raio);
    nng_aio_free(l->waio);
    nng_stream_free(l->s);
    free(l);
}

// reap joins and frees the links whose threads have both finished. Under mu (dropped while
// joining).
static void reap(peer_group *g) {
    for (plink **pp = &g->links; *pp;) {
        plink *l = *pp;
        if (l->threads_done < 2 || l->held) {
            pp = &l->next;
            continue;
        }
        *pp = l->next;
        pthread_mutex_unlock(&g->mu);
        pthread_join(l->rd, NULL);
        pthread_join(l->wr, NULL);
        link_free(l);
        pthread_mutex_lock(&g->mu);
        pp = &g->links; // the list may have changed meanwhile
    }
}

static void *acceptor_main(void *arg) {
    peer_group *g = arg;
    nng_aio *aio;
    if (nng_aio_alloc(&aio, NULL, NULL)) return NULL;
    for (;;) {
        nng_stream_listener_accept(g->lst, aio);
        nng_aio_wait(aio);
        int rv = nng_aio_result(aio);
        pthread_mutex_lock(&g->mu);
        int stop = g->stop;
        if (!rv) link_start(g, nng_aio_get_output(aio, 0), -1, 0);
        pthread_mutex_unlock(&g->mu);
        if (stop || rv == NNG_ECLOSED) break;
        if (rv) sys_sleep_ms(10); // e.g. out of file descriptors: do not spin
    }
    nng_aio_free(aio);
    return NULL;
}

// dial_with connects to url within DIAL_TIMEOUT_MS through *d, the dialer kept for that address
// (made on first use, freed with the group: nng frees a dialer on a thread of its own, and one
// dialer per attempt raced with that under TSan). Returns the stream or NULL with why in err.
static nng_stream *dial_with(nng_stream_dialer **d, const char *url, nng_tls_config *tls, char *err,
                             size_t n) {
    nng_aio *aio;
    nng_stream *s = NULL;
    int rv = 0;
    if (!*d) {
        rv = nng_stream_dialer_alloc(d, url);
        if (!rv && tls) rv = nng_stream_dialer_set_ptr(*d, NNG_OPT_TLS_CONFIG, tls);
        if (rv && *d) nng_stream_dialer_free(*d);
    }
    if (rv) {
        *d = NULL;
        snprintf(err, n, "bad address %s: %s", url, nng_strerror(rv));
        return NULL;
    }
    if ((rv = nng_aio_alloc(&aio, NULL, NULL)) == 0) {
        nng_aio_set_timeout(aio, DIAL_TIMEOUT_MS);
        nng_stream_dialer_dial(*d, aio);
        nng_aio_wait(aio);
        rv = nng_aio_result(aio);
        if (!rv) s = nng_aio_get_output(aio, 0);
        nng_aio_free(aio);
    }
    if (rv) {
        const char *why = rv == NNG_ECONNREFUSED ? "connection refused"
                          : rv == NNG_ETIMEDOUT  ? "no answer within a second"
                          : rv == NNG_EADDRINVAL ? "cannot resolve host"
                                                 : nng_strerror(rv);
        snprintf(err, n, "%s", why);
    }
    return s;
}

static int has_link(peer_group *g, int r) {
    for (plink *l = g->links; l; l = l->next)
        if (l->state != L_DEAD && (l->rank == r || l->dial_rank == r)) return 1;
    return 0;
}

static int joining_link(peer_group *g) {
    for (plink *l = g->links; l; l = l->next)
        if (l->state != L_DEAD && l->joining) return 1;
    return 0;
}

// dial_slot dials url with rank r's dialer (a new one when r's address changed: a view change).
// Under mu (dropped to dial); the maintainer's. Returns the stream, or NULL with err(n) saying why.
static nng_stream *dial_slot(peer_group *g, int r, const char *url, char *err, size_t n) {
    nng_stream_dialer *old = NULL;
    if (strcmp(g->dialer_url[r], url)) {
        old = g->dialer[r];
        g->dialer[r] = NULL;
        snprintf(g->dialer_url[r], sizeof g->dialer_url[r], "%s", url);
    }
    pthread_mutex_unlock(&g->mu);
    if (old) nng_stream_dialer_free(old);
    nng_stream *s = dial_with(&g->dialer[r], url, g->tls.client, err, n);
    pthread_mutex_lock(&g->mu);
    return s;
}

// maint_rejoin heals a rendezvous member cut off from its coordinator (the lowest rank of its
// view, which in a partition takes it out of its view and never dials it again): once it has had
// no link to the coordinator for the heartbeat timeout, it dials the coordinator as a joiner
// asking for its own rank, again every timeout until it is back (the coordinator gives the rank
// back once it has taken it out of its view). Returns 1 if it dialled. Under mu (dropped to dial).
static int maint_rejoin(peer_group *g, double now) {
    int c = lowest_present(g);
    if (g->is_static || g->rank < 0 || c < 0 || c == g->rank || has_link(g, c)) {
        g->orphan_ms = 0;
        return 0;
    }
    double wait = g->hb_ms > 0 ? g->hb_ms : HEARTBEAT_MS;
    if (!g->orphan_ms) g->orphan_ms = now;
    if (now - g->orphan_ms < wait || now < g->join_next || joining_link(g)) return 0;
    g->join_next = now + wait;
    char *url = to_url(g, g->mem[c].addr), err[160];
    if (now - g->orphan_logged > 30000) { // once, then every 30 s while it lasts
        g->orphan_logged = now;
        LOG_I(tag(g), "rank=%d: no link to the coordinator rank=%d for %.0f ms: rejoining at %s",
              g->rank, c, now - g->orphan_ms, g->mem[c].addr);
    }
    nng_stream *s = dial_slot(g, c, url, err, sizeof err); // c's slot: we dial higher ranks only
    if (s)
        link_start(g, s, -1, 1);
    else
        LOG_D(tag(g), "rank=%d: rejoining at %s: %s", g->rank, url, err);
    free(url);
    return 1;
}

// maint_dial makes one dial the maintainer owes, if any is due. Under mu (dropped to dial).
static void maint_dial(peer_group *g) {
    double now = sys_now_ms();
    if (maint_rejoin(g, now)) return;
    if (g->rank < 0) { // joining: dial the rendezvous address
        if (g->join_done || g->join_self || g->join_err[0] || joining_link(g) || now < g->join_next)
            return;
        char *url = xstrdup(g->join_url), err[160];
        g->join_next = now + 200;
        nng_stream_dialer *old = g->join_moved ? g->join_dialer : NULL;
        if (g->join_moved) g->join_dialer = NULL;
        g->join_moved = 0;
        pthread_mutex_unlock(&g->mu);
        if (old) nng_stream_dialer_free(old);
        nng_stream *s = dial_with(&g->join_dialer, url, g->tls.client, err, sizeof err);
        pthread_mutex_lock(&g->mu);
        if (s)
            link_start(g, s, -1, 1);
        else
            snprintf(g->dial_err[0], sizeof g->dial_err[0], "%s: %s", url, err);
        free(url);
        return;
    }
    for (int r = g->rank + 1; r < PEER_MAX_MEMBERS; r++) { // the lower rank of a pair dials
        if (!g->present[r] || has_link(g, r) || now < g->next_dial[r]) continue;
        if (g->is_static && g->refusal[r][0] && now < g->next_dial[r] + 1000) continue;
        char *url = to_url(g, g->mem[r].addr), err[160];
        int w = g->dial_wait[r] ? g->dial_wait[r] * 2 : DIAL_MIN_MS;
        g->dial_wait[r] = w > DIAL_MAX_MS ? DIAL_MAX_MS : w;
        g->next_dial[r] = now + g->dial_wait[r];
        nng_stream *s = dial_slot(g, r, url, err, sizeof err);
        if (s && !has_link(g, r)) {
            link_start(g, s, r, 0);
        } else if (s) {
            nng_stream_close(s);
            nng_stream_free(s);
        } else {
            snprintf(g->dial_err[r], sizeof g->dial_err[r], "%s", err);
        }
        free(url);
        return; // one dial per pass, so that reaping and stop stay prompt
    }
}

// check_silence closes the first link that has been silent for the heartbeat timeout (see
// peer_opts.heartbeat_ms) and logs the ones silent for half of it. Returns 1 if it closed one
// (the caller looks again). Under mu (dropped to close).
static int check_silence(peer_group *g) {
    double now = sys_now_ms();
    if (now - g->hb_check > g->hb_ms / 4.0) {
        // This process was not running (SIGSTOP, a suspended laptop, a stalled VM): the silence
        // was ours, and the readers have not yet read what came meanwhile. Start the clocks over.
        for (plink *l = g->links; l; l = l->next)
            atomic_store(&l->rx_ms, now);
        if (g->hb_check > 0)
            LOG_I(tag(g), "rank=%d was not running for %.0f ms: the links' clocks start over",
                  g->rank, now - g->hb_check);
        g->hb_check = now;
        return 0;
    }
    g->hb_check = now;
    for (plink *l = g->links; l; l = l->next) {
        if (l->state != L_UP) continue;
        double quiet = atomic_load(&l->rx_wait) ? now - atomic_load(&l->rx_ms) : 0;
        if (quiet < g->hb_ms / 2.0) {
            if (l->suspect)
                LOG_I(tag(g), "rank=%d: rank=%d answers again after %.0f ms", g->rank, l->rank,
                      quiet);
            l->suspect = 0;
            continue;
        }
        if (!l->suspect) {
            l->suspect = 1;
            g->st.suspected++;
            LOG_I(tag(g), "rank=%d: rank=%d suspected: silent for %.0f ms", g->rank, l->rank,
                  quiet);
        }
        if (quiet < g->hb_ms) continue;
        g->st.timed_out++;
        LOG_W(tag(g),
              "rank=%d: rank=%d (%s) timed out: no word for %.0f ms (net.heartbeat_timeout = %d)",
              g->rank, l->rank, l->addr, quiet, g->hb_ms);
        l->state = L_DEAD;
        link_down(g, l);
        l->held++;
        pthread_mutex_unlock(&g->mu);
        link_abort(l);
        pthread_mutex_lock(&g->mu);
        l->held--;
        return 1;
    }
    return 0;
}

// watch_main is the watchdog thread (with heartbeats on): it looks at the links' silence 20 times
// per timeout. (Not the maintainer's job: a dial to a member that does not answer takes it a
// second.)
static void *watch_main(void *arg) {
    peer_group *g = arg;
    int wait = g->hb_ms / 20 > 0 ? g->hb_ms / 20 : 1;
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        while (check_silence(g))
            ;
        if (!g->stop) cv_wait_until(&g->cv, &g->mu, sys_now_ms() + wait);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static void *maint_main(void *arg) {
    peer_group *g = arg;
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        reap(g);
        maint_dial(g);
        if (!g->stop) cv_wait_until(&g->cv, &g->mu, sys_now_ms() + MAINT_MS);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

// ---- the group -----------------------------------------------------------------------------

static int listen_on(peer_group *g) {
    int rv = nng_stream_listener_alloc(&g->lst, g->listen_url);
    if (!rv && g->tls.server)
        rv = nng_stream_listener_set_ptr(g->lst, NNG_OPT_TLS_CONFIG, g->tls.server);
    if (!rv) rv = nng_stream_listener_listen(g->lst);
    if (rv)
        return err_set(ERR_NET, "peer: cannot listen on %s: %s", g->listen_url, nng_strerror(rv));
    if (!strncmp(g->listen_url, "tcp://", 6) || !strncmp(g->listen_url, "tls+tcp://", 10)) {
        int port = 0;
        nng_stream_listener_get_int(g->lst, NNG_OPT_TCP_BOUND_PORT, &port);
        const char *hp = strstr(g->listen_url, "://") + 3, *colon = strrchr(hp, ':');
        snprintf(g->self_addr, sizeof g->self_addr, "%.*s:%d", (int)(colon - hp), hp, port);
    } else {
        snprintf(g->self_addr, sizeof g->self_addr, "%s", g->listen_url);
    }
    if (g->o.advertise) snprintf(g->self_addr, sizeof g->self_addr, "%s", g->o.advertise);
    return ERR_OK;
}

int peer_group_create(peer_group **out, const peer_opts *o) {
    *out = NULL;
    int rc = addr_ok(o->listen, "listen address");
    if (rc) return rc;
    int is_static = o->peers != NULL;
    if (is_static == (o->join != NULL))
        return err_set(ERR_INVAL, "peer: give either a peer list or a join address");
    if (is_static) {
        if (o->world < 1 || o->world > PEER_MAX_MEMBERS || o->rank < 0 || o->rank >= o->world)
            return err_set(ERR_INVAL, "peer: rank %d of %d peers (at most %d)", o->rank, o->world,
                           PEER_MAX_MEMBERS);
        for (int i = 0; i < o->world; i++) {
            char what[32];
            snprintf(what, sizeof what, "peer %d", i);
            if ((rc = addr_ok(o->peers[i], what))) return rc;
        }
    } else {
        if ((rc = addr_ok(o->join, "join address"))) return rc;
        if (o->want_rank < -1 || o->want_rank >= PEER_MAX_MEMBERS)
            return err_set(ERR_INVAL, "peer: rank %d out of range", o->want_rank);
    }
    peer_tls tls = {NULL, NULL};
    ident *id = NULL;
    if (o->tls_ca || o->tls_cert || o->tls_key) {
        if (!o->tls_ca || !o->tls_cert || !o->tls_key)
            return err_set(ERR_INVAL, "peer: TLS needs the CA, the certificate and the key");
        if ((rc = peer_tls_load(&tls, o->tls_ca, o->tls_cert, o->tls_key))) return rc;
        if ((rc = ident_load(&id, o->tls_ca, o->tls_cert, o->tls_key))) {
            peer_tls_free(&tls);
            return rc;
        }
    }
    if (!id && o->cluster_key && o->cluster_key_len < 16)
        return err_set(ERR_INVAL, "peer: a cluster key of %zu bytes: 16 or more are needed",
                       o->cluster_key_len);
    peer_group *g = xcalloc(1, sizeof *g);
    g->tls = tls;
    g->ident = id;
    if (!id && o->cluster_key) { // TLS authenticates by itself
        g->mac_len = o->cluster_key_len;
        g->mac_key = xmalloc(g->mac_len);
        memcpy(g->mac_key, o->cluster_key, g->mac_len);
    }
    g->o = *o;
    g->o.cluster_key = NULL; // the caller's: g->mac_key is the copy
    g->o.handshake_ms = o->handshake_ms > 0 ? o->handshake_ms : 2000;
    g->o.join_ms = o->join_ms > 0 ? o->join_ms : 10000;
    g->hb_ms = o->heartbeat_ms == 0 ? HEARTBEAT_MS : o->heartbeat_ms;
    g->tag = xstrdup(o->tag ? o->tag : "peer");
    g->shared = xstrdup(o->shared ? o->shared : "");
    g->build = xstrdup(o->build ? o->build : "");
    g->listen_url = to_url(g, o->listen);
    g->join_url = o->join ? to_url(g, o->join) : NULL;
    g->settings_hash = hs_settings_hash(g->shared);
    g->id = id ? ident_member(id) : random_id(); // with keys, bound to ours
    g->is_static = is_static;
    g->world = is_static ? o->world : 0;
    g->rank = is_static ? o->rank : -1;
    g->emu_on = o->rate_mbit > 0 || o->delay_ms > 0 || o->loss > 0;
    pthread_mutex_init(&g->mu, NULL);
    sys_cond_init(&g->cv);
    for (int c = 0; c < PEER_NCH; c++)
        sys_cond_init(&g->rcv[c]);
    if ((rc = listen_on(g))) {
        peer_group_destroy(g);
        return rc;
    }
    if (is_static) {
        for (int i = 0; i < o->world; i++)
            set_member(g, i, i == o->rank ? g->id : 0, i == o->rank ? g->self_addr : o->peers[i]);
        g->epoch = 1;
    }
    int started = 0;
    if (!pthread_create(&g->acc, NULL, acceptor_main, g)) started |= 1;
    if (!pthread_create(&g->maint, NULL, maint_main, g)) started |= 2;
    if (g->emu_on && !pthread_create(&g->emu, NULL, emu_main, g)) started |= 4;
    if (g->hb_ms > 0 && !pthread_create(&g->watch, NULL, watch_main, g)) started |= 8;
    if (started != (3 | (g->emu_on ? 4 : 0) | (g->hb_ms > 0 ? 8 : 0))) {
        peer_group_destroy(g);
        return err_set(ERR_NOMEM, "peer: cannot start threads");
    }
    if (!is_static) {
        pthread_mutex_lock(&g->mu);
        double dl = sys_now_ms() + g->o.join_ms;
        while (!g->join_done && !g->join_self && !g->join_err[0] &&
               cv_wait_until(&g->cv, &g->mu, dl) != ETIMEDOUT)
            ;
        if (g->join_self && !g->join_done) { // we are the join address: found the group
            g->rank = o->want_rank >= 0 ? o->want_rank : 0;
            set_member(g, g->rank, g->id, o->join);
            g->epoch = 1;
            g->join_done = 1;
            LOG_I(tag(g), "rank=%d member=%016" PRIx64 " founds the group at %s", g->rank, g->id,
                  o->join);
        }
        int done = g->join_done;
        char why[640];
        snprintf(why, sizeof why, "%s", g->join_err[0] ? g->join_err : g->dial_err[0]);
        pthread_mutex_unlock(&g->mu);
        if (!done) {
            peer_group_destroy(g);
            return why[0] && !strncmp(why, "refused", 7)
                       ? err_set(ERR_PEER, "peer: joining %s: %s", o->join, why)
                       : err_set(ERR_TIMEOUT, "peer: no group at %s after %d ms%s%s", o->join,
                                 o->join_ms > 0 ? o->join_ms : 10000, why[0] ? ": " : "", why);
        }
        LOG_I(tag(g), "rank=%d joined (epoch %" PRIu64 ", %d members)", g->rank, g->epoch,
              view_connected(g));
    }
    *out = g;
    return ERR_OK;
}

void peer_group_close(peer_group *g) {
    pthread_mutex_lock(&g->mu);
    // A link that refused its peer reads until the peer closes: let it (bounded), so that closing
    // now does not reset the connection and throw our refusal away before the peer reads it.
    double dl = sys_now_ms() + 400;
    for (;;) {
        int busy = 0;
        for (plink *l = g->links; l; l = l->next)
            busy |= l->lingering && l->threads_done < 2 && l->state != L_DEAD;
        if (!busy || cv_wait_until(&g->cv, &g->mu, dl) == ETIMEDOUT) break;
    }
    g->stop = 1;
    pthread_cond_broadcast(&g->cv);
    for (int c = 0; c < PEER_NCH; c++)
        pthread_cond_broadcast(&g->rcv[c]);
    for (plink *l = g->links; l; l = l->next) {
        l->state = L_DEAD;
        pthread_cond_signal(&l->wcv);
        nng_stream_close(l->s);
    }
    pthread_mutex_unlock(&g->mu);
    if (g->lst) nng_stream_listener_close(g->lst);
}

void peer_group_destroy(peer_group *g) {
    if (!g) return;
    peer_group_close(g);
    if (g->acc) pthread_join(g->acc, NULL);
    if (g->maint) pthread_join(g->maint, NULL);
    if (g->emu) pthread_join(g->emu, NULL);
    if (g->watch) pthread_join(g->watch, NULL);
    pthread_mutex_lock(&g->mu);
    for (plink *l = g->links; l; l = l->next) {
        l->state = L_DEAD;
        pthread_cond_signal(&l->wcv);
    }
    pthread_mutex_unlock(&g->mu);
    // no thread adds links now (the acceptor and the maintainer have stopped)
    for (plink *l = g->links; l; l = l->next)
        link_abort(l);
    pthread_mutex_lock(&g->mu);
    while (g->links) {
        plink *l = g->links;
        g->links = l->next;
        pthread_mutex_unlock(&g->mu);
        pthread_join(l->rd, NULL);
        pthread_join(l->wr, NULL);
        link_free(l);
        pthread_mutex_lock(&g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    if (g->lst) nng_stream_listener_free(g->lst);
    for (int r = 0; r < PEER_MAX_MEMBERS; r++)
        if (g->dialer[r]) nng_stream_dialer_free(g->dialer[r]);
    if (g->join_dialer) nng_stream_dialer_free(g->join_dialer);
    peer_tls_free(&g->tls);
    ident_free(g->ident);
    if (g->mac_key) memset(g->mac_key, 0, g->mac_len);
    free(g->mac_key);
    for (emu_item *it = g->eh, *nx; it; it = nx) {
        nx = it->next;
        free(it->m->data);
        free(it->m);
        free(it);
    }
    for (int c = 0; c < PEER_NCH; c++) {
        for (peer_msg *m = g->rh[c], *nx; m; m = nx) {
            nx = m->next_;
            free(m->data);
            free(m);
        }
        pthread_cond_destroy(&g->rcv[c]);
    }
    for (peer_msg *m = g->pool, *nx; m; m = nx) {
        nx = m->next_;
        free(m->data);
        free(m);
    }
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g->listen_url);
    free(g->join_url);
    free(g->shared);
    free(g->build);
    free(g->tag);
    free(g);
}

const char *peer_self_addr(peer_group *g) { return g->self_addr; }

int peer_rank(peer_group *g) {
    pthread_mutex_lock(&g->mu);
    int r = g->rank;
    pthread_mutex_unlock(&g->mu);
    return r;
}

void peer_get_view(peer_group *g, peer_view *v) {
    pthread_mutex_lock(&g->mu);
    v->epoch = g->epoch;
    v->self = g->rank;
    v->n = 0;
    for (int r = 0; r < PEER_MAX_MEMBERS; r++) {
        if (!g->present[r]) continue;
        v->m[v->n] = g->mem[r];
        v->m[v->n].connected = r == g->rank || g->by_rank[r] != NULL;
        v->n++;
    }
    pthread_mutex_unlock(&g->mu);
}

int peer_view_ranks(peer_group *g, int *ranks, int max) {
    pthread_mutex_lock(&g->mu);
    int n = 0;
    for (int r = 0; r < PEER_MAX_MEMBERS; r++) {
        if (!g->present[r]) continue;
        if (n < max) ranks[n] = r;
        n++;
    }
    pthread_mutex_unlock(&g->mu);
    return n;
}

// none_to_wait_for: every member of the view without a live link has refused us (a static
// group) or, with also_left, was linked and left (a short run can end before a slower peer has
// linked to the rest). Waiting longer for them is pointless; they are taken in if they come back
// (with the right settings).
static int none_to_wait_for(peer_group *g, int also_left) {
    int gone = 0;
    for (int r = 0; r < PEER_MAX_MEMBERS; r++) {
        if (!g->present[r] || r == g->rank || g->by_rank[r]) continue;
        if (!(g->is_static && g->refusal[r][0]) && !(also_left && g->left[r])) return 0;
        gone++;
    }
    return gone > 0;
}

static int wait_view(peer_group *g, int n, int timeout_ms, int also_left) {
    double dl = deadline_of(timeout_ms);
    pthread_mutex_lock(&g->mu);
    while (view_connected(g) < n && !g->stop && !none_to_wait_for(g, also_left) &&
           cv_wait_until(&g->cv, &g->mu, dl) != ETIMEDOUT)
        ;
    int have = view_connected(g);
    pthread_mutex_unlock(&g->mu);
    return have;
}

int peer_wait_view(peer_group *g, int n, int timeout_ms) { return wait_view(g, n, timeout_ms, 0); }

int peer_wait_start(peer_group *g, int n, int timeout_ms) { return wait_view(g, n, timeout_ms, 1); }

int peer_connected(peer_group *g, int rank) {
    if (rank < 0 || rank >= PEER_MAX_MEMBERS) return 0;
    pthread_mutex_lock(&g->mu);
    int up = rank == g->rank || (g->by_rank[rank] && g->by_rank[rank]->state == L_UP);
    pthread_mutex_unlock(&g->mu);
    return up;
}

static int check_dest(peer_group *g, int rank, size_t len) {
    if (rank < 0 || rank >= PEER_MAX_MEMBERS || rank == g->rank)
        return err_set(ERR_INVAL, "peer: send: bad rank %d (this is rank %d)", rank, g->rank);
    if (len > FRAME_MAX_PAYLOAD)
        return err_set(ERR_INVAL, "peer: send to rank %d: %zu bytes > %u", rank, len,
                       FRAME_MAX_PAYLOAD);
    return ERR_OK;
}

static int check_send(peer_group *g, int rank, int ch, size_t len) {
    if (ch <= PEER_CH_SYS || ch >= PEER_CH_STATE) // STATE carries peer_call only
        return err_set(ERR_INVAL, "peer: send: bad channel %d", ch);
    return check_dest(g, rank, len);
}

int peer_send(peer_group *g, int rank, int ch, const void *data, size_t len) {
    int rc = check_send(g, rank, ch, len);
    if (rc) return rc;
    if (len && !data) return err_set(ERR_INVAL, "peer: send: NULL data");
    pthread_mutex_lock(&g->mu);
    plink *l = g->by_rank[rank];
    if (g->stop)
        rc = err_set(ERR_CLOSED, "peer: send: closed");
    else if (!l || l->state != L_UP)
        rc = err_set(ERR_PEER, "peer: rank %d not connected", rank);
    else if (send_copy(g, l, ch, data, len))
        rc = err_set(ERR_PEER, "peer: %s queue to rank %d full", ch_name[ch], rank);
    if (rc && rc != ERR_CLOSED) g->st.send_dropped[ch]++;
    pthread_mutex_unlock(&g->mu);
    return rc;
}

// post queues a zero-copy frame (peer_post, peer_post_crc; crc NULL: the writer computes it).
static int post(peer_group *g, int rank, int ch, const void *data, size_t len, const uint32_t *crc,
                peer_op **op) {
    *op = NULL;
    int rc = check_send(g, rank, ch, len);
    if (rc) return rc;
    if (len && !data) return err_set(ERR_INVAL, "peer: post: NULL data");
    pthread_mutex_lock(&g->mu);
    plink *l = g->by_rank[rank];
    if (g->stop) {
        rc = err_set(ERR_CLOSED, "peer: post: closed");
    } else if (!l || l->state != L_UP) {
        g->st.send_dropped[ch]++;
        rc = err_set(ERR_PEER, "peer: rank %d not connected", rank);
    } else if (l->qn[ch] >= sendq_cap[ch]) {
        g->st.send_dropped[ch]++;
        rc = err_set(ERR_PEER, "peer: %s queue to rank %d full", ch_name[ch], rank);
    } else {
        out_frame *f = xcalloc(1, sizeof *f);
        f->ch = ch;
        f->data = data;
        f->len = (uint32_t)len;
        f->state = F_QUEUED;
        f->link = l;
        f->has_crc = crc != NULL;
        f->crc = crc ? *crc : 0;
        enqueue(l, f, -1); // the bound was checked above
        *op = (peer_op *)f;
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}

int peer_post(peer_group *g, int rank, int ch, const void *data, size_t len, peer_op **op) {
    return post(g, rank, ch, data, len, NULL, op);
}

int peer_post_crc(peer_group *g, int rank, int ch, const void *data, size_t len, uint32_t crc,
                  peer_op **op) {
    return post(g, rank, ch, data, len, &crc, op);
}

int peer_op_wait(peer_group *g, peer_op *op, int timeout_ms) {
    out_frame *f = (out_frame *)op;
    double dl = deadline_of(timeout_ms);
    pthread_mutex_lock(&g->mu);
    while (f->state != F_DONE && cv_wait_until(&g->cv, &g->mu, dl) != ETIMEDOUT)
        ;
    int done = f->state == F_DONE, rc = f->rc;
    pthread_mutex_unlock(&g->mu);
    if (!done) return err_set(ERR_TIMEOUT, "peer: send not written after %d ms", timeout_ms);
    free(f);
    return rc ? err_set(ERR_PEER, "peer: the link went down before the send was written") : ERR_OK;
}

void peer_op_cancel(peer_group *g, peer_op *op) {
    if (!op) return;
    out_frame *f = (out_frame *)op;
    pthread_mutex_lock(&g->mu);
    if (f->state == F_QUEUED) { // still in its link's queue (so the link is alive): take it out
        plink *l = f->link;
        out_frame **pp = &l->qh[f->ch], *prev = NULL;
        while (*pp && *pp != f) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp) {
            *pp = f->next;
            if (l->qt[f->ch] == f) l->qt[f->ch] = prev;
            l->qn[f->ch]--;
        }
        g->st.send_dropped[f->ch]++;
        f->state = F_DONE;
    }
    while (f->state != F_DONE) // being written: the write ends (or fails) by itself
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    free(f);
}

int peer_send_wait(peer_group *g, int rank, int ch, const void *data, size_t len, int timeout_ms) {
    double dl = deadline_of(timeout_ms);
    peer_op *op;
    int rc;
    // wait for room in the channel's queue (the writer signals each frame it takes)
    for (;;) {
        rc = peer_post(g, rank, ch, data, len, &op);
        if (rc != ERR_PEER || !peer_connected(g, rank)) break;
        pthread_mutex_lock(&g->mu);
        int timed_out = cv_wait_until(&g->cv, &g->mu, dl) == ETIMEDOUT;
        pthread_mutex_unlock(&g->mu);
        if (timed_out)
            return err_set(ERR_TIMEOUT, "peer: %s queue to rank %d full for %d ms", ch_name[ch],
                           rank, timeout_ms);
    }
    if (rc) return rc;
    double left = dl < 0 ? -1 : dl - sys_now_ms();
    rc = peer_op_wait(g, op, dl < 0 ? -1 : left > 0 ? (int)left + 1 : 0);
    if (rc == ERR_TIMEOUT) {
        peer_op_cancel(g, op);
        return err_set(ERR_TIMEOUT, "peer: send to rank %d still queued after %d ms", rank,
                       timeout_ms);
    }
    return rc;
}

int peer_recv(peer_group *g, int ch, int timeout_ms, peer_msg **out) {
    *out = NULL;
    if (ch <= PEER_CH_SYS || ch >= PEER_CH_STATE)
        return err_set(ERR_INVAL, "peer: recv: bad channel %d", ch);
    double dl = deadline_of(timeout_ms);
    pthread_mutex_lock(&g->mu);
    while (!g->rh[ch] && !g->stop && !g->rwake[ch] && timeout_ms != 0 &&
           cv_wait_until(&g->rcv[ch], &g->mu, dl) != ETIMEDOUT)
        ;
    int rc = ERR_OK;
    if (g->rh[ch]) {
        peer_msg *m = g->rh[ch];
        g->rh[ch] = m->next_;
        if (!g->rh[ch]) g->rt[ch] = NULL;
        g->rn[ch]--;
        g->rbytes[ch] -= m->len;
        m->next_ = NULL;
        *out = m;
        pthread_cond_broadcast(&g->rcv[ch]); // a reader may wait for room
    } else if (g->stop) {
        rc = err_set(ERR_CLOSED, "peer: recv: closed");
    } else {
        g->rwake[ch] = 0;
        rc =
            err_set(ERR_TIMEOUT, "peer: recv: nothing on %s within %d ms", ch_name[ch], timeout_ms);
    }
    if (*out) g->rwake[ch] = 0;
    pthread_mutex_unlock(&g->mu);
    return rc;
}

void peer_msg_free(peer_group *g, peer_msg *m) {
    if (!m) return;
    pthread_mutex_lock(&g->mu);
    msg_put(g, m);
    pthread_mutex_unlock(&g->mu);
}

void peer_wake(peer_group *g, int ch) {
    if (ch <= PEER_CH_SYS || ch >= PEER_NCH) return;
    pthread_mutex_lock(&g->mu);
    g->rwake[ch] = 1;
    pthread_cond_broadcast(&g->rcv[ch]);
    pthread_mutex_unlock(&g->mu);
}

int peer_diagnose(peer_group *g, int rank, char *buf, size_t n) {
    int kind = PEER_DIAG_DOWN;
    pthread_mutex_lock(&g->mu);
    if (rank < 0 || rank >= PEER_MAX_MEMBERS || !g->present[rank]) {
        snprintf(buf, n, "rank %d is not in the view", rank);
    } else if (rank == g->rank || (g->by_rank[rank] && g->by_rank[rank]->state == L_UP)) {
        snprintf(buf, n, "connected");
        kind = PEER_DIAG_CONNECTED;
    } else if (g->refusal[rank][0]) {
        snprintf(buf, n, "%s", g->refusal[rank]);
        kind = g->refusal_kind[rank];
    } else if (g->left[rank]) {
        snprintf(buf, n, "it was connected and left (its process ended, or the link broke)");
        kind = PEER_DIAG_LEFT;
    } else if (rank > g->rank)
        snprintf(buf, n, "%s", g->dial_err[rank][0] ? g->dial_err[rank] : "no hello yet");
    else { // it dials us: probe its address to say why it has not
        char *url = to_url(g, g->mem[rank].addr), err[160], addr[PEER_ADDR_MAX];
        snprintf(addr, sizeof addr, "%s", g->mem[rank].addr);
        pthread_mutex_unlock(&g->mu);
        nng_stream_dialer *d = NULL; // a one-off probe from the caller's thread
        nng_stream *s = dial_with(&d, url, g->tls.client, err, sizeof err);
        if (d) nng_stream_dialer_free(d);
        free(url);
        if (s) {
            nng_stream_close(s);
            nng_stream_free(s);
            snprintf(buf, n, "up at %s but has not dialled in (the lower rank of a pair dials)",
                     addr);
        } else {
            snprintf(buf, n, "%s", err);
        }
        return kind;
    }
    pthread_mutex_unlock(&g->mu);
    return kind;
}

void peer_get_stats(peer_group *g, peer_stats *st) {
    pthread_mutex_lock(&g->mu);
    *st = g->st;
    pthread_mutex_unlock(&g->mu);
}

void peer_set_server(peer_group *g, peer_serve_fn fn, void *arg) {
    pthread_mutex_lock(&g->mu);
    g->serve = fn;
    g->serve_arg = arg;
    while (!fn && g->serving > 0) // the old server may be running: let it finish
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

// call_run sends req(len) to rank as call c and waits for its reply (peer_call, peer_call_into).
static int call_run(peer_group *g, int rank, const void *req, size_t len, call *c, peer_msg **reply,
                    int timeout_ms) {
    *reply = NULL;
    int rc = check_dest(g, rank, len + RPC_HDR);
    if (rc) return rc;
    double dl = deadline_of(timeout_ms);
    pthread_mutex_lock(&g->mu);
    plink *l = g->by_rank[rank];
    if (g->stop || !l || l->state != L_UP) {
        pthread_mutex_unlock(&g->mu);
        return err_set(g->stop ? ERR_CLOSED : ERR_PEER, "peer: call to rank %d: not connected",
                       rank);
    }
    c->id = ++g->call_id;
    c->rank = rank;
    c->link = l;
    peer_msg *m = msg_get(g, len + RPC_HDR);
    unsigned char *p = m->data;
    p[0] = RPC_REQ;
    le_put32(p + 1, c->id);
    if (len) memcpy(p + RPC_HDR, req, len);
    out_frame *f = xcalloc(1, sizeof *f);
    f->ch = PEER_CH_STATE;
    f->data = m->data;
    f->len = (uint32_t)m->len;
    f->owned = m;
    if (enqueue(l, f, sendq_cap[PEER_CH_STATE]) != ERR_OK) {
        msg_put(g, m);
        free(f);
        pthread_mutex_unlock(&g->mu);
        return err_set(ERR_PEER, "peer: call to rank %d: queue full", rank);
    }
    c->next = g->calls;
    g->calls = c;
    while (!c->done && !g->stop && g->by_rank[rank] == l && l->state == L_UP &&
           cv_wait_until(&g->cv, &g->mu, dl) != ETIMEDOUT)
        ;
    while (c->filling) // the reader is putting its body into the caller's buffer: let it finish
        pthread_cond_wait(&g->cv, &g->mu);
    for (call **pp = &g->calls; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (c->done && c->damaged) {
        rc = err_set(ERR_FORMAT, "peer: call to rank %d: the reply fails its CRC check", rank);
    } else if (c->done) {
        *reply = c->reply; // NULL: rank serves no requests (yet)
        rc = ERR_OK;
    } else if (g->stop) {
        rc = err_set(ERR_CLOSED, "peer: call to rank %d: closed", rank);
    } else if (g->by_rank[rank] != l || l->state != L_UP) {
        rc = err_set(ERR_PEER, "peer: call to rank %d: the link went down", rank);
    } else {
        rc = err_set(ERR_TIMEOUT, "peer: call to rank %d: no reply within %d ms", rank, timeout_ms);
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}

int peer_call(peer_group *g, int rank, const void *req, size_t len, peer_msg **reply,
              int timeout_ms) {
    call c = {0};
    return call_run(g, rank, req, len, &c, reply, timeout_ms);
}

int peer_call_into(peer_group *g, int rank, const void *req, size_t len, size_t head, void *dst,
                   size_t cap, peer_msg **reply, size_t *got, uint32_t *crc, int timeout_ms) {
    call c = {.dst = dst, .head = head, .cap = cap};
    *got = 0;
    *crc = 0;
    int rc = call_run(g, rank, req, len, &c, reply, timeout_ms);
    peer_msg *m = *reply;
    if (rc || !m) return rc;
    if (c.direct) { // the frame's check, over the body where it landed
        uint32_t body = wire_crc32c(dst, c.got);
        if (wire_crc32c_combine(c.hcrc, body, c.got) != c.pcrc) {
            peer_msg_free(g, m);
            *reply = NULL;
            pthread_mutex_lock(&g->mu);
            g->st.bad_crc++;
            pthread_mutex_unlock(&g->mu);
            return err_set(ERR_FORMAT, "peer: call to rank %d: the reply fails its CRC check",
                           rank);
        }
        *got = c.got;
        *crc = body;
        return ERR_OK;
    }
    // it came whole, through a buffer (frame tags, or a body too large): copy the body over
    size_t body = m->len > head ? m->len - head : 0;
    if (body > cap) {
        peer_msg_free(g, m);
        *reply = NULL;
        return err_set(ERR_FORMAT,
                       "peer: call to rank %d: a reply of %zu bytes after its head, "
                       "for a buffer of %zu",
                       rank, body, cap);
    }
    if (body) memcpy(dst, (const unsigned char *)m->data + head, body);
    m->len -= body;
    *got = body;
    *crc = wire_crc32c(dst, body);
    return ERR_OK;
}

// ---- misbehaving members -------------------------------------------------------------------

// refuse_expelled refuses hello h on l when it comes from an expelled member: in a static group
// its rank (a restarted process has a new member id, not a new rank), else its member id. Under
// mu. Returns 1 if refused.
static int refuse_expelled(peer_group *g, plink *l, const hs_hello *h) {
    int r = -1;
    for (int i = 0; i < PEER_MAX_MEMBERS && r < 0; i++)
        if (g->expelled[i] && ((g->expelled_id[i] && g->expelled_id[i] == h->member) ||
                               (g->is_static && h->rank == i)))
            r = i;
    if (r < 0) return 0;
    char why[160];
    snprintf(why, sizeof why, "rank %d was expelled from this run", r);
    refuse(g, l, -1, PEER_DIAG_REFUSED, why); // g->refusal[r] keeps the reason of the expulsion
    return 1;
}

int peer_offence(peer_group *g, int rank, const char *why) {
    if (rank < 0 || rank >= PEER_MAX_MEMBERS) return 0;
    pthread_mutex_lock(&g->mu);
    if (rank == g->rank || g->expelled[rank]) {
        int out = g->expelled[rank];
        pthread_mutex_unlock(&g->mu);
        return out;
    }
    int n = ++g->offences[rank], max = g->o.max_offences;
    g->st.offences++;
    char addr[PEER_ADDR_MAX];
    snprintf(addr, sizeof addr, "%s",
             g->by_rank[rank] ? g->by_rank[rank]->addr : g->mem[rank].addr);
    pthread_mutex_unlock(&g->mu);
    if (max > 0)
        LOG_W(tag(g), "rank=%d addr=%s offence %d of %d: %s", rank, addr, n, max, why);
    else
        LOG_W(tag(g), "rank=%d addr=%s offence %d (net.max_offences = 0: never expelled): %s", rank,
              addr, n, why);
    if (max <= 0 || n < max) return 0;
    char reason[400];
    snprintf(reason, sizeof reason, "%d offences, the last: %s", n, why);
    peer_expel(g, rank, reason);
    return 1;
}

int peer_expel(peer_group *g, int rank, const char *why) {
    if (rank < 0 || rank >= PEER_MAX_MEMBERS)
        return err_set(ERR_INVAL, "peer: expel: rank %d out of range", rank);
    pthread_mutex_lock(&g->mu);
    if (rank == g->rank) {
        pthread_mutex_unlock(&g->mu);
        return err_set(ERR_INVAL, "peer: expel: rank %d is this process", rank);
    }
    if (g->expelled[rank]) {
        pthread_mutex_unlock(&g->mu);
        return ERR_OK;
    }
    plink *l = g->by_rank[rank];
    g->expelled[rank] = 1;
    g->expelled_id[rank] = l ? l->member : g->mem[rank].id;
    g->st.expelled++;
    snprintf(g->refusal[rank], sizeof g->refusal[rank], "expelled: %s", why ? why : "");
    g->refusal_kind[rank] = PEER_DIAG_REFUSED;
    LOG_W(tag(g), "rank=%d expels rank=%d addr=%s member=%016" PRIx64 ": %s", g->rank, rank,
          l ? l->addr : g->mem[rank].addr, g->expelled_id[rank], why ? why : "");
    if (l) {
        link_down(g, l);        // out of the view's links now; its writer stops
        nng_stream_close(l->s); // its reader wakes and ends (the link is freed as any dead one)
    }
    g->next_dial[rank] = 1e300; // never dialled again (link_down set a redial)
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return ERR_OK;
}

int peer_expelled(peer_group *g, int rank) {
    if (rank < 0 || rank >= PEER_MAX_MEMBERS) return 0;
    pthread_mutex_lock(&g->mu);
    int out = g->expelled[rank];
    pthread_mutex_unlock(&g->mu);
    return out;
}
