// data/data_cmd.c: placeholder until the module lands.
#include <stdio.h>

#include "data_cmd.h"

int data_cmd_main(int argc, char **argv) {
    (void)argc;
    fprintf(stderr, "spartan %s: not built yet\n", argv[0]);
    return 1;
}
