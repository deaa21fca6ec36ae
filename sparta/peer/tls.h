// tls.h: the TLS settings of a peer group (nng's tls+tcp:// over mbedTLS, TLS 1.2): mutual
// authentication, both sides requiring a certificate signed by the cluster CA (spartan keys).
// nng 1.5.2 cannot show the peer's certificate, so this only proves "a member of the cluster";
// which member is the handshake's business.
#ifndef PEER_TLS_H
#define PEER_TLS_H

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>

// The server side (the listener) and the client side (dialers).
typedef struct peer_tls {
    nng_tls_config *server, *client;
} peer_tls;

// peer_tls_load reads the CA certificate ca, this peer's certificate cert and its private key
// key (PEM files, checked first by pki_check_peer: a private key, its certificate's, signed by
// the CA and valid now) and makes both configurations, requiring the other side's certificate.
// Returns ERR_OK, or pki_check_peer's error naming the setting and the file, or ERR_FORMAT when
// nng's TLS rejects a file.
int peer_tls_load(peer_tls *t, const char *ca, const char *cert, const char *key);

// peer_tls_free releases both configurations (nng keeps its own references while a listener or
// dialer uses one). NULL-safe fields.
void peer_tls_free(peer_tls *t);

#endif
