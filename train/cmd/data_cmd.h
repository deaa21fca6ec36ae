// data_cmd.h: `spartan data prepare` and `spartan data fetch`.
#ifndef DATA_CMD_H
#define DATA_CMD_H

// data_cmd_main runs `spartan data <prepare|fetch> ...`; argv[0] is "data". Returns the exit code.
int data_cmd_main(int argc, char **argv);

#endif
