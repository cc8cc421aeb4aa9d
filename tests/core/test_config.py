"""core/config.py: the one validation of every stage's options (types, then limits), and options
from a mapping such as a YAML file's."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from onnxpack.core import config
from onnxpack.core.config import (
    BatchConfig,
    BenchConfig,
    OptimizeConfig,
    Options,
    ServeConfig,
    ServingConfig,
    TrainConfig,
    option,
)
from onnxpack.core.errors import OnnxpackError

ALL = [c for c in vars(config).values() if isinstance(c, type) and issubclass(c, Options) and c is not Options]


def test_the_module_imports_the_standard_library_only():
    code = ("import sys; before = set(sys.modules); import onnxpack.core.config; "
            "third = {m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names) - {'onnxpack'}; "
            "assert not third, third")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_field_has_help_and_valid_default(cls):
    cls().validate()
    for field in dataclasses.fields(cls):
        assert field.metadata.get("help", "").strip(), f"{cls.__name__}.{field.name} has no help text"


@pytest.mark.parametrize(("options", "message"), [
    (BenchConfig(threads=0), "--threads must be at least 1, got 0"),
    (BenchConfig(batch_sizes=(1, 0)), "--batch-sizes must be at least 1, got 0"),
    (BenchConfig(batch_sizes=[1, "8"]), "--batch-sizes must be a list of integers, got [1, '8']"),
    (OptimizeConfig(min_agreement=1.5), "--min-agreement must be between 0 and 1, got 1.5"),
    (OptimizeConfig(calibration_rows=8), "--calibration-rows must be at least 16, got 8"),
    (OptimizeConfig(variants=()), "no variants asked for"),
    (OptimizeConfig(per_channel=1), "--per-channel must be true or false, got 1"),
    (ServeConfig(max_delay_ms=-1), "--max-delay-ms must be at least 0, got -1"),
    (ServeConfig(grpc_port=65536), "--grpc-port must be between 0 and 65535, got 65536"),
    (ServeConfig(max_batch=True), "--max-batch must be an integer, got True"),
    (BatchConfig(pair_columns=("a",)), "--pair-columns must be two texts or null, got ('a',)"),
    (BatchConfig(text_column=3), "--text-column must be text or null, got 3"),
    (ServingConfig(model_backend="tf"), "unknown model backend 'tf'; known: onnxruntime, python"),
    (TrainConfig(lr="2e-5"), "--lr must be a number, got the text '2e-5'"),
    (TrainConfig(limit_train_batches=-2), "--limit-train-batches must be above 0, got -2"),
])
def test_validate_names_the_option_the_rule_and_the_value(options, message):
    with pytest.raises(OnnxpackError) as e:
        options.validate()
    assert e.value.message == message


def test_an_int_is_a_number_and_a_float_is_not_an_int():
    TrainConfig(lr=1, limit_train_batches=60).validate()  # 60 batches, or 1.0 of the epoch
    with pytest.raises(OnnxpackError, match="--epochs must be an integer, got 2.0"):
        TrainConfig(epochs=2.0).validate()


def test_from_mapping_names_the_key():
    with pytest.raises(OnnxpackError) as e:
        TrainConfig.from_mapping({"lr": "2e-5"}, "config c.yaml")
    assert str(e.value) == "config c.yaml: key lr must be a number, got the text '2e-5'"
    with pytest.raises(OnnxpackError, match=r"config c.yaml has unknown keys \['lrr'\]; known: "):
        TrainConfig.from_mapping({"lrr": 1}, "config c.yaml")
    with pytest.raises(OnnxpackError, match="config c.yaml is not a mapping of TrainConfig fields"):
        TrainConfig.from_mapping(["lr"], "config c.yaml")
    assert TrainConfig.from_mapping({"labels": ["a", "b"]}, "x").labels == ("a", "b")


def test_a_subclass_gets_the_generic_checks_from_its_metadata():
    @dataclasses.dataclass
    class Tiny(Options):
        share: float = option(0.5, "A share.", min=0, max=1)
        name: str | None = option(None, "A name.")

    Tiny().validate()
    with pytest.raises(OnnxpackError, match="--share must be between 0 and 1, got 2"):
        Tiny(share=2).validate()
    with pytest.raises(OnnxpackError, match="--name must be text or null, got 5"):
        Tiny(name=5).validate()
