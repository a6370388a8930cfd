"""Before the first step: which parameters train, the learning-rate schedule, the regulariser
term, and the data order (a pure function of seed, epoch and step)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from safegap.train.config import TrainConfig
from safegap.train.hooks import ExtraLoss
from safegap.train.layers import resolve_layer_spec
from safegap.train.regap import ReGapLoss, parse_regap_layers
from safegap.train.tga import TGALoss

#: Module-name suffixes of the vision-to-language projector, per family.
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "visual.merger", "merger")


# -- model setup ------------------------------------------------------------------------------
def find_projector(model: nn.Module) -> tuple[str, nn.Module]:
    """The vision-to-language projector (the module stage ``projector`` trains)."""
    for suffix in PROJECTOR_NAMES:
        for name, module in model.named_modules():
            if name == suffix or name.endswith("." + suffix):
                return name, module
    raise ValueError(
        f"cannot find the projector of {type(model).__name__} (looked for modules named {', '.join(PROJECTOR_NAMES)})"
    )


def _module_name(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ValueError("module not found in model")


def configure_trainable(model: Any, adapter: Any, cfg: TrainConfig) -> Any:
    """Freeze per stage; wrap with LoRA when asked. Returns the (possibly wrapped) model."""
    for p in model.parameters():
        p.requires_grad_(False)
    _, projector = find_projector(model)
    if cfg.stage == "finetune" and cfg.lora:
        from peft import LoraConfig, get_peft_model

        prefix = _module_name(model, adapter.decoder_layers) + "."
        targets = [n for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)]
        config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            bias="none",
        )
        model = get_peft_model(model, config)  # freezes everything but the LoRA weights
    elif cfg.stage == "finetune":
        language_model = model.get_decoder() if hasattr(model, "get_decoder") else None
        if language_model is None:
            raise ValueError(f"{type(model).__name__} exposes no language model (get_decoder)")
        for p in language_model.parameters():
            p.requires_grad_(True)
        head = model.get_output_embeddings()
        if head is not None:
            for p in head.parameters():
                p.requires_grad_(True)
    for p in projector.parameters():
        p.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_regulariser(cfg: TrainConfig, adapter: Any, lr_warmup: int, total_steps: int) -> list[ExtraLoss]:
    """The term ``cfg.reg`` names, configured from ``cfg``."""
    if cfg.reg == "regap":
        warmup = cfg.regap_warmup if cfg.regap_warmup is not None else max(1, lr_warmup)
        return [
            ReGapLoss(
                weight=cfg.reg_weight,
                layers=parse_regap_layers(cfg.regap_layers),
                alpha_mode=cfg.regap_alpha,  # type: ignore[arg-type]
                warmup_steps=warmup,
                text_tokens=cfg.regap_text_tokens,  # type: ignore[arg-type]
                cov_term=cfg.regap_cov,  # type: ignore[arg-type]
                cov_weight=cfg.regap_cov_weight,
            )
        ]
    if cfg.reg == "tga":
        assert cfg.tga_layers is not None
        layers = resolve_layer_spec(cfg.tga_layers, adapter.num_layers)
        return [
            TGALoss(
                layers=tuple(layers),
                weight=cfg.reg_weight,
                decay=cfg.tga_decay,  # type: ignore[arg-type]
                total_steps=total_steps,
            )
        ]
    return []


# -- data order -------------------------------------------------------------------------------
def step_rows(
    n_rows: int, step: int, seed: int, batch_size: int, processes: int, grad_accum: int, rank: int
) -> list[list[int]]:
    """Row indices of each micro-batch of ``rank`` at optimizer ``step`` (wraps at the epoch end)."""
    global_batch = batch_size * processes * grad_accum
    steps_per_epoch = math.ceil(n_rows / global_batch)
    epoch, within = divmod(step, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_rows, generator=generator).tolist()
    while len(order) < steps_per_epoch * global_batch:
        order += order[: steps_per_epoch * global_batch - len(order)]
    chunk = order[within * global_batch : (within + 1) * global_batch]
    micro = []
    for m in range(grad_accum):
        start = (m * processes + rank) * batch_size
        micro.append(chunk[start : start + batch_size])
    return micro
