// launch_cmd.h: `spartan launch`, one command that starts and watches a training job across
// machines over ssh (train/cmd/launch_cmd.c describes its phases).
#ifndef LAUNCH_CMD_H
#define LAUNCH_CMD_H

// launch_cmd_main runs `spartan launch HOSTFILE CONFIG [--set K=V ...] [options]`; argv[0] is
// "launch". Returns 0 when every peer finished cleanly, 1 when a host or peer failed (each named
// on the way and in the summary), 2 for bad options, a bad hostfile or config, 130 after Ctrl-C.
int launch_cmd_main(int argc, char **argv);

#endif
