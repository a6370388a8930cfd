"""``load_vlm``: one call from a local directory or hub id to a model with its family adapter."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from safegap.errors import UserError, first_line
from safegap.models import families  # noqa: F401  (registers every adapter)
from safegap.models.adapter import ADAPTERS, ImagesArg, VLMAdapter
from safegap.models.checks import check_device, weight_errors


class LayersPathError(UserError, AttributeError):
    """``layers_path`` does not lead to the decoder layers (an ``AttributeError`` as before)."""


class UnknownArchitectureError(UserError):
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

    def generate(self, texts: list[str], images: ImagesArg = None, **options: Any) -> list[str]:
        """Greedy replies (:func:`safegap.models.generation.generate`; steering hooks apply)."""
        from safegap.models.generation import generate

        return generate(self, texts, images, **options)

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
    if path.is_file() and path.suffix.lower() != ".gguf":
        raise ValueError(f"model path {name!r} is a file; pass the checkpoint directory (or a .gguf file)")


def split_gguf(name: str) -> tuple[str, str | None]:
    """``(directory, file name)`` for a path to a ``.gguf`` file, else ``(name, None)``.

    Hugging Face loads GGUF (dequantised to float32) as ``from_pretrained(dir, gguf_file=name)``;
    it needs the ``gguf`` package and supports text architectures only."""
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return str(path.parent), path.name
    return name, None


def load_vlm(
    name_or_path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    layers_path: str | None = None,
    trust_remote_code: bool = False,
) -> VLM:
    """Load a model and pick its family adapter: a VLM with ``AutoModelForImageTextToText``, or a
    text-only causal LM (``llama``, ``qwen2``, ... configs; :mod:`safegap.models.causal_lm`) with
    ``AutoModelForCausalLM``. ``name_or_path`` may also be a ``.gguf`` file of a text-only model.

    ``layers_path`` overrides where the decoder layers are (and enables unknown architectures).
    ``trust_remote_code`` stays off unless the caller asks for it.
    """
    name = str(name_or_path)
    check_local_path(name)
    target = check_device(device)
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
        dtype = resolved
    source, gguf_file = split_gguf(name)
    if gguf_file and importlib.util.find_spec("gguf") is None:
        raise ValueError(
            f"model {name!r}: loading a .gguf file needs the gguf package "
            "(pip install gguf, or the safegap[smollm2] extra)"
        )
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    with weight_errors(name):
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
        cls = adapter_class(config.model_type, layers_path)
        # an accelerator gets the weights as they load (accelerate's device_map): no full copy on
        # the CPU first; the CPU (or no device) loads as transformers does by default
        placement = None if target is None or target.type in ("cpu", "meta") else target
        model = cls.load_model(source, dtype, trust_remote_code, gguf_file, device_map=placement)
        if target is not None and placement is None:
            model.to(target)  # type: ignore[arg-type]
        model.eval()
        processor, tokenizer = cls.load_processor(source, trust_remote_code, gguf_file)
    try:
        adapter = cls(model, processor, tokenizer, layers_path=layers_path)
        if layers_path is not None:
            adapter.decoder_layers  # noqa: B018 - resolve the path now, while the error is clear
    except (AttributeError, TypeError, ValueError) as exc:
        if layers_path is None:
            raise
        raise LayersPathError(f"--layers-path {layers_path!r} for {name}: {first_line(exc)}") from None
    return VLM(model=model, processor=processor, tokenizer=tokenizer, adapter=adapter, name_or_path=name)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
