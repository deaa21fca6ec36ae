// hostfile_test.c: the hostfile parser of `spartan launch`: good text files (comments, blank
// lines, every field, user@host, CRLF, IPv6), each bad line with its exact `file:line` message,
// MLX's JSON form (both shapes, good and bad), hostfile_load on real files, and a fuzz pass over
// truncated and mutated files that must give ERR_OK or an error, never a crash.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test_util.h"
#include "train/base/err.h"
#include "train/base/rng.h"
#include "train/cmd/hostfile.h"

TestSuite(hostfile, .timeout = 30);

// parse_ok parses a NUL-terminated text as "hosts.txt" and fails the test on an error.
static hostfile parse_ok(const char *text) {
    hostfile h;
    int rc = hostfile_parse(&h, text, strlen(text), "hosts.txt");
    cr_assert_eq(rc, ERR_OK, "%s: %s", err_str(rc), err_msg());
    return h;
}

// expect_err parses text and checks the code and the whole message.
static void expect_err(const char *name, const char *text, size_t n, int code, const char *msg) {
    hostfile h = {(hostfile_host *)1, 5, 5, 1}; // must come back empty
    int rc = hostfile_parse(&h, text, n, name);
    cr_expect_eq(rc, code, "input '%s': got %s (%s), want %s", text, err_str(rc), err_msg(),
                 err_str(code));
    cr_expect_str_eq(err_msg(), msg, "input '%s': got \"%s\"", text, err_msg());
    cr_expect(h.hosts == NULL && h.n == 0 && h.peers == 0, "input '%s' left hosts", text);
}

static void expect_bad(const char *text, int code, const char *msg) {
    expect_err("hosts.txt", text, strlen(text), code, msg);
}

// A bad input, the code it gets and the whole message.
typedef struct bad_case {
    const char *text;
    int code;
    const char *msg;
} bad_case;

// run_bad checks every case, parsed under name.
static void run_bad(const char *name, const bad_case *c, size_t n) {
    for (size_t i = 0; i < n; i++)
        expect_err(name, c[i].text, strlen(c[i].text), c[i].code, c[i].msg);
}

// expect_host compares every field of got with want.
static void expect_host(const hostfile_host *got, const hostfile_host *want) {
    cr_expect_str_eq(got->host, want->host);
    cr_expect_str_eq(got->user, want->user, "host %s", want->host);
    cr_expect_eq(got->ssh_port, want->ssh_port, "host %s", want->host);
    cr_expect_eq(got->port, want->port, "host %s", want->host);
    cr_expect_str_eq(got->dir, want->dir, "host %s", want->host);
    cr_expect_eq(got->slots, want->slots, "host %s", want->host);
    cr_expect_eq(got->threads, want->threads, "host %s", want->host);
    cr_expect_eq(got->line, want->line, "host %s", want->host);
    cr_assert_eq(got->n_ips, want->n_ips, "host %s", want->host);
    for (int i = 0; i < want->n_ips; i++)
        cr_expect_str_eq(got->ips[i], want->ips[i], "host %s ip %d", want->host, i);
}

Test(hostfile, text_with_comments_blank_lines_and_every_field) {
    hostfile h =
        parse_ok("# the lab\n"
                 "\n"
                 "mini1 user=alice ssh_port=2222 port=7000 dir=/srv/sp-1 slots=2 threads=4\n"
                 "   \t  # indented comment\n"
                 "mini2   # two peers' worth of defaults\n"
                 "host=10.0.0.7 slots=64 threads=256 port=65472\n");
    cr_assert_eq(h.n, 3);
    cr_assert_eq(h.peers, 2 + 1 + 64);
    cr_assert_eq(h.json, 0);
    expect_host(&h.hosts[0], &(hostfile_host){.host = "mini1",
                                              .user = "alice",
                                              .ssh_port = 2222,
                                              .port = 7000,
                                              .dir = "/srv/sp-1",
                                              .slots = 2,
                                              .threads = 4,
                                              .line = 3});
    // The defaults: ssh 22, the launcher picks the port, dir and threads; one slot.
    expect_host(&h.hosts[1],
                &(hostfile_host){.host = "mini2", .ssh_port = 22, .slots = 1, .line = 5});
    // 65472 + 63 = 65535: the last port still fits.
    expect_host(&h.hosts[2], &(hostfile_host){.host = "10.0.0.7",
                                              .ssh_port = 22,
                                              .port = 65472,
                                              .slots = 64,
                                              .threads = 256,
                                              .line = 6});
    hostfile_free(&h);
    cr_expect(h.hosts == NULL && h.n == 0);
    hostfile_free(&h); // twice is safe, and so is NULL
    hostfile_free(NULL);
}

