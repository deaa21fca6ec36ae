// cfg.c: the key table and INI parsing (libinih). Every key is one row: section, name, type,
// offset into `cfg`, default text, range and help, as in redis's config table. Unknown keys,
// wrong types and out-of-range values are errors that name file:line and the key.
#include "train/base/cfg.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/base/err.h"
#include "train/base/log.h"

// CFG_STR must not be empty; CFG_STR0 may be; CFG_ENUM takes one of the key's words and stores
// its index into an enum field (cfg.h lists each enum in the order of its words), so only this
// file ever sees the words; CFG_BOOL takes true/false, yes/no, on/off or 1/0 into an int.
typedef enum { CFG_INT, CFG_U64, CFG_F32, CFG_STR, CFG_STR0, CFG_ENUM, CFG_BOOL } cfg_type;

typedef struct {
    const char *section, *name;
    cfg_type type;
    size_t off, size;
    const char *def;
    double lo, hi;
    const char *help;
    const char *const *words; // CFG_ENUM only: the choices, NULL-terminated, in enum order
} cfg_key;

// The words of the enum keys, in the order of their enums in cfg.h.
static const char *const mode_words[] = {"local", "ddp", NULL};
static const char *const level_words[] = {"error", "warn", "info", "debug", NULL};
static const char *const selector_words[] = {"random", "partitioned", NULL};
static const char *const reduce_words[] = {"alltoall", "ring", NULL};
static const char *const apply_words[] = {"overwrite", "correct", NULL};
static const char *const dtype_words[] = {"fp32", "bf16", "int8", NULL};
static const char *const dtype2_words[] = {"fp32", "bf16", NULL}; // SPARTA has no int8
static const char *const discover_words[] = {"off", "lan", NULL};
static const char *const aggregate_words[] = {"mean", "trimmed_mean", "median", NULL};

#define K(sec, key, ty, field, d, lo, hi, help) \
    { sec, key, ty, offsetof(cfg, field), sizeof(((cfg *)0)->field), d, lo, hi, help, NULL }
#define E(sec, key, field, d, words, help) \
    { sec, key, CFG_ENUM, offsetof(cfg, field), sizeof(((cfg *)0)->field), d, 0, 0, help, words }

