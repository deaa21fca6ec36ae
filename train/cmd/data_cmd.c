// train/cmd/data_cmd.c: `spartan data prepare` (text -> train.bin, val.bin, meta.json) and
// `spartan data fetch` (checksummed, resumable download). Main thread only. Exit codes: 0 ok,
// 1 runtime failure (message on stderr), 2 bad command line.
#include "train/cmd/data_cmd.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "data/data.h"
#include "data/fetch.h"
#include "data/tok.h"
#include "train/base/args.h"
#include "train/base/err.h"
#include "train/base/sys.h"

static void data_usage(FILE *f) {
    fprintf(f, "usage: spartan data prepare --tokenizer char|gpt2 [--val-fraction F] INPUT OUTDIR\n"
               "       spartan data fetch URL --sha256 HEX -o FILE [--retries N] [--quiet]\n\n"
               "`spartan data prepare --help` and `spartan data fetch --help` give details.\n");
}

static void prepare_usage(FILE *f, const args_opt *opts, int n_opts) {
    fprintf(
        f, "usage: spartan data prepare --tokenizer char|gpt2 [--val-fraction F] INPUT OUTDIR\n\n"
           "Tokenizes the text file INPUT and writes into OUTDIR (created with its parents):\n"
           "  train.bin  the first 1-F of the tokens (token shard, format in data/data.h)\n"
           "  val.bin    the last F of the tokens; with F=0 (or a split of 0 tokens) there is\n"
           "             no val.bin, an old one in OUTDIR is removed, and training skips\n"
           "             evaluation\n"
           "  meta.json  {\"tokenizer\", \"vocab_size\", \"n_train\", \"n_val\", \"source\", ...}\n"
           "and prints one summary line: tokens, vocabulary size and seconds.\n\n"
           "options:\n");
    args_print_table(f, opts, n_opts);
}

static void fetch_usage(FILE *f, const args_opt *opts, int n_opts) {
    fprintf(f,
            "usage: spartan data fetch URL --sha256 HEX -o FILE [--retries N] [--quiet]\n\n"
            "Downloads URL to FILE over HTTP(S). Bytes go to FILE.part first; a later run resumes\n"
            "it with a Range request. FILE appears only after its SHA-256 equals HEX. If FILE\n"
            "already has that checksum nothing is downloaded.\n\n"
            "options:\n");
    args_print_table(f, opts, n_opts);
}

