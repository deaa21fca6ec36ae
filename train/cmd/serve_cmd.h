// serve_cmd.h: `spartan serve CKPT|DIR [--host H] [--port P] [--tls-cert FILE --tls-key FILE]
// [--api-key-file FILE | --api-key KEY] [--threads N] [--max-batch B] [--reload-ms MS]
// [--name NAME]`: the HTTP(S) inference server (srv.h).
#ifndef SERVE_CMD_H
#define SERVE_CMD_H

// serve_cmd_main runs `spartan serve`; argv[0] is "serve". Returns the exit code once SIGINT or
// SIGTERM has shut the server down (0), or 1/2 for a load or usage error.
int serve_cmd_main(int argc, char **argv);

#endif
