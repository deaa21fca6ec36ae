// wire_test.c: the SPARTA message format. fp32 round trips bit-exactly and bf16 matches an
// independent round-to-nearest-even reference (in double); decoding rejects every malformed
// message with an error naming the field, including every single-bit flip of a valid message and
// random corruptions. Messages live in exact-size heap buffers, so ASan (VARIANT=asan) catches any
// read past len. Single-threaded; each test runs in its own Criterion process.
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/wire.h"
#include "tests/test_util.h"
#include "train/base/err.h"

TestSuite(wire, .timeout = 30);

#define RUN_ID 0x0123456789ABCDEFull
#define MIB8   ((size_t)8 << 20)

// ---------------------------------------------------------------------------------------------
// Helpers.

static uint32_t bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static wire_header header(int dtype, uint32_t k, uint32_t offset, uint32_t count) {
    return (wire_header){.dtype = (uint16_t)dtype,
                         .run_id = RUN_ID,
                         .sender = 3,
                         .kind = WIRE_VALUES,
                         .round = 0x1122334455667788ull,
                         .k = k,
                         .offset = offset,
                         .count = count};
}

// encode returns a heap message of exactly the encoded length (caller frees).
static unsigned char *encode(const wire_header *h, const float *vals, size_t *len) {
    size_t n = WIRE_HEADER + h->count * wire_value_size(h->dtype);
    unsigned char *buf = xmalloc(n);
    *len = wire_encode(buf, h, vals);
    cr_assert_eq(*len, n, "encoded length %zu, want %zu", *len, n);
    return buf;
}

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

// expect_reject decodes msg(len) and checks the code and that the message names `field`.
static void expect_reject(const void *msg, size_t len, int code, const char *field) {
    wire_header h;
    memset(&h, 0xAB, sizeof h);
    int rc = wire_decode(msg, len, RUN_ID, &h);
    cr_assert_eq(rc, code, "want %s naming '%s', got %s: %s", err_str(code), field, err_str(rc),
                 err_msg());
    cr_assert(strstr(err_msg(), field), "message '%s' does not name '%s'", err_msg(), field);
    cr_assert(h.dtype == 0 && h.run_id == 0 && h.k == 0 && h.count == 0 && h.kind == 0,
              "header is zeroed on failure");
}

// A message of 5 values at offset 2 of a round of k = 10, with the given field patched.
static unsigned char *patched(int dtype, size_t at, uint32_t v, size_t *len) {
    float vals[5] = {1, -2, 3.5f, 1e-3f, 7};
    wire_header h = header(dtype, 10, 2, 5);
    unsigned char *m = encode(&h, vals, len);
    put32(m + at, v);
    return m;
}

// ref_bf16 rounds x to bf16 with exact double arithmetic: the two bf16 candidates around |x| are
// its truncation and the next value up (one bf16 ulp = 2^(e - 134) for biased exponent e, and
// 2^-133 for subnormals, so that rounding past the largest finite value reaches infinity).
static float ref_bf16(float x) {
    uint32_t u = bits(x);
    if (isnan(x)) return x;
    uint32_t lo = u & 0xFFFF0000u, hi = lo + 0x10000u, e = (u >> 23) & 0xFF;
    if (e == 0xFF) return x; // infinity
    double ulp = ldexp(1.0, (int)(e == 0 ? 1 : e) - 134);
    double rem = fabs((double)x) - fabs((double)from_bits(lo));
    if (rem < ulp / 2) return from_bits(lo);
    if (rem > ulp / 2) return from_bits(hi);
    return from_bits((lo & 0x10000u) ? hi : lo); // tie: the even mantissa
}

// ---------------------------------------------------------------------------------------------
// CRC32C.

// crc_bitwise: the reflected Castagnoli polynomial one bit at a time, independent of ISA-L.
static uint32_t crc_bitwise(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int b = 0; b < 8; b++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

Test(wire, crc32c_matches_the_standard_check_value) {
    cr_assert_eq(wire_crc32c("123456789", 9), 0xE3069283u, "got 0x%08x",
                 wire_crc32c("123456789", 9));
    cr_assert_eq(wire_crc32c("", 0), 0u);
}

Test(wire, crc32c_matches_a_bitwise_reference_at_every_length_and_alignment) {
    unsigned char buf[1100];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 131u + (i >> 3));
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n + off <= sizeof buf; n += 1 + n / 16)
            cr_assert_eq(wire_crc32c(buf + off, n), crc_bitwise(buf + off, n), "off=%zu n=%zu", off,
                         n);
}

