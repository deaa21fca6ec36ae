// main.c: the bin/spartan entry point. It only dispatches subcommands to their modules; each
// module parses its own options. Runs on the main thread.
#include <stdio.h>
#include <string.h>

#include "diloco/ddp.h"
#include "diloco/diloco.h"
#include "sparta/peer/hello.h"
#include "sparta/sparta.h"
#include "train/base/err.h"
#include "train/cmd/cmds.h"
#include "train/cmd/corr_cmd.h"
#include "train/cmd/data_cmd.h"
#include "train/cmd/plot_cmd.h"
#include "train/cmd/sample_cmd.h"
#include "train/cmd/serve_cmd.h"

#ifndef SPARTAN_VERSION
#define SPARTAN_VERSION "0.1.0"
#endif

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} command;

// make_sync is the train_sync_factory of `spartan train`: it decides from the whole config which
// sync modules run and hands each one only its own sections, chained when two run (train/ cannot
// include them itself):
//   SPARTA  sparta.p > 0, several peers and train.mode = local    (sparta, net; train.seed)
//   DiLoCo  diloco.H > 0, alone or with peers                     (diloco, net)
//   DDP     train.mode = ddp and several peers                    (ddp, net)
// (cfg_validate refuses DDP with DiLoCo.) Every module checks its peers with the same hello: the
// settings all peers of the run must share.
static int make_sync(train_sync *out, const cfg *c, int rank, int world, uint64_t run_id,
                     const float *params, size_t n) {
    char hello[NET_HELLO_MAX];
    hello_text(c, world, hello, sizeof hello);
    const train_sync_run run = {.rank = rank, .world = world, .run_id = run_id, .hello = hello};
    int is_ddp = c->train.mode == CFG_MODE_DDP;
    train_sync mods[2];
    int n_mods = 0, rc = ERR_OK;
    memset(mods, 0, sizeof mods);
    if (world > 1 && c->sparta.p > 0 && !is_ddp)
        rc = sparta_sync_create(&mods[n_mods++], &c->sparta, &c->net, &run, c->train.seed, n);
    if (!rc && c->diloco.H > 0)
        rc = diloco_sync_create(&mods[n_mods++], &c->diloco, &c->net, &run, params, n);
    if (!rc && is_ddp && world > 1)
        rc = ddp_sync_create(&mods[n_mods++], &c->ddp, &c->net, &run, n);
    if (rc) {
        for (int i = 0; i < n_mods; i++)
            if (mods[i].destroy) mods[i].destroy(mods[i].ctx);
        return rc;
    }
    memset(out, 0, sizeof *out);
    if (n_mods == 2) return train_sync_chain(out, &mods[0], &mods[1]);
    if (n_mods == 1) *out = mods[0];
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
