#!/usr/bin/env python3
"""Load-test `onnxpack serve` on loopback: throughput and p50/p99 latency over HTTP and gRPC, with
micro-batching on and off, next to the served variant's own offline throughput, in one run.

For each batching mode it starts a real server (`python -m onnxpack serve`, --max-batch 32 for
"on", 1 for "off") with HTTP and gRPC on free 127.0.0.1 ports; then for each protocol and
concurrency it runs that many closed-loop clients (each sends a one-text request, waits for the
answer, sends the next) for a warm-up second and then `--duration` seconds: HTTP `POST /predict`,
gRPC V2 `ModelInfer` with a BYTES `text` tensor. Texts are the CoLA validation sentences; every
answer is checked against `onnxpack predict` for the served variant on the same text (same label,
score within --atol). Offline, with no server running (before the first server and after the last),
it times that variant on the same texts as `onnxpack predict` runs it: length-sorted batches of 32.
It prints each run, then, at the highest concurrency, two ratios against offline: the served
throughput over the offline one (wall clock: the clients share the cores, so this is bounded by
them), and the efficiency, the variant's process CPU time per text offline over the server
process's CPU time per request (user + system, all threads, /proc/<pid>/stat), which the clients
hardly move. Exits 1 on any error or mismatch.

    python scripts/loadtest.py PACKAGE                              # c = 1, 8, 32; HTTP and gRPC; batching on and off
    python scripts/loadtest.py PACKAGE --concurrency 32 --duration 60 --batching on --protocols http   # the soak run
    python scripts/loadtest.py PACKAGE --serve-args "--instances 1"   # other server settings
    python scripts/loadtest.py PACKAGE --monitoring --rounds 5      # what monitoring costs (below)

--monitoring measures what serve's monitoring costs at the highest concurrency (HTTP, batching on):
three servers side by side, the prediction metrics off (--no-prediction-metrics), on (the default),
and on with --log-predictions, loaded in turn for --rounds interleaved rounds (the order rotating),
so that the machine's drift from minute to minute falls on all three alike. It prints each run, then
each setting's median req/s and server CPU per request against "off", and checks that the log
holds every answer its server gave.

The clients speak raw HTTP/1.1 over keep-alive connections, and gRPC with pre-serialized requests,
on asyncio: on a 2-core machine they share the CPU with the server, so they have to cost little.
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
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import orjson
import uvloop  # the clients' event loop: uvloop costs them less CPU, which they share with the server
from tritonclient.grpc import service_pb2 as pb

from onnxpack.core.data import load_splits, resolve_data
from onnxpack.core.package import Package
from onnxpack.runtime.predictor import Predictor, serving_variant

HOST = "127.0.0.1"  # loopback only: the server and the clients live on this machine
MAX_BATCH = {"on": 32, "off": 1}
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class HttpClient:
    """One keep-alive HTTP/1.1 connection sending `POST /predict`; reconnects after an error."""

    def __init__(self, port: int, model: str) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @staticmethod
    def request(text: str, model: str) -> bytes:
        body = orjson.dumps({"texts": [text]})
        return (b"POST /predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (HOST.encode(), len(body)) + body)

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one whole request; (status, body) of the answer."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])
        payload = await self.reader.readexactly(length)
        if re.search(rb"(?i)\r\nconnection: *close", head):
            await self.close()
        return status, payload

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Any JSON POST (the soak's good, bad and oversized requests)."""
        return await self.exchange(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: %d\r\n\r\n" % (path.encode(), HOST.encode(), len(body)) + body)

    async def send(self, request: bytes) -> tuple[str, float]:
        """(label, score) of the answer; raises on anything but a 200."""
        status, payload = await self.exchange(request)
        if status != 200:
            raise RuntimeError(f"{status}: {payload[:100]!r}")
        got = orjson.loads(payload)["predictions"][0]
        return got["label"], got["score"]

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class GrpcClient:
    """One gRPC channel calling V2 ModelInfer with pre-serialized requests (a BYTES `text` tensor)."""

    def __init__(self, port: int, model: str) -> None:
        self.channel = grpc.aio.insecure_channel(f"{HOST}:{port}")
        self.infer = self.channel.unary_unary(MODEL_INFER)  # bytes in, bytes out

    @staticmethod
    def request(text: str, model: str) -> bytes:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="text", datatype="BYTES", shape=[1])
        request.outputs.add(name="label")
        request.outputs.add(name="score")
        raw = text.encode()
        request.raw_input_contents.append(struct.pack("<I", len(raw)) + raw)
        return request.SerializeToString()

    async def send(self, request: bytes) -> tuple[str, float]:
        response = pb.ModelInferResponse.FromString(await self.infer(request))
        label, score = response.raw_output_contents
        return label[4:].decode(), float(np.frombuffer(score, dtype="<f4")[0])

    async def close(self) -> None:
        await self.channel.close()


