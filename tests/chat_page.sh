#!/bin/sh
# chat_page.sh: end-to-end test of the chat page at GET /. It starts `spartan serve` on a small
# checkpoint (CKPT argument, or a char-level model trained here for a few seconds), opens
# /?prompt=... in headless Chromium, which streams the answer from /v1/chat/completions, waits
# (in real time, over the DevTools protocol) until the page has finished, checks that the page
# shows exactly the greedy answer the API gives for the same conversation, and saves a
# screenshot (PNG). Skips (exit 77) with a reason when Chromium is absent.
#   usage: tests/chat_page.sh [CKPT|DIR]      env: SPARTAN_BIN, CHROMIUM, CHAT_PNG, KEEP_TMP
set -eu
bin=${SPARTAN_BIN:-bin/spartan}
chromium=${CHROMIUM:-/usr/bin/chromium}
png=${CHAT_PNG:-build/chat_page/serve-chat.png}
prompt="Speak, Romeo."
if [ ! -x "$chromium" ]; then
    echo "SKIP chat_page: no Chromium at $chromium (set CHROMIUM=/path/to/chromium)"
    exit 77
fi
[ -x "$bin" ] || { echo "FAIL chat_page: no spartan binary at $bin"; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/spartan-chat-XXXXXX")
pid=
cpid=
cleanup() {
    [ -n "$cpid" ] && kill "$cpid" 2>/dev/null || true
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    [ -n "$cpid" ] && wait "$cpid" 2>/dev/null || true # Chromium writes its profile until it exits
    [ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
    echo "FAIL chat_page: $*"
    [ -f "$tmp/serve.log" ] && tail -5 "$tmp/serve.log"
    exit 1
}

ckpt=${1:-}
if [ -z "$ckpt" ]; then # a small char-level model, trained just enough to spell a little
    "$bin" data prepare --tokenizer char data/tinyshakespeare.txt "$tmp/data" >/dev/null 2>&1 ||
        fail "data prepare"
    # small enough to train in seconds even under ASan on a loaded machine
    timeout 300 "$bin" train configs/tiny.ini --set data.dir="$tmp/data" \
        --set train.out_dir="$tmp/run" --set model.n_layer=1 --set model.n_embd=32 \
        --set model.n_head=2 --set train.batch_size=8 --set train.max_iters=300 \
        --set train.warmup_iters=10 --set train.eval_interval=0 --set train.eval_iters=1 \
        --set train.log_interval=300 --set train.threads=2 >"$tmp/train.log" 2>&1 ||
        fail "training the test model: $(tail -3 "$tmp/train.log")"
    ckpt="$tmp/run"
fi

: >"$tmp/serve.out" # exists before the loop below reads it
"$bin" serve "$ckpt" --port 0 --threads 2 >"$tmp/serve.out" 2>"$tmp/serve.log" &
pid=$!
url=
i=0
while [ $i -lt 200 ] && [ -z "$url" ]; do
    url=$(sed -n 's/.*listening on \(http:[^ ]*\)$/\1/p' "$tmp/serve.out")
    [ -n "$url" ] || sleep 0.1
    i=$((i + 1))
done
[ -n "$url" ] || fail "spartan serve printed no URL"
url=${url%/}

# The greedy answer through the API (streamed), for the conversation the page will send.
expected=$(PROMPT="$prompt" python3 -c '
import json, os, sys, urllib.request
body = json.dumps({"messages": [{"role": "user", "content": os.environ["PROMPT"]}],
                   "stream": True, "temperature": 0, "max_tokens": 60}).encode()
req = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", body,
                             {"Content-Type": "application/json"})
text = ""
for ev in urllib.request.urlopen(req, timeout=30).read().decode().split("\n\n"):
    if ev.startswith("data: ") and ev != "data: [DONE]":
        text += json.loads(ev[6:])["choices"][0]["delta"].get("content", "")
print(json.dumps(text))
' "$url") || fail "API request"

q=$(PROMPT="$prompt" python3 -c 'import os, urllib.parse; print(urllib.parse.quote(os.environ["PROMPT"]))')
page="$url/?prompt=$q&temperature=0&max_tokens=60"
mkdir -p "$(dirname "$png")"
rm -f "$png"
timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --disable-dev-shm-usage --remote-debugging-port=0 --user-data-dir="$tmp/profile" \
    --window-size=900,560 \
    "$page" >"$tmp/chromium.log" 2>&1 &
cpid=$!
cat >"$tmp/devtools.py" <<'PY'
# A DevTools-protocol client using only the standard library (the WebSocket framing of RFC 6455
# is written out): wait until the page has streamed its answer, compare it, take a screenshot.
import base64, json, os, socket, struct, sys, time, urllib.request

def fail(msg):
    print(msg)
    sys.exit(1)

deadline = time.time() + 60
port = None
def browser_alive():
    try:
        os.kill(int(os.environ["CPID"]), 0)
        return True
    except (OSError, ValueError, KeyError):
        return False

while time.time() < deadline and not port and browser_alive():
    try:
        port = int(open(os.environ["PROFILE"] + "/DevToolsActivePort").read().split()[0])
    except (OSError, ValueError, IndexError):
        time.sleep(0.1)
if not port:
    # A browser that cannot start here (no display stack, no shared memory) is the machine's
    # problem, not the page's: skip, with its own words in the log.
    print("SKIP chat_page: Chromium did not start (it exited, or no DevTools port within 60 s)")
    sys.exit(77)
ws_url = None
while time.time() < deadline and not ws_url:
    try:
        targets = json.load(urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port))
        ws_url = next((t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"), None)
    except OSError:
        pass
    if not ws_url:
        time.sleep(0.1)
if not ws_url:
    fail("no page target in Chromium")

path = ws_url.split(str(port), 1)[1]
sock = socket.create_connection(("127.0.0.1", port), timeout=60)
sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Key: c3BhcnRhbnNwYXJ0YW4=\r\n"
              "Sec-WebSocket-Version: 13\r\n\r\n" % (path, port)).encode())
head = b""
while b"\r\n\r\n" not in head:
    head += sock.recv(1)
if b" 101 " not in head.split(b"\r\n")[0]:
    fail("WebSocket handshake failed: %r" % head)

def recv_exact(n):
    b = b""
    while len(b) < n:
        c = sock.recv(n - len(b))
        if not c:
            fail("DevTools connection closed")
        b += c
    return b

def send(obj):
    data = json.dumps(obj).encode()
    n = len(data)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    mask = os.urandom(4)
    sock.sendall(bytes([0x81]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

def recv():
    msg = b""
    while True:
        b0, b1 = recv_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", recv_exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", recv_exact(8))[0]
        msg += recv_exact(n)
        if b0 & 0x80:
            return json.loads(msg)

def call(i, method, **params):
    # The page target can exist before its document does: an evaluation started then fails
    # with "Execution context was destroyed" when the navigation commits. Try again.
    for attempt in range(20):
        send({"id": i * 100 + attempt, "method": method, "params": params})
        while True:
            m = recv()
            if m.get("id") == i * 100 + attempt:
                break
        if "error" not in m:
            return m["result"]
        if "context was destroyed" not in str(m["error"]) or time.time() > deadline:
            fail("%s: %s" % (method, m["error"]))
        time.sleep(0.2)
    fail("%s: the page kept reloading" % method)

wait = """new Promise(function (ok) {
  var t = setInterval(function () {
    var a = document.getElementById("answer-1");
    if (document.body.dataset.state === "done" && a) {
      clearInterval(t);
      ok(JSON.stringify({done: a.dataset.done || "", cls: a.className, text: a.textContent}));
    }
  }, 50);
})"""
r = call(1, "Runtime.evaluate", expression=wait, awaitPromise=True, timeout=45000)
if "value" not in r["result"]:
    fail("the page did not finish: %r" % r)
got = json.loads(r["result"]["value"])
want = json.loads(os.environ["EXPECTED"])
if got["done"] != "1" or got["cls"] != "msg assistant":
    fail("the page shows an error: %r" % got["text"])
if got["text"] != want or not want.strip():
    fail("page answer %r != API answer %r" % (got["text"], want))
shot = call(2, "Page.captureScreenshot", format="png")
open(os.environ["PNG"], "wb").write(base64.b64decode(shot["data"]))
print("chat page streamed %d characters: %r" % (len(want), want[:60]))
PY
rc=0
CPID=$cpid EXPECTED="$expected" PNG="$png" PROFILE="$tmp/profile" timeout 90 python3 "$tmp/devtools.py" ||
    rc=$?
if [ "$rc" = 77 ]; then
    tail -3 "$tmp/chromium.log"
    exit 77
fi
[ "$rc" = 0 ] || fail "the page did not show the streamed answer ($(tail -2 "$tmp/chromium.log"))"
kill "$cpid" 2>/dev/null || true
wait "$cpid" 2>/dev/null || true
cpid=
[ "$(head -c 4 "$png" | tail -c 3)" = "PNG" ] || fail "no PNG screenshot at $png"
grep -q "cancelled" "$tmp/serve.log" && fail "a stream was cut short"
kill -TERM "$pid"
wait "$pid" || fail "spartan serve did not exit cleanly on SIGTERM"
pid=
echo "PASS chat_page: screenshot $png"
