"""profile.py: kernel times mapped onto the graph ONNX Runtime ran, and the latency page in Chromium."""

from __future__ import annotations

import json
import re

import onnx
import pytest
from conftest import assert_shown_as_text
from selenium.webdriver.common.by import By
from typer.testing import CliRunner

from onnxpack.cli import app
from onnxpack.core.config import ProfileConfig
from onnxpack.core.errors import OnnxpackError, PackageError
from onnxpack.core.package import Package
from onnxpack.inspection.profile import MIN_MAPPED, draw, profile

QUICK = {"seq": 16, "runs": 3, "warmup": 1, "threads": 1}


@pytest.fixture(scope="module")
def result(package_dir):
    return profile(package_dir, ProfileConfig(**QUICK))


def test_kernel_time_maps_onto_the_graph_that_ran(result, package_dir):
    assert result.mapped_fraction >= MIN_MAPPED and result.unmapped == []
    assert result.kernel_ms > 0 and result.run_ms >= result.kernel_ms * 0.5
    ran = {n.name for n in result.model.graph.node}
    assert {n.name for n in result.nodes} == ran and result.run_nodes == len(ran)
    assert sum(n.share for n in result.nodes) == pytest.approx(result.mapped_fraction)
    assert sum(n.ms for n in result.nodes) == pytest.approx(result.kernel_ms * result.mapped_fraction)
    assert [n.ms for n in result.nodes] == sorted((n.ms for n in result.nodes), reverse=True)
    # ONNX Runtime fuses nodes before running, so fewer run than the file has, and some under new names.
    file_nodes = len(onnx.load(str(package_dir / "model.onnx")).graph.node)
    assert result.file_nodes == file_nodes > result.run_nodes
    assert result.graph.startswith("ONNX Runtime's optimized graph of model.onnx (ORT_ENABLE_ALL, CPUExecutionProvider)")
    # Each node that ran traces back to a node of the file, renamed ones through the tensor they write.
    assert result.renamed > 0 and all(n.origin for n in result.nodes)
    assert sum(o["share"] for o in result.by_op) == pytest.approx(result.mapped_fraction)
    assert (result.batch, result.seq, result.runs) == (1, 16, 3)


def test_draw(graphviz, result):
    drawing = draw(result)
    assert "batch 1 × 16 tokens" in drawing.html and '"mapped_fraction"' in drawing.html
    data = json.loads(re.search(r'id="graph-data">(.*?)</script>', drawing.html, re.DOTALL)[1])
    blocks = {d["opens"]: d["name"] for d in data["nodes"].values() if d["op"] == "block"}
    assert {"model/bert/encoder/layer.0", "model/bert/encoder/layer.1"} <= set(blocks.values())
    # Nodes ONNX Runtime fused under new names (BiasGelu, BiasGelu_token_1) are drawn in their layer.
    fused = [d for d in data["nodes"].values() if d["op"] == "BiasGelu"]
    assert len(fused) == 2 and {blocks[d["view"]] for d in fused} == {"model/bert/encoder/layer.0",
                                                                        "model/bert/encoder/layer.1"}


def test_unknown_variant(package_dir):
    with pytest.raises(PackageError, match="has no variant 'int8'; it has fp32"):
        profile(package_dir, ProfileConfig(variant="int8", **QUICK))


@pytest.mark.parametrize("changes, message", [
    ({"batch": 0}, "--batch must be at least 1, got 0"),
    ({"runs": 0}, "--runs must be at least 1, got 0"),
    ({"seq": 65}, "--seq 65 is longer than the package's max_length 64"),
])
def test_bad_settings(package_dir, changes, message):
    with pytest.raises(OnnxpackError, match=message):
        profile(package_dir, ProfileConfig(**(QUICK | changes)))


def test_cli(graphviz, package_dir, tmp_path):
    result = CliRunner().invoke(app, ["profile", str(package_dir), "--out", str(tmp_path / "p.html"), "--seq", "8",
                                      "--runs", "2", "--json", str(tmp_path / "p.json"),
                                      "--save-graph", str(tmp_path / "ran.onnx")])
    assert result.exit_code == 0, result.output
    assert "of kernel time mapped to nodes" in result.stdout
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["mapped_fraction"] >= MIN_MAPPED and report["seq"] == 8
    ran = onnx.load(str(tmp_path / "ran.onnx"))
    assert len(ran.graph.node) == report["run_nodes"] == len(report["nodes"])


def test_page_in_chromium(graphviz, browser, result, tmp_path):
    out = tmp_path / "profile.html"
    out.write_text(draw(result).html, encoding="utf-8")
    url = browser.open(out)
    d = browser.driver
    assert len(d.find_elements(By.CSS_SELECTOR, "[data-view=main] g.node")) > 10
    assert "mapped to nodes" in d.find_element(By.ID, "profile").text
    slowest = result.nodes[0]
    d.find_element(By.CSS_SELECTOR, "#profile tr.link").click()  # the slowest node: its view opens, it is selected
    details = d.find_element(By.ID, "details").text
    assert slowest.name in details and f"time {slowest.ms:.3f} ms per run" in details
    assert d.find_elements(By.CSS_SELECTOR, "g.node.selected")[0].is_displayed()
    assert [m for m in browser.console() if m["level"] in ("SEVERE", "WARNING")] == []
    origin = url.rsplit("/", 1)[0] + "/"
    assert all(u.startswith((origin, "data:")) for u in browser.requests())


def test_payload_package_page_in_chromium(graphviz, browser, payload_package, tmp_path):
    """The profile of a package whose name carries script payloads: shown as text, nothing runs, and
    the page's tables still fill in under its Content-Security-Policy."""
    out = tmp_path / "profile.html"
    out.write_text(draw(profile(payload_package, ProfileConfig(**QUICK))).html, encoding="utf-8")
    assert 'http-equiv="Content-Security-Policy"' in out.read_text(encoding="utf-8")
    browser.open(out)
    d = browser.driver
    assert "mapped to nodes" in d.find_element(By.ID, "profile").text
    assert_shown_as_text(d, browser.console(), [f"profile of {Package.open(payload_package).name}"])
