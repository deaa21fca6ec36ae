// test_util.h: helpers shared by the Criterion suites (tu_ prefix): temp dirs, deterministic
// random fills, running bin/spartan as a child process with a time limit, file helpers.
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sparta/peer/peer.h"

// tu_tmpdir creates a fresh directory under $TMPDIR (or /tmp) and returns its path (static
// storage per call slot is not used: the caller owns the returned string and frees it).
char *tu_tmpdir(const char *tag);

// tu_data_tmpdir is tu_tmpdir(tag) with the bundled text prepared as char-level shards in
// "<dir>/d" (tu_prepare_char_data). Returns the directory (caller frees), or NULL with the
// failure printed to stderr.
char *tu_data_tmpdir(const char *tag);

// tu_rm_rf removes a directory tree (best effort).
void tu_rm_rf(const char *path);

// tu_rand_fill fills x(n) with uniform values in [lo, hi) from a fixed-seed generator.
void tu_rand_fill(float *x, size_t n, uint64_t seed, float lo, float hi);

// tu_spartan returns the path of the spartan binary under test ($SPARTAN_BIN or bin/spartan).
const char *tu_spartan(void);

// tu_run runs `sh -c cmd` with a time limit of timeout_s seconds, capturing stdout+stderr into
// *out (caller frees; may be NULL). Returns the exit status, 128+signal if killed, or -1.
int tu_run(const char *cmd, int timeout_s, char **out);

// tu_write_file writes n bytes to path; returns 0 on success.
int tu_write_file(const char *path, const void *data, size_t n);

// tu_read_file reads a whole file; the caller frees *data. Returns 0 on success.
int tu_read_file(const char *path, char **data, size_t *n);

// tu_files_equal returns 1 if both files exist and have identical bytes.
int tu_files_equal(const char *a, const char *b);

// tu_group makes member rank of a static peer group of world over ipc:// sockets in dir
// (<dir>/g0, <dir>/g1, ...) with run id run_id and no shared settings. Fails the test on error
// (Criterion suites only). The caller destroys it (peer_group_destroy).
peer_group *tu_group(const char *dir, int rank, int world, uint64_t run_id);

// tu_wait_linked waits (bounded, by the groups' own wake-ups) until a and b hold a live link to
// each other (ranks ra and rb). Returns 1 if they do.
int tu_wait_linked(peer_group *a, int ra, peer_group *b, int rb);

// tu_free_ports writes n (<= 64) distinct ports that can be bound on 127.0.0.1 into ports, from
// the project's one port picker (`scripts/local-cluster --ports N`; run from the repository
// root). Returns 0, or -1 with a line on stderr.
int tu_free_ports(int n, int *ports);

// tu_tcp_connect opens a plain TCP connection to 127.0.0.1:port. Returns the socket, or -1.
int tu_tcp_connect(int port);

// tu_load_params loads the model parameters of a checkpoint (file or folder); the caller frees
// the returned array of *n floats. Returns NULL (with err_msg) on failure.
float *tu_load_params(const char *path, size_t *n);

// tu_prepare_char_data runs `spartan data prepare --tokenizer char` on the bundled
// tinyshakespeare into dir. Returns 0 on success; *out (may be NULL) gets the output.
int tu_prepare_char_data(const char *dir, char **out);

// A group of `spartan train` peer processes on 127.0.0.1 sharing one prepared char dataset.
// Peer r runs `spartan train ARGS --set data.dir=<data> --set train.out_dir=<dir>/rank<r>
// --peers <peers> --rank r` with its stderr in <dir>/rank<r>.log. One port per peer (the peer
// layer listens on one address per process).
typedef struct tu_cluster {
    char *dir;
    char data[600];
    char peers[512];
    int world;
} tu_cluster;

// tu_cluster_open makes the folder, prepares the data and picks ports. Returns 0 on success.
int tu_cluster_open(tu_cluster *c, int world);

// tu_cluster_start starts peer rank in the background and returns its pid (-1 on failure).
int tu_cluster_start(tu_cluster *c, int rank, const char *args);

// tu_cluster_start_bin is tu_cluster_start with another program in place of spartan: bin (a
// command line: the program and its first arguments) is run as `BIN train ARGS ...`.
int tu_cluster_start_bin(tu_cluster *c, int rank, const char *bin, const char *args);

