// fetch.h: download one URL to a file with libcurl: resume from FILE.part with an HTTP Range
// request, verify SHA-256 (OpenSSL EVP), then fsync and rename FILE.part to FILE atomically, so
// FILE exists only with the expected bytes. One call is one transfer; calls on different
// threads with different files are independent.
#ifndef FETCH_H
#define FETCH_H

#include <stddef.h>

typedef struct {
    long connect_timeout_s; // CURLOPT_CONNECTTIMEOUT (default 20)
    long low_speed_bytes;   // abort when slower than this many bytes/s ... (default 1)
    long low_speed_time_s;  // ... for this many seconds (default 30)
    long timeout_s;         // limit on one whole attempt, 0 = none (default 0)
    int retries;            // extra attempts after a network error or 5xx, resuming (default 2)
    int progress;           // 1: progress on stderr, a bar on a tty, else a line every ~10%
} fetch_opts;

// fetch_opts_default fills o with the defaults above (progress 0).
void fetch_opts_default(fetch_opts *o);

// fetch_file downloads url to path and checks it against sha256_hex (64 hex digits). Bytes
// arrive in path + ".part"; an existing .part is resumed with `Range: bytes=<size>-`, and a
// server that answers 200 instead of 206 is handled by starting over. If path already holds
// the expected bytes nothing is downloaded. opts may be NULL (defaults). Returns ERR_OK;
// ERR_INVAL (bad checksum text); ERR_NET (HTTP error status, connection failure: the .part is
// kept for a later resume); ERR_TIMEOUT (connect or low-speed limit); ERR_FORMAT (checksum
// mismatch: the .part is deleted); ERR_IO (local file). On any error path is not created.
// Messages name the URL and the file.
int fetch_file(const char *url, const char *sha256_hex, const char *path, const fetch_opts *opts);

// fetch_sha256_file writes the SHA-256 of the file at path as 64 lowercase hex digits and a NUL
// into hex. Returns ERR_OK or ERR_IO naming the file.
int fetch_sha256_file(const char *path, char hex[65]);

// fetch_get reads the body of url (http://...) into *body (NUL-terminated, *len bytes; the caller
// frees it), with the whole transfer bounded by timeout_ms (connecting included) and the body by
// max_bytes. *status is the HTTP status (any: a 404 still returns its body). Returns ERR_OK,
// ERR_TIMEOUT, ERR_NET (refused, unreachable, a body above max_bytes; the message names the URL
// and curl's reason) or ERR_INVAL (a URL curl refuses). Any thread.
int fetch_get(const char *url, int timeout_ms, size_t max_bytes, char **body, size_t *len,
              long *status);

#endif
