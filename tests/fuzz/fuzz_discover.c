// fuzz_discover.c: the LAN discovery datagram (sparta/peer/discover.h), as the discovery thread
// reads one from its UDP socket: discover_unpack under the cluster key KEY. Input: one flags
// byte, then the datagram. Flag bit 0 writes KEY's cluster id into it and bit 1 its right
// HMAC tag, so that the checks behind them are reached. Checked: the verdict is one of the
// documented four, and an accepted datagram packs back to the same bytes.
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#include "sparta/peer/discover.h"
#include "sparta/peer/le.h"
#include "tests/fuzz/fuzz.h"

#define MAX_LEN 512 // above DISCOVER_MAX_BYTES + 1: longer datagrams are refused too

static const uint8_t KEY[] = "fuzz cluster key, 32 bytes long.";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 1 || n > MAX_LEN) return 0;
    uint8_t buf[MAX_LEN];
    size_t len = n - 1;
    memcpy(buf, data + 1, len);
    size_t key_len = sizeof KEY - 1;
    if ((data[0] & 1) && len >= 16) le_put64(buf + 8, discover_cluster_id(KEY, key_len));
    if ((data[0] & 2) && len >= DISCOVER_TAG_BYTES + 64) {
        unsigned tl = DISCOVER_TAG_BYTES;
        HMAC(EVP_sha256(), KEY, (int)key_len, buf, len - DISCOVER_TAG_BYTES,
             buf + len - DISCOVER_TAG_BYTES, &tl);
    }
    discover_announce a;
    discover_verdict v = discover_unpack(buf, len, KEY, key_len, &a);
    fuzz_check(v == DISCOVER_ACCEPTED || v == DISCOVER_BAD_FORMAT || v == DISCOVER_OTHER_CLUSTER ||
                   v == DISCOVER_FORGED,
               "discover_unpack: another verdict");
    fuzz_check(discover_verdict_str(v) != NULL, "discover_verdict_str");
    if (v != DISCOVER_ACCEPTED) return 0;
    fuzz_check(strlen(a.addr) < DISCOVER_ADDR_MAX, "discover_unpack: address not terminated");
    uint8_t again[DISCOVER_MAX_BYTES];
    size_t k = discover_pack(&a, KEY, key_len, again, sizeof again);
    fuzz_check(k == len && !memcmp(again, buf, len), "discover: unpack then pack differs");
    return 0;
}
