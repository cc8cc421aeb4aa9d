"""Batch inference on Ray Data: read (core.tables, a task per file) -> `map_batches(actor pool)` -> one
output file.

Each actor holds one Predictor (one ONNX Runtime session, threads = the actor's CPUs) and runs
local.classify, so both engines give the same rows. The pool is sized from the cluster's CPUs with
fractional CPUs per actor: actors that take every CPU starve the read tasks, and Ray then waits
forever without a word (ray issue 44687). Rows keep their order (`preserve_order`) and the driver
streams them into one file or folder with local.write_rows. A local cluster binds to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from onnxpack.core.config import BatchConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.tables import TableFile
from onnxpack.runtime.predictor import Predictor

from .local import (
    BatchSummary,
    classify,
    input_columns,
    input_files,
    write_rows,
)

CONNECT_TIMEOUT_S = 30  # an unreachable --address fails within this
READ_RESERVE_CPUS = 1.0  # left to Ray Data's read and project tasks (a CPU each), so actors cannot starve them


class _ActorPredictor:
    """One model per Ray actor: a pyarrow batch of texts in, classify's rows out (scores as JSON)."""

    def __init__(self, package: str, text_columns: list[str], id_column: str | None, config: BatchConfig,
                 threads: int) -> None:
        self.predictor = Predictor(package, provider=config.provider, variant=config.variant, threads=threads)
        self.text_columns, self.id_column, self.config = text_columns, id_column, config

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        data = table.to_pydict()
        n = table.num_rows
        texts = (list(zip(*(data[c] for c in self.text_columns))) if len(self.text_columns) == 2
                 else data[self.text_columns[0]])
        ids = data[self.id_column] if self.id_column else [None] * n
        rows = classify(self.predictor, ids, texts, self.config)
        return pa.table({"id": [None if r["id"] is None else str(r["id"]) for r in rows],
                         "row": [json.dumps({k: v for k, v in r.items() if k != "id"}) for r in rows]})


def run_ray(package: str | Path, input_spec: str, output: str | Path, config: BatchConfig | None = None,
            address: str | None = None, num_workers: int | None = None,
            progress: Callable[[int], None] | None = None) -> BatchSummary:
    """The `ray` engine: the same rows as `local.run_local`, computed by an actor pool."""
    config = config or BatchConfig()
    config.validate()
    ray = _import_ray()
    files, fmt = input_files(input_spec)
    with Predictor(package, provider=config.provider, variant=config.variant) as probe:  # fails fast on the package
        pairs, labels, multi_label = probe.pairs, probe.labels, probe.multi_label
    texts_in, columns = input_columns(files, fmt, config, pairs)  # the local engine's rules, before Ray starts
    started_here = _init(ray, address)
    started = time.perf_counter()
    try:
        block_rows = min(config.chunk_rows, 4096)
        dataset = ray.data.from_items([str(f.resolve()) for f in files]).map_batches(
            _read_files, batch_size=1, batch_format="pyarrow",
            fn_kwargs={"fmt": fmt, "columns": columns, "chunk_rows": block_rows},
        ).repartition(target_num_rows_per_block=block_rows)  # streamed: a read task's chunks reach many actors
        cpus = float(ray.cluster_resources().get("CPU", 1))
        workers = num_workers or max(1, int(cpus - READ_RESERVE_CPUS))
        per_actor = max(0.1, (cpus - READ_RESERVE_CPUS) / workers)
        results = dataset.map_batches(
            _ActorPredictor, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=per_actor,
            batch_size=block_rows, batch_format="pyarrow",
            fn_constructor_kwargs={"package": str(Path(package).resolve()), "text_columns": texts_in,
                                   "id_column": config.id_column, "config": config,
                                   "threads": max(1, round(per_actor))})
        return write_rows(output, labels, multi_label, _rows(results, config.id_column is not None),
                          started, progress, windows=config.long_text == "chunk")
    finally:
        if started_here:
            ray.shutdown()


def _rows(results: Any, has_ids: bool) -> Iterator[list[dict[str, Any]]]:
    """classify's rows back from the actors, in order; without an id column, numbered here."""
    number = 0
    for table in results.iter_batches(batch_format="pyarrow", batch_size=None):
        data = table.to_pydict()
        out = [{"id": row_id if has_ids else number + k, **json.loads(row)}
               for k, (row_id, row) in enumerate(zip(data["id"], data["row"]))]
        number += len(out)
        yield out


def _import_ray() -> Any:
    # A local cluster listens on loopback only, and writes no auth token into the home folder.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise OnnxpackError("the ray engine needs Ray Data", hint="pip install 'onnxpack[ray]'") from None
    return ray


def _init(ray: Any, address: str | None) -> bool:
    """Join `address`, or start a local cluster on 127.0.0.1; True when this call started one."""
    if ray.is_initialized():
        return False
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ray.data.DataContext.get_current().enable_progress_bars = False
    if address is None:
        ray.init(_node_ip_address="127.0.0.1", **options)
        return True
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError):
        raise OnnxpackError(f"cannot reach a Ray cluster at {address}",
                            hint="check the address (host:port of the head node), or leave --address out") from None
    failure: list[BaseException] = []
    thread = threading.Thread(target=lambda: _init_or_record(ray, address, options, failure), daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S)
    if thread.is_alive() or failure:
        raise OnnxpackError(f"cannot join the Ray cluster at {address} within {CONNECT_TIMEOUT_S} s"
                            + (f" ({type(failure[0]).__name__})" if failure else ""),
                            hint="check the address and that the cluster runs the same Ray version")
    return False


def _init_or_record(ray: Any, address: str, options: dict[str, Any], failure: list[BaseException]) -> None:
    try:
        ray.init(address=address, **options)
    except BaseException as e:  # noqa: BLE001 -- reported to the caller as one line
        failure.append(e)


def _read_files(paths: Any, fmt: str, columns: list[str], chunk_rows: int) -> Iterator[Any]:
    """A read task: the files named in `paths` (a pyarrow table of one `item` column), through the
    reader the local engine uses, a chunk at a time."""
    import pyarrow as pa

    for path in paths.column("item").to_pylist():
        for chunk in TableFile(Path(path), fmt).chunks(columns, chunk_rows):
            yield pa.Table.from_batches([chunk.batch])
