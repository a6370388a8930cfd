from __future__ import annotations

import pytest

from safegap.eval.defenses import parse_defense_spec
from safegap.eval.specs import parse_spec, split_specs

KNOWN = {"none", "cmrm", "system_prompt", "ecso", "refusal", "guard", "openai"}


def test_parse_spec_matches_the_defense_grammar() -> None:
    for text in ("none", "cmrm:shift.safetensors,alpha=0.5", "guard:/models/lg3,max_new_tokens=10"):
        spec, dspec = parse_spec(text), parse_defense_spec(text)
        assert (spec.name, spec.arg, spec.options) == (dspec.name, dspec.arg, dspec.options)
        assert str(spec) == text
    assert parse_spec("openai:http://127.0.0.1:8000/v1,model=m").arg == "http://127.0.0.1:8000/v1"
    with pytest.raises(ValueError, match="more than one positional"):
        parse_spec("cmrm:a,b")
    with pytest.raises(ValueError, match="empty judge spec"):
        parse_spec(" ", kind="judge")


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
