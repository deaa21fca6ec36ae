// mesh.c: the all-reduce mesh of DiLoCo and DDP (diloco_impl.h): addresses from net.peers with the
// ports shifted, and the wait for the peers at start-up. Trainer thread.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diloco/diloco_impl.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"

// shift_addr writes "host:port" of addr with the port moved up by shift into out (size 160).
static int shift_addr(char *out, const char *addr, int shift) {
    char host[128];
    int port;
    int rc = net_parse_hostport(addr, host, sizeof host, &port);
    if (!rc) snprintf(out, 160, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port + shift);
    return rc;
}

int diloco_open_mesh(net_mesh **out, char (*ctl)[160], const cfg_net *nc, int rank, int world,
                     uint64_t seed) {
    char *list = xstrdup(nc->peers), *save = NULL;
    char(*addr)[160] = xcalloc((size_t)world, sizeof *addr);
    const char **peers = xcalloc((size_t)world, sizeof(char *));
    int n = 0, rc = ERR_OK;
    for (char *tok = strtok_r(list, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (n < world) {
            peers[n] = addr[n];
            rc = shift_addr(addr[n], tok, world);
            if (!rc && ctl) rc = shift_addr(ctl[n], tok, 2 * world);
        }
        n++;
    }
    if (!rc && n != world)
        rc = err_set(ERR_INVAL, "net.peers: expected %d addresses, found %d", world, n);
    char listen[160] = "";
    if (!rc && nc->listen[0] && !(rc = shift_addr(listen, nc->listen, world)) && ctl)
        rc = shift_addr(ctl[rank], nc->listen, 2 * world);
    if (!rc) rc = net_mesh_create(out, rank, world, peers, listen[0] ? listen : NULL);
    if (!rc) net_set_link(*out, nc->rate_mbit, nc->delay_ms, nc->loss, seed + (uint64_t)rank);
    free(list);
    free(addr);
    free(peers);
    return rc;
}

void diloco_wait_connected(net_mesh *m, int rank, int world, int timeout_ms, const char *who) {
    double t0 = sys_now_ms();
    for (;;) {
        int up = 1;
        for (int p = 0; p < world; p++)
            if (p != rank && !net_connected(m, p)) up = 0;
        if (up) return;
        if (sys_now_ms() - t0 > timeout_ms) {
            LOG_I(who, "not every peer connected after %d ms", timeout_ms); // see the handshake
            return;
        }
        // TODO(issue 12, peer layer): net.h has no event for a pipe coming up, so this polls
        // net_connected; wait on the mesh's own wake-up once the new peer layer offers one.
        sys_sleep_ms(10);
    }
}
