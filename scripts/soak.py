#!/usr/bin/env python3
"""Soak `onnxpack serve`: minutes of mixed traffic at fixed concurrency on loopback, watching memory.

    python scripts/soak.py PACKAGE [--minutes 10] [--concurrency 16] [--json soak.json]

Each closed-loop client sends, in a fixed mix: good requests (1–8 CoLA sentences, every answer
checked against `onnxpack predict`), bad ones (invalid JSON, an empty text, a wrong field, too many
texts, a V2 tensor of the wrong type) that must get a 4xx, and oversized ones (a 2 MiB body, a
50,000-character text) that must get 413 or 422. The server's RSS is sampled every 10 s. It
prints, and writes with --json: requests by kind, errors on good requests, wrong statuses, p50/p99
of good requests, and RSS first/last/max with the growth from the first sample after warm-up.
Exits 1 on any error, wrong status, or RSS growth of 10% or more. Not part of CI (it runs for
minutes); figures in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from loadtest import HttpClient, reference_predictions, server  # noqa: E402  (one client, one server starter)

from onnxpack.core.data import load_splits, resolve_data  # noqa: E402

SAMPLE_S = 10


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bad_requests(model: str) -> list[tuple[str, bytes, set[int]]]:
    """(path, body, acceptable statuses) of requests a server must refuse."""
    return [
        ("/predict", b"{not json", {400, 422}),
        ("/predict", json.dumps({"texts": ["   "]}).encode(), {400, 422}),
        ("/predict", json.dumps({"sentences": ["hi"]}).encode(), {400, 422}),
        ("/predict", json.dumps({"texts": ["x"] * 1000}).encode(), {400, 422}),
        (f"/v2/models/{model}/infer", json.dumps({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1],
                                                             "data": [1.0]}]}).encode(), {400, 422}),
        ("/v2/models/no-such-model/infer", b"{}", {400, 404, 422}),
    ]


def oversized() -> list[tuple[str, bytes, set[int]]]:
    return [("/predict", json.dumps({"texts": ["a" * (2 << 20)]}).encode(), {413}),
            ("/predict", json.dumps({"texts": ["word " * 10_000]}).encode(), {400, 413, 422})]


async def soak(port: int, pid: int, texts: list[str], reference: dict, model: str, concurrency: int,
               seconds: float, atol: float) -> dict:
    stop_at = time.perf_counter() + seconds
    counts = {"good": 0, "bad": 0, "oversized": 0}
    latencies: list[float] = []
    failures: list[str] = []
    rss: list[tuple[float, float]] = []
    bad, big = bad_requests(model), oversized()

    async def client(k: int) -> None:
        rng = random.Random(k)
        conn = HttpClient(port, model)
        while time.perf_counter() < stop_at:
            roll = rng.random()
            if roll < 0.8:
                chosen = rng.sample(texts, rng.randint(1, 8))
                started = time.perf_counter()
                status, payload = await _post(conn, "/predict", json.dumps({"texts": chosen}).encode())
                counts["good"] += 1
                if status != 200:
                    failures.append(f"good request got {status}: {payload[:120]!r}")
                    continue
                latencies.append(time.perf_counter() - started)
                for got, text in zip(json.loads(payload)["predictions"], chosen):
                    want = reference[text]
                    if got["label"] != want["label"] or abs(got["score"] - want["score"]) > atol:
                        failures.append(f"mismatch on {text!r}")
            else:
                kind, (path, body, allowed) = (("bad", rng.choice(bad)) if roll < 0.95 else
                                               ("oversized", rng.choice(big)))
                status, payload = await _post(conn, path, body)
                counts[kind] += 1
                if status not in allowed:
                    failures.append(f"{kind} request to {path} got {status}, not {sorted(allowed)}: {payload[:120]!r}")
        await conn.close()

    async def sample() -> None:
        while time.perf_counter() < stop_at:
            rss.append((round(seconds - (stop_at - time.perf_counter()), 1), round(rss_mb(pid), 1)))
            await asyncio.sleep(SAMPLE_S)

    await asyncio.gather(sample(), *(client(k) for k in range(concurrency)))
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    after_warmup = [r for t, r in rss if t >= SAMPLE_S] or [r for _, r in rss]
    growth = (after_warmup[-1] - after_warmup[0]) / after_warmup[0]
    return {"seconds": seconds, "concurrency": concurrency, "requests": counts,
            "good_errors": sum(f.startswith("good") or f.startswith("mismatch") for f in failures),
            "wrong_statuses": sum(not (f.startswith("good") or f.startswith("mismatch")) for f in failures),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "rss_mb": {"first": rss[0][1], "after_warmup": after_warmup[0], "last": rss[-1][1],
                       "max": max(r for _, r in rss)},
            "rss_growth_after_warmup": round(growth, 4), "rss_samples": rss, "failures": failures[:10]}


async def _post(conn: HttpClient, path: str, body: bytes) -> tuple[int, bytes]:
    try:
        return await conn.post(path, body)
    except (OSError, asyncio.IncompleteReadError, ValueError, TypeError) as e:
        await conn.close()
        return 0, repr(e).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--data", default=None)
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    texts = list(dict.fromkeys(t for t in load_splits(resolve_data(args.data), need_train=False).validation.texts
                               if isinstance(t, str)))
    model = json.loads((args.package / "manifest.json").read_text())["name"]
    with tempfile.TemporaryDirectory() as work:
        reference = reference_predictions(args.package, texts, Path(work), [])
        with server(args.package, "on", [], Path(work) / "server.log") as (port, pid):
            result = asyncio.run(soak(port, pid, texts, reference, model, args.concurrency, args.minutes * 60,
                                      args.atol))
    summary = {k: v for k, v in result.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    ok = result["good_errors"] == 0 and result["wrong_statuses"] == 0 and result["rss_growth_after_warmup"] < 0.10
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
