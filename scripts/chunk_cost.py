"""Cost and memory of reading long texts whole (`--long-text chunk`, issue 21), on real CoLA words.

    python scripts/chunk_cost.py PACKAGE [--variant V] [--texts 64] [--words 600] [--repeats 7] [--json out.json]
    python scripts/chunk_cost.py PACKAGE --rss [--runs 1000x2000,2000x2000,10000x20] [--chunk-rows 1000] [--json out.json]

Cost (default mode): `--texts` long texts of about `--words` words each, made of CoLA training
sentences, are read with `Predictor.read(texts, 32, "chunk")`; they make W windows. The same
predictor then reads W plain texts, each longer than max_length tokens, so each is one full
max_length row under `truncate`. Both sides are timed whole (tokenizing, windowing, running,
aggregating), interleaved, the side that goes first swapping each round so that a CPU whose speed
drifts favours neither. The bar: chunk's windows/s at least 90% of plain's.

Memory (`--rss`): for each ROWSxWORDS a TSV of ROWS texts of WORDS words is written to a temp
folder, and `onnxpack batch PACKAGE --long-text chunk --chunk-rows N` runs on it in a child
process; its peak RSS is the child's own (`wait4`'s ru_maxrss, as `/usr/bin/time -v` reports it).
The bar: peak RSS follows the chunk of rows, so it stays flat as rows grow past one chunk.

The first line printed names the CPU; every figure holds for that CPU only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 32


def cola_sentences() -> list[str]:
    """CoLA's training sentences, from the copy bundled with onnxpack."""
    from onnxpack.core.data import BUNDLED_COLA

    with gzip.open(BUNDLED_COLA / "train.tsv.gz", "rt", encoding="utf-8") as f:
        next(f)
        return [line.split("\t")[0] for line in f if line.strip()]


def long_texts(sentences: list[str], count: int, words: int, seed: int = 0) -> list[str]:
    """`count` texts of CoLA sentences drawn at random, each stopping at the first sentence that
    takes it to `words` words or more."""
    rng = random.Random(seed)
    return [joined(rng, sentences, words) for _ in range(count)]


def joined(rng: random.Random, sentences: list[str], words: int) -> str:
    """Sentences drawn at random and joined, up to the first that takes the text to `words` words or more."""
    parts, n = [], 0
    while n < words:
        sentence = rng.choice(sentences)
        parts.append(sentence)
        n += len(sentence.split())
    return " ".join(parts)


def cpu_line() -> tuple[str, dict]:
    from onnxpack.core import cpu

    return cpu.summary(), cpu.record()


# --- cost -------------------------------------------------------------------------------------------


def cost(package: str, variant: str | None, count: int, words: int, repeats: int) -> dict:
    from onnxpack.core.package import Package
    from onnxpack.runtime.predictor import Predictor, serving_variant

    variant = variant or serving_variant(Package.open(package))
    sentences = cola_sentences()
    chunked = long_texts(sentences, count, words, seed=0)
    with Predictor(package, variant=variant) as predictor:
        width = predictor.max_length
        _, windows = predictor.read(chunked, BATCH, "chunk")  # also the warm-up of the chunk side
        total = int(windows.sum())
        plain = full_rows(predictor, sentences, total)
        predictor.read(plain, BATCH, "truncate")  # warm-up of the plain side
        tokens = chunk_tokens(predictor, chunked)
        times: dict[str, list[float]] = {"chunk": [], "plain": []}
        cpu_times: dict[str, list[float]] = {"chunk": [], "plain": []}
        sides = {"chunk": (chunked, "chunk"), "plain": (plain, "truncate")}
        for r in range(repeats):
            for side in (("chunk", "plain") if r % 2 == 0 else ("plain", "chunk")):
                texts, how = sides[side]
                started, cpu_started = time.perf_counter(), time.process_time()
                predictor.read(texts, BATCH, how)
                times[side].append(time.perf_counter() - started)
                cpu_times[side].append(time.process_time() - cpu_started)
    rates = {side: [total / s for s in seconds] for side, seconds in times.items()}
    pairs = [c / p for c, p in zip(rates["chunk"], rates["plain"])]
    # CPU seconds (all of this process's threads) per window: what other people's work on the same
    # cores changes least; the ratio is plain's CPU seconds over chunk's, like the windows/s ratio.
    cpu_ratio = statistics.median(cpu_times["plain"]) / statistics.median(cpu_times["chunk"])
    result = {
        "package": str(package), "variant": variant, "max_length": width, "batch_size": BATCH,
        "texts": count, "words_per_text": words, "windows": total,
        "windows_per_text": round(total / count, 2),
        "chunk_tokens_per_window": round(tokens / total, 1), "plain_tokens_per_row": width,
        "repeats": repeats,
        "seconds": {side: [round(s, 3) for s in seconds] for side, seconds in times.items()},
        "windows_per_s": {side: {"best": round(max(r), 1), "median": round(statistics.median(r), 1)}
                          for side, r in rates.items()},
        "ratio_best": round(max(rates["chunk"]) / max(rates["plain"]), 3),
        "ratio_median": round(statistics.median(rates["chunk"]) / statistics.median(rates["plain"]), 3),
        "ratio_per_round_median": round(statistics.median(pairs), 3),
        "ratio_per_round": [round(x, 3) for x in pairs],
        "cpu_seconds": {side: [round(s, 3) for s in seconds] for side, seconds in cpu_times.items()},
        "cpu_ratio_median": round(cpu_ratio, 3),
    }
    result["pass"] = result["ratio_median"] >= 0.9
    return result


