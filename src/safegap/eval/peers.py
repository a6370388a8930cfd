"""Peer defenses from the literature, as evaluation plug-ins beside ``cmrm`` (same frontier).

Both take a direction from the *text-only* language model: the last-prompt-token states of
harmful and of benign text prompts (no image) at the chosen decoder layers. Then they edit the
decoder-layer outputs (the residual stream) of rows that carry an image, and leave text-only
rows alone, so the text-only model they were measured on is unchanged.

* ``vlm_guard:SOURCE[,layers=L,k=K,alpha=A,n=N,policy=P]`` -- VLM-Guard-style projection
  (Liu et al., arXiv 2502.10486): the safety subspace is the top ``k`` right singular vectors of
  the harmful-minus-benign differences (each harmful state minus the mean benign state; with
  ``k=1`` this is the direction that best explains how harmful text differs), and the hook
  removes the component of each multimodal state in that subspace:
  ``h <- h - alpha * Q^T Q h`` (``Q`` orthonormal rows; ``alpha=1``, the default, is the
  orthogonal-subspace projection itself). Defaults: ``layers=all``, ``k=1``.
* ``refusal_direction:SOURCE[,layers=L,strength=S,n=N,policy=P]`` -- the refusal direction
  of Arditi et al. (arXiv 2406.11717): ``r = mean(harmful) - mean(benign)`` per layer, added to
  the states of image inputs, ``h <- h + strength * r``. Defaults: ``strength=1``, ``layers`` =
  the middle decoder layer (``num_layers // 2``), the one layer a single added direction is
  usually taken at.

Anchors: ``SOURCE`` is a labelled anchor source of :func:`safegap.steer.anchors.load_anchors`
that takes ``kind=harmful|benign`` (``organism:calibration``: the defense loads
``organism:calibration,kind=harmful`` and ``...,kind=benign``), or give two files with
``harmful=PATH,benign=PATH`` (``.txt``, ``.csv``, ``.jsonl``; images in them are ignored).
``n`` keeps at most N prompts of each kind. ``policy`` says which tokens of an image row are
edited, with the names of CMRM's position policies: ``all`` (default: every prompt token and every
generated token), ``prefill`` (every prompt token), ``last`` (the last prompt token) or
``last+decode`` (the last prompt token and every generated token). Layers use the one grammar of
:mod:`safegap.specs`.

The hooks are plain forward hooks on the adapter's decoder layers
(:mod:`safegap.models.hooks`); nothing here depends on the CMRM steering engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from safegap.errors import UserError, finite_float
from safegap.eval.defenses import Defense
from safegap.models.adapter import ImagesArg, per_row_images
from safegap.models.generation import generate_ids
from safegap.models.hooks import layer_hooks
from safegap.models.loading import VLM
from safegap.probe.record import record
from safegap.specs import Spec, resolve_layers
from safegap.steer.anchors import load_anchors

POLICIES = ("all", "prefill", "last", "last+decode")
ANCHOR_OPTIONS = ("harmful", "benign", "n")
VLM_GUARD_OPTIONS = (*ANCHOR_OPTIONS, "layers", "k", "alpha", "policy")
REFUSAL_DIRECTION_OPTIONS = (*ANCHOR_OPTIONS, "layers", "strength", "policy")

#: ``(layer, hidden) -> edited hidden`` for every position (the hook keeps only the chosen ones).
Edit = Callable[[int, torch.Tensor], torch.Tensor]


# -- directions from the text-only model ---------------------------------------------------------
@torch.inference_mode()
def text_states(
    vlm: VLM, texts: Sequence[str], layers: Sequence[int], batch_size: int = 16
) -> dict[int, torch.Tensor]:
    """``{layer: (len(texts), hidden)}`` float32 last-prompt-token states of text-only prompts."""
    if not texts:
        raise ValueError("no prompts to take states from")
    chunks: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    for start in range(0, len(texts), batch_size):
        batch = vlm.build_inputs(list(texts[start : start + batch_size]), None)
        rec = record(vlm, batch, list(layers), positions="last")
        for i in layers:
            chunks[i].append(rec.states[i])
    return {i: torch.cat(parts) for i, parts in chunks.items()}


def mean_difference(
    harmful: dict[int, torch.Tensor], benign: dict[int, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """``mean(harmful) - mean(benign)`` per layer (the refusal direction, unnormalised)."""
    return {i: harmful[i].mean(0) - benign[i].mean(0) for i in harmful}


def safety_subspace(
    harmful: dict[int, torch.Tensor], benign: dict[int, torch.Tensor], k: int = 1
) -> dict[int, torch.Tensor]:
    """``{layer: (k, hidden)}`` orthonormal rows spanning the top-``k`` right singular vectors of
    ``harmful - mean(benign)``; each row's sign is set so harmful states project above benign."""
    out: dict[int, torch.Tensor] = {}
    for i, h in harmful.items():
        diffs = h - benign[i].mean(0)
        rank = min(diffs.shape)
        if not 1 <= k <= rank:
            raise ValueError(f"k={k}: the harmful-minus-benign differences at layer {i} have rank <= {rank}")
        _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
        basis = vh[:k].clone()
        gap = h.mean(0) - benign[i].mean(0)
        signs = torch.where(basis @ gap < 0, -1.0, 1.0)
        out[i] = basis * signs[:, None]
    return out


