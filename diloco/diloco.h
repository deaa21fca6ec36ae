// diloco.h: DiLoCo outer steps (Douillard et al., "DiLoCo: Distributed Low-Communication Training
// of Language Models", sec. 2, Algorithm 1) and the DDP baseline, over a ring all-reduce
// (allreduce.h) on a mesh of their own. Every H inner steps each peer computes the pseudo-gradient
// delta = theta_g - theta_local, averages it over all peers, and applies SGD with Nesterov momentum
// in PyTorch semantics; then theta_local = theta_g. The inner AdamW state is kept. Trainer thread
// only.
#ifndef DILOCO_H
#define DILOCO_H

#include <stddef.h>
#include <stdint.h>

#include "train/base/cfg.h"
#include "train/ckpt.h"
#include "train/sync.h"

typedef struct diloco diloco;

// diloco_outer_update applies one outer step to theta_g(n) with the averaged pseudo-gradient
// delta(n) and momentum buffer buf(n), as torch.optim.SGD(lr, momentum=mu, nesterov):
//   buf = delta (first step) or mu*buf + delta;  update = delta + mu*buf (Nesterov) or buf;
//   theta_g -= lr * update.
// Pure; the loop is OpenMP-parallel and deterministic.
void diloco_outer_update(float *theta_g, float *buf, const float *delta, size_t n, float lr,
                         float mu, int nesterov, int first);

// diloco_create starts DiLoCo for this peer: theta_g is a copy of params(n) (identical on all
// peers at step 0: same seed), the momentum is zero. With world > 1 it opens its own mesh on the
// ports of net.peers shifted by world and (DiLoCo, not DDP) serves its outer state on the port
// shifted by 2 world (see README), then waits up to timeout_ms for the peers.
// Every buffer (theta_g, momentum, delta and the all-reduce's) is allocated here. On success
// the caller owns *out (diloco_destroy). Returns ERR_OK, ERR_INVAL or ERR_NET.
int diloco_create(diloco **out, const cfg_diloco *dc, const cfg_net *nc, int rank, int world,
                  uint64_t run_id, const float *params, size_t n);

// diloco_after_step runs the outer step when step is a multiple of H (the first after H inner
// steps): delta = theta_g - params, mean over the peers present, diloco_outer_update,
// params = theta_g. The peers present are agreed on first (ar_agree), waiting at most
// diloco.timeout_ms for each; a missing peer is left out. A peer that is itself left out or
// late takes theta_g from a live peer instead (control channel). Blocks meanwhile. Returns
// ERR_OK, or ERR_CLOSED / ERR_TIMEOUT / ERR_NET when the peers could not complete the step
// three times in a row or a state copy failed.
int diloco_after_step(diloco *d, float *params, size_t n, long step);

// diloco_join runs before the first step of a peer that may be joining a running group: it asks
// every connected peer for its outer state over the control channel, and if one has taken more
// outer steps than we have (we restarted, or started late), copies its theta_g, momentum and
// outer step count, sets params = theta_g and moves *step (completed inner steps) up to that
// peer's. A fresh start (nobody ahead) changes nothing. Returns ERR_OK or the copy's error.
int diloco_join(diloco *d, float *params, size_t n, long *step);

// diloco_save writes theta_g and the momentum as outer/theta_g and outer/momentum (1-D, n) and
// the attribute outer_steps; diloco_load reads them back (sizes must match). ERR_OK or ckpt_'s.
int diloco_save(diloco *d, ckpt_writer *w);
int diloco_load(diloco *d, ckpt_reader *r);

// diloco_theta_g returns the global parameters (owned by d; never aliases the live params).
const float *diloco_theta_g(const diloco *d);

// diloco_get_stats fills the modes (DiLoCo or DDP), bytes sent/received, the outer steps taken and
// the exchanges shared with another peer (outer steps, or DDP steps).
void diloco_get_stats(diloco *d, train_sync_stats *st);

// diloco_handshake checks the peers of the all-reduce mesh as sparta_handshake does (hello.h),
// waiting at most diloco.timeout_ms. No-op alone. Trainer thread, once, right after
// diloco_create. Returns ERR_OK or ERR_PEER.
int diloco_handshake(diloco *d, const char *hello, const char *peers, int allow_alone);

// diloco_destroy closes the mesh and frees everything. NULL-safe.
void diloco_destroy(diloco *d);

// diloco_sync_factory is a train_sync_factory for the all-reduce based modes: DDP when
// train.mode = ddp and there are peers (gradients averaged after every backward pass), DiLoCo
// when diloco.H > 0, else no sync.
int diloco_sync_factory(train_sync *out, const cfg *c, int rank, int world, uint64_t run_id,
                        const float *params, size_t n_params);

#endif
