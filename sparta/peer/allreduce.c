// allreduce.c: the ring all-reduce of allreduce.h. One call runs 2 (P-1) steps as two cursors over
// the same chunk list: a send cursor (what we owe rank+1) and a receive cursor (what rank-1 owes
// us). Send (u, c) for u >= 1 forwards what receive (u-1, c) brought, so it waits for it; at most
// `window` sends run ahead of the receives, which bounds what waits in rank+1's receive queue.
// Invariant: x is read, never written, until every step is done; w holds the partial sums and
// results and is copied to x only on success. Data path, one CRC pass per byte and side: a send
// is encoded into a message slot with its frame's CRC derived from its own (wire_encode_crc) and
// posted without a copy (peer_post_crc); slots stay ours until their frame is written, so a call
// may return with sends in flight. A receive is checked from the CRC the frame already verified
// (wire_decode_crc) and decoded straight into the sum (wire_values_add). Threads: one caller per
// context (the exchanger).
#include "sparta/peer/allreduce.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sparta/peer/agg.h"
#include "sparta/peer/wire.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"

// Messages one peer may have sent beyond what it received. In a ring, rank+1's queue can then
// hold up to about (P+1) * window messages of AR_MSG_BYTES, which must stay below the ring
// channel's receive queue (4096 messages, 512 MiB); a window of 16 also fills the link's send
// queue (16 frames), which keeps the stream busy while we add.
enum { WINDOW_MAX = 16, QUEUE_BUDGET = 240, RETRY_MS = 1, STASH_MAX = 256 };
// A waiting call looks this often whether a member's link went down (the member left: the ring
// cannot finish, and waiting out the timeout would only delay the caller's next try).
enum { LINK_POLL_MS = 100, STALL_MS = 500 };
// Message slots for sends in flight: more than the ring channel's send queue (16 frames) plus the
// frame being written, so that the queue, not the slots, holds the sender back.
enum { AR_SLOTS = 20 };
// ar_destroy waits this long at most for the sends still in flight.
enum { FLUSH_MS = 10000 };

// A ring message that arrived before the call it belongs to (a faster peer's first chunks of this
// tag during ar_agree, or of a later tag during a call), kept for that call.
typedef struct stashed {
    uint64_t tag;
    peer_msg *m; // from peer_recv
} stashed;

struct ar_ctx {
    peer_group *g; // borrowed
    int ch;        // the channel this context owns
    int rank, world, dtype, window;
    uint64_t run_id;
    size_t max_n;
    size_t chunk;       // values per message, a multiple of WIRE_INT8_BLOCK
    float *w;           // (max_n) partial sums, then results
    unsigned char *msg; // (FRAME_MAX_PAYLOAD) control messages (ar_agree)
    // Ring sends (peer_post): slot[(head + i) % AR_SLOTS] for i < n_flight are in flight as
    // op[...]; the next slot receives the next encoded message.
    unsigned char *slot[AR_SLOTS]; // (slot_bytes) each
    peer_op *op[AR_SLOTS];
    int head, n_flight;
    stashed stash[STASH_MAX];
    int n_stash;
    uint64_t newest;                         // the largest tag of a valid message seen (0: none)
    atomic_int cancel_all;                   // ar_cancel(AR_CANCEL_ALL) was called
    atomic_ullong cancel_tag;                // ar_cancel(tag): tag + 1 (0: none)
    unsigned char *heard, *got_view, *views; // ar_agree: (world), (world), (world x world)
    unsigned char *resend;                   // (world) scratch
    // The last agreement: its tag + 1 (0: none yet), the view V we sent and the members. A HERE
    // of that tag or an older one from a peer left out is answered with that VIEW (answer_late).
    uint64_t last_tag1;
    unsigned char *last_view, *last_in; // (world) each
    int left_out; // ar_agree: a VIEW of this tag without us came (we cannot be a member)
    float *flags; // (world) a VIEW's payload
    const unsigned char *except; // ar_agree_except: ranks whose messages are ignored (or NULL)
};

// next_message returns the oldest stashed message of tag, else waits up to wait_ms on the
// context's channel.
static int next_message(ar_ctx *c, uint64_t tag, int wait_ms, peer_msg **m) {
    for (int i = 0; i < c->n_stash; i++) {
        if (c->stash[i].tag != tag) continue;
        *m = c->stash[i].m;
        memmove(c->stash + i, c->stash + i + 1, (size_t)(--c->n_stash - i) * sizeof *c->stash);
        return ERR_OK;
    }
    return peer_recv(c->g, c->ch, wait_ms, m);
}

// stash keeps m (a valid ring message of a later tag) for its call; returns 0 when the stash is
// full (the caller drops m).
static int stash(ar_ctx *c, uint64_t tag, peer_msg *m) {
    if (c->n_stash >= STASH_MAX) return 0;
    c->stash[c->n_stash++] = (stashed){tag, m};
    return 1;
}

// stash_drop frees the stashed messages of tags below `below`: their calls are over.
static void stash_drop(ar_ctx *c, uint64_t below) {
    int k = 0;
    for (int i = 0; i < c->n_stash; i++) {
        if (c->stash[i].tag < below)
            peer_msg_free(c->g, c->stash[i].m);
        else
            c->stash[k++] = c->stash[i];
    }
    c->n_stash = k;
}

static void seen(ar_ctx *c, uint64_t tag) {
    if (tag > c->newest) c->newest = tag;
}

static int cancelled(ar_ctx *c, uint64_t tag) {
    return atomic_load(&c->cancel_all) || atomic_load(&c->cancel_tag) == tag + 1;
}

