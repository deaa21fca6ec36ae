// args_test.c: the option-table parser: every kind, both value syntaxes, ranges, missing values,
// unknown options, the positional limit, repeat-callback order and --help; then each converted
// subcommand run as a process, for exit status 2 on a bad command line and 0 on --help.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test_util.h"
#include "train/base/args.h"
#include "train/base/err.h"

TestSuite(args, .timeout = 30);

// opts_fx is one table with every kind, and the destinations it writes.
typedef struct {
    int quiet, tokens;
    long long seed;
    double top_p;
    const char *out;
    const char *seen[8]; // --set values in the order the callback saw them
    int n_seen;
    const char *pos[2];
    int n_pos;
    args_opt opts[6];
} opts_fx;

static int record_set(void *ctx, const char *v) {
    opts_fx *f = ctx;
    if (!strcmp(v, "fail")) return err_set(ERR_FORMAT, "callback refused '%s'", v);
    cr_assert_lt(f->n_seen, 8);
    f->seen[f->n_seen++] = v;
    return ERR_OK;
}

static void fx_init(opts_fx *f) {
    memset(f, 0, sizeof *f);
    f->tokens = 200;
    f->seed = 1;
    f->top_p = 0.5;
    f->out = "default";
    const args_opt opts[6] = {
        {"--quiet", "-q", ARGS_FLAG, &f->quiet, 0, 0, NULL, NULL, "no progress"},
        {"--tokens", NULL, ARGS_INT, &f->tokens, 0, 1e7, NULL, "N", "tokens to generate"},
        {"--seed", NULL, ARGS_I64, &f->seed, 0, 1e18, NULL, "S", "random seed"},
        {"--top-p", NULL, ARGS_DOUBLE, &f->top_p, 0, 1, NULL, "P", "nucleus mass"},
        {"--output", "-o", ARGS_STR, &f->out, 0, 0, NULL, "FILE", "output path\nsecond line"},
        {"--set", NULL, ARGS_REPEAT, f, 0, 0, record_set, "K=V", "override (repeatable)"},
    };
    memcpy(f->opts, opts, sizeof opts);
}

// parse_v runs args_parse on a NULL-terminated list of arguments (argv[0] is added).
static int parse_v(opts_fx *f, const char **args) {
    char *argv[32] = {"cmd"};
    int argc = 1;
    while (args[argc - 1]) {
        cr_assert_lt(argc, 32);
        argv[argc] = (char *)args[argc - 1];
        argc++;
    }
    return args_parse(argc, argv, f->opts, ARGS_COUNT(f->opts), f->pos, 2, &f->n_pos);
}
#define PARSE(f, ...) parse_v((f), (const char *[]){__VA_ARGS__, NULL})

// EXPECT_INVAL checks ERR_INVAL and that the message contains want.
#define EXPECT_INVAL(f, want, ...)                                                      \
    do {                                                                                \
        int rc_ = PARSE(f, __VA_ARGS__);                                                \
        cr_assert_eq(rc_, ERR_INVAL, "rc %d, msg '%s'", rc_, err_msg());                \
        cr_assert(strstr(err_msg(), want), "message '%s' lacks '%s'", err_msg(), want); \
    } while (0)

Test(args, absent_options_keep_their_defaults) {
    opts_fx f;
    fx_init(&f);
    cr_assert_eq(PARSE(&f, "only.txt"), ERR_OK, "%s", err_msg());
    cr_assert_eq(f.quiet, 0);
    cr_assert_eq(f.tokens, 200);
    cr_assert_eq(f.seed, 1);
    cr_assert_float_eq(f.top_p, 0.5, 0);
    cr_assert_str_eq(f.out, "default");
    cr_assert_eq(f.n_seen, 0);
    cr_assert_eq(f.n_pos, 1);
    cr_assert_str_eq(f.pos[0], "only.txt");
}

Test(args, every_kind_is_filled_with_a_space_separated_value) {
    opts_fx f;
    fx_init(&f);
    int rc = PARSE(&f, "--quiet", "--tokens", "42", "--seed", "123456789012345678", "--top-p",
                   "0.25", "--output", "x.bin", "--set", "a=1", "in");
    cr_assert_eq(rc, ERR_OK, "%s", err_msg());
    cr_assert_eq(f.quiet, 1);
    cr_assert_eq(f.tokens, 42);
    cr_assert_eq(f.seed, 123456789012345678LL);
    cr_assert_float_eq(f.top_p, 0.25, 0);
    cr_assert_str_eq(f.out, "x.bin");
    cr_assert_eq(f.n_seen, 1);
    cr_assert_str_eq(f.seen[0], "a=1");
    cr_assert_eq(f.n_pos, 1);
    cr_assert_str_eq(f.pos[0], "in");
}

