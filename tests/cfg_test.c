// cfg_test.c: the config key table: defaults, INI parsing, --set overrides, and the errors for
// typos, wrong types and out-of-range values (which must name file:line and the key).
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test_util.h"
#include "train/base/cfg.h"
#include "train/base/err.h"

TestSuite(cfg, .timeout = 30);

static char *write_ini(const char *text) {
    char *dir = tu_tmpdir("cfg");
    cr_assert(dir);
    char *path = malloc(strlen(dir) + 16);
    sprintf(path, "%s/c.ini", dir);
    cr_assert_eq(tu_write_file(path, text, strlen(text)), 0);
    free(dir);
    return path;
}

Test(cfg, defaults_are_valid_and_match_the_table) {
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_validate(&c), ERR_OK, "%s", err_msg());
    cr_assert_eq(c.train.grad_accum, 1);
    cr_assert_eq(c.log.level, CFG_LOG_INFO);
    cr_assert_eq(c.train.mode, CFG_MODE_LOCAL);
    cr_assert_eq(c.sparta.dtype, CFG_DTYPE_FP32);
    cr_assert_eq(c.ddp.dtype, CFG_DTYPE_FP32);
    cr_assert_float_eq(c.train.beta2, 0.95f, 1e-7);
}

Test(cfg, ini_values_are_parsed_into_the_struct) {
    char *p = write_ini("; comment\n[model]\nn_layer = 6\nn_embd = 96\nn_head = 3\n"
                        "[train]\nlearning_rate = 3e-4\nout_dir = runs/x\nseed = 42\n");
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_load_ini(&c, p), ERR_OK, "%s", err_msg());
    cr_assert_eq(c.model.n_layer, 6);
    cr_assert_eq(c.model.n_embd, 96);
    cr_assert_float_eq(c.train.learning_rate, 3e-4f, 1e-10);
    cr_assert_str_eq(c.train.out_dir, "runs/x");
    cr_assert_eq(c.train.seed, 42u);
    free(p);
}

Test(cfg, unknown_key_names_file_line_and_key) {
    char *p = write_ini("[model]\nn_layer = 2\n\n[train]\nlearnig_rate = 0.1\n");
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_load_ini(&c, p), ERR_INVAL);
    cr_assert(strstr(err_msg(), ":5:"), "no line number in: %s", err_msg());
    cr_assert(strstr(err_msg(), "train.learnig_rate"), "no key in: %s", err_msg());
    cr_assert(strstr(err_msg(), p), "no file in: %s", err_msg());
    free(p);
}

Test(cfg, unknown_key_suggests_the_closest_one) {
    char *p = write_ini("[train]\nlearnig_rate = 0.1\n");
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_load_ini(&c, p), ERR_INVAL);
    cr_assert(strstr(err_msg(), "did you mean 'train.learning_rate'?"), "%s", err_msg());
    free(p);
    // the right name in the wrong section, a typo from --set, and nothing close
    cr_assert_eq(cfg_set(&c, "train.p=0.1"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "did you mean 'sparta.p'?"), "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "sparta.max_stail=3"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "did you mean 'sparta.max_stale'?"), "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "zzz.qqqqqq=1"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "unknown key 'zzz.qqqqqq'") && !strstr(err_msg(), "did you mean"),
              "%s", err_msg());
}

Test(cfg, wrong_type_is_an_error_naming_the_key) {
    char *p = write_ini("[model]\nn_layer = two\n");
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_load_ini(&c, p), ERR_INVAL);
    cr_assert(strstr(err_msg(), ":2:") && strstr(err_msg(), "model.n_layer"), "%s", err_msg());
    free(p);
}

Test(cfg, out_of_range_value_is_rejected) {
    char *p = write_ini("[train]\nbeta1 = 1.5\n");
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_load_ini(&c, p), ERR_INVAL);
    cr_assert(strstr(err_msg(), "train.beta1") && strstr(err_msg(), "range"), "%s", err_msg());
    free(p);
    p = write_ini("[model]\nn_layer = -3\n");
    cr_assert_eq(cfg_load_ini(&c, p), ERR_INVAL);
    free(p);
}

Test(cfg, syntax_error_names_the_line) {
    char *p = write_ini("[model]\nn_layer 4\n");
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_load_ini(&c, p), ERR_INVAL);
    cr_assert(strstr(err_msg(), ":2:"), "%s", err_msg());
    free(p);
}

