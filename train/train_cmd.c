// train_cmd.c: placeholder until the trainer lands.
#include <stdio.h>

#include "cmds.h"

int train_cmd_main(int argc, char **argv) {
    (void)argc;
    fprintf(stderr, "spartan %s: not built yet\n", argv[0]);
    return 1;
}

int eval_cmd_main(int argc, char **argv) {
    (void)argc;
    fprintf(stderr, "spartan %s: not built yet\n", argv[0]);
    return 1;
}
