// args.c: the option-table parser behind every subcommand's command line. One left-to-right pass
// over argv; the only state is the caller's destinations, so parsing the same argv twice (as
// `spartan train` does) gives the same result. No allocation; any thread, on distinct data.
#include "train/base/args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/base/err.h"

// find_opt returns the option whose name or alias is the first len bytes of arg, or NULL.
static const args_opt *find_opt(const args_opt *opts, int n, const char *arg, size_t len) {
    for (int i = 0; i < n; i++) {
        const char *names[2] = {opts[i].name, opts[i].alias};
        for (int k = 0; k < 2; k++)
            if (names[k] && strlen(names[k]) == len && !strncmp(names[k], arg, len))
                return &opts[i];
    }
    return NULL;
}

// parse_int reads a whole decimal integer in [lo, hi]; the bounds are whole doubles, converted
// once so that the comparison is exact for 64-bit values.
static int parse_int(const args_opt *o, const char *v, long long *out) {
    ASSERT(o->lo >= -9e18 && o->hi <= 9e18 && o->lo <= o->hi);
    long long lo = (long long)o->lo, hi = (long long)o->hi;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (end == v || *end || errno == ERANGE || x < lo || x > hi)
        return err_set(ERR_INVAL, "%s: '%s' is not an integer in [%lld, %lld]", o->name, v, lo, hi);
    *out = x;
    return ERR_OK;
}

static int parse_double(const args_opt *o, const char *v, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno == ERANGE || !isfinite(x) || x < o->lo || x > o->hi)
        return err_set(ERR_INVAL, "%s: '%s' is not a number in [%g, %g]", o->name, v, o->lo, o->hi);
    *out = x;
    return ERR_OK;
}

// store puts value v of option o into its destination.
static int store(const args_opt *o, const char *v) {
    long long x = 0;
    int rc = ERR_OK;
    switch (o->kind) {
    case ARGS_FLAG: *(int *)o->dest = 1; break;
    case ARGS_STR: *(const char **)o->dest = v; break;
    case ARGS_INT:
        ASSERT(o->lo >= INT_MIN && o->hi <= INT_MAX);
        if ((rc = parse_int(o, v, &x)) == ERR_OK) *(int *)o->dest = (int)x;
        break;
    case ARGS_I64:
        if ((rc = parse_int(o, v, &x)) == ERR_OK) *(long long *)o->dest = x;
        break;
    case ARGS_DOUBLE: rc = parse_double(o, v, (double *)o->dest); break;
    case ARGS_REPEAT:
        ASSERT(o->fn);
        rc = o->fn(o->dest, v);
        break;
    }
    return rc;
}

int args_parse(int argc, char **argv, const args_opt *opts, int n_opts, const char **pos,
               int max_pos, int *n_pos) {
    int options_done = 0;
    *n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (options_done || a[0] != '-' || a[1] == 0) { // positional ("-" is one too)
            if (*n_pos >= max_pos) return err_set(ERR_INVAL, "unexpected argument '%s'", a);
            pos[(*n_pos)++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            options_done = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return ARGS_HELP;
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const args_opt *o = find_opt(opts, n_opts, a, len);
        if (!o) return err_set(ERR_INVAL, "unknown option '%.*s'", (int)len, a);
        const char *v = NULL;
        if (o->kind == ARGS_FLAG) {
            if (eq) return err_set(ERR_INVAL, "%s takes no value", o->name);
        } else if (eq) {
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            return err_set(ERR_INVAL, "%s needs a value", o->name);
        }
        int rc = store(o, v);
        if (rc) return rc;
    }
    return ERR_OK;
}

// entry_width is the printed width of an entry's "  -o, --output FILE" part.
static int entry_width(const args_opt *o) {
    return 2 + (o->alias ? (int)strlen(o->alias) + 2 : 0) + (int)strlen(o->name) +
           (o->metavar ? 1 + (int)strlen(o->metavar) : 0);
}

// print_entry writes "  -o, --output FILE", pads it to width (> its own width), then the help
// text, one line per '\n'-separated part, continuation lines indented by width.
static void print_entry(FILE *f, const args_opt *o, int width) {
    int w = fprintf(f, "  %s%s%s%s%s", o->alias ? o->alias : "", o->alias ? ", " : "", o->name,
                    o->metavar ? " " : "", o->metavar ? o->metavar : "");
    const char *h = o->help ? o->help : "";
    if (!*h) fputc('\n', f);
    while (*h) {
        size_t len = strcspn(h, "\n");
        fprintf(f, "%*s%.*s\n", width - w, "", (int)len, h);
        h += len + (h[len] == '\n');
        w = 0;
    }
}

void args_print_table(FILE *f, const args_opt *opts, int n_opts) {
    const args_opt help = {.name = "--help", .alias = "-h", .help = "print this help and exit"};
    int width = entry_width(&help);
    for (int i = 0; i < n_opts; i++)
        if (entry_width(&opts[i]) > width) width = entry_width(&opts[i]);
    width += 2; // two spaces before the help column
    for (int i = 0; i < n_opts; i++)
        print_entry(f, &opts[i], width);
    print_entry(f, &help, width);
}
