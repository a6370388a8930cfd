"""ShiftVector: arithmetic, provenance, safetensors round trip and model-fit checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import safegap
from safegap.models import VLM
from safegap.steer import Provenance, ShiftVector


def make(values: dict[int, list[float]], **prov: object) -> ShiftVector:
    return ShiftVector({i: torch.tensor(v) for i, v in values.items()}, Provenance(**prov))  # type: ignore[arg-type]


def test_arithmetic_is_per_layer_and_records_history() -> None:
    a = make({0: [1.0, 2.0], 1: [3.0, 4.0]}, estimator="mean", anchors_size=3, anchors_hash="ab" * 32)
    b = make({1: [1.0, 1.0], 2: [5.0, 5.0]}, estimator="pca", anchors_size=4, anchors_hash="cd" * 32)
    total = a + b
    assert total.layers == [0, 1, 2]
    assert torch.equal(total.vectors[0], torch.tensor([1.0, 2.0]))
    assert torch.equal(total.vectors[1], torch.tensor([4.0, 5.0]))
    assert torch.equal(total.vectors[2], torch.tensor([5.0, 5.0]))
    diff = a - b
    assert torch.equal(diff.vectors[1], torch.tensor([2.0, 3.0]))
    assert torch.equal(diff.vectors[2], torch.tensor([-5.0, -5.0]))
    assert torch.equal((2 * a).vectors[1], torch.tensor([6.0, 8.0]))
    assert torch.equal((a * 0.5).vectors[0], torch.tensor([0.5, 1.0]))
    assert torch.equal((a / 2).vectors[0], torch.tensor([0.5, 1.0]))
    assert torch.equal((-a).vectors[0], torch.tensor([-1.0, -2.0]))
    assert total.provenance.estimator == "mean"
    assert total.provenance.history[0].startswith("+ [pca on 4 anchors cdcd")
    assert (2 * a).provenance.history == ("* 2.0",)
    assert a.provenance.history == ()  # operands untouched


def test_combining_different_hidden_sizes_fails() -> None:
    with pytest.raises(ValueError, match="hidden size 2 and 3"):
        make({0: [1.0, 2.0]}) + make({0: [1.0, 2.0, 3.0]})


def test_layers_must_share_one_1d_shape() -> None:
    with pytest.raises(ValueError, match="same size"):
        ShiftVector({0: torch.zeros(2), 1: torch.zeros(3)})
    with pytest.raises(ValueError, match="at least one layer"):
        ShiftVector({})


def test_increments_sum_back_to_the_vector() -> None:
    v = make({2: [1.0, 0.0], 3: [3.0, 1.0], 5: [4.0, 4.0]})
    inc = v.increments()
    assert torch.equal(inc.vectors[2], torch.tensor([1.0, 0.0]))
    assert torch.equal(inc.vectors[3], torch.tensor([2.0, 1.0]))
    assert torch.equal(inc.vectors[5], torch.tensor([1.0, 3.0]))
    running = torch.zeros(2)
    for i in v.layers:
        running = running + inc.vectors[i]
        assert torch.equal(running, v.vectors[i])
    assert inc.provenance.history == ("increments",)


def test_to_changes_dtype() -> None:
    v = make({0: [1.0, 2.0]})
    assert v.to(dtype=torch.float64).vectors[0].dtype == torch.float64
    assert v.vectors[0].dtype == torch.float32


def test_save_load_round_trip_keeps_provenance(tmp_path: Path) -> None:
    prov = Provenance(
        model={"architecture": "X", "num_layers": 2, "hidden_size": 3, "name_or_path": "m"},
        anchors_hash="f" * 64,
        anchors_size=7,
        anchors_source="a.txt",
        corruption={"kind": "blank", "color": [255, 255, 255]},
        position="last",
        estimator="pca",
    )
    v = ShiftVector({0: torch.randn(3), 1: torch.randn(3)}, prov, {"vector_norm": [1.0, 2.0]})
    path = v.save(tmp_path / "sub" / "shift.safetensors")
    back = ShiftVector.load(path)
    assert back.layers == [0, 1]
    for i in v.layers:
        assert torch.equal(back.vectors[i], v.vectors[i])
    assert back.provenance == prov
    assert back.provenance.safegap_version == safegap.__version__
    assert back.diagnostics == {"vector_norm": [1.0, 2.0]}
    assert not list(tmp_path.glob("**/.*.tmp*")), "the staging file of the atomic write is left"


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        ShiftVector.load(tmp_path / "nope.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"layer.0": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not written by ShiftVector.save"):
        ShiftVector.load(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        ShiftVector.load(junk)
    odd = tmp_path / "odd.safetensors"
    save_file({"weights": torch.zeros(2)}, str(odd), metadata={"safegap.shift_vector": json.dumps({})})
    with pytest.raises(ValueError, match="unexpected tensor 'weights'"):
        ShiftVector.load(odd)


def test_loading_onto_a_model_it_does_not_fit_names_both_shapes(llava: VLM, tmp_path: Path) -> None:
    n, d = llava.adapter.num_layers, llava.adapter.hidden_size
    wrong = ShiftVector(
        {i: torch.zeros(d + 8) for i in range(n)},
        Provenance(model={"num_layers": n, "hidden_size": d + 8, "name_or_path": "other-model"}),
    )
    path = wrong.save(tmp_path / "wrong.safetensors")
    expected = f"{n} layers x hidden {d + 8} \\(other-model\\) but .* has {n} layers x hidden {d}"
    with pytest.raises(ValueError, match=expected):
        ShiftVector.load(path, vlm=llava)
    deeper = ShiftVector(
        {i: torch.zeros(d) for i in range(n + 2)}, Provenance(model={"num_layers": n + 2, "hidden_size": d})
    )
    with (
        pytest.raises(ValueError, match=f"{n + 2} layers x hidden {d} .* has {n} layers x hidden {d}"),
        deeper.apply(llava),
    ):
        pass


def test_repr_is_short() -> None:
    text = repr(make({0: [1.0, 2.0]}, estimator="mean", anchors_size=3))
    assert text.startswith("ShiftVector(1 layers x 2") and "anchors=3" in text
