"""view.py: the real Netron serves the package's model on 127.0.0.1."""

from __future__ import annotations

import socket
import urllib.request

import netron

from onnxpack.inspection.view import view


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_view_serves_the_model_on_loopback(package_dir):
    url = view(package_dir, port=_free_port(), browse=False)
    try:
        assert url.startswith("http://127.0.0.1:")
        page = urllib.request.urlopen(url, timeout=10).read().decode("utf-8", "replace")
        assert "netron" in page.lower()
        model = urllib.request.urlopen(f"{url}/data/model.onnx", timeout=10).read()
        assert model == (package_dir / "model.onnx").read_bytes()  # the file Netron shows is the package's
    finally:
        netron.stop()
