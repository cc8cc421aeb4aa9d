"""Shared fixtures: a tiny randomly initialised BERT, a small slice of real CoLA, and one
trained + exported package that every test reuses (built once per test session)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from onnxpack.core.data import BUNDLED_COLA, read_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure: CI must not go green on tests it did not run."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which runs every test: {reason}"


def pytest_configure(config) -> None:
    # pytest-timeout (the test extra) defines the timeout marker; keep --strict-markers happy without it.
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): per-test time limit (needs pytest-timeout)")


def announce(config, message: str) -> None:
    """Tell the person running pytest, now, past output capturing: for a setup step that takes minutes."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write("\n")  # a test's setup runs mid-line: after its name, or after the progress dots
            reporter.write_line(message)
        else:
            print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if missing): a second pytest run waits here for the
    first, calling `on_wait` first if it has to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def provision(config, lock: Path, ready: Callable[[], bool], build: Callable[[], None], message: str) -> None:
    """Set up, once for every later run, something outside the venv that some tests need (a second venv,
    an npm package): nothing when `ready()`; else, under `lock` so that parallel runs neither race nor
    build it twice, `build()` with `message` shown. `build` must leave `ready()` false until it is
    complete, so a run killed halfway is redone by the next one."""
    if ready():
        return
    with file_lock(lock, on_wait=lambda: announce(config, f"waiting for another test run: {message}")):
        if ready():  # another run built it while this one waited for the lock
            return
        announce(config, message)
        build()


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def one_error_line(result: Result) -> str:
    """The whole of stderr for a user error: one line, `error: ...`, and nothing on stdout."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


def read_rows(path: Path, limit: int) -> list[tuple[str, int]]:
    table = read_table(path)
    return [(text, int(label)) for text, (label,) in zip(table.texts, table.raw_labels)][:limit]


@pytest.fixture(scope="session")
def small_cola(tmp_path_factory) -> Path:
    """A few hundred real CoLA rows in the shipped layout (train + the two dev files)."""
    out = tmp_path_factory.mktemp("cola")
    write_tsv(out / "train.tsv", read_rows(BUNDLED_COLA / "train.tsv.gz", 256))
    write_tsv(out / "in_domain_dev.tsv", read_rows(BUNDLED_COLA / "in_domain_dev.tsv.gz", 40))
    write_tsv(out / "out_of_domain_dev.tsv", read_rows(BUNDLED_COLA / "out_of_domain_dev.tsv.gz", 24))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, small_cola) -> Path:
    """A 2-layer, hidden-32 BERT with a WordPiece vocabulary learnt from the CoLA slice."""
    from tokenizers import (
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
    )

    out = tmp_path_factory.mktemp("tiny-bert")
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = [t for t, _ in read_rows(small_cola / "train.tsv", 256)]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=64)
    fast.save_pretrained(out)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        id2label={0: "unacceptable", 1: "acceptable"}, label2id={"unacceptable": 0, "acceptable": 1})
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    return out


def tiny_config(model_type: str, vocab_size: int, pad_token_id: int, labels: list[str], **extra):
    """A 2-layer, hidden-32 config of a model family (random weights, no download)."""
    from transformers import AutoConfig

    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    by_family = {
        "bert": size, "electra": size | {"embedding_size": 16}, "albert": size | {"embedding_size": 16},
        "deberta-v2": size | {"type_vocab_size": 2},
        "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64),
        # These count positions from pad_token_id + 1: 2 more embeddings than tokens.
        "roberta": size | {"type_vocab_size": 1, "max_position_embeddings": 66},
        "xlm-roberta": size | {"type_vocab_size": 1, "max_position_embeddings": 66},
        "mpnet": size | {"max_position_embeddings": 66},
    }
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, pad_token_id=pad_token_id,
                                **({"max_position_embeddings": 64} | by_family[model_type]),
                                num_labels=len(labels), id2label=dict(enumerate(labels)),
                                label2id={name: i for i, name in enumerate(labels)}, **extra)


# initializer_range=0.5 gives the tiny models large weights, so a wrong row or sign shows in their
# answers; their logits then run to tens, and float32's differences between PyTorch and ONNX Runtime
# reach 1e-4 on some vocabularies (the tiny tokenizer's changes from run to run). Tests of what comes
# after export check its self-check against this, not the default 1e-4.
LARGE_WEIGHTS_ATOL = 1e-3


def tiny_family_folder(model_type: str, tokenizer_dir: Path, out: Path, labels: list[str], **extra) -> Path:
    """A Hugging Face folder of a tiny random classifier of `model_type`, with the tiny WordPiece tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_config(model_type, len(tokenizer), tokenizer.pad_token_id, labels, **extra)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir, small_cola) -> Path:
    """A short real Lightning run of the tiny model on the CoLA slice."""
    from onnxpack.core.config import TrainConfig
    from onnxpack.pytorch.train import fit

    out = tmp_path_factory.mktemp("run") / "run"
    fit(TrainConfig(data=str(small_cola), model=str(tiny_model_dir), epochs=2, batch_size=32, lr=1e-3,
                    max_length=64), out)
    return out


