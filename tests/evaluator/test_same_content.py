"""A result belongs to content. A training config re-run into a new folder writes the same bytes:
the second run's checkpoints are not evaluated again (their content was), yet the second run shows
the results in its charts, exports and compare, each with a note that it was computed once."""

from __future__ import annotations

import shutil

import pytest

from dashboard import data
from evaluator.worker import Worker, WorkerConfig
from registry.policy import enqueue_checkpoints
from registry.scanner import scan
from tests._infra.workspace import evalboard_cli

RUN = "stage3_token_lm_iter5"
EVALSET = "synthetic-a2t-i2t"


def _cli(env, *args):
    return evalboard_cli(args, env=env.env())


def _eval_runs(uri: str) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments() if e.name.startswith("evalboard/")]
    return len(client.search_runs(ids, max_results=1000)) if ids else 0


@pytest.mark.slow
def test_a_copied_run_shows_the_results_of_its_content_computed_once(eval_env, tmp_path) -> None:
    first = eval_env.root / "outputs" / RUN
    steps = (100, 200)
    done = _cli(eval_env, "eval", *(first / f"checkpoint_{s}" for s in steps), "--evalset", EVALSET, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert _eval_runs(eval_env.mlflow_uri) == 2

    second = eval_env.root / "outputs" / f"{RUN}_rerun"  # the same config re-run: the same bytes
    second.mkdir()
    shutil.copy(first / "token_space.json", second / "token_space.json")
    for s in steps:
        shutil.copytree(first / f"checkpoint_{s}", second / f"checkpoint_{s}")
    scan(eval_env.reg, [second])
    rerun = eval_env.reg.get_run(path=str(second))
    copies = [eval_env.reg.get_checkpoint(path=str(second / f"checkpoint_{s}")) for s in steps]
    skipped = enqueue_checkpoints(eval_env.reg, copies, eval_env.evalset, skip_evaluated=True)
    assert {d.action for d in skipped} == {"already-evaluated"}  # its content was
    queued = enqueue_checkpoints(eval_env.reg, copies, eval_env.evalset)  # as a training callback does
    assert {d.action for d in queued} == {"enqueued"}
    assert Worker(eval_env.reg, eval_env.settings, WorkerConfig(once=True, device="cpu")).run() == 0
    jobs = eval_env.reg.list_jobs()
    assert {j.status for j in jobs} == {"done"} and all("reused_result_id" in (j.result or {}) for j in jobs)

    results = data.latest_per_checkpoint(data.load_results(eval_env.reg, run_ids=[rerun.id]))
    assert set(results["checkpoint_id"]) == {c.id for c in copies}
    assert set(results["step"]) == set(steps) and set(results["run"]) == {rerun.name}
    assert set(results["computed_for"]) == {f"{RUN} step {s}" for s in steps}
    originals = data.latest_per_checkpoint(
        data.load_results(eval_env.reg, run_ids=[eval_env.checkpoint(RUN, 100).run_id])
    )
    for task in ("all", "a2t", "i2t"):  # the very numbers of the first run
        mine = results[results["task"] == task].sort_values("step")["loss"].tolist()
        theirs = originals[(originals["task"] == task) & originals["step"].isin(steps)].sort_values("step")["loss"]
        theirs = theirs.tolist()
        assert mine == theirs and originals["computed_for"].isna().all()
    entities = data.result_entities(eval_env.reg, [rerun.id])
    assert set(results["result_id"]) <= set(entities)  # per-example losses and intervals can be read

    out = tmp_path / "rerun.csv"
    exported = _cli(eval_env, "export", "--run", rerun.name, "--format", "csv", "--out", out)
    assert exported.returncode == 0, exported.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 2 * 3 and all(rerun.name in line and RUN in line for line in lines[1:])
    theirs = tmp_path / "first.csv"
    assert _cli(eval_env, "export", "--run", RUN, "--format", "csv", "--out", theirs).returncode == 0
    assert sum(RUN in line and "_rerun" not in line for line in theirs.read_text().splitlines()) >= 2 * 3
    md = tmp_path / "rerun.md"
    assert _cli(eval_env, "export", "--run", rerun.name, "--format", "md", "--out", md).returncode == 0
    assert "computed once" in md.read_text()
    assert _eval_runs(eval_env.mlflow_uri) == 2  # the evaluation ran once per content
