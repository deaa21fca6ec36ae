// cfg.h: the run configuration. One INI file (libinih) produces one `cfg` struct with a
// sub-struct per module; every key lives in one table with its type, default and range.
// Order of use: cfg_defaults -> cfg_load_ini -> cfg_set (command line) -> cfg_validate.
// Not thread-safe; main parses it once before any thread starts.
#ifndef CFG_H
#define CFG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CFG_PATH_MAX 512

// The values of the enum keys. The key table parses each key's words once, into these enums (a
// value is its word's index, so the order is the table's), and modules compare enums, never
// strings. train.mode, log.level, sparta.selector, sparta.reduce, sparta.apply, the dtype of
// the values on the wire (sparta.dtype takes fp32 or bf16; diloco.dtype and ddp.dtype all three),
// and the aggregation rule over the peers' values (sparta.aggregate, diloco.aggregate).
typedef enum { CFG_MODE_LOCAL, CFG_MODE_DDP } cfg_mode;
typedef enum { CFG_LOG_ERROR, CFG_LOG_WARN, CFG_LOG_INFO, CFG_LOG_DEBUG } cfg_log_level;
typedef enum { CFG_SELECT_RANDOM, CFG_SELECT_PARTITIONED } cfg_selector;
typedef enum { CFG_REDUCE_ALLTOALL, CFG_REDUCE_RING } cfg_reduce;
typedef enum { CFG_APPLY_OVERWRITE, CFG_APPLY_CORRECT } cfg_apply;
typedef enum { CFG_DTYPE_FP32, CFG_DTYPE_BF16, CFG_DTYPE_INT8 } cfg_dtype;
typedef enum { CFG_AGG_MEAN, CFG_AGG_TRIMMED_MEAN, CFG_AGG_MEDIAN } cfg_aggregate;
typedef enum { CFG_DISCOVER_OFF, CFG_DISCOVER_LAN } cfg_discover; // net.discover

// GPT-2 architecture (nanoGPT names). vocab_size = 0 means "take it from the data's tokenizer".
typedef struct cfg_model {
    int n_layer;
    int n_head;
    int n_embd;
    int block_size;
    int vocab_size;
} cfg_model;

// Optimisation and loop settings (nanoGPT names where nanoGPT has one).
typedef struct cfg_train {
    int batch_size;      // micro-batch size B
    int grad_accum;      // micro-batches per optimizer step
    int max_iters;       // optimizer steps
    float learning_rate; // peak lr
    float min_lr;        // floor of the cosine decay
    int warmup_iters;    // linear warmup steps
    int lr_decay_iters;  // cosine reaches min_lr here (0 = max_iters)
    float weight_decay;  // decoupled, 2-D weights only
    float beta1, beta2, eps;
    float grad_clip; // global-norm clip (0 = off)
    uint64_t seed;
    int log_interval;  // steps between progress lines
    int eval_interval; // steps between val evaluations (0 = only at the end)
    int eval_iters;    // val batches per evaluation
    int ckpt_interval; // steps between checkpoints (0 = only at the end)
    int keep_ckpts;    // newest interval checkpoints kept (0 = all)
    int threads;       // OpenMP/BLAS threads (0 = all cores)
    int rank;          // this peer's rank: selects its data stream
    cfg_mode mode;     // local (own optimizer steps) or ddp (gradients averaged)
    char out_dir[CFG_PATH_MAX];
} cfg_train;

typedef struct cfg_data {
    char dir[CFG_PATH_MAX]; // a folder written by `spartan data prepare`
} cfg_data;

typedef struct cfg_log {
    cfg_log_level level;
} cfg_log;

