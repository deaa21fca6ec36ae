// probe_cmd.c: `spartan probe --listen ADDR,... --connect ADDR,... [--timeout MS]`, the
// launcher's reachability check. Every host of a launch runs it at once: it listens on the
// host's peer ports (what the peers will listen on), connects to every other peer's port until
// each connection succeeds or the time is up, and prints one line per address:
//   probe listen HOST:PORT ok | probe listen HOST:PORT fail: REASON
//   probe reach HOST:PORT ok  | probe reach HOST:PORT fail: REASON
// then "probe done". It keeps accepting (so slower hosts can finish their checks) until its
// stdin ends or the timeout passes. Plain TCP sockets, one thread, every wait bounded.
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "train/base/args.h"
#include "train/base/err.h"
#include "train/base/sys.h"
#include "train/cmd/probe_cmd.h"

#define PROBE_MAX 256

// split_addr splits "host:port" or "[v6]:port" into host and port. Returns 0 or -1.
static int split_addr(const char *s, char *host, size_t n, char *port, size_t pn) {
    const char *colon = strrchr(s, ':');
    if (!colon || !colon[1]) return -1;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') h++, hl -= 2;
    if (hl >= n || strlen(colon + 1) >= pn) return -1;
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(port, pn, "%s", colon + 1);
    return 0;
}

