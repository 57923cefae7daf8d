"""``eval_step<step>.json``: the per-checkpoint evaluation summary the training code already writes.

We write (README "Eval result")::

    {"step": 7000,
     "loss": {"all": 2.7462, "a2t": 2.3606, "i2t": 3.3357},
     "tokens": {"all": 81234, "a2t": 50000, "i2t": 31234},
     "examples": {"all": 512, "a2t": 256, "i2t": 256},
     "checkpoint": {"path": "...", "content_hash": "..."},
     "evalset": {"name": "...", "content_hash": "..."},
     "token_space_hash": "...", "evalboard_version": "...", "created_at": "..."}

and import the shapes training scripts write: flat ``"loss(all)"``/``"loss_all"``/``"eval_loss"``,
``"loss(a2t)"``/``"loss_a2t"``/``"a2t_loss"``/``"loss/a2t"``, or nested under ``loss``/``losses``/``metrics``.
``loss`` is the token-weighted mean next-token cross-entropy (nats) over the scored positions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.atomic import write_file
from registry.errors import InvalidInput
from registry.safeio import check_int, check_text, read_json, short_repr
from registry.trainable_rows import check_step_in_name, parse_step

__all__ = ["EvalResult", "eval_filename"]

_FLAT_PATTERNS = (
    re.compile(r"^loss\((?P<task>[\w\-]+)\)$"),
    re.compile(r"^(?:eval_)?loss[_/](?P<task>[\w\-]+)$"),
    re.compile(r"^(?P<task>[\w\-]+)[_/]loss$"),
)
_ALL_NAMES = ("eval_loss", "loss")
_INFO_KEYS = {
    "step",
    "global_step",
    "tokens",
    "examples",
    "checkpoint",
    "evalset",
    "token_space_hash",
    "evalboard_version",
    "created_at",
    "epoch",
    "n_examples",
    "n_tokens",
    "loss",
    "losses",
    "metrics",
    "source",
    "device",
    "dtype",
    "max_examples",
    "runtime_s",
    "note",
    "run_info",
}


def eval_filename(step: int) -> str:
    return f"eval_step{step}.json"


@dataclass(frozen=True)
class EvalResult:
    step: int | None
    losses: Mapping[str, float]  # task -> token-weighted mean loss; "all" included
    tokens: Mapping[str, int] = field(default_factory=dict)
    examples: Mapping[str, int] = field(default_factory=dict)
    checkpoint: Mapping[str, Any] = field(default_factory=dict)
    evalset: Mapping[str, Any] = field(default_factory=dict)
    token_space_hash: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def loss_all(self) -> float | None:
        return self.losses.get("all")

    def metrics(self) -> dict[str, dict[str, Any]]:
        """task -> {loss, tokens, examples}: the shape the registry stores."""
        return {
            t: {"loss": self.losses[t], "tokens": self.tokens.get(t), "examples": self.examples.get(t)}
            for t in self.losses
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "loss": dict(self.losses),
            "tokens": dict(self.tokens),
            "examples": dict(self.examples),
            "checkpoint": dict(self.checkpoint),
            "evalset": dict(self.evalset),
            "token_space_hash": self.token_space_hash,
            **({"run_info": dict(self.extra)} if self.extra else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically (`registry.atomic.write_file`) so a reader never sees half a file."""
        path = Path(path)
        if path.is_dir():
            path = path / eval_filename(self.step or 0)
        return write_file(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        path = Path(path)
        check_step_in_name(Path(path.stem.replace("eval_step", "step")))
        data = read_json(path)
        where = str(path)
        losses = _collect_losses(data, where)
        if not losses:
            raise InvalidInput(
                "has no loss values (expected 'loss': {'all': ..., '<task>': ...} or 'loss(all)' / 'loss_<task>')",
                path=where,
            )
        if "all" not in losses:
            raise InvalidInput(
                f"has task losses {sorted(losses)} but no overall loss ('loss(all)' or loss.all)", path=where
            )
        step = data.get("step", data.get("global_step"))
        name_step = parse_step(path.stem.replace("eval_step", "step"))
        if step is None:
            step = name_step
        else:
            check_int(step, "step", where)
            if name_step is not None and name_step != step:
                raise InvalidInput(f"step {step} inside the file disagrees with its name {path.name}", path=where)
        counts = {k: _int_map(data.get(k), k, where) for k in ("tokens", "examples")}
        for task, n in counts["examples"].items():
            if n == 0 and task in losses:
                raise InvalidInput(
                    f"examples.{task} is 0, but a loss is given for {task!r}: a loss over no examples is not a result",
                    path=where,
                )
        for task, n in counts["tokens"].items():
            if n == 0 and task in losses:
                raise InvalidInput(f"tokens.{task} is 0, but a loss is given for {task!r}", path=where)
        checkpoint = _ref(data.get("checkpoint"), "checkpoint", ("path", "content_hash"), where)
        evalset = _ref(data.get("evalset"), "evalset", ("name", "content_hash"), where)
        ts_hash = data.get("token_space_hash")
        if ts_hash is not None:
            check_text(ts_hash, "token_space_hash", where, max_chars=128)
        extra = dict(data["run_info"]) if isinstance(data.get("run_info"), dict) else {}
        extra.update(
            {
                k: v
                for k, v in data.items()
                if k
                in _INFO_KEYS
                - {
                    "loss",
                    "losses",
                    "metrics",
                    "tokens",
                    "examples",
                    "checkpoint",
                    "evalset",
                    "step",
                    "global_step",
                    "token_space_hash",
                    "run_info",
                }
            }
        )
        return cls(
            step=step,
            losses=losses,
            tokens=counts["tokens"],
            examples=counts["examples"],
            checkpoint=checkpoint,
            evalset=evalset,
            token_space_hash=ts_hash,
            extra=extra,
            path=str(path),
        )


def _collect_losses(data: Mapping[str, Any], where: str) -> dict[str, float]:
    losses: dict[str, float] = {}

    def put(task: str, value: Any, key: str) -> None:
        check_text(task, f"task name of {key[:80]!r}", where, max_chars=64)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{key} must be a number, got {short_repr(value)}", path=where)
        try:
            value = float(value)
        except OverflowError:
            raise InvalidInput(f"{key} is not finite ({short_repr(value)})", path=where) from None
        if not math.isfinite(value):
            raise InvalidInput(f"{key} is not finite ({value})", path=where)
        if value < 0:
            raise InvalidInput(f"{key} is {value}, but a cross-entropy loss is never negative", path=where)
        if task in losses and losses[task] != float(value):
            raise InvalidInput(f"loss for {task!r} is given twice with different values", path=where)
        losses[task] = float(value)

    for nest in ("loss", "losses", "metrics"):
        sub = data.get(nest)
        if isinstance(sub, dict):
            for k, v in sub.items():
                task = _task_of(k) if nest == "metrics" else (_task_of(k) or k)
                if task is None:
                    continue  # other metrics (accuracy, perplexity, ...) are kept as they are
                if isinstance(v, dict):
                    if "loss" in v:
                        put(task, v["loss"], f"{nest}.{k}.loss")
                else:
                    put(task, v, f"{nest}.{k}")
    for key, value in data.items():
        if key in ("loss", "losses", "metrics") and isinstance(value, dict):
            continue
        task = _task_of(key)
        if task is not None:
            put(task, value, key)
        elif key not in _INFO_KEYS:
            raise InvalidInput(f"unexpected field {key!r}", path=where)
    return losses


def _task_of(key: str) -> str | None:
    if key in _ALL_NAMES:
        return "all"
    for pat in _FLAT_PATTERNS:
        m = pat.match(key)
        if m:
            return m.group("task")
    return None


def _int_map(raw: Any, key: str, where: str) -> dict[str, int]:
    """Token / example counts per task: non-negative integers a registry column can hold."""
    if raw is None:
        return {}
    if isinstance(raw, int) and not isinstance(raw, bool):
        return {"all": check_int(raw, key, where, maximum=2**62)}
    if not isinstance(raw, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
        raise InvalidInput(f"{key} must map task names to integers", path=where)
    return {
        check_text(t, f"{key} task name", where, max_chars=64): check_int(v, f"{key}.{t}", where, maximum=2**62)
        for t, v in raw.items()
    }


def _ref(raw: Any, key: str, fields: tuple[str, ...], where: str) -> dict[str, Any]:
    """The `checkpoint` / `evalset` reference: an object whose known fields are short strings."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{key} must be an object with {' and '.join(fields)}, got {short_repr(raw)}", path=where)
    for f in fields:
        if raw.get(f) is not None:
            check_text(raw[f], f"{key}.{f}", where, max_chars=4096 if f == "path" else 256)
    return dict(raw)
