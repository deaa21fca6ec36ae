// srv_api.c: the wire formats of the server. Parses OpenAI (/v1/completions,
// /v1/chat/completions) and Ollama (/api/generate, /api/chat) request bodies into a srv_request
// (srv_parse_request, public so that the fuzz harness reaches it), then tokenizes the prompt into
// a srv_req, rejecting every malformed or out-of-range field with a message that names it, and
// formats responses, stream events (SSE "data: {json}\n\n" or NDJSON "{json}\n") and errors with
// jansson. Chat messages become one prompt through the template documented at chat_prompt.
// Pure functions over their arguments: any thread.
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "infer/srv_impl.h"
#include "train/base/err.h"
#include "train/base/sys.h"

static int is_ollama(int ep) { return ep == SRV_EP_GENERATE || ep == SRV_EP_OCHAT; }
static int is_chat(int ep) { return ep == SRV_EP_CHAT || ep == SRV_EP_OCHAT; }

// bad writes a field error into msg and returns ERR_INVAL.
static int bad(char *msg, size_t msgn, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *msg, size_t msgn, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msgn, fmt, ap);
    va_end(ap);
    return ERR_INVAL;
}

// get_num reads an optional number field in [lo, hi] into *v.
static int get_num(json_t *o, const char *key, double lo, double hi, double *v, char *msg,
                   size_t msgn) {
    json_t *j = json_object_get(o, key);
    if (!j || json_is_null(j)) return ERR_OK;
    if (!json_is_number(j) || json_number_value(j) < lo || json_number_value(j) > hi)
        return bad(msg, msgn, "%s: must be a number in [%g, %g]", key, lo, hi);
    *v = json_number_value(j);
    return ERR_OK;
}

// get_int reads an optional integer field in [lo, hi] into *v.
static int get_int(json_t *o, const char *key, long long lo, long long hi, long long *v, char *msg,
                   size_t msgn) {
    json_t *j = json_object_get(o, key);
    if (!j || json_is_null(j)) return ERR_OK;
    if (!json_is_integer(j) || json_integer_value(j) < lo || json_integer_value(j) > hi)
        return bad(msg, msgn, "%s: must be an integer in [%lld, %lld]", key, lo, hi);
    *v = json_integer_value(j);
    return ERR_OK;
}

// get_stop reads "stop": a string or an array of at most 4 non-empty strings.
static int get_stop(srv_request *r, json_t *o, char *msg, size_t msgn) {
    json_t *j = json_object_get(o, "stop");
    if (!j || json_is_null(j)) return ERR_OK;
    if (json_is_string(j)) {
        if (json_string_length(j) == 0) return bad(msg, msgn, "stop: must not be empty");
        r->stop[r->n_stop++] = xstrdup(json_string_value(j));
        return ERR_OK;
    }
    if (!json_is_array(j) || json_array_size(j) > 4)
        return bad(msg, msgn, "stop: must be a string or an array of at most 4 strings");
    size_t i;
    json_t *e;
    json_array_foreach(j, i, e) {
        if (!json_is_string(e) || json_string_length(e) == 0)
            return bad(msg, msgn, "stop[%zu]: must be a non-empty string", i);
        r->stop[r->n_stop++] = xstrdup(json_string_value(e));
    }
    return ERR_OK;
}

// buf: a growing byte string for the chat template.
typedef struct {
    char *p;
    size_t n, cap;
} buf;

