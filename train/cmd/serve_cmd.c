// serve_cmd.c: `spartan serve`: parse the options, start the server (srv.h) and wait for
// SIGINT/SIGTERM, then shut it down cleanly. The signals are blocked before any thread starts,
// so every thread inherits the mask and only the main thread receives them (sigwait).
#include "train/cmd/serve_cmd.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "infer/srv.h"
#include "train/base/args.h"
#include "train/base/err.h"
#include "train/base/log.h"

static void usage(FILE *f, const args_opt *opts, int n_opts) {
    fprintf(f, "usage: spartan serve CKPT|DIR [--host H] [--port P] [--api-key KEY] [--threads N]\n"
               "                     [--max-batch B] [--reload-ms MS] [--name NAME]\n\n"
               "Serves a checkpoint over HTTP: OpenAI-compatible /v1/completions,\n"
               "/v1/chat/completions and /v1/models, Ollama-compatible /api/generate, /api/chat\n"
               "and /api/tags, plus /health, /metrics and a chat page at /. Given a folder, it\n"
               "serves the newest ckpt_*.h5 and reloads when a newer one appears.\n\n"
               "options:\n");
    args_print_table(f, opts, n_opts);
}

int serve_cmd_main(int argc, char **argv) {
    const char *ckpt = NULL, *host = "127.0.0.1", *key = NULL, *name = NULL, *level = "info";
    int port = 8080, threads = 0, max_batch = 8, reload_ms = 1000, n_pos = 0;
    const args_opt opts[] = {
        {"--host", NULL, ARGS_STR, &host, 0, 0, NULL, "H", "address to bind (default 127.0.0.1)"},
        {"--port", "-p", ARGS_INT, &port, 0, 65535, NULL, "P",
         "TCP port, 0 = any free port (default 8080)"},
        {"--api-key", NULL, ARGS_STR, &key, 0, 0, NULL, "KEY",
         "require 'Authorization: Bearer KEY' (all but /health; the page: /?key=KEY)\n"
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
    if (rc) {
        fprintf(stderr, "spartan serve: %s (see spartan serve --help)\n", err_msg());
        return 2;
    }
    log_set_level(log_parse_level(level));
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
                    .threads = threads,
                    .max_batch = max_batch,
                    .reload_ms = reload_ms <= 0 ? -1 : reload_ms,
                    .model_name = name};
    srv_server *s = NULL;
    if ((rc = srv_create(&s, ckpt, &c))) {
        fprintf(stderr, "spartan serve: %s\n", err_msg());
        return 1;
    }
    // The URL line on stdout, for people and scripts (srv also logs it on stderr).
    printf("spartan serve: listening on http://%s%s%s:%d/\n", strchr(host, ':') ? "[" : "", host,
           strchr(host, ':') ? "]" : "", srv_port(s));
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    LOG_I("srv", "%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    srv_destroy(s);
    return 0;
}
