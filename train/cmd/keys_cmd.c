// keys_cmd.c: `spartan keys`: make a cluster CA, issue peer certificates from it, list them.
#include "train/cmd/keys_cmd.h"

#include <stdio.h>
#include <string.h>

#include "train/base/args.h"
#include "train/base/err.h"
#include "train/base/pki.h"

static void usage(FILE *f, const args_opt *opts, int n) {
    fprintf(f,
            "usage: spartan keys init DIR [--days N] [--name CN]\n"
            "       spartan keys add DIR NAME [--days N]\n"
            "       spartan keys show DIR\n\n"
            "The cluster's certificates for peers that authenticate each other with TLS.\n"
            "init makes the folder (0700) and a CA in it: ca.crt and ca.key (ECDSA P-256).\n"
            "add issues peer NAME a key and a certificate signed by the CA: NAME.key, NAME.crt.\n"
            "show lists every certificate with its expiry and whether the CA signed it.\n"
            "Private keys are written 0600; a key file others can read is refused. Keep\n"
            "ca.key on one machine: a peer needs ca.crt, its own .crt and its own .key.\n\n");
    args_print_table(f, opts, n);
}

static void show_one(void *ctx, const pki_cert_info *c) {
    int *bad = ctx;
    char left[32];
    if (c->days_left < 0)
        snprintf(left, sizeof left, "expired");
    else
        snprintf(left, sizeof left, "%.0f days", c->days_left);
    printf("%-24s %-24s %-22s %-10s %s\n", c->file, c->subject[0] ? c->subject : "?",
           c->not_after[0] ? c->not_after : "?", left,
           c->verified ? (c->is_ca ? "CA" : "ok") : c->problem);
    *bad |= !c->verified;
}

int keys_cmd_main(int argc, char **argv) {
    int days = 0;
    const char *cn = "spartan cluster CA";
    args_opt opts[] = {
        {"--days", NULL, ARGS_INT, &days, 1, 36500, NULL, "N",
         "validity in days [init: 3650, add: 825]"},
        {"--name", NULL, ARGS_STR, &cn, 0, 0, NULL, "CN",
         "init: the CA's name [spartan cluster CA]"},
    };
    const char *pos[3];
    int n_pos = 0;
    int rc = args_parse(argc, argv, opts, ARGS_COUNT(opts), pos, 3, &n_pos);
    if (rc == ARGS_HELP) {
        usage(stdout, opts, ARGS_COUNT(opts));
        return 0;
    }
    const char *verb = n_pos > 0 ? pos[0] : "";
    int want = !strcmp(verb, "add") ? 3 : !strcmp(verb, "init") || !strcmp(verb, "show") ? 2 : 0;
    if (!rc && !want)
        rc = err_set(ERR_INVAL, "%s%s%s: expected init, add or show (see spartan keys --help)",
                     n_pos ? "'" : "", n_pos ? verb : "no action", n_pos ? "'" : "");
    if (!rc && n_pos != want)
        rc = err_set(ERR_INVAL, "keys %s needs %s", verb, want == 3 ? "DIR and NAME" : "DIR");
    if (rc) {
        fprintf(stderr, "spartan keys: %s\n", err_msg());
        return 2;
    }
    const char *dir = pos[1];
    if (!strcmp(verb, "init")) {
        rc = pki_ca_init(dir, cn, days ? days : 3650);
        if (!rc)
            printf("keys: a new CA in %s (ca.crt, ca.key 0600); next: spartan keys add %s NAME\n",
                   dir, dir);
    } else if (!strcmp(verb, "add")) {
        rc = pki_issue(dir, pos[2], days ? days : 825);
        if (!rc)
            printf("keys: %s/%s.crt and %s/%s.key (0600), signed by %s/ca.crt\n", dir, pos[2], dir,
                   pos[2], dir);
    } else {
        int bad = 0;
        printf("%-24s %-24s %-22s %-10s %s\n", "FILE", "NAME", "EXPIRES", "LEFT", "STATUS");
        int n = pki_list(dir, show_one, &bad);
        if (n < 0) rc = -n;
        if (!rc && bad) {
            fprintf(stderr, "spartan keys: %s: a certificate above is not valid\n", dir);
            return 1;
        }
    }
    if (rc) {
        fprintf(stderr, "spartan keys: %s\n", err_msg());
        return 1;
    }
    return 0;
}
