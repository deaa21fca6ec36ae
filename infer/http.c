// http.c: the GET-only server of http.h and the daemon set-up shared with srv.c. One daemon
// thread (libmicrohttpd's internal polling thread) runs every callback; the routes are fixed
// at http_create, so nothing is shared with the creating thread but the daemon itself.
#include "infer/http.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "infer/http_impl.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"

struct http_server {
    struct MHD_Daemon *mhd;
    int port;
    size_t max_body;
    const char *tag;
    http_route *routes;
    int n_routes;
};

struct http_request {
    struct MHD_Connection *conn;
};

// The last message libmicrohttpd logged on this thread: MHD_start_daemon logs why it failed on
// the caller's thread, and http_mhd_start reads it there.
static _Thread_local char mhd_last[512];

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    vsnprintf(mhd_last, sizeof mhd_last, fmt, ap);
    size_t n = strlen(mhd_last);
    while (n && mhd_last[n - 1] == '\n')
        mhd_last[--n] = 0;
    LOG_D(cls, "microhttpd: %s", mhd_last);
}

int http_mhd_start(struct MHD_Daemon **out, int *bound, const char *host, int port, unsigned flags,
                   MHD_AccessHandlerCallback fn, void *cls, struct MHD_OptionItem *opts,
                   const char *tag) {
    char where[300];
    int v6 = strchr(host, ':') != NULL;
    snprintf(where, sizeof where, "%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
    if (port < 0 || port > 65535)
        return err_set(ERR_INVAL, "cannot listen on %s: not a port (0-65535)", where);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int g = getaddrinfo(host, ps, &hints, &ai);
    if (g) return err_set(ERR_NET, "cannot listen on %s: %s", where, gai_strerror(g));
    // libmicrohttpd's start says only that it failed: bind the address once ourselves (with
    // SO_REUSEADDR, as libmicrohttpd does) to report the reason, e.g. "Address already in use".
    int fd = sys_socket(ai->ai_family, SOCK_STREAM, 0), one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return err_set(ERR_NET, "cannot listen on %s: %s", where, strerror(e));
    }
    close(fd);
    flags |= MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    static struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    mhd_last[0] = 0;
    struct MHD_Daemon *d =
        MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, fn, cls, MHD_OPTION_SOCK_ADDR,
                         ai->ai_addr, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, (void *)tag,
                         MHD_OPTION_ARRAY, opts ? opts : none, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) // the address was free a moment ago: give libmicrohttpd's last message
        return err_set(ERR_NET, "cannot listen on %s: %s", where,
                       mhd_last[0] ? mhd_last : "libmicrohttpd failed to start");
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *bound = info ? info->port : port;
    *out = d;
    return ERR_OK;
}

static enum MHD_Result send_reply(struct MHD_Connection *c, int status, const char *ctype,
                                  char *body, size_t len, int cors, const char *allow) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) err_oom("libmicrohttpd response", 0);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (cors) MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
    if (allow) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result plain(struct MHD_Connection *c, int status, const char *msg,
                             const char *allow) {
    char *b = xstrdup(msg);
    return send_reply(c, status, "text/plain; charset=utf-8", b, strlen(b), 0, allow);
}

// on_request: libmicrohttpd calls it once with the headers (*con_cls NULL), then once per chunk
// of body, then once more; a GET with a body is read (and dropped) before it is answered, unless
// it announces one above max_body.
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls) {
    http_server *s = cls;
    size_t *seen = *con_cls;
    (void)version;
    (void)upload_data;
    if (!seen) {
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->max_body)
            return plain(c, 413, "request body too large\n", NULL);
        *con_cls = seen = xcalloc(1, sizeof *seen);
        return MHD_YES;
    }
    if (*upload_size) {
        *seen += *upload_size;
        *upload_size = 0;
        return MHD_YES;
    }
    if (*seen > s->max_body) return plain(c, 413, "request body too large\n", NULL);
    const http_route *r = NULL;
    for (int i = 0; i < s->n_routes && !r; i++)
        if (!strcmp(url, s->routes[i].path)) r = &s->routes[i];
    if (!r) return plain(c, 404, "no such page\n", NULL);
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return plain(c, 405, "only GET here\n", "GET, HEAD");
    http_request rq = {.conn = c};
    http_reply rep = {.status = 200, .ctype = "text/plain; charset=utf-8"};
    r->fn(r->arg, &rq, &rep);
    if (!rep.body) rep.body = xstrdup("");
    return send_reply(c, rep.status, rep.ctype, rep.body, rep.len ? rep.len : strlen(rep.body),
                      r->cors, NULL);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)c;
    (void)toe;
    free(*con_cls);
    *con_cls = NULL;
}

int http_create(http_server **out, const http_opts *o) {
    if (o->n_routes < 0 || (o->n_routes && !o->routes))
        return err_set(ERR_INVAL, "http: %d routes without a table", o->n_routes);
    http_server *s = xcalloc(1, sizeof *s);
    s->max_body = o->max_body ? o->max_body : 65536;
    s->tag = o->tag ? o->tag : "http";
    s->n_routes = o->n_routes;
    s->routes = xcalloc((size_t)(o->n_routes ? o->n_routes : 1), sizeof *s->routes);
    if (o->n_routes) memcpy(s->routes, o->routes, (size_t)o->n_routes * sizeof *s->routes);
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, 64, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, 30, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    int rc =
        http_mhd_start(&s->mhd, &s->port, o->host && *o->host ? o->host : "127.0.0.1", o->port,
                       MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, on_request, s, opts, s->tag);
    if (rc) {
        http_destroy(s);
        return rc;
    }
    *out = s;
    return ERR_OK;
}

int http_port(const http_server *s) { return s->port; }

const char *http_query(const http_request *rq, const char *key) {
    return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, key);
}

void http_destroy(http_server *s) {
    if (!s) return;
    if (s->mhd) MHD_stop_daemon(s->mhd);
    free(s->routes);
    free(s);
}