Test(wire, crc32c_combine_gives_the_crc_of_the_concatenation_and_splits_it_again) {
    unsigned char buf[1100];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 29u + (i >> 2) + 3);
    for (size_t split = 0; split <= sizeof buf; split += 1 + split / 8) {
        uint32_t a = crc_bitwise(buf, split), b = crc_bitwise(buf + split, sizeof buf - split);
        uint32_t whole = crc_bitwise(buf, sizeof buf);
        cr_assert_eq(wire_crc32c_combine(a, b, sizeof buf - split), whole, "split=%zu", split);
        cr_assert_eq(wire_crc32c_combine(a, whole, sizeof buf - split), b, "split=%zu", split);
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes.

Test(wire, value_sizes_and_max_count_fill_an_8_mib_message) {
    cr_assert_eq(wire_value_size(WIRE_FP32), 4);
    cr_assert_eq(wire_value_size(WIRE_BF16), 2);
    cr_assert_eq(wire_value_size(0), 0);
    cr_assert_eq(wire_value_size(3), 0);
    int dtypes[2] = {WIRE_FP32, WIRE_BF16};
    for (int i = 0; i < 2; i++) {
        size_t size = wire_value_size(dtypes[i]);
        uint32_t c = wire_max_count(dtypes[i], MIB8);
        cr_assert_eq(c, (MIB8 - WIRE_HEADER) / size, "dtype %d", dtypes[i]);
        cr_assert_leq(WIRE_HEADER + c * size, MIB8);
        cr_assert_gt(WIRE_HEADER + (c + 1) * size, MIB8);
    }
    cr_assert_eq(wire_max_count(WIRE_FP32, MIB8), 2097140u);
    cr_assert_eq(wire_max_count(WIRE_BF16, MIB8), 4194280u);
    cr_assert_eq(wire_max_count(9, MIB8), 0);
    cr_assert_eq(wire_max_count(WIRE_FP32, WIRE_HEADER), 0);
    cr_assert_eq(wire_max_count(WIRE_FP32, WIRE_HEADER + 3), 0);
    cr_assert_eq(wire_max_count(WIRE_FP32, WIRE_HEADER + 4), 1);
    cr_assert_eq(wire_max_count(WIRE_FP32, 0), 0);
}

Test(wire, a_full_8_mib_message_round_trips) {
    uint32_t c = wire_max_count(WIRE_BF16, MIB8);
    float *v = xmalloc(c * sizeof *v), *back = xmalloc(c * sizeof *back);
    tu_rand_fill(v, c, 11, -4, 4);
    wire_round_bf16(v, c);
    wire_header h = header(WIRE_BF16, c + 100, 100, c), d;
    size_t len;
    unsigned char *m = encode(&h, v, &len);
    cr_assert_eq(len, MIB8);
    cr_assert_eq(wire_decode(m, len, RUN_ID, &d), ERR_OK, "%s", err_msg());
    wire_values(m, &d, back);
    cr_assert_eq(memcmp(v, back, c * sizeof *v), 0);
    free(m);
    free(v);
    free(back);
}

// ---------------------------------------------------------------------------------------------
// Round trips.

Test(wire, fp32_round_trip_is_bit_exact_and_keeps_every_header_field) {
    enum { K = 1000, C = 300 };
    float v[C], back[C];
    tu_rand_fill(v, C, 1, -1e3f, 1e3f);
    uint32_t special[] = {0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7FC00001u,
                          0xFF800001u, 0x00000001u, 0x807FFFFFu, 0x7F7FFFFFu, 0x3F808000u};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        v[i] = from_bits(special[i]);
    wire_header h = header(WIRE_FP32, K, K - C, C), d;
    h.run_id = ~0ull;
    h.sender = 0xFFFFFFFEu;
    h.kind = WIRE_RING_AG;
    size_t len;
    unsigned char *m = encode(&h, v, &len);
    cr_assert_eq(wire_decode(m, len, ~0ull, &d), ERR_OK, "%s", err_msg());
    cr_assert_eq(d.dtype, h.dtype);
    cr_assert_eq(d.run_id, h.run_id);
    cr_assert_eq(d.sender, h.sender);
    cr_assert_eq(d.kind, h.kind);
    cr_assert_eq(d.round, h.round);
    cr_assert_eq(d.k, h.k);
    cr_assert_eq(d.offset, h.offset);
    cr_assert_eq(d.count, h.count);
    wire_values(m, &d, back);
    for (int i = 0; i < C; i++)
        cr_assert_eq(bits(back[i]), bits(v[i]), "i=%d: 0x%08x != 0x%08x", i, bits(back[i]),
                     bits(v[i]));
    free(m);
}

Test(wire, header_is_little_endian_at_the_documented_offsets) {
    float v[2] = {1.0f, -2.0f};
    wire_header h = header(WIRE_FP32, 9, 7, 2);
    size_t len;
    unsigned char *m = encode(&h, v, &len);
    const unsigned char want[44] = {
        0x53, 0x53, 0x50, 0x41, 1, 0, 1, 0, 0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23,
        0x01, 3,    0,    0,    0, 1, 0, 0, 0,    0x88, 0x77, 0x66, 0x55, 0x44, 0x33,
        0x22, 0x11, 9,    0,    0, 0, 7, 0, 0,    0,    2,    0,    0,    0};
    for (int i = 0; i < 44; i++)
        cr_assert_eq(m[i], want[i], "byte %d: 0x%02x, want 0x%02x", i, m[i], want[i]);
    uint32_t crc =
        (uint32_t)m[44] | (uint32_t)m[45] << 8 | (uint32_t)m[46] << 16 | (uint32_t)m[47] << 24;
    unsigned char covered[52];
    memcpy(covered, m, 44);
    memcpy(covered + 44, m + 48, 8);
    cr_assert_eq(crc, wire_crc32c(covered, sizeof covered), "crc covers header and payload");
    cr_assert_eq(m[48 + 3], 0x3F, "1.0f payload is little-endian fp32");
    free(m);
}

Test(wire, bf16_matches_round_to_nearest_even_reference) {
    enum { C = 4096 };
    float v[C], back[C];
    tu_rand_fill(v, C, 2, -3.0f, 3.0f);
    for (int i = 0; i < 512; i++) // magnitudes from subnormal to near overflow
        v[i] = ldexpf(v[i], i / 2 - 150 + (i % 2) * 20);
    for (int i = 512; i < 1024; i++) // halfway cases: the 16 dropped bits are exactly 0x8000
        v[i] = from_bits((bits(v[i]) & 0xFFFF0000u) | 0x8000u);
    wire_header h = header(WIRE_BF16, C, 0, C), d;
    size_t len;
    unsigned char *m = encode(&h, v, &len);
    cr_assert_eq(len, WIRE_HEADER + 2 * C);
    cr_assert_eq(wire_decode(m, len, RUN_ID, &d), ERR_OK, "%s", err_msg());
    wire_values(m, &d, back);
    int ties_up = 0, ties_down = 0;
    for (int i = 0; i < C; i++) {
        float want = ref_bf16(v[i]);
        cr_assert_eq(bits(back[i]), bits(want), "i=%d x=%a (0x%08x): got 0x%08x want 0x%08x", i,
                     (double)v[i], bits(v[i]), bits(back[i]), bits(want));
        cr_assert_eq(bits(back[i]) & 0xFFFFu, 0, "decoded bf16 has low bits");
        if (i >= 512 && i < 1024) {
            if (fabsf(back[i]) > fabsf(v[i]))
                ties_up++;
            else
                ties_down++;
        }
    }
    cr_assert(ties_up > 100 && ties_down > 100, "ties go both ways: up=%d down=%d", ties_up,
              ties_down);
    free(m);
}

Test(wire, bf16_ties_go_to_even_and_specials_survive) {
    struct {
        uint32_t in, out;
    } cases[] = {
        {0x3F808000u, 0x3F800000u}, // 1 + half ulp: tie, keeps even 0x3F80
        {0x3F818000u, 0x3F820000u}, // tie above odd 0x3F81 goes up to even
        {0x3F808001u, 0x3F810000u}, // just above a tie rounds up
        {0x3F817FFFu, 0x3F810000u}, // just below a tie rounds down
        {0xBF818000u, 0xBF820000u}, // negative ties are symmetric
        {0x7F7FFFFFu, 0x7F800000u}, // largest float rounds to infinity
        {0x7F800000u, 0x7F800000u}, // +inf
        {0xFF800000u, 0xFF800000u}, // -inf
        {0x80000000u, 0x80000000u}, // -0
        {0x00008000u, 0x00000000u}, // subnormal tie rounds to even zero
        {0x00018000u, 0x00020000u}, // subnormal tie rounds to even
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float x = from_bits(cases[i].in);
        wire_round_bf16(&x, 1);
        cr_assert_eq(bits(x), cases[i].out, "0x%08x -> 0x%08x, want 0x%08x", cases[i].in, bits(x),
                     cases[i].out);
    }
    // NaNs whose payload sits only in the dropped bits must not turn into infinities.
    uint32_t nans[] = {0x7F800001u, 0xFF800001u, 0x7FFFFFFFu, 0x7FC00000u, 0xFF80FFFFu};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        float x = from_bits(nans[i]);
        wire_round_bf16(&x, 1);
        cr_assert(isnan(x), "NaN 0x%08x became 0x%08x", nans[i], bits(x));
        cr_assert_eq(bits(x) >> 31, nans[i] >> 31, "sign of NaN 0x%08x", nans[i]);
    }
}

