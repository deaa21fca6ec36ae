// seed_ckpt.c: makes the seed checkpoints of fuzz_ckpt with the code that writes real ones
// (gpt_write_config, gpt_write_slab, ckpt_write_attr_*), so that the committed seeds are what
// `spartan train` writes, only small: `seed_ckpt DIR` writes DIR/tiny.h5, a whole model of
// L=1 NH=1 C=4 T=4 V=8 with its tokenizer and step, and DIR/attrs.h5, the same attributes and
// no weights. Run by `make fuzz-seeds`; exits 1 with the error on failure.
#include <stdio.h>

#include "train/base/err.h"
#include "train/ckpt.h"
#include "train/gpt.h"

// write_seed writes the checkpoint path of m, with its weights when weights is nonzero.
static int write_seed(gpt_model *m, const char *path, int weights) {
    ckpt_writer *w;
    int rc = ckpt_writer_open(&w, path);
    if (rc) return rc;
    rc = gpt_write_config(m, w);
    if (!rc && weights) rc = gpt_write_slab(m, w, "model/", gpt_params(m));
    if (!rc) rc = ckpt_write_attr_str(w, "tokenizer", "char:0a2061626364656667");
    if (!rc) rc = ckpt_write_attr_i64(w, "step", 7);
    if (rc) {
        ckpt_writer_abort(w);
        return rc;
    }
    return ckpt_writer_commit(w);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: seed_ckpt DIR\n");
        return 2;
    }
    cfg_model mc = {.n_layer = 1, .n_head = 1, .n_embd = 4, .block_size = 4, .vocab_size = 8};
    gpt_model *m;
    int rc = gpt_create(&m, &mc, 1, 0);
    char tiny[4096], attrs[4096];
    snprintf(tiny, sizeof tiny, "%s/tiny.h5", argv[1]);
    snprintf(attrs, sizeof attrs, "%s/attrs.h5", argv[1]);
    if (!rc) {
        gpt_init_params(m, 1);
        rc = write_seed(m, tiny, 1);
        if (!rc) rc = write_seed(m, attrs, 0);
        gpt_destroy(m);
    }
    if (rc) fprintf(stderr, "seed_ckpt: %s\n", err_msg());
    return rc ? 1 : 0;
}
