// fuzz_tok.c: encoding and decoding arbitrary bytes (data/tok.h), as the server tokenizes a
// prompt and decodes sampled ids: GPT-2 BPE with the bundled files (loaded once, from the
// repository root: run the harness there) and the char tokenizer, plus tok_from_spec on the
// input as a spec, as a checkpoint's "tokenizer" attribute is read. Input: the bytes, also read
// as little-endian int32 ids. Checked: decode(encode(x)) == x for GPT-2 and for a char
// tokenizer made from x, a char tokenizer's spec rebuilds the same tokenizer, and decoding any
// ids gives ERR_OK or ERR_INVAL.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tok.h"
#include "tests/fuzz/fuzz.h"
#include "train/base/err.h"

#define MAX_LEN 4096

// round_trip encodes text(n) with t, decodes the ids and checks that the bytes come back.
static void round_trip(const tok_tokenizer *t, const char *text, size_t n) {
    int32_t *ids = NULL;
    size_t nids = 0;
    int rc = tok_encode(t, text, n, &ids, &nids);
    fuzz_check(rc == ERR_OK, "tok_encode refused text its tokenizer covers");
    for (size_t i = 0; i < nids; i++)
        fuzz_check(ids[i] >= 0 && ids[i] < tok_vocab_size(t), "tok_encode: id out of range");
    char *back = NULL;
    size_t len = 0;
    rc = tok_decode(t, ids, nids, &back, &len);
    fuzz_check(rc == ERR_OK && len == n && !memcmp(back, text, n) && back[len] == 0,
               "tok: decode(encode(x)) != x");
    free(ids);
    free(back);
}

// decode_ids decodes the input read as int32 ids: any of them may be out of range.
static void decode_ids(const tok_tokenizer *t, const uint8_t *data, size_t n) {
    size_t nids = n / 4;
    int32_t *ids = malloc((nids ? nids : 1) * sizeof *ids);
    memcpy(ids, data, nids * sizeof *ids);
    char *text = NULL;
    size_t len = 0;
    int rc = tok_decode(t, ids, nids, &text, &len);
    fuzz_check(rc == ERR_OK || rc == ERR_INVAL, "tok_decode: unknown code");
    fuzz_check(rc == ERR_OK ? text != NULL : text == NULL, "tok_decode: text on failure");
    free(text);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    static tok_tokenizer *gpt2;
    if (n > MAX_LEN) return 0;
    if (!gpt2 && tok_gpt2_default(&gpt2) != ERR_OK) {
        fprintf(stderr, "%s\n", err_msg());
        fuzz_check(0, "cannot load the bundled GPT-2 tokenizer (run from the repository root)");
    }
    const char *text = (const char *)data;
    round_trip(gpt2, text, n);
    decode_ids(gpt2, data, n);
    tok_tokenizer *c = NULL;
    if (tok_char_create(&c, text, n) == ERR_OK) {
        round_trip(c, text, n);
        decode_ids(c, data, n);
        char *spec = tok_spec(c);
        tok_tokenizer *c2 = NULL;
        fuzz_check(tok_from_spec(&c2, spec) == ERR_OK, "tok: a char spec does not load");
        char *spec2 = tok_spec(c2);
        fuzz_check(!strcmp(spec, spec2), "tok: a char spec does not rebuild the tokenizer");
        free(spec);
        free(spec2);
        tok_destroy(c2);
        tok_destroy(c);
    }
    // A spec from a file: "gpt2" would only load the bundled files again.
    char *spec = fuzz_str(data, n);
    tok_tokenizer *s = NULL;
    if (strcmp(spec, "gpt2") != 0) {
        int rc = tok_from_spec(&s, spec);
        fuzz_check(rc == ERR_OK || rc == ERR_FORMAT, "tok_from_spec: unknown code");
        tok_destroy(s);
    }
    free(spec);
    return 0;
}
