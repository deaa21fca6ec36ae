// sys.c: the clocks, monotonic condition variables, a sleep and mkdir -p. No state; any thread.
#include "train/base/sys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "train/base/err.h"

double sys_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

double sys_now_s(void) { return sys_now_ms() / 1e3; }

struct timespec sys_wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts;
}

// macOS has no pthread_condattr_setclock: there its condition variables wait by the time of day.
#ifdef __APPLE__
#define COND_CLOCK CLOCK_REALTIME
#else
#define COND_CLOCK CLOCK_MONOTONIC
#endif

void sys_cond_init(pthread_cond_t *cv) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
#ifndef __APPLE__
    pthread_condattr_setclock(&ca, COND_CLOCK);
#endif
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

struct timespec sys_deadline(double ms) {
    struct timespec dl;
    clock_gettime(COND_CLOCK, &dl);
    long long ns = dl.tv_nsec + (long long)(ms * 1e6);
    dl.tv_sec += (time_t)(ns / 1000000000LL);
    dl.tv_nsec = (long)(ns % 1000000000LL);
    return dl;
}

void sys_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int sys_mkdir_p(const char *dir) {
    char *buf = xstrdup(dir);
    int rc = ERR_OK;
    for (char *p = buf + 1; *p && rc == ERR_OK; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            rc = err_set(ERR_IO, "cannot create folder '%s': %s", buf, strerror(errno));
        *p = '/';
    }
    struct stat st;
    if (rc == ERR_OK && mkdir(buf, 0777) != 0 && errno != EEXIST)
        rc = err_set(ERR_IO, "cannot create folder '%s': %s", buf, strerror(errno));
    else if (rc == ERR_OK && (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)))
        rc = err_set(ERR_IO, "'%s' exists and is not a folder", buf);
    free(buf);
    return rc;
}

int sys_read_file(const char *path, size_t max, const char *what, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(ERR_IO, "cannot open %s '%s': %s", what, path, strerror(errno));
    // One byte past the limit tells a file that is too big from one that is exactly the limit.
    size_t cap = 4096, n = 0;
    char *buf = xmalloc(cap);
    int rc = ERR_OK;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max + 1) break;
            cap = cap * 2 > max + 2 ? max + 2 : cap * 2;
            buf = xrealloc(buf, cap);
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, f);
        n += r;
        if (r == 0) break;
    }
    if (ferror(f))
        rc = err_set(ERR_IO, "cannot read %s '%s': %s", what, path, strerror(errno));
    else if (n > max)
        rc = err_set(ERR_INVAL, "%s '%s' is larger than %zu bytes", what, path, max);
    fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return ERR_OK;
}
