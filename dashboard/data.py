"""Registry -> pandas DataFrames for the dashboard pages. No Streamlit here, so every function
can be tested (and benchmarked) without a running app; pages add the caching.

The registry's `eval_results` table is the source of truth for point values; per-example losses
(for intervals) come from each result's MLflow run through `registry.comparison`, cached on disk
by run id (`<home>/cache/per_example`) and in the page caches by result id. Loading reads only the
needed columns (the store's `*_table` methods, plain tuples rather than entity lists) because the
Compare page may read tens of thousands of rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from registry import bootstrap, comparison
from registry.bootstrap import DeltaInterval, LossInterval
from registry.comparison import ResultExamples
from registry.entities import CheckpointRow, EvalResultEntity, JobRow
from registry.errors import EvalboardError, Incompatible
from registry.per_example import ExampleCache
from registry.settings import DEFAULT_MLFLOW_UI, Settings
from registry.store import Registry

__all__ = [
    "open_registry",
    "data_version",
    "load_runs",
    "load_checkpoints",
    "load_evalsets",
    "load_results",
    "latest_per_checkpoint",
    "runs_overview",
    "task_order",
    "load_checkpoint_meta",
    "result_extra",
    "load_row_stats",
    "result_entities",
    "may_have_examples",
    "result_examples",
    "examples_frame",
    "ResultIntervals",
    "result_intervals",
    "PairedDelta",
    "paired_delta",
    "intervals_frame",
    "missing_intervals",
    "paired_frame",
    "load_jobs",
    "cancel_jobs",
    "retry_jobs",
    "unevaluated_checkpoints",
    "enqueueable_runs",
    "live_workers",
    "start_local_worker",
    "mlflow_links",
    "evalset_label",
    "NO_EVALSET",
]

NO_EVALSET = "(imported, eval set unknown)"
"""Label of results whose eval set is not registered (e.g. imported eval_step*.json files)."""


def open_registry(settings: Settings | None = None) -> Registry:
    """The registry of the workspace or `EVALBOARD_DB` (see `registry.settings`); a SQLite
    registry's folder is created by the engine, nothing else is."""
    return Registry(settings=settings or Settings.from_env())


def _utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


# -- change detection --------------------------------------------------------------------------


def data_version(reg: Registry) -> tuple:
    """A cheap fingerprint of everything the pages read: it changes when results, checkpoints,
    runs, eval sets or row stats are added or updated. Pages pass it to their cached loaders so a
    new result shows up on the next rerun without waiting for a TTL."""
    return reg.data_fingerprint()


# -- catalogue ---------------------------------------------------------------------------------


def load_runs(reg: Registry, mlflow_ui: str = DEFAULT_MLFLOW_UI) -> pd.DataFrame:
    """One row per run, with its token space's short hash and the link (into the MLflow UI at
    ``mlflow_ui``) of the training run that wrote it."""
    cols = [
        "run_id",
        "run",
        "track",
        "base_model",
        "token_space",
        "token_space_id",
        "path",
        "created_at",
        "updated_at",
        "training_run",
    ]
    spaces = {t.id: t.abi_hash[:12] for t in reg.list_token_spaces()}
    rows = [
        {
            "run_id": r.id,
            "run": r.name,
            "track": r.track,
            "base_model": r.base_model,
            "token_space": spaces.get(r.token_space_id),
            "token_space_id": r.token_space_id,
            "path": r.path,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
            "training_run": training_run_link(r.training_mlflow_run_id, r.training_mlflow_experiment_id, mlflow_ui),
        }
        for r in reg.list_runs()
    ]
    return pd.DataFrame(rows, columns=cols)


def training_run_link(run_id: str | None, experiment_id: str | None, base: str = DEFAULT_MLFLOW_UI) -> str | None:
    """The MLflow UI link of the training run that wrote a run's checkpoints (recorded by the
    training callbacks), or None when none was recorded."""
    if not run_id or experiment_id is None:
        return None
    return mlflow_links(run_id, {"mlflow_experiment_id": experiment_id}, base)["run"]


