"""Will a package load where it is shipped? Its graphs' IR version and opsets against what a target
ONNX Runtime release, or the ONNX Runtime inside a Triton release, loads.

ONNX Runtime refuses a model whose IR version or opset is newer than it knows ("Unsupported model
IR version", "is till opset N"), so a package exported with today's tools can fail on last year's
server. The table (compat.json, shipped with onnxpack) says what each release loads and which ONNX
Runtime each Triton container ships, with its sources.

An ORT-format package (export-mobile's model.ort) is held to the same IR and opset limits, read from
the .ort file's header, and to the ORT format versions the release reads (compat.json's "ort_format"):
a release reads the version it writes and older ones back to v5, never a newer one.
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import onnx

from onnxpack.core import ortformat, untrusted
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import FP32, Package

TABLE = Path(__file__).with_name("compat.json")
ONNX_DOMAIN, ML_DOMAIN = "ai.onnx", "ai.onnx.ml"


@cache
def table() -> dict[str, Any]:
    return json.loads(TABLE.read_text(encoding="utf-8"))


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str  # "onnxruntime" or "triton"
    version: str  # "1.20" or "24.09"
    onnxruntime: str  # the ONNX Runtime release it runs
    ir: int  # the highest IR version it loads
    opset: int  # the highest ai.onnx opset
    opset_ml: int  # the highest ai.onnx.ml opset
    note: str = ""

    def __str__(self) -> str:
        runtime = f"triton {self.version} (ONNX Runtime {self.onnxruntime})" if self.kind == "triton" else \
            f"onnxruntime {self.onnxruntime}"
        return f"{runtime}: IR <= {self.ir}, opset <= {self.opset}"


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def ort_target(version: str, kind: str = "onnxruntime", release: str | None = None, note: str = "") -> Target:
    """The limits of ONNX Runtime `version` (any patch of a release in the table)."""
    limits = table()["onnxruntime"].get(_minor(version))
    if limits is None:
        known = list(table()["onnxruntime"])
        raise OnnxpackError(f"unknown ONNX Runtime release {version}; the table covers {known[0]} to {known[-1]}",
                            hint="pass --target onnxruntime==X.Y with a release in that range")
    return Target(kind=kind, version=release or _minor(version), onnxruntime=version, ir=limits["ir"],
                  opset=limits["opset"], opset_ml=limits["opset_ml"], note=note)


def parse_target(spec: str) -> Target:
    """`onnxruntime==1.20`, `onnxruntime==1.20.1`, `triton==24.09` (or `triton==24.09-py3`)."""
    match = re.fullmatch(r"\s*(onnxruntime|triton)\s*==\s*([0-9][0-9.]*)(-py3)?\s*", spec or "")
    if not match:
        raise OnnxpackError(f"--target {spec!r} is not onnxruntime==X.Y or triton==YY.MM",
                            hint="e.g. --target onnxruntime==1.20 or --target triton==24.09")
    kind, version = match.group(1), match.group(2)
    if kind == "onnxruntime":
        return ort_target(version)
    release = table()["triton"].get(version)
    if release is None:
        known = list(table()["triton"])
        raise OnnxpackError(f"unknown Triton release {version}; the table covers {known[0]} to {known[-1]}",
                            hint="pass --target triton==YY.MM with a release in that range")
    return ort_target(release["onnxruntime"], "triton", version, release.get("note", ""))


def newest_triton() -> str:
    """The default Triton target: the newest tagged release in the table."""
    return f"triton=={[v for v, r in table()['triton'].items() if r.get('released', True)][-1]}"


@dataclasses.dataclass
class Finding:
    variant: str
    file: str
    ir: int
    opsets: dict[str, int]
    problems: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def graph_versions(path: Path) -> tuple[int, dict[str, int]]:
    """A graph's IR version and opset per domain (ai.onnx for the default ""), without its weights;
    an .ort file's from its header."""
    if ortformat.is_ort_file(path):
        header = ortformat.read_header(path)
        return header.ir_version, header.opsets
    proto = onnx.load(str(path), load_external_data=False)
    return proto.ir_version, {(o.domain or ONNX_DOMAIN): o.version for o in proto.opset_import}


