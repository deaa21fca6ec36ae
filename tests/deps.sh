#!/bin/sh
# deps.sh: the two dependency sets of scripts/check-deps and scripts/install-deps. In a PATH
# without gnuplot and mpirun and with a pkg-config that does not know Criterion, the run set (what
# `make`, `make run` and bin/spartan need) is complete and install-deps run has nothing to do and
# says nothing, while the test set reports exactly Criterion, gnuplot and mpirun as missing. With a library
# of the run set missing too, and a package manager that only records its calls (apt-get,
# dpkg-query and sudo, or brew), install-deps run asks for no test package and install-deps test
# asks for Criterion, gnuplot, OpenMPI, Chromium, the arm64 cross tools (gcc-aarch64-linux-gnu,
# qemu-user) and OpenSSH's server. The Makefile's deps targets ask for the right set.
set -eu
tmp=$(mktemp -d "${TMPDIR:-/tmp}/spartan-deps-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "FAIL deps: $*"
    exit 1
}
pc=$(command -v pkg-config) || fail "no pkg-config"
mkdir "$tmp/bin"
for c in sh cc uname dirname grep id xcode-select; do
    p=$(command -v "$c" 2>/dev/null) && ln -s "$p" "$tmp/bin/$c"
done
# FAKE_MISSING lists the packages this pkg-config denies (default: Criterion).
cat >"$tmp/bin/pkg-config" <<PC
#!/bin/sh
for a; do
    for m in \${FAKE_MISSING:-criterion}; do [ "\$a" = "\$m" ] && exit 1; done
done
exec "$pc" "\$@"
PC
chmod +x "$tmp/bin/pkg-config"
[ ! -e "$tmp/bin/gnuplot" ] || fail "gnuplot leaked into the fake PATH"
[ ! -e "$tmp/bin/mpirun" ] || fail "mpirun leaked into the fake PATH"
if [ "$(uname -s)" = Darwin ]; then
    p=$(command -v brew) && ln -s "$p" "$tmp/bin/brew"
fi

out=$(PATH="$tmp/bin" sh scripts/check-deps run 2>&1) || fail "check-deps run failed without the test set: $out"
[ -z "$out" ] || fail "check-deps run is not quiet when the run set is complete: $out"
out=$(PATH="$tmp/bin" VERBOSE=1 sh scripts/check-deps 2>&1) || fail "check-deps (default run) failed: $out"
echo "$out" | grep -q "Criterion\|gnuplot\|mpirun" && fail "the run set lists a test dependency: $out"

rc=0
out=$(PATH="$tmp/bin" sh scripts/check-deps test 2>&1) || rc=$?
[ "$rc" = 1 ] || fail "check-deps test exited $rc, want 1: $out"
echo "$out" | grep -q "✗ Criterion" || fail "Criterion not reported missing: $out"
echo "$out" | grep -q "✗ gnuplot" || fail "gnuplot not reported missing: $out"
echo "$out" | grep -q "✗ OpenMPI mpirun" || fail "mpirun not reported missing: $out"
[ "$(echo "$out" | grep -c "✗")" = 3 ] || fail "other dependencies reported missing: $out"

out=$(PATH="$tmp/bin" sh scripts/install-deps run 2>&1) || fail "install-deps run failed: $out"
[ -z "$out" ] || fail "install-deps run wanted to install something for the run set: $out"

rc=0
out=$(sh scripts/check-deps bogus 2>&1) || rc=$?
[ "$rc" = 2 ] && echo "$out" | grep -q "usage" || fail "check-deps bogus: rc $rc: $out"
rc=0
out=$(sh scripts/install-deps bogus 2>&1) || rc=$?
[ "$rc" = 2 ] && echo "$out" | grep -q "usage" || fail "install-deps bogus: rc $rc: $out"

# A package manager that installs nothing and records what it was asked for.
mkdir "$tmp/pm"
cp -R "$tmp/bin/." "$tmp/pm/"
rm -f "$tmp/pm/brew"
printf '#!/bin/sh\necho "$*" >>"%s"\n' "$tmp/calls" >"$tmp/pm/apt-get"
printf '#!/bin/sh\nexit 1\n' >"$tmp/pm/dpkg-query"
printf '#!/bin/sh\nexec "$@"\n' >"$tmp/pm/sudo"
printf '#!/bin/sh\ncase "$1" in install) echo "install $2" >>"%s" ;; esac\nexit 1\n' \
    "$tmp/calls" >"$tmp/pm/brew"
chmod +x "$tmp/pm/apt-get" "$tmp/pm/dpkg-query" "$tmp/pm/sudo" "$tmp/pm/brew"
for want in run test; do
    : >"$tmp/calls"
    rc=0
    out=$(PATH="$tmp/pm" FAKE_MISSING="criterion jansson" sh scripts/install-deps $want 2>&1) || rc=$?
    [ "$rc" = 1 ] && echo "$out" | grep -q "still missing" ||
        fail "install-deps $want with jansson missing: rc $rc: $out"
    asked=$(grep install "$tmp/calls" | tr '\n' ' ')
    echo "$asked" | grep -q "jansson" || fail "install-deps $want did not ask for jansson: $asked"
    for p in criterion gnuplot chromium mpi qemu-user gcc-aarch64-linux-gnu openssh-server; do
        if echo "$asked" | grep -q "$p"; then
            [ $want = test ] || fail "install-deps run asked for $p: $asked"
        elif [ $want = test ] && { [ $p = criterion ] || [ $p = gnuplot ] || [ $p = mpi ] ||
            [ "$(uname -s)" != Darwin ]; }; then
            fail "install-deps test did not ask for $p: $asked"
        fi
    done
done

# Here the test set is installed (make test checked it): install-deps test is then quiet.
out=$(NO_BROWSER=1 NO_CROSS=1 sh scripts/install-deps test 2>&1) || fail "install-deps test failed: $out"
[ -z "$out" ] || fail "install-deps test is not quiet with everything installed: $out"

make --no-print-directory -n deps | grep -q "install-deps run" || fail "make deps does not install the run set"
make --no-print-directory -n deps-test | grep -q "install-deps test" || fail "make deps-test does not install the test set"
make --no-print-directory -n run 2>/dev/null | head -1 | grep -q "install-deps run" || fail "make run does not install the run set first"
grep -q "install-deps test" .ci/run || fail ".ci/run does not install the test set"
echo "deps: ok"
