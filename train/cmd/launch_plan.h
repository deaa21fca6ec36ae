// launch_plan.h: what `spartan launch` runs where. From a hostfile and the launch options it
// plans the peers (rank, host, address, port) and writes every shell command line of the job:
// the ssh prefix of each host, and the scripts that run there (preflight, shipping the source
// and building it, shipping the data and the config, the reachability probe, a peer, stopping
// detached peers, fetching a checkpoint). Pure text: nothing here runs a command, so the
// commands can be printed (--dry-run) and tested. Any thread.
//
// On a host, everything lives under its folder D (hostfile dir=, else --dir, else "spartan" in
// the login's home; "~/" is expanded there):
//   D/src/REV/        the source tree of revision REV, built in place (.built once done)
//   D/data/ID/        the data folder's files (.complete once whole)
//   D/runs/NAME/      config.ini, r<rank>/ (train.out_dir), r<rank>.log and .pid (--detach),
//                     and with keys tls/ (0700): ca.crt, CERT.crt and CERT.key
// Peers run with D/src/REV as their working directory, so the relative paths of a config (the
// tokenizer files under data/) mean what they mean in the launcher's checkout.
#ifndef LAUNCH_PLAN_H
#define LAUNCH_PLAN_H

#include <stdio.h>

#include "train/cmd/hostfile.h"

#define LAUNCH_DEFAULT_SSH  "ssh -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5"
#define LAUNCH_DEFAULT_DIR  "spartan"
#define LAUNCH_DEFAULT_PORT 29500 // the first peer port of a host entry without port=

typedef struct launch_opts {
    const char *ssh;     // the ssh program and its options [LAUNCH_DEFAULT_SSH]
    const char *dir;     // the folder of hosts without dir= [LAUNCH_DEFAULT_DIR]
    const char *name;    // the run's name: D/runs/NAME (letters, digits, ._-)
    const char *rev;     // the source revision (a git tree id)
    const char *data_id; // the data folder's id ("" = no data folder to ship)
    const char **sets;   // the user's --set assignments, passed to every peer
    int n_sets;
    int install_deps; // run scripts/install-deps there before building
    int detach;       // peers outlive the launcher's connection (logs in D/runs/NAME)
    int resume;       // peers continue from their newest checkpoint
    int overwrite;    // peers start afresh in an out_dir that holds an earlier run
    int status_port;  // > 0: peer slot s of a host serves its status on status_port + s
    // A private folder (mode 0700) for OpenSSH connection sharing, or NULL: every ssh command
    // to a host then goes through one connection (ControlMaster=auto, ControlPath=DIR/%C,
    // ControlPersist), so only the first one pays for the login. See launch_ssh_can_share.
    const char *ssh_control;
    // A local cluster folder of `spartan keys`, or NULL: host h gets the CA's certificate and
    // its own certificate and key from it (never the CA key; launch_cmd_keys), and its peers run
    // with net.tls on them.
    const char *keys;
} launch_opts;

// One peer of the job. Ranks go through the hosts in hostfile order, slot by slot.
typedef struct launch_peer {
    int rank, host, slot;
    int port;       // the peer-layer port it listens on
    int threads;    // compute threads (0 = the peer's default); the launcher sets it
    char addr[256]; // the address the others reach it at: the entry's first ip, else its host
} launch_peer;

typedef struct launch_plan {
    const hostfile *hf; // borrowed
    launch_opts o;      // strings borrowed
    launch_peer *peers; // hf->peers of them, by rank
    int n;
    char join[300]; // rank 0's address: every peer's --join
} launch_plan;

// launch_plan_make plans the peers of hf with options o (both borrowed for the plan's life).
// Returns ERR_OK, or ERR_INVAL for a bad option (a run name with other characters, a port range
// over 65535, naming the host entry). On success the caller owns p (launch_plan_free).
int launch_plan_make(launch_plan *p, const hostfile *hf, const launch_opts *o);

