"""The ``nlbench`` command line: thin typer commands over library functions.

User mistakes (an unknown name, an impossible rate, a missing file) print one line on stderr and exit with
code 2, never a traceback. Each command module adds its commands to :data:`app`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

# typer vendors click; its usage errors subclass TyperException and carry format_message() and ctx.
from typer.exceptions import Abort as _Abort
from typer.exceptions import TyperException as _UsageFailure

import nlbench
from nlbench.errors import NLBenchError

app = typer.Typer(
    name="nlbench",
    help="Benchmark methods for learning with noisy labels.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
)
# Off a terminal rich would wrap at 80 columns and truncate matrices; logs can be wide.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on one line of stderr; return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True) if err_console.is_terminal else \
        print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn :class:`NLBenchError` into one line and exit code 2."""
    try:
        yield
    except NLBenchError as e:
        raise fail(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _version(value: bool) -> None:
    if value:
        print(f"nlbench {nlbench.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Benchmark methods for learning with noisy labels."""


def main() -> None:
    """Console entry point: usage errors also become one line and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except _Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except _UsageFailure as e:
        msg = e.format_message().replace("\n", " ")
        hint = f" (see '{e.ctx.command_path} -h')" if getattr(e, "ctx", None) is not None else ""
        print(f"error: {msg}{hint}", file=sys.stderr)
        sys.exit(2)
    except NLBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


from nlbench.cli import core, grid, phases  # noqa: E402,F401  (registers the commands)

__all__ = ["app", "console", "err_console", "fail", "main", "user_errors"]
