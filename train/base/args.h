// args.h: table-driven command-line options for the spartan subcommands. A command lists its
// options in an args_opt array; args_parse fills their destinations from argv and collects the
// positional arguments. No allocation, no global state: safe from any thread on distinct data.
#ifndef ARGS_H
#define ARGS_H

#include <stdio.h>

// ARGS_HELP is what args_parse returns when it meets -h or --help. It is negative so it can never
// be mistaken for an ERR_* code, and non-zero so a caller that only checks `if (rc)` stops.
enum { ARGS_HELP = -1 };

// ARGS_COUNT is the number of entries of an args_opt array (an array, not a pointer).
#define ARGS_COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

typedef enum {
    ARGS_FLAG,   // no value; sets *(int *)dest = 1
    ARGS_STR,    // *(const char **)dest = the value, borrowed from argv
    ARGS_INT,    // *(int *)dest = an integer in [lo, hi]
    ARGS_I64,    // *(long long *)dest = an integer in [lo, hi]
    ARGS_DOUBLE, // *(double *)dest = a finite number in [lo, hi]
    ARGS_REPEAT, // fn(dest, value) once per occurrence, in command-line order
} args_kind;

// args_fn handles one occurrence of an ARGS_REPEAT option; ctx is the option's dest. It returns
// ERR_OK or an error code set with err_set, which args_parse returns unchanged.
typedef int (*args_fn)(void *ctx, const char *value);

// args_opt describes one option. Tables are usually local arrays, because dest points at the
// caller's variables; a destination keeps its value when the option is absent, so initialise it
// to the default. lo and hi bound ARGS_INT, ARGS_I64 and ARGS_DOUBLE values (inclusive; integer
// bounds must be whole numbers). metavar names the value in help ("N"), NULL for flags.
typedef struct {
    const char *name;    // "--output": always the long form, with its dashes
    const char *alias;   // "-o", or NULL
    args_kind kind;      // what the value is and where it goes
    void *dest;          // see args_kind; the ctx of fn for ARGS_REPEAT
    double lo, hi;       // inclusive range of numeric kinds
    args_fn fn;          // ARGS_REPEAT only
    const char *metavar; // "N", "FILE", ...; NULL for ARGS_FLAG
    const char *help;    // one line, or several separated by '\n'
} args_opt;

// args_parse reads argv[1..argc-1] (argv[0] is the command name) against opts[0..n_opts-1].
// An option takes its value as `--name VALUE` or `--name=VALUE` (an alias works the same), and
// the next argument is the value even when it starts with '-'. "--" ends the options; "-" is a
// positional. Positionals go, in order, into pos[0..max_pos-1], and *n_pos receives their count.
// Later occurrences of an option overwrite earlier ones, except ARGS_REPEAT, whose callback runs
// each time, in command-line order. Parsing stops at the first problem and returns ERR_INVAL with
// an err_set message naming the option ("--tokens: 'abc' is not an integer in [0, 10000000]",
// "unknown option '--bogus'", "--data needs a value", "unexpected argument 'x'"), or a callback's
// own code and message; destinations set before that point keep their new values. Returns
// ARGS_HELP when -h or --help comes up as an option (before any problem), else ERR_OK. Stored
// strings point into argv. Never allocates.
int args_parse(int argc, char **argv, const args_opt *opts, int n_opts, const char **pos,
               int max_pos, int *n_pos);

// args_print_table writes one entry per option to f for a command's --help text: the alias and
// name with the metavar, then the help text in a column (each '\n' in it starts an indented line),
// and a final entry for -h/--help.
void args_print_table(FILE *f, const args_opt *opts, int n_opts);

#endif
