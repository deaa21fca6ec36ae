// fuzz_tok_vocab.c: the GPT-2 vocabulary loaders (data/tok.h tok_gpt2_create): encoder.json
// and vocab.bpe, written to two temp files below /tmp. Input: the encoder.json text, FUZZ_SEP,
// then the vocab.bpe text. Checked: ERR_OK, ERR_IO or ERR_FORMAT with a message; a loaded
// tokenizer encodes both texts and decodes them back to the same bytes (BPE over any vocabulary
// that holds every single byte is byte exact).
#include <stdlib.h>
#include <string.h>

#include "data/tok.h"
#include "tests/fuzz/fuzz.h"
#include "train/base/err.h"

#define MAX_LEN 32768

// round_trip encodes text(n) with t and checks that decoding gives it back.
static void round_trip(const tok_tokenizer *t, const uint8_t *text, size_t n) {
    int32_t *ids = NULL;
    size_t nids = 0;
    fuzz_check(tok_encode(t, (const char *)text, n, &ids, &nids) == ERR_OK, "tok_encode failed");
    char *back = NULL;
    size_t len = 0;
    int rc = tok_decode(t, ids, nids, &back, &len);
    fuzz_check(rc == ERR_OK && len == n && !memcmp(back, text, n), "tok: decode(encode(x)) != x");
    free(ids);
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n > MAX_LEN) return 0;
    const uint8_t *enc, *bpe;
    size_t en, bn;
    fuzz_split(data, n, &enc, &en, &bpe, &bn);
    const char *enc_path = fuzz_file(0, enc, en), *bpe_path = fuzz_file(1, bpe, bn);
    tok_tokenizer *t = NULL;
    int rc = tok_gpt2_create(&t, enc_path, bpe_path);
    fuzz_check(rc == ERR_OK || rc == ERR_IO || rc == ERR_FORMAT, "tok_gpt2_create: unknown code");
    fuzz_check(rc == ERR_OK || err_msg()[0], "tok_gpt2_create: an error without a message");
    if (rc != ERR_OK) return 0;
    fuzz_check(tok_kind(t) == TOK_GPT2 && tok_vocab_size(t) >= 256, "tok_gpt2_create: vocab");
    round_trip(t, enc, en);
    round_trip(t, bpe, bn);
    tok_destroy(t);
    return 0;
}
