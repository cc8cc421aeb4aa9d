"""The one way onnxpack writes anything: build it under a temp sibling, fsync it, rename it into place.

A reader sees the old file (or folder) or the new one, never half of one, and after a crash or a
power cut the new one is either wholly on disk or not there (the data and the folder entry are
synced before and after the rename). Temp siblings are named `.<name>.tmp-<pid>-<random>`, so a
later write removes what a killed process left (`sweep_stale`). New files and folders get the
mode the umask gives, as `open()` and `mkdir` would: the kernel applies it when they are created.
Standard library only.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import PackageError


def temp_prefix(target: Path) -> str:
    """How a temp sibling of `target` is named: with this process's id, so that a later run can
    remove what a killed one left (`sweep_stale`)."""
    return f".{target.name}.tmp-{os.getpid()}-"


def sweep_stale(target: Path) -> None:
    """Remove the temp siblings of `target` whose process is gone: what a SIGKILLed run left."""
    for marker in (".tmp-", ".old-"):
        prefix = f".{target.name}{marker}"
        for path in target.parent.glob(f"{glob.escape(prefix)}*"):
            pid = path.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def check_target(target: Path, force: bool) -> None:
    """Refuse to replace an existing output unless forced; called early, before slow work."""
    if target.exists() and not force:
        raise PackageError(f"{target} already exists", hint="choose another --out or pass --force to replace it")


class _Staged:
    """What AtomicFile and AtomicDir share: a temp sibling `path` of `target`, put in place whole by
    `commit()` or removed by `discard()`. As a context manager it yields the temp path, commits when
    the block ends and discards on an exception (Ctrl-C included)."""

    target: Path
    path: Path

    def commit(self) -> Path:
        """Sync the temp sibling, rename it to the target, sync the folder; the target is then on disk."""
        try:
            self._sync()
            self._rename()
        except BaseException:
            self.discard()
            raise
        _fsync(self.target.parent)
        return self.target

    def _sync(self) -> None:
        raise NotImplementedError

    def _rename(self) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


class AtomicFile(_Staged):
    """A file written under a temp sibling of `target` and put in place whole by `commit()`.

    A writer with a longer life than a `with` block (batch's output) calls `commit()` or `discard()` itself.
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.target)
        self.path = _new_temp(self.target, lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))

    def _sync(self) -> None:
        _fsync(self.path)

    def _rename(self) -> None:
        os.replace(self.path, self.target)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a whole text file (UTF-8) atomically."""
    with AtomicFile(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a whole binary file (an image, a graph) atomically."""
    with AtomicFile(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_save_png(figure: Any, path: str | os.PathLike[str], dpi: int) -> None:
    """A matplotlib figure written as a PNG by rename, then closed (pyplot keeps figures until then)."""
    import matplotlib.pyplot as plt

    try:
        with AtomicFile(path) as tmp:
            figure.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(figure)


class AtomicDir(_Staged):
    """A folder built under a temp sibling of `target` and put in place by one rename on `commit()`,
    every file and folder of the tree synced first, so nothing ever appears under the final name
    half-written. An existing `target` is refused unless `force`, before any work is done.
    """

    def __init__(self, target: str | os.PathLike[str], force: bool = False) -> None:
        self.target = Path(target)
        check_target(self.target, force)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.target)
        self.path = _new_temp(self.target, lambda p: os.mkdir(p, 0o777))

    def _sync(self) -> None:
        _fsync_tree(self.path)

    def _rename(self) -> None:
        replace_dir(self.path, self.target)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def move_file(path: Path, target: Path) -> Path:
    """Put a file finished elsewhere on the same file system (a scratch folder inside the target's)
    under `target`, as AtomicFile.commit does: fsync its data, rename it, fsync the target's folder."""
    _fsync(path)
    os.replace(path, target)
    _fsync(target.parent)
    return target


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder `tmp` under the name `target`, replacing what was there. POSIX has no
    rename over a non-empty folder, so the old one steps aside first (`.<name>.old-<pid>`, swept
    if a kill leaves it)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _new_temp(target: Path, create: Callable[[Path], None]) -> Path:
    """A fresh temp sibling of `target`, made by `create` (which fails if the name is taken)."""
    while True:
        path = target.with_name(temp_prefix(target) + secrets.token_hex(4))
        try:
            create(path)
            return path
        except FileExistsError:
            continue


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every folder (deepest first), so the whole tree is on disk before it
    is renamed into place: a Triton repository keeps everything in subfolders."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):  # a link's target is not ours to sync; the link itself is a folder entry
                _fsync(Path(path))
        _fsync(Path(folder))


def _fsync(path: Path) -> None:
    """fsync a file's data or a folder's entries."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
