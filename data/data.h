// data.h: token shards and the batch loader.
//
// Shard file format (little-endian), written by `spartan data prepare`:
//   offset 0  u32 magic   0x4E4B5453 ("STKN" read as bytes S T K N)
//   offset 4  u32 version 1
//   offset 8  u32 dtype   1 = uint16 tokens, 2 = uint32 tokens
//   offset 12 u32 reserved (0)
//   offset 16 u64 n_tokens
//   offset 24 u64 reserved (0)
//   offset 32 n_tokens tokens of the given dtype
// A prepared folder holds train.bin, val.bin and meta.json ({"tokenizer": <tok_spec>,
// "vocab_size": V, "n_train": .., "n_val": .., "source": ..}).
//
// The loader is owned by one thread (the trainer); shards are read-only and mapped in memory.
#ifndef DATA_H
#define DATA_H

#include <stddef.h>
#include <stdint.h>

#define DATA_MAGIC   0x4E4B5453u
#define DATA_VERSION 1u
enum { DATA_U16 = 1, DATA_U32 = 2 };

typedef struct data_shard data_shard;

// data_shard_write writes tokens(n) to path in the shard format, choosing uint16 when every id
// is < 65536 and uint32 otherwise. Writes a temp file and renames it into place. Returns ERR_OK
// or ERR_IO naming the path.
int data_shard_write(const char *path, const int32_t *tokens, size_t n);

// data_shard_open maps the shard at path read-only and validates its header (magic, version,
// dtype, length against the file size). On success the caller owns *out (data_shard_close).
// Returns ERR_OK, ERR_IO (missing/unreadable) or ERR_FORMAT (wrong magic, version, dtype,
// truncated), naming the file.
int data_shard_open(data_shard **out, const char *path);

// data_shard_len returns the number of tokens.
size_t data_shard_len(const data_shard *s);

// data_shard_read copies tokens [start, start+n) as int32 into dst. ASSERTs the range is valid.
void data_shard_read(const data_shard *s, size_t start, size_t n, int32_t *dst);

// data_shard_max_token returns the largest token id in the shard (scans once, then cached).
int32_t data_shard_max_token(data_shard *s);

// data_shard_close unmaps and frees s. NULL-safe.
void data_shard_close(data_shard *s);

typedef struct data_loader data_loader;

// data_loader_create draws batches of B windows of T+1 tokens from shard s (borrowed: it must
// outlive the loader). Window starts are drawn uniformly from [0, len-T-1] by a counter-based
// PRNG keyed by (seed, position, j), where j = rank*B + b is the window's index in the group's
// global batch: the stream is deterministic for a given (seed, rank), different ranks get
// different data, and one loader with batch P*B draws exactly the windows of P loaders of batch B
// (ranks 0 .. P-1). Returns ERR_OK, or ERR_INVAL if the shard holds fewer than T+1 tokens (the
// message says how many are needed). The caller owns *out.
int data_loader_create(data_loader **out, data_shard *s, int B, int T, uint64_t seed, int rank);

// data_loader_next fills x(B,T) with inputs and y(B,T) with the next-token targets, then
// advances the position by one batch.
void data_loader_next(data_loader *dl, int32_t *x, int32_t *y);

// data_loader_pos / data_loader_set_pos get and set the number of batches drawn so far, so a
// resumed run continues the exact same stream.
uint64_t data_loader_pos(const data_loader *dl);
void data_loader_set_pos(data_loader *dl, uint64_t pos);

// data_loader_destroy frees dl (not the shard). NULL-safe.
void data_loader_destroy(data_loader *dl);

// data_meta_read reads OUTDIR/meta.json of a prepared folder: *tok_spec (caller frees) and
// *vocab_size. Returns ERR_OK, ERR_IO or ERR_FORMAT naming the file.
int data_meta_read(const char *dir, char **tok_spec, int *vocab_size);

#endif
