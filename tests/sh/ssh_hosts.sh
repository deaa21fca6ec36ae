# ssh_hosts.sh: three hosts behind real OpenSSH for tests/launch.sh and tests/bench_launch.sh
# (sourced; set suite, the name in SKIP and FAIL lines, first). As root: three network
# namespaces on one bridge (10.79.0.0/24; the bridge lives in a namespace of its own, so the
# host's network is untouched), each running its own sshd (a private config, host key and
# authorized key made in a temp folder; nothing is enabled as a service), and the launcher in a
# fourth namespace, reaching them through the real ssh client. Without root: three sshd on
# 127.0.0.1 with three ports. Where sshd cannot run, it exits 77 (a skip) and says why. Every
# host has its own folder (dir=/hN), since the namespaces share one file system. A fourth sshd
# (host 3's namespace) is a host without dependencies, and dead_addr:dead_port answers nothing.
# Gives: $dir, $bin, $sets (a small job's --set options), $ssh_cmd, $in_l, run_in NS CMD...,
# addr N, sport N, host_line N, launch LOG SECONDS HOSTFILE ARGS... ($rc), wait_line, peer_pids,
# first_step LOG, fail MESSAGE; $pids and the cleanup trap take everything down at exit.
set -u
bin=${SPARTAN_BIN:-bin/spartan}
case "$bin" in /*) ;; *) bin=$(pwd)/$bin ;; esac
sshd=
for s in /usr/sbin/sshd "$(command -v sshd 2>/dev/null)"; do
    [ -n "$s" ] && [ -x "$s" ] && { sshd=$s; break; }
done
[ -n "$sshd" ] || { echo "SKIP $suite: no sshd (scripts/install-deps test installs openssh-server)"; exit 77; }
command -v ssh >/dev/null 2>&1 || { echo "SKIP $suite: no ssh client (openssh-client)"; exit 77; }
command -v ssh-keygen >/dev/null 2>&1 || { echo "SKIP $suite: no ssh-keygen"; exit 77; }
git rev-parse --show-toplevel >/dev/null 2>&1 || { echo "SKIP $suite: not a git checkout (the launcher ships a git revision)"; exit 77; }

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
    echo "FAIL $suite: $1"
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
        { echo "SKIP $suite: sshd needs /run/sshd (its privilege separation folder), which only root can make"; exit 77; }
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
            { cat "$dir"/sshd*.log; echo "SKIP $suite: sshd cannot run here (above)"; exit 77; }
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
# first_step LOG: the launcher's "every peer has made its first step, X s after the launch" X
first_step() {
    sed -n 's/.*every peer has made its first step, \([0-9.]*\) s after the launch.*/\1/p' "$dir/$1.log"
}
