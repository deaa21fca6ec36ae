#!/bin/sh
# mpirun.sh: a real OpenMPI `mpirun` starts 3 spartan peers on 127.0.0.1 that train together.
# The launcher gives each its rank (OMPI_COMM_WORLD_RANK) and the world size
# (OMPI_COMM_WORLD_SIZE); every peer gets the same `--join` address, which rank 0 listens on and
# founds the group at. With p = 1 synchronous SPARTA every peer completes all 3 rounds with the
# others. Bounded: mpirun's own --timeout, and the peers' round timeout.
set -u
bin=${SPARTAN_BIN:-bin/spartan}
command -v mpirun >/dev/null 2>&1 || { echo "SKIP mpirun: mpirun not installed (scripts/install-deps test installs openmpi-bin)"; exit 77; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/spartan-mpi-XXXXXX")
trap 'rm -rf "$dir"' EXIT
"$bin" data prepare --tokenizer char data/tinyshakespeare.txt "$dir/d" >/dev/null 2>&1 ||
    { echo "FAIL mpirun: data prepare"; exit 1; }
# a launcher's bad world size is named, not guessed
out=$(env -u OMPI_COMM_WORLD_SIZE -u SPARTAN_WORLD_SIZE WORLD_SIZE=three "$bin" train configs/tiny.ini \
    --join 127.0.0.1:1 2>&1)
if [ $? != 2 ] || ! echo "$out" | grep -q "WORLD_SIZE='three' is not a number of peers"; then
    echo "$out"; echo "FAIL mpirun: a bad WORLD_SIZE was not named"; exit 1
fi
port=$(python3 scripts/local-cluster --ports 1) || { echo "FAIL mpirun: no free port"; exit 1; }
root=
[ "$(id -u)" = 0 ] && root=--allow-run-as-root
# each rank writes its own folder: the rank is only known inside the started process
# shellcheck disable=SC2016
mpirun $root --oversubscribe --timeout 120 -np 3 sh -c 'exec "$0" train configs/tiny.ini \
    --join 127.0.0.1:'"$port"' --set data.dir='"$dir"'/d --set train.out_dir='"$dir"'/r$OMPI_COMM_WORLD_RANK \
    --set model.n_layer=1 --set model.n_embd=16 --set model.n_head=2 --set model.block_size=16 \
    --set train.batch_size=4 --set train.eval_interval=0 --set train.max_iters=3 \
    --set train.threads=1 --set sparta.p=1 --set sparta.sync=true --set sparta.timeout_ms=30000 \
    2>"'"$dir"'/log$OMPI_COMM_WORLD_RANK"' "$bin" >"$dir/out" 2>&1
rc=$?
if [ $rc != 0 ]; then
    cat "$dir/out" "$dir"/log*; echo "FAIL mpirun: exit $rc"; exit 1
fi
for r in 0 1 2; do
    log="$dir/log$r"
    if ! grep -q "train model .* rank=$r/3" "$log" || ! grep -q "all 3 peers connected" "$log"; then
        cat "$log"; echo "FAIL mpirun: rank $r did not train as rank $r of 3 with the others"; exit 1
    fi
    done_col=$(head -1 "$dir/r$r/metrics.csv" | tr ',' '\n' | grep -n '^sparta_rounds_done$' | cut -d: -f1)
    rounds=$(tail -1 "$dir/r$r/metrics.csv" | cut -d, -f"$done_col")
    if [ "$rounds" != 3 ]; then
        cat "$log"; echo "FAIL mpirun: rank $r completed $rounds of 3 rounds"; exit 1
    fi
done
grep -q "founds the group at 127.0.0.1:$port" "$dir/log0" ||
    { cat "$dir/log0"; echo "FAIL mpirun: rank 0 did not found the group"; exit 1; }
echo "PASS mpirun: 3 ranks from mpirun joined at one address and completed 3 of 3 rounds each"
