// sparta.c: SPARTA sparse parameter averaging (EXO, "SPARTA", sec. 3) with bounded staleness.
// Round r = step (every sparta.every steps); I_r = select_indices(seed, r); k = round(p*N).
//   m_r = (sum over present peers q, in rank order, of x_r^q[I_r]) / |present|
//   overwrite: x[I_r] <- m_r              correct: x[I_r] <- x[I_r] + (m_r - x_r[I_r])
// With sparta.aggregate = trimmed_mean or median, m_r is that rule per coordinate over the
// present peers' values instead (agg.h: sorted, so the same on every peer that has the same
// values; a peer that sends outliers moves it at most to the honest values' range). A message
// with a value that is not finite leaves its sender out of that round (whatever the rule: such a
// value is never averaged), is counted, and is an offence (peer_offence: the sender is expelled at
// net.max_offences); our own values are checked the same way.
// applied at the first step boundary where round r is complete (the values of every member the
// peer group's view has a live link to are in: a dead peer is not waited for, nor one whose link
// came up after the start until its first values arrive), and at the latest
// at step r + max_stale with the peers whose values arrived (none but our own: the round is
// dropped). sparta.reduce = ring replaces the all-to-all exchange by the peer layer's ring
// all-reduce (allreduce.h) among the linked members, one round after the other on the exchanger
// thread; a ring round is whole or dropped (given up at its deadline).
//
// Threads: the trainer thread gathers, posts and applies (the only writer of parameters); the
// exchanger thread sends posted rounds and files received values into the round's slot. They
// share the slot table under one mutex. A slot cycles FREE/DONE -> OPEN (values arriving, ours
// posted or not yet) -> CLOSING (the trainer reads it; the exchanger keeps off) -> DONE.
#include "sparta/sparta.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/agg.h"
#include "sparta/peer/allreduce.h"
#include "sparta/peer/peer.h"
#include "sparta/peer/wire.h"
#include "sparta/select.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/rng.h"
#include "train/base/sys.h"

// Bump when select.c or the averaging changes what peers compute from the same inputs.
#define SPARTA_SELECT_VERSION 0x53454c0000000001ull

enum { S_FREE = 0, S_OPEN, S_CLOSING, S_DONE };

typedef struct {
    int64_t round; // -1 when never used
    int state;
    int posted;              // the trainer has gathered our values
    int sending;             // the exchanger has taken them to send
    int sent;                // the exchanger has sent them
    size_t count;            // values in this round
    uint32_t *got;           // [world] values received per peer (ours = count once posted)
    int ring_np;             // ring: peers of the completed all-reduce (0: not completed)
    int ring_failed;         // ring: the all-reduce failed or was given up
    unsigned char *rejected; // [world] the peer's values of this round held a non-finite value
    unsigned char *from;     // [world] the round waits for the peer's values (gossip: the F that
                             // send to us; all-to-all: every peer)
    float *vals;             // [world][kmax] values per peer (+ the mean's row for ring)
    uint32_t *idx;           // [kmax] the round's indices (set when our values are gathered)
    int64_t post_step;       // this peer's step when our values were posted (staleness is counted
                             // in our own steps, so a catch-up jump of the round counter is not)
    double t_post;           // when our values were posted (ms, monotonic)
    double t_done;           // when the last peer's values arrived
} slot;

struct sparta_exchanger {
    cfg_sparta sc;
    int rank, world, selector, dtype, correct, ring;
    int fanout; // sparta.fanout: gossip with F peers per round (0: all-to-all)
    uint64_t seed, run_id;
    size_t n, kmax;
    peer_group *g;       // borrowed: SPARTA owns its channel (PEER_CH_SPARTA)
    ar_ctx *ar;          // ring mode: the all-reduce on that channel (exchanger thread)
    unsigned char *live; // [world] the view has a live link to the peer (ours: 1), under mu
    unsigned char *wait; // [world] rounds wait for the peer: linked when the exchanger started,
                         // or its values arrived since its link came up (a peer that joins or
                         // restarts is behind until it catches up), under mu
    pthread_t thread;
    int thread_started;
    atomic_int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv; // (CLOCK_MONOTONIC) a round completed or was sent
    int nslots;
    slot *slots;
    int64_t last_posted; // newest round posted by the trainer
    int64_t max_seen;    // newest round seen in a valid message from any peer
    int64_t offset;      // round = step + offset (0 unless this peer joined a running group)
    long catch_ups;      // catch_up jumps so far, and when the last was logged (trainer thread)
    double catch_up_logged_ms;
    int64_t *peer_last; // [world] round of the last valid message from each peer (-1: none)
    // trainer scratch
    float *mean;
    int *present;
    const float **rows; // [world] the present peers' rows of a round

