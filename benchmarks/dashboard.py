"""Dashboard render times on a large registry: 200 runs × 40 checkpoints × 3 tasks.

Builds a SQLite registry (rows inserted in bulk with SQLAlchemy core; no MLflow is involved, as
the pages never query it), then measures under Streamlit's AppTest the server-side time of one
script run of the Compare page with 100 runs selected and of the Runs page (median of 5 warm
renders each), and of the first Compare render after new results arrived (cache invalidated by
the data version). Prints JSON; targets: warm < 1.0 s, cold < 2.0 s.

    .venv/bin/python benchmarks/dashboard.py [--runs 200] [--checkpoints 40] [--workdir DIR]
"""

from __future__ import annotations

import _bench_path  # noqa: F401  (first: see benchmarks/_bench_path.py)

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TASKS = ("all", "a2t", "i2t")


def build_registry(url: str, n_runs: int, n_checkpoints: int) -> None:
    import math
    import random

    from sqlalchemy import insert

    from registry import models as M
    from registry.store import Registry

    rng = random.Random(0)
    spec = {
        "text_vocab_size": 256,
        "vocab_size_total": 384,
        "modalities": {"audio": {"start": 256, "end": 320}, "image": {"start": 320, "end": 384}},
    }
    now = datetime.now(timezone.utc)
    with Registry(url) as reg, reg.engine.begin() as conn:
        conn.execute(
            insert(M.TokenSpace),
            [
                dict(
                    id=1,
                    abi_hash="a" * 64,
                    text_vocab_size=256,
                    vocab_size_total=384,
                    spec=spec,
                    codec_versions={},
                    tokenizer_version=None,
                    first_path="/bench/token_space.json",
                )
            ],
        )
        conn.execute(
            insert(M.EvalSet),
            [
                dict(
                    id=1,
                    name="bench-a2t-i2t",
                    path="/bench/evalset",
                    content_hash="e" * 64,
                    token_space_hash="a" * 64,
                    manifest={},
                    n_examples=512,
                    files=[],
                    tasks={"a2t": {"examples": 256}, "i2t": {"examples": 256}},
                )
            ],
        )
        runs, cks, results = [], [], []
        for r in range(1, n_runs + 1):
            runs.append(
                dict(
                    id=r,
                    name=f"stage3_run_{r:03d}_lr{rng.choice(['1e-4', '3e-4'])}",
                    path=f"/bench/run{r}",
                    track="B",
                    base_model="Qwen/Qwen3-8B-Base",
                    token_space_id=1,
                    token_space_path=f"/bench/run{r}/token_space.json",
                    created_at=now - timedelta(days=r % 30),
                    updated_at=now - timedelta(days=r % 30),
                )
            )
            floor = rng.uniform(1.8, 2.4)
            for k in range(n_checkpoints):
                ck_id = (r - 1) * n_checkpoints + k + 1
                step = 500 * (k + 1)
                cks.append(
                    dict(
                        id=ck_id,
                        run_id=r,
                        path=f"/bench/run{r}/checkpoint_{step}",
                        step=step,
                        track="B",
                        status="valid",
                        reason=None,
                        content_hash=f"{ck_id:064x}",
                        files=[{"name": "trainable_rows.pt", "size": 134217728}],
                        base_model="Qwen/Qwen3-8B-Base",
                        token_space_id=1,
                        has_token_space=True,
                        row_start=256,
                        row_end=384,
                        meta={"lr": 1e-4, "step": step},
                        registered_at=now,
                        updated_at=now,
                    )
                )
                a2t = floor + 1.5 * math.exp(-k / 8) + rng.gauss(0, 0.02)
                i2t = floor + 0.4 + 1.8 * math.exp(-k / 10) + rng.gauss(0, 0.02)
                metrics = {
                    "all": {"loss": (a2t + i2t) / 2, "tokens": 20000, "examples": 512},
                    "a2t": {"loss": a2t, "tokens": 10000, "examples": 256},
                    "i2t": {"loss": i2t, "tokens": 10000, "examples": 256},
                }
                results.append(
                    dict(
                        checkpoint_id=ck_id,
                        run_id=r,
                        evalset_id=1,
                        evalset_hash="e" * 64,
                        checkpoint_hash=f"{ck_id:064x}",
                        step=step,
                        source="evaluator",
                        loss_all=metrics["all"]["loss"],
                        metrics=metrics,
                        mlflow_run_id=f"run{ck_id}",
                        path=None,
                        extra={"tokens_seen": step * 2**20, "mlflow_experiment_id": "1"},
                        created_at=now,
                    )
                )
        conn.execute(insert(M.Run), runs)
        conn.execute(insert(M.Checkpoint), cks)
        conn.execute(insert(M.EvalResult), results)


