// plot_cmd.h: `spartan plot RUN_DIR [-o OUT.png] [--gnuplot PATH]`: a PNG of a training run's
// metrics.csv (as written by `spartan train`), one panel per group of columns that holds values.
// gnuplot draws it, run as a child process on a generated script: the plot command never starts
// nng, so spawning is safe. Main thread only.
#ifndef PLOT_CMD_H
#define PLOT_CMD_H

#include <stddef.h>

// plot_metrics reads run_dir/metrics.csv and writes a PNG to out (NULL: run_dir/metrics.png)
// through out.tmp and a rename, so a failed plot never leaves a partial PNG at out. The panels,
// top to bottom, are drawn only for the columns that exist and hold a value: loss (train and
// val), tokens/s, learning rate, gradient norm, and MB sent and received (only when some value
// is non-zero, so a single peer gets no bytes panel). Rows are taken in file order, and a row
// whose step is not above the previous one replaces the rows from that step on (a resumed run
// repeats the steps after its checkpoint). An unterminated last line is ignored (a run that is
// still writing). gnuplot is the program to run: a path, or a name looked up in PATH (NULL:
// "gnuplot"). On success, when summary is not NULL, a line naming the output, the step count
// and the panels goes into summary[0..n-1]. Returns ERR_OK; ERR_IO when run_dir, metrics.csv
// or out cannot be opened, or gnuplot is not installed or fails (the message says how to install
// it, or gives gnuplot's own error); ERR_FORMAT when metrics.csv is empty, has no step column,
// no rows or nothing to plot, or a malformed line (the message names the file and the line).
// Main thread only.
int plot_metrics(const char *run_dir, const char *out, const char *gnuplot, char *summary,
                 size_t n);

// plot_cmd_main runs `spartan plot`; argv[0] is "plot". Prints the summary line on stdout.
// Returns the exit code: 0, 1 for a failure above (message on stderr), 2 for a bad command line.
int plot_cmd_main(int argc, char **argv);

#endif
