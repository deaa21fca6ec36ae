// plot_cmd.c: `spartan plot`. Reads metrics.csv strictly (one header, the same number of fields
// on every line, numbers or empty cells), keeps the columns of the panel table below by name (the
// common columns of every run and the named metrics of the sync modules that ran, so any layout,
// earlier ones included, plots what it holds; a column that is absent draws nothing), writes a
// gnuplot script with one inline datablock per series and runs gnuplot on it as a child process.
// Main thread only. Spawning is safe here because this command never starts nng.
#include "train/cmd/plot_cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "train/base/args.h"
#include "train/base/err.h"

extern char **environ;

// Pixels: the image is PLOT_W wide, a title band plus PLOT_PANEL_H per panel high.
#define PLOT_W       900
#define PLOT_PANEL_H 240
#define PLOT_TITLE_H 40

#define GNUPLOT_HINT                                                                     \
    "install it with `scripts/install-deps test` (make deps-test), or `apt-get install " \
    "gnuplot-nox` / `brew install gnuplot`"

typedef struct {
    const char *col;   // metrics.csv column; NULL for an unused slot
    const char *label; // legend entry
} plot_series;

typedef struct {
    const char *title, *ylabel;
    const char *key;  // where the legend goes: away from where the curves usually are
    double scale;     // multiplies the values (bytes -> MB)
    int need_nonzero; // counters that stay 0 for a single peer: drawn only if one is non-zero
    plot_series s[2];
} plot_panel;

static const plot_panel panels[] = {
    {"loss", "cross-entropy", "top right", 1, 0, {{"loss", "train"}, {"val_loss", "val"}}},
    {"tokens/s", "tokens/s", "bottom right", 1, 0, {{"tokens_per_s", "tokens/s"}, {NULL, NULL}}},
    {"learning rate", "lr", "top right", 1, 0, {{"lr", "lr"}, {NULL, NULL}}},
    {"gradient norm", "norm", "top right", 1, 0, {{"grad_norm", "global norm"}, {NULL, NULL}}},
    {"MB sent and received",
     "MB (cumulative)",
     "top left",
     1e-6,
     1,
     {{"bytes_sent", "sent"}, {"bytes_recv", "received"}}},
    {"SPARTA rounds late and dropped",
     "rounds (cumulative)",
     "top left",
     1,
     1,
     {{"sparta_rounds_late", "late"}, {"sparta_rounds_dropped", "dropped"}}},
};

#define N_PANELS ((int)(sizeof panels / sizeof panels[0]))
#define N_SERIES (2 * N_PANELS) // series k is slot k % 2 of panel k / 2

typedef struct {
    double step;
    double v[N_SERIES]; // NAN where the cell is empty or the column is absent
} plot_row;

typedef struct {
    plot_row *rows;
    size_t n, cap;
    int col[N_SERIES];     // column index in the file, or -1
    int present[N_SERIES]; // the series has something to draw
} plot_table;

static const plot_series *series(int k) { return &panels[k / 2].s[k % 2]; }

static int panel_drawn(const plot_table *t, int p) {
    return t->present[2 * p] || t->present[2 * p + 1];
}

// parse_cell reads a whole number into *v; an empty cell is NAN. Returns 0 if s is no number.
static int parse_cell(const char *s, double *v) {
    if (!*s) {
        *v = NAN;
        return 1;
    }
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return end != s && !*end && errno != ERANGE;
}

// split cuts line at the commas in place; fields[0..max-1] gets the start of each field. Returns
// the number of fields, which may exceed max (the extra ones are not stored).
static int split(char *line, char **fields, int max) {
    int n = 0;
    for (char *p = line;; p++) {
        if (n < max) fields[n] = p;
        n++;
        p = strchr(p, ',');
        if (!p) break;
        *p = 0;
    }
    return n;
}

