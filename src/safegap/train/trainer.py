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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from safegap.files import write_text_atomic
from safegap.train import checkpoint as ckpt
from safegap.train.config import RESUME_KEYS, TrainConfig, TrainResult
from safegap.train.data import ConversationEncoder, read_conversations
from safegap.train.hooks import ExtraLoss, StatefulLoss
from safegap.train.loop import Metrics, StepLoop, progress_bar
from safegap.train.setup import build_regulariser, configure_trainable, lr_lambda, trainable_parameters
from safegap.train.tga import TGALoss


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
        metrics = Metrics(
            self.out / "metrics.jsonl", start_step if latest else None, accelerator.is_main_process
        )

        loop = StepLoop(
            accelerator, model, adapter, optimizer, scheduler, terms, encoder, examples, cfg, processes, rank
        )
        last: dict[str, float] = {}
        progress = progress_bar(cfg.progress and accelerator.is_local_main_process, total_steps, start_step)
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


def train(config: TrainConfig, extra_losses: Sequence[ExtraLoss] = ()) -> TrainResult:
    """Train per ``config``; ``extra_losses`` are added to the term ``config.reg`` selects."""
    return Trainer(config, extra_losses).run()
