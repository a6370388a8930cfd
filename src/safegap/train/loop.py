"""One optimizer step (micro-batches, global loss normalisation, regularisers, the update), the
metrics log and the progress bar."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from safegap.files import write_text_atomic
from safegap.train.config import TrainConfig
from safegap.train.data import AUX_KEYS, IGNORE_INDEX, ConversationEncoder, Example
from safegap.train.distributed import global_sum, global_sum_detached
from safegap.train.hooks import ExtraLoss, LossContext, capture_hidden_states, weighted_extra_losses
from safegap.train.setup import step_rows


# -- the loop ---------------------------------------------------------------------------------
class Metrics:
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


class StepLoop:
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


class Progress:
    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.enabled, self.total, self.start = enabled, total, start
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
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


def progress_bar(enabled: bool, total: int, start: int) -> Progress:
    return Progress(enabled, total, start)