// SPARTA: every `every` steps, average a fraction p of all parameters with every peer.
typedef struct cfg_sparta {
    float p;               // fraction exchanged per round (0 = off); active only with peers
    int every;             // steps between rounds
    cfg_selector selector; // random or partitioned
    cfg_reduce reduce;     // alltoall or ring
    cfg_apply apply;       // overwrite or correct
    int max_stale;         // D: a round is applied at most D steps after it was posted
    int delay;             // forced staleness: apply this many steps after posting (0 = asap)
    int sync;              // 1: block until each round completes (deterministic; tests)
    cfg_dtype dtype;       // values on the wire: fp32 or bf16
    int timeout_ms;        // longest wait of a sync round for a missing peer
    // Robust aggregation (sparta/peer/agg.h): the rule per coordinate over the peers' values
    // (mean, trimmed_mean, median) and, for trimmed_mean, the fraction cut from each end.
    cfg_aggregate aggregate;
    float trim;
    int fanout; // gossip: peers each round sends to and averages with (0: all)
} cfg_sparta;

// DiLoCo: every H inner steps, an outer Nesterov step on the pseudo-gradient averaged over peers.
typedef struct cfg_diloco {
    int H;           // inner steps per outer step (0 = off)
    float lr;        // outer learning rate
    float momentum;  // outer momentum mu
    int nesterov;    // Nesterov momentum (PyTorch SGD semantics)
    cfg_dtype dtype; // pseudo-gradients on the wire: fp32, bf16 or int8
    int timeout_ms;  // longest wait for a peer in an all-reduce
    // Robust aggregation over the peers' pseudo-gradients (not mean: an all-gather instead of the
    // ring): the rule, trimmed_mean's fraction cut from each end, and the L2 norm each peer's
    // pseudo-gradient is clipped to first (0 = off; > 0 takes the all-gather too).
    cfg_aggregate aggregate;
    float trim;
    float max_norm;
} cfg_diloco;

// DDP (train.mode = ddp): the gradients are averaged over the peers after every backward pass.
typedef struct cfg_ddp {
    cfg_dtype dtype; // gradients on the wire: fp32, bf16 or int8
    int timeout_ms;  // longest wait for a peer in an all-reduce
} cfg_ddp;

// The peer mesh. peers lists every peer's "host:port" in rank order (this one included);
// listen is the local bind address (empty: this peer's entry in peers). rate_mbit, delay_ms and
// loss emulate a slow link inside the transport (for experiments without root or netem).
typedef struct cfg_net {
    char listen[128];
    char peers[2048];
    char join[128];  // rendezvous: any member's address (instead of peers)
    int world;       // with join: the group's number of peers (ranks 0 .. world-1)
    int max_peers;   // with join: ranks below this may join, also while the group runs (0: world)
    float rate_mbit; // emulated link (net.h): send rate per peer, 0 = unlimited
    int delay_ms;    // emulated one-way delay per message
    float loss;      // emulated fraction of data-plane messages dropped
    int allow_alone; // a run may start and end without ever reaching a peer
    int status_port; // `spartan train` serves /status, /metrics and / here (0: off)
    char status_host[128]; // the status server's bind address
    // discover = lan: the net.world peers find each other by UDP (sparta/peer/discover.h) and
    // take their ranks from the order of their node IDs; rank 0's address becomes the join.
    cfg_discover discover;
    int discover_port;                   // UDP port announced on and listened to
    char discover_addr[64];              // destination instead of the broadcast addresses
    char cluster_key_file[CFG_PATH_MAX]; // the HMAC key every peer of the cluster holds (0600)
    int discover_timeout_ms;             // longest wait for the net.world peers
    int tls;                             // peer links over mutual TLS (the three files below)
    char tls_ca[CFG_PATH_MAX];           // the cluster CA's certificate (PEM)
    char tls_cert[CFG_PATH_MAX];         // this peer's certificate, signed by it
    char tls_key[CFG_PATH_MAX];          // its private key (mode 0600)
    int insecure; // peers off loopback may run without keys (a trusted network; warned)
    // A peer whose values were rejected (non-finite) this many times is expelled (0 = never).
    int max_offences;
    int heartbeat_timeout; // ms (0: no failure detection)
} cfg_net;

typedef struct cfg {
    cfg_model model;
    cfg_train train;
    cfg_data data;
    cfg_log log;
    cfg_sparta sparta;
    cfg_diloco diloco;
    cfg_ddp ddp;
    cfg_net net;
} cfg;