// The example of README.md's "Launching across machines".
Test(hostfile, readme_example_parses) {
    hostfile h = parse_ok("# two Mac minis and a Linux box\n"
                          "alice@mini1 slots=2 dir=/Users/alice/spartan\n"
                          "mini2 user=alice port=7100\n"
                          "[fe80::1] ssh_port=2222 threads=8\n");
    cr_assert_eq(h.n, 3);
    cr_expect_eq(h.peers, 4);
    cr_expect_str_eq(h.hosts[0].dir, "/Users/alice/spartan");
    cr_expect_eq(h.hosts[1].port, 7100);
    cr_expect_str_eq(h.hosts[2].host, "fe80::1");
    cr_expect_eq(h.hosts[2].ssh_port, 2222);
    cr_expect_eq(h.hosts[2].threads, 8);
    hostfile_free(&h);
}

Test(hostfile, user_at_host_sets_the_user) {
    hostfile h = parse_ok("bob@mini2 ssh_port=22\nhost=carol@mini3\n");
    cr_assert_eq(h.n, 2);
    cr_expect_str_eq(h.hosts[0].user, "bob");
    cr_expect_str_eq(h.hosts[0].host, "mini2");
    cr_expect_str_eq(h.hosts[1].user, "carol");
    cr_expect_str_eq(h.hosts[1].host, "mini3");
    hostfile_free(&h);
}

Test(hostfile, crlf_line_endings_and_no_final_newline) {
    hostfile h = parse_ok("# windows\r\nmini1 slots=2\r\n\r\nmini2 dir=/d\r\nmini3");
    cr_assert_eq(h.n, 3);
    cr_expect_eq(h.hosts[0].slots, 2);
    cr_expect_str_eq(h.hosts[1].dir, "/d"); // no '\r' left on the last value
    cr_expect_eq(h.hosts[1].line, 4);
    cr_expect_str_eq(h.hosts[2].host, "mini3");
    cr_expect_eq(h.peers, 4);
    hostfile_free(&h);
}

Test(hostfile, byte_order_mark_is_skipped) {
    hostfile h = parse_ok("\xef\xbb\xbfmini1\n");
    cr_assert_eq(h.n, 1);
    cr_expect_str_eq(h.hosts[0].host, "mini1");
    hostfile_free(&h);
}

Test(hostfile, ipv6_bracketed_and_bare_is_text_and_canonical) {
    // A first line that starts with '[' is still text: JSON is '[' then '{' or ']'.
    hostfile h = parse_ok("[fe80:0:0::1] slots=2\n::1\n");
    cr_assert_eq(h.n, 2);
    cr_assert_eq(h.json, 0);
    cr_expect_str_eq(h.hosts[0].host, "fe80::1");
    cr_expect_str_eq(h.hosts[1].host, "::1");
    hostfile_free(&h);
    // Two spellings of one address are one host.
    expect_bad("[::1]\n0:0::1\n", ERR_INVAL,
               "hosts.txt:2: host '::1' listed twice (first on line 1): give each entry its own "
               "port=, or one entry slots=N");
}

