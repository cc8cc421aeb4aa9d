"""diff.py: structure of two different graphs, agreement, flips, metric and McNemar worked out by hand,
optimize's recorded agreement reproduced, label sets aligned or refused, and the page in Chromium."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import PAYLOAD_TEXT, PAYLOADS, assert_shown_as_text, write_tsv
from onnx import numpy_helper

from onnxpack.core.config import DiffConfig, OptimizeConfig
from onnxpack.core.data import load_splits
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.metrics import mcc
from onnxpack.core.package import FP32, MANIFEST, Package, hash_files
from onnxpack.inspection.diff import (
    BehaviourRefused,
    align_labels,
    diff,
    html_page,
    mcnemar_exact,
)
from onnxpack.runtime.optimize import optimize
from onnxpack.runtime.predictor import Predictor

BIAS = "model.classifier.bias"


def with_manifest(package: Path, out: Path, **changes) -> Path:
    """A copy of a package with some manifest fields changed (the manifest is not among the hashed files)."""
    root = Path(shutil.copytree(package, out))
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    (root / MANIFEST).write_text(json.dumps(manifest | changes), encoding="utf-8")
    return root


def nudged(package: Path, out: Path, shift: float) -> Path:
    """A copy whose classifier bias for the second label is `shift` higher: the rows A scores near the
    boundary flip, the others keep their label."""
    root = Path(shutil.copytree(package, out))
    model = onnx.load(str(root / "model.onnx"))
    bias = next(t for t in model.graph.initializer if t.name == BIAS)
    values = numpy_helper.to_array(bias).copy()
    values[1] += shift
    bias.CopyFrom(numpy_helper.from_array(values, BIAS))
    onnx.save(model, str(root / "model.onnx"))
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"] = hash_files(root)
    (root / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return root


def logits(package: Path, texts, model_file: Path | None = None) -> np.ndarray:
    with Predictor(package, variant=FP32, model_file=model_file) as predictor:
        return predictor.predict_logits(texts, 32)


@pytest.fixture(scope="module")
def validation(small_cola):
    return load_splits(str(small_cola), need_train=False, labels=["unacceptable", "acceptable"]).validation


@pytest.fixture(scope="module")
def moved(tmp_path_factory, package_dir, validation) -> Path:
    """The tiny package with a bias shift that flips some, but not all, of the validation rows."""
    base = logits(package_dir, validation.texts)
    margin = np.sort(base[:, 0] - base[:, 1])
    k = len(margin) // 2 + 8  # past the median, between two rows: those under it flip, those over it stay
    shift = float(margin[k] + margin[k + 1]) / 2
    return nudged(package_dir, tmp_path_factory.mktemp("moved") / "pkg", shift)


@pytest.fixture(scope="module")
def optimized(tmp_path_factory, package_dir, small_cola) -> Path:
    root = Path(shutil.copytree(package_dir, tmp_path_factory.mktemp("opt") / "pkg"))
    optimize(root, OptimizeConfig(data=str(small_cola), variants=("optimized", "int8-static"), max_mcc_drop=1.0,
                                  min_agreement=0.0))
    return root


# --- structure ----------------------------------------------------------------------------------------------

def test_structure_of_two_different_graphs(optimized, small_cola):
    result = diff(f"{optimized}@fp32", f"{optimized}@optimized", DiffConfig(data=str(small_cola)))
    s = result.structure
    assert result.a["variant"] == FP32 and result.b["variant"] == "optimized"
    assert not s["identity"]["same_file"]
    assert s["identity"]["opsets"]["com.microsoft"] == {"a": None, "b": 1}  # the fused ops' domain
    fp32, fused = (onnx.load(str(Package.open(optimized).variant_path(v))) for v in (FP32, "optimized"))
    assert s["identity"]["ir_version"] == {"a": fp32.ir_version, "b": fused.ir_version}
    assert s["ops"]["added"]["Attention"] == 2 and s["ops"]["removed"]["Softmax"] == 2
    assert s["ops"]["nodes"] == {"a": len(fp32.graph.node), "b": len(fused.graph.node)}
    a = {t.name: t for t in fp32.graph.initializer}
    b = {t.name: t for t in fused.graph.initializer}
    matched = [n for n in a if n in b and list(a[n].dims) == list(b[n].dims)]
    w = s["weights"]
    assert (w["a"], w["b"], w["matched"]) == (len(a), len(b), len(matched)) and 0 < w["matched"] < len(a)
    assert w["only_a"] == len(a.keys() - b.keys()) and w["only_b"] == len(b.keys() - a.keys())
    assert s["parameters"]["parameters"]["a"] == sum(math.prod(t.dims) for t in fp32.graph.initializer)
    assert s["contract"]["inputs"]["same"] and s["contract"]["outputs"]["same"]
    fields = s["manifest"]["fields"]
    assert fields["variant"] == {"a": FP32, "b": "optimized", "same": False}
    assert fields["labels"]["same"] and fields["tokenizer_sha256"]["same"] and fields["tokenizer_vocab_size"]["a"] > 0
    assert s["manifest"]["variants"]["int8-static"]["b"]["agreement"] == \
        Package.open(optimized).manifest.variants["int8-static"]["agreement"]


def test_the_moved_weight_is_found(package_dir, moved, small_cola):
    s = diff(package_dir, moved, DiffConfig(data=str(small_cola))).structure
    w = s["weights"]
    assert w["matched"] == w["a"] == w["b"] and w["identical"] == w["matched"] - 1
    (top, *rest) = w["tensors"]
    before, after = (numpy_helper.to_array(next(t for t in onnx.load(str(p / "model.onnx")).graph.initializer
                                                if t.name == BIAS)) for p in (package_dir, moved))
    assert top["name"] == BIAS and top["max_abs_diff"] == pytest.approx(float(np.abs(after - before).max()))
    assert top["relative"] == pytest.approx(top["max_abs_diff"] / float(np.abs(before).max()))
    assert all(t["max_abs_diff"] == 0 for t in rest)
    assert s["ops"]["added"] == {} and s["ops"]["removed"] == {}


# --- behaviour, by hand -------------------------------------------------------------------------------------

def test_agreement_flips_metric_and_mcnemar_by_hand(package_dir, moved, small_cola, validation):
    result = diff(package_dir, moved, DiffConfig(data=str(small_cola)))
    be = result.behaviour
    la, lb = logits(package_dir, validation.texts), logits(moved, validation.texts)
    pa, pb, y = la.argmax(1), lb.argmax(1), np.array(validation.labels)
    flipped = [i for i in range(len(y)) if pa[i] != pb[i]]
    assert 0 < len(flipped) < len(y)
    assert be["n"] == len(y) and be["labelled"] and be["batch_size"] == 32
    assert be["agreement"] == result.agreement == 1 - len(flipped) / len(y)
    assert [f["row"] for f in be["flips"]] == flipped and be["flipped"] == len(flipped)
    labels = ["unacceptable", "acceptable"]
    first = be["flips"][0]
    i = first["row"]
    assert first["text"] == validation.texts[i] and first["label"] == labels[y[i]]
    assert first["a"]["label"] == labels[pa[i]] and first["b"]["label"] == labels[pb[i]]
    pa_soft = np.exp(la[i]) / np.exp(la[i]).sum()
    assert first["a"]["scores"]["acceptable"] == pytest.approx(float(pa_soft[1]), rel=1e-5)
    metric = be["metric"]
    assert metric["name"] == "mcc" and metric["a"] == pytest.approx(mcc(pa, y, 2))
    assert metric["b"] == pytest.approx(mcc(pb, y, 2)) and metric["change"] == pytest.approx(metric["b"] - metric["a"])
    a_only = sum(1 for i in range(len(y)) if pa[i] == y[i] and pb[i] != y[i])
    b_only = sum(1 for i in range(len(y)) if pa[i] != y[i] and pb[i] == y[i])
    n = a_only + b_only
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2**n)
    assert be["mcnemar"] == {"a_right_b_wrong": a_only, "a_wrong_b_right": b_only, "p_value": pytest.approx(p)}
    assert be["max_abs_logit_diff"] == pytest.approx(float(np.abs(la - lb).max()), abs=1e-6)
    assert result.passed == (result.agreement >= 0.99)


@pytest.mark.parametrize(("a_only", "b_only", "p"), [(0, 0, 1.0), (3, 3, 1.0), (9, 1, 0.021484375), (5, 0, 0.0625),
                                                     (40, 36, 0.7310088822226)])
def test_exact_mcnemar(a_only, b_only, p):
    assert mcnemar_exact(a_only, b_only) == pytest.approx(p) == mcnemar_exact(b_only, a_only)


def test_optimizes_recorded_agreement_and_flips_reproduced(optimized, small_cola, validation):
    """The issue's check, on the tiny package: int8-static's agreement as optimize recorded it, and its flips."""
    package = Package.open(optimized)
    entry = package.manifest.variants["int8-static"]
    assert entry["batch_invariant"]
    result = diff(f"{optimized}@fp32", f"{optimized}@int8-static", DiffConfig(data=str(small_cola)))
    assert result.agreement == entry["agreement"]
    fp32, int8 = logits(optimized, validation.texts), logits(optimized, validation.texts,
                                                            package.variant_path("int8-static"))
    assert [f["row"] for f in result.behaviour["flips"]] == np.flatnonzero(fp32.argmax(1) != int8.argmax(1)).tolist()


def test_a_package_runs_its_default_variant(optimized, small_cola):
    result = diff(optimized, optimized, DiffConfig(data=str(small_cola)))
    assert result.a["variant"] == result.b["variant"] == Package.open(optimized).default_variant()
    assert result.agreement == 1.0 and result.behaviour["flips"] == [] and result.structure["identity"]["same_file"]


def test_unlabelled_text_file(package_dir, moved, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat\n\nhim saw she\nwhat did you wonder whether mary bought\n")
    be = diff(package_dir, moved, DiffConfig(data=str(texts))).behaviour
    assert be["n"] == 3 and not be["labelled"] and be["metric"] is None and be["mcnemar"] is None
    assert all(f["label"] is None for f in be["flips"])


def test_a_bare_onnx_file_borrows_the_other_sides_tokenizer(package_dir, moved, small_cola):
    result = diff(package_dir / "model.onnx", moved, DiffConfig(data=str(small_cola)))
    assert result.a["package"] is None and result.structure["manifest"]["fields"]["labels"]["a"] is None
    assert result.agreement == diff(package_dir, moved, DiffConfig(data=str(small_cola))).agreement < 1


def test_two_bare_files_show_structure_only(package_dir, moved):
    with pytest.raises(BehaviourRefused, match="needs a package's tokenizer") as caught:
        diff(package_dir / "model.onnx", moved / "model.onnx")
    assert caught.value.result.structure["weights"]["identical"] == caught.value.result.structure["weights"]["a"] - 1


def test_multi_label_sets_micro_f1_and_mcnemar_by_hand(tiny_model_dir, tmp_path):
    """Multi-label: a row agrees when its whole label set does; the metric is micro-F1, as optimize's."""
    from conftest import LARGE_WEIGHTS_ATOL, tiny_family_folder

    from onnxpack.core.config import ExportConfig
    from onnxpack.pytorch.export import export

    hf = tiny_family_folder("bert", tiny_model_dir, tmp_path / "hf", ["a", "b", "c"],
                            problem_type="multi_label_classification", initializer_range=0.5)
    package = export(hf, tmp_path / "pkg", ExportConfig(atol=LARGE_WEIGHTS_ATOL)).root
    everything = with_manifest(package, tmp_path / "all", thresholds=[0.0, 0.0, 0.0])  # B gives every label
    data = tmp_path / "data"
    data.mkdir()
    rows = [("the cat sat on the mat", "a,b"), ("him saw she", "c"), ("the book was written by john", "a,b,c"),
            ("what did you wonder whether mary bought", "b"), ("mary left", "a")]
    write_tsv(data / "validation.tsv", rows)
    be = diff(package, everything, DiffConfig(data=str(data))).behaviour
    texts = [t for t, _ in rows]
    with Predictor(package) as predictor:
        pa = (1 / (1 + np.exp(-predictor.predict_logits(texts))) >= np.array(predictor.thresholds)).astype(int)
    pb = np.ones_like(pa)
    truth = np.array([[int(name in cell.split(",")) for name in "abc"] for _, cell in rows])
    same = [bool((pa[i] == pb[i]).all()) for i in range(len(rows))]
    assert be["agreement"] == sum(same) / len(rows) and [f["row"] for f in be["flips"]] == [
        i for i, s in enumerate(same) if not s]
    assert all(f["b"]["labels"] == ["a", "b", "c"] for f in be["flips"])
    assert be["flips"] == [] or be["flips"][0]["label"] == rows[be["flips"][0]["row"]][1].split(",")

    def f1(pred):
        tp = int((pred & truth).sum())
        return 2 * tp / (pred.sum() + truth.sum())

    assert be["metric"]["name"] == "f1" and be["metric"]["a"] == pytest.approx(f1(pa))
    assert be["metric"]["b"] == pytest.approx(f1(pb))
    right_a, right_b = (pa == truth).all(axis=1), (pb == truth).all(axis=1)
    assert be["mcnemar"]["a_right_b_wrong"] == int((right_a & ~right_b).sum())
    assert be["mcnemar"]["a_wrong_b_right"] == int((~right_a & right_b).sum())