// cfg_mode_str, cfg_selector_str, cfg_reduce_str, cfg_apply_str, cfg_dtype_str and
// cfg_aggregate_str return the config word of an enum value ("ddp", "bf16", "median"), for log
// lines; static storage, "?" for a value that is not one of the enum's. Any thread.
const char *cfg_mode_str(cfg_mode v);
const char *cfg_selector_str(cfg_selector v);
const char *cfg_reduce_str(cfg_reduce v);
const char *cfg_apply_str(cfg_apply v);
const char *cfg_dtype_str(cfg_dtype v);
const char *cfg_aggregate_str(cfg_aggregate v);

// cfg_defaults fills c with every key's default from the key table. Never fails.
void cfg_defaults(cfg *c);

// cfg_load_ini parses the INI file at path into c. Returns ERR_OK, ERR_IO if the file cannot be
// read, or ERR_INVAL for an unknown section or key, a wrong type or an out-of-range value; the
// message names path:line and the key.
int cfg_load_ini(cfg *c, const char *path);

// cfg_set applies one "section.key=value" assignment (from --set). Returns ERR_OK or ERR_INVAL
// with a message naming the key.
int cfg_set(cfg *c, const char *assignment);

// cfg_validate checks cross-key constraints (n_embd divisible by n_head, train.mode = ddp without
// diloco.H, ...) and that no address of a net.peers list is empty. Returns ERR_OK or ERR_INVAL
// naming the keys.
int cfg_validate(const cfg *c);

// cfg_write prints the full effective config as INI text (every key, current values) to f.
void cfg_write(const cfg *c, FILE *f);

// cfg_to_string returns the effective config as INI text; the caller owns it (free).
char *cfg_to_string(const cfg *c);

// cfg_parse_string parses INI text (as written by cfg_write) into c, starting from defaults.
// name is used in error messages. Returns ERR_OK or ERR_INVAL.
int cfg_parse_string(cfg *c, const char *text, const char *name);

// cfg_print_keys writes the key table (section.key, type, default, range, help) to f.
void cfg_print_keys(FILE *f);

// cfg_group_size returns the most peers c's group may hold: net.max_peers (or net.world if
// that is 0) with net.join, net.world with net.discover, else the number of net.peers entries.
// Any thread.
int cfg_group_size(const cfg *c);

// cfg_loopback_host returns 1 if the host of addr ("host", "host:port", "[::1]:port", "::1" or
// a scheme://host:port URL) is 127.x.x.x, localhost or ::1, else 0.
int cfg_loopback_host(const char *addr);

// cfg_net_exposed returns 1 if c's peers talk beyond loopback: an address of net.peers, net.join
// or net.listen whose host is not 127.x.x.x, localhost or ::1 (a wildcard such as 0.0.0.0 or an
// empty host is exposed), or net.discover = lan announcing to anything but a 127.x address. The
// first such address (or "net.discover") is copied into where (n bytes). Else 0.
int cfg_net_exposed(const cfg *c, char *where, size_t n);

// cfg_peer_count returns the number of comma-separated entries of a net.peers list (1 when
// empty: a peer alone). Any thread.
int cfg_peer_count(const char *peers);

// cfg_peer_entry copies entry i of a net.peers list ("host:port", leading spaces dropped) into buf
// (n bytes). Returns 0, or -1 (buf = "") when the list has no entry i. Any thread.
int cfg_peer_entry(const char *peers, int i, char *buf, size_t n);

// cfg_shared_write writes the settings that every peer of one run must share (the model, the seed,
// the mode and what decides the SPARTA and DiLoCo exchanges) into buf (n bytes) as
// "section.key=value" lines, in table order, and returns the length (truncated at n - 1).
size_t cfg_shared_write(const cfg *c, char *buf, size_t n);

// cfg_print_sections writes every INI section of the key table once, in table order, as
// "[model], [train], ..." (no newline) to f, so help text never lists fewer sections than keys.
void cfg_print_sections(FILE *f);

#endif
