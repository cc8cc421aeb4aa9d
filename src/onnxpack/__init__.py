"""onnxpack: a PyTorch text classifier in, a verified, self-describing ONNX package out."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from onnxpack.core import errors
from onnxpack.core.errors import OnnxpackError, PackageError, ParityError
from onnxpack.core.package import Manifest, Package

if TYPE_CHECKING:
    import os
    from typing import Any

    from onnxpack.runtime.predictor import Predictor

__all__ = ["__version__", "errors", "load", "Manifest", "OnnxpackError", "Package", "PackageError", "ParityError"]


def load(package_dir: str | os.PathLike[str] | Package, provider: str | None = None, **kwargs: Any) -> Predictor:
    """A Predictor for a package directory: `onnxpack.load(path).predict(["text"])`."""
    from onnxpack.runtime.predictor import Predictor

    return Predictor(package_dir, provider=provider, **kwargs)