void ar_cancel(ar_ctx *c, uint64_t tag) {
    if (tag == AR_CANCEL_ALL)
        atomic_store(&c->cancel_all, 1);
    else
        atomic_store(&c->cancel_tag, tag + 1);
    peer_wake(c->g, c->ch);
}

uint64_t ar_newest_tag(const ar_ctx *c) { return c->newest; }

// data_kind: a message of a call (ring or all-gather), which may come before its call starts.
static int data_kind(uint32_t kind) {
    return kind == WIRE_RING_RS || kind == WIRE_RING_AG || kind == WIRE_GATHER;
}

// One call's schedule: segment bounds and the two cursors. Step u sends segment r-u and
// receives segment r-u-1 (mod P); steps u < P-1 are reduce-scatter, the rest all-gather.
typedef struct cursor {
    int u;    // step, 0 .. 2P-2 (2P-2 = done)
    size_t c; // chunk within the step's segment
} cursor;

typedef struct call {
    ar_ctx *ctx;
    const float *x;
    size_t n;
    uint64_t tag;
    const int *mem; // (np) ranks of the members in ring order; mem[pos] is this peer
    int pos, np;
    int steps; // 2 (np-1)
    cursor snd, rcv;
    uint64_t sent, recvd; // messages
    size_t pending;       // bytes of an encoded message not yet accepted by peer_post (0 = none)
    uint32_t pending_crc; // its CRC32C as a whole (the frame's)
    ar_stats st;
    unsigned char up[AR_MAX_WORLD]; // by position: linked when the call began (we are: 1)
} call;

static int mod(int a, int p) { return ((a % p) + p) % p; }

static size_t seg_lo(const call *k, int s) {
    return (size_t)((uint64_t)s * k->n / (uint64_t)k->np);
}

static size_t seg_chunks(const call *k, int s) {
    size_t len = seg_lo(k, s + 1) - seg_lo(k, s);
    return (len + k->ctx->chunk - 1) / k->ctx->chunk;
}

static int send_seg(const call *k, int u) { return mod(k->pos - u, k->np); }
static int recv_seg(const call *k, int u) { return mod(k->pos - u - 1, k->np); }
static int next_rank(const call *k) { return k->mem[mod(k->pos + 1, k->np)]; }
static int prev_rank(const call *k) { return k->mem[mod(k->pos - 1, k->np)]; }

// chunk_range gives the first index and the count of chunk c of segment s.
static void chunk_range(const call *k, int s, size_t c, size_t *lo, uint32_t *count) {
    size_t a = seg_lo(k, s) + c * k->ctx->chunk, end = seg_lo(k, s + 1);
    *lo = a;
    *count = (uint32_t)(end - a < k->ctx->chunk ? end - a : k->ctx->chunk);
}

// settle moves a cursor past empty segments and finished steps (bounded by the step count).
static void settle(const call *k, cursor *cur, int sending) {
    while (cur->u < k->steps &&
           cur->c >= seg_chunks(k, sending ? send_seg(k, cur->u) : recv_seg(k, cur->u))) {
        cur->u++;
        cur->c = 0;
    }
}

static void advance(const call *k, cursor *cur, int sending) {
    cur->c++;
    settle(k, cur, sending);
}

static int kind_of(const call *k, int u) { return u < k->np - 1 ? WIRE_RING_RS : WIRE_RING_AG; }

// ---- create / destroy -------------------------------------------------------------------------

int ar_create(ar_ctx **out, peer_group *g, int ch, int rank, int world, uint64_t run_id,
              size_t max_n, int dtype) {
    ASSERT(out != NULL);
    *out = NULL;
    if (!g) return err_set(ERR_INVAL, "allreduce: group is NULL");
    if (ch <= PEER_CH_SYS || ch >= PEER_NCH)
        return err_set(ERR_INVAL, "allreduce: bad channel %d", ch);
    if (world < 1 || world > AR_MAX_WORLD || rank < 0 || rank >= world)
        return err_set(ERR_INVAL, "allreduce: rank %d out of range for world %d", rank, world);
    if (dtype != WIRE_FP32 && dtype != WIRE_BF16 && dtype != WIRE_INT8)
        return err_set(ERR_INVAL, "allreduce: bad dtype %d (want fp32, bf16 or int8)", dtype);
    if (run_id == 0) return err_set(ERR_INVAL, "allreduce: run_id must be non-zero");
    if (max_n > UINT32_MAX)
        return err_set(ERR_INVAL, "allreduce: max_n %zu exceeds the wire's 32-bit k", max_n);
    ar_ctx *c = xcalloc(1, sizeof *c);
    c->g = g;
    c->ch = ch;
    c->rank = rank;
    c->world = world;
    c->dtype = dtype;
    c->run_id = run_id;
    c->max_n = max_n;
    c->chunk = wire_max_count(dtype, AR_MSG_BYTES) / WIRE_INT8_BLOCK * WIRE_INT8_BLOCK;
    c->heard = xcalloc((size_t)world, 1);
    c->got_view = xcalloc((size_t)world, 1);
    c->resend = xcalloc((size_t)world, 1);
    c->views = xcalloc((size_t)world * (size_t)world, 1);
    c->last_view = xcalloc((size_t)world, 1);
    c->last_in = xcalloc((size_t)world, 1);
    c->flags = xcalloc((size_t)world, sizeof(float));
    c->window = QUEUE_BUDGET / (world + 1);
    c->window = c->window < 1 ? 1 : c->window > WINDOW_MAX ? WINDOW_MAX : c->window;
    if (world > 1) { // touch every page now: first touches are slow, and ar_mean must not pay
        c->w = xmalloc((max_n ? max_n : 1) * sizeof *c->w);
        memset(c->w, 0, (max_n ? max_n : 1) * sizeof *c->w);
        c->msg = xmalloc(FRAME_MAX_PAYLOAD);
        memset(c->msg, 0, FRAME_MAX_PAYLOAD);
        size_t most = max_n < c->chunk ? max_n : c->chunk;
        size_t slot_bytes = WIRE_HEADER + wire_payload_size(dtype, (uint32_t)most);
        for (int i = 0; i < AR_SLOTS; i++) {
            c->slot[i] = xmalloc(slot_bytes);
            memset(c->slot[i], 0, slot_bytes);
        }
    }
    *out = c;
    return ERR_OK;
}