def project_out(hidden: torch.Tensor, basis: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``hidden - alpha * (hidden @ basis^T) @ basis`` (``basis``: orthonormal ``(k, hidden)`` rows)."""
    basis = basis.to(hidden.dtype)
    return hidden - alpha * (hidden @ basis.T) @ basis


# -- the hook: edit image rows at chosen positions ------------------------------------------------
@dataclass
class _Rows:
    """Which rows carry an image and where the prompt's real tokens are, for the batch in flight."""

    image: torch.Tensor
    attention: torch.Tensor
    calls: dict[int, int] = field(default_factory=dict)


def _hooked_edit(state: _Rows, edit: Edit, policy: str) -> Callable[[int, torch.Tensor], torch.Tensor | None]:
    def fn(layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        prefill = state.calls.get(layer, 0) == 0
        state.calls[layer] = state.calls.get(layer, 0) + 1
        if not bool(state.image.any()) or (not prefill and policy not in ("all", "last+decode")):
            return None
        if hidden.shape[0] != state.image.shape[0]:
            raise RuntimeError(
                f"layer {layer}: batch of {hidden.shape[0]} rows, expected {state.image.shape[0]}"
            )
        if prefill:
            if hidden.shape[1] != state.attention.shape[1]:
                raise RuntimeError(
                    f"layer {layer}: prefill of {hidden.shape[1]} tokens, prompt has {state.attention.shape[1]}"
                )
            where = state.attention.bool()
            if policy in ("last", "last+decode"):  # left padding: the last column is every row's last token
                where = torch.zeros_like(where)
                where[:, -1] = True
        else:
            where = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        weight = (where & state.image[:, None]).to(hidden.dtype)[..., None]
        return hidden + weight * (edit(layer, hidden) - hidden)

    return fn


@dataclass
class LayerEditDefense:
    """Generates with ``edit`` applied at ``layers`` to the rows that carry an image."""

    edit: Edit
    layers: list[int]
    policy: str = "all"
    id: str = "peer"
    batch_size: int = 8
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    #: What the direction was taken from (anchor specs, counts, layers), for the run's records.
    provenance: dict[str, Any] = field(default_factory=dict)

    def generate(
        self,
        vlm: VLM,
        texts: Sequence[str],
        images: ImagesArg,
        max_new_tokens: int,
        system: str | None = None,
    ) -> list[str]:
        rows = per_row_images(images, len(texts))
        if vlm.adapter.supports_mixed_batches:
            groups = [list(range(len(texts)))]
        else:
            groups = [
                [i for i, im in enumerate(rows) if im is not None],
                [i for i, im in enumerate(rows) if im is None],
            ]
        replies: dict[int, str] = {}
        for group in groups:
            for start in range(0, len(group), self.batch_size):
                chunk = group[start : start + self.batch_size]
                chunk_images = [rows[i] for i in chunk]
                has_any = any(im is not None for im in chunk_images)
                inputs = vlm.build_inputs(
                    [texts[i] for i in chunk], chunk_images if has_any else None, system
                )
                ids = inputs["input_ids"]
                state = _Rows(
                    image=vlm.adapter.image_token_mask(ids).any(dim=1),
                    attention=inputs.get("attention_mask", torch.ones_like(ids)),
                )
                fn = _hooked_edit(state, self.edit, self.policy)
                with layer_hooks(vlm.adapter.decoder_layers, fn, self.layers):
                    new_ids = generate_ids(vlm, inputs, max_new_tokens, **self.generation_kwargs)
                decoded = vlm.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
                replies.update(zip(chunk, decoded, strict=True))
        return [replies[i].strip() for i in range(len(texts))]


# -- spec parsing -------------------------------------------------------------------------------
def _fail(spec: Spec, message: str) -> UserError:
    return UserError(f"defense {spec}: {message}")


def _int_option(spec: Spec, key: str, default: int, minimum: int = 1) -> int:
    text = spec.options.get(key, str(default))
    try:
        value = int(text)
    except ValueError:
        raise _fail(spec, f"{key}={text!r} is not an integer") from None
    if value < minimum:
        raise _fail(spec, f"{key}={value}; it must be >= {minimum}")
    return value


def _float_option(spec: Spec, key: str, default: float) -> float:
    try:
        return finite_float(spec.options.get(key, str(default)), key)
    except ValueError as exc:
        raise _fail(spec, str(exc)) from None


def _policy(spec: Spec) -> str:
    policy = spec.options.get("policy", "all")
    if policy not in POLICIES:
        raise _fail(spec, f"policy={policy!r}; use {', '.join(POLICIES)}")
    return policy


def _layers(spec: Spec, vlm: VLM, default: str) -> list[int]:
    try:
        return resolve_layers(spec.options.get("layers", default), vlm.adapter.num_layers)
    except ValueError as exc:
        raise _fail(spec, str(exc)) from None


def anchor_texts(spec: Spec) -> tuple[list[str], list[str], dict[str, Any]]:
    """Harmful and benign prompt texts of a peer spec (module docstring), with their provenance."""
    harmful_spec, benign_spec = spec.options.get("harmful"), spec.options.get("benign")
    if (harmful_spec is None) != (benign_spec is None):
        raise _fail(spec, "give both harmful= and benign= anchor files, or neither")
    if harmful_spec is None or benign_spec is None:
        if not spec.arg:
            raise _fail(
                spec,
                f"give the anchors: {spec.name}:organism:calibration (a source taking kind=) "
                "or harmful=FILE,benign=FILE",
            )
        if spec.arg.endswith(".txt") or spec.arg.endswith(".csv") or spec.arg.endswith(".jsonl"):
            raise _fail(spec, f"{spec.arg!r} is one file; give harmful=FILE,benign=FILE")
        harmful_spec, benign_spec = f"{spec.arg},kind=harmful", f"{spec.arg},kind=benign"
    elif spec.arg:
        raise _fail(spec, "give either an anchor source or harmful=/benign= files, not both")
    n = _int_option(spec, "n", 10**9) if "n" in spec.options else None
    try:
        harmful = [t for t, _ in load_anchors(harmful_spec, limit=n)]
        benign = [t for t, _ in load_anchors(benign_spec, limit=n)]
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(spec, str(exc).splitlines()[0]) from None
    return (
        harmful,
        benign,
        {"harmful": harmful_spec, "benign": benign_spec, "n_harmful": len(harmful), "n_benign": len(benign)},
    )


#: Text-only states per (model, anchors, layers): one frontier builds the same peer at many alphas.
_STATES: dict[
    tuple[int, str, str, tuple[int, ...]], tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]
] = {}


def _anchor_states(
    vlm: VLM, spec: Spec, layers: list[int]
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], dict[str, Any]]:
    harmful, benign, provenance = anchor_texts(spec)
    key = (id(vlm.model), "\n".join(harmful), "\n".join(benign), tuple(layers))
    if key not in _STATES:
        if len(_STATES) >= 8:
            _STATES.clear()
        _STATES[key] = (text_states(vlm, harmful, layers), text_states(vlm, benign, layers))
    h, b = _STATES[key]
    return h, b, {**provenance, "layers": layers}


