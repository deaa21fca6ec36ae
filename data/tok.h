// tok.h: tokenizers. A char-level tokenizer (vocabulary = the distinct bytes of a text, sorted)
// and GPT-2's byte-level BPE (gpt2-encoder.json + gpt2-vocab.bpe, 50257 tokens). A tokenizer is
// immutable after creation and may be shared by threads for encode/decode.
#ifndef TOK_H
#define TOK_H

#include <stddef.h>
#include <stdint.h>

typedef struct tok_tokenizer tok_tokenizer;

enum { TOK_CHAR = 1, TOK_GPT2 = 2 };

// tok_char_create builds a char-level tokenizer whose vocabulary is the sorted set of distinct
// bytes in text(n). On success the caller owns *out (tok_destroy). Returns ERR_OK or ERR_INVAL
// for an empty text.
int tok_char_create(tok_tokenizer **out, const char *text, size_t n);

// tok_gpt2_create loads GPT-2 BPE from encoder.json and vocab.bpe paths. On success the caller
// owns *out. Returns ERR_OK, ERR_IO (unreadable file) or ERR_FORMAT (malformed file), naming it.
int tok_gpt2_create(tok_tokenizer **out, const char *encoder_json, const char *vocab_bpe);

// tok_gpt2_default loads GPT-2 BPE from the bundled files: $SPARTAN_DATA_DIR, else the data/
// folder next to the binary's bin/ folder, else ./data. Same returns as tok_gpt2_create.
int tok_gpt2_default(tok_tokenizer **out);

// tok_spec returns a self-contained text description from which tok_from_spec rebuilds the same
// tokenizer: "char:<hex of the vocabulary bytes>" or "gpt2". The caller owns it (free).
char *tok_spec(const tok_tokenizer *t);

// tok_from_spec rebuilds a tokenizer from tok_spec text (gpt2 loads the bundled files). On
// success the caller owns *out. Returns ERR_OK, ERR_FORMAT for an unknown spec, or the errors of
// tok_gpt2_default.
int tok_from_spec(tok_tokenizer **out, const char *spec);

// tok_kind returns TOK_CHAR or TOK_GPT2.
int tok_kind(const tok_tokenizer *t);

// tok_vocab_size returns the number of token ids (65 for tinyshakespeare chars, 50257 for GPT-2).
int tok_vocab_size(const tok_tokenizer *t);

// tok_eot returns the end-of-text id (50256 for GPT-2) or -1 if the tokenizer has none.
int tok_eot(const tok_tokenizer *t);

// tok_encode encodes text(n). On success *ids (caller frees) holds *n_ids ids. GPT-2 encodes
// the literal "<|endoftext|>" as 50256. Returns ERR_OK or ERR_INVAL if a byte is not in a char
// vocabulary (the message gives its offset).
int tok_encode(const tok_tokenizer *t, const char *text, size_t n, int32_t **ids, size_t *n_ids);

// tok_decode turns ids(n) into bytes. On success *text (caller frees, NUL-terminated) holds
// *len bytes. Returns ERR_OK or ERR_INVAL for an id out of range.
int tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len);

// tok_destroy frees t. NULL-safe.
void tok_destroy(tok_tokenizer *t);

#endif
