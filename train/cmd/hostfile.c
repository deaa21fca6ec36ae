// train/cmd/hostfile.c: the hostfile parser of `spartan launch` (format in hostfile.h).
// Invariant: the input is never trusted: every loop is bounded by its length (at most
// HOSTFILE_MAX_BYTES), values are measured before they are copied, and messages show at most a
// short, escaped excerpt of a value, so no input can overrun a buffer, loop long or put control
// characters on the terminal. Any thread: the only state is the caller's.
#include "train/cmd/hostfile.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "train/base/err.h"
#include "train/base/sys.h"

// A run of the input: not NUL-terminated.
typedef struct span {
    const char *p;
    size_t n;
} span;

// The fields of a text line, in the order the unknown-field message lists them.
enum { F_HOST, F_USER, F_SSH_PORT, F_PORT, F_DIR, F_SLOTS, F_THREADS, F_COUNT };
static const char *const FIELD_NAMES[F_COUNT] = {"host", "user",  "ssh_port", "port",
                                                 "dir",  "slots", "threads"};
#define FIELD_LIST "host, user, ssh_port, port, dir, slots, threads"

// The parse in progress: the hosts so far and where the current entry is, for messages.
typedef struct parser {
    const char *name;
    char where[300]; // "hosts.txt:3" or "hosts.json: element 2"
    hostfile hf;
    int cap;
} parser;

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

static int is_alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// Host names and logins: what DNS and POSIX user names use, nothing a shell or ssh reads.
static int is_name_char(char c) { return is_alnum(c) || c == '.' || c == '-' || c == '_'; }

// Paths: no white space, quotes, '$', '`', ';', '&', '|', '<', '>', '*', '?', '#', '\\'.
static int is_dir_char(char c) { return is_name_char(c) || (c && strchr("/~+,@%=:", c)); }

// show copies at most 40 bytes of s into buf for a message, non-printable bytes as \xNN, and
// "..." when s is longer.
static const char *show(char *buf, size_t cap, span s) {
    size_t o = 0;
    for (size_t i = 0; i < s.n && i < 40 && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            buf[o++] = (char)c;
        else
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
    }
    if (s.n > 40 && o + 4 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o < cap ? o : cap - 1] = 0;
    return buf;
}

static span cstr(const char *s) { return (span){s, strlen(s)}; }

