"""`evalboard demo --no-serve` end to end (shortened): real training, real evaluation, real MLflow."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests._infra.workspace import evalboard_cli

pytestmark = pytest.mark.slow


def test_quick_demo_trains_evaluates_and_refuses_the_mismatch(quick_demo):
    from mlflow.tracking import MlflowClient

    workdir, proc = quick_demo
    assert "Traceback" not in proc.stderr
    # the mismatched run is in the audit with its reason, and its evaluation was refused
    assert "token-space-mismatch" in proc.stderr
    assert "image range 640–799 (160 rows)" in proc.stderr and "640–767 (128 rows)" in proc.stderr
    assert "refused: stage3_wide_image/checkpoint_" in proc.stderr

    client = MlflowClient(f"sqlite:///{workdir / '.evalboard' / 'mlflow.db'}")
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    track_b = sorted(n for n in experiments if n.startswith("evalboard/stage3_lr"))
    assert len(track_b) == 3
    assert "evalboard/stage3_wide_image" not in experiments  # refused: nothing logged
    for name in track_b:
        by_metric: dict[str, dict[int, float]] = defaultdict(dict)
        runs = client.search_runs([experiments[name]])
        assert runs and all(r.info.status == "FINISHED" for r in runs)
        for run in runs:
            for metric in ("loss_all", "loss_a2t", "loss_i2t"):
                for m in client.get_metric_history(run.info.run_id, metric):
                    by_metric[metric][m.step] = m.value
        for metric, points in by_metric.items():
            steps = sorted(points)
            assert len(steps) >= 2, (name, metric)
            assert points[steps[-1]] < points[steps[0]], (name, metric, points)
    # the Track A run was trained on the tower's features and evaluated on the image eval set
    assert list((workdir / "outputs" / "stage1_connector").glob("checkpoint_*.pt"))
    runs = client.search_runs([experiments["evalboard/stage1_connector"]])
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    i2t = {int(r.data.tags["evalboard.step"]): r.data.metrics["loss_i2t"] for r in runs}
    assert len(i2t) >= 2 and i2t[max(i2t)] < i2t[min(i2t)], i2t
    assert {r.data.tags["evalboard.evalset"] for r in runs} == {"demo-i2t-images"}


def test_after_the_demo_every_command_works_inside_its_workspace(quick_demo, tmp_path):
    """The first hour: inside the printed workspace, with no environment variable set, eval,
    enqueue + worker, stats and info find the demo's registry, MLflow store and base model; MLflow
    artifacts stay in the workspace; commands elsewhere say which registry they read."""
    import json
    import os

    from mlflow.tracking import MlflowClient

    workdir, proc = quick_demo
    assert f"workspace: {workdir}" in proc.stderr and "mlflow ui --backend-store-uri" in proc.stderr
    assert proc.stderr.count("image range 640–799") == 1  # the mismatch paragraph is printed once
    assert "INFO mlflow" not in proc.stderr and "Creating initial MLflow database" not in proc.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALBOARD_") and k != "MLFLOW_TRACKING_URI"}

    def cli(*args, cwd=workdir):
        done = evalboard_cli(args, env=env, cwd=cwd)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        return done

    ckpt = sorted((workdir / "outputs" / "stage3_lr0.01").glob("checkpoint_*"))[0]
    out = json.loads(cli("eval", ckpt.relative_to(workdir), "--evalset", "demo-a2t-i2t", "--force", "--json").stdout)
    assert out[0]["losses"]["all"] > 0 and out[0]["mlflow_run_id"]
    cli("enqueue", ckpt, "--evalset", "demo-a2t-i2t", "--force", cwd=workdir / "outputs")
    cli("worker", "--once", "--poll-seconds", "0.2")
    jobs = json.loads(cli("jobs", "--json").stdout)
    assert jobs[0]["status"] == "done" and jobs[0]["run"] == "stage3_lr0.01"
    stats = cli("stats", ckpt)
    assert "health: ok" in stats.stdout  # the base's all-zero padding row is not an alarm
    info = json.loads(cli("info", "--json").stdout)
    assert info["workspace"] == str(workdir) and info["origins"]["registry"] == "workspace config"

    client = MlflowClient(info["mlflow_tracking_uri"])
    for exp in client.search_experiments(filter_string="name LIKE 'evalboard/%'"):
        assert exp.artifact_location.startswith((workdir / ".evalboard").as_uri()), exp.artifact_location
        assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert not list(workdir.rglob("mlruns"))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs = cli("runs", cwd=elsewhere)
    assert "0 runs in registry sqlite:///.evalboard/registry.db (no workspace found" in runs.stderr
    assert not (elsewhere / "mlruns").exists()
