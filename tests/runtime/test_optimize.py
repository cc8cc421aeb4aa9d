"""optimize.py: variants built, gated on validation data, added to the package; rejects leave no trace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import write_tsv

from onnxpack.core.config import OptimizeConfig
from onnxpack.core.errors import OnnxpackError, PackageError
from onnxpack.core.package import (
    FP32,
    MANIFEST,
    MODEL,
    Package,
    hash_files,
    variant_file,
)
from onnxpack.runtime.optimize import VARIANTS, VariantSpec, optimize
from onnxpack.runtime.predictor import Predictor

TEXTS = ["the cat sat on the mat", "him saw she", "what did you wonder whether mary bought"]


@pytest.fixture(scope="module")
def optimized(tmp_path_factory, package_dir, small_cola):
    root = Path(shutil.copytree(package_dir, tmp_path_factory.mktemp("opt") / package_dir.name))
    results = optimize(root, OptimizeConfig(data=str(small_cola), max_mcc_drop=1.0))
    return root, results


def test_variants_join_the_package(optimized):
    root, results = optimized
    by_name = {r.variant: r for r in results}
    assert all(by_name[name].accepted for name in (FP32, "optimized", "int8", "int8-static", "int8-cascade"))
    package = Package.open(root)  # every new file is hashed in the manifest
    assert package.variant_names() == [FP32, "optimized", "int8", "int8-static", "int8-cascade"]
    for name in ("optimized", "int8", "int8-static", "int8-cascade"):
        entry = package.manifest.variants[name]
        assert (root / entry["file"]).is_file() and entry["file"] in package.manifest.files
        assert entry["n"] == 64  # the whole (small) validation set
        assert 0 <= entry["agreement"] <= 1 and entry["mcc_drop"] == pytest.approx(
            package.manifest.variants[FP32]["mcc"] - entry["mcc"])
    assert package.manifest.history[-1]["step"] == "optimize"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp files left


def test_optimized_graph_has_fused_attention(optimized):
    root, _ = optimized
    entry = Package.open(root).manifest.variants["optimized"]
    # The export uses eager attention so ORT's fusion recognises it: one Attention per layer (2 here).
    assert entry["fusions"].get("Attention") == 2 and entry["fusions"].get("EmbedLayerNormalization") == 1
    ops = {n.op_type for n in onnx.load(str(root / entry["file"])).graph.node}
    assert "Attention" in ops and "Softmax" not in ops


def test_layer_norms_stay_unfused_after_onnx_runtime_loads_the_graph(optimized, tmp_path):
    import onnxruntime as ort

    root, _ = optimized
    entry = Package.open(root).manifest.variants["optimized"]
    assert entry["rewrites"]["residual_sums"] == 4  # two per layer
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")  # what ORT runs, after its own fusions
    ort.InferenceSession(str(root / entry["file"]), options, providers=["CPUExecutionProvider"])
    loaded = {n.op_type for n in onnx.load(str(tmp_path / "loaded.onnx")).graph.node}
    assert "LayerNormalization" in loaded and "SkipLayerNormalization" not in loaded


def test_rewrites_keep_the_logits_at_every_shape(optimized):
    import onnxruntime as ort

    root, _ = optimized
    package = Package.open(root)
    rewrites = package.manifest.variants["optimized"]["rewrites"]
    assert rewrites["token_types_folded"] == 1 and rewrites["first_token_only_nodes"] == 10
    graph = onnx.load(str(package.variant_path("optimized"))).graph
    embed = next(n for n in graph.node if n.op_type == "EmbedLayerNormalization")
    assert embed.input[1] == "" and embed.input[4] == ""  # no token-type ids, no token-type table
    fp32, rewritten = (ort.InferenceSession(str(package.variant_path(name)), providers=["CPUExecutionProvider"])
                       for name in (FP32, "optimized"))
    rng = np.random.default_rng(0)
    for batch, length in ((1, 1), (3, 7), (2, 64)):
        ids = rng.integers(5, package.manifest.architecture["vocab_size"], (batch, length))
        mask = np.ones_like(ids)
        mask[0, length // 2 + 1:] = 0  # padding in the first row
        feed = {"input_ids": ids, "attention_mask": mask}
        np.testing.assert_allclose(rewritten.run(None, feed)[0], fp32.run(None, feed)[0], atol=1e-5)


def _graph(nodes, inputs, outputs, initializers):
    from onnxruntime.transformers.onnx_model import OnnxModel

    graph = onnx.helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return OnnxModel(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))


def _tail_model(pool: str, hidden_is_output: bool = False, bias_per_position: bool = False):
    """x -> MatMul -> Add(bias) -> Sum(x) -> LayerNorm -> pooled: the row-wise tail of a BERT layer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    bias = rng.normal(size=(5, 4) if bias_per_position else 4)  # (5, 4): differs along the sequence
    consts = {"w": rng.normal(size=(4, 4)), "b": bias, "g": np.ones(4), "beta": np.zeros(4)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["biased"]),
             helper.make_node("Sum", ["biased", "x"], ["res"]),
             helper.make_node("LayerNormalization", ["res", "g", "beta"], ["hidden"], axis=-1),
             helper.make_node("Gather", ["hidden", "zero"], ["pooled"], axis=1) if pool == "first"
             else helper.make_node("ReduceMean", ["hidden"], ["pooled"], axes=[1], keepdims=0)]
    outputs = [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None)]
    if hidden_is_output:
        outputs.append(helper.make_tensor_value_info("hidden", TensorProto.FLOAT, None))
    return _graph(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])], outputs, inits)


