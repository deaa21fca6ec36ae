// main.c: the bin/spartan entry point. It only dispatches subcommands to their modules; each
// module parses its own options. Runs on the main thread.
#include <stdio.h>
#include <string.h>

#include "diloco/diloco.h"
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

// make_sync builds the peer synchronisation of a run from the config: SPARTA and the
// all-reduce modes (DiLoCo, DDP), chained when both are on. train/ cannot include them itself.
static int make_sync(train_sync *out, const cfg *c, int rank, int world, uint64_t run_id,
                     const float *params, size_t n) {
    train_sync sp, dl;
    int rc = sparta_sync_factory(&sp, c, rank, world, run_id, params, n);
    if (rc) return rc;
    rc = diloco_sync_factory(&dl, c, rank, world, run_id, params, n);
    if (rc) {
        if (sp.destroy) sp.destroy(sp.ctx);
        return rc;
    }
    if (sp.ctx && dl.ctx) return train_sync_chain(out, &sp, &dl);
    *out = sp.ctx ? sp : dl;
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
