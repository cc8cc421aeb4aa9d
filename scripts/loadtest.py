#!/usr/bin/env python3
"""Load-test `onnxpack serve` on loopback: p50/p99 latency and throughput, micro-batching on and off.

For each batching mode it starts a real server (`python -m onnxpack serve`, --max-batch 32 for
"on", 1 for "off") on a free 127.0.0.1 port, then for each concurrency runs that many
closed-loop clients (each sends a one-text POST /predict, waits for the answer, sends the
next) for a warm-up second and then `--duration` seconds. Texts are the CoLA validation
sentences; every answer is checked against `onnxpack predict` on the same text (same label,
score within --atol). Exits 1 on any error or mismatch.

    python scripts/loadtest.py PACKAGE                              # c = 1, 8, 32; batching on and off; 10 s each
    python scripts/loadtest.py PACKAGE --concurrency 32 --duration 60 --batching on   # the soak run
    python scripts/loadtest.py PACKAGE --serve-args "--max-delay-ms 20 --threads 1"   # other server settings

The client speaks raw HTTP/1.1 over keep-alive connections on asyncio: on a 2-core machine
it shares the CPU with the server, so it has to cost little per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from onnxpack.data import load_splits, resolve_data
from onnxpack.package import Package
from onnxpack.runtime import serving_variant

HOST = "127.0.0.1"  # loopback only: the server and the clients live on this machine
MAX_BATCH = {"on": 32, "off": 1}


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects after an error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                          % (path.encode(), HOST.encode(), len(body)) + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])
        payload = await self.reader.readexactly(length)
        if re.search(rb"(?i)\r\nconnection: *close", head):
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_clients(port: int, texts: list[str], reference: dict[str, dict], concurrency: int, warmup_s: float,
                      duration_s: float, atol: float, server_pid: int) -> dict:
    """`concurrency` closed-loop clients for warmup_s + duration_s; statistics over the timed part."""
    latencies: list[float] = []
    cpu_at: list[float] = []
    failures: list[str] = []
    errors = mismatches = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

    async def client(k: int) -> None:
        nonlocal errors, mismatches
        conn = Connection(port)
        i = k * len(texts) // concurrency  # clients start at different texts
        while (sent := time.perf_counter()) < stop_at:
            text = texts[i % len(texts)]
            i += 1
            try:
                status, payload = await conn.post("/predict", json.dumps({"texts": [text]}).encode())
            except (OSError, asyncio.IncompleteReadError, ValueError, TypeError) as e:
                conn.close()
                status, payload = 0, repr(e).encode()
            done = time.perf_counter()
            if status != 200:
                errors += 1
                failures.append(f"{status}: {payload[:100]!r}")
                continue
            got, want = json.loads(payload)["predictions"][0], reference[text]
            if got["label"] != want["label"] or abs(got["score"] - want["score"]) > atol:
                mismatches += 1
                failures.append(f"mismatch on {text!r}: {got['label']} {got['score']} vs {want['label']} {want['score']}")
            if sent >= measure_from:
                latencies.append(done - sent)
        conn.close()

    async def note_cpu_at_start() -> None:
        await asyncio.sleep(warmup_s)
        cpu_at.append(cpu_seconds(server_pid))

    await asyncio.gather(note_cpu_at_start(), *(client(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - measure_from
    cpu_ms = (cpu_seconds(server_pid) - cpu_at[0]) * 1000 / max(len(latencies), 1)
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": round(elapsed, 2),
            "req_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "server_cpu_ms_per_req": round(cpu_ms, 2),
            "errors": errors, "mismatches": mismatches,
            "failures": failures[:5]}


def cpu_seconds(pid: int) -> float:
    """CPU time the server process has used, all its threads (Linux /proc): unlike wall-clock
    figures, it hardly moves when other work shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(package: Path, batching: str, extra: list[str], log: Path):
    """A real `onnxpack serve` process on a free loopback port, until SIGTERM at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "onnxpack", "serve", str(package), "--host", HOST, "--port", str(port),
           "--max-batch", str(MAX_BATCH[batching]), *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not ready(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not become ready; see {log}")
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def batch_stats(port: int) -> tuple[float, float]:
    """(rows, model calls) so far, from the server's /metrics."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST.encode())
        text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    values = dict(re.findall(r"^onnxpack_batch_size_(sum|count) (\S+)$", text, re.M))
    return float(values["sum"]), float(values["count"])


def ready(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as s:
            s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST.encode())
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def reference_predictions(package: Path, texts: list[str], work: Path, extra: list[str]) -> dict[str, dict]:
    """What `onnxpack predict` prints for each text: the answers every response must match."""
    (work / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    # The graph the server runs: --variant if given, else the one it picks itself.
    variant = extra[extra.index("--variant") + 1] if "--variant" in extra else serving_variant(Package.open(package))
    subprocess.run([sys.executable, "-m", "onnxpack", "predict", str(package), "--file", str(work / "texts.txt"),
                    "--out", str(work / "reference.jsonl"), "--variant", variant], check=True)
    rows = [json.loads(line) for line in (work / "reference.jsonl").read_text(encoding="utf-8").splitlines()]
    return {row["text"]: row for row in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--batching", default="on,off", help="on, off or both")
    parser.add_argument("--duration", type=float, default=10.0, help="timed seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds before each run")
    parser.add_argument("--data", help="CoLA folder (default: the usual places)")
    parser.add_argument("--atol", type=float, default=1e-4, help="allowed score difference from `onnxpack predict`")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--serve-args", default="", help='more `onnxpack serve` options, e.g. "--threads 1"')
    args = parser.parse_args()
    serve_args = shlex.split(args.serve_args)

    texts = [t for t in load_splits(resolve_data(args.data), need_train=False).validation.texts if t.strip()]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference = reference_predictions(args.package, texts, work, serve_args)
        for batching in args.batching.split(","):
            with server(args.package, batching, serve_args, work / f"serve-{batching}.log") as (port, pid):
                for c in (int(x) for x in args.concurrency.split(",")):
                    calls_before = batch_stats(port)
                    row = {"batching": batching, **asyncio.run(run_clients(port, texts, reference, c, args.warmup,
                                                                           args.duration, args.atol, pid))}
                    calls_after = batch_stats(port)
                    row["rows_per_call"] = round((calls_after[0] - calls_before[0])
                                                 / max(calls_after[1] - calls_before[1], 1), 1)
                    results.append(row)
                    print(f"batching {batching:>3}  c={c:<3} {row['req_per_s']:>8.1f} req/s  p50 {row['p50_ms']:>7.2f} ms"
                          f"  p99 {row['p99_ms']:>7.2f} ms  server CPU {row['server_cpu_ms_per_req']:.2f} ms/req  "
                          f"{row['rows_per_call']} rows/call  "
                          f"{row['requests']} requests, {row['errors']} errors, "
                          f"{row['mismatches']} mismatches", flush=True)
                    for failure in row["failures"]:
                        print(f"    {failure}")
    by = {(r["batching"], r["concurrency"]): r["req_per_s"] for r in results}
    for c in sorted({r["concurrency"] for r in results}):
        if ("on", c) in by and ("off", c) in by:
            print(f"c={c}: micro-batching gives {by['on', c] / by['off', c]:.2f}x the throughput of batching off")
    if args.json:
        args.json.write_text(json.dumps({"texts": len(texts), "cpus": os.cpu_count(), "results": results}, indent=2))
    return 1 if any(r["errors"] or r["mismatches"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
