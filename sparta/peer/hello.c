// hello.c: the settings peers must share and the start-up report (see hello.h). The texts are
// "key=value" lines; the comparison is by key, so a peer of a newer build with an extra key is
// named with it rather than misread.
#include "sparta/peer/hello.h"

#include <stdio.h>
#include <string.h>

#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"

void hello_text(const cfg *c, int world, char *buf, size_t n) {
    ASSERT(buf != NULL && n >= 256);
    size_t len = cfg_shared_write(c, buf, n);
    snprintf(buf + len, n - len, "world=%d\n", world);
}

// find_value returns the value of key in text (a pointer into text, length in *vn), or NULL.
static const char *find_value(const char *text, const char *key, size_t kn, size_t *vn) {
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        size_t ln = end ? (size_t)(end - line) : strlen(line);
        if (ln > kn && line[kn] == '=' && !strncmp(line, key, kn)) {
            *vn = ln - kn - 1;
            return line + kn + 1;
        }
        if (!end) break;
        line = end + 1;
    }
    return NULL;
}

// diff_one compares the value of one key (key[0 .. kn)) in a and b; on a difference it appends
// "key = <b's> there, <a's> here" to out (a_is_mine: a is ours) and returns 1.
static int diff_one(const char *key, size_t kn, const char *a, const char *b, int a_is_mine,
                    char *out, size_t n) {
    size_t an = 0, bn = 0;
    const char *av = find_value(a, key, kn, &an), *bv = find_value(b, key, kn, &bn);
    if (av && bv && an == bn && !memcmp(av, bv, an)) return 0;
    const char *mine = a_is_mine ? av : bv, *theirs = a_is_mine ? bv : av;
    size_t mn = a_is_mine ? an : bn, tn = a_is_mine ? bn : an;
    size_t len = strlen(out);
    snprintf(out + len, n - len, "%s%.*s = %.*s there, %.*s here", len ? "; " : "", (int)kn, key,
             theirs ? (int)tn : 6, theirs ? theirs : "(none)", mine ? (int)mn : 6,
             mine ? mine : "(none)");
    return 1;
}

int hello_diff(const char *mine, const char *theirs, char *out, size_t n) {
    ASSERT(mine != NULL && theirs != NULL && out != NULL && n > 0);
    out[0] = 0;
    int diffs = 0;
    for (int pass = 0; pass < 2; pass++) { // our keys, then keys only they have
        const char *text = pass ? theirs : mine, *other = pass ? mine : theirs;
        for (const char *line = text; *line;) {
            const char *end = strchr(line, '\n'), *eq = strchr(line, '=');
            size_t ln = end ? (size_t)(end - line) : strlen(line);
            if (eq && (size_t)(eq - line) < ln) {
                size_t kn = (size_t)(eq - line), vn;
                if (!pass)
                    diffs += diff_one(line, kn, mine, theirs, 1, out, n);
                else if (!find_value(other, line, kn, &vn))
                    diffs += diff_one(line, kn, other, text, 1, out, n);
            }
            if (!end) break;
            line = end + 1;
        }
    }
    return diffs;
}

int hello_wait(peer_group *g, int world, int timeout_ms, int allow_alone, const char *who,
               int *n_ok) {
    ASSERT(g != NULL && who != NULL);
    if (n_ok) *n_ok = 0;
    if (world < 2) return ERR_OK;
    double t0 = sys_now_ms();
    // a peer joining a running group waits for every member already there too
    int members = peer_view_ranks(g, NULL, 0);
    if (members > world) world = members;
    // returns early when every missing peer refused us or was here and left
    int have = peer_wait_start(g, world, timeout_ms);
    peer_view v;
    peer_get_view(g, &v);
    int ok = 0, mismatch = -1, left = 0;
    char mismatch_why[600] = "", mismatch_name[PEER_ADDR_MAX] = "";
    for (int i = 0; i < v.n; i++) {
        int p = v.m[i].rank;
        if (p == v.self) continue;
        if (peer_connected(g, p)) {
            ok++;
            continue;
        }
        const char *name = v.m[i].addr; // as net.peers or the group gave it
        char why[600];
        int kind = peer_diagnose(g, p, why, sizeof why);
        left += kind == PEER_DIAG_LEFT;
        if (kind == PEER_DIAG_MISMATCH) {
            if (mismatch < 0) {
                mismatch = p;
                snprintf(mismatch_why, sizeof mismatch_why, "%s", why);
                snprintf(mismatch_name, sizeof mismatch_name, "%s", name);
            }
            LOG_E(who, "peer %d (%s) runs another configuration: %s", p, name, why);
        } else {
            LOG_W(who, "peer %d (%s) not connected: %s", p, name, why);
        }
    }
    if (n_ok) *n_ok = ok;
    if (have == world) LOG_I(who, "all %d peers connected after %.0f ms", world, sys_now_ms() - t0);
    if (ok == 0 && mismatch >= 0 && !allow_alone) {
        return err_set(ERR_PEER,
                       "peer %d (%s) runs another configuration (%s). Every peer of a run needs "
                       "the same [model], train.seed, train.mode and exchange settings",
                       mismatch, mismatch_name, mismatch_why);
    }
    if (ok == 0 && left > 0) { // they were here: the run is real, they may have finished
        LOG_W(who, "every peer that was connected has left; going on alone until one comes back");
        return ERR_OK;
    }
    if (ok == 0 && !allow_alone)
        return err_set(ERR_PEER, "no peer could be reached (the reasons are above); set "
                                 "net.allow_alone = true to train alone anyway");
    if (ok < world - 1)
        LOG_W(who, "starting with %d of %d other peers; the others are picked up when they come",
              ok, world - 1);
    return ERR_OK;
}
