// probe_cmd.h: `spartan probe`, the reachability check that `spartan launch` runs on every host
// (train/cmd/probe_cmd.c describes its output).
#ifndef PROBE_CMD_H
#define PROBE_CMD_H

// probe_cmd_main runs `spartan probe --listen ADDR,... --connect ADDR,... [--timeout MS]`;
// argv[0] is "probe". Returns 0 when every address could be listened on and reached, 1 when
// one could not (each named on stdout), 2 for bad options.
int probe_cmd_main(int argc, char **argv);

#endif
