"""The package format: the one contract between the torch side and the runtime side.

A package is a directory holding `model.onnx`, the tokenizer files and
`manifest.json`. Only this module knows those names. It uses the standard library
only, so every reader (runtime, serve, inspect) can load it without torch.
See docs/package-format.md for the field-by-field description.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import PackageError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
ORT_MODEL = "model.ort"  # the graph of an ORT-format package (export-mobile)
FP32 = "fp32"  # the variant name of MODEL, the exported graph every package has
TOKENIZER = "tokenizer.json"
REPORT = "report.html"  # the model card `bench` writes
TASK = "text-classification"
SINGLE_LABEL, MULTI_LABEL = "single_label_classification", "multi_label_classification"
DEFAULT_THRESHOLD = 0.5  # multi-label: a label is given when its sigmoid score reaches this


@dataclasses.dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy-style name: "int64", "float32"
    dims: list[str | int]  # a str is a named dynamic axis

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=d["name"], dtype=d["dtype"], dims=list(d["dims"]))


@dataclasses.dataclass
class Manifest:
    name: str
    labels: list[str]
    max_length: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    ir_version: int
    exporter: str
    model_type: str
    pad_token_id: int
    source: dict[str, Any]  # {"path", "kind", "sha256"} of the checkpoint it came from
    libraries: dict[str, str]
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # file name -> sha256
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    parity: dict[str, Any] | None = None
    # What the served variant answers on the validation set, for `onnxpack monitor` and serve's /metrics
    # (runtime/monitor.py): label counts, score and length histograms with their edges, unknown-token and
    # truncation rates. Stored by verify and optimize.
    reference: dict[str, Any] | None = None
    # {"num_heads", "hidden_size", "num_layers", "vocab_size"}: what graph optimizers need to know
    architecture: dict[str, int] = dataclasses.field(default_factory=dict)
    # Accepted variants by name ("fp32" is model.onnx): {"file", "mcc", "mcc_drop", "agreement", "items_per_s", ...}
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    pairs: bool = False  # the model reads (first, second) sentence pairs, not single texts
    # transformers' problem_type: "single_label_classification" (softmax, one label per text) or
    # "multi_label_classification" (a sigmoid per label; every label over its threshold is given).
    problem_type: str = SINGLE_LABEL
    thresholds: list[float] | None = None  # multi-label: per label, the sigmoid score a label needs
    task: str = TASK
    format_version: int = FORMAT_VERSION
    onnxpack_version: str = ""
    # None: the graphs are ONNX protobufs. A package `export-mobile` wrote holds one graph in ONNX Runtime's
    # ORT format (model.ort) and says so here: {"format": "ort", "ort_format_version", "source_variant",
    # "source_package", "operators_config", "converted_by", "optimization", "parity"} (docs/package-format.md).
    graph_format: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in d and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise PackageError(f"manifest.json lacks {', '.join(missing)}", hint="re-export the package")
        d = {k: v for k, v in d.items() if k in fields}
        d["inputs"] = [TensorSpec.from_dict(t) for t in d["inputs"]]
        d["outputs"] = [TensorSpec.from_dict(t) for t in d["outputs"]]
        return cls(**d)


def check_thresholds(thresholds: list[float], labels: list[str]) -> None:
    """One threshold per label, each within 0..1."""
    if len(thresholds) != len(labels):
        raise PackageError(f"{len(thresholds)} thresholds for {len(labels)} labels ({', '.join(labels)})",
                           hint="give one threshold per label, or one for all")
    bad = [t for t in thresholds if not (isinstance(t, (int, float)) and 0 <= t <= 1)]
    if bad:
        raise PackageError(f"thresholds must be between 0 and 1, got {bad[0]!r}", hint="pass e.g. --threshold 0.5")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Package:
    """A package directory whose manifest has been read and whose files match their hashes."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, root: str | os.PathLike[str], check_files: bool = True) -> Package:
        root = Path(root)
        if not root.is_dir():
            raise PackageError(f"{root} is not a directory", hint="pass the folder `onnxpack export` wrote")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise PackageError(f"{root} is not a package: it has no {MANIFEST}",
                               hint="pass the folder `onnxpack export` wrote")
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PackageError(f"{manifest_path} is not valid JSON ({e})", hint="re-export the package") from None
        if not isinstance(raw, dict):
            raise PackageError(f"{manifest_path} is not a JSON object", hint="re-export the package")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise PackageError(f"{root} has package format version {version!r}; this onnxpack reads {FORMAT_VERSION}",
                               hint="re-export it with this onnxpack version")
        package = cls(root, Manifest.from_dict(raw))
        if check_files:
            package.check_files()
        return package

    def check_files(self) -> None:
        """Every file the manifest lists exists and has the recorded sha256."""
        for name, digest in self.manifest.files.items():
            path = self.root / name
            if not path.is_file():
                raise PackageError(f"package {self.root} is missing {name}", hint="re-export the package")
            if sha256_file(path) != digest:
                raise PackageError(f"package file {name} was altered: its sha256 does not match manifest.json",
                                   hint="re-export the package")

    @property
    def model_path(self) -> Path:
        return self.root / MODEL

    @property
    def is_ort_format(self) -> bool:
        """Whether the package's graph is in ONNX Runtime's ORT format (export-mobile), not ONNX."""
        return (self.manifest.graph_format or {}).get("format") == "ort"

    def require_onnx(self, command: str) -> None:
        """Refuse, in one line, to run `command` (one that reads ONNX protobufs: inspect, graph, profile,
        optimize, bench, diff, export-serving, export-mobile) on an ORT-format package."""
        if self.is_ort_format:
            raise not_onnx(self.variant_path(), command, (self.manifest.graph_format or {}).get("source_package"))

    def variant_names(self) -> list[str]:
        """fp32 first, then the variants `optimize` accepted; an ORT-format package's one variant."""
        if self.is_ort_format:
            return list(self.manifest.variants)
        return [FP32] + [name for name in self.manifest.variants if name != FP32]

    def default_variant(self, providers: list[str] | None = None, batch_invariant: bool = False) -> str:
        """The fastest accepted variant as `optimize` measured it, among those gated on one of
        `providers` (None: any) and, with `batch_invariant`, among those whose logits for a text
        do not depend on the other texts in its batch; fp32 before any optimization. An ORT-format
        package has one graph, the variant it was converted from: that one, whatever is asked."""
        if self.is_ort_format:
            return (self.manifest.graph_format or {}).get("source_variant") or next(iter(self.manifest.variants))
        timed = {name: v["items_per_s"] for name, v in self.manifest.variants.items()
                 if v.get("items_per_s") and (providers is None or v.get("provider") in providers)
                 and (not batch_invariant or v.get("batch_invariant", name == FP32))}
        return max(timed, key=timed.get) if timed else FP32

    def variant_path(self, variant: str | None = None) -> Path:
        """The graph file of a variant (None: the default one): an .onnx, or an ORT-format package's .ort."""
        variant = variant or self.default_variant()
        if variant == FP32 and not self.is_ort_format:
            return self.model_path
        if variant not in self.manifest.variants:
            raise PackageError(f"package {self.root} has no variant {variant!r}; it has {', '.join(self.variant_names())}",
                               hint="run `onnxpack optimize` to add variants, or pick one it has")
        return self.root / self.manifest.variants[variant]["file"]

    @property
    def tokenizer_path(self) -> Path:
        return self.root / TOKENIZER

    @property
    def name(self) -> str:
        return self.manifest.name

    def update_manifest(self, **changes: Any) -> None:
        """Rewrite manifest.json atomically with some fields changed."""
        self.manifest = dataclasses.replace(self.manifest, **changes)
        write_manifest(self.root, self.manifest)


