// wire.h: the SPARTA message format. One message per (round, destination, chunk): a 48-byte
// little-endian header followed by `count` values as fp32, bf16 or int8. Values of a round larger
// than one message (8 MiB) are split into chunks by offset. Decoding validates everything and
// never trusts a length from the wire. Pure functions; any thread.
//
//   offset size field
//   0      4    magic    WIRE_MAGIC
//   4      2    version  WIRE_VERSION
//   6      2    dtype    WIRE_FP32, WIRE_BF16 or WIRE_INT8
//   8      8    run_id   hash of the model config and seed (peers of another run are dropped)
//   16     4    sender   rank
//   20     4    kind     WIRE_VALUES (SPARTA alltoall), WIRE_RING_RS, WIRE_RING_AG (ring),
//                        WIRE_HERE, WIRE_VIEW (membership), WIRE_GATHER (all-gather)
//   24     8    round
//   32     4    k        values in the whole round
//   36     4    offset   index of this chunk's first value within the round's k values
//   40     4    count    values in this message
//   44     4    crc      CRC32C of header bytes [0, 44) then the payload bytes, so every
//                        header field is covered too
//   48          payload  fp32: count values of 4 bytes; bf16: count values of 2 bytes;
//                        int8: ceil(count / 4096) fp32 scales, then count int8 values
//
// int8 (absmax, one scale per block of WIRE_INT8_BLOCK values, blocks counted from the message's
// first value): value i of block b decodes to q[i] * scale[b], with q in [-127, 127]. The encoder
// takes scale = max|block| / 127, moved up by one ulp where needed so that (127 * scale) / 127 ==
// scale in float; then decoding and encoding again gives the same bytes (forwarding is exact).
// Round-trip error <= scale / 2 (+ float rounding) <= max|block| / 127 per value. An all-zero
// block has scale 2^-149 and decodes to zeros; a block holding an inf or NaN has a NaN scale and
// decodes to NaN everywhere, so non-finite values are never silently lost.
#ifndef WIRE_H
#define WIRE_H

#include <stddef.h>
#include <stdint.h>

#define WIRE_MAGIC   0x41505353u // "SSPA" as little-endian bytes 53 53 50 41
#define WIRE_VERSION 1
#define WIRE_HEADER  48
// WIRE_INT8 is 8 (its bits), not 3: 3 and 4 stay invalid dtypes for older peers and tests.
enum { WIRE_FP32 = 1, WIRE_BF16 = 2, WIRE_INT8 = 8 };
#define WIRE_INT8_BLOCK 4096 // int8 values per fp32 scale
// Kinds: SPARTA values; ring all-reduce steps; the all-reduce's membership agreement (allreduce.h:
// WIRE_HERE carries no values, WIRE_VIEW one 0/1 flag per rank); a member's own values in an
// all-gather (ar_gather_group).
enum {
    WIRE_VALUES = 1,
    WIRE_RING_RS = 2,
    WIRE_RING_AG = 3,
    WIRE_HERE = 4,
    WIRE_VIEW = 5,
    WIRE_GATHER = 6
};

typedef struct wire_header {
    uint16_t dtype;
    uint64_t run_id;
    uint32_t sender;
    uint32_t kind;
    uint64_t round;
    uint32_t k, offset, count;
} wire_header;

// wire_value_size returns 4 for WIRE_FP32, 2 for WIRE_BF16, 0 otherwise (also for WIRE_INT8,
// whose payload is not a whole number of bytes per value: use wire_payload_size).
size_t wire_value_size(int dtype);

// wire_payload_size returns the payload bytes of count values of dtype: 4 count (fp32),
// 2 count (bf16), 4 ceil(count / WIRE_INT8_BLOCK) + count (int8), 0 for an unknown dtype.
size_t wire_payload_size(int dtype, uint32_t count);

// wire_max_count returns how many values of dtype fit in one message of at most max_bytes.
uint32_t wire_max_count(int dtype, size_t max_bytes);

// wire_encode writes header h (h->count values) and vals[0 .. h->count) converted to h->dtype
// (bf16: round to nearest even; int8: see above) into buf, which must hold
// WIRE_HEADER + wire_payload_size(dtype, count) bytes, and fills in the CRC. Returns the message
// length.
size_t wire_encode(void *buf, const wire_header *h, const float *vals);

// wire_encode_crc is wire_encode that also gives *msg_crc = wire_crc32c(buf, length), the CRC
// of the whole message as the peer layer's frame carries it (peer_post_crc), derived from the
// message's own CRC without another pass over the payload.
size_t wire_encode_crc(void *buf, const wire_header *h, const float *vals, uint32_t *msg_crc);

// wire_decode validates msg(len): magic, version, dtype, count within k and offset+count <= k,
// exact length, CRC32C (header and payload), and (if expect_run_id != 0) the run id. On success
// fills *h and returns ERR_OK; the payload starts at msg + WIRE_HEADER. Otherwise returns
// ERR_FORMAT with a message naming the bad field (wrong run ids return ERR_PEER), and *h is zeroed.
int wire_decode(const void *msg, size_t len, uint64_t expect_run_id, wire_header *h);

// wire_decode_crc is wire_decode for a message whose CRC32C as a whole, msg_crc =
// wire_crc32c(msg, len), is known (the peer layer checks it against the frame and hands it out
// as peer_msg.crc): the message's own CRC is derived from it (CRC arithmetic, see wire.c) and
// checked as wire_decode checks it, without a second pass over the payload. The result is the
// same as wire_decode's whenever msg_crc is right.
int wire_decode_crc(const void *msg, size_t len, uint32_t msg_crc, uint64_t expect_run_id,
                    wire_header *h);

// wire_values converts a decoded payload of h->count values to float in dst.
void wire_values(const void *msg, const wire_header *h, float *dst);

// wire_values_add is wire_values into a sum: dst[i] = (value i + add[i]) / div, in float, bitwise
// as wire_values into dst followed by that loop (div = 1: no division). dst may be add.
void wire_values_add(const void *msg, const wire_header *h, const float *add, float div,
                     float *dst);

// wire_round_bf16 rounds x(n) to bf16 precision in place (round to nearest even), so a peer can
// average its own values at the precision the others receive them.
void wire_round_bf16(float *x, size_t n);

// wire_crc32c returns the CRC32C (Castagnoli) of data(n), standard init/final xor
// ("123456789" -> 0xE3069283).
uint32_t wire_crc32c(const void *data, size_t n);

// wire_crc32c_combine returns the CRC32C of A B given a = wire_crc32c(A), b = wire_crc32c(B) and
// bn = |B|, without reading either (zlib's crc32_combine). As the combination is an xor,
// wire_crc32c_combine(a, wire_crc32c(A B), bn) gives wire_crc32c(B).
uint32_t wire_crc32c_combine(uint32_t a, uint32_t b, size_t bn);

#endif