    // exchanger scratch
    uint8_t *sendbuf;
    // counters (under mu)
    uint64_t rounds_done, rounds_late, rounds_dropped, msgs_dropped, n_applied, n_lat;
    uint64_t msgs_filed; // valid values filed from peers
    uint64_t nonfinite;  // messages (and ring rounds) rejected for a non-finite value
    int round_peers;     // peers averaged in the last round applied (trainer thread)
    double stale_sum, stale_max, lat_sum;
};

static size_t round_count(const sparta_exchanger *ex, int64_t round) {
    return select_count(ex->selector, ex->seed, (uint64_t)round, ex->n, ex->kmax);
}

static float *peer_vals(const sparta_exchanger *ex, slot *s, int peer) {
    return s->vals + (size_t)peer * ex->kmax;
}

// slot_reset claims s for round (caller holds mu).
static void slot_reset(const sparta_exchanger *ex, slot *s, int64_t round) {
    s->round = round;
    s->state = S_OPEN;
    s->posted = s->sending = s->sent = 0;
    s->count = round_count(ex, round);
    memset(s->got, 0, (size_t)ex->world * sizeof(uint32_t));
    memset(s->rejected, 0, (size_t)ex->world);
    s->ring_np = s->ring_failed = 0;
    s->t_post = s->t_done = 0;
    if (ex->fanout > 0) { // gossip: the senders of this round are rank - d (select_partners)
        int d[AR_MAX_WORLD];
        memset(s->from, 0, (size_t)ex->world);
        int f = select_partners(ex->seed, (uint64_t)round, ex->world, ex->fanout, d);
        for (int j = 0; j < f; j++)
            s->from[(ex->rank - d[j] + ex->world) % ex->world] = 1;
        s->from[ex->rank] = 1;
    } else {
        memset(s->from, 1, (size_t)ex->world);
    }
}

// ring_mean: the row of a slot where the ring all-reduce leaves the round's mean.
static float *ring_mean(const sparta_exchanger *ex, slot *s) {
    return s->vals + (size_t)ex->world * ex->kmax;
}

// slot_complete: the values of every peer the rounds wait for (ours included) are in, or were
// rejected; ring: the all-reduce completed. Caller holds mu.
static int slot_complete(const sparta_exchanger *ex, const slot *s) {
    if (ex->ring) return s->ring_np > 0;
    for (int p = 0; p < ex->world; p++)
        if (ex->live[p] && ex->wait[p] && s->from[p] && !s->rejected[p] && s->got[p] != s->count)
            return 0;
    return 1;
}

// refresh_live copies the view's links into live; a peer whose link is down is no longer waited
// for (caller holds mu).
static void refresh_live(sparta_exchanger *ex) {
    for (int p = 0; p < ex->world; p++) {
        ex->live[p] = p == ex->rank || peer_connected(ex->g, p);
        if (!ex->live[p]) ex->wait[p] = 0;
    }
}

// slot_of returns the slot of round r (rounds are multiples of every).
static slot *slot_of(sparta_exchanger *ex, int64_t r) {
    return &ex->slots[(r / ex->sc.every) % ex->nslots];
}

// slot_ready: every peer's values are in and ours are on their way, so the slot may be closed
// (closing it earlier could let the slot be reused before the exchanger sent our values).
static int slot_ready(const sparta_exchanger *ex, const slot *s) {
    return s->sent && slot_complete(ex, s);
}

// ---- exchanger thread ------------------------------------------------------------------------

// send_values sends vals[0 .. n) (values lo .. lo+n of round s) to peer as messages of one kind,
// split to fit one frame. A down peer is counted by the peer layer and the values are lost: the
// round then completes late or not at all, which the deadline handles.
static void send_values(sparta_exchanger *ex, int peer, uint32_t kind, const slot *s, size_t lo,
                        size_t n, const float *vals) {
    uint32_t per_msg = wire_max_count(ex->dtype, FRAME_MAX_PAYLOAD);
    size_t off = 0;
    do {
        size_t cnt = n - off < per_msg ? n - off : per_msg;
        wire_header h = {.dtype = (uint16_t)ex->dtype,
                         .run_id = ex->run_id,
                         .sender = (uint32_t)ex->rank,
                         .kind = kind,
                         .round = (uint64_t)s->round,
                         .k = (uint32_t)s->count,
                         .offset = (uint32_t)(lo + off),
                         .count = (uint32_t)cnt};
        size_t len = wire_encode(ex->sendbuf, &h, vals + off);
        peer_send(ex->g, peer, PEER_CH_SPARTA, ex->sendbuf, len);
        off += cnt;
    } while (off < n);
}

