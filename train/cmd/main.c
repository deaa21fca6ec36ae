// main.c: the bin/spartan entry point. It only dispatches subcommands to their modules; each
// module parses its own options. Runs on the main thread.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diloco/ddp.h"
#include "diloco/diloco.h"
#include "sparta/peer/discover.h"
#include "sparta/peer/hello.h"
#include "sparta/peer/peer.h"
#include "sparta/sparta.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/cmd/cmds.h"
#include "train/cmd/corr_cmd.h"
#include "train/cmd/data_cmd.h"
#include "train/cmd/keys_cmd.h"
#include "train/cmd/launch_cmd.h"
#include "train/cmd/plot_cmd.h"
#include "train/cmd/probe_cmd.h"
#include "train/cmd/sample_cmd.h"
#include "train/cmd/serve_cmd.h"
#include "train/cmd/status_cmd.h"

#ifndef SPARTAN_VERSION
#define SPARTAN_VERSION "0.1.0"
#endif

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} command;

// open_group_with opens the group of open_group (below) with the options o made there.
static int open_group_with(peer_group **g, const cfg *c, peer_opts *o, int rank, int world) {
    if (c->net.join[0]) {
        char listen[160];
        if (c->net.listen[0]) {
            snprintf(listen, sizeof listen, "%s", c->net.listen);
        } else if (rank == 0) { // rank 0 (asked for, or given by a launcher) founds the group
            snprintf(listen, sizeof listen, "%s", c->net.join);
        } else { // the join address's host, any port; the one that owns the address founds
            const char *colon = strrchr(c->net.join, ':');
            snprintf(listen, sizeof listen, "%.*s:0",
                     colon ? (int)(colon - c->net.join) : (int)strlen(c->net.join), c->net.join);
        }
        o->listen = listen;
        o->join = c->net.join;
        o->want_rank = rank;
        o->max_members = cfg_group_size(c);
        o->join_ms = c->sparta.timeout_ms > 10000 ? c->sparta.timeout_ms : 10000;
        return peer_group_create(g, o);
    }
    char(*addr)[PEER_ADDR_MAX] = xcalloc((size_t)world, sizeof *addr);
    const char **peers = xcalloc((size_t)world, sizeof(char *));
    int n = cfg_peer_count(c->net.peers), rc = ERR_OK;
    for (int i = 0; i < world && i < n; i++) {
        cfg_peer_entry(c->net.peers, i, addr[i], sizeof addr[i]);
        peers[i] = addr[i];
    }
    if (n != world) {
        rc = err_set(ERR_INVAL, "net.peers: expected %d addresses, found %d", world, n);
    } else {
        o->listen = c->net.listen[0] ? c->net.listen : peers[rank];
        o->peers = peers;
        o->world = world;
        o->rank = rank;
        rc = peer_group_create(g, o);
    }
    free(peers);
    free(addr);
    return rc;
}

// The peer group of a run with peers: its listening address is net.listen, or this peer's entry
// of net.peers; with net.join, a rendezvous of net.world peers at that address (without
// net.listen, rank 0 listens on it and founds the group, and the others listen on its host with
// a free port). The peer layer refuses peers of another run or other shared settings (hello), and
// expels a peer after net.max_offences rounds of non-finite values.
static int open_group(peer_group **g, const cfg *c, int rank, int world, uint64_t run_id,
                      const char *hello) {
    peer_opts o = {.run_id = run_id,
                   .shared = hello,
                   .build = SPARTAN_VERSION,
                   .rate_mbit = c->net.rate_mbit,
                   .delay_ms = c->net.delay_ms,
                   .loss = c->net.loss,
                   .seed = 0x5A17Aull + (uint64_t)(rank < 0 ? 0 : rank),
                   .tag = "net",
                   .tls_ca = c->net.tls ? c->net.tls_ca : NULL,
                   .tls_cert = c->net.tls ? c->net.tls_cert : NULL,
                   .tls_key = c->net.tls ? c->net.tls_key : NULL,
                   .max_offences = c->net.max_offences,
                   .heartbeat_ms = c->net.heartbeat_timeout > 0 ? c->net.heartbeat_timeout : -1};
    // without TLS, the cluster key authenticates every frame (peer.h)
    uint8_t key[DISCOVER_KEY_MAX];
    if (!c->net.tls && c->net.cluster_key_file[0]) {
        int rc = discover_load_key(c->net.cluster_key_file, key, &o.cluster_key_len);
        if (rc) return err_set(rc, "net.cluster_key_file: %s", err_msg());
        o.cluster_key = key;
    }
    int rc = open_group_with(g, c, &o, rank, world);
    memset(key, 0, sizeof key);
    return rc;
}

