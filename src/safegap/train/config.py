"""What a training run is asked to do (:class:`TrainConfig`) and what it reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from safegap.train.regap import parse_regap_layers

STAGES = ("projector", "finetune")
REGULARISERS = ("none", "regap", "tga")
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
