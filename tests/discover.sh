#!/bin/sh
# discover.sh: net.discover = lan across network namespaces (root only). Three namespaces on one
# bridge (10.77.0.0/24, veth pairs; the bridge lives in a namespace of its own, so the host's
# network is untouched) each run `spartan train` with net.discover = lan, the same cluster key
# and their own SPARTAN_STATE_DIR: they find each other by broadcast, take ranks 0..2 and train
# together. Then an injector (python3) in another namespace captures one real announcement and
# sends it again (replayed) and a copy signed with a wrong key (forged): both are ignored and
# counted. Then two namespaces with one copied state folder (the same node ID): both report it.
# A key file readable by others is refused. Waits for log lines, every loop bounded.
set -u
bin=${SPARTAN_BIN:-bin/spartan}
[ "$(id -u)" = 0 ] || { echo "SKIP discover: needs root (network namespaces)"; exit 77; }
command -v ip >/dev/null 2>&1 || { echo "SKIP discover: no ip command (iproute2)"; exit 77; }
command -v python3 >/dev/null 2>&1 || { echo "SKIP discover: no python3"; exit 77; }
tag=sd$$
ip netns add "${tag}br" 2>/dev/null || { echo "SKIP discover: ip netns unavailable"; exit 77; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/spartan-disc-XXXXXX")
pids=
cleanup() {
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
    for n in br 1 2 3 4; do ip netns del "$tag$n" 2>/dev/null; done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail() { for f in "$dir"/*.log; do [ -f "$f" ] && { echo "== $f"; cat "$f"; }; done; echo "FAIL discover: $1"; exit 1; }

ip -n "${tag}br" link add br0 type bridge && ip -n "${tag}br" link set br0 up || fail "no bridge"
for i in 1 2 3 4; do
    ip netns add "$tag$i" || fail "netns $i"
    ip link add "${tag}v$i" type veth peer name eth0 netns "$tag$i" || fail "veth $i"
    ip link set "${tag}v$i" netns "${tag}br"
    ip -n "${tag}br" link set "${tag}v$i" master br0 up
    ip -n "$tag$i" addr add "10.77.0.$i/24" brd + dev eth0
    ip -n "$tag$i" link set eth0 up
    ip -n "$tag$i" link set lo up
done

"$bin" data prepare --tokenizer char data/tinyshakespeare.txt "$dir/d" >/dev/null 2>&1 ||
    fail "data prepare"
head -c 32 /dev/urandom >"$dir/cluster.key"
chmod 600 "$dir/cluster.key"

# peer NS STATE LOG [--set ...]: spartan train in namespace NS, in the background
peer() {
    ns=$1 state=$2 log=$3
    shift 3
    timeout -s KILL 120 ip netns exec "$tag$ns" env SPARTAN_STATE_DIR="$dir/$state" "$bin" train configs/tiny.ini \
        --set net.discover=lan --set net.cluster_key_file="$dir/cluster.key" \
        --set data.dir="$dir/d" --set train.out_dir="$dir/out-$log" \
        --set model.n_layer=1 --set model.n_embd=16 --set model.n_head=2 \
        --set model.block_size=16 --set train.batch_size=4 --set train.eval_interval=0 \
        --set train.max_iters=3 --set train.threads=1 --set sparta.p=1 --set sparta.sync=true \
        "$@" 2>"$dir/$log.log" &
    pids="$pids $!"
    last=$!
}
# wait_exit PID: its exit status in $rc (bounded: every process runs under timeout)
wait_exit() {
    wait "$1"
    rc=$?
    return 0
}

# 1. three peers find each other and train together
peer 1 s1 a --set net.world=3
p1=$last
peer 2 s2 b --set net.world=3
p2=$last
peer 3 s3 c --set net.world=3
p3=$last
for p in $p1 $p2 $p3; do wait_exit $p; [ $rc = 0 ] || fail "a peer of three did not finish"; done
ranks=
for l in a b c; do
    grep -q "discover 3/3 peers found" "$dir/$l.log" || fail "$l: no progress line 3/3"
    grep -q "all 3 peers connected" "$dir/$l.log" || fail "$l: not connected to both others"
    grep -q "train done step=3" "$dir/$l.log" || fail "$l: did not finish training"
    r=$(sed -n 's/.*train model .* rank=\([0-9]\)\/3.*/\1/p' "$dir/$l.log")
    ranks="$ranks$r"
done
case $ranks in 012 | 021 | 102 | 120 | 201 | 210) ;; *) fail "ranks '$ranks' are not 0, 1, 2" ;; esac
for s in s1 s2 s3; do
    [ "$(stat -c %a "$dir/$s/node_id")" = 600 ] || fail "$s/node_id is not 0600"
done
[ -n "$(ls configs | grep node_id)" ] && fail "a node ID was written into the project"

# 2. replayed and forged announcements are ignored and counted
cat >"$dir/inject.py" <<'EOF'
import hmac, hashlib, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("0.0.0.0", 52415))
s.settimeout(20)
real, src = s.recvfrom(2048)  # one real announcement
s.sendto(real, ("10.77.0.255", 52415))  # replayed
body = bytearray(real[:-32])
struct.pack_into("<QQ", body, 48, int(time.time() * 1000), 0x1234567)  # fresh time and nonce
forged = bytes(body) + hmac.new(b"not the cluster key, 32 bytes...", bytes(body), hashlib.sha256).digest()
s.sendto(forged, ("10.77.0.255", 52415))
print("injected after", src[0], flush=True)
EOF
timeout -s KILL 60 ip netns exec "${tag}4" python3 "$dir/inject.py" >"$dir/inject.log" 2>&1 &
pi=$!
pids="$pids $pi"
i=0 # the injector is listening once its socket is bound
while ! ip netns exec "${tag}4" sh -c 'cat /proc/net/udp' 2>/dev/null | grep -q ":CCBF " &&
    [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
peer 1 s1 inj --set net.world=2 --set net.discover_timeout_ms=4000
pj=$last
wait_exit $pi; [ $rc = 0 ] || fail "the injector captured nothing"
wait_exit $pj; [ $rc = 1 ] || fail "a peer alone did not fail at the discovery timeout"
grep -q "reason=replayed" "$dir/inj.log" || fail "the replayed announcement was not named"
grep -q "reason=forged" "$dir/inj.log" || fail "the forged announcement was not named"
grep "found 1 of 2 peers" "$dir/inj.log" | grep -q "forged=1.* replayed=1" ||
    fail "the timeout did not give the counters"

# 3. one node ID on two machines (a copied state folder): both report it and stop
cp -a "$dir/s2" "$dir/s2copy"
peer 2 s2 dup1 --set net.world=2
pd1=$last
peer 3 s2copy dup2 --set net.world=2
pd2=$last
wait_exit $pd1; [ $rc = 1 ] || fail "the first of a duplicated node ID went on"
wait_exit $pd2; [ $rc = 1 ] || fail "the second of a duplicated node ID went on"
grep -q "node ID .* is also announced by 10.77.0.3:" "$dir/dup1.log" ||
    fail "10.77.0.2 did not name the other address of its node ID"
grep -q "node ID .* is also announced by 10.77.0.2:" "$dir/dup2.log" ||
    fail "10.77.0.3 did not name the other address of its node ID"

# 4. a key file others may read is refused
chmod 644 "$dir/cluster.key"
peer 1 s1 perm --set net.world=2
wait_exit $last; [ $rc = 1 ] || fail "a world-readable key file was taken"
grep -q "chmod 600" "$dir/perm.log" || fail "the key file's mode was not named"
echo "PASS discover: 3 namespaces found each other (ranks $ranks) and trained; replayed and forged announcements counted; a duplicated node ID reported by both; a readable key refused"