def make_vlm_guard(spec: Spec, vlm: VLM) -> Defense:
    """``vlm_guard:SOURCE[,layers=,k=,alpha=,n=,policy=]`` (module docstring)."""
    spec.check_options(VLM_GUARD_OPTIONS, "defense")
    layers = _layers(spec, vlm, "all")
    k = _int_option(spec, "k", 1)
    alpha = _float_option(spec, "alpha", 1.0)
    policy = _policy(spec)
    harmful, benign, provenance = _anchor_states(vlm, spec, layers)
    try:
        bases = safety_subspace(harmful, benign, k)
    except ValueError as exc:
        raise _fail(spec, str(exc)) from None
    cache: dict[tuple[int, torch.device], torch.Tensor] = {}

    def edit(layer: int, hidden: torch.Tensor) -> torch.Tensor:
        basis = cache.setdefault((layer, hidden.device), bases[layer].to(hidden.device))
        return project_out(hidden, basis, alpha)

    return LayerEditDefense(
        edit, layers, policy, id=str(spec), provenance={**provenance, "k": k, "alpha": alpha}
    )


def make_refusal_direction(spec: Spec, vlm: VLM) -> Defense:
    """``refusal_direction:SOURCE[,layers=,strength=,n=,policy=]`` (module docstring)."""
    spec.check_options(REFUSAL_DIRECTION_OPTIONS, "defense")
    layers = _layers(spec, vlm, str(vlm.adapter.num_layers // 2))
    strength = _float_option(spec, "strength", 1.0)
    policy = _policy(spec)
    harmful, benign, provenance = _anchor_states(vlm, spec, layers)
    directions = mean_difference(harmful, benign)
    cache: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def edit(layer: int, hidden: torch.Tensor) -> torch.Tensor:
        key = (layer, hidden.device, hidden.dtype)
        delta = cache.setdefault(key, (strength * directions[layer]).to(hidden.device, hidden.dtype))
        return hidden + delta

    return LayerEditDefense(
        edit, layers, policy, id=str(spec), provenance={**provenance, "strength": strength}
    )