Test(wire, bf16_is_exact_on_representable_values_and_matches_wire_round_bf16) {
    enum { C = 2000 };
    float v[C], r[C], back[C];
    tu_rand_fill(v, C, 3, -100, 100);
    memcpy(r, v, sizeof v);
    wire_round_bf16(r, C);
    for (int i = 0; i < C; i++)
        cr_assert_eq(bits(r[i]), bits(ref_bf16(v[i])), "i=%d", i);
    // What a peer averages locally (wire_round_bf16) is what the others decode.
    wire_header h = header(WIRE_BF16, C, 0, C), d;
    size_t len;
    unsigned char *m = encode(&h, v, &len);
    cr_assert_eq(wire_decode(m, len, RUN_ID, &d), ERR_OK, "%s", err_msg());
    wire_values(m, &d, back);
    cr_assert_eq(memcmp(back, r, sizeof r), 0);
    free(m);
    // Values already in bf16 come back bit-exactly.
    m = encode(&h, r, &len);
    cr_assert_eq(wire_decode(m, len, RUN_ID, &d), ERR_OK, "%s", err_msg());
    wire_values(m, &d, back);
    cr_assert_eq(memcmp(back, r, sizeof r), 0);
    free(m);
}

Test(wire, empty_message_is_valid) {
    wire_header h = header(WIRE_FP32, 0, 0, 0), d;
    size_t len;
    unsigned char *m = encode(&h, NULL, &len);
    cr_assert_eq(len, WIRE_HEADER);
    cr_assert_eq(wire_decode(m, len, RUN_ID, &d), ERR_OK, "%s", err_msg());
    cr_assert_eq(d.count, 0);
    free(m);
}

