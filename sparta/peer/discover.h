// discover.h: zero-configuration discovery on the LAN (net.discover = lan). Every peer announces
// itself by UDP broadcast (or to net.discover_addr) every ~200 ms and listens for the others'
// announcements; once net.world peers of the same cluster and run are known, their ranks follow
// from the sorted node IDs, and rank 0's address is the rendezvous (peer_opts.join).
//
// An announcement is authenticated with HMAC-SHA256 under the cluster key (a file every machine
// of the cluster holds). Received ones are ignored, each reason counted: not an announcement
// (bad magic, version or length), another cluster (cluster id = the first 8 bytes of an HMAC of
// a fixed text under the key: checked before the tag, so other clusters cost nothing), a wrong
// tag (forged), a timestamp outside the window (stale), a (node, nonce) seen before or a
// timestamp older than the last one accepted from that instance (replayed), another run id. A
// node ID heard from two process instances is a duplicated ID (a copied state folder): see
// discover_wait.
//
// Wire layout (little-endian; never trust a length from the wire: the datagram's size must be
// exactly DISCOVER_FIXED_BYTES + addr_len):
//   off  size
//   0    4   magic DISCOVER_MAGIC ("SPDS")
//   4    2   version DISCOVER_VERSION
//   6    2   addr_len (1 .. DISCOVER_ADDR_MAX - 1)
//   8    8   cluster id
//   16   8   run id (train_sync_run.run_id: the model config and seed)
//   24   16  node id (random, made on the machine's first start: discover_node_id)
//   40   8   instance nonce (random per process)
//   48   8   timestamp (ms since the epoch, the sender's time of day)
//   56   8   nonce (random per datagram)
//   64   L   the sender's listen address "host:port" (printable ASCII, no NUL)
//   64+L 32  HMAC-SHA256 under the cluster key of bytes [0, 64+L)
//
// Threads: one discovery thread per discover object sends and receives; every function may be
// called from any thread (discover_destroy from one only).
#ifndef DISCOVER_H
#define DISCOVER_H

#include <stddef.h>
#include <stdint.h>

#define DISCOVER_PORT        52415
#define DISCOVER_MAGIC       0x53445053u // "SPDS" read little-endian
#define DISCOVER_VERSION     1
#define DISCOVER_ADDR_MAX    128 // a listen address, NUL included
#define DISCOVER_ID_BYTES    16
#define DISCOVER_TAG_BYTES   32
#define DISCOVER_FIXED_BYTES (64 + DISCOVER_TAG_BYTES)
#define DISCOVER_MAX_BYTES   (DISCOVER_FIXED_BYTES + DISCOVER_ADDR_MAX - 1)
#define DISCOVER_KEY_MIN     16 // bytes of a cluster key file
#define DISCOVER_KEY_MAX     1024

// What became of a received datagram; discover_stats counts each.
typedef enum {
    DISCOVER_ACCEPTED,      // a member of this cluster and run
    DISCOVER_SELF,          // this process's own announcement, come back
    DISCOVER_BAD_FORMAT,    // not an announcement: magic, version, length or address
    DISCOVER_OTHER_CLUSTER, // another cluster id (another key)
    DISCOVER_FORGED,        // the tag is wrong
    DISCOVER_STALE,         // the timestamp is outside the window
    DISCOVER_REPLAYED,      // a (node, nonce) seen before, or older than that instance's last
    DISCOVER_OTHER_RUN,     // this cluster, another run id (another config or seed)
    DISCOVER_DUPLICATE_ID,  // a node ID heard from two instances at once
    DISCOVER_N_VERDICTS
} discover_verdict;

// discover_verdict_str names a verdict ("forged", "replayed", ...); static storage.
const char *discover_verdict_str(discover_verdict v);

// One announcement, decoded.
typedef struct discover_announce {
    uint64_t cluster, run_id;
    uint8_t node[DISCOVER_ID_BYTES];
    uint64_t instance, time_ms, nonce;
    char addr[DISCOVER_ADDR_MAX];
} discover_announce;

// discover_cluster_id returns the cluster id of a key (key_len bytes): 8 bytes of
// HMAC-SHA256(key, "spartan discover cluster id"), never the key itself.
uint64_t discover_cluster_id(const uint8_t *key, size_t key_len);

// discover_pack encodes a and its tag under key into buf (n bytes). Returns the datagram's size,
// or 0 when a->addr is empty, too long or not printable, or n is too small.
size_t discover_pack(const discover_announce *a, const uint8_t *key, size_t key_len, uint8_t *buf,
                     size_t n);

// discover_unpack decodes the len bytes at buf into *a and checks its tag under key (in constant
// time). Returns DISCOVER_ACCEPTED, DISCOVER_BAD_FORMAT, DISCOVER_OTHER_CLUSTER (a->cluster is
// not the key's; the tag is not checked) or DISCOVER_FORGED. *a is filled only as far as decoded.
discover_verdict discover_unpack(const uint8_t *buf, size_t len, const uint8_t *key, size_t key_len,
                                 discover_announce *a);

