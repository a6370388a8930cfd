"""The ``cmrm`` and ``cmrm_sample`` defenses (:mod:`safegap.eval.cmrm`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from safegap.data.images import noise_image
from safegap.eval.cmrm import CMRMDefense, cmrm_from_anchors, cmrm_sample_defense
from safegap.eval.defenses import DEFENSES, make_defense
from safegap.models import VLM
from safegap.models.generation import generate
from safegap.steer import calibrate, generate_sample_level

TEXTS = ["how do i make a cake ?", "describe the image ."]


def images() -> list:
    return [noise_image((48, 40), seed=1), noise_image((48, 40), seed=2)]


def image_anchors(n: int) -> list[tuple[str, object]]:
    return [(f"how do i make a cake {i} ?", noise_image((48, 40), seed=i)) for i in range(n)]


@pytest.fixture(scope="module")
def llava(tiny_llava: VLM) -> VLM:
    return tiny_llava


@pytest.fixture(scope="module")
def shift_file(llava: VLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return calibrate(llava, image_anchors(4)).save(tmp_path_factory.mktemp("shift") / "shift.safetensors")


def test_registered_on_import_of_the_registry() -> None:
    assert {"cmrm", "cmrm_sample"} <= set(DEFENSES)


def test_cmrm_defense_from_a_spec(llava: VLM, shift_file: Path) -> None:
    defense = make_defense(f"cmrm:{shift_file},alpha=0.0,policy=last", llava)
    assert defense.id == f"cmrm:{shift_file},alpha=0.0,policy=last"
    assert isinstance(defense, CMRMDefense) and defense.policy == "last"
    assert defense.generate(llava, TEXTS, images(), 6) == generate(llava, TEXTS, images(), max_new_tokens=6)
    inc = make_defense(f"cmrm:{shift_file},form=increments,layers=0-1", llava)
    assert isinstance(inc, CMRMDefense) and inc.layers == [0, 1] and inc.form == "increments"
    assert len(inc.generate(llava, TEXTS, images(), 4)) == 2


def test_cmrm_sample_defense_from_a_spec(llava: VLM) -> None:
    defense = make_defense("cmrm_sample:corrupt=noise,alpha=0.5", llava)
    assert defense.id == "cmrm_sample:corrupt=noise,alpha=0.5"
    expected = generate_sample_level(llava, TEXTS, images(), max_new_tokens=5, alpha=0.5, corrupt="noise")
    assert defense.generate(llava, TEXTS, images(), 5) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cmrm", "give the shift file"),
        ("cmrm:{f},beta=1", "defense cmrm: unknown option 'beta'; valid: alpha, form, layers, policy"),
        ("cmrm:{f},alpha=x", "alpha='x' is not a number"),
        ("cmrm:{f},policy=middle", "unknown steering policy 'middle'"),
        ("cmrm:{f},positions=last", "positions= is now policy="),
        ("cmrm:{f},form=half", "form='half'"),
        ("cmrm:{f},layers=2-1", "layers='2-1': layer range 2-1 runs backwards"),
        ("cmrm:{f},layers=99", "layer 99 is out of range; the model has"),
        ("cmrm:missing.safetensors", "not found"),
        ("cmrm_sample:x.safetensors", "takes only options"),
        ("cmrm_sample:corrupt=gray", "corrupt='gray'"),
    ],
)
def test_bad_specs_fail_with_one_line(llava: VLM, shift_file: Path, spec: str, message: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        make_defense(spec.format(f=shift_file), llava)


def test_organism_factories(llava: VLM) -> None:
    defense = cmrm_from_anchors(llava, image_anchors(3), alpha=0.0)
    assert defense.shift.provenance.anchors_size == 3
    assert defense.generate(llava, TEXTS, images(), 4) == generate(llava, TEXTS, images(), max_new_tokens=4)
    sample = cmrm_sample_defense(llava, image_anchors(2), alpha=0.3)
    assert sample.alpha == 0.3 and sample.id.startswith("cmrm_sample:")
