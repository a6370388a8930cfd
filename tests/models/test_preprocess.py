"""Image preprocessing over threads: the same inputs as one processor call, for every family."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from safegap.data.images import noise_image
from safegap.models import VLM
from safegap.models.preprocess import (
    MIN_CHUNK,
    WORKERS_ENV,
    ChunkedImageProcessor,
    default_workers,
    map_in_threads,
    with_chunked_images,
)
from safegap.testing import FAMILIES as TINY_FAMILIES

FAMILIES = sorted(TINY_FAMILIES)
N_ROWS = 2 * MIN_CHUNK  # the fewest images that are split


def build(vlm: VLM, workers: int, texts: list[str], images: list[Image.Image]) -> Any:
    adapter = vlm.adapter
    default = adapter.encoder
    adapter.encoder = with_chunked_images(adapter.processor, workers)
    try:
        return vlm.build_inputs(texts, images), adapter.image_processor
    finally:
        adapter.encoder = default


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sizes", ["same", "mixed"])
def test_chunked_preprocessing_builds_the_same_inputs(
    tiny_vlm: Callable[[str], VLM], family: str, sizes: str
) -> None:
    vlm = tiny_vlm(family)
    shapes = [(40, 30)] if sizes == "same" else [(40, 30), (24, 56), (96, 20)]
    texts = [f"describe image {i} ." for i in range(N_ROWS)]
    images = [noise_image(shapes[i % len(shapes)], seed=i) for i in range(N_ROWS)]
    serial, _ = build(vlm, 1, texts, images)
    chunked, image_processor = build(vlm, 2, texts, images)
    assert sorted(chunked.keys()) == sorted(serial.keys())
    for key in serial:
        assert torch.equal(torch.as_tensor(chunked[key]), torch.as_tensor(serial[key])), key
    if isinstance(image_processor, ChunkedImageProcessor) and family == "llava" and sizes == "same":
        assert image_processor.per_image is True, "the CLIP processor's batch was not split"


def test_processors_without_per_image_outputs_are_found_out_once(tiny_vlm: Callable[[str], VLM]) -> None:
    vlm = tiny_vlm("qwen2_vl")  # patches of all images flattened together
    texts = [f"describe image {i} ." for i in range(N_ROWS)]
    images = [noise_image((40, 30), seed=i) for i in range(N_ROWS)]
    _, image_processor = build(vlm, 2, texts, images)
    assert isinstance(image_processor, ChunkedImageProcessor) and image_processor.per_image is False


class Recording:
    """A fake image processor: one row per image (its mean), and which threads ran it."""

    def __init__(self, per_image_rows: int = 1) -> None:
        self.threads: set[str] = set()
        self.calls: list[int] = []
        self.rows = per_image_rows
        self.crop_size = {"height": 3}

    def __call__(self, images: list[Image.Image], **kwargs: Any) -> dict[str, torch.Tensor]:
        self.threads.add(threading.current_thread().name)
        self.calls.append(len(images))
        values = torch.tensor([float(np.asarray(img).mean()) for img in images])
        return {
            "pixel_values": values.repeat_interleave(self.rows)[:, None],
            "sizes": np.ones((len(images) * self.rows, 2)),
        }


def test_chunks_are_joined_in_order_and_attributes_pass_through() -> None:
    inner = Recording()
    images = [noise_image((8, 8), seed=i) for i in range(3 * MIN_CHUNK)]
    chunked = ChunkedImageProcessor(inner, workers=3)
    out = chunked(images, return_tensors="pt")
    assert torch.equal(out["pixel_values"], inner(images)["pixel_values"])
    assert out["sizes"].shape == (len(images), 2)
    assert inner.calls[:3] == [MIN_CHUNK] * 3 and chunked.per_image is True
    assert chunked.crop_size == {"height": 3}


def test_small_batches_and_other_call_forms_go_to_the_processor_whole() -> None:
    inner = Recording()
    chunked = ChunkedImageProcessor(inner, workers=4)
    chunked([noise_image((8, 8), seed=i) for i in range(2 * MIN_CHUNK - 1)])
    chunked([[noise_image((8, 8))] for _ in range(2 * MIN_CHUNK)])  # nested: one list per sample
    assert inner.calls == [2 * MIN_CHUNK - 1, 2 * MIN_CHUNK] and chunked.per_image is None


def test_outputs_not_per_image_fall_back_to_one_call_from_then_on() -> None:
    inner = Recording(per_image_rows=2)
    chunked = ChunkedImageProcessor(inner, workers=2)
    images = [noise_image((8, 8), seed=i) for i in range(2 * MIN_CHUNK)]
    first = chunked(images)
    assert chunked.per_image is False and torch.equal(first["pixel_values"], inner(images)["pixel_values"])
    inner.calls.clear()
    chunked(images)
    assert inner.calls == [2 * MIN_CHUNK]


def test_map_in_threads_keeps_order_and_raises_like_the_loop() -> None:
    assert map_in_threads(lambda x: x * x, list(range(20)), workers=4) == [x * x for x in range(20)]

    def fail_on_three(x: int) -> int:
        if x == 3:
            raise KeyError("three")
        return x

    with pytest.raises(KeyError, match="three"):
        map_in_threads(fail_on_three, list(range(8)), workers=2)


def test_map_in_threads_inside_its_own_threads_runs_there() -> None:
    def inner(x: int) -> list[int]:
        return map_in_threads(lambda y: y + x, list(range(3)), workers=2)

    # every pool thread busy with an outer item that maps again: would hang if it waited on the pool
    assert map_in_threads(inner, list(range(16)), workers=2) == [[x, x + 1, x + 2] for x in range(16)]


def test_workers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKERS_ENV, "1")
    assert default_workers() == 1
    processor = type("P", (), {"image_processor": Recording()})()
    assert with_chunked_images(processor) is processor
    for bad in ("0", "two"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(ValueError, match=WORKERS_ENV):
            default_workers()
    monkeypatch.delenv(WORKERS_ENV)
    assert 1 <= default_workers() <= 8
