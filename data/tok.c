// data/tok.c: char-level and GPT-2 byte-level BPE tokenizers.
// Invariant: a tok_tokenizer never changes after creation, so any number of threads may encode
// and decode with one instance at once; all per-call state (regex match data, the pre-token
// cache, BPE scratch) lives in a stack-held encode context. GPT-2 encoding is byte exact:
// decode(encode(x)) == x for any bytes x, including invalid UTF-8.
#include "data/tok.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "train/base/err.h"
#include "train/base/sys.h"

#define EOT_TEXT "<|endoftext|>"
#define EOT_LEN  (sizeof EOT_TEXT - 1)

// GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, then whitespace runs.
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
    "|\\s+(?!\\S)|\\s+";

// One merge rule: the pair (a, b) of token ids becomes token id with priority rank (lower first).
typedef struct {
    uint64_t key; // (a << 32) | b; MERGE_EMPTY marks a free slot
    int32_t rank;
    int32_t id;
} merge_slot;

#define MERGE_EMPTY UINT64_MAX

struct tok_tokenizer {
    int kind;
    int vocab_size;
    int eot;
    // char: byte -> id (-1 if absent) and id -> byte.
    int16_t char_id[256];
    uint8_t char_byte[256];
    // gpt2: token id -> raw bytes pool[off[id] .. off[id+1]).
    char *pool;
    uint32_t *off;
    int32_t byte_id[256]; // id of each single raw byte
    merge_slot *merges;   // open addressing, merge_mask+1 slots (a power of two)
    size_t merge_mask;
    pcre2_code *re;
};

static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// FNV-1a over bytes; used for the vocabulary table at load time and the pre-token cache.
static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 0x100000001b3ull;
    return h;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

// ---------------------------------------------------------------------------------------------
// Char-level tokenizer

int tok_char_create(tok_tokenizer **out, const char *text, size_t n) {
    if (n == 0) return err_set(ERR_INVAL, "tok: char tokenizer needs a non-empty text");
    uint8_t seen[256] = {0};
    for (size_t i = 0; i < n; i++)
        seen[(uint8_t)text[i]] = 1;
    tok_tokenizer *t = xcalloc(1, sizeof *t);
    t->kind = TOK_CHAR;
    t->eot = -1;
    for (int b = 0; b < 256; b++) {
        t->char_id[b] = -1;
        if (seen[b]) {
            t->char_id[b] = (int16_t)t->vocab_size;
            t->char_byte[t->vocab_size++] = (uint8_t)b;
        }
    }
    *out = t;
    return ERR_OK;
}

static int char_from_hex(tok_tokenizer **out, const char *hex) {
    size_t n = strlen(hex);
    if (n == 0 || n % 2 || n > 512)
        return err_set(ERR_FORMAT, "tok: bad char spec: need 2..512 hex digits, got %zu", n);
    char bytes[256];
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1 || !strchr("0123456789abcdefABCDEF", hex[2 * i]) ||
            !strchr("0123456789abcdefABCDEF", hex[2 * i + 1]))
            return err_set(ERR_FORMAT, "tok: bad char spec: '%.2s' at %zu is not hex", hex + 2 * i,
                           2 * i);
        bytes[i] = (char)v;
        if (i > 0 && (uint8_t)bytes[i] <= (uint8_t)bytes[i - 1])
            return err_set(ERR_FORMAT, "tok: bad char spec: bytes must be strictly increasing");
    }
    return tok_char_create(out, bytes, n / 2);
}

// ---------------------------------------------------------------------------------------------
// GPT-2 loading

// GPT-2 stores each raw byte as a printable code point: the bytes '!'..'~', 0xA1..0xAC and
// 0xAE..0xFF stand for themselves; the other 68 bytes, in increasing order, become 256..323.
static int byte_is_printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

// unicode_to_byte[cp] for cp < 324: the raw byte, or -1.
static void build_unicode_to_byte(int16_t u2b[324]) {
    for (int i = 0; i < 324; i++)
        u2b[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        if (byte_is_printable(b))
            u2b[b] = (int16_t)b;
        else
            u2b[256 + extra++] = (int16_t)b;
    }
}

