"""htmlsafe.py: JSON that cannot end its <script> element, and policies made of a template's own hashes."""

from __future__ import annotations

import base64
import hashlib
import json

from conftest import PAYLOADS

from onnxpack.core.htmlsafe import content_security_policy, inline_hashes, script_json


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_script_json_round_trips_and_holds_no_markup():
    value = {"names": list(PAYLOADS), "<!--": "-->", "amp": "&lt;"}
    text = script_json(value)
    assert json.loads(text) == value
    assert not {"<", ">", "&"} & set(text)


def test_hashes_are_the_templates_own_scripts_and_styles():
    template = ('<style>b { color: red }</style><script type="application/json">{"a": 1}</script>'
                '<script>run()</script><script src="x.js"></script><script type="module">go()</script>'
                '<p style="width: 1em">x</p>')
    scripts, styles = inline_hashes(template)
    assert scripts == [_hash("run()"), _hash("go()")]  # the data block and the external file need none
    assert styles == [_hash("b { color: red }"), "'unsafe-hashes'", _hash("width: 1em")]


def test_policies():
    page = "<style>b{}</style><script>run()</script>"
    served = content_security_policy(page, served=True, connect_self=True)
    assert f"script-src {_hash('run()')};" in served and f"style-src {_hash('b{}')};" in served
    assert "unsafe-inline" not in served and "connect-src 'self'" in served and "frame-ancestors 'none'" in served
    for directive in ("object-src 'none'", "base-uri 'none'", "form-action 'none'"):
        assert directive in served
    written = content_security_policy("<style>b{}</style>")
    assert written.startswith("default-src 'none'; script-src 'none';")
    assert "frame-ancestors" not in written  # ignored in a <meta>, with a console error
