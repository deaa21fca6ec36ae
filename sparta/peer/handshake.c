// handshake.c: the SYS messages as bytes (see handshake.h).
#include "sparta/peer/handshake.h"

#include <string.h>

#include "sparta/peer/le.h"

// take_str reads a length-prefixed string (lenbytes 2 or 4) of at most cap - 1 bytes, none of
// them NUL (a string with one inside would mean less here than it said there).
static int take_str(const unsigned char **p, const unsigned char *end, int lenbytes, char *out,
                    size_t cap) {
    if (end - *p < lenbytes) return -1;
    size_t n = lenbytes == 2 ? le_get16(*p) : le_get32(*p);
    *p += lenbytes;
    if ((size_t)(end - *p) < n || n >= cap || memchr(*p, 0, n)) return -1; // text, no NUL
    memcpy(out, *p, n);
    out[n] = 0;
    *p += n;
    return 0;
}

uint64_t hs_settings_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

size_t hs_hello_encode(const hs_hello *h, unsigned char *p, size_t cap) {
    const char *shared = h->shared ? h->shared : "";
    size_t bl = strlen(h->build), al = strlen(h->addr), sl = strlen(shared);
    size_t need = 1 + 4 + 24 + 4 + 4 + 1 + 2 + bl + 2 + al + 4 + sl;
    if (need > cap || bl > 0xffff || al > 0xffff) return 0;
    unsigned char *q = p;
    *q++ = SYS_HELLO;
    le_put32(q, 0), q += 4;
    le_put64(q, h->run_id), q += 8;
    le_put64(q, h->member), q += 8;
    le_put64(q, h->settings_hash), q += 8;
    le_put32(q, (uint32_t)h->rank), q += 4;
    le_put32(q, (uint32_t)h->world), q += 4;
    *q++ = (unsigned char)(h->joining != 0);
    le_put16(q, (uint16_t)bl), q += 2;
    memcpy(q, h->build, bl), q += bl;
    le_put16(q, (uint16_t)al), q += 2;
    memcpy(q, h->addr, al), q += al;
    le_put32(q, (uint32_t)sl), q += 4;
    memcpy(q, shared, sl), q += sl;
    return (size_t)(q - p);
}

int hs_hello_parse(const unsigned char *p, size_t len, hs_hello *h, char *shared, size_t scap,
                   size_t *used) {
    const unsigned char *start = p, *end = p + len;
    memset(h, 0, sizeof *h);
    if (len < 1 + 4 + 24 + 9 || p[0] != SYS_HELLO || scap == 0) return -1;
    p += 5;
    h->run_id = le_get64(p), p += 8;
    h->member = le_get64(p), p += 8;
    h->settings_hash = le_get64(p), p += 8;
    h->rank = (int32_t)le_get32(p), p += 4;
    h->world = (int)le_get32(p), p += 4;
    h->joining = *p++;
    if (take_str(&p, end, 2, h->build, sizeof h->build) ||
        take_str(&p, end, 2, h->addr, sizeof h->addr) || take_str(&p, end, 4, shared, scap))
        return -1;
    if (h->world < 0 || h->joining > 1) return -1;
    h->shared = shared;
    *used = (size_t)(p - start);
    return 0;
}

size_t hs_view_encode(uint64_t epoch, int your_rank, const peer_member *mem, const int *present,
                      unsigned char *p, size_t cap) {
    unsigned char *q = p, *end = p + cap;
    if (cap < 17) return 0;
    *q++ = SYS_VIEW;
    le_put64(q, epoch), q += 8;
    le_put32(q, (uint32_t)your_rank), q += 4;
    unsigned char *np = q;
    q += 4;
    uint32_t n = 0;
    for (int r = 0; r < PEER_MAX_MEMBERS; r++) {
        if (!present[r]) continue;
        size_t al = strlen(mem[r].addr);
        if ((size_t)(end - q) < 14 + al) return 0;
        le_put32(q, (uint32_t)r), q += 4;
        le_put64(q, mem[r].id), q += 8;
        le_put16(q, (uint16_t)al), q += 2;
        memcpy(q, mem[r].addr, al), q += al;
        n++;
    }
    le_put32(np, n);
    return (size_t)(q - p);
}

int hs_view_parse(const unsigned char *p, size_t len, uint64_t *epoch, int *your_rank, int *present,
                  peer_member *mem) {
    const unsigned char *end = p + len;
    if (len < 17 || p[0] != SYS_VIEW) return -1;
    *epoch = le_get64(p + 1);
    *your_rank = (int32_t)le_get32(p + 9);
    uint32_t n = le_get32(p + 13);
    p += 17;
    if (n > PEER_MAX_MEMBERS || *your_rank < -1 || *your_rank >= PEER_MAX_MEMBERS) return -1;
    memset(present, 0, PEER_MAX_MEMBERS * sizeof *present);
    memset(mem, 0, PEER_MAX_MEMBERS * sizeof *mem);
    for (uint32_t i = 0; i < n; i++) {
        if (end - p < 14) return -1;
        int r = (int32_t)le_get32(p);
        uint64_t id = le_get64(p + 4);
        p += 12;
        if (r < 0 || r >= PEER_MAX_MEMBERS || present[r]) return -1;
        if (take_str(&p, end, 2, mem[r].addr, sizeof mem[r].addr)) return -1;
        present[r] = 1;
        mem[r].rank = r;
        mem[r].id = id;
    }
    return p == end ? 0 : -1;
}
