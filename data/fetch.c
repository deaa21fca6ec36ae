// data/fetch.c: resumable, checksummed HTTP download with libcurl and OpenSSL's EVP SHA-256.
// Invariant: bytes only ever go to FILE.part; FILE appears by rename after the checksum
// matched and the data was fsynced, so a reader never sees a partial or wrong FILE.
// Any thread may call fetch_file; all transfer state lives in the call (curl's global init runs
// once through pthread_once).
#include "data/fetch.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"

void fetch_opts_default(fetch_opts *o) {
    *o = (fetch_opts){.connect_timeout_s = 20,
                      .low_speed_bytes = 1,
                      .low_speed_time_s = 30,
                      .timeout_s = 0,
                      .retries = 2,
                      .progress = 0};
}

int fetch_sha256_file(const char *path, char hex[65]) {
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(ERR_IO, "fetch: cannot open '%s': %s", path, strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        fclose(f);
        EVP_MD_CTX_free(ctx);
        return err_set(ERR_IO, "fetch: OpenSSL could not start SHA-256 for '%s'", path);
    }
    enum { BUF = 1 << 16 };
    unsigned char *buf = xmalloc(BUF);
    size_t r;
    while ((r = fread(buf, 1, BUF, f)) > 0)
        EVP_DigestUpdate(ctx, buf, r);
    int bad = ferror(f);
    fclose(f);
    free(buf);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    if (bad) return err_set(ERR_IO, "fetch: read error on '%s'", path);
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    hex[64] = 0;
    return ERR_OK;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

// State of one attempt, shared with curl's callbacks.
typedef struct {
    const char *url, *part;
    CURL *h;
    FILE *f;             // opened on the first body byte, so an HTTP error creates nothing
    uint64_t offset;     // size of .part when the request was made (Range start)
    uint64_t base;       // bytes already in .part before this attempt's body: offset or 0
    int64_t range_start; // start of the last Content-Range header, -1 if none
    int started;         // the first body byte arrived and f is open
    int rc;              // ERR_* set inside a callback (curl then reports a write error)
    // progress
    int tty;
    double t0, last_draw;
    int drew_done; // the 100% bar is drawn once
    int last_decile;
    uint64_t last_line_bytes;
} xfer;

static size_t on_header(char *line, size_t size, size_t n, void *arg) {
    xfer *x = arg;
    size_t len = size * n;
    if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) x->range_start = -1; // a new response
    if (len > 14 && strncasecmp(line, "Content-Range:", 14) == 0) {
        char tmp[128];
        size_t k = len - 14 < sizeof tmp - 1 ? len - 14 : sizeof tmp - 1;
        memcpy(tmp, line + 14, k);
        tmp[k] = 0;
        unsigned long long s;
        if (sscanf(tmp, " bytes %llu-", &s) == 1) x->range_start = (int64_t)s;
    }
    return len;
}

// start_body decides, from the status of the response that carries the body, whether to append
// to .part (206 at our offset) or to start it over (200: the server ignored Range).
static int start_body(xfer *x) {
    long code = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
    const char *mode = "wb";
    x->base = 0;
    if (code == 206) {
        if (x->range_start == (int64_t)x->offset && x->offset > 0) {
            mode = "ab";
            x->base = x->offset;
        } else if (x->range_start != 0) {
            return err_set(ERR_NET,
                           "fetch: %s answered Range bytes=%llu- with Content-Range "
                           "starting at %lld",
                           x->url, (unsigned long long)x->offset, (long long)x->range_start);
        }
    } else if (code != 200) {
        return err_set(ERR_NET, "fetch: unexpected HTTP status %ld from %s", code, x->url);
    } else if (x->offset > 0) {
        LOG_I("fetch", "server ignored Range, restarting url=%s", x->url);
    }
    x->f = fopen(x->part, mode);
    if (!x->f) return err_set(ERR_IO, "fetch: cannot write '%s': %s", x->part, strerror(errno));
    x->started = 1;
    return ERR_OK;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg) {
    xfer *x = arg;
    size_t len = size * n;
    if (!x->started && (x->rc = start_body(x)) != ERR_OK) return 0;
    if (fwrite(data, 1, len, x->f) != len) {
        x->rc = err_set(ERR_IO, "fetch: cannot write '%s': %s", x->part, strerror(errno));
        return 0;
    }
    return len;
}

static void human(double bytes, char *out, size_t cap) {
    snprintf(out, cap, "%.1f MiB", bytes / (1024.0 * 1024.0));
}

