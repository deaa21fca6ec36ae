// handshake.h: the peer layer's own messages (channel 0, PEER_CH_SYS), as bytes: the hello each
// side of a new link sends, the nonce that comes first when handshakes are signed (ident.h), and
// the views a rendezvous coordinator hands out. Encoders and parsers only; peer.c decides what
// they mean. Parsers trust nothing: every length is bounded by the message, and a string with a
// NUL inside or a message with bytes left over is malformed. Pure functions; any thread.
//
// A SYS message's first byte is its type:
//   HELLO    u32 reserved, u64 run_id, u64 member, u64 settings_hash, i32 rank, u32 world,
//            u8 joining, u16-length build, u16-length addr, u32-length shared settings, then
//            (signed handshakes) the proof of ident.h
//   REFUSE   u8 kind (PEER_DIAG_*), text
//   REDIRECT the coordinator's address (text)
//   VIEW     u64 epoch, i32 your rank (-1: a broadcast), u32 n, then per member i32 rank,
//            u64 id, u16-length addr
//   ACK      nothing more
//   NONCE    IDENT_NONCE random bytes
//   PING     nothing more (a heartbeat, once the link is up)
#ifndef HANDSHAKE_H
#define HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

#include "sparta/peer/peer.h"

enum {
    SYS_HELLO = 1,
    SYS_REFUSE = 2,
    SYS_REDIRECT = 3,
    SYS_VIEW = 4,
    SYS_ACK = 5,
    SYS_NONCE = 6,
    SYS_PING = 7 // a heartbeat: nothing more (peer.c sends one on a link that is otherwise idle)
};

#define HS_BUILD_MAX 64

typedef struct hs_hello {
    uint64_t run_id, member, settings_hash;
    int rank;    // the sender's rank (-1: none yet); joining: the rank it asks for
    int world;   // a static group's size, 0 in a rendezvous group
    int joining; // sent on the link the sender dialled to join a rendezvous group
    char build[HS_BUILD_MAX], addr[PEER_ADDR_MAX];
    const char *shared; // the shared settings text (hello.h); the parser points it into its buffer
} hs_hello;

// hs_settings_hash returns the hash of the shared settings text a hello carries (FNV-1a, 64 bit;
// NULL hashes as ""): equal texts, equal hashes.
uint64_t hs_settings_hash(const char *shared);

// hs_hello_encode writes h as a HELLO message into p (cap bytes) and returns its length, or 0 if
// it does not fit (or a string is longer than its length field allows).
size_t hs_hello_encode(const hs_hello *h, unsigned char *p, size_t cap);

// hs_hello_parse reads a HELLO message p(len) into *h, its shared text copied into shared (scap
// bytes, NUL-terminated). The hello may be followed by a proof (ident.h): *used is set to the
// hello's own length, and len - *used bytes are left for the caller. Returns 0, or -1 if p is not
// a well-formed hello.
int hs_hello_parse(const unsigned char *p, size_t len, hs_hello *h, char *shared, size_t scap,
                   size_t *used);

// hs_view_encode writes a VIEW of the members mem[r] with present[r] set (r < PEER_MAX_MEMBERS)
// into p (cap bytes), telling the receiver its rank your_rank (-1: a broadcast). Returns the
// length, or 0 if it does not fit.
size_t hs_view_encode(uint64_t epoch, int your_rank, const peer_member *mem, const int *present,
                      unsigned char *p, size_t cap);

// hs_view_parse reads a VIEW message p(len): *epoch, *your_rank, and for every member present[r]
// = 1 with mem[r] filled (rank, id, addr; others zeroed). Returns 0, or -1 if malformed (a rank
// out of range, a length past the end, bytes left over).
int hs_view_parse(const unsigned char *p, size_t len, uint64_t *epoch, int *your_rank, int *present,
                  peer_member *mem);

#endif