// Found by tests/fuzz/fuzz_cfg: libinih cuts a line at 199 bytes and parsed the rest as a line
// of its own ("unknown key 'net..13'"); a long comment line was a syntax error.
Test(cfg, long_line_is_an_error_naming_it_and_a_long_comment_is_cut) {
    char line[400];
    memset(line, 'x', sizeof line);
    memcpy(line, "; ", 2);
    snprintf(line + 300, 100, "\n[train]\nseed = 5\n");
    cfg c;
    cr_assert_eq(cfg_parse_string(&c, line, "long.ini"), ERR_OK, "%s", err_msg());
    cr_assert_eq(c.train.seed, 5);
    memcpy(line, "[net]\npeers = ", 14);
    cr_assert_eq(cfg_parse_string(&c, line, "long.ini"), ERR_INVAL);
    cr_assert_str_eq(err_msg(), "long.ini:2: line is longer than 198 characters (the INI "
                                "reader's limit)");
    char *p = write_ini(line); // the file reader too
    cr_assert_eq(cfg_load_ini(&c, p), ERR_INVAL);
    cr_assert(strstr(err_msg(), ":2: line is longer than 198"), "%s", err_msg());
    free(p);
}

// Found by tests/fuzz/fuzz_cfg: a value that filled a line as "peers=..." was written back as
// "peers = ...", two characters too long to read.
Test(cfg, a_value_at_the_line_limit_is_written_back_readable) {
    char text[256] = "[net]\npeers=";
    size_t n = strlen(text);
    memset(text + n, 'a', 192);
    text[n + 192] = 0;
    cfg c, d;
    cr_assert_eq(cfg_parse_string(&c, text, "t.ini"), ERR_OK, "%s", err_msg());
    char *out = cfg_to_string(&c);
    cr_assert(strstr(out, "\npeers=aaa"), "%s", out);
    cr_assert(strstr(out, "\nseed = "), "%s", out); // short values keep their spaces
    cr_assert_eq(cfg_parse_string(&d, out, "written"), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(d.net.peers, c.net.peers);
    free(out);
}

// Found by tests/fuzz/fuzz_cfg: libinih read an indented line as a second value for the key
// above it (its multi-line values), so "  max_iters = 3" under "  seed = 5" set train.seed.
Test(cfg, indented_lines_are_lines_of_their_own) {
    cfg c;
    cr_assert_eq(cfg_parse_string(&c, "[train]\n  seed = 5\n\tmax_iters = 3\n  ; note\n", "i.ini"),
                 ERR_OK, "%s", err_msg());
    cr_assert_eq(c.train.seed, 5);
    cr_assert_eq(c.train.max_iters, 3);
    cr_assert_eq(cfg_parse_string(&c, "[net]\npeers = a:1,\n  b:2\n", "i.ini"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "i.ini:3:"), "%s", err_msg());
}

// Found by tests/fuzz/fuzz_cfg: these values were taken but written back (cfg_write) as a line
// that reads as another value.
Test(cfg, string_values_that_would_not_read_back_are_rejected) {
    cfg c;
    cr_assert_eq(cfg_parse_string(&c, "[net]\njoin=;x\n", "s.ini"), ERR_INVAL);
    cr_assert_str_eq(err_msg(), "s.ini:2: net.join: ';x' holds a ';' at its start, which an INI "
                                "file reads as a comment");
    cfg_defaults(&c);
    cr_assert_eq(cfg_set(&c, "data.dir=a ;b"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "after white space"), "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "data.dir= a"), ERR_INVAL);
    cr_assert_eq(cfg_set(&c, "data.dir=a\nb"), ERR_INVAL);
    cr_assert_eq(cfg_set(&c, "data.dir=a;b"), ERR_OK, "%s", err_msg());
}

// Found by tests/fuzz/fuzz_cfg: "a," gave a second, empty peer address.
Test(cfg, validate_rejects_an_empty_peer_address) {
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_set(&c, "net.insecure=true"), ERR_OK); // no keys here: only addresses
    cr_assert_eq(cfg_set(&c, "net.peers=h1:7000,h2:7000"), ERR_OK, "%s", err_msg());
    cr_assert_eq(cfg_validate(&c), ERR_OK, "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "net.peers=h1:7000,"), ERR_OK, "%s", err_msg());
    cr_assert_eq(cfg_validate(&c), ERR_INVAL);
    cr_assert_str_eq(err_msg(),
                     "net.peers: address 2 of 'h1:7000,' is empty (one comma too many?)");
    cr_assert_eq(cfg_set(&c, "net.peers=h1:7000,  ,h3:7000"), ERR_OK, "%s", err_msg());
    cr_assert_eq(cfg_validate(&c), ERR_INVAL);
}

Test(cfg, missing_file_is_an_io_error) {
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_load_ini(&c, "/nonexistent/spartan.ini"), ERR_IO);
    cr_assert(strstr(err_msg(), "/nonexistent/spartan.ini"), "%s", err_msg());
}

Test(cfg, set_overrides_and_rejects_typos) {
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_set(&c, "train.max_iters=7"), ERR_OK, "%s", err_msg());
    cr_assert_eq(c.train.max_iters, 7);
    cr_assert_eq(cfg_set(&c, "train.max_iter=7"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "train.max_iter"), "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "max_iters"), ERR_INVAL);
    cr_assert_eq(cfg_set(&c, "train.max_iters=7x"), ERR_INVAL);
}

Test(cfg, enum_words_are_parsed_once_into_enums_and_written_back_as_words) {
    cfg c;
    cfg_defaults(&c);
    const char *sets[] = {
        "train.mode=ddp",     "log.level=debug",      "sparta.selector=partitioned",
        "sparta.reduce=ring", "sparta.apply=correct", "sparta.dtype=bf16",
        "diloco.dtype=int8",  "ddp.dtype=bf16"};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
        cr_assert_eq(cfg_set(&c, sets[i]), ERR_OK, "%s: %s", sets[i], err_msg());
    cr_assert(c.train.mode == CFG_MODE_DDP && c.log.level == CFG_LOG_DEBUG &&
              c.sparta.selector == CFG_SELECT_PARTITIONED && c.sparta.reduce == CFG_REDUCE_RING &&
              c.sparta.apply == CFG_APPLY_CORRECT && c.sparta.dtype == CFG_DTYPE_BF16 &&
              c.diloco.dtype == CFG_DTYPE_INT8 && c.ddp.dtype == CFG_DTYPE_BF16);
    cr_assert_str_eq(cfg_mode_str(c.train.mode), "ddp");
    cr_assert_str_eq(cfg_dtype_str(c.diloco.dtype), "int8");
    cr_assert_str_eq(cfg_reduce_str(c.sparta.reduce), "ring");
    char *text = cfg_to_string(&c);
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        char line[64], sec[32];
        const char *dot = strchr(sets[i], '.'), *eq = strchr(sets[i], '=');
        snprintf(sec, sizeof sec, "[%.*s]", (int)(dot - sets[i]), sets[i]);
        snprintf(line, sizeof line, "\n%.*s = %s\n", (int)(eq - dot - 1), dot + 1, eq + 1);
        const char *in = strstr(text, sec);
        cr_assert(in && strstr(in, line), "no '%s' under %s in:\n%s", line + 1, sec, text);
    }
    free(text);
    // A word that is not a choice names the choices; SPARTA has no int8.
    cr_assert_eq(cfg_set(&c, "sparta.dtype=int8"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "'int8' is not one of fp32|bf16"), "%s", err_msg());
    cr_assert_eq(c.sparta.dtype, CFG_DTYPE_BF16, "a refused value changed the field");
    cr_assert_eq(cfg_set(&c, "train.mode=DDP"), ERR_INVAL);
}

