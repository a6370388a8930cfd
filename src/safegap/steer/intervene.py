"""The hook engine: add a per-layer correction to decoder-layer outputs during prefill and decoding.

One forward *pre*-hook on the top-level model sees every forward call's ``input_ids``,
``attention_mask`` and cache. On a prefill (empty cache) it decides, once, which rows carry an
image (from the adapter's image-token mask) and which positions the policy steers, and keeps
that as small weight tensors on the device; on a decode step (non-empty cache) it reuses the
remembered rows. Forward hooks on the decoder layers then do one fused ``h + w * delta`` per
layer, with ``delta`` precomputed in the model's dtype on the layer's device, so a decode step
costs one small kernel per layer, no host synchronisation and no host-to-device copies.

Position policies (``positions=``), all restricted to image-carrying rows (``rows="image"``):

========================  =============================================  ======================
policy                    prefill                                        generated tokens
========================  =============================================  ======================
``"last"`` (default)       last prompt token                              untouched
``"last+decode"``         last prompt token                              every generated token
``"prefill"``             every prompt token (padding excluded)          untouched
``"all"``                 every prompt token (padding excluded)          every generated token
========================  =============================================  ======================

Why ``"last"`` is the default: the vector is measured at the last prompt token, the only position
aligned between the text-only and the image prompt, and it is the state from which the first reply
token is decoded; later tokens see the correction through that position's cached keys and values.
Adding the same prompt-position vector to every generated token as well (``"last+decode"``) pushes
every step toward the same next token: on the model organism it turned sample-level CMRM's replies
into ``"I I I I ..."`` and made dataset-level CMRM collapse at alpha >= 0.5 (see ``docs/cmrm.md``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from safegap.models.hooks import HookHandle, add_layer_hooks
from safegap.specs import Layers, resolve_within
from safegap.steer.operators import (
    HIDDEN_INDEPENDENT,
    OPERATORS,
    Operator,
    check_direction,
    resolve_operator,
)

if TYPE_CHECKING:
    from safegap.models.loading import VLM
    from safegap.steer.vector import ShiftVector

PositionPolicy = Literal["last+decode", "last", "prefill", "all"]
RowPolicy = Literal["image", "all"]


@dataclass(frozen=True)
class _Policy:
    prefill: Literal["last", "all"]
    decode: bool


POSITION_POLICIES: dict[str, _Policy] = {
    "last+decode": _Policy("last", True),
    "last": _Policy("last", False),
    "prefill": _Policy("all", False),
    "all": _Policy("all", True),
}
DEFAULT_POSITIONS: PositionPolicy = "last"


def resolve_policy(positions: str) -> _Policy:
    if positions not in POSITION_POLICIES:
        raise ValueError(f"unknown positions policy {positions!r}; known: {', '.join(POSITION_POLICIES)}")
    return POSITION_POLICIES[positions]


def cache_length(cache: Any) -> int:
    """Tokens already in a KV cache (0 for none); works for ``Cache`` objects and legacy tuples."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, tuple | list) and cache and cache[0] is not None:
        return int(cache[0][0].shape[-2])
    return 0


#: model -> (a parameter of the model, {layer index: a parameter of that layer}); resolved once per
#: model so attaching does not walk the module tree (``.device``/``.dtype`` are read live, so a
#: model moved with ``.to()`` is still right: ``Module.to`` keeps the parameter objects).
_PARAM_REFS: weakref.WeakKeyDictionary[
    torch.nn.Module, tuple[torch.Tensor, dict[int, torch.Tensor | None]]
] = weakref.WeakKeyDictionary()


def _param_refs(vlm: VLM) -> tuple[torch.Tensor, dict[int, torch.Tensor | None]]:
    found = _PARAM_REFS.get(vlm.model)
    if found is not None:
        return found
    layers = vlm.adapter.decoder_layers
    per_layer: dict[int, torch.Tensor | None] = {
        i: next(iter(layer.parameters()), None) for i, layer in enumerate(layers)
    }
    refs: tuple[torch.Tensor, dict[int, torch.Tensor | None]] = (
        next(iter(vlm.model.parameters())),
        per_layer,
    )
    _PARAM_REFS[vlm.model] = refs
    return refs