def full_rows(predictor, sentences: list[str], count: int, seed: int = 1) -> list[str]:
    """`count` texts of CoLA sentences, each just long enough to fill max_length tokens: one full row
    under truncate, and no more text to tokenize than it needs (the tokenizer reads a text whole
    before it truncates, so longer texts would charge the plain side for words it never runs)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(predictor.package.tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    room = predictor.max_length - tokenizer.num_special_tokens_to_add(False)
    lengths = [len(e.ids) for e in tokenizer.encode_batch(sentences, add_special_tokens=False)]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts, n = [], 0
        while n < room:
            i = rng.randrange(len(sentences))
            parts.append(sentences[i])
            n += lengths[i]
        texts.append(" ".join(parts))
    short = [i for i, e in enumerate(predictor.tokenizer.encode_batch(texts)) if sum(e.attention_mask) < predictor.max_length]
    if short:
        raise SystemExit(f"error: {len(short)} plain texts are under {predictor.max_length} tokens")
    return texts


def chunk_tokens(predictor, texts: list[str]) -> int:
    """How many tokens (without padding) the windows of `texts` hold in all."""
    from onnxpack.runtime.feed import default_stride, encode_windows

    feed, _ = encode_windows(predictor.chunker(default_stride(predictor.max_length)), texts,
                             predictor.input_names, predictor.package.manifest.pad_token_id)
    return int(feed["attention_mask"].sum())


def print_cost(r: dict) -> None:
    print(f"{r['package']} variant {r['variant']}, batch {r['batch_size']}, max_length {r['max_length']}: "
          f"{r['texts']} texts of ~{r['words_per_text']} words = {r['windows']} windows "
          f"({r['windows_per_text']} a text, {r['chunk_tokens_per_window']} tokens a window on average); "
          f"plain: {r['windows']} rows of {r['plain_tokens_per_row']} tokens")
    for side in ("chunk", "plain"):
        w = r["windows_per_s"][side]
        print(f"  {side:5s}  windows/s best {w['best']:8.1f}  median {w['median']:8.1f}   "
              f"seconds {' '.join(f'{s:.2f}' for s in r['seconds'][side])}")
    print(f"  chunk/plain: best {r['ratio_best']:.3f}, median {r['ratio_median']:.3f}, "
          f"per round median {r['ratio_per_round_median']:.3f} ({' '.join(f'{x:.3f}' for x in r['ratio_per_round'])})"
          f"  -> {'PASS' if r['pass'] else 'FAIL'} (bar 0.9, on the medians)")
    print(f"  CPU seconds, median: chunk {statistics.median(r['cpu_seconds']['chunk']):.2f}, "
          f"plain {statistics.median(r['cpu_seconds']['plain']):.2f}; plain/chunk {r['cpu_ratio_median']:.3f}")


# --- memory -----------------------------------------------------------------------------------------


def write_corpus(path: Path, rows: int, words: int, sentences: list[str]) -> float:
    """A TSV of `rows` texts of about `words` words (id, text); its size in MB."""
    rng = random.Random(rows * 7 + words)
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttext\n")
        for i in range(rows):
            f.write(f"r{i}\t{joined(rng, sentences, words)}\n")
    return path.stat().st_size / 1e6


def batch_rss(package: str, variant: str | None, data: Path, out: Path, chunk_rows: int, log: Path) -> dict:
    """Run `onnxpack batch --long-text chunk` on `data` in a child; its wall time and peak RSS."""
    args = [sys.executable, "-m", "onnxpack", "batch", package, "--input", str(data), "--output", str(out),
            "--long-text", "chunk", "--chunk-rows", str(chunk_rows), "--engine", "local"]
    if variant:
        args += ["--variant", variant]
    started = time.perf_counter()
    with open(log, "w") as err:
        child = subprocess.Popen(args, stdout=err, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, as /usr/bin/time -v reads it
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait for it again
    wall = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(f"error: onnxpack batch failed ({child.returncode}): {log.read_text()[-2000:]}")
    import pyarrow.parquet as pq  # batch's own dependency, for its Parquet output

    table = pq.read_table(out, columns=["windows"])
    rows, windows = table.num_rows, int(sum(w or 0 for w in table.column("windows").to_pylist()))
    return {"rows": rows, "windows": windows, "wall_s": round(wall, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "windows_per_s": round(windows / wall, 1) if windows else None}


def rss(package: str, variant: str | None, runs: list[tuple[int, int]], chunk_rows: int) -> dict:
    from onnxpack.core.package import Package
    from onnxpack.runtime.predictor import serving_variant

    variant = variant or serving_variant(Package.open(package))
    sentences = cola_sentences()
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxpack-chunk-rss-") as tmp:
        for rows, words in runs:
            data = Path(tmp) / f"{rows}x{words}.tsv"
            size = write_corpus(data, rows, words, sentences)
            row = {"rows_in": rows, "words": words, "input_mb": round(size, 1), "chunk_rows": chunk_rows}
            row |= batch_rss(package, variant, data, Path(tmp) / "out.parquet", chunk_rows, Path(tmp) / "batch.log")
            results.append(row)
            print(f"  {rows:>6} rows x {words:>5} words ({row['input_mb']:6.1f} MB): peak RSS {row['peak_rss_mb']:7.1f} MB, "
                  f"{row['windows']} windows in {row['wall_s']} s ({row['windows_per_s']} windows/s)", flush=True)
            data.unlink()
    return {"package": str(package), "variant": variant, "chunk_rows": chunk_rows, "runs": results}


def parse_runs(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(r), int(w)) for r, w in (item.lower().split("x") for item in text.split(","))]
    except ValueError:
        raise SystemExit(f"error: --runs takes ROWSxWORDS,... e.g. 1000x2000,10000x20; got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--variant", help="default: the package's serving variant")
    parser.add_argument("--texts", type=int, default=64, help="cost: long texts")
    parser.add_argument("--words", type=int, default=600, help="cost: words a long text")
    parser.add_argument("--repeats", type=int, default=7, help="cost: interleaved rounds")
    parser.add_argument("--rss", action="store_true", help="measure batch's peak RSS instead of the cost")
    parser.add_argument("--runs", default="1000x2000,2000x2000,10000x20", help="rss: ROWSxWORDS,...")
    parser.add_argument("--chunk-rows", type=int, default=1000, help="rss: batch's --chunk-rows")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if not Path(args.package, "manifest.json").is_file():
        raise SystemExit(f"error: {args.package} is not a package (no manifest.json)")
    summary, record = cpu_line()
    print(f"CPU: {summary}; {os.cpu_count()} cores", flush=True)
    if args.rss:
        result = rss(args.package, args.variant, parse_runs(args.runs), args.chunk_rows)
    else:
        result = cost(args.package, args.variant, args.texts, args.words, args.repeats)
        print_cost(result)
    result["cpu"] = record | {"summary": summary, "cores": os.cpu_count()}
    if args.json:
        from onnxpack.core.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
