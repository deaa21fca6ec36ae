// peer.h: the peer layer. A process is one member of a group: it listens on one address, holds
// one stream to every other member (nng's byte streams: tcp://, ipc://), and moves messages on
// named channels over it. Every frame has one header with CRCs (frame.h). A connection becomes a
// member's link only after a handshake within a short deadline (run id, member id, protocol,
// build, the hash of the settings every peer must share); a stranger or a mismatched peer is
// closed and never takes a member's place. Membership is a view with an epoch number.
//
// Joining: with a static list (peer_opts.peers) member i is rank i and the lower rank of a pair
// dials the higher. With a rendezvous address (peer_opts.join) a process dials that address: if
// the hello that answers carries its own member id, it is that address and founds the group;
// otherwise the group's coordinator (its lowest rank; others redirect to it) gives it the lowest
// free rank (or the one it asks for), and sends the new view to every member, each of which dials
// the members of higher rank. So every process can be given the same --join address. The
// coordinator takes a member whose link died out of the view (and dials it no more); a member
// with no link to its coordinator for the heartbeat timeout (a partition: the other side keeps
// it in its view) dials the coordinator again asking for its own rank, so a healed partition
// becomes one view again. A coordinator that died for good is not replaced.
//
// Channels: PEER_CH_SYS is the layer's own. Sends go out in channel order (control before SPARTA
// before the ring and state transfers), one frame at a time, so a small message waits for at most
// one frame (FRAME_MAX_PAYLOAD) of a bulk transfer. Each channel has its own bounded queues;
// CONTROL and SPARTA drop what does not fit (counted), RING and STATE hold the sender back.
//
// Link emulation (peer_opts.rate_mbit, delay_ms, loss) applies to received frames per link: a
// frame is delivered once the emulated wire from that member has carried it and delay_ms more
// have passed, and the link reads no faster than the rate (so the sender feels it, as on a real
// slow link). It has no state outside the group.
//
// Threads: every function may be called from any thread unless said otherwise; the group runs
// its own threads (an acceptor, a maintainer that dials, a reader and a writer per link).
#ifndef PEER_H
#define PEER_H

#include <stddef.h>
#include <stdint.h>

#include "sparta/peer/frame.h"

#define PEER_MAX_MEMBERS 256
#define PEER_ADDR_MAX    160

enum {
    PEER_CH_SYS = 0,     // handshake, join, views: never delivered to users
    PEER_CH_CONTROL = 1, // small control messages (agreement, state requests)
    PEER_CH_SPARTA = 2,  // SPARTA's values
    PEER_CH_RING = 3,    // the ring all-reduce
    PEER_CH_STATE = 4,   // requests and replies (peer_call): state for a joining member
    PEER_NCH = 5
};

typedef struct peer_group peer_group;

typedef struct peer_opts {
    const char *listen; // this process's address: "host:port" (tcp; port 0 picks one), or a URL
                        // "tcp://...", "ipc:///path"
    // A static group: peers[i] is member i's address (world of them) and this process is rank.
    const char *const *peers;
    int world, rank;
    // Or a rendezvous: the address of any member (or this process's own: it founds the group).
    const char *join;
    int want_rank;   // with join: -1 for the lowest free rank, else this one
    int max_members; // with join: ranks are below this (0: PEER_MAX_MEMBERS)
    int join_ms;     // with join: how long to wait for the group (0: 10000)
    // The address the others dial for this process (NULL: its listen address): set it behind a
    // relay or a port forward.
    const char *advertise;
    uint64_t run_id;    // peers of another run are refused (0: not checked)
    const char *shared; // the settings every peer must share, one key=value line each (hello.h);
                        // a peer whose text differs is refused, naming the keys. May be NULL.
    const char *build;  // this build ("0.1.0"); a peer of another build is logged, not refused
    int handshake_ms;   // a connection without a valid hello by then is closed (0: 2000)
    double rate_mbit;   // link emulation: 0 = off (unlimited)
    int delay_ms;
    double loss; // fraction of received frames dropped (counted in recv_dropped)
    uint64_t seed;
    const char *tag; // module name in log lines (NULL: "peer")
    // TLS (all three set, or none): PEM files of the cluster CA, this peer's certificate and its
    // private key (spartan keys). Then host:port addresses are tls+tcp:// and both sides of every
    // connection require a certificate from that CA; a peer without one never gets a hello in.
    const char *tls_ca, *tls_cert, *tls_key;
    // Without TLS, a cluster key (16 bytes or more, copied) makes every link authenticated but
    // not encrypted (mac.h): the hello proves the key, and every frame after it carries an
    // HMAC-SHA256 tag; a frame whose tag fails is dropped (peer_stats.bad_mac), one replayed from
    // earlier on the link is dropped (replayed), and a hello under another key is refused.
    // Ignored with TLS (which authenticates and encrypts everything itself).
    const unsigned char *cluster_key;
    size_t cluster_key_len;
    int max_offences; // peer_offence expels a member at this many offences (0: never)
    // Failure detection: a linked member from which no byte has come for heartbeat_ms is taken
    // as dead (its link is closed; a static group dials it again, so it comes back once it
    // answers). Every link that has sent nothing for heartbeat_ms / 5 sends a heartbeat (a
    // SYS frame of 25 bytes); bytes of any frame count, so a long transfer is its own heartbeat
    // and no heartbeat waits behind one. Time this process's reader spends not reading (its
    // receive queue is full, or link emulation holds it back) is not silence. 0: 1000; < 0: off.
    int heartbeat_ms;
} peer_opts;

