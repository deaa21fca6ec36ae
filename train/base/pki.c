// pki.c: the cluster CA and peer certificates with libcrypto's EVP and X509 calls.
#include "train/base/pki.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "train/base/err.h"
#include "train/base/sys.h"

// ssl_why: libcrypto's last error as text ("unknown" when it queued none).
static const char *ssl_why(char *buf, size_t n) {
    unsigned long e = ERR_get_error();
    if (!e) return "unknown";
    ERR_error_string_n(e, buf, n);
    ERR_clear_error();
    return buf;
}

int pki_name_ok(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > PKI_NAME_MAX || name[0] == '.' || name[0] == '-') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_'))
            return 0;
    }
    return strcmp(name, "ca") != 0; // ca.crt and ca.key are the CA's
}

int pki_check_key(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(ERR_IO, "%s: cannot read the private key: %s", path, strerror(errno));
    if (st.st_mode & 077)
        return err_set(ERR_INVAL,
                       "%s: the private key can be read by others (mode %03o): run chmod 600 %s",
                       path, (unsigned)(st.st_mode & 0777), path);
    return ERR_OK;
}

// write_pem creates path (never replacing a file) with mode and writes the key (or the
// certificate) as PEM, then syncs it. On failure nothing is left at path.
static int write_pem(const char *path, int mode, EVP_PKEY *key, X509 *cert) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0) return err_set(ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(path);
        return err_set(ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    }
    int ok =
        key ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) : PEM_write_X509(f, cert);
    ok = ok && fflush(f) == 0 && sys_fsync_durable(fileno(f)) == 0;
    int closed = fclose(f) == 0;
    if (!ok || !closed) {
        unlink(path);
        char why[256];
        return err_set(ERR_IO, "%s: cannot write: %s", path, ssl_why(why, sizeof why));
    }
    return ERR_OK;
}

// add_ext adds the extension nid = value (OpenSSL's config syntax) to cert, issued by issuer.
static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value) {
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!e) return 0;
    int ok = X509_add_ext(cert, e, -1);
    X509_EXTENSION_free(e);
    return ok;
}

// new_cert makes an unsigned certificate for key with subject CN=cn, a random 63-bit serial and
// days of validity from now, issued by issuer (NULL: by itself).
static X509 *new_cert(EVP_PKEY *key, const char *cn, int days, X509 *issuer) {
    X509 *x = X509_new();
    BIGNUM *bn = BN_new();
    int ok = x && bn && X509_set_version(x, 2) &&
             BN_rand(bn, 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) &&
             BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) &&
             X509_gmtime_adj(X509_getm_notBefore(x), -300) && // clocks differ a little
             X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) && X509_set_pubkey(x, key);
    X509_NAME *name = ok ? X509_get_subject_name(x) : NULL;
    ok = ok && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                                          -1, 0);
    ok = ok && X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    BN_free(bn);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static void join(char *out, size_t n, const char *dir, const char *file) {
    snprintf(out, n, "%s/%s", dir, file);
}

int pki_ca_init(const char *dir, const char *cn, int days) {
    if (days < 1 || days > 36500) return err_set(ERR_INVAL, "days: %d not in [1, 36500]", days);
    if (!cn[0] || strlen(cn) > 64) return err_set(ERR_INVAL, "the CA's name must be 1-64 bytes");
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return err_set(ERR_IO, "%s: cannot make the folder: %s", dir, strerror(errno));
    char kpath[1100], cpath[1100];
    join(kpath, sizeof kpath, dir, "ca.key");
    join(cpath, sizeof cpath, dir, "ca.crt");
    for (int i = 0; i < 2; i++) {
        const char *p = i ? cpath : kpath;
        if (access(p, F_OK) == 0)
            return err_set(ERR_INVAL,
                           "%s exists: this folder has a CA already (keys add issues "
                           "peer certificates from it)",
                           p);
    }
    char why[256];
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (!key) return err_set(ERR_IO, "making the CA key: %s", ssl_why(why, sizeof why));
    X509 *x = new_cert(key, cn, days, NULL);
    int ok = x && add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
             add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") &&
             add_ext(x, x, NID_subject_key_identifier, "hash") &&
             X509_sign(x, key, EVP_sha256()) > 0;
    int rc =
        ok ? ERR_OK : err_set(ERR_IO, "making the CA certificate: %s", ssl_why(why, sizeof why));
    if (!rc) rc = write_pem(kpath, 0600, key, NULL);
    if (!rc && (rc = write_pem(cpath, 0644, NULL, x))) unlink(kpath);
    if (!rc) sys_fsync_parent(kpath);
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

// time_text writes t as "YYYY-MM-DD HH:MM UTC" ("?" if it cannot be read).
static void time_text(const ASN1_TIME *t, char *out, size_t n) {
    struct tm tm;
    if (!ASN1_TIME_to_tm(t, &tm) || !strftime(out, n, "%Y-%m-%d %H:%M UTC", &tm))
        snprintf(out, n, "?");
}

// no_passphrase is the passphrase callback of key reads: it gives none (libcrypto's default
// would prompt on the terminal, and nothing after it could use the passphrase) and notes that it
// was asked in *(int *)u.
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
    (void)buf;
    (void)size;
    (void)rwflag;
    *(int *)u = 1;
    return -1;
}

