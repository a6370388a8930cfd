"""The trainer end to end on the tiny LLaVA: steps, metrics, checkpoints, resume, output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safegap.models import load_vlm
from safegap.models.generation import generate
from safegap.train import TrainConfig, train
from safegap.train.checkpoint import list_checkpoints
from safegap.train.setup import find_projector, step_rows


def config(model: Path, data: Path, out: Path, **overrides: object) -> TrainConfig:
    base: dict[str, object] = dict(
        model=str(model),
        data=str(data),
        out=str(out),
        batch_size=4,
        max_steps=6,
        checkpoint_every=2,
        progress=False,
        seed=3,
    )
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def metrics(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def timeless(out: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in m.items() if not k.endswith(("time_s", "_ms"))} for m in metrics(out)]


def test_step_rows_partition_the_global_batch() -> None:
    single = step_rows(10, 3, seed=1, batch_size=4, processes=1, grad_accum=1, rank=0)
    split = [step_rows(10, 3, seed=1, batch_size=2, processes=2, grad_accum=1, rank=r)[0] for r in (0, 1)]
    assert single[0] == split[0] + split[1]
    accumulated = step_rows(10, 3, seed=1, batch_size=2, processes=1, grad_accum=2, rank=0)
    assert single[0] == accumulated[0] + accumulated[1]
    epoch = [
        i
        for s in range(3)
        for i in step_rows(10, s, seed=1, batch_size=4, processes=1, grad_accum=1, rank=0)[0]
    ]
    assert sorted(set(epoch)) == list(range(10))  # one epoch covers every row (the last batch wraps)


def test_projector_stage_with_regap_trains_and_loads(
    tiny_llava_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = train(config(tiny_llava_dir, dataset, out, reg="regap", regap_warmup=2))
    assert result.completed and result.steps == 6
    lines = metrics(out)
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    assert all(m["regap/value"] > 0 for m in lines)
    assert [m["regap/frozen"] for m in lines] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert len({m["regap/a_l0"] for m in lines[2:]}) == 1
    assert all(m["loss"] == pytest.approx(m["lm_loss"] + m["reg_loss"]) for m in lines)

    before, after = weights(tiny_llava_dir), weights(out)
    vlm = load_vlm(out)
    projector, _ = find_projector(vlm.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    short = projector.split(".")[-1]  # saved names drop the wrapper prefix
    assert changed and all(short in k for k in changed)
    assert generate(vlm, ["describe the image"], max_new_tokens=2)  # the output is a usable model
    summary = json.loads((out / "safegap_train.json").read_text(encoding="utf-8"))
    assert summary["total_steps"] == 6 and summary["reg"] == "regap"
    files = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert not files & {".bin", ".pt", ".pkl", ".pth"}  # nothing that would need unpickling


def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(
    tiny_llava_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    options = dict(reg="regap", regap_warmup=4)  # interrupted inside the warm-up: its state must resume
    straight = train(config(tiny_llava_dir, dataset, tmp_path / "straight", **options))
    first = train(config(tiny_llava_dir, dataset, tmp_path / "split", stop_after=3, **options))
    assert not first.completed and first.steps == 3
    assert [s for s, _ in list_checkpoints(tmp_path / "split")] == [2, 3]
    assert not (tmp_path / "split" / "model.safetensors").exists()
    second = train(config(tiny_llava_dir, dataset, tmp_path / "split", **options))
    assert second.resumed_from == 3 and second.completed
    a, b = weights(straight.out_dir), weights(second.out_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert timeless(straight.out_dir) == timeless(second.out_dir)


def test_resume_refuses_a_changed_run(tiny_llava_dir: Path, dataset: Path, tmp_path: Path) -> None:
    train(config(tiny_llava_dir, dataset, tmp_path / "run", stop_after=2))
    with pytest.raises(ValueError, match="cannot resume .* reg was 'none', now 'regap'"):
        train(config(tiny_llava_dir, dataset, tmp_path / "run", reg="regap"))
    fresh = train(config(tiny_llava_dir, dataset, tmp_path / "run", reg="regap", resume=False, max_steps=2))
    assert fresh.resumed_from is None and len(metrics(tmp_path / "run")) == 2


def test_lora_finetune_with_tga_and_accumulation(tiny_llava_dir: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    result = train(
        config(
            tiny_llava_dir,
            dataset,
            out,
            stage="finetune",
            lora=True,
            reg="tga",
            tga_layers="1-2",
            batch_size=2,
            grad_accum=2,
            max_steps=3,
            tga_decay="linear",
        )
    )
    lines = metrics(out)
    assert result.completed and len(lines) == 3
    assert all(m["tga/rows"] > 0 and m["tga/caption_ms"] > 0 for m in lines)
    before, after = weights(tiny_llava_dir), weights(out)
    assert before.keys() == after.keys()  # LoRA merged: an ordinary checkpoint
    vlm = load_vlm(out)
    projector, _ = find_projector(vlm.model)
    layers_changed = {k for k in before if not torch.equal(before[k], after[k]) and ".layers." in k}
    assert layers_changed and all("language_model" in k for k in layers_changed)
    assert any(not torch.equal(before[k], after[k]) for k in before if projector.split(".")[-1] in k)


def test_full_finetune_with_gradient_checkpointing(
    tiny_llava_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    options = dict(stage="finetune", max_steps=2, reg="regap")
    train(config(tiny_llava_dir, dataset, tmp_path / "plain", **options))
    train(config(tiny_llava_dir, dataset, tmp_path / "ckpt", gradient_checkpointing=True, **options))
    before, after = weights(tiny_llava_dir), weights(tmp_path / "ckpt")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("language_model" in k for k in changed) and any("lm_head" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)
    # Recomputation must not change the regulariser's view of the hidden states or the update.
    for a, b in zip(metrics(tmp_path / "plain"), metrics(tmp_path / "ckpt"), strict=True):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5)
        assert b["regap/value"] == pytest.approx(a["regap/value"], rel=1e-5)
    plain = weights(tmp_path / "plain")
    for key in changed:
        torch.testing.assert_close(after[key], plain[key], rtol=1e-4, atol=1e-6)


def test_config_errors(tiny_llava_dir: Path, dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TGA needs its layers"):
        train(config(tiny_llava_dir, dataset, tmp_path / "x", reg="tga"))
    with pytest.raises(ValueError, match="LoRA"):
        train(config(tiny_llava_dir, dataset, tmp_path / "x", lora=True))
    with pytest.raises(ValueError, match="stage"):
        train(config(tiny_llava_dir, dataset, tmp_path / "x", stage="everything"))


def test_stop_after_counts_steps_of_each_invocation(
    tiny_llava_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sliced"
    results = [train(config(tiny_llava_dir, dataset, out, max_steps=5, stop_after=2)) for _ in range(3)]
    assert [(r.steps, r.completed) for r in results] == [(2, False), (4, False), (5, True)]
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4, 5]