@pytest.mark.parametrize("pool, hidden_is_output, bias_per_position, moved", [
    ("first", False, False, 4), ("first", True, False, 0), ("mean", False, False, 0),
    ("first", False, True, 2),  # the per-position bias stops it: only Sum and LayerNorm move
])
def test_first_token_only(pool, hidden_is_output, bias_per_position, moved):
    import onnxruntime as ort

    from onnxpack.runtime.optimize import _first_token_only

    model = _tail_model(pool, hidden_is_output, bias_per_position)
    x = {"x": np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)}
    before = ort.InferenceSession(model.model.SerializeToString()).run(None, x)
    assert _first_token_only(model) == moved
    model.topological_sort()
    after = ort.InferenceSession(model.model.SerializeToString()).run(None, x)
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, atol=1e-5)
    if moved == 4:  # the MatMul now sees one row per sequence
        assert next(n for n in model.nodes() if n.op_type == "MatMul").input[0] == "x_first_token"


def test_int8_is_quantized_from_the_optimized_graph(optimized):
    root, _ = optimized
    entry = Package.open(root).manifest.variants["int8"]
    assert entry["built_from"] == "optimized"
    assert {"QAttention", "MatMulInteger", "DynamicQuantizeMatMul"} & set(entry["ops"])
    assert entry["bytes"] < Package.open(root).manifest.variants[FP32]["bytes"]


def test_batch_drift_is_measured_and_serve_avoids_batch_dependent_variants(optimized):
    from onnxpack.runtime.predictor import serving_variant

    variants = Package.open(optimized[0]).manifest.variants
    for name in (FP32, "optimized"):  # float graphs: the same logits alone or batched, to rounding
        assert variants[name]["batch_drift"] < 1e-4 and variants[name]["batch_invariant"] is True
    int8 = variants["int8"]  # one activation scale per call: a text's logits move with its neighbours
    assert int8["batch_drift"] > variants[FP32]["batch_drift"]
    assert int8["batch_invariant"] == (int8["batch_drift"] <= 1e-4)
    served = serving_variant(Package.open(optimized[0]))
    # what serve runs is batch-invariant, and is int8 only if int8 was measured batch-invariant
    assert variants[served]["batch_invariant"] is True and (served != "int8" or int8["batch_invariant"])


