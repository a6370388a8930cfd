"""Shared checks that turn bad input into one clear message instead of a wrong result or a traceback.

:class:`UserError` is what the CLI prints as one ``error: ...`` line with exit status 2 (it is a
``ValueError``, so library callers that catch those keep working). The helpers are the one place
each kind of check lives: finite floats, UTF-8 files (the error names the file, line and byte
offset) and credentials inside URLs (never printed or written).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

__all__ = [
    "UserError",
    "decode_utf8",
    "finite_float",
    "first_line",
    "read_text",
    "redact",
    "split_credentials",
]


class UserError(ValueError):
    """A bad input or environment the user can fix; the CLI prints it as one line, exit 2."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def finite_float(value: str | float, what: str) -> float:
    """``value`` as a finite float; NaN or infinity would silently break every generation."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise UserError(f"{what}={value!r} must be a finite number")
    return number


def utf8_error_where(data: bytes, exc: UnicodeDecodeError) -> str:
    """``line L, byte offset B`` of the first undecodable byte in the whole of ``data``."""
    line = data.count(b"\n", 0, exc.start) + 1
    return f"line {line}, byte offset {exc.start}"


def decode_utf8(data: bytes, source: str | Path) -> str:
    """``data`` as UTF-8 text (a leading BOM dropped), or a :class:`UserError` naming ``source``."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{source}: not UTF-8 (invalid byte 0x{data[exc.start]:02x} at {utf8_error_where(data, exc)})"
        ) from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (BOM dropped); the error for any other encoding names the file and line."""
    target = Path(path)
    return decode_utf8(target.read_bytes(), target)


_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL replaced by ``***@``."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}***@", text)


def split_credentials(url: str) -> tuple[str, str | None]:
    """``(url without user:password@, "user:password" or None)``."""
    match = _CREDENTIALS.match(url.strip())
    if match is None:
        return url, None
    return url.strip()[: match.end("scheme")] + url.strip()[match.end() :], match["userinfo"] or None
