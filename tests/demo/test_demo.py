"""`evalboard demo --no-serve` end to end (shortened): real training, real evaluation, real MLflow."""

from __future__ import annotations

from collections import defaultdict

import pytest

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
