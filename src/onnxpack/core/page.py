"""The page that tries a package's model in a browser (page.html): served by `onnxpack serve` at `/`,
where it posts to the server, and the index.html of `onnxpack export-web`'s static folder, where the
model runs in the page itself. One page, so both look and behave alike.
"""

from __future__ import annotations

import html
import importlib.resources
import re
from typing import Any

from .htmlsafe import script_json


def template() -> str:
    return importlib.resources.files("onnxpack.core").joinpath("page.html").read_text(encoding="utf-8")


def render(name: str, model: dict[str, Any], head: str = "") -> str:
    """The page for a package called `name`. `model` is what the page's script reads (labels, pairs,
    multi_label, thresholds, max_length, long_text, chunk, explain, browser), put in as a JSON data
    block; `head` is onnxpack's own markup for <head> (export-web's policy and module script)."""
    fills = {"name": html.escape(name), "model": script_json(model), "head": head}
    return re.sub(r"\{\{(name|model|head)\}\}", lambda m: fills[m[1]], template())  # one pass: no fill is read again