def check(package: Package, target: Target) -> list[Finding]:
    """One finding per variant: what keeps the target from loading it, and what may."""
    findings = []
    for variant in package.variant_names():
        path = package.variant_path(variant)
        untrusted.trust(path, package)
        ir, opsets = graph_versions(path)
        problems, warnings = [], []
        if ir > target.ir:
            problems.append(f"IR version {ir} > {target.ir}")
        # An .ort header imports every domain the converting ONNX Runtime registers (ai.onnx.ml 5 from 1.32,
        # with no ML op in the graph), and 1.16/1.17 load such files (compat.json "ort_format"): its
        # ai.onnx opset, the source graph's, is the one that counts.
        limits = ((ONNX_DOMAIN, target.opset),) if ortformat.is_ort_file(path) else (
            (ONNX_DOMAIN, target.opset), (ML_DOMAIN, target.opset_ml))
        for domain, limit in limits:
            if opsets.get(domain, 0) > limit:
                problems.append(f"{domain} opset {opsets[domain]} > {limit}")
        made_by = package.manifest.variants.get(variant, {}).get("onnxruntime")
        if "com.microsoft" in opsets and made_by and _newer(made_by, target.onnxruntime):
            warnings.append(f"fused com.microsoft ops from ONNX Runtime {made_by}'s optimizer may be missing "
                            f"in {target.onnxruntime}; run `onnxpack optimize` with that release, or ship fp32")
        if ortformat.is_ort_file(path):
            _check_ort_format(ortformat.format_version(path), target, problems, warnings)
        if target.note:
            warnings.append(target.note)
        findings.append(Finding(variant, path.name, ir, opsets, problems, warnings))
    return findings


def ort_formats(release: str) -> dict[str, Any]:
    """{"writes": N, "reads": [...], "limited": [...]}: the ORT format versions ONNX Runtime `release` reads."""
    rows = table()["ort_format"]["onnxruntime"]
    row = rows.get(_minor(release))
    if row is None:
        known = list(rows)
        raise OnnxpackError(f"the table has no ORT format versions for ONNX Runtime {release}; it covers "
                            f"{known[0]} to {known[-1]}", hint="pass --target onnxruntime==X.Y with a release in that range")
    return row


def _check_ort_format(version: int, target: Target, problems: list[str], warnings: list[str]) -> None:
    """An .ort file's format version against what the target's ONNX Runtime reads."""
    formats = ort_formats(target.onnxruntime)
    if version in formats["reads"]:
        return
    if version in formats.get("limited", []):
        warnings.append(f"ORT format v{version} has only limited support in ONNX Runtime {target.onnxruntime} "
                        f"(it writes v{formats['writes']}); re-export with `onnxpack export-mobile`")
    elif version > formats["writes"]:
        problems.append(f"ORT format v{version} > v{formats['writes']}, the newest ONNX Runtime "
                        f"{target.onnxruntime} reads: re-export with an onnxruntime that writes "
                        f"v{formats['writes']} (`pip install onnxruntime=={_minor(target.onnxruntime)}.*`, then "
                        "`onnxpack export-mobile`), or update the target")
    else:
        problems.append(f"ORT format v{version} is older than ONNX Runtime {target.onnxruntime} reads "
                        f"(v{', v'.join(map(str, formats['reads']))}): re-export with `onnxpack export-mobile`")


def require(package: Package, target: Target, variant: str = FP32) -> None:
    """Refuse, before anything is written, a variant the target cannot load, naming the opset to export with."""
    for finding in check(package, target):
        if finding.variant == variant and not finding.ok:
            hint = ("re-export it with `onnxpack export-mobile` under an onnxruntime the target reads, or pick a newer "
                    "target") if ortformat.is_ort_file(finding.file) else export_hint(target)
            raise OnnxpackError(f"{target} cannot load {finding.variant} ({finding.file}): "
                                f"{'; '.join(finding.problems)}", hint=hint)


def export_hint(target: Target) -> str:
    return (f"re-export with `onnxpack export --opset {min(target.opset, 18)} --target "
            f"{target.kind}=={target.version}` (the torchscript exporter writes IR 8), or pick a newer target")


def check_export(opset: int, target: Target) -> None:
    """`export --target`: refuse an opset the target cannot load before exporting anything."""
    if opset > target.opset:
        raise OnnxpackError(f"opset {opset} is newer than {target} loads", hint=export_hint(target))


def check_graph(ir: int, opsets: dict[str, int], target: Target) -> None:
    """`export --target`: refuse the exported graph (before the package is written) if the target cannot load it."""
    if ir > target.ir or opsets.get(ONNX_DOMAIN, 0) > target.opset:
        raise OnnxpackError(f"the exported graph (IR {ir}, opset {opsets.get(ONNX_DOMAIN)}) is newer than {target} loads",
                            hint=export_hint(target))


def _newer(a: str, b: str) -> bool:
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", v)[:3])
    return key(a) > key(b)
