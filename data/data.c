// data/data.c: token shards (format in data.h) and the batch loader.
// Invariant: a shard is an immutable read-only mapping validated at open; the loader's window
// starts are a pure function of (seed, rank, batch position, row), so data_loader_set_pos
// reproduces any point of the stream exactly. A loader belongs to one thread (the trainer).
#include "data/data.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "train/base/err.h"
#include "train/base/sys.h"

#define HEADER_BYTES 32

struct data_shard {
    const uint8_t *map; // whole file, HEADER_BYTES + n * width
    size_t map_len;
    size_t n;
    int dtype;
    int64_t max_token; // -2 until computed
};

struct data_loader {
    data_shard *s;
    int B, T;
    uint64_t seed;
    int rank;
    uint64_t pos;
};

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p) { return get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

// write_all writes n bytes to fd, retrying short writes.
static int write_all(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int data_shard_write(const char *path, const int32_t *tokens, size_t n) {
    int dtype = DATA_U16;
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < 0)
            return err_set(ERR_INVAL, "data: token %d at index %zu is negative (writing '%s')",
                           (int)tokens[i], i, path);
        if (tokens[i] > 65535) dtype = DATA_U32;
    }
    size_t width = dtype == DATA_U16 ? 2 : 4;
    size_t plen = strlen(path);
    char *tmp = xmalloc(plen + 32);
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return err_set(ERR_IO, "data: cannot create '%s': %s", path, strerror(e));
    }
    uint8_t hdr[HEADER_BYTES] = {0};
    put_u32(hdr, DATA_MAGIC);
    put_u32(hdr + 4, DATA_VERSION);
    put_u32(hdr + 8, (uint32_t)dtype);
    put_u64(hdr + 16, (uint64_t)n);
    int bad = write_all(fd, hdr, sizeof hdr);
    // Tokens go out in little-endian chunks through one small reused buffer.
    enum { CHUNK = 1 << 15 };
    uint8_t *buf = xmalloc(CHUNK * 4);
    for (size_t i = 0; i < n && !bad; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        for (size_t j = 0; j < k; j++) {
            uint32_t v = (uint32_t)tokens[i + j];
            for (size_t b = 0; b < width; b++)
                buf[j * width + b] = (uint8_t)(v >> (8 * b));
        }
        bad = write_all(fd, buf, k * width);
    }
    free(buf);
    int e = bad ? errno : 0;
    if (!bad && sys_fsync_durable(fd) != 0) {
        bad = 1;
        e = errno;
    }
    if (close(fd) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (!bad && rename(tmp, path) != 0) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        unlink(tmp);
        free(tmp);
        return err_set(ERR_IO, "data: cannot write '%s': %s", path, strerror(e));
    }
    free(tmp);
    return sys_fsync_parent(path); // the rename too must survive a crash
}

int data_shard_open(data_shard **out, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_set(ERR_IO, "data: cannot open shard '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return err_set(ERR_IO, "data: cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(ERR_IO, "data: shard '%s' is not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < HEADER_BYTES) {
        close(fd);
        return err_set(ERR_FORMAT, "data: shard '%s' is %s (%zu bytes, the header alone is %d)",
                       path, size ? "truncated" : "empty", size, HEADER_BYTES);
    }
    void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); // the mapping keeps its own reference
    if (m == MAP_FAILED) return err_set(ERR_IO, "data: cannot map '%s': %s", path, strerror(e));
    const uint8_t *h = m;
    uint32_t magic = get_u32(h), version = get_u32(h + 4), dtype = get_u32(h + 8);
    uint64_t n = get_u64(h + 16);
    int rc = ERR_OK;
    if (magic != DATA_MAGIC)
        rc = err_set(ERR_FORMAT, "data: '%s' is not a token shard (magic 0x%08x, want 0x%08x)",
                     path, magic, DATA_MAGIC);
    else if (version != DATA_VERSION)
        rc = err_set(ERR_FORMAT, "data: shard '%s' has version %u, this build reads version %u",
                     path, version, DATA_VERSION);
    else if (dtype != DATA_U16 && dtype != DATA_U32)
        rc = err_set(ERR_FORMAT, "data: shard '%s' has unknown dtype %u (want 1=uint16, 2=uint32)",
                     path, dtype);
    else {
        uint64_t width = dtype == DATA_U16 ? 2 : 4;
        uint64_t body = (uint64_t)(size - HEADER_BYTES);
        if (n > body / width)
            rc = err_set(ERR_FORMAT,
                         "data: shard '%s' is truncated: header says %llu tokens "
                         "(%llu bytes) but only %llu bytes follow the header",
                         path, (unsigned long long)n, (unsigned long long)(n * width),
                         (unsigned long long)body);
        else if (n * width != body)
            rc = err_set(ERR_FORMAT, "data: shard '%s' has %llu trailing bytes after %llu tokens",
                         path, (unsigned long long)(body - n * width), (unsigned long long)n);
    }
    if (rc != ERR_OK) {
        munmap(m, size);
        return rc;
    }
    data_shard *s = xcalloc(1, sizeof *s);
    s->map = m;
    s->map_len = size;
    s->n = (size_t)n;
    s->dtype = (int)dtype;
    s->max_token = -2;
    *out = s;
    return ERR_OK;
}

size_t data_shard_len(const data_shard *s) { return s->n; }

