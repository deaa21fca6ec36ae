// diloco.c: DiLoCo outer steps (Douillard et al. 2023, Algorithm 1).
// Outer step t (every H inner steps), on every peer:
//   delta   = theta_g - theta_local                      (pseudo-gradient, own buffer)
//   delta   = mean over peers of delta                   (ring all-reduce, allreduce.h)
//   buf     = delta (t = 1) or mu * buf + delta
//   theta_g = theta_g - lr * (delta + mu * buf)          (Nesterov; plain momentum: lr * buf)
//   theta_local = theta_g                                (the inner AdamW state is kept)
// theta_g lives in its own buffer and never aliases the live parameters, the first outer step
// comes after exactly H inner steps, and every step changes theta_g unless delta = 0: the three
// bugs of public reference code this avoids. (DDP, in ddp.c, averages the gradients after every
// backward pass with the same all-reduce, on the same ring channel.)
// Robust aggregation (diloco.aggregate = trimmed_mean or median, or diloco.max_norm > 0): a ring
// sums, and a member relays the others' partial sums, so it cannot compute a median and a bad
// member can change what passes through it. Instead every member sends its delta to every other
// (ar_gather_group: (W-1) n values out and in, against the ring's 2 (W-1)/W n) and aggregates
// all of them itself: a delta that is not finite is rejected (and an offence of its sender,
// peer_offence), each is clipped to max_norm if it is longer (agg_clip), then
//   delta = rule over the accepted deltas, per coordinate (agg.h)
// With the mean a non-finite ring result is caught instead: every member sends its delta once
// more, only to be checked; the senders of non-finite values are offences and left out of a new
// agreement (ar_agree_except), and the ring runs again without them. If nobody sent one (a sum
// that overflowed), or every delta was rejected, the outer step is skipped: theta_g and the
// momentum stay, and theta_local = theta_g.
// Faults: before each outer step the peers agree on who is present (ar_agree, waiting at most
// diloco.timeout_ms for each); the present ones average among themselves. A peer that is left
// out or late, or that (re)starts while the others run, fetches theta_g, the momentum, the outer
// step count and the inner step from a live peer with requests on the peer layer (peer_call) and
// continues from there; the copy is checked end to end against the CRC32C of the sender's whole
// state (seal), and fetched from the next member when the check fails or the sender dies.
// The copy runs at link speed: the sender copies a chunk once (under mu, a few ms per 8 MiB) and
// frames it with the chunk's CRC from its seal, without reading it again; the joiner's link
// reader puts the values straight into theta_g and the momentum (peer_call_into) and checks each
// frame there, so a damaged chunk fails at once, and the whole state's CRC is then combined from
// the chunks' (wire_crc32c_combine) rather than read again.
// No split brain: outer step t is committed only by more than half of the members of the last
// committed outer step (the quorum view; at the start, the group's view). Two such majorities
// share a member, and a member takes part in at most one committed version of t: each try of t
// has its own tag (tag_of: the outer step, then the try), and a try that follows a failed one
// first asks every linked peer (state requests, answered whatever the peer is doing) whether it
// already finished t, taking its state if so. A side without a majority commits nothing and
// keeps training; when it meets the majority again their tags (a later outer step) tell it to
// take their state. (Left open: a member that finishes t and is cut off before anyone asks it,
// in a group of five or more, lets the others finish t again without it.)
// Threads: the trainer thread runs the steps; a link's reader thread answers requests (serve),
// reading the outer state under mu (the trainer writes it under mu).
#include "diloco/diloco.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/agg.h"
#include "sparta/peer/allreduce.h"
#include "sparta/peer/le.h"
#include "sparta/peer/peer.h"
#include "sparta/peer/wire.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"

// State requests (peer_call), little-endian on the wire. A request is
//   u32 magic CTL_REQ_MAGIC, u32 op, u64 run_id, u64 offset, u32 count        (CTL_REQ_BYTES)
// and a reply is
//   u32 magic CTL_REP_MAGIC, u32 op, u64 run_id, i64 outer_steps, i64 step, u64 n, u64 offset,
//   u32 count, u32 crc_theta, u32 crc_momentum, u32 flags, u8 view[VIEW_BYTES] (CTL_REP_BYTES)
// followed by count fp32 values (little-endian) of theta_g (CTL_THETA) or the momentum
// (CTL_MOMENTUM) from offset, or none (CTL_STATE). The frame around them has the CRC of the
// message (for a whole chunk, of CTL_MAX_COUNT values from a multiple of it: derived from the
// chunk's CRC in the sender's seal); crc_theta and crc_momentum are the CRC32C of the whole
// theta_g and momentum (the little-endian bytes) of that outer step, which a joiner checks its
// copy against end to end,
// and view is the bit set (rank r: bit r % 8 of byte r / 8) of the members of the sender's last
// committed outer step: the view a majority of which commits the next one. flags has
// REP_IN_OUTER while the sender is in outer step outer_steps + 1 (at its step boundary, waiting
// for the others), so that a joiner can tell that from having just finished outer_steps.
enum { CTL_STATE = 1, CTL_THETA = 2, CTL_MOMENTUM = 3 };
enum { REP_IN_OUTER = 1 };
#define CTL_REQ_MAGIC 0x51434C44u // "DLCQ"
#define CTL_REP_MAGIC 0x52434C44u // "DLCR"
#define CTL_REQ_BYTES 28
#define VIEW_BYTES    (AR_MAX_WORLD / 8)
#define CTL_REP_BYTES (64 + VIEW_BYTES)
typedef struct ctl_req {
    uint32_t magic, op;
    uint64_t run_id, offset;
    uint32_t count;
} ctl_req;
typedef struct ctl_rep {
    uint32_t magic, op;
    uint64_t run_id;
    int64_t outer_steps, step;
    uint64_t n, offset;
    uint32_t count;
    uint32_t crc_theta, crc_momentum, flags;
    unsigned char view[VIEW_BYTES];
} ctl_rep;
#define CTL_MAX_COUNT ((FRAME_MAX_PAYLOAD - 64 - CTL_REP_BYTES) / sizeof(float))

static void req_put(unsigned char *p, const ctl_req *q) {
    le_put32(p, q->magic);
    le_put32(p + 4, q->op);
    le_put64(p + 8, q->run_id);
    le_put64(p + 16, q->offset);
    le_put32(p + 24, q->count);
}

static void req_get(const unsigned char *p, ctl_req *q) {
    q->magic = le_get32(p);
    q->op = le_get32(p + 4);
    q->run_id = le_get64(p + 8);
    q->offset = le_get64(p + 16);
    q->count = le_get32(p + 24);
}

static void rep_put(unsigned char *p, const ctl_rep *r) {
    le_put32(p, r->magic);
    le_put32(p + 4, r->op);
    le_put64(p + 8, r->run_id);
    le_put64(p + 16, (uint64_t)r->outer_steps);
    le_put64(p + 24, (uint64_t)r->step);
    le_put64(p + 32, r->n);
    le_put64(p + 40, r->offset);
    le_put32(p + 48, r->count);
    le_put32(p + 52, r->crc_theta);
    le_put32(p + 56, r->crc_momentum);
    le_put32(p + 60, r->flags);
    memcpy(p + 64, r->view, VIEW_BYTES);
}

