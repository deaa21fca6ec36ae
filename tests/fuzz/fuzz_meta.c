// fuzz_meta.c: the meta.json of a prepared data folder (data/data.h data_meta_read), as the
// trainer reads it: the input is written to meta.json in a temp folder below /tmp; the
// tokenizer spec it names is then built (tok_from_spec) unless it is "gpt2", which would only
// load the bundled files. Checked: ERR_OK, ERR_IO or ERR_FORMAT, and a positive vocab_size.
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "data/tok.h"
#include "tests/fuzz/fuzz.h"
#include "train/base/err.h"

#define MAX_LEN 16384

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n > MAX_LEN) return 0;
    fuzz_dir_file("meta.json", data, n);
    char *spec = NULL;
    int vocab = 0;
    int rc = data_meta_read(fuzz_dir(), &spec, &vocab);
    fuzz_check(rc == ERR_OK || rc == ERR_IO || rc == ERR_FORMAT, "data_meta_read: unknown code");
    if (rc != ERR_OK) return 0;
    fuzz_check(spec && vocab > 0, "data_meta_read: spec or vocab_size");
    tok_tokenizer *t = NULL;
    if (strcmp(spec, "gpt2") != 0 && tok_from_spec(&t, spec) == ERR_OK) tok_destroy(t);
    free(spec);
    return 0;
}