Test(cfg, validate_refuses_ddp_with_diloco) {
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(cfg_set(&c, "train.mode=ddp"), ERR_OK);
    cr_assert_eq(cfg_validate(&c), ERR_OK, "%s", err_msg());
    c.diloco.H = 10;
    cr_assert_eq(cfg_validate(&c), ERR_INVAL);
    cr_assert(strstr(err_msg(), "train.mode = ddp") && strstr(err_msg(), "diloco.H"), "%s",
              err_msg());
}

Test(cfg, validate_checks_heads_divide_width) {
    cfg c;
    cfg_defaults(&c);
    c.model.n_embd = 130;
    c.model.n_head = 4;
    cr_assert_eq(cfg_validate(&c), ERR_INVAL);
    cr_assert(strstr(err_msg(), "model.n_head"), "%s", err_msg());
}

Test(cfg, validate_rejects_a_forced_delay_beyond_max_stale) {
    cfg c;
    cfg_defaults(&c);
    c.sparta.max_stale = 5;
    c.sparta.delay = 5;
    cr_assert_eq(cfg_validate(&c), ERR_OK, "%s", err_msg());
    c.sparta.delay = 6;
    cr_assert_eq(cfg_validate(&c), ERR_INVAL);
    cr_assert(strstr(err_msg(), "sparta.delay"), "%s", err_msg());
}

