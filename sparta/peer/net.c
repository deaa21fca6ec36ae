// net.c: the peer mesh over nng (see net.h). One PAIR v0 socket per remote peer; each socket has
// one receive aio that re-arms itself and feeds a bounded FIFO shared by all sockets.
// Invariant: `closed` is only set under mu, and once it is set nothing enters the FIFO and no aio
// re-arms, so net_mesh_destroy can stop the aios and free whatever is left. nng 1.5.2 (Debian 12)
// can block forever closing a pipe in the middle of a TCP transfer; net_close makes that rare
// (quiesce) and never lets it hang the caller (close_sockets on a helper thread).
// Threads: recv_cb and pipe_cb run on nng's threads; net_send/net_recv/stats on the owner thread;
// net_close from any thread. Every nng call of the project lives in this file.
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pair0/pair.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include "sparta/peer/net.h"
#include "train/base/err.h"
#include "train/base/log.h"

enum {
    RECONN_MIN_MS = 100,  // first redial after a failed dial or a lost pipe
    RECONN_MAX_MS = 1000, // nng doubles the wait up to this
    SEND_BUF_MSGS = 64,   // PAIR v0 send queue; beyond it net_send drops (ERR_PEER)
    RECV_BUF_MSGS = 16,   // nng-side queue in front of our FIFO (the aio drains it at once)
    HOST_MAX = 256,
    PROBE_MS = 1000,      // net_diagnose: longest wait for a TCP connect
    QUIESCE_MS = 50,      // net_close: how long to let receives in progress finish
    CLOSE_WAIT_MS = 3000, // net_close: give up on nng_close after this (the mesh is then leaked)
};

// Besides NET_RECV_QUEUE messages the FIFO holds at most this many payload bytes, so that a
// burst of 8 MiB messages cannot take 32 GiB.
#define FIFO_MAX_BYTES ((size_t)512 << 20)

// A message handed out by net_recv is the body of the nng_msg it arrived in, so nothing is copied.
// MSG_HDR bytes are prepended to the body (nng keeps headroom for that, so usually no move): the
// nng_msg pointer and a magic, which net_msg_free reads back. The payload keeps its alignment.
#define MSG_HDR   16
#define MSG_MAGIC UINT64_C(0x6e65746d73670a31)
_Static_assert(sizeof(nng_msg *) <= 8, "message header holds one pointer");

// A hello (net_set_hello) is NET_HELLO_MAGIC followed by the blob; it never reaches net_recv.
#define HELLO_MAGIC_LEN 8
static const char hello_magic[HELLO_MAGIC_LEN] = {'S', 'P', 'N', 'H', 'E', 'L', 'O', '1'};

typedef struct net_link {
    struct net_mesh *m;
    int peer;             // remote rank: every message from this socket is attributed to it
    int dials;            // we dial the peer (else it dials us)
    char host[HOST_MAX];  // the host and port we dial, or the peer's own entry of the list
    int port;             // (diagnostics only)
    int listen_port;      // the port the peer dials on us (when !dials)
    unsigned char *hello; // the peer's hello on the current pipe (under m->mu), or NULL
    size_t hello_len;
    nng_socket sock; // id 0 until opened
    nng_aio *aio;    // the receive loop
    uint32_t pipe;   // id of the pipe that is up, 0 if none (under m->mu)
    uint32_t gone;   // last pipe removed before its ADD_POST ran (under m->mu)
} net_link;

typedef struct fifo_slot {
    nng_msg *msg; // body = MSG_HDR + payload
    int peer;
    double due_ms; // link emulation: not delivered before this monotonic time (0 = at once)
} fifo_slot;

// Link emulation (net_set_link): the time each emulated wire (sender rank -> receiver rank) is
// busy until, shared by every mesh of the process, so that the SPARTA and DiLoCo meshes of one
// peer compete for one link as they would on a real wire.
#define LINKS_MAX 1024
static pthread_mutex_t links_mu = PTHREAD_MUTEX_INITIALIZER;
typedef struct link_busy {
    int from, to;
    double busy_until_ms;
} link_busy;
static link_busy links_busy[LINKS_MAX];
static int links_n;

struct net_mesh {
    int rank, world;
    net_link *links;    // (world); links[rank] is unused
    pthread_mutex_t mu; // guards the FIFO, closed and the links' pipe ids
    int woken;          // set by net_wake, consumed by net_recv
    pthread_cond_t cv;  // CLOCK_MONOTONIC; signalled on push and on close
    fifo_slot *fifo;    // (NET_RECV_QUEUE) ring
    size_t head, count; // oldest slot, slots in use
    size_t bytes;       // payload bytes in the FIFO
    _Atomic int closed; // written under mu; read anywhere
    int closing_done;   // close_sockets finished (under mu)
    int wedged;         // nng_close did not return in time: never free this mesh
    _Atomic uint64_t bytes_sent, bytes_recv, msgs_sent, msgs_recv, send_dropped, recv_dropped;
    double emu_bytes_per_ms; // link emulation (under mu): 0 = unlimited rate
    int emu_delay_ms;
    double emu_loss;
    uint64_t emu_rng;
    int emu_on;
    unsigned char *hello; // our hello with its magic (under mu), or NULL
    size_t hello_len;
};

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