void ar_destroy(ar_ctx *c) {
    if (!c) return;
    for (int i = 0; i < c->n_stash; i++)
        peer_msg_free(c->g, c->stash[i].m);
    // The sends still in flight go out first (a ring's last forwards, which the others still
    // need to finish the call we finished: a peer that ends right after its last outer step
    // must not take them with it), for at most FLUSH_MS; the rest is cancelled.
    double end = sys_now_ms() + FLUSH_MS;
    while (c->n_flight > 0) {
        int left = (int)(end - sys_now_ms());
        if (left <= 0 || peer_op_wait(c->g, c->op[c->head], left) == ERR_TIMEOUT) break;
        c->op[c->head] = NULL;
        c->head = (c->head + 1) % AR_SLOTS;
        c->n_flight--;
    }
    for (; c->n_flight > 0; c->n_flight--, c->head = (c->head + 1) % AR_SLOTS)
        peer_op_cancel(c->g, c->op[c->head]);
    for (int i = 0; i < AR_SLOTS; i++)
        free(c->slot[i]);
    free(c->heard);
    free(c->got_view);
    free(c->resend);
    free(c->views);
    free(c->last_view);
    free(c->last_in);
    free(c->flags);
    free(c->w);
    free(c->msg);
    free(c);
}

// ---- one call ---------------------------------------------------------------------------------

// reclaim releases, oldest first, the sends whose frames have been written or lost with their
// link (a lost one shows as a missing message to rank+1: the deadline decides). It waits up to
// wait_ms for the oldest one. Returns the free slots.
static int reclaim(ar_ctx *c, int wait_ms) {
    while (c->n_flight > 0 && peer_op_wait(c->g, c->op[c->head], wait_ms) != ERR_TIMEOUT) {
        c->op[c->head] = NULL;
        c->head = (c->head + 1) % AR_SLOTS;
        c->n_flight--;
        wait_ms = 0;
    }
    return AR_SLOTS - c->n_flight;
}

static int next_slot(const ar_ctx *c) { return (c->head + c->n_flight) % AR_SLOTS; }

// encode_next encodes send (u, c) into the next slot. The owner's first all-gather send keeps the
// decoded values, so that it holds exactly what the other peers will store.
static void encode_next(call *k) {
    ar_ctx *c = k->ctx;
    int u = k->snd.u;
    size_t lo;
    uint32_t count;
    chunk_range(k, send_seg(k, u), k->snd.c, &lo, &count);
    // Step 0 sends our own values; later reduce-scatter steps forward partial sums and
    // all-gather steps forward results, both in w.
    const float *src = u == 0 ? k->x + lo : c->w + lo;
    wire_header h = {.dtype = (uint16_t)c->dtype,
                     .run_id = c->run_id,
                     .sender = (uint32_t)c->rank,
                     .kind = (uint32_t)kind_of(k, u),
                     .round = k->tag,
                     .k = (uint32_t)k->n,
                     .offset = (uint32_t)lo,
                     .count = count};
    unsigned char *m = c->slot[next_slot(c)];
    k->pending = wire_encode_crc(m, &h, src, &k->pending_crc);
    if (u == k->np - 1 && c->dtype != WIRE_FP32) wire_values(m, &h, c->w + lo);
}

static void answer_late(ar_ctx *c, int peer, const wire_header *h, ar_stats *st);

// take_message checks that m is receive (u, c) and applies it, or returns why it is dropped;
// *kept is set when m, a ring message of a later tag, was stashed for its call (ownership
// passed).
static const char *take_message(call *k, peer_msg *m, int *kept) {
    ar_ctx *c = k->ctx;
    int prev = prev_rank(k), u = k->rcv.u, peer = m->from;
    const void *msg = m->data;
    *kept = 0;
    wire_header h;
    if (wire_decode_crc(msg, m->len, m->crc, c->run_id, &h) != ERR_OK) return err_msg();
    if (h.sender != (uint32_t)peer) return "sender is not the link's member";
    seen(c, h.round);
    if (h.round > k->tag && data_kind(h.kind)) {
        *kept = stash(c, h.round, m);
        return *kept ? NULL : "stash full";
    }
    if (h.kind == WIRE_HERE) { // a late peer still agreeing: tell it that it was left out
        answer_late(c, peer, &h, &k->st);
        return "a HERE during the all-reduce";
    }
    if (h.round != k->tag) return "another tag";
    if (peer != prev) return "not from rank-1";
    size_t lo;
    uint32_t count;
    chunk_range(k, recv_seg(k, u), k->rcv.c, &lo, &count);
    if (h.sender != (uint32_t)prev || h.dtype != c->dtype || h.kind != (uint32_t)kind_of(k, u) ||
        h.k != k->n || h.offset != lo || h.count != count)
        return "not the expected chunk";
    float *w = c->w + lo;
    const float *x = k->x + lo;
    if (u < k->np - 2) // reduce-scatter: received partial sum + our values
        wire_values_add(msg, &h, x, 1.0f, w);
    else if (u == k->np - 2) // last reduce-scatter step: we own this segment
        wire_values_add(msg, &h, x, (float)k->np, w);
    else // all-gather: a result
        wire_values(msg, &h, w);
    return NULL;
}