// on_progress draws a bar (tty, at most 10 times a second) or logs a line per 10% (otherwise;
// every 16 MiB when the size is unknown). Sizes include what .part held before.
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
    (void)ultotal;
    (void)ulnow;
    xfer *x = arg;
    if (!x->started) return 0;
    double have = (double)x->base + (double)dlnow;
    double total = dltotal > 0 ? (double)x->base + (double)dltotal : 0;
    double t = sys_now_s();
    double rate = (double)dlnow / (t - x->t0 > 1e-3 ? t - x->t0 : 1e-3);
    char hb[32], tb[32], rb[32];
    human(have, hb, sizeof hb);
    human(total, tb, sizeof tb);
    human(rate, rb, sizeof rb);
    if (x->tty) {
        int done = total > 0 && have >= total;
        if ((t - x->last_draw < 0.1 && !done) || (done && x->drew_done)) return 0;
        x->last_draw = t;
        x->drew_done = done;
        if (total > 0) {
            int pct = (int)(100.0 * have / total);
            char bar[31];
            int fill = pct * 30 / 100;
            for (int i = 0; i < 30; i++)
                bar[i] = i < fill ? '#' : ' ';
            bar[30] = 0;
            fprintf(stderr, "\r%3d%% [%s] %s / %s  %s/s ", pct, bar, hb, tb, rb);
        } else {
            fprintf(stderr, "\r%s  %s/s ", hb, rb);
        }
        return 0;
    }
    if (total > 0) {
        int decile = (int)(10.0 * have / total);
        if (decile > x->last_decile) {
            x->last_decile = decile;
            LOG_I("fetch", "progress=%d%% have=%s total=%s rate=%s/s", decile * 10, hb, tb, rb);
        }
    } else if (have >= (double)x->last_line_bytes + 16.0 * 1024 * 1024) {
        x->last_line_bytes = (uint64_t)have;
        LOG_I("fetch", "have=%s rate=%s/s", hb, rb);
    }
    return 0;
}

static uint64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

// attempt runs one request for url into part (= path.part), starting at the current size of
// part. Returns ERR_OK or an error; *http gets the HTTP status of a failed request (0 if none),
// *retry says whether another attempt may help.
static int attempt(const char *url, const char *path, const char *part, const fetch_opts *o,
                   long *http, int *retry) {
    *http = 0;
    *retry = 0;
    CURL *h = curl_easy_init();
    if (!h) return err_set(ERR_NET, "fetch: curl_easy_init failed for %s", url);
    xfer x = {.url = url, .part = part, .h = h, .range_start = -1};
    x.offset = exists(part) ? file_size(part) : 0;
    x.tty = o->progress && isatty(STDERR_FILENO);
    x.t0 = sys_now_s();
    char range[32];
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#endif
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L); // >= 400: no body reaches on_body
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "spartan-fetch/1");
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, o->connect_timeout_s);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, o->low_speed_bytes);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, o->low_speed_time_s);
    if (o->timeout_s > 0) curl_easy_setopt(h, CURLOPT_TIMEOUT, o->timeout_s);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &x);
    if (o->progress) {
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &x);
    }
    if (x.offset > 0) {
        // CURLOPT_RANGE rather than RESUME_FROM: curl itself would fail on a 200 answer, and
        // start_body handles that case by starting over.
        snprintf(range, sizeof range, "%llu-", (unsigned long long)x.offset);
        curl_easy_setopt(h, CURLOPT_RANGE, range);
        LOG_I("fetch", "resuming url=%s from=%llu", url, (unsigned long long)x.offset);
    }
    CURLcode res = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    if (x.tty && x.started) fputc('\n', stderr);

    int rc = ERR_OK;
    if (res == CURLE_OK && !x.started) x.rc = start_body(&x); // an empty body still makes .part
    if (x.rc != ERR_OK) {
        rc = x.rc; // already described by err_set in a callback
        *retry = rc == ERR_NET;
    } else if (res == CURLE_HTTP_RETURNED_ERROR) {
        *http = code;
        *retry = code >= 500 || code == 429;
        rc = err_set(ERR_NET, "fetch: HTTP %ld from %s ('%s' not written)", code, url, path);
    } else if (res == CURLE_OPERATION_TIMEDOUT) {
        *retry = 1;
        rc = err_set(ERR_TIMEOUT, "fetch: %s -> '%s': %s", url, path,
                     errbuf[0] ? errbuf : curl_easy_strerror(res));
    } else if (res != CURLE_OK) {
        *retry = 1;
        rc = err_set(ERR_NET, "fetch: %s -> '%s': %s%s", url, path,
                     errbuf[0] ? errbuf : curl_easy_strerror(res),
                     x.started ? " (partial download kept for resume)" : "");
    }
    if (x.f) {
        // Keep what arrived: a later attempt resumes from it. fsync so a crash cannot leave a
        // .part whose size covers bytes that never reached the disk.
        int bad = fflush(x.f) != 0 || sys_fsync_durable(fileno(x.f)) != 0;
        bad |= fclose(x.f) != 0;
        if (bad && rc == ERR_OK)
            rc = err_set(ERR_IO, "fetch: cannot write '%s': %s", part, strerror(errno));
    }
    curl_easy_cleanup(h);
    return rc;
}

