// ddp.h: the DDP baseline (train.mode = ddp): after every backward pass each peer replaces its
// gradients by their mean over all peers, with the ring all-reduce of the peer layer
// (sparta/peer/allreduce.h) on the peer layer's ring channel, so every peer takes the same
// optimizer step. Trainer thread only.
#ifndef DDP_H
#define DDP_H

#include <stddef.h>
#include <stdint.h>

#include "sparta/peer/peer.h"
#include "train/base/cfg.h"
#include "train/sync.h"

typedef struct ddp ddp;

// The cumulative counters of a ddp (ddp_get_stats).
typedef struct ddp_stats {
    uint64_t steps_averaged;         // steps whose gradients were averaged with the peers
    uint64_t bytes_sent, bytes_recv; // all-reduce bytes (headers included)
    uint64_t msgs_dropped;           // all-reduce messages ignored (another run or tag, malformed)
    double allreduce_ms;             // mean time of a gradient all-reduce
} ddp_stats;

// ddp_create prepares DDP for peer rank of world (>= 2) with gradient vectors of n floats over the
// peer group g (borrowed; DDP owns its ring channel): it allocates the all-reduce's buffers
// (ar_create, values of pc->dtype on the wire). run_id (non-zero) tags every message. On success
// the caller owns *out (ddp_destroy). Returns ERR_OK or ERR_INVAL (world < 2, no group).
int ddp_create(ddp **out, const cfg_ddp *pc, peer_group *g, int rank, int world, uint64_t run_id,
               size_t n);

// ddp_average replaces grads(n) by the mean over all peers of their gradients of step `step`
// (ar_mean with tag step; every peer computes bitwise the same mean). Blocks until done. Returns
// ERR_OK, or ERR_TIMEOUT / ERR_CLOSED / ERR_NET when a peer did not take part within
// ddp.timeout_ms (grads are then unchanged; training stops).
int ddp_average(ddp *d, float *grads, size_t n, long step);

// ddp_get_stats fills *st with the cumulative counters.
void ddp_get_stats(ddp *d, ddp_stats *st);

// ddp_destroy logs the totals and frees everything (not the group). NULL-safe.
void ddp_destroy(ddp *d);

// ddp_sync_create builds DDP as a train_sync for peer run->rank of run->world (the caller decides
// that it runs: train.mode = ddp with at least two peers): ddp_create with n_params and a run id
// derived from run->run_id, over group g. The hooks are after_backward
// (ddp_average) and get_metrics, which reports the common counters and ddp_steps_averaged and
// ddp_allreduce_ms. On success *out owns the ddp (out->destroy); on failure *out is zeroed.
// Returns ERR_OK or the error of ddp_create.
int ddp_sync_create(train_sync *out, const cfg_ddp *pc, peer_group *g, const train_sync_run *run,
                    size_t n_params);

#endif