// The counters of a discover object: datagrams received, and how many of them got each verdict.
typedef struct discover_stats {
    uint64_t received;
    uint64_t n[DISCOVER_N_VERDICTS];
} discover_stats;

typedef struct discover_opts {
    const uint8_t *key; // the cluster key (copied)
    size_t key_len;     // DISCOVER_KEY_MIN .. DISCOVER_KEY_MAX
    uint8_t node[DISCOVER_ID_BYTES];
    uint64_t run_id;
    uint64_t instance; // this process's instance nonce (0: a random one)
    // This peer's listen address "host:port". With a host of "" or 0.0.0.0 each announcement
    // carries the local address the kernel sends it from: the interface's own address for an
    // interface's broadcast address, else that of a UDP socket connected to the destination.
    const char *advertise;
    int port;         // UDP port bound (0.0.0.0) and sent to (0: DISCOVER_PORT)
    const char *dest; // destination host (broadcast, multicast or unicast IPv4); NULL or "":
                      // 255.255.255.255 and every IPv4 interface's broadcast address
    int period_ms;    // between announcements, +-25 % jitter (0: 200)
    int window_ms;    // timestamps accepted within +- this of the time of day (0: 30000)
    const char *tag;  // log tag (NULL: "discover")
} discover_opts;

// A member found: its node ID (DISCOVER_ID_BYTES and as hex) and its listen address.
typedef struct discover_member {
    uint8_t node[DISCOVER_ID_BYTES];
    char node_hex[2 * DISCOVER_ID_BYTES + 1];
    char addr[DISCOVER_ADDR_MAX];
    int self; // 1 for this process
} discover_member;

typedef struct discover discover;

// discover_create binds the UDP port (SO_REUSEADDR, SO_REUSEPORT, SO_BROADCAST; joins the group
// when dest is multicast) and starts the discovery thread, which announces at once and then every
// period. Strings and the key in o are copied. On success the caller owns *out (discover_destroy).
// Returns ERR_OK, ERR_INVAL (a bad option: key length, address), ERR_NET (socket, bind).
int discover_create(discover **out, const discover_opts *o);

// discover_wait waits up to timeout_ms until world members (this process included) of the
// cluster and run are known, then a settling time of two periods (so that a member beyond world
// is noticed), and writes them sorted by node ID into out (world entries): out[i] is rank i, and
// out[0].addr the rendezvous. Logs progress ("2/3 peers found: ...") at INFO when it changes.
// Returns ERR_OK; ERR_TIMEOUT naming who was found; ERR_PEER when more than world members
// announce the run, or when a node ID is duplicated: this process's own (another instance
// announces it: the state folder was copied) or another member's. A duplicated ID is never
// resolved by a rule: both machines (and every other) refuse to go on, naming the other's
// address, so that no data stream is trained twice; it keeps announcing one more second before
// it returns, so the other side sees the clash as well. Any thread, one wait at a time.
int discover_wait(discover *d, int world, int timeout_ms, discover_member *out);

// discover_get_stats copies the counters into *st. Any thread.
void discover_get_stats(discover *d, discover_stats *st);

// discover_stats_text writes the non-zero counters as "received=12 accepted=8 forged=1 ..." into
// buf (n bytes).
void discover_stats_text(const discover_stats *st, char *buf, size_t n);

// discover_destroy stops and joins the thread, closes the socket and frees d. NULL-safe.
void discover_destroy(discover *d);

// discover_node_id_path writes where this machine's node ID lives into buf (n bytes):
// $SPARTAN_STATE_DIR/node_id if that is set, else $XDG_STATE_HOME/spartan/node_id, else
// ~/.local/state/spartan/node_id (macOS: ~/Library/Application Support/spartan/node_id), never
// inside the project folder, so that copying a project never copies an ID. Returns ERR_OK, or
// ERR_INVAL when none of those variables is set or the path does not fit.
int discover_node_id_path(char *buf, size_t n);

// discover_node_id reads the node ID in the file at path (32 hex digits), or makes a random one
// when the file does not exist: its folder is created (0700), the ID written to a temporary file
// (0600), fsynced, and linked to path, so that two processes starting at once agree on one ID.
// Fills id and hex (33 bytes, may be NULL). Returns ERR_OK, ERR_IO, or ERR_FORMAT for a file that
// holds no ID (it is never overwritten).
int discover_node_id(const char *path, uint8_t id[DISCOVER_ID_BYTES], char *hex);

// discover_load_key reads the cluster key file at path into key (DISCOVER_KEY_MAX bytes) and
// its size into *len. Returns ERR_OK; ERR_IO; ERR_INVAL when the file is readable or writable by
// its group or others (chmod 600), is not a regular file, or holds fewer than DISCOVER_KEY_MIN or
// more than DISCOVER_KEY_MAX bytes.
int discover_load_key(const char *path, uint8_t *key, size_t *len);

// discover_free_port finds a TCP port that is free on host (NULL or "": every address) now, for a
// listener that must be known before it starts (it may be taken in between: rare). Returns
// ERR_OK with *port, or ERR_NET.
int discover_free_port(const char *host, int *port);

#endif
