#!/bin/sh
# status.sh: two training peers on 127.0.0.1 with net.status_port serve /status and /metrics;
# `spartan status` shows both (exit 0) and names a dead port down (exit 1); a busy status port
# and an out-of-range one stop `spartan train` with a message naming net.status_port. Waits for
# events (steps, links) in bounded loops.
set -u
bin=${SPARTAN_BIN:-bin/spartan}
dir=$(mktemp -d "${TMPDIR:-/tmp}/spartan-status-XXXXXX")
p0=
p1=
cleanup() {
    for p in $p0 $p1; do kill "$p" 2>/dev/null; done
    for p in $p0 $p1; do wait "$p" 2>/dev/null; done
    rm -rf "$dir"
}
trap cleanup EXIT
fail() {
    echo "FAIL status: $*"
    for f in "$dir"/r0.log "$dir"/r1.log; do [ -f "$f" ] && tail -3 "$f"; done
    exit 1
}
"$bin" data prepare --tokenizer char data/tinyshakespeare.txt "$dir/d" >/dev/null 2>&1 ||
    fail "data prepare"
# four free ports: two for the peers, two for their status servers
set -- $(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
l0=$1 l1=$2 s0=$3 s1=$4
peers=127.0.0.1:$l0,127.0.0.1:$l1
for r in 0 1; do
    eval "s=\$s$r"
    "$bin" train configs/tiny.ini --rank $r --peers "$peers" --set data.dir="$dir/d" \
        --set train.out_dir="$dir/r$r" --set train.max_iters=1000000 --set model.n_layer=1 \
        --set model.n_embd=16 --set model.n_head=2 --set model.block_size=16 \
        --set train.batch_size=4 --set train.eval_interval=50 --set train.eval_iters=1 \
        --set train.ckpt_interval=200 --set train.threads=1 --set sparta.p=0.05 \
        --set net.status_port="$s" >"$dir/r$r.log" 2>&1 &
    eval "p$r=\$!"
done

# both answer, linked to each other, with steps > 0
i=0
while [ $i -lt 300 ]; do
    out=$("$bin" status 127.0.0.1:"$s0" 127.0.0.1:"$s1" --timeout 1000 2>&1) && rc=0 || rc=$?
    [ $rc = 0 ] && [ "$(echo "$out" | grep -c ' 1/1 ')" = 2 ] &&
        ! echo "$out" | grep -q ' 0/1000000 ' && break
    sleep 0.1
    i=$((i + 1))
done
[ $i -lt 300 ] || fail "spartan status never showed both peers linked and training: $out"
echo "$out" | head -3

# /status: real values, and the step advances
check=$(python3 - "$s0" "$s1" <<'PY'
import json, sys, time, urllib.request
def get(port, path):
    return urllib.request.urlopen("http://127.0.0.1:%s%s" % (port, path), timeout=5)
for rank, port in enumerate(sys.argv[1:]):
    r = get(port, "/status")
    assert r.headers["Access-Control-Allow-Origin"] == "*", "no CORS header"
    a = json.load(r)
    for k in ("member", "rank", "world", "step", "loss", "tok_s", "peers", "bytes_sent",
              "bytes_recv", "epoch", "metrics", "history"):
        assert k in a and a[k] is not None, "missing %s: %r" % (k, a)
    assert a["rank"] == rank and a["world"] == 2 and a["peers"] == 1, a
    assert len(a["history"]["step"]) > 0 and a["loss"] > 0 and a["tok_s"] > 0, a
    assert "sparta_rounds_done" in a["metrics"], a["metrics"]
    deadline = time.time() + 30
    while time.time() < deadline:
        b = json.load(get(port, "/status"))
        if b["step"] > a["step"] and b["bytes_sent"] > 0 and b["val_loss"] is not None:
            break
        time.sleep(0.05)
    else:
        raise SystemExit("rank %d: step stuck at %d, or nothing sent: %r" % (rank, a["step"], b))
    m = get(port, "/metrics").read().decode()
    names = {}
    for line in m.splitlines():
        if line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        names[name.split("{")[0]] = float(value)
    for k in ("spartan_train_step", "spartan_train_loss", "spartan_net_bytes_sent_total",
              "spartan_sparta_rounds_done", "spartan_net_peers_connected"):
        assert k in names, "/metrics lacks %s" % k
    assert names["spartan_train_step"] >= b["step"] and names["spartan_net_peers_connected"] == 1
print("ok")
PY
) || fail "/status or /metrics: $check"

# a dead port is down, and the exit status says so
out=$("$bin" status 127.0.0.1:"$s0" 127.0.0.1:"$l0" 127.0.0.1:1 --timeout 1000 2>&1) && rc=0 || rc=$?
[ $rc = 1 ] || fail "spartan status with a dead peer exited $rc: $out"
echo "$out" | grep -q "^127.0.0.1:1 *down: .*onnect" || fail "the dead port is not down: $out"
echo "$out" | grep -q "^127.0.0.1:$l0 *down: " || fail "a non-status port is not down: $out"
# --watch without a terminal: plain blocks
out=$("$bin" status 127.0.0.1:"$s0" --watch --interval 100 --count 2 2>&1) ||
    fail "spartan status --watch: $out"
[ "$(echo "$out" | grep -c '^peer ')" = 2 ] || fail "--watch --count 2 printed: $out"

# a busy status port, an out-of-range one
out=$("$bin" train configs/tiny.ini --set data.dir="$dir/d" --set train.out_dir="$dir/r2" \
    --set net.status_port="$s0" 2>&1) && rc=0 || rc=$?
[ $rc = 1 ] && echo "$out" | grep -q "net.status_port: cannot listen on 127.0.0.1:$s0: Address already in use" ||
    fail "busy status port: exit $rc: $out"
out=$("$bin" train configs/tiny.ini --set net.status_port=65536 2>&1) && rc=0 || rc=$?
[ $rc = 2 ] && echo "$out" | grep -q "net.status_port: 65536 is out of range" ||
    fail "bad status port: exit $rc: $out"

for p in $p0 $p1; do kill -TERM "$p"; done
for p in $p0 $p1; do wait "$p" || fail "a peer did not exit cleanly on SIGTERM"; done
p0= p1=
echo "PASS status: two peers' /status and /metrics, spartan status up and down, port errors"
