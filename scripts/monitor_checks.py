#!/usr/bin/env python3
"""The monitoring checks of issue 22 on a real package: streams of texts through a real `onnxpack serve
--log-predictions`, then `onnxpack monitor`'s PSI for every quantity against the package's reference.

For each stream it starts a server on a free loopback port, sends the texts 16 per `POST /predict`,
stops it with SIGTERM (the log's last file is put in place at shutdown), and compares the log with
the reference (runtime.monitor.monitor, as `onnxpack monitor PKG --input DIR` does). Built-in streams:

    dev       the validation rows (CoLA: in_domain_dev + out_of_domain_dev, 1043), as verify saw them
    ood       CoLA's out_of_domain_dev alone (516 rows)
    longer    600 texts of 3 random validation rows each (seed 3, as ../shared/acceptance/operations)

and any `--stream NAME=FILE` (a text per line: another language, another domain). The package needs a
reference profile (`onnxpack verify PKG` stores it). Prints a table of PSI per stream and quantity
(* over --max-psi) and writes --json.

    python scripts/monitor_checks.py PKG --data ../shared/data/cola --stream german=de.txt --json checks.json
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from onnxpack.core.config import MonitorConfig
from onnxpack.core.data import resolve_data
from onnxpack.runtime.monitor import monitor

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def replay(package: Path, texts: list[str], logs: Path, work: Path) -> None:
    """The texts through a real server that logs its predictions, 16 per request; then SIGTERM."""
    port = free_port()
    with open(work / f"{logs.name}.serve.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "onnxpack", "serve", str(package), "--host", HOST, "--port",
                                 str(port), "--grpc-port", "0", "--log-predictions", str(logs)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not ready(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not become ready; see {work / (logs.name + '.serve.log')}")
            time.sleep(0.2)
        for i in range(0, len(texts), 16):
            body = json.dumps({"texts": texts[i:i + 16]}).encode()
            request = urllib.request.Request(f"http://{HOST}:{port}/predict", body,
                                             {"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=60).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def cola(data: Path, name: str) -> list[str]:
    with open(data / name, encoding="utf-8") as f:
        return [row[0] for row in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--data", help="CoLA folder (default: the usual places)")
    parser.add_argument("--stream", action="append", default=[], help="NAME=FILE: more texts, one per line")
    parser.add_argument("--max-psi", type=float, default=MonitorConfig.max_psi)
    parser.add_argument("--min-texts", type=int, default=MonitorConfig.min_texts)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    data = Path(resolve_data(args.data))
    dev = cola(data, "in_domain_dev.tsv") + cola(data, "out_of_domain_dev.tsv")
    random.seed(3)
    streams = {"dev": dev, "ood": cola(data, "out_of_domain_dev.tsv"),
               "longer": [" ".join(random.sample(dev, 3)) for _ in range(600)]}
    for item in args.stream:
        name, _, file = item.partition("=")
        streams[name] = [line for line in Path(file).read_text(encoding="utf-8").splitlines() if line.strip()]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, texts in streams.items():
            replay(args.package, texts, work / name, work)
            result = monitor(args.package, work / name, MonitorConfig(max_psi=args.max_psi, min_texts=args.min_texts))
            results[name] = {"texts": len(texts), "records": result.records, "drifted": result.drifted,
                             "psi": {d.quantity: d.psi for d in result.drifts},
                             "judged": {d.quantity: d.judged for d in result.drifts},
                             "counts": {d.quantity: d.texts for d in result.drifts},
                             "ks": {d.quantity: [d.ks, d.ks_p] for d in result.drifts if d.ks is not None},
                             "live": {d.quantity: d.live for d in result.drifts}}
            print(f"{name}: {len(texts)} texts, {result.records} logged, "
                  f"{'drift (exit 1)' if result.drifted else 'no drift (exit 0)'}", flush=True)
    quantities = list(next(iter(results.values()))["psi"])
    print(f"\nPSI against the reference (* over {args.max_psi:g}; ( ) not judged: under {args.min_texts} texts)")
    print(f"{'stream':<12}" + "".join(f"{q:>21}" for q in quantities) + "   exit")
    for name, r in results.items():
        cells = []
        for q in quantities:
            value = r["psi"][q]
            cell = "n/a" if value is None else f"{value:.4f}{'*' if value > args.max_psi else ''}"
            cells.append(cell if r["judged"][q] or value is None else f"({cell})")
        print(f"{name:<12}" + "".join(f"{c:>21}" for c in cells) + f"   {int(r['drifted'])}")
    if args.json:
        args.json.write_text(json.dumps({"package": str(args.package), "max_psi": args.max_psi, "streams": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
