// cmds.h: the subcommands implemented in train/ (spartan train, spartan eval). Each takes the
// argv that follows `spartan`, with argv[0] the command name, and returns the process exit code.
#ifndef CMDS_H
#define CMDS_H

#include "train/sync.h"

// train_cmd_main runs `spartan train CONFIG [--set k=v ...] [--resume CKPT] [--rank R]
// [--peers LIST]`. sync (may be NULL) builds the peer synchronisation (SPARTA, DiLoCo).
int train_cmd_main(int argc, char **argv, train_sync_factory sync);

// eval_cmd_main runs `spartan eval CKPT --data SHARD [--seq-len T] [--max-windows M]`.
int eval_cmd_main(int argc, char **argv);

// avg_cmd_main runs `spartan avg OUT CKPT CKPT... [--base CKPT]` (train/cmd/avg_cmd.c): writes the
// element-wise mean of the checkpoints' /model/ weights, with the first's (or --base's) rest.
int avg_cmd_main(int argc, char **argv);

#endif
