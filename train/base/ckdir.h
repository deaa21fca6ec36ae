// ckdir.h: naming and housekeeping of a checkpoint folder. Checkpoints are
// "<dir>/ckpt_<step, 8 digits>.h5"; a path argument that names a folder resolves to its newest
// complete checkpoint (temp files "*.tmp" are never chosen). Any thread; no shared state.
#ifndef CKDIR_H
#define CKDIR_H

#include <stddef.h>

// ckdir_name writes "<dir>/ckpt_<step>.h5" into buf of size n.
void ckdir_name(char *buf, size_t n, const char *dir, long step);

// ckdir_resolve returns in *out (caller frees) path itself if it is a file, or the newest
// checkpoint in it if it is a folder. Returns ERR_OK, ERR_IO if path does not exist, or ERR_IO
// if the folder holds no checkpoint (the message names the folder).
int ckdir_resolve(const char *path, char **out);

// ckdir_steps returns the steps of the checkpoints in dir, ascending, in an array the caller
// frees (NULL when there is none or dir does not exist), and their count in *n.
long *ckdir_steps(const char *dir, int *n);

// ckdir_count returns the number of checkpoints in dir (0 if it does not exist) and, when there
// is one and newest is not NULL, the newest one's step in *newest.
int ckdir_count(const char *dir, long *newest);

// ckdir_prune deletes the oldest checkpoints in dir so that at most keep remain (keep = 0 deletes
// them all), never deleting except_path (may be NULL). Returns the number removed.
int ckdir_prune(const char *dir, int keep, const char *except_path);

#endif
