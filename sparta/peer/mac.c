// mac.c: HMAC-SHA256 through OpenSSL 3's EVP_MAC (see mac.h).
#include "sparta/peer/mac.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdlib.h>
#include <string.h>

#include "sparta/peer/le.h"
#include "train/base/err.h"
#include "train/base/sys.h"

struct mac_ctx {
    EVP_MAC_CTX *c;
};

static const char HELLO_TAG[] = "spartan-hello-mac-1", LINK_TAG[] = "spartan-link-mac-1";

// keyed makes an HMAC-SHA256 context with key(n), or NULL.
static EVP_MAC_CTX *keyed(const unsigned char *key, size_t n) {
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *c = mac ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac); // the context keeps its own reference
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    if (c && EVP_MAC_init(c, key, n, params) != 1) {
        EVP_MAC_CTX_free(c);
        c = NULL;
    }
    return c;
}

// tag_of finishes HMAC(c's key, the parts) into out; c is re-initialised for the next use.
static void tag_of(EVP_MAC_CTX *c, const void *const *part, const size_t *len, int n,
                   unsigned char out[MAC_TAG]) {
    size_t outl = 0;
    int ok = EVP_MAC_init(c, NULL, 0, NULL) == 1;
    for (int i = 0; i < n && ok; i++)
        ok = !len[i] || EVP_MAC_update(c, part[i], len[i]) == 1;
    ok = ok && EVP_MAC_final(c, out, &outl, MAC_TAG) == 1 && outl == MAC_TAG;
    ASSERT(ok);
}

int mac_new(mac_ctx **out, const unsigned char *key, size_t n) {
    EVP_MAC_CTX *c = keyed(key, n);
    if (!c) return err_set(ERR_NOMEM, "peer: no HMAC-SHA256 from libcrypto");
    *out = xmalloc(sizeof **out);
    (*out)->c = c;
    return ERR_OK;
}

void mac_free(mac_ctx *c) {
    if (!c) return;
    EVP_MAC_CTX_free(c->c);
    free(c);
}

void mac_frame(mac_ctx *c, const void *hdr, size_t hn, const void *payload, size_t n,
               unsigned char tag[MAC_TAG]) {
    const void *part[2] = {hdr, payload};
    size_t len[2] = {hn, n};
    tag_of(c->c, part, len, 2, tag);
}

// once: HMAC(key, the parts) with a context of its own.
static void once(const unsigned char *key, size_t kn, const void *const *part, const size_t *len,
                 int n, unsigned char out[MAC_TAG]) {
    EVP_MAC_CTX *c = keyed(key, kn);
    ASSERT(c != NULL);
    tag_of(c, part, len, n, out);
    EVP_MAC_CTX_free(c);
}

void mac_hello_proof(const unsigned char *key, size_t kn, const unsigned char *nonce, size_t nn,
                     const void *msg, size_t n, unsigned char out[MAC_TAG]) {
    const void *part[3] = {HELLO_TAG, nonce, msg};
    size_t len[3] = {sizeof HELLO_TAG - 1, nn, n};
    once(key, kn, part, len, 3, out);
}

void mac_link_key(const unsigned char *key, size_t kn, const unsigned char *sn,
                  const unsigned char *rn, size_t nn, uint64_t run_id, uint64_t sender,
                  unsigned char out[MAC_TAG]) {
    unsigned char ids[16];
    le_put64(ids, run_id);
    le_put64(ids + 8, sender);
    const void *part[4] = {LINK_TAG, sn, rn, ids};
    size_t len[4] = {sizeof LINK_TAG - 1, nn, nn, sizeof ids};
    once(key, kn, part, len, 4, out);
}

int mac_equal(const unsigned char *a, const unsigned char *b) {
    return CRYPTO_memcmp(a, b, MAC_TAG) == 0;
}
