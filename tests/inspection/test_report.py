"""report.py: the model card of a package whose every shown string carries script payloads, in Chromium.
(The card's content, from a real benchmark, is tested with bench in tests/runtime/test_bench.py.)"""

from __future__ import annotations

import html
import json
import re
import shutil

from conftest import (
    PAYLOAD_ATTR,
    PAYLOAD_IMG,
    PAYLOAD_RAWTEXT,
    PAYLOAD_SCRIPT,
    assert_shown_as_text,
)

from onnxpack.core.package import MANIFEST, Package
from onnxpack.inspection.report import write_report


def test_payloads_show_as_text_in_chromium(browser, payload_package, tmp_path):
    root = shutil.copytree(payload_package, tmp_path / "pkg")
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    # Fields the card shows that a real package holds as numbers or files: a hand-made manifest need not.
    manifest |= {"opset": PAYLOAD_IMG, "max_length": PAYLOAD_ATTR,
                 "variants": {PAYLOAD_SCRIPT: {"file": PAYLOAD_RAWTEXT, "mcc": 0.5, "items_per_s": 10.0, "bytes": 1e6}}}
    (root / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    bench = {"machine": {"os": PAYLOAD_RAWTEXT},
             "results": [{"engine": PAYLOAD_IMG, "variant": PAYLOAD_SCRIPT, "batch_size": 1, "seq_len": 8,
                          "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "items_per_s": 1000.0}],
             "speedups": {PAYLOAD_ATTR: 2.0}, "notes": [PAYLOAD_SCRIPT]}
    package = Package.open(root)
    card = write_report(package, bench)
    page = card.read_text(encoding="utf-8")
    assert "<script" not in page
    policy = html.unescape(re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page)[1])
    assert "default-src 'none'; script-src 'none'; style-src 'sha256-" in policy
    browser.open(card)
    m = package.manifest
    assert_shown_as_text(browser.driver, browser.console(),
                         [m.name, *m.labels, m.exporter, m.model_type, PAYLOAD_IMG, PAYLOAD_ATTR, PAYLOAD_SCRIPT,
                          PAYLOAD_RAWTEXT])
    # the document's style applied: the policy lets the card's own <style> in
    assert browser.driver.execute_script("return getComputedStyle(document.querySelector('th')).backgroundColor") \
        == "rgb(245, 245, 245)"
