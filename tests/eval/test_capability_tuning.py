"""A capability benchmark as CMRM's tuning set (:func:`safegap.eval.capability.capability_check`)."""

from __future__ import annotations

import pytest

from safegap.errors import UserError
from safegap.eval.capability import capability_check


def test_organism_vqa_becomes_a_scored_tuning_set() -> None:
    check = capability_check("organism_vqa:n=1", limit=6)
    assert check.id == "organism_vqa:n=1" and check.metric == "exact_match"
    assert len(check.items) == 6 and {i.condition for i in check.items} == {"image"}
    assert all(i.image is not None for i in check.items)
    assert check.chance is not None and 0.0 < check.chance < 1.0
    item = check.items[0]
    assert item.score("") == 0.0


def test_a_safety_benchmark_is_no_capability_set() -> None:
    with pytest.raises(UserError, match="not a capability scorer"):
        capability_check("organism")
