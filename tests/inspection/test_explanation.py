"""explanation.py: words coloured by attribution in the terminal, and a self-contained HTML page that
shows every word and label as text and can run no script."""

from __future__ import annotations

import pytest
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
    assert "Content-Security-Policy" in page and "script-src" not in page  # default-src 'none': no script


def test_page_in_chromium_runs_no_payload(browser, tmp_path):
    out = tmp_path / "why.html"
    answers = [_answer(f"look {PAYLOAD} here", label=PAYLOAD), _answer(("a pair", f"of {PAYLOAD}"))]
    out.write_text(html_page(answers, title=PAYLOAD), encoding="utf-8")
    browser.open(out)
    d = browser.driver
    assert d.execute_script("return window.__pwned") is None
    assert d.find_elements(By.CSS_SELECTOR, "img") == []
    body = d.find_element(By.TAG_NAME, "body").text
    assert PAYLOAD in body and body.count(PAYLOAD) >= 4  # title, label, both texts: shown as text
    coloured = d.find_elements(By.CSS_SELECTOR, ".text span.p5")
    assert coloured and coloured[0].get_attribute("title") == "+0.4000"
    assert coloured[0].value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"  # the CSP let the style in
    assert [m for m in browser.console() if m["level"] in ("SEVERE", "WARNING")] == []