// received accounts for a message that a call took and did not stash: its bytes, and when why is
// set, the drop (counted and logged). Frees m. Returns 1 if it was a good message.
static int received(ar_ctx *c, ar_stats *st, uint64_t tag, peer_msg *m, const char *why) {
    int peer = m->from;
    size_t len = m->len;
    st->bytes_recv += len;
    peer_msg_free(c->g, m);
    if (!why) return 1;
    st->msgs_dropped++;
    LOG_D("allreduce", "rank=%d tag=%llu dropped len=%zu from=%d why=%s", c->rank,
          (unsigned long long)tag, len, peer, why);
    return 0;
}

// member_left returns the rank of a member whose link was up when the call began and is down
// now, or -1. (A member not linked at the start may still come: the deadline decides.) With
// stalled = 0 only a neighbour we still need counts: the one before us while something is to be
// received, the one after us while something is to be sent. Another member may have finished
// the call and gone (a peer that ends after its last outer step), which costs us nothing; if it
// died half-way, the ring stalls, and once it has been stalled a while (stalled = 1) any member
// that left ends the call.
static int member_left(const call *k, int stalled) {
    int prev = mod(k->pos - 1, k->np), next = mod(k->pos + 1, k->np);
    for (int i = 0; i < k->np; i++) {
        if (!k->up[i] || peer_connected(k->ctx->g, k->mem[i])) continue;
        if (stalled || (i == prev && k->rcv.u < k->steps) || (i == next && k->snd.u < k->steps))
            return k->mem[i];
    }
    return -1;
}

// run_call performs the schedule; on ERR_OK every value of w[0, n) is final.
static int run_call(call *k, int timeout_ms) {
    ar_ctx *c = k->ctx;
    double deadline = sys_now_ms() + timeout_ms, poll = sys_now_ms() + LINK_POLL_MS;
    for (int i = 0; i < k->np; i++)
        k->up[i] = i != k->pos && peer_connected(c->g, k->mem[i]);
    settle(k, &k->snd, 1);
    settle(k, &k->rcv, 0);
    // Each pass either makes progress (a send or an expected receive, finitely many) or waits
    // at least until a message arrives or RETRY_MS passes; the deadline ends every wait.
    // No deadlock: a peer that cannot send has sent at least as many messages as it received,
    // and more (a full window, or its own step-0 chunks ahead of any forward) if its segment is
    // non-empty. If all peers waited on empty queues, each would have received all its
    // predecessor sent, so the totals around the ring would be equal: impossible for n >= 1.
    while (k->snd.u < k->steps || k->rcv.u < k->steps) {
        if (cancelled(c, k->tag))
            return err_set(ERR_CLOSED, "allreduce: rank %d tag %llu cancelled", c->rank,
                           (unsigned long long)k->tag);
        int can_send = k->snd.u < k->steps &&
                       (k->sent < k->recvd + (uint64_t)c->window || k->rcv.u >= k->steps);
        if (can_send && k->snd.u > 0) { // forwarding: receive (u-1, c) must be in
            int du = k->snd.u - 1;
            can_send = k->rcv.u > du || (k->rcv.u == du && k->rcv.c > k->snd.c);
        }
        int retry = 0;
        if (can_send && !k->pending && reclaim(c, 0) == 0) { // every slot still in flight
            can_send = 0;
            retry = 1;
        }
        if (can_send) {
            if (!k->pending) encode_next(k);
            int slot = next_slot(c);
            peer_op *op;
            int rc = peer_post_crc(c->g, next_rank(k), c->ch, c->slot[slot], k->pending,
                                   k->pending_crc, &op);
            if (rc == ERR_OK) {
                c->op[slot] = op;
                c->n_flight++;
                k->st.bytes_sent += k->pending;
                k->pending = 0;
                k->sent++;
                advance(k, &k->snd, 1);
                deadline = sys_now_ms() + timeout_ms;
                continue;
            }
            if (rc != ERR_PEER) return rc; // closed or broken
            retry = 1;                     // rank+1 not connected (yet) or its queue is full
        }
        double left = deadline - sys_now_ms();
        if (left <= 0)
            return err_set(ERR_TIMEOUT,
                           "allreduce: rank %d tag %llu: nothing from rank %d / to rank %d "
                           "for %d ms (step %d of %d)",
                           c->rank, (unsigned long long)k->tag, prev_rank(k), next_rank(k),
                           timeout_ms, k->rcv.u, k->steps);
        if (sys_now_ms() >= poll) {
            // no progress for STALL_MS (the deadline moves on with every message)
            int stalled = deadline - timeout_ms < sys_now_ms() - STALL_MS;
            int gone = member_left(k, stalled);
            if (gone >= 0)
                return err_set(ERR_PEER,
                               "allreduce: rank %d tag %llu: member %d left (step %d of %d)",
                               c->rank, (unsigned long long)k->tag, gone, k->rcv.u, k->steps);
            poll = sys_now_ms() + LINK_POLL_MS;
        }
        int wait = retry ? RETRY_MS : (int)(left < LINK_POLL_MS ? left : LINK_POLL_MS) + 1;
        if (k->rcv.u >= k->steps) { // only a send is left, and it was refused
            if (c->n_flight > 0) {  // the queue is full of ours: wait for the oldest to go out
                reclaim(c, RETRY_MS);
                continue;
            }
            struct timespec ts = {0, RETRY_MS * 1000000L};
            nanosleep(&ts, NULL);
            continue;
        }
        peer_msg *m;
        int rc = next_message(c, k->tag, wait, &m);
        if (rc == ERR_TIMEOUT) continue; // also peer_wake: the deadline decides
        if (rc != ERR_OK) return rc;
        int kept;
        const char *why = take_message(k, m, &kept);
        if (kept) continue; // a later call's: counted when that call takes it
        if (!received(c, &k->st, k->tag, m, why)) continue;
        k->recvd++;
        advance(k, &k->rcv, 0);
        deadline = sys_now_ms() + timeout_ms;
    }
    return ERR_OK;
}