def test_int8_static_is_calibrated_on_training_rows_and_recorded(optimized):
    root, _ = optimized
    package = Package.open(root)
    entry = package.manifest.variants["int8-static"]
    assert entry["built_from"] == "optimized" and entry["calibration_split"] == "train"
    assert entry["calibration_method"] == "MinMax" and entry["calibration_rows"] == 256  # small_cola's whole train split
    # the int8 variant's integer kernels, with constant activation scales instead of per-call ones
    assert {"QAttention", "MatMulIntegerToFloat", "QuantizeLinear"} <= set(entry["ops"])
    # every MatMulInteger -> Cast -> Mul -> Add became one MatMulIntegerToFloat
    assert entry["rewrites"]["dequantize_fused"] == entry["ops"]["MatMulIntegerToFloat"] > 0
    assert "MatMulInteger" not in entry["ops"]
    assert "DynamicQuantizeLinear" not in entry["ops"]
    assert entry["batch_drift"] <= 1e-4 and entry["batch_invariant"] is True
    assert entry["agreement"] >= 0.99 and "mcc_drop" in entry


def test_int8_static_gives_a_text_the_same_logits_whatever_its_batch(optimized, small_cola):
    from onnxpack.core.data import load_splits

    texts = load_splits(str(small_cola), need_train=False).validation.texts  # 64 texts of many lengths
    with Predictor(optimized[0], variant="int8-static") as static, Predictor(optimized[0], variant="int8") as dynamic:
        drift = {}
        for name, predictor in (("static", static), ("dynamic", dynamic)):
            together = predictor.predict_logits(texts, batch_size=32)
            alone = np.concatenate([predictor.predict_logits([text], 1) for text in texts])
            drift[name] = np.abs(together - alone).max()
    assert drift["static"] <= 1e-4 < drift["dynamic"]  # dynamic int8's scale is the batch's


def test_int8_cascade_is_int8_static_with_float_for_the_unsure_rows(optimized, small_cola):
    from onnxpack.core.data import load_splits
    from onnxpack.runtime import cascade

    root, _ = optimized
    package = Package.open(root)
    entry = package.manifest.variants["int8-cascade"]
    fit = entry["cascade"]
    # tau fitted on training rows (small_cola's 256), to the default target, and recorded with its share
    assert fit["fit_split"] == "train" and fit["fit_rows"] == 256 and fit["target_agreement"] == 0.999
    assert 0 <= fit["tau"] <= cascade.TAU_MAX and fit["fit_agreement"] >= 0.999
    assert fit["fit_agreement"] >= fit["int8_alone_fit_agreement"] and 0 <= fit["fit_fallback_share"] <= 1
    assert entry["built_from"] == "optimized" and entry["batch_invariant"] is True
    assert {"QAttention", "MatMulIntegerToFloat", "If"} <= set(entry["ops"])  # one file: int8, then float under an If
    assert entry["agreement"] >= 0.99