// decode_mapped turns a GPT-2 mapped UTF-8 string s(n) into raw bytes in dst (at most n bytes,
// since every code point takes at least one byte). Returns the raw length or -1 if s is not
// valid UTF-8 or uses a code point outside the byte map.
static long decode_mapped(const int16_t u2b[324], const char *s, size_t n, char *dst) {
    size_t i = 0;
    long k = 0;
    while (i < n) {
        uint8_t c = (uint8_t)s[i];
        uint32_t cp;
        if (c < 0x80) {
            cp = c;
            i += 1;
        } else if ((c & 0xE0) == 0xC0 && i + 1 < n && ((uint8_t)s[i + 1] & 0xC0) == 0x80) {
            cp = ((uint32_t)(c & 0x1F) << 6) | ((uint8_t)s[i + 1] & 0x3F);
            i += 2;
        } else {
            return -1; // the map only uses code points below 324 (at most two UTF-8 bytes)
        }
        if (cp >= 324 || u2b[cp] < 0) return -1;
        dst[k++] = (char)u2b[cp];
    }
    return k;
}

static int read_whole_file(const char *path, char **data, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(ERR_IO, "tok: cannot open '%s'", path);
    size_t cap = 1 << 16, len = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        size_t r = fread(buf + len, 1, cap - len - 1, f);
        len += r;
        if (r == 0) break;
        if (cap - len < 2) buf = xrealloc(buf, cap *= 2);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return err_set(ERR_IO, "tok: read error on '%s'", path);
    }
    buf[len] = 0;
    *data = buf;
    *n = len;
    return ERR_OK;
}

// Vocabulary lookup used while loading: raw bytes -> id, open addressing over ids.
typedef struct {
    int32_t *slot; // -1 = empty
    size_t mask;
    const tok_tokenizer *t;
} vocab_table;

static int32_t vocab_find(const vocab_table *v, const char *p, size_t n) {
    for (size_t i = hash_bytes(p, n) & v->mask;; i = (i + 1) & v->mask) {
        int32_t id = v->slot[i];
        if (id < 0) return -1;
        uint32_t a = v->t->off[id], b = v->t->off[id + 1];
        if (b - a == n && memcmp(v->t->pool + a, p, n) == 0) return id;
    }
}

static void vocab_insert(vocab_table *v, int32_t id) {
    const char *p = v->t->pool + v->t->off[id];
    size_t n = v->t->off[id + 1] - v->t->off[id];
    size_t i = hash_bytes(p, n) & v->mask;
    while (v->slot[i] >= 0)
        i = (i + 1) & v->mask;
    v->slot[i] = id;
}

static const merge_slot *merge_find(const tok_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = mix64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const merge_slot *s = &t->merges[i];
        if (s->key == key) return s;
        if (s->key == MERGE_EMPTY) return NULL;
    }
}

// load_encoder fills t->pool/off/vocab_size from encoder.json ({"token": id, ...}).
static int load_encoder(tok_tokenizer *t, const char *path, const int16_t u2b[324]) {
    char *text;
    size_t n;
    int rc = read_whole_file(path, &text, &n);
    if (rc) return rc;
    json_error_t je;
    json_t *root = json_loadb(text, n, 0, &je);
    free(text);
    if (!root)
        return err_set(ERR_FORMAT, "tok: '%s' is not valid JSON (line %d column %d: %s)", path,
                       je.line, je.column, je.text);
    if (!json_is_object(root) || json_object_size(root) == 0 || json_object_size(root) > 1000000) {
        json_decref(root);
        return err_set(ERR_FORMAT, "tok: '%s' must be a non-empty JSON object of token -> id",
                       path);
    }
    size_t V = json_object_size(root);
    // First pass: sizes per id (duplicates and holes are errors).
    uint32_t *len = xmalloc(V * sizeof *len);
    for (size_t i = 0; i < V; i++)
        len[i] = UINT32_MAX;
    size_t pool_cap = 0;
    const char *key;
    json_t *val;
    rc = ERR_OK;
    json_object_foreach(root, key, val) {
        size_t kn = strlen(key);
        pool_cap += kn;
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            (size_t)json_integer_value(val) >= V) {
            rc = err_set(ERR_FORMAT,
                         "tok: '%s': id of token \"%.40s\" is not an integer in [0, %zu)", path,
                         key, V);
            break;
        }
        size_t id = (size_t)json_integer_value(val);
        if (len[id] != UINT32_MAX) {
            rc = err_set(ERR_FORMAT, "tok: '%s': id %zu is used twice", path, id);
            break;
        }
        len[id] = (uint32_t)kn; // upper bound until decoded
    }
    if (rc == ERR_OK) {
        t->vocab_size = (int)V;
        t->off = xmalloc((V + 1) * sizeof *t->off);
        t->pool = xmalloc(pool_cap + 1);
        // Raw lengths are not known until decoding, so decode each key into its id's slot of an
        // upper-bound layout, then compact.
        uint32_t *ub = xmalloc((V + 1) * sizeof *ub);
        ub[0] = 0;
        for (size_t i = 0; i < V; i++)
            ub[i + 1] = ub[i] + len[i];
        json_object_foreach(root, key, val) {
            size_t id = (size_t)json_integer_value(val);
            long k = decode_mapped(u2b, key, strlen(key), t->pool + ub[id]);
            if (k < 0) {
                rc = err_set(ERR_FORMAT,
                             "tok: '%s': token \"%.40s\" (id %zu) is not GPT-2 "
                             "byte-mapped text",
                             path, key, id);
                break;
            }
            len[id] = (uint32_t)k;
        }
        if (rc == ERR_OK) {
            uint32_t w = 0;
            for (size_t i = 0; i < V; i++) {
                memmove(t->pool + w, t->pool + ub[i], len[i]);
                t->off[i] = w;
                w += len[i];
            }
            t->off[V] = w;
        }
        free(ub);
    }
    free(len);
    json_decref(root);
    return rc;
}

