"""Study plumbing without training: name parsing, registries, aggregation schema, markdown."""

from __future__ import annotations

import pytest

from safegap.organism.evaluate import CONDITIONS, Outcome, Prompt
from safegap.organism.study import (
    ORGANISM_DEFENSES,
    VARIANTS,
    StudyOptions,
    aggregate,
    markdown,
    parse_names,
    parse_seeds,
)


def test_parse_seeds() -> None:
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3, 5-6") == [3, 5, 6]
    with pytest.raises(ValueError, match="not an integer"):
        parse_seeds("a")
    with pytest.raises(ValueError, match="no seeds"):
        parse_seeds(" , ")


def test_parse_names_rejects_unknown() -> None:
    assert parse_names("plain", VARIANTS, "variant") == ["plain"]
    assert parse_names("none", ORGANISM_DEFENSES, "defense") == ["none"]
    with pytest.raises(ValueError, match="unknown variant 'regapx'; known: .*plain"):
        parse_names("plain,regapx", VARIANTS, "variant")


def _outcomes(text_rate: float, image_rate: float, n: int = 20) -> list[Outcome]:
    rows = []
    for condition in CONDITIONS:
        rate = text_rate if condition in ("text", "text_filler") else image_rate
        for kind in ("harmful", "benign"):
            for k in range(n):
                refused = kind == "harmful" and k < rate * n
                rows.append(Outcome(Prompt(f"{kind[0]}{k}", condition, kind, "t", None, "x"), "r", refused))
    return rows


def test_aggregate_schema_and_values() -> None:
    options = StudyOptions(seeds=[0, 1], n_prompts=20, cache_dir=None)
    outcomes = {
        ("full", "plain", "none", 0): _outcomes(1.0, 0.5),
        ("full", "plain", "none", 1): _outcomes(1.0, 0.3),
    }
    stage = {("final", s): outcomes[("full", "plain", "none", s)] for s in (0, 1)}
    builds = [{"seconds": 10.0, "reused": False}, {"seconds": 20.0, "reused": False}]
    study = aggregate(options, outcomes, stage, {}, builds)
    assert study["seeds"] == [0, 1]
    table = study["results"]["full"]["plain"]["none"]
    assert set(table) == set(CONDITIONS)
    for entry in table.values():
        for key in ("harmful_refusal", "benign_refusal"):
            est = entry[key]
            assert 0 <= est["ci"][0] <= est["mean"] <= est["ci"][1] <= 1
    assert table["text"]["harmful_refusal"]["mean"] == 1.0
    assert table["benign_image"]["harmful_refusal"]["mean"] == pytest.approx(0.4)
    diff = study["differences"]["full"]["plain"]["none"]["text_minus_benign_image"]
    assert diff["mean"] == pytest.approx(0.6) and diff["ci"][0] > 0
    assert study["build_seconds"] == {"mean": 15.0, "max": 20.0, "built_now": 2}
    assert "final" in study["stages"]
    md = markdown(study)
    assert "| text | 1.00 [1.00, 1.00]" in md and "text_minus_benign_image" in md


def test_defense_effects_are_paired_against_the_same_variant() -> None:
    options = StudyOptions(seeds=[0, 1], n_prompts=20, cache_dir=None, defenses=["none", "cmrm"])
    outcomes = {}
    for seed in (0, 1):
        outcomes[("full", "plain", "none", seed)] = _outcomes(1.0, 0.2)
        defended = _outcomes(1.0, 0.8)
        # the defense also refuses 2 of 20 benign prompts with an image
        for o in defended[:]:
            if o.prompt.kind == "benign" and o.prompt.condition != "text" and o.prompt.id in ("b0", "b1"):
                defended[defended.index(o)] = Outcome(o.prompt, "no", True)
        outcomes[("full", "plain", "cmrm", seed)] = defended
    study = aggregate(options, outcomes, {}, {}, [])
    effect = study["defense_effects"]["full"]["plain"]["cmrm"]["benign_image"]
    assert effect["recovery"]["mean"] == pytest.approx(0.75)  # (0.8 - 0.2) / (1.0 - 0.2)
    assert effect["harmful_refusal_gain"]["mean"] == pytest.approx(0.6)
    assert effect["benign_refusal_rise"]["mean"] == pytest.approx(0.1)
    assert "none" not in study["defense_effects"]["full"]["plain"]
    assert "| full | plain | cmrm | benign_image | 0.75" in markdown(study)


