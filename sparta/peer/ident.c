// ident.c: the signed handshake's keys and checks (see ident.h).
#include "sparta/peer/ident.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/le.h"
#include "train/base/err.h"
#include "train/base/pki.h"
#include "train/base/sys.h"

static const char MEMBER_TAG[] = "spartan-member-1", HELLO_TAG[] = "spartan-hello-1";

struct ident {
    EVP_PKEY *key;
    X509_STORE *store; // the cluster CA
    unsigned char *cert_der;
    int cert_len;
    unsigned char salt[IDENT_SALT];
    uint64_t member;
    char name[IDENT_NAME_MAX];
};

// member_of: the id of public key key_der(n) with salt (see ident.h).
static uint64_t member_of(const unsigned char *salt, const unsigned char *key_der, size_t n) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdn = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(c, MEMBER_TAG, sizeof MEMBER_TAG - 1) &&
             EVP_DigestUpdate(c, salt, IDENT_SALT) && EVP_DigestUpdate(c, key_der, n) &&
             EVP_DigestFinal_ex(c, md, &mdn);
    EVP_MD_CTX_free(c);
    ASSERT(ok && mdn >= 8);
    return le_get64(md);
}

// key_member: the id of cert's public key with salt; 0 with no key.
static uint64_t key_member(X509 *cert, const unsigned char *salt) {
    unsigned char *der = NULL;
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    int n = pub ? i2d_PUBKEY(pub, &der) : -1;
    if (n <= 0) return 0;
    uint64_t m = member_of(salt, der, (size_t)n);
    OPENSSL_free(der);
    return m;
}

static void cn_of(X509 *cert, char *out, size_t n) {
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, out, (int)n) < 0)
        snprintf(out, n, "(no CN)");
}

// signed_data feeds the signed bytes to a digest-sign or digest-verify context.
static int feed(EVP_MD_CTX *c, int verify, const unsigned char *nonce, const void *msg, size_t n) {
    int (*up)(EVP_MD_CTX *, const void *, size_t) =
        verify ? EVP_DigestVerifyUpdate : EVP_DigestSignUpdate;
    return up(c, HELLO_TAG, sizeof HELLO_TAG - 1) == 1 && up(c, nonce, IDENT_NONCE) == 1 &&
           up(c, msg, n) == 1;
}

int ident_nonce(unsigned char nonce[IDENT_NONCE]) {
    if (RAND_bytes(nonce, IDENT_NONCE) != 1)
        return err_set(ERR_NET, "peer: no random bytes for the handshake");
    return ERR_OK;
}

int ident_load(ident **out, const char *ca, const char *cert, const char *key) {
    *out = NULL;
    X509 *c = NULL, *x = NULL;
    EVP_PKEY *k = NULL;
    int rc = pki_read_pem(ca, "net.tls_ca", &c, NULL);
    if (!rc) rc = pki_read_pem(cert, "net.tls_cert", &x, NULL);
    if (!rc) rc = pki_read_pem(key, "net.tls_key", NULL, &k);
    ident *id = xcalloc(1, sizeof *id);
    if (!rc) {
        id->key = k;
        k = NULL;
        id->store = X509_STORE_new();
        id->cert_len = i2d_X509(x, &id->cert_der);
        if (!id->store || X509_STORE_add_cert(id->store, c) != 1 || id->cert_len <= 0)
            rc = err_set(ERR_FORMAT, "net.tls_ca %s / net.tls_cert %s: cannot be used", ca, cert);
    }
    if (!rc && RAND_bytes(id->salt, IDENT_SALT) != 1)
        rc = err_set(ERR_NET, "peer: no random bytes for the member id");
    if (!rc) {
        id->member = key_member(x, id->salt);
        cn_of(x, id->name, sizeof id->name);
    }
    ERR_clear_error();
    X509_free(c);
    X509_free(x);
    EVP_PKEY_free(k);
    if (rc) {
        ident_free(id);
        return rc;
    }
    *out = id;
    return ERR_OK;
}

void ident_free(ident *id) {
    if (!id) return;
    EVP_PKEY_free(id->key);
    X509_STORE_free(id->store);
    OPENSSL_free(id->cert_der);
    free(id);
}

uint64_t ident_member(const ident *id) { return id->member; }

