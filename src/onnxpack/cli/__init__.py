"""The `onnxpack` command: a thin layer over the stages, and the only code that prints.

    app.py    the app, the one-line error edge, the consoles, options read from core.config
    build.py  build: train, export, verify, demo (the torch side, onnxpack[train])
    ship.py   ship: optimize, bench, check, export-web, export-mobile, export-serving, thresholds
    run.py    run: predict, batch, serve, providers
    look.py   look: inspect, graph, profile, view

Stage modules are imported inside each command, so `onnxpack --help`, `providers` and `predict`
start fast and never import torch.
"""

# ruff: noqa: I001 -- importing a panel registers its commands: in pipeline order, which the help follows
from __future__ import annotations

from .app import app
from . import build, ship, run, look  # noqa: F401

__all__ = ["app", "main"]


def main() -> None:
    app()