static void buf_put(buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = 2 * (b->n + n + 1) + 64;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

// chat_prompt renders messages with the chat template. The models have no chat training, so
// the template is plain text a base model continues naturally:
//   "System: <content>\n" for a system message, "User: <content>\n" for a user message,
//   "Assistant: <content>\n" for an earlier assistant turn, and finally "Assistant:".
// Generation also stops at "\nUser:" (the model starting the next user turn).
static int chat_prompt(json_t *o, buf *out, char *msg, size_t msgn) {
    json_t *ms = json_object_get(o, "messages");
    if (!json_is_array(ms) || json_array_size(ms) == 0)
        return bad(msg, msgn, "messages: must be a non-empty array");
    size_t i;
    json_t *m;
    json_array_foreach(ms, i, m) {
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (!json_is_object(m) || !json_is_string(role))
            return bad(msg, msgn, "messages[%zu].role: must be a string", i);
        const char *rs = json_string_value(role), *label;
        if (!strcmp(rs, "system") || !strcmp(rs, "developer"))
            label = "System: ";
        else if (!strcmp(rs, "user"))
            label = "User: ";
        else if (!strcmp(rs, "assistant"))
            label = "Assistant: ";
        else
            return bad(msg, msgn, "messages[%zu].role: '%s' is not system, user or assistant", i,
                       rs);
        buf_put(out, label, strlen(label));
        if (json_is_string(content)) {
            buf_put(out, json_string_value(content), json_string_length(content));
        } else if (json_is_array(content)) { // OpenAI content parts: keep the text parts
            size_t k;
            json_t *part;
            json_array_foreach(content, k, part) {
                json_t *t = json_object_get(part, "text");
                if (!json_is_string(t))
                    return bad(msg, msgn, "messages[%zu].content[%zu].text: must be a string", i,
                               k);
                buf_put(out, json_string_value(t), json_string_length(t));
            }
        } else if (content && !json_is_null(content)) {
            return bad(msg, msgn, "messages[%zu].content: must be a string", i);
        }
        buf_put(out, "\n", 1);
    }
    buf_put(out, "Assistant:", 10);
    return ERR_OK;
}

// parse_fields reads everything but the prompt of a body to route ep into r, whose sp.seed holds
// the default seed. OpenAI names fields at the top level; Ollama puts the sampling settings in
// "options" and calls max_tokens "num_predict".
static int parse_fields(srv_request *r, int ep, json_t *o, const char *name, char *msg,
                        size_t msgn) {
    json_t *model = json_object_get(o, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) return bad(msg, msgn, "model: must be a string");
        const char *ms = json_string_value(model);
        size_t nl = strlen(name);
        int ok = !strcmp(ms, name) || (!strncmp(ms, name, nl) && !strcmp(ms + nl, ":latest"));
        if (!ok) return bad(msg, msgn, "model: '%s' is not served here (try '%s')", ms, name);
    }
    json_t *st = json_object_get(o, "stream");
    r->stream = is_ollama(ep); // Ollama streams by default, OpenAI does not
    if (st && !json_is_null(st)) {
        if (!json_is_boolean(st)) return bad(msg, msgn, "stream: must be true or false");
        r->stream = json_is_true(st);
    }
    double temp, top_p;
    long long top_k, seed = -1, max_tokens;
    json_t *opt = o;
    const char *max_key = "max_tokens";
    if (is_ollama(ep)) { // Ollama's defaults
        temp = 0.8, top_p = 0.9, top_k = 40, max_tokens = -1;
        max_key = "num_predict";
        opt = json_object_get(o, "options");
        if (opt && !json_is_null(opt) && !json_is_object(opt))
            return bad(msg, msgn, "options: must be an object");
        if (!json_is_object(opt)) opt = NULL;
    } else { // OpenAI's: completions default to 16 tokens, chat to the end of the context
        temp = 1, top_p = 1, top_k = 0, max_tokens = ep == SRV_EP_CHAT ? -1 : 16;
        json_t *n = json_object_get(o, "n");
        if (n && !json_is_null(n) && !(json_is_integer(n) && json_integer_value(n) == 1))
            return bad(msg, msgn, "n: only 1 is supported");
    }
    if (opt) {
        int rc;
        if ((rc = get_num(opt, "temperature", 0, 100, &temp, msg, msgn)) ||
            (rc = get_num(opt, "top_p", 0, 1, &top_p, msg, msgn)) ||
            (rc = get_int(opt, "top_k", 0, 1000000000, &top_k, msg, msgn)) ||
            (rc = get_int(opt, "seed", 0, INT64_MAX, &seed, msg, msgn)) ||
            (rc = get_stop(r, opt, msg, msgn)))
            return rc;
        json_t *mt = json_object_get(opt, max_key);
        if (!mt && !is_ollama(ep)) mt = json_object_get(opt, "max_completion_tokens");
        if (mt && !json_is_null(mt)) {
            if (!json_is_integer(mt)) return bad(msg, msgn, "%s: must be an integer", max_key);
            max_tokens = json_integer_value(mt);
            // Ollama: a negative num_predict means "until the context is full"
            if (max_tokens == 0 || (max_tokens < 0 && !is_ollama(ep)))
                return bad(msg, msgn, "%s: must be >= 1", max_key);
        }
        if (top_p == 0) return bad(msg, msgn, "top_p: must be in (0, 1]");
    }
    r->max_tokens = max_tokens < 0 || max_tokens > 1000000000 ? 1000000000 : (int)max_tokens;
    // without a seed, keep the per-request seed the caller preset in r->sp.seed
    uint64_t useed = seed >= 0 ? (uint64_t)seed : r->sp.seed;
    r->sp = (sample_params){(float)temp, (int)top_k, (float)top_p, useed};
    if (is_chat(ep)) r->stop[r->n_stop++] = xstrdup(SRV_CHAT_STOP);
    return ERR_OK;
}

