"""The page at `/` (core/page.html) and the API docs pages, served by a real server on a package whose name,
labels and tokens carry script payloads: nothing runs, everything shows as text, and the page's
Content-Security-Policy allows only its own inline script and style.

Then the page for every kind of model, in headless Chromium against real servers on tiny untrained
packages (large random weights, so every word moves a score): two boxes for a pair model, the labels
over their thresholds for a multi-label one, the "why?" toggle's highlighted words, and the long-text
switch; each answer equal to the Predictor's."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    LARGE_WEIGHTS_ATOL,
    PAYLOAD_RAWTEXT,
    PAYLOAD_TEXT,
    assert_shown_as_text,
    tiny_family_folder,
)
from live import HTTP_ONLY, running
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from onnxpack.core import page
from onnxpack.core.config import ExportConfig
from onnxpack.core.htmlsafe import inline_hashes
from onnxpack.core.package import MANIFEST, Package
from onnxpack.runtime.predictor import Predictor
from onnxpack.serve import create_app


@pytest.fixture(scope="module")
def payload_base(payload_package) -> Iterator[str]:
    with running(create_app(payload_package, HTTP_ONLY)) as url:
        yield url


def _directives(header: str) -> dict[str, list[str]]:
    return {name: sources for name, *sources in (d.split() for d in header.split(";") if d.strip())}


def test_the_page_allows_its_own_script_and_nothing_else(payload_base, payload_package):
    r = httpx.get(f"{payload_base}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = _directives(r.headers["content-security-policy"])
    # Taken from page.html as it is now, so an edit to the page keeps its policy right.
    scripts, styles = inline_hashes(page.template())
    assert scripts and policy["script-src"] == scripts and policy["style-src"] == styles
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]
    assert policy["connect-src"] == ["'self'"] and policy["default-src"] == ["'self'"]
    for name in ("object-src", "base-uri", "form-action", "frame-ancestors"):
        assert policy[name] == ["'none'"], name
    assert r.headers["x-content-type-options"] == "nosniff"
    name = Package.open(payload_package).name
    assert html.escape(name) in r.text and name not in r.text  # the name goes in as text


def test_docs_pages_escape_the_title(payload_base):
    """FastAPI's /docs and /redoc put the app's title, which holds the package's name, in <title>."""
    for path in ("/docs", "/redoc"):
        r = httpx.get(f"{payload_base}{path}")
        assert r.status_code == 200
        title = re.search(r"<title>(.*?)</title>", r.text, re.DOTALL)[1]
        assert html.escape(PAYLOAD_RAWTEXT) in title and PAYLOAD_RAWTEXT not in r.text


def test_payloads_show_as_text_in_chromium(payload_base, payload_package, browser):
    """Classify a text made of payloads: the page still works under its policy, nothing runs, and the
    name, the text and every label show as text."""
    d = browser.driver
    d.get_log("browser")  # forget the previous page's messages
    d.get(f"{payload_base}/")
    d.find_element(By.ID, "texts").send_keys(PAYLOAD_TEXT)
    d.find_element(By.ID, "classify").click()
    result = WebDriverWait(d, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result"))[0]
    labels = Package.open(payload_package).manifest.labels
    assert result.get_attribute("data-label") in labels
    # Hover whatever shows a label or the name: where an attribute-breaking payload would hang its handler.
    for shown_element in [*result.find_elements(By.CSS_SELECTOR, "span, p"), d.find_element(By.TAG_NAME, "h1")]:
        ActionChains(d).move_to_element(shown_element).perform()
    assert "classified" in d.find_element(By.ID, "status").text
    # No console error either: a refusal under the page's Content-Security-Policy would log one.
    assert_shown_as_text(d, browser.console(), [PAYLOAD_TEXT, Package.open(payload_package).name, *labels])


# --- the page for every kind of model ------------------------------------------------------------------------

PAIR = ("the cat sat on the mat", "a dog barked at it")
LONG = " ".join(["the cat sat on the mat and the dog barked at it"] * 12)  # several windows of the tiny 64-token package
TEXTS = ["the cat sat on the mat", "a dog barked at it", "him saw she", "the book was written by john"]


@pytest.fixture(scope="module")
def pair_package(tiny_model_dir, tmp_path_factory) -> Path:
    from onnxpack.pytorch.export import export

    folder = tmp_path_factory.mktemp("page-pair")
    hf = tiny_family_folder("bert", tiny_model_dir, folder / "hf", ["no", "yes"], initializer_range=0.5)
    return export(hf, folder / "pkg", ExportConfig(pairs=True, atol=LARGE_WEIGHTS_ATOL)).root


@pytest.fixture(scope="module")
def multi_package(tiny_model_dir, tmp_path_factory) -> Path:
    from onnxpack.pytorch.export import export

    folder = tmp_path_factory.mktemp("page-multi")
    hf = tiny_family_folder("bert", tiny_model_dir, folder / "hf", ["a", "b", "c"],
                            problem_type="multi_label_classification", initializer_range=0.5)
    root = export(hf, folder / "pkg", ExportConfig(atol=LARGE_WEIGHTS_ATOL)).root
    # Not the export's 0.5 each, but one threshold per label between its two highest scores over TEXTS: the
    # texts then get different sets of labels whatever the random weights (the tiny tokenizer's vocabulary,
    # and so the scores, change from run to run), and the page must show the server's labels and marks.
    with Predictor(root) as predictor:
        scores = [sorted((p["scores"][label] for p in predictor.predict(TEXTS)), reverse=True)
                  for label in predictor.labels]
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))  # thresholds live in the manifest alone
    manifest["thresholds"] = [round((s[0] + s[1]) / 2, 3) for s in scores]
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def pair_server(pair_package) -> Iterator[tuple[str, Predictor]]:
    with running(create_app(pair_package, HTTP_ONLY)) as url, Predictor(pair_package) as predictor:
        yield url, predictor


