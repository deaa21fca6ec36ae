// train_cmd.c: `spartan train` and `spartan eval`. The train loop prints a progress line every
// log interval, evaluates, writes metrics.csv and checkpoints, and on SIGINT/SIGTERM saves a
// checkpoint and exits cleanly. Main thread only; the signal handler only sets a flag.
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/data.h"
#include "train/base/args.h"
#include "train/base/ckdir.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/rng.h"
#include "train/base/sys.h"
#include "train/ckpt.h"
#include "train/cmd/cmds.h"
#include "train/cmd/status_srv.h"
#include "train/gpt.h"
#include "train/ops.h"
#include "train/sync.h"
#include "train/trainer.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void train_usage(FILE *f, const args_opt *opts, int n_opts) {
    fprintf(f,
            "usage: spartan train CONFIG [--set section.key=value ...] [--resume CKPT|DIR|auto]\n"
            "       [--overwrite] [--peers HOST:PORT,...] [--rank R]\n\n"
            "Trains GPT-2 on the token shards of data.dir. Progress goes to stderr every\n"
            "train.log_interval steps, val loss every train.eval_interval steps; metrics.csv and\n"
            "checkpoints (ckpt_<step>.h5) go to train.out_dir. Ctrl-C saves a checkpoint and\n"
            "exits; --resume continues bit-exactly from a checkpoint (or a folder's newest).\n\n"
            "options:\n");
    args_print_table(f, opts, n_opts);
    fprintf(f, "\nconfig keys (INI sections ");
    cfg_print_sections(f);
    fprintf(f, "):\n");
    cfg_print_keys(f);
}

static void fmt_eta(char *buf, size_t n, double s) {
    if (s >= 3600)
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60)
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else
        snprintf(buf, n, "%ds", (int)s);
}

// save_ckpt writes ckpt_<step>.h5 into train.out_dir (pruning older ones after an interval
// checkpoint) and records it in snap (may be NULL) for /status.
static int save_ckpt(trainer *t, const cfg *c, int interval, status_snap *snap) {
    char path[CFG_PATH_MAX + 32];
    ckdir_name(path, sizeof path, c->train.out_dir, trainer_step_index(t));
    int rc = trainer_save(t, path);
    if (rc) {
        LOG_E("train", "checkpoint failed: %s", err_msg());
        return rc;
    }
    LOG_I("train", "checkpoint step=%d path=%s", trainer_step_index(t), path);
    if (snap) {
        snprintf(snap->ckpt, sizeof snap->ckpt, "%s", path);
        snap->ckpt_step = trainer_step_index(t);
    }
    if (interval && c->train.keep_ckpts > 0)
        ckdir_prune(c->train.out_dir, c->train.keep_ckpts, path);
    return ERR_OK;
}

// The columns of metrics.csv that every run has; the sync modules' named metrics follow.
#define CSV_COMMON                                                                              \
    "step,loss,val_loss,lr,grad_norm,tokens_per_s,ms_per_step,elapsed_s,bytes_sent,bytes_recv," \
    "bytes_sent_step,bytes_recv_step,msgs_dropped"

// csv_header writes the header line of metrics.csv for a run whose sync modules report m (the
// same names at every report: the header holds for the whole run) into buf (n bytes).
static void csv_header(const train_sync_metrics *m, char *buf, size_t n) {
    size_t len = (size_t)snprintf(buf, n, "%s", CSV_COMMON);
    for (int i = 0; i < m->n && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, ",%s", m->metrics[i].name);
    if (len < n) snprintf(buf + len, n - len, "\n");
}

// open_metrics opens metrics.csv in train.out_dir with the header of these sync metrics; a resumed
// run appends to the file, whose header must then be the same (another set of sync modules would
// mix two layouts in one file). Returns the file, or NULL with ERR_IO or ERR_INVAL set.
static FILE *open_metrics(const cfg *c, int resumed, const train_sync_metrics *m) {
    char path[CFG_PATH_MAX + 32], header[2048], old[2048] = "";
    snprintf(path, sizeof path, "%s/metrics.csv", c->train.out_dir);
    csv_header(m, header, sizeof header);
    FILE *f = resumed ? fopen(path, "r") : NULL;
    if (f) {
        if (!fgets(old, sizeof old, f)) old[0] = 0;
        fclose(f);
        if (old[0] && strcmp(old, header) != 0) {
            err_set(ERR_INVAL,
                    "%s has other columns than this run writes (an earlier spartan, or another "
                    "set of sync modules: SPARTA, DiLoCo, DDP); move it away to resume",
                    path);
            return NULL;
        }
    }
    f = fopen(path, resumed ? "a" : "w");
    if (!f) {
        err_set(ERR_IO, "cannot write '%s': %s", path, strerror(errno));
        return NULL;
    }
    if (!resumed || ftell(f) == 0) fputs(header, f);
    return f;
}

