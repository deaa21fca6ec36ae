// sample_cmd.c: `spartan sample`: load a checkpoint, encode the prompt with the checkpoint's
// tokenizer, and generate tokens by re-running the forward pass over the last block_size tokens
// (no KV cache here; `spartan serve` decodes incrementally). Main thread only.
#include "sample_cmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "gpt.h"
#include "ops.h"
#include "sample.h"
#include "tok.h"

static void usage(FILE *f) {
    fprintf(f, "usage: spartan sample CKPT|DIR [--prompt TEXT] [--tokens N] [--temperature X]\n"
               "                      [--top-k K] [--top-p P] [--seed S] [--threads N]\n\n"
               "Generates N tokens (default 200) after the prompt and prints prompt + text.\n"
               "Temperature 0 is greedy decoding. Defaults: temperature 0.8, top-k 200, seed 1.\n");
}

static int num_arg(const char *opt, const char *v, double lo, double hi, double *out) {
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || x < lo || x > hi)
        return err_set(ERR_INVAL, "%s: '%s' is not a number in [%g, %g]", opt, v, lo, hi);
    *out = x;
    return ERR_OK;
}

int sample_cmd_main(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = "";
    double ntok = 200, temp = 0.8, topk = 200, topp = 1, seed = 1, threads = 0;
    int rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        int hv = i + 1 < argc;
        if (!strcmp(a, "--prompt") && hv)
            prompt = argv[++i];
        else if (!strcmp(a, "--tokens") && hv)
            rc = num_arg(a, argv[++i], 0, 1e7, &ntok);
        else if (!strcmp(a, "--temperature") && hv)
            rc = num_arg(a, argv[++i], 0, 100, &temp);
        else if (!strcmp(a, "--top-k") && hv)
            rc = num_arg(a, argv[++i], 0, 1e9, &topk);
        else if (!strcmp(a, "--top-p") && hv)
            rc = num_arg(a, argv[++i], 0, 1, &topp);
        else if (!strcmp(a, "--seed") && hv)
            rc = num_arg(a, argv[++i], 0, 1e18, &seed);
        else if (!strcmp(a, "--threads") && hv)
            rc = num_arg(a, argv[++i], 0, 1024, &threads);
        else if (a[0] == '-')
            rc = err_set(ERR_INVAL, "unknown option or missing value: '%s'", a);
        else if (!ckpt)
            ckpt = a;
        else
            rc = err_set(ERR_INVAL, "unexpected argument '%s'", a);
    }
    if (!rc && !ckpt) rc = err_set(ERR_INVAL, "no checkpoint given (see spartan sample --help)");
    if (rc) {
        fprintf(stderr, "spartan sample: %s\n", err_msg());
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