// load_merges fills t->merges from vocab.bpe: an optional "#version" line, then one "A B" pair
// per line, highest priority first.
static int load_merges(tok_tokenizer *t, const char *path, const int16_t u2b[324],
                       const vocab_table *vt) {
    char *text;
    size_t n;
    int rc = read_whole_file(path, &text, &n);
    if (rc) return rc;
    size_t lines = 1;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n';
    t->merge_mask = pow2_at_least(2 * lines) - 1;
    t->merges = xmalloc((t->merge_mask + 1) * sizeof *t->merges);
    for (size_t i = 0; i <= t->merge_mask; i++)
        t->merges[i].key = MERGE_EMPTY;
    char *buf = xmalloc(n + 1);
    int32_t rank = 0;
    size_t lineno = 0;
    for (char *p = text, *end = text + n; p < end && rc == ERR_OK;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        lineno++;
        size_t ln = (size_t)(le - p);
        if (ln && p[ln - 1] == '\r') ln--;
        if (lineno == 1 && ln >= 8 && memcmp(p, "#version", 8) == 0) {
            p = nl ? nl + 1 : end;
            continue;
        }
        if (ln == 0) {
            p = nl ? nl + 1 : end;
            continue;
        }
        char *sp = memchr(p, ' ', ln);
        long ka = sp ? decode_mapped(u2b, p, (size_t)(sp - p), buf) : -1;
        long kb = ka > 0 ? decode_mapped(u2b, sp + 1, (size_t)(p + ln - sp - 1), buf + ka) : -1;
        if (ka <= 0 || kb <= 0) {
            rc = err_set(ERR_FORMAT,
                         "tok: '%s' line %zu: expected two byte-mapped tokens "
                         "separated by one space",
                         path, lineno);
            break;
        }
        int32_t a = vocab_find(vt, buf, (size_t)ka);
        int32_t b = vocab_find(vt, buf + ka, (size_t)kb);
        int32_t ab = vocab_find(vt, buf, (size_t)(ka + kb));
        if (a < 0 || b < 0 || ab < 0) {
            rc = err_set(ERR_FORMAT,
                         "tok: '%s' line %zu: merge \"%.*s\" uses a token missing "
                         "from encoder.json",
                         path, lineno, (int)ln, p);
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        size_t i = mix64(key) & t->merge_mask;
        while (t->merges[i].key != MERGE_EMPTY && t->merges[i].key != key)
            i = (i + 1) & t->merge_mask;
        if (t->merges[i].key == MERGE_EMPTY) // a repeated pair keeps its first (best) rank
            t->merges[i] = (merge_slot){key, rank, ab};
        rank++;
        p = nl ? nl + 1 : end;
    }
    if (rc == ERR_OK && rank == 0) rc = err_set(ERR_FORMAT, "tok: '%s' holds no merge rules", path);
    free(buf);
    free(text);
    return rc;
}

int tok_gpt2_create(tok_tokenizer **out, const char *encoder_json, const char *vocab_bpe) {
    int16_t u2b[324];
    build_unicode_to_byte(u2b);
    tok_tokenizer *t = xcalloc(1, sizeof *t);
    t->kind = TOK_GPT2;
    int rc = load_encoder(t, encoder_json, u2b);
    vocab_table vt = {0};
    if (rc == ERR_OK) {
        vt.t = t;
        vt.mask = pow2_at_least(2 * (size_t)t->vocab_size) - 1;
        vt.slot = xmalloc((vt.mask + 1) * sizeof *vt.slot);
        for (size_t i = 0; i <= vt.mask; i++)
            vt.slot[i] = -1;
        for (int32_t id = 0; id < t->vocab_size; id++)
            vocab_insert(&vt, id);
        for (int b = 0; b < 256 && rc == ERR_OK; b++) {
            char c = (char)b;
            t->byte_id[b] = vocab_find(&vt, &c, 1);
            if (t->byte_id[b] < 0)
                rc = err_set(ERR_FORMAT, "tok: '%s' has no token for the single byte 0x%02x",
                             encoder_json, b);
        }
        t->eot = vocab_find(&vt, EOT_TEXT, EOT_LEN);
    }
    if (rc == ERR_OK) rc = load_merges(t, vocab_bpe, u2b, &vt);
    free(vt.slot);
    if (rc == ERR_OK) {
        int ec;
        PCRE2_SIZE eo;
        t->re = pcre2_compile((PCRE2_SPTR)GPT2_PATTERN, PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, NULL);
        if (!t->re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof msg);
            rc = err_set(ERR_INVAL, "tok: PCRE2 rejected the GPT-2 pattern at %zu: %s", (size_t)eo,
                         (const char *)msg);
        } else {
            // JIT is an optimization only: pcre2_match falls back to the interpreter without it.
            (void)pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);
        }
    }
    if (rc != ERR_OK) {
        tok_destroy(t);
        return rc;
    }
    *out = t;
    return ERR_OK;
}

