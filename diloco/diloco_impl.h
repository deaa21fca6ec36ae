// diloco_impl.h: what DiLoCo (diloco.c) and DDP (ddp.c) share inside diloco/: the all-reduce mesh,
// on the ports of net.peers shifted by the number of peers, so it never meets the SPARTA mesh.
// Only files of diloco/ include it. Trainer thread.
#ifndef DILOCO_IMPL_H
#define DILOCO_IMPL_H

#include "sparta/peer/net.h"
#include "train/base/cfg.h"

// diloco_open_mesh creates the all-reduce mesh of peer rank of world on the ports of nc->peers
// shifted by world (nc->listen shifted likewise, when set) with nc's link emulation, seeded by
// seed + rank. ctl (world entries of 160 bytes; may be NULL) receives every peer's control address,
// shifted by 2 world (ours from nc->listen when set). On success the caller owns *out
// (net_mesh_destroy). Returns ERR_OK, ERR_INVAL (net.peers does not list world addresses, a bad
// address) or the error of net_mesh_create.
int diloco_open_mesh(net_mesh **out, char (*ctl)[160], const cfg_net *nc, int rank, int world,
                     uint64_t seed);

// diloco_wait_connected waits up to timeout_ms for a pipe to every other peer of m (peers may
// start in any order) and logs under the tag who when some are still missing (the handshake
// then names them and says why).
void diloco_wait_connected(net_mesh *m, int rank, int world, int timeout_ms, const char *who);

#endif
