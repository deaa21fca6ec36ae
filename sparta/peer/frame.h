// frame.h: the one message header of the peer layer. Every byte between two peers travels in
// frames on one stream per pair: a 24-byte little-endian header, then len payload bytes. The
// header has its own CRC, so a reader that finds a bad header knows the stream's framing is lost
// (it closes the link); a bad payload CRC loses only that message (dropped and counted, the
// stream goes on). Never trust a length from the wire: frame_decode bounds it before anything is
// read. Pure functions; any thread.
//
//   offset size field
//   0      4    magic    FRAME_MAGIC ("SPF1")
//   4      2    version  FRAME_VERSION (the peer protocol)
//   6      1    channel  PEER_CH_* (peer.h); 0 is the layer's own (handshake, views)
//   7      1    flags    0 (reserved; a frame with other flags is refused)
//   8      4    len      payload bytes, at most FRAME_MAX_PAYLOAD
//   12     4    seq      frames sent before this one on this stream, in this direction
//   16     4    pcrc     CRC32C of the payload
//   20     4    hcrc     CRC32C of bytes [0, 20)
#ifndef FRAME_H
#define FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FRAME_MAGIC       0x31465053u // "SPF1" as little-endian bytes 53 50 46 31
#define FRAME_VERSION     1
#define FRAME_HEADER      24
#define FRAME_MAX_PAYLOAD ((uint32_t)8 << 20) // 8 MiB: larger payloads are chunked by the caller
#define FRAME_CHANNELS    8                   // channel ids 0 .. FRAME_CHANNELS - 1

typedef struct frame_header {
    uint8_t channel;
    uint32_t len, seq, pcrc;
} frame_header;

// frame_crc32c returns the CRC32C (Castagnoli, as iSCSI) of data(n). Any thread.
uint32_t frame_crc32c(const void *data, size_t n);

// frame_encode writes the header of a frame carrying payload(len) on channel as the seq-th frame
// of its stream into out (FRAME_HEADER bytes), computing both CRCs. len must be at most
// FRAME_MAX_PAYLOAD and channel below FRAME_CHANNELS (ASSERT).
void frame_encode(void *out, uint8_t channel, uint32_t seq, const void *payload, uint32_t len);

// frame_encode_crc is frame_encode for a payload of len bytes whose CRC32C pcrc the caller
// already has (it is written as is; the payload is not read).
void frame_encode_crc(void *out, uint8_t channel, uint32_t seq, uint32_t pcrc, uint32_t len);

// frame_decode checks the header in buf (FRAME_HEADER bytes): magic, header CRC, version, flags,
// channel and len. On ERR_OK *h is filled and the caller reads h->len payload bytes, then checks
// them with frame_payload_ok. Otherwise the stream's framing must be taken as lost: it returns
// ERR_PEER for a peer of another protocol version (the message names both versions) and
// ERR_FORMAT, naming the field, for anything else.
int frame_decode(const void *buf, frame_header *h);

// frame_payload_ok returns 1 if payload(h->len) matches h->pcrc.
int frame_payload_ok(const frame_header *h, const void *payload);

#endif