Test(hostfile, same_host_twice_with_distinct_ports) {
    hostfile h = parse_ok("mini1 port=7000 slots=2\nmini1 port=7002\nmini2\n");
    cr_assert_eq(h.n, 3);
    cr_expect_eq(h.peers, 4);
    hostfile_free(&h);
}

// The message for a host given twice on lines 1 and 2 without distinct ports.
#define TWICE                                                                                      \
    "hosts.txt:2: host 'mini1' listed twice (first on line 1): give each entry its own port=, or " \
    "one entry slots=N"

Test(hostfile, duplicates_are_refused) {
    static const bad_case cases[] = {
        {"mini1\nmini1\n", ERR_INVAL, TWICE},
        {"mini1 port=7000\nmini1\n", ERR_INVAL, TWICE},
        {"mini1\nMINI1 port=7000\n", ERR_INVAL,
         "hosts.txt:2: host 'MINI1' listed twice (first on line 1): give each entry its own "
         "port=, or one entry slots=N"},
        {"mini1 port=7000 slots=2\n# gap\nalice@mini1 port=7001\n", ERR_INVAL,
         "hosts.txt:3: host 'mini1' ports 7001-7001 overlap those of the host on line 1 "
         "(7000-7001)"},
        {"mini1 port=7000\nmini1 port=6990 slots=11\n", ERR_INVAL,
         "hosts.txt:2: host 'mini1' ports 6990-7000 overlap those of the host on line 1 "
         "(7000-7000)"},
    };
    run_bad("hosts.txt", cases, sizeof cases / sizeof *cases);
}

Test(hostfile, no_hosts) {
    const char *msg = "hosts.txt: no hosts (one line per host: HOST [user=U] [slots=N] ...)";
    expect_err("hosts.txt", "", 0, ERR_INVAL, msg);
    expect_bad("# only a comment\n\n   \r\n", ERR_INVAL, msg);
    expect_bad("[]", ERR_INVAL, msg);
    expect_bad(" {\"hosts\": []}", ERR_INVAL, msg);
    expect_err(NULL, "", 0, ERR_INVAL,
               "hostfile: no hosts (one line per host: HOST [user=U] [slots=N] ...)");
}

Test(hostfile, bad_numbers_name_the_line_and_field) {
    static const bad_case cases[] = {
        {"mini1\nmini2\nmini3 ssh_port=abc\n", ERR_INVAL,
         "hosts.txt:3: ssh_port = 'abc': not a port (1-65535)"},
        {"mini1 ssh_port=0", ERR_INVAL, "hosts.txt:1: ssh_port = '0': not a port (1-65535)"},
        {"mini1 ssh_port=-22", ERR_INVAL, "hosts.txt:1: ssh_port = '-22': not a port (1-65535)"},
        {"mini1 port=65536", ERR_INVAL, "hosts.txt:1: port = '65536': not a port (1-65535)"},
        {"mini1 port=0", ERR_INVAL, "hosts.txt:1: port = '0': not a port (1-65535)"},
        {"mini1 port=99999999999999999999", ERR_INVAL,
         "hosts.txt:1: port = '99999999999999999999': not a port (1-65535)"},
        {"mini1 slots=0", ERR_INVAL, "hosts.txt:1: slots = '0': not a whole number in 1-64"},
        {"mini1 slots=65", ERR_INVAL, "hosts.txt:1: slots = '65': not a whole number in 1-64"},
        {"mini1 slots=2.5", ERR_INVAL, "hosts.txt:1: slots = '2.5': not a whole number in 1-64"},
        {"mini1 threads=257", ERR_INVAL,
         "hosts.txt:1: threads = '257': not a whole number in 0-256"},
        {"mini1 threads=+1", ERR_INVAL, "hosts.txt:1: threads = '+1': not a whole number in 0-256"},
        {"mini1 port=65535 slots=2", ERR_INVAL,
         "hosts.txt:1: port = 65535 with slots = 2 runs past port 65535"},
    };
    run_bad("hosts.txt", cases, sizeof cases / sizeof *cases);
}

