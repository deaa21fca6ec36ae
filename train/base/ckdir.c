// ckdir.c: checkpoint folder naming, newest-checkpoint lookup and pruning. The step is parsed
// from the file name, so ordering does not depend on modification times.
#include "train/base/ckdir.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train/base/err.h"

void ckdir_name(char *buf, size_t n, const char *dir, long step) {
    snprintf(buf, n, "%s/ckpt_%08ld.h5", dir, step);
}

// parse_step returns the step of a "ckpt_<digits>.h5" name, or -1.
static long parse_step(const char *name) {
    if (strncmp(name, "ckpt_", 5) != 0) return -1;
    char *end;
    long s = strtol(name + 5, &end, 10);
    if (end == name + 5 || strcmp(end, ".h5") != 0 || s < 0) return -1;
    return s;
}

// list_steps returns the sorted steps of the checkpoints in dir (caller frees), count in *n.
static long *list_steps(const char *dir, int *n) {
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return NULL;
    int cap = 16;
    long *steps = xmalloc((size_t)cap * sizeof(long));
    struct dirent *e;
    while ((e = readdir(d))) {
        long s = parse_step(e->d_name);
        if (s < 0) continue;
        if (*n == cap) steps = xrealloc(steps, (size_t)(cap *= 2) * sizeof(long));
        steps[(*n)++] = s;
    }
    closedir(d);
    for (int i = 1; i < *n; i++) // insertion sort: folders hold few checkpoints
        for (int j = i; j > 0 && steps[j - 1] > steps[j]; j--) {
            long t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    return steps;
}

long *ckdir_steps(const char *dir, int *n) {
    long *s = list_steps(dir, n);
    if (*n == 0) {
        free(s);
        return NULL;
    }
    return s;
}

int ckdir_resolve(const char *path, char **out) {
    struct stat st;
    if (stat(path, &st) != 0) return err_set(ERR_IO, "%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        *out = xstrdup(path);
        return ERR_OK;
    }
    int n;
    long *steps = list_steps(path, &n);
    if (n == 0) {
        free(steps);
        return err_set(ERR_IO, "%s: folder holds no checkpoint (ckpt_*.h5)", path);
    }
    char buf[4096];
    ckdir_name(buf, sizeof buf, path, steps[n - 1]);
    free(steps);
    *out = xstrdup(buf);
    return ERR_OK;
}

int ckdir_count(const char *dir, long *newest) {
    int n;
    long *steps = list_steps(dir, &n);
    if (n > 0 && newest) *newest = steps[n - 1];
    free(steps);
    return n;
}

int ckdir_prune(const char *dir, int keep, const char *except_path) {
    int n, removed = 0;
    long *steps = list_steps(dir, &n);
    for (int i = 0; i < n - keep; i++) {
        char buf[4096];
        ckdir_name(buf, sizeof buf, dir, steps[i]);
        if (except_path && strcmp(buf, except_path) == 0) continue;
        if (unlink(buf) == 0) removed++;
    }
    free(steps);
    return removed;
}
