// wire.c: encode and validate SPARTA messages (layout in wire.h). The header is written and read
// byte by byte in little-endian order, so the format is the same on every host and no field is
// ever loaded unaligned. The CRC32C covers header bytes [0, 44) and the payload, so a message
// with any single flipped bit is rejected. int8 payloads decode and re-encode to the same bytes
// (scales are fixed points, see wire.h), which the ring all-reduce relies on. Pure functions.
#include "sparta/peer/wire.h"

#include <float.h>
#include <isa-l/crc.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "sparta/peer/le.h"
#include "train/base/err.h"

#define CRC_OFFSET 44

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

// Round to nearest even: add 0x7FFF plus the lowest kept bit, then truncate. A carry out of the
// mantissa correctly bumps the exponent (up to infinity). NaNs skip the rounding, which could
// carry them into infinity, and keep a quiet bit so that truncation cannot leave a zero mantissa.
// Written as a select rather than a branch so that the payload loops vectorize.
static uint16_t f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x0040u;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded);
}

static float bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

// Incremental CRC32C state: ISA-L's crc32_iscsi takes the raw register (no final xor) and an int
// length, so the standard init/final xor of ~0 is applied by the callers and long inputs are fed
// in pieces.
static uint32_t crc_update(uint32_t crc, const void *data, size_t n) {
    const unsigned char *p = data;
    while (n > 0) {
        int piece = n > (size_t)(INT_MAX / 2) ? INT_MAX / 2 : (int)n;
        crc = crc32_iscsi((unsigned char *)p, piece, crc);
        p += piece;
        n -= (size_t)piece;
    }
    return crc;
}

uint32_t wire_crc32c(const void *data, size_t n) {
    return crc_update(0xFFFFFFFFu, data, n) ^ 0xFFFFFFFFu;
}

// The CRC of a message: header bytes before the crc field, then the payload.
static uint32_t message_crc(const unsigned char *msg, size_t payload_bytes) {
    uint32_t crc = crc_update(0xFFFFFFFFu, msg, CRC_OFFSET);
    return crc_update(crc, msg + WIRE_HEADER, payload_bytes) ^ 0xFFFFFFFFu;
}

// ---- CRC arithmetic ----------------------------------------------------------------------------
// A CRC is linear over GF(2): with shift(c, n) = c x^(8n) mod P (P reflected, as the register
// holds it), crc(A B) = shift(crc(A), |B|) ^ crc(B) for the standard CRC32C with its init and final
// xor (zlib's crc32_combine). So the CRC of the whole message M = A C R (A the header bytes
// [0, 44), C the crc field, R the payload), which the peer layer's frame checks, gives the
// message's own CRC, crc(A R), without reading R again:
//   crc(A R) = crc(M) ^ shift(crc(A C) ^ crc(A), |R|).
#define CRC32C_POLY 0x82F63B78u // reflected Castagnoli

// mulmodp returns a b mod P, bit 31 being x^0.
static uint32_t mulmodp(uint32_t a, uint32_t b) {
    uint32_t p = 0;
    for (uint32_t m = 1u << 31; m; m >>= 1) {
        if (a & m) p ^= b;
        b = b & 1 ? (b >> 1) ^ CRC32C_POLY : b >> 1;
    }
    return p;
}

// crc_shift returns shift(crc, n): crc times x^(8n) mod P, by squaring (x^8, x^16, x^32, ...).
static uint32_t crc_shift(uint32_t crc, size_t n) {
    uint32_t sq = 1u << 23; // x^8
    for (; n; n >>= 1) {
        if (n & 1) crc = mulmodp(sq, crc);
        sq = mulmodp(sq, sq);
    }
    return crc;
}

uint32_t wire_crc32c_combine(uint32_t a, uint32_t b, size_t bn) { return crc_shift(a, bn) ^ b; }

// message_crc_from returns message_crc(msg, payload_bytes) given whole = the CRC32C of all
// WIRE_HEADER + payload_bytes bytes of msg, and (the identity is its own inverse) the CRC of all
// the bytes given whole = message_crc; it reads the header only.
static uint32_t message_crc_from(const unsigned char *msg, size_t payload_bytes, uint32_t whole) {
    uint32_t a = wire_crc32c(msg, CRC_OFFSET), ac = wire_crc32c(msg, WIRE_HEADER);
    return whole ^ crc_shift(a ^ ac, payload_bytes);
}