static int span_eq(span s, const char *lit) {
    return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

// copy_value checks v against the character set ok (and its length against cap - 1) and copies
// it into out[cap]. field names it in messages.
static int copy_value(const parser *ps, const char *field, span v, int (*ok)(char), char *out,
                      size_t cap, const char *set) {
    char b[200];
    if (v.n == 0) return err_set(ERR_INVAL, "%s: %s = '': empty value", ps->where, field);
    if (v.n >= cap)
        return err_set(ERR_INVAL, "%s: %s is %zu characters long (at most %zu)", ps->where, field,
                       v.n, cap - 1);
    if (v.p[0] == '-')
        return err_set(ERR_INVAL, "%s: %s = '%s': must not start with '-'", ps->where, field,
                       show(b, sizeof b, v));
    for (size_t i = 0; i < v.n; i++) {
        if (ok(v.p[i])) continue;
        char c[8];
        return err_set(ERR_INVAL, "%s: %s = '%s': '%s' is not allowed (%s)", ps->where, field,
                       show(b, sizeof b, v), show(c, sizeof c, (span){v.p + i, 1}), set);
    }
    memcpy(out, v.p, v.n);
    out[v.n] = 0;
    return ERR_OK;
}

// set_addr stores a host name, an IPv4 address or an IPv6 address (bare or in brackets; stored
// bare and canonical, so that two spellings of one address compare equal) into out[cap].
static int set_addr(const parser *ps, const char *field, span v, char *out, size_t cap) {
    char b[200];
    span in = v;
    if (v.n >= 2 && v.p[0] == '[' && v.p[v.n - 1] == ']') in = (span){v.p + 1, v.n - 2};
    if (memchr(in.p, ':', in.n) || in.p != v.p) {
        char tmp[64];
        struct in6_addr a;
        char canon[INET6_ADDRSTRLEN];
        int good = in.n < sizeof tmp;
        if (good) {
            memcpy(tmp, in.p, in.n);
            tmp[in.n] = 0;
            good =
                inet_pton(AF_INET6, tmp, &a) == 1 && inet_ntop(AF_INET6, &a, canon, sizeof canon);
        }
        if (!good)
            return err_set(ERR_INVAL,
                           "%s: %s = '%s': not a host name or IPv6 address (a port goes in port= "
                           "or ssh_port=)",
                           ps->where, field, show(b, sizeof b, v));
        ASSERT(strlen(canon) < cap); // INET6_ADDRSTRLEN fits every address buffer
        memcpy(out, canon, strlen(canon) + 1);
        return ERR_OK;
    }
    if (v.n && v.p[0] == '.')
        return err_set(ERR_INVAL, "%s: %s = '%s': must not start with '.'", ps->where, field,
                       show(b, sizeof b, v));
    return copy_value(ps, field, v, is_name_char, out, cap,
                      "letters, digits, '.', '-', '_'; IPv6 as [::1]");
}

// set_host stores "host" or "user@host" into h; seen[F_USER] says whether user= came first, which
// the user@ form would repeat (and the user@ form sets it, so a later user= is refused).
static int set_host(const parser *ps, hostfile_host *h, const char *field, span v, int *seen) {
    const char *at = memchr(v.p, '@', v.n);
    if (at) {
        span user = {v.p, (size_t)(at - v.p)};
        if (seen[F_USER])
            return err_set(ERR_INVAL, "%s: field 'user' given twice (user= and user@host)",
                           ps->where);
        int rc = copy_value(ps, "user", user, is_name_char, h->user, sizeof h->user,
                            "letters, digits, '.', '-', '_'");
        if (rc) return rc;
        seen[F_USER] = 1;
        v = (span){at + 1, v.n - user.n - 1};
    }
    return set_addr(ps, field, v, h->host, sizeof h->host);
}

// set_int parses v as a decimal number in lo..hi into *out (at most 6 digits, so no overflow);
// a range that ends at 65535 is a port, and the message says so.
static int set_int(const parser *ps, const char *field, span v, int lo, int hi, int *out) {
    char b[200];
    long x = 0;
    int good = v.n > 0 && v.n <= 6;
    for (size_t i = 0; good && i < v.n; i++) {
        good = v.p[i] >= '0' && v.p[i] <= '9';
        x = x * 10 + (v.p[i] - '0');
    }
    if (v.n == 0) return err_set(ERR_INVAL, "%s: %s = '': empty value", ps->where, field);
    if (good && x >= lo && x <= hi) {
        *out = (int)x;
        return ERR_OK;
    }
    if (hi == 65535)
        return err_set(ERR_INVAL, "%s: %s = '%s': not a port (1-65535)", ps->where, field,
                       show(b, sizeof b, v));
    return err_set(ERR_INVAL, "%s: %s = '%s': not a whole number in %d-%d", ps->where, field,
                   show(b, sizeof b, v), lo, hi);
}

// set_field applies key=value to h; seen[] marks the fields this entry has given.
static int set_field(const parser *ps, hostfile_host *h, span key, span v, int *seen) {
    char b[200];
    int f = 0;
    while (f < F_COUNT && !span_eq(key, FIELD_NAMES[f]))
        f++;
    if (f == F_COUNT)
        return err_set(ERR_INVAL, "%s: unknown field '%s' (" FIELD_LIST ")", ps->where,
                       show(b, sizeof b, key));
    if (seen[f]) return err_set(ERR_INVAL, "%s: field '%s' given twice", ps->where, FIELD_NAMES[f]);
    seen[f] = 1;
    switch (f) {
    case F_HOST: return set_host(ps, h, "host", v, seen);
    case F_USER:
        return copy_value(ps, "user", v, is_name_char, h->user, sizeof h->user,
                          "letters, digits, '.', '-', '_'");
    case F_SSH_PORT: return set_int(ps, "ssh_port", v, 1, 65535, &h->ssh_port);
    case F_PORT: return set_int(ps, "port", v, 1, 65535, &h->port);
    case F_DIR:
        return copy_value(ps, "dir", v, is_dir_char, h->dir, sizeof h->dir,
                          "letters, digits and /._~+,@%=:-");
    case F_SLOTS: return set_int(ps, "slots", v, 1, HOSTFILE_MAX_SLOTS, &h->slots);
    default: return set_int(ps, "threads", v, 0, HOSTFILE_MAX_THREADS, &h->threads);
    }
}

static void host_defaults(hostfile_host *h, int line) {
    memset(h, 0, sizeof *h);
    h->ssh_port = 22;
    h->slots = 1;
    h->line = line;
}

// origin names where an earlier entry came from, for the duplicate message.
static const char *origin(const parser *ps, const hostfile_host *h, char *buf, size_t cap) {
    snprintf(buf, cap, ps->hf.json ? "as element %d" : "on line %d", h->line);
    return buf;
}

// add_host appends h after checking it against every earlier entry: the same host (names
// compared without case, as DNS does) may come again only with ports that do not overlap.
static int add_host(parser *ps, const hostfile_host *h) {
    char o[32];
    if (ps->hf.n >= HOSTFILE_MAX_HOSTS)
        return err_set(ERR_INVAL, "%s: more than %d hosts", ps->where, HOSTFILE_MAX_HOSTS);
    if (h->port && h->port + h->slots - 1 > 65535)
        return err_set(ERR_INVAL, "%s: port = %d with slots = %d runs past port 65535", ps->where,
                       h->port, h->slots);
    for (int i = 0; i < ps->hf.n; i++) {
        const hostfile_host *e = &ps->hf.hosts[i];
        if (strcasecmp(e->host, h->host) != 0) continue;
        if (!e->port || !h->port)
            return err_set(ERR_INVAL,
                           "%s: host '%s' listed twice (first %s): give each entry its own "
                           "port=, or one entry slots=N",
                           ps->where, h->host, origin(ps, e, o, sizeof o));
        if (h->port <= e->port + e->slots - 1 && e->port <= h->port + h->slots - 1)
            return err_set(ERR_INVAL,
                           "%s: host '%s' ports %d-%d overlap those of the host %s (%d-%d)",
                           ps->where, h->host, h->port, h->port + h->slots - 1,
                           origin(ps, e, o, sizeof o), e->port, e->port + e->slots - 1);
    }
    if (ps->hf.n == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 8;
        ps->hf.hosts = xrealloc(ps->hf.hosts, (size_t)ps->cap * sizeof *ps->hf.hosts);
    }
    ps->hf.hosts[ps->hf.n++] = *h;
    ps->hf.peers += h->slots;
    return ERR_OK;
}

// parse_line reads one text line (comment and line end already cut off); a blank line adds
// nothing.
static int parse_line(parser *ps, span line, int lineno) {
    char b[200];
    hostfile_host h;
    host_defaults(&h, lineno);
    int seen[F_COUNT] = {0}, words = 0;
    size_t i = 0;
    while (i < line.n) {
        while (i < line.n && is_space(line.p[i]))
            i++;
        if (i == line.n) break;
        span tok = {line.p + i, 0};
        while (i < line.n && !is_space(line.p[i]))
            i++;
        tok.n = (size_t)(line.p + i - tok.p);
        const char *eq = memchr(tok.p, '=', tok.n);
        int rc;
        if (!eq && words++ == 0 && !seen[F_HOST]) {
            seen[F_HOST] = 1;
            rc = set_host(ps, &h, "host", tok, seen);
        } else if (!eq) {
            rc = err_set(ERR_FORMAT, "%s: '%s': expected field=value (the host is the first word)",
                         ps->where, show(b, sizeof b, tok));
        } else if (eq == tok.p) {
            rc = err_set(ERR_FORMAT, "%s: '%s': no field name before '='", ps->where,
                         show(b, sizeof b, tok));
        } else {
            words++;
            span key = {tok.p, (size_t)(eq - tok.p)};
            rc = set_field(ps, &h, key, (span){eq + 1, tok.n - key.n - 1}, seen);
        }
        if (rc) return rc;
    }
    if (!words) return ERR_OK;
    if (!seen[F_HOST])
        return err_set(ERR_INVAL, "%s: no host (a line starts with the host, or gives host=)",
                       ps->where);
    return add_host(ps, &h);
}

static int parse_text(parser *ps, const char *text, size_t len) {
    size_t i = 0;
    // A UTF-8 byte order mark, as some editors write, is not part of the first host.
    if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0) i = 3;
    for (int lineno = 1; i < len; lineno++) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - text) : len;
        const char *hash = memchr(text + i, '#', end - i);
        span line = {text + i, (hash ? (size_t)(hash - text) : end) - i};
        snprintf(ps->where, sizeof ps->where, "%s:%d", ps->name, lineno);
        int rc = parse_line(ps, line, lineno);
        if (rc) return rc;
        i = end + 1;
    }
    return ERR_OK;
}

