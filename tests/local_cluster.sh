#!/bin/sh
# local_cluster.sh: scripts/local-cluster shows live progress, one line per peer, while its peers
# train, and Ctrl-C (SIGINT) stops them all cleanly with a summary. Waits for events (a progress
# line in the output), bounded in time.
set -u
bin=${SPARTAN_BIN:-bin/spartan}
dir=$(mktemp -d "${TMPDIR:-/tmp}/spartan-lc-XXXXXX")
trap 'rm -rf "$dir"' EXIT
"$bin" data prepare --tokenizer char data/tinyshakespeare.txt "$dir/d" >/dev/null 2>&1 ||
    { echo "FAIL local_cluster: data prepare"; exit 1; }
LOCAL_CLUSTER_PROGRESS_S=0.3 SPARTAN_BIN=$bin python3 scripts/local-cluster 2 configs/tiny.ini \
    --runs "$dir" --name lc --set data.dir="$dir/d" --set train.max_iters=100000 \
    --set model.n_layer=1 --set model.n_embd=16 --set model.n_head=2 --set model.block_size=16 \
    --set train.batch_size=4 --set train.eval_interval=0 >"$dir/out" 2>&1 &
pid=$!
i=0
while ! grep -q "^  rank 1: step [0-9]*/100000 loss" "$dir/out" && [ $i -lt 600 ]; do
    sleep 0.1; i=$((i + 1))
done
if ! grep -q "^  rank 0: step [0-9]*/100000 loss .* tok/s .* rounds" "$dir/out"; then
    kill -KILL $pid 2>/dev/null; cat "$dir/out"; echo "FAIL local_cluster: no progress lines"; exit 1
fi
kill -INT $pid
i=0
while kill -0 $pid 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
if kill -0 $pid 2>/dev/null; then
    kill -KILL $pid; cat "$dir/out"; echo "FAIL local_cluster: Ctrl-C did not stop it"; exit 1
fi
wait $pid
rc=$?
if [ $rc != 0 ] || ! grep -q "^rank 1: exit 0 step" "$dir/out"; then
    cat "$dir/out"; echo "FAIL local_cluster: exit $rc or no summary"; exit 1
fi
echo "PASS local_cluster: $(grep -c '^  rank' "$dir/out") progress lines, clean Ctrl-C"