// tu_cluster_start_peers is tu_cluster_start with this peer's own net.peers list (a test that
// puts cables, tu_cable_open, between some peers gives each its own addresses of the others).
int tu_cluster_start_peers(tu_cluster *c, int rank, const char *args, const char *peers);

// tu_cluster_metric returns the last value of column col in peer rank's metrics.csv (-1: no row
// or no such column yet); tu_cluster_wait_metric waits (at most limit_s, polling every 20 ms)
// until it is at least v and returns the last value read.
double tu_cluster_metric(const tu_cluster *c, int rank, const char *col);
double tu_cluster_wait_metric(const tu_cluster *c, int rank, const char *col, double v,
                              int limit_s);

// tu_cluster_port returns the port of peer rank's address in c->peers (-1: no such rank).
int tu_cluster_port(const tu_cluster *c, int rank);

// tu_cluster_join starts peer `slot` as tu_cluster_start does, but through the rendezvous:
// `--join <the first peer's address> --set net.world=<world> --set net.listen=<slot's address>`
// (no rank: the group gives one). Slot 0 owns the join address and founds the group. Returns the
// pid or -1.
int tu_cluster_join(tu_cluster *c, int slot, const char *args);

// tu_write_char_ckpt writes a checkpoint to path: a GPT of L layers, 2 heads, width C and a
// T-token context with uniform random weights in [-scale, scale] from seed (random weights keep
// greedy choices far from ties), the char-level tokenizer of vocab and the "step" attribute.
// Returns 0, or -1 with err_msg() saying why.
int tu_write_char_ckpt(const char *path, int L, int C, int T, uint64_t seed, float scale, long step,
                       const char *vocab);

// tu_wait_file_has waits, at most timeout_ms and looking every 10 ms, until the file at path
// contains want. Returns 1 if it does, else 0; either way *text (may be NULL) gets the file's
// last text (caller frees; "" if it could not be read).
int tu_wait_file_has(const char *path, const char *want, int timeout_ms, char **text);

// tu_serve_start runs `spartan serve ARGS` (args is shell text) with stdout in out_path and
// stderr in err_path, and waits (at most 30 s) for its URL line "listening on
// http[s]://127.0.0.1:PORT/". Returns the pid with *port set, or -1 (the server killed and
// reaped, if it had not exited) with the reason on stderr.
int tu_serve_start(const char *args, const char *out_path, const char *err_path, int *port);

// tu_kill kills pid with SIGKILL and reaps it; nothing for pid <= 0 (a test's teardown, for a
// process a failed assertion left running).
void tu_kill(int pid);

// tu_wait_exit waits at most timeout_s for pid and returns its exit status, 128 if it died of a
// signal, or -1 after killing it at the timeout.
int tu_wait_exit(int pid, int timeout_s);

// tu_cluster_log returns peer rank's log text (caller frees; "" if none).
char *tu_cluster_log(tu_cluster *c, int rank);

// tu_cluster_run starts every peer with args and waits for all; returns -1 if every peer exited
// with status 0, else the first failing rank.
int tu_cluster_run(tu_cluster *c, const char *args, int timeout_s);

// tu_cmp_double orders doubles ascending (for qsort).
int tu_cmp_double(const void *a, const void *b);

// tu_median sorts x(n) (n >= 1) in place and returns its median.
double tu_median(double *x, int n);

// Interleaved benchmark rounds (tests/bench_*.c). A ratio between two systems (ours and PyTorch,
// exchange on and off, ...) is measured in rounds: each round runs every side for a few
// repetitions, the side that goes first rotates from round to round (A B, B A, A B, ...), and each
// round gives one ratio. Load that drifts over minutes then hits both sides of a round alike, and
// the median over the rounds drops a round that a burst of load disturbed.

// tu_bench_rounds returns the number of rounds for the benchmark called name: $BENCH_ROUNDS_<NAME>
// (name upper-cased), else $BENCH_ROUNDS, else def_quick under $BENCH_QUICK and def otherwise.
// A value outside 1..1000 is ignored.
int tu_bench_rounds(const char *name, int def, int def_quick);