// With net.discover = lan the peers find each other first (sparta/peer/discover.h), and the
// rendezvous follows from who was found: this peer's rank is the place of its node ID among the
// sorted node IDs, and net.join is rank 0's announced address. The listen address is net.listen
// (a port 0 there, or no net.listen at all, takes a free port; no host listens on every address
// and announces the interface's own). On success *dc is c with net.join and net.listen set, and
// *d keeps announcing (for peers still looking) until the caller destroys it.
static int discover_peers(cfg *dc, const cfg *c, int world, uint64_t run_id, int *rank,
                          discover **d) {
    *dc = *c;
    *d = NULL;
    char path[CFG_PATH_MAX + 64], hex[2 * DISCOVER_ID_BYTES + 1];
    uint8_t key[DISCOVER_KEY_MAX];
    discover_opts o = {.run_id = run_id,
                       .port = c->net.discover_port,
                       .dest = c->net.discover_addr,
                       .key = key,
                       .advertise = dc->net.listen};
    int rc = discover_load_key(c->net.cluster_key_file, key, &o.key_len);
    if (!rc) rc = discover_node_id_path(path, sizeof path);
    if (!rc) rc = discover_node_id(path, o.node, hex);
    const char *colon = strrchr(c->net.listen, ':');
    if (!rc && (!colon || !strcmp(colon, ":0"))) { // the port must be known to announce it
        int port = 0, hl = colon ? (int)(colon - c->net.listen) : 0;
        rc = discover_free_port(NULL, &port);
        snprintf(dc->net.listen, sizeof dc->net.listen, "%.*s:%d", hl, c->net.listen, port);
        if (hl == 0) snprintf(dc->net.listen, sizeof dc->net.listen, "0.0.0.0:%d", port);
    }
    if (!rc) {
        LOG_I("discover", "node=%s (%s) listen=%s", hex, path, dc->net.listen);
        rc = discover_create(d, &o);
    }
    memset(key, 0, sizeof key);
    if (rc) return rc;
    discover_member *m = xcalloc((size_t)world, sizeof *m);
    rc = discover_wait(*d, world, c->net.discover_timeout_ms, m);
    for (int i = 0; !rc && i < world; i++)
        if (m[i].self) *rank = i;
    if (!rc) {
        snprintf(dc->net.join, sizeof dc->net.join, "%s", m[0].addr);
        LOG_I("discover", "rank=%d of %d, rank 0 at %s", *rank, world, m[0].addr);
    }
    free(m);
    if (rc) {
        discover_destroy(*d);
        *d = NULL;
    }
    return rc;
}

static void discover_end(discover *d) {
    if (!d) return;
    discover_stats st;
    char text[256];
    discover_get_stats(d, &st);
    discover_stats_text(&st, text, sizeof text);
    LOG_I("discover", "datagrams %s", text);
    discover_destroy(d);
}

static void group_metrics(void *ctx, train_sync_metrics *m) {
    peer_stats st;
    peer_get_stats(ctx, &st);
    // frames lost to a bad CRC, a bad tag or a replay (the modules count the rest)
    m->msgs_dropped += st.bad_crc + st.bad_mac + st.replayed;
    train_sync_metric(m, "net_offences", NULL, (double)st.offences, 0);
    train_sync_metric(m, "net_expelled", NULL, (double)st.expelled, 0);
    train_sync_metric(m, "net_suspected", NULL, (double)st.suspected, 0);
    train_sync_metric(m, "net_timed_out", NULL, (double)st.timed_out, 0);
    train_sync_metric(m, "net_links_up", NULL, (double)st.links_up, 0);
    train_sync_metric(m, "net_links_down", NULL, (double)st.links_down, 0);
    peer_view v;
    peer_get_view(ctx, &v);
    m->epoch = v.epoch;
    m->members = v.n;
    for (int i = 0; i < v.n; i++) {
        if (v.m[i].rank == v.self)
            m->member_id = v.m[i].id;
        else
            m->peers_connected += v.m[i].connected;
    }
}

static void group_destroy(void *ctx) { peer_group_destroy(ctx); }