// A member as the view knows it.
typedef struct peer_member {
    int rank;
    uint64_t id;              // random, chosen when the process started
    char addr[PEER_ADDR_MAX]; // where it listens ("host:port" or a URL)
    int connected;            // this process holds a live link to it (1 for itself)
} peer_member;

typedef struct peer_view {
    uint64_t epoch; // grows with every change: a join or a leave (a static group: a link up or
                    // down)
    int self;       // this process's rank
    int n;          // members, in rank order
    peer_member m[PEER_MAX_MEMBERS];
} peer_view;

typedef struct peer_msg {
    int from;        // the sender's rank
    uint64_t member; // the sender's member id
    int channel;
    void *data; // len bytes, owned by the message
    size_t len;
    uint32_t crc; // CRC32C of data(len), checked against its frame (wire_decode_crc takes it)
    size_t cap_;  // internal: the buffer's capacity
    size_t skip_; // internal: data starts this far into the buffer (a reply past its header)
    struct peer_msg *next_;
} peer_msg;

typedef struct peer_stats {
    uint64_t msgs_sent[PEER_NCH], bytes_sent[PEER_NCH]; // payload bytes handed to a stream
    uint64_t msgs_recv[PEER_NCH], bytes_recv[PEER_NCH]; // delivered to a channel's queue
    uint64_t send_dropped[PEER_NCH]; // refused: not connected, or the queue was full
    uint64_t recv_dropped[PEER_NCH]; // queue full, emulated loss, or not for a user channel
    uint64_t bad_crc;                // frames whose payload CRC failed (dropped)
    uint64_t bad_header;             // streams closed because a header was bad (framing lost)
    uint64_t refused;                // handshakes refused: another run, settings or protocol
    uint64_t strangers;              // connections closed without a valid hello in time
    uint64_t unproven;  // signed handshakes refused: no or a bad proof (a forged member id, a
                        // certificate of another CA or expired, a replayed or altered hello, a
                        // hello under another cluster key)
    uint64_t bad_mac;   // cluster key: frames dropped because their tag did not verify
    uint64_t replayed;  // cluster key: frames dropped because the link had carried them before
    uint64_t offences;  // peer_offence calls (members that sent bad values)
    uint64_t expelled;  // members expelled (peer_expel)
    uint64_t suspected; // links silent for half of heartbeat_ms (logged; most come back)
    uint64_t timed_out; // links closed because they were silent for heartbeat_ms
    uint64_t links_up, links_down; // links that came up, and went down (any reason)
    uint64_t in_place;             // replies whose body went straight into the caller's buffer
} peer_stats;

// peer_group_create starts this process's membership: it listens on o->listen, then joins (see
// the top of this file). With a static list it returns at once (links come up as peers start);
// with a rendezvous it returns once it has a rank, or fails after o->join_ms. Strings in o are
// copied. On success the caller owns *out (peer_group_destroy). Returns ERR_OK, ERR_INVAL (bad
// address, rank or world, naming it), ERR_NET (cannot listen: the address and nng's reason),
// ERR_TIMEOUT (no group at the join address), ERR_PEER (the group refused this process: why).
int peer_group_create(peer_group **out, const peer_opts *o);

// peer_group_close stops g from any thread: every wait in peer_recv, peer_send_wait and
// peer_wait_view returns (ERR_CLOSED where it returns a code), and the links close. g must still
// be destroyed. Idempotent.
void peer_group_close(peer_group *g);

// peer_group_destroy closes every link and the listener, joins the threads and frees g and any
// message still queued. Messages handed out by peer_recv must be freed before. NULL-safe.
void peer_group_destroy(peer_group *g);

// peer_self_addr returns this process's address as others dial it ("127.0.0.1:40123" when the
// port was 0). Valid until destroy.
const char *peer_self_addr(peer_group *g);

// peer_rank returns this process's rank.
int peer_rank(peer_group *g);