static const cfg_key keys[] = {
    K("model", "n_layer", CFG_INT, model.n_layer, "4", 1, 96, "transformer blocks L"),
    K("model", "n_head", CFG_INT, model.n_head, "4", 1, 128, "attention heads NH"),
    K("model", "n_embd", CFG_INT, model.n_embd, "128", 1, 16384, "embedding width C"),
    K("model", "block_size", CFG_INT, model.block_size, "64", 1, 65536, "context length T"),
    K("model", "vocab_size", CFG_INT, model.vocab_size, "0", 0, 1 << 24,
      "vocabulary V (0 = from the data's tokenizer)"),
    K("train", "batch_size", CFG_INT, train.batch_size, "16", 1, 1 << 20, "micro-batch size B"),
    K("train", "grad_accum", CFG_INT, train.grad_accum, "1", 1, 1 << 20,
      "micro-batches per optimizer step"),
    K("train", "max_iters", CFG_INT, train.max_iters, "1000", 0, 1e9, "optimizer steps"),
    K("train", "learning_rate", CFG_F32, train.learning_rate, "1e-3", 0, 10, "peak learning rate"),
    K("train", "min_lr", CFG_F32, train.min_lr, "1e-4", 0, 10, "learning rate floor"),
    K("train", "warmup_iters", CFG_INT, train.warmup_iters, "100", 0, 1e9, "linear warmup steps"),
    K("train", "lr_decay_iters", CFG_INT, train.lr_decay_iters, "0", 0, 1e9,
      "step where cosine decay reaches min_lr (0 = max_iters)"),
    K("train", "weight_decay", CFG_F32, train.weight_decay, "0.1", 0, 10,
      "AdamW decoupled weight decay (2-D weights only)"),
    K("train", "beta1", CFG_F32, train.beta1, "0.9", 0, 0.999999, "AdamW beta1"),
    K("train", "beta2", CFG_F32, train.beta2, "0.95", 0, 0.999999, "AdamW beta2"),
    K("train", "eps", CFG_F32, train.eps, "1e-8", 0, 1, "AdamW epsilon"),
    K("train", "grad_clip", CFG_F32, train.grad_clip, "1.0", 0, 1e9,
      "global gradient-norm clip (0 = off)"),
    K("train", "seed", CFG_U64, train.seed, "1337", 0, 1.8e19, "run seed (init, data order)"),
    K("train", "log_interval", CFG_INT, train.log_interval, "10", 1, 1e9,
      "steps between progress lines"),
    K("train", "eval_interval", CFG_INT, train.eval_interval, "250", 0, 1e9,
      "steps between val-loss evaluations (0 = end only)"),
    K("train", "eval_iters", CFG_INT, train.eval_iters, "20", 1, 1e6, "val batches per eval"),
    K("train", "ckpt_interval", CFG_INT, train.ckpt_interval, "0", 0, 1e9,
      "steps between checkpoints (0 = end only)"),
    K("train", "keep_ckpts", CFG_INT, train.keep_ckpts, "3", 0, 1e6,
      "interval checkpoints kept (0 = all)"),
    K("train", "threads", CFG_INT, train.threads, "0", 0, 1024,
      "compute threads (0 = the cores, divided among the peers of net.peers on this host)"),
    K("train", "rank", CFG_INT, train.rank, "0", 0, 1 << 20, "peer rank (selects the data stream)"),
    E("train", "mode", train.mode, "local", mode_words,
      "local steps (SPARTA/DiLoCo sync them), or DDP: gradients averaged every step"),
    K("train", "out_dir", CFG_STR, train.out_dir, "out", 0, 0,
      "where checkpoints and metrics.csv go"),
    K("data", "dir", CFG_STR, data.dir, "data/cache/shakespeare-char", 0, 0,
      "folder written by `spartan data prepare`"),
    E("log", "level", log.level, "info", level_words, "log verbosity"),
    K("sparta", "p", CFG_F32, sparta.p, "0.005", 0, 1,
      "fraction of parameters averaged per round (0 = off; needs peers)"),
    K("sparta", "every", CFG_INT, sparta.every, "1", 1, 1e6, "steps between rounds"),
    E("sparta", "selector", sparta.selector, "random", selector_words,
      "index sets: uniform without replacement, or cycling disjoint chunks"),
    E("sparta", "reduce", sparta.reduce, "alltoall", reduce_words,
      "send values to every peer, or ring all-reduce"),
    E("sparta", "apply", sparta.apply, "overwrite", apply_words,
      "x = mean, or x += mean - x_sent (keeps progress made meanwhile)"),
    K("sparta", "max_stale", CFG_INT, sparta.max_stale, "15", 0, 1000,
      "D: apply a round at most D steps late, leaving late peers out"),
    K("sparta", "delay", CFG_INT, sparta.delay, "0", 0, 1000,
      "apply every round exactly this many steps after posting it (forced staleness; "
      "0 = as soon as complete)"),
    K("sparta", "sync", CFG_BOOL, sparta.sync, "false", 0, 1,
      "block until each round completes (deterministic)"),
    E("sparta", "dtype", sparta.dtype, "fp32", dtype2_words, "value type on the wire"),
    K("sparta", "timeout_ms", CFG_INT, sparta.timeout_ms, "30000", 1, 1e9,
      "longest wait of a sync round for a missing peer"),
    E("sparta", "aggregate", sparta.aggregate, "mean", aggregate_words,
      "per coordinate over the peers' values: mean, trimmed_mean or median (robust to a few "
      "bad peers; needs sparta.reduce = alltoall)"),
    K("sparta", "fanout", CFG_INT, sparta.fanout, "0", 0, 255,
      "gossip: each round every peer sends to F peers and averages with the F that send to it, "
      "drawn from the shared seed (0 = all peers; needs sparta.reduce = alltoall)"),
    K("sparta", "trim", CFG_F32, sparta.trim, "0.25", 0, 0.5,
      "trimmed_mean: floor(trim * m) of the m values cut from each end (0.25: one of 4-7)"),
    K("diloco", "H", CFG_INT, diloco.H, "0", 0, 1e9, "inner steps per outer step (0 = off)"),
    K("diloco", "lr", CFG_F32, diloco.lr, "0.7", 0, 100, "outer learning rate"),
    K("diloco", "momentum", CFG_F32, diloco.momentum, "0.9", 0, 0.999999, "outer momentum"),
    K("diloco", "nesterov", CFG_BOOL, diloco.nesterov, "true", 0, 1, "Nesterov outer momentum"),
    E("diloco", "dtype", diloco.dtype, "fp32", dtype_words,
      "pseudo-gradients on the wire (int8: one scale per 4096 values)"),
    K("diloco", "timeout_ms", CFG_INT, diloco.timeout_ms, "30000", 1, 1e9,
      "longest wait for a peer in an all-reduce"),
    E("diloco", "aggregate", diloco.aggregate, "mean", aggregate_words,
      "over the peers' pseudo-gradients: mean (ring all-reduce), trimmed_mean or median "
      "(all-gather: every peer gets every pseudo-gradient and aggregates itself)"),
    K("diloco", "trim", CFG_F32, diloco.trim, "0.25", 0, 0.5,
      "trimmed_mean: floor(trim * m) of the m values cut from each end (0.25: one of 4-7)"),
    K("diloco", "max_norm", CFG_F32, diloco.max_norm, "0", 0, 1e30,
      "clip each peer's pseudo-gradient to this L2 norm before aggregating (0 = off; "
      "uses the all-gather)"),
    E("ddp", "dtype", ddp.dtype, "fp32", dtype_words,
      "gradients on the wire with train.mode = ddp (int8: one scale per 4096 values)"),
    K("ddp", "timeout_ms", CFG_INT, ddp.timeout_ms, "30000", 1, 1e9,
      "longest wait for a peer in a DDP all-reduce"),
    K("net", "listen", CFG_STR0, net.listen, "", 0, 0,
      "bind address host:port (empty = this peer's entry in net.peers)"),
    K("net", "peers", CFG_STR0, net.peers, "", 0, 0,
      "every peer's host:port in rank order, comma-separated (empty = alone)"),
    K("net", "join", CFG_STR0, net.join, "", 0, 0,
      "rendezvous instead of net.peers: the host:port of any peer of the group; the peer that "
      "listens there founds it, so every peer may be given the same address"),
    K("net", "world", CFG_INT, net.world, "0", 0, 256,
      "with net.join: the number of peers that start the group (each is given a rank below it)"),
    K("net", "max_peers", CFG_INT, net.max_peers, "0", 0, 256,
      "with net.join: peers up to this many may join, also while the group runs (0 = net.world)"),
    K("net", "rate_mbit", CFG_F32, net.rate_mbit, "0", 0, 1e6,
      "emulated link: send rate per peer in Mbit/s (0 = unlimited)"),
    K("net", "delay_ms", CFG_INT, net.delay_ms, "0", 0, 60000,
      "emulated link: one-way delay added to every message"),
    K("net", "loss", CFG_F32, net.loss, "0", 0, 1,
      "emulated link: fraction of data messages dropped at random"),
    K("net", "allow_alone", CFG_BOOL, net.allow_alone, "false", 0, 1,
      "train even if no peer can be reached (else such a run stops at start-up, and one that "
      "never exchanged exits with status 1)"),
    K("net", "status_port", CFG_INT, net.status_port, "0", 0, 65535,
      "serve this peer's /status, /metrics and cluster page / over HTTP on this port (0 = off)"),
    K("net", "status_host", CFG_STR0, net.status_host, "127.0.0.1", 0, 0,
      "address the status server binds (0.0.0.0: every interface)"),
    E("net", "discover", net.discover, "off", discover_words,
      "lan: find the net.world peers by authenticated UDP broadcast; ranks follow the sorted "
      "node IDs (needs net.cluster_key_file)"),
    K("net", "discover_port", CFG_INT, net.discover_port, "52415", 1, 65535,
      "UDP port of net.discover"),
    K("net", "discover_addr", CFG_STR0, net.discover_addr, "", 0, 0,
      "IPv4 destination of the announcements (a multicast group, 127.255.255.255, a host; "
      "empty = 255.255.255.255 and every interface's broadcast address)"),
    K("net", "cluster_key_file", CFG_STR0, net.cluster_key_file, "", 0, 0,
      "file holding the cluster's secret key (16-1024 bytes, mode 0600): it authenticates "
      "net.discover announcements and, without net.tls, every peer frame (HMAC-SHA256; not "
      "encrypted: a LAN-only choice)"),
    K("net", "discover_timeout_ms", CFG_INT, net.discover_timeout_ms, "30000", 1, 1e9,
      "longest wait of net.discover for the net.world peers"),
    K("net", "tls", CFG_BOOL, net.tls, "false", 0, 1,
      "peer links over TLS with mutual authentication: both sides need a certificate of the "
      "cluster CA (net.tls_ca, net.tls_cert, net.tls_key; made by spartan keys)"),
    K("net", "tls_ca", CFG_STR0, net.tls_ca, "", 0, 0,
      "with net.tls: the cluster CA's certificate (DIR/ca.crt of spartan keys)"),
    K("net", "tls_cert", CFG_STR0, net.tls_cert, "", 0, 0,
      "with net.tls: this peer's certificate, signed by that CA (DIR/NAME.crt)"),
    K("net", "tls_key", CFG_STR0, net.tls_key, "", 0, 0,
      "with net.tls: this peer's private key (DIR/NAME.key, mode 0600)"),
    K("net", "insecure", CFG_BOOL, net.insecure, "false", 0, 1,
      "let peers beyond loopback run without net.tls (anyone on the network can join, read and "
      "inject: a trusted network only); without it such a run refuses to start"),
    K("net", "max_offences", CFG_INT, net.max_offences, "3", 0, 1e6,
      "expel a peer after this many rounds of non-finite values from it (0 = never)"),
    K("net", "heartbeat_timeout", CFG_INT, net.heartbeat_timeout, "1000", 0, 600000,
      "ms: a peer from which no byte came for this long is taken out of the view (heartbeats "
      "every fifth of it keep an idle link up; raise it for slow or flaky links; 0 = off)"),
};