void data_shard_read(const data_shard *s, size_t start, size_t n, int32_t *dst) {
    ASSERT(start <= s->n && n <= s->n - start);
    const uint8_t *p = s->map + HEADER_BYTES;
    if (s->dtype == DATA_U16) {
        p += 2 * start;
        for (size_t i = 0; i < n; i++)
            dst[i] = (int32_t)(p[2 * i] | (uint32_t)p[2 * i + 1] << 8);
    } else {
        p += 4 * start;
        for (size_t i = 0; i < n; i++)
            dst[i] = (int32_t)get_u32(p + 4 * i);
    }
}

int32_t data_shard_max_token(data_shard *s) {
    if (s->max_token == -2) {
        int64_t mx = -1;
        int32_t buf[4096];
        for (size_t i = 0; i < s->n; i += 4096) {
            size_t k = s->n - i < 4096 ? s->n - i : 4096;
            data_shard_read(s, i, k, buf);
            for (size_t j = 0; j < k; j++)
                if (buf[j] > mx) mx = buf[j];
        }
        s->max_token = mx;
    }
    return (int32_t)s->max_token;
}

void data_shard_close(data_shard *s) {
    if (!s) return;
    munmap((void *)s->map, s->map_len);
    free(s);
}

// ---------------------------------------------------------------------------------------------
// Loader

// splitmix64's finalizer: a bijective 64-bit mix, so chained keys stay collision free per step.
static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// window_start hashes (seed, pos, j) into [0, span), where j = rank*B + b is the window's index
// in the global batch: rank r of a group with micro-batch B takes windows [rB, rB + B) of global
// batch pos, so one peer with batch P*B draws exactly the union of P peers' batches (what the
// DDP equivalence needs). The modulo bias is below span/2^64, under 1e-9 for any real shard.
static uint64_t window_start(const data_loader *dl, uint64_t pos, int b, uint64_t span) {
    uint64_t j = (uint64_t)(uint32_t)dl->rank * (uint64_t)(uint32_t)dl->B + (uint64_t)(uint32_t)b;
    uint64_t h = mix64(dl->seed);
    h = mix64(h ^ pos);
    h = mix64(h ^ j);
    return h % span;
}

int data_loader_create(data_loader **out, data_shard *s, int B, int T, uint64_t seed, int rank) {
    if (B <= 0 || T <= 0 || rank < 0)
        return err_set(ERR_INVAL,
                       "data: loader needs B > 0, T > 0 and rank >= 0 (got B=%d T=%d "
                       "rank=%d)",
                       B, T, rank);
    if (s->n < (size_t)T + 1)
        return err_set(ERR_INVAL,
                       "data: shard holds %zu tokens but one window of seq_len T=%d "
                       "needs at least %d",
                       s->n, T, T + 1);
    data_loader *dl = xcalloc(1, sizeof *dl);
    *dl = (data_loader){.s = s, .B = B, .T = T, .seed = seed, .rank = rank, .pos = 0};
    *out = dl;
    return ERR_OK;
}

void data_loader_next(data_loader *dl, int32_t *x, int32_t *y) {
    size_t T = (size_t)dl->T;
    uint64_t span = (uint64_t)(dl->s->n - T); // starts 0 .. n-T-1
    for (int b = 0; b < dl->B; b++) {
        size_t start = (size_t)window_start(dl, dl->pos, b, span);
        // (T+1)-token window: x = w[0..T), y = w[1..T]
        data_shard_read(dl->s, start, T, x + (size_t)b * T);
        data_shard_read(dl->s, start + 1, T, y + (size_t)b * T);
    }
    dl->pos++;
}

uint64_t data_loader_pos(const data_loader *dl) { return dl->pos; }

void data_loader_set_pos(data_loader *dl, uint64_t pos) { dl->pos = pos; }

void data_loader_destroy(data_loader *dl) { free(dl); }

// ---------------------------------------------------------------------------------------------
// meta.json

int data_meta_read(const char *dir, char **tok_spec, int *vocab_size) {
    size_t len = strlen(dir) + sizeof "/meta.json";
    char *path = xmalloc(len);
    snprintf(path, len, "%s/meta.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        int rc = err_set(ERR_IO, "data: cannot open '%s': %s", path, strerror(errno));
        free(path);
        return rc;
    }
    json_error_t je;
    json_t *root = json_loadf(f, 0, &je);
    fclose(f);
    int rc = ERR_OK;
    json_t *spec = root ? json_object_get(root, "tokenizer") : NULL;
    json_t *vs = root ? json_object_get(root, "vocab_size") : NULL;
    if (!root)
        rc = err_set(ERR_FORMAT, "data: '%s' is not valid JSON (line %d: %s)", path, je.line,
                     je.text);
    else if (!json_is_string(spec))
        rc =
            err_set(ERR_FORMAT, "data: '%s': field \"tokenizer\" is missing or not a string", path);
    else if (!json_is_integer(vs) || json_integer_value(vs) <= 0 ||
             json_integer_value(vs) > (1 << 30))
        rc = err_set(ERR_FORMAT,
                     "data: '%s': field \"vocab_size\" is missing or not a positive "
                     "integer",
                     path);
    if (rc == ERR_OK) {
        *tok_spec = xstrdup(json_string_value(spec));
        *vocab_size = (int)json_integer_value(vs);
    }
    json_decref(root);
    free(path);
    return rc;
}