// peer_get_view copies the current view into *v.
void peer_get_view(peer_group *g, peer_view *v);

// peer_view_ranks writes the ranks of the view's members (linked or not, this process included),
// ascending, into ranks (room for max; NULL with max 0) and returns how many there are (all, even
// beyond max). Cheaper than peer_get_view.
int peer_view_ranks(peer_group *g, int *ranks, int max);

// peer_wait_view waits up to timeout_ms (< 0: forever) until the view has at least n members
// with a live link (this process included) and returns that count; on timeout it returns what
// there is. In a static group it returns as soon as every member still missing has refused this
// one (or been refused).
int peer_wait_view(peer_group *g, int n, int timeout_ms);

// peer_wait_start is peer_wait_view for start-up (hello_wait): it also returns as soon as every
// member still missing was linked and left (a short run that ended before a slower peer linked
// to the rest: nobody waits the timeout out for it).
int peer_wait_start(peer_group *g, int n, int timeout_ms);

// peer_connected returns 1 if this process holds a live link to rank.
int peer_connected(peer_group *g, int rank);

// peer_send copies data(len) into channel ch's queue for rank and returns without waiting. ch is
// PEER_CH_CONTROL, PEER_CH_SPARTA or PEER_CH_RING (PEER_CH_STATE carries peer_call only; the
// same holds for peer_send_wait, peer_post and peer_recv).
// Returns ERR_OK, ERR_PEER (rank not connected, or its queue is full: dropped and counted),
// ERR_INVAL (bad rank or channel, len > FRAME_MAX_PAYLOAD) or ERR_CLOSED (being destroyed).
int peer_send(peer_group *g, int rank, int ch, const void *data, size_t len);

// peer_send_wait sends data(len) on ch to rank without copying it: it returns once the frame has
// been written to the stream (the caller may then reuse data), with ERR_TIMEOUT if it could not
// be queued or was still queued after timeout_ms (< 0: no limit), or ERR_PEER if the link went
// down first.
int peer_send_wait(peer_group *g, int rank, int ch, const void *data, size_t len, int timeout_ms);

// A send in flight (peer_post).
typedef struct peer_op peer_op;

// peer_post queues data(len) on ch for rank without copying it and returns at once: the caller
// keeps data unchanged until peer_op_wait or peer_op_cancel has released *op. Returns ERR_OK
// (*op set), ERR_PEER (not connected, or the channel's queue is full: try again later),
// ERR_INVAL or ERR_CLOSED (*op NULL).
int peer_post(peer_group *g, int rank, int ch, const void *data, size_t len, peer_op **op);

// peer_post_crc is peer_post for data whose CRC32C the caller already has, crc =
// wire_crc32c(data, len) (wire_encode_crc gives it): the frame carries it as is instead of the
// writer reading data again. A crc that does not match data makes the receiver drop the frame
// as corrupt (counted in bad_crc), as a payload damaged on the way would be.
int peer_post_crc(peer_group *g, int rank, int ch, const void *data, size_t len, uint32_t crc,
                  peer_op **op);

// peer_op_wait waits up to timeout_ms (< 0: no limit) until op's frame has been written, then
// frees op and returns ERR_OK, or ERR_PEER if the link went down before it was written. On
// ERR_TIMEOUT op stays valid (wait again, or cancel).
int peer_op_wait(peer_group *g, peer_op *op, int timeout_ms);

// peer_op_cancel takes op out of its queue if it is still there (counted as dropped), else waits
// for the write in progress to end, and frees op. NULL-safe.
void peer_op_cancel(peer_group *g, peer_op *op);

// peer_recv waits up to timeout_ms (0: poll; < 0: forever) for the next message on channel ch
// from any member. On ERR_OK the caller owns *out (peer_msg_free). Returns ERR_OK, ERR_TIMEOUT
// (also after peer_wake) or ERR_CLOSED.
int peer_recv(peer_group *g, int ch, int timeout_ms, peer_msg **out);

// peer_msg_free returns a received message's buffer to the group for reuse. NULL-safe.
void peer_msg_free(peer_group *g, peer_msg *m);

// peer_wake makes the current or next peer_recv on ch return ERR_TIMEOUT at once.
void peer_wake(peer_group *g, int ch);