#define N_KEYS (sizeof keys / sizeof keys[0])

static const cfg_key *find_key(const char *section, const char *name) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

// edit_distance is the Levenshtein distance of a and b (each at most 63 bytes; longer ones count
// as far apart), for "did you mean" hints.
static int edit_distance(const char *a, const char *b) {
    size_t n = strlen(a), m = strlen(b);
    if (n > 63 || m > 63) return 1 << 20;
    int row[64];
    for (size_t j = 0; j <= m; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= m; j++) {
            int up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[m];
}

// unknown_key sets ERR_INVAL for an unknown section.name at where, with the closest key of the
// table as a hint when one is close (a typo, or the right name in another section).
static int unknown_key(const char *where, const char *section, const char *name) {
    char full[160];
    snprintf(full, sizeof full, "%s.%s", section, name);
    const cfg_key *best = NULL;
    int best_d = 1 << 20;
    for (size_t i = 0; i < N_KEYS; i++) {
        char cand[160];
        snprintf(cand, sizeof cand, "%s.%s", keys[i].section, keys[i].name);
        int d = strcmp(keys[i].name, name) == 0 ? 1 : edit_distance(full, cand);
        if (d < best_d) {
            best_d = d;
            best = &keys[i];
        }
    }
    int limit = strlen(full) > 12 ? 3 : 2;
    if (best && best_d <= limit)
        return err_set(ERR_INVAL,
                       "%s: unknown key '%s': did you mean '%s.%s'? (see `spartan "
                       "train --help`)",
                       where, full, best->section, best->name);
    return err_set(ERR_INVAL, "%s: unknown key '%s' (see `spartan train --help`)", where, full);
}

// word_index returns the index of text among words, or -1.
static int word_index(const char *const *words, const char *text) {
    for (int i = 0; words[i]; i++)
        if (strcmp(words[i], text) == 0) return i;
    return -1;
}

// word_of returns word v of words, or "?" for a value out of range (never set by this file).
static const char *word_of(const char *const *words, int v) {
    for (int i = 0; words[i]; i++)
        if (i == v) return words[i];
    return "?";
}

// join_words writes the words as "a|b|c" into buf (n bytes).
static void join_words(const char *const *words, char *buf, size_t n) {
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; words[i] && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%s", i ? "|" : "", words[i]);
}

const char *cfg_mode_str(cfg_mode v) { return word_of(mode_words, (int)v); }
const char *cfg_selector_str(cfg_selector v) { return word_of(selector_words, (int)v); }
const char *cfg_reduce_str(cfg_reduce v) { return word_of(reduce_words, (int)v); }
const char *cfg_apply_str(cfg_apply v) { return word_of(apply_words, (int)v); }
const char *cfg_dtype_str(cfg_dtype v) { return word_of(dtype_words, (int)v); }
const char *cfg_aggregate_str(cfg_aggregate v) { return word_of(aggregate_words, (int)v); }

// ini_unsafe returns what keeps string value v from being written as "key = v" (cfg_write) and
// read back the same, or NULL: libinih strips white space around a value and reads a ';' at its
// start or after white space as the start of a comment, and a line break ends the line. Such a
// value can only come from --set, or from a ';' right after the '=' of a line.
static const char *ini_unsafe(const char *v) {
    size_t n = strlen(v);
    if (n && (isspace((unsigned char)v[0]) || isspace((unsigned char)v[n - 1])))
        return "white space at its start or end";
    if (v[0] == ';') return "a ';' at its start, which an INI file reads as a comment";
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '\n' || v[i] == '\r') return "a line break";
        if (i && v[i] == ';' && isspace((unsigned char)v[i - 1]))
            return "a ';' after white space, which an INI file reads as a comment";
    }
    return NULL;
}

