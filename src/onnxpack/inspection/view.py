"""Open a model in Netron (the optional `netron` extra), served on the loopback interface only."""

from __future__ import annotations

from pathlib import Path

from onnxpack.core.errors import OnnxpackError
from onnxpack.core.onnxfile import load_model

from .inspect import resolve

LOOPBACK = "127.0.0.1"  # never reachable from other machines


def view(path: str | Path, variant: str | None = None, port: int | None = None, browse: bool = True) -> str:
    """Start serving the model to Netron's web client on 127.0.0.1 (in a background thread);
    returns the URL. `wait()` then blocks until Ctrl-C."""
    source = resolve(path, variant, "view")
    load_model(source.path, load_weights=False)  # the same one-line error as `inspect` for a file that is not ONNX
    try:
        import netron
    except ImportError:
        raise OnnxpackError("Netron is not installed",
                            hint="pip install 'onnxpack[netron]', or draw an offline page with `onnxpack graph`") from None
    host, bound = netron.start(str(source.path), address=(LOOPBACK, port), browse=browse)
    return f"http://{host}:{bound}"


def wait() -> None:
    """Keep serving until Ctrl-C."""
    import netron

    netron.wait()