// ---------------------------------------------------------------------------------------------
// Rejections.

Test(wire, rejects_messages_shorter_than_the_header) {
    float v[1] = {1};
    wire_header h = header(WIRE_FP32, 1, 0, 1);
    size_t len;
    unsigned char *m = encode(&h, v, &len);
    size_t lens[] = {0, 1, 4, 47};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        unsigned char *cut = xmalloc(lens[i] ? lens[i] : 1); // exact size: ASan sees overreads
        memcpy(cut, m, lens[i]);
        expect_reject(cut, lens[i], ERR_FORMAT, "shorter");
        free(cut);
    }
    free(m);
}

Test(wire, rejects_bad_magic_version_and_dtype) {
    size_t len;
    unsigned char *m = patched(WIRE_FP32, 0, 0x41505354u, &len);
    expect_reject(m, len, ERR_FORMAT, "magic");
    free(m);
    m = patched(WIRE_FP32, 4, 2 | (uint32_t)WIRE_FP32 << 16, &len); // version 2, dtype kept
    expect_reject(m, len, ERR_FORMAT, "version");
    free(m);
    uint16_t bad[] = {0, 3, 4, 0xFFFF};
    for (size_t i = 0; i < 4; i++) {
        m = patched(WIRE_FP32, 4, WIRE_VERSION | (uint32_t)bad[i] << 16, &len);
        expect_reject(m, len, ERR_FORMAT, "dtype");
        free(m);
    }
}