// set_value parses text into the field of k; where names the origin for messages.
static int set_value(cfg *c, const cfg_key *k, const char *text, const char *where) {
    char *p = (char *)c + k->off;
    char *end = NULL;
    errno = 0;
    switch (k->type) {
    case CFG_INT: {
        long v = strtol(text, &end, 10);
        if (end == text || *end || errno)
            return err_set(ERR_INVAL, "%s: %s.%s: '%s' is not an integer", where, k->section,
                           k->name, text);
        if (v < k->lo || v > k->hi)
            return err_set(ERR_INVAL, "%s: %s.%s: %ld is out of range [%.0f, %.0f]", where,
                           k->section, k->name, v, k->lo, k->hi);
        *(int *)p = (int)v;
        break;
    }
    case CFG_U64: {
        if (text[0] == '-')
            return err_set(ERR_INVAL, "%s: %s.%s: '%s' must not be negative", where, k->section,
                           k->name, text);
        unsigned long long v = strtoull(text, &end, 10);
        if (end == text || *end || errno)
            return err_set(ERR_INVAL, "%s: %s.%s: '%s' is not an unsigned integer", where,
                           k->section, k->name, text);
        *(uint64_t *)p = (uint64_t)v;
        break;
    }
    case CFG_F32: {
        double v = strtod(text, &end);
        if (end == text || *end || errno || !isfinite(v))
            return err_set(ERR_INVAL, "%s: %s.%s: '%s' is not a number", where, k->section, k->name,
                           text);
        if (v < k->lo || v > k->hi)
            return err_set(ERR_INVAL, "%s: %s.%s: %g is out of range [%g, %g]", where, k->section,
                           k->name, v, k->lo, k->hi);
        *(float *)p = (float)v;
        break;
    }
    case CFG_STR:
    case CFG_STR0:
        if (strlen(text) >= k->size)
            return err_set(ERR_INVAL, "%s: %s.%s: value is longer than %zu characters", where,
                           k->section, k->name, k->size - 1);
        if (!text[0] && k->type == CFG_STR)
            return err_set(ERR_INVAL, "%s: %s.%s: value is empty", where, k->section, k->name);
        const char *why = ini_unsafe(text);
        if (why)
            return err_set(ERR_INVAL, "%s: %s.%s: '%s' holds %s", where, k->section, k->name, text,
                           why);
        strcpy(p, text);
        break;
    case CFG_ENUM: {
        int v = word_index(k->words, text);
        if (v < 0) {
            char all[128];
            join_words(k->words, all, sizeof all);
            return err_set(ERR_INVAL, "%s: %s.%s: '%s' is not one of %s", where, k->section,
                           k->name, text, all);
        }
        ASSERT(k->size == sizeof(int)); // an enum field of cfg.h
        *(int *)p = v;
        break;
    }
    case CFG_BOOL: {
        static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
        int v = -1;
        for (int i = 0; i < 4; i++) {
            if (strcmp(text, yes[i]) == 0) v = 1;
            if (strcmp(text, no[i]) == 0) v = 0;
        }
        if (v < 0)
            return err_set(ERR_INVAL, "%s: %s.%s: '%s' is not true or false", where, k->section,
                           k->name, text);
        *(int *)p = v;
        break;
    }
    }
    return ERR_OK;
}

