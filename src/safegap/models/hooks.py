"""Minimal, always-removed forward hooks on decoder layers (in the spirit of baukit's nethook).

A decoder layer returns a Tensor in transformers 5.x and a tuple ``(hidden, ...)`` in older
versions and some architectures; every hook here goes through :func:`layer_hidden` and
:func:`replace_layer_hidden` so both shapes work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

#: ``fn(layer_index, hidden) -> new hidden or None`` (None keeps the output as it is).
LayerHookFn = Callable[[int, torch.Tensor], torch.Tensor | None]


def layer_hidden(output: Any) -> torch.Tensor:
    """The residual-stream tensor of a decoder layer's output (Tensor or tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"unsupported decoder-layer output type {type(output).__name__}")


def replace_layer_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """The same output structure with its residual-stream tensor replaced."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise TypeError(f"unsupported decoder-layer output type {type(output).__name__}")


@dataclass
class HookHandle:
    """Removable group of hooks; removing twice is harmless."""

    handles: list[RemovableHandle] = field(default_factory=list)

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def add_layer_hooks(layers: nn.ModuleList, fn: LayerHookFn, indices: Sequence[int]) -> HookHandle:
    """Register ``fn`` on the outputs of ``layers[i]`` for each ``i`` in ``indices``."""
    handle = HookHandle()
    try:
        for index in indices:

            def hook(_module: nn.Module, _args: Any, output: Any, _i: int = index) -> Any:
                new = fn(_i, layer_hidden(output))
                return None if new is None else replace_layer_hidden(output, new)

            handle.handles.append(layers[index].register_forward_hook(hook))
    except Exception:
        handle.remove()
        raise
    return handle


@contextmanager
def layer_hooks(layers: nn.ModuleList, fn: LayerHookFn, indices: Sequence[int]) -> Iterator[HookHandle]:
    """Context-manager form of :func:`add_layer_hooks`; hooks are removed even on error."""
    handle = add_layer_hooks(layers, fn, indices)
    try:
        yield handle
    finally:
        handle.remove()