size_t wire_value_size(int dtype) {
    switch (dtype) {
    case WIRE_FP32: return 4;
    case WIRE_BF16: return 2;
    default: return 0;
    }
}

static int dtype_ok(int dtype) {
    return dtype == WIRE_FP32 || dtype == WIRE_BF16 || dtype == WIRE_INT8;
}

static size_t int8_blocks(size_t count) { return (count + WIRE_INT8_BLOCK - 1) / WIRE_INT8_BLOCK; }

size_t wire_payload_size(int dtype, uint32_t count) {
    if (dtype == WIRE_INT8) return 4 * int8_blocks(count) + count;
    return wire_value_size(dtype) * count;
}

uint32_t wire_max_count(int dtype, size_t max_bytes) {
    if (!dtype_ok(dtype) || max_bytes <= WIRE_HEADER) return 0;
    size_t avail = max_bytes - WIRE_HEADER, n;
    if (dtype == WIRE_INT8) { // whole blocks of 4 + 4096 bytes, then a partial block if it fits
        size_t full = avail / (4 + WIRE_INT8_BLOCK), rest = avail % (4 + WIRE_INT8_BLOCK);
        n = full * WIRE_INT8_BLOCK + (rest > 4 ? rest - 4 : 0);
    } else {
        n = avail / wire_value_size(dtype);
    }
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

// ---- int8 ------------------------------------------------------------------------------------

// A scale s is a fixed point when (127 s) / 127 == s in float. Decoded values are q s with
// max |q| = 127, so re-encoding them finds max = 127 s and recomputes exactly s: the bytes repeat.
// About 0.8% of floats are not fixed points; the next float up always is (checked exhaustively
// for every s up to FLT_MAX / 127).
static int scale_is_fixed(float s) {
    float m = 127.0f * s;
    return m / 127.0f == s;
}

// int8_scale returns the scale of the block x(n): the smallest fixed point >= max|x| / 127, at
// least 2^-149 (the smallest subnormal, so an all-zero block divides by something), or NaN if the
// block holds an inf or a NaN.
static float int8_scale(const float *x, size_t n) {
    // The bits of |x| order like |x| itself, inf and NaN above every finite value; an integer
    // max vectorizes where a float max with NaN semantics does not.
    uint32_t mb = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t a = f32_bits(x[i]) & 0x7FFFFFFFu;
        mb = a > mb ? a : mb;
    }
    if (mb >= 0x7F800000u) return NAN;
    float s = bits_f32(mb) / 127.0f;
    if (s < FLT_TRUE_MIN) s = FLT_TRUE_MIN;
    if (!scale_is_fixed(s)) s = nextafterf(s, INFINITY);
    return s;
}

// quantize rounds t (to nearest even) and clamps it to [-127, 127].
static signed char quantize(float t) {
    t = rintf(t);
    t = t > 127.0f ? 127.0f : t;
    t = t < -127.0f ? -127.0f : t;
    return (signed char)(int)t;
}

// int8_encode writes ceil(count / 4096) scales, then count values, to q.
static void int8_encode(unsigned char *p, const float *vals, size_t count) {
    size_t nb = int8_blocks(count);
    signed char *q = (signed char *)(p + 4 * nb);
    for (size_t b = 0; b < nb; b++) {
        size_t lo = b * WIRE_INT8_BLOCK,
               n = count - lo < WIRE_INT8_BLOCK ? count - lo : WIRE_INT8_BLOCK;
        float s = int8_scale(vals + lo, n);
        le_put32(p + 4 * b, f32_bits(s));
        if (isnan(s)) {
            memset(q + lo, 0, n);
            continue;
        }
        // |x| / s <= 127 (1 + 2^-22); the clamp only catches that rounding. A reciprocal is
        // faster than dividing and its extra rounding moves t by < 127 * 2^-22, which never
        // changes a fixed point's q; but 1 / s overflows for s < 2^-128, so tiny blocks divide.
        const float *x = vals + lo;
        signed char *qb = q + lo;
        if (s >= FLT_MIN) {
            float r = 1.0f / s;
            for (size_t i = 0; i < n; i++)
                qb[i] = quantize(x[i] * r);
        } else {
            for (size_t i = 0; i < n; i++)
                qb[i] = quantize(x[i] / s);
        }
    }
}

