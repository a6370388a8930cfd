"""``safegap train``: projector or LLM training of a VLM, with an optional ReGap or TGA term.

Built on ``accelerate``: the same call runs on one CPU, one GPU or many processes
(``accelerate launch``; DDP, FSDP or DeepSpeed through accelerate's config). Design choices that
matter for reproducibility:

* **Data order is a pure function of (seed, epoch, step).** Each optimizer step takes a *global*
  batch of ``batch_size × processes × grad_accum`` rows; micro-batch ``m`` of process ``r`` is a
  fixed slice of it. So N processes see exactly the rows one process would, and resuming needs no
  sampler state.
* **Every loss is a global quantity.** The LM loss is the mean over all assistant tokens of the
  step (all micro-batches, all processes); regularisers pool their means over all processes
  (``safegap.train.distributed``). N processes therefore follow the single-process trajectory up
  to floating-point reduction order.
* **Checkpoints are safetensors + JSON** (``safegap.train.checkpoint``): nothing is unpickled on
  resume.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from safegap.files import write_text_atomic
from safegap.train import checkpoint as ckpt
from safegap.train.data import AUX_KEYS, IGNORE_INDEX, ConversationEncoder, Example, read_conversations
from safegap.train.distributed import global_sum, global_sum_detached
from safegap.train.hooks import (
    ExtraLoss,
    LossContext,
    StatefulLoss,
    capture_hidden_states,
    weighted_extra_losses,
)
from safegap.train.layers import resolve_layer_spec
from safegap.train.regap import ReGapLoss, parse_regap_layers
from safegap.train.tga import TGALoss

STAGES = ("projector", "finetune")
REGULARISERS = ("none", "regap", "tga")
#: Module-name suffixes of the vision-to-language projector, per family.
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "visual.merger", "merger")
DEFAULT_LR = {"projector": 1e-3, "finetune": 2e-5, "lora": 2e-4}
#: Config fields that must match to resume from a checkpoint.
RESUME_KEYS = ("model", "stage", "reg", "lora", "seed", "global_batch", "total_steps", "rows")


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI maps its options onto these fields one to one."""

    model: str
    data: str
    out: str
    stage: str = "projector"
    reg: str = "none"
    # optimisation
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    schedule: str = "cosine"
    max_grad_norm: float | None = 1.0
    mixed_precision: str | None = None
    dtype: str | None = "float32"
    gradient_checkpointing: bool = False
    seed: int = 0
    # LoRA (stage finetune)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # data
    image_folder: str | None = None
    system: str | None = None
    max_length: int | None = None
    caption_template: str = "chat"
    # regulariser
    reg_weight: float = 1.0
    regap_layers: str = "0"
    regap_alpha: str = "warmup_text_norm"
    regap_warmup: int | None = None
    regap_text_tokens: str = "after_image"
    regap_cov: str = "none"
    regap_cov_weight: float = 1.0
    tga_layers: str | None = None
    tga_decay: str = "none"
    # bookkeeping
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = True
    stop_after: int | None = None
    log_every: int = 1
    progress: bool = True

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} not in {STAGES}")
        if self.reg not in REGULARISERS:
            raise ValueError(f"reg {self.reg!r} not in {REGULARISERS}")
        if self.lora and self.stage != "finetune":
            raise ValueError("LoRA applies to the LLM: use it with --stage finetune")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule {self.schedule!r} not in ('cosine', 'constant')")
        for name in ("batch_size", "grad_accum", "epochs", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError("stop_after must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.reg == "tga" and not self.tga_layers:
            raise ValueError(
                "TGA needs its layers: pass tga_layers ('4-7' or the JSON written by `safegap layers`)"
            )
        parse_regap_layers(self.regap_layers)

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_LR["lora" if self.lora else self.stage]


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    completed: bool
    resumed_from: int | None
    metrics_path: Path
    final: dict[str, float] = field(default_factory=dict)
    main_process: bool = True


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


# -- the loop ---------------------------------------------------------------------------------
class _Metrics:
    """Appends one JSON line per logged step (one ``write`` per line, so lines never interleave)."""

    def __init__(self, path: Path, keep_until: int | None, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        kept = []
        if keep_until is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= keep_until:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
        write_text_atomic(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in AUX_KEYS}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _label_tokens(batch: dict[str, Any]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _save_processor(processor: Any, tokenizer: Any, out: Path) -> None:
    if hasattr(processor, "save_pretrained"):
        processor.save_pretrained(out)
        return
    tokenizer.save_pretrained(out)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        image_processor.save_pretrained(out)
    template = getattr(processor, "chat_template", None)
    if template and not getattr(tokenizer, "chat_template", None):
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")


def _check_process_group(accelerate_processes: int) -> None:
    """Refuse the silent failure where N processes run but accelerate treats each as a lone run
    (e.g. ``accelerate launch --multi_gpu`` on a machine without GPUs): they would all train on
    the same rows and overwrite each other's output."""
    import torch.distributed as dist

    started = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    started = max(started, int(os.environ.get("WORLD_SIZE", "1")))
    if started != accelerate_processes:
        raise ValueError(
            f"{started} processes were launched but accelerate runs {accelerate_processes}; on CPU launch "
            "with ACCELERATE_USE_CPU=1 (accelerate launch --multi_gpu ... or torchrun)"
        )


def _check_sharded_checkpoints(accelerator: Any, cfg: TrainConfig, out: Path) -> None:
    """Intermediate checkpoints save each trainable parameter whole; FSDP and DeepSpeed shard them
    (and their optimizer state), which this format does not gather yet. Refuse rather than write
    a checkpoint that would resume wrongly. The final HF checkpoint is gathered and works."""
    kind = str(getattr(accelerator, "distributed_type", "")).upper()
    if "FSDP" not in kind and "DEEPSPEED" not in kind:
        return
    if cfg.checkpoint_every or cfg.stop_after or (cfg.resume and ckpt.latest_checkpoint(out) is not None):
        raise ValueError(
            "intermediate checkpoints and resume are not supported under FSDP/DeepSpeed yet; "
            "pass --checkpoint-every 0 and no --stop-after (the final checkpoint is still written)"
        )


class Trainer:
    """One training run. ``Trainer(cfg).run()`` is what :func:`train` does."""

    def __init__(self, cfg: TrainConfig, extra_losses: Sequence[ExtraLoss] = ()) -> None:
        cfg.validate()
        self.cfg = cfg
        self.extra_losses = list(extra_losses)
        self.out = Path(cfg.out)

    def run(self) -> TrainResult:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        from safegap.models import load_vlm

        cfg = self.cfg
        examples = read_conversations(cfg.data, cfg.image_folder)
        find_unused = any(ex.image is None for ex in examples)
        accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        )
        self.accelerator = accelerator
        _check_process_group(accelerator.num_processes)
        _check_sharded_checkpoints(accelerator, cfg, self.out)
        processes, rank = accelerator.num_processes, accelerator.process_index
        global_batch = cfg.batch_size * processes * cfg.grad_accum
        steps_per_epoch = math.ceil(len(examples) / global_batch)
        total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
        lr_warmup = math.ceil(cfg.warmup_ratio * total_steps)
        set_seed(cfg.seed)

        vlm = load_vlm(cfg.model, dtype=cfg.dtype)
        adapter = vlm.adapter
        terms = build_regulariser(cfg, adapter, lr_warmup, total_steps) + self.extra_losses
        encoder = ConversationEncoder(
            adapter,
            system=cfg.system,
            max_length=cfg.max_length,
            with_captions=any(isinstance(t, TGALoss) for t in terms),
            caption_template=cfg.caption_template,  # type: ignore[arg-type]
        )
        if encoder.with_captions and not any(ex.caption for ex in examples):
            raise ValueError(f"{cfg.data}: TGA needs a 'caption' field on image rows; no row has one")
        model: Any = configure_trainable(vlm.model, adapter, cfg)
        if cfg.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        named = trainable_parameters(model)
        names = [n for n, _ in named]
        optimizer = torch.optim.AdamW(
            [p for _, p in named], lr=cfg.learning_rate(), weight_decay=cfg.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(total_steps, lr_warmup, cfg.schedule)
        )
        model, optimizer = accelerator.prepare(model, optimizer)

        run_facts = {
            "model": cfg.model,
            "stage": cfg.stage,
            "reg": cfg.reg,
            "lora": cfg.lora,
            "seed": cfg.seed,
            "global_batch": global_batch,
            "total_steps": total_steps,
            "rows": len(examples),
        }
        start_step, resumed_from = 0, None
        latest = ckpt.latest_checkpoint(self.out) if cfg.resume else None
        if latest is not None:
            start_step = self._resume(latest, run_facts, model, optimizer, scheduler, terms, names)
            resumed_from = start_step
        if accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        metrics = _Metrics(
            self.out / "metrics.jsonl", start_step if latest else None, accelerator.is_main_process
        )

        loop = _Loop(
            accelerator, model, adapter, optimizer, scheduler, terms, encoder, examples, cfg, processes, rank
        )
        last: dict[str, float] = {}
        progress = _progress_bar(cfg.progress and accelerator.is_local_main_process, total_steps, start_step)
        completed = True
        done = start_step
        with progress:
            for step in range(start_step, total_steps):
                record = loop.step(step)
                last = record
                if accelerator.is_main_process and (
                    (step + 1) % cfg.log_every == 0 or step + 1 == total_steps
                ):
                    metrics.write({"step": step + 1, "epoch": step // steps_per_epoch, **record})
                progress.advance(record)
                done = step + 1
                stopping = (
                    cfg.stop_after is not None and done - start_step >= cfg.stop_after and done < total_steps
                )
                if (
                    cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total_steps
                ) or stopping:
                    self._save_checkpoint(done, run_facts, model, optimizer, scheduler, terms, names)
                if stopping:
                    completed = False
                    break
        if completed:
            self._save_final(
                vlm, model, {**run_facts, "processes": processes, "config": asdict(cfg), "final": last}
            )
        accelerator.wait_for_everyone()
        return TrainResult(
            self.out,
            done,
            completed,
            resumed_from,
            self.out / "metrics.jsonl",
            last,
            accelerator.is_main_process,
        )

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(
        self,
        step: int,
        facts: dict[str, Any],
        model: Any,
        optimizer: Any,
        scheduler: Any,
        terms: Sequence[ExtraLoss],
        names: list[str],
    ) -> None:
        acc = self.accelerator
        staging = ckpt.staging_dir(self.out, step)
        if acc.is_main_process:
            staging.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        ckpt.write_rng(staging, acc.process_index)
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(model)
            trainable = {n: p for n, p in unwrapped.named_parameters() if p.requires_grad}
            state = {
                "step": step,
                "run": facts,
                "scheduler": scheduler.state_dict(),
                "terms": {t.name: t.state_dict() for t in terms if isinstance(t, StatefulLoss)},
            }
            ckpt.write_main(staging, trainable, ckpt.optimizer_tensors(optimizer.state_dict(), names), state)
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.publish(self.out, step, self.cfg.keep_checkpoints)
        acc.wait_for_everyone()

    def _resume(
        self,
        directory: Path,
        facts: dict[str, Any],
        model: Any,
        optimizer: Any,
        scheduler: Any,
        terms: Sequence[ExtraLoss],
        names: list[str],
    ) -> int:
        state = ckpt.read_state(directory)
        for key in RESUME_KEYS:
            if state["run"].get(key) != facts[key]:
                raise ValueError(
                    f"cannot resume from {directory}: {key} was {state['run'].get(key)!r}, now {facts[key]!r} "
                    "(use a new --out, or --no-resume to start over)"
                )
        saved = ckpt.read_tensors(directory / "trainable.safetensors")
        unwrapped = self.accelerator.unwrap_model(model)
        params = dict(unwrapped.named_parameters())
        missing = [n for n in names if n not in saved]
        if missing:
            raise ValueError(f"{directory}: checkpoint lacks trainable parameters {missing[:3]}")
        with torch.no_grad():
            for name in names:
                params[name].copy_(saved[name].to(params[name].device, params[name].dtype))
        opt_tensors = ckpt.read_tensors(directory / "optimizer.safetensors")
        optimizer.load_state_dict(
            ckpt.optimizer_state_from(opt_tensors, state["optimizer"], names, optimizer.state_dict())
        )
        scheduler.load_state_dict(state["scheduler"])
        for term in terms:
            if isinstance(term, StatefulLoss) and term.name in state.get("terms", {}):
                term.load_state_dict(state["terms"][term.name])
        rng = directory / f"rng-rank{self.accelerator.process_index}.safetensors"
        if rng.is_file():
            ckpt.restore_rng(ckpt.read_tensors(rng))
        return int(state["step"])

    def _save_final(self, vlm: Any, model: Any, summary: dict[str, Any]) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        state_dict = None if self.cfg.lora else acc.get_state_dict(model)
        if not acc.is_main_process:
            return
        unwrapped = acc.unwrap_model(model)
        if self.cfg.lora:
            unwrapped = unwrapped.merge_and_unload()
        unwrapped.save_pretrained(self.out, state_dict=state_dict)
        _save_processor(vlm.processor, vlm.tokenizer, self.out)
        write_text_atomic(self.out / "safegap_train.json", json.dumps(summary, indent=1, default=str))


class _Loop:
    """One optimizer step: micro-batches, global normalisation, regularisers, the update."""

    def __init__(
        self,
        accelerator: Any,
        model: Any,
        adapter: Any,
        optimizer: Any,
        scheduler: Any,
        terms: Sequence[ExtraLoss],
        encoder: ConversationEncoder,
        examples: list[Example],
        cfg: TrainConfig,
        processes: int,
        rank: int,
    ) -> None:
        self.acc, self.model, self.adapter = accelerator, model, adapter
        self.optimizer, self.scheduler, self.terms = optimizer, scheduler, list(terms)
        self.encoder, self.examples, self.cfg = encoder, examples, cfg
        self.processes, self.rank = processes, rank

    def step(self, step: int) -> dict[str, float]:
        cfg, acc = self.cfg, self.acc
        started = time.perf_counter()
        micro_rows = step_rows(
            len(self.examples), step, cfg.seed, cfg.batch_size, self.processes, cfg.grad_accum, self.rank
        )
        batches = [
            self.encoder.collate([self.encoder.encode(self.examples[i]) for i in rows]) for rows in micro_rows
        ]
        counts = global_sum_detached(
            torch.tensor([float(_label_tokens(b)) for b in batches], device=acc.device)
        )
        step_tokens = float(counts.sum())
        computing = time.perf_counter()
        totals: dict[str, float] = {"lm_loss": 0.0, "reg_loss": 0.0}
        extras: dict[str, list[float]] = {}
        for m, batch in enumerate(batches):
            batch = _to_device(batch, acc.device)
            last = m == len(batches) - 1
            with nullcontext() if last else acc.no_sync(self.model), acc.autocast():
                with capture_hidden_states(self.adapter.decoder_layers) as capture:
                    out = self.model(**_model_inputs(batch), use_cache=False)
                logits = out.logits[:, :-1].float()
                ce_sum = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    batch["labels"][:, 1:].reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                ce_global = global_sum(ce_sum)
                lm = ce_global / max(step_tokens, 1.0)
                micro_lm = ce_global.detach() / max(float(counts[m]), 1.0)
                ctx = LossContext.from_capture(self.model, batch, capture, self.adapter, step, micro_lm)
                reg = weighted_extra_losses(ctx, self.terms) / len(batches)
                loss = lm + reg
            acc.backward(loss)
            totals["lm_loss"] += float(lm.detach())
            totals["reg_loss"] += float(reg.detach())
            for key, value in ctx.extras.items():
                extras.setdefault(key, []).append(float(value))
        grad_norm = None
        if cfg.max_grad_norm:
            grad_norm = acc.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        record = {
            "loss": totals["lm_loss"] + totals["reg_loss"],
            **totals,
            "lr": lr,
            "tokens": step_tokens,
            "step_time_s": time.perf_counter() - started,
            "compute_time_s": time.perf_counter() - computing,
        }
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        for key, values in extras.items():
            record[key] = sum(values) / len(values)
        return record


class _Progress:
    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.enabled, self.total, self.start = enabled, total, start
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.total, completed=self.start)
        return self

    def advance(self, record: dict[str, float]) -> None:
        if self._bar is None:
            return
        parts = [f"loss {record['lm_loss']:.4f}"]
        for key in ("regap/value", "tga/value"):
            if key in record:
                parts.append(f"{key.split('/')[0]} {record[key]:.4f}")
        self._bar.update(self._task, advance=1, description="  ".join(parts))

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _progress_bar(enabled: bool, total: int, start: int) -> _Progress:
    return _Progress(enabled, total, start)


def train(config: TrainConfig, extra_losses: Sequence[ExtraLoss] = ()) -> TrainResult:
    """Train per ``config``; ``extra_losses`` are added to the term ``config.reg`` selects."""
    return Trainer(config, extra_losses).run()
