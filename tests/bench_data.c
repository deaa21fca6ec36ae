// bench_data.c: GPT-2 BPE speed on tinyshakespeare (load, then the best of 5 full encodes; each
// encode starts with a cold pre-token cache) and loader batch throughput. Prints BENCH lines.
// Runs from the repo root, single-threaded.
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "data/data.h"
#include "data/tok.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/sys.h"

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = xmalloc((size_t)sz + 1);
    *n = fread(buf, 1, (size_t)sz, f);
    fclose(f);
    return buf;
}

int main(void) {
    size_t n;
    char *text = read_file("data/tinyshakespeare.txt", &n);
    if (!text) {
        fprintf(stderr, "bench_data: cannot read data/tinyshakespeare.txt (run from repo root)\n");
        return 1;
    }
    double t0 = sys_now_s();
    tok_tokenizer *t;
    if (tok_gpt2_create(&t, "data/gpt2-encoder.json", "data/gpt2-vocab.bpe") != ERR_OK) {
        fprintf(stderr, "bench_data: %s\n", err_msg());
        return 1;
    }
    double load = sys_now_s() - t0;
    double best = 1e9;
    size_t k = 0;
    for (int rep = 0; rep < 5; rep++) {
        int32_t *ids;
        double a = sys_now_s();
        if (tok_encode(t, text, n, &ids, &k) != ERR_OK) {
            fprintf(stderr, "bench_data: %s\n", err_msg());
            return 1;
        }
        double dt = sys_now_s() - a;
        if (dt < best) best = dt;
        free(ids);
    }
    printf("BENCH bpe_load_s %.4f\n", load);
    printf("BENCH bpe_encode_tinyshakespeare_s %.4f\n", best);
    printf("BENCH bpe_encode_tokens %zu\n", k);
    printf("BENCH bpe_encode_MB_per_s %.2f\n", (double)n / best / 1e6);

    // Loader: B=8, T=1024 windows from an in-memory-mapped char shard of the same text.
    tok_tokenizer *c;
    int32_t *ids;
    tok_char_create(&c, text, n);
    tok_encode(c, text, n, &ids, &k);
    char path[64];
    snprintf(path, sizeof path, "/tmp/spartan-bench-data-%ld.bin", (long)getpid());
    data_shard *s;
    data_loader *dl;
    if (data_shard_write(path, ids, k) || data_shard_open(&s, path) ||
        data_loader_create(&dl, s, 8, 1024, 1, 0)) {
        fprintf(stderr, "bench_data: %s\n", err_msg());
        return 1;
    }
    int32_t *x = xmalloc(8 * 1024 * sizeof *x), *y = xmalloc(8 * 1024 * sizeof *y);
    double a = sys_now_s();
    int steps = 2000;
    for (int i = 0; i < steps; i++)
        data_loader_next(dl, x, y);
    double dt = sys_now_s() - a;
    printf("BENCH loader_tokens_per_s %.0f\n", (double)steps * 8 * 1024 / dt);
    data_loader_destroy(dl);
    data_shard_close(s);
    remove(path);
    free(x);
    free(y);
    free(ids);
    tok_destroy(c);
    tok_destroy(t);
    free(text);
    return 0;
}