# --- labels ---------------------------------------------------------------------------------------------------

def test_labels_are_matched_by_name(package_dir, tmp_path, small_cola):
    """B calls its first logit "acceptable": every answer is the other label."""
    swapped = with_manifest(package_dir, tmp_path / "swapped", labels=["acceptable", "unacceptable"])
    result = diff(package_dir, swapped, DiffConfig(data=str(small_cola)))
    assert result.agreement == 0.0 and result.behaviour["max_abs_logit_diff"] > 0


def test_different_label_sets_refused_then_mapped(package_dir, tmp_path, small_cola):
    renamed = with_manifest(package_dir, tmp_path / "renamed", labels=["bad", "good"])
    with pytest.raises(BehaviourRefused, match=r"A's labels \['unacceptable', 'acceptable'\] and B's \['bad', 'good'\] "
                                                "differ") as caught:
        diff(package_dir, renamed, DiffConfig(data=str(small_cola)))
    assert caught.value.result.structure["manifest"]["fields"]["labels"]["same"] is False
    mapped = diff(package_dir, renamed,
                  DiffConfig(data=str(small_cola), map_labels=("unacceptable=bad", "acceptable=good")))
    assert mapped.agreement == 1.0 and mapped.behaviour["max_abs_logit_diff"] == 0
    crossed = diff(package_dir, renamed,
                   DiffConfig(data=str(small_cola), map_labels=("unacceptable=good", "acceptable=bad")))
    assert crossed.agreement == 0.0
    # data labelled with B's names is read too
    named = tmp_path / "named"
    named.mkdir()
    write_tsv(named / "validation.tsv", [("the cat sat on the mat", "good"), ("him saw she", "bad")])
    assert diff(package_dir, renamed, DiffConfig(data=str(named), map_labels=("unacceptable=bad", "acceptable=good"))
                ).behaviour["metric"] is not None


