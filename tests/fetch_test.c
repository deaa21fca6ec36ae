// fetch_test.c: fetch_file against a libmicrohttpd server on 127.0.0.1 (ephemeral port) started
// by each test: full download + checksum, resume with a Range request, a server that ignores
// Range, a connection dropped half-way, checksum mismatch, 404/500, and the CLI. Every transfer
// is bounded by curl timeouts and the suite timeout. The server runs on MHD's own thread.
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/fetch.h"
#include "tests/test_util.h"
#include "train/base/err.h"

enum { BODY_N = 300000 };

static char body[BODY_N];
static char body_sha[65];
static struct MHD_Daemon *daemon_;
static int port;
static char *dir;

// What the server saw, written by the MHD thread and read by the test after a transfer.
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static int n_requests;
static char last_range[64];

static ssize_t drop_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)cls;
    if (pos >= BODY_N / 2) return MHD_CONTENT_READER_END_WITH_ERROR; // close mid-body
    size_t k = BODY_N / 2 - pos < max ? BODY_N / 2 - pos : max;
    memcpy(buf, body + pos, k);
    return (ssize_t)k;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *data, size_t n,
                             const char *content_range) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(n, (void *)data, MHD_RESPMEM_PERSISTENT);
    if (content_range) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_RANGE, content_range);
    enum MHD_Result ok = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ok;
}

// Paths: /file (honours "Range: bytes=N-"), /norange (always 200 with the whole body), /drop
// (announces the whole body, closes after half), /error (500); anything else is 404.
static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls) {
    (void)cls, (void)method, (void)version, (void)upload, (void)upload_size, (void)con_cls;
    const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE);
    pthread_mutex_lock(&seen_mu);
    n_requests++;
    snprintf(last_range, sizeof last_range, "%s", range ? range : "");
    pthread_mutex_unlock(&seen_mu);
    if (strcmp(url, "/file") == 0) {
        unsigned long long start;
        if (range && sscanf(range, "bytes=%llu-", &start) == 1) {
            char cr[80];
            if (start >= BODY_N) {
                snprintf(cr, sizeof cr, "bytes */%d", BODY_N);
                return reply(c, 416, "", 0, cr);
            }
            snprintf(cr, sizeof cr, "bytes %llu-%d/%d", start, BODY_N - 1, BODY_N);
            return reply(c, MHD_HTTP_PARTIAL_CONTENT, body + start, BODY_N - start, cr);
        }
        return reply(c, MHD_HTTP_OK, body, BODY_N, NULL);
    }
    if (strcmp(url, "/norange") == 0) return reply(c, MHD_HTTP_OK, body, BODY_N, NULL);
    if (strcmp(url, "/drop") == 0) {
        struct MHD_Response *r =
            MHD_create_response_from_callback(BODY_N, 4096, drop_reader, NULL, NULL);
        enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return ok;
    }
    if (strcmp(url, "/error") == 0) return reply(c, 500, "boom", 4, NULL);
    return reply(c, MHD_HTTP_NOT_FOUND, "not found", 9, NULL);
}