// parse_element reads one host object of MLX's form: "ssh" (required), "ips" (optional); the
// other keys MLX writes ("rdma", ...) are not ours and are ignored.
static int parse_element(parser *ps, const json_t *e, int idx) {
    static const char *const types[] = {"an object", "an array", "a string", "an integer",
                                        "a number",  "true",     "false",    "null"};
    snprintf(ps->where, sizeof ps->where, "%s: element %d", ps->name, idx);
    if (!json_is_object(e))
        return err_set(ERR_FORMAT, "%s is %s, not an object {\"ssh\": HOST, \"ips\": [...]}",
                       ps->where, types[json_typeof(e)]);
    const json_t *ssh = json_object_get(e, "ssh"), *ips = json_object_get(e, "ips");
    if (!json_is_string(ssh))
        return err_set(ERR_FORMAT, "%s: no \"ssh\" string (the host to reach over ssh)", ps->where);
    if (ips && !json_is_array(ips))
        return err_set(ERR_FORMAT, "%s: \"ips\" is %s, not an array of strings", ps->where,
                       types[json_typeof(ips)]);
    hostfile_host h;
    host_defaults(&h, idx);
    int seen[F_COUNT] = {0};
    int rc = set_host(ps, &h, "ssh", (span){json_string_value(ssh), json_string_length(ssh)}, seen);
    if (rc) return rc;
    size_t n = ips ? json_array_size(ips) : 0;
    if (n > HOSTFILE_MAX_IPS)
        return err_set(ERR_INVAL, "%s: \"ips\" holds %zu addresses (at most %d)", ps->where, n,
                       HOSTFILE_MAX_IPS);
    for (size_t k = 0; k < n; k++) {
        const json_t *ip = json_array_get(ips, k);
        char field[16];
        snprintf(field, sizeof field, "ips[%zu]", k);
        if (!json_is_string(ip))
            return err_set(ERR_FORMAT, "%s: %s is %s, not a string", ps->where, field,
                           types[json_typeof(ip)]);
        span v = {json_string_value(ip), json_string_length(ip)};
        rc = set_addr(ps, field, v, h.ips[k], sizeof h.ips[k]);
        if (rc) return rc;
        h.n_ips++;
    }
    return add_host(ps, &h);
}

