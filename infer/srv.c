// srv.c: the server object: libmicrohttpd daemon (one internal polling thread, suspend/resume;
// started by http_mhd_start, over TLS when given a certificate), routing, API-key check, body
// limits, static replies, and the reload thread that polls a checkpoint folder and swaps in its
// newest checkpoint. Generation requests are parsed on the daemon thread, bound to the current
// model (one reference each, so a reload never frees weights in use) and queued for the
// scheduler (srv_sched.c). A stream's bytes reach the socket through a content-reader callback
// that suspends the connection when it has nothing to send; the scheduler resumes it, and pauses
// a stream whose unsent bytes reach stream_buffer. Threads: caller (create/destroy), daemon,
// scheduler, reloader.
#include "infer/srv.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "infer/http_impl.h"
#include "infer/srv_impl.h"
#include "train/base/ckdir.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/pki.h"
#include "train/base/rng.h"
#include "train/base/sys.h"

// Per-connection state of one HTTP request (libmicrohttpd's con_cls).
typedef struct {
    int ep;
    char *body; // request body so far, body_len of body_cap bytes
    size_t body_len, body_cap;
    int too_large;
    srv_req *req; // a generation request (holds the connection's reference)
} conn_ctx;

// ---------------------------------------------------------------------------------------------
// Models and requests

void srv_model_release(srv_server *s, srv_model *m) {
    if (!m || --m->refs > 0) return;
    (void)s;
    LOG_I("srv", "unloaded step=%lld path=%s", (long long)m->step, m->path);
    kv_destroy(m->kv);
    gpt_destroy(m->gpt);
    tok_destroy(m->tok);
    free(m->path);
    free(m->logits);
    free(m->scratch);
    free(m->tp);
    free(m->slots);
    free(m->ntok);
    free(m);
}

void srv_req_release(srv_server *s, srv_req *r) {
    if (--r->refs > 0) return;
    srv_model_release(s, r->model);
    srv_api_req_free(r);
    free(r->gen);
    free(r->out);
    free(r->body);
    free(r);
}

void srv_req_append(srv_req *r, const char *text, size_t n) {
    if (r->out_off == r->out_len) r->out_off = r->out_len = 0;
    if (r->out_len + n > r->out_cap) {
        if (r->out_off) { // reuse the consumed front first
            memmove(r->out, r->out + r->out_off, r->out_len - r->out_off);
            r->out_len -= r->out_off;
            r->out_off = 0;
        }
        if (r->out_len + n > r->out_cap) {
            r->out_cap = 2 * (r->out_len + n) + 256;
            r->out = xrealloc(r->out, r->out_cap);
        }
    }
    memcpy(r->out + r->out_len, text, n);
    r->out_len += n;
}

// load_model loads the checkpoint file at path with its tokenizer and a decode engine.
static int load_model(srv_server *s, const char *path, srv_model **out) {
    srv_model *m = xcalloc(1, sizeof *m);
    char *spec = NULL;
    double t0 = sys_now_ms();
    int rc = gpt_load(&m->gpt, path, 1, 0, &spec, &m->step);
    if (!rc) rc = tok_from_spec(&m->tok, spec);
    free(spec);
    if (!rc) {
        const cfg_model *mc = gpt_config(m->gpt);
        m->V = mc->vocab_size;
        m->T = mc->block_size;
        if (tok_vocab_size(m->tok) > m->V)
            rc = err_set(ERR_FORMAT, "%s: tokenizer has %d tokens but the model only %d", path,
                         tok_vocab_size(m->tok), m->V);
    }
    if (!rc) {
        // decodes of every slot plus one prompt chunk of up to 256 tokens per kv_step
        m->budget = s->max_batch + (m->T < 256 ? m->T : 256);
        rc = kv_create(&m->kv, m->gpt, s->max_batch, m->budget);
    }
    if (rc) {
        kv_destroy(m->kv);
        gpt_destroy(m->gpt);
        tok_destroy(m->tok);
        free(m);
        return rc;
    }
    m->eot = tok_eot(m->tok);
    m->path = xstrdup(path);
    m->loaded = (long long)sys_wall_time().tv_sec;
    struct stat st;
    m->bytes = stat(path, &st) == 0 ? (long long)st.st_size : 0;
    m->logits = xmalloc((size_t)s->max_batch * (size_t)m->V * sizeof(float));
    m->scratch = xmalloc(2 * (size_t)m->V * sizeof(float));
    m->tp = xcalloc((size_t)s->max_batch, sizeof(int32_t *));
    m->slots = xcalloc((size_t)s->max_batch, sizeof(int));
    m->ntok = xcalloc((size_t)s->max_batch, sizeof(int));
    m->refs = 1;
    LOG_I("srv", "loaded step=%lld path=%s params=%zu ms=%.0f", (long long)m->step, path,
          gpt_n_params(m->gpt), sys_now_ms() - t0);
    *out = m;
    return ERR_OK;
}

