// keys_test.c: `spartan keys` and train/base/pki.c: a CA and peer certificates that the real
// `openssl verify` accepts, 0600 private keys, a key file others can read refused by name,
// nothing ever replaced, bad names and day counts named, and `keys show` naming a certificate
// that another CA signed.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/pki.h"

TestSuite(keys, .timeout = 60);

// keys runs `spartan keys ARGS` and returns its status, with its output in *out.
static int keys(const char *args, char **out) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s keys %s", tu_spartan(), args);
    return tu_run(cmd, 30, out);
}

static int mode_of(const char *dir, const char *file) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s missing", path);
    return (int)(st.st_mode & 0777);
}

Test(keys, init_add_and_show_make_certificates_openssl_verifies) {
    char *dir = tu_tmpdir("keys"), *out = NULL, args[1200];
    char cl[1100];
    snprintf(cl, sizeof cl, "%s/cluster", dir);
    snprintf(args, sizeof args, "init %s", cl);
    cr_assert_eq(keys(args, &out), 0, "%s", out);
    free(out);
    snprintf(args, sizeof args, "add %s mini1", cl);
    cr_assert_eq(keys(args, &out), 0, "%s", out);
    free(out);
    snprintf(args, sizeof args, "add %s linux-box_2 --days 30", cl);
    cr_assert_eq(keys(args, &out), 0, "%s", out);
    free(out);
    cr_assert_eq(mode_of(cl, "ca.key"), 0600);
    cr_assert_eq(mode_of(cl, "mini1.key"), 0600);
    cr_assert_eq(mode_of(cl, "mini1.crt") & 0077, 0044, "certificates are public");
    struct stat st;
    cr_assert_eq(stat(cl, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0700, "the folder is private: %o", st.st_mode & 0777);
    // the real openssl accepts both peers' certificates for TLS clients and servers
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "openssl verify -CAfile %s/ca.crt -purpose sslserver %s/mini1.crt && "
             "openssl verify -CAfile %s/ca.crt -purpose sslclient %s/linux-box_2.crt && "
             "openssl x509 -in %s/mini1.crt -noout -subject -ext subjectAltName",
             cl, cl, cl, cl, cl);
    cr_assert_eq(tu_run(cmd, 30, &out), 0, "%s", out);
    cr_assert(strstr(out, "CN = mini1") && strstr(out, "DNS:mini1"), "%s", out);
    free(out);
    snprintf(args, sizeof args, "show %s", cl);
    cr_assert_eq(keys(args, &out), 0, "%s", out);
    cr_assert(strstr(out, "ca.crt") && strstr(out, " CA"), "%s", out);
    cr_assert(strstr(out, "mini1.crt") && strstr(out, "825 days"), "%s", out);
    cr_assert(strstr(out, "linux-box_2.crt") && strstr(out, "30 days"), "%s", out);
    free(out);
    tu_rm_rf(dir);
    free(dir);
}

Test(keys, nothing_is_replaced_and_bad_input_is_named) {
    char *dir = tu_tmpdir("keys"), *out = NULL, args[1200];
    cr_assert_eq(pki_ca_init(dir, "test CA", 10), ERR_OK, "%s", err_msg());
    snprintf(args, sizeof args, "init %s", dir);
    cr_assert_eq(keys(args, &out), 1, "%s", out);
    cr_assert(strstr(out, "ca.key exists"), "%s", out);
    free(out);
    cr_assert_eq(pki_issue(dir, "a", 10), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_issue(dir, "a", 10), ERR_INVAL);
    cr_assert(strstr(err_msg(), "'a' has a certificate already"), "%s", err_msg());
    const char *bad[] = {"", "ca", "-x", ".hidden", "a/b", "a b", "x;rm"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(pki_issue(dir, bad[i], 10), ERR_INVAL, "'%s' taken", bad[i]);
        cr_assert(strstr(err_msg(), "peer name"), "%s", err_msg());
    }
    cr_assert_eq(pki_issue(dir, "b", 0), ERR_INVAL);
    cr_assert(strstr(err_msg(), "days"), "%s", err_msg());
    snprintf(args, sizeof args, "add %s c --days 0", dir);
    cr_assert_eq(keys(args, &out), 2, "%s", out);
    free(out);
    cr_assert_eq(keys("frobnicate x", &out), 2, "%s", out);
    cr_assert(strstr(out, "expected init, add or show"), "%s", out);
    free(out);
    cr_assert_eq(keys("add onlydir", &out), 2, "%s", out);
    cr_assert(strstr(out, "DIR and NAME"), "%s", out);
    free(out);
    // a folder without a CA
    char *empty = tu_tmpdir("keys-empty");
    snprintf(args, sizeof args, "add %s x", empty);
    cr_assert_eq(keys(args, &out), 1, "%s", out);
    cr_assert(strstr(out, "ca.crt") && strstr(out, "spartan keys init"), "%s", out);
    free(out);
    tu_rm_rf(empty);
    free(empty);
    tu_rm_rf(dir);
    free(dir);
}