static void rep_get(const unsigned char *p, ctl_rep *r) {
    r->magic = le_get32(p);
    r->op = le_get32(p + 4);
    r->run_id = le_get64(p + 8);
    r->outer_steps = (int64_t)le_get64(p + 16);
    r->step = (int64_t)le_get64(p + 24);
    r->n = le_get64(p + 32);
    r->offset = le_get64(p + 40);
    r->count = le_get32(p + 48);
    r->crc_theta = le_get32(p + 52);
    r->crc_momentum = le_get32(p + 56);
    r->flags = le_get32(p + 60);
    memcpy(r->view, p + 64, VIEW_BYTES);
}

// put_f32s / get_f32s copy n floats to / from little-endian bytes (a plain copy on a
// little-endian machine).
static void put_f32s(unsigned char *p, const float *x, size_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, x, n * sizeof(float));
    return;
#endif
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        le_put32(p + 4 * i, u);
    }
}

// from_le turns n floats received as little-endian bytes into host floats, in place (nothing to
// do on a little-endian machine).
static void from_le(float *x, size_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    (void)x;
    (void)n;
#else
    unsigned char *p = (unsigned char *)x;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = le_get32(p + 4 * i);
        memcpy(x + i, &u, 4);
    }
#endif
}

struct diloco {
    cfg_diloco dc;
    int rank, world;
    uint64_t run_id;
    size_t n;
    float *theta_g, *buf, *delta;
    pthread_mutex_t mu;  // guards theta_g, buf, outer_steps and step against the control server
    int64_t outer_steps; // outer steps applied
    long step;           // inner steps completed (the last after_step)
    int in_outer;        // in an outer step (after_step at a boundary): REP_IN_OUTER
    int fetching;        // theta_g and buf are being overwritten: serve nothing
    peer_group *g; // borrowed (NULL alone); DiLoCo owns its ring channel and the state requests
    ar_ctx *ar;
    uint64_t bytes_sent, bytes_recv, msgs_dropped; // everything below, summed
    uint64_t agree_sent, ctl_sent;                 // of which membership and control requests
    double ms_sum;
    uint64_t exchanges; // outer steps shared with at least one other peer
    int members[AR_MAX_WORLD];
    // robust aggregation: the all-gather's rows of the other members ((world - 1) x n, NULL with
    // the ring), row pointers and rejections by position, ranks left out of this outer step
    int robust;
    float *rows;
    float *rowp[AR_MAX_WORLD];
    const float *acc[AR_MAX_WORLD];
    unsigned char bad[AR_MAX_WORLD], except[AR_MAX_WORLD];
    uint64_t nonfinite, clipped, skipped; // deltas rejected, deltas clipped, outer steps skipped
    // No split brain (under mu): quorum[r] = 1 for the members of the last committed outer step
    // (nq of them; q_set: known yet), more than half of whom must take part in the next one.
    unsigned char quorum[AR_MAX_WORLD];
    int nq, q_set;
    uint32_t seq; // tries of outer step outer_steps + 1 so far: the low part of its tags
    uint32_t crc_theta, crc_mom; // (under mu) CRC32C of theta_g and buf, for state transfers
    size_t nchunk;               // chunks of CTL_MAX_COUNT values per vector
    uint32_t *chunk_crc;         // (under mu) their CRC32Cs: theta_g's, then the momentum's
    uint32_t *rx_crc;            // a copy in flight: the CRC32Cs of the chunks received
    int corrupt;                 // (under mu) tests: state replies still to damage
    uint64_t no_quorum, resyncs, states_sent, states_bad, state_retries;
    uint64_t nq_streak; // outer steps in a row without a majority
    double nq_logged;   // when that was last logged
};

// Outcomes of outer_reduce.
enum { OUT_COMMIT, OUT_BEHIND, OUT_NO_QUORUM };

// tag_of gives the all-reduce tag of try seq of outer step t: tags grow with t, then with seq,
// so that every try is a new call (allreduce.h), and the outer step can be read back from a tag
// (tag_outer). Each try uses tag and tag + 1 (the check of the deltas after a non-finite mean).
static uint64_t tag_of(int64_t t, uint32_t seq) {
    return ((uint64_t)t << 20) | ((uint64_t)seq << 1);
}
static int64_t tag_outer(uint64_t tag) { return (int64_t)(tag >> 20); }
static uint32_t tag_seq(uint64_t tag) { return (uint32_t)(tag & 0xFFFFF) >> 1; }
#define SEQ_MAX 0x7FFFFu

// chunk_len gives the values in chunk c of a vector.
static size_t chunk_len(const diloco *d, size_t c) {
    size_t off = c * CTL_MAX_COUNT;
    return d->n - off < CTL_MAX_COUNT ? d->n - off : CTL_MAX_COUNT;
}

// crc_le returns the CRC32C of the little-endian bytes of x(n) (on a big-endian host, through
// a small buffer).
static uint32_t crc_le(const float *x, size_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return wire_crc32c(x, n * sizeof(float));
#else
    unsigned char tmp[4096];
    uint32_t crc = 0;
    for (size_t i = 0; i < n; i += sizeof tmp / 4) {
        size_t k = n - i < sizeof tmp / 4 ? n - i : sizeof tmp / 4;
        put_f32s(tmp, x + i, k);
        crc = wire_crc32c_combine(crc, wire_crc32c(tmp, 4 * k), 4 * k);
    }
    return crc;
#endif
}

// fold combines the CRCs of a vector's chunks crc(nchunk) into the vector's.
static uint32_t fold(const diloco *d, const uint32_t *crc) {
    uint32_t all = 0;
    for (size_t c = 0; c < d->nchunk; c++)
        all = wire_crc32c_combine(all, crc[c], chunk_len(d, c) * sizeof(float));
    return all;
}

// seal records the CRCs of theta_g and the momentum, chunk by chunk and whole (the state a
// joiner checks its copy against). Under mu.
static void seal(diloco *d) {
    for (size_t c = 0; c < d->nchunk; c++) {
        size_t off = c * CTL_MAX_COUNT;
        d->chunk_crc[c] = crc_le(d->theta_g + off, chunk_len(d, c));
        d->chunk_crc[d->nchunk + c] = crc_le(d->buf + off, chunk_len(d, c));
    }
    d->crc_theta = fold(d, d->chunk_crc);
    d->crc_mom = fold(d, d->chunk_crc + d->nchunk);
}

// view_bits / view_of convert the quorum flags to and from the wire's bit set.
static void view_bits(const diloco *d, unsigned char *bits) {
    memset(bits, 0, VIEW_BYTES);
    for (int r = 0; r < d->world && r < AR_MAX_WORLD; r++)
        if (d->quorum[r]) bits[r / 8] |= (unsigned char)(1u << (r % 8));
}

static void view_of(diloco *d, const unsigned char *bits) {
    d->nq = 0;
    for (int r = 0; r < AR_MAX_WORLD; r++) {
        d->quorum[r] = r < d->world && (bits[r / 8] >> (r % 8) & 1);
        d->nq += d->quorum[r];
    }
    d->q_set = d->nq > 0;
}