int srv_route(const char *url) {
    static const struct {
        const char *path;
        int ep;
    } routes[] = {
        {"/", SRV_EP_ROOT},
        {"/health", SRV_EP_HEALTH},
        {"/v1/models", SRV_EP_MODELS},
        {"/v1/completions", SRV_EP_COMPLETIONS},
        {"/v1/chat/completions", SRV_EP_CHAT},
        {"/api/generate", SRV_EP_GENERATE},
        {"/api/chat", SRV_EP_OCHAT},
        {"/api/tags", SRV_EP_TAGS},
        {"/metrics", SRV_EP_METRICS},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(url, routes[i].path)) return routes[i].ep;
    return SRV_EP_OTHER;
}

int srv_is_generation(int ep) {
    return ep == SRV_EP_COMPLETIONS || ep == SRV_EP_CHAT || ep == SRV_EP_GENERATE ||
           ep == SRV_EP_OCHAT;
}

// parse_request is srv_parse_request for route ep (a generation route).
static int parse_request(srv_request *r, int ep, const char *name, uint64_t seed, const char *body,
                         size_t n, char *msg, size_t msgn) {
    *r = (srv_request){.sp.seed = seed};
    json_error_t je;
    json_t *o = json_loadb(body, n, 0, &je);
    if (!o)
        return bad(msg, msgn, "malformed JSON: %s (line %d, column %d)", je.text, je.line,
                   je.column);
    int rc = ERR_OK;
    buf text = {0};
    if (!json_is_object(o)) {
        rc = bad(msg, msgn, "the body must be a JSON object");
        goto out;
    }
    if ((rc = parse_fields(r, ep, o, name, msg, msgn))) goto out;
    if (is_chat(ep)) {
        if ((rc = chat_prompt(o, &text, msg, msgn))) goto out;
    } else {
        json_t *p = json_object_get(o, "prompt");
        if (json_is_array(p) && json_array_size(p) == 1) p = json_array_get(p, 0);
        if (p && !json_is_null(p) && !json_is_string(p)) {
            rc = bad(msg, msgn, "prompt: must be a string");
            goto out;
        }
        if (!p && !is_ollama(ep)) {
            rc = bad(msg, msgn, "prompt: required");
            goto out;
        }
        if (json_is_string(p)) buf_put(&text, json_string_value(p), json_string_length(p));
    }
out:
    json_decref(o);
    if (rc) {
        free(text.p);
        srv_request_free(r);
        return rc;
    }
    r->text = text.p ? text.p : xstrdup("");
    r->text_len = text.n;
    return ERR_OK;
}

int srv_parse_request(srv_request *r, const char *path, const char *name, uint64_t seed,
                      const char *body, size_t n, char *msg, size_t msgn) {
    int ep = srv_route(path);
    if (!srv_is_generation(ep)) {
        *r = (srv_request){0};
        return bad(msg, msgn, "%s: not a generation route", path);
    }
    return parse_request(r, ep, name, seed, body, n, msg, msgn);
}

void srv_request_free(srv_request *r) {
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->text);
    *r = (srv_request){0};
}

int srv_api_parse(srv_req *r, const srv_server *s, srv_model *m, const char *body, size_t n,
                  char *msg, size_t msgn) {
    srv_request q;
    int rc = parse_request(&q, r->ep, s->name, r->sp.seed, body, n, msg, msgn);
    if (rc) return rc;
    r->stream = q.stream;
    r->max_tokens = q.max_tokens;
    r->sp = q.sp;
    memcpy(r->stop, q.stop, sizeof q.stop); // r owns the stop strings now (srv_api_req_free)
    r->n_stop = q.n_stop;
    size_t nt = 0;
    if (tok_encode(m->tok, q.text, q.text_len, &r->prompt, &nt)) {
        rc = bad(msg, msgn, "%s: %s", is_chat(r->ep) ? "messages" : "prompt", err_msg());
    } else if (nt == 0) { // like `spartan sample`: start from end-of-text, or the first token
        r->prompt = xrealloc(r->prompt, sizeof(int32_t));
        r->prompt[0] = m->eot >= 0 ? m->eot : 0;
        nt = 1;
    }
    if (!rc && nt > (size_t)m->T)
        rc = bad(msg, msgn, "%s: %zu tokens is longer than the context (%d tokens)",
                 is_chat(r->ep) ? "messages" : "prompt", nt, m->T);
    if (!rc) r->n_prompt = (int)nt;
    free(q.text);
    return rc;
}