Test(wire, rejects_count_and_offset_outside_k) {
    size_t len;
    unsigned char *m = patched(WIRE_FP32, 40, 11, &len); // count 11 > k 10
    expect_reject(m, len, ERR_FORMAT, "count 11 exceeds k");
    free(m);
    m = patched(WIRE_FP32, 36, 6, &len); // offset 6 + count 5 > k 10
    expect_reject(m, len, ERR_FORMAT, "offset");
    free(m);
    m = patched(WIRE_FP32, 36, 0xFFFFFFFFu, &len); // offset + count wraps in 32 bits
    expect_reject(m, len, ERR_FORMAT, "offset");
    free(m);
    m = patched(WIRE_FP32, 32, 0, &len); // k 0 with count 5
    expect_reject(m, len, ERR_FORMAT, "k is 0");
    free(m);
    m = patched(WIRE_FP32, 32, 6, &len); // k 6 < offset 2 + count 5
    expect_reject(m, len, ERR_FORMAT, "offset");
    free(m);
}

Test(wire, rejects_lengths_that_do_not_match_count) {
    size_t len;
    unsigned char *m = patched(WIRE_BF16, 40, 4, &len); // count 4, but 5 values sent
    expect_reject(m, len, ERR_FORMAT, "length");
    free(m);
    m = patched(WIRE_FP32, 40, 5, &len); // valid; now cut one byte and add one
    unsigned char *cut = xmalloc(len - 1), *ext = xcalloc(1, len + 1);
    memcpy(cut, m, len - 1);
    memcpy(ext, m, len);
    expect_reject(cut, len - 1, ERR_FORMAT, "length");
    expect_reject(ext, len + 1, ERR_FORMAT, "length");
    expect_reject(m, WIRE_HEADER, ERR_FORMAT, "length");
    free(cut);
    free(ext);
    free(m);
    // A huge count must be rejected from the header alone, never read.
    m = patched(WIRE_FP32, 40, 0xFFFFFFF0u, &len);
    put32(m + 32, 0xFFFFFFFFu);
    put32(m + 36, 0);
    expect_reject(m, len, ERR_FORMAT, "length");
    free(m);
}

Test(wire, rejects_payload_corruption_by_crc) {
    size_t len;
    unsigned char *m = patched(WIRE_FP32, 40, 5, &len);
    m[WIRE_HEADER + 7] ^= 0x10;
    expect_reject(m, len, ERR_FORMAT, "crc");
    free(m);
}

Test(wire, wrong_run_id_is_a_peer_error_and_zero_accepts_any) {
    float v[3] = {1, 2, 3};
    wire_header h = header(WIRE_FP32, 3, 0, 3), d;
    h.run_id = RUN_ID + 1;
    size_t len;
    unsigned char *m = encode(&h, v, &len);
    expect_reject(m, len, ERR_PEER, "run_id");
    cr_assert_eq(wire_decode(m, len, 0, &d), ERR_OK, "%s", err_msg());
    cr_assert_eq(d.run_id, RUN_ID + 1);
    free(m);
}

