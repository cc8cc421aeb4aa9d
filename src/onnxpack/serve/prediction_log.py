"""`serve --log-predictions DIR`: every answer, one JSON line each, in files that appear whole.

A line: `{"time": "2025-01-31T12:00:00.123Z", "sha256": <of the text's UTF-8; of a pair, of
first<TAB>second; null for token inputs>, "label", "score" (the predicted label's), "length",
"windows", "unknown", "truncated"}` (the quantities of runtime/monitor.py), and `"text"` with
--log-texts. `onnxpack monitor PKG --input DIR` reads them.

The event loop only queues each answer (no formatting, no I/O); one background thread turns the
queued answers into lines, many at a time, and writes them to `.predictions-<start>-<pid>-<n>.jsonl.tmp`.
When that file reaches --log-max-mb or --log-max-age-s it is synced and renamed to
`predictions-<start>-<pid>-<n>.jsonl`: a reader never sees a file being written. On shutdown
(after the last request is answered, `Service.close`) the thread writes what is queued and renames
the last file, so a SIGTERM loses no answer made. A temp file a killed server left is renamed
when the next server starts on the folder.

The queue is bounded (QUEUE_LIMIT answers): a disk too slow to keep up loses answers, counted in
onnxpack_prediction_log_dropped_total, rather than the server's memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter

from onnxpack.core.atomic import move_file
from onnxpack.core.errors import OnnxpackError
from onnxpack.runtime.feed import Text
from onnxpack.runtime.monitor import answers

log = logging.getLogger(__name__)

QUEUE_LIMIT = 50_000  # requests waiting to be written
BATCH = 2_048  # requests turned into lines at a time
# After the first answer of a quiet spell the writer waits this long for more, so it wakes (and takes
# the GIL from the event loop) a few times a second, not once per request: waking per request cost
# the server 6% of its requests per second at 32 clients, this costs it about 1%.
GATHER_S = 0.25
_STOP = object()
_TEMP = re.compile(r"^\.(predictions-\d{8}T\d{6}-(\d+)-\d+\.jsonl)\.tmp$")


class PredictionLog:
    """Appends answers to rotated JSON Lines files in `folder` from a background thread."""

    def __init__(self, folder: str | os.PathLike[str], labels: Sequence[str], multi_label: bool, log_texts: bool,
                 max_bytes: int, max_age_s: float, registry: CollectorRegistry | None = None) -> None:
        """Checks now that the folder can be written to (made if missing): one line otherwise."""
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".onnxpack-write-test-"):
                pass
        except OSError as e:
            raise OnnxpackError(f"--log-predictions {self.folder} is not a folder this server can write to "
                                f"({e.strerror or e})", hint="pass a writable folder (it is made if missing)") from None
        self.labels = list(labels)
        self.multi_label = multi_label
        self.log_texts = log_texts
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._file: IO[bytes] | None = None
        self._temp: Path | None = None
        self._opened_at = 0.0
        self._bytes = 0
        self._count = 0  # files this server has started
        self._failing = False  # a write failed: logged once until one succeeds
        self._label_json = [orjson.dumps(name).decode() for name in self.labels]
        self._second, self._stamp = -1, ""  # the time's seconds, formatted once a second
        registry = registry or CollectorRegistry()
        self.written = Counter("onnxpack_prediction_log_records", "Answers written to the prediction log",
                               registry=registry)
        self.dropped = Counter("onnxpack_prediction_log_dropped", "Answers not logged: the queue was full or a "
                               "write failed", registry=registry)
        self.files = Counter("onnxpack_prediction_log_files", "Prediction log files completed (rotated)",
                             registry=registry)

    # ---- the event loop's side ----

    def start(self) -> None:
        self._recover()
        self._thread = threading.Thread(target=self._run, name="onnxpack-prediction-log", daemon=True)
        self._thread.start()

    def append(self, texts: Sequence[Text] | None, logits: np.ndarray, stats: Sequence[tuple[int, int, bool]],
               windows: Sequence[int] | None) -> None:
        """One answered request: its texts (None: token inputs), logits and per-text quantities."""
        if self._closed or self._queue.qsize() >= QUEUE_LIMIT:
            self.dropped.inc(len(logits))
            return
        self._queue.put((time.time(), texts, logits, stats, windows))

    def close(self) -> None:
        """Write every queued answer, then put the last file in place."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()

    # ---- the writer thread ----

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._until_due())
            except queue.Empty:  # the open file is old enough
                self._rotate()
                continue
            if item is not _STOP:
                time.sleep(GATHER_S)  # let answers gather: one wake-up and one write for many
            items = [item]
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self._queue.get_nowait())
            answered = [i for i in items if i is not _STOP]
            for start in range(0, len(answered), BATCH):
                chunk = answered[start:start + BATCH]
                try:
                    self._write(chunk)
                except Exception:  # noqa: BLE001 -- a bug: lose these lines, not the log
                    log.exception("writing the prediction log failed")
                    self.dropped.inc(sum(len(item[2]) for item in chunk))
            if len(answered) < len(items):  # closing: everything queued before it is written
                self._rotate()
                return

    def _until_due(self) -> float | None:
        """Seconds until the open file is due for rotation by age (None: no file is open)."""
        return None if self._file is None else max(0.0, self._opened_at + self.max_age_s - time.monotonic())

    def _lines(self, items: list[tuple]) -> list[bytes]:
        """The queued answers as JSON lines. Written by hand (each label's JSON made
        once, the time's seconds once a second): a line costs a few microseconds of the GIL, which
        the event loop shares."""
        label, score = answers(np.concatenate([item[2] for item in items]), self.multi_label)
        labels = [self._label_json[i] for i in label.tolist()]
        scores = [f"{x!r}" if math.isfinite(x) else "null" for x in np.round(score, 6).tolist()]
        out, k = [], 0
        for at, texts, logits, stats, windows in items:
            second = int(at)
            if second != self._second:
                self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            stamp = f"{self._stamp}.{int((at - second) * 1000):03d}Z"
            for i in range(len(logits)):
                length, unknown, truncated = stats[i] if i < len(stats) else (0, 0, False)
                digest = f'"{_sha256(texts[i])}"' if texts is not None else "null"
                text = f',"text":{orjson.dumps(texts[i]).decode()}' if self.log_texts and texts is not None else ""
                out.append(f'{{"time":"{stamp}","sha256":{digest},"label":{labels[k]},"score":{scores[k]},'
                           f'"length":{length},"windows":{windows[i] if windows is not None else 1},'
                           f'"unknown":{unknown},"truncated":{"true" if truncated else "false"}{text}}}\n'
                           .encode("utf-8", "surrogatepass"))
                k += 1
        return out

    def _write(self, items: list[tuple]) -> None:
        """Append the answers' lines, a new file whenever the open one reaches max_bytes or max_age_s."""
        lines = self._lines(items)
        start = 0
        while start < len(lines):
            if self._file is None and not self._open():
                self.dropped.inc(len(lines) - start)
                return
            end, size = start, 0
            room = self.max_bytes - self._bytes
            while end < len(lines) and (size < room or end == start):
                size += len(lines[end])
                end += 1
            if not self._append(b"".join(lines[start:end]), end - start):
                self.dropped.inc(len(lines) - end)
                return
            start = end
            if self._bytes >= self.max_bytes or time.monotonic() - self._opened_at >= self.max_age_s:
                self._rotate()

    def _append(self, data: bytes, count: int) -> bool:
        try:
            self._file.write(data)
            self._file.flush()  # to the OS at once: a killed server's temp file keeps what it answered
        except OSError as e:
            self._failed(e, count)
            self._abandon()
            return False
        self._bytes += len(data)
        self.written.inc(count)
        self._failing = False
        return True

    def _failed(self, error: OSError, count: int) -> None:
        self.dropped.inc(count)
        if not self._failing:
            log.error("the prediction log in %s cannot be written (%s); answers are not logged until it can",
                      self.folder, error.strerror or error)
        self._failing = True

    def _open(self) -> bool:
        self._count += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._temp = self.folder / f".predictions-{stamp}-{os.getpid()}-{self._count:04d}.jsonl.tmp"
        try:
            self._file = open(self._temp, "xb")
        except OSError as e:
            self._failed(e, 0)
            self._file = self._temp = None
            return False
        self._opened_at, self._bytes = time.monotonic(), 0
        return True

    def _rotate(self) -> None:
        """Sync and close the open file, and rename it to its final name (it appears whole)."""
        if self._file is None:
            return
        try:
            self._file.close()
            move_file(self._temp, _final(self._temp))
            self.files.inc()
        except OSError as e:
            log.error("the prediction log file %s could not be put in place (%s)", self._temp, e.strerror or e)
        self._file = self._temp = None

    def _abandon(self) -> None:
        """After a failed write: drop the open file's handle (what it holds stays under its temp name)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = self._temp = None

    def _recover(self) -> None:
        """Rename the temp files a killed server (its process gone) left: their lines were answered."""
        for path in self.folder.glob(".predictions-*.jsonl.tmp"):
            match = _TEMP.match(path.name)
            if match and not _alive(int(match[2])):
                with contextlib.suppress(OSError):
                    move_file(path, self.folder / match[1])
                    log.info("prediction log: %s, left by a server that stopped, put in place", match[1])


def _final(temp: Path) -> Path:
    return temp.with_name(temp.name[1:].removesuffix(".tmp"))


def _sha256(text: Text) -> str:
    joined = text if isinstance(text, str) else "\t".join(text)
    return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
