// net.h: the peer mesh over nng. Every pair of peers shares one nng PAIR (v0) socket on each
// side, with nng's automatic reconnect, so a restarted peer is picked up again. All nng calls
// of the project live in net.c. Messages are opaque byte strings of at most NET_MAX_MSG bytes.
//
// Addressing: peers are given as "host:port" in rank order. For a pair i < j, rank j listens on
// port(listen_j) + i and rank i dials host(peer_j):port(peer_j) + i. A peer of rank r therefore
// listens on ports base .. base + r - 1, and peers on one host need base ports at least P apart.
//
// Threads: net_send, net_recv and the stats may be called from any one thread (the exchanger);
// net_close may be called from another thread to wake a blocked net_recv.
#ifndef NET_H
#define NET_H

#include <stddef.h>
#include <stdint.h>

#define NET_MAX_MSG    (8u << 20) // 8 MiB: larger payloads must be chunked by the caller
#define NET_RECV_QUEUE 4096       // received messages held for net_recv; newer ones are dropped

typedef struct net_mesh net_mesh;

typedef struct net_stats {
    uint64_t bytes_sent, bytes_recv; // payload bytes of messages handed to / taken from nng
    uint64_t msgs_sent, msgs_recv;
    uint64_t send_dropped; // sends refused (peer not connected or queue full)
    uint64_t recv_dropped; // arrivals dropped: receive queue full or > NET_MAX_MSG
} net_stats;

// net_parse_hostport splits "host:port" into host (at most hn bytes incl. NUL) and port.
// Returns ERR_OK or ERR_INVAL naming the text.
int net_parse_hostport(const char *addr, char *host, size_t hn, int *port);

// net_mesh_create connects this peer (rank, of world peers) to every other peer. peers[i] is
// peer i's "host:port"; listen (may be NULL: use peers[rank]) is the local bind address, e.g.
// "0.0.0.0:5000". Listening starts at once; dials are asynchronous and retried every ~100 ms
// until the peer is up, so peers may start in any order. On success the caller owns *out
// (net_mesh_destroy). Returns ERR_OK, ERR_INVAL (bad address, rank) or ERR_NET (cannot listen:
// the message names the address and nng's reason).
int net_mesh_create(net_mesh **out, int rank, int world, const char *const *peers,
                    const char *listen);

// net_send queues len bytes for peer without blocking (the data is copied). Returns ERR_OK,
// ERR_PEER if that peer is not connected or its queue is full (the message is dropped and
// counted), ERR_INVAL for a bad peer or len > NET_MAX_MSG, or ERR_CLOSED after net_close.
int net_send(net_mesh *m, int peer, const void *data, size_t len);

// net_recv waits up to timeout_ms (0 = poll, < 0 = forever) for the next message from any peer.
// On ERR_OK, *peer is the sender's rank (as known from the socket it arrived on) and *data (of
// *len bytes) is owned by the caller, released with net_msg_free. Returns ERR_OK, ERR_TIMEOUT,
// or ERR_CLOSED after net_close.
int net_recv(net_mesh *m, int timeout_ms, int *peer, void **data, size_t *len);

// net_wake makes the current or next net_recv return ERR_TIMEOUT at once, so another thread can
// get the receiver's attention (the exchanger waits in net_recv for messages and for work).
// Thread-safe.
void net_wake(net_mesh *m);

// net_msg_free releases a message returned by net_recv. NULL-safe.
void net_msg_free(void *data);

// net_connected returns 1 if the pipe to peer is currently up.
int net_connected(net_mesh *m, int peer);

// ---- hello and diagnostics -------------------------------------------------------------------
// A hello is a small blob (at most NET_HELLO_MAX bytes) that each side sends as the first message
// on every new pipe, so a peer learns who is on the other end without the other side's receiving
// thread taking part. Hellos never reach net_recv and are not counted in net_stats. A message
// that starts with the 8 bytes "SPNHELO1" is taken for a hello, so payloads must not.
#define NET_HELLO_MAX 4096

// net_set_hello sets this mesh's hello (copied) and sends it on the pipes already up; every pipe
// that comes up later gets it too. Call once after net_mesh_create. Thread-safe.
void net_set_hello(net_mesh *m, const void *data, size_t len);

// net_peer_hello copies the hello the peer sent on its current pipe into buf (at most cap - 1
// bytes, NUL-terminated) and returns its length, or -1 if the peer is not connected or has sent
// none on this pipe (a new pipe clears it). Thread-safe.
int net_peer_hello(net_mesh *m, int peer, char *buf, size_t cap);

// net_diagnose writes why peer is not connected into buf (n bytes): its host does not resolve,
// the connection is refused, nothing answers within a second, or (for a peer that dials us) it has
// not dialled in. Blocks up to about a second for a TCP probe. "connected" if it is. Thread-safe.
void net_diagnose(net_mesh *m, int peer, char *buf, size_t n);

// net_get_stats copies the counters (thread-safe).
void net_get_stats(net_mesh *m, net_stats *st);

// net_set_link turns on link emulation for messages this mesh RECEIVES (use the same settings
// on every peer): each message from a peer waits until the emulated link from that peer has
// carried it at rate_mbit (0 = unlimited; the link is shared by every mesh of this process with
// the same pair of ranks, as one wire would be) and then delay_ms more, and a fraction loss of
// the messages (seeded by seed) is dropped and counted in recv_dropped. Messages from different
// peers are delivered in order of their due times, from one peer in order. For experiments on
// one host without root (a real slow link needs none of this). Call before traffic starts.
void net_set_link(net_mesh *m, double rate_mbit, int delay_ms, double loss, uint64_t seed);

// net_close closes every socket and wakes any blocked net_recv with ERR_CLOSED. Idempotent.
void net_close(net_mesh *m);

// net_mesh_destroy closes (if needed) and frees the mesh. NULL-safe.
void net_mesh_destroy(net_mesh *m);

// ---- request/reply control channel ----------------------------------------------------------
// A small REQ/REP channel beside the mesh: a peer serves its state to a peer that (re)joins.
// Requests and replies are opaque byte strings of at most NET_MAX_MSG bytes.

typedef struct net_rep net_rep;

// net_rep_fn answers one request req(len): it sets *reply to a malloc'd buffer of *rlen bytes
// (freed by net), or leaves *reply NULL to send an empty reply. Runs on an nng thread, one
// request at a time per server.
typedef void (*net_rep_fn)(void *arg, const void *req, size_t len, void **reply, size_t *rlen);

// net_rep_create listens on addr ("host:port") and answers every request with fn(arg, ...) until
// net_rep_destroy. On success the caller owns *out. Returns ERR_OK, ERR_INVAL (bad address) or
// ERR_NET (cannot listen: the message names the address).
int net_rep_create(net_rep **out, const char *addr, net_rep_fn fn, void *arg);

// net_rep_destroy stops serving (waiting for a request in progress) and frees r. NULL-safe.
void net_rep_destroy(net_rep *r);

// net_request sends req(len) to the server at addr and waits up to timeout_ms (> 0) in all for
// the reply, which it returns in *reply (malloc'd, caller frees; NULL when empty) and *rlen.
// Returns ERR_OK, ERR_TIMEOUT (no server there or no answer in time), ERR_INVAL or ERR_NET.
int net_request(const char *addr, const void *req, size_t len, void **reply, size_t *rlen,
                int timeout_ms);

#endif
