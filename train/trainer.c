// trainer.c: one peer's training step, evaluation and checkpoints. Invariant: all memory (model,
// optimizer, batch buffers) is allocated in trainer_create; trainer_step allocates nothing.
// Resume is bit-exact because the data stream is a pure function of (seed, rank, position) and
// the checkpoint holds parameters, both AdamW moments, the step and the data position.
#include "train/trainer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "data/data.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"
#include "train/ckpt.h"
#include "train/optim.h"

#define CKPT_FORMAT_VERSION 1

struct trainer {
    cfg c;
    gpt_model *model;
    optim_adamw *opt;
    data_shard *train_shard, *val_shard;
    data_loader *train_dl, *val_dl;
    int32_t *x, *y; // (B,T) batch buffers
    char *tok_spec;
    int step;
    train_sync sync;
};

static int path_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

// open_data opens the prepared folder: meta.json, train.bin and (if present) val.bin. Without a
// val shard long enough for one window, evaluation is skipped, said once at INFO.
static int open_data(trainer *t) {
    const cfg *c = &t->c;
    char path[CFG_PATH_MAX + 32];
    int vocab = 0;
    snprintf(path, sizeof path, "%s/meta.json", c->data.dir);
    if (!path_exists(path)) // not prepared: say how to prepare it (configs/*.ini say the same)
        return err_set(ERR_IO,
                       "data.dir '%s' holds no prepared data (no meta.json); prepare it with "
                       "`bin/spartan data prepare --tokenizer %s data/tinyshakespeare.txt %s` "
                       "(any text file will do; see `spartan data prepare --help`)",
                       c->data.dir, c->model.vocab_size >= 50257 ? "gpt2" : "char", c->data.dir);
    int rc = data_meta_read(c->data.dir, &t->tok_spec, &vocab);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/train.bin", c->data.dir);
    if ((rc = data_shard_open(&t->train_shard, path))) return rc;
    if (c->model.vocab_size == 0)
        t->c.model.vocab_size = vocab;
    else if (c->model.vocab_size < vocab)
        return err_set(ERR_INVAL,
                       "model.vocab_size = %d is smaller than the data's vocabulary (%d)",
                       c->model.vocab_size, vocab);
    int32_t maxtok = data_shard_max_token(t->train_shard);
    if (maxtok >= t->c.model.vocab_size)
        return err_set(ERR_FORMAT, "%s: token id %d is not below vocab_size %d", path, maxtok,
                       t->c.model.vocab_size);
    int T = c->model.block_size, B = c->train.batch_size;
    if ((rc = data_loader_create(&t->train_dl, t->train_shard, B, T, c->train.seed, c->train.rank)))
        return err_set(rc, "%s: %s", path, err_msg());
    snprintf(path, sizeof path, "%s/val.bin", c->data.dir);
    if (!path_exists(path)) {
        LOG_I("train", "no val shard (%s): evaluation skipped", path);
        return ERR_OK;
    }
    if ((rc = data_shard_open(&t->val_shard, path))) return rc;
    if (data_shard_len(t->val_shard) <= (size_t)T) {
        LOG_I("train", "%s holds %zu tokens, fewer than one window (%d): evaluation skipped", path,
              data_shard_len(t->val_shard), T + 1);
        return ERR_OK;
    }
    // Validation batches come from a fixed stream, the same for every peer and every eval.
    return data_loader_create(&t->val_dl, t->val_shard, B, T, c->train.seed ^ 0x5EEDull, 0);
}

