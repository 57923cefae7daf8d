"""The README's three lines, as a new user runs them: a workspace whose config maps the base model's
local folder under an id, a base loaded from that folder, `report_to="mlflow"` with no tracking URI
chosen. Every save is recorded under the id (so a worker loads it), a worker evaluates them all,
and the evaluations' link to the training run leads to a run in the workspace's own MLflow store.
A base loaded from a folder the workspace does not map is refused at the first save, in the
training process, before anything is written or registered."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from evalboard.integrations.hf import EvalboardCallback
from registry.errors import InvalidInput
from registry.settings import Settings, write_workspace_config
from registry.store import Registry
from registry.trainable_rows import TrainableRows
from tests.integrations.conftest import BASE_ID, EVALSET, rows_model, train_examples, training_args

ENV = ("EVALBOARD_HOME", "EVALBOARD_DB", "EVALBOARD_MODELS", "EVALBOARD_WORKSPACE", "MLFLOW_TRACKING_URI")


@pytest.fixture
def readme_workspace(assets, tmp_path, monkeypatch) -> Path:
    """A workspace made as the README says (its config maps the base's folder), the shell's cwd,
    and nothing chosen in the environment: not the registry, not MLflow."""
    import mlflow

    from registry.scanner import register_evalset

    root = Path(os.path.realpath(tmp_path / "ws"))
    write_workspace_config(root, models={BASE_ID: str(assets.base_dir)})
    shutil.copy(assets.mlflow_template, root / ".evalboard" / "mlflow.db")
    for name in (*ENV, "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(None)  # as in a fresh training process (an earlier test set one)
    monkeypatch.chdir(root)
    (root / "outputs" / "my_run").mkdir(parents=True)
    assets.space.save(root / "outputs" / "my_run" / "token_space.json")
    with Registry(Settings.from_env().db_url) as reg:
        register_evalset(reg, assets.evalset_dir)
    return root


@pytest.mark.slow
def test_the_readme_lines_with_a_local_base_are_evaluated_and_linked_to_the_training_run(assets, readme_workspace):
    from mlflow.tracking import MlflowClient
    from transformers import Trainer

    from evaluator.worker import Worker, WorkerConfig

    model = rows_model(assets)
    assert Path(model.config._name_or_path) == assets.base_dir  # loaded from a local folder
    data = train_examples(assets)
    args = training_args("outputs/my_run", max_steps=4)

    # the README's three lines
    callback = EvalboardCallback(EVALSET, token_space="outputs/my_run/token_space.json")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()

    assert [(e.step, e.action) for e in callback.events] == [(2, "enqueued"), (4, "enqueued")]
    run_dir = readme_workspace / "outputs" / "my_run"
    assert {TrainableRows.load(run_dir / f"checkpoint_{s}").base_model for s in (2, 4)} == {BASE_ID}
    assert not (readme_workspace / "mlflow.db").exists() and not (readme_workspace / "mlruns").exists()

    settings = Settings.from_env()
    with Registry(settings.db_url) as reg:
        assert Worker(reg, settings, WorkerConfig(once=True, device="cpu")).run() == 0
        assert {j.status for j in reg.list_jobs()} == {"done"}
        run = reg.get_run(path=str(run_dir))
        assert len(reg.list_eval_results(run_ids=[run.id])) == 2
    client = MlflowClient(settings.mlflow_uri)  # the workspace's store, where the dashboard looks
    training = client.get_run(run.training_mlflow_run_id)
    assert training.info.experiment_id == run.training_mlflow_experiment_id
    assert "loss" in training.data.metrics  # the Trainer's own curve
    evals = client.search_runs([client.get_experiment_by_name(f"evalboard/{run.name}").experiment_id])
    assert len(evals) == 2
    assert {r.data.tags["evalboard.training_run_id"] for r in evals} == {training.info.run_id}


def test_an_unmapped_local_base_is_refused_at_the_first_save(assets, readme_workspace, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer

    from evaluator.rows import prepare_for_token_space

    elsewhere = tmp_path / "my-own-base"  # the same weights, in a folder no mapping names
    shutil.copytree(assets.base_dir, elsewhere)
    model = AutoModelForCausalLM.from_pretrained(elsewhere)
    space = assets.space
    prepare_for_token_space(model, space.text_vocab_size, space.vocab_size_total, space.resolved_pad_id())
    callback = EvalboardCallback(EVALSET, token_space="outputs/my_run/token_space.json")
    args = training_args("outputs/my_run", max_steps=2, report_to=[])
    trainer = Trainer(model=model, args=args, train_dataset=train_examples(assets, n_per_task=2), callbacks=[callback])
    with pytest.raises(InvalidInput, match="models mapping does not name") as refused:
        trainer.train()
    assert str(elsewhere) in str(refused.value) and "base_model=" in str(refused.value)
    assert not (readme_workspace / "outputs" / "my_run" / "checkpoint_2").exists()
    with Registry(Settings.from_env().db_url) as reg:
        assert reg.list_checkpoints() == [] and reg.list_jobs() == []
