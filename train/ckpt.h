// ckpt.h: HDF5 checkpoints as named float32 tensors plus root attributes. It stores flat arrays
// and knows nothing of GPT-2: callers name datasets ("model/transformer.wte.weight") and give
// shapes. Writes go to "<path>.tmp", are fsync'ed and renamed, so a half-written checkpoint
// never sits at the final path. HDF5's automatic error printing is turned off on every thread
// that calls ckpt_; its failures map to ERR_IO / ERR_FORMAT with the file and dataset named.
// Not thread-safe: any thread, but one at a time.
#ifndef CKPT_H
#define CKPT_H

#include <stddef.h>
#include <stdint.h>

#define CKPT_MAX_DIMS 4

typedef struct ckpt_writer ckpt_writer;
typedef struct ckpt_reader ckpt_reader;

// ckpt_writer_open creates "<path>.tmp" (truncating a stale one). Groups in dataset names are
// created as needed. On success the caller owns *out and must call ckpt_writer_commit or
// ckpt_writer_abort. Returns ERR_OK or ERR_IO naming the path (e.g. unwritable directory).
int ckpt_writer_open(ckpt_writer **out, const char *path);

// ckpt_write_tensor writes data as a float32 dataset of the given shape (ndim 1..4) at name,
// e.g. "model/transformer.h.0.attn.c_attn.weight". Returns ERR_OK or ERR_IO.
int ckpt_write_tensor(ckpt_writer *w, const char *name, const float *data, int ndim,
                      const size_t *shape);

// ckpt_write_attr_i64 / _f64 / _str / _u64s set a root attribute. Returns ERR_OK or ERR_IO.
int ckpt_write_attr_i64(ckpt_writer *w, const char *name, int64_t v);
int ckpt_write_attr_f64(ckpt_writer *w, const char *name, double v);
int ckpt_write_attr_str(ckpt_writer *w, const char *name, const char *v);
int ckpt_write_attr_u64s(ckpt_writer *w, const char *name, const uint64_t *v, size_t n);

// ckpt_writer_commit closes the temp file, fsyncs it and its directory, and renames it to the
// final path. It always frees w. Returns ERR_OK or ERR_IO (the temp file is removed on error).
int ckpt_writer_commit(ckpt_writer *w);

// ckpt_writer_abort closes and removes the temp file and frees w. NULL-safe.
void ckpt_writer_abort(ckpt_writer *w);

// ckpt_reader_open opens a checkpoint read-only. Returns ERR_OK, ERR_IO if missing or
// unreadable, or ERR_FORMAT if it is not a valid HDF5 file (corrupt, truncated). The caller owns
// *out (ckpt_reader_close).
int ckpt_reader_open(ckpt_reader **out, const char *path);

// ckpt_has returns 1 if a dataset of that name exists, else 0.
int ckpt_has(ckpt_reader *r, const char *name);

// ckpt_read_tensor reads dataset name into data, which must hold the product of shape. The
// stored shape must equal ndim/shape exactly; otherwise ERR_FORMAT names the dataset and both
// shapes. A missing dataset is ERR_FORMAT too. Returns ERR_OK on success.
int ckpt_read_tensor(ckpt_reader *r, const char *name, float *data, int ndim, const size_t *shape);

// ckpt_read_attr_i64 / _f64 / _str / _u64s read a root attribute. _str gives a NUL-terminated
// copy the caller frees. _u64s requires exactly n values. Missing or wrong type: ERR_FORMAT.
int ckpt_read_attr_i64(ckpt_reader *r, const char *name, int64_t *v);
int ckpt_read_attr_f64(ckpt_reader *r, const char *name, double *v);
int ckpt_read_attr_str(ckpt_reader *r, const char *name, char **v);
int ckpt_read_attr_u64s(ckpt_reader *r, const char *name, uint64_t *v, size_t n);

// ckpt_reader_close closes r. NULL-safe.
void ckpt_reader_close(ckpt_reader *r);

#endif
