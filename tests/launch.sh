#!/bin/sh
# launch.sh: `spartan launch` through real OpenSSH. As root: three network namespaces on one
# bridge (10.79.0.0/24; the bridge lives in a namespace of its own, so the host's network is
# untouched), each running its own sshd (a private config, host key and authorized key made in a
# temp folder; nothing is enabled as a service), and the launcher in a fourth namespace, reaching
# them through the real ssh client. Without root: three sshd on 127.0.0.1 with three ports.
# Where sshd cannot run, it skips and says why. Every host has its own folder (dir=), since the
# namespaces share one file system.
#   1. preflight: an unreachable host and a host without dependencies are named, and nothing
#      starts (no source shipped anywhere)
#   2. one host: the revision is shipped and built there (the fresh build), and the job finishes
#   3. three hosts with that build copied to them (not rebuilt): the job finishes and --fetch
#      brings back three checkpoints
#   4. three hosts, a long job: a SIGKILLed peer is reported and the others go on; then SIGINT
#      to the launcher stops every peer (each saves a checkpoint) and leaves no spartan process
# Waits for lines in the launcher's output; every loop is bounded in time and count.
set -u
bin=${SPARTAN_BIN:-bin/spartan}
case "$bin" in /*) ;; *) bin=$(pwd)/$bin ;; esac
sshd=
for s in /usr/sbin/sshd "$(command -v sshd 2>/dev/null)"; do
    [ -n "$s" ] && [ -x "$s" ] && { sshd=$s; break; }
done
[ -n "$sshd" ] || { echo "SKIP launch: no sshd (scripts/install-deps test installs openssh-server)"; exit 77; }
command -v ssh >/dev/null 2>&1 || { echo "SKIP launch: no ssh client (openssh-client)"; exit 77; }
command -v ssh-keygen >/dev/null 2>&1 || { echo "SKIP launch: no ssh-keygen"; exit 77; }
git rev-parse --show-toplevel >/dev/null 2>&1 || { echo "SKIP launch: not a git checkout (the launcher ships a git revision)"; exit 77; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/spartan-launch-XXXXXX")
chmod 755 "$dir"
tag=sl$$
netns=0
pids=
cleanup() {
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
    for p in $(pgrep -f "$dir/" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    if [ "$netns" = 1 ]; then for n in br 1 2 3 L; do ip netns del "$tag$n" 2>/dev/null; done; fi
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail() {
    for f in "$dir"/*.log; do case "$f" in */sshd*) continue ;; esac; [ -f "$f" ] && { echo "== $f"; tail -n 60 "$f"; }; done
    echo "FAIL launch: $1"
    exit 1
}

# Root: namespaces 1..3 are the hosts (sshd on port 22 of 10.79.0.i), L runs the launcher, and a
# second sshd in namespace 3 (port 2222) is the host without dependencies. Otherwise all on
# 127.0.0.1 with their own ports.
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 && ip netns add "${tag}br" 2>/dev/null; then
    netns=1
    mkdir -p /run/sshd
    ip -n "${tag}br" link add br0 type bridge && ip -n "${tag}br" link set br0 up || fail "no bridge"
    i=0
    for n in 1 2 3 L; do
        i=$((i + 1))
        ip netns add "$tag$n" || fail "netns $n"
        ip link add "${tag}v$n" type veth peer name eth0 netns "$tag$n" || fail "veth $n"
        ip link set "${tag}v$n" netns "${tag}br"
        ip -n "${tag}br" link set "${tag}v$n" master br0 up
        ip -n "$tag$n" addr add "10.79.0.$i/24" dev eth0
        ip -n "$tag$n" link set eth0 up
        ip -n "$tag$n" link set lo up
    done
    run_in() { ns=$1; shift; ip netns exec "$tag$ns" "$@"; }
    in_l="ip netns exec ${tag}L"
    addr() { echo "10.79.0.$1"; }
    sport() { echo 22; }
    nodeps_addr=10.79.0.3 nodeps_port=2222 dead_addr=10.79.0.2 dead_port=2299
else
    [ -d /run/sshd ] || [ "$(id -u)" = 0 ] ||
        { echo "SKIP launch: sshd needs /run/sshd (its privilege separation folder), which only root can make"; exit 77; }
    [ "$(id -u)" = 0 ] && mkdir -p /run/sshd
    base=$((20000 + $$ % 20000))
    run_in() { shift; "$@"; }
    in_l=
    addr() { echo 127.0.0.1; }
    sport() { echo $((base + $1)); }
    nodeps_addr=127.0.0.1 nodeps_port=$((base + 4)) dead_addr=127.0.0.1 dead_port=$((base + 9))
fi
me=$(id -un)