CLIENTS = {"http": HttpClient, "grpc": GrpcClient}


async def run_clients(client_type: type, port: int, model: str, texts: list[str], reference: dict[str, dict],
                      concurrency: int, warmup_s: float, duration_s: float, atol: float, server_pid: int) -> dict:
    """`concurrency` closed-loop clients for warmup_s + duration_s; statistics over the timed part."""
    requests = {text: client_type.request(text, model) for text in texts}
    latencies: list[float] = []
    cpu_at: list[float] = []
    failures: list[str] = []
    errors = mismatches = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

    async def client(k: int) -> None:
        nonlocal errors, mismatches
        connection = client_type(port, model)
        i = k * len(texts) // concurrency  # clients start at different texts
        while (sent := time.perf_counter()) < stop_at:
            text = texts[i % len(texts)]
            i += 1
            try:
                label, score = await connection.send(requests[text])
            except Exception as e:  # noqa: BLE001 -- counted and shown, the run goes on
                await connection.close()
                connection = client_type(port, model)
                errors += 1
                failures.append(repr(e)[:200])
                continue
            done = time.perf_counter()
            want = reference[text]
            if label != want["label"] or abs(score - want["score"]) > atol:
                mismatches += 1
                failures.append(f"mismatch on {text!r}: {label} {score} vs {want['label']} {want['score']}")
            if sent >= measure_from:
                latencies.append(done - sent)
        await connection.close()

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
            "errors": errors, "mismatches": mismatches, "failures": failures[:5]}


def cpu_seconds(pid: int) -> float:
    """CPU time the server process has used, all its threads (Linux /proc): unlike wall-clock
    figures, it hardly moves when other work shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_name() -> str:
    """The processor's model name, from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if match:
            return match[1].strip()
    return "unknown"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(package: Path, batching: str, extra: list[str], log: Path):
    """A real `onnxpack serve` process on free loopback ports, until SIGTERM at the end:
    yields (HTTP port, gRPC port, pid)."""
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "onnxpack", "serve", str(package), "--host", HOST, "--port", str(port),
           "--grpc-port", str(grpc_port), "--max-batch", str(MAX_BATCH[batching]), *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not ready(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not become ready; see {log}")
            time.sleep(0.2)
        yield port, grpc_port, proc.pid
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


def served_variant(package: Path, extra: list[str]) -> str:
    """The graph the server runs: --variant if given, else the one it picks itself."""
    return extra[extra.index("--variant") + 1] if "--variant" in extra else serving_variant(Package.open(package))


def reference_predictions(package: Path, variant: str, texts: list[str], work: Path) -> dict[str, dict]:
    """What `onnxpack predict` prints for each text: the answers every response must match."""
    (work / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "onnxpack", "predict", str(package), "--file", str(work / "texts.txt"),
                    "--out", str(work / "reference.jsonl"), "--variant", variant], check=True)
    rows = [json.loads(line) for line in (work / "reference.jsonl").read_text(encoding="utf-8").splitlines()]
    return {row["text"]: row for row in rows}


def offline(package: Path, variant: str, texts: list[str], rounds: int = 3) -> tuple[float, float]:
    """The variant on the same texts as `onnxpack predict` runs it (length-sorted batches of 32,
    ONNX Runtime's default threads): the best of `rounds` timed passes' texts/s, and the least
    process CPU time per text (ms)."""
    with Predictor(package, variant=variant) as predictor:
        predictor.predict_logits(texts[:64])  # warm-up: allocations, kernels
        best, cpu_ms = 0.0, float("inf")
        for _ in range(rounds):
            started, cpu = time.perf_counter(), time.process_time()
            predictor.predict_logits(texts, 32)
            best = max(best, len(texts) / (time.perf_counter() - started))
            cpu_ms = min(cpu_ms, (time.process_time() - cpu) * 1000 / len(texts))
    return best, cpu_ms


MONITORING = {"off": ["--no-prediction-metrics"], "metrics": [], "metrics+log": ["--log-predictions"]}


