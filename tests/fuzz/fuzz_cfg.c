// fuzz_cfg.c: the INI config loader (train/base/cfg.h), as `spartan train CONFIG` reads a file:
// cfg_parse_string (the loader cfg_load_ini shares, line by line through libinih), then
// cfg_validate and the readers of the net.peers list. Input: the INI text (an embedded NUL ends
// it, as it ends a C string). Checked: an accepted config writes out (cfg_to_string) as text
// that parses again to the same config, as the effective config of a run and a checkpoint must.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "train/base/cfg.h"
#include "train/base/err.h"

#define MAX_LEN 16384

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n > MAX_LEN) return 0;
    char *text = fuzz_str(data, n);
    cfg c;
    int rc = cfg_parse_string(&c, text, "fuzz.ini");
    free(text);
    fuzz_check(rc == ERR_OK || rc == ERR_INVAL, "cfg_parse_string: unknown code");
    fuzz_check(rc == ERR_OK || err_msg()[0], "cfg_parse_string: an error without a message");
    if (rc != ERR_OK) return 0;
    rc = cfg_validate(&c);
    fuzz_check(rc == ERR_OK || rc == ERR_INVAL, "cfg_validate: unknown code");
    int valid = rc == ERR_OK;
    char *out = cfg_to_string(&c);
    cfg again;
    rc = cfg_parse_string(&again, out, "effective.ini");
    if (rc != ERR_OK) {
        fprintf(stderr, "%s\n", err_msg());
        fuzz_check(0, "cfg: the written config does not parse");
    }
    char *out2 = cfg_to_string(&again);
    fuzz_check(!strcmp(out, out2), "cfg: write, parse, write changed the config");
    free(out);
    free(out2);
    // A valid config's net.peers has cfg_peer_count entries, none of them empty (main.c hands
    // each to the peer layer as an address).
    char buf[sizeof c.net.peers], shared[8192];
    int np = cfg_peer_count(c.net.peers);
    for (int i = 0; valid && c.net.peers[0] && i < np; i++)
        fuzz_check(cfg_peer_entry(c.net.peers, i, buf, sizeof buf) == 0 && buf[0],
                   "cfg: a valid net.peers with a missing or empty entry");
    fuzz_check(cfg_peer_entry(c.net.peers, np, buf, sizeof buf) == -1, "cfg_peer_entry: past end");
    fuzz_check(!valid || cfg_group_size(&c) >= 1, "cfg_group_size of a valid config");
    (void)cfg_shared_write(&c, shared, sizeof shared);
    return 0;
}
