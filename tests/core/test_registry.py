"""core/registry.py: lookups that name the valid choices, and every registry key has a test case."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from onnxpack.core.errors import OnnxpackError
from onnxpack.core.registry import Registry


def _registry() -> Registry[int]:
    r: Registry[int] = Registry("widget")
    r.register("beta")(2)
    r.register("alpha")(1)
    return r


def test_get_known_key():
    r = _registry()
    assert r.get("alpha") == 1 and r.get("beta") == 2
    assert "alpha" in r and "gamma" not in r
    assert r.keys() == ["alpha", "beta"]  # sorted, whatever the registration order


def test_unknown_key_lists_known_keys():
    with pytest.raises(OnnxpackError) as info:
        _registry().get("gamma")
    assert str(info.value) == "unknown widget 'gamma'; known: alpha, beta"


def test_register_is_a_decorator_returning_the_item():
    r: Registry[type] = Registry("thing")

    @r.register("k")
    class Thing:
        pass

    assert Thing is not None and r.get("k") is Thing


def test_double_registration_fails():
    r = _registry()
    with pytest.raises(ValueError, match="widget 'alpha' registered twice"):
        r.register("alpha")(3)
    assert r.get("alpha") == 1  # the first registration stands


# --- coverage: every registry key has a test case (optimum's test_all_models_tested) ---------------------------

def _module_constant(path: Path, name: str) -> tuple[str, ...]:
    """A literal tuple/list assigned at the top level of a test module, read without importing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{path.name} defines no {name}")


@pytest.mark.parametrize(("test_file", "constant", "module", "registry_name"), [
    ("pytorch/test_export.py", "EXPORTER_CASES", "onnxpack.pytorch.export", "EXPORTERS"),
    ("core/test_families.py", "FAMILY_CASES", "onnxpack.core.families", "FAMILIES"),
])
def test_every_registry_key_has_a_test(test_file, constant, module, registry_name):
    import importlib

    registry = getattr(importlib.import_module(module), registry_name)
    cases = _module_constant(Path(__file__).parent.parent / test_file, constant)
    assert len(cases) == len(set(cases)), f"{constant} repeats a key"
    assert sorted(cases) == registry.keys(), (
        f"{test_file}.{constant} must list exactly the keys of {module}.{registry_name}: "
        f"untested {sorted(set(registry.keys()) - set(cases))}, stale {sorted(set(cases) - set(registry.keys()))}")
