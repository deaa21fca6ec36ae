// handshake_test.c: the SYS messages as bytes (sparta/peer/handshake.c): a hello and a view
// survive a round trip; every truncation, a length past the end, a rank out of range, a member
// twice and a byte too many are malformed, never read past the message; a proof after the hello
// is left to the caller.
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/handshake.h"

static hs_hello sample(void) {
    hs_hello h = {.run_id = 0x1122334455667788ull,
                  .member = 0xfeedfacecafebeefull,
                  .settings_hash = hs_settings_hash("model.n_layer=2\n"),
                  .rank = 3,
                  .world = 5,
                  .joining = 1,
                  .shared = "model.n_layer=2\nworld=5\n"};
    strcpy(h.build, "v1 abc");
    strcpy(h.addr, "10.0.0.7:7001");
    return h;
}

Test(handshake, a_hello_round_trips_and_leaves_a_proof_to_the_caller) {
    hs_hello h = sample(), back;
    unsigned char buf[1024];
    size_t n = hs_hello_encode(&h, buf, sizeof buf), used = 0;
    cr_assert_gt(n, 0);
    char shared[256];
    cr_assert_eq(hs_hello_parse(buf, n, &back, shared, sizeof shared, &used), 0);
    cr_assert_eq(used, n);
    cr_assert(back.run_id == h.run_id && back.member == h.member &&
              back.settings_hash == h.settings_hash);
    cr_assert(back.rank == 3 && back.world == 5 && back.joining == 1);
    cr_assert_str_eq(back.build, h.build);
    cr_assert_str_eq(back.addr, h.addr);
    cr_assert_str_eq(back.shared, h.shared);
    memcpy(buf + n, "PROOF", 5); // what follows is the caller's
    cr_assert_eq(hs_hello_parse(buf, n + 5, &back, shared, sizeof shared, &used), 0);
    cr_assert_eq(used, n);
    cr_assert_eq(hs_hello_encode(&h, buf, n - 1), 0, "a hello that does not fit was written");
}

Test(handshake, every_truncated_or_overlong_hello_is_malformed) {
    hs_hello h = sample(), back;
    unsigned char buf[1024];
    size_t n = hs_hello_encode(&h, buf, sizeof buf), used;
    char shared[256];
    for (size_t len = 0; len < n; len++) {
        unsigned char *copy = malloc(len ? len : 1); // ASan sees any read past it
        memcpy(copy, buf, len);
        cr_assert_eq(hs_hello_parse(copy, len, &back, shared, sizeof shared, &used), -1,
                     "a hello cut at %zu of %zu bytes parsed", len, n);
        free(copy);
    }
    cr_assert_eq(hs_hello_parse(buf, n, &back, shared, 8, &used), -1, "shared text overflowed");
    buf[0] = SYS_VIEW;
    cr_assert_eq(hs_hello_parse(buf, n, &back, shared, sizeof shared, &used), -1);
    buf[0] = SYS_HELLO;
    buf[37] = 2; // joining is 0 or 1
    cr_assert_eq(hs_hello_parse(buf, n, &back, shared, sizeof shared, &used), -1);
}

Test(handshake, a_view_round_trips_and_bad_views_are_malformed) {
    peer_member mem[PEER_MAX_MEMBERS] = {0}, back[PEER_MAX_MEMBERS];
    int present[PEER_MAX_MEMBERS] = {0}, bp[PEER_MAX_MEMBERS];
    present[0] = present[4] = 1;
    mem[0] = (peer_member){.rank = 0, .id = 11, .addr = "127.0.0.1:1"};
    mem[4] = (peer_member){.rank = 4, .id = 44, .addr = "host:4"};
    unsigned char buf[512];
    size_t n = hs_view_encode(9, 4, mem, present, buf, sizeof buf);
    cr_assert_gt(n, 0);
    uint64_t epoch;
    int yours;
    cr_assert_eq(hs_view_parse(buf, n, &epoch, &yours, bp, back), 0);
    cr_assert(epoch == 9 && yours == 4 && bp[0] && bp[4] && !bp[1]);
    cr_assert(back[4].id == 44 && !strcmp(back[4].addr, "host:4") && back[0].id == 11);
    for (size_t len = 0; len < n; len++)
        cr_assert_eq(hs_view_parse(buf, len, &epoch, &yours, bp, back), -1, "cut at %zu", len);
    cr_assert_eq(hs_view_parse(buf, n + 1, &epoch, &yours, bp, back), -1, "a byte too many");
    // the second member claims rank 0 again
    unsigned char dup[512];
    memcpy(dup, buf, n);
    size_t second = 17 + 14 + strlen(mem[0].addr);
    memset(dup + second, 0, 4);
    cr_assert_eq(hs_view_parse(dup, n, &epoch, &yours, bp, back), -1, "a member twice");
    dup[second + 1] = PEER_MAX_MEMBERS >> 8; // rank 256: out of range
    cr_assert_eq(hs_view_parse(dup, n, &epoch, &yours, bp, back), -1, "a rank out of range");
    cr_assert_eq(hs_view_encode(9, 4, mem, present, buf, 20), 0, "a view that does not fit");
}
