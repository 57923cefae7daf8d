"""Paired bootstrap speed: B draws over N examples on one CPU core.

Builds two checkpoints' per-example NLL sums over an eval set of N examples in two tasks (token
counts 8..512 per example, B's losses a little lower on average), then times
`registry.bootstrap.paired_bootstrap` (the delta per task and for all with its percentile interval)
and `loss_intervals` (one checkpoint). BLAS and OpenMP are held to one thread and the process to
one core. Prints one JSON object on the last stdout line:
  {"bootstrap_s", "bootstrap_first_s", "loss_interval_s", "iters", "examples", ...}
Goal: bootstrap_s < 1 for B=1000 x 10,000 examples.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: one core means one BLAS thread too

import _bench_path  # noqa: E402,F401  (first of ours: see benchmarks/_bench_path.py)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from registry.bootstrap import loss_intervals, paired_bootstrap  # noqa: E402
from registry.per_example import ExampleLosses  # noqa: E402


def synthetic_pair(n: int, seed: int) -> tuple[ExampleLosses, ExampleLosses]:
    rng = np.random.default_rng(seed)
    ids = np.array([f"ex-{i:06d}" for i in range(n)], dtype=object)
    tasks = np.array(["a2t" if i % 3 else "i2t" for i in range(n)], dtype=object)
    tokens = rng.integers(8, 513, n)
    mean_a = rng.gamma(4.0, 0.6, n)
    mean_b = np.clip(mean_a * (1 + rng.normal(-0.004, 0.03, n)), 0, None)
    sides = []
    for mean in (mean_a, mean_b):
        sums = mean * tokens
        sides.append(ExampleLosses(ids, tasks, sums, tokens, mean, "h" * 64, "all", "c" * 64, "synthetic"))
    return sides[0], sides[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=10_000, help="Examples in the eval set (N).")
    p.add_argument("--iters", type=int, default=1000, help="Bootstrap draws (B).")
    p.add_argument("--repeats", type=int, default=5, help="Timed repeats after the first call (median reported).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the synthetic data and the draws.")
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    a, b = synthetic_pair(args.examples, args.seed)

    start = time.perf_counter()
    result = paired_bootstrap(a, b, iters=args.iters, seed=args.seed)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        paired_bootstrap(a, b, iters=args.iters, seed=args.seed)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    loss_intervals(a, iters=args.iters, seed=args.seed)
    single = time.perf_counter() - start
    d = result.tasks["all"]
    print(
        json.dumps(
            {
                "bootstrap_s": round(statistics.median(times), 4) if times else round(first, 4),
                "bootstrap_first_s": round(first, 4),
                "loss_interval_s": round(single, 4),
                "iters": args.iters,
                "examples": args.examples,
                "tasks": len(result.tasks) - 1,
                "cores": 1,
                "delta_all": d.delta,
                "interval_all": [d.low, d.high],
                "goal": "bootstrap_s < 1 for iters=1000, examples=10000",
            }
        )
    )


if __name__ == "__main__":
    main()
