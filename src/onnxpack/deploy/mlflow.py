"""A package as an MLflow model (onnxpack[mlflow]): `log_package` logs it, with a pyfunc flavor that
answers as `onnxpack predict` does, into an MLflow tracking store, and registers it if asked.

The model is a pyfunc "model from code" (MLflow's recommended form: no pickle): a three-line script
that hands MLflow an `OnnxpackModel`, and the package's files as its artifacts. Loading it opens the
package as every onnxpack reader does, so the manifest's file hashes are checked and the graph is
vetted (core/untrusted.py) before a session loads it; a file changed in the store is refused on load.

    predict(DataFrame[text(, text_pair)]) -> DataFrame[label, score, scores(, labels)]

Only the `onnxpack mlflow` command and `train --logger mlflow` import this module: mlflow stays out
of every other code path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

import onnxpack
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import MANIFEST, MULTI_LABEL, Package

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the model's name in its run: runs:/<run>/model
ARTIFACT = "package"  # the package's files, under the model's artifacts/
DEFAULT_EXPERIMENT = "onnxpack"
# Written into the model as its code: what MLflow runs to load it (models from code, not a pickle).
MODEL_CODE = """\
# An onnxpack package as an MLflow pyfunc model: the package's files are this model's artifacts.
import mlflow
from onnxpack.deploy.mlflow import OnnxpackModel

mlflow.models.set_model(OnnxpackModel())
"""
# The example row a logged model carries (and MLflow checks the model answers before it is logged).
EXAMPLE_TEXT, EXAMPLE_PAIR = "The boy is sitting on a bench.", "A boy sits on a bench."
# An HTTP tracking server is first asked for an experiment list with these MLflow settings (a user's own
# MLFLOW_HTTP_REQUEST_* win): one that refuses is one line at once, one that never answers within about
# 13 s (two tries of 5 s; measured), not after MLflow's default 7 retries with backoff (minutes).
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# The logging itself, once the server answered: a few retries, a timeout that fits a large upload.
LOG_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}

HINT = "check --tracking-uri: a running `mlflow server`, or a writable file:// folder"


@dataclasses.dataclass
class LoggedPackage:
    run_id: str
    experiment_id: str
    tracking_uri: str
    model_uri: str  # runs:/<run>/model
    files_uri: str  # where the model's files are: a file:// URI loads without the tracking store
    metrics: dict[str, float]
    registered_uri: str | None = None  # models:/<name>/<version>
    version: str | None = None


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a local file store in ./mlruns. MLflow's own default since 3.x is a
    SQLite file (sqlite:///mlflow.db), which needs SQLAlchemy: more than mlflow-skinny brings."""
    return os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").absolute().as_uri()


class OnnxpackModel(PythonModel):
    """The pyfunc model: a Predictor on the package in the model's artifacts."""

    def load_context(self, context: Any) -> None:
        from onnxpack.runtime.predictor import Predictor

        self.predictor = Predictor(context.artifacts[ARTIFACT])  # checks every file's hash, vets the graph

    # pd.DataFrame: a type hint MLflow takes as is (the signature, not the hints, describes the columns)
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        predictor = self.predictor
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        texts = frame_texts(frame, predictor.pairs)
        columns = output_columns(predictor.multi_label)
        results = predictor.predict(texts) if texts else []
        return pd.DataFrame([{c: r[c] for c in columns} for r in results], columns=columns)


def frame_texts(frame: pd.DataFrame, pairs: bool) -> list:
    """The texts of a DataFrame: its `text` column, with `text_pair` for a pair model."""
    need = ["text", "text_pair"] if pairs else ["text"]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise OnnxpackError(f"the input has no {' or '.join(repr(c) for c in missing)} column; it has "
                            f"{', '.join(map(repr, map(str, frame.columns))) or 'none'}",
                            hint=f"pass a DataFrame with columns {', '.join(need)}")
    texts = frame["text"].tolist()
    return list(zip(texts, frame["text_pair"].tolist())) if pairs else texts


