// sample_cmd.h: `spartan sample CKPT --prompt TEXT [--tokens N --temperature X --top-k K
// --seed S]`.
#ifndef SAMPLE_CMD_H
#define SAMPLE_CMD_H

// sample_cmd_main runs `spartan sample`; argv[0] is "sample". Returns the exit code.
int sample_cmd_main(int argc, char **argv);

#endif