Test(hostfile, unknown_repeated_and_malformed_fields) {
    static const bad_case cases[] = {
        {"a\nb\nc\nd\nmini1 slot=2\n", ERR_INVAL,
         "hosts.txt:5: unknown field 'slot' (host, user, ssh_port, port, dir, slots, "
         "threads)"},
        {"mini1 Slots=2\n", ERR_INVAL,
         "hosts.txt:1: unknown field 'Slots' (host, user, ssh_port, port, dir, slots, "
         "threads)"},
        {"mini1 slots=2 slots=3\n", ERR_INVAL, "hosts.txt:1: field 'slots' given twice"},
        {"mini1 host=mini2\n", ERR_INVAL, "hosts.txt:1: field 'host' given twice"},
        {"bob@mini1 user=bob\n", ERR_INVAL, "hosts.txt:1: field 'user' given twice"},
        {"user=bob bob@mini1\n", ERR_FORMAT,
         "hosts.txt:1: 'bob@mini1': expected field=value (the host is the first word)"},
        {"user=bob host=bob@mini1\n", ERR_INVAL,
         "hosts.txt:1: field 'user' given twice (user= and user@host)"},
        {"mini1\nmini2 slots\n", ERR_FORMAT,
         "hosts.txt:2: 'slots': expected field=value (the host is the first word)"},
        {"mini1 =4\n", ERR_FORMAT, "hosts.txt:1: '=4': no field name before '='"},
        {"mini1 slots=\n", ERR_INVAL, "hosts.txt:1: slots = '': empty value"},
        {"mini1 dir=\n", ERR_INVAL, "hosts.txt:1: dir = '': empty value"},
        {"mini1 dir= /x\n", ERR_INVAL, "hosts.txt:1: dir = '': empty value"},
        {"mini1 user=\n", ERR_INVAL, "hosts.txt:1: user = '': empty value"},
        {"slots=2 threads=1\n", ERR_INVAL,
         "hosts.txt:1: no host (a line starts with the host, or gives host=)"},
    };
    run_bad("hosts.txt", cases, sizeof cases / sizeof *cases);
}

Test(hostfile, bad_characters_are_named) {
    static const bad_case cases[] = {
        {"mini;1\n", ERR_INVAL,
         "hosts.txt:1: host = 'mini;1': ';' is not allowed (letters, digits, '.', '-', "
         "'_'; IPv6 as [::1])"},
        {"-oProxyCommand\n", ERR_INVAL,
         "hosts.txt:1: host = '-oProxyCommand': must not start with '-'"},
        {".mini1\n", ERR_INVAL, "hosts.txt:1: host = '.mini1': must not start with '.'"},
        {"mini1:22\n", ERR_INVAL,
         "hosts.txt:1: host = 'mini1:22': not a host name or IPv6 address (a port goes in "
         "port= or ssh_port=)"},
        {"[mini1]\n", ERR_INVAL,
         "hosts.txt:1: host = '[mini1]': not a host name or IPv6 address (a port goes in "
         "port= or ssh_port=)"},
        {"@mini1\n", ERR_INVAL, "hosts.txt:1: user = '': empty value"},
        {"bob@\n", ERR_INVAL, "hosts.txt:1: host = '': empty value"},
        {"a@b@c\n", ERR_INVAL,
         "hosts.txt:1: host = 'b@c': '@' is not allowed (letters, digits, '.', '-', '_'; "
         "IPv6 as [::1])"},
        {"mini1 user=b$b\n", ERR_INVAL,
         "hosts.txt:1: user = 'b$b': '$' is not allowed (letters, digits, '.', '-', '_')"},
        {"mini1 dir=/srv/a;rm\n", ERR_INVAL,
         "hosts.txt:1: dir = '/srv/a;rm': ';' is not allowed (letters, digits and "
         "/._~+,@%=:-)"},
        {"mini1 dir=-rf\n", ERR_INVAL, "hosts.txt:1: dir = '-rf': must not start with '-'"},
    };
    run_bad("hosts.txt", cases, sizeof cases / sizeof *cases);
    // Bytes a terminal would act on are shown escaped.
    static const char nul[] = "mini\0001\n";
    expect_err("hosts.txt", nul, sizeof nul - 1, ERR_INVAL,
               "hosts.txt:1: host = 'mini\\x001': '\\x00' is not allowed (letters, digits, '.', "
               "'-', '_'; IPv6 as [::1])");
    expect_bad("m\x1b[2J\n", ERR_INVAL,
               "hosts.txt:1: host = 'm\\x1b[2J': '\\x1b' is not allowed (letters, digits, '.', "
               "'-', '_'; IPv6 as [::1])");
}