int ar_mean(ar_ctx *c, float *x, size_t n, uint64_t tag, int timeout_ms, ar_stats *st) {
    ASSERT(c != NULL);
    int all[AR_MAX_WORLD];
    for (int i = 0; i < c->world && i < AR_MAX_WORLD; i++)
        all[i] = i;
    if (c->world > AR_MAX_WORLD)
        return err_set(ERR_INVAL, "allreduce: world %d > %d", c->world, AR_MAX_WORLD);
    return ar_mean_group(c, x, n, tag, all, c->world, timeout_ms, st);
}

// check_call checks the arguments of a call over members(nm) and sets *pos, this peer's place.
static int check_call(const ar_ctx *c, const float *x, size_t n, const int *members, int nm,
                      int timeout_ms, int *pos) {
    if (n > c->max_n) return err_set(ERR_INVAL, "allreduce: n %zu exceeds max_n %zu", n, c->max_n);
    if (n > 0 && !x) return err_set(ERR_INVAL, "allreduce: x is NULL");
    if (timeout_ms <= 0)
        return err_set(ERR_INVAL, "allreduce: timeout_ms must be > 0 (got %d)", timeout_ms);
    *pos = -1;
    for (int i = 0; i < nm; i++) {
        if (members[i] < 0 || members[i] >= c->world || (i > 0 && members[i] <= members[i - 1]))
            return err_set(ERR_INVAL, "allreduce: members must be ascending ranks < %d", c->world);
        if (members[i] == c->rank) *pos = i;
    }
    if (*pos < 0) return err_set(ERR_INVAL, "allreduce: rank %d is not among the members", c->rank);
    return ERR_OK;
}

int ar_mean_group(ar_ctx *c, float *x, size_t n, uint64_t tag, const int *members, int nm,
                  int timeout_ms, ar_stats *st) {
    ASSERT(c != NULL);
    double t0 = sys_now_ms();
    if (st) *st = (ar_stats){0};
    int pos, rc = check_call(c, x, n, members, nm, timeout_ms, &pos);
    if (rc) return rc;
    if (nm == 1 || n == 0) {
        stash_drop(c, tag + 1);
        return ERR_OK;
    }
    call k = {.ctx = c,
              .x = x,
              .n = n,
              .tag = tag,
              .mem = members,
              .pos = pos,
              .np = nm,
              .steps = 2 * (nm - 1)};
    rc = run_call(&k, timeout_ms);
    stash_drop(c, tag + 1); // this call's leftovers belong to nobody now
    if (rc == ERR_OK) memcpy(x, c->w, n * sizeof *x);
    k.st.ms = sys_now_ms() - t0;
    if (st) *st = k.st;
    LOG_D("allreduce", "rank=%d tag=%llu n=%zu rc=%s sent=%llu recv=%llu dropped=%llu ms=%.1f",
          c->rank, (unsigned long long)tag, n, err_str(rc), (unsigned long long)k.st.bytes_sent,
          (unsigned long long)k.st.bytes_recv, (unsigned long long)k.st.msgs_dropped, k.st.ms);
    return rc;
}

// ---- membership -------------------------------------------------------------------------------

// send_control sends HERE (no values) or VIEW (view(world) as 0/1 flags) for tag to every other
// peer p with to[p] set; a peer that is not connected simply does not get it.
static void send_control(ar_ctx *c, int kind, uint64_t tag, const unsigned char *view,
                         const unsigned char *to, ar_stats *st) {
    for (int i = 0; i < c->world && view; i++)
        c->flags[i] = view[i] ? 1.0f : 0.0f;
    wire_header h = {.dtype = WIRE_FP32,
                     .run_id = c->run_id,
                     .sender = (uint32_t)c->rank,
                     .kind = (uint32_t)kind,
                     .round = tag,
                     .k = (uint32_t)c->world,
                     .offset = 0,
                     .count = view ? (uint32_t)c->world : 0};
    size_t len = wire_encode(c->msg, &h, c->flags);
    for (int p = 0; p < c->world; p++)
        if (p != c->rank && to[p] && peer_send(c->g, p, c->ch, c->msg, len) == ERR_OK)
            st->bytes_sent += len;
}

// answer_late answers a HERE (header h) from peer: if h is of our last agreement's tag or an
// older one and the peer was not among that agreement's members, it gets the VIEW we sent then.
// Of that tag, the VIEW leaves it out (it takes the others' state); of a later tag than its own,
// it tells it that it is late. Without this a peer that came up just after the others agreed
// would wait diloco.timeout_ms for answers nobody sends. Only HEREs are answered (never
// VIEWs), so two peers cannot answer each other forever.
static void answer_late(ar_ctx *c, int peer, const wire_header *h, ar_stats *st) {
    if (!c->last_tag1 || h->round >= c->last_tag1 || c->last_in[peer]) return;
    memset(c->resend, 0, (size_t)c->world);
    c->resend[peer] = 1;
    send_control(c, WIRE_VIEW, c->last_tag1 - 1, c->last_view, c->resend, st);
}

