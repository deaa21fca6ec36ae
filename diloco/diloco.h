// diloco.h: DiLoCo outer steps (Douillard et al., "DiLoCo: Distributed Low-Communication Training
// of Language Models", sec. 2, Algorithm 1), over the ring all-reduce (allreduce.h) on the peer
// layer's ring channel (the DDP baseline, ddp.h, uses the same all-reduce). Every H inner steps
// each peer computes the pseudo-gradient delta = theta_g - theta_local, averages it over all peers,
// and applies SGD with Nesterov momentum in PyTorch semantics; then theta_local = theta_g. The
// inner AdamW state is kept. Trainer thread only.
#ifndef DILOCO_H
#define DILOCO_H

#include <stddef.h>
#include <stdint.h>

#include "sparta/peer/peer.h"
#include "train/base/cfg.h"
#include "train/ckpt.h"
#include "train/sync.h"

typedef struct diloco diloco;

// The cumulative counters of a diloco (diloco_get_stats).
typedef struct diloco_stats {
    uint64_t exchanges;              // outer steps shared with at least one other peer
    uint64_t bytes_sent, bytes_recv; // all-reduce, membership and control-channel bytes
    uint64_t msgs_dropped;           // all-reduce messages ignored (another run or tag, malformed)
    uint64_t outer_steps;            // outer steps taken (skipped ones too)
    double allreduce_ms;             // mean time of an outer step's all-reduce
    uint64_t nonfinite;              // peers' pseudo-gradients rejected for non-finite values
    uint64_t clipped;                // pseudo-gradients clipped to diloco.max_norm
    uint64_t skipped;                // outer steps skipped: no finite aggregate
    uint64_t no_quorum;     // outer steps not committed: no majority of the last committed view
    uint64_t resyncs;       // states taken from another peer (joined, left out, behind)
    uint64_t states_sent;   // state requests answered (a joiner asks once per copy)
    uint64_t states_bad;    // copies that failed their end-to-end check
    uint64_t state_retries; // copies that failed (a bad check, a sender that died) and were
                            // tried from the next member
} diloco_stats;

// diloco_outer_update applies one outer step to theta_g(n) with the averaged pseudo-gradient
// delta(n) and momentum buffer buf(n), as torch.optim.SGD(lr, momentum=mu, nesterov):
//   buf = delta (first step) or mu*buf + delta;  update = delta + mu*buf (Nesterov) or buf;
//   theta_g -= lr * update.
// Pure; the loop is OpenMP-parallel and deterministic.
void diloco_outer_update(float *theta_g, float *buf, const float *delta, size_t n, float lr,
                         float mu, int nesterov, int first);

// diloco_create starts DiLoCo for this peer: theta_g is a copy of params(n) (identical on all
// peers at step 0: same seed; params must not be NULL), the momentum is zero. With world > 1 it
// works over the peer group g (borrowed; NULL alone): it owns the ring channel and answers the
// group's state requests (peer_set_server) with its outer state. Every buffer (theta_g, momentum,
// delta and the all-reduce's; with robust aggregation (world - 1) x n floats for the others'
// deltas) is allocated here. On success the caller owns *out
// (diloco_destroy). Returns ERR_OK or ERR_INVAL.
int diloco_create(diloco **out, const cfg_diloco *dc, peer_group *g, int rank, int world,
                  uint64_t run_id, const float *params, size_t n);