// ---- requests and replies (PEER_CH_STATE) ---------------------------------------------------
// peer_serve_fn answers a request req(len) from rank from: it writes the reply into rep->buf, a
// buffer of the layer of PEER_REPLY_MAX bytes (reused from call to call: no allocation), and
// returns its length (0: an empty reply). A server that knows the CRC32C of the reply's bytes
// from rep->crc_from on (a copy of state it sealed) may say so (crc_from > 0 and crc): the layer
// then frames the reply without reading those bytes again, and the caller's check of the frame
// becomes a check against the server's sealed state. It runs on a link's reader thread, one
// request at a time per link (the writer sends the previous reply meanwhile).
#define PEER_REPLY_MAX (FRAME_MAX_PAYLOAD - 5)
typedef struct peer_reply {
    void *buf;       // PEER_REPLY_MAX bytes: the reply goes here
    size_t crc_from; // 0, or the offset from which crc holds the reply's CRC32C
    uint32_t crc;    // the CRC32C of buf[crc_from, the returned length)
} peer_reply;
typedef size_t (*peer_serve_fn)(void *arg, int from, const void *req, size_t len, peer_reply *rep);

// peer_set_server makes fn(arg, ...) answer the requests of every member (NULL: none; a request
// then fails at once on the caller's side). Setting NULL waits for a call in progress to finish.
void peer_set_server(peer_group *g, peer_serve_fn fn, void *arg);

// peer_call sends req(len) to rank and waits up to timeout_ms (< 0: no limit) for its reply,
// which it returns in *reply (peer_msg_free), or *reply = NULL when rank answered that it serves
// no requests (yet: its server is not set). Returns ERR_OK, ERR_TIMEOUT, ERR_PEER (not connected,
// or the link went down), ERR_FORMAT (the reply came damaged: its frame fails its CRC check, at
// once rather than at the timeout), ERR_CLOSED or ERR_INVAL.
int peer_call(peer_group *g, int rank, const void *req, size_t len, peer_msg **reply,
              int timeout_ms);

// peer_call_into is peer_call for a reply of a head of at most head bytes and then a body that
// the link's reader puts straight into dst (cap bytes) as it comes off the stream, without a
// copy: *reply holds the head, *got the body's length and *crc its CRC32C, computed over dst
// once the body was in place (the frame's check covers it, so a body that arrives damaged fails
// the call with ERR_FORMAT). A body larger than cap fails with ERR_FORMAT. On links with frame
// tags (a cluster key) the body comes through a buffer and is copied (same results). However the
// call ends, dst is no longer written once it returns (a body being read meanwhile is waited
// for: the link's heartbeat timeout bounds that). dst may be written even when the call fails.
int peer_call_into(peer_group *g, int rank, const void *req, size_t len, size_t head, void *dst,
                   size_t cap, peer_msg **reply, size_t *got, uint32_t *crc, int timeout_ms);

// peer_diagnose writes into buf (n bytes) why rank has no live link: the handshake was refused
// (and why), its address does not resolve, the connection is refused, nothing answers, or (a rank
// that dials us, whose address it probes, which takes up to a second) it is up but has not
// dialled in; or it was linked and left. "connected" when it has one.
// Returns the kind: PEER_DIAG_CONNECTED, PEER_DIAG_MISMATCH (refused, by either side, for another
// run id or other shared settings: the refusal carries its kind), PEER_DIAG_REFUSED (another
// reason: protocol, rank, a full group), PEER_DIAG_DOWN (not reached) or PEER_DIAG_LEFT (its
// link was up and went down, and it has not come back).
typedef enum {
    PEER_DIAG_CONNECTED = 0,
    PEER_DIAG_MISMATCH = 1,
    PEER_DIAG_REFUSED = 2,
    PEER_DIAG_DOWN = 3,
    PEER_DIAG_LEFT = 4
} peer_diag;
int peer_diagnose(peer_group *g, int rank, char *buf, size_t n);

// peer_get_stats copies the counters.
void peer_get_stats(peer_group *g, peer_stats *st);

// ---- misbehaving members --------------------------------------------------------------------
// peer_offence records that member rank sent what no honest peer sends (values that are not
// finite, a module decides): it counts it (peer_stats.offences), logs a warning naming the rank,
// its address, the count and why, and at peer_opts.max_offences offences (> 0) expels it
// (peer_expel). Returns 1 if rank is expelled (now or before), else 0 (also for a rank out of
// range or this process's own, which are ignored). Any thread.
int peer_offence(peer_group *g, int rank, const char *why);

// peer_expel drops member rank for the rest of this group's life: its link is closed, it is not
// dialled again, and its hellos are refused (in a static group by rank, so a restarted process
// stays out; in a rendezvous by member id), so it never gets a link back; peer_diagnose says
// "expelled: why". Counted in peer_stats.expelled and logged (a warning naming rank and address).
// Returns ERR_OK (also when already expelled) or ERR_INVAL (rank out of range or this process's
// own). Any thread.
int peer_expel(peer_group *g, int rank, const char *why);

// peer_expelled returns 1 if rank was expelled (peer_expel), else 0. Any thread.
int peer_expelled(peer_group *g, int rank);

#endif
