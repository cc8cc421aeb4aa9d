"""atomic.py: files and folders appear whole or not at all, synced to disk, with the umask's mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from onnxpack.core import atomic
from onnxpack.core.atomic import (
    AtomicDir,
    AtomicFile,
    atomic_write_bytes,
    atomic_write_text,
    move_file,
)
from onnxpack.core.errors import PackageError


@pytest.fixture()
def umask():
    """A umask unlike the usual 022, so a mode fixed in the code cannot pass for the umask's."""
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


@pytest.fixture()
def synced(monkeypatch) -> list[tuple[int, int]]:
    """(device, inode) of everything fsynced, in order; the real fsync still runs."""
    calls: list[tuple[int, int]] = []
    real = os.fsync

    def recording(fd: int) -> None:
        st = os.fstat(fd)
        calls.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", recording)
    return calls


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _dead_pid() -> int:
    """The id of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


# --- files --------------------------------------------------------------------------------------------------

def test_file_write_replaces_and_leaves_no_temp_file(tmp_path, synced):
    path = tmp_path / "sub" / "report.json"
    atomic_write_text(path, "first\n")
    assert path.read_text(encoding="utf-8") == "first\n"
    atomic_write_text(path, "second ✓\n")
    assert path.read_text(encoding="utf-8") == "second ✓\n"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
    # the file's data before the rename, then the folder's new entry
    assert synced[-2:] == [_identity(path), _identity(path.parent)]


def test_file_mode_follows_the_umask(tmp_path, umask):
    atomic_write_bytes(tmp_path / "plot.png", b"\x89PNG")
    assert stat.S_IMODE((tmp_path / "plot.png").stat().st_mode) == 0o666 & ~umask


def test_file_failure_mid_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("keep")
    with pytest.raises(RuntimeError, match="boom"), AtomicFile(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("half of the new")
        f.flush()
        raise RuntimeError("boom")
    assert path.read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_file_failure_of_the_content_leaves_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("keep")
    with pytest.raises(TypeError):
        atomic_write_text(path, b"not text")  # type: ignore[arg-type]
    assert path.read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_file_commit_and_discard_for_long_lived_writers(tmp_path):
    kept, dropped = AtomicFile(tmp_path / "kept.jsonl"), AtomicFile(tmp_path / "dropped.jsonl")
    assert kept.path.name.startswith(f".kept.jsonl.tmp-{os.getpid()}-")  # a name sweep_stale can find
    kept.path.write_text("{}\n")
    dropped.path.write_text("{}\n")
    assert kept.commit() == tmp_path / "kept.jsonl"
    dropped.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.jsonl"]


def test_move_file_syncs_the_file_then_the_folder_it_joins(tmp_path, synced):
    """optimize's variants: built in a scratch folder inside the package, then moved in."""
    scratch = tmp_path / ".scratch"
    scratch.mkdir()
    (scratch / "model.int8.onnx").write_bytes(b"graph")
    (tmp_path / "model.int8.onnx").write_bytes(b"an earlier run's")
    moved = move_file(scratch / "model.int8.onnx", tmp_path / "model.int8.onnx")
    assert moved.read_bytes() == b"graph" and list(scratch.iterdir()) == []
    assert synced == [_identity(moved), _identity(tmp_path)]


# --- folders ------------------------------------------------------------------------------------------------

def test_dir_success(tmp_path, umask):
    target = tmp_path / "out"
    with AtomicDir(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        assert not target.exists()  # nothing under the final name until the block ends
        (tmp / "a.txt").write_text("a")
    assert (target / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask


def test_dir_fsyncs_every_file_and_folder_then_the_parent(tmp_path, synced):
    target = tmp_path / "repository"
    with AtomicDir(target) as tmp:  # a Triton repository: everything is in subfolders
        (tmp / "model" / "1").mkdir(parents=True)
        (tmp / "model" / "1" / "model.onnx").write_bytes(b"graph")
        (tmp / "model" / "config.pbtxt").write_text("name: 'model'")
        (tmp / "ensemble" / "1").mkdir(parents=True)
        (tmp / "top.txt").write_text("top")
    files = [target / "model" / "1" / "model.onnx", target / "model" / "config.pbtxt", target / "top.txt"]
    folders = [target / "model" / "1", target / "model", target / "ensemble" / "1", target / "ensemble", target]
    assert set(synced) == {_identity(p) for p in files + folders + [tmp_path]}
    for file in files:  # each file before the folder that holds it
        assert synced.index(_identity(file)) < synced.index(_identity(file.parent))
    assert synced.index(_identity(target)) < synced.index(_identity(tmp_path)) == len(synced) - 1


def test_dir_exception_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), AtomicDir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_dir_keyboard_interrupt_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), AtomicDir(tmp_path / "out") as tmp:
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_dir_existing_target_needs_force(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(PackageError, match="already exists"), AtomicDir(target):
        pytest.fail("the block must not run when the target exists")  # pragma: no cover
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    with AtomicDir(target, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .tmp- nor .old- leftovers


def test_dir_force_failure_keeps_old_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), AtomicDir(target, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_dir_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with AtomicDir(target) as tmp:
        (tmp / "x").write_text("x")
    assert (target / "x").read_text() == "x"


# --- what a killed process left -----------------------------------------------------------------------------

def test_a_later_dir_write_sweeps_what_a_killed_one_left(tmp_path):
    """Temp siblings carry their process id: those of a dead process go at the next write, a live
    process's stay, and another target's are not touched."""
    dead = _dead_pid()
    stale = [tmp_path / f".pkg.tmp-{dead}-abc", tmp_path / f".pkg.old-{dead}"]
    for path in stale:
        path.mkdir()
        (path / "half-written").write_text("x")
    live = tmp_path / f".pkg.tmp-{os.getpid()}-def"
    live.mkdir()
    (tmp_path / f".other.tmp-{dead}-x").mkdir()
    with AtomicDir(tmp_path / "pkg") as tmp:
        (tmp / "f").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, f".other.tmp-{dead}-x", "pkg"])


def test_a_later_file_write_sweeps_a_dead_process_temp_file(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".out.jsonl.tmp-{dead}-1a2b3c4d").write_text('{"half": ')
    atomic_write_text(tmp_path / "out.jsonl", "{}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