def output_columns(multi_label: bool) -> list[str]:
    return ["label", "score", "scores"] + (["labels"] if multi_label else [])


def signature(package: Package) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Map, Schema

    inputs = [ColSpec(DataType.string, "text")] + ([ColSpec(DataType.string, "text_pair")]
                                                  if package.manifest.pairs else [])
    outputs = [ColSpec(DataType.string, "label"), ColSpec(DataType.double, "score"),
               ColSpec(Map(DataType.double), "scores")]
    if package.manifest.problem_type == MULTI_LABEL:
        outputs.append(ColSpec(Array(DataType.string), "labels"))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def input_example(package: Package) -> pd.DataFrame:
    return pd.DataFrame({"text": [EXAMPLE_TEXT], **({"text_pair": [EXAMPLE_PAIR]} if package.manifest.pairs else {})})


def run_metrics(package: Package) -> dict[str, float]:
    """The manifest's gate and parity figures as metrics: every number of each variant
    (`int8-cascade.agreement`) and of the last parity check (`parity.max_abs_diff`)."""
    m = package.manifest
    sections = {f"{name}.": figures for name, figures in m.variants.items()} | {"parity.": m.parity or {}}
    return {prefix + key: float(value) for prefix, figures in sections.items() for key, value in figures.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def run_params(package: Package) -> dict[str, str]:
    m = package.manifest
    labels = ",".join(m.labels)
    return {"package": m.name, "labels": labels if len(labels) <= 500 else labels[:497] + "...",
            "max_length": str(m.max_length), "pairs": str(m.pairs), "problem_type": m.problem_type,
            "opset": str(m.opset), "exporter": m.exporter, "model_type": m.model_type,
            "default_variant": package.default_variant(), "onnxpack_version": m.onnxpack_version or "unknown"}


def default_requirement() -> str:
    return f"onnxpack[mlflow]=={onnxpack.__version__}"


def log_package(package_dir: str | os.PathLike[str], tracking_uri: str | None = None, register: str | None = None,
                experiment: str = DEFAULT_EXPERIMENT, requirement: str | None = None) -> LoggedPackage:
    """Log a package as an MLflow model in a new run of `experiment` (created if missing), its gate and
    parity figures as run metrics; with `register`, also a new version of that registered model.

    `tracking_uri`: None is default_tracking_uri(). `requirement`: what the model's environment installs
    for onnxpack (default: this version, with its mlflow extra)."""
    package = Package.open(package_dir)  # not a package, or an altered one: one line, before any MLflow call
    uri = tracking_uri or default_tracking_uri()
    metrics = run_metrics(package)
    check_store(uri)
    with _one_line(uri), store_env(uri):
        client = mlflow.MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found and found.lifecycle_stage == "active"
                         else client.create_experiment(experiment))
        with tempfile.TemporaryDirectory(prefix="onnxpack-mlflow-") as tmp:
            staged = _stage(package, Path(tmp) / ARTIFACT)
            code = Path(tmp) / "onnxpack_model.py"
            code.write_text(MODEL_CODE, encoding="utf-8")
            with mlflow.start_run(experiment_id=experiment_id, run_name=package.name) as run:
                mlflow.set_tags({"onnxpack.package": package.name, "onnxpack.version": onnxpack.__version__})
                mlflow.log_params(run_params(package))
                if metrics:
                    mlflow.log_metrics(metrics)
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME, python_model=str(code), artifacts={ARTIFACT: str(staged)},
                    signature=signature(package), input_example=input_example(package),
                    pip_requirements=[requirement or default_requirement()])
        result = LoggedPackage(run_id=run.info.run_id, experiment_id=experiment_id, tracking_uri=uri,
                               model_uri=f"runs:/{run.info.run_id}/{MODEL_NAME}",
                               files_uri=mlflow.get_logged_model(info.model_id).artifact_location,
                               metrics=metrics)
        if register:
            version = mlflow.register_model(info.model_uri, register)  # models:/m-<id>: the model just logged
            result.version = str(version.version)
            result.registered_uri = f"models:/{register}/{version.version}"
    log.debug("logged %s to %s as %s", package.root, uri, result.registered_uri or result.model_uri)
    return result