// open_sock resolves addr and makes a socket bound to it (listen) or connecting to it,
// non-blocking. Returns the descriptor or -1 with the reason in why.
static int open_sock(const char *addr, int listen_, char *why, size_t wn) {
    char host[256], port[16];
    if (split_addr(addr, host, sizeof host, port, sizeof port)) {
        snprintf(why, wn, "not HOST:PORT");
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int g = getaddrinfo(host, port, &hints, &ai);
    if (g) {
        snprintf(why, wn, "%s", gai_strerror(g));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0) {
        snprintf(why, wn, "socket: %s", strerror(errno));
        freeaddrinfo(ai);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    int rc, one = 1;
    if (listen_) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        rc = bind(fd, ai->ai_addr, ai->ai_addrlen);
        if (!rc) rc = listen(fd, 64);
    } else {
        rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc && errno == EINPROGRESS) rc = 0;
    }
    freeaddrinfo(ai);
    if (rc) {
        snprintf(why, wn, "%s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

// A comma-separated list of addresses into list[0..n).
static int split_list(const char *s, char (*list)[300], int max) {
    int n = 0;
    while (s && *s && n < max) {
        const char *c = strchr(s, ',');
        size_t len = c ? (size_t)(c - s) : strlen(s);
        if (len && len < 300) {
            memcpy(list[n], s, len);
            list[n++][len] = 0;
        }
        s = c ? c + 1 : NULL;
    }
    return n;
}

int probe_cmd_main(int argc, char **argv) {
    const char *listen_s = NULL, *connect_s = NULL;
    int timeout = 10000;
    args_opt opts[] = {
        {"--listen", NULL, ARGS_STR, &listen_s, 0, 0, NULL, "ADDR,...",
         "listen on these HOST:PORT addresses"},
        {"--connect", NULL, ARGS_STR, &connect_s, 0, 0, NULL, "ADDR,...",
         "connect to these HOST:PORT addresses"},
        {"--timeout", NULL, ARGS_INT, &timeout, 100, 600000, NULL, "MS",
         "give up on a connection after this long, and stop listening then [10000]"},
    };
    int n_pos = 0;
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), NULL, 0, &n_pos);
    if (rc == ARGS_HELP) {
        printf("usage: spartan probe --listen ADDR,... --connect ADDR,... [--timeout MS]\n\n"
               "The reachability check of `spartan launch`, run on every host: listens on the\n"
               "host's peer ports, connects to the others', prints one line per address.\n\n");
        args_print_table(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    if (rc) {
        fprintf(stderr, "spartan probe: %s\n", err_msg());
        return 2;
    }
    static char lst[PROBE_MAX][300], con[PROBE_MAX][300];
    int nl = split_list(listen_s, lst, PROBE_MAX), nc = split_list(connect_s, con, PROBE_MAX);
    int lfd[PROBE_MAX], cfd[PROBE_MAX], cdone[PROBE_MAX] = {0}, bad = 0;
    double next_try[PROBE_MAX] = {0};
    char why[PROBE_MAX][128];
    for (int i = 0; i < nl; i++) {
        char w[128];
        lfd[i] = open_sock(lst[i], 1, w, sizeof w);
        if (lfd[i] < 0)
            bad = 1, printf("probe listen %s fail: %s\n", lst[i], w);
        else
            printf("probe listen %s ok\n", lst[i]);
    }
    fflush(stdout);
    double end = sys_now_ms() + timeout;
    for (int i = 0; i < nc; i++)
        cfd[i] = -1, snprintf(why[i], sizeof why[i], "timed out");
    int left = nc, stdin_open = 1, said = 0;
    // connect until each address answered or the time is up, accepting all the while
    while (sys_now_ms() < end && (left > 0 || stdin_open)) {
        double now = sys_now_ms();
        for (int i = 0; i < nc && left > 0; i++) {
            if (cdone[i] || cfd[i] >= 0 || now < next_try[i]) continue;
            cfd[i] = open_sock(con[i], 0, why[i], sizeof why[i]);
            if (cfd[i] < 0) next_try[i] = now + 100;
        }
        struct pollfd fds[2 * PROBE_MAX + 1];
        int map[2 * PROBE_MAX + 1], nf = 0;
        for (int i = 0; i < nl; i++)
            if (lfd[i] >= 0)
                map[nf] = i, fds[nf++] = (struct pollfd){.fd = lfd[i], .events = POLLIN};
        for (int i = 0; i < nc; i++)
            if (cfd[i] >= 0)
                map[nf] = PROBE_MAX + i,
                fds[nf++] = (struct pollfd){.fd = cfd[i], .events = POLLOUT};
        if (stdin_open && left == 0)
            map[nf] = -1, fds[nf++] = (struct pollfd){.fd = 0, .events = POLLIN};
        int r = poll(fds, (nfds_t)nf, 50);
        for (int k = 0; k < nf && r > 0; k++) {
            if (!fds[k].revents) continue;
            if (map[k] < 0) { // stdin: data is ignored, end of file ends the probe
                char buf[256];
                if (read(0, buf, sizeof buf) <= 0) stdin_open = 0;
            } else if (map[k] < PROBE_MAX) {
                int a = accept(fds[k].fd, NULL, NULL);
                if (a >= 0) close(a);
            } else {
                int i = map[k] - PROBE_MAX, err = 0;
                socklen_t el = sizeof err;
                getsockopt(cfd[i], SOL_SOCKET, SO_ERROR, &err, &el);
                close(cfd[i]);
                cfd[i] = -1;
                if (err) { // refused (nothing listens yet?): try again shortly
                    snprintf(why[i], sizeof why[i], "%s", strerror(err));
                    next_try[i] = sys_now_ms() + 100;
                } else {
                    cdone[i] = 1;
                    left--;
                    printf("probe reach %s ok\n", con[i]);
                    fflush(stdout);
                }
            }
        }
        if (left == 0 && !said) { // every address answered: say so, keep accepting
            printf("probe done\n");
            fflush(stdout);
            said = 1;
        }
    }
    for (int i = 0; i < nc; i++) {
        if (cfd[i] >= 0) close(cfd[i]);
        if (!cdone[i]) bad = 1, printf("probe reach %s fail: %s\n", con[i], why[i]);
    }
    if (!said) printf("probe done\n");
    for (int i = 0; i < nl; i++)
        if (lfd[i] >= 0) close(lfd[i]);
    fflush(stdout);
    return bad ? 1 : 0;
}
