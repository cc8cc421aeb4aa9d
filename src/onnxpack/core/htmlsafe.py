"""What every HTML page onnxpack writes or serves shares: data embedded in a <script> element that
no string inside it can end, and a Content-Security-Policy that lets run only the page's own
inline scripts and styles, named by their sha256.

The hashes are taken from a page's template, before any label, name or text is put in, so a
string that somehow became markup would still not be allowed to run. Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import json
import re
from typing import Any

# An inline <script> or <style> element of a template: (tag, attributes, body). Templates are onnxpack's
# own files, so a regex is enough; what it must not miss is checked in Chromium by the page tests.
_INLINE = re.compile(r"<(script|style)\b([^>]*)>(.*?)</\1\s*>", re.DOTALL | re.IGNORECASE)
_TYPE = re.compile(r"""\btype\s*=\s*["']?([^"'\s>]*)""", re.IGNORECASE)
_RUN = {"", "text/javascript", "application/javascript", "module"}  # type= values a browser runs as script


def script_json(value: Any) -> str:
    """`value` as JSON fit to sit inside a <script> element (a data block, or a JS literal): `<`, `>`
    and `&` written as \\u escapes, so no string in it can close the element or open a comment."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def sha256_source(text: str) -> str:
    """A CSP hash source: 'sha256-<base64>' of the exact text between the tags."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


class _StyleAttributes(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.values += [value or "" for name, value in attrs if name == "style"]


def inline_hashes(template: str) -> tuple[list[str], list[str]]:
    """(script sources, style sources) for a template's inline scripts and styles. Data blocks
    (`type="application/json"`) are not run, so they need no hash; `style="..."` attributes are
    allowed by their hashes under 'unsafe-hashes' (which allows no event-handler attribute)."""
    scripts, styles = [], []
    for tag, attributes, body in _INLINE.findall(template):
        if tag.lower() == "style":
            styles.append(sha256_source(body))
        elif "src=" not in attributes.lower() and (m[1].lower() if (m := _TYPE.search(attributes)) else "") in _RUN:
            scripts.append(sha256_source(body))
    parser = _StyleAttributes()
    parser.feed(template)
    if parser.values:
        styles += ["'unsafe-hashes'", *dict.fromkeys(sha256_source(v) for v in parser.values)]
    return list(dict.fromkeys(scripts)), list(dict.fromkeys(styles))


def content_security_policy(template: str, served: bool = False, connect_self: bool = False,
                            script_self: bool = False) -> str:
    """A strict policy for a page made from `template`: its own inline scripts and styles by hash,
    images only as data: URIs, no plugins, no <base>, no forms posting elsewhere. `served` (an HTTP
    header rather than a <meta>): other same-origin resources too, and no framing by other sites
    (`frame-ancestors` is ignored, with a console error, in a <meta>). `connect_self`: fetch() to
    the page's own server. `script_self` (export-web's folder, whose page runs the model): scripts,
    workers and WebAssembly from the page's own origin too, and fetch() to it."""
    scripts, styles = inline_hashes(template)
    directives = {
        "default-src": ["'self'"] if served else ["'none'"],
        "script-src": (scripts + ["'self'", "'wasm-unsafe-eval'"]) if script_self else (scripts or ["'none'"]),
        "style-src": styles or ["'none'"],
        "img-src": ["'self'", "data:"] if served else ["data:"],
        "connect-src": ["'self'"] if connect_self or script_self else ["'none'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
    }
    if served:
        directives["frame-ancestors"] = ["'none'"]
    if script_self:
        directives["worker-src"] = ["'self'"]
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())
