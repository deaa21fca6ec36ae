// fuzz_handshake.c: the peer handshake as peer.c reads it off a new link (sparta/peer/handshake.h
// and ident.h): a SYS message parsed as a hello (what follows it is its proof, checked by
// ident_check against a cluster made once below /tmp) or as a view. Input: one byte choosing the
// parser, then the message. Checked: a parsed hello or view encodes and parses back to the same
// fields; a proof from the input never verifies (it would take the cluster's key), and a refusal
// always says why.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/handshake.h"
#include "sparta/peer/ident.h"
#include "tests/fuzz/fuzz.h"
#include "train/base/err.h"
#include "train/base/pki.h"

#define MAX_LEN 16384

static ident *cluster(void) {
    static ident *id;
    if (id) return id;
    char dir[600], ca[700], crt[700], key[700];
    snprintf(dir, sizeof dir, "%s/cluster", fuzz_dir());
    fuzz_check(pki_ca_init(dir, "fuzz", 30) == ERR_OK && pki_issue(dir, "a", 30) == ERR_OK,
               "cannot make the cluster");
    snprintf(ca, sizeof ca, "%s/ca.crt", dir);
    snprintf(crt, sizeof crt, "%s/a.crt", dir);
    snprintf(key, sizeof key, "%s/a.key", dir);
    fuzz_check(ident_load(&id, ca, crt, key) == ERR_OK, "cannot load the cluster's files");
    return id;
}

static void hello(const uint8_t *p, size_t n) {
    static char shared[MAX_LEN], again_shared[MAX_LEN];
    hs_hello h, back;
    size_t used = 0, used2 = 0;
    if (hs_hello_parse(p, n, &h, shared, sizeof shared, &used)) return;
    fuzz_check(used <= n, "hello: used past the message");
    unsigned char *buf = malloc(n + 16);
    size_t m = hs_hello_encode(&h, buf, n + 16);
    fuzz_check(m == used, "hello: encodes to another length");
    fuzz_check(!hs_hello_parse(buf, m, &back, again_shared, sizeof again_shared, &used2) &&
                   used2 == m,
               "hello: its encoding does not parse");
    fuzz_check(back.run_id == h.run_id && back.member == h.member &&
                   back.settings_hash == h.settings_hash && back.rank == h.rank &&
                   back.world == h.world && back.joining == h.joining &&
                   !strcmp(back.build, h.build) && !strcmp(back.addr, h.addr) &&
                   !strcmp(back.shared, h.shared),
               "hello: fields changed in a round trip");
    free(buf);
    unsigned char nonce[IDENT_NONCE] = {0};
    char name[IDENT_NAME_MAX], why[400] = "";
    int rc = ident_check(cluster(), h.member, p, used, p + used, n - used, nonce, name, sizeof name,
                         why, sizeof why);
    fuzz_check(rc == -1, "a proof from the input verified");
    fuzz_check(why[0] != 0, "a refused proof without a reason");
}

static void view(const uint8_t *p, size_t n) {
    static int present[PEER_MAX_MEMBERS], bp[PEER_MAX_MEMBERS];
    static peer_member mem[PEER_MAX_MEMBERS], back[PEER_MAX_MEMBERS];
    uint64_t epoch = 0, e2 = 0;
    int yours = 0, y2 = 0;
    if (hs_view_parse(p, n, &epoch, &yours, present, mem)) return;
    unsigned char *buf = malloc(n + 16);
    size_t m = hs_view_encode(epoch, yours, mem, present, buf, n + 16);
    fuzz_check(m > 0 && !hs_view_parse(buf, m, &e2, &y2, bp, back), "view: no round trip");
    fuzz_check(e2 == epoch && y2 == yours, "view: epoch or rank changed");
    for (int r = 0; r < PEER_MAX_MEMBERS; r++)
        fuzz_check(bp[r] == present[r] &&
                       (!bp[r] || (back[r].id == mem[r].id && !strcmp(back[r].addr, mem[r].addr))),
                   "view: a member changed");
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 1 || n > MAX_LEN) return 0;
    if (data[0] & 1)
        view(data + 1, n - 1);
    else
        hello(data + 1, n - 1);
    return 0;
}
