// trainer.h: one peer's training state and step: model, AdamW, data loaders, learning-rate
// schedule, evaluation and checkpoints (save and bit-exact resume). The command-line loop,
// progress output and signals live in train_cmd.c. One trainer is driven by one thread.
#ifndef TRAINER_H
#define TRAINER_H

#include <stdint.h>

#include "train/base/cfg.h"
#include "train/gpt.h"
#include "train/sync.h"

typedef struct trainer trainer;

// Figures of the last optimizer step.
typedef struct trainer_stats {
    int step;        // steps completed after this one (1-based)
    float loss;      // mean train loss over the step's micro-batches
    float lr;        // learning rate used
    float grad_norm; // global gradient norm before clipping
    double ms;       // wall time of the step
    long tokens;     // tokens processed by the step
} trainer_stats;

// trainer_create opens the data folder c->data.dir (train.bin, optional val.bin, meta.json),
// builds the model (vocab_size from the data unless set) and optimizer, and either initialises
// the parameters from c->train.seed or, when resume_path is non-NULL, restores parameters,
// AdamW state, step and data position from that checkpoint (its architecture must match).
// c is copied. On success the caller owns *out. Returns ERR_OK or the error (data, config,
// checkpoint), with a message naming the file or key.
int trainer_create(trainer **out, const cfg *c, const char *resume_path);

// trainer_destroy frees the trainer. NULL-safe.
void trainer_destroy(trainer *t);

// trainer_set_sync installs the peer synchronisation run after every optimizer step (copied;
// its ctx stays owned by the caller). Without it the trainer trains alone.
void trainer_set_sync(trainer *t, const train_sync *sync);

// trainer_load_sync restores the sync module's state (e.g. DiLoCo's outer state) from the
// checkpoint at path, when the module keeps one. Returns ERR_OK or the error naming the file.
int trainer_load_sync(trainer *t, const char *path);

// trainer_join runs the sync module's join hook (a peer joining a running group adopts its
// parameters and step); when the step moves, the data stream continues from that step's
// position. Call once, after trainer_load_sync. Returns ERR_OK or the hook's error.
int trainer_join(trainer *t);

// trainer_step runs one optimizer step (grad_accum micro-batches, clipping, AdamW), then the
// sync hook, and fills *st. Returns ERR_OK or the sync hook's error.
int trainer_step(trainer *t, trainer_stats *st);

// trainer_eval returns the mean val loss over eval_iters fixed batches of val.bin (the same
// batches at every call), or NAN when there is no validation data.
float trainer_eval(trainer *t);

// trainer_save writes a full checkpoint (weights, AdamW m and v, step, data position, RNG state,
// tokenizer, effective config) atomically to path. Returns ERR_OK or ERR_IO.
int trainer_save(trainer *t, const char *path);

// trainer_set_rank makes this peer rank `rank` (given by a rendezvous after the trainer was made):
// the training data stream becomes that rank's, at the same position, and the effective config
// says so. Returns ERR_OK or the loader's error. Trainer thread, before the first step.
int trainer_set_rank(trainer *t, int rank);

// trainer_step_index returns the number of optimizer steps completed.
int trainer_step_index(const trainer *t);

// trainer_model returns the model (owned by the trainer).
gpt_model *trainer_model(trainer *t);

// trainer_cfg returns the trainer's effective config.
const cfg *trainer_cfg(const trainer *t);

// trainer_tok_spec returns the tokenizer description of the training data (owned by trainer).
const char *trainer_tok_spec(const trainer *t);

#endif