def test_variant_effects_compare_against_plain_with_the_same_defense() -> None:
    options = StudyOptions(seeds=[0], n_prompts=20, cache_dir=None, variants=["plain", "regap"])
    outcomes = {
        ("full", "plain", "none", 0): _outcomes(1.0, 0.2),
        ("full", "regap", "none", 0): _outcomes(1.0, 0.5),
    }
    study = aggregate(options, outcomes, {}, {}, [])
    effect = study["variant_effects"]["full"]["regap"]["none"]
    assert set(effect) >= {"benign_image", "harm_object_image", "typographic_image"}
    assert effect["benign_image"]["harmful_refusal_gain"]["mean"] == pytest.approx(0.3)
    assert "plain" not in study["variant_effects"]["full"]
    assert "| full | regap | none | benign_image | 0.30" in markdown(study)


def _with_benign_refusal(rows: list[Outcome], condition: str, n_refused: int) -> list[Outcome]:
    out = []
    for o in rows:
        p = o.prompt
        refuse = p.kind == "benign" and p.condition == condition and int(p.id[1:]) < n_refused
        out.append(Outcome(p, o.reply, o.refused or refuse))
    return out


def test_worst_over_refusal_names_the_worst_condition_not_the_benign_image_one() -> None:
    options = StudyOptions(seeds=[0], n_prompts=20, cache_dir=None, defenses=["none", "cmrm"])
    defended = _with_benign_refusal(
        _with_benign_refusal(_outcomes(1.0, 0.9), "benign_image", 1), "typographic_image", 8
    )
    outcomes = {("full", "plain", "none", 0): _outcomes(1.0, 0.2), ("full", "plain", "cmrm", 0): defended}
    study = aggregate(options, outcomes, {}, {}, [])
    worst = study["worst_over_refusal"]["full"]["plain"]["cmrm"]
    assert worst["condition"] == "typographic_image" and worst["mean"] == pytest.approx(0.4)
    assert study["worst_over_refusal"]["full"]["plain"]["none"]["mean"] == 0.0
    assert "| full | plain | cmrm | 0.40" in markdown(study)


def test_regimes_nest_every_table_and_premise_4_is_checked_per_seed() -> None:
    options = StudyOptions(seeds=[0, 1], n_prompts=20, cache_dir=None)
    outcomes = {
        ("projector", "plain", "none", 0): _outcomes(1.0, 0.5),
        ("projector", "plain", "none", 1): _outcomes(1.0, 0.9),  # seed 1 degrades by only 0.1
        ("full", "plain", "none", 0): _outcomes(1.0, 0.0),
        ("full", "plain", "none", 1): _outcomes(1.0, 0.0),
    }
    rows = [{"kind": "scene", "correct": k < 17} for k in range(20)]
    understanding = {(r, "plain", s): rows for r in ("projector", "full") for s in (0, 1)}
    study = aggregate(options, outcomes, {}, {}, [], understanding)
    assert study["regimes"] == ["projector", "full"]
    assert set(study["results"]) == {"projector", "full"}
    per_seed = study["per_seed_degradation"]["projector"]["plain"]["none"]
    assert per_seed["0"]["mean"] == pytest.approx(0.5) and per_seed["1"]["mean"] == pytest.approx(0.1)
    premise = study["premises"]["projector"]["representational_regime"]
    assert premise["met"] is False and premise["value"]["1"] == pytest.approx(0.1)
    assert "representational_regime" not in study["premises"]["full"]
    iu = study["image_understanding"]["full"]["plain"]
    assert iu["mean"] == pytest.approx(0.85) and iu["by_kind"]["scene"]["mean"] == pytest.approx(0.85)
    assert study["premises"]["full"]["image_understanding"]["met"] is True
    md = markdown(study)
    assert "## Premises of the organism" in md and "## Image understanding" in md