// send_round sends our values of slot s to every peer (alltoall), or to the F receivers of the
// round (gossip: rank + d, select_partners).
static void send_round(sparta_exchanger *ex, slot *s) {
    const float *ours = peer_vals(ex, s, ex->rank);
    if (ex->fanout > 0) {
        int d[AR_MAX_WORLD];
        int f = select_partners(ex->seed, (uint64_t)s->round, ex->world, ex->fanout, d);
        for (int j = 0; j < f; j++)
            send_values(ex, (ex->rank + d[j]) % ex->world, WIRE_VALUES, s, 0, s->count, ours);
        return;
    }
    for (int peer = 0; peer < ex->world; peer++)
        if (peer != ex->rank) send_values(ex, peer, WIRE_VALUES, s, 0, s->count, ours);
}

// file_message validates one received message and files its values (takes mu).
static void file_message(sparta_exchanger *ex, int peer, const void *msg, size_t len) {
    wire_header h;
    int rc = wire_decode(msg, len, ex->run_id, &h);
    const char *why = rc ? err_msg() : NULL;
    if (!rc && ((int)h.sender != peer || h.kind != WIRE_VALUES || h.dtype != ex->dtype))
        why = "sender, kind or dtype does not match";
    pthread_mutex_lock(&ex->mu);
    if (!why && h.round < (uint64_t)INT64_MAX / 2) {
        // Only a peer's plausible progression counts toward catching up, so one stray round
        // number (even with a valid CRC) cannot make this peer jump.
        int64_t r = (int64_t)h.round, prev = ex->peer_last[peer];
        if (prev >= 0 && r > prev && r - prev <= (int64_t)ex->nslots * ex->sc.every &&
            r > ex->max_seen)
            ex->max_seen = r;
        ex->peer_last[peer] = r;
    }
    if (!why && (h.round > (uint64_t)INT64_MAX / 2 ||
                 (int64_t)h.round >= ex->last_posted + (int64_t)(ex->nslots - 1) * ex->sc.every ||
                 h.k != round_count(ex, (int64_t)h.round)))
        why = "round or k out of range";
    slot *s = why ? NULL : slot_of(ex, (int64_t)h.round);
    if (s && s->round != (int64_t)h.round) {
        if (s->state == S_OPEN || s->state == S_CLOSING || s->round > (int64_t)h.round)
            why = "round no longer open";
        else
            slot_reset(ex, s, (int64_t)h.round);
    }
    if (!why && s->state != S_OPEN) why = "round already applied";
    if (!why && s->got[peer] + h.count > s->count) why = "duplicate values";
    if (why) {
        ex->msgs_dropped++;
        pthread_mutex_unlock(&ex->mu);
        LOG_D("sparta", "dropped message from peer=%d len=%zu: %s", peer, len, why);
        return;
    }
    float *dst = peer_vals(ex, s, peer) + h.offset;
    wire_values(msg, &h, dst);
    // one value that is not finite rejects the sender's whole round (counted once per round);
    // the offence is reported before the round can complete (lock order: mu, then the group's)
    if (!s->rejected[peer] && !agg_finite(dst, h.count)) {
        s->rejected[peer] = 1;
        ex->nonfinite++;
        char text[96];
        snprintf(text, sizeof text, "non-finite values in SPARTA round %llu (left out of it)",
                 (unsigned long long)h.round);
        peer_offence(ex->g, peer, text);
    }
    s->got[peer] += h.count;
    ex->wait[peer] = 1; // it is in step with us now
    ex->msgs_filed++;
    if (s->posted && slot_complete(ex, s)) {
        s->t_done = sys_now_ms();
        pthread_cond_broadcast(&ex->cv);
    }
    pthread_mutex_unlock(&ex->mu);
}

