"""ReGap: pull image-token and text-token states together early in the LLM (Yang et al. 2025).

Default form (candidate A of ``research/regap.md`` section 4.2)::

    L = L_LM + λ · Σ_ℓ ‖ a_ℓ · (μ_I(ℓ) − μ_T(ℓ)) ‖²

* ``ℓ``: the output of the first decoder layer (index 0 here; MIR's "layer 1"). The paper
  regularises the first layer only and reports that later layers make safety worse.
* ``μ_I``, ``μ_T``: means of the image-token and text-token states, pooled over the whole batch
  (all processes included), padding excluded. Text tokens are those after the image by default,
  as in MIR; rows without an image contribute all their text tokens.
* ``a_ℓ``: MIR's text-centric scale, ``1 / mean text-token L2 norm`` at ``ℓ``, averaged over the
  warm-up steps and then frozen (no gradient ever flows through it). This is the reading of the
  paper's "α computed and fixed during warm-up" that fits every established fact: it makes ``λ``
  comparable across models and layers, and freezing stops the optimiser from shrinking the gap by
  inflating text norms.

Options (``research/regap.md`` 4.2 and 4.5): any layer set (``"embed"`` = the input embeddings,
MIR's layer 0), ``alpha_mode`` ``batch_text_norm`` (not frozen), ``loss_balance`` (candidate B:
``a²`` set during warm-up so the gap term matches the LM loss, then frozen) or ``none``; and a
covariance term (candidate C): ``trace`` adds ``tr Σ_I + tr Σ_T`` (rewards collapsing variance,
documented as risky) and ``match`` adds ``‖Σ_I − Σ_T‖²_F``, both scaled like the mean term.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from safegap.specs import parse_layers, resolve_layers
from safegap.train.distributed import global_masked_mean, global_sum, global_sum_detached
from safegap.train.hooks import LossContext

AlphaMode = Literal["warmup_text_norm", "batch_text_norm", "loss_balance", "none"]
CovTerm = Literal["none", "trace", "match"]
TextTokens = Literal["after_image", "all"]
Layer = int | Literal["embed"]

ALPHA_MODES: tuple[str, ...] = ("warmup_text_norm", "batch_text_norm", "loss_balance", "none")
COV_TERMS: tuple[str, ...] = ("none", "trace", "match")
TEXT_TOKENS: tuple[str, ...] = ("after_image", "all")


def after_image_mask(image_mask: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Text tokens after each row's last image token (every text token in rows without one)."""
    positions = torch.arange(image_mask.shape[1], device=image_mask.device)
    last_image = torch.where(image_mask, positions, torch.full_like(positions, -1)).amax(dim=1)
    return text_mask & (positions.unsqueeze(0) > last_image.unsqueeze(1))


@dataclass
class _Moments:
    """Globally pooled statistics of one token set at one layer."""

    mean: torch.Tensor
    count: float
    states: torch.Tensor
    mask: torch.Tensor