// skip_set and apply_set handle --set. The first parse only finds CONFIG; the second applies
// the assignments on top of the loaded file, so --set wins whatever the argument order.
static int skip_set(void *c, const char *kv) {
    (void)c;
    (void)kv;
    return ERR_OK;
}

static int apply_set(void *c, const char *kv) { return cfg_set(c, kv); }

// train_args: what the command line adds to the config.
typedef struct {
    const char *resume; // --resume CKPT|DIR
    const char *peers;  // --peers LIST (overrides net.peers)
    const char *join;   // --join HOST:PORT (overrides net.join)
    long long rank;     // --rank R, or -1
    int overwrite;      // --overwrite: replace an earlier run in train.out_dir
} train_args;

// env_first returns the value of the first of vars(n) that is set and not empty (its name in
// *name), or NULL; with a value, *num is its decimal number and *ok whether it was one.
static const char *env_first(const char *const *vars, size_t n, const char **name, long *num,
                             int *ok) {
    for (size_t i = 0; i < n; i++) {
        const char *v = getenv(vars[i]);
        if (!v || !*v) continue;
        char *end;
        *name = vars[i];
        *num = strtol(v, &end, 10);
        *ok = !*end;
        return v;
    }
    return NULL;
}

// env_world fills in net.world for a rendezvous started by another launcher (mpirun, srun,
// torchrun): with net.join and no net.world, the first of SPARTAN_WORLD_SIZE, WORLD_SIZE,
// OMPI_COMM_WORLD_SIZE, PMI_SIZE and SLURM_NTASKS that is set. Returns ERR_OK or ERR_INVAL naming
// the variable.
static int env_world(cfg *c) {
    static const char *vars[] = {"SPARTAN_WORLD_SIZE", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE",
                                 "PMI_SIZE", "SLURM_NTASKS"};
    if (!c->net.join[0] || c->net.world) return ERR_OK;
    const char *name;
    long w;
    int ok;
    const char *v = env_first(vars, sizeof vars / sizeof vars[0], &name, &w, &ok);
    if (!v) return ERR_OK;
    if (!ok || w < 1 || w > 256)
        return err_set(ERR_INVAL, "%s='%s' is not a number of peers (1-256)", name, v);
    c->net.world = (int)w;
    return ERR_OK;
}

// parse_train_args fills c from CONFIG and --set, and a from the other options. Returns -1 when
// training should go on, else the exit code: 0 after --help, 2 for a bad command line or config.
static int parse_train_args(int argc, char **argv, cfg *c, train_args *a) {
    const char *config[2];
    int n_config = 0;
    memset(a, 0, sizeof *a);
    a->rank = -1;
    args_opt opts[] = {
        {"--set", NULL, ARGS_REPEAT, c, 0, 0, skip_set, "SECTION.KEY=VALUE",
         "override one config key (repeatable; see the keys below)"},
        {"--resume", NULL, ARGS_STR, &a->resume, 0, 0, NULL, "CKPT|DIR|auto",
         "continue from a checkpoint, or from the newest one in a folder; auto: the newest "
         "readable one in train.out_dir (corrupt or partial ones are skipped, naming them), or "
         "a fresh start when it holds none"},
        {"--rank", NULL, ARGS_I64, &a->rank, 0, 1 << 20, NULL, "R",
         "this peer's rank (else SPARTAN_RANK, RANK, OMPI_COMM_WORLD_RANK, PMI_RANK, "
         "SLURM_PROCID, MLX_RANK, then train.rank)"},
        {"--peers", NULL, ARGS_STR, &a->peers, 0, 0, NULL, "HOST:PORT,...",
         "every peer's address in rank order (overrides net.peers)"},
        {"--join", NULL, ARGS_STR, &a->join, 0, 0, NULL, "HOST:PORT",
         "join the group of the peer at this address, or found it if it is ours (net.join; give "
         "net.world, or run under a launcher that sets WORLD_SIZE; rank 0 founds it)"},
        {"--overwrite", NULL, ARGS_FLAG, &a->overwrite, 0, 0, NULL, NULL,
         "start afresh in a train.out_dir that holds an earlier run (its checkpoints and "
         "metrics.csv are deleted)"},
    };
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), config, 2, &n_config);
    if (rc == ARGS_HELP) {
        train_usage(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    if (!rc && n_config != 1)
        rc = n_config ? err_set(ERR_INVAL, "more than one config given: '%s' and '%s'", config[0],
                                config[1])
                      : err_set(ERR_INVAL, "no config file given");
    if (rc) {
        fprintf(stderr, "spartan train: %s (see spartan train --help)\n", err_msg());
        return 2;
    }
    cfg_defaults(c);
    rc = cfg_load_ini(c, config[0]);
    opts[0].fn = apply_set;
    if (!rc) rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), config, 2, &n_config);
    if (!rc && a->peers) {
        if (strlen(a->peers) >= sizeof c->net.peers)
            rc = err_set(ERR_INVAL, "--peers: list is too long");
        else
            snprintf(c->net.peers, sizeof c->net.peers, "%s", a->peers);
    }
    if (!rc && a->join) {
        if (strlen(a->join) >= sizeof c->net.join)
            rc = err_set(ERR_INVAL, "--join: address is too long");
        else
            snprintf(c->net.join, sizeof c->net.join, "%s", a->join);
    }
    if (!rc) rc = env_world(c);
    if (!rc) rc = cfg_validate(c);
    if (rc) {
        fprintf(stderr, "spartan train: %s\n", err_msg());
        return 2;
    }
    return -1;
}

