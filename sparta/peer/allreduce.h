// allreduce.h: a bandwidth-optimal ring all-reduce (mean) of a flat float vector over the peer
// layer's ring channel, for DiLoCo outer steps and the DDP baseline, and an all-gather of the
// same vectors for rules a sum cannot compute (ar_gather_group). In the ring each peer sends and
// receives 2 (P-1)/P * n values (reduce-scatter, then all-gather), as fp32, bf16 or int8, and every
// peer ends with bitwise the same result. One context per group; ar_mean is called from one thread.
//
// Ring: x(n) is cut into P segments, segment s = [floor(s n / P), floor((s+1) n / P)). Rank r
// receives only from r-1 and sends only to r+1 (mod P). In reduce-scatter step t = 0 .. P-2 it
// sends segment r-t and adds the values of segment r-t-1 it receives to its own; after P-1 steps
// rank r holds the sum of segment r+1 and divides it by P. In all-gather step t = 0 .. P-2 it
// sends segment r+1-t and stores the segment r-t it receives. So segment s is summed in the
// fixed order ((x_s + x_{s+1}) + ... + x_{s+P-1}) / P (ranks mod P, float arithmetic; each
// partial sum passes through the wire dtype on every hop).
//
// Messages (wire.h): kind WIRE_RING_RS or WIRE_RING_AG, round = the caller's tag, k = n,
// offset = index in x of the chunk's first value, count = values in the chunk. A segment goes
// in chunks of C values from its start, C = wire_max_count(dtype, AR_MSG_BYTES) rounded down to a
// multiple of WIRE_INT8_BLOCK (fp32 258,048, bf16 520,192, int8 1,044,480), so int8 blocks
// start at multiples of 4096 from the segment's start. Empty segments (n < P) send nothing. The
// bytes a peer sends in one call are therefore exactly
//   sum over the P-1 segments s != r+1, then over the P-1 segments s != r+2, of
//   sum over the chunks c of s of (WIRE_HEADER + wire_payload_size(dtype, count(c))),
// and it receives the same sum over segments s != r and s != r+1.
//
// Identical results: only the owner of a segment (rank s-1) computes its mean; it encodes it
// once, keeps the DECODED value, and every other peer stores the decoded message. Forwarders
// re-encode what they decoded, which reproduces the same bytes for every dtype (bf16 values are
// exact in bf16; int8 scales are fixed points, see wire.h).
//
// Error for int8 (bf16 likewise, with max|block| / 127 replaced by |value| * 2^-8): with S_j the
// partial sum of segment s after j peers as it is encoded on hop j (j = 1 .. P-1) and m the
// final mean, each value is off the exact mean by at most
//   (1/P) sum_j max|block of S_j| / 127  +  max|block of m| / 127
// (the codec's round trip is at most max|block| / 127, in fact half of it).
#ifndef ALLREDUCE_H
#define ALLREDUCE_H

#include <stddef.h>
#include <stdint.h>

#include "sparta/peer/peer.h"

#define AR_MAX_WORLD 256 // peers per group
// Bytes per all-reduce message: 1 MiB, not a whole frame (8 MiB), so that a small message on
// another channel of the same link (a SPARTA round) waits behind at most 1 MiB of the ring.
#define AR_MSG_BYTES ((size_t)1 << 20)

typedef struct ar_ctx ar_ctx;

typedef struct ar_stats {
    uint64_t bytes_sent;   // message bytes (headers included) handed to the group
    uint64_t bytes_recv;   // message bytes taken from the group, dropped messages included
    uint64_t msgs_dropped; // messages ignored: malformed, another run or tag, unexpected chunk
    double ms;             // wall time of the call
} ar_stats;

