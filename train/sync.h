// sync.h: the interface between the trainer loop and the modules that synchronise peers
// (sparta/, diloco/). train/ never includes their headers: train/cmd/main.c hands the train command
// a factory that builds a train_sync, and the loop calls it after every optimizer step. All hooks
// run on the trainer thread; an implementation may run its own threads behind them.
#ifndef SYNC_H
#define SYNC_H

#include <stddef.h>
#include <stdint.h>

#include "train/base/cfg.h"
#include "train/ckpt.h"

// What a sync module does, so the progress line shows only its own fields.
enum { TRAIN_SYNC_SPARTA = 1, TRAIN_SYNC_DILOCO = 2, TRAIN_SYNC_DDP = 4 };

// Cumulative counters of a sync module, for the progress line and metrics.csv.
typedef struct train_sync_stats {
    unsigned modes;       // TRAIN_SYNC_* bits of the modules behind these counters
    uint64_t exchanges;   // exchanges with at least one other peer: SPARTA rounds applied, values
                          // received or sent to a connected peer, DiLoCo outer steps shared, DDP
                          // steps averaged
    uint64_t outer_steps; // DiLoCo outer steps taken
    uint64_t bytes_sent, bytes_recv; // message bytes handed to / received from the network
    uint64_t rounds_done;            // SPARTA rounds applied with every peer's values
    uint64_t rounds_late;            // rounds applied at the deadline with some peers left out
    uint64_t rounds_dropped;         // rounds dropped at the deadline (no other peer's values)
    uint64_t msgs_dropped;           // malformed, foreign, duplicate or too-late messages
    double stale_mean, stale_max;    // steps between a round and its application
    double latency_ms; // mean time of an exchange: SPARTA from posting a round to its completion,
                       // DiLoCo an outer all-reduce, DDP a gradient all-reduce
} train_sync_stats;

typedef struct train_sync {
    void *ctx;
    // after_step runs after optimizer step `step` (1-based count of completed steps) and may
    // read and write params(n). Returns ERR_OK or an error that stops training.
    int (*after_step)(void *ctx, float *params, size_t n, long step);
    // after_backward runs when a step's gradients grads(n) are complete (every micro-batch),
    // before clipping and the optimizer step; DDP averages them here. May be NULL.
    int (*after_backward)(void *ctx, float *grads, size_t n, long step);
    // save and load write and read the module's state in a checkpoint (DiLoCo: /outer/...).
    // May be NULL. Return ERR_OK or the ckpt_ error.
    int (*save)(void *ctx, ckpt_writer *w);
    int (*load)(void *ctx, ckpt_reader *r);
    // join runs once before the first step (after a resume's state is loaded): a peer that joins
    // a running group takes the group's state from a live peer, overwriting params(n), and may
    // move *step (completed steps) forward; the trainer then continues from *step. May be NULL.
    // Returns ERR_OK or an error that stops training.
    int (*join)(void *ctx, float *params, size_t n, long *step);
    void (*get_stats)(void *ctx, train_sync_stats *st);
    void (*destroy)(void *ctx);
} train_sync;

// train_sync_chain combines two sync modules into one that runs a's hooks, then b's, and sums
// their counters. Either may be empty (no hooks). On success *out owns both (its destroy
// destroys them). Returns ERR_OK.
int train_sync_chain(train_sync *out, const train_sync *a, const train_sync *b);

// A factory builds the sync module for a run: *out is left zeroed (no sync) when the config asks
// for none. rank and world come from the command line or environment; run_id identifies the run
// (model config and seed) on the wire; params(n_params) are the starting parameters (borrowed).
// Returns ERR_OK or an error with a message.
typedef int (*train_sync_factory)(train_sync *out, const cfg *c, int rank, int world,
                                  uint64_t run_id, const float *params, size_t n_params);

#endif