// entry_host copies the host of the i-th "host:port" entry of peers into buf ("" if none).
static void entry_host(const char *peers, int i, char *buf, size_t n) {
    char e[256];
    buf[0] = 0;
    if (cfg_peer_entry(peers, i, e, sizeof e)) return;
    char *colon = strrchr(e, ':'), *h = e;
    if (!colon) return;
    if (*h == '[' && colon > h && colon[-1] == ']') { // [v6]:port
        h++;
        colon--;
    }
    snprintf(buf, n, "%.*s", (int)(colon - h), h);
}

static int is_loopback(const char *h) {
    return !strncmp(h, "127.", 4) || !strcmp(h, "localhost") || !strcmp(h, "::1");
}

// local_peers counts the peers of net.peers on this peer's host (this one included): the same
// host name as our own entry, or loopback like it.
static int local_peers(const char *peers, int world, int rank) {
    char mine[256], h[256];
    entry_host(peers, rank, mine, sizeof mine);
    int n = 0;
    for (int i = 0; i < world; i++) {
        entry_host(peers, i, h, sizeof h);
        n += !strcmp(h, mine) || (is_loopback(h) && is_loopback(mine));
    }
    return n > 0 ? n : 1;
}

// pick_threads: train.threads = 0 divides the cores among the peers of this host, so peers
// started on one machine do not oversubscribe it (3 peers with all cores each on 2 cores ran
// 5.5x slower, and most SPARTA rounds went late); an explicit count that oversubscribes is
// warned about.
static int pick_threads(const cfg *c, int world) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    int local = world > 1 ? local_peers(c->net.peers, world, c->train.rank) : 1;
    if (c->train.threads == 0) return local > 1 ? (int)(cores / local > 1 ? cores / local : 1) : 0;
    if ((long)c->train.threads * local > cores)
        LOG_W("train",
              "train.threads = %d on each of the %d peers of this host: %ld threads on %ld cores "
              "(train.threads = 0 divides them)",
              c->train.threads, local, (long)c->train.threads * local, cores);
    return c->train.threads;
}

// resolve_rank picks the rank: --rank, then the launchers' environment variables, then
// train.rank (with net.join: none, *want = -1, and the group gives one). *want is the rank asked
// for, or -1. Returns ERR_OK or ERR_INVAL naming the source of a bad value.
static int resolve_rank(long long rank_arg, cfg *c, int world, int *want) {
    static const char *vars[] = {"SPARTAN_RANK", "RANK",         "OMPI_COMM_WORLD_RANK",
                                 "PMI_RANK",     "SLURM_PROCID", "MLX_RANK"};
    long long rank = rank_arg;
    const char *src = "--rank";
    if (rank < 0) {
        long r;
        int ok;
        const char *v = env_first(vars, sizeof vars / sizeof vars[0], &src, &r, &ok);
        if (v && (!ok || r < 0)) return err_set(ERR_INVAL, "%s='%s' is not a rank", src, v);
        if (v) rank = r; // src names the variable (it stays "--rank" without one)
    }
    *want = (int)rank;
    if (c->net.discover) { // the sorted node IDs give it (make_sync); a rank asked for is moot
        c->train.rank = 0;
        *want = -1;
        return ERR_OK;
    }
    if (rank < 0 && c->net.join[0]) { // the group gives the lowest free rank
        c->train.rank = 0;            // the data stream until then (nothing is drawn yet)
        return ERR_OK;
    }
    if (rank < 0) {
        rank = c->train.rank;
        src = "train.rank";
    }
    *want = (int)rank;
    int cap = cfg_group_size(c);
    if (c->net.join[0] && rank >= cap)
        return err_set(ERR_INVAL, "%s = %lld, but the group holds ranks below %d (net.%s)", src,
                       rank, cap, c->net.max_peers ? "max_peers" : "world");
    if (!c->net.join[0] && world > 1 && rank >= world) // alone, it only selects the data stream
        return err_set(ERR_INVAL, "%s = %lld, but net.peers lists %d peer%s", src, rank, world,
                       world == 1 ? "" : "s");
    c->train.rank = (int)rank;
    return ERR_OK;
}