// alltoall_main: send every posted round to every peer, file what arrives.
static void alltoall_main(sparta_exchanger *ex) {
    while (!atomic_load(&ex->stop)) {
        for (;;) { // send every posted round not sent yet
            slot *s = NULL;
            pthread_mutex_lock(&ex->mu);
            for (int i = 0; i < ex->nslots && !s; i++)
                if (ex->slots[i].state == S_OPEN && ex->slots[i].posted && !ex->slots[i].sending)
                    s = &ex->slots[i];
            if (s) s->sending = 1;
            pthread_mutex_unlock(&ex->mu);
            if (!s) break;
            send_round(ex, s); // our values in s are immutable until closed
            pthread_mutex_lock(&ex->mu);
            if (slot_complete(ex, s) && s->t_done == 0) s->t_done = sys_now_ms();
            s->sent = 1;
            pthread_cond_broadcast(&ex->cv); // a sync round may have been waiting for the send
            pthread_mutex_unlock(&ex->mu);
        }
        // peer_wake (a posted round, or stop) ends the wait at once
        peer_msg *m;
        int rc = peer_recv(ex->g, PEER_CH_SPARTA, -1, &m);
        if (rc == ERR_CLOSED) break;
        if (rc == ERR_OK) {
            file_message(ex, m->from, m->data, m->len);
            peer_msg_free(ex->g, m);
        }
    }
}

// ring_round runs the all-reduce of slot s (taken: sending) among the linked peers, with mu held
// on entry and exit (released while the ring runs). Every peer runs its rounds in round order, so
// the rings meet; a peer missing from some side's view makes that round fail on both (the chunks
// do not match) and it is dropped.
static void ring_round(sparta_exchanger *ex, slot *s) {
    int members[AR_MAX_WORLD], nm = 0;
    refresh_live(ex);
    for (int p = 0; p < ex->world; p++)
        if (ex->live[p]) members[nm++] = p;
    int64_t round = s->round;
    size_t count = s->count;
    pthread_mutex_unlock(&ex->mu);
    // our row is immutable while the slot is sending; the mean row is the exchanger's until sent
    float *mean = ring_mean(ex, s);
    memcpy(mean, peer_vals(ex, s, ex->rank), count * sizeof(float));
    ar_stats st = {0};
    int rc = nm < 2 ? ERR_PEER
                    : ar_mean_group(ex->ar, mean, count, (uint64_t)round, members, nm,
                                    ex->sc.timeout_ms, &st);
    if (rc && nm >= 2) LOG_D("sparta", "ring round=%lld failed: %s", (long long)round, err_msg());
    uint64_t newest = ar_newest_tag(ex->ar);
    pthread_mutex_lock(&ex->mu);
    ex->msgs_dropped += st.msgs_dropped;
    ex->msgs_filed += rc == ERR_OK ? (uint64_t)nm - 1 : 0;
    if (newest < (uint64_t)INT64_MAX / 2 && (int64_t)newest > ex->max_seen)
        ex->max_seen = (int64_t)newest;
    if (s->round == round) { // the slot is not reused before sent is set (post_round)
        if (rc == ERR_OK) {
            s->ring_np = nm;
            s->t_done = sys_now_ms();
        } else {
            s->ring_failed = 1;
        }
    }
    s->sent = 1;
    pthread_cond_broadcast(&ex->cv);
}

// ring_main: run the posted rounds' all-reduces, oldest first.
static void ring_main(sparta_exchanger *ex) {
    pthread_mutex_lock(&ex->mu);
    while (!atomic_load(&ex->stop)) {
        slot *s = NULL;
        for (int i = 0; i < ex->nslots; i++) {
            slot *c = &ex->slots[i];
            if (c->state == S_OPEN && c->posted && !c->sending && (!s || c->round < s->round))
                s = c;
        }
        if (!s) {
            pthread_cond_wait(&ex->cv, &ex->mu); // post_round and destroy signal
            continue;
        }
        s->sending = 1;
        ring_round(ex, s);
    }
    pthread_mutex_unlock(&ex->mu);
}

static void *exchanger_main(void *arg) {
    sparta_exchanger *ex = arg;
    if (ex->ring)
        ring_main(ex);
    else
        alltoall_main(ex);
    return NULL;
}

// ---- trainer side ----------------------------------------------------------------------------

