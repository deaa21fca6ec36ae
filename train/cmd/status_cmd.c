// status_cmd.c: `spartan status`: fetches /status from each peer (fetch_get, a bounded timeout
// each) and prints one table, a row per peer; a peer that does not answer, or answers something
// that is not a status, is "down: REASON". --watch redraws the table every --interval ms, in place
// on a terminal (ANSI clear and home), as blocks one after the other otherwise. Main thread only;
// the signal handler only sets a flag.
#include "train/cmd/status_cmd.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "data/fetch.h"
#include "train/base/args.h"
#include "train/base/err.h"
#include "train/base/sys.h"

#define MAX_PEERS 256

static volatile sig_atomic_t stop_watch;

static void on_signal(int sig) {
    (void)sig;
    stop_watch = 1;
}

static void usage(FILE *f, const args_opt *opts, int n) {
    fprintf(f, "usage: spartan status HOST:PORT... [--watch] [--interval MS] [--timeout MS] "
               "[--count N]\n\n"
               "Shows the /status of training peers started with net.status_port = PORT, one row\n"
               "each: rank, step, loss, val loss, tokens/s, linked peers, bytes sent, SPARTA\n"
               "staleness (mean/max), last checkpoint. A peer that does not answer shows\n"
               "\"down: REASON\", and the exit status is then 1. The cluster page is at\n"
               "http://HOST:PORT/?peers=HOST:PORT,...\n\noptions:\n");
    args_print_table(f, opts, n);
}

// fmt_bytes writes b as "123 B", "4.5 kB", "6.7 MB" or "8.90 GB".
static void fmt_bytes(char *buf, size_t n, double b) {
    if (b < 1e3)
        snprintf(buf, n, "%.0f B", b);
    else if (b < 1e6)
        snprintf(buf, n, "%.1f kB", b / 1e3);
    else if (b < 1e9)
        snprintf(buf, n, "%.1f MB", b / 1e6);
    else
        snprintf(buf, n, "%.2f GB", b / 1e9);
}

// fmt_num writes member key of o with d decimals, or "-" when it is null or missing.
static void fmt_num(char *buf, size_t n, json_t *o, const char *key, int d) {
    json_t *v = json_object_get(o, key);
    if (json_is_number(v))
        snprintf(buf, n, "%.*f", d, json_number_value(v));
    else
        snprintf(buf, n, "-");
}

// row fetches peer's /status and prints its row. Returns 1 if it answered with a status.
static int row(const char *peer, int timeout_ms) {
    char url[512];
    snprintf(url, sizeof url, "http://%s/status", peer);
    char *body = NULL;
    long code = 0;
    char why[600] = "";
    json_t *o = NULL;
    if (fetch_get(url, timeout_ms, 1 << 20, &body, NULL, &code)) {
        snprintf(why, sizeof why, "%s", err_msg());
        const char *p = strstr(why, "/status: "); // the URL is in the row already
        if (p) memmove(why, p + 9, strlen(p + 9) + 1);
    } else if (code != 200) {
        snprintf(why, sizeof why, "HTTP %ld (not a spartan status port?)", code);
    } else {
        json_error_t e;
        o = json_loads(body, 0, &e);
        if (!json_is_object(o) || !json_is_integer(json_object_get(o, "step")))
            snprintf(why, sizeof why, "not a spartan status (%s)", o ? "no step" : e.text);
    }
    free(body);
    if (why[0]) {
        printf("%-22s down: %s\n", peer, why);
        json_decref(o);
        return 0;
    }
    char loss[32], val[32], toks[32], sent[32], stale[48], ckpt[300];
    fmt_num(loss, sizeof loss, o, "loss", 4);
    fmt_num(val, sizeof val, o, "val_loss", 4);
    fmt_num(toks, sizeof toks, o, "tok_s", 0);
    fmt_bytes(sent, sizeof sent, json_number_value(json_object_get(o, "bytes_sent")));
    json_t *sm = json_object_get(o, "stale_mean"), *sx = json_object_get(o, "stale_max");
    if (json_is_number(sm))
        snprintf(stale, sizeof stale, "%.2f/%.0f", json_number_value(sm), json_number_value(sx));
    else
        snprintf(stale, sizeof stale, "-");
    json_t *ck = json_object_get(o, "ckpt");
    if (json_is_object(ck))
        snprintf(ckpt, sizeof ckpt, "%s",
                 json_string_value(json_object_get(ck, "path"))
                     ? json_string_value(json_object_get(ck, "path"))
                     : "?");
    else
        snprintf(ckpt, sizeof ckpt, "-");
    long long step = json_integer_value(json_object_get(o, "step"));
    long long max = json_integer_value(json_object_get(o, "max_iters"));
    char steps[48], peers[32];
    snprintf(steps, sizeof steps, "%lld/%lld", step, max);
    snprintf(peers, sizeof peers, "%lld/%lld", json_integer_value(json_object_get(o, "peers")),
             json_integer_value(json_object_get(o, "members")) - 1);
    printf("%-22s %4lld %13s %7s %7s %8s %5s %9s %8s %s\n", peer,
           json_integer_value(json_object_get(o, "rank")), steps, loss, val, toks, peers, sent,
           stale, ckpt);
    json_decref(o);
    return 1;
}

