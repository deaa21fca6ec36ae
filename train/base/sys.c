// sys.c: the platform layer: clocks, condition variables with deadlines, a sleep, folders,
// durable syncs, the executable's path, close-on-exec sockets, the state folder. No state; any
// thread. The one place for #ifdefs on the operating system: SYS_LINUX and SYS_MACOS pick the
// native calls, SYS_PORTABLE (any other system, or -DSPARTAN_FORCE_PORTABLE) only POSIX ones.
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
// -D_POSIX_C_SOURCE hides F_FULLFSYNC and the BSD calls on macOS; this brings them back.
#define _DARWIN_C_SOURCE
#endif
#include "train/base/sys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(SPARTAN_FORCE_PORTABLE)
#define SYS_PORTABLE 1
#elif defined(__linux__)
#define SYS_LINUX 1
#elif defined(__APPLE__)
#define SYS_MACOS 1
#include <mach-o/dyld.h>
#else
#define SYS_PORTABLE 1
#endif

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
#if SYS_LINUX
#define COND_CLOCK CLOCK_MONOTONIC
#else
#define COND_CLOCK CLOCK_REALTIME
#endif

void sys_cond_init(pthread_cond_t *cv) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
#if SYS_LINUX
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

int sys_fsync_durable(int fd) {
    int r;
#if SYS_MACOS
    // F_FULLFSYNC: fsync, then the drive flushes its cache. Network and FAT volumes refuse it.
    while ((r = fcntl(fd, F_FULLFSYNC)) != 0 && errno == EINTR) {
    }
    if (r == 0 || (errno != ENOTSUP && errno != EINVAL)) return r;
#endif
    while ((r = fsync(fd)) != 0 && errno == EINTR) {
    }
    return r;
}

int sys_fsync_parent(const char *path) {
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = 0;
    else if (slash)
        *slash = 0;
    else
        strcpy(dir, ".");
    int rc = ERR_OK;
    int fd = open(dir, O_RDONLY | O_CLOEXEC | O_DIRECTORY);
    if (fd < 0)
        rc = err_set(ERR_IO, "cannot open folder '%s' to sync it: %s", dir, strerror(errno));
    else if (sys_fsync_durable(fd) != 0 && errno != EINVAL && errno != ENOTSUP)
        rc = err_set(ERR_IO, "cannot sync folder '%s': %s", dir, strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return rc;
}

int sys_exe_path(char *buf, size_t n) {
    ASSERT(buf && n > 0);
    buf[0] = 0;
#if SYS_LINUX
    ssize_t k = readlink("/proc/self/exe", buf, n);
    if (k < 0) return err_set(ERR_IO, "cannot read /proc/self/exe: %s", strerror(errno));
    if ((size_t)k >= n) {
        buf[0] = 0;
        return err_set(ERR_INVAL, "the executable's path is longer than %zu bytes", n - 1);
    }
    buf[k] = 0;
    return ERR_OK;
#elif SYS_MACOS
    // _NSGetExecutablePath gives the path exec was given, which may be relative or a symlink;
    // realpath makes it what /proc/self/exe gives on Linux.
    char raw[PATH_MAX], real[PATH_MAX];
    uint32_t sz = sizeof raw;
    if (_NSGetExecutablePath(raw, &sz) != 0)
        return err_set(ERR_INVAL, "the executable's path is longer than %zu bytes", sizeof raw);
    if (!realpath(raw, real))
        return err_set(ERR_IO, "cannot resolve the executable's path '%s': %s", raw,
                       strerror(errno));
    size_t k = strlen(real);
    if (k >= n) return err_set(ERR_INVAL, "the executable's path is longer than %zu bytes", n - 1);
    memcpy(buf, real, k + 1);
    return ERR_OK;
#else
    return err_set(ERR_IO, "this system cannot tell the executable's path");
#endif
}

int sys_socket(int domain, int type, int protocol) {
#if SYS_LINUX
    return socket(domain, type | SOCK_CLOEXEC, protocol);
#else
    int fd = socket(domain, type, protocol);
    if (fd >= 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
#endif
}

int sys_state_home(char *buf, size_t n) {
    ASSERT(buf && n > 0);
    buf[0] = 0;
    const char *x = getenv("XDG_STATE_HOME"), *h = getenv("HOME");
#if SYS_MACOS
    const char *under_home = "Library/Application Support";
#else
    const char *under_home = ".local/state";
#endif
    int len;
    if (x && x[0])
        len = snprintf(buf, n, "%s", x);
    else if (h && h[0])
        len = snprintf(buf, n, "%s/%s", h, under_home);
    else
        return err_set(ERR_INVAL, "neither XDG_STATE_HOME nor HOME is set");
    if (len < 0 || (size_t)len >= n) {
        buf[0] = 0;
        return err_set(ERR_INVAL, "the state folder's path is longer than %zu bytes", n - 1);
    }
    return ERR_OK;
}
