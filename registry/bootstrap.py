"""Is the difference real? Bootstrap intervals over an eval set's examples.

The loss of a checkpoint is token-weighted: Σ nll / Σ tokens over the examples of a task (and over
every example for "all"). Its noise comes from which examples the eval set happens to hold, so we
resample examples with replacement and recompute that same statistic:

- **paired** (`paired_bootstrap`): both checkpoints are scored on the *same* draw of examples (one
  index matrix), and the statistic of a draw is ``loss_B - loss_A``. Pairing cancels what the two
  share (an example that is hard for both), which is why a small but consistent improvement can be
  significant when the two separate intervals overlap.
- **one checkpoint** (`loss_intervals`): the statistic is the loss itself.

Draws are stratified by task: every draw holds as many examples of each task as the eval set
(the eval set's task mix is fixed by design, not sampled), and "all" is computed from the same
draws. The interval is the percentile interval of the B statistics (no division by √B: it is the
spread of the statistic, not of its mean over draws). For a difference,
``p = (c + 1) / (B + 1)`` where c counts the draws whose delta does not have the observed sign
(a draw with delta 0 counts); p is 1 when the observed delta is 0.

Only results on the same eval set content (hash) and the same subset rule can be paired; anything
else is refused naming both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from registry.errors import Incompatible, InvalidInput
from registry.per_example import ExampleLosses

__all__ = [
    "DEFAULT_ITERS",
    "DEFAULT_SEED",
    "DEFAULT_CONFIDENCE",
    "LossInterval",
    "DeltaInterval",
    "PairedComparison",
    "paired_bootstrap",
    "loss_intervals",
    "check_pairable",
]

DEFAULT_ITERS = 1000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
MAX_ITERS = 1_000_000
_CHUNK_CELLS = 4_000_000
"""Draws are processed in chunks of about this many sampled examples (bounds memory: ~32 MB of
indices), independent of the data's order so a seed always gives the same draws."""

ALL = "all"


@dataclass(frozen=True)
class LossInterval:
    """One checkpoint's loss on a task, with its bootstrap percentile interval."""

    task: str
    loss: float
    low: float
    high: float
    examples: int
    tokens: int


@dataclass(frozen=True)
class DeltaInterval:
    """``loss_b - loss_a`` on a task (negative: B is better), its interval and p."""

    task: str
    loss_a: float
    loss_b: float
    delta: float
    low: float
    high: float
    p_value: float
    examples: int

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class PairedComparison:
    evalset_hash: str
    subset: str
    iters: int
    seed: int
    confidence: float
    tasks: Mapping[str, DeltaInterval]
    """"all" first, then the tasks by name."""

    def to_dict(self) -> dict:
        return {
            "evalset_hash": self.evalset_hash,
            "subset": self.subset,
            "iters": self.iters,
            "seed": self.seed,
            "confidence": self.confidence,
            "tasks": {t: {**asdict(d), "significant": d.significant} for t, d in self.tasks.items()},
        }


def check_pairable(a: ExampleLosses, b: ExampleLosses) -> None:
    """`Incompatible` unless both were computed on the same eval set content and subset, with
    exact NLL sums; the message names both sides."""
    for side in (a, b):
        if not side.comparable:
            raise Incompatible(
                f"{side.source}: per-example file has no NLL sums or eval-set hash "
                "(written before evalboard recorded them, or imported); re-evaluate to get an interval"
            )
    if a.evalset_hash != b.evalset_hash or a.subset != b.subset:
        raise Incompatible(
            "results were computed on different eval sets or subsets and cannot be paired: "
            f"{a.source} on eval set {a.evalset_hash} ({a.subset}), "
            f"{b.source} on eval set {b.evalset_hash} ({b.subset})"
        )
    if a.n != b.n or set(a.example_ids.tolist()) != set(b.example_ids.tolist()):
        raise Incompatible(
            f"{a.source} and {b.source} claim eval set {a.evalset_hash} ({a.subset}) "
            f"but hold different examples ({a.n} vs {b.n})"
        )


