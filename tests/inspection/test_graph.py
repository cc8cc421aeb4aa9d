"""graph.py: the offline HTML page (views, details, collapsing, limits), and the page in real Chromium."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import onnx
import pytest
from conftest import assert_shown_as_text
from onnx import TensorProto, helper, numpy_helper
from selenium.webdriver.common.by import By
from typer.testing import CliRunner

from onnxpack.cli import app
from onnxpack.core.config import GraphConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import Package
from onnxpack.inspection.graph import render

LAYERS = 3
EVIL = "/m/head/Gemm</script><img src=x onerror=alert(1)>"  # a node name that must stay text


def _layered(fused_names: bool = False) -> onnx.ModelProto:
    """x[batch, 4] -> 3 x (MatMul W_i -> Add B_i -> Relu -> Mul by a shared Constant 2.0) -> Gemm -> y[batch, 2],
    named as torch.onnx names an nn.ModuleList: /m/enc/layer.N/...; with `fused_names` the Add and Relu
    have names without a path, as an optimizer's fused nodes do."""
    nodes = [helper.make_node("Constant", [], ["two"], name="/m/Constant",
                              value=numpy_helper.from_array(np.array(2.0, np.float32)))]
    inits, x = [], "x"
    for i in range(LAYERS):
        p = f"/m/enc/layer.{i}"
        inits += [numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) + i, f"W{i}"),
                  numpy_helper.from_array(np.zeros(4, np.float32), f"B{i}")]
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"{p}/mm"], name=f"{p}/dense/MatMul"),
                  helper.make_node("Add", [f"{p}/mm", f"B{i}"], [f"{p}/add"],
                                   name=f"AddBias_{i}" if fused_names else f"{p}/dense/Add"),
                  helper.make_node("Relu", [f"{p}/add"], [f"{p}/relu"], name=f"Relu_{i}" if fused_names else f"{p}/act/Relu"),
                  helper.make_node("Mul", [f"{p}/relu", "two"], [f"{p}/out"], name=f"{p}/Mul")]
        x = f"{p}/out"
    inits.append(numpy_helper.from_array(np.ones((2, 4), np.float32), "Wh"))
    nodes.append(helper.make_node("Gemm", [x, "Wh"], ["y"], name=EVIL, transB=1))
    graph = helper.make_graph(nodes, "layered", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.fixture(scope="module")
def layered() -> onnx.ModelProto:
    return _layered()


def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', page, re.DOTALL)
    return json.loads(m[1])


def test_repeated_blocks_collapse(graphviz, layered):
    drawing = render(layered, "layered")
    assert (drawing.blocks, drawing.views, drawing.nodes) == (LAYERS, LAYERS + 1, 4 * LAYERS + 1)  # Constant folded
    data = page_data(drawing.html)
    assert list(data["views"]) == ["main", "b0", "b1", "b2"]
    assert data["views"]["b1"] == {"title": "layer.1", "nodes": 4 + 2}  # its nodes, plus the tensors in and out
    block = data["nodes"]["b1"]
    assert block["name"] == "m/enc/layer.1" and block["opens"] == "b1" and block["nodes"] == 4
    assert block["ops"] == {"MatMul": 1, "Add": 1, "Relu": 1, "Mul": 1} and block["parameters"] == 16 + 4
    # The overview draws blocks, the Gemm and the graph's input and output; a block's nodes are in its own view.
    overview = re.findall(r'<g id="([^"]+)" class="node', drawing.svg)
    gemm = next(k for k, d in data["nodes"].items() if d["op"] == "Gemm")
    assert sorted(overview) == sorted(["b0", "b1", "b2", gemm, "i0_main", "o1_main"])
    assert data["nodes"]["n1"]["view"] == "b0" and data["nodes"][gemm]["view"] == "main"


def test_nodes_without_a_path_join_their_block(graphviz):
    data = page_data(render(_layered(fused_names=True), "fused").html)
    assert [data["nodes"][f"b{i}"]["nodes"] for i in range(LAYERS)] == [4] * LAYERS
    assert data["nodes"]["n2"]["name"] == "AddBias_0" and data["nodes"]["n2"]["view"] == "b0"


def test_node_details(graphviz, layered):
    data = page_data(render(layered, "layered").html)
    matmul = data["nodes"]["n1"]
    assert (matmul["op"], matmul["name"], matmul["block"]) == ("MatMul", "/m/enc/layer.0/dense/MatMul", "m/enc/layer.0")
    assert matmul["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4], "kind": "input"},
                                {"name": "W0", "dtype": "float32", "shape": [4, 4], "kind": "weight"}]
    assert matmul["outputs"] == [{"name": "/m/enc/layer.0/mm", "dtype": "float32", "shape": ["batch", 4],
                                  "kind": "activation"}]
    w0 = data["weights"]["W0"]
    assert (w0["parameters"], w0["min"], w0["max"], w0["mean"]) == (16, 0.0, 15.0, 7.5)
    assert w0["std"] == pytest.approx(np.arange(16).std())
    mul = data["nodes"]["n4"]
    assert mul["inputs"][1] == {"name": "two", "dtype": "float32", "shape": [], "kind": "constant", "value": "2.0"}
    gemm = next(d for d in data["nodes"].values() if d["op"] == "Gemm")
    assert gemm["attrs"] == {"transB": "1"}


def test_page_is_self_contained(graphviz, layered):
    page = render(layered, "layered").html
    assert not re.search(r"""(?:src|href)\s*=\s*["']\s*(?:https?:)?//|url\(\s*["']?\s*https?://|@import""", page, re.IGNORECASE)
    assert page.count("</script>") == 2  # the data and the code; the node name stays inside the JSON
    assert page_data(page)["nodes"]["n13"]["name"] == EVIL


def test_expand_draws_one_view(graphviz, layered):
    drawing = render(layered, "layered", GraphConfig(collapse=False))
    assert (drawing.views, drawing.blocks) == (1, 0)
    assert len(re.findall(r'class="node op"', drawing.svg)) == 4 * LAYERS + 1


@pytest.mark.parametrize("collapse, message", [
    (False, "the graph has 15 nodes, more than --max-nodes 10 (hint: collapse repeated blocks (leave out --expand))"),
    (True, "the overview has 6 nodes, more than --max-nodes 5 (hint: raise --max-nodes"),
])
def test_too_large_to_draw(layered, collapse, message):
    with pytest.raises(OnnxpackError, match="graph too large to draw in reasonable time") as e:
        render(layered, "layered", GraphConfig(collapse=collapse, max_nodes=10 if not collapse else 5))
    assert message in str(e.value)


def test_without_graphviz(layered, monkeypatch):
    monkeypatch.setattr("onnxpack.inspection.graph.shutil.which", lambda name: None)
    with pytest.raises(OnnxpackError, match="Graphviz's `dot` is not installed"):
        render(layered, "layered")


def test_latency_colours(graphviz, layered):
    latency = {n.name: 0.1 for n in layered.graph.node} | {EVIL: 4.0, "/m/enc/layer.2/dense/MatMul": 1.0}
    drawing = render(layered, "profile", latency_ms=latency)
    data = page_data(drawing.html)
    assert data["nodes"]["b2"]["ms"] == pytest.approx(1.3)
    assert data["nodes"]["n13"]["share"] == pytest.approx(4.0 / (4.0 + 1.0 + 0.1 * 11))
    gemm = re.search(r'<g id="n13" class="node op">.*?fill="([^"]+)"', drawing.svg, re.DOTALL)[1]
    assert gemm == "#dc2626"  # the slowest node is the red end of the scale


def test_cli_writes_html_png_svg(graphviz, package_dir, tmp_path):
    result = CliRunner().invoke(app, ["graph", str(package_dir), "--out", str(tmp_path / "g.html"),
                                      "--png", str(tmp_path / "g.png"), "--svg", str(tmp_path / "g.svg")])
    assert result.exit_code == 0, result.output
    assert "4 blocks collapsed" in result.stdout  # layer.0, layer.1, the embeddings' and the mask's arithmetic
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    assert "<svg" in (tmp_path / "g.svg").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.html", "g.png", "g.svg"]  # no temp files left


def _assert_clean(browser, url: str) -> None:
    """No console errors, and every request went to the loopback server that served the page."""
    errors = [m for m in browser.console() if m["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    origin = url.rsplit("/", 1)[0] + "/"
    assert all(u.startswith((origin, "data:")) for u in browser.requests())


def test_page_in_chromium(graphviz, browser, package_dir, tmp_path):
    """The tiny BERT's page: it draws, a click shows details, a block opens, search finds nodes."""
    out = tmp_path / "graph.html"
    assert CliRunner().invoke(app, ["graph", str(package_dir), "--out", str(out)]).exit_code == 0
    url = browser.open(out)
    d = browser.driver
    main = d.find_elements(By.CSS_SELECTOR, "[data-view=main] g.node")
    assert len(main) > 10 and all(n.is_displayed() for n in main[:3])
    d.find_element(By.ID, "fit").click()
    blocks = d.find_elements(By.CSS_SELECTOR, "[data-view=main] g.node.block")
    next(g for g in blocks if g.text.startswith("layer.0")).click()
    details = d.find_element(By.ID, "details")
    assert details.text.startswith("block layer.0")
    details.find_element(By.CSS_SELECTOR, "button.open").click()
    assert d.find_element(By.ID, "crumbs").text == "overview › layer.0"
    (view,) = [v for v in d.find_elements(By.CSS_SELECTOR, ".view") if v.is_displayed()]
    d.find_element(By.ID, "fit").click()
    next(g for g in view.find_elements(By.CSS_SELECTOR, "g.node.op") if "MatMul" in g.text).click()
    assert "MatMul" in details.text and "INPUTS" in details.text.upper() and "weight" in details.text
    d.find_element(By.ID, "search").send_keys("matmul")
    n_matmul = sum(n.op_type == "MatMul" for n in onnx.load(str(package_dir / "model.onnx")).graph.node)
    assert d.find_element(By.CSS_SELECTOR, "#results h2").text.startswith(f"{n_matmul} matches")
    _assert_clean(browser, url)


def test_hostile_names_in_chromium(graphviz, browser, layered, tmp_path):
    out = tmp_path / "layered.html"
    out.write_text(render(layered, "layered").html, encoding="utf-8")
    url = browser.open(out)
    d = browser.driver
    d.find_element(By.ID, "fit").click()
    d.find_element(By.ID, "n13").click()
    assert EVIL in d.find_element(By.ID, "details").text  # shown as text, not run as markup
    assert d.find_elements(By.CSS_SELECTOR, "img") == []
    _assert_clean(browser, url)


def test_payload_package_in_chromium(graphviz, browser, payload_package, tmp_path):
    """A package whose name carries script payloads: the page shows it as text, runs only its own
    script (its Content-Security-Policy names that by hash), and still works."""
    out = tmp_path / "graph.html"
    assert CliRunner().invoke(app, ["graph", str(payload_package), "--out", str(out)]).exit_code == 0
    page = out.read_text(encoding="utf-8")
    policy = html.unescape(re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page)[1])
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy
    url = browser.open(out)
    d = browser.driver
    d.find_elements(By.CSS_SELECTOR, "[data-view=main] g.node")[0].click()  # the script runs: details show
    assert d.find_element(By.ID, "details").text
    assert_shown_as_text(d, browser.console(), [Package.open(payload_package).name])
    _assert_clean(browser, url)
