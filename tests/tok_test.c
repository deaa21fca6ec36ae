// tok_test.c: char and GPT-2 BPE tokenizers: byte-exact round trips over tinyshakespeare,
// known GPT-2 encodings (checked against a reference BPE run outside this repo and against
// gpt2-encoder.json entries), a tiny hand-built BPE, error paths for bad files, specs.
// Runs from the repo root (reads data/*). Single-threaded test bodies.
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/tok.h"
#include "tests/test_util.h"
#include "train/base/err.h"

TestSuite(tok, .timeout = 30);

#define ENC    "data/gpt2-encoder.json"
#define BPE    "data/gpt2-vocab.bpe"
#define SHAKES "data/tinyshakespeare.txt"

static tok_tokenizer *gpt2(void) {
    tok_tokenizer *t = NULL;
    int rc = tok_gpt2_create(&t, ENC, BPE);
    cr_assert_eq(rc, ERR_OK, "%s", err_msg());
    return t;
}

static void check_roundtrip(const tok_tokenizer *t, const char *text, size_t n, size_t *n_ids) {
    int32_t *ids;
    size_t k;
    cr_assert_eq(tok_encode(t, text, n, &ids, &k), ERR_OK, "%s", err_msg());
    char *back;
    size_t len;
    cr_assert_eq(tok_decode(t, ids, k, &back, &len), ERR_OK, "%s", err_msg());
    cr_assert_eq(len, n, "decoded %zu bytes, want %zu", len, n);
    cr_assert(memcmp(back, text, n) == 0, "decoded text differs");
    cr_assert_eq(back[len], 0, "decode must NUL-terminate");
    for (size_t i = 0; i < k; i++)
        cr_assert(ids[i] >= 0 && ids[i] < tok_vocab_size(t), "id %d at %zu", ids[i], i);
    if (n_ids) *n_ids = k;
    free(ids);
    free(back);
}

static void expect_ids(const tok_tokenizer *t, const char *text, const int32_t *want, size_t nw) {
    int32_t *ids;
    size_t k;
    cr_assert_eq(tok_encode(t, text, strlen(text), &ids, &k), ERR_OK, "%s", err_msg());
    cr_assert_eq(k, nw, "\"%s\": %zu ids, want %zu", text, k, nw);
    for (size_t i = 0; i < k; i++)
        cr_assert_eq(ids[i], want[i], "\"%s\": id[%zu]=%d, want %d", text, i, ids[i], want[i]);
    free(ids);
}

Test(tok, char_roundtrip_of_tinyshakespeare_is_byte_exact) {
    char *text;
    size_t n;
    cr_assert_eq(tu_read_file(SHAKES, &text, &n), 0);
    tok_tokenizer *t;
    cr_assert_eq(tok_char_create(&t, text, n), ERR_OK, "%s", err_msg());
    cr_assert_eq(tok_kind(t), TOK_CHAR);
    cr_assert_eq(tok_vocab_size(t), 65);
    cr_assert_eq(tok_eot(t), -1);
    size_t k;
    check_roundtrip(t, text, n, &k);
    cr_assert_eq(k, n);
    // Sorted vocabulary: '\n' (0x0a) is the smallest byte, ' ' the next.
    int32_t *ids;
    cr_assert_eq(tok_encode(t, "\n a", 3, &ids, &k), ERR_OK);
    cr_assert(ids[0] == 0 && ids[1] == 1 && ids[2] > ids[1]);
    free(ids);
    tok_destroy(t);
    free(text);
}

Test(tok, gpt2_roundtrip_of_tinyshakespeare_is_byte_exact_with_known_count) {
    char *text;
    size_t n;
    cr_assert_eq(tu_read_file(SHAKES, &text, &n), 0);
    tok_tokenizer *t = gpt2();
    cr_assert_eq(tok_kind(t), TOK_GPT2);
    cr_assert_eq(tok_vocab_size(t), 50257);
    size_t k;
    check_roundtrip(t, text, n, &k);
    // tiktoken's "gpt2" gives 338025 tokens for this file (nanoGPT: 301966 train + 36059 val).
    cr_assert_eq(k, 338025);
    // The file opens "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:"
    // (the two newlines stay apart because a letter follows them).
    int32_t *ids;
    cr_assert_eq(tok_encode(t, text, n, &ids, &k), ERR_OK);
    const int32_t head[] = {5962, 22307, 25,   198, 8421, 356, 5120, 597,
                            2252, 11,    3285, 502, 2740, 13,  198,  198};
    for (int i = 0; i < 16; i++)
        cr_assert_eq(ids[i], head[i], "i=%d", i);
    free(ids);
    tok_destroy(t);
    free(text);
}

