"""The identity of one evaluation: this checkpoint content, on this eval-set content, on this subset.

Everything that asks "was this evaluated already?", "is this the same job?", "are these two
results comparable example by example?" asks an `EvalKey`, and each place that writes the identity
down uses one of its spellings:

    dedupe_key   the queue's job identity (full hashes, ``:n<N>`` for a subset)
    tag          the MLflow tag ``evalboard.eval_key`` (24-hex-digit hashes, ``:n<N>``)
    subset       the per-example file's subset rule: "all", or "max_examples=N"

A subset is the evaluator's deterministic per-task choice of at most N examples; the whole eval
set has ``max_examples=None``. A result carries its key in its hashes and ``extra["max_examples"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from registry.errors import InvalidInput

__all__ = ["EvalKey", "ALL_EXAMPLES", "subset_of"]

ALL_EXAMPLES = "all"
_TAG_HASH_CHARS = 24


class _Hashed(Protocol):
    @property
    def content_hash(self) -> Any: ...


class _Result(Protocol):
    @property
    def checkpoint_hash(self) -> str | None: ...

    @property
    def evalset_hash(self) -> str | None: ...

    @property
    def extra(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class EvalKey:
    checkpoint_hash: str
    evalset_hash: str
    max_examples: int | None = None
    """At most this many examples per task (None: the whole eval set)."""

    def __post_init__(self) -> None:
        n = self.max_examples
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise InvalidInput(f"max_examples must be a whole number >= 1, got {n!r}")
        if n == 0:  # 0 has always meant "no limit" where it was accepted
            object.__setattr__(self, "max_examples", None)

    @classmethod
    def of(cls, checkpoint: _Hashed, evalset: _Hashed, max_examples: int | None = None) -> EvalKey:
        """The key of evaluating ``checkpoint`` on ``evalset`` (entities or anything with a content hash)."""
        return cls(str(checkpoint.content_hash or ""), str(evalset.content_hash or ""), max_examples)

    @classmethod
    def of_result(cls, result: _Result) -> EvalKey:
        """The key a registry result was computed for."""
        return cls(result.checkpoint_hash or "", result.evalset_hash or "", subset_of(result))

    @property
    def subset(self) -> str:
        """The per-example files' subset rule: "all" or "max_examples=N"."""
        return f"max_examples={self.max_examples}" if self.max_examples else ALL_EXAMPLES

    @property
    def dedupe_key(self) -> str:
        """The queue's job identity: one job per key."""
        return f"{self.checkpoint_hash}:{self.evalset_hash}{self._suffix}"

    @property
    def tag(self) -> str:
        """The MLflow tag ``evalboard.eval_key``: short hashes, still unique in practice."""
        return f"{self.checkpoint_hash[:_TAG_HASH_CHARS]}:{self.evalset_hash[:_TAG_HASH_CHARS]}{self._suffix}"

    @property
    def _suffix(self) -> str:
        return f":n{self.max_examples}" if self.max_examples else ""


def subset_of(result: _Result) -> int | None:
    """The subset a result was computed on (None: the whole eval set)."""
    n = (result.extra or {}).get("max_examples")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