// set_quorum makes members(nm) the last committed view. Under mu.
static void set_quorum(diloco *d, const int *members, int nm) {
    memset(d->quorum, 0, sizeof d->quorum);
    for (int i = 0; i < nm; i++)
        d->quorum[members[i]] = 1;
    d->nq = nm;
    d->q_set = 1;
}

void diloco_outer_update(float *theta_g, float *buf, const float *delta, size_t n, float lr,
                         float mu, int nesterov, int first) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float b = first ? delta[i] : mu * buf[i] + delta[i];
        buf[i] = b;
        theta_g[i] -= lr * (nesterov ? delta[i] + mu * b : b);
    }
}

// wire_dtype maps diloco.dtype to the all-reduce's value type.
static int wire_dtype(cfg_dtype t) {
    return t == CFG_DTYPE_INT8 ? WIRE_INT8 : t == CFG_DTYPE_BF16 ? WIRE_BF16 : WIRE_FP32;
}

// count adds one call's counters to d's.
static void count(diloco *d, const ar_stats *st) {
    d->bytes_sent += st->bytes_sent;
    d->bytes_recv += st->bytes_recv;
    d->msgs_dropped += st->msgs_dropped;
    d->ms_sum += st->ms;
}

// reduce averages x(n) over the members(nm) and keeps the counters; what names the call in an
// error.
static int reduce(diloco *d, float *x, size_t n, uint64_t tag, const int *members, int nm,
                  const char *what) {
    if (!d->ar) return ERR_OK;
    ar_stats st;
    int rc = ar_mean_group(d->ar, x, n, tag, members, nm, d->dc.timeout_ms, &st);
    count(d, &st);
    if (rc) return err_set(rc, "%s: all-reduce failed: %s", what, err_msg());
    return ERR_OK;
}

// offence reports member rank's non-finite delta of outer step t to the peer layer.
static void offence(diloco *d, int rank, int64_t t) {
    char why[96];
    snprintf(why, sizeof why, "non-finite pseudo-gradient in DiLoCo outer step %lld", (long long)t);
    d->nonfinite++;
    peer_offence(d->g, rank, why);
}

// robust_reduce replaces delta(n) by the rule over the members' deltas (all-gathered): the
// non-finite ones rejected, each clipped to max_norm. *accepted = the deltas aggregated (0: none,
// delta is left as it was gathered). Returns ERR_OK or the all-gather's error.
static int robust_reduce(diloco *d, float *delta, size_t n, uint64_t tag, int64_t t, int nm,
                         int *accepted) {
    int pos = 0;
    while (d->members[pos] != d->rank)
        pos++;
    for (int i = 0; i < nm; i++)
        d->rowp[i] = i == pos ? delta : d->rows + (size_t)(i < pos ? i : i - 1) * n;
    ar_stats st;
    int rc = ar_gather_group(d->ar, delta, n, tag, d->members, nm, d->dc.timeout_ms, d->rowp,
                             d->bad, &st);
    count(d, &st);
    if (rc) return err_set(rc, "outer step %lld: all-gather failed: %s", (long long)t, err_msg());
    d->bad[pos] = !agg_finite(delta, n); // ours are left out too (the others do that)
    int m = 0;
    for (int i = 0; i < nm; i++) {
        if (d->bad[i]) {
            if (i != pos) offence(d, d->members[i], t);
            continue;
        }
        double norm;
        if (d->dc.max_norm > 0 && agg_clip(d->rowp[i], n, d->dc.max_norm, &norm)) {
            d->clipped++;
            LOG_D("diloco", "outer step %lld: rank %d's pseudo-gradient clipped from %.4g to %g",
                  (long long)t, d->members[i], norm, d->dc.max_norm);
        }
        d->acc[m++] = d->rowp[i];
    }
    *accepted = m;
    if (m) agg_rows(d->dc.aggregate, d->dc.trim, d->acc, m, n, delta);
    return ERR_OK;
}

// find_senders: the ring's mean is not finite. Every member sends its delta(n) once more, to be
// checked only; the ones that are not finite are offences and go into d->except. Returns ERR_OK
// (*found: how many) or the all-gather's error.
static int find_senders(diloco *d, const float *delta, size_t n, uint64_t tag, int64_t t, int nm,
                        int *found) {
    ar_stats st;
    int rc =
        ar_gather_group(d->ar, delta, n, tag, d->members, nm, d->dc.timeout_ms, NULL, d->bad, &st);
    count(d, &st);
    *found = 0;
    if (rc) return err_set(rc, "outer step %lld: checking the deltas: %s", (long long)t, err_msg());
    for (int i = 0; i < nm; i++)
        if (d->bad[i]) {
            offence(d, d->members[i], t);
            d->except[d->members[i]] = 1;
            ++*found;
        }
    return ERR_OK;
}

// ---- control channel -------------------------------------------------------------------------

// serve answers a state request from a joining peer into rep (a link's reader thread).
static size_t serve(void *arg, int from, const void *req, size_t len, peer_reply *rep) {
    diloco *d = arg;
    ctl_req q;
    if (len != CTL_REQ_BYTES) return 0; // empty reply: the asker treats it as an error
    req_get(req, &q);
    if (q.magic != CTL_REQ_MAGIC || q.run_id != d->run_id || q.op < CTL_STATE ||
        q.op > CTL_MOMENTUM || q.offset > d->n || q.count > CTL_MAX_COUNT ||
        q.count > d->n - q.offset)
        return 0;
    if (q.op == CTL_STATE) q.count = 0;
    unsigned char *out = rep->buf;
    ctl_rep r = {.magic = CTL_REP_MAGIC,
                 .op = q.op,
                 .run_id = d->run_id,
                 .n = d->n,
                 .offset = q.offset,
                 .count = q.count};
    pthread_mutex_lock(&d->mu);
    if (d->fetching) {
        pthread_mutex_unlock(&d->mu);
        return 0;
    }
    r.outer_steps = d->outer_steps;
    r.step = d->step;
    r.flags = d->in_outer ? REP_IN_OUTER : 0;
    r.crc_theta = d->crc_theta;
    r.crc_momentum = d->crc_mom;
    view_bits(d, r.view);
    const float *src = q.op == CTL_THETA ? d->theta_g : d->buf;
    if (q.count) put_f32s(out + CTL_REP_BYTES, src + q.offset, q.count);
    size_t c = q.offset / CTL_MAX_COUNT;
    if (q.count && q.offset % CTL_MAX_COUNT == 0 && q.count == chunk_len(d, c)) {
        rep->crc_from = CTL_REP_BYTES; // a whole chunk: its CRC is in the seal
        rep->crc = d->chunk_crc[(q.op == CTL_MOMENTUM ? d->nchunk : 0) + c];
    }
    if (q.count && q.op == CTL_THETA && d->corrupt > 0) { // tests: a sender that damages state
        d->corrupt--;
        out[CTL_REP_BYTES] ^= 0x01;
    }
    if (q.op == CTL_STATE) d->states_sent++;
    int last = q.op == CTL_MOMENTUM && q.offset + q.count == d->n; // a copy's last chunk
    int64_t outer = r.outer_steps;
    pthread_mutex_unlock(&d->mu);
    if (last)
        LOG_I("diloco", "state sent to rank=%d: outer step %lld, %.1f MB", from, (long long)outer,
              2.0 * (double)d->n * sizeof(float) / 1e6);
    rep_put(out, &r);
    return CTL_REP_BYTES + (size_t)q.count * sizeof(float);
}