def parse_regap_layers(spec: str | Sequence[Layer]) -> tuple[Layer, ...]:
    """``"0"``, ``"0,1"``, ``"0-2"``, ``"embed,0"`` or a sequence of them: ``embed`` and the layer
    grammar of :mod:`safegap.specs` (a negative counts from the model's last layer, resolved when
    the loss runs, so a range must not cross zero)."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[Layer] = []
    for item in items:
        if item == "embed":
            out.append("embed")
            continue
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
            continue
        try:
            pieces = parse_layers(str(item), "ReGap layers") if str(item) != "all" else None
        except ValueError:
            pieces = None
        if not pieces:
            raise ValueError(f"ReGap layer {item!r} is neither a decoder-layer index (or A-B) nor 'embed'")
        for lo, hi in pieces:
            if (lo < 0) != (hi < 0) or hi < lo:
                raise ValueError(f"ReGap layer range {item!r}: give A-B with A <= B on one side of zero")
            out.extend(range(lo, hi + 1))
    if not out:
        raise ValueError("ReGap needs at least one layer")
    return tuple(dict.fromkeys(out))


@dataclass
class ReGapLoss:
    """The ReGap term; an :class:`~safegap.train.hooks.ExtraLoss` with JSON state (the frozen scale).

    Returns ``Σ_ℓ ‖a_ℓ(μ_I − μ_T)‖²`` (plus the covariance term); ``weight`` is λ, applied by
    the loop (:func:`~safegap.train.hooks.add_extra_losses`).
    """

    weight: float = 1.0
    layers: tuple[Layer, ...] = (0,)
    alpha_mode: AlphaMode = "warmup_text_norm"
    warmup_steps: int = 20
    text_tokens: TextTokens = "after_image"
    cov_term: CovTerm = "none"
    cov_weight: float = 1.0
    name: str = "regap"
    _warm: dict[str, list[float]] = field(default_factory=dict, repr=False)
    _frozen: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode {self.alpha_mode!r} not in {ALPHA_MODES}")
        if self.cov_term not in COV_TERMS:
            raise ValueError(f"cov_term {self.cov_term!r} not in {COV_TERMS}")
        if self.text_tokens not in TEXT_TOKENS:
            raise ValueError(f"text_tokens {self.text_tokens!r} not in {TEXT_TOKENS}")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        self.layers = parse_regap_layers(self.layers)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"warm": {k: list(v) for k, v in self._warm.items()}, "frozen": dict(self._frozen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._warm = {str(k): [float(x) for x in v] for k, v in state.get("warm", {}).items()}
        self._frozen = {str(k): float(v) for k, v in state.get("frozen", {}).items()}

    def scale(self, layer: Layer) -> float | None:
        """The frozen scale of ``layer`` (``None`` while still warming up)."""
        return self._frozen.get(str(layer))

    # -- loss -------------------------------------------------------------------------------
    def __call__(self, ctx: LossContext) -> torch.Tensor:
        text_mask = ctx.text_mask
        if self.text_tokens == "after_image":
            text_mask = after_image_mask(ctx.image_mask, ctx.text_mask)
        total: torch.Tensor | None = None
        logged: dict[str, float] = {}
        for layer in self.layers:
            states = self._states(ctx, layer)
            image = self._moments(states, ctx.image_mask)
            text = self._moments(states, text_mask)
            if image.count == 0 or text.count == 0:
                value = states.sum() * 0.0  # keeps the graph (DDP) and contributes nothing
                a = float("nan")
            else:
                raw = self._raw_terms(image, text)
                a = self._alpha(ctx, layer, text, raw)
                value = self._scaled(raw, a)
            logged[f"regap/gap_l{layer}"] = float(value.detach())
            logged[f"regap/a_l{layer}"] = a
            total = value if total is None else total + value
        assert total is not None
        ctx.extras.update(logged)
        ctx.extras["regap/value"] = float(total.detach())
        ctx.extras["regap/frozen"] = float(all(str(layer) in self._frozen for layer in self.layers))
        return total

    def _states(self, ctx: LossContext, layer: Layer) -> torch.Tensor:
        if layer == "embed":
            if ctx.embeddings is None:
                raise ValueError("ReGap layer 'embed' needs ctx.embeddings (use capture_hidden_states)")
            return ctx.embeddings
        return ctx.hidden_states[resolve_layers(layer, len(ctx.hidden_states), "ReGap layers")[0]]

    @staticmethod
    def _moments(states: torch.Tensor, mask: torch.Tensor) -> _Moments:
        mean, count = global_masked_mean(states, mask)
        return _Moments(mean=mean, count=count, states=states, mask=mask)

    def _raw_terms(self, image: _Moments, text: _Moments) -> dict[str, torch.Tensor]:
        """Unscaled pieces: squared mean gap and, if asked, the covariance term."""
        terms = {"mean": (image.mean - text.mean).pow(2).sum()}
        if self.cov_term == "trace":
            terms["cov"] = _total_variance(image) + _total_variance(text)
        elif self.cov_term == "match":
            terms["cov"] = (_covariance(image) - _covariance(text)).pow(2).sum()
        return terms

    def _scaled(self, raw: dict[str, torch.Tensor], a: float) -> torch.Tensor:
        value = (a * a) * raw["mean"]
        if "cov" in raw:
            power = 4 if self.cov_term == "match" else 2  # Σ scales with a², tr Σ too; ‖Σ‖²_F with a⁴
            value = value + self.cov_weight * (a**power) * raw["cov"]
        return value

    def _alpha(self, ctx: LossContext, layer: Layer, text: _Moments, raw: dict[str, torch.Tensor]) -> float:
        if self.alpha_mode == "none":
            return 1.0
        key = str(layer)
        if key in self._frozen:
            return self._frozen[key]
        if self.alpha_mode == "loss_balance":
            unscaled = float(self._scaled({k: v.detach() for k, v in raw.items()}, 1.0))
            observation = (float(ctx.lm_loss.detach()), unscaled)
        else:
            observation = (_mean_text_norm(text), 1.0)
        if self.alpha_mode == "batch_text_norm":
            return 1.0 / max(observation[0], 1e-12)
        warming = ctx.step < self.warmup_steps
        if warming or key not in self._warm:
            sums = self._warm.setdefault(key, [0.0, 0.0])
            sums[0] += observation[0]
            sums[1] += observation[1]
        sums = self._warm[key]
        a = _alpha_from_sums(self.alpha_mode, sums)
        if not warming:
            self._frozen[key] = a
        return a


def _alpha_from_sums(mode: str, sums: list[float]) -> float:
    if mode == "loss_balance":  # a² · mean(gap) = mean(L_LM)
        return float((sums[0] / max(sums[1], 1e-12)) ** 0.5)
    return float(1.0 / max(sums[0] / max(sums[1], 1.0), 1e-12))  # 1 / mean text norm


def _mean_text_norm(text: _Moments) -> float:
    norms = text.states.detach().to(torch.float32).norm(dim=-1)
    total = global_sum_detached((norms * text.mask).sum())
    return float(total) / max(text.count, 1.0)


def _total_variance(m: _Moments) -> torch.Tensor:
    """``tr Σ`` (unbiased), pooled over processes."""
    sq = (m.states.to(torch.float32).pow(2).sum(-1) * m.mask).sum()
    sq = global_sum(sq)
    n = max(m.count, 2.0)
    return (sq - m.count * m.mean.pow(2).sum()) / (n - 1.0)


def _covariance(m: _Moments) -> torch.Tensor:
    """``Σ`` (unbiased, ``d × d``), pooled over processes."""
    x = m.states.to(torch.float32)[m.mask]
    second = global_sum(x.T @ x)
    n = max(m.count, 2.0)
    return (second - m.count * torch.outer(m.mean, m.mean)) / (n - 1.0)
