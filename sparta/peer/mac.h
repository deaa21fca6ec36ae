// mac.h: HMAC-SHA256 for peer links without TLS (peer_opts.cluster_key): a LAN-only choice that
// authenticates every frame but encrypts nothing. The handshake's hello carries
// mac_hello_proof(cluster key, the other side's nonce, hello), and from the two nonces each
// direction of a link gets its own key (mac_link_key: bound to the run, the sender's member id
// and both nonces, so a frame recorded on another link, in another run or the other direction
// never verifies). Every frame after the hello is followed by a MAC_TAG-byte tag over its header
// (channel, length, sequence number) and payload. Tags are compared in constant time. A mac_ctx
// is used by one thread at a time (a link's writer, or its reader).
#ifndef MAC_H
#define MAC_H

#include <stddef.h>
#include <stdint.h>

#define MAC_TAG 32

typedef struct mac_ctx mac_ctx;

// mac_new makes an HMAC-SHA256 context keyed with key(n). Returns ERR_OK with *out set
// (mac_free), or ERR_NOMEM when libcrypto cannot make one.
int mac_new(mac_ctx **out, const unsigned char *key, size_t n);

// mac_free releases c. NULL-safe.
void mac_free(mac_ctx *c);

// mac_frame writes the tag of a frame, its header's first hn bytes hdr and its payload(n), into
// tag.
void mac_frame(mac_ctx *c, const void *hdr, size_t hn, const void *payload, size_t n,
               unsigned char tag[MAC_TAG]);

// mac_hello_proof writes the proof of hello msg(n) answering nonce (nn bytes) under the cluster
// key key(kn) into out.
void mac_hello_proof(const unsigned char *key, size_t kn, const unsigned char *nonce, size_t nn,
                     const void *msg, size_t n, unsigned char out[MAC_TAG]);

// mac_link_key writes the key of one direction of a link into out: the sender's nonce sn and
// the receiver's rn (nn bytes each), the run id and the sender's member id, under the cluster key.
void mac_link_key(const unsigned char *key, size_t kn, const unsigned char *sn,
                  const unsigned char *rn, size_t nn, uint64_t run_id, uint64_t sender,
                  unsigned char out[MAC_TAG]);

// mac_equal returns 1 if the tags a and b are equal, comparing every byte (constant time).
int mac_equal(const unsigned char *a, const unsigned char *b);

#endif