static int load_checkpoint(trainer *t, const char *path) {
    ckpt_reader *r = NULL;
    int rc = ckpt_reader_open(&r, path);
    if (rc) return rc;
    cfg_model mc;
    int64_t step = 0, t_opt = 0;
    uint64_t data_pos[2];
    rc = gpt_read_config(r, &mc);
    const cfg_model *want = gpt_config(t->model);
    if (!rc &&
        (mc.n_layer != want->n_layer || mc.n_head != want->n_head || mc.n_embd != want->n_embd ||
         mc.block_size != want->block_size || mc.vocab_size != want->vocab_size))
        rc = err_set(ERR_FORMAT,
                     "%s: checkpoint model (L=%d NH=%d C=%d T=%d V=%d) does not match the "
                     "config (L=%d NH=%d C=%d T=%d V=%d)",
                     path, mc.n_layer, mc.n_head, mc.n_embd, mc.block_size, mc.vocab_size,
                     want->n_layer, want->n_head, want->n_embd, want->block_size, want->vocab_size);
    if (!rc) rc = gpt_read_slab(t->model, r, "model/", gpt_params(t->model));
    if (!rc) rc = gpt_read_slab(t->model, r, "optim/m/", optim_m(t->opt));
    if (!rc) rc = gpt_read_slab(t->model, r, "optim/v/", optim_v(t->opt));
    if (!rc) rc = ckpt_read_attr_i64(r, "step", &step);
    if (!rc) rc = ckpt_read_attr_i64(r, "optim_t", &t_opt);
    if (!rc) rc = ckpt_read_attr_u64s(r, "rng_state", data_pos, 2);
    ckpt_reader_close(r);
    if (rc) return rc;
    if (step < 0 || t_opt < 0 || step > 1000000000)
        return err_set(ERR_FORMAT, "%s: bad step %lld", path, (long long)step);
    if (data_pos[0] != t->c.train.seed)
        return err_set(ERR_INVAL, "%s: checkpoint was trained with seed %llu, config has %llu",
                       path, (unsigned long long)data_pos[0], (unsigned long long)t->c.train.seed);
    t->step = (int)step;
    optim_set_step_count(t->opt, (int)t_opt);
    data_loader_set_pos(t->train_dl, data_pos[1]);
    return ERR_OK;
}

int trainer_create(trainer **out, const cfg *c, const char *resume_path) {
    trainer *t = xcalloc(1, sizeof *t);
    t->c = *c;
    int rc = open_data(t);
    if (!rc) rc = gpt_create(&t->model, &t->c.model, t->c.train.batch_size, 1);
    if (!rc) rc = optim_create(&t->opt, gpt_n_params(t->model));
    if (rc) {
        trainer_destroy(t);
        return rc;
    }
    size_t BT = (size_t)c->train.batch_size * (size_t)c->model.block_size;
    t->x = xmalloc(BT * sizeof(int32_t));
    t->y = xmalloc(BT * sizeof(int32_t));
    if (resume_path) {
        rc = load_checkpoint(t, resume_path);
        if (rc) {
            trainer_destroy(t);
            return rc;
        }
    } else {
        gpt_init_params(t->model, c->train.seed);
    }
    *out = t;
    return ERR_OK;
}

void trainer_destroy(trainer *t) {
    if (!t) return;
    gpt_destroy(t->model);
    optim_destroy(t->opt);
    data_loader_destroy(t->train_dl);
    data_loader_destroy(t->val_dl);
    data_shard_close(t->train_shard);
    data_shard_close(t->val_shard);
    free(t->x);
    free(t->y);
    free(t->tok_spec);
    free(t);
}

void trainer_set_sync(trainer *t, const train_sync *sync) { t->sync = *sync; }

// move_to continues from step (a sync module took the others' step): the data position goes
// with it.
static void move_to(trainer *t, long step) {
    if (step == t->step) return;
    ASSERT(step >= 0 && step <= INT32_MAX);
    t->step = (int)step;
    data_loader_set_pos(t->train_dl, (uint64_t)step * (uint64_t)t->c.train.grad_accum);
}

int trainer_join(trainer *t) {
    if (!t->sync.join) return ERR_OK;
    long step = t->step;
    int rc = t->sync.join(t->sync.ctx, gpt_params(t->model), gpt_n_params(t->model), &step);
    if (!rc) move_to(t, step);
    return rc;
}