// long_line returns "<prefix><n times 'x'>\n" (caller frees).
static char *long_line(const char *prefix, size_t n) {
    size_t p = strlen(prefix);
    char *s = malloc(p + n + 2);
    cr_assert(s);
    memcpy(s, prefix, p);
    memset(s + p, 'x', n);
    memcpy(s + p + n, "\n", 2);
    return s;
}

Test(hostfile, overlong_fields_say_the_limit) {
    char *s = long_line("", 255);
    hostfile h = parse_ok(s); // the limit itself fits
    cr_expect_eq(strlen(h.hosts[0].host), 255);
    hostfile_free(&h);
    free(s);
    s = long_line("", 256);
    expect_bad(s, ERR_INVAL, "hosts.txt:1: host is 256 characters long (at most 255)");
    free(s);
    s = long_line("mini1 user=", 64);
    expect_bad(s, ERR_INVAL, "hosts.txt:1: user is 64 characters long (at most 63)");
    free(s);
    s = long_line("mini1 dir=/", 600);
    expect_bad(s, ERR_INVAL, "hosts.txt:1: dir is 601 characters long (at most 511)");
    free(s);
    // A long bad value is cut short in the message.
    s = long_line("mini1 slots=", 100);
    expect_bad(s, ERR_INVAL,
               "hosts.txt:1: slots = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...': not a whole "
               "number in 1-64");
    free(s);
}

Test(hostfile, host_count_is_bounded) {
    size_t cap = (HOSTFILE_MAX_HOSTS + 1) * 12 + 1, n = 0;
    char *s = malloc(cap);
    cr_assert(s);
    for (int i = 0; i < HOSTFILE_MAX_HOSTS; i++)
        n += (size_t)snprintf(s + n, cap - n, "h%d\n", i);
    hostfile h = parse_ok(s);
    cr_expect_eq(h.n, HOSTFILE_MAX_HOSTS);
    cr_expect_eq(h.peers, HOSTFILE_MAX_HOSTS);
    cr_expect_str_eq(h.hosts[HOSTFILE_MAX_HOSTS - 1].host, "h1023");
    hostfile_free(&h);
    snprintf(s + n, cap - n, "one-more\n");
    expect_bad(s, ERR_INVAL, "hosts.txt:1025: more than 1024 hosts");
    free(s);
    // Nor is the text itself unbounded (the size is checked before anything is read).
    char c = 0;
    int rc = hostfile_parse(&h, &c, (size_t)HOSTFILE_MAX_BYTES + 1, "big.txt");
    cr_expect_eq(rc, ERR_INVAL);
    cr_expect_str_eq(err_msg(), "big.txt: 1048577 bytes, larger than a hostfile may be (1048576)");
}