// ask_counted sends one control request to peer p and checks the reply; on ERR_OK *r holds its
// header and the values (count of them for CTL_THETA and CTL_MOMENTUM) are in dst, which the
// link's reader filled straight from the stream, with *crc the CRC32C of their little-endian
// bytes (crc may be NULL without values). The bytes go to *sent and *recv (any thread: it
// touches nothing else of d).
static int ask_counted(diloco *d, int p, uint32_t op, uint64_t offset, uint32_t count, ctl_rep *r,
                       float *dst, uint32_t *crc, int timeout_ms, uint64_t *sent, uint64_t *recv) {
    ctl_req q = {
        .magic = CTL_REQ_MAGIC, .op = op, .run_id = d->run_id, .offset = offset, .count = count};
    unsigned char qb[CTL_REQ_BYTES];
    req_put(qb, &q);
    peer_msg *m = NULL;
    size_t got = 0, want = op == CTL_STATE ? 0 : (size_t)count * sizeof(float);
    uint32_t vcrc = 0;
    int rc = want ? peer_call_into(d->g, p, qb, sizeof qb, CTL_REP_BYTES, dst, want, &m, &got,
                                   &vcrc, timeout_ms)
                  : peer_call(d->g, p, qb, sizeof qb, &m, timeout_ms);
    if (rc == ERR_FORMAT) // a damaged chunk: name it
        return err_set(rc, "diloco: %s values [%llu, +%u) from rank %d: %s",
                       op == CTL_THETA ? "theta_g" : "momentum", (unsigned long long)offset, count,
                       p, err_msg());
    if (rc) return rc;
    *sent += sizeof qb;
    if (!m) return err_set(ERR_PEER, "diloco: rank %d serves no state yet (it is starting)", p);
    size_t len = m->len;
    *recv += len + got;
    memset(r, 0, sizeof *r);
    if (len == CTL_REP_BYTES) rep_get(m->data, r);
    peer_msg_free(d->g, m);
    if (len != CTL_REP_BYTES || r->magic != CTL_REP_MAGIC || r->run_id != d->run_id ||
        r->op != op || r->n != d->n || r->offset != offset || r->count != (want ? count : 0) ||
        got != want || r->outer_steps < 0 || r->step < 0)
        return err_set(ERR_FORMAT, "diloco: bad state reply from rank %d (%zu bytes)", p,
                       len + got);
    if (want) {
        from_le(dst, count);
        *crc = vcrc;
    }
    return ERR_OK;
}

// ask_state asks peer p for its state (CTL_STATE, no values) into *r, counting the bytes in d's
// counters (trainer thread).
static int ask_state(diloco *d, int p, ctl_rep *r, int timeout_ms) {
    uint64_t sent = 0, recv = 0;
    int rc = ask_counted(d, p, CTL_STATE, 0, 0, r, NULL, NULL, timeout_ms, &sent, &recv);
    d->bytes_sent += sent;
    d->ctl_sent += sent;
    d->bytes_recv += recv;
    return rc;
}

// A copy of a peer's theta_g and momentum in flight: their chunks (theta_g's, then the
// momentum's) are taken in turn by FETCHERS threads (the caller and FETCHERS - 1 helpers), each
// with a request of its own in flight, so that the sender fills one reply while the link carries
// another and we decode a third.
enum { FETCHERS = 3 };
typedef struct copy_job {
    diloco *d;
    float *params; // theta_g's chunks go here too, while they are in the cache
    int p;
    int64_t outer;        // the outer step the copy belongs to
    size_t nchunks;       // in all: 2 d->nchunk
    pthread_mutex_t lock; // guards the rest
    size_t next;
    int rc, moved;
    char why[256];
    uint64_t sent, recv;
} copy_job;

static void *copy_main(void *arg) {
    copy_job *j = arg;
    diloco *d = j->d;
    for (;;) {
        pthread_mutex_lock(&j->lock);
        int stop = j->rc || j->moved || j->next >= j->nchunks;
        size_t c = j->next++;
        pthread_mutex_unlock(&j->lock);
        if (stop) break;
        int op = c < d->nchunk ? CTL_THETA : CTL_MOMENTUM;
        size_t off = (c % d->nchunk) * CTL_MAX_COUNT, cnt = chunk_len(d, c % d->nchunk);
        float *dst = (op == CTL_THETA ? d->theta_g : d->buf) + off;
        ctl_rep r;
        uint64_t sent = 0, recv = 0;
        int rc = ask_counted(d, j->p, (uint32_t)op, off, (uint32_t)cnt, &r, dst, &d->rx_crc[c],
                             d->dc.timeout_ms, &sent, &recv);
        if (!rc && op == CTL_THETA) memcpy(j->params + off, dst, cnt * sizeof(float));
        pthread_mutex_lock(&j->lock);
        j->sent += sent;
        j->recv += recv;
        if (rc && !j->rc) {
            j->rc = rc;
            snprintf(j->why, sizeof j->why, "%s", err_msg());
        }
        if (!rc && r.outer_steps != j->outer) j->moved = 1;
        pthread_mutex_unlock(&j->lock);
    }
    return NULL;
}

// copy_chunks copies theta_g and the momentum of peer p (at outer step outer) into our buffers,
// and theta_g into params too (FETCHERS requests in flight). Returns ERR_OK (*moved = 1 if p
// took an outer step meanwhile) or the first error.
static int copy_chunks(diloco *d, float *params, int p, int64_t outer, int *moved) {
    copy_job j = {.d = d, .params = params, .p = p, .outer = outer};
    j.nchunks = 2 * d->nchunk;
    pthread_mutex_init(&j.lock, NULL);
    pthread_t th[FETCHERS - 1];
    int started[FETCHERS - 1] = {0};
    for (int i = 0; i < FETCHERS - 1 && (size_t)i + 1 < j.nchunks; i++)
        started[i] = pthread_create(&th[i], NULL, copy_main, &j) == 0;
    copy_main(&j);
    for (int i = 0; i < FETCHERS - 1; i++)
        if (started[i]) pthread_join(th[i], NULL);
    pthread_mutex_destroy(&j.lock);
    d->bytes_sent += j.sent;
    d->ctl_sent += j.sent;
    d->bytes_recv += j.recv;
    *moved = j.moved;
    return j.rc ? err_set(j.rc, "%s", j.why) : ERR_OK;
}

