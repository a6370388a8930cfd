"""Helpers shared by the command modules: one-line errors and a non-zero exit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console

console = Console(stderr=True)
T = TypeVar("T")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on one line and return the exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected user-facing errors into one line and exit status 2 (no traceback)."""
    try:
        yield
    except (ValueError, FileNotFoundError, KeyError, OSError, TypeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise fail(message) from exc


def run_cli(fn: Callable[[], T]) -> T:
    with user_errors():
        return fn()