// ---------------------------------------------------------------------------------------------
// Replies

// reply queues a response with body (owned; freed by libmicrohttpd) and counts it.
static enum MHD_Result reply(srv_server *s, struct MHD_Connection *c, int ep, int status,
                             const char *ctype, char *body) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) err_oom("libmicrohttpd response", 0);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 405)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
                                ep == SRV_EP_ROOT || ep == SRV_EP_HEALTH || ep == SRV_EP_MODELS ||
                                        ep == SRV_EP_TAGS || ep == SRV_EP_METRICS
                                    ? "GET"
                                    : "POST");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    srv_metrics_request(&s->metrics, ep, status);
    return ok;
}

static enum MHD_Result reply_error(srv_server *s, struct MHD_Connection *c, int ep, int status,
                                   const char *type, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static enum MHD_Result reply_error(srv_server *s, struct MHD_Connection *c, int ep, int status,
                                   const char *type, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return reply(s, c, ep, status, "application/json", srv_api_error(ep, msg, type));
}

// ---------------------------------------------------------------------------------------------
// Routing (the table is srv_route's, in srv_api.c)

// key_digest writes the SHA-256 of key into d. Keys are compared as digests: both are 32 bytes
// whatever the key's length, so CRYPTO_memcmp compares every byte of equal lengths, and the time
// a check takes depends only on the length of what the client sent, never on the key's length
// or on how much of it matched.
static void key_digest(const char *key, unsigned char d[32]) {
    unsigned n = 32;
    if (EVP_Digest(key, strlen(key), d, &n, EVP_sha256(), NULL) != 1)
        err_oom("SHA-256 of the API key", 0); // libcrypto fails here only without memory
}

// authorized checks "Authorization: Bearer KEY" (compared in constant time, key_digest). The
// chat page may give the key as "/?key=KEY" instead: a browser cannot send a header when it
// opens a page.
static int authorized(const srv_server *s, struct MHD_Connection *c, int ep) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (h && strncasecmp(h, "Bearer ", 7) == 0) {
        h += 7;
    } else if (ep == SRV_EP_ROOT) {
        h = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "key");
        if (!h) return 0;
    } else {
        return 0;
    }
    unsigned char d[32];
    key_digest(h, d);
    return CRYPTO_memcmp(d, s->key_sha256, sizeof d) == 0;
}

