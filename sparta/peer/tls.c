// tls.c: nng TLS configurations from the cluster's PEM files.
#include "sparta/peer/tls.h"

#include <stdlib.h>
#include <string.h>

#include "train/base/err.h"
#include "train/base/pki.h"
#include "train/base/sys.h"

enum { PEM_MAX = 1 << 20 }; // a certificate chain or key larger than this is not ours

static int make(nng_tls_config **out, nng_tls_mode mode, const char *ca_pem, const char *cert_pem,
                const char *key_pem, const char *ca, const char *cert) {
    nng_tls_config *c = NULL;
    int rv = nng_tls_config_alloc(&c, mode);
    if (rv) return err_set(ERR_NET, "peer: TLS: %s", nng_strerror(rv));
    rv = nng_tls_config_ca_chain(c, ca_pem, NULL);
    if (rv) {
        nng_tls_config_free(c);
        return err_set(ERR_FORMAT, "net.tls_ca %s: not a PEM CA certificate (%s)", ca,
                       nng_strerror(rv));
    }
    rv = nng_tls_config_own_cert(c, cert_pem, key_pem, NULL);
    if (rv) {
        nng_tls_config_free(c);
        return err_set(ERR_FORMAT,
                       "net.tls_cert %s and net.tls_key: not a PEM certificate and its key (%s)",
                       cert, nng_strerror(rv));
    }
    rv = nng_tls_config_auth_mode(c, NNG_TLS_AUTH_MODE_REQUIRED);
    if (rv) {
        nng_tls_config_free(c);
        return err_set(ERR_NET, "peer: TLS: %s", nng_strerror(rv));
    }
    *out = c;
    return ERR_OK;
}

int peer_tls_load(peer_tls *t, const char *ca, const char *cert, const char *key) {
    memset(t, 0, sizeof *t);
    char *pem[3] = {NULL, NULL, NULL};
    const char *path[3] = {ca, cert, key}, *what[3] = {"net.tls_ca", "net.tls_cert", "net.tls_key"};
    int rc = pki_check_peer(ca, cert, key);
    size_t len = 0;
    for (int i = 0; i < 3 && !rc; i++) {
        rc = sys_read_file(path[i], PEM_MAX, what[i], &pem[i], &len);
        if (!rc && !strstr(pem[i], "-----BEGIN "))
            rc = err_set(ERR_FORMAT, "%s %s: not a PEM file", what[i], path[i]);
    }
    if (!rc) rc = make(&t->server, NNG_TLS_MODE_SERVER, pem[0], pem[1], pem[2], ca, cert);
    if (!rc) rc = make(&t->client, NNG_TLS_MODE_CLIENT, pem[0], pem[1], pem[2], ca, cert);
    for (int i = 0; i < 3; i++) {
        if (pem[i]) memset(pem[i], 0, strlen(pem[i])); // the key's text does not linger
        free(pem[i]);
    }
    if (rc) peer_tls_free(t);
    return rc;
}

void peer_tls_free(peer_tls *t) {
    if (t->server) nng_tls_config_free(t->server);
    if (t->client) nng_tls_config_free(t->client);
    t->server = t->client = NULL;
}
