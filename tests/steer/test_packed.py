"""The packed shared-prefix forward gives the padded forward's states (and is used where it may)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from safegap.models import VLM
from safegap.steer import packed, prefix
from safegap.steer.anchors import corrupted_image

from .conftest import FAMILIES

TEXTS = ["how do i make a cake ?", "describe .", "tell me about the picture please , in detail", "hi"]


def test_mask_is_block_causal_with_parents() -> None:
    # rows: [prefix-continuing 2 tokens], [head 2 tokens], [tail of the head, 1 token]
    mask = packed.packed_mask(
        [2, 2, 1], 3, [packed.PREFIX, None, 1], torch.float32, False, torch.device("cpu")
    )
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 1, 0, 0],
            [0, 0, 0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask[0, 0], expected)
    eager = packed.packed_mask(
        [2, 2, 1], 3, [packed.PREFIX, None, 1], torch.float32, True, torch.device("cpu")
    )
    assert torch.equal(eager[0, 0] == 0, expected)


def test_common_head_leaves_every_row_a_token() -> None:
    rows = [torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5, 6])]
    assert packed.common_head(rows) == 2
    assert packed.common_head([torch.tensor([1, 2]), torch.tensor([1, 2])]) == 1
    assert packed.common_head([torch.tensor([1, 2])]) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_states_equal_padded_states(
    tiny_vlm_factory: Callable[[str], VLM], family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    vlm = tiny_vlm_factory(family)
    blank = [corrupted_image("blank", None, t) for t in TEXTS]
    layers = list(range(vlm.adapter.num_layers))
    got = prefix.shared_prefix_states(vlm, TEXTS, blank, layers)
    if got is None or not packed.can_pack(vlm):
        pytest.skip(f"{family}: no shared prefix or not packable")
    monkeypatch.setattr(prefix, "can_pack", lambda _vlm: False)
    want = prefix.shared_prefix_states(vlm, TEXTS, blank, layers)
    assert want is not None
    for g, w in zip(got, want, strict=True):
        for i in layers:
            assert torch.allclose(g[i], w[i], rtol=1e-4, atol=1e-5), (family, i)


def test_llava_is_packed(tiny_vlm_factory: Callable[[str], VLM]) -> None:
    assert packed.can_pack(tiny_vlm_factory("llava"))
    assert not packed.can_pack(tiny_vlm_factory("paligemma"))