// stream_reader hands a stream's formatted bytes to libmicrohttpd (which calls it only when the
// socket can take more); with nothing to send it suspends the connection until the scheduler
// resumes it (srv_sched.c deliver).
static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max) {
    srv_req *r = cls;
    srv_server *s = r->srv;
    (void)pos;
    pthread_mutex_lock(&s->mu);
    if (r->out_off < r->out_len) {
        size_t n = r->out_len - r->out_off;
        if (n > max) n = max;
        memcpy(out, r->out + r->out_off, n);
        r->out_off += n;
        if (r->paused && r->out_len - r->out_off < s->stream_buffer)
            pthread_cond_signal(&s->wake); // the client caught up: generate again
        pthread_mutex_unlock(&s->mu);
        return (ssize_t)n;
    }
    if (r->done || s->stopping) {
        pthread_mutex_unlock(&s->mu);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

// start_generation parses a generation request, queues it for the scheduler and either starts
// the stream or suspends the connection until the whole answer is ready.
static enum MHD_Result start_generation(srv_server *s, struct MHD_Connection *c, conn_ctx *x) {
    srv_req *r = xcalloc(1, sizeof *r);
    r->srv = s;
    r->ep = x->ep;
    r->slot = -1;
    r->created = (long long)sys_wall_time().tv_sec;
    r->t_arrive = sys_now_ms();
    pthread_mutex_lock(&s->mu);
    srv_model *m = s->cur;
    m->refs++;
    uint64_t id = s->next_id++;
    pthread_mutex_unlock(&s->mu);
    r->model = m;
    r->refs = 1;
    snprintf(r->id, sizeof r->id, "%s-%llu", x->ep == SRV_EP_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)id);
    r->sp.seed = rng_u64((uint64_t)r->created, id) >> 1; // used when the request has no seed
    char msg[1024];
    if (srv_api_parse(r, s, m, x->body ? x->body : "", x->body_len, msg, sizeof msg)) {
        pthread_mutex_lock(&s->mu);
        srv_req_release(s, r);
        pthread_mutex_unlock(&s->mu);
        return reply_error(s, c, x->ep, 400, "invalid_request_error", "%s", msg);
    }
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        srv_req_release(s, r);
        pthread_mutex_unlock(&s->mu);
        return reply_error(s, c, x->ep, 503, "server_error", "server shutting down");
    }
    r->conn = c;
    r->refs = 2; // the connection's and the scheduler's
    x->req = r;
    s->n_conn_reqs++;
    if (s->q_tail)
        s->q_tail->next = r;
    else
        s->q_head = r;
    s->q_tail = r;
    s->n_queued++;
    pthread_cond_signal(&s->wake);
    if (!r->stream) { // answered when the scheduler resumes us (finish_generation)
        r->suspended = 1;
        MHD_suspend_connection(c);
        pthread_mutex_unlock(&s->mu);
        return MHD_YES;
    }
    char *start = srv_api_stream_start(r, s->name);
    if (start) srv_req_append(r, start, strlen(start));
    free(start);
    pthread_mutex_unlock(&s->mu);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, r, NULL);
    if (!resp) err_oom("libmicrohttpd response", 0);
    int ollama = x->ep == SRV_EP_GENERATE || x->ep == SRV_EP_OCHAT;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            ollama ? "application/x-ndjson" : "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result ok = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    srv_metrics_request(&s->metrics, x->ep, 200);
    return ok;
}

// finish_generation sends a non-streaming answer once the scheduler has resumed us.
static enum MHD_Result finish_generation(srv_server *s, struct MHD_Connection *c, conn_ctx *x) {
    srv_req *r = x->req;
    pthread_mutex_lock(&s->mu);
    if (!r->done) { // not ready (a spurious wake-up): wait again
        r->suspended = 1;
        MHD_suspend_connection(c);
        pthread_mutex_unlock(&s->mu);
        return MHD_YES;
    }
    char *body = r->body;
    int status = r->status;
    r->body = NULL;
    pthread_mutex_unlock(&s->mu);
    if (!body) return MHD_NO; // already answered
    return reply(s, c, x->ep, status, "application/json", body);
}

