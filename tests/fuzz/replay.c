// replay.c: the plain driver that `make test` links each fuzz harness with instead of libFuzzer
// (gcc, or any compiler; with ASan and UBSan under `make sanitize`). Every argument is a file or
// a folder of files (read in name order, dot files skipped); each file is one input to
// LLVMFuzzerTestOneInput. A harness that crashes or aborts on an input ends the process (with
// that signal, or with ASan's exit status); otherwise it prints how many inputs ran and exits 0.
// A missing argument exits 2. With FUZZ_REPLAY_VERBOSE=1 in the environment each input's path is
// printed to stderr before it runs, so the last one printed before a crash is the culprit.
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz.h"

static int verbose; // FUZZ_REPLAY_VERBOSE=1

// run_file replays the file at path; returns 0, or -1 if it cannot be read.
static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 4096, n = 0;
    unsigned char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    int bad = ferror(f) || !buf;
    fclose(f);
    if (bad) {
        free(buf);
        return -1;
    }
    if (verbose) fprintf(stderr, "replay: %s\n", path);
    // An exact-size copy, so that ASan sees a read past the input's end.
    unsigned char *exact = malloc(n ? n : 1);
    if (n) memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// run_dir replays every file of the folder dir in name order; returns the count or -1.
static long run_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) names = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *names);
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        snprintf(names[n++], len, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    long ran = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode) && run_file(names[i]) == 0) ran++;
        free(names[i]);
    }
    free(names);
    return ran;
}

int main(int argc, char **argv) {
    long total = 0;
    const char *v = getenv("FUZZ_REPLAY_VERBOSE");
    verbose = v && !strcmp(v, "1");
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: no such file or folder\n", argv[i]);
            return 2;
        }
        long k = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i]) == 0 ? 1 : -1;
        if (k < 0) {
            fprintf(stderr, "replay: %s: cannot be read\n", argv[i]);
            return 2;
        }
        total += k;
    }
    printf("replay: %ld inputs, no crash\n", total);
    return 0;
}
