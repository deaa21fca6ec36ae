// serve_tls_test.c: `spartan serve` over HTTPS and its API key. The certificates come from
// `spartan keys` (a CA and a "localhost" server certificate, as the README shows), and the client
// is the real curl program trusting that CA: answers, streams, the name check, a plain-HTTP client
// on the HTTPS port (refused, and the server goes on), 401 for a missing or wrong key and 200 for
// the right one, the key read from a file, and every bad file or flag named before the server
// starts. Only 127.0.0.1; each test runs its own server.
#include <criterion/criterion.h>
#include <errno.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "infer/srv.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/log.h"

TestSuite(serve_tls, .timeout = 60);

static char *g_dir;
static char g_ck[700], g_pki[700], g_cert[800], g_key[800];
static pid_t g_child; // a `spartan serve` process a failed assertion would otherwise leave running

// setup makes the small checkpoint and, with `spartan keys`, a CA and a localhost certificate.
static void setup(void) {
    log_set_level(LOG_WARN);
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
        cr_skip_test("this libmicrohttpd (%s) has no TLS support", MHD_get_version());
    g_dir = tu_tmpdir("serve-tls");
    cr_assert(g_dir);
    snprintf(g_ck, sizeof g_ck, "%s/small.h5", g_dir);
    cr_assert_eq(tu_write_char_ckpt(g_ck, 2, 32, 64, 7, 0.4f, 100, "\n abcdefghijklmnopqrstuvwxyz"),
                 0, "%s", err_msg());
    snprintf(g_pki, sizeof g_pki, "%s/pki", g_dir);
    snprintf(g_cert, sizeof g_cert, "%s/localhost.crt", g_pki);
    snprintf(g_key, sizeof g_key, "%s/localhost.key", g_pki);
    char cmd[2400], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s keys init %s && %s keys add %s localhost", tu_spartan(), g_pki,
             tu_spartan(), g_pki);
    cr_assert_eq(tu_run(cmd, 30, &out), 0, "%s", out);
    free(out);
}

static void teardown(void) {
    tu_kill(g_child);
    tu_rm_rf(g_dir);
    free(g_dir);
}

// start serves the small checkpoint over HTTPS with the localhost certificate and key (NULL:
// none) on an ephemeral port.
static srv_server *start(const char *key) {
    srv_config c = {
        .max_batch = 2, .threads = 1, .api_key = key, .tls_cert = g_cert, .tls_key = g_key};
    srv_server *s = NULL;
    cr_assert_eq(srv_create(&s, g_ck, &c), ERR_OK, "srv_create: %s", err_msg());
    return s;
}

// curl runs `curl -sS ARGS` (shell text) and returns curl's exit status. On success (0) *status
// is the HTTP status; *body (may be NULL) gets the response body, or curl's message on failure
// (caller frees).
static int curl(const char *args, long *status, char **body) {
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd, "curl -sS --max-time 20 -w '\\n%%{http_code}' %s", args);
    int rc = tu_run(cmd, 30, &out);
    if (!out) out = strdup("(curl did not run)");
    char *nl = strrchr(out, '\n');
    *status = 0;
    if (rc == 0 && nl) {
        *status = atol(nl + 1);
        *nl = 0;
    }
    if (body)
        *body = out;
    else
        free(out);
    return rc;
}

// https returns the curl arguments that reach path on the server as https://localhost:PORT,
// trusting the test CA; extra (may be "") goes before the URL.
static const char *https(int port, const char *extra, const char *path) {
    static char a[3000];
    snprintf(a, sizeof a,
             "--cacert %s/ca.crt --resolve localhost:%d:127.0.0.1 %s "
             "https://localhost:%d%s",
             g_pki, port, extra, port, path);
    return a;
}

