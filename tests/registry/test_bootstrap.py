"""Bootstrap intervals (registry/bootstrap.py) against a by-hand computation with plain loops, and
the per-example file they read (registry/per_example.py)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from registry import per_example
from registry.bootstrap import loss_intervals, paired_bootstrap
from registry.errors import Incompatible, InvalidInput
from registry.eval_key import EvalKey
from registry.per_example import ExampleLosses

HASH = "e" * 64

# A small fixed eval set: (example id, task, tokens, NLL sum of A, NLL sum of B)
FIXED = [
    ("a0", "a2t", 5, 11.0, 10.2),
    ("a1", "a2t", 3, 7.5, 7.4),
    ("a2", "a2t", 8, 20.1, 18.0),
    ("a3", "a2t", 2, 3.0, 3.3),
    ("a4", "a2t", 6, 13.2, 12.0),
    ("a5", "a2t", 4, 9.9, 9.1),
    ("i0", "i2t", 7, 15.4, 15.9),
    ("i1", "i2t", 1, 2.2, 1.9),
    ("i2", "i2t", 9, 25.0, 22.5),
    ("i3", "i2t", 4, 8.8, 8.0),
    ("i4", "i2t", 5, 12.5, 11.5),
]


def table(rows, column: int, *, evalset_hash: str = HASH, subset: str = "all", source: str = "t") -> ExampleLosses:
    ids = np.array([r[0] for r in rows], dtype=object)
    tasks = np.array([r[1] for r in rows], dtype=object)
    tokens = np.array([r[2] for r in rows], dtype=np.int64)
    sums = np.array([r[column] for r in rows], dtype=np.float64)
    return ExampleLosses(ids, tasks, sums, tokens, sums / tokens, evalset_hash, subset, "c" * 64, source)


def by_hand(rows, iters: int, seed: int):
    """The paired bootstrap written with loops: per draw, per task, resample that task's examples
    with replacement; the statistic is sum(nll)/sum(tokens) of B minus that of A."""
    rng = random.Random(seed)
    tasks = sorted({r[1] for r in rows})
    members = {t: [r for r in rows if r[1] == t] for t in tasks}

    def loss(chosen, col):
        return sum(r[col] for r in chosen) / sum(r[2] for r in chosen)

    observed = {"all": loss(rows, 4) - loss(rows, 3), **{t: loss(members[t], 4) - loss(members[t], 3) for t in tasks}}
    draws = {name: [] for name in observed}
    for _ in range(iters):
        chosen_all = []
        for t in tasks:
            chosen = [members[t][rng.randrange(len(members[t]))] for _ in members[t]]
            chosen_all += chosen
            draws[t].append(loss(chosen, 4) - loss(chosen, 3))
        draws["all"].append(loss(chosen_all, 4) - loss(chosen_all, 3))
    intervals = {}
    for name, values in draws.items():
        values.sort()
        intervals[name] = (values[int(0.025 * iters)], values[int(0.975 * iters) - 1])
    flips = {name: sum(1 for d in draws[name] if d * math.copysign(1, observed[name]) <= 0) for name in observed}
    return observed, intervals, {n: (flips[n] + 1) / (iters + 1) for n in observed}


def test_paired_bootstrap_matches_a_by_hand_computation():
    iters = 4000
    observed, intervals, p_values = by_hand(FIXED, iters, seed=11)
    got = paired_bootstrap(table(FIXED, 3), table(FIXED, 4), iters=iters, seed=5)
    assert list(got.tasks) == ["all", "a2t", "i2t"]
    for name, d in got.tasks.items():
        assert d.delta == pytest.approx(observed[name], rel=1e-12, abs=1e-15), name
        low, high = intervals[name]
        width = high - low
        # different generators (Python's vs numpy's): the bounds agree within Monte-Carlo error
        assert abs(d.low - low) < 0.15 * width and abs(d.high - high) < 0.15 * width, (name, d, intervals[name])
        assert abs(d.p_value - p_values[name]) < 0.03, (name, d.p_value, p_values[name])
    assert got.tasks["a2t"].examples == 6 and got.tasks["all"].examples == len(FIXED)


def test_the_delta_is_exactly_the_difference_of_token_weighted_losses():
    got = paired_bootstrap(table(FIXED, 3), table(FIXED, 4), iters=10, seed=0)
    a = math.fsum(r[3] for r in FIXED) / sum(r[2] for r in FIXED)
    b = math.fsum(r[4] for r in FIXED) / sum(r[2] for r in FIXED)
    assert got.tasks["all"].loss_a == a and got.tasks["all"].loss_b == b and got.tasks["all"].delta == b - a


def test_identical_inputs_give_a_zero_delta_and_a_zero_interval():
    got = paired_bootstrap(table(FIXED, 3), table(FIXED, 3), iters=500, seed=3)
    for d in got.tasks.values():
        assert (d.delta, d.low, d.high, d.p_value, d.significant) == (0.0, 0.0, 0.0, 1.0, False)


def test_a_consistent_improvement_is_significant_and_the_order_of_rows_does_not_matter():
    better = [(i, t, n, a, a * 0.9) for i, t, n, a, _ in FIXED]
    shuffled = list(reversed(better))
    got = paired_bootstrap(table(better, 3), table(shuffled, 4), iters=1000, seed=1)
    d = got.tasks["all"]
    assert d.delta < 0 and d.high < 0 and d.significant
    assert d.p_value == pytest.approx(1 / 1001)


def test_same_seed_same_draws_other_seed_other_draws():
    a, b = table(FIXED, 3), table(FIXED, 4)
    first, again = paired_bootstrap(a, b, seed=7), paired_bootstrap(a, b, seed=7)
    other = paired_bootstrap(a, b, seed=8)
    assert first == again and first.seed == 7 and first.iters == 1000
    assert (first.tasks["all"].low, first.tasks["all"].high) != (other.tasks["all"].low, other.tasks["all"].high)


def test_pairs_on_different_eval_sets_or_subsets_are_refused_naming_both_hashes():
    other = "f" * 64
    with pytest.raises(Incompatible) as e:
        paired_bootstrap(table(FIXED, 3, source="A"), table(FIXED, 4, evalset_hash=other, source="B"))
    assert HASH in str(e.value) and other in str(e.value)
    with pytest.raises(Incompatible) as e:
        paired_bootstrap(table(FIXED, 3), table(FIXED, 4, subset="max_examples=3"))
    assert "max_examples=3" in str(e.value) and str(e.value).count(HASH) == 2
    with pytest.raises(Incompatible, match="different examples"):
        paired_bootstrap(table(FIXED, 3), table(FIXED[:-1], 4))


def test_bad_bootstrap_settings_are_refused():
    for kw in ({"iters": 0}, {"iters": 1.5}, {"seed": -1}, {"confidence": 1.0}):
        with pytest.raises(InvalidInput):
            paired_bootstrap(table(FIXED, 3), table(FIXED, 4), **kw)


def test_a_loss_interval_holds_the_loss():
    got = loss_intervals(table(FIXED, 3), iters=2000, seed=0)
    for name, iv in got.items():
        assert iv.low < iv.loss < iv.high, (name, iv)
    assert got["all"].tokens == sum(r[2] for r in FIXED)


def test_the_per_example_file_round_trips_with_its_metadata(tmp_path):
    path = per_example.write(
        tmp_path / per_example.ARTIFACT,
        example_ids=[r[0] for r in FIXED],
        tasks=[r[1] for r in FIXED],
        nll_sums=[r[3] for r in FIXED],
        tokens=[r[2] for r in FIXED],
        evalset_hash=HASH,
        evalset_name="set",
        subset=EvalKey("c" * 64, HASH).subset,
        checkpoint_hash="c" * 64,
    )
    got = per_example.read(path)
    assert got.comparable and got.evalset_hash == HASH and got.subset == "all" and got.n == len(FIXED)
    assert got.nll_sums.tolist() == [r[3] for r in FIXED]
    assert got.losses.tolist() == pytest.approx([r[3] / r[2] for r in FIXED])
    assert EvalKey("c" * 64, HASH, 5).subset == "max_examples=5"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_a_per_example_file_from_before_format_2_gives_no_interval(tmp_path):
    import pandas as pd

    path = tmp_path / "old.parquet"
    pd.DataFrame({"example_id": ["a", "b"], "task": ["a2t", "a2t"], "loss": [1.0, 2.0], "tokens": [3, 4]}).to_parquet(
        path
    )
    old = per_example.read(path)
    assert not old.comparable and old.nll_sums is None and old.losses.tolist() == [1.0, 2.0]
    with pytest.raises(Incompatible, match="re-evaluate"):
        paired_bootstrap(old, old)


@pytest.mark.parametrize(
    "frame, problem",
    [
        ({"example_id": ["a", "a"], "task": ["t", "t"], "nll_sum": [1.0, 1.0], "tokens": [1, 1]}, "repeats"),
        ({"example_id": ["a"], "task": ["t"], "nll_sum": [-1.0], "tokens": [1]}, "nll_sum"),
        ({"example_id": ["a"], "task": ["t"], "nll_sum": [float("inf")], "tokens": [1]}, "nll_sum"),
        ({"example_id": ["a"], "task": ["t"], "nll_sum": [1.0], "tokens": [-2]}, "tokens"),
        ({"example_id": ["a"], "nll_sum": [1.0], "tokens": [1]}, "task"),
    ],
)
def test_a_bad_per_example_file_is_refused_naming_it(tmp_path, frame, problem):
    import pandas as pd

    path = tmp_path / "bad.parquet"
    pd.DataFrame(frame).to_parquet(path)
    with pytest.raises(InvalidInput) as e:
        per_example.read(path)
    assert str(path) in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_is_not_parquet_is_refused_naming_it(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidInput, match="not a readable Parquet file") as e:
        per_example.read(path)
    assert str(path) in str(e.value)