Test(wire, every_single_bit_flip_is_rejected) {
    int dtypes[2] = {WIRE_FP32, WIRE_BF16};
    for (int t = 0; t < 2; t++) {
        float v[7];
        tu_rand_fill(v, 7, 4, -1, 1);
        wire_header h = header(dtypes[t], 50, 20, 7), d;
        size_t len;
        unsigned char *m = encode(&h, v, &len);
        cr_assert_eq(wire_decode(m, len, RUN_ID, &d), ERR_OK, "%s", err_msg());
        for (size_t bit = 0; bit < 8 * len; bit++) {
            m[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            int rc = wire_decode(m, len, RUN_ID, &d), rc0 = wire_decode(m, len, 0, &d);
            cr_assert_eq(rc, ERR_FORMAT, "dtype %d, flip of bit %zu (byte %zu): %s", dtypes[t], bit,
                         bit / 8, err_str(rc));
            cr_assert_eq(rc0, ERR_FORMAT, "flip of bit %zu is caught without a run-id check", bit);
            m[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        }
        cr_assert_eq(wire_decode(m, len, RUN_ID, &d), ERR_OK, "%s", err_msg());
        free(m);
    }
}

// Random multi-byte corruption and truncation: never accepted, never a crash or an overread.
// (A corruption that happened to keep the CRC would be accepted with probability 2^-32 each;
// with a fixed seed the outcome is deterministic.)
Test(wire, random_corruptions_and_truncations_are_rejected) {
    float v[40];
    tu_rand_fill(v, 40, 5, -1, 1);
    wire_header h = header(WIRE_BF16, 100, 60, 40), d;
    size_t len;
    unsigned char *m = encode(&h, v, &len);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int it = 0; it < 20000; it++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        size_t n = (it % 4 == 0) ? (size_t)(s % len) : len; // truncate every 4th
        unsigned char *c = xmalloc(n ? n : 1);
        memcpy(c, m, n);
        int changes = (it % 4 == 0) ? 0 : 1 + (int)(s >> 60) % 4;
        for (int j = 0; j < changes; j++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            size_t at = (size_t)(s % n);
            unsigned char nv = (unsigned char)(s >> 56);
            if (nv == c[at]) nv ^= 0x5A;
            c[at] = nv;
        }
        if (n == len && memcmp(c, m, len) == 0) { // the changes cancelled out
            free(c);
            continue;
        }
        int rc = wire_decode(c, n, RUN_ID, &d);
        cr_assert(rc == ERR_FORMAT || rc == ERR_PEER, "iteration %d (len %zu) accepted: %s", it, n,
                  err_str(rc));
        free(c);
    }
    free(m);
}

// wire_decode_crc derives the message's CRC from the CRC of the whole message (as the peer layer's
// frame gives it) instead of reading the payload again: for every single bit flip of messages of
// every dtype and of payloads from empty to a full ring chunk, its verdict and header are
// wire_decode's.
Test(wire, decode_crc_agrees_with_decode_on_every_single_bit_flip) {
    const struct {
        int dtype;
        uint32_t count;
    } cases[] = {{WIRE_FP32, 0}, {WIRE_FP32, 7},    {WIRE_BF16, 9},
                 {WIRE_INT8, 7}, {WIRE_INT8, 5000}, {WIRE_FP32, 258048}};
    for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) {
        uint32_t count = cases[t].count;
        float *v = xmalloc((count ? count : 1) * sizeof *v);
        tu_rand_fill(v, count, 6 + (int)t, -2, 2);
        wire_header h = header(cases[t].dtype, count + 30, 30, count), d, d2;
        size_t cap = WIRE_HEADER + wire_payload_size(cases[t].dtype, count);
        unsigned char *m = xmalloc(cap);
        size_t len = wire_encode(m, &h, v);
        cr_assert_eq(len, cap);
        cr_assert_eq(wire_decode_crc(m, len, wire_crc32c(m, len), RUN_ID, &d), ERR_OK, "%s",
                     err_msg());
        // large payloads: every header bit and a stride of payload bits (each costs a full CRC)
        size_t stride = len > 4096 ? 8 * 4093 + 1 : 1;
        for (size_t bit = 0; bit < 8 * len; bit += bit < 8 * WIRE_HEADER ? 1 : stride) {
            m[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            int rc = wire_decode(m, len, RUN_ID, &d);
            int rc2 = wire_decode_crc(m, len, wire_crc32c(m, len), RUN_ID, &d2);
            cr_assert_eq(rc2, rc, "dtype %d count %u bit %zu: %s vs %s", cases[t].dtype, count, bit,
                         err_str(rc2), err_str(rc));
            cr_assert_eq(rc, ERR_FORMAT, "dtype %d count %u bit %zu accepted", cases[t].dtype,
                         count, bit);
            m[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        }
        cr_assert_eq(wire_decode_crc(m, len, wire_crc32c(m, len), RUN_ID, &d2), ERR_OK);
        cr_assert_eq(wire_decode(m, len, RUN_ID, &d), ERR_OK);
        cr_assert(d.dtype == d2.dtype && d.run_id == d2.run_id && d.round == d2.round &&
                  d.k == d2.k && d.offset == d2.offset && d.count == d2.count &&
                  d.sender == d2.sender && d.kind == d2.kind);
        // a whole-message CRC that does not match the bytes is not taken on trust
        cr_assert_eq(wire_decode_crc(m, len, wire_crc32c(m, len) ^ 1u, RUN_ID, &d2), ERR_FORMAT);
        free(m);
        free(v);
    }
}

// wire_encode_crc writes what wire_encode writes and gives the CRC of the whole message, as the
// frame carries it, for every dtype and payloads from empty to a full ring chunk.
Test(wire, encode_crc_gives_the_whole_messages_crc) {
    const struct {
        int dtype;
        uint32_t count;
    } cases[] = {
        {WIRE_FP32, 0}, {WIRE_FP32, 1}, {WIRE_BF16, 9}, {WIRE_INT8, 5000}, {WIRE_FP32, 258048}};
    for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) {
        uint32_t count = cases[t].count;
        float *v = xmalloc((count ? count : 1) * sizeof *v);
        tu_rand_fill(v, count, 9 + (int)t, -2, 2);
        wire_header h = header(cases[t].dtype, count, 0, count);
        size_t cap = WIRE_HEADER + wire_payload_size(cases[t].dtype, count);
        unsigned char *m = xmalloc(cap), *m2 = xmalloc(cap);
        uint32_t crc = 0;
        size_t len = wire_encode_crc(m, &h, v, &crc);
        cr_assert_eq(len, cap);
        cr_assert_eq(wire_encode(m2, &h, v), cap);
        cr_assert_eq(memcmp(m, m2, cap), 0, "the same bytes as wire_encode");
        cr_assert_eq(crc, wire_crc32c(m, len), "dtype %d count %u: 0x%08x vs 0x%08x",
                     cases[t].dtype, count, crc, wire_crc32c(m, len));
        free(m);
        free(m2);
        free(v);
    }
}

// wire_values_add is bitwise wire_values followed by (v + add) / div, for every dtype, with and
// without the division, in place too.
Test(wire, values_add_is_bitwise_decode_then_add) {
    enum { C = 3 * 4096 + 100 };
    int dtypes[3] = {WIRE_FP32, WIRE_BF16, WIRE_INT8};
    float *v = xmalloc(C * sizeof *v), *add = xmalloc(C * sizeof *add);
    float *want = xmalloc(C * sizeof *want), *got = xmalloc(C * sizeof *got);
    unsigned char *m = xmalloc(WIRE_HEADER + 4 * C);
    tu_rand_fill(v, C, 7, -3, 3);
    tu_rand_fill(add, C, 8, -1, 1);
    for (int t = 0; t < 3; t++) {
        wire_header h = header(dtypes[t], C, 0, C), d;
        size_t len = wire_encode(m, &h, v);
        cr_assert_eq(wire_decode(m, len, RUN_ID, &d), ERR_OK, "%s", err_msg());
        float divs[2] = {1.0f, 3.0f};
        for (int j = 0; j < 2; j++) {
            wire_values(m, &d, want);
            for (int i = 0; i < C; i++)
                want[i] = j ? (want[i] + add[i]) / divs[j] : want[i] + add[i];
            wire_values_add(m, &d, add, divs[j], got);
            for (int i = 0; i < C; i++)
                cr_assert_eq(bits(got[i]), bits(want[i]), "dtype %d div %g i=%d", dtypes[t],
                             divs[j], i);
            memcpy(got, add, C * sizeof *got);
            wire_values_add(m, &d, got, divs[j], got);
            for (int i = 0; i < C; i++)
                cr_assert_eq(bits(got[i]), bits(want[i]), "in place: dtype %d i=%d", dtypes[t], i);
        }
    }
    free(v);
    free(add);
    free(want);
    free(got);
    free(m);
}