Test(serve_tls, https_answers_curl_that_trusts_the_ca_and_streams_over_tls, .init = setup,
     .fini = teardown) {
    srv_server *s = start(NULL);
    int port = srv_port(s);
    long st;
    char *body;
    cr_assert_eq(curl(https(port, "", "/health"), &st, &body), 0, "%s", body);
    cr_assert_eq(st, 200, "%s", body);
    cr_assert(strstr(body, "\"status\":\"ok\""), "%s", body);
    free(body);
    cr_assert_eq(curl(https(port, "", "/v1/models"), &st, &body), 0, "%s", body);
    cr_assert(st == 200 && strstr(body, "\"small\""), "%ld %s", st, body);
    free(body);
    // a whole answer (the connection waits suspended) and a stream (resumed per token), over TLS
    const char *req = "-d '{\"prompt\":\"hi\",\"max_tokens\":4}'";
    cr_assert_eq(curl(https(port, req, "/v1/completions"), &st, &body), 0, "%s", body);
    cr_assert(st == 200 && strstr(body, "\"completion_tokens\":4"), "%ld %s", st, body);
    free(body);
    req = "-N -d '{\"prompt\":\"hi\",\"max_tokens\":6,\"stream\":true}'";
    cr_assert_eq(curl(https(port, req, "/v1/completions"), &st, &body), 0, "%s", body);
    cr_assert(st == 200 && strstr(body, "\"finish_reason\":\"length\"") &&
                  strstr(body, "data: [DONE]\n"),
              "%ld %s", st, body);
    free(body);
    // without the CA curl does not trust the certificate; by address it does not name the server
    char a[1200];
    snprintf(a, sizeof a, "https://127.0.0.1:%d/health", port);
    cr_assert_eq(curl(a, &st, &body), 60, "an unknown CA must fail verification: %s", body);
    free(body);
    snprintf(a, sizeof a, "--cacert %s/ca.crt https://127.0.0.1:%d/health", g_pki, port);
    cr_assert_eq(curl(a, &st, &body), 60, "the certificate names localhost only: %s", body);
    free(body);
    srv_destroy(s);
}