void net_set_link(net_mesh *m, double rate_mbit, int delay_ms, double loss, uint64_t seed) {
    ASSERT(m != NULL && rate_mbit >= 0 && delay_ms >= 0 && loss >= 0 && loss <= 1);
    pthread_mutex_lock(&m->mu);
    m->emu_bytes_per_ms = rate_mbit * 1e6 / 8 / 1e3;
    m->emu_delay_ms = delay_ms;
    m->emu_loss = loss;
    m->emu_rng = seed * 0x9E3779B97F4A7C15ull + 1;
    m->emu_on = rate_mbit > 0 || delay_ms > 0 || loss > 0;
    pthread_mutex_unlock(&m->mu);
    if (m->emu_on)
        LOG_I("net", "rank=%d emulated link: %g Mbit/s, %d ms delay, loss %g", m->rank, rate_mbit,
              delay_ms, loss);
}

// emu_due returns when a message of len bytes from peer that arrives now is delivered, or -1 if
// the emulated link loses it. Under m->mu.
static double emu_due(net_mesh *m, int peer, size_t len) {
    m->emu_rng ^= m->emu_rng << 13; // xorshift64: only the loss draws use it
    m->emu_rng ^= m->emu_rng >> 7;
    m->emu_rng ^= m->emu_rng << 17;
    if (m->emu_loss > 0 && (double)(m->emu_rng >> 11) * 0x1p-53 < m->emu_loss) return -1;
    double t = now_ms();
    if (m->emu_bytes_per_ms > 0) {
        pthread_mutex_lock(&links_mu);
        int i = 0;
        while (i < links_n && !(links_busy[i].from == peer && links_busy[i].to == m->rank))
            i++;
        if (i == links_n && links_n < LINKS_MAX)
            links_busy[links_n++] = (link_busy){peer, m->rank, 0};
        if (i < links_n) {
            double start = links_busy[i].busy_until_ms > t ? links_busy[i].busy_until_ms : t;
            t = start + (double)len / m->emu_bytes_per_ms;
            links_busy[i].busy_until_ms = t;
        }
        pthread_mutex_unlock(&links_mu);
    }
    return t + m->emu_delay_ms;
}

// ---- addresses --------------------------------------------------------------------------------

int net_parse_hostport(const char *addr, char *host, size_t hn, int *port) {
    ASSERT(host != NULL && hn > 0 && port != NULL);
    if (!addr) return err_set(ERR_INVAL, "net: address missing (want host:port)");
    const char *h = addr, *hend, *colon;
    if (addr[0] == '[') { // "[v6]:port"
        const char *rb = strchr(addr, ']');
        if (!rb) return err_set(ERR_INVAL, "net: bad address '%s': missing ']'", addr);
        if (rb[1] != ':')
            return err_set(ERR_INVAL, "net: bad address '%s': want [host]:port", addr);
        h = addr + 1;
        hend = rb;
        colon = rb + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon) return err_set(ERR_INVAL, "net: bad address '%s': missing ':port'", addr);
        hend = colon;
        if (memchr(addr, ':', (size_t)(colon - addr)))
            return err_set(ERR_INVAL, "net: bad address '%s': put IPv6 hosts in [ ]", addr);
    }
    size_t n = (size_t)(hend - h);
    if (n == 0) return err_set(ERR_INVAL, "net: bad address '%s': missing host", addr);
    if (n >= hn) return err_set(ERR_INVAL, "net: bad address '%s': host too long", addr);
    const char *p = colon + 1;
    long v = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9' && digits < 6; p++, digits++)
        v = v * 10 + (*p - '0');
    if (digits == 0 || *p != '\0' || v < 1 || v > 65535)
        return err_set(ERR_INVAL, "net: bad address '%s': port must be 1..65535", addr);
    memcpy(host, h, n);
    host[n] = '\0';
    *port = (int)v;
    return ERR_OK;
}

// make_url writes "tcp://host:port", bracketing IPv6 hosts again.
static void make_url(char *url, size_t n, const char *host, int port) {
    int v6 = strchr(host, ':') != NULL;
    snprintf(url, n, "tcp://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
}

// ---- callbacks (nng threads) ------------------------------------------------------------------

// is_self_connection: a TCP dial to a port of this host that nobody listens on can connect to
// itself when the kernel happens to pick that same port as the source (Linux "simultaneous
// open"; it happens within hours of redialling an even port in the ephemeral range). The pipe
// then echoes our own messages back as if from the peer, and blocks the peer's listen port.
static int is_self_connection(nng_pipe p) {
    nng_sockaddr loc, rem;
    if (nng_pipe_get_addr(p, NNG_OPT_LOCADDR, &loc) || nng_pipe_get_addr(p, NNG_OPT_REMADDR, &rem))
        return 0;
    if (loc.s_family != rem.s_family) return 0;
    if (loc.s_family == NNG_AF_INET)
        return loc.s_in.sa_port == rem.s_in.sa_port && loc.s_in.sa_addr == rem.s_in.sa_addr;
    if (loc.s_family == NNG_AF_INET6)
        return loc.s_in6.sa_port == rem.s_in6.sa_port &&
               memcmp(loc.s_in6.sa_addr, rem.s_in6.sa_addr, sizeof loc.s_in6.sa_addr) == 0;
    return 0;
}

// pipe_cb tracks the one live pipe of a PAIR v0 socket. REM_POST also fires for pipes that were
// rejected (a second dialer, a self-connection) and may run before the ADD_POST of the same pipe,
// hence `gone`.
static void pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg) {
    net_link *l = arg;
    net_mesh *m = l->m;
    uint32_t id = (uint32_t)nng_pipe_id(p);
    if (ev == NNG_PIPE_EV_ADD_PRE) {
        if (is_self_connection(p)) { // closing it here keeps it from the socket; nng redials
            LOG_I("net", "rank=%d peer=%d rejected a self-connection pipe=%u", m->rank, l->peer,
                  id);
            nng_pipe_close(p);
        }
        return;
    }
    int changed = 0;
    pthread_mutex_lock(&m->mu);
    if (ev == NNG_PIPE_EV_ADD_POST && id != l->gone) {
        l->pipe = id;
        changed = 1;
    } else if (ev == NNG_PIPE_EV_REM_POST) {
        if (l->pipe == id) {
            l->pipe = 0;
            changed = 1;
        } else {
            l->gone = id;
        }
    }
    if (changed && ev == NNG_PIPE_EV_REM_POST) { // a new pipe says hello again
        free(l->hello);
        l->hello = NULL;
        l->hello_len = 0;
    }
    nng_msg *hello = NULL;
    if (changed && ev == NNG_PIPE_EV_ADD_POST && m->hello &&
        nng_msg_alloc(&hello, m->hello_len) == 0)
        memcpy(nng_msg_body(hello), m->hello, m->hello_len);
    if (changed) pthread_cond_broadcast(&m->cv); // net_close may wait for pipes to drop
    pthread_mutex_unlock(&m->mu);
    if (hello && nng_sendmsg(l->sock, hello, NNG_FLAG_NONBLOCK) != 0) nng_msg_free(hello);
    if (changed)
        LOG_I("net", "rank=%d peer=%d %s pipe=%u", m->rank, l->peer,
              ev == NNG_PIPE_EV_ADD_POST ? "up" : "down", id);
}

