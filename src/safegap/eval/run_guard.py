"""What keeps a run honest around the harness: one process per run directory, prompts that fit the
model, and a run whose every sample failed never passing as a result.

- :class:`RunLock`: ``OUT/.lock`` held with ``flock`` for the whole run; a second ``safegap eval``
  on the same ``--out`` refuses with one line instead of interleaving its records.
- :func:`prompt_limit` / :func:`fit_prompt`: a prompt longer than the model's positions (less
  ``max_new_tokens``) is an errored sample, or cut to fit with ``--long-prompts truncate``
  (recorded per sample as ``prompt_truncated``).
- :func:`check_outcome`: a finished run in which no sample could be scored (every generation,
  every verdict failed) raises :class:`RunFailed` (exit 1) instead of reporting rates of nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safegap.errors import UserError

LONG_PROMPT_POLICIES = ("error", "truncate")


class RunLocked(UserError):
    """Another process holds the run directory."""


class RunFailed(RuntimeError):
    """The run finished but no sample could be scored."""


class RunLock:
    """An exclusive ``flock`` on ``folder/.lock`` (per rank in a multi-process run)."""

    def __init__(self, folder: Path, rank: int = 0, world_size: int = 1) -> None:
        self.path = folder / (".lock" if world_size == 1 else f".lock.rank-{rank}")
        self._fd = -1
        self._made = False

    def __enter__(self) -> RunLock:
        self._made = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is in use by another safegap eval (pid {holder}); wait for it "
                "to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
            folder = self.path.parent
            if self._made and [p.name for p in folder.iterdir()] == [self.path.name]:
                with contextlib.suppress(OSError):  # a run that wrote nothing leaves nothing
                    self.path.unlink()
                    folder.rmdir()


def prompt_limit(vlm: Any, max_new_tokens: int) -> int | None:
    """Prompt tokens the model can take before ``max_new_tokens`` (None: no known limit)."""
    config = getattr(getattr(vlm, "model", None), "config", None)
    text = getattr(config, "text_config", None) or config
    positions = getattr(text, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    return max(positions - max_new_tokens, 1)


def fit_prompt(tokenizer: Any, prompt: str, limit: int | None, policy: str) -> tuple[str, str | None, bool]:
    """``(prompt, error or None, truncated)`` for one prompt against ``limit`` tokens."""
    if limit is None or len(prompt) <= limit:  # a token is at least one character
        return prompt, None, False
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) <= limit:
        return prompt, None, False
    if policy == "truncate":
        return tokenizer.decode(ids[:limit], skip_special_tokens=True), None, True
    return (
        prompt,
        f"prompt is {len(ids)} tokens but the model takes at most {limit} before --max-new-tokens "
        "(--long-prompts truncate cuts it to fit)",
        False,
    )


def count_problems(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """``n_errors`` (records with a sample error or an errored verdict), ``n_judge_errors``
    (errored verdicts) and ``n_empty_generations``."""
    judge_errors = sum(bool(v.get("error")) for r in records for v in r.get("verdicts") or [])
    errors = sum(
        bool(r.get("error")) or any(v.get("error") for v in r.get("verdicts") or []) for r in records
    )
    empty = sum(bool(r.get("empty_generation")) for r in records)
    return {"n_errors": errors, "n_judge_errors": judge_errors, "n_empty_generations": empty}


def check_outcome(records: Sequence[dict[str, Any]], out: Path) -> None:
    """Raise :class:`RunFailed` when no record holds one usable verdict."""
    if not records:
        return
    usable = any(
        not r.get("error") and any(not v.get("error") for v in r.get("verdicts") or []) for r in records
    )
    if usable:
        return
    first = next(
        (
            r.get("error") or next((v["error"] for v in r.get("verdicts") or [] if v.get("error")), None)
            for r in records
        ),
        None,
    )
    raise RunFailed(
        f"{out}: no sample could be scored ({len(records)} errored; first: {first}); see {out / 'samples.jsonl'}"
    )