void cfg_defaults(cfg *c) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_KEYS; i++) {
        int rc = set_value(c, &keys[i], keys[i].def, "default");
        ASSERT(rc == ERR_OK);
    }
}

// libinih as packaged may be built without line numbers in the handler, so the context counts
// lines itself: ini_parse_stream calls our reader once per line, then the handler for it.
typedef struct {
    cfg *c;
    const char *name;
    int rc;
    int lineno;
    int err_line;     // line of the first error our handler reported
    FILE *file;       // reading a file, or
    const char *text; // reading a string
} ini_ctx;

// next_char returns the next byte of the file or the string, or EOF.
static int next_char(ini_ctx *ctx) {
    if (ctx->file) return fgetc(ctx->file);
    return *ctx->text ? (unsigned char)*ctx->text++ : EOF;
}

// at_line_end says whether the line just read ends here: at a line break (consumed) or at EOF.
static int at_line_end(ini_ctx *ctx) {
    if (ctx->file) {
        int ch = fgetc(ctx->file);
        if (ch != EOF && ch != '\n') ungetc(ch, ctx->file);
        return ch == EOF || ch == '\n';
    }
    if (*ctx->text == '\n') {
        ctx->text++;
        return 1;
    }
    return *ctx->text == 0;
}

// read_line gives libinih the next line, unindented. Its buffer (num bytes: INI_MAX_LINE, 200 in
// the packaged builds) cuts a longer line in two and parses the rest as a line of its own, which
// would turn a long value into a wrong value plus a confusing error. So a long comment line is
// cut (its rest dropped), and any other long line stops the parse with an error naming it. And
// libinih takes an indented line after "key = value" as a new value for that key (its multi-line
// values), so an indented "other = 1" under "seed = 5" set train.seed to "other = 1": no key is
// multi-line and cfg_write never indents, so every line reaches it unindented, as its own line.
static char *read_line(char *str, int num, void *stream) {
    ini_ctx *ctx = stream;
    int i = 0, ch = 0;
    while (i < num - 1 && (ch = next_char(ctx)) != EOF) {
        str[i++] = (char)ch;
        if (ch == '\n') break;
    }
    if (i == 0) return NULL;
    str[i] = 0;
    ctx->lineno++;
    int cut = str[i - 1] != '\n' && !at_line_end(ctx);
    size_t lead = strspn(str, " \t\v\f\r");
    memmove(str, str + lead, (size_t)i - lead + 1);
    if (!cut) return str;
    if (str[0] == ';' || str[0] == '#') { // a comment: drop the rest of the line
        while ((ch = next_char(ctx)) != EOF && ch != '\n') {
        }
        return str;
    }
    if (ctx->rc == ERR_OK) {
        ctx->rc =
            err_set(ERR_INVAL, "%s:%d: line is longer than %d characters (the INI reader's limit)",
                    ctx->name, ctx->lineno, num - 2);
        ctx->err_line = ctx->lineno;
    }
    return NULL;
}

