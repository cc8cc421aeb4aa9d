"""cli/app.py and the panels: every command has help, every option's default is its config field's,
the one comma-list type, results on stdout and logs on stderr, and the torch side named when absent."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from onnxpack.cli import app
from onnxpack.core import config as options
from onnxpack.core.errors import OnnxpackError

COMMANDS = sorted(typer.main.get_command(app).commands)
# Which options class each command's options come from (options without a field are the command's own).
CONFIGS = {"train": options.TrainConfig, "export": options.ExportConfig, "verify": options.VerifyConfig,
           "predict": options.PredictConfig, "optimize": options.OptimizeConfig, "bench": options.BenchConfig,
           "batch": options.BatchConfig, "serve": options.ServeConfig, "export-serving": options.ServingConfig,
           "monitor": options.MonitorConfig, "check": options.CheckConfig, "inspect": options.InspectConfig,
           "graph": options.GraphConfig, "profile": options.ProfileConfig, "explain": options.ExplainConfig,
           "diff": options.DiffConfig, "export-web": options.ExportWebConfig}
PIPELINE = ["train", "export", "verify", "demo", "optimize", "bench", "check", "export-web", "export-mobile",
            "export-serving", "thresholds",
            "predict", "batch", "serve", "monitor", "providers", "inspect", "explain", "graph", "profile", "view",
            "diff", "mlflow"]  # Typer lists command groups (mlflow: ship's) after the commands


def test_the_commands_are_the_pipeline_in_order():
    assert COMMANDS == sorted(PIPELINE)
    assert list(typer.main.get_command(app).commands) == PIPELINE


@pytest.mark.parametrize("command", PIPELINE)
def test_every_command_has_help(runner, command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.stdout and command in result.stdout


def test_the_help_panels_follow_the_pipeline(runner):
    text = runner.invoke(app, ["--help"]).stdout
    panels = [text.index(name) for name in ("build: train and package (onnxpack[train])", "ship:", "run:", "look:")]
    assert panels == sorted(panels)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_option_default_is_its_config_field(command):
    fields = options.defaults(CONFIGS[command])
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    shared = set(params) & set(fields)
    assert len(shared) >= 2, f"{command} reads no options from {CONFIGS[command].__name__}"
    for name in shared:
        param, field = params[name], fields[name]
        # a list option shows its default as the comma-separated text it would parse
        want = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
        assert param.default == want, f"{command} --{name}: the CLI says {param.default!r}, the config {want!r}"
        assert param.help and param.help.replace("\\[", "[") == field.metadata["help"]


def test_serve_config_grpc_default_is_the_cli_default():
    """The drift that made a library user's server have no gRPC: one default now."""
    params = {p.name: p for p in typer.main.get_command(app).commands["serve"].params}
    assert params["grpc_port"].default == options.ServeConfig().grpc_port == 8001


@pytest.mark.parametrize(("args", "message"), [
    (["bench", "PKG", "--batch-sizes", "1,,8"], "error: --batch-sizes has an empty item in '1,,8'"),
    (["bench", "PKG", "--variants", "a,,b"], "error: --variants has an empty item in 'a,,b'"),
    (["optimize", "PKG", "--variants", "a,,b"], "error: --variants has an empty item in 'a,,b'"),
    (["train", "--out", "OUT", "--labels", "a,,b"], "error: --labels has an empty item in 'a,,b'"),
    (["bench", "PKG", "--seq-lens", "16,x"], "error: --seq-lens takes integers separated by commas, got '16,x'"),
    (["batch", "PKG", "--input", "i", "--output", "o", "--pair-columns", "a,b,c"],
     "error: --pair-columns takes 2 comma-separated items, got 'a,b,c'"),
])
def test_one_comma_list_type_for_every_option(runner, tmp_path, args, message):
    args = [str(tmp_path / a) if a in ("PKG", "OUT") else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message)
    assert not (tmp_path / "OUT").exists()


@pytest.mark.parametrize(("args", "config", "message"), [
    (["optimize", "PKG", "--max-mcc-drop", "2"], options.OptimizeConfig(max_mcc_drop=2.0),
     "--max-mcc-drop must be between 0 and 1, got 2.0"),
    (["bench", "PKG", "--threads", "0"], options.BenchConfig(threads=0), "--threads must be at least 1, got 0"),
    (["serve", "PKG", "--grpc-port", "70000"], options.ServeConfig(grpc_port=70000),
     "--grpc-port must be between 0 and 65535, got 70000"),
    (["profile", "PKG", "--out", "p.html", "--runs", "0"], options.ProfileConfig(runs=0), "--runs must be at least 1, got 0"),
])
def test_an_option_out_of_range_is_the_same_line_from_the_cli_and_from_python(runner, tmp_path, args, config, message):
    args = [str(tmp_path / a) if a == "PKG" else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and result.stderr.strip() == f"error: {message}"
    with pytest.raises(OnnxpackError) as e:
        config.validate()
    assert str(e.value) == message


@pytest.mark.timeout(300)
def test_results_go_to_stdout_and_logs_to_stderr(package_copy, small_cola):
    """`onnxpack verify PKG > out.txt` captures the table; the data log line stays on stderr."""
    result = subprocess.run([sys.executable, "-m", "onnxpack", "verify", str(package_copy), "--data", str(small_cola)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "parity on 64 validation rows" in result.stdout and "passed" in result.stdout
    assert "data:" in result.stderr and "data:" not in result.stdout


# Run first in a child: the model frameworks cannot be imported, as on a plain `pip install onnxpack`.
WITHOUT_TORCH = """
import importlib.util, sys
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in ("torch", "lightning", "transformers", "torchmetrics") else _find(name, *a)
from onnxpack.cli import main
sys.argv = ["onnxpack", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("command", ["train --out RUN", "export CKPT --out PKG", "verify PKG", "demo --out RUN"])
def test_torch_side_commands_name_the_extra_without_it(tmp_path, command):
    args = [str(tmp_path / a) if a in ("RUN", "PKG", "CKPT") else a for a in command.split()]
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "onnxpack[train]" in lines[0] and lines[0].startswith("error: "), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_args_shows_help(runner):
    result = runner.invoke(app, [])
    assert "Usage: " in result.output and "build: train and package" in result.output
    assert "error:" not in result.output