// dispatch answers a complete request (headers and body read).
static enum MHD_Result dispatch(srv_server *s, struct MHD_Connection *c, conn_ctx *x,
                                const char *method) {
    int ep = x->ep;
    if (ep == SRV_EP_OTHER)
        return reply_error(s, c, ep, 404, "not_found_error", "no such endpoint");
    int post = !strcmp(method, "POST"), get = !strcmp(method, "GET");
    if (srv_is_generation(ep) ? !post : !get)
        return reply_error(s, c, ep, 405, "invalid_request_error", "method %s not allowed here",
                           method);
    if (s->has_key && ep != SRV_EP_HEALTH && !authorized(s, c, ep))
        return reply_error(s, c, ep, 401, "authentication_error",
                           ep == SRV_EP_ROOT
                               ? "missing or wrong API key (open /?key=KEY)"
                               : "missing or wrong API key (Authorization: Bearer KEY)");
    if (x->too_large)
        return reply_error(s, c, ep, 413, "invalid_request_error",
                           "request body larger than %d bytes", SRV_MAX_BODY);
    if (srv_is_generation(ep)) return start_generation(s, c, x);
    char *body = NULL;
    const char *ctype = "application/json";
    pthread_mutex_lock(&s->mu);
    const srv_model *m = s->cur;
    switch (ep) {
    case SRV_EP_ROOT:
        body = xstrdup(srv_chat_page);
        ctype = "text/html; charset=utf-8";
        break;
    case SRV_EP_HEALTH: {
        char b[128];
        snprintf(b, sizeof b, "{\"status\":\"ok\",\"step\":%lld}", (long long)m->step);
        body = xstrdup(b);
        break;
    }
    case SRV_EP_MODELS: body = srv_api_models(s, m); break;
    case SRV_EP_TAGS: body = srv_api_tags(s, m); break;
    default: { // SRV_EP_METRICS
        int64_t step = m->step;
        int active = s->n_active, queued = s->n_queued, paused = s->n_paused;
        pthread_mutex_unlock(&s->mu);
        body = srv_metrics_render(&s->metrics, step, active, queued, paused, s->max_batch);
        // this scrape is counted after rendering: it shows up in the next one
        return reply(s, c, ep, 200, "text/plain; version=0.0.4", body);
    }
    }
    pthread_mutex_unlock(&s->mu);
    return reply(s, c, ep, 200, ctype, body);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls) {
    srv_server *s = cls;
    conn_ctx *x = *con_cls;
    (void)version;
    if (!x) { // headers are in; the body (if any) follows in later calls
        x = xcalloc(1, sizeof *x);
        x->ep = srv_route(url);
        *con_cls = x;
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > SRV_MAX_BODY) { // refuse before reading it
            x->too_large = 1;
            return reply_error(s, c, x->ep, 413, "invalid_request_error",
                               "request body larger than %d bytes", SRV_MAX_BODY);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (x->body_len + *upload_size > SRV_MAX_BODY) {
            x->too_large = 1; // keep reading (and dropping) so the client gets the 413
        } else {
            if (x->body_len + *upload_size + 1 > x->body_cap) {
                x->body_cap = 2 * (x->body_len + *upload_size) + 1;
                if (x->body_cap > SRV_MAX_BODY + 1) x->body_cap = SRV_MAX_BODY + 1;
                x->body = xrealloc(x->body, x->body_cap);
            }
            memcpy(x->body + x->body_len, upload_data, *upload_size);
            x->body_len += *upload_size;
            x->body[x->body_len] = 0;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (x->req) return finish_generation(s, c, x);
    return dispatch(s, c, x, method);
}

// on_completed runs when libmicrohttpd is done with a request (answered, or the client left):
// the generation (if any) loses its connection and the scheduler drops it at its next step.
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    srv_server *s = cls;
    conn_ctx *x = *con_cls;
    (void)c;
    (void)toe;
    if (!x) return;
    if (x->req) {
        pthread_mutex_lock(&s->mu);
        x->req->conn_gone = 1;
        x->req->conn = NULL;
        if (!x->req->done) pthread_cond_signal(&s->wake);
        srv_req_release(s, x->req);
        if (--s->n_conn_reqs == 0) pthread_cond_broadcast(&s->conns);
        pthread_mutex_unlock(&s->mu);
    }
    free(x->body);
    free(x);
    *con_cls = NULL;
}

// on_connection caps each connection's socket send buffer at stream_buffer. Otherwise Linux grows
// it up to tcp_wmem's 4 MiB, which holds a whole generation for a client that stopped reading,
// and the scheduler's backpressure (srv_sched.c) would never see it.
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    srv_server *s = cls;
    (void)socket_context;
    if (toe != MHD_CONNECTION_NOTIFY_STARTED) return;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int n = (int)s->stream_buffer;
    if (ci) setsockopt(ci->connect_fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof n); // best effort
}

// ---------------------------------------------------------------------------------------------
// Hot reload