int pki_read_pem(const char *path, const char *what, X509 **cert, EVP_PKEY **key) {
    char why[256];
    FILE *f = fopen(path, "r");
    if (!f) return err_set(ERR_IO, "%s %s: %s", what, path, strerror(errno));
    int asked = 0;
    if (cert) *cert = PEM_read_X509(f, NULL, NULL, NULL);
    if (key) *key = PEM_read_PrivateKey(f, NULL, no_passphrase, &asked);
    fclose(f);
    if (key && !*key && asked) {
        ERR_clear_error();
        return err_set(ERR_FORMAT,
                       "%s %s: the private key is encrypted with a passphrase; give it "
                       "unencrypted (openssl pkey -in %s -out NEW.key), readable by its owner only",
                       what, path, path);
    }
    if ((cert && !*cert) || (key && !*key))
        return err_set(ERR_FORMAT, "%s %s: not a PEM %s (%s)", what, path,
                       cert ? "certificate" : "private key", ssl_why(why, sizeof why));
    return ERR_OK;
}

// load_ca reads dir's CA certificate and, when key is not NULL, its key (checking the key
// file's mode and that it is the certificate's).
static int load_ca(const char *dir, X509 **cert, EVP_PKEY **key) {
    char path[1100];
    join(path, sizeof path, dir, "ca.crt");
    int rc = pki_read_pem(path, "the CA certificate", cert, NULL);
    if (rc == ERR_IO)
        return err_set(rc, "%s (make a CA with `spartan keys init %s`)", err_msg(), dir);
    if (rc || !key) return rc;
    join(path, sizeof path, dir, "ca.key");
    rc = pki_check_key(path);
    if (!rc) rc = pki_read_pem(path, "the CA key", NULL, key);
    if (!rc && X509_check_private_key(*cert, *key) != 1)
        rc = err_set(ERR_FORMAT, "%s does not belong to %s/ca.crt", path, dir);
    if (rc) {
        X509_free(*cert);
        EVP_PKEY_free(*key);
        *cert = NULL;
        *key = NULL;
    }
    return rc;
}

int pki_issue(const char *dir, const char *name, int days) {
    if (!pki_name_ok(name))
        return err_set(ERR_INVAL,
                       "peer name '%s': use 1-%d letters, digits, '.', '-' and '_' (not 'ca')",
                       name, PKI_NAME_MAX);
    if (days < 1 || days > 36500) return err_set(ERR_INVAL, "days: %d not in [1, 36500]", days);
    char kpath[1100], cpath[1100], file[PKI_NAME_MAX + 8], why[256];
    snprintf(file, sizeof file, "%s.crt", name);
    join(cpath, sizeof cpath, dir, file);
    snprintf(file, sizeof file, "%s.key", name);
    join(kpath, sizeof kpath, dir, file);
    if (access(cpath, F_OK) == 0 || access(kpath, F_OK) == 0)
        return err_set(ERR_INVAL, "%s: peer '%s' has a certificate already", dir, name);
    X509 *ca = NULL;
    EVP_PKEY *ca_key = NULL;
    int rc = load_ca(dir, &ca, &ca_key);
    if (rc) return rc;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = key ? new_cert(key, name, days, ca) : NULL;
    char san[PKI_NAME_MAX + 8];
    snprintf(san, sizeof san, "DNS:%s", name);
    int ok = x && add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE") &&
             add_ext(x, ca, NID_key_usage, "critical,digitalSignature,keyAgreement") &&
             add_ext(x, ca, NID_ext_key_usage, "serverAuth,clientAuth") &&
             add_ext(x, ca, NID_subject_alt_name, san) &&
             add_ext(x, ca, NID_authority_key_identifier, "keyid:always") &&
             X509_sign(x, ca_key, EVP_sha256()) > 0;
    if (!ok) rc = err_set(ERR_IO, "making %s: %s", cpath, ssl_why(why, sizeof why));
    if (!rc) rc = write_pem(kpath, 0600, key, NULL);
    if (!rc && (rc = write_pem(cpath, 0644, NULL, x))) unlink(kpath);
    if (!rc) sys_fsync_parent(kpath);
    X509_free(x);
    EVP_PKEY_free(key);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    return rc;
}

