"""Checks made before and while loading a checkpoint, so each failure is one line naming the item.

- :func:`check_device`: ``--device cuda:7`` on a machine without it fails before any weights load.
- :func:`allow_bin_weights`: weights load from ``*.safetensors`` only unless the user opts in
  to pickle-based ``.bin`` files (``SAFEGAP_ALLOW_BIN=1``), which torch then reads with
  ``weights_only`` (never a full unpickle of an untrusted file).
- :func:`weight_errors`: a truncated, pickled-under-another-name or otherwise unreadable weights
  file becomes a :class:`~safegap.errors.UserError` naming the checkpoint.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from safetensors import SafetensorError

from safegap.errors import UserError, first_line

ALLOW_BIN_ENV = "SAFEGAP_ALLOW_BIN"


def check_device(device: str | torch.device | None, what: str = "--device") -> torch.device | None:
    """``device`` parsed and present on this machine (``None`` stays ``None``)."""
    if device is None or isinstance(device, torch.device):
        parsed = device
    else:
        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError):
            raise UserError(
                f"{what} {device!r} is not a device (use e.g. cpu, cuda, cuda:1 or mps)"
            ) from None
    if parsed is None or parsed.type == "cpu" or parsed.type == "meta":
        return parsed
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{what} {device}: this machine has no CUDA device")
        if parsed.index is not None and parsed.index >= count:
            raise UserError(
                f"{what} {device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
            )
        return parsed
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"{what} {device}: MPS is not available on this machine")
        return parsed
    module = getattr(torch, parsed.type, None)
    available = getattr(module, "is_available", None)
    if callable(available) and available():
        return parsed
    raise UserError(f"{what} {device}: no such device on this machine")


def allow_bin_weights() -> bool:
    """Whether the user opted in to ``.bin`` (pickle) weights with ``SAFEGAP_ALLOW_BIN=1``."""
    return os.environ.get(ALLOW_BIN_ENV, "").strip().lower() in ("1", "true", "yes")


def use_safetensors() -> bool | None:
    """``use_safetensors`` for ``from_pretrained``: True (safetensors only) unless opted out."""
    return None if allow_bin_weights() else True


#: Errors a broken weights file raises while loading (safetensors has its own exception type).
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError)


@contextmanager
def weight_errors(name: str) -> Iterator[None]:
    """Any failure to read ``name``'s weights as one :class:`UserError` line naming it."""
    try:
        yield
    except UserError:
        raise
    except _LOAD_ERRORS as exc:
        message = first_line(exc)
        if "weights_only" in str(exc) or isinstance(exc, pickle.UnpicklingError):
            message = "a .bin file that torch refuses to load with weights_only (not a plain tensor file)"
        elif "no file named" in message and "safetensors" in message:
            message = (
                f"{message} (only .safetensors weights load by default; set {ALLOW_BIN_ENV}=1 to "
                "allow .bin files)"
            )
        raise UserError(f"model {name}: cannot load: {message}") from None