Test(tok, gpt2_known_encodings) {
    tok_tokenizer *t = gpt2();
    struct {
        const char *text;
        int32_t ids[8];
        size_t n;
    } cases[] = {
        {"Hello world", {15496, 995}, 2},
        {" the", {262}, 1},
        {"Hello, world!", {15496, 11, 995, 0}, 4},
        {"it's", {270, 338}, 2}, // contraction split: "it" "'s"
        {"They're here", {2990, 821, 994}, 3},
        {"  hello", {220, 23748}, 2}, // \s+(?!\S) leaves one space for " hello"
        {"\n\n", {628}, 1},
        {"1234567", {10163, 2231, 3134}, 3}, // one \p{N}+ piece, BPE'd into 123 45 67
        {" caf\xc3\xa9", {40304}, 1},        // " café": UTF-8 bytes map into one token
        {"hello\t\tworld  ", {31373, 197, 197, 6894, 220, 220}, 6},
        {"\xf0\x9f\x98\x80", {47249, 222}, 2}, // U+1F600 (emoji), split across two tokens
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_ids(t, cases[i].text, cases[i].ids, cases[i].n);
    tok_destroy(t);
}

Test(tok, gpt2_endoftext_literal_is_one_special_token) {
    tok_tokenizer *t = gpt2();
    cr_assert_eq(tok_eot(t), 50256);
    expect_ids(t, "<|endoftext|>", (const int32_t[]){50256}, 1);
    expect_ids(t, "a<|endoftext|>b", (const int32_t[]){64, 50256, 65}, 3);
    expect_ids(t, "<|endoftext|><|endoftext|>", (const int32_t[]){50256, 50256}, 2);
    char *s;
    size_t len;
    int32_t id = 50256;
    cr_assert_eq(tok_decode(t, &id, 1, &s, &len), ERR_OK);
    cr_assert_str_eq(s, "<|endoftext|>");
    free(s);
    const char *tricky = "x<|endoftext|<|endoftext|>y<|endo";
    check_roundtrip(t, tricky, strlen(tricky), NULL);
    tok_destroy(t);
}

Test(tok, gpt2_roundtrip_of_arbitrary_bytes_including_invalid_utf8) {
    tok_tokenizer *t = gpt2();
    enum { N = 1 << 16 };
    char *buf = malloc(N);
    uint64_t s = 12345;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        buf[i] = (char)(s >> 56);
    }
    check_roundtrip(t, buf, N, NULL);
    for (int i = 0; i < 256; i++)
        buf[i] = (char)i; // every byte value, NUL included
    check_roundtrip(t, buf, 256, NULL);
    check_roundtrip(t, "\xff", 1, NULL);
    const char *broken = "ok \xc3(broken) \xe2\x82 end";
    check_roundtrip(t, broken, strlen(broken), NULL);
    free(buf);
    tok_destroy(t);
}

Test(tok, gpt2_repeated_words_encode_identically_through_the_cache) {
    tok_tokenizer *t = gpt2();
    int32_t *one, *many;
    size_t k1, km;
    cr_assert_eq(tok_encode(t, " Coriolanus", 11, &one, &k1), ERR_OK);
    cr_assert_eq(tok_encode(t, " Coriolanus Coriolanus Coriolanus", 33, &many, &km), ERR_OK);
    cr_assert_eq(km, 3 * k1);
    for (size_t i = 0; i < km; i++)
        cr_assert_eq(many[i], one[i % k1], "i=%zu", i);
    free(one);
    free(many);
    // A long single pre-token (one word of 20000 letters) still round-trips.
    char *w = malloc(20001);
    memset(w, 'a', 20000);
    w[20000] = 0;
    check_roundtrip(t, w, 20000, NULL);
    free(w);
    tok_destroy(t);
}

// GPT-2's byte -> code point map, written independently here: printable bytes keep their
// value, the 68 others get 256, 257, ... in increasing byte order.
static void mapped_key(int b, char out[3]) {
    int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    int cp = b, k = 0;
    if (!printable) {
        cp = 256;
        for (int j = 0; j < b; j++)
            if (!((j >= 0x21 && j <= 0x7E) || (j >= 0xA1 && j <= 0xAC) || j >= 0xAE)) cp++;
    }
    if (cp < 0x80) {
        out[k++] = (char)cp;
    } else {
        out[k++] = (char)(0xC0 | (cp >> 6));
        out[k++] = (char)(0x80 | (cp & 0x3F));
    }
    out[k] = 0;
}

