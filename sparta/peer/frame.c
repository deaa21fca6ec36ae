// frame.c: the peer layer's frame header (see frame.h). Pure functions; any thread.
#include "sparta/peer/frame.h"

#include <string.h>

#include "sparta/peer/le.h"
#include "sparta/peer/wire.h"
#include "train/base/err.h"

#define HCRC_OFFSET 20

uint32_t frame_crc32c(const void *data, size_t n) { return wire_crc32c(data, n); }

void frame_encode(void *out, uint8_t channel, uint32_t seq, const void *payload, uint32_t len) {
    ASSERT(payload || len == 0);
    frame_encode_crc(out, channel, seq, frame_crc32c(payload, len), len);
}

void frame_encode_crc(void *out, uint8_t channel, uint32_t seq, uint32_t pcrc, uint32_t len) {
    ASSERT(len <= FRAME_MAX_PAYLOAD && channel < FRAME_CHANNELS);
    unsigned char *p = out;
    le_put32(p, FRAME_MAGIC);
    le_put16(p + 4, FRAME_VERSION);
    p[6] = channel;
    p[7] = 0;
    le_put32(p + 8, len);
    le_put32(p + 12, seq);
    le_put32(p + 16, pcrc);
    le_put32(p + HCRC_OFFSET, frame_crc32c(p, HCRC_OFFSET));
}

int frame_decode(const void *buf, frame_header *h) {
    const unsigned char *p = buf;
    memset(h, 0, sizeof *h);
    if (le_get32(p) != FRAME_MAGIC)
        return err_set(ERR_FORMAT, "frame: bad magic 0x%08x (not a spartan peer)", le_get32(p));
    if (le_get32(p + HCRC_OFFSET) != frame_crc32c(p, HCRC_OFFSET))
        return err_set(ERR_FORMAT, "frame: header CRC mismatch");
    unsigned version = le_get16(p + 4);
    if (version != FRAME_VERSION)
        return err_set(ERR_PEER, "frame: protocol version %u there, %u here", version,
                       FRAME_VERSION);
    if (p[7] != 0) return err_set(ERR_FORMAT, "frame: unknown flags 0x%02x", p[7]);
    if (p[6] >= FRAME_CHANNELS) return err_set(ERR_FORMAT, "frame: bad channel %u", p[6]);
    uint32_t len = le_get32(p + 8);
    if (len > FRAME_MAX_PAYLOAD)
        return err_set(ERR_FORMAT, "frame: length %u > %u", len, FRAME_MAX_PAYLOAD);
    h->channel = p[6];
    h->len = len;
    h->seq = le_get32(p + 12);
    h->pcrc = le_get32(p + 16);
    return ERR_OK;
}

int frame_payload_ok(const frame_header *h, const void *payload) {
    return frame_crc32c(payload, h->len) == h->pcrc;
}
