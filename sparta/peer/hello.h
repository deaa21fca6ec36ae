// hello.h: the start-up handshake of a peer mesh. Each peer's hello (net_set_hello) is the text
// of the settings every peer of a run must share (cfg_shared_write) plus the number of peers;
// hello_start compares it with every peer's, so a peer with another seed, model or exchange setting
// is named, with what differs, instead of silently exchanging nothing. Trainer thread (or whichever
// thread creates the mesh).
#ifndef HELLO_H
#define HELLO_H

#include <stddef.h>

#include "sparta/peer/net.h"
#include "train/base/cfg.h"

// hello_text writes this peer's hello into buf (n bytes, n >= 256): the shared settings of c and
// "world=<peers>", one key=value line each.
void hello_text(const cfg *c, int world, char *buf, size_t n);

// hello_diff compares two hellos key by key and writes the differences into out (n bytes) as
// "key = <theirs> there, <mine> here; ..." (a key missing on one side shows as "(none)").
// Returns the number of keys that differ (0: the same run).
int hello_diff(const char *mine, const char *theirs, char *out, size_t n);

// hello_start sets mine as the hello of mesh m (this peer is rank of world; peers is net.peers,
// whose entries name the peers in messages) and waits up to timeout_ms for the hello of every
// connected peer, then checks them: a peer whose hello differs fails the start with ERR_PEER and a
// message naming the peer and the differences. Peers not connected (or connected without a hello)
// are logged, one WARN line each with the reason (net_diagnose), under the tag who ("sparta",
// "diloco"). With no peer confirmed and allow_alone false, returns ERR_PEER saying so; else ERR_OK
// with the number of confirmed peers in *n_ok (may be NULL).
int hello_start(net_mesh *m, int rank, int world, const char *peers, const char *mine,
                int timeout_ms, int allow_alone, const char *who, int *n_ok);

#endif
