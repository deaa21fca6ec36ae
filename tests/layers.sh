#!/bin/sh
# layers.sh: scripts/check-layers passes on the tree as it is, and fails, naming the file and
# line, when a copy of the tree gets one planted mistake: an include that goes up a layer, a header
# named without its folder, a header that does not exist, another folder's *_impl.h, nng or the
# BLAS header outside its one place, a platform-specific call outside train/base/sys.c, a folder
# with no row, and a table row that makes a cycle.
set -eu
tmp=$(mktemp -d "${TMPDIR:-/tmp}/spartan-layers-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "FAIL layers: $*"
    exit 1
}
out=$(sh scripts/check-layers 2>&1) || fail "the tree itself breaks the layers: $out"

fresh() {
    rm -rf "$tmp/t"
    mkdir -p "$tmp/t/scripts"
    cp -R train data sparta diloco infer tests "$tmp/t/"
    cp scripts/check-layers "$tmp/t/scripts/"
}
# plant NAME FILE LINE WANT: append LINE to FILE in a fresh copy; check-layers must fail with
# FILE:N and WANT in its output.
plant() {
    fresh
    printf '%s\n' "$3" >>"$tmp/t/$2"
    n=$(wc -l <"$tmp/t/$2" | tr -d ' ')
    if out=$(sh "$tmp/t/scripts/check-layers" "$tmp/t" 2>&1); then
        fail "$1: planted '$3' in $2 and check-layers passed"
    fi
    echo "$out" | grep -qF "$2:$n: " || fail "$1: the output does not name $2:$n: $out"
    echo "$out" | grep -qF "$4" || fail "$1: the output does not say '$4': $out"
    echo "ok $1: $(echo "$out" | head -1)"
}
plant "upward include" data/tok.c '#include "sparta/sparta.h"' "data (layer 1) may not include sparta (layer 3)"
plant "model includes a command" train/gpt.c '#include "train/cmd/cmds.h"' "may not include train/cmd"
plant "bare header name" sparta/select.c '#include "err.h"' 'name the header from the root ("train/base/err.h")'
plant "missing header" diloco/diloco.c '#include "diloco/nothing.h"' "no such file"
plant "private header" train/cmd/serve_cmd.c '#include "infer/srv_impl.h"' "private to infer/"
plant "nng outside the peer layer" sparta/sparta.c '#include <nng/nng.h>' "only the peer layer"
plant "BLAS outside ops.c" train/gpt.c '#include <cblas.h>' "only train/ops.c"
plant "a platform #ifdef outside sys.c" data/tok.c '#ifdef __linux__' "the one platform file"
plant "fsync outside sys.c" train/ckpt.c '    fsync(fd);' "the one platform file"
plant "a Linux header outside sys.c" infer/kv.c '#include <sys/epoll.h>' "the one platform file"

fresh
mkdir "$tmp/t/train/extra"
printf '#include "train/base/err.h"\n' >"$tmp/t/train/extra/x.c"
if out=$(sh "$tmp/t/scripts/check-layers" "$tmp/t" 2>&1); then fail "a folder without a row passed"; fi
echo "$out" | grep -qF "folder train/extra has no row" || fail "unlisted folder: $out"
echo "ok unlisted folder"

fresh
# a cycle: data may now include train, which includes data
sed 's/^data             1      train\/base$/data             1      train\/base train/' \
    scripts/check-layers >"$tmp/t/scripts/check-layers"
cmp -s scripts/check-layers "$tmp/t/scripts/check-layers" && fail "the cycle was not planted"
if out=$(sh "$tmp/t/scripts/check-layers" "$tmp/t" 2>&1); then fail "a cycle in the table passed"; fi
echo "$out" | grep -qF "data (layer 1) may include train (layer 2)" || fail "cycle: $out"
echo "ok cycle in the table"
echo "PASS layers"
