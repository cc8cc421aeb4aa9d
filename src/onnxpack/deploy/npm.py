"""npm packages that onnxpack runs or ships outside Python (onnxruntime-node for `check`, onnxruntime-web
and tokenizers.js for `export-web`), installed once into the user's cache, never into the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from onnxpack.core.atomic import AtomicDir
from onnxpack.core.errors import OnnxpackError

INSTALL_TIMEOUT_S = 600


def cache_home(name: str, env_var: str) -> Path:
    """Where an npm set-up lives: $env_var, else `<user cache>/onnxpack/<name>`."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onnxpack" / name
    return Path(os.environ.get(env_var, default))


def installed(home: Path, package: str) -> bool:
    return (home / "node_modules" / package / "package.json").is_file()


def version(home: Path, package: str) -> str:
    return json.loads((home / "node_modules" / package / "package.json").read_text(encoding="utf-8"))["version"]


def install(home: Path, specs: Sequence[str], env: Mapping[str, str] | None = None) -> Path:
    """npm install `specs` ("name@range") into `home`, atomically: a folder built beside it and renamed
    into place, so a run killed halfway leaves no half-installed folder that looks complete."""
    if shutil.which("npm") is None:
        raise OnnxpackError("npm is not installed", hint="install Node.js and npm (e.g. apt-get install nodejs npm)")
    with AtomicDir(home, force=True) as tmp:
        try:
            result = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(tmp), *specs],
                                    env={**os.environ, **(env or {})}, capture_output=True, text=True,
                                    timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise OnnxpackError(f"npm install {' '.join(specs)} did not finish within {INSTALL_TIMEOUT_S} s",
                                hint="check that npm can reach its registry") from None
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise OnnxpackError(f"npm install {' '.join(specs)} failed: {last}", hint="check that npm can reach its registry")
    return home