// fetch copies theta_g and the momentum of peer p into our own buffers (and theta_g into params),
// chunk by chunk, and checks the copy end to end against the CRCs p gave with its state; if the
// peer takes an outer step meanwhile, it starts over (at most 3 times). On ERR_OK *st holds the
// peer's state (outer steps and inner step) that the copy belongs to, and its view is ours. On
// an error our buffers and params hold a partial copy (the caller fetches from another member or
// stops).
static int fetch(diloco *d, float *params, int p, ctl_rep *st) {
    int timeout = d->dc.timeout_ms;
    double t0 = sys_now_ms();
    for (int attempt = 0; attempt < 3; attempt++) {
        int rc = ask_state(d, p, st, timeout), moved = 0;
        pthread_mutex_lock(&d->mu); // our own control server stays off the buffers meanwhile
        d->fetching = 1;
        pthread_mutex_unlock(&d->mu);
        if (!rc) rc = copy_chunks(d, params, p, st->outer_steps, &moved);
        if (rc == ERR_FORMAT) d->states_bad++; // a reply that failed its check
        if (rc) return rc;
        if (moved) continue;
        // each chunk's CRC was taken over our buffers once its values were in place
        uint32_t ct = fold(d, d->rx_crc), cm = fold(d, d->rx_crc + d->nchunk);
        if (ct != st->crc_theta || cm != st->crc_momentum) {
            d->states_bad++;
            return err_set(ERR_FORMAT,
                           "the state of rank %d fails its end-to-end check (theta_g crc %08x, "
                           "sent %08x; momentum %08x, sent %08x)",
                           p, ct, st->crc_theta, cm, st->crc_momentum);
        }
        pthread_mutex_lock(&d->mu);
        d->outer_steps = st->outer_steps;
        d->step = (long)st->step;
        d->crc_theta = ct;
        d->crc_mom = cm;
        memcpy(d->chunk_crc, d->rx_crc, 2 * d->nchunk * sizeof *d->chunk_crc);
        view_of(d, st->view);
        d->seq = 0;
        d->fetching = 0;
        pthread_mutex_unlock(&d->mu);
        double ms = sys_now_ms() - t0;
        LOG_I("diloco",
              "state received from rank=%d: outer step %lld, %.1f MB in %.0f ms (%.0f MB/s), "
              "crc %08x/%08x checked",
              p, (long long)st->outer_steps, 2.0 * (double)d->n * 4 / 1e6, ms,
              2.0 * (double)d->n * 4 / 1e3 / (ms > 0 ? ms : 1), ct, cm);
        return ERR_OK;
    }
    return err_set(ERR_TIMEOUT, "diloco: rank %d kept moving while its state was copied", p);
}

// A member's state, as its CTL_STATE reply gave it.
typedef struct donor {
    int rank;
    ctl_rep st;
} donor;

// run_step gives the step to continue from to run level with a peer in state st: the step it
// completed, or the one before while it is in an outer step (it waits for us there, and our next
// step brings us to that boundary too).
static long run_step(const ctl_rep *st) {
    return (long)(st->flags & REP_IN_OUTER && st->step > 0 ? st->step - 1 : st->step);
}

// donors asks every connected peer for its state and fills dv with those that have at least
// min_outer outer steps, furthest ahead first (most outer steps, then most inner steps).
// Returns how many. (It trusts their states: see the README's threat model.)
static int donors(diloco *d, int64_t min_outer, donor *dv) {
    int nd = 0;
    for (int p = 0; p < d->world; p++) {
        ctl_rep r;
        // never from a peer whose values this outer step rejected, nor an expelled one
        if (p == d->rank || !peer_connected(d->g, p) || d->except[p] || peer_expelled(d->g, p))
            continue;
        if (ask_state(d, p, &r, d->dc.timeout_ms) != ERR_OK) {
            LOG_D("diloco", "rank %d did not answer: %s", p, err_msg());
            continue;
        }
        if (r.outer_steps < min_outer) continue;
        int i = nd++;
        while (i > 0 && (dv[i - 1].st.outer_steps < r.outer_steps ||
                         (dv[i - 1].st.outer_steps == r.outer_steps &&
                          run_step(&dv[i - 1].st) < run_step(&r)))) {
            dv[i] = dv[i - 1];
            i--;
        }
        dv[i] = (donor){p, r};
    }
    return nd;
}

// take_state copies the state of the first of the donors whose copy arrives whole and checked,
// trying the next one when a copy fails (its sender died, or the copy failed its check). Sets
// *got to the donor's index (then params = theta_g; -1: none worked, and our buffers and params
// may hold a partial copy, rc being the last error). Returns ERR_OK or that error.
static int take_state(diloco *d, float *params, donor *dv, int nd, int *got) {
    int rc = ERR_OK;
    *got = -1;
    for (int i = 0; i < nd; i++) {
        rc = fetch(d, params, dv[i].rank, &dv[i].st);
        if (rc == ERR_OK) {
            *got = i;
            return ERR_OK;
        }
        d->state_retries++;
        LOG_W("diloco", "copying the state of rank %d failed: %s%s", dv[i].rank, err_msg(),
              i + 1 < nd ? "; trying the next member" : "");
    }
    return nd ? rc : ERR_OK;
}

// resync takes the outer state after outer step `outer` from a live peer, waiting up to
// diloco.timeout_ms for one to get there, and sets params = theta_g, *at = the step to continue
// from (run_step of that peer) and *took = 1. *took = 0 if no peer has that state (the caller
// goes on without committing). Returns ERR_OK or the copy's error (our outer state is then
// incomplete: training must stop).
static int resync(diloco *d, float *params, int64_t outer, int *took, long *at) {
    double t0 = sys_now_ms();
    *took = 0;
    donor *dv = xmalloc(sizeof *dv * (size_t)d->world);
    int rc = ERR_OK;
    for (;;) {
        int nd = donors(d, outer, dv), got = -1;
        if (nd > 0) {
            rc = take_state(d, params, dv, nd, &got);
            if (rc) {
                rc = err_set(rc, "copying the outer state: %s", err_msg());
                break;
            }
            *at = run_step(&dv[got].st);
            d->resyncs++;
            LOG_W("diloco", "took the outer state of rank %d: outer step %lld (step %lld)",
                  dv[got].rank, (long long)dv[got].st.outer_steps, (long long)dv[got].st.step);
            *took = 1;
            break;
        }
        if (sys_now_ms() - t0 > d->dc.timeout_ms) break;
        // The others' state is remote and only served on request: ask again shortly. (A push
        // when they finish the step would need a control message the channel does not have.)
        sys_sleep_ms(50);
    }
    free(dv);
    return rc;
}

int diloco_join(diloco *d, float *params, size_t n, long *step) {
    ASSERT(n == d->n && d->theta_g);
    pthread_mutex_lock(&d->mu);
    d->step = *step;
    pthread_mutex_unlock(&d->mu);
    if (d->world == 1) return ERR_OK;
    // Every live member at our outer step or beyond, furthest ahead first. One with more outer
    // steps has the state to take; one that is only further into the same outer interval (we
    // restarted from a checkpoint a few steps back, or started late) has the step to take: the
    // others wait for us at the next boundary for diloco.timeout_ms only, and a peer that
    // arrives later than that is left out again and again.
    donor *dv = xmalloc(sizeof *dv * (size_t)d->world);
    int nd = donors(d, d->outer_steps, dv), ahead = 0, got = -1;
    while (ahead < nd && dv[ahead].st.outer_steps > d->outer_steps)
        ahead++;
    int rc = take_state(d, params, dv, ahead, &got);
    if (rc) {
        free(dv);
        return err_set(rc, "joining: copying the outer state: %s", err_msg());
    }
    int from = got >= 0 ? got : 0;
    if (nd == 0 || (got < 0 && run_step(&dv[from].st) <= *step)) {
        free(dv); // a fresh start, or nobody ahead of us
        return ERR_OK;
    }
    ctl_rep st = dv[from].st;
    int p = dv[from].rank;
    free(dv);
    long was = *step; // the state's own step (it may be behind ours), or a step further on
    if (got >= 0 || run_step(&st) > *step) *step = run_step(&st);
    pthread_mutex_lock(&d->mu);
    d->step = *step;
    pthread_mutex_unlock(&d->mu);
    if (got >= 0) { // params = theta_g already
        d->resyncs++;
        LOG_I("diloco",
              "joined the running peers: outer step %lld from rank %d, continuing at step %ld",
              (long long)st.outer_steps, p, *step);
    } else {
        LOG_I("diloco",
              "joined the running peers: rank %d is %ld steps further into outer step %lld: "
              "continuing at its step %ld",
              p, *step - was, (long long)st.outer_steps + 1, *step);
    }
    return ERR_OK;
}

