// sparta.h: SPARTA, sparse parameter averaging (EXO, "SPARTA: Sparse Parameter Averaging",
// section 3). Every sparta.every steps, at round r = step, every peer averages the same k =
// round(p*N) parameters with all peers: the index set I_r comes from (seed, r) on every side
// (select.h), so only values travel (wire.h) over the peer mesh (net.h). A background
// exchanger thread owns the sockets; the trainer thread gathers x_r[I_r], posts them, and applies
// completed rounds at later step boundaries, at most max_stale steps after round r. It is the only
// thread that touches parameters.
#ifndef SPARTA_H
#define SPARTA_H

#include <stddef.h>
#include <stdint.h>

#include "train/base/cfg.h"
#include "train/sync.h"

typedef struct sparta_exchanger sparta_exchanger;

// sparta_create connects to the world peers listed in nc->peers (this one is peers[rank]) and
// starts the exchanger thread for a model of n_params parameters. seed keys the index sets;
// run_id tags every message (messages of another run are dropped). Buffers for
// max_stale / every + 3 rounds are allocated here, once. On success the caller owns *out
// (sparta_destroy). Returns ERR_OK, ERR_INVAL (bad config, world < 2) or ERR_NET (cannot listen).
// Trainer thread only.
int sparta_create(sparta_exchanger **out, const cfg_sparta *sc, const cfg_net *nc, int rank,
                  int world, uint64_t seed, uint64_t run_id, size_t n_params);

// sparta_handshake checks the peers (hello.h): it sends hello (this peer's hello_text) to every
// peer, waits up to sparta.timeout_ms for theirs, and fails with ERR_PEER naming a peer whose
// configuration differs, or when no peer answered and allow_alone is 0; peers that are missing
// are logged with the reason. Afterwards the exchanger logs, once per connection, a peer that
// joins with another configuration. peers is net.peers (for the names in messages). Trainer
// thread, once, right after sparta_create. Returns ERR_OK or ERR_PEER.
int sparta_handshake(sparta_exchanger *ex, const char *hello, const char *peers, int allow_alone);

// sparta_after_step runs after optimizer step `step`. The current round is cur = step (plus a
// fixed offset once a peer that joined a running group has caught up with the others' rounds).
// If cur is a multiple of every it gathers params[I_cur] and posts round cur; then it applies, in
// round order, every round that is complete, and every round that reached its deadline (cur -
// round >= max_stale) with the peers present (a round with no other peer's values is dropped).
// With sparta.sync it first waits (at most timeout_ms) for round cur to complete. overwrite:
// x[I] = mean; correct: x[I] += mean - x_r[I]. The mean sums the present peers' values in rank
// order and divides by their number, so every peer computes bitwise the same mean. Returns
// ERR_OK. Trainer thread only.
int sparta_after_step(sparta_exchanger *ex, float *params, size_t n, long step);

// sparta_wait_round waits up to timeout_ms until every peer's values of round have arrived and
// returns 1 if they have, else 0 (also when the round is not open). For tests and diagnostics;
// it applies nothing. Trainer thread only.
int sparta_wait_round(sparta_exchanger *ex, long round, int timeout_ms);

// sparta_get_stats fills the cumulative counters. Trainer thread only.
void sparta_get_stats(sparta_exchanger *ex, train_sync_stats *st);

// sparta_destroy stops the exchanger thread, closes the mesh and frees everything. NULL-safe.
void sparta_destroy(sparta_exchanger *ex);

// sparta_sync_factory is a train_sync_factory: SPARTA when net.peers lists more than one peer
// and sparta.p > 0, else no sync.
int sparta_sync_factory(train_sync *out, const cfg *c, int rank, int world, uint64_t run_id,
                        const float *params, size_t n_params);

#endif
