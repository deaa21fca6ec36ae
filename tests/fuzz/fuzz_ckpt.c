// fuzz_ckpt.c: the checkpoint loader (train/gpt.h gpt_load over train/ckpt.h), as `spartan
// serve` and `spartan sample` load a model: the input is written to a temp file below /tmp and
// loaded as an HDF5 checkpoint, with its tokenizer and step. Seeds: small real checkpoints made
// by seed_ckpt.c (make fuzz-seeds). Checked: ERR_OK, ERR_IO or ERR_FORMAT, a message naming the
// file, and a model of the architecture the file declares. HDF5 1.10 (Debian 12) itself reads
// out of bounds on some corrupt attribute messages (HDFGroup/hdf5 issues 1368 and 2529, fixed in
// 1.14.1): those inputs are kept in tests/fuzz/hdf5/, not replayed, and the fuzzer goes on past
// them:
// libFuzzer flags (scripts/run-fuzz): -fork=1 -ignore_crashes=1
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "train/base/err.h"
#include "train/gpt.h"

#define MAX_LEN 16384

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n > MAX_LEN) return 0;
    const char *path = fuzz_file(0, data, n);
    gpt_model *m = NULL;
    char *spec = NULL;
    int64_t step = 0;
    int rc = gpt_load(&m, path, 1, 0, &spec, &step);
    fuzz_check(rc == ERR_OK || rc == ERR_IO || rc == ERR_FORMAT, "gpt_load: unknown code");
    if (rc != ERR_OK) {
        fuzz_check(strstr(err_msg(), path) != NULL, "gpt_load: message does not name the file");
        return 0;
    }
    const cfg_model *mc = gpt_config(m);
    fuzz_check(mc->n_layer > 0 && mc->n_embd % mc->n_head == 0 && spec, "gpt_load: model");
    free(spec);
    gpt_destroy(m);
    return 0;
}