int diloco_create(diloco **out, const cfg_diloco *dc, peer_group *g, int rank, int world,
                  uint64_t run_id, const float *params, size_t n) {
    ASSERT(params != NULL);
    if (world > 1 && !g) return err_set(ERR_INVAL, "diloco: %d peers but no peer group", world);
    diloco *d = xcalloc(1, sizeof *d);
    d->dc = *dc;
    d->rank = rank;
    d->world = world;
    d->run_id = run_id;
    d->n = n;
    pthread_mutex_init(&d->mu, NULL);
    d->theta_g = xalloc_aligned(n * sizeof(float));
    d->buf = xalloc_aligned(n * sizeof(float));
    d->delta = xalloc_aligned(n * sizeof(float));
    memcpy(d->theta_g, params, n * sizeof(float));
    memset(d->buf, 0, n * sizeof(float));
    memset(d->delta, 0, n * sizeof(float));
    d->nchunk = (n + CTL_MAX_COUNT - 1) / CTL_MAX_COUNT;
    d->chunk_crc = xcalloc(2 * d->nchunk + 1, sizeof *d->chunk_crc);
    d->rx_crc = xcalloc(2 * d->nchunk + 1, sizeof *d->rx_crc);
    if (world > 1) seal(d);
    int rc = ERR_OK;
    if (world > 1) {
        d->g = g;
        rc = ar_create(&d->ar, g, PEER_CH_RING, rank, world, run_id, n, wire_dtype(dc->dtype));
        if (!rc) peer_set_server(g, serve, d); // a peer that (re)joins asks for our state
        d->robust = dc->aggregate != CFG_AGG_MEAN || dc->max_norm > 0;
        if (!rc && d->robust) { // the other members' deltas: touched now, not in an outer step
            d->rows = xalloc_aligned((size_t)(world - 1) * n * sizeof(float));
            memset(d->rows, 0, (size_t)(world - 1) * n * sizeof(float));
        }
    }
    if (rc) {
        diloco_destroy(d);
        return rc;
    }
    *out = d;
    return ERR_OK;
}

// missing_text writes into who (n bytes) the ranks of the group's view that are not among
// members(nm), as " 2 5".
static void missing_text(diloco *d, const int *members, int nm, char *who, size_t n) {
    int view[AR_MAX_WORLD];
    int nv = peer_view_ranks(d->g, view, AR_MAX_WORLD);
    who[0] = 0;
    for (int i = 0, k = 0; i < nv && i < AR_MAX_WORLD; i++) {
        while (k < nm && members[k] < view[i])
            k++;
        if (k >= nm || members[k] != view[i])
            snprintf(who + strlen(who), n - strlen(who), " %d", view[i]);
    }
}

// someone_has returns 1 if a linked peer says (state request, answered by its reader thread
// whatever it is doing) that it has committed outer step t.
static int someone_has(diloco *d, int64_t t) {
    for (int p = 0; p < d->world; p++) {
        ctl_rep r;
        if (p == d->rank || !peer_connected(d->g, p)) continue;
        if (ask_state(d, p, &r, d->dc.timeout_ms) == ERR_OK && r.outer_steps >= t) return 1;
    }
    return 0;
}

// ahead_of: some peer has moved past our outer step t (it committed it), going by the tags it
// sent; else it is only trying t again with a later tag, which we take up (*seq).
static int ahead_of(diloco *d, int64_t t) {
    uint64_t newest = ar_newest_tag(d->ar);
    if (tag_outer(newest) > t) return 1;
    if (tag_outer(newest) == t && tag_seq(newest) > d->seq) d->seq = tag_seq(newest);
    return 0;
}

