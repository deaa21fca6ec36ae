#!/bin/sh
# fuzz_replay.sh: every fuzz harness of tests/fuzz/, linked with the plain driver
# tests/fuzz/replay.c (no libFuzzer: gcc, CI, macOS), replays its committed corpus
# (tests/fuzz/corpus/<name>/) and the crash files kept from earlier runs
# (tests/fuzz/crashes/<name>/) without crashing. A harness without a binary in $FUZZ_BIN_DIR
# (make test: build/<variant>/tests/fuzz) or without seeds fails too. On a crash the harness
# runs again naming each input, so that the culprit is the last one shown.
set -u
# As in scripts/run-fuzz (under make sanitize): an allocation too big for ASan gets NULL, as from
# malloc in production, where HDF5 fails cleanly on it.
ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}allocator_may_return_null=1
export ASAN_OPTIONS
dir=${FUZZ_BIN_DIR:-build/rel/tests/fuzz}
fail=0
n=0
for src in tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    bin=$dir/$name
    corpus=tests/fuzz/corpus/$name
    crashes=tests/fuzz/crashes/$name
    if [ ! -x "$bin" ]; then
        echo "FAIL fuzz_replay: $bin is not built (make $bin)"
        fail=1
        continue
    fi
    if [ -z "$(ls "$corpus" 2>/dev/null)" ]; then
        echo "FAIL fuzz_replay: $name has no seeds in $corpus/"
        fail=1
        continue
    fi
    set -- "$corpus"
    [ -d "$crashes" ] && set -- "$@" "$crashes"
    if out=$("$bin" "$@" 2>&1); then
        echo "$name: $out"
        n=$((n + 1))
    else
        echo "FAIL fuzz_replay: $name crashed on the committed inputs:"
        FUZZ_REPLAY_VERBOSE=1 "$bin" "$@" 2>&1 | tail -30
        fail=1
    fi
done
[ "$fail" = 0 ] && echo "fuzz_replay: $n harnesses replayed their corpus"
exit "$fail"