Test(keys, a_private_key_others_can_read_is_refused) {
    char *dir = tu_tmpdir("keys"), path[1100];
    cr_assert_eq(pki_ca_init(dir, "test CA", 10), ERR_OK, "%s", err_msg());
    snprintf(path, sizeof path, "%s/ca.key", dir);
    cr_assert_eq(pki_check_key(path), ERR_OK);
    cr_assert_eq(chmod(path, 0644), 0);
    cr_assert_eq(pki_issue(dir, "peer", 10), ERR_INVAL);
    cr_assert(strstr(err_msg(), path) && strstr(err_msg(), "mode 644") &&
                  strstr(err_msg(), "chmod 600"),
              "%s", err_msg());
    char crt[1100];
    snprintf(crt, sizeof crt, "%s/peer.crt", dir);
    cr_assert(access(crt, F_OK) != 0, "a certificate was issued anyway");
    cr_assert_eq(chmod(path, 0640), 0);
    cr_assert_eq(pki_check_key(path), ERR_INVAL, "group-readable passed");
    snprintf(path, sizeof path, "%s/missing.key", dir);
    cr_assert_eq(pki_check_key(path), ERR_IO);
    cr_assert(strstr(err_msg(), "missing.key"), "%s", err_msg());
    tu_rm_rf(dir);
    free(dir);
}

static void count(void *ctx, const pki_cert_info *c) {
    int *n = ctx;
    n[0]++;
    if (!c->verified) n[1]++;
    if (strstr(c->problem, "not signed by this folder's CA")) n[2]++;
}

Test(keys, show_names_a_certificate_of_another_ca) {
    char *a = tu_tmpdir("keys-a"), *b = tu_tmpdir("keys-b"), *out = NULL, cmd[3000];
    cr_assert_eq(pki_ca_init(a, "A", 10), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_ca_init(b, "B", 10), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_issue(a, "good", 10), ERR_OK, "%s", err_msg());
    cr_assert_eq(pki_issue(b, "intruder", 10), ERR_OK, "%s", err_msg());
    snprintf(cmd, sizeof cmd, "cp %s/intruder.crt %s/ && echo garbage > %s/junk.crt", b, a, a);
    cr_assert_eq(tu_run(cmd, 10, &out), 0, "%s", out);
    free(out);
    int n[3] = {0};
    cr_assert_eq(pki_list(a, count, n), 4, "%s", err_msg());
    cr_assert_eq(n[0], 4);
    cr_assert_eq(n[1], 2, "intruder and junk must not verify");
    cr_assert_eq(n[2], 1);
    snprintf(cmd, sizeof cmd, "show %s", a);
    cr_assert_eq(keys(cmd, &out), 1, "%s", out);
    cr_assert(strstr(out, "intruder.crt") && strstr(out, "not signed by this folder's CA"), "%s",
              out);
    cr_assert(strstr(out, "junk.crt") && strstr(out, "not a readable PEM certificate"), "%s", out);
    free(out);
    tu_rm_rf(a);
    tu_rm_rf(b);
    free(a);
    free(b);
}
