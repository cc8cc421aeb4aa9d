"""The page at `/` (serve.html) and the API docs pages, served by a real server on a package whose name,
labels and tokens carry script payloads: nothing runs, everything shows as text, and the page's
Content-Security-Policy allows only its own inline script and style."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from importlib import resources

import httpx
import pytest
from conftest import PAYLOAD_RAWTEXT, PAYLOAD_TEXT, assert_shown_as_text
from live import HTTP_ONLY, running
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from onnxpack.core.htmlsafe import inline_hashes
from onnxpack.core.package import Package
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
    # Taken from serve.html as it is now, so an edit to the page keeps its policy right.
    scripts, styles = inline_hashes(resources.files("onnxpack.serve").joinpath("serve.html").read_text("utf-8"))
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
