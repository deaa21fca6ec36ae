// fuzz_frame.c: the peer layer's frame header (sparta/peer/frame.h), as peer.c reads it off a
// stream: frame_decode on the first FRAME_HEADER bytes, then frame_payload_ok on the payload.
// Input: one flags byte, then the header and the payload. Flag bit 0 rewrites the header CRC
// to the right one, so that the checks behind it (version, flags, channel, len) are reached.
// Checked: a decoded header encodes back to the same 24 bytes.
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/frame.h"
#include "sparta/peer/le.h"
#include "tests/fuzz/fuzz.h"
#include "train/base/err.h"

#define MAX_LEN 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 1 + FRAME_HEADER || n > MAX_LEN) return 0;
    unsigned char hdr[FRAME_HEADER];
    memcpy(hdr, data + 1, FRAME_HEADER);
    if (data[0] & 1) le_put32(hdr + 20, frame_crc32c(hdr, 20));
    const uint8_t *payload = data + 1 + FRAME_HEADER;
    size_t plen = n - 1 - FRAME_HEADER;
    frame_header h;
    int rc = frame_decode(hdr, &h);
    fuzz_check(rc == ERR_OK || rc == ERR_FORMAT || rc == ERR_PEER, "frame_decode: unknown code");
    fuzz_check(rc == ERR_OK || err_msg()[0], "frame_decode: an error without a message");
    if (rc != ERR_OK) return 0;
    fuzz_check(h.len <= FRAME_MAX_PAYLOAD && h.channel < FRAME_CHANNELS, "frame_decode: bounds");
    unsigned char again[FRAME_HEADER];
    frame_encode_crc(again, h.channel, h.seq, h.pcrc, h.len);
    fuzz_check(!memcmp(again, hdr, FRAME_HEADER), "frame: decode then encode changed the header");
    // peer.c reads exactly h.len payload bytes before it checks them.
    if (h.len <= plen) {
        int ok = frame_payload_ok(&h, payload);
        fuzz_check(ok == (frame_crc32c(payload, h.len) == h.pcrc), "frame_payload_ok");
    }
    return 0;
}