def is_file_store(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


def store_settings(uri: str) -> dict[str, str]:
    """MLflow's settings for writing to a store: no progress bars or links on stdout; for a file store,
    MLflow's opt-in (3.x keeps the file store in maintenance mode and refuses it without
    MLFLOW_ALLOW_FILE_STORE)."""
    return {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
            **({"MLFLOW_ALLOW_FILE_STORE": "true"} if is_file_store(uri) else {})}


def _stage(package: Package, out: Path) -> Path:
    """The files the manifest vouches for, and the manifest: the model's artifacts. Hard links where the
    file system allows (MLflow copies them into the store), else copies."""
    out.mkdir()
    for name in [*package.manifest.files, MANIFEST]:
        try:
            os.link(package.root / name, out / name)
        except OSError:
            shutil.copy2(package.root / name, out / name)
    return out


def check_store(uri: str) -> None:
    """An HTTP tracking server answers a small request, with few retries and a short timeout (PROBE_ENV):
    one line when it does not."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    retries = logging.getLogger("urllib3.connectionpool")  # its "Retrying ..." warning per attempt: not one line
    level = retries.level
    retries.setLevel(logging.ERROR)
    try:
        with _settings(PROBE_ENV):
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as e:
        raise OnnxpackError(f"MLflow tracking server {uri} {_no_answer(e.message)}", hint=HINT) from None
    finally:
        retries.setLevel(level)


def _no_answer(message: str) -> str:
    """Why a server did not answer, in a few words (MLflow's message holds urllib3's whole chain)."""
    for needle, reason in (("Connection refused", "refused the connection"), ("timed out", "did not answer in time"),
                           ("Name or service not known", "is a host name that does not resolve"),
                           ("Temporary failure in name resolution", "is a host name that does not resolve")):
        if needle in message:
            return reason
    if code := re.search(r"error code (\d+)", message):
        return f"answered HTTP {code.group(1)} to MLflow's experiment search: is it an MLflow tracking server?"
    return f"did not answer: {_first_line(message)}"


@contextlib.contextmanager
def store_env(uri: str) -> Iterator[None]:
    """MLflow set to write to the store at `uri` for a while: its tracking URI (a process global), the
    store's settings and LOG_ENV's retries; then all back as they were."""
    with _settings(store_settings(uri) | LOG_ENV), _tracking(uri):
        yield


@contextlib.contextmanager
def _settings(values: dict[str, str]) -> Iterator[None]:
    """MLflow's environment settings for a while, those the user has not set."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if before[k] is None})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """MLflow's tracking URI (a process global, which MLflow also copies into $MLFLOW_TRACKING_URI) set
    for a while, then back as it was: the global and the variable."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    current = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(current if current != env else None)  # None: no global, and no variable
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


@contextlib.contextmanager
def _one_line(uri: str) -> Iterator[None]:
    """A store that cannot be reached or written is the user's to fix: one line naming the URI."""
    try:
        yield
    except MlflowException as e:
        raise OnnxpackError(f"MLflow tracking store {uri}: {_first_line(e.message)}", hint=HINT) from None
    except OSError as e:
        raise OnnxpackError(f"MLflow tracking store {uri}: {_first_line(str(e))}", hint=HINT) from None
    except ImportError as e:  # sqlite:// and other database stores: SQLAlchemy, which mlflow-skinny leaves out
        raise OnnxpackError(f"MLflow tracking store {uri} needs {e.name or 'a module'}, which is not installed",
                            hint="pip install mlflow (the full package), or use an http(s):// or file:// store"
                            ) from None


def _first_line(message: str) -> str:
    line = next((s.strip() for s in str(message).splitlines() if s.strip()), "unknown error")
    return line if len(line) <= 300 else line[:297] + "..."
