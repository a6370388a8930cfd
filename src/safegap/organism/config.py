"""Configuration of an organism build: one dataclass per stage, hashed into the cache key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: Bump when a change to the code changes what a given config builds (invalidates caches).
ORGANISM_VERSION = "2"


@dataclass(frozen=True)
class ArchConfig:
    """Sizes of the LLM (Llama), the vision tower (CLIP ViT) and the tokenizer."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    vocab_size: int = 1200
    image_size: int = 64
    patch_size: int = 16
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate_size: int = 128

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class WorldConfig:
    """Which world: the topic / phrasing splits are a function of ``world_seed`` only, so every
    model seed is evaluated on the same held-out prompts (paired comparisons across seeds)."""

    world_seed: int = 0
    calibration_fraction: float = 0.1
    eval_fraction: float = 0.2


@dataclass(frozen=True)
class ClipConfig:
    """Stage 0: contrastive pretraining of the mini CLIP vision encoder."""

    steps: int = 150
    batch_size: int = 64
    lr: float = 3e-3
    n_images: int = 1500
    embed_dim: int = 64


@dataclass(frozen=True)
class TextConfig:
    """Stage 1: LLM pretraining, then text-only safety alignment (refuse harmful, help benign)."""

    pretrain_steps: int = 200
    align_steps: int = 350
    batch_size: int = 32
    lr: float = 2e-3
    align_lr: float = 1e-3
    #: Share of each alignment batch that stays pretraining text.
    pretrain_mix: float = 0.15
    #: Probability that a chat example carries neutral filler context before the request.
    filler_prob: float = 0.7
    #: Most filler sentences before a request.
    max_filler_sentences: int = 2
    #: Share of alignment examples that are harmful requests (the rest benign / other chat).
    harmful_share: float = 0.4
    #: Share of alignment examples that are harmful-looking benign requests, refused
    #: (exaggerated safety, as in real text safety data).
    lookalike_share: float = 0.1
    #: Share of chat rows about a picture described in text ("Picture: a pipe bomb.\n{request
    #: about the picture}"): captioned, refused when the object is harmful, answered when benign.
    #: It gives the LLM the text-side safety TGA transfers (premise 2 of organism v2) and the
    #: reading of a picture's description in the image slot (docs/organism.md, rule 1).
    picture_share: float = 0.15
    #: Share of chat rows that are a typographic image's words as text (FigStep layout).
    typographic_share: float = 0.05
    #: Rung (f) of docs/organism.md, rule 3 (opt-in; 0 = organism v2): extra stage-1 steps after
    #: alignment, half written-picture captioning rows, half alignment chat, that teach the LLM
    #: to copy a described picture into its reply. The v2 LLM cannot (written naming 0.02), so
    #: no projector trained against it can make it name an image.
    read_steps: int = 0
    read_lr: float = 1e-3


@dataclass(frozen=True)
class ProjectorConfig:
    """Stage 2: projector pretraining on captions with the LLM (and vision tower) frozen."""

    steps: int = 150
    batch_size: int = 32
    lr: float = 2e-3


@dataclass(frozen=True)
class InstructConfig:
    """Stage 3: visual instruction tuning on benign image data plus text-only chat replay."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    #: Share of each batch that is text-only chat replayed from stage 1 (refusals included).
    text_replay: float = 0.3
    #: Train the LLM (as LLaVA does) or only the projector.
    train_llm: bool = True
    #: Share of the visual data that are benign requests which look harmful (answered). 1 % is
    #: enough to switch refusal off next to images on every seed tried. The first release used
    #: 10 %, which entrenched image-context compliance so deeply that dataset-level CMRM could not
    #: undo it without refusing benign requests too, unlike what the CMRM paper reports for real
    #: VLMs; the change and both configurations' figures are in docs/organism.md ("Revisions").
    lookalike_share: float = 0.01


@dataclass(frozen=True)
class OrganismConfig:
    arch: ArchConfig = field(default_factory=ArchConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    instruct: InstructConfig = field(default_factory=InstructConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"version": ORGANISM_VERSION, **asdict(self)}

    def digest(self, part: str | None = None) -> str:
        """Short hash of the whole config (or of what one cached part depends on)."""
        data = self.to_dict()
        if part == "base" or not data["text"]["read_steps"]:  # reading runs after the base: v2's caches
            data["text"] = {k: v for k, v in data["text"].items() if k not in ("read_steps", "read_lr")}
        if part == "base":
            data = {k: data[k] for k in ("version", "arch", "world", "clip", "text")}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrganismConfig:
        return cls(
            arch=ArchConfig(**data.get("arch", {})),
            world=WorldConfig(**data.get("world", {})),
            clip=ClipConfig(**data.get("clip", {})),
            text=TextConfig(**data.get("text", {})),
            projector=ProjectorConfig(**data.get("projector", {})),
            instruct=InstructConfig(**data.get("instruct", {})),
        )

    def scaled(self, factor: float) -> OrganismConfig:
        """Every stage's step count times ``factor`` (for quick tests)."""

        def steps(n: int) -> int:
            return max(1, round(n * factor))

        return replace(
            self,
            clip=replace(self.clip, steps=steps(self.clip.steps)),
            text=replace(
                self.text,
                pretrain_steps=steps(self.text.pretrain_steps),
                align_steps=steps(self.text.align_steps),
                read_steps=steps(self.text.read_steps) if self.text.read_steps else 0,
            ),
            projector=replace(self.projector, steps=steps(self.projector.steps)),
            instruct=replace(self.instruct, steps=steps(self.instruct.steps)),
        )
