// keys_cmd.h: `spartan keys init|add|show DIR`: the cluster's CA and the peers' certificates
// (train/base/pki.h).
#ifndef KEYS_CMD_H
#define KEYS_CMD_H

// keys_cmd_main runs `spartan keys init DIR [--days N] [--name CN]`, `spartan keys add DIR NAME
// [--days N]` or `spartan keys show DIR`; argv[0] is "keys". Returns 0 on success, 1 when it
// failed (the reason on stderr; show: a certificate that is expired, not yet valid or not signed
// by the CA), 2 for a bad command line.
int keys_cmd_main(int argc, char **argv);

#endif
