"""One-pass ("fast") MIR: same outlier set and, to 1e-4, the same value as the accurate definition."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from safegap.gap.collect import iter_token_batches, measure_gap
from safegap.gap.extremes import ExtremeRows, NormLog
from safegap.gap.histmedian import HistogramMedian
from safegap.gap.metrics import mir_direct, replace_outliers_direct
from safegap.gap.onepass import FastModalityStream
from safegap.gap.streaming import TokenBatch, stream_gap
from safegap.models import VLM
from safegap.organism.diagnostics import organism_records
from safegap.organism.world import World


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def llava_like(n_img: int, n_txt: int, d: int, layers: int, seed: int) -> tuple[list[torch.Tensor], ...]:
    g = gen(seed)
    spectrum = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
    image = [torch.randn(n_img, d, generator=g) * spectrum * (1 + k) + 0.3 for k in range(layers)]
    text = [torch.randn(n_txt, d, generator=g) * spectrum * 0.7 * (1 + k) for k in range(layers)]
    for k in range(layers):
        image[k][::97] *= 25
        text[k][::211] *= 25
    return image, text


def chunked(image: list[torch.Tensor], text: list[torch.Tensor], rows: int, text_rows: int):
    def source() -> Iterator[TokenBatch]:
        parts_i = [x.split(rows) for x in image]
        parts_t = [x.split(text_rows) for x in text]
        for k in range(max(len(parts_i[0]), len(parts_t[0]))):
            yield TokenBatch(
                {i: p[k] if k < len(p) else image[i][:0] for i, p in enumerate(parts_i)},
                {i: p[k] if k < len(p) else text[i][:0] for i, p in enumerate(parts_t)},
            )

    return source


def worst(got: list[float], want: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("scipy_cross", [False, True])
def test_one_pass_matches_the_accurate_definition(scipy_cross: bool) -> None:
    # enough tokens that the medians come from histograms, not from the warm-up buffer
    image, text = llava_like(6000, 2500, 48, 2, 1)
    result = stream_gap(chunked(image, text, 700, 300), [0, 1], 48)
    per_layer, mir = mir_direct(image, text, cross="scipy" if scipy_cross else "eigh")
    assert result.passes == 1 and result.mode == "fast"
    assert worst(result.mir_per_layer, per_layer) <= 1e-4
    assert abs(result.mir - mir) <= 1e-4 * abs(mir)
    for layer, x, t in zip(result.layers, image, text, strict=True):  # the outlier set is MIR's own
        assert layer.image_outliers == replace_outliers_direct(x.double())[1] > 0
        assert layer.text_outliers == replace_outliers_direct(t.double())[1] > 0


def test_more_outliers_than_the_buffer_take_a_second_pass() -> None:
    tokens = torch.randn(3000, 16, generator=gen(2)) + 0.5
    tokens[::20] *= 8  # about 140 outliers, more than the buffer holds (64)
    stream = FastModalityStream(16, capacity=(64, 8))
    for part in tokens.split(500):
        stream.update(part)
    stream.end_pass()
    assert stream.passes == 2
    for part in tokens.split(700):
        stream.update(part)
    stream.end_pass()
    summary = stream.summary()
    cleaned, replaced = replace_outliers_direct(tokens.double())
    assert summary.outliers == replaced > 64
    # the outliers' rows are out exactly; the replacement row's coordinates are within half a
    # histogram bin (about 1e-2 of a spread), weighted by the 5% of rows replaced
    assert torch.allclose(summary.mean, cleaned.mean(0), rtol=0, atol=1e-3)
    assert torch.allclose(summary.cov, torch.cov(cleaned.T), rtol=0, atol=1e-3)
    assert not torch.allclose(summary.cov, torch.cov(tokens.double().T), rtol=0, atol=1e-1)


def test_one_pass_with_float64_products_is_exact_on_a_short_stream() -> None:
    # a stream that fits the median's warm-up buffer: exact median, float64 moments
    image, text = llava_like(300, 70, 12, 2, 3)
    fast = stream_gap(chunked(image, text, 40, 9), [0, 1], 12, gemm_dtype=torch.float64)
    per_layer, _ = mir_direct(image, text)
    assert worst(fast.mir_per_layer, per_layer) <= 1e-9


def test_histogram_median_exact_then_close_then_refined() -> None:
    x = torch.randn(40_000, 6, generator=gen(4)) * torch.tensor([0.1, 1, 3, 10, 100, 1e-3]) + 5
    small = HistogramMedian(6, warmup=50_000)
    small.update(x)
    small.end_pass()
    assert torch.equal(small.values(), x.median(dim=0).values)
    big = HistogramMedian(6, warmup=1000)
    for part in x.split(3000):
        big.update(part)
    big.end_pass()
    assert big.done
    assert ((big.values() - x.median(dim=0).values).abs() / x.std(dim=0)).max() < 2e-3
    drift = torch.cat([torch.randn(2000, 3, generator=gen(5)), torch.randn(20_000, 3, generator=gen(6)) + 40])
    late = HistogramMedian(3, warmup=1000)
    for part in drift.split(1000):
        late.update(part)
    late.end_pass()
    assert late.needs_pass  # the median left the warm-up range: one more pass refines it
    for part in drift.split(1500):
        late.update(part)
    late.end_pass()
    assert ((late.values() - drift.median(dim=0).values).abs()).max() < 1e-2


def test_extreme_rows_keep_the_largest_keys() -> None:
    rows = torch.randn(500, 4, generator=gen(7))
    keys = torch.randn(500, generator=gen(8)).double()
    buffer = ExtremeRows(20, 4)
    for r, k in zip(rows.split(37), keys.split(37), strict=True):
        buffer.update(r, k)
    held, held_keys = buffer.held()
    top = torch.topk(keys, 20).indices
    assert sorted(held_keys.tolist()) == sorted(keys[top].tolist())
    order = held_keys.argsort()
    assert torch.equal(held[order], rows[top][keys[top].argsort()])
    log = NormLog(capacity=3)
    for part in keys.split(7):
        log.append(part)
    assert torch.equal(log.values, keys.float())


def test_organism_states_agree_with_the_accurate_definition(llava: VLM) -> None:
    records = organism_records(World(seed=0), "eval", 6)
    layers = list(range(llava.adapter.num_layers))
    batches = list(iter_token_batches(llava, records, layers, batch_size=4))
    image = [torch.cat([b.image[i] for b in batches]) for i in layers]
    text = [torch.cat([b.text[i] for b in batches]) for i in layers]
    per_layer, mir = mir_direct(image, text, cross="scipy")
    fast = measure_gap(llava, records, layers, batch_size=4, probe_layer=None)
    exact = measure_gap(llava, records, layers, batch_size=4, probe_layer=None, mode="exact")
    assert fast.passes == 1 and exact.passes == 3
    assert worst(fast.mir_per_layer, per_layer) <= 1e-4
    assert abs(fast.mir - mir) <= 1e-4 * abs(mir)
    assert worst(exact.mir_per_layer, per_layer) <= 1e-4
    assert fast.per_layer("image_outliers") == exact.per_layer("image_outliers")