// One side of an interleaved comparison. run(ctx, warm, n, v) does warm untimed repetitions, then
// n measured ones, and writes the n measurements (usually seconds) to v; it returns 0, or -1 when
// the side failed (tu_interleave then stops). The caller owns all[rounds * n] and med[rounds];
// tu_interleave fills all[r * n + i] with repetition i of round r and med[r] with the median of
// round r.
typedef struct tu_side {
    const char *name;
    int (*run)(void *ctx, int warm, int n, double *v);
    void *ctx;
    int warm, n;
    double *all, *med;
} tu_side;

// tu_interleave runs rounds rounds over the n_sides sides, round r starting with side r % n_sides
// and going on in order, and logs each round's medians to stderr. Returns 0, or -1 if a side
// failed.
int tu_interleave(tu_side *sides, int n_sides, int rounds);

// Summary of a set of per-round values: median, quartiles (linear interpolation between order
// statistics) and extremes.
typedef struct tu_spread {
    double median, q1, q3, min, max;
    int n;
} tu_spread;

// tu_spread_of summarises x(n), n >= 1, without modifying x.
tu_spread tu_spread_of(const double *x, int n);

// tu_bench_ratio prints the per-round values x(n) as two lines with `decimals` digits:
//   BENCH <key> <median>
//   BENCH <key>_spread <min>-<max> (iqr <q1>-<q3>, <n> rounds)
// and the values themselves to stderr. Returns the median.
double tu_bench_ratio(const char *key, const double *x, int n, int decimals);

// A child process driven over pipes, one request line in and one reply line out (the persistent
// PyTorch baseline, scripts/bench-torch --serve). The caller owns the struct; tu_proc_stop
// releases what tu_proc_start acquired.
typedef struct tu_proc {
    int pid;
    FILE *to, *from;
} tu_proc;

// tu_proc_start runs `sh -c cmd` with its stdin fed from p->to and its stdout read through
// p->from; stderr is inherited. SIGPIPE is ignored from then on, so a child that died shows as a
// failed write or EOF. Returns 0, or -1.
int tu_proc_start(tu_proc *p, const char *cmd);

// tu_proc_read reads the child's next output line into buf(n), without the newline. Returns 0,
// or -1 at EOF.
int tu_proc_read(tu_proc *p, char *buf, size_t n);

// tu_proc_ask writes line and a newline to the child, then reads its reply as tu_proc_read does.
int tu_proc_ask(tu_proc *p, const char *line, char *buf, size_t n);

// tu_torch_times asks a `scripts/bench-torch --serve` child for "VERB warm n" (train, decode) and
// reads its reply "ms t1 ... tn" into v(n) as seconds. Returns 0, or -1 after printing the reply.
int tu_torch_times(tu_proc *p, const char *verb, int warm, int n, double *v);

// tu_proc_stop closes the child's stdin (a line-driven child exits at EOF), waits for it and
// returns its exit status (128 + signal if killed), or -1. NULL-safe on a zeroed struct.
int tu_proc_stop(tu_proc *p);

// tu_last_metric returns the value of the named column ("step", "sparta_rounds_done") in the last
// row of the metrics.csv at path, or -1 if there is no row yet or no such column.
double tu_last_metric(const char *path, const char *column);

// tu_cluster_close removes the folder and frees c's memory.
void tu_cluster_close(tu_cluster *c);

// ---- a cable: a TCP relay on 127.0.0.1 whose wire a test can cut, slow down and mend ---------
// Every connection made to the cable's port is relayed to 127.0.0.1:target by one thread of the
// cable (up to 16 at a time), both ways. TU_CABLE_PASS relays at once (at most bytes_per_s each
// way when that is > 0); TU_CABLE_CUT relays nothing and reads nothing, so the connections stay
// open and silent, as behind a dead switch (new ones are accepted and stay silent too); mending
// it delivers what the senders' kernels still hold. A connection closed on one side is closed on
// the other.
enum { TU_CABLE_PASS = 0, TU_CABLE_CUT = 1 };
typedef struct tu_cable tu_cable;

// tu_cable_open starts a cable to target. Returns it (tu_cable_close), or NULL.
tu_cable *tu_cable_open(int target);

// tu_cable_port returns the port the cable listens on.
int tu_cable_port(const tu_cable *c);

// tu_cable_set sets the mode and the rate limit (bytes per second each way; 0: none). Any thread.
void tu_cable_set(tu_cable *c, int mode, double bytes_per_s);

// tu_cable_close stops the cable, closing its connections. NULL-safe.
void tu_cable_close(tu_cable *c);

#endif
