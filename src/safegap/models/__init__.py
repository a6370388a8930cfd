"""Model loading and family adapters."""

from safegap.models.adapter import ADAPTERS, ImagesArg, VLMAdapter, register_adapter
from safegap.models.loading import VLM, UnknownArchitectureError, load_vlm, supported_families

__all__ = [
    "ADAPTERS",
    "VLM",
    "ImagesArg",
    "UnknownArchitectureError",
    "VLMAdapter",
    "load_vlm",
    "register_adapter",
    "supported_families",
]