Test(hostfile, mlx_json_array_form) {
    const char *j = "  [\n"
                    "  {\"ssh\": \"mini1\", \"ips\": [\"10.0.0.1\", \"fe80::0:1\"]},\n"
                    "  {\"ssh\": \"bob@mini2\", \"ips\": [], \"rdma\": [null, \"rdma_en2\"]},\n"
                    "  {\"ssh\": \"mini3\"}\n"
                    "]\n";
    hostfile h;
    int rc = hostfile_parse(&h, j, strlen(j), "hosts.json");
    cr_assert_eq(rc, ERR_OK, "%s", err_msg());
    cr_assert_eq(h.json, 1);
    cr_assert_eq(h.n, 3);
    cr_expect_eq(h.peers, 3);
    expect_host(&h.hosts[0], &(hostfile_host){.host = "mini1",
                                              .ssh_port = 22,
                                              .slots = 1,
                                              .ips = {"10.0.0.1", "fe80::1"},
                                              .n_ips = 2});
    expect_host(
        &h.hosts[1],
        &(hostfile_host){.host = "mini2", .user = "bob", .ssh_port = 22, .slots = 1, .line = 1});
    expect_host(&h.hosts[2],
                &(hostfile_host){.host = "mini3", .ssh_port = 22, .slots = 1, .line = 2});
    hostfile_free(&h);
}

Test(hostfile, mlx_json_object_form) {
    const char *j = "{\"backend\": \"jaccl\", \"envs\": [\"MLX_METAL_FAST_SYNCH=1\"],\n"
                    " \"hosts\": [{\"ssh\": \"m3-ultra-1\", \"ips\": [\"123.123.123.1\"]},\n"
                    "           {\"ssh\": \"m3-ultra-2\", \"ips\": [\"123.123.123.2\"]}]}";
    hostfile h;
    int rc = hostfile_parse(&h, j, strlen(j), "hosts.json");
    cr_assert_eq(rc, ERR_OK, "%s", err_msg());
    cr_assert_eq(h.n, 2);
    cr_expect_str_eq(h.hosts[1].host, "m3-ultra-2");
    cr_expect_str_eq(h.hosts[1].ips[0], "123.123.123.2");
    hostfile_free(&h);
}

Test(hostfile, mlx_json_errors_name_the_element) {
    static const bad_case cases[] = {
        {"[{\"ssh\": \"a\"},\n {\"ssh\": \"b\",}]", ERR_FORMAT,
         "hosts.json:2:14: invalid JSON: string or '}' expected near '}'"},
        {"[{\"ssh\": \"a\"}", ERR_FORMAT,
         "hosts.json:1:13: invalid JSON: ']' expected near end of file"},
        {"[{\"ssh\": \"a\", \"ssh\": \"b\"}]", ERR_FORMAT,
         "hosts.json:1:19: invalid JSON: duplicate object key near '\"ssh\"'"},
        {"[{\"ssh\": \"a\"}, \"b\"]", ERR_FORMAT,
         "hosts.json: element 1 is a string, not an object {\"ssh\": HOST, \"ips\": "
         "[...]}"},
        {"[{\"ssh\": \"a\"}, {\"ssh\": \"b\"}, {\"host\": \"c\"}]", ERR_FORMAT,
         "hosts.json: element 2: no \"ssh\" string (the host to reach over ssh)"},
        {"[{\"ssh\": 7}]", ERR_FORMAT,
         "hosts.json: element 0: no \"ssh\" string (the host to reach over ssh)"},
        {"[{\"ssh\": \"a\", \"ips\": \"10.0.0.1\"}]", ERR_FORMAT,
         "hosts.json: element 0: \"ips\" is a string, not an array of strings"},
        {"[{\"ssh\": \"a\", \"ips\": [\"10.0.0.1\", null]}]", ERR_FORMAT,
         "hosts.json: element 0: ips[1] is null, not a string"},
        {"[{\"ssh\": \"a\", \"ips\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\","
         "\"9\"]}]",
         ERR_INVAL, "hosts.json: element 0: \"ips\" holds 9 addresses (at most 8)"},
        {"[{\"ssh\": \"a\", \"ips\": [\"10.0.0.1:5\"]}]", ERR_INVAL,
         "hosts.json: element 0: ips[0] = '10.0.0.1:5': not a host name or IPv6 "
         "address (a port goes in port= or ssh_port=)"},
        {"[{\"ssh\": \"a b\"}]", ERR_INVAL,
         "hosts.json: element 0: ssh = 'a b': ' ' is not allowed (letters, digits, "
         "'.', '-', '_'; IPv6 as [::1])"},
        {"[{\"ssh\": \"\"}]", ERR_INVAL, "hosts.json: element 0: ssh = '': empty value"},
        {"[{\"ssh\": \"a\"}, {\"ssh\": \"bob@A\"}]", ERR_INVAL,
         "hosts.json: element 1: host 'A' listed twice (first as element 0): give each "
         "entry its own port=, or one entry slots=N"},
        {"{\"backend\": \"ring\"}", ERR_FORMAT,
         "hosts.json: no \"hosts\" array (MLX's hostfile is [{\"ssh\": HOST, \"ips\": "
         "[...]}, ...] or {\"hosts\": [...]})"},
        {"[{\"ssh\": \"a\"}] x", ERR_FORMAT,
         "hosts.json:1:16: invalid JSON: end of file expected near 'x'"},
    };
    run_bad("hosts.json", cases, sizeof cases / sizeof *cases);
}