@pytest.fixture(scope="module")
def multi_server(multi_package) -> Iterator[tuple[str, Predictor]]:
    with running(create_app(multi_package, HTTP_ONLY)) as url, Predictor(multi_package) as predictor:
        yield url, predictor


def _open(browser, url: str):
    d = browser.driver
    d.get_log("browser")  # forget the previous page's messages
    d.get(f"{url}/")
    return d


def _type(driver, box_id: str, text: str) -> None:
    """Fill a box at once (typing 600 characters key by key takes seconds)."""
    box = driver.find_element(By.ID, box_id)
    driver.execute_script("arguments[0].value = arguments[1]", box, text)


def _classify(driver, count: int = 1) -> list:
    driver.find_element(By.ID, "classify").click()
    WebDriverWait(driver, 30).until(lambda d: "classified" in d.find_element(By.ID, "status").text
                                    or "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert "classified" in driver.find_element(By.ID, "status").text, driver.find_element(By.ID, "status").text
    results = driver.find_elements(By.CSS_SELECTOR, ".result")
    assert len(results) == count
    return results


def _bars(result) -> dict[str, float]:
    return {bar.get_attribute("data-label"): float(bar.find_elements(By.CSS_SELECTOR, "span")[-1].text)
            for bar in result.find_elements(By.CSS_SELECTOR, ".bar")}


def _no_console_errors(browser) -> None:
    """A refusal under the page's Content-Security-Policy, or an uncaught error, logs one."""
    assert [m for m in browser.console() if m["level"] in ("SEVERE", "WARNING")] == []


def _model_block(app) -> dict:
    """The page's JSON data block, from an app that is never started (the page needs no model)."""
    async def get() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://page") as client:
            return (await client.get("/")).text

    page = asyncio.run(get())
    return json.loads(re.search(r'<script type="application/json" id="model">(.*?)</script>', page, re.DOTALL)[1])


def test_the_page_knows_the_model_and_what_the_server_allows(pair_package, multi_package, package_dir):
    """The data block the page reads instead of asking: the kind of model, and the long-text modes."""
    pair = _model_block(create_app(pair_package, HTTP_ONLY))
    assert pair["pairs"] is True and pair["multi_label"] is False and pair["thresholds"] is None
    assert pair["labels"] == ["no", "yes"] and pair["max_length"] == Package.open(pair_package).manifest.max_length
    assert pair["long_text"] == "truncate" and pair["chunk"] is True
    multi = _model_block(create_app(multi_package, dataclasses.replace(HTTP_ONLY, long_text="chunk")))
    thresholds = Package.open(multi_package).manifest.thresholds
    assert multi["multi_label"] is True and multi["pairs"] is False and multi["thresholds"] == thresholds
    assert multi["long_text"] == "chunk"
    assert _model_block(create_app(package_dir, dataclasses.replace(HTTP_ONLY, max_windows=1)))["chunk"] is False


def test_a_pair_model_gets_two_boxes(pair_server, browser):
    url, predictor = pair_server
    d = _open(browser, url)
    assert not d.find_element(By.ID, "texts").is_displayed()
    first, second = d.find_element(By.ID, "first"), d.find_element(By.ID, "second")
    assert first.is_displayed() and second.is_displayed()
    first.send_keys(PAIR[0])
    second.send_keys(PAIR[1])
    (result,) = _classify(d)
    (expected,) = predictor.predict([PAIR])
    assert result.get_attribute("data-label") == expected["label"]
    assert result.find_element(By.CSS_SELECTOR, ".label").text == expected["label"]
    assert [p.text for p in result.find_elements(By.CSS_SELECTOR, ".text")] == [f"first {PAIR[0]}", f"second {PAIR[1]}"]
    assert _bars(result) == pytest.approx(expected["scores"], abs=1e-3)
    assert "1 pair classified" in d.find_element(By.ID, "status").text
    _no_console_errors(browser)


def test_a_multi_label_model_shows_every_label_over_its_threshold(multi_server, multi_package, browser):
    url, predictor = multi_server
    thresholds = predictor.thresholds
    assert thresholds == Package.open(multi_package).manifest.thresholds
    expected = predictor.predict(TEXTS)
    assert len({tuple(e["labels"]) for e in expected}) > 1  # not every text gets the same labels
    d = _open(browser, url)
    d.find_element(By.ID, "texts").send_keys("\n".join(TEXTS))
    results = _classify(d, len(TEXTS))
    for result, want in zip(results, expected):
        assert [chip.text for chip in result.find_elements(By.CSS_SELECTOR, ".chip")] == want["labels"]
        assert [b.get_attribute("data-label") for b in result.find_elements(By.CSS_SELECTOR, ".bar.top")] == want["labels"]
        assert _bars(result) == pytest.approx(want["scores"], abs=1e-3)
        marks = result.find_elements(By.CSS_SELECTOR, ".bar .mark")
        assert [float(b.get_attribute("data-threshold")) for b in result.find_elements(By.CSS_SELECTOR, ".bar")] == thresholds
        assert [m.get_attribute("title") for m in marks] == [f"threshold {t}" for t in thresholds]
        # Each mark sits at its threshold along the bar's track.
        for mark, t in zip(marks, thresholds):
            track = mark.find_element(By.XPATH, "..")
            x = mark.rect["x"] + mark.rect["width"] / 2 - track.rect["x"]
            assert x == pytest.approx(t * track.rect["width"], abs=1.5)
    _no_console_errors(browser)


def test_why_shows_each_word_coloured_by_its_attribution(pair_server, browser):
    """The pair's words, both texts; and a second pair whose long second text is cut, its last words unread."""
    url, predictor = pair_server
    pairs = [PAIR, ("the cat sat", LONG)]
    d = _open(browser, url)
    d.find_element(By.ID, "why").click()
    _type(d, "first", "\n".join(a for a, _ in pairs))
    _type(d, "second", "\n".join(b for _, b in pairs))
    results = _classify(d, len(pairs))
    WebDriverWait(d, 30).until(lambda d: "Explained" in d.find_element(By.ID, "status").text)
    expected = predictor.explain(pairs)
    assert any(w["attribution"] is None for w in expected[1]["words"])  # truncated: some words never read
    for result, want in zip(results, expected):
        why = result.find_element(By.CSS_SELECTOR, ".why")
        assert why.is_displayed() and want["label"] in why.find_element(By.CSS_SELECTOR, ".why-head").text
        lines = why.find_elements(By.CSS_SELECTOR, ".words")
        assert [line.text for line in lines] == [f"first {want['text'][0]}", f"second {want['text'][1]}"]
        spans = why.find_elements(By.CSS_SELECTOR, ".word")
        assert [s.text for s in spans] == [w["word"] for w in want["words"]]
        largest = max(abs(w["attribution"] or 0) for w in want["words"])
        for span, word in zip(spans, want["words"]):
            colour = span.value_of_css_property("background-color")
            if word["attribution"] is None:
                assert "unread" in span.get_attribute("class").split()
                continue
            assert float(span.get_attribute("title")) == pytest.approx(word["attribution"], abs=1e-4)
            assert span.get_attribute("class").split() == ["word", "for" if word["attribution"] >= 0 else "against"]
            r, g, _, alpha = (float(x) for x in re.findall(r"[\d.]+", colour))
            assert (g > r) == (word["attribution"] >= 0)  # green for, red against
            assert alpha == pytest.approx(0.75 * abs(word["attribution"]) / largest, abs=0.01)
    d.find_element(By.ID, "why").click()  # off: the explanations hide, the answers stay
    assert not any(w.is_displayed() for w in d.find_elements(By.CSS_SELECTOR, ".why"))
    assert len(d.find_elements(By.CSS_SELECTOR, ".result")) == len(pairs)
    _no_console_errors(browser)


def test_the_long_text_switch_reads_a_long_text_whole(multi_server, browser):
    url, predictor = multi_server
    d = _open(browser, url)
    switch = d.find_element(By.ID, "long-text")
    assert switch.is_displayed() and not switch.is_selected()  # the server's default is truncate
    assert str(predictor.max_length) in d.find_element(By.ID, "long-switch").text
    _type(d, "texts", LONG)
    (cut,) = _classify(d)
    assert cut.find_elements(By.CSS_SELECTOR, ".windows") == [] and cut.find_element(By.CSS_SELECTOR, ".note")
    switch.click()
    (whole,) = _classify(d)
    (expected,) = predictor.predict([LONG], long_text="chunk")
    assert expected["windows"] > 1
    assert whole.find_element(By.CSS_SELECTOR, ".windows").text == f"read in {expected['windows']} windows"
    assert whole.find_elements(By.CSS_SELECTOR, ".note") == []
    assert [chip.text for chip in whole.find_elements(By.CSS_SELECTOR, ".chip")] == expected["labels"]
    assert _bars(whole) == pytest.approx(expected["scores"], abs=1e-3)
    _no_console_errors(browser)
