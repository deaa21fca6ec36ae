// sample_cmd.c: `spartan sample`: load a checkpoint, encode the prompt with the checkpoint's
// tokenizer, and generate tokens by re-running the forward pass over the last block_size tokens
// (no KV cache here; `spartan serve` decodes incrementally). Main thread only.
#include "train/cmd/sample_cmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tok.h"
#include "infer/sample.h"
#include "train/base/args.h"
#include "train/base/err.h"
#include "train/gpt.h"
#include "train/ops.h"

static void usage(FILE *f, const args_opt *opts, int n_opts) {
    fprintf(f, "usage: spartan sample CKPT|DIR [--prompt TEXT] [--tokens N] [--temperature X]\n"
               "                      [--top-k K] [--top-p P] [--seed S] [--threads N]\n\n"
               "Generates N tokens after the prompt and prints prompt + text.\n\n"
               "options:\n");
    args_print_table(f, opts, n_opts);
}

int sample_cmd_main(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = "";
    int ntok = 200, topk = 200, threads = 0, n_pos = 0;
    double temp = 0.8, topp = 1;
    long long seed = 1;
    const args_opt opts[] = {
        {"--prompt", NULL, ARGS_STR, &prompt, 0, 0, NULL, "TEXT",
         "text to continue (default: none)"},
        {"--tokens", NULL, ARGS_INT, &ntok, 0, 1e7, NULL, "N", "tokens to generate (default 200)"},
        {"--temperature", NULL, ARGS_DOUBLE, &temp, 0, 100, NULL, "X",
         "softmax temperature, 0 = greedy (default 0.8)"},
        {"--top-k", NULL, ARGS_INT, &topk, 0, 1e9, NULL, "K",
         "draw from the K likeliest tokens, 0 = all (default 200)"},
        {"--top-p", NULL, ARGS_DOUBLE, &topp, 0, 1, NULL, "P",
         "draw from the smallest set holding probability P (default 1: all)"},
        {"--seed", NULL, ARGS_I64, &seed, 0, 1e18, NULL, "S", "random seed (default 1)"},
        {"--threads", NULL, ARGS_INT, &threads, 0, 1024, NULL, "N",
         "compute threads, 0 = all cores (default 0)"},
    };
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), &ckpt, 1, &n_pos);
    if (rc == ARGS_HELP) {
        usage(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    if (!rc && !ckpt) rc = err_set(ERR_INVAL, "no checkpoint given");
    if (rc) {
        fprintf(stderr, "spartan sample: %s (see spartan sample --help)\n", err_msg());
        return 2;
    }
    ops_init((int)threads);
    gpt_model *m = NULL;
    char *spec = NULL;
    tok_tokenizer *tok = NULL;
    if ((rc = gpt_load(&m, ckpt, 1, 0, &spec, NULL)) || (rc = tok_from_spec(&tok, spec))) {
        fprintf(stderr, "spartan sample: %s\n", err_msg());
        gpt_destroy(m);
        free(spec);
        return 1;
    }
    free(spec);
    const cfg_model *mc = gpt_config(m);
    int32_t *ids = NULL;
    size_t n = 0;
    if ((rc = tok_encode(tok, prompt, strlen(prompt), &ids, &n))) {
        fprintf(stderr, "spartan sample: prompt: %s\n", err_msg());
        tok_destroy(tok);
        gpt_destroy(m);
        return 1;
    }
    size_t total = n + (size_t)ntok + 1;
    ids = xrealloc(ids, total * sizeof(int32_t));
    if (n == 0) { // start from end-of-text, or the first token of the vocabulary
        ids[0] = tok_eot(tok) >= 0 ? tok_eot(tok) : 0;
        n = 1;
    }
    int V = mc->vocab_size, T = mc->block_size;
    float *scratch = xmalloc(2 * (size_t)V * sizeof(float));
    sample_params sp = {(float)temp, (int)topk, (float)topp, (uint64_t)seed};
    fputs(prompt, stdout);
    fflush(stdout);
    for (int k = 0; k < (int)ntok; k++) {
        int ctx = n < (size_t)T ? (int)n : T;
        const int32_t *x = ids + n - (size_t)ctx;
        gpt_forward(m, x, NULL, 1, ctx);
        const float *logits = gpt_logits(m) + (size_t)(ctx - 1) * V;
        int next = sample_next(logits, V, &sp, (uint64_t)k, scratch);
        ids[n++] = next;
        if (next == tok_eot(tok)) break;
        char *text = NULL;
        size_t len = 0;
        if (tok_decode(tok, &ids[n - 1], 1, &text, &len) == ERR_OK) {
            fwrite(text, 1, len, stdout);
            fflush(stdout);
        }
        free(text);
    }
    fputc('\n', stdout);
    free(scratch);
    free(ids);
    tok_destroy(tok);
    gpt_destroy(m);
    return 0;
}