// fifo_push takes ownership of msg: queues it for net_recv, or frees it (closed, oversized,
// queue full).
static void fifo_push(net_mesh *m, int peer, nng_msg *msg) {
    size_t len = nng_msg_len(msg);
    if (len > NET_MAX_MSG) {
        atomic_fetch_add(&m->recv_dropped, 1);
        nng_msg_free(msg);
        return;
    }
    unsigned char hdr[MSG_HDR] = {0};
    uint64_t magic = MSG_MAGIC;
    memcpy(hdr, &msg, sizeof msg);
    memcpy(hdr + 8, &magic, sizeof magic);
    if (nng_msg_insert(msg, hdr, sizeof hdr) != 0) { // out of memory in nng
        atomic_fetch_add(&m->recv_dropped, 1);
        nng_msg_free(msg);
        return;
    }
    int keep = 0;
    pthread_mutex_lock(&m->mu);
    if (!atomic_load(&m->closed)) {
        double due = m->emu_on ? emu_due(m, peer, len) : 0;
        if (due < 0) {
            atomic_fetch_add(&m->recv_dropped, 1); // lost on the emulated link
        } else if (m->count < NET_RECV_QUEUE && m->bytes + len <= FIFO_MAX_BYTES) {
            m->fifo[(m->head + m->count) % NET_RECV_QUEUE] = (fifo_slot){msg, peer, due};
            m->count++;
            m->bytes += len;
            atomic_fetch_add(&m->msgs_recv, 1);
            atomic_fetch_add(&m->bytes_recv, len);
            pthread_cond_broadcast(&m->cv);
            keep = 1;
        } else {
            atomic_fetch_add(&m->recv_dropped, 1);
        }
    }
    pthread_mutex_unlock(&m->mu);
    if (!keep) nng_msg_free(msg);
}

// recv_cb completes one nng_recv_aio and starts the next, until the socket is closed or the aio
// stopped. A re-arm racing with net_close fails inside nng (closed socket / stopped aio).
static void recv_cb(void *arg) {
    net_link *l = arg;
    net_mesh *m = l->m;
    int rv = nng_aio_result(l->aio);
    if (rv == 0) {
        nng_msg *msg = nng_aio_get_msg(l->aio);
        nng_aio_set_msg(l->aio, NULL);
        size_t len = nng_msg_len(msg);
        if (len >= HELLO_MAGIC_LEN && len <= NET_HELLO_MAX + HELLO_MAGIC_LEN &&
            !memcmp(nng_msg_body(msg), hello_magic, HELLO_MAGIC_LEN)) {
            size_t n = len - HELLO_MAGIC_LEN;
            unsigned char *copy = xmalloc(n + 1);
            memcpy(copy, (unsigned char *)nng_msg_body(msg) + HELLO_MAGIC_LEN, n);
            copy[n] = 0;
            nng_msg_free(msg);
            pthread_mutex_lock(&m->mu);
            free(l->hello);
            l->hello = copy;
            l->hello_len = n;
            pthread_cond_broadcast(&m->cv);
            pthread_mutex_unlock(&m->mu);
        } else {
            fifo_push(m, l->peer, msg);
        }
    } else if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) {
        return;
    }
    if (!atomic_load(&m->closed)) nng_recv_aio(l->sock, l->aio);
}

// ---- create / destroy -------------------------------------------------------------------------

