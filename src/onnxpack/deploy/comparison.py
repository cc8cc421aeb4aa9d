"""What `check` reports of one variant in one runtime, against Python's ONNX Runtime on the same rows;
each runtime module (node_runtime, web, mobile) gives one."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Comparison:
    runtime: str  # "onnxruntime-node 1.30.0"
    rows: int
    max_abs_diff: float
    agreement: float  # share of rows with the same label (a multi-label model: the same set)
    ms_per_row: float | None = None  # the runtime's own time for the rows, divided by them
    error: str | None = None  # why the runtime did not load or run the graph (then the figures mean nothing)
