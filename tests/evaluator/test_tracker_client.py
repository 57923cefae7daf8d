"""The Tracker writes through its own MlflowClient: two trackers in one process keep to their own
stores, and the process-wide MLflow tracking URI (a training run's) is left alone."""

from __future__ import annotations


def test_two_trackers_in_one_process_write_to_their_own_stores(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from evaluator.tracking import Tracker

    before = mlflow.get_tracking_uri()
    a = Tracker(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    b = Tracker(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}")
    source = tmp_path / "eval_step1.json"
    source.write_text("{}\n")
    ids = a.log_imported(
        run_name="run-a", step=1, losses={"all": 1.5}, tokens={"all": 3}, source_path=str(source), file_sha256="0" * 64
    )
    b.experiment_id("run-b")
    run = MlflowClient(a.uri).get_run(ids["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics == {"loss_all": 1.5, "tokens_all": 3.0}
    assert MlflowClient(b.uri).get_experiment_by_name("evalboard/run-a") is None
    assert MlflowClient(a.uri).get_experiment_by_name("evalboard/run-b") is None
    assert mlflow.get_tracking_uri() == before
