// ident.h: a member's proof of who it is, in the peer handshake (libcrypto). TLS proves only "a
// certificate of the cluster CA" (nng 1.5.2 cannot show the other side's certificate), so the
// handshake proves the rest:
//   - a member id is bound to a key: id = the first 8 bytes of SHA-256("spartan-member-1" |
//     salt | the public key's DER), with a fresh random salt per process, so a restarted peer
//     gets a new id and nobody can claim an id without the key behind it;
//   - each side sends a random nonce first; the other side's hello then carries its certificate
//     (DER), the salt and an ECDSA signature over ("spartan-hello-1" | that nonce | the hello's
//     bytes), so a hello cannot be replayed to another peer or on another connection, and its run
//     id, member id and rank are the key holder's.
// The certificate must be signed by the cluster CA and valid now. A proof is
//   salt[IDENT_SALT] | u16 cert length | cert DER | u16 signature length | signature DER.
// Loaded once per group; every function is safe from any thread on a loaded ident.
#ifndef IDENT_H
#define IDENT_H

#include <stddef.h>
#include <stdint.h>

#define IDENT_NONCE     32
#define IDENT_SALT      16
#define IDENT_PROOF_MAX 8192 // a proof larger than this is refused
#define IDENT_NAME_MAX  128

typedef struct ident ident;

// ident_load reads the CA certificate ca, this member's certificate cert and its key (PEM files
// that pki_check_peer has passed) and draws this process's salt. Returns ERR_OK with *out set
// (ident_free), ERR_IO naming an unreadable file, or ERR_FORMAT naming one that does not parse.
int ident_load(ident **out, const char *ca, const char *cert, const char *key);

// ident_free releases id. NULL-safe.
void ident_free(ident *id);

// ident_member returns this process's member id (bound to its key and salt, see the top).
uint64_t ident_member(const ident *id);

// ident_name returns the CN of this member's certificate.
const char *ident_name(const ident *id);

// ident_nonce fills nonce with IDENT_NONCE random bytes (RAND_bytes). Returns ERR_OK or ERR_NET
// when the system has no randomness to give.
int ident_nonce(unsigned char nonce[IDENT_NONCE]);

// ident_prove writes the proof of msg(n) (this member's hello) for the peer that sent nonce into
// out (cap bytes) and returns its length, or 0 if it does not fit or signing fails.
size_t ident_prove(const ident *id, const void *msg, size_t n, const unsigned char *nonce,
                   unsigned char *out, size_t cap);

// ident_check verifies another member's proof (proof, plen bytes) of its hello msg(n) claiming
// member id `member`, answering the nonce we sent: the certificate parses, is signed by our CA
// and valid now, member is the id of its key and salt, and the signature verifies. On success it
// returns 0 and writes the certificate's CN into name (ncap bytes). Otherwise -1 with the reason
// in why (wcap bytes): "no proof", "a certificate not signed by the cluster CA (...)", "member id
// ... is not this certificate's: a forged member id", "the signature does not verify: a replayed
// or altered hello", ...
int ident_check(const ident *id, uint64_t member, const void *msg, size_t n,
                const unsigned char *proof, size_t plen, const unsigned char *nonce, char *name,
                size_t ncap, char *why, size_t wcap);

#endif