// diloco_after_step runs the outer step when step is a multiple of H (the first after H inner
// steps): delta = theta_g - params, mean over the peers present, diloco_outer_update,
// params = theta_g. The peers present are agreed on first (ar_agree), waiting at most
// diloco.timeout_ms for each; a missing peer is left out. The step is committed only when more
// than half of the members of the last committed outer step take part (no split brain): with
// fewer, nothing changes (theta_g, the momentum and params stay; training goes on) and the next
// boundary tries again. A peer that is itself left out or late takes the state of a live peer
// that committed the step instead (control channel, checked end to end). With diloco.aggregate =
// trimmed_mean or median, or diloco.max_norm > 0, the mean is replaced by an all-gather and that
// rule over the peers' deltas, each clipped to max_norm (ar_gather_group, agg.h). A delta that
// is not finite is never applied: its sender is left out and reported (peer_offence); if no
// finite aggregate remains, the step is skipped (theta_g and the momentum stay; params =
// theta_g). A peer that takes the others' state also takes their step: *step moves forward to
// it, so that it reaches the next boundary with them. Blocks meanwhile. Returns ERR_OK, or
// ERR_CLOSED / ERR_TIMEOUT / ERR_NET / ERR_PEER when the peers could not complete the step three
// times in a row or a state copy failed.
int diloco_after_step(diloco *d, float *params, size_t n, long *step);

// diloco_join runs before the first step of a peer that may be joining a running group: it asks
// every connected peer for its outer state over the control channel, and if one has taken more
// outer steps than we have (we restarted, or started late), copies its theta_g, momentum, outer
// step count and last committed view (the one furthest ahead first; a copy whose end-to-end
// CRC32C check fails, or whose sender dies, is fetched from the next), sets params = theta_g
// and sets *step (completed inner steps) to that peer's. If nobody has more outer steps but one
// is further into the same outer interval, *step moves forward to its step (params stay ours):
// the others wait at the next boundary for diloco.timeout_ms only. (A peer in an outer step,
// waiting at its boundary, counts as one step before it: our next step reaches the boundary.)
// A fresh start (nobody ahead) changes nothing. Returns ERR_OK or the copy's error (every
// member's copy failed).
int diloco_join(diloco *d, float *params, size_t n, long *step);

// diloco_save writes theta_g and the momentum as outer/theta_g and outer/momentum (1-D, n) and
// the attribute outer_steps; diloco_load reads them back (sizes must match). ERR_OK or ckpt_'s.
int diloco_save(diloco *d, ckpt_writer *w);
int diloco_load(diloco *d, ckpt_reader *r);

// diloco_theta_g returns the global parameters (owned by d; never aliases the live params).
const float *diloco_theta_g(const diloco *d);

// diloco_outer_steps returns the outer steps committed (or taken from others). Any thread.
int64_t diloco_outer_steps(diloco *d);

// diloco_set_outer_steps sets the count of outer steps taken (benchmarks and tests: a peer that
// is ahead, or one set back to copy again; a run gets it from its checkpoint). Any thread.
void diloco_set_outer_steps(diloco *d, int64_t t);

// diloco_corrupt_replies is for tests: the next n theta_g chunks that d serves to a joining peer
// have one bit changed after their CRCs were taken (a sender whose memory or code is bad), which
// the joiner's end-to-end check must catch. Any thread.
void diloco_corrupt_replies(diloco *d, int n);

// diloco_get_stats fills *st with the cumulative counters. Trainer thread only.
void diloco_get_stats(diloco *d, diloco_stats *st);

// diloco_destroy stops serving state requests and frees everything (not the group). NULL-safe.
void diloco_destroy(diloco *d);

// diloco_sync_create builds DiLoCo as a train_sync (the caller decides that it runs: diloco.H > 0,
// alone or with peers): diloco_create for peer run->rank of run->world with params(n_params) and a
// run id derived from run->run_id, over group g. The hooks are
// after_step, save, load, join and get_metrics, which reports the common counters and
// diloco_outer_steps, diloco_allreduce_ms, diloco_nonfinite, diloco_clipped and
// diloco_skipped. On success *out owns the diloco (out->destroy); on
// failure *out is zeroed. Returns ERR_OK or the error of diloco_create. Trainer thread.
int diloco_sync_create(train_sync *out, const cfg_diloco *dc, peer_group *g,
                       const train_sync_run *run, const float *params, size_t n_params);

#endif
