"""Decoder-layer hooks work for layers returning a Tensor (transformers 5) or a tuple (older
versions and some architectures), and are always removed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from safegap.models.hooks import add_layer_hooks, layer_hidden, layer_hooks, replace_layer_hidden


class TupleLayer(nn.Module):
    """Returns ``(hidden, attention_weights)`` like a transformers 4.x decoder layer."""

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden * 2, torch.ones(1)


class TensorLayer(nn.Module):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + 1


def run(layers: nn.ModuleList, x: torch.Tensor) -> Any:
    out: Any = x
    for layer in layers:
        out = layer(out if isinstance(out, torch.Tensor) else out[0])
    return out


@pytest.mark.parametrize("layer_cls", [TupleLayer, TensorLayer])
def test_hook_reads_and_replaces_the_residual_stream(layer_cls: type[nn.Module]) -> None:
    layers = nn.ModuleList([layer_cls(), layer_cls()])
    x = torch.zeros(1, 3, 4)
    plain = run(layers, x)
    seen: list[torch.Tensor] = []

    def shift(index: int, hidden: torch.Tensor) -> torch.Tensor:
        seen.append(hidden.clone())
        return hidden + 10

    with layer_hooks(layers, shift, [0]):
        shifted = run(layers, x)
    assert len(seen) == 1 and torch.equal(seen[0], layer_hidden(layers[0](x)))
    expected = layer_hidden(layers[1](layer_hidden(layers[0](x)) + 10))
    assert torch.equal(layer_hidden(shifted), expected)
    if isinstance(plain, tuple):
        assert isinstance(shifted, tuple) and torch.equal(shifted[1], plain[1]), "extra outputs are kept"
    assert torch.equal(layer_hidden(run(layers, x)), layer_hidden(plain)), "hook removed"
    assert all(not layer._forward_hooks for layer in layers)


def test_returning_none_keeps_the_output() -> None:
    layers = nn.ModuleList([TupleLayer()])
    x = torch.ones(1, 2, 4)
    with layer_hooks(layers, lambda i, h: None, [0]):
        out = layers[0](x)
    assert torch.equal(out[0], x * 2)


def test_hooks_are_removed_when_the_forward_raises() -> None:
    layers = nn.ModuleList([TupleLayer(), TensorLayer()])

    def boom(index: int, hidden: torch.Tensor) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), layer_hooks(layers, boom, [0, 1]):
        run(layers, torch.zeros(1, 1, 2))
    assert all(not layer._forward_hooks for layer in layers)


def test_a_bad_index_registers_nothing() -> None:
    layers = nn.ModuleList([TensorLayer(), TensorLayer()])
    with pytest.raises(IndexError):
        add_layer_hooks(layers, lambda i, h: None, [0, 5])
    assert all(not layer._forward_hooks for layer in layers)


def test_output_structures() -> None:
    h = torch.zeros(2)
    new = torch.ones(2)
    assert replace_layer_hidden(h, new) is new
    assert replace_layer_hidden((h, "cache"), new) == (new, "cache")
    assert replace_layer_hidden([h, "cache"], new) == [new, "cache"]
    assert layer_hidden([h, 1]) is h
    with pytest.raises(TypeError, match="unsupported decoder-layer output"):
        layer_hidden("text")
    with pytest.raises(TypeError, match="unsupported decoder-layer output"):
        replace_layer_hidden({"x": h}, new)
