#!/bin/sh
# macos_syntax.sh: CI has no Mac, so this compiles the macOS branch of the platform file
# (train/base/sys.c with __APPLE__ and without __linux__) on Linux, against a shim that declares
# the two Darwin-only names it uses with the SDK's signatures: F_FULLFSYNC (<sys/fcntl.h>, 51) and
# _NSGetExecutablePath (<mach-o/dyld.h>). It catches a typo, a missing header or a wrong type in
# that branch; only a real Mac runs it (README, "Mac Minis"). Then the same for the portable
# branch (-DSPARTAN_FORCE_PORTABLE), which tests/sys_test.c also runs as sys_portable_test.
# The flags are the Makefile's. Exit 0 passes, 77 skips (no C compiler).
set -eu
cc=${CC:-cc}
command -v "$cc" >/dev/null 2>&1 || { echo "SKIP macos_syntax: no C compiler ($cc)"; exit 77; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/spartan-macos-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "FAIL macos_syntax: $*"
    exit 1
}
mkdir -p "$tmp/mach-o"
cat >"$tmp/mach-o/dyld.h" <<'EOF'
#include <stdint.h>
extern int _NSGetExecutablePath(char *buf, uint32_t *bufsize);
EOF
cat >"$tmp/shim.h" <<'EOF'
#define F_FULLFSYNC 51
EOF
flags="-std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra -Wshadow -Wstrict-prototypes \
-Wmissing-prototypes -Wvla -Werror -I."
# shellcheck disable=SC2086
$cc $flags -U__linux__ -D__APPLE__ -I"$tmp" -include "$tmp/shim.h" -fsyntax-only \
    train/base/sys.c 2>"$tmp/err" || fail "the macOS branch does not compile: $(cat "$tmp/err")"
# shellcheck disable=SC2086
$cc $flags -U__linux__ -D__APPLE__ -I"$tmp" -include "$tmp/shim.h" -E train/base/sys.c \
    >"$tmp/mac.i" 2>/dev/null
grep -q 'fcntl(fd, 51)' "$tmp/mac.i" || fail "the macOS branch does not use F_FULLFSYNC"
grep -q 'if (_NSGetExecutablePath(' "$tmp/mac.i" || fail "the macOS branch does not call _NSGetExecutablePath"
grep -q 'pthread_condattr_setclock(&ca' "$tmp/mac.i" && fail "the macOS branch sets a condvar clock"
echo "ok macOS branch of train/base/sys.c compiles (shim: F_FULLFSYNC, _NSGetExecutablePath)"
# shellcheck disable=SC2086
$cc $flags -DSPARTAN_FORCE_PORTABLE -fsyntax-only train/base/sys.c 2>"$tmp/err" ||
    fail "the portable branch does not compile: $(cat "$tmp/err")"
# shellcheck disable=SC2086
$cc $flags -DSPARTAN_FORCE_PORTABLE -E train/base/sys.c >"$tmp/portable.i" 2>/dev/null
grep -q 'readlink("/proc' "$tmp/portable.i" && fail "the portable branch reads /proc"
echo "ok portable branch of train/base/sys.c compiles"
echo "PASS macos_syntax"