// launch_plan_free frees the plan's peers. NULL-safe.
void launch_plan_free(launch_plan *p);

// The commands below are malloc'd NUL-terminated /bin/sh command lines for the launcher's
// machine (the caller frees them); each runs ssh to the host with the script quoted for it.

// launch_cmd_preflight: the ssh command whose stdin is the script of launch_preflight_script.
char *launch_cmd_preflight(const launch_plan *p, int host);

// launch_preflight_script: what the preflight runs there (fed on stdin, so that the dependency
// check is the checkout's own scripts/check-deps, given as check_deps): prints
// "preflight KEY=VALUE" lines (os, arch, cores, disk_kb, built 0|1, data 0|1, missing=TOOL),
// then the check-deps lines (✓/✗ NAME); exits non-zero when something is missing.
char *launch_preflight_script(const launch_plan *p, int host, const char *check_deps);

// launch_cmd_build ships the source revision (git archive of commit in the checkout src) and
// builds it there (with --install-deps, scripts/install-deps first); on a failed build it prints
// the last lines of the build log.
char *launch_cmd_build(const launch_plan *p, int host, const char *src, const char *commit);

// launch_cmd_data ships the files[0..n) of the local folder dir into D/data/ID.
char *launch_cmd_data(const launch_plan *p, int host, const char *dir, const char *const *files,
                      int n);

// launch_cmd_config copies the local config file into D/runs/NAME/config.ini.
char *launch_cmd_config(const launch_plan *p, int host, const char *config);

// launch_key_name writes the certificate name of host h into buf (n bytes): its hostfile host
// name with every character other than letters, digits, '.', '-' and '_' as '-' (cut to
// PKI_NAME_MAX), and "-<h>" appended when an earlier host has the same name.
void launch_key_name(const launch_plan *p, int h, char *buf, size_t n);

// launch_needs_keys returns 1 if a peer of p is reached at an address that is not loopback
// (127.x.x.x, localhost, ::1), so its links need keys (net.tls), else 0.
int launch_needs_keys(const launch_plan *p);

// launch_cmd_keys ships host h's certificate and key and the CA certificate from the local folder
// o.keys into D/runs/NAME/tls (made 0700, the key 0600), replacing what was there.
char *launch_cmd_keys(const launch_plan *p, int host);

// launch_cmd_probe runs `spartan probe` there: it listens on the host's peer ports and connects
// to every other peer's, for at most timeout_ms.
char *launch_cmd_probe(const launch_plan *p, int host, int timeout_ms);

// launch_cmd_peer starts the peer of rank r. Attached (the default), the peer's output comes
// back on the ssh connection and the peer is sent SIGTERM (it saves a checkpoint and stops) when
// the connection's input ends: the launcher closing it, or the connection dying. Detached, it
// runs under nohup with its output in D/runs/NAME/r<rank>.log, and the command returns at once.
char *launch_cmd_peer(const launch_plan *p, int r);

// launch_cmd_stop sends SIGTERM (a checkpoint, then the end, as SIGINT) to the detached peers
// of the host (their .pid files).
char *launch_cmd_stop(const launch_plan *p, int host);

// launch_cmd_fetch copies peer r's newest checkpoint and metrics.csv into the local folder
// dir/r<rank>.
char *launch_cmd_fetch(const launch_plan *p, int r, const char *dir);

// launch_cmd_ssh_exit ends the host's shared ssh connection (o.ssh_control): `ssh -O exit`.
char *launch_cmd_ssh_exit(const launch_plan *p, int host);

// launch_ssh_can_share returns 1 if the ssh command (NULL or "": the default) is OpenSSH's ssh
// (its first word's last path part is "ssh") and does not set ControlMaster, ControlPath or
// ControlPersist itself (then the user's own settings rule), else 0.
int launch_ssh_can_share(const char *ssh);

// launch_shell_quote appends s to f single-quoted for /bin/sh.
void launch_shell_quote(FILE *f, const char *s);

#endif
