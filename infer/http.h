// http.h: a small HTTP server for GET endpoints on libmicrohttpd: bind host:port (0: an
// ephemeral port), route exact paths to callbacks that return (status, content type, body), and
// refuse everything else (404, 405 but for GET and HEAD, 413 for a request body above max_body).
// For status pages and metrics; `spartan serve` (srv.h) shares its daemon set-up but keeps its
// own request handling (POST bodies, streams). One daemon thread answers the requests;
// http_create and http_destroy are called from one thread.
#ifndef HTTP_H
#define HTTP_H

#include <stddef.h>

typedef struct http_server http_server;
typedef struct http_request http_request;

// What a route's callback answers. The server fills status 200, ctype "text/plain;
// charset=utf-8" and body NULL before the call.
typedef struct http_reply {
    int status;        // HTTP status
    const char *ctype; // content type: a static string
    char *body;        // heap bytes (xmalloc/xstrdup); the server frees them after sending
    size_t len;        // bytes of body (0: strlen(body))
} http_reply;

// http_get_fn answers one GET (or HEAD) of its route on the daemon thread; arg is the route's.
// It must not block for long: every request waits for the one before it.
typedef void (*http_get_fn)(void *arg, const http_request *rq, http_reply *out);

typedef struct http_route {
    const char *path; // exact path, without the query ("/status")
    http_get_fn fn;
    void *arg;
    int cors; // 1: add "Access-Control-Allow-Origin: *" (pages of other origins may read it)
} http_route;

// http_opts: the server's settings. Zero fields take the default in brackets.
typedef struct http_opts {
    const char *host;         // address to bind: an IPv4/IPv6 literal or a name ["127.0.0.1"]
    int port;                 // TCP port, 0 = an ephemeral one (http_port says which) [0]
    const http_route *routes; // n_routes routes, copied (path and arg are borrowed for the
    int n_routes;             // server's life)
    size_t max_body;          // request bodies above this get 413 [65536]
    const char *tag;          // module name in log lines ["http"]
} http_opts;

// http_create binds o->host:o->port and starts the daemon thread. On success the caller owns
// *out (http_destroy). Returns ERR_OK, ERR_INVAL for a bad setting, or ERR_NET ("cannot listen
// on HOST:PORT: " and the reason, e.g. "Address already in use", or the resolver's error).
int http_create(http_server **out, const http_opts *o);

// http_port returns the bound TCP port (the ephemeral one with port 0). Any thread.
int http_port(const http_server *s);

// http_query returns the value of the query argument key of rq ("?peers=a,b"), or NULL. The
// string is libmicrohttpd's, valid during the callback. Daemon thread, inside a callback.
const char *http_query(const http_request *rq, const char *key);

// http_destroy stops accepting connections, waits for the request being answered, stops the
// daemon thread and frees everything. NULL-safe.
void http_destroy(http_server *s);

#endif
