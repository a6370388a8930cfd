"""A batch's images through the family's own image processor, on several CPU cores.

Batching a VLM's generation leaves its image preprocessing per image: the processor converts,
resizes and normalises one image after another (PIL and numpy), and on a small model or a fast
accelerator that becomes a large part of a batch's time (on the organism, a third of a batch of
16). PIL and numpy release the GIL while they work, so threads that each take a chunk of the
batch use the other cores.

The chunks' outputs are joined only where that is exactly what one call returns: every output a
tensor (or array) with one entry per image along its first axis and the same trailing shape in
every chunk (``pixel_values``, ``image_sizes``). The first batch whose chunks cannot be joined
(patches of all images flattened together; tiles padded to each chunk's largest image, which
differ) is processed again in one call, and from then on that processor runs once per batch, as
it would without this module: no batch after that pays for its images twice.

Workers: ``$SAFEGAP_PREPROCESS_WORKERS`` if set (1 turns this off), else the CPU cores this
process may use, at most 8.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

WORKERS_ENV = "SAFEGAP_PREPROCESS_WORKERS"
#: Fewest images a thread takes: below that, handing work to a thread costs more than it saves.
MIN_CHUNK = 4
MAX_WORKERS = 8

T = TypeVar("T")
R = TypeVar("R")

_THREAD_PREFIX = "safegap-preprocess"
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def default_workers() -> int:
    """Threads for preprocessing (see the module docstring)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"${WORKERS_ENV} must be a whole number of threads, got {raw!r}") from None
        if value < 1:
            raise ValueError(f"${WORKERS_ENV} must be at least 1, got {value}")
        return value
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def _shared_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=_THREAD_PREFIX)
        return _pool


def map_in_threads(function: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """``[function(x) for x in items]``, in order, over up to ``workers`` threads (exceptions are
    raised as in the loop). For work that releases the GIL: image decoding, resizing, file reads."""
    workers = default_workers() if workers is None else workers
    # A call from one of the pool's own threads runs in that thread: waiting there for the pool
    # could wait forever once every thread of the pool is waiting.
    nested = threading.current_thread().name.startswith(_THREAD_PREFIX)
    if workers <= 1 or len(items) <= 1 or nested:
        return [function(x) for x in items]
    return list(_shared_pool(workers).map(function, items))


def _chunks(items: list[T], workers: int) -> list[list[T]]:
    n = max(1, min(workers, len(items) // MIN_CHUNK))
    return [items[i * len(items) // n : (i + 1) * len(items) // n] for i in range(n)]


class _CannotJoin(ValueError):
    """The chunks' outputs do not add up to one call's result."""


def _join(outputs: list[Any], sizes: list[int]) -> dict[str, Any]:
    """Concatenate per-chunk outputs along the image axis (:class:`_CannotJoin` where that would
    not be one call's result)."""
    keys = list(outputs[0].keys())
    if any(list(o.keys()) != keys for o in outputs):
        raise _CannotJoin("chunks returned different keys")
    joined: dict[str, Any] = {}
    for key in keys:
        values = [o[key] for o in outputs]
        if not all(isinstance(v, torch.Tensor | np.ndarray) for v in values):
            raise _CannotJoin(f"{key} is not a tensor")
        if any(v.ndim == 0 or v.shape[0] != n for v, n in zip(values, sizes, strict=True)):
            raise _CannotJoin(f"{key} has no per-image first axis")
        if len({tuple(v.shape[1:]) for v in values}) != 1:
            raise _CannotJoin(f"{key} differs in shape between chunks")
        joined[key] = torch.cat(values) if isinstance(values[0], torch.Tensor) else np.concatenate(values)
    return joined


class ChunkedImageProcessor:
    """Stands in for an image processor: a flat list of images is processed in chunks, in threads,
    and the results joined (bit-identical to one call; see the module docstring). Everything else
    (attributes, other call forms) goes to the wrapped processor."""

    def __init__(self, inner: Any, workers: int | None = None) -> None:
        self._inner = inner
        self._workers = default_workers() if workers is None else workers
        #: False once a batch's chunks could not be joined (then it runs in one call from then on).
        self.per_image: bool | None = None

    @property
    def inner(self) -> Any:
        return self._inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, images: Any = None, *args: Any, **kwargs: Any) -> Any:
        if (
            args
            or self._workers <= 1
            or self.per_image is False
            or not isinstance(images, list)
            or len(images) < 2 * MIN_CHUNK
            or not all(isinstance(img, Image.Image) for img in images)
        ):
            return self._inner(images, *args, **kwargs)
        chunks = _chunks(images, self._workers)
        outputs = map_in_threads(lambda chunk: self._inner(chunk, **kwargs), chunks, self._workers)
        try:
            joined = _join(outputs, [len(c) for c in chunks])
        except _CannotJoin:
            self.per_image = False
            return self._inner(images, **kwargs)
        self.per_image = True
        return BatchFeature(joined)


def with_chunked_images(processor: Any, workers: int | None = None) -> Any:
    """A shallow copy of ``processor`` whose image processor is chunked (``processor`` itself is
    left as it is, so saving it writes the real one); ``processor`` where there is nothing to do."""
    import copy

    image_processor = getattr(processor, "image_processor", None)
    workers = default_workers() if workers is None else workers
    if image_processor is None or workers <= 1:
        return processor
    clone = copy.copy(processor)
    clone.image_processor = ChunkedImageProcessor(image_processor, workers)
    return clone