// write_tiny_encoder writes an encoder.json with ids 0..255 = single bytes, plus extra tokens
// "ab" = 256 and "abc" = 257. skip_byte >= 0 leaves that byte out (and the vocab has a hole).
static char *write_tiny_encoder(const char *dir, int skip_byte) {
    json_t *o = json_object();
    char key[3];
    for (int b = 0; b < 256; b++) {
        if (b == skip_byte) continue;
        mapped_key(b, key);
        json_object_set_new(o, key, json_integer(b));
    }
    json_object_set_new(o, "ab", json_integer(256));
    json_object_set_new(o, "abc", json_integer(257));
    char *path = malloc(strlen(dir) + 32);
    sprintf(path, "%s/enc.json", dir);
    cr_assert_eq(json_dump_file(o, path, 0), 0);
    json_decref(o);
    return path;
}

static char *write_text(const char *dir, const char *name, const char *text) {
    char *path = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(path, "%s/%s", dir, name);
    cr_assert_eq(tu_write_file(path, text, strlen(text)), 0);
    return path;
}

Test(tok, tiny_hand_built_bpe_applies_merges_by_rank) {
    char *dir = tu_tmpdir("tok");
    char *enc = write_tiny_encoder(dir, -1);
    char *bpe = write_text(dir, "vocab.bpe", "#version: 0.2\na b\nab c\n");
    tok_tokenizer *t;
    cr_assert_eq(tok_gpt2_create(&t, enc, bpe), ERR_OK, "%s", err_msg());
    cr_assert_eq(tok_vocab_size(t), 258);
    cr_assert_eq(tok_eot(t), -1, "no <|endoftext|> entry, so no special id");
    // "abcab" -> a b c a b -> (a,b) everywhere: ab c ab -> (ab,c): abc ab; " ab" -> ' ' ab.
    expect_ids(t, "abcab ab", (const int32_t[]){257, 256, ' ', 256}, 4);
    expect_ids(t, "ba", (const int32_t[]){'b', 'a'}, 2);
    // Without an end-of-text token the marker is ordinary text.
    check_roundtrip(t, "<|endoftext|>", 13, NULL);
    tok_destroy(t);
    free(enc);
    free(bpe);
    tu_rm_rf(dir);
    free(dir);
}

Test(tok, missing_files_give_err_io_naming_the_file) {
    tok_tokenizer *t = NULL;
    cr_assert_eq(tok_gpt2_create(&t, "data/no-such-encoder.json", BPE), ERR_IO);
    cr_assert(strstr(err_msg(), "data/no-such-encoder.json"), "%s", err_msg());
    cr_assert_eq(tok_gpt2_create(&t, ENC, "data/no-such-vocab.bpe"), ERR_IO);
    cr_assert(strstr(err_msg(), "data/no-such-vocab.bpe"), "%s", err_msg());
    cr_assert_null(t);
}

Test(tok, malformed_encoder_json_gives_err_format_naming_the_file) {
    char *dir = tu_tmpdir("tok");
    const char *bad[] = {
        "{\"a\": 0, \"b\": ",   // truncated JSON
        "[1, 2, 3]",            // not an object
        "{\"a\": \"zero\"}",    // id not an integer
        "{\"a\": 0, \"b\": 0}", // duplicate id
        "{\"a\": 0, \"b\": 7}", // id out of range (hole)
        "{\"\\u4e00\": 0}",     // code point outside GPT-2's byte map
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *enc = write_text(dir, "bad.json", bad[i]);
        tok_tokenizer *t = NULL;
        cr_assert_eq(tok_gpt2_create(&t, enc, BPE), ERR_FORMAT, "case %zu: %s", i, err_msg());
        cr_assert(strstr(err_msg(), enc), "case %zu: %s", i, err_msg());
        cr_assert_null(t);
        free(enc);
    }
    char *enc = write_tiny_encoder(dir, 'q'); // no token for the byte 'q'
    tok_tokenizer *t = NULL;
    cr_assert_eq(tok_gpt2_create(&t, enc, BPE), ERR_FORMAT, "%s", err_msg());
    cr_assert(strstr(err_msg(), enc), "%s", err_msg());
    free(enc);
    tu_rm_rf(dir);
    free(dir);
}

Test(tok, malformed_vocab_bpe_gives_err_format_naming_file_and_line) {
    char *dir = tu_tmpdir("tok");
    char *enc = write_tiny_encoder(dir, -1);
    const char *bad[] = {"#version: 0.2\na b\na zz\n", "#version: 0.2\nab\n", "#version: 0.2\n"};
    const char *where[] = {"line 3", "line 2", "no merge"};
    for (int i = 0; i < 3; i++) {
        char *bpe = write_text(dir, "bad.bpe", bad[i]);
        tok_tokenizer *t = NULL;
        cr_assert_eq(tok_gpt2_create(&t, enc, bpe), ERR_FORMAT, "case %d: %s", i, err_msg());
        cr_assert(strstr(err_msg(), bpe) && strstr(err_msg(), where[i]), "%s", err_msg());
        free(bpe);
    }
    free(enc);
    tu_rm_rf(dir);
    free(dir);
}