// table prints the header and a row per peer. Returns the number of peers down.
static int table(const char **peers, int n, int timeout_ms) {
    printf("%-22s %4s %13s %7s %7s %8s %5s %9s %8s %s\n", "peer", "rank", "step", "loss", "val",
           "tok/s", "peers", "sent", "stale", "ckpt");
    int down = 0;
    for (int i = 0; i < n; i++)
        down += !row(peers[i], timeout_ms);
    fflush(stdout);
    return down;
}

int status_cmd_main(int argc, char **argv) {
    const char *peers[MAX_PEERS];
    int n = 0, watch = 0, interval = 2000, timeout = 2000, count = 0;
    const args_opt opts[] = {
        {"--watch", "-w", ARGS_FLAG, &watch, 0, 0, NULL, NULL,
         "refresh until Ctrl-C (in place on a terminal)"},
        {"--interval", NULL, ARGS_INT, &interval, 100, 3600000, NULL, "MS",
         "time between refreshes with --watch (default 2000)"},
        {"--timeout", NULL, ARGS_INT, &timeout, 10, 600000, NULL, "MS",
         "longest wait for one peer, connecting included (default 2000)"},
        {"--count", NULL, ARGS_INT, &count, 0, 1 << 30, NULL, "N",
         "with --watch: stop after N refreshes (0 = until Ctrl-C)"},
    };
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), peers, MAX_PEERS, &n);
    if (rc == ARGS_HELP) {
        usage(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    if (!rc && n == 0) rc = err_set(ERR_INVAL, "no peer given (HOST:PORT of a net.status_port)");
    for (int i = 0; !rc && i < n; i++)
        if (!strrchr(peers[i], ':') || strchr(peers[i], '/'))
            rc = err_set(ERR_INVAL, "'%s' is not HOST:PORT", peers[i]);
    if (rc) {
        fprintf(stderr, "spartan status: %s (see spartan status --help)\n", err_msg());
        return 2;
    }
    if (!watch) return table(peers, n, timeout) ? 1 : 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int tty = isatty(1), down = 0;
    for (int i = 0; !stop_watch && (count == 0 || i < count); i++) {
        if (i > 0) { // sleep in short slices so that Ctrl-C ends at once
            double until = sys_now_ms() + interval;
            while (!stop_watch && sys_now_ms() < until) {
                struct timespec ts = {0, 50 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            if (stop_watch) break;
        }
        time_t now = time(NULL);
        char when[32];
        strftime(when, sizeof when, "%H:%M:%S", localtime(&now));
        if (tty)
            printf("\033[H\033[2J");
        else if (i > 0)
            printf("\n");
        printf("%s  %d peer%s, every %d ms%s\n", when, n, n == 1 ? "" : "s", interval,
               tty ? " (Ctrl-C ends)" : "");
        down = table(peers, n, timeout);
    }
    return stop_watch ? 0 : down ? 1 : 0;
}