// run_id identifies a run on the wire: the architecture and the seed.
static uint64_t run_id(const cfg_model *mc, uint64_t seed) {
    uint64_t h = rng_hash(seed);
    const int v[5] = {mc->n_layer, mc->n_head, mc->n_embd, mc->block_size, mc->vocab_size};
    for (int i = 0; i < 5; i++)
        h = rng_hash(h ^ (uint64_t)v[i]);
    return h ? h : 1;
}

// The training loop's reporting: progress lines over a window of steps, one metrics.csv row per
// step, with the sync modules' counters and named metrics when peers are configured.
typedef struct {
    FILE *csv;
    double win_ms, win_tok;
    int win_steps;
    train_sync_metrics prev;     // counters after the previous step (per-step CSV columns)
    uint64_t win_sent, win_recv; // counters at the start of the progress window
    int n_metrics;               // the sync modules' metrics, as in the metrics.csv header
} reporter;

// get_metrics returns the sync modules' report in *m (zeroes without any module).
static void get_metrics(const train_sync *sync, train_sync_metrics *m) {
    memset(m, 0, sizeof *m);
    if (sync->get_metrics) sync->get_metrics(sync->ctx, m);
}

// progress_fields writes the sync part of a progress line: bytes for every module, then the
// labelled metrics of the modules that run (SPARTA rounds, DiLoCo outer steps, DDP all-reduce
// time), then the messages dropped.
static void progress_fields(char *xs, size_t n, const train_sync_metrics *m, const reporter *r) {
    size_t len = (size_t)snprintf(xs, n,
                                  " sent_mb=%.2f recv_mb=%.2f sent_kb/step=%.1f "
                                  "recv_kb/step=%.1f",
                                  m->bytes_sent / 1e6, m->bytes_recv / 1e6,
                                  (double)(m->bytes_sent - r->win_sent) / 1e3 / r->win_steps,
                                  (double)(m->bytes_recv - r->win_recv) / 1e3 / r->win_steps);
    for (int i = 0; i < m->n && len < n; i++) {
        const train_metric *x = &m->metrics[i];
        if (x->label)
            len += (size_t)snprintf(xs + len, n - len, " %s=%.*f", x->label,
                                    x->decimals > 1 ? 1 : x->decimals, x->value);
    }
    if (len < n)
        snprintf(xs + len, n - len, " msgs_dropped=%llu", (unsigned long long)m->msgs_dropped);
}

static void report_step(reporter *r, const cfg_train *tc, const trainer_stats *st, float val,
                        const train_sync *sync, double elapsed) {
    train_sync_metrics m;
    get_metrics(sync, &m);
    ASSERT(m.n == r->n_metrics); // a module reports the same metrics at every call
    r->win_ms += st->ms;
    r->win_tok += (double)st->tokens;
    r->win_steps++;
    char vbuf[32] = "";
    if (isfinite(val)) snprintf(vbuf, sizeof vbuf, "%.6f", val);
    fprintf(r->csv, "%d,%.6f,%s,%.6g,%.6f,%.1f,%.3f,%.3f,%llu,%llu,%llu,%llu,%llu", st->step,
            st->loss, vbuf, st->lr, st->grad_norm, st->tokens / (st->ms / 1e3), st->ms, elapsed,
            (unsigned long long)m.bytes_sent, (unsigned long long)m.bytes_recv,
            (unsigned long long)(m.bytes_sent - r->prev.bytes_sent),
            (unsigned long long)(m.bytes_recv - r->prev.bytes_recv),
            (unsigned long long)m.msgs_dropped);
    for (int i = 0; i < m.n; i++)
        fprintf(r->csv, ",%.*f", m.metrics[i].decimals, m.metrics[i].value);
    fputc('\n', r->csv);
    fflush(r->csv);
    r->prev = m;
    int last = st->step == tc->max_iters;
    if (st->step % tc->log_interval == 0 || last || st->step == 1) {
        double ms = r->win_ms / r->win_steps;
        char eta[32], xs[512] = "";
        fmt_eta(eta, sizeof eta, ms * (tc->max_iters - st->step) / 1e3);
        if (sync->get_metrics) progress_fields(xs, sizeof xs, &m, r);
        LOG_I("train", "step=%d/%d loss=%.4f lr=%.3e norm=%.3f tok/s=%.0f ms/step=%.1f eta=%s%s",
              st->step, tc->max_iters, st->loss, st->lr, st->grad_norm,
              r->win_tok / (r->win_ms / 1e3), ms, eta, xs);
        r->win_ms = r->win_tok = 0;
        r->win_sent = m.bytes_sent;
        r->win_recv = m.bytes_recv;
        r->win_steps = 0;
    }
    if (isfinite(val)) LOG_I("train", "step=%d val_loss=%.4f", st->step, val);
}

