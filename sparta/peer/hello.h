// hello.h: what peers must share, and the start-up report. hello_text is the text of the settings
// every peer of a run must share (cfg_shared_write) plus the number of peers; the peer layer puts
// it in its handshake (peer_opts.shared) and refuses a peer whose text differs, naming the keys
// (hello_diff). hello_wait waits for the peers at start-up and names the missing ones and why, so
// a peer with another seed, model or exchange setting, or one that cannot be reached, is named
// instead of silently exchanging nothing. Trainer thread.
#ifndef HELLO_H
#define HELLO_H

#include <stddef.h>

#include "sparta/peer/peer.h"
#include "train/base/cfg.h"

// hello_text writes this peer's hello into buf (n bytes, n >= 256): the shared settings of c and
// "world=<peers>", one key=value line each.
void hello_text(const cfg *c, int world, char *buf, size_t n);

// hello_diff compares two hellos key by key and writes the differences into out (n bytes) as
// "key = <theirs> there, <mine> here; ..." (a key missing on one side shows as "(none)").
// Returns the number of keys that differ (0: the same run).
int hello_diff(const char *mine, const char *theirs, char *out, size_t n);

// hello_wait waits up to timeout_ms for a live link to world members of g (or to every member of
// g's view, when a peer joins a running group that has more) (the addresses of g's
// view, as net.peers or the rendezvous gave them, name them in messages), then reports under the
// tag who
// (train, sparta, ...): every peer that is not connected gets one line with the reason
// (peer_diagnose); a peer refused for other settings or another run is an ERROR line naming what
// differs (the peer layer refused it in its handshake; the other peers go on). It does not wait
// for peers that were linked and left (peer_wait_view), and when every peer left (a short run
// that ended first) it goes on alone with a warning. With no peer ever connected and
// allow_alone false it fails: ERR_PEER saying that a peer runs another
// configuration (naming it and the keys), or that no peer could be reached. Else ERR_OK, with
// the number of connected peers in *n_ok (may be NULL). Trainer thread, at start-up.
#define HELLO_TEXT_MAX 4096 // room for hello_text

int hello_wait(peer_group *g, int world, int timeout_ms, int allow_alone, const char *who,
               int *n_ok);

#endif
