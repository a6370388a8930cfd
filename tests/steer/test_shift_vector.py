"""ShiftVector: arithmetic, provenance, safetensors round trip and model-fit checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import safegap
from safegap.data.images import noise_image
from safegap.models import VLM
from safegap.steer import Provenance, ShiftVector, Tuning


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
        read_at="last",
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


# -- tuning ---------------------------------------------------------------------------------------
TUNED = Tuning(alpha=0.5, form="increments", policy="last+decode", chosen_by={"rule": "r"})


def test_tuning_round_trips_and_old_plain_dict_files_still_load(tmp_path: Path) -> None:
    v = ShiftVector({0: torch.randn(3), 2: torch.randn(3)}, tuning=TUNED)
    back = ShiftVector.load(v.save(tmp_path / "t.safetensors"))
    assert back.tuning == TUNED and back.tuning.chosen_by == {"rule": "r"}
    # a file written before the typed field: a plain dict with "positions", a provenance "position"
    old = tmp_path / "old.safetensors"
    meta = {
        "format": "1",
        "provenance": {"position": "last:2", "estimator": "mean"},
        "diagnostics": {},
        "tuning": {"alpha": 0.3, "form": "full", "positions": "prefill", "rule": "x", "sweeps": {}},
    }
    save_file({"layer.0": torch.ones(2)}, str(old), metadata={"safegap.shift_vector": json.dumps(meta)})
    loaded = ShiftVector.load(old)
    assert loaded.provenance.read_at == "last:2"
    assert loaded.tuning == Tuning(alpha=0.3, form="full", policy="prefill")
    assert loaded.tuning.chosen_by == {"rule": "x", "sweeps": {}}
    bad = tmp_path / "bad.safetensors"
    meta["tuning"] = {"alpha": 0.3, "form": "half"}
    save_file({"layer.0": torch.ones(2)}, str(bad), metadata={"safegap.shift_vector": json.dumps(meta)})
    with pytest.raises(ValueError, match="bad.safetensors: tuning form 'half'"):
        ShiftVector.load(bad)


def test_increments_and_select_layers_keep_what_apply_does() -> None:
    v = make({0: [1.0, 0.0], 1: [3.0, 1.0], 2: [4.0, 4.0]}).with_tuning(TUNED)
    inc = v.increments()  # the tuned form materialised: the same vectors apply, now as "full"
    assert inc.tuning == Tuning(alpha=0.5, form="full", policy="last+decode")
    assert torch.equal(inc.vectors[2], torch.tensor([1.0, 3.0]))
    picked = v.select_layers([1, 2])  # increments of the calibrated layers, not of the subset
    assert picked.tuning is not None and picked.tuning.form == "full"
    assert torch.equal(picked.vectors[1], torch.tensor([2.0, 1.0]))
    full = v.with_tuning(Tuning(alpha=0.2, layers=(0, 2)))
    assert full.select_layers([2]).tuning == Tuning(alpha=0.2, layers=(2,))
    with pytest.raises(ValueError, match="none of"):
        full.select_layers([1])
    assert full.increments().tuning == full.tuning


def test_arithmetic_keeps_the_tuning_only_when_both_agree() -> None:
    a = make({0: [1.0, 2.0]}).with_tuning(TUNED)
    b = make({0: [0.5, 0.5]}).with_tuning(Tuning(alpha=0.5, form="increments", policy="last+decode"))
    assert (a - b).tuning == TUNED  # chosen_by is provenance, not part of the agreement
    assert (a + make({0: [1.0, 1.0]})).tuning is None
    assert (a + b.with_tuning(Tuning(alpha=0.7))).tuning is None
    assert (a + make({1: [1.0, 1.0]}).with_tuning(TUNED)).tuning is None  # different layers
    assert (2 * a).tuning == TUNED and (-a).tuning == TUNED and (a / 2).tuning == TUNED
    assert a.to(dtype=torch.float64).tuning == TUNED


def test_apply_takes_a_bare_hugging_face_model(llava: VLM) -> None:
    from safegap.models.generation import generate_ids

    shift = ShiftVector(
        {i: torch.randn(llava.adapter.hidden_size) * 20 for i in range(llava.adapter.num_layers)},
        Provenance(model=llava.fingerprint()),
        tuning=Tuning(alpha=0.8),
    )
    inputs = llava.build_inputs(["how do i make a cake ?"], [noise_image((48, 40), seed=3)])
    with shift.apply(llava):
        wrapped = generate_ids(llava, inputs, 6)
    with shift.apply(llava.model) as handle:
        bare = generate_ids(llava, inputs, 6)
    assert torch.equal(wrapped, bare) and handle.alpha == 0.8 and not handle.attached
    with pytest.raises(TypeError, match="a safegap VLM or a Hugging Face model"):
        shift.apply("llava")
