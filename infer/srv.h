// srv.h: `spartan serve`'s HTTP server: OpenAI-compatible (/v1/completions,
// /v1/chat/completions, /v1/models) and Ollama-compatible (/api/generate, /api/chat, /api/tags)
// endpoints, /health, Prometheus /metrics and a chat page at /, over libmicrohttpd (HTTP, or
// HTTPS with a certificate; an optional API key guards all but /health). Requests are
// decoded by one scheduler thread with continuous batching on a KV-cache engine (kv.h); a folder
// is polled and its newest checkpoint hot-reloaded while requests in flight finish on the old
// weights. A stream whose client reads slower than it is generated pauses (backpressure): a
// stalled client holds its slot and about stream_buffer bytes, never the whole generation.
// srv_create/srv_destroy are called from one thread; the server runs its own threads.
#ifndef SRV_H
#define SRV_H

#include <stddef.h>
#include <stdint.h>

#include "infer/sample.h"

typedef struct srv_server srv_server;

// srv_config: the server's settings. Zero fields take the default in brackets.
typedef struct srv_config {
    const char *host;       // address to bind: an IPv4/IPv6 literal or a name ["127.0.0.1"]
    int port;               // TCP port, 0 = an ephemeral port (see srv_port) [0]
    const char *api_key;    // if non-NULL and non-empty, "Authorization: Bearer KEY" is required
                            // on every endpoint except /health (compared in constant time)
    const char *tls_cert;   // PEM certificate file (a chain: the server's first): serve HTTPS
    const char *tls_key;    // its PEM private key, mode 0600; both or neither [neither: HTTP]
    int threads;            // compute threads of the scheduler (OpenMP/BLAS), 0 = all cores
    int max_batch;          // sequences decoded together (KV slots) [8]
    int reload_ms;          // poll interval of a checkpoint folder, < 0 = never [1000]
    const char *model_name; // name in /v1/models and /api/tags [basename of the path, no .h5]
    int stream_buffer;      // bytes of a stream's events that may wait for a slow client; at
                            // this many its generation pauses until the client reads. Also
                            // each connection's socket send buffer [65536]
} srv_config;

// srv_create loads the checkpoint at path (a file, or a folder: its newest complete
// ckpt_*.h5, then polled for newer ones), binds host:port and starts serving. c may be NULL for
// all defaults; its strings are copied. With tls_cert and tls_key it serves HTTPS only (TLS
// through libmicrohttpd's GnuTLS); the two files are checked before anything starts
// (pki_check_pair), and messages name them by their `spartan serve` flags, --tls-cert and
// --tls-key. On success the caller owns *out (srv_destroy). Returns ERR_OK, the errors of
// gpt_load / tok_from_spec (naming the file), ERR_INVAL for a bad setting (naming it: one of
// tls_cert and tls_key without the other, a libmicrohttpd built without TLS, a key file others
// can read), ERR_IO or ERR_FORMAT for a TLS file that cannot be read, is not PEM or holds a key
// that is not the certificate's, or ERR_NET when the address cannot be bound ("cannot listen
// on HOST:PORT: " and the reason, e.g. "Address already in use").
int srv_create(srv_server **out, const char *path, const srv_config *c);

// srv_port returns the bound TCP port (useful with port 0).
int srv_port(const srv_server *s);

// srv_step returns the "step" attribute of the checkpoint new requests are served by.
int64_t srv_step(const srv_server *s);

// srv_destroy stops accepting requests, ends streams in flight, joins the threads and frees
// everything. NULL-safe.
void srv_destroy(srv_server *s);

#define SRV_MAX_STOP 5 // stop strings of a request: 4 from its body plus the chat template's own

// srv_request: the body of a generation request, parsed (srv_parse_request): what to generate
// and how, before tokenization. The chat routes' messages are rendered into text by the chat
// template ("System: ...", "User: ...", "Assistant: ..." lines, then "Assistant:").
typedef struct srv_request {
    int stream;               // 1: answer with a stream of events (SSE or NDJSON)
    int max_tokens;           // tokens to generate at most, 1 .. 1e9
    sample_params sp;         // temperature, top_k, top_p, seed
    char *stop[SRV_MAX_STOP]; // n_stop stop strings (the chat routes add "\nUser:")
    int n_stop;
    char *text;      // the prompt text, NUL-terminated ("" when the body has none)
    size_t text_len; // its bytes (the NUL not counted)
} srv_request;

// srv_parse_request parses the JSON body(n) of a POST to path, one of the generation routes
// "/v1/completions", "/v1/chat/completions", "/api/generate" and "/api/chat", as the server does,
// for the model called name (a "model" field must be name or name:latest); seed is the seed of a
// request that gives none. Returns ERR_OK, and the caller owns r's strings (srv_request_free), or
// ERR_INVAL for any other path and for a malformed, misplaced or out-of-range field, with a
// message naming it in msg (msgn bytes; the server answers 400 with it) and r empty. Pure: any
// thread.
int srv_parse_request(srv_request *r, const char *path, const char *name, uint64_t seed,
                      const char *body, size_t n, char *msg, size_t msgn);

// srv_request_free frees r's strings and empties it. Safe on an empty request.
void srv_request_free(srv_request *r);

#endif