// post_round gathers params[I_r] into round r's slot and hands it to the exchanger.
static void post_round(sparta_exchanger *ex, const float *params, int64_t r, long step) {
    slot *s = slot_of(ex, r);
    pthread_mutex_lock(&ex->mu);
    // A trainer far ahead of a slow exchanger must not reuse a slot it is still sending from;
    // sends never block, so this wait is short.
    while (s->sending && !s->sent)
        pthread_cond_wait(&ex->cv, &ex->mu);
    if (s->round != r || s->state != S_OPEN) slot_reset(ex, s, r);
    ex->last_posted = r;
    size_t count = s->count;
    pthread_mutex_unlock(&ex->mu);
    // Our row of the slot is written by this thread only, before `posted` is set.
    select_indices(ex->selector, ex->seed, (uint64_t)r, ex->n, ex->kmax, s->idx);
    float *own = peer_vals(ex, s, ex->rank);
    const uint32_t *idx = s->idx;
#pragma omp parallel for schedule(static) if (count > 65536)
    for (size_t i = 0; i < count; i++)
        own[i] = params[idx[i]];
    if (ex->dtype == WIRE_BF16) wire_round_bf16(own, count); // average what the peers receive
    int bad = !agg_finite(own, count);                       // the others leave them out: so do we
    pthread_mutex_lock(&ex->mu);
    s->rejected[ex->rank] = (unsigned char)bad;
    ex->nonfinite += (uint64_t)bad;
    s->got[ex->rank] = (uint32_t)count;
    s->posted = 1;
    s->post_step = step;
    s->t_post = sys_now_ms();
    if (ex->ring)
        pthread_cond_broadcast(&ex->cv); // the exchanger starts its all-reduce
    else
        peer_wake(ex->g, PEER_CH_SPARTA); // the exchanger sends it now
    if (slot_complete(ex, s)) s->t_done = s->t_post;
    pthread_mutex_unlock(&ex->mu);
}

// apply_slot averages the present peers' values of a CLOSING slot into params: those whose values
// all arrived and were not rejected. If ours were rejected (not finite), the others' aggregate
// overwrites ours whatever sparta.apply says.
static void apply_slot(sparta_exchanger *ex, slot *s, float *params, long step, int complete) {
    int np = 0, self = 0;
    for (int p = 0; p < ex->world && !ex->ring; p++)
        if (s->got[p] == s->count && !s->rejected[p]) {
            self |= p == ex->rank;
            ex->rows[np] = peer_vals(ex, s, p);
            ex->present[np++] = p;
        }
    if (ex->ring) {
        np = complete ? s->ring_np : 0; // a ring round is whole or nothing
        self = 1;
    }
    size_t count = s->count;
    // A ring sums before anyone sees the values: a non-finite mean drops the round.
    int bad_ring = ex->ring && np >= 2 && !agg_finite(ring_mean(ex, s), count);
    if (np - self < 1 || bad_ring) {
        ex->rounds_dropped++;
        ex->nonfinite += (uint64_t)bad_ring;
        LOG_D("sparta", "round=%lld dropped at step=%ld: %s", (long long)s->round, step,
              bad_ring ? "the ring's mean is not finite" : "no peer's values arrived in time");
        return;
    }
    const uint32_t *idx = s->idx; // gathered at post time: selection runs once per round
    const float *own = peer_vals(ex, s, ex->rank);
    // the ring's row is the mean already; else the rule over the present rows, in rank order
    const float *agg = ex->ring ? ring_mean(ex, s) : ex->mean;
    if (!ex->ring) agg_rows(ex->sc.aggregate, ex->sc.trim, ex->rows, np, count, ex->mean);
    if (ex->correct && self) {
#pragma omp parallel for schedule(static) if (count > 65536)
        for (size_t i = 0; i < count; i++)
            params[idx[i]] += agg[i] - own[i];
    } else {
#pragma omp parallel for schedule(static) if (count > 65536)
        for (size_t i = 0; i < count; i++)
            params[idx[i]] = agg[i];
    }
    double stale = (double)(step - s->post_step);
    ex->round_peers = np;
    ex->n_applied++;
    ex->stale_sum += stale;
    if (stale > ex->stale_max) ex->stale_max = stale;
    if (complete) {
        ex->rounds_done++;
        ex->lat_sum += s->t_done - s->t_post;
        ex->n_lat++;
    } else {
        ex->rounds_late++;
        LOG_D("sparta", "round=%lld applied late at step=%ld with %d of %d peers",
              (long long)s->round, step, np, ex->world);
    }
}

