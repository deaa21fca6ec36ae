// sparta.h: SPARTA, sparse parameter averaging (EXO, "SPARTA: Sparse Parameter Averaging",
// section 3). Every sparta.every steps, at round r = step, every peer averages the same k =
// round(p*N) parameters with all peers: the index set I_r comes from (seed, r) on every side
// (select.h), so only values travel (wire.h) on the peer layer's SPARTA channel (peer.h). A
// background exchanger thread owns the sockets; the trainer thread gathers x_r[I_r], posts them,
// and applies completed rounds at later step boundaries, at most max_stale steps after round r. It
// is the only thread that touches parameters.
#ifndef SPARTA_H
#define SPARTA_H

#include <stddef.h>
#include <stdint.h>

#include "sparta/peer/peer.h"
#include "train/base/cfg.h"
#include "train/sync.h"

typedef struct sparta_exchanger sparta_exchanger;

// The cumulative counters of an exchanger (sparta_get_stats).
typedef struct sparta_stats {
    uint64_t exchanges; // rounds applied with another peer's values, values filed from a peer,
                        // and messages sent to a connected peer (0: nothing was ever exchanged)
    uint64_t bytes_sent, bytes_recv; // message bytes handed to / received from the mesh
    uint64_t rounds_done;            // rounds applied with every peer's values
    uint64_t rounds_late;            // rounds applied at the deadline with some peers left out
    uint64_t rounds_dropped;         // rounds dropped at the deadline (no other peer's values)
    uint64_t msgs_dropped;           // malformed, foreign, duplicate or too-late messages
    uint64_t nonfinite; // rounds of a peer (ours too) left out for a non-finite value, and ring
                        // rounds dropped for a non-finite mean
    double stale_mean, stale_max; // steps between posting a round and applying it
    double latency_ms;            // mean time from posting a round to its completion
    int round_peers;              // peers (this one included) averaged in the last round
                                  // applied (0: none yet)
} sparta_stats;

// sparta_create starts the exchanger thread for a model of n_params parameters, this peer
// being rank of world, over the peer group g (borrowed: it must outlive the exchanger, which owns
// its SPARTA channel). seed keys the index sets; run_id tags every message (messages of another
// run are dropped). It does not wait for the peers (the caller's start-up does, hello_wait):
// rounds a missing peer misses complete late or are dropped. Buffers for max_stale / every + 3
// rounds are allocated here, once. On success the caller owns *out (sparta_destroy). Returns
// ERR_OK or ERR_INVAL (bad config, world < 2, no group). Trainer thread only.
int sparta_create(sparta_exchanger **out, const cfg_sparta *sc, peer_group *g, int rank, int world,
                  uint64_t seed, uint64_t run_id, size_t n_params);

// sparta_after_step runs after optimizer step `step`. The current round is cur = step (plus a
// fixed offset once a peer that joined a running group has caught up with the others' rounds).
// If cur is a multiple of every it gathers params[I_cur] and posts round cur; then it applies, in
// round order, every round that is complete, and every round that reached its deadline (cur -
// round >= max_stale) with the peers present (a round with no other peer's values is dropped).
// With sparta.sync it first waits (at most timeout_ms) for round cur to complete. overwrite:
// x[I] = mean; correct: x[I] += mean - x_r[I]. The mean sums the present peers' values in rank
// order and divides by their number, so every peer computes bitwise the same mean; with
// sparta.aggregate = trimmed_mean or median the rule of agg.h replaces it, per coordinate. A
// peer whose message held a non-finite value is left out of that round (counted; the exchanger
// reports it with peer_offence, which expels it at net.max_offences); if ours are not finite,
// the others' aggregate overwrites ours. Returns ERR_OK. Trainer thread only.
int sparta_after_step(sparta_exchanger *ex, float *params, size_t n, long step);

// sparta_wait_round waits up to timeout_ms until every peer's values of round have arrived and
// returns 1 if they have, else 0 (also when the round is not open). For tests and diagnostics;
// it applies nothing. Trainer thread only.
int sparta_wait_round(sparta_exchanger *ex, long round, int timeout_ms);

// sparta_get_stats fills *st with the cumulative counters. Trainer thread only.
void sparta_get_stats(sparta_exchanger *ex, sparta_stats *st);

// sparta_destroy stops the exchanger thread and frees everything (not the group). NULL-safe.
void sparta_destroy(sparta_exchanger *ex);

// sparta_sync_create builds SPARTA as a train_sync for peer run->rank of run->world (>= 2; the
// caller decides that SPARTA runs: sparta.p > 0, several peers, train.mode = local): it calls
// sparta_create with seed (train.seed, which keys the index sets) and a run id derived from
// run->run_id and this build's selection code, over group g (borrowed). The hooks
// are after_step and get_metrics, which reports the common counters and sparta_rounds_done,
// sparta_rounds_late, sparta_rounds_dropped, sparta_stale_mean, sparta_stale_max,
// sparta_xchg_ms, sparta_round_peers and sparta_nonfinite. On success *out owns the exchanger
// (out->destroy); on failure *out is zeroed. Returns ERR_OK or the error of sparta_create. Trainer
// thread.
int sparta_sync_create(train_sync *out, const cfg_sparta *sc, peer_group *g,
                       const train_sync_run *run, uint64_t seed, size_t n_params);

#endif