// agree_take files one message received during ar_agree: HERE and VIEW of this tag are recorded,
// ring messages of this tag are stashed, anything of a later tag sets *ahead. Returns 1 if msg
// was stashed (ownership passed), else 0 (the caller frees it).
static int agree_take(ar_ctx *c, uint64_t tag, peer_msg *m, int *ahead, ar_stats *st) {
    int peer = m->from;
    const void *msg = m->data;
    size_t len = m->len;
    wire_header h;
    if (c->except && c->except[peer]) { // left out: not even a later tag of its counts
        st->msgs_dropped++;
        return 0;
    }
    if (wire_decode(msg, len, c->run_id, &h) != ERR_OK || h.sender != (uint32_t)peer ||
        h.round < tag) {
        if (h.sender == (uint32_t)peer && h.kind == WIRE_HERE) answer_late(c, peer, &h, st);
        st->msgs_dropped++;
        return 0;
    }
    seen(c, h.round);
    if (h.round > tag) {
        *ahead = 1;
        return 0;
    }
    if (h.kind == WIRE_HERE && h.k == (uint32_t)c->world) {
        c->heard[peer] = 1;
    } else if (h.kind == WIRE_VIEW && h.k == (uint32_t)c->world && h.count == h.k) {
        wire_values(msg, &h, c->flags);
        // A VIEW without its sender says that the sender was left out (mark_out): it takes
        // nobody else out, and it is no evidence against us.
        int out = c->flags[peer] == 0.0f;
        for (int i = 0; i < c->world; i++)
            c->views[(size_t)peer * (size_t)c->world + (size_t)i] =
                out ? i != peer : c->flags[i] != 0.0f;
        c->got_view[peer] = 1;
        c->heard[peer] = 1;
        // the members are in every member's VIEW: one without us (from a peer we now heard)
        // settles that we are out
        if (!out && c->flags[c->rank] == 0.0f) c->left_out = 1;
    } else if (data_kind(h.kind) && stash(c, tag, m)) {
        return 1;
    } else {
        st->msgs_dropped++;
    }
    return 0;
}

// mark_out makes view the VIEW of a peer that knows it is left out: everyone but itself, which
// the others' intersection reads as "not me" and nothing more. (Its real view could leave out
// peers it had not heard yet, which would then wrongly count themselves out.)
static void mark_out(ar_ctx *c, unsigned char *view) {
    memset(view, 1, (size_t)c->world);
    view[c->rank] = 0;
}

// agree_round sends kind (with view for VIEW) to every peer, then receives until have[p] holds
// for every peer p != rank with need[p] that the group's view has a live link to, or the deadline
// passes. Every RESEND_MS the message goes
// again to the peers still missing (HERE: to every peer): a pipe may come up late (a restarted
// peer), and a repeated HERE or VIEW means the same. Returns ERR_OK (either way) or ERR_CLOSED.
static int agree_round(ar_ctx *c, uint64_t tag, int kind, const unsigned char *view,
                       const unsigned char *need, const unsigned char *have, double deadline,
                       int *ahead, ar_stats *st) {
    enum { RESEND_MS = 50 };
    send_control(c, kind, tag, view, need, st);
    double resend = sys_now_ms() + RESEND_MS;
    for (;;) {
        int missing = 0;
        for (int p = 0; p < c->world; p++) // the view decides who can still answer
            missing += p != c->rank && need[p] && !have[p] && peer_connected(c->g, p);
        double now = sys_now_ms(), left = deadline - now;
        // ahead or left out: the others decided without us; waiting longer changes nothing
        if (!missing || left <= 0 || *ahead || c->left_out) return ERR_OK;
        if (now >= resend) {
            // HEREs go to everyone again: a peer we heard may not have heard us yet.
            for (int p = 0; p < c->world; p++)
                c->resend[p] = need[p] && (kind == WIRE_HERE || !have[p]);
            send_control(c, kind, tag, view, c->resend, st);
            resend = now + RESEND_MS;
        }
        int wait = (int)(resend - now) + 1;
        peer_msg *m;
        int rc = peer_recv(c->g, c->ch, wait < left ? wait : (int)left + 1, &m);
        if (rc == ERR_TIMEOUT) continue;
        if (rc != ERR_OK) return rc;
        st->bytes_recv += m->len;
        if (!agree_take(c, tag, m, ahead, st)) peer_msg_free(c->g, m);
    }
}

int ar_agree(ar_ctx *c, uint64_t tag, int timeout_ms, int *members, int *nm, int *ahead,
             ar_stats *st) {
    return ar_agree_except(c, tag, timeout_ms, NULL, members, nm, ahead, st);
}