def paired_bootstrap(
    a: ExampleLosses,
    b: ExampleLosses,
    *,
    iters: int = DEFAULT_ITERS,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
) -> PairedComparison:
    """Delta ``loss(b) - loss(a)`` per task and for all, with its paired percentile interval."""
    _check_settings(iters, seed, confidence)
    check_pairable(a, b)
    assert a.nll_sums is not None and b.nll_sums is not None
    order = {eid: i for i, eid in enumerate(b.example_ids.tolist())}
    take = np.fromiter((order[e] for e in a.example_ids.tolist()), dtype=np.int64, count=a.n)
    if not np.array_equal(a.tasks, b.tasks[take]):
        raise Incompatible(f"{a.source} and {b.source} give the same example different tasks")
    values = np.stack([a.nll_sums, a.tokens, b.nll_sums[take], b.tokens[take]], axis=1).astype(np.float64)
    draws = _draw_sums(values, a.tasks, iters, seed)
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    out = {}
    for task, (rows, sums) in _by_task(values, a.tasks, draws).items():
        loss_a = _ratio(math.fsum(values[rows, 0].tolist()), values[rows, 1].sum())
        loss_b = _ratio(math.fsum(values[rows, 2].tolist()), values[rows, 3].sum())
        delta = loss_b - loss_a
        with np.errstate(invalid="ignore", divide="ignore"):
            d = sums[:, 2] / sums[:, 3] - sums[:, 0] / sums[:, 1]
        low, high = _percentiles(d, lo_q, hi_q)
        out[task] = DeltaInterval(
            task=task,
            loss_a=loss_a,
            loss_b=loss_b,
            delta=delta,
            low=low,
            high=high,
            p_value=_p_value(delta, d),
            examples=int(rows.sum()),
        )
    assert a.evalset_hash is not None and a.subset is not None
    return PairedComparison(
        evalset_hash=a.evalset_hash, subset=a.subset, iters=iters, seed=seed, confidence=confidence, tasks=out
    )


def loss_intervals(
    t: ExampleLosses,
    *,
    iters: int = DEFAULT_ITERS,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, LossInterval]:
    """One checkpoint's loss per task and for all, with its percentile interval."""
    _check_settings(iters, seed, confidence)
    if t.nll_sums is None:
        raise Incompatible(f"{t.source}: per-example file has no NLL sums; re-evaluate to get an interval")
    values = np.stack([t.nll_sums, t.tokens], axis=1).astype(np.float64)
    draws = _draw_sums(values, t.tasks, iters, seed)
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    out = {}
    for task, (rows, sums) in _by_task(values, t.tasks, draws).items():
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = sums[:, 0] / sums[:, 1]
        low, high = _percentiles(stat, lo_q, hi_q)
        out[task] = LossInterval(
            task=task,
            loss=_ratio(math.fsum(values[rows, 0].tolist()), values[rows, 1].sum()),
            low=low,
            high=high,
            examples=int(rows.sum()),
            tokens=int(values[rows, 1].sum()),
        )
    return out


# -- the resampling ----------------------------------------------------------------------------


def _check_settings(iters: int, seed: int, confidence: float) -> None:
    if isinstance(iters, bool) or not isinstance(iters, int) or not 1 <= iters <= MAX_ITERS:
        raise InvalidInput(f"bootstrap iterations must be a whole number from 1 to {MAX_ITERS}, not {iters!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInput(f"bootstrap seed must be a whole number ≥ 0, not {seed!r}")
    if not 0 < confidence < 1:
        raise InvalidInput(f"confidence must be between 0 and 1, not {confidence!r}")


def _draw_sums(values: np.ndarray, tasks: np.ndarray, iters: int, seed: int) -> dict[str, np.ndarray]:
    """Per task, the column sums of ``values`` over each draw's resampled examples:
    {task: (iters, columns)}. Tasks are drawn in name order from one generator, so a seed fixes
    every draw."""
    rng = np.random.default_rng(seed)
    out = {}
    for task in sorted(set(tasks.tolist())):
        rows = np.flatnonzero(tasks == task)
        v = values[rows]
        n = len(rows)
        sums = np.empty((iters, values.shape[1]), dtype=np.float64)
        step = max(1, _CHUNK_CELLS // max(n, 1))
        for start in range(0, iters, step):
            stop = min(iters, start + step)
            idx = rng.integers(0, n, size=(stop - start, n))
            # counts of each example in each draw, then one matrix product: no (draws, n, columns) gather
            sums[start:stop] = _counts(idx, n) @ v
        out[task] = sums
    return out


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``counts[r, j]``: how often example j appears in draw r (as float64, for the product)."""
    rows = idx.shape[0]
    flat = (np.arange(rows, dtype=np.int64)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def _by_task(values: np.ndarray, tasks: np.ndarray, draws: dict[str, np.ndarray]) -> dict:
    """{task: (row mask, per-draw sums)}, "all" first (the sum of the tasks' draws)."""
    names = sorted(draws)
    total = sum(draws[t] for t in names)
    out = {ALL: (np.ones(len(tasks), dtype=bool), total)}
    for t in names:
        if t != ALL:
            out[t] = (tasks == t, draws[t])
    return out


def _ratio(num: float, den: float) -> float:
    return num / float(den) if den else math.nan


def _percentiles(stat: np.ndarray, lo_q: float, hi_q: float) -> tuple[float, float]:
    finite = stat[np.isfinite(stat)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [lo_q, hi_q])
    return float(low), float(high)


def _p_value(observed: float, draws: np.ndarray) -> float:
    if not math.isfinite(observed) or observed == 0:
        return 1.0
    finite = draws[np.isfinite(draws)]
    flips = int(np.count_nonzero(finite * math.copysign(1.0, observed) <= 0))
    return (flips + 1) / (finite.size + 1)