const char *ident_name(const ident *id) { return id->name; }

size_t ident_prove(const ident *id, const void *msg, size_t n, const unsigned char *nonce,
                   unsigned char *out, size_t cap) {
    size_t sig_max = (size_t)EVP_PKEY_get_size(id->key);
    size_t head = IDENT_SALT + 2 + (size_t)id->cert_len + 2;
    if (cap < head + sig_max || head + sig_max > IDENT_PROOF_MAX) return 0;
    unsigned char *q = out;
    memcpy(q, id->salt, IDENT_SALT), q += IDENT_SALT;
    le_put16(q, (uint16_t)id->cert_len), q += 2;
    memcpy(q, id->cert_der, (size_t)id->cert_len), q += id->cert_len;
    unsigned char *sig_len = q;
    q += 2;
    size_t sn = sig_max;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_DigestSignInit(c, NULL, EVP_sha256(), NULL, id->key) == 1 &&
             feed(c, 0, nonce, msg, n) && EVP_DigestSignFinal(c, q, &sn) == 1;
    EVP_MD_CTX_free(c);
    ERR_clear_error();
    if (!ok) return 0;
    le_put16(sig_len, (uint16_t)sn);
    return head + sn;
}

// take reads a u16-length field of at most cap bytes at *p (end: the proof's end).
static const unsigned char *take(const unsigned char **p, const unsigned char *end, size_t *n) {
    if (end - *p < 2) return NULL;
    *n = le_get16(*p);
    *p += 2;
    if ((size_t)(end - *p) < *n) return NULL;
    const unsigned char *f = *p;
    *p += *n;
    return f;
}

int ident_check(const ident *id, uint64_t member, const void *msg, size_t n,
                const unsigned char *proof, size_t plen, const unsigned char *nonce, char *name,
                size_t ncap, char *why, size_t wcap) {
    const unsigned char *p = proof, *end = proof + plen, *salt = proof;
    size_t cn = 0, sn = 0;
    const unsigned char *cder = NULL, *sig = NULL;
    if (plen == 0) {
        snprintf(why, wcap, "a hello without a proof (this peer signs its handshakes)");
        return -1;
    }
    if (plen > IDENT_PROOF_MAX || plen < IDENT_SALT) {
        snprintf(why, wcap, "a malformed handshake proof (%zu bytes)", plen);
        return -1;
    }
    p += IDENT_SALT;
    if (!(cder = take(&p, end, &cn)) || !(sig = take(&p, end, &sn)) || p != end) {
        snprintf(why, wcap, "a malformed handshake proof (%zu bytes)", plen);
        return -1;
    }
    const unsigned char *cp = cder;
    X509 *cert = d2i_X509(NULL, &cp, (long)cn);
    int rc = -1;
    if (!cert || cp != cder + cn) {
        snprintf(why, wcap, "the handshake's certificate does not parse");
        goto done;
    }
    cn_of(cert, name, ncap);
    X509_STORE_CTX *vc = X509_STORE_CTX_new();
    int ok = vc && X509_STORE_CTX_init(vc, id->store, cert, NULL) == 1 && X509_verify_cert(vc) == 1;
    if (!ok) {
        int e = vc ? X509_STORE_CTX_get_error(vc) : X509_V_ERR_OUT_OF_MEM;
        snprintf(why, wcap, "certificate '%s' refused: %s", name, X509_verify_cert_error_string(e));
        X509_STORE_CTX_free(vc);
        goto done;
    }
    X509_STORE_CTX_free(vc);
    if (key_member(cert, salt) != member) {
        snprintf(why, wcap,
                 "member id %016llx is not the id of certificate '%s': a forged member id",
                 (unsigned long long)member, name);
        goto done;
    }
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    ok = c && EVP_DigestVerifyInit(c, NULL, EVP_sha256(), NULL, X509_get0_pubkey(cert)) == 1 &&
         feed(c, 1, nonce, msg, n) && EVP_DigestVerifyFinal(c, sig, sn) == 1;
    EVP_MD_CTX_free(c);
    if (!ok) {
        snprintf(why, wcap,
                 "the hello of '%s' does not verify: a replayed, altered or forged handshake",
                 name);
        goto done;
    }
    rc = 0;
done:
    ERR_clear_error();
    X509_free(cert);
    return rc;
}
