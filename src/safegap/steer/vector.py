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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import safegap
from safegap.files import atomic_path
from safegap.steer.tuning import FORMS, Form, Tuning

if TYPE_CHECKING:
    from safegap.models.loading import VLM
    from safegap.specs import Layers
    from safegap.steer.intervene import Edit, RowPolicy, SteeringHandle

METADATA_KEY = "safegap.shift_vector"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class Provenance:
    """What a vector was computed from; saved inside the safetensors file.

    ``model`` is :meth:`safegap.models.VLM.fingerprint` (architecture, num_layers, hidden_size,
    name_or_path). ``corruption`` describes the meaningless image (kind, colour or noise seed, size
    rule). ``read_at`` is where states were read (``last``, ``last:K``, ``text``; ``position`` in
    files written before it was renamed). ``estimator`` is
    ``mean``, ``pca`` or ``pca_centered`` (or a description for derived vectors). ``history`` lists
    arithmetic applied after calibration, so a combined vector never passes for a calibrated one.
    """

    model: dict[str, Any] = field(default_factory=dict)
    anchors_hash: str = ""
    anchors_size: int = 0
    anchors_source: str = ""
    corruption: dict[str, Any] = field(default_factory=dict)
    read_at: str = "last"
    estimator: str = "mean"
    safegap_version: str = safegap.__version__
    history: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        known = {f for f in cls.__dataclass_fields__}
        renamed = {"position": "read_at"}
        kwargs = {renamed.get(k, k): v for k, v in data.items() if renamed.get(k, k) in known}
        if "history" in kwargs:
            kwargs["history"] = tuple(kwargs["history"])
        return cls(**kwargs)

    def with_history(self, step: str) -> Provenance:
        return replace(self, history=(*self.history, step))


def _shape_text(num_layers: int | None, hidden: int | None) -> str:
    return f"{num_layers if num_layers is not None else '?'} layers x hidden {hidden if hidden is not None else '?'}"