void srv_api_req_free(srv_req *r) {
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    r->prompt = NULL;
    r->n_stop = 0;
}

// dump serialises o (stolen) compactly with the SSE or NDJSON framing of ep.
static char *dump(json_t *o, int ep, int framed) {
    char *j = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!j) err_oom("json_dumps", 0);
    if (!framed) return j;
    size_t n = strlen(j);
    char *f = xmalloc(n + 16);
    if (is_ollama(ep))
        snprintf(f, n + 16, "%s\n", j);
    else
        snprintf(f, n + 16, "data: %s\n\n", j);
    free(j);
    return f;
}

// iso_time formats the current time as RFC 3339 with nanoseconds (Ollama's created_at).
static void iso_time(char *out, size_t n) {
    struct timespec ts = sys_wall_time();
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char d[32];
    strftime(d, sizeof d, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, n, "%s.%09ldZ", d, ts.tv_nsec);
}

static json_t *usage(const srv_req *r) {
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", r->n_prompt, "completion_tokens", r->n_gen,
                     "total_tokens", r->n_prompt + r->n_gen);
}

// ollama_obj builds an Ollama response object; done adds the final counters (nanoseconds).
static json_t *ollama_obj(const srv_req *r, const char *name, const char *text, size_t n,
                          int done) {
    char t[64];
    iso_time(t, sizeof t);
    json_t *o = json_pack("{s:s,s:s}", "model", name, "created_at", t);
    json_t *s = json_stringn(text, n);
    if (r->ep == SRV_EP_OCHAT)
        json_object_set_new(o, "message",
                            json_pack("{s:s,s:o}", "role", "assistant", "content", s));
    else
        json_object_set_new(o, "response", s);
    json_object_set_new(o, "done", json_boolean(done));
    if (done) {
        double now = r->t_last > 0 ? r->t_last : r->t_arrive;
        double first = r->t_first > 0 ? r->t_first : now;
        json_object_set_new(o, "done_reason", json_string(r->finish ? r->finish : "stop"));
        json_object_set_new(o, "total_duration",
                            json_integer((json_int_t)((now - r->t_arrive) * 1e6)));
        json_object_set_new(o, "load_duration", json_integer(0));
        json_object_set_new(o, "prompt_eval_count", json_integer(r->n_prompt));
        json_object_set_new(o, "prompt_eval_duration",
                            json_integer((json_int_t)((first - r->t_arrive) * 1e6)));
        json_object_set_new(o, "eval_count", json_integer(r->n_gen));
        json_object_set_new(o, "eval_duration", json_integer((json_int_t)((now - first) * 1e6)));
    }
    return o;
}

// openai_obj builds a completion or chat object; chunk selects the streaming form.
static json_t *openai_obj(const srv_req *r, const char *name, json_t *choice, int chunk) {
    const char *object = r->ep == SRV_EP_CHAT
                             ? (chunk ? "chat.completion.chunk" : "chat.completion")
                             : "text_completion";
    return json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", r->id, "object", object, "created",
                     (json_int_t)r->created, "model", name, "choices", choice);
}

static json_t *finish_json(const char *finish) {
    return finish ? json_string(finish) : json_null();
}

char *srv_api_stream_start(const srv_req *r, const char *name) {
    if (r->ep != SRV_EP_CHAT) return NULL;
    json_t *c = json_pack("{s:i,s:{s:s,s:s},s:n}", "index", 0, "delta", "role", "assistant",
                          "content", "", "finish_reason");
    return dump(openai_obj(r, name, c, 1), r->ep, 1);
}

char *srv_api_chunk(const srv_req *r, const char *name, const char *text, size_t n,
                    const char *finish) {
    if (is_ollama(r->ep)) return dump(ollama_obj(r, name, text, n, finish != NULL), r->ep, 1);
    json_t *c;
    if (r->ep == SRV_EP_CHAT) {
        json_t *delta = json_object();
        if (n || !finish) json_object_set_new(delta, "content", json_stringn(text, n));
        c = json_pack("{s:i,s:o,s:o}", "index", 0, "delta", delta, "finish_reason",
                      finish_json(finish));
    } else {
        c = json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "text", json_stringn(text, n), "logprobs",
                      "finish_reason", finish_json(finish));
    }
    json_t *o = openai_obj(r, name, c, 1);
    if (finish) json_object_set_new(o, "usage", usage(r));
    char *ev = dump(o, r->ep, 1);
    if (!finish) return ev;
    size_t n1 = strlen(ev); // the last event is followed by the SSE terminator
    ev = xrealloc(ev, n1 + 16);
    memcpy(ev + n1, "data: [DONE]\n\n", 15);
    return ev;
}