// read_header maps the table's columns to their index in the header line, which it cuts into
// *names (nh of them, pointing into line). Returns ERR_OK or ERR_FORMAT naming path:1.
static int read_header(char *line, const char *path, plot_table *t, char ***names, int *nh) {
    int n = 1;
    for (const char *c = line; *c; c++)
        n += *c == ',';
    char **f = xmalloc((size_t)n * sizeof *f);
    split(line, f, n);
    *names = f;
    *nh = n;
    int rc = ERR_OK, has_step = 0;
    for (int k = 0; k < N_SERIES; k++)
        t->col[k] = -1;
    for (int i = 0; i < n && !rc; i++) {
        if (!f[i][0]) rc = err_set(ERR_FORMAT, "%s:1: column %d has no name", path, i + 1);
        has_step |= !strcmp(f[i], "step") && i == 0;
        for (int k = 0; k < N_SERIES; k++)
            if (series(k)->col && !strcmp(f[i], series(k)->col)) t->col[k] = i;
    }
    if (!rc && !has_step)
        rc = err_set(ERR_FORMAT,
                     "%s:1: the first column is not 'step', so this is not a metrics.csv "
                     "written by spartan train",
                     path);
    return rc;
}

// add_row parses one data line into the table. Returns ERR_OK or ERR_FORMAT naming path:line.
static int add_row(plot_table *t, char *line, char **names, int nh, char **f, const char *path,
                   int lineno) {
    if (!line[0]) return err_set(ERR_FORMAT, "%s:%d: empty line", path, lineno);
    int n = split(line, f, nh);
    if (n != nh)
        return err_set(ERR_FORMAT, "%s:%d: %d field%s, but the header has %d", path, lineno, n,
                       n == 1 ? "" : "s", nh);
    double v;
    for (int i = 0; i < n; i++)
        if (!parse_cell(f[i], &v))
            return err_set(ERR_FORMAT, "%s:%d: %s = '%.40s' is not a number", path, lineno,
                           names[i], f[i]);
    double step;
    parse_cell(f[0], &step);
    if (!isfinite(step) || step < 0 || step != floor(step))
        return err_set(ERR_FORMAT, "%s:%d: step '%.40s' is not a whole number >= 0", path, lineno,
                       f[0]);
    // A resumed run appends the steps after its checkpoint again: the later rows win.
    while (t->n && t->rows[t->n - 1].step >= step)
        t->n--;
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->rows = xrealloc(t->rows, t->cap * sizeof *t->rows);
    }
    plot_row *r = &t->rows[t->n++];
    r->step = step;
    for (int k = 0; k < N_SERIES; k++) {
        r->v[k] = NAN;
        if (t->col[k] >= 0) parse_cell(f[t->col[k]], &r->v[k]);
    }
    return ERR_OK;
}

static int read_metrics(const char *path, plot_table *t) {
    FILE *fp = fopen(path, "r");
    if (!fp)
        return err_set(ERR_IO, "cannot open '%s': %s%s", path, strerror(errno),
                       errno == ENOENT ? " (spartan train writes it into train.out_dir)" : "");
    char *line = NULL, *header = NULL, **names = NULL, **f = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = ERR_OK, lineno = 0, nh = 0;
    while (!rc && (len = getline(&line, &cap, fp)) > 0) {
        lineno++;
        int terminated = line[len - 1] == '\n';
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (lineno == 1) {
            header = xstrdup(line);
            rc = read_header(header, path, t, &names, &nh);
            f = xmalloc((size_t)nh * sizeof *f);
        } else if (terminated) { // an unterminated last line is still being written
            rc = add_row(t, line, names, nh, f, path, lineno);
        }
    }
    if (!rc && ferror(fp)) rc = err_set(ERR_IO, "read error on '%s'", path);
    if (!rc && lineno == 0) rc = err_set(ERR_FORMAT, "'%s' is empty (no header line)", path);
    if (!rc && t->n == 0)
        rc = err_set(ERR_FORMAT, "'%s' has a header but no rows: no step has finished yet", path);
    free(f);
    free(names);
    free(header);
    free(line);
    fclose(fp);
    if (rc) return rc;
    int any = 0;
    for (int k = 0; k < N_SERIES; k++) {
        for (size_t i = 0; i < t->n && !t->present[k]; i++) {
            double v = t->rows[i].v[k];
            t->present[k] = isfinite(v) && (!panels[k / 2].need_nonzero || v != 0);
        }
        any |= t->present[k];
    }
    if (!any)
        return err_set(ERR_FORMAT, "'%s' has no values in any plotted column (loss, val_loss, ...)",
                       path);
    return ERR_OK;
}

