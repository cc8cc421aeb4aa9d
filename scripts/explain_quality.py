"""How faithful and how fast `explain` is, on a package and CoLA's validation rows.

    python scripts/explain_quality.py PACKAGE [--variant V] [--data DIR] [--rows N] [--seed 0] [--runs 50] [--json out.json]

Faithfulness: over the rows of at least 6 words, delete the 2 words with the largest attributions,
and (apart) 2 words drawn at random (seeded); the share of rows where the top-2 deletion lowers the
predicted label's score more. Speed: the p50 (and p90) of `predictor.explain` on one 20-word sentence,
one text per call, as a user or the server's /explain runs it. The CPU is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from onnxpack.core import cpu
from onnxpack.core.atomic import atomic_write_text
from onnxpack.core.data import load_splits
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import Package
from onnxpack.runtime.predictor import Predictor, serving_variant

SENTENCE = ("The committee that the students admired rejected the proposal which the professor wrote "
            "after the long and tiring meeting ended")  # 20 words


def without(text: str, drop: set[int]) -> str:
    return " ".join(w for i, w in enumerate(text.split()) if i not in drop)


def faithfulness(predictor: Predictor, texts: list[str], seed: int) -> dict:
    rng = random.Random(seed)
    answers = []
    for start in range(0, len(texts), 64):
        answers += predictor.explain(texts[start:start + 64])
    top, drawn = [], []
    for answer in answers:
        scored = [(w["attribution"], i) for i, w in enumerate(answer["words"]) if w["attribution"] is not None]
        top.append({i for _, i in sorted(scored, reverse=True)[:2]})
        drawn.append(set(rng.sample(range(len(answer["words"])), 2)))
    labels = [predictor.labels.index(a["label"]) for a in answers]
    falls = {}
    for name, drops in (("top", top), ("random", drawn)):
        logits = predictor.predict([without(t, d) for t, d in zip(texts, drops)])
        falls[name] = [a["score"] - r["scores"][predictor.labels[k]] for a, r, k in zip(answers, logits, labels)]
    wins = sum(t > r for t, r in zip(falls["top"], falls["random"]))
    return {"rows": len(texts), "top2_beats_random": wins / len(texts),
            "mean_fall_top2": statistics.fmean(falls["top"]), "mean_fall_random2": statistics.fmean(falls["random"])}


def speed(predictor: Predictor, runs: int) -> dict:
    predictor.explain([SENTENCE])  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predictor.explain([SENTENCE])
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"words": len(SENTENCE.split()), "runs": runs, "p50_ms": statistics.median(times),
            "p90_ms": times[int(0.9 * (len(times) - 1))], "min_ms": times[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package")
    parser.add_argument("--variant", help="default: what serve runs (the package's serving variant)")
    parser.add_argument("--data", help="CoLA-style folder (default: the copy bundled with onnxpack)")
    parser.add_argument("--rows", type=int, help="faithfulness: only the first N rows of >= 6 words")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    try:
        variant = args.variant or serving_variant(Package.open(args.package))
        texts = [t for t in load_splits(args.data, need_train=False).validation.texts if len(t.split()) >= 6]
        print(f"cpu: {cpu.summary()}")
        with Predictor(args.package, variant=variant) as predictor:
            figures = {"variant": variant, "cpu": cpu.record(), "speed": speed(predictor, args.runs),
                       "faithfulness": faithfulness(predictor, texts[:args.rows], args.seed)}
    except OnnxpackError as e:
        raise SystemExit(f"error: {e}") from None
    s, f = figures["speed"], figures["faithfulness"]
    print(f"speed ({variant}, {s['words']} words, {s['runs']} runs): p50 {s['p50_ms']:.1f} ms, "
          f"p90 {s['p90_ms']:.1f} ms, min {s['min_ms']:.1f} ms")
    print(f"faithfulness over {f['rows']} rows of >= 6 words: deleting the top-2 words lowers the score more "
          f"than 2 random words on {f['top2_beats_random']:.1%} (mean fall {f['mean_fall_top2']:.3f} vs "
          f"{f['mean_fall_random2']:.3f})")
    if args.json:
        atomic_write_text(args.json, json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