// publish_step fills snap from the step just reported and hands it to the status server.
static void publish_step(status_srv *ss, status_snap *snap, const trainer_stats *st, float val,
                         const reporter *rep, double elapsed) {
    snap->step = st->step;
    snap->loss = st->loss;
    snap->lr = st->lr;
    snap->norm = st->grad_norm;
    snap->tok_s = st->ms > 0 ? st->tokens / (st->ms / 1e3) : 0;
    snap->elapsed_s = elapsed;
    if (isfinite(val)) {
        snap->val_loss = val;
        snap->val_step = st->step;
    }
    snap->sync = rep->prev;
    status_srv_publish(ss, snap);
}

// train_loop runs steps until max_iters or a signal, with evaluation, reporting and interval
// checkpoints, then saves the final checkpoint; with a status server (ss, may be NULL) every step
// is published in snap. With peers (world > 1), a run that never exchanged with one fails unless
// net.allow_alone (a resumed run only warns: its peers may have finished before it came back).
// Returns the exit code.
static int train_loop(trainer *t, const cfg *ec, FILE *metrics, const train_sync *sync, int world,
                      status_srv *ss, status_snap *snap) {
    const cfg_train *tc = &ec->train;
    double t0 = sys_now_ms();
    reporter rep = {.csv = metrics};
    train_sync_metrics m0;
    get_metrics(sync, &m0);
    rep.n_metrics = m0.n;
    int rc = 0, last_saved = -1, start = trainer_step_index(t);
    float val = NAN;
    while (trainer_step_index(t) < tc->max_iters && !stop_requested) {
        trainer_stats st;
        if (trainer_step(t, &st)) {
            LOG_E("train", "step=%d: %s", trainer_step_index(t), err_msg());
            rc = 1;
            break;
        }
        double elapsed = (sys_now_ms() - t0) / 1e3;
        int last = st.step == tc->max_iters;
        int do_eval = (tc->eval_interval && st.step % tc->eval_interval == 0) || last;
        val = do_eval ? trainer_eval(t) : NAN;
        if (!isfinite(st.loss)) {
            LOG_E("train", "step=%d loss is %f: training diverged (lower train.learning_rate?)",
                  st.step, st.loss);
            rc = 1;
            break;
        }
        report_step(&rep, tc, &st, val, sync, elapsed);
        if (ss) publish_step(ss, snap, &st, val, &rep, elapsed);
        if (tc->ckpt_interval && st.step % tc->ckpt_interval == 0 && !last) {
            if (save_ckpt(t, ec, 1, snap)) {
                rc = 1;
                break;
            }
            last_saved = st.step;
        }
    }
    if (stop_requested)
        LOG_W("train", "interrupted at step %d: saving a checkpoint", trainer_step_index(t));
    if (!rc && last_saved != trainer_step_index(t) && save_ckpt(t, ec, 0, snap)) rc = 1;
    if (ss) status_srv_publish(ss, snap); // the last checkpoint
    if (!rc && !stop_requested && isfinite(val))
        LOG_I("train", "done step=%d val_loss=%.4f", trainer_step_index(t), val);
    if (!rc && !stop_requested && world > 1 && sync->get_metrics && !ec->net.allow_alone) {
        train_sync_metrics m;
        get_metrics(sync, &m);
        if (m.exchanges == 0 && start > 0) {
            LOG_W("train",
                  "no exchange with any peer happened since the resume at step %d: it finished "
                  "alone (its peers had finished or were unreachable)",
                  start);
        } else if (m.exchanges == 0) {
            LOG_E("train", "no exchange with any peer happened in this run: it trained alone "
                           "(set net.allow_alone = true if that is intended)");
            rc = 1;
        }
    }
    return rc;
}

