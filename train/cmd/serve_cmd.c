// serve_cmd.c: `spartan serve`: parse the options, start the server (srv.h) and wait for
// SIGINT/SIGTERM, then shut it down cleanly. The signals are blocked before any thread starts,
// so every thread inherits the mask and only the main thread receives them (sigwait). The API
// key comes from --api-key, --api-key-file or $SPARTAN_API_KEY, one at most, and takes one path
// from there (srv_config.api_key).
#include "train/cmd/serve_cmd.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "infer/srv.h"
#include "train/base/args.h"
#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"

static void usage(FILE *f, const args_opt *opts, int n_opts) {
    fprintf(f,
            "usage: spartan serve CKPT|DIR [--host H] [--port P] [--tls-cert FILE --tls-key FILE]\n"
            "                     [--api-key-file FILE | --api-key KEY] [--threads N]\n"
            "                     [--max-batch B] [--reload-ms MS] [--name NAME]\n\n"
            "Serves a checkpoint over HTTP: OpenAI-compatible /v1/completions,\n"
            "/v1/chat/completions and /v1/models, Ollama-compatible /api/generate, /api/chat\n"
            "and /api/tags, plus /health, /metrics and a chat page at /. Given a folder, it\n"
            "serves the newest ckpt_*.h5 and reloads when a newer one appears. With a\n"
            "certificate it serves HTTPS only (spartan keys add DIR localhost makes one).\n\n"
            "options:\n");
    args_print_table(f, opts, n_opts);
}

// read_key_file reads the API key from the first line of path (trailing white space, the
// newline included, stripped). The file stays out of `ps`, unlike --api-key. Returns ERR_OK
// (the caller frees *out), or the error naming the flag and the file: unreadable, empty, or a
// NUL byte in the key.
static int read_key_file(const char *path, char **out) {
    char *text = NULL;
    size_t n = 0;
    int rc = sys_read_file(path, 65536, "--api-key-file", &text, &n);
    if (rc) return rc;
    const char *nl = memchr(text, '\n', n);
    size_t len = nl ? (size_t)(nl - text) : n;
    if (memchr(text, 0, len))
        rc = err_set(ERR_INVAL, "--api-key-file %s: the key holds a NUL byte", path);
    while (len > 0 && isspace((unsigned char)text[len - 1]))
        len--;
    if (!rc && len == 0)
        rc = err_set(ERR_INVAL, "--api-key-file %s: the first line is empty (it holds the key)",
                     path);
    struct stat st;
    if (!rc && stat(path, &st) == 0 && (st.st_mode & 077))
        LOG_W("srv", "--api-key-file %s can be read by others (mode %03o): chmod 600 %s", path,
              (unsigned)(st.st_mode & 0777), path);
    if (rc) {
        OPENSSL_cleanse(text, n);
        free(text);
        return rc;
    }
    text[len] = 0;
    *out = text;
    return ERR_OK;
}

int serve_cmd_main(int argc, char **argv) {
    const char *ckpt = NULL, *host = "127.0.0.1", *key = NULL, *name = NULL, *level = "info";
    const char *key_file = NULL, *tls_cert = NULL, *tls_key = NULL;
    int port = 8080, threads = 0, max_batch = 8, reload_ms = 1000, n_pos = 0;
    const args_opt opts[] = {
        {"--host", NULL, ARGS_STR, &host, 0, 0, NULL, "H", "address to bind (default 127.0.0.1)"},
        {"--port", "-p", ARGS_INT, &port, 0, 65535, NULL, "P",
         "TCP port, 0 = any free port (default 8080)"},
        {"--tls-cert", NULL, ARGS_STR, &tls_cert, 0, 0, NULL, "FILE",
         "serve HTTPS with this PEM certificate (needs --tls-key)"},
        {"--tls-key", NULL, ARGS_STR, &tls_key, 0, 0, NULL, "FILE",
         "the certificate's PEM private key, mode 0600 (needs --tls-cert)"},
        {"--api-key-file", NULL, ARGS_STR, &key_file, 0, 0, NULL, "FILE",
         "require 'Authorization: Bearer KEY' (all but /health; the page: /?key=KEY)\n"
         "with KEY the first line of FILE, which keeps it out of `ps`"},
        {"--api-key", NULL, ARGS_STR, &key, 0, 0, NULL, "KEY",
         "the same with KEY given here (visible in `ps`)\n"
         "(default: $SPARTAN_API_KEY, else no key)"},
        {"--threads", NULL, ARGS_INT, &threads, 0, 1024, NULL, "N",
         "compute threads, 0 = all cores (default 0)"},
        {"--max-batch", NULL, ARGS_INT, &max_batch, 1, 4096, NULL, "B",
         "sequences decoded together; more requests wait (default 8)"},
        {"--reload-ms", NULL, ARGS_INT, &reload_ms, -1, 86400000, NULL, "MS",
         "poll a checkpoint folder every MS ms, 0 or -1 = never\n(default 1000)"},
        {"--name", NULL, ARGS_STR, &name, 0, 0, NULL, "NAME",
         "model name in the API (default: the file or folder name)"},
        {"--log-level", NULL, ARGS_STR, &level, 0, 0, NULL, "L",
         "error, warn, info or debug (default info)"},
    };
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), &ckpt, 1, &n_pos);
    if (rc == ARGS_HELP) {
        usage(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    if (!rc && !ckpt) rc = err_set(ERR_INVAL, "no checkpoint given");
    if (!rc && log_parse_level(level) < 0)
        rc = err_set(ERR_INVAL, "--log-level: '%s' is not error, warn, info or debug", level);
    if (!rc && key && key_file) rc = err_set(ERR_INVAL, "--api-key and --api-key-file: give one");
    if (rc) {
        fprintf(stderr, "spartan serve: %s (see spartan serve --help)\n", err_msg());
        return 2;
    }
    log_set_level(log_parse_level(level));
    char *file_key = NULL;
    if (key_file && (rc = read_key_file(key_file, &file_key))) {
        fprintf(stderr, "spartan serve: %s\n", err_msg());
        return 1;
    }
    if (file_key) key = file_key;
    if (!key) key = getenv("SPARTAN_API_KEY");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN); // a client that hangs up must not kill the server
    srv_config c = {.host = host,
                    .port = port,
                    .api_key = key,
                    .tls_cert = tls_cert,
                    .tls_key = tls_key,
                    .threads = threads,
                    .max_batch = max_batch,
                    .reload_ms = reload_ms <= 0 ? -1 : reload_ms,
                    .model_name = name};
    srv_server *s = NULL;
    rc = srv_create(&s, ckpt, &c); // keeps only the key's digest
    if (file_key) OPENSSL_cleanse(file_key, strlen(file_key));
    free(file_key);
    if (rc) {
        fprintf(stderr, "spartan serve: %s\n", err_msg());
        return 1;
    }
    if (!cfg_loopback_host(host) && (!tls_cert || !key))
        LOG_W("serve",
              "listening on %s beyond loopback %s: give --tls-cert/--tls-key and "
              "--api-key-file",
              host,
              !tls_cert && !key ? "in plain HTTP and without an API key: anyone who can reach it "
                                  "can use it and read the traffic"
              : !tls_cert       ? "in plain HTTP: the API key and the traffic can be read"
                                : "without an API key: anyone who can reach it can use it");
    // The URL line on stdout, for people and scripts (srv also logs it on stderr).
    printf("spartan serve: listening on http%s://%s%s%s:%d/\n", tls_cert ? "s" : "",
           strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", srv_port(s));
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    LOG_I("srv", "%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    srv_destroy(s);
    return 0;
}