def not_onnx(path: Path, command: str, source: Any = None, package: bool = True) -> PackageError:
    """The one line for a command that reads ONNX graphs given an ORT-format package (`path`: its .ort)
    or, with `package=False`, a bare .ort file."""
    what = f"{path.parent} is an ORT-format package ({path.name})" if package else f"{path} is an ORT-format model"
    origin = source.get("path") if isinstance(source, dict) else None
    return PackageError(f"{what}: {command} reads ONNX graphs",
                        hint=f"{command} its source package" + (f" ({origin})" if origin else "")
                        + "; ONNX Runtime runs an .ort file (predict, batch, serve, check)")


def write_manifest(root: Path, manifest: Manifest) -> None:
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n"
    atomic_write_text(root / MANIFEST, text)


def variant_file(variant: str) -> str:
    return f"model.{variant}.onnx"


# ONNX's protobuf limit is 2 GiB; a graph whose weights pass this keeps them in `<file>.data` beside
# it (the name ONNX Runtime's own tools give), so XLM-R large and its kind export and optimize.
EXTERNAL_DATA_BYTES = 1_800_000_000


def data_file(model_file: str | Path) -> str:
    """The name of a graph file's external weights: `model.onnx` -> `model.onnx.data`."""
    return f"{Path(model_file).name}.data"


def graph_files(path: Path) -> list[Path]:
    """A graph file and, when it keeps its weights outside, their file: what moves and hashes with it."""
    return [path] + ([path.with_name(data_file(path))] if path.with_name(data_file(path)).is_file() else [])


def needs_external_data(weights_bytes: int) -> bool:
    return weights_bytes > EXTERNAL_DATA_BYTES


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every file in a package directory except the manifest itself."""
    return {p.name: sha256_file(p) for p in sorted(root.iterdir()) if p.is_file() and p.name != MANIFEST}