// check_pair is pki_check_pair that also hands back the certificate (*out, the caller frees it)
// on success.
static int check_pair(const char *cert, const char *key, const char *cert_what,
                      const char *key_what, X509 **out) {
    int rc = pki_check_key(key);
    if (rc) return err_set(rc, "%s: %s", key_what, err_msg());
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    rc = pki_read_pem(cert, cert_what, &x, NULL);
    if (!rc) rc = pki_read_pem(key, key_what, NULL, &k);
    if (!rc && X509_check_private_key(x, k) != 1)
        rc = err_set(ERR_FORMAT, "%s %s is not the key of %s %s", key_what, key, cert_what, cert);
    if (!rc) {
        const ASN1_TIME *na = X509_get0_notAfter(x);
        char when[32];
        time_text(na, when, sizeof when);
        if (X509_cmp_current_time(na) <= 0)
            rc = err_set(ERR_FORMAT, "%s %s expired on %s (spartan keys add makes a new one)",
                         cert_what, cert, when);
        else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0)
            rc = err_set(ERR_FORMAT, "%s %s is not valid yet (is this clock right?)", cert_what,
                         cert);
    }
    ERR_clear_error();
    EVP_PKEY_free(k);
    if (rc)
        X509_free(x);
    else
        *out = x;
    return rc;
}

int pki_check_pair(const char *cert, const char *key, const char *cert_what, const char *key_what) {
    X509 *x = NULL;
    int rc = check_pair(cert, key, cert_what, key_what, &x);
    X509_free(x);
    return rc;
}

int pki_check_peer(const char *ca, const char *cert, const char *key) {
    X509 *c = NULL, *x = NULL;
    int rc = check_pair(cert, key, "net.tls_cert", "net.tls_key", &x);
    if (!rc) rc = pki_read_pem(ca, "net.tls_ca", &c, NULL);
    if (!rc) {
        EVP_PKEY *pub = X509_get0_pubkey(c);
        if (!pub || X509_verify(x, pub) != 1)
            rc = err_set(ERR_FORMAT, "net.tls_cert %s is not signed by net.tls_ca %s", cert, ca);
    }
    ERR_clear_error();
    X509_free(c);
    X509_free(x);
    return rc;
}

// describe fills c from cert, checked against the CA (NULL: cert is the CA).
static void describe(pki_cert_info *c, X509 *cert, X509 *ca) {
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, c->subject,
                              sizeof c->subject);
    const ASN1_TIME *na = X509_get0_notAfter(cert);
    time_text(na, c->not_after, sizeof c->not_after);
    int day = 0, sec = 0;
    if (ASN1_TIME_diff(&day, &sec, NULL, na)) c->days_left = day + sec / 86400.0;
    EVP_PKEY *pub = X509_get0_pubkey(ca ? ca : cert);
    if (!pub || X509_verify(cert, pub) != 1)
        snprintf(c->problem, sizeof c->problem, "not signed by this folder's CA");
    else if (X509_cmp_current_time(na) <= 0)
        snprintf(c->problem, sizeof c->problem, "expired");
    else if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0)
        snprintf(c->problem, sizeof c->problem, "not valid yet");
    c->verified = !c->problem[0];
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int pki_list(const char *dir, pki_list_fn fn, void *ctx) {
    X509 *ca = NULL;
    int rc = load_ca(dir, &ca, NULL);
    if (rc) return -rc;
    DIR *d = opendir(dir);
    if (!d) {
        X509_free(ca);
        return -err_set(ERR_IO, "%s: %s", dir, strerror(errno));
    }
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".crt") || !strcmp(e->d_name, "ca.crt"))
            continue;
        names = xrealloc(names, (n + 1) * sizeof *names);
        names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    pki_cert_info c;
    memset(&c, 0, sizeof c);
    snprintf(c.file, sizeof c.file, "ca.crt");
    c.is_ca = 1;
    describe(&c, ca, NULL);
    fn(ctx, &c);
    for (size_t i = 0; i < n; i++) {
        char path[1400];
        join(path, sizeof path, dir, names[i]);
        memset(&c, 0, sizeof c);
        snprintf(c.file, sizeof c.file, "%s", names[i]);
        FILE *f = fopen(path, "r");
        X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
        if (f) fclose(f);
        if (x)
            describe(&c, x, ca);
        else
            snprintf(c.problem, sizeof c.problem, "not a readable PEM certificate");
        ERR_clear_error();
        X509_free(x);
        fn(ctx, &c);
        free(names[i]);
    }
    free(names);
    X509_free(ca);
    return (int)n + 1;
}