// reload_main polls the folder every reload_ms and swaps in a newer checkpoint. A checkpoint
// that fails to load is refused once (logged) and retried only if its file changes.
static void *reload_main(void *arg) {
    srv_server *s = arg;
    char *refused = NULL;
    struct stat refused_st = {0};
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        struct timespec dl = sys_deadline(s->reload_ms);
        pthread_cond_timedwait(&s->rwake, &s->mu, &dl);
        if (s->stopping) break;
        char *cur = xstrdup(s->cur->path);
        pthread_mutex_unlock(&s->mu);
        char *newest = NULL;
        struct stat st = {0};
        int fresh = ckdir_resolve(s->path, &newest) == ERR_OK && strcmp(newest, cur) != 0 &&
                    stat(newest, &st) == 0;
        if (fresh && refused && !strcmp(refused, newest) && st.st_size == refused_st.st_size &&
            st.st_mtime == refused_st.st_mtime)
            fresh = 0;
        srv_model *m = NULL;
        if (fresh && load_model(s, newest, &m) != ERR_OK) {
            LOG_W("srv", "reload refused: %s (still serving %s)", err_msg(), cur);
            srv_metrics_add(&s->metrics, SRV_M_RELOAD_FAILS, 1);
            free(refused);
            refused = newest;
            refused_st = st;
            newest = NULL;
        }
        free(newest);
        free(cur);
        pthread_mutex_lock(&s->mu);
        if (m) {
            srv_model *old = s->cur;
            s->cur = m; // new requests bind to m; old ones keep theirs
            LOG_I("srv", "reloaded step=%lld (was %lld) path=%s", (long long)m->step,
                  (long long)old->step, m->path);
            srv_model_release(s, old);
            srv_metrics_add(&s->metrics, SRV_M_RELOADS, 1);
        }
        srv_metrics_add(&s->metrics, SRV_M_RELOAD_POLLS, 1); // counted once its outcome shows
    }
    pthread_mutex_unlock(&s->mu);
    free(refused);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

// default_name is the last path component without a trailing ".h5" (caller frees).
static char *default_name(const char *path) {
    char *p = xstrdup(path);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = 0;
    char *b = strrchr(p, '/');
    char *name = xstrdup(b && b[1] ? b + 1 : p);
    free(p);
    n = strlen(name);
    if (n > 3 && !strcmp(name + n - 3, ".h5")) name[n - 3] = 0;
    return name;
}

// load_tls checks the certificate and key files and keeps their PEM text for libmicrohttpd,
// which parses it again with GnuTLS when the daemon starts. No files: plain HTTP.
static int load_tls(srv_server *s, const char *cert, const char *key) {
    enum { PEM_MAX = 1 << 20 }; // a certificate chain or key larger than this is not ours
    if (!cert && !key) return ERR_OK;
    if (!cert || !key)
        return err_set(ERR_INVAL, "%s needs %s too (HTTPS takes a certificate and its key)",
                       cert ? "--tls-cert" : "--tls-key", cert ? "--tls-key" : "--tls-cert");
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
        return err_set(ERR_INVAL,
                       "--tls-cert: this libmicrohttpd (%s) was built without TLS support; "
                       "install one built with GnuTLS (Debian: libmicrohttpd12)",
                       MHD_get_version());
    int rc = pki_check_pair(cert, key, "--tls-cert", "--tls-key");
    size_t n = 0;
    if (!rc) rc = sys_read_file(cert, PEM_MAX, "--tls-cert", &s->tls_cert, &n);
    if (!rc) rc = sys_read_file(key, PEM_MAX, "--tls-key", &s->tls_key, &n);
    return rc;
}

static int start_daemon(srv_server *s, int port) {
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, s},
        {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, s},
        {MHD_OPTION_CONNECTION_LIMIT, 1000, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, 600, NULL},
        // the TLS options come last: for plain HTTP the list ends before them
        {s->tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, s->tls_cert},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, s->tls_key},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"},
        {MHD_OPTION_END, 0, NULL},
    };
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME;
    if (s->tls_cert) flags |= MHD_USE_TLS;
    return http_mhd_start(&s->mhd, &s->port, s->host, port, flags, on_request, s, opts, "srv");
}

