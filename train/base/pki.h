// pki.h: the cluster's certificates (libcrypto). A cluster folder holds one CA (ca.crt and
// ca.key, ECDSA P-256: the mbedTLS 2.28 under Debian's nng speaks TLS 1.2 and has no Ed25519) and
// a certificate and key per peer (NAME.crt, NAME.key) signed by it. Private keys are written
// 0600, and a key file that others can read is refused (pki_check_key). Any thread; no state.
#ifndef PKI_H
#define PKI_H

#include <stddef.h>

struct x509_st;     // OpenSSL's X509
struct evp_pkey_st; // and EVP_PKEY

#define PKI_NAME_MAX 64 // a peer name: 1-64 of letters, digits, '.', '-' and '_'

// pki_ca_init makes the folder dir (0700) if needed and a new CA in it: ca.key (0600) and ca.crt
// (valid for days days from now, subject "CN=<cn>"). An existing ca.key or ca.crt is never
// replaced: ERR_INVAL naming it. Returns ERR_OK, ERR_INVAL (days not in 1-36500, cn empty or
// over 64 bytes) or ERR_IO (naming the file and the reason).
int pki_ca_init(const char *dir, const char *cn, int days);

// pki_issue makes a key and a certificate for peer name (its CN and DNS name) signed by dir's
// CA, valid for days days, usable by TLS clients and servers: dir/NAME.key (0600) and
// dir/NAME.crt. The CA key must pass pki_check_key. An existing certificate of that name is not
// replaced (ERR_INVAL). Returns ERR_OK, ERR_INVAL (a bad name or days, naming it) or ERR_IO.
int pki_issue(const char *dir, const char *name, int days);

// pki_check_key fails with ERR_INVAL naming path and its mode when group or others can read or
// write the private key file path (chmod 600 fixes it), ERR_IO when it cannot be read; else ERR_OK.
int pki_check_key(const char *path);

// pki_check_pair checks a TLS certificate and its private key before use: the key file passes
// pki_check_key, both files are PEM, the key belongs to the certificate cert (its first one, when
// the file holds a chain) and cert is valid now. Messages name the files by cert_what and
// key_what, the setting or flag that gave them ("--tls-cert", "net.tls_key"). Returns ERR_OK,
// ERR_IO (a file cannot be read), ERR_INVAL (a key others can read: "chmod 600") or ERR_FORMAT
// (not PEM, not its key, expired or not yet valid).
int pki_check_pair(const char *cert, const char *key, const char *cert_what, const char *key_what);

// pki_check_peer checks a peer's TLS files before use: cert and key pass pki_check_pair, and
// cert is signed by the CA certificate ca. Messages name the files by the config keys
// (net.tls_ca, net.tls_cert, net.tls_key). Returns what pki_check_pair does, and ERR_IO or
// ERR_FORMAT for a CA file that cannot be read, is not PEM or did not sign cert.
int pki_check_peer(const char *ca, const char *cert, const char *key);

// One certificate of a cluster folder, as pki_list reports it.
typedef struct pki_cert_info {
    char file[256];    // the file name in the folder
    char subject[128]; // its CN
    char not_after[32];
    double days_left;  // negative once expired
    int is_ca;         // the CA's own certificate
    int verified;      // signed by the folder's CA (and within its validity)
    char problem[160]; // why not verified, or ""
} pki_cert_info;

typedef void (*pki_list_fn)(void *ctx, const pki_cert_info *c);

// pki_list calls fn for every *.crt of dir, the CA's first, then by file name. Returns the number
// of certificates (>= 0) or a negative error code (no ca.crt in dir, or an unreadable folder;
// message set).
int pki_list(const char *dir, pki_list_fn fn, void *ctx);

// pki_read_pem reads one PEM certificate into *cert (cert not NULL) or one private key into *key
// (key not NULL) from path, what naming it in messages ("net.tls_cert", "the CA key"). Returns
// ERR_OK (the caller frees with X509_free / EVP_PKEY_free), ERR_IO naming the file and the reason,
// or ERR_FORMAT (not such a PEM file).
int pki_read_pem(const char *path, const char *what, struct x509_st **cert,
                 struct evp_pkey_st **key);

// pki_name_ok returns 1 if name is a valid peer name (PKI_NAME_MAX), else 0.
int pki_name_ok(const char *name);

#endif