// outer_reduce aggregates delta(n) = theta_g - params with the peers present for outer step t:
// agree on the members (a new tag per try), check that they hold a majority of the last
// committed view, then all-reduce (or all-gather, robust) among them, trying again with a fresh
// agreement (a member died in between, or sent values that are not finite) up to 3 times.
// *out: OUT_COMMIT (members(*nm_out), 1: alone; *skip = 1 if no finite aggregate), OUT_BEHIND
// (others committed t without us: take their state) or OUT_NO_QUORUM (commit nothing now).
// Returns ERR_OK or the error.
static int outer_reduce(diloco *d, float *delta, const float *params, size_t n, int64_t t, int *out,
                        int *nm_out, int *skip) {
    *nm_out = 1;
    *skip = 0;
    *out = OUT_COMMIT;
    if (d->world == 1) return ERR_OK;
    if (!d->q_set) { // the first outer step: the group's view is the last agreed one
        int view[AR_MAX_WORLD];
        int nv = peer_view_ranks(d->g, view, AR_MAX_WORLD);
        pthread_mutex_lock(&d->mu);
        set_quorum(d, view, nv < AR_MAX_WORLD ? nv : AR_MAX_WORLD);
        pthread_mutex_unlock(&d->mu);
    }
    int rc = ERR_OK, failed = 0;
    memset(d->except, 0, sizeof d->except);
    for (int attempt = 0, jumps = 0; attempt < 3 && jumps < 8;) {
        if (d->seq >= SEQ_MAX) {
            *out = OUT_NO_QUORUM;
            return err_set(ERR_TIMEOUT, "outer step %lld: %u tries without a commit", (long long)t,
                           d->seq);
        }
        uint64_t tag = tag_of(t, d->seq);
        int nm = 0, ahead = 0;
        ar_stats st;
        rc = ar_agree_except(d->ar, tag, d->dc.timeout_ms, d->except, d->members, &nm, &ahead, &st);
        d->bytes_sent += st.bytes_sent;
        d->agree_sent += st.bytes_sent;
        d->bytes_recv += st.bytes_recv;
        d->msgs_dropped += st.msgs_dropped;
        if (rc) return rc;
        if (ahead) {
            if (ahead_of(d, t)) {
                *out = OUT_BEHIND;
                return ERR_OK;
            }
            jumps++; // the others try t with a later tag: so do we, at once
            continue;
        }
        d->seq++; // this tag is spent: a later try of t takes the next one
        if (nm == 0) {
            // The others agreed without us: if they committed t, their state is ours to take;
            // if not (they had no majority), we only came late to that try: join the next.
            if (someone_has(d, t)) {
                *out = OUT_BEHIND;
                return ERR_OK;
            }
            jumps++;
            continue;
        }
        int inq = 0;
        for (int i = 0; i < nm; i++)
            inq += d->quorum[d->members[i]];
        char who[256];
        if (2 * inq <= d->nq) {
            // logged when it starts, then at most every 10 s (a partition can last long)
            double now = sys_now_ms();
            if (!d->nq_streak || now - d->nq_logged > 10000) {
                missing_text(d, d->members, nm, who, sizeof who);
                LOG_W("diloco",
                      "outer step %lld not committed: %d of the %d members of the last "
                      "committed view are here (more than %d needed; missing:%s); inner steps "
                      "go on (%llu tries so far)",
                      (long long)t, inq, d->nq, d->nq / 2, who,
                      (unsigned long long)d->nq_streak + 1);
                d->nq_logged = now;
            }
            d->nq_streak++;
            *out = OUT_NO_QUORUM;
            return ERR_OK;
        }
        if (d->nq_streak)
            LOG_I("diloco",
                  "outer step %lld: a majority is back (%d of the %d members) after %llu "
                  "tries",
                  (long long)t, inq, d->nq, (unsigned long long)d->nq_streak);
        d->nq_streak = 0;
        if (failed && someone_has(d, t)) {
            // A try of t failed: a member may have finished it before that, and be in its
            // inner steps now (it answers state requests, not agreements). Never commit t twice.
            *out = OUT_BEHIND;
            return ERR_OK;
        }
        *nm_out = nm;
        int nv = peer_view_ranks(d->g, NULL, 0);
        if (nm < nv) {
            missing_text(d, d->members, nm, who, sizeof who);
            LOG_W("diloco", "outer step %lld: %d of %d peers present (missing:%s)", (long long)t,
                  nm, nv, who);
        }
        if (nm == 1) return ERR_OK; // the last view was ours alone
        if (d->robust) {
            int accepted = 0;
            rc = robust_reduce(d, delta, n, tag, t, nm, &accepted);
            if (rc == ERR_OK) *skip = accepted == 0;
        } else {
            char what[64];
            snprintf(what, sizeof what, "outer step %lld (try %d of 3)", (long long)t, attempt + 1);
            rc = reduce(d, delta, n, tag, d->members, nm, what);
            if (rc == ERR_OK && !agg_finite(delta, n)) {
                // the ring cannot say whose values did it: check every member's, once
#pragma omp parallel for schedule(static)
                for (size_t i = 0; i < n; i++)
                    delta[i] = d->theta_g[i] - params[i];
                int found = 0;
                rc = find_senders(d, delta, n, tag + 1, t, nm, &found);
                LOG_W("diloco",
                      "outer step %lld: the averaged pseudo-gradient is not finite: %d sender%s "
                      "found%s",
                      (long long)t, found, found == 1 ? "" : "s",
                      found ? ", leaving them out" : ", skipping the step");
                if (rc == ERR_OK && !found) *skip = 1;
                if (rc == ERR_OK && found) {
                    attempt++;
                    continue; // the next try leaves them out (nobody committed this one)
                }
            }
        }
        if (rc == ERR_OK || rc == ERR_CLOSED) return rc;
        LOG_W("diloco", "%s: agreeing again", err_msg());
        failed = 1;
        attempt++;
        // the all-reduce failed: refill delta (the call left it unchanged only on some paths)
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++)
            delta[i] = d->theta_g[i] - params[i];
    }
    if (rc == ERR_OK) {
        *out = OUT_NO_QUORUM;
        LOG_W("diloco", "outer step %lld not committed: the peers kept trying later tags",
              (long long)t);
    }
    return rc;
}

// theta_crc: theta_g's CRC as log lines print it (the same on every peer that committed the same
// outer step: the chaos runs compare them).
static uint32_t theta_crc(const diloco *d) { return d->crc_theta; }

// outer_step runs outer step outer_steps + 1 at the boundary after inner step *step (see
// diloco_after_step).
static int outer_step(diloco *d, float *params, size_t n, long *step_io) {
    long step = *step_io;
    float *delta = d->delta;
    const float *g = d->theta_g;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        delta[i] = g[i] - params[i];
    int64_t t = d->outer_steps + 1;
    int nm = 0, took = 0, skip = 0, out = OUT_COMMIT;
    double t0 = sys_now_ms();
    uint64_t sent0 = d->bytes_sent;
    int rc = outer_reduce(d, delta, params, n, t, &out, &nm, &skip);
    if (rc) return rc;
    if (out == OUT_BEHIND) { // the others took outer step t without us: their state replaces ours
        long at = step;
        if ((rc = resync(d, params, t, &took, &at))) return rc;
        if (took) {
            d->exchanges++;
            // and their step: in step with them, we reach the next boundary when they do
            char moved[64] = "";
            if (at > step) {
                *step_io = at;
                snprintf(moved, sizeof moved, ", continuing at their step %ld", at);
            }
            LOG_I("diloco", "outer step=%lld at step=%ld taken from the others theta=%08x%s",
                  (long long)d->outer_steps, step, theta_crc(d), moved);
            return ERR_OK;
        }
        LOG_W("diloco",
              "outer step %lld: left out, and no peer took it within %d ms: not committed; "
              "inner steps go on",
              (long long)t, d->dc.timeout_ms);
        out = OUT_NO_QUORUM;
    }
    if (out == OUT_NO_QUORUM) { // theta_g, the momentum and the local parameters stay
        d->no_quorum++;
        return ERR_OK;
    }
    if (skip) { // no finite aggregate: theta_g and the momentum stay, theta_local = theta_g
        pthread_mutex_lock(&d->mu);
        d->outer_steps++;
        d->skipped++;
        d->seq = 0;
        if (d->world > 1) set_quorum(d, d->members, nm);
        pthread_mutex_unlock(&d->mu);
        memcpy(params, d->theta_g, n * sizeof(float));
        LOG_W("diloco", "outer step=%lld at step=%ld skipped: no finite pseudo-gradient to apply",
              (long long)d->outer_steps, step);
        return ERR_OK;
    }
    pthread_mutex_lock(&d->mu);
    diloco_outer_update(d->theta_g, d->buf, delta, n, d->dc.lr, d->dc.momentum, d->dc.nesterov,
                        d->outer_steps == 0);
    if (d->world == 1 && d->dc.lr == 1.0f && d->dc.momentum == 0.0f) {
        // Alone, the mean pseudo-gradient is our own, and with lr 1 and no momentum the outer step
        // lands exactly on the local parameters; theta_g - (theta_g - x) can differ from x in the
        // last bit, so take x itself and keep single-peer training bitwise unchanged.
        memcpy(d->theta_g, params, n * sizeof(float));
    }
    d->outer_steps++;
    d->seq = 0;
    if (d->world > 1) {
        set_quorum(d, d->members, nm);
        seal(d);
    }
    pthread_mutex_unlock(&d->mu);
    memcpy(params, d->theta_g, n * sizeof(float));
    if (nm > 1) d->exchanges++;
    if (d->world > 1)
        LOG_I("diloco", "outer step=%lld at step=%ld peers=%d/%d sent_mb=%.2f ms=%.0f theta=%08x",
              (long long)d->outer_steps, step, nm > 1 ? nm : 1, d->world,
              (double)(d->bytes_sent - sent0) / 1e6, sys_now_ms() - t0, theta_crc(d));
    else
        LOG_I("diloco", "outer step=%lld at step=%ld peers=1/1 ms=%.0f", (long long)d->outer_steps,
              step, sys_now_ms() - t0);
    return ERR_OK;
}