// link_open opens the socket to peer l->peer, starts its receive loop, and listens on or dials
// url. On failure the partly opened link is released by net_mesh_destroy.
static int link_open(net_mesh *m, net_link *l, int do_listen, const char *url) {
    int rv;
    if ((rv = nng_pair0_open(&l->sock)) != 0)
        return err_set(ERR_NET, "net: cannot open socket for peer %d: %s", l->peer,
                       nng_strerror(rv));
    if ((rv = nng_socket_set_size(l->sock, NNG_OPT_RECVMAXSZ, (size_t)NET_MAX_MSG + 64)) ||
        (rv = nng_socket_set_int(l->sock, NNG_OPT_SENDBUF, SEND_BUF_MSGS)) ||
        (rv = nng_socket_set_int(l->sock, NNG_OPT_RECVBUF, RECV_BUF_MSGS)) ||
        (rv = nng_pipe_notify(l->sock, NNG_PIPE_EV_ADD_PRE, pipe_cb, l)) ||
        (rv = nng_pipe_notify(l->sock, NNG_PIPE_EV_ADD_POST, pipe_cb, l)) ||
        (rv = nng_pipe_notify(l->sock, NNG_PIPE_EV_REM_POST, pipe_cb, l)) ||
        (rv = nng_aio_alloc(&l->aio, recv_cb, l)))
        return err_set(ERR_NET, "net: cannot set up socket for peer %d: %s", l->peer,
                       nng_strerror(rv));
    nng_recv_aio(l->sock, l->aio);
    if (do_listen) {
        if ((rv = nng_listen(l->sock, url, NULL, 0)) != 0)
            return err_set(ERR_NET, "net: cannot listen on %s (for peer %d): %s", url, l->peer,
                           nng_strerror(rv));
        LOG_D("net", "rank=%d listen=%s peer=%d", m->rank, url, l->peer);
        return ERR_OK;
    }
    // Non-blocking start: a peer that is not up yet is redialled every 100 ms .. 1 s.
    nng_dialer d;
    if ((rv = nng_dialer_create(&d, l->sock, url)) != 0)
        return err_set(ERR_INVAL, "net: cannot dial %s (peer %d): %s", url, l->peer,
                       nng_strerror(rv));
    if ((rv = nng_dialer_set_ms(d, NNG_OPT_RECONNMINT, RECONN_MIN_MS)) ||
        (rv = nng_dialer_set_ms(d, NNG_OPT_RECONNMAXT, RECONN_MAX_MS)) ||
        (rv = nng_dialer_start(d, NNG_FLAG_NONBLOCK)))
        return err_set(ERR_NET, "net: cannot dial %s (peer %d): %s", url, l->peer,
                       nng_strerror(rv));
    LOG_D("net", "rank=%d dial=%s peer=%d", m->rank, url, l->peer);
    return ERR_OK;
}

int net_mesh_create(net_mesh **out, int rank, int world, const char *const *peers,
                    const char *listen) {
    ASSERT(out != NULL && peers != NULL);
    *out = NULL;
    if (world < 1 || rank < 0 || rank >= world)
        return err_set(ERR_INVAL, "net: rank %d out of range for %d peers", rank, world);
    // Check every address before any socket exists, so a typo fails cleanly.
    char host[HOST_MAX];
    int port, rc;
    for (int i = 0; i < world; i++) {
        if (!peers[i]) return err_set(ERR_INVAL, "net: address of peer %d missing", i);
        if ((rc = net_parse_hostport(peers[i], host, sizeof host, &port))) return rc;
        if (i > rank && port + rank > 65535)
            return err_set(ERR_INVAL, "net: peer %d address '%s': port %d + rank %d > 65535", i,
                           peers[i], port, rank);
    }
    const char *la = listen ? listen : peers[rank];
    char lhost[HOST_MAX];
    int lport;
    if ((rc = net_parse_hostport(la, lhost, sizeof lhost, &lport))) return rc;
    if (lport + rank - 1 > 65535)
        return err_set(ERR_INVAL, "net: listen address '%s': ports %d..%d exceed 65535", la, lport,
                       lport + rank - 1);

    net_mesh *m = xcalloc(1, sizeof *m);
    m->rank = rank;
    m->world = world;
    m->links = xcalloc((size_t)world, sizeof *m->links);
    m->fifo = xmalloc(NET_RECV_QUEUE * sizeof *m->fifo);
    pthread_mutex_init(&m->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cv, &ca);
    pthread_condattr_destroy(&ca);

    char url[HOST_MAX + 32];
    for (int p = 0; p < world && rc == ERR_OK; p++) {
        if (p == rank) continue;
        net_link *l = &m->links[p];
        l->m = m;
        l->peer = p;
        net_parse_hostport(peers[p], host, sizeof host, &port); // checked above
        snprintf(l->host, sizeof l->host, "%s", host);
        l->dials = p > rank;
        if (p < rank) { // p dials us on lport + p
            l->port = port;
            l->listen_port = lport + p;
            make_url(url, sizeof url, lhost, lport + p);
        } else { // we dial p on its port + rank
            l->port = port + rank;
            make_url(url, sizeof url, host, port + rank);
        }
        rc = link_open(m, l, p < rank, url);
    }
    if (rc != ERR_OK) {
        char msg[512]; // destroy may log; keep the message for the caller
        snprintf(msg, sizeof msg, "%s", err_msg());
        net_mesh_destroy(m);
        return err_set(rc, "%s", msg);
    }
    *out = m;
    return ERR_OK;
}

static void deadline_after(struct timespec *dl, int ms) {
    clock_gettime(CLOCK_MONOTONIC, dl);
    dl->tv_sec += ms / 1000;
    dl->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl->tv_nsec >= 1000000000L) {
        dl->tv_sec++;
        dl->tv_nsec -= 1000000000L;
    }
}