static void int8_decode(const unsigned char *p, size_t count, float *dst) {
    size_t nb = int8_blocks(count);
    const signed char *q = (const signed char *)(p + 4 * nb);
    for (size_t b = 0; b < nb; b++) {
        size_t lo = b * WIRE_INT8_BLOCK,
               n = count - lo < WIRE_INT8_BLOCK ? count - lo : WIRE_INT8_BLOCK;
        float s = bits_f32(le_get32(p + 4 * b));
        for (size_t i = 0; i < n; i++)
            dst[lo + i] = (float)q[lo + i] * s;
    }
}

size_t wire_encode(void *buf, const wire_header *h, const float *vals) {
    ASSERT(dtype_ok(h->dtype));
    ASSERT(h->count <= h->k && (uint64_t)h->offset + h->count <= h->k);
    unsigned char *p = buf;
    le_put32(p + 0, WIRE_MAGIC);
    le_put16(p + 4, WIRE_VERSION);
    le_put16(p + 6, h->dtype);
    le_put64(p + 8, h->run_id);
    le_put32(p + 16, h->sender);
    le_put32(p + 20, h->kind);
    le_put64(p + 24, h->round);
    le_put32(p + 32, h->k);
    le_put32(p + 36, h->offset);
    le_put32(p + 40, h->count);
    // A local count: stores through unsigned char may alias *h, which would stop vectorization.
    unsigned char *q = p + WIRE_HEADER;
    size_t count = h->count;
    if (h->dtype == WIRE_FP32) {
        for (size_t i = 0; i < count; i++)
            le_put32(q + 4 * i, f32_bits(vals[i]));
    } else if (h->dtype == WIRE_BF16) {
        for (size_t i = 0; i < count; i++)
            le_put16(q + 2 * i, f32_to_bf16(vals[i]));
    } else {
        int8_encode(q, vals, count);
    }
    size_t payload = wire_payload_size(h->dtype, h->count);
    le_put32(p + CRC_OFFSET, message_crc(p, payload));
    return WIRE_HEADER + payload;
}

size_t wire_encode_crc(void *buf, const wire_header *h, const float *vals, uint32_t *msg_crc) {
    size_t len = wire_encode(buf, h, vals);
    const unsigned char *p = buf;
    // crc(A C R) = crc(A R) ^ shift(crc(A C) ^ crc(A), |R|), as in message_crc_from
    *msg_crc = message_crc_from(p, len - WIRE_HEADER, le_get32(p + CRC_OFFSET));
    return len;
}

// decode is wire_decode; whole, if not NULL, is the CRC32C of msg(len) (wire_decode_crc).
static int decode(const void *msg, size_t len, const uint32_t *whole, uint64_t expect_run_id,
                  wire_header *h) {
    const unsigned char *p = msg;
    *h = (wire_header){0}; // defined even on failure, for callers that peek at fields
    if (len < WIRE_HEADER)
        return err_set(ERR_FORMAT, "wire: message of %zu bytes is shorter than the %d-byte header",
                       len, WIRE_HEADER);
    uint32_t magic = le_get32(p + 0);
    if (magic != WIRE_MAGIC)
        return err_set(ERR_FORMAT, "wire: bad magic 0x%08x (want 0x%08x)", magic, WIRE_MAGIC);
    uint16_t version = le_get16(p + 4);
    if (version != WIRE_VERSION)
        return err_set(ERR_FORMAT, "wire: unsupported version %u (want %d)", version, WIRE_VERSION);
    wire_header d = {
        .dtype = le_get16(p + 6),
        .run_id = le_get64(p + 8),
        .sender = le_get32(p + 16),
        .kind = le_get32(p + 20),
        .round = le_get64(p + 24),
        .k = le_get32(p + 32),
        .offset = le_get32(p + 36),
        .count = le_get32(p + 40),
    };
    if (!dtype_ok(d.dtype)) return err_set(ERR_FORMAT, "wire: bad dtype %u", d.dtype);
    if (d.k == 0 && d.count > 0)
        return err_set(ERR_FORMAT, "wire: k is 0 but count is %u", d.count);
    if (d.count > d.k) return err_set(ERR_FORMAT, "wire: count %u exceeds k %u", d.count, d.k);
    if ((uint64_t)d.offset + d.count > d.k)
        return err_set(ERR_FORMAT, "wire: offset %u + count %u exceeds k %u", d.offset, d.count,
                       d.k);
    uint64_t want = WIRE_HEADER + (uint64_t)wire_payload_size(d.dtype, d.count);
    if ((uint64_t)len != want)
        return err_set(ERR_FORMAT, "wire: length %zu does not match count %u (want %llu bytes)",
                       len, d.count, (unsigned long long)want);
    size_t payload = (size_t)want - WIRE_HEADER;
    uint32_t crc = le_get32(p + CRC_OFFSET),
             got = whole ? message_crc_from(p, payload, *whole) : message_crc(p, payload);
    if (crc != got)
        return err_set(ERR_FORMAT, "wire: crc mismatch (header 0x%08x, computed 0x%08x)", crc, got);
    if (expect_run_id != 0 && d.run_id != expect_run_id)
        return err_set(ERR_PEER, "wire: run_id 0x%016llx from sender %u, want 0x%016llx",
                       (unsigned long long)d.run_id, d.sender, (unsigned long long)expect_run_id);
    *h = d;
    return ERR_OK;
}

