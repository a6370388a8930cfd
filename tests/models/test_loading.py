"""``load_vlm`` errors and options, and the adapter's input-building edge cases."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config

from safegap.models import VLM, UnknownArchitectureError, VLMAdapter, load_vlm, supported_families
from safegap.models.hub import saved_chat_template
from safegap.models.loading import adapter_class, looks_local


@pytest.mark.parametrize("path", ["/no/such/model", "./missing-model", "runs/a/checkpoint", "~/no-such-dir"])
def test_missing_local_path_is_one_clear_line(path: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_vlm(path)
    message = str(info.value)
    assert path in message and "does not exist" in message and "\n" not in message


def test_hub_ids_are_not_mistaken_for_paths() -> None:
    assert not looks_local("llava-hf/llava-1.5-7b-hf")
    assert not looks_local("gpt2")
    assert looks_local("/abs/dir") and looks_local("./rel") and looks_local("out/ckpt/final")


def test_a_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        load_vlm(weights)


def test_unknown_architecture_lists_families_and_the_override(tmp_path: Path) -> None:
    GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=1).save_pretrained(tmp_path)
    with pytest.raises(UnknownArchitectureError) as info:
        load_vlm(tmp_path)
    message = str(info.value)
    assert "'gpt2'" in message and "layers_path=" in message
    for family in supported_families():
        assert family in message
    assert adapter_class("gpt2", layers_path="transformer.h") is VLMAdapter


def test_supported_families_cover_every_major_family() -> None:
    expected = {
        "llava",
        "llava_next",
        "llava_onevision",
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "idefics3",
        "smolvlm",
        "paligemma",
        "gemma3",
        "mistral3",
        "internvl",
        "mllama",
    }
    assert expected <= set(supported_families())


def test_dtype_and_layers_path_options(tiny_vlm: Callable[[str], VLM]) -> None:
    path = tiny_vlm("llava").name_or_path
    half = load_vlm(path, dtype="bfloat16", layers_path="model.language_model.layers")
    assert half.dtype == torch.bfloat16 and half.adapter.num_layers == 3
    with pytest.raises(ValueError, match="unknown dtype 'float33'"):
        load_vlm(path, dtype="float33")
    with pytest.raises(AttributeError, match="model.language_model.blocks"):
        load_vlm(path, layers_path="model.language_model.blocks")


def test_chat_template_is_read_from_the_processor_files(tmp_path: Path) -> None:
    assert saved_chat_template(str(tmp_path)) is None
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert saved_chat_template(str(tmp_path)) == "{{ messages }}"
    (tmp_path / "chat_template.jinja").write_text("jinja wins")
    assert saved_chat_template(str(tmp_path)) == "jinja wins"


def test_input_errors(tiny_vlm: Callable[[str], VLM]) -> None:
    llava = tiny_vlm("llava")
    with pytest.raises(ValueError, match="got 1 images for 2 texts"):
        llava.build_inputs(["a", "b"], [None])
    with pytest.raises(ValueError, match="contains the image token"):
        llava.build_inputs(["what is <image> ?"])
    with pytest.raises(ValueError, match="no system role"):
        tiny_vlm("paligemma").build_inputs(["caption en"], system="be nice")


def test_a_template_that_changes_more_than_the_image_is_rejected(
    tiny_vlm: Callable[[str], VLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = tiny_vlm("llava").adapter
    monkeypatch.setattr(
        adapter,
        "render",
        lambda text, has_image, system=None: f"A <image> {text}" if has_image else f"B {text}",
    )
    with pytest.raises(ValueError, match="changes more than the image placeholder"):
        adapter.text_only_ids("hello")


def _record_from_pretrained(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Record the keywords each model load gets; load on the CPU whatever ``device_map`` says."""
    import transformers

    calls: list[dict[str, object]] = []
    original = transformers.AutoModelForImageTextToText.from_pretrained

    def recording(*args: object, **kwargs: object) -> object:
        calls.append(dict(kwargs))
        kwargs.pop("device_map", None)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", recording)
    return calls


def test_cpu_loads_without_device_map(
    tiny_vlm: Callable[[str], VLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tiny_vlm("llava").name_or_path
    calls = _record_from_pretrained(monkeypatch)
    for device in (None, "cpu"):
        assert load_vlm(path, device=device).device == torch.device("cpu")
    assert [("device_map" in c, c["use_safetensors"]) for c in calls] == [(False, True), (False, True)]


def test_an_accelerator_gets_the_weights_through_device_map(
    tiny_vlm: Callable[[str], VLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a device, accelerate places the weights as they load (no CPU copy moved afterwards);
    the safetensors-only rule still holds."""
    import safegap.models.loading as loading

    path = tiny_vlm("llava").name_or_path
    calls = _record_from_pretrained(monkeypatch)
    monkeypatch.setattr(loading, "check_device", lambda device: torch.device("cuda", 0))
    moved: list[object] = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or self)
    load_vlm(path, device="cuda:0")
    assert calls[-1]["device_map"] == torch.device("cuda", 0)
    assert calls[-1]["use_safetensors"] is True
    assert moved == []