static int readable(const char *path) { return access(path, R_OK) == 0; }

// try_dir loads from dir if both files are readable there; returns 1 if it tried.
static int try_dir(const char *dir, tok_tokenizer **out, int *rc, char *tried, size_t cap) {
    char enc[PATH_MAX], bpe[PATH_MAX];
    snprintf(enc, sizeof enc, "%s/gpt2-encoder.json", dir);
    snprintf(bpe, sizeof bpe, "%s/gpt2-vocab.bpe", dir);
    size_t used = strlen(tried);
    snprintf(tried + used, cap - used, "%s%s", used ? ", " : "", dir);
    if (!readable(enc) || !readable(bpe)) return 0;
    *rc = tok_gpt2_create(out, enc, bpe);
    return 1;
}

int tok_gpt2_default(tok_tokenizer **out) {
    char tried[3 * PATH_MAX + 16] = "";
    int rc = ERR_OK;
    const char *env = getenv("SPARTAN_DATA_DIR");
    if (env && *env && try_dir(env, out, &rc, tried, sizeof tried)) return rc;

    char exe[PATH_MAX] = "";
    (void)sys_exe_path(exe, sizeof exe); // "" when unknown: skip that place
    char *slash = strrchr(exe, '/');
    if (slash) {
        // <prefix>/bin/spartan -> <prefix>/bin/../data
        snprintf(slash, sizeof exe - (size_t)(slash - exe), "/../data");
        if (try_dir(exe, out, &rc, tried, sizeof tried)) return rc;
    }
    if (try_dir("./data", out, &rc, tried, sizeof tried)) return rc;
    return err_set(ERR_IO,
                   "tok: gpt2-encoder.json and gpt2-vocab.bpe not found (set "
                   "SPARTAN_DATA_DIR); tried: %s",
                   tried);
}

// ---------------------------------------------------------------------------------------------
// Spec, accessors, destroy

char *tok_spec(const tok_tokenizer *t) {
    if (t->kind == TOK_GPT2) return xstrdup("gpt2");
    char *s = xmalloc(5 + 2 * (size_t)t->vocab_size + 1);
    memcpy(s, "char:", 5);
    for (int i = 0; i < t->vocab_size; i++)
        snprintf(s + 5 + 2 * i, 3, "%02x", t->char_byte[i]);
    s[5 + 2 * t->vocab_size] = 0;
    return s;
}