int wire_decode(const void *msg, size_t len, uint64_t expect_run_id, wire_header *h) {
    return decode(msg, len, NULL, expect_run_id, h);
}

int wire_decode_crc(const void *msg, size_t len, uint32_t msg_crc, uint64_t expect_run_id,
                    wire_header *h) {
    return decode(msg, len, &msg_crc, expect_run_id, h);
}

void wire_values(const void *msg, const wire_header *h, float *dst) {
    const unsigned char *q = (const unsigned char *)msg + WIRE_HEADER;
    size_t count = h->count;
    if (h->dtype == WIRE_FP32) {
        for (size_t i = 0; i < count; i++)
            dst[i] = bits_f32(le_get32(q + 4 * i));
    } else if (h->dtype == WIRE_BF16) {
        for (size_t i = 0; i < count; i++)
            dst[i] = bf16_to_f32(le_get16(q + 2 * i));
    } else {
        ASSERT(h->dtype == WIRE_INT8);
        int8_decode(q, count, dst);
    }
}

// sum_into is dst = (v + add) / div over n values, v being what wire_values gives: the same
// operations in the same order as a wire_values into dst followed by that loop, so the results are
// bitwise the same. Division by 1 is exact but slower than none, so it is skipped.
#define SUM_LOOP(n, v_i)                         \
    do {                                         \
        if (div == 1.0f) {                       \
            for (size_t i = 0; i < (n); i++)     \
                dst[i] = (v_i) + add[i];         \
        } else {                                 \
            for (size_t i = 0; i < (n); i++)     \
                dst[i] = ((v_i) + add[i]) / div; \
        }                                        \
    } while (0)

void wire_values_add(const void *msg, const wire_header *h, const float *add, float div,
                     float *dst) {
    const unsigned char *q = (const unsigned char *)msg + WIRE_HEADER;
    size_t count = h->count;
    if (h->dtype == WIRE_FP32) {
        SUM_LOOP(count, bits_f32(le_get32(q + 4 * i)));
    } else if (h->dtype == WIRE_BF16) {
        SUM_LOOP(count, bf16_to_f32(le_get16(q + 2 * i)));
    } else {
        ASSERT(h->dtype == WIRE_INT8);
        size_t nb = int8_blocks(count);
        const signed char *v = (const signed char *)(q + 4 * nb);
        for (size_t b = 0; b < nb; b++, add += WIRE_INT8_BLOCK, dst += WIRE_INT8_BLOCK) {
            size_t lo = b * WIRE_INT8_BLOCK,
                   n = count - lo < WIRE_INT8_BLOCK ? count - lo : WIRE_INT8_BLOCK;
            float s = bits_f32(le_get32(q + 4 * b));
            const signed char *vb = v + lo;
            // q * s is exact in double (7 + 24 bits), so the conversion rounds it as the float
            // product of int8_decode does; written as a float product, compilers that contract
            // (clang's default, gcc's -ffp-contract=fast with FMA) fused it with the add into
            // one FMA, which skips that rounding (found by tests/fuzz/fuzz_wire: 1 ulp off).
            SUM_LOOP(n, (float)((double)vb[i] * s));
        }
    }
}

void wire_round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = bf16_to_f32(f32_to_bf16(x[i]));
}
