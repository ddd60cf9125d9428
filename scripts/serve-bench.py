#!/usr/bin/env python3
"""Benchmark a running `kiln serve` (or any OpenAI-compatible server) from the client side.

    scripts/serve-bench.py --base http://127.0.0.1:8080/v1 [--key KEY] [--model ID]
                           [--streams 1,4,16,32] [--tokens 64] [--repeats 3] [--json]

For each concurrency N: N chat streams start together (distinct prompts, `ignore_eos`, N x
`--tokens` generated); reported are the aggregate generated tokens per second (all tokens /
wall time from the first request to the last `[DONE]`) and the median time to first token.
Each figure is the median of `--repeats` rounds.

Then prefix reuse: a request with a long system prompt (~1,500 tokens) and then a second one
with the same system prompt and another question; reported are both times to first token and
their ratio (the second reuses the first's cached prefix).

Standard library only, so it runs wherever Python 3 does.
"""

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request


def stream_chat(base, key, model, messages, max_tokens, seed):
    """One streamed chat request: (time to first token s, generated tokens, end time)."""
    body = json.dumps({
        "model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
        "temperature": 0.8, "seed": seed, "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }).encode()
    req = urllib.request.Request(base + "/chat/completions", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if ttft is None and (c["delta"].get("content") or c.get("finish_reason")):
                    ttft = time.perf_counter() - t0
    return ttft, tokens, time.perf_counter()


def round_of(base, key, model, n, max_tokens, round_no):
    results = [None] * n
    errors = []

    def one(i):
        try:
            msgs = [{"role": "user", "content": f"Tell me story number {round_no * 1000 + i}."}]
            results[i] = stream_chat(base, key, model, msgs, max_tokens, seed=i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} streams failed: {errors[0]}")
    wall = max(r[2] for r in results) - t0
    tokens = sum(r[1] for r in results)
    return tokens / wall, statistics.median(r[0] for r in results)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--key", default=None)
    ap.add_argument("--model", default=None, help="model id (default: the server's first)")
    ap.add_argument("--streams", default="1,4,16,32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    model = a.model
    if model is None:
        req = urllib.request.Request(a.base + "/models")
        if a.key:
            req.add_header("Authorization", f"Bearer {a.key}")
        with urllib.request.urlopen(req, timeout=60) as r:
            model = json.load(r)["data"][0]["id"]
    report = {"model": model, "tokens_per_stream": a.tokens, "concurrency": []}
    # Warm-up: first-use allocations and caches.
    round_of(a.base, a.key, model, 2, 8, 99)
    for n in [int(x) for x in a.streams.split(",")]:
        rounds = [round_of(a.base, a.key, model, n, a.tokens, r) for r in range(a.repeats)]
        tps = statistics.median(r[0] for r in rounds)
        ttft = statistics.median(r[1] for r in rounds)
        report["concurrency"].append({"streams": n, "aggregate_tok_s": round(tps, 1),
                                      "ttft_ms_median": round(ttft * 1e3, 1)})
        if not a.json:
            print(f"{n:3d} streams: {tps:7.1f} tok/s aggregate, time to first token "
                  f"{ttft * 1e3:7.1f} ms (median of {a.repeats})", flush=True)
    base1 = report["concurrency"][0]["aggregate_tok_s"]
    for c in report["concurrency"]:
        c["speedup_vs_first"] = round(c["aggregate_tok_s"] / base1, 2)
    # Prefix reuse: the same long system prompt twice, different questions.
    system = " ".join(f"Rule {i}: answer politely, briefly and truthfully." for i in range(150))
    firsts, seconds = [], []
    for r in range(a.repeats):
        sys_msg = {"role": "system", "content": f"Session {r}. {system}"}
        t1, _, _ = stream_chat(a.base, a.key, model,
                               [sys_msg, {"role": "user", "content": "What is a kiln?"}], 1, 1)
        t2, _, _ = stream_chat(a.base, a.key, model,
                               [sys_msg, {"role": "user", "content": "Name a colour."}], 1, 1)
        firsts.append(t1)
        seconds.append(t2)
    f, s = statistics.median(firsts), statistics.median(seconds)
    report["prefix_reuse"] = {"first_ttft_ms": round(f * 1e3, 1), "second_ttft_ms": round(s * 1e3, 1),
                              "speedup": round(f / s, 1)}
    if a.json:
        print(json.dumps(report))
    else:
        print(f"prefix reuse: first request {f * 1e3:.1f} ms to first token, second "
              f"{s * 1e3:.1f} ms ({f / s:.1f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