// resolve applies, oldest first, the rounds that are complete or past their deadline at this
// peer's step (deadlines count our own steps since the round was posted). force (>= 0) closes
// that round now whatever its state (a sync round that timed out); all closes every open round
// (before a catch-up jump of the round counter).
static void resolve(sparta_exchanger *ex, float *params, long step, int64_t force, int all) {
    for (;;) {
        slot *pick = NULL;
        int complete = 0;
        pthread_mutex_lock(&ex->mu);
        for (int i = 0; i < ex->nslots; i++) {
            slot *s = &ex->slots[i];
            if (s->state != S_OPEN || !s->posted) continue;
            int64_t age = step - s->post_step;
            int forced = all || s->round == force;
            if (!forced && age < ex->sc.delay) continue; // forced staleness
            int done = slot_ready(ex, s);
            if (!done && !s->ring_failed && age < ex->sc.max_stale && !forced) continue;
            if (!pick || s->round < pick->round) {
                pick = s;
                complete = done;
            }
        }
        if (pick) pick->state = S_CLOSING; // the exchanger keeps off while we read it
        // a ring round given up while its all-reduce runs: stop waiting for it
        if (pick && ex->ring && pick->sending && !pick->sent)
            ar_cancel(ex->ar, (uint64_t)pick->round);
        pthread_mutex_unlock(&ex->mu);
        if (!pick) return;
        apply_slot(ex, pick, params, step, complete);
        pthread_mutex_lock(&ex->mu);
        pick->state = S_DONE;
        pthread_mutex_unlock(&ex->mu);
    }
}

// wait_complete waits (mu held) until slot s holds round with every peer's values.
static int wait_complete(sparta_exchanger *ex, slot *s, int64_t round, int timeout_ms) {
    struct timespec dl = sys_deadline(timeout_ms);
    while (!(s->round == round && s->state == S_OPEN && (slot_ready(ex, s) || s->ring_failed)))
        if (pthread_cond_timedwait(&ex->cv, &ex->mu, &dl) != 0) break;
    return s->round == round && s->state == S_OPEN && slot_ready(ex, s);
}

int sparta_wait_round(sparta_exchanger *ex, long round, int timeout_ms) {
    pthread_mutex_lock(&ex->mu);
    int done = wait_complete(ex, slot_of(ex, round), round, timeout_ms);
    pthread_mutex_unlock(&ex->mu);
    return done;
}

// catch_up realigns the round counter when the other peers run more than a slot window ahead
// (this peer joined late or restarted): the next round posted is the newest one seen plus one,
// rounded up to a multiple of every. Rounds only move forward, so index sets never repeat. The
// rounds still open are closed first (applied with the peers present, or dropped), at their
// staleness in our own steps: after the jump their slots belong to other rounds.
static void catch_up(sparta_exchanger *ex, float *params, long step) {
    pthread_mutex_lock(&ex->mu);
    int64_t seen = ex->max_seen;
    pthread_mutex_unlock(&ex->mu);
    int64_t cur = step + ex->offset;
    if (seen <= cur + (int64_t)ex->nslots * ex->sc.every) return;
    int64_t next = seen + 1, every = ex->sc.every;
    next = (next + every - 1) / every * every;
    resolve(ex, params, step, -1, 1);
    ex->offset = next - step;
    // A peer slower than the rest jumps again and again: one line, then at most one per 10 s.
    double now = sys_now_ms();
    if (ex->catch_ups++ == 0 || now - ex->catch_up_logged_ms >= 10000) {
        LOG_I("sparta",
              "peers are at round %lld: continuing at round %lld from step %ld (%ld jumps)",
              (long long)seen, (long long)next, step, ex->catch_ups);
        ex->catch_up_logged_ms = now;
    }
}

int sparta_after_step(sparta_exchanger *ex, float *params, size_t n, long step) {
    ASSERT(n == ex->n);
    pthread_mutex_lock(&ex->mu);
    refresh_live(ex); // a peer whose link went down is not waited for
    pthread_mutex_unlock(&ex->mu);
    catch_up(ex, params, step);
    int64_t cur = step + ex->offset, force = -1;
    if (cur % ex->sc.every == 0) {
        resolve(ex, params, step, -1, 0); // frees the slot of round cur - nslots if still open
        post_round(ex, params, cur, step);
        if (ex->sc.sync) {
            pthread_mutex_lock(&ex->mu);
            int done = wait_complete(ex, slot_of(ex, cur), cur, ex->sc.timeout_ms);
            pthread_mutex_unlock(&ex->mu);
            if (!done)
                LOG_W("sparta",
                      "round=%lld incomplete after %d ms: applying it with the peers present",
                      (long long)cur, ex->sc.timeout_ms);
            if (ex->sc.delay == 0) force = cur; // else applied sparta.delay steps from now
        }
    }
    resolve(ex, params, step, force, 0);
    return ERR_OK;
}

