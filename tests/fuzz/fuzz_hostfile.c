// fuzz_hostfile.c: the hostfile of `spartan launch` (train/cmd/hostfile.h), text and MLX JSON
// forms: hostfile_parse on len bytes with no terminator (ASan sees a read past the end).
// Input: the file. Checked: what the header promises of a parsed hostfile (n >= 1, peers is the
// sum of slots, every field in its range, strings safe for an ssh command line, ports of a
// slots=N entry all valid) and an empty one on failure.
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "train/base/err.h"
#include "train/cmd/hostfile.h"

#define MAX_LEN 65536

// safe says whether s could go on an ssh command line: not empty unless allowed, no leading '-',
// no white space, quotes or shell metacharacters.
static int safe(const char *s, int may_be_empty) {
    if (!s[0]) return may_be_empty;
    if (s[0] == '-') return 0;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f ||
            strchr("'\"`$;&|<>()\\*?!{}", *p))
            return 0;
    return 1;
}

static void check_host(const hostfile_host *h) {
    fuzz_check(safe(h->host, 0) && safe(h->user, 1) && safe(h->dir, 1), "hostfile: unsafe string");
    fuzz_check(h->ssh_port >= 1 && h->ssh_port <= 65535, "hostfile: ssh_port out of range");
    fuzz_check(h->slots >= 1 && h->slots <= HOSTFILE_MAX_SLOTS, "hostfile: slots out of range");
    fuzz_check(h->threads >= 0 && h->threads <= HOSTFILE_MAX_THREADS, "hostfile: threads");
    fuzz_check(h->port >= 0 && h->port + (h->port ? h->slots - 1 : 0) <= 65535,
               "hostfile: a peer port past 65535");
    fuzz_check(h->n_ips >= 0 && h->n_ips <= HOSTFILE_MAX_IPS, "hostfile: n_ips");
    for (int i = 0; i < h->n_ips; i++)
        fuzz_check(safe(h->ips[i], 0), "hostfile: unsafe ip");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n > MAX_LEN) return 0;
    hostfile h;
    int rc = hostfile_parse(&h, (const char *)data, n, "fuzz.txt");
    fuzz_check(rc == ERR_OK || rc == ERR_FORMAT || rc == ERR_INVAL, "hostfile_parse: code");
    if (rc != ERR_OK) {
        fuzz_check(!h.hosts && !h.n && !h.peers, "hostfile_parse: failed but left hosts");
        fuzz_check(!strncmp(err_msg(), "fuzz.txt", 8), "hostfile_parse: message without the name");
        return 0;
    }
    fuzz_check(h.n >= 1 && h.n <= HOSTFILE_MAX_HOSTS, "hostfile: host count");
    int peers = 0;
    for (int i = 0; i < h.n; i++) {
        check_host(&h.hosts[i]);
        peers += h.hosts[i].slots;
    }
    fuzz_check(peers == h.peers, "hostfile: peers is not the sum of slots");
    hostfile_free(&h);
    return 0;
}