int tok_from_spec(tok_tokenizer **out, const char *spec) {
    if (strcmp(spec, "gpt2") == 0) return tok_gpt2_default(out);
    if (strncmp(spec, "char:", 5) == 0) return char_from_hex(out, spec + 5);
    return err_set(ERR_FORMAT, "tok: unknown tokenizer spec \"%.40s\" (want gpt2 or char:<hex>)",
                   spec);
}

int tok_kind(const tok_tokenizer *t) { return t->kind; }
int tok_vocab_size(const tok_tokenizer *t) { return t->vocab_size; }
int tok_eot(const tok_tokenizer *t) { return t->eot; }

void tok_destroy(tok_tokenizer *t) {
    if (!t) return;
    free(t->pool);
    free(t->off);
    free(t->merges);
    if (t->re) pcre2_code_free(t->re);
    free(t);
}

// ---------------------------------------------------------------------------------------------
// Encoding

typedef struct {
    int32_t *v;
    size_t n, cap;
} ivec;

static void ivec_push(ivec *a, int32_t x) {
    if (a->n == a->cap) a->v = xrealloc(a->v, (a->cap = a->cap ? 2 * a->cap : 1024) * sizeof *a->v);
    a->v[a->n++] = x;
}

static void ivec_append(ivec *a, const int32_t *x, size_t n) {
    if (a->n + n > a->cap) {
        while (a->n + n > a->cap)
            a->cap = a->cap ? 2 * a->cap : 1024;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
    }
    memcpy(a->v + a->n, x, n * sizeof *x);
    a->n += n;
}

// A pair candidate in the BPE heap, ordered by (rank, pos): lowest rank first, leftmost first.
typedef struct {
    int32_t rank, pos, a, b, id;
} bpe_cand;

// Pre-token cache entry: the pre-token bytes (pointing into the caller's text) and its ids.
typedef struct {
    uint64_t h;
    const char *p; // NULL = empty slot
    uint32_t len, at, cnt;
} cache_slot;

typedef struct {
    const tok_tokenizer *t;
    // BPE scratch, grown on demand: node ids and links (length m), the candidate heap, and the
    // candidates created during one round (pushed only when the round ends).
    int32_t *id, *next, *prev;
    size_t node_cap;
    bpe_cand *heap, *pend;
    size_t heap_n, heap_cap, pend_n, pend_cap;
    // Cache of pre-token -> ids; ids live in `cached`.
    cache_slot *cache;
    size_t cache_mask, cache_n;
    ivec cached;
} enc_ctx;

static int cand_less(const bpe_cand *x, const bpe_cand *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(enc_ctx *c, bpe_cand e) {
    if (c->heap_n == c->heap_cap)
        c->heap =
            xrealloc(c->heap, (c->heap_cap = c->heap_cap ? 2 * c->heap_cap : 64) * sizeof *c->heap);
    size_t i = c->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&e, &c->heap[p])) break;
        c->heap[i] = c->heap[p];
        i = p;
    }
    c->heap[i] = e;
}

static bpe_cand heap_pop(enc_ctx *c) {
    bpe_cand top = c->heap[0], last = c->heap[--c->heap_n];
    size_t i = 0, n = c->heap_n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        if (l + 1 < n && cand_less(&c->heap[l + 1], &c->heap[l])) l++;
        if (!cand_less(&c->heap[l], &last)) break;
        c->heap[i] = c->heap[l];
        i = l;
    }
    if (n) c->heap[i] = last;
    return top;
}

// add_cand records the pair starting at node pos if a merge rule exists for it.
static void add_cand(enc_ctx *c, int32_t pos, int pending) {
    int32_t nx = c->next[pos];
    if (nx < 0) return;
    const merge_slot *m = merge_find(c->t, c->id[pos], c->id[nx]);
    if (!m) return;
    bpe_cand e = {m->rank, pos, c->id[pos], c->id[nx], m->id};
    if (!pending) {
        heap_push(c, e);
        return;
    }
    if (c->pend_n == c->pend_cap)
        c->pend =
            xrealloc(c->pend, (c->pend_cap = c->pend_cap ? 2 * c->pend_cap : 64) * sizeof *c->pend);
    c->pend[c->pend_n++] = e;
}

static int cand_valid(const enc_ctx *c, const bpe_cand *e) {
    int32_t nx = c->next[e->pos];
    return c->id[e->pos] == e->a && nx >= 0 && c->id[nx] == e->b;
}