int ar_agree_except(ar_ctx *c, uint64_t tag, int timeout_ms, const unsigned char *except,
                    int *members, int *nm, int *ahead, ar_stats *st) {
    ASSERT(c != NULL && members != NULL && nm != NULL && ahead != NULL);
    ar_stats local = {0};
    if (!st) st = &local;
    *st = (ar_stats){0};
    *ahead = 0;
    *nm = 0;
    if (timeout_ms <= 0)
        return err_set(ERR_INVAL, "allreduce: timeout_ms must be > 0 (got %d)", timeout_ms);
    double t0 = sys_now_ms();
    if (c->world == 1) {
        members[0] = 0;
        *nm = 1;
        return ERR_OK;
    }
    stash_drop(c, tag); // this tag's early ring messages and later ones stay
    int W = c->world;
    memset(c->heard, 0, (size_t)W);
    memset(c->got_view, 0, (size_t)W);
    c->left_out = 0;
    unsigned char *all = c->views + (size_t)c->rank * (size_t)W; // our own row: scratch "need"
    memset(all, 1, (size_t)W);
    for (int p = 0; p < W && except; p++) // not waited for, and never heard
        all[p] = p == c->rank || !except[p];
    c->except = except;
    c->heard[c->rank] = 1;
    // 1. who is here
    int rc = agree_round(c, tag, WIRE_HERE, NULL, all, c->heard, t0 + timeout_ms, ahead, st);
    // 2. what each of us saw: our row of views becomes our view V. It goes to every peer (a late
    // one learns it is out), and we wait for the VIEWs of V's members (left out: no wait; a peer
    // that heard us still gets our VIEW).
    if (!rc && !*ahead) {
        memcpy(all, c->heard, (size_t)W);
        int out = c->left_out;
        if (out) mark_out(c, all);
        memset(c->resend, 1, (size_t)W);
        send_control(c, WIRE_VIEW, tag, all, c->resend, st);
        rc = agree_round(c, tag, WIRE_VIEW, all, all, c->got_view, sys_now_ms() + timeout_ms, ahead,
                         st);
        if (!rc && c->left_out && !out) { // out meanwhile: take back what our VIEW said
            mark_out(c, all);
            send_control(c, WIRE_VIEW, tag, all, c->resend, st);
        }
    }
    if (!rc) {
        unsigned char *own = all;
        for (int i = 0; i < W; i++) {
            int in = own[i] && (i == c->rank || c->got_view[i]);
            for (int j = 0; j < W && in; j++)
                if (j != c->rank && own[j] && c->got_view[j] && !c->views[(size_t)j * W + i])
                    in = 0;
            if (in) members[(*nm)++] = i;
        }
        int self = 0;
        for (int i = 0; i < *nm; i++)
            self |= members[i] == c->rank;
        if (!self) *nm = 0;
        if (!*ahead && *nm > 0) { // what answer_late tells a peer that comes later
            memcpy(c->last_view, own, (size_t)W);
            memset(c->last_in, 0, (size_t)W);
            for (int i = 0; i < *nm; i++)
                c->last_in[members[i]] = 1;
            c->last_tag1 = tag + 1;
        }
    }
    c->except = NULL;
    st->ms = sys_now_ms() - t0;
    LOG_D("allreduce", "rank=%d tag=%llu agreed on %d members ahead=%d ms=%.1f", c->rank,
          (unsigned long long)tag, *nm, *ahead, st->ms);
    return rc;
}

// ---- all-gather -------------------------------------------------------------------------------
// Every member sends its x to every other member, chunk by chunk (the ring's chunk size), and
// stores what each member sent. Flow control per pair: chunk j goes to member i only once chunk
// j - window of i's has come, so at most `window` chunks of each member wait anywhere (its call
// may start before ours: they wait in the stash); every pair sends the same number of chunks,
// so no pair can wait on the other forever. A chunk's bytes do not depend on its destination:
// it is encoded once (kept in msg until another chunk or a control message takes msg).

typedef struct gather {
    ar_ctx *ctx;
    const float *own; // what we send (rows[pos] when given: our values as the others decode them)
    size_t n, nch;    // values, chunks
    uint64_t tag;
    const int *mem;
    int pos, np, window;
    float *const *rows;          // by position, or NULL (check only: decoded into ctx->w)
    unsigned char *bad;          // by position: a chunk held a non-finite value
    int64_t encoded;             // the chunk whose message is in ctx->msg (-1: none)
    size_t encoded_len;          // its length
    uint32_t sent[AR_MAX_WORLD]; // chunks sent to / received from each position
    uint32_t recvd[AR_MAX_WORLD];
    unsigned char up[AR_MAX_WORLD]; // linked when the call began
    ar_stats st;
} gather;

static void gather_chunk(const gather *k, size_t j, size_t *lo, uint32_t *count) {
    *lo = j * k->ctx->chunk;
    *count = (uint32_t)(k->n - *lo < k->ctx->chunk ? k->n - *lo : k->ctx->chunk);
}

static void gather_header(const gather *k, size_t j, wire_header *h) {
    const ar_ctx *c = k->ctx;
    size_t lo;
    uint32_t count;
    gather_chunk(k, j, &lo, &count);
    *h = (wire_header){.dtype = (uint16_t)c->dtype,
                       .run_id = c->run_id,
                       .sender = (uint32_t)c->rank,
                       .kind = WIRE_GATHER,
                       .round = k->tag,
                       .k = (uint32_t)k->n,
                       .offset = (uint32_t)lo,
                       .count = count};
}

static size_t gather_encode(gather *k, size_t j) {
    if (k->encoded == (int64_t)j) return k->encoded_len;
    wire_header h;
    gather_header(k, j, &h);
    k->encoded = (int64_t)j;
    k->encoded_len = wire_encode(k->ctx->msg, &h, k->own + h.offset);
    return k->encoded_len;
}

// gather_take checks that m is the next chunk of a member and stores it, or returns why it is
// dropped; *kept: m, a message of a later call, was stashed (ownership passed).
static const char *gather_take(gather *k, peer_msg *m, int *kept) {
    ar_ctx *c = k->ctx;
    *kept = 0;
    wire_header h;
    if (wire_decode_crc(m->data, m->len, m->crc, c->run_id, &h) != ERR_OK) return err_msg();
    if (h.sender != (uint32_t)m->from) return "sender is not the link's member";
    seen(c, h.round);
    if (h.round > k->tag && data_kind(h.kind)) {
        *kept = stash(c, h.round, m);
        return *kept ? NULL : "stash full";
    }
    if (h.kind == WIRE_HERE) {
        answer_late(c, m->from, &h, &k->st);
        k->encoded = -1; // the answer took msg
        return "a HERE during the all-gather";
    }
    if (h.round != k->tag) return "another tag";
    if (h.kind != WIRE_GATHER) return "not an all-gather message";
    int i = 0;
    while (i < k->np && k->mem[i] != m->from)
        i++;
    if (i == k->np || i == k->pos) return "not from a member";
    size_t lo;
    uint32_t count;
    if (k->recvd[i] >= k->nch) return "more chunks than the values";
    gather_chunk(k, k->recvd[i], &lo, &count);
    if (h.dtype != c->dtype || h.k != k->n || h.offset != lo || h.count != count)
        return "not the expected chunk";
    float *dst = (k->rows ? k->rows[i] : c->w) + lo;
    wire_values(m->data, &h, dst);
    if (!k->bad[i] && !agg_finite(dst, count)) k->bad[i] = 1;
    k->recvd[i]++;
    return NULL;
}