def monitoring_cost(args: argparse.Namespace, serve_args: list[str], texts: list[str], model: str,
                    reference: dict[str, dict], work: Path) -> dict:
    """The three monitoring settings' servers, loaded in turn, round after round; medians and ratios."""
    c = max(int(x) for x in args.concurrency.split(","))
    protocol = args.protocols.split(",")[0]
    runs: list[dict] = []
    with contextlib.ExitStack() as stack:
        servers = {}
        for mode, extra in MONITORING.items():
            extra = [*extra, str(work / "logs")] if extra[-1:] == ["--log-predictions"] else extra
            servers[mode] = stack.enter_context(server(args.package, "on", [*serve_args, *extra],
                                                       work / f"serve-{mode}.log"))
        modes = list(MONITORING)
        for r in range(args.rounds):
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                port, grpc_port, pid = servers[mode]
                run = run_clients(CLIENTS[protocol], grpc_port if protocol == "grpc" else port, model, texts,
                                  reference, c, args.warmup, args.duration, args.atol, pid)
                row = {"round": r, "monitoring": mode, "protocol": protocol, **uvloop.run(run)}
                runs.append(row)
                print(f"round {r}  {mode:>11}  c={c}  {row['req_per_s']:>8.1f} req/s  p50 {row['p50_ms']:>6.2f} ms  "
                      f"p99 {row['p99_ms']:>6.2f} ms  server CPU {row['server_cpu_ms_per_req']:.3f} ms/req  "
                      f"{row['errors']} errors, {row['mismatches']} mismatches", flush=True)
                for failure in row["failures"]:
                    print(f"    {failure}")
        answered = {mode: predictions_answered(servers[mode][0]) for mode in modes[1:]}  # "off" counts none
    logged = sum(len(f.read_bytes().splitlines()) for f in (work / "logs").glob("predictions-*.jsonl"))
    summary = {}
    for mode in modes:
        rows = [row for row in runs if row["monitoring"] == mode]
        summary[mode] = {"req_per_s": float(np.median([row["req_per_s"] for row in rows])),
                         "server_cpu_ms_per_req": float(np.median([row["server_cpu_ms_per_req"] for row in rows]))}
    for mode in modes:
        # paired by round: each setting against "off" measured minutes apart at most
        pairs = [a["req_per_s"] / b["req_per_s"] for a in runs if a["monitoring"] == mode
                 for b in runs if b["monitoring"] == "off" and b["round"] == a["round"]]
        summary[mode]["req_per_s_vs_off"] = summary[mode]["req_per_s"] / summary["off"]["req_per_s"]
        summary[mode]["paired_req_per_s_vs_off"] = float(np.median(pairs))
        summary[mode]["cpu_vs_off"] = summary[mode]["server_cpu_ms_per_req"] / summary["off"]["server_cpu_ms_per_req"]
        print(f"{mode:>11}: median {summary[mode]['req_per_s']:.1f} req/s = {summary[mode]['req_per_s_vs_off']:.1%} of "
              f"off (paired by round: {summary[mode]['paired_req_per_s_vs_off']:.1%}); server CPU "
              f"{summary[mode]['server_cpu_ms_per_req']:.3f} ms/req = {summary[mode]['cpu_vs_off']:.1%} of off")
    print(f"the log holds {logged} answers; its server answered {answered['metrics+log']:.0f}"
          f" ({'all there' if logged == answered['metrics+log'] else 'MISSING SOME'})")
    return {"concurrency": c, "protocol": protocol, "rounds": args.rounds, "duration_s": args.duration,
            "runs": runs, "summary": summary, "logged": logged, "answered_with_log": answered["metrics+log"]}


