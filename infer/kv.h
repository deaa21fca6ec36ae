// kv.h: incremental GPT-2 decoding with a KV cache, batched over independent sequences
// ("slots"), for `spartan serve`. The engine borrows a loaded model's weights (gpt.h views) and
// owns, per slot, the keys and values of every layer for up to block_size positions. One
// kv_step advances any subset of slots by any number of new tokens each (a prompt prefill of
// many tokens and single-token decodes mix in one call), runs every matmul once over all the new
// tokens of the step (N = sum of new tokens, so concurrent streams share each weight read), and
// returns each entry's logits at its last new token. Results equal gpt_forward on the slot's
// whole sequence up to float summation order. Every buffer is allocated in kv_create; one thread
// calls kv_* at a time (the server's scheduler); kernels use OpenMP inside.
#ifndef KV_H
#define KV_H

#include <stddef.h>
#include <stdint.h>

#include "train/gpt.h"

typedef struct kv_engine kv_engine;

// kv_create builds an engine over model m (borrowed: it must outlive the engine and its
// parameters must not change while the engine exists) with max_slots sequences of up to
// block_size positions each and at most max_step_tokens new tokens per kv_step (sizes the
// activation buffers; at least 1). On success the caller owns *out (kv_destroy). Returns ERR_OK
// or ERR_INVAL naming the bad argument.
int kv_create(kv_engine **out, const gpt_model *m, int max_slots, int max_step_tokens);

// kv_destroy frees the engine (not the model). NULL-safe.
void kv_destroy(kv_engine *e);

// kv_slot_open claims a free slot, empty (position 0), and returns its id in [0, max_slots), or
// -1 when every slot is in use.
int kv_slot_open(kv_engine *e);

// kv_slot_close releases slot (its cache is forgotten). Closing a free slot is a no-op.
void kv_slot_close(kv_engine *e, int slot);

// kv_slot_pos returns how many positions slot holds (tokens fed so far).
int kv_slot_pos(const kv_engine *e, int slot);

// kv_step feeds n entries: entry i appends ntok[i] >= 1 tokens toks[i][0 .. ntok[i]) to slot
// slots[i] (distinct open slots), at positions kv_slot_pos .. kv_slot_pos + ntok[i] - 1, and
// writes the logits(V) of its last new token to logits + i * V. Returns ERR_OK; ERR_INVAL (and
// changes nothing) if a slot is not open or repeated, a token is out of the vocabulary, a slot
// would pass block_size positions, or sum ntok > max_step_tokens.
int kv_step(kv_engine *e, int n, const int *slots, const int32_t *const *toks, const int *ntok,
            float *logits);

// kv_vocab_size and kv_block_size return the model's V and block_size.
int kv_vocab_size(const kv_engine *e);
int kv_block_size(const kv_engine *e);

#endif
