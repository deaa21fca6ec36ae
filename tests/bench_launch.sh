#!/bin/sh
# bench_launch.sh: how long `spartan launch` takes from the command to every peer's first step,
# on three hosts behind real OpenSSH (tests/sh/ssh_hosts.sh), in interleaved rounds of:
#   cached  three hosts that have the revision built (preflight, data, reachability, start)
#   unshared the same with --no-ssh-share: one ssh login per command instead of one shared
#           connection per host (the baseline of the sharing's gain)
#   fresh   one host without the build (it is shipped and built there: make -j on that host)
#   ssh     the baseline: one `ssh host true` from the launcher's namespace (a connection, a
#           login and a command: what any remote start costs at least)
# and prints BENCH lines (run-bench's format): each time's median in seconds with its spread;
# the cached launch's split into "ready" (preflight, data, reachability) and "started to first
# step"; and, per round as ratios, cached/unshared and cached/ssh (the launch's cost in logins). BENCH_ROUNDS_LAUNCH (or BENCH_ROUNDS) sets the rounds
# (default 3; a fresh build is ~6 s on 2 cores). Progress and every round go to stderr.
set -u
suite=bench_launch
. "$(dirname "$0")/sh/ssh_hosts.sh"
rounds=${BENCH_ROUNDS_LAUNCH:-${BENCH_ROUNDS:-3}}
case "$rounds" in '' | *[!0-9]*) fail "BENCH_ROUNDS_LAUNCH='$rounds' is not a count" ;; esac
[ "$rounds" -ge 1 ] || fail "BENCH_ROUNDS_LAUNCH must be at least 1"

now() { date +%s.%N; }
# stats FILE: "median min-max (iqr q1-q3, n rounds)" of the numbers in FILE, one per line
stats() {
    sort -g "$1" | awk '{ v[NR] = $1 }
        function q(p,  i, f) { i = 1 + (NR - 1) * p; f = int(i); return v[f] + (i - f) * (v[f + 1 > NR ? NR : f + 1] - v[f]) }
        END { printf "%.3f %.3f-%.3f (iqr %.3f-%.3f, %d rounds)\n", q(0.5), v[1], v[NR], q(0.25), q(0.75), NR }'
}
emit() { # emit KEY FILE: BENCH KEY median, then BENCH KEY_spread ...
    s=$(stats "$2")
    echo "BENCH $1 ${s%% *}"
    echo "BENCH $1_spread ${s#* }"
}

{ host_line 1; host_line 2; host_line 3; } >"$dir/hosts3"
host_line 1 >"$dir/hosts1"
# prime: build once on host 1 and give hosts 2 and 3 that build
echo "bench_launch: building on host 1 once (the cached rounds reuse it)" >&2
launch prime 600 "$dir/hosts1" --name prime --set train.max_iters=1
[ "$rc" = 0 ] || fail "priming build: exit $rc"
for h in 2 3; do
    mkdir -p "$dir/h$h" && cp -a "$dir/h1/src" "$dir/h$h/" || fail "copying the build"
done
: >"$dir/unshared" && : >"$dir/ratio_u" && : >"$dir/cached" && : >"$dir/fresh" && : >"$dir/ssh" && : >"$dir/ratio" && : >"$dir/ready" && : >"$dir/run"
i=0
while [ "$i" -lt "$rounds" ]; do
    i=$((i + 1))
    launch "cached$i" 300 "$dir/hosts3" --name "c$i" --set train.max_iters=20
    [ "$rc" = 0 ] || fail "cached round $i: exit $rc"
    grep -q "launch: built in" "$dir/cached$i.log" && fail "cached round $i: a host was rebuilt"
    c=$(first_step "cached$i")
    launch "unshared$i" 300 "$dir/hosts3" --name "u$i" --set train.max_iters=20 --no-ssh-share
    [ "$rc" = 0 ] || fail "unshared round $i: exit $rc"
    u=$(first_step "unshared$i")
    [ -n "$u" ] || fail "unshared round $i: no first-step line"
    echo "$u" >>"$dir/unshared"
    echo "$c $u" | awk '{ printf "%.3f\n", $1 / $2 }' >>"$dir/ratio_u"
    # a fresh build on host 4's folder (never built): host 1's address, another dir
    echo "$(addr 1) user=$me ssh_port=$(sport 1) port=29650 dir=$dir/fresh$i" >"$dir/hostsf"
    launch "fresh$i" 600 "$dir/hostsf" --name "f$i" --set train.max_iters=1
    [ "$rc" = 0 ] || fail "fresh round $i: exit $rc"
    grep -q "launch: built in" "$dir/fresh$i.log" || fail "fresh round $i: nothing was built"
    f=$(first_step "fresh$i")
    rm -rf "$dir/fresh$i"
    t0=$(now)
    # shellcheck disable=SC2086
    run_in L $ssh_cmd -p "$(sport 1)" "$me@$(addr 1)" true || fail "round $i: ssh failed"
    l=$(echo "$(now) $t0" | awk '{ printf "%.3f", $1 - $2 }')
    [ -n "$c" ] && [ -n "$f" ] || fail "round $i: no first-step line in the launcher's output"
    r=$(sed -n 's/^launch: ready in \([0-9.]*\) s.*/\1/p' "$dir/cached$i.log")
    a=$(sed -n 's/.*every peer has made its first step, .*(\([0-9.]*\) s after they started).*/\1/p' "$dir/cached$i.log")
    [ -n "$r" ] && [ -n "$a" ] || fail "round $i: no ready or started line in the launcher's output"
    echo "$c" >>"$dir/cached"
    echo "$f" >>"$dir/fresh"
    echo "$l" >>"$dir/ssh"
    echo "$r" >>"$dir/ready"
    echo "$a" >>"$dir/run"
    echo "$c $l" | awk '{ printf "%.3f\n", $1 / $2 }' >>"$dir/ratio"
    echo "bench_launch: round $i of $rounds: cached $c s (ready $r s, started to first step $a s), unshared $u s, fresh $f s, ssh $l s" >&2
done
emit launch_first_step_cached_s "$dir/cached"
emit launch_ready_cached_s "$dir/ready"
emit launch_started_to_first_step_s "$dir/run"
emit launch_first_step_unshared_s "$dir/unshared"
emit launch_shared_over_unshared "$dir/ratio_u"
emit launch_first_step_fresh_s "$dir/fresh"
emit launch_ssh_true_s "$dir/ssh"
emit launch_cached_over_ssh "$dir/ratio"
echo "BENCH launch_setup namespaces=$netns hosts=3"