Test(hostfile, load_reads_a_file_and_names_a_missing_one) {
    char *dir = tu_tmpdir("hostfile");
    cr_assert(dir);
    char path[512];
    snprintf(path, sizeof path, "%s/hosts.txt", dir);
    const char *text = "mini1 slots=2\nmini2 ssh_port=x\n";
    cr_assert_eq(tu_write_file(path, text, strlen(text)), 0);
    hostfile h;
    int rc = hostfile_load(&h, path);
    cr_expect_eq(rc, ERR_INVAL);
    char want[700];
    snprintf(want, sizeof want, "%s:2: ssh_port = 'x': not a port (1-65535)", path);
    cr_expect_str_eq(err_msg(), want);
    cr_assert_eq(tu_write_file(path, text, 14), 0); // the first line only
    rc = hostfile_load(&h, path);
    cr_assert_eq(rc, ERR_OK, "%s", err_msg());
    cr_expect_eq(h.n, 1);
    cr_expect_eq(h.peers, 2);
    hostfile_free(&h);

    snprintf(path, sizeof path, "%s/absent.txt", dir);
    rc = hostfile_load(&h, path);
    cr_expect_eq(rc, ERR_IO);
    snprintf(want, sizeof want, "cannot open hostfile '%s': No such file or directory", path);
    cr_expect_str_eq(err_msg(), want);
    cr_expect(h.hosts == NULL && h.n == 0);

    rc = hostfile_load(&h, dir); // a folder opens but does not read
    cr_expect_eq(rc, ERR_IO);
    snprintf(want, sizeof want, "cannot read hostfile '%s': Is a directory", dir);
    cr_expect_str_eq(err_msg(), want);
    tu_rm_rf(dir);
    free(dir);
}