def timed_run(at) -> float:
    t = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - t
    if at.exception:
        raise RuntimeError(f"page raised: {[e.value for e in at.exception]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs in the synthetic registry")
    parser.add_argument("--checkpoints", type=int, default=40, help="evaluated checkpoints per run")
    parser.add_argument("--selected", type=int, default=100, help="runs selected on the Compare page")
    parser.add_argument("--repeats", type=int, default=5, help="warm renders per page (the median is reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the registry here (default: a temp folder)")
    args = parser.parse_args()

    from streamlit.testing.v1 import AppTest

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="evalboard-bench-"))
    db = workdir / "registry.db"
    if db.exists():
        db.unlink()
    url = f"sqlite:///{db}"
    os.environ["EVALBOARD_DB"] = url
    os.environ["EVALBOARD_HOME"] = str(workdir)
    t = time.perf_counter()
    build_registry(url, args.runs, args.checkpoints)
    build_s = time.perf_counter() - t

    pages = ROOT / "dashboard" / "app_pages"
    runs_page = AppTest.from_file(str(pages / "runs.py"), default_timeout=120)
    runs_first = timed_run(runs_page)
    runs_warm = [timed_run(runs_page) for _ in range(args.repeats)]

    compare = AppTest.from_file(str(pages / "compare.py"), default_timeout=120)
    timed_run(compare)
    names = sorted(compare.multiselect(key="compare_runs").options)[: args.selected]
    compare.multiselect(key="compare_runs").set_value(names)
    compare_first = timed_run(compare)
    n_traces = sum(len(json.loads(c.proto.spec)["data"]) for c in compare.get("plotly_chart"))
    compare_warm = [timed_run(compare) for _ in range(args.repeats)]
    warm_traces = sum(len(json.loads(c.proto.spec)["data"]) for c in compare.get("plotly_chart"))
    if warm_traces != n_traces or n_traces < 3 * len(names):
        raise RuntimeError(
            f"warm render drew {warm_traces} traces, first drew {n_traces}; expected "
            f"{3 * (len(names) + 1)} (3 tasks × (runs + best markers))"
        )

    # New results arrive: the data version changes, so loaders and figures are rebuilt once.
    from registry.store import Registry

    with Registry(url) as reg:
        ck = reg.list_checkpoints(run_id=1)[-1]
        reg.add_eval_result(
            checkpoint_id=ck.id,
            run_id=1,
            evalset_id=1,
            step=ck.step,
            source="evaluator",
            metrics={t: {"loss": 1.0, "tokens": 1, "examples": 1} for t in TASKS},
        )
    compare_cold = timed_run(compare)

    print(
        json.dumps(
            {
                "compare_render_s": round(statistics.median(compare_warm), 3),
                "runs_render_s": round(statistics.median(runs_warm), 3),
                "compare_cold_render_s": round(compare_cold, 3),
                "compare_first_render_s": round(compare_first, 3),
                "runs_first_render_s": round(runs_first, 3),
                "compare_traces": n_traces,
                "runs": args.runs,
                "checkpoints_per_run": args.checkpoints,
                "tasks": len(TASKS),
                "eval_results": args.runs * args.checkpoints + 1,
                "selected_runs": len(names),
                "build_registry_s": round(build_s, 2),
                "targets": {"warm_s": 1.0, "cold_s": 2.0},
            }
        )
    )


if __name__ == "__main__":
    main()