// gp_str writes s as a gnuplot double-quoted string.
static void gp_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '\n') {
            fputs("\\n", f);
            continue;
        }
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

// write_script writes the whole gnuplot program: the data, then one panel per drawn group.
static void write_script(FILE *f, const plot_table *t, const char *png, const char *title,
                         int n_panels) {
    for (int k = 0; k < N_SERIES; k++) {
        if (!t->present[k]) continue;
        fprintf(f, "$S%d << EOD\n", k);
        for (size_t i = 0; i < t->n; i++)
            if (isfinite(t->rows[i].v[k]))
                fprintf(f, "%.0f %.10g\n", t->rows[i].step, t->rows[i].v[k] * panels[k / 2].scale);
        fprintf(f, "EOD\n");
    }
    int h = PLOT_TITLE_H + PLOT_PANEL_H * n_panels;
    fprintf(f,
            "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {\n"
            "    set terminal pngcairo noenhanced size %d,%d font \",10\"\n"
            "} else {\n"
            "    set terminal png noenhanced size %d,%d\n"
            "}\n"
            "set output ",
            PLOT_W, h, PLOT_W, h);
    gp_str(f, png);
    fprintf(f, "\nset multiplot layout %d,1 title ", n_panels);
    gp_str(f, title);
    fprintf(f, "\nset grid\nset xlabel \"step\"\n");
    if (t->rows[t->n - 1].step > t->rows[0].step) // the same x range in every panel
        fprintf(f, "set xrange [%.0f:%.0f]\n", t->rows[0].step, t->rows[t->n - 1].step);
    for (int p = 0; p < N_PANELS; p++) {
        if (!panel_drawn(t, p)) continue;
        fprintf(f, "set title ");
        gp_str(f, panels[p].title);
        fprintf(f, "\nset ylabel ");
        gp_str(f, panels[p].ylabel);
        fprintf(f, "\nset key %s\nplot ", panels[p].key);
        const char *sep = "";
        for (int k = 2 * p; k < 2 * p + 2; k++) {
            if (!t->present[k]) continue;
            // Sparse series (val loss, short runs) get markers: lines alone would hide a point.
            size_t pts = 0;
            for (size_t i = 0; i < t->n; i++)
                pts += isfinite(t->rows[i].v[k]) != 0;
            fprintf(f, "%s$S%d using 1:2 with %s lw 2 title ", sep, k,
                    pts <= 60 ? "linespoints pt 7 ps 0.6" : "lines");
            gp_str(f, series(k)->label);
            sep = ", ";
        }
        fprintf(f, "\n");
    }
    fprintf(f, "unset multiplot\nset output\n");
}

