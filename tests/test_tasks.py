"""Each task end to end on synthetic data: train a few steps -> export -> verify -> optimize -> serve,
and `onnxpack predict` gives what the server gives. A 3-class single-text ELECTRA with string
labels, a 2-class BERT on sentence pairs (segment ids), and a 4-label multi-label XLM-RoBERTa."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import tiny_family_folder
from live import free_port, post, running
from typer.testing import CliRunner

from onnxpack.cli import app as cli_app
from onnxpack.core.config import OptimizeConfig, ServeConfig, TrainConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import Package
from onnxpack.pytorch.export import export
from onnxpack.pytorch.train import fit
from onnxpack.pytorch.verify import verify
from onnxpack.runtime.optimize import optimize
from onnxpack.runtime.feed import chunking_tokenizer, encode_windows
from onnxpack.runtime.predictor import Predictor, serving_variant
from onnxpack.serve import create_app

pytestmark = pytest.mark.timeout(600)

FILLER = "the a this that movie day was is very quite".split()
TOPICS = {"negative": "bad awful poor sad".split(), "neutral": "table chair window door".split(),
          "positive": "good great happy lovely".split(), "sports": "goal match team score".split()}


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def _write(folder: Path, header: str, rows: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", rows[:-45]), ("validation", rows[-45:])):
        (folder / f"{split}.tsv").write_text(header + "\n" + "\n".join(part) + "\n", encoding="utf-8")


def three_class(folder: Path) -> None:
    rng = random.Random(1)
    labels = ["negative", "neutral", "positive"]
    _write(folder, "text\tlabel", [f"{_words(rng, rng.randint(2, 9))} {rng.choice(TOPICS[labels[i % 3]])}\t"
                                   f"{labels[i % 3]}" for i in range(180)])


def pairs(folder: Path) -> None:
    rng = random.Random(2)
    rows = []
    for i in range(180):
        a = _words(rng, rng.randint(2, 8))
        rows.append(f"{a}\t{a if i % 2 else _words(rng, rng.randint(2, 8))}\t{i % 2}")
    _write(folder, "sentence1\tsentence2\tlabel", rows)


def multi_label(folder: Path) -> None:
    rng = random.Random(3)
    rows = []
    for _ in range(180):
        chosen = rng.sample(sorted(TOPICS), rng.randint(1, 2))
        rows.append(f"{_words(rng, 3)} {' '.join(rng.choice(TOPICS[t]) for t in chosen)}\t{','.join(chosen)}")
    _write(folder, "text\tlabels", rows)


TASKS = {
    # name: (data writer, family, label names as the data gives them, multi-label)
    "three-class": (three_class, "electra", ["negative", "neutral", "positive"], False),
    "pairs": (pairs, "bert", ["0", "1"], False),
    "multi-label": (multi_label, "xlm-roberta", sorted(TOPICS), True),
}


@pytest.mark.parametrize("task", TASKS)
def test_task_end_to_end(task, tiny_model_dir, tmp_path):
    write, model_type, labels, is_multi = TASKS[task]
    data = tmp_path / "data"
    write(data)
    base = tiny_family_folder(model_type, tiny_model_dir, tmp_path / "base", labels,
                              **({"problem_type": "multi_label_classification"} if is_multi else {}))
    result = fit(TrainConfig(data=str(data), model=str(base), epochs=2, batch_size=16, lr=2e-3, max_length=32,
                             multi_label=is_multi, class_balance=0.0), tmp_path / "run")
    package = export(result.checkpoint, tmp_path / "pkg")
    m = package.manifest
    assert m.labels == labels and m.pairs == (task == "pairs")
    assert m.problem_type == ("multi_label_classification" if is_multi else "single_label_classification")
    assert ("token_type_ids" in [t.name for t in m.inputs]) == (task == "pairs")
    if is_multi:
        assert m.thresholds == [0.5] * 4

    report = verify(package.root, str(data))
    assert report.passed and report.n == 45 and report.agreement == 1.0 and report.max_abs_diff <= 1e-4

    results = {r.variant: r for r in optimize(package.root, OptimizeConfig(data=str(data), batch_size=16))}
    metric = "f1" if is_multi else "mcc"
    assert results["int8"].figures.get("metric") == metric or not results["int8"].figures
    assert results["optimized"].accepted, results["optimized"].reason  # every family here has ORT fusions
    assert results["optimized"].figures["max_abs_diff"] <= 1e-3

    rows = [tuple(r.split("\t")[:2]) if task == "pairs" else r.split("\t")[0]
            for r in (data / "validation.tsv").read_text(encoding="utf-8").splitlines()[1:9]]
    variant = serving_variant(Package.open(package.root))
    grpc_port = free_port()
    with running(create_app(package.root, ServeConfig(grpc_port=grpc_port))) as url:
        body = {"pairs": [list(r) for r in rows]} if task == "pairs" else {"texts": rows}
        served = post(url, "/predict", body).json()["predictions"]
        wrong_kind = {"texts": ["one text"]} if task == "pairs" else {"pairs": [["a", "b"]]}
        refused = post(url, "/predict", wrong_kind)
        assert refused.status_code == 400 and "pair" in refused.json()["error"]
        if task == "pairs":  # V2: the pair as two BYTES tensors
            v2 = post(url, f"/v2/models/{m.name}/infer", {"inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [len(rows)], "data": [a for a, _ in rows]},
                {"name": "text_pair", "datatype": "BYTES", "shape": [len(rows)], "data": [b for _, b in rows]}]})
            assert v2.status_code == 200, v2.text
            labels_out = next(o for o in v2.json()["outputs"] if o["name"] == "label")["data"]
            assert labels_out == [p["label"] for p in served]
            with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:  # and over gRPC
                tensors = []
                for name, column in (("text", [a for a, _ in rows]), ("text_pair", [b for _, b in rows])):
                    tensors.append(grpcclient.InferInput(name, [len(rows)], "BYTES"))
                    tensors[-1].set_data_from_numpy(np.array([t.encode() for t in column], dtype=np.object_))
                labels_out = [v.decode() for v in client.infer(m.name, tensors).as_numpy("label")]
                assert labels_out == [p["label"] for p in served]

    if task == "pairs":
        args = ["--pair", *(t for row in rows for t in row)]
    else:
        args = list(rows)
    cli = CliRunner().invoke(cli_app, ["predict", str(package.root), "--variant", variant, *args])
    assert cli.exit_code == 0, cli.output
    printed = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [p["label"] for p in printed] == [p["label"] for p in served]
    np.testing.assert_allclose([list(p["scores"].values()) for p in printed],
                               [list(p["scores"].values()) for p in served], atol=1e-6)
    if task == "pairs":  # chunk splits the second text and repeats the first in every window
        with Predictor(package.root, variant=variant) as predictor:
            first, second = rows[0]
            long_second = " ".join([second] * 20)
            (answer,) = predictor.predict([(first, long_second)], long_text="chunk")
            assert answer["windows"] > 1
            tokenizer = chunking_tokenizer(package.root / "tokenizer.json", m.max_length, m.pad_token_id, 4, pairs=True)
            feed, _ = encode_windows(tokenizer, [(first, long_second)], predictor.input_names, m.pad_token_id)
            head = len(tokenizer.encode(first).ids)  # [CLS] first [SEP]
            assert all(row[:head].tolist() == feed["input_ids"][0][:head].tolist() for row in feed["input_ids"])
            with pytest.raises(OnnxpackError, match="the first text of the pair alone fills the window"):
                predictor.predict([(" ".join([first] * 20), second)], long_text="chunk")
    if is_multi:
        assert all(p["labels"] == s["labels"] for p, s in zip(printed, served))
        for p in printed:
            assert p["labels"] == [k for k, v in p["scores"].items() if v >= 0.5]
            assert not np.isclose(sum(p["scores"].values()), 1.0) or len(p["labels"]) <= 1


def test_multi_label_thresholds_are_settable(tiny_model_dir, tmp_path):
    base = tiny_family_folder("bert", tiny_model_dir, tmp_path / "base", sorted(TOPICS),
                              problem_type="multi_label_classification")
    package = export(base, tmp_path / "pkg")
    runner = CliRunner()
    stored = runner.invoke(cli_app, ["thresholds", str(package.root), "0.1,0.2,0.3,0.9"])
    assert stored.exit_code == 0, stored.output
    assert Package.open(package.root).manifest.thresholds == [0.1, 0.2, 0.3, 0.9]
    with Predictor(package.root) as predictor:
        (row,) = predictor.predict(["the goal was good"])
        assert row["labels"] == [k for (k, v), t in zip(row["scores"].items(), [0.1, 0.2, 0.3, 0.9]) if v >= t]
    for bad, message in (("1.5", "thresholds must be between 0 and 1, got 1.5"),
                         ("0.1,0.2", "2 thresholds for 4 labels"), ("x", "--threshold takes numbers")):
        result = runner.invoke(cli_app, ["predict", str(package.root), "--threshold", bad, "some text"])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert Package.open(package.root).manifest.thresholds == [0.1, 0.2, 0.3, 0.9]  # untouched by predict


def test_single_text_model_refuses_pairs_and_threshold(package_dir):
    runner = CliRunner()
    result = runner.invoke(cli_app, ["predict", str(package_dir), "--pair", "a", "b"])
    assert result.exit_code == 1 and "text 0 is a pair, but this model takes single texts" in result.output
    result = runner.invoke(cli_app, ["predict", str(package_dir), "--pair", "a", "b", "c"])
    assert result.exit_code == 1 and "--pair reads texts two by two, got 3" in result.output
    result = runner.invoke(cli_app, ["predict", str(package_dir), "--threshold", "0.3", "a text"])
    assert result.exit_code == 1 and "thresholds apply to multi-label models only" in result.output
