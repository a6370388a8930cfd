"""``ShiftVector``: per-layer vectors plus where they came from, with arithmetic and safetensors I/O.

A shift vector is a plain value: one ``(hidden,)`` tensor per decoder layer and a
:class:`Provenance` record. Extraction (:mod:`safegap.steer.calibrate`) and application
(:mod:`safegap.steer.intervene`) are separate steps, so a vector can be computed once, saved,
combined with others (``a - b``, ``0.5 * a``) and applied to any model it fits.

For CMRM the stored direction is ``text-only minus corrupted``: it points from the multimodal
states toward the text-only states, so the intervention *adds* ``alpha * v``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import safegap
from safegap.files import atomic_path

if TYPE_CHECKING:
    from safegap.models.loading import VLM
    from safegap.specs import Layers
    from safegap.steer.intervene import SteeringHandle

METADATA_KEY = "safegap.shift_vector"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class Provenance:
    """What a vector was computed from; saved inside the safetensors file.

    ``model`` is :meth:`safegap.models.VLM.fingerprint` (architecture, num_layers, hidden_size,
    name_or_path). ``corruption`` describes the meaningless image (kind, colour or noise seed, size
    rule). ``position`` is where states were read (``last``, ``last:K``, ``text``). ``estimator`` is
    ``mean``, ``pca`` or ``pca_centered`` (or a description for derived vectors). ``history`` lists
    arithmetic applied after calibration, so a combined vector never passes for a calibrated one.
    """

    model: dict[str, Any] = field(default_factory=dict)
    anchors_hash: str = ""
    anchors_size: int = 0
    anchors_source: str = ""
    corruption: dict[str, Any] = field(default_factory=dict)
    position: str = "last"
    estimator: str = "mean"
    safegap_version: str = safegap.__version__
    history: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "history" in kwargs:
            kwargs["history"] = tuple(kwargs["history"])
        return cls(**kwargs)

    def with_history(self, step: str) -> Provenance:
        return replace(self, history=(*self.history, step))


def _shape_text(num_layers: int | None, hidden: int | None) -> str:
    return f"{num_layers if num_layers is not None else '?'} layers x hidden {hidden if hidden is not None else '?'}"


@dataclass(eq=False)  # tensors have no single truth value; equality is identity
class ShiftVector:
    """Per-layer vectors ``{layer_index: (hidden,)}`` plus provenance and optional diagnostics.

    ``diagnostics`` holds per-layer lists of floats recorded at calibration time (for example the
    mean distance between text-only and corrupted states); it is saved with the vector.
    ``tuning`` is how its strength was chosen on labelled prompts, if it was
    (:meth:`safegap.steer.defenses.Tuning.as_dict`: ``alpha``, ``form``, ``positions``, the sweeps);
    it is saved too, so ``cmrm:PATH`` applies the vector as it was tuned.
    """

    vectors: dict[int, torch.Tensor]
    provenance: Provenance = field(default_factory=Provenance)
    diagnostics: dict[str, list[float]] = field(default_factory=dict)
    tuning: dict[str, Any] | None = None
    #: Corrections prepared for a model (device, dtype, alpha), reused by later attaches.
    prepared: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("a shift vector needs at least one layer")
        sizes = {tuple(v.shape) for v in self.vectors.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ValueError(f"every layer vector must be 1-D with the same size, got shapes {sorted(sizes)}")
        self.vectors = {int(k): v for k, v in sorted(self.vectors.items())}

    # -- facts --------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def num_model_layers(self) -> int | None:
        """Layer count of the model the vector was computed on (``None`` if unknown)."""
        n = self.provenance.model.get("num_layers")
        return int(n) if n is not None else None

    def norms(self) -> dict[int, float]:
        return {i: float(v.float().norm()) for i, v in self.vectors.items()}

    def stacked(self) -> torch.Tensor:
        """``(n_layers, hidden)`` in layer order."""
        return torch.stack(list(self.vectors.values()))

    def __repr__(self) -> str:
        p = self.provenance
        return (
            f"ShiftVector({len(self.vectors)} layers x {self.hidden_size}, estimator={p.estimator!r}, "
            f"anchors={p.anchors_size}, model={p.model.get('name_or_path', '?')!r})"
        )

    # -- arithmetic ---------------------------------------------------------------------------
    def _combine(self, other: ShiftVector, sign: float, symbol: str) -> ShiftVector:
        if not isinstance(other, ShiftVector):
            return NotImplemented
        if other.hidden_size != self.hidden_size:
            raise ValueError(
                f"cannot combine shift vectors of hidden size {self.hidden_size} and {other.hidden_size}"
            )
        out: dict[int, torch.Tensor] = {}
        for i in sorted(set(self.vectors) | set(other.vectors)):
            a = self.vectors.get(i)
            b = other.vectors.get(i)
            if a is None:
                assert b is not None
                out[i] = sign * b
            elif b is None:
                out[i] = a.clone()
            else:
                out[i] = a + sign * b.to(a.device, a.dtype)
        step = (
            f"{symbol} [{other.provenance.estimator} on {other.provenance.anchors_size} anchors "
            f"{other.provenance.anchors_hash[:12]}]"
        )
        return ShiftVector(out, self.provenance.with_history(step), {})

    def __add__(self, other: ShiftVector) -> ShiftVector:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: ShiftVector) -> ShiftVector:
        return self._combine(other, -1.0, "-")

    def __mul__(self, scale: float) -> ShiftVector:
        if not isinstance(scale, int | float):
            return NotImplemented
        vectors = {i: v * float(scale) for i, v in self.vectors.items()}
        return ShiftVector(vectors, self.provenance.with_history(f"* {float(scale)!r}"), {})

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> ShiftVector:
        if not isinstance(scale, int | float):
            return NotImplemented
        return self * (1.0 / float(scale))

    def __neg__(self) -> ShiftVector:
        return self * -1.0

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ShiftVector:
        """A copy with every layer tensor moved/cast (provenance and diagnostics shared)."""
        vectors = {i: v.to(device=device, dtype=dtype) for i, v in self.vectors.items()}
        return ShiftVector(vectors, self.provenance, self.diagnostics, self.tuning)

    def increments(self) -> ShiftVector:
        """Per-layer increments ``v_l - v_prev`` (``v_prev`` = the previous layer this vector has).

        CMRM adds each layer's *total* shift at that layer, but the residual stream carries every
        earlier correction forward, so steering all layers adds roughly ``sum_k<=l v_k`` by layer
        ``l``. Applying the increments instead makes the accumulated correction at layer ``l``
        about ``v_l`` (exactly, for a linear residual stream). See ``docs/cmrm.md``.
        """
        out: dict[int, torch.Tensor] = {}
        prev: torch.Tensor | None = None
        for i, v in self.vectors.items():
            out[i] = v - prev if prev is not None else v.clone()
            prev = v
        return ShiftVector(out, self.provenance.with_history("increments"), {})

    def select_layers(self, layers: list[int]) -> ShiftVector:
        missing = [i for i in layers if i not in self.vectors]
        if missing:
            raise ValueError(f"shift vector has no layers {missing}; it has {self.layers}")
        return ShiftVector({i: self.vectors[i] for i in layers}, self.provenance, self.diagnostics)

    # -- fitting a model ----------------------------------------------------------------------
    def check_fits(self, vlm: VLM, source: str = "shift vector") -> None:
        """Raise ``ValueError`` naming both shapes unless every layer index and the hidden size fit."""
        n_model = vlm.adapter.num_layers
        d_model = vlm.adapter.hidden_size
        too_deep = [i for i in self.vectors if not 0 <= i < n_model]
        n_vec = self.num_model_layers
        if self.hidden_size != d_model or too_deep or (n_vec is not None and n_vec != n_model):
            raise ValueError(
                f"{source} does not fit the model: it was computed for "
                f"{_shape_text(n_vec, self.hidden_size)} ({self.provenance.model.get('name_or_path', '?')}) "
                f"but {vlm.name_or_path} has {_shape_text(n_model, d_model)}"
            )

    # -- save / load --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a safetensors file: ``layer.{i}`` tensors (contiguous, as stored) + JSON metadata."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{i}": v.detach().contiguous().cpu() for i, v in self.vectors.items()}
        meta = {
            METADATA_KEY: json.dumps(
                {
                    "format": FORMAT_VERSION,
                    "provenance": json.loads(self.provenance.to_json()),
                    "diagnostics": self.diagnostics,
                    **({"tuning": self.tuning} if self.tuning else {}),
                },
                sort_keys=True,
            )
        }
        try:
            with atomic_path(out) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
        except OSError:  # already one line naming the file
            raise
        except Exception as exc:  # a full or read-only disk: no half file, one line naming it
            raise OSError(f"cannot write {out}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        return out

    @classmethod
    def load(
        cls, path: str | Path, vlm: VLM | None = None, device: str | torch.device | None = None
    ) -> ShiftVector:
        """Read a file written by :meth:`save`; with ``vlm``, check it fits and move it to its device."""
        src = Path(path)
        if not src.is_file():
            raise FileNotFoundError(f"shift vector file not found: {src}")
        try:
            with safe_open(str(src), framework="pt") as handle:
                meta = handle.metadata() or {}
                raw = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own error type for corrupt files
            raise ValueError(f"{src} is not a readable safetensors shift vector ({exc})") from exc
        vectors = {}
        for key, tensor in raw.items():
            if not key.startswith("layer.") or not key[6:].isdigit():
                raise ValueError(f"{src}: unexpected tensor {key!r} (expected layer.N)")
            vectors[int(key[6:])] = tensor
        if METADATA_KEY not in meta:
            raise ValueError(
                f"{src} has no {METADATA_KEY!r} metadata; it was not written by ShiftVector.save"
            )
        try:
            info = json.loads(meta[METADATA_KEY])
        except ValueError as exc:
            raise ValueError(f"{src}: invalid {METADATA_KEY!r} metadata JSON ({exc})") from None
        if not isinstance(info, dict):
            raise ValueError(f"{src}: {METADATA_KEY!r} metadata is not a JSON object")
        bad = [i for i, t in sorted(vectors.items()) if not bool(torch.isfinite(t.float()).all())]
        if bad:
            raise ValueError(f"{src}: layer(s) {bad} hold NaN or infinite values; recalibrate the shift")
        vec = cls(
            vectors,
            Provenance.from_dict(info.get("provenance", {})),
            info.get("diagnostics", {}),
            info.get("tuning"),
        )
        if vlm is not None:
            vec.check_fits(vlm, source=f"shift vector {src}")
            vec = vec.to(device=vlm.device)
        elif device is not None:
            vec = vec.to(device=device)
        return vec

    # -- application (see safegap.steer.intervene) ---------------------------------------------
    def patch(self, vlm: VLM, alpha: float = 1.0, layers: Layers = "all", **kwargs: Any) -> SteeringHandle:
        """Attach steering hooks and return the handle; call ``handle.remove()`` to detach."""
        from safegap.steer.intervene import patch

        return patch(vlm, self, alpha=alpha, layers=layers, **kwargs)

    @contextmanager
    def apply(
        self, vlm: VLM, alpha: float = 1.0, layers: Layers = "all", **kwargs: Any
    ) -> Iterator[SteeringHandle]:
        """``with shift.apply(vlm, alpha=1.0): generate(...)``; hooks are removed on every path."""
        handle = self.patch(vlm, alpha=alpha, layers=layers, **kwargs)
        try:
            yield handle
        finally:
            handle.remove()