// resume_auto finds what --resume auto continues from: the newest checkpoint in dir that opens
// as a whole checkpoint of a run (an HDF5 file whose size matches its superblock, with its step
// attribute), skipping the others with a warning that names them. *out (caller frees) is NULL
// when dir holds no checkpoint at all (a fresh start). Returns ERR_OK, or ERR_FORMAT when every
// checkpoint there is unreadable.
static int resume_auto(const char *dir, char **out) {
    *out = NULL;
    int n = 0, skipped = 0;
    long *steps = ckdir_steps(dir, &n);
    for (int i = n - 1; i >= 0 && !*out; i--) {
        char path[CFG_PATH_MAX + 32];
        ckdir_name(path, sizeof path, dir, steps[i]);
        ckpt_reader *r = NULL;
        int64_t step = -1;
        int rc = ckpt_reader_open(&r, path);
        if (!rc) rc = ckpt_read_attr_i64(r, "step", &step);
        ckpt_reader_close(r);
        if (!rc && step != steps[i])
            rc = err_set(ERR_FORMAT, "its step attribute is %lld", (long long)step);
        if (rc) {
            LOG_W("train", "--resume auto: skipping %s: %s", path, err_msg());
            skipped++;
            continue;
        }
        *out = xstrdup(path);
        LOG_I("train", "--resume auto: %s (step %ld%s)", path, steps[i],
              skipped ? ", newer ones skipped" : "");
    }
    free(steps);
    if (!*out && n > 0)
        return err_set(ERR_FORMAT,
                       "--resume auto: none of the %d checkpoints in %s is readable (see above); "
                       "--overwrite starts afresh",
                       n, dir);
    if (!*out) LOG_I("train", "--resume auto: no checkpoint in %s yet: starting afresh", dir);
    return ERR_OK;
}

