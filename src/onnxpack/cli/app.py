"""The `onnxpack` app and what every command shares: the one-line error edge, the two consoles,
and options read from core.config (each default and help text is written there, once).

Results and tables go to stdout; logs, progress and notes go to stderr, for every command alike,
so `onnxpack verify PKG > out.txt` captures the table.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from typer.core import TyperGroup

from onnxpack.core.config import Options, defaults, flag, list_items
from onnxpack.core.errors import OnnxpackError

OptionsT = TypeVar("OptionsT", bound=Options)

console = Console(stderr=True)  # logs, progress, notes
stdout = Console()  # results

# The help panels, in pipeline order.
BUILD, SHIP, RUN, LOOK = ("build: train and package (onnxpack\\[train])", "ship: make it faster, check where it loads",
                          "run: answer texts", "look: inside a package")


class _Group(TyperGroup):
    """Turns a user error into one line on stderr and exit code 1; bugs keep their traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OnnxpackError as e:
            click.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train a text classifier, export it to a verified ONNX package, and run it.")


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False) -> None:
    # Our own INFO lines; other libraries' only from WARNING up (ONNX Runtime's quantizer logs
    # every tensor at INFO) unless --verbose.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    logging.getLogger("onnxpack").setLevel(logging.DEBUG if verbose else logging.INFO)


class CommaList:
    """The one comma-list option type: `a,b,c` -> a tuple of `item`s. An empty item, a wrong count or
    an item of the wrong type is one line naming the option, as every user error is."""

    def __init__(self, flag: str, item: type = str, count: int | None = None) -> None:
        self.flag, self.item, self.count = flag, item, count
        self.__name__ = f"list of {item.__name__}"  # typer names a parser's type by it

    def __call__(self, value: Any) -> tuple[Any, ...] | None:
        if value is None or isinstance(value, tuple):
            return value
        items = tuple(part.strip() for part in str(value).split(","))
        example = ",".join(["8", "32"] if self.item is int else ["0.3", "0.7"] if self.item is float else ["A", "B"])
        hint = f"pass {self.flag} {example}"
        if not all(items):
            raise OnnxpackError(f"{self.flag} has an empty item in {value!r}", hint=hint)
        if self.count is not None and len(items) != self.count:
            raise OnnxpackError(f"{self.flag} takes {self.count} comma-separated items, got {value!r}", hint=hint)
        try:
            return tuple(self.item(part) for part in items)
        except ValueError:
            kind = {int: "integers", float: "numbers"}.get(self.item, "items")
            raise OnnxpackError(f"{self.flag} takes {kind} separated by commas, got {value!r}", hint=hint) from None


def option(options: type[Options], name: str, *decls: str, **kwargs: Any) -> Any:
    """A command-line option for field `name` of an options class: its default and help from
    core.config. Tuple fields take a comma-separated list."""
    field = defaults(options)[name]
    default = field.default
    if (items := list_items(options, name)) is not None:
        kwargs.setdefault("parser", CommaList((decls or (flag(name),))[0].split("/")[0], *items))
        default = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return typer.Option(default, *decls, help=escape(field.metadata["help"]), **kwargs)


def per_label(values: tuple[float, ...], labels: int) -> list[float]:
    """Thresholds as `--threshold` and `thresholds` take them: one for every label, or one per label."""
    return list(values) * labels if len(values) == 1 else list(values)


def config_from(options: type[OptionsT], values: dict[str, Any]) -> OptionsT:
    """An options object from a command's parameters: those that are fields of it."""
    fields = defaults(options)
    return options(**{k: v for k, v in values.items() if k in fields})


def require_train_extra(command: str) -> None:
    """The torch-side commands need onnxpack[train]; without it, one line naming it, before any work."""
    missing = [m for m in ("torch", "lightning", "transformers", "torchmetrics") if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxpackError(f"`onnxpack {command}` needs the torch side, which is not installed ({', '.join(missing)} "
                            "missing)", hint="pip install 'onnxpack[train]' (install torch==2.13.0 first for the CPU build)")


def quiet_lightning() -> None:
    """Lightning sets up its own INFO handler on import (GPU/TPU lines, tips); keep warnings only."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.handlers.clear()
