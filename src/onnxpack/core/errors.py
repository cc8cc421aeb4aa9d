"""User-facing errors: anything a user can fix raises OnnxpackError (or a subclass).

The CLI prints these as one line (`error: ...`) and exits 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class OnnxpackError(Exception):
    """A problem the user can fix: bad path, bad data, unknown choice, parity miss."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} (hint: {hint})" if hint else message)


class DataError(OnnxpackError):
    """Training or validation data is missing or malformed."""


class CheckpointError(OnnxpackError):
    """A path that should be a checkpoint or Hugging Face model folder is not one."""


class PackageError(OnnxpackError):
    """A directory is not a valid onnxpack package (missing or altered files)."""


class ParityError(OnnxpackError):
    """ONNX Runtime and PyTorch disagree beyond the allowed tolerance.

    `report` carries the full comparison (written before raising) when there is one.
    """

    def __init__(self, message: str, hint: str | None = None, report: object = None) -> None:
        super().__init__(message, hint)
        self.report = report