def test_int8_cascade_answers_unsure_rows_in_float_and_the_rest_in_int8(package_copy, small_cola):
    from onnxpack.core.data import load_splits
    from onnxpack.runtime import cascade

    # per-channel int8-static is built from the same recipe and rows as the cascade's int8 graph
    gate = dict(data=str(small_cola), max_mcc_drop=1.0, min_agreement=0, per_channel=True)
    optimize(package_copy, OptimizeConfig(variants=("optimized", "int8-static"), **gate))
    texts = load_splits(str(small_cola), need_train=False).validation.texts
    with Predictor(package_copy, variant="int8-static") as static:
        rough = static.predict_logits(texts)
    # about half the rows go back (the tiny model flips none on train): tau in the widest gap between
    # the middle margins, so that the graph's float32 margin and numpy's fall on the same side of it
    middle = np.sort(cascade.margins(rough))[len(texts) // 4:3 * len(texts) // 4]
    widest = int(np.argmax(np.diff(middle)))
    tau = float(middle[widest] + middle[widest + 1]) / 2
    optimize(package_copy, OptimizeConfig(variants=("int8-cascade",), cascade_tau=tau, **gate))
    with Predictor(package_copy, variant="optimized") as optimized_, \
            Predictor(package_copy, variant="int8-cascade") as cascaded:
        exact, got = (p.predict_logits(texts) for p in (optimized_, cascaded))
    unsure = cascade.margins(rough) < tau
    assert 0 < unsure.sum() < len(unsure)
    np.testing.assert_allclose(got[unsure], exact[unsure], atol=1e-5)
    np.testing.assert_array_equal(got[~unsure], rough[~unsure])


def test_int8_cascade_with_a_fixed_tau_of_half_is_the_float_graph(package_copy, small_cola):
    optimize(package_copy, OptimizeConfig(variants=("int8-cascade",), cascade_tau=0.5, data=str(small_cola)))
    package = Package.open(package_copy)
    entry = package.manifest.variants["int8-cascade"]
    assert package.variant_names() == [FP32, "int8-cascade"]  # its base is built, gated and left out
    assert entry["cascade"]["tau"] == 0.5 and entry["cascade"]["fit_fallback_share"] == 1.0
    assert entry["agreement"] == 1.0 and entry["max_abs_diff"] <= 1e-3


def test_serve_picks_int8_static_when_it_is_the_fastest_batch_invariant_variant(optimized, tmp_path):
    from onnxpack.runtime.predictor import serving_variant

    root = Path(shutil.copytree(optimized[0], tmp_path / "pkg"))
    package = Package.open(root)
    speeds = {FP32: 100, "optimized": 150, "int8": 300, "int8-static": 250, "int8-cascade": 200}
    package.update_manifest(variants={name: v | {"items_per_s": speeds[name]}
                                      for name, v in package.manifest.variants.items()})
    assert package.default_variant() == "int8"  # offline batch jobs: the fastest of all
    assert serving_variant(package) == serving_variant(package, "cpu") == "int8-static"
    package.update_manifest(variants=package.manifest.variants | {
        "int8-static": package.manifest.variants["int8-static"] | {"items_per_s": 120}})
    assert serving_variant(package) == "int8-cascade"
    package.update_manifest(variants=package.manifest.variants | {
        "int8-cascade": package.manifest.variants["int8-cascade"] | {"items_per_s": 110}})
    assert serving_variant(package) == "optimized"


def _batch_dependent(package, base, out, recipe, calibration):
    """A variant that breaks its promise: 0.01 x the batch size added to every logit (labels stay)."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(base))
    logits = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_raw" if o == logits else o for o in node.output]
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), "zero"),
                                    numpy_helper.from_array(np.array(0.01, np.float32), "step")])
    model.graph.node.extend([
        helper.make_node("Shape", [f"{logits}_raw"], ["shape"]), helper.make_node("Gather", ["shape", "zero"], ["n"]),
        helper.make_node("Cast", ["n"], ["n_float"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["n_float", "step"], ["shift"]),
        helper.make_node("Add", [f"{logits}_raw", "shift"], [logits])])
    onnx.save(model, str(out))
    return {}


def test_a_variant_that_promises_batch_invariance_and_breaks_it_is_rejected(package_copy, small_cola, monkeypatch):
    monkeypatch.setitem(VARIANTS._items, "leaky", VariantSpec(_batch_dependent, base=FP32, batch_invariant=True))
    results = optimize(package_copy, OptimizeConfig(variants=("leaky",), data=str(small_cola), max_mcc_drop=1.0,
                                                    min_agreement=0.0))
    leaky = next(r for r in results if r.variant == "leaky")
    assert not leaky.accepted and "not batch invariant" in leaky.reason and leaky.figures["batch_drift"] > 1e-4
    assert Package.open(package_copy).variant_names() == [FP32]


@pytest.mark.parametrize("train_rows, message", [
    (5, "int8-static calibrates on training rows, and .* has 5; it needs at least 16"),
    (None, "int8-static calibrates on training rows: .* has no train.tsv"),
])
def test_too_small_or_missing_calibration_set_is_one_line_error(package_copy, small_cola, tmp_path, train_rows,
                                                                message):
    from conftest import read_rows

    data = Path(shutil.copytree(small_cola, tmp_path / "data"))
    (data / "train.tsv").unlink()
    if train_rows:
        rows = read_rows(small_cola / "train.tsv", 256)
        write_tsv(data / "train.tsv", [r for r in rows if r[1]][:3] + [r for r in rows if not r[1]][:train_rows - 3])
    before = {p.name: p.read_bytes() for p in package_copy.iterdir()}
    with pytest.raises(OnnxpackError, match=message) as error:
        optimize(package_copy, OptimizeConfig(variants=("optimized", "int8-static"), data=str(data)))
    assert "\n" not in str(error.value) and "hint: " in str(error.value)
    assert {p.name: p.read_bytes() for p in package_copy.iterdir()} == before  # nothing built, nothing written
    # without int8-static, no training rows are needed
    assert optimize(package_copy, OptimizeConfig(variants=("optimized",), data=str(data)))[1].accepted


def test_fp16_skipped_on_cpu(optimized):
    _, results = optimized
    fp16 = next(r for r in results if r.variant == "fp16")
    assert not fp16.accepted and "GPU" in fp16.reason


def test_predictor_picks_the_fastest_accepted_variant(optimized):
    root, _ = optimized
    package = Package.open(root)
    speeds = {name: v["items_per_s"] for name, v in package.manifest.variants.items()}
    assert package.default_variant() == max(speeds, key=speeds.get)
    with Predictor(root) as default, Predictor(root, variant=FP32) as fp32, Predictor(root, variant="int8") as int8:
        assert default.variant == package.default_variant()
        a, b = fp32.predict_logits(TEXTS), int8.predict_logits(TEXTS)
        assert a.shape == b.shape and not np.array_equal(a, b)  # really a different graph
        assert np.abs(a - b).max() < 0.5


def test_unknown_variant_is_a_clear_error(optimized):
    with pytest.raises(PackageError, match="no variant 'fp8'; it has fp32, optimized, int8"):
        Predictor(optimized[0], variant="fp8")


def _flipped(package, base, out, recipe, calibration):
    """A deliberately wrong variant: the fp32 graph with its logits negated (labels swapped)."""
    model = onnx.load(str(base))
    logits = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_raw" if o == logits else o for o in node.output]
    model.graph.node.append(onnx.helper.make_node("Neg", [f"{logits}_raw"], [logits]))
    onnx.save(model, str(out))
    return {}


def _balanced_package_and_data(root: Path, small_cola: Path, out: Path) -> Path:
    """Shift the package's classifier bias so fp32 predicts both labels, and label the validation
    texts with fp32's own predictions: fp32 then scores MCC 1, and a worse variant has room to drop."""
    from onnxpack.core.data import load_splits

    texts = load_splits(str(small_cola), need_train=False).validation.texts
    with Predictor(root, variant=FP32) as predictor:
        margin = np.diff(predictor.predict_logits(texts), axis=-1)[:, 0]
    model = onnx.load(str(root / MODEL))
    bias = next(t for t in model.graph.initializer if "classifier" in t.name and "bias" in t.name)
    values = onnx.numpy_helper.to_array(bias).copy()
    values[1] -= np.median(margin)
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(root / MODEL))
    Package.open(root, check_files=False).update_manifest(files=hash_files(root))
    with Predictor(root, variant=FP32) as predictor:
        logits = predictor.predict_logits(texts)
    # Rows on the boundary could flip with float rounding between batchings: leave them out.
    margin = np.abs(np.diff(logits, axis=-1)[:, 0])
    clear = margin > 0.02 * margin.max()
    labels = logits.argmax(-1)[clear]
    assert 0 < labels.mean() < 1
    out.mkdir()
    write_tsv(out / "dev.tsv", list(zip([t for t, keep in zip(texts, clear) if keep], labels.tolist())))
    return out


