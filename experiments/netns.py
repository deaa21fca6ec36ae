#!/usr/bin/env python3
"""netns.py: a star of network namespaces for the experiment runner, with a rate limit per peer.

    python3 experiments/netns.py selftest [--rate-mbit R] [--mbytes M]
    python3 experiments/netns.py sweep
    python3 experiments/netns.py available     # "ok" (exit 0), or why not (exit 1)

Peer i lives in namespace <prefix>-<i> with one interface, eth0 = 10.213.0.(i+1)/24. Its veth
partner v<i> sits in a hub namespace <prefix>-h, enslaved to the bridge br0, so every peer reaches
every other through the hub. When a rate is given, `tc tbf` on each peer's eth0 limits what that
peer sends (its upload); this kernel has no netem, so latency stays with the transport's own
emulation (net.delay_ms). Nothing is created in the root namespace, and deleting the namespaces
removes every interface with them.

The prefix is "spx<runner pid>", so a sweep can tell stale namespaces (their runner is gone) from
live ones: `sweep` (and every Star() at start) deletes those whose pid no longer runs. Needs root
and iproute2. `selftest` builds a 2-peer star, pushes M MB from peer 0 to peer 1 over TCP, prints
`throughput_mbit <measured> rate_mbit <set>` and tears the star down. Standard library only.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

PREFIX = "spx"
SUBNET = "10.213.0"
STALE_RE = re.compile(r"^" + PREFIX + r"(\d+)-(h|\d+)$")


class NetnsError(RuntimeError):
    pass


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip() or 'exit %d' % r.returncode}")
    return r


def available():
    """Return (True, "") if namespaces can be made here, else (False, reason)."""
    if os.geteuid() != 0:
        return False, "not root"
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            return False, f"'{tool}' (iproute2) not found"
    name = f"{PREFIX}{os.getpid()}-probe"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return False, f"ip netns add failed: {r.stderr.strip()}"
    # a container may allow namespaces but not veth pairs or qdiscs: try both inside it
    why = ""
    r = _ip("-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
    if r.returncode != 0:
        why = f"ip link add type veth failed: {r.stderr.strip()}"
    else:
        r = subprocess.run(["tc", "-n", name, "qdisc", "add", "dev", "p0", "root", "tbf", "rate",
                            "10mbit", "burst", "32kbit", "latency", "50ms"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            why = f"tc qdisc add tbf failed: {r.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return not why, why


def list_netns():
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(verbose=False):
    """Delete namespaces of our prefix whose runner pid is gone. Returns the names deleted."""
    gone = []
    for name in list_netns():
        m = STALE_RE.match(name)
        if not m or _alive(int(m.group(1))):
            continue
        for pid in _pids_in(name):  # orphaned peers keep a namespace alive: stop them first
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        _ip("netns", "del", name, check=False)
        gone.append(name)
        if verbose:
            print(f"netns: removed stale namespace {name}", file=sys.stderr)
    return gone


def _pids_in(name):
    r = _ip("netns", "pids", name, check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


class Star:
    """P peer namespaces joined by a bridge in a hub namespace. Use as a context manager, or call
    close() in a finally: close() is idempotent and never raises."""

    def __init__(self, n, rate_mbit=0.0):
        sweep()
        self.n = n
        self.prefix = f"{PREFIX}{os.getpid()}"  # one star per process at a time
        if f"{self.prefix}-h" in list_netns():
            raise NetnsError(f"namespace {self.prefix}-h exists: one star per process")
        self.hub = f"{self.prefix}-h"
        self.names = [f"{self.prefix}-{i}" for i in range(n)]
        self.rate_mbit = rate_mbit
        self.made = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def addr(self, i):
        return f"{SUBNET}.{i + 1}"

    def _build(self):
        _ip("netns", "add", self.hub)
        self.made.append(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        _ip("-n", self.hub, "link", "set", "lo", "up")
        for i, ns in enumerate(self.names):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("link", "add", "name", "eth0", "netns", ns, "type", "veth", "peer", "name",
                f"v{i}", "netns", self.hub)
            _ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0")
            _ip("-n", self.hub, "link", "set", f"v{i}", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")
            if self.rate_mbit > 0:
                self._limit(ns)

    def _limit(self, ns):
        # tbf: the bucket must hold at least one timer tick of traffic and one full frame;
        # 4 ms worth (at least 16 KB) keeps bursts short against transfers of many MB. GSO
        # frames larger than the bucket are segmented by tbf itself.
        rate_bps = self.rate_mbit * 1e6
        burst = max(16384, int(rate_bps / 8 * 0.004))
        r = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0",
                            "root", "tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst),
                            "latency", "200ms"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise NetnsError(f"tc tbf on {ns}: {r.stderr.strip()}")

    def exec_prefix(self, i):
        """The argv prefix that runs a command inside peer i's namespace."""
        return ["ip", "netns", "exec", self.names[i]]

    def close(self):
        for ns in reversed(self.made):
            for pid in _pids_in(ns):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            _ip("netns", "del", ns, check=False)
        self.made = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


RECV_SNIPPET = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if t0 is None: t0 = time.monotonic()
    n += len(b)
print(n, time.monotonic() - t0, flush=True)
"""

SEND_SNIPPET = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
buf = b"x" * (1 << 16); left = int(sys.argv[3])
while left > 0:
    k = min(left, len(buf)); s.sendall(buf[:k]); left -= k
s.close()
"""


def measure(star, mbytes, port=5999):
    """Push mbytes MB from peer 0 to peer 1 of star over TCP; return the receiver's Mbit/s,
    timed from the first byte received to the last (so connection set-up is excluded)."""
    recv = subprocess.Popen(star.exec_prefix(1) + [sys.executable, "-c", RECV_SNIPPET,
                                                   star.addr(1), str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        if recv.stdout.readline().strip() != "ready":
            raise NetnsError("selftest receiver did not start")
        n = int(mbytes * 1e6)
        subprocess.run(star.exec_prefix(0) + [sys.executable, "-c", SEND_SNIPPET, star.addr(1),
                                              str(port), str(n)], check=True, timeout=120)
        got, secs = recv.stdout.readline().split()
        recv.wait(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
    if int(got) != n:
        raise NetnsError(f"selftest: received {got} of {n} bytes")
    return int(got) * 8 / float(secs) / 1e6


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] == "available":
        ok, why = available()
        print("ok" if ok else f"unavailable: {why}")
        return 0 if ok else 1
    if argv[0] == "sweep":
        for name in sweep():
            print(f"removed {name}")
        return 0
    if argv[0] == "selftest":
        rate, mb = 20.0, 3.0
        i = 1
        while i < len(argv):
            if argv[i] == "--rate-mbit" and i + 1 < len(argv):
                rate = float(argv[i + 1])
            elif argv[i] == "--mbytes" and i + 1 < len(argv):
                mb = float(argv[i + 1])
            else:
                print(f"netns: unknown argument '{argv[i]}'", file=sys.stderr)
                return 2
            i += 2
        ok, why = available()
        if not ok:
            print(f"netns: unavailable: {why}", file=sys.stderr)
            return 3
        t0 = time.monotonic()
        with Star(2, rate_mbit=rate) as star:
            names = list(star.made)
            mbit = measure(star, mb)
        left = [n for n in names if n in list_netns()]
        print(f"throughput_mbit {mbit:.3f} rate_mbit {rate:g} namespaces {len(names)} "
              f"left_after_close {len(left)} secs {time.monotonic() - t0:.2f}")
        return 0 if not left else 1
    print(f"netns: unknown command '{argv[0]}'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