// run_gnuplot runs `gnuplot SCRIPT` with stdin from /dev/null and its output captured, and
// waits for it. Returns ERR_OK, or ERR_IO saying that gnuplot is missing or how it failed.
static int run_gnuplot(const char *gnuplot, const char *script) {
    int p[2];
    if (pipe(p) != 0) return err_set(ERR_IO, "pipe: %s", strerror(errno));
    fcntl(p[0], F_SETFD, FD_CLOEXEC); // the copies dup2 makes on 1 and 2 stay open in the child
    fcntl(p[1], F_SETFD, FD_CLOEXEC);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_adddup2(&fa, p[1], 2);
    char *argv[] = {(char *)gnuplot, (char *)script, NULL};
    pid_t pid;
    int e = posix_spawnp(&pid, gnuplot, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    if (e) {
        close(p[0]);
        if (e == ENOENT)
            return err_set(ERR_IO, "gnuplot is not installed ('%s' not found): " GNUPLOT_HINT,
                           gnuplot);
        return err_set(ERR_IO, "cannot run '%s': %s", gnuplot, strerror(e));
    }
    char out[600];
    size_t n = 0;
    for (;;) { // read to EOF before waiting, so a talkative gnuplot never blocks on the pipe
        char buf[4096];
        ssize_t r = read(p[0], buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        size_t take = (size_t)r < sizeof out - 1 - n ? (size_t)r : sizeof out - 1 - n;
        memcpy(out + n, buf, take);
        n += take;
    }
    close(p[0]);
    out[n] = 0;
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == ' '))
        out[--n] = 0;
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return err_set(ERR_IO, "waiting for gnuplot: %s", strerror(errno));
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
        return err_set(ERR_IO, "gnuplot is not installed ('%s' could not be run): " GNUPLOT_HINT,
                       gnuplot);
    if (WIFSIGNALED(st))
        return err_set(ERR_IO, "gnuplot was killed by signal %d%s%s", WTERMSIG(st), n ? ": " : "",
                       out);
    if (WEXITSTATUS(st))
        return err_set(ERR_IO, "gnuplot failed (exit status %d)%s%s", WEXITSTATUS(st),
                       n ? ": " : "", out);
    return ERR_OK;
}

// append adds formatted text at s[*at], clamped to n bytes in all.
static void append(char *s, size_t n, size_t *at, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char *s, size_t n, size_t *at, const char *fmt, ...) {
    if (*at >= n) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(s + *at, n - *at, fmt, ap);
    va_end(ap);
    *at = w < 0 ? n : *at + (size_t)w;
}

// summarize writes "plotted OUT: N steps (A..B), panels: loss (train, val), ..." into s.
static void summarize(char *s, size_t n, const plot_table *t, const char *out) {
    size_t at = 0;
    append(s, n, &at, "plotted %s: %zu steps (%.0f..%.0f), panels:", out, t->n, t->rows[0].step,
           t->rows[t->n - 1].step);
    const char *sep = " ";
    for (int p = 0; p < N_PANELS; p++) {
        if (!panel_drawn(t, p)) continue;
        append(s, n, &at, "%s%s", sep, panels[p].title);
        sep = ", ";
        if (!panels[p].s[1].col) continue;
        const char *open = " (";
        for (int k = 2 * p; k < 2 * p + 2; k++)
            if (t->present[k]) {
                append(s, n, &at, "%s%s", open, series(k)->label);
                open = ", ";
            }
        append(s, n, &at, ")");
    }
}

