"""``safegap train``: train a VLM's projector or LLM, optionally with ReGap or TGA.

Runs as is on one device; ``accelerate launch [--multi_gpu|--cpu] --num_processes N
$(which safegap) train ...`` runs it on N processes (DDP, or FSDP/DeepSpeed through accelerate's
config). See ``docs/training.md``.
"""

from __future__ import annotations

import typer

from safegap.cli.common import fail, user_errors


def train_command(
    model: str = typer.Option(..., "--model", help="Checkpoint directory (or hub id) to start from."),
    data: str = typer.Option(..., "--data", help="Training JSONL in the LLaVA conversation convention."),
    out: str = typer.Option(
        ..., "--out", help="Output directory: HF checkpoint, metrics.jsonl, checkpoints/."
    ),
    stage: str = typer.Option(
        "projector", help="projector (LLM and vision frozen) or finetune (adds the LLM)."
    ),
    reg: str = typer.Option("none", help="Regulariser: none, regap or tga."),
    epochs: int = typer.Option(1, help="Passes over the data (ignored when --max-steps is set)."),
    max_steps: int | None = typer.Option(None, help="Optimizer steps in total."),
    batch_size: int = typer.Option(8, help="Rows per micro-batch per process."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    lr: float | None = typer.Option(
        None, help="Peak learning rate [projector 1e-3, finetune 2e-5, LoRA 2e-4]."
    ),
    weight_decay: float = typer.Option(0.0),
    warmup_ratio: float = typer.Option(0.03, help="Share of steps with a linear LR warm-up."),
    schedule: str = typer.Option("cosine", help="cosine or constant after the warm-up."),
    max_grad_norm: float = typer.Option(1.0, help="Gradient clipping (0 = off)."),
    mixed_precision: str | None = typer.Option(None, help="no, fp16 or bf16 [accelerate's config]."),
    dtype: str = typer.Option("float32", help="dtype of the weights being trained."),
    gradient_checkpointing: bool = typer.Option(False, help="Recompute activations to save memory."),
    seed: int = typer.Option(0),
    lora: bool = typer.Option(
        False, help="Stage finetune: LoRA on the LLM's linear layers (merged on save)."
    ),
    lora_r: int = typer.Option(16),
    lora_alpha: int = typer.Option(32),
    lora_dropout: float = typer.Option(0.05),
    image_folder: str | None = typer.Option(
        None, help="Root of relative image paths [the JSONL's directory]."
    ),
    system: str | None = typer.Option(None, help="System prompt rendered into every row."),
    max_length: int | None = typer.Option(None, help="Truncate rows to this many tokens."),
    caption_template: str = typer.Option("chat", help="TGA caption pass: chat (a user turn) or plain."),
    reg_weight: float = typer.Option(1.0, help="Weight of the regulariser (ReGap's lambda, TGA's weight)."),
    regap_layers: str = typer.Option("0", help="ReGap layers: decoder indices and/or 'embed', e.g. '0'."),
    regap_alpha: str = typer.Option(
        "warmup_text_norm", help="warmup_text_norm, batch_text_norm, loss_balance or none."
    ),
    regap_warmup: int | None = typer.Option(None, help="Steps before the scale a freezes [the LR warm-up]."),
    regap_text_tokens: str = typer.Option("after_image", help="after_image or all."),
    regap_cov: str = typer.Option("none", help="Covariance term: none, trace or match."),
    regap_cov_weight: float = typer.Option(1.0),
    tga_layers: str | None = typer.Option(
        None, help="TGA layers: '4-7', '2,4-6' or a `safegap layers` JSON."
    ),
    tga_decay: str = typer.Option("none", help="none or linear (weight decays to 0 over training)."),
    checkpoint_every: int = typer.Option(100, help="Steps between checkpoints (0 = none)."),
    keep_checkpoints: int = typer.Option(2, help="Checkpoints kept (0 = all)."),
    resume: bool = typer.Option(True, help="Resume from the last checkpoint in --out if there is one."),
    stop_after: int | None = typer.Option(
        None, help="Checkpoint and exit after this many steps of this invocation (time-sliced jobs)."
    ),
    log_every: int = typer.Option(1, help="Steps between metrics lines."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train MODEL on DATA and write an HF checkpoint to OUT."""
    from safegap.train.config import TrainConfig
    from safegap.train.trainer import train

    with user_errors():
        config = TrainConfig(
            model=model,
            data=data,
            out=out,
            stage=stage,
            reg=reg,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=lr,
            weight_decay=weight_decay,
            warmup_ratio=warmup_ratio,
            schedule=schedule,
            max_grad_norm=max_grad_norm or None,
            mixed_precision=mixed_precision,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            seed=seed,
            lora=lora,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            image_folder=image_folder,
            system=system,
            max_length=max_length,
            caption_template=caption_template,
            reg_weight=reg_weight,
            regap_layers=regap_layers,
            regap_alpha=regap_alpha,
            regap_warmup=regap_warmup,
            regap_text_tokens=regap_text_tokens,
            regap_cov=regap_cov,
            regap_cov_weight=regap_cov_weight,
            tga_layers=tga_layers,
            tga_decay=tga_decay,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            resume=resume,
            stop_after=stop_after,
            log_every=log_every,
            progress=progress,
        )
        result = train(config)
    if not result.main_process:
        return
    if not result.completed:
        typer.echo(f"stopped after step {result.steps}; run the same command again to resume")
        return
    if not result.out_dir.is_dir():
        raise fail(f"training finished but {result.out_dir} was not written")
    typer.echo(f"trained {result.steps} steps -> {result.out_dir}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