// bpe_word applies the merges to raw bytes w(m) and appends the resulting ids to out. Same result
// as GPT-2's reference loop: repeatedly take the lowest-ranked adjacent pair and merge all its
// non-overlapping occurrences left to right. The heap orders candidates by (rank, position);
// pairs created during a round wait in `pend` so they cannot jump into the current round.
static void bpe_word(enc_ctx *c, const char *w, size_t m, ivec *out) {
    if (m > c->node_cap) {
        c->node_cap = m > 2 * c->node_cap ? m : 2 * c->node_cap;
        c->id = xrealloc(c->id, c->node_cap * sizeof *c->id);
        c->next = xrealloc(c->next, c->node_cap * sizeof *c->next);
        c->prev = xrealloc(c->prev, c->node_cap * sizeof *c->prev);
    }
    for (size_t i = 0; i < m; i++) {
        c->id[i] = c->t->byte_id[(uint8_t)w[i]];
        c->next[i] = i + 1 < m ? (int32_t)(i + 1) : -1;
        c->prev[i] = (int32_t)i - 1;
    }
    c->heap_n = 0;
    for (size_t i = 0; i + 1 < m; i++)
        add_cand(c, (int32_t)i, 0);
    while (c->heap_n) {
        bpe_cand e = heap_pop(c);
        if (!cand_valid(c, &e)) continue;
        int32_t rank = e.rank;
        c->pend_n = 0;
        for (;;) {
            // Merge node e.pos with its successor; the successor leaves the list.
            int32_t nx = c->next[e.pos];
            c->id[e.pos] = e.id;
            c->id[nx] = -1;
            c->next[e.pos] = c->next[nx];
            if (c->next[nx] >= 0) c->prev[c->next[nx]] = e.pos;
            if (c->prev[e.pos] >= 0) add_cand(c, c->prev[e.pos], 1);
            add_cand(c, e.pos, 1);
            // Continue this round with the other occurrences of the same pair (same rank).
            int found = 0;
            while (c->heap_n && c->heap[0].rank == rank) {
                e = heap_pop(c);
                if (cand_valid(c, &e)) {
                    found = 1;
                    break;
                }
            }
            if (!found) break;
        }
        for (size_t i = 0; i < c->pend_n; i++)
            heap_push(c, c->pend[i]);
    }
    for (int32_t i = 0; i >= 0; i = c->next[i])
        ivec_push(out, c->id[i]);
}

// encode_piece appends the ids of one pre-token, through the cache.
static void encode_piece(enc_ctx *c, const char *p, size_t n, ivec *out) {
    if (n == 1) {
        ivec_push(out, c->t->byte_id[(uint8_t)*p]);
        return;
    }
    uint64_t h = hash_bytes(p, n);
    size_t i = h & c->cache_mask;
    for (; c->cache[i].p; i = (i + 1) & c->cache_mask) {
        cache_slot *s = &c->cache[i];
        if (s->h == h && s->len == n && memcmp(s->p, p, n) == 0) {
            ivec_append(out, c->cached.v + s->at, s->cnt);
            return;
        }
    }
    size_t at = c->cached.n;
    bpe_word(c, p, n, &c->cached);
    size_t cnt = c->cached.n - at;
    ivec_append(out, c->cached.v + at, cnt);
    if (n > UINT32_MAX || at > UINT32_MAX) return; // too large to cache; still correct
    c->cache[i] = (cache_slot){h, p, (uint32_t)n, (uint32_t)at, (uint32_t)cnt};
    if (++c->cache_n * 2 > c->cache_mask) {
        // Grow to keep the load under one half.
        size_t mask = 2 * c->cache_mask + 1;
        cache_slot *nt = xcalloc(mask + 1, sizeof *nt);
        for (size_t j = 0; j <= c->cache_mask; j++) {
            if (!c->cache[j].p) continue;
            size_t k = c->cache[j].h & mask;
            while (nt[k].p)
                k = (k + 1) & mask;
            nt[k] = c->cache[j];
        }
        free(c->cache);
        c->cache = nt;
        c->cache_mask = mask;
    }
}

