"""explanation.py: words coloured by attribution in the terminal, and a self-contained HTML page that
shows every word and label as text and can run no script."""

from __future__ import annotations

import json

from conftest import PAYLOAD_TEXT, PAYLOADS, assert_shown_as_text
from selenium.webdriver.common.by import By

from onnxpack.inspection.explanation import html_page, shade, terminal

PAYLOAD = '<img src=x onerror="window.__pwned=1"></script><script>window.__pwned=1</script>'


def _answer(text, label: str = "acceptable") -> dict:
    parts = list(text) if isinstance(text, tuple) else [text]
    words, attributions = [], [0.4, -0.2, None, 0.05, -0.01, 0.1, 0.0, 0.3]
    for part, piece in enumerate(parts):
        at = 0
        for token in piece.split():
            start = piece.index(token, at)
            at = start + len(token)
            words.append({"part": part, "word": token, "start": start, "end": at,
                          "attribution": attributions[len(words) % len(attributions)]})
    return {"text": text, "label": label, "predicted": label, "score": 0.9, "windows": 1, "words": words}


def test_shades_follow_the_largest_attribution():
    assert [shade(a, 0.4) for a in (0.4, -0.4, 0.2, 0.01, 0.0, None)] == [5, -5, 2, 0, 0, 0]
    assert shade(0.3, 0.0) == 0


def test_terminal_keeps_the_text_and_names_the_strongest_words():
    lines = terminal([_answer("The boy sat on a bench.")])
    assert lines[0].plain == "acceptable 0.900"
    assert lines[1].plain == "  The boy sat on a bench."
    assert lines[2].plain == "  strongest: The +0.400, boy -0.200, bench. +0.100, on +0.050, a -0.010"  # sat: not read
    pair = terminal([_answer(("first text", "second one"))])
    assert [line.plain for line in pair[1:3]] == ["  A: first text", "  B: second one"]


def test_page_escapes_every_word_and_label():
    page = html_page([_answer(f"look {PAYLOAD} here", label=PAYLOAD)], title=PAYLOAD)
    assert "<script>window" not in page and "<img" not in page
    assert "Content-Security-Policy" in page and "script-src 'none'" in page


def test_page_in_chromium_runs_no_payload(browser, payload_package, tmp_path):
    """`onnxpack explain --html` on a package whose name and labels carry script, explaining a text that does."""
    from typer.testing import CliRunner

    from onnxpack.cli import app

    out = tmp_path / "why.html"
    result = CliRunner().invoke(app, ["explain", str(payload_package), PAYLOAD_TEXT, "--html", str(out)])
    assert result.exit_code == 0, result.output
    browser.open(out)
    labels = json.loads((payload_package / "manifest.json").read_text())["labels"]
    assert_shown_as_text(browser.driver, browser.console(), [PAYLOAD_TEXT, *PAYLOADS])
    assert any(label in browser.driver.find_element(By.CSS_SELECTOR, ".head").text for label in labels)
    words = browser.driver.find_elements(By.CSS_SELECTOR, ".text span[title]")
    assert len(words) == len(PAYLOAD_TEXT.split())  # every word read and shown with its attribution


def test_colours_pass_the_pages_policy(browser, tmp_path):
    out = tmp_path / "why.html"
    out.write_text(html_page([_answer("The boy sat on a bench.")], title="why"), encoding="utf-8")
    browser.open(out)
    (strongest,) = browser.driver.find_elements(By.CSS_SELECTOR, ".text span.p5")
    assert strongest.text == "The" and strongest.get_attribute("title") == "+0.4000"
    assert strongest.value_of_css_property("background-color") == "rgba(47, 158, 90, 1)"  # #2f9e5a: the style ran
    assert [m for m in browser.console() if m["level"] in ("SEVERE", "WARNING")] == []