@pytest.fixture(scope="session")
def package_dir(tmp_path_factory, trained_run) -> Path:
    from onnxpack.pytorch.export import export

    out = tmp_path_factory.mktemp("pkg") / "tiny-cola"
    export(trained_run / "best.ckpt", out)
    return out


@pytest.fixture()
def package_copy(tmp_path, package_dir) -> Path:
    """A private copy for tests that change or damage the package."""
    return Path(shutil.copytree(package_dir, tmp_path / package_dir.name))


class Browser:
    """Headless Chromium (through Selenium and chromedriver) showing files served on 127.0.0.1,
    with every network request and console message it made recorded."""

    def __init__(self, driver) -> None:
        self.driver = driver
        self._server = None

    def open(self, path: Path) -> str:
        """Serve `path`'s folder from a loopback port, load the page, and return its URL."""
        from onnxpack.deploy.web import static_server

        self.close_server()
        self._server = contextlib.ExitStack()
        base = self._server.enter_context(static_server(path.parent))
        url = f"{base}{path.name}"
        self.driver.get_log("performance")  # forget the previous page's events
        self.driver.get_log("browser")
        self.driver.get(url)
        return url

    def requests(self) -> list[str]:
        """URLs requested since the page was opened."""
        import json

        events = (json.loads(e["message"])["message"] for e in self.driver.get_log("performance"))
        return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]

    def console(self) -> list[dict]:
        """Console messages (and uncaught errors) since the page was opened."""
        return self.driver.get_log("browser")

    def close_server(self) -> None:
        if self._server:
            self._server.close()
            self._server = None


