// infer/sample_cmd.c: placeholder until the module lands.
#include <stdio.h>

#include "sample_cmd.h"

int sample_cmd_main(int argc, char **argv) {
    (void)argc;
    fprintf(stderr, "spartan %s: not built yet\n", argv[0]);
    return 1;
}