static int on_ini(void *user, const char *section, const char *name, const char *value) {
    ini_ctx *ctx = user;
    if (ctx->rc != ERR_OK) return 0;
    char where[CFG_PATH_MAX + 32];
    snprintf(where, sizeof where, "%s:%d", ctx->name, ctx->lineno);
    const cfg_key *k = find_key(section, name);
    if (!k) {
        ctx->rc = unknown_key(where, section, name);
        ctx->err_line = ctx->lineno;
        return 0;
    }
    ctx->rc = set_value(ctx->c, k, value, where);
    if (ctx->rc != ERR_OK) ctx->err_line = ctx->lineno;
    return ctx->rc == ERR_OK;
}

static int finish_parse(ini_ctx *ctx, int ini_rc) {
    // inih keeps going after a syntax error, so report whichever error comes first in the file.
    if (ctx->rc != ERR_OK && !(ini_rc > 0 && ini_rc < ctx->err_line)) return ctx->rc;
    if (ini_rc > 0)
        return err_set(ERR_INVAL, "%s:%d: syntax error (expected [section] or key = value)",
                       ctx->name, ini_rc);
    if (ini_rc < 0) return err_set(ERR_IO, "%s: cannot read", ctx->name);
    return ERR_OK;
}

int cfg_load_ini(cfg *c, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return err_set(ERR_IO, "%s: cannot open config: %s", path, strerror(errno));
    ini_ctx ctx = {c, path, ERR_OK, 0, 0, f, NULL};
    int ini_rc = ini_parse_stream(read_line, &ctx, on_ini, &ctx);
    fclose(f);
    return finish_parse(&ctx, ini_rc);
}

int cfg_parse_string(cfg *c, const char *text, const char *name) {
    cfg_defaults(c);
    ini_ctx ctx = {c, name, ERR_OK, 0, 0, NULL, text};
    int ini_rc = ini_parse_stream(read_line, &ctx, on_ini, &ctx);
    return finish_parse(&ctx, ini_rc);
}

int cfg_set(cfg *c, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    const char *dot = strchr(assignment, '.');
    if (!eq || !dot || dot > eq)
        return err_set(ERR_INVAL, "--set '%s': expected section.key=value", assignment);
    char section[64], name[64];
    size_t ls = (size_t)(dot - assignment), ln = (size_t)(eq - dot - 1);
    if (ls == 0 || ls >= sizeof section || ln == 0 || ln >= sizeof name)
        return err_set(ERR_INVAL, "--set '%s': expected section.key=value", assignment);
    memcpy(section, assignment, ls);
    section[ls] = 0;
    memcpy(name, dot + 1, ln);
    name[ln] = 0;
    const cfg_key *k = find_key(section, name);
    if (!k) return unknown_key("--set", section, name);
    return set_value(c, k, eq + 1, "--set");
}

