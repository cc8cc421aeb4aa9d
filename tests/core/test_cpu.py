"""core/cpu.py: features from /proc/cpuinfo's text, the int8 path they give, the one-line summary,
the mismatch warning, and no error where /proc/cpuinfo cannot be read."""

from __future__ import annotations

import platform

import pytest

from onnxpack.core import cpu

SAPPHIRE_RAPIDS = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
flags		: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor	: 1
model name	: Intel(R) Xeon(R) Platinum 8480+
flags		: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ALDER_LAKE = "model name\t: 12th Gen Intel(R) Core(TM) i7-12700\nflags\t\t: sse2 avx avx2 fma avx_vnni\n"
HASWELL = "model name\t: Intel(R) Xeon(R) CPU E5-2673 v3\nflags\t\t: sse2 avx avx2 fma\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd aes crc32 atomics asimddp\nCPU part\t: 0xd0c\n"


@pytest.fixture()
def fresh_features():
    """features() recomputed from whatever a test patched, and this machine's again afterwards."""
    cpu.features.cache_clear()
    yield
    cpu.features.cache_clear()


def test_features_from_cpuinfo():
    feats = cpu.features_from_cpuinfo(SAPPHIRE_RAPIDS)
    assert feats == {"processor": "Intel(R) Xeon(R) Platinum 8480+", "avx2": True, "avx512": True, "vnni": True,
                     "avx512_bf16": True, "amx": True}
    assert cpu.features_from_cpuinfo(ALDER_LAKE) == {
        "processor": "12th Gen Intel(R) Core(TM) i7-12700", "avx2": True, "avx512": False, "vnni": True,
        "avx512_bf16": False, "amx": False}
    assert cpu.features_from_cpuinfo(ARM) == {}  # no `flags` line: unknown, not "absent"
    assert cpu.features_from_cpuinfo("") == {}


@pytest.mark.parametrize(("text", "machine", "path"), [
    (SAPPHIRE_RAPIDS, "x86_64", "amx"),
    (ALDER_LAKE, "x86_64", "vnni"),
    ("flags\t: avx2 avx512f avx512bw\n", "x86_64", "avx512"),
    (HASWELL, "x86_64", "avx2"),
    ("flags\t: sse2 sse4_2\n", "x86_64", "sse"),
    ("", "AMD64", "unknown"),  # Windows: no /proc/cpuinfo
    (ARM, "aarch64", "other"),
    ("", "arm64", "other"),  # macOS
])
def test_int8_path(text, machine, path):
    assert cpu.int8_path(cpu.features_from_cpuinfo(text) | {"machine": machine}) == path


def test_summary():
    feats = cpu.features_from_cpuinfo(ALDER_LAKE) | {"machine": "x86_64"}
    assert cpu.summary(feats) == "12th Gen Intel(R) Core(TM) i7-12700: AVX2, VNNI; int8 path: vnni"
    assert cpu.summary({"processor": "Apple M2", "machine": "arm64"}) == (
        "Apple M2: arm64, features unknown; int8 path: other")
    assert cpu.summary({"machine": "x86_64", "avx2": False}) == "x86_64: no AVX2; int8 path: sse"


def test_record_is_features_and_int8_path():
    record = cpu.record()
    assert record == cpu.features() | {"int8_path": cpu.int8_path()}
    assert record["int8_path"] in {"amx", "vnni", "avx512", "avx2", "sse", "other", "unknown"}
    assert cpu.summary(record).endswith(f"; int8 path: {record['int8_path']}")


def test_int8_path_mismatch(monkeypatch):
    monkeypatch.setattr(cpu, "int8_path", lambda feats=None: "vnni")
    haswell = cpu.features_from_cpuinfo(HASWELL) | {"machine": "x86_64", "int8_path": "avx2"}
    warning = cpu.int8_path_mismatch(haswell)
    assert warning is not None and "\n" not in warning
    assert "Intel(R) Xeon(R) CPU E5-2673 v3" in warning and "int8 path avx2" in warning
    assert "this machine's int8 path is vnni" in warning and "gate figures (agreement, speed)" in warning
    assert cpu.int8_path_mismatch(haswell | {"int8_path": "vnni"}) is None  # the same path
    assert cpu.int8_path_mismatch(None) is None  # figures from before the CPU was recorded
    assert cpu.int8_path_mismatch({"processor": "x"}) is None
    assert cpu.int8_path_mismatch(haswell | {"int8_path": "unknown"}) is None  # cannot tell
    monkeypatch.setattr(cpu, "int8_path", lambda feats=None: "unknown")
    assert cpu.int8_path_mismatch(haswell) is None


def test_unreadable_cpuinfo_is_no_error(monkeypatch, tmp_path, fresh_features):
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(platform, "machine", lambda: "AMD64")
    monkeypatch.setattr(platform, "processor", lambda: "")
    feats = cpu.features()
    assert feats == {"processor": "AMD64", "machine": "AMD64"}
    assert cpu.int8_path() == "unknown" and cpu.record()["int8_path"] == "unknown"
    assert cpu.summary() == "AMD64: AMD64, features unknown; int8 path: unknown"
    assert cpu.int8_path_mismatch({"int8_path": "avx2"}) is None


def test_features_read_from_cpuinfo_file(monkeypatch, tmp_path, fresh_features):
    (tmp_path / "cpuinfo").write_text(HASWELL)
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert cpu.features()["processor"] == "Intel(R) Xeon(R) CPU E5-2673 v3"
    assert cpu.int8_path() == "avx2"
    assert cpu.features() is cpu.features()  # read once