void sparta_get_stats(sparta_exchanger *ex, sparta_stats *st) {
    peer_stats ns;
    peer_get_stats(ex->g, &ns);
    pthread_mutex_lock(&ex->mu);
    memset(st, 0, sizeof *st);
    // Values sent to a connected peer count too: a peer that finishes its last step before
    // the others send their first round (a short run on a busy host) still exchanged.
    st->exchanges =
        ex->rounds_done + ex->rounds_late + ex->msgs_filed + ns.msgs_sent[PEER_CH_SPARTA];
    st->bytes_sent = ns.bytes_sent[PEER_CH_SPARTA];
    st->bytes_recv = ns.bytes_recv[PEER_CH_SPARTA];
    st->rounds_done = ex->rounds_done;
    st->rounds_late = ex->rounds_late;
    st->rounds_dropped = ex->rounds_dropped;
    st->msgs_dropped = ex->msgs_dropped;
    st->nonfinite = ex->nonfinite;
    st->stale_mean = ex->n_applied ? ex->stale_sum / (double)ex->n_applied : 0;
    st->stale_max = ex->stale_max;
    st->latency_ms = ex->n_lat ? ex->lat_sum / (double)ex->n_lat : 0;
    st->round_peers = ex->round_peers;
    pthread_mutex_unlock(&ex->mu);
}

// ---- lifetime --------------------------------------------------------------------------------

int sparta_create(sparta_exchanger **out, const cfg_sparta *sc, peer_group *g, int rank, int world,
                  uint64_t seed, uint64_t run_id, size_t n_params) {
    if (world < 2 || rank < 0 || rank >= world)
        return err_set(ERR_INVAL, "sparta: rank %d of %d peers", rank, world);
    if (!g) return err_set(ERR_INVAL, "sparta: no peer group");
    if (n_params > UINT32_MAX)
        return err_set(ERR_INVAL, "sparta: %zu parameters exceed 32-bit indices", n_params);
    sparta_exchanger *ex = xcalloc(1, sizeof *ex);
    ex->sc = *sc;
    ex->g = g;
    ex->rank = rank;
    ex->world = world;
    ex->seed = seed;
    ex->run_id = run_id;
    ex->n = n_params;
    ex->selector = sc->selector == CFG_SELECT_PARTITIONED ? SELECT_PARTITIONED : SELECT_RANDOM;
    ex->dtype = sc->dtype == CFG_DTYPE_BF16 ? WIRE_BF16 : WIRE_FP32; // the key has no int8
    ex->correct = sc->apply == CFG_APPLY_CORRECT;
    ex->ring = sc->reduce == CFG_REDUCE_RING;
    ex->fanout = sc->fanout > 0 && sc->fanout < world - 1 ? sc->fanout : 0; // F >= W-1: all
    if (ex->fanout && ex->ring) {
        free(ex);
        return err_set(ERR_INVAL, "sparta.fanout needs sparta.reduce = alltoall");
    }
    if (ex->ring && select_k(sc->p, n_params) < (size_t)world) {
        free(ex);
        return err_set(ERR_INVAL,
                       "sparta.reduce = ring needs at least one value per peer (k = %zu "
                       "< %d peers): raise sparta.p",
                       select_k(sc->p, n_params), world);
    }
    ex->kmax = select_k(sc->p, n_params);
    // Rounds still open (posted in the last max_stale steps), one a faster peer has posted ahead
    // of us, and one spare: max_stale / every + 3.
    ex->nslots = sc->max_stale / sc->every + 3;
    ex->last_posted = 0;
    pthread_mutex_init(&ex->mu, NULL);
    sys_cond_init(&ex->cv);
    ex->slots = xcalloc((size_t)ex->nslots, sizeof(slot));
    for (int i = 0; i < ex->nslots; i++) {
        ex->slots[i].round = -1;
        ex->slots[i].got = xcalloc((size_t)world, sizeof(uint32_t));
        ex->slots[i].idx = xmalloc(ex->kmax * sizeof(uint32_t));
        ex->slots[i].rejected = xcalloc((size_t)world, 1);
        ex->slots[i].from = xcalloc((size_t)world, 1);
        size_t rows = (size_t)world + (ex->ring ? 1 : 0);
        ex->slots[i].vals = xalloc_aligned(rows * ex->kmax * sizeof(float));
    }

    ex->mean = xalloc_aligned(ex->kmax * sizeof(float));
    ex->present = xcalloc((size_t)world, sizeof(int));
    ex->rows = xcalloc((size_t)world, sizeof(float *));
    ex->peer_last = xmalloc((size_t)world * sizeof(int64_t));
    for (int p = 0; p < world; p++)
        ex->peer_last[p] = -1;
    ex->sendbuf = xmalloc(FRAME_MAX_PAYLOAD);
    ex->live = xcalloc((size_t)world, 1);
    ex->wait = xmalloc((size_t)world);
    memset(ex->wait, 1, (size_t)world); // the peers linked now (hello_wait) start together
    refresh_live(ex);
    if (ex->ring) {
        int rc = ar_create(&ex->ar, g, PEER_CH_SPARTA, rank, world, run_id, ex->kmax, ex->dtype);
        if (rc) {
            sparta_destroy(ex);
            return rc;
        }
    }
    if (pthread_create(&ex->thread, NULL, exchanger_main, ex) != 0) {
        sparta_destroy(ex);
        return err_set(ERR_NOMEM, "sparta: cannot start the exchanger thread");
    }
    ex->thread_started = 1;
    LOG_I("sparta",
          "rank=%d/%d k=%zu (p=%g of %zu) every=%d max_stale=%d selector=%s apply=%s "
          "dtype=%s sync=%d aggregate=%s trim=%g",
          rank, world, ex->kmax, sc->p, n_params, sc->every, sc->max_stale,
          cfg_selector_str(sc->selector), cfg_apply_str(sc->apply), cfg_dtype_str(sc->dtype),
          sc->sync, cfg_aggregate_str(sc->aggregate), sc->trim);
    *out = ex;
    return ERR_OK;
}