// ar_create prepares the all-reduce of up to max_n floats for this peer (rank of world) over
// group g, which is borrowed (it must outlive the context), on channel ch (PEER_CH_RING for
// DiLoCo and DDP, PEER_CH_SPARTA for SPARTA's ring mode), which the context owns: ar_mean takes
// every message that arrives on it. run_id (non-zero) is put in every
// message and messages of other runs are dropped. dtype is WIRE_FP32, WIRE_BF16 or WIRE_INT8. Every
// buffer is allocated and touched here: a work vector of max_n floats (results are built there and
// copied to x only on success), one message of FRAME_MAX_PAYLOAD bytes (agreement), and 20 send
// slots of one message each (at most AR_MSG_BYTES, less when max_n needs less), which hold ring
// messages while the peer layer writes them without copying (a call may return with some still
// in flight; the next call or ar_destroy reclaims them). On success the caller
// owns *out (ar_destroy). Returns ERR_OK or ERR_INVAL naming the bad argument (channel, rank,
// world, dtype, run_id, max_n > UINT32_MAX).
int ar_create(ar_ctx **out, peer_group *g, int ch, int rank, int world, uint64_t run_id,
              size_t max_n, int dtype);

// ar_destroy lets the sends of the last call that are still in flight be written (at most 10 s;
// the others may need them to finish that call), cancels what is left and frees the context
// (not the group). NULL-safe.
void ar_destroy(ar_ctx *c);

// ar_mean replaces x(n) by the mean over all peers of their x(n): the sum in ring order (above),
// divided by world. Every peer must call it with the same n and tag; tags must grow from call to
// call (e.g. the outer step, or SPARTA's round): messages of an earlier tag are dropped and
// counted, and ring messages of a later tag (a faster peer already in its next call) are kept,
// up to 256 messages, for the call of that tag. Blocks until done. timeout_ms
// (> 0) bounds every wait: ERR_TIMEOUT if for that long no expected message arrives and no send
// can be queued (a missing or stalled peer). A member whose link was up when the call began and
// goes down during it ends the call with ERR_PEER (it left: the ring cannot finish): within about
// 100 ms if it is a neighbour we still need, else once the ring has made no progress for 500 ms
// (a member that finished the call and went costs nothing). Returns ERR_OK; ERR_TIMEOUT; ERR_PEER;
// ERR_CLOSED if the group is closed (peer_group_close from another thread aborts a call this way);
// ERR_NET; or ERR_INVAL for n > max_n or timeout_ms <= 0. On failure x is unchanged and the round
// is lost (peers may disagree on whether it completed; the caller decides). world == 1 or n == 0: x
// is left as is and ERR_OK returned at once. st (may be NULL) receives this call's counters, on
// failure too. Allocates nothing. Not thread-safe: one call at a time per context.
int ar_mean(ar_ctx *c, float *x, size_t n, uint64_t tag, int timeout_ms, ar_stats *st);

// ar_mean_group is ar_mean over the members only: members(nm) are ascending ranks that
// include this peer, the same list on every member (from ar_agree), and the ring runs over them
// in that order (positions replace ranks in the schedule above; the mean divides by nm). Other
// peers' messages are dropped. nm == 1: x is left as is. Same returns as ar_mean, plus ERR_INVAL
// for a bad member list.
int ar_mean_group(ar_ctx *c, float *x, size_t n, uint64_t tag, const int *members, int nm,
                  int timeout_ms, ar_stats *st);

// ar_gather_group gives every member every other member's x(n): an all-gather over the members
// (ascending ranks including this peer, from ar_agree, the same list on every member), for
// aggregation rules a sum cannot compute (agg.h) and for finding who sent values that are not
// finite. Each member sends its x straight to every other member (no relay can change what
// another member sent), (nm - 1) * n values each way, against the ring's 2 (nm - 1) / nm * n.
// Messages are WIRE_GATHER (round = tag, k = n, offset, count), in the ring's chunks; the other
// rules of ar_mean (tags grow, later tags' messages kept, timeout_ms per wait, a member that
// leaves ends the call with ERR_PEER, ar_cancel) hold too. rows (by position in members) receive
// the values: rows[i] gets member i's n values as decoded from the wire, and rows[pos] (this
// peer's; may be x itself) our own as the others decode them (fp32: x; bf16, int8: rounded by
// the codec), so every member holds the same numbers. rows may be NULL: the values are only
// checked (decoded into the context's work vector), not kept. bad(nm) is set per position: 1 if
// a chunk of that member held a value that is not finite (its row is then incomplete), else 0
// (ours: 0; check x yourself). Returns ERR_OK (every member's values arrived and ours went out),
// ERR_TIMEOUT, ERR_PEER, ERR_CLOSED, ERR_NET or ERR_INVAL as ar_mean_group; on failure rows
// hold partial values. nm == 1 or n == 0: only rows[pos] is filled. st (may be NULL) receives
// the counters. Allocates nothing. Same thread rules as ar_mean.
int ar_gather_group(ar_ctx *c, const float *x, size_t n, uint64_t tag, const int *members, int nm,
                    int timeout_ms, float *const *rows, unsigned char *bad, ar_stats *st);