def predictions_answered(port: int) -> float:
    """Texts the server has answered, from its /metrics (the log's server counts them too)."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST.encode())
        text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    return sum(float(v) for v in re.findall(r"^onnxpack_predictions_total\{[^}]*\} (\S+)$", text, re.M))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--batching", default="on,off", help="on, off, or both (= on,off)")
    parser.add_argument("--protocols", default="http,grpc", help="http, grpc, or both (comma-separated)")
    parser.add_argument("--duration", type=float, default=10.0, help="timed seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds before each run")
    parser.add_argument("--data", help="CoLA folder (default: the usual places)")
    parser.add_argument("--atol", type=float, default=1e-4, help="allowed score difference from `onnxpack predict`")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--serve-args", default="", help='more `onnxpack serve` options, e.g. "--instances 1"')
    parser.add_argument("--monitoring", action="store_true", help="measure monitoring's cost instead: prediction "
                        "metrics off, on, and on with --log-predictions, at the highest concurrency, interleaved")
    parser.add_argument("--rounds", type=int, default=3, help="--monitoring: interleaved rounds of the three")
    args = parser.parse_args()
    serve_args = shlex.split(args.serve_args)
    modes = ["on", "off"] if args.batching == "both" else args.batching.split(",")
    protocols = list(CLIENTS) if args.protocols == "both" else args.protocols.split(",")
    if unknown := [m for m in modes if m not in MAX_BATCH] + [p for p in protocols if p not in CLIENTS]:
        parser.error(f"unknown batching mode or protocol {unknown[0]!r}")
    concurrencies = [int(x) for x in args.concurrency.split(",")]

    texts = [t for t in load_splits(resolve_data(args.data), need_train=False).validation.texts if t.strip()]
    variant = served_variant(args.package, serve_args)
    model = Package.open(args.package).manifest.name
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference = reference_predictions(args.package, variant, texts, work)
        if args.monitoring:
            cost = monitoring_cost(args, serve_args, texts, model, reference, work)
            if args.json:
                args.json.write_text(json.dumps({"texts": len(texts), "cpus": os.cpu_count(), "variant": variant,
                                                 "cpu": cpu_name(), "monitoring": cost}, indent=2))
            bad = any(r["errors"] or r["mismatches"] for r in cost["runs"]) or cost["logged"] != cost["answered_with_log"]
            return 1 if bad else 0
        offline_runs = [offline(args.package, variant, texts)]
        print(f"offline: {variant} on {len(texts)} texts, batches of 32: {offline_runs[0][0]:.1f} texts/s, "
              f"{offline_runs[0][1]:.2f} ms CPU per text", flush=True)
        for batching in modes:
            with server(args.package, batching, serve_args, work / f"serve-{batching}.log") as (port, grpc_port, pid):
                for protocol in protocols:
                    for c in concurrencies:
                        calls_before = batch_stats(port)
                        run = run_clients(CLIENTS[protocol], grpc_port if protocol == "grpc" else port, model, texts,
                                          reference, c, args.warmup, args.duration, args.atol, pid)
                        row = {"protocol": protocol, "batching": batching, **uvloop.run(run)}
                        calls_after = batch_stats(port)
                        row["rows_per_call"] = round((calls_after[0] - calls_before[0])
                                                     / max(calls_after[1] - calls_before[1], 1), 1)
                        row["efficiency"] = round(offline_runs[0][1] / max(row["server_cpu_ms_per_req"], 1e-9), 3)
                        results.append(row)
                        print(f"{protocol:>4}  batching {batching:>3}  c={c:<3} {row['req_per_s']:>8.1f} req/s  "
                              f"p50 {row['p50_ms']:>7.2f} ms  p99 {row['p99_ms']:>7.2f} ms  "
                              f"server CPU {row['server_cpu_ms_per_req']:.2f} ms/req ({row['efficiency']:.0%} efficient)  "
                              f"{row['rows_per_call']} rows/call  "
                              f"{row['requests']} requests, {row['errors']} errors, {row['mismatches']} mismatches",
                              flush=True)
                        for failure in row["failures"]:
                            print(f"    {failure}")
        offline_runs.append(offline(args.package, variant, texts))
        print(f"offline again: {offline_runs[1][0]:.1f} texts/s, {offline_runs[1][1]:.2f} ms CPU per text", flush=True)
    top = max(concurrencies)
    reference_rate = float(np.mean([rate for rate, _ in offline_runs]))
    reference_cpu_ms = min(cpu_ms for _, cpu_ms in offline_runs)
    ratios, efficiency = {}, {}
    for protocol in protocols:
        for batching in modes:
            row = next(r for r in results if (r["protocol"], r["batching"], r["concurrency"]) == (protocol, batching, top))
            key = f"{protocol} batching {batching}"
            ratios[key] = row["req_per_s"] / reference_rate
            efficiency[key] = reference_cpu_ms / max(row["server_cpu_ms_per_req"], 1e-9)
            print(f"{key}, c={top}: server CPU {row['server_cpu_ms_per_req']:.2f} ms/request vs {variant} offline "
                  f"{reference_cpu_ms:.2f} ms/text = {efficiency[key]:.0%} efficiency; wall {row['req_per_s']:.1f} req/s "
                  f"= {ratios[key]:.0%} of offline {reference_rate:.1f} texts/s (the clients share the cores)")
    if args.json:
        args.json.write_text(json.dumps({"texts": len(texts), "cpus": os.cpu_count(), "variant": variant,
                                         "offline_texts_per_s": [rate for rate, _ in offline_runs],
                                         "offline_cpu_ms_per_text": reference_cpu_ms, "ratios": ratios,
                                         "efficiency": efficiency, "results": results}, indent=2))
    return 1 if any(r["errors"] or r["mismatches"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