def _per_layer(value: ShiftVector | torch.Tensor | None, layer: int, what: str) -> torch.Tensor | None:
    """The tensor for ``layer`` from a per-layer ShiftVector or a single shared tensor."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value
    if layer not in value.vectors:
        raise ValueError(f"the {what} has no layer {layer} (it has {value.layers})")
    return value.vectors[layer]


class SteeringHandle:
    """Attached steering hooks. ``remove()`` detaches them (idempotent); also a context manager.

    ``vectors[layer]`` is ``(d,)`` (one vector for every steered row) or ``(B, d)`` (one per batch
    row, for sample-level steering). ``steered_forwards`` counts forward calls that steered at
    least one position (prefill and decode steps), for tests and diagnostics.
    """

    def __init__(
        self,
        vlm: VLM,
        vectors: Mapping[int, torch.Tensor | None],
        alpha: float = 1.0,
        positions: str = DEFAULT_POSITIONS,
        operator: str | Operator = "subtract",
        direction: ShiftVector | torch.Tensor | None = None,
        reference: ShiftVector | torch.Tensor | None = None,
        rows: RowPolicy = "image",
        clamp: tuple[float, float] = (0.0, 1.0),
        cache: dict[tuple[Any, ...], Any] | None = None,
    ) -> None:
        if rows not in ("image", "all"):
            raise ValueError(f"rows must be 'image' or 'all', got {rows!r}")
        self.vlm = vlm
        self.alpha = float(alpha)
        self.positions = positions
        self.policy = resolve_policy(positions)
        self.operator = resolve_operator(operator)
        self.constant = self.operator in HIDDEN_INDEPENDENT
        self.rows_policy = rows
        self.layers = sorted(vectors)
        self.steered_forwards = 0
        model_param, layer_params = _param_refs(vlm)
        self._dtype = model_param.dtype
        layer_modules = vlm.adapter.decoder_layers
        self._devices = {
            i: (p.device if (p := layer_params.get(i)) is not None else model_param.device)
            for i in self.layers
        }
        self._cache = cache if direction is None and reference is None else None
        self._params: dict[int, dict[str, Any]] = {}
        needs_direction = self.operator in (OPERATORS["project"], OPERATORS["gated"])
        for i in self.layers:
            params: dict[str, Any] = {}
            d = _per_layer(direction, i, "direction")
            if d is not None:
                check_direction(d, f"direction at layer {i}")
                params["direction"] = d.to(self._devices[i], torch.float32)
            elif needs_direction:
                raise ValueError(
                    f"operator {self.operator.__name__!r} needs a direction (a ShiftVector or a tensor)"
                )
            r = _per_layer(reference, i, "reference")
            if r is not None:
                params["reference"] = r.to(self._devices[i], torch.float32)
            if self.operator is OPERATORS["gated"]:
                params["clamp"] = clamp
            self._params[i] = params
        self._vectors: dict[int, torch.Tensor] = {}
        self._deltas: dict[int, torch.Tensor] = {}
        key = None
        if self._cache is not None and all(v is not None for v in vectors.values()):
            # storage + version counter per layer: an in-place edit of a vector invalidates the entry
            stamp = tuple((i, v.data_ptr(), v._version) for i, v in vectors.items() if v is not None)
            key = (stamp, self.alpha, self._dtype, tuple(self._devices.values()), self.operator)
        hit = self._cache.get(key) if self._cache is not None and key is not None else None
        if hit is not None:
            self._vectors, self._deltas = dict(hit[0]), dict(hit[1])
        else:
            for i, v in vectors.items():
                if v is not None:
                    self._set_vector(i, v)
            if key is not None and self._cache is not None:
                self._cache[key] = (dict(self._vectors), dict(self._deltas))
        # per-forward state, set by the pre-hook
        self._weight: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None
        self._decode_weight: torch.Tensor | None = None
        self._decode_mask: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        self._prefill = False
        self._hooks = HookHandle()
        try:
            self._hooks.handles.append(vlm.model.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
            layer_hooks = add_layer_hooks(layer_modules, self._layer_hook, self.layers)
            self._hooks.handles.extend(layer_hooks.handles)
        except Exception:
            self._hooks.remove()
            raise

    # -- vectors ------------------------------------------------------------------------------
    def _set_vector(self, layer: int, vector: torch.Tensor) -> None:
        """Store ``vector`` ((d,) or (B, d) or (B, 1, d)) and precompute its correction."""
        v = vector.to(self._devices[layer])
        if v.dim() == 2:
            v = v[:, None, :]
        self._vectors[layer] = v.to(self._dtype)
        if self.constant:
            work = v.to(torch.float32)
            delta = self.operator(torch.zeros_like(work), work, self.alpha, **self._params[layer])
            self._deltas[layer] = delta.to(self._dtype)

    # -- hooks --------------------------------------------------------------------------------
    def _pre_hook(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids")
        if input_ids is None and args and isinstance(args[0], torch.Tensor):
            input_ids = args[0]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache_length(cache) == 0:
            self._start_prefill(input_ids, kwargs.get("attention_mask"), kwargs.get("inputs_embeds"))
        else:
            if self._rows is None:
                raise RuntimeError(
                    "steering hooks saw a decode step before any prefill; attach them before generation starts"
                )
            self._prefill = False
            self._weight = self._decode_weight
            self._mask = self._decode_mask
            if self._weight is not None:
                n = input_ids.shape[0] if input_ids is not None else self._weight.shape[0]
                if n != self._weight.shape[0]:
                    raise RuntimeError(
                        f"decode step with batch {n} after a prefill of batch {self._weight.shape[0]}"
                    )
        if self._weight is not None:
            self.steered_forwards += 1

    def _start_prefill(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, embeds: torch.Tensor | None
    ) -> None:
        self._prefill = True
        if input_ids is None:
            if self.rows_policy == "image" or embeds is None:
                raise ValueError(
                    "steering cannot tell which rows carry an image: the model was called without "
                    "input_ids; pass input_ids or use rows='all'"
                )
            batch, seq = embeds.shape[:2]
            device = embeds.device
            rows = torch.ones(batch, dtype=torch.bool, device=device)
        else:
            batch, seq = input_ids.shape[:2]
            device = input_ids.device
            if self.rows_policy == "image":
                rows = self.vlm.adapter.image_token_mask(input_ids).any(dim=1)
            else:
                rows = torch.ones(batch, dtype=torch.bool, device=device)
        self._set_rows(rows)
        valid = attention_mask.bool() if attention_mask is not None and attention_mask.dim() == 2 else None
        positions = torch.arange(seq, device=device)
        if valid is not None:
            last = (valid * positions).amax(dim=1)
        else:
            last = torch.full((batch,), seq - 1, device=device)
        self._last = last
        if self.policy.prefill == "last":
            where = positions[None, :] == last[:, None]
        else:
            where = valid if valid is not None else torch.ones(batch, seq, dtype=torch.bool, device=device)
        mask = (rows[:, None] & where)[..., None]
        self._mask = mask
        self._weight = mask.to(self._dtype)

    def _set_rows(self, rows: torch.Tensor) -> None:
        self._rows = rows
        self._decode_mask = rows[:, None, None] if self.policy.decode else None
        self._decode_weight = self._decode_mask.to(self._dtype) if self._decode_mask is not None else None

    def _layer_hook(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        weight = self._weight
        if weight is None:
            return None
        if self._prefill:
            if hidden.shape[:2] != weight.shape[:2]:
                raise RuntimeError(
                    f"layer {layer} output has shape {tuple(hidden.shape[:2])} but the prefill input was "
                    f"{tuple(weight.shape[:2])}; this family changes the sequence inside the model"
                )
            self._prepare_prefill_layer(layer, hidden)
        if weight.device != hidden.device:
            weight = weight.to(hidden.device)
        if self.constant:
            return torch.addcmul(hidden, weight, self._deltas[layer])
        assert self._mask is not None
        mask = self._mask if self._mask.device == hidden.device else self._mask.to(hidden.device)
        steered = self.operator(hidden, self._vectors[layer], self.alpha, **self._params[layer])
        return torch.where(mask, steered.to(hidden.dtype), hidden)

    def _prepare_prefill_layer(self, layer: int, hidden: torch.Tensor) -> None:
        """Hook for subclasses that derive vectors from the prefill itself (sample-level CMRM)."""
        v = self._vectors.get(layer)
        if v is not None and v.dim() == 3 and v.shape[0] != hidden.shape[0]:
            raise ValueError(
                f"per-row shift vectors for {v.shape[0]} rows applied to a batch of {hidden.shape[0]}"
            )

    # -- lifetime -----------------------------------------------------------------------------
    def remove(self) -> None:
        self._hooks.remove()

    @property
    def attached(self) -> bool:
        return bool(self._hooks.handles)

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def patch(
    vlm: VLM,
    shift: ShiftVector,
    alpha: float = 1.0,
    layers: Layers = "all",
    positions: str = DEFAULT_POSITIONS,
    operator: str | Operator = "subtract",
    direction: ShiftVector | torch.Tensor | None = None,
    reference: ShiftVector | torch.Tensor | None = None,
    rows: RowPolicy = "image",
    clamp: tuple[float, float] = (0.0, 1.0),
) -> SteeringHandle:
    """Attach ``shift`` to ``vlm`` and return the handle (``handle.remove()`` to detach)."""
    shift.check_fits(vlm)
    chosen = resolve_within(layers, shift.layers, vlm.adapter.num_layers)
    vectors = {i: shift.vectors[i] for i in chosen}
    return SteeringHandle(
        vlm, vectors, alpha, positions, operator, direction, reference, rows, clamp, cache=shift.prepared
    )


@contextmanager
def steering(vlm: VLM, shift: ShiftVector, alpha: float = 1.0, **kwargs: Any) -> Iterator[SteeringHandle]:
    """Context-manager form of :func:`patch`; hooks are removed even if the body raises."""
    handle = patch(vlm, shift, alpha, **kwargs)
    try:
        yield handle
    finally:
        handle.remove()