// ar_agree decides with the other peers who takes part in the all-reduce `tag`, so that a
// missing peer cannot stall it. It starts from the peer group's view: only members with a live
// link are waited for (a dead peer's link is down, so it costs no timeout), and a member whose
// link goes down during the agreement stops being waited for. Two rounds of small messages (wire
// kinds WIRE_HERE, WIRE_VIEW):
//   1. send HERE(tag) to every peer; collect HEREs (and VIEWs) until every linked peer was heard
//      or timeout_ms passed. The view V is this peer plus those heard.
//   2. send VIEW(tag, V) to every peer (the ones not heard too: that tells a late peer it is
//      out); wait up to timeout_ms for the VIEW of each linked member of V. The members are the
//      peers of V whose VIEW arrived, intersected with every such VIEW.
// When every peer that is up is heard within timeout_ms, all of them compute the same members;
// a peer that dies in between can make them differ, and the all-reduce then fails (the caller
// may agree again with a new tag). A peer that comes after the others decided (its link came up
// just after they began) is not waited for: a member that has agreed answers its HEREs, in
// ar_mean_group and in its next ar_agree, with the VIEW it sent, which leaves the late peer out;
// a VIEW without this peer ends its wait at once (it cannot be a member any more). Such a peer
// then sends a VIEW without itself, which the others read as "not me" only (its real view may
// lack peers it had not heard yet, which would otherwise count themselves out).
// On ERR_OK, members(*nm) holds the ascending ranks, or *nm = 0 when this peer was left out (it
// arrived after the others had decided). *ahead is set to 1, and the call returns at once, if a
// message of a later tag arrived (the others are past this call: this peer is late), else 0.
// Ring messages of this tag that arrive early are kept for the ar_mean_group that
// follows; everything else is dropped and counted in st (may be NULL). Returns ERR_OK,
// ERR_CLOSED or ERR_INVAL. world == 1: members = {0} at once.
int ar_agree(ar_ctx *c, uint64_t tag, int timeout_ms, int *members, int *nm, int *ahead,
             ar_stats *st);

// ar_agree_except is ar_agree that leaves out the ranks p with except[p] set (except has world
// entries; NULL: none; this peer's own entry is ignored): they are not waited for and not put in
// the view this peer sends, so the intersection leaves them out on every member, even on members
// that heard them (DiLoCo leaves out a peer that sent non-finite values, for the rest of that
// outer step); their messages are ignored (a later tag of theirs does not set *ahead). A
// left-out peer learns it from the VIEWs (*nm = 0 there).
int ar_agree_except(ar_ctx *c, uint64_t tag, int timeout_ms, const unsigned char *except,
                    int *members, int *nm, int *ahead, ar_stats *st);

#define AR_CANCEL_ALL UINT64_MAX

// ar_cancel makes the call of `tag` that runs now or comes later (AR_CANCEL_ALL: every call)
// return ERR_CLOSED at its next step, with x unchanged. Any thread: the one way to stop a call
// from outside without closing the group (SPARTA gives up a ring round past its deadline, and
// stops its exchanger).
void ar_cancel(ar_ctx *c, uint64_t tag);

// ar_newest_tag returns the largest tag of a valid message this context has received (0: none):
// how far the other peers have got. Same thread as ar_mean.
uint64_t ar_newest_tag(const ar_ctx *c);

#endif