int srv_create(srv_server **out, const char *path, const srv_config *c) {
    srv_config d = {0};
    if (!c) c = &d;
    if (c->port < 0 || c->port > 65535)
        return err_set(ERR_INVAL, "port %d is not in [0, 65535]", c->port);
    if (c->max_batch < 0 || c->max_batch > 4096)
        return err_set(ERR_INVAL, "max_batch %d is not in [1, 4096]", c->max_batch);
    if (c->threads < 0) return err_set(ERR_INVAL, "threads %d is negative", c->threads);
    if (c->stream_buffer < 0)
        return err_set(ERR_INVAL, "stream_buffer %d is negative", c->stream_buffer);
    struct stat st;
    if (stat(path, &st) != 0) return err_set(ERR_IO, "%s: %s", path, strerror(errno));
    srv_server *s = xcalloc(1, sizeof *s);
    s->path = xstrdup(path);
    s->is_dir = S_ISDIR(st.st_mode);
    s->host = xstrdup(c->host && *c->host ? c->host : "127.0.0.1");
    s->has_key = c->api_key && *c->api_key;
    if (s->has_key) key_digest(c->api_key, s->key_sha256);
    s->name = c->model_name && *c->model_name ? xstrdup(c->model_name) : default_name(path);
    s->threads = c->threads;
    s->max_batch = c->max_batch ? c->max_batch : 8;
    s->reload_ms = c->reload_ms ? c->reload_ms : 1000;
    s->stream_buffer = c->stream_buffer ? (size_t)c->stream_buffer : 65536;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    sys_cond_init(&s->rwake);
    sys_cond_init(&s->conns);
    srv_metrics_init(&s->metrics);
    char *file = NULL;
    int rc = load_tls(s, c->tls_cert && *c->tls_cert ? c->tls_cert : NULL,
                      c->tls_key && *c->tls_key ? c->tls_key : NULL);
    if (!rc) rc = ckdir_resolve(path, &file);
    if (!rc) rc = load_model(s, file, &s->cur);
    free(file);
    if (!rc) {
        rc = pthread_create(&s->sched, NULL, srv_sched_main, s)
                 ? err_set(ERR_NOMEM, "cannot start the scheduler thread")
                 : ERR_OK;
        s->sched_started = rc == ERR_OK;
    }
    if (!rc) rc = start_daemon(s, c->port);
    if (!rc && s->is_dir && s->reload_ms > 0) {
        rc = pthread_create(&s->reloader, NULL, reload_main, s)
                 ? err_set(ERR_NOMEM, "cannot start the reload thread")
                 : ERR_OK;
        s->reloader_started = rc == ERR_OK;
    }
    if (rc) {
        srv_destroy(s);
        return rc;
    }
    LOG_I("srv", "serving model=%s step=%lld on http%s://%s%s%s:%d/ max_batch=%d%s", s->name,
          (long long)srv_step(s), s->tls_cert ? "s" : "", strchr(s->host, ':') ? "[" : "", s->host,
          strchr(s->host, ':') ? "]" : "", s->port, s->max_batch,
          s->has_key ? " api_key=required" : "");
    *out = s;
    return ERR_OK;
}

int srv_port(const srv_server *s) { return s->port; }

int64_t srv_step(const srv_server *s) {
    srv_server *w = (srv_server *)s; // the lock is not part of the logical state
    pthread_mutex_lock(&w->mu);
    int64_t step = s->cur->step;
    pthread_mutex_unlock(&w->mu);
    return step;
}

void srv_destroy(srv_server *s) {
    if (!s) return;
    if (s->mhd) { // no new connections
        MHD_socket fd = MHD_quiesce_daemon(s->mhd);
        if (fd != MHD_INVALID_SOCKET) close(fd);
    }
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->wake);
    pthread_cond_broadcast(&s->rwake);
    pthread_mutex_unlock(&s->mu);
    if (s->reloader_started) pthread_join(s->reloader, NULL);
    if (s->sched_started) pthread_join(s->sched, NULL); // ends every request, resumes them
    // Let the resumed connections send their last bytes: libmicrohttpd must not be stopped
    // with a suspended connection. At most 2 s, in case a client stopped reading; on_completed
    // signals s->conns as each one ends.
    struct timespec dl = sys_deadline(2000);
    pthread_mutex_lock(&s->mu);
    while (s->mhd && s->n_conn_reqs > 0)
        if (pthread_cond_timedwait(&s->conns, &s->mu, &dl) == ETIMEDOUT) break;
    pthread_mutex_unlock(&s->mu);
    if (s->mhd) MHD_stop_daemon(s->mhd);
    pthread_mutex_lock(&s->mu);
    srv_model_release(s, s->cur);
    pthread_mutex_unlock(&s->mu);
    srv_metrics_fini(&s->metrics);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->rwake);
    pthread_cond_destroy(&s->conns);
    pthread_mutex_destroy(&s->mu);
    free(s->path);
    free(s->host);
    if (s->tls_key) OPENSSL_cleanse(s->tls_key, strlen(s->tls_key)); // no key text lingers
    free(s->tls_key);
    free(s->tls_cert);
    free(s->name);
    free(s);
}
