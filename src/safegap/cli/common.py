"""Helpers shared by the command modules: one-line errors and a non-zero exit.

Every error a user can cause ends as exactly one ``error: ...`` line and exit status 2, whether
it is raised by a command (:func:`user_errors`) or by option parsing (:class:`OneLineGroup`,
which also prints Typer's range and usage errors on one line). Messages are passed through
:func:`safegap.errors.redact`, so a credential inside a URL never reaches the terminal.
SIGINT and SIGTERM raise :class:`Interrupted`, which a command may turn into a line saying what
was saved; otherwise the group prints a generic one.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer._click.exceptions import NoArgsIsHelpError
from typer.core import TyperGroup
from typer.exceptions import Abort, TyperException

from safegap.errors import first_line, redact

console = Console(stderr=True)
T = TypeVar("T")

#: Exceptions that mean bad input or environment (never a bug): one line, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    KeyError,
    OSError,
    TypeError,
    pickle.UnpicklingError,
)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, so no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def print_error(message: str) -> None:
    """One ``error: ...`` line (first line of ``message`` only, credentials redacted)."""
    text = redact(message.strip().splitlines()[0] if message.strip() else "failed")
    console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on one line and return the exit to raise."""
    print_error(message)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected user-facing errors into one line and exit status 2 (no traceback)."""
    try:
        yield
    except USER_ERRORS as exc:
        raise fail(first_line(exc)) from exc


def run_cli(fn: Callable[[], T]) -> T:
    with user_errors():
        return fn()


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread while the CLI runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


class OneLineGroup(TyperGroup):
    """The root command group: usage, range and command errors as one ``error:`` line."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code: int = 0
        try:
            with signals_as_exceptions():
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except NoArgsIsHelpError as exc:
            typer.echo(exc.format_message())
            code = exc.exit_code
        except TyperException as exc:
            print_error(exc.format_message())
            code = exc.exit_code
        except Abort:
            print_error("aborted")
            code = 1
        except Interrupted as exc:
            print_error(f"interrupted by {exc}; nothing more was done")
            code = exc.exit_code
        except USER_ERRORS as exc:  # a command that did not wrap its own errors
            print_error(first_line(exc))
            code = 2
        except Exception as exc:
            if os.environ.get("SAFEGAP_DEBUG"):
                raise
            print_error(f"unexpected {type(exc).__name__}: {first_line(exc)} (SAFEGAP_DEBUG=1 shows where)")
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code)
