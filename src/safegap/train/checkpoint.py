"""Training checkpoints from safetensors and JSON only: resuming never unpickles anything.

``accelerate``'s ``save_state`` writes the optimizer, scheduler, sampler and RNG states with
``torch.save`` (pickle) and reads them back with ``torch.load``; with ``weights_only=True`` for
most files but ``weights_only=False`` for custom objects. A checkpoint is something users copy
between machines, so safegap writes its own instead:

``checkpoints/step-000120/``
    ``trainable.safetensors``  the parameters being trained (projector, LoRA or the LLM);
    ``optimizer.safetensors``  AdamW moments and step counts, keyed ``<param name>::<slot>``;
    ``rng-rank<k>.safetensors`` each process's torch (and CUDA) RNG state;
    ``state.json``             step, config, scheduler, optimizer hyper-parameters and the
    regularisers' JSON state (ReGap's frozen scale).

A checkpoint directory is written under a temporary name and renamed when complete, so a crash
mid-write leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT = "safegap-train-checkpoint/1"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def staging_dir(out_dir: str | Path, step: int) -> Path:
    return checkpoint_root(out_dir) / f".tmp-step-{step:06d}"


def final_dir(out_dir: str | Path, step: int) -> Path:
    return checkpoint_root(out_dir) / f"step-{step:06d}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def optimizer_tensors(
    state: Mapping[str, Any], names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into named tensors and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        name = names[int(index)]
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{slot}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[slot] = value
    groups = [{k: _json_safe(v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "names": names}


def optimizer_state_from(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], names: list[str], current: Mapping[str, Any]
) -> dict[str, Any]:
    """Rebuild an ``optimizer.state_dict()`` for parameters ``names`` (the current order)."""
    if list(meta["names"]) != names:
        raise ValueError("the checkpoint's trainable parameters differ from this run's (stage/LoRA changed?)")
    state: dict[int, dict[str, Any]] = {}
    for index, name in enumerate(names):
        slots = {key.split("::", 1)[1]: t for key, t in tensors.items() if key.split("::", 1)[0] == name}
        slots.update(meta["scalars"].get(name, {}))
        if slots:
            state[index] = slots
    groups = []
    for saved, live in zip(meta["param_groups"], current["param_groups"], strict=True):
        group = dict(saved)
        group["params"] = live["params"]
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def restore_rng(tensors: Mapping[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def write_rng(directory: Path, rank: int) -> None:
    save_file(rng_tensors(), str(directory / f"rng-rank{rank}.safetensors"))


def write_main(
    directory: Path,
    trainable: Mapping[str, torch.Tensor],
    optimizer: tuple[dict[str, torch.Tensor], dict[str, Any]],
    state: Mapping[str, Any],
) -> None:
    """The rank-0 part of a checkpoint: parameters, optimizer and the JSON state."""
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in trainable.items()},
        str(directory / "trainable.safetensors"),
    )
    opt_tensors, opt_meta = optimizer
    save_file(opt_tensors, str(directory / "optimizer.safetensors"))
    payload = {"format": FORMAT, **_json_safe(dict(state)), "optimizer": opt_meta}
    (directory / "state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")


def publish(out_dir: str | Path, step: int, keep: int) -> Path:
    """Rename the staged checkpoint into place and prune all but the newest ``keep``."""
    final = final_dir(out_dir, step)
    if final.exists():
        shutil.rmtree(final)
    staging_dir(out_dir, step).rename(final)
    if keep > 0:
        for _, old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(directory: Path) -> dict[str, Any]:
    state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    if state.get("format") != FORMAT:
        raise ValueError(f"{directory} is not a safegap training checkpoint ({state.get('format')!r})")
    return dict(state)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