int cfg_validate(const cfg *c) {
    if (c->model.n_embd % c->model.n_head != 0)
        return err_set(ERR_INVAL, "model.n_embd (%d) must be divisible by model.n_head (%d)",
                       c->model.n_embd, c->model.n_head);
    if (c->train.min_lr > c->train.learning_rate)
        return err_set(ERR_INVAL, "train.min_lr (%g) must not exceed train.learning_rate (%g)",
                       c->train.min_lr, c->train.learning_rate);
    if (c->train.mode == CFG_MODE_DDP && c->diloco.H > 0)
        return err_set(ERR_INVAL, "train.mode = ddp and diloco.H > 0 do not combine (DDP already "
                                  "averages every step)");
    if (c->sparta.delay > c->sparta.max_stale)
        return err_set(ERR_INVAL, "sparta.delay (%d) must not exceed sparta.max_stale (%d)",
                       c->sparta.delay, c->sparta.max_stale);
    if (c->sparta.fanout > 0 && c->sparta.reduce == CFG_REDUCE_RING)
        return err_set(ERR_INVAL,
                       "sparta.fanout = %d needs sparta.reduce = alltoall (a ring "
                       "reaches every peer)",
                       c->sparta.fanout);
    if (c->sparta.aggregate != CFG_AGG_MEAN && c->sparta.reduce == CFG_REDUCE_RING)
        return err_set(ERR_INVAL,
                       "sparta.aggregate = %s needs sparta.reduce = alltoall (a ring all-reduce "
                       "only sums: no peer sees the others' values)",
                       cfg_aggregate_str(c->sparta.aggregate));
    if (c->net.join[0] && c->net.peers[0])
        return err_set(ERR_INVAL, "net.join and net.peers do not combine: give the group one way");
    // Every entry of a net.peers list becomes a peer's address: none may be empty.
    for (int i = 0, n = c->net.peers[0] ? cfg_peer_count(c->net.peers) : 0; i < n; i++) {
        char e[sizeof c->net.peers];
        if (cfg_peer_entry(c->net.peers, i, e, sizeof e) != 0 || !e[0])
            return err_set(ERR_INVAL,
                           "net.peers: address %d of '%s' is empty (one comma too many?)", i + 1,
                           c->net.peers);
    }
    if (c->net.join[0] && c->net.world < 2)
        return err_set(ERR_INVAL, "net.join needs net.world, the number of peers (2 or more)");
    if (c->net.discover && (c->net.join[0] || c->net.peers[0] || c->net.world < 2 ||
                            !c->net.cluster_key_file[0] || c->net.max_peers))
        return err_set(ERR_INVAL, "net.discover = lan needs net.world (2 or more) and "
                                  "net.cluster_key_file, without net.join, net.peers or "
                                  "net.max_peers (it finds the group itself)");
    const char *tls_files[3] = {c->net.tls_ca, c->net.tls_cert, c->net.tls_key};
    static const char *const tls_keys[3] = {"net.tls_ca", "net.tls_cert", "net.tls_key"};
    for (int i = 0; i < 3; i++) {
        if (c->net.tls && !tls_files[i][0])
            return err_set(ERR_INVAL, "net.tls = true needs %s (spartan keys makes the files)",
                           tls_keys[i]);
        if (!c->net.tls && tls_files[i][0])
            return err_set(ERR_INVAL, "%s is set but net.tls = false: set net.tls = true to use it",
                           tls_keys[i]);
    }
    char where[160];
    if (!c->net.tls && !c->net.cluster_key_file[0] && !c->net.insecure &&
        cfg_net_exposed(c, where, sizeof where))
        return err_set(ERR_INVAL,
                       "%s is beyond loopback and the peers have no keys: anyone on that network "
                       "could join the run, read it and inject values. Make keys (spartan keys "
                       "init DIR, then spartan keys add DIR NAME for each peer) and set net.tls = "
                       "true with net.tls_ca, net.tls_cert and net.tls_key (spartan launch does "
                       "it for you); on a LAN, net.cluster_key_file authenticates without "
                       "encrypting; or set net.insecure = true on a network you trust",
                       where);
    if (c->net.max_peers && !c->net.join[0])
        return err_set(ERR_INVAL, "net.max_peers needs net.join (net.peers fixes the group)");
    if (c->net.max_peers && c->net.max_peers < c->net.world)
        return err_set(ERR_INVAL, "net.max_peers (%d) must not be below net.world (%d)",
                       c->net.max_peers, c->net.world);
    if (c->train.mode == CFG_MODE_DDP && c->net.max_peers > c->net.world)
        return err_set(ERR_INVAL,
                       "train.mode = ddp needs every peer in every step: net.max_peers (%d) "
                       "must not exceed net.world (%d)",
                       c->net.max_peers, c->net.world);
    return ERR_OK;
}

int cfg_group_size(const cfg *c) {
    if (!c->net.join[0] && !c->net.discover) return cfg_peer_count(c->net.peers);
    return c->net.max_peers > c->net.world ? c->net.max_peers : c->net.world;
}

static void format_value(const cfg *c, const cfg_key *k, char *buf, size_t n) {
    const char *p = (const char *)c + k->off;
    switch (k->type) {
    case CFG_INT: snprintf(buf, n, "%d", *(const int *)p); break;
    case CFG_U64: snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)p); break;
    case CFG_F32: snprintf(buf, n, "%.9g", *(const float *)p); break;
    case CFG_BOOL: snprintf(buf, n, "%s", *(const int *)p ? "true" : "false"); break;
    case CFG_STR:
    case CFG_STR0: snprintf(buf, n, "%s", p); break;
    case CFG_ENUM: snprintf(buf, n, "%s", word_of(k->words, *(const int *)p)); break;
    }
}

void cfg_write(const cfg *c, FILE *f) {
    const char *section = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        if (strcmp(section, keys[i].section) != 0) {
            section = keys[i].section;
            fprintf(f, "%s[%s]\n", i ? "\n" : "", section);
        }
        char v[sizeof(((cfg *)0)->net.peers) + 8];
        format_value(c, &keys[i], v, sizeof v);
        // A line longer than libinih's buffer would not read back (read_line), so a long value
        // loses the spaces around '=' first: then a value read from an INI line always fits.
        int tight = strlen(keys[i].name) + 3 + strlen(v) > INI_MAX_LINE - 2;
        fprintf(f, tight ? "%s=%s\n" : "%s = %s\n", keys[i].name, v);
    }
}