Test(serve_tls, plain_http_to_the_https_port_fails_cleanly_and_https_goes_on, .init = setup,
     .fini = teardown) {
    srv_server *s = start(NULL);
    int port = srv_port(s);
    long st;
    char *body, a[200];
    snprintf(a, sizeof a, "http://127.0.0.1:%d/health", port);
    int rc = curl(a, &st, &body);
    cr_assert(rc != 0 && st == 0, "plain HTTP got an answer (curl %d, HTTP %ld): %s", rc, st, body);
    free(body);
    // a raw plaintext request: the connection is closed (a TLS alert at most), never answered
    for (int i = 0; i < 3; i++) {
        int fd = tu_tcp_connect(port);
        cr_assert(fd >= 0);
        struct timeval tv = {.tv_sec = 10};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        const char req[] = "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
        cr_assert_eq(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
        char got[4096];
        size_t n = 0;
        ssize_t r = 1;
        while (n < sizeof got - 1 && (r = read(fd, got + n, sizeof got - 1 - n)) > 0)
            n += (size_t)r;
        got[n] = 0;
        cr_assert(r == 0 || errno == ECONNRESET, "the server kept the connection open");
        cr_assert(!strstr(got, "HTTP/1."), "plaintext answered: %s", got);
        close(fd);
    }
    cr_assert_eq(curl(https(port, "", "/health"), &st, &body), 0, "%s", body);
    cr_assert_eq(st, 200, "HTTPS after the plaintext clients: %s", body);
    free(body);
    srv_destroy(s);
}

Test(serve_tls, api_key_over_https_401_with_a_json_error_unless_it_is_exactly_right, .init = setup,
     .fini = teardown) {
    srv_server *s = start("s3cret-key");
    int port = srv_port(s);
    long st;
    char *body;
    const char *paths[] = {"/v1/models", "/metrics", "/api/tags"};
    // none, a prefix, a longer key, another one of equal length, another scheme
    const char *bad[] = {
        "", "-H 'Authorization: Bearer s3cret'", "-H 'Authorization: Bearer s3cret-key2'",
        "-H 'Authorization: Bearer s3cret-kez'", "-H 'Authorization: Basic czNjcmV0LWtleQ=='"};
    for (int p = 0; p < 3; p++) {
        for (int i = 0; i < 5; i++) {
            cr_assert_eq(curl(https(port, bad[i], paths[p]), &st, &body), 0, "%s", body);
            cr_assert_eq(st, 401, "%s %s: %ld %s", paths[p], bad[i], st, body);
            if (p == 0)
                cr_assert(strstr(body, "\"type\":\"authentication_error\"") &&
                              strstr(body, "Authorization: Bearer KEY"),
                          "%s", body);
            free(body);
        }
        cr_assert_eq(
            curl(https(port, "-H 'Authorization: Bearer s3cret-key'", paths[p]), &st, &body), 0,
            "%s", body);
        cr_assert_eq(st, 200, "%s with the key: %s", paths[p], body);
        free(body);
    }
    cr_assert_eq(curl(https(port, "-i", "/v1/models"), &st, &body), 0, "%s", body);
    cr_assert(strstr(body, "WWW-Authenticate: Bearer"), "%s", body);
    free(body);
    // load balancers probe /health without a key
    cr_assert_eq(curl(https(port, "", "/health"), &st, &body), 0, "%s", body);
    cr_assert_eq(st, 200, "%s", body);
    free(body);
    srv_destroy(s);
}

Test(serve_tls, spartan_serve_https_with_an_api_key_file_answers_and_stops_on_sigterm,
     .init = setup, .fini = teardown) {
    char kf[800], out[800], err[800], args[4096];
    snprintf(kf, sizeof kf, "%s/key.txt", g_dir);
    const char text[] = "tok3n-from-file \r\nthe second line is not the key\n";
    cr_assert_eq(tu_write_file(kf, text, sizeof text - 1), 0);
    cr_assert_eq(chmod(kf, 0600), 0);
    snprintf(out, sizeof out, "%s/serve.out", g_dir);
    snprintf(err, sizeof err, "%s/serve.err", g_dir);
    snprintf(args, sizeof args,
             "%s --port 0 --threads 1 --tls-cert %s --tls-key %s --api-key-file %s", g_ck, g_cert,
             g_key, kf);
    int port = 0;
    pid_t pid = tu_serve_start(args, out, err, &port);
    cr_assert(pid > 0, "spartan serve did not start");
    g_child = pid;
    char *line = NULL;
    cr_assert(tu_wait_file_has(out, "listening on https://127.0.0.1:", 0, &line), "%s", line);
    free(line);
    long st;
    char *body;
    cr_assert_eq(
        curl(https(port, "-H 'Authorization: Bearer tok3n-from-file'", "/v1/models"), &st, &body),
        0, "%s", body);
    cr_assert_eq(st, 200, "the key of the file's first line: %s", body);
    free(body);
    cr_assert_eq(curl(https(port, "", "/v1/models"), &st, &body), 0, "%s", body);
    cr_assert_eq(st, 401, "%s", body);
    free(body);
    cr_assert_eq(
        curl(https(port, "-H 'Authorization: Bearer the second line is not the key'", "/metrics"),
             &st, &body),
        0, "%s", body);
    cr_assert_eq(st, 401, "%s", body);
    free(body);
    kill(pid, SIGTERM);
    g_child = 0; // reaped (or killed at the timeout) by tu_wait_exit
    cr_assert_eq(tu_wait_exit(pid, 10), 0, "spartan serve must exit 0 on SIGTERM");
}

// refused runs srv_create with the TLS files cert and key (NULL: none) and checks that it fails
// with code and a message holding want and want2 (NULL: nothing more).
static void refused(const char *cert, const char *key, int code, const char *want,
                    const char *want2) {
    srv_config c = {.max_batch = 1, .threads = 1, .tls_cert = cert, .tls_key = key};
    srv_server *s = NULL;
    cr_assert_eq(srv_create(&s, g_ck, &c), code, "cert %s key %s: %s", cert, key, err_msg());
    cr_assert(strstr(err_msg(), want) && (!want2 || strstr(err_msg(), want2)),
              "want '%s' and '%s' in: %s", want, want2 ? want2 : "", err_msg());
}

Test(serve_tls, bad_tls_files_are_named_before_the_server_starts, .init = setup, .fini = teardown) {
    char junk[800], junk_key[800], other_key[800], none[800], cmd[2400], *out = NULL;
    refused(g_cert, NULL, ERR_INVAL, "--tls-cert needs --tls-key", NULL);
    refused(NULL, g_key, ERR_INVAL, "--tls-key needs --tls-cert", NULL);
    snprintf(none, sizeof none, "%s/nope.crt", g_dir);
    refused(none, g_key, ERR_IO, "--tls-cert", "nope.crt");
    snprintf(none, sizeof none, "%s/nope.key", g_dir);
    refused(g_cert, none, ERR_IO, "--tls-key", "nope.key");
    snprintf(junk, sizeof junk, "%s/junk.crt", g_dir);
    cr_assert_eq(tu_write_file(junk, "not a certificate\n", 18), 0);
    refused(junk, g_key, ERR_FORMAT, "--tls-cert", "junk.crt: not a PEM certificate");
    snprintf(junk_key, sizeof junk_key, "%s/junk.key", g_dir);
    cr_assert_eq(tu_write_file(junk_key, "not a key\n", 10), 0);
    cr_assert_eq(chmod(junk_key, 0600), 0);
    refused(g_cert, junk_key, ERR_FORMAT, "--tls-key", "junk.key: not a PEM private key");
    // another certificate's key
    snprintf(cmd, sizeof cmd, "%s keys add %s other", tu_spartan(), g_pki);
    cr_assert_eq(tu_run(cmd, 30, &out), 0, "%s", out);
    free(out);
    snprintf(other_key, sizeof other_key, "%s/other.key", g_pki);
    refused(g_cert, other_key, ERR_FORMAT, "other.key is not the key of --tls-cert",
            "localhost.crt");
    // a key under a passphrase: refused, never a prompt on the terminal
    snprintf(cmd, sizeof cmd,
             "openssl pkey -in %s -aes256 -passout pass:x -out %s/enc.key && chmod 600 %s/enc.key",
             g_key, g_dir, g_dir);
    cr_assert_eq(tu_run(cmd, 30, &out), 0, "%s", out);
    free(out);
    snprintf(none, sizeof none, "%s/enc.key", g_dir);
    refused(g_cert, none, ERR_FORMAT, "enc.key: the private key is encrypted with a passphrase",
            NULL);
    // a key others can read
    cr_assert_eq(chmod(g_key, 0644), 0);
    refused(g_cert, g_key, ERR_INVAL, "localhost.key: the private key can be read by others",
            "chmod 600");
    // the command exits non-zero with the same messages, before it listens
    snprintf(cmd, sizeof cmd, "%s serve %s --port 0 --tls-cert %s --tls-key %s", tu_spartan(), g_ck,
             g_cert, g_key);
    cr_assert_eq(tu_run(cmd, 30, &out), 1, "%s", out);
    cr_assert(strstr(out, "chmod 600") && !strstr(out, "listening"), "%s", out);
    free(out);
    cr_assert_eq(chmod(g_key, 0600), 0);
    snprintf(cmd, sizeof cmd, "%s serve %s --port 0 --tls-cert %s --tls-key %s", tu_spartan(), g_ck,
             g_cert, other_key);
    cr_assert_eq(tu_run(cmd, 30, &out), 1, "%s", out);
    cr_assert(strstr(out, "is not the key of --tls-cert") && !strstr(out, "listening"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s serve %s --port 0 --tls-cert %s", tu_spartan(), g_ck, g_cert);
    cr_assert_eq(tu_run(cmd, 30, &out), 1, "%s", out);
    cr_assert(strstr(out, "--tls-cert needs --tls-key"), "%s", out);
    free(out);
}

Test(serve_tls, bad_api_key_files_and_flags_are_named, .init = setup, .fini = teardown) {
    char kf[800], cmd[2400], *out = NULL;
    snprintf(kf, sizeof kf, "%s/key.txt", g_dir);
    // missing, empty, a blank first line, and both forms at once
    snprintf(cmd, sizeof cmd, "%s serve %s --port 0 --api-key-file %s", tu_spartan(), g_ck, kf);
    cr_assert_eq(tu_run(cmd, 30, &out), 1, "%s", out);
    cr_assert(strstr(out, "--api-key-file") && strstr(out, "key.txt"), "%s", out);
    free(out);
    const char *empty[] = {"", "\n", "  \t\r\nkey on the second line\n"};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(tu_write_file(kf, empty[i], strlen(empty[i])), 0);
        cr_assert_eq(tu_run(cmd, 30, &out), 1, "%s", out);
        cr_assert(strstr(out, "key.txt: the first line is empty"), "case %d: %s", i, out);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "%s serve %s --port 0 --api-key-file %s --api-key k", tu_spartan(),
             g_ck, kf);
    cr_assert_eq(tu_run(cmd, 30, &out), 2, "%s", out);
    cr_assert(strstr(out, "--api-key and --api-key-file: give one"), "%s", out);
    free(out);
}