// encode_text pre-tokenizes text(n) (no end-of-text markers inside) and encodes every piece.
// Bytes the regex cannot match (invalid UTF-8) form pieces of their own, so nothing is lost.
static int encode_text(enc_ctx *c, pcre2_match_data *md, pcre2_match_context *mc, const char *text,
                       size_t n, ivec *out) {
    size_t pos = 0;
    while (pos < n) {
        int r = pcre2_match(c->t->re, (PCRE2_SPTR)text, n, pos, 0, md, mc);
        if (r == PCRE2_ERROR_NOMATCH) {
            encode_piece(c, text + pos, n - pos, out);
            break;
        }
        if (r < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(r, msg, sizeof msg);
            return err_set(ERR_INVAL, "tok: pre-tokenizer failed at byte %zu: %s", pos,
                           (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t s = ov[0], e = ov[1];
        if (s > pos) encode_piece(c, text + pos, s - pos, out); // unmatched (invalid UTF-8) bytes
        if (e <= s) e = s + 1;                                  // never loop on an empty match
        if (e > n) e = n;
        encode_piece(c, text + s, e - s, out);
        pos = e;
    }
    return ERR_OK;
}

// find_eot returns the first "<|endoftext|>" in p(n) or NULL (memmem is not in POSIX 2008).
static const char *find_eot(const char *p, size_t n) {
    const char *end = p + n;
    while (n >= EOT_LEN && (p = memchr(p, '<', n - EOT_LEN + 1)) != NULL) {
        if (memcmp(p, EOT_TEXT, EOT_LEN) == 0) return p;
        p++;
        n = (size_t)(end - p);
    }
    return NULL;
}

static int gpt2_encode(const tok_tokenizer *t, const char *text, size_t n, ivec *out) {
    enc_ctx c = {.t = t, .cache_mask = 4095};
    c.cache = xcalloc(c.cache_mask + 1, sizeof *c.cache);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    pcre2_jit_stack *js = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
    if (!md || !mc || !js) err_oom("PCRE2 match data", 0);
    pcre2_jit_stack_assign(mc, NULL, js);
    int rc = ERR_OK;
    size_t pos = 0;
    while (pos < n && rc == ERR_OK) {
        // Split on the literal end-of-text marker, which maps to one special id.
        const char *hit = t->eot >= 0 ? find_eot(text + pos, n - pos) : NULL;
        size_t seg_end = hit ? (size_t)(hit - text) : n;
        if (seg_end > pos) rc = encode_text(&c, md, mc, text + pos, seg_end - pos, out);
        if (hit) ivec_push(out, t->eot);
        pos = hit ? seg_end + EOT_LEN : n;
    }
    pcre2_jit_stack_free(js);
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
    free(c.cache);
    free(c.cached.v);
    free(c.id);
    free(c.next);
    free(c.prev);
    free(c.heap);
    free(c.pend);
    return rc;
}

int tok_encode(const tok_tokenizer *t, const char *text, size_t n, int32_t **ids, size_t *n_ids) {
    ivec out = {0};
    if (t->kind == TOK_CHAR) {
        out.cap = n ? n : 1;
        out.v = xmalloc(out.cap * sizeof *out.v);
        for (size_t i = 0; i < n; i++) {
            int id = t->char_id[(uint8_t)text[i]];
            if (id < 0) {
                free(out.v);
                return err_set(ERR_INVAL,
                               "tok: byte 0x%02x at offset %zu is not in the char "
                               "vocabulary",
                               (uint8_t)text[i], i);
            }
            out.v[i] = id;
        }
        out.n = n;
    } else {
        out.cap = n / 3 + 64; // GPT-2 averages about 3-4 bytes per token on English
        out.v = xmalloc(out.cap * sizeof *out.v);
        int rc = gpt2_encode(t, text, n, &out);
        if (rc) {
            free(out.v);
            return rc;
        }
    }
    *ids = out.v;
    *n_ids = out.n;
    return ERR_OK;
}

int tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size)
            return err_set(ERR_INVAL, "tok: id %d at position %zu is outside [0, %d)", (int)ids[i],
                           i, t->vocab_size);
        total += t->kind == TOK_CHAR ? 1 : t->off[ids[i] + 1] - t->off[ids[i]];
    }
    char *s = xmalloc(total + 1);
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (t->kind == TOK_CHAR) {
            s[w++] = (char)t->char_byte[ids[i]];
        } else {
            uint32_t a = t->off[ids[i]], b = t->off[ids[i] + 1];
            memcpy(s + w, t->pool + a, b - a);
            w += b - a;
        }
    }
    s[w] = 0;
    *text = s;
    *len = w;
    return ERR_OK;
}
