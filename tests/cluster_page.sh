#!/bin/sh
# cluster_page.sh: end-to-end test of the cluster page at GET / of a training peer's status
# server. Two peers train together on 127.0.0.1 with net.status_port; headless Chromium opens
# /?peers=both, lets the page poll them (a virtual-time budget, as long as its fetches take), and
# the dumped DOM must show both peers up with steps > 0 and a loss curve with points for each.
# Saves a screenshot (PNG). Skips (exit 77) with a reason when Chromium is absent.
#   env: SPARTAN_BIN, CHROMIUM, CLUSTER_PNG, KEEP_TMP
set -u
bin=${SPARTAN_BIN:-bin/spartan}
chromium=${CHROMIUM:-/usr/bin/chromium}
png=${CLUSTER_PNG:-build/cluster_page/cluster-page.png}
if [ ! -x "$chromium" ]; then
    echo "SKIP cluster_page: no Chromium at $chromium (set CHROMIUM=/path/to/chromium)"
    exit 77
fi
[ -x "$bin" ] || { echo "FAIL cluster_page: no spartan binary at $bin"; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/spartan-cluster-XXXXXX")
p0=
p1=
cleanup() {
    for p in $p0 $p1; do kill "$p" 2>/dev/null; done
    for p in $p0 $p1; do wait "$p" 2>/dev/null; done
    [ -n "${KEEP_TMP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
fail() {
    echo "FAIL cluster_page: $*"
    for f in "$dir"/r0.log "$dir"/r1.log; do [ -f "$f" ] && tail -3 "$f"; done
    exit 1
}
"$bin" data prepare --tokenizer char data/tinyshakespeare.txt "$dir/d" >/dev/null 2>&1 ||
    fail "data prepare"
set -- $(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
l0=$1 l1=$2 s0=$3 s1=$4
for r in 0 1; do
    eval "s=\$s$r"
    "$bin" train configs/tiny.ini --rank $r --peers 127.0.0.1:$l0,127.0.0.1:$l1 \
        --set data.dir="$dir/d" --set train.out_dir="$dir/r$r" --set train.max_iters=1000000 \
        --set model.n_layer=1 --set model.n_embd=32 --set model.n_head=2 \
        --set model.block_size=32 --set train.batch_size=8 --set train.eval_interval=100 \
        --set train.eval_iters=2 --set train.ckpt_interval=1000 --set train.threads=1 \
        --set sparta.p=0.05 --set net.status_port="$s" >"$dir/r$r.log" 2>&1 &
    eval "p$r=\$!"
done
# wait until both have trained a while (bounded): the curves then have points
i=0
while [ $i -lt 300 ]; do
    "$bin" status 127.0.0.1:"$s0" 127.0.0.1:"$s1" --timeout 1000 >"$dir/st" 2>&1 &&
        [ "$(grep -c ' 1/1 ' "$dir/st")" = 2 ] && ! grep -q ' [0-9]/1000000 \| [0-9][0-9]/1000000 ' "$dir/st" &&
        break
    sleep 0.1
    i=$((i + 1))
done
[ $i -lt 300 ] || fail "the peers did not start training together: $(cat "$dir/st")"

url="http://127.0.0.1:$s0/?peers=127.0.0.1:$s0,127.0.0.1:$s1&interval=500"
flags="--headless --no-sandbox --disable-gpu --hide-scrollbars --disable-dev-shm-usage"
# shellcheck disable=SC2086
timeout 90 "$chromium" $flags --user-data-dir="$dir/profile" --virtual-time-budget=3000 \
    --dump-dom "$url" >"$dir/dom.html" 2>"$dir/chromium.log"
rc=$?
if [ ! -s "$dir/dom.html" ]; then
    if [ $rc != 0 ]; then # a browser that cannot start here is the machine's problem
        echo "SKIP cluster_page: Chromium did not run (exit $rc): $(tail -1 "$dir/chromium.log")"
        exit 77
    fi
    fail "Chromium dumped no DOM"
fi
check=$(python3 - "$dir/dom.html" "127.0.0.1:$s0" "127.0.0.1:$s1" <<'PY'
import re, sys
dom = open(sys.argv[1]).read()
for peer in sys.argv[2:]:
    row = re.search(r'<tr class="(\w+)" data-peer="%s" data-step="(\d*)"' % re.escape(peer), dom)
    assert row, "no table row for %s" % peer
    assert row.group(1) == "up", "%s is %s" % (peer, row.group(1))
    assert int(row.group(2) or 0) > 0, "%s shows step %r" % (peer, row.group(2))
    curves = re.findall(r'<polyline [^>]*data-peer="%s" data-points="(\d+)"' % re.escape(peer),
                        dom)
    assert len(curves) == 2 and int(curves[0]) > 1, "%s: curves %r" % (peer, curves)
polls = int(re.search(r'data-polls="(\d+)"', dom).group(1))
assert polls >= 2, "the page polled %d times" % polls
print("both peers up, steps > 0, %s points; %d polls" % (curves[0], polls))
PY
) || fail "the page: $check"
echo "$check"
mkdir -p "$(dirname "$png")"
rm -f "$png"
# shellcheck disable=SC2086
timeout 90 "$chromium" $flags --user-data-dir="$dir/profile2" --virtual-time-budget=3000 \
    --window-size=1100,640 --screenshot="$png" "$url" >"$dir/chromium2.log" 2>&1
[ "$(head -c 4 "$png" 2>/dev/null | tail -c 3)" = "PNG" ] || fail "no PNG screenshot at $png"
for p in $p0 $p1; do kill -TERM "$p"; done
for p in $p0 $p1; do wait "$p" || fail "a peer did not exit cleanly on SIGTERM"; done
p0= p1=
echo "PASS cluster_page: screenshot $png"