def test_a_variant_that_loses_accuracy_is_rejected_and_not_written(package_copy, small_cola, tmp_path, monkeypatch):
    data = _balanced_package_and_data(package_copy, small_cola, tmp_path / "data")
    monkeypatch.setitem(VARIANTS._items, "flipped", VariantSpec(_flipped, base=FP32))
    before = {p.name: p.read_bytes() for p in package_copy.iterdir()}
    results = optimize(package_copy, OptimizeConfig(variants=("flipped",), data=str(data), min_agreement=0.0))
    assert results[0].figures["mcc"] == pytest.approx(1.0)
    flipped = next(r for r in results if r.variant == "flipped")
    assert not flipped.accepted and "below fp32" in flipped.reason
    assert flipped.figures["agreement"] == 0.0 and flipped.figures["mcc"] == pytest.approx(-1.0)
    assert {p.name: p.read_bytes() for p in package_copy.iterdir()} == before  # untouched


def test_a_variant_whose_labels_flip_is_rejected_even_when_the_metric_holds(package_copy, small_cola, tmp_path,
                                                                          monkeypatch):
    data = _balanced_package_and_data(package_copy, small_cola, tmp_path / "data")
    monkeypatch.setitem(VARIANTS._items, "flipped", VariantSpec(_flipped, base=FP32))
    results = optimize(package_copy, OptimizeConfig(variants=("flipped",), data=str(data), max_mcc_drop=1.0))
    flipped = next(r for r in results if r.variant == "flipped")
    assert not flipped.accepted and flipped.reason == "labels agree with fp32's on 0.00% of rows (< 99%)"
    assert Package.open(package_copy).variant_names() == [FP32]


