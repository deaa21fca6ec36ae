// fuzz_srv.c: the request bodies of `spartan serve` (infer/srv.h): srv_parse_request, as the
// server parses a POST before it tokenizes the prompt. Input: one byte that picks the route
// (its value mod 5: the four generation routes, then one that is not), then the JSON body.
// Checked: a parsed request is within the documented ranges and its text is NUL-terminated at
// text_len; a refused one has a message and nothing to free.
#include <string.h>

#include "infer/srv.h"
#include "tests/fuzz/fuzz.h"
#include "train/base/err.h"

#define MAX_LEN 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    static const char *const paths[] = {"/v1/completions", "/v1/chat/completions", "/api/generate",
                                        "/api/chat", "/v1/models"};
    if (n < 1 || n > MAX_LEN) return 0;
    const char *path = paths[data[0] % 5];
    srv_request r;
    char msg[1024] = "";
    int rc =
        srv_parse_request(&r, path, "tiny", 42, (const char *)data + 1, n - 1, msg, sizeof msg);
    fuzz_check(rc == ERR_OK || rc == ERR_INVAL, "srv_parse_request: unknown code");
    if (rc != ERR_OK) {
        fuzz_check(msg[0] && !r.text && !r.n_stop, "srv_parse_request: refused without a message");
        return 0;
    }
    fuzz_check(data[0] % 5 != 4, "srv_parse_request: took a route that is not for generation");
    fuzz_check(r.max_tokens >= 1 && r.max_tokens <= 1000000000, "srv: max_tokens out of range");
    fuzz_check(r.sp.temperature >= 0 && r.sp.temperature <= 100, "srv: temperature");
    fuzz_check(r.sp.top_p > 0 && r.sp.top_p <= 1 && r.sp.top_k >= 0, "srv: top_p or top_k");
    fuzz_check(r.n_stop >= 0 && r.n_stop <= SRV_MAX_STOP, "srv: n_stop");
    for (int i = 0; i < r.n_stop; i++)
        fuzz_check(r.stop[i] && r.stop[i][0], "srv: an empty stop string");
    fuzz_check(r.text && r.text[r.text_len] == 0, "srv: text not terminated at text_len");
    srv_request_free(&r);
    return 0;
}
