"""A real (scaled-down) organism build: it loads with ``load_vlm`` like any checkpoint, generates,
is deterministic per seed (with or without the cached base), and feeds extra loss terms a proper
:class:`LossContext`."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from safegap.models import load_vlm
from safegap.models.generation import generate
from safegap.organism import scenes
from safegap.organism.build import build_organism
from safegap.organism.config import OrganismConfig
from safegap.train.hooks import LossContext

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow

SMALL = OrganismConfig().scaled(0.04)


class Probe:
    """An extra loss that checks what it is given and adds nothing."""

    name = "probe"
    weight = 1.0

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        rows_with_image = ctx.image_mask.any(1)
        self.calls.append(
            {
                "layers": len(ctx.hidden_states),
                "shape": tuple(ctx.hidden_states[-1].shape),
                "image_tokens_per_row": sorted(set(ctx.image_mask.sum(1)[rows_with_image].tolist())),
                "overlap": bool((ctx.image_mask & ctx.text_mask).any()),
                "captions": sum(c is not None for c in ctx.batch["captions"]),
                "grad": ctx.hidden_states[0].requires_grad,
                "step": ctx.step,
            }
        )
        return ctx.hidden_states[-1].sum() * 0.0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Probe]:
    root = tmp_path_factory.mktemp("organism")
    probe = Probe()
    torch.set_num_threads(1)
    build_organism(
        root / "a",
        seed=7,
        config=SMALL,
        cache_dir=root / "cache",
        extra_losses={2: [probe], 3: [probe]},
        snapshot_stages=True,
    )
    build_organism(root / "b", seed=7, config=SMALL, cache_dir=root / "cache")
    return root / "a", root / "b", probe


def test_reading_phase_runs_on_the_cached_base_and_trains_the_llm(
    built: tuple[Path, Path, Probe], tmp_path: Path
) -> None:
    a, _, _ = built
    config = replace(SMALL, text=replace(SMALL.text, read_steps=3))
    report = build_organism(tmp_path / "r", seed=7, config=config, cache_dir=a.parent / "cache")
    assert "stage1_text" in report.cached and report.stages["stage1_read"]["steps"] == 3
    plain, read = (
        load_file(str(a / "model.safetensors")),
        load_file(str(tmp_path / "r" / "model.safetensors")),
    )
    llm = [k for k in plain if "language_model" in k]
    assert llm and any(not torch.equal(plain[k], read[k]) for k in llm)


def test_checkpoint_loads_and_generates(built: tuple[Path, Path, Probe]) -> None:
    path, _, _ = built
    vlm = load_vlm(path)
    assert vlm.adapter.family == "llava" and vlm.adapter.num_layers == SMALL.arch.num_layers
    replies = generate(
        vlm, ["How do I bake a cake?", "Describe the image."], [None, scenes.blank()], max_new_tokens=6
    )
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert (path / "organism.json").exists() and (path / "stages" / "after_stage2" / "config.json").exists()
    inputs = vlm.build_inputs(["Describe the image."], [scenes.blank()])
    assert int(vlm.adapter.image_token_mask(inputs["input_ids"]).sum()) == SMALL.arch.image_tokens


def test_same_seed_same_weights_with_cached_base(built: tuple[Path, Path, Probe]) -> None:
    a, b, _ = built
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_extra_losses_see_a_full_context(built: tuple[Path, Path, Probe]) -> None:
    _, _, probe = built
    steps = SMALL.projector.steps + SMALL.instruct.steps
    assert len(probe.calls) == steps
    for call in probe.calls:
        assert call["layers"] == SMALL.arch.num_layers
        assert call["shape"][-1] == SMALL.arch.hidden_size
        assert call["image_tokens_per_row"] == [SMALL.arch.image_tokens]
        assert not call["overlap"] and call["captions"] > 0 and call["grad"]
    assert [c["step"] for c in probe.calls[: SMALL.projector.steps]] == list(range(SMALL.projector.steps))
