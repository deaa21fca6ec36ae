// corr_cmd.h: agreement between peers' parameters: the Pearson correlation of flattened parameter
// vectors, and `spartan corr CKPT CKPT...` (mean over all pairs). Pure functions; any thread.
#ifndef CORR_CMD_H
#define CORR_CMD_H

#include <stddef.h>

// corr_pearson returns the Pearson correlation of a(n) and b(n), accumulated in double; 0 when
// either vector is constant.
double corr_pearson(const float *a, const float *b, size_t n);

// corr_cmd_main runs `spartan corr CKPT CKPT...`: loads each checkpoint's /model/ parameters in
// their fixed order (the tied weight once) and prints every pair's correlation, then the mean as
// the last line `corr <value>`. Returns the exit code.
int corr_cmd_main(int argc, char **argv);

#endif
