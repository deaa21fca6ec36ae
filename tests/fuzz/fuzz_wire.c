// fuzz_wire.c: the SPARTA and ring all-reduce message format (sparta/peer/wire.h), as
// sparta.c and allreduce.c read a message: wire_decode / wire_decode_crc, then wire_values and
// wire_values_add on what they accept. Input: one flags byte, then the message. Flag bit 0
// rewrites the message CRC to the right one (so the field checks behind it are reached); bit 1
// asks for run id RUN_ID, as a peer does. Checked: both decoders agree; wire_values_add is
// wire_values followed by its loop, bit for bit; an fp32 message encodes back to the same bytes.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/le.h"
#include "sparta/peer/wire.h"
#include "tests/fuzz/fuzz.h"
#include "train/base/err.h"

#define MAX_LEN 65536
#define RUN_ID  0x0123456789abcdefull

// fix_crc writes the right CRC into msg(len): header bytes [0, 44), then the payload.
static void fix_crc(unsigned char *msg, size_t len) {
    unsigned char *tmp = malloc(len);
    memcpy(tmp, msg, 44);
    memcpy(tmp + 44, msg + WIRE_HEADER, len - WIRE_HEADER);
    le_put32(msg + 44, wire_crc32c(tmp, len - 4));
    free(tmp);
}

// same_header compares the fields (not the padding) of two headers.
static int same_header(const wire_header *a, const wire_header *b) {
    return a->dtype == b->dtype && a->run_id == b->run_id && a->sender == b->sender &&
           a->kind == b->kind && a->round == b->round && a->k == b->k && a->offset == b->offset &&
           a->count == b->count;
}

static int same_float(float a, float b) {
    return (isnan(a) && isnan(b)) || !memcmp(&a, &b, sizeof a);
}

// check_values converts the payload of a decoded message both ways and compares.
static void check_values(const unsigned char *msg, const wire_header *h) {
    size_t c = h->count;
    float *v = malloc((c ? c : 1) * sizeof *v), *add = malloc((c ? c : 1) * sizeof *add),
          *sum = malloc((c ? c : 1) * sizeof *sum);
    wire_values(msg, h, v);
    for (size_t i = 0; i < c; i++)
        add[i] = (float)(i % 7) - 3.0f;
    float div = c % 2 ? 1.0f : 3.0f;
    wire_values_add(msg, h, add, div, sum);
    for (size_t i = 0; i < c; i++) {
        float want = div == 1.0f ? v[i] + add[i] : (v[i] + add[i]) / div;
        if (!same_float(sum[i], want))
            fprintf(stderr, "value %zu of %zu (dtype %u): %a + %a / %g gave %a, want %a\n", i, c,
                    h->dtype, v[i], add[i], div, sum[i], want);
        fuzz_check(same_float(sum[i], want), "wire_values_add differs from wire_values");
    }
    if (h->dtype == WIRE_FP32) {
        size_t len = WIRE_HEADER + wire_payload_size(h->dtype, h->count);
        unsigned char *again = malloc(len);
        fuzz_check(wire_encode(again, h, v) == len, "wire_encode: length");
        fuzz_check(!memcmp(again, msg, len), "wire: an fp32 message does not encode back");
        free(again);
    }
    free(v);
    free(add);
    free(sum);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 1 || n > MAX_LEN) return 0;
    size_t len = n - 1;
    unsigned char *msg = malloc(len ? len : 1);
    if (len) memcpy(msg, data + 1, len);
    if ((data[0] & 1) && len >= WIRE_HEADER) fix_crc(msg, len);
    uint64_t run = data[0] & 2 ? RUN_ID : 0;
    wire_header h, h2;
    int rc = wire_decode(msg, len, run, &h);
    int rc2 = wire_decode_crc(msg, len, wire_crc32c(msg, len), run, &h2);
    fuzz_check(rc == rc2 && same_header(&h, &h2), "wire_decode and wire_decode_crc differ");
    fuzz_check(rc == ERR_OK || rc == ERR_FORMAT || rc == ERR_PEER, "wire_decode: unknown code");
    if (rc == ERR_OK) check_values(msg, &h);
    free(msg);
    return 0;
}
