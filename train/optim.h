// optim.h: AdamW (PyTorch semantics, decoupled weight decay on tensors with >= 2 dims, as in
// nanoGPT), global-norm gradient clipping (torch.nn.utils.clip_grad_norm_) and the learning-rate
// schedule (linear warmup, then cosine decay to min_lr). The m and v slabs are laid out exactly
// like the parameters. Used by the trainer thread only.
#ifndef OPTIM_H
#define OPTIM_H

#include <stddef.h>

#include "train/base/cfg.h"
#include "train/gpt.h"

typedef struct optim_adamw optim_adamw;

// optim_create allocates zeroed m and v slabs of n floats. The caller owns *out (optim_destroy).
int optim_create(optim_adamw **out, size_t n);

// optim_destroy frees the optimizer. NULL-safe.
void optim_destroy(optim_adamw *o);

// optim_m / optim_v return the moment slabs (owned by the optimizer) for checkpointing.
float *optim_m(optim_adamw *o);
float *optim_v(optim_adamw *o);

// optim_step_count returns how many steps have been taken (the t of bias correction).
int optim_step_count(const optim_adamw *o);

// optim_set_step_count restores t after loading m and v from a checkpoint.
void optim_set_step_count(optim_adamw *o, int t);

// optim_grad_norm returns the global L2 norm of grads(n), accumulated in double.
float optim_grad_norm(const float *grads, size_t n);

// optim_clip_scale returns the factor that clip_grad_norm_ applies for a gradient norm and a
// max_norm: max_norm / (norm + 1e-6) when max_norm > 0 and norm > max_norm, else 1.
float optim_clip_scale(float norm, float max_norm);

// optim_clip_grads computes the global L2 norm of grads(n) and scales grads in place by
// optim_clip_scale, exactly as clip_grad_norm_ does. Returns the norm before clipping. (The
// trainer folds the scale into optim_step instead, saving one pass over the gradients.)
float optim_clip_grads(float *grads, size_t n, float max_norm);

// optim_step applies one AdamW step with learning rate lr to every view of the model's params
// using its grads times gscale (1, or optim_clip_scale for clipping); weight decay
// tc->weight_decay applies to views with decay set. Increments t.
void optim_step(optim_adamw *o, gpt_model *m, const cfg_train *tc, float lr, float gscale);

// optim_lr returns the learning rate for a 0-based step: linear warmup over warmup_iters from
// lr/warmup to lr, then cosine decay to min_lr at lr_decay_iters (0 = max_iters), then min_lr.
float optim_lr(const cfg_train *tc, int step);

#endif
