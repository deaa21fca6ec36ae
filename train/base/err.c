// err.c: thread-local error messages and the aborting allocators. Any thread may call these.
#include "train/base/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

// Allocations of HUGE_MIN bytes or more come in whole transparent huge pages (Linux, madvise).
#define HUGE_PAGE ((size_t)2 << 20)
#define HUGE_MIN  ((size_t)8 << 20)

static _Thread_local char err_buf[1024];

int err_set(int code, const char *fmt, ...) {
    // Callers wrap the message before: err_set(rc, "...: %s", err_msg()). Formatting straight
    // into err_buf would read and write the same bytes (undefined; glibc repeats the prefix).
    char tmp[sizeof err_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(err_buf, tmp, sizeof tmp);
    return code;
}

const char *err_msg(void) { return err_buf; }

const char *err_str(int code) {
    static const char *names[ERR_COUNT_] = {"ERR_OK",      "ERR_NOMEM",  "ERR_INVAL",
                                            "ERR_IO",      "ERR_FORMAT", "ERR_NET",
                                            "ERR_TIMEOUT", "ERR_CLOSED", "ERR_PEER"};
    return (code >= 0 && code < ERR_COUNT_) ? names[code] : "ERR_?";
}

void err_oom(const char *what, size_t n) {
    if (n)
        fprintf(stderr, "spartan: out of memory (%s, %zu bytes)\n", what, n);
    else
        fprintf(stderr, "spartan: out of memory (%s)\n", what);
    abort();
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) err_oom("malloc", n);
    return p;
}

void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) err_oom("calloc", n * size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) err_oom("realloc", n);
    return q;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

void *xalloc_aligned(size_t n) {
    void *p = NULL;
    size_t sz = (n + 63) & ~(size_t)63;
#ifdef MADV_HUGEPAGE
    if (sz >= HUGE_MIN) { // whole huge pages: first touches and TLB misses 512 times fewer
        sz = (sz + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
        if (posix_memalign(&p, HUGE_PAGE, sz) != 0) err_oom("posix_memalign", n);
        madvise(p, sz, MADV_HUGEPAGE); // advice only: where it is refused, small pages serve
        return p;
    }
#endif
    if (posix_memalign(&p, 64, sz ? sz : 64) != 0) err_oom("posix_memalign", n);
    return p;
}

void err_assert_fail(const char *cond, const char *file, int line) {
    fprintf(stderr, "spartan: assertion failed: %s (%s:%d)\n", cond, file, line);
    abort();
}
