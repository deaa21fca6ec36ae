// serve_test.c: the HTTP server (srv.h) against real HTTP on an ephemeral 127.0.0.1 port, with
// libcurl: every endpoint streamed and not, SSE and NDJSON framing parsed strictly, greedy output
// equal to `spartan sample`, 32 concurrent streams, every bad input, the API key, hot reload, a
// client leaving mid-stream, shutdown with streams in flight, and `spartan serve` as a process.
// Checkpoints are written here: random weights (so greedy choices are far from ties) and a
// char-level tokenizer. Each test runs its own server in its own (forked) process.
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/tok.h"
#include "infer/srv.h"
#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"
#include "train/ckpt.h"
#include "train/gpt.h"

TestSuite(serve, .timeout = 30);

// The vocabulary: printable ASCII without '~' (used to test a byte outside it) plus newline.
static const char VOCAB[] = "\n !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                            "[\\]^_`abcdefghijklmnopqrstuvwxyz{|}";

static char *g_dir;
static pid_t g_child; // a `spartan serve` process a failed assertion would otherwise leave running

static void setup(void) {
    log_set_level(LOG_WARN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    g_dir = tu_tmpdir("serve");
    cr_assert(g_dir);
}

static void teardown(void) {
    tu_kill(g_child);
    tu_rm_rf(g_dir);
    free(g_dir);
    curl_global_cleanup();
}

// write_ckpt_vocab writes a checkpoint of the given shape (tu_write_char_ckpt).
static void write_ckpt_vocab(const char *path, int L, int C, int T, uint64_t seed, float scale,
                             long step, const char *vocab) {
    cr_assert_eq(tu_write_char_ckpt(path, L, C, T, seed, scale, step, vocab), 0, "%s", err_msg());
}

static void write_ckpt(const char *path, int L, int C, int T, uint64_t seed, float scale,
                       long step) {
    write_ckpt_vocab(path, L, C, T, seed, scale, step, VOCAB);
}

// The small model most tests use: 2 layers, C=32, a 64-token context.
static char *small_ckpt(void) {
    static char path[600];
    snprintf(path, sizeof path, "%s/small.h5", g_dir);
    write_ckpt(path, 2, 32, 64, 7, 0.4f, 100);
    return path;
}

// A slower model (C=256, 1024-token context) so that a long generation is still running while
// the test acts on it.
static void big_ckpt(const char *path, uint64_t seed, long step) {
    write_ckpt(path, 4, 256, 1024, seed, 0.1f, step);
}

typedef struct {
    srv_server *s;
    char base[64];
} server;

static void start(server *sv, const char *path, const srv_config *c) {
    srv_config d = {.max_batch = 8, .threads = 2};
    int rc = srv_create(&sv->s, path, c ? c : &d);
    cr_assert_eq(rc, ERR_OK, "srv_create: %s", err_msg());
    snprintf(sv->base, sizeof sv->base, "http://127.0.0.1:%d", srv_port(sv->s));
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

typedef struct {
    char *p;
    size_t n;
} tbuf;

static size_t on_data(char *p, size_t sz, size_t n, void *u) {
    tbuf *b = u;
    b->p = realloc(b->p, b->n + sz * n + 1);
    memcpy(b->p + b->n, p, sz * n);
    b->n += sz * n;
    b->p[b->n] = 0;
    return sz * n;
}

// http sends method url with body (NULL: none) and the bearer key (NULL: none); returns the
// status and fills *out (caller frees out->p) and ctype (the Content-Type, if non-NULL).
static long http(const char *method, const char *url, const char *body, const char *key, tbuf *out,
                 char *ctype, size_t ctype_n) {
    CURL *h = curl_easy_init();
    struct curl_slist *hd = NULL;
    char auth[256];
    if (key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        hd = curl_slist_append(hd, auth);
    }
    hd = curl_slist_append(hd, "Content-Type: application/json");
    memset(out, 0, sizeof *out);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
    CURLcode rc = curl_easy_perform(h);
    cr_assert_eq(rc, CURLE_OK, "%s %s: %s", method, url, curl_easy_strerror(rc));
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (ctype) {
        char *ct = NULL;
        curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct);
        snprintf(ctype, ctype_n, "%s", ct ? ct : "");
    }
    if (!out->p) out->p = calloc(1, 1);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    return status;
}

static json_t *parse_json(const char *text) {
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    cr_assert(j, "not JSON (%s): %s", e.text, text);
    return j;
}

// post sends body to path and returns the parsed JSON reply, asserting the status.
static json_t *post(const server *sv, const char *path, const char *body, long want) {
    char url[256];
    snprintf(url, sizeof url, "%s%s", sv->base, path);
    tbuf b;
    long st = http("POST", url, body, NULL, &b, NULL, 0);
    cr_assert_eq(st, want, "POST %s %s: status %ld: %s", path, body, st, b.p);
    json_t *j = parse_json(b.p);
    free(b.p);
    return j;
}

static const char *jstr(json_t *o, const char *path) {
    // path: dot-separated keys, "#" picks element 0 of an array
    char tmp[128];
    snprintf(tmp, sizeof tmp, "%s", path);
    json_t *j = o;
    for (char *k = strtok(tmp, "."); k && j; k = strtok(NULL, "."))
        j = !strcmp(k, "#") ? json_array_get(j, 0) : json_object_get(j, k);
    cr_assert(json_is_string(j), "%s is not a string", path);
    return json_string_value(j);
}

static long long jint(json_t *o, const char *path) {
    char tmp[128];
    snprintf(tmp, sizeof tmp, "%s", path);
    json_t *j = o;
    for (char *k = strtok(tmp, "."); k && j; k = strtok(NULL, "."))
        j = !strcmp(k, "#") ? json_array_get(j, 0) : json_object_get(j, k);
    cr_assert(json_is_integer(j), "%s is not an integer", path);
    return json_integer_value(j);
}

// A parsed stream: the concatenated text, the finish reason and the usage counts.
typedef struct {
    char text[8192];
    char finish[32];
    long long prompt_tokens, completion_tokens;
    int events;
} stream;

// parse_sse checks OpenAI SSE framing strictly: only "data: <one JSON object>\n\n" events, the
// last one "data: [DONE]\n\n" and nothing after it; every chunk has the same id and the right
// object; finish_reason is null until the last JSON event, which carries usage.
static void parse_sse(const char *p, int chat, stream *out) {
    memset(out, 0, sizeof *out);
    char id[64] = "";
    int done = 0, finished = 0;
    while (*p) {
        cr_assert(!done, "bytes after [DONE]: %s", p);
        cr_assert(!strncmp(p, "data: ", 6), "event does not start with 'data: ': %.80s", p);
        const char *end = strstr(p, "\n\n");
        cr_assert(end, "event not terminated by a blank line: %.80s", p);
        cr_assert(!memchr(p, '\n', (size_t)(end - p)), "multi-line event: %.80s", p);
        char *data = strndup(p + 6, (size_t)(end - p - 6));
        p = end + 2;
        if (!strcmp(data, "[DONE]")) {
            done = 1;
            free(data);
            continue;
        }
        cr_assert(!finished, "event after the finishing one: %s", data);
        json_t *j = parse_json(data);
        free(data);
        out->events++;
        if (!id[0]) snprintf(id, sizeof id, "%s", jstr(j, "id"));
        cr_assert_str_eq(jstr(j, "id"), id);
        cr_assert_str_eq(jstr(j, "object"), chat ? "chat.completion.chunk" : "text_completion");
        json_t *c = json_array_get(json_object_get(j, "choices"), 0);
        cr_assert(c, "no choices");
        json_t *fr = json_object_get(c, "finish_reason");
        json_t *piece = chat ? json_object_get(json_object_get(c, "delta"), "content")
                             : json_object_get(c, "text");
        if (chat && out->events == 1)
            cr_assert_str_eq(jstr(j, "choices.#.delta.role"), "assistant");
        if (piece) {
            cr_assert(json_is_string(piece));
            cr_assert(strlen(out->text) + json_string_length(piece) < sizeof out->text);
            strcat(out->text, json_string_value(piece));
        }
        if (json_is_string(fr)) {
            finished = 1;
            snprintf(out->finish, sizeof out->finish, "%s", json_string_value(fr));
            out->prompt_tokens = jint(j, "usage.prompt_tokens");
            out->completion_tokens = jint(j, "usage.completion_tokens");
            cr_assert_eq(jint(j, "usage.total_tokens"),
                         out->prompt_tokens + out->completion_tokens);
        } else {
            cr_assert(json_is_null(fr), "finish_reason must be null or a string");
        }
        json_decref(j);
    }
    cr_assert(done, "stream did not end with data: [DONE]");
    cr_assert(finished, "no event with a finish_reason");
}

// parse_ndjson checks Ollama NDJSON framing strictly: one JSON object per '\n'-terminated line,
// "done": false on every line but the last, which has done_reason and the counts.
static void parse_ndjson(const char *p, int chat, const char *model, stream *out) {
    memset(out, 0, sizeof *out);
    int finished = 0;
    while (*p) {
        cr_assert(!finished, "line after the done one: %s", p);
        const char *end = strchr(p, '\n');
        cr_assert(end, "line not terminated by a newline: %s", p);
        char *line = strndup(p, (size_t)(end - p));
        p = end + 1;
        json_t *j = parse_json(line);
        free(line);
        out->events++;
        cr_assert_str_eq(jstr(j, "model"), model);
        cr_assert(strlen(jstr(j, "created_at")) >= 20);
        const char *piece = chat ? jstr(j, "message.content") : jstr(j, "response");
        if (chat) cr_assert_str_eq(jstr(j, "message.role"), "assistant");
        cr_assert(strlen(out->text) + strlen(piece) < sizeof out->text);
        strcat(out->text, piece);
        json_t *d = json_object_get(j, "done");
        cr_assert(json_is_boolean(d), "done must be a boolean");
        if (json_is_true(d)) {
            finished = 1;
            snprintf(out->finish, sizeof out->finish, "%s", jstr(j, "done_reason"));
            out->prompt_tokens = jint(j, "prompt_eval_count");
            out->completion_tokens = jint(j, "eval_count");
            cr_assert(jint(j, "total_duration") >= 0);
        }
        json_decref(j);
    }
    cr_assert(finished, "no line with done: true");
}

// post_stream POSTs body and returns the raw stream, asserting status 200 and Content-Type.
static char *post_stream(const server *sv, const char *path, const char *body, const char *ct) {
    char url[256], ctype[128];
    snprintf(url, sizeof url, "%s%s", sv->base, path);
    tbuf b;
    long st = http("POST", url, body, NULL, &b, ctype, sizeof ctype);
    cr_assert_eq(st, 200, "POST %s %s: %ld %s", path, body, st, b.p);
    cr_assert(strstr(ctype, ct), "Content-Type %s, want %s", ctype, ct);
    return b.p;
}

// sample_cli runs `spartan sample --temperature 0` and returns the generated text (after the
// prompt, without the final newline).
static char *sample_cli(const char *ckpt, const char *prompt, int tokens) {
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s sample %s --prompt \"%s\" --tokens %d --temperature 0",
             tu_spartan(), ckpt, prompt, tokens);
    int rc = tu_run(cmd, 30, &out);
    cr_assert_eq(rc, 0, "%s: %s", cmd, out);
    size_t n = strlen(out), np = strlen(prompt);
    cr_assert(n >= np + 1 && !strncmp(out, prompt, np) && out[n - 1] == '\n', "sample: %s", out);
    out[n - 1] = 0;
    char *text = strdup(out + np);
    free(out);
    return text;
}

// metric returns the value of a metric line "name value" from /metrics.
static double metric(const server *sv, const char *name) {
    char url[256];
    snprintf(url, sizeof url, "%s/metrics", sv->base);
    tbuf b;
    cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 200);
    size_t n = strlen(name);
    double v = -1;
    for (char *l = b.p; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (!strncmp(l, name, n) && l[n] == ' ') v = strtod(l + n + 1, NULL);
    free(b.p);
    return v;
}

// ---------------------------------------------------------------------------------------------
// Tests

Test(serve, get_endpoints_describe_the_served_checkpoint, .init = setup, .fini = teardown) {
    server sv;
    start(&sv, small_ckpt(), NULL);
    char url[256], ct[128];
    tbuf b;
    snprintf(url, sizeof url, "%s/health", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, ct, sizeof ct), 200);
    json_t *j = parse_json(b.p);
    cr_assert_str_eq(jstr(j, "status"), "ok");
    cr_assert_eq(jint(j, "step"), 100);
    json_decref(j);
    free(b.p);

    snprintf(url, sizeof url, "%s/v1/models", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, ct, sizeof ct), 200);
    cr_assert(strstr(ct, "application/json"), "%s", ct);
    j = parse_json(b.p);
    cr_assert_str_eq(jstr(j, "object"), "list");
    cr_assert_str_eq(jstr(j, "data.#.id"), "small");
    cr_assert_str_eq(jstr(j, "data.#.object"), "model");
    cr_assert_eq(jint(j, "data.#.step"), 100);
    cr_assert_eq(jint(j, "data.#.context_length"), 64);
    json_decref(j);
    free(b.p);

    snprintf(url, sizeof url, "%s/api/tags", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, ct, sizeof ct), 200);
    j = parse_json(b.p);
    cr_assert_str_eq(jstr(j, "models.#.name"), "small:latest");
    cr_assert(jint(j, "models.#.size") > 1000);
    json_decref(j);
    free(b.p);

    snprintf(url, sizeof url, "%s/", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, ct, sizeof ct), 200);
    cr_assert(strstr(ct, "text/html"), "%s", ct);
    cr_assert(strstr(b.p, "<title>spartan chat</title>") && strstr(b.p, "/v1/chat/completions"));
    free(b.p);

    snprintf(url, sizeof url, "%s/metrics", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, ct, sizeof ct), 200);
    cr_assert(strstr(ct, "text/plain"), "%s", ct);
    cr_assert(strstr(b.p, "# TYPE spartan_ttft_seconds histogram"), "%s", b.p);
    cr_assert(strstr(b.p, "spartan_checkpoint_step 100\n"), "%s", b.p);
    cr_assert(strstr(b.p, "spartan_requests_total{endpoint=\"/health\",status=\"200\"} 1\n"), "%s",
              b.p);
    free(b.p);
    srv_destroy(sv.s);
}

Test(serve, greedy_completion_equals_spartan_sample_streamed_or_not, .init = setup,
     .fini = teardown) {
    const char *ck = small_ckpt();
    char *want = sample_cli(ck, "ROMEO: to be", 40);
    cr_assert_eq(strlen(want), 40, "char tokens: one byte each: '%s'", want);
    server sv;
    start(&sv, ck, NULL);
    const char *body = "{\"model\":\"small\",\"prompt\":\"ROMEO: to be\",\"max_tokens\":40,"
                       "\"temperature\":0}";
    json_t *j = post(&sv, "/v1/completions", body, 200);
    cr_assert_str_eq(jstr(j, "object"), "text_completion");
    cr_assert_str_eq(jstr(j, "model"), "small");
    cr_assert_str_eq(jstr(j, "choices.#.text"), want);
    cr_assert_str_eq(jstr(j, "choices.#.finish_reason"), "length");
    cr_assert_eq(jint(j, "usage.prompt_tokens"), 12);
    cr_assert_eq(jint(j, "usage.completion_tokens"), 40);
    json_decref(j);

    char *raw = post_stream(&sv, "/v1/completions",
                            "{\"prompt\":\"ROMEO: to be\",\"max_tokens\":40,\"temperature\":0,"
                            "\"stream\":true}",
                            "text/event-stream");
    stream s;
    parse_sse(raw, 0, &s);
    cr_assert_str_eq(s.text, want);
    cr_assert_str_eq(s.finish, "length");
    cr_assert_eq(s.prompt_tokens, 12);
    cr_assert_eq(s.completion_tokens, 40);
    cr_assert(s.events >= 10, "streamed in pieces: %d events", s.events);
    free(raw);

    // Ollama: NDJSON by default, one object with stream:false
    const char *ob = "{\"model\":\"small\",\"prompt\":\"ROMEO: to be\",\"options\":"
                     "{\"temperature\":0,\"num_predict\":40}}";
    raw = post_stream(&sv, "/api/generate", ob, "application/x-ndjson");
    parse_ndjson(raw, 0, "small", &s);
    cr_assert_str_eq(s.text, want);
    cr_assert_str_eq(s.finish, "length");
    cr_assert_eq(s.completion_tokens, 40);
    free(raw);
    j = post(&sv, "/api/generate",
             "{\"model\":\"small:latest\",\"prompt\":\"ROMEO: to be\",\"stream\":false,"
             "\"options\":{\"temperature\":0,\"num_predict\":40}}",
             200);
    cr_assert_str_eq(jstr(j, "response"), want);
    cr_assert(json_is_true(json_object_get(j, "done")));
    cr_assert_eq(jint(j, "eval_count"), 40);
    cr_assert_eq(jint(j, "prompt_eval_count"), 12);
    json_decref(j);
    free(want);
    srv_destroy(sv.s);
}

Test(serve, chat_endpoints_apply_the_template_and_agree_streamed_or_not, .init = setup,
     .fini = teardown) {
    server sv;
    start(&sv, small_ckpt(), NULL);
    // the template, spelled out as a plain completion that stops where a user turn would start
    json_t *j = post(&sv, "/v1/completions",
                     "{\"prompt\":\"System: Be brief.\\nUser: Hi there\\nAssistant:\","
                     "\"max_tokens\":20,\"temperature\":0,\"stop\":\"\\nUser:\"}",
                     200);
    char want[256], finish[32];
    snprintf(want, sizeof want, "%s", jstr(j, "choices.#.text"));
    snprintf(finish, sizeof finish, "%s", jstr(j, "choices.#.finish_reason"));
    long long n_prompt = jint(j, "usage.prompt_tokens");
    cr_assert_eq(n_prompt, 43, "the template is 43 characters");
    json_decref(j);
    const char *msgs = "\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                       "{\"role\":\"user\",\"content\":\"Hi there\"}]";
    char body[512];
    snprintf(body, sizeof body, "{%s,\"max_tokens\":20,\"temperature\":0}", msgs);
    j = post(&sv, "/v1/chat/completions", body, 200);
    cr_assert_str_eq(jstr(j, "object"), "chat.completion");
    cr_assert_str_eq(jstr(j, "choices.#.message.role"), "assistant");
    cr_assert_str_eq(jstr(j, "choices.#.message.content"), want);
    cr_assert_str_eq(jstr(j, "choices.#.finish_reason"), finish);
    cr_assert_eq(jint(j, "usage.prompt_tokens"), n_prompt);
    json_decref(j);

    snprintf(body, sizeof body, "{%s,\"max_tokens\":20,\"temperature\":0,\"stream\":true}", msgs);
    char *raw = post_stream(&sv, "/v1/chat/completions", body, "text/event-stream");
    stream s;
    parse_sse(raw, 1, &s);
    cr_assert_str_eq(s.text, want);
    cr_assert_str_eq(s.finish, finish);
    free(raw);

    snprintf(body, sizeof body,
             "{\"model\":\"small\",%s,\"options\":{\"temperature\":0,"
             "\"num_predict\":20}}",
             msgs);
    raw = post_stream(&sv, "/api/chat", body, "application/x-ndjson");
    parse_ndjson(raw, 1, "small", &s);
    cr_assert_str_eq(s.text, want);
    cr_assert_str_eq(s.finish, finish);
    free(raw);
    snprintf(body, sizeof body,
             "{%s,\"stream\":false,\"options\":{\"temperature\":0,"
             "\"num_predict\":20}}",
             msgs);
    j = post(&sv, "/api/chat", body, 200);
    cr_assert_str_eq(jstr(j, "message.content"), want);
    cr_assert(json_is_true(json_object_get(j, "done")));
    json_decref(j);
    srv_destroy(sv.s);
}

Test(serve, seeded_sampling_repeats_and_another_seed_differs, .init = setup, .fini = teardown) {
    server sv;
    start(&sv, small_ckpt(), NULL);
    const char *fmt = "{\"prompt\":\"Once\",\"max_tokens\":40,\"temperature\":1.2,\"top_k\":20,"
                      "\"top_p\":0.95,\"seed\":%d%s}";
    char body[256], a[64], b[64];
    snprintf(body, sizeof body, fmt, 5, "");
    json_t *j = post(&sv, "/v1/completions", body, 200);
    snprintf(a, sizeof a, "%s", jstr(j, "choices.#.text"));
    json_decref(j);
    snprintf(body, sizeof body, fmt, 5, ",\"stream\":true");
    char *raw = post_stream(&sv, "/v1/completions", body, "text/event-stream");
    stream s;
    parse_sse(raw, 0, &s);
    free(raw);
    cr_assert_str_eq(s.text, a, "same seed, same text");
    snprintf(body, sizeof body, fmt, 6, "");
    j = post(&sv, "/v1/completions", body, 200);
    snprintf(b, sizeof b, "%s", jstr(j, "choices.#.text"));
    json_decref(j);
    cr_assert_str_neq(a, b, "another seed, another text");
    j = post(&sv, "/v1/completions", "{\"prompt\":\"Once\",\"max_tokens\":40,\"temperature\":0}",
             200);
    cr_assert_str_neq(jstr(j, "choices.#.text"), a, "sampling differs from greedy");
    json_decref(j);
    srv_destroy(sv.s);
}

Test(serve, stop_string_cuts_the_text_before_it_in_both_modes, .init = setup, .fini = teardown) {
    server sv;
    start(&sv, small_ckpt(), NULL);
    json_t *j = post(&sv, "/v1/completions",
                     "{\"prompt\":\"Hello\",\"max_tokens\":40,"
                     "\"temperature\":0}",
                     200);
    char full[64], stop[8], body[256];
    snprintf(full, sizeof full, "%s", jstr(j, "choices.#.text"));
    json_decref(j);
    // a 3-byte stop string taken from the middle of the greedy text (spans several tokens)
    int at = 17;
    snprintf(stop, sizeof stop, "%.3s", full + at);
    cr_assert_eq(strlen(stop), 3);
    char *first = strstr(full, stop);
    size_t keep = (size_t)(first - full);
    // JSON-escape the stop string (it may hold '"' or '\\')
    char esc[16] = "";
    for (const char *p = stop; *p; p++) {
        char c[3] = {*p, 0, 0};
        if (*p == '"' || *p == '\\') c[0] = '\\', c[1] = *p;
        if (*p == '\n') c[0] = '\\', c[1] = 'n';
        strcat(esc, c);
    }
    snprintf(body, sizeof body,
             "{\"prompt\":\"Hello\",\"max_tokens\":40,\"temperature\":0,\"stop\":[\"%s\"]}", esc);
    j = post(&sv, "/v1/completions", body, 200);
    cr_assert_eq(strlen(jstr(j, "choices.#.text")), keep, "'%s' stop '%s' -> '%s'", full, stop,
                 jstr(j, "choices.#.text"));
    cr_assert(!strncmp(jstr(j, "choices.#.text"), full, keep));
    cr_assert_str_eq(jstr(j, "choices.#.finish_reason"), "stop");
    json_decref(j);
    snprintf(body, sizeof body,
             "{\"prompt\":\"Hello\",\"max_tokens\":40,\"temperature\":0,\"stop\":\"%s\","
             "\"stream\":true}",
             esc);
    char *raw = post_stream(&sv, "/v1/completions", body, "text/event-stream");
    stream s;
    parse_sse(raw, 0, &s);
    free(raw);
    cr_assert_eq(strlen(s.text), keep, "streamed text must not leak the stop string: '%s'", s.text);
    cr_assert(!strncmp(s.text, full, keep));
    cr_assert_str_eq(s.finish, "stop");
    srv_destroy(sv.s);
}

Test(serve, generation_ends_with_length_at_the_end_of_the_context, .init = setup,
     .fini = teardown) {
    server sv;
    start(&sv, small_ckpt(), NULL);
    // 60 prompt tokens in a 64-token context: 5 tokens fit (the last one is never fed back)
    char body[256];
    snprintf(body, sizeof body, "{\"prompt\":\"%.60s\",\"max_tokens\":1000,\"temperature\":0}",
             "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef");
    json_t *j = post(&sv, "/v1/completions", body, 200);
    cr_assert_str_eq(jstr(j, "choices.#.finish_reason"), "length");
    cr_assert_eq(jint(j, "usage.prompt_tokens"), 60);
    cr_assert_eq(jint(j, "usage.completion_tokens"), 5);
    json_decref(j);
    // a prompt of exactly the context still gets its one token
    snprintf(body, sizeof body, "{\"prompt\":\"%.64s\",\"max_tokens\":3}",
             "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef");
    j = post(&sv, "/v1/completions", body, 200);
    cr_assert_eq(jint(j, "usage.completion_tokens"), 1);
    json_decref(j);
    srv_destroy(sv.s);
}

Test(serve, split_or_invalid_utf8_is_sent_as_valid_json_identically_streamed_or_not, .init = setup,
     .fini = teardown) {
    // byte-level vocabulary with the bytes of "é" (C3 A9) and "€" (E2 82 AC): sampled freely,
    // they form complete characters, characters split across tokens and invalid sequences
    char path[700];
    snprintf(path, sizeof path, "%s/utf8.h5", g_dir);
    write_ckpt_vocab(path, 2, 32, 64, 9, 0.4f, 1, "abc \xC3\xA9\xE2\x82\xAC");
    server sv;
    start(&sv, path, NULL);
    int saw_char = 0, saw_bad = 0;
    for (int seed = 0; seed < 4; seed++) {
        char body[256];
        const char *fmt = "{\"prompt\":\"ab\",\"max_tokens\":50,\"temperature\":2,\"seed\":%d%s}";
        snprintf(body, sizeof body, fmt, seed, "");
        json_t *j = post(&sv, "/v1/completions", body, 200); // jansson checks the UTF-8
        char *plain = strdup(jstr(j, "choices.#.text"));
        json_decref(j);
        snprintf(body, sizeof body, fmt, seed, ",\"stream\":true");
        char *raw = post_stream(&sv, "/v1/completions", body, "text/event-stream");
        stream s;
        parse_sse(raw, 0, &s);
        free(raw);
        cr_assert_str_eq(s.text, plain, "seed %d", seed);
        saw_char += strstr(plain, "\xC3\xA9") || strstr(plain, "\xE2\x82\xAC");
        saw_bad += strstr(plain, "\xEF\xBF\xBD") != NULL; // U+FFFD
        free(plain);
    }
    cr_assert(saw_char && saw_bad, "the test should meet whole and broken characters");
    srv_destroy(sv.s);
}

// expect_error posts body to path and checks the error reply names want in its message.
static void expect_error(const server *sv, const char *path, const char *body, long status,
                         const char *want) {
    char url[256];
    snprintf(url, sizeof url, "%s%s", sv->base, path);
    tbuf b;
    long st = http("POST", url, body, NULL, &b, NULL, 0);
    cr_assert_eq(st, status, "%s %s: status %ld (%s)", path, body, st, b.p);
    json_t *j = parse_json(b.p);
    const char *msg;
    if (!strncmp(path, "/api/", 5)) {
        msg = jstr(j, "error");
    } else {
        msg = jstr(j, "error.message");
        cr_assert(strlen(jstr(j, "error.type")) > 0);
    }
    cr_assert(strstr(msg, want), "%s %s: message '%s' should mention '%s'", path, body, msg, want);
    json_decref(j);
    free(b.p);
}

Test(serve, bad_requests_get_400_with_an_error_naming_the_field, .init = setup, .fini = teardown) {
    server sv;
    start(&sv, small_ckpt(), NULL);
    const char *C = "/v1/completions", *CH = "/v1/chat/completions";
    expect_error(&sv, C, "{\"prompt\": \"hi\",", 400, "malformed JSON");
    expect_error(&sv, C, "", 400, "malformed JSON");
    expect_error(&sv, C, "[1,2]", 400, "JSON object");
    expect_error(&sv, C, "{\"prompt\":42}", 400, "prompt");
    expect_error(&sv, C, "{\"max_tokens\":5}", 400, "prompt: required");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"max_tokens\":\"5\"}", 400, "max_tokens");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"max_tokens\":0}", 400, "max_tokens");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"max_tokens\":-3}", 400, "max_tokens");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"temperature\":-1}", 400, "temperature");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"temperature\":\"hot\"}", 400, "temperature");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"top_p\":1.5}", 400, "top_p");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"top_k\":2.5}", 400, "top_k");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"seed\":-1}", 400, "seed");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"stream\":\"yes\"}", 400, "stream");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400,
                 "stop");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"stop\":[1]}", 400, "stop[0]");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"n\":2}", 400, "n:");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"model\":\"gpt-4\"}", 400, "gpt-4");
    expect_error(&sv, C, "{\"prompt\":\"hi\",\"model\":7}", 400, "model");
    expect_error(&sv, C, "{\"prompt\":\"a~b\"}", 400, "prompt");
    char longp[200];
    memset(longp, 'a', 100);
    snprintf(longp + 100, 100, "\"}");
    char body[300];
    snprintf(body, sizeof body, "{\"prompt\":\"%s", longp);
    expect_error(&sv, C, body, 400, "longer than the context");
    expect_error(&sv, CH, "{\"messages\":[]}", 400, "messages");
    expect_error(&sv, CH, "{\"messages\":\"hi\"}", 400, "messages");
    expect_error(&sv, CH, "{\"messages\":[{\"role\":\"pirate\",\"content\":\"arr\"}]}", 400,
                 "messages[0].role");
    expect_error(&sv, CH, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400,
                 "messages[0].content");
    expect_error(&sv, CH,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                 "\"max_tokens\":0}",
                 400, "max_tokens");
    // Ollama routes: {"error": "..."}
    expect_error(&sv, "/api/generate", "{\"prompt\":\"hi\",\"options\":{\"num_predict\":0}}", 400,
                 "num_predict");
    expect_error(&sv, "/api/generate", "{\"prompt\":\"hi\",\"options\":[1]}", 400, "options");
    expect_error(&sv, "/api/generate", "{\"model\":\"llama3\",\"prompt\":\"hi\"}", 400, "llama3");
    expect_error(&sv, "/api/chat", "not json", 400, "malformed JSON");
    // the server still answers normally afterwards
    json_t *j = post(&sv, C, "{\"prompt\":\"hi\",\"max_tokens\":2}", 200);
    cr_assert_eq(jint(j, "usage.completion_tokens"), 2);
    json_decref(j);
    cr_assert_eq(metric(&sv, "spartan_active_slots"), 0);
    srv_destroy(sv.s);
}

Test(serve, oversized_body_413_unknown_path_404_wrong_method_405, .init = setup, .fini = teardown) {
    server sv;
    start(&sv, small_ckpt(), NULL);
    size_t n = (1 << 20) + 100;
    char *big = malloc(n + 64);
    snprintf(big, 64, "{\"prompt\":\"");
    size_t k = strlen(big);
    memset(big + k, 'a', n);
    snprintf(big + k + n, 8, "\"}");
    char url[256];
    snprintf(url, sizeof url, "%s/v1/completions", sv.base);
    tbuf b;
    cr_assert_eq(http("POST", url, big, NULL, &b, NULL, 0), 413, "%s", b.p);
    json_t *j = parse_json(b.p);
    cr_assert(strstr(jstr(j, "error.message"), "larger than"));
    json_decref(j);
    free(b.p);
    free(big);
    expect_error(&sv, "/v1/nothing", "{}", 404, "no such endpoint");
    snprintf(url, sizeof url, "%s/favicon.ico", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 404);
    free(b.p);
    snprintf(url, sizeof url, "%s/v1/completions", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 405);
    free(b.p);
    snprintf(url, sizeof url, "%s/v1/models", sv.base);
    cr_assert_eq(http("POST", url, "{}", NULL, &b, NULL, 0), 405);
    free(b.p);
    snprintf(url, sizeof url, "%s/metrics", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 200);
    cr_assert(strstr(b.p, "{endpoint=\"other\",status=\"404\"} 2\n"), "%s", b.p);
    cr_assert(strstr(b.p, "{endpoint=\"/v1/completions\",status=\"413\"} 1\n"), "%s", b.p);
    free(b.p);
    srv_destroy(sv.s);
}

Test(serve, api_key_guards_every_endpoint_but_health_and_the_page_takes_it_in_the_query,
     .init = setup, .fini = teardown) {
    server sv;
    srv_config c = {.max_batch = 2, .threads = 2, .api_key = "s3cret"};
    start(&sv, small_ckpt(), &c);
    const char *paths[] = {"/v1/models", "/api/tags", "/metrics"};
    char url[256];
    tbuf b;
    for (int i = 0; i < 3; i++) {
        snprintf(url, sizeof url, "%s%s", sv.base, paths[i]);
        cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 401, "%s without key", paths[i]);
        free(b.p);
        cr_assert_eq(http("GET", url, NULL, "wrong", &b, NULL, 0), 401, "%s bad key", paths[i]);
        free(b.p);
        cr_assert_eq(http("GET", url, NULL, "s3cret", &b, NULL, 0), 200, "%s key", paths[i]);
        free(b.p);
    }
    snprintf(url, sizeof url, "%s/v1/completions", sv.base);
    const char *body = "{\"prompt\":\"hi\",\"max_tokens\":3}";
    cr_assert_eq(http("POST", url, body, NULL, &b, NULL, 0), 401);
    json_t *j = parse_json(b.p);
    cr_assert_str_eq(jstr(j, "error.type"), "authentication_error");
    json_decref(j);
    free(b.p);
    cr_assert_eq(http("POST", url, body, "s3cre", &b, NULL, 0), 401);
    free(b.p);
    cr_assert_eq(http("POST", url, body, "s3cret!", &b, NULL, 0), 401, "a longer key");
    free(b.p);
    cr_assert_eq(http("POST", url, body, "s3cret", &b, NULL, 0), 200, "%s", b.p);
    free(b.p);
    snprintf(url, sizeof url, "%s/api/generate", sv.base);
    cr_assert_eq(http("POST", url, body, NULL, &b, NULL, 0), 401);
    free(b.p);
    snprintf(url, sizeof url, "%s/health", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 200);
    free(b.p);
    // the chat page: the key as a header, or in the query string (a browser opening the page)
    snprintf(url, sizeof url, "%s/", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 401, "/ without key");
    free(b.p);
    cr_assert_eq(http("GET", url, NULL, "s3cret", &b, NULL, 0), 200, "/ with the header");
    free(b.p);
    snprintf(url, sizeof url, "%s/?key=wrong", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 401, "/?key=wrong");
    free(b.p);
    snprintf(url, sizeof url, "%s/?key=s3cret", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 200, "/?key=s3cret");
    cr_assert(strstr(b.p, "<html") || strstr(b.p, "<!doctype") || strstr(b.p, "<!DOCTYPE"),
              "not the page");
    free(b.p);
    snprintf(url, sizeof url, "%s/v1/models?key=s3cret", sv.base);
    cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 401, "?key= is for the page only");
    free(b.p);
    srv_destroy(sv.s);
}

// One streaming client of the concurrency test.
typedef struct {
    CURL *h;
    struct curl_slist *hd;
    char body[256];
    tbuf out;
    char want[128];
} client;

Test(serve, thirty_two_concurrent_streams_are_complete_and_correct, .init = setup,
     .fini = teardown) {
    enum { N = 32, TOK = 24 };
    server sv;
    srv_config c = {.max_batch = 8, .threads = 2};
    start(&sv, small_ckpt(), &c);
    static client cl[N];
    // the answers one at a time first
    for (int i = 0; i < N; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"prompt\":\"Client %02d asks: why?\",\"max_tokens\":%d,\"temperature\":0}", i,
                 TOK);
        json_t *j = post(&sv, "/v1/completions", body, 200);
        snprintf(cl[i].want, sizeof cl[i].want, "%s", jstr(j, "choices.#.text"));
        json_decref(j);
        snprintf(cl[i].body, sizeof cl[i].body,
                 "{\"prompt\":\"Client %02d asks: why?\",\"max_tokens\":%d,\"temperature\":0,"
                 "\"stream\":true}",
                 i, TOK);
    }
    int distinct = 0;
    for (int i = 1; i < N; i++)
        distinct += strcmp(cl[i].want, cl[0].want) != 0;
    cr_assert(distinct > 0, "prompts should lead to different answers");
    CURLM *multi = curl_multi_init();
    char url[256];
    snprintf(url, sizeof url, "%s/v1/completions", sv.base);
    for (int i = 0; i < N; i++) {
        cl[i].h = curl_easy_init();
        cl[i].hd = curl_slist_append(NULL, "Content-Type: application/json");
        curl_easy_setopt(cl[i].h, CURLOPT_URL, url);
        curl_easy_setopt(cl[i].h, CURLOPT_HTTPHEADER, cl[i].hd);
        curl_easy_setopt(cl[i].h, CURLOPT_POSTFIELDS, cl[i].body);
        curl_easy_setopt(cl[i].h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(cl[i].h, CURLOPT_WRITEDATA, &cl[i].out);
        curl_easy_setopt(cl[i].h, CURLOPT_TIMEOUT, 20L);
        curl_multi_add_handle(multi, cl[i].h);
    }
    double t0 = sys_now_ms();
    int running = N;
    while (running) {
        cr_assert_eq(curl_multi_perform(multi, &running), CURLM_OK);
        if (running) curl_multi_poll(multi, NULL, 0, 100, NULL);
    }
    double ms = sys_now_ms() - t0;
    CURLMsg *msg;
    int left, ok = 0;
    while ((msg = curl_multi_info_read(multi, &left)))
        if (msg->msg == CURLMSG_DONE) {
            cr_assert_eq(msg->data.result, CURLE_OK, "%s", curl_easy_strerror(msg->data.result));
            ok++;
        }
    cr_assert_eq(ok, N);
    for (int i = 0; i < N; i++) {
        long st = 0;
        curl_easy_getinfo(cl[i].h, CURLINFO_RESPONSE_CODE, &st);
        cr_assert_eq(st, 200, "client %d", i);
        stream s;
        parse_sse(cl[i].out.p, 0, &s);
        cr_assert_str_eq(s.text, cl[i].want, "client %d", i);
        cr_assert_str_eq(s.finish, "length");
        cr_assert_eq(s.completion_tokens, TOK);
        curl_multi_remove_handle(multi, cl[i].h);
        curl_easy_cleanup(cl[i].h);
        curl_slist_free_all(cl[i].hd);
        free(cl[i].out.p);
    }
    curl_multi_cleanup(multi);
    fprintf(stderr, "serve: %d concurrent streams x %d tokens in %.0f ms (%.0f tokens/s)\n", N, TOK,
            ms, N * TOK / (ms / 1e3));
    cr_assert_eq(metric(&sv, "spartan_active_slots"), 0);
    cr_assert_eq(metric(&sv, "spartan_queued_requests"), 0);
    cr_assert_eq(metric(&sv, "spartan_tokens_generated_total"), 2 * N * TOK);
    srv_destroy(sv.s);
}

// A streaming request run on its own thread (reload and shutdown tests). While hold is set the
// client reads nothing: its write callback pauses the transfer, and its socket has a small
// receive buffer, so the server's backpressure soon pauses the generation (spartan_paused_streams).
// Clearing hold lets it read to the end.
typedef struct {
    const server *sv;
    const char *body;
    tbuf out;
    atomic_int finished, hold;
    int held; // the write callback paused the transfer (client thread only)
    CURLcode rc;
} bg_stream;

static size_t bg_data(char *p, size_t sz, size_t n, void *u) {
    bg_stream *b = u;
    if (atomic_load(&b->hold)) {
        b->held = 1;
        return CURL_WRITEFUNC_PAUSE; // libcurl hands these bytes again once unpaused
    }
    on_data(p, sz, n, &b->out);
    return sz * n;
}

// small_rcvbuf gives the client socket a small receive buffer, set before connecting so that
// the TCP window stays small too.
static int small_rcvbuf(void *u, curl_socket_t fd, curlsocktype purpose) {
    (void)u, (void)purpose;
    int n = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n, sizeof n);
    return CURL_SOCKOPT_OK;
}

static void *bg_main(void *arg) {
    bg_stream *b = arg;
    char url[256];
    snprintf(url, sizeof url, "%s/v1/completions", b->sv->base);
    CURL *h = curl_easy_init();
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, b->body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, bg_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(h, CURLOPT_SOCKOPTFUNCTION, small_rcvbuf);
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 1024L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 50L);
    // the multi interface, so that this thread can unpause the transfer when hold is cleared
    CURLM *m = curl_multi_init();
    curl_multi_add_handle(m, h);
    int running = 1;
    while (running) {
        if (b->held && !atomic_load(&b->hold)) {
            b->held = 0;
            curl_easy_pause(h, CURLPAUSE_CONT);
        }
        if (curl_multi_perform(m, &running) != CURLM_OK) break;
        if (running) curl_multi_poll(m, NULL, 0, 10, NULL);
    }
    b->rc = CURLE_FAILED_INIT;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)))
        if (msg->msg == CURLMSG_DONE) b->rc = msg->data.result;
    curl_multi_remove_handle(m, h);
    curl_multi_cleanup(m);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    atomic_store(&b->finished, 1);
    return NULL;
}

// wait_metric polls /metrics until name reaches at least want and returns its value. The bound
// is generous: the test waits for the event, never for a time.
static double wait_metric(const server *sv, const char *name, double want, int timeout_ms) {
    double t0 = sys_now_ms(), v;
    while ((v = metric(sv, name)) < want) {
        cr_assert(sys_now_ms() - t0 < timeout_ms, "%s is %g after %d ms, want >= %g", name, v,
                  timeout_ms, want);
        usleep(2000);
    }
    return v;
}

static long long model_step(const server *sv) {
    char url[256];
    snprintf(url, sizeof url, "%s/v1/models", sv->base);
    tbuf b;
    cr_assert_eq(http("GET", url, NULL, NULL, &b, NULL, 0), 200);
    json_t *j = parse_json(b.p);
    long long st = jint(j, "data.#.step");
    json_decref(j);
    free(b.p);
    return st;
}

static int copy_file(const char *from, const char *to) {
    char *data;
    size_t n;
    if (tu_read_file(from, &data, &n)) return -1;
    char tmp[800];
    snprintf(tmp, sizeof tmp, "%s.tmp", to);
    int rc = tu_write_file(tmp, data, n) || rename(tmp, to); // appears complete, as ckpt_ does
    free(data);
    return rc;
}

// greedy returns the text of a non-streaming greedy completion of "The" (caller frees), checking
// that it ran to max_tokens.
static char *greedy(const server *sv, int max_tokens) {
    char body[256];
    snprintf(body, sizeof body, "{\"prompt\":\"The\",\"max_tokens\":%d,\"temperature\":0}",
             max_tokens);
    json_t *j = post(sv, "/v1/completions", body, 200);
    cr_assert_eq(jint(j, "usage.completion_tokens"), max_tokens);
    char *text = strdup(jstr(j, "choices.#.text"));
    json_decref(j);
    return text;
}

// The stream in flight at the swap is held still by its own client: the client reads nothing,
// so backpressure pauses its generation on the server (spartan_paused_streams = 1) with most of
// it not generated yet, and nothing the machine's speed decides can finish it before the swap.
// Released after the swap, it must be the old model's whole greedy output, not one that
// switched weights halfway.
Test(serve, hot_reload_swaps_in_newer_checkpoint_and_refuses_a_corrupt_one, .init = setup,
     .fini = teardown, .timeout = 60) {
    enum { N = 500, WAIT_MS = 15000 };
    char dir[600], stage[600], p[700], to[700];
    snprintf(dir, sizeof dir, "%s/run", g_dir);
    snprintf(stage, sizeof stage, "%s/stage", g_dir);
    cr_assert_eq(sys_mkdir_p(dir), ERR_OK);
    cr_assert_eq(sys_mkdir_p(stage), ERR_OK);
    snprintf(p, sizeof p, "%s/ckpt_00000010.h5", dir);
    big_ckpt(p, 1, 10);
    snprintf(p, sizeof p, "%s/ckpt_00000020.h5", stage);
    big_ckpt(p, 2, 20); // written before the server runs: other weights, a newer step
    server sv;
    srv_config c = {.max_batch = 4, .threads = 2, .reload_ms = 20, .stream_buffer = 4096};
    start(&sv, dir, &c);
    cr_assert_eq(model_step(&sv), 10);
    char *old_short = greedy(&sv, 12), *old_full = greedy(&sv, N);

    double base = metric(&sv, "spartan_tokens_generated_total");
    char body[256];
    snprintf(body, sizeof body,
             "{\"prompt\":\"The\",\"max_tokens\":%d,\"temperature\":0,\"stream\":true}", N);
    bg_stream bg = {.sv = &sv, .body = body, .hold = 1};
    pthread_t th;
    pthread_create(&th, NULL, bg_main, &bg);
    wait_metric(&sv, "spartan_paused_streams", 1, WAIT_MS);
    int before = (int)(metric(&sv, "spartan_tokens_generated_total") - base);
    cr_assert_lt(before, N / 2, "%d of %d tokens generated before the pause", before, N);

    snprintf(to, sizeof to, "%s/ckpt_00000020.h5", dir);
    cr_assert_eq(copy_file(p, to), 0);
    wait_metric(&sv, "spartan_reloads_total", 1, WAIT_MS);
    cr_assert_eq(model_step(&sv), 20, "the newer checkpoint was not loaded");
    // still in flight: paused again (bytes the socket buffers took may have let it make a few
    // more tokens meanwhile; its client still reads nothing) and far from done
    wait_metric(&sv, "spartan_paused_streams", 1, WAIT_MS);
    int during = (int)(metric(&sv, "spartan_tokens_generated_total") - base);
    cr_assert_lt(during, N, "the stream finished before the swap (%d of %d tokens)", during, N);
    char *new_short = greedy(&sv, 12), *new_full = greedy(&sv, N);
    cr_assert_str_neq(new_short, old_short, "new requests use the new weights");
    cr_assert_str_neq(new_full, old_full);

    atomic_store(&bg.hold, 0);
    pthread_join(th, NULL);
    cr_assert_eq(bg.rc, CURLE_OK, "%s", curl_easy_strerror(bg.rc));
    stream s;
    parse_sse(bg.out.p, 0, &s);
    free(bg.out.p);
    cr_assert_eq(s.completion_tokens, N);
    cr_assert_str_eq(s.finish, "length");
    cr_assert_str_eq(s.text, old_full, "a request in flight goes on with the old weights");
    cr_assert_eq(metric(&sv, "spartan_tokens_generated_total") - base, 2 * N + 12,
                 "the held stream was generated once, not twice or only in part");

    // a corrupt newer checkpoint is refused once; step 20 keeps serving
    snprintf(p, sizeof p, "%s/ckpt_00000030.h5", stage);
    cr_assert_eq(tu_write_file(p, "not an hdf5 file", 16), 0);
    snprintf(to, sizeof to, "%s/ckpt_00000030.h5", dir);
    cr_assert_eq(copy_file(p, to), 0); // renamed in: the reloader never sees it half written
    wait_metric(&sv, "spartan_reload_failures_total", 1, WAIT_MS);
    double polls = metric(&sv, "spartan_reload_polls_total");
    wait_metric(&sv, "spartan_reload_polls_total", polls + 3, WAIT_MS); // not retried unchanged
    cr_assert_eq(metric(&sv, "spartan_reload_failures_total"), 1);
    cr_assert_eq(metric(&sv, "spartan_reloads_total"), 1);
    cr_assert_eq(model_step(&sv), 20);
    cr_assert_eq(metric(&sv, "spartan_checkpoint_step"), 20);
    char *again = greedy(&sv, 12);
    cr_assert_str_eq(again, new_short);
    free(again);
    free(old_short);
    free(old_full);
    free(new_short);
    free(new_full);
    srv_destroy(sv.s);
}

static size_t hang_up(char *p, size_t sz, size_t n, void *u) {
    (void)p, (void)sz, (void)n;
    atomic_store((atomic_int *)u, 1);
    return 0; // abort the transfer: the client goes away mid-stream
}

Test(serve, client_leaving_mid_stream_stops_generation_and_frees_its_slot, .init = setup,
     .fini = teardown) {
    char p[700];
    snprintf(p, sizeof p, "%s/big.h5", g_dir);
    big_ckpt(p, 3, 1);
    server sv;
    // a small stream buffer: unread output stops generation after a few kB, so the client's
    // hang-up is seen long before 1000 tokens however fast the machine is
    srv_config c = {.max_batch = 2, .threads = 2, .stream_buffer = 4096};
    start(&sv, p, &c);
    for (int round = 0; round < 2; round++) {
        char url[256];
        snprintf(url, sizeof url, "%s/v1/completions", sv.base);
        CURL *h = curl_easy_init();
        struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
        atomic_int got = 0;
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS,
                         "{\"prompt\":\"The\",\"max_tokens\":1000,\"stream\":true}");
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, hang_up);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &got);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
        CURLcode rc = curl_easy_perform(h);
        cr_assert_eq(rc, CURLE_WRITE_ERROR, "%s", curl_easy_strerror(rc));
        cr_assert(atomic_load(&got));
        curl_slist_free_all(hd);
        curl_easy_cleanup(h);
        wait_metric(&sv, "spartan_requests_cancelled_total", round + 1, 15000);
        cr_assert_eq(metric(&sv, "spartan_requests_cancelled_total"), round + 1);
        cr_assert_eq(metric(&sv, "spartan_active_slots"), 0, "the slot was not freed");
        cr_assert(metric(&sv, "spartan_tokens_generated_total") < 1000 * (round + 1),
                  "generation went on to the end");
    }
    // the slots are reusable: a full request still works
    json_t *j = post(&sv, "/v1/completions", "{\"prompt\":\"The\",\"max_tokens\":5}", 200);
    cr_assert_eq(jint(j, "usage.completion_tokens"), 5);
    json_decref(j);
    srv_destroy(sv.s);
}

Test(serve, shutdown_with_requests_in_flight_ends_them_cleanly, .init = setup, .fini = teardown) {
    char p[700];
    snprintf(p, sizeof p, "%s/big.h5", g_dir);
    big_ckpt(p, 4, 1);
    server sv;
    srv_config c = {.max_batch = 1, .threads = 2, .stream_buffer = 4096};
    start(&sv, p, &c);
    // one stream held in flight by its client and one non-streaming request queued behind it
    // (max_batch 1): both provably unfinished when the server stops, however fast it runs
    bg_stream a = {
        .sv = &sv, .body = "{\"prompt\":\"The\",\"max_tokens\":1000,\"stream\":true}", .hold = 1};
    bg_stream b = {.sv = &sv, .body = "{\"prompt\":\"The\",\"max_tokens\":1000}"};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, bg_main, &a);
    wait_metric(&sv, "spartan_paused_streams", 1, 15000);
    pthread_create(&tb, NULL, bg_main, &b);
    wait_metric(&sv, "spartan_queued_requests", 1, 15000);
    srv_destroy(sv.s); // waits at most 2 s for the held client, then closes its connection
    atomic_store(&a.hold, 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    cr_assert(atomic_load(&a.finished) && atomic_load(&b.finished));
    cr_assert(a.out.p && !strstr(a.out.p, "[DONE]"), "the stream was cut, not completed");
    cr_assert(b.out.p && strstr(b.out.p, "shutting down"), "queued request: %s", b.out.p);
    free(a.out.p);
    free(b.out.p);
}

Test(serve, create_fails_cleanly_on_bad_settings_busy_port_or_corrupt_checkpoint, .init = setup,
     .fini = teardown) {
    const char *ck = small_ckpt();
    srv_server *s = NULL, *s2 = NULL;
    srv_config c = {.max_batch = -1};
    cr_assert_eq(srv_create(&s, ck, &c), ERR_INVAL);
    cr_assert(strstr(err_msg(), "max_batch"), "%s", err_msg());
    c = (srv_config){.port = 70000};
    cr_assert_eq(srv_create(&s, ck, &c), ERR_INVAL);
    cr_assert(strstr(err_msg(), "port"), "%s", err_msg());
    c = (srv_config){.host = "no-such-host.invalid"};
    cr_assert_neq(srv_create(&s, ck, &c), ERR_OK);
    cr_assert(strstr(err_msg(), "no-such-host.invalid"), "%s", err_msg());
    char bad[700];
    snprintf(bad, sizeof bad, "%s/ckpt_00000005.h5", g_dir);
    static const char hdf5_head[] = "\x89HDF\r\n\x1a\n truncated"; // a cut-off HDF5 file
    cr_assert_eq(tu_write_file(bad, hdf5_head, sizeof hdf5_head - 1), 0);
    cr_assert_eq(srv_create(&s, bad, NULL), ERR_FORMAT);
    cr_assert(strstr(err_msg(), "ckpt_00000005.h5"), "%s", err_msg());
    cr_assert_eq(srv_create(&s, g_dir, NULL), ERR_FORMAT, "the folder's newest is the bad one");
    snprintf(bad, sizeof bad, "%s/empty", g_dir);
    cr_assert_eq(sys_mkdir_p(bad), ERR_OK);
    cr_assert_eq(srv_create(&s, bad, NULL), ERR_IO);
    cr_assert(strstr(err_msg(), "no checkpoint"), "%s", err_msg());
    // a port already in use
    cr_assert_eq(srv_create(&s, ck, NULL), ERR_OK, "%s", err_msg());
    c = (srv_config){.port = srv_port(s)};
    cr_assert_eq(srv_create(&s2, ck, &c), ERR_NET);
    char want[128];
    snprintf(want, sizeof want, "cannot listen on 127.0.0.1:%d: %s", srv_port(s),
             strerror(EADDRINUSE));
    cr_assert_str_eq(err_msg(), want);
    srv_destroy(s);
}

Test(serve, spartan_serve_process_starts_answers_and_stops_on_sigterm, .init = setup,
     .fini = teardown) {
    const char *ck = small_ckpt();
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s serve", tu_spartan());
    cr_assert_eq(tu_run(cmd, 10, &out), 2, "%s", out);
    cr_assert(strstr(out, "no checkpoint given"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s serve %s --port 99999", tu_spartan(), ck);
    cr_assert_eq(tu_run(cmd, 10, &out), 2, "%s", out);
    cr_assert(strstr(out, "--port"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s serve %s/missing.h5 --port 0", tu_spartan(), g_dir);
    cr_assert_eq(tu_run(cmd, 10, &out), 1, "%s", out);
    cr_assert(strstr(out, "missing.h5"), "%s", out);
    free(out);

    char log[700], err[700];
    snprintf(log, sizeof log, "%s/serve.out", g_dir);
    snprintf(err, sizeof err, "%s/serve.err", g_dir);
    int port = 0;
    snprintf(cmd, sizeof cmd, "%s --port 0 --threads 1", ck);
    pid_t pid = tu_serve_start(cmd, log, err, &port);
    cr_assert(pid > 0, "no URL line from spartan serve");
    g_child = pid;
    // a second server on the same port names the address and the reason
    snprintf(cmd, sizeof cmd, "%s serve %s --port %d", tu_spartan(), ck, port);
    cr_assert_eq(tu_run(cmd, 10, &out), 1, "%s", out);
    char want[128];
    snprintf(want, sizeof want, "spartan serve: cannot listen on 127.0.0.1:%d: %s\n", port,
             strerror(EADDRINUSE));
    cr_assert(strstr(out, want), "%s", out);
    free(out);
    server sv;
    snprintf(sv.base, sizeof sv.base, "http://127.0.0.1:%d", port);
    json_t *j = post(&sv, "/v1/completions", "{\"prompt\":\"hi\",\"max_tokens\":4}", 200);
    cr_assert_eq(jint(j, "usage.completion_tokens"), 4);
    json_decref(j);
    kill(pid, SIGTERM);
    g_child = 0; // reaped (or killed at the timeout) by tu_wait_exit
    cr_assert_eq(tu_wait_exit(pid, 10), 0, "spartan serve must exit 0 on SIGTERM");
}

// wait_file_has waits until the file at path contains want and returns its text (caller frees);
// fails the test after timeout_ms.
static char *wait_file_has(const char *path, const char *want, int timeout_ms) {
    char *text = NULL;
    cr_assert(tu_wait_file_has(path, want, timeout_ms, &text), "no '%s' in %s after %d ms:\n%s",
              want, path, timeout_ms, text);
    return text;
}

Test(serve, truncated_checkpoint_in_a_served_folder_is_refused_with_one_clean_line, .init = setup,
     .fini = teardown) {
    char dir[600], p[700], out[700], err[700], args[800], *data;
    size_t n;
    snprintf(dir, sizeof dir, "%s/run", g_dir);
    cr_assert_eq(sys_mkdir_p(dir), ERR_OK);
    snprintf(p, sizeof p, "%s/ckpt_00000001.h5", dir);
    write_ckpt(p, 2, 32, 64, 7, 0.4f, 1);
    snprintf(out, sizeof out, "%s/serve.out", g_dir);
    snprintf(err, sizeof err, "%s/serve.err", g_dir);
    snprintf(args, sizeof args, "%s --port 0 --threads 1 --reload-ms 20", dir);
    int port = 0;
    pid_t pid = tu_serve_start(args, out, err, &port);
    cr_assert(pid > 0, "no URL line from spartan serve");
    g_child = pid;
    // the first half of a valid checkpoint, renamed in as the newest
    cr_assert_eq(tu_read_file(p, &data, &n), 0);
    char tmp[700], to[700];
    snprintf(tmp, sizeof tmp, "%s/cut.tmp", g_dir);
    snprintf(to, sizeof to, "%s/ckpt_00000002.h5", dir);
    cr_assert_eq(tu_write_file(tmp, data, n / 2), 0);
    cr_assert_eq(rename(tmp, to), 0);
    free(data);
    char *text = wait_file_has(err, "reload refused:", 15000);
    kill(pid, SIGTERM);
    g_child = 0; // reaped (or killed at the timeout) by tu_wait_exit
    cr_assert_eq(tu_wait_exit(pid, 10), 0, "spartan serve must exit 0 on SIGTERM");
    cr_assert(strstr(text, "ckpt_00000002.h5"), "%s", text);
    cr_assert(!strstr(text, "HDF5-DIAG"), "HDF5's own error printing leaked:\n%s", text);
    free(text);
}