// check_out_dir keeps a fresh run from mixing with an earlier one in the same folder (its newer
// checkpoints would be picked by sample, serve and --resume, and metrics.csv would be lost
// without a word). Returns -1 to go on, else the exit code. --overwrite deletes the old run.
static int check_out_dir(const char *dir, int overwrite) {
    char path[CFG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/metrics.csv", dir);
    struct stat st;
    int has_csv = stat(path, &st) == 0 && st.st_size > 0;
    long newest = 0;
    int n = ckdir_count(dir, &newest);
    if (!has_csv && n == 0) return -1;
    char what[128];
    if (n > 0)
        snprintf(what, sizeof what, "%d checkpoint%s up to step %ld%s", n, n == 1 ? "" : "s",
                 newest, has_csv ? " and metrics.csv" : "");
    else
        snprintf(what, sizeof what, "metrics.csv");
    if (!overwrite) {
        fprintf(stderr,
                "spartan train: %s already holds a run (%s): pass --resume %s to continue it, "
                "--overwrite to start afresh (deleting it), or another train.out_dir\n",
                dir, what, dir);
        return 2;
    }
    int removed = ckdir_prune(dir, 0, NULL);
    if (has_csv && unlink(path) != 0) {
        LOG_E("train", "--overwrite: cannot delete '%s': %s", path, strerror(errno));
        return 1;
    }
    if (removed != n) {
        LOG_E("train", "--overwrite: deleted %d of the %d checkpoints in %s", removed, n, dir);
        return 1;
    }
    LOG_I("train", "--overwrite: deleted the earlier run in %s (%s)", dir, what);
    return -1;
}

int train_cmd_main(int argc, char **argv, train_sync_factory make_sync) {
    cfg c;
    train_args a;
    int code = parse_train_args(argc, argv, &c, &a);
    if (code >= 0) return code;
    static const int levels[] = {[CFG_LOG_ERROR] = LOG_ERROR,
                                 [CFG_LOG_WARN] = LOG_WARN,
                                 [CFG_LOG_INFO] = LOG_INFO,
                                 [CFG_LOG_DEBUG] = LOG_DEBUG};
    log_set_level(levels[c.log.level]);
    int world = c.net.join[0] || c.net.discover ? c.net.world : cfg_peer_count(c.net.peers);
    int want = -1;
    if (resolve_rank(a.rank, &c, world, &want)) {
        fprintf(stderr, "spartan train: %s\n", err_msg());
        return 2;
    }
    int threads = ops_init(pick_threads(&c, world));
    if (sys_mkdir_p(c.train.out_dir)) {
        LOG_E("train", "%s", err_msg());
        return 1;
    }
    int autoresume = a.resume && !strcmp(a.resume, "auto");
    char *resume = NULL;
    if (autoresume && resume_auto(c.train.out_dir, &resume)) {
        LOG_E("train", "%s", err_msg());
        return 1;
    }
    // a fresh start, unless resuming (auto with nothing to resume replaces what is there)
    if ((!a.resume || (autoresume && !resume)) &&
        (code = check_out_dir(c.train.out_dir, a.overwrite || autoresume)) >= 0)
        return code;
    if (a.resume && !autoresume && ckdir_resolve(a.resume, &resume)) {
        LOG_E("train", "--resume: %s", err_msg());
        return 1;
    }
    trainer *t = NULL;
    if (trainer_create(&t, &c, resume)) {
        LOG_E("train", "%s", err_msg());
        free(resume);
        return 1;
    }
    const cfg *ec = trainer_cfg(t);
    gpt_model *m = trainer_model(t);
    // The status server starts before the peers are awaited: a busy port fails at once, and
    // /status answers (step 0) while the group forms.
    status_srv *ss = NULL;
    status_snap snap = {.rank = ec->train.rank,
                        .world = 1,
                        .step = trainer_step_index(t),
                        .max_iters = ec->train.max_iters,
                        .val_loss = NAN,
                        .ckpt_step = -1};
    if (ec->net.status_port) {
        if (status_srv_create(&ss, ec->net.status_host, ec->net.status_port)) {
            LOG_E("train", "net.status_port: %s", err_msg());
            trainer_destroy(t);
            free(resume);
            return 1;
        }
        status_srv_publish(ss, &snap);
        LOG_I("train", "status on http://%s%s%s:%d/ (/status, /metrics)",
              strchr(ec->net.status_host, ':') ? "[" : "", ec->net.status_host,
              strchr(ec->net.status_host, ':') ? "]" : "", status_srv_port(ss));
    }
    train_sync sync;
    memset(&sync, 0, sizeof sync);
    uint64_t id = run_id(gpt_config(m), ec->train.seed);
    int rank = want;
    if (make_sync && make_sync(&sync, ec, &rank, world, id, gpt_params(m), gpt_n_params(m),
                               trainer_step_index(t))) {
        LOG_E("train", "%s", err_msg());
        status_srv_destroy(ss);
        trainer_destroy(t);
        free(resume);
        return 1;
    }
    if (rank >= 0 && rank != ec->train.rank) trainer_set_rank(t, rank); // the group gave it
    ec = trainer_cfg(t);
    trainer_set_sync(t, &sync);
    FILE *metrics = NULL;
    if (resume && trainer_load_sync(t, resume)) {
        LOG_E("train", "%s: %s", resume, err_msg());
    } else if (trainer_join(t)) {
        LOG_E("train", "joining the peers: %s", err_msg());
    } else {
        train_sync_metrics sm; // the metrics.csv columns of the sync modules
        get_metrics(&sync, &sm);
        if (!(metrics = open_metrics(ec, resume != NULL, &sm))) LOG_E("train", "%s", err_msg());
    }
    if (!metrics) {
        if (sync.destroy) sync.destroy(sync.ctx);
        status_srv_destroy(ss);
        trainer_destroy(t);
        free(resume);
        return 1;
    }
    char cfg_path[CFG_PATH_MAX + 32];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.ini", ec->train.out_dir);
    FILE *cf = fopen(cfg_path, "w");
    if (cf) {
        cfg_write(ec, cf);
        fclose(cf);
    }
    const cfg_model *mc = gpt_config(m);
    LOG_I("train", "model L=%d NH=%d C=%d T=%d V=%d params=%zu threads=%d blas=\"%s\" rank=%d/%d",
          mc->n_layer, mc->n_head, mc->n_embd, mc->block_size, mc->vocab_size, gpt_n_params(m),
          threads, ops_blas_name(), ec->train.rank, world > 1 ? cfg_group_size(ec) : 1);
    if (resume) LOG_I("train", "resumed from %s at step %d", resume, trainer_step_index(t));
    free(resume);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    snap.rank = ec->train.rank;
    snap.world = world > 1 ? cfg_group_size(ec) : 1;
    get_metrics(&sync, &snap.sync);
    if (ss) status_srv_publish(ss, &snap);
    int rc = train_loop(t, ec, metrics, &sync, world, ss, &snap);
    fclose(metrics);
    status_srv_destroy(ss); // before the sync modules: nothing it shows points into them
    if (sync.destroy) sync.destroy(sync.ctx);
    trainer_destroy(t);
    return rc;
}

static void eval_usage(FILE *f, const args_opt *opts, int n_opts) {
    fprintf(f, "usage: spartan eval CKPT|DIR --data SHARD [--seq-len T] [--max-windows M] "
               "[--batch B] [--threads N]\n\n"
               "Evaluates the windows x = tokens[i*T .. i*T+T-1], y = tokens[i*T+1 .. i*T+T] for\n"
               "i = 0, 1, ... while they fit (T defaults to the model's block_size). The last\n"
               "line of stdout is `loss <mean cross-entropy over all predicted positions>`.\n\n"
               "options:\n");
    args_print_table(f, opts, n_opts);
}

int eval_cmd_main(int argc, char **argv) {
    const char *ckpt = NULL, *shard_path = NULL;
    int T = 0, max_windows = 0, batch = 8, threads = 0, n_pos = 0;
    const args_opt opts[] = {
        {"--data", NULL, ARGS_STR, &shard_path, 0, 0, NULL, "SHARD", "token shard (required)"},
        {"--seq-len", NULL, ARGS_INT, &T, 1, 1 << 30, NULL, "T",
         "window length (default: the model's block_size)"},
        {"--max-windows", NULL, ARGS_INT, &max_windows, 1, 1 << 30, NULL, "M",
         "evaluate at most the first M windows (default: all)"},
        {"--batch", NULL, ARGS_INT, &batch, 1, 1 << 30, NULL, "B",
         "windows per forward pass (default 8)"},
        {"--threads", NULL, ARGS_INT, &threads, 0, 1 << 30, NULL, "N",
         "compute threads, 0 = all cores (default 0)"},
    };
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), &ckpt, 1, &n_pos);
    if (rc == ARGS_HELP) {
        eval_usage(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    if (!rc && (!ckpt || !shard_path))
        rc = err_set(ERR_INVAL, "need a checkpoint and --data SHARD");
    if (rc) {
        fprintf(stderr, "spartan eval: %s (see spartan eval --help)\n", err_msg());
        return 2;
    }
    ops_init(threads);
    gpt_model *m = NULL;
    data_shard *s = NULL;
    if ((rc = gpt_load(&m, ckpt, batch, 0, NULL, NULL)) || (rc = data_shard_open(&s, shard_path))) {
        fprintf(stderr, "spartan eval: %s\n", err_msg());
        gpt_destroy(m);
        return 1;
    }
    const cfg_model *mc = gpt_config(m);
    if (T == 0) T = mc->block_size;
    size_t n = data_shard_len(s);
    if (T > mc->block_size) {
        fprintf(stderr, "spartan eval: --seq-len %d exceeds the model's block_size %d\n", T,
                mc->block_size);
        rc = 2;
    } else if (n < (size_t)T + 1) {
        fprintf(stderr, "spartan eval: %s holds %zu tokens; one window needs %d\n", shard_path, n,
                T + 1);
        rc = 1;
    } else if (data_shard_max_token(s) >= mc->vocab_size) {
        fprintf(stderr, "spartan eval: %s has token id %d >= the model's vocab_size %d\n",
                shard_path, data_shard_max_token(s), mc->vocab_size);
        rc = 1;
    }
    if (rc) {
        data_shard_close(s);
        gpt_destroy(m);
        return rc;
    }
    size_t windows = (n - 1) / (size_t)T;
    if (max_windows && windows > (size_t)max_windows) windows = (size_t)max_windows;
    int32_t *x = xmalloc((size_t)batch * T * sizeof(int32_t));
    int32_t *y = xmalloc((size_t)batch * T * sizeof(int32_t));
    double sum = 0;
    for (size_t w = 0; w < windows; w += (size_t)batch) {
        int b = (int)((windows - w) < (size_t)batch ? windows - w : (size_t)batch);
        for (int i = 0; i < b; i++) {
            data_shard_read(s, (w + i) * (size_t)T, (size_t)T, x + (size_t)i * T);
            data_shard_read(s, (w + i) * (size_t)T + 1, (size_t)T, y + (size_t)i * T);
        }
        sum += (double)gpt_forward(m, x, y, b, T) * b;
        if (isatty(2) && windows > (size_t)batch)
            fprintf(stderr, "\reval %zu/%zu windows", w + (size_t)b, windows);
    }
    if (isatty(2) && windows > (size_t)batch) fprintf(stderr, "\n");
    printf("windows %zu seq_len %d tokens %zu\n", windows, T, windows * (size_t)T);
    printf("loss %.6f\n", sum / (double)windows);
    free(x);
    free(y);
    data_shard_close(s);
    gpt_destroy(m);
    return 0;
}
