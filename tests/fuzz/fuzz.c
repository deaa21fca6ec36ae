// fuzz.c: the helpers of the fuzz harnesses (fuzz.h): checks, temp files below /tmp that are
// made once per process and removed at exit, and splitting an input in two. One thread.
#include "tests/fuzz/fuzz.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SLOTS 4

static char paths[SLOTS][256];
static char dir[256], dir_path[320];
static int cleanup_set;

// temp_template writes the mkstemp/mkdtemp template into buf: below $FUZZ_TMPDIR when that is a
// folder below /tmp (scripts/run-fuzz makes one per run and removes it, with what crashed
// processes left there), else in /tmp.
static void temp_template(char *buf, size_t n) {
    const char *d = getenv("FUZZ_TMPDIR");
    if (!d || strncmp(d, "/tmp/", 5) != 0 || strstr(d, "..")) d = "/tmp";
    snprintf(buf, n, "%s/spartan-fuzz-XXXXXX", d);
}

static void cleanup(void) {
    for (int i = 0; i < SLOTS; i++)
        if (paths[i][0]) unlink(paths[i]);
    if (dir_path[0]) unlink(dir_path);
    if (dir[0]) rmdir(dir);
}

static void at_exit_once(void) {
    if (!cleanup_set) atexit(cleanup);
    cleanup_set = 1;
}

void fuzz_check(int ok, const char *what) {
    if (ok) return;
    fprintf(stderr, "fuzz: %s\n", what);
    abort();
}

char *fuzz_str(const uint8_t *data, size_t n) {
    char *s = malloc(n + 1);
    fuzz_check(s != NULL, "out of memory");
    if (n) memcpy(s, data, n);
    s[n] = 0;
    return s;
}

// write_path replaces the file at path with data(n). It makes a new file rather than truncating
// the old one: ext4 flushes a file truncated to zero when it is closed (auto_da_alloc), which
// cost 20 times the executions per second on a busy disk.
static void write_path(const char *path, const uint8_t *data, size_t n) {
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    fuzz_check(fd >= 0, "cannot open a temp file below /tmp");
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        fuzz_check(w > 0, "cannot write a temp file below /tmp");
        off += (size_t)w;
    }
    close(fd);
}

const char *fuzz_file(int slot, const uint8_t *data, size_t n) {
    fuzz_check(slot >= 0 && slot < SLOTS, "fuzz_file: slot out of range");
    if (!paths[slot][0]) {
        temp_template(paths[slot], sizeof paths[slot]);
        int fd = mkstemp(paths[slot]);
        fuzz_check(fd >= 0, "mkstemp below /tmp failed");
        close(fd);
        at_exit_once();
    }
    write_path(paths[slot], data, n);
    return paths[slot];
}

const char *fuzz_dir(void) {
    if (!dir[0]) {
        temp_template(dir, sizeof dir);
        fuzz_check(mkdtemp(dir) != NULL, "mkdtemp below /tmp failed");
        at_exit_once();
    }
    return dir;
}

const char *fuzz_dir_file(const char *name, const uint8_t *data, size_t n) {
    // One file name per process: cleanup removes exactly what was written.
    fuzz_check(!dir_path[0] || !strcmp(strrchr(dir_path, '/') + 1, name),
               "fuzz_dir_file: one file name per process");
    snprintf(dir_path, sizeof dir_path, "%s/%s", fuzz_dir(), name);
    write_path(dir_path, data, n);
    return dir_path;
}

void fuzz_split(const uint8_t *data, size_t n, const uint8_t **a, size_t *an, const uint8_t **b,
                size_t *bn) {
    size_t sl = sizeof FUZZ_SEP - 1;
    *a = data;
    *an = n;
    *b = data + n;
    *bn = 0;
    for (size_t i = 0; i + sl <= n; i++) {
        if (memcmp(data + i, FUZZ_SEP, sl) == 0) {
            *an = i;
            *b = data + i + sl;
            *bn = n - i - sl;
            return;
        }
    }
}