char *cfg_to_string(const cfg *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) err_oom("open_memstream", 0);
    cfg_write(c, f);
    fclose(f);
    return buf;
}

void cfg_print_keys(FILE *f) {
    static const char *tn[] = {"int", "uint", "float", "string", "string", "enum", "bool"};
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key *k = &keys[i];
        char name[80];
        snprintf(name, sizeof name, "%s.%s", k->section, k->name);
        char all[128] = "";
        if (k->words) join_words(k->words, all, sizeof all);
        fprintf(f, "  %-22s %-6s default %-28s %s%s%s%s\n", name, tn[k->type],
                k->def[0] ? k->def : "\"\"", k->help, k->words ? " (" : "", all,
                k->words ? ")" : "");
    }
}

// Keys outside [model] that peers must agree on: they decide the data order, the init and what
// the exchanges compute (the aggregation rules too: peers that aggregate differently would drift
// apart). Per-peer behaviour (threads, max_stale, timeouts, apply, net.max_offences) may differ.
static const char *const shared_keys[] = {
    "train.seed",       "train.mode",   "sparta.p",         "sparta.every",    "sparta.selector",
    "sparta.reduce",    "sparta.dtype", "sparta.aggregate", "sparta.trim",     "sparta.fanout",
    "diloco.H",         "diloco.lr",    "diloco.momentum",  "diloco.nesterov", "diloco.dtype",
    "diloco.aggregate", "diloco.trim",  "diloco.max_norm",  "ddp.dtype",
};

int cfg_loopback_host(const char *addr) {
    const char *h = strstr(addr, "://");
    h = h ? h + 3 : addr;
    while (*h == ' ')
        h++;
    if (!strncmp(h, "[::1]", 5) || !strcmp(h, "::1")) return 1;
    const char *colon = strrchr(h, ':');
    size_t n = colon ? (size_t)(colon - h) : strlen(h);
    if (n == 9 && !strncmp(h, "localhost", 9)) return 1;
    return n > 4 && !strncmp(h, "127.", 4);
}

int cfg_net_exposed(const cfg *c, char *where, size_t n) {
    const char *one[2] = {c->net.join, c->net.listen};
    for (int i = 0; i < 2; i++)
        if (one[i][0] && !cfg_loopback_host(one[i])) {
            snprintf(where, n, "%s %s", i ? "net.listen" : "net.join", one[i]);
            return 1;
        }
    int np = c->net.peers[0] ? cfg_peer_count(c->net.peers) : 0;
    for (int i = 0; i < np; i++) {
        char a[256];
        if (cfg_peer_entry(c->net.peers, i, a, sizeof a) == 0 && !cfg_loopback_host(a)) {
            snprintf(where, n, "net.peers entry %s", a);
            return 1;
        }
    }
    if (c->net.discover && strncmp(c->net.discover_addr, "127.", 4)) {
        snprintf(where, n, "net.discover = lan (%s)",
                 c->net.discover_addr[0] ? c->net.discover_addr : "broadcast");
        return 1;
    }
    return 0;
}

int cfg_peer_count(const char *peers) {
    if (!peers[0]) return 1;
    int n = 1;
    for (const char *p = peers; *p; p++)
        n += *p == ',';
    return n;
}

int cfg_peer_entry(const char *peers, int i, char *buf, size_t n) {
    buf[0] = 0;
    for (int k = 0; *peers; k++) {
        while (*peers == ' ')
            peers++;
        const char *comma = strchr(peers, ',');
        if (k == i) {
            snprintf(buf, n, "%.*s", (int)(comma ? comma - peers : (long)strlen(peers)), peers);
            return 0;
        }
        if (!comma) break;
        peers = comma + 1;
    }
    return -1;
}

size_t cfg_shared_write(const cfg *c, char *buf, size_t n) {
    ASSERT(buf != NULL && n > 0);
    size_t len = 0;
    buf[0] = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        char full[160], val[CFG_PATH_MAX + 8];
        snprintf(full, sizeof full, "%s.%s", keys[i].section, keys[i].name);
        int shared = strcmp(keys[i].section, "model") == 0;
        for (size_t j = 0; !shared && j < sizeof shared_keys / sizeof shared_keys[0]; j++)
            shared = strcmp(full, shared_keys[j]) == 0;
        if (!shared) continue;
        format_value(c, &keys[i], val, sizeof val);
        int w = snprintf(buf + len, n - len, "%s=%s\n", full, val);
        if (w < 0 || (size_t)w >= n - len) {
            len = n - 1;
            break;
        }
        len += (size_t)w;
    }
    return len;
}

void cfg_print_sections(FILE *f) {
    for (size_t i = 0; i < N_KEYS; i++) {
        size_t j = 0;
        while (j < i && strcmp(keys[j].section, keys[i].section))
            j++;
        if (j == i) fprintf(f, "%s[%s]", i ? ", " : "", keys[i].section);
    }
}