char *srv_api_done(const srv_req *r, const char *name, const char *text, size_t n) {
    if (is_ollama(r->ep)) return dump(ollama_obj(r, name, text, n, 1), r->ep, 0);
    json_t *c;
    if (r->ep == SRV_EP_CHAT)
        c = json_pack("{s:i,s:{s:s,s:o},s:o}", "index", 0, "message", "role", "assistant",
                      "content", json_stringn(text, n), "finish_reason", finish_json(r->finish));
    else
        c = json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "text", json_stringn(text, n), "logprobs",
                      "finish_reason", finish_json(r->finish));
    json_t *o = openai_obj(r, name, c, 0);
    json_object_set_new(o, "usage", usage(r));
    return dump(o, r->ep, 0);
}

char *srv_api_error(int ep, const char *msg, const char *type) {
    size_t n;
    char *clean = srv_utf8_clean(msg, strlen(msg), &n);
    json_t *m = json_stringn(clean, n);
    free(clean);
    if (is_ollama(ep) || ep == SRV_EP_TAGS) return dump(json_pack("{s:o}", "error", m), ep, 0);
    return dump(json_pack("{s:{s:o,s:s}}", "error", "message", m, "type", type), ep, 0);
}

char *srv_api_models(const srv_server *s, const srv_model *m) {
    json_t *o = json_pack("{s:s,s:[{s:s,s:s,s:I,s:s,s:I,s:I,s:s}]}", "object", "list", "data", "id",
                          s->name, "object", "model", "created", (json_int_t)m->loaded, "owned_by",
                          "spartan", "step", (json_int_t)m->step, "context_length",
                          (json_int_t)m->T, "checkpoint", m->path);
    return dump(o, SRV_EP_MODELS, 0);
}

char *srv_api_tags(const srv_server *s, const srv_model *m) {
    char t[64], name[300];
    time_t lt = (time_t)m->loaded;
    struct tm tm;
    gmtime_r(&lt, &tm);
    strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(name, sizeof name, "%s:latest", s->name);
    const cfg_model *mc = gpt_config(m->gpt);
    char params[32];
    snprintf(params, sizeof params, "%.1fM", (double)gpt_n_params(m->gpt) / 1e6);
    json_t *o = json_pack("{s:[{s:s,s:s,s:s,s:I,s:s,s:{s:s,s:s,s:s,s:s,s:I,s:I}}]}", "models",
                          "name", name, "model", name, "modified_at", t, "size",
                          (json_int_t)m->bytes, "digest", "", "details", "format", "hdf5", "family",
                          "gpt2", "parameter_size", params, "quantization_level", "F32", "step",
                          (json_int_t)m->step, "n_layer", (json_int_t)mc->n_layer);
    return dump(o, SRV_EP_TAGS, 0);
}

// utf8_seq returns the length of the valid UTF-8 sequence at s (n bytes left), 0 if s starts an
// invalid one, or -1 if the bytes so far are a valid but incomplete sequence.
static int utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    int len;
    unsigned lo = 0x80, hi = 0xBF; // allowed range of the second byte
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0; // no overlong forms
        if (c == 0xED) hi = 0x9F; // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return -1;
        unsigned b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
    }
    return len;
}

size_t srv_utf8_valid_prefix(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k < 0) return i; // wait for the rest of this character
        i += k ? (size_t)k : 1;
    }
    return n;
}

char *srv_utf8_clean(const char *s, size_t n, size_t *out_n) {
    char *o = xmalloc(3 * n + 1);
    size_t j = 0;
    for (size_t i = 0; i < n;) {
        int k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k > 0) {
            memcpy(o + j, s + i, (size_t)k);
            j += (size_t)k, i += (size_t)k;
        } else { // U+FFFD for each invalid or truncated byte
            memcpy(o + j, "\xEF\xBF\xBD", 3);
            j += 3, i++;
        }
    }
    o[j] = 0;
    *out_n = j;
    return o;
}
