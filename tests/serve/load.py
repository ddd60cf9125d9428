"""A bounded load test of `kiln serve` on loopback, run by tests/serve.rs:
    python3 tests/serve/load.py BASE_URL API_KEY MODEL_ID SERVER_PID [shutdown]

Default mode: 32 concurrent chat streams, a quarter of the clients disconnecting mid-stream.
Every completed stream must be well-formed (JSON chunks, exactly one finish_reason, `[DONE]`
last), nothing may hang, disconnected sequences must be cancelled and their slots freed, the
server's memory must return to its baseline, and the /metrics counts must add up.

`shutdown` mode: 8 streams run, the server gets SIGTERM mid-way; every stream must still
complete whole (its grace period lets them finish).
"""

import json
import os
import signal
import sys
import threading
import time
import urllib.request

BASE, KEY, MODEL, PID = sys.argv[1:5]
MODE = sys.argv[5] if len(sys.argv) > 5 else "load"
PID = int(PID)
ROOT = BASE.rsplit("/v1", 1)[0]
TIMEOUT = 300


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def get(path):
    req = urllib.request.Request(ROOT + path)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def health():
    return json.loads(get("/health"))


def metrics():
    """Sample lines of /metrics as {name{labels}: value}."""
    out = {}
    for line in get("/metrics").splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def count(m, prefix):
    return sum(v for k, v in m.items() if k.startswith(prefix))


def stream(i, max_tokens, disconnect_after, results):
    body = json.dumps({
        "model": MODEL, "stream": True, "max_tokens": max_tokens, "seed": i,
        "stream_options": {"include_usage": True}, "ignore_eos": True,
        "messages": [{"role": "user", "content": f"Write a long story about number {i}."}],
    }).encode()
    req = urllib.request.Request(BASE + "/chat/completions", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {KEY}")
    r = {"chunks": 0, "finishes": [], "done": False, "usage": None, "error": None, "text": ""}
    results[i] = r  # visible while it runs (the shutdown mode watches the chunk counts)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line:
                    continue
                if not line.startswith("data: "):
                    if line.startswith(":"):
                        continue  # keep-alive comment
                    raise ValueError(f"not an SSE data line: {line!r}")
                data = line[6:]
                if r["done"]:
                    raise ValueError("data after [DONE]")
                if data == "[DONE]":
                    r["done"] = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ValueError(f"error chunk: {chunk}")
                r["chunks"] += 1
                if chunk.get("usage"):
                    if chunk["choices"]:
                        raise ValueError("the usage chunk has choices")
                    r["usage"] = chunk["usage"]
                for c in chunk["choices"]:
                    r["text"] += c["delta"].get("content") or ""
                    if c["finish_reason"] is not None:
                        r["finishes"].append(c["finish_reason"])
                if disconnect_after and r["chunks"] >= disconnect_after:
                    r["disconnected"] = True
                    break  # closing the response drops the connection
    except Exception as e:  # noqa: BLE001 - recorded and reported
        r["error"] = repr(e)


def run(n, max_tokens, disconnecting):
    results = {}
    threads = []
    for i in range(n):
        d = 3 if i in disconnecting else 0
        t = threading.Thread(target=stream, args=(i, max_tokens, d, results))
        t.start()
        threads.append(t)
    return threads, results


def check_complete(i, r, max_tokens):
    assert r["error"] is None, f"stream {i}: {r['error']}"
    assert r["done"], f"stream {i} did not end with [DONE]"
    assert r["finishes"] == ["length"], f"stream {i}: finish reasons {r['finishes']}"
    assert r["usage"] and r["usage"]["completion_tokens"] == max_tokens, f"stream {i}: {r['usage']}"


def load_mode():
    # Warm up (first-use allocations), then the baseline.
    threads, res = run(8, 16, set())
    for t in threads:
        t.join(TIMEOUT)
    time.sleep(0.5)
    base_rss = rss_kib(PID)
    m0 = metrics()
    n, max_tokens = 32, 48
    disconnecting = set(range(0, n, 4))
    t0 = time.time()
    threads, results = run(n, max_tokens, disconnecting)
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a stream hung"
    wall = time.time() - t0
    completed = 0
    for i, r in results.items():
        if i in disconnecting:
            assert r.get("disconnected") or r["error"] is None, f"stream {i}: {r}"
        else:
            check_complete(i, r, max_tokens)
            completed += 1
    # Disconnected sequences are cancelled: every slot frees up.
    deadline = time.time() + 10
    while True:
        h = health()
        if h["slots"]["busy"] == 0 and h["queue"] == 0:
            break
        assert time.time() < deadline, f"slots still busy: {h}"
        time.sleep(0.1)
    time.sleep(0.5)
    m1 = metrics()
    rss = rss_kib(PID)
    ok = count(m1, 'kiln_requests_total{endpoint="/v1/chat/completions",status="200"}') - \
        count(m0, 'kiln_requests_total{endpoint="/v1/chat/completions",status="200"}')
    gone = count(m1, 'kiln_requests_total{endpoint="/v1/chat/completions",status="499"}') - \
        count(m0, 'kiln_requests_total{endpoint="/v1/chat/completions",status="499"}')
    gen = count(m1, "kiln_generated_tokens_total") - count(m0, "kiln_generated_tokens_total")
    print(f"{n} streams in {wall:.1f} s: {completed} completed, {len(disconnecting)} disconnected; "
          f"metrics: {ok:.0f} ok + {gone:.0f} client-closed, {gen:.0f} generated tokens; "
          f"RSS {base_rss} -> {rss} KiB")
    assert ok == completed, f"{ok} requests counted ok, {completed} completed"
    assert gone == len(disconnecting), f"{gone} counted as client-closed, {len(disconnecting)} disconnected"
    assert gen >= completed * max_tokens, f"{gen} generated tokens counted"
    assert rss <= base_rss * 1.10 + 16 * 1024, f"memory grew: {base_rss} -> {rss} KiB"


def shutdown_mode():
    max_tokens = 64
    threads, results = run(8, max_tokens, set())
    # Let every stream start producing, then ask the server to stop.
    deadline = time.time() + 60
    while not (len(results) == 8 and all(r["chunks"] >= 2 for r in list(results.values()))):
        assert time.time() < deadline, "the streams did not start"
        time.sleep(0.02)
    os.kill(PID, signal.SIGTERM)
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a stream hung during shutdown"
    for i, r in results.items():
        check_complete(i, r, max_tokens)
    print(f"shutdown under load: {len(results)} streams completed whole")


if __name__ == "__main__":
    if MODE == "shutdown":
        shutdown_mode()
    else:
        load_mode()
    print("ok")
