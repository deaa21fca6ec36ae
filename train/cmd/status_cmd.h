// status_cmd.h: `spartan status HOST:PORT... [--watch] [--interval MS] [--timeout MS]
// [--count N]`: one table of the training peers' /status (net.status_port), refreshed in place
// with --watch.
#ifndef STATUS_CMD_H
#define STATUS_CMD_H

// status_cmd_main runs `spartan status`; argv[0] is "status". Returns 0 when every peer
// answered (with --watch: after Ctrl-C, or the last of --count refreshes), 1 when one is down,
// 2 for a usage error.
int status_cmd_main(int argc, char **argv);

#endif