// gather_send sends each member the chunks its window allows. Returns ERR_OK (*progress: some
// went out; *blocked: a queue was full or a member not linked yet) or the peer layer's error.
static int gather_send(gather *k, int *progress, int *blocked) {
    ar_ctx *c = k->ctx;
    for (int i = 0; i < k->np; i++) {
        while (i != k->pos && k->sent[i] < k->nch && k->sent[i] < k->recvd[i] + k->window) {
            size_t len = gather_encode(k, k->sent[i]);
            int rc = peer_send(c->g, k->mem[i], c->ch, c->msg, len);
            if (rc == ERR_PEER) {
                *blocked = 1;
                break;
            }
            if (rc != ERR_OK) return rc;
            k->sent[i]++;
            k->st.bytes_sent += len;
            *progress = 1;
        }
    }
    return ERR_OK;
}

static int gather_done(const gather *k) {
    for (int i = 0; i < k->np; i++)
        if (i != k->pos && (k->sent[i] < k->nch || k->recvd[i] < k->nch)) return 0;
    return 1;
}

// run_gather sends and receives until every member's chunks are in and ours are out.
static int run_gather(gather *k, int timeout_ms) {
    ar_ctx *c = k->ctx;
    double deadline = sys_now_ms() + timeout_ms, poll = sys_now_ms() + LINK_POLL_MS;
    for (int i = 0; i < k->np; i++)
        k->up[i] = i != k->pos && peer_connected(c->g, k->mem[i]);
    for (;;) {
        if (cancelled(c, k->tag))
            return err_set(ERR_CLOSED, "allgather: rank %d tag %llu cancelled", c->rank,
                           (unsigned long long)k->tag);
        int progress = 0, blocked = 0;
        int rc = gather_send(k, &progress, &blocked);
        if (rc) return rc;
        if (gather_done(k)) return ERR_OK;
        if (progress) deadline = sys_now_ms() + timeout_ms;
        double now = sys_now_ms(), left = deadline - now;
        if (left <= 0)
            return err_set(ERR_TIMEOUT, "allgather: rank %d tag %llu: no progress for %d ms",
                           c->rank, (unsigned long long)k->tag, timeout_ms);
        if (now >= poll) {
            for (int i = 0; i < k->np; i++)
                if (k->up[i] && !peer_connected(c->g, k->mem[i]))
                    return err_set(ERR_PEER, "allgather: rank %d tag %llu: member %d left", c->rank,
                                   (unsigned long long)k->tag, k->mem[i]);
            poll = now + LINK_POLL_MS;
        }
        int wait = blocked ? RETRY_MS : (int)(left < LINK_POLL_MS ? left : LINK_POLL_MS) + 1;
        peer_msg *m;
        rc = next_message(c, k->tag, wait, &m);
        if (rc == ERR_TIMEOUT) continue; // also peer_wake: the deadline decides
        if (rc != ERR_OK) return rc;
        int kept;
        const char *why = gather_take(k, m, &kept);
        if (!kept && received(c, &k->st, k->tag, m, why)) deadline = sys_now_ms() + timeout_ms;
    }
}

int ar_gather_group(ar_ctx *c, const float *x, size_t n, uint64_t tag, const int *members, int nm,
                    int timeout_ms, float *const *rows, unsigned char *bad, ar_stats *st) {
    ASSERT(c != NULL && bad != NULL);
    double t0 = sys_now_ms();
    if (st) *st = (ar_stats){0};
    int pos, rc = check_call(c, x, n, members, nm, timeout_ms, &pos);
    if (rc) return rc;
    memset(bad, 0, (size_t)nm);
    gather g = {.ctx = c,
                .own = x,
                .n = n,
                .nch = (n + c->chunk - 1) / c->chunk,
                .tag = tag,
                .mem = members,
                .pos = pos,
                .np = nm,
                .rows = rows,
                .bad = bad,
                .encoded = -1},
           *k = &g;
    // Our row: our values as the others decode them (the wire dtype's rounding), so that every
    // member aggregates the same numbers.
    float *mine = rows ? rows[pos] : NULL;
    if (mine && (c->dtype == WIRE_FP32 || nm == 1)) {
        if (mine != x) memcpy(mine, x, n * sizeof *x);
    } else if (mine) {
        for (size_t j = 0; j < k->nch; j++) {
            wire_header h;
            gather_header(k, j, &h);
            gather_encode(k, j);
            wire_values(c->msg, &h, mine + h.offset);
        }
        k->encoded = -1;
    }
    if (mine) k->own = mine;
    int w = STASH_MAX / (2 * (nm > 1 ? nm - 1 : 1));
    k->window = w < 1 ? 1 : w > WINDOW_MAX ? WINDOW_MAX : w;
    rc = nm == 1 || n == 0 ? ERR_OK : run_gather(k, timeout_ms);
    stash_drop(c, tag + 1);
    k->st.ms = sys_now_ms() - t0;
    if (st) *st = k->st;
    LOG_D("allreduce", "rank=%d tag=%llu gather n=%zu of %d rc=%s sent=%llu recv=%llu ms=%.1f",
          c->rank, (unsigned long long)tag, n, nm, err_str(rc),
          (unsigned long long)k->st.bytes_sent, (unsigned long long)k->st.bytes_recv, k->st.ms);
    return rc;
}
