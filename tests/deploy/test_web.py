"""export-web: the static folder, its page in headless Chromium served from loopback with no server
behind it, the JS tokenizer against Python's, and check's web runtime. onnxruntime-web and
tokenizers.js are npm-installed once into onnxpack's cache (web.ensure_runtime) by the first run."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import (
    LARGE_WEIGHTS_ATOL,
    announce,
    one_error_line,
    provision,
    tiny_family_folder,
)
from onnx import helper
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from onnxpack.cli import app
from onnxpack.core.config import ExportConfig, ServeConfig
from onnxpack.core.data import load_splits
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import MANIFEST, Package, hash_files
from onnxpack.deploy import runtimes, web
from onnxpack.runtime.feed import package_tokenizer
from onnxpack.runtime.predictor import Predictor

HERE = Path(web.__file__).parent / "web"


@pytest.fixture(scope="session")
def web_runtime(pytestconfig) -> Path:
    if shutil.which("node") is None:
        pytest.skip("needs Node.js and npm for onnxruntime-web: apt-get install nodejs npm (.ci/run does)")
    home = web.home()
    try:
        provision(pytestconfig, home.with_name(f"{home.name}.lock"), lambda: web.missing() is None, web.ensure_runtime,
                  f"setting up onnxruntime-web and tokenizers.js in {home} for export-web (first run only)")
    except (OnnxpackError, OSError) as e:
        pytest.skip(f"could not npm-install onnxruntime-web ({getattr(e, 'message', e)}); it needs npm and its registry")
    return home


# Texts a tokenizer can get wrong: case, accents, punctuation runs, digits, emoji, CJK, odd spaces, a long one.
TRICKY = ["The boy, who was TIRED, sat on a bench.", "Café naïve résumé — déjà vu!", "it's 42.5 (roughly)...",
          "  two  spaces\tand a tab ", "emoji 🙂👍🏽 and 中文字符 mixed", "x" * 80, " ".join(["word"] * 90)]


def _wordpiece() -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def _byte_level() -> Tokenizer:  # RoBERTa's kind
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _metaspace() -> Tokenizer:  # SentencePiece's kind (XLM-R, DeBERTa-v2)
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    return tokenizer


@pytest.mark.parametrize("make", [_wordpiece, _byte_level, _metaspace])
def test_the_page_tokenizes_as_python_does(web_runtime, make, tmp_path):
    """classifier.mjs's encoding (tokenizers.js, then onnxpack's truncation and special tokens) gives the
    ids and segment ids Python's package tokenizer gives, single texts and pairs, cut or not."""
    tokenizer = make()
    specials = ["[CLS]", "[SEP]", "[UNK]", "[PAD]"]
    trainer = {models.WordPiece: trainers.WordPieceTrainer, models.BPE: trainers.BpeTrainer,
               models.Unigram: trainers.UnigramTrainer}[type(tokenizer.model)]
    corpus = load_splits(None, need_train=False).validation.texts[:300] + TRICKY
    tokenizer.train_from_iterator(corpus, trainer(vocab_size=300, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    max_length = 24  # short, so the long texts and the pairs are cut, both of a pair's cases included
    texts = corpus[:40] + TRICKY + [[a, b] for a, b in zip(TRICKY, reversed(TRICKY))] + [["short", TRICKY[-1]]]
    script = tmp_path / "encode.mjs"
    script.write_text(f"""
import fs from "node:fs";
import {{Classifier}} from {json.dumps(str(HERE / "classifier.mjs"))};
import {{Tokenizer}} from {json.dumps(str(web_runtime / "node_modules" / web.VENDOR["tokenizers.min.js"]))};
const tokenizer = new Tokenizer(JSON.parse(fs.readFileSync(process.argv[2], "utf8")), {{}});
const classifier = new Classifier(null, tokenizer, null, {{max_length: {max_length}, inputs: []}});
const texts = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
process.stdout.write(JSON.stringify(texts.map((t) => classifier.encode(t))));
""", encoding="utf-8")
    (tmp_path / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    result = subprocess.run(["node", str(script), str(tmp_path / "tokenizer.json"), str(tmp_path / "texts.json")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    python = package_tokenizer(tmp_path / "tokenizer.json", max_length, pad_token_id=0)
    python.no_padding()
    for text, got in zip(texts, json.loads(result.stdout)):
        want = python.encode(*text) if isinstance(text, list) else python.encode(text)
        assert got["ids"] == want.ids, text
        assert got["typeIds"] == want.type_ids, text
        assert got["truncated"] == (len(want.overflowing) > 0), text


@pytest.fixture(scope="module")
def folder(web_runtime, package_dir, tmp_path_factory, runner) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("web") / "site"
    result = runner.invoke(app, ["export-web", str(package_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.stdout


@pytest.fixture(scope="module")
def runner():
    from typer.testing import CliRunner

    return CliRunner()


def test_the_folder_holds_page_model_tokenizer_and_runtime_and_names_its_variant(folder, package_dir):
    out, printed = folder
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"index.html", "app.js", "classifier.js", "model.onnx", "tokenizer.json", "manifest.json",
            "vendor/ort.wasm.min.js", "vendor/ort-wasm-simd-threaded.wasm", "vendor/tokenizers.min.js"} <= files
    package = Package.open(package_dir)
    assert manifest["format"] == web.FORMAT and manifest["variant"] in package.variant_names()
    assert (out / "model.onnx").read_bytes() == package.variant_path(manifest["variant"]).read_bytes()
    assert manifest["runtime"]["onnxruntime-web"].startswith("1.31.")
    assert all(t["error"] is None and t["max_abs_diff"] <= web.TOLERANCE for t in manifest["trials"])
    assert f"carries {manifest['variant']}" in printed and "MB gzipped" in printed


def _validation_rows(n: int) -> list[str]:
    """n validation rows of every length, the longest (past the tiny model's 64 tokens) included."""
    texts = sorted(set(load_splits(None, need_train=False).validation.texts), key=len)
    step = max(1, len(texts) // n)
    return texts[::step][: n - 2] + [texts[-1], " ".join(texts[-10:])]


def test_the_page_in_chromium_answers_as_predict(browser, folder, package_dir, pytestconfig):
    """Served from a plain static server on loopback, the page's window.onnxpack.predict gives predict's
    labels and logits for 66 real rows, fetching nothing from elsewhere."""
    out, _ = folder
    variant = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["variant"]
    texts = _validation_rows(66)
    url = browser.open(out / "index.html")
    browser.driver.set_script_timeout(120)
    answer = browser.driver.execute_async_script(web.PREDICT_IN_PAGE, texts)
    assert "error" not in answer, answer
    with Predictor(package_dir, variant=variant) as predictor:
        want, logits = predictor.predict(texts), predictor.predict_logits(texts)
        started = time.perf_counter()
        predictor.predict_logits(texts)
        python_s = time.perf_counter() - started
    got = answer["results"]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["text"] for g in got] == texts
    assert np.abs(np.array([g["logits"] for g in got]) - logits).max() <= 1e-4
    assert max(abs(g["score"] - w["score"]) for g, w in zip(got, want)) <= 1e-4
    assert got[0]["scores"].keys() == want[0]["scores"].keys()
    origin = url.rsplit("/", 1)[0] + "/"
    assert answer["resources"] and all(u.startswith(origin) for u in answer["resources"]), answer["resources"]
    assert all(r.startswith(origin) for r in browser.requests()), browser.requests()
    announce(pytestconfig, f"export-web's page in Chromium: {len(texts) / answer['ms'] * 1000:.0f} texts/s, Python "
                           f"{len(texts) / python_s:.0f} texts/s ({variant} of the tiny test model, {len(texts)} rows, "
                           "the same run)")


def test_the_page_classifies_what_is_typed_and_refuses_what_the_server_refuses(browser, folder):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out, _ = folder
    browser.open(out / "index.html")
    driver = browser.driver
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Ready"))
    assert "runs in this browser" in driver.find_element(By.ID, "hint").text
    assert not driver.find_element(By.ID, "why").is_displayed()  # no explanations without a server
    box = driver.find_element(By.ID, "texts")
    box.send_keys("The boy is sitting on a bench.\nHim saw she.")
    driver.find_element(By.ID, "classify").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 2)
    assert len(driver.find_elements(By.CSS_SELECTOR, ".result .bar")) == 4
    limit = ServeConfig().max_chars
    driver.execute_script("arguments[0].value = arguments[1]", box, "a" * (limit + 1))
    driver.find_element(By.ID, "classify").click()
    wait.until(lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert f"texts[0]: at most {limit} characters per text, got {limit + 1}" in driver.find_element(By.ID, "status").text
    assert not [e for e in browser.console() if e["level"] == "SEVERE"], browser.console()


@pytest.mark.parametrize("kind", ["pairs", "multi_label"])
def test_every_kind_of_model_gets_its_page_and_its_answers(kind, browser, web_runtime, tiny_model_dir, tmp_path,
                                                            runner):
    """A pair model: two boxes, pairs in, pair answers out. A multi-label model: a sigmoid per label and
    every label at or over its threshold, as predict gives them."""
    from selenium.webdriver.common.by import By

    from onnxpack.pytorch.export import export

    labels = ["no", "yes"] if kind == "pairs" else ["a", "b", "c"]
    extra = {} if kind == "pairs" else {"problem_type": "multi_label_classification"}
    hf = tiny_family_folder("bert", tiny_model_dir, tmp_path / "hf", labels, initializer_range=0.5, **extra)
    package = export(hf, tmp_path / "pkg", ExportConfig(pairs=kind == "pairs", atol=LARGE_WEIGHTS_ATOL)).root
    result = runner.invoke(app, ["export-web", str(package), "--out", str(tmp_path / "site"), "--rows", "8"])
    assert result.exit_code == 0, result.output
    browser.open(tmp_path / "site" / "index.html")
    assert browser.driver.find_element(By.ID, "first").is_displayed() == (kind == "pairs")
    assert browser.driver.find_element(By.ID, "texts").is_displayed() == (kind != "pairs")
    texts = ([["A man plays a guitar.", "Someone makes music."], ["The cat sleeps.", " ".join(["long"] * 80)]]
             if kind == "pairs" else TRICKY)
    answer = browser.driver.execute_async_script(web.PREDICT_IN_PAGE, texts)
    with Predictor(package) as predictor:
        items = [tuple(t) for t in texts] if kind == "pairs" else texts
        want, logits = predictor.predict(items), predictor.predict_logits(items)
    got = answer["results"]
    assert np.abs(np.array([r["logits"] for r in got]) - logits).max() <= 1e-4
    assert [r["label"] for r in got] == [w["label"] for w in want]
    if kind == "multi_label":
        assert [r["labels"] for r in got] == [w["labels"] for w in want]
        assert all(abs(r["scores"][k] - w["scores"][k]) <= 1e-4 for r, w in zip(got, want) for k in labels)


def test_export_web_into_a_folder_that_holds_something_else_is_refused(runner, package_dir, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    line = one_error_line(runner.invoke(app, ["export-web", str(package_dir), "--out", str(out)]))
    assert "already exists" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_without_npm_export_web_names_it(runner, package_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPACK_WEB_RUNTIME", str(tmp_path / "empty-cache"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "node").symlink_to(shutil.which("node") or "/bin/false")
    monkeypatch.setenv("PATH", str(bin_dir))  # node, and no npm
    line = one_error_line(runner.invoke(app, ["export-web", str(package_dir), "--out", str(tmp_path / "site")]))
    assert "npm is not installed" in line and not (tmp_path / "site").exists()


def _with_graph(package_dir: Path, folder: Path, graph: onnx.ModelProto) -> Path:
    """A copy of the package whose model.onnx is `graph`, its hashes rewritten to match."""
    root = Path(shutil.copytree(package_dir, folder))
    onnx.save(graph, str(root / "model.onnx"))
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"] = hash_files(root)
    (root / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return root


def test_an_op_onnxruntime_web_lacks_is_named_with_the_variants_tried(web_runtime, runner, package_dir, tmp_path):
    """ONNX Runtime 1.32 (Python) has com.microsoft's MoEGroupRouter; onnxruntime-web 1.31 does not. The
    package's own graph, its logits passed through one (and added back times zero), runs in Python."""
    graph = onnx.load(str(package_dir / "model.onnx"))
    (output,) = [o.name for o in graph.graph.output]
    for node in graph.graph.node:
        node.output[:] = ["plain_logits" if name == output else name for name in node.output]
    graph.graph.initializer.extend([onnx.numpy_helper.from_array(np.zeros(2, np.float32), "expert_bias"),
                                    onnx.numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    graph.graph.node.extend([
        helper.make_node("MoEGroupRouter", ["plain_logits", "expert_bias"], ["routed"], domain="com.microsoft",
                         top_k=2, n_group=1, topk_group=1),
        helper.make_node("Mul", ["routed", "zero"], ["nothing"]),
        helper.make_node("Add", ["plain_logits", "nothing"], [output])])
    if not any(o.domain == "com.microsoft" for o in graph.opset_import):
        graph.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    root = _with_graph(package_dir, tmp_path / "pkg", graph)
    line = one_error_line(runner.invoke(app, ["export-web", str(root), "--out", str(tmp_path / "site")]))
    assert "MoEGroupRouter" in line and "(fp32)" in line, line
    assert not (tmp_path / "site").exists()
    assert web.missing_op("com.microsoft:X(-1) is not a registered function/op") == "com.microsoft:X"
    assert web.missing_op("Could not find an implementation for Foo(7) node with name 'n'") == "Foo"


def test_check_runs_the_package_in_chromium_and_in_ort_format(web_runtime, runner, package_dir):
    result = runner.invoke(app, ["check", str(package_dir), "--runtime", "web,ort-format", "--rows", "8"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert any("web" in r and "fp32" in r and "yes" in r and "100.0%" in r for r in rows), result.stdout
    assert any("ort-format" in r and "fp32" in r and "yes" in r for r in rows), result.stdout


def test_check_names_a_runtime_it_cannot_run_and_fails_under_ci(runner, package_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXPACK_CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("CI", "false")
    result = runner.invoke(app, ["check", str(package_dir), "--runtime", "web", "--rows", "4"])
    assert result.exit_code == 0 and "runtime web not run" in result.output and runtimes.CHROMIUM_HINT in result.output
    monkeypatch.setenv("CI", "true")
    result = runner.invoke(app, ["check", str(package_dir), "--runtime", "web", "--rows", "4"])
    assert result.exit_code == 1 and "CI=true" in result.output
    assert one_error_line(runner.invoke(app, ["check", str(package_dir), "--runtime", "wasm"])).startswith(
        "error: unknown runtime wasm")


def test_the_pages_policy_lets_scripts_and_webassembly_come_from_its_own_folder_only(folder):
    out, _ = folder
    head = (out / "index.html").read_text(encoding="utf-8").split("</head>")[0]
    policy = dict(d.strip().split(" ", 1) for d in head.split('http-equiv="Content-Security-Policy" content="')[1]
                  .split('"')[0].split(";"))
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["script-src"].split()[-2:] == ["'self'", "'wasm-unsafe-eval'"]
    assert "http" not in policy["script-src"] and '<script type="module" src="app.js"></script>' in head


def test_an_ort_format_package_is_for_phones_not_the_browser(runner, package_dir, tmp_path):
    mobile = tmp_path / "mobile"
    assert runner.invoke(app, ["export-mobile", str(package_dir), "--out", str(mobile)]).exit_code == 0
    line = one_error_line(runner.invoke(app, ["export-web", str(mobile), "--out", str(tmp_path / "site")]))
    assert "is an ORT-format package (model.ort): export-web reads ONNX graphs" in line
    result = runner.invoke(app, ["check", str(mobile), "--runtime", "web,ort-format", "--rows", "4"],
                           env={"CI": "true"})
    assert result.exit_code == 0, result.output  # does not apply is not missing, even under CI
    assert "runtime web does not apply" in result.output and "runtime ort-format does not apply" in result.output


def test_the_choice_is_the_fastest_variant_that_answers_as_python_does():
    trials = [web.Trial("fp32", ms_per_row=13.0, max_abs_diff=1e-6, agreement=1.0),
              web.Trial("optimized", ms_per_row=12.0, max_abs_diff=2e-6, agreement=1.0),
              web.Trial("int8-cascade", ms_per_row=7.7, max_abs_diff=5e-2, agreement=1.0),
              web.Trial("int8", error="Could not find an implementation for QOrdered(1) node")]
    best, why = web.choose(trials)
    assert best.variant == "optimized"
    assert "int8-cascade is faster there (7.7 ms) but answers otherwise: max |Δlogit| 5.0e-02" in why
    asked, why = web.choose(trials[2:3], asked=True)  # --variant carries it anyway, saying how far it is
    assert asked.variant == "int8-cascade" and "max |Δlogit| 5.0e-02" in why
    with pytest.raises(OnnxpackError, match=r"no variant runs in onnxruntime-web 1\.31 as in Python \(int8-cascade: max"):
        web.choose(trials[2:3])
    with pytest.raises(OnnxpackError, match="has no kernel for QOrdered, which every variant tried uses \\(int8\\)"):
        web.choose(trials[3:])


def test_opened_as_a_file_the_page_says_to_serve_it(browser, folder):
    """Browsers run no module script from file://: the page says what to do instead of failing silently."""
    from selenium.webdriver.common.by import By

    out, _ = folder
    browser.driver.get((out / "index.html").as_uri())
    status = browser.driver.find_element(By.ID, "status")
    assert "through a web server" in status.text and status.get_attribute("class") == "error"