def load_checkpoints(reg: Registry, run_ids: Iterable[int] | None = None) -> pd.DataFrame:
    rows = reg.checkpoint_table(run_ids=run_ids)
    df = pd.DataFrame(rows, columns=list(CheckpointRow._fields))
    df["step"] = df["step"].astype("Int64")
    return df


def load_evalsets(reg: Registry) -> pd.DataFrame:
    cols = ["evalset_id", "evalset", "n_examples", "tasks", "content_hash", "token_space_hash", "path"]
    return pd.DataFrame(
        [
            {
                "evalset_id": e.id,
                "evalset": e.name,
                "n_examples": e.n_examples,
                "tasks": ", ".join(sorted(e.tasks)),
                "content_hash": e.content_hash,
                "token_space_hash": e.token_space_hash,
                "path": e.path,
            }
            for e in reg.list_evalsets()
        ],
        columns=cols,
    )


def evalset_label(evalset_id: Any, names: dict[int, str], extra_name: Any = None) -> str:
    if evalset_id is not None and not pd.isna(evalset_id) and int(evalset_id) in names:
        return names[int(evalset_id)]
    return f"{extra_name} (imported)" if extra_name else NO_EVALSET


# -- results -----------------------------------------------------------------------------------

RESULT_COLUMNS = [
    "result_id",
    "run_id",
    "run",
    "checkpoint_id",
    "step",
    "tokens_seen",
    "evalset_id",
    "evalset",
    "task",
    "loss",
    "tokens",
    "examples",
    "source",
    "subset",
    "mlflow_run_id",
    "created_at",
    "per_example_path",
    "computed_for",
]


