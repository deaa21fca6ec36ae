// le.h: explicit little-endian integers for everything the peer layer puts on the wire, so peers
// of either byte order read the same values. Header-only (static inline); any thread.
#ifndef LE_H
#define LE_H

#include <stdint.h>

// le_put16/32/64 store v at p, least significant byte first.
static inline void le_put16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static inline void le_put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline void le_put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

// le_get16/32/64 read what le_put16/32/64 stored.
static inline uint16_t le_get16(const unsigned char *p) {
    return (uint16_t)(p[0] | (unsigned)p[1] << 8);
}

static inline uint32_t le_get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le_get64(const unsigned char *p) {
    return (uint64_t)le_get32(p) | (uint64_t)le_get32(p + 4) << 32;
}

#endif