static void sha_hex(const void *data, size_t n, char out[65]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len;
    EVP_Digest(data, n, md, &len, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

static void setup(void) {
    uint64_t s = 99;
    for (int i = 0; i < BODY_N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        body[i] = (char)(s >> 56);
    }
    sha_hex(body, BODY_N, body_sha);
    // Loopback only: never route through a proxy from the environment.
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    setenv("no_proxy", "127.0.0.1", 1);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    daemon_ = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handler, NULL,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                               MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    cr_assert_not_null(daemon_, "cannot start the test HTTP server");
    port = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT)->port;
    cr_assert_gt(port, 0);
    dir = tu_tmpdir("fetch");
}

static void teardown(void) {
    if (daemon_) MHD_stop_daemon(daemon_);
    daemon_ = NULL;
    tu_rm_rf(dir);
    free(dir);
}

TestSuite(fetch, .timeout = 30, .init = setup, .fini = teardown);

static fetch_opts quick(void) {
    fetch_opts o;
    fetch_opts_default(&o);
    o.connect_timeout_s = 5;
    o.low_speed_time_s = 5;
    o.timeout_s = 20;
    o.retries = 0;
    return o;
}

static char *url(const char *p) {
    char *u = malloc(128);
    snprintf(u, 128, "http://127.0.0.1:%d%s", port, p);
    return u;
}

static char *out_path(const char *name) {
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

static char *part_of(const char *path) {
    char *p = malloc(strlen(path) + 8);
    sprintf(p, "%s.part", path);
    return p;
}

static long fsize(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void expect_body(const char *path) {
    char *data;
    size_t n;
    cr_assert_eq(tu_read_file(path, &data, &n), 0, "cannot read %s", path);
    cr_assert_eq(n, BODY_N);
    cr_assert(memcmp(data, body, BODY_N) == 0, "downloaded bytes differ");
    free(data);
}

static int requests(void) {
    pthread_mutex_lock(&seen_mu);
    int n = n_requests;
    pthread_mutex_unlock(&seen_mu);
    return n;
}

static void range_seen(char *out, size_t cap) {
    pthread_mutex_lock(&seen_mu);
    snprintf(out, cap, "%s", last_range);
    pthread_mutex_unlock(&seen_mu);
}

Test(fetch, sha256_of_a_file_matches_the_known_vector) {
    char *p = out_path("abc");
    cr_assert_eq(tu_write_file(p, "abc", 3), 0);
    char hex[65];
    cr_assert_eq(fetch_sha256_file(p, hex), ERR_OK);
    cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    cr_assert_eq(fetch_sha256_file("/nonexistent/f", hex), ERR_IO);
    cr_assert(strstr(err_msg(), "/nonexistent/f"), "%s", err_msg());
    free(p);
}

Test(fetch, full_download_checks_sha256_and_renames_into_place) {
    char *u = url("/file"), *p = out_path("out.bin"), *part = part_of(p);
    fetch_opts o = quick();
    cr_assert_eq(fetch_file(u, body_sha, p, &o), ERR_OK, "%s", err_msg());
    expect_body(p);
    cr_assert_eq(fsize(part), -1, "no .part left behind");
    char r[64];
    range_seen(r, sizeof r);
    cr_assert_str_eq(r, "", "a fresh download sends no Range header");
    // Present with the right checksum: nothing is requested again.
    int before = requests();
    cr_assert_eq(fetch_file(u, body_sha, p, &o), ERR_OK, "%s", err_msg());
    cr_assert_eq(requests(), before);
    free(u);
    free(p);
    free(part);
}

Test(fetch, partial_file_is_resumed_with_a_range_request) {
    char *u = url("/file"), *p = out_path("out.bin"), *part = part_of(p);
    cr_assert_eq(tu_write_file(part, body, 123457), 0);
    fetch_opts o = quick();
    cr_assert_eq(fetch_file(u, body_sha, p, &o), ERR_OK, "%s", err_msg());
    char r[64];
    range_seen(r, sizeof r);
    cr_assert_str_eq(r, "bytes=123457-");
    cr_assert_eq(requests(), 1);
    expect_body(p);
    cr_assert_eq(fsize(part), -1);
    free(u);
    free(p);
    free(part);
}

Test(fetch, complete_part_file_answered_416_is_verified_and_kept) {
    char *u = url("/file"), *p = out_path("out.bin"), *part = part_of(p);
    cr_assert_eq(tu_write_file(part, body, BODY_N), 0);
    fetch_opts o = quick();
    cr_assert_eq(fetch_file(u, body_sha, p, &o), ERR_OK, "%s", err_msg());
    expect_body(p);
    free(u);
    free(p);
    free(part);
}

Test(fetch, server_ignoring_range_restarts_from_zero) {
    char *u = url("/norange"), *p = out_path("out.bin"), *part = part_of(p);
    char junk[5000];
    memset(junk, 'J', sizeof junk); // not a prefix of the body: must be overwritten
    cr_assert_eq(tu_write_file(part, junk, sizeof junk), 0);
    fetch_opts o = quick();
    cr_assert_eq(fetch_file(u, body_sha, p, &o), ERR_OK, "%s", err_msg());
    char r[64];
    range_seen(r, sizeof r);
    cr_assert_str_eq(r, "bytes=5000-", "the client still asked for a range");
    expect_body(p);
    free(u);
    free(p);
    free(part);
}

Test(fetch, dropped_connection_keeps_the_part_and_a_later_run_resumes) {
    char *u = url("/drop"), *p = out_path("out.bin"), *part = part_of(p);
    fetch_opts o = quick();
    int rc = fetch_file(u, body_sha, p, &o);
    cr_assert_eq(rc, ERR_NET, "%s: %s", err_str(rc), err_msg());
    cr_assert(strstr(err_msg(), u) && strstr(err_msg(), p), "%s", err_msg());
    cr_assert_eq(fsize(p), -1, "no final file after a failed download");
    long have = fsize(part);
    cr_assert(have >= 0 && have <= BODY_N / 2, ".part holds %ld bytes", have);
    free(u);
    u = url("/file");
    cr_assert_eq(fetch_file(u, body_sha, p, &o), ERR_OK, "%s", err_msg());
    if (have > 0) {
        char r[64], want[64];
        range_seen(r, sizeof r);
        snprintf(want, sizeof want, "bytes=%ld-", have);
        cr_assert_str_eq(r, want);
    }
    expect_body(p);
    free(u);
    free(p);
    free(part);
}

Test(fetch, checksum_mismatch_fails_and_leaves_no_file) {
    char *u = url("/file"), *p = out_path("out.bin"), *part = part_of(p);
    char wrong[65];
    memcpy(wrong, body_sha, 65);
    wrong[0] = wrong[0] == '0' ? '1' : '0';
    fetch_opts o = quick();
    int rc = fetch_file(u, wrong, p, &o);
    cr_assert_eq(rc, ERR_FORMAT, "%s: %s", err_str(rc), err_msg());
    cr_assert(strstr(err_msg(), "mismatch") && strstr(err_msg(), p) && strstr(err_msg(), u), "%s",
              err_msg());
    cr_assert(strstr(err_msg(), body_sha), "message gives the actual sum: %s", err_msg());
    cr_assert_eq(fsize(p), -1);
    cr_assert_eq(fsize(part), -1, "a wrong download is not kept for resuming");
    free(u);
    free(p);
    free(part);
}

Test(fetch, http_errors_fail_naming_the_url_and_leave_no_file) {
    const char *paths[] = {"/missing", "/error"};
    const char *codes[] = {"404", "500"};
    for (int i = 0; i < 2; i++) {
        char *u = url(paths[i]), *p = out_path("out.bin"), *part = part_of(p);
        fetch_opts o = quick();
        int rc = fetch_file(u, body_sha, p, &o);
        cr_assert_eq(rc, ERR_NET, "%s: %s", err_str(rc), err_msg());
        cr_assert(strstr(err_msg(), codes[i]) && strstr(err_msg(), u) && strstr(err_msg(), p), "%s",
                  err_msg());
        cr_assert_eq(fsize(p), -1);
        cr_assert_eq(fsize(part), -1, "the error page is not saved");
        free(u);
        free(p);
        free(part);
    }
}

Test(fetch, refused_connection_and_bad_checksum_text_are_errors) {
    char *u = url("/file"), *p = out_path("out.bin");
    fetch_opts o = quick();
    cr_assert_eq(fetch_file(u, "abc", p, &o), ERR_INVAL);
    cr_assert_eq(fetch_file(u, NULL, p, &o), ERR_INVAL);
    MHD_stop_daemon(daemon_); // nothing listens on the port any more
    daemon_ = NULL;
    int rc = fetch_file(u, body_sha, p, &o);
    cr_assert(rc == ERR_NET || rc == ERR_TIMEOUT, "%s: %s", err_str(rc), err_msg());
    cr_assert(strstr(err_msg(), u), "%s", err_msg());
    cr_assert_eq(fsize(p), -1);
    free(u);
    free(p);
}

Test(fetch, progress_without_a_tty_prints_tenth_lines) {
    char *u = url("/file"), *p = out_path("out.bin"), *log = out_path("stderr.txt");
    fflush(stderr);
    int saved = dup(2);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    dup2(fileno(f), 2);
    fetch_opts o = quick();
    o.progress = 1;
    int rc = fetch_file(u, body_sha, p, &o);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fclose(f);
    cr_assert_eq(rc, ERR_OK, "%s", err_msg());
    char *text;
    cr_assert_eq(tu_read_file(log, &text, NULL), 0);
    cr_assert(strstr(text, "progress=100%"), "stderr was: %s", text);
    cr_assert(!strchr(text, '\r'), "no bar redraws when stderr is not a tty");
    int lines = 0;
    for (char *s = text; (s = strstr(s, "progress=")); s++)
        lines++;
    cr_assert(lines >= 1 && lines <= 10, "%d progress lines", lines);
    free(text);
    free(u);
    free(p);
    free(log);
}

Test(fetch, cli_downloads_and_reports_http_errors) {
    char *u = url("/file"), *p = out_path("cli.bin"), *out = NULL;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s data fetch %s --sha256 %s -o %s --quiet", tu_spartan(), u,
             body_sha, p);
    cr_assert_eq(tu_run(cmd, 20, &out), 0, "%s", out);
    expect_body(p);
    free(out);
    free(u);
    u = url("/missing");
    snprintf(cmd, sizeof cmd, "%s data fetch %s --sha256 %s -o %s.2 --retries 0", tu_spartan(), u,
             body_sha, p);
    cr_assert_eq(tu_run(cmd, 20, &out), 1, "%s", out);
    cr_assert(strstr(out, "404") && strstr(out, u), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s data fetch %s -o %s.3", tu_spartan(), u, p);
    cr_assert_eq(tu_run(cmd, 20, &out), 2, "missing --sha256 is a usage error: %s", out);
    free(out);
    free(u);
    free(p);
}