@pytest.fixture()
def graphviz() -> None:
    """Graphviz's `dot` lays out `graph` and `profile` pages; skipped, saying so, where it is missing."""
    if shutil.which("dot") is None:
        pytest.skip("needs Graphviz's dot: apt-get install graphviz (.ci/run does)")


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session; skipped, with the reason shown, where it is not installed."""
    binary, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not chromedriver:
        pytest.skip("needs Chromium and chromedriver: apt-get install chromium chromium-driver (.ci/run does)")
    from onnxpack.deploy.web import headless_chromium

    # No host name resolves except loopback, so a page that tried to reach out could not.
    driver = headless_chromium(binary, "--window-size=1400,900",
                               capabilities={"goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"}})
    session = Browser(driver)
    yield session
    session.close_server()
    driver.quit()


def v2_client():
    """scripts/v2_client.py, the one client script the README gives for onnxpack serve and Triton."""
    import importlib.util

    path = Path(__file__).parent.parent / "scripts" / "v2_client.py"
    spec = importlib.util.spec_from_file_location("v2_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hostile_package(package_dir: Path, folder: Path, case: str) -> Path:
    """A copy of a real package whose model.onnx is the hostile one, its manifest's hashes made to
    match: self-consistent, as an attacker would ship it."""
    import json

    import hostile

    from onnxpack.core.package import MANIFEST, hash_files

    made = folder / "made"
    made.mkdir(parents=True)
    getattr(hostile, case)(made)
    package = Path(shutil.copytree(package_dir, folder / "pkg"))
    (package / "model.onnx").unlink()
    for path in made.iterdir():
        os.rename(path, package / path.name)
    if case != "swapped_graph":
        manifest = json.loads((package / MANIFEST).read_text())
        manifest["files"] = hash_files(package)
        (package / MANIFEST).write_text(json.dumps(manifest))
    return package


# Strings that run script if a page puts them in as markup instead of text: an element with a handler,
# the end of a <script> (or <title>, <textarea>, <style>) element, and the end of a quoted attribute.
# Each sets window.__pwned, so a page test asserts that it stays undefined.
PAYLOAD_IMG = '<img src=x onerror="window.__pwned=1">'
PAYLOAD_SCRIPT = "</script><script>window.__pwned=1</script>"
PAYLOAD_ATTR = '" onmouseover="window.__pwned=1" data-x="'
PAYLOAD_RAWTEXT = "</title></textarea></style><svg onload=window.__pwned=1>"
PAYLOADS = (PAYLOAD_IMG, PAYLOAD_SCRIPT, PAYLOAD_ATTR, PAYLOAD_RAWTEXT)
# A text to classify on a page: every payload, between words the tiny tokenizer knows.
PAYLOAD_TEXT = "the book " + " and ".join(PAYLOADS) + " was written by john"


def script_payload_package(package_dir: Path, folder: Path) -> Path:
    """A copy of a real package whose shown strings carry PAYLOADS: the name, the label names, the
    exporter, model type, libraries, source, parity and history of the manifest, and one tokenizer
    token (PAYLOAD_IMG is a whole token, so a page that shows tokens shows it). It opens and serves
    as the original does: the manifest's hashes match its files."""
    import json

    from onnxpack.core.package import MANIFEST, TOKENIZER, hash_files

    package = Path(shutil.copytree(package_dir, folder / "payload-pkg"))
    tokenizer = json.loads((package / TOKENIZER).read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    rarest, token_id = max(vocab.items(), key=lambda kv: kv[1])  # the WordPiece vocabulary's last-learnt piece
    vocab[PAYLOAD_IMG] = vocab.pop(rarest)
    tokenizer["added_tokens"].append({"id": token_id, "content": PAYLOAD_IMG, "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": False})
    (package / TOKENIZER).write_text(json.dumps(tokenizer), encoding="utf-8")
    manifest = json.loads((package / MANIFEST).read_text(encoding="utf-8"))
    manifest["name"] = f"{PAYLOAD_RAWTEXT} {PAYLOAD_ATTR}"
    manifest["labels"] = [f"{PAYLOAD_IMG} {label}" if i % 2 == 0 else f"{label} {PAYLOAD_SCRIPT} {PAYLOAD_ATTR}"
                          for i, label in enumerate(manifest["labels"])]
    manifest["exporter"] = f"{manifest['exporter']} {PAYLOAD_SCRIPT}"
    manifest["model_type"] = f"{manifest['model_type']} {PAYLOAD_IMG}"
    manifest["libraries"] |= {PAYLOAD_IMG: PAYLOAD_SCRIPT}
    manifest["source"] |= {"path": f"/models/{PAYLOAD_ATTR}/best.ckpt"}
    manifest["parity"] = (manifest.get("parity") or {}) | {"check": PAYLOAD_RAWTEXT}
    manifest["history"].append({"step": PAYLOAD_IMG, "note": PAYLOAD_SCRIPT})
    manifest["files"] = hash_files(package)
    (package / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return package


@pytest.fixture(scope="session")
def payload_package(tmp_path_factory, package_dir) -> Path:
    """script_payload_package, made once per test run: for the tests of every HTML page onnxpack writes or serves."""
    return script_payload_package(package_dir, tmp_path_factory.mktemp("payload"))


def assert_shown_as_text(driver, console: list[dict], texts: list[str]) -> None:
    """The page in `driver` ran no payload (window.__pwned unset, no element with a handler attribute),
    shows each of `texts` as text, and logged no error or warning (`console`: its messages; a
    Content-Security-Policy refusal is one)."""
    from selenium.webdriver.common.by import By

    assert driver.execute_script("return typeof window.__pwned") == "undefined"
    assert driver.find_elements(By.CSS_SELECTOR, "[onerror], [onload], [onmouseover]") == []
    shown = driver.execute_script("return document.title + '\\n' + document.body.innerText")
    assert [t for t in texts if t not in shown] == []
    assert [m for m in console if m["level"] in ("SEVERE", "WARNING")] == []