int trainer_step(trainer *t, trainer_stats *st) {
    double t0 = sys_now_ms();
    const cfg_train *tc = &t->c.train;
    int B = tc->batch_size, T = t->c.model.block_size, accum = tc->grad_accum;
    float lr = optim_lr(tc, t->step);
    double loss = 0;
    gpt_zero_grad(t->model);
    for (int micro = 0; micro < accum; micro++) {
        data_loader_next(t->train_dl, t->x, t->y);
        loss += gpt_forward(t->model, t->x, t->y, B, T);
        gpt_backward(t->model, 1.0f / (float)accum);
    }
    int rc = ERR_OK;
    if (t->sync.after_backward)
        rc = t->sync.after_backward(t->sync.ctx, gpt_grads(t->model), gpt_n_params(t->model),
                                    t->step + 1);
    if (rc) return rc;
    float norm = optim_grad_norm(gpt_grads(t->model), gpt_n_params(t->model));
    optim_step(t->opt, t->model, tc, lr, optim_clip_scale(norm, tc->grad_clip));
    t->step++;
    if (t->sync.after_step) {
        long step = t->step;
        rc = t->sync.after_step(t->sync.ctx, gpt_params(t->model), gpt_n_params(t->model), &step);
        if (!rc) move_to(t, step);
    }
    st->step = t->step;
    st->loss = (float)(loss / accum);
    st->lr = lr;
    st->grad_norm = norm;
    st->tokens = (long)B * T * accum;
    st->ms = sys_now_ms() - t0;
    return rc;
}

float trainer_eval(trainer *t) {
    if (!t->val_dl) return NAN;
    int B = t->c.train.batch_size, T = t->c.model.block_size;
    data_loader_set_pos(t->val_dl, 0);
    double sum = 0;
    for (int i = 0; i < t->c.train.eval_iters; i++) {
        data_loader_next(t->val_dl, t->x, t->y);
        sum += gpt_forward(t->model, t->x, t->y, B, T);
    }
    return (float)(sum / t->c.train.eval_iters);
}

int trainer_save(trainer *t, const char *path) {
    ckpt_writer *w = NULL;
    int rc = ckpt_writer_open(&w, path);
    if (rc) return rc;
    uint64_t rng_state[2] = {t->c.train.seed, data_loader_pos(t->train_dl)};
    char *text = cfg_to_string(&t->c);
    rc = gpt_write_config(t->model, w);
    if (!rc) rc = gpt_write_slab(t->model, w, "model/", gpt_params(t->model));
    if (!rc) rc = gpt_write_slab(t->model, w, "optim/m/", optim_m(t->opt));
    if (!rc) rc = gpt_write_slab(t->model, w, "optim/v/", optim_v(t->opt));
    if (!rc) rc = ckpt_write_attr_i64(w, "format_version", CKPT_FORMAT_VERSION);
    if (!rc) rc = ckpt_write_attr_i64(w, "step", t->step);
    if (!rc) rc = ckpt_write_attr_i64(w, "optim_t", optim_step_count(t->opt));
    if (!rc) rc = ckpt_write_attr_i64(w, "data_pos", (int64_t)rng_state[1]);
    if (!rc) rc = ckpt_write_attr_u64s(w, "rng_state", rng_state, 2);
    if (!rc) rc = ckpt_write_attr_str(w, "tokenizer", t->tok_spec);
    if (!rc) rc = ckpt_write_attr_str(w, "config", text);
    if (!rc && t->sync.save) rc = t->sync.save(t->sync.ctx, w);
    free(text);
    if (rc) {
        ckpt_writer_abort(w);
        return rc;
    }
    return ckpt_writer_commit(w);
}

int trainer_load_sync(trainer *t, const char *path) {
    if (!t->sync.load) return ERR_OK;
    ckpt_reader *r = NULL;
    int rc = ckpt_reader_open(&r, path);
    if (!rc) rc = t->sync.load(t->sync.ctx, r);
    ckpt_reader_close(r);
    return rc;
}

int trainer_step_index(const trainer *t) { return t->step; }
gpt_model *trainer_model(trainer *t) { return t->model; }
int trainer_set_rank(trainer *t, int rank) {
    uint64_t pos = data_loader_pos(t->train_dl);
    data_loader *dl;
    int rc = data_loader_create(&dl, t->train_shard, t->c.train.batch_size, t->c.model.block_size,
                                t->c.train.seed, rank);
    if (rc) return rc;
    data_loader_destroy(t->train_dl);
    t->train_dl = dl;
    data_loader_set_pos(dl, pos);
    t->c.train.rank = rank;
    return ERR_OK;
}

const cfg *trainer_cfg(const trainer *t) { return &t->c; }
const char *trainer_tok_spec(const trainer *t) { return t->tok_spec; }
