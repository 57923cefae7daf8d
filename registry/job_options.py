"""What a queued evaluation is asked to do: the typed options of an eval job.

Every way in (the `enqueue` CLI, the dashboard's Queue page, `scan --watch`, the training
callbacks) hands its options to `Registry.enqueue_job`, which parses them here: an unknown key or a
value of the wrong type is a one-line `InvalidInput` at enqueue time, never a job whose options a
worker would silently drop. The stored form (`to_dict`) holds only what differs from the defaults,
so jobs queued before this type existed read back the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from registry.errors import InvalidInput
from registry.safeio import DB_INT_MAX, short_repr
from registry.settings import check_builder_name

__all__ = ["JobOptions"]


@dataclass(frozen=True)
class JobOptions:
    max_examples: int | None = None
    """Evaluate a deterministic subset: at most this many examples per task (None: all)."""
    allow_mismatch: bool = False
    """Evaluate despite a token-space mismatch the audit reports (the MLflow run says so)."""
    write_eval_json: bool = True
    """Also write eval_step<step>.json into the checkpoint's run folder."""
    max_tokens_per_batch: int | None = None
    """Padded tokens per forward pass (None: chosen by the worker)."""
    connector_builder: str | None = None
    """The connector builder the user chose (``package.module:function``)."""
    force: bool = False
    """Evaluate again even when a result for this content exists (set by `enqueue --force`)."""

    @classmethod
    def parse(cls, raw: JobOptions | Mapping[str, Any] | None) -> JobOptions:
        """Options from a mapping (or as they are): unknown keys and wrong types are refused."""
        if raw is None:
            return cls()
        if isinstance(raw, JobOptions):
            return raw
        if not isinstance(raw, Mapping):
            raise InvalidInput(f"job options must be a mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in raw if k not in known)
        if unknown:
            raise InvalidInput(f"unknown job option {unknown[0]!r} (known: {', '.join(sorted(known))})")
        for name in ("max_examples", "max_tokens_per_batch"):
            value = raw.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= DB_INT_MAX
            ):
                raise InvalidInput(
                    f"job option {name} must be an integer from 1 to {DB_INT_MAX}, got {short_repr(value)}"
                )
        for name in ("allow_mismatch", "write_eval_json", "force"):
            if name in raw and not isinstance(raw[name], bool):
                raise InvalidInput(f"job option {name} must be true or false, got {short_repr(raw[name])}")
        builder = raw.get("connector_builder")
        if builder is not None and check_builder_name(builder) is None:
            raise InvalidInput(
                f"job option connector_builder must be package.module:function, got {short_repr(builder)}"
            )
        return cls(**{**dict(raw), **({"connector_builder": check_builder_name(builder)} if builder else {})})

    def to_dict(self) -> dict[str, Any]:
        """The stored form: only the options that differ from their defaults."""
        default = asdict(JobOptions())
        return {k: v for k, v in asdict(self).items() if v != default[k]}