def test_a_rewrite_that_moves_the_logits_is_rejected(package_copy, small_cola, monkeypatch):
    monkeypatch.setitem(VARIANTS._items, "flipped", VariantSpec(_flipped, base=FP32, exact_within=1e-3))
    results = optimize(package_copy, OptimizeConfig(variants=("flipped",), data=str(small_cola), max_mcc_drop=1.0))
    flipped = next(r for r in results if r.variant == "flipped")
    assert not flipped.accepted and "the rewrite changed the model" in flipped.reason
    assert Package.open(package_copy).variant_names() == [FP32]


@pytest.mark.parametrize("config, message", [
    (OptimizeConfig(max_mcc_drop=1.5), "between 0 and 1"),
    (OptimizeConfig(max_mcc_drop=-0.1), "between 0 and 1"),
    (OptimizeConfig(min_agreement=1.2), "--min-agreement must be between 0 and 1"),
    (OptimizeConfig(variants=("int4",)), "unknown variant 'int4'; known: fp16, int8, int8-cascade, int8-static, optimized"),
    (OptimizeConfig(calibration_rows=8), "--calibration-rows must be at least 16, got 8"),
    (OptimizeConfig(batch_size=0), "--batch-size must be at least 1, got 0"),
    (OptimizeConfig(cascade_tau=0.7), "--cascade-tau must be between 0 and 0.5, got 0.7"),
    (OptimizeConfig(cascade_tau=-0.1), "--cascade-tau must be between 0 and 0.5, got -0.1"),
    (OptimizeConfig(cascade_agreement=0.0), "--cascade-agreement must be above 0, got 0.0"),
    (OptimizeConfig(cascade_agreement=1.5), "--cascade-agreement must be above 0 and at most 1, got 1.5"),
])
def test_bad_options_leave_the_package_as_it_was(package_copy, small_cola, config, message):
    before = (package_copy / MANIFEST).read_text()
    with pytest.raises(OnnxpackError, match=message):
        optimize(package_copy, OptimizeConfig(**{**config.__dict__, "data": str(small_cola)}))
    assert (package_copy / MANIFEST).read_text() == before


def test_no_validation_data(package_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPACK_DATA", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    before = (package_copy / MANIFEST).read_text()
    with pytest.raises(OnnxpackError, match="validation"):
        optimize(package_copy, OptimizeConfig(data=str(tmp_path / "empty")))
    assert (package_copy / MANIFEST).read_text() == before
    assert list(json.loads(before)["variants"]) == [FP32]  # export's graph only
    assert not list(package_copy.glob(variant_file("*")))


def test_int8_alone_per_channel(package_copy, small_cola):
    results = optimize(package_copy, OptimizeConfig(variants=("int8",), per_channel=True, data=str(small_cola),
                                                    max_mcc_drop=1.0))
    assert [r.variant for r in results] == [FP32, "int8"] and results[1].accepted
    package = Package.open(package_copy)
    # its base graph was built and gated but not asked for, so it is not added
    assert package.variant_names() == [FP32, "int8"]
    entry = package.manifest.variants["int8"]
    assert entry["per_channel"] is True and entry["built_from"] == "optimized"