Test(args, equals_syntax_gives_the_same_values_and_allows_empty_strings) {
    opts_fx f;
    fx_init(&f);
    int rc = PARSE(&f, "--tokens=7", "--seed=0", "--top-p=1", "--output=a=b", "--set=k=v");
    cr_assert_eq(rc, ERR_OK, "%s", err_msg());
    cr_assert_eq(f.tokens, 7);
    cr_assert_eq(f.seed, 0);
    cr_assert_float_eq(f.top_p, 1.0, 0);
    cr_assert_str_eq(f.out, "a=b", "only the first '=' splits");
    cr_assert_str_eq(f.seen[0], "k=v");
    cr_assert_eq(PARSE(&f, "--output="), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(f.out, "");
}

Test(args, short_aliases_take_values_both_ways) {
    opts_fx f;
    fx_init(&f);
    cr_assert_eq(PARSE(&f, "-q", "-o", "one"), ERR_OK, "%s", err_msg());
    cr_assert_eq(f.quiet, 1);
    cr_assert_str_eq(f.out, "one");
    cr_assert_eq(PARSE(&f, "-o=two"), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(f.out, "two");
}

Test(args, the_last_occurrence_wins_and_values_may_start_with_a_dash) {
    opts_fx f;
    fx_init(&f);
    cr_assert_eq(PARSE(&f, "--output", "a", "--output", "-b", "--tokens", "3", "--tokens=4"),
                 ERR_OK, "%s", err_msg());
    cr_assert_str_eq(f.out, "-b");
    cr_assert_eq(f.tokens, 4);
    cr_assert_eq(f.n_pos, 0);
}

Test(args, integers_outside_the_range_or_malformed_are_rejected_by_name) {
    opts_fx f;
    fx_init(&f);
    EXPECT_INVAL(&f, "--tokens: 'abc' is not an integer in [0, 10000000]", "--tokens", "abc");
    EXPECT_INVAL(&f, "'2.5' is not an integer", "--tokens", "2.5");
    EXPECT_INVAL(&f, "'12x'", "--tokens=12x");
    EXPECT_INVAL(&f, "''", "--tokens=");
    EXPECT_INVAL(&f, "'-1'", "--tokens", "-1");
    EXPECT_INVAL(&f, "'10000001'", "--tokens", "10000001");
    EXPECT_INVAL(&f, "'99999999999999999999'", "--tokens", "99999999999999999999");
    EXPECT_INVAL(&f, "--seed: '1000000000000000001' is not an integer in [0, 1000000000000000000]",
                 "--seed", "1000000000000000001");
    cr_assert_eq(f.tokens, 200, "a rejected value is not stored");
    cr_assert_eq(PARSE(&f, "--tokens", "10000000", "--seed", "1000000000000000000"), ERR_OK);
    cr_assert_eq(f.tokens, 10000000, "the upper bound is inclusive");
    cr_assert_eq(f.seed, 1000000000000000000LL);
    cr_assert_eq(PARSE(&f, "--tokens", "0"), ERR_OK, "%s", err_msg());
    cr_assert_eq(f.tokens, 0, "the lower bound is inclusive");
}

Test(args, doubles_outside_the_range_or_not_finite_are_rejected_by_name) {
    opts_fx f;
    fx_init(&f);
    EXPECT_INVAL(&f, "--top-p: '1.5' is not a number in [0, 1]", "--top-p", "1.5");
    EXPECT_INVAL(&f, "'-0.1'", "--top-p=-0.1");
    EXPECT_INVAL(&f, "'nan'", "--top-p", "nan");
    EXPECT_INVAL(&f, "'inf'", "--top-p", "inf");
    EXPECT_INVAL(&f, "'0.5x'", "--top-p", "0.5x");
    EXPECT_INVAL(&f, "''", "--top-p", "");
    cr_assert_float_eq(f.top_p, 0.5, 0, "a rejected value is not stored");
    cr_assert_eq(PARSE(&f, "--top-p", "1e-1"), ERR_OK, "%s", err_msg());
    cr_assert_float_eq(f.top_p, 0.1, 1e-15);
}

Test(args, a_missing_value_names_the_option) {
    opts_fx f;
    fx_init(&f);
    EXPECT_INVAL(&f, "--output needs a value", "in", "--output");
    EXPECT_INVAL(&f, "--output needs a value", "-o");
    EXPECT_INVAL(&f, "--tokens needs a value", "--tokens");
    EXPECT_INVAL(&f, "--set needs a value", "--set");
    cr_assert_eq(f.n_seen, 0);
}

Test(args, unknown_options_and_flag_values_are_rejected) {
    opts_fx f;
    fx_init(&f);
    EXPECT_INVAL(&f, "unknown option '--bogus'", "--bogus");
    EXPECT_INVAL(&f, "unknown option '--bogus'", "--bogus=3");
    EXPECT_INVAL(&f, "unknown option '-x'", "-x");
    EXPECT_INVAL(&f, "unknown option '--token'", "--token", "3");  // no prefix matching
    EXPECT_INVAL(&f, "unknown option '--tokensx'", "--tokensx=3"); // nor suffix
    EXPECT_INVAL(&f, "--quiet takes no value", "--quiet=1");
    cr_assert_eq(f.quiet, 0);
}

Test(args, positionals_beyond_the_limit_are_unexpected) {
    opts_fx f;
    fx_init(&f);
    cr_assert_eq(PARSE(&f, "a", "-q", "b"), ERR_OK, "%s", err_msg());
    cr_assert_eq(f.n_pos, 2);
    cr_assert_str_eq(f.pos[0], "a");
    cr_assert_str_eq(f.pos[1], "b");
    EXPECT_INVAL(&f, "unexpected argument 'c'", "a", "b", "c");
    cr_assert_eq(PARSE(&f, "-", "--", "--tokens"), ERR_OK, "%s", err_msg());
    cr_assert_eq(f.n_pos, 2, "'-' is a positional, and '--' ends the options");
    cr_assert_str_eq(f.pos[0], "-");
    cr_assert_str_eq(f.pos[1], "--tokens");
    cr_assert_eq(f.tokens, 200);
    char *argv[] = {"cmd", "x"};
    int n = -1;
    cr_assert_eq(args_parse(2, argv, f.opts, ARGS_COUNT(f.opts), NULL, 0, &n), ERR_INVAL);
    cr_assert_str_eq(err_msg(), "unexpected argument 'x'");
    cr_assert_eq(n, 0);
}

Test(args, repeat_callbacks_run_in_order_and_their_errors_pass_through) {
    opts_fx f;
    fx_init(&f);
    int rc = PARSE(&f, "--set", "a=1", "pos", "--set=b=2", "--tokens", "5", "--set", "a=3");
    cr_assert_eq(rc, ERR_OK, "%s", err_msg());
    cr_assert_eq(f.n_seen, 3);
    cr_assert_str_eq(f.seen[0], "a=1");
    cr_assert_str_eq(f.seen[1], "b=2");
    cr_assert_str_eq(f.seen[2], "a=3");
    fx_init(&f);
    rc = PARSE(&f, "--set", "x=1", "--set", "fail", "--set", "y=2");
    cr_assert_eq(rc, ERR_FORMAT, "the callback's own code comes back");
    cr_assert_str_eq(err_msg(), "callback refused 'fail'");
    cr_assert_eq(f.n_seen, 1, "parsing stops at the failing occurrence");
}

Test(args, help_is_reported_distinctly_unless_it_is_a_value) {
    opts_fx f;
    fx_init(&f);
    cr_assert_eq(PARSE(&f, "--help"), ARGS_HELP);
    cr_assert_eq(PARSE(&f, "a", "--tokens", "3", "-h", "--bogus"), ARGS_HELP);
    cr_assert_eq(PARSE(&f, "--output", "--help"), ERR_OK, "%s", err_msg());
    cr_assert_str_eq(f.out, "--help", "an option's value is never taken as --help");
    EXPECT_INVAL(&f, "unknown option '--bogus'", "--bogus", "--help");
    cr_assert_neq(ARGS_HELP, ERR_OK);
    for (int code = ERR_OK; code < ERR_COUNT_; code++)
        cr_assert_neq(ARGS_HELP, code, "ARGS_HELP collides with %s", err_str(code));
}

Test(args, print_table_aligns_aliases_metavars_and_help_lines) {
    opts_fx f;
    fx_init(&f);
    char *text = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&text, &n);
    cr_assert(m);
    args_print_table(m, f.opts, ARGS_COUNT(f.opts));
    fclose(m);
    // The widest entry is "  -o, --output FILE" (19 wide); help starts two spaces after it.
    const char *want = "  -q, --quiet        no progress\n"
                       "  --tokens N         tokens to generate\n"
                       "  --seed S           random seed\n"
                       "  --top-p P          nucleus mass\n"
                       "  -o, --output FILE  output path\n"
                       "                     second line\n"
                       "  --set K=V          override (repeatable)\n"
                       "  -h, --help         print this help and exit\n";
    cr_assert_str_eq(text, want);
    free(text);
}

// cli_case is one run of bin/spartan: its arguments, the exit status and a piece of the output.
typedef struct {
    const char *args;
    int status;
    const char *want;
} cli_case;

Test(args, every_subcommand_exits_2_on_a_bad_command_line_and_0_on_help) {
    static const cli_case cases[] = {
        {"train configs/tiny.ini --bogus", 2, "unknown option '--bogus'"},
        {"train configs/tiny.ini configs/tiny.ini", 2, "more than one config given"},
        {"train configs/tiny.ini --set", 2, "--set needs a value"},
        {"train --help", 0, "--resume CKPT|DIR"},
        {"eval c.h5 --data s.bin --seq-len 0", 2, "--seq-len: '0' is not an integer"},
        {"eval c.h5 extra --data s.bin", 2, "unexpected argument 'extra'"},
        {"eval -h", 0, "--max-windows M"},
        {"sample c.h5 --tokens abc", 2,
         "spartan sample: --tokens: 'abc' is not an integer in [0, 10000000]"},
        {"sample c.h5 --top-p=2", 2, "--top-p: '2' is not a number in [0, 1]"},
        {"sample --help", 0, "--temperature X"},
        {"data prepare --tokenizer char --val-fraction 1 a b", 2, "--val-fraction"},
        {"data prepare --tokenizer bpe a b", 2, "--tokenizer must be char or gpt2"},
        {"data prepare --tokenizer char a", 2, "need INPUT and OUTDIR"},
        {"data fetch http://127.0.0.1:9/x --sha256 00 -o f --retries 101", 2,
         "--retries: '101' is not an integer in [0, 100]"},
        {"data fetch http://127.0.0.1:9/x --sha256 00 --output", 2, "--output needs a value"},
        {"data fetch --help", 0, "-o, --output FILE"},
        {"plot", 2, "need a run folder"},
        {"plot a b", 2, "unexpected argument 'b'"},
        {"plot --help", 0, "-o, --output OUT.png"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const cli_case *c = &cases[i];
        char cmd[1024], *out = NULL;
        snprintf(cmd, sizeof cmd, "%s %s", tu_spartan(), c->args);
        int rc = tu_run(cmd, 20, &out);
        cr_assert_eq(rc, c->status, "spartan %s: status %d\n%s", c->args, rc, out);
        cr_assert(out && strstr(out, c->want), "spartan %s: output lacks '%s':\n%s", c->args,
                  c->want, out);
        free(out);
    }
}

// err_set may take err_msg() among its arguments (the usual way to wrap an inner error): the
// wrapped message holds the inner one once, whole, also when it fills the buffer.
Test(args, err_set_wraps_the_message_set_before) {
    err_set(ERR_IO, "cannot open '%s'", "x.h5");
    cr_assert_eq(err_set(ERR_FORMAT, "loading: %s", err_msg()), ERR_FORMAT);
    cr_assert_str_eq(err_msg(), "loading: cannot open 'x.h5'");
    cr_assert_eq(err_set(ERR_NET, "step 3: %s (again)", err_msg()), ERR_NET);
    cr_assert_str_eq(err_msg(), "step 3: loading: cannot open 'x.h5' (again)");
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    err_set(ERR_IO, "%s", big);
    err_set(ERR_IO, "outer: %s", err_msg());
    size_t len = strlen(err_msg());
    cr_assert(len > 1000 && len < 1024, "length %zu", len);
    cr_assert_eq(strncmp(err_msg(), "outer: aaaa", 11), 0);
    cr_assert_eq(strspn(err_msg() + 7, "a"), len - 7, "the inner text is garbled");
}
