"""``build_organism``: tokenizer, model, stages 0-3, and an ordinary HF checkpoint directory.

The text-aligned base (tokenizer + CLIP tower after stage 0 + LLM after stage 1) may be cached
per seed and config, as real pipelines start from a pretrained LLM; the build report says which
stages were reused and how long each one that ran took.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from safegap.models.tokenizer import LLAVA_TEMPLATE, train_tokenizer
from safegap.organism import stages
from safegap.organism.config import OrganismConfig
from safegap.organism.data import tokenizer_corpus
from safegap.organism.world import World
from safegap.train.hooks import ExtraLoss

#: (stage name, steps done, steps total)
BuildProgress = Callable[[str, int, int], None]
STAGE_NAMES = ("stage0_clip", "stage1_text", "stage2_projector", "stage3_instruct")


def default_cache_dir() -> Path:
    root = os.environ.get("SAFEGAP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "safegap")
    return Path(root) / "organism"


def make_world(config: OrganismConfig) -> World:
    w = config.world
    return World(
        seed=w.world_seed, calibration_fraction=w.calibration_fraction, eval_fraction=w.eval_fraction
    )


def make_tokenizer(world: World, config: OrganismConfig) -> Any:
    corpus = list(tokenizer_corpus(world, random.Random(f"tokenizer-{world.seed}")))
    return train_tokenizer(
        ["<image>"], corpus=corpus, vocab_size=config.arch.vocab_size, chat_template=LLAVA_TEMPLATE
    )


def make_model(config: OrganismConfig, tokenizer: Any, seed: int) -> tuple[Any, Any]:
    """A freshly initialised ``LlavaForConditionalGeneration`` and its ``LlavaProcessor``."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    a = config.arch
    vision = CLIPVisionConfig(
        hidden_size=a.vision_hidden_size,
        intermediate_size=a.vision_intermediate_size,
        num_hidden_layers=a.vision_layers,
        num_attention_heads=a.vision_heads,
        image_size=a.image_size,
        patch_size=a.patch_size,
        projection_dim=a.vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=a.hidden_size,
        intermediate_size=a.intermediate_size,
        num_hidden_layers=a.num_layers,
        num_attention_heads=a.num_heads,
        num_key_value_heads=a.num_heads,
        head_dim=a.hidden_size // a.num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=a.image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": a.image_size},
        crop_size={"height": a.image_size, "width": a.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=a.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=LLAVA_TEMPLATE,
    )
    return model.eval(), processor


@dataclass
class BuildReport:
    """What a build did: per-stage logs and seconds, which parts came from the cache."""

    seed: int
    out_dir: str
    config_digest: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    seconds: float = 0.0
    snapshots: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "out_dir": self.out_dir,
            "config_digest": self.config_digest,
            "stages": self.stages,
            "cached": self.cached,
            "seconds": round(self.seconds, 2),
            "snapshots": self.snapshots,
        }


def save_checkpoint(model: Any, processor: Any, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)


def _load_base(path: Path) -> tuple[Any, Any]:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    processor = LlavaProcessor.from_pretrained(path)
    return model.eval(), processor


def build_organism(
    out_dir: str | Path,
    seed: int = 0,
    config: OrganismConfig | None = None,
    cache_dir: str | Path | None = None,
    extra_losses: dict[int, Sequence[ExtraLoss]] | None = None,
    snapshot_stages: bool = False,
    progress: BuildProgress | None = None,
) -> BuildReport:
    """Train the organism for ``seed`` and write a checkpoint to ``out_dir``.

    ``cache_dir``: where to reuse / store the text-aligned base (None: no caching).
    ``extra_losses``: {2: [...], 3: [...]} loss terms for stages 2 and 3.
    ``snapshot_stages``: also write ``out_dir/stages/after_stage{1,2}`` checkpoints.
    """
    config = config or OrganismConfig()
    extra_losses = extra_losses or {}
    if set(extra_losses) - {2, 3}:
        raise ValueError(f"extra losses plug into stages 2 and 3 only, got stages {sorted(extra_losses)}")
    out = Path(out_dir)
    start = time.perf_counter()
    report = BuildReport(seed, str(out), config.digest())
    world = make_world(config)

    def tick(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda i, n: progress(name, i, n))

    base_path = (
        Path(cache_dir) / f"base-seed{seed}-{config.digest('base')}" if cache_dir is not None else None
    )
    if base_path is not None and (base_path / "config.json").exists():
        model, processor = _load_base(base_path)
        base_info = json.loads((base_path / "base_report.json").read_text())
        report.stages.update(base_info)
        report.cached += ["tokenizer", "stage0_clip", "stage1_text"]
        for name in STAGE_NAMES[:2]:
            if progress is not None:
                progress(name, 1, 1)
    else:
        t0 = time.perf_counter()
        tokenizer = make_tokenizer(world, config)
        report.stages["tokenizer"] = {"seconds": round(time.perf_counter() - t0, 2), "vocab": len(tokenizer)}
        model, processor = make_model(config, tokenizer, seed)
        clip_log = stages.train_clip(
            model, tokenizer, world, config.clip, seed, processor.image_processor, tick("stage0_clip")
        )
        report.stages["stage0_clip"] = clip_log.as_dict()
        for log in stages.train_text(
            model, processor.tokenizer, world, config.text, seed, tick("stage1_text")
        ):
            report.stages[log.name] = log.as_dict()
        if base_path is not None:
            tmp = base_path.with_name(base_path.name + f".tmp{os.getpid()}")
            save_checkpoint(model, processor, tmp)
            (tmp / "base_report.json").write_text(json.dumps(report.stages, indent=1))
            if base_path.exists():
                shutil.rmtree(tmp)
            else:
                tmp.rename(base_path)
    tokenizer = processor.tokenizer
    if config.text.read_steps:  # opt-in rung (f), after the cached base
        report.stages["stage1_read"] = stages.train_reading(
            model, tokenizer, world, config.text, seed
        ).as_dict()
    if snapshot_stages:
        report.snapshots["after_stage1"] = _snapshot(model, processor, out / "stages" / "after_stage1")
    log = stages.train_projector(
        model,
        tokenizer,
        world,
        config.projector,
        seed,
        processor.image_processor,
        extra_losses.get(2, ()),
        tick("stage2_projector"),
    )
    report.stages[log.name] = log.as_dict()
    if snapshot_stages:
        report.snapshots["after_stage2"] = _snapshot(model, processor, out / "stages" / "after_stage2")
    log = stages.train_instruct(
        model,
        tokenizer,
        world,
        config.instruct,
        config.text,
        seed,
        processor.image_processor,
        extra_losses.get(3, ()),
        tick("stage3_instruct"),
    )
    report.stages[log.name] = log.as_dict()
    save_checkpoint(model, processor, out)
    report.seconds = time.perf_counter() - start
    (out / "organism.json").write_text(
        json.dumps({"config": config.to_dict(), "build": report.as_dict()}, indent=1)
    )
    return report


def _snapshot(model: Any, processor: Any, path: Path) -> str:
    save_checkpoint(model, processor, path)
    return str(path)