@dataclass(eq=False)  # tensors have no single truth value; equality is identity
class ShiftVector:
    """Per-layer vectors ``{layer_index: (hidden,)}`` plus provenance, diagnostics and tuning.

    ``diagnostics`` holds per-layer lists of floats recorded at calibration time (for example the
    mean distance between text-only and corrupted states); it is saved with the vector.
    ``tuning`` (:class:`Tuning`) is how the vector is applied by default: :meth:`apply`,
    ``safegap generate --shift`` and ``--defense cmrm:PATH`` all honour it, so one file behaves
    the same everywhere; explicit arguments override it.

    How operations treat the tuning (each keeps what :meth:`apply` does on the layers it keeps):

    * :meth:`increments` and :meth:`select_layers` keep it; a tuning in the ``increments`` form is
      materialised first (the result holds the increments and its tuning says ``full``), so the
      increments are always those of the calibrated layers;
    * ``a + b`` and ``a - b`` keep it only when both operands have the same applied tuning
      (alpha, form, policy, layers) and the same layers; otherwise the result has none;
    * ``k * a``, ``a / k``, ``-a`` and :meth:`to` keep it (alpha then scales the scaled vector).
    """

    vectors: dict[int, torch.Tensor]
    provenance: Provenance = field(default_factory=Provenance)
    diagnostics: dict[str, list[float]] = field(default_factory=dict)
    tuning: Tuning | None = None
    #: Corrections prepared for a model (device, dtype, alpha), reused by later attaches.
    prepared: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("a shift vector needs at least one layer")
        sizes = {tuple(v.shape) for v in self.vectors.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ValueError(f"every layer vector must be 1-D with the same size, got shapes {sorted(sizes)}")
        self.vectors = {int(k): v for k, v in sorted(self.vectors.items())}
        if isinstance(self.tuning, Mapping):  # a plain dict, as saved before the typed field
            self.tuning = Tuning.from_dict(self.tuning)
        if self.tuning is not None and self.tuning.layers != "all":
            missing = sorted(set(self.tuning.layers) - set(self.vectors))
            if missing:
                raise ValueError(f"tuning steers layers {missing} the shift does not have ({self.layers})")

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
        tuned = f", tuning={self.tuning.describe()!r}" if self.tuning is not None else ""
        return (
            f"ShiftVector({len(self.vectors)} layers x {self.hidden_size}, estimator={p.estimator!r}, "
            f"anchors={p.anchors_size}, model={p.model.get('name_or_path', '?')!r}{tuned})"
        )

    def with_tuning(self, tuning: Tuning | None) -> ShiftVector:
        """The same vectors (shared, not copied) with another default application."""
        return ShiftVector(self.vectors, self.provenance, self.diagnostics, tuning)

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
        agree = (
            self.tuning is not None
            and other.tuning is not None
            and self.tuning.applied() == other.tuning.applied()
            and self.layers == other.layers
        )
        return ShiftVector(out, self.provenance.with_history(step), {}, self.tuning if agree else None)

    def __add__(self, other: ShiftVector) -> ShiftVector:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: ShiftVector) -> ShiftVector:
        return self._combine(other, -1.0, "-")

    def __mul__(self, scale: float) -> ShiftVector:
        if not isinstance(scale, int | float):
            return NotImplemented
        vectors = {i: v * float(scale) for i, v in self.vectors.items()}
        return ShiftVector(vectors, self.provenance.with_history(f"* {float(scale)!r}"), {}, self.tuning)

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> ShiftVector:
        if not isinstance(scale, int | float):
            return NotImplemented
        return self * (1.0 / float(scale))

    def __neg__(self) -> ShiftVector:
        return self * -1.0

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ShiftVector:
        """A copy with every layer tensor moved/cast (provenance, diagnostics and tuning shared)."""
        vectors = {i: v.to(device=device, dtype=dtype) for i, v in self.vectors.items()}
        return ShiftVector(vectors, self.provenance, self.diagnostics, self.tuning)

    def _increment_tensors(self) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        prev: torch.Tensor | None = None
        for i, v in self.vectors.items():
            out[i] = v - prev if prev is not None else v.clone()
            prev = v
        return out

    def materialised(self) -> ShiftVector:
        """The vectors :meth:`apply` adds by default: the increments for a tuning in the
        ``increments`` form (its tuning then says ``full``), else ``self``."""
        if self.tuning is None or self.tuning.form == "full":
            return self
        out = ShiftVector(self._increment_tensors(), self.provenance.with_history("increments"), {})
        out.tuning = replace(self.tuning, form="full")
        return out

    def increments(self) -> ShiftVector:
        """Per-layer increments ``v_l - v_prev`` (``v_prev`` = the previous layer this vector has).

        CMRM adds each layer's *total* shift at that layer, but the residual stream carries every
        earlier correction forward, so steering all layers adds roughly ``sum_k<=l v_k`` by layer
        ``l``. Applying the increments instead makes the accumulated correction at layer ``l``
        about ``v_l`` (exactly, for a linear residual stream). See ``docs/cmrm.md``. A tuning in
        the ``increments`` form already applies them: the result is :meth:`materialised`.
        """
        if self.tuning is not None and self.tuning.form == "increments":
            return self.materialised()
        return ShiftVector(
            self._increment_tensors(), self.provenance.with_history("increments"), {}, self.tuning
        )

    def select_layers(self, layers: list[int]) -> ShiftVector:
        """The given layers only; the tuning is kept (its steered layers cut to these)."""
        missing = [i for i in layers if i not in self.vectors]
        if missing:
            raise ValueError(f"shift vector has no layers {missing}; it has {self.layers}")
        base = self.materialised()
        tuning = base.tuning
        if tuning is not None and tuning.layers != "all":
            kept = tuple(i for i in tuning.layers if i in layers)
            if not kept:
                raise ValueError(f"the tuning steers layers {list(tuning.layers)}, none of {sorted(layers)}")
            tuning = replace(tuning, layers=kept)
        return ShiftVector({i: base.vectors[i] for i in layers}, base.provenance, base.diagnostics, tuning)

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
                    **({"tuning": self.tuning.as_dict()} if self.tuning is not None else {}),
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
        try:
            tuning = Tuning.from_dict(info["tuning"]) if info.get("tuning") else None
            vec = cls(
                vectors, Provenance.from_dict(info.get("provenance", {})), info.get("diagnostics", {}), tuning
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{src}: {exc}") from None
        if vlm is not None:
            vec.check_fits(vlm, source=f"shift vector {src}")
            vec = vec.to(device=vlm.device)
        elif device is not None:
            vec = vec.to(device=device)
        return vec

    # -- application (see safegap.steer.intervene) ---------------------------------------------
    def apply(
        self,
        model: VLM | Any,
        *,
        alpha: float | None = None,
        layers: Layers | None = None,
        policy: str | None = None,
        form: Form | None = None,
        edit: Edit | None = None,
        rows: RowPolicy = "image",
    ) -> SteeringHandle:
        """Attach the steering hooks to ``model`` now and return the handle.

        ``with shift.apply(vlm): vlm.generate(...)`` detaches on every path; or keep the handle and
        call ``handle.remove()``. ``model`` is a :class:`safegap.models.VLM` or a bare Hugging Face
        model of a supported family. ``alpha``, ``layers``, ``policy`` (the steering position
        policy) and ``form`` default to :attr:`tuning` (else 1.0, every layer, ``last``, ``full``);
        ``edit`` picks the operator (:class:`safegap.steer.intervene.Edit`; default CMRM's).
        """
        from safegap.steer.intervene import attach

        tuned = self.tuning or Tuning()
        chosen_form = form if form is not None else tuned.form
        if chosen_form not in FORMS:
            raise ValueError(f"form {chosen_form!r}: use {' or '.join(FORMS)}")
        vector = self if chosen_form == "full" else self._cached_increments()
        return attach(
            model,
            vector,
            alpha=tuned.alpha if alpha is None else alpha,
            layers=(tuned.layers if tuned.layers == "all" else list(tuned.layers))
            if layers is None
            else layers,
            policy=tuned.policy if policy is None else policy,
            edit=edit,
            rows=rows,
            cache=self.prepared,
        )

    def _cached_increments(self) -> ShiftVector:
        """The increments, computed once per state of the vectors (so repeated attaches reuse the
        prepared corrections)."""
        stamp = ("increments", *((i, v.data_ptr(), v._version) for i, v in self.vectors.items()))
        found = self.prepared.get(stamp)
        if found is None:
            found = ShiftVector(self._increment_tensors(), self.provenance.with_history("increments"), {})
            self.prepared[stamp] = found
        return found  # type: ignore[no-any-return]
