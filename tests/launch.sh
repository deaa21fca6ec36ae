#!/bin/sh
# launch.sh: `spartan launch` through real OpenSSH: three hosts (tests/sh/ssh_hosts.sh: network
# namespaces as root, sshd on 127.0.0.1 ports otherwise).
#   1. preflight: an unreachable host and a host without dependencies are named, and nothing
#      starts (no source shipped anywhere)
#   2. one host: the revision is shipped and built there (the fresh build), and the job finishes
#   3. three hosts with that build copied to them (not rebuilt), with --keys: the job finishes
#      over TLS (each host has its own certificate and key, 0600 in a 0700 folder, and never
#      the CA key), every command to a host shares one ssh login, and --fetch brings back three
#      checkpoints
#   4. three hosts, a long job: keys by default when the hosts are beyond loopback (namespaces);
#      a SIGKILLed peer is reported and the others go on; then SIGINT to the launcher stops
#      every peer (each saves a checkpoint) and leaves no spartan process
# Waits for lines in the launcher's output; every loop is bounded in time and count.
set -u
suite=launch
. "$(dirname "$0")/sh/ssh_hosts.sh"

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
fresh=$(first_step one)

# 3. three hosts; 2 and 3 get host 1's build (as if built there before): nothing is rebuilt
mkdir -p "$dir/h2" "$dir/h3"
cp -a "$dir/h1/src" "$dir/h2/" && cp -a "$dir/h1/src" "$dir/h3/" || fail "copying the build"
{ host_line 1; host_line 2; host_line 3; } >"$dir/hosts3"
logins() { grep -c "Accepted publickey" "$dir/sshd2.log"; }
before=$(logins)
launch three 300 "$dir/hosts3" --name three --fetch "$dir/fetched" --set train.max_iters=20 \
    --keys "$dir/keys"
[ "$rc" = 0 ] || fail "three-host job: exit $rc"
# every host has its own certificate, its key private, and no CA key
for i in 1 2 3; do
    t="$dir/h$i/runs/three/tls"
    [ "$(stat -c %a "$t")" = 700 ] || fail "host $i: tls folder mode $(stat -c %a "$t")"
    [ -s "$t/ca.crt" ] || fail "host $i: no CA certificate"
    n=$(ls "$t"/*.key | wc -l)
    [ "$n" = 1 ] || fail "host $i: $n keys in its tls folder, expected its own one"
    [ "$(stat -c %a "$t"/*.key)" = 600 ] || fail "host $i: key mode $(stat -c %a "$t"/*.key)"
done
[ -z "$(find "$dir"/h1 "$dir"/h2 "$dir"/h3 -name ca.key)" ] || fail "the CA key went to a host"
[ "$(grep -c 'up: rank=.* cert=' "$dir/three.log")" -ge 6 ] || fail "three-host job: the links did not come up over TLS"
# preflight, data, config, probe, peer, fetch and -O exit went through one shared connection
n=$(($(logins) - before))
[ "$n" = 1 ] || fail "three-host job: $n ssh logins on host 2, expected 1 (one shared connection)"
[ "$(grep -c 'is built there already' "$dir/three.log")" = 3 ] || fail "three-host job: a host was rebuilt"
grep -q "launch: built in" "$dir/three.log" && fail "three-host job: built again"
for r in 0 1 2; do
    ls "$dir/fetched/r$r"/ckpt_*.h5 >/dev/null 2>&1 || fail "--fetch: no checkpoint of rank $r"
    [ -s "$dir/fetched/r$r/metrics.csv" ] || fail "--fetch: no metrics.csv of rank $r"
done
cached=$(first_step three)

# 4. a long job: kill rank 1, the others go on; then SIGINT to the launcher stops them all
# (not under timeout: it would not pass SIGINT on; the waits below bound it instead)
# shellcheck disable=SC2086
# A plain command, not the run_in function, so that $! is the launcher itself.
# shellcheck disable=SC2086
mkdir -p "$dir/lhome"
$in_l env HOME="$dir/lhome" "$bin" launch "$dir/hosts3" configs/tiny.ini --ssh "$ssh_cmd" --plain $sets --name long \
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
if [ "$netns" = 1 ]; then # hosts beyond loopback: keys by default
    [ -s "$dir/lhome/.spartan/keys/ca.key" ] || fail "long job: no default cluster CA"
    grep -q "made a cluster CA in $dir/lhome/.spartan/keys" "$dir/long.log" || fail "long job: the CA was not announced"
else
    [ ! -e "$dir/lhome/.spartan" ] || fail "long job on loopback: keys made all the same"
fi
echo "launch: ok (namespaces=$netns; first step $fresh s after a launch with a fresh build, $cached s with the build there)"
