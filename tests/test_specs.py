"""The one spec grammar and the one layer grammar (:mod:`safegap.specs`), and that every kind of
plug-in rejects an unknown option key in one line naming the valid keys."""

from __future__ import annotations

import pytest

from safegap.errors import UserError
from safegap.specs import Spec, check_layers, parse_spec, resolve_layers, resolve_within, split_specs

KNOWN = {"none", "cmrm", "system_prompt", "ecso", "refusal", "guard", "openai"}


def test_parse_spec_round_trips() -> None:
    for text in ("none", "cmrm:shift.safetensors,alpha=0.5", "guard:/models/lg3,max_new_tokens=10"):
        assert str(parse_spec(text)) == text
    assert parse_spec("cmrm:p,alpha=0.5") == Spec("cmrm", "p", {"alpha": "0.5"})
    assert parse_spec("cmrm_sample:corrupt=noise") == Spec("cmrm_sample", None, {"corrupt": "noise"})
    assert parse_spec("openai:http://127.0.0.1:8000/v1,model=m").arg == "http://127.0.0.1:8000/v1"
    with pytest.raises(UserError, match="more than one positional"):
        parse_spec("cmrm:a,b")
    with pytest.raises(UserError, match="empty judge spec"):
        parse_spec(" ", kind="judge")
    with pytest.raises(UserError, match="option 'alpha' given twice"):
        parse_spec("cmrm:a,alpha=1,alpha=2")


def test_unknown_key_names_spec_key_valid_keys_and_a_hint() -> None:
    with pytest.raises(UserError) as info:
        parse_spec("text_csv:F,catgory=x", "benchmark", valid=("prompt", "category", "id", "label"))
    assert str(info.value) == (
        "benchmark text_csv: unknown option 'catgory'; valid: category, id, label, prompt "
        "(did you mean 'category'?)"
    )
    with pytest.raises(UserError, match="^benchmark figstep_tiny: unknown option 'x'; it takes no options$"):
        parse_spec("figstep_tiny:x=1", "benchmark", valid=())
    assert parse_spec("cmrm:p,alpha=1").check_options(("alpha",), "defense").options == {"alpha": "1"}


def test_split_specs_keeps_options_with_their_spec() -> None:
    assert split_specs("none,cmrm:p.safetensors,alpha=1.0,system_prompt+cmrm:p,alpha=0.5", KNOWN) == [
        "none",
        "cmrm:p.safetensors,alpha=1.0",
        "system_prompt+cmrm:p,alpha=0.5",
    ]
    assert split_specs(["refusal", "guard:/m,batch_size=4,openai:http://x/v1,model=m"], KNOWN) == [
        "refusal",
        "guard:/m,batch_size=4",
        "openai:http://x/v1,model=m",
    ]
    # Free text with commas stays in a system prompt; a typo after a bare name is its own spec.
    assert split_specs("system_prompt:Be safe, and kind,none", KNOWN) == [
        "system_prompt:Be safe, and kind",
        "none",
    ]
    assert split_specs("none,cmrn:x", KNOWN) == ["none", "cmrn:x"]
    assert split_specs("ecso,check_tokens=4", KNOWN) == ["ecso:check_tokens=4"]


# -- layers ------------------------------------------------------------------------------------------


def test_layer_grammar() -> None:
    assert resolve_layers("all", 4) == [0, 1, 2, 3]
    assert resolve_layers("4-7", 32) == [4, 5, 6, 7]
    assert resolve_layers("2, 4-5,4", 8) == [2, 4, 5]
    assert resolve_layers("-1", 4) == [3]
    assert resolve_layers("-3--1", 8) == [5, 6, 7]
    assert resolve_layers("0,-1", 8) == [0, 7]
    assert resolve_layers(-1, 4) == [3]
    assert resolve_layers([2, 0, -4], 4) == [0, 2]
    assert check_layers(" 2-4 ") == "2-4"


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ("7-4", "runs backwards"),
        ("a-b", "bad layer range 'a-b'"),
        ("first", "bad layer range 'first'"),
        ("", "no layers"),
        ([], "no layers"),
        ("10", "^layers='10': layer 10 is out of range; the model has 8 decoder layers"),
        (-9, "layer -9 is out of range; the model has 8 decoder layers"),
        ([1, "x"], "'x' is not a layer index"),
    ],
)
def test_bad_layers_are_one_line_errors(layers: object, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        resolve_layers(layers, 8)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_negatives_count_from_the_model_not_the_vector() -> None:
    assert resolve_within("all", [3, 5], 8) == [3, 5]
    assert resolve_within("3-5", [3, 4, 5], 8) == [3, 4, 5]
    assert resolve_within(-1, [3, 7], 8) == [7]
    with pytest.raises(
        UserError, match="layers=-1: layer 7 is not in the shift vector \\(it has layers 3, 5\\)"
    ):
        resolve_within(-1, [3, 5], 8)
    with pytest.raises(UserError, match="out of range; the model has 8"):
        resolve_within(9, [3, 5], 8)


# -- one unknown-key test per kind of plug-in ----------------------------------------------------------


def test_benchmark_unknown_key() -> None:
    from safegap.data.benchmarks import load_benchmark

    with pytest.raises(
        UserError, match="^benchmark text_csv: unknown option 'catgory'; valid: category, id, "
    ):
        load_benchmark("text_csv:F.csv,catgory=x")
    with pytest.raises(UserError, match="^benchmark figstep: unknown option 'image'; valid: images"):
        load_benchmark("figstep:/data,image=/x")
    with pytest.raises(UserError, match="^benchmark xstest: unknown option 'images'; it takes no options$"):
        load_benchmark("xstest:images=/x")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "refusal:windw=3",
            "^judge refusal: unknown option 'windw'; valid: window \\(did you mean 'window'\\?\\)$",
        ),
        ("guard:/m,devic=cpu", "^judge guard: unknown option 'devic'; valid: batch_size, content, device"),
        (
            "openai:http://x/v1,model=m,timout=3",
            "^judge openai: unknown option 'timout'; valid: api_key_env, ",
        ),
    ],
)
def test_judge_unknown_key(spec: str, message: str) -> None:
    from safegap.judge.base import make_judge

    with pytest.raises(UserError, match=message):
        make_judge(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "ecso:check_token=4",
            "^defense ecso: unknown option 'check_token'; valid: caption_tokens, check_tokens",
        ),
        (
            "cmrm:x.safetensors,alhpa=1",
            "^defense cmrm: unknown option 'alhpa'; valid: alpha, form, layers, positions",
        ),
        (
            "cmrm_sample:corupt=noise",
            "^defense cmrm_sample: unknown option 'corupt'; valid: alpha, corrupt, ",
        ),
    ],
)
def test_defense_unknown_key(spec: str, message: str) -> None:
    from safegap.eval.defenses import make_defense

    with pytest.raises(UserError, match=message):
        make_defense(spec, None)  # type: ignore[arg-type]  # options are checked before the model is used


def test_anchor_source_unknown_key() -> None:
    from safegap.steer.anchors import load_anchors

    with pytest.raises(
        UserError, match="^organism anchors: unknown option 'knd'; valid: kind, n, world_seed"
    ):
        load_anchors("organism:calibration,knd=harmful")


def test_gap_data_source_unknown_key() -> None:
    from safegap.gap.data import resolve_data

    with pytest.raises(UserError, match="^organism data: unknown option 'k'; valid: n, world_seed$"):
        resolve_data("organism:eval,k=1")
