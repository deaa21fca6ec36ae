// ddp.h: the DDP baseline (train.mode = ddp): after every backward pass each peer replaces its
// gradients by their mean over all peers, with the ring all-reduce of the peer layer
// (sparta/peer/allreduce.h) on the all-reduce mesh that DiLoCo uses (ports of net.peers shifted by
// the number of peers), so every peer takes the same optimizer step. Trainer thread only.
#ifndef DDP_H
#define DDP_H

#include <stddef.h>
#include <stdint.h>

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

// ddp_create prepares DDP for peer rank of world (>= 2) with gradient vectors of n floats: it opens
// the all-reduce mesh, allocates the all-reduce's buffers (ar_create, values of pc->dtype on the
// wire) and waits up to pc->timeout_ms for the peers. run_id (non-zero) tags every message. On
// success the caller owns *out (ddp_destroy). Returns ERR_OK, ERR_INVAL (world < 2, bad
// net.peers) or ERR_NET (cannot listen).
int ddp_create(ddp **out, const cfg_ddp *pc, const cfg_net *nc, int rank, int world,
               uint64_t run_id, size_t n);

// ddp_handshake checks the peers of the mesh as sparta_handshake does (hello.h), waiting at most
// ddp.timeout_ms. Call once, right after ddp_create. Returns ERR_OK or ERR_PEER.
int ddp_handshake(ddp *d, const char *hello, const char *peers, int allow_alone);

// ddp_average replaces grads(n) by the mean over all peers of their gradients of step `step`
// (ar_mean with tag step; every peer computes bitwise the same mean). Blocks until done. Returns
// ERR_OK, or ERR_TIMEOUT / ERR_CLOSED / ERR_NET when a peer did not take part within
// ddp.timeout_ms (grads are then unchanged; training stops).
int ddp_average(ddp *d, float *grads, size_t n, long step);

// ddp_get_stats fills *st with the cumulative counters.
void ddp_get_stats(ddp *d, ddp_stats *st);

// ddp_destroy logs the totals, closes the mesh and frees everything. NULL-safe.
void ddp_destroy(ddp *d);

// ddp_sync_create builds DDP as a train_sync for peer run->rank of run->world (the caller decides
// that it runs: train.mode = ddp with at least two peers): ddp_create with n_params and a run id
// derived from run->run_id, then ddp_handshake with run->hello. The hooks are after_backward
// (ddp_average) and get_metrics, which reports the common counters and ddp_steps_averaged and
// ddp_allreduce_ms. On success *out owns the ddp (out->destroy); on failure *out is zeroed.
// Returns ERR_OK or the error of ddp_create or ddp_handshake.
int ddp_sync_create(train_sync *out, const cfg_ddp *pc, const cfg_net *nc,
                    const train_sync_run *run, size_t n_params);

#endif