// make_sync is the train_sync_factory of `spartan train`: it decides from the whole config which
// sync modules run and hands each one only its own sections, chained when two run (train/ cannot
// include them itself):
//   SPARTA  sparta.p > 0, several peers and train.mode = local    (sparta; train.seed)
//   DiLoCo  diloco.H > 0, alone or with peers                     (diloco)
//   DDP     train.mode = ddp and several peers                    (ddp)
// (cfg_validate refuses DDP with DiLoCo.) With peers, one peer group (one address, one link per
// peer) carries them all: it is opened first, the start-up waits for the peers once (the longest
// timeout of the modules that run) and names the missing ones, and it is destroyed last.
static int make_sync(train_sync *out, const cfg *c, int *rank_io, int world, uint64_t run_id,
                     const float *params, size_t n, long start_step) {
    memset(out, 0, sizeof *out);
    char hello[HELLO_TEXT_MAX];
    hello_text(c, world, hello, sizeof hello);
    int rank = *rank_io;
    int is_ddp = c->train.mode == CFG_MODE_DDP;
    int use_sparta = world > 1 && c->sparta.p > 0 && !is_ddp, use_diloco = c->diloco.H > 0;
    int use_ddp = is_ddp && world > 1;
    peer_group *g = NULL;
    int rc = ERR_OK;
    if (world > 1 && (use_sparta || use_diloco || use_ddp)) {
        int wait = 0;
        if (use_sparta && c->sparta.timeout_ms > wait) wait = c->sparta.timeout_ms;
        if (use_diloco && c->diloco.timeout_ms > wait) wait = c->diloco.timeout_ms;
        if (use_ddp && c->ddp.timeout_ms > wait) wait = c->ddp.timeout_ms;
        char where[160];
        int exposed = !c->net.tls && cfg_net_exposed(c, where, sizeof where);
        if (exposed && c->net.cluster_key_file[0])
            LOG_W("net",
                  "%s is beyond loopback and the peer links are authenticated by the "
                  "cluster key but not encrypted (net.tls encrypts)",
                  where);
        else if (exposed && c->net.insecure)
            LOG_W("net",
                  "net.insecure = true: %s is beyond loopback, and the peer links are "
                  "neither authenticated nor encrypted",
                  where);
        cfg *dc = c->net.discover ? xmalloc(sizeof *dc) : NULL; // c with the join found
        discover *disc = NULL;
        if (dc) rc = discover_peers(dc, c, world, run_id, &rank, &disc);
        if (!rc) rc = open_group(&g, dc ? dc : c, rank, world, run_id, hello);
        if (!rc) rank = *rank_io = peer_rank(g); // a rendezvous gives it
        // a peer resuming a checkpoint was in the run: its peers may have finished without it
        int alone_ok = c->net.allow_alone || start_step > 0;
        if (!rc) rc = hello_wait(g, world, wait, alone_ok, "net", NULL);
        discover_end(disc); // every peer is linked (or never will be): no one is looking
        free(dc);
    }
    if (rank < 0) rank = *rank_io = 0;
    // The modules make room for every rank the group may hold (more than world when peers may
    // join a running group: net.max_peers); they wait for the ones the view links to.
    int size = world > 1 ? cfg_group_size(c) : 1;
    const train_sync_run run = {.rank = rank, .world = size, .run_id = run_id, .hello = hello};
    train_sync mods[3];
    int n_mods = 0;
    memset(mods, 0, sizeof mods);
    if (!rc && use_sparta)
        rc = sparta_sync_create(&mods[n_mods++], &c->sparta, g, &run, c->train.seed, n);
    if (!rc && use_diloco) rc = diloco_sync_create(&mods[n_mods++], &c->diloco, g, &run, params, n);
    if (!rc && use_ddp) rc = ddp_sync_create(&mods[n_mods++], &c->ddp, g, &run, n);
    if (rc) {
        for (int i = 0; i < n_mods; i++)
            if (mods[i].destroy) mods[i].destroy(mods[i].ctx);
        peer_group_destroy(g);
        return rc;
    }
    if (g) { // the group goes last: the modules stop using it before it is destroyed
        mods[n_mods++] =
            (train_sync){.ctx = g, .get_metrics = group_metrics, .destroy = group_destroy};
    }
    train_sync acc = n_mods ? mods[0] : (train_sync){0};
    for (int i = 1; i < n_mods; i++) {
        train_sync next;
        train_sync_chain(&next, &acc, &mods[i]);
        acc = next;
    }
    *out = acc;
    return ERR_OK;
}

static int train_main(int argc, char **argv) { return train_cmd_main(argc, argv, make_sync); }

static const command commands[] = {
    {"train", train_main, "train a GPT-2 model from an INI config (alone or with peers)"},
    {"eval", eval_cmd_main, "mean cross-entropy of a checkpoint on a token shard"},
    {"sample", sample_cmd_main, "generate text from a checkpoint"},
    {"serve", serve_cmd_main, "serve a checkpoint over HTTP (OpenAI and Ollama APIs, chat page)"},
    {"corr", corr_cmd_main, "mean pairwise correlation of checkpoints' parameters"},
    {"avg", avg_cmd_main, "element-wise mean of checkpoints' weights, as a checkpoint"},
    {"data", data_cmd_main, "prepare token shards (data prepare) and download files (data fetch)"},
    {"plot", plot_cmd_main, "draw a run's metrics.csv into a PNG (gnuplot)"},
    {"launch", launch_cmd_main, "start and watch a training job across machines over ssh"},
    {"probe", probe_cmd_main, "check that peer ports can be listened on and reached (launch)"},
    {"keys", keys_cmd_main, "make the cluster's CA and peer certificates (TLS between peers)"},
    {"status", status_cmd_main, "show training peers' progress from their net.status_port"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: spartan <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`spartan <command> --help` describes a command. `spartan --version` prints the "
               "version.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("spartan %s\n", SPARTAN_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "spartan: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
