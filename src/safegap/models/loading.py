"""``load_vlm``: one call from a local directory or hub id to a model with its family adapter."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from safegap.models import families  # noqa: F401  (registers every adapter)
from safegap.models.adapter import ADAPTERS, ImagesArg, VLMAdapter


class UnknownArchitectureError(ValueError):
    """Raised for a model type no adapter is registered for."""


@dataclass
class VLM:
    """A loaded VLM: the HF model, its processor and tokenizer, and its family adapter."""

    model: Any
    processor: Any
    tokenizer: Any
    adapter: VLMAdapter
    name_or_path: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def build_inputs(self, texts: list[str], images: ImagesArg = None, system: str | None = None) -> Any:
        """Adapter inputs moved to the model's device."""
        return self.adapter.build_inputs(texts, images, system).to(self.device)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this model for provenance (shift vectors, results)."""
        facts = self.adapter.describe()
        return {
            "architecture": facts["architecture"],
            "num_layers": facts["num_layers"],
            "hidden_size": facts["hidden_size"],
            "name_or_path": self.name_or_path,
        }


def supported_families() -> list[str]:
    return sorted({cls.family for cls in ADAPTERS.values()})


def adapter_class(model_type: str, layers_path: str | None = None) -> type[VLMAdapter]:
    """The adapter for ``model_type``, or the generic one when ``layers_path`` is given."""
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    if layers_path is not None:
        return VLMAdapter
    raise UnknownArchitectureError(
        f"unsupported architecture {model_type!r}; supported families: {', '.join(supported_families())}. "
        "For another model pass layers_path='dotted.path.to.layers' (CLI: --layers-path) to use the "
        "generic adapter, or add an adapter file under safegap/models/."
    )


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a filesystem path rather than a hub id (``org/name``)."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")


def check_local_path(name: str) -> None:
    """A one-line error for a local path that does not exist (before Hugging Face tries the hub)."""
    path = Path(name).expanduser()
    if looks_local(name) and not path.exists():
        raise FileNotFoundError(f"model path {name!r} does not exist")
    if path.is_file():
        raise ValueError(f"model path {name!r} is a file; pass the checkpoint directory")


def load_vlm(
    name_or_path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    layers_path: str | None = None,
    trust_remote_code: bool = False,
) -> VLM:
    """Load a VLM with ``AutoModelForImageTextToText`` and pick its family adapter.

    ``layers_path`` overrides where the decoder layers are (and enables unknown architectures).
    ``trust_remote_code`` stays off unless the caller asks for it.
    """
    name = str(name_or_path)
    check_local_path(name)
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
        dtype = resolved
    config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    cls = adapter_class(config.model_type, layers_path)
    model = AutoModelForImageTextToText.from_pretrained(
        name, dtype=dtype or "auto", trust_remote_code=trust_remote_code
    )
    if device is not None:
        model.to(torch.device(device))  # type: ignore[arg-type]
    model.eval()
    processor, tokenizer = cls.load_processor(name, trust_remote_code)
    adapter = cls(model, processor, tokenizer, layers_path=layers_path)
    return VLM(model=model, processor=processor, tokenizer=tokenizer, adapter=adapter, name_or_path=name)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