// check_result asserts what every call must give: ERR_OK with a well-formed hostfile, or an
// error with an empty hostfile and a message that names the file.
static void check_result(int rc, const hostfile *h, const char *name, int i) {
    if (rc != ERR_OK) {
        cr_assert(rc == ERR_INVAL || rc == ERR_FORMAT, "variant %d: %s", i, err_str(rc));
        cr_assert(h->hosts == NULL && h->n == 0, "variant %d", i);
        cr_assert(!strncmp(err_msg(), name, strlen(name)), "variant %d: '%s'", i, err_msg());
        return;
    }
    cr_assert(h->n >= 1 && h->n <= HOSTFILE_MAX_HOSTS, "variant %d", i);
    int peers = 0;
    for (int k = 0; k < h->n; k++) {
        const hostfile_host *e = &h->hosts[k];
        cr_assert(memchr(e->host, 0, sizeof e->host) && e->host[0] && e->host[0] != '-');
        cr_assert(memchr(e->user, 0, sizeof e->user) && memchr(e->dir, 0, sizeof e->dir));
        cr_assert(e->slots >= 1 && e->slots <= HOSTFILE_MAX_SLOTS, "variant %d", i);
        cr_assert(e->threads >= 0 && e->threads <= HOSTFILE_MAX_THREADS, "variant %d", i);
        cr_assert(e->ssh_port >= 1 && e->ssh_port <= 65535, "variant %d", i);
        cr_assert(e->port >= 0 && e->port <= 65535, "variant %d", i);
        cr_assert(e->n_ips >= 0 && e->n_ips <= HOSTFILE_MAX_IPS, "variant %d", i);
        peers += e->slots;
    }
    cr_assert_eq(h->peers, peers, "variant %d", i);
}

// Every prefix of a valid file, then random mutations of it (fixed seed): a changed byte, a
// deleted run, a duplicated run. Each variant is parsed from its own heap copy of exactly its
// length, so a read past the end is a real overrun (and a crash under `make sanitize`).
Test(hostfile, truncated_and_mutated_files_never_crash) {
    static const char *const seeds[] = {
        "# lab\nmini1 user=alice ssh_port=2222 port=7000 dir=/srv/x slots=2 threads=4\r\n"
        "bob@[fe80::1] slots=3\nhost=10.0.0.9 port=7002\n",
        "[{\"ssh\": \"mini1\", \"ips\": [\"10.0.0.1\", \"::1\"]},\n {\"ssh\": \"bob@mini2\"}]\n",
        "{\"hosts\": [{\"ssh\": \"m1\", \"ips\": [\"1.2.3.4\"], \"rdma\": [null]}]}",
    };
    static const char bytes[] = "=@#[]{}:\"\\,.-_ \t\r\n\0x9Z\xff";
    int variants = 0, ok = 0;
    for (int s = 0; s < 3; s++) {
        size_t n = strlen(seeds[s]);
        for (int i = 0; i < 1500; i++) {
            char *buf = malloc(2 * n + 1);
            cr_assert(buf);
            memcpy(buf, seeds[s], n);
            size_t len = n;
            uint64_t key = 1000 * (uint64_t)s + 13;
            if (i <= (int)n) {
                len = (size_t)i; // every prefix, the empty one included
            } else {
                int edits = 1 + (int)(rng_u64(key, 4 * (uint64_t)i) % 4);
                for (int e = 0; e < edits && len > 0; e++) {
                    uint64_t r = rng_u64(key, 4 * (uint64_t)i + 1 + (uint64_t)e);
                    size_t at = (size_t)(r >> 8) % len, run = 1 + (r >> 40) % 8;
                    if (run > len - at) run = len - at;
                    if (r % 3 == 0) {
                        buf[at] = bytes[(r >> 20) % (sizeof bytes - 1)];
                    } else if (r % 3 == 1) {
                        memmove(buf + at, buf + at + run, len - at - run);
                        len -= run;
                    } else if (len + run <= 2 * n) {
                        memmove(buf + at + run, buf + at, len - at);
                        len += run;
                    }
                }
            }
            char *exact = malloc(len ? len : 1);
            cr_assert(exact);
            memcpy(exact, buf, len);
            free(buf);
            hostfile h;
            int rc = hostfile_parse(&h, exact, len, "fuzz.txt");
            check_result(rc, &h, "fuzz.txt", i);
            ok += rc == ERR_OK;
            variants++;
            hostfile_free(&h);
            free(exact);
        }
    }
    cr_expect_eq(variants, 4500);
    // Both outcomes happen, so the variants reach past the first check.
    cr_expect(ok > 100 && ok < variants - 100, "%d of %d parsed", ok, variants);
}
