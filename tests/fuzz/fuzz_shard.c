// fuzz_shard.c: the token shard reader (data/data.h), as the trainer opens train.bin: the
// input is written to a temp file below /tmp, opened with data_shard_open, read whole, scanned
// for its largest id and drawn from by a loader of two windows. Checked: ERR_OK, ERR_IO or
// ERR_FORMAT; an accepted shard's length matches its file exactly.
#include <stdlib.h>

#include "data/data.h"
#include "tests/fuzz/fuzz.h"
#include "train/base/err.h"

#define MAX_LEN 65536
#define HEADER  32 // data.h: the header bytes before the tokens

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n > MAX_LEN) return 0;
    data_shard *s = NULL;
    int rc = data_shard_open(&s, fuzz_file(0, data, n));
    fuzz_check(rc == ERR_OK || rc == ERR_IO || rc == ERR_FORMAT, "data_shard_open: unknown code");
    if (rc != ERR_OK) return 0;
    size_t len = data_shard_len(s);
    fuzz_check(len * 2 == n - HEADER || len * 4 == n - HEADER, "data_shard: length vs file size");
    int32_t *all = malloc((len ? len : 1) * sizeof *all);
    data_shard_read(s, 0, len, all);
    int32_t mx = -1;
    for (size_t i = 0; i < len; i++)
        mx = all[i] > mx ? all[i] : mx;
    fuzz_check(data_shard_max_token(s) == mx, "data_shard_max_token");
    free(all);
    if (len >= 2) {
        int T = len > 5 ? 4 : (int)len - 1;
        data_loader *dl = NULL;
        fuzz_check(data_loader_create(&dl, s, 2, T, 1, 0) == ERR_OK, "data_loader_create");
        int32_t x[8], y[8];
        data_loader_next(dl, x, y);
        data_loader_next(dl, x, y);
        data_loader_destroy(dl);
    }
    data_shard_close(s);
    return 0;
}