Test(cfg, written_config_parses_back_identically) {
    cfg c, d;
    cfg_defaults(&c);
    cfg_set(&c, "train.learning_rate=0.000123");
    cfg_set(&c, "data.dir=some/where");
    cfg_set(&c, "train.seed=18446744073709551615");
    char *text = cfg_to_string(&c);
    cr_assert_eq(cfg_parse_string(&d, text, "written"), ERR_OK, "%s", err_msg());
    cr_assert_eq(memcmp(&c, &d, sizeof c), 0);
    free(text);
}

// printed returns what fn printed into a temporary file (caller frees).
static char *printed(void (*fn)(FILE *)) {
    FILE *f = tmpfile();
    cr_assert(f);
    fn(f);
    long n = ftell(f);
    rewind(f);
    char *s = calloc(1, (size_t)n + 1);
    cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return s;
}

Test(cfg, train_help_lists_every_section_of_the_key_table_and_no_other) {
    char *keys = printed(cfg_print_keys), *sections = printed(cfg_print_sections);
    int n_keys = 0;
    for (char *line = keys; *line;) { // "  section.key  type default ..."
        char sec[64], want[70];
        cr_assert_eq(sscanf(line, " %63[^.]", sec), 1, "%s", line);
        snprintf(want, sizeof want, "[%s]", sec);
        cr_assert(strstr(sections, want), "key line '%.40s' but sections are: %s", line, sections);
        n_keys++;
        char *nl = strchr(line, '\n');
        line = nl ? nl + 1 : line + strlen(line);
    }
    cr_assert_gt(n_keys, 40, "the key table is printed: %s", keys);
    // Each listed section has a key, and none is listed twice.
    for (char *s = strchr(sections, '['); s; s = strchr(s + 1, '[')) {
        char sec[64], key[70];
        cr_assert_eq(sscanf(s, "[%63[^]]", sec), 1);
        snprintf(key, sizeof key, "  %s.", sec);
        cr_assert(strstr(keys, key), "section [%s] has no key", sec);
        snprintf(key, sizeof key, "[%s]", sec);
        cr_assert(!strstr(s + 1, key), "[%s] listed twice: %s", sec, sections);
    }
    // And `spartan train --help` shows that list.
    char cmd[1024], *out = NULL, want[600];
    snprintf(cmd, sizeof cmd, "%s train --help", tu_spartan());
    cr_assert_eq(tu_run(cmd, 20, &out), 0, "%s", out);
    snprintf(want, sizeof want, "config keys (INI sections %s):", sections);
    cr_assert(strstr(out, want), "want '%s' in:\n%s", want, out);
    cr_assert(strstr(out, "[sparta]") && strstr(out, "[diloco]") && strstr(out, "[net]"), "%s",
              out);
    free(out);
    free(keys);
    free(sections);
}

// Secure by default: peers beyond loopback without keys are refused (naming the address and
// how to make keys) unless net.insecure; loopback peers need nothing.
Test(cfg, peers_beyond_loopback_need_keys_or_net_insecure) {
    const char *loop[] = {"net.peers=127.0.0.1:1,localhost:2,[::1]:3", "net.join=127.0.0.5:9"};
    const char *far[] = {"net.peers=127.0.0.1:1, 10.0.0.2:1", "net.join=mini1:29500",
                         "net.listen=0.0.0.0:1"};
    const char *named[] = {"net.peers entry 10.0.0.2:1", "net.join mini1:29500",
                           "net.listen 0.0.0.0:1"};
    for (size_t i = 0; i < sizeof loop / sizeof *loop; i++) {
        cfg c;
        cfg_defaults(&c);
        if (strstr(loop[i], "join")) cfg_set(&c, "net.world=2");
        cr_assert_eq(cfg_set(&c, loop[i]), ERR_OK, "%s", err_msg());
        cr_expect_eq(cfg_validate(&c), ERR_OK, "%s: %s", loop[i], err_msg());
    }
    for (size_t i = 0; i < sizeof far / sizeof *far; i++) {
        cfg c;
        cfg_defaults(&c);
        if (strstr(far[i], "join")) cfg_set(&c, "net.world=2");
        cr_assert_eq(cfg_set(&c, far[i]), ERR_OK, "%s", err_msg());
        cr_expect_eq(cfg_validate(&c), ERR_INVAL, "%s passed without keys", far[i]);
        cr_expect(strstr(err_msg(), "beyond loopback") && strstr(err_msg(), "spartan keys") &&
                      strstr(err_msg(), "net.insecure"),
                  "%s", err_msg());
        cr_expect(strstr(err_msg(), named[i]), "%s", err_msg());
        cr_assert_eq(cfg_set(&c, "net.insecure=true"), ERR_OK);
        cr_expect_eq(cfg_validate(&c), ERR_OK, "%s with net.insecure: %s", far[i], err_msg());
        cr_assert_eq(cfg_set(&c, "net.insecure=false"), ERR_OK);
        cfg_set(&c, "net.tls=true");
        cfg_set(&c, "net.tls_ca=ca.crt");
        cfg_set(&c, "net.tls_cert=a.crt");
        cfg_set(&c, "net.tls_key=a.key");
        cr_expect_eq(cfg_validate(&c), ERR_OK, "%s with net.tls: %s", far[i], err_msg());
    }
    cfg c;
    cfg_defaults(&c);
    cfg_set(&c, "net.peers=10.0.0.1:1,10.0.0.2:1");
    cr_expect_eq(cfg_validate(&c), ERR_INVAL);
    cfg_set(&c, "net.cluster_key_file=cluster.key"); // authenticated frames (a LAN choice)
    cr_expect_eq(cfg_validate(&c), ERR_OK, "%s", err_msg());
}