ssh-keygen -q -t ed25519 -N '' -f "$dir/hostkey" >/dev/null || fail "ssh-keygen (host key)"
ssh-keygen -q -t ed25519 -N '' -f "$dir/id" >/dev/null || fail "ssh-keygen (client key)"
cp "$dir/id.pub" "$dir/authorized_keys"
chmod 600 "$dir/authorized_keys"
# start_sshd NS ADDR PORT NAME [SETENV]: an sshd for the login $me, in the background
start_sshd() {
    cat >"$dir/$4.conf" <<EOF
Port $3
ListenAddress $2
HostKey $dir/hostkey
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/$4.pid
UsePAM no
PermitRootLogin yes
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers $me
${5:+SetEnv $5}
EOF
    run_in "$1" "$sshd" -D -e -f "$dir/$4.conf" 2>"$dir/$4.log" &
    pids="$pids $!"
}
start_sshd 1 "$(addr 1)" "$(sport 1)" sshd1
start_sshd 2 "$(addr 2)" "$(sport 2)" sshd2
start_sshd 3 "$(addr 3)" "$(sport 3)" sshd3
# The host without dependencies: pkg-config finds nothing there.
start_sshd 3 "$nodeps_addr" "$nodeps_port" sshd-nodeps PKG_CONFIG_LIBDIR=/nonexistent
ssh_cmd="ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5 -i $dir/id"
# Each sshd answers before anything goes on (bounded: 100 tries of 0.1 s).
for h in "1 $(addr 1) $(sport 1)" "2 $(addr 2) $(sport 2)" "3 $(addr 3) $(sport 3)" "L $nodeps_addr $nodeps_port"; do
    set -- $h
    ok=0
    for _ in $(seq 100); do
        # shellcheck disable=SC2086
        if run_in L $ssh_cmd -p "$3" "$me@$2" true 2>/dev/null; then ok=1; break; fi
        sleep 0.1
    done
    [ "$ok" = 1 ] || {
        grep -q 'Missing privilege separation\|Permission denied\|cannot bind' "$dir"/sshd*.log &&
            { cat "$dir"/sshd*.log; echo "SKIP launch: sshd cannot run here (above)"; exit 77; }
        fail "sshd on $2 port $3 never answered"
    }
done

"$bin" data prepare --tokenizer char data/tinyshakespeare.txt "$dir/d" >/dev/null 2>&1 || fail "data prepare"
# The job: a small model, so that the test is about the launcher.
sets="--set data.dir=$dir/d --set model.n_layer=1 --set model.n_embd=16 --set model.n_head=2
      --set model.block_size=16 --set train.batch_size=4 --set train.eval_interval=0
      --set train.log_interval=5"
# host_line N: the hostfile line of host N (its own folder; distinct peer ports on 127.0.0.1)
host_line() {
    echo "$(addr "$1") user=$me ssh_port=$(sport "$1") port=$((29600 + 10 * $1)) dir=$dir/h$1"
}
# launch LOG SECONDS HOSTFILE ARGS...: the launcher in namespace L, bounded by timeout; its
# exit status in $rc
launch() {
    log=$1 secs=$2 hf=$3
    shift 3
    # shellcheck disable=SC2086
    run_in L timeout -s KILL "$secs" "$bin" launch "$hf" configs/tiny.ini --ssh "$ssh_cmd" --plain \
        $sets "$@" >"$dir/$log.log" 2>&1
    rc=$?
}
# wait_line LOG PATTERN SECONDS [FROM]: wait until a line after line FROM of the log matches
wait_line() {
    n=$(($3 * 10))
    for _ in $(seq "$n"); do
        tail -n "+$((${4:-0} + 1))" "$dir/$1.log" 2>/dev/null | grep -q "$2" && return 0
        sleep 0.1
    done
    return 1
}
# peer_pids SUBSTRING: the spartan processes (not their shells) whose command line has it
peer_pids() {
    for p in $(pgrep -x spartan 2>/dev/null); do
        tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "$1" && echo "$p"
    done
}

# 1. preflight names an unreachable host and one without dependencies, and starts nothing
{
    host_line 1
    echo "$dead_addr user=$me ssh_port=$dead_port port=29680 dir=$dir/dead"
    echo "$nodeps_addr user=$me ssh_port=$nodeps_port port=29700 dir=$dir/nodeps"
} >"$dir/hosts-bad"
launch pre 120 "$dir/hosts-bad" --set train.max_iters=2
[ "$rc" = 1 ] || fail "preflight with two bad hosts: exit $rc, expected 1"
grep -q "launch: \[*$dead_addr\(\]:$dead_port\)*: ssh failed: .*refused" "$dir/pre.log" ||
    fail "the unreachable host is not named"