def load_results(reg: Registry, run_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """Eval results in long form: one row per (result, task), `task == "all"` included.

    `tokens_seen` comes from the result's `extra` (training tokens at that checkpoint, when the
    trainer recorded it); `subset` marks evaluations limited by `max_examples`. A result belongs to
    content: it is shown on every checkpoint with the content it was computed on, and
    `computed_for` names the checkpoint it was computed for when that is another one (else None).
    """
    names = {e.id: e.name for e in reg.list_evalsets()}
    runs = {r.id: r.name for r in reg.list_runs()}
    out: dict[str, list] = {c: [] for c in RESULT_COLUMNS}
    rows = reg.result_table(run_ids=run_ids, same_content=True)
    for row in rows:
        extra = row.extra
        label = evalset_label(row.evalset_id, names, extra.get("evalset_name"))
        origin = extra.get("computed_for")
        computed_for = (
            f"{runs.get(origin.get('run_id'), 'run ' + str(origin.get('run_id')))} step {origin.get('step')}"
            if isinstance(origin, dict)
            else None
        )
        for task, m in row.metrics.items():
            if not isinstance(m, dict) or m.get("loss") is None:
                continue
            out["result_id"].append(row.result_id)
            out["run_id"].append(row.run_id)
            out["run"].append(runs.get(row.run_id, f"run {row.run_id}"))
            out["checkpoint_id"].append(row.checkpoint_id)
            out["step"].append(row.step)
            out["tokens_seen"].append(extra.get("tokens_seen"))
            out["evalset_id"].append(row.evalset_id)
            out["evalset"].append(label)
            out["task"].append(str(task))
            out["loss"].append(float(m["loss"]))
            out["tokens"].append(m.get("tokens"))
            out["examples"].append(m.get("examples"))
            out["source"].append(row.source)
            out["subset"].append(bool(extra.get("max_examples")))
            out["mlflow_run_id"].append(row.mlflow_run_id)
            out["created_at"].append(row.created_at)
            out["per_example_path"].append(extra.get("per_example_path"))
            out["computed_for"].append(computed_for)
    df = pd.DataFrame(out, columns=RESULT_COLUMNS)
    for c in ("run", "evalset", "task", "source"):  # text even when there is no row
        df[c] = df[c].astype("str")
    for c in ("run_id", "checkpoint_id", "step", "evalset_id", "tokens", "examples"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    df["tokens_seen"] = pd.to_numeric(df["tokens_seen"], errors="coerce")
    df["loss"] = df["loss"].astype(float)
    return df


def latest_per_checkpoint(results: pd.DataFrame) -> pd.DataFrame:
    """Re-evaluation adds a row; the newest result per (checkpoint or step, eval set, task) wins."""
    if results.empty:
        return results
    key = results["checkpoint_id"].astype("float").fillna(-results["step"].astype("float").fillna(0) - 1)
    deduped = results.assign(_key=key).sort_values("result_id")
    deduped = deduped.drop_duplicates(["run_id", "_key", "evalset", "task"], keep="last")
    return deduped.drop(columns="_key").sort_values(["run", "step"], kind="stable").reset_index(drop=True)


def runs_overview(runs: pd.DataFrame, checkpoints: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The Runs page table: per run, checkpoint counts, latest and best loss per task (over all
    eval sets, newest result per checkpoint), and when it was last evaluated."""
    table = runs.copy()
    if not checkpoints.empty:
        counts = checkpoints.groupby("run_id").agg(
            checkpoints=("checkpoint_id", "size"),
            invalid=("status", lambda s: int((s != "valid").sum())),
            latest_step=("step", "max"),
        )
        table = table.merge(counts, left_on="run_id", right_index=True, how="left")
    else:
        table = table.assign(checkpoints=0, invalid=0, latest_step=pd.NA)
    table["checkpoints"] = table["checkpoints"].fillna(0).astype(int)
    table["invalid"] = table["invalid"].fillna(0).astype(int)
    res = latest_per_checkpoint(results)
    if not res.empty:
        last = res.sort_values(["step", "result_id"]).groupby(["run_id", "task"])["loss"].last().unstack()
        best = res.groupby(["run_id", "task"])["loss"].min().unstack()
        last.columns = [f"latest {t}" for t in last.columns]
        best.columns = [f"best {t}" for t in best.columns]
        evaluated = res.groupby("run_id").agg(
            last_evaluated=("created_at", "max"), evaluated=("checkpoint_id", "nunique")
        )
        for part in (evaluated, _task_ordered(last), _task_ordered(best)):
            table = table.merge(part, left_on="run_id", right_index=True, how="left")
    else:
        table = table.assign(evaluated=0, last_evaluated=pd.NaT)
    table["evaluated"] = table["evaluated"].fillna(0).astype(int)
    return table.sort_values("run", kind="stable").reset_index(drop=True)


def _task_ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Columns with task "all" first, then the others alphabetically."""
    cols = sorted(df.columns, key=lambda c: (not c.endswith(" all"), c))
    return df[cols]


def task_order(tasks: Iterable[str]) -> list[str]:
    return sorted(set(tasks), key=lambda t: (t != "all", t))


# -- per checkpoint ----------------------------------------------------------------------------


def load_row_stats(reg: Registry, checkpoint_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """{checkpoint_id: stats} for those that have row statistics."""
    return reg.row_stats_of(checkpoint_ids=checkpoint_ids)


def result_entities(reg: Registry, run_ids: Iterable[int]) -> dict[int, EvalResultEntity]:
    """{result id: result} of the given runs, those computed for the same content elsewhere
    included (one query): what `result_examples` needs."""
    return {r.id: r for r in reg.list_eval_results(run_ids=[int(i) for i in run_ids], same_content=True)}


def may_have_examples(results: pd.DataFrame) -> pd.Series:
    """Rows of results that can carry per-example losses: evaluated (not imported) and logged to
    MLflow or written locally. Whether they really do is for `result_examples` to find out."""
    return (results["source"] != "import") & (results["mlflow_run_id"].notna() | results["per_example_path"].notna())


def result_examples(result: EvalResultEntity, cache: ExampleCache | None) -> ResultExamples:
    """`registry.comparison.load_examples` for a page: its MLflow run's artifact (through `cache`),
    else the local file; a tracking server that does not answer or a damaged file becomes the
    reason the result has no interval instead of an error on the page."""
    try:
        return comparison.load_examples(result, cache)
    except EvalboardError as e:
        return ResultExamples(result, None, f"no interval ({e})")


def examples_frame(side: ResultExamples) -> pd.DataFrame | None:
    """The per-example losses as a table (example_id, task, loss, tokens), or None without any."""
    ex = side.examples
    if ex is None:
        return None
    return pd.DataFrame({"example_id": ex.example_ids, "task": ex.tasks, "loss": ex.losses, "tokens": ex.tokens})


@dataclass(frozen=True)
class ResultIntervals:
    """One result's loss interval per task ("all" included), or why it has none."""

    result_id: int
    tasks: Mapping[str, LossInterval]
    missing: str | None = None


def result_intervals(
    side: ResultExamples, *, iters: int = bootstrap.DEFAULT_ITERS, seed: int = bootstrap.DEFAULT_SEED
) -> ResultIntervals:
    try:
        found = comparison.loss_intervals_of(side, iters=iters, seed=seed)
    except EvalboardError as e:
        return ResultIntervals(side.result.id, {}, f"no interval ({e})")
    if found is None:
        return ResultIntervals(side.result.id, {}, side.missing or comparison.NO_INTERVAL_MISSING)
    return ResultIntervals(side.result.id, found)


@dataclass(frozen=True)
class PairedDelta:
    """``loss(b) - loss(a)`` per task with its paired interval, or why there is none: a result
    without per-example losses ("no interval (imported)", ...) or a pair that cannot be made
    (`incompatible`: the message names both eval-set hashes)."""

    a_id: int
    b_id: int
    tasks: Mapping[str, DeltaInterval]
    missing: str | None = None
    incompatible: bool = False
    iters: int = bootstrap.DEFAULT_ITERS
    seed: int = bootstrap.DEFAULT_SEED


def paired_delta(
    a: ResultExamples,
    b: ResultExamples,
    *,
    iters: int = bootstrap.DEFAULT_ITERS,
    seed: int = bootstrap.DEFAULT_SEED,
) -> PairedDelta:
    """`registry.comparison.compare_results` for a page or a report: refusals become `missing`."""
    ids = (a.result.id, b.result.id)
    try:
        cmp = comparison.compare_results(a, b, iters=iters, seed=seed)
    except Incompatible as e:
        return PairedDelta(*ids, {}, str(e), True, iters, seed)
    if cmp.paired is None:
        return PairedDelta(*ids, {}, cmp.missing, False, iters, seed)
    return PairedDelta(*ids, dict(cmp.paired.tasks), None, False, iters, seed)


def intervals_frame(intervals: Iterable[ResultIntervals]) -> pd.DataFrame:
    """Long table of the loss intervals: result_id, task, low, high (results without one: no row)."""
    rows = [(r.result_id, task, li.low, li.high) for r in intervals for task, li in r.tasks.items()]
    df = pd.DataFrame(rows, columns=["result_id", "task", "low", "high"])
    return df.astype({"result_id": "int64", "low": float, "high": float})


def missing_intervals(intervals: Iterable[ResultIntervals]) -> dict[str, int]:
    """Why results have no interval: reason -> how many ("no interval (imported)": 2)."""
    out: dict[str, int] = {}
    for r in intervals:
        if r.missing is not None:
            out[r.missing] = out.get(r.missing, 0) + 1
    return out


def paired_frame(p: PairedDelta) -> pd.DataFrame:
    """One row per task: Δ (B − A), the interval's bounds, p and whether it excludes zero."""
    cols = ["task", "loss A", "loss B", "Δ (B − A)", "low", "high", "p", "significant"]
    rows = [
        (t, d.loss_a, d.loss_b, d.delta, d.low, d.high, d.p_value, "yes" if d.significant else "no")
        for t, d in p.tasks.items()
    ]
    return pd.DataFrame(rows, columns=cols)


def mlflow_links(
    mlflow_run_id: str | None, extra: dict[str, Any] | None, base: str = DEFAULT_MLFLOW_UI
) -> dict[str, str]:
    """Links into the MLflow UI at ``base`` (`Settings.mlflow_ui`); only ids go into the URL."""
    base = base.rstrip("/")
    extra = extra or {}
    exp = extra.get("mlflow_experiment_id")
    links = {}
    if exp is not None and mlflow_run_id:
        links["run"] = f"{base}/#/experiments/{exp}/runs/{mlflow_run_id}"
    if exp is not None and extra.get("mlflow_model_id"):
        links["model"] = f"{base}/#/experiments/{exp}/models/{extra['mlflow_model_id']}"
    return links


def result_extra(reg: Registry, result_id: int) -> dict[str, Any]:
    return reg.result_extra(id=result_id)


# -- jobs --------------------------------------------------------------------------------------

JOB_COLUMNS = list(JobRow._fields)


def load_jobs(reg: Registry) -> pd.DataFrame:
    rows = reg.job_table()
    df = pd.DataFrame(rows, columns=JOB_COLUMNS)
    df["step"] = df["step"].astype("Int64")
    return df


def cancel_jobs(reg: Registry, job_ids: Iterable[int]) -> int:
    """Cancel queued jobs (a running job belongs to its worker). Returns how many changed.
    The queue's own verb bumps each job's fencing token, so a worker that held one cannot publish it."""
    from registry import queue

    return sum(bool(queue.cancel(reg, job_id=int(i))) for i in job_ids)


def retry_jobs(reg: Registry, job_ids: Iterable[int]) -> int:
    """Put failed or cancelled jobs back in the queue with their attempts reset."""
    from registry import queue

    return sum(bool(queue.retry(reg, job_id=int(i))) for i in job_ids)


def unevaluated_checkpoints(reg: Registry, run_id: int, evalset_id: int) -> list[int]:
    """Valid checkpoints of the run with no result and no live job on this eval set."""
    return reg.unevaluated_checkpoint_ids(run_id=run_id, evalset_id=evalset_id)


def enqueueable_runs(reg: Registry, runs: pd.DataFrame, evalset) -> dict[int, int]:
    """run id -> how many of its valid checkpoints are neither evaluated nor queued on `evalset`,
    for runs whose token space matches the eval set's (or is unknown); others count 0 since the
    audit would refuse them. One query, for choosing a sensible default run."""
    counts = reg.unevaluated_counts(evalset_id=evalset.id)
    hashes = {t.id: t.abi_hash for t in reg.list_token_spaces()}
    for run_id, space_id in zip(runs["run_id"], runs["token_space_id"]):
        space = hashes.get(int(space_id)) if pd.notna(space_id) else None
        if space and evalset.token_space_hash and space != evalset.token_space_hash:
            counts[int(run_id)] = 0
    return counts


@dataclass(frozen=True)
class LiveWorker:
    worker_id: str
    seconds_ago: float


def live_workers(reg: Registry) -> list[LiveWorker]:
    """Workers whose last claim attempt or heartbeat is within their lease (`registry.queue`)."""
    from registry import queue

    now = queue.db_now(reg)
    return [
        LiveWorker(w.worker_id, max(0.0, (now - _utc(w.last_seen)).total_seconds())) for w in queue.live_workers(reg)
    ]


def start_local_worker(settings: Settings) -> dict[str, Any]:
    """Start `evalboard worker --once` in the background on this machine (own session, so it
    finishes the queue even if the dashboard stops; it exits when nothing is left to claim).
    Its output goes to `<home>/workers/worker-<time>.log`. Returns {pid, log}."""
    import subprocess
    import time

    from registry.processes import child_env, python_module_command

    log = Path(os.path.abspath(settings.home)) / "workers" / f"worker-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cwd = str(settings.workspace.root) if settings.workspace else None
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            python_module_command("evalboard.cli", "worker", "--once"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=child_env(),
            start_new_session=True,
        )
    return {"pid": proc.pid, "log": str(log)}


def load_checkpoint_meta(reg: Registry, checkpoint_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    return reg.checkpoint_meta(checkpoint_ids=checkpoint_ids)
