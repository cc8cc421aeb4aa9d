"""Benchmark `onnxpack batch`: rows/s and peak memory of the local engine and of Ray with 1 and 2
workers, on N synthetic rows and on CoLA's 1043 validation rows, each run in its own process.

    python scripts/batch_bench.py PACKAGE [--rows 100000] [--chunk-rows 10000] [--out bench.json]

Peak RSS is the batch process's own (`ru_maxrss`); Ray's worker processes are measured apart, by
sampling their resident memory while the run goes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = ("the a this that cat dog book john mary table idea students professor committee wrote read saw "
         "quickly never often gave sat under over rejected proposed admired who what whether").split()


def synthetic(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\tsentence\n")
        for i in range(rows):
            f.write(f"s{i}\t{' '.join(rng.choice(WORDS) for _ in range(rng.randint(3, 20)))}\n")


def cola(path: Path) -> None:
    from onnxpack.core.data import BUNDLED_COLA

    with open(path, "w", encoding="utf-8") as out:
        out.write("sentence\n")
        for name in ("in_domain_dev.tsv.gz", "out_of_domain_dev.tsv.gz"):
            with gzip.open(BUNDLED_COLA / name, "rt", encoding="utf-8") as f:
                next(f)
                out.writelines(line.split("\t")[0] + "\n" for line in f)


def ray_workers_rss_mb() -> float:
    """Resident memory of Ray's worker processes now (the actors hold the models)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if "Name:\tray::" in text:
            total += next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def run(package: str, data: Path, engine: str, workers: int | None, chunk_rows: int, out: Path) -> dict:
    args = [sys.executable, "-m", "onnxpack", "batch", package, "--input", str(data), "--output", str(out),
            "--engine", engine, "--chunk-rows", str(chunk_rows)]
    if workers:
        args += ["--num-workers", str(workers)]
    peak_workers = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak_workers[0] = max(peak_workers[0], ray_workers_rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    done.set()
    if result.returncode:
        raise SystemExit(f"{engine} failed: {result.stderr[-2000:]}")
    line = " ".join(result.stderr.split())
    rows = int(line.split(" rows (")[0].split()[-1])
    rate = float(line.split(" rows/s")[0].split()[-1])
    rss = float(line.split("peak RSS ")[1].split(" MB")[0])
    return {"engine": engine, "workers": workers, "rows": rows, "rows_per_s": rate, "wall_s": round(wall, 1),
            "driver_peak_rss_mb": rss, "ray_workers_peak_rss_mb": round(peak_workers[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxpack-batch-bench-") as tmp:
        inputs = {"synthetic": Path(tmp) / "synthetic.tsv", "cola": Path(tmp) / "cola.tsv"}
        synthetic(inputs["synthetic"], args.rows)
        cola(inputs["cola"])
        for name, data in inputs.items():
            size_mb = data.stat().st_size / 1e6
            for engine, workers in (("local", None), ("ray", 1), ("ray", 2)):
                row = run(args.package, data, engine, workers, args.chunk_rows, Path(tmp) / f"{name}-{engine}.parquet")
                row |= {"input": name, "input_mb": round(size_mb, 1)}
                results.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