Test(cfg, aggregation_keys_parse_validate_and_are_shared_by_every_peer) {
    cfg c;
    cfg_defaults(&c);
    cr_assert(c.sparta.aggregate == CFG_AGG_MEAN && c.diloco.aggregate == CFG_AGG_MEAN,
              "the default stays the mean");
    cr_assert(c.diloco.max_norm == 0 && c.net.max_offences == 3);
    cr_assert_float_eq(c.sparta.trim, 0.25f, 0);
    cr_assert_eq(cfg_set(&c, "sparta.aggregate=trimmed_mean"), ERR_OK, "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "diloco.aggregate=median"), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(cfg_aggregate_str(c.diloco.aggregate), "median");
    cr_assert_eq(cfg_set(&c, "sparta.aggregate=mode"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "sparta.aggregate") &&
                  strstr(err_msg(), "mean|trimmed_mean|median"),
              "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "diloco.trim=0.6"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "diloco.trim"), "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "diloco.max_norm=-1"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "diloco.max_norm"), "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "net.max_offences=-1"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "net.max_offences"), "%s", err_msg());
    cr_assert_eq(cfg_validate(&c), ERR_OK, "%s", err_msg());
    // a ring all-reduce only sums
    cr_assert_eq(cfg_set(&c, "sparta.reduce=ring"), ERR_OK);
    cr_assert_eq(cfg_validate(&c), ERR_INVAL);
    cr_assert(strstr(err_msg(), "sparta.aggregate = trimmed_mean needs sparta.reduce = alltoall"),
              "%s", err_msg());
    // gossip sends to F peers: a ring reaches every peer; F is a shared setting
    cfg_defaults(&c);
    cr_assert_eq(cfg_set(&c, "sparta.fanout=256"), ERR_INVAL);
    cr_assert(strstr(err_msg(), "sparta.fanout"), "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "sparta.fanout=4"), ERR_OK);
    cr_assert_eq(cfg_set(&c, "sparta.reduce=ring"), ERR_OK);
    cr_assert_eq(cfg_validate(&c), ERR_INVAL);
    cr_assert(strstr(err_msg(), "sparta.fanout = 4 needs sparta.reduce = alltoall"), "%s",
              err_msg());
    {
        char sh[4096];
        cfg_shared_write(&c, sh, sizeof sh);
        cr_assert(strstr(sh, "sparta.fanout=4\n"), "%s", sh);
    }
    // the rules are shared settings; net.max_offences is each peer's own
    char a[4096], b[4096];
    cfg_defaults(&c);
    cfg_shared_write(&c, a, sizeof a);
    const char *keys[] = {"sparta.aggregate=mean\n", "sparta.trim=", "diloco.aggregate=mean\n",
                          "diloco.trim=", "diloco.max_norm=0\n"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        cr_assert(strstr(a, keys[i]), "no %s in:\n%s", keys[i], a);
    cr_assert(!strstr(a, "max_offences"), "%s", a);
    c.net.max_offences = 0;
    cfg_shared_write(&c, b, sizeof b);
    cr_assert_str_eq(a, b);
    c.diloco.max_norm = 2.5f;
    cfg_shared_write(&c, b, sizeof b);
    cr_assert(strstr(b, "diloco.max_norm=2.5\n"), "%s", b);
}
