// gpt.h: GPT-2 as in nanoGPT (learned position embeddings, pre-LayerNorm blocks, causal
// multi-head attention, 4x GELU-tanh MLP, final LayerNorm, lm_head tied to wte, no dropout).
// Memory follows llm.c: one contiguous float32 slab each for parameters and gradients, with a
// table of named views (nanoGPT state-dict names, PyTorch shapes) giving each tensor's offset;
// later modules address parameters by flat index into gpt_params(). Activations are one slab
// sized at creation for (max_B, block_size); nothing is allocated after gpt_create.
// A model is used by one thread at a time (the trainer); kernels use OpenMP inside.
#ifndef GPT_H
#define GPT_H

#include <stddef.h>
#include <stdint.h>

#include "train/base/cfg.h"
#include "train/ckpt.h"

#define GPT_NAME_MAX 64

typedef struct gpt_model gpt_model;

// One named tensor inside a slab: nanoGPT name, PyTorch shape, offset and element count.
// decay = 1 for tensors with >= 2 dims (AdamW weight decay applies, as in nanoGPT).
typedef struct gpt_view {
    char name[GPT_NAME_MAX];
    int ndim;
    size_t shape[2];
    size_t offset, count;
    int decay;
} gpt_view;

// gpt_create allocates a model for config mc with activations for up to max_B sequences of up
// to mc->block_size tokens, and (when train is nonzero) gradient and backward buffers. Without
// train, the layers share one layer's activation buffers (forward only, L times less memory).
// Parameters are zero until gpt_init_params or gpt_load. On success the caller owns *out
// (gpt_destroy). Returns ERR_OK or ERR_INVAL for an unusable config (vocab_size 0, ...).
int gpt_create(gpt_model **out, const cfg_model *mc, int max_B, int train);

// gpt_destroy frees everything. NULL-safe.
void gpt_destroy(gpt_model *m);

// gpt_init_params sets nanoGPT's initialisation from seed: N(0, 0.02) for embeddings and
// linear weights, N(0, 0.02/sqrt(2L)) for attn.c_proj and mlp.c_proj weights, zero biases,
// LayerNorm weight 1 and bias 0. Deterministic for a given seed and independent of threads.
void gpt_init_params(gpt_model *m, uint64_t seed);

// Accessors. The slabs are owned by the model; pointers stay valid until gpt_destroy.
const cfg_model *gpt_config(const gpt_model *m);
size_t gpt_n_params(const gpt_model *m);
float *gpt_params(gpt_model *m);
float *gpt_grads(gpt_model *m); // NULL unless created with train != 0
const gpt_view *gpt_views(const gpt_model *m, int *n);
const gpt_view *gpt_find_view(const gpt_model *m, const char *name);

// gpt_forward runs the model on x(B,T) (B <= max_B, T <= block_size). If y is non-NULL it also
// computes the cross-entropy against targets y(B,T) (negative targets are ignored) and returns
// the mean loss over the counted positions; the logits buffer then holds probabilities, ready for
// gpt_backward. With y NULL it returns 0 and gpt_logits() holds the raw logits.
float gpt_forward(gpt_model *m, const int32_t *x, const int32_t *y, int B, int T);

// gpt_logits returns the (B,T,V) output of the last gpt_forward (logits, or probabilities when
// targets were given).
const float *gpt_logits(const gpt_model *m);

// gpt_zero_grad sets all parameter gradients to zero.
void gpt_zero_grad(gpt_model *m);

// gpt_backward back-propagates the last gpt_forward (which must have had targets) and ACCUMULATES
// scale * d(mean loss)/d(param) into the gradient slab. Use scale = 1/grad_accum for gradient
// accumulation over micro-batches. Requires a model created with train != 0.
void gpt_backward(gpt_model *m, float scale);

// gpt_flops_per_token returns the training FLOPs per token used for MFU, 6N + 12*L*C*T, with N
// the parameter count minus the position embeddings and T the given sequence length.
double gpt_flops_per_token(const gpt_model *m, int T);

// gpt_write_slab writes a slab laid out like the parameters (params, grads, AdamW m or v) as one
// dataset per view, named prefix + view name (e.g. "model/transformer.wte.weight"), with PyTorch
// shapes. Returns ERR_OK or the ckpt_ error.
int gpt_write_slab(const gpt_model *m, ckpt_writer *w, const char *prefix, const float *slab);

// gpt_read_slab fills slab from the datasets written by gpt_write_slab. Every view must be
// present with the exact shape; otherwise ERR_FORMAT names the dataset.
int gpt_read_slab(const gpt_model *m, ckpt_reader *r, const char *prefix, float *slab);

// gpt_write_config stores the architecture as root attributes (n_layer, n_head, n_embd,
// block_size, vocab_size). Returns ERR_OK or the ckpt_ error.
int gpt_write_config(const gpt_model *m, ckpt_writer *w);

// gpt_read_config reads those attributes into *mc and checks them (positive, n_embd divisible
// by n_head). Returns ERR_OK or ERR_FORMAT naming the attribute.
int gpt_read_config(ckpt_reader *r, cfg_model *mc);

// gpt_load opens the checkpoint at path (a file, or a folder: its newest ckpt_*.h5), creates
// a model from its attributes with activations for max_B sequences (and training buffers when
// train != 0), and loads the /model/ weights. On success the caller owns *out; *tok_spec (if
// non-NULL; caller frees) receives the "tokenizer" attribute and *step (if non-NULL) the "step"
// attribute. Returns ERR_OK, ERR_IO (missing) or ERR_FORMAT (corrupt, truncated, wrong shapes,
// or attributes that declare more float32 weights than the file has bytes for: refused before
// anything is allocated), with the message naming the file.
int gpt_load(gpt_model **out, const char *path, int max_B, int train, char **tok_spec,
             int64_t *step);

#endif