static int parse_json(parser *ps, const char *text, size_t len) {
    char b[200];
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root && json_error_code(&je) == json_error_out_of_memory) err_oom("json_loadb", len);
    if (!root)
        return err_set(ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", ps->name, je.line, je.column,
                       show(b, sizeof b, cstr(je.text)));
    ps->hf.json = 1;
    const json_t *hosts = json_is_object(root) ? json_object_get(root, "hosts") : root;
    int rc = ERR_OK;
    if (!json_is_array(hosts))
        rc = err_set(ERR_FORMAT,
                     "%s: no \"hosts\" array (MLX's hostfile is [{\"ssh\": HOST, \"ips\": [...]}, "
                     "...] or {\"hosts\": [...]})",
                     ps->name);
    else if (json_array_size(hosts) > HOSTFILE_MAX_HOSTS)
        rc = err_set(ERR_INVAL, "%s: more than %d hosts", ps->name, HOSTFILE_MAX_HOSTS);
    for (size_t i = 0; rc == ERR_OK && i < json_array_size(hosts); i++)
        rc = parse_element(ps, json_array_get(hosts, i), (int)i);
    json_decref(root);
    return rc;
}

// looks_json tells MLX's form from text: '{', or '[' then '{' or ']' (a bracketed IPv6 host
// goes on with a hex digit or ':').
static int looks_json(const char *text, size_t len) {
    size_t i = 0;
    while (i < len && (is_space(text[i]) || text[i] == '\n'))
        i++;
    if (i < len && text[i] == '{') return 1;
    if (i == len || text[i] != '[') return 0;
    for (i++; i < len && (is_space(text[i]) || text[i] == '\n');)
        i++;
    return i < len && (text[i] == '{' || text[i] == ']');
}

int hostfile_parse(hostfile *out, const char *text, size_t len, const char *name) {
    ASSERT(out && (text || !len));
    memset(out, 0, sizeof *out);
    parser ps = {.name = name ? name : "hostfile"};
    if (len > HOSTFILE_MAX_BYTES)
        return err_set(ERR_INVAL, "%s: %zu bytes, larger than a hostfile may be (%d)", ps.name, len,
                       HOSTFILE_MAX_BYTES);
    int rc = looks_json(text, len) ? parse_json(&ps, text, len) : parse_text(&ps, text, len);
    if (rc == ERR_OK && ps.hf.n == 0)
        rc = err_set(ERR_INVAL, "%s: no hosts (one line per host: HOST [user=U] [slots=N] ...)",
                     ps.name);
    if (rc != ERR_OK) {
        hostfile_free(&ps.hf);
        return rc;
    }
    *out = ps.hf;
    return ERR_OK;
}

int hostfile_load(hostfile *out, const char *path) {
    ASSERT(out && path);
    memset(out, 0, sizeof *out);
    char *buf;
    size_t n;
    int rc = sys_read_file(path, HOSTFILE_MAX_BYTES, "hostfile", &buf, &n);
    if (rc == ERR_OK) rc = hostfile_parse(out, buf, n, path);
    free(buf);
    return rc;
}

void hostfile_free(hostfile *h) {
    if (!h) return;
    free(h->hosts);
    memset(h, 0, sizeof *h);
}