int diloco_after_step(diloco *d, float *params, size_t n, long *step) {
    ASSERT(n == d->n && d->theta_g);
    int boundary = d->dc.H > 0 && *step % d->dc.H == 0;
    pthread_mutex_lock(&d->mu);
    d->step = *step;
    d->in_outer = boundary;
    pthread_mutex_unlock(&d->mu);
    if (!boundary) return ERR_OK;
    int rc = outer_step(d, params, n, step);
    pthread_mutex_lock(&d->mu);
    d->step = *step;
    d->in_outer = 0;
    pthread_mutex_unlock(&d->mu);
    return rc;
}

int diloco_save(diloco *d, ckpt_writer *w) {
    size_t shape[1] = {d->n};
    int rc = ckpt_write_tensor(w, "outer/theta_g", d->theta_g, 1, shape);
    if (!rc) rc = ckpt_write_tensor(w, "outer/momentum", d->buf, 1, shape);
    if (!rc) rc = ckpt_write_attr_i64(w, "outer_steps", d->outer_steps);
    return rc;
}

int diloco_load(diloco *d, ckpt_reader *r) {
    size_t shape[1] = {d->n};
    int64_t steps = 0;
    pthread_mutex_lock(&d->mu); // the control server may be asked already
    int rc = ckpt_read_tensor(r, "outer/theta_g", d->theta_g, 1, shape);
    if (!rc) rc = ckpt_read_tensor(r, "outer/momentum", d->buf, 1, shape);
    if (!rc) rc = ckpt_read_attr_i64(r, "outer_steps", &steps);
    if (!rc && steps < 0) rc = err_set(ERR_FORMAT, "outer_steps = %lld", (long long)steps);
    if (!rc) d->outer_steps = steps;
    seal(d);
    pthread_mutex_unlock(&d->mu);
    return rc;
}

const float *diloco_theta_g(const diloco *d) { return d->theta_g; }

int64_t diloco_outer_steps(diloco *d) {
    pthread_mutex_lock(&d->mu);
    int64_t t = d->outer_steps;
    pthread_mutex_unlock(&d->mu);
    return t;
}

void diloco_set_outer_steps(diloco *d, int64_t t) {
    pthread_mutex_lock(&d->mu);
    d->outer_steps = t;
    pthread_mutex_unlock(&d->mu);
}

void diloco_corrupt_replies(diloco *d, int n) {
    pthread_mutex_lock(&d->mu);
    d->corrupt = n;
    pthread_mutex_unlock(&d->mu);
}

void diloco_get_stats(diloco *d, diloco_stats *st) {
    memset(st, 0, sizeof *st);
    st->exchanges = d->exchanges;
    st->bytes_sent = d->bytes_sent;
    st->bytes_recv = d->bytes_recv;
    st->msgs_dropped = d->msgs_dropped;
    st->outer_steps = (uint64_t)d->outer_steps;
    st->nonfinite = d->nonfinite;
    st->clipped = d->clipped;
    st->skipped = d->skipped;
    st->no_quorum = d->no_quorum;
    st->resyncs = d->resyncs;
    st->states_sent = d->states_sent;
    st->states_bad = d->states_bad;
    st->state_retries = d->state_retries;
    st->allreduce_ms = d->outer_steps ? d->ms_sum / (double)d->outer_steps : 0;
}

void diloco_destroy(diloco *d) {
    if (!d) return;
    if (d->world > 1)
        LOG_I("diloco",
              "done outer_steps=%lld shared=%llu sent_mb=%.2f (membership %llu bytes, state "
              "requests %llu bytes)",
              (long long)d->outer_steps, (unsigned long long)d->exchanges, d->bytes_sent / 1e6,
              (unsigned long long)d->agree_sent, (unsigned long long)d->ctl_sent);
    if (d->g) peer_set_server(d->g, NULL, NULL); // waits for a request in progress
    ar_destroy(d->ar);
    pthread_mutex_destroy(&d->mu);
    free(d->theta_g);
    free(d->buf);
    free(d->delta);
    free(d->chunk_crc);
    free(d->rx_crc);
    free(d->rows);
    free(d);
}

// ---- train_sync adapter ----------------------------------------------------------------------

static int sync_after_step(void *ctx, float *params, size_t n, long *step) {
    return diloco_after_step(ctx, params, n, step);
}

static int sync_save(void *ctx, ckpt_writer *w) { return diloco_save(ctx, w); }
static int sync_join(void *ctx, float *params, size_t n, long *step) {
    return diloco_join(ctx, params, n, step);
}
static int sync_load(void *ctx, ckpt_reader *r) { return diloco_load(ctx, r); }

static void sync_metrics(void *ctx, train_sync_metrics *m) {
    diloco_stats st;
    diloco_get_stats(ctx, &st);
    m->exchanges += st.exchanges;
    m->bytes_sent += st.bytes_sent;
    m->bytes_recv += st.bytes_recv;
    m->msgs_dropped += st.msgs_dropped;
    train_sync_metric(m, "diloco_outer_steps", "outer", (double)st.outer_steps, 0);
    train_sync_metric(m, "diloco_allreduce_ms", NULL, st.allreduce_ms, 3);
    train_sync_metric(m, "diloco_nonfinite", NULL, (double)st.nonfinite, 0);
    train_sync_metric(m, "diloco_clipped", NULL, (double)st.clipped, 0);
    train_sync_metric(m, "diloco_skipped", NULL, (double)st.skipped, 0);
    train_sync_metric(m, "diloco_no_quorum", NULL, (double)st.no_quorum, 0);
    train_sync_metric(m, "diloco_state_received", NULL, (double)st.resyncs, 0);
    train_sync_metric(m, "diloco_state_sent", NULL, (double)st.states_sent, 0);
    train_sync_metric(m, "diloco_state_bad", NULL, (double)st.states_bad, 0);
}

static void sync_destroy(void *ctx) { diloco_destroy(ctx); }

int diloco_sync_create(train_sync *out, const cfg_diloco *dc, peer_group *g,
                       const train_sync_run *run, const float *params, size_t n_params) {
    memset(out, 0, sizeof *out);
    diloco *d;
    int rc =
        diloco_create(&d, dc, g, run->rank, run->world, run->run_id ^ 0xD11C0ull, params, n_params);
    if (rc) return rc;
    out->ctx = d;
    out->after_step = sync_after_step;
    out->save = sync_save;
    out->load = sync_load;
    out->join = sync_join;
    out->get_metrics = sync_metrics;
    out->destroy = sync_destroy;
    LOG_I("diloco",
          "H=%d lr=%g momentum=%g nesterov=%d dtype=%s peers=%d aggregate=%s trim=%g max_norm=%g",
          dc->H, dc->lr, dc->momentum, dc->nesterov, cfg_dtype_str(dc->dtype), run->world,
          cfg_aggregate_str(dc->aggregate), dc->trim, dc->max_norm);
    return ERR_OK;
}
