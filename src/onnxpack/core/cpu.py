"""This CPU's instruction-set features, and which int8 GEMM path ONNX Runtime takes on it.

Every speed figure, and every int8 figure, depends on them: ONNX Runtime's MLAS picks its int8
kernel from CPUID at start-up (`onnxruntime/core/mlas/lib/platform.cpp`), so the same quantized
model gives different speeds, and may give different logits, on another CPU. Read from
/proc/cpuinfo with the standard library; elsewhere the features are unknown, never an error.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
X86 = {"x86_64", "amd64", "i386", "i686", "x86"}

# Feature name -> the /proc/cpuinfo flags that give it (any one suffices), and how a summary names it.
FEATURES = {
    "avx2": (("avx2",), "AVX2"),
    "avx512": (("avx512f",), "AVX-512"),
    "vnni": (("avx512_vnni", "avx_vnni"), "VNNI"),
    "avx512_bf16": (("avx512_bf16",), "AVX512-BF16"),
    "amx": (("amx_int8",), "AMX"),  # AMX-INT8, never without amx_tile; amx_bf16 alone is no int8 path
}


def features_from_cpuinfo(text: str) -> dict[str, Any]:
    """The processor's name and FEATURES from /proc/cpuinfo's text; no feature keys without a
    `flags` line (ARM's cpuinfo has `Features` instead, and none of these)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())  # the first core's; all cores match
    found: dict[str, Any] = {}
    if "model name" in fields:
        found["processor"] = fields["model name"]
    if "flags" in fields:
        flags = set(fields["flags"].split())
        found |= {name: any(flag in flags for flag in names) for name, (names, _) in FEATURES.items()}
    return found


@functools.cache
def features() -> dict[str, Any]:
    """This machine's processor, architecture and FEATURES (absent where unknown), e.g.
    {"processor": "Intel(R) Xeon(R) Processor", "machine": "x86_64", "avx2": True, ..., "amx": False}."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:  # not Linux, or a sandbox without /proc
        text = ""
    machine = platform.machine()
    return {"processor": platform.processor() or machine, "machine": machine} | features_from_cpuinfo(text)


def int8_path(feats: dict[str, Any] | None = None) -> str:
    """Which kernel ONNX Runtime's u8s8 GEMM (the int8 MatMul of dynamic and static quantization)
    takes with these features (this machine's by default), as MLAS picks it, best first:

        amx      AMX tiles; exact int32 sums
        vnni     vpdpbusd (avx512_vnni, or avx_vnni on AVX2-only CPUs); exact int32 sums
        avx512   AVX-512 vpmaddubsw: a pair of u8 x s8 products can saturate int16, as on AVX2
        avx2     AVX2 vpmaddubsw, the same saturation (why ORT's quantizer has reduce_range)
        sse      x86 without AVX2
        other    not x86 (ARM and others have their own kernels)
        unknown  x86, but its features could not be read

    Two simplifications: AVX-512 here is avx512f, where MLAS also wants BW/DQ/VL (every AVX-512
    CPU since Skylake-SP has them); AMX also needs the kernel to grant the tiles, which a kernel
    that lists amx_int8 does."""
    feats = features() if feats is None else feats
    machine = feats.get("machine")
    if machine and machine.lower() not in X86:
        return "other"
    if "avx2" not in feats:
        return "unknown"
    for name in ("amx", "vnni", "avx512", "avx2"):
        if feats.get(name):
            return name
    return "sse"


def record() -> dict[str, Any]:
    """What a figure stores about the CPU it was measured on: features() and its int8_path."""
    return features() | {"int8_path": int8_path()}


def summary(feats: dict[str, Any] | None = None) -> str:
    """One line, e.g. "Intel(R) Xeon(R) Processor: AVX2, AVX-512, VNNI; int8 path: vnni"."""
    feats = features() if feats is None else feats
    path = int8_path(feats)
    if "avx2" in feats:
        names = ", ".join(label for name, (_, label) in FEATURES.items() if feats.get(name)) or "no AVX2"
    else:
        names = f"{feats.get('machine') or 'unknown architecture'}, features unknown"
    return f"{feats.get('processor') or feats.get('machine') or 'unknown CPU'}: {names}; int8 path: {path}"


def int8_path_mismatch(recorded: dict[str, Any] | None) -> str | None:
    """A one-line warning when `recorded` (a figure's "cpu", as record() wrote it) names another int8
    path than this machine's, else None; also None where either side is unknown."""
    theirs = (recorded or {}).get("int8_path")
    ours = int8_path()
    if theirs in (None, "unknown") or ours == "unknown" or theirs == ours:
        return None
    return (f"gate figures (agreement, speed) were measured on another CPU ({recorded.get('processor', 'unknown')}, "
            f"int8 path {theirs}); this machine's int8 path is {ours}, so int8 results and speeds may differ")