Test(tok, spec_round_trip_rebuilds_the_same_tokenizer) {
    const char *text = "To be, or not to be: that is the question.\n";
    tok_tokenizer *c;
    cr_assert_eq(tok_char_create(&c, text, strlen(text)), ERR_OK);
    char *spec = tok_spec(c);
    cr_assert(strncmp(spec, "char:0a20", 9) == 0, "%s", spec); // '\n' then ' ' first
    tok_tokenizer *c2;
    cr_assert_eq(tok_from_spec(&c2, spec), ERR_OK, "%s", err_msg());
    cr_assert_eq(tok_vocab_size(c2), tok_vocab_size(c));
    int32_t *a, *b;
    size_t na, nb;
    cr_assert_eq(tok_encode(c, text, strlen(text), &a, &na), ERR_OK);
    cr_assert_eq(tok_encode(c2, text, strlen(text), &b, &nb), ERR_OK);
    cr_assert(na == nb && memcmp(a, b, na * sizeof *a) == 0);
    char *spec2 = tok_spec(c2);
    cr_assert_str_eq(spec2, spec);
    free(a);
    free(b);
    free(spec);
    free(spec2);
    tok_destroy(c);
    tok_destroy(c2);

    tok_tokenizer *g = gpt2();
    spec = tok_spec(g);
    cr_assert_str_eq(spec, "gpt2");
    tok_tokenizer *g2;
    cr_assert_eq(tok_from_spec(&g2, spec), ERR_OK, "%s", err_msg());
    cr_assert_eq(tok_kind(g2), TOK_GPT2);
    expect_ids(g2, "Hello world", (const int32_t[]){15496, 995}, 2);
    free(spec);
    tok_destroy(g);
    tok_destroy(g2);
}

Test(tok, bad_specs_give_err_format) {
    const char *bad[] = {"bpe", "", "char:", "char:0", "char:zz", "char:6161", "char:6261"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tok_tokenizer *t = NULL;
        cr_assert_eq(tok_from_spec(&t, bad[i]), ERR_FORMAT, "spec \"%s\": %s", bad[i], err_msg());
        cr_assert_null(t);
    }
}

Test(tok, char_tokenizer_rejects_unknown_byte_with_its_offset) {
    tok_tokenizer *t;
    cr_assert_eq(tok_char_create(&t, "abc", 3), ERR_OK);
    int32_t *ids = NULL;
    size_t k;
    cr_assert_eq(tok_encode(t, "abxa", 4, &ids, &k), ERR_INVAL);
    cr_assert(strstr(err_msg(), "offset 2"), "%s", err_msg());
    cr_assert_null(ids);
    char *s;
    size_t len;
    cr_assert_eq(tok_decode(t, (const int32_t[]){0, 3}, 2, &s, &len), ERR_INVAL);
    cr_assert_eq(tok_decode(t, (const int32_t[]){-1}, 1, &s, &len), ERR_INVAL);
    tok_destroy(t);
    cr_assert_eq(tok_char_create(&t, "", 0), ERR_INVAL);
}

Test(tok, gpt2_decode_rejects_out_of_range_ids) {
    tok_tokenizer *t = gpt2();
    char *s;
    size_t len;
    cr_assert_eq(tok_decode(t, (const int32_t[]){15496, 50257}, 2, &s, &len), ERR_INVAL);
    cr_assert(strstr(err_msg(), "50257"), "%s", err_msg());
    tok_destroy(t);
}

Test(tok, gpt2_default_searches_env_then_binary_dir_then_cwd) {
    tok_tokenizer *t = NULL;
    setenv("SPARTAN_DATA_DIR", "data", 1);
    cr_assert_eq(tok_gpt2_default(&t), ERR_OK, "%s", err_msg());
    tok_destroy(t);
    t = NULL;
    // From an empty folder with a bogus env dir nothing is found; the message lists the tries.
    char *dir = tu_tmpdir("tok");
    setenv("SPARTAN_DATA_DIR", "/nonexistent-spartan", 1);
    cr_assert_eq(chdir(dir), 0);
    int rc = tok_gpt2_default(&t);
    if (rc == ERR_OK) { // the test binary's ../data folder had the files: acceptable, not tested
        tok_destroy(t);
    } else {
        cr_assert_eq(rc, ERR_IO);
        cr_assert(strstr(err_msg(), "/nonexistent-spartan") && strstr(err_msg(), "./data"), "%s",
                  err_msg());
    }
    tu_rm_rf(dir);
    free(dir);
}
