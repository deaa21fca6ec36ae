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

#define TRAIN_SYNC_MAX_METRICS 40 // named metrics of all the modules of one run together

// One named figure of a sync module, for metrics.csv and the progress line. name is its
// metrics.csv column and starts with the module's prefix ("sparta_rounds_done",
// "diloco_outer_steps", "ddp_allreduce_ms"); label is its key in the progress line ("rounds"), or
// NULL to keep it out of the line. Both are static strings.
typedef struct train_metric {
    const char *name, *label;
    double value;
    int decimals; // digits after the point in metrics.csv (0: a count); the progress line shows
                  // at most one
} train_metric;

// What the sync modules of a run report: the counters that every module has, summed over the
// modules, then each module's own named metrics, module after module. A module reports the same
// names in the same order at every call, so the metrics.csv header, written from the first
// report, holds for the whole run.
typedef struct train_sync_metrics {
    uint64_t exchanges; // exchanges with at least one other peer: SPARTA rounds applied, values
                        // received or sent to a connected peer, DiLoCo outer steps shared, DDP
                        // steps averaged (a run with peers that ends at 0 trained alone)
    uint64_t bytes_sent, bytes_recv; // message bytes handed to / received from the network
    uint64_t msgs_dropped;           // messages refused: malformed, foreign, duplicate, too late
    // The peer group's view, set by the group (0 without one): this process's member id, the
    // view's epoch, its members (this one included) and the other members linked to it now.
    uint64_t member_id, epoch;
    int members, peers_connected;
    int n; // metrics[0 .. n) are set
    train_metric metrics[TRAIN_SYNC_MAX_METRICS];
} train_sync_metrics;

// train_sync_metric appends the metric (name, label, value, decimals) to m; name and label must
// be static strings. ASSERTs that m has room (TRAIN_SYNC_MAX_METRICS). Any thread, one m at a time.
void train_sync_metric(train_sync_metrics *m, const char *name, const char *label, double value,
                       int decimals);

// What every sync module is told about its run besides its own config sections (main.c fills it).
typedef struct train_sync_run {
    int rank, world;   // this peer and the ranks its group may hold (cfg_group_size)
    uint64_t run_id;   // identifies the run on the wire (model config and seed)
    const char *hello; // the start-up handshake text of the whole config (borrowed for the call)
} train_sync_run;

typedef struct train_sync {
    void *ctx;
    // after_step runs after optimizer step *step (1-based count of completed steps) and may
    // read and write params(n), and move *step forward (DiLoCo: a peer that took the others'
    // state takes their step; the trainer continues from *step, its data position with it).
    // Returns ERR_OK or an error that stops training.
    int (*after_step)(void *ctx, float *params, size_t n, long *step);
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
    // get_metrics adds the module's counters to the common fields of m and appends its named
    // metrics (train_sync_metric); the caller zeroes m first. May be NULL (nothing to report).
    void (*get_metrics)(void *ctx, train_sync_metrics *m);
    // destroy stops the module's threads, closes its connections and frees ctx. May be NULL.
    void (*destroy)(void *ctx);
} train_sync;

// train_sync_chain combines two sync modules into one that runs a's hooks, then b's; its
// metrics are a's, then b's (the common counters summed). Either may be empty (no hooks). On
// success *out owns both (its destroy destroys them). Returns ERR_OK.
int train_sync_chain(train_sync *out, const train_sync *a, const train_sync *b);

// A factory builds the sync modules of a run from the whole config (train/cmd/main.c composes
// them, handing each module only its own sections): *out is left zeroed (no sync) when the config
// asks for none. *rank is the rank asked for (command line, environment; -1: any, with
// net.join) and on return the rank this peer has (a rendezvous may give another); world comes
// from net.peers or net.world; run_id identifies the run (model config and seed) on the wire;
// params(n_params) are the starting parameters (borrowed); start_step is the step this peer
// starts at (> 0: it resumes a checkpoint, of a run whose peers may have finished already).
// Returns ERR_OK or an error with a message. Trainer thread.
typedef int (*train_sync_factory)(train_sync *out, const cfg *c, int *rank, int world,
                                  uint64_t run_id, const float *params, size_t n_params,
                                  long start_step);

#endif