grep "launch: \[*$nodeps_addr\(\]:$nodeps_port\)*: missing dependencies" "$dir/pre.log" | grep -q "HDF5" ||
    fail "the host without dependencies is not named with what it lacks"
for d in h1 dead nodeps; do [ ! -e "$dir/$d/src" ] || fail "preflight failed, yet $d got the source"; done
grep -q "peers started" "$dir/pre.log" && fail "peers started after a failed preflight"

# 2. one host: a fresh build there, and the job finishes
host_line 1 >"$dir/hosts1"
launch one 400 "$dir/hosts1" --name one --set train.max_iters=10
[ "$rc" = 0 ] || fail "one-host job: exit $rc"
grep -q "launch: built in" "$dir/one.log" || fail "one-host job: no build reported"
grep -q "train done step=10" "$dir/one.log" || fail "one-host job: the peer did not finish"
fresh=$(sed -n 's/.*every peer has made its first step, \([0-9.]*\) s after the launch.*/\1/p' "$dir/one.log")

# 3. three hosts; 2 and 3 get host 1's build (as if built there before): nothing is rebuilt
mkdir -p "$dir/h2" "$dir/h3"
cp -a "$dir/h1/src" "$dir/h2/" && cp -a "$dir/h1/src" "$dir/h3/" || fail "copying the build"
{ host_line 1; host_line 2; host_line 3; } >"$dir/hosts3"
launch three 300 "$dir/hosts3" --name three --fetch "$dir/fetched" --set train.max_iters=20
[ "$rc" = 0 ] || fail "three-host job: exit $rc"
[ "$(grep -c 'is built there already' "$dir/three.log")" = 3 ] || fail "three-host job: a host was rebuilt"
grep -q "launch: built in" "$dir/three.log" && fail "three-host job: built again"
for r in 0 1 2; do
    ls "$dir/fetched/r$r"/ckpt_*.h5 >/dev/null 2>&1 || fail "--fetch: no checkpoint of rank $r"
    [ -s "$dir/fetched/r$r/metrics.csv" ] || fail "--fetch: no metrics.csv of rank $r"
done
cached=$(sed -n 's/.*every peer has made its first step, \([0-9.]*\) s after the launch.*/\1/p' "$dir/three.log")

# 4. a long job: kill rank 1, the others go on; then SIGINT to the launcher stops them all
# (not under timeout: it would not pass SIGINT on; the waits below bound it instead)
# shellcheck disable=SC2086
# A plain command, not the run_in function, so that $! is the launcher itself.
# shellcheck disable=SC2086
$in_l "$bin" launch "$dir/hosts3" configs/tiny.ini --ssh "$ssh_cmd" --plain $sets --name long \
    --set train.max_iters=1000000000 --set train.log_interval=100 --set train.ckpt_interval=0 \
    >"$dir/long.log" 2>&1 &
lpid=$!
pids="$pids $lpid"
wait_line long "every peer has made its first step" 120 || fail "long job: the peers never all stepped"
victim=$(peer_pids "$dir/h2/runs/long/r1")
[ -n "$victim" ] || fail "long job: rank 1's process not found"
kill -KILL $victim
wait_line long "launch: \[*$(addr 2)[^ ]*:1 .*the others go on" 60 || fail "the killed peer was not reported"
at=$(grep -n "the others go on" "$dir/long.log" | head -n 1 | cut -d: -f1)
a1=$(addr 1) a3=$(addr 3)
wait_line long "^\[*$a1[^ ]*:0 .*step=" 60 "$at" || fail "rank 0 stopped after rank 1 died"
wait_line long "^\[*$a3[^ ]*:2 .*step=" 60 "$at" || fail "rank 2 stopped after rank 1 died"
kill -INT "$lpid"
for _ in $(seq 600); do kill -0 "$lpid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$lpid" 2>/dev/null && fail "the launcher did not stop within 60 s of SIGINT"
wait "$lpid"
lrc=$?
[ "$lrc" = 130 ] || fail "the launcher after SIGINT: exit $lrc, expected 130"
left=
for _ in $(seq 50); do
    left=$(peer_pids "$dir/h")
    [ -z "$left" ] && break
    sleep 0.1
done
[ -z "$left" ] || fail "spartan processes left after SIGINT: $left"
for r in 0 2; do
    grep -q ":$r .*checkpoint step=" "$dir/long.log" || fail "rank $r saved no checkpoint on SIGINT"
done
grep -q "launch: stopping every peer" "$dir/long.log" || fail "no stop message"
echo "launch: ok (namespaces=$netns; first step $fresh s after a launch with a fresh build, $cached s with the build there)"