static int read_text(const char *path, char **text, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(ERR_IO, "cannot open input '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return err_set(ERR_IO, "input '%s' is not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    char *buf = xmalloc(size + 1);
    size_t r = fread(buf, 1, size, f);
    fclose(f);
    if (r != size) {
        free(buf);
        return err_set(ERR_IO, "read error on '%s'", path);
    }
    if (size == 0) {
        free(buf);
        return err_set(ERR_INVAL, "input '%s' is empty", path);
    }
    buf[size] = 0;
    *text = buf;
    *n = size;
    return ERR_OK;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

// write_meta writes OUTDIR/meta.json through a temp file and a rename, like the shards.
static int write_meta(const char *dir, const tok_tokenizer *t, size_t n_train, size_t n_val,
                      const char *source, double frac) {
    char *spec = tok_spec(t);
    json_t *m = json_object();
    if (!m) err_oom("json_object", 0);
    // jansson reports a failed allocation as a NULL value or a failed set: never ignored.
    int bad = json_object_set_new(m, "tokenizer", json_string(spec));
    bad |= json_object_set_new(m, "vocab_size", json_integer(tok_vocab_size(t)));
    bad |= json_object_set_new(m, "eot", json_integer(tok_eot(t)));
    bad |= json_object_set_new(m, "n_train", json_integer((json_int_t)n_train));
    bad |= json_object_set_new(m, "n_val", json_integer((json_int_t)n_val));
    bad |= json_object_set_new(m, "val_fraction", json_real(frac));
    json_t *src = json_string(source); // NULL when the path is not valid UTF-8
    bad |= json_object_set_new(m, "source", src ? src : json_string("(non-UTF-8 path)"));
    if (bad) err_oom("meta.json", 0);
    free(spec);
    char *path = join(dir, "meta.json");
    char *tmp = join(dir, "meta.json.tmp");
    int rc = ERR_OK;
    if (json_dump_file(m, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) != 0 || rename(tmp, path) != 0) {
        rc = err_set(ERR_IO, "cannot write '%s': %s", path, strerror(errno));
        unlink(tmp);
    }
    json_decref(m);
    free(tmp);
    free(path);
    return rc;
}

static int prepare(const char *tokenizer, double frac, const char *input, const char *outdir) {
    double t0 = sys_now_s();
    char *text = NULL;
    size_t n = 0;
    tok_tokenizer *t = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    char *train = join(outdir, "train.bin"), *val = join(outdir, "val.bin");
    int rc = read_text(input, &text, &n);
    if (rc == ERR_OK)
        rc = strcmp(tokenizer, "char") == 0 ? tok_char_create(&t, text, n) : tok_gpt2_default(&t);
    if (rc == ERR_OK) rc = tok_encode(t, text, n, &ids, &n_ids);
    size_t n_val = (size_t)floor((double)n_ids * frac);
    size_t n_train = n_ids - n_val;
    if (rc == ERR_OK && n_train == 0)
        rc = err_set(ERR_INVAL, "'%s' gives %zu tokens, too few for a train split", input, n_ids);
    if (rc == ERR_OK) rc = sys_mkdir_p(outdir);
    if (rc == ERR_OK) rc = data_shard_write(train, ids, n_train);
    // No val split, no val.bin: the trainer then skips evaluation. An old val.bin would be
    // evaluated as if it came from this text, so it goes.
    if (rc == ERR_OK && n_val) rc = data_shard_write(val, ids + n_train, n_val);
    if (rc == ERR_OK && !n_val && unlink(val) != 0 && errno != ENOENT)
        rc = err_set(ERR_IO, "cannot remove the old '%s': %s", val, strerror(errno));
    if (rc == ERR_OK) rc = write_meta(outdir, t, n_train, n_val, input, frac);
    if (rc == ERR_OK)
        printf("prepared %s: tokenizer=%s vocab=%d tokens=%zu train=%zu val=%zu%s bytes=%zu "
               "seconds=%.2f\n",
               outdir, tokenizer, tok_vocab_size(t), n_ids, n_train, n_val,
               n_val ? "" : " (no val.bin)", n, sys_now_s() - t0);
    else
        fprintf(stderr, "spartan data prepare: %s\n", err_msg());
    free(ids);
    tok_destroy(t);
    free(text);
    free(train);
    free(val);
    return rc == ERR_OK ? 0 : 1;
}

static int prepare_main(int argc, char **argv) {
    const char *tokenizer = NULL, *pos[2];
    double frac = 0.1;
    int n_pos = 0;
    const args_opt opts[] = {
        {"--tokenizer", NULL, ARGS_STR, &tokenizer, 0, 0, NULL, "char|gpt2",
         "char: one token per distinct byte of INPUT (sorted);\n"
         "gpt2: GPT-2 BPE from gpt2-encoder.json/gpt2-vocab.bpe in\n"
         "$SPARTAN_DATA_DIR, <bin>/../data or ./data (required)"},
        {"--val-fraction", NULL, ARGS_DOUBLE, &frac, 0, 1, NULL, "F",
         "fraction of the tokens for val.bin, 0 <= F < 1 (default 0.1;\n"
         "0: no val.bin)"},
    };
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), pos, 2, &n_pos);
    if (rc == ARGS_HELP) {
        prepare_usage(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    // What the table cannot say: a choice of two words, and F = 1 (val.bin would take all).
    if (!rc && tokenizer && strcmp(tokenizer, "char") && strcmp(tokenizer, "gpt2"))
        rc = err_set(ERR_INVAL, "--tokenizer must be char or gpt2, got '%s'", tokenizer);
    else if (!rc && frac >= 1)
        rc = err_set(ERR_INVAL, "--val-fraction must be a number in [0, 1), got %g", frac);
    else if (!rc && (!tokenizer || n_pos != 2))
        rc = err_set(ERR_INVAL, "%s",
                     !tokenizer ? "--tokenizer is required" : "need INPUT and OUTDIR");
    if (rc) {
        fprintf(stderr, "spartan data prepare: %s (see --help)\n", err_msg());
        return 2;
    }
    return prepare(tokenizer, frac, pos[0], pos[1]);
}

static int fetch_main(int argc, char **argv) {
    const char *url = NULL, *sha = NULL, *out = NULL;
    int quiet = 0, n_pos = 0;
    fetch_opts o;
    fetch_opts_default(&o);
    const args_opt opts[] = {
        {"--sha256", NULL, ARGS_STR, &sha, 0, 0, NULL, "HEX",
         "expected SHA-256, 64 hex digits (required)"},
        {"--output", "-o", ARGS_STR, &out, 0, 0, NULL, "FILE", "output path (required)"},
        {"--retries", NULL, ARGS_INT, &o.retries, 0, 100, NULL, "N",
         "extra attempts after network errors, resuming (default 2)"},
        {"--quiet", "-q", ARGS_FLAG, &quiet, 0, 0, NULL, NULL, "no progress on stderr"},
    };
    int bad = args_parse(argc, argv, opts, ARGS_COUNT(opts), &url, 1, &n_pos);
    if (bad == ARGS_HELP) {
        fetch_usage(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    if (!bad && (!url || !sha || !out))
        bad = err_set(ERR_INVAL, "%s is required",
                      !url   ? "URL"
                      : !sha ? "--sha256 HEX"
                             : "-o FILE");
    if (bad) {
        fprintf(stderr, "spartan data fetch: %s (see --help)\n", err_msg());
        return 2;
    }
    o.progress = !quiet;
    double t0 = sys_now_s();
    int rc = fetch_file(url, sha, out, &o);
    if (rc != ERR_OK) {
        const char *m = err_msg();
        fprintf(stderr, "spartan data fetch: %s\n", strncmp(m, "fetch: ", 7) ? m : m + 7);
        return rc == ERR_INVAL ? 2 : 1;
    }
    printf("fetched %s -> %s sha256=ok seconds=%.2f\n", url, out, sys_now_s() - t0);
    return 0;
}

int data_cmd_main(int argc, char **argv) {
    if (argc < 2) {
        data_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        data_usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "prepare")) return prepare_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "fetch")) return fetch_main(argc - 1, argv + 1);
    fprintf(stderr, "spartan data: unknown subcommand '%s'\n\n", argv[1]);
    data_usage(stderr);
    return 2;
}