int plot_metrics(const char *run_dir, const char *out, const char *gnuplot, char *summary,
                 size_t n) {
    struct stat st;
    if (stat(run_dir, &st) != 0)
        return err_set(ERR_IO, "run folder '%s': %s", run_dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return err_set(ERR_IO, "'%s' is not a folder (give the run's folder, train.out_dir)",
                       run_dir);
    size_t len = strlen(run_dir) + 32;
    char *csv = xmalloc(len), *def = xmalloc(len);
    snprintf(csv, len, "%s/metrics.csv", run_dir);
    snprintf(def, len, "%s/metrics.png", run_dir);
    if (!out) out = def;
    if (!gnuplot) gnuplot = "gnuplot";
    plot_table t;
    memset(&t, 0, sizeof t);
    int rc = read_metrics(csv, &t);
    char *tmp = NULL, script[4096] = "";
    FILE *f = NULL;
    if (!rc) {
        tmp = xmalloc(strlen(out) + 8);
        sprintf(tmp, "%s.tmp", out);
        // Open the output here first: a clear message beats gnuplot's for an unwritable path.
        if (!(f = fopen(tmp, "wb")))
            rc = err_set(ERR_IO, "cannot write '%s': %s", tmp, strerror(errno));
        else
            fclose(f);
        f = NULL;
    }
    if (!rc) {
        const char *dir = getenv("TMPDIR");
        int w =
            snprintf(script, sizeof script, "%s/spartan-plot-XXXXXX", dir && *dir ? dir : "/tmp");
        int fd = w > 0 && (size_t)w < sizeof script ? mkstemp(script) : -1;
        if (fd < 0 || !(f = fdopen(fd, "w"))) {
            rc =
                err_set(ERR_IO, "cannot create a temporary file '%s': %s", script, strerror(errno));
            if (fd >= 0) close(fd);
            script[0] = 0;
        }
    }
    if (!rc) {
        int np = 0;
        for (int p = 0; p < N_PANELS; p++)
            np += panel_drawn(&t, p);
        write_script(f, &t, tmp, run_dir, np);
        if (fclose(f) != 0) rc = err_set(ERR_IO, "cannot write '%s'", script);
        if (!rc) rc = run_gnuplot(gnuplot, script);
    }
    if (!rc && (stat(tmp, &st) != 0 || st.st_size == 0))
        rc = err_set(ERR_IO, "gnuplot wrote no image to '%s'", tmp);
    if (!rc && rename(tmp, out) != 0)
        rc = err_set(ERR_IO, "cannot rename '%s' to '%s': %s", tmp, out, strerror(errno));
    if (!rc && summary) summarize(summary, n, &t, out);
    if (rc && tmp) unlink(tmp);
    if (script[0]) unlink(script);
    free(tmp);
    free(t.rows);
    free(csv);
    free(def);
    return rc;
}

static void plot_usage(FILE *f, const args_opt *opts, int n_opts) {
    fprintf(f, "usage: spartan plot RUN_DIR [-o OUT.png] [--gnuplot PATH]\n\n"
               "Draws RUN_DIR/metrics.csv, as spartan train writes it into train.out_dir, into a\n"
               "PNG: one panel each for loss (train and val), tokens/s, learning rate, gradient\n"
               "norm, MB sent and received, and SPARTA's late and dropped rounds, for the columns\n"
               "that hold values (a single peer sends nothing: no bytes panel; rounds that all\n"
               "complete: no rounds panel). gnuplot draws it; `scripts/install-deps test`\n"
               "installs it. Prints one line: the output, the steps and the panels.\n\n"
               "options:\n");
    args_print_table(f, opts, n_opts);
}

int plot_cmd_main(int argc, char **argv) {
    const char *dir = NULL, *out = NULL, *gnuplot = "gnuplot";
    int n_pos = 0;
    const args_opt opts[] = {
        {"--output", "-o", ARGS_STR, &out, 0, 0, NULL, "OUT.png",
         "where the PNG goes (default: RUN_DIR/metrics.png)"},
        {"--gnuplot", NULL, ARGS_STR, &gnuplot, 0, 0, NULL, "PATH",
         "the gnuplot program (default: gnuplot, from PATH)"},
    };
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), &dir, 1, &n_pos);
    if (rc == ARGS_HELP) {
        plot_usage(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    if (!rc && !dir) rc = err_set(ERR_INVAL, "need a run folder (RUN_DIR)");
    if (rc) {
        fprintf(stderr, "spartan plot: %s (see spartan plot --help)\n", err_msg());
        return 2;
    }
    char summary[512];
    if (plot_metrics(dir, out, gnuplot, summary, sizeof summary)) {
        fprintf(stderr, "spartan plot: %s\n", err_msg());
        return 1;
    }
    printf("%s\n", summary);
    return 0;
}