@pytest.mark.parametrize(("mapping", "message"), [
    (("bad=unacceptable",), "--map-labels maps 'bad', which is not one of A's labels"),
    (("unacceptable=nope", "acceptable=good"), "--map-labels maps 'unacceptable' to 'nope', which is not one of B's"),
    (("unacceptable=bad",), "--map-labels leaves A's label 'acceptable' unmapped"),
    (("unacceptable=bad", "acceptable=bad"), "--map-labels maps two of A's labels to B's 'bad'"),
    (("unacceptable=bad", "unacceptable=good"), "--map-labels maps 'unacceptable' twice"),
])
def test_bad_label_maps(mapping, message):
    with pytest.raises(OnnxpackError, match=re.escape(message)):
        align_labels(["unacceptable", "acceptable"], ["bad", "good"], mapping)


def test_a_map_item_without_equals_is_refused():
    with pytest.raises(OnnxpackError, match="--map-labels takes A's label=B's label"):
        DiffConfig(map_labels=("bad",)).validate()


# --- the page -------------------------------------------------------------------------------------------------

def test_page_is_self_contained(package_dir, moved, small_cola):
    page = html_page(diff(package_dir, moved, DiffConfig(data=str(small_cola))).to_dict())
    assert "<script" not in page and "http://" not in page and "https://" not in page
    policy = html.unescape(re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page)[1])
    assert "default-src 'none'; script-src 'none'; style-src 'sha256-" in policy
    assert "Flipped rows" in page and BIAS in page


def test_payloads_show_as_text_in_chromium(browser, payload_package, tmp_path):
    """Every string from the packages and the data (names, labels, texts) is shown as text, and runs nothing."""
    labels = json.loads((payload_package / MANIFEST).read_text(encoding="utf-8"))["labels"]
    swapped = with_manifest(payload_package, tmp_path / "swapped", labels=labels[::-1])  # every row flips
    texts = tmp_path / "texts.txt"
    texts.write_text(PAYLOAD_TEXT + "\nthe book was written by john\n", encoding="utf-8")
    result = diff(payload_package, swapped, DiffConfig(data=str(texts)))
    assert result.behaviour["flipped"] == 2
    out = tmp_path / "diff.html"
    out.write_text(html_page(result.to_dict()), encoding="utf-8")
    browser.open(out)
    name = json.loads((payload_package / MANIFEST).read_text(encoding="utf-8"))["name"]
    assert_shown_as_text(browser.driver, browser.console(), [name, *labels, PAYLOAD_TEXT, *PAYLOADS])
    assert browser.driver.execute_script("return getComputedStyle(document.querySelector('th')).backgroundColor") \
        == "rgb(245, 245, 245)"