void sparta_destroy(sparta_exchanger *ex) {
    if (!ex) return;
    atomic_store(&ex->stop, 1);
    if (ex->thread_started) {
        pthread_mutex_lock(&ex->mu);
        pthread_cond_broadcast(&ex->cv); // an idle ring exchanger
        pthread_mutex_unlock(&ex->mu);
        if (ex->ar) ar_cancel(ex->ar, AR_CANCEL_ALL); // a ring in progress
        peer_wake(ex->g, PEER_CH_SPARTA);             // an alltoall exchanger's receive
        pthread_join(ex->thread, NULL);
    }
    ar_destroy(ex->ar);
    free(ex->live);
    free(ex->wait);
    for (int i = 0; ex->slots && i < ex->nslots; i++) {
        free(ex->slots[i].got);
        free(ex->slots[i].idx);
        free(ex->slots[i].rejected);
        free(ex->slots[i].from);
        free(ex->slots[i].vals);
    }
    free(ex->slots);

    free(ex->mean);
    free(ex->present);
    free(ex->rows);
    free(ex->peer_last);
    free(ex->sendbuf);
    pthread_mutex_destroy(&ex->mu);
    pthread_cond_destroy(&ex->cv);
    free(ex);
}

// ---- train_sync adapter ----------------------------------------------------------------------

static int sync_after_step(void *ctx, float *params, size_t n, long *step) {
    return sparta_after_step(ctx, params, n, *step);
}

static void sync_metrics(void *ctx, train_sync_metrics *m) {
    sparta_stats st;
    sparta_get_stats(ctx, &st);
    m->exchanges += st.exchanges;
    m->bytes_sent += st.bytes_sent;
    m->bytes_recv += st.bytes_recv;
    m->msgs_dropped += st.msgs_dropped;
    train_sync_metric(m, "sparta_rounds_done", "rounds", (double)st.rounds_done, 0);
    train_sync_metric(m, "sparta_rounds_late", "late", (double)st.rounds_late, 0);
    train_sync_metric(m, "sparta_rounds_dropped", "dropped", (double)st.rounds_dropped, 0);
    train_sync_metric(m, "sparta_stale_mean", "stale", st.stale_mean, 3);
    train_sync_metric(m, "sparta_stale_max", "stale_max", st.stale_max, 0);
    train_sync_metric(m, "sparta_xchg_ms", "xchg_ms", st.latency_ms, 3);
    train_sync_metric(m, "sparta_round_peers", "peers", (double)st.round_peers, 0);
    train_sync_metric(m, "sparta_nonfinite", NULL, (double)st.nonfinite, 0);
}

static void sync_destroy(void *ctx) { sparta_destroy(ctx); }

int sparta_sync_create(train_sync *out, const cfg_sparta *sc, peer_group *g,
                       const train_sync_run *run, uint64_t seed, size_t n_params) {
    memset(out, 0, sizeof *out);
    sparta_exchanger *ex;
    // Index sets depend on this code: peers on builds that select differently must not mix.
    uint64_t id = rng_hash(run->run_id ^ SPARTA_SELECT_VERSION);
    int rc = sparta_create(&ex, sc, g, run->rank, run->world, seed, id, n_params);
    if (rc) return rc;
    out->ctx = ex;
    out->after_step = sync_after_step;
    out->get_metrics = sync_metrics;
    out->destroy = sync_destroy;
    return ERR_OK;
}
