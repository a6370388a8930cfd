"""Weights load from safetensors only unless the user opts in; a refused .bin is one line."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file

from safegap.errors import UserError
from safegap.models import VLM, load_vlm


class Payload:
    """Unpickling this would run code: it must never be unpickled."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("raise SystemExit('unpickled!')",))


def copy_without_safetensors(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_bin_weights_need_an_opt_in_and_pickles_are_refused(
    tiny_vlm: Callable[[str], VLM], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    src = Path(tiny_vlm("llava").name_or_path)
    plain = copy_without_safetensors(src, tmp_path / "plain_bin")
    torch.save(load_file(str(src / "model.safetensors")), plain / "pytorch_model.bin")
    monkeypatch.delenv("SAFEGAP_ALLOW_BIN", raising=False)
    with pytest.raises(UserError, match="only .safetensors weights load by default; set SAFEGAP_ALLOW_BIN=1"):
        load_vlm(plain)
    monkeypatch.setenv("SAFEGAP_ALLOW_BIN", "1")
    assert load_vlm(plain).adapter.num_layers == 3  # a plain tensor .bin loads once allowed
    evil = copy_without_safetensors(src, tmp_path / "evil_bin")
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UserError, match=r"evil_bin: cannot load: a \.bin file that torch refuses"):
        load_vlm(evil)