static int valid_hex(const char *s) {
    if (!s || strlen(s) != 64) return 0;
    for (int i = 0; i < 64; i++)
        if (!strchr("0123456789abcdefABCDEF", s[i])) return 0;
    return 1;
}

int fetch_file(const char *url, const char *sha256_hex, const char *path, const fetch_opts *opts) {
    fetch_opts def;
    if (!opts) {
        fetch_opts_default(&def);
        opts = &def;
    }
    if (!valid_hex(sha256_hex))
        return err_set(ERR_INVAL, "fetch: --sha256 must be 64 hex digits, got \"%.80s\"",
                       sha256_hex ? sha256_hex : "(null)");
    char want[65];
    for (int i = 0; i < 64; i++)
        want[i] = (char)(sha256_hex[i] | 0x20); // lowercase
    want[64] = 0;
    pthread_once(&curl_once, curl_init_once);

    char got[65];
    if (exists(path) && fetch_sha256_file(path, got) == ERR_OK && strcmp(got, want) == 0) {
        LOG_I("fetch", "already present file=%s sha256=ok", path);
        return ERR_OK;
    }
    size_t plen = strlen(path) + sizeof ".part";
    char *part = xmalloc(plen);
    snprintf(part, plen, "%s.part", path);

    int rc = ERR_OK, restarted = 0;
    for (int i = 0; i <= opts->retries; i++) {
        long http;
        int retry;
        rc = attempt(url, path, part, opts, &http, &retry);
        if (rc == ERR_OK) break;
        if (http == 416 && exists(part) && !restarted) {
            // Range not satisfiable: .part is probably complete already. If it is not the
            // right file, throw it away and start over once (not counted as a retry).
            if (fetch_sha256_file(part, got) == ERR_OK && strcmp(got, want) == 0) {
                rc = ERR_OK;
                break;
            }
            unlink(part);
            restarted = 1;
            i--;
            continue;
        }
        if (!retry || i == opts->retries) break;
        LOG_W("fetch", "attempt=%d failed, retrying: %s", i + 1, err_msg());
        sys_sleep_ms(1000 * (i + 1 < 5 ? i + 1 : 5)); // back-off: the wait is the point
    }
    if (rc == ERR_OK) rc = fetch_sha256_file(part, got);
    if (rc == ERR_OK && strcmp(got, want) != 0) {
        unlink(part); // resuming a wrong file cannot fix it
        rc = err_set(ERR_FORMAT,
                     "fetch: checksum mismatch for %s -> '%s': expected sha256 %s, "
                     "got %s (download deleted)",
                     url, path, want, got);
    }
    if (rc == ERR_OK && rename(part, path) != 0)
        rc = err_set(ERR_IO, "fetch: cannot rename '%s' to '%s': %s", part, path, strerror(errno));
    if (rc == ERR_OK) (void)sys_fsync_parent(path); // best effort: the rename is already done
    free(part);
    return rc;
}

// The body of one fetch_get so far.
typedef struct {
    char *buf;
    size_t len, cap, max;
} mem_body;

static size_t mem_write(char *data, size_t size, size_t nmemb, void *arg) {
    mem_body *b = arg;
    size_t n = size * nmemb;
    if (b->len + n > b->max) return 0; // curl reports CURLE_WRITE_ERROR
    if (b->len + n + 1 > b->cap) {
        b->cap = 2 * (b->len + n) + 1;
        b->buf = xrealloc(b->buf, b->cap);
    }
    memcpy(b->buf + b->len, data, n);
    b->len += n;
    b->buf[b->len] = 0;
    return n;
}

int fetch_get(const char *url, int timeout_ms, size_t max_bytes, char **body, size_t *len,
              long *status) {
    pthread_once(&curl_once, curl_init_once);
    CURL *h = curl_easy_init();
    if (!h) return err_set(ERR_NET, "fetch: curl_easy_init failed for %s", url);
    mem_body b = {.buf = xcalloc(1, 1), .cap = 1, .max = max_bytes};
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, mem_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode res = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(h);
    int rc = ERR_OK;
    const char *why = errbuf[0] ? errbuf : curl_easy_strerror(res);
    if (res == CURLE_WRITE_ERROR)
        rc = err_set(ERR_NET, "%s: body larger than %zu bytes", url, max_bytes);
    else if (res == CURLE_OPERATION_TIMEDOUT)
        rc = err_set(ERR_TIMEOUT, "%s: %s", url, why);
    else if (res == CURLE_URL_MALFORMAT || res == CURLE_UNSUPPORTED_PROTOCOL)
        rc = err_set(ERR_INVAL, "%s: %s", url, why);
    else if (res != CURLE_OK)
        rc = err_set(ERR_NET, "%s: %s", url, why);
    if (rc) {
        free(b.buf);
        return rc;
    }
    *body = b.buf;
    if (len) *len = b.len;
    if (status) *status = code;
    return ERR_OK;
}