// quiesce lowers every socket's receive limit to 1 byte, so that each pipe fails at the next
// message header and is closed by nng itself on its error path, and waits up to QUIESCE_MS for
// the pipes that are up now to go. Why: nng 1.5.2's TCP transport re-arms its read after a
// partial read without checking for close (fixed upstream in 1.6.0, nng PR #1636), so closing a
// socket while a message is arriving can leave the pipe reaper (one per process) blocked for
// good. Idle pipes stay up for the whole wait; closing them is safe. Sends have the same flaw
// (a partial write re-armed after close, not fixed upstream as of 1.10); nothing here helps
// with that except the bound in net_close.
static void quiesce(net_mesh *m) {
    uint32_t *orig = xcalloc((size_t)m->world, sizeof *orig);
    for (int p = 0; p < m->world; p++)
        if (nng_socket_id(m->links[p].sock) > 0)
            nng_socket_set_size(m->links[p].sock, NNG_OPT_RECVMAXSZ, 1);
    struct timespec dl;
    deadline_after(&dl, QUIESCE_MS);
    pthread_mutex_lock(&m->mu);
    for (int p = 0; p < m->world; p++)
        orig[p] = m->links[p].pipe;
    for (;;) {
        int up = 0;
        for (int p = 0; p < m->world; p++)
            up += orig[p] != 0 && m->links[p].pipe == orig[p];
        if (!up || pthread_cond_timedwait(&m->cv, &m->mu, &dl) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&m->mu);
    free(orig);
}

// close_sockets runs on a helper thread: nng_close aborts the pending receive (its callback sees
// NNG_ECLOSED and stops) and returns once the socket's pipes are reaped and their callbacks ran.
static void *close_sockets(void *arg) {
    net_mesh *m = arg;
    for (int p = 0; p < m->world; p++)
        if (nng_socket_id(m->links[p].sock) > 0) nng_close(m->links[p].sock);
    pthread_mutex_lock(&m->mu);
    m->closing_done = 1;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

// wait_closed waits (under mu) until close_sockets finished or net_close gave up on it.
static void wait_closed(net_mesh *m) {
    while (!m->closing_done && !m->wedged)
        pthread_cond_wait(&m->cv, &m->mu);
}

void net_close(net_mesh *m) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    int was = atomic_exchange(&m->closed, 1);
    pthread_cond_broadcast(&m->cv);
    if (was) wait_closed(m); // another thread is closing: return when it is done
    pthread_mutex_unlock(&m->mu);
    if (was) return;
    quiesce(m);
    pthread_t th;
    if (pthread_create(&th, NULL, close_sockets, m) != 0) {
        close_sockets(m); // no thread to spare: close inline
        return;
    }
    struct timespec dl;
    deadline_after(&dl, CLOSE_WAIT_MS);
    pthread_mutex_lock(&m->mu);
    int timed_out = 0;
    while (!m->closing_done && !timed_out)
        timed_out = pthread_cond_timedwait(&m->cv, &m->mu, &dl) == ETIMEDOUT;
    int done = m->closing_done;
    m->wedged = !done;
    pthread_cond_broadcast(&m->cv); // wakes wait_closed
    pthread_mutex_unlock(&m->mu);
    if (done) {
        pthread_join(th, NULL);
    } else {
        pthread_detach(th);
        LOG_I("net",
              "rank=%d nng_close blocked for %d ms (nng 1.5.2 close-during-transfer bug); "
              "leaking the mesh, reconnects in this process may stop",
              m->rank, CLOSE_WAIT_MS);
    }
}

void net_mesh_destroy(net_mesh *m) {
    if (!m) return;
    net_close(m);
    pthread_mutex_lock(&m->mu);
    wait_closed(m);
    int wedged = m->wedged;
    pthread_mutex_unlock(&m->mu);
    if (wedged) return; // nng still holds callbacks into m: leak it rather than crash
    for (int p = 0; p < m->world; p++) // waits for a running recv_cb; later re-arms are refused
        if (m->links[p].aio) nng_aio_stop(m->links[p].aio);
    for (size_t i = 0; i < m->count; i++)
        nng_msg_free(m->fifo[(m->head + i) % NET_RECV_QUEUE].msg);
    for (int p = 0; p < m->world; p++)
        if (m->links[p].aio) nng_aio_free(m->links[p].aio);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    free(m->fifo);
    for (int p = 0; p < m->world; p++)
        free(m->links[p].hello);
    free(m->links);
    free(m->hello);
    free(m);
}

// ---- data path --------------------------------------------------------------------------------

int net_connected(net_mesh *m, int peer) {
    ASSERT(m != NULL);
    if (peer < 0 || peer >= m->world || peer == m->rank) return 0;
    pthread_mutex_lock(&m->mu);
    int up = !atomic_load(&m->closed) && m->links[peer].pipe != 0;
    pthread_mutex_unlock(&m->mu);
    return up;
}

void net_set_hello(net_mesh *m, const void *data, size_t len) {
    ASSERT(m != NULL && len <= NET_HELLO_MAX && (data || !len));
    pthread_mutex_lock(&m->mu);
    free(m->hello);
    m->hello = xmalloc(len + HELLO_MAGIC_LEN);
    memcpy(m->hello, hello_magic, HELLO_MAGIC_LEN);
    if (len) memcpy(m->hello + HELLO_MAGIC_LEN, data, len);
    m->hello_len = len + HELLO_MAGIC_LEN;
    pthread_mutex_unlock(&m->mu);
    // Pipes that came up before now get it here; later ones in pipe_cb (a peer may get it twice).
    for (int p = 0; p < m->world; p++) {
        if (p == m->rank || !net_connected(m, p)) continue;
        nng_msg *msg;
        if (nng_msg_alloc(&msg, m->hello_len) != 0) continue;
        pthread_mutex_lock(&m->mu);
        memcpy(nng_msg_body(msg), m->hello, m->hello_len);
        pthread_mutex_unlock(&m->mu);
        if (nng_sendmsg(m->links[p].sock, msg, NNG_FLAG_NONBLOCK) != 0) nng_msg_free(msg);
    }
}

int net_peer_hello(net_mesh *m, int peer, char *buf, size_t cap) {
    ASSERT(m != NULL && buf != NULL && cap > 0);
    buf[0] = 0;
    if (peer < 0 || peer >= m->world || peer == m->rank) return -1;
    pthread_mutex_lock(&m->mu);
    net_link *l = &m->links[peer];
    int n = -1;
    if (l->hello && l->pipe) {
        size_t k = l->hello_len < cap - 1 ? l->hello_len : cap - 1;
        memcpy(buf, l->hello, k);
        buf[k] = 0;
        n = (int)k;
    }
    pthread_mutex_unlock(&m->mu);
    return n;
}

// probe_tcp tries a TCP connect to host:port for at most PROBE_MS and describes the outcome.
static void probe_tcp(const char *host, int port, char *buf, size_t n) {
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int g = getaddrinfo(host, ps, &hints, &ai);
    if (g != 0) {
        snprintf(buf, n, "cannot resolve host '%s': %s", host, gai_strerror(g));
        return;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol), err = 0;
    if (fd < 0) {
        snprintf(buf, n, "cannot open a socket: %s", strerror(errno));
        freeaddrinfo(ai);
        return;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (rc != 0 && errno == EINPROGRESS) {
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        rc = poll(&pf, 1, PROBE_MS);
        if (rc == 0) {
            close(fd);
            snprintf(buf, n, "no answer from %s:%d within %d ms (host down, or a firewall?)", host,
                     port, PROBE_MS);
            return;
        }
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        rc = err ? -1 : 0;
    } else if (rc != 0) {
        err = errno;
    }
    close(fd);
    if (rc == 0)
        snprintf(buf, n,
                 "%s:%d accepts connections, but no peer link came up (another program "
                 "on that port?)",
                 host, port);
    else if (err == ECONNREFUSED)
        snprintf(buf, n, "connection to %s:%d refused (is the peer started?)", host, port);
    else
        snprintf(buf, n, "cannot connect to %s:%d: %s", host, port, strerror(err));
}

void net_diagnose(net_mesh *m, int peer, char *buf, size_t n) {
    ASSERT(m != NULL && buf != NULL && n > 0);
    if (peer < 0 || peer >= m->world || peer == m->rank) {
        snprintf(buf, n, "no such peer");
        return;
    }
    net_link *l = &m->links[peer];
    if (net_connected(m, peer)) {
        snprintf(buf, n, "connected");
        return;
    }
    if (l->dials) {
        probe_tcp(l->host, l->port, buf, n);
        return;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int g = getaddrinfo(l->host, NULL, &hints, &ai);
    if (ai) freeaddrinfo(ai);
    if (g != 0)
        snprintf(buf, n, "its host '%s' does not resolve here (%s), and it has not dialled in",
                 l->host, gai_strerror(g));
    else
        snprintf(buf, n,
                 "it has not dialled in on port %d (is it started, and can it reach this "
                 "host?)",
                 l->listen_port);
}

int net_send(net_mesh *m, int peer, const void *data, size_t len) {
    ASSERT(m != NULL);
    if (atomic_load(&m->closed)) return err_set(ERR_CLOSED, "net: send to peer %d: closed", peer);
    if (peer < 0 || peer >= m->world || peer == m->rank)
        return err_set(ERR_INVAL, "net: send: bad peer %d (rank %d of %d)", peer, m->rank,
                       m->world);
    if (len > NET_MAX_MSG)
        return err_set(ERR_INVAL, "net: send to peer %d: %zu bytes > NET_MAX_MSG (%u)", peer, len,
                       NET_MAX_MSG);
    if (len > 0 && !data) return err_set(ERR_INVAL, "net: send to peer %d: NULL data", peer);
    // PAIR v0 would queue while no pipe is up and deliver stale data later: refuse instead.
    if (!net_connected(m, peer)) {
        atomic_fetch_add(&m->send_dropped, 1);
        return err_set(ERR_PEER, "net: peer %d not connected", peer);
    }
    nng_msg *msg;
    int rv = nng_msg_alloc(&msg, len);
    if (rv != 0) return err_set(ERR_NOMEM, "net: send to peer %d: %s", peer, nng_strerror(rv));
    if (len) memcpy(nng_msg_body(msg), data, len);
    rv = nng_sendmsg(m->links[peer].sock, msg, NNG_FLAG_NONBLOCK);
    if (rv == 0) { // nng owns msg now
        atomic_fetch_add(&m->msgs_sent, 1);
        atomic_fetch_add(&m->bytes_sent, len);
        return ERR_OK;
    }
    nng_msg_free(msg); // on failure we still own it
    if (rv == NNG_EAGAIN) {
        atomic_fetch_add(&m->send_dropped, 1);
        return err_set(ERR_PEER, "net: send queue to peer %d full", peer);
    }
    if (rv == NNG_ECLOSED) return err_set(ERR_CLOSED, "net: send to peer %d: closed", peer);
    atomic_fetch_add(&m->send_dropped, 1);
    return err_set(ERR_NET, "net: send to peer %d: %s", peer, nng_strerror(rv));
}

void net_wake(net_mesh *m) {
    pthread_mutex_lock(&m->mu);
    m->woken = 1;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

// fifo_take removes the oldest message that is due (with link emulation, the oldest whose due
// time has passed; later slots keep their order) into *s and returns 1, or returns 0 and sets
// *next_due to the earliest due time. Under m->mu, with m->count > 0.
static int fifo_take(net_mesh *m, fifo_slot *s, double *next_due) {
    double t = m->emu_on ? now_ms() : 0, first = 0;
    for (size_t i = 0; i < m->count; i++) {
        fifo_slot *f = &m->fifo[(m->head + i) % NET_RECV_QUEUE];
        if (f->due_ms <= t) {
            *s = *f;
            for (size_t j = i; j > 0; j--) // close the gap: shift the older slots up by one
                m->fifo[(m->head + j) % NET_RECV_QUEUE] =
                    m->fifo[(m->head + j - 1) % NET_RECV_QUEUE];
            m->head = (m->head + 1) % NET_RECV_QUEUE;
            m->count--;
            return 1;
        }
        if (first == 0 || f->due_ms < first) first = f->due_ms;
    }
    *next_due = first;
    return 0;
}

int net_recv(net_mesh *m, int timeout_ms, int *peer, void **data, size_t *len) {
    ASSERT(m != NULL && peer != NULL && data != NULL && len != NULL);
    *peer = -1;
    *data = NULL;
    *len = 0;
    struct timespec dl;
    if (timeout_ms > 0) deadline_after(&dl, timeout_ms);
    fifo_slot s = {0};
    int rc, timed_out = 0;
    pthread_mutex_lock(&m->mu);
    for (;;) {
        if (atomic_load(&m->closed)) {
            rc = ERR_CLOSED;
            break;
        }
        if (m->woken) { // net_wake: return early without a message
            m->woken = 0;
            rc = ERR_TIMEOUT;
            break;
        }
        double next_due = 0;
        if (m->count > 0 && fifo_take(m, &s, &next_due)) {
            m->bytes -= nng_msg_len(s.msg) - MSG_HDR;
            rc = ERR_OK;
            break;
        }
        if (timeout_ms == 0 || timed_out) {
            rc = ERR_TIMEOUT;
            break;
        }
        if (next_due > 0) { // an emulated message becomes due: wake then (or at the deadline)
            struct timespec due;
            deadline_after(&due, (int)(next_due - now_ms()) + 1);
            if (timeout_ms > 0 &&
                (dl.tv_sec < due.tv_sec || (dl.tv_sec == due.tv_sec && dl.tv_nsec < due.tv_nsec))) {
                timed_out = pthread_cond_timedwait(&m->cv, &m->mu, &dl) == ETIMEDOUT;
            } else {
                pthread_cond_timedwait(&m->cv, &m->mu, &due);
            }
        } else if (timeout_ms < 0) {
            pthread_cond_wait(&m->cv, &m->mu);
        } else {
            timed_out = pthread_cond_timedwait(&m->cv, &m->mu, &dl) == ETIMEDOUT;
        }
    }
    pthread_mutex_unlock(&m->mu);
    if (rc == ERR_CLOSED) return err_set(ERR_CLOSED, "net: receive: closed");
    if (rc == ERR_TIMEOUT) return err_set(ERR_TIMEOUT, "net: no message within %d ms", timeout_ms);
    *peer = s.peer;
    *data = (unsigned char *)nng_msg_body(s.msg) + MSG_HDR;
    *len = nng_msg_len(s.msg) - MSG_HDR;
    return ERR_OK;
}

void net_msg_free(void *data) {
    if (!data) return;
    const unsigned char *hdr = (const unsigned char *)data - MSG_HDR;
    nng_msg *msg;
    uint64_t magic;
    memcpy(&msg, hdr, sizeof msg);
    memcpy(&magic, hdr + 8, sizeof magic);
    ASSERT(magic == MSG_MAGIC); // not a pointer from net_recv, or freed twice
    memset((unsigned char *)data - 8, 0, 8);
    nng_msg_free(msg);
}

void net_get_stats(net_mesh *m, net_stats *st) {
    ASSERT(m != NULL && st != NULL);
    st->bytes_sent = atomic_load(&m->bytes_sent);
    st->bytes_recv = atomic_load(&m->bytes_recv);
    st->msgs_sent = atomic_load(&m->msgs_sent);
    st->msgs_recv = atomic_load(&m->msgs_recv);
    st->send_dropped = atomic_load(&m->send_dropped);
    st->recv_dropped = atomic_load(&m->recv_dropped);
}

// ---- request/reply ----------------------------------------------------------------------------

// The server runs one aio as a two-state machine: receive a request, send the reply, repeat.
struct net_rep {
    nng_socket sock;
    nng_aio *aio;
    int sending; // the aio carries a reply (else it waits for a request)
    net_rep_fn fn;
    void *arg;
};

static void rep_cb(void *arg) {
    net_rep *r = arg;
    int rv = nng_aio_result(r->aio);
    if (r->sending) {
        if (rv != 0) nng_msg_free(nng_aio_get_msg(r->aio)); // not delivered: still ours
        r->sending = 0;
        if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) return;
        nng_recv_aio(r->sock, r->aio);
        return;
    }
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) return;
    if (rv != 0) {
        nng_recv_aio(r->sock, r->aio);
        return;
    }
    nng_msg *req = nng_aio_get_msg(r->aio);
    void *reply = NULL;
    size_t rlen = 0;
    r->fn(r->arg, nng_msg_body(req), nng_msg_len(req), &reply, &rlen);
    nng_msg_clear(req); // reuse the request's message (it carries the REP routing header)
    if (rlen > NET_MAX_MSG || (rlen && nng_msg_append(req, reply, rlen) != 0)) nng_msg_clear(req);
    free(reply);
    nng_aio_set_msg(r->aio, req);
    r->sending = 1;
    nng_send_aio(r->sock, r->aio);
}

int net_rep_create(net_rep **out, const char *addr, net_rep_fn fn, void *arg) {
    ASSERT(out != NULL && fn != NULL);
    *out = NULL;
    char host[HOST_MAX], url[HOST_MAX + 32];
    int port, rc, rv;
    if ((rc = net_parse_hostport(addr, host, sizeof host, &port))) return rc;
    make_url(url, sizeof url, host, port);
    net_rep *r = xcalloc(1, sizeof *r);
    r->fn = fn;
    r->arg = arg;
    if ((rv = nng_rep0_open(&r->sock)) != 0) {
        free(r);
        return err_set(ERR_NET, "net: cannot open a reply socket: %s", nng_strerror(rv));
    }
    if ((rv = nng_socket_set_size(r->sock, NNG_OPT_RECVMAXSZ, 64 << 10)) ||
        (rv = nng_aio_alloc(&r->aio, rep_cb, r)) || (rv = nng_listen(r->sock, url, NULL, 0))) {
        net_rep_destroy(r);
        return err_set(ERR_NET, "net: cannot serve requests on %s: %s", url, nng_strerror(rv));
    }
    nng_recv_aio(r->sock, r->aio);
    *out = r;
    return ERR_OK;
}

void net_rep_destroy(net_rep *r) {
    if (!r) return;
    if (r->aio) nng_aio_stop(r->aio); // waits for a callback in progress; later ones are refused
    nng_close(r->sock);
    if (r->aio) {
        if (r->sending) nng_msg_free(nng_aio_get_msg(r->aio));
        nng_aio_free(r->aio);
    }
    free(r);
}

int net_request(const char *addr, const void *req, size_t len, void **reply, size_t *rlen,
                int timeout_ms) {
    ASSERT(reply != NULL && rlen != NULL);
    *reply = NULL;
    *rlen = 0;
    if (timeout_ms <= 0) return err_set(ERR_INVAL, "net: request timeout must be > 0");
    if (len > NET_MAX_MSG) return err_set(ERR_INVAL, "net: request of %zu bytes too large", len);
    char host[HOST_MAX], url[HOST_MAX + 32];
    int port, rc, rv;
    if ((rc = net_parse_hostport(addr, host, sizeof host, &port))) return rc;
    make_url(url, sizeof url, host, port);
    nng_socket sock;
    if ((rv = nng_req0_open(&sock)) != 0)
        return err_set(ERR_NET, "net: cannot open a request socket: %s", nng_strerror(rv));
    nng_dialer d;
    nng_msg *msg = NULL;
    // A non-blocking dial is retried every RECONN_MIN_MS while nobody listens; the send and
    // receive timeouts bound the whole request.
    if ((rv = nng_socket_set_ms(sock, NNG_OPT_SENDTIMEO, timeout_ms)) ||
        (rv = nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, timeout_ms)) ||
        (rv = nng_socket_set_size(sock, NNG_OPT_RECVMAXSZ, (size_t)NET_MAX_MSG + 64)) ||
        (rv = nng_dialer_create(&d, sock, url)) ||
        (rv = nng_dialer_set_ms(d, NNG_OPT_RECONNMINT, RECONN_MIN_MS)) ||
        (rv = nng_dialer_set_ms(d, NNG_OPT_RECONNMAXT, RECONN_MIN_MS)) ||
        (rv = nng_dialer_start(d, NNG_FLAG_NONBLOCK)) || (rv = nng_msg_alloc(&msg, len))) {
        nng_close(sock);
        return err_set(ERR_NET, "net: request to %s: %s", url, nng_strerror(rv));
    }
    if (len) memcpy(nng_msg_body(msg), req, len);
    double t0 = now_ms();
    if ((rv = nng_sendmsg(sock, msg, 0)) != 0) {
        nng_msg_free(msg);
    } else {
        int left = timeout_ms - (int)(now_ms() - t0);
        nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, left > 1 ? left : 1);
        msg = NULL;
        if ((rv = nng_recvmsg(sock, &msg, 0)) == 0) {
            *rlen = nng_msg_len(msg);
            if (*rlen) {
                *reply = xmalloc(*rlen);
                memcpy(*reply, nng_msg_body(msg), *rlen);
            }
            nng_msg_free(msg);
        }
    }
    nng_close(sock);
    if (rv == NNG_ETIMEDOUT)
        return err_set(ERR_TIMEOUT, "net: no reply from %s within %d ms", url, timeout_ms);
    if (rv != 0) return err_set(ERR_NET, "net: request to %s: %s", url, nng_strerror(rv));
    return ERR_OK;
}
